//! The cold half of `bench --pipeline`: the floor (plain `cargo build` of
//! both targets from an empty target directory), a cold `image --push`
//! from an empty target directory and cache, and `image` after a one-line
//! change to the server.
//!
//! A cold build on this kind of machine varies by 15 % from one run to the
//! next, more than the gap the ratio is meant to show. So the floor and the
//! cold push are measured in rounds, next to each other, alternating which
//! goes first so that a machine slowing down or speeding up through a round
//! favours neither; the ratio is the median of the rounds' own ratios.
//!
//! Every cold push runs in its own clone of HEAD under the bench's scratch
//! directory, so the checkout is never modified, and pushes to its own
//! repository, so no round finds the blobs of another. The change builds
//! on the last clone's warm target directory rather than on a build from
//! clean. The xtask binary that runs the bench is run directly there:
//! `cargo xtask` would first compile the xtask into the empty target
//! directory, which is not the pipeline's cost.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Serialize;

use crate::build::plan::{build_args, build_env};
use crate::build::toolchain::{find_linker, select_toolchain};
use crate::support::cargo_env;
use crate::support::config::{Config, BUILD_DIR_VARIABLE};
use crate::support::source::Source;

use super::pipeline::{command, image_args, image_push_args, median, round, run_quiet};

/// One measurement too slow for `--quick`, which skips it.
#[derive(Debug, Serialize)]
pub struct Single {
    pub skipped: bool,
    /// The median of `runs_s`; None when skipped.
    pub seconds: Option<f64>,
    /// Every run, in the order of the rounds.
    pub runs_s: Vec<f64>,
    /// The parts of `seconds`, by name (the floor's two targets), each the
    /// median of its runs.
    pub parts_s: BTreeMap<String, f64>,
}

impl Single {
    fn skipped() -> Single {
        Single {
            skipped: true,
            seconds: None,
            runs_s: Vec::new(),
            parts_s: BTreeMap::new(),
        }
    }

    fn measured(runs_s: Vec<f64>, parts: BTreeMap<String, Vec<f64>>) -> Single {
        Single {
            skipped: false,
            seconds: Some(median(&runs_s)),
            runs_s,
            parts_s: parts
                .into_iter()
                .map(|(name, runs)| (name, median(&runs)))
                .collect(),
        }
    }
}

/// What the cold rounds measured, and the commands.
pub struct Cold {
    pub floor: Single,
    pub cold_image_push: Single,
    pub image_after_change: Single,
    /// Each round's cold push over its floor.
    pub ratios: Vec<f64>,
    pub commands: Vec<String>,
}

impl Cold {
    /// For `--quick`, which skips the cold path.
    pub fn skipped() -> Cold {
        Cold {
            floor: Single::skipped(),
            cold_image_push: Single::skipped(),
            image_after_change: Single::skipped(),
            ratios: Vec::new(),
            commands: Vec::new(),
        }
    }
}

/// Runs `rounds` rounds of the floor and a cold `image --push`, then
/// `image` after a one-line change in the last round's clone.
pub fn measure(
    config: &Config,
    source: &Source,
    scratch: &Utf8Path,
    repository: &str,
    rounds: usize,
) -> Result<Cold> {
    let xtask = std::env::current_exe().context("cannot find the running xtask executable")?;
    let xtask = Utf8PathBuf::from_path_buf(xtask)
        .map_err(|p| anyhow::format_err!("the xtask executable {} is not UTF-8", p.display()))?;
    let mut floors = Vec::new();
    let mut floor_parts: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut colds = Vec::new();
    let mut ratios = Vec::new();
    let mut commands = Vec::new();
    let mut last_clone = None;
    for round_number in 1..=rounds {
        let clone = RoundClone::of_head(config, source, scratch, round_number)?;
        let push = clone.push_args(&format!("{repository}-cold-{round_number}"));
        let floor_run = || floor(config, source, scratch);
        // Alternated, so that a drift of the machine within a round
        // favours neither side.
        let (floor, cold) = if round_number % 2 == 1 {
            let floor = floor_run()?;
            (floor, clone.timed(&xtask, &push)?)
        } else {
            let cold = clone.timed(&xtask, &push)?;
            (floor_run()?, cold)
        };
        let (seconds, parts, described) = floor;
        if commands.is_empty() {
            commands.extend(described);
            commands.push(format!(
                "(in a fresh clone of HEAD, one per round) {} {xtask} {}",
                clone.env_prefix(),
                push.join(" ")
            ));
        }
        for (name, part) in parts {
            floor_parts.entry(name).or_default().push(part);
        }
        ratios.push(round(cold / seconds.max(f64::EPSILON)));
        floors.push(round(seconds));
        colds.push(round(cold));
        if let Some(previous) = last_clone.replace(clone) {
            previous.remove();
        }
    }
    let clone = last_clone.context("the cold path needs at least one round")?;
    let image = clone.image_args();
    let changed = clone.change_and_time(&xtask, &image)?;
    commands.push(format!(
        "(the last round's clone, after a comment line appended to server/src/main.rs and committed) {} {xtask} {}",
        clone.env_prefix(),
        image.join(" ")
    ));
    Ok(Cold {
        floor: Single::measured(floors, floor_parts),
        cold_image_push: Single::measured(colds, BTreeMap::new()),
        image_after_change: Single::measured(vec![round(changed)], BTreeMap::new()),
        ratios,
        commands,
    })
}

/// Plain `cargo build --release --locked` of every platform, one after the
/// other as dist builds them, with dist's toolchains, linkers, flags and
/// variables but without cargo-auditable, into `scratch/floor`, which is
/// removed afterwards. Returns the seconds, each target's, and the commands.
fn floor(
    config: &Config,
    source: &Source,
    scratch: &Utf8Path,
) -> Result<(f64, BTreeMap<String, f64>, Vec<String>)> {
    let target_dir = scratch.join("floor");
    let result = build_all(config, source, &target_dir);
    let _ = std::fs::remove_dir_all(&target_dir);
    result
}

fn build_all(
    config: &Config,
    source: &Source,
    target_dir: &Utf8Path,
) -> Result<(f64, BTreeMap<String, f64>, Vec<String>)> {
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
        cargo_env::apply(&mut cmd, &env);
        cmd.args(&args).current_dir(&config.workspace_root);
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
    Ok((total, parts, described))
}

/// A clone of HEAD for one round, on a branch, as a developer builds.
struct RoundClone {
    dir: Utf8PathBuf,
    target_dir: Utf8PathBuf,
}

impl RoundClone {
    fn of_head(
        config: &Config,
        source: &Source,
        scratch: &Utf8Path,
        round: usize,
    ) -> Result<RoundClone> {
        let dir = scratch.join(format!("clone-{round}"));
        // Copied rather than hard-linked, so nothing in the clone can reach
        // the checkout's objects.
        git(
            scratch,
            &[
                "clone",
                "--quiet",
                "--no-hardlinks",
                "--no-checkout",
                config.workspace_root.as_str(),
                dir.as_str(),
            ],
        )?;
        git(
            scratch,
            &[
                "-C",
                dir.as_str(),
                "checkout",
                "--quiet",
                "-B",
                "bench",
                &source.sha,
            ],
        )?;
        let target_dir = dir.join("target");
        Ok(RoundClone { dir, target_dir })
    }

    fn cache_dir(&self) -> Utf8PathBuf {
        self.target_dir.join("cache")
    }

    fn out(&self) -> Utf8PathBuf {
        self.target_dir.join("bench-oci")
    }

    fn env_prefix(&self) -> String {
        format!(
            "CARGO_TARGET_DIR={} XTASK_CACHE_DIR={}",
            self.target_dir,
            self.cache_dir()
        )
    }

    fn push_args(&self, repository: &str) -> Vec<String> {
        image_push_args(repository, &self.out())
    }

    fn image_args(&self) -> Vec<String> {
        image_args(&self.out())
    }

    /// Runs the xtask in the clone, with its own target directory and cache.
    fn timed(&self, xtask: &Utf8Path, args: &[String]) -> Result<f64> {
        let mut cmd = command(xtask.as_std_path());
        cmd.args(args)
            .current_dir(&self.dir)
            .env("CARGO_TARGET_DIR", &self.target_dir)
            .env("XTASK_CACHE_DIR", self.cache_dir())
            // A shared build directory would make the cold build warm.
            .env_remove(BUILD_DIR_VARIABLE);
        let start = Instant::now();
        run_quiet(&mut cmd, "xtask", args)?;
        Ok(start.elapsed().as_secs_f64())
    }

    /// Appends a comment line to the server's main.rs, commits it as a
    /// developer would (the commit sha is an input of the build: the binary
    /// embeds it), and times `args`.
    fn change_and_time(&self, xtask: &Utf8Path, args: &[String]) -> Result<f64> {
        let main_rs = self.dir.join("server/src/main.rs");
        let mut text =
            std::fs::read_to_string(&main_rs).with_context(|| format!("cannot read {main_rs}"))?;
        text.push_str("// bench --pipeline: a one-line change\n");
        std::fs::write(&main_rs, text).with_context(|| format!("cannot write {main_rs}"))?;
        git(
            &self.dir,
            &[
                "-c",
                "user.name=bench",
                "-c",
                "user.email=bench@localhost",
                "commit",
                "--quiet",
                "--no-verify",
                "-am",
                "bench: a one-line change",
            ],
        )?;
        self.timed(xtask, args)
    }

    /// A clone and its target directory take gigabytes; one at a time is
    /// kept.
    fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn git(dir: &Utf8Path, args: &[&str]) -> Result<()> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let mut cmd = command(std::path::Path::new("git"));
    cmd.args(&args).current_dir(dir);
    run_quiet(&mut cmd, "git", &args)
}
