//! Measuring a running server: start to healthy, RSS, healthcheck time and
//! load, each against the release binary on a free loopback port.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use camino::Utf8PathBuf;
use xshell::{cmd, Shell};

use super::report::{parse_wrk, summary};
use super::{Healthcheck, Load, Settings, StartToHealthy, HEALTHCHECK_TARGET_MS, START_TARGET_MS};
use crate::support::config::Config;

/// Longer than any sane start: past this the server is broken, not slow.
const START_GIVE_UP: Duration = Duration::from_secs(10);

pub(super) fn measure_start(server: &Utf8PathBuf, runs: usize) -> Result<StartToHealthy> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let port = free_port()?;
        let started = Instant::now();
        let child = spawn_server(server, port, &[])?;
        let result = wait_for_200(&child, port, "/healthz", started);
        // duct's kill also reaps the child.
        let _ = child.kill();
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

/// Polls GET `path` on fresh connections as fast as the kernel answers,
/// and returns the time since `started` of the first 200.
pub(super) fn wait_for_200(
    child: &duct::Handle,
    port: u16,
    path: &str,
    started: Instant,
) -> Result<Duration> {
    loop {
        if let Some(output) = child.try_wait()? {
            bail!(
                "the server exited with {} before answering on 127.0.0.1:{port}",
                output.status
            );
        }
        if started.elapsed() > START_GIVE_UP {
            bail!(
                "the server did not answer 200 on 127.0.0.1:{port}{path} within {}s",
                START_GIVE_UP.as_secs()
            );
        }
        if get_status(port, path) == Some(200) {
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

pub(super) fn spawn_server(
    server: &Utf8PathBuf,
    port: u16,
    env: &[(&str, &str)],
) -> Result<duct::Handle> {
    // Only SERVER_ADDR and `env`: the figures are for the default
    // configuration, whatever SERVER_* variables the caller's shell has.
    let mut command = duct::cmd!(server.as_std_path(), "serve");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SERVER_") {
            command = command.env_remove(name);
        }
    }
    for (name, value) in env {
        command = command.env(name, value);
    }
    command
        .env("SERVER_ADDR", format!("127.0.0.1:{port}"))
        .stdin_null()
        .stdout_null()
        .stderr_null()
        .unchecked()
        .start()
        .with_context(|| format!("cannot start {server}"))
}

/// A loopback port the kernel has just handed out. It is released before
/// the server binds it; a race would show as a failed start, not a wrong figure.
pub(super) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The server the idle, healthcheck and load figures are taken from;
/// killed if the bench stops early.
pub(super) struct RunningServer {
    child: Option<duct::Handle>,
    pub(super) port: u16,
}

impl RunningServer {
    /// Started with `env` added, and ready once `ready_path` answers 200.
    pub(super) fn start(
        server: &Utf8PathBuf,
        env: &[(&str, &str)],
        ready_path: &str,
    ) -> Result<RunningServer> {
        let port = free_port()?;
        let started = Instant::now();
        let running = RunningServer {
            child: Some(spawn_server(server, port, env)?),
            port,
        };
        if let Some(child) = running.child.as_ref() {
            wait_for_200(child, port, ready_path, started)?;
        }
        Ok(running)
    }

    fn pid_of(&self, child: &duct::Handle) -> u32 {
        child.pids().first().copied().unwrap_or(0)
    }

    pub(super) fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(|c| c.pids().first().copied())
            .unwrap_or(0)
    }

    /// SIGTERM, and a clean exit within the drain timeout, as in production.
    pub(super) fn stop(&mut self) -> Result<()> {
        let Some(child) = self.child.take() else {
            return Ok(());
        };
        let pid = self.pid_of(&child).to_string();
        let sh = Shell::new()?;
        cmd!(sh, "kill -TERM {pid}").quiet().run()?;
        match child.wait_timeout(Duration::from_secs(15))? {
            Some(output) if output.status.success() => Ok(()),
            Some(output) => bail!(
                "the server exited with {} after SIGTERM, not 0",
                output.status
            ),
            None => {
                let _ = child.kill();
                bail!("the server did not exit within 15s of SIGTERM")
            }
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = child.kill();
        }
    }
}

pub(super) fn rss_kib(pid: u32) -> Result<u64> {
    status_field_kib(pid, "VmRSS:")
}

/// Runs `command` to its end and returns its peak resident memory (VmHWM,
/// which only grows), read from /proc while it runs; the last reading
/// before it exits is the peak.
pub(super) fn peak_rss_kib_of(command: &mut std::process::Command, what: &str) -> Result<u64> {
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {what}"))?;
    let mut peak = 0;
    let status = loop {
        peak = peak.max(status_field_kib(child.id(), "VmHWM:").unwrap_or(0));
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        bail!("`{what}` failed: {}", stderr.trim());
    }
    Ok(peak)
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

pub(super) fn measure_healthcheck(
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

pub(super) fn measure_load(
    sh: &Shell,
    wrk: &Path,
    running: &RunningServer,
    path: &str,
    settings: &Settings,
    commands: &mut Vec<String>,
) -> Result<Load> {
    let pid = running.pid();
    let url = format!("http://127.0.0.1:{}{path}", running.port);
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
