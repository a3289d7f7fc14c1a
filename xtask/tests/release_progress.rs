//! A release shows each sub-step of sign, attest and verify as it happens:
//! they run in-process, and cosign's output streams under the step that
//! runs it. A cosign that takes its time shows the difference between a
//! line printed when it happened and one printed only when the step ended.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{run_ok, seed_base, tool, Registry};

const PASSWORD: &str = "progress-test";
/// How long the wrapper makes each `cosign attest` take.
const ATTEST_DELAY_S: u64 = 2;

#[test]
fn a_release_shows_each_sub_step_while_a_slow_cosign_runs() {
    let registry = Registry::start();
    let (base, _) = seed_base(&registry, "base");
    let repo = registry.repo("app");
    let ws = tempfile::tempdir().unwrap();
    let clone = ws.path().join("ws");
    run_ok(
        Command::new("git")
            .args(["clone", "-q", "--no-tags"])
            .arg(support::workspace_root())
            .arg(&clone),
    );
    let keys = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(tool("cosign"))
            .arg("generate-key-pair")
            .env("COSIGN_PASSWORD", PASSWORD)
            .current_dir(keys.path()),
    );
    // A cosign that sleeps before every attestation, then is the real one.
    let wrapper = tempfile::tempdir().unwrap();
    let script = wrapper.path().join("cosign");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1\" = attest ]; then sleep {ATTEST_DELAY_S}; fi\nexec {} \"$@\"\n",
            tool("cosign").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::join_paths(
        std::iter::once(wrapper.path().to_path_buf()).chain(support::tool_path()),
    )
    .unwrap();

    let tag = format!("v{}", support::server_version());
    let key = keys.path().join("cosign.key");
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(&clone)
        .args(["release", &tag, "--push", "--insecure", "--image", &repo])
        .args(["--base", &base, "--no-tlog", "--key"])
        .arg(&key)
        .env("COSIGN_PASSWORD", PASSWORD)
        .env("XTASK_AUDIT_DB", support::advisory_db::empty())
        .env("PATH", path)
        .env_remove("GITHUB_TOKEN")
        .env_remove("GITHUB_ACTIONS")
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let lines: Vec<(Duration, String)> = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map(|l| (started.elapsed(), l.unwrap()))
        .collect();
    let status = child.wait().unwrap();
    let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    assert!(status.success(), "the release failed:\n{text}");

    let at = |prefix: &str| {
        lines
            .iter()
            .find(|(_, l)| l.starts_with(prefix))
            .map(|(t, _)| *t)
            .unwrap_or_else(|| panic!("no line starts with {prefix:?}:\n{text}"))
    };
    // The attest step's own steps are numbered under it, and the line that
    // starts attaching comes long before the step ends: it was printed
    // when it happened, not collected and printed at the end.
    let attaching = at("[6/9 › 3/3] attach 9 attestations, one at a time");
    let attested = at("[6/9] attest: done in");
    assert!(
        attested >= attaching + Duration::from_secs(ATTEST_DELAY_S * 6),
        "the sub-step appeared at {attaching:?}, the step ended at {attested:?}:\n{text}"
    );
    // Sign and verify nest the same way, in order.
    let signed = at("[5/9 › 2/2] sign the index and every platform manifest: done in");
    let verified = at("[7/9 › 3/4] verify the attestations: done in");
    assert!(signed < attaching && attested < verified, "{text}");
}
