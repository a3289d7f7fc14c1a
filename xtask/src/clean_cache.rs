//! `cargo xtask clean-cache`: empties target/cache/, the archives and image
//! layers kept so that a warm build does not compress them again. Nothing
//! else under target/ is touched.

use anyhow::{Context, Result};
use camino::Utf8Path;

use crate::flags;
use crate::support::cache::Cache;
use crate::support::config::Config;

pub fn run(flags: &flags::CleanCache) -> Result<()> {
    let config = Config::load()?;
    let cache = Cache::in_target(&config.target_dir);
    let dir = config.relative(cache.dir());
    if flags.dry_run {
        match size(cache.dir())? {
            None => println!("{dir} is already empty"),
            Some((files, bytes)) => {
                println!("would remove {dir} ({files} files, {bytes} bytes)")
            }
        }
        return Ok(());
    }
    if cache.clear()? {
        println!("removed {dir}");
    } else {
        println!("{dir} is already empty");
    }
    Ok(())
}

/// The files under `dir` and their bytes; None when it does not exist.
fn size(dir: &Utf8Path) -> Result<Option<(u64, u64)>> {
    if !dir.exists() {
        return Ok(None);
    }
    let mut totals = (0, 0);
    let mut pending = vec![dir.to_owned()];
    while let Some(folder) = pending.pop() {
        for entry in folder
            .read_dir_utf8()
            .with_context(|| format!("cannot list {folder}; check its permissions"))?
        {
            let entry = entry.with_context(|| format!("cannot list {folder}"))?;
            // symlink_metadata: a link is counted, never followed.
            let meta = entry
                .path()
                .symlink_metadata()
                .with_context(|| format!("cannot read {}", entry.path()))?;
            if meta.is_dir() {
                pending.push(entry.path().to_owned());
            } else {
                totals.0 += 1;
                totals.1 += meta.len();
            }
        }
    }
    Ok(Some(totals))
}
