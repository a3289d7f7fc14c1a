//! deploy/policy/provenance.rego, the policy docs/verifying.md gives
//! operators, run by cosign itself against a provenance made by `cargo
//! xtask attest` as the release workflow makes it: set to that release's
//! version it accepts it, and variants expecting another repository or
//! another version refuse it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use support::{run, run_ok, seed_base, tool, workspace_root, Registry};

const PASSWORD: &str = "policy-test-password";

fn verify_attestation(policy: &Path, public_key: &Path, reference: &str) -> Output {
    run(Command::new(tool("cosign"))
        .args([
            "verify-attestation",
            "--type",
            "slsaprovenance1",
            "--policy",
        ])
        .arg(policy)
        .arg("--key")
        .arg(public_key)
        .args([
            "--insecure-ignore-tlog=true",
            "--allow-insecure-registry",
            "--allow-http-registry",
            reference,
        ]))
}

#[test]
fn provenance_policy_accepts_a_release_provenance_and_refuses_another_repository() {
    let registry = Registry::start();
    let (base, _) = seed_base(&registry, "base");
    support::dist();
    let work = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(tool("cosign"))
            .arg("generate-key-pair")
            .env("COSIGN_PASSWORD", PASSWORD)
            .current_dir(work.path()),
    );
    let repo = registry.repo("app");
    let image: Value = serde_json::from_str(&run_ok(
        support::xtask()
            .args([
                "image",
                "--push",
                "--no-tags",
                "--insecure",
                "--json",
                "--image",
                &repo,
                "--base",
                &base,
                "--out",
            ])
            .arg(work.path().join("oci")),
    ))
    .unwrap();
    let digest = image["digest"].as_str().unwrap();
    let platform = image["platforms"][0]["digest"].as_str().unwrap();

    // As the release workflow runs it: the builder is the workflow on a tag.
    let key = work.path().join("cosign.key");
    run_ok(
        support::xtask()
            .args([
                "attest",
                &format!("{repo}@{digest}"),
                "--no-tlog",
                "--insecure",
            ])
            .arg("--key")
            .arg(&key)
            .env("COSIGN_PASSWORD", PASSWORD)
            .env("GITHUB_ACTIONS", "true")
            .env("GITHUB_SERVER_URL", "https://github.com")
            .env("GITHUB_REPOSITORY", support::source_slug())
            .env("GITHUB_REF", "refs/tags/v0.1.0")
            .env(
                "GITHUB_WORKFLOW_REF",
                format!(
                    "{}/.github/workflows/release.yml@refs/tags/v0.1.0",
                    support::source_slug()
                ),
            )
            .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
            .env_remove("GITHUB_TOKEN"),
    );

    // The policy as an operator sets it for the release v0.1.0.
    let shipped =
        std::fs::read_to_string(workspace_root().join("deploy/policy/provenance.rego")).unwrap();
    let for_version = |version: &str| {
        let text = shipped.replace(
            "version := \"v1.2.3\"",
            &format!("version := \"{version}\""),
        );
        assert_ne!(text, shipped, "the policy names the version in one place");
        let path = work.path().join(format!("policy-{version}.rego"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let policy = for_version("v0.1.0");
    let public_key = work.path().join("cosign.pub");
    for reference in [format!("{repo}@{digest}"), format!("{repo}@{platform}")] {
        let accepted = verify_attestation(&policy, &public_key, &reference);
        assert!(
            accepted.status.success(),
            "the policy refused {reference}: {}",
            String::from_utf8_lossy(&accepted.stderr)
        );
    }

    // The same policy expecting another repository: cosign refuses.
    let text = std::fs::read_to_string(&policy).unwrap();
    let other = text.replace(
        &format!("repository := \"{}\"", support::source_repository()),
        "repository := \"https://github.com/someone-else/rust-release\"",
    );
    assert_ne!(other, text, "the policy names the repository in one place");
    let other_policy = work.path().join("other.rego");
    std::fs::write(&other_policy, other).unwrap();
    let refused = verify_attestation(&other_policy, &public_key, &format!("{repo}@{digest}"));
    assert!(
        !refused.status.success(),
        "a policy for another repository passed"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("validation errors"), "{stderr}");

    // The same repository, another release: refused too, since the
    // builder is release.yml on exactly the version's tag.
    let refused = verify_attestation(
        &for_version("v0.2.0"),
        &public_key,
        &format!("{repo}@{digest}"),
    );
    assert!(
        !refused.status.success(),
        "the policy for v0.2.0 accepted the provenance of v0.1.0"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("validation errors"), "{stderr}");
}
