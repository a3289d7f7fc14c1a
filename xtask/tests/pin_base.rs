//! `cargo xtask pin-base` against the real registry, in a temporary clone so
//! that the workspace's own Cargo.toml is never rewritten.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::path::Path;
use std::process::Command;

use support::{run, run_ok, seed_base, tool, Registry};

/// A clone of the workspace whose configured base is `base`.
fn clone_with_base(dir: &Path, base: &str) -> std::path::PathBuf {
    let clone = dir.join("clone");
    run_ok(
        Command::new("git")
            .args(["clone", "--quiet"])
            .arg(support::workspace_root())
            .arg(&clone),
    );
    let manifest = clone.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let configured = text
        .lines()
        .find(|l| l.starts_with("base = "))
        .expect("Cargo.toml configures a base")
        .to_owned();
    std::fs::write(
        &manifest,
        text.replace(&configured, &format!("base = \"{base}\"")),
    )
    .unwrap();
    clone
}

fn configured_digest(clone: &Path) -> String {
    std::fs::read_to_string(clone.join("Cargo.toml"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("base-digest = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("Cargo.toml has a base-digest line")
        .to_owned()
}

#[test]
fn pins_the_tag_to_the_digest_the_registry_serves() {
    let registry = Registry::start();
    let (base, _) = seed_base(&registry, "base");
    let dir = tempfile::tempdir().unwrap();
    let clone = clone_with_base(dir.path(), &base);
    let expected = run_ok(Command::new(tool("crane")).args(["digest", "--insecure", &base]))
        .trim()
        .to_owned();

    let dry =
        run_ok(
            support::xtask()
                .current_dir(&clone)
                .args(["pin-base", "--insecure", "--dry-run"]),
        );
    assert!(
        dry.starts_with(&format!("would pin {base} to {expected} in ")),
        "{dry}"
    );
    assert_eq!(
        configured_digest(&clone),
        "",
        "--dry-run wrote the manifest"
    );

    let out = run_ok(
        support::xtask()
            .current_dir(&clone)
            .args(["pin-base", "--insecure"]),
    );
    assert_eq!(out.trim(), format!("{base}@{expected}"));
    assert_eq!(configured_digest(&clone), expected);
}

#[test]
fn a_missing_base_is_a_clear_error_and_changes_nothing() {
    let registry = Registry::start();
    let missing = format!("{}:nonroot", registry.repo("nothing-here"));
    let dir = tempfile::tempdir().unwrap();
    let clone = clone_with_base(dir.path(), &missing);
    let before = std::fs::read_to_string(clone.join("Cargo.toml")).unwrap();
    let output = run(support::xtask()
        .current_dir(&clone)
        .args(["pin-base", "--insecure"]));
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        format!("error: the base {missing} does not exist in its registry")
    );
    assert_eq!(
        std::fs::read_to_string(clone.join("Cargo.toml")).unwrap(),
        before
    );
}
