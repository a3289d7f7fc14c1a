//! What is attached to a digest: the signatures and attestations stored as
//! OCI referrers, each with its kind and predicate type.
//!
//! cosign v3 stores each one as an artifact manifest whose `subject` is the
//! digest, with `artifactType` the Sigstore bundle and the annotation
//! `dev.sigstore.bundle.predicateType` saying what it is. A registry with
//! the referrers API lists them under `/v2/<repo>/referrers/<digest>`; one
//! without it (such as distribution 2.8) gets an OCI index under the tag
//! `sha256-<hex>`, whose entries carry no annotations, so each manifest is
//! read. Both places are read and merged: a registry upgraded to the API
//! still serves what was written to the tag before.

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::oci::client::Client;
use crate::oci::{Descriptor, Index};

/// The artifact type of a Sigstore bundle v0.3, what cosign v3 writes.
pub const SIGSTORE_BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// The annotation that names a bundle's predicate type.
pub const PREDICATE_TYPE_ANNOTATION: &str = "dev.sigstore.bundle.predicateType";
/// The media type of the empty config that artifact manifests carry.
pub const EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// The predicate type of a `cosign sign` signature.
pub const SIGNATURE_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Signature,
    Attestation,
    /// Anything else attached: another tool's artifact, an older format.
    Other,
}

/// One artifact attached to a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The digest of the referrer manifest itself.
    pub digest: String,
    pub kind: Kind,
    pub predicate_type: Option<String>,
}

impl Attached {
    pub fn is_attestation_of(&self, predicate_type: &str) -> bool {
        self.kind == Kind::Attestation && self.predicate_type.as_deref() == Some(predicate_type)
    }
}

/// Every artifact attached to `digest` in `repository`: the referrers API
/// when the registry has one, and cosign's `sha256-<hex>` tag.
pub fn attached(client: &Client, repository: &str, digest: &str) -> Result<Vec<Attached>> {
    let mut entries = client.referrers(repository, digest)?.unwrap_or_default();
    let fallback = digest.replace(':', "-");
    if let Some((_, bytes)) = client.get_manifest(repository, &fallback)? {
        let index: Index = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "cannot read the referrers of {digest}: the tag {fallback} is not an OCI index; delete it or re-sign"
            )
        })?;
        for entry in index.manifests {
            if !entries.iter().any(|e| e.digest == entry.digest) {
                entries.push(entry);
            }
        }
    }
    let mut attached = Vec::new();
    for entry in entries {
        let annotated = entry
            .annotations
            .as_ref()
            .and_then(|a| a.get(PREDICATE_TYPE_ANNOTATION))
            .cloned();
        let (artifact_type, predicate_type) = match annotated {
            Some(predicate_type) => (entry.artifact_type.clone(), Some(predicate_type)),
            // go-containerregistry's registry lists a referrer with its
            // config's media type as artifactType and without annotations,
            // so such an entry is read too.
            None if matches!(
                entry.artifact_type.as_deref(),
                Some(SIGSTORE_BUNDLE | EMPTY) | None
            ) =>
            {
                match read_referrer(client, repository, digest, &entry.digest)? {
                    Some((artifact_type, predicate_type)) => (
                        artifact_type.or(entry.artifact_type.clone()),
                        predicate_type,
                    ),
                    None => (entry.artifact_type.clone(), None),
                }
            }
            None => (entry.artifact_type.clone(), None),
        };
        let kind = match (artifact_type.as_deref(), predicate_type.as_deref()) {
            (Some(SIGSTORE_BUNDLE), Some(SIGNATURE_PREDICATE)) => Kind::Signature,
            (Some(SIGSTORE_BUNDLE), Some(_)) => Kind::Attestation,
            _ => Kind::Other,
        };
        attached.push(Attached {
            digest: entry.digest,
            kind,
            predicate_type,
        });
    }
    Ok(attached)
}

/// The artifact type and predicate type a referrer manifest declares; None
/// when it is gone or names another subject (a stale entry of the fallback
/// tag).
fn read_referrer(
    client: &Client,
    repository: &str,
    subject: &str,
    referrer: &str,
) -> Result<Option<(Option<String>, Option<String>)>> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Referrer {
        artifact_type: Option<String>,
        subject: Option<Descriptor>,
        #[serde(default)]
        annotations: std::collections::BTreeMap<String, String>,
    }
    let Some((_, bytes)) = client.get_manifest(repository, referrer)? else {
        return Ok(None);
    };
    let manifest: Referrer = serde_json::from_slice(&bytes).with_context(|| {
        format!("cannot read the referrer {referrer} of {subject}: it is not a manifest")
    })?;
    if manifest.subject.as_ref().map(|s| s.digest.as_str()) != Some(subject) {
        return Ok(None);
    }
    Ok(Some((
        manifest.artifact_type,
        manifest.annotations.get(PREDICATE_TYPE_ANNOTATION).cloned(),
    )))
}
