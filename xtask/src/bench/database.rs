//! The figures with a database: a PostgreSQL 15 of the bench's own, in a
//! temporary directory on a free loopback port, run as an unprivileged user
//! (PostgreSQL refuses root), stopped and deleted when the figures are in.
//!
//! - idle RSS: VmRSS 500 ms after /readyz first answers 200, which it does
//!   only once the database is connected;
//! - boot and migrate: from spawn to the first 200 on /readyz, each run
//!   against an empty database of its own, so that every run applies all
//!   the migrations;
//! - load: wrk on GET /v1/items/{key} of an item in the database.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use camino::Utf8PathBuf;
use serde::Serialize;
use xshell::{cmd, Shell};

use super::measure::{free_port, measure_load, rss_kib, spawn_server, wait_for_200, RunningServer};
use super::report::summary;
use super::{Load, Settings};

const BIN: &str = "/usr/lib/postgresql/15/bin";
/// nobody: PostgreSQL will not run as root.
const UNPRIVILEGED: u32 = 65534;
const ITEM_PATH: &str = "/v1/items/bench";

#[derive(Debug, Serialize)]
pub struct WithDatabase {
    pub idle_rss_kib: u64,
    pub boot_and_migrate: BootAndMigrate,
    pub item_load: Load,
}

#[derive(Debug, Serialize)]
pub struct BootAndMigrate {
    pub runs: usize,
    /// The migrations each run applied.
    pub migrations: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

pub(super) fn measure(
    sh: &Shell,
    wrk: &Path,
    server: &Utf8PathBuf,
    shown: &str,
    settings: &Settings,
    commands: &mut Vec<String>,
) -> Result<WithDatabase> {
    let pg = Postgres::start()?;
    commands.push(format!(
        "{BIN}/initdb -D DIR/data -U bench --auth=trust; {BIN}/pg_ctl -D DIR/data -o '-p {} -c listen_addresses=127.0.0.1' -w start (as uid {UNPRIVILEGED})",
        pg.port
    ));

    let mut times = Vec::with_capacity(settings.start_runs);
    let mut migrations = 0;
    for run in 0..settings.start_runs {
        let database = format!("boot{run}");
        pg.psql("postgres", &format!("CREATE DATABASE {database}"))?;
        let url = pg.url(&database);
        let port = free_port()?;
        let started = Instant::now();
        let child = spawn_server(server, port, &[("SERVER_DATABASE_URL", &url)])?;
        let result = wait_for_200(&child, port, "/readyz", started);
        let _ = child.kill();
        times.push(result?.as_secs_f64() * 1000.0);
        migrations = pg
            .psql(&database, "SELECT count(*) FROM schema_migrations")?
            .parse()
            .context("schema_migrations has no count")?;
    }
    commands.push(format!(
        "SERVER_DATABASE_URL={} {shown} serve, timed from spawn to the first 200 on GET /readyz, each of {} runs on an empty database",
        pg.url("bootN"),
        settings.start_runs
    ));
    let (median_ms, min_ms, max_ms) = summary(&mut times);

    let url = pg.url("postgres");
    let mut running = RunningServer::start(server, &[("SERVER_DATABASE_URL", &url)], "/readyz")?;
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss_kib = rss_kib(running.pid())?;
    commands.push(format!(
        "grep VmRSS /proc/{}/status, 500 ms after the first 200 on /readyz, with SERVER_DATABASE_URL={url}",
        running.pid()
    ));
    pg.psql(
        "postgres",
        r#"INSERT INTO items (key, value) VALUES ('bench', '{"hello": "world"}')"#,
    )?;
    let item_load = measure_load(sh, wrk, &running, ITEM_PATH, settings, commands)?;
    running.stop()?;
    pg.stop()?;
    Ok(WithDatabase {
        idle_rss_kib,
        boot_and_migrate: BootAndMigrate {
            runs: settings.start_runs,
            migrations,
            median_ms,
            min_ms,
            max_ms,
        },
        item_load,
    })
}

struct Postgres {
    /// Removed on drop.
    dir: PathBuf,
    port: u16,
    running: bool,
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// A PostgreSQL program, run as nobody when the bench runs as root.
fn postgres_program<'a>(sh: &'a Shell, name: &str) -> Result<xshell::Cmd<'a>> {
    let program = Path::new(BIN).join(name);
    if !program.is_file() {
        bail!(
            "{} not found: run `cargo xtask setup` (apt-get install postgresql)",
            program.display()
        );
    }
    let id = UNPRIVILEGED.to_string();
    Ok(if is_root() {
        cmd!(
            sh,
            "setpriv --reuid={id} --regid={id} --clear-groups -- {program}"
        )
    } else {
        cmd!(sh, "{program}")
    })
}

impl Postgres {
    fn start() -> Result<Postgres> {
        let dir = std::env::temp_dir().join(format!("xtask-bench-pg-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut pg = Postgres {
            dir,
            port: free_port()?,
            running: false,
        };
        if is_root() {
            std::os::unix::fs::chown(&pg.dir, Some(UNPRIVILEGED), Some(UNPRIVILEGED))
                .with_context(|| {
                    format!("cannot give {} to uid {UNPRIVILEGED}", pg.dir.display())
                })?;
        }
        let sh = Shell::new()?;
        let data = pg.dir.join("data");
        let log = pg.dir.join("postgres.log");
        postgres_program(&sh, "initdb")?
            .args(["-D"])
            .arg(&data)
            .args(["-U", "bench", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .env("LC_ALL", "C.UTF-8")
            .quiet()
            .ignore_stdout()
            .run()
            .context("initdb failed for the bench's database")?;
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            pg.port,
            pg.dir.display()
        );
        postgres_program(&sh, "pg_ctl")?
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(&log)
            .args(["-w", "start"])
            .env("LC_ALL", "C.UTF-8")
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| {
                format!(
                    "PostgreSQL did not start for the bench; see {}",
                    log.display()
                )
            })?;
        pg.running = true;
        Ok(pg)
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://bench@127.0.0.1:{}/{database}", self.port)
    }

    fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let sh = Shell::new()?;
        let psql = Path::new(BIN).join("psql");
        let url = self.url(database);
        let output = cmd!(sh, "{psql} -X -A -t -v ON_ERROR_STOP=1 -d {url} -c {sql}")
            .quiet()
            .read()
            .with_context(|| format!("psql {sql:?} failed on the bench's database"))?;
        Ok(output.trim().to_owned())
    }

    fn stop(mut self) -> Result<()> {
        self.pg_ctl_stop()
    }

    fn pg_ctl_stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        let sh = Shell::new()?;
        postgres_program(&sh, "pg_ctl")?
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .quiet()
            .ignore_stdout()
            .run()
            .context("pg_ctl stop failed for the bench's database")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl_stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
