//! `server healthcheck`: an HTTP probe that needs no shell, curl or DNS, so
//! that a distroless image can run it as its Docker HEALTHCHECK.
//!
//! It exits 0 or 1 only: Docker reserves exit code 2 for health checks.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::config;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub host_header: String,
    pub path: String,
}

impl Target {
    fn url(&self) -> String {
        format!("http://{}{}", self.host_header, self.path)
    }
}

/// Where to probe: `--url`, else the server's own `SERVER_ADDR` with an
/// unspecified host (0.0.0.0, [::]) replaced by loopback.
pub fn target(url: Option<&str>, server_addr: Option<&str>) -> Result<Target, String> {
    if let Some(url) = url {
        return parse_url(url);
    }
    let value = server_addr
        .filter(|v| !v.is_empty())
        .unwrap_or("0.0.0.0:8080");
    let mut addr = config::parse_addr_var(value).map_err(|e| e.0)?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(Target {
        addr,
        host_header: addr.to_string(),
        path: "/healthz".to_owned(),
    })
}

fn parse_url(url: &str) -> Result<Target, String> {
    let bad = |why: &str| {
        format!("invalid --url {url:?}: {why}; expected http://IP:PORT/PATH such as http://127.0.0.1:8080/healthz")
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// is supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/healthz"),
    };
    let addr = match authority.parse::<SocketAddr>() {
        Ok(addr) => addr,
        // `localhost` is the one name that is safe to resolve without DNS.
        Err(_) => match authority.strip_prefix("localhost:").map(str::parse::<u16>) {
            Some(Ok(port)) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            _ => {
                return Err(bad(
                    "the host must be an IP address or localhost, with a port",
                ))
            }
        },
    };
    Ok(Target {
        addr,
        host_header: authority.to_owned(),
        path: path.to_owned(),
    })
}

/// Probes the target within `timeout`, all steps included. Returns the HTTP
/// status on success.
pub fn probe(target: &Target, timeout: Duration) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer within {}ms", timeout.as_millis()))
    };
    let mut stream =
        TcpStream::connect_timeout(&target.addr, remaining()?).map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                format!("no answer within {}ms", timeout.as_millis())
            }
            _ => format!("cannot connect: {e}"),
        })?;
    stream
        .set_write_timeout(Some(remaining()?))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: server-healthcheck\r\nConnection: close\r\n\r\n",
        target.path, target.host_header
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send request: {e}"))?;

    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") {
        stream
            .set_read_timeout(Some(remaining()?))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => return Err("connection closed before a response".to_owned()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no answer within {}ms", timeout.as_millis()))
            }
            Err(e) => return Err(format!("cannot read response: {e}")),
        }
        if head.len() > 4096 {
            return Err("response status line is too long".to_owned());
        }
    }
    parse_status(&head)
}

fn parse_status(head: &[u8]) -> Result<u16, String> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(status))) if version.starts_with("HTTP/1.") => Ok(status),
        _ => Err(format!("not an HTTP response: {line:?}")),
    }
}

/// Runs the probe and prints one line. Returns the process exit code.
pub fn run(url: Option<&str>, timeout: Duration) -> u8 {
    let server_addr = std::env::var("SERVER_ADDR").ok();
    let target = match target(url, server_addr.as_deref()) {
        Ok(target) => target,
        Err(err) => {
            eprintln!("unhealthy: {err}");
            return 1;
        }
    };
    let started = Instant::now();
    match probe(&target, timeout) {
        Ok(status) if (200..300).contains(&status) => {
            println!(
                "healthy: GET {} -> {status} in {}ms",
                target.url(),
                started.elapsed().as_millis()
            );
            0
        }
        Ok(status) => {
            println!("unhealthy: GET {} -> {status}", target.url());
            1
        }
        Err(err) => {
            println!("unhealthy: GET {}: {err}", target.url());
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_hosts_are_probed_on_loopback() {
        assert_eq!(
            target(None, Some("0.0.0.0:9000")).unwrap().addr,
            "127.0.0.1:9000".parse().unwrap()
        );
        assert_eq!(
            target(None, Some("[::]:9000")).unwrap().addr,
            "[::1]:9000".parse().unwrap()
        );
        assert_eq!(
            target(None, None).unwrap().addr,
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            target(None, Some("10.1.2.3:80")).unwrap().addr,
            "10.1.2.3:80".parse().unwrap()
        );
    }

    #[test]
    fn urls() {
        let t = target(Some("http://localhost:81/readyz"), None).unwrap();
        assert_eq!(
            (t.addr, t.path.as_str()),
            ("127.0.0.1:81".parse().unwrap(), "/readyz")
        );
        let t = target(Some("http://[::1]:82"), None).unwrap();
        assert_eq!(
            (t.addr, t.path.as_str()),
            ("[::1]:82".parse().unwrap(), "/healthz")
        );
        assert!(target(Some("https://127.0.0.1:1/"), None)
            .unwrap_err()
            .contains("only http://"));
        assert!(target(Some("http://example.com:80/"), None)
            .unwrap_err()
            .contains("IP address or localhost"));
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Ok(200));
        assert_eq!(
            parse_status(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Ok(503)
        );
        assert!(parse_status(b"SSH-2.0-OpenSSH\r\n").is_err());
    }
}
