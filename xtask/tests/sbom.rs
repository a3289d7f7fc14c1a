//! `cargo xtask sbom` against the official schemas (offline, with
//! check-jsonschema), Cargo.lock, and what syft reads from the binaries.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::{head_sha, run, run_ok, server_version, tool, workspace_root, xtask};

const PLATFORMS: [&str; 2] = ["linux-amd64", "linux-arm64"];
const EPOCH: &str = "1700000000";
const EPOCH_RFC3339: &str = "2023-11-14T22:13:20Z";

fn digest() -> String {
    format!("sha256:{}", "c0".repeat(32))
}

/// Generates both platforms' SBOMs into a fresh directory.
fn generate(extra: &[&str]) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let out = run_ok(
        xtask()
            .env("SOURCE_DATE_EPOCH", EPOCH)
            .args(["sbom", "--json", "--out"])
            .arg(dir.path())
            .args(extra),
    );
    let report: Value = serde_json::from_str(&out).expect("sbom --json prints JSON");
    let mut files = Vec::new();
    for (entry, slug) in report.as_array().unwrap().iter().zip(PLATFORMS) {
        assert_eq!(entry["platform"], slug.replacen('-', "/", 1));
        for format in ["cyclonedx", "spdx"] {
            files.push(PathBuf::from(entry[format].as_str().unwrap()));
        }
    }
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "sbom-linux-amd64.cdx.json",
            "sbom-linux-amd64.spdx.json",
            "sbom-linux-arm64.cdx.json",
            "sbom-linux-arm64.spdx.json"
        ]
    );
    (dir, files)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn schemas() -> PathBuf {
    workspace_root().join("xtask/schemas")
}

/// check-jsonschema with the vendored schema; the CycloneDX schema's
/// relative `$ref`s resolve against the local file, not cyclonedx.org.
fn validate(document: &Path) -> std::process::Output {
    let name = document.file_name().unwrap().to_string_lossy();
    let mut command = Command::new(tool("check-jsonschema"));
    if name.ends_with(".cdx.json") {
        let schema = schemas().join("bom-1.6.schema.json");
        command
            .arg("--schemafile")
            .arg(&schema)
            .arg("--base-uri")
            .arg(format!("file://{}", schema.display()));
    } else {
        command
            .arg("--schemafile")
            .arg(schemas().join("spdx-schema-v2.3.json"));
    }
    run(command.arg(document))
}

#[test]
fn both_formats_validate_against_the_official_schemas() {
    let (_dir, files) = generate(&["--image-digest", &digest()]);
    assert_eq!(files.len(), 4);
    for file in &files {
        let output = validate(file);
        assert!(
            output.status.success(),
            "{} does not validate:\n{}{}",
            file.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "ok -- validation done"
        );
    }
}

/// The validator must be able to say no, or the test above proves nothing.
#[test]
fn broken_documents_fail_validation() {
    let (dir, files) = generate(&[]);
    let cdx = read_json(&files[0]);
    let spdx = read_json(&files[1]);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "no-spec-version.cdx.json",
            {
                let mut d = cdx.clone();
                d.as_object_mut().unwrap().remove("specVersion");
                d
            },
            "$: 'specVersion' is a required property",
        ),
        (
            // Resolved through the vendored spdx.schema.json: proves the
            // referenced schemas are found offline.
            "bad-license-id.cdx.json",
            {
                let mut d = cdx.clone();
                d["components"][0]["licenses"] =
                    serde_json::json!([{ "license": { "id": "Not-A-License" } }]);
                d
            },
            "$.components[0].licenses[0].license.id: 'Not-A-License' is not one of",
        ),
        (
            "no-download-location.spdx.json",
            {
                let mut d = spdx.clone();
                d["packages"][1]
                    .as_object_mut()
                    .unwrap()
                    .remove("downloadLocation");
                d
            },
            "$.packages[1]: 'downloadLocation' is a required property",
        ),
        (
            "bad-checksum-algorithm.spdx.json",
            {
                let mut d = spdx.clone();
                d["packages"][1]["checksums"][0]["algorithm"] = "SHA257".into();
                d
            },
            "$.packages[1].checksums[0].algorithm: 'SHA257' is not one of",
        ),
    ];
    for (name, document, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, serde_json::to_string(&document).unwrap()).unwrap();
        let output = validate(&path);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let head: String = stdout.chars().take(2000).collect();
        assert_eq!(output.status.code(), Some(1), "{name}: {head}");
        assert!(
            stdout.contains(&format!("{}::$", path.display())) && stdout.contains(expected),
            "{name}: expected {expected:?} in:\n{head}"
        );
    }
}

/// `(name, version, source) -> checksum` from Cargo.lock, read on its own
/// here rather than through the code under test.
fn lock_checksums() -> BTreeMap<String, String> {
    let lock = std::fs::read_to_string(workspace_root().join("Cargo.lock")).unwrap();
    let mut sums = BTreeMap::new();
    for block in lock.split("[[package]]").skip(1) {
        let field = |key: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
                .and_then(|v| v.strip_suffix('"'))
                .map(str::to_owned)
        };
        if let (Some(name), Some(version), Some(sum)) =
            (field("name"), field("version"), field("checksum"))
        {
            sums.insert(format!("{name}@{version}"), sum);
        }
    }
    sums
}

fn property<'a>(component: &'a Value, name: &str) -> Option<&'a str> {
    component["properties"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["value"].as_str())
}

#[test]
fn content_matches_cargo_lock_and_the_source() {
    let (_dir, files) = generate(&["--image-digest", &digest()]);
    let sums = lock_checksums();
    let sha = head_sha();
    for (i, slug) in PLATFORMS.iter().enumerate() {
        let cdx = read_json(&files[2 * i]);
        let spdx = read_json(&files[2 * i + 1]);
        assert_eq!(cdx["specVersion"], "1.6");
        assert_eq!(cdx["metadata"]["timestamp"], EPOCH_RFC3339);
        assert_eq!(spdx["spdxVersion"], "SPDX-2.3");
        assert_eq!(spdx["creationInfo"]["created"], EPOCH_RFC3339);
        assert_eq!(
            spdx["name"],
            format!("server-{}-{slug}", server_version()).as_str()
        );

        let root = &cdx["metadata"]["component"];
        let root_purl = format!("pkg:cargo/server@{}", server_version());
        assert_eq!(root["purl"], root_purl.as_str());
        assert_eq!(root["version"], server_version().as_str());
        assert_eq!(property(root, "oci:image:digest"), Some(digest().as_str()));
        assert_eq!(property(root, "cargo:source"), Some("path+server"));
        assert_eq!(
            property(&cdx["metadata"], "vcs:revision"),
            Some(sha.as_str())
        );
        assert_eq!(
            spdx["packages"][0]["externalRefs"][1]["referenceLocator"],
            format!("{}@{}", support::release_image(), digest()).as_str()
        );

        let components = cdx["components"].as_array().unwrap();
        // What the server's Cargo.toml names directly must be there.
        let names: BTreeSet<&str> = components
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        for direct in [
            "hyper",
            "hyper-util",
            "http-body-util",
            "bytes",
            "tokio",
            "serde",
            "serde_json",
        ] {
            assert!(
                names.contains(direct),
                "{slug}: {direct} missing from {names:?}"
            );
        }
        // Dev- and build-only crates and xtask's own dependencies are not.
        for absent in ["tempfile", "clap", "cargo_metadata", "ureq", "xtask"] {
            assert!(
                !names.contains(absent),
                "{slug}: {absent} is not compiled into the server"
            );
        }
        let mut sorted = components.clone();
        sorted.sort_by_key(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["version"].as_str().unwrap().to_owned(),
            )
        });
        assert_eq!(&sorted, components, "components are not sorted");

        for component in components {
            let key = format!(
                "{}@{}",
                component["name"].as_str().unwrap(),
                component["version"].as_str().unwrap()
            );
            assert_eq!(component["purl"], format!("pkg:cargo/{key}").as_str());
            assert_eq!(component["bom-ref"], component["purl"]);
            assert_eq!(
                component["hashes"][0],
                serde_json::json!({ "alg": "SHA-256", "content": sums[&key] }),
                "{key}"
            );
            assert_eq!(property(component, "cargo:source-kind"), Some("registry"));
            assert!(component["licenses"][0]["expression"].is_string(), "{key}");
        }

        // The same crates, checksums and edges in SPDX.
        let packages = spdx["packages"].as_array().unwrap();
        assert_eq!(packages.len(), components.len() + 1);
        for (package, component) in packages[1..].iter().zip(components) {
            assert_eq!(package["name"], component["name"]);
            assert_eq!(package["versionInfo"], component["version"]);
            assert_eq!(
                package["checksums"][0]["checksumValue"],
                component["hashes"][0]["content"]
            );
            assert_eq!(
                package["licenseDeclared"],
                component["licenses"][0]["expression"]
            );
        }
        let cdx_edges: usize = cdx["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["dependsOn"].as_array().unwrap().len())
            .sum();
        let spdx_edges = spdx["relationships"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["relationshipType"] == "DEPENDS_ON")
            .count();
        assert_eq!(cdx_edges, spdx_edges);
        assert!(
            cdx_edges >= components.len(),
            "{slug}: every crate is reached by an edge"
        );
    }
}

#[test]
fn output_is_deterministic() {
    let (_a, first) = generate(&[]);
    let (_b, second) = generate(&[]);
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(
            std::fs::read(a).unwrap(),
            std::fs::read(b).unwrap(),
            "{}",
            a.display()
        );
    }
    // The serial number and namespace depend on the image digest too.
    let (_c, with_digest) = generate(&["--image-digest", &digest()]);
    assert_ne!(
        read_json(&first[0])["serialNumber"],
        read_json(&with_digest[0])["serialNumber"]
    );
    assert_ne!(
        read_json(&first[1])["documentNamespace"],
        read_json(&with_digest[1])["documentNamespace"]
    );
}

#[test]
fn bad_input_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(xtask()
        .args(["sbom", "--image-digest", "sha256:abc", "--out"])
        .arg(dir.path()));
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: image digest \"sha256:abc\" is not a sha256:<64 lowercase hex> digest; pass the index or platform manifest digest, such as the one `cargo xtask image --push` prints\n"
    );
    let out = run(xtask()
        .args(["sbom", "--platform", "linux/s390x", "--out"])
        .arg(dir.path()));
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: unsupported platform \"linux/s390x\"; supported platforms are linux/amd64 and linux/arm64\n"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn dry_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("sbom");
    let out = run_ok(
        xtask()
            .args(["sbom", "--dry-run", "--platform", "linux/arm64", "--out"])
            .arg(&out_dir),
    );
    assert!(out.contains("cargo metadata --format-version 1 --locked --filter-platform aarch64-unknown-linux-gnu"), "{out}");
    assert!(
        out.contains(&format!(
            "would write {}/sbom-linux-arm64.cdx.json",
            out_dir.display()
        )),
        "{out}"
    );
    assert!(!out_dir.exists());
}

// ---- the syft cross-check -------------------------------------------------

/// The zlib-compressed JSON that cargo-auditable puts in the `.dep-v0`
/// section of an ELF64 little-endian binary.
fn auditable_data(binary: &Path) -> Value {
    let elf = std::fs::read(binary).unwrap();
    assert_eq!(
        &elf[..6],
        b"\x7fELF\x02\x01",
        "not an ELF64 little-endian file"
    );
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let section = |i: usize| {
        let h = shoff + i * shentsize;
        (u32_at(h), u64_at(h + 0x18), u64_at(h + 0x20))
    };
    let (_, names_offset, _) = section(shstrndx);
    for i in 0..shnum {
        let (name, offset, size) = section(i);
        let start = names_offset + name;
        let end = start + elf[start..].iter().position(|&b| b == 0).unwrap();
        if &elf[start..end] == b".dep-v0" {
            let mut json = String::new();
            flate2::read::ZlibDecoder::new(&elf[offset..offset + size])
                .read_to_string(&mut json)
                .unwrap();
            return serde_json::from_str(&json).unwrap();
        }
    }
    panic!(
        "{} has no .dep-v0 section: not built with cargo-auditable",
        binary.display()
    );
}

/// The SBOM's crates that run only at build time: every proc-macro and
/// whatever is reached from the root only through one.
fn build_time_only(cdx: &Value) -> BTreeSet<String> {
    let mut key_of = BTreeMap::new();
    let mut proc_macros = BTreeSet::new();
    let root = &cdx["metadata"]["component"];
    for c in std::iter::once(root).chain(cdx["components"].as_array().unwrap()) {
        let purl = c["purl"].as_str().unwrap().to_owned();
        if property(c, "cargo:proc-macro") == Some("true") {
            proc_macros.insert(purl.clone());
        }
        key_of.insert(
            purl,
            format!(
                "{}@{}",
                c["name"].as_str().unwrap(),
                c["version"].as_str().unwrap()
            ),
        );
    }
    let edges: BTreeMap<&str, Vec<&str>> = cdx["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["ref"].as_str().unwrap(),
                d["dependsOn"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap())
                    .collect(),
            )
        })
        .collect();
    let mut runtime = BTreeSet::new();
    let mut stack = vec![root["purl"].as_str().unwrap()];
    while let Some(purl) = stack.pop() {
        if proc_macros.contains(purl) || !runtime.insert(purl) {
            continue;
        }
        stack.extend(edges[purl].iter().copied());
    }
    key_of
        .iter()
        .filter(|(purl, _)| !runtime.contains(purl.as_str()))
        .map(|(_, key)| key.clone())
        .collect()
}

/// syft reads the crates from the cargo-auditable data in each binary. Its
/// set equals the SBOM's, root included, minus exactly the build-time-only
/// crates: cargo-auditable records those too, with `"kind": "build"`, and
/// syft reports only `runtime` entries. See docs/sbom-and-provenance.md.
#[test]
fn syft_sees_the_sbom_crates_minus_the_build_time_only_ones() {
    support::dist();
    let (_dir, files) = generate(&[]);
    for (i, slug) in PLATFORMS.iter().enumerate() {
        let cdx = read_json(&files[2 * i]);
        let root = &cdx["metadata"]["component"];
        let sbom: BTreeSet<String> = std::iter::once(root)
            .chain(cdx["components"].as_array().unwrap())
            .map(|c| {
                format!(
                    "{}@{}",
                    c["name"].as_str().unwrap(),
                    c["version"].as_str().unwrap()
                )
            })
            .collect();
        let build_only = build_time_only(&cdx);
        assert!(
            !build_only.is_empty(),
            "{slug}: the server uses derive macros, so some crates are build-time only"
        );

        let binary = workspace_root()
            .join("target/dist")
            .join(slug)
            .join("server");

        // 1. cargo-auditable records exactly the SBOM's crates, and marks
        //    exactly the build-time-only ones as `build`.
        let audit = auditable_data(&binary);
        let mut recorded = BTreeSet::new();
        let mut recorded_build = BTreeSet::new();
        for p in audit["packages"].as_array().unwrap() {
            let key = format!(
                "{}@{}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap()
            );
            if p["kind"] == "build" {
                recorded_build.insert(key.clone());
            }
            recorded.insert(key);
        }
        // cargo-auditable also records the build-dependencies of build
        // scripts (ring's `cc`): compiled to build, never linked, so the
        // SBOM of normal dependencies leaves them out. Every other
        // recorded crate is in the SBOM, and the SBOM has nothing more.
        let build_scripts_only: BTreeSet<String> =
            recorded_build.difference(&sbom).cloned().collect();
        assert_eq!(
            recorded
                .difference(&build_scripts_only)
                .cloned()
                .collect::<BTreeSet<_>>(),
            sbom,
            "{slug}: cargo-auditable data differs from the SBOM"
        );
        // What cargo-auditable marks as build-time (the proc macros) the
        // SBOM marks too; the SBOM also marks their own dependencies, which
        // cargo-auditable leaves unmarked when the workspace resolve shares
        // them.
        let marked: BTreeSet<String> = recorded_build.intersection(&sbom).cloned().collect();
        assert!(
            !marked.is_empty() && marked.is_subset(&build_only),
            "{slug}: build-kind crates differ: {marked:?} not all in {build_only:?}"
        );

        // 2. syft reports the runtime ones, the root included.
        let report: Value = serde_json::from_str(&run_ok(
            Command::new(tool("syft"))
                .args(["scan", "-q", "-o", "json"])
                .arg(format!("file:{}", binary.display())),
        ))
        .unwrap();
        let seen: BTreeSet<String> = report["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                assert_eq!(a["type"], "rust-crate");
                format!(
                    "{}@{}",
                    a["name"].as_str().unwrap(),
                    a["version"].as_str().unwrap()
                )
            })
            .collect();
        // syft reads cargo-auditable's runtime crates: every crate the SBOM
        // calls runtime, and no crate outside the SBOM.
        let expected: BTreeSet<String> = recorded.difference(&recorded_build).cloned().collect();
        assert_eq!(seen, expected, "{slug}: syft's crate set");
        let runtime: BTreeSet<String> = sbom.difference(&build_only).cloned().collect();
        assert!(
            runtime.is_subset(&seen) && seen.is_subset(&sbom),
            "{slug}: syft's crates against the SBOM's"
        );
        assert!(seen.contains(&format!("server@{}", server_version())));
    }
}
