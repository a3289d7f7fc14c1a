//! `bundle --load`: the air-gapped side. The archive's content is pushed
//! byte for byte, by digest and untagged, so that every digest (and so
//! every signature) stays valid; cosign then verifies the signature of the
//! release's index and of each platform, as pushed, against the given key
//! or the release workflow's identity; only then do tags move, and only
//! the tags the release owns.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use camino::Utf8Path;

use super::convert::{self, Fallback};
use super::{print_json, ref_entries, ref_name, subject_entries, Report};
use crate::flags;
use crate::oci::client::{Client, Reference};
use crate::oci::overlay::Overlay;
use crate::oci::push::push_tree;
use crate::oci::subject::Subject;
use crate::oci::{self, Descriptor, Index};
use crate::supply_chain::claims::verify_signature;
use crate::supply_chain::cosign::{self, Cosign};
use crate::supply_chain::identity::{self, Identity};
use crate::supply_chain::sigstore::Instance;
use crate::support::config::Config;
use crate::support::progress::Steps;

use convert::Blobs;

/// The refs of an archive that belong to its release, in the order their
/// tags are set: signatures first, then the version, floating tags last,
/// so that no tag names an image whose signatures are not there yet.
#[derive(Debug)]
struct Owned<'a> {
    release: &'a Descriptor,
    /// cosign's `sha256-<hex>` tags of the index and of each platform.
    referrers: Vec<&'a Descriptor>,
    floating: Vec<&'a Descriptor>,
}

impl Owned<'_> {
    fn in_tag_order(&self) -> Vec<&Descriptor> {
        let mut refs = self.referrers.clone();
        refs.push(self.release);
        refs.extend(&self.floating);
        refs
    }
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
fn owned<'a>(
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

fn find_release<'a>(
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
fn subjects_of(archive: &Utf8Path, release: &Descriptor, blobs: &Blobs) -> Result<Vec<String>> {
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
fn untagged<'a>(
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

/// The tags to set, in order: the fallback tags (only where the registry
/// lacks the referrers API), older cosign's `.sig`/`.att`/`.sbom` tags, the
/// version, floating tags last. Each is a name, a digest and a media type.
fn tag_order(
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
    for r in owned.in_tag_order() {
        let name = ref_name(r);
        if name.starts_with("sha256-") && !name.contains('.') {
            // In `fallbacks`, possibly with referrers added.
            continue;
        }
        tags.push((name.to_owned(), r.digest.clone(), r.media_type.clone()));
    }
    tags
}

pub fn load(
    config: &Config,
    flags: &flags::Bundle,
    reference: &Reference,
    archive: &Utf8Path,
) -> Result<()> {
    let mut steps = Steps::new(if flags.dry_run { 1 } else { 4 });
    let (refs, mut blobs) = steps.run(&format!("read {archive}"), || read_archive(archive))?;
    let release = find_release(archive, &flags.version, &refs)?;
    let subjects = subjects_of(archive, release, &blobs)?;
    let owned = owned(archive, &flags.version, &refs, &subjects)?;
    let untagged = untagged(archive, &flags.version, &refs, &subjects, &blobs)?;
    let fallbacks = convert::fallback_indexes(&owned.referrers, &untagged, &mut blobs)?;
    let name = reference.name();
    let repo = &reference.repository;
    // A dry run does not ask the registry, so it lists the fallback tags.
    let tags = tag_order(&owned, &fallbacks, true);
    let mut report = Report {
        action: "load".to_owned(),
        dry_run: flags.dry_run,
        image: name.clone(),
        version: flags.version.clone(),
        digest: owned.release.digest.clone(),
        archive: archive.to_string(),
        sha256: None,
        subjects: subject_entries(
            &subjects
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let what = if i == 0 { "index" } else { "platform" };
                    (what.to_owned(), d.clone())
                })
                .collect::<Vec<_>>(),
        ),
        refs: ref_entries(&refs),
        blobs: blobs.len(),
        bytes: blobs.values().map(|b| b.len() as u64).sum(),
        verified: Vec::new(),
        tags: tags.iter().map(|(tag, _, _)| tag.clone()).collect(),
    };
    if flags.dry_run {
        if flags.json {
            return print_json(&report);
        }
        println!("would load {archive} into {name}:");
        println!("  {} manifests and blobs, by digest", blobs.len());
        println!("  then verify the signatures of {} digests", subjects.len());
        for (tag, digest, _) in &tags {
            println!("  tag {name}:{tag} -> {digest}");
        }
        return Ok(());
    }

    // Whom to trust is settled before anything is pushed.
    let identity = identity::verifying_identity(&flags.signing)?;
    let sigstore = Instance::resolve(config, &flags.signing)?;
    let workflow = match identity {
        Identity::Keyless => Some(sigstore.issued(super::signed::release_identity(
            config,
            &owned.release.digest,
            &blobs,
        )?)),
        Identity::Key(_) => None,
    };
    let cosign = Cosign::find()?;
    let insecure = flags.registry.transport.insecure;
    let client = Client::new(&reference.host, insecure)?;
    let has_api = steps.run("push manifests and blobs by digest, untagged", || {
        // Referrer manifests first: a registry with the API lists each as
        // it arrives, and nothing tagged names the release yet.
        for (_, r) in &untagged {
            push_tree(&client, repo, &blobs, &r.digest, &r.media_type, None)?;
        }
        for r in &owned.referrers {
            push_tree(&client, repo, &blobs, &r.digest, &r.media_type, None)?;
        }
        for f in fallbacks.iter().filter(|f| !f.from_archive) {
            push_tree(&client, repo, &blobs, &f.digest, oci::INDEX, None)?;
        }
        push_tree(
            &client,
            repo,
            &blobs,
            &owned.release.digest,
            &owned.release.media_type,
            None,
        )?;
        Ok(client.referrers(repo, &owned.release.digest)?.is_some())
    })?;
    let tags = tag_order(&owned, &fallbacks, !has_api);
    report.tags = tags.iter().map(|(tag, _, _)| tag.clone()).collect();
    if has_api && !fallbacks.is_empty() {
        eprintln!(
            "{name} has the OCI referrers API: it lists the signatures and attestations, no sha256-<hex> tag is set"
        );
    }
    report.verified = steps.run("verify the signatures of what was pushed", || {
        // The overlay answers 404 to the referrers API, so cosign reads
        // the fallback tags there, whatever the registry's kind.
        let overlay_tags = fallbacks
            .iter()
            .map(|f| (f.tag.clone(), f.digest.clone()))
            .chain(
                owned
                    .referrers
                    .iter()
                    .filter(|r| ref_name(r).contains('.'))
                    .map(|r| (ref_name(r).to_owned(), r.digest.clone())),
            )
            .collect();
        let overlay = Overlay::start(Client::new(&reference.host, insecure)?, repo, overlay_tags)?;
        let options = cosign::Options {
            identity: identity.clone(),
            signing_config: None,
            ignore_tlog: flags.signing.no_tlog,
            // The overlay is plain HTTP on loopback.
            insecure: true,
            workflow: workflow.clone(),
            sigstore: sigstore.clone(),
        };
        let view = format!("{}/{repo}@{}", overlay.host, owned.release.digest);
        let subject = Subject::resolve(&view, &Client::new(&overlay.host, true)?)?;
        let mut targets = vec![("index".to_owned(), subject.digest.clone())];
        targets.extend(
            subject
                .platforms
                .iter()
                .map(|p| (p.platform.to_string(), p.digest.clone())),
        );
        let mut verified = Vec::new();
        for (what, digest) in targets {
            let detail = verify_signature(&cosign, &options, &subject, &digest).map_err(|err| {
                anyhow::format_err!(
                    "cannot load {name}:{}: the {what} {digest} is {err:#}; no tag was set: check --key (or, keyless, that this is a release of {}), or bundle the release again",
                    flags.version,
                    config.repository
                )
            })?;
            verified.push(format!("{what} {digest}: {detail}"));
        }
        Ok(verified)
    })?;
    steps.run(
        "set the tags: signatures, the version, floating tags",
        || {
            for (tag, digest, media_type) in &tags {
                let bytes = blobs
                    .get(digest)
                    .with_context(|| format!("{archive} lacks manifest {digest}"))?;
                client
                    .put_manifest(repo, tag, media_type, bytes)
                    .with_context(|| format!("cannot tag {name}:{tag}"))?;
            }
            Ok(())
        },
    )?;
    if flags.json {
        return print_json(&report);
    }
    println!(
        "loaded {name}:{} ({}), verified before tagging",
        flags.version, owned.release.digest
    );
    println!(
        "verify it there:\n  cosign verify --key cosign.pub --insecure-ignore-tlog=true {name}@{}",
        owned.release.digest
    );
    Ok(())
}

/// Reads an archive written by `bundle`: its index.json entries and every
/// blob, each checked against its digest.
fn read_archive(path: &Utf8Path) -> Result<(Vec<Descriptor>, Blobs)> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open the bundle {path}; give its path with --out"))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut index = None;
    let mut blobs = BTreeMap::new();
    for entry in archive
        .entries()
        .with_context(|| format!("{path} is not a tar archive"))?
    {
        let mut entry = entry.with_context(|| format!("{path} is not a readable tar archive"))?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let name = name.trim_start_matches("./").to_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes)
            .with_context(|| format!("cannot read {name} from {path}"))?;
        if name == "index.json" {
            index = Some(bytes);
        } else if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            if hex.is_empty() {
                continue;
            }
            let digest = format!("sha256:{hex}");
            if oci::digest_of(&bytes) != digest {
                bail!("{name} in {path} does not match its digest; the archive is damaged, copy it again and check it with sha256sum -c");
            }
            blobs.insert(digest, bytes);
        }
    }
    let index = index.with_context(|| {
        format!("{path} has no index.json; it is not an OCI archive written by cargo xtask bundle")
    })?;
    let index: Index = serde_json::from_slice(&index)
        .with_context(|| format!("the index.json of {path} is not an OCI index"))?;
    Ok((index.manifests, blobs))
}

#[cfg(test)]
mod tests {
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
    fn owns_its_signatures_and_floating_tags_in_tag_order() {
        let refs = [
            named("latest", &digest('a')),
            named("v1.2.3", &digest('a')),
            named(&format!("sha256-{}", "b".repeat(64)), &digest('c')),
            named(&format!("sha256-{}.sig", "a".repeat(64)), &digest('d')),
            named("v1.2", &digest('a')),
        ];
        let subjects = [digest('a'), digest('b')];
        let owned = owned("a.tar".into(), "v1.2.3", &refs, &subjects).unwrap();
        let order: Vec<&str> = owned.in_tag_order().into_iter().map(ref_name).collect();
        let b = format!("sha256-{}", "b".repeat(64));
        let a = format!("sha256-{}.sig", "a".repeat(64));
        assert_eq!(order, [b.as_str(), a.as_str(), "v1.2.3", "latest", "v1.2"]);
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
