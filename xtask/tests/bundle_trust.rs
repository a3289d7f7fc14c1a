//! `bundle --load` trusts nothing the archive says. Two releases, v1.0.0
//! and v2.0.0, are pushed and signed with a test key (cheaply: two
//! indexes over one seeded two-platform image, each with its own version
//! and revision annotations, signed with the cosign CLI), bundled, and
//! v2.0.0 loaded genuinely. Then v1.0.0's archive is forged to call itself
//! v2.0.0 (with v2.0, v2 and latest beside it): the load must fail with
//! nothing tagged, and the registry's tags must be what they were. The
//! genuine v1.0.0 then loads, takes its own tags and leaves the floating
//! tags of the newer release alone. And a release loaded into a
//! repository of another name verifies there.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};
use support::{run, run_ok, seed_base, tag_digests, tool, Registry};
use xtask::oci::client::Client;

const PASSWORD: &str = "bundle-trust-test-password";

/// A signing config without Rekor or a TSA, for an offline registry.
const SIGNING_CONFIG: &str = r#"{"mediaType":"application/vnd.dev.sigstore.signingconfig.v0.2+json","caUrls":[],"oidcUrls":[],"rekorTlogUrls":[],"tsaUrls":[],"rekorTlogConfig":{"selector":"ANY"},"tsaConfig":{"selector":"ANY"}}"#;

const INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn cosign() -> Command {
    let mut command = Command::new(tool("cosign"));
    command.env("COSIGN_PASSWORD", PASSWORD);
    command
}

/// Pushes a release index for `version` over the seeded platforms of
/// `registry`/app, tags it `v<version>` and signs it recursively.
fn release(
    registry: &Registry,
    base: &Value,
    version: &str,
    revision: &str,
    work: &Path,
) -> String {
    let mut index = base.clone();
    index["annotations"] = json!({
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": revision,
    });
    let bytes = serde_json::to_vec(&index).unwrap();
    let digest = xtask::oci::digest_of(&bytes);
    let client = Client::new(&registry.host(), true).unwrap();
    client.put_manifest("app", &digest, INDEX, &bytes).unwrap();
    client
        .put_manifest("app", &format!("v{version}"), INDEX, &bytes)
        .unwrap();
    run_ok(
        cosign()
            .arg("sign")
            .arg("--key")
            .arg(work.join("cosign.key"))
            .arg("--signing-config")
            .arg(work.join("signing-config.json"))
            .args(["--recursive", "--allow-insecure-registry", "-y"])
            .arg(format!("{}@{digest}", registry.repo("app"))),
    );
    digest
}

fn bundle_args(version: &str, image: &str, archive: &Path, key: &Path) -> Command {
    let mut command = support::xtask();
    command
        .args(["bundle", version, "--insecure", "--image", image])
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(archive);
    command
}

fn load(version: &str, registry: &Registry, archive: &Path, key: &Path) -> Output {
    run(
        bundle_args(version, &registry.repo("app"), archive, key).args([
            "--load",
            "--no-tlog",
            "--json",
        ]),
    )
}

fn ref_name(entry: &Value) -> &str {
    entry["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap_or_default()
}

#[test]
fn an_older_release_forged_as_a_newer_one_tags_nothing() {
    let a = Registry::start();
    let b = Registry::start();
    let (base, _) = seed_base(&a, "app");
    let base: Value = serde_json::from_str(&run_ok(Command::new(tool("crane")).args([
        "manifest",
        "--insecure",
        &base,
    ])))
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    run_ok(cosign().arg("generate-key-pair").current_dir(work.path()));
    std::fs::write(work.path().join("signing-config.json"), SIGNING_CONFIG).unwrap();
    let key: PathBuf = work.path().join("cosign.pub");
    let v1 = release(&a, &base, "1.0.0", &"1".repeat(40), work.path());
    let v2 = release(&a, &base, "2.0.0", &"2".repeat(40), work.path());
    let archive = |version: &str| work.path().join(format!("server-{version}.oci.tar"));
    for version in ["v1.0.0", "v2.0.0"] {
        run_ok(&mut bundle_args(
            version,
            &a.repo("app"),
            &archive(version),
            &key,
        ));
    }

    // v2.0.0, genuinely: its own tags, by the release's tag policy.
    let loaded = load("v2.0.0", &b, &archive("v2.0.0"), &key);
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let before = tag_digests(&b.repo("app"));
    for tag in ["v2.0.0", "sha-2222222", "v2.0", "v2", "latest"] {
        assert_eq!(before.get(tag), Some(&v2), "{tag} on B: {before:?}");
    }

    // v1.0.0's archive renamed v2.0.0, with v2.0, v2 and latest added on
    // its digest: its signed index says 1.0.0, so nothing is pushed or
    // tagged.
    let forgery = work.path().join("forged.tar");
    support::forge_index(&archive("v1.0.0"), &forgery, |entries| {
        let release = entries
            .iter_mut()
            .find(|e| ref_name(e) == "v1.0.0")
            .unwrap();
        release["annotations"]["org.opencontainers.image.ref.name"] = json!("v2.0.0");
        let release = release.clone();
        for floating in ["v2.0", "v2", "latest"] {
            let mut entry = release.clone();
            entry["annotations"]["org.opencontainers.image.ref.name"] = json!(floating);
            entries.push(entry);
        }
    });
    let refused = load("v2.0.0", &b, &forgery, &key);
    assert_eq!(
        support::last_error_line(&refused),
        format!(
            "error: cannot load {}: its index.json names {v1} v2.0.0, but that index is signed as version v1.0.0 (org.opencontainers.image.version \"1.0.0\"); the archive was altered: nothing was pushed or tagged",
            forgery.display()
        )
    );
    assert_eq!(
        tag_digests(&b.repo("app")),
        before,
        "the forged load changed a tag"
    );

    // The genuine v1.0.0: its exact tags, and the floating tags it is the
    // newest of; v2, v2.0 and latest stay on v2.0.0.
    let loaded = load("v1.0.0", &b, &archive("v1.0.0"), &key);
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let report: Value = serde_json::from_slice(&loaded.stdout).unwrap();
    let set: Vec<&str> = report["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .filter(|t| !t.starts_with("sha256-"))
        .collect();
    assert_eq!(set, ["v1.0.0", "sha-1111111", "v1.0", "v1"]);
    let after = tag_digests(&b.repo("app"));
    for tag in ["v1.0.0", "sha-1111111", "v1.0", "v1"] {
        assert_eq!(after.get(tag), Some(&v1), "{tag} on B");
    }
    for tag in ["v2.0.0", "sha-2222222", "v2.0", "v2", "latest"] {
        assert_eq!(after.get(tag), Some(&v2), "{tag} on B");
    }
}

/// `cargo xtask verify …` as JSON, passed or not.
fn verify(reference: &str, key: &Path, extra: &[&str]) -> (Output, Value) {
    let output = run(support::xtask()
        .args(["verify", reference, "--no-tlog", "--insecure", "--json"])
        .arg("--key")
        .arg(key)
        .args(extra));
    let report = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output, report)
}

fn detail<'a>(report: &'a Value, check: &str, subject: &str) -> &'a str {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == check && c["subject"] == subject)
        .unwrap_or_else(|| panic!("no {check} of {subject}: {report:#}"))["detail"]
        .as_str()
        .unwrap()
}

#[test]
fn a_release_loaded_into_a_repository_of_another_name_verifies_there() {
    let a = Registry::start();
    let b = Registry::start();
    let (base, _) = seed_base(&a, "base");
    support::dist();
    let work = tempfile::tempdir().unwrap();
    run_ok(cosign().arg("generate-key-pair").current_dir(work.path()));
    let key = work.path().join("cosign.pub");
    let version = format!("v{}", support::server_version());
    let first = a.repo("server");
    let image: Value = serde_json::from_str(&run_ok(
        support::xtask()
            .env("COSIGN_PASSWORD", PASSWORD)
            .args([
                "image",
                "--json",
                "--push",
                "--sign",
                "--no-tlog",
                "--insecure",
            ])
            .arg("--key")
            .arg(work.path().join("cosign.key"))
            .args(["--image", &first, "--base", &base, "--version", &version])
            .args(["--sha", &support::head_sha(), "--out"])
            .arg(work.path().join("oci")),
    ))
    .unwrap();
    let index = image["digest"].as_str().unwrap();
    run_ok(
        support::xtask()
            .env("COSIGN_PASSWORD", PASSWORD)
            .args([
                "attest",
                &format!("{first}@{index}"),
                "--no-tlog",
                "--insecure",
            ])
            .arg("--key")
            .arg(work.path().join("cosign.key")),
    );
    let archive = work.path().join("release.oci.tar");
    run_ok(&mut bundle_args(&version, &first, &archive, &key));
    let mirror = b.repo("airgap");
    let loaded = run(bundle_args(&version, &mirror, &archive, &key).args(["--load", "--no-tlog"]));
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );

    // Under its new name: every statement is bound to the image by
    // digest, and names the repository it was first pushed to.
    let (passed, report) = verify(&format!("{mirror}:{version}"), &key, &[]);
    assert!(
        passed.status.success(),
        "{report:#}\n{}",
        String::from_utf8_lossy(&passed.stderr)
    );
    let amd64 = &image["platforms"][0];
    assert_eq!(amd64["platform"], "linux/amd64");
    assert_eq!(
        detail(&report, "sbom", "linux/amd64"),
        format!(
            "CycloneDX, root component server {}, of {first}@{}",
            support::server_version(),
            amd64["digest"].as_str().unwrap()
        )
    );
    assert!(
        detail(&report, "provenance", "index")
            .starts_with(&format!("SLSA v1 for {first}@{index}, builder ")),
        "{report:#}"
    );

    // Required where the operator asks: the first push's name passes, the
    // mirror's fails, naming both.
    let (passed, report) = verify(
        &format!("{mirror}:{version}"),
        &key,
        &["--expect-repository", &first],
    );
    assert!(passed.status.success(), "{report:#}");
    let (failed, report) = verify(
        &format!("{mirror}:{version}"),
        &key,
        &["--expect-repository", &mirror],
    );
    assert!(!failed.status.success(), "{report:#}");
    assert_eq!(
        detail(&report, "sbom", "linux/amd64"),
        format!("the CycloneDX SBOM attached to linux/amd64 names the repository {first}, not {mirror} (--expect-repository)")
    );
    assert_eq!(
        detail(&report, "provenance", "index"),
        format!("the provenance of index names the repository {first}, not {mirror} (--expect-repository)")
    );
    let error = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(
        error.lines().last().unwrap(),
        format!("error: verification of {mirror}@{index} failed: sbom of linux/amd64, provenance of linux/amd64, sbom of linux/arm64, provenance of linux/arm64, provenance of index")
    );
}
