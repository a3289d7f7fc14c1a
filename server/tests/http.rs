//! The HTTP endpoints, metrics, request logs and slow-client timeouts of the
//! real server binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use support::{Server, STEP_TIMEOUT};

#[test]
fn endpoints_answer_with_exact_statuses_and_bodies() {
    let server = Server::start(&[]);

    let healthz = server.get("/healthz");
    assert_eq!((healthz.status, healthz.body.as_str()), (200, "ok\n"));
    assert_eq!(
        healthz.header("content-type"),
        Some("text/plain; charset=utf-8")
    );

    let readyz = server.get("/readyz");
    assert_eq!((readyz.status, readyz.body.as_str()), (200, "ready\n"));

    let version = server.get("/version");
    assert_eq!(version.status, 200);
    assert_eq!(version.header("content-type"), Some("application/json"));
    let cli = support::run(&["version", "--json"], &[]);
    assert!(cli.status.success());
    assert_eq!(version.body, support::text(&cli.stdout));

    let missing = server.get("/nope");
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (404, "not found\n")
    );

    let port = server.port();
    let post = support::request(
        port,
        &format!("POST /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"),
    );
    assert_eq!(
        (post.status, post.body.as_str(), post.header("allow")),
        (405, "method not allowed\n", Some("GET, HEAD"))
    );

    let head = support::request(
        port,
        &format!("HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!((head.status, head.body.as_str()), (200, ""));
}

#[test]
fn metrics_count_requests_by_route_method_and_status_and_carry_build_info() {
    let server = Server::start(&[]);
    for _ in 0..3 {
        assert_eq!(server.get("/healthz").status, 200);
    }
    assert_eq!(server.get("/readyz").status, 200);
    assert_eq!(server.get("/version").status, 200);
    assert_eq!(server.get("/wp-login.php").status, 404);
    assert_eq!(server.get("/favicon.ico").status, 404);
    let port = server.port();
    let delete = support::request(
        port,
        "DELETE /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(delete.status, 405);

    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let sha = support::git(&["rev-parse", "HEAD"]);
    let target = support::host_target();
    // Unknown paths share the one `other` route, so that scanners cannot
    // grow the series without bound. The /metrics request itself is still
    // in flight, so it is counted as in flight and not yet as finished.
    let expected = format!(
        "\
# HELP server_http_requests_total HTTP requests handled, by route, method and status.
# TYPE server_http_requests_total counter
server_http_requests_total{{route=\"/healthz\",method=\"DELETE\",status=\"405\"}} 1
server_http_requests_total{{route=\"/healthz\",method=\"GET\",status=\"200\"}} 3
server_http_requests_total{{route=\"/readyz\",method=\"GET\",status=\"200\"}} 1
server_http_requests_total{{route=\"/version\",method=\"GET\",status=\"200\"}} 1
server_http_requests_total{{route=\"other\",method=\"GET\",status=\"404\"}} 2
# HELP server_http_requests_in_flight HTTP requests being handled now.
# TYPE server_http_requests_in_flight gauge
server_http_requests_in_flight 1
# HELP server_build_info Build information of the running binary; always 1.
# TYPE server_build_info gauge
server_build_info{{version=\"{}\",git_sha=\"{sha}\",target=\"{target}\"}} 1
",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(metrics.body, expected);

    let again = server.get("/metrics");
    assert!(
        again.body.contains(
            "server_http_requests_total{route=\"/metrics\",method=\"GET\",status=\"200\"} 1\n"
        ),
        "{}",
        again.body
    );
}

#[test]
fn one_json_log_line_per_request_when_stdout_is_not_a_terminal() {
    let mut server = Server::start(&[("SERVER_LOG", "debug"), ("SERVER_DRAIN_DELAY", "0s")]);
    let paths = ["/healthz", "/readyz", "/nope", "/healthz"];
    for path in paths {
        server.get(path);
    }
    server.signal("TERM");
    assert_eq!(server.wait_exit(STEP_TIMEOUT).code(), Some(0));

    let logs = server.logs();
    let messages: Vec<&str> = logs.iter().map(|r| r["msg"].as_str().unwrap()).collect();
    assert_eq!(
        messages,
        [
            "listening",
            "request",
            "request",
            "request",
            "request",
            "shutting down",
            "stopped accepting",
            "stopped"
        ]
    );
    let requests: Vec<_> = logs.iter().filter(|r| r["msg"] == "request").collect();
    // Probes are debug, so that they do not drown the requests of people.
    let expected = [
        (200, "debug"),
        (200, "debug"),
        (404, "info"),
        (200, "debug"),
    ];
    assert_eq!(requests.len(), expected.len());
    for (record, (path, (status, level))) in requests.iter().zip(paths.iter().zip(expected)) {
        let mut keys: Vec<&str> = record
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "duration_ms",
                "level",
                "method",
                "msg",
                "path",
                "peer",
                "status",
                "ts"
            ]
        );
        assert_eq!(record["level"], level);
        assert_eq!(record["method"], "GET");
        assert_eq!(record["path"], *path);
        assert_eq!(record["status"], status);
        assert!(record["duration_ms"].as_f64().is_some_and(|d| d >= 0.0));
        assert!(record["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")));
        let ts = record["ts"].as_str().unwrap();
        assert!(is_rfc3339_millis(ts), "bad timestamp {ts:?}");
    }
    assert_eq!(logs[5]["signal"], "SIGTERM");
    assert_eq!(server.stderr(), "");
}

#[test]
fn the_log_level_comes_from_server_log() {
    // Only the warning about the shutdown timeout is at warn level or above;
    // the start-up, request and shutdown lines are info.
    let mut server = Server::start_without_logs(&[
        ("SERVER_LOG", "warn"),
        ("SERVER_SHUTDOWN_TIMEOUT", "200ms"),
        ("SERVER_DRAIN_DELAY", "0s"),
    ]);
    assert_eq!(server.get("/healthz").status, 200);
    let mut stalled = server.connect();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab")
        .unwrap();
    support::wait_until("the stalled request to reach its handler", || {
        server
            .get("/metrics")
            .body
            .contains("server_http_requests_in_flight 2\n")
    });
    server.signal("TERM");
    assert_eq!(server.wait_exit(STEP_TIMEOUT).code(), Some(0));
    let logs = server.logs();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(logs[0]["level"], "warn");
    assert_eq!(
        logs[0]["msg"],
        "shutdown timeout reached, closing remaining connections"
    );
}

#[test]
fn server_log_format_text_gives_readable_lines() {
    let mut server =
        Server::start_without_logs(&[("SERVER_LOG_FORMAT", "text"), ("SERVER_DRAIN_DELAY", "0s")]);
    assert_eq!(server.get("/version").status, 200);
    server.signal("TERM");
    assert_eq!(server.wait_exit(STEP_TIMEOUT).code(), Some(0));
    let lines = server.stdout_lines();
    let fields: Vec<Vec<&str>> = lines.iter().map(|l| l.split(' ').collect()).collect();
    let shapes: Vec<(&str, &str)> = fields.iter().map(|f| (f[1], f[3])).collect();
    assert_eq!(
        shapes,
        [
            ("INFO", "listening"),
            ("INFO", "request"),
            ("INFO", "shutting"),
            ("INFO", "stopped"),
            ("INFO", "stopped")
        ],
        "{lines:?}"
    );
    assert!(is_rfc3339_millis(fields[1][0]), "{lines:?}");
    assert_eq!(
        &fields[1][4..7],
        ["method=GET", "path=/version", "status=200"],
        "{lines:?}"
    );
}

#[test]
fn a_client_that_sends_half_a_header_and_stalls_is_disconnected_after_the_header_timeout() {
    let server = Server::start(&[("SERVER_HEADER_TIMEOUT", "700ms")]);
    let started = Instant::now();
    let mut stream = server.connect();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let (read, elapsed) = read_until_closed(&mut stream, started);
    assert_eq!(read, "", "the server answered a half-sent header");
    assert!(
        elapsed >= Duration::from_millis(700),
        "disconnected after {elapsed:?}, before the 700ms header timeout"
    );
    // No request reached a handler, so nothing was counted.
    assert!(!server.get("/metrics").body.contains("route=\"/healthz\""));
}

#[test]
fn a_client_that_connects_and_sends_nothing_is_disconnected_after_the_header_timeout() {
    let server = Server::start(&[("SERVER_HEADER_TIMEOUT", "700ms")]);
    let started = Instant::now();
    let mut stream = server.connect();
    let (read, elapsed) = read_until_closed(&mut stream, started);
    assert_eq!(read, "");
    assert!(elapsed >= Duration::from_millis(700), "after {elapsed:?}");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let server = Server::start(&[("SERVER_HEADER_TIMEOUT", "700ms")]);
    let started = Instant::now();
    let mut stream = server.connect();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let (read, elapsed) = read_until_closed(&mut stream, started);
    assert!(
        read.starts_with("HTTP/1.1 200 OK\r\n") && read.ends_with("\r\n\r\nok\n"),
        "{read:?}"
    );
    assert!(elapsed >= Duration::from_millis(700), "after {elapsed:?}");
}

#[test]
fn a_client_that_stalls_in_the_body_gets_408_after_the_body_timeout() {
    let server = Server::start(&[("SERVER_BODY_TIMEOUT", "700ms")]);
    let started = Instant::now();
    let mut stream = server.connect();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    let (read, elapsed) = read_until_closed(&mut stream, started);
    let response = support::parse_response(read.as_bytes());
    assert_eq!(
        (response.status, response.body.as_str()),
        (408, "Request Timeout\n")
    );
    assert!(elapsed >= Duration::from_millis(700), "after {elapsed:?}");
}

#[test]
fn a_body_over_64_kib_is_refused_with_413() {
    let server = Server::start(&[]);
    let port = server.port();
    let body = "x".repeat(64 * 1024 + 1);
    let response = support::request(
        port,
        &format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(
        (response.status, response.body.as_str()),
        (413, "Payload Too Large\n")
    );
}

/// Reads until the server closes the connection. A read that would block for
/// STEP_TIMEOUT fails the test: the server held the connection open.
/// `started` is taken before connecting: the server's timer starts when it
/// accepts, never earlier, so the elapsed time is a safe lower bound.
fn read_until_closed(stream: &mut std::net::TcpStream, started: Instant) -> (String, Duration) {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "the server kept the connection open ({e}) for {:?}; read so far: {:?}",
                started.elapsed(),
                String::from_utf8_lossy(&bytes)
            ),
        }
    }
    (String::from_utf8(bytes).unwrap(), started.elapsed())
}

fn is_rfc3339_millis(ts: &str) -> bool {
    let b = ts.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
}
