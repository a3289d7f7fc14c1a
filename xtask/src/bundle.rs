//! `cargo xtask bundle vX.Y.Z`: one OCI archive (a tar of an OCI image
//! layout) holding a released multi-arch image together with its cosign
//! signatures and attestations, for registries that cannot reach ours;
//! and `--load`, which pushes such an archive into another registry.
//!
//! Everything is read by digest after resolving the version tag once, so
//! that a tag moving during the read cannot mix two releases. Every entry
//! of the archive's index.json carries `org.opencontainers.image.ref.name`,
//! the tag it had (`vX.Y.Z`, cosign's `sha256-<hex>`). `--load` pushes the
//! bytes unchanged, because skopeo 1.9 rewrites cosign's referrer indexes
//! (it drops `artifactType`) and so cannot keep their digests; skopeo does
//! copy the image itself (`oci-archive:FILE:vX.Y.Z`). docs/operations.md
//! has the whole air-gapped procedure.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::Value;

use crate::flags;
use crate::oci::client::{Client, Reference};
use crate::oci::{self, Descriptor};
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
            .join(format!("server-{}.oci.tar", flags.version))
    });

    if flags.load {
        return load(flags, &reference, &out);
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
    };
    steps.run(
        "read the image: index, platform manifests, configs, layers",
        || read_image(&client, &repo, &mut plan),
    )?;
    steps.run("read signatures and attestations", || {
        read_signatures(&client, &repo, &mut plan)
    })?;

    if flags.dry_run {
        print_plan(&plan, &out);
        return Ok(());
    }
    let sha256 = steps.run(&format!("write {out}"), || write_archive(&plan, &out))?;
    eprintln!(
        "bundled {image}:{} ({}) in {:.1}s",
        plan.version,
        plan.index_digest,
        steps.total_elapsed().as_secs_f64()
    );
    println!("{out}");
    println!("sha256 {sha256}");
    println!("{}", load_instructions(&plan, &out));
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

/// cosign v3 on a registry without the referrers API keeps the referrers of
/// a digest in an index tagged `sha256-<hex>` (the OCI 1.1 fallback tag);
/// older cosign used `sha256-<hex>.sig`, `.att` and `.sbom`. Whatever of
/// these exists, for the index and for every platform, goes in.
fn read_signatures(client: &Client, repo: &str, plan: &mut Plan) -> Result<()> {
    let tags: BTreeSet<String> = client.list_tags(repo)?.into_iter().collect();
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
            let mut annotations = BTreeMap::new();
            annotations.insert(REF_NAME.to_owned(), tag);
            plan.refs.push(Descriptor {
                annotations: Some(annotations),
                ..Descriptor::of(&media_type, &bytes)
            });
        }
    }
    let index_hex = plan.index_digest.trim_start_matches("sha256:");
    let signed = plan.refs.iter().skip(1).any(|r| {
        let name = ref_name(r);
        name == format!("sha256-{index_hex}") || name == format!("sha256-{index_hex}.sig")
    });
    if !signed {
        bail!(
            "{}@{} has no cosign signature (no tag sha256-{index_hex} or sha256-{index_hex}.sig); sign the release first (cargo xtask sign), an unsigned bundle could not be verified after loading",
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
    for blob in blob_digests(&document, digest)? {
        if !blobs.contains_key(blob) {
            let bytes = client
                .get_blob(repo, blob)
                .with_context(|| format!("cannot read blob {blob} of manifest {digest}"))?;
            blobs.insert(blob.to_owned(), bytes);
        }
    }
    Ok(())
}

fn ref_name(descriptor: &Descriptor) -> &str {
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
    entries.sort_by(|a, b| a.0.cmp(&b.0));

    if let Some(dir) = out.parent().filter(|d| !d.as_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
    }
    let partial = Utf8PathBuf::from(format!("{out}.partial"));
    let file =
        std::fs::File::create(&partial).with_context(|| format!("cannot create {partial}"))?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut header = header(tar::EntryType::Directory, 0o755, 0);
        builder
            .append_data(&mut header, dir, std::io::empty())
            .with_context(|| format!("cannot write {partial}"))?;
    }
    for (path, bytes) in &entries {
        let mut header = header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
        builder
            .append_data(&mut header, path, *bytes)
            .with_context(|| format!("cannot write {partial}"))?;
    }
    let mut writer = builder
        .into_inner()
        .with_context(|| format!("cannot write {partial}"))?;
    writer
        .flush()
        .with_context(|| format!("cannot write {partial}"))?;
    drop(writer);
    let bytes = std::fs::read(&partial).with_context(|| format!("cannot read {partial}"))?;
    let sha256 = crate::support::archive::sha256_hex(&bytes);
    std::fs::rename(&partial, out).with_context(|| format!("cannot write {out}"))?;
    let file_name = out.file_name().unwrap_or(out.as_str());
    let sum = Utf8PathBuf::from(format!("{out}.sha256"));
    std::fs::write(&sum, format!("{sha256}  {file_name}\n"))
        .with_context(|| format!("cannot write {sum}"))?;
    Ok(sha256)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
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
        println!("  {} -> {} ({})", ref_name(r), r.digest, r.media_type);
    }
    println!(
        "{} manifests and blobs, {total} bytes, into {out} (and {out}.sha256)",
        plan.blobs.len()
    );
    println!("{}", load_instructions(plan, out));
}

/// The commands that load the archive into another registry; the
/// operator's repository replaces `registry.internal/rust-release`.
fn load_instructions(plan: &Plan, out: &Utf8Path) -> String {
    let file = out.file_name().unwrap_or(out.as_str());
    format!(
        "load it into your registry (replace registry.internal/rust-release):\n  sha256sum -c {file}.sha256\n  cargo xtask bundle {version} --load --out {file} --image registry.internal/rust-release\nthen verify there:\n  cosign verify --key cosign.pub --insecure-ignore-tlog=true registry.internal/rust-release@{digest}",
        version = plan.version,
        digest = plan.index_digest
    )
}

/// Reads an archive written by `bundle`: its index.json entries and every
/// blob, each checked against its digest.
/// Manifests and blobs by digest.
type Blobs = BTreeMap<String, Vec<u8>>;

fn read_archive(path: &Utf8Path) -> Result<(Vec<Descriptor>, Blobs)> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open the bundle {path}; give its path with --out"))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut index = None;
    let mut blobs = BTreeMap::new();
    for entry in archive
        .entries()
        .with_context(|| format!("{path} is not a tar archive"))?
    {
        let mut entry = entry.with_context(|| format!("{path} is not a readable tar archive"))?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let name = name.trim_start_matches("./").to_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes)
            .with_context(|| format!("cannot read {name} from {path}"))?;
        if name == "index.json" {
            index = Some(bytes);
        } else if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            if hex.is_empty() {
                continue;
            }
            let digest = format!("sha256:{hex}");
            if oci::digest_of(&bytes) != digest {
                bail!("{name} in {path} does not match its digest; the archive is damaged, copy it again and check it with sha256sum -c");
            }
            blobs.insert(digest, bytes);
        }
    }
    let index = index.with_context(|| {
        format!("{path} has no index.json; it is not an OCI archive written by cargo xtask bundle")
    })?;
    let index: oci::Index = serde_json::from_slice(&index)
        .with_context(|| format!("the index.json of {path} is not an OCI index"))?;
    Ok((index.manifests, blobs))
}

/// The air-gapped side: pushes the archive's content to `reference`'s
/// repository byte for byte, so every digest (and so every signature)
/// stays valid. Blobs and manifests go first, by digest; then the
/// signature tags; the version tag last, so that it never names an image
/// whose signatures are not there yet.
fn load(flags: &flags::Bundle, reference: &Reference, archive: &Utf8Path) -> Result<()> {
    let mut steps = Steps::new(if flags.dry_run { 1 } else { 3 });
    let (refs, blobs) = steps.run(&format!("read {archive}"), || read_archive(archive))?;
    let Some(image_ref) = refs.iter().find(|r| ref_name(r) == flags.version) else {
        bail!(
            "{archive} holds no {}; it holds {}",
            flags.version,
            refs.iter().map(ref_name).collect::<Vec<_>>().join(", ")
        );
    };
    let mut ordered: Vec<&Descriptor> = refs
        .iter()
        .filter(|r| r.digest != image_ref.digest)
        .collect();
    ordered.push(image_ref);
    let repo = &reference.repository;
    let name = reference.name();
    if flags.dry_run {
        println!("would load {archive} into {name}:");
        println!("  {} manifests and blobs, by digest", blobs.len());
        for r in &ordered {
            println!("  tag {name}:{} -> {}", ref_name(r), r.digest);
        }
        return Ok(());
    }
    let client = Client::new(&reference.host, flags.registry.transport.insecure)?;
    steps.run("push manifests and blobs by digest", || {
        for r in &ordered {
            push_tree(&client, repo, &r.digest, &r.media_type, &blobs)?;
        }
        Ok(())
    })?;
    steps.run("set the tags, the version last", || {
        for r in &ordered {
            let bytes = blobs
                .get(&r.digest)
                .with_context(|| format!("{archive} lacks manifest {}", r.digest))?;
            client
                .put_manifest(repo, ref_name(r), &r.media_type, bytes)
                .with_context(|| format!("cannot tag {name}:{}", ref_name(r)))?;
        }
        Ok(())
    })?;
    println!("loaded {name}:{} ({})", flags.version, image_ref.digest);
    println!(
        "verify it there:\n  cosign verify --key cosign.pub --insecure-ignore-tlog=true {name}@{}",
        image_ref.digest
    );
    Ok(())
}

/// Pushes a manifest after everything it refers to, children first.
/// The config and layer digests of an image manifest.
fn blob_digests<'a>(document: &'a Value, digest: &str) -> Result<Vec<&'a str>> {
    let config = document.get("config").into_iter();
    let layers = document["layers"].as_array().into_iter().flatten();
    config
        .chain(layers)
        .map(|blob| {
            blob["digest"]
                .as_str()
                .with_context(|| format!("a blob of manifest {digest} has no digest"))
        })
        .collect()
}

fn push_tree(
    client: &Client,
    repo: &str,
    digest: &str,
    media_type: &str,
    blobs: &BTreeMap<String, Vec<u8>>,
) -> Result<()> {
    let bytes = blobs
        .get(digest)
        .with_context(|| format!("the archive lacks manifest {digest}"))?;
    let document: Value = serde_json::from_slice(bytes)
        .with_context(|| format!("manifest {digest} in the archive is not JSON"))?;
    if let Some(children) = document["manifests"].as_array() {
        for child in children {
            let child_digest = child["digest"]
                .as_str()
                .with_context(|| format!("an entry of index {digest} has no digest"))?;
            let child_type = child["mediaType"].as_str().unwrap_or(oci::MANIFEST);
            push_tree(client, repo, child_digest, child_type, blobs)?;
        }
    } else {
        for blob in blob_digests(&document, digest)? {
            if client.blob_exists(repo, blob)? {
                continue;
            }
            let bytes = blobs
                .get(blob)
                .with_context(|| format!("the archive lacks blob {blob} of manifest {digest}"))?;
            client.upload_blob(repo, blob, bytes)?;
        }
    }
    if client.manifest_digest(repo, digest)?.as_deref() != Some(digest) {
        client.put_manifest(repo, digest, media_type, bytes)?;
    }
    Ok(())
}
