//! Everything that runs cosign: finding it at the pinned version, the
//! signing identity, and the argument lists of sign, attest, verify and
//! verify-attestation. Also the image they work on: a reference resolved
//! once to an index digest and its platform manifests.
//!
//! Where cosign v3.1.3 puts things on a registry without the OCI 1.1
//! referrers API (such as distribution 2.8): every signature and every
//! attestation is a Sigstore bundle v0.3 (a DSSE envelope) stored as an OCI
//! artifact manifest whose `subject` is the signed digest, and the list of
//! them is an OCI index under the tag `sha256-<hex of the signed digest>`
//! (the referrers tag schema). Adding one rewrites that index, which is why
//! writes to one repository run one after another.

use crate::supply_chain::identity::{Identity, WorkflowIdentity};
use crate::supply_chain::sigstore::Instance;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Deserialize;
use xshell::{cmd, Shell};

use crate::oci::auth::PrivateDockerConfig;
use crate::support::process;
use crate::support::tools::{COSIGN, COSIGN_VERSION};

/// The issuer of GitHub Actions OIDC tokens, which Fulcio writes into the
/// certificate of a keyless signature.
pub const GITHUB_OIDC_ISSUER: &str = "https://token.actions.githubusercontent.com";

/// The media type of a Sigstore signing config, as cosign v3 reads it.
pub const SIGNING_CONFIG_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.signingconfig.v0.2+json";

/// Signing and verification options shared by sign, attest, verify and release.
#[derive(Debug, clap::Args, Clone, Default)]
pub struct SigningArgs {
    // The tasks that only sign or only verify give --key and --no-tlog
    // their own help (flags.rs, `mut_arg`).
    /// The private key that signs (cosign.key), whose public half then verifies; `env://` and KMS URIs pass through to cosign; without it, keyless in GitHub Actions.
    #[arg(long)]
    pub key: Option<String>,
    /// With --key: sign without a transparency-log entry, and verify with --insecure-ignore-tlog=true.
    #[arg(long)]
    pub no_tlog: bool,
    /// Sign with your own Sigstore: its signing config (`cosign signing-config create`), naming its Fulcio, timestamp authority and Rekor; default: sigstore.signing-config in [workspace.metadata.release], else the public-good instance.
    #[arg(long, value_name = "FILE", conflicts_with = "no_tlog")]
    pub signing_config: Option<Utf8PathBuf>,
    /// Trust your own Sigstore: its trusted root (`cosign trusted-root create`); whether a log entry or a signed timestamp is required follows from it and the signing config; default: sigstore.trusted-root in [workspace.metadata.release], else the public-good root.
    #[arg(long, value_name = "FILE")]
    pub trusted_root: Option<Utf8PathBuf>,
    /// Keyless: the OIDC issuer a certificate must name; default: sigstore.oidc-issuer in [workspace.metadata.release], else GitHub Actions' (https://token.actions.githubusercontent.com).
    #[arg(long, value_name = "URL")]
    pub oidc_issuer: Option<String>,
}

/// The help of --key and --no-tlog for the tasks that only sign or only
/// verify (SigningArgs' own help is for those that sign, then verify).
pub mod help {
    pub const SIGN_KEY: &str = "The private key that signs (cosign.key); `env://` and KMS URIs pass through to cosign; without it, keyless in GitHub Actions";
    pub const SIGN_NO_TLOG: &str = "With --key: sign without a transparency-log entry, for an offline or private registry; verify with `verify --no-tlog`";
    pub const ATTEST_KEY: &str = "The private key that signs the attestations (cosign.key); `env://` and KMS URIs pass through to cosign; without it, keyless in GitHub Actions";
    pub const ATTEST_NO_TLOG: &str = "With --key: attest without a transparency-log entry, for an offline or private registry; verify with `verify --no-tlog`";
    pub const VERIFY_KEY: &str = "The public key that verifies (cosign.pub); `env://` and KMS URIs pass through to cosign; without it, keyless: the exact identity of the workflow that signed";
    pub const VERIFY_NO_TLOG: &str = "With --key: accept signatures made without a transparency-log entry (cosign verify --insecure-ignore-tlog=true), as `sign --no-tlog` makes them";
    pub const BUNDLE_KEY: &str = "The public key that verifies the release (cosign.pub): bundled into verify/, and with --load checked before any tag is set; `env://` and KMS URIs pass through to cosign";
    pub const BUNDLE_NO_TLOG: &str = "With --key: accept signatures made without a transparency-log entry (cosign verify --insecure-ignore-tlog=true)";
}

/// The cosign binary, checked to be the pinned version.
#[derive(Debug, Clone)]
pub struct Cosign {
    pub path: PathBuf,
}

impl Cosign {
    /// Finds cosign and fails unless it is exactly [`COSIGN_VERSION`]: the
    /// storage format and the flags changed between major versions, and the
    /// tests pin the behaviour of this one.
    pub fn find() -> Result<Cosign> {
        let path = COSIGN.find()?;
        let found = version_of(&path)?;
        if found != COSIGN_VERSION {
            bail!(
                "cosign {found} found at {}, but this project needs exactly cosign {COSIGN_VERSION}: {}",
                path.display(),
                COSIGN.install_hint
            );
        }
        Ok(Cosign { path })
    }

    /// Runs cosign with `args`; stdout is returned. Unless `quiet`, its
    /// stderr streams live under the current step; it is kept either way,
    /// for the error line.
    pub fn run(&self, args: &[String], quiet: bool) -> Result<CosignOutput> {
        let mut command = duct::cmd(&self.path, args);
        // cosign reads registry credentials only from a Docker config, while
        // CI has GITHUB_TOKEN and no `docker login`: a private config holds
        // it for this one run, and is removed when `private` drops, after
        // cosign has finished, on error too.
        let private = PrivateDockerConfig::with_github_token()?;
        if let Some(config) = &private {
            command = command.env("DOCKER_CONFIG", config.dir());
        }
        let what = self.path.display().to_string();
        let finished = if quiet {
            let output = command
                .stdout_capture()
                .stderr_capture()
                .unchecked()
                .run()
                .with_context(|| format!("cannot run {what}"))?;
            process::Finished {
                success: output.status.success(),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            }
        } else {
            process::stream_stderr(command, &what)?
        };
        Ok(CosignOutput {
            success: finished.success,
            stdout: finished.stdout,
            stderr: finished.stderr,
        })
    }

    /// Runs cosign and fails with its error line when it fails.
    pub fn run_ok(&self, args: &[String]) -> Result<String> {
        let output = self.run(args, false)?;
        if !output.success {
            bail!("`{}` failed: {}", display(args), output.error_line());
        }
        Ok(output.stdout)
    }
}

pub struct CosignOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CosignOutput {
    /// cosign's own explanation: its `Error:` line, else its last line,
    /// with the fix when cosign's words alone do not say it.
    pub fn error_line(&self) -> String {
        let line = process::error_line(&self.stderr);
        // go-containerregistry refuses a token service on a private or
        // loopback IP address (other than the registry's own) as a guard
        // against forged requests, while our client and skopeo accept it.
        if line.contains("invalid realm in www-authenticate") && line.contains("link-local address")
        {
            return format!("{line}; cosign refuses a token service on a private or loopback IP address: name the realm in the registry's token auth configuration by a host name");
        }
        line
    }
}

/// `cosign version --json`'s gitVersion, such as `v3.1.3`.
pub fn version_of(path: &std::path::Path) -> Result<String> {
    let sh = Shell::new()?;
    let out = cmd!(sh, "{path} version --json")
        .quiet()
        .ignore_stderr()
        .read()
        .with_context(|| {
            format!(
                "cannot run `{} version --json`; reinstall it: {}",
                path.display(),
                COSIGN.install_hint
            )
        })?;
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Version {
        git_version: String,
    }
    let version: Version = serde_json::from_str(&out).with_context(|| {
        format!(
            "`{} version --json` did not print cosign's version JSON; this project needs cosign {COSIGN_VERSION}: {}",
            path.display(),
            COSIGN.install_hint
        )
    })?;
    Ok(version.git_version)
}

/// The cosign path for printing a plan: the pinned one if present, with a
/// warning on stderr otherwise, so that a dry run never fails on it.
pub fn for_plan() -> String {
    match Cosign::find() {
        Ok(cosign) => cosign.path.display().to_string(),
        Err(err) => {
            eprintln!("warning: {err:#}");
            "cosign".to_owned()
        }
    }
}

/// A Sigstore signing config with no service at all: no Fulcio, no Rekor,
/// no timestamp authority. Signing with a key then touches nothing but the
/// registry. (`--tlog-upload=false` is an error in cosign v3.)
pub fn no_tlog_signing_config() -> serde_json::Value {
    serde_json::json!({
        "mediaType": SIGNING_CONFIG_MEDIA_TYPE,
        "caUrls": [],
        "oidcUrls": [],
        "rekorTlogUrls": [],
        "tsaUrls": []
    })
}

/// A Sigstore trusted root that trusts no service. Given to the signing
/// commands with the no-tlog signing config: without one, cosign v3 fetches
/// the public TUF repository on every sign, attest and sign-blob, only to
/// log a warning when it is unreachable, so `--no-tlog` would not be
/// offline.
pub fn empty_trusted_root() -> serde_json::Value {
    serde_json::json!({
        "mediaType": TRUSTED_ROOT_MEDIA_TYPE,
        "tlogs": [],
        "certificateAuthorities": [],
        "ctlogs": [],
        "timestampAuthorities": []
    })
}

/// The media type of a Sigstore trusted root, as cosign v3 reads it.
pub const TRUSTED_ROOT_MEDIA_TYPE: &str =
    "application/vnd.dev.sigstore.trustedroot+json;version=0.1";

/// The empty trusted root, written next to the no-tlog signing config.
pub fn trusted_root_next_to(signing_config: &Utf8Path) -> Utf8PathBuf {
    signing_config.with_file_name("trusted-root-empty.json")
}

/// Writes the no-tlog signing config under `dir`, and the empty trusted
/// root next to it; returns the signing config's path.
pub fn write_no_tlog_signing_config(dir: &Utf8Path) -> Result<Utf8PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
    let path = dir.join("signing-config-no-tlog.json");
    crate::support::fs::write_atomically(
        &path,
        &serde_json::to_vec_pretty(&no_tlog_signing_config())?,
    )?;
    crate::support::fs::write_atomically(
        &trusted_root_next_to(&path),
        &serde_json::to_vec_pretty(&empty_trusted_root())?,
    )?;
    Ok(path)
}

/// The options every cosign call of one run shares.
#[derive(Debug, Clone)]
pub struct Options {
    pub identity: Identity,
    /// For sign and attest with --no-tlog.
    pub signing_config: Option<Utf8PathBuf>,
    /// For verify with --no-tlog.
    pub ignore_tlog: bool,
    /// Plain HTTP to a loopback registry.
    pub insecure: bool,
    /// For keyless verification: exactly the workflow run that signed.
    pub workflow: Option<WorkflowIdentity>,
    pub sigstore: Instance,
}

impl Options {
    fn registry_args(&self, args: &mut Vec<String>) {
        if self.insecure {
            args.push("--allow-insecure-registry".into());
            args.push("--allow-http-registry".into());
        }
    }

    fn signer_args(&self, args: &mut Vec<String>) {
        args.push("--yes".into());
        if let Identity::Key(key) = &self.identity {
            args.push(format!("--key={key}"));
        }
        self.offline_args(args);
        self.registry_args(args);
    }

    /// With --no-tlog: no service to sign with, and no TUF repository to
    /// fetch a trusted root from. Else the private Sigstore's services, if
    /// one is named.
    fn offline_args(&self, args: &mut Vec<String>) {
        if let Some(config) = &self.signing_config {
            args.push(format!("--signing-config={config}"));
            args.push(format!("--trusted-root={}", trusted_root_next_to(config)));
            return;
        }
        if let Some(config) = &self.sigstore.signing_config {
            args.push(format!("--signing-config={config}"));
        }
        if let Some(root) = &self.sigstore.trusted_root {
            args.push(format!("--trusted-root={root}"));
        }
    }

    fn verifier_args(&self, args: &mut Vec<String>) -> Result<()> {
        self.trust_args(args)?;
        self.registry_args(args);
        Ok(())
    }

    /// Whom a verification trusts, and whether it needs a log entry: the
    /// same for images and for blobs.
    fn trust_args(&self, args: &mut Vec<String>) -> Result<()> {
        match &self.identity {
            Identity::Key(key) => args.push(format!("--key={key}")),
            Identity::Keyless => {
                let workflow = self.workflow.as_ref().context(
                    "keyless verification needs the identity of the workflow that signed",
                )?;
                self.sigstore.check_keyless()?;
                args.extend(workflow.cosign_args());
            }
        }
        let sigstore = &self.sigstore;
        if let Some(root) = &sigstore.trusted_root {
            args.push(format!("--trusted-root={root}"));
        }
        if self.ignore_tlog || !sigstore.evidence.transparency_log {
            args.push("--insecure-ignore-tlog=true".into());
        }
        if sigstore.evidence.signed_timestamp {
            args.push("--use-signed-timestamps".into());
        }
        // A private Fulcio without a certificate transparency log issues
        // certificates without SCTs; its trusted root then lists no CT log.
        if self.identity == Identity::Keyless && !sigstore.evidence.certificate_transparency {
            args.push("--insecure-ignore-sct=true".into());
        }
        Ok(())
    }

    /// `cosign sign --recursive`: the index and every manifest it lists.
    pub fn sign(&self, image: &str) -> Vec<String> {
        let mut args = vec!["sign".into(), "--recursive".into()];
        self.signer_args(&mut args);
        args.push(image.into());
        args
    }

    pub fn attest(&self, image: &str, kind: &str, predicate: &Utf8Path) -> Vec<String> {
        let mut args = vec!["attest".into()];
        self.signer_args(&mut args);
        args.push(format!("--type={kind}"));
        args.push(format!("--predicate={predicate}"));
        args.push(image.into());
        args
    }

    pub fn verify(&self, image: &str) -> Result<Vec<String>> {
        let mut args = vec!["verify".into()];
        self.verifier_args(&mut args)?;
        args.push("--output=json".into());
        args.push(image.into());
        Ok(args)
    }

    /// `cosign sign-blob` with the signature, certificate and any log entry
    /// in one Sigstore bundle next to the file.
    pub fn sign_blob(&self, file: &Utf8Path, bundle: &Utf8Path) -> Vec<String> {
        let mut args = vec!["sign-blob".into(), "--yes".into()];
        if let Identity::Key(key) = &self.identity {
            args.push(format!("--key={key}"));
        }
        self.offline_args(&mut args);
        args.push(format!("--bundle={bundle}"));
        args.push(file.to_string());
        args
    }

    pub fn verify_blob(&self, file: &str, bundle: &str) -> Result<Vec<String>> {
        let mut args = vec!["verify-blob".into()];
        self.trust_args(&mut args)?;
        args.push(format!("--bundle={bundle}"));
        args.push(file.into());
        Ok(args)
    }

    pub fn verify_attestation(&self, image: &str, kind: &str) -> Result<Vec<String>> {
        let mut args = vec!["verify-attestation".into()];
        self.verifier_args(&mut args)?;
        args.push(format!("--type={kind}"));
        args.push(image.into());
        Ok(args)
    }
}

/// `cargo xtask verify` as a user types it, trusting what signed: the
/// public key's file, or the release workflow's identity (no flag). The one
/// place every printed verify command comes from.
pub fn xtask_verify_command(
    reference: &str,
    identity: &Identity,
    no_tlog: bool,
    insecure: bool,
    run: bool,
) -> String {
    let mut command = format!("cargo xtask verify {reference}");
    if run {
        command.push_str(" --run");
    }
    if let Identity::Key(key) = identity {
        command.push_str(&format!(
            " --key {}",
            crate::support::tools::shell_quote(key)
        ));
    }
    if no_tlog {
        command.push_str(" --no-tlog");
    }
    if insecure {
        command.push_str(" --insecure");
    }
    command
}

/// `cargo xtask sign` (or attest) as a user would type it to redo one
/// step of a larger task by hand.
pub fn xtask_signing_command(
    task: &str,
    reference: &str,
    signing: &SigningArgs,
    insecure: bool,
) -> String {
    let mut command = format!("cargo xtask {task} {reference}");
    if let Some(key) = &signing.key {
        command.push_str(&format!(" --key={key}"));
    }
    if signing.no_tlog {
        command.push_str(" --no-tlog");
    }
    let quote = crate::support::tools::shell_quote;
    if let Some(file) = &signing.signing_config {
        command.push_str(&format!(" --signing-config {}", quote(file.as_str())));
    }
    if let Some(file) = &signing.trusted_root {
        command.push_str(&format!(" --trusted-root {}", quote(file.as_str())));
    }
    if let Some(issuer) = &signing.oidc_issuer {
        command.push_str(&format!(" --oidc-issuer {}", quote(issuer)));
    }
    if insecure {
        command.push_str(" --insecure");
    }
    command
}

/// The public key a user verifies with, for a private key: `cosign.pub` for
/// `cosign.key` (what generate-key-pair writes).
pub fn public_key_hint(key: &str) -> String {
    match key.strip_suffix(".key") {
        Some(stem) if !key.contains("://") => format!("{stem}.pub"),
        _ => "<public key>".to_owned(),
    }
}

/// A command line for people: each argument quoted where a shell would
/// need it. Only for printing; commands never run through a shell.
pub fn display(args: &[String]) -> String {
    crate::support::tools::command_line("cosign", args)
}

/// `target/cosign`, where generated cosign inputs go.
pub fn work_dir(target_dir: &Utf8Path) -> Utf8PathBuf {
    target_dir.join("cosign")
}

/// Writes the public half of `key` (a file, `env://VAR` or a KMS URI), so
/// that a release can verify with exactly what it signed with.
pub fn write_public_key(cosign: &Cosign, key: &str, out: &Utf8Path) -> Result<()> {
    cosign
        .run_ok(&[
            "public-key".into(),
            format!("--key={key}"),
            format!("--outfile={out}"),
        ])
        .with_context(|| format!("cannot derive the public key of {key}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_realm_on_a_private_address_gets_the_fix() {
        let output = CosignOutput {
            success: false,
            stdout: String::new(),
            stderr: "Error: signing [r.internal/app@sha256:00]: accessing entity: invalid realm in www-authenticate: realm host \"10.0.0.5\" is a private or link-local address\n".to_owned(),
        };
        assert_eq!(
            output.error_line(),
            "signing [r.internal/app@sha256:00]: accessing entity: invalid realm in www-authenticate: realm host \"10.0.0.5\" is a private or link-local address; cosign refuses a token service on a private or loopback IP address: name the realm in the registry's token auth configuration by a host name"
        );
        let other = CosignOutput {
            success: false,
            stdout: String::new(),
            stderr: "Error: no matching signatures\n".to_owned(),
        };
        assert_eq!(other.error_line(), "no matching signatures");
    }
    #[test]
    fn argument_lists() {
        let options = Options {
            identity: Identity::Key("k.key".into()),
            signing_config: Some("/t/sc.json".into()),
            ignore_tlog: true,
            insecure: true,
            workflow: None,
            sigstore: Instance::public_good(),
        };
        assert_eq!(
            options.sign("h:1/app@sha256:ab"),
            [
                "sign",
                "--recursive",
                "--yes",
                "--key=k.key",
                "--signing-config=/t/sc.json",
                "--trusted-root=/t/trusted-root-empty.json",
                "--allow-insecure-registry",
                "--allow-http-registry",
                "h:1/app@sha256:ab"
            ]
        );
        let keyless = Options {
            identity: Identity::Keyless,
            signing_config: None,
            ignore_tlog: false,
            insecure: false,
            workflow: Some(
                WorkflowIdentity::new(
                    "https://github.com/o/r",
                    &crate::supply_chain::identity::Run::PullRequest(7),
                    None,
                    GITHUB_OIDC_ISSUER,
                )
                .unwrap(),
            ),
            sigstore: Instance::public_good(),
        };
        assert_eq!(
            display(&keyless.verify_attestation("r@sha256:ab", "cyclonedx").unwrap()),
            "cosign verify-attestation --certificate-identity=https://github.com/o/r/.github/workflows/ci.yml@refs/pull/7/merge --certificate-oidc-issuer=https://token.actions.githubusercontent.com --certificate-github-workflow-repository=o/r --certificate-github-workflow-trigger=pull_request --certificate-github-workflow-ref=refs/pull/7/merge --type=cyclonedx r@sha256:ab"
        );
        // A private Sigstore with a timestamp authority, no Rekor and no CT
        // log: its root, the timestamp instead of the log, no SCT; and its
        // services to sign with.
        let private = crate::supply_chain::sigstore::Instance {
            signing_config: Some("/t/signing.json".into()),
            trusted_root: Some("/t/root.json".into()),
            oidc_issuer: "https://issuer.internal".into(),
            evidence: crate::supply_chain::sigstore::Evidence {
                transparency_log: false,
                signed_timestamp: true,
                certificate_transparency: false,
            },
        };
        let keyless = Options {
            workflow: keyless.workflow.map(|w| private.issued(w)),
            sigstore: private,
            ..keyless
        };
        assert_eq!(
            display(&keyless.verify("r@sha256:ab").unwrap()),
            "cosign verify --certificate-identity=https://github.com/o/r/.github/workflows/ci.yml@refs/pull/7/merge --certificate-oidc-issuer=https://issuer.internal --certificate-github-workflow-repository=o/r --certificate-github-workflow-trigger=pull_request --certificate-github-workflow-ref=refs/pull/7/merge --trusted-root=/t/root.json --insecure-ignore-tlog=true --use-signed-timestamps --insecure-ignore-sct=true --output=json r@sha256:ab"
        );
        assert_eq!(
            display(&keyless.sign("r@sha256:ab")),
            "cosign sign --recursive --yes --signing-config=/t/signing.json --trusted-root=/t/root.json r@sha256:ab"
        );
        let without = Options {
            workflow: None,
            ..keyless
        };
        assert_eq!(
            without.verify("r@sha256:ab").unwrap_err().to_string(),
            "keyless verification needs the identity of the workflow that signed"
        );
    }
}
