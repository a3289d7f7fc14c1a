//! What the signed index says about itself. The index's digest is what the
//! signature covers, so its annotations are as trustworthy as the signature,
//! while the names in an archive's `index.json` are covered by nothing. The
//! version a load tags, and the commit a keyless identity requires, come
//! from here.
//!
//! The mapping: the annotation `org.opencontainers.image.version` holds the
//! bare SemVer, `1.2.3`, as Cargo.toml has it; the release's tag is that
//! with a `v`, `v1.2.3`.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use semver::Version;

use crate::oci::{self, Index};
use crate::supply_chain::cosign::GITHUB_OIDC_ISSUER;
use crate::supply_chain::identity::{Run, WorkflowIdentity};
use crate::support::config::Config;

/// The version and commit an index names in its annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIndex {
    pub version: Version,
    /// `v` + the version: the release's tag.
    pub tag: String,
    /// `org.opencontainers.image.revision`, if the index has it.
    pub revision: Option<String>,
}

impl SignedIndex {
    /// Reads the index `digest` from `blobs` (each already checked against
    /// its digest): its version annotation is required.
    pub fn read(digest: &str, blobs: &BTreeMap<String, Vec<u8>>) -> Result<SignedIndex> {
        let bytes = blobs
            .get(digest)
            .with_context(|| format!("the archive lacks the index {digest}"))?;
        let index: Index = serde_json::from_slice(bytes)
            .with_context(|| format!("{digest} is not an image index"))?;
        let annotations = index.annotations.unwrap_or_default();
        let Some(version) = annotations.get(oci::VERSION) else {
            bail!(
                "the index {digest} has no {} annotation, so nothing signed says which version it is; load a release made by `cargo xtask release`",
                oci::VERSION
            );
        };
        let tag = format!("v{version}");
        let parsed = crate::tags::parse_version(&tag)
            .ok()
            .filter(|v| v.to_string() == *version)
            .with_context(|| {
                format!(
                    "the index {digest} has the {} annotation {version:?}, not a release version such as 1.2.3 (for the tag v1.2.3)",
                    oci::VERSION
                )
            })?;
        Ok(SignedIndex {
            version: parsed,
            tag,
            revision: annotations.get(oci::REVISION).cloned(),
        })
    }

    /// Exactly the run that signs this release: release.yml of the
    /// configured repository, on this version's tag and this commit.
    pub fn release_identity(&self, config: &Config) -> Result<WorkflowIdentity> {
        WorkflowIdentity::new(
            &config.repository,
            &Run::Release(self.version.clone()),
            self.revision.as_deref(),
            GITHUB_OIDC_ISSUER,
        )
    }
}

/// The keyless identity of the release whose index is `digest`.
pub fn release_identity(
    config: &Config,
    digest: &str,
    blobs: &BTreeMap<String, Vec<u8>>,
) -> Result<WorkflowIdentity> {
    SignedIndex::read(digest, blobs)?.release_identity(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_with(annotations: &[(&str, &str)]) -> (String, BTreeMap<String, Vec<u8>>) {
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": oci::INDEX,
            "manifests": [],
            "annotations": annotations.iter().cloned().collect::<BTreeMap<_, _>>(),
        }))
        .unwrap();
        let digest = oci::digest_of(&bytes);
        (digest.clone(), BTreeMap::from([(digest, bytes)]))
    }

    #[test]
    fn the_version_annotation_is_the_tag_without_its_v() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let (digest, blobs) = index_with(&[(oci::VERSION, "1.2.3"), (oci::REVISION, sha)]);
        let signed = SignedIndex::read(&digest, &blobs).unwrap();
        assert_eq!(signed.tag, "v1.2.3");
        assert_eq!(signed.revision.as_deref(), Some(sha));
        let (digest, blobs) = index_with(&[(oci::VERSION, "2.0.0-rc.1")]);
        assert_eq!(
            SignedIndex::read(&digest, &blobs).unwrap().tag,
            "v2.0.0-rc.1"
        );
    }

    #[test]
    fn an_index_without_a_release_version_is_refused() {
        let (digest, blobs) = index_with(&[]);
        assert_eq!(
            SignedIndex::read(&digest, &blobs).unwrap_err().to_string(),
            format!("the index {digest} has no org.opencontainers.image.version annotation, so nothing signed says which version it is; load a release made by `cargo xtask release`")
        );
        for bad in [
            "v1.2.3",
            "1.2",
            "01.2.3",
            "1.2.3+build",
            " 1.2.3",
            "latest",
            "",
        ] {
            let (digest, blobs) = index_with(&[(oci::VERSION, bad)]);
            assert_eq!(
                SignedIndex::read(&digest, &blobs).unwrap_err().to_string(),
                format!("the index {digest} has the org.opencontainers.image.version annotation {bad:?}, not a release version such as 1.2.3 (for the tag v1.2.3)")
            );
        }
        assert!(SignedIndex::read("sha256:00", &blobs).is_err());
    }
}
