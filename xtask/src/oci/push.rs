//! Publishing an OCI layout: blobs first, then platform manifests, then the
//! index, all by digest; tags last, exact before floating. A failure at any
//! point leaves every tag where it was.

use anyhow::{bail, Context, Result};

use crate::oci::client::Client;
use crate::oci::{self, Index, Layout, Manifest};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PushReport {
    pub uploaded: Vec<String>,
    pub mounted: Vec<String>,
    pub skipped: Vec<String>,
    pub manifests_pushed: Vec<String>,
}

/// Pushes the index `index_digest` from `layout` and everything it needs.
/// Blobs the registry has are skipped; blobs in `mount_from` (a repository
/// on the same registry, such as the base image's) are mounted.
pub fn push_layout(
    client: &Client,
    repo: &str,
    layout: &Layout,
    index_digest: &str,
    mount_from: Option<&str>,
) -> Result<PushReport> {
    let mut report = PushReport::default();
    let index_bytes = layout.read_blob(index_digest)?;
    let index: Index =
        serde_json::from_slice(&index_bytes).context("the layout's index is invalid")?;
    // Every blob before any manifest, every platform manifest before the
    // index: a registry that dies at any point holds no manifest whose
    // blobs are missing, and a re-run uploads only what never arrived.
    let mut manifests = Vec::new();
    for entry in &index.manifests {
        let manifest_bytes = layout.read_blob(&entry.digest)?;
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
            .context("a platform manifest in the layout is invalid")?;
        for blob in manifest
            .layers
            .iter()
            .chain(std::iter::once(&manifest.config))
        {
            if report.skipped.contains(&blob.digest)
                || report.uploaded.contains(&blob.digest)
                || report.mounted.contains(&blob.digest)
            {
                continue;
            }
            if client.blob_exists(repo, &blob.digest)? {
                report.skipped.push(blob.digest.clone());
                continue;
            }
            if let Some(from) = mount_from {
                if client.mount_blob(repo, &blob.digest, from)? {
                    report.mounted.push(blob.digest.clone());
                    continue;
                }
            }
            let bytes = layout.read_blob(&blob.digest)?;
            client
                .upload_blob(repo, &blob.digest, &bytes)
                .with_context(|| format!("cannot upload blob {} to {repo}", blob.digest))?;
            report.uploaded.push(blob.digest.clone());
        }
        manifests.push((entry, manifest_bytes));
    }
    for (entry, manifest_bytes) in manifests {
        put_manifest_if_missing(
            client,
            repo,
            &entry.digest,
            &entry.media_type,
            &manifest_bytes,
            &mut report,
        )?;
    }
    put_manifest_if_missing(
        client,
        repo,
        index_digest,
        oci::INDEX,
        &index_bytes,
        &mut report,
    )?;
    Ok(report)
}

fn put_manifest_if_missing(
    client: &Client,
    repo: &str,
    digest: &str,
    media_type: &str,
    bytes: &[u8],
    report: &mut PushReport,
) -> Result<()> {
    if client.manifest_digest(repo, digest)?.as_deref() == Some(digest) {
        return Ok(());
    }
    client
        .put_manifest(repo, digest, media_type, bytes)
        .with_context(|| format!("cannot push manifest {digest} to {repo}"))?;
    report.manifests_pushed.push(digest.to_owned());
    Ok(())
}

/// One tag to set, and where it pointed before.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TagChange {
    pub tag: String,
    pub before: Option<String>,
    pub after: String,
    pub immutable: bool,
}

impl TagChange {
    pub fn is_noop(&self) -> bool {
        self.before.as_deref() == Some(self.after.as_str())
    }
}

/// Reads where each tag points now, and refuses to repoint an immutable
/// tag (vX.Y.Z, sha-…) unless `force`. Reads only: call before pushing
/// anything, and again right before tagging.
pub fn plan_tags(
    client: &Client,
    repo: &str,
    tags: &[(String, bool)],
    digest: &str,
    force: bool,
) -> Result<Vec<TagChange>> {
    let mut changes = Vec::new();
    for (tag, immutable) in tags {
        let before = client.manifest_digest(repo, tag)?;
        if *immutable && !force {
            if let Some(existing) = before.as_deref().filter(|d| *d != digest) {
                bail!(
                    "{}/{repo}:{tag} already points at {existing}, not {digest}; it is immutable: release a new version, or pass --force to repoint it",
                    client.host()
                );
            }
        }
        changes.push(TagChange {
            tag: tag.clone(),
            before,
            after: digest.to_owned(),
            immutable: *immutable,
        });
    }
    Ok(changes)
}

/// Points each tag at the index, in the given order: exact tags first,
/// floating tags last. Tags that already point there are left alone.
pub fn apply_tags(
    client: &Client,
    repo: &str,
    changes: &[TagChange],
    index_bytes: &[u8],
) -> Result<()> {
    for change in changes.iter().filter(|c| !c.is_noop()) {
        client
            .put_manifest(repo, &change.tag, oci::INDEX, index_bytes)
            .with_context(|| format!("cannot set tag {repo}:{}", change.tag))?;
    }
    Ok(())
}

/// The commit point of a publication: re-reads every tag right before it
/// moves (refusing an immutable one that moved meanwhile), then points them
/// at the pushed index, exact tags first and floating tags last.
pub fn move_tags(
    client: &Client,
    repo: &str,
    tags: &[(String, bool)],
    layout: &Layout,
    index_digest: &str,
    force: bool,
) -> Result<Vec<TagChange>> {
    let changes = plan_tags(client, repo, tags, index_digest, force)?;
    let index = layout.read_blob(index_digest)?;
    apply_tags(client, repo, &changes, &index)?;
    Ok(changes)
}
