//! `cargo xtask conformance`: runs the binary's contract
//! (docs/binary-contract.md) against a built binary, and reports each
//! clause. The pipeline relies on every clause: dist and `verify --run`
//! read `version --json`, the image's HEALTHCHECK runs `healthcheck`, the
//! chart and compose expect port 8080 and a drain on SIGTERM, and the image
//! has no libc to load.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Serialize;
use serde_json::Value;

use crate::build::binaries::{build, DistOptions};
use crate::flags;
use crate::support::config::Config;
use crate::support::elf::Elf;
use crate::support::source::Source;

mod serve;
mod target;

use serve::{default_port, healthcheck_dead_port, serve_and_drain};
use target::Target;

/// The drain delay and shutdown timeout the server runs with: short, so
/// that the check is quick, and long enough to see the 503.
const DRAIN_DELAY: Duration = Duration::from_secs(2);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// The port the server listens on when SERVER_ADDR is unset.
pub const DEFAULT_PORT: u16 = 8080;

/// One clause of the contract, checked.
#[derive(Debug, Serialize)]
pub struct Clause {
    pub name: &'static str,
    pub passed: bool,
    /// What was seen: the evidence when it passed, what was wrong if not.
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub binary: String,
    /// `qemu-aarch64-static` when the binary is for another architecture.
    pub emulator: Option<String>,
    pub passed: bool,
    pub clauses: Vec<Clause>,
}

/// What `version --json` must report, when known.
#[derive(Debug, Default, Clone)]
pub struct Expected {
    pub version: Option<String>,
    pub git_sha: Option<String>,
}

pub fn run(flags: &flags::Conformance) -> Result<()> {
    let (binary, mut expected) = match &flags.binary {
        Some(binary) => (binary.clone(), Expected::default()),
        None => default_binary()?,
    };
    if let Some(version) = &flags.expect_version {
        expected.version = Some(version.trim_start_matches('v').to_owned());
    }
    if let Some(sha) = &flags.expect_sha {
        expected.git_sha = Some(sha.clone());
    }
    let report = check(&binary, &expected)?;
    if flags.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot print the report as JSON")?
        );
    } else {
        print_report(&report);
    }
    let failed: Vec<&str> = report
        .clauses
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name)
        .collect();
    if !failed.is_empty() {
        bail!(
            "{binary} breaks the binary contract: {}; docs/binary-contract.md says what each clause needs",
            failed.join(", ")
        );
    }
    Ok(())
}

/// The host platform's binary, built by dist (incremental, so quick when it
/// is current), with the version and commit dist builds it from.
fn default_binary() -> Result<(Utf8PathBuf, Expected)> {
    let config = Config::load()?;
    let host = config
        .platforms
        .iter()
        .find(|p| p.is_host())
        .cloned()
        .with_context(|| {
            format!(
                "no configured platform runs on this {} machine; pass --binary PATH",
                std::env::consts::ARCH
            )
        })?;
    let dist = build(
        &config,
        std::slice::from_ref(&host),
        DistOptions::verified(),
    )?;
    let source = Source::detect(&config.workspace_root)?;
    Ok((
        dist.binary(&config, &host)?,
        Expected {
            version: Some(config.version.to_string()),
            git_sha: Some(source.sha),
        },
    ))
}

/// Runs every clause against `binary`. Fails only when the binary cannot
/// be read at all; a broken clause is a failed clause in the report.
pub fn check(binary: &Utf8Path, expected: &Expected) -> Result<Report> {
    let bytes = std::fs::read(binary)
        .with_context(|| format!("cannot read {binary}; pass the path of a built binary"))?;
    let elf = Elf::parse(&bytes);
    let target = Target::new(binary, elf.as_ref().map(|e| e.machine))?;
    let mut clauses = vec![static_elf(elf.as_ref())];
    clauses.push(version_line(&target));
    clauses.push(version_json(&target, expected));
    clauses.push(unknown_subcommand(&target));
    clauses.extend(serve_and_drain(&target));
    clauses.push(healthcheck_dead_port(&target));
    clauses.push(default_port(&target));
    Ok(Report {
        binary: binary.to_string(),
        emulator: target.emulator.as_ref().map(|e| e.display().to_string()),
        passed: clauses.iter().all(|c| c.passed),
        clauses,
    })
}

fn print_report(report: &Report) {
    match &report.emulator {
        Some(emulator) => println!("{} (under {emulator})", report.binary),
        None => println!("{}", report.binary),
    }
    for clause in &report.clauses {
        let mark = if clause.passed { "pass" } else { "FAIL" };
        println!("  {mark}  {:<22} {}", clause.name, clause.detail);
    }
}

fn clause(name: &'static str, result: Result<String, String>) -> Clause {
    let (passed, detail) = match result {
        Ok(detail) => (true, detail),
        Err(detail) => (false, detail),
    };
    Clause {
        name,
        passed,
        detail,
    }
}

fn static_elf(elf: Option<&Elf>) -> Clause {
    clause(
        "static-elf",
        match elf {
            None => Err("not a 64-bit little-endian ELF executable".to_owned()),
            Some(elf) if elf.machine == "unknown" => {
                Err("an ELF for neither x86_64 nor aarch64".to_owned())
            }
            Some(elf) if elf.has_interpreter => Err(format!(
                "ELF {} linked dynamically (it has a PT_INTERP program header); build with -C target-feature=+crt-static",
                elf.machine
            )),
            Some(elf) => Ok(format!("ELF {}, statically linked", elf.machine)),
        },
    )
}

const QUICK: Duration = Duration::from_secs(10);

fn version_line(target: &Target) -> Clause {
    clause(
        "version",
        match target.run(&["version"], &[], QUICK) {
            Ok((Some(0), line)) if !line.is_empty() => Ok(format!("exit 0: {line}")),
            Ok((Some(0), _)) => Err("`version` exits 0 but prints nothing".to_owned()),
            Ok((code, _)) => Err(format!("`version` {}, expected 0", exits(code))),
            Err(why) => Err(why),
        },
    )
}

fn version_json(target: &Target, expected: &Expected) -> Clause {
    let checked = target
        .run(&["version", "--json"], &[], QUICK)
        .and_then(|(code, output)| match code {
            Some(0) => check_version_json(&output, expected),
            code => Err(format!("`version --json` {}, expected 0", exits(code))),
        });
    clause("version-json", checked)
}

/// The fields the pipeline reads: `version` (dist and `verify --run`
/// compare it with the release) and `git_sha` (the commit, compared with
/// the image's revision label).
pub fn check_version_json(output: &str, expected: &Expected) -> Result<String, String> {
    let info: Value = serde_json::from_str(output)
        .map_err(|_| format!("`version --json` printed {output:?}, not one JSON object"))?;
    let field = |name: &str| -> Result<&str, String> {
        info.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("`version --json` has no string field {name:?}: {output}"))
    };
    let version = field("version")?;
    semver::Version::parse(version).map_err(|_| {
        format!(
            "`version --json` reports version {version:?}, not a semantic version such as 1.2.3"
        )
    })?;
    let git_sha = field("git_sha")?;
    if git_sha.len() != 40 || !git_sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "`version --json` reports git_sha {git_sha:?}, not a 40-hex commit; embed SERVER_BUILD_GIT_SHA at build time"
        ));
    }
    if let Some(want) = expected.version.as_deref().filter(|want| *want != version) {
        return Err(format!(
            "`version --json` reports version {version}, expected {want}"
        ));
    }
    if let Some(want) = expected.git_sha.as_deref().filter(|want| *want != git_sha) {
        return Err(format!(
            "`version --json` reports git_sha {git_sha}, expected {want}"
        ));
    }
    Ok(format!("version {version}, git_sha {git_sha}"))
}

fn unknown_subcommand(target: &Target) -> Clause {
    clause(
        "unknown-subcommand",
        match target.run(&["no-such-subcommand"], &[], QUICK) {
            Ok((Some(0), _)) => {
                Err("`no-such-subcommand` exits 0; an unknown subcommand must fail".to_owned())
            }
            Ok((code, _)) => Ok(format!("`no-such-subcommand` {}", exits(code))),
            Err(why) => Err(why),
        },
    )
}

/// `exits 2`, or how it ended without an exit code.
fn exits(code: Option<i32>) -> String {
    match code {
        Some(code) => format!("exits {code}"),
        None => "is killed by a signal".to_owned(),
    }
}
