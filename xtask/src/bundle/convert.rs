//! Referrers between registry kinds. cosign 3 attaches each signature and
//! attestation as a manifest whose `subject` is the signed digest; a
//! registry with the OCI 1.1 referrers API lists those by subject, one
//! without it is given an index tagged `sha256-<hex>` (the fallback tag).
//! An archive carries the referrer manifests either way: under their
//! fallback tag (read from such a registry) or as untagged entries (read
//! from the referrers API). `--load` pushes every referrer manifest by
//! digest, which a registry with the API lists at once, and has a fallback
//! index for every subject, which it tags only where the API is missing.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use camino::Utf8Path;
use serde::Deserialize;

use super::ref_name;
use crate::oci::{self, Descriptor, Index};

/// Manifests and blobs by digest.
pub type Blobs = BTreeMap<String, Vec<u8>>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Referrer {
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

fn parse(digest: &str, bytes: &[u8]) -> Result<Referrer> {
    serde_json::from_slice(bytes)
        .with_context(|| format!("cannot read the referrer {digest}: it is not a manifest"))
}

/// The descriptor of a referrer manifest as the referrers API lists it:
/// with its artifact type (or its config's media type) and annotations.
pub fn referrer_descriptor(media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
    let descriptor = Descriptor::of(media_type, bytes);
    let referrer = parse(&descriptor.digest, bytes)?;
    Ok(Descriptor {
        media_type: referrer.media_type.unwrap_or(descriptor.media_type.clone()),
        artifact_type: referrer
            .artifact_type
            .or(referrer.config.map(|c| c.media_type)),
        annotations: referrer.annotations,
        ..descriptor
    })
}

/// The digest a referrer manifest in `blobs` is attached to.
pub fn subject_of(archive: &Utf8Path, digest: &str, blobs: &Blobs) -> Result<String> {
    let bytes = blobs
        .get(digest)
        .with_context(|| format!("cannot load {archive}: it lacks the referrer {digest}"))?;
    parse(digest, bytes)?
        .subject
        .map(|s| s.digest)
        .with_context(|| {
            format!("cannot load {archive}: its untagged entry {digest} has no subject; the archive was altered, bundle the release again")
        })
}

/// One subject's fallback index: tagged where the registry lacks the
/// referrers API, shown to cosign through the overlay in any case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// `sha256-<hex>` of the subject.
    pub tag: String,
    pub digest: String,
    /// Whether it is the archive's own index, bytes unchanged.
    pub from_archive: bool,
}

/// The fallback index of each subject that has referrers: the archive's
/// own `sha256-<hex>` index when it lists every referrer of the subject
/// (unchanged, so that a load into the same kind of registry keeps its
/// digest), else one with the referrers added. Indexes built here are
/// added to `blobs`. `tagged` are the archive's fallback-tag refs,
/// `untagged` its referrer entries with their subjects.
pub fn fallback_indexes(
    tagged: &[&Descriptor],
    untagged: &[(String, &Descriptor)],
    blobs: &mut Blobs,
) -> Result<Vec<Fallback>> {
    // In the archive's order, which puts the index before its platforms.
    let mut by_subject: Vec<(String, Option<&Descriptor>, Vec<&Descriptor>)> = Vec::new();
    for r in tagged {
        let Some(hex) = ref_name(r).strip_prefix("sha256-") else {
            continue;
        };
        if hex.contains('.') {
            // Older cosign's `.sig`, `.att` and `.sbom` tags are not
            // referrers: they keep their tags.
            continue;
        }
        let at = position(&mut by_subject, format!("sha256:{hex}"));
        by_subject[at].1 = Some(r);
    }
    for (subject, r) in untagged {
        let at = position(&mut by_subject, subject.clone());
        by_subject[at].2.push(r);
    }
    let mut fallbacks = Vec::new();
    for (subject, existing, extra) in by_subject {
        let tag = subject.replace(':', "-");
        let mut index = match existing {
            Some(r) => {
                let bytes = blobs
                    .get(&r.digest)
                    .with_context(|| format!("the archive lacks {tag}, manifest {}", r.digest))?;
                serde_json::from_slice::<Index>(bytes)
                    .with_context(|| format!("cannot read {tag}: it is not an OCI index"))?
            }
            None => Index {
                schema_version: 2,
                media_type: Some(oci::INDEX.to_owned()),
                manifests: Vec::new(),
                annotations: None,
            },
        };
        let mut added = false;
        for r in extra {
            if index.manifests.iter().any(|m| m.digest == r.digest) {
                continue;
            }
            let bytes = blobs
                .get(&r.digest)
                .with_context(|| format!("the archive lacks the referrer {}", r.digest))?;
            index
                .manifests
                .push(referrer_descriptor(&r.media_type, bytes)?);
            added = true;
        }
        let fallback = match existing {
            Some(r) if !added => Fallback {
                tag,
                digest: r.digest.clone(),
                from_archive: true,
            },
            _ => {
                if index.manifests.is_empty() {
                    bail!("{tag} in the archive lists no referrer; bundle the release again");
                }
                let bytes = oci::canonical_json(&index)?;
                let digest = oci::digest_of(&bytes);
                blobs.insert(digest.clone(), bytes);
                Fallback {
                    tag,
                    digest,
                    from_archive: false,
                }
            }
        };
        fallbacks.push(fallback);
    }
    Ok(fallbacks)
}

/// Where `subject` is in `list`, added at the end if it is not there.
fn position<T>(list: &mut Vec<(String, Option<T>, Vec<T>)>, subject: String) -> usize {
    match list.iter().position(|(s, _, _)| *s == subject) {
        Some(at) => at,
        None => {
            list.push((subject, None, Vec::new()));
            list.len() - 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn referrer(subject: &str, predicate: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": oci::MANIFEST,
            "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": oci::digest_of(b"{}"), "size": 2},
            "layers": [],
            "subject": {"mediaType": oci::INDEX, "digest": subject, "size": 1},
            "annotations": {"dev.sigstore.bundle.predicateType": predicate},
        }))
        .unwrap()
    }

    #[test]
    fn builds_a_fallback_index_from_untagged_referrers_and_keeps_an_archived_one() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let mut blobs = Blobs::new();
        let sig_a = referrer(&a, "https://sigstore.dev/cosign/sign/v1");
        let sig_b = referrer(&b, "https://sigstore.dev/cosign/sign/v1");
        let d_a = Descriptor::of(oci::MANIFEST, &sig_a);
        let d_b = Descriptor::of(oci::MANIFEST, &sig_b);
        blobs.insert(d_a.digest.clone(), sig_a.clone());
        blobs.insert(d_b.digest.clone(), sig_b);
        // b's signature came from its fallback tag, a's from the API.
        let archived = oci::canonical_json(&Index {
            schema_version: 2,
            media_type: Some(oci::INDEX.to_owned()),
            manifests: vec![d_b.clone()],
            annotations: None,
        })
        .unwrap();
        let mut tagged = Descriptor::of(oci::INDEX, &archived);
        tagged.annotations = Some(BTreeMap::from([(
            super::super::REF_NAME.to_owned(),
            b.replace(':', "-"),
        )]));
        blobs.insert(tagged.digest.clone(), archived);
        assert_eq!(subject_of("x.tar".into(), &d_a.digest, &blobs).unwrap(), a);

        let fallbacks = fallback_indexes(&[&tagged], &[(a.clone(), &d_a)], &mut blobs).unwrap();
        // The archive's order: its tagged index first, kept as it is.
        assert_eq!(fallbacks.len(), 2);
        assert_eq!(
            fallbacks[0],
            Fallback {
                tag: b.replace(':', "-"),
                digest: tagged.digest.clone(),
                from_archive: true
            }
        );
        assert_eq!(fallbacks[1].tag, a.replace(':', "-"));
        assert!(!fallbacks[1].from_archive);
        let built: Index = serde_json::from_slice(&blobs[&fallbacks[1].digest]).unwrap();
        assert_eq!(built.manifests.len(), 1);
        assert_eq!(built.manifests[0].digest, d_a.digest);
        assert_eq!(
            built.manifests[0].artifact_type.as_deref(),
            Some("application/vnd.dev.sigstore.bundle.v0.3+json")
        );
        assert_eq!(
            built.manifests[0].annotations.as_ref().unwrap()["dev.sigstore.bundle.predicateType"],
            "https://sigstore.dev/cosign/sign/v1"
        );
    }

    #[test]
    fn an_untagged_entry_without_subject_is_refused() {
        let mut blobs = Blobs::new();
        blobs.insert(oci::digest_of(b"{}"), b"{}".to_vec());
        let err = subject_of("x.tar".into(), &oci::digest_of(b"{}"), &blobs).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot load x.tar: its untagged entry {} has no subject; the archive was altered, bundle the release again", oci::digest_of(b"{}"))
        );
    }
}
