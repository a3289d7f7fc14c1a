//! The registry test helper itself: it starts, answers, and stops.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use support::{http_status, tool, Registry};

#[test]
fn registry_starts_answers_and_stops_on_drop() {
    let mut registry = Registry::start();
    let port = registry.port;
    assert_eq!(http_status(port, "/v2/"), Some(200));
    assert_eq!(http_status(port, "/v2/_catalog"), Some(200));
    assert!(registry.is_running());
    drop(registry);
    assert_eq!(
        http_status(port, "/v2/"),
        None,
        "registry still answers after drop"
    );
}

#[test]
fn skopeo_reaches_the_registry() {
    let registry = Registry::start();
    let output = support::run(
        std::process::Command::new(tool("skopeo"))
            .args([
                "list-tags",
                "--tls-verify=false",
                &format!("docker://{}", registry.repo("nothing")),
            ])
            .env("HOME", registry.dir.path()),
    );
    // An unknown repository: the registry itself answers 404.
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("404 (Not Found)"),
        "unexpected skopeo error: {stderr}"
    );
}
