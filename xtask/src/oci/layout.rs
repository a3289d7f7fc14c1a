//! An OCI image layout on disk: content-addressed blobs and an index.json.

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Deserialize;

use crate::oci::{canonical_json, digest_of, Descriptor, Index};

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
