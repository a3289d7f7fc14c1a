//! Writing files so that a crash or a re-run never leaves a half-written
//! one, and a warm run rewrites nothing.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

/// Writes through a per-process temporary file and a rename, so that a
/// concurrent run (or cosign reading it) never sees a half-written file.
pub fn write_atomically(path: &Utf8Path, bytes: &[u8]) -> Result<()> {
    let partial = camino::Utf8PathBuf::from(format!("{path}.{}.partial", std::process::id()));
    std::fs::write(&partial, bytes).with_context(|| format!("cannot write {partial}"))?;
    std::fs::rename(&partial, path).with_context(|| format!("cannot write {path}"))
}

/// Leaves an unchanged file alone, so that its mtime keeps meaning
/// "last changed" and a warm run writes nothing.
pub fn write_if_changed(path: &Utf8Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::read(path).ok().as_deref() != Some(data) {
        // Atomic: a concurrent run may be reading the file it replaces.
        write_unique(path, data)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {path}"))?;
    Ok(())
}

/// Writes through a temporary file unique to this process and call, then
/// renames: concurrent writers of the same entry write the same bytes, and
/// a reader sees the old file or the new one, never a part.
pub fn write_unique(path: &Utf8Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {parent}"))?;
    }
    let temporary = Utf8PathBuf::from(format!(
        "{path}.tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&temporary, bytes).with_context(|| format!("cannot write {temporary}"))?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot write {path}"))
}
