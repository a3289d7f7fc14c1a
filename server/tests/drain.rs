//! No request lost across SIGTERM under load. Many keep-alive clients, each
//! in its own thread, send requests back to back while a prober plays the
//! load balancer: it polls /readyz and, after three 503s in a row, takes the
//! instance out, and the clients stop opening connections. Bounded in
//! clients, in time, and to 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Server, STEP_TIMEOUT};

const CLIENTS: usize = 16;

#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    answered: u64,
    /// Responses that said `Connection: close`, after which the server
    /// closed the connection cleanly.
    closed_by_server: u64,
    /// Requests written that got no complete response, with the error.
    lost: Vec<String>,
    refused: u64,
    not_200: u64,
}

fn client(port: u16, out_of_rotation: &AtomicBool, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    'connections: while !out_of_rotation.load(Ordering::SeqCst) && Instant::now() < deadline {
        let mut stream = match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => stream,
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                tally.refused += 1;
                break;
            }
            Err(err) => panic!("cannot connect: {err}"),
        };
        stream.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(STEP_TIMEOUT)).unwrap();
        while !out_of_rotation.load(Ordering::SeqCst) && Instant::now() < deadline {
            tally.sent += 1;
            if let Err(err) = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            {
                tally.lost.push(format!("write: {err}"));
                continue 'connections;
            }
            let response = match support::read_one_response(&mut stream) {
                Ok(response) => response,
                Err(err) => {
                    tally.lost.push(format!("read: {err}"));
                    continue 'connections;
                }
            };
            tally.answered += 1;
            if response.status != 200 {
                tally.not_200 += 1;
            }
            if response.header("connection") == Some("close") {
                let mut rest = Vec::new();
                match stream.read_to_end(&mut rest) {
                    Ok(0) => tally.closed_by_server += 1,
                    other => tally.lost.push(format!("after close: {other:?} {rest:?}")),
                }
                continue 'connections;
            }
        }
        break;
    }
    tally
}

/// Polls /readyz every 100ms on a new connection, as a load balancer does.
/// Returns the statuses seen, in order.
fn prober(port: u16, out_of_rotation: &AtomicBool, deadline: Instant) -> Vec<u16> {
    let mut statuses = Vec::new();
    while Instant::now() < deadline {
        let status = support::get(port, "/readyz").status;
        statuses.push(status);
        if statuses.ends_with(&[503, 503, 503]) {
            out_of_rotation.store(true, Ordering::SeqCst);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    statuses
}

#[test]
fn no_request_that_reached_the_server_goes_unanswered_across_sigterm_under_load() {
    let mut server = Server::start(&[
        ("SERVER_DRAIN_DELAY", "3s"),
        ("SERVER_SHUTDOWN_TIMEOUT", "5s"),
    ]);
    let port = server.port();
    let out_of_rotation = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + STEP_TIMEOUT;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let out = out_of_rotation.clone();
            std::thread::spawn(move || client(port, &out, deadline))
        })
        .collect();
    let probe = {
        let out = out_of_rotation.clone();
        std::thread::spawn(move || prober(port, &out, deadline))
    };

    // Load before the signal, then the signal in the middle of it.
    std::thread::sleep(Duration::from_millis(500));
    server.signal("TERM");
    let shutting_down = server.wait_for_log("shutting down");
    assert_eq!(shutting_down["drain_delay_ms"], 3_000);

    let statuses = probe.join().unwrap();
    let tallies: Vec<Tally> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let stopped_accepting = server.wait_for_log("stopped accepting");
    assert_eq!(server.wait_exit(STEP_TIMEOUT).code(), Some(0));

    // The prober saw the instance ready, then draining, never refused.
    let first_503 = statuses.iter().position(|s| *s == 503).unwrap();
    assert!(first_503 >= 1, "{statuses:?}");
    assert!(
        statuses[..first_503].iter().all(|s| *s == 200),
        "{statuses:?}"
    );
    assert_eq!(statuses[first_503..], [503, 503, 503], "{statuses:?}");
    // Everything the clients sent was answered, with 200.
    let lost: Vec<&String> = tallies.iter().flat_map(|t| &t.lost).collect();
    assert_eq!(lost, Vec::<&String>::new());
    let total = |f: fn(&Tally) -> u64| tallies.iter().map(f).sum::<u64>();
    let (sent, answered) = (total(|t| t.sent), total(|t| t.answered));
    assert_eq!(sent, answered);
    assert_eq!(total(|t| t.not_200), 0);
    assert_eq!(total(|t| t.refused), 0);
    // Every client was told to close at least once, while draining.
    assert!(
        tallies.iter().all(|t| t.closed_by_server >= 1),
        "{tallies:?}"
    );
    let drained = (support::ts_millis(&stopped_accepting) + 86_400_000
        - support::ts_millis(&shutting_down))
        % 86_400_000;
    assert!(drained >= 3_000, "the listener closed after {drained}ms");
    eprintln!(
        "{CLIENTS} clients: {sent} requests sent, {answered} answered, {} closed by the server while draining; readyz {statuses:?}",
        total(|t| t.closed_by_server)
    );
}

/// The same with wrk, the load generator the loss was first seen with (50
/// of 50 connections had a read error): SIGTERM one second into a
/// three-second run, which ends inside the drain delay, so every connection
/// wrk opens is accepted and every request it sends is answered.
#[test]
fn wrk_across_sigterm_gets_every_answer_with_200() {
    let mut server = Server::start(&[
        ("SERVER_DRAIN_DELAY", "4s"),
        ("SERVER_SHUTDOWN_TIMEOUT", "5s"),
    ]);
    let wrk = std::process::Command::new("wrk")
        .args(["-t2", "-c50", "-d3s"])
        .arg(format!("http://127.0.0.1:{}/healthz", server.port()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("wrk is missing: run `cargo xtask setup` (apt-get install wrk)");
    std::thread::sleep(Duration::from_secs(1));
    server.signal("TERM");
    server.wait_for_log("shutting down");
    let output = wrk.wait_with_output().unwrap();
    let report = support::text(&output.stdout);
    assert!(
        output.status.success(),
        "{report}{}",
        support::text(&output.stderr)
    );
    let requests: u64 = report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's report:\n{report}"));
    assert!(requests > 0, "{report}");
    // wrk prints these lines only when there is something to count.
    assert!(!report.contains("Socket errors"), "{report}");
    assert!(!report.contains("Non-2xx"), "{report}");
    server.wait_for_log("stopped accepting");
    assert_eq!(server.wait_exit(STEP_TIMEOUT).code(), Some(0));
}
