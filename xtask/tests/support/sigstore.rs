//! A private Sigstore on loopback, as an organisation runs its own: Fulcio
//! (`--ca ephemeralca`, no CT log) trusting one OIDC issuer of type
//! `github-workflow`, which is [`GithubOidc`] playing GitHub Actions, and a
//! timestamp authority (an in-memory signer, no NTP). No transparency log:
//! the signed timestamp proves that the ten-minute certificate was valid
//! when it signed.
//!
//! The trust material is made by cosign itself: `cosign trusted-root
//! create` from both servers' certificate chains, and `cosign
//! signing-config create` naming Fulcio and the timestamp authority, with no
//! Rekor.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::github_oidc::{GithubOidc, Job};
use super::{free_port, http_get, run_ok, tool};

/// A server process, killed on drop, with its output in a log file.
struct Server {
    name: &'static str,
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Server {
    fn start(name: &'static str, command: &mut Command, log: PathBuf, port: u16) -> Server {
        let file = File::create(&log).expect("cannot create a server log");
        let child = command
            .stdout(file.try_clone().expect("cannot clone a file handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Server {
            name,
            child,
            log,
            port,
        }
    }

    /// Waits until `path` answers 200; returns the body.
    fn wait_for(&mut self, path: &str) -> String {
        self.try_wait_for(path)
            .unwrap_or_else(|log| panic!("{} did not start: {log}", self.name))
    }

    /// The body of `path` once it answers 200, or the server's log when it
    /// exits first or does not answer within 30 s.
    fn try_wait_for(&mut self, path: &str) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let log = |server: &Server| std::fs::read_to_string(&server.log).unwrap_or_default();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status}:\n{}", log(self)));
            }
            if let Some((200, body)) = http_get(self.port, path) {
                return Ok(body);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "no answer to {path} on 127.0.0.1:{} within 30s:\n{}",
            self.port,
            log(self)
        ))
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Sigstore {
    pub issuer: GithubOidc,
    fulcio: Server,
    tsa: Server,
    /// The trusted root: Fulcio's chain and the timestamp authority's.
    pub trusted_root: PathBuf,
    /// Fulcio and the timestamp authority (`EXACT:1`), no Rekor.
    pub signing_config: PathBuf,
    dir: tempfile::TempDir,
}

impl Sigstore {
    /// One instance per test binary while any test holds it: the servers
    /// start with the first test that asks and stop when the last one
    /// drops its handle.
    pub fn shared() -> Arc<Sigstore> {
        static SHARED: Mutex<Weak<Sigstore>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(running) = slot.upgrade() {
            return running;
        }
        let started = Arc::new(Sigstore::start());
        *slot = Arc::downgrade(&started);
        started
    }

    pub fn start() -> Sigstore {
        let dir = tempfile::tempdir().expect("tempdir");
        let issuer = GithubOidc::start();
        let fulcio = start_fulcio(dir.path(), &issuer.url());
        let fulcio_chain = dir.path().join("fulcio-chain.pem");
        std::fs::write(
            &fulcio_chain,
            http_get(fulcio.port, "/api/v1/rootCert")
                .expect("Fulcio answers")
                .1,
        )
        .unwrap();
        let (tsa, chain) = start_tsa(dir.path());
        let tsa_chain = dir.path().join("tsa-chain.pem");
        std::fs::write(&tsa_chain, chain).unwrap();
        let tsa_url = format!("{}/api/v1/timestamp", tsa.url());

        let cosign = tool("cosign");
        let trusted_root = dir.path().join("trusted_root.json");
        run_ok(
            Command::new(&cosign)
                .args(["trusted-root", "create"])
                .arg(format!(
                    "--fulcio=url={},certificate-chain={}",
                    fulcio.url(),
                    fulcio_chain.display()
                ))
                .arg(format!(
                    "--tsa=url={tsa_url},certificate-chain={}",
                    tsa_chain.display()
                ))
                .arg(format!("--out={}", trusted_root.display())),
        );
        let signing_config = dir.path().join("signing_config.json");
        let service = "api-version=1,start-time=2024-01-01T00:00:00Z,operator=xtask-test";
        run_ok(
            Command::new(&cosign)
                .args(["signing-config", "create"])
                .arg(format!("--fulcio=url={},{service}", fulcio.url()))
                .arg(format!("--tsa=url={tsa_url},{service}"))
                .arg("--tsa-config=EXACT:1")
                .arg(format!("--out={}", signing_config.display())),
        );
        Sigstore {
            issuer,
            fulcio,
            tsa,
            trusted_root,
            signing_config,
            dir,
        }
    }

    pub fn fulcio_url(&self) -> String {
        self.fulcio.url()
    }

    pub fn tsa_url(&self) -> String {
        self.tsa.url()
    }

    /// The `ACTIONS_ID_TOKEN_REQUEST_*` pair of a job with this context.
    pub fn job_env(&self, job: Job) -> [(String, String); 2] {
        let (url, token) = self.issuer.job(job);
        [
            ("ACTIONS_ID_TOKEN_REQUEST_URL".to_owned(), url),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN".to_owned(), token),
        ]
    }

    /// The xtask flags that sign and verify through this Sigstore.
    pub fn xtask_flags(&self) -> Vec<String> {
        vec![
            format!("--signing-config={}", self.signing_config.display()),
            format!("--trusted-root={}", self.trusted_root.display()),
            format!("--oidc-issuer={}", self.issuer.url()),
        ]
    }

    /// What Fulcio and the timestamp authority logged, for a failure.
    pub fn logs(&self) -> String {
        format!(
            "fulcio:\n{}\ntimestamp-server:\n{}",
            std::fs::read_to_string(&self.fulcio.log).unwrap_or_default(),
            std::fs::read_to_string(&self.tsa.log).unwrap_or_default()
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn start_fulcio(dir: &Path, issuer: &str) -> Server {
    let config = dir.join("fulcio-config.json");
    std::fs::write(
        &config,
        serde_json::json!({"OIDCIssuers": {issuer: {
            "IssuerURL": issuer,
            "ClientID": "sigstore",
            "Type": "github-workflow",
        }}})
        .to_string(),
    )
    .unwrap();
    let port = free_port();
    // HTTP, gRPC and metrics each on a port of their own (the duplex mode,
    // HTTP and gRPC on one port, panics in v1.8.8 registering its metrics
    // twice), and the legacy gRPC socket in this directory.
    let mut fulcio = Server::start(
        "fulcio",
        Command::new(tool("fulcio"))
            .args([
                "serve",
                "--ca=ephemeralca",
                "--ct-log-url=",
                "--host=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .args(["--grpc-host=127.0.0.1"])
            .arg(format!("--grpc-port={}", free_port()))
            .arg(format!("--metrics-port={}", free_port()))
            .arg(format!(
                "--legacy-unix-domain-socket={}",
                dir.join("fulcio-legacy.sock").display()
            ))
            .arg(format!("--config-path={}", config.display()))
            .current_dir(dir),
        dir.join("fulcio.log"),
        port,
    );
    fulcio.wait_for("/api/v1/rootCert");
    fulcio
}

/// Starts the timestamp authority; returns it with its certificate chain.
/// timestamp-server v2.1.3 serves Prometheus metrics on :2112 with no flag
/// to move it, and exits when that port is taken, by another test binary's
/// or another checkout's: one runs at a time on a machine, so a start that
/// lost the port waits and tries again.
fn start_tsa(dir: &Path) -> (Server, String) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let port = free_port();
        let mut tsa = Server::start(
            "timestamp-server",
            Command::new(tool("timestamp-server"))
                .args([
                    "serve",
                    "--timestamp-signer=memory",
                    "--disable-ntp-monitoring",
                    "--host=127.0.0.1",
                ])
                .arg(format!("--port={port}"))
                .current_dir(dir),
            dir.join("timestamp-server.log"),
            port,
        );
        match tsa.try_wait_for("/api/v1/timestamp/certchain") {
            Ok(chain) => return (tsa, chain),
            Err(log) if log.contains(":2112") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_secs(2));
            }
            Err(log) => panic!("timestamp-server did not start: {log}"),
        }
    }
}
