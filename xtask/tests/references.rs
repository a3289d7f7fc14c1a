//! Bad references fail when the flags are read: before any build, and
//! without a single request. Each case runs `image` and `release` with
//! `--push` against a listener that records whether anything connected,
//! and must fail within seconds with one line of error.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::net::TcpListener;
use std::process::Output;
use std::time::{Duration, Instant};

/// A port that accepts connections and counts them; nothing answers.
struct Listener {
    listener: TcpListener,
}

impl Listener {
    fn start() -> Listener {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Listener { listener }
    }

    fn host(&self) -> String {
        self.listener.local_addr().unwrap().to_string()
    }

    fn connected(&self) -> bool {
        self.listener.accept().is_ok()
    }
}

/// `cargo xtask TASK ARGS --push --insecure`: it must fail within 20
/// seconds (a build takes minutes) with exactly one line on stderr that
/// starts `error: ` and contains each of `needles`; returns that line.
fn fails_early(task: &[&str], args: &[&str], needles: &[&str]) -> String {
    let start = Instant::now();
    let mut command = support::xtask();
    command
        .args(task)
        .args(args)
        .args(["--push", "--insecure"])
        .env_remove("GITHUB_TOKEN");
    for name in support::GITHUB_ACTIONS_ENV {
        command.env_remove(name);
    }
    let output: Output = support::run(&mut command);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{task:?} {args:?} succeeded");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{task:?} {args:?} took {:?}",
        start.elapsed()
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{task:?} {args:?}: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    lines[0].to_owned()
}

const TASKS: [&[&str]; 2] = [&["image"], &["release", "v0.1.0", "--no-tlog"]];

#[test]
fn a_bad_base_fails_before_any_build_or_request() {
    let registry = Listener::start();
    let image = format!("{}/app", registry.host());
    let cases: [(&str, &[&str]); 5] = [
        ("", &["error: --base is empty; name `scratch`, a directory holding an OCI layout, or a registry reference"]),
        ("/no/such/dir", &["error: --base \"/no/such/dir\" is not an OCI layout (no /no/such/dir/oci-layout)"]),
        ("./target", &["error: --base \"./target\" is not an OCI layout (no ./target/oci-layout)"]),
        ("oci:/no/such/dir", &["error: --base \"oci:/no/such/dir\" is not an OCI layout (no /no/such/dir/oci-layout)"]),
        ("Example.com/UPPER:tag", &["error: --base: invalid image reference \"Example.com/UPPER:tag\": the repository component \"UPPER\" must be lowercase"]),
    ];
    for task in TASKS {
        for (base, needles) in cases {
            fails_early(task, &["--base", base, "--image", &image], needles);
        }
    }
    // Nothing was asked of Docker Hub either: the tests run without a
    // network, and a lookup there would have failed differently.
    assert!(!registry.connected(), "a bad base reached the registry");
}

#[test]
fn a_bad_image_fails_before_any_build_or_request() {
    let registry = Listener::start();
    let host = registry.host();
    let digest = format!("@sha256:{}", "0".repeat(64));
    let invalid = [
        format!("{host}/-x"),
        "//x".to_owned(),
        format!("{host}/x/../y"),
        format!("{host}/App"),
    ];
    for task in TASKS {
        for image in &invalid {
            fails_early(
                task,
                &["--base", "scratch", "--image", image],
                &[&format!("invalid image reference {image:?}")],
            );
        }
        for extra in [":v1".to_owned(), digest.clone()] {
            let image = format!("{host}/app{extra}");
            let line = fails_early(task, &["--base", "scratch", "--image", &image], &[]);
            assert_eq!(
                line,
                format!("error: --image {image:?} names a tag or digest ({extra}); use nothing after the repository name, {host}/app: the tags come from the version and the push is by digest")
            );
        }
    }
    assert!(!registry.connected(), "a bad image reached the registry");
}

#[test]
fn a_release_tag_over_128_characters_is_refused_by_the_tag_policy() {
    let prerelease = "a".repeat(122);
    let version = format!("v1.0.0-{prerelease}");
    let output = support::run(support::xtask().args([
        "tags",
        "--version",
        &version,
        "--sha",
        "0123456",
        "--existing",
        "",
    ]));
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        format!("error: the tag \"{version}\" is over 128 characters, more than a registry takes; shorten the prerelease part of the version\n")
    );
    // 128 exactly is a tag.
    let version = format!("v1.0.0-{}", "a".repeat(121));
    let output = support::run(support::xtask().args([
        "tags",
        "--version",
        &version,
        "--sha",
        "0123456",
        "--existing",
        "",
        "--json",
    ]));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["tags"][0], version.as_str());
}
