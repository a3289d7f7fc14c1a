//! A content-addressed cache of compressed archives under target/cache/, so
//! that a warm build neither re-tars nor re-gzips a binary it has already
//! packed. The key is the sha256 of everything that shapes the output: the
//! format version, the tar format, the compression level, the mtime, and
//! each entry's path, mode and content digest. The value is the gzip blob,
//! its digest and the digest of the uncompressed tar (an image layer's diff
//! ID).
//!
//! Entries are written through a unique temporary file and a rename, so two
//! runs sharing the cache never see a half-written entry; a hit re-checks
//! the blob's digest, so a corrupted entry is rebuilt, never served. The
//! cache keeps the most recently used [`KEEP_ENTRIES`] entries.

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::support::archive::{self, Entry, TarGz};
use crate::support::fs::write_unique;

/// A build of two platforms uses four entries (two layers, two archives):
/// this keeps the entries of the last 16 such builds.
pub const KEEP_ENTRIES: usize = 64;

/// Bumped when the bytes `archive::tar_gz` writes change, so that entries
/// of an older writer are never served.
const FORMAT: &str = "tar-gz v1: gnu tar, gzip level 9, gzip mtime 0, os 255";

/// What an entry records beside its blob.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// sha256 of the gzip blob, hex.
    gz_sha256: String,
    /// sha256 of the uncompressed tar, hex.
    tar_sha256: String,
    size: u64,
}

/// Whether a lookup found a valid entry: for tests and progress output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    /// An entry was there, but its blob did not match its digest.
    Rebuilt,
}

pub struct Cache {
    dir: Utf8PathBuf,
}

impl Cache {
    /// The cache of a target directory, `<target>/cache`, or the directory
    /// named by `XTASK_CACHE_DIR`: tests give each run its own.
    pub fn in_target(target_dir: &Utf8Path) -> Cache {
        let dir = match std::env::var("XTASK_CACHE_DIR") {
            Ok(dir) if !dir.is_empty() => Utf8PathBuf::from(dir),
            _ => target_dir.join("cache"),
        };
        Cache { dir }
    }

    /// The cache of exactly this directory.
    pub fn at(dir: Utf8PathBuf) -> Cache {
        Cache { dir }
    }

    pub fn dir(&self) -> &Utf8Path {
        &self.dir
    }

    /// `archive::tar_gz(entries, mtime)`, from the cache when it holds a
    /// valid entry for exactly these inputs.
    pub fn tar_gz(&self, entries: &[Entry<'_>], mtime: u64) -> Result<(TarGz, Outcome)> {
        let key = key(entries, mtime);
        let record_path = self.dir.join("entries").join(format!("{key}.json"));
        let outcome = match self.lookup(&record_path) {
            Lookup::Valid(found) => {
                touch(&record_path);
                return Ok((found, Outcome::Hit));
            }
            Lookup::Absent => Outcome::Miss,
            Lookup::Corrupt => Outcome::Rebuilt,
        };
        let built = archive::tar_gz(entries, mtime)?;
        self.store(&record_path, &built)?;
        self.prune()?;
        Ok((built, outcome))
    }

    /// Empties the cache; returns whether there was one.
    pub fn clear(&self) -> Result<bool> {
        if !self.dir.exists() {
            return Ok(false);
        }
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("cannot remove {}; check its permissions", self.dir))?;
        Ok(true)
    }

    fn blob_path(&self, gz_sha256: &str) -> Utf8PathBuf {
        self.dir.join("blobs").join(gz_sha256)
    }

    fn lookup(&self, record_path: &Utf8Path) -> Lookup {
        let Ok(text) = std::fs::read(record_path) else {
            return Lookup::Absent;
        };
        let Ok(record) = serde_json::from_slice::<Record>(&text) else {
            return Lookup::Corrupt;
        };
        let Ok(gz) = std::fs::read(self.blob_path(&record.gz_sha256)) else {
            // Pruned by another run between the two reads: a plain miss.
            return Lookup::Absent;
        };
        if archive::sha256_hex(&gz) != record.gz_sha256 || gz.len() as u64 != record.size {
            return Lookup::Corrupt;
        }
        Lookup::Valid(TarGz {
            tar_sha256: record.tar_sha256,
            gz,
        })
    }

    fn store(&self, record_path: &Utf8Path, built: &TarGz) -> Result<()> {
        let gz_sha256 = archive::sha256_hex(&built.gz);
        let record = Record {
            gz_sha256: gz_sha256.clone(),
            tar_sha256: built.tar_sha256.clone(),
            size: built.gz.len() as u64,
        };
        // The blob first: a record never names a blob that was not written.
        write_unique(&self.blob_path(&gz_sha256), &built.gz)?;
        write_unique(record_path, &serde_json::to_vec(&record)?)
    }

    /// Keeps the most recently used entries; a blob no kept entry names is
    /// removed. Another run pruning at the same time removes the same
    /// files, so a file already gone is not an error.
    fn prune(&self) -> Result<()> {
        let entries_dir = self.dir.join("entries");
        let mut records: Vec<(std::time::SystemTime, Utf8PathBuf)> = list(&entries_dir)?
            .into_iter()
            .filter(|p| p.extension() == Some("json"))
            .filter_map(|p| {
                let used = std::fs::metadata(&p).and_then(|m| m.modified()).ok()?;
                Some((used, p))
            })
            .collect();
        if records.len() <= KEEP_ENTRIES {
            return Ok(());
        }
        records.sort_by_key(|r| std::cmp::Reverse(r.0));
        let mut kept_blobs = std::collections::HashSet::new();
        for (index, (_, path)) in records.iter().enumerate() {
            let record = std::fs::read(path)
                .ok()
                .and_then(|t| serde_json::from_slice::<Record>(&t).ok());
            match record {
                Some(record) if index < KEEP_ENTRIES => {
                    kept_blobs.insert(record.gz_sha256);
                }
                _ => remove_if_present(path)?,
            }
        }
        for blob in list(&self.dir.join("blobs"))? {
            let name = blob.file_name().unwrap_or_default();
            if !name.contains(".tmp.") && !kept_blobs.contains(name) {
                remove_if_present(&blob)?;
            }
        }
        Ok(())
    }
}

enum Lookup {
    Valid(TarGz),
    Absent,
    Corrupt,
}

fn key(entries: &[Entry<'_>], mtime: u64) -> String {
    let mut sorted: Vec<&Entry<'_>> = entries.iter().collect();
    sorted.sort_by_key(|e| e.path);
    let mut hasher = Sha256::new();
    hasher.update(FORMAT.as_bytes());
    hasher.update(format!("\nmtime {mtime}\n").as_bytes());
    for entry in sorted {
        // Lengths first, so that no two different entry lists hash alike.
        hasher.update(format!("{} {} {:o} ", entry.path.len(), entry.path, entry.mode).as_bytes());
        hasher.update(archive::sha256_hex(entry.data).as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

/// Marks an entry as used now, for pruning. A failure only makes it older.
fn touch(path: &Utf8Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

fn list(dir: &Utf8Path) -> Result<Vec<Utf8PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("cannot list {dir}")),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {dir}"))?;
        if let Ok(path) = Utf8PathBuf::from_path_buf(entry.path()) {
            paths.push(path);
        }
    }
    Ok(paths)
}

fn remove_if_present(path: &Utf8Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("cannot remove {path}"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(data: &[u8]) -> Entry<'_> {
        Entry {
            path: "server",
            data,
            mode: 0o755,
        }
    }

    #[test]
    fn a_hit_gives_the_bytes_of_a_miss() {
        let temp = tempfile::tempdir().unwrap();
        let cache = Cache::at(Utf8Path::from_path(temp.path()).unwrap().to_owned());
        let (miss, outcome) = cache.tar_gz(&[entry(b"binary")], 7).unwrap();
        assert_eq!(outcome, Outcome::Miss);
        let (hit, outcome) = cache.tar_gz(&[entry(b"binary")], 7).unwrap();
        assert_eq!(outcome, Outcome::Hit);
        let direct = archive::tar_gz(&[entry(b"binary")], 7).unwrap();
        assert_eq!(hit.gz, direct.gz);
        assert_eq!(miss.gz, direct.gz);
        assert_eq!(hit.tar_sha256, direct.tar_sha256);
    }

    #[test]
    fn every_setting_is_in_the_key() {
        let temp = tempfile::tempdir().unwrap();
        let cache = Cache::at(Utf8Path::from_path(temp.path()).unwrap().to_owned());
        cache.tar_gz(&[entry(b"binary")], 7).unwrap();
        let changed = [
            (vec![entry(b"binarz")], 7),
            (vec![entry(b"binary")], 8),
            (
                vec![Entry {
                    path: "other",
                    data: b"binary",
                    mode: 0o755,
                }],
                7,
            ),
            (
                vec![Entry {
                    path: "server",
                    data: b"binary",
                    mode: 0o644,
                }],
                7,
            ),
        ];
        for (entries, mtime) in changed {
            let (built, outcome) = cache.tar_gz(&entries, mtime).unwrap();
            assert_eq!(outcome, Outcome::Miss, "{:?} {mtime}", entries[0].path);
            assert_eq!(built.gz, archive::tar_gz(&entries, mtime).unwrap().gz);
        }
    }

    #[test]
    fn a_corrupted_blob_is_detected_and_rebuilt() {
        let temp = tempfile::tempdir().unwrap();
        let cache = Cache::at(Utf8Path::from_path(temp.path()).unwrap().to_owned());
        let (good, _) = cache.tar_gz(&[entry(b"binary")], 7).unwrap();
        let blob = cache.blob_path(&archive::sha256_hex(&good.gz));
        let mut bytes = std::fs::read(&blob).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&blob, bytes).unwrap();
        let (rebuilt, outcome) = cache.tar_gz(&[entry(b"binary")], 7).unwrap();
        assert_eq!(outcome, Outcome::Rebuilt);
        assert_eq!(rebuilt.gz, good.gz);
        assert_eq!(std::fs::read(&blob).unwrap(), good.gz);
        assert_eq!(
            cache.tar_gz(&[entry(b"binary")], 7).unwrap().1,
            Outcome::Hit
        );
    }

    #[test]
    fn keeps_the_most_recently_used_entries() {
        let temp = tempfile::tempdir().unwrap();
        let cache = Cache::at(Utf8Path::from_path(temp.path()).unwrap().to_owned());
        let data: Vec<Vec<u8>> = (0..KEEP_ENTRIES + 3)
            .map(|i| format!("binary {i}").into_bytes())
            .collect();
        for bytes in &data {
            cache.tar_gz(&[entry(bytes)], 7).unwrap();
            // mtimes of a second's resolution would tie otherwise.
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(
            list(&cache.dir.join("entries")).unwrap().len(),
            KEEP_ENTRIES
        );
        assert_eq!(list(&cache.dir.join("blobs")).unwrap().len(), KEEP_ENTRIES);
        let newest = data.last().unwrap();
        assert_eq!(cache.tar_gz(&[entry(newest)], 7).unwrap().1, Outcome::Hit);
        assert_eq!(
            cache.tar_gz(&[entry(&data[0])], 7).unwrap().1,
            Outcome::Miss
        );
        assert!(cache.clear().unwrap());
        assert!(!cache.dir.exists());
        assert!(!cache.clear().unwrap());
    }
}
