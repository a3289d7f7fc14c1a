//! The refs of a release archive: which `index.json` entries belong to
//! the release, checked against what is signed, and the signature tags to
//! set. Nothing here trusts a name: a name only has to agree with the
//! signed version, and the release's own tags come from the tag policy
//! (floating.rs), not from the archive.

use anyhow::{bail, Context, Result};
use camino::Utf8Path;

use super::convert::{self, Blobs, Fallback};
use super::ref_name;
use crate::oci::{self, Descriptor, Index};

/// The refs of an archive that belong to its release: the version, its
/// signatures, and floating tags that name the same digest.
#[derive(Debug)]
pub struct Owned<'a> {
    pub release: &'a Descriptor,
    /// cosign's `sha256-<hex>` tags of the index and of each platform.
    pub referrers: Vec<&'a Descriptor>,
    pub floating: Vec<&'a Descriptor>,
}

/// The floating tags a stable version may carry; a prerelease has none.
fn floating_tags(version: &str) -> Vec<String> {
    let Ok(parsed) = crate::tags::parse_version(version) else {
        return Vec::new();
    };
    if !parsed.pre.is_empty() {
        return Vec::new();
    }
    vec![
        format!("v{}.{}", parsed.major, parsed.minor),
        format!("v{}", parsed.major),
        "latest".to_owned(),
    ]
}

/// Sorts the archive's refs into those the release owns, and refuses an
/// archive with any other: a tag pointing at another digest, or signatures
/// of a digest that is not the release's index or one of its platforms.
/// `subjects` is the index digest first, then each platform's.
pub fn owned<'a>(
    archive: &Utf8Path,
    version: &str,
    refs: &'a [Descriptor],
    subjects: &[String],
) -> Result<Owned<'a>> {
    let release = find_release(archive, version, refs)?;
    let floating = floating_tags(version);
    let mut owned = Owned {
        release,
        referrers: Vec::new(),
        floating: Vec::new(),
    };
    for r in refs.iter().filter(|r| !std::ptr::eq(*r, release)) {
        let name = ref_name(r);
        if name.is_empty() {
            // A referrer read through the API: `untagged` checks it.
            continue;
        }
        if floating.iter().any(|f| f == name) {
            if r.digest != release.digest {
                bail!(
                    "cannot load {archive}: its index.json points {name} at {}, not at {version} ({}); the archive was altered, bundle the release again",
                    r.digest,
                    release.digest
                );
            }
            owned.floating.push(r);
            continue;
        }
        let signed = name
            .strip_prefix("sha256-")
            .map(|rest| rest.split('.').next().unwrap_or(rest));
        match signed {
            Some(hex) if subjects.iter().any(|s| s == &format!("sha256:{hex}")) => {
                owned.referrers.push(r);
            }
            Some(hex) => bail!(
                "cannot load {archive}: its index.json holds {name}, signatures of sha256:{hex}, which is neither {version} ({}) nor one of its platforms; the archive was altered, bundle the release again",
                release.digest
            ),
            None => bail!(
                "cannot load {archive}: its index.json names {name:?}, which is not a tag of {version}; the archive was altered, bundle the release again"
            ),
        }
    }
    Ok(owned)
}

pub fn find_release<'a>(
    archive: &Utf8Path,
    version: &str,
    refs: &'a [Descriptor],
) -> Result<&'a Descriptor> {
    refs.iter()
        .find(|r| ref_name(r) == version)
        .with_context(|| {
            format!(
                "cannot load {archive}: it holds no {version}, only {}; pass the version it was bundled for",
                refs.iter().map(ref_name).collect::<Vec<_>>().join(", ")
            )
        })
}

/// The index digest and each platform manifest's, from the archive.
pub fn subjects_of(archive: &Utf8Path, release: &Descriptor, blobs: &Blobs) -> Result<Vec<String>> {
    let bytes = blobs.get(&release.digest).with_context(|| {
        format!(
            "cannot load {archive}: it lacks the manifest {}",
            release.digest
        )
    })?;
    let index: Index = serde_json::from_slice(bytes).with_context(|| {
        format!(
            "cannot load {archive}: {} is not an image index; bundle a release made by `cargo xtask release`",
            release.digest
        )
    })?;
    Ok(std::iter::once(release.digest.clone())
        .chain(index.manifests.into_iter().map(|m| m.digest))
        .collect())
}

/// The archive's untagged entries, referrers read through the API, with
/// the subject each names; refuses one attached to anything but the
/// release's index or one of its platforms.
pub fn untagged<'a>(
    archive: &Utf8Path,
    version: &str,
    refs: &'a [Descriptor],
    subjects: &[String],
    blobs: &Blobs,
) -> Result<Vec<(String, &'a Descriptor)>> {
    let mut untagged = Vec::new();
    for r in refs.iter().filter(|r| ref_name(r).is_empty()) {
        let subject = convert::subject_of(archive, &r.digest, blobs)?;
        if !subjects.contains(&subject) {
            bail!(
                "cannot load {archive}: its index.json holds {}, attached to {subject}, which is neither {version} ({}) nor one of its platforms; the archive was altered, bundle the release again",
                r.digest,
                subjects[0]
            );
        }
        untagged.push((subject, r));
    }
    Ok(untagged)
}

/// The signature tags to set before any of the release's own, so that no
/// tag names an image whose signatures are not there yet: the fallback
/// tags (only where the registry lacks the referrers API), then older
/// cosign's `.sig`/`.att`/`.sbom` tags. Each is a name, a digest and a
/// media type.
pub fn signature_tags(
    owned: &Owned,
    fallbacks: &[Fallback],
    fallback_tags: bool,
) -> Vec<(String, String, String)> {
    let mut tags = Vec::new();
    if fallback_tags {
        for f in fallbacks {
            tags.push((f.tag.clone(), f.digest.clone(), oci::INDEX.to_owned()));
        }
    }
    for r in &owned.referrers {
        let name = ref_name(r);
        if name.starts_with("sha256-") && !name.contains('.') {
            // In `fallbacks`, possibly with referrers added.
            continue;
        }
        tags.push((name.to_owned(), r.digest.clone(), r.media_type.clone()));
    }
    tags
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn named(name: &str, digest: &str) -> Descriptor {
        let mut d = Descriptor::of(oci::INDEX, b"x");
        d.digest = digest.to_owned();
        d.annotations = Some(BTreeMap::from([(
            super::super::REF_NAME.to_owned(),
            name.to_owned(),
        )]));
        d
    }

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn owns_its_signatures_and_floating_tags() {
        let refs = [
            named("latest", &digest('a')),
            named("v1.2.3", &digest('a')),
            named(&format!("sha256-{}", "b".repeat(64)), &digest('c')),
            named(&format!("sha256-{}.sig", "a".repeat(64)), &digest('d')),
            named("v1.2", &digest('a')),
        ];
        let subjects = [digest('a'), digest('b')];
        let owned = owned("a.tar".into(), "v1.2.3", &refs, &subjects).unwrap();
        assert_eq!(ref_name(owned.release), "v1.2.3");
        let names = |list: &[&Descriptor]| {
            list.iter()
                .map(|r| ref_name(r).to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&owned.floating), ["latest", "v1.2"]);
        let b = format!("sha256-{}", "b".repeat(64));
        let a = format!("sha256-{}.sig", "a".repeat(64));
        assert_eq!(names(&owned.referrers), [b.clone(), a.clone()]);
        // Only the signatures' tags come from the archive; the fallback
        // tag is written from `fallbacks` where the registry needs it.
        let tags: Vec<String> = signature_tags(&owned, &[], true)
            .into_iter()
            .map(|(tag, _, _)| tag)
            .collect();
        assert_eq!(tags, [a]);
    }

    #[test]
    fn refuses_a_tag_or_signature_that_is_not_the_release() {
        let subjects = [digest('a'), digest('b')];
        let moved = [named("v1.2.3", &digest('a')), named("v1", &digest('e'))];
        let err = owned("a.tar".into(), "v1.2.3", &moved, &subjects).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot load a.tar: its index.json points v1 at {}, not at v1.2.3 ({}); the archive was altered, bundle the release again", digest('e'), digest('a'))
        );
        let foreign = [
            named("v1.2.3", &digest('a')),
            named(&format!("sha256-{}", "f".repeat(64)), &digest('c')),
        ];
        let err = owned("a.tar".into(), "v1.2.3", &foreign, &subjects).unwrap_err();
        assert!(err.to_string().contains("which is neither v1.2.3"), "{err}");
        let other = [named("v1.2.3", &digest('a')), named("v9.9.9", &digest('a'))];
        assert!(owned("a.tar".into(), "v1.2.3", &other, &subjects).is_err());
        let prerelease = [
            named("v2.0.0-rc.1", &digest('a')),
            named("latest", &digest('a')),
        ];
        assert!(owned("a.tar".into(), "v2.0.0-rc.1", &prerelease, &subjects).is_err());
    }

    #[test]
    fn refuses_an_untagged_referrer_of_another_image() {
        let foreign = digest('f');
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": oci::MANIFEST,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": oci::digest_of(b"{}"), "size": 2},
            "layers": [],
            "subject": {"mediaType": oci::INDEX, "digest": foreign, "size": 1},
        }))
        .unwrap();
        let referrer = Descriptor::of(oci::MANIFEST, &manifest);
        let blobs = Blobs::from([(referrer.digest.clone(), manifest)]);
        let refs = [named("v1.2.3", &digest('a')), referrer.clone()];
        let subjects = [digest('a'), digest('b')];
        let err = untagged("a.tar".into(), "v1.2.3", &refs, &subjects, &blobs).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot load a.tar: its index.json holds {}, attached to {foreign}, which is neither v1.2.3 ({}) nor one of its platforms; the archive was altered, bundle the release again",
                referrer.digest,
                digest('a')
            )
        );
        // Attached to a platform, it is the release's.
        let own = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "subject": {"mediaType": oci::MANIFEST, "digest": digest('b'), "size": 1},
        }))
        .unwrap();
        let referrer = Descriptor::of(oci::MANIFEST, &own);
        let blobs = Blobs::from([(referrer.digest.clone(), own)]);
        let refs = [named("v1.2.3", &digest('a')), referrer.clone()];
        let found = untagged("a.tar".into(), "v1.2.3", &refs, &subjects, &blobs).unwrap();
        assert_eq!(found, [(digest('b'), &referrer)]);
        assert!(owned("a.tar".into(), "v1.2.3", &refs, &subjects)
            .unwrap()
            .referrers
            .is_empty());
    }
}
