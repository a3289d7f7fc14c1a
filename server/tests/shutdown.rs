//! Graceful shutdown of the real server on SIGTERM and SIGINT.
//!
//! The server has no slow endpoint, and the shipped binary should not grow
//! one for tests. But every route reads the request body to its end before
//! answering, so a request whose body is still being sent is a real
//! in-flight request: the client decides when it finishes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{Server, STEP_TIMEOUT};

/// Sends the head and the first half of a 4-byte body, and waits.
fn start_slow_request(server: &Server, path: &str) -> TcpStream {
    let mut stream = server.connect();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\nConnection: close\r\n\r\nab")
                .as_bytes(),
        )
        .unwrap();
    stream
}

/// Waits until `count` requests are inside a handler, counting the /metrics
/// request that asks. Before that, a signal could beat the slow requests to
/// the server.
fn wait_in_flight(server: &Server, count: usize) {
    let line = format!("server_http_requests_in_flight {count}\n");
    support::wait_until(&format!("{count} requests in flight"), || {
        server.get("/metrics").body.contains(&line)
    });
}

fn finish_slow_request(mut stream: TcpStream) -> support::Response {
    stream.write_all(b"cd").unwrap();
    support::read_response(&mut stream)
}

fn log_statuses(server: &Server) -> Vec<(String, u64)> {
    server
        .logs()
        .iter()
        .filter(|r| r["msg"] == "request" && r["path"] != "/metrics")
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_owned(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn sigterm_keeps_accepting_for_the_drain_delay_with_readyz_503_and_connection_close() {
    // The default drain delay, 5s.
    let mut server = Server::start(&[("SERVER_SHUTDOWN_TIMEOUT", "10s"), ("SERVER_LOG", "debug")]);
    let mut keep_alive = server.connect();
    keep_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let before = support::read_one_response(&mut keep_alive).unwrap();
    assert_eq!((before.status, before.header("connection")), (200, None));
    let slow_healthz = start_slow_request(&server, "/healthz");
    wait_in_flight(&server, 2);

    server.signal("TERM");
    let shutting_down = server.wait_for_log("shutting down");
    let signalled = Instant::now();
    assert_eq!(shutting_down["signal"], "SIGTERM");
    assert_eq!(shutting_down["drain_delay_ms"], 5_000);
    assert_eq!(shutting_down["timeout_ms"], 10_000);

    // A new connection is still accepted, and told the instance is going.
    let readyz = server.get("/readyz");
    assert_eq!(
        (
            readyz.status,
            readyz.body.as_str(),
            readyz.header("connection")
        ),
        (503, "draining\n", Some("close"))
    );
    // A keep-alive connection gets its answer, then is closed by the server.
    keep_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let during = support::read_one_response(&mut keep_alive).unwrap();
    assert_eq!(
        (during.status, during.header("connection")),
        (200, Some("close"))
    );
    let mut rest = Vec::new();
    assert_eq!(keep_alive.read_to_end(&mut rest).unwrap(), 0);

    // Late in the delay, connections are still accepted.
    std::thread::sleep(Duration::from_millis(4_000).saturating_sub(signalled.elapsed()));
    let version = server.get("/version");
    assert_eq!(
        (version.status, version.header("connection")),
        (200, Some("close"))
    );

    let stopped_accepting = server.wait_for_log("stopped accepting");
    let drained = (support::ts_millis(&stopped_accepting) + 86_400_000
        - support::ts_millis(&shutting_down))
        % 86_400_000;
    assert!(drained >= 5_000, "the listener closed after {drained}ms");
    assert_eq!(stopped_accepting["accepted_from_backlog"], 0);
    let refused = TcpStream::connect(server.addr)
        .map(|_| ())
        .map_err(|e| e.kind());
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionRefused));

    // The request in flight all along still finishes.
    let healthz = finish_slow_request(slow_healthz);
    assert_eq!((healthz.status, healthz.body.as_str()), (200, "ok\n"));

    let status = server.wait_exit(STEP_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{status}");
    let logs = server.logs();
    assert_eq!(logs.last().unwrap()["msg"], "stopped", "{logs:?}");
    assert_eq!(
        log_statuses(&server),
        [
            ("/healthz".to_owned(), 200),
            ("/readyz".to_owned(), 503),
            ("/healthz".to_owned(), 200),
            ("/version".to_owned(), 200),
            ("/healthz".to_owned(), 200),
        ]
    );
}

#[test]
fn a_slow_request_sees_the_readiness_of_the_moment_it_completes() {
    let mut server = Server::start(&[("SERVER_DRAIN_DELAY", "0s"), ("SERVER_LOG", "debug")]);
    // Routing happens after the body is read, so this request sees the
    // readiness of the moment it completes: after the signal.
    let slow_readyz = start_slow_request(&server, "/readyz");
    wait_in_flight(&server, 2);
    server.signal("TERM");
    server.wait_for_log("stopped accepting");
    let readyz = finish_slow_request(slow_readyz);
    assert_eq!(
        (
            readyz.status,
            readyz.body.as_str(),
            readyz.header("connection")
        ),
        (503, "draining\n", Some("close"))
    );
    assert_eq!(server.wait_exit(STEP_TIMEOUT).code(), Some(0));
    assert_eq!(log_statuses(&server), [("/readyz".to_owned(), 503)]);
}

#[test]
fn sigint_drains_the_same_way() {
    let mut server = Server::start(&[("SERVER_DRAIN_DELAY", "0s")]);
    let slow = start_slow_request(&server, "/healthz");
    wait_in_flight(&server, 2);
    server.signal("INT");
    assert_eq!(server.wait_for_log("shutting down")["signal"], "SIGINT");
    assert_eq!(finish_slow_request(slow).status, 200);
    assert_eq!(server.wait_exit(STEP_TIMEOUT).code(), Some(0));
}

#[test]
fn an_idle_server_exits_0_at_once_on_sigterm_without_a_drain_delay() {
    let mut server = Server::start(&[("SERVER_DRAIN_DELAY", "0s")]);
    // An idle keep-alive connection must not hold the shutdown up.
    let mut idle = server.connect();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    support::wait_until("the keep-alive request to be answered", || {
        server
            .get("/metrics")
            .body
            .contains("route=\"/healthz\",method=\"GET\",status=\"200\"} 1\n")
    });
    server.signal("TERM");
    assert_eq!(server.wait_exit(STEP_TIMEOUT).code(), Some(0));
    let logs = server.logs();
    assert_eq!(logs.last().unwrap()["msg"], "stopped", "{logs:?}");
}

#[test]
fn a_request_slower_than_the_shutdown_timeout_is_cut_and_the_server_exits_0() {
    let mut server = Server::start(&[
        ("SERVER_SHUTDOWN_TIMEOUT", "300ms"),
        ("SERVER_BODY_TIMEOUT", "60s"),
        ("SERVER_DRAIN_DELAY", "0s"),
    ]);
    let mut never_finishes = start_slow_request(&server, "/healthz");
    wait_in_flight(&server, 2);
    server.signal("TERM");
    assert_eq!(server.wait_exit(STEP_TIMEOUT).code(), Some(0));
    let logs = server.logs();
    let last = logs.last().unwrap();
    assert_eq!(
        (&last["level"], &last["msg"]),
        (
            &serde_json::json!("warn"),
            &serde_json::json!("shutdown timeout reached, closing remaining connections")
        )
    );
    // The process is gone, so its side of the connection is closed.
    let mut rest = Vec::new();
    let read = std::io::Read::read_to_end(&mut never_finishes, &mut rest);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "got {read:?}: {:?}",
        String::from_utf8_lossy(&rest)
    );
}
