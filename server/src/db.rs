//! The optional PostgreSQL connection: bounded retry at start, then a
//! supervisor that reconnects for as long as the server runs, so that a
//! database restart turns /readyz 503 for a while instead of ending the
//! process.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config as PgConfig, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::ConfigError;
use crate::logging::{self, Level};
use crate::migrate;

/// Where the database is, and how to talk to it.
#[derive(Clone)]
pub struct Target {
    pub pg: PgConfig,
    /// None for `sslmode=disable`.
    tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for Target {
    // Not derived: the configuration holds the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target {{ tls: {} }}", self.tls.is_some())
    }
}

/// Parses `SERVER_DATABASE_URL`. The value is never echoed: it may hold a
/// password.
pub fn parse_url(url: &str) -> Result<Target, ConfigError> {
    // tokio-postgres knows disable, prefer and require; libpq's two
    // verifying modes are read here and passed on as require.
    let verify = ["sslmode=verify-full", "sslmode=verify-ca"]
        .iter()
        .any(|mode| url.contains(mode));
    let url = url
        .replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require");
    let pg: PgConfig = url.parse().map_err(|err| {
        ConfigError(format!(
            "invalid SERVER_DATABASE_URL: {err}; expected postgres://USER:PASSWORD@HOST:PORT/DATABASE"
        ))
    })?;
    let tls = match pg.get_ssl_mode() {
        SslMode::Disable => None,
        _ => Some(crate::tls::connector(verify).map_err(|err| {
            ConfigError(format!(
                "{err}; set sslmode=disable in SERVER_DATABASE_URL to connect without TLS"
            ))
        })?),
    };
    Ok(Target { pg, tls })
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Connects once; the returned task drives the connection and ends when
/// the connection does.
async fn connect_once(target: &Target) -> Result<(Client, JoinHandle<()>), String> {
    // A database host that accepts the TCP connection but never answers
    // the startup would otherwise hold this attempt, and every later one,
    // forever.
    tokio::time::timeout(CONNECT_TIMEOUT, connect_unbounded(target))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer to the startup within {}ms",
                CONNECT_TIMEOUT.as_millis()
            ))
        })
}

async fn connect_unbounded(target: &Target) -> Result<(Client, JoinHandle<()>), String> {
    // The connection's type depends on the TLS connector: spawn it in each
    // branch.
    Ok(match &target.tls {
        None => {
            let (client, connection) = target
                .pg
                .connect(NoTls)
                .await
                .map_err(|e| with_causes(&e))?;
            (client, tokio::spawn(drive(connection)))
        }
        Some(tls) => {
            let (client, connection) = target
                .pg
                .connect(tls.clone())
                .await
                .map_err(|e| with_causes(&e))?;
            (client, tokio::spawn(drive(connection)))
        }
    })
}

async fn drive(connection: impl std::future::Future<Output = Result<(), tokio_postgres::Error>>) {
    if let Err(err) = connection.await {
        logging::log(
            Level::Warn,
            "database connection lost",
            &[("error", json!(err.to_string()))],
        );
    }
}

/// Connects, retrying with backoff until `wait` has passed.
pub async fn connect(config: &Target, wait: Duration) -> Result<(Client, JoinHandle<()>), String> {
    let deadline = Instant::now() + wait;
    let mut delay = Duration::from_millis(100);
    loop {
        match connect_once(config).await {
            Ok(connected) => return Ok(connected),
            Err(err) if Instant::now() + delay < deadline => {
                logging::log(
                    Level::Warn,
                    "database not reachable yet, retrying",
                    &[
                        ("error", json!(err)),
                        ("retry_ms", json!(delay.as_millis() as u64)),
                    ],
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(err) => {
                return Err(format!(
                    "cannot reach the database within SERVER_DATABASE_WAIT={}ms: {err}; check SERVER_DATABASE_URL and that PostgreSQL is up",
                    wait.as_millis()
                ))
            }
        }
    }
}

/// The error and its causes on one line: tokio-postgres says only "error
/// performing TLS handshake", and the reason is in its source.
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const PING_INTERVAL: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The server's connection, replaced by the supervisor when it is lost.
pub struct Db {
    current: Mutex<Option<Arc<Client>>>,
    /// Why writes are refused: the schema of the database reconnected to is
    /// not this binary's (a newer version migrated it meanwhile). Reads go
    /// on; a write could corrupt data the newer schema relies on.
    writes_refused: Mutex<Option<String>>,
}

impl Db {
    /// The live client, if the database is reachable now.
    pub fn client(&self) -> Option<Arc<Client>> {
        self.current
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .filter(|c| !c.is_closed())
    }

    /// Why writes are refused now, if they are.
    pub fn writes_refused(&self) -> Option<String> {
        self.writes_refused.lock().ok().and_then(|r| r.clone())
    }

    /// Starts the supervisor with a first connection made by `connect`,
    /// whose schema the caller checked.
    pub fn supervise(config: Target, client: Client, task: JoinHandle<()>) -> Arc<Db> {
        let db = Arc::new(Db {
            current: Mutex::new(Some(Arc::new(client))),
            writes_refused: Mutex::new(None),
        });
        let supervised = db.clone();
        tokio::spawn(async move {
            let mut task = task;
            loop {
                tokio::select! {
                    _ = &mut task => {}
                    () = supervised.until_unresponsive() => {
                        // Dropping the connection makes the next one new.
                        task.abort();
                        let _ = (&mut task).await;
                    }
                }
                supervised.set(None);
                let mut delay = Duration::from_millis(100);
                task = loop {
                    tokio::time::sleep(delay).await;
                    let Ok((client, task)) = connect_once(&config).await else {
                        delay = (delay * 2).min(Duration::from_secs(2));
                        continue;
                    };
                    // Another version may have migrated while we were away:
                    // check the schema again before serving writes on it.
                    let refused = match migrate::status(&client).await {
                        Ok(_) => None,
                        Err(migrate::Error::Refused(line)) => Some(line),
                        Err(migrate::Error::Database(_)) => {
                            task.abort();
                            delay = (delay * 2).min(Duration::from_secs(2));
                            continue;
                        }
                    };
                    match &refused {
                        None => logging::log(Level::Info, "database connection restored", &[]),
                        Some(line) => logging::log(
                            Level::Error,
                            "database connection restored to a schema this version does not match: writes stopped",
                            &[("reason", json!(line))],
                        ),
                    }
                    if let Ok(mut current) = supervised.writes_refused.lock() {
                        *current = refused;
                    }
                    supervised.set(Some(Arc::new(client)));
                    break task;
                };
            }
        });
        db
    }

    /// Pings the database every few seconds and returns once it does not
    /// answer in time: a host that vanished without closing the connection
    /// (a partition, a frozen VM) would otherwise look alive for as long as
    /// TCP keeps trying.
    async fn until_unresponsive(&self) {
        loop {
            tokio::time::sleep(PING_INTERVAL).await;
            let Some(client) = self.client() else {
                return;
            };
            match tokio::time::timeout(PING_TIMEOUT, client.simple_query("SELECT 1")).await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => {
                    logging::log(
                        Level::Warn,
                        "database ping failed",
                        &[("error", json!(with_causes(&err)))],
                    );
                    return;
                }
                Err(_) => {
                    logging::log(
                        Level::Warn,
                        "database did not answer a ping in time",
                        &[("timeout_ms", json!(PING_TIMEOUT.as_millis() as u64))],
                    );
                    return;
                }
            }
        }
    }

    fn set(&self, client: Option<Arc<Client>>) {
        if let Ok(mut current) = self.current.lock() {
            *current = client;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let tls = |url: &str| parse_url(url).unwrap().tls.is_some();
        assert!(tls("postgres://app:secret@db:5432/app"));
        assert!(!tls("postgres://app:secret@db:5432/app?sslmode=disable"));
        assert!(tls("postgres://app:secret@db:5432/app?sslmode=require"));
        assert!(tls("postgres://app:secret@db:5432/app?sslmode=verify-full"));
        assert!(tls("host=db user=app sslmode=verify-ca"));
        assert_eq!(
            format!("{:?}", parse_url("postgres://app:secret@db/app").unwrap()),
            "Target { tls: true }"
        );
        let err = parse_url("postgres://app:secret@db:5432/app?sslmode=bogus")
            .unwrap_err()
            .0;
        assert!(!err.contains("secret"), "{err}");
        assert!(err.starts_with("invalid SERVER_DATABASE_URL: "), "{err}");
    }

    #[test]
    fn sha256() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
