//! The Helm chart's pods under a real engine: `helm template` renders the
//! chart, and `podman kube play` runs what podman 4.3 can run of it: the
//! Deployment with the database Secret it reads, and the bootstrap hook
//! Job's pod template as a Pod (podman 4.3 plays no Jobs). The database
//! is the tests' PostgreSQL image, on a podman network this test makes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use support::engine::{podman, released_image, POSTGRES_IMAGE};
use support::{run, run_ok, tool};
use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlLoader};

/// Removes what the test made, by name, whatever happened.
struct Cleanup {
    network: String,
    containers: Vec<String>,
    pods: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pod in &self.pods {
            let _ = podman().args(["pod", "rm", "-f", "-t", "0", pod]).output();
        }
        for container in &self.containers {
            let _ = podman().args(["rm", "-f", "-t", "0", container]).output();
        }
        let _ = podman()
            .args(["network", "rm", "-f", &self.network])
            .output();
        let _ = podman().args(["secret", "rm", "server-db"]).output();
    }
}

/// A rendered document as JSON, which is YAML too: what kube play reads.
fn emit(doc: &Yaml) -> String {
    fn json(doc: &Yaml) -> serde_json::Value {
        match doc {
            Yaml::Hash(hash) => serde_json::Value::Object(
                hash.iter()
                    .map(|(k, v)| (k.as_str().unwrap().to_owned(), json(v)))
                    .collect(),
            ),
            Yaml::Array(items) => serde_json::Value::Array(items.iter().map(json).collect()),
            Yaml::String(text) => serde_json::Value::String(text.clone()),
            Yaml::Integer(n) => serde_json::Value::from(*n),
            Yaml::Boolean(b) => serde_json::Value::Bool(*b),
            Yaml::Real(text) => serde_json::from_str(text).unwrap(),
            Yaml::Null => serde_json::Value::Null,
            other => panic!("unexpected YAML in the rendered chart: {other:?}"),
        }
    }
    serde_json::to_string_pretty(&json(doc)).unwrap()
}

fn key(name: &str) -> Yaml {
    Yaml::String(name.to_owned())
}

/// `podman kube play` of one file; the IDs of the containers it started.
fn kube_play(file: &std::path::Path, network: &str) -> Vec<String> {
    let played = run(podman()
        .args(["kube", "play", "--network", network])
        .arg(file));
    assert!(
        played.status.success(),
        "podman kube play failed: {}\n{}",
        String::from_utf8_lossy(&played.stderr),
        std::fs::read_to_string(file).unwrap()
    );
    let output = String::from_utf8(played.stdout).unwrap();
    output
        .lines()
        .skip_while(|l| l.trim() != "Container:" && l.trim() != "Containers:")
        .skip(1)
        .map(|l| l.trim().to_owned())
        .filter(|l| l.len() == 64)
        .collect()
}

fn inspect(id: &str, format: &str) -> String {
    run_ok(podman().args(["inspect", "--format", format, id]))
        .trim()
        .to_owned()
}

fn status_line(pid: &str, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn http_status(ip: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect((ip, 8080)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn the_charts_deployment_and_bootstrap_pod_run_under_podman() {
    let started = Instant::now();
    let image = released_image();
    let (repository, digest) = image.split_once('@').unwrap();
    let id = std::process::id();
    let network = format!("engine-chart-{id}");
    let db = format!("engine-chart-db-{id}");
    let mut cleanup = Cleanup {
        network: network.clone(),
        containers: vec![db.clone()],
        pods: Vec::new(),
    };
    // A secret left by an interrupted run would make kube play refuse.
    let _ = podman().args(["secret", "rm", "server-db"]).output();
    run_ok(podman().args(["network", "create", &network]));
    run_ok(podman().args([
        "run",
        "-d",
        "--name",
        &db,
        "--network",
        &network,
        "-e",
        "POSTGRES_USER=app",
        "-e",
        "POSTGRES_DB=app",
        "-e",
        "POSTGRES_PASSWORD=chart0",
        POSTGRES_IMAGE,
    ]));

    let home = tempfile::tempdir().unwrap();
    let rendered = run_ok(
        Command::new(tool("helm"))
            .env("HELM_CACHE_HOME", home.path().join("cache"))
            .env("HELM_CONFIG_HOME", home.path().join("config"))
            .env("HELM_DATA_HOME", home.path().join("data"))
            .args(["template", "server"])
            .arg(support::workspace_root().join("deploy/helm/server"))
            .args(["--namespace", "server", "--set", "replicaCount=1"])
            .args([
                "--set",
                "database.existingSecret=server-db",
                "--set",
                "bootstrap.enabled=true",
            ])
            .args(["--set", &format!("image.repository={repository}")])
            .args(["--set", &format!("image.digest={digest}")]),
    );
    let docs = YamlLoader::load_from_str(&rendered).unwrap();
    let of_kind = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("no {kind} rendered"))
            .clone()
    };
    let deployment = of_kind("Deployment");
    let job = of_kind("Job");
    // The token's only copy is the Job's log: the Job must outlive success.
    assert_eq!(
        job["metadata"]["annotations"]["helm.sh/hook-delete-policy"].as_str(),
        Some("before-hook-creation")
    );

    // The Secret the chart's database.existingSecret names. podman 4.3's
    // `kube play` of a Secret stores it in a form its own secretKeyRef
    // lookup then rejects ("is not valid JSON"); the lookup reads a podman
    // secret holding {"key": base64(value)}, so the secret is made so.
    let url = format!("postgres://app:chart0@{db}:5432/app?sslmode=disable");
    let secret = serde_json::json!({
        "url": base64::engine::general_purpose::STANDARD.encode(url)
    });
    let mut create = podman();
    create
        .args(["secret", "create", "server-db", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let mut child = create.spawn().unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(secret.to_string().as_bytes())
            .unwrap();
    }
    assert!(
        child.wait().unwrap().success(),
        "podman secret create failed"
    );
    let dir = tempfile::tempdir().unwrap();

    // The bootstrap Job's pod template, as a Pod, first: as a pre-install
    // hook, it runs before the Deployment's pods.
    let mut pod = Hash::new();
    pod.insert(key("apiVersion"), key("v1"));
    pod.insert(key("kind"), key("Pod"));
    let mut metadata = Hash::new();
    metadata.insert(key("name"), key("server-bootstrap"));
    pod.insert(key("metadata"), Yaml::Hash(metadata));
    pod.insert(key("spec"), job["spec"]["template"]["spec"].clone());
    let bootstrap_file = dir.path().join("bootstrap.yaml");
    std::fs::write(&bootstrap_file, emit(&Yaml::Hash(pod)) + "\n").unwrap();
    cleanup.pods.push("server-bootstrap".to_owned());
    let bootstrap = kube_play(&bootstrap_file, &network);
    assert_eq!(bootstrap.len(), 1, "{bootstrap:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while inspect(&bootstrap[0], "{{.State.Status}}") != "exited" {
        assert!(
            Instant::now() < deadline,
            "the bootstrap pod did not finish within 60s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(inspect(&bootstrap[0], "{{.State.ExitCode}}"), "0");
    // Where the operator reads it: the finished pod's log, which, as
    // `kubectl logs`, also holds the server's own log lines (here the
    // retries while the database started). The token is the one line of
    // 64 hex characters.
    let log = run_ok(podman().args(["logs", &bootstrap[0]]));
    let tokens: Vec<&str> = log
        .lines()
        .filter(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    assert_eq!(
        tokens.len(),
        1,
        "the bootstrap log has no single token:\n{log}"
    );

    // The Deployment.
    let deployment_file = dir.path().join("deployment.yaml");
    std::fs::write(&deployment_file, emit(&deployment) + "\n").unwrap();
    let name = deployment["metadata"]["name"].as_str().unwrap();
    cleanup.pods.push(format!("{name}-pod-0"));
    let containers = kube_play(&deployment_file, &network);
    assert_eq!(containers.len(), 1, "{containers:?}");
    let server = &containers[0];
    let pid = inspect(server, "{{.State.Pid}}");
    assert_eq!(status_line(&pid, "Uid:"), "65532 65532 65532 65532");
    assert_eq!(status_line(&pid, "CapEff:"), "0000000000000000");
    assert_eq!(inspect(server, "{{.HostConfig.ReadonlyRootfs}}"), "true");

    // The probes' paths, on the pod's address in our network.
    let infra = run_ok(podman().args([
        "pod",
        "inspect",
        "--format",
        "{{.InfraContainerID}}",
        &format!("{name}-pod-0"),
    ]));
    let ip = inspect(
        infra.trim(),
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
    );
    let probes = &deployment["spec"]["template"]["spec"]["containers"][0];
    let deadline = Instant::now() + Duration::from_secs(30);
    for probe in ["livenessProbe", "readinessProbe"] {
        let path = probes[probe]["httpGet"]["path"].as_str().unwrap();
        loop {
            let status = http_status(&ip, path);
            if status == Some(200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{probe} {path} on {ip}:8080 answers {status:?}: {}",
                String::from_utf8_lossy(&run(podman().args(["logs", server])).stderr)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    eprintln!("chart under podman: {:?}", started.elapsed());
}
