//! `cargo xtask sign`, `attest` and `verify` against the real registry and
//! the real cosign, with keys generated here; checked with cosign, crane
//! and skopeo directly, not only through our own code.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use serde_json::{json, Value};
use support::{run, run_ok, seed_base, skopeo_raw, skopeo_tags, tag_digests, tool, Registry};

const PASSWORD: &str = "test-password";
const SIGNATURE_TYPE: &str = "https://sigstore.dev/cosign/sign/v1";
const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// A cosign key pair made at test time.
struct Keys {
    _dir: tempfile::TempDir,
    private: PathBuf,
    public: PathBuf,
}

fn generate_keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(tool("cosign"))
            .arg("generate-key-pair")
            .env("COSIGN_PASSWORD", PASSWORD)
            .current_dir(dir.path()),
    );
    Keys {
        private: dir.path().join("cosign.key"),
        public: dir.path().join("cosign.pub"),
        _dir: dir,
    }
}

/// An image pushed by `cargo xtask image --push --no-tags` onto a
/// two-platform base made with crane.
struct Pushed {
    repo: String,
    digest: String,
    /// (`linux/amd64`, digest) for each platform, in index order.
    platforms: Vec<(String, String)>,
    _out: tempfile::TempDir,
}

impl Pushed {
    fn by_digest(&self) -> String {
        format!("{}@{}", self.repo, self.digest)
    }
}

fn push_image(registry: &Registry, base: &str, name: &str) -> Pushed {
    support::dist();
    let out = tempfile::tempdir().unwrap();
    let repo = registry.repo(name);
    let stdout = run_ok(
        support::xtask()
            .args([
                "image",
                "--push",
                "--no-tags",
                "--insecure",
                "--json",
                "--image",
                &repo,
                "--base",
                base,
                "--out",
            ])
            .arg(out.path().join("oci")),
    );
    let result: Value = serde_json::from_str(&stdout).expect("image --json prints JSON");
    Pushed {
        repo,
        digest: result["digest"].as_str().unwrap().to_owned(),
        platforms: result["platforms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["platform"].as_str().unwrap().to_owned(),
                    p["digest"].as_str().unwrap().to_owned(),
                )
            })
            .collect(),
        _out: out,
    }
}

/// `cargo xtask <args>` with the key password and outside GitHub Actions.
fn xtask(args: &[&str]) -> Output {
    run(support::xtask()
        .args(args)
        .env("COSIGN_PASSWORD", PASSWORD)
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_TOKEN"))
}

fn xtask_ok(args: &[&str]) -> String {
    let output = xtask(args);
    assert!(
        output.status.success(),
        "cargo xtask {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The last line of stderr of a command that must fail.
fn xtask_err(args: &[&str]) -> (String, String) {
    let output = xtask(args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "cargo xtask {args:?} succeeded but must fail\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let last = stderr.lines().last().unwrap_or_default().to_owned();
    (last, stdout)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// cosign directly, with plain HTTP to the test registry.
fn cosign(args: &[&str]) -> Output {
    run(Command::new(tool("cosign"))
        .args(args)
        .args(["--allow-insecure-registry", "--allow-http-registry"])
        .env("COSIGN_PASSWORD", PASSWORD))
}

/// The referrers cosign stored for `digest` in the `sha256-<hex>` fallback
/// tag: (artifact manifest, its subject digest, its predicate type).
fn fallback_referrers(repo: &str, digest: &str) -> Vec<(String, String, String)> {
    let tag = digest.replace(':', "-");
    let index = skopeo_raw(&format!("{repo}:{tag}"));
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            assert_eq!(entry["artifactType"], BUNDLE);
            let referrer = entry["digest"].as_str().unwrap().to_owned();
            let manifest = skopeo_raw(&format!("{repo}@{referrer}"));
            (
                referrer,
                manifest["subject"]["digest"].as_str().unwrap().to_owned(),
                manifest["annotations"]["dev.sigstore.bundle.predicateType"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect()
}

fn predicate_types(repo: &str, digest: &str) -> Vec<String> {
    let mut types: Vec<String> = fallback_referrers(repo, digest)
        .into_iter()
        .map(|(_, subject, kind)| {
            assert_eq!(
                subject, digest,
                "a referrer of {digest} names another subject"
            );
            kind
        })
        .collect();
    types.sort();
    types
}

fn write_no_rekor_config(dir: &Path) -> PathBuf {
    // Written here by hand, independently of the xtask's own.
    let path = dir.join("signing-config.json");
    std::fs::write(
        &path,
        r#"{"mediaType":"application/vnd.dev.sigstore.signingconfig.v0.2+json","caUrls":[],"oidcUrls":[],"rekorTlogUrls":[],"tsaUrls":[]}"#,
    )
    .unwrap();
    path
}

#[test]
fn sign_attest_verify_round_trip_checked_with_cosign_directly() {
    let registry = Registry::start();
    let (base, _) = seed_base(&registry, "base");
    let keys = generate_keys();
    let image = push_image(&registry, &base, "app");
    let reference = image.by_digest();
    let key = path(&keys.private);
    let public = path(&keys.public);
    let common = ["--no-tlog", "--insecure"];
    assert_eq!(image.platforms.len(), 2);

    // A dry run prints the exact command and writes nothing.
    let plan = xtask_ok(
        &[
            &["sign", &reference, "--key", key, "--dry-run"],
            &common[..],
        ]
        .concat(),
    );
    let cosign_path = tool("cosign");
    let signing_config =
        support::workspace_root().join("target/cosign/signing-config-no-tlog.json");
    let trusted_root = signing_config.with_file_name("trusted-root-empty.json");
    assert!(
        plan.lines().any(|l| l
            == format!(
                "{} sign --recursive --yes --key={key} --signing-config={} --trusted-root={} --allow-insecure-registry --allow-http-registry {reference}",
                cosign_path.display(),
                signing_config.display(),
                trusted_root.display()
            )),
        "{plan}"
    );
    assert_eq!(skopeo_tags(&image.repo), Vec::<String>::new());

    let started = Instant::now();
    xtask_ok(&[&["sign", &reference, "--key", key], &common[..]].concat());
    let sign_time = started.elapsed();

    // Debian's registry has no referrers API: cosign keeps one OCI index
    // per signed digest under the tag sha256-<hex>, listing bundles whose
    // subject is that digest.
    assert_eq!(
        support::http_status(
            registry.port,
            &format!("/v2/app/referrers/{}", image.digest)
        ),
        Some(404)
    );
    let mut expected_tags: Vec<String> = std::iter::once(&image.digest)
        .chain(image.platforms.iter().map(|(_, d)| d))
        .map(|d| d.replace(':', "-"))
        .collect();
    expected_tags.sort();
    assert_eq!(skopeo_tags(&image.repo), expected_tags);
    assert_eq!(
        predicate_types(&image.repo, &image.digest),
        [SIGNATURE_TYPE]
    );
    for (_, digest) in &image.platforms {
        assert_eq!(predicate_types(&image.repo, digest), [SIGNATURE_TYPE]);
    }

    let plan = xtask_ok(
        &[
            &["attest", &reference, "--key", key, "--dry-run"],
            &common[..],
        ]
        .concat(),
    );
    let commands: Vec<&str> = plan.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(commands.len(), 7, "{plan}");
    let attest_dir = support::workspace_root().join("target/attest");
    for (n, (platform, digest)) in image.platforms.iter().enumerate() {
        let slug = platform.replace('/', "-");
        let dir = attest_dir.join(digest.trim_start_matches("sha256:"));
        for (m, (kind, file)) in [
            ("cyclonedx", format!("{slug}.cdx.json")),
            ("spdxjson", format!("{slug}.spdx.json")),
            ("slsaprovenance1", "provenance.json".to_owned()),
        ]
        .iter()
        .enumerate()
        {
            assert_eq!(
                commands[n * 3 + m],
                format!(
                    "{} attest --yes --key={key} --signing-config={} --trusted-root={} --allow-insecure-registry --allow-http-registry --type={kind} --predicate={} {}@{digest}",
                    cosign_path.display(),
                    signing_config.display(),
                    trusted_root.display(),
                    dir.join(file).display(),
                    image.repo
                )
            );
        }
    }
    assert!(commands[6].ends_with(&format!(
        "--type=slsaprovenance1 --predicate={}/provenance.json {reference}",
        attest_dir
            .join(image.digest.trim_start_matches("sha256:"))
            .display()
    )));
    assert_eq!(skopeo_tags(&image.repo), expected_tags);

    let started = Instant::now();
    xtask_ok(&[&["attest", &reference, "--key", key], &common[..]].concat());
    let attest_time = started.elapsed();
    for (_, digest) in &image.platforms {
        assert_eq!(
            predicate_types(&image.repo, digest),
            [
                "https://cyclonedx.org/bom",
                SIGNATURE_TYPE,
                "https://slsa.dev/provenance/v1",
                "https://spdx.dev/Document",
            ]
        );
    }
    assert_eq!(
        predicate_types(&image.repo, &image.digest),
        [SIGNATURE_TYPE, "https://slsa.dev/provenance/v1"]
    );

    let started = Instant::now();
    let report: Value = serde_json::from_str(&xtask_ok(
        &[
            &["verify", &reference, "--key", public, "--run", "--json"],
            &common[..],
        ]
        .concat(),
    ))
    .unwrap();
    let verify_time = started.elapsed();
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["digest"], image.digest.as_str());
    let checks: Vec<(String, String, bool)> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_owned(),
                c["subject"].as_str().unwrap().to_owned(),
                c["ok"].as_bool().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, String, bool)> = [
        ("signature", "index"),
        ("signature", "linux/amd64"),
        ("signature", "linux/arm64"),
        ("sbom", "linux/amd64"),
        ("provenance", "linux/amd64"),
        ("sbom", "linux/arm64"),
        ("provenance", "linux/arm64"),
        ("provenance", "index"),
        ("run", "linux/amd64"),
        ("run", "linux/arm64"),
    ]
    .iter()
    .map(|(c, s)| (c.to_string(), s.to_string(), true))
    .collect();
    assert_eq!(checks, expected);
    let version = support::server_version();
    let short = &support::head_sha()[..7];
    let details: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["detail"].as_str().unwrap())
        .collect();
    assert_eq!(details[0], format!("1 signature(s) by the key {public}"));
    assert_eq!(
        details[3],
        format!(
            "CycloneDX, root component server {version}, of {}@{}",
            image.repo, image.platforms[0].1
        )
    );
    assert_eq!(details[8], format!("/server {version} ({short})"));
    assert_eq!(
        details[9],
        format!("/server {version} ({short}) under qemu")
    );

    // The table, and a wrong expected version is a named failure; the
    // image's server is then not run at all, since not every check passed.
    let table = xtask_ok(&[&["verify", &reference, "--key", public], &common[..]].concat());
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("PASS   signature   index ")),
        "{table}"
    );
    let (error, table) = xtask_err(
        &[
            &[
                "verify",
                &reference,
                "--key",
                public,
                "--run",
                "--expect-version",
                "v9.9.9",
            ],
            &common[..],
        ]
        .concat(),
    );
    assert_eq!(
        error,
        format!("error: verification of {reference} failed: sbom of linux/amd64, sbom of linux/arm64, run of all")
    );
    assert!(
        table.lines().any(|l| l
            == "FAIL   run         all         not run: the signature and attestation checks did not all pass"),
        "{table}"
    );

    // cosign itself, without our code, accepts the index and each platform.
    for digest in std::iter::once(&image.digest).chain(image.platforms.iter().map(|(_, d)| d)) {
        let target = format!("{}@{digest}", image.repo);
        let out = cosign(&[
            "verify",
            "--key",
            public,
            "--insecure-ignore-tlog=true",
            "--output=json",
            &target,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let claims: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert!(claims
            .iter()
            .any(|c| c["critical"]["type"] == SIGNATURE_TYPE
                && c["critical"]["image"]["docker-manifest-digest"] == digest.as_str()));
    }
    for (_, digest) in &image.platforms {
        for kind in ["cyclonedx", "slsaprovenance1", "spdxjson"] {
            let out = cosign(&[
                "verify-attestation",
                "--key",
                public,
                "--insecure-ignore-tlog=true",
                "--type",
                kind,
                &format!("{}@{digest}", image.repo),
            ]);
            assert!(
                out.status.success(),
                "{kind}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    // Another key is not trusted: every check fails and says why.
    let other = generate_keys();
    let other_public = path(&other.public);
    let (error, table) =
        xtask_err(&[&["verify", &reference, "--key", other_public], &common[..]].concat());
    assert_eq!(
        error,
        format!("error: verification of {reference} failed: signature of index, signature of linux/amd64, signature of linux/arm64, sbom of linux/amd64, provenance of linux/amd64, sbom of linux/arm64, provenance of linux/arm64, provenance of index")
    );
    assert!(
        table.lines().any(|l| l
            == format!("FAIL   signature   index       not signed by the key {other_public}: no matching attestations: failed to verify signature: could not verify envelope: accepted signatures do not match threshold, Found: 0, Expected 1")),
        "{table}"
    );
    // And cosign directly agrees.
    assert!(!cosign(&[
        "verify",
        "--key",
        other_public,
        "--insecure-ignore-tlog=true",
        &reference
    ])
    .status
    .success());

    eprintln!(
        "wall time for two platforms: sign {:.2}s, attest {:.2}s, verify --run {:.2}s",
        sign_time.as_secs_f64(),
        attest_time.as_secs_f64(),
        verify_time.as_secs_f64()
    );
}

#[test]
fn unsigned_partly_signed_and_unattested_images_fail_verify_by_name() {
    let registry = Registry::start();
    let (base, _) = seed_base(&registry, "base");
    let keys = generate_keys();
    let key = path(&keys.private);
    let public = path(&keys.public);
    let common = ["--no-tlog", "--insecure"];
    let work = tempfile::tempdir().unwrap();
    let no_rekor = write_no_rekor_config(work.path());
    let no_rekor = path(&no_rekor);

    // Unsigned: everything fails, and the signature lines say so.
    let image = push_image(&registry, &base, "app");
    let reference = image.by_digest();
    let (error, table) =
        xtask_err(&[&["verify", &reference, "--key", public], &common[..]].concat());
    assert_eq!(
        error,
        format!("error: verification of {reference} failed: signature of index, signature of linux/amd64, signature of linux/arm64, sbom of linux/amd64, provenance of linux/amd64, sbom of linux/arm64, provenance of linux/arm64, provenance of index")
    );
    assert!(
        table.lines().any(|l| l
            == format!(
            "FAIL   signature   linux/amd64 not signed by the key {public}: no signatures found"
        )),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l
            == format!("FAIL   sbom        linux/arm64 no cyclonedx attestation by the key {public}: no matching attestations")),
        "{table}"
    );

    // Signing by tag resolves the tag once and signs the digest it names.
    run_ok(Command::new(tool("crane")).args(["tag", "--insecure", &reference, "candidate"]));
    let output = xtask(
        &[
            &["sign", &format!("{}:candidate", image.repo), "--key", key],
            &common[..],
        ]
        .concat(),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains(&format!(
        "{}:candidate is {}; everything from here works on that digest",
        image.repo, image.digest
    )));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), reference);
    let mut expected_tags: Vec<String> = std::iter::once(&image.digest)
        .chain(image.platforms.iter().map(|(_, d)| d))
        .map(|d| d.replace(':', "-"))
        .chain(std::iter::once("candidate".to_owned()))
        .collect();
    expected_tags.sort();
    assert_eq!(skopeo_tags(&image.repo), expected_tags);
    let referrers = fallback_referrers(&image.repo, &image.digest);
    assert_eq!(referrers.len(), 1);
    assert_eq!(referrers[0].1, image.digest);
    let tree = cosign(&["tree", &format!("{}:candidate", image.repo)]);
    let tree =
        String::from_utf8_lossy(&tree.stdout).into_owned() + &String::from_utf8_lossy(&tree.stderr);
    assert!(
        tree.contains(&format!(
            "{SIGNATURE_TYPE} artifacts via OCI referrer: {}@{}",
            image.repo, referrers[0].0
        )),
        "{tree}"
    );

    // Attested too, the tag verifies.
    xtask_ok(&[&["attest", &reference, "--key", key], &common[..]].concat());
    let candidate = format!("{}:candidate", image.repo);
    xtask_ok(&[&["verify", &candidate, "--key", public], &common[..]].concat());

    // The tag repointed to an index with the same platforms but another
    // digest: the platforms are signed and attested, the new index is not.
    run_ok(Command::new(tool("crane")).args([
        "index",
        "append",
        "--insecure",
        "-m",
        &format!("{}@{}", image.repo, image.platforms[0].1),
        "-m",
        &format!("{}@{}", image.repo, image.platforms[1].1),
        "-t",
        &format!("{}:candidate", image.repo),
    ]));
    let (error, _) = xtask_err(
        &[
            &[
                "verify",
                &format!("{}:candidate", image.repo),
                "--key",
                public,
            ],
            &common[..],
        ]
        .concat(),
    );
    let repointed = run_ok(Command::new(tool("crane")).args([
        "digest",
        "--insecure",
        &format!("{}:candidate", image.repo),
    ]));
    let repointed = repointed.trim();
    assert_ne!(repointed, image.digest);
    assert_eq!(
        error,
        format!(
            "error: verification of {}@{repointed} failed: signature of index, provenance of index",
            image.repo
        )
    );

    // The index signed without --recursive, then attested: cosign verify
    // alone accepts each platform (it counts attestations as signatures),
    // ours does not.
    let partial = push_image(&registry, &base, "partial");
    let partial_ref = partial.by_digest();
    let out = cosign(&[
        "sign",
        "--yes",
        "--key",
        key,
        "--signing-config",
        no_rekor,
        &partial_ref,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    xtask_ok(&[&["attest", &partial_ref, "--key", key], &common[..]].concat());
    let platform_ref = format!("{}@{}", partial.repo, partial.platforms[0].1);
    assert!(
        cosign(&["verify", "--key", public, "--insecure-ignore-tlog=true", &platform_ref]).status.success(),
        "cosign verify no longer accepts attestations as signatures; the trap this test documents is gone"
    );
    let (error, table) =
        xtask_err(&[&["verify", &partial_ref, "--key", public], &common[..]].concat());
    assert_eq!(
        error,
        format!("error: verification of {partial_ref} failed: signature of linux/amd64, signature of linux/arm64")
    );
    let line = table
        .lines()
        .find(|l| l.starts_with("FAIL   signature   linux/amd64 "))
        .unwrap_or_else(|| panic!("{table}"));
    let prefix = format!(
        "FAIL   signature   linux/amd64 not signed by the key {public}: cosign found only attestations ("
    );
    let suffix = format!("), no signature of {}", partial.platforms[0].1);
    let types = line
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(&suffix))
        .unwrap_or_else(|| panic!("{line}"));
    let mut types: Vec<&str> = types.split(", ").collect();
    types.sort();
    assert_eq!(
        types,
        [
            "https://cyclonedx.org/bom",
            "https://slsa.dev/provenance/v1",
            "https://spdx.dev/Document"
        ]
    );

    // Signed, but only an empty provenance attached: the SBOM checks fail,
    // and so do the provenance checks, since it vouches for nothing.
    let bare = push_image(&registry, &base, "bare");
    let bare_ref = bare.by_digest();
    xtask_ok(&[&["sign", &bare_ref, "--key", key], &common[..]].concat());
    let provenance = work.path().join("provenance.json");
    std::fs::write(
        &provenance,
        r#"{"buildDefinition":{"buildType":"https://example.com/test","externalParameters":{}},"runDetails":{"builder":{"id":"local"}}}"#,
    )
    .unwrap();
    for target in std::iter::once(&bare.digest).chain(bare.platforms.iter().map(|(_, d)| d)) {
        let out = cosign(&[
            "attest",
            "--yes",
            "--key",
            key,
            "--signing-config",
            no_rekor,
            "--type",
            "slsaprovenance1",
            "--predicate",
            path(&provenance),
            &format!("{}@{target}", bare.repo),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (error, table) =
        xtask_err(&[&["verify", &bare_ref, "--key", public], &common[..]].concat());
    assert_eq!(
        error,
        format!(
            "error: verification of {bare_ref} failed: sbom of linux/amd64, provenance of linux/amd64, sbom of linux/arm64, provenance of linux/arm64, provenance of index"
        )
    );
    assert!(
        table
            .lines()
            .any(|l| l == "FAIL   provenance  index       the provenance of index names no image"),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.starts_with(&format!(
            "FAIL   sbom        linux/amd64 no cyclonedx attestation by the key {public}: none of the attestations matched the predicate type: cyclonedx, found: "
        ))),
        "{table}"
    );
}

#[test]
fn signing_needs_a_key_outside_github_actions() {
    let reference = format!("127.0.0.1:9/app@sha256:{}", "0".repeat(64));
    for task in ["sign", "attest"] {
        let (error, _) = xtask_err(&[task, &reference, "--insecure"]);
        assert_eq!(
            error,
            "error: no signing key: pass --key cosign.key (or env://VAR, or a KMS URI), or run in GitHub Actions with `permissions: id-token: write` for keyless signing"
        );
    }
    let (error, _) = xtask_err(&["sign", &reference, "--key", "/nonexistent/cosign.key"]);
    assert_eq!(
        error,
        "error: the key /nonexistent/cosign.key does not exist; pass the path of a cosign key (cosign generate-key-pair makes one), env://VAR, or a KMS URI"
    );
    // The public half, as a user mixing up the two files would pass it.
    let dir = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(tool("cosign"))
            .arg("generate-key-pair")
            .env("COSIGN_PASSWORD", "")
            .current_dir(dir.path()),
    );
    let public = dir.path().join("cosign.pub");
    let public = public.to_str().unwrap();
    for task in ["sign", "attest"] {
        let (error, _) = xtask_err(&[task, &reference, "--key", public]);
        assert_eq!(
            error,
            format!("error: {public} is a public key, which only verifies; signing needs the private key: pass --key cosign.key (the file `cosign generate-key-pair` wrote beside it)")
        );
    }
}

#[test]
fn a_cosign_of_another_version_is_refused_and_the_pinned_one_named() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("cosign");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho '{\"gitVersion\": \"v2.6.1\", \"platform\": \"linux/amd64\"}'\n",
    )
    .unwrap();
    let mut permissions = std::fs::metadata(&fake).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&fake, permissions).unwrap();
    let key = dir.path().join("cosign.key");
    std::fs::write(&key, "not read").unwrap();
    let path_var = std::env::join_paths(std::iter::once(dir.path().to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let reference = format!("127.0.0.1:9/app@sha256:{}", "0".repeat(64));
    for task in ["sign", "attest", "verify"] {
        let output = run(support::xtask()
            .args([task, &reference, "--key", path(&key), "--insecure"])
            .env("PATH", &path_var)
            .env("COSIGN_PASSWORD", PASSWORD));
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            stderr.lines().last().unwrap_or_default(),
            format!(
                "error: cosign v2.6.1 found at {}, but this project needs exactly cosign v3.1.3: run `cargo xtask setup` (go install github.com/sigstore/cosign/v3/cmd/cosign@v3.1.3)",
                fake.display()
            ),
            "{task}"
        );
    }
}

/// Branch and PR builds: `image --push --sign` signs by digest before any
/// tag moves, so a failed signature leaves no tag behind.
#[test]
fn image_push_sign_signs_by_digest_before_tagging() {
    support::dist();
    let registry = Registry::start();
    let (base, _) = seed_base(&registry, "base");
    let keys = generate_keys();
    let repo = registry.repo("branch");
    let out = tempfile::tempdir().unwrap();
    let sha = support::head_sha();
    let image = |key: &Path| {
        xtask(&[
            "image",
            "--push",
            "--sign",
            "--key",
            path(key),
            "--no-tlog",
            "--insecure",
            "--json",
            "--image",
            &repo,
            "--base",
            &base,
            "--branch",
            "feature/login",
            "--sha",
            &sha,
            "--out",
            path(&out.path().join("oci")),
        ])
    };

    let failed = image(&keys.private.with_file_name("missing.key"));
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    let missing = keys.private.with_file_name("missing.key");
    assert!(
        stderr.contains(&format!(
            "error: the key {} does not exist;",
            missing.display()
        )),
        "{stderr}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("error: `cargo xtask sign {repo}@sha256:"))
            && last.ends_with(&format!(
                " --key={} --no-tlog --insecure` failed",
                missing.display()
            )),
        "{last}"
    );
    assert_eq!(
        skopeo_tags(&repo),
        Vec::<String>::new(),
        "a failed signature must leave no tag"
    );

    let output = image(&keys.private);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    let digest = result["digest"].as_str().unwrap().to_owned();
    assert_eq!(
        result["tags"],
        serde_json::json!([format!("sha-{}", &sha[..7]), "feature-login"])
    );
    let verified = cosign(&[
        "verify",
        "--key",
        path(&keys.public),
        "--insecure-ignore-tlog=true",
        &format!("{repo}:feature-login"),
    ]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert_eq!(predicate_types(&repo, &digest), [SIGNATURE_TYPE.to_owned()]);
}

/// An unsigned image whose `/server` is a shell script that would leave a
/// marker on the host: `verify --run` must refuse to run it, whatever the
/// caller asked, and say why.
#[test]
fn verify_run_never_executes_an_unsigned_image() {
    use xtask::oci::client::Client;
    use xtask::oci::{self, Descriptor, Index, Layout, Manifest, PlatformSpec};
    use xtask::support::archive::{tar_gz, Entry};

    let registry = Registry::start();
    let keys = generate_keys();
    let sentinel = tempfile::tempdir().unwrap();
    let marker = sentinel.path().join("ran");
    let script = format!("#!/bin/sh\ntouch {}\necho '{{}}'\n", marker.display());
    let layer = tar_gz(
        &[Entry {
            path: "server",
            data: script.as_bytes(),
            mode: 0o755,
        }],
        0,
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let layout = Layout::create(camino::Utf8Path::from_path(out.path()).unwrap()).unwrap();
    let layer_descriptor = layout.write_blob(oci::LAYER_GZIP, &layer.gz).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/server"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", layer.tar_sha256)]},
    });
    let config_descriptor = layout
        .write_blob(oci::CONFIG, &oci::canonical_json(&config).unwrap())
        .unwrap();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(oci::MANIFEST.to_owned()),
        config: config_descriptor,
        layers: vec![layer_descriptor],
        annotations: None,
    };
    let mut manifest_descriptor: Descriptor = layout
        .write_blob(oci::MANIFEST, &oci::canonical_json(&manifest).unwrap())
        .unwrap();
    manifest_descriptor.platform = Some(PlatformSpec {
        architecture: "amd64".into(),
        os: "linux".into(),
        variant: None,
    });
    let index = Index {
        schema_version: 2,
        media_type: Some(oci::INDEX.to_owned()),
        manifests: vec![manifest_descriptor],
        annotations: None,
    };
    let index_descriptor = layout
        .write_blob(oci::INDEX, &oci::canonical_json(&index).unwrap())
        .unwrap();
    layout
        .write_index(&Index {
            schema_version: 2,
            media_type: Some(oci::INDEX.to_owned()),
            manifests: vec![index_descriptor.clone()],
            annotations: None,
        })
        .unwrap();
    let repo = registry.repo("hostile");
    let reference = xtask::oci::client::Reference::parse(&repo).unwrap();
    let client = Client::new(&reference.host, true).unwrap();
    xtask::oci::push::push_layout(
        &client,
        &reference.repository,
        &layout,
        &index_descriptor.digest,
        None,
    )
    .unwrap();

    let target = format!("{repo}@{}", index_descriptor.digest);
    let (error, table) = xtask_err(&[
        "verify",
        &target,
        "--key",
        path(&keys.public),
        "--no-tlog",
        "--insecure",
        "--run",
    ]);
    assert_eq!(
        error,
        format!("error: verification of {target} failed: signature of index, signature of linux/amd64, sbom of linux/amd64, provenance of linux/amd64, provenance of index, run of all")
    );
    assert!(
        table.lines().any(|l| l
            == "FAIL   run         all         not run: the signature and attestation checks did not all pass"),
        "{table}"
    );
    assert!(
        !marker.exists(),
        "the unsigned image's /server ran on the host"
    );
    assert_eq!(std::fs::read_dir(sentinel.path()).unwrap().count(), 0);
}

/// The connections a traced process tried that leave loopback: what a
/// network namespace without interfaces refuses.
fn outside_connects(trace: &Path) -> Vec<String> {
    std::fs::read_to_string(trace)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", trace.display()))
        .lines()
        .filter(|l| l.contains("connect(") && !l.contains("AF_UNIX") && !l.contains("AF_LOCAL"))
        .filter(|l| !l.contains("127.0.0.1") && !l.contains("::1"))
        .map(str::to_owned)
        .collect()
}

/// With --no-tlog, signing and attesting with a key touch only the
/// registry: run in a network namespace with loopback alone (as root), the
/// registry inside it, cosign tries no other address, and fetches no TUF
/// repository (it would say so on stderr when it cannot).
#[test]
fn no_tlog_signing_and_attesting_touch_only_the_registry() {
    let mut registry = Registry::start();
    let (base, _) = seed_base(&registry, "base");
    let image = push_image(&registry, &base, "offline");
    let keys = generate_keys();
    let work = tempfile::tempdir().unwrap();
    // The same registry, storage and port, started again inside the
    // namespace, where nothing outside loopback is reachable.
    registry.stop();
    let script = r#"
        ip link set lo up || exit 90
        "$1" serve "$2" >"$3/registry.log" 2>&1 &
        registry=$!
        n=0
        until "$4" catalog --insecure "$5" >/dev/null 2>&1; do
            n=$((n + 1)); [ "$n" -gt 300 ] && exit 91; sleep 0.05
        done
        rc=0
        for task in sign attest; do
            "$6" -f -qq -e trace=connect -o "$3/$task.trace" \
                "$7" "$task" "$8" --key "$9" --no-tlog --insecure \
                >"$3/$task.out" 2>"$3/$task.err" || rc=1
        done
        kill "$registry"; wait "$registry"
        exit "$rc"
    "#;
    let output = run(Command::new("unshare")
        .args(["-n", "--", "sh", "-c", script, "sh"])
        .arg(tool("docker-registry"))
        .arg(registry.dir.path().join("config.yml"))
        .arg(work.path())
        .arg(tool("crane"))
        .arg(registry.host())
        .arg(tool("strace"))
        .arg(env!("CARGO_BIN_EXE_xtask"))
        .arg(image.by_digest())
        .arg(&keys.private)
        .current_dir(support::workspace_root())
        .env("COSIGN_PASSWORD", PASSWORD)
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_TOKEN"));
    let read = |name: &str| std::fs::read_to_string(work.path().join(name)).unwrap_or_default();
    assert!(
        output.status.success(),
        "exit {}\n{}\nsign:\n{}\nattest:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        read("sign.err"),
        read("attest.err")
    );
    for task in ["sign", "attest"] {
        let stderr = read(&format!("{task}.err"));
        assert!(!stderr.contains("TUF"), "{task} fetched TUF:\n{stderr}");
        assert_eq!(
            outside_connects(&work.path().join(format!("{task}.trace"))),
            Vec::<String>::new(),
            "{task}"
        );
    }
    registry.restart();
    assert_eq!(
        predicate_types(&image.repo, &image.digest),
        [SIGNATURE_TYPE, "https://slsa.dev/provenance/v1"]
    );
}

fn read_json(path: &Path) -> Value {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `cosign attest` by hand, with a key the verifier trusts: a validly
/// signed statement, whatever it says.
fn attest_by_hand(key: &str, no_rekor: &str, kind: &str, predicate: &Path, target: &str) {
    let out = cosign(&[
        "attest",
        "--yes",
        "--key",
        key,
        "--signing-config",
        no_rekor,
        "--type",
        kind,
        "--predicate",
        path(predicate),
        target,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pushed with --image elsewhere than the configured repository, the signed
/// statements name where the image went; and a validly signed statement
/// about something else (an SBOM of the other platform, a provenance of
/// another base or commit) fails verify with a line naming the mismatch,
/// and changes nothing in the registry.
#[test]
fn statements_name_the_pushed_image_and_signed_falsehoods_fail_verify() {
    let registry = Registry::start();
    let (base, _) = seed_base(&registry, "base");
    let keys = generate_keys();
    let key = path(&keys.private);
    let public = path(&keys.public);
    let common = ["--no-tlog", "--insecure"];
    let work = tempfile::tempdir().unwrap();
    let no_rekor = write_no_rekor_config(work.path());
    let no_rekor = path(&no_rekor);
    let image = push_image(&registry, &base, "elsewhere");
    let reference = image.by_digest();
    let repo = &image.repo;
    xtask_ok(&[&["sign", &reference, "--key", key], &common[..]].concat());
    xtask_ok(&[&["attest", &reference, "--key", key], &common[..]].concat());

    // What attest wrote, and signed, names the repository pushed to.
    let attest_dir = support::workspace_root().join("target/attest");
    let dir = |digest: &str| attest_dir.join(digest.trim_start_matches("sha256:"));
    for (platform, digest) in &image.platforms {
        let slug = platform.replace('/', "-");
        let bom = read_json(&dir(digest).join(format!("{slug}.cdx.json")));
        let properties = bom["metadata"]["component"]["properties"]
            .as_array()
            .unwrap();
        assert!(properties.contains(&json!({"name": "oci:image:repository", "value": repo})));
        assert!(properties.contains(&json!({"name": "oci:image:digest", "value": digest})));
        let spdx = read_json(&dir(digest).join(format!("{slug}.spdx.json")));
        assert_eq!(
            spdx["packages"][0]["externalRefs"][1]["referenceLocator"],
            format!("{repo}@{digest}")
        );
        let provenance = read_json(&dir(digest).join("provenance.json"));
        let external = &provenance["buildDefinition"]["externalParameters"];
        assert_eq!(external["image"], repo.as_str());
        assert_eq!(external["platform"], platform.as_str());
    }
    let index = read_json(&dir(&image.digest).join("provenance.json"));
    assert_eq!(
        index["buildDefinition"]["externalParameters"]["image"],
        repo.as_str()
    );
    for entry in std::fs::read_dir(dir(&image.platforms[0].1)).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(!text.contains(&support::release_image()));
    }
    xtask_ok(&[&["verify", &reference, "--key", public], &common[..]].concat());

    // The amd64 SBOM, attested onto the arm64 manifest: validly signed,
    // but false.
    let (amd64, amd64_digest) = &image.platforms[0];
    let (arm64, arm64_digest) = &image.platforms[1];
    assert_eq!(
        (amd64.as_str(), arm64.as_str()),
        ("linux/amd64", "linux/arm64")
    );
    attest_by_hand(
        key,
        no_rekor,
        "cyclonedx",
        &dir(amd64_digest).join("linux-amd64.cdx.json"),
        &format!("{repo}@{arm64_digest}"),
    );
    let before = tag_digests(repo);
    let (error, table) =
        xtask_err(&[&["verify", &reference, "--key", public], &common[..]].concat());
    assert_eq!(
        error,
        format!("error: verification of {reference} failed: sbom of linux/arm64")
    );
    let line = format!(
        "FAIL   sbom        linux/arm64 the CycloneDX SBOM attached to linux/arm64 describes linux/amd64 {repo}@{amd64_digest}, not linux/arm64 {repo}@{arm64_digest}"
    );
    assert!(table.lines().any(|l| l == line), "{table}");
    assert_eq!(tag_digests(repo), before, "verify changed the registry");

    // A provenance of another base on amd64, one of another commit on the
    // index.
    let mut other_base = read_json(&dir(amd64_digest).join("provenance.json"));
    let base_digest = format!(
        "sha256:{}",
        other_base["buildDefinition"]["resolvedDependencies"][1]["digest"]["sha256"]
            .as_str()
            .unwrap()
    );
    other_base["buildDefinition"]["resolvedDependencies"][1]["digest"]["sha256"] =
        json!("f".repeat(64));
    let other_base_path = work.path().join("other-base.json");
    std::fs::write(&other_base_path, other_base.to_string()).unwrap();
    attest_by_hand(
        key,
        no_rekor,
        "slsaprovenance1",
        &other_base_path,
        &format!("{repo}@{amd64_digest}"),
    );
    let mut other_commit = index.clone();
    other_commit["buildDefinition"]["externalParameters"]["source"]["revision"] =
        json!("0".repeat(40));
    let other_commit_path = work.path().join("other-commit.json");
    std::fs::write(&other_commit_path, other_commit.to_string()).unwrap();
    attest_by_hand(
        key,
        no_rekor,
        "slsaprovenance1",
        &other_commit_path,
        &reference,
    );
    let before = tag_digests(repo);
    let (error, table) =
        xtask_err(&[&["verify", &reference, "--key", public], &common[..]].concat());
    assert_eq!(
        error,
        format!("error: verification of {reference} failed: provenance of linux/amd64, sbom of linux/arm64, provenance of index")
    );
    for line in [
        format!(
            "FAIL   provenance  linux/amd64 the provenance of linux/amd64 pins the base image at sha256:{}, but the image's org.opencontainers.image.base.digest says {base_digest}",
            "f".repeat(64)
        ),
        format!(
            "FAIL   provenance  index       the provenance of index says it was built from {}, but the image's org.opencontainers.image.revision label is {}",
            "0".repeat(40),
            support::head_sha()
        ),
    ] {
        assert!(table.lines().any(|l| l == line), "{line}\n{table}");
    }
    assert_eq!(tag_digests(repo), before, "verify changed the registry");
}
