//! The release configuration: `[workspace.metadata.release]` in the root
//! Cargo.toml, read through `cargo metadata`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Deserialize;

use crate::support::cargo_env;

#[derive(Debug, Clone)]
pub struct Config {
    pub workspace_root: Utf8PathBuf,
    pub target_dir: Utf8PathBuf,
    /// Where dist's cargo builds keep their intermediate artifacts: cargo's
    /// build directory, unless `XTASK_BUILD_DIR` names one that several
    /// checkouts share.
    pub build_dir: Utf8PathBuf,
    /// The image repository, without tag or digest.
    pub image: String,
    pub platforms: Vec<Platform>,
    pub base: String,
    pub base_digest: Option<String>,
    pub package: String,
    pub binary: String,
    pub version: semver::Version,
    pub description: String,
    pub license: String,
    pub repository: String,
    pub toolchains: BTreeMap<String, ToolchainConfig>,
    /// The branch whose builds are tagged as the default branch's.
    pub default_branch: String,
    pub chart: ChartConfig,
    /// `[workspace.metadata.release.audit]`: the vulnerability gate.
    pub audit: AuditPolicy,
    pub sigstore: SigstoreConfig,
}

/// `[workspace.metadata.release.sigstore]`: an organisation's own Sigstore,
/// the defaults of `--signing-config`, `--trusted-root` and `--oidc-issuer`.
/// Paths are relative to the workspace root; empty: the public-good instance.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SigstoreConfig {
    #[serde(default)]
    pub signing_config: String,
    #[serde(default)]
    pub trusted_root: String,
    #[serde(default)]
    pub oidc_issuer: String,
}

/// `[workspace.metadata.release.chart]`: the Helm chart.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ChartConfig {
    /// Whether `release` publishes the chart; off until a project opts in.
    #[serde(default)]
    pub publish: bool,
    /// host/…/charts/server; empty: next to the image.
    #[serde(default)]
    pub repository: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawRelease {
    image: String,
    #[serde(default = "default_platforms")]
    platforms: Vec<String>,
    base: String,
    #[serde(default)]
    base_digest: String,
    #[serde(default = "default_server")]
    package: String,
    #[serde(default = "default_server")]
    binary: String,
    #[serde(default)]
    toolchains: BTreeMap<String, ToolchainConfig>,
    #[serde(default = "default_branch")]
    default_branch: String,
    #[serde(default)]
    chart: ChartConfig,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    sigstore: SigstoreConfig,
}

/// Names a build directory that checkouts of the same workspace share, so
/// that dist compiles the dependencies once for all of them.
pub const BUILD_DIR_VARIABLE: &str = "XTASK_BUILD_DIR";

fn build_dir(metadata: &cargo_metadata::Metadata) -> Result<Utf8PathBuf> {
    if let Some(dir) = std::env::var_os(BUILD_DIR_VARIABLE) {
        let dir = Utf8PathBuf::from_path_buf(dir.into()).map_err(|p| {
            anyhow::format_err!(
                "{BUILD_DIR_VARIABLE}={} is not UTF-8; use a UTF-8 path",
                p.display()
            )
        })?;
        if !dir.is_absolute() {
            bail!("{BUILD_DIR_VARIABLE}={dir} is relative; give an absolute path, since checkouts sharing it sit in different places");
        }
        return Ok(dir);
    }
    Ok(metadata
        .build_directory
        .clone()
        .unwrap_or_else(|| metadata.target_directory.clone()))
}

fn default_branch() -> String {
    "main".into()
}

/// `[workspace.metadata.release.toolchains.<triple>]`: an explicit toolchain
/// or linker for one target.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ToolchainConfig {
    pub rustc: Option<String>,
    pub cargo: Option<String>,
    pub linker: Option<String>,
}

fn default_platforms() -> Vec<String> {
    vec!["linux/amd64".into(), "linux/arm64".into()]
}

fn default_server() -> String {
    "server".into()
}

impl Config {
    pub fn load() -> Result<Config> {
        let metadata = cargo_env::metadata(cargo_metadata::MetadataCommand::new().no_deps())
            .context("cannot run `cargo metadata`; run this from inside the workspace")?;
        Config::from_metadata(&metadata)
    }

    pub fn from_metadata(metadata: &cargo_metadata::Metadata) -> Result<Config> {
        let release = metadata.workspace_metadata.get("release").context(
            "Cargo.toml has no [workspace.metadata.release] table; add one with `image` and `base`",
        )?;
        let raw: RawRelease = serde_json::from_value(release.clone())
            .context("invalid [workspace.metadata.release] in Cargo.toml")?;
        let package = metadata
            .packages
            .iter()
            .find(|p| p.name.as_str() == raw.package)
            .with_context(|| {
                format!(
                    "package `{}` named in [workspace.metadata.release] is not in the workspace",
                    raw.package
                )
            })?;
        let platforms = raw
            .platforms
            .iter()
            .map(|p| p.parse())
            .collect::<Result<Vec<Platform>>>()?;
        if platforms.is_empty() {
            bail!("[workspace.metadata.release] platforms is empty; list at least one, such as \"linux/amd64\"");
        }
        let base_digest = (!raw.base_digest.is_empty()).then_some(raw.base_digest);
        if let Some(digest) = &base_digest {
            if !is_digest(digest) {
                bail!("[workspace.metadata.release] base-digest {digest:?} is not a sha256:<64 hex> digest; fix it or leave it empty");
            }
        }
        Ok(Config {
            workspace_root: metadata.workspace_root.clone(),
            target_dir: metadata.target_directory.clone(),
            build_dir: build_dir(metadata)?,
            image: raw.image,
            platforms,
            base: raw.base,
            base_digest,
            binary: raw.binary,
            version: package.version.clone(),
            description: package.description.clone().unwrap_or_default(),
            license: package.license.clone().unwrap_or_default(),
            repository: package.repository.clone().unwrap_or_default(),
            package: raw.package,
            toolchains: raw.toolchains,
            default_branch: raw.default_branch,
            chart: raw.chart,
            audit: raw.audit.checked()?,
            sigstore: raw.sigstore,
        })
    }

    /// Whether dist must name the build directory to cargo: only when it is
    /// not the one cargo would pick.
    pub fn shares_build_dir(&self) -> bool {
        std::env::var_os(BUILD_DIR_VARIABLE).is_some()
    }

    pub fn dist_dir(&self) -> Utf8PathBuf {
        self.target_dir.join("dist")
    }

    pub fn manifest_path(&self) -> Utf8PathBuf {
        self.workspace_root.join("Cargo.toml")
    }

    pub fn package_manifest(&self) -> Utf8PathBuf {
        self.workspace_root.join(&self.package).join("Cargo.toml")
    }

    pub fn relative<'a>(&self, path: &'a Utf8Path) -> &'a Utf8Path {
        path.strip_prefix(&self.workspace_root).unwrap_or(path)
    }
}

/// What the audit does with each kind of advisory, and the advisories it
/// ignores, each for a reason and until a date.
#[derive(Debug, Clone)]
pub struct AuditPolicy {
    pub deny: Vec<AdvisoryKind>,
    pub warn: Vec<AdvisoryKind>,
    pub ignore: Vec<IgnoreEntry>,
}

/// The table as written: without `warn`, every kind not denied warns.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawAudit {
    #[serde(default = "default_deny")]
    deny: Vec<AdvisoryKind>,
    warn: Option<Vec<AdvisoryKind>>,
    #[serde(default)]
    ignore: Vec<IgnoreEntry>,
}

/// The kinds cargo-audit reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdvisoryKind {
    Vulnerability,
    Unmaintained,
    Unsound,
    Yanked,
}

impl fmt::Display for AdvisoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AdvisoryKind::Vulnerability => "vulnerability",
            AdvisoryKind::Unmaintained => "unmaintained",
            AdvisoryKind::Unsound => "unsound",
            AdvisoryKind::Yanked => "yanked",
        })
    }
}

/// One ignored advisory. The reason is mandatory so that every exception
/// can be reviewed, and the expiry makes each one a decision to renew.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct IgnoreEntry {
    pub id: String,
    #[serde(default)]
    pub reason: String,
    /// YYYY-MM-DD: the last day the entry applies.
    pub expires: String,
}

fn default_deny() -> Vec<AdvisoryKind> {
    vec![AdvisoryKind::Vulnerability]
}

fn default_warn() -> Vec<AdvisoryKind> {
    vec![
        AdvisoryKind::Unmaintained,
        AdvisoryKind::Unsound,
        AdvisoryKind::Yanked,
    ]
}

impl Default for AuditPolicy {
    fn default() -> AuditPolicy {
        AuditPolicy {
            deny: default_deny(),
            warn: default_warn(),
            ignore: Vec::new(),
        }
    }
}

impl Default for RawAudit {
    /// No table at all: the same as an empty one.
    fn default() -> RawAudit {
        RawAudit {
            deny: default_deny(),
            warn: None,
            ignore: Vec::new(),
        }
    }
}

impl RawAudit {
    fn checked(self) -> Result<AuditPolicy> {
        let warn = match self.warn {
            Some(warn) => warn,
            None => default_warn()
                .into_iter()
                .filter(|k| !self.deny.contains(k))
                .collect(),
        };
        AuditPolicy {
            deny: self.deny,
            warn,
            ignore: self.ignore,
        }
        .checked()
    }
}

impl AuditPolicy {
    fn checked(self) -> Result<AuditPolicy> {
        const TABLE: &str = "[workspace.metadata.release.audit]";
        if let Some(kind) = self.deny.iter().find(|k| self.warn.contains(k)) {
            bail!("{TABLE} lists {kind} in both deny and warn; keep it in one");
        }
        for entry in &self.ignore {
            if entry.reason.trim().is_empty() {
                bail!(
                    "{TABLE} ignores {} without a reason; add reason = \"why it does not apply\"",
                    entry.id
                );
            }
            if parse_date(&entry.expires).is_none() {
                bail!(
                    "{TABLE} ignores {} until {:?}, which is not a YYYY-MM-DD date; fix expires",
                    entry.id,
                    entry.expires
                );
            }
        }
        Ok(self)
    }

    /// What the policy does with `kind`: deny, or only warn.
    pub fn denies(&self, kind: AdvisoryKind) -> bool {
        self.deny.contains(&kind)
    }
}

/// Every key `[workspace.metadata.release]` accepts, as dotted paths such
/// as `chart.publish`, `toolchains.<triple>.linker` and
/// `audit.ignore[].expires`, read from the serde structs themselves so that
/// docs/release-configuration.md cannot drift from them.
pub fn accepted_keys() -> Vec<String> {
    let mut keys = Vec::new();
    for field in fields_of::<RawRelease>() {
        let nested: Vec<String> = match field {
            "toolchains" => prefixed("toolchains.<triple>.", fields_of::<ToolchainConfig>()),
            "chart" => prefixed("chart.", fields_of::<ChartConfig>()),
            "sigstore" => prefixed("sigstore.", fields_of::<SigstoreConfig>()),
            "audit" => fields_of::<RawAudit>()
                .into_iter()
                .flat_map(|f| match f {
                    "ignore" => prefixed("audit.ignore[].", fields_of::<IgnoreEntry>()),
                    other => vec![format!("audit.{other}")],
                })
                .collect(),
            other => vec![other.to_owned()],
        };
        keys.extend(nested);
    }
    keys
}

fn prefixed(prefix: &str, fields: Vec<&str>) -> Vec<String> {
    fields.into_iter().map(|f| format!("{prefix}{f}")).collect()
}

/// The field names serde derived for `T`, as it passes them to
/// `deserialize_struct`: a deserializer that records them and stops.
fn fields_of<'de, T: Deserialize<'de>>() -> Vec<&'static str> {
    struct Recorder<'a>(&'a mut Vec<&'static str>);
    impl<'de> serde::Deserializer<'de> for Recorder<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: serde::de::Visitor<'de>>(
            self,
            _: V,
        ) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("only records field names"))
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.extend_from_slice(fields);
            Err(serde::de::Error::custom("only records field names"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields = Vec::new();
    // The error is the point: the recorder stops once it has the names.
    let _ = T::deserialize(Recorder(&mut fields));
    fields
}

/// `YYYY-MM-DD` as (year, month, day), if it is one.
pub fn parse_date(text: &str) -> Option<(i32, u32, u32)> {
    let mut parts = text.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let date = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    ((1..=12).contains(&date.1) && (1..=31).contains(&date.2)).then_some(date)
}

pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// An OCI platform such as `linux/arm64`, with its Rust target triple.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub arch: String,
}

impl Platform {
    pub fn triple(&self) -> &'static str {
        match self.arch.as_str() {
            "amd64" => "x86_64-unknown-linux-gnu",
            "arm64" => "aarch64-unknown-linux-gnu",
            _ => unreachable!("checked when parsed"),
        }
    }

    /// The architecture as QEMU, ELF and `uname -m` name it.
    pub fn machine(&self) -> &'static str {
        match self.arch.as_str() {
            "amd64" => "x86_64",
            "arm64" => "aarch64",
            _ => unreachable!("checked when parsed"),
        }
    }

    /// `linux-arm64`, for file names.
    pub fn slug(&self) -> String {
        format!("{}-{}", self.os, self.arch)
    }

    pub fn is_host(&self) -> bool {
        std::env::consts::ARCH == self.machine() && std::env::consts::OS == self.os
    }
}

impl FromStr for Platform {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Platform> {
        match s {
            "linux/amd64" | "linux/arm64" => {
                let (os, arch) = s.split_once('/').unwrap_or_default();
                Ok(Platform {
                    os: os.into(),
                    arch: arch.into(),
                })
            }
            _ => bail!(
                "unsupported platform {s:?}; supported platforms are linux/amd64 and linux/arm64"
            ),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(value: serde_json::Value) -> Result<AuditPolicy> {
        let raw: RawAudit = serde_json::from_value(value)?;
        raw.checked()
    }

    #[test]
    fn the_accepted_keys_come_from_the_structs() {
        let keys = accepted_keys();
        for key in [
            "image",
            "base-digest",
            "toolchains.<triple>.linker",
            "chart.publish",
            "audit.warn",
            "audit.ignore[].expires",
        ] {
            assert!(keys.contains(&key.to_owned()), "{key} in {keys:?}");
        }
        assert!(!keys.contains(&"chart".to_owned()), "tables are not keys");
    }

    #[test]
    fn no_audit_table_denies_vulnerabilities() {
        let policy = RawAudit::default().checked().unwrap();
        assert!(policy.denies(AdvisoryKind::Vulnerability));
        assert_eq!(policy.warn.len(), 3);
    }

    #[test]
    fn an_audit_policy_needs_reasons_dates_and_known_fields() {
        let ok = policy(serde_json::json!({
            "deny": ["vulnerability", "unsound"],
            "ignore": [{"id": "RUSTSEC-2026-0001", "reason": "unused", "expires": "2027-01-31"}],
        }))
        .unwrap();
        assert!(ok.denies(AdvisoryKind::Unsound));
        assert!(!ok.denies(AdvisoryKind::Yanked));

        let no_reason = policy(serde_json::json!({
            "ignore": [{"id": "RUSTSEC-2026-0001", "expires": "2027-01-31"}],
        }))
        .unwrap_err()
        .to_string();
        assert!(
            no_reason.contains("ignores RUSTSEC-2026-0001 without a reason"),
            "{no_reason}"
        );

        let bad_date = policy(serde_json::json!({
            "ignore": [{"id": "RUSTSEC-2026-0001", "reason": "unused", "expires": "next year"}],
        }))
        .unwrap_err()
        .to_string();
        assert!(bad_date.contains("not a YYYY-MM-DD date"), "{bad_date}");

        let both = policy(serde_json::json!({"deny": ["yanked"], "warn": ["yanked"]}))
            .unwrap_err()
            .to_string();
        assert!(
            both.contains("lists yanked in both deny and warn"),
            "{both}"
        );

        assert!(policy(serde_json::json!({"denied": ["yanked"]})).is_err());
        assert!(policy(serde_json::json!({"deny": ["typo"]})).is_err());
    }
}
