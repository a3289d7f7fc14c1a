//! The vulnerability gate end to end, in a clone of the committed workspace
//! (the preflight wants a clean tree), with cargo-audit against advisory
//! databases made here in the RustSec format, the real registry and cosign.
//! One release test on purpose: the clone's cold dist build is paid once;
//! the issues the daily rescan reports are checked on an image of the
//! workspace's own dist, pushed without a release.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;
use serde_json::Value;
use support::advisory_db::{self, Advisory};
use support::{http_get, run, run_ok, seed_base, tool, Registry};

const PASSWORD: &str = "audit-test";
/// An advisory against a crate the server links today (see Cargo.lock).
const ID: &str = "RUSTSEC-2026-9901";
const KRATE: &str = "bytes";

fn xtask(dir: &Path, args: &[&str]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(dir)
        .args(args)
        .env("COSIGN_PASSWORD", PASSWORD)
        .env_remove("XTASK_AUDIT_DB")
        .env_remove("GITHUB_TOKEN")
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL"))
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The version of `krate` in the clone's Cargo.lock.
fn locked_version(ws: &Path, krate: &str) -> String {
    let lock = std::fs::read_to_string(ws.join("Cargo.lock")).unwrap();
    let start = lock
        .find(&format!("name = \"{krate}\"\nversion = \""))
        .unwrap();
    let rest = &lock[start..];
    rest.lines().nth(1).unwrap()["version = \"".len()..]
        .trim_end_matches('"')
        .to_owned()
}

/// Appends an audit policy ignoring ID until `expires`, and commits it.
fn set_policy(ws: &Path, expires: &str) {
    let manifest = ws.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let text = match text.find("\n[workspace.metadata.release.audit]") {
        Some(at) => {
            let end = text[at + 1..]
                .find("\n\n")
                .map_or(text.len(), |e| at + 1 + e);
            format!("{}{}", &text[..at], &text[end..])
        }
        None => text,
    };
    let policy = format!(
        "\n[workspace.metadata.release.audit]\nignore = [{{ id = \"{ID}\", reason = \"the affected API is not called\", expires = \"{expires}\" }}]\n"
    );
    let at = text.find("\n[profile.release]").unwrap();
    std::fs::write(&manifest, format!("{}{policy}{}", &text[..at], &text[at..])).unwrap();
    let git = |args: &[&str]| run_ok(Command::new("git").args(args).current_dir(ws));
    git(&[
        "-c",
        "user.name=Test",
        "-c",
        "user.email=test@example.invalid",
        "commit",
        "-qam",
        "audit policy",
    ]);
}

/// Every finding of every platform in `audit --json`'s output, as
/// (advisory id, crate, version).
fn findings(scans: &Value) -> Vec<(String, String, String)> {
    scans
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["result"]["findings"].as_array().unwrap().clone())
        .map(|f| {
            (
                f["id"].as_str().unwrap().to_owned(),
                f["crate"].as_str().unwrap().to_owned(),
                f["version"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn repositories(registry: &Registry) -> String {
    http_get(registry.port, "/v2/_catalog").unwrap().1
}

#[test]
fn the_gate_denies_ignores_expires_and_attests() {
    let registry = Registry::start();
    let (base, _) = seed_base(&registry, "base");
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let ws: PathBuf = dir.path().join("ws");
    run_ok(
        Command::new("git")
            .args(["clone", "-q", "--no-tags"])
            .arg(support::workspace_root())
            .arg(&ws),
    );
    run_ok(
        Command::new(tool("cosign"))
            .arg("generate-key-pair")
            .env("COSIGN_PASSWORD", PASSWORD)
            .current_dir(dir.path()),
    );
    let key = dir.path().join("cosign.key");
    let public = dir.path().join("cosign.pub");
    let version = locked_version(&ws, KRATE);
    let hit = advisory_db::write(
        &dir.path().join("db-hit"),
        &[Advisory {
            id: ID,
            krate: KRATE,
            patched: ">= 99.0.0",
            title: "a test advisory against bytes",
        }],
    );
    let hit = hit.to_str().unwrap();
    let clean = advisory_db::empty().to_str().unwrap();
    let tag = format!("v{}", support::server_version());
    let release = |repo: &str, db: &str| {
        xtask(
            &ws,
            &[
                "release",
                &tag,
                "--push",
                "--insecure",
                "--image",
                &format!("{host}/{repo}"),
                "--base",
                &base,
                "--key",
                key.to_str().unwrap(),
                "--no-tlog",
                "--audit-db",
                db,
            ],
        )
    };

    // 1. A denied advisory stops the release before anything is pushed.
    let denied = release("app", hit);
    let out = text(&denied);
    assert_eq!(denied.status.code(), Some(1), "{out}");
    assert!(out.contains("[3/9] audit: failed after"), "{out}");
    assert!(!out.contains("[4/9]"), "{out}");
    for needle in [
        ID.to_owned(),
        format!("{KRATE} {version}"),
        "fixed in >=99.0.0".to_owned(),
        format!("cargo update -p {KRATE}@{version}"),
    ] {
        assert!(out.contains(&needle), "no {needle:?} in:\n{out}");
    }
    assert!(
        !repositories(&registry).contains("\"app\""),
        "{}",
        repositories(&registry)
    );

    // 2. The local scan of target/dist/ (built by that release): denied
    //    (1), listed in --json; clean against a database without it (0);
    //    a broken database is "could not run" (2).
    let local = xtask(&ws, &["audit", "--audit-db", hit, "--json"]);
    assert_eq!(local.status.code(), Some(1), "{}", text(&local));
    let scans: Value = serde_json::from_slice(&local.stdout).unwrap();
    let local_ids = findings(&scans);
    assert_eq!(scans.as_array().unwrap().len(), 2, "{scans}");
    assert!(
        local_ids
            .iter()
            .all(|f| *f == (ID.to_owned(), KRATE.to_owned(), version.clone())),
        "{local_ids:?}"
    );
    assert_eq!(local_ids.len(), 2, "{local_ids:?}");
    let ok = xtask(&ws, &["audit", "--audit-db", clean]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    let broken = xtask(&ws, &["audit", "--audit-db", "/nonexistent/advisory-db"]);
    assert_eq!(broken.status.code(), Some(2), "{}", text(&broken));

    // 3. Ignored with a reason until a future date: the release completes,
    //    and each platform's vuln attestation records the ignore.
    set_policy(&ws, "2999-12-31");
    let released = release("app", hit);
    assert!(released.status.success(), "{}", text(&released));
    let index = format!("{host}/app:{tag}");
    let platforms = support::platform_digests(&index);
    assert_eq!(platforms.len(), 2, "{platforms:?}");
    for digest in platforms.values() {
        let verified = run(Command::new(tool("cosign")).args([
            "verify-attestation",
            "--key",
            public.to_str().unwrap(),
            "--insecure-ignore-tlog=true",
            "--allow-insecure-registry",
            "--allow-http-registry",
            "--type",
            "vuln",
            &format!("{host}/app@{digest}"),
        ]));
        let stdout = String::from_utf8_lossy(&verified.stdout);
        assert!(verified.status.success(), "{}", text(&verified));
        let envelope: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
        let payload = base64::engine::general_purpose::STANDARD
            .decode(envelope["payload"].as_str().unwrap())
            .unwrap();
        let statement: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            statement["predicateType"],
            "https://cosign.sigstore.dev/attestation/vuln/v1"
        );
        let result = &statement["predicate"]["scanner"]["result"];
        assert_eq!(result["ignores_applied"][0]["id"], ID, "{result}");
        assert_eq!(
            result["ignores_applied"][0]["reason"],
            "the affected API is not called"
        );
        assert_eq!(result["findings"][0]["action"], "ignored", "{result}");
        assert_eq!(result["scanner"]["name"], "cargo-audit");
        assert!(
            result["database"]["commit"]
                .as_str()
                .is_some_and(|c| c.len() == 40),
            "{result}"
        );
    }

    // verify reports each platform's scan, and --max-db-age holds it to a
    // database made today.
    let verified = xtask(
        &ws,
        &[
            "verify",
            &index,
            "--key",
            public.to_str().unwrap(),
            "--no-tlog",
            "--insecure",
            "--max-db-age",
            "1",
        ],
    );
    let out = text(&verified);
    assert!(verified.status.success(), "{out}");
    assert!(
        out.lines()
            .filter(|l| l.starts_with("PASS   vuln "))
            .count()
            == 2,
        "{out}"
    );
    assert!(
        out.contains(&format!("{ID} {KRATE} {version} (ignored)")),
        "{out}"
    );

    // 4. The published image, scanned from the registry, finds what the
    //    local scan found.
    let remote = xtask(
        &ws,
        &["audit", &index, "--insecure", "--audit-db", hit, "--json"],
    );
    assert_eq!(remote.status.code(), Some(0), "{}", text(&remote));
    let remote: Value = serde_json::from_slice(&remote.stdout).unwrap();
    let remote_ids = findings(&remote);
    assert_eq!(remote_ids, local_ids);

    // 5. Expired: the release fails, naming the entry; nothing is pushed.
    set_policy(&ws, "2020-01-01");
    let expired = release("expired", hit);
    let out = text(&expired);
    assert_eq!(expired.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!("ignore entry {ID} (expired 2020-01-01)")),
        "{out}"
    );
    assert!(
        !repositories(&registry).contains("\"expired\""),
        "{}",
        repositories(&registry)
    );
}

/// A `gh` that records each call in `calls` (its arguments, one a line,
/// then `--`) and answers `issue list` with `issues.json` (and, for a
/// `--jq` query, with `first.txt`), as GitHub would for a search that
/// matched those issues.
fn write_fake_gh(dir: &Path, issues: &Value) {
    use std::os::unix::fs::PermissionsExt;
    let first = issues[0]["number"]
        .as_u64()
        .map(|n| n.to_string())
        .unwrap_or_default();
    std::fs::write(dir.join("issues.json"), issues.to_string()).unwrap();
    std::fs::write(dir.join("first.txt"), first).unwrap();
    let dir_text = dir.to_str().unwrap();
    let script = format!(
        r#"#!/bin/sh
for arg in "$@"; do printf '%s\n' "$arg" >> '{dir_text}/calls'; done
echo -- >> '{dir_text}/calls'
case "$1 $2" in
  "issue list")
    for arg in "$@"; do [ "$arg" = --jq ] && exec cat '{dir_text}/first.txt'; done
    exec cat '{dir_text}/issues.json' ;;
  "issue create"|"issue comment") echo https://github.com/o/r/issues/99 ;;
esac
"#
    );
    let gh = dir.join("gh");
    std::fs::write(&gh, script).unwrap();
    std::fs::set_permissions(&gh, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The argument lists of the fake gh's calls.
fn gh_calls(dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("calls")).unwrap_or_default();
    text.split("--\n")
        .filter(|c| !c.is_empty())
        .map(|c| c.lines().map(str::to_owned).collect())
        .collect()
}

/// `audit REF --report-issues` comments only on an issue the rescan itself
/// opened (its label, the GitHub Actions author, its title): an issue
/// anyone opened with the advisory id in its title does not steer it.
#[test]
fn report_issues_comments_only_on_the_rescans_own_issue() {
    let registry = Registry::start();
    support::dist();
    let repo = registry.repo("app");
    let pushed = run(support::xtask().args([
        "image",
        "--push",
        "--insecure",
        "--base",
        "scratch",
        "--image",
        &repo,
        "--version",
        "v0.1.0",
        "--sha",
        &support::head_sha(),
        "--json",
    ]));
    assert!(pushed.status.success(), "{}", text(&pushed));
    let pushed: Value = serde_json::from_slice(&pushed.stdout).unwrap();
    let index = format!("{repo}@{}", pushed["digest"].as_str().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let version = locked_version(&support::workspace_root(), KRATE);
    let hit = advisory_db::write(
        &dir.path().join("db-hit"),
        &[Advisory {
            id: ID,
            krate: KRATE,
            patched: ">= 99.0.0",
            title: "a test advisory against bytes",
        }],
    );
    let title = format!("{ID}: {KRATE} {version} (vulnerability)");
    let report_with = |issues: Value, extra: &[&str]| {
        let bin = tempfile::tempdir().unwrap();
        write_fake_gh(bin.path(), &issues);
        let mut paths = vec![bin.path().to_path_buf()];
        paths.extend(support::tool_path());
        let out = run(support::xtask()
            .args([
                "audit",
                &index,
                "--insecure",
                "--report-issues",
                "--audit-db",
            ])
            .arg(&hit)
            .args(extra)
            .env("PATH", std::env::join_paths(paths).unwrap()));
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        (
            gh_calls(bin.path()),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let report = |issues: Value| report_with(issues, &[]).0;
    let planted = serde_json::json!([{
        "number": 7,
        "title": format!("{title} (read the fix at evil.example)"),
        "author": {"login": "mallory", "is_bot": false},
        "labels": [{"name": "rustsec-rescan"}],
    }, {
        "number": 8,
        "title": title,
        "author": {"login": "mallory", "is_bot": false},
        "labels": [],
    }]);
    let calls = report(planted);
    assert!(
        !calls.iter().any(|c| c[..2] == ["issue", "comment"]),
        "commented on an issue the rescan did not open: {calls:?}"
    );
    let created: Vec<&Vec<String>> = calls
        .iter()
        .filter(|c| c[..2] == ["issue", "create"])
        .collect();
    assert_eq!(created.len(), 1, "{calls:?}");
    assert!(
        created[0]
            .windows(2)
            .any(|w| w == ["--label", "rustsec-rescan"]),
        "{calls:?}"
    );
    let own = serde_json::json!([{
        "number": 12,
        "title": title,
        "author": {"login": "app/github-actions", "is_bot": true},
        "labels": [{"name": "rustsec-rescan"}],
    }]);
    let calls = report(own.clone());
    let commented: Vec<&Vec<String>> = calls
        .iter()
        .filter(|c| c[..2] == ["issue", "comment"])
        .collect();
    assert_eq!(commented.len(), 1, "{calls:?}");
    assert_eq!(commented[0][2], "12", "{calls:?}");
    assert!(
        !calls.iter().any(|c| c[..2] == ["issue", "create"]),
        "{calls:?}"
    );

    // --dry-run searches, then only says what it would change.
    let (calls, stderr) = report_with(own, &["--dry-run"]);
    assert!(
        calls.iter().all(|c| c[..2] == ["issue", "list"]) && !calls.is_empty(),
        "the dry run changed GitHub: {calls:?}"
    );
    let would: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("would run: gh "))
        .collect();
    assert_eq!(would.len(), 2, "{stderr}");
    assert!(would[0].starts_with("would run: gh label create rustsec-rescan --force"));
    assert!(would[1].starts_with("would run: gh issue comment 12 --body "));
}
