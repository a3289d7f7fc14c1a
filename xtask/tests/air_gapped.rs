//! docs/air-gapped.md, run as written: a release bundle loaded into a
//! fresh registry and verified there with crane and cosign alone, in a
//! directory with no checkout and a PATH with no cargo and no xtask. Then
//! an altered bundle, an older signed release named as this one, and a
//! wrong key, which must fail before the version tag is set.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};
use support::{head_sha, run_ok, seed_base, server_version, tag_digests, tool, Registry};
use xtask::oci::client::Client;

const PASSWORD: &str = "air-gapped-test-password";

const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Signatures for an offline registry: no Rekor, no TSA.
const SIGNING_CONFIG: &str = r#"{"mediaType":"application/vnd.dev.sigstore.signingconfig.v0.2+json","caUrls":[],"oidcUrls":[],"rekorTlogUrls":[],"tsaUrls":[],"rekorTlogConfig":{"selector":"ANY"},"tsaConfig":{"selector":"ANY"}}"#;

fn cosign() -> Command {
    let mut command = Command::new(tool("cosign"));
    command.env("COSIGN_PASSWORD", PASSWORD);
    command
}

fn generate_key_pair(dir: &Path) -> PathBuf {
    run_ok(cosign().arg("generate-key-pair").current_dir(dir));
    dir.join("cosign.pub")
}

struct Release {
    keys: tempfile::TempDir,
    index: String,
}

/// Pushes the release to `registry`/app by digest, tags it, signs it
/// recursively and attests a CycloneDX SBOM on amd64, with the cosign CLI.
fn publish(registry: &Registry) -> Release {
    let (base, _) = seed_base(registry, "base");
    support::dist();
    let keys = tempfile::tempdir().unwrap();
    let version = format!("v{}", server_version());
    let out = run_ok(
        support::xtask()
            .args(["image", "--json", "--push", "--insecure", "--image"])
            .arg(registry.repo("app"))
            .args(["--base", &base, "--version", &version, "--sha", &head_sha()])
            .arg("--out")
            .arg(keys.path().join("oci")),
    );
    let image: Value = serde_json::from_str(&out).unwrap();
    let index = image["digest"].as_str().unwrap().to_owned();
    generate_key_pair(keys.path());
    let config = keys.path().join("signing-config.json");
    std::fs::write(&config, SIGNING_CONFIG).unwrap();
    let sign = |verb: &str, reference: &str, extra: &[&str]| {
        run_ok(
            cosign()
                .arg(verb)
                .arg("--key")
                .arg(keys.path().join("cosign.key"))
                .arg("--signing-config")
                .arg(&config)
                .args(extra)
                .args(["--allow-insecure-registry", "-y", reference]),
        )
    };
    sign(
        "sign",
        &format!("{}@{index}", registry.repo("app")),
        &["--recursive"],
    );
    let amd64 =
        support::platform_digests(&format!("{}@{index}", registry.repo("app")))["amd64"].clone();
    let sbom = keys.path().join("sbom.cdx.json");
    std::fs::write(
        &sbom,
        r#"{"bomFormat":"CycloneDX","specVersion":"1.6","version":1,"components":[]}"#,
    )
    .unwrap();
    sign(
        "attest",
        &format!("{}@{amd64}", registry.repo("app")),
        &["--type", "cyclonedx", "--predicate", sbom.to_str().unwrap()],
    );
    Release { keys, index }
}

/// `cargo xtask bundle` on the connected side, with `public_key` bundled.
fn bundle(registry: &Registry, public_key: &Path, out: &Path) {
    run_ok(
        support::xtask()
            .args(["bundle", &format!("v{}", server_version()), "--insecure"])
            .arg("--image")
            .arg(registry.repo("app"))
            .arg("--key")
            .arg(public_key)
            .arg("--out")
            .arg(out),
    );
}

/// The `sh` block of docs/air-gapped.md, with the example registry and
/// version replaced by the test's, and plain HTTP allowed on loopback.
fn procedure(registry: &Registry) -> String {
    let page = std::fs::read_to_string(support::workspace_root().join("docs/air-gapped.md"))
        .expect("docs/air-gapped.md exists");
    let blocks: Vec<&str> = page.split("```sh\n").skip(1).collect();
    assert_eq!(blocks.len(), 1, "docs/air-gapped.md has one sh block");
    let block = blocks[0].split("```").next().unwrap();
    let mut script = block
        .replace("registry.internal/rust-release", &registry.repo("app"))
        .replace("v1.2.3", &format!("v{}", server_version()))
        .replace("\" = 1.2.3", &format!("\" = {}", server_version()));
    for (from, to) in [
        ("crane push ", "crane push --insecure "),
        ("crane tag ", "crane tag --insecure "),
        ("crane digest ", "crane digest --insecure "),
        ("crane manifest ", "crane manifest --insecure "),
        ("cosign verify ", "cosign verify --allow-insecure-registry "),
        (
            "cosign verify-attestation ",
            "cosign verify-attestation --allow-insecure-registry ",
        ),
    ] {
        assert!(script.contains(from), "the procedure has no `{from}`");
        script = script.replace(from, to);
    }
    script
}

/// An operator's directory: the archive, its `.sha256`, and the key they trust.
fn carry_in(archive: &Path, trusted_key: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let name = archive.file_name().unwrap().to_str().unwrap();
    std::fs::copy(archive, dir.path().join(name)).unwrap();
    let sum = run_ok(
        Command::new("sha256sum")
            .arg(name)
            .current_dir(archive.parent().unwrap()),
    );
    std::fs::write(dir.path().join(format!("{name}.sha256")), sum).unwrap();
    std::fs::copy(trusted_key, dir.path().join("cosign.pub")).unwrap();
    dir
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn the_documented_procedure_loads_and_verifies_with_crane_and_cosign_alone() {
    let a = Registry::start();
    let release = publish(&a);
    let version = format!("v{}", server_version());
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join(format!("server-{version}.oci.tar"));
    let public_key = release.keys.path().join("cosign.pub");
    bundle(&a, &public_key, &archive);

    let b = Registry::start();
    let operator = carry_in(&archive, &public_key);
    let output = support::run_procedure(operator.path(), &procedure(&b));
    assert!(
        output.status.success(),
        "the procedure failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    let on_b = tag_digests(&b.repo("app"));
    assert_eq!(on_b[&version], release.index);
    // The version and cosign's tags, each on the digest it has on the
    // registry released to, and nothing else.
    let on_a = tag_digests(&a.repo("app"));
    let tags_file = std::fs::read_to_string(operator.path().join("bundle/verify/tags")).unwrap();
    assert!(
        tags_file.ends_with(&format!("{version} {}\n", release.index)),
        "{tags_file}"
    );
    let mut listed = Vec::new();
    for line in tags_file.lines() {
        let (tag, digest) = line.split_once(' ').unwrap();
        assert_eq!(
            on_a.get(tag).map(String::as_str),
            Some(digest),
            "{tag} on A"
        );
        assert_eq!(
            on_b.get(tag).map(String::as_str),
            Some(digest),
            "{tag} on B"
        );
        listed.push(tag.to_owned());
    }
    listed.sort();
    assert_eq!(on_b.keys().cloned().collect::<Vec<_>>(), listed);
    assert_eq!(
        listed.len(),
        4,
        "the version, and signatures of the index and both platforms"
    );
    assert_eq!(
        std::fs::read_to_string(operator.path().join("bundle/verify/identity")).unwrap(),
        "key cosign.pub\n"
    );
}

#[test]
fn an_altered_bundle_or_a_wrong_key_fails_before_the_version_is_tagged() {
    let a = Registry::start();
    let release = publish(&a);
    let version = format!("v{}", server_version());
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join(format!("server-{version}.oci.tar"));
    let public_key = release.keys.path().join("cosign.pub");
    bundle(&a, &public_key, &archive);

    // The version pointed at an unsigned index of the same platforms, in
    // index.json and in verify/tags: only cosign can tell.
    let unpacked = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(unpacked.path()),
    );
    let hex = release.index.strip_prefix("sha256:").unwrap();
    let blobs = unpacked.path().join("blobs/sha256");
    let mut unsigned: Value =
        serde_json::from_slice(&std::fs::read(blobs.join(hex)).unwrap()).unwrap();
    unsigned["annotations"]["org.example.altered"] = json!("yes");
    let unsigned = serde_json::to_vec(&unsigned).unwrap();
    let unsigned_hex = sha256(&unsigned);
    std::fs::write(blobs.join(&unsigned_hex), &unsigned).unwrap();
    let index_path = unpacked.path().join("index.json");
    let index = std::fs::read_to_string(&index_path).unwrap();
    let index = index
        .replacen(&release.index, &format!("sha256:{unsigned_hex}"), 1)
        .replacen(
            &format!("\"size\":{}", std::fs::read(blobs.join(hex)).unwrap().len()),
            &format!("\"size\":{}", unsigned.len()),
            1,
        );
    std::fs::write(&index_path, index).unwrap();
    let tags_path = unpacked.path().join("verify/tags");
    let tags = std::fs::read_to_string(&tags_path).unwrap().replace(
        &format!("{version} {}", release.index),
        &format!("{version} sha256:{unsigned_hex}"),
    );
    std::fs::write(&tags_path, tags).unwrap();
    let altered = work
        .path()
        .join("altered")
        .join(archive.file_name().unwrap());
    std::fs::create_dir(altered.parent().unwrap()).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(&altered)
            .arg("-C")
            .arg(unpacked.path())
            .args(["oci-layout", "index.json", "blobs", "verify"]),
    );
    let b = Registry::start();
    let operator = carry_in(&altered, &public_key);
    let output = support::run_procedure(operator.path(), &procedure(&b));
    assert!(!output.status.success(), "an altered bundle verified");
    assert_last_command_failed(&output, "cosign verify ", "no signatures found");
    assert_eq!(tag_digests(&b.repo("app")).get(&version), None);

    // verify/tags pointing the version at an older release, signed with
    // the same key and already in the registry: cosign passes, the signed
    // index's version annotation does not.
    let mut older: Value =
        serde_json::from_slice(&std::fs::read(blobs.join(hex)).unwrap()).unwrap();
    older["annotations"]["org.opencontainers.image.version"] = json!("0.0.1");
    let older = serde_json::to_vec(&older).unwrap();
    let older_digest = format!("sha256:{}", sha256(&older));
    let d = Registry::start();
    // Its platforms are the release's: in the registry before it.
    run_ok(Command::new(tool("crane")).args([
        "copy",
        "--insecure",
        &format!("{}@{}", a.repo("app"), release.index),
        &format!("{}@{}", d.repo("app"), release.index),
    ]));
    Client::new(&d.host(), true)
        .unwrap()
        .put_manifest("app", &older_digest, INDEX, &older)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let signing_config = release.keys.path().join("signing-config.json");
    run_ok(
        cosign()
            .arg("sign")
            .arg("--key")
            .arg(release.keys.path().join("cosign.key"))
            .arg("--signing-config")
            .arg(&signing_config)
            .args(["--allow-insecure-registry", "-y"])
            .arg(format!("{}@{older_digest}", d.repo("app"))),
    );
    let unpacked = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(unpacked.path()),
    );
    let tags_path = unpacked.path().join("verify/tags");
    let tags = std::fs::read_to_string(&tags_path).unwrap().replace(
        &format!("{version} {}", release.index),
        &format!("{version} {older_digest}"),
    );
    std::fs::write(&tags_path, tags).unwrap();
    let renamed = work
        .path()
        .join("renamed")
        .join(archive.file_name().unwrap());
    std::fs::create_dir(renamed.parent().unwrap()).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(&renamed)
            .arg("-C")
            .arg(unpacked.path())
            .args(["oci-layout", "index.json", "blobs", "verify"]),
    );
    let operator = carry_in(&renamed, &public_key);
    let output = support::run_procedure(operator.path(), &procedure(&d));
    assert!(
        !output.status.success(),
        "an older release took the version's tag"
    );
    assert_last_command_failed(&output, "test 0.0.1 = ", "+ test 0.0.1 = ");
    assert_eq!(tag_digests(&d.repo("app")).get(&version), None);

    // A key that did not sign the release, bundled and trusted alike.
    let other = tempfile::tempdir().unwrap();
    let other_key = generate_key_pair(other.path());
    let wrong = work.path().join("wrong").join(archive.file_name().unwrap());
    std::fs::create_dir(wrong.parent().unwrap()).unwrap();
    bundle(&a, &other_key, &wrong);
    let c = Registry::start();
    let operator = carry_in(&wrong, &other_key);
    let output = support::run_procedure(operator.path(), &procedure(&c));
    assert!(!output.status.success(), "a foreign key verified");
    // cosign 3 reads its signature bundles as attestations, and says so.
    assert_last_command_failed(
        &output,
        "cosign verify ",
        "no matching attestations: failed to verify signature",
    );
    assert_eq!(tag_digests(&c.repo("app")).get(&version), None);
    assert!(
        tag_digests(&c.repo("app"))
            .keys()
            .all(|t| t.starts_with("sha256-")),
        "only cosign's tags were set"
    );
}

/// The last command `sh -x` showed starts with `command`, and its error
/// says `why`.
fn assert_last_command_failed(output: &Output, command: &str, why: &str) {
    let stderr = stderr(output);
    let last = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("+ "))
        .unwrap_or_default();
    assert!(
        last.starts_with(command),
        "the last command was {last:?}:\n{stderr}"
    );
    assert!(stderr.contains(why), "{stderr}");
}

fn sha256(bytes: &[u8]) -> String {
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
