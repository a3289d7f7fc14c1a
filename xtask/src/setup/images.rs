//! The images the engine tests run that cannot be pulled here, built from
//! Debian packages with mmdebstrap and imported into podman's store: a
//! PostgreSQL 15 for the compose stack's `db`, Debian's Caddy for its
//! proxy, and a distroless-like static base for the server image.
//!
//! Each is cached by its inputs (the recipe below and the files it
//! copies in) as a tarball under the user's cache directory, which
//! survives `cargo clean`; podman's copy carries the same key in a second
//! tag, so a re-run with nothing changed runs no mmdebstrap and no import.

use std::path::PathBuf;

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::support::archive::sha256_hex;

/// The Debian release of the static base: the real base is
/// distroless/static-debian13, and the mirror serves trixie.
pub const STATIC_BASE_SUITE: &str = "trixie";

pub const POSTGRES_IMAGE: &str = "localhost/xtask-engine/postgres:15";
pub const CADDY_IMAGE: &str = "localhost/xtask-engine/caddy:2.6.2";
pub const STATIC_BASE_IMAGE: &str = "localhost/xtask-engine/static-debian13:nonroot";

/// How one image is made.
#[derive(Clone, Copy)]
pub struct Recipe {
    pub image: &'static str,
    suite: &'static str,
    variant: &'static str,
    packages: &'static [&'static str],
    /// Files copied into the root: (name in the recipe, path inside, text).
    files: &'static [(&'static str, &'static str, &'static str)],
    /// mmdebstrap hooks, run on the host with the root in $1 once the
    /// packages are in.
    hooks: &'static [&'static str],
    /// `podman import --change` lines: the image config.
    changes: &'static [&'static str],
}

/// Leave out what a container never reads: documentation, manual pages,
/// translations.
const SLIM: &[&str] = &[
    "path-exclude=/usr/share/doc/*",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
];

pub const RECIPES: &[Recipe] = &[
    Recipe {
        image: POSTGRES_IMAGE,
        suite: "bookworm",
        variant: "essential",
        packages: &["postgresql-15"],
        files: &[(
            "postgres-entrypoint.sh",
            "/usr/local/bin/docker-entrypoint.sh",
            include_str!("../../engine-images/postgres-entrypoint.sh"),
        )],
        hooks: &[
            // The package's own cluster, and the JIT (LLVM, 100 MB): the
            // entrypoint makes its cluster in PGDATA, and PostgreSQL runs
            // without JIT when the provider cannot be loaded.
            "rm -rf \"$1\"/var/lib/postgresql/15 \"$1\"/etc/postgresql/15/main \"$1\"/usr/lib/postgresql/15/lib/llvmjit* \"$1\"/usr/lib/postgresql/15/lib/bitcode \"$1\"/usr/lib/x86_64-linux-gnu/libLLVM* \"$1\"/var/cache/apt/* \"$1\"/var/lib/apt/lists/*",
            "mkdir -p \"$1\"/var/lib/postgresql/data \"$1\"/var/run/postgresql",
            "chmod 755 \"$1\"/usr/local/bin/docker-entrypoint.sh",
        ],
        changes: &[
            "ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV PGDATA=/var/lib/postgresql/data",
            "ENV LANG=C.UTF-8",
            "ENTRYPOINT [\"/usr/local/bin/docker-entrypoint.sh\"]",
            "STOPSIGNAL SIGINT",
            "EXPOSE 5432",
        ],
    },
    Recipe {
        image: CADDY_IMAGE,
        suite: "bookworm",
        variant: "extract",
        // busybox: the official alpine image's tar and sh, which the
        // documented backup of caddy-data runs.
        packages: &["caddy", "busybox-static", "ca-certificates"],
        files: &[],
        hooks: &[
            "mkdir -p \"$1\"/config \"$1\"/data \"$1\"/etc/caddy \"$1\"/tmp && chmod 1777 \"$1\"/tmp",
            "for tool in sh tar; do ln -sf /bin/busybox \"$1\"/usr/bin/$tool; done",
            "cat \"$1\"/usr/share/ca-certificates/mozilla/*.crt > \"$1\"/etc/ssl/certs/ca-certificates.crt",
        ],
        changes: &[
            "ENV XDG_CONFIG_HOME=/config",
            "ENV XDG_DATA_HOME=/data",
            "ENTRYPOINT [\"/usr/bin/caddy\"]",
            "CMD [\"run\", \"--config\", \"/etc/caddy/Caddyfile\", \"--adapter\", \"caddyfile\"]",
            "WORKDIR /srv",
            "EXPOSE 443",
        ],
    },
    Recipe {
        image: STATIC_BASE_IMAGE,
        suite: STATIC_BASE_SUITE,
        variant: "extract",
        packages: &["base-files", "netbase", "tzdata", "ca-certificates"],
        files: &[(
            "static-base-prune.sh",
            "/prune.sh",
            include_str!("../../engine-images/static-base-prune.sh"),
        )],
        hooks: &["sh \"$1\"/prune.sh \"$1\" && rm \"$1\"/prune.sh"],
        changes: &["USER 65532:65532", "WORKDIR /home/nonroot", "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
    },
];

impl Recipe {
    /// mmdebstrap's arguments, with `files` standing for the directory the
    /// recipe's files are written to.
    fn mmdebstrap_args(&self, files: &str, out: &str) -> Vec<String> {
        let mut args = vec![
            format!("--variant={}", self.variant),
            "--mode=root".to_owned(),
            "--format=tar".to_owned(),
            "--aptopt=APT::Install-Recommends \"false\"".to_owned(),
            format!("--include={}", self.packages.join(",")),
        ];
        args.extend(SLIM.iter().map(|o| format!("--dpkgopt={o}")));
        // The `extract` variant runs no customize hooks: its last stage is
        // the extraction, and the downloaded packages are still there.
        let stage = if self.variant == "extract" {
            "extract"
        } else {
            "customize"
        };
        for (name, inside, _) in self.files {
            args.push(format!("--{stage}-hook=upload {files}/{name} {inside}"));
        }
        args.extend(self.hooks.iter().map(|h| format!("--{stage}-hook={h}")));
        args.push(self.suite.to_owned());
        args.push(out.to_owned());
        args
    }

    /// The key of everything that decides the image's content.
    pub fn inputs_key(&self) -> String {
        let mut text = self.mmdebstrap_args("FILES", "OUT").join("\n");
        for (name, inside, content) in self.files {
            text.push_str(&format!("\n{name} {inside}\n{content}"));
        }
        text.push_str(&self.changes.join("\n"));
        sha256_hex(text.as_bytes())[..16].to_owned()
    }
}

/// Where the built tarballs are kept: outside target/, so that `cargo
/// clean` does not cost a rebuild.
pub fn cache_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("xtask-engine-images"))
}

/// The second tag of an imported image, naming its inputs: a label would
/// end up in every image built on the static base.
fn inputs_tag(recipe: &Recipe) -> String {
    let repository = recipe
        .image
        .rsplit_once(':')
        .map_or(recipe.image, |(r, _)| r);
    format!("{repository}:inputs-{}", recipe.inputs_key())
}

/// Whether podman's store holds `recipe`'s image built from these inputs:
/// its name and its inputs tag name the same image.
pub fn is_current(sh: &Shell, recipe: &Recipe) -> bool {
    let format = "{{.Id}}";
    let id = |reference: &str| {
        cmd!(sh, "podman image inspect --format {format} {reference}")
            .quiet()
            .ignore_stderr()
            .read()
            .ok()
    };
    let named = id(recipe.image);
    named.is_some() && named == id(&inputs_tag(recipe))
}

/// Builds (or takes from the cache) and imports every image that is not
/// current. Returns the names of those it imported.
pub fn ensure(sh: &Shell, dry_run: bool) -> Result<Vec<String>> {
    let cache = cache_dir()?;
    let mut imported = Vec::new();
    for recipe in RECIPES {
        if is_current(sh, recipe) {
            continue;
        }
        let key = recipe.inputs_key();
        let name = recipe
            .image
            .rsplit('/')
            .next()
            .unwrap_or(recipe.image)
            .replace(':', "-");
        let tar = cache.join(format!("{name}-{key}.tar"));
        if dry_run {
            println!(
                "would build {} into {} and podman import it",
                recipe.image,
                tar.display()
            );
            imported.push(recipe.image.to_owned());
            continue;
        }
        if !tar.exists() {
            build(sh, recipe, &cache, &tar)?;
        }
        let mut args: Vec<String> = Vec::new();
        for change in recipe.changes {
            args.push("--change".to_owned());
            args.push((*change).to_owned());
        }
        let image = recipe.image;
        cmd!(sh, "podman import --quiet {args...} {tar} {image}")
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("cannot podman import {}", tar.display()))?;
        let tag = inputs_tag(recipe);
        cmd!(sh, "podman tag {image} {tag}")
            .quiet()
            .run()
            .with_context(|| format!("cannot tag {image} as {tag}"))?;
        imported.push(image.to_owned());
    }
    Ok(imported)
}

fn build(
    sh: &Shell,
    recipe: &Recipe,
    cache: &std::path::Path,
    tar: &std::path::Path,
) -> Result<()> {
    std::fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let files = cache.join(format!("files-{}", recipe.inputs_key()));
    std::fs::create_dir_all(&files)
        .with_context(|| format!("cannot create {}", files.display()))?;
    for (name, _, content) in recipe.files {
        std::fs::write(files.join(name), content)
            .with_context(|| format!("cannot write {name}"))?;
    }
    // Written next to the final name and renamed, so that an interrupted
    // build never leaves a tarball that looks complete.
    let partial = tar.with_extension("partial");
    let args = recipe.mmdebstrap_args(&files.to_string_lossy(), &partial.to_string_lossy());
    println!(
        "building {} with mmdebstrap (a minute or two, once)",
        recipe.image
    );
    cmd!(sh, "mmdebstrap --quiet {args...}")
        .run()
        .with_context(|| {
            format!(
                "mmdebstrap could not build {}; check that the Debian mirror in /etc/apt/sources.list serves {}",
                recipe.image, recipe.suite
            )
        })?;
    std::fs::rename(&partial, tar)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), tar.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_changes_with_the_inputs_and_only_with_them() {
        let postgres = &RECIPES[0];
        assert_eq!(postgres.inputs_key(), postgres.inputs_key());
        assert_eq!(postgres.inputs_key().len(), 16);
        let other = Recipe {
            packages: &["postgresql-16"],
            ..*postgres
        };
        assert_ne!(other.inputs_key(), postgres.inputs_key());
    }

    #[test]
    fn every_recipe_has_its_own_image_name() {
        let mut names: Vec<&str> = RECIPES.iter().map(|r| r.image).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RECIPES.len());
    }
}
