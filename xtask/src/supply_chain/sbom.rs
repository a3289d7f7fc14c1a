//! `cargo xtask sbom`: per-platform SBOMs, CycloneDX 1.6 and SPDX 2.3, from
//! the dependency graph that is compiled into the server for that platform.
//!
//! The graph comes from `cargo metadata --filter-platform <triple>`, walked
//! from the server over normal dependencies only. The features come from
//! `cargo tree`, because `cargo metadata` unifies features across the whole
//! workspace (xtask included) and dev-dependencies, which is not what
//! `cargo build -p server` compiles. The checksums come from Cargo.lock.
//! See docs/sbom-and-provenance.md.

use crate::supply_chain::crate_graph::{crate_graph, Crate, CrateGraph, CrateSource};
use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::config::{is_digest, Config, Platform};
use crate::support::source::Source;

/// Written in both documents as the tool that made them.
const TOOL_NAME: &str = "cargo-xtask-sbom";

pub struct SbomFiles {
    pub cyclonedx: Utf8PathBuf,
    pub spdx: Utf8PathBuf,
}

/// The image an SBOM describes: the repository it was actually pushed to
/// (not the configured one, which a push with --image bypasses) and the
/// platform manifest's digest.
#[derive(Debug, Clone)]
pub struct ImageRef {
    /// `host/repository`.
    pub name: String,
    pub digest: String,
}

/// What the documents say beyond the crates.
#[derive(Debug, Clone)]
pub struct DocumentInfo {
    pub source: Source,
    /// The image repository, for the digest's reference.
    pub image: String,
    pub image_digest: Option<String>,
    pub repository: String,
}

/// Checked before any work: a malformed digest would be written into a
/// signed statement.
pub fn check_image_digest(digest: &str) -> Result<()> {
    if !is_digest(digest) {
        bail!("image digest {digest:?} is not a sha256:<64 lowercase hex> digest; pass the index or platform manifest digest, such as the one `cargo xtask image --push` prints");
    }
    Ok(())
}

pub fn cyclonedx_path(out_dir: &Utf8Path, platform: &Platform) -> Utf8PathBuf {
    out_dir.join(format!("sbom-{}.cdx.json", platform.slug()))
}

pub fn spdx_path(out_dir: &Utf8Path, platform: &Platform) -> Utf8PathBuf {
    out_dir.join(format!("sbom-{}.spdx.json", platform.slug()))
}

/// Writes `<out_dir>/sbom-<os>-<arch>.cdx.json` (CycloneDX 1.6) and `.spdx.json` (SPDX 2.3).
/// `image` is None for an SBOM of the crates alone, before any push.
pub fn write(
    config: &Config,
    platform: &Platform,
    image: Option<&ImageRef>,
    out_dir: &Utf8Path,
) -> Result<SbomFiles> {
    if let Some(image) = image {
        check_image_digest(&image.digest)?;
    }
    let graph = crate_graph(config, platform)?;
    let info = DocumentInfo {
        source: Source::detect(&config.workspace_root)?,
        image: image.map_or_else(|| config.image.clone(), |i| i.name.clone()),
        image_digest: image.map(|i| i.digest.clone()),
        repository: config.repository.clone(),
    };
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create the SBOM directory {out_dir}"))?;
    let files = SbomFiles {
        cyclonedx: cyclonedx_path(out_dir, platform),
        spdx: spdx_path(out_dir, platform),
    };
    write_json(&files.cyclonedx, &cyclonedx(&graph, &info))?;
    write_json(&files.spdx, &spdx(&graph, &info))?;
    Ok(files)
}

fn write_json(path: &Utf8Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("cannot write {path}"))
}

/// A name-based UUID (RFC 9562 version 8 layout over sha256), so that the
/// same inputs always give the same serial number and namespace.
pub fn deterministic_uuid(parts: &[&str]) -> String {
    let digest = Sha256::digest(parts.join("\n").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn uuid_for(graph: &CrateGraph, info: &DocumentInfo, format: &str) -> String {
    deterministic_uuid(&[
        format,
        &info.source.sha,
        &graph.platform.to_string(),
        &graph.root.version,
        info.image_digest.as_deref().unwrap_or(""),
    ])
}

fn oci_reference(info: &DocumentInfo) -> Option<String> {
    info.image_digest
        .as_ref()
        .map(|digest| format!("{}@{digest}", info.image))
}

fn cdx_component(c: &Crate, is_root: bool) -> Value {
    let mut properties = vec![
        json!({"name": "cargo:source-kind", "value": c.source.kind()}),
        json!({"name": "cargo:source", "value": c.source.describe()}),
        json!({"name": "cargo:features", "value": c.features.join(",")}),
    ];
    if c.proc_macro {
        properties.push(json!({"name": "cargo:proc-macro", "value": "true"}));
    }
    let license = match &c.license {
        Some(expression) => json!([{ "expression": expression }]),
        None => json!([{ "license": { "name": "NOASSERTION" } }]),
    };
    let mut component = json!({
        "type": if is_root { "application" } else { "library" },
        "bom-ref": c.purl(),
        "name": c.name,
        "version": c.version,
        "scope": "required",
        "licenses": license,
        "purl": c.purl(),
        "properties": properties,
    });
    if let Some(checksum) = &c.checksum {
        component["hashes"] = json!([{ "alg": "SHA-256", "content": checksum }]);
    }
    let mut references = Vec::new();
    if let Some(url) = c.download_location() {
        let kind = if matches!(c.source, CrateSource::Git { .. }) {
            "vcs"
        } else {
            "distribution"
        };
        references.push(json!({ "type": kind, "url": url }));
    }
    if !references.is_empty() {
        component["externalReferences"] = Value::Array(references);
    }
    component
}

/// The CycloneDX 1.6 document.
pub fn cyclonedx(graph: &CrateGraph, info: &DocumentInfo) -> Value {
    let mut root = cdx_component(&graph.root, true);
    if let Some(digest) = &info.image_digest {
        let properties = root["properties"].as_array_mut();
        if let Some(properties) = properties {
            properties.push(json!({"name": "oci:image:digest", "value": digest}));
            properties.push(json!({"name": "oci:image:repository", "value": info.image}));
        }
    }
    let components: Vec<Value> = graph
        .crates
        .iter()
        .map(|c| cdx_component(c, false))
        .collect();
    let dependencies: Vec<Value> = std::iter::once(&graph.root)
        .chain(&graph.crates)
        .map(|c| json!({ "ref": c.purl(), "dependsOn": c.dependencies }))
        .collect();
    json!({
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": format!("urn:uuid:{}", uuid_for(graph, info, "cyclonedx")),
        "version": 1,
        "metadata": {
            "timestamp": info.source.created(),
            "lifecycles": [{ "phase": "build" }],
            "tools": { "components": [{ "type": "application", "name": TOOL_NAME }] },
            "component": root,
            "properties": [
                { "name": "oci:platform", "value": graph.platform.to_string() },
                { "name": "cargo:target", "value": graph.platform.triple() },
                { "name": "vcs:revision", "value": info.source.sha },
            ],
        },
        "components": components,
        "dependencies": dependencies,
    })
}

/// `SPDXRef-` ids allow only letters, digits, `.` and `-`.
fn spdx_id(c: &Crate) -> String {
    let raw = format!("SPDXRef-Package-cargo-{}-{}", c.name, c.version);
    raw.chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '.' || ch == '-' {
                ch
            } else {
                '-'
            }
        })
        .collect()
}

fn spdx_package(c: &Crate, is_root: bool, info: &DocumentInfo) -> Value {
    let mut comment = format!(
        "cargo source: {}; features: {}",
        c.source.describe(),
        if c.features.is_empty() {
            "(none)".to_owned()
        } else {
            c.features.join(",")
        }
    );
    if c.proc_macro {
        comment.push_str("; proc-macro: runs in the compiler, no code in the binary");
    }
    let mut external_refs = vec![json!({
        "referenceCategory": "PACKAGE-MANAGER",
        "referenceType": "purl",
        "referenceLocator": c.purl(),
    })];
    if is_root {
        if let Some(reference) = oci_reference(info) {
            external_refs.push(json!({
                "referenceCategory": "OTHER",
                "referenceType": "oci-image",
                "referenceLocator": reference,
                "comment": "the image this SBOM describes the contents of",
            }));
        }
    }
    let mut package = json!({
        "SPDXID": spdx_id(c),
        "name": c.name,
        "versionInfo": c.version,
        "downloadLocation": c.download_location().unwrap_or_else(|| "NOASSERTION".to_owned()),
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": c.license_or_noassertion(),
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": if is_root { "APPLICATION" } else { "LIBRARY" },
        "externalRefs": external_refs,
        "comment": comment,
    });
    if let Some(checksum) = &c.checksum {
        package["checksums"] = json!([{ "algorithm": "SHA256", "checksumValue": checksum }]);
    }
    package
}

/// The SPDX 2.3 document.
pub fn spdx(graph: &CrateGraph, info: &DocumentInfo) -> Value {
    let name = format!(
        "{}-{}-{}",
        graph.root.name,
        graph.root.version,
        graph.platform.slug()
    );
    let namespace_base = if info.repository.is_empty() {
        "https://spdx.org/spdxdocs".to_owned()
    } else {
        format!("{}/spdx", info.repository.trim_end_matches('/'))
    };
    let namespace = format!("{namespace_base}/{name}-{}", uuid_for(graph, info, "spdx"));
    let ids: BTreeMap<String, String> = std::iter::once(&graph.root)
        .chain(&graph.crates)
        .map(|c| (c.purl(), spdx_id(c)))
        .collect();
    let mut packages = vec![spdx_package(&graph.root, true, info)];
    packages.extend(graph.crates.iter().map(|c| spdx_package(c, false, info)));
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": spdx_id(&graph.root),
    })];
    for c in std::iter::once(&graph.root).chain(&graph.crates) {
        for dep in &c.dependencies {
            relationships.push(json!({
                "spdxElementId": spdx_id(c),
                "relationshipType": "DEPENDS_ON",
                "relatedSpdxElement": ids[dep],
            }));
        }
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": namespace,
        "creationInfo": {
            "created": info.source.created(),
            "creators": [format!("Tool: {TOOL_NAME}")],
            "comment": format!(
                "crates compiled into {} for {} ({}), from cargo metadata --filter-platform, normal dependencies only, at revision {}",
                graph.root.name,
                graph.platform,
                graph.platform.triple(),
                info.source.sha
            ),
        },
        "packages": packages,
        "relationships": relationships,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supply_chain::crate_graph::{lock_checksums, LockKey, CRATES_IO_INDEX};
    use crate::supply_chain::crate_graph::{normalize_license, parse_tree_features};

    fn krate(name: &str, version: &str, deps: &[&str]) -> Crate {
        Crate {
            name: name.into(),
            version: version.into(),
            source: CrateSource::Registry(CRATES_IO_INDEX.into()),
            license: Some("MIT OR Apache-2.0".into()),
            checksum: Some("ab".repeat(32)),
            features: vec!["default".into(), "std".into()],
            proc_macro: false,
            dependencies: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn sample() -> (CrateGraph, DocumentInfo) {
        let mut root = krate(
            "server",
            "0.1.0",
            &["pkg:cargo/bytes@1.0.0", "pkg:cargo/serde_derive@1.0.0"],
        );
        root.source = CrateSource::Path("server".into());
        root.checksum = None;
        root.features = vec![];
        let mut derive = krate("serde_derive", "1.0.0", &[]);
        derive.proc_macro = true;
        derive.license = None;
        let graph = CrateGraph {
            platform: "linux/arm64".parse().unwrap(),
            root,
            crates: vec![krate("bytes", "1.0.0", &[]), derive],
        };
        let info = DocumentInfo {
            source: Source {
                sha: "a".repeat(40),
                epoch: 1_795_305_600,
            },
            image: "ghcr.io/fixture-org/rust-release".into(),
            image_digest: Some(format!("sha256:{}", "c".repeat(64))),
            repository: "https://github.com/fixture-org/rust-release".into(),
        };
        (graph, info)
    }

    #[test]
    fn reads_cargo_lock_checksums() {
        let lock = "# generated\nversion = 4\n\n[[package]]\nname = \"bytes\"\nversion = \"1.10.1\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"d71b6127be86fdcfddb610f7182ac57211d4b18a3e9c82eb2d17662f2227ad6a\"\ndependencies = [\n \"serde\",\n]\n\n[[package]]\nname = \"server\"\nversion = \"0.1.0\"\n";
        let sums = lock_checksums(lock).unwrap();
        assert_eq!(sums.len(), 1);
        let key = LockKey {
            name: "bytes".into(),
            version: "1.10.1".into(),
            source: CRATES_IO_INDEX.into(),
        };
        assert_eq!(
            sums[&key],
            "d71b6127be86fdcfddb610f7182ac57211d4b18a3e9c82eb2d17662f2227ad6a"
        );
    }

    #[test]
    fn rejects_old_and_broken_lock_files() {
        let err = lock_checksums(
            "[[package]]\nname = \"a\"\n\n[metadata]\n\"checksum a 1 (x)\" = \"y\"\n",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "Cargo.lock is in the old format 1, with checksums under [metadata]; regenerate it with a current cargo (`cargo generate-lockfile`)");
        let err = lock_checksums("version = 4\n[[package]]\nname = \"a\"\nversion = \"1\"\nsource = \"s\"\nchecksum = \"zz\"\n")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Cargo.lock: checksum of a@1 is not a sha256: \"zz\""
        );
    }

    #[test]
    fn parses_cargo_tree_features() {
        let out = "server v0.1.0 (/x/server)|\nserde_derive v1.0.219 (proc-macro)|default\ntokio v1.47.0|rt,net,macros (*)\n";
        let features = parse_tree_features(out).unwrap();
        assert_eq!(features["server@0.1.0"], Vec::<String>::new());
        assert_eq!(features["serde_derive@1.0.219"], ["default"]);
        assert_eq!(features["tokio@1.47.0"], ["macros", "net", "rt"]);
    }

    #[test]
    fn licenses_are_spdx_expressions() {
        assert_eq!(normalize_license("MIT/Apache-2.0"), "MIT OR Apache-2.0");
        assert_eq!(normalize_license("MIT OR Apache-2.0"), "MIT OR Apache-2.0");
    }

    #[test]
    fn uuids_are_deterministic_and_well_formed() {
        let a = deterministic_uuid(&["x", "y"]);
        assert_eq!(a, deterministic_uuid(&["x", "y"]));
        assert_ne!(a, deterministic_uuid(&["x", "z"]));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn cyclonedx_shape() {
        let (graph, info) = sample();
        let bom = cyclonedx(&graph, &info);
        assert_eq!(bom["specVersion"], "1.6");
        assert_eq!(bom["metadata"]["timestamp"], "2026-11-22T00:00:00Z");
        let root = &bom["metadata"]["component"];
        assert_eq!(root["bom-ref"], "pkg:cargo/server@0.1.0");
        assert_eq!(root["type"], "application");
        assert!(root["properties"].as_array().unwrap().contains(
            &json!({"name": "oci:image:digest", "value": format!("sha256:{}", "c".repeat(64))})
        ));
        assert_eq!(
            bom["components"][0]["hashes"][0]["content"],
            "ab".repeat(32)
        );
        assert_eq!(
            bom["components"][1]["licenses"],
            json!([{ "license": { "name": "NOASSERTION" } }])
        );
        assert_eq!(
            bom["dependencies"][0],
            json!({"ref": "pkg:cargo/server@0.1.0", "dependsOn": ["pkg:cargo/bytes@1.0.0", "pkg:cargo/serde_derive@1.0.0"]})
        );
        assert_eq!(bom, cyclonedx(&graph, &info), "not deterministic");
    }

    #[test]
    fn spdx_shape() {
        let (graph, info) = sample();
        let doc = spdx(&graph, &info);
        assert_eq!(doc["name"], "server-0.1.0-linux-arm64");
        assert!(doc["documentNamespace"].as_str().unwrap().starts_with(
            "https://github.com/fixture-org/rust-release/spdx/server-0.1.0-linux-arm64-"
        ));
        assert_eq!(doc["packages"][2]["licenseDeclared"], "NOASSERTION");
        assert_eq!(
            doc["packages"][1]["checksums"][0]["checksumValue"],
            "ab".repeat(32)
        );
        assert_eq!(
            doc["packages"][0]["externalRefs"][1]["referenceLocator"],
            format!("ghcr.io/fixture-org/rust-release@sha256:{}", "c".repeat(64))
        );
        let relationships = doc["relationships"].as_array().unwrap();
        assert_eq!(relationships.len(), 3);
        assert_eq!(
            relationships[2],
            json!({"spdxElementId": "SPDXRef-Package-cargo-server-0.1.0", "relationshipType": "DEPENDS_ON", "relatedSpdxElement": "SPDXRef-Package-cargo-serde-derive-1.0.0"})
        );
    }
}
