//! A real PostgreSQL 15 for one test: `initdb` in a temporary directory,
//! then `postgres` on a free 127.0.0.1 port, both as `nobody` (PostgreSQL
//! refuses to run as root), stopped when dropped.

use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::STEP_TIMEOUT;

const BIN: &str = "/usr/lib/postgresql/15/bin";
const NOBODY: u32 = 65534;

fn tool(name: &str) -> PathBuf {
    let path = Path::new(BIN).join(name);
    assert!(
        path.is_file(),
        "{} is missing; install PostgreSQL 15 with `apt-get install postgresql` (or `cargo xtask setup`)",
        path.display()
    );
    path
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
    tls: bool,
}

impl Postgres {
    pub fn start() -> Postgres {
        Postgres::init(false)
    }

    /// With `ssl=on` and a self-signed certificate for 127.0.0.1.
    pub fn start_with_tls() -> Postgres {
        Postgres::init(true)
    }

    fn init(tls: bool) -> Postgres {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        chown(dir.path(), Some(NOBODY), Some(NOBODY)).expect("cannot chown the data directory");
        let data = dir.path().join("data");
        let output = as_nobody(&tool("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("cannot run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("cannot find a free port")
            .port();
        if tls {
            let output = as_nobody(Path::new("/usr/bin/openssl"))
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=127.0.0.1"])
                .arg("-keyout")
                .arg(data.join("server.key"))
                .arg("-out")
                .arg(data.join("server.crt"))
                .output()
                .expect("cannot run openssl");
            assert!(
                output.status.success(),
                "openssl failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let mut pg = Postgres {
            dir,
            child: None,
            port,
            tls,
        };
        pg.resume();
        pg
    }

    /// Starts (again) on the same data directory and port.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "PostgreSQL is running already");
        let child = as_nobody(&tool("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-k")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", if self.tls { "ssl=on" } else { "ssl=off" }])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let ready = Command::new(tool("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .expect("cannot run pg_isready");
            if ready.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start within {STEP_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fast shutdown: sessions are cut, as when the database goes away.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + STEP_TIMEOUT;
            while child
                .try_wait()
                .expect("cannot wait for postgres")
                .is_none()
            {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The URL psql uses: never TLS, so that its own session is not
    /// counted among the encrypted ones.
    fn psql_url(&self, database: &str) -> String {
        format!("{}?sslmode=disable", self.url(database))
    }

    /// Runs SQL with psql; returns its unaligned, tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = Command::new(tool("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.psql_url(database),
                "-c",
                sql,
            ])
            .output()
            .expect("cannot run psql");
        assert!(
            output.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("postgres is running").id()
    }

    pub fn tool(&self, name: &str) -> PathBuf {
        tool(name)
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
