//! The base image, resolved once per build: `scratch`, a local OCI layout,
//! or a registry reference. An unpinned registry base is resolved to one
//! digest, with a warning, so that every platform and every label names
//! the same base; a digest is never invented.

use std::cell::RefCell;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::{json, Value};

use crate::oci::client::{is_loopback, Client, Reference};
use crate::oci::{self, Descriptor, Index, Layout, Manifest};
use crate::support::config::{Config, Platform};

/// Where the base image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseSource {
    Scratch,
    Layout(Utf8PathBuf),
    Registry(String),
}

impl BaseSource {
    /// `scratch`, an existing directory holding an OCI layout, or a registry
    /// reference.
    pub fn parse(base: &str) -> BaseSource {
        if base == "scratch" {
            BaseSource::Scratch
        } else if let Some(path) = base.strip_prefix("oci:") {
            BaseSource::Layout(path.into())
        } else if Utf8Path::new(base).join("oci-layout").is_file() {
            BaseSource::Layout(base.into())
        } else {
            BaseSource::Registry(base.to_owned())
        }
    }
}

/// `--base` when given, else the configured base: for errors.
pub fn origin(base: Option<&str>) -> &'static str {
    if base.is_some() {
        "--base"
    } else {
        "the configured base"
    }
}

/// Fails, before anything is built or sent, unless `base` is `scratch`, a
/// directory holding an OCI layout, or a valid registry reference: an empty
/// name or a path that is not a layout would otherwise be looked up on
/// Docker Hub after the whole build.
pub fn check(base: &str, origin: &str) -> Result<()> {
    const EXPECTED: &str = "`scratch`, a directory holding an OCI layout, or a registry reference such as gcr.io/distroless/static-debian13:nonroot";
    if base.trim().is_empty() {
        bail!("{origin} is empty; name {EXPECTED}");
    }
    match BaseSource::parse(base) {
        BaseSource::Scratch => Ok(()),
        BaseSource::Layout(path) => {
            if path.join("oci-layout").is_file() {
                Ok(())
            } else {
                bail!("{origin} {base:?} is not an OCI layout (no {path}/oci-layout); name {EXPECTED}")
            }
        }
        BaseSource::Registry(text) => {
            let looks_like_a_path = ["/", "./", "../", "~"].iter().any(|p| text.starts_with(p))
                || text == "."
                || text == "..";
            if looks_like_a_path {
                bail!("{origin} {base:?} is not an OCI layout (no {base}/oci-layout); name {EXPECTED}");
            }
            Reference::parse(&text)
                .map(drop)
                .with_context(|| origin.to_owned())
        }
    }
}

/// The base image for one platform, with its blobs copied into our layout.
#[derive(Debug, Clone)]
pub struct Base {
    /// What the user named: `scratch`, a path, or a reference.
    pub name: String,
    /// The digest of what `name` resolved to (an index for a multi-platform
    /// base); None for scratch.
    pub digest: Option<String>,
    /// The platform manifest's digest; None for scratch.
    pub platform_digest: Option<String>,
    pub config: Value,
    pub layers: Vec<Descriptor>,
}

/// `--base`, else the configured base (pinned when the config pins it).
pub fn chosen(config: &Config, base: Option<&str>) -> String {
    base.map_or_else(|| configured(config), str::to_owned)
}

/// The configured base, pinned to its digest when the config has one.
pub fn configured(config: &Config) -> String {
    match &config.base_digest {
        Some(digest) => format!(
            "{}@{digest}",
            config.base.split('@').next().unwrap_or(&config.base)
        ),
        None => config.base.clone(),
    }
}

/// For a plan: a registry base that names no digest is resolved when the
/// image is built, so two builds of one commit may use different bases.
pub fn unpinned_warning(base: &str) -> Option<String> {
    (needs_registry(base) && !base.contains("@sha256:")).then(|| {
        format!("the base {base} names no digest (base-digest is empty or --base gave a tag): it is resolved when the image is built, and the release records the digest it got; pin it with `cargo xtask pin-base`")
    })
}

/// Whether building on `base` needs a registry.
pub fn needs_registry(base: &str) -> bool {
    matches!(BaseSource::parse(base), BaseSource::Registry(_))
}

/// A registry base's top-level document (an index, or one manifest), as
/// its reference resolved.
pub struct Resolved {
    pub reference: Reference,
    /// What the user named, without the digest: the `base.name` label.
    pub name: String,
    /// The digest the reference resolved to: the `base.digest` label.
    pub digest: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
    /// Set when the reference named no digest.
    pub not_pinned_warning: Option<String>,
}

/// Resolves a registry reference to one digest, and says so when the
/// reference was not pinned.
pub fn resolve(client: &Client, text: &str) -> Result<Resolved> {
    let reference = Reference::parse(text)?;
    let (media_type, bytes) = client
        .get_manifest(&reference.repository, reference.reference())
        .with_context(|| format!("cannot resolve the base {text}"))?
        .with_context(|| format!("the base image {text} does not exist"))?;
    let digest = oci::digest_of(&bytes);
    let not_pinned_warning = reference.digest.is_none().then(|| {
        format!("the base {text} is not pinned; this build uses {digest}. Pin it with base-digest = \"{digest}\" in [workspace.metadata.release]")
    });
    let name = match &reference.tag {
        Some(tag) => format!("{}:{tag}", reference.name()),
        None => reference.name(),
    };
    Ok(Resolved {
        reference,
        name,
        digest,
        media_type,
        bytes,
        not_pinned_warning,
    })
}

/// The client for a base's registry: plain HTTP only with --insecure, and
/// only on loopback, whatever the image's own registry is.
pub fn client_for(reference: &Reference, insecure: bool) -> Result<Client> {
    Client::new(&reference.host, insecure && is_loopback(&reference.host))
}

/// Gives each platform its base, resolving a registry base once per build
/// and printing the "not pinned" warning once.
pub struct Bases {
    base: String,
    insecure: bool,
    resolved: RefCell<Option<(Client, Resolved)>>,
}

impl Bases {
    pub fn new(base: &str, insecure: bool) -> Bases {
        Bases {
            base: base.to_owned(),
            insecure,
            resolved: RefCell::new(None),
        }
    }

    /// The base for `platform`, its blobs copied into `layout`.
    pub fn for_platform(&self, platform: &Platform, layout: &Layout) -> Result<Base> {
        match BaseSource::parse(&self.base) {
            BaseSource::Scratch => Ok(Base {
                name: "scratch".to_owned(),
                digest: None,
                platform_digest: None,
                config: json!({"architecture": platform.arch, "os": platform.os, "config": {}, "rootfs": {"type": "layers", "diff_ids": []}}),
                layers: Vec::new(),
            }),
            BaseSource::Layout(dir) => base_from_layout(&dir, platform, layout),
            BaseSource::Registry(reference) => self.registry_base(&reference, platform, layout),
        }
    }

    fn registry_base(&self, text: &str, platform: &Platform, layout: &Layout) -> Result<Base> {
        if self.resolved.borrow().is_none() {
            let reference = Reference::parse(text)?;
            let client = client_for(&reference, self.insecure)?;
            let resolved = resolve(&client, text)?;
            if let Some(warning) = &resolved.not_pinned_warning {
                eprintln!("warning: {warning}");
            }
            *self.resolved.borrow_mut() = Some((client, resolved));
        }
        let cache = self.resolved.borrow();
        let (client, resolved) = cache.as_ref().context("the base was not resolved")?;
        let repository = &resolved.reference.repository;
        let manifest_bytes = if oci::is_index(&resolved.media_type) {
            let index: Index =
                serde_json::from_slice(&resolved.bytes).context("the base index is invalid")?;
            let entry = select_platform(&index, platform)
                .with_context(|| format!("the base {text} has no {platform} image"))?;
            client
                .get_manifest(repository, &entry.digest)?
                .with_context(|| {
                    format!(
                        "the base {text} lists {} but the registry does not have it",
                        entry.digest
                    )
                })?
                .1
        } else {
            resolved.bytes.clone()
        };
        let manifest: Manifest =
            serde_json::from_slice(&manifest_bytes).context("the base manifest is invalid")?;
        let config: Value =
            serde_json::from_slice(&client.get_blob(repository, &manifest.config.digest)?)
                .context("the base config is not JSON")?;
        check_base_platform(&config, platform, text)?;
        for layer in &manifest.layers {
            if !layout.has_blob(&layer.digest) {
                // Streamed to disk and checked on the way, whatever its size.
                let path = layout.blob_path(&layer.digest);
                let partial = path.with_extension("partial");
                client.get_blob_to(repository, &layer.digest, partial.as_std_path())?;
                std::fs::rename(&partial, &path).with_context(|| format!("cannot write {path}"))?;
            }
        }
        Ok(Base {
            name: resolved.name.clone(),
            digest: Some(resolved.digest.clone()),
            platform_digest: Some(oci::digest_of(&manifest_bytes)),
            config,
            layers: manifest.layers.into_iter().map(normalize_layer).collect(),
        })
    }
}

/// A base image from a local OCI layout: its only image, or the one for
/// `platform` when it is an index.
fn base_from_layout(dir: &Utf8Path, platform: &Platform, into: &Layout) -> Result<Base> {
    let source = Layout::open(dir)?;
    let top = source.index()?;
    let entry = match top.manifests.as_slice() {
        [only] => only.clone(),
        [] => bail!("the base layout {dir} holds no image"),
        _ => bail!("the base layout {dir} holds {} images; keep one, or name the base by registry reference", top.manifests.len()),
    };
    let (digest, manifest_bytes) = if oci::is_index(&entry.media_type) {
        let index: Index = source.read_json(&entry.digest)?;
        let chosen = select_platform(&index, platform)
            .with_context(|| format!("the base layout {dir} has no {platform} image"))?;
        (
            Some(entry.digest.clone()),
            source.read_blob(&chosen.digest)?,
        )
    } else {
        (Some(entry.digest.clone()), source.read_blob(&entry.digest)?)
    };
    let platform_digest = oci::digest_of(&manifest_bytes);
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .with_context(|| format!("the base manifest in {dir} is invalid"))?;
    let config: Value = source.read_json(&manifest.config.digest)?;
    for layer in &manifest.layers {
        if !into.has_blob(&layer.digest) {
            into.write_blob(&layer.media_type, &source.read_blob(&layer.digest)?)?;
        }
    }
    check_base_platform(&config, platform, dir.as_str())?;
    Ok(Base {
        name: dir.to_string(),
        digest,
        platform_digest: Some(platform_digest),
        config,
        layers: manifest.layers.into_iter().map(normalize_layer).collect(),
    })
}

/// The entry of an index for `platform`, ignoring attestation entries.
pub fn select_platform<'a>(index: &'a Index, platform: &Platform) -> Option<&'a Descriptor> {
    index.manifests.iter().find(|m| {
        m.platform
            .as_ref()
            .is_some_and(|p| p.os == platform.os && p.architecture == platform.arch)
    })
}

pub fn check_base_platform(config: &Value, platform: &Platform, name: &str) -> Result<()> {
    let arch = config["architecture"].as_str().unwrap_or("");
    let os = config["os"].as_str().unwrap_or("");
    if arch != platform.arch || os != platform.os {
        bail!("the base {name} is {os}/{arch}, not {platform}; use a multi-platform base or one built for {platform}");
    }
    Ok(())
}

/// Docker media types become their OCI twins: same bytes, same digests.
pub fn normalize_layer(mut layer: Descriptor) -> Descriptor {
    if layer.media_type == oci::DOCKER_LAYER_GZIP {
        layer.media_type = oci::LAYER_GZIP.to_owned();
    }
    layer.platform = None;
    layer
}

#[cfg(test)]
mod tests {
    use super::{check, unpinned_warning};

    #[test]
    fn a_plan_warns_of_a_registry_base_without_a_digest() {
        let warning = unpinned_warning("gcr.io/distroless/static-debian13:nonroot").unwrap();
        assert!(
            warning
                .starts_with("the base gcr.io/distroless/static-debian13:nonroot names no digest"),
            "{warning}"
        );
        let pinned = format!(
            "gcr.io/distroless/static-debian13:nonroot@sha256:{}",
            "a".repeat(64)
        );
        assert_eq!(unpinned_warning(&pinned), None);
        assert_eq!(unpinned_warning("scratch"), None);
    }

    #[test]
    fn a_base_is_checked_before_the_build() {
        let layout = tempfile::tempdir().unwrap();
        std::fs::write(layout.path().join("oci-layout"), "{}").unwrap();
        let layout = layout.path().to_str().unwrap().to_owned();
        for good in [
            "scratch",
            layout.as_str(),
            "gcr.io/distroless/static-debian13:nonroot",
            "alpine",
        ] {
            assert!(check(good, "--base").is_ok(), "{good}");
        }
        for (bad, message) in [
            ("", "--base is empty"),
            (" ", "--base is empty"),
            (
                "/no/such/dir",
                "--base \"/no/such/dir\" is not an OCI layout",
            ),
            ("../x", "--base \"../x\" is not an OCI layout"),
            (
                "oci:/nowhere",
                "--base \"oci:/nowhere\" is not an OCI layout",
            ),
            ("r.example/A", "--base: invalid image reference"),
            ("r.example/a:", "--base: invalid image reference"),
        ] {
            let error = format!("{:#}", check(bad, "--base").unwrap_err());
            assert!(error.starts_with(message), "{bad:?}: {error}");
            assert_eq!(error.lines().count(), 1, "{error}");
        }
        let error = check("", "the configured base").unwrap_err().to_string();
        assert!(error.starts_with("the configured base is empty"), "{error}");
    }
}
