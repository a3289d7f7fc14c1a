//! Unpacks the layers of an image that `verify --run` pulled, into a rootfs of its own.
//!
//! Whoever can push to the registry controls every byte of the layers. The signature checks come
//! first, but this extractor is written as if they did not: no entry may create, change or delete
//! anything outside the rootfs, whatever symlinks earlier entries left inside it (`v1 -> /host/dir`
//! then `v1/.wh.keep` must not delete `/host/dir/keep`): every parent of every path is checked
//! with `lstat`, one component at a time, and a symlink or a non-directory on the way is an error.
//! Nothing else writes the rootfs while we unpack, so checking then acting is not racy.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, format_err, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::oci::{DOCKER_LAYER_GZIP, LAYER_GZIP, LAYER_TAR};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Other `.wh..wh.` names are aufs bookkeeping, which OCI tells us to ignore.
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";

/// What the tar stream may hold beyond file data, per entry: a header, padding and, for long
/// names, a pax or GNU record. The tar crate reads those records into memory whole, so without
/// this budget one forged record could make us allocate gigabytes before any file is written.
const TAR_METADATA_PER_ENTRY: u64 = 4096;
/// Covers what no entry accounts for: end-of-archive blocks, and file data read but not yet
/// credited back.
const TAR_METADATA_SLACK: u64 = 1024 * 1024;

const COPY_BUFFER: usize = 64 * 1024;

/// Caps on what all the layers of one image may unpack to, together.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// File data written, in bytes, counted as it is copied.
    pub max_total_bytes: u64,
    /// Tar entries read, whiteouts and skipped devices included.
    pub max_entries: u64,
}

/// Applies an image's layers, lowest first, to a rootfs that belongs to it alone.
#[derive(Debug)]
pub struct Unpacker {
    rootfs: Utf8PathBuf,
    limits: Limits,
    written: u64,
    entries: u64,
    /// Decompressed tar bytes other than file data that the remaining layers may still read.
    metadata_budget: u64,
}

impl Unpacker {
    /// Takes an empty directory that the caller made for this image; an existing tree could
    /// already hold a symlink that points out, which the checks below assume we made ourselves.
    pub fn new(rootfs: &Utf8Path, limits: Limits) -> Result<Unpacker> {
        let meta = fs::symlink_metadata(rootfs)
            .with_context(|| format!("cannot use {rootfs:?} as the rootfs"))?;
        if !meta.is_dir() {
            bail!("the rootfs {rootfs:?} is not a directory");
        }
        let mut listing =
            fs::read_dir(rootfs).with_context(|| format!("cannot list the rootfs {rootfs:?}"))?;
        if listing.next().is_some() {
            bail!("the rootfs {rootfs:?} is not empty");
        }
        let rootfs = rootfs
            .canonicalize_utf8()
            .with_context(|| format!("cannot resolve the rootfs {rootfs:?}"))?;
        Ok(Unpacker {
            rootfs,
            limits,
            written: 0,
            entries: 0,
            metadata_budget: metadata_cap(limits),
        })
    }

    /// Applies one layer on top of those applied before, OCI whiteouts included.
    pub fn apply_layer(&mut self, reader: impl Read, media_type: &str) -> Result<()> {
        let budget = Cell::new(self.metadata_budget);
        let exhausted = Cell::new(false);
        let result = match media_type {
            LAYER_TAR => self.apply_tar(
                Budgeted {
                    inner: reader,
                    budget: &budget,
                    exhausted: &exhausted,
                },
                &budget,
            ),
            // Multi-member so that layers written by parallel gzip tools also unpack whole.
            LAYER_GZIP | DOCKER_LAYER_GZIP => self.apply_tar(
                Budgeted {
                    inner: flate2::read::MultiGzDecoder::new(reader),
                    budget: &budget,
                    exhausted: &exhausted,
                },
                &budget,
            ),
            other => bail!("unsupported layer media type {other:?}"),
        };
        self.metadata_budget = budget.get();
        if exhausted.get() {
            // Whatever error the tar crate made of our refusal to read, this is the cause.
            bail!(
                "the image's layers hold more than {} bytes of tar metadata; refusing to unpack",
                metadata_cap(self.limits)
            );
        }
        result
    }

    fn apply_tar(&mut self, reader: impl Read, budget: &Cell<u64>) -> Result<()> {
        let mut archive = tar::Archive::new(reader);
        // Whiteouts hide only what lower layers left, never what this layer unpacked.
        let mut unpacked = HashSet::new();
        let entries = archive
            .entries()
            .context("cannot read the layer as a tar archive")?;
        for entry in entries {
            let mut entry = entry.context("cannot read the next entry of the layer")?;
            self.apply_entry(&mut entry, &mut unpacked, budget)?;
        }
        Ok(())
    }

    fn apply_entry(
        &mut self,
        entry: &mut tar::Entry<impl Read>,
        unpacked: &mut HashSet<Utf8PathBuf>,
        budget: &Cell<u64>,
    ) -> Result<()> {
        let raw_name = entry.path_bytes().into_owned();
        let name = std::str::from_utf8(&raw_name).map_err(|_| {
            format_err!(
                "layer entry {:?} is not valid utf-8; refusing to unpack",
                String::from_utf8_lossy(&raw_name)
            )
        })?;
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            bail!(
                "the image's layers hold more than {} entries; stopped at layer entry {name:?}",
                self.limits.max_entries
            );
        }
        let subject = format!("layer entry {name:?}");
        let components = relative_components(name)
            .map_err(|reason| format_err!("{subject} {reason}; refusing to unpack"))?;
        // `./` alone names the rootfs, whose mode is the caller's.
        let Some((last, parents)) = components.split_last() else {
            return Ok(());
        };
        if last.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(&subject, parents, last, unpacked);
        }
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {
                let mode = entry_mode(entry, &subject)?;
                let path = self.parent_dir(&subject, parents)?.join(last);
                self.make_dir(&subject, &path, mode)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mode = entry_mode(entry, &subject)?;
                let path = self.parent_dir(&subject, parents)?.join(last);
                self.write_file(entry, name, &subject, &path, mode, budget)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .filter(|target| !target.is_empty())
                    .ok_or_else(|| {
                        format_err!("{subject} is a symlink with no target; refusing to unpack")
                    })?
                    .into_owned();
                let path = self.parent_dir(&subject, parents)?.join(last);
                clear_slot(&path, &subject)?;
                // Never followed by us; the target only means something inside the container.
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .with_context(|| format!("cannot unpack {subject}"))?;
            }
            tar::EntryType::Link => {
                let source = self.hard_link_source(entry, &subject, &components)?;
                let path = self.parent_dir(&subject, parents)?.join(last);
                clear_slot(&path, &subject)?;
                fs::hard_link(&source, &path)
                    .with_context(|| format!("cannot unpack {subject}"))?;
            }
            // Device nodes and fifos have no use in a rootfs we only run one binary from, and
            // whatever else a tar can hold is metadata the tar crate has already applied.
            _ => return Ok(()),
        }
        // Ancestors too: a directory this layer made only implicitly still holds its entries.
        for depth in 1..=components.len() {
            unpacked.insert(Utf8PathBuf::from(components[..depth].join("/")));
        }
        Ok(())
    }

    /// Walks `parents` below the rootfs, making missing directories, and returns the last one.
    fn parent_dir(&self, subject: &str, parents: &[&str]) -> Result<Utf8PathBuf> {
        self.walk(subject, parents, true)?
            .ok_or_else(|| format_err!("{subject} has a parent that could not be made"))
    }

    /// Returns `None` if a directory on the way is missing and `create` is false.
    fn walk(&self, subject: &str, parents: &[&str], create: bool) -> Result<Option<Utf8PathBuf>> {
        let mut dir = self.rootfs.clone();
        for (depth, component) in parents.iter().enumerate() {
            dir.push(component);
            let shown = parents[..=depth].join("/");
            match fs::symlink_metadata(&dir) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    bail!("{subject} goes through the symlink {shown:?}; refusing to unpack")
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => bail!(
                    "{subject} goes through {shown:?}, which is not a directory; refusing to unpack"
                ),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    // Layers may leave out the entries of parent directories; docker makes them.
                    create_dir(&dir, 0o755)
                        .with_context(|| format!("cannot make {shown:?} for {subject}"))?;
                }
                Err(err) => {
                    return Err(err)
                        .with_context(|| format!("cannot inspect {shown:?} for {subject}"))
                }
            }
        }
        Ok(Some(dir))
    }

    fn make_dir(&self, subject: &str, path: &Utf8Path, mode: u32) -> Result<()> {
        let existing = symlink_metadata_if_any(path, subject)?;
        if !existing.is_some_and(|meta| meta.is_dir()) {
            clear_slot(path, subject)?;
            create_dir(path, mode).with_context(|| format!("cannot unpack {subject}"))?;
        }
        // Owner rwx always: a layer's read-only directory must not stop later entries going in.
        fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700))
            .with_context(|| format!("cannot set the mode of {subject}"))
    }

    fn write_file(
        &mut self,
        entry: &mut impl Read,
        name: &str,
        subject: &str,
        path: &Utf8Path,
        mode: u32,
        budget: &Cell<u64>,
    ) -> Result<()> {
        // A fresh inode: writing in place would go through a symlink or into a hard link's twin.
        clear_slot(path, subject)?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot unpack {subject}"))?;
        let mut buffer = vec![0; COPY_BUFFER];
        loop {
            let read = entry
                .read(&mut buffer)
                .with_context(|| format!("cannot read the data of {subject}"))?;
            if read == 0 {
                break;
            }
            // File data has its own cap, just below; the metadata budget is for the rest.
            budget.set(budget.get().saturating_add(read as u64));
            // Counted as copied, not taken from the header, which the image's author wrote.
            self.written += read as u64;
            if self.written > self.limits.max_total_bytes {
                drop(file);
                // Best effort: the caller throws the whole rootfs away on any error anyway.
                let _ = fs::remove_file(path);
                bail!(
                    "the image's layers unpack to more than {} bytes; stopped at layer entry {name:?}",
                    self.limits.max_total_bytes
                );
            }
            file.write_all(&buffer[..read])
                .with_context(|| format!("cannot unpack {subject}"))?;
        }
        drop(file);
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {subject}"))
    }

    /// Checks a hard link's target as strictly as an entry's own path, and that it is a regular
    /// file already in the rootfs, so the link cannot reach or pin anything outside.
    fn hard_link_source(
        &self,
        entry: &tar::Entry<impl Read>,
        subject: &str,
        components: &[&str],
    ) -> Result<Utf8PathBuf> {
        let raw_target = entry
            .link_name_bytes()
            .ok_or_else(|| {
                format_err!("{subject} is a hard link with no target; refusing to unpack")
            })?
            .into_owned();
        let target = std::str::from_utf8(&raw_target).map_err(|_| {
            format_err!(
                "{subject} is a hard link to {:?}, which is not valid utf-8; refusing to unpack",
                String::from_utf8_lossy(&raw_target)
            )
        })?;
        let link_subject = format!("{subject} is a hard link to {target:?}, which");
        let target_components = relative_components(target)
            .map_err(|reason| format_err!("{link_subject} {reason}; refusing to unpack"))?;
        if target_components == components {
            bail!("{subject} is a hard link to itself; refusing to unpack");
        }
        let not_a_file = || {
            format_err!("{link_subject} is not a regular file in the rootfs; refusing to unpack")
        };
        let Some((last, parents)) = target_components.split_last() else {
            return Err(not_a_file());
        };
        let Some(dir) = self.walk(&link_subject, parents, false)? else {
            return Err(not_a_file());
        };
        let source = dir.join(last);
        match symlink_metadata_if_any(&source, subject)? {
            Some(meta) if meta.file_type().is_file() => Ok(source),
            _ => Err(not_a_file()),
        }
    }

    fn whiteout(
        &self,
        subject: &str,
        parents: &[&str],
        name: &str,
        unpacked: &HashSet<Utf8PathBuf>,
    ) -> Result<()> {
        if name == OPAQUE_MARKER {
            let Some(dir) = self.walk(subject, parents, false)? else {
                return Ok(());
            };
            return clear_lower(
                dir.as_std_path(),
                &Utf8PathBuf::from(parents.join("/")),
                unpacked,
                subject,
            );
        }
        if name.starts_with(WHITEOUT_META_PREFIX) {
            return Ok(());
        }
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            bail!("{subject} is not a valid whiteout; refusing to unpack");
        }
        let Some(dir) = self.walk(subject, parents, false)? else {
            return Ok(());
        };
        let mut relative = Utf8PathBuf::from(parents.join("/"));
        relative.push(hidden);
        if unpacked.contains(&relative) {
            return Ok(());
        }
        clear_slot(dir.join(hidden), subject)
    }
}

fn metadata_cap(limits: Limits) -> u64 {
    let per_entry = limits.max_entries.saturating_mul(TAR_METADATA_PER_ENTRY);
    per_entry.saturating_add(TAR_METADATA_SLACK)
}

/// Splits an entry's name into the components below the rootfs, or says why it may not be one.
fn relative_components(name: &str) -> std::result::Result<Vec<&str>, &'static str> {
    if name.starts_with('/') {
        return Err("is an absolute path");
    }
    let mut components = Vec::new();
    for component in name.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err("has a \"..\" component"),
            component => components.push(component),
        }
    }
    Ok(components)
}

/// Keeps the permission bits only: setuid, setgid or sticky bits from an image have no business
/// on the host, even inside a rootfs that only we run from.
fn entry_mode(entry: &tar::Entry<impl Read>, subject: &str) -> Result<u32> {
    let mode = entry
        .header()
        .mode()
        .with_context(|| format!("{subject} has an unreadable mode"))?;
    Ok(mode & 0o777)
}

fn create_dir(path: &Utf8Path, mode: u32) -> io::Result<()> {
    fs::DirBuilder::new().mode(mode).create(path)?;
    // The umask may have dropped bits; the image's mode is what we want.
    fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700))
}

fn symlink_metadata_if_any(path: &Utf8Path, subject: &str) -> Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("cannot inspect the path of {subject}")),
    }
}

/// Removes whatever is at `path` without following it: a symlink goes, not what it points at.
fn clear_slot(path: impl AsRef<Path>, subject: &str) -> Result<()> {
    let path = path.as_ref();
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => {
            return Err(err).with_context(|| format!("cannot inspect the path of {subject}"))
        }
    };
    // `symlink_metadata` says dir only for a real directory, and `remove_dir_all` does not
    // follow the symlinks it finds inside.
    let removed = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    removed.with_context(|| format!("cannot remove what {subject} replaces"))
}

/// Empties `dir` for an opaque whiteout, sparing what this same layer unpacked into it.
fn clear_lower(
    dir: &Path,
    relative: &Utf8Path,
    unpacked: &HashSet<Utf8PathBuf>,
    subject: &str,
) -> Result<()> {
    let listing =
        fs::read_dir(dir).with_context(|| format!("cannot list the directory of {subject}"))?;
    for child in listing {
        let child = child.with_context(|| format!("cannot list the directory of {subject}"))?;
        let path = child.path();
        let kept = child
            .file_name()
            .to_str()
            .map(|name| relative.join(name))
            .filter(|child_relative| unpacked.contains(child_relative));
        match kept {
            None => clear_slot(&path, subject)?,
            Some(child_relative) => {
                let meta = fs::symlink_metadata(&path)
                    .with_context(|| format!("cannot inspect the directory of {subject}"))?;
                if meta.is_dir() {
                    clear_lower(&path, &child_relative, unpacked, subject)?;
                }
            }
        }
    }
    Ok(())
}

/// Counts the decompressed tar stream against the metadata budget shared by all layers.
struct Budgeted<'a, R> {
    inner: R,
    budget: &'a Cell<u64>,
    exhausted: &'a Cell<bool>,
}

impl<R: Read> Read for Budgeted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        match self.budget.get().checked_sub(read as u64) {
            Some(left) => {
                self.budget.set(left);
                Ok(read)
            }
            None => {
                self.exhausted.set(true);
                Err(io::Error::other("the layer's tar data is over its budget"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::os::unix::fs::MetadataExt;
    use tar::{EntryType, Header};

    const MIB: u64 = 1024 * 1024;

    enum E<'a> {
        Dir(&'a str, u32),
        File(&'a str, &'a [u8], u32),
        Symlink(&'a str, &'a str),
        Link(&'a str, &'a str),
        Other(&'a str, EntryType, Vec<u8>),
    }

    /// Writes names into the raw header fields: `set_path` refuses the `..` and absolute names
    /// that these tests need to feed in.
    fn header(name: &str, kind: EntryType, size: u64, mode: u32, link: Option<&str>) -> Header {
        let mut header = Header::new_gnu();
        let old = header.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(mode);
        header.set_cksum();
        header
    }

    fn tar_of(entries: &[E]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in entries {
            let (header, data): (Header, &[u8]) = match entry {
                E::Dir(name, mode) => (header(name, EntryType::Directory, 0, *mode, None), &[]),
                E::File(name, data, mode) => (
                    header(name, EntryType::Regular, data.len() as u64, *mode, None),
                    data,
                ),
                E::Symlink(name, target) => (
                    header(name, EntryType::Symlink, 0, 0o777, Some(target)),
                    &[],
                ),
                E::Link(name, target) => {
                    (header(name, EntryType::Link, 0, 0o644, Some(target)), &[])
                }
                E::Other(name, kind, data) => (
                    header(name, *kind, data.len() as u64, 0o644, None),
                    data.as_slice(),
                ),
            };
            builder.append(&header, data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        rootfs: Utf8PathBuf,
        sentinel: Utf8PathBuf,
        unpacker: Unpacker,
    }

    fn fixture(limits: Limits) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let base = Utf8PathBuf::from_path_buf(dir.path().canonicalize().unwrap()).unwrap();
        let rootfs = base.join("rootfs");
        let sentinel = base.join("sentinel");
        fs::create_dir(&rootfs).unwrap();
        fs::create_dir_all(sentinel.join("d")).unwrap();
        fs::write(sentinel.join("keep"), "keep").unwrap();
        fs::write(sentinel.join("d/a"), "a").unwrap();
        fs::write(sentinel.join("d/b"), "b").unwrap();
        let unpacker = Unpacker::new(&rootfs, limits).unwrap();
        Fixture {
            _dir: dir,
            rootfs,
            sentinel,
            unpacker,
        }
    }

    fn roomy() -> Limits {
        Limits {
            max_total_bytes: 64 * MIB,
            max_entries: 1000,
        }
    }

    /// Lists a tree without following symlinks: one line per path, with kind, mode and content.
    fn tree(root: &Utf8Path) -> Vec<String> {
        fn walk(root: &Utf8Path, dir: &Utf8Path, out: &mut Vec<String>) {
            for child in dir.read_dir_utf8().unwrap() {
                let path = child.unwrap().into_path();
                let relative = path.strip_prefix(root).unwrap().to_string();
                let meta = fs::symlink_metadata(&path).unwrap();
                let mode = meta.mode() & 0o7777;
                if meta.file_type().is_symlink() {
                    let target = fs::read_link(&path).unwrap();
                    out.push(format!("{relative} -> {}", target.display()));
                } else if meta.is_dir() {
                    out.push(format!("{relative}/ {mode:o}"));
                    walk(root, &path, out);
                } else {
                    let data = fs::read_to_string(&path).unwrap();
                    out.push(format!("{relative} {mode:o} {data:?}"));
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out.sort();
        out
    }

    fn sentinel_tree() -> Vec<String> {
        vec![
            "d/ 755".to_string(),
            "d/a 644 \"a\"".to_string(),
            "d/b 644 \"b\"".to_string(),
            "keep 644 \"keep\"".to_string(),
        ]
    }

    fn apply(fx: &mut Fixture, entries: &[E]) -> Result<()> {
        fx.unpacker
            .apply_layer(tar_of(entries).as_slice(), LAYER_TAR)
    }

    fn assert_refused(result: Result<()>, expected: &str) {
        let err = format!("{:#}", result.expect_err("the layer was unpacked"));
        assert_eq!(err, expected);
    }

    #[test]
    fn whiteout_through_a_symlink_is_refused() {
        let mut fx = fixture(roomy());
        let sentinel = fx.sentinel.clone();
        apply(&mut fx, &[E::Symlink("v1", sentinel.as_str())]).unwrap();
        let result = apply(&mut fx, &[E::File("v1/.wh.keep", b"", 0o644)]);
        assert_refused(
            result,
            r#"layer entry "v1/.wh.keep" goes through the symlink "v1"; refusing to unpack"#,
        );
        assert_eq!(tree(&fx.sentinel), sentinel_tree());
    }

    #[test]
    fn opaque_whiteout_through_a_symlink_is_refused() {
        let mut fx = fixture(roomy());
        let target = fx.sentinel.join("d");
        let result = apply(
            &mut fx,
            &[
                E::Symlink("v2", target.as_str()),
                E::File("v2/.wh..wh..opq", b"", 0o644),
            ],
        );
        assert_refused(
            result,
            r#"layer entry "v2/.wh..wh..opq" goes through the symlink "v2"; refusing to unpack"#,
        );
        assert_eq!(tree(&fx.sentinel), sentinel_tree());
    }

    #[test]
    fn file_through_a_symlink_is_refused() {
        let mut fx = fixture(roomy());
        let sentinel = fx.sentinel.clone();
        let result = apply(
            &mut fx,
            &[
                E::Dir("a/", 0o755),
                E::Symlink("a/v3", sentinel.as_str()),
                E::File("a/v3/evil", b"evil", 0o644),
            ],
        );
        assert_refused(
            result,
            r#"layer entry "a/v3/evil" goes through the symlink "a/v3"; refusing to unpack"#,
        );
        // Nor through a file that stands where a directory should.
        let result = apply(
            &mut fx,
            &[E::File("f", b"", 0o644), E::File("f/x", b"", 0o644)],
        );
        assert_refused(
            result,
            r#"layer entry "f/x" goes through "f", which is not a directory; refusing to unpack"#,
        );
        assert_eq!(tree(&fx.sentinel), sentinel_tree());
    }

    #[test]
    fn dot_dot_is_refused() {
        let mut fx = fixture(roomy());
        let result = apply(&mut fx, &[E::File("../evil", b"evil", 0o644)]);
        assert_refused(
            result,
            r#"layer entry "../evil" has a ".." component; refusing to unpack"#,
        );
        let result = apply(
            &mut fx,
            &[E::File("./x/../../sentinel/evil", b"evil", 0o644)],
        );
        assert_refused(
            result,
            r#"layer entry "./x/../../sentinel/evil" has a ".." component; refusing to unpack"#,
        );
        assert!(!fx.rootfs.parent().unwrap().join("evil").exists());
        assert_eq!(tree(&fx.rootfs), Vec::<String>::new());
        assert_eq!(tree(&fx.sentinel), sentinel_tree());
    }

    #[test]
    fn absolute_path_is_refused() {
        let mut fx = fixture(roomy());
        let evil = fx.sentinel.join("evil");
        let result = apply(&mut fx, &[E::File(evil.as_str(), b"evil", 0o644)]);
        assert_refused(
            result,
            &format!(
                "layer entry {:?} is an absolute path; refusing to unpack",
                evil.as_str()
            ),
        );
        assert_eq!(tree(&fx.sentinel), sentinel_tree());
    }

    #[test]
    fn hard_links_out_of_the_rootfs_are_refused() {
        let mut fx = fixture(roomy());
        let keep = fx.sentinel.join("keep");
        let cases = [
            (
                "../../sentinel/keep".to_string(),
                r#"layer entry "h" is a hard link to "../../sentinel/keep", which has a ".." component; refusing to unpack"#.to_string(),
            ),
            (
                keep.to_string(),
                format!(r#"layer entry "h" is a hard link to {:?}, which is an absolute path; refusing to unpack"#, keep.as_str()),
            ),
            (
                "s/keep".to_string(),
                r#"layer entry "h" is a hard link to "s/keep", which goes through the symlink "s"; refusing to unpack"#.to_string(),
            ),
            (
                "sk".to_string(),
                r#"layer entry "h" is a hard link to "sk", which is not a regular file in the rootfs; refusing to unpack"#.to_string(),
            ),
            (
                "missing".to_string(),
                r#"layer entry "h" is a hard link to "missing", which is not a regular file in the rootfs; refusing to unpack"#.to_string(),
            ),
        ];
        let sentinel = fx.sentinel.clone();
        apply(
            &mut fx,
            &[
                E::Symlink("s", sentinel.as_str()),
                E::Symlink("sk", keep.as_str()),
            ],
        )
        .unwrap();
        for (target, expected) in cases {
            assert_refused(apply(&mut fx, &[E::Link("h", &target)]), &expected);
        }
        assert!(!fx.rootfs.join("h").exists());
        assert_eq!(fs::metadata(&keep).unwrap().nlink(), 1);
        assert_eq!(tree(&fx.sentinel), sentinel_tree());
    }

    #[test]
    fn writing_onto_a_symlink_replaces_it() {
        let mut fx = fixture(roomy());
        let keep = fx.sentinel.join("keep");
        let d = fx.sentinel.join("d");
        apply(
            &mut fx,
            &[E::Symlink("f", keep.as_str()), E::Symlink("d", d.as_str())],
        )
        .unwrap();
        apply(
            &mut fx,
            &[
                E::File("f", b"new", 0o600),
                E::Dir("d", 0o750),
                E::File("d/a", b"inside", 0o644),
            ],
        )
        .unwrap();
        assert_eq!(
            tree(&fx.rootfs),
            ["d/ 750", "d/a 644 \"inside\"", "f 600 \"new\""]
        );
        assert_eq!(tree(&fx.sentinel), sentinel_tree());
    }

    #[test]
    fn oversized_gzip_layer_is_refused_mid_copy() {
        let mut fx = fixture(Limits {
            max_total_bytes: MIB,
            max_entries: 100,
        });
        let zeros = vec![0; 2 * MIB as usize];
        let layer = gzip(&tar_of(&[E::File("big", &zeros, 0o644)]));
        let result = fx.unpacker.apply_layer(layer.as_slice(), LAYER_GZIP);
        assert_refused(
            result,
            r#"the image's layers unpack to more than 1048576 bytes; stopped at layer entry "big""#,
        );
        assert_eq!(tree(&fx.rootfs), Vec::<String>::new());
        assert_eq!(tree(&fx.sentinel), sentinel_tree());
    }

    #[test]
    fn limits_add_up_across_layers() {
        let mut fx = fixture(Limits {
            max_total_bytes: MIB,
            max_entries: 3,
        });
        let data = vec![7; 600 * 1024];
        let layer = gzip(&tar_of(&[E::File("one", &data, 0o644)]));
        fx.unpacker
            .apply_layer(layer.as_slice(), DOCKER_LAYER_GZIP)
            .unwrap();
        let layer = gzip(&tar_of(&[E::File("two", &data, 0o644)]));
        let result = fx.unpacker.apply_layer(layer.as_slice(), DOCKER_LAYER_GZIP);
        assert_refused(
            result,
            r#"the image's layers unpack to more than 1048576 bytes; stopped at layer entry "two""#,
        );
        assert!(!fx.rootfs.join("two").exists());
        let result = apply(&mut fx, &[E::Dir("a", 0o755), E::Dir("b", 0o755)]);
        assert_refused(
            result,
            r#"the image's layers hold more than 3 entries; stopped at layer entry "b""#,
        );
    }

    #[test]
    fn oversized_metadata_is_refused_before_it_is_read_whole() {
        let mut fx = fixture(Limits {
            max_total_bytes: MIB,
            max_entries: 2,
        });
        // A pax record the tar crate would read into memory whole.
        let pax = vec![b'x'; 2 * MIB as usize];
        let layer = gzip(&tar_of(&[
            E::Other("pax", EntryType::XHeader, pax),
            E::File("f", b"", 0o644),
        ]));
        let result = fx.unpacker.apply_layer(layer.as_slice(), LAYER_GZIP);
        assert_refused(
            result,
            "the image's layers hold more than 1056768 bytes of tar metadata; refusing to unpack",
        );
    }

    #[test]
    fn layers_apply_with_whiteouts() {
        let mut fx = fixture(roomy());
        apply(
            &mut fx,
            &[
                E::Dir("./etc/", 0o755),
                E::File("./etc/kept", b"kept", 0o644),
                E::File("./etc/gone", b"gone", 0o644),
                E::Symlink("./etc/gone-link", "gone"),
                E::Dir("./opq/", 0o755),
                E::File("./opq/old", b"old", 0o644),
                E::File("./opq/sub/old2", b"old2", 0o644),
                E::File("bin/server", b"srv", 0o6755),
                E::Symlink("bin/link", "server"),
                E::Link("bin/hard", "./bin/server"),
                E::Other("null", EntryType::Char, Vec::new()),
                E::Other("fifo", EntryType::Fifo, Vec::new()),
                E::Dir("tmp", 0o1777),
            ],
        )
        .unwrap();
        apply(
            &mut fx,
            &[
                E::File("etc/.wh.gone", b"", 0o644),
                E::File("etc/.wh.gone-link", b"", 0o644),
                E::File("etc/.wh.never-there", b"", 0o644),
                E::File("nowhere/.wh.x", b"", 0o644),
                // Before the marker on purpose: this layer's own entries must survive it.
                E::File("opq/new", b"new", 0o640),
                E::File("opq/sub/deep", b"deep", 0o644),
                E::File("opq/.wh..wh..opq", b"", 0o644),
                // A whiteout spares what the same layer unpacked.
                E::File("etc/late", b"late", 0o644),
                E::File("etc/.wh.late", b"", 0o644),
            ],
        )
        .unwrap();
        assert_eq!(
            tree(&fx.rootfs),
            [
                "bin/ 755",
                "bin/hard 755 \"srv\"",
                "bin/link -> server",
                "bin/server 755 \"srv\"",
                "etc/ 755",
                "etc/kept 644 \"kept\"",
                "etc/late 644 \"late\"",
                "opq/ 755",
                "opq/new 640 \"new\"",
                "opq/sub/ 755",
                "opq/sub/deep 644 \"deep\"",
                "tmp/ 777",
            ]
        );
        let server = fs::metadata(fx.rootfs.join("bin/server")).unwrap();
        let hard = fs::metadata(fx.rootfs.join("bin/hard")).unwrap();
        assert_eq!((server.dev(), server.ino()), (hard.dev(), hard.ino()));
        assert_eq!(tree(&fx.sentinel), sentinel_tree());
    }

    #[test]
    fn whiteouts_of_dot_names_are_refused() {
        let mut fx = fixture(roomy());
        assert_refused(
            apply(&mut fx, &[E::File("a/.wh...", b"", 0o644)]),
            r#"layer entry "a/.wh..." is not a valid whiteout; refusing to unpack"#,
        );
    }

    #[test]
    fn rootfs_must_be_empty_and_media_type_known() {
        let mut fx = fixture(roomy());
        assert_refused(
            fx.unpacker
                .apply_layer(&b""[..], "application/vnd.oci.image.layer.v1.tar+zstd"),
            r#"unsupported layer media type "application/vnd.oci.image.layer.v1.tar+zstd""#,
        );
        let err = Unpacker::new(&fx.sentinel, roomy()).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!("the rootfs {:?} is not empty", fx.sentinel)
        );
    }
}
