//! A read-only registry on loopback that shows cosign a repository before
//! any of its tags exist. Manifests and blobs are read by digest from the
//! real repository; the only tags it answers are cosign's referrers tags
//! (`sha256-<hex>`), from a map the caller gives.
//!
//! Why: on a registry without the OCI 1.1 referrers API, cosign finds the
//! signatures of a digest only through the tag `sha256-<hex>`. Verifying
//! what was pushed, before setting any tag, therefore needs those tags to
//! exist somewhere other than the real repository.
//!
//! It reads the repository with the operator's credentials, and any local
//! process can connect to it. So it is no proxy to the repository: it
//! serves only the digests of the trees its tags name (the subject, its
//! platforms, the signatures and attestations, with their configs and
//! layers), and only under a repository name that starts with a random
//! prefix chosen per run, which only the caller knows.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::oci::client::Client;

/// The largest request head read: cosign's are a few hundred bytes.
const HEAD_LIMIT: usize = 64 * 1024;

/// Manifests followed when the overlay lists what it serves: a release, its
/// platforms and what is attached to them are a few dozen.
const MAX_MANIFESTS: usize = 1000;

/// A running overlay; it stops when dropped.
pub struct Overlay {
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// The repository name to read through the overlay: `<random>/<repo>`.
    pub repository: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Overlay {
    /// Serves the trees that `tags` (tag → digest) name in `repo` of
    /// `client`'s registry, under `Overlay::repository`, with `tags` as the
    /// only tags.
    pub fn start(client: Client, repo: &str, tags: BTreeMap<String, String>) -> Result<Overlay> {
        let served = served_digests(&client, repo, &tags)?;
        let repository = format!("{}/{repo}", random_prefix()?);
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
            path: format!("/v2/{repository}/"),
            tags,
            served,
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
            repository,
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

/// 128 random bits as hex: a repository name no other process can guess.
fn random_prefix() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for the verification overlay's name")?;
    Ok(hex::encode(bytes))
}

/// Every digest of the trees `tags` name: manifests and indexes followed
/// through their `manifests`, with each manifest's config and layers. A
/// `subject` is not followed: it is the image itself, given as a tag.
fn served_digests(
    client: &Client,
    repo: &str,
    tags: &BTreeMap<String, String>,
) -> Result<BTreeSet<String>> {
    let mut served = BTreeSet::new();
    let mut pending: Vec<String> = tags.values().cloned().collect();
    let mut manifests = 0;
    while let Some(digest) = pending.pop() {
        if !served.insert(digest.clone()) {
            continue;
        }
        manifests += 1;
        if manifests > MAX_MANIFESTS {
            anyhow::bail!("cannot start the verification overlay: {repo} refers to more than {MAX_MANIFESTS} manifests from what is verified; the release is malformed");
        }
        let (_, bytes) = client.get_manifest(repo, &digest)?.with_context(|| {
            format!(
                "cannot start the verification overlay: {repo}@{digest} is missing; push it again"
            )
        })?;
        let document: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("manifest {digest} in {repo} is not JSON"))?;
        let children = document["manifests"].as_array().into_iter().flatten();
        pending.extend(children.filter_map(|c| c["digest"].as_str().map(str::to_owned)));
        let blobs = document["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(std::iter::once(&document["config"]));
        served.extend(blobs.filter_map(|b| b["digest"].as_str().map(str::to_owned)));
    }
    Ok(served)
}

struct View {
    client: Mutex<Client>,
    repo: String,
    /// `/v2/<random>/<repo>/`: requests for any other name get 404.
    path: String,
    tags: BTreeMap<String, String>,
    served: BTreeSet<String>,
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
        let Some(rest) = path.strip_prefix(&self.path) else {
            return Reply::not_found("NAME_UNKNOWN");
        };
        let Ok(client) = self.client.lock() else {
            return Reply::not_found("UNKNOWN");
        };
        if let Some(reference) = rest.strip_prefix("manifests/") {
            let digest = match self.tags.get(reference) {
                Some(digest) => digest.clone(),
                None if self.served.contains(reference) => reference.to_owned(),
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
        if let Some(digest) = rest.strip_prefix("blobs/") {
            if !self.served.contains(digest) {
                return Reply::not_found("BLOB_UNKNOWN");
            }
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
