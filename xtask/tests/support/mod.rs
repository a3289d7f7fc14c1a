//! Shared test bed: real tools, started on free loopback ports, stopped on
//! drop. A missing tool fails the test with the command that installs it;
//! nothing here skips.

#![allow(dead_code)]

pub mod advisory_db;
pub mod auth_registry;
pub mod engine;
pub mod github_oidc;
pub mod pg;
pub mod proxy;
mod referrers_registry;
pub mod scripted;
pub mod sigstore;
pub mod token_service;
pub mod workflow;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The path of a required tool, found as the xtask finds it: on PATH and
/// where `go install`, `cargo install` and pip put binaries.
pub fn tool(name: &str) -> PathBuf {
    xtask::support::tools::find_opt(name).unwrap_or_else(|| {
        panic!("required tool `{name}` is not installed: run `cargo xtask setup`")
    })
}

/// PATH, then where `go install`, `cargo install` and pip put binaries.
pub fn tool_path() -> Vec<PathBuf> {
    std::env::split_paths(&xtask::support::tools::augmented_path()).collect()
}

/// A free TCP port on 127.0.0.1. The port is released before it is used,
/// so a race is possible but harmless: the server start then fails loudly.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot find a free loopback port")
}

/// The CNCF distribution registry (Debian's `docker-registry`), serving
/// plain HTTP on 127.0.0.1 with its storage in a temporary directory.
pub struct Registry {
    pub port: u16,
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    log: PathBuf,
    /// The `auth:` section of the configuration, kept for `restart`.
    auth: String,
    /// What serves: `docker-registry`, or the in-memory referrers registry,
    /// which cannot restart with its content.
    program: &'static str,
    access_log: bool,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        Registry::start_in(dir, free_port(), String::new(), false)
    }

    /// Distribution with its access log on: one line per request in
    /// `log_text()`, to count what a push sent.
    pub fn start_with_access_log() -> Registry {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        Registry::start_in(dir, free_port(), String::new(), true)
    }

    /// What the registry wrote to its stdout and stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).expect("cannot read the registry log")
    }

    fn start_in(dir: tempfile::TempDir, port: u16, auth: String, access_log: bool) -> Registry {
        let storage = dir.path().join("storage");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: {}\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                !access_log,
                storage.display()
            ),
        )
        .expect("cannot write the registry configuration");
        let log = dir.path().join("registry.log");
        let log_file = std::fs::File::create(&log).expect("cannot create the registry log");
        let child = Command::new(tool("docker-registry"))
            .arg("serve")
            .arg(&config)
            .stdout(log_file.try_clone().expect("cannot clone a file handle"))
            .stderr(log_file)
            .spawn()
            .expect("cannot start docker-registry");
        let mut registry = Registry {
            port,
            child: Some(child),
            dir,
            log,
            auth,
            program: "docker-registry",
            access_log,
        };
        registry.wait_until_ready();
        registry
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "{} exited with {status}: {}",
                        self.program,
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    );
                }
            }
            // 401 from a registry that wants credentials: it is up too.
            if matches!(http_status(self.port, "/v2/"), Some(200 | 401)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} did not answer on 127.0.0.1:{} within 15s",
            self.program, self.port
        );
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A repository in this registry, such as `127.0.0.1:PORT/name`.
    pub fn repo(&self, name: &str) -> String {
        format!("{}/{name}", self.host())
    }

    /// Kills the registry, as a crash would; the storage is kept.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same storage.
    pub fn restart(&mut self) {
        assert_eq!(
            self.program, "docker-registry",
            "the referrers registry keeps its content in memory and cannot restart with it"
        );
        self.stop();
        let port = self.port;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        let auth = std::mem::take(&mut self.auth);
        *self = Registry::start_in(dir, port, auth, self.access_log);
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The status of a plain-HTTP GET on loopback, or None if nothing answered.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).map(|(status, _)| status)
}

/// A plain-HTTP GET on loopback: the status and the body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Runs a command and returns its output, panicking with both streams if
/// it cannot be started.
pub fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The workspace root: this checkout, or the one `XTASK_TEST_WORKSPACE`
/// names, so that a test can run other test binaries against a clone (the
/// adopt test checks a renamed clone so).
pub fn workspace_root() -> PathBuf {
    if let Some(dir) = std::env::var_os(WORKSPACE_OVERRIDE) {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// `[workspace.metadata.release]` of the workspace, read by the xtask's own
/// loader, so that no test writes the project's name: `cargo xtask adopt`
/// renames it in one place.
pub fn release_config() -> &'static xtask::support::config::Config {
    static CONFIG: std::sync::OnceLock<xtask::support::config::Config> = std::sync::OnceLock::new();
    CONFIG.get_or_init(|| {
        let metadata = cargo_metadata::MetadataCommand::new()
            .no_deps()
            .current_dir(workspace_root())
            .exec()
            .expect("cargo metadata runs in the workspace");
        xtask::support::config::Config::from_metadata(&metadata)
            .expect("[workspace.metadata.release] is valid")
    })
}

/// The image repository the release publishes, such as
/// `ghcr.io/OWNER/NAME`.
pub fn release_image() -> String {
    release_config().image.clone()
}

/// The image repository without its registry host, such as
/// `OWNER/NAME`.
pub fn release_image_path() -> String {
    let image = release_image();
    image
        .split_once('/')
        .map(|(_, path)| path.to_owned())
        .unwrap_or(image)
}

/// The source repository URL of the workspace (`repository` in Cargo.toml).
pub fn source_repository() -> String {
    release_config().repository.clone()
}

/// `owner/name` of the source repository on its forge.
pub fn source_slug() -> String {
    let url = source_repository();
    let mut parts = url.trim_end_matches('/').rsplitn(3, '/');
    let name = parts.next().unwrap_or_default();
    let owner = parts.next().unwrap_or_default();
    format!("{owner}/{name}")
}

/// The variable `workspace_root` reads first.
pub const WORKSPACE_OVERRIDE: &str = "XTASK_TEST_WORKSPACE";

/// `cargo xtask …`, as the built xtask binary, run from the workspace root.
/// The build directory `cargo xtask test` shares between clean clones is
/// not for the workspace: its uncommitted edits, built there, would look
/// fresh to a clone made earlier at the same commit.
pub fn xtask() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command
        .current_dir(workspace_root())
        .env_remove(xtask::support::config::BUILD_DIR_VARIABLE);
    command
}

/// Runs `cargo xtask dist` in the workspace once per test binary (it is
/// incremental, so later test binaries pay seconds) and returns the parsed
/// dist.json.
pub fn dist() -> &'static serde_json::Value {
    static DIST: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    DIST.get_or_init(|| {
        run_ok(xtask().args(["dist"]));
        let path = workspace_root().join("target/dist/dist.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_json::from_str(&text).expect("dist.json is valid JSON")
    })
}

/// `git rev-parse HEAD` of the workspace.
pub fn head_sha() -> String {
    run_ok(
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(workspace_root()),
    )
    .trim()
    .to_owned()
}

/// The server version from server/Cargo.toml.
pub fn server_version() -> String {
    let manifest = std::fs::read_to_string(workspace_root().join("server/Cargo.toml"))
        .expect("read server/Cargo.toml");
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("server/Cargo.toml has a version line")
        .to_owned()
}

/// A two-platform base image made with crane only, so that nothing of ours
/// is involved: one small layer per platform. Returns the reference and,
/// per platform (`amd64`, `arm64`), the base layer digests.
pub fn seed_base(
    registry: &Registry,
    name: &str,
) -> (String, std::collections::BTreeMap<String, Vec<String>>) {
    let crane = tool("crane");
    let work = tempfile::tempdir().expect("tempdir");
    let repo = registry.repo(name);
    let mut layers = std::collections::BTreeMap::new();
    for arch in ["amd64", "arm64"] {
        let root = work.path().join(arch);
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/base-release"),
            format!("test base for {arch}\n"),
        )
        .unwrap();
        let tar = work.path().join(format!("{arch}.tar"));
        run_ok(
            Command::new("tar")
                .args([
                    "--sort=name",
                    "--mtime=@0",
                    "--owner=0",
                    "--group=0",
                    "--numeric-owner",
                    "-C",
                ])
                .arg(&root)
                .arg("-cf")
                .arg(&tar)
                .arg("etc"),
        );
        run_ok(
            Command::new(&crane)
                .args(["append", "--insecure", "--oci-empty-base", "-f"])
                .arg(&tar)
                .args(["-t", &format!("{repo}:{arch}-unset")]),
        );
        run_ok(Command::new(&crane).args([
            "mutate",
            "--insecure",
            "--set-platform",
            &format!("linux/{arch}"),
            &format!("{repo}:{arch}-unset"),
            "-t",
            &format!("{repo}:{arch}"),
        ]));
        let manifest: serde_json::Value =
            serde_json::from_str(&run_ok(Command::new(&crane).args([
                "manifest",
                "--insecure",
                &format!("{repo}:{arch}"),
            ])))
            .unwrap();
        layers.insert(
            arch.to_owned(),
            manifest["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].as_str().unwrap().to_owned())
                .collect(),
        );
    }
    run_ok(Command::new(&crane).args([
        "index",
        "append",
        "--insecure",
        "-m",
        &format!("{repo}:amd64"),
        "-m",
        &format!("{repo}:arm64"),
        "-t",
        &format!("{repo}:latest"),
    ]));
    (format!("{repo}:latest"), layers)
}

/// A TCP proxy in front of a registry that kills the registry process the
/// first time a client sends `trigger` (for example the first manifest
/// PUT), as a crash in the middle of a push would.
pub struct KillingProxy {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub fired: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl KillingProxy {
    pub fn start(
        registry: std::sync::Arc<std::sync::Mutex<Registry>>,
        trigger: &'static str,
    ) -> KillingProxy {
        KillingProxy::start_at(registry, trigger, 0)
    }

    /// On a given port, such as the one of a proxy just dropped, so that a
    /// re-run reaches the registry under the same name; waits for the port.
    pub fn start_at(
        registry: std::sync::Arc<std::sync::Mutex<Registry>>,
        trigger: &'static str,
        port: u16,
    ) -> KillingProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(listener) => break listener,
                Err(e) if Instant::now() > deadline => panic!("cannot bind the proxy: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let port = listener.local_addr().unwrap().port();
        let upstream = registry.lock().unwrap().port;
        let stop = Arc::new(AtomicBool::new(false));
        let fired = Arc::new(AtomicBool::new(false));
        let fired2 = fired.clone();
        let triggered = Arc::new(AtomicBool::new(false));
        proxy::forward_connections(listener, upstream, stop.clone(), move |client, server| {
            let (registry, fired, triggered) =
                (registry.clone(), fired2.clone(), triggered.clone());
            proxy::forward_watching(client, server, trigger, move || {
                // Exactly once, and `fired` only once the registry is dead,
                // so that a test restarting it after seeing `fired` cannot
                // be raced by this thread.
                if !triggered.swap(true, Ordering::SeqCst) {
                    registry.lock().unwrap().stop();
                    fired.store(true, Ordering::SeqCst);
                }
                proxy::AfterTrigger::Disconnect
            });
        });
        KillingProxy { port, stop, fired }
    }
}

impl KillingProxy {
    /// Whether the proxy killed the registry. The client sees its
    /// connection drop while the proxy is still reaping the registry, so a
    /// client that has already exited may be ahead of `fired` by a moment.
    pub fn has_fired(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.fired.load(std::sync::atomic::Ordering::SeqCst) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for KillingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `skopeo inspect --raw` of a reference on a plain-HTTP test registry.
pub fn skopeo_raw(reference: &str) -> serde_json::Value {
    let out = run_ok(Command::new(tool("skopeo")).args([
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{reference}"),
    ]));
    serde_json::from_str(&out).expect("skopeo printed JSON")
}

/// One platform of `reference` copied by skopeo into the OCI layout
/// `dir/layout-ARCH`, tagged `img`; returns the layout's path.
pub fn copy_platform_to_layout(reference: &str, arch: &str, dir: &Path) -> PathBuf {
    let layout = dir.join(format!("layout-{arch}"));
    run_ok(
        Command::new(tool("skopeo"))
            .args([
                "copy",
                "--src-tls-verify=false",
                "--override-arch",
                arch,
                &format!("docker://{reference}"),
            ])
            .arg(format!("oci:{}:img", layout.display())),
    );
    layout
}

/// The platform manifests of a multi-arch index, by architecture
/// (`amd64`, `arm64`), as skopeo sees them.
pub fn platform_digests(reference: &str) -> std::collections::BTreeMap<String, String> {
    skopeo_raw(reference)["manifests"]
        .as_array()
        .expect("an index has manifests")
        .iter()
        .map(|m| {
            (
                m["platform"]["architecture"].as_str().unwrap().to_owned(),
                m["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The variables through which GitHub Actions tells the xtasks what is
/// being built; tests remove them so that they run the same anywhere.
pub const GITHUB_ACTIONS_ENV: &[&str] = &[
    "GITHUB_ACTIONS",
    "GITHUB_EVENT_NAME",
    "GITHUB_EVENT_PATH",
    "GITHUB_REF",
    "GITHUB_REF_NAME",
    "GITHUB_REF_TYPE",
    "GITHUB_SHA",
    "GITHUB_TOKEN",
    "ACTIONS_ID_TOKEN_REQUEST_URL",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
];

/// The tags of a repository, sorted, as skopeo sees them; empty when the
/// repository does not exist.
pub fn skopeo_tags(repo: &str) -> Vec<String> {
    let out = run(Command::new(tool("skopeo")).args([
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{repo}"),
    ]));
    if !out.status.success() {
        return Vec::new();
    }
    let parsed: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("skopeo printed JSON");
    let mut tags: Vec<String> = parsed["Tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    tags.sort();
    tags
}

/// Where each tag of `repo` points, via skopeo.
pub fn tag_digests(repo: &str) -> std::collections::BTreeMap<String, String> {
    skopeo_tags(repo)
        .into_iter()
        .map(|tag| {
            let digest = run_ok(Command::new(tool("skopeo")).args([
                "inspect",
                "--tls-verify=false",
                "--raw",
                &format!("docker://{repo}:{tag}"),
            ]));
            let digest = format!("sha256:{}", sha256_hex(digest.as_bytes()));
            (tag, digest)
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    xtask::support::archive::sha256_hex(bytes)
}

/// `archive` unpacked, changed by `edit` in its folder, and packed again
/// into `out`, as someone altering a bundle in transit would.
pub fn forge_archive(archive: &Path, out: &Path, edit: impl FnOnce(&Path)) {
    let dir = tempfile::tempdir().expect("tempdir");
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(dir.path()),
    );
    edit(dir.path());
    // verify/ is there only when the bundle carried trust.
    let entries: Vec<&str> = ["oci-layout", "index.json", "blobs", "verify"]
        .into_iter()
        .filter(|entry| dir.path().join(entry).exists())
        .collect();
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(out)
            .arg("-C")
            .arg(dir.path())
            .args(entries),
    );
}

/// [`forge_archive`] with `edit` applied to the entries of its index.json.
pub fn forge_index(archive: &Path, out: &Path, edit: impl FnOnce(&mut Vec<serde_json::Value>)) {
    forge_archive(archive, out, |dir| {
        let path = dir.join("index.json");
        let mut index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("index.json"))
                .expect("index.json is JSON");
        edit(index["manifests"].as_array_mut().expect("manifests"));
        std::fs::write(&path, serde_json::to_vec(&index).expect("JSON")).expect("write");
    });
}

/// What docs/air-gapped.md's procedure may use, and nothing else.
const PROCEDURE_TOOLS: &[&str] = &[
    "crane",
    "cosign",
    "sh",
    "tar",
    "sha256sum",
    "mkdir",
    "grep",
    "cut",
    "cmp",
    "jq",
];

/// Runs a procedure in `dir` with `sh -eux` (stderr shows each command
/// before it runs, so the last one shown is the one that failed), with only
/// [`PROCEDURE_TOOLS`] on PATH and an empty HOME: no checkout, no cargo, no
/// xtask.
pub fn run_procedure(dir: &Path, script: &str) -> Output {
    let bin = dir.join(".tools");
    std::fs::create_dir(&bin).expect("a tools folder");
    for name in PROCEDURE_TOOLS {
        std::os::unix::fs::symlink(tool(name), bin.join(name)).expect("a tool link");
    }
    let home = dir.join(".home");
    std::fs::create_dir(&home).expect("a home folder");
    run(Command::new(bin.join("sh"))
        .args(["-eux", "-c", script])
        .current_dir(dir)
        .env_clear()
        .env("PATH", &bin)
        .env("HOME", &home))
}

/// The keyless variant of docs/air-gapped.md's crane-and-cosign procedure,
/// as the page says to write it: its `sh` block, with the trusted root the
/// operator brought compared with the archive's instead of the key, and
/// `--key cosign.pub --insecure-ignore-tlog=true` replaced by that root
/// and the identity of the page's `text` block. This Sigstore has a
/// timestamp authority and no Rekor or CT log, so the signed timestamp
/// stands in for the log and no SCT is asked for (docs/verifying.md, "Your
/// own Sigstore"). The example names become the test's, and plain HTTP is
/// allowed on loopback.
pub fn keyless_air_gap_procedure(repo: &str, version: &str, slug: &str, issuer: &str) -> String {
    let page = std::fs::read_to_string(workspace_root().join("docs/air-gapped.md"))
        .expect("docs/air-gapped.md exists");
    let block = |fence: &str| -> String {
        let blocks: Vec<&str> = page.split(fence).skip(1).collect();
        assert_eq!(blocks.len(), 1, "docs/air-gapped.md has one {fence} block");
        blocks[0].split("```").next().unwrap().to_owned()
    };
    let identity = block("```text\n")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .replace("https://token.actions.githubusercontent.com", issuer);
    let mut script = block("```sh\n");
    for (from, to) in [
        (
            "cmp cosign.pub bundle/verify/cosign.pub".to_owned(),
            "cmp trusted_root.json bundle/verify/trusted_root.json".to_owned(),
        ),
        (
            "--key cosign.pub --insecure-ignore-tlog=true".to_owned(),
            format!("--trusted-root trusted_root.json {identity} --use-signed-timestamps --insecure-ignore-tlog=true --insecure-ignore-sct=true"),
        ),
        ("registry.internal/rust-release".to_owned(), repo.to_owned()),
        // The docs' example repository is the configured one (adopt renames it).
        (source_slug(), slug.to_owned()),
        ("v1.2.3".to_owned(), version.to_owned()),
        ("\" = 1.2.3".to_owned(), format!("\" = {}", &version[1..])),
        ("crane push ".to_owned(), "crane push --insecure ".to_owned()),
        ("crane tag ".to_owned(), "crane tag --insecure ".to_owned()),
        ("crane digest ".to_owned(), "crane digest --insecure ".to_owned()),
        ("crane manifest ".to_owned(), "crane manifest --insecure ".to_owned()),
        ("cosign verify ".to_owned(), "cosign verify --allow-insecure-registry --allow-http-registry ".to_owned()),
        ("cosign verify-attestation ".to_owned(), "cosign verify-attestation --allow-insecure-registry --allow-http-registry ".to_owned()),
    ] {
        assert!(script.contains(&from), "the procedure has no `{from}`");
        script = script.replace(&from, &to);
    }
    script
}

/// An operator's directory for a keyless bundle: the archive, a `.sha256`
/// made beside it (as the connected side publishes it, or as an attacker
/// recomputes it), and the trusted root the operator has from their own
/// Sigstore, never the archive's copy.
pub fn carry_in_keyless(archive: &Path, trusted_root: &Path) -> tempfile::TempDir {
    let operator = tempfile::tempdir().expect("tempdir");
    let name = archive
        .file_name()
        .and_then(|n| n.to_str())
        .expect("an archive file name");
    std::fs::copy(archive, operator.path().join(name)).expect("copy the archive");
    let sum = run_ok(
        Command::new("sha256sum")
            .arg(name)
            .current_dir(archive.parent().expect("the archive's folder")),
    );
    std::fs::write(operator.path().join(format!("{name}.sha256")), sum).expect("write .sha256");
    std::fs::copy(trusted_root, operator.path().join("trusted_root.json"))
        .expect("copy the trusted root");
    operator
}

/// The last line of a command's stderr, where the xtask's error is; the
/// command must have failed.
pub fn last_error_line(output: &Output) -> String {
    assert!(!output.status.success(), "it succeeded");
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}
