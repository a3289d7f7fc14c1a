//! The crate graph compiled into one platform's binary: `cargo metadata`
//! filtered by the target, normal dependencies only, with the features
//! `cargo tree` resolves, and the checksums from Cargo.lock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use cargo_metadata::{DependencyKind, Metadata, PackageId, TargetKind};
use xshell::{cmd, Shell};

use crate::support::cargo_env;
use crate::support::config::{Config, Platform};

pub const CRATES_IO_INDEX: &str = "registry+https://github.com/rust-lang/crates.io-index";

pub const CRATES_IO_SPARSE: &str = "sparse+https://index.crates.io/";

/// Where a crate came from, as Cargo.lock records it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum CrateSource {
    /// `registry+URL` or `sparse+URL`: the index URL, as Cargo writes it.
    Registry(String),
    /// A path dependency or workspace member, relative to the workspace root.
    Path(String),
    /// `git+URL#commit`: the repository URL (without query) and the commit.
    Git { url: String, commit: String },
}

impl CrateSource {
    pub fn kind(&self) -> &'static str {
        match self {
            CrateSource::Registry(_) => "registry",
            CrateSource::Path(_) => "path",
            CrateSource::Git { .. } => "git",
        }
    }

    /// Cargo's own spelling, with paths made relative so that the checkout
    /// location does not leak into the SBOM.
    pub fn describe(&self) -> String {
        match self {
            CrateSource::Registry(index) => index.clone(),
            CrateSource::Path(path) => format!("path+{path}"),
            CrateSource::Git { url, commit } => format!("git+{url}#{commit}"),
        }
    }

    fn is_crates_io(&self) -> bool {
        matches!(self, CrateSource::Registry(index) if index == CRATES_IO_INDEX || index == CRATES_IO_SPARSE)
    }
}

/// One package compiled into the binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crate {
    pub name: String,
    pub version: String,
    pub source: CrateSource,
    /// The SPDX expression from Cargo.toml's `license`, if any.
    pub license: Option<String>,
    /// The sha256 of the `.crate` file, from Cargo.lock (registry crates only).
    pub checksum: Option<String>,
    /// The features compiled for this platform, sorted.
    pub features: Vec<String>,
    /// Proc-macros run inside the compiler; none of their code is in the binary.
    pub proc_macro: bool,
    /// The purls of its normal dependencies, sorted.
    pub dependencies: Vec<String>,
}

impl Crate {
    pub fn purl(&self) -> String {
        format!("pkg:cargo/{}@{}", self.name, self.version)
    }

    /// `name@version`, how syft and the cross-check name a crate.
    pub fn key(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// The license for documents that need one: NOASSERTION when Cargo.toml
    /// has none (for example only `license-file`).
    pub fn license_or_noassertion(&self) -> &str {
        self.license.as_deref().unwrap_or("NOASSERTION")
    }

    /// Where the crate can be downloaded, when that is known.
    pub fn download_location(&self) -> Option<String> {
        match &self.source {
            _ if self.source.is_crates_io() => Some(format!(
                "https://crates.io/api/v1/crates/{}/{}/download",
                self.name, self.version
            )),
            CrateSource::Git { url, commit } => Some(format!("git+{url}@{commit}")),
            _ => None,
        }
    }
}

/// The crates compiled into the server for one platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrateGraph {
    pub platform: Platform,
    pub root: Crate,
    /// Every crate but the root, sorted by name then version.
    pub crates: Vec<Crate>,
}

impl CrateGraph {
    /// `name@version` of every crate, the root included.
    pub fn keys(&self) -> BTreeSet<String> {
        std::iter::once(&self.root)
            .chain(&self.crates)
            .map(Crate::key)
            .collect()
    }
}

/// The crates compiled into the server for `platform`. A release asks for
/// each platform's graph several times (SBOMs, provenance, assets), and
/// the graph cannot change within one run: `cargo metadata` and `cargo
/// tree` run once per workspace and platform.
pub fn crate_graph(config: &Config, platform: &Platform) -> Result<CrateGraph> {
    type Key = (Utf8PathBuf, Platform);
    static GRAPHS: Mutex<BTreeMap<Key, CrateGraph>> = Mutex::new(BTreeMap::new());
    let key = (config.workspace_root.clone(), platform.clone());
    if let Some(graph) = GRAPHS.lock().ok().and_then(|g| g.get(&key).cloned()) {
        return Ok(graph);
    }
    let graph = read_crate_graph(config, platform)?;
    if let Ok(mut graphs) = GRAPHS.lock() {
        graphs.insert(key, graph.clone());
    }
    Ok(graph)
}

fn read_crate_graph(config: &Config, platform: &Platform) -> Result<CrateGraph> {
    let triple = platform.triple();
    let metadata = cargo_env::metadata(
        cargo_metadata::MetadataCommand::new()
            .manifest_path(config.manifest_path())
            .other_options(vec![
                "--locked".to_owned(),
                "--filter-platform".to_owned(),
                triple.to_owned(),
            ]),
    )
        .with_context(|| format!("cannot run `cargo metadata --filter-platform {triple}`; does Cargo.lock match Cargo.toml (`cargo update --workspace`)?"))?;
    let lock_path = config.workspace_root.join("Cargo.lock");
    let lock_text = std::fs::read_to_string(&lock_path).with_context(|| {
        format!("cannot read {lock_path}; the SBOM needs the committed lock file")
    })?;
    let checksums = lock_checksums(&lock_text)?;
    let features = compiled_features(config, triple)?;
    graph_from_metadata(&metadata, &config.package, platform, &checksums, &features)
}

fn node_features(node: Option<&&cargo_metadata::Node>) -> Vec<String> {
    let mut features: Vec<String> = node
        .map(|n| n.features.iter().map(|f| f.to_string()).collect())
        .unwrap_or_default();
    features.sort();
    features
}

/// Walks the resolve graph from `root_name` over normal dependencies.
pub fn graph_from_metadata(
    metadata: &Metadata,
    root_name: &str,
    platform: &Platform,
    checksums: &BTreeMap<LockKey, String>,
    features: &BTreeMap<String, Vec<String>>,
) -> Result<CrateGraph> {
    let resolve = metadata
        .resolve
        .as_ref()
        .context("cargo metadata returned no dependency graph")?;
    let packages: BTreeMap<&PackageId, &cargo_metadata::Package> =
        metadata.packages.iter().map(|p| (&p.id, p)).collect();
    let nodes: BTreeMap<&PackageId, &cargo_metadata::Node> =
        resolve.nodes.iter().map(|n| (&n.id, n)).collect();
    let root_id = metadata
        .workspace_packages()
        .into_iter()
        .find(|p| p.name.as_str() == root_name)
        .map(|p| &p.id)
        .with_context(|| format!("package `{root_name}` is not a workspace member"))?;

    // Depth-first over normal edges; `--filter-platform` already dropped
    // the edges that do not apply to this target. cargo metadata resolves
    // features for the whole workspace at once, so it can reach a crate
    // that only another member's features enable; cargo-auditable records
    // the same graph in the binary, and scanners read that, so the SBOM
    // lists it too rather than claim less than the binary says.
    let mut reached: BTreeMap<&PackageId, Vec<&PackageId>> = BTreeMap::new();
    let mut stack = vec![root_id];
    while let Some(id) = stack.pop() {
        if reached.contains_key(id) {
            continue;
        }
        let node = nodes
            .get(id)
            .with_context(|| format!("cargo metadata has no graph node for {id}"))?;
        let normal: Vec<&PackageId> = node
            .deps
            .iter()
            .filter(|dep| {
                dep.dep_kinds
                    .iter()
                    .any(|k| k.kind == DependencyKind::Normal)
            })
            .map(|dep| &dep.pkg)
            .collect();
        stack.extend(normal.iter().copied());
        reached.insert(id, normal);
    }

    let workspace_root = metadata.workspace_root.as_path();
    let mut by_id: BTreeMap<&PackageId, Crate> = BTreeMap::new();
    for id in reached.keys() {
        let package = packages
            .get(id)
            .with_context(|| format!("cargo metadata has no package for {id}"))?;
        let name = package.name.to_string();
        let version = package.version.to_string();
        let source = crate_source(package, workspace_root)?;
        let checksum = match &source {
            CrateSource::Registry(index) => {
                let key = LockKey {
                    name: name.clone(),
                    version: version.clone(),
                    source: index.clone(),
                };
                Some(checksums.get(&key).cloned().with_context(|| {
                    format!("Cargo.lock has no checksum for {name}@{version} from {index}; regenerate it with a current cargo (`cargo generate-lockfile`)")
                })?)
            }
            _ => None,
        };
        let key = format!("{name}@{version}");
        // `cargo tree` resolves this package alone; where it does not list
        // a crate, the workspace's resolve says which features it has.
        let compiled = match features.get(&key) {
            Some(compiled) => compiled.clone(),
            None => node_features(nodes.get(id)),
        };
        by_id.insert(
            id,
            Crate {
                license: package.license.as_deref().map(normalize_license),
                proc_macro: package
                    .targets
                    .iter()
                    .any(|t| t.kind.contains(&TargetKind::ProcMacro)),
                name,
                version,
                source,
                checksum,
                features: compiled,
                dependencies: Vec::new(),
            },
        );
    }
    let purls: BTreeMap<&PackageId, String> = by_id.iter().map(|(id, c)| (*id, c.purl())).collect();
    for (id, deps) in &reached {
        let mut dependencies: Vec<String> = deps.iter().map(|d| purls[d].clone()).collect();
        dependencies.sort();
        dependencies.dedup();
        if let Some(c) = by_id.get_mut(id) {
            c.dependencies = dependencies;
        }
    }
    let reached_keys: BTreeSet<String> = by_id.values().map(Crate::key).collect();
    let extra: Vec<&String> = features
        .keys()
        .filter(|k| !reached_keys.contains(*k))
        .collect();
    if !extra.is_empty() {
        bail!("`cargo tree` lists crates that cargo metadata does not reach over normal dependencies: {extra:?}");
    }
    let root = by_id
        .remove(root_id)
        .context("the root package was not reached")?;
    let mut crates: Vec<Crate> = by_id.into_values().collect();
    crates.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    let mut seen = BTreeSet::new();
    for c in &crates {
        if !seen.insert(c.purl()) {
            bail!("{} comes from two sources in the graph; the SBOM identifies crates by name and version and cannot tell them apart", c.key());
        }
    }
    Ok(CrateGraph {
        platform: platform.clone(),
        root,
        crates,
    })
}

fn crate_source(
    package: &cargo_metadata::Package,
    workspace_root: &Utf8Path,
) -> Result<CrateSource> {
    let Some(source) = &package.source else {
        let dir = package
            .manifest_path
            .parent()
            .unwrap_or(&package.manifest_path);
        let relative = dir.strip_prefix(workspace_root).unwrap_or(dir);
        return Ok(CrateSource::Path(relative.to_string()));
    };
    let repr = source.repr.as_str();
    if repr.starts_with("registry+") || repr.starts_with("sparse+") {
        return Ok(CrateSource::Registry(repr.to_owned()));
    }
    if let Some(rest) = repr.strip_prefix("git+") {
        let (url, commit) = rest
            .rsplit_once('#')
            .with_context(|| format!("git source {repr:?} has no commit"))?;
        let url = url.split('?').next().unwrap_or(url);
        return Ok(CrateSource::Git {
            url: url.to_owned(),
            commit: commit.to_owned(),
        });
    }
    bail!(
        "{}@{} has a source the SBOM does not know: {repr:?}",
        package.name,
        package.version
    )
}

/// Cargo once accepted `MIT/Apache-2.0`; SPDX spells that `MIT OR Apache-2.0`.
pub(crate) fn normalize_license(license: &str) -> String {
    if license.contains('/') {
        license
            .split('/')
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" OR ")
    } else {
        license.trim().to_owned()
    }
}

/// A package in Cargo.lock.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LockKey {
    pub name: String,
    pub version: String,
    pub source: String,
}

/// The `checksum` of every `[[package]]` in a Cargo.lock (format 3 or 4).
/// Cargo.lock is machine-written TOML with one `key = "value"` per line, so
/// a line reader is exact and spares xtask a TOML parser.
pub fn lock_checksums(lock: &str) -> Result<BTreeMap<LockKey, String>> {
    let mut checksums = BTreeMap::new();
    let mut version_seen = false;
    let mut current: Option<BTreeMap<&str, &str>> = None;
    let mut flush = |fields: Option<BTreeMap<&str, &str>>| -> Result<()> {
        let Some(fields) = fields else { return Ok(()) };
        if let (Some(name), Some(version), Some(source), Some(checksum)) = (
            fields.get("name"),
            fields.get("version"),
            fields.get("source"),
            fields.get("checksum"),
        ) {
            if checksum.len() != 64 || !checksum.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("Cargo.lock: checksum of {name}@{version} is not a sha256: {checksum:?}");
            }
            checksums.insert(
                LockKey {
                    name: (*name).to_owned(),
                    version: (*version).to_owned(),
                    source: (*source).to_owned(),
                },
                (*checksum).to_owned(),
            );
        }
        Ok(())
    };
    for line in lock.lines() {
        let line = line.trim_end();
        if line.starts_with('[') {
            flush(current.take())?;
            if line == "[[package]]" {
                current = Some(BTreeMap::new());
            } else if line == "[metadata]" {
                bail!("Cargo.lock is in the old format 1, with checksums under [metadata]; regenerate it with a current cargo (`cargo generate-lockfile`)");
            }
            continue;
        }
        let Some((key, value)) = line.split_once(" = ") else {
            continue;
        };
        if key == "version" && current.is_none() {
            version_seen = true;
        }
        let Some(fields) = current.as_mut() else {
            continue;
        };
        if let Some(value) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            fields.insert(key, value);
        }
    }
    flush(current.take())?;
    if !version_seen {
        bail!("Cargo.lock has no `version = N` line: it is not a Cargo.lock of format 3 or later; regenerate it with `cargo generate-lockfile`");
    }
    Ok(checksums)
}

/// `name@version` → the features `cargo build -p <package> --target <triple>`
/// compiles, read from `cargo tree`, which resolves features the way that
/// build does.
fn compiled_features(config: &Config, triple: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let sh = Shell::new()?;
    sh.change_dir(&config.workspace_root);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let package = &config.package;
    let format = "{p}|{f}";
    let out = cmd!(
        sh,
        "{cargo} tree --locked --package {package} --target {triple} --edges normal --prefix none --format {format}"
    )
    .env_clear()
    .envs(cargo_env::inherited())
    .quiet()
    .read()
    .with_context(|| format!("cannot run `cargo tree --target {triple}` to read the compiled features"))?;
    parse_tree_features(&out)
}

/// Parses `cargo tree --prefix none --format '{p}|{f}'` lines such as
/// `serde_derive v1.0.219 (proc-macro)|default`.
pub fn parse_tree_features(out: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let mut features = BTreeMap::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let (package, list) = line
            .split_once('|')
            .with_context(|| format!("unexpected `cargo tree` line {line:?}"))?;
        let mut words = package.split_whitespace();
        let (Some(name), Some(version)) = (words.next(), words.next()) else {
            bail!("unexpected `cargo tree` line {line:?}");
        };
        let version = version.strip_prefix('v').unwrap_or(version);
        let list = list.trim().trim_end_matches("(*)").trim();
        let mut names: Vec<String> = list
            .split(',')
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect();
        names.sort();
        features.insert(format!("{name}@{version}"), names);
    }
    Ok(features)
}
