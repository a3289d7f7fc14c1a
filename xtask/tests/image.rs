//! `cargo xtask image` against the real registry, checked with skopeo,
//! umoci, qemu and crane: tools this project did not write.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    head_sha, run, run_ok, seed_base, server_version, skopeo_raw, tag_digests, tool, Registry,
};

/// `cargo xtask image` with a base from the registry, into its own layout.
fn image(
    registry: &Registry,
    base: &str,
    out: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    support::dist();
    let mut command = support::xtask();
    command
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
        .arg(out)
        .args(extra);
    run(&mut command)
}

fn json_of(output: &std::process::Output) -> Value {
    assert!(
        output.status.success(),
        "xtask image failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn commit_time_rfc3339() -> String {
    let out = run_ok(
        Command::new("git")
            .args([
                "log",
                "-1",
                "--format=%cd",
                "--date=format-local:%Y-%m-%dT%H:%M:%SZ",
            ])
            .env("TZ", "UTC")
            .current_dir(support::workspace_root()),
    );
    out.trim().to_owned()
}

#[test]
fn pushed_image_has_two_platforms_the_right_config_and_the_base_layers() {
    let registry = Registry::start();
    let (base, base_layers) = seed_base(&registry, "base");
    let out = tempfile::tempdir().unwrap();
    let result = json_of(&image(
        &registry,
        &base,
        out.path(),
        &["--push", "--version", "v0.1.0", "--sha", &head_sha()],
    ));
    let digest = result["digest"].as_str().unwrap().to_owned();
    assert_eq!(result["image"], registry.repo("app"));
    assert_eq!(
        result["tags"],
        serde_json::json!([
            "v0.1.0",
            &format!("sha-{}", &head_sha()[..7]),
            "v0.1",
            "latest"
        ])
    );

    // The index: exactly the two platforms, no unknown/unknown entries.
    let index = skopeo_raw(&format!("{}@{digest}", registry.repo("app")));
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    assert_eq!(tag_digests(&registry.repo("app"))["latest"], digest);

    let created = commit_time_rfc3339();
    for arch in ["amd64", "arm64"] {
        let config: Value = serde_json::from_str(&run_ok(Command::new(tool("skopeo")).args([
            "inspect",
            "--tls-verify=false",
            "--config",
            "--raw",
            "--override-arch",
            arch,
            &format!("docker://{}@{digest}", registry.repo("app")),
        ])))
        .unwrap();
        assert_eq!(config["architecture"], arch);
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!(["/server"])
        );
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(
            config["config"]["ExposedPorts"],
            serde_json::json!({"8080/tcp": {}})
        );
        assert_eq!(
            config["config"]["Healthcheck"]["Test"],
            serde_json::json!(["CMD", "/server", "healthcheck"])
        );
        let labels = &config["config"]["Labels"];
        assert_eq!(
            labels["org.opencontainers.image.revision"],
            head_sha().as_str()
        );
        assert_eq!(
            labels["org.opencontainers.image.version"],
            server_version().as_str()
        );
        assert_eq!(labels["org.opencontainers.image.created"], created.as_str());
        assert_eq!(labels["org.opencontainers.image.base.name"], base.as_str());
        assert!(labels["org.opencontainers.image.base.digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"));
        assert_eq!(config["created"], created.as_str());

        // The base's layers come first, unchanged.
        let manifest: Value = serde_json::from_str(&run_ok(Command::new(tool("skopeo")).args([
            "inspect",
            "--tls-verify=false",
            "--raw",
            "--override-arch",
            arch,
            &format!(
                "docker://{}@{}",
                registry.repo("app"),
                platform_digest(&index, arch)
            ),
        ])))
        .unwrap();
        let layers: Vec<String> = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(layers.len(), base_layers[arch].len() + 1, "{layers:?}");
        assert_eq!(&layers[..base_layers[arch].len()], &base_layers[arch][..]);
    }
}

fn platform_digest(index: &Value, arch: &str) -> String {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == arch)
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Unpacks one platform with skopeo and umoci into a rootfs.
fn unpack(reference: &str, arch: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let layout = support::copy_platform_to_layout(reference, arch, dir);
    let bundle = dir.join(format!("bundle-{arch}"));
    run_ok(
        Command::new(tool("umoci"))
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:img", layout.display()))
            .arg(&bundle),
    );
    bundle.join("rootfs")
}

#[test]
fn each_platform_unpacks_and_runs_from_its_rootfs() {
    let registry = Registry::start();
    let (base, _) = seed_base(&registry, "base");
    let out = tempfile::tempdir().unwrap();
    let result = json_of(&image(
        &registry,
        &base,
        out.path(),
        &["--push", "--branch", "main", "--sha", &head_sha()],
    ));
    assert_eq!(
        result["tags"],
        serde_json::json!([&format!("sha-{}", &head_sha()[..7]), "main"])
    );
    let reference = format!(
        "{}@{}",
        registry.repo("app"),
        result["digest"].as_str().unwrap()
    );
    let work = tempfile::tempdir().unwrap();

    for arch in ["amd64", "arm64"] {
        let rootfs = unpack(&reference, arch, work.path());
        assert!(
            rootfs.join("etc/base-release").is_file(),
            "the base's files are in the rootfs"
        );
        // The image adds the binary and nothing to run it with: no shell.
        for shell in [
            "bin/sh",
            "bin/bash",
            "bin/ash",
            "bin/busybox",
            "usr/bin/sh",
            "usr/bin/bash",
        ] {
            assert!(
                rootfs.join(shell).symlink_metadata().is_err(),
                "{arch}: the rootfs has /{shell}"
            );
        }
        let server = rootfs.join("server");
        let mut command = if arch == "arm64" {
            Command::new(tool("qemu-aarch64-static"))
        } else {
            Command::new(&server)
        };
        if arch == "arm64" {
            command.arg(&server);
        }
        let version: Value =
            serde_json::from_str(&run_ok(command.args(["version", "--json"]))).unwrap();
        assert_eq!(version["version"], server_version().as_str());
        assert_eq!(version["git_sha"], head_sha().as_str());
    }

    // The migration CLI ships in the same binary: no other image, no shell.
    // Without a database URL it names the one setting it needs.
    let server = work.path().join("bundle-amd64/rootfs/server");
    let migrate = run(Command::new(&server)
        .args(["migrate", "status"])
        .env_remove("SERVER_DATABASE_URL"));
    assert_eq!(
        (
            migrate.status.code(),
            String::from_utf8_lossy(&migrate.stderr).into_owned()
        ),
        (
            Some(2),
            "server: SERVER_DATABASE_URL is not set; set it to postgres://USER:PASSWORD@HOST:PORT/DATABASE\n".to_owned()
        )
    );
    // With one, it reads a real PostgreSQL and lists what it would apply,
    // changing nothing.
    let pg = support::pg::Postgres::start("app", "app");
    let mut migrations: Vec<String> =
        std::fs::read_dir(support::workspace_root().join("server/migrations"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .map(|p| format!("pending  {}\n", p.file_stem().unwrap().to_string_lossy()))
            .collect();
    migrations.sort();
    let status = run_ok(
        Command::new(&server)
            .args(["migrate", "status"])
            .env("SERVER_DATABASE_URL", pg.url("app")),
    );
    assert_eq!(status, migrations.concat());
    assert_eq!(
        pg.psql(
            "app",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'items'"
        ),
        "0"
    );

    // The amd64 rootfs serves, and its own healthcheck says so.
    let server = work.path().join("bundle-amd64/rootfs/server");
    let port = support::free_port();
    let addr = format!("0.0.0.0:{port}");
    let mut child = Command::new(&server)
        .arg("serve")
        .env("SERVER_ADDR", &addr)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while support::http_status(port, "/healthz") != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the unpacked server did not answer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let health = run(Command::new(&server)
        .arg("healthcheck")
        .env("SERVER_ADDR", &addr));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        health.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&health.stdout)
    );
}

#[test]
fn builds_are_reproducible_and_pushing_again_changes_nothing() {
    let registry = Registry::start();
    let (base, _) = seed_base(&registry, "base");
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sha = head_sha();
    let one = json_of(&image(
        &registry,
        &base,
        first.path(),
        &["--push", "--version", "v1.0.0", "--sha", &sha],
    ));
    assert!(!one["push"]["uploaded"].as_array().unwrap().is_empty());
    let tags_before = tag_digests(&registry.repo("app"));

    // A fresh layout gives the same digest, and the registry gets no blob.
    let two = json_of(&image(
        &registry,
        &base,
        second.path(),
        &["--push", "--version", "v1.0.0", "--sha", &sha],
    ));
    assert_eq!(one["digest"], two["digest"]);
    assert_eq!(two["push"]["uploaded"], serde_json::json!([]));
    assert_eq!(two["push"]["manifests_pushed"], serde_json::json!([]));
    assert_eq!(tag_digests(&registry.repo("app")), tags_before);
}

#[test]
fn an_immutable_tag_at_another_digest_is_refused_and_nothing_changes() {
    let registry = Registry::start();
    let (base, _) = seed_base(&registry, "base");
    let out = tempfile::tempdir().unwrap();
    let sha = head_sha();
    // Someone else's image already holds v2.0.0.
    run_ok(Command::new(tool("crane")).args([
        "copy",
        "--insecure",
        &format!("{}:amd64", registry.repo("base")),
        &format!("{}:v2.0.0", registry.repo("app")),
    ]));
    let before = tag_digests(&registry.repo("app"));
    let output = image(
        &registry,
        &base,
        out.path(),
        &["--push", "--version", "v2.0.0", "--sha", &sha],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "error: {}:v2.0.0 already points at sha256:",
            registry.repo("app")
        )) && last
            .ends_with("it is immutable: release a new version, or pass --force to repoint it"),
        "{stderr}"
    );
    assert_eq!(
        tag_digests(&registry.repo("app")),
        before,
        "a refused push changed tags"
    );
    let catalog = support::http_get(registry.port, "/v2/app/tags/list")
        .unwrap()
        .1;
    assert!(catalog.contains("\"v2.0.0\""), "{catalog}");
}

#[test]
fn a_registry_crash_mid_push_fails_cleanly_and_a_rerun_completes() {
    let registry = Arc::new(Mutex::new(Registry::start()));
    let (base, _) = seed_base(&registry.lock().unwrap(), "base");
    let repo_direct = registry.lock().unwrap().repo("app");
    // The registry dies as the first platform manifest arrives: blobs are
    // in, no manifest and no tag is.
    let proxy = support::KillingProxy::start(registry.clone(), "PUT /v2/app/manifests/sha256:");
    let out = tempfile::tempdir().unwrap();
    let sha = head_sha();
    support::dist();
    // Taken before the push: a guard held through it would block the
    // proxy's kill, and the push would hang instead of failing.
    let proxied_base = base.replace(
        &registry.lock().unwrap().host(),
        &format!("127.0.0.1:{}", proxy.port),
    );
    let failed = run(support::xtask()
        .args([
            "image",
            "--json",
            "--insecure",
            "--push",
            "--version",
            "v0.3.0",
            "--sha",
            &sha,
            "--base",
            &proxied_base,
        ])
        .args(["--image", &format!("127.0.0.1:{}/app", proxy.port)])
        .arg("--out")
        .arg(out.path()));
    assert!(
        proxy.has_fired(),
        "the proxy never saw a manifest push; the push ended with {}:\n{}",
        failed.status,
        String::from_utf8_lossy(&failed.stderr)
    );
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr
            .trim_end()
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with("error: cannot push manifest sha256:"),
        "{stderr}"
    );

    registry.lock().unwrap().restart();
    assert!(
        support::skopeo_tags(&repo_direct).is_empty(),
        "a tag was set before the push completed"
    );
    drop(proxy);
    let registry = registry.lock().unwrap();
    let done = json_of(&image(
        &registry,
        &base,
        out.path(),
        &["--push", "--version", "v0.3.0", "--sha", &sha],
    ));
    let tags = tag_digests(&repo_direct);
    assert_eq!(
        tags.keys().cloned().collect::<Vec<_>>(),
        ["latest", &format!("sha-{}", &sha[..7]), "v0.3", "v0.3.0"].map(String::from)
    );
    assert!(tags.values().all(|d| d == done["digest"].as_str().unwrap()));
    // The first run's blobs were kept. Only the two configs go up again:
    // they record the base's name, which the first run gave through the
    // proxy's port.
    let mut uploaded: Vec<String> = done["push"]["uploaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect();
    uploaded.sort();
    let mut configs: Vec<String> = done["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let manifest =
                support::skopeo_raw(&format!("{repo_direct}@{}", p["digest"].as_str().unwrap()));
            manifest["config"]["digest"].as_str().unwrap().to_owned()
        })
        .collect();
    configs.sort();
    assert_eq!(uploaded, configs, "{}", done["push"]);
}

#[test]
fn buildx_dry_run_prints_the_exact_command_and_a_missing_buildx_is_a_clear_error() {
    support::dist();
    let dry = run_ok(support::xtask().args([
        "image",
        "--builder",
        "buildx",
        "--dry-run",
        "--base",
        "scratch",
        "--version",
        "v0.1.0",
        "--sha",
        &head_sha(),
    ]));
    assert!(dry.contains("docker buildx build --file Dockerfile --platform=linux/amd64,linux/arm64 --provenance=false --sbom=false"), "{dry}");
    // This machine has the docker client but no buildx plugin.
    let missing = run(support::xtask().args(["image", "--builder", "buildx", "--base", "scratch"]));
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("docker buildx is not available"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

/// `cargo xtask image --base scratch` into `out`, with its own cache.
fn image_with_cache(cache: &std::path::Path, out: &std::path::Path) -> Command {
    support::dist();
    let mut command = support::xtask();
    command
        .args(["image", "--json", "--base", "scratch", "--out"])
        .arg(out)
        .env("XTASK_CACHE_DIR", cache);
    command
}

/// Every file under `dir`, relative, with its bytes.
fn files_under(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(
        root: &std::path::Path,
        dir: &std::path::Path,
        out: &mut std::collections::BTreeMap<String, Vec<u8>>,
    ) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let name = path.strip_prefix(root).unwrap().display().to_string();
                out.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn a_cache_hit_gives_the_bytes_of_a_miss_and_a_corrupted_entry_is_rebuilt() {
    let temp = tempfile::tempdir().unwrap();
    let cache = temp.path().join("cache");
    let layouts: Vec<_> = ["miss", "hit", "corrupt"]
        .iter()
        .map(|name| temp.path().join(name))
        .collect();

    let miss = json_of(&run(&mut image_with_cache(&cache, &layouts[0])));
    // Per platform, the image layer and the release archive of dist.
    let blobs: Vec<_> = std::fs::read_dir(cache.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(blobs.len(), 4, "{blobs:?}");
    assert_eq!(std::fs::read_dir(cache.join("entries")).unwrap().count(), 4);
    let mtimes: Vec<_> = blobs
        .iter()
        .map(|b| std::fs::metadata(b).unwrap().modified().unwrap())
        .collect();

    let hit = json_of(&run(&mut image_with_cache(&cache, &layouts[1])));
    assert_eq!(hit["digest"], miss["digest"]);
    assert_eq!(files_under(&layouts[1]), files_under(&layouts[0]));
    for (blob, mtime) in blobs.iter().zip(&mtimes) {
        assert_eq!(
            &std::fs::metadata(blob).unwrap().modified().unwrap(),
            mtime,
            "a hit rewrote {}",
            blob.display()
        );
    }

    // One flipped byte in a cached layer: detected by its digest, and rebuilt.
    let corrupted = blobs
        .iter()
        .find(|b| {
            layouts[0]
                .join("blobs/sha256")
                .join(b.file_name().unwrap())
                .is_file()
        })
        .expect("a cached blob is a layer of the image");
    let good = std::fs::read(corrupted).unwrap();
    let mut bad = good.clone();
    bad[100] ^= 0xff;
    std::fs::write(corrupted, &bad).unwrap();
    let rebuilt = json_of(&run(&mut image_with_cache(&cache, &layouts[2])));
    assert_eq!(rebuilt["digest"], miss["digest"]);
    assert_eq!(files_under(&layouts[2]), files_under(&layouts[0]));
    assert_eq!(std::fs::read(corrupted).unwrap(), good);

    // clean-cache: the dry run counts what it would remove and keeps it;
    // then it removes it, and says so when there is nothing left.
    let clean = |extra: &[&str]| {
        run_ok(
            support::xtask()
                .arg("clean-cache")
                .args(extra)
                .env("XTASK_CACHE_DIR", &cache),
        )
    };
    let kept = files_under(&cache);
    let bytes: usize = kept.values().map(Vec::len).sum();
    assert_eq!(
        clean(&["--dry-run"]),
        format!(
            "would remove {} ({} files, {bytes} bytes)\n",
            cache.display(),
            kept.len()
        )
    );
    assert_eq!(files_under(&cache), kept);
    assert_eq!(clean(&[]), format!("removed {}\n", cache.display()));
    assert!(!cache.exists());
    let empty = format!("{} is already empty\n", cache.display());
    assert_eq!(clean(&["--dry-run"]), empty);
    assert_eq!(clean(&[]), empty);
}

#[test]
fn two_concurrent_builds_sharing_one_cache_both_succeed_and_agree() {
    let temp = tempfile::tempdir().unwrap();
    let cache = temp.path().join("cache");
    let children: Vec<_> = ["one", "two"]
        .iter()
        .map(|name| {
            image_with_cache(&cache, &temp.path().join(name))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Value> = children
        .into_iter()
        .map(|child| json_of(&child.wait_with_output().unwrap()))
        .collect();
    assert_eq!(outputs[0]["digest"], outputs[1]["digest"]);
    assert_eq!(
        files_under(&temp.path().join("one")),
        files_under(&temp.path().join("two"))
    );
    // And what they left serves a third run.
    let third = json_of(&run(&mut image_with_cache(
        &cache,
        &temp.path().join("three"),
    )));
    assert_eq!(third["digest"], outputs[0]["digest"]);
}
