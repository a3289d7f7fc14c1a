//! Registries that want credentials, and registries that fail: the
//! distribution registry with htpasswd (Basic) and with token auth (a token
//! service of ours signing JWTs it trusts), credentials from a Docker
//! config's `auths` and from a credential helper, and scripted endpoints
//! for the retries and for where credentials and tokens are sent.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine;
use support::scripted::{self, response, Scripted};
use support::token_service::{Grant, TokenService};
use support::{head_sha, run, tool, Registry};
use xtask::oci::client::Client;

const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn found(digest: &str) -> Option<String> {
    Some(response(200, &[("Docker-Content-Digest", digest)], ""))
}

#[test]
fn a_503_is_tried_again() {
    let endpoint = Scripted::start(Box::new(|n, _| match n {
        0 => Some(response(503, &[], "")),
        _ => found(DIGEST),
    }));
    let client = Client::new(&endpoint.host(), true).unwrap();
    let digest = client.manifest_digest("app", "v1").unwrap();
    assert_eq!(digest.as_deref(), Some(DIGEST));
    assert_eq!(endpoint.count(), 2);
}

#[test]
fn a_429_waits_as_long_as_retry_after_says() {
    let endpoint = Scripted::start(Box::new(|n, _| match n {
        0 => Some(response(429, &[("Retry-After", "1")], "")),
        _ => found(DIGEST),
    }));
    let client = Client::new(&endpoint.host(), true).unwrap();
    let start = Instant::now();
    assert!(client.manifest_digest("app", "v1").unwrap().is_some());
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "retried after {:?}, before Retry-After",
        start.elapsed()
    );
    assert_eq!(endpoint.count(), 2);
}

#[test]
fn a_dropped_connection_is_tried_again() {
    let endpoint = Scripted::start(Box::new(|n, _| match n {
        0 => None,
        _ => found(DIGEST),
    }));
    let client = Client::new(&endpoint.host(), true).unwrap();
    assert!(client.manifest_digest("app", "v1").unwrap().is_some());
    assert_eq!(endpoint.count(), 2);
}

#[test]
fn retries_stop_after_three_tries_and_the_error_says_so() {
    let endpoint = Scripted::start(Box::new(|_, _| {
        Some(response(
            503,
            &[],
            r#"{"errors":[{"code":"UNAVAILABLE","message":"maintenance"}]}"#,
        ))
    }));
    let client = Client::new(&endpoint.host(), true).unwrap();
    // GET: a HEAD's answer has no body to quote.
    let error = format!("{:#}", client.get_manifest("app", "v1").unwrap_err());
    assert_eq!(endpoint.count(), 3);
    for needle in [
        endpoint.host().as_str(),
        "app",
        "UNAVAILABLE (maintenance)",
        "3 tries",
        "re-run later",
    ] {
        assert!(error.contains(needle), "{needle:?} not in {error}");
    }
}

#[test]
fn a_post_is_never_repeated() {
    let endpoint = Scripted::start(Box::new(|_, _| Some(response(503, &[], ""))));
    let client = Client::new(&endpoint.host(), true).unwrap();
    let open = || -> anyhow::Result<Box<dyn std::io::Read + Send>> {
        Ok(Box::new(std::io::Cursor::new(b"x".to_vec())))
    };
    let blob = xtask::oci::client::Upload {
        size: 1,
        open: &open,
    };
    assert!(client.upload_blob("app", DIGEST, &blob).is_err());
    assert_eq!(endpoint.count(), 1, "{:?}", endpoint.requests());
}

/// A Bearer registry and its realm, both scripted: the password goes to
/// the realm only, the token to the registry only, and the token query is
/// percent-encoded.
/// `list_tags` on `endpoint`, or None if it has not returned in 20 s: a
/// registry that paginates forever must not hold the caller forever.
fn list_tags_within_20_s(endpoint: &Scripted) -> Option<Result<Vec<String>, String>> {
    let client = Client::new(&endpoint.host(), true).unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(client.list_tags("app").map_err(|e| format!("{e:#}")));
    });
    receiver.recv_timeout(Duration::from_secs(20)).ok()
}

fn tag_page(tags: &[String], last: &str) -> Option<String> {
    let link = format!("</v2/app/tags/list?last={last}&n=100>; rel=\"next\"");
    let body = serde_json::json!({"name": "app", "tags": tags}).to_string();
    Some(response(
        200,
        &[("Content-Type", "application/json"), ("Link", &link)],
        &body,
    ))
}

#[test]
fn a_tag_list_that_names_the_same_next_page_again_is_refused() {
    let endpoint = Scripted::start(Box::new(|n, _| {
        let tags = if n == 0 {
            vec!["v1".to_owned()]
        } else {
            vec!["v2".to_owned()]
        };
        tag_page(&tags, "v1")
    }));
    let error = list_tags_within_20_s(&endpoint)
        .expect("list_tags still paginating after 20 s")
        .unwrap_err();
    assert_eq!(
        error,
        format!(
            "cannot list the tags of {}/app: the registry pointed to the page after \"v1\" twice; \
             the registry's pagination is broken, report it to its operator",
            endpoint.host()
        )
    );
    assert_eq!(endpoint.count(), 2);
}

#[test]
fn a_tag_list_that_never_ends_stops_at_the_page_cap() {
    let endpoint = Scripted::start(Box::new(|n, _| {
        tag_page(&[format!("t{n}")], &format!("t{n}"))
    }));
    let error = list_tags_within_20_s(&endpoint)
        .expect("list_tags still paginating after 20 s")
        .unwrap_err();
    assert_eq!(
        error,
        format!(
            "cannot list the tags of {}/app: more than 1000 pages of tags; \
             the registry's pagination does not end, report it to its operator",
            endpoint.host()
        )
    );
    assert_eq!(endpoint.count(), 1000);
}

#[test]
fn credentials_go_to_the_realm_and_tokens_to_the_registry() {
    let realm = Scripted::start(Box::new(|_, _| {
        Some(response(200, &[], r#"{"token":"the-token"}"#))
    }));
    let realm_url = format!("http://{}/token", realm.host());
    let registry = Scripted::start(Box::new(move |_, request| {
        if scripted::header(request, "authorization") == Some("Bearer the-token") {
            return found(DIGEST);
        }
        let challenge =
            format!(r#"Bearer realm="{realm_url}",service="svc",scope="repository:team/app:pull""#);
        Some(response(
            401,
            &[("WWW-Authenticate", challenge.as_str())],
            "",
        ))
    }));
    let config = tempfile::tempdir().unwrap();
    write_config(
        config.path(),
        serde_json::json!({"auths": {registry.host(): {"auth": basic("alice", "pw")}}}),
    );
    // This test binary's only in-process use of credentials: the other
    // tests pass DOCKER_CONFIG to the processes they start.
    std::env::set_var("DOCKER_CONFIG", config.path());
    let client = Client::new(&registry.host(), true).unwrap();
    assert!(client.manifest_digest("team/app", "v1").unwrap().is_some());
    assert!(client.manifest_digest("team/app", "v2").unwrap().is_some());

    let to_registry = registry.requests();
    let to_realm = realm.requests();
    assert_eq!(to_realm.len(), 1, "one token per scope: {to_realm:?}");
    assert_eq!(
        scripted::target(&to_realm[0]),
        "/token?service=svc&scope=repository%3Ateam%2Fapp%3Apull"
    );
    assert_eq!(
        scripted::header(&to_realm[0], "authorization"),
        Some(format!("Basic {}", basic("alice", "pw")).as_str())
    );
    assert!(to_registry
        .iter()
        .all(|r| !r.to_ascii_lowercase().contains("authorization: basic")));
    assert_eq!(to_registry.len(), 3, "{to_registry:?}");
}

fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

fn write_config(dir: &Path, config: serde_json::Value) {
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// `cargo xtask image --push` of a scratch-based image to `repo`, with
/// `DOCKER_CONFIG` and extra PATH entries.
fn push(repo: &str, docker_config: &Path, path_first: Option<&Path>) -> Output {
    push_on(repo, "scratch", docker_config, path_first)
}

/// [`push`] onto `base`.
fn push_on(repo: &str, base: &str, docker_config: &Path, path_first: Option<&Path>) -> Output {
    support::dist();
    let out = tempfile::tempdir().unwrap();
    let mut command = support::xtask();
    command
        .args(["image", "--json", "--push", "--insecure", "--base", base])
        .args(["--image", repo, "--version", "v0.1.0", "--sha", &head_sha()])
        .arg("--out")
        .arg(out.path())
        .env("DOCKER_CONFIG", docker_config);
    for name in support::GITHUB_ACTIONS_ENV {
        command.env_remove(name);
    }
    if let Some(dir) = path_first {
        let mut paths = vec![dir.to_path_buf()];
        paths.extend(support::tool_path());
        command.env("PATH", std::env::join_paths(paths).unwrap());
    }
    run(&mut command)
}

fn digest_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "push failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    json["digest"].as_str().unwrap().to_owned()
}

/// What skopeo, logged in as `user`, reads at `reference`.
fn skopeo_as(user: &str, password: &str, reference: &str) -> Output {
    run(Command::new(tool("skopeo")).args([
        "inspect",
        "--tls-verify=false",
        "--raw",
        "--creds",
        &format!("{user}:{password}"),
        &format!("docker://{reference}"),
    ]))
}

#[test]
fn pushes_to_a_basic_auth_registry_with_auths_credentials() {
    let registry = Registry::start_with_htpasswd(&[("alice", "alice-pw")]);
    let config = tempfile::tempdir().unwrap();

    write_config(config.path(), serde_json::json!({}));
    let anonymous = push(&registry.repo("app"), config.path(), None);
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert!(!anonymous.status.success());
    assert!(
        stderr.contains(&format!("not logged in to {}", registry.host()))
            && stderr.contains(&format!("docker login {}", registry.host())),
        "{stderr}"
    );

    write_config(
        config.path(),
        serde_json::json!({"auths": {registry.host(): {"auth": basic("alice", "wrong")}}}),
    );
    let wrong = push(&registry.repo("app"), config.path(), None);
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains(&format!(
            "{} rejected the credentials from auths in",
            registry.host()
        )),
        "{stderr}"
    );

    write_config(
        config.path(),
        serde_json::json!({"auths": {format!("http://{}", registry.host()): {"auth": basic("alice", "alice-pw")}}}),
    );
    let digest = digest_of(&push(&registry.repo("app"), config.path(), None));
    let read = skopeo_as(
        "alice",
        "alice-pw",
        &format!("{}@{digest}", registry.repo("app")),
    );
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let read = skopeo_as(
        "alice",
        "alice-pw",
        &format!("{}:v0.1.0", registry.repo("app")),
    );
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
}

fn token_registry() -> (TokenService, Registry) {
    let tokens = TokenService::start(vec![
        Grant {
            user: "alice",
            password: "alice-pw",
            actions: &["pull", "push"],
        },
        Grant {
            user: "bob",
            password: "bob-pw",
            actions: &["pull"],
        },
    ]);
    let registry = Registry::start_with_token(&tokens);
    (tokens, registry)
}

#[test]
fn pushes_to_a_token_registry_with_a_credential_helper() {
    let (tokens, registry) = token_registry();
    let config = tempfile::tempdir().unwrap();
    write_config(
        config.path(),
        serde_json::json!({"credHelpers": {registry.host(): "test"}}),
    );
    let bin = tempfile::tempdir().unwrap();
    support::auth_registry::write_credential_helper(
        bin.path(),
        &registry.host(),
        "alice",
        "alice-pw",
    );

    let digest = digest_of(&push(
        &registry.repo("app"),
        config.path(),
        Some(bin.path()),
    ));
    let read = skopeo_as(
        "alice",
        "alice-pw",
        &format!("{}@{digest}", registry.repo("app")),
    );
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    // Four blob uploads start at once without the push token: one of them
    // asks for it, the others wait and use it.
    let scopes = tokens.scopes();
    let push_tokens = scopes
        .iter()
        .filter(|s| *s == "repository:app:pull,push")
        .count();
    assert_eq!(push_tokens, 1, "{scopes:?}");
    assert!(tokens
        .requests()
        .iter()
        .all(|r| scripted::header(r, "authorization").is_some_and(|a| a.starts_with("Basic "))));
}

#[test]
fn a_pull_only_user_is_told_it_cannot_push_and_nothing_is_pushed() {
    let (_tokens, registry) = token_registry();
    let config = tempfile::tempdir().unwrap();
    write_config(
        config.path(),
        serde_json::json!({"auths": {registry.host(): {"auth": basic("bob", "bob-pw")}}}),
    );
    let output = push(&registry.repo("app"), config.path(), None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!(
            "no push permission for app on {}",
            registry.host()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("invalid uri"), "{stderr}");
    let repositories = registry
        .dir
        .path()
        .join("storage/docker/registry/v2/repositories");
    assert!(
        !repositories.join("app").exists(),
        "something was written to the registry"
    );
    let tags = run(Command::new(tool("skopeo")).args([
        "list-tags",
        "--tls-verify=false",
        "--creds",
        "alice:alice-pw",
        &format!("docker://{}", registry.repo("app")),
    ]));
    assert!(
        !tags.status.success(),
        "{}",
        String::from_utf8_lossy(&tags.stdout)
    );
}

/// A base image in another repository of the same token registry: the
/// push mounts its layers, with one token for both repositories, as the
/// token service grants only what is asked.
#[test]
fn pushes_onto_a_base_in_another_repository_of_a_token_registry() {
    let (tokens, registry) = token_registry();
    let config = tempfile::tempdir().unwrap();
    write_config(
        config.path(),
        serde_json::json!({"auths": {registry.host(): {"auth": basic("alice", "alice-pw")}}}),
    );
    let base = push(&registry.repo("base"), config.path(), None);
    digest_of(&base);
    let output = push_on(
        &registry.repo("app"),
        &format!("{}:v0.1.0", registry.repo("base")),
        config.path(),
        None,
    );
    let digest = digest_of(&output);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mounted = json["push"]["mounted"].as_array().unwrap();
    assert_eq!(mounted.len(), 2, "one base layer per platform: {json}");
    let read = skopeo_as(
        "alice",
        "alice-pw",
        &format!("{}@{digest}", registry.repo("app")),
    );
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let both = "repository:app:pull,push repository:base:pull";
    assert!(
        tokens.requests().iter().any(|r| {
            let scopes: Vec<String> = support::token_service::query(scripted::target(r))
                .into_iter()
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v)
                .collect();
            scopes.join(" ") == both
        }),
        "no token asked for {both}: {:?}",
        tokens.scopes()
    );
}

#[test]
fn a_manifest_larger_than_4_mib_is_refused() {
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(4 << 20));
    let endpoint = Scripted::start(Box::new(move |_, _| {
        Some(response(
            200,
            &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
            &big,
        ))
    }));
    let client = Client::new(&endpoint.host(), true).unwrap();
    let error = format!("{:#}", client.get_manifest("app", "v1").unwrap_err());
    assert_eq!(
        error,
        format!(
            "the answer to GET http://{0}/v2/app/manifests/v1 from {0} is larger than 4 MiB, \
             the most a manifest, index or list may be; the registry is misbehaving",
            endpoint.host()
        )
    );
}

#[test]
fn a_token_reply_larger_than_1_mib_is_refused() {
    // The realm is the endpoint itself, whose port is known once it runs.
    let port = std::sync::Arc::new(std::sync::OnceLock::<u16>::new());
    let known = port.clone();
    let endpoint = Scripted::start(Box::new(move |_, request| {
        if scripted::target(request).starts_with("/token") {
            let token = "t".repeat(1 << 20);
            return Some(response(200, &[], &format!("{{\"token\":\"{token}\"}}")));
        }
        let realm = format!(
            "Bearer realm=\"http://127.0.0.1:{}/token\",service=\"s\"",
            known.get().unwrap()
        );
        Some(response(401, &[("WWW-Authenticate", realm.as_str())], ""))
    }));
    port.set(endpoint.port).unwrap();
    let client = Client::new(&endpoint.host(), true).unwrap();
    let error = format!("{:#}", client.manifest_digest("app", "v1").unwrap_err());
    assert!(
        error.contains(&format!(
            "the answer to GET http://{0}/token?service=s&scope=repository%3Aapp%3Apull from {0} \
             is larger than 1 MiB, the most a token reply may be",
            endpoint.host()
        )),
        "{error}"
    );
}

#[test]
fn a_blob_streams_to_a_file_checked_against_its_digest() {
    let blob = "b".repeat(3 << 20);
    let digest = format!(
        "sha256:{}",
        xtask::support::archive::sha256_hex(blob.as_bytes())
    );
    let served = blob.clone();
    let endpoint = Scripted::start(Box::new(move |_, _| Some(response(200, &[], &served))));
    let client = Client::new(&endpoint.host(), true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    assert_eq!(client.get_blob_to("app", &digest, &path).unwrap(), 3 << 20);
    assert_eq!(std::fs::read(&path).unwrap(), blob.as_bytes());
    let error = format!(
        "{:#}",
        client.get_blob_to("app", DIGEST, &path).unwrap_err()
    );
    assert_eq!(
        error,
        format!(
            "blob {DIGEST} from {}/app does not match its digest",
            endpoint.host()
        )
    );
    assert!(!path.exists(), "a blob that does not match was left behind");
}

#[test]
fn a_refused_mount_is_reported_as_refused_for_a_plain_upload() {
    let endpoint = Scripted::start(Box::new(|_, _| {
        Some(response(
            403,
            &[("Content-Type", "application/json")],
            r#"{"errors":[{"code":"DENIED","message":"mounts are not allowed"}]}"#,
        ))
    }));
    let client = Client::new(&endpoint.host(), true).unwrap();
    let mount = client.mount_blob("app", DIGEST, "base").unwrap();
    assert!(
        matches!(&mount, xtask::oci::client::Mount::Refused(why) if why.contains("mounts are not allowed")),
        "{mount:?}"
    );
    assert_eq!(endpoint.count(), 1, "{:?}", endpoint.requests());
}
