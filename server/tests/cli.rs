//! `server version` and the configuration errors of `server serve`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::net::TcpListener;

fn expected_build_date() -> String {
    // build.rs takes SOURCE_DATE_EPOCH when set, else the commit time.
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) if !epoch.is_empty() => epoch,
        _ => support::git(&["log", "-1", "--format=%ct", "HEAD"]),
    };
    let output = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("cannot run date");
    support::text(&output.stdout).trim().to_owned()
}

#[test]
fn version_json_carries_the_checkout_sha_the_cargo_version_the_date_and_the_target() {
    let output = support::run(&["version", "--json"], &[]);
    assert!(output.status.success());
    assert_eq!(output.stderr, b"");
    let stdout = support::text(&output.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("version --json is JSON");

    let head = support::git(&["rev-parse", "HEAD"]);
    assert_eq!(head.len(), 40);
    assert!(head.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        json,
        serde_json::json!({
            "name": "server",
            "version": env!("CARGO_PKG_VERSION"),
            "git_sha": head,
            "build_date": expected_build_date(),
            "target": support::host_target(),
        })
    );
}

#[test]
fn version_prints_one_line() {
    let head = support::git(&["rev-parse", "HEAD"]);
    let expected = format!(
        "server {} ({} {}) {}\n",
        env!("CARGO_PKG_VERSION"),
        &head[..7],
        expected_build_date(),
        support::host_target()
    );
    for flag in ["version", "--version", "-V"] {
        let output = support::run(&[flag], &[]);
        assert!(output.status.success());
        assert_eq!(support::text(&output.stdout), expected, "{flag}");
    }
}

/// Runs `server serve` with `envs` and expects exit code 2 and `line` as the
/// only output, on stderr.
fn assert_config_error(envs: &[(&str, &str)], line: &str) {
    let output = support::run(&["serve"], envs);
    assert_eq!(
        (
            output.status.code(),
            support::text(&output.stdout).as_str(),
            support::text(&output.stderr).as_str()
        ),
        (Some(2), "", format!("{line}\n").as_str()),
        "{envs:?}"
    );
}

#[test]
fn an_unparseable_server_addr_is_exit_2_with_one_line() {
    assert_config_error(
        &[("SERVER_ADDR", "localhost:8080")],
        "server: invalid SERVER_ADDR=\"localhost:8080\": expected IP:PORT such as 0.0.0.0:8080 or [::]:8080",
    );
    assert_config_error(
        &[("SERVER_ADDR", "127.0.0.1")],
        "server: invalid SERVER_ADDR=\"127.0.0.1\": expected IP:PORT such as 0.0.0.0:8080 or [::]:8080",
    );
    assert_config_error(
        &[("SERVER_ADDR", "127.0.0.1:99999")],
        "server: invalid SERVER_ADDR=\"127.0.0.1:99999\": expected IP:PORT such as 0.0.0.0:8080 or [::]:8080",
    );
}

#[test]
fn a_port_in_use_is_exit_2_with_one_line() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    assert_config_error(
        &[("SERVER_ADDR", &addr.to_string())],
        &format!("server: cannot listen on SERVER_ADDR={addr}: Address already in use (os error 98); set SERVER_ADDR to a free address and port"),
    );
}

#[test]
fn an_unknown_log_level_or_format_is_exit_2_with_one_line() {
    assert_config_error(
        &[("SERVER_LOG", "loud")],
        "server: invalid SERVER_LOG=\"loud\": expected one of off, error, warn, info, debug, trace",
    );
    assert_config_error(
        &[("SERVER_LOG_FORMAT", "xml")],
        "server: invalid SERVER_LOG_FORMAT=\"xml\": expected one of auto, json, text",
    );
}

#[test]
fn bad_durations_are_exit_2_with_one_line() {
    assert_config_error(
        &[("SERVER_SHUTDOWN_TIMEOUT", "soon")],
        "server: invalid SERVER_SHUTDOWN_TIMEOUT=\"soon\": expected a duration such as 10s, 500ms or 2m",
    );
    assert_config_error(
        &[("SERVER_HEADER_TIMEOUT", "5 minutes")],
        "server: invalid SERVER_HEADER_TIMEOUT=\"5 minutes\": expected a duration such as 10s, 500ms or 2m",
    );
    assert_config_error(
        &[("SERVER_BODY_TIMEOUT", "-1s")],
        "server: invalid SERVER_BODY_TIMEOUT=\"-1s\": expected a duration such as 10s, 500ms or 2m",
    );
    // Zero would refuse every client that is not instantaneous.
    assert_config_error(
        &[("SERVER_HEADER_TIMEOUT", "0")],
        "server: invalid SERVER_HEADER_TIMEOUT=\"0\": expected a duration from 1ms to 24h such as 10s, 500ms or 2m",
    );
    // This one used to pass the parser and abort the server on its first
    // connection: hyper adds it to Instant::now(), which overflowed.
    assert_config_error(
        &[("SERVER_HEADER_TIMEOUT", "9999999999999999999")],
        "server: invalid SERVER_HEADER_TIMEOUT=\"9999999999999999999\": expected a duration from 1ms to 24h such as 10s, 500ms or 2m",
    );
    assert_config_error(
        &[("SERVER_SHUTDOWN_TIMEOUT", "25h")],
        "server: invalid SERVER_SHUTDOWN_TIMEOUT=\"25h\": expected a duration from 0s to 24h such as 10s, 500ms or 2m",
    );
}

#[test]
fn unknown_arguments_are_exit_2_with_one_line() {
    let output = support::run(&["serve", "--port", "80"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(output.stdout, b"");
    assert_eq!(
        support::text(&output.stderr),
        "server: unknown arguments \"serve --port 80\"; run `server --help` for usage\n"
    );
}

#[test]
fn help_lists_the_commands() {
    let output = support::run(&["--help"], &[]);
    assert!(output.status.success());
    let stdout = support::text(&output.stdout);
    assert!(stdout.starts_with("usage: server [COMMAND]\n"), "{stdout}");
    for command in ["serve", "healthcheck [--url URL]", "version [--json]"] {
        assert!(
            stdout.contains(&format!("\n  {command}")),
            "{command}: {stdout}"
        );
    }
}
