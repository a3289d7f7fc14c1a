//! The container engine: podman's Docker-compatible API service, started
//! once per test binary on a socket of its own, and the docker CLI (with
//! its compose plugin) pointed at it through DOCKER_HOST.
//!
//! The service runs under a small `sh` that holds the test binary's end of
//! a pipe: when the test binary exits, for any reason, the pipe closes and
//! the shell stops the service by its PID. Podman 4.3 runs healthchecks
//! from systemd timers, and nothing here runs systemd; a thread of the
//! test binary does what the timer would, `podman healthcheck run` on each
//! running container that has one, every second.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{run, run_ok, tool};

pub const POSTGRES_IMAGE: &str = xtask::setup::images::POSTGRES_IMAGE;
pub const CADDY_IMAGE: &str = xtask::setup::images::CADDY_IMAGE;
pub const STATIC_BASE_IMAGE: &str = xtask::setup::images::STATIC_BASE_IMAGE;

pub struct Engine {
    pub socket: PathBuf,
    /// A loopback registry the engine pulls from over plain HTTP (it is
    /// `insecure` in the service's registries.conf), so that `docker
    /// compose pull` works as against a real registry.
    pub registry: super::Registry,
    _dir: tempfile::TempDir,
    _service: Child,
}

/// The engine of this test binary, started on first use.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let podman = tool("podman");
        check_images(&podman);
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = super::Registry::start();
        let registries_conf = dir.path().join("registries.conf");
        std::fs::write(
            &registries_conf,
            format!(
                "unqualified-search-registries = []\n\n[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
                registry.host()
            ),
        )
        .expect("cannot write registries.conf");
        let socket = dir.path().join("podman.sock");
        let url = format!("unix://{}", socket.display());
        let watcher = "\"$@\" & service=$!; cat >/dev/null; kill $service; wait $service";
        let service = Command::new("sh")
            .args(["-c", watcher, "sh"])
            .arg(&podman)
            .args(["system", "service", "--time=0", &url])
            .env("CONTAINERS_REGISTRIES_CONF", &registries_conf)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("service.log")).expect("log"))
            .spawn()
            .expect("cannot start podman system service");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "podman system service did not create {} within 30s: {}",
                socket.display(),
                std::fs::read_to_string(dir.path().join("service.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::spawn(move || run_healthchecks(&podman));
        Engine {
            socket,
            registry,
            _dir: dir,
            _service: service,
        }
    })
}

fn check_images(podman: &Path) {
    for image in [POSTGRES_IMAGE, CADDY_IMAGE, STATIC_BASE_IMAGE] {
        let exists = run(Command::new(podman).args(["image", "exists", image]));
        assert!(
            exists.status.success(),
            "podman has no {image}: run `cargo xtask setup`, which builds it from Debian packages"
        );
    }
}

/// What systemd's timer does for podman: a healthcheck per second on each
/// running container that defines one.
fn run_healthchecks(podman: &Path) {
    loop {
        // Every running container: those without a healthcheck refuse,
        // which costs nothing.
        let listed = Command::new(podman)
            .args(["ps", "--format", "{{.ID}}"])
            .output();
        if let Ok(listed) = listed {
            for id in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
                let _ = Command::new(podman)
                    .args(["healthcheck", "run", id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The docker CLI, talking to the engine.
pub fn docker() -> Command {
    let engine = engine();
    let mut command = Command::new(tool("docker"));
    command
        .env("DOCKER_HOST", format!("unix://{}", engine.socket.display()))
        .env_remove("DOCKER_CONTEXT");
    command
}

/// podman itself, for what the docker CLI cannot say (a pull with TLS off
/// from a loopback registry).
pub fn podman() -> Command {
    Command::new(tool("podman"))
}

/// `docker inspect --format FORMAT NAME`, trimmed.
pub fn inspect(name: &str, format: &str) -> String {
    run_ok(docker().args(["inspect", "--format", format, name]))
        .trim()
        .to_owned()
}

/// Waits until a container's health is `healthy`, or panics with its logs.
pub fn wait_healthy(name: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let status = inspect(name, "{{.State.Health.Status}}");
        if status == "healthy" {
            return;
        }
        if Instant::now() > deadline {
            let logs = run(docker().args(["logs", name]));
            panic!(
                "{name} is {status:?}, not healthy, after {within:?}:\n{}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Removes a container on drop, whatever the test did.
pub struct Container(pub String);

impl Drop for Container {
    fn drop(&mut self) {
        // podman itself: through the API, `docker rm -f` left stopped
        // containers behind.
        let _ = podman().args(["rm", "-f", &self.0]).output();
    }
}

/// The static base, pushed to `registry` for `cargo xtask image --base`.
pub fn push_static_base(registry: &super::Registry) -> String {
    let reference = registry.repo("distroless/static-debian13:nonroot");
    run_ok(podman().args([
        "push",
        "--tls-verify=false",
        "--format",
        "oci",
        STATIC_BASE_IMAGE,
        &format!("docker://{reference}"),
    ]));
    reference
}

/// The released image, built once per test binary on the static base and
/// pushed by digest to the engine's loopback registry, then pulled from it
/// into the engine's store. Returns `repo@digest`.
pub fn released_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let registry = &engine().registry;
        super::dist();
        let base = push_static_base(registry);
        let out = tempfile::tempdir().expect("tempdir");
        let json = run_ok(
            super::xtask()
                .args([
                    "image",
                    "--push",
                    "--insecure",
                    "--json",
                    "--platform",
                    "linux/amd64",
                ])
                .args(["--base", &base, "--image", &registry.repo("app")])
                .arg("--out")
                .arg(out.path()),
        );
        let json: serde_json::Value = serde_json::from_str(&json).expect("image --json");
        let digest = json["digest"].as_str().expect("a digest").to_owned();
        let reference = format!("{}@{digest}", registry.repo("app"));
        run_ok(docker().args(["pull", "--quiet", &reference]));
        reference
    })
}

/// The `Healthcheck.Test` of an image's config, read from its registry.
pub fn image_healthcheck(reference: &str) -> Vec<String> {
    let config = run_ok(Command::new(tool("crane")).args(["config", "--insecure", reference]));
    let config: serde_json::Value = serde_json::from_str(&config).expect("an image config");
    config["config"]["Healthcheck"]["Test"]
        .as_array()
        .unwrap_or_else(|| panic!("{reference} has no healthcheck in its config: {config}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// One engine test at a time within a test binary: with two at once, a
/// compose stack's proxy answered 503 to requests that pass when it runs
/// alone (podman 4.3, aardvark-dns 1.4; not understood yet).
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
