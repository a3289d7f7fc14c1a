//! Who signs, and whom verification trusts: a cosign key, or keyless with
//! the GitHub Actions OIDC identity of the release workflow.

use anyhow::{bail, Context, Result};
use camino::Utf8Path;

use crate::supply_chain::cosign::{SigningArgs, GITHUB_OIDC_ISSUER};

/// Who signs, or whom a verification trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A key file, `env://VAR`, or a KMS URI, passed through to cosign.
    Key(String),
    /// Fulcio certificates from GitHub Actions OIDC.
    Keyless,
}

/// True in a GitHub Actions job that may request an OIDC token
/// (`permissions: id-token: write`).
pub fn github_oidc_available() -> bool {
    std::env::var("ACTIONS_ID_TOKEN_REQUEST_URL").is_ok_and(|v| !v.is_empty())
}

/// The signing identity for sign and attest.
pub fn signing_identity(signing: &SigningArgs) -> Result<Identity> {
    match &signing.key {
        Some(key) => {
            check_key_exists(key)?;
            Ok(Identity::Key(key.clone()))
        }
        None if github_oidc_available() => {
            if signing.no_tlog {
                bail!("--no-tlog needs --key: a keyless certificate lives ten minutes and only a transparency log proves it was valid at signing time");
            }
            Ok(Identity::Keyless)
        }
        None => bail!(
            "no signing key: pass --key cosign.key (or env://VAR, or a KMS URI), or run in GitHub Actions with `permissions: id-token: write` for keyless signing"
        ),
    }
}

/// The identity verify trusts: the public key, or else the release workflow.
pub fn verifying_identity(signing: &SigningArgs) -> Result<Identity> {
    match &signing.key {
        Some(key) => {
            check_key_exists(key)?;
            Ok(Identity::Key(key.clone()))
        }
        None => Ok(Identity::Keyless),
    }
}

fn check_key_exists(key: &str) -> Result<()> {
    if !key.contains("://") && !Utf8Path::new(key).is_file() {
        bail!("the key {key} does not exist; pass the path of a cosign key (cosign generate-key-pair makes one), env://VAR, or a KMS URI");
    }
    Ok(())
}

/// A signing key file must be the private key, and it needs its password in
/// COSIGN_PASSWORD: cosign would otherwise prompt on a terminal that a
/// release job does not have.
pub fn check_signing_key(identity: &Identity) -> Result<()> {
    if let Identity::Key(key) = identity {
        if !key.contains("://") {
            refuse_public_key(key)?;
            if std::env::var_os("COSIGN_PASSWORD").is_none() {
                bail!("COSIGN_PASSWORD is not set; export the password of {key} (an empty value for a key without one)");
            }
        }
    }
    Ok(())
}

/// A public key passed where signing needs the private one: said as such,
/// before a password is asked for that no public key has. A file that
/// cannot be read is left to cosign, which names it.
fn refuse_public_key(key: &str) -> Result<()> {
    let Ok(text) = std::fs::read(key) else {
        return Ok(());
    };
    if String::from_utf8_lossy(&text).contains("-----BEGIN PUBLIC KEY-----") {
        bail!("{key} is a public key, which only verifies; signing needs the private key: pass --key cosign.key (the file `cosign generate-key-pair` wrote beside it)");
    }
    Ok(())
}

/// The workflow that signs releases.
pub const RELEASE_WORKFLOW: &str = "release.yml";
/// The workflow that signs branch and pull-request images.
pub const CI_WORKFLOW: &str = "ci.yml";

/// The run of a workflow that signs: a release, by release.yml on its tag,
/// or a branch or pull-request build, by ci.yml on its ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Run {
    Release(semver::Version),
    Branch(String),
    PullRequest(u64),
}

impl Run {
    /// `--branch` or `--pr` of verify: a build that ci.yml signed; None
    /// for a release.
    pub fn of_ci(branch: Option<&str>, pr: Option<u64>) -> Option<Run> {
        match (branch, pr) {
            (Some(name), _) => Some(Run::Branch(name.to_owned())),
            (None, Some(number)) => Some(Run::PullRequest(number)),
            (None, None) => None,
        }
    }

    /// The flags that tell keyless `cargo xtask verify` which run signed,
    /// for printed commands.
    pub fn verify_flags(&self) -> String {
        match self {
            Run::Release(version) => format!(" --expect-version v{version}"),
            Run::Branch(name) => {
                format!(" --branch {}", crate::support::tools::shell_quote(name))
            }
            Run::PullRequest(number) => format!(" --pr {number}"),
        }
    }
}

/// Exactly whom keyless verification trusts: the one workflow run that
/// signed a build. Fulcio's GitHub Actions issuer writes the job's
/// `job_workflow_ref` into the certificate's SAN and the token's
/// `repository`, `event_name`, `ref` and `sha` claims into its extensions;
/// cosign compares each with the value here, exactly. A release is
/// `release.yml` on its own tag `vX.Y.Z`, pushed; a branch image `ci.yml`
/// on `refs/heads/BRANCH`, pushed; a pull-request image `ci.yml` on
/// `refs/pull/N/merge`. The commit is the signed index's
/// `org.opencontainers.image.revision`, except for a pull request: its
/// certificate carries GitHub's merge commit, while the image is labelled
/// with the head commit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WorkflowIdentity {
    /// The certificate's SAN: `https://github.com/OWNER/REPO/.github/workflows/FILE@REF`.
    pub certificate_identity: String,
    pub issuer: String,
    /// `OWNER/REPO`.
    pub repository: String,
    /// `push` or `pull_request`.
    pub trigger: String,
    pub git_ref: String,
    /// The source commit, 40 hex; None for a pull request.
    pub sha: Option<String>,
}

impl WorkflowIdentity {
    /// The identity of `run` of the GitHub repository
    /// `repository` (`https://github.com/OWNER/REPO`), from `revision`, the
    /// signed index's revision annotation; trusted through `issuer`.
    pub fn new(
        repository: &str,
        run: &Run,
        revision: Option<&str>,
        issuer: &str,
    ) -> Result<WorkflowIdentity> {
        let path = github_path(repository)?;
        let (workflow, git_ref, trigger) = match run {
            Run::Release(version) => {
                if !version.build.is_empty() {
                    bail!("{version} has build metadata, which no release tag has; pass the version as vX.Y.Z");
                }
                (RELEASE_WORKFLOW, format!("refs/tags/v{version}"), "push")
            }
            Run::Branch(name) => {
                check_branch(name)?;
                (CI_WORKFLOW, format!("refs/heads/{name}"), "push")
            }
            Run::PullRequest(0) => {
                bail!("pull request 0 does not exist; pass the pull request's number")
            }
            Run::PullRequest(number) => (
                CI_WORKFLOW,
                format!("refs/pull/{number}/merge"),
                "pull_request",
            ),
        };
        let sha = match run {
            Run::PullRequest(_) => None,
            _ => {
                let revision = revision.with_context(|| {
                    format!(
                        "the signed index has no {} annotation, so the commit its certificate names cannot be checked; verify an image built by `cargo xtask image` or `release`",
                        crate::oci::REVISION
                    )
                })?;
                if revision.len() != 40 || !revision.bytes().all(|b| b.is_ascii_hexdigit()) {
                    bail!(
                        "the signed index's {} annotation is {revision:?}, not a 40-hex commit; verify an image built by `cargo xtask image` or `release`",
                        crate::oci::REVISION
                    );
                }
                Some(revision.to_ascii_lowercase())
            }
        };
        if issuer.is_empty() {
            bail!("the OIDC issuer is empty; pass the issuer's URL, such as {GITHUB_OIDC_ISSUER}");
        }
        Ok(WorkflowIdentity {
            certificate_identity: format!(
                "https://github.com/{path}/.github/workflows/{workflow}@{git_ref}"
            ),
            issuer: issuer.to_owned(),
            repository: path,
            trigger: trigger.to_owned(),
            git_ref,
            sha,
        })
    }

    /// cosign's flags for it, the same for verify, verify-attestation and
    /// verify-blob.
    pub fn cosign_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--certificate-identity={}", self.certificate_identity),
            format!("--certificate-oidc-issuer={}", self.issuer),
            format!(
                "--certificate-github-workflow-repository={}",
                self.repository
            ),
            format!("--certificate-github-workflow-trigger={}", self.trigger),
            format!("--certificate-github-workflow-ref={}", self.git_ref),
        ];
        if let Some(sha) = &self.sha {
            args.push(format!("--certificate-github-workflow-sha={sha}"));
        }
        args
    }
}

/// `OWNER/REPO` of `https://github.com/OWNER/REPO`, each part as GitHub
/// allows it: letters, digits, `-`, and for the repository `_` and `.`.
fn github_path(repository: &str) -> Result<String> {
    let refuse = || {
        format!(
            "keyless verification trusts a workflow of a GitHub repository, but the package's repository is {repository:?}; set repository = \"https://github.com/OWNER/REPO\" in Cargo.toml, or pass --key cosign.pub"
        )
    };
    let path = repository
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .strip_prefix("https://github.com/")
        .with_context(refuse)?;
    let (owner, repo) = path.split_once('/').with_context(refuse)?;
    let owner_ok = !owner.is_empty()
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let repo_ok = !repo.is_empty()
        && repo != "."
        && repo != ".."
        && repo
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !owner_ok || !repo_ok {
        bail!(refuse());
    }
    Ok(path.to_owned())
}

/// A branch name as git allows it in `refs/heads/` (git check-ref-format):
/// anything else cannot be the ref of a run, and would only make an
/// identity that nothing signs.
fn check_branch(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.starts_with(['-', '/'])
        || name.ends_with(['/', '.'])
        || name.ends_with(".lock")
        || name.contains("..")
        || name.contains("//")
        || name.contains("@{")
        || name == "@"
        || name.split('/').any(|part| part.starts_with('.'))
        || name
            .chars()
            .any(|c| c.is_control() || c == ' ' || "~^:?*[\\".contains(c));
    if bad {
        bail!("{name:?} is not a git branch name; pass the branch the image was built from, such as main");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_key_given_for_signing_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("cosign.pub");
        std::fs::write(
            &public,
            "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let public = public.to_str().unwrap().to_owned();
        let err = check_signing_key(&Identity::Key(public.clone())).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{public} is a public key, which only verifies; signing needs the private key: pass --key cosign.key (the file `cosign generate-key-pair` wrote beside it)")
        );
        // A KMS URI is not a file, and is left to cosign.
        assert!(check_signing_key(&Identity::Key("gcpkms://k".to_owned())).is_ok());
    }

    const REPO: &str = "https://github.com/acme/widget";
    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn release(version: &str) -> Run {
        Run::Release(semver::Version::parse(version.trim_start_matches('v')).unwrap())
    }

    fn branch(name: &str) -> Run {
        Run::Branch(name.to_owned())
    }

    #[test]
    fn a_release_is_release_yml_on_its_own_tag_and_commit() {
        let identity =
            WorkflowIdentity::new(REPO, &release("v1.2.3"), Some(SHA), GITHUB_OIDC_ISSUER).unwrap();
        assert_eq!(
            identity.cosign_args(),
            [
                "--certificate-identity=https://github.com/acme/widget/.github/workflows/release.yml@refs/tags/v1.2.3",
                "--certificate-oidc-issuer=https://token.actions.githubusercontent.com",
                "--certificate-github-workflow-repository=acme/widget",
                "--certificate-github-workflow-trigger=push",
                "--certificate-github-workflow-ref=refs/tags/v1.2.3",
                &format!("--certificate-github-workflow-sha={SHA}"),
            ]
        );
        let pre = WorkflowIdentity::new(
            "https://github.com/o/r.s.git/",
            &release("v2.0.0-rc.1"),
            Some(&SHA.to_ascii_uppercase()),
            "https://issuer.internal",
        )
        .unwrap();
        assert_eq!(
            pre.certificate_identity,
            "https://github.com/o/r.s/.github/workflows/release.yml@refs/tags/v2.0.0-rc.1"
        );
        assert_eq!(pre.issuer, "https://issuer.internal");
        assert_eq!(pre.sha.as_deref(), Some(SHA));
    }

    #[test]
    fn branches_and_pull_requests_are_ci_yml_on_their_own_ref() {
        let main =
            WorkflowIdentity::new(REPO, &branch("main"), Some(SHA), GITHUB_OIDC_ISSUER).unwrap();
        assert_eq!(
            main.certificate_identity,
            "https://github.com/acme/widget/.github/workflows/ci.yml@refs/heads/main"
        );
        assert_eq!(
            (main.trigger.as_str(), main.sha.as_deref()),
            ("push", Some(SHA))
        );
        let feature =
            WorkflowIdentity::new(REPO, &branch("feature/x-1"), Some(SHA), GITHUB_OIDC_ISSUER)
                .unwrap();
        assert_eq!(feature.git_ref, "refs/heads/feature/x-1");
        // The pull request's certificate names GitHub's merge commit, which
        // no image label records: no commit is required.
        let pr =
            WorkflowIdentity::new(REPO, &Run::PullRequest(42), None, GITHUB_OIDC_ISSUER).unwrap();
        assert_eq!(
            pr.cosign_args(),
            [
                "--certificate-identity=https://github.com/acme/widget/.github/workflows/ci.yml@refs/pull/42/merge",
                "--certificate-oidc-issuer=https://token.actions.githubusercontent.com",
                "--certificate-github-workflow-repository=acme/widget",
                "--certificate-github-workflow-trigger=pull_request",
                "--certificate-github-workflow-ref=refs/pull/42/merge",
            ]
        );
    }

    #[test]
    fn printed_commands_name_the_run_that_signed() {
        assert_eq!(release("v1.2.3").verify_flags(), " --expect-version v1.2.3");
        assert_eq!(branch("main").verify_flags(), " --branch main");
        assert_eq!(branch("a b$(x)").verify_flags(), " --branch 'a b$(x)'");
        assert_eq!(Run::PullRequest(9).verify_flags(), " --pr 9");
        assert_eq!(Run::of_ci(Some("main"), None), Some(branch("main")));
        assert_eq!(Run::of_ci(None, Some(3)), Some(Run::PullRequest(3)));
        assert_eq!(Run::of_ci(None, None), None);
    }

    #[test]
    fn hostile_or_missing_inputs_are_refused() {
        let new = |repo: &str, run: &Run, sha: Option<&str>| {
            WorkflowIdentity::new(repo, run, sha, GITHUB_OIDC_ISSUER).map_err(|e| format!("{e:#}"))
        };
        let err = new("https://gitlab.com/o/r", &release("v1.0.0"), Some(SHA)).unwrap_err();
        assert!(err.starts_with("keyless verification trusts a workflow of a GitHub repository, but the package's repository is \"https://gitlab.com/o/r\""), "{err}");
        for repo in [
            "https://github.com/o",
            "https://github.com/o/r/x",
            "https://github.com//r",
            "https://github.com/o/..",
            "https://github.com/o/r?x=1",
            "https://github.com/o/r@refs/tags/v9.9.9",
            "https://github.com/o.*/r",
            "https://github.com/o/r\nx",
        ] {
            assert!(new(repo, &release("v1.0.0"), Some(SHA)).is_err(), "{repo}");
        }
        let err = new(REPO, &release("v1.0.0"), None).unwrap_err();
        assert_eq!(err, "the signed index has no org.opencontainers.image.revision annotation, so the commit its certificate names cannot be checked; verify an image built by `cargo xtask image` or `release`");
        for sha in ["", "abc", "g123456789abcdef0123456789abcdef01234567"] {
            assert!(new(REPO, &branch("main"), Some(sha)).is_err(), "{sha:?}");
        }
        for name in [
            "",
            "-x",
            "a..b",
            "a b",
            "a~1",
            "x^",
            "a:b",
            "a*",
            "a?",
            "a[b",
            "a\\b",
            "a/",
            "a.lock",
            "a/.b",
            "a@{1}",
            "a\nb",
            "main@refs/tags/v1.0.0",
        ] {
            let result = new(REPO, &branch(name), Some(SHA));
            // `@` alone is not banned, but `@{` is; the SAN is compared
            // exactly, so no branch can widen what is trusted.
            if name == "main@refs/tags/v1.0.0" {
                assert_eq!(
                    result.unwrap().certificate_identity,
                    "https://github.com/acme/widget/.github/workflows/ci.yml@refs/heads/main@refs/tags/v1.0.0"
                );
                continue;
            }
            assert_eq!(
                result.unwrap_err(),
                format!("{name:?} is not a git branch name; pass the branch the image was built from, such as main")
            );
        }
        assert!(new(REPO, &Run::PullRequest(0), None).is_err());
        let with_build = Run::Release(semver::Version::parse("1.0.0+evil").unwrap());
        assert!(new(REPO, &with_build, Some(SHA)).is_err());
        assert!(WorkflowIdentity::new(REPO, &release("v1.0.0"), Some(SHA), "").is_err());
    }
}
