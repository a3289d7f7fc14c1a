//! The tag policy, and `cargo xtask tags`.
//!
//! The policy and its choices are documented in docs/tags.md.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use semver::Version;
use serde::Serialize;

use crate::flags::{self, BuildRef};
use crate::oci::client::{Client, Reference};
use crate::support::config::Config;
use crate::support::git::{self, Git};
use crate::support::source::Source;

/// What is being built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Build {
    Release(Version),
    Branch { name: String, is_default: bool },
    PullRequest(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedTag {
    pub tag: String,
    pub reason: String,
    /// vX.Y.Z and sha-… never move once set.
    pub immutable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Immutable tags first, floating tags last: the order they are set in.
    pub tags: Vec<PlannedTag>,
    /// Floating tags not set, and why, such as "no latest: v2.0.0 is newer".
    pub not_set: Vec<String>,
}

impl Plan {
    pub fn names(&self) -> Vec<String> {
        self.tags.iter().map(|t| t.tag.clone()).collect()
    }

    pub fn with_immutability(&self) -> Vec<(String, bool)> {
        self.tags
            .iter()
            .map(|t| (t.tag.clone(), t.immutable))
            .collect()
    }

    /// One line per tag, `TAG: REASON`, then one per floating tag not set.
    pub fn table(&self) -> Vec<String> {
        self.tags
            .iter()
            .map(|t| format!("{}: {}", t.tag, t.reason))
            .chain(self.not_set.iter().cloned())
            .collect()
    }

    /// What `tags --json` prints.
    pub fn to_output(&self, published_considered: usize) -> TagsOutput {
        TagsOutput {
            tags: self.names(),
            immutable: self
                .with_immutability()
                .into_iter()
                .filter_map(|(tag, immutable)| immutable.then_some(tag))
                .collect(),
            reasons: self
                .tags
                .iter()
                .map(|t| (t.tag.clone(), t.reason.clone()))
                .collect(),
            not_set: self.not_set.clone(),
            published_considered,
        }
    }
}

/// What `tags --json` prints: the tags in the order they are set.
#[derive(Debug, Clone, Serialize)]
pub struct TagsOutput {
    pub tags: Vec<String>,
    pub immutable: Vec<String>,
    pub reasons: BTreeMap<String, String>,
    pub not_set: Vec<String>,
    /// How many published stable versions the floating tags were compared with.
    pub published_considered: usize,
}

/// Parses a release version: `v`, then strict semver, without build
/// metadata.
pub fn parse_version(text: &str) -> Result<Version> {
    let expected = "expected vMAJOR.MINOR.PATCH or vMAJOR.MINOR.PATCH-PRERELEASE, such as v1.2.3";
    let Some(rest) = text.strip_prefix('v') else {
        bail!("invalid version {text:?}: it must start with `v`; {expected}");
    };
    let core = rest.split(['-', '+']).next().unwrap_or_default();
    let numbers = core.split('.').collect::<Vec<_>>();
    let all_numbers = numbers
        .iter()
        .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if all_numbers && numbers.len() != 3 {
        bail!(
            "invalid version {text:?}: it has {} numbers, a release needs all three of MAJOR.MINOR.PATCH; {expected}",
            numbers.len()
        );
    }
    let version = Version::parse(rest)
        .map_err(|e| anyhow::format_err!("invalid version {text:?}: {e}; {expected}"))?;
    if !version.build.is_empty() {
        bail!(
            "invalid version {text:?}: build metadata (+{}) is not allowed in a release; {expected}",
            version.build
        );
    }
    Ok(version)
}

/// A published tag that counts for the floating tags: exactly `vX.Y.Z`.
fn published_stable(tag: &str) -> Option<Version> {
    let version = parse_version(tag).ok()?;
    (version.pre.is_empty() && format!("v{version}") == tag).then_some(version)
}

/// The tags of a build, given the tags already in the registry.
pub fn compute(build: &Build, sha: &str, published: &[String]) -> Result<Plan> {
    git::check_sha(sha)?;
    let sha_tag = PlannedTag {
        tag: format!("sha-{}", &sha[..7].to_ascii_lowercase()),
        reason: "the commit, never moves".into(),
        immutable: true,
    };
    let mut tags = Vec::new();
    let mut not_set = Vec::new();
    match build {
        Build::Release(version) => {
            if !version.build.is_empty() {
                bail!("invalid version \"v{version}\": build metadata is not allowed in a release");
            }
            if format!("v{version}").len() > MAX_TAG {
                bail!("the tag \"v{version}\" is over {MAX_TAG} characters, more than a registry takes; shorten the prerelease part of the version");
            }
            tags.push(PlannedTag {
                tag: format!("v{version}"),
                reason: "the release, never moves".into(),
                immutable: true,
            });
            tags.push(sha_tag);
            if !version.pre.is_empty() {
                not_set.push(format!("no floating tags: v{version} is a prerelease"));
                return Ok(Plan { tags, not_set });
            }
            let stable: Vec<Version> = published
                .iter()
                .filter_map(|t| published_stable(t))
                .collect();
            // "≥ every published version in range" is "no published version
            // in range is newer": so a re-run gets the same tags.
            let newer_in = |in_range: &dyn Fn(&Version) -> bool| {
                stable
                    .iter()
                    .filter(|v| in_range(v) && *v > version)
                    .max()
                    .cloned()
            };
            let (major, minor) = (version.major, version.minor);
            let mut floating = |tag: String, reason: String, newer: Option<Version>| match newer {
                Some(newer) => Some(format!("no {tag}: v{newer} is newer")),
                None => {
                    tags.push(PlannedTag {
                        tag,
                        reason,
                        immutable: false,
                    });
                    None
                }
            };
            let decisions = [
                floating(
                    format!("v{major}.{minor}"),
                    format!("newest in {major}.{minor}.x"),
                    newer_in(&|v| v.major == major && v.minor == minor),
                ),
                if major == 0 {
                    Some("no v0: 0.x releases never get a major tag".to_owned())
                } else {
                    floating(
                        format!("v{major}"),
                        format!("newest in {major}.x"),
                        newer_in(&|v| v.major == major),
                    )
                },
                floating(
                    "latest".into(),
                    "newest stable release".into(),
                    newer_in(&|_| true),
                ),
            ];
            not_set.extend(decisions.into_iter().flatten());
        }
        Build::Branch { name, is_default } => {
            tags.push(sha_tag);
            let reason = if *is_default {
                format!("the default branch {name}")
            } else {
                format!("branch {name}")
            };
            tags.push(PlannedTag {
                tag: branch_tag(name)?,
                reason,
                immutable: false,
            });
        }
        Build::PullRequest(number) => {
            tags.push(PlannedTag {
                tag: sha_tag.tag,
                reason: "the pull request's head commit, never moves".into(),
                immutable: true,
            });
            tags.push(PlannedTag {
                tag: format!("pr-{number}"),
                reason: format!("pull request #{number}"),
                immutable: false,
            });
        }
    }
    Ok(Plan { tags, not_set })
}

/// The most characters a tag may have (OCI distribution).
const MAX_TAG: usize = 128;

/// The branch name as a tag: runs of characters outside `[A-Za-z0-9_.-]`
/// become one `-`, leading `.` and `-` go, and a name longer than 128 is cut
/// and given a short hash of the full branch name, so that two long names
/// that share their first 119 characters still get two tags.
///
/// Beyond the table: a branch whose tag would look like a policy tag (`latest`,
/// `v<digit>…`, `sha-…`, `pr-…`) is prefixed with `branch-`, so that pushing
/// a branch named `v1.2.3` or `latest` can never take over a release tag.
pub fn branch_tag(name: &str) -> Result<String> {
    let mut tag = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || "_.-".contains(c) {
            tag.push(c);
        } else if !tag.ends_with('-') {
            tag.push('-');
        }
    }
    let tag = tag.trim_start_matches(['.', '-']);
    if tag.is_empty() {
        bail!("branch {name:?} has no characters usable in a tag; pass --branch with a name that has letters or digits");
    }
    let tag = if is_policy_tag(tag) {
        format!("branch-{tag}")
    } else {
        tag.to_owned()
    };
    if tag.len() <= MAX_TAG {
        return Ok(tag);
    }
    let hash = &crate::support::archive::sha256_hex(name.as_bytes())[..8];
    // ASCII only by now, so any byte index is a character boundary.
    Ok(format!("{}-{hash}", &tag[..MAX_TAG - 1 - hash.len()]))
}

/// Tags the policy itself sets, which no branch may take.
fn is_policy_tag(tag: &str) -> bool {
    tag == "latest"
        || tag.starts_with("sha-")
        || tag.starts_with("pr-")
        || tag
            .strip_prefix('v')
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// The build and commit: first the flags; what they leave open comes from
/// the GitHub Actions environment, and without that from local git.
pub fn resolve_build(config: &Config, build: &BuildRef) -> Result<(Build, String)> {
    let flagged = if let Some(version) = &build.version {
        Some(Build::Release(parse_version(version)?))
    } else if let Some(branch) = &build.branch {
        Some(Build::Branch {
            name: branch.clone(),
            is_default: *branch == config.default_branch,
        })
    } else {
        build.pr.map(Build::PullRequest)
    };
    if let (Some(kind), Some(sha)) = (&flagged, &build.sha) {
        git::check_sha(sha)?;
        return Ok((kind.clone(), sha.clone()));
    }
    let github = GithubContext::from_env()?;
    let git = || Git::open(&config.workspace_root);
    let sha = match (&build.sha, &github) {
        (Some(sha), _) => sha.clone(),
        (None, Some(ctx)) => ctx.sha()?,
        (None, None) => git()?.head_sha()?,
    };
    git::check_sha(&sha)?;
    let kind = match (flagged, github) {
        (Some(kind), _) => kind,
        (None, Some(ctx)) => ctx.build(config)?,
        (None, None) => {
            let branch = git()?.current_branch().context(
                "cannot tell what is being built on a detached HEAD; pass --version, --branch or --pr",
            )?;
            Build::Branch {
                is_default: branch == config.default_branch,
                name: branch,
            }
        }
    };
    Ok((kind, sha))
}

/// What GitHub Actions says is being built.
#[derive(Debug)]
struct GithubContext {
    event: String,
    /// `GITHUB_REF`, or `refs/heads/`/`refs/tags/` + `GITHUB_REF_NAME`.
    git_ref: Option<String>,
    sha: Option<String>,
    pull_request: Option<PullRequestEvent>,
}

#[derive(Debug)]
struct PullRequestEvent {
    number: Option<u64>,
    head_sha: String,
}

impl GithubContext {
    /// None outside GitHub Actions, that is without `GITHUB_EVENT_NAME`.
    fn from_env() -> Result<Option<GithubContext>> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let Some(event) = var("GITHUB_EVENT_NAME") else {
            return Ok(None);
        };
        let git_ref = var("GITHUB_REF").or_else(|| {
            let name = var("GITHUB_REF_NAME")?;
            match var("GITHUB_REF_TYPE").as_deref() {
                Some("tag") => Some(format!("refs/tags/{name}")),
                Some("branch") => Some(format!("refs/heads/{name}")),
                _ => None,
            }
        });
        let pull_request = if event.starts_with("pull_request") {
            let path = var("GITHUB_EVENT_PATH").with_context(|| {
                format!("GITHUB_EVENT_NAME is {event} but GITHUB_EVENT_PATH is not set; pass --pr and --sha")
            })?;
            Some(PullRequestEvent::read(&path)?)
        } else {
            None
        };
        Ok(Some(GithubContext {
            event,
            git_ref,
            sha: var("GITHUB_SHA"),
            pull_request,
        }))
    }

    /// The commit the image is of: for a pull request its head, not
    /// GITHUB_SHA, which is GitHub's merge commit.
    fn sha(&self) -> Result<String> {
        if let Some(pr) = &self.pull_request {
            return Ok(pr.head_sha.clone());
        }
        self.sha
            .clone()
            .context("GITHUB_EVENT_NAME is set but GITHUB_SHA is not; pass --sha")
    }

    fn build(&self, config: &Config) -> Result<Build> {
        let git_ref = self.git_ref.as_deref().unwrap_or_default();
        if let Some(pr) = &self.pull_request {
            // refs/pull/N/merge, for payloads without a number.
            let from_ref = git_ref
                .strip_prefix("refs/pull/")
                .and_then(|rest| rest.split('/').next())
                .and_then(|n| n.parse().ok());
            let number = pr.number.or(from_ref).with_context(|| {
                format!("cannot find the pull request number in the event payload or in GITHUB_REF={git_ref:?}; pass --pr")
            })?;
            return Ok(Build::PullRequest(number));
        }
        if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
            return parse_version(tag).map(Build::Release).with_context(|| {
                format!("GitHub is building tag {tag}, which is not a release version")
            });
        }
        if let Some(branch) = git_ref.strip_prefix("refs/heads/") {
            return Ok(Build::Branch {
                name: branch.to_owned(),
                is_default: branch == config.default_branch,
            });
        }
        bail!(
            "cannot tell what GitHub is building from GITHUB_EVENT_NAME={} GITHUB_REF={git_ref:?}; pass --version, --branch or --pr",
            self.event
        )
    }
}

impl PullRequestEvent {
    fn read(path: &str) -> Result<PullRequestEvent> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the GitHub event payload {path}"))?;
        let payload: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("the GitHub event payload {path} is not JSON"))?;
        let head_sha = payload["pull_request"]["head"]["sha"]
            .as_str()
            .with_context(|| {
                format!("the GitHub event payload {path} has no pull_request.head.sha; pass --sha")
            })?
            .to_owned();
        let number = payload["pull_request"]["number"]
            .as_u64()
            .or_else(|| payload["number"].as_u64());
        Ok(PullRequestEvent { number, head_sha })
    }
}

/// The published tags: `--existing`, else the registry's tag list.
pub fn published(
    existing: Option<&[String]>,
    target: &Reference,
    client: Option<&Client>,
) -> Result<Vec<String>> {
    match (existing, client) {
        (Some(tags), _) => Ok(given_tags(tags)),
        (None, Some(client)) => list_published(client, target),
        (None, None) => list_published(&Client::new(&target.host, false)?, target),
    }
}

/// `--existing ""` and `--existing` alone both mean "nothing published".
fn given_tags(tags: &[String]) -> Vec<String> {
    tags.iter().filter(|t| !t.is_empty()).cloned().collect()
}

fn list_published(client: &Client, target: &Reference) -> Result<Vec<String>> {
    client.list_tags(&target.repository).with_context(|| {
        format!(
            "cannot list the published tags of {}; pass --existing to give them",
            target.name()
        )
    })
}

/// The tags to set for an image push, with their immutability.
pub fn plan_for_build(
    config: &Config,
    build: &BuildRef,
    _source: &Source,
    target: &Reference,
    client: &Client,
) -> Result<Vec<(String, bool)>> {
    let (kind, sha) = resolve_build(config, build)?;
    // Only a release's floating tags depend on what is published.
    let published = match kind {
        Build::Release(_) => published(None, target, Some(client))?,
        _ => Vec::new(),
    };
    Ok(compute(&kind, &sha, &published)?.with_immutability())
}

pub fn run(flags: &flags::Tags) -> Result<()> {
    let config = Config::load()?;
    let (kind, sha) = resolve_build(&config, &flags.build)?;
    let published = match (&kind, flags.existing.as_deref()) {
        (_, Some(existing)) => given_tags(existing),
        (Build::Release(_), None) => {
            let image = flags.registry.image.as_deref().unwrap_or(&config.image);
            let target = Reference::parse(image)?;
            let client = Client::new(&target.host, flags.registry.transport.insecure)?;
            published(None, &target, Some(&client))?
        }
        // Branch and pull request tags do not depend on the registry.
        _ => Vec::new(),
    };
    let plan = compute(&kind, &sha, &published)?;
    if flags.json {
        println!(
            "{}",
            serde_json::to_string(&plan.to_output(published.len()))?
        );
    } else {
        for line in plan.table() {
            println!("{line}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    const SHA: &str = "0123456789ABCDEF0123456789abcdef01234567";

    fn release(version: &str, published: &[&str]) -> (Vec<String>, Vec<String>) {
        let published: Vec<String> = published.iter().map(|t| t.to_string()).collect();
        let plan = compute(
            &Build::Release(parse_version(version).unwrap()),
            SHA,
            &published,
        )
        .unwrap();
        (plan.names(), plan.not_set)
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// (version, published, tags, floating tags not set)
    type Row = (
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
        &'static [&'static str],
    );

    /// One row per rule of the policy in docs/tags.md.
    #[test]
    fn release_rows() {
        let rows: &[Row] = &[
            // First release.
            (
                "v1.2.3",
                &[],
                &["v1.2.3", "sha-0123456", "v1.2", "v1", "latest"],
                &[],
            ),
            // Maintenance release on an older minor line.
            (
                "v1.1.5",
                &["v1.2.0", "v1.1.4", "v1.2", "v1.1", "v1", "latest"],
                &["v1.1.5", "sha-0123456", "v1.1"],
                &["no v1: v1.2.0 is newer", "no latest: v1.2.0 is newer"],
            ),
            // Maintenance release on an older major line.
            (
                "v1.9.10",
                &["v2.0.0", "v1.9.9", "v1.9", "v1", "v2.0", "v2", "latest"],
                &["v1.9.10", "sha-0123456", "v1.9", "v1"],
                &["no latest: v2.0.0 is newer"],
            ),
            // Semver, not string, ordering.
            (
                "v1.2.10",
                &["v1.2.9"],
                &["v1.2.10", "sha-0123456", "v1.2", "v1", "latest"],
                &[],
            ),
            (
                "v1.2.9",
                &["v1.2.10"],
                &["v1.2.9", "sha-0123456"],
                &[
                    "no v1.2: v1.2.10 is newer",
                    "no v1: v1.2.10 is newer",
                    "no latest: v1.2.10 is newer",
                ],
            ),
            (
                "v10.0.0",
                &["v9.0.0", "v2.0.0"],
                &["v10.0.0", "sha-0123456", "v10.0", "v10", "latest"],
                &[],
            ),
            // Re-runs: the version itself is published, with its tags.
            (
                "v1.2.3",
                &["v1.2.3", "sha-0123456", "v1.2", "v1", "latest"],
                &["v1.2.3", "sha-0123456", "v1.2", "v1", "latest"],
                &[],
            ),
            (
                "v1.1.5",
                &[
                    "v1.2.0",
                    "v1.1.5",
                    "sha-0123456",
                    "v1.1",
                    "v1.2",
                    "v1",
                    "latest",
                ],
                &["v1.1.5", "sha-0123456", "v1.1"],
                &["no v1: v1.2.0 is newer", "no latest: v1.2.0 is newer"],
            ),
            // Prereleases get no floating tag, even when newest...
            (
                "v2.0.0-rc.1",
                &["v1.2.3"],
                &["v2.0.0-rc.1", "sha-0123456"],
                &["no floating tags: v2.0.0-rc.1 is a prerelease"],
            ),
            (
                "v0.1.0-alpha.1",
                &[],
                &["v0.1.0-alpha.1", "sha-0123456"],
                &["no floating tags: v0.1.0-alpha.1 is a prerelease"],
            ),
            // ...and published prereleases do not count.
            (
                "v1.2.3",
                &["v2.0.0-rc.1", "v1.2.4-beta", "v1.3.0-0"],
                &["v1.2.3", "sha-0123456", "v1.2", "v1", "latest"],
                &[],
            ),
            // Stable after its own prerelease.
            (
                "v2.0.0",
                &["v2.0.0-rc.1", "v1.9.9", "latest"],
                &["v2.0.0", "sha-0123456", "v2.0", "v2", "latest"],
                &[],
            ),
            // Only exact vX.Y.Z tags count as published.
            (
                "v1.2.3",
                &[
                    "latest",
                    "main",
                    "sha-fffffff",
                    "pr-7",
                    "v9",
                    "v9.9",
                    "v01.2.3",
                    "v9.0.0+b",
                    "V9.0.0",
                    "9.0.0",
                    "v9.0.0.0",
                    "banana",
                    "feature-v9.0.0",
                ],
                &["v1.2.3", "sha-0123456", "v1.2", "v1", "latest"],
                &[],
            ),
            // 0.x lines: v0.Y, never v0.
            (
                "v0.3.1",
                &[],
                &["v0.3.1", "sha-0123456", "v0.3", "latest"],
                &["no v0: 0.x releases never get a major tag"],
            ),
            (
                "v0.3.2",
                &["v0.4.0", "v0.3.1"],
                &["v0.3.2", "sha-0123456", "v0.3"],
                &[
                    "no v0: 0.x releases never get a major tag",
                    "no latest: v0.4.0 is newer",
                ],
            ),
            (
                "v0.0.1",
                &[],
                &["v0.0.1", "sha-0123456", "v0.0", "latest"],
                &["no v0: 0.x releases never get a major tag"],
            ),
            (
                "v1.0.0",
                &["v0.9.0", "v0.9", "latest"],
                &["v1.0.0", "sha-0123456", "v1.0", "v1", "latest"],
                &[],
            ),
            // A 0.x fix after 1.0 keeps its own line only.
            (
                "v0.9.1",
                &["v1.0.0", "v0.9.0"],
                &["v0.9.1", "sha-0123456", "v0.9"],
                &[
                    "no v0: 0.x releases never get a major tag",
                    "no latest: v1.0.0 is newer",
                ],
            ),
        ];
        for (version, published, tags, not_set) in rows {
            assert_eq!(
                release(version, published),
                (strings(tags), strings(not_set)),
                "{version} after {published:?}"
            );
        }
    }

    #[test]
    fn the_table_says_why() {
        let plan = compute(
            &Build::Release(parse_version("v1.9.10").unwrap()),
            SHA,
            &strings(&["v2.0.0"]),
        )
        .unwrap();
        assert_eq!(
            plan.table(),
            strings(&[
                "v1.9.10: the release, never moves",
                "sha-0123456: the commit, never moves",
                "v1.9: newest in 1.9.x",
                "v1: newest in 1.x",
                "no latest: v2.0.0 is newer",
            ])
        );
        assert_eq!(
            plan.with_immutability(),
            vec![
                ("v1.9.10".to_owned(), true),
                ("sha-0123456".to_owned(), true),
                ("v1.9".to_owned(), false),
                ("v1".to_owned(), false),
            ]
        );
    }

    #[test]
    fn branches_and_pull_requests() {
        let branch = |name: &str, is_default| {
            compute(
                &Build::Branch {
                    name: name.into(),
                    is_default,
                },
                SHA,
                &strings(&["v9.9.9"]),
            )
            .unwrap()
            .table()
        };
        assert_eq!(
            branch("main", true),
            strings(&[
                "sha-0123456: the commit, never moves",
                "main: the default branch main"
            ])
        );
        assert_eq!(
            branch("feature/login", false),
            strings(&[
                "sha-0123456: the commit, never moves",
                "feature-login: branch feature/login"
            ])
        );
        let pr = compute(&Build::PullRequest(42), "abcdef0", &[]).unwrap();
        assert_eq!(
            pr.table(),
            strings(&[
                "sha-abcdef0: the pull request's head commit, never moves",
                "pr-42: pull request #42"
            ])
        );
        assert_eq!(
            pr.with_immutability(),
            vec![
                ("sha-abcdef0".to_owned(), true),
                ("pr-42".to_owned(), false)
            ]
        );
    }

    #[test]
    fn bad_shas_are_refused() {
        let err = compute(&Build::PullRequest(1), "abc", &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid commit sha \"abc\": expected 7 to 40 hex characters, such as the output of `git rev-parse HEAD`"
        );
    }

    /// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`, the OCI tag grammar.
    fn is_valid_tag(tag: &str) -> bool {
        let mut bytes = tag.bytes();
        bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && tag.len() <= 128
            && bytes.all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    }

    #[test]
    fn branch_names_are_sanitised() {
        let rows = [
            ("main", "main"),
            ("feature/login", "feature-login"),
            ("user/fix/issue#12", "user-fix-issue-12"),
            ("a//b##c  d", "a-b-c-d"),
            ("feat/über-straße", "feat-ber-stra-e"),
            ("ünïcode", "n-code"),
            ("日本語/ブランチ", "error"),
            (".hidden", "hidden"),
            ("..-.x", "x"),
            ("-dash", "dash"),
            ("_under", "_under"),
            ("release/1.2", "release-1.2"),
            ("Feature_X.y-Z", "Feature_X.y-Z"),
            ("trailing/", "trailing-"),
            // Beyond the table: branches never take a policy tag.
            ("latest", "branch-latest"),
            ("/latest", "branch-latest"),
            ("v1.2.3", "branch-v1.2.3"),
            ("v2", "branch-v2"),
            ("sha-0123456", "branch-sha-0123456"),
            ("pr-12", "branch-pr-12"),
            ("vendor", "vendor"),
            ("v", "v"),
            ("latest-docs", "latest-docs"),
            ("Latest", "Latest"),
        ];
        for (name, expected) in rows {
            match branch_tag(name) {
                Ok(tag) => {
                    assert_eq!(tag, expected, "branch {name:?}");
                    assert!(is_valid_tag(&tag), "{tag:?}");
                }
                Err(err) => assert_eq!(
                    ("error", err.to_string()),
                    (expected, format!("branch {name:?} has no characters usable in a tag; pass --branch with a name that has letters or digits")),
                ),
            }
        }
        assert!(branch_tag("").is_err());
        assert!(branch_tag("#/.-").is_err());
    }

    #[test]
    fn long_branch_names_are_cut_and_hashed() {
        let long_a = format!("feature/{}", "a".repeat(192));
        let long_b = format!("feature/{}b", "a".repeat(191));
        assert_eq!(long_a.len(), 200);
        let (tag_a, tag_b) = (branch_tag(&long_a).unwrap(), branch_tag(&long_b).unwrap());
        let hash_a = &crate::support::archive::sha256_hex(long_a.as_bytes())[..8];
        assert_eq!(tag_a, format!("feature-{}-{hash_a}", "a".repeat(111)));
        assert_eq!(tag_a.len(), 128);
        assert_eq!(tag_b.len(), 128);
        assert_ne!(tag_a, tag_b, "two long names must stay two tags");
        assert!(is_valid_tag(&tag_a) && is_valid_tag(&tag_b));
        // Up to 128 characters a name is kept whole; at 129 it is cut.
        let exact = "x".repeat(128);
        assert_eq!(branch_tag(&exact).unwrap(), exact);
        let over = "x".repeat(129);
        let cut = branch_tag(&over).unwrap();
        assert_eq!(cut.len(), 128);
        assert!(cut.starts_with(&"x".repeat(119)) && cut.as_bytes()[119] == b'-');
        // Non-ASCII counts once sanitised, not in bytes of the name.
        let wide = "é".repeat(100) + "x";
        assert_eq!(branch_tag(&wide).unwrap(), "x");
        let reserved = format!("v1-{}", "z".repeat(200));
        let tag = branch_tag(&reserved).unwrap();
        assert!(tag.starts_with("branch-v1-zz") && tag.len() == 128, "{tag}");
    }

    #[test]
    fn versions_are_strict() {
        for (text, why) in [
            (
                "v1.6",
                "it has 2 numbers, a release needs all three of MAJOR.MINOR.PATCH",
            ),
            (
                "v1.2.3.4",
                "it has 4 numbers, a release needs all three of MAJOR.MINOR.PATCH",
            ),
            ("1.2.3", "it must start with `v`"),
            ("v01.2.3", "invalid leading zero in major version number"),
            (
                "v1.2.3+build.1",
                "build metadata (+build.1) is not allowed in a release",
            ),
            (
                "v1.2.3-rc.1+b",
                "build metadata (+b) is not allowed in a release",
            ),
        ] {
            assert_eq!(
                parse_version(text).unwrap_err().to_string(),
                format!("invalid version {text:?}: {why}; expected vMAJOR.MINOR.PATCH or vMAJOR.MINOR.PATCH-PRERELEASE, such as v1.2.3")
            );
        }
        assert_eq!(
            parse_version("v1.2.3-rc.1").unwrap(),
            Version::parse("1.2.3-rc.1").unwrap()
        );
    }

    /// The floating tags a registry holding exactly the stable versions
    /// `released` must have: each tag at the highest version in its range.
    fn correct_floating(released: &BTreeSet<Version>) -> BTreeMap<String, Version> {
        let mut tags = BTreeMap::new();
        for version in released {
            let mut ranges = vec![format!("v{}.{}", version.major, version.minor)];
            if version.major > 0 {
                ranges.push(format!("v{}", version.major));
            }
            ranges.push("latest".to_owned());
            for tag in ranges {
                // `released` iterates in ascending order: the last one wins.
                tags.insert(tag, version.clone());
            }
        }
        tags
    }

    fn is_floating(tag: &str) -> bool {
        tag == "latest" || (tag.starts_with('v') && tag.matches('.').count() < 2)
    }

    /// A registry: tag -> version. Applying a plan points each of its tags
    /// at the new version.
    fn apply(registry: &mut BTreeMap<String, Version>, version: &Version, sha: &str) {
        let published: Vec<String> = registry.keys().cloned().collect();
        let plan = compute(&Build::Release(version.clone()), sha, &published).unwrap();
        for tag in plan.names() {
            registry.insert(tag, version.clone());
        }
    }

    fn floating_of(registry: &BTreeMap<String, Version>) -> BTreeMap<String, Version> {
        registry
            .iter()
            .filter(|(tag, _)| is_floating(tag))
            .map(|(t, v)| (t.clone(), v.clone()))
            .collect()
    }

    fn any_version() -> impl Strategy<Value = Version> {
        // Small ranges, so that lines collide and 9 meets 10.
        (
            0u64..4,
            0u64..4,
            0u64..12,
            prop_oneof![4 => Just(""), 1 => Just("rc.1"), 1 => Just("alpha")],
        )
            .prop_map(|(major, minor, patch, pre)| {
                let pre = if pre.is_empty() {
                    String::new()
                } else {
                    format!("-{pre}")
                };
                Version::parse(&format!("{major}.{minor}.{patch}{pre}")).unwrap()
            })
    }

    fn stable(versions: &[Version]) -> BTreeSet<Version> {
        versions
            .iter()
            .filter(|v| v.pre.is_empty())
            .cloned()
            .collect()
    }

    proptest! {
        /// The step. Let P be any set of published versions, and let the
        /// registry be consistent with P: each `vX.Y.Z` of P present, and
        /// each floating tag at the highest stable version of its range in
        /// P (no `v0`). Releasing any version N, with the tags computed from
        /// the registry's whole tag list, leaves it consistent with P ∪ {N}:
        /// every floating tag then points at the highest stable version of
        /// its range among P ∪ {N}. This needs the floating tags of P to be
        /// correct to begin with: the policy looks only at which versions
        /// are published, not at where the floating tags point, so it
        /// preserves correctness rather than repairing it.
        #[test]
        fn a_release_keeps_every_floating_tag_on_the_newest(
            published in proptest::collection::vec(any_version(), 0..20),
            new in any_version(),
        ) {
            let mut registry = correct_floating(&stable(&published));
            for version in &published {
                registry.insert(format!("v{version}"), version.clone());
            }
            // Noise that must not count.
            registry.insert("main".into(), Version::new(99, 0, 0));
            registry.insert("pr-3".into(), Version::new(98, 0, 0));
            apply(&mut registry, &new, SHA);
            let mut all = published.clone();
            all.push(new.clone());
            prop_assert_eq!(floating_of(&registry), correct_floating(&stable(&all)));
            prop_assert!(!registry.contains_key("v0"));
        }

        /// By induction, the step makes any order of releases, including
        /// re-runs and maintenance releases of older lines, end correct:
        /// after each release the floating tags are those of the stable
        /// versions released so far.
        #[test]
        fn any_order_of_releases_ends_correct(
            releases in proptest::collection::vec(any_version(), 1..25),
        ) {
            let mut registry = BTreeMap::new();
            for (index, version) in releases.iter().enumerate() {
                apply(&mut registry, version, &format!("{index:040x}"));
                prop_assert_eq!(
                    floating_of(&registry),
                    correct_floating(&stable(&releases[..=index]))
                );
            }
        }

        /// Whatever the branch is called, its tag is a valid OCI tag.
        #[test]
        fn every_branch_tag_is_a_valid_tag(name in "\\PC{0,300}") {
            match branch_tag(&name) {
                Ok(tag) => prop_assert!(is_valid_tag(&tag), "{:?} -> {:?}", name, tag),
                Err(_) => prop_assert!(!name.chars().any(|c| c.is_ascii_alphanumeric() || c == '_')),
            }
        }
    }
}
