//! The Dockerfile (the buildx path): hadolint, a real build of both
//! platforms with buildah from target/dist/, inspected with skopeo and
//! tar, and compared with the native builder. Also `--builder buildx`:
//! its exact command, its errors, and its publication of what buildx wrote.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::{head_sha, run, run_ok, seed_base, server_version, tag_digests, tool, Registry};

fn dockerfile_text() -> String {
    std::fs::read_to_string(support::workspace_root().join("Dockerfile")).expect("read Dockerfile")
}

fn hadolint(path: &Path) -> std::process::Output {
    run(Command::new(tool("hadolint"))
        .args(["--no-color", "--failure-threshold", "style"])
        .arg(path))
}

#[test]
fn hadolint_passes_and_catches_a_root_user() {
    let clean = hadolint(&support::workspace_root().join("Dockerfile"));
    assert!(
        clean.status.success(),
        "hadolint: {}",
        String::from_utf8_lossy(&clean.stdout)
    );
    assert_eq!(String::from_utf8_lossy(&clean.stdout), "");

    // The same file ending as root must fail: the lint can fail.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("Dockerfile");
    std::fs::write(
        &broken,
        dockerfile_text().replace("USER 65532:65532", "USER root"),
    )
    .unwrap();
    let caught = hadolint(&broken);
    assert!(!caught.status.success());
    let out = String::from_utf8_lossy(&caught.stdout);
    assert!(
        out.contains("DL3002 warning: Last USER should not be root"),
        "{out}"
    );
}

/// `base` and `base-digest` of [workspace.metadata.release].
fn configured_base() -> String {
    let manifest = std::fs::read_to_string(support::workspace_root().join("Cargo.toml")).unwrap();
    let value = |key: &str| {
        manifest
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap_or_else(|| panic!("Cargo.toml has no {key} line"))
            .to_owned()
    };
    let (base, digest) = (value("base"), value("base-digest"));
    if digest.is_empty() {
        base
    } else {
        format!("{base}@{digest}")
    }
}

#[test]
fn the_dockerfile_final_stage_only_copies_and_its_base_is_the_configured_one() {
    let text = dockerfile_text();
    let instructions: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#') && !l.starts_with(' '))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        instructions,
        [
            "ARG",
            "FROM",
            "ARG",
            "ARG",
            "ARG",
            "ARG",
            "ARG",
            "ARG",
            "ARG",
            "ARG",
            "ARG",
            "ARG",
            "LABEL",
            "COPY",
            "USER",
            "EXPOSE",
            "HEALTHCHECK",
            "ENTRYPOINT"
        ]
    );
    assert!(
        text.contains(&format!("\nARG BASE={}\n", configured_base())),
        "the Dockerfile's default BASE is not {}",
        configured_base()
    );
    let ignore = std::fs::read_to_string(support::workspace_root().join(".dockerignore")).unwrap();
    let patterns: Vec<&str> = ignore
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(patterns, ["*", "!target/dist/linux-*/server"]);
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn commit_epoch() -> u64 {
    run_ok(
        Command::new("git")
            .args(["log", "-1", "--format=%ct"])
            .current_dir(support::workspace_root()),
    )
    .trim()
    .parse()
    .unwrap()
}

fn commit_time_rfc3339() -> String {
    run_ok(
        Command::new("git")
            .args([
                "log",
                "-1",
                "--format=%cd",
                "--date=format-local:%Y-%m-%dT%H:%M:%SZ",
            ])
            .env("TZ", "UTC")
            .current_dir(support::workspace_root()),
    )
    .trim()
    .to_owned()
}

/// buildah with its storage in a temporary directory: nothing outside it
/// is written.
struct Buildah {
    dir: tempfile::TempDir,
}

impl Buildah {
    fn new() -> Buildah {
        Buildah {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(tool("buildah"));
        command
            .arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(["--storage-driver", "vfs"]);
        command
    }
}

/// The index digest of a base in the test registry.
fn base_digest(reference: &str) -> String {
    tag_digests(reference.rsplit_once(':').unwrap().0)[reference.rsplit_once(':').unwrap().1]
        .clone()
}

/// The label build arguments, with the values the native builder uses.
fn label_args(base: &str, digest: &str) -> Vec<(String, String)> {
    [
        ("SOURCE", support::source_repository().as_str()),
        ("REVISION", head_sha().as_str()),
        ("VERSION", server_version().as_str()),
        ("CREATED", commit_time_rfc3339().as_str()),
        ("TITLE", "server"),
        (
            "DESCRIPTION",
            "A small HTTP server built for distroless images",
        ),
        ("LICENSES", "MIT OR Apache-2.0"),
        ("BASE_NAME", base),
        ("BASE_DIGEST", digest),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn skopeo_config(reference: &str, arch: &str) -> Value {
    serde_json::from_str(&run_ok(Command::new(tool("skopeo")).args([
        "inspect",
        "--tls-verify=false",
        "--config",
        "--raw",
        "--override-arch",
        arch,
        &format!("docker://{reference}"),
    ])))
    .unwrap()
}

/// The `server` entry of the image's last layer: its mode and owner as
/// GNU tar lists them, and the sha256 of its bytes.
fn server_in_last_layer(reference: &str, arch: &str, work: &Path) -> (String, String) {
    std::fs::create_dir_all(work).unwrap();
    let layout = support::copy_platform_to_layout(reference, arch, work);
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |digest: &str| layout.join("blobs/sha256").join(&digest[7..]);
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let layer = blob(
        manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
            .as_str()
            .unwrap(),
    );
    let listing = run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "-tvzf"])
            .arg(&layer),
    );
    let line = listing
        .lines()
        .find(|l| l.ends_with(" server") || l.ends_with(" ./server"))
        .unwrap_or_else(|| panic!("no server in the last layer:\n{listing}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    let extracted = work.join(format!("x-{arch}"));
    std::fs::create_dir_all(&extracted).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xzf")
            .arg(&layer)
            .arg("-C")
            .arg(&extracted),
    );
    let bytes = std::fs::read(extracted.join("server")).unwrap();
    (format!("{} {}", fields[0], fields[1]), sha256_hex(&bytes))
}

/// The dist binary's sha256 for one architecture, from dist.json.
fn dist_sha(dist: &Value, arch: &str) -> String {
    dist.as_array()
        .or_else(|| dist["artifacts"].as_array())
        .expect("dist.json lists artifacts")
        .iter()
        .find(|a| a["kind"] == "binary" && a["platform"] == format!("linux/{arch}"))
        .unwrap_or_else(|| panic!("dist.json has no linux/{arch} binary"))["sha256"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The fields the two builders must agree on.
fn comparable(config: &Value) -> Value {
    let c = &config["config"];
    json!({
        "architecture": config["architecture"],
        "os": config["os"],
        "created": config["created"],
        "Entrypoint": c["Entrypoint"],
        "Cmd": c.get("Cmd").filter(|v| !v.as_array().is_some_and(|a| a.is_empty())),
        "User": c["User"],
        "ExposedPorts": c["ExposedPorts"],
        "Healthcheck": c["Healthcheck"],
        "Labels": c["Labels"],
    })
}

#[test]
fn buildah_builds_both_platforms_from_dist_like_the_native_builder() {
    let dist = support::dist();
    let registry = Registry::start();
    let (base, base_layers) = seed_base(&registry, "base");
    let digest = base_digest(&base);
    let pinned = format!("{}@{digest}", base.rsplit_once(':').unwrap().0);
    let buildah = Buildah::new();
    let work = tempfile::tempdir().unwrap();

    for arch in ["amd64", "arm64"] {
        let mut bud = buildah.command();
        bud.args([
            "bud",
            "--isolation",
            "chroot",
            "--platform",
            &format!("linux/{arch}"),
            // The Docker format keeps HEALTHCHECK; the OCI config has no field for it.
            "--format",
            "docker",
            "--identity-label=false",
            "--tls-verify=false",
            "--timestamp",
            &commit_epoch().to_string(),
            "--build-arg",
            &format!("BASE={pinned}"),
            "--build-arg",
            &format!("TARGETARCH={arch}"),
        ]);
        for (key, value) in label_args(&base, &digest) {
            bud.args(["--build-arg", &format!("{key}={value}")]);
        }
        bud.args([
            "-f",
            "Dockerfile",
            "-t",
            &format!("localhost/app:{arch}"),
            ".",
        ])
        .current_dir(support::workspace_root());
        run_ok(&mut bud);
        run_ok(buildah.command().args([
            "push",
            "--tls-verify=false",
            &format!("localhost/app:{arch}"),
            &format!("docker://{}:{arch}", registry.repo("buildah")),
        ]));
    }

    // The native builder, on the same base and the same dist binaries.
    let out = work.path().join("native");
    let native: Value = serde_json::from_str(&run_ok(
        support::xtask()
            .args([
                "image",
                "--json",
                "--insecure",
                "--push",
                "--branch",
                "main",
                "--sha",
                &head_sha(),
                "--base",
                &base,
                "--image",
                &registry.repo("native"),
            ])
            .arg("--out")
            .arg(&out),
    ))
    .unwrap();
    let native_ref = format!(
        "{}@{}",
        registry.repo("native"),
        native["digest"].as_str().unwrap()
    );

    for arch in ["amd64", "arm64"] {
        let built_ref = format!("{}:{arch}", registry.repo("buildah"));
        let config = skopeo_config(&built_ref, arch);
        let c = &config["config"];
        assert_eq!(config["architecture"], arch);
        assert_eq!(c["Entrypoint"], json!(["/server"]));
        assert_eq!(c["User"], "65532:65532");
        assert_eq!(c["ExposedPorts"], json!({"8080/tcp": {}}));
        assert_eq!(
            c["Healthcheck"],
            json!({"Test": ["CMD", "/server", "healthcheck"], "Interval": 30_000_000_000u64,
                   "Timeout": 3_000_000_000u64, "StartPeriod": 5_000_000_000u64, "Retries": 3})
        );
        let labels: BTreeMap<String, String> = serde_json::from_value(c["Labels"].clone()).unwrap();
        let expected: BTreeMap<String, String> = [
            ("source", "SOURCE"),
            ("revision", "REVISION"),
            ("version", "VERSION"),
            ("created", "CREATED"),
            ("title", "TITLE"),
            ("description", "DESCRIPTION"),
            ("licenses", "LICENSES"),
            ("base.name", "BASE_NAME"),
            ("base.digest", "BASE_DIGEST"),
        ]
        .into_iter()
        .map(|(key, arg)| {
            let args = label_args(&base, &digest);
            let value = args.iter().find(|(k, _)| k == arg).unwrap().1.clone();
            (format!("org.opencontainers.image.{key}"), value)
        })
        .collect();
        assert_eq!(labels, expected);
        assert_eq!(config["created"], commit_time_rfc3339());

        // /server in the layer is the dist binary, root-owned, mode 0755.
        let (mode_owner, sha) = server_in_last_layer(&built_ref, arch, work.path());
        assert_eq!(mode_owner, "-rwxr-xr-x 0/0");
        assert_eq!(sha, dist_sha(dist, arch));

        // The same config fields as the native builder's image.
        let native_config = skopeo_config(&native_ref, arch);
        assert_eq!(comparable(&config), comparable(&native_config));
        // One known difference: on a base without Env (this test's), buildah
        // adds a default PATH; the native builder keeps the base's. The
        // distroless base sets that same PATH itself.
        assert_eq!(
            config["config"]["Env"],
            json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
        );
        assert_eq!(native_config["config"].get("Env"), None);
        let raw = |reference: &str| {
            run_ok(Command::new(tool("skopeo")).args([
                "inspect",
                "--tls-verify=false",
                "--raw",
                "--override-arch",
                arch,
                &format!("docker://{reference}"),
            ]))
        };
        let buildah_manifest: Value = serde_json::from_str(&raw(&built_ref)).unwrap();
        let native_index: Value = serde_json::from_str(&raw(&native_ref)).unwrap();
        let native_manifest_digest = native_index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == arch)
            .unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_owned();
        let native_manifest: Value = serde_json::from_str(&raw(&format!(
            "{}@{native_manifest_digest}",
            registry.repo("native")
        )))
        .unwrap();
        // For the record (docs/ci.md): what differs between the two.
        for (who, manifest, config) in [
            ("buildah", &buildah_manifest, &config),
            ("native", &native_manifest, &native_config),
        ] {
            let layers = manifest["layers"].as_array().unwrap();
            eprintln!(
                "{arch} {who}: {} base layer {} server layer {} ({} bytes) diff_id {}",
                manifest["mediaType"].as_str().unwrap(),
                layers[0]["digest"].as_str().unwrap(),
                layers[1]["digest"].as_str().unwrap(),
                layers[1]["size"],
                config["rootfs"]["diff_ids"][1].as_str().unwrap()
            );
        }
        // The base layers are reused as they were, byte for byte.
        assert_eq!(
            buildah_manifest["layers"][0]["digest"],
            native_manifest["layers"][0]["digest"]
        );
        let (native_mode, native_sha) =
            server_in_last_layer(&native_ref, arch, &work.path().join("native-x"));
        assert_eq!((native_mode, native_sha), (mode_owner, sha));

        // Same base content (diff ids); what differs is stated in docs/ci.md.
        let diff_ids = |c: &Value| -> Vec<String> {
            serde_json::from_value(c["rootfs"]["diff_ids"].clone()).unwrap()
        };
        let (ours, theirs) = (diff_ids(&config), diff_ids(&native_config));
        assert_eq!(ours.len(), base_layers[arch].len() + 1);
        assert_eq!(ours[..ours.len() - 1], theirs[..theirs.len() - 1]);
    }
}

#[test]
fn the_dockerignore_keeps_everything_but_the_binaries_out_of_the_context() {
    support::dist();
    let buildah = Buildah::new();
    let dir = tempfile::tempdir().unwrap();
    let dockerfile = dir.path().join("Dockerfile");
    std::fs::write(&dockerfile, "FROM scratch\nCOPY Cargo.toml /Cargo.toml\n").unwrap();
    let output = run(buildah
        .command()
        .args(["bud", "--isolation", "chroot", "-f"])
        .arg(&dockerfile)
        .arg(".")
        .current_dir(support::workspace_root()));
    assert!(
        !output.status.success(),
        "Cargo.toml reached the build context"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Cargo.toml"), "{stderr}");
}

fn xtask_buildx(args: &[&str]) -> Command {
    let mut command = support::xtask();
    command.args(["image", "--builder", "buildx"]).args(args);
    command
}

/// An argument as the dry run prints it: quoted for a POSIX shell when it
/// has a space.
fn quoted(arg: &str) -> String {
    if arg.contains(' ') {
        format!("'{arg}'")
    } else {
        arg.to_owned()
    }
}

/// The dry run's output, built from the same inputs the xtask reads.
/// `base` is (FROM reference, base.name, base.digest).
fn expected_dry_run(out: &Path, base: (&str, &str, &str), tags: &[&str], repo: &str) -> String {
    let (from, base_name, base_digest) = base;
    let epoch = commit_epoch();
    let labels = [
        ("SOURCE", "source", support::source_repository()),
        ("REVISION", "revision", head_sha()),
        ("VERSION", "version", server_version()),
        ("CREATED", "created", commit_time_rfc3339()),
        ("TITLE", "title", "server".to_owned()),
        (
            "DESCRIPTION",
            "description",
            "A small HTTP server built for distroless images".to_owned(),
        ),
        ("LICENSES", "licenses", "MIT OR Apache-2.0".to_owned()),
        ("BASE_NAME", "base.name", base_name.to_owned()),
        ("BASE_DIGEST", "base.digest", base_digest.to_owned()),
    ];
    let mut argv: Vec<String> = [
        "docker",
        "buildx",
        "build",
        "--file",
        "Dockerfile",
        "--platform=linux/amd64,linux/arm64",
        "--provenance=false",
        "--sbom=false",
    ]
    .map(String::from)
    .to_vec();
    argv.push(format!("--build-arg=SOURCE_DATE_EPOCH={epoch}"));
    argv.push(format!("--build-arg=BASE={from}"));
    for (arg, _, value) in &labels {
        argv.push(format!("--build-arg={arg}={value}"));
    }
    for (_, key, value) in labels.iter().filter(|(_, _, v)| !v.is_empty()) {
        argv.push(format!(
            "--annotation=index,manifest:org.opencontainers.image.{key}={value}"
        ));
    }
    argv.push(format!(
        "--output=type=oci,dest={},tar=false,rewrite-timestamp=true",
        out.display()
    ));
    argv.push(".".to_owned());
    let line: Vec<String> = argv.iter().map(|a| quoted(a)).collect();
    let mut text = format!(
        "plan for {repo} (builder buildx):\n  build linux/amd64, linux/arm64 on {} into {}\n  SOURCE_DATE_EPOCH={epoch} {}\n",
        if base_digest.is_empty() {
            base_name.to_owned()
        } else {
            format!("{base_name} ({base_digest})")
        },
        out.display(),
        line.join(" ")
    );
    if !tags.is_empty() {
        text.push_str(&format!(
            "  push blobs, platform manifests and the index by digest to {repo}\n"
        ));
        for tag in tags {
            text.push_str(&format!("  tag {repo}:{tag}\n"));
        }
    }
    text
}

#[test]
fn buildx_dry_run_prints_the_exact_command_and_writes_nothing() {
    let registry = Registry::start();
    let (base, _) = seed_base(&registry, "base");
    let digest = base_digest(&base);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("buildx-oci");
    let sha = head_sha();
    let stdout = run_ok(
        xtask_buildx(&[
            "--dry-run",
            "--insecure",
            "--push",
            "--branch",
            "main",
            "--sha",
            &sha,
            "--base",
            &base,
            "--image",
            &registry.repo("app"),
        ])
        .arg("--out")
        .arg(&out),
    );
    let pinned = format!("{}@{digest}", base.rsplit_once(':').unwrap().0);
    let expected = expected_dry_run(
        &out,
        (&pinned, &base, &digest),
        &[&format!("sha-{} (immutable)", &sha[..7]), "main"],
        &registry.repo("app"),
    );
    assert_eq!(stdout, expected);
    assert!(!out.exists(), "a dry run wrote {}", out.display());
    assert!(
        support::skopeo_tags(&registry.repo("app")).is_empty(),
        "a dry run pushed"
    );

    // scratch: nothing to resolve, and no base.digest annotation.
    let stdout = run_ok(
        xtask_buildx(&["--dry-run", "--base", "scratch"])
            .arg("--out")
            .arg(&out),
    );
    let expected = expected_dry_run(
        &out,
        ("scratch", "scratch", ""),
        &[],
        &support::release_image(),
    );
    assert_eq!(stdout, expected);
}

/// A directory holding only symlinks to the given tools, for a PATH
/// without docker.
fn bin_dir_with(tools: &[(&str, PathBuf)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, target) in tools {
        std::os::unix::fs::symlink(target, dir.path().join(name)).unwrap();
    }
    dir
}

fn which(name: &str) -> PathBuf {
    PathBuf::from(run_ok(Command::new("sh").args(["-c", &format!("command -v {name}")])).trim())
}

fn last_line(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr)
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_missing_docker_or_buildx_is_one_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let bin = bin_dir_with(&[("cargo", which("cargo")), ("git", which("git"))]);
    let missing_docker = run(xtask_buildx(&["--base", "scratch"])
        .env("PATH", bin.path())
        .env("HOME", home.path())
        .env("CARGO", which("cargo")));
    assert!(!missing_docker.status.success());
    assert_eq!(
        last_line(&missing_docker),
        "error: docker not found: install the Docker CLI with the buildx plugin, or use the default `--builder native`"
    );

    // A docker CLI without the buildx plugin, as docker itself answers.
    let fake = bin.path().join("docker");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho \"docker: '$1' is not a docker command.\" >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let missing_buildx = run(xtask_buildx(&["--base", "scratch"])
        .env("PATH", bin.path())
        .env("HOME", home.path())
        .env("CARGO", which("cargo")));
    assert!(!missing_buildx.status.success());
    assert_eq!(
        last_line(&missing_buildx),
        format!(
            "error: docker buildx is not available: `{} buildx version` failed; install the buildx plugin (https://docs.docker.com/build/install-buildx/), or use the default `--builder native`",
            fake.display()
        )
    );
}

/// A stand-in for `docker` that records its arguments and, for `buildx
/// build`, writes the OCI layout found at $FAKE_BUILDX_LAYOUT where
/// `--output=type=oci,dest=…` asks: what a docker-container builder would
/// do, minus the build.
const FAKE_DOCKER: &str = r#"#!/bin/sh
printf '%s\n' "$@" >> "$FAKE_DOCKER_LOG"
printf -- '--\n' >> "$FAKE_DOCKER_LOG"
[ "$1" = buildx ] || exit 1
[ "$2" = version ] && { echo "github.com/docker/buildx v0.0.0-fake"; exit 0; }
for arg in "$@"; do
  case "$arg" in
    --output=type=oci,dest=*)
      dest=${arg#--output=type=oci,dest=}
      dest=${dest%%,*}
      cp -r "$FAKE_BUILDX_LAYOUT" "$dest"
      exit 0;;
  esac
done
exit 1
"#;

/// `cargo xtask image` (native, not pushed) into `out`.
fn native_layout(registry: &Registry, base: &str, out: &Path) -> Value {
    serde_json::from_str(&run_ok(
        support::xtask()
            .args([
                "image",
                "--json",
                "--insecure",
                "--base",
                base,
                "--image",
                &registry.repo("app"),
            ])
            .arg("--out")
            .arg(out),
    ))
    .unwrap()
}

#[test]
fn buildx_output_is_pushed_by_digest_and_tagged_last() {
    let registry = Registry::start();
    let (base, _) = seed_base(&registry, "base");
    let sha = head_sha();
    support::dist();
    let work = tempfile::tempdir().unwrap();
    // What buildx would have written: here, native layouts of the same
    // inputs, so that what is under test is the command and the
    // publication of its output.
    let on_base = work.path().join("on-base");
    let on_scratch = work.path().join("on-scratch");
    let native = native_layout(&registry, &base, &on_base);
    native_layout(&registry, "scratch", &on_scratch);

    let bin = work.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fake = bin.join("docker");
    std::fs::write(&fake, FAKE_DOCKER).unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let log = work.path().join("docker.log");
    let out = work.path().join("buildx-oci");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let buildx = |layout: &Path, extra: &[&str]| {
        let mut command = xtask_buildx(&[
            "--insecure",
            "--base",
            &base,
            "--image",
            &registry.repo("app"),
            "--sha",
            &sha,
            "--version",
            "v0.4.0",
            "--push",
        ]);
        command
            .args(extra)
            .arg("--out")
            .arg(&out)
            .env("PATH", &path)
            .env("FAKE_DOCKER_LOG", &log)
            .env("FAKE_BUILDX_LAYOUT", layout);
        command
    };
    let dry = run_ok(&mut buildx(&on_base, &["--dry-run"]));
    assert!(!log.exists(), "a dry run called docker");
    let result: Value = serde_json::from_str(&run_ok(&mut buildx(&on_base, &["--json"]))).unwrap();

    // docker ran exactly the command that the dry run printed.
    let logged = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = logged.split("--\n").filter(|c| !c.is_empty()).collect();
    assert_eq!(calls.len(), 2, "{logged}");
    assert_eq!(calls[0], "buildx\nversion\n");
    let ran: Vec<String> = std::iter::once("docker")
        .chain(calls[1].lines())
        .map(quoted)
        .collect();
    let printed = dry
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("SOURCE_DATE_EPOCH="))
        .unwrap();
    assert_eq!(printed.split_once(' ').unwrap().1, ran.join(" "));

    assert_eq!(result["digest"], native["digest"]);
    assert_eq!(
        result["tags"],
        json!(["v0.4.0", format!("sha-{}", &sha[..7]), "v0.4", "latest"])
    );
    assert_eq!(
        result["platforms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["platform"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["linux/amd64", "linux/arm64"]
    );
    let tags = tag_digests(&registry.repo("app"));
    assert_eq!(
        tags.keys().cloned().collect::<Vec<_>>(),
        ["latest", &format!("sha-{}", &sha[..7]), "v0.4", "v0.4.0"].map(String::from)
    );
    assert!(tags
        .values()
        .all(|d| d == result["digest"].as_str().unwrap()));

    // Another build under the same immutable tag is refused, and nothing
    // moves.
    let refused = run(&mut buildx(&on_scratch, &[]));
    assert!(!refused.status.success());
    assert_eq!(
        last_line(&refused),
        format!(
            "error: {}:v0.4.0 already points at {}, not {}; it is immutable: release a new version, or pass --force to repoint it",
            registry.repo("app"),
            result["digest"].as_str().unwrap(),
            layout_digest(&out)
        )
    );
    assert_eq!(tag_digests(&registry.repo("app")), tags);
}

/// The image index digest in an OCI layout's index.json.
fn layout_digest(layout: &Path) -> String {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"].as_str().unwrap().to_owned()
}
