//! `cargo xtask image`: build the multi-arch layout (natively, or with
//! buildx), then with --push publish it: tags checked before any write, the
//! layout pushed by digest, with --sign signed by digest, and the tags moved
//! last, exact first and floating last.

use anyhow::{format_err, Context, Result};
use camino::Utf8PathBuf;
use serde::Serialize;

use crate::build::assemble::{self, Built, Options};
use crate::build::base::{self, Bases};
use crate::build::binaries::{self, DistOptions};
use crate::build::buildx::{self, BuildxOptions};
use crate::flags::{self, Builder};
use crate::oci::client::{Client, Reference};
use crate::oci::push::{self, PushReport, TagChange};
use crate::oci::{reference, Layout};
use crate::sign::{self, SignOptions};
use crate::supply_chain::cosign;
use crate::supply_chain::identity::Run;
use crate::support::config::{Config, Platform};
use crate::support::progress::Steps;
use crate::support::source::Source;
use crate::tags::Build;
use crate::{floating, tags};

/// What `image --json` prints.
#[derive(Debug, Serialize)]
pub struct ImageOutput {
    pub image: String,
    pub digest: String,
    pub platforms: Vec<PlatformOutput>,
    /// The tags set, exact first and floating last.
    pub tags: Vec<String>,
    pub layout: Utf8PathBuf,
    pub push: PushReport,
    pub tag_changes: Vec<TagChange>,
}

#[derive(Debug, Serialize)]
pub struct PlatformOutput {
    pub platform: String,
    pub digest: String,
}

pub fn run(flags: &flags::Image) -> Result<()> {
    let config = Config::load()?;
    let platforms = binaries::select_platforms(&config, &flags.platforms)?;
    let target = reference::target(&config, flags.registry.image.as_deref())?;
    let repo = target.name();
    let base = base::chosen(&config, flags.base.as_deref());
    base::check(&base, base::origin(flags.base.as_deref()))?;
    let version = config.version.to_string();
    let out = flags
        .out
        .clone()
        .unwrap_or_else(|| config.target_dir.join("image/oci"));

    if flags.builder == Builder::Buildx {
        return run_buildx(&config, flags, &platforms, &base, &version, &target);
    }

    let client = if flags.push || base::needs_registry(&base) {
        Some(Client::new(
            &target.host,
            flags.registry.transport.insecure,
        )?)
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

    let bases = Bases::new(&base, flags.registry.transport.insecure);
    let options = Options {
        platforms,
        bases: &bases,
        out,
        version: &version,
    };
    let (_, built) = steps.run("build the image", || assemble::build(&config, &options))?;

    let published = match (flags.push, client.as_ref()) {
        (true, Some(client)) => Some(publish(
            &config, flags, client, &target, &base, &built, &tag_plan, &mut steps,
        )?),
        _ => None,
    };
    finish(flags, &repo, &built, published)
}

fn print_result(
    as_json: bool,
    repo: &str,
    built: &Built,
    report: PushReport,
    changes: Vec<TagChange>,
    verify: Option<String>,
) -> Result<()> {
    if as_json {
        let output = ImageOutput {
            image: repo.to_owned(),
            digest: built.digest.clone(),
            platforms: built
                .platforms
                .iter()
                .map(|p| PlatformOutput {
                    platform: p.platform.clone(),
                    digest: p.digest.clone(),
                })
                .collect(),
            tags: changes.iter().map(|c| c.tag.clone()).collect(),
            layout: built.layout.clone(),
            push: report,
            tag_changes: changes,
        };
        println!("{}", serde_json::to_string(&output)?);
        return Ok(());
    }
    println!("{}", built.digest);
    for platform in &built.platforms {
        eprintln!(
            "  {}  {}  ({} bytes compressed)",
            platform.platform, platform.digest, platform.size
        );
    }
    for change in &changes {
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
    }
    if let Some(verify) = verify {
        eprintln!("verify with: {verify}");
    }
    Ok(())
}

fn run_buildx(
    config: &Config,
    flags: &flags::Image,
    platforms: &[Platform],
    base: &str,
    version: &str,
    target: &Reference,
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
        Some(Client::new(
            &target.host,
            flags.registry.transport.insecure,
        )?)
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
        buildx::resolve_base(base, flags.registry.transport.insecure)
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
    let docker = Utf8PathBuf::from_path_buf(docker)
        .map_err(|p| format_err!("the docker path {} is not UTF-8", p.display()))?;

    steps.run("build the binaries", || {
        binaries::build(config, platforms, DistOptions::verified()).map(|_| ())
    })?;
    let built = steps.run("docker buildx build", || {
        buildx::build(&docker, config, &source, &options)?;
        buildx::built_from_layout(&Layout::open(&out)?, &buildx_base)
    })?;

    // The same publication as the native builder.
    let published = match client.as_ref() {
        Some(client) => Some(publish(
            config, flags, client, target, base, &built, &tag_plan, &mut steps,
        )?),
        None => None,
    };
    finish(flags, &repo, &built, published)
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
) -> Result<Published> {
    let repository = &target.repository;
    steps.run("check tags", || {
        push::plan_tags(client, repository, tag_plan, &built.digest, flags.force).map(|_| ())
    })?;
    let mount_from = Reference::parse(base)
        .ok()
        .filter(|b| b.host == target.host)
        .map(|b| b.repository);
    let layout = Layout::open(&built.layout)?;
    let report = steps.run("push by digest", || {
        push::push_layout(
            client,
            repository,
            &layout,
            &built.digest,
            mount_from.as_deref(),
        )
    })?;
    let mut verify = None;
    if flags.sign {
        let options = SignOptions {
            reference: format!("{}@{}", target.name(), built.digest),
            signing: flags.signing.clone(),
            insecure: flags.registry.transport.insecure,
            dry_run: false,
        };
        let signed = steps.run_nested("sign by digest", |nest| {
            sign::sign(config, &options, nest).map_err(|err| subtask_failed("sign", &options, err))
        })?;
        // Keyless, ci.yml signed it on this branch or pull request (or
        // release.yml on the version's tag), which verify must be told.
        let keyless_build = match flags.signing.key {
            None => tags::resolve_build(config, &flags.build).ok().map(|b| b.0),
            Some(_) => None,
        };
        verify = signed.map(|s| match keyless_build {
            Some(build) => format!("{}{}", s.verify, signed_by(&build).verify_flags()),
            None => s.verify,
        });
    }
    // As the tag plan was computed: only a release's floating tags have
    // an order to keep.
    let build = match tag_plan.is_empty() {
        true => None,
        false => Some(tags::resolve_build(config, &flags.build)?.0),
    };
    let changes = steps.run("move tags", || {
        push::move_tags(
            client,
            repository,
            tag_plan,
            &layout.read_blob(&built.digest)?,
            &built.digest,
            flags.force,
            &|tag, published| {
                let build = build.as_ref()?;
                floating::newer_release(build, tag, published)
            },
        )
        .map(|moved| moved.changes)
    })?;
    Ok(Published {
        report,
        changes,
        verify,
    })
}

/// The workflow run that signs `build` keyless.
fn signed_by(build: &Build) -> Run {
    match build {
        Build::Release(version) => Run::Release(version.clone()),
        Build::Branch { name, .. } => Run::Branch(name.clone()),
        Build::PullRequest(number) => Run::PullRequest(*number),
    }
}

/// What a push did.
struct Published {
    report: PushReport,
    changes: Vec<TagChange>,
    /// How to verify the signatures, when the image was signed.
    verify: Option<String>,
}

fn finish(
    flags: &flags::Image,
    repo: &str,
    built: &Built,
    published: Option<Published>,
) -> Result<()> {
    let (report, changes, verify) = match published {
        Some(p) => (p.report, p.changes, p.verify),
        None => Default::default(),
    };
    print_result(flags.json, repo, built, report, changes, verify)
}

/// A signing step inside another task failed: its own error is shown as it
/// would be alone, and the task fails naming the command that retries it.
pub fn subtask_failed(task: &str, options: &SignOptions, err: anyhow::Error) -> anyhow::Error {
    eprintln!("error: {err:#}");
    format_err!(
        "`{}` failed",
        cosign::xtask_signing_command(task, &options.reference, &options.signing, options.insecure)
    )
}

/// What `--push` would do after the build, for the dry run.
fn print_publish_plan(flags: &flags::Image, repo: &str, tag_plan: &[(String, bool)]) {
    if !flags.push {
        return;
    }
    println!("  push blobs, platform manifests and the index by digest to {repo}");
    if flags.sign {
        println!(
            "  {}",
            cosign::xtask_signing_command(
                "sign",
                &format!("{repo}@<index digest>"),
                &flags.signing,
                flags.registry.transport.insecure,
            )
        );
    }
    for (tag, immutable) in tag_plan {
        println!(
            "  tag {repo}:{tag}{}",
            if *immutable { " (immutable)" } else { "" }
        );
    }
}
