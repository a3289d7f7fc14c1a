//! `cargo xtask adopt` on a clone of this repository: the new name lands
//! everywhere, the old one nowhere, the release plans the new image, and the
//! compose, workflow, docs and Dockerfile checks still pass in the clone.
//!
//! Those checks run as the test binaries already built next to this one,
//! pointed at the clone by `XTASK_TEST_WORKSPACE`: building them again in
//! the clone would cost a cold build of every dependency. The three
//! Dockerfile tests that need `cargo xtask dist` (a cold release build in
//! the clone) are skipped there: they read no name the rename changes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{run, run_ok, server_version, source_slug};

const IMAGE: &str = "ghcr.io/acme/widget";
const REPOSITORY: &str = "https://github.com/acme/widget";

struct Clone {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Clone {
    fn new() -> Clone {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ws");
        run_ok(
            Command::new("git")
                .args(["clone", "-q", "--no-tags"])
                .arg(support::workspace_root())
                .arg(&path),
        );
        Clone { _dir: dir, path }
    }

    fn xtask(&self, args: &[&str]) -> Output {
        run(Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(args)
            .current_dir(&self.path))
    }

    fn git(&self, args: &[&str]) -> String {
        run_ok(
            Command::new("git")
                .args([
                    "-c",
                    "user.name=Adopt Test",
                    "-c",
                    "user.email=adopt@example.invalid",
                ])
                .args(args)
                .current_dir(&self.path),
        )
    }

    fn status(&self) -> String {
        self.git(&["status", "--porcelain", "--untracked-files=all"])
    }
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The newest test binary `name` built next to this one.
fn sibling_test_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let prefix = format!("{name}-");
    std::fs::read_dir(deps)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let file = p.file_name().unwrap().to_string_lossy().into_owned();
            file.strip_prefix(&prefix).is_some_and(|hash| {
                hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit())
            })
        })
        .max_by_key(|p| p.metadata().unwrap().modified().unwrap())
        .unwrap_or_else(|| {
            panic!(
                "the `{name}` test binary is not built in {}: run `cargo test -p xtask --no-run --test {name}` first",
                deps.display()
            )
        })
}

fn passes_in(clone: &Path, test: &str, extra: &[&str]) {
    let output = run(Command::new(sibling_test_binary(test))
        .args(["--test-threads", "1"])
        .args(extra)
        .env(support::WORKSPACE_OVERRIDE, clone)
        .current_dir(clone));
    assert!(
        output.status.success(),
        "the {test} tests fail in the adopted clone:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn adopt_renames_everything_and_the_checks_still_pass() {
    let clone = Clone::new();
    let old_owner = source_slug().split_once('/').unwrap().0.to_owned();
    let adopt = ["adopt", "--image", IMAGE, "--repository", REPOSITORY];

    // A dry run lists what it would change, and changes nothing.
    let planned = stdout(&clone.xtask(&[&adopt[..], &["--dry-run"]].concat()));
    assert!(
        planned.lines().any(|l| l == "would change Cargo.toml"),
        "{planned}"
    );
    assert_eq!(clone.status(), "");

    let changed = stdout(&clone.xtask(&adopt));
    assert_eq!(
        changed.replace("changed ", "would change "),
        planned,
        "the run changes what the dry run listed"
    );
    let files: Vec<&str> = changed
        .lines()
        .map(|l| l.strip_prefix("changed ").unwrap())
        .collect();
    for expected in [
        "Cargo.toml",
        ".env.example",
        "docker-compose.yml",
        "deploy/helm/server/values.yaml",
        "deploy/policy/provenance.rego",
        "docs/verifying.md",
    ] {
        assert!(files.contains(&expected), "{expected} not in {files:?}");
    }
    let mut from_git: Vec<String> = clone.status().lines().map(|l| l[3..].to_owned()).collect();
    from_git.sort();
    let mut listed: Vec<String> = files.iter().map(|f| (*f).to_owned()).collect();
    listed.sort();
    assert_eq!(
        listed, from_git,
        "adopt prints exactly the files it changed"
    );
    clone.git(&["commit", "-qam", "adopt acme/widget"]);

    // The old owner survives only in the adopting guide's own example.
    let grep = run(Command::new("git")
        .args(["grep", "-l", &old_owner])
        .current_dir(&clone.path));
    // git grep exits 1 when it finds nothing.
    assert!(grep.status.code().is_some_and(|c| c <= 1), "{grep:?}");
    let left = String::from_utf8_lossy(&grep.stdout);
    let left: Vec<&str> = left.lines().collect();
    assert!(
        left.iter().all(|f| *f == "docs/adopting.md"),
        "{old_owner} is still in {left:?}"
    );

    // Idempotent: a second run changes nothing and says so.
    let again = stdout(&clone.xtask(&adopt));
    assert_eq!(
        again,
        format!("nothing to change: the project is already {IMAGE}, from {REPOSITORY}\n")
    );
    assert_eq!(clone.status(), "");

    // The release plans the new image, offline.
    let tag = format!("v{}", server_version());
    let plan = stdout(&run(Command::new("unshare")
        .args(["-n", "--"])
        .arg(env!("CARGO_BIN_EXE_xtask"))
        .args(["release", &tag, "--dry-run", "--base", "scratch"])
        .current_dir(&clone.path)
        .env_remove("GITHUB_TOKEN")
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")));
    let head = clone.git(&["rev-parse", "HEAD"]);
    assert_eq!(
        plan.lines().next().unwrap(),
        format!(
            "release {tag} of {IMAGE} from {} (dry run: nothing is built, pushed or tagged)",
            head.trim()
        )
    );

    passes_in(&clone.path, "compose", &[]);
    passes_in(&clone.path, "workflows", &[]);
    passes_in(&clone.path, "docs", &[]);
    passes_in(&clone.path, "standalone", &[]);
    passes_in(
        &clone.path,
        "dockerfile",
        &[
            "--skip",
            "buildah_builds_both_platforms_from_dist_like_the_native_builder",
            "--skip",
            "the_dockerignore_keeps_everything_but_the_binaries_out_of_the_context",
            "--skip",
            "buildx_output_is_pushed_by_digest_and_tagged_last",
        ],
    );
}

#[test]
fn adopt_refuses_a_name_that_is_not_a_lowercase_repository() {
    let clone = Clone::new();
    for (image, why) in [
        (
            "ghcr.io/Acme/widget",
            "the repository component \"Acme\" must be lowercase",
        ),
        ("acme/widget", "is not a repository with its registry host"),
        (
            "ghcr.io/acme/widget:v1",
            "is not a repository with its registry host and no tag or digest",
        ),
    ] {
        let output = clone.xtask(&["adopt", "--image", image, "--repository", REPOSITORY]);
        assert_eq!(output.status.code(), Some(1), "{image}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("error: --image {image:?} ")) && stderr.contains(why),
            "{stderr}"
        );
    }
    let output = clone.xtask(&[
        "adopt",
        "--image",
        IMAGE,
        "--repository",
        "github.com/acme/widget",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: --repository \"github.com/acme/widget\" is not an https URL; give --repository as https://HOST/OWNER/NAME, such as https://github.com/acme/widget\n"
    );
    assert_eq!(clone.status(), "", "a refused name changes nothing");
}

#[test]
fn adopt_sets_the_binary_name() {
    let clone = Clone::new();
    let changed = stdout(&clone.xtask(&[
        "adopt",
        "--image",
        IMAGE,
        "--repository",
        REPOSITORY,
        "--binary",
        "widget",
    ]));
    assert!(
        changed.lines().any(|l| l == "changed Cargo.toml"),
        "{changed}"
    );
    let manifest = std::fs::read_to_string(clone.path.join("Cargo.toml")).unwrap();
    assert!(
        manifest.lines().any(|l| l == "binary = \"widget\""),
        "{manifest}"
    );
    assert!(manifest
        .lines()
        .any(|l| l == format!("image = \"{IMAGE}\"")));
}

/// `cosign generate-key-pair` run in the checkout by mistake must neither
/// dirty the tree the release preflight wants clean nor let a key be added.
#[test]
fn a_key_pair_made_in_the_checkout_is_ignored() {
    let clone = Clone::new();
    for name in ["cosign.key", "cosign.pub"] {
        std::fs::write(clone.path.join(name), "not a real key\n").unwrap();
    }
    assert_eq!(clone.status(), "");
    let ignored = clone.git(&["check-ignore", "cosign.key", "cosign.pub"]);
    assert_eq!(ignored, "cosign.key\ncosign.pub\n");
}
