//! Command-line flags of every task. Each task module takes its own struct.

use camino::Utf8PathBuf;
use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::build::plan::Strategy;
use crate::supply_chain::cosign::help;
pub use crate::supply_chain::cosign::SigningArgs;

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, sign and publish the server image",
    disable_version_flag = true
)]
pub struct Xtask {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Rename the project: image, source repository and binary, everywhere they are written.
    Adopt(Adopt),
    /// Install every tool the release and the tests use, where missing.
    Setup(Setup),
    /// Run everything CI runs: setup, fmt, clippy and the whole test suite.
    Test(Test),
    /// Compute the image tags for a release, a branch or a pull request.
    Tags(Tags),
    /// Cross-compile static binaries and archives into target/dist/.
    Dist(Dist),
    /// Assemble the multi-arch OCI image, and push it with --push.
    Image(Image),
    /// Write the per-platform SBOMs (CycloneDX 1.6 and SPDX 2.3).
    Sbom(Sbom),
    /// Sign an image and all its platform manifests, by digest.
    Sign(Sign),
    /// Attach SBOM and provenance attestations to every platform, by digest.
    Attest(Attest),
    /// Verify signatures and attestations of a published image.
    Verify(Verify),
    /// Scan the crates compiled into target/dist/ or a published image for advisories.
    Audit(Audit),
    /// Run the whole release: preflight, dist, image, sign, attest, verify, tag.
    Release(Release),
    /// Write an OCI archive of a release with its signatures, for air-gapped installs.
    Bundle(Bundle),
    /// Measure the server and the release pipeline, and print a report.
    Bench(Bench),
    /// Resolve the configured base tag once and write its digest into Cargo.toml.
    PinBase(PinBase),
    /// Package the Helm chart pinned to the image digest; --push publishes and signs it.
    Chart(Chart),
    /// Check a binary against the contract the pipeline relies on (docs/binary-contract.md).
    Conformance(Conformance),
    /// Empty target/cache/, the compressed archives and layers warm builds reuse.
    CleanCache(CleanCache),
}

#[derive(Debug, Args)]
pub struct Adopt {
    /// The new image repository, REGISTRY/OWNER/NAME in lowercase, such as ghcr.io/acme/widget.
    #[arg(long, value_name = "REGISTRY/OWNER/NAME")]
    pub image: String,
    /// The new source repository URL, such as https://github.com/acme/widget; it is also the keyless signing identity.
    #[arg(long, value_name = "URL")]
    pub repository: String,
    /// The binary the image runs, when it is not the configured one.
    #[arg(long, value_name = "NAME")]
    pub binary: Option<String>,
    /// Print the files it would change, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct Setup {
    /// Report what is missing and fail if anything is, without installing.
    #[arg(long)]
    pub check: bool,
    /// Print what would be installed, and install nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct Test {
    /// Skip installing missing tools.
    #[arg(long)]
    pub no_setup: bool,
    /// Only the unit tests and the integration tests that publish no whole
    /// release: no fmt or clippy, no cold build.
    #[arg(long)]
    pub quick: bool,
    /// How many test binaries run at once (default: the cores plus one).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
    /// Seconds one test binary may run before it is stopped with all it
    /// started, and counted as failed (default: 2400).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub time_limit: Option<u64>,
    /// Extra arguments passed to every test binary, such as a test name filter.
    #[arg(last = true)]
    pub cargo_test_args: Vec<String>,
}

/// Where the image goes: shared by every command that pushes to the
/// configured repository.
#[derive(Debug, Args, Clone, Default)]
pub struct RegistryArgs {
    /// The image repository, overriding `image` in [workspace.metadata.release].
    #[arg(long, value_name = "REPOSITORY")]
    pub image: Option<String>,
    #[command(flatten)]
    pub transport: Transport,
}

/// How to reach a registry: shared by every command that talks to one.
#[derive(Debug, Args, Clone, Default)]
pub struct Transport {
    /// Allow plain HTTP, only to a registry on loopback.
    #[arg(long)]
    pub insecure: bool,
}

/// What is being built: a release version, a branch or a pull request.
/// Without any of them, they come from GitHub Actions or from local git.
#[derive(Debug, Args, Clone, Default)]
pub struct BuildRef {
    /// A release version, such as v1.2.3.
    #[arg(long, conflicts_with_all = ["branch", "pr"])]
    pub version: Option<String>,
    /// A branch name.
    #[arg(long, conflicts_with = "pr")]
    pub branch: Option<String>,
    /// A pull request number.
    #[arg(long)]
    pub pr: Option<u64>,
    /// The commit: the full sha, or at least 7 hex characters.
    #[arg(long)]
    pub sha: Option<String>,
}

#[derive(Debug, Args)]
pub struct Tags {
    #[command(flatten)]
    pub build: BuildRef,
    /// The tags already published, comma-separated, instead of asking the registry.
    #[arg(long, value_name = "TAG", value_delimiter = ',', num_args = 0..)]
    pub existing: Option<Vec<String>>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print one JSON object: {"tags": [...], ...}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct Dist {
    /// Build only these platforms (repeatable), instead of the configured ones.
    #[arg(long = "platform", value_name = "OS/ARCH")]
    pub platforms: Vec<String>,
    /// How to cross-compile: cargo (what images and releases use), or zigbuild or cross, chosen on purpose.
    #[arg(long, value_enum, default_value_t = Strategy::RELEASE)]
    pub strategy: Strategy,
    /// Skip checking the ELF machine, static linking and `server version`.
    #[arg(long)]
    pub no_verify: bool,
    /// Print the plan and the exact commands; build nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print dist.json on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Builder {
    /// Assemble the OCI layout directly; no daemon needed.
    Native,
    /// `docker buildx build` on the Dockerfile.
    Buildx,
}

#[derive(Debug, Args, Clone)]
pub struct Image {
    /// Push to the registry: blobs, manifests and index by digest, then tags.
    #[arg(long)]
    pub push: bool,
    /// How to build: natively (no daemon) or with `docker buildx`.
    #[arg(long, value_name = "NAME", value_enum, default_value_t = Builder::Native)]
    pub builder: Builder,
    /// The base image: `scratch`, an OCI layout directory, or a registry reference.
    #[arg(long)]
    pub base: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub build: BuildRef,
    /// Build only these platforms (repeatable), instead of the configured ones.
    #[arg(long = "platform", value_name = "OS/ARCH")]
    pub platforms: Vec<String>,
    /// Repoint an immutable tag (vX.Y.Z, sha-…) that already names another digest.
    #[arg(long)]
    pub force: bool,
    /// Push by digest only; set no tags (the release task tags after verifying).
    #[arg(long)]
    pub no_tags: bool,
    /// With --push: sign the index and every platform by digest before any
    /// tag moves (keyless in GitHub Actions, else --key).
    #[arg(long, requires = "push")]
    pub sign: bool,
    #[command(flatten)]
    pub signing: SigningArgs,
    /// The OCI layout to write (default target/image/oci).
    #[arg(long, value_name = "DIR")]
    pub out: Option<Utf8PathBuf>,
    /// Print the plan, the tags and the exact commands; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print {"image", "digest", "platforms", "tags"} on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct Sbom {
    /// Only this platform, instead of every configured one.
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
    /// Where to write the SBOMs.
    #[arg(long, value_name = "DIR")]
    pub out: Option<Utf8PathBuf>,
    /// The image digest to record in the root component.
    #[arg(long, value_name = "sha256:…")]
    pub image_digest: Option<String>,
    /// Print the commands that would run and the files that would be written.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the written files as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
#[command(mut_arg("key", |a| a.help(help::SIGN_KEY)), mut_arg("no_tlog", |a| a.help(help::SIGN_NO_TLOG)))]
pub struct Sign {
    /// IMAGE@sha256:… or IMAGE:TAG; a tag is resolved to a digest once.
    pub reference: String,
    #[command(flatten)]
    pub signing: SigningArgs,
    #[command(flatten)]
    pub registry: Transport,
    /// Print the plan and the exact cosign commands; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
#[command(mut_arg("key", |a| a.help(help::ATTEST_KEY)), mut_arg("no_tlog", |a| a.help(help::ATTEST_NO_TLOG)))]
pub struct Attest {
    /// IMAGE@sha256:… or IMAGE:TAG; a tag is resolved to a digest once.
    pub reference: String,
    #[command(flatten)]
    pub signing: SigningArgs,
    #[command(flatten)]
    pub registry: Transport,
    /// Print the plan and the exact cosign commands; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
#[command(mut_arg("key", |a| a.help(help::VERIFY_KEY)), mut_arg("no_tlog", |a| a.help(help::VERIFY_NO_TLOG)))]
pub struct Verify {
    /// IMAGE@sha256:… or IMAGE:TAG; a tag is resolved to a digest once.
    pub reference: String,
    #[command(flatten)]
    pub signing: SigningArgs,
    #[command(flatten)]
    pub registry: Transport,
    /// After every signature and attestation check passed: pull every
    /// platform, unpack it safely and run `/server version --json`, isolated.
    #[arg(long)]
    pub run: bool,
    /// The version the SBOMs, the provenance and (with --run) the binary must report; default: the version tag being verified (`:v1.2.3`), else Cargo.toml's.
    #[arg(long, value_name = "VERSION")]
    pub expect_version: Option<String>,
    /// Require the SBOMs and provenance to name this repository
    /// (`host/path`, such as where the release was first pushed); without
    /// it, the repository they name is only reported, since a mirror keeps
    /// the digests but not the name.
    #[arg(long, value_name = "REPOSITORY")]
    pub expect_repository: Option<String>,
    /// Keyless: the image is a build of this branch, signed by ci.yml on
    /// refs/heads/BRANCH, not a release signed by release.yml on its tag.
    #[arg(long, conflicts_with_all = ["pr", "expect_version"])]
    pub branch: Option<String>,
    /// Keyless: the image is a build of this pull request, signed by ci.yml
    /// on refs/pull/N/merge.
    #[arg(long, conflicts_with = "expect_version")]
    pub pr: Option<u64>,
    /// Also verify this Helm chart (oci://…/charts/server@sha256:… or :VERSION):
    /// its signature, and that its default values run the verified image.
    #[arg(long, value_name = "REFERENCE")]
    pub chart: Option<String>,
    /// Require each platform's vuln attestation, scanned with a database at
    /// most DAYS old.
    #[arg(long, value_name = "DAYS")]
    pub max_db_age: Option<u64>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct Audit {
    /// IMAGE@sha256:… or IMAGE:TAG to scan instead of target/dist/: each
    /// platform's /server, pulled by digest and never run.
    pub reference: Option<String>,
    /// A local RustSec advisory database (a git checkout), read without
    /// fetching (`--db` works too); without it cargo-audit fetches it.
    #[arg(long = "audit-db", alias = "db", value_name = "DIR")]
    pub db: Option<String>,
    /// Scan every published `latest` and floating `vX.Y` tag of the image.
    #[arg(long, conflicts_with = "reference")]
    pub published: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Open or update one GitHub issue per advisory found (not ignored), with `gh`.
    #[arg(long)]
    pub report_issues: bool,
    /// With --report-issues: print the gh commands that would change GitHub.
    #[arg(long, requires = "report_issues")]
    pub dry_run: bool,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct Release {
    /// The version to release, such as v1.2.3.
    pub version: String,
    /// Publish to the registry (and the GitHub release, with GITHUB_TOKEN).
    #[arg(long)]
    pub push: bool,
    /// The base image: `scratch`, an OCI layout directory, or a registry reference.
    #[arg(long)]
    pub base: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub signing: SigningArgs,
    /// Repoint an immutable tag that already names another digest.
    #[arg(long)]
    pub force: bool,
    /// The audit step's local RustSec advisory database, read without fetching.
    #[arg(long, value_name = "DIR")]
    pub audit_db: Option<String>,
    /// Print the whole plan: checks, tags with reasons, every command; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
#[command(mut_arg("key", |a| a.help(help::BUNDLE_KEY)), mut_arg("no_tlog", |a| a.help(help::BUNDLE_NO_TLOG)))]
pub struct Bundle {
    /// The released version to bundle, such as v1.2.3.
    pub version: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// The archive to write (default target/bundle/server-VERSION.oci.tar).
    #[arg(long, value_name = "FILE")]
    pub out: Option<Utf8PathBuf>,
    /// Instead of writing the archive, push the one at --out into --image,
    /// with every digest unchanged, verify its signatures there (--key, or
    /// --trusted-root and the release workflow's exact identity), and only
    /// then set the tags of the version its signed index names, by the
    /// release's tag policy.
    #[arg(long)]
    pub load: bool,
    /// Whom to trust: bundled into verify/ (--key: the public key), and with
    /// --load, what verifies, as for verify.
    #[command(flatten)]
    pub signing: SigningArgs,
    /// With --load: repoint the version's tag (and sha-…) even if it
    /// already names another digest.
    #[arg(long, requires = "load")]
    pub force: bool,
    /// Print what would be bundled (or loaded and tagged); write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct Bench {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Few runs and a 1 s load test, to check that the benchmark works; the
    /// figures are not meant to be compared.
    #[arg(long)]
    pub quick: bool,
    /// Measure the pipeline instead of the server: warm `image --push`
    /// against a loopback registry, and the native builder against buildah.
    #[arg(long)]
    pub pipeline: bool,
    /// With --pipeline: how many times the floor and the cold `image
    /// --push` are each measured, side by side, alternating which goes
    /// first; the ratio is the median of the rounds'.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..))]
    pub cold_rounds: u8,
}

#[derive(Debug, Args, Clone)]
pub struct PinBase {
    /// The base to pin, instead of the configured `base` (a tag, not a digest).
    #[arg(long)]
    pub base: Option<String>,
    #[command(flatten)]
    pub registry: Transport,
    /// Print the digest it would write; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print {"base", "digest", "manifest", "changed"} as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct Chart {
    /// The release, such as v1.2.3 (default: Cargo.toml's version).
    #[arg(long)]
    pub version: Option<String>,
    /// The image index digest the chart's default values run.
    #[arg(long, value_name = "sha256:…")]
    pub image_digest: Option<String>,
    /// The chart repository, host/…/charts/server, overriding [workspace.metadata.release.chart].
    #[arg(long, value_name = "REPOSITORY")]
    pub repository: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Push the chart by digest, sign that digest, then set its version tag.
    #[arg(long)]
    pub push: bool,
    #[command(flatten)]
    pub signing: SigningArgs,
    /// The directory the .tgz is written to (default target/chart).
    #[arg(long, value_name = "DIR")]
    pub out: Option<Utf8PathBuf>,
    /// Print the plan; package and push nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print {"name", "version", "image", "file", "sha256", "repository", "digest", "verify"}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct Conformance {
    /// The binary to check (default: the host platform's in target/dist, built
    /// by dist when missing or stale); another architecture runs under qemu.
    #[arg(long, value_name = "PATH")]
    pub binary: Option<Utf8PathBuf>,
    /// The version `version --json` must report (default: Cargo.toml's, for
    /// the default binary only).
    #[arg(long, value_name = "VERSION")]
    pub expect_version: Option<String>,
    /// The commit `version --json` must report as git_sha (default: the one
    /// dist builds from, for the default binary only).
    #[arg(long, value_name = "SHA")]
    pub expect_sha: Option<String>,
    /// Print the report as one JSON object: {"binary", "emulator", "passed", "clauses"}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct CleanCache {
    /// Print what would be removed, and how much; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn verify_cli() {
        Xtask::command().debug_assert();
    }

    /// Users type `cargo xtask …`, whatever the executable's file name.
    #[test]
    fn the_usage_line_reads_cargo_xtask() {
        let help = Xtask::try_parse_from(["target/debug/xtask", "test", "--help"])
            .unwrap_err()
            .to_string();
        assert!(
            help.contains("\nUsage: cargo xtask test [OPTIONS]"),
            "{help}"
        );
    }

    /// audit and release name the advisory database the same way.
    #[test]
    fn audit_and_release_share_the_database_flag() {
        let db = |args: &[&str]| match Xtask::try_parse_from(args).unwrap().command {
            Command::Audit(audit) => audit.db,
            Command::Release(release) => release.audit_db,
            _ => None,
        };
        assert_eq!(
            db(&["x", "audit", "--audit-db", "/d"]).as_deref(),
            Some("/d")
        );
        assert_eq!(db(&["x", "audit", "--db", "/d"]).as_deref(), Some("/d"));
        assert_eq!(
            db(&["x", "release", "v1.0.0", "--audit-db", "/d"]).as_deref(),
            Some("/d")
        );
    }

    /// `--help` is the reference: a flag without a line there is a flag
    /// nobody can find.
    #[test]
    fn every_argument_has_help() {
        fn missing(command: &clap::Command, path: &str, out: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    out.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                missing(sub, &format!("{path} {}", sub.get_name()), out);
            }
        }
        let mut out = Vec::new();
        missing(&Xtask::command(), "cargo xtask", &mut out);
        assert_eq!(out, Vec::<String>::new());
    }

    /// --key is the private key where a task signs and the public key
    /// where it only verifies; each task's help says which.
    #[test]
    fn the_key_help_says_which_half_each_task_wants() {
        let command = Xtask::command();
        let key_help = |task: &str| -> String {
            let sub = command.find_subcommand(task).unwrap();
            let arg = sub.get_arguments().find(|a| a.get_id() == "key").unwrap();
            arg.get_help().unwrap().to_string()
        };
        for task in ["sign", "attest", "release", "image", "chart"] {
            assert!(
                key_help(task).starts_with("The private key"),
                "{task}: {}",
                key_help(task)
            );
        }
        for task in ["verify", "bundle"] {
            assert!(
                key_help(task).starts_with("The public key"),
                "{task}: {}",
                key_help(task)
            );
        }
    }

    #[test]
    fn dist_builds_with_cargo_unless_told_and_never_guesses() {
        let parsed = Xtask::try_parse_from(["cargo xtask", "dist"]).unwrap();
        let Command::Dist(dist) = parsed.command else {
            panic!("not dist")
        };
        assert_eq!(dist.strategy, Strategy::Cargo);
        assert!(Xtask::try_parse_from(["cargo xtask", "dist", "--strategy", "auto"]).is_err());
        assert_eq!(Strategy::RELEASE.name(), "cargo");
    }
}
