//! `cargo xtask verify REF [--run] [--json]`: checks, from the registry,
//! the signature of the index and of every platform manifest, the SBOM and
//! provenance attestations of every platform and the index, and with --run
//! that each platform's `/server` runs and reports the expected build.

use anyhow::{bail, Context, Result};
use camino::Utf8Path;
use serde::Serialize;
use serde_json::{json, Value};

use crate::chart;
use crate::flags;
use crate::oci::client::Client;
use crate::oci::run;
use crate::oci::subject::{client_for, PlatformImage, Subject};
use crate::oci::REVISION;
use crate::supply_chain::claims::{verified_statements, verify_signature};
use crate::supply_chain::content::{verify_provenance, verify_sbom, Facts, TagCommit};
use crate::supply_chain::cosign::{self, Cosign, SigningArgs};
use crate::supply_chain::identity::{self, Identity, Run, WorkflowIdentity};
use crate::supply_chain::sigstore::Instance;
use crate::supply_chain::vuln;
use crate::support::config::Config;
use crate::support::git::Git;
use crate::support::progress::{Nest, Steps};

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `signature`, `sbom`, `provenance`, `vuln` or `run`.
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
    /// Keyless: a branch or pull-request build, signed by ci.yml on its
    /// own ref; None for a release, signed by release.yml on its tag.
    pub ci_build: Option<Run>,
    /// `host/repository` the SBOMs and provenance must name; None only
    /// reports the one they name (a mirror keeps the first push's).
    pub expect_repository: Option<String>,
    /// The most days the vuln attestation's database may be older than
    /// today; setting it also requires the attestation.
    pub max_db_age: Option<u64>,
    /// Fail when a platform has no vuln attestation: a release scans
    /// before it attests, so its own verification requires one.
    pub require_vuln: bool,
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
    /// Keyless: exactly whom the signatures were checked against.
    #[serde(skip)]
    pub workflow: Option<WorkflowIdentity>,
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
        ci_build: Run::of_ci(flags.branch.as_deref(), flags.pr),
        expect_repository: flags.expect_repository.clone(),
        max_db_age: flags.max_db_age,
        require_vuln: flags.max_db_age.is_some(),
    };
    let started = std::time::Instant::now();
    let mut report = verify(&config, &options, &Nest::top())?;
    if let Some(chart) = &flags.chart {
        let checked = chart::verify_chart(
            chart,
            &options.signing,
            options.insecure,
            &report.digest,
            report.workflow.as_ref(),
            &Instance::resolve(&config, &options.signing)?,
        )?;
        for (check, result) in [
            ("signature", checked.signature),
            ("chart-image", checked.image),
        ] {
            report
                .checks
                .push(Check::new(check, "chart", &checked.digest, result));
        }
        report.passed = report.checks.iter().all(|c| c.ok);
    }
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
    let identity = identity::verifying_identity(&options.signing)?;
    let cosign = Cosign::find()?;
    let sigstore = Instance::resolve(config, &options.signing)?;
    let expected_version = expected_version(
        options.expect_version.as_deref(),
        &options.reference,
        &config.version,
    );

    let mut steps = Steps::within(nest, if options.run { 4 } else { 3 });
    let client = client_for(&options.reference, options.insecure)?;
    let subject = steps.run("resolve the image", || {
        Subject::resolve(&options.reference, &client)
    })?;
    let workflow = match identity {
        Identity::Keyless => Some(sigstore.issued(workflow_identity(
            config,
            options,
            &expected_version,
            &subject,
        )?)),
        Identity::Key(_) => None,
    };
    let cosign_options = cosign::Options {
        identity: identity.clone(),
        signing_config: None,
        ignore_tlog: options.signing.no_tlog,
        insecure: options.insecure,
        workflow,
        sigstore,
    };
    // Only a release is held to its version tag: a branch build carries
    // the same Cargo version from a later commit. A release is what the
    // caller names as one (--expect-version, as the release task does
    // before any tag exists), or what the version tag resolved to.
    let release_tag = format!("v{expected_version}");
    let is_release = options.expect_version.is_some()
        || subject.resolved_from_tag.as_deref() == Some(release_tag.as_str());
    let tag = if is_release {
        version_tag(config, &expected_version)
    } else {
        None
    };
    let mut checks = Vec::new();
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
            checks.push(Check::new("signature", &name, &digest, result));
        }
        Ok(())
    })?;
    steps.run("verify the attestations", || {
        for platform in &subject.platforms {
            let name = platform.platform.to_string();
            let facts = Facts::of_platform(
                &subject,
                platform,
                &expected_version,
                &tag,
                options.expect_repository.as_deref(),
            );
            let result = verify_sbom(
                &cosign,
                &cosign_options,
                &subject,
                &facts,
                &expected_version,
            );
            checks.push(Check::new("sbom", &name, &platform.digest, result));
            let result = verify_provenance(&cosign, &cosign_options, &subject, &facts);
            checks.push(Check::new("provenance", &name, &platform.digest, result));
            // Reported when attached; required only when asked for.
            let expected = options.require_vuln;
            let result =
                verified_statements(&cosign, &cosign_options, &subject, &platform.digest, "vuln")
                    .and_then(|s| vuln::check_statements(&s, options.max_db_age, vuln::today()));
            if expected || result.is_ok() {
                checks.push(Check::new("vuln", &name, &platform.digest, result));
            }
        }
        if subject.is_index {
            let facts = Facts::of_index(
                &subject,
                &expected_version,
                &tag,
                options.expect_repository.as_deref(),
            );
            let result = verify_provenance(&cosign, &cosign_options, &subject, &facts);
            checks.push(Check::new("provenance", "index", &subject.digest, result));
        }
        Ok(())
    })?;
    let failed: Vec<String> = checks.iter().filter(|c| !c.ok).map(Check::name).collect();
    if options.run && !failed.is_empty() {
        // Never run what is not verified: the binary would run on this
        // machine, as the caller. A signed statement that says something
        // false is as much a reason as a missing signature.
        eprintln!(
            "not running any platform's server: {} did not pass",
            failed.join(", ")
        );
        checks.push(Check::new(
            "run",
            "all",
            &subject.digest,
            Err(anyhow::format_err!(
                "not run: the signature and attestation checks did not all pass"
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
            Identity::Keyless => serde_json::to_value(&cosign_options.workflow)?,
        },
        tlog: !options.signing.no_tlog && cosign_options.sigstore.evidence.transparency_log,
        platforms: subject
            .platforms
            .iter()
            .map(|p| json!({"platform": p.platform.to_string(), "digest": p.digest}))
            .collect(),
        checks,
        passed,
        workflow: cosign_options.workflow.clone(),
    })
}

/// Exactly whom a keyless verification trusts: the release workflow on the
/// tag of the expected version, or ci.yml on the branch or pull request
/// given; the commit is the one the signed index names.
fn workflow_identity(
    config: &Config,
    options: &VerifyOptions,
    expected_version: &str,
    subject: &Subject,
) -> Result<WorkflowIdentity> {
    let run = match &options.ci_build {
        Some(run) => run.clone(),
        None => Run::Release(crate::tags::parse_version(&format!("v{expected_version}"))?),
    };
    WorkflowIdentity::new(
        &config.repository,
        &run,
        subject.annotation(REVISION),
        cosign::GITHUB_OIDC_ISSUER,
    )
}

/// The version the image must be: `--expect-version`, else the version tag
/// being verified (`…:v1.2.3`), so that any checkout verifies any release;
/// only a reference without a version tag falls back to this checkout's.
fn expected_version(expect: Option<&str>, reference: &str, checkout: &semver::Version) -> String {
    let from_tag = || {
        let tag = crate::oci::reference::Reference::parse(reference)
            .ok()?
            .tag?;
        crate::tags::parse_version(&tag).ok().map(|v| v.to_string())
    };
    match expect {
        Some(v) => v.strip_prefix('v').unwrap_or(v).to_owned(),
        None => from_tag().unwrap_or_else(|| checkout.to_string()),
    }
}

/// The commit the version tag points to in this checkout, if it has the
/// tag: a release's provenance must name that commit as its source. Without
/// git or the tag, the image's revision label is the reference instead.
fn version_tag(config: &Config, version: &str) -> TagCommit {
    let tag = format!("v{version}");
    let commit = Git::open(&config.workspace_root)
        .ok()?
        .tag_commit(&tag)
        .ok()??;
    Some((tag, commit))
}

/// Runs one platform's `/server version --json` from the registry, and
/// checks that it is the build the image says it is. Called only once the
/// image passed every signature and attestation check.
fn run_platform(
    config: &Config,
    client: &Client,
    subject: &Subject,
    platform: &PlatformImage,
    expected_version: &str,
    dir: &Utf8Path,
) -> Result<String> {
    let output = run::version_json(config, client, subject, platform, dir)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expected_version_comes_from_the_flag_then_the_tag_then_the_checkout() {
        let checkout = semver::Version::new(0, 1, 0);
        let image = "registry.example/acme/widget";
        assert_eq!(
            expected_version(Some("v2.0.0"), &format!("{image}:v1.2.3"), &checkout),
            "2.0.0"
        );
        assert_eq!(
            expected_version(None, &format!("{image}:v1.2.3"), &checkout),
            "1.2.3"
        );
        assert_eq!(
            expected_version(None, &format!("{image}:v1.3.0-rc.1"), &checkout),
            "1.3.0-rc.1"
        );
        assert_eq!(
            expected_version(None, &format!("{image}:main"), &checkout),
            "0.1.0"
        );
        let digest = format!("{image}@sha256:{}", "a".repeat(64));
        assert_eq!(expected_version(None, &digest, &checkout), "0.1.0");
    }
}
