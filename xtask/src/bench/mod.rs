//! `cargo xtask bench`: measures the server against its budgets
//! and prints a report, or JSON with `--json`.
//!
//! These are benchmarks, not tests: a missed target is reported, never an
//! error, because the figures depend on the machine and on what else runs
//! on it. What is measured, and how:
//! - size: the stripped static amd64 binary that ships, from target/dist
//!   (built with `cargo xtask dist` machinery when it is missing);
//! - everything at run time: the release build of the server, started with
//!   its default configuration (JSON request logs, here to /dev/null);
//! - start → first 200: from just before spawn until a GET /healthz on a
//!   fresh connection answers 200, median of N runs;
//! - idle RSS: VmRSS in /proc/PID/status, 500 ms after the first 200;
//! - healthcheck: `server healthcheck` wall time, with hyperfine and no shell;
//! - load: wrk on loopback against /healthz, with VmRSS sampled meanwhile;
//! - the same with a database, in `database`.
//!
//! With `--pipeline`, the release pipeline instead (pipeline.rs, cold.rs).

mod cold;
mod database;
mod measure;
mod pipeline;
mod registry;
mod report;

use std::time::Duration;

use anyhow::{Context, Result};
use camino::Utf8PathBuf;
use serde::Serialize;
use xshell::{cmd, Shell};

use crate::flags::{self};
use crate::support::config::{Config, Platform};
use crate::support::elf::Elf;
use crate::support::git::Git;
use crate::support::progress::Steps;
use crate::support::tools::{self, Tool};

use database::WithDatabase;
use measure::{measure_healthcheck, measure_load, measure_start, rss_kib, RunningServer};
use report::render;

const WRK: Tool = Tool {
    name: "wrk",
    install_hint: "run `cargo xtask setup` (apt-get install wrk)",
};
const HYPERFINE: Tool = Tool {
    name: "hyperfine",
    install_hint: "run `cargo xtask setup` (apt-get install hyperfine)",
};

/// The budgets the server is held to. "MB" is read as MiB, the stricter choice for
/// RSS (reported by the kernel in KiB) and the one `ls -lh` shows.
const SIZE_TARGET_BYTES: u64 = 4 * 1024 * 1024;
const IDLE_RSS_TARGET_KIB: u64 = 6 * 1024;
const START_TARGET_MS: f64 = 50.0;
const HEALTHCHECK_TARGET_MS: f64 = 10.0;

struct Settings {
    start_runs: usize,
    healthcheck_runs: usize,
    healthcheck_warmup: usize,
    wrk_threads: u32,
    wrk_connections: u32,
    wrk_seconds: u32,
}

impl Settings {
    fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                start_runs: 3,
                healthcheck_runs: 10,
                healthcheck_warmup: 1,
                wrk_threads: 2,
                wrk_connections: 50,
                wrk_seconds: 1,
            }
        } else {
            Settings {
                start_runs: 21,
                healthcheck_runs: 100,
                healthcheck_warmup: 5,
                wrk_threads: 2,
                wrk_connections: 50,
                wrk_seconds: 10,
            }
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    /// The binary whose run-time figures these are.
    pub server: String,
    pub git_sha: String,
    pub quick: bool,
    pub size: Size,
    pub idle_rss: IdleRss,
    pub start_to_healthy: StartToHealthy,
    pub healthcheck: Healthcheck,
    pub load: Load,
    /// Reported, not held to a budget: the budgets are for the stateless
    /// server.
    pub with_database: WithDatabase,
    /// The exact commands behind the figures, in the order they ran.
    pub commands: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Size {
    pub path: String,
    pub bytes: u64,
    /// No ELF interpreter: nothing is loaded from the image at run time.
    #[serde(rename = "static")]
    pub is_static: bool,
    /// No symbol table.
    pub stripped: bool,
    /// True when the binary comes from target/dist; false when `--quick`
    /// fell back to the release build because target/dist had none.
    pub from_dist: bool,
    pub target_bytes: u64,
    pub ok: bool,
}

#[derive(Debug, Serialize)]
pub struct IdleRss {
    pub kib: u64,
    pub target_kib: u64,
    pub ok: bool,
}

#[derive(Debug, Serialize)]
pub struct StartToHealthy {
    pub runs: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub target_ms: f64,
    pub ok: bool,
}

#[derive(Debug, Serialize)]
pub struct Healthcheck {
    pub runs: usize,
    pub median_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub target_ms: f64,
    pub ok: bool,
}

#[derive(Debug, Serialize)]
pub struct Load {
    pub threads: u32,
    pub connections: u32,
    pub duration_s: u32,
    pub requests: u64,
    pub requests_per_sec: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// Responses other than 2xx/3xx, and socket errors: both should be 0.
    pub non_2xx: u64,
    pub socket_errors: u64,
    pub rss_peak_kib: u64,
    pub rss_after_kib: u64,
}

pub fn run(flags: &flags::Bench) -> Result<()> {
    if flags.pipeline {
        return pipeline::run(flags);
    }
    // Before anything slow, so that a missing tool fails at once.
    let wrk = WRK.find()?;
    let hyperfine = HYPERFINE.find()?;
    let config = Config::load()?;
    let settings = Settings::new(flags.quick);
    let sh = Shell::new()?;
    sh.change_dir(&config.workspace_root);
    sh.set_var("PATH", tools::augmented_path());
    let mut commands = Vec::new();
    let mut steps = Steps::new(8);

    let package = &config.package;
    steps.run("build the release server", || {
        cmd!(sh, "cargo build --release --package {package}")
            .run()
            .context("the release build failed; see the cargo output above")
    })?;
    commands.push(format!("cargo build --release --package {package}"));
    let server = config.target_dir.join("release").join(&config.binary);
    let git_sha = binary_git_sha(&server)?;

    let size = steps.run("size of the static amd64 binary", || {
        measure_size(&config, &server, flags.quick, &mut commands)
    })?;

    let start_to_healthy = steps.run(
        &format!("start to first 200, {} runs", settings.start_runs),
        || measure_start(&server, settings.start_runs),
    )?;
    commands.push(format!(
        "SERVER_ADDR=127.0.0.1:PORT {} serve, timed from spawn to the first 200 on GET /healthz, {} runs",
        config.relative(&server),
        settings.start_runs
    ));

    let mut running = steps.run("start a server for the remaining figures", || {
        RunningServer::start(&server, &[], "/healthz")
    })?;
    let port = running.port;

    let idle_rss = steps.run("idle RSS", || {
        std::thread::sleep(Duration::from_millis(500));
        let kib = rss_kib(running.pid())?;
        Ok(IdleRss {
            kib,
            target_kib: IDLE_RSS_TARGET_KIB,
            ok: kib <= IDLE_RSS_TARGET_KIB,
        })
    })?;
    commands.push(format!(
        "grep VmRSS /proc/{}/status, 500 ms after the first 200",
        running.pid()
    ));

    let healthcheck = steps.run("server healthcheck wall time (hyperfine)", || {
        measure_healthcheck(
            &sh,
            &config,
            &hyperfine,
            &server,
            port,
            &settings,
            &mut commands,
        )
    })?;

    let load = steps.run("load on /healthz (wrk)", || {
        measure_load(&sh, &wrk, &running, "/healthz", &settings, &mut commands)
    })?;

    running.stop()?;

    let with_database = steps.run("figures with a database (PostgreSQL 15)", || {
        let shown = config.relative(&server).to_string();
        database::measure(&sh, &wrk, &server, &shown, &settings, &mut commands)
    })?;

    let report = Report {
        server: config.relative(&server).to_string(),
        git_sha,
        quick: flags.quick,
        size,
        idle_rss,
        start_to_healthy,
        healthcheck,
        load,
        with_database,
        commands,
    };
    if flags.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report, &settings));
    }
    Ok(())
}

/// The git sha the binary reports, to say what was measured.
fn binary_git_sha(binary: &Utf8PathBuf) -> Result<String> {
    let sh = Shell::new()?;
    let output = cmd!(sh, "{binary} version --json")
        .quiet()
        .read()
        .with_context(|| format!("{binary} version --json failed"))?;
    let json: serde_json::Value = serde_json::from_str(&output)
        .with_context(|| format!("{binary} version --json did not print JSON"))?;
    Ok(json["git_sha"].as_str().unwrap_or("unknown").to_owned())
}

fn measure_size(
    config: &Config,
    release_binary: &Utf8PathBuf,
    quick: bool,
    commands: &mut Vec<String>,
) -> Result<Size> {
    let amd64: Platform = "linux/amd64".parse()?;
    let dist_binary = config.dist_dir().join(amd64.slug()).join(&config.binary);
    let (path, from_dist) = if dist_binary.is_file() {
        (dist_binary, true)
    } else if quick {
        eprintln!(
            "note: {} is missing; --quick reports the size of {} instead",
            config.relative(&dist_binary),
            config.relative(release_binary)
        );
        (release_binary.clone(), false)
    } else {
        crate::build::binaries::build(
            config,
            &[amd64],
            crate::build::binaries::DistOptions::verified(),
        )?;
        commands.push("cargo xtask dist --platform linux/amd64".to_owned());
        (dist_binary, true)
    };
    if from_dist {
        warn_if_stale(config, &path);
    }
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {path}"))?;
    let elf = Elf::parse(&bytes).with_context(|| format!("{path} is not an ELF64 executable"))?;
    let size = bytes.len() as u64;
    commands.push(format!("stat -c %s {}", config.relative(&path)));
    Ok(Size {
        path: config.relative(&path).to_string(),
        bytes: size,
        is_static: !elf.has_interpreter,
        stripped: !elf.has_symtab,
        from_dist,
        target_bytes: SIZE_TARGET_BYTES,
        ok: size <= SIZE_TARGET_BYTES && !elf.has_interpreter && !elf.has_symtab,
    })
}

/// A dist binary from an older commit would be measured silently otherwise.
fn warn_if_stale(config: &Config, binary: &Utf8PathBuf) {
    let head = Git::open(&config.workspace_root).and_then(|git| git.head_sha());
    match (binary_git_sha(binary), head) {
        (Ok(built), Ok(head)) if built != head => eprintln!(
            "warning: {} was built from {built}, not HEAD {head}; run `cargo xtask dist --platform linux/amd64` to measure the current source",
            config.relative(binary)
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::report::{parse_wrk, summary};
    use super::*;

    #[test]
    fn reads_a_wrk_report() {
        let output = "\
Running 2s test @ http://127.0.0.1:18790/healthz
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.36ms    4.66ms  46.49ms   90.35%
    Req/Sec    11.20k     9.40k   45.72k    87.50%
  Latency Distribution
     50%  812.00us
     75%    4.40ms
     90%    7.95ms
     99%    1.02s
  45659 requests in 2.06s, 5.18MB read
  Socket errors: connect 0, read 3, write 1, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:  22204.55
Transfer/sec:      2.52MB
";
        let load = parse_wrk(output).unwrap();
        assert_eq!(load.requests, 45659);
        assert_eq!(load.requests_per_sec, 22204.55);
        assert!((load.latency_p50_ms - 0.812).abs() < 1e-9);
        assert_eq!(load.latency_p99_ms, 1020.0);
        assert_eq!(load.socket_errors, 6);
        assert_eq!(load.non_2xx, 7);
        assert!(parse_wrk("unable to connect to 127.0.0.1:1 Connection refused").is_none());
    }

    #[test]
    fn medians() {
        assert_eq!(summary(&mut [3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(summary(&mut [4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }

    #[test]
    fn reads_elf_headers_of_this_test_binary() {
        // The test binary is a dynamic, unstripped ELF: both flags set.
        let exe = std::env::current_exe().unwrap();
        let elf = Elf::parse(&std::fs::read(exe).unwrap()).unwrap();
        assert!(elf.has_interpreter);
        assert!(elf.has_symtab);
        assert!(Elf::parse(b"#!/bin/sh\n").is_none());
    }

    #[test]
    fn quotes_paths_for_hyperfine() {
        assert_eq!(
            crate::support::tools::shell_quote("/w/target/release/server"),
            "/w/target/release/server"
        );
        assert_eq!(
            crate::support::tools::shell_quote("/my dir/it's"),
            r"'/my dir/it'\''s'"
        );
    }
}
