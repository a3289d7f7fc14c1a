//! `cargo xtask bench --pipeline`: the release pipeline's warm path, timed
//! as a user runs it (`cargo xtask …`, cargo's own no-op check included),
//! against a distribution registry on loopback, and the native builder
//! against buildah on the same Dockerfile and binaries; then, unless
//! `--quick`, the cold path (cold.rs): the floor, a cold `image --push`
//! and `image` after a one-line change.
//!
//! The commands are spawned through cargo rather than called in-process
//! because what is measured is the command line a developer or CI types,
//! process start and cargo's freshness check included. Missed targets are
//! reported, never errors: the figures depend on the machine.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use camino::Utf8Path;
use serde::Serialize;

use crate::build::binaries::{self, DistOptions};
use crate::flags;
use crate::support::config::Config;
use crate::support::progress::Steps;
use crate::support::source::Source;
use crate::support::tools::{self, Tool};

use super::cold::{self, Single};
use super::measure::peak_rss_kib_of;
use super::registry::{LoopbackRegistry, DOCKER_REGISTRY};
use super::report;

const BUILDAH: Tool = Tool {
    name: "buildah",
    install_hint: "run `cargo xtask setup` (apt-get install buildah)",
};

const WARM_PUSH_TARGET_S: f64 = 1.0;
/// The same, beyond cargo's own no-op check, which the xtask cannot shorten.
const WARM_PUSH_BEYOND_CARGO_TARGET_S: f64 = 0.5;
const BUILDAH_RATIO_TARGET: f64 = 3.0;
const COLD_OVER_FLOOR_TARGET: f64 = 1.15;

#[derive(Debug, Serialize)]
pub struct PipelineReport {
    pub machine: Machine,
    pub git_sha: String,
    pub quick: bool,
    /// `cargo xtask image --push` with nothing changed.
    pub warm_image_push: Timing,
    /// The xtask's peak resident memory (VmHWM) over one more warm
    /// `image --push`, run by the executable itself.
    pub warm_image_push_peak_rss_kib: u64,
    /// `cargo xtask image` (native, no push) with nothing changed.
    pub native_image: Timing,
    /// The same image, by the xtask executable itself: the builder's own
    /// time, without cargo's check that the xtask is up to date.
    pub native_image_direct: Timing,
    /// `cargo xtask --help`: what cargo costs before any xtask runs.
    pub cargo_noop: Timing,
    /// `buildah bud` of the Dockerfile for both platforms, same binaries.
    pub buildah: Timing,
    /// Plain `cargo build --release` of every target from clean.
    pub floor: Single,
    /// `image --push` from an empty target directory and cache.
    pub cold_image_push: Single,
    /// `image` after a one-line change to the server, committed.
    pub image_after_change: Single,
    pub ratios: Ratios,
    /// The exact commands behind the figures.
    pub commands: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    /// /proc/loadavg (1, 5 and 15 minutes) when the run ended: the
    /// figures are only as good as the machine was idle.
    pub load_average: String,
}

#[derive(Debug, Serialize)]
pub struct Timing {
    pub runs_s: Vec<f64>,
    pub median_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Ratios {
    /// buildah's median over the native builder's.
    pub buildah_over_native: f64,
    pub buildah_over_native_target: f64,
    pub warm_image_push_target_s: f64,
    pub warm_image_push_ok: bool,
    /// The warm push's median less cargo's no-op median.
    pub warm_image_push_beyond_cargo_s: f64,
    pub warm_image_push_beyond_cargo_target_s: f64,
    pub warm_image_push_beyond_cargo_ok: bool,
    /// buildah's median over the xtask executable's, cargo left out.
    pub buildah_over_native_direct: f64,
    pub buildah_over_native_ok: bool,
    /// The median of the rounds' cold `image --push` over their floor;
    /// None when skipped.
    pub cold_over_floor: Option<f64>,
    /// Each round's ratio, in order.
    pub cold_over_floor_rounds: Vec<f64>,
    pub cold_over_floor_target: f64,
    pub cold_over_floor_ok: Option<bool>,
}

pub fn run(flags: &flags::Bench) -> Result<()> {
    let registry_program = DOCKER_REGISTRY.find()?;
    let buildah = BUILDAH.find()?;
    let config = Config::load()?;
    let source = Source::detect(&config.workspace_root)?;
    let runs = if flags.quick { 1 } else { 3 };
    let cold_rounds = usize::from(flags.cold_rounds);
    // Under target/, emptied first: a registry, a layout and buildah's storage.
    let scratch = config.target_dir.join("bench/pipeline");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).with_context(|| format!("cannot empty {scratch}"))?;
    }
    std::fs::create_dir_all(&scratch).with_context(|| format!("cannot create {scratch}"))?;
    let result = measure(
        &config,
        &source,
        &scratch,
        runs,
        (!flags.quick).then_some(cold_rounds),
        &registry_program,
        &buildah,
    );
    let _ = std::fs::remove_dir_all(&scratch);
    let Measured {
        warm_image_push,
        warm_image_push_peak_rss_kib,
        native_image,
        native_image_direct,
        cargo_noop,
        buildah,
        floor,
        cold_image_push,
        image_after_change,
        cold_over_floor_rounds,
        commands,
    } = result?;

    let ratio = buildah.median_s / native_image.median_s.max(f64::EPSILON);
    let direct_ratio = buildah.median_s / native_image_direct.median_s.max(f64::EPSILON);
    let beyond_cargo = round((warm_image_push.median_s - cargo_noop.median_s).max(0.0));
    let cold_over_floor =
        (!cold_over_floor_rounds.is_empty()).then(|| median(&cold_over_floor_rounds));
    let report = PipelineReport {
        machine: machine()?,
        git_sha: source.sha.clone(),
        quick: flags.quick,
        ratios: Ratios {
            buildah_over_native: round(ratio),
            buildah_over_native_target: BUILDAH_RATIO_TARGET,
            warm_image_push_target_s: WARM_PUSH_TARGET_S,
            warm_image_push_ok: warm_image_push.median_s <= WARM_PUSH_TARGET_S,
            warm_image_push_beyond_cargo_s: beyond_cargo,
            warm_image_push_beyond_cargo_target_s: WARM_PUSH_BEYOND_CARGO_TARGET_S,
            warm_image_push_beyond_cargo_ok: beyond_cargo <= WARM_PUSH_BEYOND_CARGO_TARGET_S,
            buildah_over_native_direct: round(direct_ratio),
            buildah_over_native_ok: ratio >= BUILDAH_RATIO_TARGET,
            cold_over_floor,
            cold_over_floor_rounds,
            cold_over_floor_target: COLD_OVER_FLOOR_TARGET,
            cold_over_floor_ok: cold_over_floor.map(|r| r <= COLD_OVER_FLOOR_TARGET),
        },
        warm_image_push,
        warm_image_push_peak_rss_kib,
        native_image,
        native_image_direct,
        cargo_noop,
        buildah,
        floor,
        cold_image_push,
        image_after_change,
        commands,
    };
    if flags.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report::render_pipeline(&report));
    }
    Ok(())
}

struct Measured {
    warm_image_push: Timing,
    warm_image_push_peak_rss_kib: u64,
    native_image: Timing,
    native_image_direct: Timing,
    cargo_noop: Timing,
    buildah: Timing,
    floor: Single,
    cold_image_push: Single,
    image_after_change: Single,
    cold_over_floor_rounds: Vec<f64>,
    commands: Vec<String>,
}

/// `cold_rounds` is None for `--quick`, which skips the cold path.
fn measure(
    config: &Config,
    source: &Source,
    scratch: &Utf8Path,
    runs: usize,
    cold_rounds: Option<usize>,
    registry_program: &std::path::Path,
    buildah: &std::path::Path,
) -> Result<Measured> {
    let mut steps = Steps::new(if cold_rounds.is_some() { 9 } else { 8 });
    steps.run("build the binaries (warm-up)", || {
        binaries::build(config, &config.platforms, DistOptions::verified()).map(|_| ())
    })?;
    let registry = steps.run("start a registry on loopback", || {
        LoopbackRegistry::start(registry_program, scratch)
    })?;
    let repository = format!("127.0.0.1:{}/bench/server", registry.port);
    let out = scratch.join("oci");
    let push: Vec<String> = std::iter::once("xtask".to_owned())
        .chain(image_push_args(&repository, &out))
        .collect();
    let native: Vec<String> = std::iter::once("xtask".to_owned())
        .chain(image_args(&out))
        .collect();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut commands = Vec::new();

    let warm_push = steps.run(&format!("warm image --push, {runs} runs after one"), || {
        time_runs(runs + 1, || spawn(config, &cargo, &push)).map(|mut t| {
            // The first run pushes the blobs; only the later ones are warm.
            t.remove(0);
            timing(t)
        })
    })?;
    commands.push(format!("cargo {}", push.join(" ")));
    // What `cargo xtask` just ran (the dev profile of the alias), which may
    // be newer than this process: cargo rebuilds the xtask when its
    // environment differs from the one it was built in.
    let xtask = config.target_dir.join("debug").join("xtask");
    let warm_push_rss = steps.run("peak memory of a warm image --push", || {
        let mut cmd = command(xtask.as_std_path());
        cmd.args(&push[1..]).current_dir(&config.workspace_root);
        peak_rss_kib_of(&mut cmd, "xtask image --push")
    })?;
    let native_image = steps.run(&format!("native image, {runs} runs"), || {
        time_runs(runs, || spawn(config, &cargo, &native)).map(timing)
    })?;
    commands.push(format!("cargo {}", native.join(" ")));
    let direct = &native[1..];
    let native_image_direct = steps
        .run(&format!("native image, xtask itself, {runs} runs"), || {
            time_runs(runs, || spawn(config, xtask.as_str(), direct)).map(timing)
        })?;
    commands.push(format!("{xtask} {}", direct.join(" ")));
    let noop = ["xtask".to_owned(), "--help".to_owned()];
    let cargo_noop = steps.run(&format!("cargo xtask --help, {runs} runs"), || {
        time_runs(runs, || spawn(config, &cargo, &noop)).map(timing)
    })?;
    commands.push(format!("cargo {}", noop.join(" ")));
    let storage = scratch.join("buildah");
    let buildah_timing = steps.run(&format!("buildah bud, both platforms, {runs} runs"), || {
        time_runs(runs, || {
            for arch in ["amd64", "arm64"] {
                let args = buildah_args(&storage, arch, source);
                spawn(config, &buildah.display().to_string(), &args)?;
            }
            Ok(())
        })
        .map(timing)
    })?;
    commands.push(format!(
        "buildah {} (and linux/arm64)",
        buildah_args(&storage, "amd64", source).join(" ")
    ));
    let cold = match cold_rounds {
        Some(rounds) => {
            let mut cold = steps.run(
                &format!(
                    "the floor and a cold image --push, {rounds} rounds, then image after a one-line change"
                ),
                || cold::measure(config, source, scratch, &repository, rounds),
            )?;
            commands.append(&mut cold.commands);
            cold
        }
        None => cold::Cold::skipped(),
    };
    drop(registry);
    Ok(Measured {
        warm_image_push: warm_push,
        warm_image_push_peak_rss_kib: warm_push_rss,
        native_image,
        native_image_direct,
        cargo_noop,
        buildah: buildah_timing,
        floor: cold.floor,
        cold_image_push: cold.cold_image_push,
        image_after_change: cold.image_after_change,
        cold_over_floor_rounds: cold.ratios,
        commands,
    })
}

/// `image --push` of the native builder to `repository` on loopback, on
/// `scratch`, its layout written to `out`.
pub(super) fn image_push_args(repository: &str, out: &Utf8Path) -> Vec<String> {
    [
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
    ]
    .map(String::from)
    .to_vec()
}

/// `image` of the native builder, no push, on `scratch`.
pub(super) fn image_args(out: &Utf8Path) -> Vec<String> {
    ["image", "--base", "scratch", "--out", out.as_str()]
        .map(String::from)
        .to_vec()
}

fn buildah_args(storage: &Utf8Path, arch: &str, source: &Source) -> Vec<String> {
    [
        "--root",
        storage.join("root").as_str(),
        "--runroot",
        storage.join("run").as_str(),
        "--storage-driver",
        "vfs",
        "bud",
        "--isolation",
        "chroot",
        "--platform",
        &format!("linux/{arch}"),
        "--format",
        "docker",
        "--identity-label=false",
        "--timestamp",
        &source.epoch.to_string(),
        "--build-arg",
        "BASE=scratch",
        "--build-arg",
        &format!("TARGETARCH={arch}"),
        "-f",
        "Dockerfile",
        "-t",
        &format!("localhost/bench:{arch}"),
        ".",
    ]
    .map(String::from)
    .to_vec()
}

fn time_runs(runs: usize, mut once: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        once()?;
        times.push(round(start.elapsed().as_secs_f64()));
    }
    Ok(times)
}

fn timing(runs_s: Vec<f64>) -> Timing {
    let median_s = median(&runs_s);
    Timing { runs_s, median_s }
}

/// The middle value, or the mean of the two middle ones, to the
/// millisecond; 0 for none.
pub(super) fn median(values: &[f64]) -> f64 {
    let (median, _, _) = report::summary(&mut values.to_vec());
    round(median)
}

pub(super) fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// Runs a command in the workspace; its stdout is not the benchmark's.
fn spawn(config: &Config, program: &str, args: &[String]) -> Result<()> {
    let mut cmd = command(std::path::Path::new(program));
    cmd.args(args).current_dir(&config.workspace_root);
    run_quiet(&mut cmd, program, args)
}

/// `program` without the variables cargo set for this process: a nested
/// `cargo` would see a changed CARGO_MANIFEST_DIR, which ring's build
/// script watches, and rebuild the xtask; a user's shell has none of them.
pub(super) fn command(program: &std::path::Path) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&name.as_ref())
        {
            command.env_remove(name.as_ref());
        }
    }
    command
        .env("PATH", tools::augmented_path())
        .stdin(Stdio::null());
    command
}

/// Runs `command` to its end; its output is kept for the error only.
pub(super) fn run_quiet(command: &mut Command, program: &str, args: &[String]) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn machine() -> Result<Machine> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").context("cannot read /proc/cpuinfo")?;
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim())
        })
        .unwrap_or("unknown")
        .to_owned();
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .context("cannot read /proc/loadavg")?
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    Ok(Machine {
        nproc,
        cpu_model,
        load_average,
    })
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_is_the_middle_run_or_the_mean_of_the_two_middle_ones() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[1.19]), 1.19);
        assert_eq!(median(&[1.19, 1.089, 1.039]), 1.089);
        assert_eq!(median(&[145.392, 139.226, 145.202]), 145.202);
        assert_eq!(median(&[0.3, 0.1, 0.4, 0.2]), 0.25);
    }
}
