//! Publishing a manifest tree (an OCI layout's image, or an archive's):
//! blobs first, up to `PARALLEL_UPLOADS` at once, then platform manifests,
//! then the index, one at a time and all by digest; tags last, exact
//! before floating. A failure at any point leaves every tag where it was.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::oci::client::{Client, Mount, Upload};
use crate::oci::transport::lock;
use crate::oci::{self, Descriptor, Layout};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PushReport {
    pub uploaded: Vec<String>,
    pub mounted: Vec<String>,
    pub skipped: Vec<String>,
    pub manifests_pushed: Vec<String>,
}

/// Blob uploads of one push running at once. Four gives most of the gain
/// where each request waits on latency (loopback registries included, where
/// the registry's own hashing and storage is the wait) while staying polite
/// to a registry that rate-limits per client; it also bounds the blobs held
/// in memory at once.
pub const PARALLEL_UPLOADS: usize = 4;

/// Where the blobs and manifests of a tree come from: an OCI layout on
/// disk, or an archive read into memory. Sync: blobs are read by the upload
/// threads.
pub trait BlobSource: Sync {
    /// The bytes of `digest`, checked against it.
    fn blob(&self, digest: &str) -> Result<Vec<u8>>;

    /// The size of `digest` and a reader of its bytes, checked against it
    /// first: what an upload streams. A source on disk reads the file and
    /// holds none of it; the default holds the blob.
    fn open(&self, digest: &str) -> Result<(u64, Box<dyn Read + Send>)> {
        let bytes = self.blob(digest)?;
        Ok((bytes.len() as u64, Box::new(std::io::Cursor::new(bytes))))
    }
}

impl BlobSource for Layout {
    fn blob(&self, digest: &str) -> Result<Vec<u8>> {
        self.read_blob(digest)
    }

    fn open(&self, digest: &str) -> Result<(u64, Box<dyn Read + Send>)> {
        let path = self.blob_path(digest);
        let open = || {
            std::fs::File::open(&path)
                .with_context(|| format!("blob {digest} is missing from the layout {}", self.dir))
        };
        if oci::digest_of_reader(open()?)? != digest {
            bail!(
                "blob {path} does not match its digest; delete {} and build again",
                self.dir
            );
        }
        let file = open()?;
        let size = file.metadata()?.len();
        Ok((size, Box::new(file)))
    }
}

impl BlobSource for BTreeMap<String, Vec<u8>> {
    fn blob(&self, digest: &str) -> Result<Vec<u8>> {
        let bytes = self
            .get(digest)
            .with_context(|| format!("blob {digest} is missing from the archive"))?;
        if oci::digest_of(bytes) != digest {
            bail!("blob {digest} in the archive does not match its digest; copy the archive again and check it with sha256sum -c");
        }
        Ok(bytes.clone())
    }
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
    push_tree(client, repo, layout, index_digest, oci::INDEX, mount_from)
}

/// Pushes the manifest or index `digest` and everything it refers to, by
/// digest, setting no tag. Every blob goes before any manifest, and every
/// manifest before the index that lists it: a registry that dies at any
/// point holds no manifest whose content is missing, and a re-run uploads
/// only what never arrived. A `subject` is not followed: it is the image a
/// signature is about, pushed as its own tree.
pub fn push_tree(
    client: &Client,
    repo: &str,
    source: &impl BlobSource,
    digest: &str,
    media_type: &str,
    mount_from: Option<&str>,
) -> Result<PushReport> {
    let mut manifests = Vec::new();
    let mut blobs = Vec::new();
    walk(source, digest, media_type, &mut manifests, &mut blobs)?;
    let mut report = push_blobs(client, repo, source, &blobs, mount_from)?;
    for (digest, media_type, bytes) in manifests {
        put_manifest_if_missing(client, repo, &digest, &media_type, &bytes, &mut report)?;
    }
    Ok(report)
}

/// What became of one blob.
enum Outcome {
    Uploaded,
    Mounted,
    Skipped,
}

/// Puts every blob of `blobs` into `repo`, up to `PARALLEL_UPLOADS` at a
/// time. The report lists them in the order of `blobs`, whatever the
/// timing. The first failure stops the others from starting a new blob and
/// is the error; blobs already under way finish, which is harmless since
/// nothing refers to them yet.
fn push_blobs(
    client: &Client,
    repo: &str,
    source: &impl BlobSource,
    blobs: &[String],
    mount_from: Option<&str>,
) -> Result<PushReport> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let outcomes: Mutex<Vec<Option<Outcome>>> = Mutex::new(blobs.iter().map(|_| None).collect());
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let worker = || {
        while !failed.load(Ordering::SeqCst) {
            let i = next.fetch_add(1, Ordering::SeqCst);
            let Some(blob) = blobs.get(i) else {
                break;
            };
            match push_blob(client, repo, source, blob, mount_from)
                .with_context(|| format!("cannot upload blob {blob} to {repo}"))
            {
                Ok(outcome) => lock(&outcomes)[i] = Some(outcome),
                Err(err) => {
                    failed.store(true, Ordering::SeqCst);
                    lock(&first_error).get_or_insert(err);
                }
            }
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..PARALLEL_UPLOADS.min(blobs.len()) {
            scope.spawn(worker);
        }
        worker();
    });
    if let Some(err) = lock(&first_error).take() {
        return Err(err);
    }
    let mut report = PushReport::default();
    let outcomes = std::mem::take(&mut *lock(&outcomes));
    for (blob, outcome) in blobs.iter().zip(outcomes) {
        let list = match outcome {
            Some(Outcome::Uploaded) => &mut report.uploaded,
            Some(Outcome::Mounted) => &mut report.mounted,
            Some(Outcome::Skipped) => &mut report.skipped,
            None => bail!("blob {blob} was never pushed to {repo}; this is a bug in the xtask"),
        };
        list.push(blob.clone());
    }
    Ok(report)
}

/// Skips, mounts or uploads one blob.
fn push_blob(
    client: &Client,
    repo: &str,
    source: &impl BlobSource,
    blob: &str,
    mount_from: Option<&str>,
) -> Result<Outcome> {
    if client.blob_exists(repo, blob)? {
        return Ok(Outcome::Skipped);
    }
    let session = match mount_from {
        Some(from) => match client.mount_blob(repo, blob, from)? {
            Mount::Mounted => return Ok(Outcome::Mounted),
            Mount::Upload(session) => Some(session),
            Mount::Refused(_) => None,
        },
        None => None,
    };
    // Streamed from the source: the first try uses the reader opened here
    // (which gave the size), a later try opens it again.
    let (size, first) = source.open(blob)?;
    let first = Mutex::new(Some(first));
    let open = || match lock(&first).take() {
        Some(reader) => Ok(reader),
        None => source.open(blob).map(|(_, reader)| reader),
    };
    let upload = Upload { size, open: &open };
    match session {
        Some(session) => client.finish_upload(repo, &session, blob, &upload)?,
        None => client.upload_blob(repo, blob, &upload)?,
    }
    Ok(Outcome::Uploaded)
}

/// The manifests of a tree, children before their index, and the blobs of
/// its image manifests, layers before config.
fn walk(
    source: &impl BlobSource,
    digest: &str,
    media_type: &str,
    manifests: &mut Vec<(String, String, Vec<u8>)>,
    blobs: &mut Vec<String>,
) -> Result<()> {
    if manifests.iter().any(|(d, _, _)| d == digest) {
        return Ok(());
    }
    let bytes = source.blob(digest)?;
    let document: Value =
        serde_json::from_slice(&bytes).with_context(|| format!("manifest {digest} is not JSON"))?;
    if let Some(children) = document["manifests"].as_array() {
        for child in children {
            let child: Descriptor = serde_json::from_value(child.clone())
                .with_context(|| format!("an entry of index {digest} is not a descriptor"))?;
            walk(source, &child.digest, &child.media_type, manifests, blobs)?;
        }
    } else {
        for blob in manifest_blobs(&document, digest)? {
            if !blobs.iter().any(|b| b == blob) {
                blobs.push(blob.to_owned());
            }
        }
    }
    manifests.push((digest.to_owned(), media_type.to_owned(), bytes));
    Ok(())
}

/// The layer and config digests of an image (or artifact) manifest,
/// layers first.
pub fn manifest_blobs<'a>(document: &'a Value, digest: &str) -> Result<Vec<&'a str>> {
    let layers = document["layers"].as_array().into_iter().flatten();
    layers
        .chain(document.get("config"))
        .map(|blob| {
            blob["digest"]
                .as_str()
                .with_context(|| format!("a blob of manifest {digest} has no digest"))
        })
        .collect()
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

/// Which published release a floating tag must stay on, given the tags the
/// repository has now: None to let it move. The tag policy answers it.
pub type NewerRelease<'a> = &'a dyn Fn(&str, &[String]) -> Option<String>;

/// What `move_tags` did: the tags it moved, and the floating tags it left
/// (or put back) on a newer release, each with why.
#[derive(Debug, Default)]
pub struct Moved {
    pub changes: Vec<TagChange>,
    pub kept: Vec<String>,
}

/// The commit point of a publication: re-reads every tag right before it
/// moves (refusing an immutable one that moved meanwhile), then points them
/// at the pushed index, exact tags first and floating tags last.
///
/// A floating tag is checked against the published releases right before
/// its move, which is skipped when `newer` names a newer release, and again
/// right after: distribution has no conditional write, so another release
/// may have moved the tag between the check and the write, and then the
/// tag is put back on that newer release.
pub fn move_tags(
    client: &Client,
    repo: &str,
    tags: &[(String, bool)],
    index: &[u8],
    index_digest: &str,
    force: bool,
    newer: NewerRelease,
) -> Result<Moved> {
    let changes = plan_tags(client, repo, tags, index_digest, force)?;
    let mut moved = Moved::default();
    for change in changes {
        if change.immutable {
            apply_tags(client, repo, std::slice::from_ref(&change), index)?;
            moved.changes.push(change);
            continue;
        }
        let published = client.list_tags(repo)?;
        if let Some(release) = newer(&change.tag, &published) {
            let note = format!("no {}: {release} was published meanwhile", change.tag);
            eprintln!("{note}; {} stays where it is", change.tag);
            moved.kept.push(note);
            continue;
        }
        apply_tags(client, repo, std::slice::from_ref(&change), index)?;
        let published = client.list_tags(repo)?;
        if let Some(release) = newer(&change.tag, &published) {
            let (media_type, bytes) = client.get_manifest(repo, &release)?.with_context(|| {
                format!("cannot put {repo}:{} back on {release}: {release} is gone; point it at the newest release by hand", change.tag)
            })?;
            client
                .put_manifest(repo, &change.tag, &media_type, &bytes)
                .with_context(|| {
                    format!(
                        "cannot put {repo}:{} back on {release}; point it there by hand",
                        change.tag
                    )
                })?;
            let note = format!("no {}: {release} was published while it moved", change.tag);
            eprintln!("{note}; {} is back on {release}", change.tag);
            moved.kept.push(note);
            continue;
        }
        moved.changes.push(change);
    }
    Ok(moved)
}
