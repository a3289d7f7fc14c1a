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
//! - load: wrk on loopback against /healthz, with VmRSS sampled meanwhile.

mod report;

use report::{parse_wrk, render, summary};

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use camino::Utf8PathBuf;
use serde::Serialize;
use xshell::{cmd, Shell};

use crate::flags::{self, Strategy};
use crate::support::config::{Config, Platform};
use crate::support::elf::Elf;
use crate::support::git::Git;
use crate::support::progress::Steps;
use crate::support::tools::{self, Tool};

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

/// Longer than any sane start: past this the server is broken, not slow.
const START_GIVE_UP: Duration = Duration::from_secs(10);

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
    // Before anything slow, so that a missing tool fails at once.
    let wrk = WRK.find()?;
    let hyperfine = HYPERFINE.find()?;
    let config = Config::load()?;
    let settings = Settings::new(flags.quick);
    let sh = Shell::new()?;
    sh.change_dir(&config.workspace_root);
    sh.set_var("PATH", tools::augmented_path());
    let mut commands = Vec::new();
    let mut steps = Steps::new(7);

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
        RunningServer::start(&server)
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
        measure_load(&sh, &wrk, &running, &settings, &mut commands)
    })?;

    running.stop()?;

    let report = Report {
        server: config.relative(&server).to_string(),
        git_sha,
        quick: flags.quick,
        size,
        idle_rss,
        start_to_healthy,
        healthcheck,
        load,
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
    let output = Command::new(binary)
        .args(["version", "--json"])
        .output()
        .with_context(|| format!("cannot run {binary} version --json"))?;
    if !output.status.success() {
        bail!(
            "{binary} version --json failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)
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
        crate::build::binaries::build(config, &[amd64], Strategy::Auto, true, false)?;
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

fn measure_start(server: &Utf8PathBuf, runs: usize) -> Result<StartToHealthy> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let port = free_port()?;
        let started = Instant::now();
        let mut child = spawn_server(server, port)?;
        let result = wait_healthy(&mut child, port, started);
        let _ = child.kill();
        let _ = child.wait();
        times.push(result?.as_secs_f64() * 1000.0);
    }
    let (median_ms, min_ms, max_ms) = summary(&mut times);
    Ok(StartToHealthy {
        runs,
        median_ms,
        min_ms,
        max_ms,
        target_ms: START_TARGET_MS,
        ok: median_ms <= START_TARGET_MS,
    })
}

/// Polls GET /healthz on fresh connections as fast as the kernel answers,
/// and returns the time since `started` of the first 200.
fn wait_healthy(child: &mut Child, port: u16, started: Instant) -> Result<Duration> {
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the server exited with {status} before answering on 127.0.0.1:{port}");
        }
        if started.elapsed() > START_GIVE_UP {
            bail!(
                "the server did not answer 200 on 127.0.0.1:{port}/healthz within {}s",
                START_GIVE_UP.as_secs()
            );
        }
        if get_status(port, "/healthz") == Some(200) {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn get_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.set_nodelay(true).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn spawn_server(server: &Utf8PathBuf, port: u16) -> Result<Child> {
    // Only SERVER_ADDR: the figures are for the default configuration,
    // whatever SERVER_* variables the caller's shell has.
    let mut command = Command::new(server);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SERVER_") {
            command.env_remove(name);
        }
    }
    command
        .arg("serve")
        .env("SERVER_ADDR", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {server}"))
}

/// A loopback port the kernel has just handed out. It is released before
/// the server binds it; a race would show as a failed start, not a wrong figure.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The server the idle, healthcheck and load figures are taken from;
/// killed if the bench stops early.
struct RunningServer {
    child: Option<Child>,
    port: u16,
}

impl RunningServer {
    fn start(server: &Utf8PathBuf) -> Result<RunningServer> {
        let port = free_port()?;
        let started = Instant::now();
        let mut running = RunningServer {
            child: Some(spawn_server(server, port)?),
            port,
        };
        if let Some(child) = running.child.as_mut() {
            wait_healthy(child, port, started)?;
        }
        Ok(running)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, and a clean exit within the drain timeout, as in production.
    fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id().to_string();
        let sh = Shell::new()?;
        cmd!(sh, "kill -TERM {pid}").quiet().run()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("the server exited with {status} after SIGTERM, not 0");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the server did not exit within 15s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn rss_kib(pid: u32) -> Result<u64> {
    status_field_kib(pid, "VmRSS:")
}

fn status_field_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .with_context(|| format!("no {field} line in {path}"))
}

fn measure_healthcheck(
    sh: &Shell,
    config: &Config,
    hyperfine: &Path,
    server: &Utf8PathBuf,
    port: u16,
    settings: &Settings,
    commands: &mut Vec<String>,
) -> Result<Healthcheck> {
    let export = config.target_dir.join("bench").join("hyperfine.json");
    std::fs::create_dir_all(export.parent().unwrap_or(&config.target_dir))?;
    // `-N` runs the command without a shell, which would otherwise be most
    // of what is measured; hyperfine then splits the command like a shell.
    let probe = format!(
        "{} healthcheck --url http://127.0.0.1:{port}/healthz",
        crate::support::tools::shell_quote(server.as_str())
    );
    let shown = format!(
        "{} healthcheck --url http://127.0.0.1:{port}/healthz",
        config.relative(server)
    );
    let runs = settings.healthcheck_runs.to_string();
    let warmup = settings.healthcheck_warmup.to_string();
    cmd!(
        sh,
        "{hyperfine} -N --style none --warmup {warmup} --runs {runs} --export-json {export} {probe}"
    )
    .read()
    .context("hyperfine failed: the healthcheck did not exit 0 against a healthy server")?;
    commands.push(format!(
        "hyperfine -N --warmup {warmup} --runs {runs} --export-json {} '{shown}'",
        config.relative(&export)
    ));
    let text = std::fs::read_to_string(&export).with_context(|| format!("cannot read {export}"))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{export} is not JSON"))?;
    let result = &json["results"][0];
    let ms = |key: &str| -> Result<f64> {
        result[key]
            .as_f64()
            .map(|secs| secs * 1000.0)
            .with_context(|| format!("{export} has no results[0].{key}"))
    };
    let median_ms = ms("median")?;
    Ok(Healthcheck {
        runs: settings.healthcheck_runs,
        median_ms,
        mean_ms: ms("mean")?,
        min_ms: ms("min")?,
        max_ms: ms("max")?,
        target_ms: HEALTHCHECK_TARGET_MS,
        ok: median_ms <= HEALTHCHECK_TARGET_MS,
    })
}

fn measure_load(
    sh: &Shell,
    wrk: &Path,
    running: &RunningServer,
    settings: &Settings,
    commands: &mut Vec<String>,
) -> Result<Load> {
    let pid = running.pid();
    let url = format!("http://127.0.0.1:{}/healthz", running.port);
    let threads = format!("-t{}", settings.wrk_threads);
    let connections = format!("-c{}", settings.wrk_connections);
    let duration = format!("-d{}s", settings.wrk_seconds);
    let done = AtomicBool::new(false);
    let (output, rss_peak_kib) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        let output = cmd!(
            sh,
            "{wrk} {threads} {connections} {duration} --latency {url}"
        )
        .read();
        done.store(true, Ordering::Relaxed);
        (output, sampler.join().unwrap_or(0))
    });
    let output = output.context("wrk failed")?;
    commands.push(format!(
        "wrk {threads} {connections} {duration} --latency {url}"
    ));
    let mut load =
        parse_wrk(&output).with_context(|| format!("cannot read the wrk report:\n{output}"))?;
    load.threads = settings.wrk_threads;
    load.connections = settings.wrk_connections;
    load.duration_s = settings.wrk_seconds;
    load.rss_peak_kib = rss_peak_kib;
    load.rss_after_kib = rss_kib(pid)?;
    Ok(load)
}

#[cfg(test)]
mod tests {
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
