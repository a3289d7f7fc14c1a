//! `cargo xtask dist` against the real toolchains, qemu and syft.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{head_sha, run, run_ok, server_version, tool, workspace_root, xtask};

#[test]
fn dist_builds_verified_static_binaries_for_both_platforms() {
    let dist = support::dist();
    let artifacts = dist.as_array().expect("dist.json is an array");
    let mut seen: Vec<(String, String, String)> = artifacts
        .iter()
        .map(|a| {
            (
                a["platform"].as_str().unwrap().to_owned(),
                a["kind"].as_str().unwrap().to_owned(),
                a["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("linux/amd64", "archive", "x86_64-unknown-linux-gnu"),
            ("linux/amd64", "binary", "x86_64-unknown-linux-gnu"),
            ("linux/arm64", "archive", "aarch64-unknown-linux-gnu"),
            ("linux/arm64", "binary", "aarch64-unknown-linux-gnu"),
        ]
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
    );
    for artifact in artifacts {
        let path = workspace_root().join(artifact["path"].as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            artifact["size"].as_u64(),
            Some(bytes.len() as u64),
            "{}",
            path.display()
        );
    }
    let version = server_version();
    assert!(workspace_root()
        .join(format!("target/dist/server-{version}-linux-arm64.tar.gz"))
        .is_file());

    // The checksums file is what `sha256sum -c` reads.
    let out = run_ok(
        Command::new("sha256sum")
            .args(["-c", "SHA256SUMS"])
            .current_dir(workspace_root().join("target/dist")),
    );
    assert_eq!(
        out.lines().filter(|l| l.ends_with(": OK")).count(),
        4,
        "{out}"
    );

    // `file` is an independent judge of static linking and architecture.
    let amd64 =
        run_ok(Command::new("file").arg(workspace_root().join("target/dist/linux-amd64/server")));
    assert!(
        amd64.contains("x86-64") && amd64.contains("static"),
        "{amd64}"
    );
    let arm64 =
        run_ok(Command::new("file").arg(workspace_root().join("target/dist/linux-arm64/server")));
    assert!(
        arm64.contains("ARM aarch64") && arm64.contains("statically linked"),
        "{arm64}"
    );
}

#[test]
fn arm64_binary_runs_under_qemu_and_reports_its_build() {
    support::dist();
    let binary = workspace_root().join("target/dist/linux-arm64/server");
    let line = run_ok(
        Command::new(tool("qemu-aarch64-static"))
            .arg(&binary)
            .arg("version"),
    );
    let sha = head_sha();
    assert!(
        line.starts_with(&format!("server {} ({} ", server_version(), &sha[..7])),
        "{line}"
    );
    assert!(
        line.trim_end().ends_with("aarch64-unknown-linux-gnu"),
        "{line}"
    );
    let json: serde_json::Value = serde_json::from_str(&run_ok(
        Command::new(tool("qemu-aarch64-static"))
            .arg(&binary)
            .args(["version", "--json"]),
    ))
    .unwrap();
    assert_eq!(json["git_sha"], sha.as_str());
    assert_eq!(json["version"], server_version().as_str());
}

#[test]
fn syft_reads_the_crates_from_the_auditable_data() {
    support::dist();
    for platform in ["linux-amd64", "linux-arm64"] {
        let binary = workspace_root()
            .join("target/dist")
            .join(platform)
            .join("server");
        let out = run_ok(
            Command::new(tool("syft"))
                .args(["scan", "-q", "-o", "json"])
                .arg(format!("file:{}", binary.display())),
        );
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        let names: Vec<&str> = report["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        for expected in ["tokio", "hyper", "server"] {
            assert!(
                names.contains(&expected),
                "{platform}: syft did not find {expected} in {names:?}"
            );
        }
    }
}

#[test]
fn a_second_run_with_nothing_changed_writes_nothing() {
    support::dist();
    let archive = workspace_root().join(format!(
        "target/dist/server-{}-linux-amd64.tar.gz",
        server_version()
    ));
    let before = std::fs::metadata(&archive).unwrap().modified().unwrap();
    let out = run(xtask().args(["dist"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("Compiling server"),
        "warm dist recompiled the server"
    );
    // Nothing that shapes the binaries changed: cargo is not even asked.
    for triple in ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"] {
        assert!(
            stderr.contains(&format!(
                "{triple}: sources, toolchain and flags unchanged since the last build; cargo skipped"
            )),
            "{stderr}"
        );
    }
    assert_eq!(
        std::fs::metadata(&archive).unwrap().modified().unwrap(),
        before,
        "warm dist rewrote the archive"
    );

    // `cargo xtask dist` and the xtask executable alternate without
    // rebuilding: what rustup's proxy and `cargo run` set for the xtask
    // under `cargo xtask` neither reaches cargo nor changes the fingerprint.
    let home = PathBuf::from(std::env::var_os("HOME").unwrap());
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| {
        let default = run_ok(Command::new("rustup").arg("default"));
        default.split_whitespace().next().unwrap().to_owned()
    });
    let under_cargo_xtask = [
        ("CARGO_HOME", home.join(".cargo").display().to_string()),
        ("RUSTUP_HOME", home.join(".rustup").display().to_string()),
        ("RUSTUP_TOOLCHAIN", toolchain),
        ("RUSTUP_TOOLCHAIN_SOURCE", "default".to_owned()),
        (
            "CARGO_MANIFEST_DIR",
            workspace_root().join("xtask").display().to_string(),
        ),
        ("RUST_RECURSION_COUNT", "1".to_owned()),
    ];
    let mut as_cargo_xtask = xtask();
    as_cargo_xtask
        .arg("dist")
        .envs(under_cargo_xtask.iter().cloned());
    let mut as_executable = xtask();
    as_executable.arg("dist");
    for (name, _) in &under_cargo_xtask {
        as_executable.env_remove(name);
    }
    for (way, mut command) in [
        ("cargo xtask", as_cargo_xtask),
        ("the executable", as_executable),
    ] {
        let out = run(&mut command);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{way}: {stderr}");
        for triple in ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"] {
            assert!(
                stderr.contains(&format!("{triple}: sources, toolchain and flags unchanged since the last build; cargo skipped")),
                "{way} built again:\n{stderr}"
            );
        }
    }
}

/// Two clones at different paths, each with an empty target/, give the
/// same bytes and the same image: no checkout path or timestamp leaks into
/// the outputs.
#[test]
fn clones_at_different_paths_give_identical_bytes() {
    let temp = tempfile::tempdir().unwrap();
    let first = temp.path().join("a/rust-release");
    let second = temp.path().join("somewhere/else/entirely");
    let mut sums = Vec::new();
    let mut images = Vec::new();
    for clone in [&first, &second] {
        std::fs::create_dir_all(clone.parent().unwrap()).unwrap();
        run_ok(
            Command::new("git")
                .arg("clone")
                .arg("-q")
                .arg(workspace_root())
                .arg(clone),
        );
        run_ok(
            Command::new(env!("CARGO_BIN_EXE_xtask"))
                .arg("dist")
                .current_dir(clone)
                .env_remove("CARGO_TARGET_DIR")
                .env_remove(xtask::support::config::BUILD_DIR_VARIABLE),
        );
        sums.push(std::fs::read_to_string(clone.join("target/dist/SHA256SUMS")).unwrap());
        let image = run_ok(
            Command::new(env!("CARGO_BIN_EXE_xtask"))
                .args(["image", "--base", "scratch", "--out", "target/oci"])
                .current_dir(clone)
                .env_remove("CARGO_TARGET_DIR")
                .env_remove(xtask::support::config::BUILD_DIR_VARIABLE),
        );
        let index = image
            .lines()
            .find(|l| l.starts_with("sha256:"))
            .unwrap_or_else(|| panic!("image printed no index digest: {image}"))
            .to_owned();
        images.push(index);
    }
    assert_eq!(sums[0], sums[1]);
    assert_eq!(sums[0].lines().count(), 4, "{}", sums[0]);
    assert_eq!(images[0], images[1]);
    assert_eq!(images[0].len(), "sha256:".len() + 64, "{}", images[0]);
}

#[test]
fn a_toolchain_without_the_targets_std_is_a_clear_error() {
    let rustup_rustc = Path::new(&std::env::var("HOME").unwrap()).join(".cargo/bin/rustc");
    let out = run(xtask()
        .args(["dist", "--platform", "linux/arm64", "--dry-run"])
        .env("XTASK_RUSTC_AARCH64_UNKNOWN_LINUX_GNU", &rustup_rustc));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("error: {} (XTASK_RUSTC_<TARGET>) has no standard library for aarch64-unknown-linux-gnu; point it at a toolchain that has one", rustup_rustc.display())),
        "{stderr}"
    );
}

#[test]
fn an_unsupported_platform_is_a_clear_error() {
    let out = run(xtask().args(["dist", "--platform", "linux/riscv64"]));
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "error: unsupported platform \"linux/riscv64\"; supported platforms are linux/amd64 and linux/arm64"
    );
}

#[test]
fn dry_run_prints_the_exact_commands_and_builds_nothing() {
    let out = run_ok(xtask().args(["dist", "--dry-run"]));
    assert!(out.contains("auditable build --release --locked --package server --bin server --target x86_64-unknown-linux-gnu"), "{out}");
    assert!(out.contains("/usr/bin/cargo auditable build --release --locked --package server --bin server --target aarch64-unknown-linux-gnu"), "{out}");
    assert!(
        out.contains(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=\"/usr/bin/aarch64-linux-gnu-gcc\""
        ),
        "{out}"
    );
    assert!(out.contains("target-feature=+crt-static"), "{out}");
}

#[test]
fn dry_run_plan_says_the_targets_build_in_parallel_when_forced() {
    let out = run_ok(
        xtask()
            .env("XTASK_PARALLEL_TARGETS", "1")
            .args(["dist", "--dry-run"]),
    );
    // Each gets its share of this machine's cores, at least one.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let jobs = (cores / 2).max(1);
    assert!(
        out.lines().any(|l| l
            == format!(
                "# targets: built in parallel, --jobs {jobs} each (XTASK_PARALLEL_TARGETS=1)"
            )),
        "{out}"
    );
    for triple in ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"] {
        assert!(
            out.contains(&format!(
                "auditable build --release --locked --package server --bin server --target {triple} --jobs {jobs}\n"
            )),
            "{out}"
        );
        // Its own target directory, or the second cargo waits for the
        // first one's lock.
        assert!(
            out.contains(&format!("/target/parallel/{triple}\"")),
            "{out}"
        );
    }
}

#[test]
fn dry_run_plan_says_the_targets_build_one_after_the_other_when_forced() {
    let out = run_ok(
        xtask()
            .env("XTASK_PARALLEL_TARGETS", "0")
            .args(["dist", "--dry-run"]),
    );
    assert!(
        out.lines()
            .any(|l| l == "# targets: built one after the other (XTASK_PARALLEL_TARGETS=0)"),
        "{out}"
    );
    assert!(!out.contains("--jobs"), "{out}");
}

#[test]
fn dry_run_rejects_an_override_other_than_0_or_1() {
    let out = run(xtask()
        .env("XTASK_PARALLEL_TARGETS", "yes")
        .args(["dist", "--dry-run"]));
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "error: XTASK_PARALLEL_TARGETS must be 0 or 1, not \"yes\""
    );
}

/// What a build script could steal if cargo were given the caller's whole
/// environment, as a release job holds it.
const SECRETS: &[(&str, &str)] = &[
    (
        "COSIGN_PRIVATE_KEY",
        "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----",
    ),
    ("COSIGN_PASSWORD", "key-password"),
    ("COSIGN_KEY", "env://COSIGN_PRIVATE_KEY"),
    ("GITHUB_TOKEN", "ghs_github"),
    ("CARGO_REGISTRY_TOKEN", "cio_token"),
    ("CARGO_REGISTRIES_MINE_TOKEN", "mine_token"),
    ("ACTIONS_ID_TOKEN_REQUEST_URL", "https://oidc.example/token"),
    ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "oidc-request-token"),
    ("REGISTRY_PASSWORD", "registry-password"),
    ("DOCKER_CONFIG", "/home/runner/.docker"),
    (
        "XTASK_TEST_UNLISTED",
        "neither a secret nor on the allow-list",
    ),
];

/// A workspace of one binary whose build script writes its whole
/// environment, one `NAME=value` a line, to `report`.
fn write_env_probe_workspace(root: &Path, report: &Path) {
    std::fs::create_dir_all(root.join("probe/src")).unwrap();
    std::fs::write(
        root.join("Cargo.toml"),
        r#"[workspace]
members = ["probe"]
resolver = "2"

[workspace.metadata.release]
image = "127.0.0.1:5000/probe"
platforms = ["linux/amd64"]
base = "scratch"
binary = "probe"
package = "probe"
"#,
    )
    .unwrap();
    std::fs::write(
        root.join("probe/Cargo.toml"),
        "[package]\nname = \"probe\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    std::fs::write(root.join("probe/src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(
        root.join("probe/build.rs"),
        format!(
            "fn main() {{\n    let env: String = std::env::vars_os()\n        .map(|(k, v)| format!(\"{{}}={{}}\\n\", k.to_string_lossy(), v.to_string_lossy()))\n        .collect();\n    std::fs::write({report:?}, env).unwrap();\n}}\n"
        ),
    )
    .unwrap();
    run_ok(
        Command::new("cargo")
            .args(["generate-lockfile", "--offline"])
            .current_dir(root),
    );
}

#[test]
fn build_scripts_see_no_secret_of_the_callers_environment() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("workspace");
    let report = temp.path().join("build-script-env.txt");
    write_env_probe_workspace(&root, &report);
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command
        .args(["dist", "--no-verify", "--platform", "linux/amd64"])
        .current_dir(&root)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove(xtask::support::config::BUILD_DIR_VARIABLE)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .envs(SECRETS.iter().copied());
    run_ok(&mut command);
    let seen = std::fs::read_to_string(&report).unwrap();
    let names: Vec<&str> = seen
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
        .collect();
    for (secret, value) in SECRETS {
        assert!(
            !names.contains(secret),
            "{secret} reached the build script:\n{seen}"
        );
        assert!(
            !seen.contains(value),
            "the value of {secret} reached the build script:\n{seen}"
        );
    }
    // The build's own variables did arrive: the script ran under dist.
    assert!(
        seen.lines().any(|l| l == "SOURCE_DATE_EPOCH=1700000000"),
        "{seen}"
    );
    assert!(names.contains(&"SERVER_BUILD_GIT_SHA"), "{seen}");
}
