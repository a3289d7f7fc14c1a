//! Image references: `host[:port]/repository[:tag][@sha256:…]`.

use anyhow::Result;

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
    pub fn parse(text: &str) -> Result<Reference> {
        let bad = |why: &str| {
            anyhow::anyhow!("invalid image reference {text:?}: {why}; expected HOST/REPOSITORY[:TAG][@sha256:DIGEST]")
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
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repository, tag)) => (repository.to_owned(), Some(tag.to_owned())),
            None => (path, None),
        };
        if repository.is_empty()
            || repository
                .chars()
                .any(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c)))
        {
            return Err(bad(
                "the repository must be lowercase letters, digits and . _ - /",
            ));
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
    name == "localhost" || name.starts_with("127.") || name == "[::1]"
}

/// The repository to push to: `image` when given (`--image`), else the
/// configured one.
pub fn target(config: &Config, image: Option<&str>) -> Result<Reference> {
    Reference::parse(image.unwrap_or(&config.image))
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
    fn loopback() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:1"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("ghcr.io"));
    }
}
