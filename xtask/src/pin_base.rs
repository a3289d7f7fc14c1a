//! `cargo xtask pin-base`: resolves the configured base tag once and writes
//! its digest into `[workspace.metadata.release] base-digest`, so that every
//! later build uses exactly that image until someone pins again.

use anyhow::{bail, Context, Result};
use camino::Utf8Path;
use serde::Serialize;

use crate::flags;
use crate::oci::client::{Client, Reference};
use crate::support::config::Config;

pub fn run(flags: &flags::PinBase) -> Result<()> {
    let config = Config::load()?;
    let base = flags.base.clone().unwrap_or_else(|| config.base.clone());
    let reference = Reference::parse(&base)?;
    if reference.digest.is_some() {
        bail!("the base {base} already names a digest; give a tag, such as gcr.io/distroless/static-debian13:nonroot");
    }
    let client = Client::new(&reference.host, flags.registry.insecure)?;
    let digest = client
        .manifest_digest(&reference.repository, reference.reference())?
        .with_context(|| format!("the base {base} does not exist in its registry"))?;
    let manifest_path = config.manifest_path();
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("cannot read {manifest_path}"))?;
    let pinned = pin(&text, &base, &digest)?;
    let changed = pinned != text;
    if flags.dry_run {
        if flags.json {
            print_json(&base, &digest, &manifest_path, changed)?;
        } else {
            println!("would pin {base} to {digest} in {manifest_path}");
        }
        return Ok(());
    }
    if changed {
        std::fs::write(&manifest_path, pinned)
            .with_context(|| format!("cannot write {manifest_path}"))?;
    }
    if flags.json {
        print_json(&base, &digest, &manifest_path, changed)?;
    } else {
        println!("{base}@{digest}");
    }
    eprintln!("pinned in {manifest_path}; commit it so that every build uses this base");
    Ok(())
}

/// What `pin-base --json` prints.
#[derive(Serialize)]
struct Pinned<'a> {
    base: &'a str,
    digest: &'a str,
    manifest: &'a Utf8Path,
    /// Whether Cargo.toml changed (or, in a dry run, would change).
    changed: bool,
}

fn print_json(base: &str, digest: &str, manifest: &Utf8Path, changed: bool) -> Result<()> {
    let pinned = Pinned {
        base,
        digest,
        manifest,
        changed,
    };
    println!("{}", serde_json::to_string(&pinned)?);
    Ok(())
}

/// Rewrites the `base` and `base-digest` lines of the release table,
/// leaving every other byte of the manifest alone.
fn pin(manifest: &str, base: &str, digest: &str) -> Result<String> {
    let mut in_release = false;
    let (mut saw_base, mut saw_digest) = (false, false);
    let mut out = Vec::new();
    for line in manifest.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            in_release = trimmed.starts_with("[workspace.metadata.release]");
        }
        let key = trimmed.split('=').next().unwrap_or("").trim();
        if in_release && key == "base" {
            saw_base = true;
            out.push(format!("base = \"{base}\""));
        } else if in_release && key == "base-digest" {
            saw_digest = true;
            out.push(format!("base-digest = \"{digest}\""));
        } else {
            out.push(line.to_owned());
        }
    }
    if !saw_base {
        bail!("the root Cargo.toml has no `base = …` in [workspace.metadata.release]; add one");
    }
    if !saw_digest {
        bail!("the root Cargo.toml has no `base-digest = …` in [workspace.metadata.release]; add `base-digest = \"\"` below `base`");
    }
    let mut text = out.join("\n");
    if manifest.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::pin;

    const MANIFEST: &str = "[package]\nbase = \"untouched\"\n\n[workspace.metadata.release]\nimage = \"x\"\nbase = \"old:tag\"\nbase-digest = \"\"\n\n[profile.release]\nlto = true\n";

    #[test]
    fn pins_only_the_release_table() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let pinned = pin(MANIFEST, "reg/base:nonroot", &digest).unwrap();
        assert_eq!(
            pinned,
            format!("[package]\nbase = \"untouched\"\n\n[workspace.metadata.release]\nimage = \"x\"\nbase = \"reg/base:nonroot\"\nbase-digest = \"{digest}\"\n\n[profile.release]\nlto = true\n")
        );
        assert_eq!(pin(&pinned, "reg/base:nonroot", &digest).unwrap(), pinned);
    }

    #[test]
    fn a_manifest_without_the_digest_key_is_an_error() {
        let err = pin(
            "[workspace.metadata.release]\nbase = \"b\"\n",
            "b",
            "sha256:0",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "the root Cargo.toml has no `base-digest = …` in [workspace.metadata.release]; add `base-digest = \"\"` below `base`");
    }
}
