//! The image task: build the layout, then (with --push) push it by digest
//! and move the tags, exact first and floating last.

use std::cell::RefCell;

use anyhow::{Context, Result};
use camino::Utf8PathBuf;
use serde_json::json;

use crate::buildx::{self, BuildxOptions};
use crate::config::{Config, Platform};
use crate::dist;
use crate::flags::{self, BuildRef, Builder};
use crate::image::{self, Base, BaseFetcher, Built, Options};
use crate::oci::{self, Index, Layout, Manifest};
use crate::progress::Steps;
use crate::push::{self, PushReport, TagChange};
use crate::registry::{Client, Reference};
use crate::source::Source;
use crate::{subtask, tags};

pub fn run_image(flags: &flags::Image) -> Result<()> {
    let config = Config::load()?;
    let platforms = dist::select_platforms(&config, &flags.platforms)?;
    let (repo, target) = repository(&config, &flags.registry)?;
    let base = base_or_configured(&config, flags.base.as_deref());
    let version = config.version.to_string();
    let out = flags
        .out
        .clone()
        .unwrap_or_else(|| config.target_dir.join("image/oci"));

    if flags.builder == Builder::Buildx {
        return run_buildx(&config, flags, &platforms, &base, &version, &target, &out);
    }

    let client = if flags.push || needs_registry(&base) {
        Some(Client::new(&target.host, flags.registry.insecure)?)
    } else {
        None
    };
    let mut steps = Steps::new(if flags.push {
        5 + usize::from(flags.sign)
    } else {
        2
    });
    let tag_plan = if flags.push && !flags.no_tags {
        let client = client
            .as_ref()
            .context("a registry client is needed to push")?;
        let source = Source::detect(&config.workspace_root)?;
        steps.run("compute tags", || {
            tags::plan_for_build(&config, &flags.build, &source, &target, client)
        })?
    } else {
        Vec::new()
    };

    if flags.dry_run {
        println!("plan for {repo}:");
        println!(
            "  build {} on {base} into {out}",
            platforms
                .iter()
                .map(Platform::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        print_publish_plan(flags, &repo, &tag_plan);
        return Ok(());
    }

    let fetcher = RegistryFetcher::new(flags.registry.insecure);
    let options = Options {
        platforms,
        base: base.clone(),
        out,
        version: &version,
        fetcher: &fetcher,
    };
    let (_, built) = steps.run("build the image", || image::build(&config, &options))?;
    for warning in fetcher.warnings.borrow().iter() {
        eprintln!("warning: {warning}");
    }

    let (report, changes) = match (flags.push, client.as_ref()) {
        (true, Some(client)) => publish(
            &config, flags, client, &target, &base, &built, &tag_plan, &mut steps,
        )?,
        _ => Default::default(),
    };
    print_result(flags.json, &repo, &built, &report, &changes);
    Ok(())
}

fn print_result(
    as_json: bool,
    repo: &str,
    built: &Built,
    report: &PushReport,
    changes: &[TagChange],
) {
    let tags: Vec<&str> = changes.iter().map(|c| c.tag.as_str()).collect();
    if as_json {
        let platforms: Vec<_> = built
            .platforms
            .iter()
            .map(|p| json!({"platform": p.platform, "digest": p.digest}))
            .collect();
        println!(
            "{}",
            json!({
                "image": repo,
                "digest": built.digest,
                "platforms": platforms,
                "tags": tags,
                "layout": built.layout,
                "push": report,
                "tag_changes": changes,
            })
        );
        return;
    }
    println!("{}", built.digest);
    for platform in &built.platforms {
        eprintln!(
            "  {}  {}  ({} bytes compressed)",
            platform.platform, platform.digest, platform.size
        );
    }
    for change in changes {
        let before = change.before.as_deref().unwrap_or("nothing");
        eprintln!("  {repo}:{} -> {} (was {before})", change.tag, change.after);
    }
    if !changes.is_empty() {
        eprintln!(
            "  pushed {} blobs, mounted {}, skipped {} already present",
            report.uploaded.len(),
            report.mounted.len(),
            report.skipped.len()
        );
        eprintln!(
            "verify with: cargo xtask verify {repo}@{} --key cosign.pub",
            built.digest
        );
    }
}

fn run_buildx(
    config: &Config,
    flags: &flags::Image,
    platforms: &[Platform],
    base: &str,
    version: &str,
    target: &Reference,
    _native_out: &Utf8PathBuf,
) -> Result<()> {
    let repo = target.name();
    let out = flags
        .out
        .clone()
        .unwrap_or_else(|| buildx::default_out(config));
    buildx::check_dist_location(config)?;
    // Before anything slow, so that a machine without buildx learns it at once.
    let docker = if flags.dry_run {
        None
    } else {
        Some(buildx::find_docker_buildx()?)
    };
    let source = Source::detect(&config.workspace_root)?;
    let client = if flags.push {
        Some(Client::new(&target.host, flags.registry.insecure)?)
    } else {
        None
    };
    let mut steps = Steps::new(
        3 + if flags.push {
            3 + usize::from(!flags.no_tags) + usize::from(flags.sign)
        } else {
            0
        },
    );
    let (buildx_base, warning) = steps.run("resolve the base", || {
        buildx::resolve_base(base, flags.registry.insecure)
    })?;
    if let Some(warning) = warning {
        eprintln!("warning: {warning}");
    }
    let tag_plan = match (&client, flags.no_tags) {
        (Some(client), false) => steps.run("compute tags", || {
            tags::plan_for_build(config, &flags.build, &source, target, client)
        })?,
        _ => Vec::new(),
    };
    let options = BuildxOptions {
        platforms,
        base: &buildx_base,
        version,
        out: &out,
    };
    let args = buildx::args(config, &source, &options);

    if flags.dry_run {
        println!("plan for {repo} (builder buildx):");
        println!(
            "  build {} on {} into {out}",
            platforms
                .iter()
                .map(Platform::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            buildx::describe_base(&buildx_base)
        );
        println!(
            "  SOURCE_DATE_EPOCH={} {}",
            source.epoch,
            buildx::command_line(&args)
        );
        print_publish_plan(flags, &repo, &tag_plan);
        return Ok(());
    }
    let docker = docker.context("docker was not looked up")?;
    let docker = camino::Utf8PathBuf::from_path_buf(docker)
        .map_err(|p| anyhow::anyhow!("the docker path {} is not UTF-8", p.display()))?;

    steps.run("build the binaries", || {
        dist::build(config, platforms, flags::Strategy::Auto, true, false).map(|_| ())
    })?;
    let built = steps.run("docker buildx build", || {
        buildx::build(&docker, config, &source, &options)?;
        buildx::built_from_layout(&Layout::open(&out)?, &buildx_base)
    })?;

    // The same publication as the native builder.
    let (report, changes) = match client.as_ref() {
        Some(client) => publish(
            config, flags, client, target, base, &built, &tag_plan, &mut steps,
        )?,
        None => Default::default(),
    };
    print_result(flags.json, &repo, &built, &report, &changes);
    Ok(())
}

/// Publishes a built layout: tags checked before any write (a refused
/// immutable tag leaves the registry as it was), the layout pushed by
/// digest, with --sign signed by digest, and the tags moved last.
#[allow(clippy::too_many_arguments)]
fn publish(
    config: &Config,
    flags: &flags::Image,
    client: &Client,
    target: &Reference,
    base: &str,
    built: &Built,
    tag_plan: &[(String, bool)],
    steps: &mut Steps,
) -> Result<(PushReport, Vec<TagChange>)> {
    let repository = &target.repository;
    steps.run("check tags", || {
        push::plan_tags(client, repository, tag_plan, &built.digest, flags.force).map(|_| ())
    })?;
    let mount_from = Reference::parse(base)
        .ok()
        .filter(|b| b.host == target.host)
        .map(|b| b.repository);
    let report = steps.run("push by digest", || {
        push::push_layout(
            client,
            repository,
            &Layout::open(&built.layout)?,
            &built.digest,
            mount_from.as_deref(),
        )
    })?;
    if flags.sign {
        let reference = format!("{}@{}", target.name(), built.digest);
        let args =
            subtask::signing_args("sign", &reference, &flags.signing, flags.registry.insecure);
        steps.run("sign by digest", || {
            subtask::run(&config.workspace_root, &args)
        })?;
    }
    let changes = steps.run("move tags", || {
        let changes = push::plan_tags(client, repository, tag_plan, &built.digest, flags.force)?;
        let index = Layout::open(&built.layout)?.read_blob(&built.digest)?;
        push::apply_tags(client, repository, &changes, &index)?;
        Ok(changes)
    })?;
    Ok((report, changes))
}

/// What `--push` would do after the build, for the dry run.
fn print_publish_plan(flags: &flags::Image, repo: &str, tag_plan: &[(String, bool)]) {
    if !flags.push {
        return;
    }
    println!("  push blobs, platform manifests and the index by digest to {repo}");
    if flags.sign {
        let args = subtask::signing_args(
            "sign",
            &format!("{repo}@<index digest>"),
            &flags.signing,
            flags.registry.insecure,
        );
        println!("  cargo xtask {}", args.join(" "));
    }
    for (tag, immutable) in tag_plan {
        println!(
            "  tag {repo}:{tag}{}",
            if *immutable { " (immutable)" } else { "" }
        );
    }
}

/// The repository to push to: `--image`, else the configured one.
pub fn repository(config: &Config, registry: &flags::RegistryArgs) -> Result<(String, Reference)> {
    let repo = registry
        .image
        .clone()
        .unwrap_or_else(|| config.image.clone());
    let target = Reference::parse(&repo)?;
    Ok((repo, target))
}

/// `--base`, else the configured base (pinned when the config pins it).
pub fn base_or_configured(config: &Config, base: Option<&str>) -> String {
    base.map_or_else(|| configured_base(config), str::to_owned)
}

/// The configured base, pinned to its digest when the config has one.
pub fn configured_base(config: &Config) -> String {
    match &config.base_digest {
        Some(digest) => format!(
            "{}@{digest}",
            config.base.split('@').next().unwrap_or(&config.base)
        ),
        None => config.base.clone(),
    }
}

fn needs_registry(base: &str) -> bool {
    matches!(
        image::BaseSource::parse(base),
        image::BaseSource::Registry(_)
    )
}

/// Fetches a registry base, resolving its tag once per build.
pub struct RegistryFetcher {
    insecure: bool,
    resolved: RefCell<Option<(String, String, Vec<u8>)>>,
    pub warnings: RefCell<Vec<String>>,
}

impl RegistryFetcher {
    pub fn new(insecure: bool) -> RegistryFetcher {
        RegistryFetcher {
            insecure,
            resolved: RefCell::new(None),
            warnings: RefCell::new(Vec::new()),
        }
    }
}

impl BaseFetcher for RegistryFetcher {
    fn fetch(&self, reference: &str, platform: &Platform, layout: &Layout) -> Result<Base> {
        let parsed = Reference::parse(reference)?;
        let client = Client::new(
            &parsed.host,
            self.insecure && crate::registry::is_loopback(&parsed.host),
        )?;
        let repository = &parsed.repository;
        if self
            .resolved
            .borrow()
            .as_ref()
            .is_none_or(|(r, _, _)| r != reference)
        {
            let (media_type, bytes) = client
                .get_manifest(repository, parsed.reference())?
                .with_context(|| format!("the base image {reference} does not exist"))?;
            let digest = oci::digest_of(&bytes);
            if parsed.digest.is_none() {
                self.warnings.borrow_mut().push(format!(
                    "the base {reference} is not pinned; this build used {digest}. Pin it with base-digest = \"{digest}\" in [workspace.metadata.release]"
                ));
            }
            *self.resolved.borrow_mut() = Some((reference.to_owned(), media_type, bytes));
        }
        let resolved = self.resolved.borrow();
        let (_, media_type, bytes) = resolved.as_ref().context("the base was not resolved")?;
        let top_digest = oci::digest_of(bytes);
        let manifest_bytes = if oci::is_index(media_type) {
            let index: Index =
                serde_json::from_slice(bytes).context("the base index is invalid")?;
            let entry = image::select_platform(&index, platform)
                .with_context(|| format!("the base {reference} has no {platform} image"))?;
            client
                .get_manifest(repository, &entry.digest)?
                .with_context(|| {
                    format!(
                        "the base {reference} lists {} but the registry does not have it",
                        entry.digest
                    )
                })?
                .1
        } else {
            bytes.clone()
        };
        let manifest: Manifest =
            serde_json::from_slice(&manifest_bytes).context("the base manifest is invalid")?;
        let config: serde_json::Value =
            serde_json::from_slice(&client.get_blob(repository, &manifest.config.digest)?)
                .context("the base config is not JSON")?;
        image::check_base_platform(&config, platform, reference)?;
        for layer in &manifest.layers {
            if !layout.has_blob(&layer.digest) {
                layout.write_blob(
                    &layer.media_type,
                    &client.get_blob(repository, &layer.digest)?,
                )?;
            }
        }
        let name = match &parsed.tag {
            Some(tag) => format!("{}:{tag}", parsed.name()),
            None => parsed.name(),
        };
        Ok(Base {
            name,
            digest: Some(top_digest),
            platform_digest: Some(oci::digest_of(&manifest_bytes)),
            config,
            layers: manifest
                .layers
                .into_iter()
                .map(image::normalize_layer)
                .collect(),
        })
    }
}

/// Which build the flags describe, for messages.
pub fn describe(build: &BuildRef) -> String {
    match (&build.version, &build.branch, build.pr) {
        (Some(v), _, _) => format!("release {v}"),
        (_, Some(b), _) => format!("branch {b}"),
        (_, _, Some(n)) => format!("pull request {n}"),
        _ => "this checkout".to_owned(),
    }
}
