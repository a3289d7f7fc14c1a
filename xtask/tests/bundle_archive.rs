//! `bundle --load` against hostile archives, in a dry run (the archive is
//! read before anything else): a sparse entry declaring gigabytes, a name
//! outside the OCI layout, a blob larger than its descriptor declares.
//! Each is refused with one line, within bounded memory.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::{run, run_ok};

/// The address space the load runs in: far more than reading headers and a
/// few manifests needs, far less than reading the 8 GiB entry whole.
const ADDRESS_SPACE: &str = "2147483648";

/// `bundle v0.1.0 --load --dry-run` of `archive`, its address space capped.
fn load_dry_run(archive: &Path) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cosign.pub");
    std::fs::write(
        &key,
        "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let mut command = Command::new("prlimit");
    command
        .arg(format!("--as={ADDRESS_SPACE}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_xtask"))
        .args(["bundle", "v0.1.0", "--load", "--dry-run", "--insecure"])
        .args(["--image", "127.0.0.1:1/app", "--key"])
        .arg(&key)
        .arg("--out")
        .arg(archive)
        .current_dir(support::workspace_root());
    run(&mut command)
}

fn last_line(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

fn sha256(bytes: &[u8]) -> String {
    xtask::support::archive::sha256_hex(bytes)
}

/// A tar of `entries` (name, bytes), names written as given, unchecked.
fn raw_tar(path: &Path, entries: &[(&str, &[u8])]) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in entries {
        let mut header = tar::Header::new_ustar();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, *bytes).unwrap();
    }
    builder.finish().unwrap();
}

/// An index.json naming one manifest of `declared` bytes.
fn index_of(manifest: &[u8], declared: usize) -> Vec<u8> {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{}", sha256(manifest)),
            "size": declared,
            "annotations": {"org.opencontainers.image.ref.name": "v0.1.0"},
        }],
    })
    .to_string()
    .into_bytes()
}

#[test]
fn a_sparse_entry_declaring_8_gib_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("layout");
    let hex = "0".repeat(64);
    std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
    std::fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(root.join("index.json"), index_of(b"{}", 2)).unwrap();
    run_ok(
        Command::new("truncate")
            .args(["-s", "8G"])
            .arg(root.join("blobs/sha256").join(&hex)),
    );
    let archive = dir.path().join("hostile.tar");
    run_ok(
        Command::new("tar")
            .args(["--sparse", "-cf"])
            .arg(&archive)
            .arg("-C")
            .arg(&root)
            .args(["oci-layout", "index.json", "blobs"]),
    );
    let size = std::fs::metadata(&archive).unwrap().len();
    assert!(size < 64 * 1024, "the sparse tar is {size} bytes");
    let output = load_dry_run(&archive);
    assert_eq!(
        last_line(&output),
        format!(
            "error: {} holds \"blobs/sha256/{hex}\", which is not a regular file; the archive was altered, bundle the release again",
            archive.display()
        ),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_name_outside_the_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("hostile.tar");
    raw_tar(
        &archive,
        &[
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json", &index_of(b"{}", 2)),
            ("blobs/sha256/../../../tmp/planted", b"x"),
        ],
    );
    let output = load_dry_run(&archive);
    assert_eq!(
        last_line(&output),
        format!(
            "error: {} holds \"blobs/sha256/../../../tmp/planted\", which is not a path of an OCI layout; the archive was altered, bundle the release again",
            archive.display()
        )
    );
}

#[test]
fn a_blob_larger_than_its_descriptor_declares_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("hostile.tar");
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    let name = format!("blobs/sha256/{}", sha256(manifest));
    raw_tar(
        &archive,
        &[
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json", &index_of(manifest, 10)),
            (&name, manifest),
        ],
    );
    let output = load_dry_run(&archive);
    assert_eq!(
        last_line(&output),
        format!(
            "error: {name} in {} holds {} bytes, but its descriptor declares 10; the archive was altered, bundle the release again",
            archive.display(),
            manifest.len()
        )
    );
}

/// The highest VmHWM (peak resident set, in KiB) of `child` seen while it
/// runs, read from /proc every few milliseconds until it exits.
fn peak_rss_kib(mut child: std::process::Child) -> (std::process::Output, u64) {
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(status) = std::fs::read_to_string(&status_path) {
            if let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kib);
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    (child.wait_with_output().unwrap(), peak)
}

/// `sha256:<hex>` of a file, by sha256sum.
fn file_digest(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    format!("sha256:{}", out.split_whitespace().next().unwrap())
}

/// A release of one platform whose layer is 200 MB, bundled by hand and
/// unsigned: the load pushes every blob, then refuses to tag for want of a
/// signature. All along, the xtask holds far less than the layer.
#[test]
fn loading_a_200_mb_layer_stays_under_100_mb_of_memory() {
    const LAYER_BYTES: u64 = 200 * 1000 * 1000;
    let registry = support::Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("layout");
    let blobs = root.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let layer_path = dir.path().join("layer");
    let layer_file = std::fs::File::create(&layer_path).unwrap();
    layer_file.set_len(LAYER_BYTES).unwrap();
    drop(layer_file);
    let layer = file_digest(&layer_path);
    std::fs::rename(&layer_path, blobs.join(&layer[7..])).unwrap();
    let write = |bytes: Vec<u8>| {
        let digest = format!("sha256:{}", sha256(&bytes));
        std::fs::write(blobs.join(&digest[7..]), &bytes).unwrap();
        (digest, bytes.len())
    };
    let (config, config_size) = write(
        serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer]}})
            .to_string()
            .into_bytes(),
    );
    let (manifest, manifest_size) = write(
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": LAYER_BYTES}],
        })
        .to_string()
        .into_bytes(),
    );
    let (index, index_size) = write(
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest,
                "size": manifest_size,
                "platform": {"architecture": "amd64", "os": "linux"},
            }],
            // What the load reads as the release's version and commit.
            "annotations": {
                "org.opencontainers.image.version": "0.1.0",
                "org.opencontainers.image.revision": "1".repeat(40),
            },
        })
        .to_string()
        .into_bytes(),
    );
    std::fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        root.join("index.json"),
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": index,
                "size": index_size,
                "annotations": {"org.opencontainers.image.ref.name": "v0.1.0"},
            }],
        })
        .to_string(),
    )
    .unwrap();
    let archive = dir.path().join("big.tar");
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(&archive)
            .arg("-C")
            .arg(&root)
            .args(["oci-layout", "index.json", "blobs"]),
    );
    std::fs::remove_dir_all(&root).unwrap();
    let key = dir.path().join("cosign.pub");
    std::fs::write(
        &key,
        "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["bundle", "v0.1.0", "--load", "--insecure", "--no-tlog"])
        .args(["--image", &registry.repo("app"), "--key"])
        .arg(&key)
        .arg("--out")
        .arg(&archive)
        .current_dir(support::workspace_root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (output, peak_kib) = peak_rss_kib(child);
    eprintln!("bundle --load of a 200 MB layer: peak RSS {peak_kib} KiB");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "an unsigned release was loaded:\n{stderr}"
    );
    assert!(stderr.contains("no tag was set"), "{stderr}");
    let client = xtask::oci::client::Client::new(&registry.host(), true).unwrap();
    assert!(
        client.blob_exists("app", &layer).unwrap(),
        "the layer was not pushed:\n{stderr}"
    );
    assert!(
        peak_kib < 100 * 1024,
        "bundle --load peaked at {} MiB of resident memory for a 200 MB layer",
        peak_kib / 1024
    );
}
