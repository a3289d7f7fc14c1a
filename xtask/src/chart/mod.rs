//! `cargo xtask chart`: packages deploy/helm/server with the release's
//! version and the image digest written into its default values, and with
//! --push publishes it as an OCI artifact by digest, signs that digest with
//! cosign, and only then sets the chart's version tag.
//!
//! The .tgz is written here with the deterministic tar writer rather than
//! by `helm package`, whose archive carries the packaging time: the same
//! chart, release and digest give the same bytes, hence the same OCI digest
//! and the same signature subject on every re-run.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Serialize;

use crate::flags;
use crate::oci::client::{Client, Reference};
use crate::oci::{self, push, Descriptor, Manifest};
use crate::supply_chain::cosign::{self, Cosign, SigningArgs};
use crate::supply_chain::identity::{self, Identity, WorkflowIdentity};
use crate::supply_chain::sigstore::Instance;
use crate::support::archive::{self, Entry};
use crate::support::config::{is_digest, Config};
use crate::support::progress::{Nest, Steps};
use crate::support::source::{rfc3339_utc, Source};

mod verify;

pub use verify::{verify_chart, ChartVerification};

/// The chart's sources, relative to the workspace root.
pub const CHART_DIR: &str = "deploy/helm/server";
/// The chart's name: its Chart.yaml's, the last component of its repository.
pub const CHART_NAME: &str = "server";
/// The media types `helm push` writes and `helm pull` expects.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.cncf.helm.config.v1+json";
pub const CONTENT_MEDIA_TYPE: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";

/// What to package and where to publish it.
#[derive(Debug, Clone)]
pub struct ChartOptions {
    /// The release, such as v1.2.3: the chart's appVersion; without the `v`,
    /// its version and its OCI tag (Helm's versions are bare SemVer).
    pub release: String,
    /// The image repository the chart runs, without tag or digest.
    pub image: String,
    /// The released index digest, written into the default values.
    pub image_digest: String,
    /// Where the chart goes: host/…/charts/server.
    pub repository: String,
    pub push: bool,
    pub signing: SigningArgs,
    pub insecure: bool,
    pub dry_run: bool,
    /// The directory the .tgz is written to.
    pub out: Utf8PathBuf,
}

/// What `chart --json` prints and what release reports.
#[derive(Debug, Clone, Serialize)]
pub struct Chart {
    pub name: String,
    pub version: String,
    pub app_version: String,
    /// The image the default values run: REPOSITORY@sha256:….
    pub image: String,
    pub file: Utf8PathBuf,
    /// The sha256 of the .tgz, which is also the OCI layer's digest.
    pub sha256: String,
    /// oci://host/…/charts/server.
    pub repository: String,
    /// The chart's OCI manifest digest: what is signed. None until pushed.
    pub digest: Option<String>,
    /// The commands that check the published chart.
    pub verify: Vec<String>,
}

pub fn run(flags: &flags::Chart) -> Result<()> {
    let config = Config::load()?;
    let release = match &flags.version {
        Some(version) => version.clone(),
        None => format!("v{}", config.version),
    };
    let image = flags.registry.image.clone().unwrap_or(config.image.clone());
    let image_digest = flags.image_digest.clone().with_context(|| {
        format!("cannot package the chart: no image digest; pass --image-digest sha256:… (the index digest `cargo xtask image --push --json` or `release` printed for {image})")
    })?;
    let options = ChartOptions {
        release,
        repository: repository(
            &config,
            flags.repository.as_deref(),
            flags.registry.image.as_deref(),
        ),
        image,
        image_digest,
        push: flags.push,
        signing: flags.signing.clone(),
        insecure: flags.registry.transport.insecure,
        dry_run: flags.dry_run,
        out: flags
            .out
            .clone()
            .unwrap_or_else(|| config.target_dir.join("chart")),
    };
    let chart = chart(&config, &options, &Nest::top())?;
    // A dry run's plan is its output: there is no package to name.
    if flags.dry_run {
        return Ok(());
    }
    if flags.json {
        println!("{}", serde_json::to_string_pretty(&chart)?);
        return Ok(());
    }
    match &chart.digest {
        Some(digest) => println!("{}@{digest}", chart.repository),
        None => println!("{}", chart.file),
    }
    for command in &chart.verify {
        eprintln!("verify with: {command}");
    }
    Ok(())
}

/// Where the chart goes: --repository; else next to an --image given on the
/// command line (a test or a mirror, not the configured registry); else the
/// configured chart repository; else next to the configured image.
pub fn repository(config: &Config, flag: Option<&str>, image: Option<&str>) -> String {
    match (flag, image) {
        (Some(repository), _) => repository.to_owned(),
        (None, Some(image)) => default_repository(image),
        (None, None) if !config.chart.repository.is_empty() => config.chart.repository.clone(),
        (None, None) => default_repository(&config.image),
    }
}

/// `host/owner/charts/server` for the image `host/owner/name`: the charts
/// live next to the image, under a path Helm users expect.
pub fn default_repository(image: &str) -> String {
    match image.rsplit_once('/') {
        Some((parent, _)) => format!("{parent}/charts/{CHART_NAME}"),
        None => format!("charts/{CHART_NAME}"),
    }
}

/// Packages the chart and, with `push`, publishes and signs it. A dry run
/// prints the plan and packages nothing.
pub fn chart(config: &Config, options: &ChartOptions, nest: &Nest) -> Result<Chart> {
    if !is_digest(&options.image_digest) {
        bail!(
            "cannot package the chart: {:?} is not a sha256:<64 hex> digest; pass the image index digest",
            options.image_digest
        );
    }
    let version = options.release.trim_start_matches('v').to_owned();
    semver::Version::parse(&version).with_context(|| {
        format!(
            "cannot package the chart: {} is not a release version; pass vX.Y.Z",
            options.release
        )
    })?;
    let reference = Reference::parse(&format!("{}:{version}", options.repository))
        .with_context(|| format!("cannot publish the chart to {}", options.repository))?;
    let mut chart = Chart {
        name: CHART_NAME.to_owned(),
        app_version: options.release.clone(),
        image: format!("{}@{}", options.image, options.image_digest),
        file: options.out.join(format!("{CHART_NAME}-{version}.tgz")),
        sha256: String::new(),
        repository: format!("oci://{}", reference.name()),
        digest: None,
        verify: Vec::new(),
        version,
    };
    if options.dry_run {
        println!("# plan: package {CHART_DIR} as {}", chart.file);
        println!(
            "#   version {}, appVersion {}",
            chart.version, chart.app_version
        );
        println!("#   default image {}", chart.image);
        if options.push {
            println!(
                "# push to {}:{} by digest, sign that digest with cosign, then set the tag",
                reference.name(),
                chart.version
            );
        }
        return Ok(chart);
    }
    let mut steps = Steps::within(nest, if options.push { 3 } else { 1 });
    let source = Source::detect(&config.workspace_root)?;
    let packaged = steps.run("package the chart", || {
        package(config, options, &chart, source.epoch)
    })?;
    chart.sha256 = archive::sha256_hex(&packaged.tgz);
    if !options.push {
        return Ok(chart);
    }
    let client = Client::new(&reference.host, options.insecure)?;
    let repo = reference.repository.as_str();
    // Read before anything is pushed: a version tag names one chart forever.
    check_tag(
        &client,
        &reference,
        &chart.version,
        &packaged.manifest_digest,
    )?;
    steps.run("push the chart by digest", || {
        let blobs: BTreeMap<String, Vec<u8>> = [
            (packaged.manifest_digest.clone(), packaged.manifest.clone()),
            (oci::digest_of(&packaged.config), packaged.config.clone()),
            (oci::digest_of(&packaged.tgz), packaged.tgz.clone()),
        ]
        .into_iter()
        .collect();
        push::push_tree(
            &client,
            repo,
            &blobs,
            &packaged.manifest_digest,
            oci::MANIFEST,
            None,
        )
        .map(drop)
    })?;
    let by_digest = format!("{}@{}", reference.name(), packaged.manifest_digest);
    let verify_options = steps.run("sign the chart by digest", || {
        sign(config, options, &by_digest)
    })?;
    // The tag last, after the signature: `helm pull --version` never finds
    // an unsigned chart.
    check_tag(
        &client,
        &reference,
        &chart.version,
        &packaged.manifest_digest,
    )?;
    client
        .put_manifest(repo, &chart.version, oci::MANIFEST, &packaged.manifest)
        .with_context(|| {
            format!(
                "cannot set tag {}:{}; re-run to retry, the chart is pushed and signed by digest",
                reference.name(),
                chart.version
            )
        })?;
    chart.verify = vec![
        cosign::display(&verify_options.verify(&by_digest)?),
        format!(
            "helm pull {} --version {}{}",
            chart.repository,
            chart.version,
            if options.insecure {
                " --plain-http"
            } else {
                ""
            }
        ),
    ];
    chart.digest = Some(packaged.manifest_digest);
    Ok(chart)
}

/// The package and the OCI documents that publish it.
pub struct Packaged {
    pub tgz: Vec<u8>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
}

/// Writes the .tgz: every file of the chart under `server/`, sorted, owned
/// by 0:0, with the source's time, and Chart.yaml and values.yaml
/// rewritten for this release.
fn package(config: &Config, options: &ChartOptions, chart: &Chart, epoch: u64) -> Result<Packaged> {
    let dir = config.workspace_root.join(CHART_DIR);
    let mut files = Vec::new();
    collect(&dir, &dir, &mut files)?;
    let mut contents = Vec::new();
    let mut chart_yaml = None;
    for relative in &files {
        let path = dir.join(relative);
        let text = std::fs::read(&path).with_context(|| format!("cannot read {path}"))?;
        let text = match relative.as_str() {
            "Chart.yaml" => {
                let text =
                    String::from_utf8(text).with_context(|| format!("{path} is not UTF-8"))?;
                let text = set_line(&text, "version:", &format!("version: {}", chart.version))
                    .and_then(|t| {
                        set_line(
                            &t,
                            "appVersion:",
                            &format!("appVersion: {:?}", chart.app_version),
                        )
                    })
                    .with_context(|| format!("cannot write the release into {path}"))?;
                chart_yaml = Some(text.clone());
                text.into_bytes()
            }
            "values.yaml" => {
                let text =
                    String::from_utf8(text).with_context(|| format!("{path} is not UTF-8"))?;
                set_line(
                    &text,
                    "  repository:",
                    &format!("  repository: {}", options.image),
                )
                .and_then(|t| {
                    set_line(
                        &t,
                        "  digest:",
                        &format!("  digest: {:?}", options.image_digest),
                    )
                })
                .with_context(|| format!("cannot write the image digest into {path}"))?
                .into_bytes()
            }
            _ => text,
        };
        contents.push((format!("{CHART_NAME}/{relative}"), text));
    }
    let chart_yaml =
        chart_yaml.with_context(|| format!("{dir} has no Chart.yaml; restore it from git"))?;
    let entries: Vec<Entry<'_>> = contents
        .iter()
        .map(|(path, data)| Entry {
            path,
            data,
            mode: 0o644,
        })
        .collect();
    let tgz = archive::tar_gz(&entries, epoch)?.gz;

    let config_json = oci::canonical_json(&metadata(&chart_yaml))?;
    let mut annotations = BTreeMap::new();
    annotations.insert(
        "org.opencontainers.image.title".to_owned(),
        CHART_NAME.to_owned(),
    );
    annotations.insert(oci::VERSION.to_owned(), chart.version.clone());
    // The source's time, not the packaging time, as for the image.
    annotations.insert(oci::CREATED.to_owned(), rfc3339_utc(epoch));
    let manifest = oci::canonical_json(&Manifest {
        schema_version: 2,
        media_type: Some(oci::MANIFEST.to_owned()),
        config: Descriptor::of(CONFIG_MEDIA_TYPE, &config_json),
        layers: vec![Descriptor::of(CONTENT_MEDIA_TYPE, &tgz)],
        annotations: Some(annotations),
    })?;
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("cannot create {}", options.out))?;
    crate::support::fs::write_atomically(&chart.file, &tgz)?;
    Ok(Packaged {
        tgz,
        config: config_json,
        manifest_digest: oci::digest_of(&manifest),
        manifest,
    })
}

/// The chart's files, relative to `root`, sorted; the packages are skipped.
fn collect(root: &Utf8Path, dir: &Utf8Path, out: &mut Vec<String>) -> Result<()> {
    let entries = dir
        .read_dir_utf8()
        .with_context(|| format!("cannot read {dir}; run from a checkout that has {CHART_DIR}"))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {dir}"))?;
        let path = entry.path();
        if path.is_dir() {
            collect(root, path, out)?;
        } else if path.extension() != Some("tgz") {
            let relative = path.strip_prefix(root).unwrap_or(path);
            out.push(relative.to_string());
        }
    }
    out.sort();
    Ok(())
}

/// Replaces the one line that starts with `prefix`; more or fewer is an
/// error, so that an edited values.yaml never gets a digest in a wrong place.
fn set_line(text: &str, prefix: &str, line: &str) -> Result<String> {
    let matching = text.lines().filter(|l| l.starts_with(prefix)).count();
    if matching != 1 {
        bail!("expected one line starting with {prefix:?}, found {matching}; keep one such line");
    }
    let mut out: String = text
        .lines()
        .map(|l| if l.starts_with(prefix) { line } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    Ok(out)
}

/// The config blob `helm push` writes: Chart.yaml's top-level scalars as
/// JSON, which `helm pull` and `helm show chart` read back.
fn metadata(chart_yaml: &str) -> BTreeMap<String, String> {
    chart_yaml
        .lines()
        .filter(|l| !l.starts_with([' ', '#', '-']))
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect()
}

/// Refuses a version tag that names another chart: a published version
/// never changes.
fn check_tag(client: &Client, reference: &Reference, version: &str, digest: &str) -> Result<()> {
    if let Some(existing) = client.manifest_digest(&reference.repository, version)? {
        if existing != digest {
            bail!(
                "cannot publish the chart: {}:{version} already points at {existing}, not {digest}; release a new version",
                reference.name()
            );
        }
    }
    Ok(())
}

/// Signs the chart's manifest digest as the image's is signed: the same
/// identity, the same offline config with --no-tlog. Returns the options
/// that verify it.
fn sign(config: &Config, options: &ChartOptions, by_digest: &str) -> Result<cosign::Options> {
    let identity = identity::signing_identity(&options.signing)?;
    identity::check_signing_key(&identity)?;
    let cosign = Cosign::find()?;
    let signing_config = if options.signing.no_tlog {
        Some(cosign::write_no_tlog_signing_config(&cosign::work_dir(
            &config.target_dir,
        ))?)
    } else {
        None
    };
    let signer = cosign::Options {
        identity: identity.clone(),
        signing_config,
        ignore_tlog: options.signing.no_tlog,
        insecure: options.insecure,
        workflow: None,
        sigstore: Instance::resolve(config, &options.signing)?,
    };
    cosign
        .run_ok(&signer.sign(by_digest))
        .with_context(|| format!("cannot sign the chart {by_digest}"))?;
    let verifier = match identity {
        Identity::Key(key) => Identity::Key(cosign::public_key_hint(&key)),
        Identity::Keyless => Identity::Keyless,
    };
    Ok(cosign::Options {
        identity: verifier,
        signing_config: None,
        // Keyless: the release's run of release.yml signed it, on its tag
        // and commit.
        workflow: crate::tags::parse_version(&options.release)
            .and_then(|version| {
                WorkflowIdentity::new(
                    &config.repository,
                    &crate::supply_chain::identity::Run::Release(version),
                    Some(&crate::support::source::Source::detect(&config.workspace_root)?.sha),
                    &signer.sigstore.oidc_issuer,
                )
            })
            .ok(),
        ..signer
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_is_replaced_and_none_or_two_refused() {
        let text = "image:\n  repository: a\n  digest: \"\"\n";
        assert_eq!(
            set_line(text, "  digest:", "  digest: \"sha256:x\"").unwrap(),
            "image:\n  repository: a\n  digest: \"sha256:x\"\n"
        );
        assert!(set_line(text, "  tag:", "x").is_err());
        assert!(set_line("a: 1\na: 2\n", "a:", "a: 3").is_err());
    }

    #[test]
    fn charts_live_next_to_the_image() {
        assert_eq!(
            default_repository("ghcr.io/fixture-org/rust-release"),
            "ghcr.io/fixture-org/charts/server"
        );
    }

    #[test]
    fn metadata_reads_top_level_scalars() {
        let meta = metadata("apiVersion: v2\nname: server\n# c\nappVersion: \"v1.2.3\"\n");
        assert_eq!(meta["appVersion"], "v1.2.3");
        assert_eq!(meta.len(), 3);
    }
}
