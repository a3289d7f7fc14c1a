//! Every command in a `sh` block of docs/ is run here, against the real
//! tools, so that the examples cannot rot.
//!
//! A reader pastes the blocks of one page into one terminal, in order, in
//! a checkout of the repository; so does this test: per page, a fresh clone
//! of the workspace is the working directory, and shell variables carry
//! from one command to the next. Each command must be listed in
//! `EXPECTATIONS` with what it must do; a new command in the docs fails
//! this test until it is listed, and so does an entry the docs no longer
//! use. Two kinds of command cannot succeed on this machine, and are still
//! run as far as they go:
//!
//! - Docker engine commands (there is none): the docker CLI must fail only
//!   for want of an engine, which proves it accepts the command line;
//! - keyless cosign verification (no internet): cosign must fail only for
//!   want of Sigstore's public services or of a keyless signature.
//!
//! The deployment commands of upgrading.md go further. Each is a docker
//! command that must fail only for want of an engine; then the test does
//! what the engine would have done, on stand-ins: a PostgreSQL it starts
//! (superuser and database `app`, as the `db` service has) at the schema
//! of the version before this one, with an item in it, is the `db`
//! service; the amd64 server from target/dist is the `server` container,
//! its output is what `docker compose logs server` shows, and
//! `https://example.com` is that server. So `docker compose exec -T db
//! pg_dump …` runs `pg_dump …` here, `docker compose run --rm --no-deps -T
//! server bootstrap` runs `server bootstrap`, and `up -d --wait` starts the
//! server, which applies the newest migration. Only the version before
//! this one cannot run (it is not built here): after the rollback, the
//! check is that the database is the backup's, at that version's schema,
//! with its items.
//!
//! The registries the docs name are local stand-ins. Before a command runs,
//! `stand_in` rewrites it: ghcr.io and gcr.io become registry A,
//! registry.internal registry B, and the example versions (`v1.2.3`,
//! `vX.Y.Z`) the version in server/Cargo.toml. `cargo xtask` becomes the
//! built binary with `--insecure` (plain HTTP on loopback), skopeo gets
//! `--tls-verify=false` for the same reason, and signatures
//! made without a transparency log are verified with `--no-tlog` or
//! `--insecure-ignore-tlog=true`. Nothing else about a command changes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::github_oidc::Job;
use support::pg::Postgres;
use support::sigstore::Sigstore;
use support::{head_sha, run, run_ok, seed_base, server_version, skopeo_raw, tool, Registry};

const PASSWORD: &str = "doc-commands-test";
const GPG_IDENTITY_EMAIL: &str = "doc-test@example.invalid";

/// One command of a page: continuation lines joined, comments kept.
#[derive(Debug, Clone, PartialEq)]
struct DocCommand {
    page: String,
    line: usize,
    text: String,
    /// The `text` or `json` block right after a one-command `sh` block:
    /// what the command prints.
    documented_output: Option<(String, String)>,
}

/// The fenced blocks of a page: (language, first line number, lines).
fn fenced_blocks(text: &str) -> Result<Vec<(String, usize, Vec<String>)>, String> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, usize, Vec<String>)> = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            match open.take() {
                Some(block) => blocks.push(block),
                None if info.trim().is_empty() => {
                    return Err(format!(
                        "line {}: a code block without a language; mark commands `sh` (this test runs them) and anything else `text`",
                        index + 1
                    ))
                }
                None => open = Some((info.trim().to_owned(), index + 1, Vec::new())),
            }
            continue;
        }
        if let Some((_, _, lines)) = open.as_mut() {
            lines.push(trimmed.to_owned());
        }
    }
    match open {
        Some((_, line, _)) => Err(format!("line {line}: a code block is never closed")),
        None => Ok(blocks),
    }
}

/// The commands of a page's `sh` blocks.
fn doc_commands(page: &str, text: &str) -> Result<Vec<DocCommand>, String> {
    let blocks = fenced_blocks(text)?;
    let mut commands = Vec::new();
    for (position, (language, first_line, lines)) in blocks.iter().enumerate() {
        if language != "sh" {
            continue;
        }
        let mut in_block = Vec::new();
        let mut pending: Option<(usize, String)> = None;
        for (offset, line) in lines.iter().enumerate() {
            let number = first_line + 1 + offset;
            let (start, mut joined) = match pending.take() {
                Some((start, so_far)) => (start, format!("{so_far} {}", line.trim())),
                None if line.trim().is_empty() || line.starts_with('#') => continue,
                None => (number, line.trim().to_owned()),
            };
            if let Some(head) = joined.strip_suffix('\\') {
                joined = head.trim_end().to_owned();
                pending = Some((start, joined));
                continue;
            }
            in_block.push(DocCommand {
                page: page.to_owned(),
                line: start,
                text: joined,
                documented_output: None,
            });
        }
        if pending.is_some() {
            return Err(format!(
                "line {first_line}: the block ends inside a continued line"
            ));
        }
        let next = blocks.get(position + 1);
        let adjacent = next.is_some_and(|(language, next_line, _)| {
            (language == "text" || language == "json")
                && text
                    .lines()
                    .skip(first_line + lines.len() + 1)
                    .take(next_line - first_line - lines.len() - 2)
                    .all(|l| l.trim().is_empty())
        });
        if let (true, [command], Some((language, _, output))) = (adjacent, &mut in_block[..], next)
        {
            command.documented_output = Some((language.clone(), output.join("\n")));
        }
        commands.extend(in_block);
    }
    Ok(commands)
}

/// What a command printed.
#[derive(Debug)]
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

type Check = fn(&mut Bed, &DocCommand, &Ran) -> Result<(), String>;

#[derive(Clone, Copy)]
enum Before {
    Nothing,
    /// The operations page runs on a compose deployment: `.env` exists.
    DeployedCompose,
    /// The bundle and its `.sha256` carried into the working directory.
    CarryBundleIn,
    /// Garbage collection wants the registry stopped.
    StopRegistryA,
    /// upgrading.md: `.env` as for `DeployedCompose`, and the deployment's
    /// stand-ins, running the version before this one (see the module
    /// comment).
    DeployedWithDatabase,
}

#[derive(Clone, Copy)]
enum How {
    /// Must exit 0 and pass the check.
    Runs(Before, Check),
    /// Needs a Docker engine.
    NoEngine,
    /// Needs a Docker engine, then the check does what the engine would
    /// have done, on the deployment's stand-ins (see the module comment).
    Compose(Before, Check),
    /// Keyless verification: needs Sigstore's public services and a
    /// signature made in GitHub Actions.
    Keyless,
    /// curl to the compose deployment's proxy, which does not run here:
    /// curl must fail only for want of something listening.
    /// (xtask/tests/engine.rs runs these requests through Caddy for real.)
    NoProxy,
}

/// Pages whose `sh` blocks other tests run as written, because they must
/// run where this test's clone of the checkout would defeat their point.
const RUN_ELSEWHERE: &[(&str, &[&str])] = &[
    // With crane and cosign alone, in a directory with no checkout: with
    // the key as written (air_gapped.rs), and keylessly against the tests'
    // private Sigstore, the page's identity flags in place of the key
    // (`the_air_gap_procedure_runs_keylessly_against_a_private_sigstore`
    // below, and keyless.rs on a release made by replaying release.yml).
    (
        "air-gapped.md",
        &[
            "xtask/tests/air_gapped.rs",
            "xtask/tests/keyless.rs",
            "xtask/tests/support/mod.rs",
        ],
    ),
];

/// Every command of docs/, by the start of its text as written there (the
/// longest matching start wins), and how it is checked.
const EXPECTATIONS: &[(&str, How)] = &[
    // compose.md
    ("cp .env.example .env", How::Runs(Before::Nothing, env_is_the_example)),
    (
        "sed -i \"s/^POSTGRES_PASSWORD=$/POSTGRES_PASSWORD=",
        How::Runs(Before::Nothing, env_has_a_database_password),
    ),
    ("docker compose config", How::Runs(Before::Nothing, compose_config_ok)),
    ("docker compose up -d", How::NoEngine),
    ("docker compose --profile metrics up -d --wait", How::NoEngine),
    ("docker compose ps", How::NoEngine),
    ("curl -k https://localhost/", How::NoProxy),
    ("curl -k -X PUT -H \"Authorization: Bearer $TOKEN\"", How::NoProxy),
    ("curl -fsS http://127.0.0.1:9180/metrics", How::NoProxy),
    ("docker compose pull proxy", How::NoEngine),
    ("docker compose pull server", How::NoEngine),
    ("docker image inspect --format", How::NoEngine),
    // configuration.md
    ("docker run --rm -p 8080:8080", How::NoEngine),
    // operations.md
    ("NEW=$(crane digest", How::Runs(Before::Nothing, prints_index)),
    (
        "REVISION=$(crane manifest ghcr.io/",
        How::Runs(Before::Nothing, prints_head_commit),
    ),
    ("cosign verify ghcr.io/", How::Keyless),
    (
        "grep ^SERVER_IMAGE= .env > rollback.env",
        How::Runs(Before::DeployedCompose, rollback_env_written),
    ),
    (
        "sed -i \"s|^SERVER_IMAGE=.*|SERVER_IMAGE=",
        How::Runs(Before::Nothing, env_names_the_digest),
    ),
    (
        "sed -i \"s|^SERVER_IMAGE=.*|$(cat rollback.env)|\"",
        How::Runs(Before::Nothing, env_rolled_back),
    ),
    ("docker compose exec server", How::NoEngine),
    // The backups run on a deployment: `.env` exists.
    (
        "docker compose exec -T db pg_dump -U app -d app -Fc > db-",
        How::Compose(Before::DeployedCompose, succeeds),
    ),
    (
        "docker compose exec -T proxy tar",
        How::Compose(Before::DeployedCompose, succeeds),
    ),
    ("cargo xtask bundle v1.2.3", How::Runs(Before::Nothing, bundle_written)),
    (
        "cargo xtask bundle v1.2.3 --dry-run",
        How::Runs(Before::Nothing, bundle_plan_printed),
    ),
    (
        "sha256sum -c server-v1.2.3.oci.tar.sha256",
        How::Runs(Before::CarryBundleIn, checksum_ok),
    ),
    (
        "cargo xtask bundle v1.2.3 --load",
        How::Runs(Before::Nothing, loaded_into_b),
    ),
    (
        "skopeo copy --all --preserve-digests oci-archive:",
        How::Runs(Before::Nothing, loaded_into_b),
    ),
    (
        "tar -xOf server-v1.2.3.oci.tar index.json",
        How::Runs(Before::Nothing, archive_ref_names),
    ),
    (
        "skopeo copy --all --preserve-digests docker://registry.internal",
        How::Runs(Before::Nothing, floating_tag_set_in_b),
    ),
    (
        "DIGEST=$(crane digest registry.internal",
        How::Runs(Before::Nothing, prints_index),
    ),
    (
        "PLATFORM_DIGEST=$(crane digest --platform linux/amd64 registry.internal",
        How::Runs(Before::Nothing, prints_amd64),
    ),
    (
        "cosign verify --key cosign.pub --insecure-ignore-tlog=true \"registry.internal",
        How::Runs(Before::Nothing, signatures_of_index),
    ),
    (
        "cosign verify-attestation --key cosign.pub --insecure-ignore-tlog=true --type cyclonedx \"registry.internal",
        How::Runs(Before::Nothing, cyclonedx_of_amd64),
    ),
    ("docker load -i", How::NoEngine),
    ("docker image prune -a", How::NoEngine),
    ("docker builder prune", How::NoEngine),
    (
        "docker-registry garbage-collect",
        How::Runs(Before::StopRegistryA, release_survives_garbage_collection),
    ),
    // upgrading.md
    (
        "docker compose exec -T db pg_dump -U app -d app -Fc > before-upgrade.dump",
        How::Compose(Before::DeployedWithDatabase, backup_taken),
    ),
    (
        "docker compose run --rm --no-deps -T server migrate status",
        How::Compose(Before::Nothing, shows_the_pending_migration),
    ),
    (
        "docker compose logs server | grep -E 'migrations applied|no pending migrations'",
        How::Compose(Before::Nothing, log_names_the_new_migration),
    ),
    // The old server's refusal, which the stand-ins cannot show (the
    // version before this one is not built here).
    ("docker compose logs server | grep 'does not know'", How::NoEngine),
    (
        "TOKEN=$(docker compose run --rm --no-deps -T server bootstrap)",
        How::Compose(Before::Nothing, first_token_created),
    ),
    (
        "curl -fsS -X PUT -H \"Authorization: Bearer $TOKEN\"",
        How::Runs(Before::Nothing, item_created),
    ),
    ("curl -fsS https://example.com/v1/items/", How::Runs(Before::Nothing, item_printed)),
    (
        "curl -fsS -X DELETE -H \"Authorization: Bearer $TOKEN\"",
        How::Runs(Before::Nothing, item_deleted),
    ),
    ("docker compose stop server", How::Compose(Before::Nothing, server_stopped)),
    (
        "docker compose exec -T db dropdb -U app app",
        How::Compose(Before::Nothing, database_dropped),
    ),
    (
        "docker compose exec -T db createdb -U app app",
        How::Compose(Before::Nothing, database_created),
    ),
    (
        "docker compose exec -T db pg_restore -U app -d app < before-upgrade.dump",
        How::Compose(Before::Nothing, backup_restored),
    ),
    // pulling.md
    ("docker pull", How::NoEngine),
    (
        "crane digest ghcr.io/",
        How::Runs(Before::Nothing, prints_index),
    ),
    (
        "skopeo inspect --format '{{.Digest}}'",
        How::Runs(Before::Nothing, prints_index),
    ),
    (
        "crane manifest --platform linux/amd64 gcr.io/",
        How::Runs(Before::Nothing, prints_base_size),
    ),
    // release-process.md
    (
        "cargo xtask release vX.Y.Z --dry-run",
        How::Runs(Before::Nothing, release_plan_printed),
    ),
    ("git tag -s vX.Y.Z", How::Runs(Before::Nothing, tag_is_signed)),
    ("git push origin vX.Y.Z", How::Runs(Before::Nothing, tag_is_pushed)),
    // sbom-and-provenance.md
    ("cargo xtask sbom", How::Runs(Before::Nothing, sboms_written)),
    (
        "check-jsonschema --schemafile",
        How::Runs(Before::Nothing, schema_validation_ok),
    ),
    // tags.md
    (
        "cargo xtask tags --version v1.9.10",
        How::Runs(Before::Nothing, prints_documented_output),
    ),
    // verifying.md
    (
        "IMAGE=ghcr.io/",
        How::Runs(Before::Nothing, prints_repository),
    ),
    (
        "DIGEST=$(crane digest \"$IMAGE:v1.2.3\")",
        How::Runs(Before::Nothing, prints_index),
    ),
    (
        "PLATFORM_DIGEST=$(crane digest --platform linux/arm64",
        How::Runs(Before::Nothing, prints_arm64),
    ),
    (
        "REVISION=$(crane manifest \"$IMAGE@$DIGEST\" | jq",
        How::Runs(Before::Nothing, prints_head_commit),
    ),
    ("cosign verify --certificate-identity ", How::Keyless),
    (
        "cosign verify --key cosign.pub \"$IMAGE@$DIGEST\"",
        How::Runs(Before::Nothing, signatures_of_index),
    ),
    (
        "cosign verify --key cosign.pub --output=json \"$IMAGE@$PLATFORM_DIGEST\"",
        How::Runs(Before::Nothing, prints_true),
    ),
    (
        "cosign verify-attestation --type cyclonedx --key cosign.pub",
        How::Runs(Before::Nothing, cyclonedx_predicate_of_arm64),
    ),
    (
        "cosign verify-attestation --type spdxjson --key cosign.pub",
        How::Runs(Before::Nothing, spdx_of_arm64),
    ),
    (
        "cosign verify-attestation --type slsaprovenance1 --key cosign.pub",
        How::Runs(Before::Nothing, provenance_of_index),
    ),
    (
        "cosign verify-attestation --type slsaprovenance1 --policy",
        How::Keyless,
    ),
    (
        "crane manifest \"$IMAGE@$DIGEST\" | jq -r",
        How::Runs(Before::Nothing, prints_platform_list),
    ),
    (
        "cargo xtask verify \"$IMAGE@$DIGEST\" --expect-version",
        How::Keyless,
    ),
    (
        "cargo xtask verify \"$IMAGE@$DIGEST\" --key cosign.pub",
        How::Runs(Before::Nothing, verify_table_passes),
    ),
    (
        "cargo xtask verify \"$IMAGE:v1.2.3\" --key cosign.pub --run --json",
        How::Runs(Before::Nothing, verify_report_passes),
    ),
    (
        "cargo xtask sign   \"$IMAGE@$DIGEST\" --key cosign.key",
        How::Runs(Before::Nothing, succeeds),
    ),
    (
        "cargo xtask attest \"$IMAGE@$DIGEST\" --key cosign.key",
        How::Runs(Before::Nothing, succeeds),
    ),
    (
        "cosign tree \"$IMAGE@$DIGEST\"",
        How::Runs(Before::Nothing, tree_lists_signatures),
    ),
];

/// Commands whose check depends on the page: compose.md starts a fresh
/// deployment, upgrading.md works on the stand-ins of one.
const PAGE_EXPECTATIONS: &[(&str, &str, How)] = &[
    (
        "upgrading.md",
        "docker compose up -d --wait",
        How::Compose(Before::Nothing, server_deployed),
    ),
    (
        "compose.md",
        "TOKEN=$(docker compose run --rm --no-deps -T server bootstrap)",
        How::NoEngine,
    ),
];

/// The entry for a command: the page's own, else the longest start that
/// matches.
fn expectation(page: &str, command: &str) -> Option<(&'static str, How)> {
    if let Some((_, start, how)) = PAGE_EXPECTATIONS
        .iter()
        .find(|(p, start, _)| *p == page && command.starts_with(start))
    {
        return Some((start, *how));
    }
    EXPECTATIONS
        .iter()
        .filter(|(start, _)| command.starts_with(start))
        .max_by_key(|(start, _)| start.len())
        .copied()
}

/// Everything the commands run against: two registries, a signed and
/// attested release in A, a key pair, and a base image standing in for
/// distroless.
struct Bed {
    a: Registry,
    b: Registry,
    version: String,
    index: String,
    amd64: String,
    arm64: String,
    base_amd64_size: u64,
    keys: tempfile::TempDir,
    scratch: tempfile::TempDir,
    /// The clone the current page runs in.
    cwd: PathBuf,
    /// The shell state of the current page.
    state: PathBuf,
    /// upgrading.md's deployment, once a command needs it.
    deployment: Option<Deployment>,
}

impl Bed {
    fn repository(&self) -> String {
        self.a.repo(&support::release_image_path())
    }

    fn base(&self) -> String {
        self.a.repo("distroless/static-debian13:nonroot")
    }

    fn env_line(&self) -> Result<String, String> {
        let env = std::fs::read_to_string(self.cwd.join(".env")).map_err(|e| e.to_string())?;
        env.lines()
            .find(|l| l.starts_with("SERVER_IMAGE="))
            .map(str::to_owned)
            .ok_or_else(|| ".env has no SERVER_IMAGE line".to_owned())
    }
}

fn cosign() -> Command {
    let mut command = Command::new(tool("cosign"));
    command.env("COSIGN_PASSWORD", PASSWORD);
    command
}

fn set_up() -> Bed {
    let a = Registry::start();
    let b = Registry::start();
    let version = server_version();
    let keys = tempfile::tempdir().unwrap();
    run_ok(cosign().arg("generate-key-pair").current_dir(keys.path()));

    let (seeded, _) = seed_base(&a, "distroless/static-debian13");
    run_ok(Command::new(tool("crane")).args(["tag", "--insecure", &seeded, "nonroot"]));
    let base_index = skopeo_raw(&seeded);
    let base_amd64 = base_index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .and_then(|m| m["digest"].as_str())
        .unwrap()
        .to_owned();
    let base_amd64_size = skopeo_raw(&format!(
        "{}@{base_amd64}",
        a.repo("distroless/static-debian13")
    ))["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();

    support::dist();
    let scratch = tempfile::tempdir().unwrap();
    let repository = a.repo(&support::release_image_path());
    let key = keys.path().join("cosign.key");
    let image = run_ok(
        support::xtask()
            .env("COSIGN_PASSWORD", PASSWORD)
            .args([
                "image",
                "--json",
                "--push",
                "--sign",
                "--no-tlog",
                "--insecure",
            ])
            .arg("--key")
            .arg(&key)
            .args(["--image", &repository, "--base"])
            .arg(a.repo("distroless/static-debian13:nonroot"))
            .args(["--version", &format!("v{version}"), "--sha", &head_sha()])
            .arg("--out")
            .arg(scratch.path().join("oci")),
    );
    let image: Value = serde_json::from_str(&image).expect("image --json printed JSON");
    let index = image["digest"].as_str().unwrap().to_owned();
    run_ok(
        support::xtask()
            .env("COSIGN_PASSWORD", PASSWORD)
            .args(["attest", &format!("{repository}@{index}")])
            .arg("--key")
            .arg(&key)
            .args(["--no-tlog", "--insecure"]),
    );
    let platforms = support::platform_digests(&format!("{repository}@{index}"));

    // No credentials of the user's, but the user's CLI plugins (compose).
    let docker_config = scratch.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();
    if let Some(home) = std::env::var_os("HOME") {
        let plugins = PathBuf::from(home).join(".docker/cli-plugins");
        std::os::unix::fs::symlink(plugins, docker_config.join("cli-plugins")).unwrap();
    }
    let gnupg = scratch.path().join("gnupg");
    std::fs::create_dir_all(&gnupg).unwrap();
    std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    // `git tag -s` signs with this throw-away key.
    run_ok(
        Command::new(tool("gpg"))
            .env("GNUPGHOME", &gnupg)
            .args(["--batch", "--passphrase", "", "--quick-gen-key"])
            .arg(format!("Doc Test <{GPG_IDENTITY_EMAIL}>"))
            .args(["ed25519", "sign", "never"]),
    );

    Bed {
        version,
        index,
        amd64: platforms["amd64"].clone(),
        arm64: platforms["arm64"].clone(),
        base_amd64_size,
        keys,
        cwd: scratch.path().to_path_buf(),
        state: scratch.path().join("state.sh"),
        deployment: None,
        scratch,
        a,
        b,
    }
}

/// A page's working directory: a clone of the workspace, with the test key
/// pair if the page uses one, a bare `origin` of its own, and the identity
/// of the test's GPG key.
fn clone_for(bed: &Bed, page: &str, text: &str) -> PathBuf {
    let name = page.trim_end_matches(".md");
    let clone = bed.scratch.path().join(name);
    run_ok(
        Command::new("git")
            .args(["clone", "-q", "--no-tags"])
            .arg(support::workspace_root())
            .arg(&clone),
    );
    if text.contains("cosign.pub") || text.contains("cosign.key") {
        for file in ["cosign.pub", "cosign.key"] {
            std::fs::copy(bed.keys.path().join(file), clone.join(file)).unwrap();
        }
    }
    // `git push origin` must never reach the workspace the clone came from.
    let origin = bed.scratch.path().join(format!("{name}-origin.git"));
    run_ok(
        Command::new("git")
            .args(["clone", "-q", "--bare", "--no-tags"])
            .arg(support::workspace_root())
            .arg(&origin),
    );
    let git = |args: &[&str]| run_ok(Command::new("git").args(args).current_dir(&clone));
    git(&["remote", "set-url", "origin", origin.to_str().unwrap()]);
    git(&["config", "user.name", "Doc Test"]);
    git(&["config", "user.email", GPG_IDENTITY_EMAIL]);
    clone
}

fn gnupg_home(bed: &Bed) -> PathBuf {
    bed.scratch.path().join("gnupg")
}

/// The command as it runs here: see the module comment.
fn stand_in(bed: &Bed, command: &str) -> String {
    let mut text = command.to_owned();
    if let Some(rest) = text.strip_prefix("cargo xtask ") {
        let rest = rest.trim_start();
        let (task, args) = rest.split_once(' ').unwrap_or((rest, ""));
        let mut extra = String::new();
        if matches!(task, "verify" | "sign" | "attest" | "bundle" | "release") {
            extra.push_str(" --insecure");
        }
        if matches!(task, "verify" | "sign" | "attest" | "bundle") && args.contains("--key") {
            extra.push_str(" --no-tlog");
        }
        if matches!(task, "bundle" | "release") && !args.contains("--image") {
            extra.push_str(&format!(" --image {}", bed.repository()));
        }
        if task == "release" {
            // A repository nothing was released to, so that the dry run
            // plans a first release.
            extra = format!(
                " --insecure --image {} --base {}",
                bed.a.repo("release-process/rust-release"),
                bed.base()
            );
        }
        text = format!("'{}' {task}{extra} {args}", env!("CARGO_BIN_EXE_xtask"));
    }
    if text.contains("--key") && !text.contains("--insecure-ignore-tlog") {
        for verb in ["verify", "verify-attestation"] {
            text = text.replace(
                &format!("cosign {verb} "),
                &format!("cosign {verb} --insecure-ignore-tlog=true "),
            );
        }
    }
    for (verb, plain_http) in [
        ("inspect", "--tls-verify=false"),
        ("copy", "--src-tls-verify=false --dest-tls-verify=false"),
    ] {
        text = text.replace(
            &format!("skopeo {verb} "),
            &format!("skopeo {verb} {plain_http} "),
        );
    }
    if let Some(server) = bed.deployment.as_ref().and_then(|d| d.server.as_ref()) {
        text = text.replace(
            "https://example.com/",
            &format!("http://127.0.0.1:{}/", server.port),
        );
    }
    let version = format!("v{}", bed.version);
    let minor = version.rsplit_once('.').map(|(m, _)| m).unwrap_or_default();
    text.replace("ghcr.io/", &format!("{}/", bed.a.host()))
        .replace("gcr.io/", &format!("{}/", bed.a.host()))
        .replace("registry.internal/", &format!("{}/", bed.b.host()))
        .replace("v1.2.3", &version)
        .replace("v1.2.4", &version)
        .replace("vX.Y.Z", &version)
        .replace(":v1.2", &format!(":{minor}"))
        .replace(
            "/etc/docker/registry/config.yml",
            bed.a.dir.path().join("config.yml").to_str().unwrap(),
        )
}

/// `NAME=value` at the start of a command: the variable it sets.
fn assigned_variable(command: &str) -> Option<&str> {
    let (name, _) = command.split_once('=')?;
    (!name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'))
    .then_some(name)
}

/// Runs one command in the page's shell state; an assignment prints the
/// value it set.
fn run_in_page(
    bed: &Bed,
    state: &Path,
    command: &str,
    answer_yes: bool,
    env: &[(&str, String)],
) -> Ran {
    let shown = match assigned_variable(command) {
        Some(name) => format!("\nstatus=$?\n[ $status -ne 0 ] || {{ printf 'export {name}=%q\\n' \"${name}\" >> \"$DOC_STATE\"; printf '%s' \"${name}\"; }}\nexit $status"),
        None => String::new(),
    };
    // A prune asks before it connects; "y" makes it go as far as it can.
    let stdin = if answer_yes { "exec < <(echo y)\n" } else { "" };
    let script = format!("set -o pipefail\nsource \"$DOC_STATE\"\n{stdin}{command}{shown}\n");
    let mut shell = Command::new("timeout");
    shell
        .args(["--kill-after=10", "600", "bash", "-c", &script])
        .current_dir(&bed.cwd)
        .env("DOC_STATE", state)
        .env("PATH", std::env::join_paths(support::tool_path()).unwrap())
        .env("COSIGN_PASSWORD", PASSWORD)
        .env(
            "DOCKER_HOST",
            format!(
                "unix://{}/no-docker-engine.sock",
                bed.scratch.path().display()
            ),
        )
        .env("DOCKER_CONFIG", bed.scratch.path().join("docker-config"))
        .env("GNUPGHOME", gnupg_home(bed))
        .envs(env.iter().map(|(k, v)| (k, v)));
    for name in support::GITHUB_ACTIONS_ENV {
        shell.env_remove(name);
    }
    let output = run(&mut shell);
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn prepare(bed: &mut Bed, before: Before) {
    match before {
        Before::Nothing => {}
        Before::DeployedWithDatabase => {
            prepare(bed, Before::DeployedCompose);
            if bed.deployment.is_none() {
                bed.deployment = Some(Deployment::at_the_previous_version(&bed.scratch));
            }
        }
        Before::DeployedCompose => {
            // A deployment has its database password; compose refuses to
            // run without one.
            let example = std::fs::read_to_string(bed.cwd.join(".env.example")).unwrap();
            let deployed = example.replace(
                "\nPOSTGRES_PASSWORD=\n",
                "\nPOSTGRES_PASSWORD=deployedpassword0\n",
            );
            assert_ne!(
                deployed, example,
                ".env.example has no empty POSTGRES_PASSWORD line"
            );
            std::fs::write(bed.cwd.join(".env"), deployed).unwrap();
        }
        Before::CarryBundleIn => {
            let name = format!("server-v{}.oci.tar", bed.version);
            for file in [name.clone(), format!("{name}.sha256")] {
                std::fs::copy(
                    bed.cwd.join("target/bundle").join(&file),
                    bed.cwd.join(&file),
                )
                .unwrap();
            }
        }
        Before::StopRegistryA => bed.a.stop(),
    }
}

/// What a failure says that shows the tool did not accept the command line.
const USAGE_ERRORS: &[&str] = &[
    "unknown flag",
    "unknown shorthand flag",
    "unknown command",
    "is not a docker command",
    "required flag",
    "Usage:",
];

fn for_want_of_an_engine(ran: &Ran, usage_error: Option<&&str>) -> Result<(), String> {
    let no_engine = ran.stderr.contains("Cannot connect to the Docker daemon")
        || ran.stderr.contains("failed to connect to the docker API");
    match (ran.code, usage_error, no_engine) {
        (Some(0), _, _) => Err("succeeded without a Docker engine".to_owned()),
        (_, Some(error), _) => Err(format!("the docker CLI rejects it ({error})")),
        (_, None, true) => Ok(()),
        _ => Err("failed, and not for want of a Docker engine".to_owned()),
    }
}

fn judge(bed: &mut Bed, command: &DocCommand, how: How, ran: &Ran) -> Result<(), String> {
    let output = format!("{}{}", ran.stdout, ran.stderr);
    let usage_error = USAGE_ERRORS.iter().find(|e| ran.stderr.contains(**e));
    match how {
        How::Runs(_, check) => {
            if ran.code != Some(0) {
                return Err(format!("exited with {:?}", ran.code));
            }
            check(bed, command, ran)
        }
        How::NoEngine => for_want_of_an_engine(ran, usage_error),
        How::NoProxy => {
            let refused = ran.stderr.contains("Failed to connect")
                || ran.stderr.contains("Could not connect");
            match (ran.code, refused) {
                (Some(0), _) => Err("succeeded, but no proxy runs here".to_owned()),
                (_, true) => Ok(()),
                _ => Err("failed, and not for want of a proxy".to_owned()),
            }
        }
        How::Compose(_, check) => {
            for_want_of_an_engine(ran, usage_error)?;
            check(bed, command, ran)
        }
        How::Keyless => {
            let expected = [
                // No internet: Sigstore's trust root is out of reach.
                "tuf-repo-cdn.sigstore.dev",
                // With internet: the test image is signed with a key.
                "no matching signatures",
                "none of the expected identities matched",
            ];
            match (ran.code, usage_error) {
                (Some(0), _) => Err("a key-signed image passed keyless verification".to_owned()),
                (_, Some(error)) => Err(format!("cosign rejects the command line ({error})")),
                _ if expected.iter().any(|e| output.contains(e)) => Ok(()),
                _ => {
                    Err("failed, and not for want of Sigstore or of a keyless signature".to_owned())
                }
            }
        }
    }
}

#[test]
fn every_command_in_docs_runs_as_documented() {
    let docs = support::workspace_root().join("docs");
    let mut pages: Vec<String> = std::fs::read_dir(&docs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .collect();
    pages.sort();

    let mut bed = set_up();
    let mut failures = Vec::new();
    let mut used = BTreeSet::new();
    let mut ran_count = 0;
    for page in &pages {
        let text = std::fs::read_to_string(docs.join(page)).unwrap();
        let commands = match doc_commands(page, &text) {
            Ok(commands) => commands,
            Err(error) => {
                failures.push(format!("docs/{page}: {error}"));
                continue;
            }
        };
        if commands.is_empty() {
            continue;
        }
        if let Some((_, tests)) = RUN_ELSEWHERE.iter().find(|(p, _)| p == page) {
            for test in *tests {
                let test = support::workspace_root().join(test);
                let source = std::fs::read_to_string(&test).unwrap_or_default();
                if !source.contains(&format!("docs/{page}")) {
                    failures.push(format!(
                        "docs/{page} is run by {}, which does not read it",
                        test.display()
                    ));
                }
            }
            continue;
        }
        bed.cwd = clone_for(&bed, page, &text);
        let state = bed
            .scratch
            .path()
            .join(format!("{}.state.sh", page.trim_end_matches(".md")));
        std::fs::write(&state, "").unwrap();
        bed.state = state.clone();
        for command in &commands {
            let Some((start, how)) = expectation(page, &command.text) else {
                failures.push(format!(
                    "docs/{page}:{}: `{}` is not in EXPECTATIONS: say how this test runs it",
                    command.line, command.text
                ));
                continue;
            };
            used.insert(start);
            if let How::Runs(before, _) | How::Compose(before, _) = how {
                prepare(&mut bed, before);
            }
            let actual = stand_in(&bed, &command.text);
            let answer_yes = matches!(how, How::NoEngine);
            let ran = run_in_page(&bed, &state, &actual, answer_yes, &[]);
            ran_count += 1;
            if let Err(error) = judge(&mut bed, command, how, &ran) {
                failures.push(format!(
                    "docs/{page}:{}: `{}` {error}\n  ran: {actual}\n  stdout: {}\n  stderr: {}",
                    command.line,
                    command.text,
                    ran.stdout.trim_end(),
                    ran.stderr.trim_end()
                ));
            }
        }
    }
    let all_starts = EXPECTATIONS
        .iter()
        .map(|(start, _)| start)
        .chain(PAGE_EXPECTATIONS.iter().map(|(_, start, _)| start));
    for start in all_starts {
        if !used.contains(start) {
            failures.push(format!(
                "EXPECTATIONS has `{start}`, which no command in docs/ starts with: remove it"
            ));
        }
    }
    if let Some(deployment) = bed.deployment.as_mut() {
        deployment.stop_server();
    }
    let _ = Command::new(tool("gpgconf"))
        .args(["--kill", "all"])
        .env("GNUPGHOME", gnupg_home(&bed))
        .output();
    assert!(
        failures.is_empty(),
        "{} of {ran_count} doc commands failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// ---- checks ----------------------------------------------------------

fn equal(what: &str, actual: &str, expected: &str) -> Result<(), String> {
    if actual.trim_end() == expected {
        Ok(())
    } else {
        Err(format!(
            "{what}: expected {expected:?}, got {:?}",
            actual.trim_end()
        ))
    }
}

fn succeeds(_: &mut Bed, _: &DocCommand, _: &Ran) -> Result<(), String> {
    Ok(())
}

fn prints_index(bed: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    equal("the index digest", &ran.stdout, &bed.index)
}

fn prints_amd64(bed: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    equal("the linux/amd64 digest", &ran.stdout, &bed.amd64)
}

fn prints_arm64(bed: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    equal("the linux/arm64 digest", &ran.stdout, &bed.arm64)
}

fn prints_repository(bed: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    equal("the repository", &ran.stdout, &bed.repository())
}

fn prints_head_commit(_: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    equal("the index's revision annotation", &ran.stdout, &head_sha())
}

fn prints_true(_: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    equal("jq -e", &ran.stdout, "true")
}

fn prints_base_size(bed: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    equal(
        "the base's layer bytes",
        &ran.stdout,
        &bed.base_amd64_size.to_string(),
    )
}

fn prints_platform_list(bed: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    equal(
        "the platforms",
        &ran.stdout,
        &format!("linux/amd64 {}\nlinux/arm64 {}", bed.amd64, bed.arm64),
    )
}

fn prints_documented_output(_: &mut Bed, command: &DocCommand, ran: &Ran) -> Result<(), String> {
    match &command.documented_output {
        Some((language, expected)) if language == "json" => {
            let expected: Value = serde_json::from_str(expected)
                .map_err(|e| format!("the documented output is not JSON: {e}"))?;
            let actual: Value = serde_json::from_str(&ran.stdout)
                .map_err(|e| format!("the output is not JSON: {e}"))?;
            (actual == expected)
                .then_some(())
                .ok_or_else(|| format!("prints {actual}, the docs show {expected}"))
        }
        Some((_, expected)) => equal("the documented output", &ran.stdout, expected.trim_end()),
        None => Err("no `text` or `json` block follows it to say what it prints".to_owned()),
    }
}

/// Each line of cosign's verify output, parsed.
fn json_lines(text: &str) -> Result<Vec<Value>, String> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a stream of JSON values: {e}"))
}

fn signatures_of_index(bed: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    let claims: Vec<Value> = json_lines(&ran.stdout)?
        .into_iter()
        .flat_map(|v| v.as_array().cloned().unwrap_or_default())
        .collect();
    let signed: Vec<&Value> = claims
        .iter()
        .filter(|c| c["critical"]["type"] == "https://sigstore.dev/cosign/sign/v1")
        .collect();
    if signed.is_empty() {
        return Err("no cosign/sign/v1 claim".to_owned());
    }
    match signed
        .iter()
        .find(|c| c["critical"]["image"]["docker-manifest-digest"] != bed.index.as_str())
    {
        Some(other) => Err(format!("a claim for another digest: {other}")),
        None => Ok(()),
    }
}

/// The in-toto statements of `cosign verify-attestation`'s output.
fn statements(stdout: &str) -> Result<Vec<Value>, String> {
    use base64::Engine;
    json_lines(stdout)?
        .iter()
        .map(|envelope| {
            let payload = envelope["payload"]
                .as_str()
                .ok_or("an envelope without payload")?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(payload)
                .map_err(|e| e.to_string())?;
            serde_json::from_slice(&bytes).map_err(|e| e.to_string())
        })
        .collect()
}

fn statements_about(
    stdout: &str,
    predicate_type: &str,
    digest: &str,
) -> Result<Vec<Value>, String> {
    let statements = statements(stdout)?;
    if statements.is_empty() {
        return Err("no attestation".to_owned());
    }
    let hex = digest.trim_start_matches("sha256:");
    for statement in &statements {
        if statement["predicateType"] != predicate_type {
            return Err(format!("predicate type {}", statement["predicateType"]));
        }
        if statement["subject"][0]["digest"]["sha256"] != hex {
            return Err(format!("subject {}", statement["subject"]));
        }
    }
    Ok(statements)
}

fn cyclonedx_of_amd64(bed: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    statements_about(&ran.stdout, "https://cyclonedx.org/bom", &bed.amd64).map(drop)
}

fn spdx_of_arm64(bed: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    statements_about(&ran.stdout, "https://spdx.dev/Document", &bed.arm64).map(drop)
}

fn provenance_of_index(bed: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    statements_about(&ran.stdout, "https://slsa.dev/provenance/v1", &bed.index).map(drop)
}

fn cyclonedx_predicate_of_arm64(bed: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    let predicates = json_lines(&ran.stdout)?;
    let Some(first) = predicates.first() else {
        return Err("printed no predicate".to_owned());
    };
    let component = &first["metadata"]["component"];
    if first["bomFormat"] != "CycloneDX"
        || component["name"] != "server"
        || component["version"] != bed.version.as_str()
    {
        return Err(format!(
            "not the server's CycloneDX SBOM: bomFormat {}, component {} {}",
            first["bomFormat"], component["name"], component["version"]
        ));
    }
    let recorded = serde_json::to_string(first).unwrap_or_default();
    if !recorded.contains(bed.arm64.trim_start_matches("sha256:")) {
        return Err("the SBOM does not name the linux/arm64 digest".to_owned());
    }
    Ok(())
}

fn verify_table_passes(_: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    if ran.stdout.contains("PASS") && !ran.stdout.contains("FAIL") {
        Ok(())
    } else {
        Err("the table is not all PASS".to_owned())
    }
}

fn verify_report_passes(bed: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    let report: Value = serde_json::from_str(&ran.stdout).map_err(|e| e.to_string())?;
    let runs = report["checks"]
        .as_array()
        .map(|checks| checks.iter().filter(|c| c["check"] == "run").count())
        .unwrap_or_default();
    if report["passed"] != true || report["digest"] != bed.index.as_str() || runs != 2 {
        return Err(format!(
            "passed {}, digest {}, {runs} run checks",
            report["passed"], report["digest"]
        ));
    }
    Ok(())
}

fn tree_lists_signatures(bed: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    let wanted = [
        bed.index.as_str(),
        "https://sigstore.dev/cosign/sign/v1",
        "https://slsa.dev/provenance/v1",
    ];
    match wanted.iter().find(|w| !ran.stdout.contains(**w)) {
        Some(missing) => Err(format!("the tree does not mention {missing}")),
        None => Ok(()),
    }
}

fn env_is_the_example(bed: &mut Bed, _: &DocCommand, _: &Ran) -> Result<(), String> {
    let read = |name: &str| std::fs::read_to_string(bed.cwd.join(name)).unwrap_or_default();
    (read(".env") == read(".env.example") && !read(".env").is_empty())
        .then_some(())
        .ok_or_else(|| ".env is not a copy of .env.example".to_owned())
}

/// `.env` is the example with a password of 32 hex characters added, and
/// nothing else changed.
fn env_has_a_database_password(bed: &mut Bed, _: &DocCommand, _: &Ran) -> Result<(), String> {
    let read = |name: &str| std::fs::read_to_string(bed.cwd.join(name)).unwrap_or_default();
    let (env, example) = (read(".env"), read(".env.example"));
    let password = env
        .lines()
        .find_map(|l| l.strip_prefix("POSTGRES_PASSWORD="))
        .unwrap_or_default()
        .to_owned();
    if password.len() != 48 || !password.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "POSTGRES_PASSWORD is {password:?}, not 48 hex characters (openssl rand -hex 24)"
        ));
    }
    equal(
        ".env",
        &env.replace(
            &format!("POSTGRES_PASSWORD={password}"),
            "POSTGRES_PASSWORD=",
        ),
        example.trim_end(),
    )
}

fn compose_config_ok(_: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    let image = format!("image: {}:latest", support::release_image());
    ran.stdout
        .contains(&image)
        .then_some(())
        .ok_or_else(|| format!("the configuration has no `{image}`"))
}

fn default_image_line() -> String {
    format!("SERVER_IMAGE={}:latest", support::release_image())
}

fn rollback_env_written(bed: &mut Bed, _: &DocCommand, _: &Ran) -> Result<(), String> {
    let written = std::fs::read_to_string(bed.cwd.join("rollback.env")).unwrap_or_default();
    equal("rollback.env", &written, &default_image_line())
}

fn env_names_the_digest(bed: &mut Bed, _: &DocCommand, _: &Ran) -> Result<(), String> {
    let expected = format!("{}@{}", bed.repository(), bed.index);
    equal(
        ".env",
        &bed.env_line()?,
        &format!("SERVER_IMAGE={expected}"),
    )?;
    let config = run(Command::new(tool("docker"))
        .args(["compose", "config", "--format", "json"])
        .current_dir(&bed.cwd));
    let config: Value = serde_json::from_slice(&config.stdout)
        .map_err(|e| format!("docker compose config: {e}"))?;
    equal(
        "the server image compose runs",
        config["services"]["server"]["image"]
            .as_str()
            .unwrap_or_default(),
        &expected,
    )
}

fn env_rolled_back(bed: &mut Bed, _: &DocCommand, _: &Ran) -> Result<(), String> {
    equal(".env", &bed.env_line()?, &default_image_line())
}

fn bundle_file(bed: &Bed) -> PathBuf {
    bed.cwd
        .join("target/bundle")
        .join(format!("server-v{}.oci.tar", bed.version))
}

fn bundle_written(bed: &mut Bed, _: &DocCommand, _: &Ran) -> Result<(), String> {
    let archive = bundle_file(bed);
    let sums = std::fs::read_to_string(archive.with_extension("tar.sha256"))
        .map_err(|e| format!("no .sha256 beside the bundle: {e}"))?;
    let computed = run_ok(Command::new("sha256sum").arg(&archive));
    let hash = computed.split_whitespace().next().unwrap_or_default();
    equal(
        "the .sha256 file",
        &sums,
        &format!("{hash}  server-v{}.oci.tar", bed.version),
    )
}

fn bundle_plan_printed(bed: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    let line = format!("sha256sum -c server-v{}.oci.tar.sha256", bed.version);
    ran.stdout
        .contains(&line)
        .then_some(())
        .ok_or_else(|| format!("the plan has no `{line}`"))
}

fn checksum_ok(bed: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    equal(
        "sha256sum -c",
        &ran.stdout,
        &format!("server-v{}.oci.tar: OK", bed.version),
    )
}

fn tag_in(repository: &str, tag: &str) -> Result<String, String> {
    let output = run(Command::new(tool("crane")).args([
        "digest",
        "--insecure",
        &format!("{repository}:{tag}"),
    ]));
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .ok_or_else(|| format!("{repository} has no tag {tag}"))
}

fn loaded_into_b(bed: &mut Bed, _: &DocCommand, _: &Ran) -> Result<(), String> {
    let repository = bed.b.repo("rust-release");
    equal(
        "v-tag in registry B",
        &tag_in(&repository, &format!("v{}", bed.version))?,
        &bed.index,
    )
}

fn floating_tag_set_in_b(bed: &mut Bed, _: &DocCommand, _: &Ran) -> Result<(), String> {
    let minor = bed
        .version
        .rsplit_once('.')
        .map(|(m, _)| m)
        .unwrap_or_default();
    equal(
        "the minor tag in registry B",
        &tag_in(&bed.b.repo("rust-release"), &format!("v{minor}"))?,
        &bed.index,
    )
}

fn archive_ref_names(bed: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    let actual: BTreeSet<String> = ran.stdout.lines().map(str::to_owned).collect();
    let referrers = |digest: &str| digest.replace("sha256:", "sha256-");
    let expected = BTreeSet::from([
        format!("v{}", bed.version),
        referrers(&bed.index),
        referrers(&bed.amd64),
        referrers(&bed.arm64),
    ]);
    (actual == expected)
        .then_some(())
        .ok_or_else(|| format!("ref names {actual:?}, expected {expected:?}"))
}

fn release_survives_garbage_collection(
    bed: &mut Bed,
    _: &DocCommand,
    _: &Ran,
) -> Result<(), String> {
    bed.a.restart();
    let repository = bed.repository();
    equal(
        "the release tag after garbage collection",
        &tag_in(&repository, &format!("v{}", bed.version))?,
        &bed.index,
    )?;
    for digest in [&bed.index, &bed.amd64, &bed.arm64] {
        let verified = run(cosign().args([
            "verify",
            "--key",
            bed.keys.path().join("cosign.pub").to_str().unwrap(),
            "--insecure-ignore-tlog=true",
            &format!("{repository}@{digest}"),
        ]));
        if !verified.status.success() {
            return Err(format!(
                "after garbage collection, {digest} no longer verifies: {}",
                String::from_utf8_lossy(&verified.stderr).trim_end()
            ));
        }
    }
    Ok(())
}

fn release_plan_printed(bed: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    // Without --push the plan reads no registry, so it computes no tags.
    let version = format!("v{}", bed.version);
    let mut wanted = vec![
        format!("release {version} of "),
        "tags: none; without --push nothing is pushed or tagged".to_owned(),
        "steps:".to_owned(),
    ];
    // A base without a digest is resolved at build time: the plan says so.
    // (The stand-in registry replaces the base's host.)
    let config = support::release_config();
    let unpinned = format!(
        "/{} names no digest (base-digest is empty or --base gave a tag)",
        config
            .base
            .split_once('/')
            .map_or(config.base.as_str(), |(_, path)| path)
    );
    if config.base_digest.is_none() {
        wanted.push(unpinned);
    } else if ran.stdout.contains(&unpinned) {
        return Err("the plan warns of a base that base-digest pins".to_owned());
    }
    match wanted.iter().find(|w| !ran.stdout.contains(w.as_str())) {
        Some(missing) => Err(format!("the plan does not say {missing:?}")),
        None => Ok(()),
    }
}

fn tag_is_signed(bed: &mut Bed, _: &DocCommand, _: &Ran) -> Result<(), String> {
    let version = format!("v{}", bed.version);
    let verified = run(Command::new("git")
        .args(["tag", "-v", &version])
        .env("GNUPGHOME", gnupg_home(bed))
        .current_dir(&bed.cwd));
    if !verified.status.success() {
        return Err(format!(
            "git tag -v: {}",
            String::from_utf8_lossy(&verified.stderr).trim_end()
        ));
    }
    let tagged = run_ok(
        Command::new("git")
            .args(["rev-parse", &format!("{version}^{{commit}}")])
            .current_dir(&bed.cwd),
    );
    equal("the tagged commit", &tagged, &head_sha())
}

fn tag_is_pushed(bed: &mut Bed, _: &DocCommand, _: &Ran) -> Result<(), String> {
    let version = format!("v{}", bed.version);
    let remote = run_ok(
        Command::new("git")
            .args(["ls-remote", "origin", &format!("refs/tags/{version}")])
            .current_dir(&bed.cwd),
    );
    let local = run_ok(
        Command::new("git")
            .args(["rev-parse", &format!("refs/tags/{version}")])
            .current_dir(&bed.cwd),
    );
    equal(
        "the tag in origin",
        &remote,
        &format!("{}\trefs/tags/{version}", local.trim()),
    )
}

fn sboms_written(bed: &mut Bed, _: &DocCommand, _: &Ran) -> Result<(), String> {
    let mut files: Vec<String> = std::fs::read_dir(bed.cwd.join("target/sbom"))
        .map_err(|e| format!("no target/sbom: {e}"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    files.sort();
    equal(
        "target/sbom",
        &files.join(" "),
        "sbom-linux-amd64.cdx.json sbom-linux-amd64.spdx.json sbom-linux-arm64.cdx.json sbom-linux-arm64.spdx.json",
    )
}

fn schema_validation_ok(_: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    equal("check-jsonschema", &ran.stdout, "ok -- validation done")
}

// ---- the reader itself -------------------------------------------------

#[test]
fn commands_are_read_with_continuations_and_documented_output() {
    let page = "Intro\n\n```sh\n# a comment\nA=$(crane digest x)   # trailing comment\ncosign verify \\\n  --key k \\\n  img\n```\n\n```sh\ncargo xtask tags --version v1.0.0\n```\n\n```text\nv1.0.0: the release\n```\n";
    let commands = doc_commands("p.md", page).unwrap();
    let texts: Vec<(usize, &str)> = commands.iter().map(|c| (c.line, c.text.as_str())).collect();
    assert_eq!(
        texts,
        [
            (5, "A=$(crane digest x)   # trailing comment"),
            (6, "cosign verify --key k img"),
            (12, "cargo xtask tags --version v1.0.0"),
        ]
    );
    assert_eq!(commands[0].documented_output, None);
    assert_eq!(
        commands[2].documented_output,
        Some(("text".to_owned(), "v1.0.0: the release".to_owned()))
    );
    assert_eq!(assigned_variable(&commands[0].text), Some("A"));
    assert_eq!(assigned_variable(&commands[1].text), None);
}

#[test]
fn a_code_block_without_a_language_is_refused() {
    let error = doc_commands("p.md", "x\n```\ndocker pull x\n```\n").unwrap_err();
    assert_eq!(
        error,
        "line 2: a code block without a language; mark commands `sh` (this test runs them) and anything else `text`"
    );
    let error = doc_commands("p.md", "```sh\nls \\\n```\n").unwrap_err();
    assert_eq!(error, "line 1: the block ends inside a continued line");
}

#[test]
fn the_longest_documented_start_decides() {
    let page = "operations.md";
    let (start, _) = expectation(page, "cargo xtask bundle v1.2.3 --dry-run   # what").unwrap();
    assert_eq!(start, "cargo xtask bundle v1.2.3 --dry-run");
    let (start, _) = expectation(page, "cargo xtask bundle v1.2.3").unwrap();
    assert_eq!(start, "cargo xtask bundle v1.2.3");
    assert!(expectation(page, "rm -rf /").is_none());
    // A page's own entry wins over the longest start.
    let (_, how) = expectation("upgrading.md", "docker compose up -d --wait").unwrap();
    assert!(matches!(how, How::Compose(..)));
    let (_, how) = expectation("compose.md", "docker compose up -d --wait").unwrap();
    assert!(matches!(how, How::NoEngine));
}

/// Each flag that a `text` synopsis of an xtask command shows exists in
/// that command's `--help`.
#[test]
fn synopses_name_only_real_flags() {
    let docs = support::workspace_root().join("docs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&docs).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for (language, line, lines) in fenced_blocks(&text).unwrap() {
            let Some(task) = lines
                .first()
                .filter(|_| language == "text")
                .and_then(|l| l.strip_prefix("cargo xtask "))
                .and_then(|l| l.split_whitespace().next())
            else {
                continue;
            };
            let help = run_ok(support::xtask().args([task, "--help"]));
            for flag in lines
                .iter()
                .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')))
                .filter(|w| w.starts_with("--") && w.len() > 2)
            {
                assert!(
                    help.contains(flag),
                    "{}:{line}: `cargo xtask {task}` has no {flag}",
                    path.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 5, "only {checked} synopsis flags found");
}

// ---- upgrading.md's deployment ---------------------------------------

const ITEM_OF_THE_PREVIOUS_VERSION: (&str, &str) = (
    "before-upgrade",
    r#"{"written": "by the previous version"}"#,
);

/// The stand-ins of the compose deployment: see the module comment.
struct Deployment {
    pg: Postgres,
    /// The server container, while it runs.
    server: Option<StandInServer>,
    /// What `docker compose logs server` shows: the last container's output.
    log: PathBuf,
    /// The migrations of server/migrations, oldest first.
    migrations: Vec<String>,
}

struct StandInServer {
    child: std::process::Child,
    port: u16,
}

fn shipped_server() -> PathBuf {
    support::workspace_root().join("target/dist/linux-amd64/server")
}

impl Deployment {
    /// The database as the version before this one left it: every
    /// migration but the newest applied and recorded the way the server
    /// records them, and an item written.
    fn at_the_previous_version(scratch: &tempfile::TempDir) -> Deployment {
        let pg = Postgres::start("app", "app");
        let dir = support::workspace_root().join("server/migrations");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .collect();
        files.sort();
        assert!(
            files.len() >= 2,
            "upgrading.md's test needs two migrations in {}",
            dir.display()
        );
        pg.psql(
            "app",
            "CREATE TABLE schema_migrations (version text PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
        );
        let migrations: Vec<String> = files
            .iter()
            .map(|f| f.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        for (file, version) in files.iter().zip(&migrations).take(files.len() - 1) {
            let sql = std::fs::read_to_string(file).unwrap();
            pg.psql("app", &sql);
            pg.psql(
                "app",
                &format!("INSERT INTO schema_migrations (version, checksum) VALUES ('{version}', encode(sha256(convert_to($sql${sql}$sql$, 'UTF8')), 'hex'))"),
            );
        }
        let (key, value) = ITEM_OF_THE_PREVIOUS_VERSION;
        pg.psql(
            "app",
            &format!("INSERT INTO items (key, value) VALUES ('{key}', '{value}')"),
        );
        Deployment {
            pg,
            server: None,
            log: scratch.path().join("server.log"),
            migrations,
        }
    }

    /// The environment compose gives the containers, for the stand-ins.
    fn env(&self) -> Vec<(&'static str, String)> {
        let path = std::env::join_paths(
            std::iter::once(support::pg::bin_dir()).chain(support::tool_path()),
        )
        .unwrap();
        vec![
            ("PGHOST", "127.0.0.1".to_owned()),
            ("PGPORT", self.pg.port.to_string()),
            ("PATH", path.to_string_lossy().into_owned()),
            ("SERVER_DATABASE_URL", self.pg.url("app")),
            ("SERVER_LOG", "info".to_owned()),
            ("SERVER_LOG_FORMAT", "json".to_owned()),
        ]
    }

    fn psql(&self, sql: &str) -> String {
        self.pg.psql("app", sql)
    }

    fn applied(&self) -> String {
        self.psql("SELECT string_agg(version, ',' ORDER BY version) FROM schema_migrations")
    }

    fn items(&self) -> String {
        self.psql("SELECT string_agg(key || '=' || value::text, ',' ORDER BY key) FROM items")
    }

    fn start_server(&mut self) -> Result<u16, String> {
        self.stop_server();
        let port = support::free_port();
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(shipped_server())
            .arg("serve")
            .env_clear()
            .envs(self.env())
            .env("SERVER_ADDR", format!("127.0.0.1:{port}"))
            .env("SERVER_DRAIN_DELAY", "0s")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", shipped_server().display()))?;
        let mut server = StandInServer { child, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while support::http_status(port, "/readyz") != Some(200) {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "the server exited with {status}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            if std::time::Instant::now() > deadline {
                let _ = server.child.kill();
                return Err("the server was not ready within 60 s".to_owned());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.server = Some(server);
        Ok(port)
    }

    /// SIGTERM, as `docker compose stop` sends; returns the exit code.
    fn stop_server(&mut self) -> Option<i32> {
        let mut server = self.server.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &server.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = server.child.kill();
                let _ = server.child.wait();
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

fn deployment(bed: &mut Bed) -> Result<&mut Deployment, String> {
    bed.deployment
        .as_mut()
        .ok_or_else(|| "no deployment: the page's first command must set it up".to_owned())
}

/// Runs what the container would: the command without its `docker
/// compose` prefix, in the page's shell, with the stand-ins' environment.
fn in_container(bed: &mut Bed, command: &DocCommand) -> Result<Ran, String> {
    let deployment = deployment(bed)?;
    let server = format!("'{}' ", shipped_server().display());
    let log = format!("cat '{}'", deployment.log.display());
    let env = deployment.env();
    let text = command
        .text
        .replace("docker compose exec -T db ", "")
        .replace("docker compose run --rm --no-deps -T server ", &server)
        .replace("docker compose logs server", &log);
    let ran = run_in_page(bed, &bed.state, &text, false, &env);
    if ran.code != Some(0) {
        return Err(format!(
            "as the container would run it (`{text}`), exited with {:?}: {}{}",
            ran.code, ran.stdout, ran.stderr
        ));
    }
    Ok(ran)
}

fn backup_taken(bed: &mut Bed, command: &DocCommand, _: &Ran) -> Result<(), String> {
    in_container(bed, command)?;
    let listed = run(Command::new(support::pg::bin_dir().join("pg_restore"))
        .args(["-l", "before-upgrade.dump"])
        .current_dir(&bed.cwd));
    let listed = String::from_utf8_lossy(&listed.stdout);
    match [
        "TABLE DATA public items",
        "TABLE DATA public schema_migrations",
    ]
    .iter()
    .find(|entry| !listed.contains(**entry))
    {
        Some(missing) => Err(format!("before-upgrade.dump has no {missing}: {listed}")),
        None => Ok(()),
    }
}

fn shows_the_pending_migration(bed: &mut Bed, command: &DocCommand, _: &Ran) -> Result<(), String> {
    let ran = in_container(bed, command)?;
    let deployment = deployment(bed)?;
    let (newest, previous) = deployment.migrations.split_last().unwrap();
    let mut expected: Vec<String> = previous.iter().map(|v| format!("applied  {v}")).collect();
    expected.push(format!("pending  {newest}"));
    equal("migrate status", &ran.stdout, &expected.join("\n"))?;
    prints_documented_output(bed, command, &ran)
}

fn server_deployed(bed: &mut Bed, _: &DocCommand, _: &Ran) -> Result<(), String> {
    let rolled_back = std::fs::read_to_string(bed.cwd.join("rollback.env"))
        .is_ok_and(|old| old.trim_end() == bed.env_line().unwrap_or_default());
    let deployment = deployment(bed)?;
    let (key, value) = ITEM_OF_THE_PREVIOUS_VERSION;
    if rolled_back && deployment.applied() == deployment.migrations.join(",") {
        // Back on the old image before the restore: the database holds a
        // migration the old version does not know, so its server exits 3
        // (docs/upgrading.md). The old version is not built here; what can
        // be checked is that the newest migration is there to refuse.
        return Ok(());
    }
    if rolled_back {
        // The version before this one is not built here: the database must
        // be exactly what it left.
        let previous = &deployment.migrations[..deployment.migrations.len() - 1];
        equal(
            "the migrations after the rollback",
            &deployment.applied(),
            &previous.join(","),
        )?;
        return equal(
            "the items after the rollback",
            &deployment.items(),
            &format!("{key}={value}"),
        );
    }
    let port = deployment.start_server()?;
    equal(
        "the migrations after the upgrade",
        &deployment.applied(),
        &deployment.migrations.join(","),
    )?;
    match support::http_get(port, &format!("/v1/items/{key}")) {
        Some((200, body)) => equal("the item of the previous version", &body, value),
        other => Err(format!("GET /v1/items/{key} after the upgrade: {other:?}")),
    }
}

fn log_names_the_new_migration(bed: &mut Bed, command: &DocCommand, _: &Ran) -> Result<(), String> {
    let ran = in_container(bed, command)?;
    let newest = deployment(bed)?.migrations.last().unwrap().clone();
    let record: Value = serde_json::from_str(ran.stdout.trim_end())
        .map_err(|e| format!("not one JSON log line ({e}): {}", ran.stdout))?;
    equal(
        "the log line",
        record["msg"].as_str().unwrap_or_default(),
        &format!("migrations applied: {newest}"),
    )
}

fn first_token_created(bed: &mut Bed, command: &DocCommand, _: &Ran) -> Result<(), String> {
    let ran = in_container(bed, command)?;
    let token = ran.stdout.trim_end();
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("TOKEN is {token:?}, not 64 hex characters"));
    }
    equal(
        "API tokens",
        &deployment(bed)?.psql("SELECT count(*) FROM api_tokens"),
        "1",
    )?;
    // Run again, it creates nothing; not through the page's command, whose
    // assignment would empty TOKEN.
    let env = deployment(bed)?.env();
    let again = run_in_page(
        bed,
        &bed.state,
        &format!("'{}' bootstrap", shipped_server().display()),
        false,
        &env,
    );
    equal(
        "a second bootstrap",
        &format!("{:?} {}{}", again.code, again.stdout, again.stderr),
        "Some(0) server: an API token exists already; bootstrap changed nothing",
    )?;
    equal(
        "API tokens",
        &deployment(bed)?.psql("SELECT count(*) FROM api_tokens"),
        "1",
    )
}

fn item_created(bed: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    equal("PUT", &ran.stdout, "created")?;
    let items = deployment(bed)?.items();
    let (key, value) = ITEM_OF_THE_PREVIOUS_VERSION;
    equal(
        "the items",
        &items,
        &format!("{key}={value},greeting={{\"hello\": \"world\"}}"),
    )
}

fn item_printed(_: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    equal("GET", &ran.stdout, r#"{"hello": "world"}"#)
}

fn item_deleted(bed: &mut Bed, _: &DocCommand, ran: &Ran) -> Result<(), String> {
    equal("DELETE", &ran.stdout, "deleted")?;
    let (key, value) = ITEM_OF_THE_PREVIOUS_VERSION;
    equal(
        "the items",
        &deployment(bed)?.items(),
        &format!("{key}={value}"),
    )
}

fn server_stopped(bed: &mut Bed, _: &DocCommand, _: &Ran) -> Result<(), String> {
    match deployment(bed)?.stop_server() {
        Some(0) => Ok(()),
        other => Err(format!(
            "the server was not running or exited with {other:?}"
        )),
    }
}

fn database_count(bed: &mut Bed) -> Result<String, String> {
    Ok(deployment(bed)?.pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname = 'app'",
    ))
}

fn database_dropped(bed: &mut Bed, command: &DocCommand, _: &Ran) -> Result<(), String> {
    in_container(bed, command)?;
    equal("databases named app", &database_count(bed)?, "0")
}

fn database_created(bed: &mut Bed, command: &DocCommand, _: &Ran) -> Result<(), String> {
    in_container(bed, command)?;
    equal("databases named app", &database_count(bed)?, "1")?;
    equal(
        "tables in the new database",
        &deployment(bed)?.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        "0",
    )
}

fn backup_restored(bed: &mut Bed, command: &DocCommand, _: &Ran) -> Result<(), String> {
    in_container(bed, command)?;
    let deployment = deployment(bed)?;
    let previous = &deployment.migrations[..deployment.migrations.len() - 1];
    equal(
        "the restored migrations",
        &deployment.applied(),
        &previous.join(","),
    )?;
    let (key, value) = ITEM_OF_THE_PREVIOUS_VERSION;
    equal(
        "the restored items",
        &deployment.items(),
        &format!("{key}={value}"),
    )
}

/// docs/air-gapped.md's crane-and-cosign procedure, keyless, against the
/// tests' private Sigstore (Fulcio and a timestamp authority on loopback):
/// a release signed and attested keylessly with the token release.yml gets
/// on its tag, bundled with the trusted root, then carried to another
/// registry and loaded and verified there by the page's `sh` block with
/// crane and cosign alone, the operator's own trusted root compared with
/// the archive's and the page's identity flags in place of the key
/// (`support::keyless_air_gap_procedure`). The release is two indexes'
/// worth of cosign, not a build: keyless.rs replays release.yml itself.
#[test]
fn the_air_gap_procedure_runs_keylessly_against_a_private_sigstore() {
    let sigstore = Sigstore::shared();
    let connected = Registry::start();
    let (base, _) = seed_base(&connected, "app");
    let version = format!("v{}", server_version());
    let revision = head_sha();
    let crane = |args: &[&str]| run_ok(Command::new(tool("crane")).arg("--insecure").args(args));
    let mut index: Value = serde_json::from_str(&crane(&["manifest", &base])).unwrap();
    index["annotations"] = serde_json::json!({
        "org.opencontainers.image.version": server_version(),
        "org.opencontainers.image.revision": revision,
    });
    let bytes = serde_json::to_vec(&index).unwrap();
    let digest = xtask::oci::digest_of(&bytes);
    let client = xtask::oci::client::Client::new(&connected.host(), true).unwrap();
    let media_type = "application/vnd.oci.image.index.v1+json";
    client
        .put_manifest("app", &digest, media_type, &bytes)
        .unwrap();
    client
        .put_manifest("app", &version, media_type, &bytes)
        .unwrap();
    let signed = format!("{}@{digest}", connected.repo("app"));

    // Signed as release.yml on the version's tag would sign it.
    let slug = support::source_slug();
    let job = Job {
        repository: slug.clone(),
        workflow_file: "release.yml".to_owned(),
        workflow_name: "release".to_owned(),
        git_ref: format!("refs/tags/{version}"),
        sha: revision,
        event_name: "push".to_owned(),
        called_workflow: None,
    };
    let work = tempfile::tempdir().unwrap();
    let sbom = work.path().join("sbom.cdx.json");
    std::fs::write(
        &sbom,
        r#"{"bomFormat":"CycloneDX","specVersion":"1.6","version":1,"components":[]}"#,
    )
    .unwrap();
    let amd64 = format!(
        "{}@{}",
        connected.repo("app"),
        support::platform_digests(&signed)["amd64"]
    );
    let predicate = format!("--predicate={}", sbom.display());
    for (verb, extra, subject) in [
        ("sign", ["--recursive", ""], &signed),
        ("attest", ["--type=cyclonedx", predicate.as_str()], &amd64),
    ] {
        run_ok(
            Command::new(tool("cosign"))
                .arg(verb)
                .args(extra.iter().filter(|a| !a.is_empty()))
                .arg("--yes")
                .arg(format!(
                    "--signing-config={}",
                    sigstore.signing_config.display()
                ))
                .arg(format!(
                    "--trusted-root={}",
                    sigstore.trusted_root.display()
                ))
                .args(["--allow-insecure-registry", "--allow-http-registry"])
                .arg(subject)
                .envs(sigstore.job_env(job.clone())),
        );
    }

    // Bundled on the connected side, carried in with the trusted root the
    // operator has from their own Sigstore.
    let archive = work.path().join(format!("server-{version}.oci.tar"));
    run_ok(
        support::xtask()
            .args(["bundle", &version, "--insecure", "--image"])
            .arg(connected.repo("app"))
            .args(sigstore.xtask_flags())
            .arg("--out")
            .arg(&archive),
    );
    let operator = support::carry_in_keyless(&archive, &sigstore.trusted_root);

    let inside = Registry::start();
    let repo = inside.repo("rust-release");
    let script = support::keyless_air_gap_procedure(&repo, &version, &slug, &sigstore.issuer.url());
    let output = support::run_procedure(operator.path(), &script);
    assert!(
        output.status.success(),
        "the keyless procedure failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tags = support::tag_digests(&repo);
    assert_eq!(
        tags.get(&version).map(String::as_str),
        Some(digest.as_str()),
        "{tags:?}"
    );
}
