//! `cargo xtask chart`: the package is checked with the real helm (lint,
//! template, the schema, pull) and its signature with the real cosign,
//! against a registry on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::{run, run_ok, tool, Registry};
use yaml_rust2::{Yaml, YamlLoader};

const PASSWORD: &str = "test-password";
const IMAGE_DIGEST: &str =
    "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const EPOCH: &str = "1767225600";

/// `cargo xtask chart <args>` for v1.2.3 with a fixed source time.
fn chart(args: &[&str]) -> Output {
    run(support::xtask()
        .args([
            "chart",
            "--version",
            "v1.2.3",
            "--image-digest",
            IMAGE_DIGEST,
        ])
        .args(args)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .env("COSIGN_PASSWORD", PASSWORD)
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_TOKEN"))
}

fn chart_json(args: &[&str]) -> Value {
    let output = chart(&[args, &["--json"]].concat());
    assert!(
        output.status.success(),
        "cargo xtask chart {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Packages into a fresh directory; returns the directory and the .tgz.
fn package(image: &str) -> (tempfile::TempDir, PathBuf) {
    let out = tempfile::tempdir().unwrap();
    let json = chart_json(&["--image", image, "--out", out.path().to_str().unwrap()]);
    let file = PathBuf::from(json["file"].as_str().unwrap());
    assert_eq!(file, out.path().join("server-1.2.3.tgz"));
    assert_eq!(json["version"], "1.2.3");
    assert_eq!(json["app_version"], "v1.2.3");
    (out, file)
}

/// helm with its caches and configuration in `home`, never the user's.
fn helm(home: &Path) -> Command {
    let mut command = Command::new(tool("helm"));
    command
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    command
}

fn template(home: &Path, chart: &Path, set: &[&str]) -> Output {
    let mut command = helm(home);
    command.args(["template", "rel"]).arg(chart);
    for value in set {
        command.args(["--set", value]);
    }
    run(&mut command)
}

/// The rendered documents, by kind.
fn render(home: &Path, chart: &Path, set: &[&str]) -> Vec<Yaml> {
    let output = template(home, chart, set);
    assert!(
        output.status.success(),
        "helm template {set:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    YamlLoader::load_from_str(&String::from_utf8(output.stdout).unwrap())
        .unwrap()
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Yaml], kind: &str) -> Vec<&'a Yaml> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect()
}

fn env_of(container: &Yaml) -> Vec<(String, Yaml)> {
    container["env"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

fn assert_hardened(pod: &Yaml, container: &Yaml) {
    let pod_security = &pod["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(pod_security["runAsUser"].as_i64(), Some(65532));
    assert_eq!(
        pod_security["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    let security = &container["securityContext"];
    assert_eq!(security["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(security["runAsUser"].as_i64(), Some(65532));
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(
        security["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    let dropped: Vec<&str> = security["capabilities"]["drop"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(dropped, ["ALL"]);
}

#[test]
fn packaged_chart_lints_and_renders_a_hardened_deployment_by_digest() {
    let home = tempfile::tempdir().unwrap();
    let (_out, tgz) = package("registry.internal/team/server");

    let lint = run(helm(home.path()).args(["lint", "--strict"]).arg(&tgz));
    assert!(
        lint.status.success(),
        "helm lint --strict failed:\n{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    let docs = render(home.path(), &tgz, &[]);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["Service", "Deployment"],
        "optional objects are off by default"
    );
    let deployment = of_kind(&docs, "Deployment")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"].as_str(),
        Some(format!("registry.internal/team/server@{IMAGE_DIGEST}").as_str())
    );
    assert_hardened(pod, container);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(container[probe]["httpGet"]["path"].as_str(), Some(path));
        assert_eq!(container[probe]["httpGet"]["port"].as_str(), Some("http"));
    }
    assert_eq!(container["ports"][0]["containerPort"].as_i64(), Some(8080));
    // 5 s drain + 10 s shutdown + 5 s for the process to exit.
    assert_eq!(pod["terminationGracePeriodSeconds"].as_i64(), Some(20));
    let env = env_of(container);
    let value = |name: &str| {
        env.iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, e)| e["value"].as_str().map(str::to_owned))
    };
    assert_eq!(value("SERVER_DRAIN_DELAY").as_deref(), Some("5s"));
    assert_eq!(value("SERVER_SHUTDOWN_TIMEOUT").as_deref(), Some("10s"));
    assert_eq!(value("SERVER_ADDR").as_deref(), Some("0.0.0.0:8080"));
    assert!(env
        .iter()
        .all(|(n, _)| n != "SERVER_DATABASE_URL" && n != "SERVER_MAX_CONNECTIONS"));
    let limits = &container["resources"]["limits"];
    assert_eq!(limits["memory"].as_str(), Some("128Mi"));

    // Everything optional on, the database from a Secret, a tag override.
    let docs = render(
        home.path(),
        &tgz,
        &[
            "database.existingSecret=server-db",
            "server.drainDelaySeconds=10",
            "server.shutdownTimeoutSeconds=30",
            "server.maxConnections=512",
            "podDisruptionBudget.enabled=true",
            "autoscaling.enabled=true",
            "bootstrap.enabled=true",
            "image.tag=v1.2.3",
        ],
    );
    let deployment = of_kind(&docs, "Deployment")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(pod["terminationGracePeriodSeconds"].as_i64(), Some(45));
    assert!(
        deployment["spec"]["replicas"].is_badvalue(),
        "the HPA owns replicas"
    );
    assert_eq!(
        container["image"].as_str(),
        Some("registry.internal/team/server:v1.2.3")
    );
    let env = env_of(container);
    let (_, url) = env
        .iter()
        .find(|(n, _)| n == "SERVER_DATABASE_URL")
        .unwrap();
    assert!(url["value"].is_badvalue(), "the URL is never in clear text");
    assert_eq!(
        url["valueFrom"]["secretKeyRef"]["name"].as_str(),
        Some("server-db")
    );
    assert_eq!(
        url["valueFrom"]["secretKeyRef"]["key"].as_str(),
        Some("url")
    );
    assert_eq!(of_kind(&docs, "PodDisruptionBudget").len(), 1);
    assert_eq!(of_kind(&docs, "HorizontalPodAutoscaler").len(), 1);
    let job = of_kind(&docs, "Job")[0];
    assert_eq!(
        job["metadata"]["annotations"]["helm.sh/hook"].as_str(),
        Some("pre-install,pre-upgrade")
    );
    let job_pod = &job["spec"]["template"]["spec"];
    assert_eq!(
        job_pod["containers"][0]["args"][0].as_str(),
        Some("bootstrap")
    );
    assert_hardened(job_pod, &job_pod["containers"][0]);
}

#[test]
fn bad_values_are_refused_by_the_schema() {
    let home = tempfile::tempdir().unwrap();
    let (_out, tgz) = package("registry.internal/team/server");
    for (value, message) in [
        // A URL in values would be kept in the release history in clear text.
        (
            "database.url=postgres://u:p@db/app",
            "additional properties 'url' not allowed",
        ),
        ("image.digest=latest", "/image/digest"),
        ("server.log=loud", "/server/log"),
        ("server.drainDelaySeconds=-1", "/server/drainDelaySeconds"),
        ("server.headerTimeout=5 seconds", "/server/headerTimeout"),
        ("resources.limits.memory=lots", "/resources/limits/memory"),
    ] {
        let output = template(home.path(), &tgz, &[value]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{value} was accepted");
        assert!(
            stderr.contains("values don't meet the specifications of the schema"),
            "{value}: {stderr}"
        );
        assert!(
            stderr.contains(message),
            "{value}: expected {message:?} in {stderr}"
        );
    }
    // The checkout's chart has no digest: it refuses to render rather than
    // run whatever a tag points at.
    let source = support::workspace_root().join("deploy/helm/server");
    let output = template(home.path(), &source, &[]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("image.digest is empty"));
}

#[test]
fn packaging_twice_gives_the_same_bytes() {
    let (_a, first) = package("registry.internal/team/server");
    let (_b, second) = package("registry.internal/team/server");
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&second).unwrap()
    );
    let (_c, other) = package("registry.internal/team/other");
    assert_ne!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&other).unwrap()
    );
}

fn generate_keys(dir: &Path) {
    run_ok(
        Command::new(tool("cosign"))
            .arg("generate-key-pair")
            .env("COSIGN_PASSWORD", PASSWORD)
            .current_dir(dir),
    );
}

fn cosign_verify(key: &Path, reference: &str) -> Output {
    run(Command::new(tool("cosign"))
        .arg("verify")
        .arg(format!("--key={}", key.display()))
        .args([
            "--insecure-ignore-tlog=true",
            "--allow-insecure-registry",
            "--allow-http-registry",
            reference,
        ]))
}

#[test]
fn pushed_chart_is_pulled_by_version_with_the_digest_cosign_verifies() {
    let registry = Registry::start();
    let keys = tempfile::tempdir().unwrap();
    generate_keys(keys.path());
    let other = tempfile::tempdir().unwrap();
    generate_keys(other.path());
    let out = tempfile::tempdir().unwrap();
    let image = registry.repo("team/server");
    let key = keys.path().join("cosign.key");
    let json = chart_json(&[
        "--push",
        "--insecure",
        "--no-tlog",
        "--image",
        &image,
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let digest = json["digest"].as_str().unwrap().to_owned();
    let repository = format!("oci://{}/team/charts/server", registry.host());
    assert_eq!(json["repository"], repository.as_str());
    let verify: Vec<&str> = json["verify"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(verify[0].starts_with("cosign verify --key="), "{verify:?}");
    assert!(verify[1].starts_with(&format!("helm pull {repository} --version 1.2.3")));

    let home = tempfile::tempdir().unwrap();
    let pulled = tempfile::tempdir().unwrap();
    let output = run(helm(home.path())
        .args([
            "pull",
            &repository,
            "--version",
            "1.2.3",
            "--plain-http",
            "--destination",
        ])
        .arg(pulled.path()));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(said.contains(&format!("Digest: {digest}")), "{said}");
    assert_eq!(
        std::fs::read(pulled.path().join("server-1.2.3.tgz")).unwrap(),
        std::fs::read(json["file"].as_str().unwrap()).unwrap(),
        "helm pulls the bytes that were packaged"
    );

    // By the digest that was signed, as docs/kubernetes.md installs it.
    let by_digest_dir = tempfile::tempdir().unwrap();
    let output = run(helm(home.path())
        .args([
            "pull",
            &format!("{repository}@{digest}"),
            "--plain-http",
            "--destination",
        ])
        .arg(by_digest_dir.path()));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pulled_by_digest: Vec<_> = std::fs::read_dir(by_digest_dir.path()).unwrap().collect();
    assert_eq!(pulled_by_digest.len(), 1);
    let values = run_ok(helm(home.path()).args([
        "show",
        "values",
        &format!("{repository}@{digest}"),
        "--plain-http",
    ]));
    assert!(
        values.contains(&format!("digest: \"{IMAGE_DIGEST}\"")),
        "{values}"
    );

    let by_digest = format!("{}/team/charts/server@{digest}", registry.host());
    let good = cosign_verify(&keys.path().join("cosign.pub"), &by_digest);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let bad = cosign_verify(&other.path().join("cosign.pub"), &by_digest);
    assert!(!bad.status.success(), "a chart verified with another key");

    // A re-run is a no-op: the same bytes, the same digest, the tag kept.
    let again = chart_json(&[
        "--push",
        "--insecure",
        "--no-tlog",
        "--image",
        &image,
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(again["digest"].as_str(), Some(digest.as_str()));
    // Another chart under the same version is refused.
    let output = chart(&[
        "--push",
        "--insecure",
        "--no-tlog",
        "--image",
        &registry.repo("team/other"),
        "--repository",
        &format!("{}/team/charts/server", registry.host()),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("already points at"));
}

/// The chart of `version` running `digest`, packaged by `cargo xtask chart`.
fn package_release(version: &str, digest: &str, out: &Path) -> PathBuf {
    let output = run(support::xtask()
        .args([
            "chart",
            "--version",
            version,
            "--image-digest",
            digest,
            "--json",
        ])
        .arg("--out")
        .arg(out)
        .env("SOURCE_DATE_EPOCH", EPOCH));
    assert!(
        output.status.success(),
        "cargo xtask chart {version} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    PathBuf::from(json["file"].as_str().unwrap())
}

/// Helm's own install and upgrade code (xtask/tests/helm-upgrade: the Go
/// SDK with in-memory storage and a fake cluster) on the packaged charts
/// of two releases: the documented `--reset-then-reuse-values` moves the
/// image to the new release's digest and keeps the operator's value;
/// `--reuse-values` keeps the old digest.
#[test]
fn the_documented_upgrade_changes_the_digest_and_reuse_values_would_not() {
    let old_digest = IMAGE_DIGEST;
    let new_digest = "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    let out = tempfile::tempdir().unwrap();
    let old = package_release("v1.2.3", old_digest, &out.path().join("old"));
    let new = package_release("v1.2.4", new_digest, &out.path().join("new"));

    let config = xtask::support::config::Config::load().unwrap();
    let driver = xtask::support::tools::helm_upgrade(&config.target_dir);
    assert!(
        driver.exists(),
        "{driver} is missing: run `cargo xtask setup`, which builds it from xtask/tests/helm-upgrade"
    );
    let stdout = run_ok(
        Command::new(driver.as_std_path())
            .arg(&old)
            .arg(&new)
            .arg("replicaCount=3"),
    );
    let result: Value = serde_json::from_str(&stdout).unwrap();
    let repository = support::release_image();
    assert_eq!(
        result["installed"],
        serde_json::json!([format!("{repository}@{old_digest}")])
    );
    assert_eq!(
        result["reset-then-reuse-values"],
        serde_json::json!([format!("{repository}@{new_digest}")])
    );
    assert_eq!(
        result["reset-then-reuse-values-config"],
        serde_json::json!({"replicaCount": 3})
    );
    assert_eq!(
        result["reuse-values"],
        serde_json::json!([format!("{repository}@{old_digest}")])
    );

    let docs =
        std::fs::read_to_string(support::workspace_root().join("docs/kubernetes.md")).unwrap();
    assert!(docs.contains("--reset-then-reuse-values"));
    assert!(
        !docs.contains("--reuse-values\n"),
        "kubernetes.md still upgrades with --reuse-values"
    );
}
