//! `cargo xtask audit [REF]`: the crate graph compiled into each platform's
//! binary, scanned against the RustSec advisory database with the policy
//! of `[workspace.metadata.release.audit]`. Without REF it scans
//! target/dist/; with REF, each platform's /server pulled by digest and
//! unpacked with the safe extractor, never run.
//!
//! Exit codes: 0 clean (warnings allowed), 1 a finding is denied, 2 the
//! scan could not run (no database, no scanner, a bad policy).

use std::fmt;

use anyhow::{Context, Result};
use camino::Utf8PathBuf;
use serde::Serialize;

use crate::build::binaries::{Artifact, ArtifactKind};
use crate::flags;
use crate::oci::client::Client;
use crate::oci::subject::{self, Subject};
use crate::oci::{reference, run};
use crate::supply_chain::vuln::{self, Action, Database, Denied, ScanResult};
use crate::support::config::Config;
use crate::support::tools;

/// The exit code of a scan that could not run.
pub const EXIT_NOT_RUN: u8 = 2;

/// The scan could not run: no verdict, told apart from a denied finding.
#[derive(Debug)]
pub struct NotRun(pub anyhow::Error);

impl fmt::Display for NotRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for NotRun {}

/// Any failure but a verdict (a denied finding, an expired exception)
/// means the scan could not run.
fn not_run(err: anyhow::Error) -> anyhow::Error {
    if err.is::<Denied>() {
        err
    } else {
        NotRun(err).into()
    }
}

/// One platform's scan.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformScan {
    pub platform: String,
    pub result: ScanResult,
}

pub fn run(flags: &flags::Audit) -> Result<()> {
    let scans = scan(flags).map_err(not_run)?;
    if flags.json {
        println!("{}", serde_json::to_string_pretty(&scans)?);
    } else {
        print_table(&scans);
    }
    if flags.report_issues {
        report_issues(&scans, flags.dry_run).map_err(NotRun)?;
    }
    let results: Vec<ScanResult> = scans.into_iter().map(|s| s.result).collect();
    vuln::gate(&results)
}

fn scan(flags: &flags::Audit) -> Result<Vec<PlatformScan>> {
    let config = Config::load()?;
    let database = Database::chosen(flags.db.as_deref());
    let insecure = flags.registry.transport.insecure;
    if flags.report_issues && flags.reference.is_none() && !flags.published {
        anyhow::bail!("--report-issues is for published images; add REF or --published");
    }
    if flags.published {
        let mut scans = Vec::new();
        for reference in published(&config, flags.registry.image.as_deref(), insecure)? {
            scans.extend(scan_image(&config, &reference, insecure, &database)?);
        }
        return Ok(scans);
    }
    match &flags.reference {
        Some(reference) => scan_image(&config, reference, insecure, &database),
        None => scan_dist(&config, &read_dist(&config)?, &database),
    }
}

/// `latest` and every floating `vX.Y` tag: what users pull and what an
/// advisory published after the release concerns.
fn published(config: &Config, image: Option<&str>, insecure: bool) -> Result<Vec<String>> {
    let target = reference::target(config, image)?;
    let client = Client::new(&target.host, insecure)?;
    let tags = client.list_tags(&target.repository)?;
    let floating = |tag: &str| {
        tag == "latest"
            || tag.strip_prefix('v').is_some_and(|v| {
                let parts: Vec<&str> = v.split('.').collect();
                parts.len() == 2
                    && parts
                        .iter()
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            })
    };
    let refs: Vec<String> = tags
        .iter()
        .filter(|t| floating(t))
        .map(|t| format!("{}:{t}", target.name()))
        .collect();
    if refs.is_empty() {
        anyhow::bail!(
            "cannot rescan {}: it has no latest or vX.Y tag; release first",
            target.name()
        );
    }
    Ok(refs)
}

/// The binaries dist.json lists.
fn read_dist(config: &Config) -> Result<Vec<Artifact>> {
    let path = config.dist_dir().join("dist.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {path}; run `cargo xtask dist` first"))?;
    serde_json::from_str(&text)
        .with_context(|| format!("cannot parse {path}; run `cargo xtask dist` again"))
}

/// Scans each binary among `artifacts`, one platform after another.
pub fn scan_dist(
    config: &Config,
    artifacts: &[Artifact],
    database: &Database,
) -> Result<Vec<PlatformScan>> {
    let mut scans = Vec::new();
    for artifact in artifacts.iter().filter(|a| a.kind == ArtifactKind::Binary) {
        let path = config.workspace_root.join(&artifact.path);
        let target = config.relative(&path).to_string();
        eprintln!("  scanning {target} ({})", artifact.platform);
        scans.push(PlatformScan {
            platform: artifact.platform.clone(),
            result: vuln::scan(&path, &target, database, &config.audit)?,
        });
    }
    if scans.is_empty() {
        anyhow::bail!("cannot audit: dist.json lists no binary; run `cargo xtask dist` first");
    }
    Ok(scans)
}

/// Pulls each platform's binary by digest into a temporary directory and
/// scans it there.
fn scan_image(
    config: &Config,
    reference: &str,
    insecure: bool,
    database: &Database,
) -> Result<Vec<PlatformScan>> {
    let client = subject::client_for(reference, insecure)?;
    let subject = Subject::resolve(reference, &client)?;
    let temp = tempdir(config)?;
    let mut scans = Vec::new();
    for platform in &subject.platforms {
        let dir = temp.join(platform.platform.slug());
        let binary = run::extract_binary(config, &client, &subject, platform, &dir)?;
        let target = subject.by_digest(&platform.digest);
        eprintln!(
            "  scanning /{} of {target} ({})",
            config.binary, platform.platform
        );
        scans.push(PlatformScan {
            platform: platform.platform.to_string(),
            result: vuln::scan(&binary, &target, database, &config.audit)?,
        });
    }
    std::fs::remove_dir_all(&temp).with_context(|| format!("cannot remove {temp}"))?;
    Ok(scans)
}

fn tempdir(config: &Config) -> Result<Utf8PathBuf> {
    let dir = config
        .target_dir
        .join("audit")
        .join(format!("image-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {dir}"))?;
    Ok(dir)
}

fn print_table(scans: &[PlatformScan]) {
    for scan in scans {
        let db = &scan.result.database;
        eprintln!(
            "{} ({}): {} finding(s), database {} of {}",
            scan.result.target,
            scan.platform,
            scan.result.findings.len(),
            db.commit.as_deref().unwrap_or("unknown"),
            db.updated.as_deref().unwrap_or("unknown")
        );
        for finding in &scan.result.findings {
            let action = finding.action.name();
            eprintln!(
                "  {action:<7} {} {} {} {}: {}",
                finding.id, finding.kind, finding.krate, finding.version, finding.title
            );
        }
    }
}

/// The label the rescan puts on the issues it opens, and looks for.
pub const ISSUE_LABEL: &str = "rustsec-rescan";

/// Who opens the rescan's issues: `GITHUB_TOKEN` acts as the GitHub Actions
/// app, which the search calls `app/github-actions` and the API's answers
/// `github-actions[bot]` or `app/github-actions`.
const ISSUE_AUTHOR: &str = "app/github-actions";
const ISSUE_AUTHOR_LOGINS: [&str; 2] = ["app/github-actions", "github-actions[bot]"];

/// One GitHub issue per advisory: opened when none is open, commented on
/// otherwise, so a daily rescan never piles up duplicates. Only an issue
/// the rescan opened itself is commented on: its label, its author (the
/// workflow's own) and its title. Anyone can open an issue whose title
/// holds the advisory id; such an issue must not receive the report.
/// A gh command that changes GitHub: run, or with `dry_run` printed. Both
/// go to stderr, so that stdout stays the scan's table or JSON.
fn gh_write(gh: &std::path::Path, args: &[&str], dry_run: bool) -> std::io::Result<()> {
    if dry_run {
        let words: Vec<String> = args.iter().map(|a| tools::shell_quote(a)).collect();
        eprintln!("would run: gh {}", words.join(" "));
        return Ok(());
    }
    duct::cmd(gh, args).stdout_to_stderr().run().map(drop)
}

fn report_issues(scans: &[PlatformScan], dry_run: bool) -> Result<()> {
    let gh = tools::GH.find()?;
    let mut seen: Vec<&str> = Vec::new();
    for scan in scans {
        for finding in &scan.result.findings {
            if finding.action == Action::Ignored || seen.contains(&finding.id.as_str()) {
                continue;
            }
            if seen.is_empty() {
                gh_write(&gh, &["label", "create", ISSUE_LABEL, "--force", "--color", "B60205", "--description", "Opened by the daily RustSec rescan"], dry_run)
                    .with_context(|| format!("cannot create the label {ISSUE_LABEL}; check GH_TOKEN and its issues: write permission"))?;
            }
            seen.push(&finding.id);
            let title = format!(
                "{}: {} {} ({})",
                finding.id, finding.krate, finding.version, finding.kind
            );
            let body = format!(
                "{}\n\nFound in {} (database {}).\nFixed versions: {}.\nTry `cargo update -p {}@{}`, or ignore it with a reason and an expiry in [workspace.metadata.release.audit].",
                finding.title,
                scan.result.target,
                scan.result.database.commit.as_deref().unwrap_or("unknown"),
                if finding.patched.is_empty() { "none".to_owned() } else { finding.patched.join(", ") },
                finding.krate,
                finding.version,
            );
            let search = format!("{} in:title", finding.id);
            let listed = duct::cmd!(
                &gh,
                "issue",
                "list",
                "--state",
                "open",
                "--label",
                ISSUE_LABEL,
                "--author",
                ISSUE_AUTHOR,
                "--search",
                &search,
                "--json",
                "number,title,author,labels",
                "--limit",
                "100"
            )
            .read()
            .with_context(|| {
                format!(
                    "cannot search the issues for {}; check GH_TOKEN",
                    finding.id
                )
            })?;
            let result = match own_issue(&listed, &finding.id)? {
                None => gh_write(
                    &gh,
                    &[
                        "issue",
                        "create",
                        "--title",
                        &title,
                        "--body",
                        &body,
                        "--label",
                        ISSUE_LABEL,
                    ],
                    dry_run,
                ),
                Some(number) => gh_write(
                    &gh,
                    &["issue", "comment", &number.to_string(), "--body", &body],
                    dry_run,
                ),
            };
            result.with_context(|| format!("cannot open or update the issue of {}; check GH_TOKEN and its issues: write permission", finding.id))?;
        }
    }
    Ok(())
}

/// The number of the rescan's own open issue about `id` among `listed`
/// (`gh issue list --json number,title,author,labels`). The search's
/// filters are checked again here: a search matches words, not fields.
fn own_issue(listed: &str, id: &str) -> Result<Option<u64>> {
    #[derive(serde::Deserialize)]
    struct Listed {
        number: u64,
        title: String,
        author: Login,
        labels: Vec<Label>,
    }
    #[derive(serde::Deserialize)]
    struct Login {
        login: String,
    }
    #[derive(serde::Deserialize)]
    struct Label {
        name: String,
    }
    let issues: Vec<Listed> = serde_json::from_str(listed).with_context(|| {
        format!("cannot read gh's list of issues for {id}: it is not the JSON asked for; update gh")
    })?;
    let prefix = format!("{id}: ");
    Ok(issues
        .into_iter()
        .find(|issue| {
            issue.title.starts_with(&prefix)
                && ISSUE_AUTHOR_LOGINS.contains(&issue.author.login.as_str())
                && issue.labels.iter().any(|l| l.name == ISSUE_LABEL)
        })
        .map(|issue| issue.number))
}

/// The release's gate: scans the binaries it just built, stops on a
/// denied finding. Any other failure is the scan not running.
pub fn gate(
    config: &Config,
    artifacts: &[Artifact],
    database: &Database,
) -> Result<Vec<PlatformScan>> {
    let scans = scan_dist(config, artifacts, database).map_err(not_run)?;
    let results: Vec<ScanResult> = scans.iter().map(|s| s.result.clone()).collect();
    print_table(&scans);
    vuln::gate(&results)?;
    Ok(scans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_rescans_own_issue_is_picked() {
        let issue = |number: u64, title: &str, login: &str, label: &str| serde_json::json!({"number": number, "title": title, "author": {"login": login}, "labels": [{"name": label}]});
        let id = "RUSTSEC-2026-0001";
        let title = "RUSTSEC-2026-0001: bytes 1.0.0 (vulnerability)";
        let listed = serde_json::json!([
            issue(1, title, "mallory", ISSUE_LABEL),
            issue(2, title, "github-actions[bot]", "bug"),
            issue(
                3,
                "RUSTSEC-2026-00012: x",
                "app/github-actions",
                ISSUE_LABEL
            ),
            issue(
                4,
                &format!("Re: {title}"),
                "app/github-actions",
                ISSUE_LABEL
            ),
            issue(5, title, "github-actions[bot]", ISSUE_LABEL),
        ]);
        assert_eq!(own_issue(&listed.to_string(), id).unwrap(), Some(5));
        assert_eq!(own_issue("[]", id).unwrap(), None);
        assert!(own_issue("3", id).is_err());
    }
}
