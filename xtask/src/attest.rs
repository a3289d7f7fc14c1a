//! `cargo xtask attest REF`: per platform, the CycloneDX and SPDX SBOMs and
//! the SLSA provenance, and the provenance of the index too, each attached
//! with `cosign attest` by digest.
//!
//! One after another, never in parallel: without the referrers API, every
//! attestation rewrites the `sha256-<digest>` index tag, and concurrent
//! writers would drop each other's entries.

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use serde::Serialize;

use crate::flags;
use crate::oci::subject::Subject;
use crate::oci::{BASE_DIGEST, BASE_NAME, CREATED, REVISION};
use crate::supply_chain::cosign::SigningArgs;
use crate::supply_chain::provenance::{self, ProvenanceInput};
use crate::supply_chain::sbom::{self, ImageRef};
use crate::supply_chain::session::Session;
use crate::supply_chain::vuln;
use crate::support::config::{Config, Platform};
use crate::support::fs::write_atomically;
use crate::support::progress::{Nest, Steps};
use crate::support::source::Source;

/// One `cosign attest` call.
#[derive(Debug, Clone)]
pub struct Attestation {
    /// `linux/amd64`, or `index`.
    pub subject: String,
    pub digest: String,
    /// cosign's `--type`.
    pub kind: &'static str,
    pub predicate: Utf8PathBuf,
}

/// What to attest, and how.
#[derive(Debug, Clone)]
pub struct AttestOptions {
    /// IMAGE@sha256:… or IMAGE:TAG; a tag is resolved to a digest once.
    pub reference: String,
    pub signing: SigningArgs,
    pub insecure: bool,
    /// Print the plan and the exact commands; attach nothing.
    pub dry_run: bool,
}

/// What `attest --json` prints.
#[derive(Debug, Serialize)]
pub struct Attested {
    pub image: String,
    pub digest: String,
    pub attestations: Vec<AttestedOne>,
}

#[derive(Debug, Serialize)]
pub struct AttestedOne {
    pub subject: String,
    pub digest: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub predicate: Utf8PathBuf,
}

pub fn run(flags: &flags::Attest) -> Result<()> {
    let config = Config::load()?;
    let source = Source::detect(&config.workspace_root)?;
    let options = AttestOptions {
        reference: flags.reference.clone(),
        signing: flags.signing.clone(),
        insecure: flags.registry.insecure,
        dry_run: flags.dry_run,
    };
    let Some(attested) = attest(&config, &source, &options, &Nest::top())? else {
        return Ok(());
    };
    if flags.json {
        println!("{}", serde_json::to_string_pretty(&attested)?);
        return Ok(());
    }
    println!("{}@{}", attested.image, attested.digest);
    eprintln!(
        "attached {} attestations; predicates are under {}",
        attested.attestations.len(),
        config.relative(&config.target_dir.join("attest"))
    );
    Ok(())
}

/// What lets a caller resume an interrupted run: attestations already
/// attached are skipped, and each one is reported as soon as it is
/// attached, so that a failure in the middle loses nothing.
pub trait Resume {
    /// True when `attestation` is attached already and must not be again.
    fn is_attached(&mut self, attestation: &Attestation) -> Result<bool>;
    /// Called right after `attestation` was attached.
    fn attached(&mut self, attestation: &Attestation) -> Result<()>;
}

/// Attaches everything: nothing to resume.
pub struct Fresh;

impl Resume for Fresh {
    fn is_attached(&mut self, _: &Attestation) -> Result<bool> {
        Ok(false)
    }
    fn attached(&mut self, _: &Attestation) -> Result<()> {
        Ok(())
    }
}

/// The predicate type cosign writes for a `--type`.
pub fn predicate_type(kind: &str) -> Option<&'static str> {
    match kind {
        "cyclonedx" => Some("https://cyclonedx.org/bom"),
        "spdxjson" => Some("https://spdx.dev/Document"),
        "slsaprovenance1" => Some("https://slsa.dev/provenance/v1"),
        "vuln" => Some(vuln::VULN_PREDICATE),
        _ => None,
    }
}

/// Writes the predicates and attaches each, one at a time. None in a dry
/// run, which prints its plan on stdout instead.
pub fn attest(
    config: &Config,
    source: &Source,
    options: &AttestOptions,
    nest: &Nest,
) -> Result<Option<Attested>> {
    attest_resuming(config, source, options, nest, &mut Fresh)
}

/// [`attest`], skipping what `resume` says is attached already.
pub fn attest_resuming(
    config: &Config,
    source: &Source,
    options: &AttestOptions,
    nest: &Nest,
    resume: &mut dyn Resume,
) -> Result<Option<Attested>> {
    let mut steps = Steps::within(nest, 3);
    let session = Session::open(
        config,
        &options.reference,
        &options.signing,
        options.insecure,
        options.dry_run,
        &mut steps,
    )?;
    let subject = &session.subject;
    check_source(subject, source)?;
    let out_root = config.target_dir.join("attest");
    let plan = plan(subject, &out_root);

    if options.dry_run {
        session.print_plan_header(&format!(
            "attest {} platform(s) and the index of {}",
            subject.platforms.len(),
            subject.by_digest(&subject.digest)
        ));
        for attestation in &plan {
            println!(
                "# {} {}: writes {}",
                attestation.subject, attestation.kind, attestation.predicate
            );
            println!(
                "{}",
                session.display(&attest_args(&session, subject, attestation))
            );
        }
        return Ok(None);
    }

    let attached = plan
        .iter()
        .map(|attestation| resume.is_attached(attestation))
        .collect::<Result<Vec<bool>>>()?;
    // What is attached already keeps the bytes it was attested with (the
    // release ships those very files); one whose file is gone stays gone,
    // so that the release refuses to ship a file it cannot vouch for.
    let kept: Vec<Option<Vec<u8>>> = plan
        .iter()
        .zip(&attached)
        .map(|(a, done)| done.then(|| std::fs::read(&a.predicate).ok()).flatten())
        .collect();
    steps.run("write the SBOMs and the provenance", || {
        write_predicates(config, source, subject, &out_root)?;
        for ((attestation, done), old) in plan.iter().zip(&attached).zip(&kept) {
            match (done, old) {
                (true, Some(bytes)) => write_atomically(&attestation.predicate, bytes)?,
                (true, None) if attestation.predicate.exists() => {
                    std::fs::remove_file(&attestation.predicate)
                        .with_context(|| format!("cannot remove {}", attestation.predicate))?
                }
                _ => {}
            }
        }
        Ok(())
    })?;
    session.write_signing_config()?;
    let cosign = session.cosign()?;
    steps.run(
        &format!("attach {} attestations, one at a time", plan.len()),
        || {
            for (n, attestation) in plan.iter().enumerate() {
                let skip = attached[n];
                eprintln!(
                    "  ({}/{}) {} {} {}{}",
                    n + 1,
                    plan.len(),
                    attestation.subject,
                    attestation.kind,
                    attestation.digest,
                    if skip { ": already attached" } else { "" }
                );
                if skip {
                    continue;
                }
                cosign
                    .run_ok(&attest_args(&session, subject, attestation))
                    .with_context(|| {
                        format!(
                            "cannot attach the {} attestation of {}",
                            attestation.kind, attestation.subject
                        )
                    })?;
                resume.attached(attestation)?;
            }
            Ok(())
        },
    )?;
    Ok(Some(Attested {
        image: subject.name.clone(),
        digest: subject.digest.clone(),
        attestations: plan
            .into_iter()
            .map(|a| AttestedOne {
                subject: a.subject,
                digest: a.digest,
                kind: a.kind,
                predicate: a.predicate,
            })
            .collect(),
    }))
}

fn attest_args(session: &Session, subject: &Subject, attestation: &Attestation) -> Vec<String> {
    session.options.attest(
        &subject.by_digest(&attestation.digest),
        attestation.kind,
        &attestation.predicate,
    )
}

/// The directory of one digest's predicates: target/attest/<hex>/.
pub fn predicate_dir(out_root: &Utf8Path, digest: &str) -> Utf8PathBuf {
    out_root.join(digest.trim_start_matches("sha256:"))
}

/// Every attestation, in the order they are attached: per platform the
/// CycloneDX SBOM, the SPDX SBOM, the provenance and, when a scan wrote
/// one, the vulnerability scan; then the index's provenance.
pub fn plan(subject: &Subject, out_root: &Utf8Path) -> Vec<Attestation> {
    let mut plan = Vec::new();
    for platform in &subject.platforms {
        let dir = predicate_dir(out_root, &platform.digest);
        let slug = platform.platform.slug();
        for (kind, file) in [
            ("cyclonedx", format!("{slug}.cdx.json")),
            ("spdxjson", format!("{slug}.spdx.json")),
            ("slsaprovenance1", "provenance.json".to_owned()),
        ] {
            plan.push(Attestation {
                subject: platform.platform.to_string(),
                digest: platform.digest.clone(),
                kind,
                predicate: dir.join(file),
            });
        }
        // Only a release scans before it attests: elsewhere there is no
        // scan result for this digest, and nothing to attach.
        let scanned = dir.join(vuln::VULN_FILE);
        if scanned.is_file() {
            plan.push(Attestation {
                subject: platform.platform.to_string(),
                digest: platform.digest.clone(),
                kind: "vuln",
                predicate: scanned,
            });
        }
    }
    if subject.is_index {
        plan.push(Attestation {
            subject: "index".to_owned(),
            digest: subject.digest.clone(),
            kind: "slsaprovenance1",
            predicate: predicate_dir(out_root, &subject.digest).join("provenance.json"),
        });
    }
    plan
}

/// Writes the predicates where [`plan`] expects them. They name the
/// subject's repository and digests, the image actually pushed, and its
/// bases as its labels record them.
pub fn write_predicates(
    config: &Config,
    source: &Source,
    subject: &Subject,
    out_root: &Utf8Path,
) -> Result<()> {
    let build_command = build_command(subject);
    let platforms: Vec<Platform> = subject
        .platforms
        .iter()
        .map(|p| p.platform.clone())
        .collect();
    for platform in &subject.platforms {
        let dir = predicate_dir(out_root, &platform.digest);
        let image = ImageRef {
            name: subject.name.clone(),
            digest: platform.digest.clone(),
        };
        let files = sbom::write(config, &platform.platform, Some(&image), &dir)?;
        let slug = platform.platform.slug();
        // The plan names the files; the generator must have written them there.
        for (written, expected) in [
            (&files.cyclonedx, dir.join(format!("{slug}.cdx.json"))),
            (&files.spdx, dir.join(format!("{slug}.spdx.json"))),
        ] {
            if *written != expected {
                std::fs::copy(written, &expected)
                    .with_context(|| format!("cannot copy {written} to {expected}"))?;
            }
        }
        let predicate = provenance::predicate(&ProvenanceInput {
            config,
            source,
            image: &subject.name,
            platform: Some(&platform.platform),
            platforms: &platforms,
            base_name: platform.base_name(),
            base_digest: platform.base_digest(),
            build_command: &build_command,
        })?;
        write_json(&dir.join("provenance.json"), &predicate)?;
    }
    if subject.is_index {
        let predicate = provenance::predicate(&ProvenanceInput {
            config,
            source,
            image: &subject.name,
            platform: None,
            platforms: &platforms,
            base_name: subject.annotation(BASE_NAME).unwrap_or("unknown"),
            base_digest: subject.annotation(BASE_DIGEST),
            build_command: &build_command,
        })?;
        write_json(
            &predicate_dir(out_root, &subject.digest).join("provenance.json"),
            &predicate,
        )?;
    }
    Ok(())
}

fn write_json(path: &Utf8Path, value: &serde_json::Value) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
    }
    write_atomically(path, &serde_json::to_vec_pretty(value)?)
}

/// The SBOMs and the provenance describe this checkout; attaching them to
/// an image built from another commit would be a false statement.
fn check_source(subject: &Subject, source: &Source) -> Result<()> {
    for platform in &subject.platforms {
        let Some(revision) = platform.label(REVISION) else {
            continue;
        };
        if source.sha != "unknown" && revision != source.sha {
            bail!(
                "{} of {} was built from commit {revision}, but this checkout is at {}; the SBOMs and the provenance describe the checkout, so check out {revision} and attest again",
                platform.platform,
                subject.name,
                source.sha
            );
        }
        if let Some(created) = platform.label(CREATED) {
            if created != source.created() {
                bail!(
                    "{} of {} was built with SOURCE_DATE_EPOCH at {created}, but this run has {}; set SOURCE_DATE_EPOCH to the value the image was built with",
                    platform.platform,
                    subject.name,
                    source.created()
                );
            }
        }
    }
    Ok(())
}

/// The command that rebuilds this image, for the provenance.
fn build_command(subject: &Subject) -> Vec<String> {
    let mut command: Vec<String> = ["cargo", "xtask", "image", "--push", "--image"]
        .map(String::from)
        .to_vec();
    command.push(subject.name.clone());
    let base = subject
        .annotation(BASE_NAME)
        .or_else(|| subject.platforms.first().map(|p| p.base_name()));
    if let Some(base) = base {
        command.push("--base".into());
        match subject
            .annotation(BASE_DIGEST)
            .or_else(|| subject.platforms.first().and_then(|p| p.base_digest()))
        {
            Some(digest) => command.push(format!(
                "{}@{digest}",
                base.split('@').next().unwrap_or(base)
            )),
            None => command.push(base.to_owned()),
        }
    }
    for platform in &subject.platforms {
        command.push("--platform".into());
        command.push(platform.platform.to_string());
    }
    command
}
