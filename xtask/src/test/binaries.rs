//! The workspace's test binaries: compiled once by `cargo test --no-run`,
//! then run here rather than by cargo, so that several run at once and each
//! one's time is known.
//!
//! Each binary runs as cargo would run it: in its package's directory, with
//! the `CARGO_*` variables cargo sets for a test, and in our process group,
//! so that Ctrl-C reaches it. One past its time limit is stopped with every
//! process it started, found through /proc.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

/// One test executable, and how cargo would run it.
#[derive(Debug, Clone)]
pub struct TestBinary {
    /// How a person re-runs it alone: `xtask --test release`, `xtask --lib`,
    /// `server --bin server`.
    pub name: String,
    pub executable: Utf8PathBuf,
    /// The package's directory: cargo runs every test binary there.
    pub package_dir: Utf8PathBuf,
    pub package_name: String,
    pub package_version: String,
}

/// What one test binary did.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub name: String,
    pub seconds: f64,
    pub counts: Counts,
    pub success: bool,
    /// Why it failed when no test did: a crash, a time-out, a bad start.
    pub failure: Option<String>,
}

/// The sums of libtest's `test result:` lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

/// The test executables of `cargo test --workspace --no-run`'s JSON
/// messages, named as a person would ask cargo for them.
pub fn from_cargo_messages(
    messages: &str,
    packages: &BTreeMap<Utf8PathBuf, (String, String)>,
) -> Result<Vec<TestBinary>> {
    let mut binaries = Vec::new();
    for message in cargo_metadata::Message::parse_stream(messages.as_bytes()) {
        let message = message.context("cannot read cargo's JSON messages")?;
        let cargo_metadata::Message::CompilerArtifact(artifact) = message else {
            continue;
        };
        let Some(executable) = artifact.executable else {
            continue;
        };
        if !artifact.profile.test {
            continue;
        }
        let (package_name, package_version) = packages
            .get(&artifact.manifest_path)
            .cloned()
            .with_context(|| {
                format!(
                    "cargo built a test of an unknown package: {}",
                    artifact.manifest_path
                )
            })?;
        let target = &artifact.target.name;
        let kind = artifact.target.kind.first().map(ToString::to_string);
        let name = match kind.as_deref() {
            Some("lib") => format!("{package_name} --lib"),
            Some("bin") => format!("{package_name} --bin {target}"),
            Some("test") => format!("{package_name} --test {target}"),
            other => format!("{package_name} --{} {target}", other.unwrap_or("target")),
        };
        let package_dir = artifact
            .manifest_path
            .parent()
            .map(Utf8Path::to_path_buf)
            .unwrap_or_default();
        binaries.push(TestBinary {
            name,
            executable,
            package_dir,
            package_name,
            package_version,
        });
    }
    binaries.sort_by(|a, b| a.name.cmp(&b.name));
    binaries.dedup_by(|a, b| a.name == b.name);
    Ok(binaries)
}

/// The sums of every `test result:` line in a binary's output.
pub fn count_results(output: &str) -> Counts {
    let mut counts = Counts::default();
    for line in output.lines() {
        let Some(rest) = line.strip_prefix("test result: ") else {
            continue;
        };
        for part in rest.split(';') {
            let part = part
                .trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ");
            let mut words = part.split_whitespace();
            let (Some(number), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(number) = number.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => counts.passed += number,
                "failed" => counts.failed += number,
                "ignored" => counts.ignored += number,
                _ => {}
            }
        }
    }
    counts
}

/// How the binaries run: how many at once, for how long at most, with what.
pub struct RunOptions<'a> {
    pub jobs: usize,
    pub time_limit: Duration,
    /// Passed to every binary after its own name, such as a test filter.
    pub args: &'a [String],
    /// Set for every binary, on top of the inherited environment.
    pub env: &'a [(String, String)],
    /// Where each binary's whole output is kept, one file each.
    pub log_dir: &'a Utf8Path,
}

/// Runs `binaries` in the given order, `jobs` at a time. Each one's output
/// is printed whole once it ends, so outputs never interleave.
pub fn run_all(binaries: Vec<TestBinary>, options: &RunOptions) -> Result<Vec<Outcome>> {
    std::fs::create_dir_all(options.log_dir)
        .with_context(|| format!("cannot create {}", options.log_dir))?;
    let total = binaries.len();
    let queue = Mutex::new(binaries.into_iter().collect::<VecDeque<_>>());
    let outcomes = Mutex::new(Vec::with_capacity(total));
    let jobs = options.jobs.clamp(1, total.max(1));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                let Some(binary) = next else { break };
                let outcome = run_one(&binary, options);
                let mut outcomes = outcomes.lock().unwrap_or_else(|e| e.into_inner());
                let done = outcomes.len() + 1;
                report(&binary, &outcome, options, done, total);
                outcomes.push(outcome);
            });
        }
    });
    let outcomes = outcomes.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(outcomes)
}

fn log_path(log_dir: &Utf8Path, name: &str) -> Utf8PathBuf {
    let file: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    log_dir.join(format!("{file}.log"))
}

fn run_one(binary: &TestBinary, options: &RunOptions) -> Outcome {
    let started = Instant::now();
    let log = log_path(options.log_dir, &binary.name);
    let finished = spawn_and_wait(binary, options, &log);
    let seconds = started.elapsed().as_secs_f64();
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let counts = count_results(&output);
    let (success, failure) = match finished {
        Ok(None) => (true, None),
        Ok(Some(why)) => (false, Some(why)),
        Err(error) => (false, Some(format!("{error:#}"))),
    };
    Outcome {
        name: binary.name.clone(),
        seconds,
        counts,
        success,
        failure,
    }
}

/// Ok(None) when the binary passed; Ok(Some(why)) when it failed.
fn spawn_and_wait(
    binary: &TestBinary,
    options: &RunOptions,
    log: &Utf8Path,
) -> Result<Option<String>> {
    let log_file = std::fs::File::create(log).with_context(|| format!("cannot create {log}"))?;
    let mut command = Command::new(&binary.executable);
    command
        .args(options.args)
        .current_dir(&binary.package_dir)
        .env("CARGO_MANIFEST_DIR", &binary.package_dir)
        .env("CARGO_PKG_NAME", &binary.package_name)
        .env("CARGO_PKG_VERSION", &binary.package_version)
        .envs(options.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().context("cannot share the log file")?)
        .stderr(log_file);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", binary.executable))?;
    let deadline = Instant::now() + options.time_limit;
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for a test binary")? {
            return Ok((!status.success()).then(|| format!("exited with {status}")));
        }
        if Instant::now() >= deadline {
            // Children first, so that none is re-parented out of reach.
            let mut doomed = descendants(child.id(), &process_parents());
            doomed.push(child.id());
            let pids: Vec<String> = doomed.iter().map(u32::to_string).collect();
            let _ = Command::new("kill").arg("-KILL").args(&pids).status();
            let _ = child.wait();
            return Ok(Some(format!(
                "stopped after {} s, its time limit (--time-limit)",
                options.time_limit.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every process's parent, read from /proc/PID/stat.
fn process_parents() -> Vec<(u32, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parent_of(&stat)?))
        })
        .collect()
}

/// The parent in a /proc/PID/stat line: the second field after the
/// command, which is in parentheses and may itself hold spaces or `)`.
fn parent_of(stat: &str) -> Option<u32> {
    let after_command = &stat[stat.rfind(')')? + 1..];
    after_command.split_whitespace().nth(1)?.parse().ok()
}

/// The processes below `root`, deepest first.
fn descendants(root: u32, parents: &[(u32, u32)]) -> Vec<u32> {
    let mut found = Vec::new();
    for &(pid, parent) in parents {
        if parent == root {
            found.extend(descendants(pid, parents));
            found.push(pid);
        }
    }
    found
}

/// Prints a finished binary's whole output, then one status line.
fn report(binary: &TestBinary, outcome: &Outcome, options: &RunOptions, done: usize, total: usize) {
    let log = log_path(options.log_dir, &binary.name);
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = writeln!(
        out,
        "\n     Running {} ({})",
        binary.name, binary.executable
    );
    let _ = out.write_all(output.as_bytes());
    let _ = out.flush();
    eprintln!("[test {done}/{total}] {}", status_line(outcome));
}

/// `xtask --test adopt: ok in 42.2 s (4 passed)`, or what failed.
fn status_line(outcome: &Outcome) -> String {
    let counts = outcome.counts;
    let verdict = match (&outcome.failure, outcome.success) {
        (_, true) => "ok".to_owned(),
        (Some(why), false) => format!("FAILED ({why})"),
        (None, false) => "FAILED".to_owned(),
    };
    format!(
        "{}: {verdict} in {:.1} s ({} passed, {} failed)",
        outcome.name, outcome.seconds, counts.passed, counts.failed
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sum_every_result_line() {
        let output = "running 3 tests\ntest a ... ok\n\
            test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
            test result: FAILED. 2 passed; 4 failed; 0 ignored; 0 measured; 2 filtered out; finished in 1.00s\n\
            not a result: 9 passed\n";
        assert_eq!(
            count_results(output),
            Counts {
                passed: 5,
                failed: 4,
                ignored: 1
            }
        );
        assert_eq!(count_results(""), Counts::default());
    }

    #[test]
    fn descendants_are_found_deepest_first() {
        assert_eq!(parent_of("42 (a) b) S 7 42 42 0"), Some(7));
        assert_eq!(parent_of("garbage"), None);
        let parents = [(10, 1), (11, 10), (12, 11), (13, 10), (20, 1)];
        assert_eq!(descendants(10, &parents), [12, 11, 13]);
        assert!(descendants(20, &parents).is_empty());
    }

    #[test]
    fn a_binary_past_its_time_limit_is_stopped_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let dir = Utf8PathBuf::from_path_buf(dir.path().to_path_buf()).unwrap();
        let pid_file = dir.join("child.pid");
        let script = dir.join("slow-test");
        // A "test binary" that starts a child and waits for ever.
        std::fs::write(
            &script,
            format!("#!/bin/sh\nsleep 300 &\necho $! > {pid_file}\necho started\nwait\n"),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let binary = TestBinary {
            name: "fake --test slow".to_owned(),
            executable: script,
            package_dir: dir.clone(),
            package_name: "fake".to_owned(),
            package_version: "0.0.0".to_owned(),
        };
        let logs = dir.join("logs");
        let options = RunOptions {
            jobs: 2,
            time_limit: Duration::from_millis(1500),
            args: &[],
            env: &[],
            log_dir: &logs,
        };
        let started = Instant::now();
        let outcomes = run_all(vec![binary], &options).unwrap();
        assert!(started.elapsed() < Duration::from_secs(20));
        assert!(!outcomes[0].success);
        assert_eq!(
            outcomes[0].failure.as_deref(),
            Some("stopped after 1 s, its time limit (--time-limit)")
        );
        let child: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed: gone, or a zombie, once the signal is handled (a
        // process being torn down still reads as running for a moment).
        let gone = |state: &str| state.is_empty() || state.contains(") Z ");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut state = String::from("not read");
        while Instant::now() < deadline {
            state = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            if gone(&state) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            gone(&state),
            "the child of a stopped binary still runs: {state}"
        );
        assert_eq!(
            std::fs::read_to_string(logs.join("fake---test-slow.log")).unwrap(),
            "started\n"
        );
    }

    #[test]
    fn a_status_line_says_the_verdict_time_and_counts() {
        let mut outcome = Outcome {
            name: "xtask --test adopt".to_owned(),
            seconds: 42.24,
            counts: Counts {
                passed: 4,
                failed: 0,
                ignored: 0,
            },
            success: true,
            failure: None,
        };
        assert_eq!(
            status_line(&outcome),
            "xtask --test adopt: ok in 42.2 s (4 passed, 0 failed)"
        );
        outcome.success = false;
        outcome.failure = Some("exited with exit status: 101".to_owned());
        assert_eq!(
            status_line(&outcome),
            "xtask --test adopt: FAILED (exited with exit status: 101) in 42.2 s (4 passed, 0 failed)"
        );
    }

    #[test]
    fn binaries_are_named_as_cargo_is_asked_for_them() {
        let manifest = Utf8PathBuf::from("/ws/xtask/Cargo.toml");
        let packages =
            BTreeMap::from([(manifest.clone(), ("xtask".to_owned(), "0.0.0".to_owned()))]);
        let artifact = |kind: &str, name: &str, test: bool, exe: Option<&str>| {
            serde_json::json!({
                "reason": "compiler-artifact",
                "package_id": "path+file:///ws/xtask#0.0.0",
                "manifest_path": manifest,
                "target": {"kind": [kind], "crate_types": [kind], "name": name,
                           "src_path": "/ws/xtask/src/x.rs", "edition": "2021",
                           "doctest": false, "test": true},
                "profile": {"opt_level": "0", "debuginfo": 2, "debug_assertions": true,
                            "overflow_checks": true, "test": test},
                "features": [], "filenames": [], "executable": exe, "fresh": true
            })
            .to_string()
        };
        let messages = [
            artifact("lib", "xtask", true, Some("/ws/target/debug/deps/xtask-1")),
            artifact(
                "test",
                "release",
                true,
                Some("/ws/target/debug/deps/release-2"),
            ),
            artifact("bin", "xtask", true, Some("/ws/target/debug/deps/xtask-3")),
            // The plain binary and a library without an executable: not tests.
            artifact("bin", "xtask", false, Some("/ws/target/debug/xtask")),
            artifact("lib", "xtask", false, None),
        ]
        .join("\n");
        let binaries = from_cargo_messages(&messages, &packages).unwrap();
        let names: Vec<&str> = binaries.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(
            names,
            ["xtask --bin xtask", "xtask --lib", "xtask --test release"]
        );
        assert_eq!(binaries[2].executable, "/ws/target/debug/deps/release-2");
        assert_eq!(binaries[2].package_dir, "/ws/xtask");
    }
}
