//! `cargo xtask adopt`: gives the project its new name. The name is read
//! from `[workspace.metadata.release]` everywhere code needs it; this task
//! rewrites the places that are not code: Cargo.toml itself, the workflows,
//! docker-compose.yml, .env.example, the chart and policy under deploy/,
//! and the docs' examples.

use anyhow::{bail, Context, Result};
use camino::Utf8PathBuf;
use xshell::{cmd, Shell};

use crate::flags;
use crate::oci::reference::Reference;
use crate::support::config::Config;

/// docs/adopting.md shows the sample's own name in its example: it keeps it.
const KEEPS_THE_SAMPLE_NAME: &str = "docs/adopting.md";

/// The sources of the two crates are code, which reads the name from the
/// configuration; rewriting them would only rename test fixtures.
const CODE: &[&str] = &["xtask/", "server/", "Cargo.lock"];

pub fn run(flags: &flags::Adopt) -> Result<()> {
    let config = Config::load()?;
    let image = checked_image(&flags.image)?;
    let repository = checked_repository(&flags.repository)?;
    if let Some(binary) = &flags.binary {
        if !is_binary_name(binary) {
            bail!("--binary {binary:?} is not a binary name; use letters, digits, - and _, as in [[bin]] name");
        }
    }
    let renames = Renames::new(&config, &image, &repository)?;

    let sh = Shell::new()?;
    sh.change_dir(&config.workspace_root);
    let listed = cmd!(sh, "git ls-files -z").read().context(
        "cannot list the repository's files with `git ls-files`; run adopt in a git checkout",
    )?;
    let mut changed = Vec::new();
    for file in listed.split('\0').filter(|f| !f.is_empty()) {
        if file == KEEPS_THE_SAMPLE_NAME || CODE.iter().any(|code| file.starts_with(code)) {
            continue;
        }
        let path = config.workspace_root.join(file);
        // Binary files and links to nowhere have no name to rewrite.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let mut rewritten = renames.apply(&text);
        if file == "Cargo.toml" {
            if let Some(binary) = &flags.binary {
                rewritten = with_binary(&rewritten, binary)?;
            }
        }
        if rewritten != text {
            if !flags.dry_run {
                std::fs::write(&path, rewritten).with_context(|| format!("cannot write {path}"))?;
            }
            changed.push(Utf8PathBuf::from(file));
        }
    }

    let verb = if flags.dry_run {
        "would change"
    } else {
        "changed"
    };
    for file in &changed {
        println!("{verb} {file}");
    }
    if changed.is_empty() {
        println!(
            "nothing to change: the project is already {image}, from {repository}{}",
            flags
                .binary
                .as_ref()
                .map(|b| format!(", binary {b}"))
                .unwrap_or_default()
        );
    } else if !flags.dry_run {
        eprintln!("review with `git diff`, then commit: the next release is {image}");
    }
    Ok(())
}

/// `REGISTRY/OWNER/NAME`: a lowercase repository with its registry host,
/// and no tag or digest.
fn checked_image(text: &str) -> Result<String> {
    let fix = "give --image as REGISTRY/OWNER/NAME in lowercase, such as ghcr.io/acme/widget";
    let reference = Reference::parse(text)
        .with_context(|| format!("--image {text:?} is not REGISTRY/OWNER/NAME in lowercase"))?;
    if reference.tag.is_some() || reference.digest.is_some() || reference.name() != text {
        bail!("--image {text:?} is not a repository with its registry host and no tag or digest; {fix}");
    }
    if text != text.to_lowercase() {
        bail!("--image {text:?} has uppercase letters, which registries refuse; {fix}");
    }
    if !reference.repository.contains('/') {
        bail!("--image {text:?} has no owner; {fix}");
    }
    Ok(text.to_owned())
}

/// `https://HOST/OWNER/NAME`: the source repository, which is also the
/// keyless signing identity's prefix.
fn checked_repository(text: &str) -> Result<String> {
    let fix =
        "give --repository as https://HOST/OWNER/NAME, such as https://github.com/acme/widget";
    let path = text
        .strip_prefix("https://")
        .with_context(|| format!("--repository {text:?} is not an https URL; {fix}"))?;
    let parts: Vec<&str> = path.split('/').collect();
    let well_formed = parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
        && !path.ends_with(".git");
    if !well_formed {
        bail!("--repository {text:?} is not a repository URL; {fix}");
    }
    // `.` and `..` pass the character check but name no repository: a URL
    // made of them resolves to another path, and the keyless identity
    // built from it would match no workflow.
    if parts.iter().any(|p| matches!(*p, "." | "..")) {
        bail!("--repository {text:?} has a `.` or `..` path part; {fix}");
    }
    Ok(text.to_owned())
}

fn is_binary_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// What the old name is replaced by, longest first, so that the image is
/// never half-renamed by its owner/name part.
struct Renames {
    pairs: Vec<(String, String)>,
}

impl Renames {
    fn new(config: &Config, image: &str, repository: &str) -> Result<Renames> {
        if config.repository.is_empty() {
            bail!("Cargo.toml sets no `repository` in [workspace.package]; add the current one, then adopt");
        }
        let namespace = |image: &str| image.rsplit_once('/').map(|(ns, _)| ns.to_owned());
        let slug = |url: &str| {
            let mut parts = url.trim_end_matches('/').rsplitn(3, '/');
            let name = parts.next().unwrap_or_default();
            let owner = parts.next().unwrap_or_default();
            format!("{owner}/{name}")
        };
        let mut pairs = vec![
            (config.repository.clone(), repository.to_owned()),
            (config.image.clone(), image.to_owned()),
            (slug(&config.repository), slug(repository)),
        ];
        // The chart is published next to the image, under OWNER/charts/.
        if let (Some(old), Some(new)) = (namespace(&config.image), namespace(image)) {
            pairs.push((format!("{old}/charts/"), format!("{new}/charts/")));
        }
        pairs.retain(|(old, new)| !old.is_empty() && old != new);
        pairs.sort_by_key(|(old, _)| std::cmp::Reverse(old.len()));
        Ok(Renames { pairs })
    }

    /// One pass: a replacement is never replaced again.
    fn apply(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        'scan: while let Some(c) = rest.chars().next() {
            for (old, new) in &self.pairs {
                if let Some(after) = rest.strip_prefix(old.as_str()) {
                    out.push_str(new);
                    rest = after;
                    continue 'scan;
                }
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        out
    }
}

/// Cargo.toml with `binary = "NAME"` in [workspace.metadata.release].
fn with_binary(manifest: &str, binary: &str) -> Result<String> {
    let mut in_release = false;
    let mut found = false;
    let mut lines = Vec::new();
    for line in manifest.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            in_release = trimmed.starts_with("[workspace.metadata.release]");
        }
        let is_binary_key = trimmed.starts_with("binary ") || trimmed.starts_with("binary=");
        if in_release && is_binary_key {
            lines.push(format!("binary = \"{binary}\""));
            found = true;
        } else {
            lines.push(line.to_owned());
        }
    }
    if !found {
        bail!("Cargo.toml's [workspace.metadata.release] has no `binary` line; add binary = \"{binary}\" by hand");
    }
    let mut text = lines.join("\n");
    if manifest.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lowercase_repositories_with_a_host_are_names() {
        assert_eq!(
            checked_image("ghcr.io/acme/widget").unwrap(),
            "ghcr.io/acme/widget"
        );
        for bad in [
            "ghcr.io/Acme/widget",
            "acme/widget",
            "ghcr.io/acme/widget:v1",
            "ghcr.io/widget",
            "ghcr.io/acme/wid get",
        ] {
            assert!(checked_image(bad).is_err(), "{bad}");
        }
        assert!(checked_repository("https://github.com/acme/widget").is_ok());
        for bad in [
            "http://github.com/acme/widget",
            "https://github.com/acme",
            "https://github.com/acme/widget.git",
        ] {
            assert!(checked_repository(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repository_path_parts_that_navigate_are_refused() {
        for bad in [
            "https://github.com/./..",
            "https://github.com/acme/..",
            "https://github.com/../widget",
            "https://github.com/acme/.",
        ] {
            let error = checked_repository(bad).unwrap_err().to_string();
            assert_eq!(
                error,
                format!(
                    "--repository {bad:?} has a `.` or `..` path part; give --repository as \
                     https://HOST/OWNER/NAME, such as https://github.com/acme/widget"
                )
            );
        }
        assert!(checked_repository("https://github.com/acme/.github").is_ok());
        assert!(checked_repository("https://github.com/acme/widget.rs").is_ok());
    }

    #[test]
    fn renames_happen_once_longest_first() {
        let renames = Renames {
            pairs: vec![
                ("ghcr.io/a/b".into(), "ghcr.io/a/b-fork".into()),
                ("a/b".into(), "c/d".into()),
            ],
        };
        assert_eq!(
            renames.apply("ghcr.io/a/b and a/b and é"),
            "ghcr.io/a/b-fork and c/d and é"
        );
    }

    #[test]
    fn the_binary_line_of_the_release_table_changes() {
        let manifest =
            "[package]\nbinary = \"x\"\n[workspace.metadata.release]\nbinary = \"server\"\n";
        assert_eq!(
            with_binary(manifest, "widget").unwrap(),
            "[package]\nbinary = \"x\"\n[workspace.metadata.release]\nbinary = \"widget\"\n"
        );
    }
}
