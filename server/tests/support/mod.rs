//! Starts the real server binary on a loopback port chosen by the kernel,
//! talks raw HTTP/1.1 to it, and kills it when dropped. Every wait is
//! bounded, so that a hung server fails a test instead of hanging it.

#![allow(dead_code)]

pub mod pg;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long any single step may take before the test fails. Generous: the
/// machine running the tests may be busy compiling.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// The binary under test. `cargo xtask test` builds the release binary, the
/// one that ships, and names it in SERVER_TEST_BINARY. A plain `cargo test`
/// has no such variable and falls back to the debug binary that cargo builds
/// for integration tests.
pub fn binary() -> PathBuf {
    match std::env::var_os("SERVER_TEST_BINARY") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "SERVER_TEST_BINARY={} does not exist; run `cargo build --release -p server` or unset it",
                path.display()
            );
            path
        }
        None => PathBuf::from(env!("CARGO_BIN_EXE_server")),
    }
}

/// A command for the server binary with an empty environment, so that
/// SERVER_* variables of the developer's shell cannot change the outcome.
pub fn command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary());
    command.args(args).env_clear();
    for (key, value) in envs {
        command.env(key, value);
    }
    command
}

/// Runs the binary to completion, within STEP_TIMEOUT.
pub fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let child = command(args, envs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the server binary");
    wait_output(child, STEP_TIMEOUT)
}

/// Waits for a child and collects its output, killing it after `timeout`.
pub fn wait_output(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait().expect("cannot wait for the child") {
            Some(_) => return child.wait_with_output().expect("cannot read the output"),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let output = child.wait_with_output().expect("cannot read the output");
                panic!(
                    "{:?} did not exit within {timeout:?}; stdout: {}; stderr: {}",
                    binary(),
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("output is not UTF-8")
}

/// A running `server serve`.
pub struct Server {
    child: Option<Child>,
    /// The address the server reported in its `listening` log line.
    pub addr: SocketAddr,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts the server on 127.0.0.1 with a port the kernel picks, so that
    /// no two tests race for a port. `envs` may override SERVER_ADDR.
    pub fn start(envs: &[(&str, &str)]) -> Server {
        let mut server = Server::spawn(envs);
        // The `listening` line is written after bind(), so connections made
        // from now on wait in the backlog; no polling of /healthz is needed,
        // which keeps the request counts of each test exact.
        let listening = server.wait_for_log("listening");
        let addr = listening["addr"]
            .as_str()
            .unwrap_or_else(|| panic!("no addr in {listening}"));
        server.addr = addr.parse().expect("the logged addr is IP:PORT");
        server
    }

    /// Starts the server on a free 127.0.0.1 port without relying on its
    /// logs, for tests that turn logging down or to text. Readiness is a bare
    /// TCP connect, which makes no request and so no log line.
    pub fn start_without_logs(envs: &[(&str, &str)]) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("cannot find a free loopback port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut all = vec![("SERVER_ADDR", addr.as_str())];
        all.extend_from_slice(envs);
        let mut server = Server::spawn(&all);
        server.addr = addr.parse().unwrap();
        wait_until("the server to accept connections", || {
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("the server exited with {status}: {}", server.stderr());
            }
            TcpStream::connect(server.addr).is_ok()
        });
        server
    }

    fn spawn(envs: &[(&str, &str)]) -> Server {
        let mut all = vec![("SERVER_ADDR", "127.0.0.1:0")];
        all.extend_from_slice(envs);
        // Stdout is a pipe, not a terminal: the logs must be JSON.
        let mut child = command(&["serve"], &all)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the server binary");
        let stdout_pipe = child.stdout.take().expect("stdout is piped");
        let stderr_pipe = child.stderr.take().expect("stderr is piped");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            {
                let stdout = stdout.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stdout_pipe).lines() {
                        let Ok(line) = line else { break };
                        stdout.lock().unwrap().push(line);
                    }
                })
            },
            {
                let stderr = stderr.clone();
                std::thread::spawn(move || {
                    let mut text = String::new();
                    let _ = BufReader::new(stderr_pipe).read_to_string(&mut text);
                    stderr.lock().unwrap().push_str(&text);
                })
            },
        ];
        Server {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            stdout,
            stderr,
            readers,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    /// The stdout lines so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Every stdout line parsed as JSON; any other line fails the test.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.stdout_lines()
            .iter()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"))
            })
            .collect()
    }

    /// Waits for the first log record whose `msg` is `msg`.
    pub fn wait_for_log(&mut self, msg: &str) -> serde_json::Value {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(record) = self.logs().into_iter().find(|r| r["msg"] == msg) {
                return record;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                // Let the readers drain the pipes before reporting.
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "the server exited with {status} before logging {msg:?}; stdout: {:?}; stderr: {}",
                    self.stdout_lines(),
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the server did not log {msg:?} within {STEP_TIMEOUT:?}; stdout: {:?}",
                self.stdout_lines()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the server to exit, then for its pipes to be read to the end.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("the server is running");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("cannot wait for the server") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within {timeout:?}; stdout: {:?}",
                self.stdout.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        self.child = None;
        for reader in self.readers.drain(..) {
            reader.join().expect("a pipe reader panicked");
        }
        status
    }

    pub fn get(&self, path: &str) -> Response {
        get(self.port(), path)
    }

    pub fn connect(&self) -> TcpStream {
        connect(self.port())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

pub fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("cannot connect to the server");
    stream.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(STEP_TIMEOUT)).unwrap();
    stream
}

/// `GET path` on a fresh connection that the server closes after answering.
pub fn get(port: u16, path: &str) -> Response {
    request(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"),
    )
}

/// Sends raw request bytes on a fresh connection and reads the response to
/// the end of the connection: every request sent here asks for `Connection:
/// close`.
pub fn request(port: u16, raw: &str) -> Response {
    let mut stream = connect(port);
    stream.write_all(raw.as_bytes()).expect("cannot send");
    read_response(&mut stream)
}

pub fn read_response(stream: &mut TcpStream) -> Response {
    let mut bytes = Vec::new();
    stream
        .read_to_end(&mut bytes)
        .expect("cannot read the response to the end");
    parse_response(&bytes)
}

pub fn parse_response(bytes: &[u8]) -> Response {
    let text = String::from_utf8(bytes.to_vec()).expect("the response is not UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .map(|line| {
            let (key, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {line:?}"));
            (key.trim().to_owned(), value.trim().to_owned())
        })
        .collect();
    Response {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Waits until `condition` holds, or fails the test naming `what`.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {STEP_TIMEOUT:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The workspace root, where `git` answers for the checkout the binary was
/// built from.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the server crate is inside the workspace")
        .to_path_buf()
}

pub fn git(args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(workspace_root())
        .output()
        .expect("cannot run git");
    assert!(output.status.success(), "git {args:?} failed");
    text(&output.stdout).trim().to_owned()
}

/// The host triple, which is what the server under test was built for.
pub fn host_target() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let output = std::process::Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("cannot run rustc -vV");
    text(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("rustc -vV prints the host")
        .to_owned()
}

/// Reads exactly one response from a keep-alive connection: the head, then
/// as many body bytes as its Content-Length says. Fails on anything else,
/// including a connection closed before the response was complete.
pub fn read_one_response(stream: &mut TcpStream) -> std::io::Result<Response> {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while !bytes.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("closed after {} bytes of the response head", bytes.len()),
            ));
        }
        bytes.push(byte[0]);
    }
    let head = parse_response(&bytes);
    let length: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    bytes.extend_from_slice(&body);
    Ok(parse_response(&bytes))
}

/// Milliseconds since midnight UTC of a log record's `ts`
/// (`YYYY-MM-DDTHH:MM:SS.mmmZ`).
pub fn ts_millis(record: &serde_json::Value) -> u64 {
    let ts = record["ts"].as_str().expect("a log record has a ts");
    let time = &ts[11..23];
    let number = |range: std::ops::Range<usize>| -> u64 { time[range].parse().unwrap() };
    ((number(0..2) * 60 + number(3..5)) * 60 + number(6..8)) * 1000 + number(9..12)
}
