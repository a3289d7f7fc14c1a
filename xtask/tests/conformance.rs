//! `cargo xtask conformance`: the sample server keeps the binary contract
//! (docs/binary-contract.md), so it cannot drift; and binaries that break
//! one clause each, built here with rustc, fail naming that clause.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use serde_json::Value;
use support::{head_sha, run, run_ok, server_version, tool, workspace_root};

/// Every clause, in the order the report lists them.
const CLAUSES: &[&str] = &[
    "static-elf",
    "version",
    "version-json",
    "unknown-subcommand",
    "listen-address",
    "healthcheck-live-port",
    "sigterm-drain",
    "healthcheck-dead-port",
    "default-port",
];

/// The default-port clause binds port 8080: one conformance run at a time.
static PORT_8080: Mutex<()> = Mutex::new(());

fn conformance(args: &[&str]) -> Output {
    let _one_at_a_time = PORT_8080.lock().unwrap_or_else(|e| e.into_inner());
    run(support::xtask().arg("conformance").args(args))
}

fn report(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "conformance --json printed no JSON ({e})\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn names(report: &Value, passed: bool) -> Vec<String> {
    report["clauses"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == passed)
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

fn detail<'a>(report: &'a Value, name: &str) -> &'a str {
    report["clauses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["detail"].as_str())
        .unwrap_or_else(|| panic!("no clause {name} in {report}"))
}

#[test]
fn the_sample_server_keeps_the_contract() {
    let output = conformance(&["--json"]);
    let report = report(&output);
    assert!(
        output.status.success(),
        "{report:#}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(names(&report, true), CLAUSES, "{report:#}");
    assert_eq!(
        report["binary"],
        workspace_root()
            .join("target/dist/linux-amd64/server")
            .display()
            .to_string()
    );
    assert_eq!(report["emulator"], Value::Null);
    assert_eq!(
        detail(&report, "version-json"),
        format!("version {}, git_sha {}", server_version(), head_sha())
    );
    assert_eq!(
        detail(&report, "default-port"),
        "listens on 8080, and `healthcheck` exits 0 without SERVER_ADDR"
    );
}

#[test]
fn the_arm64_server_keeps_the_contract_under_qemu() {
    let dist = support::dist();
    let binary = dist
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["platform"] == "linux/arm64" && a["kind"] == "binary")
        .map(|a| workspace_root().join(a["path"].as_str().unwrap()))
        .expect("dist built linux/arm64");
    let sha = head_sha();
    let output = conformance(&[
        "--json",
        "--binary",
        binary.to_str().unwrap(),
        "--expect-version",
        &server_version(),
        "--expect-sha",
        &sha,
    ]);
    let report = report(&output);
    assert!(output.status.success(), "{report:#}");
    assert_eq!(names(&report, true), CLAUSES, "{report:#}");
    assert_eq!(
        report["emulator"],
        tool("qemu-aarch64-static").display().to_string()
    );
    assert_eq!(
        detail(&report, "static-elf"),
        "ELF aarch64, statically linked"
    );
}

/// A program that runs the sample server for everything but what
/// `override_` answers, built with rustc: one clause broken, the rest kept.
fn wrapper(dir: &Path, name: &str, override_: &str, static_: bool) -> PathBuf {
    let server = workspace_root().join("target/dist/linux-amd64/server");
    let source = dir.join(format!("{name}.rs"));
    std::fs::write(
        &source,
        format!(
            r#"use std::os::unix::process::CommandExt;
fn main() {{
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    {override_}
    let error = std::process::Command::new({server:?}).args(&args).exec();
    eprintln!("cannot run the server: {{error}}");
    std::process::exit(127);
}}
"#
        ),
    )
    .unwrap();
    let binary = dir.join(name);
    let mut rustc = Command::new(tool("rustc"));
    rustc.args(["--edition", "2021", "-o"]).arg(&binary);
    if static_ {
        rustc.args(["-C", "target-feature=+crt-static"]);
    }
    run_ok(rustc.arg(&source));
    binary
}

/// The last line of stderr of a failed run.
fn error_line(output: &Output) -> String {
    assert!(!output.status.success(), "it passed");
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

fn broken(binary: &Path) -> (Value, String) {
    let output = conformance(&["--json", "--binary", binary.to_str().unwrap()]);
    (report(&output), error_line(&output))
}

#[test]
fn a_broken_binary_fails_naming_the_clause() {
    // The wrappers run the sample server.
    let _ = conformance(&["--json"]);
    let dir = tempfile::tempdir().unwrap();

    let no_healthcheck = wrapper(
        dir.path(),
        "no-healthcheck",
        r#"if args.first() == Some(&"healthcheck") { eprintln!("unknown command"); std::process::exit(2); }"#,
        true,
    );
    let (report, line) = broken(&no_healthcheck);
    assert_eq!(
        names(&report, false),
        ["healthcheck-live-port", "default-port"],
        "{report:#}"
    );
    assert_eq!(
        line,
        format!(
            "error: {} breaks the binary contract: healthcheck-live-port, default-port; docs/binary-contract.md says what each clause needs",
            no_healthcheck.display()
        )
    );
    assert!(
        detail(&report, "healthcheck-live-port")
            .starts_with("`healthcheck` exits 2 with a healthy server on SERVER_ADDR=127.0.0.1:"),
        "{report:#}"
    );

    let no_git_sha = wrapper(
        dir.path(),
        "no-git-sha",
        r#"if args == ["version", "--json"] { println!("{{\"name\":\"server\",\"version\":\"0.1.0\"}}"); return; }"#,
        true,
    );
    let (report, line) = broken(&no_git_sha);
    assert_eq!(names(&report, false), ["version-json"], "{report:#}");
    assert_eq!(
        detail(&report, "version-json"),
        r#"`version --json` has no string field "git_sha": {"name":"server","version":"0.1.0"}"#
    );
    assert!(
        line.ends_with(" breaks the binary contract: version-json; docs/binary-contract.md says what each clause needs"),
        "{line}"
    );

    let dynamic = wrapper(dir.path(), "dynamic", "", false);
    let (report, line) = broken(&dynamic);
    assert_eq!(names(&report, false), ["static-elf"], "{report:#}");
    assert_eq!(
        detail(&report, "static-elf"),
        "ELF x86_64 linked dynamically (it has a PT_INTERP program header); build with -C target-feature=+crt-static"
    );
    assert!(
        line.ends_with(" breaks the binary contract: static-elf; docs/binary-contract.md says what each clause needs"),
        "{line}"
    );

    // Not an executable at all: every clause fails, and the report still comes.
    let script = dir.path().join("not-a-binary");
    std::fs::write(&script, "not a program\n").unwrap();
    let (report, _) = broken(&script);
    assert_eq!(names(&report, false), CLAUSES, "{report:#}");
}

#[test]
fn a_missing_binary_is_a_clear_error() {
    let output = conformance(&["--binary", "/nonexistent/server"]);
    assert_eq!(
        error_line(&output),
        "error: cannot read /nonexistent/server; pass the path of a built binary: No such file or directory (os error 2)"
    );
}
