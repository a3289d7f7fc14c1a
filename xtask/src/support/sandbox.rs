//! Runs the server binary from a verified image, to ask it its version, with limits.
//!
//! The binary passed the signature checks, but it is still code from a registry running on the
//! release machine, so it gets as little as we can give it without privileges of our own: an
//! empty working directory, no environment, no stdin, bounded output, a deadline after which its
//! whole process group is killed, and, where we are root, a network namespace with no interfaces.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};
use std::{env, fs, process};

use anyhow::{bail, format_err, Context, Result};
use camino::Utf8Path;

/// A version report is a few hundred bytes; anything near this is not one.
const MAX_STDOUT: usize = 1024 * 1024;
/// Enough for the last line of an error message, not for a flood.
const STDERR_TAIL: usize = 64 * 1024;
/// How long the output readers may take to drain after the process group is gone.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// How to run a binary out of an image.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub timeout: Duration,
    /// Runs the binary through this, e.g. `qemu-aarch64-static` for arm64 on x86_64.
    pub emulator: Option<PathBuf>,
}

/// What a run was actually isolated with, for the caller to tell the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Isolation {
    pub network: NetworkIsolation,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkIsolation {
    /// A fresh network namespace, with only a loopback interface that is down.
    Namespace,
    /// The binary shared the machine's network.
    None { why: String },
}

impl Sandbox {
    /// Runs `binary args...` and returns its stdout and the isolation it ran with.
    pub fn run(&self, binary: &Utf8Path, args: &[&str]) -> Result<(String, Isolation)> {
        let shown = std::iter::once(binary.as_str())
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        if !binary.is_absolute() {
            bail!("cannot run {shown:?}: the binary must be given by an absolute path");
        }
        let workdir = WorkDir::new().with_context(|| format!("cannot run {shown:?}"))?;
        let (unshare, network) = network_namespace();
        let mut argv: Vec<OsString> = Vec::new();
        if let Some(unshare) = unshare {
            // No --fork: unshare execs the binary, which keeps its pid and process group.
            argv.extend([unshare.into_os_string(), "--net".into(), "--".into()]);
        }
        if let Some(emulator) = &self.emulator {
            argv.push(emulator.clone().into_os_string());
        }
        argv.push(binary.as_os_str().to_owned());
        argv.extend(args.iter().map(OsString::from));

        let (stdout_writer, stdout) = spawn_reader(MAX_STDOUT, Keep::Head)?;
        let (stderr_writer, stderr) = spawn_reader(STDERR_TAIL, Keep::Tail)?;
        let expression = duct::cmd(&argv[0], &argv[1..])
            .dir(&workdir.0)
            .full_env(HashMap::<String, String>::new())
            .stdin_null()
            .stdout_file(stdout_writer)
            .stderr_file(stderr_writer)
            .unchecked()
            .before_spawn(|command| {
                // Its own group, so that the deadline also kills what it started.
                command.process_group(0);
                Ok(())
            });
        let handle = expression
            .start()
            .with_context(|| format!("cannot run {shown:?}"))?;
        // The expression holds our copies of the write ends; while they live, no reader ends.
        drop(expression);

        let group = handle.pids().first().copied();
        // A timeout too long to add up is no timeout, not a panic.
        let waited = match std::time::Instant::now().checked_add(self.timeout) {
            Some(deadline) => handle.wait_deadline(deadline),
            None => handle.wait().map(Some),
        };
        let finished = waited
            .with_context(|| format!("cannot wait for {shown:?}"))?
            .map(|output| output.status);
        // Also after a normal exit: nothing it left behind may outlive the run. Its pid stays
        // reserved while anything is left in its group, so this cannot hit another group.
        let group_killed = group.map(kill_group);
        if finished.is_none() {
            // Without the group, at least the process itself.
            let _ = handle.kill();
            let _ = handle.wait();
        }
        let out = stdout.finish();
        let err = stderr.finish();

        let Some(status) = finished else {
            let how = match group_killed {
                Some(Ok(())) => "killed".to_string(),
                Some(Err(why)) => format!("killed it but not its process group ({why:#})"),
                None => "killed it but not its process group (no pid)".to_string(),
            };
            bail!("{shown:?} did not finish within {:?}; {how}", self.timeout);
        };
        let out = out.with_context(|| format!("cannot read the output of {shown:?}"))?;
        if out.overflowed {
            bail!("{shown:?} printed more than {MAX_STDOUT} bytes; refusing its output");
        }
        if !status.success() {
            let err = err.unwrap_or_default();
            let text = String::from_utf8_lossy(&err.data);
            match text.lines().rev().find(|line| !line.trim().is_empty()) {
                // Debug-quoted: it is the binary's text, and may hold terminal escapes.
                Some(line) => bail!("{shown:?} failed with {status}: {:?}", line.trim()),
                None => bail!("{shown:?} failed with {status} and printed nothing on stderr"),
            }
        }
        let stdout = String::from_utf8(out.data)
            .map_err(|_| format_err!("{shown:?} printed output that is not utf-8"))?;
        Ok((stdout, Isolation { network }))
    }
}

/// Finds how to give the binary a network namespace, or says why it cannot have one.
fn network_namespace() -> (Option<PathBuf>, NetworkIsolation) {
    let none = |why: String| (None, NetworkIsolation::None { why });
    match effective_uid() {
        Ok(0) => {}
        Ok(uid) => return none(format!("not root (uid {uid})")),
        Err(err) => return none(format!("cannot tell whether we are root: {err:#}")),
    }
    let Some(unshare) = find_on_path("unshare") else {
        return none("unshare (util-linux) is not on PATH".to_string());
    };
    // Containers often forbid new namespaces even to root; finding out costs one exec.
    let args: [&std::ffi::OsStr; 4] = [
        "--net".as_ref(),
        "--".as_ref(),
        unshare.as_os_str(),
        "--version".as_ref(),
    ];
    let probe = duct::cmd(&unshare, args)
        .full_env(HashMap::<String, String>::new())
        .stdin_null()
        .stdout_null()
        .stderr_capture()
        .unchecked()
        .run();
    match probe {
        Ok(output) if output.status.success() => (Some(unshare), NetworkIsolation::Namespace),
        Ok(output) => {
            let text = String::from_utf8_lossy(&output.stderr);
            let last = text.lines().last().unwrap_or("").trim();
            none(format!(
                "unshare --net failed with {}: {last:?}",
                output.status
            ))
        }
        Err(err) => none(format!("unshare --net could not run: {err}")),
    }
}

fn effective_uid() -> Result<u32> {
    let status =
        fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .ok_or_else(|| format_err!("/proc/self/status has no effective uid"))?;
    uid.parse()
        .with_context(|| format!("/proc/self/status has an odd uid {uid:?}"))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// Sends SIGKILL to a process group. There is no killpg in std and this crate takes no libc, so
/// it goes through kill(1), found on our own PATH, never the binary's.
fn kill_group(group: u32) -> Result<()> {
    let kill = find_on_path("kill").ok_or_else(|| format_err!("kill(1) is not on PATH"))?;
    let output = duct::cmd(kill, ["-KILL", "--", &format!("-{group}")])
        .stdin_null()
        .stdout_null()
        .stderr_capture()
        .unchecked()
        .run()
        .context("cannot run kill(1)")?;
    let text = String::from_utf8_lossy(&output.stderr);
    // No such process: the group has already gone, which is what we want.
    if output.status.success() || text.contains("No such process") {
        return Ok(());
    }
    bail!("kill(1) failed with {}: {:?}", output.status, text.trim())
}

/// A working directory of the run's own, removed with everything in it afterwards.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Result<WorkDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = env::temp_dir();
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos());
        for _ in 0..100 {
            let count = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = base.join(format!("verifyrun-{}-{nanos}-{count}", process::id()));
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(WorkDir(dir)),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => {
                    return Err(err)
                        .with_context(|| format!("cannot make a working directory in {base:?}"))
                }
            }
        }
        bail!("cannot make a working directory in {base:?}: every name tried was taken")
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // Best effort: a leftover directory in the temp dir is not worth failing the release.
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Copy)]
enum Keep {
    /// The first bytes, noting whether there were more.
    Head,
    /// The last bytes, where an error message ends.
    Tail,
}

#[derive(Default)]
struct Captured {
    data: Vec<u8>,
    overflowed: bool,
}

/// One output stream of the child, read on a thread so that a full pipe never blocks it.
struct OutputReader {
    ours: UnixStream,
    thread: JoinHandle<io::Result<Captured>>,
}

/// Returns the end to give the child, and the reader of the other end. A socket rather than a
/// pipe, because std makes one without libc, and because `shutdown` on our end stops the reader
/// even if some process that escaped the group still holds the child's end open.
fn spawn_reader(cap: usize, keep: Keep) -> Result<(UnixStream, OutputReader)> {
    let (ours, writer) = UnixStream::pair().context("cannot make a socket for the output")?;
    let mut read_end = ours
        .try_clone()
        .context("cannot make a socket for the output")?;
    let thread = std::thread::spawn(move || -> io::Result<Captured> {
        let mut captured = Captured::default();
        let mut buffer = [0; 16 * 1024];
        loop {
            let read = match read_end.read(&mut buffer) {
                Ok(0) => return Ok(captured),
                Ok(read) => read,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            captured.data.extend_from_slice(&buffer[..read]);
            if captured.data.len() > cap {
                captured.overflowed = true;
                match keep {
                    Keep::Head => {
                        captured.data.truncate(cap);
                        // The child gets EPIPE on its next write instead of writing until the
                        // deadline.
                        let _ = read_end.shutdown(Shutdown::Read);
                        return Ok(captured);
                    }
                    Keep::Tail => {
                        let excess = captured.data.len() - cap;
                        captured.data.drain(..excess);
                    }
                }
            }
        }
    });
    Ok((writer, OutputReader { ours, thread }))
}

impl OutputReader {
    /// Waits for the reader to drain what the child wrote, then cuts it off.
    fn finish(self) -> Result<Captured> {
        let deadline = std::time::Instant::now() + DRAIN_GRACE;
        while !self.thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Data already sent is still read before the end of stream this makes.
        let _ = self.ours.shutdown(Shutdown::Read);
        self.thread
            .join()
            .map_err(|_| format_err!("the output reader panicked"))?
            .context("cannot read the output")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Instant;

    fn sandbox(timeout: Duration) -> Sandbox {
        Sandbox {
            timeout,
            emulator: None,
        }
    }

    fn run(timeout: Duration, binary: &str, args: &[&str]) -> Result<(String, Isolation)> {
        sandbox(timeout).run(Utf8Path::new(binary), args)
    }

    /// The pids of live processes whose command line holds `marker`; zombies have none.
    fn processes_with(marker: &str) -> Vec<String> {
        let mut found = Vec::new();
        for entry in fs::read_dir("/proc").unwrap() {
            let path = entry.unwrap().path();
            let Ok(cmdline) = fs::read(path.join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(marker) {
                found.push(format!("{}: {cmdline}", path.display()));
            }
        }
        found
    }

    fn assert_gone(marker: &str) {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let left = processes_with(marker);
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "still running: {left:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn runs_in_an_empty_directory_with_no_environment() {
        // Set by cargo for the test process; the subject must not see it.
        assert!(env::var_os("CARGO_PKG_NAME").is_some());
        let (stdout, _) = run(
            Duration::from_secs(10),
            "/bin/sh",
            &["-c", "pwd; ls -A; echo ---; env; echo ---; cat"],
        )
        .unwrap();
        let (head, rest) = stdout.split_once("---\n").unwrap();
        let (env_output, stdin) = rest.split_once("---\n").unwrap();
        assert_eq!(stdin, "");
        let cwd = head.trim_end();
        // `ls -A` printed nothing: the directory was empty.
        assert!(!cwd.contains('\n'), "{head:?}");
        assert_ne!(Path::new(cwd), env::current_dir().unwrap());
        let name = Path::new(cwd).file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("verifyrun-"), "{cwd}");
        assert_eq!(Path::new(cwd).parent(), Some(env::temp_dir().as_path()));
        assert!(!Path::new(cwd).exists(), "{cwd} was left behind");
        // dash exports PWD itself; nothing else may be there.
        assert_eq!(env_output, format!("PWD={cwd}\n"));
    }

    #[test]
    fn timeout_kills_the_whole_process_group() {
        let start = Instant::now();
        let err = run(Duration::from_secs(1), "/bin/sleep", &["30.7182818"]).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            r#""/bin/sleep 30.7182818" did not finish within 1s; killed"#
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert_gone("30.7182818");

        let start = Instant::now();
        let script = "sleep 31.4159265 & sleep 32.4159265";
        let err = run(Duration::from_secs(1), "/bin/sh", &["-c", script]).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!(
                "{:?} did not finish within 1s; killed",
                format!("/bin/sh -c {script}")
            )
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert_gone(".4159265");
    }

    #[test]
    fn leftovers_are_killed_after_a_normal_exit() {
        // The background sleep keeps stdout open; without the group kill we would wait for it.
        let start = Instant::now();
        let (stdout, _) = run(
            Duration::from_secs(20),
            "/bin/sh",
            &["-c", "sleep 33.1415926 & echo done"],
        )
        .unwrap();
        assert_eq!(stdout, "done\n");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert_gone("33.1415926");
    }

    #[test]
    fn network_is_a_fresh_namespace_when_root() {
        let (stdout, isolation) =
            run(Duration::from_secs(10), "/bin/cat", &["/proc/net/dev"]).unwrap();
        if effective_uid().unwrap() != 0 {
            assert!(
                matches!(&isolation.network, NetworkIsolation::None { why } if why.starts_with("not root")),
                "{isolation:?}"
            );
            return;
        }
        assert_eq!(isolation.network, NetworkIsolation::Namespace, "as root");
        let interfaces: Vec<&str> = stdout
            .lines()
            .skip(2)
            .filter_map(|line| line.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(interfaces, ["lo"], "{stdout}");
    }

    #[test]
    fn failure_reports_the_last_line_of_stderr() {
        let script = r"echo first >&2; printf 'boom\033[2J\n\n' >&2; exit 3";
        let err = run(Duration::from_secs(10), "/bin/sh", &["-c", script]).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!(
                r#"{:?} failed with exit status: 3: "boom\u{{1b}}[2J""#,
                format!("/bin/sh -c {script}")
            )
        );
    }

    #[test]
    fn too_much_output_is_refused() {
        let err = run(
            Duration::from_secs(10),
            "/bin/sh",
            &["-c", "while :; do echo yyyyyyyyyyyyyyyyyyyy; done"],
        )
        .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            r#""/bin/sh -c while :; do echo yyyyyyyyyyyyyyyyyyyy; done" printed more than 1048576 bytes; refusing its output"#
        );
    }

    #[test]
    fn emulator_comes_first_and_relative_binaries_are_refused() {
        let sandbox = Sandbox {
            timeout: Duration::from_secs(10),
            emulator: Some(PathBuf::from("/bin/echo")),
        };
        let (stdout, _) = sandbox
            .run(Utf8Path::new("/server"), &["version", "--json"])
            .unwrap();
        assert_eq!(stdout, "/server version --json\n");
        let err = sandbox.run(Utf8Path::new("server"), &[]).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            r#"cannot run "server": the binary must be given by an absolute path"#
        );
    }
}
