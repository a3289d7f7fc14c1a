//! `cargo xtask tags` through its command line: the tag rules of
//! docs/tags.md, the GitHub Actions context, and the published tags read
//! from a real registry, paginated.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use support::{run, run_ok, tool, Registry};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// `cargo xtask tags …` outside GitHub Actions, whatever runs the tests.
fn tags(args: &[&str]) -> Command {
    let mut command = support::xtask();
    command.arg("tags").args(args);
    for var in support::GITHUB_ACTIONS_ENV {
        command.env_remove(var);
    }
    command
}

fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "xtask tags failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The `tags` array of `--json`.
fn json_tags(command: &mut Command) -> Vec<String> {
    let stdout = succeeded(&run(command.arg("--json")));
    let value: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("--json printed something that is not JSON ({e}): {stdout}"));
    value["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("no tags array in {value}"))
        .iter()
        .map(|t| t.as_str().expect("tags are strings").to_owned())
        .collect()
}

/// The table of a command that must succeed.
fn table(command: &mut Command) -> String {
    succeeded(&run(command))
}

/// Fails with exactly `message` on stderr (after `error: `), nothing on
/// stdout, and a non-zero exit.
fn fails_with(command: &mut Command, message: &str) {
    let output = run(command);
    assert_eq!(
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned()
        ),
        (Some(1), String::new(), format!("error: {message}\n")),
    );
}

#[test]
fn json_lists_the_exact_tag_first_and_floating_tags_last() {
    let value: Value = serde_json::from_str(&succeeded(&run(tags(&[
        "--version",
        "v1.9.10",
        "--sha",
        SHA,
        "--existing",
        "v2.0.0,v1.9.9,latest,v1,v1.9,sha-fffffff,v2.1.0-rc.1",
    ])
    .arg("--json"))))
    .unwrap();
    assert_eq!(
        value["tags"],
        serde_json::json!(["v1.9.10", "sha-0123456", "v1.9", "v1"])
    );
    assert_eq!(
        value["immutable"],
        serde_json::json!(["v1.9.10", "sha-0123456"])
    );
    assert_eq!(
        value["not_set"],
        serde_json::json!(["no latest: v2.0.0 is newer"])
    );
    assert_eq!(value["reasons"]["v1"], "newest in 1.x");
    assert_eq!(value["published_considered"], 7);
}

#[test]
fn the_table_says_why_each_tag_is_set_or_not() {
    assert_eq!(
        table(&mut tags(&[
            "--version",
            "v1.1.5",
            "--sha",
            SHA,
            "--existing",
            "v1.2.0,v1.1.4,v1.2,v1.1,v1,latest",
        ])),
        "v1.1.5: the release, never moves\n\
         sha-0123456: the commit, never moves\n\
         v1.1: newest in 1.1.x\n\
         no v1: v1.2.0 is newer\n\
         no latest: v1.2.0 is newer\n"
    );
    assert_eq!(
        table(&mut tags(&[
            "--version",
            "v0.4.0",
            "--sha",
            SHA,
            "--existing"
        ])),
        "v0.4.0: the release, never moves\n\
         sha-0123456: the commit, never moves\n\
         v0.4: newest in 0.4.x\n\
         latest: newest stable release\n\
         no v0: 0.x releases never get a major tag\n"
    );
}

/// (build flags, --existing, tags)
type Row = (
    &'static [&'static str],
    &'static str,
    &'static [&'static str],
);

#[test]
fn every_row_of_the_policy_through_the_cli() {
    let rows: &[Row] = &[
        (
            &["--version", "v1.2.10"],
            "v1.2.9,v1.2,v1,latest",
            &["v1.2.10", "sha-0123456", "v1.2", "v1", "latest"],
        ),
        (
            &["--version", "v1.2.9"],
            "v1.2.10",
            &["v1.2.9", "sha-0123456"],
        ),
        (
            &["--version", "v1.9.10"],
            "v2.0.0",
            &["v1.9.10", "sha-0123456", "v1.9", "v1"],
        ),
        // A re-run gives the same tags.
        (
            &["--version", "v1.9.10"],
            "v2.0.0,v1.9.10,v1.9,v1,sha-0123456",
            &["v1.9.10", "sha-0123456", "v1.9", "v1"],
        ),
        (
            &["--version", "v3.0.0-rc.1"],
            "v2.0.0",
            &["v3.0.0-rc.1", "sha-0123456"],
        ),
        (
            &["--version", "v0.2.0"],
            "v0.1.0",
            &["v0.2.0", "sha-0123456", "v0.2", "latest"],
        ),
        (&["--branch", "main"], "v9.9.9", &["sha-0123456", "main"]),
        (
            &["--branch", "feature/über#12"],
            "",
            &["sha-0123456", "feature-ber-12"],
        ),
        (&["--branch", ".hidden/x"], "", &["sha-0123456", "hidden-x"]),
        (
            &["--branch", "latest"],
            "",
            &["sha-0123456", "branch-latest"],
        ),
        (&["--pr", "42"], "", &["sha-0123456", "pr-42"]),
    ];
    for (build, existing, expected) in rows {
        let mut command = tags(build);
        command.args(["--sha", SHA, "--existing", existing]);
        assert_eq!(
            &json_tags(&mut command),
            expected,
            "{build:?} with {existing}"
        );
    }
}

#[test]
fn long_branch_names_are_cut_to_128_characters_with_a_hash() {
    let long_a = format!("feature/{}", "a".repeat(192));
    let long_b = format!("feature/{}", "a".repeat(191) + "b");
    let tag_a = json_tags(&mut tags(&["--branch", &long_a, "--sha", SHA]));
    let tag_b = json_tags(&mut tags(&["--branch", &long_b, "--sha", SHA]));
    let hash_a = &sha256_hex(long_a.as_bytes())[..8];
    assert_eq!(
        tag_a,
        [
            "sha-0123456".to_owned(),
            format!("feature-{}-{hash_a}", "a".repeat(111))
        ]
    );
    assert_eq!(tag_b[1].len(), 128);
    assert_ne!(tag_a[1], tag_b[1]);
}

#[test]
fn invalid_versions_are_refused_with_a_reason() {
    let expected = "expected vMAJOR.MINOR.PATCH or vMAJOR.MINOR.PATCH-PRERELEASE, such as v1.2.3";
    for (version, why) in [
        (
            "v1.6",
            "it has 2 numbers, a release needs all three of MAJOR.MINOR.PATCH",
        ),
        ("1.2", "it must start with `v`"),
        ("v01.2.3", "invalid leading zero in major version number"),
        (
            "v1.2.3+build.1",
            "build metadata (+build.1) is not allowed in a release",
        ),
        ("banana", "it must start with `v`"),
    ] {
        fails_with(
            &mut tags(&["--version", version, "--sha", SHA, "--existing", "--json"]),
            &format!("invalid version {version:?}: {why}; {expected}"),
        );
    }
}

#[test]
fn bad_inputs_fail_on_stderr() {
    fails_with(
        &mut tags(&["--pr", "7", "--sha", "abc"]),
        "invalid commit sha \"abc\": expected 7 to 40 hex characters, such as the output of `git rev-parse HEAD`",
    );
    fails_with(
        &mut tags(&["--branch", "###", "--sha", SHA]),
        "branch \"###\" has no characters usable in a tag; pass --branch with a name that has letters or digits",
    );
    let port = support::free_port();
    let output = run(&mut tags(&[
        "--version",
        "v1.0.0",
        "--sha",
        SHA,
        "--image",
        &format!("127.0.0.1:{port}/app"),
        "--insecure",
    ]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.starts_with(&format!(
            "error: cannot list the published tags of 127.0.0.1:{port}/app; pass --existing to give them: cannot reach 127.0.0.1:{port} (GET http://127.0.0.1:{port}/v2/app/tags/list?n=100); is the registry running?"
        )),
        "{stderr}"
    );
    // A name that does not resolve (.invalid never does) is not a stopped
    // registry.
    let output = run(&mut tags(&[
        "--version",
        "v1.0.0",
        "--sha",
        SHA,
        "--image",
        "registry.invalid/app",
    ]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.starts_with(
            "error: cannot list the published tags of registry.invalid/app; pass --existing to give them: cannot reach registry.invalid (GET https://registry.invalid/v2/app/tags/list?n=100); the name registry.invalid does not resolve; check the registry's host name and this machine's DNS"
        ),
        "{stderr}"
    );
}

/// GitHub Actions variables for one run; everything else GITHUB_* unset.
fn github(vars: &[(&str, &str)], args: &[&str]) -> Command {
    let mut command = tags(args);
    command.args(["--existing", "v9.0.0"]);
    for (name, value) in vars {
        command.env(name, value);
    }
    command
}

#[test]
fn a_pull_request_is_tagged_with_its_head_not_the_merge_commit() {
    let dir = tempfile::tempdir().unwrap();
    let head = "feedfacecafebeef0000000000000000deadbeef";
    let merge = "1111111111111111111111111111111111111111";
    let event = dir.path().join("event.json");
    std::fs::write(
        &event,
        serde_json::json!({
            "number": 17,
            "pull_request": {"number": 17, "head": {"sha": head, "ref": "feature/x"}, "merge_commit_sha": merge}
        })
        .to_string(),
    )
    .unwrap();
    let event_path = event.to_str().unwrap();
    let pr_env = [
        ("GITHUB_EVENT_NAME", "pull_request"),
        ("GITHUB_EVENT_PATH", event_path),
        ("GITHUB_REF", "refs/pull/17/merge"),
        ("GITHUB_REF_NAME", "17/merge"),
        ("GITHUB_SHA", merge),
    ];
    assert_eq!(
        json_tags(&mut github(&pr_env, &[])),
        ["sha-feedfac", "pr-17"]
    );
    // Flags come first: --sha wins over the event, --pr over GITHUB_REF.
    assert_eq!(
        json_tags(&mut github(&pr_env, &["--sha", SHA])),
        ["sha-0123456", "pr-17"]
    );
    assert_eq!(
        json_tags(&mut github(&pr_env, &["--pr", "3"])),
        ["sha-feedfac", "pr-3"]
    );

    // A payload without a number: the number comes from GITHUB_REF.
    let bare = dir.path().join("bare.json");
    std::fs::write(
        &bare,
        serde_json::json!({"pull_request": {"head": {"sha": head}}}).to_string(),
    )
    .unwrap();
    let mut bare_env = pr_env;
    bare_env[1].1 = bare.to_str().unwrap();
    assert_eq!(
        json_tags(&mut github(&bare_env, &[])),
        ["sha-feedfac", "pr-17"]
    );

    // A broken payload is an error, not a silent fallback to the merge commit.
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, r#"{"pull_request": {}}"#).unwrap();
    let broken_path = broken.to_str().unwrap().to_owned();
    let mut broken_env = pr_env;
    broken_env[1].1 = &broken_path;
    fails_with(
        &mut github(&broken_env, &[]),
        &format!("the GitHub event payload {broken_path} has no pull_request.head.sha; pass --sha"),
    );
    // ...unless the flags say everything.
    assert_eq!(
        json_tags(&mut github(&broken_env, &["--pr", "5", "--sha", SHA])),
        ["sha-0123456", "pr-5"]
    );
}

#[test]
fn pushes_of_tags_and_branches_come_from_github_ref() {
    fn push(git_ref: &str) -> [(&'static str, &str); 3] {
        [
            ("GITHUB_EVENT_NAME", "push"),
            ("GITHUB_REF", git_ref),
            ("GITHUB_SHA", SHA),
        ]
    }
    assert_eq!(
        json_tags(&mut github(&push("refs/tags/v9.1.0"), &[])),
        ["v9.1.0", "sha-0123456", "v9.1", "v9", "latest"]
    );
    assert_eq!(
        json_tags(&mut github(&push("refs/heads/main"), &[])),
        ["sha-0123456", "main"]
    );
    assert_eq!(
        json_tags(&mut github(
            &push("refs/heads/dependabot/cargo/serde-1.0"),
            &[]
        )),
        ["sha-0123456", "dependabot-cargo-serde-1.0"]
    );
    // Without GITHUB_REF, GITHUB_REF_NAME and GITHUB_REF_TYPE.
    assert_eq!(
        json_tags(&mut github(
            &[
                ("GITHUB_EVENT_NAME", "workflow_dispatch"),
                ("GITHUB_REF_NAME", "v9.0.1"),
                ("GITHUB_REF_TYPE", "tag"),
                ("GITHUB_SHA", SHA),
            ],
            &[]
        )),
        ["v9.0.1", "sha-0123456", "v9.0", "v9", "latest"]
    );
    fails_with(
        &mut github(&push("refs/tags/nightly"), &[]),
        "GitHub is building tag nightly, which is not a release version: invalid version \"nightly\": it must start with `v`; expected vMAJOR.MINOR.PATCH or vMAJOR.MINOR.PATCH-PRERELEASE, such as v1.2.3",
    );
}

/// A clone of this workspace on a branch of our choosing.
fn clone_on_branch(branch: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("git")
            .args(["clone", "-q"])
            .arg(support::workspace_root())
            .arg(dir.path().join("ws")),
    );
    run_ok(
        Command::new("git")
            .args(["checkout", "-q", "-b", branch])
            .current_dir(dir.path().join("ws")),
    );
    dir
}

#[test]
fn without_flags_or_github_the_branch_and_head_come_from_git() {
    let dir = clone_on_branch("topic/local#1");
    let ws = dir.path().join("ws");
    let head = run_ok(
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(&ws),
    );
    let mut command = tags(&[]);
    command.current_dir(&ws);
    assert_eq!(
        json_tags(&mut command),
        [format!("sha-{}", &head[..7]), "topic-local-1".to_owned()]
    );
    run_ok(
        Command::new("git")
            .args(["checkout", "-q", "--detach"])
            .current_dir(&ws),
    );
    let mut detached = tags(&[]);
    detached.current_dir(&ws);
    fails_with(
        &mut detached,
        "cannot tell what is being built on a detached HEAD; pass --version, --branch or --pr",
    );
}

/// An HTTP front for a registry that pages its tag list as the OCI
/// distribution spec says (sorted, `n` per page, `Link` to the next), and
/// records each tag list request. Debian's docker-registry 2.8 ignores `n`
/// and answers every tag at once, so without this front the client's
/// pagination would never be exercised. Everything else gets a 404.
struct PagingFront {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl PagingFront {
    fn start(upstream: u16) -> PagingFront {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                PagingFront::answer(stream, upstream, &seen);
            }
        });
        PagingFront { port, requests }
    }

    fn answer(stream: TcpStream, upstream: u16, seen: &Mutex<Vec<String>>) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap() == 0 || header == "\r\n" {
                break;
            }
        }
        let target = request_line
            .split(' ')
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        seen.lock().unwrap().push(target.clone());
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let (status, link, body) = if path.ends_with("/tags/list") {
            let param = |name: &str| {
                query
                    .split('&')
                    .find_map(|p| p.strip_prefix(&format!("{name}=")))
                    .map(str::to_owned)
            };
            let page: usize = param("n").map_or(usize::MAX, |n| n.parse().unwrap());
            let last = param("last").unwrap_or_default();
            let (_, body) = http10_get(upstream, path);
            let mut all: Value = serde_json::from_str(&body).unwrap();
            let mut tags: Vec<String> = all["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_owned())
                .filter(|t| *t > last)
                .collect();
            tags.sort();
            let more = tags.len() > page;
            tags.truncate(page);
            let link = more.then(|| {
                format!(
                    "Link: <{path}?n={page}&last={}>; rel=\"next\"\r\n",
                    tags.last().unwrap()
                )
            });
            all["tags"] = serde_json::json!(tags);
            ("200 OK", link.unwrap_or_default(), all.to_string())
        } else {
            ("404 Not Found", String::new(), String::new())
        };
        let mut stream = stream;
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{link}Connection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

/// A GET without keep-alive or chunking: status and body.
fn http10_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

/// Pushes one tiny image with crane and gives it every tag in `tags`.
fn push_tagged(registry: &Registry, repo: &str, tags: &[String]) {
    let crane = tool("crane");
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("hello"), "hello\n").unwrap();
    let tar = work.path().join("layer.tar");
    run_ok(
        Command::new("tar")
            .args(["--mtime=@0", "--owner=0", "--group=0", "-C"])
            .arg(work.path())
            .arg("-cf")
            .arg(&tar)
            .arg("hello"),
    );
    let first = format!("{}:{}", registry.repo(repo), tags[0]);
    run_ok(
        Command::new(&crane)
            .args(["append", "--insecure", "--oci-empty-base", "-f"])
            .arg(&tar)
            .args(["-t", &first]),
    );
    for tag in &tags[1..] {
        run_ok(Command::new(&crane).args(["tag", "--insecure", &first, tag]));
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::process::Stdio;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_owned()
}

#[test]
fn published_tags_come_from_the_registry_across_pages() {
    let registry = Registry::start();
    // 105 releases, and tags that must not count.
    let mut published: Vec<String> = (0..100).map(|p| format!("v1.0.{p}")).collect();
    published.extend(["v1.1.0", "v1.1.1", "v1.2.0", "v2.0.0", "v2.1.0"].map(String::from));
    published.extend(
        [
            "latest",
            "main",
            "pr-1",
            "sha-0000000",
            "v2.0.0-rc.1",
            "v2",
            "v2.1",
            "v9",
        ]
        .map(String::from),
    );
    push_tagged(&registry, "app", &published);
    assert_eq!(support::skopeo_tags(&registry.repo("app")).len(), 113);

    let expected = [
        "v2.0.1: the release, never moves",
        "sha-0123456: the commit, never moves",
        "v2.0: newest in 2.0.x",
        "no v2: v2.1.0 is newer",
        "no latest: v2.1.0 is newer",
    ]
    .map(|l| format!("{l}\n"))
    .concat();

    // Through a front that pages by 100: v2.1.0 sorts onto the second page.
    let front = PagingFront::start(registry.port);
    let front_image = format!("127.0.0.1:{}/app", front.port);
    let release = ["--version", "v2.0.1", "--sha", SHA, "--insecure", "--image"];
    let mut command = tags(&release);
    command.arg(&front_image);
    assert_eq!(table(&mut command), expected);
    let mut sorted = published.clone();
    sorted.sort();
    assert!(sorted[100..].contains(&"v2.1.0".to_owned()));
    assert_eq!(
        *front.requests.lock().unwrap(),
        [
            "/v2/app/tags/list?n=100".to_owned(),
            format!("/v2/app/tags/list?n=100&last={}", sorted[99]),
        ]
    );

    // Straight from the registry, the same answer.
    let mut command = tags(&release);
    command.arg(registry.repo("app"));
    command.arg("--json");
    let value: Value = serde_json::from_str(&succeeded(&run(&mut command))).unwrap();
    assert_eq!(
        value["tags"],
        serde_json::json!(["v2.0.1", "sha-0123456", "v2.0"])
    );
    assert_eq!(value["published_considered"], 113);

    // A repository that does not exist yet: the first release.
    let mut command = tags(&release);
    command.arg(registry.repo("new"));
    assert_eq!(
        json_tags(&mut command),
        ["v2.0.1", "sha-0123456", "v2.0", "v2", "latest"]
    );
}

#[test]
fn existing_overrides_the_registry() {
    // No registry answers on this port: --existing must not ask it.
    let image = format!("127.0.0.1:{}/app", support::free_port());
    let mut command = tags(&[
        "--version",
        "v1.0.0",
        "--sha",
        SHA,
        "--insecure",
        "--image",
        &image,
        "--existing",
        "v1.0.1",
    ]);
    assert_eq!(json_tags(&mut command), ["v1.0.0", "sha-0123456"]);
    // Branch builds never need the registry.
    let mut command = tags(&[
        "--branch",
        "dev",
        "--sha",
        SHA,
        "--insecure",
        "--image",
        &image,
    ]);
    assert_eq!(json_tags(&mut command), ["sha-0123456", "dev"]);
}
