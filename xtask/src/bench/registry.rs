//! A distribution registry (Debian's `docker-registry`) on a free loopback
//! port, for the pipeline's pushes; its storage is in the bench's scratch
//! directory, and it is stopped when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use camino::Utf8Path;

use crate::support::tools::Tool;

pub(super) const DOCKER_REGISTRY: Tool = Tool {
    name: "docker-registry",
    install_hint: "run `cargo xtask setup` (apt-get install docker-registry)",
};

/// docker-registry on a free loopback port, its storage in `scratch`;
/// stopped when dropped.
pub(super) struct LoopbackRegistry {
    pub(super) port: u16,
    child: Child,
}

impl LoopbackRegistry {
    pub(super) fn start(program: &std::path::Path, scratch: &Utf8Path) -> Result<LoopbackRegistry> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("cannot find a free port on 127.0.0.1")?
            .port();
        let config = scratch.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {scratch}/registry\nhttp:\n  addr: 127.0.0.1:{port}\n"
            ),
        )
        .with_context(|| format!("cannot write {config}"))?;
        let child = Command::new(program)
            .arg("serve")
            .arg(config.as_str())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start docker-registry")?;
        let mut registry = LoopbackRegistry { port, child };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || registry.child.try_wait()?.is_some() {
                bail!("docker-registry did not listen on 127.0.0.1:{port} within 15 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }
}

impl Drop for LoopbackRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
