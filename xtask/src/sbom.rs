//! `cargo xtask sbom`: the per-platform SBOMs (CycloneDX 1.6 and SPDX 2.3)
//! of the crate graph compiled into each binary, written to target/sbom/.

use anyhow::Result;
use camino::Utf8PathBuf;
use serde::Serialize;

use crate::flags;
use crate::supply_chain::sbom::{check_image_digest, cyclonedx_path, spdx_path, write, ImageRef};
use crate::support::config::{Config, Platform};
use crate::support::progress::Steps;

/// One platform's SBOMs, as `sbom --json` lists them.
#[derive(Serialize)]
pub struct Written {
    pub platform: String,
    pub cyclonedx: Utf8PathBuf,
    pub spdx: Utf8PathBuf,
}

pub fn run(flags: &flags::Sbom) -> Result<()> {
    let config = Config::load()?;
    let platforms = match &flags.platform {
        Some(platform) => vec![platform.parse::<Platform>()?],
        None => config.platforms.clone(),
    };
    if let Some(digest) = &flags.image_digest {
        check_image_digest(digest)?;
    }
    let out_dir = flags
        .out
        .clone()
        .unwrap_or_else(|| config.target_dir.join("sbom"));
    if flags.dry_run {
        println!("# cargo metadata and cargo tree are read; nothing is written");
        for platform in &platforms {
            let triple = platform.triple();
            println!(
                "cargo metadata --format-version 1 --locked --filter-platform {triple} --manifest-path {}",
                config.manifest_path()
            );
            println!(
                "cargo tree --locked --package {} --target {triple} --edges normal --prefix none --format '{{p}}|{{f}}'",
                config.package
            );
            println!("would write {}", cyclonedx_path(&out_dir, platform));
            println!("would write {}", spdx_path(&out_dir, platform));
        }
        return Ok(());
    }
    // Run by hand, the SBOM names the configured repository: nothing tells
    // this task where the digest was pushed.
    let image = flags.image_digest.as_ref().map(|digest| ImageRef {
        name: config.image.clone(),
        digest: digest.clone(),
    });
    let mut steps = Steps::new(platforms.len());
    let mut written = Vec::new();
    for platform in &platforms {
        let files = steps.run(&format!("{platform}: SBOM"), || {
            write(&config, platform, image.as_ref(), &out_dir)
        })?;
        written.push((platform.clone(), files));
    }
    if flags.json {
        let report: Vec<Written> = written
            .iter()
            .map(|(platform, files)| Written {
                platform: platform.to_string(),
                cyclonedx: files.cyclonedx.clone(),
                spdx: files.spdx.clone(),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for (_, files) in &written {
            println!("{}", files.cyclonedx);
            println!("{}", files.spdx);
        }
    }
    Ok(())
}
