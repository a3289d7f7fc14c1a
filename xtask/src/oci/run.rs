//! Running a published image's binary on this machine, for `verify --run`:
//! the layers pulled by digest and unpacked by the safe extractor, the
//! binary run in the sandbox. The caller decides whether the image is
//! trusted enough to get here.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::oci::client::Client;
use crate::oci::subject::{PlatformImage, Subject};
use crate::oci::unpack::{Limits, Unpacker};
use crate::support::config::Config;
use crate::support::sandbox::{NetworkIsolation, Sandbox};
use crate::support::tools;

/// The most a verified image's layers may unpack to: the server image is a
/// few MB, and a layer that inflates past this is an attack, not an image.
const UNPACK_LIMITS: Limits = Limits {
    max_total_bytes: 512 * 1024 * 1024,
    max_entries: 100_000,
};

/// How long `/server version --json` may take, under qemu included.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Pulls one platform by digest, unpacks its layers safely into a rootfs
/// under `dir`, and runs its server's `version --json` in the sandbox
/// (under QEMU for arm64 on another host). Returns what it printed.
pub fn version_json(
    config: &Config,
    client: &Client,
    subject: &Subject,
    platform: &PlatformImage,
    dir: &Utf8Path,
) -> Result<String> {
    let binary = extract_binary(config, client, subject, platform, dir)?;
    let emulator = if platform.platform.is_host() {
        None
    } else if platform.platform.arch == "arm64" {
        Some(tools::QEMU_AARCH64.find()?)
    } else {
        bail!(
            "cannot run a {} binary on this {} host",
            platform.platform,
            std::env::consts::ARCH
        )
    };
    let sandbox = Sandbox {
        timeout: RUN_TIMEOUT,
        emulator,
    };
    let (output, isolation) = sandbox
        .run(&binary, &["version", "--json"])
        .with_context(|| format!("/{} version --json failed", config.binary))?;
    match isolation.network {
        NetworkIsolation::Namespace => eprintln!(
            "  {}: ran /{} in an empty directory, with no environment and no network, for at most {}s",
            platform.platform,
            config.binary,
            RUN_TIMEOUT.as_secs()
        ),
        NetworkIsolation::None { why } => eprintln!(
            "  {}: ran /{} in an empty directory, with no environment, for at most {}s; not isolated from the network: {why}",
            platform.platform,
            config.binary,
            RUN_TIMEOUT.as_secs()
        ),
    }
    Ok(output)
}

/// Pulls one platform by digest and unpacks its layers with the safe
/// extractor into `dir`/rootfs; returns the path of its server binary,
/// which is only read (scanned), never run, by this function.
pub fn extract_binary(
    config: &Config,
    client: &Client,
    subject: &Subject,
    platform: &PlatformImage,
    dir: &Utf8Path,
) -> Result<Utf8PathBuf> {
    let rootfs = dir.join("rootfs");
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs).with_context(|| format!("cannot clear {rootfs}"))?;
    }
    std::fs::create_dir_all(&rootfs).with_context(|| format!("cannot create {rootfs}"))?;
    let mut unpacker = Unpacker::new(&rootfs, UNPACK_LIMITS)?;
    // Each layer is streamed to a file, checked against its digest, and
    // unpacked from there: never held in memory whole.
    let spool = dir.join("layer");
    for layer in &platform.manifest.layers {
        client.get_blob_to(
            &subject.reference.repository,
            &layer.digest,
            spool.as_std_path(),
        )?;
        let file = std::fs::File::open(&spool).with_context(|| format!("cannot open {spool}"))?;
        unpacker
            .apply_layer(std::io::BufReader::new(file), &layer.media_type)
            .with_context(|| format!("cannot unpack layer {}", layer.digest))?;
    }
    let _ = std::fs::remove_file(&spool);
    let binary: Utf8PathBuf = rootfs.join(&config.binary);
    let is_file = std::fs::symlink_metadata(&binary).is_ok_and(|m| m.is_file());
    if !is_file {
        bail!("the image has no regular file /{}", config.binary);
    }
    Ok(binary)
}
