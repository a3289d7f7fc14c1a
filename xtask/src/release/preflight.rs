//! Release preflight: what must hold before a release version is built and
//! published. Every problem is collected and reported together, one per
//! line, so that a release is fixed in one round rather than one error at a
//! time.
//!
//! It comes in two parts, because one check needs the built image:
//! - [`check`], before building: the version, Cargo.toml, the git tree and
//!   tag, everything signing needs (key, password, cosign, gh), and whether
//!   the registry already has the version (and at which digest);
//! - [`Preflight::check_registry_digest`], after building and before
//!   pushing: a version the registry already has must be at the digest just
//!   built. A reproducible build of the same commit gives the same digest,
//!   so a re-run passes and a different build of the same version fails.

use anyhow::{bail, Context, Result};
use semver::Version;
use serde::Serialize;
use xshell::{cmd, Shell};

use crate::oci::client::{Client, Reference};
use crate::supply_chain::cosign::{Cosign, SigningArgs};
use crate::supply_chain::identity::{self, Identity};
use crate::support::config::Config;
use crate::support::git::Git;
use crate::support::tools;
use crate::tags;

/// The result of a preflight that passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Preflight {
    pub version: Version,
    /// `vX.Y.Z`: the git tag and the image tag.
    pub tag: String,
    /// The full sha of HEAD: the commit being released.
    pub head: String,
    /// Whether git tag V already exists (it then points at HEAD).
    pub git_tag_exists: bool,
    /// What the registry holds under V; None when it was not asked.
    pub registry: Option<RegistryTag>,
    /// One line per check that passed, for the dry run.
    pub passed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistryTag {
    /// `host/repository`.
    pub image: String,
    /// The digest V already points at, or None if V is not published.
    pub digest: Option<String>,
}

/// How the release signs: what the checks of signing need.
#[derive(Debug, Clone, Copy)]
pub struct Signing<'a> {
    pub args: &'a SigningArgs,
    /// With --push the image is signed and the GitHub release uploaded.
    pub push: bool,
}

/// The checks before building. `registry` is the client and repository the
/// release pushes to; None skips the registry check.
pub fn check(
    config: &Config,
    version: &str,
    registry: Option<(&Client, &Reference)>,
    signing: Signing,
) -> Result<Preflight> {
    let mut problems = Vec::new();
    let mut passed = Vec::new();

    let parsed = match tags::parse_version(version) {
        Ok(parsed) => {
            passed.push(format!("{version} is a strict semver version"));
            Some(parsed)
        }
        Err(err) => {
            problems.push(format!("{err:#}"));
            None
        }
    };

    let manifest = config.relative(&config.package_manifest()).to_owned();
    if let Some(parsed) = &parsed {
        if *parsed == config.version {
            passed.push(format!("{manifest} has version {}", config.version));
        } else {
            problems.push(format!(
                "version mismatch: releasing {version} but {manifest} has version {}; set `version = \"{parsed}\"` in {manifest} and commit it, or release v{}",
                config.version, config.version
            ));
        }
    }

    let git = Git::open(&config.workspace_root)?;
    let head = match git.head_sha() {
        Ok(head) => Some(head),
        Err(err) => {
            problems.push(format!("{err:#}"));
            None
        }
    };

    match dirty_paths(config) {
        Ok(dirty) if dirty.is_empty() => {
            passed.push("the git tree is clean, untracked files included".to_owned())
        }
        Ok(dirty) => problems.push(format!(
            "the git tree is not clean; commit, stash or remove: {}",
            dirty.join(", ")
        )),
        Err(err) => problems.push(format!("{err:#}")),
    }

    let mut git_tag_exists = false;
    if let (Some(_), Some(head)) = (&parsed, &head) {
        match git.tag_commit(version)? {
            None if signing.push && std::env::var_os("GITHUB_TOKEN").is_some() => problems.push(format!(
                "git tag {version} does not exist, and the GitHub release needs it on GitHub; tag HEAD and push the tag first: `git tag -s {version} -m {version} && git push origin {version}`"
            )),
            None => passed.push(format!(
                "git tag {version} does not exist yet; the release does not create it: tag HEAD and push the tag to publish the release"
            )),
            Some(commit) if commit == *head => {
                git_tag_exists = true;
                passed.push(format!("git tag {version} points at HEAD ({head})"));
            }
            Some(commit) => problems.push(format!(
                "git tag {version} points at {commit}, not at HEAD ({head}); check out {version} to release it, or delete the tag with `git tag -d {version}` if it is wrong"
            )),
        }
    }

    let mut registry_tag = None;
    if let (Some(_), Some((client, target))) = (&parsed, registry) {
        let image = target.name();
        match client.manifest_digest(&target.repository, version) {
            Ok(digest) => {
                passed.push(match &digest {
                    None => format!("{image} has no {version} yet"),
                    Some(digest) => format!(
                        "{image}:{version} exists at {digest}; the build must give that digest (checked after building)"
                    ),
                });
                registry_tag = Some(RegistryTag { image, digest });
            }
            Err(err) => problems.push(format!(
                "cannot check whether {image}:{version} exists: {err:#}"
            )),
        }
    }

    check_signing(signing, &mut passed, &mut problems);

    if !problems.is_empty() {
        bail!("{}", report(version, &problems));
    }
    Ok(Preflight {
        version: parsed.context("a version that failed to parse was reported above")?,
        tag: version.to_owned(),
        head: head.context("a missing HEAD was reported above")?,
        git_tag_exists,
        registry: registry_tag,
        passed,
    })
}

/// Everything signing needs, checked offline before anything is built:
/// without it the release would fail only after pushing the image. With
/// --push the image is signed; with a key (or in GitHub Actions) the
/// checksums are signed too, pushed or not.
fn check_signing(signing: Signing, passed: &mut Vec<String>, problems: &mut Vec<String>) {
    let identity = if signing.push || signing.args.key.is_some() {
        match identity::signing_identity(signing.args) {
            Ok(identity) => Some(identity),
            Err(err) => {
                problems.push(format!("{err:#}"));
                None
            }
        }
    } else if identity::github_oidc_available() {
        Some(Identity::Keyless)
    } else {
        None
    };
    if identity.is_some() || signing.push {
        match Cosign::find() {
            Ok(found) => {
                passed.push(format!(
                    "cosign {} at {}",
                    crate::support::tools::COSIGN_VERSION,
                    found.path.display()
                ));
                if let Some(Identity::Key(key)) = &identity {
                    check_key_opens(&found, key, passed, problems);
                }
            }
            Err(err) => problems.push(format!("{err:#}")),
        }
    }
    if signing.push && std::env::var_os("GITHUB_TOKEN").is_some() {
        match tools::GH.find() {
            Ok(gh) => passed.push(format!(
                "gh at {} (GITHUB_TOKEN is set: the assets are uploaded)",
                gh.display()
            )),
            Err(err) => problems.push(format!(
                "GITHUB_TOKEN is set, so the assets are uploaded with gh, but {err:#}"
            )),
        }
    }
}

/// A key file (or `env://` key) opens with COSIGN_PASSWORD: `cosign
/// public-key` decrypts it, offline. A KMS key has no password.
fn check_key_opens(
    cosign: &Cosign,
    key: &str,
    passed: &mut Vec<String>,
    problems: &mut Vec<String>,
) {
    if key.contains("://") && !key.starts_with("env://") {
        return;
    }
    if let Err(err) = identity::check_signing_key(&Identity::Key(key.to_owned())) {
        problems.push(format!("{err:#}"));
        return;
    }
    match cosign.run(&["public-key".to_owned(), format!("--key={key}")], true) {
        Ok(output) if output.success => passed.push(format!("the key {key} opens with COSIGN_PASSWORD")),
        Ok(output) => problems.push(format!(
            "cannot open the key {key} with COSIGN_PASSWORD: {}; export the key's password in COSIGN_PASSWORD",
            output.error_line()
        )),
        Err(err) => problems.push(format!("cannot open the key {key}: {err:#}")),
    }
}

/// All problems, one per line, as cargo-release reports them.
fn report(version: &str, problems: &[String]) -> String {
    let count = match problems.len() {
        1 => "1 problem".to_owned(),
        n => format!("{n} problems"),
    };
    let lines: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
    format!(
        "release preflight for {version} found {count}:\n{}",
        lines.join("\n")
    )
}

impl Preflight {
    /// The check after building: a version already in the registry must be
    /// at the digest just built, since a released version never moves.
    /// `--force` is the release task's to honour, by not calling this.
    pub fn check_registry_digest(&self, built: &str) -> Result<()> {
        match &self.registry {
            Some(RegistryTag {
                image,
                digest: Some(published),
            }) if published != built => bail!(
                "{}",
                report(
                    &self.tag,
                    &[format!(
                        "{image}:{} is already published at {published}, but this build is {built}; a released version never moves: release a new version, or pass --force to repoint it",
                        self.tag
                    )]
                )
            ),
            _ => Ok(()),
        }
    }
}

/// Paths that differ from HEAD, untracked files marked. Read with `-z`, so
/// that no path is mangled by quoting or trimming.
fn dirty_paths(config: &Config) -> Result<Vec<String>> {
    let sh = Shell::new()?;
    sh.change_dir(&config.workspace_root);
    let git = tools::GIT.find()?;
    let status = cmd!(sh, "{git} status --porcelain=v1 -z --untracked-files=all")
        .quiet()
        .ignore_stderr()
        .read()
        .context("cannot read `git status`; is this a git checkout?")?;
    let mut paths = Vec::new();
    let mut entries = status.split('\0').filter(|e| !e.is_empty());
    while let Some(entry) = entries.next() {
        let (code, path) = (
            entry.get(..2).unwrap_or_default(),
            entry.get(3..).unwrap_or_default(),
        );
        if code.starts_with(['R', 'C']) {
            // A rename or copy is followed by its source path.
            entries.next();
        }
        paths.push(if code == "??" {
            format!("{path} (untracked)")
        } else {
            path.to_owned()
        });
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preflight(digest: Option<&str>) -> Preflight {
        Preflight {
            version: Version::new(1, 2, 3),
            tag: "v1.2.3".into(),
            head: "0123456789abcdef0123456789abcdef01234567".into(),
            git_tag_exists: false,
            registry: Some(RegistryTag {
                image: "127.0.0.1:5000/app".into(),
                digest: digest.map(str::to_owned),
            }),
            passed: Vec::new(),
        }
    }

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn a_published_version_must_keep_its_digest() {
        assert!(preflight(None).check_registry_digest(A).is_ok());
        assert!(preflight(Some(A)).check_registry_digest(A).is_ok());
        assert_eq!(
            preflight(Some(A)).check_registry_digest(B).unwrap_err().to_string(),
            format!("release preflight for v1.2.3 found 1 problem:\n  - 127.0.0.1:5000/app:v1.2.3 is already published at {A}, but this build is {B}; a released version never moves: release a new version, or pass --force to repoint it")
        );
    }

    #[test]
    fn problems_are_reported_together() {
        assert_eq!(
            report("v1.0.0", &["one".into(), "two".into()]),
            "release preflight for v1.0.0 found 2 problems:\n  - one\n  - two"
        );
    }
}
