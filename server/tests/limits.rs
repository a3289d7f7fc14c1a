//! Connection limits, the in-flight gauge of requests whose clients went
//! away, 431 responses in /metrics, and the warning for a mistyped
//! `SERVER_*` variable.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use support::Server;

#[test]
fn server_max_connections_makes_the_next_connection_wait_for_a_free_slot() {
    let server = Server::start(&[("SERVER_MAX_CONNECTIONS", "1")]);
    assert_eq!(server.logs()[0]["max_connections"], 1);
    let mut first = server.connect();
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(support::read_one_response(&mut first).unwrap().status, 200);

    // The kernel completes the handshake, but the server does not accept
    // the connection while the first one holds the only slot.
    let mut second = server.connect();
    second
        .write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    second
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let waited = second.read(&mut [0u8; 64]).map_err(|e| e.kind());
    assert!(
        matches!(
            waited,
            Err(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        ),
        "{waited:?}"
    );

    drop(first);
    second
        .set_read_timeout(Some(support::STEP_TIMEOUT))
        .unwrap();
    assert_eq!(support::read_response(&mut second).status, 200);
}

#[test]
fn a_request_whose_client_goes_away_mid_body_leaves_the_in_flight_gauge() {
    let server = Server::start(&[("SERVER_BODY_TIMEOUT", "60s")]);
    let mut stream = server.connect();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
        .unwrap();
    support::wait_until("the request to reach its handler", || {
        server
            .get("/metrics")
            .body
            .contains("server_http_requests_in_flight 2\n")
    });
    drop(stream);
    // Only the /metrics request that asks is left.
    support::wait_until("the gauge to come down", || {
        server
            .get("/metrics")
            .body
            .contains("server_http_requests_in_flight 1\n")
    });
    // Its body ended early: counted as a bad request, not left hanging.
    assert!(server.get("/metrics").body.contains(
        "server_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"400\"} 1\n"
    ));
}

#[test]
fn a_431_from_hyper_is_counted_in_metrics() {
    let server = Server::start(&[]);
    let mut raw = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..200 {
        raw.push_str(&format!("X-Header-{i}: v\r\n"));
    }
    raw.push_str("\r\n");
    let response = support::request(server.port(), &raw);
    assert_eq!(response.status, 431);
    support::wait_until("the 431 to be counted", || {
        server.get("/metrics").body.contains(
            "server_http_requests_total{route=\"other\",method=\"other\",status=\"431\"} 1\n",
        )
    });
}

#[test]
fn a_mistyped_variable_is_named_in_a_warning_with_the_closest_known_one() {
    let server = Server::start(&[("SERVER_ADDRESS", "0.0.0.0:9999"), ("SERVER_LOGS", "debug")]);
    let warnings: Vec<serde_json::Value> = server
        .logs()
        .into_iter()
        .filter(|r| r["level"] == "warn")
        .collect();
    assert_eq!(
        warnings
            .iter()
            .map(|r| (
                r["msg"].as_str().unwrap(),
                r["variable"].as_str().unwrap(),
                r["closest"].as_str().unwrap()
            ))
            .collect::<Vec<_>>(),
        [
            (
                "ignoring unknown variable SERVER_ADDRESS: did you mean SERVER_ADDR?",
                "SERVER_ADDRESS",
                "SERVER_ADDR"
            ),
            (
                "ignoring unknown variable SERVER_LOGS: did you mean SERVER_LOG?",
                "SERVER_LOGS",
                "SERVER_LOG"
            ),
        ]
    );
}
