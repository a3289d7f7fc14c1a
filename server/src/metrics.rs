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

impl Metrics {
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// `route` is one of the known routes or `other`, so that scanners
    /// requesting random paths cannot grow the series without bound.
    pub fn request_finished(&self, route: &'static str, method: &'static str, status: u16) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
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
            m.request_started();
            m.request_finished("/healthz", "GET", 200);
        }
        m.request_started();
        m.request_finished("other", "GET", 404);
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
}
