//! `bundle --load`: the air-gapped side. The archive's content is pushed
//! byte for byte, by digest and untagged, so that every digest (and so
//! every signature) stays valid; cosign then verifies the signature of the
//! release's index and of each platform, as pushed, against what the
//! operator trusts: their key, or their trusted root and the release
//! workflow's exact identity. Only then do tags move: the signatures'
//! tags, then the release's own, by the release's tag policy.
//!
//! Nothing the archive says is trusted. The version is the signed index's
//! own `org.opencontainers.image.version` annotation (signed.rs), and
//! `index.json`'s names must agree with it; the archive's `verify/` copies
//! must equal what the operator's trust would have bundled (trust.rs).

use anyhow::{bail, Context, Result};
use camino::Utf8Path;

use super::convert::{self, Blobs};
use super::reader::{read_archive, Archive, ArchiveBlobs};
use super::refs::{self, Owned};
use super::signed::SignedIndex;
use super::{print_json, ref_entries, subject_entries, trust, Report};
use crate::flags;
use crate::oci::client::{Client, Reference};
use crate::oci::overlay::Overlay;
use crate::oci::push::{self, push_tree};
use crate::oci::subject::Subject;
use crate::oci::{self, Descriptor};
use crate::supply_chain::claims::verify_signature;
use crate::supply_chain::cosign::{self, Cosign};
use crate::supply_chain::identity::{self, Identity, WorkflowIdentity};
use crate::supply_chain::sigstore::Instance;
use crate::support::config::Config;
use crate::support::progress::Steps;

/// Whom the operator trusts, settled before anything is pushed.
struct Trust {
    identity: Identity,
    workflow: Option<WorkflowIdentity>,
    sigstore: Instance,
}

impl Trust {
    /// The operator's key; or, keyless, their trusted root and the exact
    /// identity of the run that releases `signed`, derived from the
    /// configured repository and the signed version and commit.
    fn of_operator(config: &Config, flags: &flags::Bundle, signed: &SignedIndex) -> Result<Trust> {
        let identity = identity::verifying_identity(&flags.signing)?;
        let sigstore = Instance::resolve(config, &flags.signing)?;
        let workflow = match identity {
            Identity::Key(_) => None,
            Identity::Keyless => {
                if sigstore.trusted_root.is_none() {
                    bail!("keyless --load needs --trusted-root FILE: the Sigstore trusted root you got out of band (docs/air-gapped.md), never the archive's copy; or pass --key cosign.pub");
                }
                Some(sigstore.issued(signed.release_identity(config)?))
            }
        };
        Ok(Trust {
            identity,
            workflow,
            sigstore,
        })
    }

    fn cosign_options(&self, flags: &flags::Bundle) -> cosign::Options {
        cosign::Options {
            identity: self.identity.clone(),
            signing_config: None,
            ignore_tlog: flags.signing.no_tlog,
            // The overlay is plain HTTP on loopback.
            insecure: true,
            workflow: self.workflow.clone(),
            sigstore: self.sigstore.clone(),
        }
    }
}

pub fn load(
    config: &Config,
    flags: &flags::Bundle,
    reference: &Reference,
    archive: &Utf8Path,
) -> Result<()> {
    let mut steps = Steps::new(if flags.dry_run { 1 } else { 4 });
    let Archive {
        refs,
        mut blobs,
        copies,
    } = steps.run(&format!("read {archive}"), || read_archive(archive))?;
    let release = refs::find_release(archive, &flags.version, &refs)?;
    let signed = signed_version(archive, &flags.version, release, &blobs)?;
    let subjects = refs::subjects_of(archive, release, &blobs)?;
    let owned = refs::owned(archive, &signed.tag, &refs, &subjects)?;
    let untagged = refs::untagged(archive, &signed.tag, &refs, &subjects, &blobs)?;
    // Whom to trust is settled before anything is pushed, from the
    // operator alone; the archive's copies must agree with it.
    let trust = Trust::of_operator(config, flags, &signed)?;
    let expected = trust::files(
        &refs,
        &signed.tag,
        &flags.signing,
        trust.sigstore.trusted_root.as_deref(),
        || {
            signed
                .release_identity(config)
                .map(|workflow| trust.sigstore.issued(workflow))
        },
    )?;
    trust::check_copies(archive, &copies, &expected)?;
    let revision = signed.revision.clone().with_context(|| {
        format!(
            "cannot load {archive}: the signed index has no {} annotation, so its sha- tag cannot be set; load a release made by `cargo xtask release`",
            oci::REVISION
        )
    })?;
    let policy = crate::tags::compute(
        &crate::tags::Build::Release(signed.version.clone()),
        &revision,
        &[],
    )
    .with_context(|| format!("cannot load {archive}"))?;
    let fallbacks = convert::fallback_indexes(&owned.referrers, &untagged, &mut blobs)?;
    let name = reference.name();
    let repo = &reference.repository;
    // A dry run does not ask the registry: it lists the fallback tags, and
    // the floating tags this release would get if it is the newest.
    let signature_tags = refs::signature_tags(&owned, &fallbacks, true);
    let mut report = Report {
        action: "load".to_owned(),
        dry_run: flags.dry_run,
        image: name.clone(),
        version: signed.tag.clone(),
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
        blobs: blobs.count(),
        bytes: blobs.bytes(),
        verified: Vec::new(),
        tags: signature_tags
            .iter()
            .map(|(tag, _, _)| tag.clone())
            .chain(policy.names())
            .collect(),
    };
    if flags.dry_run {
        if flags.json {
            return print_json(&report);
        }
        println!("would load {archive} into {name}:");
        println!("  {} manifests and blobs, by digest", blobs.count());
        println!("  then verify the signatures of {} digests", subjects.len());
        for (tag, digest, _) in &signature_tags {
            println!("  tag {name}:{tag} -> {digest}");
        }
        for tag in policy.names() {
            println!("  tag {name}:{tag} -> {}", owned.release.digest);
        }
        println!("  (a floating tag only if {name} has no newer release)");
        return Ok(());
    }

    let cosign = Cosign::find()?;
    let insecure = flags.registry.transport.insecure;
    let client = Client::new(&reference.host, insecure)?;
    let exact: Vec<(String, bool)> = policy
        .with_immutability()
        .into_iter()
        .filter(|(_, immutable)| *immutable)
        .collect();
    // Before anything is pushed: an exact tag naming another digest stops
    // the load here, unless --force.
    push::plan_tags(&client, repo, &exact, &owned.release.digest, flags.force)?;
    let has_api = steps.run("push manifests and blobs by digest, untagged", || {
        push_untagged(&client, repo, &blobs, &owned, &untagged, &fallbacks)
    })?;
    let signature_tags = refs::signature_tags(&owned, &fallbacks, !has_api);
    if has_api && !fallbacks.is_empty() {
        eprintln!(
            "{name} has the OCI referrers API: it lists the signatures and attestations, no sha256-<hex> tag is set"
        );
    }
    report.verified = steps.run("verify the signatures of what was pushed", || {
        verify_pushed(
            config, flags, reference, &trust, &owned, &fallbacks, &cosign, &signed,
        )
    })?;
    let (changes, not_set) = steps.run(
        "set the tags: signatures, then the release's by its tag policy",
        || {
            for (tag, digest, media_type) in &signature_tags {
                let bytes = blobs
                    .get(digest)
                    .with_context(|| format!("{archive} lacks manifest {digest}"))?;
                client
                    .put_manifest(repo, tag, media_type, bytes)
                    .with_context(|| format!("cannot tag {name}:{tag}"))?;
            }
            let index = blobs
                .get(&owned.release.digest)
                .with_context(|| format!("{archive} lacks {}", owned.release.digest))?;
            crate::floating::tag_release(
                &client,
                repo,
                &signed.version,
                &revision,
                index,
                &owned.release.digest,
                flags.force,
            )
        },
    )?;
    report.tags = signature_tags
        .iter()
        .map(|(tag, _, _)| tag.clone())
        .chain(changes.iter().map(|c| c.tag.clone()))
        .collect();
    for note in &not_set {
        eprintln!("{note}");
    }
    if flags.json {
        return print_json(&report);
    }
    println!(
        "loaded {name}:{} ({}), verified before tagging",
        signed.tag, owned.release.digest
    );
    let user = match &trust.identity {
        Identity::Key(key) => Identity::Key(key.clone()),
        Identity::Keyless => Identity::Keyless,
    };
    println!(
        "verify it there:\n  {}",
        cosign::xtask_verify_command(
            &format!("{name}@{}", owned.release.digest),
            &user,
            flags.signing.no_tlog,
            insecure,
            false,
        ) + &format!(" --expect-version {}", signed.tag)
    );
    Ok(())
}

/// The signed version of the release the operator asked for: the index
/// that `index.json` names `version` must say, in its own signed
/// annotation, that it is that version.
fn signed_version(
    archive: &Utf8Path,
    version: &str,
    release: &Descriptor,
    blobs: &Blobs,
) -> Result<SignedIndex> {
    let signed = SignedIndex::read(&release.digest, blobs)
        .with_context(|| format!("cannot load {archive}"))?;
    if signed.tag != version {
        bail!(
            "cannot load {archive}: its index.json names {} {version}, but that index is signed as version {} ({} {:?}); the archive was altered: nothing was pushed or tagged",
            release.digest,
            signed.tag,
            oci::VERSION,
            signed.version.to_string()
        );
    }
    Ok(signed)
}

/// Pushes every manifest and blob by digest, no tag: referrers first (a
/// registry with the API lists each as it arrives, and nothing tagged
/// names the release yet), the release's index last. Returns whether the
/// registry has the referrers API.
fn push_untagged(
    client: &Client,
    repo: &str,
    blobs: &ArchiveBlobs,
    owned: &Owned,
    untagged: &[(String, &Descriptor)],
    fallbacks: &[convert::Fallback],
) -> Result<bool> {
    for (_, r) in untagged {
        push_tree(client, repo, blobs, &r.digest, &r.media_type, None)?;
    }
    for r in &owned.referrers {
        push_tree(client, repo, blobs, &r.digest, &r.media_type, None)?;
    }
    for f in fallbacks.iter().filter(|f| !f.from_archive) {
        push_tree(client, repo, blobs, &f.digest, oci::INDEX, None)?;
    }
    push_tree(
        client,
        repo,
        blobs,
        &owned.release.digest,
        &owned.release.media_type,
        None,
    )?;
    Ok(client.referrers(repo, &owned.release.digest)?.is_some())
}

/// cosign verifies the index and every platform, as pushed, through a
/// loopback overlay that answers 404 to the referrers API, so that cosign
/// reads the fallback tags there, whatever the registry's kind.
#[allow(clippy::too_many_arguments)]
fn verify_pushed(
    config: &Config,
    flags: &flags::Bundle,
    reference: &Reference,
    trust: &Trust,
    owned: &Owned,
    fallbacks: &[convert::Fallback],
    cosign: &Cosign,
    signed: &SignedIndex,
) -> Result<Vec<String>> {
    let insecure = flags.registry.transport.insecure;
    let repo = &reference.repository;
    // The overlay serves only the trees of these tags: the signatures',
    // and the release, under its version.
    let overlay_tags = fallbacks
        .iter()
        .map(|f| (f.tag.clone(), f.digest.clone()))
        .chain([(signed.tag.clone(), owned.release.digest.clone())])
        .chain(
            owned
                .referrers
                .iter()
                .filter(|r| super::ref_name(r).contains('.'))
                .map(|r| (super::ref_name(r).to_owned(), r.digest.clone())),
        )
        .collect();
    let overlay = Overlay::start(Client::new(&reference.host, insecure)?, repo, overlay_tags)?;
    let options = trust.cosign_options(flags);
    let view = format!(
        "{}/{}@{}",
        overlay.host, overlay.repository, owned.release.digest
    );
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
        let detail = verify_signature(cosign, &options, &subject, &digest).map_err(|err| {
            anyhow::format_err!(
                "cannot load {}:{}: the {what} {digest} is {err:#}; no tag was set: check --key (or, keyless, --trusted-root and that this is a release of {}), or bundle the release again",
                reference.name(),
                signed.tag,
                config.repository
            )
        })?;
        verified.push(format!("{what} {digest}: {detail}"));
    }
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// An index with the version annotation `version`, named `name` in
    /// index.json.
    fn release(name: &str, version: &str) -> (Descriptor, Blobs) {
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": oci::INDEX,
            "manifests": [],
            "annotations": {oci::VERSION: version},
        }))
        .unwrap();
        let mut descriptor = Descriptor::of(oci::INDEX, &bytes);
        descriptor.annotations = Some(BTreeMap::from([(
            super::super::REF_NAME.to_owned(),
            name.to_owned(),
        )]));
        let blobs = Blobs::from([(descriptor.digest.clone(), bytes)]);
        (descriptor, blobs)
    }

    #[test]
    fn the_name_must_be_the_signed_version() {
        let (descriptor, blobs) = release("v2.0.0", "2.0.0");
        let signed = signed_version("a.tar".into(), "v2.0.0", &descriptor, &blobs).unwrap();
        assert_eq!(signed.tag, "v2.0.0");
        let (descriptor, blobs) = release("v2.0.0", "1.0.0");
        let err = signed_version("a.tar".into(), "v2.0.0", &descriptor, &blobs).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot load a.tar: its index.json names {} v2.0.0, but that index is signed as version v1.0.0 (org.opencontainers.image.version \"1.0.0\"); the archive was altered: nothing was pushed or tagged", descriptor.digest)
        );
        // A prerelease is not its stable version, nor the other way round.
        let (descriptor, blobs) = release("v2.0.0", "2.0.0-rc.1");
        assert!(signed_version("a.tar".into(), "v2.0.0", &descriptor, &blobs).is_err());
        let (descriptor, blobs) = release("v2.0.0", "");
        let err = signed_version("a.tar".into(), "v2.0.0", &descriptor, &blobs).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("cannot load a.tar: the index"),
            "{err:#}"
        );
    }
}
