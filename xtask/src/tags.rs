//! The tag policy of DESIGN.md §3, and `cargo xtask tags`.

use anyhow::{bail, Context, Result};
use semver::Version;
use serde::Serialize;
use serde_json::json;

use crate::config::Config;
use crate::flags::{self, BuildRef};
use crate::git::{self, Git};
use crate::registry::{Client, Reference};
use crate::source::Source;

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
    /// Floating tags not set, and why.
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
}

/// Parses a release version: `v`, then strict semver, without build
/// metadata.
pub fn parse_version(text: &str) -> Result<Version> {
    let expected = "expected vMAJOR.MINOR.PATCH or vMAJOR.MINOR.PATCH-PRERELEASE, such as v1.2.3";
    let Some(rest) = text.strip_prefix('v') else {
        bail!("invalid version {text:?}: it must start with `v`; {expected}");
    };
    let version = Version::parse(rest)
        .map_err(|e| anyhow::anyhow!("invalid version {text:?}: {e}; {expected}"))?;
    if !version.build.is_empty() {
        bail!("invalid version {text:?}: build metadata (+{}) is not allowed in a release; {expected}", version.build);
    }
    Ok(version)
}

/// A published tag that counts for the floating tags: exactly `vX.Y.Z`.
fn published_stable(tag: &str) -> Option<Version> {
    let version = parse_version(tag).ok()?;
    (version.pre.is_empty() && format!("v{version}") == tag).then_some(version)
}

pub fn compute(build: &Build, sha: &str, published: &[String]) -> Result<Plan> {
    git::check_sha(sha)?;
    let sha_tag = PlannedTag {
        tag: format!("sha-{}", &sha[..7].to_ascii_lowercase()),
        reason: "the commit".into(),
        immutable: true,
    };
    let mut tags = Vec::new();
    let mut not_set = Vec::new();
    match build {
        Build::Release(version) => {
            tags.push(PlannedTag {
                tag: format!("v{version}"),
                reason: "the release".into(),
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
            let newest = |filter: &dyn Fn(&Version) -> bool| {
                stable.iter().filter(|v| filter(v)).max().cloned()
            };
            let (major, minor) = (version.major, version.minor);
            match newest(&|v| v.major == major && v.minor == minor) {
                Some(newer) if newer > *version => {
                    not_set.push(format!("no v{major}.{minor}: v{newer} is newer"))
                }
                _ => tags.push(PlannedTag {
                    tag: format!("v{major}.{minor}"),
                    reason: format!("newest in {major}.{minor}.x"),
                    immutable: false,
                }),
            }
            if major == 0 {
                not_set.push("no v0: 0.x releases get no major tag".to_owned());
            } else {
                match newest(&|v| v.major == major) {
                    Some(newer) if newer > *version => {
                        not_set.push(format!("no v{major}: v{newer} is newer"))
                    }
                    _ => tags.push(PlannedTag {
                        tag: format!("v{major}"),
                        reason: format!("newest in {major}.x"),
                        immutable: false,
                    }),
                }
            }
            match newest(&|_| true) {
                Some(newer) if newer > *version => {
                    not_set.push(format!("no latest: v{newer} is newer"))
                }
                _ => tags.push(PlannedTag {
                    tag: "latest".into(),
                    reason: "newest stable release".into(),
                    immutable: false,
                }),
            }
        }
        Build::Branch { name, is_default } => {
            tags.push(sha_tag);
            let reason = if *is_default {
                "the default branch".to_owned()
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
                reason: "the pull request's head commit".into(),
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

/// The branch name as a tag: runs of characters outside `[A-Za-z0-9_.-]`
/// become one `-`, leading `.` and `-` go, and a name longer than 128 is cut
/// and given a short hash of the full name so that two long names differ.
/// A branch whose tag would look like a release or another policy tag is
/// prefixed with `branch-`, so that no branch can take `latest` or `v1.2.3`.
pub fn branch_tag(name: &str) -> Result<String> {
    let mut tag = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || "_.-".contains(c) {
            tag.push(c);
        } else if !tag.ends_with('-') {
            tag.push('-');
        }
    }
    let tag = tag.trim_start_matches(['.', '-']).to_owned();
    if tag.is_empty() {
        bail!("branch {name:?} has no characters usable in a tag; rename the branch or pass --branch with another name");
    }
    let reserved = tag == "latest"
        || tag.starts_with("sha-")
        || tag.starts_with("pr-")
        || tag
            .strip_prefix('v')
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()));
    let tag = if reserved {
        format!("branch-{tag}")
    } else {
        tag
    };
    if tag.len() <= 128 {
        return Ok(tag);
    }
    let hash = &crate::archive::sha256_hex(name.as_bytes())[..8];
    Ok(format!("{}-{hash}", &tag[..119]))
}

/// The build and commit the flags describe; without flags, the GitHub
/// Actions environment; without that, local git.
pub fn resolve_build(config: &Config, build: &BuildRef) -> Result<(Build, String)> {
    let github = GithubContext::from_env()?;
    let sha = match (&build.sha, &github) {
        (Some(sha), _) => sha.clone(),
        (None, Some(ctx)) => ctx.sha.clone(),
        (None, None) => Git::open(&config.workspace_root)?.head_sha()?,
    };
    git::check_sha(&sha)?;
    let kind = if let Some(version) = &build.version {
        Build::Release(parse_version(version)?)
    } else if let Some(branch) = &build.branch {
        Build::Branch {
            name: branch.clone(),
            is_default: *branch == config.default_branch,
        }
    } else if let Some(number) = build.pr {
        Build::PullRequest(number)
    } else if let Some(ctx) = github {
        ctx.build(config)?
    } else {
        let branch = Git::open(&config.workspace_root)?
            .current_branch()
            .context(
            "cannot tell what is being built on a detached HEAD; pass --version, --branch or --pr",
        )?;
        Build::Branch {
            is_default: branch == config.default_branch,
            name: branch,
        }
    };
    Ok((kind, sha))
}

/// What GitHub Actions says is being built.
struct GithubContext {
    event: String,
    git_ref: String,
    sha: String,
    pr: Option<u64>,
}

impl GithubContext {
    fn from_env() -> Result<Option<GithubContext>> {
        let (Ok(event), Ok(git_ref), Ok(mut sha)) = (
            std::env::var("GITHUB_EVENT_NAME"),
            std::env::var("GITHUB_REF"),
            std::env::var("GITHUB_SHA"),
        ) else {
            return Ok(None);
        };
        let mut pr = None;
        if event.starts_with("pull_request") {
            // GITHUB_SHA is the merge commit; the image is of the PR head.
            let path = std::env::var("GITHUB_EVENT_PATH")
                .context("GITHUB_EVENT_PATH is not set in a pull_request run")?;
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the event payload {path}"))?;
            let payload: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{path} is not JSON"))?;
            sha = payload["pull_request"]["head"]["sha"]
                .as_str()
                .with_context(|| format!("{path} has no pull_request.head.sha"))?
                .to_owned();
            pr = payload["pull_request"]["number"]
                .as_u64()
                .or_else(|| payload["number"].as_u64());
        }
        Ok(Some(GithubContext {
            event,
            git_ref,
            sha,
            pr,
        }))
    }

    fn build(&self, config: &Config) -> Result<Build> {
        if let Some(number) = self.pr {
            return Ok(Build::PullRequest(number));
        }
        if let Some(tag) = self.git_ref.strip_prefix("refs/tags/") {
            return Ok(Build::Release(parse_version(tag)?));
        }
        if let Some(branch) = self.git_ref.strip_prefix("refs/heads/") {
            return Ok(Build::Branch {
                name: branch.to_owned(),
                is_default: branch == config.default_branch,
            });
        }
        bail!("cannot tell what GitHub is building from GITHUB_EVENT_NAME={} GITHUB_REF={}; pass --version, --branch or --pr", self.event, self.git_ref)
    }
}

/// The published tags: `--existing`, else the registry's tag list.
pub fn published(
    existing: Option<&[String]>,
    target: &Reference,
    client: Option<&Client>,
) -> Result<Vec<String>> {
    match (existing, client) {
        (Some(tags), _) => Ok(tags.iter().filter(|t| !t.is_empty()).cloned().collect()),
        (None, Some(client)) => client.list_tags(&target.repository),
        (None, None) => Client::new(&target.host, false)?.list_tags(&target.repository),
    }
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
    let published = match kind {
        Build::Release(_) => published(None, target, Some(client))?,
        _ => Vec::new(),
    };
    Ok(compute(&kind, &sha, &published)?.with_immutability())
}

pub fn run(flags: &flags::Tags) -> Result<()> {
    let config = Config::load()?;
    let (kind, sha) = resolve_build(&config, &flags.build)?;
    let target = Reference::parse(flags.registry.image.as_deref().unwrap_or(&config.image))?;
    let published = match (&kind, flags.existing.as_deref()) {
        (Build::Release(_), None) => {
            let client = Client::new(&target.host, flags.registry.insecure)?;
            published(None, &target, Some(&client))?
        }
        (_, existing) => existing.map(<[String]>::to_vec).unwrap_or_default(),
    };
    let plan = compute(&kind, &sha, &published)?;
    if flags.json {
        println!(
            "{}",
            json!({
                "tags": plan.names(),
                "immutable": plan.tags.iter().filter(|t| t.immutable).map(|t| &t.tag).collect::<Vec<_>>(),
                "reasons": plan.tags.iter().map(|t| (t.tag.clone(), json!(t.reason))).collect::<serde_json::Map<_, _>>(),
                "not_set": plan.not_set,
                "published_considered": published.len(),
            })
        );
        return Ok(());
    }
    for tag in &plan.tags {
        println!("{:<40} {}", tag.tag, tag.reason);
    }
    for reason in &plan.not_set {
        println!("{:<40} {reason}", "-");
    }
    Ok(())
}
