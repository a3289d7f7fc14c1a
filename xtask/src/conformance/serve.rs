//! The clauses that run the server: it listens where SERVER_ADDR says (and
//! on 8080 without it), `healthcheck` tells a live port from a dead one,
//! and SIGTERM drains before it exits 0.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use super::target::{free_port, http_status, sigterm, wait_for, Target};
use super::{clause, exits, Clause, DEFAULT_PORT, DRAIN_DELAY, QUICK, SHUTDOWN_TIMEOUT};

/// Starts the server on SERVER_ADDR, probes it with `healthcheck`, then
/// stops it with SIGTERM: listen-address, healthcheck-live-port, readyz
/// and sigterm-drain.
pub fn serve_and_drain(target: &Target) -> Vec<Clause> {
    let not_checked = |why: &str| {
        ["healthcheck-live-port", "sigterm-drain"]
            .map(|name| clause(name, Err(format!("not checked: {why}"))))
    };
    let port = match free_port() {
        Ok(port) => port,
        Err(why) => {
            let mut clauses = vec![clause("listen-address", Err(why.clone()))];
            clauses.extend(not_checked(&why));
            return clauses;
        }
    };
    let addr = format!("127.0.0.1:{port}");
    let env = [
        ("SERVER_ADDR", addr.clone()),
        ("SERVER_DRAIN_DELAY", format!("{}s", DRAIN_DELAY.as_secs())),
        (
            "SERVER_SHUTDOWN_TIMEOUT",
            format!("{}s", SHUTDOWN_TIMEOUT.as_secs()),
        ),
    ];
    let server = match target
        .command(&[], &env)
        .stdout_null()
        .stderr_null()
        .start()
    {
        Ok(handle) => handle,
        Err(e) => {
            let why = format!("cannot start {}: {e}", target.binary);
            let mut clauses = vec![clause("listen-address", Err(why.clone()))];
            clauses.extend(not_checked(&why));
            return clauses;
        }
    };
    let listening = wait_for(port, "/healthz", 200, target.timeout(QUICK));
    let mut clauses = vec![clause(
        "listen-address",
        match listening {
            Some(after) => Ok(format!(
                "SERVER_ADDR={addr}: /healthz 200 after {}ms",
                after.as_millis()
            )),
            None => Err(format!(
                "with SERVER_ADDR={addr}, no 200 from http://{addr}/healthz within {}s",
                target.timeout(QUICK).as_secs()
            )),
        },
    )];
    if listening.is_none() {
        let _ = server.kill();
        clauses.extend(not_checked("the server did not listen on SERVER_ADDR"));
        return clauses;
    }
    clauses.push(clause(
        "healthcheck-live-port",
        match target.run(&["healthcheck"], &env[..1], QUICK) {
            Ok((Some(0), _)) => Ok(format!("`healthcheck` exits 0 with the server on {addr}")),
            Ok((code, _)) => Err(format!(
                "`healthcheck` {} with a healthy server on SERVER_ADDR={addr}, expected 0",
                exits(code)
            )),
            Err(why) => Err(why),
        },
    ));
    clauses.push(clause("sigterm-drain", drain(target, &server, port)));
    let _ = server.kill();
    clauses
}

/// Ready, then SIGTERM: /readyz says 503 while the drain delay runs, and the
/// process exits 0 before the delay plus the shutdown timeout are over.
fn drain(target: &Target, server: &duct::Handle, port: u16) -> Result<String, String> {
    if http_status(port, "/readyz") != Some(200) {
        return Err("/readyz does not answer 200 before SIGTERM".to_owned());
    }
    let sent = Instant::now();
    sigterm(server)?;
    let draining = wait_for(port, "/readyz", 503, DRAIN_DELAY).ok_or_else(|| {
        format!(
            "after SIGTERM, /readyz did not answer 503 within SERVER_DRAIN_DELAY={}s",
            DRAIN_DELAY.as_secs()
        )
    })?;
    let limit = target.timeout(DRAIN_DELAY + SHUTDOWN_TIMEOUT + Duration::from_secs(2));
    let output = server
        .wait_timeout(limit.saturating_sub(sent.elapsed()))
        .map_err(|e| format!("cannot wait for the server: {e}"))?
        .ok_or_else(|| format!("still running {}s after SIGTERM", limit.as_secs()))?;
    let exited = sent.elapsed();
    match output.status.code() {
        Some(0) if exited >= DRAIN_DELAY => Ok(format!(
            "/readyz 503 {}ms after SIGTERM, exit 0 after {}ms",
            draining.as_millis(),
            exited.as_millis()
        )),
        Some(0) => Err(format!(
            "exit 0 after {}ms, before SERVER_DRAIN_DELAY={}s was over",
            exited.as_millis(),
            DRAIN_DELAY.as_secs()
        )),
        code => Err(format!("{} after SIGTERM, expected 0", exits(code))),
    }
}

pub fn healthcheck_dead_port(target: &Target) -> Clause {
    let checked = free_port().and_then(|port| {
        let addr = format!("127.0.0.1:{port}");
        match target.run(&["healthcheck"], &[("SERVER_ADDR", addr.clone())], QUICK)? {
            (Some(0), _) => Err(format!(
                "`healthcheck` exits 0 with nothing listening on SERVER_ADDR={addr}"
            )),
            (code, _) => Ok(format!(
                "`healthcheck` {} with nothing on {addr}",
                exits(code)
            )),
        }
    });
    clause("healthcheck-dead-port", checked)
}

/// Without SERVER_ADDR the server listens on port 8080, and `healthcheck`
/// probes it: the image's HEALTHCHECK and the chart's probes set nothing.
pub fn default_port(target: &Target) -> Clause {
    let checked = (|| {
        TcpListener::bind(("0.0.0.0", DEFAULT_PORT)).map_err(|e| {
            format!("port {DEFAULT_PORT} is taken ({e}), so the default cannot be checked; stop what listens there and run again")
        })?;
        let server = target
            .command(&[], &[])
            .stdout_null()
            .stderr_null()
            .start()
            .map_err(|e| format!("cannot start {}: {e}", target.binary))?;
        let checked = match wait_for(DEFAULT_PORT, "/healthz", 200, target.timeout(QUICK)) {
            None => Err(format!(
                "without SERVER_ADDR, no 200 from http://127.0.0.1:{DEFAULT_PORT}/healthz within {}s",
                target.timeout(QUICK).as_secs()
            )),
            Some(_) => match target.run(&["healthcheck"], &[], QUICK) {
                Ok((Some(0), _)) => Ok(format!(
                    "listens on {DEFAULT_PORT}, and `healthcheck` exits 0 without SERVER_ADDR"
                )),
                Ok((code, _)) => Err(format!(
                    "`healthcheck` without SERVER_ADDR {} with the server on port {DEFAULT_PORT}", exits(code)
                )),
                Err(why) => Err(why),
            },
        };
        // Its drain was checked above; this one need not wait for it.
        let _ = server.kill();
        checked
    })();
    clause("default-port", checked)
}
