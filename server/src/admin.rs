//! `server migrate status|up [--json]` and `server bootstrap`: one-shot
//! commands against SERVER_DATABASE_URL, for operators and deploy scripts.

use std::io::Read;
use std::process::ExitCode;

use serde_json::json;
use tokio_postgres::Client;

use crate::config::Config;
use crate::db;
use crate::migrate;

/// Runs `task` with a connected client, mapping failures to exit codes:
/// 2 for configuration, 3 for a database this binary must not touch, 1 for
/// the rest.
fn with_client<F>(task: F) -> ExitCode
where
    F: AsyncFnOnce(&mut Client) -> Result<ExitCode, migrate::Error>,
{
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => return crate::config_error(&err.0),
    };
    let Some(pg) = config.database else {
        return crate::config_error(
            "SERVER_DATABASE_URL is not set; set it to postgres://USER:PASSWORD@HOST:PORT/DATABASE",
        );
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("server: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let (mut client, _task) = match db::connect(&pg, config.database_wait).await {
            Ok(connected) => connected,
            Err(line) => {
                eprintln!("server: {line}");
                return ExitCode::FAILURE;
            }
        };
        match task(&mut client).await {
            Ok(code) => code,
            Err(migrate::Error::Refused(line)) => {
                eprintln!("server: {line}");
                ExitCode::from(migrate::REFUSED_EXIT_CODE)
            }
            Err(err) => {
                eprintln!("server: {err}");
                ExitCode::FAILURE
            }
        }
    })
}

pub fn migrate(args: &[&str]) -> ExitCode {
    let (up, json) = match args {
        ["status"] => (false, false),
        ["status", "--json"] => (false, true),
        ["up"] => (true, false),
        ["up", "--json"] => (true, true),
        _ => return crate::usage_error(&format!("unknown migrate arguments {:?}", args.join(" "))),
    };
    with_client(async move |client: &mut Client| {
        let applied = if up {
            migrate::up(client).await?
        } else {
            Vec::new()
        };
        let status = migrate::status(client).await?;
        if json {
            let mut doc = json!({"applied": status.applied, "pending": status.pending});
            if up {
                doc["applied_now"] = json!(applied);
            }
            println!("{doc}");
        } else {
            if up && applied.is_empty() {
                println!("no pending migrations");
            } else if up {
                println!("migrations applied: {}", applied.join(", "));
            }
            for version in &status.applied {
                println!("applied  {version}");
            }
            for version in &status.pending {
                println!("pending  {version}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// A token of 32 random bytes, hex: 256 bits that no one guesses.
fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Applies the migrations, then creates the first API token unless one
/// exists. The token goes to stdout, once; only its hash is stored.
pub fn bootstrap() -> ExitCode {
    with_client(async |client: &mut Client| {
        migrate::up(client).await?;
        let tx = client.transaction().await?;
        // Two bootstraps at once must not both create a token.
        tx.execute("LOCK TABLE api_tokens IN EXCLUSIVE MODE", &[])
            .await?;
        let count: i64 = tx
            .query_one("SELECT count(*) FROM api_tokens", &[])
            .await?
            .get(0);
        if count > 0 {
            eprintln!("server: an API token exists already; bootstrap changed nothing");
            return Ok(ExitCode::SUCCESS);
        }
        let token = match new_token() {
            Ok(token) => token,
            Err(err) => {
                eprintln!("server: cannot read /dev/urandom for a token: {err}");
                return Ok(ExitCode::FAILURE);
            }
        };
        tx.execute(
            "INSERT INTO api_tokens (sha256) VALUES ($1)",
            &[&db::sha256_hex(token.as_bytes())],
        )
        .await?;
        tx.commit().await?;
        println!("{token}");
        eprintln!("server: created the first API token, printed above once; store it now, the database keeps only its hash");
        Ok(ExitCode::SUCCESS)
    })
}
