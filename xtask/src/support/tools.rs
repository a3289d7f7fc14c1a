//! External tools: where they are and how to get them.
//!
//! Every tool is found through `which`, and also in the places that `go
//! install`, `cargo install` and `pip` put binaries, so that a fresh shell
//! without those directories on PATH still works.

use std::path::PathBuf;

use anyhow::{bail, Result};

pub struct Tool {
    pub name: &'static str,
    pub install_hint: &'static str,
}

pub const COSIGN_VERSION: &str = "v3.1.3";
pub const CRANE_VERSION: &str = "v0.20.6";
pub const ACTIONLINT_VERSION: &str = "v1.7.12";
/// Helm 4: the OCI registry is its only chart repository format that we
/// publish to, and v4 is the supported line (v3 gets security fixes only).
pub const HELM_VERSION: &str = "v4.3.2";
/// The tests' private Sigstore: Fulcio, which issues keyless certificates
/// from an OIDC token, and the timestamp authority.
pub const FULCIO_VERSION: &str = "v1.8.8";
pub const TIMESTAMP_SERVER_VERSION: &str = "v2.1.3";
pub const CARGO_AUDITABLE_VERSION: &str = "0.7.7";
/// The scanner behind `cargo xtask audit`; its JSON report is what we parse.
pub const CARGO_AUDIT_VERSION: &str = "0.22.2";

pub const COSIGN: Tool = Tool {
    name: "cosign",
    install_hint:
        "run `cargo xtask setup` (go install github.com/sigstore/cosign/v3/cmd/cosign@v3.1.3)",
};
pub const HELM: Tool = Tool {
    name: "helm",
    install_hint:
        "run `cargo xtask setup` (GOTOOLCHAIN=local go install helm.sh/helm/v4/cmd/helm@v4.3.2)",
};
pub const QEMU_AARCH64: Tool = Tool {
    name: "qemu-aarch64-static",
    install_hint: "run `cargo xtask setup` (apt-get install qemu-user-static)",
};
pub const DOCKER: Tool = Tool {
    name: "docker",
    install_hint:
        "install the Docker CLI with the buildx plugin, or use the default `--builder native`",
};
pub const GIT: Tool = Tool {
    name: "git",
    install_hint: "install git (apt-get install git)",
};
pub const GH: Tool = Tool { name: "gh", install_hint: "install the GitHub CLI (apt-get install gh), or upload the assets under target/release/ by hand" };
pub const CARGO_AUDITABLE: Tool = Tool {
    name: "cargo-auditable",
    install_hint: "run `cargo xtask setup` (cargo install cargo-auditable --locked)",
};

/// Where `cargo xtask setup` builds the tests' registry with the OCI 1.1
/// referrers API (its source is xtask/tests/referrers-registry): under
/// target/, because it is built from this repository, not installed.
pub fn referrers_registry(target_dir: &camino::Utf8Path) -> camino::Utf8PathBuf {
    target_dir.join("tools/referrers-registry")
}

/// Where `cargo xtask setup` builds the tests' driver of Helm's upgrade
/// logic (its source is xtask/tests/helm-upgrade), beside the registry.
pub fn helm_upgrade(target_dir: &camino::Utf8Path) -> camino::Utf8PathBuf {
    target_dir.join("tools/helm-upgrade")
}

pub const CARGO_AUDIT: Tool = Tool {
    name: "cargo-audit",
    install_hint: "run `cargo xtask setup` (cargo install cargo-audit --version 0.22.2 --locked)",
};

/// Where `cargo xtask setup` installs the tools it compiles (`go install`,
/// `cargo install`), each at its pinned version, in `bin/`: outside
/// `target/`, so that `cargo clean` keeps them, and one directory that CI
/// can cache by the pins. `XTASK_TOOLS_DIR` overrides it; otherwise
/// `$XDG_CACHE_HOME/xtask-tools`, or `~/.cache/xtask-tools`.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XTASK_TOOLS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("xtask-tools")
}

/// Directories where installers put binaries that may not be on PATH.
pub fn extra_bin_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![tools_dir().join("bin")];
    if let Some(gobin) = std::env::var_os("GOBIN") {
        dirs.push(PathBuf::from(gobin));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let home = PathBuf::from(home);
        dirs.push(home.join("go/bin"));
        dirs.push(home.join(".cargo/bin"));
        dirs.push(home.join(".local/bin"));
    }
    dirs.push(PathBuf::from("/usr/local/go/bin"));
    dirs
}

/// A PATH value with the installers' directories appended, for child
/// processes such as the test suite.
pub fn augmented_path() -> std::ffi::OsString {
    let mut paths: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for dir in extra_bin_dirs() {
        if !paths.contains(&dir) {
            paths.push(dir);
        }
    }
    std::env::join_paths(paths).unwrap_or_default()
}

pub fn find_opt(name: &str) -> Option<PathBuf> {
    which::which_in(name, Some(augmented_path()), std::env::current_dir().ok()?).ok()
}

/// `program args…` as one line that a POSIX shell reads back as the same
/// argv. Only for printing plans and hints: commands never run through a
/// shell.
pub fn command_line(program: &str, args: &[String]) -> String {
    std::iter::once(program.to_owned())
        .chain(args.iter().map(|a| shell_quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:=,@%+".contains(&b));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

impl Tool {
    /// The tool's path, or an error that says how to install it.
    pub fn find(&self) -> Result<PathBuf> {
        match find_opt(self.name) {
            Some(path) => Ok(path),
            None => bail!("{} not found: {}", self.name, self.install_hint),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{command_line, shell_quote};

    #[test]
    fn quoting_round_trips_through_a_shell() {
        assert_eq!(shell_quote("--build-arg=A=b"), "--build-arg=A=b");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(
            command_line("docker", &["build".into(), "a b".into()]),
            "docker build 'a b'"
        );
    }
}
