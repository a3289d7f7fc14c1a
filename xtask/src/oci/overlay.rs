//! A read-only registry on loopback that shows cosign a repository before
//! any of its tags exist. Manifests and blobs are read by digest from the
//! real repository; the only tags it answers are cosign's referrers tags
//! (`sha256-<hex>`), from a map the caller gives.
//!
//! Why: on a registry without the OCI 1.1 referrers API, cosign finds the
//! signatures of a digest only through the tag `sha256-<hex>`. Verifying
//! what was pushed, before setting any tag, therefore needs those tags to
//! exist somewhere other than the real repository.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::oci::client::Client;

/// The largest request head read: cosign's are a few hundred bytes.
const HEAD_LIMIT: usize = 64 * 1024;

/// A running overlay; it stops when dropped.
pub struct Overlay {
    /// `127.0.0.1:PORT`.
    pub host: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Overlay {
    /// Serves `repo` of `client`'s registry under any repository name, with
    /// `tags` (tag → digest) as the only tags.
    pub fn start(client: Client, repo: &str, tags: BTreeMap<String, String>) -> Result<Overlay> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .context("cannot listen on 127.0.0.1 for the verification overlay")?;
        let host = listener
            .local_addr()
            .context("cannot read the overlay's port")?
            .to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let view = Arc::new(View {
            client: Mutex::new(client),
            repo: repo.to_owned(),
            tags,
        });
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let view = view.clone();
                // One thread per connection: Go pings https and http at
                // once, and a TLS hello must not hold up the plain request.
                std::thread::spawn(move || {
                    let _ = view.serve(stream);
                });
            }
        });
        Ok(Overlay {
            host,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(&self.host);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct View {
    client: Mutex<Client>,
    repo: String,
    tags: BTreeMap<String, String>,
}

struct Reply {
    status: u16,
    content_type: String,
    digest: Option<String>,
    body: Vec<u8>,
}

impl Reply {
    fn not_found(code: &str) -> Reply {
        Reply {
            status: 404,
            content_type: "application/json".to_owned(),
            digest: None,
            body: format!(r#"{{"errors":[{{"code":"{code}","message":"not in the overlay"}}]}}"#)
                .into_bytes(),
        }
    }
}

impl View {
    fn serve(&self, mut stream: TcpStream) -> Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf)?;
            // A TLS hello (0x16) or a closed connection: plain HTTP only.
            if n == 0 || head.len() + n > HEAD_LIMIT || (head.is_empty() && buf[0] == 0x16) {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&head);
        let mut words = head.lines().next().unwrap_or_default().split(' ');
        let method = words.next().unwrap_or_default();
        let path = words.next().unwrap_or_default();
        let reply = match method {
            "GET" | "HEAD" => self.answer(path.split('?').next().unwrap_or_default()),
            _ => Reply {
                status: 405,
                content_type: "text/plain".to_owned(),
                digest: None,
                body: b"read-only".to_vec(),
            },
        };
        let mut out = format!(
            "HTTP/1.1 {} X\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nDocker-Distribution-API-Version: registry/2.0\r\n",
            reply.status,
            reply.content_type,
            reply.body.len()
        );
        if let Some(digest) = &reply.digest {
            out.push_str(&format!("Docker-Content-Digest: {digest}\r\n"));
        }
        out.push_str("\r\n");
        stream.write_all(out.as_bytes())?;
        if method == "GET" {
            stream.write_all(&reply.body)?;
        }
        stream.flush()?;
        Ok(())
    }

    fn answer(&self, path: &str) -> Reply {
        if path == "/v2/" || path == "/v2" {
            return Reply {
                status: 200,
                content_type: "application/json".to_owned(),
                digest: None,
                body: b"{}".to_vec(),
            };
        }
        let Ok(client) = self.client.lock() else {
            return Reply::not_found("UNKNOWN");
        };
        if let Some((_, reference)) = path.rsplit_once("/manifests/") {
            let digest = match self.tags.get(reference) {
                Some(digest) => digest.clone(),
                None if reference.starts_with("sha256:") => reference.to_owned(),
                None => return Reply::not_found("MANIFEST_UNKNOWN"),
            };
            // Client checks the bytes against the digest.
            return match client.get_manifest(&self.repo, &digest) {
                Ok(Some((media_type, body))) => Reply {
                    status: 200,
                    content_type: media_type,
                    digest: Some(digest),
                    body,
                },
                _ => Reply::not_found("MANIFEST_UNKNOWN"),
            };
        }
        if let Some((_, digest)) = path.rsplit_once("/blobs/") {
            return match client.get_blob(&self.repo, digest) {
                Ok(body) => Reply {
                    status: 200,
                    content_type: "application/octet-stream".to_owned(),
                    digest: Some(digest.to_owned()),
                    body,
                },
                Err(_) => Reply::not_found("BLOB_UNKNOWN"),
            };
        }
        // The referrers API among them: a 404 sends cosign to the tags.
        Reply::not_found("NAME_UNKNOWN")
    }
}
