//! Keyless signing as CI does it, against a private Sigstore on loopback
//! (support/sigstore.rs): `release.yml` and `ci.yml` replayed from the
//! workflow files (support/workflow.rs), with GitHub's variables and the
//! job's OIDC token request pointing at the test issuer, pushing to a
//! registry with token auth as GHCR has. The trust material is named in
//! the clone's `[workspace.metadata.release.sigstore]`, so the workflows'
//! command lines need no flag for it. Then cosign alone verifies what was
//! published, with the exact identity; and every verification that must
//! fail does, beside a control that passes on the same setup.
//!
//! One release for everything: the negatives are verifications of it, and
//! the forged-bundle attack (its archive renamed a newer version) must fail
//! with nothing tagged, through `bundle --load` and through the keyless
//! crane-and-cosign procedure alike.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use base64::Engine;
use serde_json::Value;
use support::github_oidc::Job;
use support::sigstore::Sigstore;
use support::token_service::{Grant, TokenService};
use support::workflow::{Event, Runner, StepRun, Workflow};
use support::{run, run_ok, tool, Registry};

const USER: &str = "ci";
const SECRET: &str = "ci-secret";

/// The `run:` steps not replayed: they install what this machine already
/// has (`cargo xtask setup` ran before the tests).
const INSTALL_STEPS: &[&str] = &[
    "apt-get update -q && apt-get install -y -q --no-install-recommends python3-pip gh",
    "apt-get update -q && apt-get install -y -q --no-install-recommends python3-pip",
    "cargo xtask setup",
];

/// Everything a replay needs: the private Sigstore, a token-auth registry,
/// a clone that names the Sigstore in its configuration, and the commands
/// a runner has.
struct Bed {
    sigstore: Arc<Sigstore>,
    registry: Registry,
    _tokens: TokenService,
    docker: tempfile::TempDir,
    bin: tempfile::TempDir,
    dir: tempfile::TempDir,
    ws: PathBuf,
    head: String,
}

impl Bed {
    fn new() -> Bed {
        let sigstore = Sigstore::shared();
        let tokens = TokenService::start(vec![Grant {
            user: USER,
            password: SECRET,
            actions: &["pull", "push"],
        }]);
        let registry = Registry::start_with_token(&tokens);
        let docker = tempfile::tempdir().unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{SECRET}"));
        std::fs::write(
            docker.path().join("config.json"),
            serde_json::json!({"auths": {registry.host(): {"auth": auth}}}).to_string(),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        run_ok(
            Command::new("git")
                .args(["clone", "-q", "--no-tags"])
                .arg(support::workspace_root())
                .arg(&ws),
        );
        // CI needs no flag: the clone's configuration names the Sigstore.
        let manifest = ws.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(
            &manifest,
            format!(
                "{text}\n[workspace.metadata.release.sigstore]\nsigning-config = {:?}\ntrusted-root = {:?}\noidc-issuer = {:?}\n",
                sigstore.signing_config.display().to_string(),
                sigstore.trusted_root.display().to_string(),
                sigstore.issuer.url(),
            ),
        )
        .unwrap();
        git(&ws, &["commit", "-q", "-am", "use the private Sigstore"]);
        let head = git(&ws, &["rev-parse", "HEAD"]).trim().to_owned();
        Bed {
            bin: runner_commands(&registry.host()),
            sigstore,
            registry,
            _tokens: tokens,
            docker,
            dir,
            ws,
            head,
        }
    }

    fn repo(&self, name: &str) -> String {
        self.registry.repo(name)
    }

    /// A runner for `event`, replaying with the run's own token unless
    /// `token_for` says otherwise.
    fn runner(&self, event: Event, token_for: Option<Job>) -> Runner<'_> {
        let path = std::env::join_paths(
            std::iter::once(self.bin.path().to_path_buf()).chain(support::tool_path()),
        )
        .unwrap();
        let mut machine_env = vec![
            ("PATH".to_owned(), path.into_string().unwrap()),
            ("HOME".to_owned(), std::env::var("HOME").unwrap()),
            // What `docker login` leaves on a runner.
            (
                "DOCKER_CONFIG".to_owned(),
                self.docker.path().display().to_string(),
            ),
            (
                "XTASK_AUDIT_DB".to_owned(),
                support::advisory_db::empty().display().to_string(),
            ),
            ("GH_LOG".to_owned(), self.gh_log().display().to_string()),
        ];
        // The machine's Rust: the toolchain rustup's proxies resolve, never
        // one a replay would install or update.
        machine_env.extend(
            std::env::vars().filter(|(k, _)| k.starts_with("RUSTUP_") || k == "CARGO_HOME"),
        );
        machine_env.push(("RUSTUP_AUTO_INSTALL".to_owned(), "0".to_owned()));
        if let Ok(dir) = std::env::var(xtask::support::config::BUILD_DIR_VARIABLE) {
            machine_env.push((xtask::support::config::BUILD_DIR_VARIABLE.to_owned(), dir));
        }
        Runner {
            workspace: self.ws.clone(),
            machine_env,
            secrets: BTreeMap::from([("GITHUB_TOKEN".to_owned(), "ghs_test".to_owned())]),
            event,
            issuer: &self.sigstore.issuer,
            token_for,
            skip: INSTALL_STEPS.iter().map(|s| (*s).to_owned()).collect(),
            artifacts: self.dir.path().join("artifacts"),
        }
    }

    fn gh_log(&self) -> PathBuf {
        self.dir.path().join("gh.log")
    }

    /// The xtask in the clone, trusting what its configuration names.
    fn xtask(&self, args: &[&str], env: &[(String, String)]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
        command
            .current_dir(&self.ws)
            .args(args)
            .env("DOCKER_CONFIG", self.docker.path())
            .env_remove(xtask::support::config::BUILD_DIR_VARIABLE);
        for name in support::GITHUB_ACTIONS_ENV {
            command.env_remove(name);
        }
        command.envs(env.iter().map(|(k, v)| (k, v)));
        run(&mut command)
    }

    fn crane(&self, args: &[&str]) -> String {
        run_ok(
            Command::new(tool("crane"))
                .args(args)
                .arg("--insecure")
                .env("DOCKER_CONFIG", self.docker.path()),
        )
    }

    /// The digest `repo:tag` names, and the repository's tags, sorted,
    /// cosign's fallback tags aside (distribution has no referrers API).
    fn published(&self, repo: &str, tag: &str) -> (String, Vec<String>) {
        let digest = self
            .crane(&["digest", &format!("{repo}:{tag}")])
            .trim()
            .to_owned();
        let mut tags: Vec<String> = self
            .crane(&["ls", repo])
            .lines()
            .filter(|t| !t.starts_with("sha256-"))
            .map(str::to_owned)
            .collect();
        tags.sort();
        (digest, tags)
    }

    /// cosign, with plain HTTP allowed for the commands that reach the
    /// registry.
    fn cosign(&self, args: &[String]) -> Output {
        let mut command = Command::new(tool("cosign"));
        command.args(args).env("DOCKER_CONFIG", self.docker.path());
        if args[0] != "verify-blob" {
            command.args(["--allow-insecure-registry", "--allow-http-registry"]);
        }
        run(&mut command)
    }

    /// cosign's flags for the exact identity of `job` and this Sigstore.
    fn identity_flags(&self, job: &Job) -> Vec<String> {
        vec![
            format!("--trusted-root={}", self.sigstore.trusted_root.display()),
            format!("--certificate-identity={}", job.certificate_identity()),
            format!("--certificate-oidc-issuer={}", self.sigstore.issuer.url()),
            format!(
                "--certificate-github-workflow-repository={}",
                job.repository
            ),
            format!("--certificate-github-workflow-trigger={}", job.event_name),
            format!("--certificate-github-workflow-ref={}", job.git_ref),
            format!("--certificate-github-workflow-sha={}", job.sha),
            // No Rekor and no CT log: the signed timestamp proves the time.
            "--insecure-ignore-tlog=true".to_owned(),
            "--insecure-ignore-sct=true".to_owned(),
            "--use-signed-timestamps".to_owned(),
        ]
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    run_ok(
        Command::new("git")
            .args([
                "-c",
                "user.name=Release Bot",
                "-c",
                "user.email=bot@example.org",
            ])
            .args(args)
            .current_dir(dir),
    )
}

/// The commands a runner has that this machine does not stand in for:
/// `cargo xtask` is this test's xtask binary (building the clone's own
/// would cost minutes), with the flags that loopback needs and GHCR does
/// not (`--insecure` for plain HTTP, `--image` naming the test registry,
/// the `scratch` base for offline); `gh` records the GitHub release it is
/// asked for, which cannot be reached offline.
fn runner_commands(host: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let bin = tempfile::tempdir().unwrap();
    let cargo = option_env!("CARGO").unwrap_or("/root/.cargo/bin/cargo");
    let xtask = env!("CARGO_BIN_EXE_xtask");
    let scripts = [
        (
            "cargo",
            format!(
                "#!/bin/sh\nif [ \"$1\" = xtask ]; then\n  shift\n  case \"$1\" in\n    release) exec '{xtask}' \"$@\" --insecure --image {host}/app --base scratch ;;\n    image) exec '{xtask}' \"$@\" --insecure --image {host}/ci --base scratch ;;\n  esac\n  exec '{xtask}' \"$@\"\nfi\nexec '{cargo}' \"$@\"\n"
            ),
        ),
        (
            "gh",
            "#!/bin/sh\necho \"$@\" >> \"$GH_LOG\"\n[ \"$2\" = view ] && exit 1\nexit 0\n".to_owned(),
        ),
    ];
    for (name, script) in scripts {
        let path = bin.path().join(name);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

fn assert_passed(steps: &[StepRun], expected: usize) {
    for step in steps {
        assert!(step.output.status.success(), "{}", step.text());
    }
    assert_eq!(
        steps.len(),
        expected,
        "steps run: {:?}",
        steps.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `cargo xtask verify --json`'s checks as (check, subject, ok, detail).
fn checks(output: &Output) -> Vec<(String, String, bool, String)> {
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("verify --json printed no JSON ({e}):\n{}", stderr(output)));
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap_or_default().to_owned(),
                c["subject"].as_str().unwrap_or_default().to_owned(),
                c["ok"].as_bool().unwrap(),
                c["detail"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn release_yml_and_ci_yml_sign_keylessly_through_a_private_sigstore() {
    let started = std::time::Instant::now();
    let bed = Bed::new();
    let version = format!("v{}", support::server_version());
    git(&bed.ws, &["tag", &version]);
    let slug = support::source_slug();
    let event = Event {
        repository: slug.clone(),
        git_ref: format!("refs/tags/{version}"),
        sha: bed.head.clone(),
        name: "push".to_owned(),
    };
    let release = Workflow::read(&bed.ws, "release.yml");
    let runner = bed.runner(event, None);
    let claims = runner.job_claims(&release);
    let steps = runner.run_job(&release, "release");
    assert_passed(&steps, 1);
    eprintln!("release.yml replayed in {:.0?}", started.elapsed());

    // Published: every tag on the one digest the release signed.
    let repo = bed.repo("app");
    let (digest, tags) = bed.published(&repo, &version);
    assert_eq!(
        tags,
        [
            "latest".to_owned(),
            format!("sha-{}", &bed.head[..7]),
            "v0.1".to_owned(),
            version.clone()
        ]
    );

    // cosign alone, with the exact identity and the trusted root.
    let identity = bed.identity_flags(&claims);
    let by_digest = format!("{repo}@{digest}");
    let verified = bed.cosign(
        &[
            &["verify".to_owned()][..],
            &identity,
            std::slice::from_ref(&by_digest),
        ]
        .concat(),
    );
    assert!(verified.status.success(), "{}", stderr(&verified));
    let index: Value = serde_json::from_str(&bed.crane(&["manifest", &by_digest])).unwrap();
    let platforms: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["platform"]["architecture"].as_str().unwrap().to_owned(),
                m["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (arch, platform) in &platforms {
        let attested = bed.cosign(
            &[
                &[
                    "verify-attestation".to_owned(),
                    "--type=cyclonedx".to_owned(),
                ][..],
                &identity,
                &[format!("{repo}@{platform}")],
            ]
            .concat(),
        );
        assert!(attested.status.success(), "{arch}: {}", stderr(&attested));
    }
    let provenance = bed.cosign(
        &[
            &[
                "verify-attestation".to_owned(),
                "--type=slsaprovenance1".to_owned(),
            ][..],
            &identity,
            std::slice::from_ref(&by_digest),
        ]
        .concat(),
    );
    assert!(provenance.status.success(), "{}", stderr(&provenance));
    // The signed SHA256SUMS went to the GitHub release, keyless too.
    let gh = std::fs::read_to_string(bed.gh_log()).unwrap();
    assert!(
        gh.contains(&format!("release create {version} --verify-tag")),
        "{gh}"
    );
    let assets = bed.ws.join(format!("target/release/{version}/assets"));
    let sums = bed.cosign(
        &[
            &[
                "verify-blob".to_owned(),
                format!(
                    "--bundle={}",
                    assets.join("SHA256SUMS.sigstore.json").display()
                ),
            ][..],
            &identity,
            &[assets.join("SHA256SUMS").display().to_string()],
        ]
        .concat(),
    );
    assert!(sums.status.success(), "{}", stderr(&sums));
    eprintln!("cosign verified in {:.0?}", started.elapsed());

    negatives(&bed, &claims, &version, &digest);
    eprintln!("negatives done in {:.0?}", started.elapsed());

    keyless_air_gap(&bed, &version, &slug, &digest);
    eprintln!("keyless air gap done in {:.0?}", started.elapsed());

    // ci.yml's image job on a push to main: pushed, signed keylessly as
    // ci.yml on refs/heads/main, then tagged.
    let ci = Workflow::read(&bed.ws, "ci.yml");
    let push = Event {
        repository: slug,
        git_ref: "refs/heads/main".to_owned(),
        sha: bed.head.clone(),
        name: "push".to_owned(),
    };
    let runner = bed.runner(push, None);
    let claims = runner.job_claims(&ci);
    assert_passed(&runner.run_job(&ci, "image"), 1);
    let repo = bed.repo("ci");
    let (digest, tags) = bed.published(&repo, "main");
    assert_eq!(tags, ["main".to_owned(), format!("sha-{}", &bed.head[..7])]);
    let verified = bed.cosign(
        &[
            &["verify".to_owned()][..],
            &bed.identity_flags(&claims),
            &[format!("{repo}@{digest}")],
        ]
        .concat(),
    );
    assert!(verified.status.success(), "{}", stderr(&verified));
    eprintln!("ci.yml replayed and verified in {:.0?}", started.elapsed());
}

/// The signature checks of a `verify --json`: (subject, ok, detail).
fn signature_checks(output: &Output) -> Vec<(String, bool, String)> {
    checks(output)
        .into_iter()
        .filter(|(check, ..)| check == "signature")
        .map(|(_, subject, ok, detail)| (subject, ok, detail))
        .collect()
}

/// Verifications of the one keyless release that must fail, each beside a
/// control that passes on the same setup, and each naming what differs.
fn negatives(bed: &Bed, claims: &Job, version: &str, digest: &str) {
    let repo = bed.repo("app");
    let semver = version.trim_start_matches('v');

    // Another issuer: the release's own signatures, trusted through an
    // issuer that did not vouch for them.
    let control = bed.xtask(
        &[
            "verify",
            &format!("{repo}:{version}"),
            "--insecure",
            "--json",
        ],
        &[],
    );
    assert!(control.status.success(), "{}", stderr(&control));
    let other_issuer = "http://127.0.0.1:9/other-issuer";
    let refused = bed.xtask(
        &[
            "verify",
            &format!("{repo}:{version}"),
            "--insecure",
            "--json",
            &format!("--oidc-issuer={other_issuer}"),
        ],
        &[],
    );
    assert!(!refused.status.success());
    let signatures = signature_checks(&refused);
    assert_eq!(signatures.len(), 3, "{signatures:?}");
    for (subject, ok, detail) in signatures {
        eprintln!("trusting another issuer, {subject}: {detail}");
        assert!(
            !ok && detail.contains(&bed.sigstore.issuer.url()),
            "{subject}: {detail}"
        );
    }

    // A v0.2.0 tag set on the digest the v0.1.0 release signed: its
    // certificate names refs/tags/v0.1.0.
    let forged = "v0.2.0";
    bed.crane(&["tag", &format!("{repo}@{digest}"), forged]);
    let refused = bed.xtask(
        &[
            "verify",
            &format!("{repo}:{forged}"),
            "--insecure",
            "--json",
        ],
        &[],
    );
    assert!(!refused.status.success());
    let signatures = signature_checks(&refused);
    assert_eq!(signatures.len(), 3, "{signatures:?}");
    for (subject, ok, detail) in signatures {
        eprintln!("{forged} on the {version} digest, {subject}: {detail}");
        assert!(
            !ok && detail.contains(&format!("refs/tags/{version}")),
            "{subject}: {detail}"
        );
    }

    // Signatures by other jobs, each on a copy of the release's image: the
    // run's own token (the control), then tokens that differ in one field.
    let other = |change: &dyn Fn(&mut Job)| {
        let mut job = claims.clone();
        change(&mut job);
        job
    };
    let cases = [
        ("control", claims.clone(), None),
        (
            "other-repository",
            other(&|j| j.repository = "evil-org/rust-release".into()),
            Some("evil-org/rust-release"),
        ),
        (
            "other-workflow",
            other(&|j| j.workflow_file = "ci.yml".into()),
            Some("workflows/ci.yml@"),
        ),
        (
            "other-tag",
            other(&|j| j.git_ref = "refs/tags/v9.9.9".into()),
            Some("refs/tags/v9.9.9"),
        ),
        // The SAN matches, the certificate's extensions do not: another
        // repository calling this release.yml as a reusable workflow, and
        // this workflow run on another commit (a tag moved, then re-run).
        (
            "other-repository-calling-release.yml",
            other(&|j| {
                j.called_workflow = Some(claims.workflow_ref());
                j.repository = "evil-org/app".into();
            }),
            Some("evil-org/app"),
        ),
        (
            "other-commit",
            other(&|j| j.sha = "0123456789abcdef0123456789abcdef01234567".into()),
            Some("0123456789abcdef0123456789abcdef01234567"),
        ),
    ];
    for (name, job, differs) in cases {
        let copy = bed.repo(&format!("signed-by/{name}"));
        bed.crane(&["copy", &format!("{repo}@{digest}"), &format!("{copy}:copy")]);
        let signed = bed.xtask(
            &["sign", &format!("{copy}@{digest}"), "--insecure"],
            &bed.sigstore.job_env(job),
        );
        assert!(signed.status.success(), "{name}: {}", stderr(&signed));
        let verified = bed.xtask(
            &[
                "verify",
                &format!("{copy}@{digest}"),
                "--insecure",
                "--json",
                "--expect-version",
                semver,
            ],
            &[],
        );
        let signatures = signature_checks(&verified);
        assert_eq!(signatures.len(), 3, "{name}: {signatures:?}");
        for (subject, ok, detail) in signatures {
            eprintln!("signed by {name}, {subject}: {detail}");
            match differs {
                None => assert!(ok, "{name} {subject}: {detail}"),
                Some(field) => assert!(!ok && detail.contains(field), "{name} {subject}: {detail}"),
            }
        }
    }
}

/// Bundles the keyless release, carries it to a registry of its own with
/// the operator's trusted root, and runs the keyless variant of
/// docs/air-gapped.md's procedure there with crane and cosign alone
/// (`support::keyless_air_gap_procedure`).
fn keyless_air_gap(bed: &Bed, version: &str, slug: &str, digest: &str) {
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join(format!("server-{version}.oci.tar"));
    let bundled = bed.xtask(
        &[
            "bundle",
            version,
            "--insecure",
            "--image",
            &bed.repo("app"),
            "--out",
            archive.to_str().unwrap(),
        ],
        &[],
    );
    assert!(bundled.status.success(), "{}", stderr(&bundled));
    // What it tells the operator to run names the trusted root they bring,
    // not a key the archive does not have.
    let told = String::from_utf8_lossy(&bundled.stdout);
    assert!(
        told.contains(&format!("cargo xtask bundle {version} --load --trusted-root trusted_root.json --out server-{version}.oci.tar"))
            && !told.contains("cosign.pub"),
        "{told}"
    );
    let operator = support::carry_in_keyless(&archive, &bed.sigstore.trusted_root);

    let inside = Registry::start();
    let repo = inside.repo("rust-release");
    let script =
        support::keyless_air_gap_procedure(&repo, version, slug, &bed.sigstore.issuer.url());
    let output = support::run_procedure(operator.path(), &script);
    assert!(
        output.status.success(),
        "the keyless procedure failed:\n{}",
        stderr(&output)
    );
    let tags = support::tag_digests(&repo);
    assert_eq!(
        tags.get(version).map(String::as_str),
        Some(digest),
        "{tags:?}"
    );

    forged_keyless_bundle(bed, &inside, &archive, version, slug, digest);
}

/// The forged-bundle attack on a keyless release: the release's archive
/// renamed a newer version (with that version's floating tags on its
/// digest), loaded with `bundle --load` and with the keyless crane-and-cosign
/// procedure. Both refuse, and no tag moves.
fn forged_keyless_bundle(
    bed: &Bed,
    inside: &Registry,
    archive: &Path,
    version: &str,
    slug: &str,
    digest: &str,
) {
    let newer = "v0.2.0";
    assert_ne!(version, newer, "the forgery must claim another version");
    let work = tempfile::tempdir().unwrap();
    let loaded_repo = inside.repo("loaded");
    let load = |version: &str, archive: &Path| {
        bed.xtask(
            &[
                "bundle",
                version,
                "--load",
                "--insecure",
                "--json",
                "--image",
                &loaded_repo,
                "--out",
                archive.to_str().unwrap(),
            ],
            &[],
        )
    };

    // The genuine archive, loaded with the operator's trust (the clone's
    // configuration names the trusted root and the issuer).
    let genuine = load(version, archive);
    assert!(genuine.status.success(), "{}", stderr(&genuine));
    let before = support::tag_digests(&loaded_repo);
    assert_eq!(before.get(version).map(String::as_str), Some(digest));

    // index.json renamed, and the floating tags of the newer version added
    // on the same digest.
    let forgery = work.path().join(format!("server-{newer}.oci.tar"));
    support::forge_archive(archive, &forgery, |dir| {
        let path = dir.join("index.json");
        let mut index: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let entries = index["manifests"].as_array_mut().unwrap();
        let release = entries
            .iter_mut()
            .find(|e| e["annotations"]["org.opencontainers.image.ref.name"] == version)
            .unwrap();
        release["annotations"]["org.opencontainers.image.ref.name"] = newer.into();
        let release = release.clone();
        for floating in ["v0.2", "v0", "latest"] {
            let mut entry = release.clone();
            entry["annotations"]["org.opencontainers.image.ref.name"] = floating.into();
            entries.push(entry);
        }
        std::fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
        // And the procedure's list of tags, as the attacker would edit it.
        let tags = dir.join("verify/tags");
        let text = std::fs::read_to_string(&tags).unwrap();
        std::fs::write(&tags, format!("{text}{newer} {digest}\n")).unwrap();
    });
    let refused = load(newer, &forgery);
    assert!(
        !refused.status.success(),
        "the forged keyless bundle loaded"
    );
    let last = stderr(&refused)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    assert!(
        last.contains(&format!("is signed as version {version}"))
            && last.ends_with("nothing was pushed or tagged"),
        "{last}"
    );
    assert_eq!(
        support::tag_digests(&loaded_repo),
        before,
        "the forged keyless load moved a tag"
    );

    // The keyless procedure, run as the docs say for the version the
    // forgery claims, with a .sha256 the attacker recomputed: the exact
    // identity names refs/tags/v0.2.0, which the v0.1.0 certificate is not.
    let operator = support::carry_in_keyless(&forgery, &bed.sigstore.trusted_root);
    let repo = inside.repo("rust-release");
    let before = support::tag_digests(&repo);
    let script = support::keyless_air_gap_procedure(&repo, newer, slug, &bed.sigstore.issuer.url());
    let output = support::run_procedure(operator.path(), &script);
    assert!(
        !output.status.success(),
        "the keyless procedure accepted the forgery"
    );
    let err = stderr(&output);
    let last_command = err.lines().rev().find(|l| l.starts_with("+ "));
    assert!(
        last_command.is_some_and(|l| l.starts_with("+ cosign verify "))
            && err.contains(&format!(
                "expected SAN value \"https://github.com/{slug}/.github/workflows/release.yml@refs/tags/{newer}\", got \"https://github.com/{slug}/.github/workflows/release.yml@refs/tags/{version}\""
            )),
        "the procedure did not stop at the identity check:\n{err}"
    );
    assert_eq!(
        support::tag_digests(&repo),
        before,
        "the forged keyless procedure moved a tag"
    );
}
