//! `cargo xtask release`. For now only `--dry-run`: the preflight and the
//! tag plan with reasons. The pipeline itself (dist, image, sign, attest,
//! verify, tag) is still to come.

use anyhow::{bail, Result};
use serde_json::json;

use crate::config::Config;
use crate::flags;
use crate::preflight;
use crate::registry::{Client, Reference};
use crate::tags::{self, Build};

pub fn run(flags: &flags::Release) -> Result<()> {
    if !flags.dry_run {
        bail!(
            "`cargo xtask release` is not implemented yet beyond --dry-run; run `cargo xtask release {} --dry-run` to see the preflight and the tag plan",
            flags.version
        );
    }
    let config = Config::load()?;
    let image = flags.registry.image.as_deref().unwrap_or(&config.image);
    let target = Reference::parse(image)?;
    let client = Client::new(&target.host, flags.registry.insecure)?;
    let preflight = preflight::check(&config, &flags.version, Some((&client, &target)))?;
    let published = tags::published(None, &target, Some(&client))?;
    let plan = tags::compute(
        &Build::Release(preflight.version.clone()),
        &preflight.head,
        &published,
    )?;

    if flags.json {
        println!(
            "{}",
            json!({
                "version": preflight.tag,
                "image": target.name(),
                "head": preflight.head,
                "dry_run": true,
                "preflight": preflight,
                "tags": plan.to_json(published.len()),
            })
        );
        return Ok(());
    }
    println!(
        "release {} of {} from {} (dry run: nothing is built, pushed or tagged)",
        preflight.tag,
        target.name(),
        preflight.head
    );
    println!("preflight:");
    for line in &preflight.passed {
        println!("  ok: {line}");
    }
    println!("tags, in the order they would be set:");
    for line in plan.table() {
        println!("  {line}");
    }
    Ok(())
}
