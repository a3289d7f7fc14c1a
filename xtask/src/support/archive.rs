//! Deterministic tar and gzip: the same files give the same bytes on any
//! machine, so archives, image layers and OCI archives are reproducible.

use std::io::Write;

use anyhow::{Context, Result};
use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};

pub struct Entry<'a> {
    /// The path inside the archive, relative, without a leading `/`.
    pub path: &'a str,
    pub data: &'a [u8],
    pub mode: u32,
}

pub struct TarGz {
    /// The uncompressed tar: an image layer's diff ID is its digest.
    pub tar_sha256: String,
    pub gz: Vec<u8>,
}

/// The tar header format. Image layers have always been GNU tar and OCI
/// archives ustar: changing either would change every digest made before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gnu,
    Ustar,
}

/// A deterministic tar stream: every entry owned by 0:0 with no user or
/// group names and one `mtime`. The caller decides the order of entries;
/// writing them sorted is what makes two runs give the same bytes.
pub struct TarWriter<W: Write> {
    builder: tar::Builder<W>,
    format: Format,
    mtime: u64,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W, format: Format, mtime: u64) -> TarWriter<W> {
        let mut builder = tar::Builder::new(out);
        builder.mode(tar::HeaderMode::Deterministic);
        TarWriter {
            builder,
            format,
            mtime,
        }
    }

    /// A directory entry; `path` ends with `/`.
    pub fn dir(&mut self, path: &str) -> Result<()> {
        let mut header = self.header(tar::EntryType::Directory, 0o755, 0);
        self.builder
            .append_data(&mut header, path, std::io::empty())
            .with_context(|| format!("cannot add directory {path} to the archive"))
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        let mut header = self.header(tar::EntryType::Regular, mode, data.len() as u64);
        self.builder
            .append_data(&mut header, path, data)
            .with_context(|| format!("cannot add {path} to the archive"))
    }

    /// Writes the end-of-archive blocks and returns the output.
    pub fn finish(self) -> Result<W> {
        self.builder
            .into_inner()
            .context("cannot finish the tar archive")
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = match self.format {
            Format::Gnu => tar::Header::new_gnu(),
            Format::Ustar => tar::Header::new_ustar(),
        };
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_mtime(self.mtime);
        header.set_uid(0);
        header.set_gid(0);
        header
    }
}

/// A writer that hashes what goes through it: an archive's sha256 without
/// reading it back.
pub struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> HashingWriter<W> {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// The inner writer, and the hex sha256 of everything written.
    pub fn finish(self) -> (W, String) {
        (self.inner, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `entries` sorted by path, owned by 0:0 with no user or group
/// names, with `mtime` everywhere, and parent directories made explicit.
pub fn tar_gz(entries: &[Entry<'_>], mtime: u64) -> Result<TarGz> {
    let mut sorted: Vec<&Entry<'_>> = entries.iter().collect();
    sorted.sort_by_key(|e| e.path);

    let mut writer = TarWriter::new(Vec::new(), Format::Gnu, mtime);
    let mut dirs_written: Vec<String> = Vec::new();
    for entry in sorted {
        let mut parent = String::new();
        for component in entry
            .path
            .split('/')
            .rev()
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            parent.push_str(component);
            parent.push('/');
            if !dirs_written.contains(&parent) {
                writer.dir(&parent)?;
                dirs_written.push(parent.clone());
            }
        }
        writer.file(entry.path, entry.mode, entry.data)?;
    }
    let tar = writer.finish()?;
    let tar_sha256 = sha256_hex(&tar);

    // No file name and mtime 0 in the gzip header: both would leak the
    // build environment into the bytes.
    let mut gz = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), Compression::best());
    gz.write_all(&tar).context("cannot compress the archive")?;
    let gz = gz.finish().context("cannot finish the gzip stream")?;
    Ok(TarGz { tar_sha256, gz })
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_input_same_bytes_regardless_of_order() {
        let a = [
            Entry {
                path: "b/server",
                data: b"bin",
                mode: 0o755,
            },
            Entry {
                path: "a.txt",
                data: b"text",
                mode: 0o644,
            },
        ];
        let b = [
            Entry {
                path: "a.txt",
                data: b"text",
                mode: 0o644,
            },
            Entry {
                path: "b/server",
                data: b"bin",
                mode: 0o755,
            },
        ];
        let first = tar_gz(&a, 1_700_000_000).unwrap();
        let second = tar_gz(&b, 1_700_000_000).unwrap();
        assert_eq!(first.gz, second.gz);
        assert_eq!(first.tar_sha256, second.tar_sha256);
        assert_ne!(
            tar_gz(&a, 1).unwrap().gz,
            first.gz,
            "mtime must be in the bytes"
        );

        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&first.gz[..]));
        let listing: Vec<(String, u32, u64, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.mtime().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            listing,
            vec![
                ("a.txt".to_owned(), 0o644, 0, 1_700_000_000),
                ("b/".to_owned(), 0o755, 0, 1_700_000_000),
                ("b/server".to_owned(), 0o755, 0, 1_700_000_000),
            ]
        );
    }

    /// Layers made before the shared writer existed have these digests: a
    /// change to the bytes would change every image digest.
    #[test]
    fn layer_bytes_are_pinned() {
        let entries = [
            Entry {
                path: "b/c/server",
                data: b"bin",
                mode: 0o755,
            },
            Entry {
                path: "a.txt",
                data: b"text",
                mode: 0o644,
            },
        ];
        let layer = tar_gz(&entries, 1_700_000_000).unwrap();
        assert_eq!(
            layer.tar_sha256,
            "008db0dbb7649864c4f8f4e081468b49ca316a43b143e59dd3463009cfd23aef"
        );
        assert_eq!(
            sha256_hex(&layer.gz),
            "0c6962272996dc130685c4f18978d3442b3712c7421b1bc6ad7689b99bd2957b"
        );
    }

    #[test]
    fn hashing_writer_hashes_what_it_writes() {
        let mut writer = HashingWriter::new(Vec::new());
        writer.write_all(b"abc").unwrap();
        let (bytes, sha) = writer.finish();
        assert_eq!(bytes, b"abc");
        assert_eq!(sha, sha256_hex(b"abc"));
    }
}
