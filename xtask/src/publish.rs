//! The image task's driver: build the layout, then push and tag it.

use anyhow::{bail, Result};
use serde_json::json;

use crate::config::{Config, Platform};
use crate::dist;
use crate::flags::{self, Builder};
use crate::image::{self, Base, BaseFetcher, Options};
use crate::oci::Layout;

pub fn run_image(flags: &flags::Image) -> Result<()> {
    if flags.builder == Builder::Buildx {
        bail!("--builder buildx is not wired up yet");
    }
    let config = Config::load()?;
    let platforms = dist::select_platforms(&config, &flags.platforms)?;
    let base = flags
        .base
        .clone()
        .unwrap_or_else(|| configured_base(&config));
    let version = config.version.to_string();
    let out = config.target_dir.join("image/oci");
    let fetcher = NoRegistry;
    let options = Options {
        platforms,
        base,
        out,
        version: &version,
        fetcher: &fetcher,
    };
    let (_dist, built) = image::build(&config, &options)?;
    if flags.json {
        let platforms: Vec<_> = built
            .platforms
            .iter()
            .map(|p| json!({"platform": p.platform, "digest": p.digest}))
            .collect();
        println!(
            "{}",
            json!({"image": flags.registry.image.clone().unwrap_or(config.image.clone()), "digest": built.digest, "platforms": platforms, "tags": []})
        );
    } else {
        println!("{}", built.digest);
    }
    Ok(())
}

/// The configured base, pinned to its digest when the config has one.
pub fn configured_base(config: &Config) -> String {
    match &config.base_digest {
        Some(digest) => format!(
            "{}@{digest}",
            config.base.split('@').next().unwrap_or(&config.base)
        ),
        None => config.base.clone(),
    }
}

struct NoRegistry;

impl BaseFetcher for NoRegistry {
    fn fetch(&self, reference: &str, _platform: &Platform, _layout: &Layout) -> Result<Base> {
        bail!("cannot fetch the base {reference}: registry bases are not supported yet; use --base scratch or an OCI layout")
    }
}
