//! The buildx builder: `docker buildx build` on the Dockerfile, with the
//! same prebuilt binaries, base, timestamp and labels as the native one.

use anyhow::{Context, Result};
use camino::Utf8Path;
use xshell::{cmd, Shell};

use crate::config::{Config, Platform};
use crate::source::Source;
use crate::tools;

pub struct BuildxOptions<'a> {
    pub platforms: &'a [Platform],
    pub base: &'a str,
    pub version: &'a str,
    /// `repo` to push by digest (untagged), or None to write an OCI archive.
    pub push_repo: Option<&'a str>,
    pub oci_archive: &'a Utf8Path,
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
    args.push(format!("--build-arg=BASE_IMAGE={}", options.base));
    for (key, value) in [
        ("source", config.repository.as_str()),
        ("revision", source.sha.as_str()),
        ("version", options.version),
        ("created", &source.created()),
        ("title", config.binary.as_str()),
        ("description", config.description.as_str()),
        ("licenses", config.license.as_str()),
        ("base.name", options.base),
    ] {
        args.push(format!("--label=org.opencontainers.image.{key}={value}"));
    }
    match options.push_repo {
        // Pushed untagged: tags are set afterwards by the registry client,
        // exact first and floating last, as for the native builder.
        Some(repo) => args.push(format!("--output=type=image,name={repo},push-by-digest=true,name-canonical=true,push=true,rewrite-timestamp=true")),
        None => args.push(format!("--output=type=oci,dest={},rewrite-timestamp=true", options.oci_archive)),
    }
    args.push(".".into());
    args
}

pub fn build(config: &Config, source: &Source, options: &BuildxOptions<'_>) -> Result<()> {
    let docker = tools::DOCKER.find()?;
    let sh = Shell::new()?;
    sh.change_dir(&config.workspace_root);
    cmd!(sh, "{docker} buildx version")
        .quiet()
        .ignore_stdout()
        .run()
        .context("docker buildx is not available: install the buildx plugin (https://github.com/docker/buildx), or use the default `--builder native`")?;
    let args = args(config, source, options);
    cmd!(sh, "{docker} {args...}")
        .env("SOURCE_DATE_EPOCH", source.epoch.to_string())
        .run()
        .context("docker buildx build failed")
}
