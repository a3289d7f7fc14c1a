//! The environment of every cargo the xtask starts, written down here and
//! nowhere else. Each build script and proc-macro of the dependency graph
//! runs with what cargo was given, so cargo is given only what a build
//! reads: the toolchain's own variables, the C toolchain's for the targets
//! built, and the commit and time the binary embeds. A signing key, its
//! password, a registry or GitHub token, the right to ask for an OIDC token
//! or a Docker config never reach it, whatever the caller's environment
//! holds. docs/security.md lists the same names for operators.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::support::tools;

/// Passed by exact name.
pub const NAMES: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "RUSTC",
    "RUSTDOC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "SOURCE_DATE_EPOCH",
    // cross reaches its container engine through these.
    "DOCKER_HOST",
    "CROSS_CONTAINER_ENGINE",
];

/// Passed by prefix, unless `is_withheld`: cargo's and rustup's own
/// configuration, and the variables the server's build script reads.
pub const PREFIXES: &[&str] = &["CARGO_", "RUSTUP_", "SERVER_BUILD_"];

/// The C toolchain variables the `cc` crate reads, passed bare, with
/// `TARGET_`/`HOST_` before them, or with a built target after them
/// (`CC_aarch64_unknown_linux_gnu`, `CC_aarch64-unknown-linux-gnu`).
pub const C_TOOLCHAIN: &[&str] = &["CC", "CXX", "AR", "CFLAGS", "CXXFLAGS"];

/// The targets whose C toolchain variables are passed.
const TRIPLES: &[&str] = &["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"];

/// Words that mark a credential: a name holding one is withheld even with
/// an allowed prefix (`CARGO_REGISTRY_TOKEN`,
/// `CARGO_REGISTRIES_<NAME>_SECRET_KEY`).
const CREDENTIAL_WORDS: &[&str] = &["TOKEN", "PASSWORD", "SECRET", "CREDENTIAL"];

/// Withheld although allowed by prefix. Flags from outside would make the
/// bytes depend on the caller's shell (the build sets its own per target).
/// The others are what cargo set for the xtask itself when it ran it: they
/// say how the xtask was started, and a nested cargo that sees a changed
/// CARGO_MANIFEST_DIR rebuilds the crates whose build scripts watch it.
const WITHHELD: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_BIN_NAME",
    "CARGO_CRATE_NAME",
    "CARGO_RUSTC_CURRENT_DIR",
];

/// Whether cargo, and so every build script, may see variable `name`.
pub fn is_allowed(name: &str) -> bool {
    if is_withheld(name) {
        return false;
    }
    NAMES.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p)) || is_c_toolchain(name)
}

fn is_withheld(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    WITHHELD.contains(&name)
        || name.starts_with("CARGO_PKG_")
        || CREDENTIAL_WORDS.iter().any(|w| upper.contains(w))
}

fn is_c_toolchain(name: &str) -> bool {
    let bare = name
        .strip_prefix("TARGET_")
        .or_else(|| name.strip_prefix("HOST_"))
        .unwrap_or(name);
    C_TOOLCHAIN.iter().any(|tool| {
        bare == *tool
            || name.strip_prefix(tool).is_some_and(|rest| {
                rest.strip_prefix('_').is_some_and(|triple| {
                    TRIPLES
                        .iter()
                        .any(|t| *t == triple || t.replace('-', "_") == triple)
                })
            })
    })
}

/// Whether `name=value` only restates a default that rustup's proxy writes
/// down for the program it starts: `cargo xtask` runs the xtask with them,
/// the xtask executable run directly has none, and the two must build
/// alike, so that alternating them rebuilds nothing.
///
/// `RUSTUP_TOOLCHAIN` is different: it still reaches cargo, because it is
/// what keeps a rustup proxy, run in a dependency's folder, from obeying
/// that crate's own `rust-toolchain.toml`. Only the fingerprint leaves it
/// out when it names the default toolchain (`is_run_only`).
fn restates_a_default(name: &str, value: &OsStr, home: Option<&Path>) -> bool {
    match name {
        "CARGO_HOME" => home.is_some_and(|h| h.join(".cargo") == Path::new(value)),
        "RUSTUP_HOME" => home.is_some_and(|h| h.join(".rustup") == Path::new(value)),
        _ => false,
    }
}

/// Whether variable `name`, given to cargo, says only how the xtask was
/// started: rustup's note of where its toolchain came from, and the
/// toolchain itself when that is the default, which a proxy finds again
/// without it. The build fingerprint leaves these out.
pub fn is_run_only(name: &str, toolchain_source: Option<&OsStr>) -> bool {
    match name {
        "RUSTUP_TOOLCHAIN_SOURCE" => true,
        "RUSTUP_TOOLCHAIN" => toolchain_source.is_some_and(|s| s == "default"),
        _ => false,
    }
}

/// The caller's variables that cargo may see, with PATH extended by the
/// installers' directories. Apply after clearing the child's environment,
/// then add the build's own variables.
pub fn inherited() -> Vec<(OsString, OsString)> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(name, _)| name.to_str().is_some_and(is_allowed))
        .filter(|(name, _)| name != "PATH")
        .filter(|(name, value)| {
            !name
                .to_str()
                .is_some_and(|name| restates_a_default(name, value, home.as_deref()))
        })
        .collect();
    env.push(("PATH".into(), tools::augmented_path()));
    env
}

/// `command` with only the allowed variables of the caller, then `build`'s.
pub fn apply<'a>(
    command: &mut std::process::Command,
    build: impl IntoIterator<Item = (&'a String, &'a String)>,
) {
    command.env_clear().envs(inherited()).envs(build);
}

/// The whole environment of a cargo: the allowed variables of the caller,
/// then `build`'s over them.
pub fn with(build: &BTreeMap<String, String>) -> BTreeMap<OsString, OsString> {
    let mut env: BTreeMap<OsString, OsString> = inherited().into_iter().collect();
    env.extend(build.iter().map(|(k, v)| (k.into(), v.into())));
    env
}

/// Runs `cargo metadata` as `command` describes it, with the allowed
/// variables only.
pub fn metadata(command: &cargo_metadata::MetadataCommand) -> Result<cargo_metadata::Metadata> {
    let mut cargo = command.cargo_command();
    apply(&mut cargo, &BTreeMap::new());
    let output = cargo.output().context("cannot start cargo")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let stdout = std::str::from_utf8(&output.stdout).context("cargo metadata printed no UTF-8")?;
    Ok(cargo_metadata::MetadataCommand::parse(stdout)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_toolchain_and_the_build_get_through() {
        for name in [
            "PATH",
            "HOME",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
            "CARGO_BUILD_BUILD_DIR",
            "RUSTUP_HOME",
            "RUSTUP_TOOLCHAIN",
            "RUSTC",
            "SOURCE_DATE_EPOCH",
            "SERVER_BUILD_GIT_SHA",
            "CC_aarch64_unknown_linux_gnu",
            "CC_aarch64-unknown-linux-gnu",
            "TARGET_CC",
            "CFLAGS",
        ] {
            assert!(is_allowed(name), "{name}");
        }
    }

    #[test]
    fn what_rustup_restates_is_left_out_and_what_it_chose_is_kept() {
        let home = Some(Path::new("/home/u"));
        let restates = |name: &str, value: &str| restates_a_default(name, OsStr::new(value), home);
        assert!(restates("CARGO_HOME", "/home/u/.cargo"));
        assert!(restates("RUSTUP_HOME", "/home/u/.rustup"));
        assert!(!restates("CARGO_HOME", "/opt/cargo"));
        assert!(!restates("CARGO_TARGET_DIR", "/home/u/.cargo"));
        // The toolchain always reaches cargo.
        assert!(!restates(
            "RUSTUP_TOOLCHAIN",
            "stable-x86_64-unknown-linux-gnu"
        ));
        assert!(!restates_a_default(
            "CARGO_HOME",
            OsStr::new("/home/u/.cargo"),
            None
        ));
        // The fingerprint leaves out the default toolchain, not a chosen one.
        let default = Some(OsStr::new("default"));
        assert!(is_run_only("RUSTUP_TOOLCHAIN", default));
        assert!(is_run_only("RUSTUP_TOOLCHAIN_SOURCE", default));
        assert!(!is_run_only("RUSTUP_TOOLCHAIN", Some(OsStr::new("cli"))));
        assert!(!is_run_only("RUSTUP_TOOLCHAIN", None));
        assert!(!is_run_only("CARGO_HOME", default));
    }

    #[test]
    fn credentials_and_outside_flags_do_not() {
        for name in [
            "COSIGN_PRIVATE_KEY",
            "COSIGN_PASSWORD",
            "COSIGN_KEY",
            "GITHUB_TOKEN",
            "CARGO_REGISTRY_TOKEN",
            "CARGO_REGISTRIES_CRATES_IO_TOKEN",
            "CARGO_REGISTRY_SECRET_KEY",
            "CARGO_REGISTRIES_MINE_CREDENTIAL_PROVIDER",
            "RUSTUP_DIST_SERVER_TOKEN",
            "ACTIONS_ID_TOKEN_REQUEST_URL",
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
            "REGISTRY_PASSWORD",
            "DOCKER_CONFIG",
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CC_TEST_REPORTER_ID",
            "AWS_SECRET_ACCESS_KEY",
            "XTASK_BUILD_DIR",
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
        ] {
            assert!(!is_allowed(name), "{name}");
        }
    }
}
