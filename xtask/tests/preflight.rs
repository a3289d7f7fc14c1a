//! The release preflight through `cargo xtask release V --dry-run`, each
//! test in its own clone of this workspace with one thing broken, against a
//! real registry.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

use support::{run, run_ok, tool, Registry};

const PASSWORD: &str = "preflight-test";

/// A clone of the committed workspace, without any git tags.
struct Workspace {
    _dir: tempfile::TempDir,
    path: PathBuf,
    head: String,
    version: String,
}

impl Workspace {
    fn clone() -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ws");
        run_ok(
            Command::new("git")
                .args(["clone", "-q"])
                .arg(support::workspace_root())
                .arg(&path),
        );
        let workspace = Workspace {
            head: String::new(),
            version: support::server_version(),
            _dir: dir,
            path,
        };
        for tag in workspace.git(&["tag", "--list"]).lines() {
            workspace.git(&["tag", "-d", tag]);
        }
        Workspace {
            head: workspace.git(&["rev-parse", "HEAD"]).trim().to_owned(),
            ..workspace
        }
    }

    /// `release VERSION --dry-run --push --key K --image IMAGE --insecure`,
    /// with a key made in the clone's directory and its password: the
    /// plan that reads the registry.
    fn release_push(&self, version: &str, image: &str, extra: &[&str]) -> Output {
        let key = self.key();
        let mut args = vec!["--push", "--key", &key];
        args.extend(extra);
        let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
        command
            .current_dir(&self.path)
            .args([
                "release",
                version,
                "--dry-run",
                "--insecure",
                "--image",
                image,
            ])
            .args(&args)
            .env("COSIGN_PASSWORD", PASSWORD)
            .env_remove("GITHUB_TOKEN")
            .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL");
        run(&mut command)
    }

    /// A cosign key pair next to the clone (not in it: the tree stays
    /// clean), made once.
    fn key(&self) -> String {
        let dir = self.path.parent().unwrap().join("keys");
        let key = dir.join("cosign.key");
        if !key.is_file() {
            std::fs::create_dir_all(&dir).unwrap();
            run_ok(
                Command::new(tool("cosign"))
                    .arg("generate-key-pair")
                    .env("COSIGN_PASSWORD", PASSWORD)
                    .current_dir(&dir),
            );
        }
        key.to_str().unwrap().to_owned()
    }

    fn git(&self, args: &[&str]) -> String {
        run_ok(Command::new("git").args(args).current_dir(&self.path))
    }

    /// Tags HEAD with `tag`, then commits on top, so that the tag is on
    /// the previous commit (without needing history: CI clones are
    /// shallow). Returns the tagged commit and updates `head`.
    fn tag_then_commit(&mut self, tag: &str) -> String {
        let tagged = self.head.clone();
        self.git(&["tag", tag]);
        self.git(&[
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.invalid",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "after the tag",
        ]);
        self.head = self.git(&["rev-parse", "HEAD"]).trim().to_owned();
        tagged
    }

    fn tag(&self) -> String {
        format!("v{}", self.version)
    }

    /// The server version with its patch number bumped.
    fn other_version(&self) -> String {
        let mut parts: Vec<u64> = self
            .version
            .split('.')
            .map(|p| {
                p.parse()
                    .expect("a plain x.y.z version in server/Cargo.toml")
            })
            .collect();
        parts[2] += 1;
        format!("v{}.{}.{}", parts[0], parts[1], parts[2])
    }

    fn write(&self, relative: &str, text: &str) {
        let path = self.path.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn append(&self, relative: &str, text: &str) {
        let path = self.path.join(relative);
        let mut content = std::fs::read_to_string(&path).unwrap();
        content.push_str(text);
        std::fs::write(path, content).unwrap();
    }

    /// `cargo xtask release VERSION --dry-run --image IMAGE --insecure`.
    fn release(&self, version: &str, image: &str, extra: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
        command
            .current_dir(&self.path)
            .args([
                "release",
                version,
                "--dry-run",
                "--insecure",
                "--image",
                image,
            ])
            .args(extra);
        run(&mut command)
    }
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "release --dry-run failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Exit 1, nothing on stdout, and exactly these problems on stderr.
fn fails_with(output: &Output, version: &str, problems: &[String]) {
    let count = match problems.len() {
        1 => "1 problem".to_owned(),
        n => format!("{n} problems"),
    };
    let lines: String = problems.iter().map(|p| format!("  - {p}\n")).collect();
    assert_eq!(
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned()
        ),
        (
            Some(1),
            String::new(),
            format!("error: release preflight for {version} found {count}:\n{lines}")
        )
    );
}

/// The tag plan of a first release of `tag` at `head`.
fn first_release_tags(tag: &str, head: &str) -> String {
    let version = semver_parts(tag);
    let sha = &head[..7];
    let mut lines = vec![
        format!("{tag}: the release, never moves"),
        format!("sha-{sha}: the commit, never moves"),
        format!(
            "v{}.{}: newest in {}.{}.x",
            version[0], version[1], version[0], version[1]
        ),
    ];
    if version[0] == 0 {
        lines.push("latest: newest stable release".into());
        lines.push("no v0: 0.x releases never get a major tag".into());
    } else {
        lines.push(format!("v{}: newest in {}.x", version[0], version[0]));
        lines.push("latest: newest stable release".into());
    }
    lines.iter().map(|l| format!("  {l}\n")).collect()
}

fn semver_parts(tag: &str) -> Vec<u64> {
    tag.trim_start_matches('v')
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect()
}

/// The plan's warning when the configured base names no digest (it is
/// then resolved when the image is built); empty when base-digest pins it.
fn unpinned_base_warning() -> String {
    let config = support::release_config();
    match config.base_digest {
        Some(_) => String::new(),
        None => format!(
            "warning: the base {} names no digest (base-digest is empty or --base gave a tag): it is resolved when the image is built, and the release records the digest it got; pin it with `cargo xtask pin-base`\n",
            config.base
        ),
    }
}

/// The numbered step names of a plan's `steps:` section.
fn step_names(steps: &str) -> Vec<&str> {
    steps
        .lines()
        .filter(|l| {
            l.strip_prefix("  ")
                .and_then(|l| l.split_once(". "))
                .is_some_and(|(n, _)| n.parse::<u8>().is_ok())
        })
        .collect()
}

#[test]
fn a_clean_release_passes_and_shows_its_tag_plan() {
    let registry = Registry::start();
    let ws = Workspace::clone();
    let (tag, image) = (ws.tag(), registry.repo("app"));
    let stdout = stdout_of(&ws.release_push(&tag, &image, &[]));
    let (checks, steps) = stdout
        .split_once("steps:\n")
        .unwrap_or_else(|| panic!("no steps in the plan:\n{stdout}"));
    assert_eq!(
        step_names(steps),
        [
            "  1. preflight",
            "  2. dist",
            "  3. audit",
            "  4. image, pushed untagged",
            "  5. sign",
            "  6. attest",
            "  7. verify",
            "  8. tag: exact first, floating last",
            "  9. release assets"
        ]
    );
    assert!(
        steps.contains(&format!(
            "into {}/target/release/{tag}/oci\n",
            ws.path.display()
        )),
        "{steps}"
    );
    assert_eq!(
        checks,
        format!(
            "release {tag} of {image} from {head} (dry run: nothing is built, pushed or tagged)\n\
             preflight:\n  \
             ok: {tag} is a strict semver version\n  \
             ok: server/Cargo.toml has version {version}\n  \
             ok: the git tree is clean, untracked files included\n  \
             ok: git tag {tag} does not exist yet; the release does not create it: tag HEAD and push the tag to publish the release\n  \
             ok: {image} has no {tag} yet\n  \
             ok: cosign v3.1.3 at {cosign}\n  \
             ok: the key {key} opens with COSIGN_PASSWORD\n\
             {warning}\
             tags, in the order they would be set:\n{tags}",
            warning = unpinned_base_warning(),
            head = ws.head,
            version = ws.version,
            cosign = tool("cosign").display(),
            key = ws.key(),
            tags = first_release_tags(&tag, &ws.head),
        )
    );
    // The dry run wrote nothing.
    assert_eq!(
        ws.git(&["status", "--porcelain", "--untracked-files=all"]),
        ""
    );
    assert_eq!(ws.git(&["tag", "--list"]), "");
    assert!(support::skopeo_tags(&image).is_empty());
    assert!(!ws.path.join("target").exists());
}

/// Without --push, the dry run needs no network at all: run in a network
/// namespace without any interface (as root), it passes, says that nothing
/// is tagged, and plans the four local steps.
#[test]
fn a_dry_run_without_push_touches_no_network() {
    let ws = Workspace::clone();
    let tag = ws.tag();
    let output = run(Command::new("unshare")
        .args(["-n", "--"])
        .arg(env!("CARGO_BIN_EXE_xtask"))
        .args(["release", &tag, "--dry-run"])
        .current_dir(&ws.path)
        .env_remove("GITHUB_TOKEN")
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL"));
    let stdout = stdout_of(&output);
    let (checks, steps) = stdout
        .split_once("steps:\n")
        .unwrap_or_else(|| panic!("no steps in the plan:\n{stdout}"));
    assert_eq!(
        step_names(steps),
        [
            "  1. preflight",
            "  2. dist",
            "  3. audit",
            "  4. image",
            "  5. release assets"
        ]
    );
    assert_eq!(
        checks,
        format!(
            "release {tag} of {image} from {head} (dry run: nothing is built, pushed or tagged)\n\
             preflight:\n  \
             ok: {tag} is a strict semver version\n  \
             ok: server/Cargo.toml has version {version}\n  \
             ok: the git tree is clean, untracked files included\n  \
             ok: git tag {tag} does not exist yet; the release does not create it: tag HEAD and push the tag to publish the release\n\
             {warning}\
             tags: none; without --push nothing is pushed or tagged\n",
            warning = unpinned_base_warning(),
            head = ws.head,
            version = ws.version,
            image = support::release_image(),
        )
    );
}

/// What signing needs is checked by the dry run too, all at once.
#[test]
fn a_dry_run_reports_what_signing_lacks() {
    let registry = Registry::start();
    let ws = Workspace::clone();
    let (tag, image) = (ws.tag(), registry.repo("app"));
    let key = ws.key();
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command
        .current_dir(&ws.path)
        .args([
            "release",
            &tag,
            "--dry-run",
            "--push",
            "--insecure",
            "--image",
            &image,
            "--key",
            &key,
        ])
        .env("COSIGN_PASSWORD", "wrong")
        .env("GITHUB_TOKEN", "t")
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL");
    let output = run(&mut command);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let problems: Vec<&str> = stderr.lines().filter(|l| l.starts_with("  - ")).collect();
    assert_eq!(problems.len(), 3, "{stderr}");
    assert!(problems[0].starts_with(&format!("  - git tag {tag} does not exist, and the GitHub release needs it on GitHub; tag HEAD and push the tag first")), "{stderr}");
    assert_eq!(
        problems[1],
        format!("  - cannot open the key {key} with COSIGN_PASSWORD: decrypt: encrypted: decryption failed; export the key's password in COSIGN_PASSWORD")
    );
    assert!(
        problems[2].starts_with(
            "  - GITHUB_TOKEN is set, so the assets are uploaded with gh, but gh not found: "
        ),
        "{stderr}"
    );
    // Without a key outside GitHub Actions, a --push plan is refused too.
    let output = run(Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(&ws.path)
        .args([
            "release",
            &tag,
            "--dry-run",
            "--push",
            "--insecure",
            "--image",
            &image,
        ])
        .env_remove("GITHUB_TOKEN")
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("\n  - no signing key: pass --key cosign.key"),
        "{stderr}"
    );
}

#[test]
fn a_git_tag_on_head_and_a_published_version_pass() {
    let registry = Registry::start();
    let ws = Workspace::clone();
    let (tag, image) = (ws.tag(), registry.repo("app"));
    ws.git(&["tag", &tag]);
    // The version already published, as after a release that stopped
    // before its floating tags.
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("f"), "x").unwrap();
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(work.path())
            .args(["-cf", "layer.tar", "f"])
            .current_dir(work.path()),
    );
    let digest = run_ok(
        Command::new(tool("crane"))
            .args(["append", "--insecure", "--oci-empty-base", "-f"])
            .arg(work.path().join("layer.tar"))
            .args(["-t", &format!("{image}:{tag}")]),
    );
    let digest = digest.trim().rsplit_once('@').unwrap().1.to_owned();
    let output = ws.release_push(&tag, &image, &["--json"]);
    let value: serde_json::Value = serde_json::from_str(&stdout_of(&output)).unwrap();
    assert_eq!(value["preflight"]["git_tag_exists"], true);
    assert_eq!(value["preflight"]["registry"]["digest"], digest.as_str());
    assert_eq!(value["preflight"]["head"], ws.head.as_str());
    assert_eq!(
        value["preflight"]["passed"][3],
        format!("git tag {tag} points at HEAD ({})", ws.head)
    );
    assert_eq!(
        value["preflight"]["passed"][4],
        format!("{image}:{tag} exists at {digest}; the build must give that digest (checked after building)")
    );
    assert_eq!(value["tags"]["tags"][0], tag.as_str());
    assert_eq!(value["tags"]["published_considered"], 1);
}

#[test]
fn an_invalid_version_is_a_problem() {
    let registry = Registry::start();
    let ws = Workspace::clone();
    for (version, why) in [
        (
            "v1.6",
            "it has 2 numbers, a release needs all three of MAJOR.MINOR.PATCH",
        ),
        ("1.2.3", "it must start with `v`"),
        (
            "v1.2.3+build.1",
            "build metadata (+build.1) is not allowed in a release",
        ),
    ] {
        fails_with(
            &ws.release(version, &registry.repo("app"), &[]),
            version,
            &[format!("invalid version {version:?}: {why}; expected vMAJOR.MINOR.PATCH or vMAJOR.MINOR.PATCH-PRERELEASE, such as v1.2.3")],
        );
    }
}

#[test]
fn a_version_other_than_cargo_toml_says_which_file_to_edit() {
    let registry = Registry::start();
    let ws = Workspace::clone();
    let other = ws.other_version();
    fails_with(
        &ws.release(&other, &registry.repo("app"), &[]),
        &other,
        &[format!(
            "version mismatch: releasing {other} but server/Cargo.toml has version {v}; set `version = \"{bare}\"` in server/Cargo.toml and commit it, or release v{v}",
            v = ws.version,
            bare = other.trim_start_matches('v'),
        )],
    );
}

#[test]
fn a_dirty_tree_lists_every_path_untracked_included() {
    let registry = Registry::start();
    let ws = Workspace::clone();
    ws.append("server/src/main.rs", "\n// local edit\n");
    ws.write("notes/my todo.txt", "untracked\n");
    let tag = ws.tag();
    fails_with(
        &ws.release(&tag, &registry.repo("app"), &[]),
        &tag,
        &["the git tree is not clean; commit, stash or remove: server/src/main.rs, notes/my todo.txt (untracked)".to_owned()],
    );
    // Staged only, and untracked only: each is enough.
    ws.git(&["add", "server/src/main.rs"]);
    std::fs::remove_dir_all(ws.path.join("notes")).unwrap();
    fails_with(
        &ws.release(&tag, &registry.repo("app"), &[]),
        &tag,
        &["the git tree is not clean; commit, stash or remove: server/src/main.rs".to_owned()],
    );
    ws.git(&["reset", "-q", "--hard"]);
    // Ignored files (.gitignore lists .env and target/) do not count...
    ws.write(".env", "SECRET=x\n");
    stdout_of(&ws.release(&tag, &registry.repo("app"), &[]));
    // ...but one untracked file does.
    ws.write("deploy/values.yaml", "replicas: 2\n");
    fails_with(
        &ws.release(&tag, &registry.repo("app"), &[]),
        &tag,
        &[
            "the git tree is not clean; commit, stash or remove: deploy/values.yaml (untracked)"
                .to_owned(),
        ],
    );
}

#[test]
fn a_git_tag_elsewhere_is_a_problem() {
    let registry = Registry::start();
    let mut ws = Workspace::clone();
    let tag = ws.tag();
    let tagged = ws.tag_then_commit(&tag);
    fails_with(
        &ws.release(&tag, &registry.repo("app"), &[]),
        &tag,
        &[format!(
            "git tag {tag} points at {tagged}, not at HEAD ({}); check out {tag} to release it, or delete the tag with `git tag -d {tag}` if it is wrong",
            ws.head
        )],
    );
}

#[test]
fn an_unreachable_registry_is_a_problem() {
    let ws = Workspace::clone();
    let port = support::free_port();
    let image = format!("127.0.0.1:{port}/app");
    let tag = ws.tag();
    fails_with(
        &ws.release_push(&tag, &image, &[]),
        &tag,
        &[format!(
            "cannot check whether {image}:{tag} exists: cannot reach 127.0.0.1:{port} (HEAD http://127.0.0.1:{port}/v2/app/manifests/{tag}); is the registry running?: io: Connection refused (os error 111)",
        )],
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut ws = Workspace::clone();
    let port = support::free_port();
    let image = format!("127.0.0.1:{port}/app");
    let other = ws.other_version();
    let tagged = ws.tag_then_commit(&other);
    ws.write("scratch.txt", "x\n");
    fails_with(
        &ws.release_push(&other, &image, &[]),
        &other,
        &[
            format!(
                "version mismatch: releasing {other} but server/Cargo.toml has version {v}; set `version = \"{bare}\"` in server/Cargo.toml and commit it, or release v{v}",
                v = ws.version,
                bare = other.trim_start_matches('v'),
            ),
            "the git tree is not clean; commit, stash or remove: scratch.txt (untracked)".to_owned(),
            format!(
                "git tag {other} points at {tagged}, not at HEAD ({}); check out {other} to release it, or delete the tag with `git tag -d {other}` if it is wrong",
                ws.head
            ),
            format!(
                "cannot check whether {image}:{other} exists: cannot reach 127.0.0.1:{port} (HEAD http://127.0.0.1:{port}/v2/app/manifests/{other}); is the registry running?: io: Connection refused (os error 111)"
            ),
        ],
    );
}

#[test]
fn a_real_release_stops_at_the_preflight_and_builds_nothing() {
    let ws = Workspace::clone();
    ws.write("scratch.txt", "not committed\n");
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command.current_dir(&ws.path).args(["release", &ws.tag()]);
    let output = run(&mut command);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let error = stderr
        .split_once("\nerror: ")
        .map(|(_, e)| e)
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert_eq!(
        error,
        format!(
            "release preflight for {} found 1 problem:\n  - the git tree is not clean; commit, stash or remove: scratch.txt (untracked)\n",
            ws.tag()
        )
    );
    assert!(!ws.path.join("target/release").exists());
    assert!(!ws.path.join("target/dist").exists());
}
