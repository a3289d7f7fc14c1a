//! Image references: `host[:port]/repository[:tag][@sha256:…]`.

use anyhow::{bail, format_err, Result};

use crate::support::config::{self, Config};

/// `host[:port]/repository[:tag][@sha256:…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub host: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    /// Parses and checks `text` against the distribution grammar: the
    /// host's components, the repository's lowercase components joined by
    /// `.`, `_`, `__` or dashes, a tag `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
    /// and a sha256 digest.
    pub fn parse(text: &str) -> Result<Reference> {
        let bad = |why: &str| {
            format_err!("invalid image reference {text:?}: {why}; expected HOST/REPOSITORY[:TAG][@sha256:DIGEST]")
        };
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                if !config::is_digest(digest) {
                    return Err(bad("the digest is not sha256:<64 hex>"));
                }
                (rest, Some(digest.to_owned()))
            }
            None => (text, None),
        };
        let (host, path) = match rest.split_once('/') {
            // The first part is a registry host if it looks like one.
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !is_host(first) {
                    return Err(bad(&format!(
                        "{first:?} is not a registry host (letters, digits and dashes between dots, then an optional :PORT)"
                    )));
                }
                (first.to_owned(), path.to_owned())
            }
            _ => (
                "docker.io".to_owned(),
                if rest.contains('/') {
                    rest.to_owned()
                } else {
                    format!("library/{rest}")
                },
            ),
        };
        // A colon after the last slash starts the tag; one before it would
        // be a port, which only the host may have.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => {
                if !is_tag(tag) {
                    return Err(bad(&format!(
                        "the tag {tag:?} is not 1 to 128 letters, digits, _ . - (not starting with . or -)"
                    )));
                }
                (repository.to_owned(), Some(tag.to_owned()))
            }
            _ => (path, None),
        };
        if let Some(component) = repository.split('/').find(|c| !is_path_component(c)) {
            return Err(bad(&format!(
                "the repository component {component:?} must be lowercase letters and digits, separated by one . or _, two _, or dashes"
            )));
        }
        if host.len() + 1 + repository.len() > 255 {
            return Err(bad("the name is longer than 255 characters"));
        }
        Ok(Reference {
            host,
            repository,
            tag,
            digest,
        })
    }

    /// The digest if there is one, else the tag, else `latest`.
    pub fn reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// `host/repository`, the name without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.host, self.repository)
    }
}

pub fn is_loopback(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(name, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            name
        } else {
            host
        }
    });
    // Parsed, not prefix-matched: `127.0.0.1.example.com` is not loopback.
    name == "localhost"
        || name == "[::1]"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `domain-component ("." domain-component)* [":" port]`, or a bracketed
/// IPv6 address with an optional port.
fn is_host(host: &str) -> bool {
    let is_port = |p: &str| !p.is_empty() && p.len() <= 5 && p.chars().all(|c| c.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return false;
        };
        return inner.parse::<std::net::Ipv6Addr>().is_ok()
            && (after.is_empty() || after.strip_prefix(':').is_some_and(is_port));
    }
    let (name, port) = match host.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    port.is_none_or(is_port)
        && name.split('.').all(|c| {
            !c.is_empty()
                && !c.starts_with('-')
                && !c.ends_with('-')
                && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
        })
}

/// `[a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*`
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.first().is_none_or(|b| !alnum(*b)) || bytes.last().is_none_or(|b| !alnum(*b)) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`
fn is_tag(tag: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    chars.next().is_some_and(word)
        && tag.len() <= 128
        && chars.all(|c| word(c) || c == '.' || c == '-')
}

/// The repository to push to: `image` when given (`--image`), else the
/// configured one. Without tag or digest: the push names the digest and
/// the tags come from the version, so one written here would be ignored.
pub fn target(config: &Config, image: Option<&str>) -> Result<Reference> {
    let (text, origin) = match image {
        Some(image) => (image, "--image"),
        None => (config.image.as_str(), "the configured image"),
    };
    let reference = Reference::parse(text)?;
    let extra = match (&reference.tag, &reference.digest) {
        (Some(tag), _) => Some(format!(":{tag}")),
        (None, Some(digest)) => Some(format!("@{digest}")),
        (None, None) => None,
    };
    if let Some(extra) = extra {
        bail!(
            "{origin} {text:?} names a tag or digest ({extra}); use nothing after the repository name, {}: the tags come from the version and the push is by digest",
            reference.name()
        );
    }
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = Reference::parse("127.0.0.1:5000/app:v1@sha256:0000000000000000000000000000000000000000000000000000000000000000").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "app", Some("v1"))
        );
        assert!(r.reference().starts_with("sha256:"));
        let r = Reference::parse("gcr.io/distroless/static-debian13:nonroot").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repository.as_str(), r.reference()),
            ("gcr.io", "distroless/static-debian13", "nonroot")
        );
        let r = Reference::parse("alpine").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repository.as_str(), r.reference()),
            ("docker.io", "library/alpine", "latest")
        );
        assert!(Reference::parse("ghcr.io/Owner/Repo").is_err());
        assert!(Reference::parse("ghcr.io/o/r@sha256:abc").is_err());
    }

    #[test]
    fn grammar() {
        let valid = [
            "127.0.0.1:5000/app",
            "localhost/a/b",
            "[::1]:5000/app",
            "registry.example/a.b/c_d/e__f/g---h:v1.2.3-rc.1_x",
            "ghcr.io/o/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "busybox:latest",
            "library/busybox",
            "r.example/app:_underscore",
        ];
        for text in valid {
            assert!(Reference::parse(text).is_ok(), "{text} should parse");
        }
        let long_tag = format!("r.example/app:{}", "t".repeat(129));
        let long_name = format!("r.example/{}", "a".repeat(250));
        let invalid = [
            "r.example/App",
            "r.example/a..b",
            "r.example/a___b",
            "r.example/-a",
            "r.example/a-",
            "r.example/a//b",
            "//x",
            "r.example/x/../y",
            "r.example/-x",
            "r.example/",
            "r.example/a:",
            "r.example/a:.tag",
            "r.example/a:-tag",
            "r.example/a:t@g",
            "r.example/a:tag!",
            "-bad.example/a",
            "bad-.example/a",
            "bad..example/a",
            "r.example:port/a",
            "r.example:/a",
            "[::zz]:5000/a",
            "r.example/a@sha256:abc",
            "r.example/a@md5:0000",
            long_tag.as_str(),
            long_name.as_str(),
        ];
        for text in invalid {
            assert!(Reference::parse(text).is_err(), "{text} should not parse");
        }
        let e = Reference::parse("r.example/a:.tag")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("invalid image reference"), "{e}");
        assert!(e.contains("the tag \".tag\""), "{e}");
    }

    fn config_for(image: &str) -> Config {
        Config {
            workspace_root: ".".into(),
            target_dir: "target".into(),
            build_dir: "target".into(),
            image: image.into(),
            platforms: Vec::new(),
            base: "scratch".into(),
            base_digest: None,
            package: "server".into(),
            binary: "server".into(),
            version: semver::Version::new(0, 1, 0),
            description: String::new(),
            license: String::new(),
            repository: String::new(),
            toolchains: Default::default(),
            default_branch: "main".into(),
            chart: Default::default(),
            audit: Default::default(),
            sigstore: Default::default(),
        }
    }

    #[test]
    fn targets_name_no_tag_or_digest() {
        let config: Config = config_for("ghcr.io/o/app");
        assert_eq!(target(&config, None).unwrap().name(), "ghcr.io/o/app");
        assert_eq!(
            target(&config, Some("127.0.0.1:5000/app")).unwrap().name(),
            "127.0.0.1:5000/app"
        );
        for (image, extra) in [
            ("127.0.0.1:5000/app:v1", ":v1"),
            (
                "127.0.0.1:5000/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "@sha256:",
            ),
        ] {
            let e = target(&config, Some(image)).unwrap_err().to_string();
            assert!(e.starts_with("--image"), "{e}");
            assert!(e.contains(extra), "{e}");
            assert!(
                e.contains("use nothing after the repository name, 127.0.0.1:5000/app"),
                "{e}"
            );
        }
        let tagged: Config = config_for("ghcr.io/o/app:latest");
        let e = target(&tagged, None).unwrap_err().to_string();
        assert!(e.starts_with("the configured image"), "{e}");
    }

    #[test]
    fn loopback() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:1"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("ghcr.io"));
        assert!(!is_loopback("127.0.0.1.example.com"));
        assert!(!is_loopback("127.evil"));
    }
}
