//! The cold half of `bench --pipeline`: the floor (plain `cargo build` of
//! both targets from an empty target directory), a cold `image --push`
//! from an empty target directory and cache, and `image` after a one-line
//! change to the server.
//!
//! The cold release and the change run in a clone of HEAD under the
//! bench's scratch directory, so the checkout is never modified and the
//! change builds on the clone's warm target directory rather than on a
//! third build from clean. The xtask binary that runs the bench is run
//! directly there: `cargo xtask` would first compile the xtask into the
//! empty target directory, which is not the pipeline's cost.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};
use camino::Utf8Path;
use serde::Serialize;

use crate::build::plan::{build_args, build_env};
use crate::build::toolchain::{find_linker, select_toolchain};
use crate::support::config::{Config, BUILD_DIR_VARIABLE};
use crate::support::source::Source;

use super::pipeline::{command, round, run_quiet};

/// One measurement too slow for `--quick`, which skips it.
#[derive(Debug, Serialize)]
pub struct Single {
    pub skipped: bool,
    /// None when skipped.
    pub seconds: Option<f64>,
    /// The parts of `seconds`, by name (the floor's two targets).
    pub parts_s: BTreeMap<String, f64>,
}

impl Single {
    pub fn skipped() -> Single {
        Single {
            skipped: true,
            seconds: None,
            parts_s: BTreeMap::new(),
        }
    }

    fn measured(seconds: f64, parts_s: BTreeMap<String, f64>) -> Single {
        Single {
            skipped: false,
            seconds: Some(round(seconds)),
            parts_s,
        }
    }
}

/// Plain `cargo build --release --locked` of every platform, one after the
/// other as dist builds them, with dist's toolchains, linkers, flags and
/// variables but without cargo-auditable, into `scratch/floor`, which is
/// removed afterwards. Returns the timing and the commands.
pub fn floor(
    config: &Config,
    source: &Source,
    scratch: &Utf8Path,
) -> Result<(Single, Vec<String>)> {
    let target_dir = scratch.join("floor");
    let result = build_all(config, source, &target_dir);
    let _ = std::fs::remove_dir_all(&target_dir);
    result
}

fn build_all(
    config: &Config,
    source: &Source,
    target_dir: &Utf8Path,
) -> Result<(Single, Vec<String>)> {
    let mut parts = BTreeMap::new();
    let mut described = Vec::new();
    let mut total = 0.0;
    for platform in &config.platforms {
        let triple = platform.triple();
        let toolchain = select_toolchain(config, triple)?;
        let linker = if platform.is_host() {
            None
        } else {
            Some(find_linker(config, platform)?)
        };
        let mut env = build_env(
            triple,
            &toolchain.rustc,
            linker.as_deref(),
            target_dir,
            source,
        );
        env.insert("CARGO_TARGET_DIR".into(), target_dir.to_string());
        let mut args = vec!["build".to_owned()];
        args.extend(build_args(config, triple));
        let mut cmd = command(&toolchain.cargo);
        cmd.env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .envs(&env)
            .args(&args)
            .current_dir(&config.workspace_root);
        let start = Instant::now();
        run_quiet(&mut cmd, &toolchain.cargo.display().to_string(), &args)?;
        let seconds = start.elapsed().as_secs_f64();
        total += seconds;
        parts.insert(triple.to_owned(), round(seconds));
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        described.push(format!(
            "{} {} {}",
            env.join(" "),
            toolchain.cargo.display(),
            args.join(" ")
        ));
    }
    Ok((Single::measured(total, parts), described))
}

/// What `cold_and_change` measured, and the commands.
pub struct ColdAndChange {
    pub cold_image_push: Single,
    pub image_after_change: Single,
    pub commands: Vec<String>,
}

/// Clones HEAD into `scratch/clone`, times `image --push` there from an
/// empty target directory and cache, then appends a comment line to the
/// server's main.rs, commits it in the clone and times `image`.
pub fn cold_and_change(
    config: &Config,
    source: &Source,
    scratch: &Utf8Path,
    repository: &str,
) -> Result<ColdAndChange> {
    let clone = scratch.join("clone");
    let git = |args: &[&str]| -> Result<()> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut cmd = command(std::path::Path::new("git"));
        cmd.args(&args).current_dir(scratch);
        run_quiet(&mut cmd, "git", &args)
    };
    // Copied rather than hard-linked, so nothing in the clone can reach
    // the checkout's objects; on a branch, as a developer builds.
    git(&[
        "clone",
        "--quiet",
        "--no-hardlinks",
        "--no-checkout",
        config.workspace_root.as_str(),
        clone.as_str(),
    ])?;
    git(&[
        "-C",
        clone.as_str(),
        "checkout",
        "--quiet",
        "-B",
        "bench",
        &source.sha,
    ])?;
    let xtask = std::env::current_exe().context("cannot find the running xtask executable")?;
    let target_dir = clone.join("target");
    let cache_dir = target_dir.join("cache");
    let out = target_dir.join("bench-oci");
    let env_prefix = format!("CARGO_TARGET_DIR={target_dir} XTASK_CACHE_DIR={cache_dir}");
    let timed = |args: &[&str]| -> Result<f64> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut cmd = command(&xtask);
        cmd.args(&args)
            .current_dir(&clone)
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("XTASK_CACHE_DIR", &cache_dir)
            // A shared build directory would make the cold build warm.
            .env_remove(BUILD_DIR_VARIABLE);
        let start = Instant::now();
        run_quiet(&mut cmd, "xtask", &args)?;
        Ok(start.elapsed().as_secs_f64())
    };
    let push = [
        "image",
        "--push",
        "--insecure",
        "--base",
        "scratch",
        "--branch",
        "bench",
        "--image",
        repository,
        "--out",
        out.as_str(),
    ];
    let cold = timed(&push)?;

    let main_rs = clone.join("server/src/main.rs");
    let mut text =
        std::fs::read_to_string(&main_rs).with_context(|| format!("cannot read {main_rs}"))?;
    text.push_str("// bench --pipeline: a one-line change\n");
    std::fs::write(&main_rs, text).with_context(|| format!("cannot write {main_rs}"))?;
    // Committed, as a developer would: the commit sha is an input of the
    // build (the binary embeds it), so this is the change as it ships.
    git(&[
        "-C",
        clone.as_str(),
        "-c",
        "user.name=bench",
        "-c",
        "user.email=bench@localhost",
        "commit",
        "--quiet",
        "--no-verify",
        "-am",
        "bench: a one-line change",
    ])?;
    let image = ["image", "--base", "scratch", "--out", out.as_str()];
    let changed = timed(&image)?;
    let exe = xtask.display();
    Ok(ColdAndChange {
        cold_image_push: Single::measured(cold, BTreeMap::new()),
        image_after_change: Single::measured(changed, BTreeMap::new()),
        commands: vec![
            format!(
                "(in a fresh clone of HEAD) {env_prefix} {exe} {}",
                push.join(" ")
            ),
            format!(
                "(same clone, after a comment line appended to server/src/main.rs and committed) {env_prefix} {exe} {}",
                image.join(" ")
            ),
        ],
    })
}
