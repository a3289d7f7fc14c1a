//! Publishing against the real registry: floating tags stay on the newest
//! release when two publications overlap, a push sends only what the
//! registry lacks, counted in the registry's own access log, and its blobs
//! go up a few at a time, a failed one stopping the push before any
//! manifest.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::proxy::{BlobProxy, HoldingProxy};
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

/// The blobs of the index `reference` in the order a push walks them
/// (platforms in index order, each one's layers then its config), as
/// skopeo reads them from the registry.
fn blobs_in_push_order(repo: &str, reference: &str) -> Vec<String> {
    let index = support::skopeo_raw(reference);
    let mut blobs = Vec::new();
    for platform in index["manifests"].as_array().unwrap() {
        let digest = platform["digest"].as_str().unwrap();
        let manifest = support::skopeo_raw(&format!("{repo}@{digest}"));
        let layers = manifest["layers"].as_array().unwrap().iter();
        for blob in layers.chain([&manifest["config"]]) {
            let blob = blob["digest"].as_str().unwrap().to_owned();
            if !blobs.contains(&blob) {
                blobs.push(blob);
            }
        }
    }
    blobs
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn blobs_go_up_at_most_four_at_a_time_and_a_failed_one_stops_the_push_before_any_manifest() {
    let registry = Registry::start_with_access_log();
    let (base, layers) = seed_base(&registry, "base");
    let work = tempfile::tempdir().unwrap();
    let sha = support::head_sha();
    // Each blob request to `app` is held 200 ms, as on a distant registry:
    // six blobs (two mounted from the base, four uploaded), each a HEAD, a
    // POST and for four a PUT, overlap only if the push runs them side by
    // side, and more than four overlap only if nothing bounds it. The base
    // goes through the proxy too, so that it is on the same registry and
    // its layers are mounted.
    let proxy = BlobProxy::start(registry.port, "app", Duration::from_millis(200), None);
    let via_proxy = |name: &str| format!("127.0.0.1:{}/{name}", proxy.port);
    let base = base.replace(&registry.host(), &format!("127.0.0.1:{}", proxy.port));
    let before = registry.log_text().lines().count();
    let pushed = json_of(&run(&mut image_push(
        &via_proxy("app"),
        &base,
        "v1.0.0",
        &sha,
        &work.path().join("one"),
    )));
    eprintln!(
        "the blobs of the push through a 200 ms proxy took {:?}",
        proxy.span()
    );
    let most = proxy.most_in_flight();
    assert!(
        (2..=4).contains(&most),
        "{most} blob requests were in flight at most"
    );

    // What went up is what a push one blob at a time sends, reported in the
    // order of the index whatever the timing.
    let digest = pushed["digest"].as_str().unwrap();
    let app = registry.repo("app");
    let walked = blobs_in_push_order(&app, &format!("{app}@{digest}"));
    let base_layers: Vec<String> = layers.values().flatten().cloned().collect();
    let (mounted, uploaded): (Vec<String>, Vec<String>) =
        walked.into_iter().partition(|b| base_layers.contains(b));
    assert_eq!((mounted.len(), uploaded.len()), (2, 4));
    assert_eq!(strings(&pushed["push"]["uploaded"]), uploaded);
    assert_eq!(strings(&pushed["push"]["mounted"]), mounted);
    assert_eq!(strings(&pushed["push"]["skipped"]), Vec::<String>::new());
    let posts = "POST /v2/app/blobs/uploads/";
    assert_eq!(
        (
            requests(&registry, before, posts, "from=base", Some("201")),
            requests(&registry, before, posts, "from=base", Some("202")),
            requests(
                &registry,
                before,
                "PUT /v2/app/blobs/uploads/",
                "digest=",
                Some("201")
            ),
            requests(&registry, before, "DELETE ", "", None),
        ),
        (2, 4, 4, 0)
    );
    let on_disk: Value = serde_json::from_slice(
        &std::fs::read(Path::new(pushed["layout"].as_str().unwrap()).join("index.json")).unwrap(),
    )
    .unwrap();
    let built: Vec<&str> = on_disk["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(built, [digest], "the pushed index is not the one built");
    let tags = tag_digests(&app);
    let expected = [
        "latest",
        &format!("sha-{}", &sha[..7]),
        "v1",
        "v1.0",
        "v1.0.0",
    ]
    .map(|t| (t.to_owned(), digest.to_owned()));
    assert_eq!(tags, expected.into_iter().collect());

    // The same image to another repository, the PUT of its first uploaded
    // blob refused every time: the push fails naming that blob, after the
    // tries a blob PUT gets, and writes no manifest and no tag.
    let failing = &uploaded[0];
    let proxy = BlobProxy::start(
        registry.port,
        "broken",
        Duration::from_millis(200),
        Some(failing),
    );
    let base = base.replace(&via_proxy(""), &format!("127.0.0.1:{}/", proxy.port));
    let before = registry.log_text().lines().count();
    let output = run(&mut image_push(
        &format!("127.0.0.1:{}/broken", proxy.port),
        &base,
        "v1.0.0",
        &sha,
        &work.path().join("two"),
    ));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot upload blob {failing} to broken")),
        "{stderr}"
    );
    assert!(stderr.contains("500"), "{stderr}");
    let tries = usize::try_from(xtask::oci::retry::TRIES).unwrap();
    assert_eq!((proxy.refused(), tries), (3, 3), "{stderr}");
    assert_eq!(
        requests(&registry, before, "PUT /v2/broken/manifests/", "", None),
        0
    );
    assert_eq!(
        support::skopeo_tags(&registry.repo("broken")),
        Vec::<String>::new()
    );
    let port = registry.port;
    assert_eq!(
        support::http_status(port, &format!("/v2/broken/manifests/{digest}")),
        Some(404)
    );
    assert_eq!(
        support::http_status(port, &format!("/v2/broken/blobs/{failing}")),
        Some(404)
    );
}
