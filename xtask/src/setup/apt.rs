//! The Debian packages setup installs with apt, first and one at a time:
//! everything else it installs needs some of them.

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::support::tools;

const APT_PACKAGES: &[&str] = &[
    "git",
    "docker-registry",
    "skopeo",
    "umoci",
    "buildah",
    "qemu-user-static",
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev:arm64",
    "wrk",
    // PostgreSQL 15: the server's database tests run initdb and postgres.
    "postgresql",
    "hyperfine",
    // htpasswd: the bcrypt users of the test registry with Basic auth.
    "apache2-utils",
    // Used by the commands in docs/, which xtask/tests/doc_commands.rs runs.
    "jq",
    "gnupg",
    // The container engine of the engine tests (setup/engine.rs): podman
    // with runc, netavark and aardvark-dns for compose's networks and their
    // DNS, iptables for published ports; mmdebstrap builds the images that
    // cannot be pulled here (setup/images.rs).
    "podman",
    "runc",
    "netavark",
    "aardvark-dns",
    "iptables",
    "mmdebstrap",
    // The pause process of podman's pods (`podman kube play`).
    "catatonit",
];

pub fn missing_packages(sh: &Shell) -> Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    let format = "${Status}";
    for package in APT_PACKAGES {
        let status = cmd!(sh, "dpkg-query -W -f {format} {package}")
            .quiet()
            .ignore_status()
            .ignore_stderr()
            .read()
            .unwrap_or_default();
        if !status.contains("install ok installed") {
            missing.push(*package);
        }
    }
    // The docker CLI (for `docker compose config` and the docs' docker
    // commands) is often installed outside apt; Debian's comes with an
    // engine that is installed but never started here.
    if tools::find_opt("docker").is_none() {
        missing.push("docker.io");
    }
    Ok(missing)
}

pub fn install(sh: &Shell, packages: &[&str], dry_run: bool) -> Result<()> {
    let sudo = if is_root(sh) { "" } else { "sudo " };
    let needs_arm64 = packages.iter().any(|p| p.ends_with(":arm64"));
    let foreign = cmd!(sh, "dpkg --print-foreign-architectures")
        .quiet()
        .read()
        .unwrap_or_default();
    let add_arch = needs_arm64 && !foreign.lines().any(|a| a.trim() == "arm64");
    if dry_run {
        if add_arch {
            println!("would run: {sudo}dpkg --add-architecture arm64");
        }
        println!(
            "would run: {sudo}apt-get update && {sudo}apt-get install -y {}",
            packages.join(" ")
        );
        return Ok(());
    }
    if add_arch {
        privileged(sh, &["dpkg", "--add-architecture", "arm64"])
            .run()
            .context("cannot add the arm64 dpkg architecture")?;
    }
    privileged(sh, &["apt-get", "update", "-q"])
        .run()
        .context("apt-get update failed")?;
    privileged(
        sh,
        &["apt-get", "install", "-y", "-q", "--no-install-recommends"],
    )
    .args(packages)
    .run()
    .context("apt-get install failed")?;
    Ok(())
}

/// Runs as root directly, otherwise through sudo.
fn privileged<'a>(sh: &'a Shell, argv: &[&str]) -> xshell::Cmd<'a> {
    let command = if is_root(sh) {
        sh.cmd(argv[0]).args(&argv[1..])
    } else {
        sh.cmd("sudo").args(argv)
    };
    command.env("DEBIAN_FRONTEND", "noninteractive")
}

fn is_root(sh: &Shell) -> bool {
    cmd!(sh, "id -u")
        .quiet()
        .read()
        .map(|u| u.trim() == "0")
        .unwrap_or(false)
}
