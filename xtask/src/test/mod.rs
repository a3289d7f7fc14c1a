//! `cargo xtask test`: the one command that CI and developers run.
//!
//! It compiles every test binary once, then runs them itself, several at a
//! time (most of a test's time is spent waiting on registries, cosign and
//! qemu, not computing), longest first by the last run's times. It reports
//! what each one spent in `target/test-times.json` and prints the ten
//! slowest. `--quick` leaves out the binaries that publish whole releases,
//! make cold builds or run the container engine.

mod binaries;
mod times;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use camino::Utf8PathBuf;
use xshell::{cmd, Shell};

use crate::support::config::{Config, BUILD_DIR_VARIABLE};
use crate::support::progress::Steps;
use crate::support::{git, tools};
use crate::{flags, setup};

use binaries::{RunOptions, TestBinary};
use times::{Phase, Summary};

/// The test binaries that publish whole releases, make cold builds or run
/// the container engine: what `--quick` leaves out, and what a fresh run
/// starts first.
pub const SLOW_BINARIES: &[&str] = &[
    "xtask --test adopt",
    "xtask --test air_gapped",
    "xtask --test audit",
    "xtask --test bench",
    "xtask --test dist",
    "xtask --test doc_commands",
    "xtask --test engine",
    "xtask --test engine_chart",
    "xtask --test keyless",
    "xtask --test references",
    "xtask --test release",
    "xtask --test release_chart",
    "xtask --test release_progress",
];
/// How long one test binary may run before it is stopped, with everything
/// it started: longer than any binary needs on a loaded 2-core machine, so
/// that a hung test fails the run instead of holding CI until its limit.
const DEFAULT_TIME_LIMIT_S: u64 = 40 * 60;

pub fn run(flags: &flags::Test) -> Result<()> {
    let started = Instant::now();
    let mut phases = Vec::new();
    let mut phase = |name: &str, since: Instant| {
        phases.push(Phase {
            name: name.to_owned(),
            seconds: (since.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        })
    };
    if !flags.no_setup {
        let at = Instant::now();
        setup::run(&flags::Setup {
            check: false,
            dry_run: false,
        })?;
        phase("cargo xtask setup", at);
    }
    let config = Config::load()?;
    let sh = Shell::new()?;
    sh.change_dir(&config.workspace_root);
    sh.set_var("PATH", tools::augmented_path());
    let mut steps = Steps::new(if flags.quick { 3 } else { 5 });

    if !flags.quick {
        let at = Instant::now();
        steps.run("cargo fmt --check", || {
            cmd!(sh, "cargo fmt --all -- --check")
                .run()
                .context("code is not formatted; run `cargo fmt --all`")
        })?;
        phase("cargo fmt --check", at);
        let at = Instant::now();
        steps.run("cargo clippy", || {
            cmd!(sh, "cargo clippy --workspace --all-targets -- -D warnings")
                .run()
                .context("clippy found problems")
        })?;
        phase("cargo clippy", at);
    }
    // The server's integration tests start the release binary, the one that
    // ships, not the debug build.
    let package = &config.package;
    let at = Instant::now();
    steps.run("cargo build --release -p server", || {
        cmd!(sh, "cargo build --release --package {package}")
            .run()
            .context("release build failed")
    })?;
    phase("cargo build --release (the server)", at);

    let at = Instant::now();
    let mut binaries = steps.run("compile the test binaries", || compile(&sh))?;
    phase("compile the test binaries", at);
    if flags.quick {
        binaries.retain(|b| !SLOW_BINARIES.contains(&b.name.as_str()));
    }

    let times_path = config.target_dir.join("test-times.json");
    let last = times::previous(&times_path);
    times::longest_first(&mut binaries, |b| &b.name, &last, SLOW_BINARIES);
    let jobs = flags.jobs.map_or_else(default_jobs, usize::from);
    let server_binary = config.target_dir.join("release").join(&config.binary);
    // The tests release from fresh clones of the workspace; sharing one
    // build directory between them compiles the server's dependencies once
    // per run instead of once per clone.
    let env = vec![
        ("SERVER_TEST_BINARY".to_owned(), server_binary.to_string()),
        (
            BUILD_DIR_VARIABLE.to_owned(),
            config.target_dir.join("clone-builds").to_string(),
        ),
    ];
    let log_dir = config.target_dir.join("test-logs");
    let count = binaries.len();
    let at = Instant::now();
    let outcomes = steps.run(
        &format!("run {count} test binaries, {jobs} at a time"),
        || {
            binaries::run_all(
                binaries,
                &RunOptions {
                    jobs,
                    time_limit: Duration::from_secs(
                        flags.time_limit.unwrap_or(DEFAULT_TIME_LIMIT_S),
                    ),
                    args: &flags.cargo_test_args,
                    env: &env,
                    log_dir: &log_dir,
                },
            )
        },
    )?;
    phase("run the test binaries", at);
    phase("total", started);

    let commit = git::Git::open(&config.workspace_root)
        .and_then(|g| g.head_sha())
        .unwrap_or_else(|_| "unknown".to_owned());
    let summary = Summary::new(commit, jobs, phases, &outcomes);
    let json = summary.to_json()?;
    std::fs::write(&times_path, format!("{json:#}\n"))
        .with_context(|| format!("cannot write {times_path}"))?;
    eprintln!("\n{}", summary.text());
    eprintln!("every figure: {times_path}");

    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.success)
        .map(|o| match &o.failure {
            Some(why) => format!(
                "{} ({why}; its output: {})",
                o.name,
                log_dir.join("").as_str()
            ),
            None => o.name.clone(),
        })
        .collect();
    // One plain closing line that any reader of the log can count.
    println!(
        "\ntests: {} passed, {} failed, {} skipped",
        summary.passed, summary.failed, summary.ignored
    );
    if !failed.is_empty() {
        bail!(
            "{} of {count} test binaries failed: {}; re-run one with `cargo test -p NAME`",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// Three at a time on two cores: the binaries mostly wait on servers and
/// subprocesses, and three kept both cores busy without starving the cold
/// builds (docs/performance.md has the figures).
fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get() + 1)
}

/// `cargo test --workspace --no-run`: every test binary, compiled once.
fn compile(sh: &Shell) -> Result<Vec<TestBinary>> {
    let messages = cmd!(
        sh,
        "cargo test --workspace --no-run --message-format=json-render-diagnostics"
    )
    .read()
    .context("the tests do not compile")?;
    let metadata = cargo_metadata::MetadataCommand::new()
        .current_dir(sh.current_dir())
        .no_deps()
        .exec()
        .context("cannot read the workspace's packages with cargo metadata")?;
    let packages: BTreeMap<Utf8PathBuf, (String, String)> = metadata
        .packages
        .iter()
        .map(|p| {
            (
                p.manifest_path.clone(),
                (p.name.to_string(), p.version.to_string()),
            )
        })
        .collect();
    binaries::from_cargo_messages(&messages, &packages)
}
