//! A real PostgreSQL 15 for one test: `initdb` in a temporary directory,
//! then `postgres` on a free 127.0.0.1 port, both as `nobody` (PostgreSQL
//! refuses to run as root), stopped when dropped. Its superuser and first
//! database are named as the caller asks, as the official image's
//! `POSTGRES_USER` and `POSTGRES_DB` do.

use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = "/usr/lib/postgresql/15/bin";
const NOBODY: u32 = 65534;
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where PostgreSQL 15's programs are; fails with the fix when missing.
pub fn bin_dir() -> PathBuf {
    let dir = PathBuf::from(BIN);
    assert!(
        dir.join("postgres").is_file(),
        "{BIN}/postgres is missing; install PostgreSQL 15 with `cargo xtask setup` (apt-get install postgresql)"
    );
    dir
}

/// A command run as nobody, so that PostgreSQL accepts to start.
fn as_nobody(program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(program)
        .env_clear()
        .env("LC_ALL", "C.UTF-8");
    command
}

pub struct Postgres {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub port: u16,
    pub user: String,
}

impl Postgres {
    /// A cluster whose superuser is `user`, with a database `database`.
    pub fn start(user: &str, database: &str) -> Postgres {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        chown(dir.path(), Some(NOBODY), Some(NOBODY)).expect("cannot chown the data directory");
        let output = as_nobody(&bin_dir().join("initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("cannot run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let port = super::free_port();
        let child = as_nobody(&bin_dir().join("postgres"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .arg("-k")
            .arg(dir.path())
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start postgres");
        let mut pg = Postgres {
            port,
            dir,
            child: Some(child),
            user: user.to_owned(),
        };
        pg.wait_until_ready();
        pg.psql("postgres", &format!("CREATE DATABASE \"{database}\""));
        pg
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = Command::new(bin_dir().join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .expect("cannot run pg_isready");
            if ready.success() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("postgres exited at start with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{database}",
            self.user, self.port
        )
    }

    /// Runs SQL with psql; returns its unaligned, tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = Command::new(bin_dir().join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url(database))
            .args(["-c", sql])
            .output()
            .expect("cannot run psql");
        assert!(
            output.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
