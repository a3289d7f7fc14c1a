//! What decides the bytes of a release binary, hashed into one fingerprint,
//! so that dist skips cargo when nothing that could change them changed.
//!
//! Correctness comes first: anything that might change the binary is in
//! the fingerprint, even when cargo would call it no change. That is the
//! exact build command with its environment (the commit sha embedded in the
//! binary and SOURCE_DATE_EPOCH among it), `rustc -vV` of the toolchain, the
//! identity of the cargo and cargo-auditable executables, every file of the
//! server package, the workspace manifest, Cargo.lock, cargo's and rustup's
//! configuration files in the workspace, and the environment variables
//! cargo, rustc and C compilers read. A skip also requires the binary cargo
//! left to still have the digest recorded after the last build.

use std::path::Path;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::support::config::Config;
use crate::support::fs::write_unique;
use crate::support::tools;
use crate::support::{archive, cargo_env};

use super::toolchain::{executable_identity, rustc_output};

/// Files of the workspace, outside the package, that shape a build.
const WORKSPACE_FILES: [&str; 6] = [
    "Cargo.toml",
    "Cargo.lock",
    ".cargo/config.toml",
    ".cargo/config",
    "rust-toolchain.toml",
    "rust-toolchain",
];

/// Variables cargo and rustup set for the xtask itself when they run it:
/// they say how the xtask was started (`cargo xtask` from a shell, or from
/// within another `cargo xtask`), not how the server is built.
const RUN_ONLY_VARIABLES: [&str; 10] = [
    "CARGO",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_BIN_NAME",
    "CARGO_CRATE_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_RUSTC_CURRENT_DIR",
    "RUST_RECURSION_COUNT",
    "RUSTUP_TOOLCHAIN_SOURCE",
    "RUST_BACKTRACE",
];

/// Prefixes of the variables cargo, rustc, build scripts and C compilers read.
/// `LDFLAGS` rather than `LD`: cargo run sets LD_LIBRARY_PATH to the xtask's
/// own build directories, which says nothing about the server's build.
const BUILD_VARIABLE_PREFIXES: [&str; 10] = [
    "CARGO",
    "RUST",
    "CC",
    "CFLAGS",
    "CXX",
    "AR",
    "LDFLAGS",
    "TARGET_",
    "HOST_",
    "PKG_CONFIG",
];

/// The fingerprint of one platform's build.
pub fn of_build(config: &Config, command: &str, rustc: &Path, cargo: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut add = |label: &str, bytes: &[u8]| {
        hasher.update(format!("{label} {}\n", bytes.len()).as_bytes());
        hasher.update(bytes);
    };
    add("command", command.as_bytes());
    let version = rustc_output(config, rustc, &["-vV"])?;
    add("rustc -vV", version.as_bytes());
    let auditable = tools::find_opt("cargo-auditable");
    for program in [Some(cargo.to_path_buf()), auditable].into_iter().flatten() {
        add("program", executable_identity(&program).as_bytes());
    }
    for (name, value) in build_variables() {
        add(&format!("env {name}"), value.as_bytes());
    }
    for name in WORKSPACE_FILES {
        let path = config.workspace_root.join(name);
        if let Ok(bytes) = std::fs::read(&path) {
            add(&format!("file {name}"), &bytes);
        }
    }
    let package = config.workspace_root.join(&config.package);
    let mut files = Vec::new();
    list_files(&package, &mut files)?;
    files.sort();
    for file in files {
        let bytes = std::fs::read(&file).with_context(|| format!("cannot read {file}"))?;
        add(&format!("file {}", config.relative(&file)), &bytes);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// What the last build of a target left, and under which fingerprint.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BuildRecord {
    pub fingerprint: String,
    pub binary_sha256: String,
}

fn record_path(config: &Config, triple: &str) -> Utf8PathBuf {
    config
        .target_dir
        .join("cache/builds")
        .join(format!("{triple}.json"))
}

/// Whether `built` is what the last build under `fingerprint` left.
pub fn is_up_to_date(config: &Config, triple: &str, fingerprint: &str, built: &Utf8Path) -> bool {
    let Ok(text) = std::fs::read(record_path(config, triple)) else {
        return false;
    };
    let Ok(record) = serde_json::from_slice::<BuildRecord>(&text) else {
        return false;
    };
    record.fingerprint == fingerprint
        && std::fs::read(built)
            .is_ok_and(|bytes| archive::sha256_hex(&bytes) == record.binary_sha256)
}

/// Records a successful build, after cargo returned.
pub fn record_build(
    config: &Config,
    triple: &str,
    fingerprint: &str,
    built: &Utf8Path,
) -> Result<()> {
    let bytes =
        std::fs::read(built).with_context(|| format!("cannot read the built binary {built}"))?;
    let record = BuildRecord {
        fingerprint: fingerprint.to_owned(),
        binary_sha256: archive::sha256_hex(&bytes),
    };
    write_unique(&record_path(config, triple), &serde_json::to_vec(&record)?)
}

/// Where a passed run check of a binary is recorded: by the binary's
/// digest and what it had to report, so that another binary, or the same
/// one checked against another version or commit, is run again.
fn verified_path(config: &Config, binary_sha256: &str, version: &str, sha: &str) -> Utf8PathBuf {
    let mut hasher = Sha256::new();
    hasher.update(format!("{binary_sha256} {version} {sha}").as_bytes());
    config
        .target_dir
        .join("cache/verified")
        .join(hex::encode(hasher.finalize()))
}

pub fn was_verified(config: &Config, binary_sha256: &str, version: &str, sha: &str) -> bool {
    verified_path(config, binary_sha256, version, sha).is_file()
}

pub fn record_verified(
    config: &Config,
    binary_sha256: &str,
    version: &str,
    sha: &str,
) -> Result<()> {
    let line = format!("{binary_sha256} reported version {version} at {sha}\n");
    write_unique(
        &verified_path(config, binary_sha256, version, sha),
        line.as_bytes(),
    )
}

/// Of what cargo is given (support/cargo_env), the variables that shape a
/// build: taken from there, not from the xtask's own environment, so that
/// the fingerprint changes exactly when cargo's input does.
fn build_variables() -> Vec<(String, String)> {
    let toolchain_source = std::env::var_os("RUSTUP_TOOLCHAIN_SOURCE");
    let mut variables: Vec<(String, String)> = cargo_env::inherited()
        .into_iter()
        .filter(|(name, _)| {
            !name
                .to_str()
                .is_some_and(|n| cargo_env::is_run_only(n, toolchain_source.as_deref()))
        })
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
        .filter(|(name, _)| BUILD_VARIABLE_PREFIXES.iter().any(|p| name.starts_with(p)))
        .filter(|(name, _)| {
            !RUN_ONLY_VARIABLES.contains(&name.as_str()) && !name.starts_with("CARGO_PKG_")
        })
        .collect();
    variables.sort();
    variables
}

fn list_files(dir: &Utf8Path, files: &mut Vec<Utf8PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {dir}"))? {
        let entry = entry.with_context(|| format!("cannot list {dir}"))?;
        let path = Utf8PathBuf::from_path_buf(entry.path())
            .map_err(|p| anyhow::format_err!("{} is not UTF-8; rename it", p.display()))?;
        let kind = entry
            .file_type()
            .with_context(|| format!("cannot stat {path}"))?;
        if kind.is_dir() {
            list_files(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_changes_the_fingerprint_and_a_changed_binary_is_rebuilt() {
        let temp = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(temp.path()).unwrap().to_owned();
        let mut config = Config::load().unwrap();
        config.workspace_root = root.clone();
        config.target_dir = root.join("target");
        config.package = "server".to_owned();
        std::fs::create_dir_all(root.join("server/src")).unwrap();
        for (file, text) in [
            ("Cargo.toml", "[workspace]\n"),
            ("Cargo.lock", "version = 4\n"),
            ("server/src/main.rs", "fn main() {}\n"),
        ] {
            std::fs::write(root.join(file), text).unwrap();
        }
        let (rustc, cargo) = (Path::new("rustc"), Path::new("/nowhere/cargo"));
        let fingerprint = |command: &str| of_build(&config, command, rustc, cargo).unwrap();
        let first = fingerprint("SERVER_BUILD_GIT_SHA=aaaa cargo build");
        assert_eq!(first, fingerprint("SERVER_BUILD_GIT_SHA=aaaa cargo build"));
        let mut seen = vec![first.clone()];
        let mut changed = |what: &str, now: String| {
            assert!(
                !seen.contains(&now),
                "{what} did not change the fingerprint"
            );
            seen.push(now);
        };
        changed(
            "the commit",
            fingerprint("SERVER_BUILD_GIT_SHA=bbbb cargo build"),
        );
        std::fs::write(root.join("server/src/main.rs"), "fn main() {}\n\n").unwrap();
        changed(
            "a source",
            fingerprint("SERVER_BUILD_GIT_SHA=aaaa cargo build"),
        );
        std::fs::write(root.join("server/src/new.rs"), "").unwrap();
        changed(
            "a new file",
            fingerprint("SERVER_BUILD_GIT_SHA=aaaa cargo build"),
        );
        std::fs::write(root.join("Cargo.lock"), "version = 3\n").unwrap();
        changed(
            "Cargo.lock",
            fingerprint("SERVER_BUILD_GIT_SHA=aaaa cargo build"),
        );

        let built = root.join("target/server");
        std::fs::create_dir_all(root.join("target")).unwrap();
        std::fs::write(&built, b"binary").unwrap();
        let triple = "x86_64-unknown-linux-gnu";
        assert!(!is_up_to_date(&config, triple, &first, &built));
        record_build(&config, triple, &first, &built).unwrap();
        assert!(is_up_to_date(&config, triple, &first, &built));
        assert!(!is_up_to_date(&config, triple, &seen[1], &built));
        std::fs::write(&built, b"binarz").unwrap();
        assert!(!is_up_to_date(&config, triple, &first, &built));

        assert!(!was_verified(&config, "ab", "1.0.0", "aaaa"));
        record_verified(&config, "ab", "1.0.0", "aaaa").unwrap();
        assert!(was_verified(&config, "ab", "1.0.0", "aaaa"));
        assert!(!was_verified(&config, "ac", "1.0.0", "aaaa"));
        assert!(!was_verified(&config, "ab", "1.0.1", "aaaa"));
        assert!(!was_verified(&config, "ab", "1.0.0", "bbbb"));
    }
}
