//! Which rustc, cargo and linker build each target: configured per target,
//! else the one on PATH when its sysroot has the target's std, else
//! Debian's `rustc-web` (whose sysroot holds the aarch64 std).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use xshell::{cmd, Shell};

use crate::support::config::{Config, Platform};
use crate::support::fs::write_unique;
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
        return require_std(config, toolchain, triple);
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
        return require_std(config, toolchain, triple);
    }
    let candidates = [
        default_toolchain(),
        Toolchain {
            cargo: "/usr/bin/cargo".into(),
            rustc: "/usr/bin/rustc".into(),
            origin: "the system toolchain",
        },
    ];
    if let Some(found) = candidates
        .iter()
        .find(|c| has_std(config, &c.rustc, triple))
    {
        return Ok(found.clone());
    }
    bail!(
        "no installed toolchain has the standard library for {triple}: run `rustup target add {triple}`, install Debian's rustc-web with libstd-rust-web-dev for that architecture (`cargo xtask setup`), or build with `--strategy cross`"
    )
}

fn require_std(config: &Config, toolchain: Toolchain, triple: &str) -> Result<Toolchain> {
    if !has_std(config, &toolchain.rustc, triple) {
        bail!(
            "{} ({}) has no standard library for {triple}; point it at a toolchain that has one",
            toolchain.rustc.display(),
            toolchain.origin
        );
    }
    Ok(toolchain)
}

/// The compiler rustup's `rustc` proxy would start, if that can be known
/// without asking it. Under rustup, as under `cargo xtask`, RUSTUP_HOME and
/// RUSTUP_TOOLCHAIN name it, and they outrank every other way rustup picks
/// a toolchain, so cargo started from here gets the same one. Returns the
/// path unchanged when it is not the proxy, and None for the proxy outside
/// rustup, whose answers may change with `rustup default`.
fn identifiable_rustc(rustc: &Path) -> Option<PathBuf> {
    let is_proxy = cargo_home().is_some_and(|home| rustc == home.join("bin").join("rustc"));
    if !is_proxy {
        return rustc.is_absolute().then(|| rustc.to_path_buf());
    }
    let rustup_home = std::env::var_os("RUSTUP_HOME")?;
    let name = std::env::var_os("RUSTUP_TOOLCHAIN")?;
    let real = PathBuf::from(rustup_home)
        .join("toolchains")
        .join(name)
        .join("bin/rustc");
    real.is_file().then_some(real)
}

/// What `rustc ARGS` prints, kept under target/cache/probes by the
/// compiler's identity, as cargo keeps `rustc -vV`: the answers change only
/// with the compiler, and each question otherwise costs a process start
/// (two through rustup's proxy) on every dist and image.
pub fn rustc_output(config: &Config, rustc: &Path, args: &[&str]) -> Result<String> {
    let real = identifiable_rustc(rustc);
    let cached = real.as_ref().map(|real| {
        let mut hasher = Sha256::new();
        hasher.update(executable_identity(real).as_bytes());
        for arg in args {
            hasher.update(format!("\0{arg}").as_bytes());
        }
        config
            .target_dir
            .join("cache/probes")
            .join(hex::encode(hasher.finalize()))
    });
    if let Some(output) = cached
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
    {
        return Ok(output);
    }
    let program = real.as_deref().unwrap_or(rustc);
    let sh = Shell::new()?;
    sh.set_var("PATH", tools::augmented_path());
    let output = cmd!(sh, "{program} {args...}")
        .quiet()
        .ignore_stderr()
        .read()
        .with_context(|| {
            format!(
                "`{} {}` failed; check the toolchain",
                rustc.display(),
                args.join(" ")
            )
        })?;
    // Never the first to create target/: a dry run in a fresh checkout
    // leaves nothing behind, and the next real build asks again.
    if let Some(path) = cached.filter(|_| config.target_dir.is_dir()) {
        write_unique(&path, output.as_bytes())?;
    }
    Ok(output)
}

/// A changed executable at the same path (an upgrade) changes its size or
/// its modification time.
pub fn executable_identity(path: &Path) -> String {
    let metadata = std::fs::metadata(path);
    let (size, modified) = match &metadata {
        Ok(m) => (
            m.len(),
            m.modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        ),
        Err(_) => (0, 0),
    };
    format!("{} {size} {modified}", path.display())
}

fn has_std(config: &Config, rustc: &Path, triple: &str) -> bool {
    let Ok(sysroot) = rustc_output(config, rustc, &["--print", "sysroot"]) else {
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use camino::Utf8Path;

    use super::*;

    /// A stand-in compiler that counts how often it is asked.
    fn counting_rustc(dir: &Path, answer: &str) -> PathBuf {
        let rustc = dir.join("rustc");
        let count = dir.join("count");
        std::fs::write(
            &rustc,
            format!(
                "#!/bin/sh\necho x >> '{}'\necho '{answer}'\n",
                count.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&rustc, std::fs::Permissions::from_mode(0o755)).unwrap();
        rustc
    }

    fn asked(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("count"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    #[test]
    fn a_probe_is_asked_once_until_the_compiler_changes() {
        let temp = tempfile::tempdir().unwrap();
        let mut config = Config::load().unwrap();
        config.target_dir = Utf8Path::from_path(temp.path()).unwrap().join("target");
        let bin = temp.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let rustc = counting_rustc(&bin, "/sysroot/one");

        // Without a target directory nothing is kept, and none is created.
        rustc_output(&config, &rustc, &["--print", "sysroot"]).unwrap();
        rustc_output(&config, &rustc, &["--print", "sysroot"]).unwrap();
        assert_eq!(asked(&bin), 2);
        assert!(!config.target_dir.exists());
        std::fs::create_dir_all(&config.target_dir).unwrap();
        std::fs::remove_file(bin.join("count")).unwrap();

        let first = rustc_output(&config, &rustc, &["--print", "sysroot"]).unwrap();
        assert_eq!(first, "/sysroot/one");
        assert_eq!(asked(&bin), 1);
        let again = rustc_output(&config, &rustc, &["--print", "sysroot"]).unwrap();
        assert_eq!(again, "/sysroot/one");
        assert_eq!(asked(&bin), 1, "a second probe must come from the cache");
        rustc_output(&config, &rustc, &["-vV"]).unwrap();
        assert_eq!(asked(&bin), 2, "other arguments are another question");

        // An upgrade in place: new bytes, so a new size, at the same path.
        std::thread::sleep(std::time::Duration::from_millis(10));
        let upgraded = counting_rustc(&bin, "/sysroot/two-longer");
        assert_eq!(upgraded, rustc);
        let after = rustc_output(&config, &rustc, &["--print", "sysroot"]).unwrap();
        assert_eq!(after, "/sysroot/two-longer");
        assert_eq!(asked(&bin), 3);
    }

    #[test]
    fn a_relative_compiler_is_never_cached() {
        let temp = tempfile::tempdir().unwrap();
        let mut config = Config::load().unwrap();
        config.target_dir = Utf8Path::from_path(temp.path()).unwrap().join("target");
        std::fs::create_dir_all(&config.target_dir).unwrap();
        assert_eq!(identifiable_rustc(Path::new("rustc")), None);
        let failed = rustc_output(&config, Path::new("/nowhere/rustc"), &["-vV"]).unwrap_err();
        assert!(
            failed
                .to_string()
                .starts_with("`/nowhere/rustc -vV` failed"),
            "{failed}"
        );
        assert!(!temp.path().join("target/cache/probes").exists());
    }
}
