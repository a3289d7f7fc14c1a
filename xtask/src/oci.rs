//! OCI image layout on disk, and the JSON documents of the image spec.

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::archive::sha256_hex;

pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Everything a registry may answer for a manifest, index first.
pub const MANIFEST_ACCEPT: &[&str] = &[INDEX, MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlatformSpec {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Descriptor {
    pub fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest: digest_of(bytes),
            size: bytes.len() as u64,
            platform: None,
            annotations: None,
            artifact_type: None,
        }
    }

    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
    }
}

pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Serialises a document the same way every time: sorted keys (serde_json's
/// default map), no whitespace.
pub fn canonical_json(value: &impl Serialize) -> Result<Vec<u8>> {
    let value = serde_json::to_value(value)?;
    Ok(serde_json::to_vec(&value)?)
}

/// An OCI image layout directory.
pub struct Layout {
    pub dir: Utf8PathBuf,
}

impl Layout {
    pub fn create(dir: &Utf8Path) -> Result<Layout> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))
            .with_context(|| format!("cannot create the OCI layout {dir}"))?;
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .with_context(|| format!("cannot write {dir}/oci-layout"))?;
        Ok(Layout {
            dir: dir.to_owned(),
        })
    }

    pub fn open(dir: &Utf8Path) -> Result<Layout> {
        if !dir.join("oci-layout").is_file() || !dir.join("index.json").is_file() {
            bail!("{dir} is not an OCI image layout (no oci-layout or index.json file)");
        }
        Ok(Layout {
            dir: dir.to_owned(),
        })
    }

    pub fn blob_path(&self, digest: &str) -> Utf8PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap_or(digest))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Writes a blob unless it is already there (blobs are content-addressed).
    pub fn write_blob(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
        let descriptor = Descriptor::of(media_type, bytes);
        let path = self.blob_path(&descriptor.digest);
        if !path.is_file() {
            let partial = path.with_extension("partial");
            std::fs::write(&partial, bytes).with_context(|| format!("cannot write {partial}"))?;
            std::fs::rename(&partial, &path).with_context(|| format!("cannot write {path}"))?;
        }
        Ok(descriptor)
    }

    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("blob {digest} is missing from the layout {}", self.dir))?;
        if digest_of(&bytes) != digest {
            bail!(
                "blob {path} does not match its digest; delete {} and build again",
                self.dir
            );
        }
        Ok(bytes)
    }

    pub fn read_json<T: for<'de> Deserialize<'de>>(&self, digest: &str) -> Result<T> {
        let bytes = self.read_blob(digest)?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("blob {digest} in {} is not the expected JSON", self.dir))
    }

    pub fn index(&self) -> Result<Index> {
        let path = self.dir.join("index.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        serde_json::from_str(&text).with_context(|| format!("{path} is not an OCI index"))
    }

    pub fn write_index(&self, index: &Index) -> Result<()> {
        let path = self.dir.join("index.json");
        std::fs::write(&path, canonical_json(index)?)
            .with_context(|| format!("cannot write {path}"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

/// The media type a manifest or index document declares, if any.
pub fn declared_media_type(bytes: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    value.get("mediaType")?.as_str().map(str::to_owned)
}

pub fn is_index(media_type: &str) -> bool {
    media_type == INDEX || media_type == DOCKER_LIST
}
