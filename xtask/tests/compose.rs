//! The reference deployment: `docker compose config` (compose v2) must
//! accept docker-compose.yml, and the hardening docs/compose.md describes is checked on
//! the configuration compose itself resolved, not on the YAML text.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};
use support::{release_image, run, tool, workspace_root};

/// The image repository from [workspace.metadata.release] in Cargo.toml.
/// Every `${NAME…}` docker-compose.yml interpolates.
fn compose_knobs() -> BTreeSet<String> {
    let text = std::fs::read_to_string(workspace_root().join("docker-compose.yml")).unwrap();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split("${").skip(1))
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .collect()
}

/// `NAME=value` lines of .env.example.
fn env_example() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(workspace_root().join(".env.example")).unwrap();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').expect("a NAME=value line");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// `docker compose config --format json` on `file`, with every knob
/// removed from the environment so that a developer's shell or .env cannot
/// change the answer.
fn compose_config(file: &Path, env_file: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(tool("docker"));
    command
        .arg("compose")
        .arg("-f")
        .arg(file)
        .arg("--project-directory")
        .arg(workspace_root())
        .arg("--env-file")
        .arg(env_file)
        .args(["config", "--format", "json"]);
    for knob in compose_knobs() {
        command.env_remove(knob);
    }
    command.envs(env.iter().copied());
    run(&mut command)
}

fn parsed(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "docker compose config failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("docker compose printed JSON")
}

fn empty_env_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.env");
    std::fs::write(&path, "").unwrap();
    (dir, path)
}

/// The one knob without a default: compose refuses to run without it.
const PASSWORD: (&str, &str) = ("POSTGRES_PASSWORD", "0123abcd");

fn default_config() -> Value {
    let (_dir, empty) = empty_env_file();
    parsed(&compose_config(
        &workspace_root().join("docker-compose.yml"),
        &empty,
        &[PASSWORD],
    ))
}

/// What is wrong with a resolved compose configuration; empty when it
/// holds every invariant of the reference deployment.
fn violations(config: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let mut expect = |what: &str, actual: &Value, expected: Value| {
        if *actual != expected {
            found.push(format!("{what}: expected {expected}, got {actual}"));
        }
    };
    let services = &config["services"];
    let server = &services["server"];
    let proxy = &services["proxy"];
    expect(
        "server.healthcheck.test",
        &server["healthcheck"]["test"],
        json!(["CMD", "/server", "healthcheck"]),
    );
    expect(
        "server.restart",
        &server["restart"],
        json!("unless-stopped"),
    );
    expect("server.read_only", &server["read_only"], json!(true));
    expect(
        "server.security_opt",
        &server["security_opt"],
        json!(["no-new-privileges:true"]),
    );
    expect("server.cap_drop", &server["cap_drop"], json!(["ALL"]));
    expect("server.cap_add", &server["cap_add"], Value::Null);
    expect("server.user", &server["user"], json!("65532:65532"));
    expect(
        "server.networks",
        &server["networks"],
        json!({"internal": null}),
    );
    expect(
        "networks.internal.internal",
        &config["networks"]["internal"]["internal"],
        json!(true),
    );
    expect(
        "proxy.depends_on.server.condition",
        &proxy["depends_on"]["server"]["condition"],
        json!("service_healthy"),
    );
    expect("proxy.restart", &proxy["restart"], json!("unless-stopped"));
    expect("proxy.read_only", &proxy["read_only"], json!(true));
    expect("proxy.cap_drop", &proxy["cap_drop"], json!(["ALL"]));
    expect(
        "proxy.security_opt",
        &proxy["security_opt"],
        json!(["no-new-privileges:true"]),
    );
    expect(
        "proxy.networks",
        &proxy["networks"],
        json!({"edge": null, "internal": null}),
    );
    let db = &services["db"];
    expect(
        "db.healthcheck.test",
        &db["healthcheck"]["test"],
        json!(["CMD", "pg_isready", "-U", "app", "-d", "app"]),
    );
    expect(
        "server.depends_on.db.condition",
        &server["depends_on"]["db"]["condition"],
        json!("service_healthy"),
    );
    expect("db.networks", &db["networks"], json!({"internal": null}));
    expect("db.cap_drop", &db["cap_drop"], json!(["ALL"]));
    expect("db.restart", &db["restart"], json!("unless-stopped"));
    let published: Vec<Value> = proxy["ports"]
        .as_array()
        .map(|ports| {
            ports
                .iter()
                .map(|p| {
                    json!(format!(
                        "{}/{}",
                        p["target"],
                        p["protocol"].as_str().unwrap_or("")
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    expect(
        "proxy.ports",
        &json!(published),
        json!(["80/tcp", "443/tcp", "443/udp"]),
    );
    if let Some(services) = services.as_object() {
        for (name, service) in services {
            if name != "proxy" && service.get("ports").is_some_and(|p| !p.is_null()) {
                found.push(format!(
                    "services.{name}.ports: only the proxy may publish ports, got {}",
                    service["ports"]
                ));
            }
        }
    }
    let proxy_image = proxy["image"].as_str().unwrap_or_default();
    if !is_pinned(proxy_image) {
        found.push(format!(
            "proxy.image: expected an exact version or a digest, got {proxy_image:?}"
        ));
    }
    let db_image = db["image"].as_str().unwrap_or_default();
    if !is_pinned(db_image) && !is_postgres_release(db_image) {
        found.push(format!(
            "db.image: expected an exact version or a digest, got {db_image:?}"
        ));
    }
    found
}

/// `name:X.Y.Z[-suffix]` or `name@sha256:…`: never `latest` or a bare
/// major version that moves.
fn is_pinned(image: &str) -> bool {
    if let Some((_, digest)) = image.split_once("@sha256:") {
        return digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
    }
    let Some((_, tag)) = image.rsplit_once(':') else {
        return false;
    };
    let version = tag.split('-').next().unwrap_or_default();
    let parts: Vec<&str> = version.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `postgres:MAJOR.MINOR[-distro]`: PostgreSQL releases have two numbers.
fn is_postgres_release(image: &str) -> bool {
    let Some(tag) = image.strip_prefix("postgres:") else {
        return false;
    };
    let version = tag.split('-').next().unwrap_or_default();
    let parts: Vec<&str> = version.split('.').collect();
    parts.len() == 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

#[test]
fn compose_config_passes_and_holds_every_invariant() {
    let config = default_config();
    assert_eq!(violations(&config), Vec::<String>::new());
    assert_eq!(
        config["services"]["server"]["image"],
        json!(format!("{}:latest", release_image()))
    );
    let services: Vec<&String> = config["services"].as_object().unwrap().keys().collect();
    assert_eq!(services, ["db", "proxy", "server"]);
    // The database's data is a named volume; the server finds it by the
    // password from .env.
    let db_volumes = &config["services"]["db"]["volumes"];
    assert_eq!(
        (&db_volumes[0]["source"], &db_volumes[0]["target"]),
        (&json!("db-data"), &json!("/var/lib/postgresql/data"))
    );
    assert_eq!(
        config["services"]["server"]["environment"]["SERVER_DATABASE_URL"],
        json!("postgres://app:0123abcd@db:5432/app?sslmode=disable")
    );
    assert_eq!(
        config["services"]["db"]["environment"]["POSTGRES_PASSWORD"],
        json!("0123abcd")
    );
    // The certificates are the deployment's only state: a named volume,
    // and the Caddyfile read-only.
    let volumes: Vec<(String, String, bool)> = config["services"]["proxy"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["source"].as_str().unwrap().to_owned(),
                v["target"].as_str().unwrap().to_owned(),
                v["read_only"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        volumes,
        [
            (
                workspace_root()
                    .join("deploy/Caddyfile")
                    .display()
                    .to_string(),
                "/etc/caddy/Caddyfile".to_owned(),
                true
            ),
            ("caddy-data".to_owned(), "/data".to_owned(), false),
            ("caddy-config".to_owned(), "/config".to_owned(), false),
        ]
    );
}

#[test]
fn server_image_can_be_pinned_by_version_or_digest() {
    let (_dir, empty) = empty_env_file();
    let file = workspace_root().join("docker-compose.yml");
    for image in [
        format!("{}:v1.2.3", release_image()),
        format!(
            "{}@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            release_image()
        ),
    ] {
        let config = parsed(&compose_config(
            &file,
            &empty,
            &[("SERVER_IMAGE", image.as_str()), PASSWORD],
        ));
        assert_eq!(config["services"]["server"]["image"], json!(image));
        assert_eq!(violations(&config), Vec::<String>::new());
    }
}

#[test]
fn env_example_lists_every_knob_with_its_default() {
    let listed: BTreeSet<String> = env_example().into_iter().map(|(k, _)| k).collect();
    assert_eq!(listed, compose_knobs());
    // Its values are the defaults: copying it unchanged changes nothing.
    let with_example = parsed(&compose_config(
        &workspace_root().join("docker-compose.yml"),
        &workspace_root().join(".env.example"),
        &[PASSWORD],
    ));
    assert_eq!(with_example, default_config());
    // Except the password, which is empty there and never committed.
    assert!(env_example().contains(&("POSTGRES_PASSWORD".to_owned(), String::new())));
    // .env is ignored (it holds the operator's values), .env.example is not.
    let ignored = |path: &str| {
        run(Command::new("git")
            .args(["check-ignore", "-q", path])
            .current_dir(workspace_root()))
        .status
        .success()
    };
    assert!(ignored(".env"));
    assert!(!ignored(".env.example"));
}

#[test]
fn caddy_proxies_to_the_server_port_the_healthcheck_uses() {
    let config = default_config();
    assert_eq!(
        config["services"]["server"]["environment"]["SERVER_ADDR"],
        json!("0.0.0.0:8080")
    );
    let caddyfile = std::fs::read_to_string(workspace_root().join("deploy/Caddyfile")).unwrap();
    let directives: Vec<&str> = caddyfile
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("reverse_proxy"))
        .collect();
    assert_eq!(directives, ["reverse_proxy server:8080 {"]);
    assert_eq!(
        proxy_settings(&caddyfile, "lb_try"),
        ["lb_try_duration 30s", "lb_try_interval 250ms"],
        "the proxy must retry while the server is replaced (docs/operations.md)"
    );
}

/// The lines of the reverse_proxy block that start with `prefix`.
fn proxy_settings<'a>(caddyfile: &'a str, prefix: &str) -> Vec<&'a str> {
    caddyfile
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("reverse_proxy"))
        .take_while(|l| *l != "}")
        .filter(|l| l.starts_with(prefix))
        .collect()
}

#[test]
fn invariant_checker_catches_each_weakening() {
    let good = default_config();
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/services/server/read_only",
            json!(false),
            "server.read_only: expected true, got false",
        ),
        (
            "/services/server/cap_drop",
            json!(["NET_RAW"]),
            "server.cap_drop: expected [\"ALL\"], got [\"NET_RAW\"]",
        ),
        (
            "/services/server/healthcheck/test",
            json!(["CMD-SHELL", "curl -f localhost:8080/healthz"]),
            "server.healthcheck.test: expected [\"CMD\",\"/server\",\"healthcheck\"], got [\"CMD-SHELL\",\"curl -f localhost:8080/healthz\"]",
        ),
        (
            "/services/proxy/depends_on/server/condition",
            json!("service_started"),
            "proxy.depends_on.server.condition: expected \"service_healthy\", got \"service_started\"",
        ),
        (
            "/services/proxy/image",
            json!("caddy:latest"),
            "proxy.image: expected an exact version or a digest, got \"caddy:latest\"",
        ),
        (
            "/services/db/healthcheck/test",
            json!(["CMD-SHELL", "true"]),
            "db.healthcheck.test: expected [\"CMD\",\"pg_isready\",\"-U\",\"app\",\"-d\",\"app\"], got [\"CMD-SHELL\",\"true\"]",
        ),
        (
            "/services/server/depends_on/db/condition",
            json!("service_started"),
            "server.depends_on.db.condition: expected \"service_healthy\", got \"service_started\"",
        ),
        (
            "/services/db/image",
            json!("postgres:15"),
            "db.image: expected an exact version or a digest, got \"postgres:15\"",
        ),
        (
            "/networks/internal/internal",
            json!(false),
            "networks.internal.internal: expected true, got false",
        ),
    ];
    for (pointer, value, message) in cases {
        let mut bad = good.clone();
        *bad.pointer_mut(pointer).unwrap() = value;
        assert_eq!(violations(&bad), [message], "after changing {pointer}");
    }
    let mut published = good.clone();
    published["services"]["server"]["ports"] =
        json!([{"target": 8080, "published": "8080", "protocol": "tcp"}]);
    assert_eq!(
        violations(&published),
        ["services.server.ports: only the proxy may publish ports, got [{\"protocol\":\"tcp\",\"published\":\"8080\",\"target\":8080}]"]
    );
}

#[test]
fn a_broken_compose_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(workspace_root().join("docker-compose.yml")).unwrap();
    let broken = text.replacen("read_only: true", "read_only: maybe", 1);
    assert_ne!(broken, text);
    let file = dir.path().join("docker-compose.yml");
    std::fs::write(&file, broken).unwrap();
    let (_env_dir, empty) = empty_env_file();
    let output = compose_config(&file, &empty, &[PASSWORD]);
    assert!(
        !output.status.success(),
        "compose accepted read_only: maybe"
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "error while interpolating services.server.read_only: failed to cast to expected type: invalid boolean: maybe"
    );
}

#[test]
fn compose_refuses_to_run_without_a_database_password() {
    let (_dir, empty) = empty_env_file();
    for env in [&[][..], &[("POSTGRES_PASSWORD", "")][..]] {
        let output = compose_config(&workspace_root().join("docker-compose.yml"), &empty, env);
        assert!(!output.status.success(), "compose ran without a password");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("set POSTGRES_PASSWORD in .env, see .env.example"),
            "{stderr}"
        );
    }
}
