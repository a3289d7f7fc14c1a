//! The main commands on a registry with the OCI 1.1 referrers API
//! (go-containerregistry's, built from tests/referrers-registry), where
//! cosign 3 stores signatures and attestations as referrers and no
//! `sha256-<hex>` tag exists; and `bundle --load` moving a release from
//! that kind of registry to distribution 2.8 (fallback tags) and back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use support::{http_get, http_status, run, run_ok, seed_base, skopeo_tags, tool, Registry};

const PASSWORD: &str = "test-password";
const SIGNATURE: &str = "https://sigstore.dev/cosign/sign/v1";
const PROVENANCE: &str = "https://slsa.dev/provenance/v1";

fn xtask(args: &[&str]) -> Output {
    run(support::xtask()
        .args(args)
        .env("COSIGN_PASSWORD", PASSWORD)
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_TOKEN"))
}

fn xtask_json(args: &[&str]) -> Value {
    let output = xtask(args);
    assert!(
        output.status.success(),
        "cargo xtask {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("--json prints JSON")
}

/// The predicate types of what the referrers API lists for `digest`,
/// sorted. go-containerregistry's registry lists each referrer with its
/// config's media type and no annotations, so each manifest is read.
fn listed(registry: &Registry, name: &str, digest: &str) -> Vec<String> {
    let (status, body) = http_get(registry.port, &format!("/v2/{name}/referrers/{digest}"))
        .expect("the registry answers");
    assert_eq!(status, 200, "{body}");
    let index: Value = serde_json::from_str(&body).unwrap();
    let mut types: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let manifest = support::skopeo_raw(&format!(
                "{}@{}",
                registry.repo(name),
                m["digest"].as_str().unwrap()
            ));
            assert_eq!(
                manifest["artifactType"],
                "application/vnd.dev.sigstore.bundle.v0.3+json"
            );
            assert_eq!(manifest["subject"]["digest"], digest);
            manifest["annotations"]["dev.sigstore.bundle.predicateType"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    types.sort();
    types
}

/// `verify --json` of `repo@digest` with the key; whether every check passed
/// and how many there were.
fn verify(repo: &str, digest: &str, public: &Path, run_binary: bool) -> (bool, usize) {
    let reference = format!("{repo}@{digest}");
    let mut args = vec![
        "verify",
        &reference,
        "--key",
        public.to_str().unwrap(),
        "--no-tlog",
        "--insecure",
        "--json",
    ];
    if run_binary {
        args.push("--run");
    }
    let report = xtask_json(&args);
    (
        report["passed"].as_bool().unwrap(),
        report["checks"].as_array().unwrap().len(),
    )
}

fn bundle(registry: &Registry, out: &Path, load: Option<&Path>) -> Value {
    let repo = registry.repo("app");
    let out = out.to_str().unwrap();
    let mut args = vec![
        "bundle",
        "v0.1.0",
        "--insecure",
        "--json",
        "--image",
        &repo,
        "--out",
        out,
    ];
    if let Some(public) = load {
        args.extend(["--load", "--no-tlog", "--key", public.to_str().unwrap()]);
    }
    xtask_json(&args)
}

fn fallback_tags(registry: &Registry) -> Vec<String> {
    skopeo_tags(&registry.repo("app"))
        .into_iter()
        .filter(|t| t.starts_with("sha256-"))
        .collect()
}

#[test]
fn image_sign_attest_verify_and_bundle_on_the_referrers_api_then_load_both_ways() {
    let referrers = Registry::start_with_referrers();
    let plain = Registry::start();
    let (base, _) = seed_base(&referrers, "base");
    let none = format!("sha256:{}", "0".repeat(64));
    assert_eq!(
        http_status(referrers.port, &format!("/v2/base/referrers/{none}")),
        Some(200),
        "the test registry must have the referrers API"
    );
    let keys = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(tool("cosign"))
            .arg("generate-key-pair")
            .env("COSIGN_PASSWORD", PASSWORD)
            .current_dir(keys.path()),
    );
    let (key, public) = (
        keys.path().join("cosign.key"),
        keys.path().join("cosign.pub"),
    );
    support::dist();
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    let sha = support::head_sha();
    let repo = referrers.repo("app");

    // image --push --sign, then attest: all of it stored as referrers.
    let image = xtask_json(&[
        "image",
        "--push",
        "--sign",
        "--key",
        key.to_str().unwrap(),
        "--no-tlog",
        "--insecure",
        "--json",
        "--image",
        &repo,
        "--base",
        &base,
        "--version",
        "v0.1.0",
        "--sha",
        &sha,
        "--out",
        oci.to_str().unwrap(),
    ]);
    let digest = image["digest"].as_str().unwrap().to_owned();
    let platforms: Vec<String> = image["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["digest"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(platforms.len(), 2);
    let attest = xtask(&[
        "attest",
        &format!("{repo}@{digest}"),
        "--key",
        key.to_str().unwrap(),
        "--no-tlog",
        "--insecure",
    ]);
    assert!(
        attest.status.success(),
        "{}",
        String::from_utf8_lossy(&attest.stderr)
    );
    assert_eq!(listed(&referrers, "app", &digest), [SIGNATURE, PROVENANCE]);
    for platform in &platforms {
        assert_eq!(
            listed(&referrers, "app", platform),
            [
                "https://cyclonedx.org/bom",
                SIGNATURE,
                PROVENANCE,
                "https://spdx.dev/Document"
            ]
        );
    }
    assert_eq!(fallback_tags(&referrers), Vec::<String>::new());

    // verify --run finds them through the API: 3 signatures, 2 SBOMs and 3
    // provenances, then each platform's /server.
    assert_eq!(verify(&repo, &digest, &public, true), (true, 10));

    // bundle: the image and its 10 referrers, untagged.
    let archive = work.path().join("from-referrers.tar");
    let report = bundle(&referrers, &archive, None);
    let names: Vec<&str> = report["refs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names[0], "v0.1.0");
    assert_eq!(names[1..], [""; 10]);

    // Into distribution 2.8: fallback tags made from the referrers.
    let loaded = bundle(&plain, &archive, Some(&public));
    // The index's first, then the platforms', in the archive's order.
    let fallback: Vec<String> = std::iter::once(&digest)
        .chain(&platforms)
        .map(|d| d.replace(':', "-"))
        .collect();
    // Then the release's own, by its tag policy.
    let policy = [
        "v0.1.0".to_owned(),
        format!("sha-{}", &support::head_sha()[..7]),
        "v0.1".to_owned(),
        "latest".to_owned(),
    ];
    let mut tags = fallback.clone();
    tags.extend(policy.iter().cloned());
    assert_eq!(loaded["tags"], serde_json::json!(tags));
    let mut sorted = fallback.clone();
    sorted.sort();
    assert_eq!(fallback_tags(&plain), sorted);
    assert_eq!(
        http_status(plain.port, &format!("/v2/app/referrers/{digest}")),
        Some(404)
    );
    assert_eq!(
        verify(&plain.repo("app"), &digest, &public, false),
        (true, 8)
    );

    // And back, from fallback tags into another referrers registry: no
    // fallback tag there, the API lists all of it.
    let back = Registry::start_with_referrers();
    let archive = work.path().join("from-plain.tar");
    let report = bundle(&plain, &archive, None);
    assert_eq!(report["refs"].as_array().unwrap().len(), 4);
    let loaded = bundle(&back, &archive, Some(&public));
    assert_eq!(loaded["tags"], serde_json::json!(policy));
    assert_eq!(fallback_tags(&back), Vec::<String>::new());
    assert_eq!(listed(&back, "app", &digest), [SIGNATURE, PROVENANCE]);
    for platform in &platforms {
        assert_eq!(listed(&back, "app", platform).len(), 4);
    }
    assert_eq!(
        verify(&back.repo("app"), &digest, &public, false),
        (true, 8)
    );
}
