//! `cargo xtask bundle` as an air-gapped install: push and sign in
//! registry A with the cosign CLI, bundle from A, load into registry B with
//! exactly the skopeo commands docs/operations.md gives, and verify on B
//! with cosign. Every check is made by tools this project did not write.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use support::{head_sha, run, run_ok, seed_base, tag_digests, tool, Registry};

const PASSWORD: &str = "bundle-test-password";

/// A signing config without Rekor or a TSA: signatures for a private,
/// offline registry (`--tlog-upload=false` is an error in cosign 3).
const SIGNING_CONFIG: &str = r#"{"mediaType":"application/vnd.dev.sigstore.signingconfig.v0.2+json","caUrls":[],"oidcUrls":[],"rekorTlogUrls":[],"tsaUrls":[],"rekorTlogConfig":{"selector":"ANY"},"tsaConfig":{"selector":"ANY"}}"#;

struct Signed {
    work: tempfile::TempDir,
    index: String,
    platforms: BTreeMap<String, String>,
}

impl Signed {
    fn key(&self) -> PathBuf {
        self.work.path().join("cosign.key")
    }
    fn public_key(&self) -> PathBuf {
        self.work.path().join("cosign.pub")
    }
}

fn cosign() -> Command {
    let mut command = Command::new(tool("cosign"));
    command.env("COSIGN_PASSWORD", PASSWORD);
    command
}

/// Pushes v0.1.0 to `registry`/app, signs it recursively and attests a
/// CycloneDX SBOM on the amd64 manifest, all with the cosign CLI.
fn push_and_sign(registry: &Registry) -> Signed {
    let (base, _) = seed_base(registry, "base");
    support::dist();
    let work = tempfile::tempdir().unwrap();
    let out = run_ok(
        support::xtask()
            .args([
                "image",
                "--json",
                "--push",
                "--insecure",
                "--image",
                &registry.repo("app"),
                "--base",
                &base,
                "--version",
                "v0.1.0",
                "--sha",
                &head_sha(),
                "--out",
            ])
            .arg(work.path().join("oci")),
    );
    let image: Value = serde_json::from_str(&out).expect("image --json printed JSON");
    let index = image["digest"].as_str().unwrap().to_owned();
    let platforms = support::platform_digests(&format!("{}@{index}", registry.repo("app")));
    assert_eq!(
        platforms.keys().collect::<Vec<_>>(),
        ["amd64", "arm64"],
        "the pushed index"
    );

    run_ok(
        cosign()
            .args(["generate-key-pair"])
            .current_dir(work.path()),
    );
    let signing_config = work.path().join("signing-config.json");
    std::fs::write(&signing_config, SIGNING_CONFIG).unwrap();
    let signed = Signed {
        work,
        index,
        platforms,
    };
    run_ok(
        cosign()
            .arg("sign")
            .arg("--key")
            .arg(signed.key())
            .arg("--signing-config")
            .arg(&signing_config)
            .args(["--recursive", "--allow-insecure-registry", "-y"])
            .arg(format!("{}@{}", registry.repo("app"), signed.index)),
    );
    let sbom = signed.work.path().join("sbom.cdx.json");
    std::fs::write(
        &sbom,
        r#"{"bomFormat":"CycloneDX","specVersion":"1.6","version":1,"components":[]}"#,
    )
    .unwrap();
    run_ok(
        cosign()
            .arg("attest")
            .arg("--key")
            .arg(signed.key())
            .arg("--signing-config")
            .arg(&signing_config)
            .args(["--type", "cyclonedx", "--predicate"])
            .arg(&sbom)
            .args(["--allow-insecure-registry", "-y"])
            .arg(format!(
                "{}@{}",
                registry.repo("app"),
                signed.platforms["amd64"]
            )),
    );
    signed
}

fn bundle(registry: &Registry, repo: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut command = support::xtask();
    command
        .args([
            "bundle",
            "v0.1.0",
            "--insecure",
            "--image",
            &registry.repo(repo),
        ])
        .arg("--out")
        .arg(out)
        .args(extra);
    run(&mut command)
}

/// The ref names of the archive, read the way docs/operations.md reads
/// them: `tar -xOf ARCHIVE index.json`.
fn archive_index(archive: &Path) -> Value {
    let text = run_ok(
        Command::new("tar")
            .arg("-xOf")
            .arg(archive)
            .arg("index.json"),
    );
    serde_json::from_str(&text).expect("index.json is JSON")
}

fn ref_names(index: &Value) -> Vec<String> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// `bundle --load` of `archive` into `registry`/app, trusting `public_key`.
fn load(
    registry: &Registry,
    archive: &Path,
    public_key: &Path,
    extra: &[&str],
) -> std::process::Output {
    run(support::xtask()
        .args([
            "bundle",
            "v0.1.0",
            "--load",
            "--insecure",
            "--no-tlog",
            "--image",
            &registry.repo("app"),
        ])
        .arg("--key")
        .arg(public_key)
        .arg("--out")
        .arg(archive)
        .args(extra))
}

/// Rewrites `archive` into `out` with `edit` applied to its index.json,
/// `extra` blobs added and verify/ left out: what someone altering the
/// archive in transit does.
fn altered(archive: &Path, out: &Path, extra: &[&[u8]], edit: impl FnOnce(&mut Value)) {
    support::forge_archive(archive, out, |dir| {
        // Without verify/, whose stale copies would stop the load before
        // the checks these alterations are for.
        let _ = std::fs::remove_dir_all(dir.join("verify"));
        let mut index = archive_index(archive);
        edit(&mut index);
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        for blob in extra {
            std::fs::write(dir.join("blobs/sha256").join(support_sha256(blob)), blob).unwrap();
        }
    });
}

#[test]
fn load_verifies_before_it_tags_and_refuses_altered_archives() {
    let a = Registry::start();
    let b = Registry::start();
    let signed = push_and_sign(&a);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("server-v0.1.0.oci.tar");
    let output = bundle(&a, "app", &archive, &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tags_of_b = || support::skopeo_tags(&b.repo("app"));

    // A key that did not sign the release: refused, nothing tagged.
    let other = tempfile::tempdir().unwrap();
    run_ok(
        cosign()
            .args(["generate-key-pair"])
            .current_dir(other.path()),
    );
    let other_key = other.path().join("cosign.pub");
    let refused = load(&b, &archive, &other_key, &[]);
    let line = support::last_error_line(&refused);
    assert!(
        line.starts_with(&format!(
            "error: cannot load {}:v0.1.0: the index {} is not signed by the key {}: ",
            b.repo("app"),
            signed.index,
            other_key.display()
        )),
        "{line}"
    );
    let expected_end = format!("; no tag was set: check --key (or, keyless, --trusted-root and that this is a release of {}), or bundle the release again", support::source_repository());
    assert!(line.ends_with(&expected_end), "{line}");
    assert_eq!(tags_of_b(), Vec::<String>::new());

    // An unsigned index made of the signed platforms (another annotation,
    // so another digest), and v0.1.0 pointed at it.
    let index_bytes = run_ok(Command::new(tool("crane")).args([
        "manifest",
        "--insecure",
        &format!("{}@{}", a.repo("app"), signed.index),
    ]));
    let mut unsigned: Value = serde_json::from_str(&index_bytes).unwrap();
    unsigned["annotations"]["org.example.altered"] = json!("yes");
    let unsigned = serde_json::to_vec(&unsigned).unwrap();
    let unsigned_digest = format!("sha256:{}", support_sha256(&unsigned));
    let point_at_unsigned = |index: &mut Value| {
        let release = &mut index["manifests"][0];
        release["digest"] = json!(unsigned_digest);
        release["size"] = json!(unsigned.len());
    };

    // Only the tag edited: the archive's signatures are of another digest.
    let retagged = dir.path().join("retagged.tar");
    altered(&archive, &retagged, &[&unsigned], point_at_unsigned);
    let line = support::last_error_line(&load(&b, &retagged, &signed.public_key(), &[]));
    assert_eq!(
        line,
        format!(
            "error: cannot load {}: its index.json holds sha256-{h}, signatures of sha256:{h}, which is neither v0.1.0 ({unsigned_digest}) nor one of its platforms; the archive was altered, bundle the release again",
            retagged.display(),
            h = hex(&signed.index)
        )
    );
    assert_eq!(tags_of_b(), Vec::<String>::new());

    // The index's signatures renamed for the unsigned digest too: only
    // cosign can tell, and it does, before any tag.
    let renamed = dir.path().join("renamed.tar");
    let signature_tag = format!("sha256-{}", hex(&signed.index));
    altered(&archive, &renamed, &[&unsigned], |index| {
        point_at_unsigned(index);
        for entry in index["manifests"].as_array_mut().unwrap() {
            let name = &mut entry["annotations"]["org.opencontainers.image.ref.name"];
            if *name == json!(signature_tag) {
                *name = json!(format!("sha256-{}", hex(&unsigned_digest)));
            }
        }
    });
    let line = support::last_error_line(&load(&b, &renamed, &signed.public_key(), &[]));
    assert!(
        line.starts_with(&format!(
            "error: cannot load {}:v0.1.0: the index {unsigned_digest} is not signed by the key {}: ",
            b.repo("app"),
            signed.public_key().display()
        )),
        "{line}"
    );
    assert_eq!(tags_of_b(), Vec::<String>::new());
    let crane_tags = run(Command::new(tool("crane")).args(["ls", "--insecure", &b.repo("app")]));
    assert_eq!(String::from_utf8_lossy(&crane_tags.stdout).trim(), "");

    // The genuine archive with the right key loads and tags.
    let loaded = load(&b, &archive, &signed.public_key(), &[]);
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    assert_eq!(tag_digests(&b.repo("app"))["v0.1.0"], signed.index);
}

fn cosign_verify(reference: &str, public_key: &Path) -> std::process::Output {
    run(cosign().arg("verify").arg("--key").arg(public_key).args([
        "--insecure-ignore-tlog=true",
        "--allow-insecure-registry",
        reference,
    ]))
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

#[test]
fn bundle_round_trips_into_another_registry_and_verifies_there() {
    let a = Registry::start();
    let b = Registry::start();
    let signed = push_and_sign(&a);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("server-v0.1.0.oci.tar");

    // The dry run reads the registry, prints the plan and writes nothing.
    let dry = bundle(&a, "app", &archive, &["--dry-run"]);
    let plan = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(
        plan.starts_with(&format!(
            "would bundle {}:v0.1.0 ({})\n",
            a.repo("app"),
            signed.index
        )),
        "{plan}"
    );
    assert!(plan.contains(&format!("  sha256-{} -> ", hex(&signed.index),)));
    assert!(plan.contains(
        "  cargo xtask bundle v0.1.0 --load --key cosign.pub --out server-v0.1.0.oci.tar --image registry.internal/rust-release\n"
    ));
    assert!(!archive.exists(), "--dry-run wrote {}", archive.display());
    let dry_json = bundle(&a, "app", &archive, &["--dry-run", "--json"]);
    let report: Value = serde_json::from_slice(&dry_json.stdout).expect("bundle --json is JSON");
    assert_eq!(report["action"], json!("bundle"));
    assert_eq!(report["dry_run"], json!(true));
    assert_eq!(report["digest"], json!(signed.index));
    assert_eq!(report["sha256"], json!(null));
    assert_eq!(report["subjects"].as_array().unwrap().len(), 3, "{report}");
    assert!(
        !archive.exists(),
        "--dry-run --json wrote {}",
        archive.display()
    );

    let output = bundle(&a, "app", &archive, &[]);
    assert!(
        output.status.success(),
        "bundle failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.lines().next().unwrap(),
        archive.display().to_string()
    );

    // The checksum file works with sha256sum -c, next to the archive.
    run_ok(
        Command::new("sha256sum")
            .args(["-c", "server-v0.1.0.oci.tar.sha256"])
            .current_dir(dir.path()),
    );

    // index.json: the image first, then one fallback-tag index per signed
    // digest (index, amd64, arm64), each named for skopeo.
    let index = archive_index(&archive);
    let mut expected_refs = vec![
        "v0.1.0".to_owned(),
        format!("sha256-{}", hex(&signed.index)),
    ];
    for arch in ["amd64", "arm64"] {
        expected_refs.push(format!("sha256-{}", hex(&signed.platforms[arch])));
    }
    assert_eq!(ref_names(&index), expected_refs);
    assert_eq!(index["manifests"][0]["digest"], json!(signed.index));
    assert_eq!(
        index["manifests"][0]["annotations"]["io.containerd.image.name"],
        json!(format!("{}:v0.1.0", a.repo("app")))
    );

    // skopeo reads the archive as an OCI archive.
    let inspected = run_ok(Command::new(tool("skopeo")).args([
        "inspect",
        "--raw",
        &format!("oci-archive:{}:v0.1.0", archive.display()),
    ]));
    assert_eq!(
        format!("sha256:{}", support_sha256(inspected.as_bytes())),
        signed.index
    );

    // skopeo takes the image out of the archive with its digest kept.
    run_ok(Command::new(tool("skopeo")).args([
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci-archive:{}:v0.1.0", archive.display()),
        &format!("docker://{}:v0.1.0", b.repo("by-skopeo")),
    ]));
    assert_eq!(tag_digests(&b.repo("by-skopeo"))["v0.1.0"], signed.index);

    // The documented load, dry run first: it names every tag and pushes nothing.
    let load = |extra: &[&str]| load(&b, &archive, &signed.public_key(), extra);
    let dry = load(&["--dry-run"]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let plan = String::from_utf8_lossy(&dry.stdout);
    let sha_tag = format!("sha-{}", &head_sha()[..7]);
    let policy_tags = ["v0.1.0", sha_tag.as_str(), "v0.1", "latest"];
    let tail: String = policy_tags
        .iter()
        .map(|tag| format!("  tag {}:{tag} -> {}\n", b.repo("app"), signed.index))
        .collect();
    assert!(
        plan.ends_with(&format!(
            "{tail}  (a floating tag only if {} has no newer release)\n",
            b.repo("app")
        )),
        "{plan}"
    );
    assert_eq!(support::skopeo_tags(&b.repo("app")), Vec::<String>::new());
    let loaded = load(&["--json"]);
    assert!(
        loaded.status.success(),
        "load failed: {}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    // --json: what cosign verified (the index and both platforms), then
    // the tags in the order they were set: the signatures', then the
    // release's by its tag policy, exact first and floating last.
    let report: Value = serde_json::from_slice(&loaded.stdout).expect("load --json is JSON");
    assert_eq!(report["action"], json!("load"));
    assert_eq!(report["digest"], json!(signed.index));
    assert_eq!(report["verified"].as_array().unwrap().len(), 3, "{report}");
    assert_eq!(
        report["tags"],
        json!(expected_refs[1..]
            .iter()
            .map(String::as_str)
            .chain(policy_tags)
            .collect::<Vec<_>>())
    );
    // Loading again changes nothing and succeeds.
    let again = load(&[]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // B holds the same digests under the same names as A: the archive's
    // signature tags, and the release's tags as its policy sets them.
    let on_a = tag_digests(&a.repo("app"));
    let on_b = tag_digests(&b.repo("app"));
    assert_eq!(on_b, on_a);
    assert_eq!(on_b["v0.1.0"], signed.index);

    // And cosign verifies there, with the public key only.
    let on_b_index = format!("{}@{}", b.repo("app"), signed.index);
    let verified = cosign_verify(&on_b_index, &signed.public_key());
    assert!(
        verified.status.success(),
        "cosign verify on B failed: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
    for arch in ["amd64", "arm64"] {
        let reference = format!("{}@{}", b.repo("app"), signed.platforms[arch]);
        let verified = cosign_verify(&reference, &signed.public_key());
        assert!(
            verified.status.success(),
            "cosign verify of {arch} on B failed: {}",
            String::from_utf8_lossy(&verified.stderr)
        );
    }
    let attested = run(cosign()
        .arg("verify-attestation")
        .arg("--key")
        .arg(signed.public_key())
        .args([
            "--type",
            "cyclonedx",
            "--insecure-ignore-tlog=true",
            "--allow-insecure-registry",
            &format!("{}@{}", b.repo("app"), signed.platforms["amd64"]),
        ]));
    assert!(
        attested.status.success(),
        "cosign verify-attestation on B failed: {}",
        String::from_utf8_lossy(&attested.stderr)
    );

    // A key that did not sign it does not verify: the check above is real.
    let other = tempfile::tempdir().unwrap();
    run_ok(
        cosign()
            .args(["generate-key-pair"])
            .current_dir(other.path()),
    );
    let refused = cosign_verify(&on_b_index, &other.path().join("cosign.pub"));
    assert!(!refused.status.success(), "a foreign key verified");

    // Bundling the same release again gives the same bytes.
    let again = dir.path().join("again.oci.tar");
    let output = bundle(&a, "app", &again, &[]);
    assert!(output.status.success());
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&archive).unwrap()
    );

    // An unsigned copy of the image is refused: its bundle could not be
    // verified after loading.
    run_ok(Command::new(tool("crane")).args([
        "copy",
        "--insecure",
        &format!("{}:v0.1.0", a.repo("app")),
        &format!("{}:v0.1.0", a.repo("unsigned")),
    ]));
    let unsigned = bundle(&a, "unsigned", &dir.path().join("unsigned.tar"), &[]);
    assert!(!unsigned.status.success());
    assert_eq!(
        String::from_utf8_lossy(&unsigned.stderr).lines().last().unwrap(),
        format!(
            "error: {}@{} has no cosign signature (no referrer, no tag sha256-{h} or sha256-{h}.sig); sign the release first (cargo xtask sign), an unsigned bundle could not be verified after loading",
            a.repo("unsigned"),
            signed.index,
            h = hex(&signed.index)
        )
    );
    assert!(!dir.path().join("unsigned.tar").exists());
}

#[test]
fn bundle_of_a_missing_version_is_a_clear_error() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("missing.tar");
    let output = bundle(&registry, "app", &out, &[]);
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).lines().last().unwrap(),
        format!(
            "error: {repo}:v0.1.0 does not exist; check the version (the registry's tags are listed by `skopeo list-tags docker://{repo}`) and --image",
            repo = registry.repo("app")
        )
    );
    assert!(!out.exists());

    let bad = run(support::xtask().args(["bundle", "1.2.3", "--dry-run"]));
    assert!(!bad.status.success());
    assert_eq!(
        String::from_utf8_lossy(&bad.stderr).trim(),
        "error: cargo xtask bundle takes a released version: invalid version \"1.2.3\": it must start with `v`; expected vMAJOR.MINOR.PATCH or vMAJOR.MINOR.PATCH-PRERELEASE, such as v1.2.3"
    );
}

fn support_sha256(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}
