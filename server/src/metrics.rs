//! Prometheus text exposition, written by hand: three series do not justify
//! a metrics framework in a binary that has to stay small.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use crate::build_info;

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str, u16), u64>>,
    in_flight: AtomicI64,
}

/// Counts one request in flight for as long as it lives. A guard rather
/// than a pair of calls, because hyper drops a handler's future when its
/// client goes away, and a decrement written after an `.await` would then
/// never run.
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn request_started(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// `route` is one of the known routes or `other`, so that scanners
    /// requesting random paths cannot grow the series without bound.
    pub fn request_finished(&self, route: &'static str, method: &'static str, status: u16) {
        if let Ok(mut requests) = self.requests.lock() {
            *requests.entry((route, method, status)).or_default() += 1;
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP server_http_requests_total HTTP requests handled, by route, method and status.\n");
        out.push_str("# TYPE server_http_requests_total counter\n");
        if let Ok(requests) = self.requests.lock() {
            for ((route, method, status), count) in requests.iter() {
                let _ = writeln!(
                    out,
                    "server_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {count}"
                );
            }
        }
        out.push_str("# HELP server_http_requests_in_flight HTTP requests being handled now.\n");
        out.push_str("# TYPE server_http_requests_in_flight gauge\n");
        let _ = writeln!(
            out,
            "server_http_requests_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP server_build_info Build information of the running binary; always 1.\n",
        );
        out.push_str("# TYPE server_build_info gauge\n");
        let _ = writeln!(
            out,
            "server_build_info{{version=\"{}\",git_sha=\"{}\",target=\"{}\"}} 1",
            build_info::VERSION,
            build_info::GIT_SHA,
            build_info::TARGET
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_route_method_and_status() {
        let m = Metrics::default();
        for _ in 0..2 {
            let _in_flight = m.request_started();
            m.request_finished("/healthz", "GET", 200);
        }
        let in_flight = m.request_started();
        m.request_finished("other", "GET", 404);
        assert!(m.render().contains("server_http_requests_in_flight 1\n"));
        drop(in_flight);
        let text = m.render();
        assert!(text.contains(
            "server_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} 2\n"
        ));
        assert!(text.contains(
            "server_http_requests_total{route=\"other\",method=\"GET\",status=\"404\"} 1\n"
        ));
        assert!(text.contains("server_http_requests_in_flight 0\n"));
        assert!(text.contains("server_build_info{version=\""));
    }

    #[test]
    fn a_dropped_request_leaves_the_in_flight_gauge() {
        let m = Metrics::default();
        let first = m.request_started();
        let second = m.request_started();
        assert!(m.render().contains("server_http_requests_in_flight 2\n"));
        // Dropped without request_finished: a client that went away.
        drop(second);
        drop(first);
        assert!(m.render().contains("server_http_requests_in_flight 0\n"));
    }
}
