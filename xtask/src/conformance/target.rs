//! How a binary is run for the contract: directly, or under qemu; and the
//! loopback HTTP probes the serving clauses use.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::support::tools;

/// How to run the binary: directly, or under qemu for another architecture.
pub struct Target {
    pub binary: Utf8PathBuf,
    pub emulator: Option<PathBuf>,
    /// Everything takes longer under qemu.
    slowdown: u32,
}

impl Target {
    pub fn new(binary: &Utf8Path, machine: Option<&str>) -> Result<Target> {
        let binary = binary
            .canonicalize_utf8()
            .with_context(|| format!("cannot resolve {binary}"))?;
        let emulator = match machine {
            Some(machine) if machine != "unknown" && machine != std::env::consts::ARCH => {
                let name = format!("qemu-{machine}-static");
                Some(tools::find_opt(&name).with_context(|| {
                    format!("{binary} is built for {machine}, which needs {name}: run `cargo xtask setup` (apt-get install qemu-user-static)")
                })?)
            }
            _ => None,
        };
        let slowdown = if emulator.is_some() { 4 } else { 1 };
        Ok(Target {
            binary,
            emulator,
            slowdown,
        })
    }

    /// The binary with `args`, with no SERVER_* variable from the caller's
    /// environment but those in `env`.
    pub fn command(&self, args: &[&str], env: &[(&str, String)]) -> duct::Expression {
        let (program, mut argv): (PathBuf, Vec<String>) = match &self.emulator {
            Some(emulator) => (emulator.clone(), vec![self.binary.to_string()]),
            None => (self.binary.clone().into(), Vec::new()),
        };
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let mut vars: Vec<(String, String)> = std::env::vars()
            .filter(|(name, _)| !name.starts_with("SERVER_"))
            .collect();
        vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        duct::cmd(program, argv)
            .full_env(vars)
            .stdin_null()
            .unchecked()
    }

    pub fn timeout(&self, base: Duration) -> Duration {
        base * self.slowdown
    }

    /// Runs to completion within `timeout`: the exit code (None if killed
    /// by a signal) and stdout; an error if it did not finish in time.
    pub fn run(
        &self,
        args: &[&str],
        env: &[(&str, String)],
        timeout: Duration,
    ) -> Result<(Option<i32>, String), String> {
        let shown = format!("{} {}", self.binary, args.join(" "));
        let handle = self
            .command(args, env)
            .stdout_capture()
            .stderr_null()
            .start()
            .map_err(|e| format!("cannot start `{shown}`: {e}"))?;
        let timeout = self.timeout(timeout);
        match handle.wait_timeout(timeout) {
            Ok(Some(output)) => Ok((
                output.status.code(),
                String::from_utf8_lossy(&output.stdout).trim().to_owned(),
            )),
            Ok(None) => {
                let _ = handle.kill();
                Err(format!(
                    "`{shown}` did not exit within {}s",
                    timeout.as_secs()
                ))
            }
            Err(e) => Err(format!("cannot wait for `{shown}`: {e}")),
        }
    }
}

/// A free TCP port on 127.0.0.1, released before it is used.
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free loopback port: {e}"))
}

/// The status of `GET path` on 127.0.0.1:port, or None if nothing answered.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Waits until `GET path` answers `status`, polling.
pub fn wait_for(port: u16, path: &str, status: u16, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if http_status(port, path) == Some(status) {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    None
}

pub fn sigterm(handle: &duct::Handle) -> Result<(), String> {
    for pid in handle.pids() {
        let pid = pid.to_string();
        duct::cmd("kill", ["-TERM", &pid])
            .stdout_null()
            .stderr_null()
            .run()
            .map_err(|e| format!("cannot send SIGTERM to {pid}: {e}"))?;
    }
    Ok(())
}
