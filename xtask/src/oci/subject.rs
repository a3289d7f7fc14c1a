//! A published image resolved once: a reference (by tag or digest) becomes
//! one index digest, its platform manifests and their configs, all read by
//! digest. Signing, attesting and verifying all work on this, never on a
//! tag that could move underneath them.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

use crate::oci::client::{Client, Reference};
use crate::oci::{self, Index, Layout, Manifest, BASE_DIGEST, BASE_NAME};
use crate::support::config::Platform;

/// The image being signed, attested or verified, resolved once.
#[derive(Debug, Clone)]
pub struct Subject {
    /// `host/repository`.
    pub name: String,
    pub reference: Reference,
    /// The tag the reference named, if it named one and no digest.
    pub resolved_from_tag: Option<String>,
    /// The digest of the index (or of the only manifest).
    pub digest: String,
    pub is_index: bool,
    pub annotations: BTreeMap<String, String>,
    pub platforms: Vec<PlatformImage>,
}

#[derive(Debug, Clone)]
pub struct PlatformImage {
    pub platform: Platform,
    pub digest: String,
    pub manifest: Manifest,
    /// The image config's `config.Labels`.
    pub labels: BTreeMap<String, String>,
}

impl PlatformImage {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    pub fn base_name(&self) -> &str {
        self.label(BASE_NAME).unwrap_or("unknown")
    }

    pub fn base_digest(&self) -> Option<&str> {
        self.label(BASE_DIGEST)
    }
}

impl Subject {
    /// `host/repository@digest`.
    pub fn by_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name)
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }

    /// Resolves `text` (IMAGE@sha256:… or IMAGE:TAG) once, and reads the
    /// index and every platform's manifest and config by digest.
    pub fn resolve(text: &str, client: &Client) -> Result<Subject> {
        let reference = Reference::parse(text)?;
        let repository = &reference.repository;
        let (digest, resolved_from_tag) = match (&reference.digest, &reference.tag) {
            (Some(digest), _) => (digest.clone(), None),
            (None, Some(tag)) => {
                let digest = client.manifest_digest(repository, tag)?.with_context(|| {
                    format!("{text} does not exist; push it first with `cargo xtask image --push`")
                })?;
                (digest, Some(tag.clone()))
            }
            (None, None) => bail!(
                "{text} names neither a tag nor a digest; use IMAGE@sha256:… (best) or IMAGE:TAG"
            ),
        };
        let (media_type, bytes) = client
            .get_manifest(repository, &digest)?
            .with_context(|| format!("{}@{digest} does not exist", reference.name()))?;
        let mut platforms = Vec::new();
        let (is_index, annotations) = if oci::is_index(&media_type) {
            let index: Index = serde_json::from_slice(&bytes)
                .with_context(|| format!("the index {digest} is not valid JSON"))?;
            for entry in &index.manifests {
                let Some(platform) = image_platform(entry, &digest)? else {
                    continue;
                };
                platforms.push(read_platform(client, repository, &entry.digest, platform)?);
            }
            (true, index.annotations.unwrap_or_default())
        } else {
            let manifest: Manifest = serde_json::from_slice(&bytes)
                .with_context(|| format!("the manifest {digest} is not valid JSON"))?;
            let config = read_config(client, repository, &manifest)?;
            let platform: Platform = format!(
                "{}/{}",
                config["os"].as_str().unwrap_or_default(),
                config["architecture"].as_str().unwrap_or_default()
            )
            .parse()
            .with_context(|| format!("the image {digest}"))?;
            platforms.push(read_platform(client, repository, &digest, platform)?);
            (false, manifest.annotations.unwrap_or_default())
        };
        if platforms.is_empty() {
            bail!("{}@{digest} lists no platform image", reference.name());
        }
        Ok(Subject {
            name: reference.name(),
            reference,
            resolved_from_tag,
            digest,
            is_index,
            annotations,
            platforms,
        })
    }
}

impl Subject {
    /// The index `digest` in an OCI layout on disk, as it will be once
    /// pushed to `name`: what a release without --push describes.
    pub fn from_layout(name: &str, layout: &Layout, digest: &str) -> Result<Subject> {
        let reference = Reference::parse(&format!("{name}@{digest}"))?;
        let index: Index = layout.read_json(digest)?;
        let mut platforms = Vec::new();
        for entry in &index.manifests {
            let Some(platform) = image_platform(entry, digest)? else {
                continue;
            };
            let manifest: Manifest = layout.read_json(&entry.digest)?;
            let config: serde_json::Value = layout.read_json(&manifest.config.digest)?;
            platforms.push(PlatformImage {
                platform,
                digest: entry.digest.clone(),
                manifest,
                labels: labels_of(&config),
            });
        }
        Ok(Subject {
            name: reference.name(),
            reference,
            resolved_from_tag: None,
            digest: digest.to_owned(),
            is_index: true,
            annotations: index.annotations.unwrap_or_default(),
            platforms,
        })
    }
}

/// An image config's `config.Labels`.
fn labels_of(config: &serde_json::Value) -> BTreeMap<String, String> {
    config["config"]["Labels"]
        .as_object()
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn read_config(
    client: &Client,
    repository: &str,
    manifest: &Manifest,
) -> Result<serde_json::Value> {
    serde_json::from_slice(&client.get_blob(repository, &manifest.config.digest)?)
        .with_context(|| format!("the image config {} is not JSON", manifest.config.digest))
}

fn read_platform(
    client: &Client,
    repository: &str,
    digest: &str,
    platform: Platform,
) -> Result<PlatformImage> {
    let (_, bytes) = client.get_manifest(repository, digest)?.with_context(|| {
        format!("the {platform} manifest {digest} is missing from {repository}")
    })?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .with_context(|| format!("the {platform} manifest {digest} is not valid JSON"))?;
    let config = read_config(client, repository, &manifest)?;
    Ok(PlatformImage {
        platform,
        digest: digest.to_owned(),
        manifest,
        labels: labels_of(&config),
    })
}

/// The registry client for a reference: plain HTTP only with --insecure,
/// only on loopback.
pub fn client_for(text: &str, insecure: bool) -> Result<Client> {
    let reference = Reference::parse(text)?;
    Client::new(&reference.host, insecure)
}

/// The platform of an index entry that is an image to run: entries without
/// a platform, or `unknown/unknown` ones (buildx attestations), are not.
fn image_platform(entry: &oci::Descriptor, index_digest: &str) -> Result<Option<Platform>> {
    let Some(spec) = entry.platform.as_ref().filter(|p| p.os != "unknown") else {
        return Ok(None);
    };
    let platform = format!("{}/{}", spec.os, spec.architecture)
        .parse()
        .with_context(|| format!("the index {index_digest} lists {}", entry.digest))?;
    Ok(Some(platform))
}
