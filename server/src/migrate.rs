//! Forward-only schema migrations, embedded in the binary and applied in
//! order, each in its own transaction, under an advisory lock so that
//! servers starting together apply each migration once.

use serde::Serialize;
use tokio_postgres::Client;

use crate::build_info;
use crate::db::sha256_hex;

pub struct Migration {
    pub version: &'static str,
    pub sql: &'static str,
}

/// Append only: a released migration is never edited or removed, because
/// databases hold its checksum.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: "0001_items",
        sql: include_str!("../migrations/0001_items.sql"),
    },
    Migration {
        version: "0002_api_tokens",
        sql: include_str!("../migrations/0002_api_tokens.sql"),
    },
];

/// The advisory lock every migrating server takes: an arbitrary constant,
/// the same in every version.
const LOCK_KEY: i64 = 0x7365_7276_6572_6d67;

/// The exit code of a server that refuses a database it does not match.
pub const REFUSED_EXIT_CODE: u8 = 3;

#[derive(Debug)]
pub enum Error {
    Database(tokio_postgres::Error),
    /// The schema is not one this binary can run on: one line with the fix.
    Refused(String),
}

impl From<tokio_postgres::Error> for Error {
    fn from(err: tokio_postgres::Error) -> Error {
        Error::Database(err)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Database(err) => write!(f, "database error while migrating: {err}"),
            Error::Refused(line) => f.write_str(line),
        }
    }
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Status {
    pub applied: Vec<String>,
    pub pending: Vec<&'static str>,
}

pub fn latest() -> &'static str {
    MIGRATIONS.last().map_or("none", |m| m.version)
}

/// What the database holds and what this binary would apply, after the
/// same checks as `up`.
pub async fn status(client: &Client) -> Result<Status, Error> {
    let applied = applied(client).await?;
    check(&applied)?;
    Ok(Status {
        pending: pending(&applied),
        applied: applied.into_iter().map(|(v, _)| v).collect(),
    })
}

/// Applies the pending migrations; returns their versions.
pub async fn up(client: &mut Client) -> Result<Vec<&'static str>, Error> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = up_locked(client).await;
    // Closing the session releases the lock too; this is for the server,
    // whose session lives on.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let applied = result?;
    unlocked?;
    Ok(applied)
}

async fn up_locked(client: &mut Client) -> Result<Vec<&'static str>, Error> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version text PRIMARY KEY,
                checksum text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let applied = applied(client).await?;
    check(&applied)?;
    let mut done = Vec::new();
    for version in pending(&applied) {
        let Some(migration) = MIGRATIONS.iter().find(|m| m.version == version) else {
            continue;
        };
        let tx = client.transaction().await?;
        tx.batch_execute(migration.sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
            &[&migration.version, &sha256_hex(migration.sql.as_bytes())],
        )
        .await?;
        tx.commit().await?;
        done.push(migration.version);
    }
    Ok(done)
}

async fn applied(client: &Client) -> Result<Vec<(String, String)>, Error> {
    let exists: Option<String> = client
        .query_one("SELECT to_regclass('schema_migrations')::text", &[])
        .await?
        .get(0);
    if exists.is_none() {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT version, checksum FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn pending(applied: &[(String, String)]) -> Vec<&'static str> {
    MIGRATIONS
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.iter().any(|(a, _)| a == v))
        .collect()
}

/// Refuses a database that a newer binary migrated, or whose migration
/// differs from ours: running on it could corrupt data the newer schema
/// relies on.
pub fn check(applied: &[(String, String)]) -> Result<(), Error> {
    let ours = format!("server {} (schema {})", build_info::VERSION, latest());
    for (version, checksum) in applied {
        match MIGRATIONS.iter().find(|m| m.version == version) {
            None => {
                return Err(Error::Refused(format!(
                    "the database has migration {version}, which {ours} does not know; run the newer version that applied it, or restore the backup taken before the upgrade"
                )))
            }
            Some(m) if sha256_hex(m.sql.as_bytes()) != *checksum => {
                return Err(Error::Refused(format!(
                    "migration {version} in the database differs from the one in {ours}; run the version that applied it, or restore the backup taken before the upgrade"
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(version: &str, sql: &str) -> (String, String) {
        (version.to_owned(), sha256_hex(sql.as_bytes()))
    }

    #[test]
    fn versions_are_ordered_and_unique() {
        let versions: Vec<&str> = MIGRATIONS.iter().map(|m| m.version).collect();
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(versions, sorted);
        assert_eq!(latest(), "0002_api_tokens");
    }

    #[test]
    fn pending_and_checks() {
        let first = row("0001_items", MIGRATIONS[0].sql);
        assert_eq!(pending(std::slice::from_ref(&first)), ["0002_api_tokens"]);
        assert!(check(&[first]).is_ok());
        let ours = format!("server {} (schema 0002_api_tokens)", build_info::VERSION);
        let Err(Error::Refused(newer)) = check(&[row("0003_future", "")]) else {
            panic!("a newer migration was accepted");
        };
        assert_eq!(newer, format!("the database has migration 0003_future, which {ours} does not know; run the newer version that applied it, or restore the backup taken before the upgrade"));
        let Err(Error::Refused(changed)) = check(&[row("0001_items", "edited")]) else {
            panic!("a changed migration was accepted");
        };
        assert_eq!(changed, format!("migration 0001_items in the database differs from the one in {ours}; run the version that applied it, or restore the backup taken before the upgrade"));
    }
}
