//! Deterministic tar and gzip: the same files give the same bytes on any
//! machine, so archives and image layers are reproducible.

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

/// Writes `entries` sorted by path, owned by 0:0 with no user or group
/// names, with `mtime` everywhere, and parent directories made explicit.
pub fn tar_gz(entries: &[Entry<'_>], mtime: u64) -> Result<TarGz> {
    let mut sorted: Vec<&Entry<'_>> = entries.iter().collect();
    sorted.sort_by_key(|e| e.path);

    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
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
                let mut header = header(tar::EntryType::Directory, 0o755, 0, mtime);
                builder
                    .append_data(&mut header, &parent, std::io::empty())
                    .with_context(|| format!("cannot add directory {parent} to the archive"))?;
                dirs_written.push(parent.clone());
            }
        }
        let mut header = header(
            tar::EntryType::Regular,
            entry.mode,
            entry.data.len() as u64,
            mtime,
        );
        builder
            .append_data(&mut header, entry.path, entry.data)
            .with_context(|| format!("cannot add {} to the archive", entry.path))?;
    }
    let tar = builder
        .into_inner()
        .context("cannot finish the tar archive")?;
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

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    header
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
}
