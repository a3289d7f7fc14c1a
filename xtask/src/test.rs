//! `cargo xtask test`: the one command that CI and developers run.

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::support::config::{Config, BUILD_DIR_VARIABLE};
use crate::support::progress::Steps;
use crate::support::tools;
use crate::{flags, setup};

pub fn run(flags: &flags::Test) -> Result<()> {
    if !flags.no_setup {
        setup::run(&flags::Setup {
            check: false,
            dry_run: false,
        })?;
    }
    let config = Config::load()?;
    let sh = Shell::new()?;
    sh.change_dir(&config.workspace_root);
    sh.set_var("PATH", tools::augmented_path());
    let mut steps = Steps::new(4);

    steps.run("cargo fmt --check", || {
        cmd!(sh, "cargo fmt --all -- --check")
            .run()
            .context("code is not formatted; run `cargo fmt --all`")
    })?;
    steps.run("cargo clippy", || {
        cmd!(sh, "cargo clippy --workspace --all-targets -- -D warnings")
            .run()
            .context("clippy found problems")
    })?;
    // The server's integration tests start the release binary, the one that
    // ships, not the debug build.
    let package = &config.package;
    steps.run("cargo build --release -p server", || {
        cmd!(sh, "cargo build --release --package {package}")
            .run()
            .context("release build failed")
    })?;
    let server_binary = config.target_dir.join("release").join(&config.binary);
    let extra = &flags.cargo_test_args;
    steps.run("cargo test", || {
        // Every failing test binary is reported, not only the first.
        // The tests release from fresh clones of the workspace; sharing one
        // build directory between them compiles the server's dependencies
        // once per run instead of once per clone.
        cmd!(sh, "cargo test --workspace --no-fail-fast -- {extra...}")
            .env("SERVER_TEST_BINARY", &server_binary)
            .env(BUILD_DIR_VARIABLE, config.target_dir.join("clone-builds"))
            .run()
            .context("tests failed")
    })?;
    Ok(())
}
