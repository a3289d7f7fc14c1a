//! `cargo xtask release --push` with the chart enabled, in a clone of the
//! committed workspace: the chart is published after the image is verified
//! and before the tags, and a chart that cannot be pushed leaves every tag
//! where it was. One test: the clone's cold build is paid once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use support::{run, run_ok, seed_base, tag_digests, tool, KillingProxy, Registry};

const PASSWORD: &str = "release-chart-test";

/// A clone of the committed workspace with the chart's publication on,
/// committed, since the preflight wants a clean tree.
fn clone_with_chart_enabled(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("ws");
    run_ok(
        Command::new("git")
            .args(["clone", "-q", "--no-tags"])
            .arg(support::workspace_root())
            .arg(&path),
    );
    let manifest = path.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let off = "[workspace.metadata.release.chart]\npublish = false\n";
    assert!(text.contains(off), "Cargo.toml has no {off:?}");
    std::fs::write(
        &manifest,
        text.replacen(
            off,
            "[workspace.metadata.release.chart]\npublish = true\n",
            1,
        ),
    )
    .unwrap();
    run_ok(Command::new("git").current_dir(&path).args([
        "-c",
        "user.name=Test",
        "-c",
        "user.email=test@example.invalid",
        "commit",
        "-qam",
        "Publish the chart",
    ]));
    path
}

fn release(ws: &PathBuf, args: &[&str]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(ws)
        .arg("release")
        .args(args)
        .env("COSIGN_PASSWORD", PASSWORD)
        .env("XTASK_AUDIT_DB", support::advisory_db::empty())
        .env_remove("GITHUB_TOKEN")
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL"))
}

#[test]
fn release_publishes_the_signed_chart_before_the_tags_and_a_failed_chart_moves_none() {
    let registry = Arc::new(Mutex::new(Registry::start()));
    let (base, _) = seed_base(&registry.lock().unwrap(), "base");
    let host = registry.lock().unwrap().host();
    let dir = tempfile::tempdir().unwrap();
    let ws = clone_with_chart_enabled(&dir);
    run_ok(
        Command::new(tool("cosign"))
            .arg("generate-key-pair")
            .env("COSIGN_PASSWORD", PASSWORD)
            .current_dir(dir.path()),
    );
    let key = dir.path().join("cosign.key");
    let version = support::server_version();
    let tag = format!("v{version}");
    let repo = format!("{host}/app");
    run_ok(Command::new(tool("crane")).args([
        "copy",
        "--insecure",
        &base,
        &format!("{repo}:latest"),
    ]));
    let old_latest = tag_digests(&repo)["latest"].clone();

    // Through a proxy that kills the registry when the chart's manifest
    // arrives: the image is pushed, signed, attested and verified, and then
    // the chart step fails.
    let proxy = KillingProxy::start(registry.clone(), "PUT /v2/charts/server/manifests/sha256:");
    let proxied = format!("127.0.0.1:{}", proxy.port);
    let proxied_repo = format!("{proxied}/app");
    let proxied_base = base.replace(&host, &proxied);
    let args = [
        &tag as &str,
        "--push",
        "--insecure",
        "--image",
        &proxied_repo,
        "--base",
        &proxied_base,
        "--key",
        key.to_str().unwrap(),
        "--no-tlog",
        "--json",
    ];
    let failed = release(&ws, &args);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(proxy.has_fired(), "{stderr}");
    assert!(
        stderr.contains("[8/10] chart: pushed by digest, signed, tagged: failed after"),
        "{stderr}"
    );
    assert!(!stderr.contains("[9/10] tag"), "{stderr}");
    let port = proxy.port;
    drop(proxy);
    registry.lock().unwrap().restart();
    let tags = tag_digests(&repo);
    assert_eq!(tags["latest"], old_latest, "latest moved");
    assert!(!tags.contains_key(&tag), "{tags:?}");

    // The re-run, under the same name: the chart, then the tags.
    let proxy = KillingProxy::start_at(registry.clone(), "\u{0}never\u{0}", port);
    let output = release(&ws, &args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    let chart_step = stderr
        .find("[8/10] chart: pushed by digest, signed, tagged: done")
        .unwrap();
    let tag_step = stderr
        .find("[9/10] tag: exact first, floating last")
        .unwrap();
    assert!(chart_step < tag_step, "{stderr}");
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    let digest = summary["digest"].as_str().unwrap();
    let chart = &summary["chart"];
    let chart_digest = chart["digest"].as_str().unwrap();
    assert_eq!(chart["version"], version.as_str());
    assert_eq!(chart["app_version"], tag.as_str());
    assert_eq!(chart["image"], format!("{proxied_repo}@{digest}").as_str());
    let tags = tag_digests(&repo);
    assert_eq!(tags["latest"], digest);
    let chart_repo = format!("{host}/charts/server");
    assert_eq!(tag_digests(&chart_repo)[&version], chart_digest);

    // Signed with the release key; its verify command is in the summary
    // and in the release notes.
    let public = ws.join(format!("target/release/{tag}/cosign.pub"));
    run_ok(Command::new(tool("cosign")).args([
        "verify",
        &format!("--key={}", public.display()),
        "--insecure-ignore-tlog=true",
        "--allow-insecure-registry",
        "--allow-http-registry",
        &format!("{chart_repo}@{chart_digest}"),
    ]));
    let commands: Vec<&str> = summary["verify_commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let chart_verify = format!("cosign verify --key=cosign.pub --insecure-ignore-tlog=true --allow-insecure-registry --allow-http-registry --output=json {proxied}/charts/server@{chart_digest}");
    assert!(commands.contains(&chart_verify.as_str()), "{commands:#?}");
    let notes =
        std::fs::read_to_string(ws.join(format!("target/release/{tag}/assets/release-notes.md")))
            .unwrap();
    assert!(
        notes.contains(&format!("digest `{chart_digest}`")),
        "{notes}"
    );
    assert!(notes.contains(&chart_verify), "{notes}");

    // `verify --chart`: the chart's signature, and that its default values
    // run the image verified with it.
    let xtask = |args: &[&str]| {
        run(Command::new(env!("CARGO_BIN_EXE_xtask"))
            .current_dir(&ws)
            .args(args)
            .env("COSIGN_PASSWORD", PASSWORD))
    };
    let public = public.to_str().unwrap();
    // Under the name it was pushed as: the provenance names it.
    let image = format!("{proxied_repo}@{digest}");
    let verify = |chart: &str| {
        let output = xtask(&[
            "verify",
            &image,
            "--key",
            public,
            "--no-tlog",
            "--insecure",
            "--json",
            "--chart",
            chart,
        ]);
        let report: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&output.stderr)));
        let chart_checks: Vec<(String, bool, String)> = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["subject"] == "chart")
            .map(|c| {
                (
                    c["check"].as_str().unwrap().to_owned(),
                    c["ok"].as_bool().unwrap(),
                    c["detail"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let failed = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["ok"] == false);
        let failed: Vec<&Value> = failed.collect();
        (output.status.success(), chart_checks, failed.len())
    };
    let (passed, checks, failed) = verify(&format!("oci://{chart_repo}@{chart_digest}"));
    assert!(passed && failed == 0, "{checks:?}");
    assert_eq!(checks.len(), 2);
    assert!(checks.iter().all(|(_, ok, _)| *ok), "{checks:?}");
    // A chart signed with the same key that runs another image: refused.
    let other = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    let pushed = xtask(&[
        "chart",
        "--version",
        "v9.9.9",
        "--image-digest",
        other,
        "--image",
        &repo,
        "--push",
        "--insecure",
        "--no-tlog",
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let (passed, checks, failed) = verify(&format!("oci://{chart_repo}:9.9.9"));
    assert!(!passed && failed == 1, "{checks:?}");
    assert!(checks[0].1, "{checks:?}");
    assert_eq!(checks[1].0, "chart-image");
    assert!(
        !checks[1].1 && checks[1].2.contains("not the verified image"),
        "{checks:?}"
    );
    drop(proxy);
}
