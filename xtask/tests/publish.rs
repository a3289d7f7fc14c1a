//! Publishing against the real registry: floating tags stay on the newest
//! release when two publications overlap, and a push sends only what the
//! registry lacks, counted in the registry's own access log.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use support::proxy::HoldingProxy;
use support::{run, seed_base, tag_digests, Registry};

/// `cargo xtask image --push --json` of `version` to `repo`.
fn image_push(repo: &str, base: &str, version: &str, sha: &str, out: &Path) -> Command {
    support::dist();
    let mut command = support::xtask();
    command
        .args([
            "image",
            "--push",
            "--insecure",
            "--json",
            "--image",
            repo,
            "--base",
            base,
            "--version",
            version,
            "--sha",
            sha,
            "--out",
        ])
        .arg(out);
    command
}

fn json_of(output: &std::process::Output) -> Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("--json prints JSON")
}

#[test]
fn latest_ends_on_the_newest_release_when_an_older_one_overlaps() {
    let registry = Registry::start();
    let (base, _) = seed_base(&registry, "base");
    let work = tempfile::tempdir().unwrap();
    // Release A (v1.0.0) goes through a proxy that holds its write of `v1`
    // (floating tags move v1.0, v1, latest); release B (v1.1.0) runs start
    // to finish meanwhile. A's write of v1 then lands after B's, and A's
    // check before `latest` sees B.
    let proxy = HoldingProxy::start(registry.port, "PUT /v2/app/manifests/v1 ");
    let a = image_push(
        &format!("127.0.0.1:{}/app", proxy.port),
        &base,
        "v1.0.0",
        &"a".repeat(40),
        &work.path().join("a"),
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    if !proxy.wait_until_held() {
        proxy.release();
        let a = a.wait_with_output().unwrap();
        panic!(
            "release A never wrote v1: {}",
            String::from_utf8_lossy(&a.stderr)
        );
    }
    // The same base under another name: B's image names it, so it is
    // another image, as a newer release is.
    let newer_base = registry.repo("newer-base:latest");
    support::run_ok(Command::new(support::tool("crane")).args([
        "copy",
        "--insecure",
        &base,
        &newer_base,
    ]));
    let b = json_of(&run(&mut image_push(
        &registry.repo("app"),
        &newer_base,
        "v1.1.0",
        &"b".repeat(40),
        &work.path().join("b"),
    )));
    proxy.release();
    let a = a.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&a.stderr).into_owned();
    let a = json_of(&a);
    let said: Vec<&str> = stderr.lines().filter(|l| l.starts_with("no ")).collect();
    assert_eq!(
        said,
        [
            "no v1: v1.1.0 was published while it moved; v1 is back on v1.1.0",
            "no latest: v1.1.0 was published meanwhile; latest stays where it is",
        ],
        "{stderr}"
    );
    let (a, b) = (a["digest"].as_str().unwrap(), b["digest"].as_str().unwrap());
    assert_ne!(a, b);

    let tags = tag_digests(&registry.repo("app"));
    let expected = [
        ("latest", b),
        ("sha-aaaaaaa", a),
        ("sha-bbbbbbb", b),
        ("v1", b),
        ("v1.0", a),
        ("v1.0.0", a),
        ("v1.1", b),
        ("v1.1.0", b),
    ]
    .map(|(t, d)| (t.to_owned(), d.to_owned()));
    assert_eq!(tags, expected.into_iter().collect());

    // A re-run of A now leaves every floating tag of B alone, and says so.
    let again = run(&mut image_push(
        &registry.repo("app"),
        &base,
        "v1.0.0",
        &"a".repeat(40),
        &work.path().join("a"),
    ));
    assert!(again.status.success());
    assert_eq!(tag_digests(&registry.repo("app")), tags);
}

/// How many requests of the registry's access log (Apache combined
/// format), after its first `from` lines, start with `prefix`, contain
/// `contains`, and got `status` (any status when None).
fn requests(
    registry: &Registry,
    from: usize,
    prefix: &str,
    contains: &str,
    status: Option<&str>,
) -> usize {
    registry
        .log_text()
        .lines()
        .skip(from)
        .filter(|l| {
            let mut fields = l.split('"');
            let request = fields.nth(1).unwrap_or_default();
            let answered = fields.next().unwrap_or_default().split_whitespace().next();
            request.starts_with(prefix)
                && request.contains(contains)
                && status.is_none_or(|s| answered == Some(s))
        })
        .count()
}

#[test]
fn a_push_uploads_only_what_the_registry_lacks_as_its_access_log_shows() {
    let registry = Registry::start_with_access_log();
    let (base, layers) = seed_base(&registry, "base");
    let work = tempfile::tempdir().unwrap();
    let sha = support::head_sha();
    let before = registry.log_text().lines().count();
    let first = json_of(&run(&mut image_push(
        &registry.repo("app"),
        &base,
        "v1.0.0",
        &sha,
        &work.path().join("one"),
    )));
    // Each platform's /server layer and config go up, once; the base's
    // layers, in the same registry, are mounted from its repository. A
    // declined mount's upload session carries the upload: one POST per
    // blob, none cancelled.
    let posts = "POST /v2/app/blobs/uploads/";
    let mounted = requests(&registry, before, posts, "from=base", Some("201"));
    let declined = requests(&registry, before, posts, "from=base", Some("202"));
    let uploads = requests(
        &registry,
        before,
        "PUT /v2/app/blobs/uploads/",
        "digest=",
        Some("201"),
    );
    let base_layers = layers.values().flatten().count();
    assert_eq!(base_layers, 2);
    assert_eq!((mounted, declined, uploads), (2, 4, 4), "{}", first["push"]);
    assert_eq!(requests(&registry, before, posts, "", None), 6);
    assert_eq!(requests(&registry, before, "DELETE ", "", None), 0);
    assert_eq!(first["push"]["uploaded"].as_array().unwrap().len(), uploads);
    assert_eq!(first["push"]["mounted"].as_array().unwrap().len(), mounted);

    // The same image again: the registry has every blob, nothing is sent.
    let before = registry.log_text().lines().count();
    let second = json_of(&run(&mut image_push(
        &registry.repo("app"),
        &base,
        "v1.0.0",
        &sha,
        &work.path().join("two"),
    )));
    assert_eq!(first["digest"], second["digest"]);
    assert_eq!(requests(&registry, before, posts, "", None), 0);
    assert_eq!(
        requests(&registry, before, "PUT /v2/app/blobs/", "", None),
        0
    );
    assert_eq!(
        requests(&registry, before, "PUT /v2/app/manifests/", "", None),
        0
    );
    assert_eq!(
        second["push"]["skipped"].as_array().unwrap().len(),
        4 + base_layers
    );
}
