//! The main commands on registries that want credentials, with the
//! credentials only in a Docker config: distribution with htpasswd (Basic,
//! an `auths` entry) and with `auth: token` (Bearer, from a credential
//! helper). On each: `image --push --sign`, `attest`, `verify --run`,
//! `bundle`, then `bundle --load` into a registry without authentication
//! and `verify` there. cosign runs through a wrapper on PATH that records
//! which Docker config it was given, so the tests see that cosign gets the
//! same credentials, and that a config the xtask writes for it (GITHUB_TOKEN)
//! is private while it exists and gone after the run, failed runs too.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;
use serde_json::Value;
use support::token_service::{Grant, TokenService};
use support::{run, run_ok, seed_base, tool, Registry};

const PASSWORD: &str = "test-password";
const USER: &str = "alice";
const SECRET: &str = "alice-pw";

/// Where the xtask runs: a Docker config, a bin directory first on PATH
/// (the cosign wrapper, a credential helper), and a TMPDIR of its own.
struct Bed {
    config: tempfile::TempDir,
    bin: tempfile::TempDir,
    tmp: tempfile::TempDir,
    keys: tempfile::TempDir,
    work: tempfile::TempDir,
}

impl Bed {
    fn new(config: Value) -> Bed {
        let bed = Bed {
            config: tempfile::tempdir().unwrap(),
            bin: tempfile::tempdir().unwrap(),
            tmp: tempfile::tempdir().unwrap(),
            keys: tempfile::tempdir().unwrap(),
            work: tempfile::tempdir().unwrap(),
        };
        std::fs::write(bed.config.path().join("config.json"), config.to_string()).unwrap();
        // Records DOCKER_CONFIG and the mode of its config.json for each
        // cosign run, then runs the real cosign.
        bed.script(
            "cosign",
            &format!(
                "#!/bin/sh\n{{ printf '%s %s ' \"$1\" \"${{DOCKER_CONFIG:-unset}}\"; stat -c %a \"${{DOCKER_CONFIG:-/nonexistent}}/config.json\" 2>/dev/null || echo missing; }} >> {}\nexec {} \"$@\"\n",
                bed.cosign_log().display(),
                tool("cosign").display()
            ),
        );
        run_ok(
            Command::new(tool("cosign"))
                .arg("generate-key-pair")
                .env("COSIGN_PASSWORD", PASSWORD)
                .current_dir(bed.keys.path()),
        );
        bed
    }

    fn script(&self, name: &str, text: &str) {
        let path = self.bin.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn cosign_log(&self) -> PathBuf {
        self.work.path().join("cosign.log")
    }

    /// Each cosign run but `version`: (DOCKER_CONFIG, mode of its config.json).
    fn cosign_runs(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.cosign_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut words = l.split(' ');
                let command = words.next()?;
                (command != "version").then(|| {
                    (
                        words.next().unwrap().to_owned(),
                        words.next().unwrap().to_owned(),
                    )
                })
            })
            .collect()
    }

    fn key(&self) -> String {
        self.keys.path().join("cosign.key").display().to_string()
    }

    fn public(&self) -> String {
        self.keys.path().join("cosign.pub").display().to_string()
    }

    /// What is left in the xtask's TMPDIR.
    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = support::xtask();
        let mut paths = vec![self.bin.path().to_path_buf()];
        paths.extend(support::tool_path());
        command
            .args(args)
            .env("PATH", std::env::join_paths(paths).unwrap())
            .env("DOCKER_CONFIG", self.config.path())
            .env("TMPDIR", self.tmp.path())
            .env("COSIGN_PASSWORD", PASSWORD)
            .env_remove("GITHUB_TOKEN");
        for name in support::GITHUB_ACTIONS_ENV {
            command.env_remove(name);
        }
        command
    }

    fn json(&self, args: &[&str]) -> Value {
        let output = run(&mut self.command(args));
        assert_success(args, &output);
        serde_json::from_slice(&output.stdout).expect("--json prints JSON")
    }
}

fn assert_success(args: &[&str], output: &Output) {
    assert!(
        output.status.success(),
        "cargo xtask {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// The whole path of a release's image through `registry`, logged in by
/// `bed`'s Docker config, then moved to `plain` and verified there.
fn publish_verify_bundle_and_move(bed: &Bed, registry: &Registry) -> String {
    let plain = Registry::start();
    // The base lives on the registry without authentication: crane, which
    // seeds it, is not what is tested here.
    let (base, _) = seed_base(&plain, "base");
    support::dist();
    let repo = registry.repo("app");
    let oci = bed.work.path().join("oci");
    let sha = support::head_sha();
    let image = bed.json(&[
        "image",
        "--push",
        "--sign",
        "--key",
        &bed.key(),
        "--no-tlog",
        "--insecure",
        "--json",
        "--image",
        &repo,
        "--base",
        &base,
        "--version",
        "v0.1.0",
        "--sha",
        &sha,
        "--out",
        oci.to_str().unwrap(),
    ]);
    let digest = image["digest"].as_str().unwrap().to_owned();
    let platforms: Vec<String> = image["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["digest"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(platforms.len(), 2);
    let attest = ["attest", &format!("{repo}@{digest}"), "--key", &bed.key()];
    let output = run(&mut bed.command(&[&attest[..], &["--no-tlog", "--insecure"]].concat()));
    assert_success(&attest, &output);

    // Signatures and attestations are under the fallback tags of the index
    // and of each platform (distribution 2.8 has no referrers API).
    let mut fallback: Vec<String> = std::iter::once(&digest)
        .chain(&platforms)
        .map(|d| d.replace(':', "-"))
        .collect();
    fallback.sort();
    let mut tags = fallback.clone();
    tags.push("v0.1.0".to_owned());
    tags.sort();
    let mut published = tags.clone();
    published.extend([
        "latest".to_owned(),
        format!("sha-{}", &sha[..7]),
        "v0.1".to_owned(),
    ]);
    published.sort();
    let mut found = read_tags(registry, bed, "app");
    found.sort();
    assert_eq!(found, published);

    let report = verify(bed, &repo, &digest, true);
    assert_eq!(report["image"], repo.as_str());
    assert_eq!(report["digest"], digest.as_str());
    assert_eq!(report["tlog"], false);
    assert_eq!(report["passed"], true, "{report:#}");
    // 3 signatures, 2 SBOMs, 3 provenances, and /server run per platform.
    assert_eq!(
        check_counts(&report),
        [("provenance", 3), ("run", 2), ("sbom", 2), ("signature", 3)]
    );

    // bundle: the image and the 3 fallback indexes, read with credentials.
    let archive = bed.work.path().join("app.oci.tar");
    let bundled = bed.json(&[
        "bundle",
        "v0.1.0",
        "--insecure",
        "--json",
        "--image",
        &repo,
        "--out",
        archive.to_str().unwrap(),
    ]);
    let mut names: Vec<&str> = bundled["refs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, tags.iter().map(String::as_str).collect::<Vec<_>>());

    let moved = plain.repo("app");
    let loaded = bed.json(&[
        "bundle",
        "v0.1.0",
        "--load",
        "--no-tlog",
        "--key",
        &bed.public(),
        "--insecure",
        "--json",
        "--image",
        &moved,
        "--out",
        archive.to_str().unwrap(),
    ]);
    let mut loaded_tags: Vec<String> = loaded["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    loaded_tags.sort();
    // The archive's signature tags, then the release's own by its policy.
    let mut expected = tags.clone();
    expected.retain(|t| t.starts_with("sha256-"));
    expected.extend([
        "v0.1.0".to_owned(),
        format!("sha-{}", &sha[..7]),
        "v0.1".to_owned(),
        "latest".to_owned(),
    ]);
    expected.sort();
    assert_eq!(loaded_tags, expected);
    assert_eq!(support::tag_digests(&moved)["v0.1.0"], digest);
    let report = verify(bed, &moved, &digest, false);
    assert_eq!(report["image"], moved.as_str());
    assert_eq!(report["digest"], digest.as_str());
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(
        check_counts(&report),
        [("provenance", 3), ("sbom", 2), ("signature", 3)]
    );

    // cosign was given the user's own Docker config, each time, and the
    // xtask left nothing in its TMPDIR.
    let runs = bed.cosign_runs();
    assert!(!runs.is_empty());
    let own = bed.config.path().display().to_string();
    for (config, _) in &runs {
        assert_eq!(config, &own);
    }
    assert_eq!(bed.leftovers(), Vec::<String>::new());
    digest
}

/// The tags of `name`, as skopeo reads them with the bed's credentials.
fn read_tags(registry: &Registry, bed: &Bed, name: &str) -> Vec<String> {
    let output = run(Command::new(tool("skopeo"))
        .args(["list-tags", "--tls-verify=false"])
        .arg(format!("docker://{}", registry.repo(name)))
        .env(
            "PATH",
            std::env::join_paths(
                [bed.bin.path().to_path_buf()]
                    .into_iter()
                    .chain(support::tool_path()),
            )
            .unwrap(),
        )
        .env("REGISTRY_AUTH_FILE", bed.config.path().join("config.json"))
        .env("DOCKER_CONFIG", bed.config.path()));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    json["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

fn verify(bed: &Bed, repo: &str, digest: &str, run_binary: bool) -> Value {
    let reference = format!("{repo}@{digest}");
    let public = bed.public();
    let mut args = vec![
        "verify",
        &reference,
        "--key",
        &public,
        "--no-tlog",
        "--insecure",
        "--json",
    ];
    if run_binary {
        args.push("--run");
    }
    bed.json(&args)
}

/// How many checks of each kind passed, sorted by kind.
fn check_counts(report: &Value) -> Vec<(&str, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for check in report["checks"].as_array().unwrap() {
        assert_eq!(check["ok"], true, "{check}");
        *counts.entry(check["check"].as_str().unwrap()).or_default() += 1;
    }
    counts.into_iter().collect()
}

#[test]
fn basic_auth_registry_with_auths_credentials() {
    let registry = Registry::start_with_htpasswd(&[(USER, SECRET)]);
    let bed =
        Bed::new(serde_json::json!({"auths": {registry.host(): {"auth": basic(USER, SECRET)}}}));
    let digest = publish_verify_bundle_and_move(&bed, &registry);

    // With GITHUB_TOKEN and no DOCKER_CONFIG, the xtask gives cosign a
    // config of its own: the user's (~/.docker) plus ghcr.io. It is 0600
    // while cosign runs and removed after, whether cosign succeeds or not.
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".docker")).unwrap();
    std::fs::copy(
        bed.config.path().join("config.json"),
        home.path().join(".docker/config.json"),
    )
    .unwrap();
    std::fs::remove_file(bed.cosign_log()).unwrap();
    let reference = format!("{}@{digest}", registry.repo("app"));
    let key = bed.key();
    let sign = [
        "sign",
        reference.as_str(),
        "--key",
        &key,
        "--no-tlog",
        "--insecure",
    ];
    for (password, succeeds) in [(PASSWORD, true), ("wrong-password", false)] {
        let output = run(bed
            .command(&sign)
            .env_remove("DOCKER_CONFIG")
            .env("HOME", home.path())
            .env("GITHUB_TOKEN", "test-token")
            .env("COSIGN_PASSWORD", password));
        assert_eq!(
            output.status.success(),
            succeeds,
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let runs = bed.cosign_runs();
        assert!(!runs.is_empty());
        for (config, mode) in &runs {
            assert!(
                Path::new(config).starts_with(bed.tmp.path()),
                "cosign got {config}"
            );
            assert_eq!(mode, "600", "{config}/config.json");
        }
        assert_eq!(bed.leftovers(), Vec::<String>::new());
        std::fs::remove_file(bed.cosign_log()).unwrap();
    }
}

#[test]
fn token_registry_with_a_credential_helper() {
    let tokens = TokenService::start(vec![Grant {
        user: USER,
        password: SECRET,
        actions: &["pull", "push"],
    }]);
    let registry = Registry::start_with_token(&tokens);
    let bed = Bed::new(serde_json::json!({"credHelpers": {registry.host(): "test"}}));
    support::auth_registry::write_credential_helper(bed.bin.path(), &registry.host(), USER, SECRET);
    publish_verify_bundle_and_move(&bed, &registry);
    let scopes = tokens.scopes();
    assert!(
        scopes.contains(&"repository:app:pull,push".to_owned()),
        "{scopes:?}"
    );
}
