//! The vulnerability scan of one binary: `cargo audit bin` reads the crate
//! graph cargo-auditable embedded, checks it against the RustSec advisory
//! database, and the policy of `[workspace.metadata.release.audit]` decides
//! what denies, what warns and what is ignored.
//!
//! The result is also the `result` of the cosign vuln predicate attached to
//! each platform, so what was scanned, against which database, and what was
//! ignored stays with the image.

use std::fmt;

use anyhow::{bail, Context, Result};
use camino::Utf8Path;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::support::config::{AdvisoryKind, AuditPolicy, IgnoreEntry};
use crate::support::tools::{self, CARGO_AUDIT_VERSION};

/// cosign's `--type vuln` predicate type.
pub const VULN_PREDICATE: &str = "https://cosign.sigstore.dev/attestation/vuln/v1";
/// The predicate file's name, next to the SBOMs of a platform's digest.
pub const VULN_FILE: &str = "vuln.json";

/// Where the advisories come from.
#[derive(Debug, Clone, Default)]
pub struct Database {
    /// A local copy, read without fetching; None lets cargo-audit fetch.
    pub path: Option<String>,
}

impl Database {
    /// `--audit-db DIR`, else `XTASK_AUDIT_DB`: the variable lets an offline
    /// environment (a mirror, the tests) point every scan at a local copy.
    pub fn chosen(flag: Option<&str>) -> Database {
        Database {
            path: flag
                .map(String::from)
                .or_else(|| std::env::var("XTASK_AUDIT_DB").ok())
                .filter(|p| !p.is_empty()),
        }
    }
}

/// What one scan found, after the policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanResult {
    /// What was scanned: a file, or an image by digest.
    pub target: String,
    pub scanner: Scanner,
    pub database: DatabaseInfo,
    pub findings: Vec<Finding>,
    /// The ignore entries that matched a finding.
    pub ignores_applied: Vec<IgnoreEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scanner {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseInfo {
    pub commit: Option<String>,
    pub updated: Option<String>,
    pub advisories: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Deny,
    Warn,
    Ignored,
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Deny => "deny",
            Action::Warn => "warn",
            Action::Ignored => "ignored",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finding {
    pub id: String,
    pub kind: AdvisoryKind,
    #[serde(rename = "crate")]
    pub krate: String,
    pub version: String,
    pub title: String,
    /// Version requirements that are fixed, as the advisory states them.
    pub patched: Vec<String>,
    pub action: Action,
}

impl ScanResult {
    pub fn denied(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.action == Action::Deny)
    }

    /// The cosign vuln predicate: the scanner, the database and, as its
    /// free-form result, this scan.
    pub fn predicate(&self, started: &str, finished: &str) -> Value {
        json!({
            "invocation": {
                "parameters": [],
                "uri": "",
                "event_id": "",
                "builder.id": "cargo xtask audit",
            },
            "scanner": {
                "uri": format!("pkg:cargo/{}@{}", self.scanner.name, self.scanner.version),
                "version": self.scanner.version,
                "db": {
                    "uri": "https://github.com/RustSec/advisory-db",
                    "version": self.database.commit.clone().unwrap_or_default(),
                },
                "result": self,
            },
            "metadata": {
                "scanStartedOn": started,
                "scanFinishedOn": finished,
            },
        })
    }
}

/// A release or an audit stopped by a denied finding: `main` maps it to
/// its own exit code, apart from "the scan could not run".
#[derive(Debug)]
pub struct Denied {
    pub message: String,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Denied {}

/// The denied findings of all `results`, as one error naming each advisory,
/// crate, version and fix; Ok when none is denied.
pub fn gate(results: &[ScanResult]) -> Result<()> {
    let mut lines = Vec::new();
    for result in results {
        for finding in result.denied() {
            let fixed = if finding.patched.is_empty() {
                "no fixed version".to_owned()
            } else {
                format!("fixed in {}", finding.patched.join(", "))
            };
            let line = format!(
                "{} ({}) in {} {} of {}: {}; {fixed}; try `cargo update -p {}@{}`",
                finding.id,
                finding.kind,
                finding.krate,
                finding.version,
                result.target,
                finding.title,
                finding.krate,
                finding.version
            );
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
    }
    if lines.is_empty() {
        return Ok(());
    }
    Err(Denied {
        message: format!(
            "the audit denies {} finding(s): {}; update the crates, or ignore an advisory with a reason and an expiry in [workspace.metadata.release.audit]",
            lines.len(),
            lines.join("; ")
        ),
    }
    .into())
}

/// Ignore entries past their expiry, as an error naming each: an exception
/// must be renewed on purpose, never kept by default.
pub fn check_expiry(policy: &AuditPolicy, today: (i32, u32, u32)) -> Result<()> {
    let expired: Vec<String> = policy
        .ignore
        .iter()
        .filter(|e| crate::support::config::parse_date(&e.expires).is_none_or(|date| date < today))
        .map(|e| format!("{} (expired {})", e.id, e.expires))
        .collect();
    if expired.is_empty() {
        return Ok(());
    }
    // An expired exception no longer holds: the verdict is a denial.
    Err(Denied {
        message: format!(
            "cannot apply the audit policy: ignore entry {} in [workspace.metadata.release.audit]; fix the advisory or renew the entry with a new reason and date",
            expired.join(", ")
        ),
    }
    .into())
}

/// Today in UTC as (year, month, day), from the days since the epoch.
pub fn today() -> (i32, u32, u32) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    civil_from_days((secs / 86_400) as i64)
}

/// Now in UTC as RFC 3339, for the predicate's scan times.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// Howard Hinnant's days-to-civil conversion: no date crate for one date.
pub fn civil_from_days(days: i64) -> (i32, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

/// Days since the epoch of a civil date: the inverse of [`civil_from_days`].
pub fn days_from_civil((year, month, day): (i32, u32, u32)) -> i64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Checks the vuln statements cosign verified for one platform: each holds
/// a scan result, and with `max_db_age` its database is at most that many
/// days older than `today`. Returns what they report.
pub fn check_statements(
    statements: &[Value],
    max_db_age: Option<u64>,
    today: (i32, u32, u32),
) -> Result<String> {
    let mut details = Vec::new();
    for statement in statements {
        if statement["predicateType"] != VULN_PREDICATE {
            bail!(
                "the vuln attestation has predicate type {}, not {VULN_PREDICATE}",
                statement["predicateType"]
            );
        }
        let result: ScanResult =
            serde_json::from_value(statement["predicate"]["scanner"]["result"].clone())
                .context("the vuln attestation holds no scan result of cargo xtask audit")?;
        let updated = result.database.updated.as_deref().unwrap_or("unknown");
        if let Some(max) = max_db_age {
            let date = updated
                .get(..10)
                .and_then(crate::support::config::parse_date);
            let Some(date) = date else {
                bail!("the scan's database date {updated:?} is unreadable, so its age is unknown");
            };
            let age = days_from_civil(today) - days_from_civil(date);
            if age > i64::try_from(max).unwrap_or(i64::MAX) {
                bail!("the scan used a database from {updated}, {age} days old, more than --max-db-age {max}; rescan with `cargo xtask audit`");
            }
        }
        let findings: Vec<String> = result
            .findings
            .iter()
            .map(|f| format!("{} {} {} ({})", f.id, f.krate, f.version, f.action.name()))
            .collect();
        details.push(format!(
            "{} {}, database {} of {}, findings: {}",
            result.scanner.name,
            result.scanner.version,
            result.database.commit.as_deref().unwrap_or("unknown"),
            updated,
            if findings.is_empty() {
                "none".to_owned()
            } else {
                findings.join(", ")
            }
        ));
    }
    Ok(details.join("; "))
}

/// Runs `cargo audit bin` on `binary` and applies `policy`. An error means
/// the scan could not run; findings, denied or not, are in the result.
pub fn scan(
    binary: &Utf8Path,
    target: &str,
    database: &Database,
    policy: &AuditPolicy,
) -> Result<ScanResult> {
    check_expiry(policy, today())?;
    let cargo_audit = tools::CARGO_AUDIT.find()?;
    // cargo-audit's own flags come before the `bin` subcommand.
    let mut args: Vec<String> = vec!["audit".into(), "--json".into()];
    if let Some(db) = &database.path {
        if !Utf8Path::new(db).join(".git").exists() {
            bail!("cannot read the advisory database {db}: not a git checkout; clone https://github.com/RustSec/advisory-db there, or leave out --audit-db to fetch it");
        }
        args.extend(["--db".into(), db.clone(), "--no-fetch".into()]);
    }
    args.extend(["bin".into(), binary.to_string()]);
    // cargo-audit exits 1 both for findings and for failures: the JSON on
    // stdout is what tells them apart.
    let output = duct::cmd(&cargo_audit, &args)
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .with_context(|| format!("cannot run {}", cargo_audit.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = stdout
        .lines()
        .find_map(|line| serde_json::from_str(line).ok())
        .with_context(|| {
            format!(
                "cannot scan {binary}: cargo audit bin printed no report: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )
        })?;
    let mut result = from_report(&report, target, policy)?;
    // Read without fetching, the database reports no commit: ask git, so
    // that the attestation still names the exact advisories scanned.
    if let (Some(db), None) = (&database.path, &result.database.commit) {
        let git = tools::GIT.find()?;
        let head = duct::cmd!(git, "-C", db, "log", "-1", "--format=%H %cI")
            .stderr_capture()
            .read()
            .with_context(|| format!("cannot read the last commit of the advisory database {db}; is it a git checkout with a commit?"))?;
        let mut parts = head.split_whitespace();
        result.database.commit = parts.next().map(String::from);
        result.database.updated = parts.next().map(String::from);
    }
    Ok(result)
}

/// The policy applied to cargo-audit's JSON report.
pub fn from_report(report: &Value, target: &str, policy: &AuditPolicy) -> Result<ScanResult> {
    let db = report.get("database").context(
        "cannot read the cargo-audit report: it has no database; check the cargo-audit version",
    )?;
    let mut findings = Vec::new();
    let vulnerabilities = report
        .pointer("/vulnerabilities/list")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for entry in &vulnerabilities {
        findings.push(raw_finding(entry, AdvisoryKind::Vulnerability)?);
    }
    if let Some(warnings) = report.get("warnings").and_then(Value::as_object) {
        for (kind, list) in warnings {
            let kind = match kind.as_str() {
                "unmaintained" => AdvisoryKind::Unmaintained,
                "unsound" => AdvisoryKind::Unsound,
                "yanked" => AdvisoryKind::Yanked,
                // Notices are informational only.
                _ => continue,
            };
            for entry in list.as_array().into_iter().flatten() {
                findings.push(raw_finding(entry, kind)?);
            }
        }
    }
    let mut ignores_applied: Vec<IgnoreEntry> = Vec::new();
    for finding in &mut findings {
        if let Some(entry) = policy.ignore.iter().find(|e| e.id == finding.id) {
            finding.action = Action::Ignored;
            if !ignores_applied.iter().any(|e| e.id == entry.id) {
                ignores_applied.push(entry.clone());
            }
        } else if policy.denies(finding.kind) {
            finding.action = Action::Deny;
        }
    }
    Ok(ScanResult {
        target: target.to_owned(),
        scanner: Scanner {
            name: "cargo-audit".into(),
            version: CARGO_AUDIT_VERSION.into(),
        },
        database: DatabaseInfo {
            commit: db
                .get("last-commit")
                .and_then(Value::as_str)
                .map(String::from),
            updated: db
                .get("last-updated")
                .and_then(Value::as_str)
                .map(String::from),
            advisories: db.get("advisory-count").and_then(Value::as_u64),
        },
        findings,
        ignores_applied,
    })
}

fn raw_finding(entry: &Value, kind: AdvisoryKind) -> Result<Finding> {
    let text = |pointer: &str| {
        entry
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let krate = text("/package/name");
    if krate.is_empty() {
        bail!(
            "cannot read a cargo-audit finding: it names no package; check the cargo-audit version"
        );
    }
    // A yanked crate has no advisory: its id is the crate's own name.
    let id = match text("/advisory/id") {
        id if id.is_empty() => format!("yanked:{krate}"),
        id => id,
    };
    Ok(Finding {
        id,
        kind,
        version: text("/package/version"),
        title: text("/advisory/title"),
        patched: entry
            .pointer("/versions/patched")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        krate,
        action: Action::Warn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(ignore: &[(&str, &str)]) -> AuditPolicy {
        AuditPolicy {
            ignore: ignore
                .iter()
                .map(|(id, expires)| IgnoreEntry {
                    id: (*id).into(),
                    reason: "not reachable".into(),
                    expires: (*expires).into(),
                })
                .collect(),
            ..AuditPolicy::default()
        }
    }

    fn report() -> Value {
        json!({
            "database": {"advisory-count": 2, "last-commit": "abc", "last-updated": "2026-01-01T00:00:00Z"},
            "vulnerabilities": {"found": true, "count": 1, "list": [{
                "advisory": {"id": "RUSTSEC-2026-0001", "title": "bad"},
                "versions": {"patched": [">=1.2.3"], "unaffected": []},
                "package": {"name": "bytes", "version": "1.0.0"}
            }]},
            "warnings": {"unmaintained": [{
                "kind": "unmaintained",
                "advisory": {"id": "RUSTSEC-2026-0002", "title": "old"},
                "package": {"name": "log", "version": "0.4.0"}
            }]}
        })
    }

    #[test]
    fn vulnerabilities_deny_and_unmaintained_warns_by_default() {
        let result = from_report(&report(), "bin", &policy(&[])).unwrap();
        assert_eq!(result.findings.len(), 2);
        assert_eq!(result.denied().count(), 1);
        assert_eq!(result.database.commit.as_deref(), Some("abc"));
        let err = gate(&[result]).unwrap_err();
        assert!(err.is::<Denied>());
        let message = err.to_string();
        assert!(message.contains("RUSTSEC-2026-0001"), "{message}");
        assert!(message.contains("bytes 1.0.0"), "{message}");
        assert!(message.contains(">=1.2.3"), "{message}");
        assert!(message.contains("cargo update -p bytes@1.0.0"), "{message}");
    }

    #[test]
    fn an_ignored_advisory_is_recorded_and_not_denied() {
        let result = from_report(
            &report(),
            "bin",
            &policy(&[("RUSTSEC-2026-0001", "2999-01-01")]),
        )
        .unwrap();
        assert_eq!(result.denied().count(), 0);
        assert_eq!(result.ignores_applied.len(), 1);
        gate(&[result]).unwrap();
    }

    #[test]
    fn an_expired_entry_is_named() {
        let policy = policy(&[("RUSTSEC-2026-0001", "2026-01-31")]);
        check_expiry(&policy, (2026, 1, 31)).unwrap();
        let message = check_expiry(&policy, (2026, 2, 1)).unwrap_err().to_string();
        assert!(
            message.contains("RUSTSEC-2026-0001 (expired 2026-01-31)"),
            "{message}"
        );
    }

    #[test]
    fn verify_reads_the_attested_scan_and_checks_the_database_age() {
        let result = from_report(&report(), "bin", &policy(&[])).unwrap();
        let statement = json!({
            "predicateType": VULN_PREDICATE,
            "predicate": result.predicate("2026-01-02T00:00:00Z", "2026-01-02T00:00:01Z"),
        });
        let detail =
            check_statements(std::slice::from_ref(&statement), Some(7), (2026, 1, 8)).unwrap();
        assert!(detail.contains("database abc of 2026-01-01"), "{detail}");
        assert!(
            detail.contains("RUSTSEC-2026-0001 bytes 1.0.0 (deny)"),
            "{detail}"
        );
        let stale = check_statements(&[statement], Some(7), (2026, 1, 9))
            .unwrap_err()
            .to_string();
        assert!(
            stale.contains("8 days old, more than --max-db-age 7"),
            "{stale}"
        );
    }

    #[test]
    fn days_convert_to_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        for days in [0, 11_016, 20_454, 20_500] {
            assert_eq!(days_from_civil(civil_from_days(days)), days);
        }
    }
}
