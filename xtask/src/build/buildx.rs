//! The buildx builder: `docker buildx build` on the Dockerfile, with the
//! same prebuilt binaries, base, timestamp and labels as the native one.
//!
//! buildx writes an OCI layout directory and pushes nothing itself: the
//! layout is then pushed by digest with our registry client, and tagged
//! exact first and floating last, exactly as the native build is. buildx's
//! own `--push` would set the tags in the same breath as the upload, and an
//! immutable tag could not be checked before anything is written.

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Shell};

use crate::build::assemble::{Built, BuiltPlatform};
use crate::build::base::{self, BaseSource};
use crate::oci::client::Reference;
use crate::oci::{self, Index, Layout, Manifest};
use crate::support::config::{Config, Platform};
use crate::support::source::Source;
use crate::support::tools;

/// The base image as the Dockerfile gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildxBase {
    /// What `FROM ${BASE}` pulls: `scratch`, or a reference pinned by digest.
    pub from: String,
    /// The `base.name` label: the reference as the user named it, without
    /// the digest, as the native builder records it.
    pub name: String,
    /// The `base.digest` label: what the reference resolved to.
    pub digest: Option<String>,
}

pub struct BuildxOptions<'a> {
    pub platforms: &'a [Platform],
    pub base: &'a BuildxBase,
    pub version: &'a str,
    /// The OCI layout directory buildx writes.
    pub out: &'a Utf8Path,
}

/// Resolves `--base` once, so that every platform is built on the same
/// digest and the labels can name it. Returns the "not pinned" warning for
/// the caller to print.
pub fn resolve_base(base: &str, insecure: bool) -> Result<(BuildxBase, Option<String>)> {
    match BaseSource::parse(base) {
        BaseSource::Scratch => Ok((
            BuildxBase {
                from: "scratch".to_owned(),
                name: "scratch".to_owned(),
                digest: None,
            },
            None,
        )),
        BaseSource::Layout(dir) => bail!(
            "--builder buildx takes `scratch` or a registry reference as --base, not the OCI layout {dir}; use --builder native for a layout base"
        ),
        BaseSource::Registry(text) => {
            let parsed = Reference::parse(&text)?;
            if let Some(digest) = &parsed.digest {
                // Pinned: nothing to ask the registry.
                let name = match &parsed.tag {
                    Some(tag) => format!("{}:{tag}", parsed.name()),
                    None => parsed.name(),
                };
                let from = format!("{}@{digest}", parsed.name());
                let digest = Some(digest.clone());
                return Ok((BuildxBase { from, name, digest }, None));
            }
            let resolved = base::resolve(&base::client_for(&parsed, insecure)?, &text)?;
            Ok((
                BuildxBase {
                    from: format!("{}@{}", parsed.name(), resolved.digest),
                    name: resolved.name,
                    digest: Some(resolved.digest),
                },
                resolved.not_pinned_warning,
            ))
        }
    }
}

/// The label values, keyed by the Dockerfile's build argument. The same
/// values as the native builder's labels.
fn label_args(
    config: &Config,
    source: &Source,
    options: &BuildxOptions<'_>,
) -> Vec<(&'static str, &'static str, String)> {
    vec![
        ("SOURCE", "source", config.repository.clone()),
        ("REVISION", "revision", source.sha.clone()),
        ("VERSION", "version", options.version.to_owned()),
        ("CREATED", "created", source.created()),
        ("TITLE", "title", config.binary.clone()),
        ("DESCRIPTION", "description", config.description.clone()),
        ("LICENSES", "licenses", config.license.clone()),
        ("BASE_NAME", "base.name", options.base.name.clone()),
        (
            "BASE_DIGEST",
            "base.digest",
            options.base.digest.clone().unwrap_or_default(),
        ),
    ]
}

/// The exact argv after `docker`.
pub fn args(config: &Config, source: &Source, options: &BuildxOptions<'_>) -> Vec<String> {
    let platforms: Vec<String> = options.platforms.iter().map(Platform::to_string).collect();
    let mut args: Vec<String> = ["buildx", "build", "--file", "Dockerfile"]
        .map(String::from)
        .to_vec();
    args.push(format!("--platform={}", platforms.join(",")));
    // cosign makes the attestations; buildx's would add unknown/unknown
    // entries to the index.
    args.push("--provenance=false".into());
    args.push("--sbom=false".into());
    args.push(format!("--build-arg=SOURCE_DATE_EPOCH={}", source.epoch));
    args.push(format!("--build-arg=BASE={}", options.base.from));
    let labels = label_args(config, source, options);
    for (arg, _, value) in &labels {
        args.push(format!("--build-arg={arg}={value}"));
    }
    // The native builder annotates the index and every manifest with the
    // labels too; empty values are left out, as it does.
    for (_, key, value) in labels.iter().filter(|(_, _, v)| !v.is_empty()) {
        args.push(format!(
            "--annotation=index,manifest:org.opencontainers.image.{key}={value}"
        ));
    }
    args.push(format!(
        "--output=type=oci,dest={},tar=false,rewrite-timestamp=true",
        options.out
    ));
    args.push(".".into());
    args
}

/// `docker …` as one line that a POSIX shell reads back as the same argv.
pub fn command_line(args: &[String]) -> String {
    crate::support::tools::command_line("docker", args)
}

/// The docker CLI with the buildx plugin, or an error that says how to get
/// them. Checked before anything is built.
pub fn find_docker_buildx() -> Result<std::path::PathBuf> {
    let docker = tools::DOCKER.find()?;
    let sh = Shell::new()?;
    let works = cmd!(sh, "{docker} buildx version")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok();
    if !works {
        bail!(
            "docker buildx is not available: `{} buildx version` failed; install the buildx plugin (https://docs.docker.com/build/install-buildx/), or use the default `--builder native`",
            docker.display()
        );
    }
    Ok(docker)
}

/// buildx copies `target/dist/…` from the workspace root (see the
/// Dockerfile and .dockerignore), so the binaries must be there.
pub fn check_dist_location(config: &Config) -> Result<()> {
    let expected = config.workspace_root.join("target/dist");
    if config.dist_dir() != expected {
        bail!(
            "--builder buildx copies the binaries from {expected}, but cargo's target directory is {}; unset CARGO_TARGET_DIR, or use --builder native",
            config.target_dir
        );
    }
    Ok(())
}

/// Runs buildx into a fresh OCI layout at `options.out`.
pub fn build(
    docker: &Utf8Path,
    config: &Config,
    source: &Source,
    options: &BuildxOptions<'_>,
) -> Result<()> {
    let out = options.out;
    if out.exists() {
        // Only ever remove what an earlier build wrote.
        if !out.join("oci-layout").is_file() {
            bail!("{out} exists and is not an OCI layout; remove it or pass another --out");
        }
        std::fs::remove_dir_all(out).with_context(|| format!("cannot remove {out}"))?;
    }
    let sh = Shell::new()?;
    sh.change_dir(&config.workspace_root);
    let args = args(config, source, options);
    cmd!(sh, "{docker} {args...}")
        .env("SOURCE_DATE_EPOCH", source.epoch.to_string())
        .run()
        .context("docker buildx build failed; an OCI layout output needs a docker-container builder (`docker buildx create --use`)")
}

/// Reads what buildx wrote into the same summary the native builder gives.
pub fn built_from_layout(layout: &Layout, base: &BuildxBase) -> Result<Built> {
    let top = layout.index()?;
    let entry = match top.manifests.as_slice() {
        [only] if oci::is_index(&only.media_type) => only.clone(),
        _ => bail!(
            "{}/index.json does not hold exactly one image index; was it written by buildx with several platforms?",
            layout.dir
        ),
    };
    let index: Index = layout.read_json(&entry.digest)?;
    let mut platforms = Vec::new();
    for descriptor in &index.manifests {
        let platform = descriptor.platform.as_ref().with_context(|| {
            format!(
                "manifest {} in the buildx index has no platform",
                descriptor.digest
            )
        })?;
        let manifest: Manifest = layout.read_json(&descriptor.digest)?;
        let layer = manifest
            .layers
            .last()
            .with_context(|| format!("manifest {} has no layers", descriptor.digest))?;
        platforms.push(BuiltPlatform {
            platform: format!("{}/{}", platform.os, platform.architecture),
            digest: descriptor.digest.clone(),
            config_digest: manifest.config.digest.clone(),
            layer_digest: layer.digest.clone(),
            base_digest: None,
            size: manifest.layers.iter().map(|l| l.size).sum::<u64>() + manifest.config.size,
        });
    }
    Ok(Built {
        layout: layout.dir.clone(),
        digest: entry.digest,
        size: entry.size,
        platforms,
        base_name: base.name.clone(),
        base_digest: base.digest.clone(),
    })
}

/// Where buildx writes its layout unless --out says otherwise: apart from
/// the native layout, so that the two can be compared.
pub fn default_out(config: &Config) -> Utf8PathBuf {
    config.target_dir.join("image/buildx-oci")
}

/// The base as the plan names it: what the user named, and its digest.
pub fn describe_base(base: &BuildxBase) -> String {
    match &base.digest {
        Some(digest) => format!("{} ({digest})", base.name),
        None => base.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_base_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("oci-layout"), "{}").unwrap();
        let path = dir.path().to_str().unwrap();
        let err = resolve_base(path, false).unwrap_err().to_string();
        assert_eq!(err, format!("--builder buildx takes `scratch` or a registry reference as --base, not the OCI layout {path}; use --builder native for a layout base"));
    }

    #[test]
    fn a_pinned_base_is_not_resolved_again() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let (base, warning) =
            resolve_base(&format!("gcr.io/distroless/static:nonroot@{digest}"), false).unwrap();
        assert_eq!(
            base,
            BuildxBase {
                from: format!("gcr.io/distroless/static@{digest}"),
                name: "gcr.io/distroless/static:nonroot".to_owned(),
                digest: Some(digest),
            }
        );
        assert_eq!(warning, None);
    }
}
