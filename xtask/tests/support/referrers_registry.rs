//! A registry with the OCI 1.1 referrers API: go-containerregistry's
//! `pkg/registry` with referrers support on, built from
//! xtask/tests/referrers-registry (go.mod and go.sum pin it) into
//! target/tools, where `cargo xtask setup` also builds it. Content is in
//! memory: it cannot be restarted with its content.

use std::process::Command;
use std::sync::OnceLock;

use super::{free_port, run, Registry};

/// Builds the registry once per test binary; `go build` is incremental, so
/// this costs a second when setup has already built it.
fn binary() -> &'static std::path::Path {
    static BINARY: OnceLock<std::path::PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let go = xtask::support::tools::find_opt("go").unwrap_or_else(|| {
            panic!("Go is not installed, and the referrers registry is built with it: install Go >= 1.26 from https://go.dev/dl/, then run `cargo xtask setup`")
        });
        let config = xtask::support::config::Config::load().expect("cannot read the workspace");
        let source = config
            .workspace_root
            .join("xtask/tests/referrers-registry");
        let out = xtask::support::tools::referrers_registry(&config.target_dir);
        let output = run(Command::new(go)
            .env("GOTOOLCHAIN", "local")
            .args(["build", "-C", source.as_str(), "-o", out.as_str(), "."]));
        assert!(
            output.status.success(),
            "cannot build the referrers registry from {source} (run `cargo xtask setup`):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        out.into_std_path_buf()
    })
}

impl Registry {
    /// go-containerregistry's registry with the referrers API, plain HTTP
    /// on a free loopback port.
    pub fn start_with_referrers() -> Registry {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        let port = free_port();
        let log = dir.path().join("registry.log");
        let log_file = std::fs::File::create(&log).expect("cannot create the registry log");
        let child = Command::new(binary())
            .arg("-addr")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(log_file.try_clone().expect("cannot clone a file handle"))
            .stderr(log_file)
            .spawn()
            .expect("cannot start the referrers registry");
        let mut registry = Registry {
            port,
            child: Some(child),
            dir,
            log,
            auth: String::new(),
            program: "referrers-registry",
            access_log: true,
        };
        registry.wait_until_ready();
        registry
    }
}
