//! The released image under a real container engine: podman with runc,
//! driven by the docker CLI through podman's Docker-compatible API
//! (support/engine.rs). The image is built once per test binary on the
//! Debian-built static base, pushed by digest to a loopback registry and
//! pulled from there.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::engine::{docker, inspect, released_image, wait_healthy, Container};
use support::{free_port, run, run_ok, server_version};

/// The fields of a `/proc/PID/status` line, such as `Uid:`.
fn status_line(pid: &str, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// One HTTP/1.1 request on its own connection: the status and the headers.
fn request(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    read_response(&mut stream)
}

fn read_response(stream: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let n = stream.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buffer[..n]);
        if response.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    Ok((status, text.to_ascii_lowercase()))
}

#[test]
fn the_image_runs_as_nonroot_on_a_read_only_root_turns_healthy_and_drains_on_stop() {
    let _turn = support::engine::one_at_a_time();
    let started = Instant::now();
    let image = released_image();
    let built = started.elapsed();

    // `version`, as the image's entrypoint runs it.
    let version = run_ok(docker().args(["run", "--rm", image, "version"]));
    assert!(
        version.starts_with(&format!("server {}", server_version())),
        "{version}"
    );

    let name = format!("engine-image-{}", std::process::id());
    let _cleanup = Container(name.clone());
    let port = free_port();
    // Podman 4.3 keeps an image's HEALTHCHECK only for Docker-format
    // images and drops it from OCI ones, which ours is: the test reads it
    // from the image's config in the registry and gives that very command
    // to the engine, in podman's exec form (the docker CLI's --health-cmd
    // would wrap it in a shell, which the image does not have).
    let healthcheck = support::engine::image_healthcheck(image);
    assert_eq!(healthcheck, ["CMD", "/server", "healthcheck"]);
    let health_cmd = serde_json::to_string(&healthcheck[1..]).unwrap();
    run_ok(support::engine::podman().args([
        "run",
        "-d",
        "--health-cmd",
        &health_cmd,
        "--name",
        &name,
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "-e",
        "SERVER_DRAIN_DELAY=3s",
        "-e",
        "SERVER_SHUTDOWN_TIMEOUT=5s",
        "-p",
        &format!("127.0.0.1:{port}:8080"),
        image,
    ]));
    wait_healthy(&name, Duration::from_secs(30));

    // The image's own user, root file system and capabilities, as the
    // kernel sees the process.
    assert_eq!(inspect(&name, "{{.Config.User}}"), "65532:65532");
    assert_eq!(inspect(&name, "{{.HostConfig.ReadonlyRootfs}}"), "true");
    let pid = inspect(&name, "{{.State.Pid}}");
    assert_eq!(status_line(&pid, "Uid:"), "65532 65532 65532 65532");
    assert_eq!(status_line(&pid, "Gid:"), "65532 65532 65532 65532");
    assert_eq!(status_line(&pid, "CapEff:"), "0000000000000000");
    assert_eq!(status_line(&pid, "CapBnd:"), "0000000000000000");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).unwrap();
    let root = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/"))
        .unwrap();
    assert!(
        root.split_whitespace()
            .nth(3)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "{root}"
    );
    assert_eq!(request(port, "/healthz").unwrap().0, 200);

    // A request in flight: its headers half sent before the stop, the
    // rest after the listener has closed.
    let mut in_flight = TcpStream::connect(("127.0.0.1", port)).unwrap();
    in_flight
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(in_flight, "GET /version HTTP/1.1\r\nHost: localhost\r\n").unwrap();

    let stop_name = name.clone();
    let stopped = std::thread::spawn(move || {
        let begun = Instant::now();
        let output = run(docker().args(["stop", "-t", "20", &stop_name]));
        (output, begun.elapsed())
    });
    std::thread::sleep(Duration::from_millis(800));
    // Draining: served, with `Connection: close`, and not ready.
    let (status, head) = request(port, "/healthz").unwrap();
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(request(port, "/readyz").unwrap().0, 503);

    // After the delay: new connections are refused.
    std::thread::sleep(Duration::from_millis(3500));
    assert!(
        request(port, "/healthz").is_err(),
        "a new connection was served after SERVER_DRAIN_DELAY"
    );
    in_flight.write_all(b"\r\n").unwrap();
    let (status, head) = read_response(&mut in_flight).unwrap();
    assert_eq!(
        status, 200,
        "the request in flight was not answered: {head}"
    );

    let (output, took) = stopped.join().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(inspect(&name, "{{.State.ExitCode}}"), "0");
    assert!(
        took < Duration::from_secs(15),
        "docker stop took {took:?}: the server did not exit within its grace period"
    );
    eprintln!(
        "image built and pulled in {built:?}; the whole test {:?}",
        started.elapsed()
    );
}

/// A copy of the reference deployment in a directory of its own, run as a
/// compose project with a unique name; `down -v` on drop.
///
/// The proxy is Debian's Caddy 2.6.2: the pinned caddy:2.11.7-alpine cannot
/// be pulled here. deploy/Caddyfile uses only what both versions read the
/// same way (`encode`, `header`, `respond`, and `reverse_proxy` with
/// `health_uri`, `health_interval`, `lb_try_duration`, `lb_try_interval`
/// and `flush_interval`); nothing added after 2.6 is used, so a file that
/// serves here serves the same on 2.11.7.
struct Stack {
    dir: tempfile::TempDir,
    project: String,
    https_port: u16,
    metrics_port: u16,
}

impl Stack {
    /// docker-compose.yml and deploy/ as shipped; `.env` from .env.example
    /// with the images, the password and free ports as the only changes.
    fn new(server_image: &str) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let root = support::workspace_root();
        std::fs::create_dir(dir.path().join("deploy")).unwrap();
        std::fs::copy(
            root.join("docker-compose.yml"),
            dir.path().join("docker-compose.yml"),
        )
        .unwrap();
        for file in ["Caddyfile", "Caddyfile.metrics"] {
            std::fs::copy(
                root.join("deploy").join(file),
                dir.path().join("deploy").join(file),
            )
            .unwrap();
        }
        let (http_port, https_port, metrics_port) = (free_port(), free_port(), free_port());
        let example = std::fs::read_to_string(root.join(".env.example")).unwrap();
        let changes = [
            ("SERVER_IMAGE", server_image.to_owned()),
            ("PROXY_IMAGE", support::engine::CADDY_IMAGE.to_owned()),
            ("POSTGRES_IMAGE", support::engine::POSTGRES_IMAGE.to_owned()),
            ("POSTGRES_PASSWORD", "enginetest0".to_owned()),
            ("HTTP_PORT", http_port.to_string()),
            ("HTTPS_PORT", https_port.to_string()),
            ("METRICS_PORT", metrics_port.to_string()),
        ];
        let env: Vec<String> = example
            .lines()
            .map(|line| {
                changes
                    .iter()
                    .find(|(name, _)| line.starts_with(&format!("{name}=")))
                    .map_or_else(
                        || line.to_owned(),
                        |(name, value)| format!("{name}={value}"),
                    )
            })
            .collect();
        std::fs::write(dir.path().join(".env"), env.join("\n") + "\n").unwrap();
        Stack {
            dir,
            project: format!("engine-{}-{}", std::process::id(), free_port()),
            https_port,
            metrics_port,
        }
    }

    fn compose(&self) -> std::process::Command {
        let mut command = docker();
        command
            .current_dir(self.dir.path())
            .args(["compose", "-p", &self.project]);
        command
    }

    fn compose_ok(&self, args: &[&str]) -> String {
        let output = run(self.compose().args(args));
        if !output.status.success() {
            let logs = run(self.compose().args(["logs", "--no-color"]));
            panic!(
                "docker compose {args:?} failed:\n{}\nlogs:\n{}{}",
                String::from_utf8_lossy(&output.stderr),
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        String::from_utf8(output.stdout).unwrap()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self
            .compose()
            .args(["--profile", "metrics", "down", "-v", "-t", "0"])
            .output();
    }
}

/// curl, as the docs run it, against the stack's proxy; the status code
/// and the body.
fn curl(args: &[&str]) -> (String, String) {
    let output = run(std::process::Command::new("curl")
        .args(["-sS", "-k", "--max-time", "40", "-w", "\n%{http_code}"])
        .args(args));
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_owned(), body.to_owned())
}

// `run` gets `--no-deps`: without it, compose 5 on podman 4.3's API
// recreates the running `db` (it finds its configuration changed), which
// cuts the server off its database for a while.
#[test]
fn the_compose_stack_starts_in_order_and_serves_an_item_through_caddy() {
    let _turn = support::engine::one_at_a_time();
    let started = Instant::now();
    let image = released_image();
    let stack = Stack::new(image);
    stack.compose_ok(&["up", "-d", "--wait", "--wait-timeout", "180"]);
    let up = started.elapsed();

    // The order compose enforced: db healthy before the server started,
    // the server healthy (after migrating) before the proxy started.
    let container = |service: &str| stack.compose_ok(&["ps", "-q", service]).trim().to_owned();
    for service in ["db", "server"] {
        assert_eq!(
            inspect(&container(service), "{{.State.Health.Status}}"),
            "healthy"
        );
    }
    let logs = stack.compose_ok(&["logs", "--no-color", "server"]);
    assert!(
        logs.contains("migrations applied: 0001_items, 0002_api_tokens"),
        "the server did not migrate on boot:\n{logs}"
    );

    let https = format!("https://localhost:{}", stack.https_port);
    assert_eq!(
        curl(&[&format!("{https}/healthz")]),
        ("200".to_owned(), "ok\n".to_owned())
    );
    // /metrics is not for the internet.
    assert_eq!(curl(&[&format!("{https}/metrics")]).0, "404");

    let token = stack
        .compose_ok(&["run", "--rm", "--no-deps", "-T", "server", "bootstrap"])
        .trim()
        .to_owned();
    assert!(
        !token.is_empty() && !token.contains(char::is_whitespace),
        "{token:?}"
    );
    let item = format!("{https}/v1/items/greeting");
    let authorization = format!("Authorization: Bearer {token}");
    let (code, body) = curl(&[
        "-X",
        "PUT",
        "-H",
        &authorization,
        "--data",
        "{\"hello\":\"world\"}",
        &item,
    ]);
    assert_eq!(
        code,
        "201",
        "{body}\n{}",
        stack.compose_ok(&["logs", "--no-color", "--tail", "20"])
    );
    assert_eq!(
        // Stored as jsonb: PostgreSQL's own rendering comes back.
        curl(&[&item]),
        ("200".to_owned(), "{\"hello\": \"world\"}\n".to_owned())
    );
    let (code, _) = curl(&[
        "-X",
        "PUT",
        "-H",
        "Authorization: Bearer wrong",
        "--data",
        "{}",
        &item,
    ]);
    assert_eq!(code, "401");

    // The metrics profile: /metrics, and only it, on the host's loopback.
    stack.compose_ok(&[
        "--profile",
        "metrics",
        "up",
        "-d",
        "--wait",
        "--wait-timeout",
        "60",
    ]);
    let metrics = format!("http://127.0.0.1:{}", stack.metrics_port);
    let (code, body) = curl(&[&format!("{metrics}/metrics")]);
    assert_eq!(code, "200");
    assert!(body.contains("server_build_info{"), "{body}");
    assert_eq!(curl(&[&format!("{metrics}/healthz")]).0, "404");
    eprintln!("stack up in {up:?}; the whole test {:?}", started.elapsed());
}

/// `crane` on the engine's registry.
fn crane(args: &[&str]) -> String {
    run_ok(std::process::Command::new(support::tool("crane")).args(args))
        .trim()
        .to_owned()
}

/// Another release that works: the released image with one more label,
/// hence another digest.
fn good_release(image: &str) -> String {
    let registry = &support::engine::engine().registry;
    let tag = registry.repo("app:good");
    crane(&[
        "mutate",
        "--insecure",
        "--label",
        "org.example.test=good",
        image,
        "-t",
        &tag,
    ]);
    format!(
        "{}@{}",
        registry.repo("app"),
        crane(&["digest", "--insecure", &tag])
    )
}

/// A release whose server exits 1 at once but whose `migrate status`
/// works, so that a deployment gets as far as `up`: its entrypoint is a
/// busybox script (busybox from the tests' Caddy image) that hands only
/// `migrate …` to the real /server.
fn bad_release(image: &str) -> String {
    let registry = &support::engine::engine().registry;
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let busybox = run(docker().args([
        "run",
        "--rm",
        "--entrypoint",
        "/bin/busybox",
        support::engine::CADDY_IMAGE,
        "cat",
        "/bin/busybox",
    ]));
    assert!(busybox.status.success() && busybox.stdout.len() > 100_000);
    std::fs::write(root.join("busybox"), &busybox.stdout).unwrap();
    std::fs::write(
        root.join("bad"),
        "#!/busybox sh\ncase \"$1\" in migrate) exec /server \"$@\" ;; esac\necho 'bad release: exits 1' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    for file in ["busybox", "bad"] {
        std::fs::set_permissions(root.join(file), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let layer = work.path().join("layer.tar");
    run_ok(
        std::process::Command::new("tar")
            .args(["--owner=0", "--group=0", "-C"])
            .arg(&root)
            .arg("-cf")
            .arg(&layer)
            .args(["busybox", "bad"]),
    );
    let platform = crane(&["digest", "--insecure", "--platform", "linux/amd64", image]);
    let base = format!("{}@{platform}", registry.repo("app"));
    let appended = registry.repo("app:bad-layer");
    crane(&[
        "append",
        "--insecure",
        "-b",
        &base,
        "-f",
        layer.to_str().unwrap(),
        "-t",
        &appended,
    ]);
    let bad = registry.repo("app:bad");
    crane(&[
        "mutate",
        "--insecure",
        "--entrypoint",
        "/bad",
        &appended,
        "-t",
        &bad,
    ]);
    format!(
        "{}@{}",
        registry.repo("app"),
        crane(&["digest", "--insecure", &bad])
    )
}

impl Stack {
    /// deploy/compose/deploy.sh as an operator runs it: in the project's
    /// directory, with the docker CLI on PATH.
    fn deploy(&self, image: &str) -> std::process::Output {
        let script = support::workspace_root().join("deploy/compose/deploy.sh");
        let mut command = std::process::Command::new("sh");
        command
            .arg(script)
            .arg(image)
            .current_dir(self.dir.path())
            .env(
                "DOCKER_HOST",
                format!("unix://{}", support::engine::engine().socket.display()),
            )
            .env("COMPOSE_PROJECT_NAME", &self.project)
            .env("DEPLOY_TIMEOUT", "30")
            .env("PATH", std::env::join_paths(support::tool_path()).unwrap());
        run(&mut command)
    }

    fn env_image(&self) -> String {
        let env = std::fs::read_to_string(self.dir.path().join(".env")).unwrap();
        env.lines()
            .find_map(|l| l.strip_prefix("SERVER_IMAGE="))
            .unwrap()
            .to_owned()
    }
}

#[test]
fn the_deploy_script_upgrades_and_rolls_a_bad_release_back_by_itself() {
    let _turn = support::engine::one_at_a_time();
    let started = Instant::now();
    let image = released_image();
    let stack = Stack::new(image);
    stack.compose_ok(&["up", "-d", "--wait", "--wait-timeout", "180"]);
    let token = stack
        .compose_ok(&["run", "--rm", "--no-deps", "-T", "server", "bootstrap"])
        .trim()
        .to_owned();
    let item = format!("https://localhost:{}/v1/items/kept", stack.https_port);
    let authorization = format!("Authorization: Bearer {token}");
    let (code, _) = curl(&["-X", "PUT", "-H", &authorization, "--data", "[1]", &item]);
    assert_eq!(code, "201");

    // Without .env it refuses, and changes nothing.
    let elsewhere = tempfile::tempdir().unwrap();
    let refused = run(std::process::Command::new("sh")
        .arg(support::workspace_root().join("deploy/compose/deploy.sh"))
        .arg(image)
        .current_dir(elsewhere.path()));
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no .env in"));

    // Registry credentials: read, the file removed, and a failed login
    // stops everything. (podman's API logs in over HTTPS only, so a login
    // to the plain-HTTP loopback registry fails here: the failure path is
    // what this can show.)
    let good = good_release(image);
    let registry = &support::engine::engine().registry;
    std::fs::write(
        stack.dir.path().join(".env.deploy"),
        format!(
            "REGISTRY={}\nREGISTRY_USER=deployer\nREGISTRY_PASSWORD=secret\n",
            registry.host()
        ),
    )
    .unwrap();
    let refused = stack.deploy(&good);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(&format!(
            "deploy: cannot log in to {} as deployer; nothing changed",
            registry.host()
        )),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        !stack.dir.path().join(".env.deploy").exists(),
        ".env.deploy was not removed"
    );
    assert_eq!(stack.env_image(), image);

    // A good release.
    let deployed = stack.deploy(&good);
    let stderr = String::from_utf8_lossy(&deployed.stderr);
    assert!(
        deployed.status.success(),
        "deploy.sh {good} failed:\n{stderr}\n{}",
        String::from_utf8_lossy(&deployed.stdout)
    );
    assert_eq!(stack.env_image(), good);
    let server = stack.compose_ok(&["ps", "-q", "server"]).trim().to_owned();
    assert_eq!(inspect(&server, "{{.Config.Image}}"), good);
    assert_eq!(curl(&[&item]), ("200".to_owned(), "[1]\n".to_owned()));
    let backups: Vec<_> = std::fs::read_dir(stack.dir.path().join("backups"))
        .unwrap()
        .collect();
    assert_eq!(backups.len(), 1);

    // A bad one: up fails, the script puts the good one back by itself.
    let bad = bad_release(image);
    let rolled = stack.deploy(&bad);
    let stderr = String::from_utf8_lossy(&rolled.stderr);
    assert_eq!(rolled.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "deploy: rolled back: {good} runs again; {bad} did not turn healthy"
        )),
        "{stderr}"
    );
    assert_eq!(stack.env_image(), good);
    let server = stack.compose_ok(&["ps", "-q", "server"]).trim().to_owned();
    assert_eq!(inspect(&server, "{{.Config.Image}}"), good);
    assert_eq!(inspect(&server, "{{.State.Health.Status}}"), "healthy");
    assert_eq!(curl(&[&item]), ("200".to_owned(), "[1]\n".to_owned()));
    eprintln!("deploy test {:?}", started.elapsed());
}
