//! `cargo xtask release` end to end, in a clone of the committed workspace
//! (the preflight wants a clean tree), against the real registry and cosign.
//! One test on purpose: the clone's cold dist build is paid once, and the
//! scenarios run in the order a maintainer would meet them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use support::token_service::{Grant, TokenService};
use support::{run, run_ok, seed_base, skopeo_tags, tag_digests, tool, Registry};

const PASSWORD: &str = "release-test";

struct Clone {
    _dir: tempfile::TempDir,
    path: PathBuf,
    head: String,
}

fn clone_workspace() -> Clone {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ws");
    run_ok(
        Command::new("git")
            .args(["clone", "-q", "--no-tags"])
            .arg(support::workspace_root())
            .arg(&path),
    );
    let head = run_ok(
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(&path),
    )
    .trim()
    .to_owned();
    Clone {
        _dir: dir,
        path,
        head,
    }
}

impl Clone {
    fn release(&self, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
        command
            .current_dir(&self.path)
            .arg("release")
            .args(args)
            .env("COSIGN_PASSWORD", PASSWORD)
            .env("XTASK_AUDIT_DB", support::advisory_db::empty())
            .env_remove("GITHUB_TOKEN")
            .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL");
        run(&mut command)
    }

    /// `release` with COSIGN_PASSWORD and GITHUB_TOKEN as given (None:
    /// unset).
    fn release_env(&self, args: &[&str], password: Option<&str>, token: Option<&str>) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
        command
            .current_dir(&self.path)
            .arg("release")
            .args(args)
            .env_remove("COSIGN_PASSWORD")
            .env("XTASK_AUDIT_DB", support::advisory_db::empty())
            .env_remove("GITHUB_TOKEN")
            .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL");
        if let Some(password) = password {
            command.env("COSIGN_PASSWORD", password);
        }
        if let Some(token) = token {
            command.env("GITHUB_TOKEN", token);
        }
        run(&mut command)
    }

    /// Every file under target/ with its size and modification time: what
    /// a run that must change nothing on disk is compared with.
    fn target_files(&self) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64, std::time::SystemTime)>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries {
                let entry = entry.unwrap();
                let meta = entry.metadata().unwrap();
                if meta.is_dir() {
                    walk(&entry.path(), out);
                } else {
                    out.push((entry.path(), meta.len(), meta.modified().unwrap()));
                }
            }
        }
        let mut files = Vec::new();
        for dir in ["target/release", "target/dist", "target/cosign"] {
            walk(&self.path.join(dir), &mut files);
        }
        files.sort();
        files
    }

    fn xtask(&self, args: &[&str]) -> Output {
        run(Command::new(env!("CARGO_BIN_EXE_xtask"))
            .current_dir(&self.path)
            .args(args)
            .env("COSIGN_PASSWORD", PASSWORD))
    }

    /// Sets the server's version (Cargo.toml and Cargo.lock) and commits
    /// it; returns the new HEAD.
    fn bump_and_commit(&self, from: &str, to: &str) -> String {
        for (file, before, after) in [
            (
                "server/Cargo.toml",
                format!("name = \"server\"\nversion = \"{from}\""),
                format!("name = \"server\"\nversion = \"{to}\""),
            ),
            (
                "Cargo.lock",
                format!("name = \"server\"\nversion = \"{from}\""),
                format!("name = \"server\"\nversion = \"{to}\""),
            ),
        ] {
            let path = self.path.join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains(&before), "{file} has no {before:?}");
            std::fs::write(&path, text.replacen(&before, &after, 1)).unwrap();
        }
        let git = |args: &[&str]| run_ok(Command::new("git").args(args).current_dir(&self.path));
        git(&[
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.invalid",
            "commit",
            "-qam",
            &format!("Release {to}"),
        ]);
        git(&["rev-parse", "HEAD"]).trim().to_owned()
    }

    fn assets(&self, tag: &str) -> PathBuf {
        self.path.join("target/release").join(tag).join("assets")
    }
}

fn ok_json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "release failed with {}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn cosign(args: &[&str], dir: &Path) -> Output {
    run(Command::new(tool("cosign"))
        .args(args)
        .current_dir(dir)
        .env("COSIGN_PASSWORD", PASSWORD))
}

const SIGNATURE: &str = "https://sigstore.dev/cosign/sign/v1";
const CYCLONEDX: &str = "https://cyclonedx.org/bom";
const SLSA: &str = "https://slsa.dev/provenance/v1";
const SPDX: &str = "https://spdx.dev/Document";
const VULN: &str = "https://cosign.sigstore.dev/attestation/vuln/v1";

/// The predicate types attached to `digest`, sorted, read with skopeo from
/// cosign's `sha256-<hex>` tag (the test registry has no referrers API).
fn predicate_types(repo: &str, digest: &str) -> Vec<String> {
    let index = support::skopeo_raw(&format!("{repo}:{}", digest.replace(':', "-")));
    let mut types: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let manifest =
                support::skopeo_raw(&format!("{repo}@{}", entry["digest"].as_str().unwrap()));
            assert_eq!(manifest["subject"]["digest"], digest);
            manifest["annotations"]["dev.sigstore.bundle.predicateType"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    types.sort();
    types
}

/// Exactly one signature and one of each attestation on the index and on
/// each platform of a release; the scan result is per platform.
fn assert_signed_and_attested_once(repo: &str, summary: &Value) {
    assert_eq!(
        predicate_types(repo, summary["digest"].as_str().unwrap()),
        [SIGNATURE, SLSA]
    );
    for (platform, digest) in summary["platforms"].as_object().unwrap() {
        assert_eq!(
            predicate_types(repo, digest.as_str().unwrap()),
            [VULN, CYCLONEDX, SIGNATURE, SLSA, SPDX],
            "{platform}"
        );
    }
}

fn tag_list(summary: &Value) -> Vec<(String, Option<String>)> {
    summary["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["tag"].as_str().unwrap().to_owned(),
                t["before"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The predicates cosign verified for one type on one digest.
fn attested_predicates(kind: &str, target: &str, public: &Path) -> Vec<Value> {
    use base64::Engine;
    let output = run(Command::new(tool("cosign")).args([
        "verify-attestation",
        "--key",
        public.to_str().unwrap(),
        "--insecure-ignore-tlog=true",
        "--allow-insecure-registry",
        "--allow-http-registry",
        "--type",
        kind,
        target,
    ]));
    assert!(
        output.status.success(),
        "verify-attestation {kind} {target}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let envelope: Value = serde_json::from_str(line).unwrap();
            let payload = base64::engine::general_purpose::STANDARD
                .decode(envelope["payload"].as_str().unwrap())
                .unwrap();
            let statement: Value = serde_json::from_slice(&payload).unwrap();
            statement["predicate"].clone()
        })
        .collect()
}

/// The commands in the notes' `sh` blocks, but for `docker pull`: pulling
/// needs a Docker daemon, and verifies nothing.
fn commands_in_notes(notes: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_block = false;
    for line in notes.lines() {
        match line {
            "```sh" => in_block = true,
            "```" => in_block = false,
            _ if in_block && !line.is_empty() && !line.starts_with("docker ") => {
                commands.push(line.to_owned())
            }
            _ => {}
        }
    }
    commands
}

/// `cargo` on PATH for printed commands: `cargo xtask` is this test's
/// xtask binary (the clone has not built its own, and building it would
/// cost minutes), anything else the real cargo.
struct CargoShim {
    dir: tempfile::TempDir,
}

impl CargoShim {
    fn new() -> CargoShim {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cargo = option_env!("CARGO").unwrap_or("/root/.cargo/bin/cargo");
        let script = dir.path().join("cargo");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nif [ \"$1\" = xtask ]; then shift; exec '{}' \"$@\"; fi\nexec '{cargo}' \"$@\"\n",
                env!("CARGO_BIN_EXE_xtask")
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        CargoShim { dir }
    }

    /// `bash -c COMMAND` in `dir`, the command exactly as printed.
    fn run(&self, command: &str, dir: &Path) -> Output {
        let cosign_dir = tool("cosign").parent().unwrap().to_path_buf();
        let path = std::env::join_paths(
            [self.dir.path().to_path_buf(), cosign_dir]
                .into_iter()
                .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
        )
        .unwrap();
        run(Command::new("bash")
            .args(["-c", command])
            .current_dir(dir)
            .env("PATH", path))
    }
}

#[test]
fn releases_v0_1_0_then_v0_2_0_then_maintenance_v0_1_1_with_faults_on_the_way() {
    let registry = Arc::new(Mutex::new(Registry::start()));
    let (base, _) = seed_base(&registry.lock().unwrap(), "base");
    let host = registry.lock().unwrap().host();
    let ws = clone_workspace();
    let keys = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(tool("cosign"))
            .arg("generate-key-pair")
            .env("COSIGN_PASSWORD", PASSWORD)
            .current_dir(keys.path()),
    );
    let key = keys.path().join("cosign.key");
    let key = key.to_str().unwrap();
    let version = support::server_version();
    let tag = format!("v{version}");
    let repo = format!("{host}/app");
    let sha_tag = format!("sha-{}", &ws.head[..7]);
    let common = ["--push", "--insecure", "--image", &repo, "--base", &base];

    // An older, valid image holds `latest`, as after an earlier release.
    run_ok(Command::new(tool("crane")).args([
        "copy",
        "--insecure",
        &base,
        &format!("{repo}:latest"),
    ]));
    let old_latest = tag_digests(&repo)["latest"].clone();

    // 0a. The registry dies as the first manifest arrives: a clear error,
    //     and no tag moved.
    let proxy = support::KillingProxy::start(registry.clone(), "PUT /v2/app/manifests/sha256:");
    let proxied = format!("127.0.0.1:{}", proxy.port);
    let crashed = ws.release(&[
        &tag,
        "--push",
        "--insecure",
        "--image",
        &format!("{proxied}/app"),
        "--base",
        &base.replace(&host, &proxied),
        "--key",
        key,
        "--no-tlog",
    ]);
    let stderr = String::from_utf8_lossy(&crashed.stderr);
    assert_eq!(crashed.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("[4/9] image, pushed by digest, untagged: failed after")
            && stderr
                .lines()
                .last()
                .unwrap_or_default()
                .starts_with("error: cannot push manifest sha256:"),
        "{stderr}"
    );
    drop(proxy);
    registry.lock().unwrap().restart();
    assert_eq!(skopeo_tags(&repo), ["latest"]);
    assert_eq!(tag_digests(&repo)["latest"], old_latest);

    // 0b. cosign is missing (HOME without ~/go/bin, PATH without it): the
    //     preflight says how to install it, before anything is built or
    //     pushed.
    let files_before = ws.target_files();
    let bare_home = tempfile::tempdir().unwrap();
    let real_home = std::env::var("HOME").unwrap();
    let path: Vec<String> = std::env::var("PATH")
        .unwrap()
        .split(':')
        .filter(|d| !d.ends_with("/go/bin"))
        .map(str::to_owned)
        .collect();
    let mut args = common.to_vec();
    args.extend([&tag as &str, "--key", key, "--no-tlog"]);
    let no_cosign = run(Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(&ws.path)
        .arg("release")
        .args(&args)
        .env("COSIGN_PASSWORD", PASSWORD)
        .env("HOME", bare_home.path())
        .env("CARGO_HOME", format!("{real_home}/.cargo"))
        .env("RUSTUP_HOME", format!("{real_home}/.rustup"))
        .env("PATH", path.join(":"))
        .env_remove("GOBIN"));
    let stderr = String::from_utf8_lossy(&no_cosign.stderr);
    assert_eq!(no_cosign.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("\n  - cosign not found: run `cargo xtask setup` (go install github.com/sigstore/cosign/v3/cmd/cosign@v3.1.3)\n"),
        "{stderr}"
    );
    assert!(stderr.contains("[1/9] preflight: failed after"), "{stderr}");
    assert!(!stderr.contains("[2/9]"), "{stderr}");
    assert_eq!(skopeo_tags(&repo), ["latest"]);
    assert_eq!(tag_digests(&repo)["latest"], old_latest);
    assert_eq!(ws.target_files(), files_before);

    // 1. The key is not there: the preflight says so before building (it
    //    used to be found at the sign step, after the push).
    let missing_key = keys.path().join("missing.key");
    let mut args = common.to_vec();
    args.extend([
        &tag as &str,
        "--key",
        missing_key.to_str().unwrap(),
        "--no-tlog",
    ]);
    let failed = ws.release(&args);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "\n  - the key {} does not exist; pass the path of a cosign key",
            missing_key.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("[1/9] preflight: failed after"), "{stderr}");
    assert_eq!(skopeo_tags(&repo), ["latest"]);
    assert_eq!(tag_digests(&repo)["latest"], old_latest);
    assert_eq!(ws.target_files(), files_before);

    // 1a. A wrong COSIGN_PASSWORD, an unset one, and GITHUB_TOKEN without
    //     gh: each one line of the preflight, found before building.
    let mut args = common.to_vec();
    args.extend([&tag as &str, "--key", key, "--no-tlog"]);
    for (password, token, problems) in [
        (
            Some("wrong"),
            None,
            vec![format!(
                "  - cannot open the key {key} with COSIGN_PASSWORD: "
            )],
        ),
        (
            None,
            None,
            vec![format!(
                "  - COSIGN_PASSWORD is not set; export the password of {key}"
            )],
        ),
        (
            Some(PASSWORD),
            Some("t"),
            vec![
                format!(
                    "  - git tag {tag} does not exist, and the GitHub release needs it on GitHub"
                ),
                "  - GITHUB_TOKEN is set, so the assets are uploaded with gh, but gh not found: "
                    .to_owned(),
            ],
        ),
    ] {
        let failed = ws.release_env(&args, password, token);
        let stderr = String::from_utf8_lossy(&failed.stderr);
        assert_eq!(failed.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("[1/9] preflight: failed after"), "{stderr}");
        let listed: Vec<&str> = stderr.lines().filter(|l| l.starts_with("  - ")).collect();
        assert_eq!(listed.len(), problems.len(), "{stderr}");
        for (line, problem) in listed.iter().zip(&problems) {
            assert!(
                line.starts_with(problem.as_str()),
                "{line:?} is not {problem:?}\n{stderr}"
            );
        }
        assert_eq!(skopeo_tags(&repo), ["latest"]);
        assert_eq!(ws.target_files(), files_before);
    }

    // 1b. The registry dies in the middle of attest, as amd64's SPDX SBOM
    //     (the second attestation) is stored; the re-run keeps the
    //     signature and the first attestation, and attaches every other
    //     one exactly once. In its own repository, through a proxy.
    let proxy = support::KillingProxy::start(
        registry.clone(),
        "\"dev.sigstore.bundle.predicateType\":\"https://spdx.dev/Document\"",
    );
    let proxied = format!("127.0.0.1:{}", proxy.port);
    let (resumed_repo, proxied_base) =
        (format!("{proxied}/resumed"), base.replace(&host, &proxied));
    let resumed_args = [
        &tag as &str,
        "--push",
        "--insecure",
        "--image",
        &resumed_repo,
        "--base",
        &proxied_base,
        "--key",
        key,
        "--no-tlog",
        "--json",
    ];
    let crashed = ws.release(&resumed_args);
    let stderr = String::from_utf8_lossy(&crashed.stderr);
    assert_eq!(crashed.status.code(), Some(1), "{stderr}");
    assert!(proxy.has_fired(), "{stderr}");
    assert!(stderr.contains("[6/9] attest: failed after"), "{stderr}");
    registry.lock().unwrap().restart();
    // The same address, now only forwarding: the proxy cuts every request
    // that matches its trigger, not only the first.
    let port = proxy.port;
    drop(proxy);
    let proxy = support::KillingProxy::start_at(registry.clone(), "\u{0}never\u{0}", port);
    let resumed = ok_json(&ws.release(&resumed_args));
    assert_eq!(resumed["resumed"], serde_json::json!(["sign"]));
    assert_signed_and_attested_once(&format!("{host}/resumed"), &resumed);
    drop(proxy);

    // 2. The release, signed with a key and no transparency log.
    let mut args = common.to_vec();
    args.extend([&tag as &str, "--key", key, "--no-tlog", "--json"]);
    let summary = ok_json(&ws.release(&args));
    let digest = summary["digest"].as_str().unwrap().to_owned();
    assert_eq!(summary["version"], tag.as_str());
    assert_eq!(summary["image"], repo.as_str());
    let set: Vec<(&str, Option<&str>)> = summary["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["tag"].as_str().unwrap(), t["before"].as_str()))
        .collect();
    let minor = format!("v{}", version.rsplit_once('.').unwrap().0);
    // Exact tags first, floating last; `latest` moves off the old image.
    assert_eq!(
        set,
        [
            (tag.as_str(), None),
            (sha_tag.as_str(), None),
            (minor.as_str(), None),
            ("latest", Some(old_latest.as_str())),
        ]
    );
    assert_eq!(summary["resumed"], serde_json::json!([]));
    let platforms = summary["platforms"].as_object().unwrap();
    assert_eq!(
        platforms.keys().collect::<Vec<_>>(),
        ["linux/amd64", "linux/arm64"]
    );
    let digests = tag_digests(&repo);
    for t in [&tag, &sha_tag, &minor, &"latest".to_owned()] {
        assert_eq!(digests[t.as_str()], digest, "{t}");
    }
    // Checked with cosign itself, not through the xtask.
    let public = keys.path().join("cosign.pub");
    let mut subjects = vec![digest.clone()];
    subjects.extend(platforms.values().map(|v| v.as_str().unwrap().to_owned()));
    for subject in &subjects {
        let verified = cosign(
            &[
                "verify",
                "--key",
                public.to_str().unwrap(),
                "--insecure-ignore-tlog=true",
                "--allow-insecure-registry",
                "--allow-http-registry",
                &format!("{repo}@{subject}"),
            ],
            keys.path(),
        );
        assert!(
            verified.status.success(),
            "cosign verify {subject}: {}",
            String::from_utf8_lossy(&verified.stderr)
        );
    }
    let referrers_before = skopeo_tags(&repo);

    // The assets: archives, checksums with their signature, SBOMs,
    // provenance, the public key and the notes.
    let assets = ws.assets(&tag);
    let names = file_names(&assets);
    for expected in [
        format!("server-{version}-linux-amd64.tar.gz"),
        format!("server-{version}-linux-arm64.tar.gz"),
        "SHA256SUMS".to_owned(),
        "SHA256SUMS.sigstore.json".to_owned(),
        "sbom-linux-amd64.cdx.json".to_owned(),
        "sbom-linux-arm64.spdx.json".to_owned(),
        "provenance-linux-arm64.json".to_owned(),
        "vuln-linux-amd64.json".to_owned(),
        "cosign.pub".to_owned(),
        "release-notes.md".to_owned(),
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    run_ok(
        Command::new("sha256sum")
            .args(["-c", "SHA256SUMS"])
            .current_dir(&assets),
    );
    let blob = cosign(
        &[
            "verify-blob",
            "--key",
            "cosign.pub",
            "--insecure-ignore-tlog=true",
            "--bundle",
            "SHA256SUMS.sigstore.json",
            "SHA256SUMS",
        ],
        &assets,
    );
    assert!(
        blob.status.success(),
        "verify-blob: {}",
        String::from_utf8_lossy(&blob.stderr)
    );
    let notes = std::fs::read_to_string(assets.join("release-notes.md")).unwrap();
    assert!(
        notes.contains(&format!(
            "cosign verify --key=cosign.pub --insecure-ignore-tlog=true --allow-insecure-registry --allow-http-registry --output=json {repo}@{digest}"
        )),
        "{notes}"
    );

    // The SBOMs and provenance shipped are the very files attested, byte
    // for byte, and what cosign returns; they name the repository pushed
    // to (--image), not the configured one.
    let attested = ws.path.join("target/attest");
    let mut shipped = vec![(
        "provenance-index.json".to_owned(),
        digest.clone(),
        "provenance.json".to_owned(),
        "slsaprovenance1",
    )];
    for (platform, platform_digest) in platforms {
        let slug = platform.replace('/', "-");
        let d = platform_digest.as_str().unwrap().to_owned();
        shipped.push((
            format!("sbom-{slug}.cdx.json"),
            d.clone(),
            format!("{slug}.cdx.json"),
            "cyclonedx",
        ));
        shipped.push((
            format!("sbom-{slug}.spdx.json"),
            d.clone(),
            format!("{slug}.spdx.json"),
            "spdxjson",
        ));
        shipped.push((
            format!("provenance-{slug}.json"),
            d.clone(),
            "provenance.json".to_owned(),
            "slsaprovenance1",
        ));
        shipped.push((
            format!("vuln-{slug}.json"),
            d,
            "vuln.json".to_owned(),
            "vuln",
        ));
    }
    for (asset, subject, predicate, kind) in &shipped {
        let bytes = std::fs::read(assets.join(asset)).unwrap();
        let predicate_path = attested
            .join(subject.trim_start_matches("sha256:"))
            .join(predicate);
        assert_eq!(bytes, std::fs::read(&predicate_path).unwrap(), "{asset}");
        let text = String::from_utf8(bytes).unwrap();
        // A scan result names the binary it scanned, not the image.
        if *kind != "vuln" {
            assert!(
                text.contains(&repo) && !text.contains(&support::release_image()),
                "{asset}"
            );
        }
        let value: Value = serde_json::from_str(&text).unwrap();
        let predicates = attested_predicates(kind, &format!("{repo}@{subject}"), &public);
        assert_eq!(predicates, [value], "{asset} is not what was attested");
    }

    // Every verify command the release printed or wrote into its notes
    // works exactly as printed, from the directory holding cosign.pub.
    let printed: Vec<String> = summary["verify_commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(printed.len(), 3 + platforms.len(), "{printed:?}");
    let in_notes = commands_in_notes(&notes);
    for command in &printed {
        assert!(
            in_notes.contains(command),
            "{command} is not in the notes:\n{notes}"
        );
    }
    assert!(
        in_notes
            .iter()
            .any(|c| c.starts_with("cosign verify-blob ")),
        "{notes}"
    );
    let shim = CargoShim::new();
    for command in &in_notes {
        let output = shim.run(command, &assets);
        assert!(
            output.status.success(),
            "`{command}` failed\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    // 3. A re-run resumes: nothing is signed twice, every tag stays.
    let again = ok_json(&ws.release(&args));
    assert_eq!(again["digest"], digest.as_str());
    assert_eq!(again["resumed"], serde_json::json!(["sign", "attest"]));
    assert!(again["tags"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["before"] == t["after"]));
    assert_eq!(skopeo_tags(&repo), referrers_before);
    let index = support::skopeo_raw(&format!("{repo}:{}", digest.replace(':', "-")));
    // One signature and one provenance on the index: none added by the re-run.
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "{index}");

    // 3b. The registry lost every signature and attestation (their
    //     sha256- indexes deleted) while the state file says done: the
    //     re-run signs and attests again, once, instead of failing verify.
    let referrer_tags = tag_digests(&repo);
    for subject in &subjects {
        let index = &referrer_tags[&subject.replace(':', "-")];
        run_ok(Command::new(tool("crane")).args([
            "delete",
            "--insecure",
            &format!("{repo}@{index}"),
        ]));
    }
    let rewiped = ok_json(&ws.release(&args));
    assert_eq!(rewiped["resumed"], serde_json::json!([]));
    assert_eq!(rewiped["digest"], digest.as_str());
    assert_signed_and_attested_once(&repo, &rewiped);

    // 3c. The attested files are gone (another target directory): the
    //     release could not ship them, and fails before any tag step.
    let amd64 = platforms["linux/amd64"].as_str().unwrap();
    let attested_sbom = attested
        .join(amd64.trim_start_matches("sha256:"))
        .join("linux-amd64.cdx.json");
    let kept = std::fs::read(&attested_sbom).unwrap();
    std::fs::remove_file(&attested_sbom).unwrap();
    let missing = ws.release(&args);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("[7/9] verify: failed after") && !stderr.contains("[8/9]"),
        "{stderr}"
    );
    assert!(
        stderr.lines().last().unwrap_or_default().ends_with(&format!(
            "cannot ship the attested cyclonedx of linux/amd64: {} is missing; run the release again with the target directory that attested {amd64}",
            attested_sbom.display()
        )),
        "{stderr}"
    );
    assert_eq!(skopeo_tags(&repo), referrers_before);
    std::fs::write(&attested_sbom, kept).unwrap();

    // 4. Without --push: everything lands under target/release/V, and the
    //    same inputs give the same digest.
    let local = ws.release(&[&tag, "--base", &base, "--insecure"]);
    assert!(
        local.status.success(),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );
    let out = ws.path.join("target/release").join(&tag);
    assert!(out.join("oci/index.json").is_file());
    assert!(ws.assets(&tag).join("sbom-linux-amd64.cdx.json").is_file());
    assert_eq!(
        String::from_utf8_lossy(&local.stdout).trim(),
        format!("{}@{digest}", support::release_image())
    );

    // 5. v0.2.0 from a new commit: `v0.2` appears and `latest` moves.
    let v010 = digest.clone();
    let v020 = ws.bump_and_commit(&version, "0.2.0");
    let mut args = common.to_vec();
    args.extend(["v0.2.0", "--key", key, "--no-tlog", "--json"]);
    let summary = ok_json(&ws.release(&args));
    let d020 = summary["digest"].as_str().unwrap().to_owned();
    assert_ne!(d020, v010);
    assert_eq!(
        tag_list(&summary),
        [
            ("v0.2.0".to_owned(), None),
            (format!("sha-{}", &v020[..7]), None),
            ("v0.2".to_owned(), None),
            ("latest".to_owned(), Some(v010.clone())),
        ]
    );
    let digests = tag_digests(&repo);
    assert_eq!(digests["latest"], d020);
    assert_eq!(digests["v0.2"], d020);
    assert_eq!(digests["v0.1"], v010);

    // 6. A maintenance v0.1.1 on the older line. First a fault: v0.1.1 is
    //    already published at another digest. Nothing may change.
    let v011 = ws.bump_and_commit("0.2.0", "0.1.1");
    run_ok(Command::new(tool("crane")).args([
        "copy",
        "--insecure",
        &base,
        &format!("{repo}:v0.1.1"),
    ]));
    let squatter = tag_digests(&repo)["v0.1.1"].clone();
    let before = tag_digests(&repo);
    let mut args = common.to_vec();
    args.extend(["v0.1.1", "--key", key, "--no-tlog", "--json"]);
    let refused = ws.release(&args);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "  - {repo}:v0.1.1 is already published at {squatter}, but this build is sha256:"
        )),
        "{stderr}"
    );
    assert_eq!(tag_digests(&repo), before, "a refused release moved a tag");
    // The fault fixed (the wrong v0.1.1 deleted), the release completes:
    // `v0.1` moves, `latest` and `v0.2` stay on v0.2.0.
    run_ok(Command::new(tool("crane")).args([
        "delete",
        "--insecure",
        &format!("{repo}@{squatter}"),
    ]));
    let summary = ok_json(&ws.release(&args));
    let d011 = summary["digest"].as_str().unwrap().to_owned();
    assert_eq!(
        tag_list(&summary),
        [
            ("v0.1.1".to_owned(), None),
            (format!("sha-{}", &v011[..7]), None),
            ("v0.1".to_owned(), Some(v010.clone())),
        ]
    );
    assert_eq!(
        summary["not_tagged"],
        serde_json::json!([
            "no v0: 0.x releases never get a major tag",
            "no latest: v0.2.0 is newer"
        ])
    );
    let digests = tag_digests(&repo);
    assert_eq!(digests["v0.1"], d011);
    assert_eq!(digests["v0.1.0"], v010);
    assert_eq!(digests["latest"], d020);
    assert_eq!(digests["v0.2"], d020);
    // The provenance must name the commit the version tag points to: with
    // v0.1.1 tagged on another commit, verify fails and names both.
    let git = |args: &[&str]| run_ok(Command::new("git").args(args).current_dir(&ws.path));
    git(&["tag", "v0.1.1", &v020]);
    let wrong = ws.xtask(&[
        "verify",
        &format!("{repo}:v0.1.1"),
        "--key",
        public.to_str().unwrap(),
        "--no-tlog",
        "--insecure",
        "--expect-version",
        "v0.1.1",
    ]);
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.lines().last().unwrap_or_default(),
        format!("error: verification of {repo}@{d011} failed: provenance of linux/amd64, provenance of linux/arm64, provenance of index")
    );
    let table = String::from_utf8_lossy(&wrong.stdout);
    assert!(
        table.contains(&format!(
            "the provenance of index says it was built from {v011}, but the tag v0.1.1 is {v020}"
        )),
        "{table}"
    );
    git(&["tag", "-f", "v0.1.1", &v011]);
    let verified = ws.xtask(&[
        "verify",
        &format!("{repo}:v0.1.1"),
        "--key",
        public.to_str().unwrap(),
        "--no-tlog",
        "--insecure",
        "--run",
        "--expect-version",
        "v0.1.1",
    ]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );

    // 7. The same release to a registry with the OCI referrers API (the
    //    build is reused): signed, attested and verified there, with the
    //    signatures and attestations as referrers and no sha256-<hex> tag.
    let referrers = Registry::start_with_referrers();
    let there = referrers.repo("app");
    let args = [
        "v0.1.1",
        "--push",
        "--insecure",
        "--image",
        &there,
        "--base",
        &base,
        "--key",
        key,
        "--no-tlog",
        "--json",
    ];
    let summary = ok_json(&ws.release(&args));
    assert_eq!(summary["digest"], d011.as_str());
    assert_eq!(
        skopeo_tags(&there),
        [
            "latest".to_owned(),
            format!("sha-{}", &v011[..7]),
            "v0.1".to_owned(),
            "v0.1.1".to_owned()
        ]
    );
    let listed = |digest: &str| {
        let (status, body) =
            support::http_get(referrers.port, &format!("/v2/app/referrers/{digest}")).unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["manifests"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(
        listed(&d011),
        2,
        "a signature and a provenance on the index"
    );
    for (platform, digest) in summary["platforms"].as_object().unwrap() {
        // A signature, two SBOMs, a provenance and the scan result.
        assert_eq!(listed(digest.as_str().unwrap()), 5, "{platform}");
    }
    // A re-run finds all of it through the API and adds nothing.
    let again = ok_json(&ws.release(&args));
    assert_eq!(again["resumed"], serde_json::json!(["sign", "attest"]));
    assert_eq!(listed(&d011), 2);

    // 8. The same release to distribution with token auth (Bearer, as GHCR
    //    does it), the credentials only in a credential helper that a
    //    DOCKER_CONFIG names: pushed, signed, attested, verified by the
    //    release's own verify step, and tagged; a re-run adds nothing.
    let tokens = TokenService::start(vec![Grant {
        user: "alice",
        password: "alice-pw",
        actions: &["pull", "push"],
    }]);
    let guarded = Registry::start_with_token(&tokens);
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("config.json"),
        serde_json::json!({"credHelpers": {guarded.host(): "test"}}).to_string(),
    )
    .unwrap();
    let bin = tempfile::tempdir().unwrap();
    support::auth_registry::write_credential_helper(
        bin.path(),
        &guarded.host(),
        "alice",
        "alice-pw",
    );
    let path =
        std::env::join_paths(std::iter::once(bin.path().to_path_buf()).chain(support::tool_path()))
            .unwrap();
    let there = guarded.repo("app");
    let args = [
        "v0.1.1",
        "--push",
        "--insecure",
        "--image",
        &there,
        "--base",
        &base,
        "--key",
        key,
        "--no-tlog",
        "--json",
    ];
    let release_with_helper = || {
        run(Command::new(env!("CARGO_BIN_EXE_xtask"))
            .current_dir(&ws.path)
            .arg("release")
            .args(args)
            .env("COSIGN_PASSWORD", PASSWORD)
            .env("DOCKER_CONFIG", config.path())
            .env("XTASK_AUDIT_DB", support::advisory_db::empty())
            .env("PATH", &path)
            .env_remove("GITHUB_TOKEN")
            .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL"))
    };
    let summary = ok_json(&release_with_helper());
    assert_eq!(summary["digest"], d011.as_str());
    assert_eq!(summary["resumed"], serde_json::json!([]));
    let mut tags: Vec<(String, Option<String>)> = tag_list(&summary);
    tags.sort();
    assert_eq!(
        tags,
        [
            ("latest".to_owned(), None),
            (format!("sha-{}", &v011[..7]), None),
            ("v0.1".to_owned(), None),
            ("v0.1.1".to_owned(), None),
        ]
    );
    let listed = run_ok(Command::new(tool("skopeo")).args([
        "list-tags",
        "--tls-verify=false",
        "--creds",
        "alice:alice-pw",
        &format!("docker://{there}"),
    ]));
    let mut listed: Vec<String> = serde_json::from_str::<Value>(&listed).unwrap()["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    // The fallback tags of the index and of each platform, and the tags.
    let mut expected: Vec<String> = std::iter::once(d011.clone())
        .chain(
            summary["platforms"]
                .as_object()
                .unwrap()
                .values()
                .map(|d| d.as_str().unwrap().to_owned()),
        )
        .map(|d| d.replace(':', "-"))
        .collect();
    expected.extend(tags.into_iter().map(|(tag, _)| tag));
    expected.sort();
    assert_eq!(listed, expected);
    assert!(tokens
        .scopes()
        .contains(&"repository:app:pull,push".to_owned()));
    let again = ok_json(&release_with_helper());
    assert_eq!(again["resumed"], serde_json::json!(["sign", "attest"]));
    assert_eq!(again["digest"], d011.as_str());
}
