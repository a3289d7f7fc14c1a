//! The cargo command that builds one target: which program, toolchain,
//! linker, flags and variables, and where cargo leaves the binary. dist
//! runs it, the release plan prints it, and the fingerprint hashes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Shell};

use crate::build::toolchain::{
    cargo_home, default_toolchain, find_linker, select_toolchain, Toolchain,
};
use crate::support::cargo_env;
use crate::support::config::{Config, Platform};
use crate::support::source::Source;
use crate::support::tools;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
/// How to cross-compile. Always chosen, never guessed from what is
/// installed: each one links differently, so each gives other binaries and
/// another image digest.
pub enum Strategy {
    /// cargo with the target's toolchain and linker: what releases use.
    Cargo,
    /// cargo-zigbuild, linking with zig.
    Zigbuild,
    /// cross, building in its container.
    Cross,
}

impl Strategy {
    /// What every image and release builds with, and what their
    /// provenance records.
    pub const RELEASE: Strategy = Strategy::Cargo;

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Cargo => "cargo",
            Strategy::Zigbuild => "zigbuild",
            Strategy::Cross => "cross",
        }
    }
}

/// The target directory of `triple` when it is built in parallel.
fn parallel_target_dir(config: &Config, triple: &str) -> Utf8PathBuf {
    config.target_dir.join("parallel").join(triple)
}

/// Where cargo leaves the binary of a target, built in parallel or not.
pub fn built_binary(config: &Config, triple: &str, parallel: bool) -> Utf8PathBuf {
    let target_dir = if parallel {
        parallel_target_dir(config, triple)
    } else {
        config.target_dir.clone()
    };
    target_dir.join(triple).join("release").join(&config.binary)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Cargo,
    Zigbuild,
    Cross,
}

pub struct BuildPlan {
    pub triple: &'static str,
    pub toolchain: Toolchain,
    method: Method,
    linker: Option<String>,
    auditable: bool,
    /// Its own target directory when built alongside another target: cargo
    /// locks the shared one for the whole build (the host directory of build
    /// scripts is common to all targets), which would make the second cargo
    /// wait for the first.
    target_dir: Option<Utf8PathBuf>,
}

impl BuildPlan {
    pub fn new(config: &Config, platform: &Platform, strategy: Strategy) -> Result<BuildPlan> {
        let triple = platform.triple();
        let method = match strategy {
            Strategy::Cargo => Method::Cargo,
            Strategy::Zigbuild => Method::Zigbuild,
            Strategy::Cross => Method::Cross,
        };
        // cross brings the target's std in its container image.
        let toolchain = match method {
            Method::Cross => default_toolchain(),
            _ => select_toolchain(config, triple)?,
        };
        let linker = match method {
            Method::Cargo if !platform.is_host() => Some(find_linker(config, platform)?),
            _ => None,
        };
        // cross runs cargo inside a container where cargo-auditable is absent.
        let auditable = method != Method::Cross;
        if auditable {
            tools::CARGO_AUDITABLE.find()?;
        }
        Ok(BuildPlan {
            triple,
            toolchain,
            method,
            linker,
            auditable,
            target_dir: None,
        })
    }

    /// The plan for building alongside other targets, in its own target
    /// directory.
    pub fn in_parallel(self, config: &Config) -> BuildPlan {
        BuildPlan {
            target_dir: Some(parallel_target_dir(config, self.triple)),
            ..self
        }
    }

    /// Where cargo keeps the intermediate artifacts, whose paths the flags
    /// remap. Built alongside another target, a shared build directory is
    /// split by target too, for the same lock as the target directory.
    pub fn build_dir(&self, config: &Config) -> Utf8PathBuf {
        match &self.target_dir {
            Some(_) if config.shares_build_dir() => {
                config.build_dir.join("parallel").join(self.triple)
            }
            Some(target_dir) => target_dir.clone(),
            None => config.build_dir.clone(),
        }
    }

    /// Where cargo leaves the binary.
    pub fn built(&self, config: &Config) -> Utf8PathBuf {
        built_binary(config, self.triple, self.target_dir.is_some())
    }

    fn program_and_args(&self, config: &Config, jobs: Option<usize>) -> (PathBuf, Vec<String>) {
        let mut args: Vec<String> = Vec::new();
        let program = match self.method {
            Method::Cross => tools::find_opt("cross").unwrap_or_else(|| PathBuf::from("cross")),
            _ => self.toolchain.cargo.clone(),
        };
        if self.auditable {
            args.push("auditable".into());
        }
        args.push(match self.method {
            Method::Zigbuild => "zigbuild".into(),
            _ => "build".into(),
        });
        args.extend(build_args(config, self.triple));
        if let Some(jobs) = jobs {
            args.extend(["--jobs".to_owned(), jobs.to_string()]);
        }
        (program, args)
    }

    fn env(&self, config: &Config, source: &Source) -> BTreeMap<String, String> {
        let mut env = build_env(
            self.triple,
            &self.toolchain.rustc,
            self.linker.as_deref(),
            &self.build_dir(config),
            source,
        );
        if let Some(target_dir) = &self.target_dir {
            env.insert("CARGO_TARGET_DIR".into(), target_dir.to_string());
        }
        if config.shares_build_dir() {
            env.insert(
                "CARGO_BUILD_BUILD_DIR".into(),
                self.build_dir(config).to_string(),
            );
        }
        env
    }

    pub fn command<'a>(&self, sh: &'a Shell, config: &Config, source: &Source) -> xshell::Cmd<'a> {
        let (program, args) = self.program_and_args(config, None);
        // Build scripts run with cargo's environment: only the allow-list.
        cmd!(sh, "{program} {args...}")
            .env_clear()
            .envs(cargo_env::with(&self.env(config, source)))
    }

    /// [`BuildPlan::command`] for a child whose output streams while
    /// another runs, with `--jobs` when given.
    pub fn expression(
        &self,
        config: &Config,
        source: &Source,
        jobs: Option<usize>,
    ) -> duct::Expression {
        let (program, args) = self.program_and_args(config, jobs);
        duct::cmd(program, args)
            .dir(config.workspace_root.as_std_path())
            .full_env(cargo_env::with(&self.env(config, source)))
    }

    pub fn describe(&self, config: &Config, source: &Source, jobs: Option<usize>) -> String {
        let (program, args) = self.program_and_args(config, jobs);
        let env: Vec<String> = self
            .env(config, source)
            .into_iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        format!(
            "# {} toolchain: {} ({})\n{} {} {}",
            self.triple,
            self.toolchain.rustc.display(),
            self.toolchain.origin,
            env.join(" "),
            program.display(),
            args.join(" ")
        )
    }
}

/// cargo's arguments after its subcommand: the server's binary, released
/// and locked, for `triple`. The bench's floor builds with them too.
pub fn build_args(config: &Config, triple: &str) -> Vec<String> {
    [
        "--release",
        "--locked",
        "--package",
        &config.package,
        "--bin",
        &config.binary,
        "--target",
        triple,
    ]
    .map(String::from)
    .to_vec()
}

/// The variables of every build of the server for `triple`: the compiler,
/// the flags, the linker when cross-compiling, and the commit and time the
/// binary embeds. The bench's floor sets them too.
pub fn build_env(
    triple: &str,
    rustc: &Path,
    linker: Option<&str>,
    build_dir: &Utf8Path,
    source: &Source,
) -> BTreeMap<String, String> {
    let target_env = triple.to_uppercase().replace('-', "_");
    let mut env = BTreeMap::new();
    env.insert("RUSTC".into(), rustc.display().to_string());
    env.insert(
        format!("CARGO_TARGET_{target_env}_RUSTFLAGS"),
        rustflags(build_dir).join(" "),
    );
    if let Some(linker) = linker {
        env.insert(
            format!("CARGO_TARGET_{target_env}_LINKER"),
            linker.to_owned(),
        );
    }
    env.insert("SERVER_BUILD_GIT_SHA".into(), source.sha.clone());
    env.insert("SOURCE_DATE_EPOCH".into(), source.epoch.to_string());
    env
}

/// Static, and free of the paths of this checkout and this machine, so that
/// a clone elsewhere gives the same bytes. The bench's floor builds with
/// them too, so that it measures the same compilation.
pub fn rustflags(build_dir: &Utf8Path) -> Vec<String> {
    // Workspace sources reach rustc as relative paths; absolute paths come
    // only from the build directory (generated code) and cargo's home. Only
    // those are remapped: a flag naming the workspace would make every
    // checkout's dependencies different to cargo, and unshareable.
    let mut flags = vec![
        "-C".to_owned(),
        "target-feature=+crt-static".to_owned(),
        format!("--remap-path-prefix={build_dir}=/build/target"),
    ];
    if let Some(cargo_home) = cargo_home() {
        flags.push(format!(
            "--remap-path-prefix={}=/cargo",
            cargo_home.display()
        ));
    }
    flags
}
