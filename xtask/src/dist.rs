//! `cargo xtask dist`: static, stripped, reproducible binaries for every
//! configured platform, with archives, SHA256SUMS and dist.json.

use anyhow::Result;

use crate::build::binaries::{build, select_platforms, DistOptions};
use crate::flags;
use crate::support::config::Config;

pub fn run(flags: &flags::Dist) -> Result<()> {
    let config = Config::load()?;
    let platforms = select_platforms(&config, &flags.platforms)?;
    let options = DistOptions {
        strategy: flags.strategy,
        verify: !flags.no_verify,
        dry_run: flags.dry_run,
    };
    let dist = build(&config, &platforms, options)?;
    if flags.dry_run {
        return Ok(());
    }
    if flags.json {
        println!("{}", serde_json::to_string_pretty(&dist.artifacts)?);
    } else {
        for artifact in &dist.artifacts {
            println!(
                "{}  {:>9}  {}",
                artifact.sha256, artifact.size, artifact.path
            );
        }
        println!(
            "verify with: (cd {} && sha256sum -c SHA256SUMS)",
            config.relative(&config.dist_dir())
        );
    }
    Ok(())
}
