//! A TCP proxy in front of a registry that holds the first request
//! containing a given text (such as `PUT /v2/app/manifests/latest`) until
//! the test lets it go: the overlap of two publications, reproduced.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
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
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicBool::new(false));
        let release = Arc::new(AtomicBool::new(false));
        let (stop2, held2, release2) = (stop.clone(), held.clone(), release.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (held, release) = (held2.clone(), release2.clone());
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
                        if String::from_utf8_lossy(&window).contains(trigger)
                            && !held.swap(true, Ordering::SeqCst)
                        {
                            // Held at most a minute: a test that never lets
                            // go fails on its own assertions, not by hanging.
                            let deadline = Instant::now() + Duration::from_secs(60);
                            while !release.load(Ordering::SeqCst) && Instant::now() < deadline {
                                std::thread::sleep(Duration::from_millis(10));
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
