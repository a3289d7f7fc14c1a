//! SLSA provenance v1 (https://slsa.dev/provenance/v1): the predicate that
//! `cosign attest --type slsaprovenance1` wraps in an in-toto statement.
//! The fields are described in docs/sbom-and-provenance.md.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::build::plan::Strategy;
use crate::supply_chain::crate_graph::{self, Crate, CrateSource};
use crate::support::config::{is_digest, Config, Platform};
use crate::support::source::{rfc3339_utc, Source};

/// The anchor, in the repository's docs, that defines our build type.
const BUILD_TYPE_DOC: &str = "blob/main/docs/sbom-and-provenance.md#build-type-v1";

pub struct ProvenanceInput<'a> {
    pub config: &'a Config,
    /// crate::support::source::Source: sha + SOURCE_DATE_EPOCH
    pub source: &'a Source,
    /// `host/repository` the image was actually pushed to.
    pub image: &'a str,
    /// None for the index
    pub platform: Option<&'a Platform>,
    /// The index's platforms; read only when `platform` is None.
    pub platforms: &'a [Platform],
    pub base_name: &'a str,
    pub base_digest: Option<&'a str>,
    pub build_command: &'a [String],
}

/// Where the build runs, read from the environment once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildEnv {
    pub builder_id: String,
    pub invocation_id: Option<String>,
    /// Seconds since 1970 when this xtask run started building provenance.
    pub started_on: u64,
    /// `GITHUB_REF` in CI, for the source URI.
    pub git_ref: Option<String>,
}

impl BuildEnv {
    pub fn from_env() -> BuildEnv {
        BuildEnv::from_vars(
            |name| std::env::var(name).ok().filter(|v| !v.is_empty()),
            started_on(),
        )
    }

    /// GitHub Actions' variables, documented at
    /// docs.github.com/actions/reference/variables-reference.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>, started_on: u64) -> BuildEnv {
        if var("GITHUB_ACTIONS").as_deref() != Some("true") {
            return BuildEnv {
                builder_id: "local".to_owned(),
                invocation_id: None,
                started_on,
                git_ref: None,
            };
        }
        let server = var("GITHUB_SERVER_URL").unwrap_or_else(|| "https://github.com".to_owned());
        let server = server.trim_end_matches('/');
        let repository = var("GITHUB_REPOSITORY").unwrap_or_default();
        let git_ref = var("GITHUB_REF");
        // GITHUB_WORKFLOW_REF names the workflow file that is actually
        // running, which is what keyless signing certifies too.
        let builder_id = match var("GITHUB_WORKFLOW_REF") {
            Some(workflow_ref) => format!("{server}/{workflow_ref}"),
            None => format!(
                "{server}/{repository}/.github/workflows/release.yml@{}",
                git_ref.as_deref().unwrap_or("")
            ),
        };
        let invocation_id = var("GITHUB_RUN_ID").map(|run| {
            let attempt = var("GITHUB_RUN_ATTEMPT").unwrap_or_else(|| "1".to_owned());
            format!("{server}/{repository}/actions/runs/{run}/attempts/{attempt}")
        });
        BuildEnv {
            builder_id,
            invocation_id,
            started_on,
            git_ref,
        }
    }
}

/// The same start time for every predicate of one run (each platform and
/// the index), so that they read as one build.
fn started_on() -> u64 {
    static STARTED: OnceLock<u64> = OnceLock::new();
    *STARTED.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    })
}

/// The SLSA provenance v1 predicate (the `predicate` object only, what `cosign attest --type slsaprovenance1 --predicate FILE` takes).
pub fn predicate(input: &ProvenanceInput<'_>) -> Result<Value> {
    let platforms: Vec<Platform> = match input.platform {
        Some(platform) => vec![platform.clone()],
        None => input.platforms.to_vec(),
    };
    let mut crates: BTreeMap<String, Crate> = BTreeMap::new();
    for platform in &platforms {
        for c in crate_graph::crate_graph(input.config, platform)?.crates {
            crates.entry(c.key()).or_insert(c);
        }
    }
    let crates: Vec<Crate> = crates.into_values().collect();
    predicate_with(input, &crates, &BuildEnv::from_env())
}

/// The predicate from explicit inputs; `crates` are the resolved crates
/// (for the index: of every platform), sorted.
pub fn predicate_with(
    input: &ProvenanceInput<'_>,
    crates: &[Crate],
    env: &BuildEnv,
) -> Result<Value> {
    let config = input.config;
    let repository = config.repository.trim_end_matches('/');
    if repository.is_empty() {
        bail!("package `{}` has no `repository` in Cargo.toml; the provenance must name the source repository", config.package);
    }
    let sha = &input.source.sha;
    if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("the source revision is {sha:?}, not a commit sha; provenance needs a git checkout");
    }
    if input.build_command.is_empty() {
        bail!("the build command is empty; provenance records the command that built the artifact");
    }

    let mut external = json!({
        "version": config.version.to_string(),
        "source": { "repository": repository, "revision": sha },
        "image": input.image,
    });
    match input.platform {
        Some(platform) => external["platform"] = json!(platform.to_string()),
        None => {
            external["platforms"] = json!(input
                .platforms
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>())
        }
    }
    let mut internal = json!({
        "SOURCE_DATE_EPOCH": input.source.epoch.to_string(),
        "buildCommand": input.build_command,
        // `image` and `release` always compile with this one; another
        // strategy links otherwise and gives another digest.
        "distStrategy": Strategy::RELEASE.name(),
    });
    if let Some(platform) = input.platform {
        internal["target"] = json!(platform.triple());
    }

    let source_uri = match &env.git_ref {
        Some(git_ref) => format!("git+{repository}@{git_ref}"),
        None => format!("git+{repository}"),
    };
    let mut resolved = vec![json!({
        "uri": source_uri,
        "digest": { "gitCommit": sha },
    })];
    resolved.extend(base_descriptor(input.base_name, input.base_digest)?);
    for c in crates {
        let digest = match (&c.source, &c.checksum) {
            (CrateSource::Registry(_), Some(checksum)) => json!({ "sha256": checksum }),
            (CrateSource::Git { commit, .. }, _) => json!({ "gitCommit": commit }),
            // Path crates are part of the source revision above.
            _ => continue,
        };
        resolved.push(json!({
            "uri": c.purl(),
            "digest": digest,
            "annotations": { "source": c.source.describe() },
        }));
    }

    let mut metadata = json!({ "startedOn": rfc3339_utc(env.started_on) });
    if let Some(invocation) = &env.invocation_id {
        metadata["invocationId"] = json!(invocation);
    }
    Ok(json!({
        "buildDefinition": {
            "buildType": format!("{repository}/{BUILD_TYPE_DOC}"),
            "externalParameters": external,
            "internalParameters": internal,
            "resolvedDependencies": resolved,
        },
        "runDetails": {
            "builder": { "id": env.builder_id },
            "metadata": metadata,
        },
    }))
}

/// The base image as a resource descriptor; `scratch` has no content and
/// so no entry.
fn base_descriptor(name: &str, digest: Option<&str>) -> Result<Option<Value>> {
    if name == "scratch" {
        return Ok(None);
    }
    let digest = digest.with_context(|| {
        format!("the base image {name} has no digest; resolve it (cargo xtask image records base.digest) so that the provenance pins it")
    })?;
    if !is_digest(digest) {
        bail!("base image digest {digest:?} is not a sha256:<64 hex> digest");
    }
    let hex = digest.trim_start_matches("sha256:");
    let name_without_digest = name.split('@').next().unwrap_or(name);
    Ok(Some(json!({
        "name": "base-image",
        "uri": format!("oci://{name_without_digest}@{digest}"),
        "digest": { "sha256": hex },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workspace's config with fixed values where the predicate reads
    /// them; built from the real one so that new Config fields need no edit.
    fn config() -> Config {
        let mut config = Config::load().unwrap();
        config.image = "ghcr.io/fixture-org/rust-release".into();
        config.platforms = vec![
            "linux/amd64".parse().unwrap(),
            "linux/arm64".parse().unwrap(),
        ];
        config.package = "server".into();
        config.version = "1.2.3".parse().unwrap();
        config.repository = "https://github.com/fixture-org/rust-release".into();
        config
    }

    fn crates() -> Vec<Crate> {
        vec![
            Crate {
                name: "bytes".into(),
                version: "1.10.1".into(),
                source: CrateSource::Registry(
                    "registry+https://github.com/rust-lang/crates.io-index".into(),
                ),
                license: Some("MIT".into()),
                checksum: Some("d".repeat(64)),
                features: vec![],
                proc_macro: false,
                dependencies: vec![],
            },
            Crate {
                name: "local".into(),
                version: "0.1.0".into(),
                source: CrateSource::Path("local".into()),
                license: None,
                checksum: None,
                features: vec![],
                proc_macro: false,
                dependencies: vec![],
            },
        ]
    }

    fn ci_env() -> BuildEnv {
        let vars: BTreeMap<&str, &str> = [
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REPOSITORY", "fixture-org/rust-release"),
            ("GITHUB_REF", "refs/tags/v1.2.3"),
            (
                "GITHUB_WORKFLOW_REF",
                "fixture-org/rust-release/.github/workflows/release.yml@refs/tags/v1.2.3",
            ),
            ("GITHUB_RUN_ID", "4242"),
            ("GITHUB_RUN_ATTEMPT", "2"),
        ]
        .into();
        BuildEnv::from_vars(|n| vars.get(n).map(|v| v.to_string()), 1_795_305_600)
    }

    #[test]
    fn platform_predicate_in_ci() {
        let config = config();
        let source = Source {
            sha: "a".repeat(40),
            epoch: 1_700_000_000,
        };
        let platform: Platform = "linux/arm64".parse().unwrap();
        let command = vec![
            "cargo".to_owned(),
            "auditable".to_owned(),
            "build".to_owned(),
        ];
        let base_digest = format!("sha256:{}", "b".repeat(64));
        let input = ProvenanceInput {
            config: &config,
            source: &source,
            image: "ghcr.io/fixture-org/rust-release",
            platform: Some(&platform),
            platforms: &[],
            base_name: "gcr.io/distroless/static-debian13:nonroot",
            base_digest: Some(&base_digest),
            build_command: &command,
        };
        let predicate = predicate_with(&input, &crates(), &ci_env()).unwrap();
        assert_eq!(
            predicate,
            json!({
                "buildDefinition": {
                    "buildType": "https://github.com/fixture-org/rust-release/blob/main/docs/sbom-and-provenance.md#build-type-v1",
                    "externalParameters": {
                        "version": "1.2.3",
                        "platform": "linux/arm64",
                        "image": "ghcr.io/fixture-org/rust-release",
                        "source": {
                            "repository": "https://github.com/fixture-org/rust-release",
                            "revision": "a".repeat(40),
                        },
                    },
                    "internalParameters": {
                        "SOURCE_DATE_EPOCH": "1700000000",
                        "buildCommand": ["cargo", "auditable", "build"],
                        "distStrategy": "cargo",
                        "target": "aarch64-unknown-linux-gnu",
                    },
                    "resolvedDependencies": [
                        {
                            "uri": "git+https://github.com/fixture-org/rust-release@refs/tags/v1.2.3",
                            "digest": { "gitCommit": "a".repeat(40) },
                        },
                        {
                            "name": "base-image",
                            "uri": format!("oci://gcr.io/distroless/static-debian13:nonroot@{base_digest}"),
                            "digest": { "sha256": "b".repeat(64) },
                        },
                        {
                            "uri": "pkg:cargo/bytes@1.10.1",
                            "digest": { "sha256": "d".repeat(64) },
                            "annotations": { "source": "registry+https://github.com/rust-lang/crates.io-index" },
                        },
                    ],
                },
                "runDetails": {
                    "builder": { "id": "https://github.com/fixture-org/rust-release/.github/workflows/release.yml@refs/tags/v1.2.3" },
                    "metadata": {
                        "invocationId": "https://github.com/fixture-org/rust-release/actions/runs/4242/attempts/2",
                        "startedOn": "2026-11-22T00:00:00Z",
                    },
                },
            })
        );
    }

    #[test]
    fn index_predicate_locally() {
        let config = config();
        let source = Source {
            sha: "a".repeat(40),
            epoch: 0,
        };
        let command = vec!["cargo".to_owned(), "xtask".to_owned(), "image".to_owned()];
        let input = ProvenanceInput {
            config: &config,
            source: &source,
            image: "ghcr.io/fixture-org/rust-release",
            platform: None,
            platforms: &config.platforms,
            base_name: "scratch",
            base_digest: None,
            build_command: &command,
        };
        let env = BuildEnv::from_vars(|_| None, 0);
        let predicate = predicate_with(&input, &[], &env).unwrap();
        assert_eq!(
            predicate["buildDefinition"]["externalParameters"]["platforms"],
            json!(["linux/amd64", "linux/arm64"])
        );
        assert_eq!(
            predicate["buildDefinition"]["internalParameters"].get("target"),
            None
        );
        assert_eq!(
            predicate["buildDefinition"]["resolvedDependencies"],
            json!([{ "uri": "git+https://github.com/fixture-org/rust-release", "digest": { "gitCommit": "a".repeat(40) } }])
        );
        assert_eq!(
            predicate["runDetails"],
            json!({ "builder": { "id": "local" }, "metadata": { "startedOn": "1970-01-01T00:00:00Z" } })
        );
    }

    /// The real workspace: the index's predicate lists every crate of every
    /// platform once, with Cargo.lock's checksum.
    #[test]
    fn workspace_index_predicate_pins_every_crate() {
        let config = Config::load().unwrap();
        let source = Source {
            sha: "a".repeat(40),
            epoch: 0,
        };
        let command = vec!["cargo".to_owned(), "xtask".to_owned(), "image".to_owned()];
        let input = ProvenanceInput {
            config: &config,
            source: &source,
            image: "ghcr.io/fixture-org/rust-release",
            platform: None,
            platforms: &config.platforms,
            base_name: "scratch",
            base_digest: None,
            build_command: &command,
        };
        let predicate = predicate(&input).unwrap();
        let lock = std::fs::read_to_string(config.workspace_root.join("Cargo.lock")).unwrap();
        let sums = crate_graph::lock_checksums(&lock).unwrap();
        let resolved = predicate["buildDefinition"]["resolvedDependencies"]
            .as_array()
            .unwrap();
        let mut expected = BTreeMap::new();
        for platform in &config.platforms {
            for c in crate_graph::crate_graph(&config, platform).unwrap().crates {
                expected.insert(c.purl(), c);
            }
        }
        assert_eq!(resolved.len(), 1 + expected.len());
        for (entry, (purl, c)) in resolved[1..].iter().zip(&expected) {
            assert_eq!(entry["uri"], purl.as_str());
            let key = crate_graph::LockKey {
                name: c.name.clone(),
                version: c.version.clone(),
                source: "registry+https://github.com/rust-lang/crates.io-index".into(),
            };
            assert_eq!(entry["digest"]["sha256"], sums[&key].as_str());
        }
        assert!(expected.keys().any(|k| k.starts_with("pkg:cargo/tokio@")));
    }

    #[test]
    fn builder_id_without_workflow_ref() {
        let vars: BTreeMap<&str, &str> = [
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REPOSITORY", "o/r"),
            ("GITHUB_REF", "refs/tags/v1.0.0"),
        ]
        .into();
        let env = BuildEnv::from_vars(|n| vars.get(n).map(|v| v.to_string()), 0);
        assert_eq!(
            env.builder_id,
            "https://github.com/o/r/.github/workflows/release.yml@refs/tags/v1.0.0"
        );
        assert_eq!(env.invocation_id, None);
        let local = BuildEnv::from_vars(|n| (n == "GITHUB_RUN_ID").then(|| "1".to_owned()), 0);
        assert_eq!(local.builder_id, "local");
        assert_eq!(local.invocation_id, None);
    }

    #[test]
    fn refuses_what_it_cannot_vouch_for() {
        let config = config();
        let command = vec!["cargo".to_owned()];
        let env = BuildEnv::from_vars(|_| None, 0);
        let unknown = Source {
            sha: "unknown".into(),
            epoch: 0,
        };
        let input = ProvenanceInput {
            config: &config,
            source: &unknown,
            image: "ghcr.io/fixture-org/rust-release",
            platform: None,
            platforms: &config.platforms,
            base_name: "scratch",
            base_digest: None,
            build_command: &command,
        };
        assert_eq!(
            predicate_with(&input, &[], &env).unwrap_err().to_string(),
            "the source revision is \"unknown\", not a commit sha; provenance needs a git checkout"
        );
        let source = Source {
            sha: "a".repeat(40),
            epoch: 0,
        };
        let input = ProvenanceInput {
            source: &source,
            base_name: "gcr.io/distroless/static-debian13:nonroot",
            ..input
        };
        assert_eq!(
            predicate_with(&input, &[], &env).unwrap_err().to_string(),
            "the base image gcr.io/distroless/static-debian13:nonroot has no digest; resolve it (cargo xtask image records base.digest) so that the provenance pins it"
        );
    }
}
