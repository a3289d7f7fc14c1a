//! `cargo xtask clean-cache`: empties target/cache/, the archives and image
//! layers kept so that a warm build does not compress them again. Nothing
//! else under target/ is touched.

use anyhow::Result;

use crate::flags;
use crate::support::cache::Cache;
use crate::support::config::Config;

pub fn run(_flags: &flags::CleanCache) -> Result<()> {
    let config = Config::load()?;
    let cache = Cache::in_target(&config.target_dir);
    let dir = config.relative(cache.dir());
    if cache.clear()? {
        println!("removed {dir}");
    } else {
        println!("{dir} is already empty");
    }
    Ok(())
}
