//! Which rustc, cargo and linker build each target: configured per target,
//! else the one on PATH when its sysroot has the target's std, else
//! Debian's `rustc-web` (whose sysroot holds the aarch64 std).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use xshell::{cmd, Shell};

use crate::support::config::{Config, Platform};
use crate::support::tools;

/// A rustc and the cargo that goes with it.
#[derive(Debug, Clone)]
pub struct Toolchain {
    pub cargo: PathBuf,
    pub rustc: PathBuf,
    /// Where it came from, for messages.
    pub origin: &'static str,
}

pub fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

pub fn default_toolchain() -> Toolchain {
    // Under `cargo xtask`, CARGO is the cargo that runs us.
    let cargo = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("cargo"));
    let rustc = std::env::var_os("RUSTC")
        .map(PathBuf::from)
        .or_else(|| tools::find_opt("rustc"))
        .unwrap_or_else(|| PathBuf::from("rustc"));
    Toolchain {
        cargo,
        rustc,
        origin: "the default toolchain",
    }
}

/// The toolchain for `triple`: the one named in the environment or the
/// config, else the default one if its sysroot has the target's std, else
/// the system one (Debian's rustc-web at /usr/bin) if it has.
pub fn select_toolchain(config: &Config, triple: &str) -> Result<Toolchain> {
    let target_env = triple.to_uppercase().replace('-', "_");
    if let Ok(rustc) = std::env::var(format!("XTASK_RUSTC_{target_env}")) {
        let rustc = PathBuf::from(rustc);
        let cargo = std::env::var_os(format!("XTASK_CARGO_{target_env}"))
            .map(PathBuf::from)
            .unwrap_or_else(|| rustc.with_file_name("cargo"));
        let toolchain = Toolchain {
            cargo,
            rustc,
            origin: "XTASK_RUSTC_<TARGET>",
        };
        return require_std(toolchain, triple);
    }
    if let Some(rustc) = config.toolchains.get(triple).and_then(|t| t.rustc.as_ref()) {
        let rustc = PathBuf::from(rustc);
        let cargo = config.toolchains[triple]
            .cargo
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(|| rustc.with_file_name("cargo"));
        let toolchain = Toolchain {
            cargo,
            rustc,
            origin: "[workspace.metadata.release.toolchains]",
        };
        return require_std(toolchain, triple);
    }
    let candidates = [
        default_toolchain(),
        Toolchain {
            cargo: "/usr/bin/cargo".into(),
            rustc: "/usr/bin/rustc".into(),
            origin: "the system toolchain",
        },
    ];
    if let Some(found) = candidates.iter().find(|c| has_std(&c.rustc, triple)) {
        return Ok(found.clone());
    }
    bail!(
        "no installed toolchain has the standard library for {triple}: run `rustup target add {triple}`, install Debian's rustc-web with libstd-rust-web-dev for that architecture (`cargo xtask setup`), or build with `--strategy cross`"
    )
}

fn require_std(toolchain: Toolchain, triple: &str) -> Result<Toolchain> {
    if !has_std(&toolchain.rustc, triple) {
        bail!(
            "{} ({}) has no standard library for {triple}; point it at a toolchain that has one",
            toolchain.rustc.display(),
            toolchain.origin
        );
    }
    Ok(toolchain)
}

fn has_std(rustc: &Path, triple: &str) -> bool {
    let Ok(sh) = Shell::new() else {
        return false;
    };
    let Ok(sysroot) = cmd!(sh, "{rustc} --print sysroot")
        .quiet()
        .ignore_stderr()
        .read()
    else {
        return false;
    };
    let sysroot = PathBuf::from(sysroot.trim());
    let lib = sysroot.join("lib/rustlib").join(triple).join("lib");
    std::fs::read_dir(lib)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
        })
        .unwrap_or(false)
}

pub fn find_linker(config: &Config, platform: &Platform) -> Result<String> {
    let triple = platform.triple();
    if let Some(configured) = config.toolchains.get(triple).and_then(|t| t.linker.clone()) {
        return Ok(configured);
    }
    // `<triple>-gcc`, then the Debian/Ubuntu spelling without the vendor.
    let candidates = [
        format!("{triple}-gcc"),
        format!("{}-linux-gnu-gcc", platform.machine()),
    ];
    for candidate in &candidates {
        if let Some(path) = tools::find_opt(candidate) {
            return Ok(path.display().to_string());
        }
    }
    bail!(
        "no linker for {triple}: install {} (`cargo xtask setup` installs gcc-{}-linux-gnu), or set linker in [workspace.metadata.release.toolchains.{triple}]",
        candidates[1],
        platform.machine()
    )
}
