//! TCP proxies in front of a registry, and the loops they share: one holds
//! the first request containing a given text (such as
//! `PUT /v2/app/manifests/latest`) until the test lets it go, the overlap
//! of two publications reproduced; one
//! slows a repository's blob requests, counts how many overlap, and
//! refuses the upload of one blob.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct HoldingProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    /// Set when the matched request arrived and is being held.
    held: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
}

impl HoldingProxy {
    pub fn start(upstream: u16, trigger: &'static str) -> HoldingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicBool::new(false));
        let release = Arc::new(AtomicBool::new(false));
        let (held2, release2) = (held.clone(), release.clone());
        forward_connections(listener, upstream, stop.clone(), move |client, server| {
            let (held, release) = (held2.clone(), release2.clone());
            forward_watching(client, server, trigger, move || {
                if !held.swap(true, Ordering::SeqCst) {
                    // Held at most a minute: a test that never lets go
                    // fails on its own assertions, not by hanging.
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while !release.load(Ordering::SeqCst) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                AfterTrigger::Forward
            });
        });
        HoldingProxy {
            port,
            stop,
            held,
            release,
        }
    }

    /// Waits up to 60s for the matched request to arrive; whether it did.
    pub fn wait_until_held(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.held.load(Ordering::SeqCst) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Lets the held request go on to the registry.
    pub fn release(&self) {
        self.release.store(true, Ordering::SeqCst);
    }
}

impl Drop for HoldingProxy {
    fn drop(&mut self) {
        self.release();
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A TCP proxy in front of a registry that watches the blob requests of
/// one repository (HEAD and GET of a blob, POST and PUT of an upload): it
/// holds each for `delay` before passing it on, as a distant registry's
/// latency would, and counts how many are in flight at once, from the
/// request line to the first byte of the answer. Every PUT whose request
/// line contains `fail` (a digest) is answered 500 and never reaches the
/// registry.
pub struct BlobProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    watch: Arc<Watch>,
}

struct Watch {
    patterns: Vec<String>,
    delay: Duration,
    fail: Option<String>,
    in_flight: AtomicUsize,
    most: AtomicUsize,
    refused: AtomicUsize,
    started: Instant,
    /// Microseconds after `started` of the first watched request and of
    /// the last answer to one.
    first: AtomicU64,
    last: AtomicU64,
}

impl Watch {
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap()
    }
}

/// Accepts on `listener` until `stop` is set, connects each client to the
/// registry on `upstream`, and hands both streams to `serve`. The listener
/// is polled, not blocked on, so that the stop is seen.
pub fn forward_connections(
    listener: TcpListener,
    upstream: u16,
    stop: Arc<AtomicBool>,
    serve: impl Fn(TcpStream, TcpStream) + Send + 'static,
) {
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let Ok((client, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let _ = client.set_nonblocking(false);
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            serve(client, server);
        }
    });
}

/// What [`forward_watching`] does with the client's bytes that completed
/// the trigger.
pub enum AfterTrigger {
    /// Passes them on to the registry.
    Forward,
    /// Closes the connection without passing them on.
    Disconnect,
}

/// Pumps one proxied connection both ways: the registry's answers back as
/// they come, and the client's bytes on to the registry. Before passing on
/// a read after which the text seen (the read, and the last 256 bytes
/// before it) contains `trigger`, it calls `on_trigger`, which may block.
pub fn forward_watching(
    client: TcpStream,
    server: TcpStream,
    trigger: &'static str,
    mut on_trigger: impl FnMut() -> AfterTrigger + Send + 'static,
) {
    let (mut client_read, mut server_write) =
        (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (mut server_read, mut client_write) = (server, client);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut server_read, &mut client_write);
        let _ = client_write.shutdown(std::net::Shutdown::Both);
    });
    std::thread::spawn(move || {
        let mut window: Vec<u8> = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            window.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&window).contains(trigger) {
                if let AfterTrigger::Disconnect = on_trigger() {
                    let _ = client_read.shutdown(std::net::Shutdown::Both);
                    break;
                }
            }
            if server_write.write_all(&buf[..n]).is_err() {
                break;
            }
            let keep = window.len().saturating_sub(256);
            window.drain(..keep);
        }
        let _ = server_write.shutdown(std::net::Shutdown::Write);
    });
}

const REFUSAL: &str = "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: 62\r\nConnection: close\r\n\r\n{\"errors\":[{\"code\":\"UNKNOWN\",\"message\":\"refused by a proxy\"}]}";

impl BlobProxy {
    pub fn start(
        upstream: u16,
        repository: &str,
        delay: Duration,
        fail: Option<&str>,
    ) -> BlobProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let watch = Arc::new(Watch {
            patterns: ["HEAD", "GET", "POST", "PUT"]
                .map(|m| format!("{m} /v2/{repository}/blobs/"))
                .to_vec(),
            delay,
            fail: fail.map(str::to_owned),
            in_flight: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            started: Instant::now(),
            first: AtomicU64::new(u64::MAX),
            last: AtomicU64::new(0),
        });
        let watched = watch.clone();
        forward_connections(listener, upstream, stop.clone(), move |client, server| {
            // Set from a watched request line to its answer's first byte.
            let waiting = Arc::new(AtomicBool::new(false));
            let (watch, answered) = (watch.clone(), waiting.clone());
            let (mut client_read, mut server_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let mut refusal = client.try_clone().unwrap();
            let (mut server_read, mut client_write) = (server, client);
            let counted = watch.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    let n = match server_read.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if answered.swap(false, Ordering::SeqCst) {
                        counted.in_flight.fetch_sub(1, Ordering::SeqCst);
                        counted.last.fetch_max(counted.now(), Ordering::SeqCst);
                    }
                    if client_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                if answered.swap(false, Ordering::SeqCst) {
                    counted.in_flight.fetch_sub(1, Ordering::SeqCst);
                }
                let _ = client_write.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                let mut window: Vec<u8> = Vec::new();
                let mut buf = [0u8; 16 * 1024];
                'read: loop {
                    let n = match client_read.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    window.extend_from_slice(&buf[..n]);
                    loop {
                        // Bytes, not text: a blob's body is not UTF-8.
                        let Some(start) = watch
                            .patterns
                            .iter()
                            .filter_map(|p| find(&window, p.as_bytes()))
                            .min()
                        else {
                            let keep = window.len().saturating_sub(64);
                            window.drain(..keep);
                            break;
                        };
                        let Some(end) = find(&window[start..], b"\r\n").map(|e| start + e) else {
                            // The rest of the request line is still to come.
                            window.drain(..start);
                            break;
                        };
                        let line = String::from_utf8_lossy(&window[start..end]).into_owned();
                        if line.starts_with("PUT ")
                            && watch.fail.as_deref().is_some_and(|f| line.contains(f))
                        {
                            watch.refused.fetch_add(1, Ordering::SeqCst);
                            let _ = refusal.write_all(REFUSAL.as_bytes());
                            let _ = refusal.shutdown(std::net::Shutdown::Both);
                            let _ = server_write.shutdown(std::net::Shutdown::Both);
                            break 'read;
                        }
                        waiting.store(true, Ordering::SeqCst);
                        watch.first.fetch_min(watch.now(), Ordering::SeqCst);
                        let now = watch.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        watch.most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(watch.delay);
                        window.drain(..end);
                    }
                    if server_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = server_write.shutdown(std::net::Shutdown::Write);
            });
        });
        BlobProxy {
            port,
            stop,
            watch: watched,
        }
    }

    /// The most watched requests that were in flight at once.
    pub fn most_in_flight(&self) -> usize {
        self.watch.most.load(Ordering::SeqCst)
    }

    /// From the first watched request to the last answer to one: how long
    /// the blobs of a push took.
    pub fn span(&self) -> Duration {
        let first = self.watch.first.load(Ordering::SeqCst);
        let last = self.watch.last.load(Ordering::SeqCst);
        Duration::from_micros(last.saturating_sub(first))
    }

    /// How many PUTs of the `fail` digest were answered 500.
    pub fn refused(&self) -> usize {
        self.watch.refused.load(Ordering::SeqCst)
    }
}

impl Drop for BlobProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
