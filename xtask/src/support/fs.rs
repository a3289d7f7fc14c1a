//! Writing files so that a crash or a re-run never leaves a half-written
//! one, and a warm run rewrites nothing.

use anyhow::{Context, Result};
use camino::Utf8Path;

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
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {parent}"))?;
        }
        std::fs::write(path, data).with_context(|| format!("cannot write {path}"))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {path}"))?;
    Ok(())
}
