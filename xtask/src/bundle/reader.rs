//! Reading a bundle archive for `--load` without trusting its size or its
//! names. The tar is walked once for its headers only: every name must be
//! a path of an OCI layout (or of `verify/`), every entry a plain file or
//! folder, each name once. Then, from `index.json` down, each manifest is
//! read (at most 4 MiB, the size its descriptor declares, checked against
//! its digest) and held in memory; configs and layers stay in the file,
//! where their entries must have exactly the size their descriptors
//! declare, and are read one at a time when they are pushed. A hostile
//! archive (a sparse entry declaring gigabytes, a path out of the layout, a
//! blob larger than declared) is refused before anything large is read.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::{Deref, DerefMut};

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde_json::Value;

use crate::bundle::convert::Blobs;
use crate::oci::push::BlobSource;
use crate::oci::{self, Descriptor, Index};

/// The most a manifest, an index or `index.json` may be: distribution's
/// own limit for a manifest.
const DOCUMENT_LIMIT: u64 = 4 << 20;
/// Manifests followed from `index.json`: a release with its platforms,
/// signatures and attestations has a few dozen.
const MAX_DOCUMENTS: usize = 10_000;
/// The files of `verify/` that `bundle` writes.
const VERIFY_FILES: [&str; 4] = ["tags", "identity", "cosign.pub", "trusted_root.json"];

/// Where a blob's bytes are in the archive.
#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: u64,
    size: u64,
}

/// The blobs of an archive: its manifests in memory (what the load reads
/// and converts), its other blobs where they are in the file.
pub struct ArchiveBlobs {
    path: Utf8PathBuf,
    documents: Blobs,
    in_file: BTreeMap<String, Entry>,
}

impl ArchiveBlobs {
    /// Manifests and blobs the load pushes.
    pub fn count(&self) -> usize {
        self.documents.len() + self.in_file.len()
    }

    /// Their bytes in all.
    pub fn bytes(&self) -> u64 {
        let documents: u64 = self.documents.values().map(|b| b.len() as u64).sum();
        documents + self.in_file.values().map(|e| e.size).sum::<u64>()
    }
}

/// The manifests, for the code that reads and converts them.
impl Deref for ArchiveBlobs {
    type Target = Blobs;
    fn deref(&self) -> &Blobs {
        &self.documents
    }
}

impl DerefMut for ArchiveBlobs {
    fn deref_mut(&mut self) -> &mut Blobs {
        &mut self.documents
    }
}

impl BlobSource for ArchiveBlobs {
    fn blob(&self, digest: &str) -> Result<Vec<u8>> {
        if self.documents.contains_key(digest) {
            return self.documents.blob(digest);
        }
        let entry = self
            .in_file
            .get(digest)
            .with_context(|| format!("blob {digest} is missing from the archive"))?;
        let bytes = read_at(&self.path, *entry)?;
        if oci::digest_of(&bytes) != digest {
            bail!("blob {digest} in {} does not match its digest; the archive is damaged, copy it again and check it with sha256sum -c", self.path);
        }
        Ok(bytes)
    }

    /// A blob in the file is hashed where it lies, then streamed from
    /// there: a layer of any size is never held.
    fn open(&self, digest: &str) -> Result<(u64, Box<dyn Read + Send>)> {
        let Some(entry) = self.in_file.get(digest) else {
            let bytes = self.blob(digest)?;
            return Ok((bytes.len() as u64, Box::new(std::io::Cursor::new(bytes))));
        };
        let open = || -> Result<std::io::Take<File>> {
            let mut file =
                File::open(&self.path).with_context(|| format!("cannot open {}", self.path))?;
            file.seek(SeekFrom::Start(entry.offset))
                .with_context(|| format!("cannot read {}", self.path))?;
            Ok(file.take(entry.size))
        };
        if oci::digest_of_reader(open()?)? != digest {
            bail!("blob {digest} in {} does not match its digest; the archive is damaged, copy it again and check it with sha256sum -c", self.path);
        }
        Ok((entry.size, Box::new(open()?)))
    }
}

/// What an archive holds: its `index.json` entries, its blobs, and the
/// files of `verify/`, which the load only compares with the operator's.
pub struct Archive {
    pub refs: Vec<Descriptor>,
    pub blobs: ArchiveBlobs,
    pub copies: BTreeMap<String, Vec<u8>>,
}

/// Reads an archive written by `bundle`: its index.json entries, its
/// blobs as [`ArchiveBlobs`], and its `verify/` files.
pub fn read_archive(path: &Utf8Path) -> Result<Archive> {
    let Listing {
        index: index_entry,
        blobs: entries,
        verify,
    } = list(path)?;
    let mut copies = BTreeMap::new();
    for (name, entry) in verify {
        if entry.size > DOCUMENT_LIMIT {
            bail!("{name} in {path} is larger than 4 MiB; the archive was altered, bundle the release again");
        }
        copies.insert(name, read_at(path, entry)?);
    }
    let index_entry = index_entry.with_context(|| {
        format!("{path} has no index.json; it is not an OCI archive written by cargo xtask bundle")
    })?;
    if index_entry.size > DOCUMENT_LIMIT {
        bail!("the index.json of {path} is larger than 4 MiB; the archive was altered, bundle the release again");
    }
    let index: Index = serde_json::from_slice(&read_at(path, index_entry)?)
        .with_context(|| format!("the index.json of {path} is not an OCI index"))?;
    let mut blobs = ArchiveBlobs {
        path: path.to_owned(),
        documents: Blobs::new(),
        in_file: BTreeMap::new(),
    };
    let mut pending: Vec<Descriptor> = index.manifests.clone();
    while let Some(descriptor) = pending.pop() {
        let digest = &descriptor.digest;
        if blobs.documents.contains_key(digest) {
            continue;
        }
        let entry = declared_entry(path, &entries, &descriptor)?;
        if blobs.documents.len() >= MAX_DOCUMENTS {
            bail!("{path} refers to more than {MAX_DOCUMENTS} manifests; the archive was altered, bundle the release again");
        }
        if entry.size > DOCUMENT_LIMIT {
            bail!("manifest {digest} in {path} is larger than 4 MiB; the archive was altered, bundle the release again");
        }
        let bytes = read_at(path, entry)?;
        if oci::digest_of(&bytes) != *digest {
            bail!("blobs/sha256/{} in {path} does not match its digest; the archive is damaged, copy it again and check it with sha256sum -c", hex(digest));
        }
        let document: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("manifest {digest} in {path} is not JSON"))?;
        for child in children(&document, "manifests") {
            pending.push(child);
        }
        let config = serde_json::from_value::<Descriptor>(document["config"].clone()).ok();
        for blob in children(&document, "layers").into_iter().chain(config) {
            let entry = declared_entry(path, &entries, &blob)?;
            blobs.in_file.insert(blob.digest.clone(), entry);
        }
        blobs.documents.insert(digest.clone(), bytes);
    }
    // A manifest is held once, in memory, even where a config names it.
    let documents: Vec<String> = blobs.documents.keys().cloned().collect();
    for digest in documents {
        blobs.in_file.remove(&digest);
    }
    Ok(Archive {
        refs: index.manifests,
        blobs,
        copies,
    })
}

/// The descriptors in `document[field]`.
fn children(document: &Value, field: &str) -> Vec<Descriptor> {
    document[field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| serde_json::from_value(d.clone()).ok())
        .collect()
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// The entry of `descriptor`'s blob, whose size must be the declared one.
fn declared_entry(
    path: &Utf8Path,
    entries: &BTreeMap<String, Entry>,
    descriptor: &Descriptor,
) -> Result<Entry> {
    let digest = &descriptor.digest;
    let entry = *entries.get(digest).with_context(|| {
        format!("blob {digest} is missing from the archive {path}; bundle the release again")
    })?;
    if entry.size != descriptor.size {
        bail!(
            "blobs/sha256/{} in {path} holds {} bytes, but its descriptor declares {}; the archive was altered, bundle the release again",
            hex(digest),
            entry.size,
            descriptor.size
        );
    }
    Ok(entry)
}

/// The tar's entries, headers only.
struct Listing {
    index: Option<Entry>,
    /// By digest.
    blobs: BTreeMap<String, Entry>,
    /// By name, `verify/…`.
    verify: BTreeMap<String, Entry>,
}

/// The tar's entries, headers only: index.json, the blobs by digest, and
/// the files of `verify/`.
fn list(path: &Utf8Path) -> Result<Listing> {
    let file = File::open(path)
        .with_context(|| format!("cannot open the bundle {path}; give its path with --out"))?;
    let mut archive = tar::Archive::new(file);
    let mut index = None;
    let mut blobs = BTreeMap::new();
    let mut verify = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for entry in archive
        .entries_with_seek()
        .with_context(|| format!("{path} is not a tar archive"))?
    {
        let entry = entry.with_context(|| format!("{path} is not a readable tar archive"))?;
        let raw = entry.path_bytes();
        let name = String::from_utf8_lossy(&raw);
        let name = name.strip_prefix("./").unwrap_or(&name).to_owned();
        let kind = entry.header().entry_type();
        let at = Entry {
            offset: entry.raw_file_position(),
            size: entry.size(),
        };
        let layout_path = layout_path(&name);
        let refused = match (kind, &layout_path) {
            (tar::EntryType::Directory, Some(LayoutPath::Folder)) => None,
            (tar::EntryType::Regular, Some(LayoutPath::Folder)) | (_, None) => {
                Some("is not a path of an OCI layout")
            }
            (tar::EntryType::Regular, Some(_)) => None,
            _ => Some("is not a regular file"),
        };
        if let Some(why) = refused {
            bail!("{path} holds {name:?}, which {why}; the archive was altered, bundle the release again");
        }
        if !seen.insert(name.trim_end_matches('/').to_owned()) {
            bail!("{path} holds {name:?} twice; the archive was altered, bundle the release again");
        }
        match layout_path {
            Some(LayoutPath::Index) => index = Some(at),
            Some(LayoutPath::Blob(digest)) => {
                blobs.insert(digest, at);
            }
            Some(LayoutPath::Ignored) if name.starts_with("verify/") => {
                verify.insert(name, at);
            }
            _ => {}
        }
    }
    Ok(Listing {
        index,
        blobs,
        verify,
    })
}

#[derive(Debug, PartialEq, Eq)]
enum LayoutPath {
    /// `blobs/`, `blobs/sha256/`, `verify/`.
    Folder,
    /// `oci-layout`, or a file of `verify/`: not read by the load.
    Ignored,
    Index,
    Blob(String),
}

/// What `name` is in an OCI layout written by `bundle`, or None.
fn layout_path(name: &str) -> Option<LayoutPath> {
    let folder = name.trim_end_matches('/');
    if ["blobs", "blobs/sha256", "verify"].contains(&folder) {
        return Some(LayoutPath::Folder);
    }
    match name {
        "index.json" => return Some(LayoutPath::Index),
        "oci-layout" => return Some(LayoutPath::Ignored),
        _ => {}
    }
    if let Some(file) = name.strip_prefix("verify/") {
        return VERIFY_FILES.contains(&file).then_some(LayoutPath::Ignored);
    }
    let hex = name.strip_prefix("blobs/sha256/")?;
    let is_hex = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    is_hex.then(|| LayoutPath::Blob(format!("sha256:{hex}")))
}

/// The bytes of `entry` in the archive at `path`.
fn read_at(path: &Utf8Path, entry: Entry) -> Result<Vec<u8>> {
    let mut file = File::open(path).with_context(|| format!("cannot open {path}"))?;
    file.seek(SeekFrom::Start(entry.offset))
        .with_context(|| format!("cannot read {path}"))?;
    let mut bytes = Vec::new();
    file.take(entry.size)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {path}"))?;
    if bytes.len() as u64 != entry.size {
        bail!("{path} ends inside an entry; the archive is truncated, copy it again");
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_layout_paths_are_accepted() {
        let hex = "a".repeat(64);
        assert_eq!(
            layout_path(&format!("blobs/sha256/{hex}")),
            Some(LayoutPath::Blob(format!("sha256:{hex}")))
        );
        assert_eq!(layout_path("blobs/sha256/"), Some(LayoutPath::Folder));
        assert_eq!(layout_path("index.json"), Some(LayoutPath::Index));
        assert_eq!(layout_path("verify/cosign.pub"), Some(LayoutPath::Ignored));
        for bad in [
            "../index.json",
            "blobs/sha256/../../etc/passwd",
            &format!("blobs/sha256/{}", "A".repeat(64)),
            &format!("blobs/sha512/{hex}"),
            "blobs/sha256/abc",
            "verify/other",
            "notes.txt",
            "/index.json",
        ] {
            assert_eq!(layout_path(bad), None, "{bad}");
        }
    }
}
