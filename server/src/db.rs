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

use crate::config::ConfigError;
use crate::logging::{self, Level};

/// Parses `SERVER_DATABASE_URL`. The value is never echoed: it may hold a
/// password.
pub fn parse_url(url: &str) -> Result<PgConfig, ConfigError> {
    let config: PgConfig = url.parse().map_err(|err| {
        ConfigError(format!(
            "invalid SERVER_DATABASE_URL: {err}; expected postgres://USER:PASSWORD@HOST:PORT/DATABASE"
        ))
    })?;
    if config.get_ssl_mode() == SslMode::Require {
        return Err(ConfigError(
            "SERVER_DATABASE_URL asks for sslmode=require, but this build has no TLS client; connect over a private network with sslmode=disable".to_owned(),
        ));
    }
    Ok(config)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Connects once; the returned task drives the connection and ends when
/// the connection does.
async fn connect_once(
    config: &PgConfig,
) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    let task = tokio::spawn(async move {
        if let Err(err) = connection.await {
            logging::log(
                Level::Warn,
                "database connection lost",
                &[("error", json!(err.to_string()))],
            );
        }
    });
    Ok((client, task))
}

/// Connects, retrying with backoff until `wait` has passed.
pub async fn connect(
    config: &PgConfig,
    wait: Duration,
) -> Result<(Client, JoinHandle<()>), String> {
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
                        ("error", json!(err.to_string())),
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

/// The server's connection, replaced by the supervisor when it is lost.
pub struct Db {
    current: Mutex<Option<Arc<Client>>>,
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

    /// Starts the supervisor with a first connection made by `connect`.
    pub fn supervise(config: PgConfig, client: Client, task: JoinHandle<()>) -> Arc<Db> {
        let db = Arc::new(Db {
            current: Mutex::new(Some(Arc::new(client))),
        });
        let supervised = db.clone();
        tokio::spawn(async move {
            let mut task = task;
            loop {
                let _ = task.await;
                supervised.set(None);
                let mut delay = Duration::from_millis(100);
                task = loop {
                    tokio::time::sleep(delay).await;
                    match connect_once(&config).await {
                        Ok((client, task)) => {
                            supervised.set(Some(Arc::new(client)));
                            logging::log(Level::Info, "database connection restored", &[]);
                            break task;
                        }
                        Err(_) => delay = (delay * 2).min(Duration::from_secs(2)),
                    }
                };
            }
        });
        db
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
        assert!(parse_url("postgres://app:secret@db:5432/app").is_ok());
        assert_eq!(
            parse_url("postgres://app:secret@db:5432/app?sslmode=require").unwrap_err().0,
            "SERVER_DATABASE_URL asks for sslmode=require, but this build has no TLS client; connect over a private network with sslmode=disable"
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
