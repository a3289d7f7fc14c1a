//! `server healthcheck` against the real server, against nothing, and
//! against a listener that accepts and never answers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::io::Read;
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::Server;

/// The contract: the default probe timeout is 2 s and the probe must have
/// given up, exit code and all, within 2.5 s. This bounds a deadline the
/// binary promises to Docker, not a performance figure.
const PROBE_DEADLINE: Duration = Duration::from_millis(2500);

/// Runs `server healthcheck` and returns (exit code, stdout, stderr, wall time).
fn healthcheck(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String, Duration) {
    let mut all_args = vec!["healthcheck"];
    all_args.extend_from_slice(args);
    let started = Instant::now();
    let child = support::command(&all_args, envs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the server binary");
    let output = support::wait_output(child, support::STEP_TIMEOUT);
    let elapsed = started.elapsed();
    (
        output
            .status
            .code()
            .expect("healthcheck was killed by a signal"),
        support::text(&output.stdout),
        support::text(&output.stderr),
        elapsed,
    )
}

/// Splits `healthy: GET URL -> 200 in Nms\n` into its fixed part and N.
fn strip_millis(line: &str) -> String {
    let (head, millis) = line
        .trim_end_matches('\n')
        .rsplit_once(" in ")
        .unwrap_or_else(|| panic!("no duration in {line:?}"));
    let number = millis
        .strip_suffix("ms")
        .unwrap_or_else(|| panic!("duration without ms in {line:?}"));
    assert!(number.parse::<u64>().is_ok(), "bad duration in {line:?}");
    format!("{head} in Nms\n")
}

#[test]
fn healthy_server_exits_0_with_one_line() {
    let server = Server::start(&[]);
    let addr = format!("127.0.0.1:{}", server.port());
    let (code, stdout, stderr, _) = healthcheck(&[], &[("SERVER_ADDR", &addr)]);
    assert_eq!((code, stderr.as_str()), (0, ""), "stdout: {stdout}");
    assert_eq!(
        strip_millis(&stdout),
        format!("healthy: GET http://{addr}/healthz -> 200 in Nms\n")
    );
    assert!(server
        .get("/metrics")
        .body
        .contains("route=\"/healthz\",method=\"GET\",status=\"200\"} 1\n"));
}

#[test]
fn a_server_bound_to_0_0_0_0_is_probed_on_loopback_through_server_addr() {
    // Probes are logged at debug level; no drain delay, nothing to drain.
    let mut server = Server::start(&[
        ("SERVER_ADDR", "0.0.0.0:0"),
        ("SERVER_LOG", "debug"),
        ("SERVER_DRAIN_DELAY", "0s"),
    ]);
    assert!(server.addr.ip().is_unspecified(), "{}", server.addr);
    let port = server.port();
    // The same SERVER_ADDR the server was given, as in a container where
    // HEALTHCHECK runs with the server's environment.
    let (code, stdout, stderr, _) =
        healthcheck(&[], &[("SERVER_ADDR", &format!("0.0.0.0:{port}"))]);
    assert_eq!((code, stderr.as_str()), (0, ""), "stdout: {stdout}");
    assert_eq!(
        strip_millis(&stdout),
        format!("healthy: GET http://127.0.0.1:{port}/healthz -> 200 in Nms\n")
    );
    server.signal("TERM");
    server.wait_exit(support::STEP_TIMEOUT);
    let probe = server
        .logs()
        .into_iter()
        .find(|r| r["msg"] == "request")
        .expect("the probe was logged");
    assert!(
        probe["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{probe}"
    );
}

#[test]
fn url_overrides_server_addr() {
    let server = Server::start(&[]);
    let port = server.port();
    let dead = closed_port();
    let envs = [("SERVER_ADDR", format!("127.0.0.1:{dead}"))];
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let url = format!("http://127.0.0.1:{port}/readyz");
    let (code, stdout, _, _) = healthcheck(&["--url", &url], &envs);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(
        strip_millis(&stdout),
        format!("healthy: GET {url} -> 200 in Nms\n")
    );

    let url = format!("http://localhost:{port}");
    let (code, stdout, _, _) = healthcheck(&["--url", &url], &envs);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(
        strip_millis(&stdout),
        format!("healthy: GET http://localhost:{port}/healthz -> 200 in Nms\n")
    );

    // A non-2xx status is unhealthy.
    let url = format!("http://127.0.0.1:{port}/nope");
    let (code, stdout, stderr, _) = healthcheck(&["--url", &url], &envs);
    assert_eq!(
        (code, stdout, stderr),
        (1, format!("unhealthy: GET {url} -> 404\n"), String::new())
    );
}

#[test]
fn nothing_listening_exits_1_within_the_deadline() {
    let port = closed_port();
    let (code, stdout, stderr, elapsed) =
        healthcheck(&[], &[("SERVER_ADDR", &format!("127.0.0.1:{port}"))]);
    assert_eq!(
        (code, stdout, stderr),
        (
            1,
            format!(
                "unhealthy: GET http://127.0.0.1:{port}/healthz: cannot connect: Connection refused (os error 111)\n"
            ),
            String::new()
        )
    );
    assert!(elapsed < PROBE_DEADLINE, "took {elapsed:?}");
}

#[test]
fn a_listener_that_accepts_and_never_answers_exits_1_within_the_deadline() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (request_tx, request_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("the probe connects");
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        request_tx.send(request).unwrap();
        // Hold the connection, unanswered, until the test is done.
        let _ = release_rx.recv_timeout(support::STEP_TIMEOUT);
        drop(stream);
    });

    let (code, stdout, stderr, elapsed) =
        healthcheck(&[], &[("SERVER_ADDR", &format!("127.0.0.1:{port}"))]);
    release_tx.send(()).unwrap();
    holder.join().unwrap();

    assert_eq!(
        (code, stdout, stderr),
        (
            1,
            format!("unhealthy: GET http://127.0.0.1:{port}/healthz: no answer within 2000ms\n"),
            String::new()
        )
    );
    assert!(
        elapsed >= Duration::from_secs(2),
        "gave up after {elapsed:?}, before its 2s timeout"
    );
    assert!(elapsed < PROBE_DEADLINE, "took {elapsed:?}");
    let request = String::from_utf8(request_rx.recv().unwrap()).unwrap();
    assert_eq!(
        request,
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: server-healthcheck\r\nConnection: close\r\n\r\n")
    );
}

#[test]
fn timeout_flag_shortens_the_wait() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Never accepted: the kernel completes the handshake from the backlog,
    // and nothing ever reads or answers.
    let (code, stdout, _, _) = healthcheck(
        &["--timeout", "300ms"],
        &[("SERVER_ADDR", &format!("127.0.0.1:{port}"))],
    );
    drop(listener);
    assert_eq!(
        (code, stdout),
        (
            1,
            format!("unhealthy: GET http://127.0.0.1:{port}/healthz: no answer within 300ms\n")
        )
    );
}

#[test]
fn bad_arguments_exit_1_with_one_line_on_stderr() {
    // Exit code 2 is reserved by Docker for health checks, so even usage
    // errors are 1.
    type Case = (
        &'static [&'static str],
        &'static [(&'static str, &'static str)],
        &'static str,
    );
    let cases: [Case; 4] = [
        (
            &["--url", "https://127.0.0.1:1/"],
            &[],
            "unhealthy: invalid --url \"https://127.0.0.1:1/\": only http:// is supported; expected http://IP:PORT/PATH such as http://127.0.0.1:8080/healthz\n",
        ),
        (
            &["--timeout", "0s"],
            &[],
            "unhealthy: invalid --timeout \"0s\": expected a duration such as 2s or 500ms\n",
        ),
        (
            &["--verbose"],
            &[],
            "unhealthy: unknown healthcheck argument \"--verbose\"; see `server --help`\n",
        ),
        (
            &[],
            &[("SERVER_ADDR", "localhost:8080")],
            "unhealthy: invalid SERVER_ADDR=\"localhost:8080\": expected IP:PORT such as 0.0.0.0:8080 or [::]:8080\n",
        ),
    ];
    for (args, envs, expected) in cases {
        let (code, stdout, stderr, _) = healthcheck(args, envs);
        assert_eq!(
            (code, stdout.as_str(), stderr.as_str()),
            (1, "", expected),
            "{args:?} {envs:?}"
        );
    }
}

/// A loopback port with nothing listening on it.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
