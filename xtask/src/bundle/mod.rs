//! `cargo xtask bundle vX.Y.Z`: one OCI archive (a tar of an OCI image
//! layout) holding a released multi-arch image together with its cosign
//! signatures and attestations, for registries that cannot reach ours;
//! and `--load`, which pushes such an archive into another registry.
//!
//! Everything is read by digest after resolving the version tag once, so
//! that a tag moving during the read cannot mix two releases. Every entry
//! of the archive's index.json carries `org.opencontainers.image.ref.name`,
//! the tag it had (`vX.Y.Z`, cosign's `sha256-<hex>`). `--load`
//! (load.rs) verifies the signatures before it sets any tag, and pushes the
//! bytes unchanged, because skopeo 1.9 rewrites cosign's referrer indexes
//! (it drops `artifactType`) and so cannot keep their digests; skopeo does
//! copy the image itself (`oci-archive:FILE:vX.Y.Z`). docs/operations.md
//! has the whole air-gapped procedure.

mod convert;
mod load;
mod reader;
mod refs;
mod signed;
mod trust;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Serialize;
use serde_json::Value;

use crate::flags;
use crate::oci::client::{Client, Reference};
use crate::oci::{self, referrers, Descriptor};
use crate::supply_chain::sigstore::Instance;
use crate::support::archive::{Format, HashingWriter, TarWriter};
use crate::support::config::Config;
use crate::support::progress::Steps;

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The full name containerd (and so `docker load` with the containerd image
/// store) gives the image it imports.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// What goes into the archive.
struct Plan {
    /// `host/repository`, without tag.
    image: String,
    version: String,
    index_digest: String,
    /// The digests signatures and attestations can refer to: the index
    /// first, then each platform manifest.
    subjects: Vec<(String, String)>,
    /// The archive's index.json entries, the image first.
    refs: Vec<Descriptor>,
    /// Manifests and blobs, by digest.
    blobs: BTreeMap<String, Vec<u8>>,
    /// The `verify/` files (trust.rs), by path in the archive.
    trust: Vec<(String, Vec<u8>)>,
}

pub fn run(flags: &flags::Bundle) -> Result<()> {
    crate::tags::parse_version(&flags.version)
        .context("cargo xtask bundle takes a released version")?;
    let config = Config::load()?;
    let image = flags
        .registry
        .image
        .clone()
        .unwrap_or_else(|| config.image.clone());
    let reference = Reference::parse(&format!("{image}:{}", flags.version))
        .with_context(|| format!("--image {image:?} must be a repository without tag or digest"))?;
    let out = flags.out.clone().unwrap_or_else(|| {
        config
            .target_dir
            .join("bundle")
            .join(format!("{}-{}.oci.tar", config.binary, flags.version))
    });

    if flags.load {
        return load::load(&config, flags, &reference, &out);
    }
    let mut steps = Steps::new(if flags.dry_run { 3 } else { 4 });
    let client = Client::new(&reference.host, flags.registry.transport.insecure)?;
    let repo = reference.repository.clone();
    let index_digest = steps.run(&format!("resolve {image}:{}", flags.version), || {
        client
            .manifest_digest(&repo, &flags.version)?
            .with_context(|| {
                format!(
                    "{image}:{} does not exist; check the version (the registry's tags are listed by `skopeo list-tags docker://{image}`) and --image",
                    flags.version
                )
            })
    })?;
    let mut plan = Plan {
        image: image.clone(),
        version: flags.version.clone(),
        index_digest: index_digest.clone(),
        subjects: Vec::new(),
        refs: Vec::new(),
        blobs: BTreeMap::new(),
        trust: Vec::new(),
    };
    steps.run(
        "read the image: index, platform manifests, configs, layers",
        || read_image(&client, &repo, &mut plan),
    )?;
    steps.run("read signatures and attestations", || {
        read_signatures(&client, &repo, &mut plan)
    })?;

    let sigstore = Instance::resolve(&config, &flags.signing)?;
    plan.trust = trust::files(
        &plan.refs,
        &plan.version,
        &flags.signing,
        sigstore.trusted_root.as_deref(),
        || {
            signed::release_identity(&config, &plan.index_digest, &plan.blobs)
                .map(|workflow| sigstore.issued(workflow))
        },
    )?;
    if flags.dry_run {
        if flags.json {
            print_json(&report(&plan, &out, None))?;
        } else {
            print_plan(&plan, &out);
        }
        return Ok(());
    }
    let sha256 = steps.run(&format!("write {out}"), || write_archive(&plan, &out))?;
    eprintln!(
        "bundled {image}:{} ({}) in {:.1}s",
        plan.version,
        plan.index_digest,
        steps.total_elapsed().as_secs_f64()
    );
    if flags.json {
        print_json(&report(&plan, &out, Some(sha256)))?;
    } else {
        println!("{out}");
        println!("sha256 {sha256}");
        println!(
            "{}",
            trust::load_instructions(&plan.trust, &plan.version, &plan.index_digest, &out)
        );
    }
    Ok(())
}

/// What `bundle --json` prints: the archive written (or, with --dry-run,
/// planned), or with --load what was verified and tagged.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `bundle` or `load`.
    pub action: String,
    pub dry_run: bool,
    /// `host/repository` read from (bundle) or loaded into (load).
    pub image: String,
    pub version: String,
    /// The index digest of the release.
    pub digest: String,
    pub archive: String,
    /// The archive's sha256, once written.
    pub sha256: Option<String>,
    /// The index and each platform manifest, the digests signatures name.
    pub subjects: Vec<SubjectEntry>,
    /// The archive's index.json entries.
    pub refs: Vec<RefEntry>,
    /// Manifests and blobs in the archive, and their total size.
    pub blobs: usize,
    pub bytes: u64,
    /// With --load: the signatures cosign verified before any tag moved.
    pub verified: Vec<String>,
    /// With --load: the tags set (or, with --dry-run, to set), in order.
    pub tags: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct SubjectEntry {
    /// `index` or a platform such as `linux/arm64`.
    pub subject: String,
    pub digest: String,
}

#[derive(Debug, Serialize)]
pub struct RefEntry {
    /// The `org.opencontainers.image.ref.name`: the tag it gets.
    pub name: String,
    pub digest: String,
    pub media_type: String,
}

fn report(plan: &Plan, out: &Utf8Path, sha256: Option<String>) -> Report {
    Report {
        action: "bundle".to_owned(),
        dry_run: sha256.is_none(),
        image: plan.image.clone(),
        version: plan.version.clone(),
        digest: plan.index_digest.clone(),
        archive: out.to_string(),
        sha256,
        subjects: subject_entries(&plan.subjects),
        refs: ref_entries(&plan.refs),
        blobs: plan.blobs.len(),
        bytes: plan.blobs.values().map(|b| b.len() as u64).sum(),
        verified: Vec::new(),
        tags: Vec::new(),
    }
}

fn subject_entries(subjects: &[(String, String)]) -> Vec<SubjectEntry> {
    subjects
        .iter()
        .map(|(subject, digest)| SubjectEntry {
            subject: subject.clone(),
            digest: digest.clone(),
        })
        .collect()
}

fn ref_entries(refs: &[Descriptor]) -> Vec<RefEntry> {
    refs.iter()
        .map(|r| RefEntry {
            name: ref_name(r).to_owned(),
            digest: r.digest.clone(),
            media_type: r.media_type.clone(),
        })
        .collect()
}

fn print_json(report: &Report) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(report).context("cannot print the report as JSON")?
    );
    Ok(())
}

fn read_image(client: &Client, repo: &str, plan: &mut Plan) -> Result<()> {
    let (media_type, bytes) = fetch_manifest(client, repo, &plan.index_digest)?;
    if !oci::is_index(&media_type) {
        bail!(
            "{}:{} is a single-platform manifest ({media_type}), not a multi-arch index; bundle a release made by `cargo xtask release`",
            plan.image,
            plan.version
        );
    }
    let index: Value = serde_json::from_slice(&bytes).context("the image index is not JSON")?;
    plan.subjects
        .push(("index".to_owned(), plan.index_digest.clone()));
    for entry in index["manifests"].as_array().into_iter().flatten() {
        let digest = entry["digest"]
            .as_str()
            .context("an index entry has no digest")?;
        let platform = format!(
            "{}/{}",
            entry["platform"]["os"].as_str().unwrap_or("unknown"),
            entry["platform"]["architecture"]
                .as_str()
                .unwrap_or("unknown")
        );
        plan.subjects.push((platform, digest.to_owned()));
    }
    collect(client, repo, &plan.index_digest, &mut plan.blobs)?;
    let mut annotations = BTreeMap::new();
    annotations.insert(REF_NAME.to_owned(), plan.version.clone());
    annotations.insert(
        CONTAINERD_NAME.to_owned(),
        format!("{}:{}", plan.image, plan.version),
    );
    plan.refs.push(Descriptor {
        annotations: Some(annotations),
        ..Descriptor::of(&media_type, &bytes)
    });
    Ok(())
}

/// What is attached to the index and to every platform, found as cosign 3
/// stores it (`referrers::attached`): through the referrers API, or the
/// fallback tag `sha256-<hex>`. A fallback tag goes in under its name, byte
/// for byte; a referrer that no tag holds goes in untagged, as the API
/// lists it (the manifest's `subject` says whose it is). Older cosign's
/// `sha256-<hex>.sig`, `.att` and `.sbom` tags go in by name.
fn read_signatures(client: &Client, repo: &str, plan: &mut Plan) -> Result<()> {
    let tags: BTreeSet<String> = client.list_tags(repo)?.into_iter().collect();
    let mut signed = false;
    for (what, digest) in plan.subjects.clone() {
        let hex = digest.strip_prefix("sha256:").unwrap_or(&digest);
        for suffix in ["", ".sig", ".att", ".sbom"] {
            let tag = format!("sha256-{hex}{suffix}");
            if !tags.contains(&tag) {
                continue;
            }
            let Some(tag_digest) = client.manifest_digest(repo, &tag)? else {
                // Deleted between the listing and now.
                continue;
            };
            let (media_type, bytes) = fetch_manifest(client, repo, &tag_digest)
                .with_context(|| format!("cannot read {tag}, the {what} signatures"))?;
            collect(client, repo, &tag_digest, &mut plan.blobs)?;
            signed |= digest == plan.index_digest && suffix == ".sig";
            let mut annotations = BTreeMap::new();
            annotations.insert(REF_NAME.to_owned(), tag);
            plan.refs.push(Descriptor {
                annotations: Some(annotations),
                ..Descriptor::of(&media_type, &bytes)
            });
        }
        let attached = referrers::attached(client, repo, &digest)
            .with_context(|| format!("cannot read what is attached to the {what} {digest}"))?;
        signed |= digest == plan.index_digest
            && attached
                .iter()
                .any(|a| a.kind == referrers::Kind::Signature);
        for referrer in attached {
            if plan.blobs.contains_key(&referrer.digest) {
                // In the archive already, under its fallback tag.
                continue;
            }
            let (media_type, bytes) =
                fetch_manifest(client, repo, &referrer.digest).with_context(|| {
                    format!("cannot read {}, attached to the {what}", referrer.digest)
                })?;
            collect(client, repo, &referrer.digest, &mut plan.blobs)?;
            plan.refs
                .push(convert::referrer_descriptor(&media_type, &bytes)?);
        }
    }
    if !signed {
        let index_hex = plan.index_digest.trim_start_matches("sha256:");
        bail!(
            "{}@{} has no cosign signature (no referrer, no tag sha256-{index_hex} or sha256-{index_hex}.sig); sign the release first (cargo xtask sign), an unsigned bundle could not be verified after loading",
            plan.image,
            plan.index_digest
        );
    }
    Ok(())
}

fn fetch_manifest(client: &Client, repo: &str, digest: &str) -> Result<(String, Vec<u8>)> {
    client
        .get_manifest(repo, digest)?
        .with_context(|| format!("manifest {digest} is missing from {repo}"))
}

/// A manifest or index and everything it refers to, recursively: child
/// manifests, configs and layers. A `subject` is not followed: it is the
/// image itself.
fn collect(
    client: &Client,
    repo: &str,
    digest: &str,
    blobs: &mut BTreeMap<String, Vec<u8>>,
) -> Result<()> {
    if blobs.contains_key(digest) {
        return Ok(());
    }
    let (_, bytes) = fetch_manifest(client, repo, digest)?;
    let document: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("manifest {digest} in {repo} is not JSON"))?;
    blobs.insert(digest.to_owned(), bytes);
    if let Some(children) = document["manifests"].as_array() {
        for child in children {
            let child = child["digest"]
                .as_str()
                .with_context(|| format!("an entry of index {digest} has no digest"))?;
            collect(client, repo, child, blobs)?;
        }
        return Ok(());
    }
    for blob in oci::push::manifest_blobs(&document, digest)? {
        if !blobs.contains_key(blob) {
            // A layer may be larger than the client holds in memory: it
            // comes through a file, checked against its digest on the way.
            let spool = std::env::temp_dir().join(format!(
                "xtask-bundle-{}-{}",
                std::process::id(),
                blob.trim_start_matches("sha256:")
            ));
            let read = client
                .get_blob_to(repo, blob, &spool)
                .and_then(|_| Ok(std::fs::read(&spool)?));
            let _ = std::fs::remove_file(&spool);
            let bytes =
                read.with_context(|| format!("cannot read blob {blob} of manifest {digest}"))?;
            blobs.insert(blob.to_owned(), bytes);
        }
    }
    Ok(())
}

pub(crate) fn ref_name(descriptor: &Descriptor) -> &str {
    descriptor
        .annotations
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .map_or("", String::as_str)
}

/// Writes the layout as a tar, deterministically (sorted, mtime 0, owner
/// 0:0): the same release gives the same archive bytes. Returns its sha256,
/// also written next to it in `sha256sum` format.
fn write_archive(plan: &Plan, out: &Utf8Path) -> Result<String> {
    let index = oci::Index {
        schema_version: 2,
        media_type: Some(oci::INDEX.to_owned()),
        manifests: plan.refs.clone(),
        annotations: None,
    };
    let index_json = oci::canonical_json(&index)?;
    let mut entries: Vec<(String, &[u8])> = vec![
        (
            "oci-layout".to_owned(),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        ),
        ("index.json".to_owned(), &index_json),
    ];
    for (digest, bytes) in &plan.blobs {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        entries.push((format!("blobs/sha256/{hex}"), bytes));
    }
    entries.extend(
        plan.trust
            .iter()
            .map(|(path, bytes)| (path.clone(), &bytes[..])),
    );
    entries.sort_by(|a, b| a.0.cmp(&b.0));

    if let Some(dir) = out.parent().filter(|d| !d.as_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
    }
    let partial = Utf8PathBuf::from(format!("{out}.partial"));
    let file =
        std::fs::File::create(&partial).with_context(|| format!("cannot create {partial}"))?;
    // Streamed: a release's layers need not fit in memory twice.
    let mut tar = TarWriter::new(
        HashingWriter::new(std::io::BufWriter::new(file)),
        Format::Ustar,
        0,
    );
    let written = (|| {
        let trust = (!plan.trust.is_empty()).then_some(trust::DIR);
        for dir in ["blobs/", "blobs/sha256/"].into_iter().chain(trust) {
            tar.dir(dir)?;
        }
        for (path, bytes) in &entries {
            tar.file(path, 0o644, bytes)?;
        }
        let (mut file, sha256) = tar.finish()?.finish();
        file.flush()?;
        Ok::<_, anyhow::Error>(sha256)
    })();
    let sha256 = written.with_context(|| format!("cannot write {partial}"))?;
    std::fs::rename(&partial, out).with_context(|| format!("cannot write {out}"))?;
    let file_name = out.file_name().unwrap_or(out.as_str());
    let sum = Utf8PathBuf::from(format!("{out}.sha256"));
    std::fs::write(&sum, format!("{sha256}  {file_name}\n"))
        .with_context(|| format!("cannot write {sum}"))?;
    Ok(sha256)
}

fn print_plan(plan: &Plan, out: &Utf8Path) {
    let total: usize = plan.blobs.values().map(Vec::len).sum();
    println!(
        "would bundle {}:{} ({})",
        plan.image, plan.version, plan.index_digest
    );
    for (what, digest) in &plan.subjects {
        println!("  {what}: {digest}");
    }
    println!("with these refs (index.json ref names):");
    for r in &plan.refs {
        match ref_name(r) {
            "" => println!("  (referrer) -> {} ({})", r.digest, r.media_type),
            name => println!("  {name} -> {} ({})", r.digest, r.media_type),
        }
    }
    println!(
        "{} manifests and blobs, {total} bytes, into {out} (and {out}.sha256)",
        plan.blobs.len()
    );
    println!(
        "{}",
        trust::load_instructions(&plan.trust, &plan.version, &plan.index_digest, out)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The archive bytes of a fixed plan: bundles written before the
    /// shared tar writer had these, and the same release must keep giving
    /// the same bytes.
    #[test]
    fn archive_bytes_are_pinned() {
        let mut blobs = BTreeMap::new();
        blobs.insert(oci::digest_of(b"layer"), b"layer".to_vec());
        blobs.insert(oci::digest_of(b"{}"), b"{}".to_vec());
        let plan = Plan {
            image: "r/app".into(),
            version: "v0.1.0".into(),
            index_digest: oci::digest_of(b"{}"),
            subjects: vec![],
            refs: vec![Descriptor::of(oci::INDEX, b"{}")],
            blobs,
            trust: vec![],
        };
        let dir = tempfile::tempdir().unwrap();
        let out = Utf8PathBuf::from_path_buf(dir.path().join("a.tar")).unwrap();
        let sha256 = write_archive(&plan, &out).unwrap();
        assert_eq!(
            sha256,
            "a377a13556b42e18b1f20fd68a67f90830e63d690bb44d73ee9b8e71c0160e15"
        );
        assert_eq!(
            crate::support::archive::sha256_hex(&std::fs::read(&out).unwrap()),
            sha256
        );
        assert_eq!(
            std::fs::read_to_string(format!("{out}.sha256")).unwrap(),
            format!("{sha256}  a.tar\n")
        );
    }
}
