//! The native builder: writes the multi-arch OCI layout itself, with no
//! daemon, from the binaries in target/dist/ and the base image. Layers and
//! configs are written deterministically, so the same commit and base give
//! the same digests on any machine.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use camino::Utf8PathBuf;
use serde::Serialize;
use serde_json::{json, Value};

use crate::build::base::{Base, Bases};
use crate::build::binaries::{self, Dist, DistOptions};
use crate::oci::{self, Descriptor, Index, Layout, Manifest, PlatformSpec, BASE_DIGEST, BASE_NAME};
use crate::support::archive::Entry;
use crate::support::cache::Cache;
use crate::support::config::{Config, Platform};
use crate::support::source::Source;

/// The result of an image build.
#[derive(Debug, Clone, Serialize)]
pub struct Built {
    pub layout: Utf8PathBuf,
    pub digest: String,
    pub size: u64,
    pub platforms: Vec<BuiltPlatform>,
    pub base_name: String,
    pub base_digest: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuiltPlatform {
    pub platform: String,
    pub digest: String,
    pub config_digest: String,
    pub layer_digest: String,
    pub base_digest: Option<String>,
    pub size: u64,
}

pub struct Options<'a> {
    pub platforms: Vec<Platform>,
    /// The base of every platform, resolved once.
    pub bases: &'a Bases,
    pub out: Utf8PathBuf,
    pub version: &'a str,
}

/// Builds the binaries if needed, then assembles the image.
pub fn build(config: &Config, options: &Options<'_>) -> Result<(Dist, Built)> {
    let dist = binaries::build(config, &options.platforms, DistOptions::verified())?;
    let built = assemble(config, &dist, options)?;
    Ok((dist, built))
}

/// Writes the OCI layout: one manifest per platform, then the index.
pub fn assemble(config: &Config, dist: &Dist, options: &Options<'_>) -> Result<Built> {
    let layout = Layout::create(&options.out)?;
    let source = &dist.source;
    let mut descriptors = Vec::new();
    let mut platforms = Vec::new();
    let mut index_base: Option<(String, Option<String>)> = None;
    for platform in &options.platforms {
        let base = options.bases.for_platform(platform, &layout)?;
        let binary_path = dist.binary(config, platform)?;
        let binary =
            std::fs::read(&binary_path).with_context(|| format!("cannot read {binary_path}"))?;
        let (layer, _) = Cache::in_target(&config.target_dir).tar_gz(
            &[Entry {
                path: &config.binary,
                data: &binary,
                mode: 0o755,
            }],
            source.epoch,
        )?;
        let layer_descriptor = layout.write_blob(oci::LAYER_GZIP, &layer.gz)?;

        let labels = labels(config, source, options.version, &base);
        let image_config = image_config(
            config,
            platform,
            source,
            &base,
            &labels,
            &format!("sha256:{}", layer.tar_sha256),
        )?;
        let config_descriptor =
            layout.write_blob(oci::CONFIG, &oci::canonical_json(&image_config)?)?;

        let mut layers = base.layers.clone();
        layers.push(layer_descriptor.clone());
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(oci::MANIFEST.to_owned()),
            config: config_descriptor.clone(),
            layers,
            annotations: Some(labels.clone()),
        };
        let mut manifest_descriptor =
            layout.write_blob(oci::MANIFEST, &oci::canonical_json(&manifest)?)?;
        manifest_descriptor.platform = Some(PlatformSpec {
            architecture: platform.arch.clone(),
            os: platform.os.clone(),
            variant: None,
        });
        platforms.push(BuiltPlatform {
            platform: platform.to_string(),
            digest: manifest_descriptor.digest.clone(),
            config_digest: config_descriptor.digest.clone(),
            layer_digest: layer_descriptor.digest.clone(),
            base_digest: base.platform_digest.clone(),
            size: manifest.layers.iter().map(|l| l.size).sum::<u64>() + config_descriptor.size,
        });
        descriptors.push(manifest_descriptor);
        index_base.get_or_insert((base.name.clone(), base.digest.clone()));
    }
    let (base_name, base_digest) =
        index_base.context("no platforms to build; configure at least one")?;

    let mut index_annotations = BTreeMap::new();
    for (key, value) in labels_without_base(config, source, options.version) {
        index_annotations.insert(key, value);
    }
    index_annotations.insert(BASE_NAME.to_owned(), base_name.clone());
    if let Some(digest) = &base_digest {
        index_annotations.insert(BASE_DIGEST.to_owned(), digest.clone());
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(oci::INDEX.to_owned()),
        manifests: descriptors,
        annotations: Some(index_annotations),
    };
    let index_descriptor = layout.write_blob(oci::INDEX, &oci::canonical_json(&index)?)?;
    let mut top = index_descriptor.clone();
    top.annotations = Some(BTreeMap::from([(
        "org.opencontainers.image.ref.name".to_owned(),
        format!("v{}", options.version),
    )]));
    layout.write_index(&Index {
        schema_version: 2,
        media_type: Some(oci::INDEX.to_owned()),
        manifests: vec![top],
        annotations: None,
    })?;
    remove_unreferenced_blobs(&layout)?;

    Ok(Built {
        layout: layout.dir.clone(),
        digest: index_descriptor.digest,
        size: index_descriptor.size,
        platforms,
        base_name,
        base_digest,
    })
}

fn labels_without_base(
    config: &Config,
    source: &Source,
    version: &str,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut set = |key: &str, value: &str| {
        if !value.is_empty() {
            labels.insert(format!("org.opencontainers.image.{key}"), value.to_owned());
        }
    };
    set("source", &config.repository);
    set("revision", &source.sha);
    set("version", version);
    set("created", &source.created());
    set("title", &config.binary);
    set("description", &config.description);
    set("licenses", &config.license);
    labels
}

fn labels(
    config: &Config,
    source: &Source,
    version: &str,
    base: &Base,
) -> BTreeMap<String, String> {
    let mut labels = labels_without_base(config, source, version);
    labels.insert(BASE_NAME.to_owned(), base.name.clone());
    if let Some(digest) = &base.digest {
        labels.insert(BASE_DIGEST.to_owned(), digest.clone());
    }
    labels
}

/// The base's config with our entrypoint, user, port, healthcheck, labels
/// and layer on top.
fn image_config(
    config: &Config,
    platform: &Platform,
    source: &Source,
    base: &Base,
    labels: &BTreeMap<String, String>,
    diff_id: &str,
) -> Result<Value> {
    let mut image = base.config.clone();
    let object = image
        .as_object_mut()
        .context("the base image config is not a JSON object")?;
    object.insert("architecture".into(), json!(platform.arch));
    object.insert("os".into(), json!(platform.os));
    object.insert("created".into(), json!(source.created()));
    let entrypoint = format!("/{}", config.binary);
    let runtime = object.entry("config").or_insert_with(|| json!({}));
    let runtime = runtime
        .as_object_mut()
        .context("the base image config has a non-object `config`")?;
    runtime.insert("Entrypoint".into(), json!([entrypoint]));
    // A base's Cmd would become arguments to our entrypoint.
    runtime.remove("Cmd");
    runtime.insert("User".into(), json!("65532:65532"));
    runtime.insert("ExposedPorts".into(), json!({"8080/tcp": {}}));
    runtime.insert(
        "Healthcheck".into(),
        json!({
            "Test": ["CMD", entrypoint, "healthcheck"],
            "Interval": 30_000_000_000u64,
            "Timeout": 3_000_000_000u64,
            "StartPeriod": 5_000_000_000u64,
            "Retries": 3
        }),
    );
    let mut all_labels: BTreeMap<String, Value> = runtime
        .get("Labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    for (key, value) in labels {
        all_labels.insert(key.clone(), json!(value));
    }
    runtime.insert("Labels".into(), json!(all_labels));

    let rootfs = object
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    let diff_ids = rootfs
        .get_mut("diff_ids")
        .and_then(Value::as_array_mut)
        .context("the base image config has no rootfs.diff_ids")?;
    diff_ids.push(json!(diff_id));
    let history = object.entry("history").or_insert_with(|| json!([]));
    if let Some(history) = history.as_array_mut() {
        history.push(json!({
            "created": source.created(),
            "created_by": format!("cargo xtask image: COPY {} {entrypoint}", config.binary),
            "comment": "the static server binary from cargo xtask dist"
        }));
    }
    Ok(image)
}

/// Keeps the layout to what its index references, so that it does not grow
/// with every build.
fn remove_unreferenced_blobs(layout: &Layout) -> Result<()> {
    let mut keep = std::collections::HashSet::new();
    let mut pending: Vec<Descriptor> = layout.index()?.manifests;
    while let Some(descriptor) = pending.pop() {
        if !keep.insert(descriptor.digest.clone()) {
            continue;
        }
        if oci::is_index(&descriptor.media_type) {
            pending.extend(layout.read_json::<Index>(&descriptor.digest)?.manifests);
        } else if descriptor.media_type == oci::MANIFEST
            || descriptor.media_type == oci::DOCKER_MANIFEST
        {
            let manifest: Manifest = layout.read_json(&descriptor.digest)?;
            keep.insert(manifest.config.digest.clone());
            keep.extend(manifest.layers.into_iter().map(|l| l.digest));
        }
    }
    let blobs = layout.dir.join("blobs/sha256");
    for entry in std::fs::read_dir(&blobs).with_context(|| format!("cannot list {blobs}"))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep.contains(&format!("sha256:{name}")) {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {blobs}/{name}"))?;
        }
    }
    Ok(())
}
