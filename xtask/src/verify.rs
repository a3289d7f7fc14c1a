//! `cargo xtask verify REF [--run] [--json]`: checks, from the registry,
//! the signature of the index and of every platform manifest, the SBOM and
//! provenance attestations of every platform and the index, and with --run
//! that each platform's `/server` runs and reports the expected build.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use camino::{Utf8Path, Utf8PathBuf};
use serde::Serialize;
use serde_json::{json, Value};

use crate::flags;
use crate::oci::client::Client;
use crate::oci::subject::{client_for, PlatformImage, Subject};
use crate::oci::unpack::{Limits, Unpacker};
use crate::oci::REVISION;
use crate::supply_chain::cosign::{self, Cosign, Identity, SigningArgs};
use crate::support::config::Config;
use crate::support::progress::{Nest, Steps};
use crate::support::sandbox::{NetworkIsolation, Sandbox};
use crate::support::tools;

pub const CYCLONEDX_PREDICATE: &str = "https://cyclonedx.org/bom";
pub const SLSA_V1_PREDICATE: &str = "https://slsa.dev/provenance/v1";
/// The `critical.type` of a claim made by `cosign sign`.
pub const SIGNATURE_TYPE: &str = "https://sigstore.dev/cosign/sign/v1";

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `signature`, `sbom`, `provenance` or `run`.
    pub check: String,
    /// `index` or a platform such as `linux/arm64`.
    pub subject: String,
    pub digest: String,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    fn new(check: &str, subject: &str, digest: &str, result: Result<String>) -> Check {
        let (ok, detail) = match result {
            Ok(detail) => (true, detail),
            Err(err) => (false, format!("{err:#}")),
        };
        Check {
            check: check.to_owned(),
            subject: subject.to_owned(),
            digest: digest.to_owned(),
            ok,
            detail,
        }
    }

    fn name(&self) -> String {
        format!("{} of {}", self.check, self.subject)
    }
}

/// What to verify, and whom to trust.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// IMAGE@sha256:… or IMAGE:TAG; a tag is resolved to a digest once.
    pub reference: String,
    /// The public key; None trusts the release workflow's keyless identity.
    pub signing: SigningArgs,
    pub insecure: bool,
    /// After every other check passed: run each platform's server.
    pub run: bool,
    /// The version the image must be (default: Cargo.toml's).
    pub expect_version: Option<String>,
}

/// What `verify --json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    pub image: String,
    pub digest: String,
    pub resolved_from_tag: Option<String>,
    pub identity: Value,
    pub tlog: bool,
    pub platforms: Vec<Value>,
    pub checks: Vec<Check>,
    pub passed: bool,
}

impl Report {
    /// The checks that failed, named.
    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(Check::name)
            .collect()
    }

    /// The checks as a table, one line each.
    pub fn table(&self) -> String {
        let mut out = format!("{}@{}\n", self.image, self.digest);
        if let Some(tag) = &self.resolved_from_tag {
            out.push_str(&format!("(resolved from the tag {tag})\n"));
        }
        let width = self
            .checks
            .iter()
            .map(|c| c.subject.len())
            .max()
            .unwrap_or(5)
            .max(7);
        out.push_str(&format!(
            "{:<6} {:<11} {:<width$} DETAIL\n",
            "RESULT", "CHECK", "SUBJECT"
        ));
        for check in &self.checks {
            out.push_str(&format!(
                "{:<6} {:<11} {:<width$} {}\n",
                if check.ok { "PASS" } else { "FAIL" },
                check.check,
                check.subject,
                check.detail
            ));
        }
        out
    }

    /// An error naming every failed check, if any failed.
    pub fn into_result(self) -> Result<Report> {
        let failed = self.failures();
        if !failed.is_empty() {
            bail!(
                "verification of {}@{} failed: {}",
                self.image,
                self.digest,
                failed.join(", ")
            );
        }
        Ok(self)
    }
}

pub fn run(flags: &flags::Verify) -> Result<()> {
    let config = Config::load()?;
    let options = VerifyOptions {
        reference: flags.reference.clone(),
        signing: flags.signing.clone(),
        insecure: flags.registry.insecure,
        run: flags.run,
        expect_version: flags.expect_version.clone(),
    };
    let started = std::time::Instant::now();
    let report = verify(&config, &options, &Nest::top())?;
    if flags.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    let report = report.into_result()?;
    eprintln!(
        "all {} checks passed in {:.1}s",
        report.checks.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs every check and returns them all, passed or not; an error only
/// when verification could not run at all. With `run`, nothing from the
/// image is executed unless every signature and attestation check passed.
pub fn verify(config: &Config, options: &VerifyOptions, nest: &Nest) -> Result<Report> {
    let identity = cosign::verifying_identity(&options.signing)?;
    let identity_regexp = match identity {
        Identity::Keyless => Some(cosign::release_identity_regexp(&config.repository)?),
        Identity::Key(_) => None,
    };
    let cosign = Cosign::find()?;
    let cosign_options = cosign::Options {
        identity: identity.clone(),
        signing_config: None,
        ignore_tlog: options.signing.no_tlog,
        insecure: options.insecure,
        identity_regexp,
    };
    let expected_version = options
        .expect_version
        .as_deref()
        .map(|v| v.strip_prefix('v').unwrap_or(v).to_owned())
        .unwrap_or_else(|| config.version.to_string());

    let mut steps = Steps::within(nest, if options.run { 4 } else { 3 });
    let client = client_for(&options.reference, options.insecure)?;
    let subject = steps.run("resolve the image", || {
        Subject::resolve(&options.reference, &client)
    })?;
    let mut checks = Vec::new();
    // Whether cosign proved every signature and every attestation to come
    // from the trusted identity. A statement that is signed but says
    // something else (another version) is a failed check, not a lack of
    // proof.
    let mut proven = true;
    steps.run("verify the signatures", || {
        let mut targets = vec![("index".to_owned(), subject.digest.clone())];
        if subject.is_index {
            targets.extend(
                subject
                    .platforms
                    .iter()
                    .map(|p| (p.platform.to_string(), p.digest.clone())),
            );
        } else {
            targets[0].0 = subject.platforms[0].platform.to_string();
        }
        for (name, digest) in targets {
            let result = verify_signature(&cosign, &cosign_options, &subject, &digest);
            proven &= result.is_ok();
            checks.push(Check::new("signature", &name, &digest, result));
        }
        Ok(())
    })?;
    steps.run("verify the attestations", || {
        for platform in &subject.platforms {
            let name = platform.platform.to_string();
            let result = verify_sbom(
                &cosign,
                &cosign_options,
                &subject,
                platform,
                &expected_version,
                &mut proven,
            );
            checks.push(Check::new("sbom", &name, &platform.digest, result));
            let result = verify_provenance(
                &cosign,
                &cosign_options,
                &subject,
                &platform.digest,
                &mut proven,
            );
            checks.push(Check::new("provenance", &name, &platform.digest, result));
        }
        if subject.is_index {
            let result = verify_provenance(
                &cosign,
                &cosign_options,
                &subject,
                &subject.digest,
                &mut proven,
            );
            checks.push(Check::new("provenance", "index", &subject.digest, result));
        }
        Ok(())
    })?;
    if options.run && !proven {
        // Never run what is not proven to come from the trusted signer: the
        // binary would run on this machine, as the caller.
        let unverified: Vec<String> = checks.iter().filter(|c| !c.ok).map(Check::name).collect();
        eprintln!(
            "not running any platform's server: {} did not pass",
            unverified.join(", ")
        );
        checks.push(Check::new(
            "run",
            "all",
            &subject.digest,
            Err(anyhow::format_err!(
                "not run: the image's signatures and attestations are not all proven to come from the trusted signer"
            )),
        ));
    } else if options.run {
        steps.run("run each platform's server", || {
            for platform in &subject.platforms {
                // Per process: two verifications of one digest must not
                // unpack over each other.
                let dir = config.target_dir.join("verify").join(format!(
                    "{}.{}",
                    platform.digest.trim_start_matches("sha256:"),
                    std::process::id()
                ));
                let result =
                    run_platform(config, &client, &subject, platform, &expected_version, &dir);
                // The rootfs is only needed for the run.
                let _ = std::fs::remove_dir_all(&dir);
                checks.push(Check::new(
                    "run",
                    &platform.platform.to_string(),
                    &platform.digest,
                    result,
                ));
            }
            Ok(())
        })?;
    }

    let passed = checks.iter().all(|c| c.ok);
    Ok(Report {
        image: subject.name.clone(),
        digest: subject.digest.clone(),
        resolved_from_tag: subject.resolved_from_tag.clone(),
        identity: match &identity {
            Identity::Key(key) => json!({"key": key}),
            Identity::Keyless => json!({
                "certificate_identity_regexp": cosign_options.identity_regexp,
                "certificate_oidc_issuer": cosign::GITHUB_OIDC_ISSUER,
            }),
        },
        tlog: !options.signing.no_tlog,
        platforms: subject
            .platforms
            .iter()
            .map(|p| json!({"platform": p.platform.to_string(), "digest": p.digest}))
            .collect(),
        checks,
        passed,
    })
}

fn verify_signature(
    cosign: &Cosign,
    options: &cosign::Options,
    subject: &Subject,
    digest: &str,
) -> Result<String> {
    let output = cosign.run(&options.verify(&subject.by_digest(digest))?, true)?;
    if !output.success {
        bail!(
            "not signed by {}: {}",
            trusted(options),
            output.error_line()
        );
    }
    // cosign v3 counts every bundle attached to the digest, attestations
    // included, as a signature: only a claim of the signing type shows
    // that the image itself was signed.
    let claims: Vec<Value> = serde_json::from_str(output.stdout.trim())
        .context("cosign verify printed something that is not its JSON claims")?;
    let signatures = claims
        .iter()
        .filter(|c| {
            c["critical"]["type"] == SIGNATURE_TYPE
                && c["critical"]["image"]["docker-manifest-digest"] == digest
        })
        .count();
    if signatures == 0 {
        let types: Vec<&str> = claims
            .iter()
            .filter_map(|c| c["critical"]["type"].as_str())
            .collect();
        bail!(
            "not signed by {}: cosign found only attestations ({}), no signature of {digest}",
            trusted(options),
            types.join(", ")
        );
    }
    Ok(format!("{signatures} signature(s) by {}", trusted(options)))
}

fn trusted(options: &cosign::Options) -> String {
    match &options.identity {
        Identity::Key(key) => format!("the key {key}"),
        Identity::Keyless => "the release workflow (release.yml on a v* tag)".to_owned(),
    }
}

/// The in-toto statements cosign accepted for one predicate type.
fn verified_statements(
    cosign: &Cosign,
    options: &cosign::Options,
    subject: &Subject,
    digest: &str,
    kind: &str,
) -> Result<Vec<Value>> {
    let output = cosign.run(
        &options.verify_attestation(&subject.by_digest(digest), kind)?,
        true,
    )?;
    if !output.success {
        bail!(
            "no {kind} attestation by {}: {}",
            trusted(options),
            output.error_line()
        );
    }
    let engine = base64::engine::general_purpose::STANDARD;
    let mut statements = Vec::new();
    for line in output.stdout.lines().filter(|l| !l.trim().is_empty()) {
        let envelope: Value = serde_json::from_str(line)
            .context("cosign verify-attestation printed a line that is not a DSSE envelope")?;
        let payload = envelope["payload"]
            .as_str()
            .context("a DSSE envelope without a payload")?;
        let statement: Value = serde_json::from_slice(
            &engine
                .decode(payload)
                .context("a DSSE payload that is not base64")?,
        )
        .context("a DSSE payload that is not an in-toto statement")?;
        let hex = digest.trim_start_matches("sha256:");
        let names_digest = statement["subject"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["digest"]["sha256"] == hex));
        if !names_digest {
            bail!("a {kind} attestation whose subject is not {digest}");
        }
        statements.push(statement);
    }
    if statements.is_empty() {
        bail!("cosign accepted no {kind} attestation for {digest}");
    }
    Ok(statements)
}

fn verify_sbom(
    cosign: &Cosign,
    options: &cosign::Options,
    subject: &Subject,
    platform: &PlatformImage,
    expected_version: &str,
    proven: &mut bool,
) -> Result<String> {
    let statements = verified_statements(cosign, options, subject, &platform.digest, "cyclonedx")
        .inspect_err(|_| *proven = false)?;
    for statement in &statements {
        if statement["predicateType"] != CYCLONEDX_PREDICATE {
            bail!(
                "the SBOM attestation has predicate type {}, not {CYCLONEDX_PREDICATE}",
                statement["predicateType"]
            );
        }
        let component = &statement["predicate"]["metadata"]["component"];
        let version = component["version"].as_str().unwrap_or("none");
        if version != expected_version {
            bail!(
                "the SBOM's root component {} has version {version}, not {expected_version}",
                component["name"].as_str().unwrap_or("(unnamed)")
            );
        }
    }
    let component = &statements[0]["predicate"]["metadata"]["component"];
    Ok(format!(
        "CycloneDX, root component {} {expected_version}",
        component["name"].as_str().unwrap_or("(unnamed)")
    ))
}

fn verify_provenance(
    cosign: &Cosign,
    options: &cosign::Options,
    subject: &Subject,
    digest: &str,
    proven: &mut bool,
) -> Result<String> {
    let statements = verified_statements(cosign, options, subject, digest, "slsaprovenance1")
        .inspect_err(|_| *proven = false)?;
    for statement in &statements {
        if statement["predicateType"] != SLSA_V1_PREDICATE {
            bail!(
                "the provenance has predicate type {}, not {SLSA_V1_PREDICATE}",
                statement["predicateType"]
            );
        }
    }
    let builder = statements[0]["predicate"]["runDetails"]["builder"]["id"]
        .as_str()
        .unwrap_or("unknown");
    Ok(format!("SLSA v1 for {digest}, builder {builder}"))
}

/// The most a verified image's layers may unpack to: the server image is a
/// few MB, and a layer that inflates past this is an attack, not an image.
const UNPACK_LIMITS: Limits = Limits {
    max_total_bytes: 512 * 1024 * 1024,
    max_entries: 100_000,
};

/// How long `/server version --json` may take, under qemu included.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Pulls one platform by digest, unpacks its layers safely into a rootfs,
/// and runs its server's `version --json` in the sandbox (under QEMU for
/// arm64 on another host). Called only after every check passed.
fn run_platform(
    config: &Config,
    client: &Client,
    subject: &Subject,
    platform: &PlatformImage,
    expected_version: &str,
    dir: &Utf8Path,
) -> Result<String> {
    let rootfs = dir.join("rootfs");
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs).with_context(|| format!("cannot clear {rootfs}"))?;
    }
    std::fs::create_dir_all(&rootfs).with_context(|| format!("cannot create {rootfs}"))?;
    let mut unpacker = Unpacker::new(&rootfs, UNPACK_LIMITS)?;
    for layer in &platform.manifest.layers {
        let bytes = client.get_blob(&subject.reference.repository, &layer.digest)?;
        unpacker
            .apply_layer(&bytes[..], &layer.media_type)
            .with_context(|| format!("cannot unpack layer {}", layer.digest))?;
    }
    let binary: Utf8PathBuf = rootfs.join(&config.binary);
    let is_file = std::fs::symlink_metadata(&binary).is_ok_and(|m| m.is_file());
    if !is_file {
        bail!("the image has no regular file /{}", config.binary);
    }
    let emulator = if platform.platform.is_host() {
        None
    } else if platform.platform.arch == "arm64" {
        Some(tools::QEMU_AARCH64.find()?)
    } else {
        bail!(
            "cannot run a {} binary on this {} host",
            platform.platform,
            std::env::consts::ARCH
        )
    };
    let sandbox = Sandbox {
        timeout: RUN_TIMEOUT,
        emulator,
    };
    let (output, isolation) = sandbox
        .run(&binary, &["version", "--json"])
        .with_context(|| format!("/{} version --json failed", config.binary))?;
    match isolation.network {
        NetworkIsolation::Namespace => eprintln!(
            "  {}: ran /{} in an empty directory, with no environment and no network, for at most {}s",
            platform.platform,
            config.binary,
            RUN_TIMEOUT.as_secs()
        ),
        NetworkIsolation::None { why } => eprintln!(
            "  {}: ran /{} in an empty directory, with no environment, for at most {}s; not isolated from the network: {why}",
            platform.platform,
            config.binary,
            RUN_TIMEOUT.as_secs()
        ),
    }
    let info: Value = serde_json::from_str(&output).with_context(|| {
        format!(
            "/{} version --json printed something that is not JSON: {output}",
            config.binary
        )
    })?;
    let version = info["version"].as_str().unwrap_or("none");
    if version != expected_version {
        bail!(
            "/{} reports version {version}, expected {expected_version}",
            config.binary
        );
    }
    let git_sha = info["git_sha"].as_str().unwrap_or("none");
    if git_sha.len() != 40 || !git_sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "/{} reports git_sha {git_sha:?}, not a 40-hex commit",
            config.binary
        );
    }
    match platform.label(REVISION) {
        Some(revision) if revision == git_sha => {}
        Some(revision) => bail!(
            "/{} was built from {git_sha}, but the image's {REVISION} label says {revision}",
            config.binary
        ),
        None => bail!("the image has no {REVISION} label to compare git_sha {git_sha} with"),
    }
    Ok(format!(
        "/{} {version} ({}){}",
        config.binary,
        &git_sha[..7],
        if platform.platform.is_host() {
            ""
        } else {
            " under qemu"
        }
    ))
}
