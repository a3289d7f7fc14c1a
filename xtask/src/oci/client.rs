//! A small client for the OCI distribution API: manifests, blobs and tag
//! lists, with the registries' token authentication.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::oci;
use crate::oci::answer::Answer;
pub use crate::oci::reference::{is_loopback, Reference};
pub use crate::oci::transport::Upload;
use crate::oci::transport::{Request, Response, Transport};

pub struct Client {
    host: String,
    base: String,
    transport: Transport,
}

impl Client {
    /// A client for `host`. `insecure` allows plain HTTP, only for loopback.
    pub fn new(host: &str, insecure: bool) -> Result<Client> {
        if insecure && !is_loopback(host) {
            bail!("--insecure allows plain HTTP only to registries on loopback, not {host}; use TLS for other registries");
        }
        let scheme = if insecure { "http" } else { "https" };
        let api_host = if host == "docker.io" {
            "registry-1.docker.io"
        } else {
            host
        };
        let base = format!("{scheme}://{api_host}");
        Ok(Client {
            host: host.to_owned(),
            base: base.clone(),
            transport: Transport::new(host, base, insecure),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// A request on `repository`; `push` asks for the push scope.
    fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        repository: &str,
        push: bool,
    ) -> Result<Response> {
        self.send_for(
            method,
            url,
            headers,
            body,
            (repository, push),
            Answer::Document,
        )
    }

    /// [`Client::send`] for an answer other than a document.
    fn send_for(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        (repository, push): (&str, bool),
        answer: Answer,
    ) -> Result<Response> {
        self.transport.send(&Request {
            method,
            url,
            headers,
            body,
            repository,
            push,
            pull_from: None,
            answer,
            upload: None,
        })
    }

    /// The digest a tag or digest resolves to, or None if there is none.
    pub fn manifest_digest(&self, repository: &str, reference: &str) -> Result<Option<String>> {
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.base);
        let accept = oci::MANIFEST_ACCEPT.join(", ");
        let response = self.send(
            "HEAD",
            &url,
            &[("Accept", &accept)],
            None,
            repository,
            false,
        )?;
        match response.status {
            200 => match response.header("docker-content-digest") {
                Some(digest) => Ok(Some(digest.to_owned())),
                // Some registries omit the header on HEAD; GET and hash.
                None => Ok(self
                    .get_manifest(repository, reference)?
                    .map(|(_, bytes)| oci::digest_of(&bytes))),
            },
            404 => Ok(None),
            _ => bail!(
                "cannot look up {}/{repository}:{reference}: {}",
                self.host,
                response.error_text()
            ),
        }
    }

    /// The media type and bytes of a manifest or index, or None.
    pub fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<(String, Vec<u8>)>> {
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.base);
        let accept = oci::MANIFEST_ACCEPT.join(", ");
        let response = self.send("GET", &url, &[("Accept", &accept)], None, repository, false)?;
        match response.status {
            200 => {
                let media_type = oci::declared_media_type(&response.body)
                    .or_else(|| response.header("content-type").map(str::to_owned))
                    .unwrap_or_else(|| oci::MANIFEST.to_owned());
                if reference.starts_with("sha256:") && oci::digest_of(&response.body) != reference {
                    bail!("{}/{repository}@{reference} answered a manifest with another digest; the registry is corrupt or lying", self.host);
                }
                Ok(Some((media_type, response.body)))
            }
            404 => Ok(None),
            _ => bail!(
                "cannot fetch {}/{repository}:{reference}: {}",
                self.host,
                response.error_text()
            ),
        }
    }

    pub fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<()> {
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.base);
        let response = self.send(
            "PUT",
            &url,
            &[("Content-Type", media_type)],
            Some(bytes),
            repository,
            true,
        )?;
        if response.status != 201 && response.status != 200 {
            bail!(
                "{} rejected manifest {reference}: {}",
                self.host,
                response.error_text()
            );
        }
        Ok(())
    }

    pub fn blob_exists(&self, repository: &str, digest: &str) -> Result<bool> {
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base);
        let response = self.send("HEAD", &url, &[], None, repository, false)?;
        match response.status {
            200 => Ok(true),
            404 => Ok(false),
            _ => bail!(
                "cannot check blob {digest} in {}/{repository}: {}",
                self.host,
                response.error_text()
            ),
        }
    }

    /// A small blob (a config, a signature, a chart), in memory, checked
    /// against its digest. Layers go to a file: [`Client::get_blob_to`].
    pub fn get_blob(&self, repository: &str, digest: &str) -> Result<Vec<u8>> {
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base);
        let response = self.send_for("GET", &url, &[], None, (repository, false), Answer::Blob)?;
        if response.status != 200 {
            bail!(
                "cannot fetch blob {digest} from {}/{repository}: {}",
                self.host,
                response.error_text()
            );
        }
        if oci::digest_of(&response.body) != digest {
            bail!(
                "blob {digest} from {}/{repository} does not match its digest",
                self.host
            );
        }
        Ok(response.body)
    }

    /// Streams blob `digest` into the file `path`, whatever its size,
    /// checking it against its digest on the way; returns its size. A blob
    /// that does not match leaves no file.
    pub fn get_blob_to(&self, repository: &str, digest: &str, path: &Path) -> Result<u64> {
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base);
        let response = self.send_for(
            "GET",
            &url,
            &[],
            None,
            (repository, false),
            Answer::BlobFile(path),
        )?;
        if response.status != 200 {
            bail!(
                "cannot fetch blob {digest} from {}/{repository}: {}",
                self.host,
                response.error_text()
            );
        }
        match response.spooled {
            Some(spooled) if spooled.digest == digest => Ok(spooled.size),
            _ => {
                let _ = std::fs::remove_file(path);
                bail!(
                    "blob {digest} from {}/{repository} does not match its digest",
                    self.host
                )
            }
        }
    }

    /// Mounts a blob from another repository of the same registry, with a
    /// token for both (push here, pull there). A registry that declines
    /// opens an upload session instead, which the caller then fills with
    /// `finish_upload`: a declined mount costs no extra request. A mount
    /// refused outright (no pull right on `from`, a registry that forbids
    /// mounts) is `Refused`, and the caller uploads the blob as it would
    /// without a mount, as Docker and crane do.
    pub fn mount_blob(&self, repository: &str, digest: &str, from: &str) -> Result<Mount> {
        let url = format!(
            "{}/v2/{repository}/blobs/uploads/?mount={digest}&from={from}",
            self.base
        );
        let sent = self.transport.send(&Request {
            method: "POST",
            url: &url,
            headers: &[("Content-Length", "0")],
            body: Some(&[]),
            repository,
            push: true,
            pull_from: Some(from),
            answer: Answer::Document,
            upload: None,
        });
        let response = match sent {
            Ok(response) => response,
            Err(error) => return Ok(Mount::Refused(format!("{error:#}"))),
        };
        match response.status {
            201 => Ok(Mount::Mounted),
            202 => Ok(Mount::Upload(self.session(&response)?)),
            _ => Ok(Mount::Refused(response.error_text())),
        }
    }

    /// The POST that opens an upload session.
    fn post_upload(&self, repository: &str) -> Result<Response> {
        let url = format!("{}/v2/{repository}/blobs/uploads/", self.base);
        self.send(
            "POST",
            &url,
            &[("Content-Length", "0")],
            Some(&[]),
            repository,
            true,
        )
    }

    /// A monolithic upload: POST for a session, then PUT with the digest.
    pub fn upload_blob(&self, repository: &str, digest: &str, blob: &Upload) -> Result<()> {
        let response = self.post_upload(repository)?;
        if response.status != 202 {
            bail!(
                "{} refused to start an upload to {repository}: {}",
                self.host,
                response.error_text()
            );
        }
        let session = self.session(&response)?;
        self.finish_upload(repository, &session, digest, blob)
    }

    fn session(&self, response: &Response) -> Result<String> {
        let location = response
            .header("location")
            .context("the registry started an upload without a Location")?;
        Ok(self.absolute(location))
    }

    /// The PUT that ends an upload session with the whole blob, streamed.
    pub fn finish_upload(
        &self,
        repository: &str,
        session: &str,
        digest: &str,
        blob: &Upload,
    ) -> Result<()> {
        let mut url = session.to_owned();
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest={digest}"));
        let response = self.transport.send(&Request {
            method: "PUT",
            url: &url,
            headers: &[("Content-Type", "application/octet-stream")],
            body: None,
            repository,
            push: true,
            pull_from: None,
            answer: Answer::Document,
            upload: Some(blob),
        })?;
        if response.status != 201 {
            bail!(
                "{} rejected blob {digest}: {}",
                self.host,
                response.error_text()
            );
        }
        Ok(())
    }

    /// The referrers API's list for `digest`; None when the registry has no
    /// referrers API (it answers 404).
    pub fn referrers(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<Vec<oci::Descriptor>>> {
        let url = format!("{}/v2/{repository}/referrers/{digest}", self.base);
        let response = self.send(
            "GET",
            &url,
            &[("Accept", oci::INDEX)],
            None,
            repository,
            false,
        )?;
        match response.status {
            200 => {
                let index: oci::Index = serde_json::from_slice(&response.body).with_context(|| {
                    format!(
                        "cannot read the referrers of {digest} from {}: the answer is not an OCI index",
                        self.host()
                    )
                })?;
                Ok(Some(index.manifests))
            }
            404 => Ok(None),
            _ => bail!(
                "cannot list the referrers of {digest} in {}/{repository}: {}",
                self.host(),
                response.error_text()
            ),
        }
    }

    /// Every tag of a repository, following `Link` pagination; empty when the
    /// repository does not exist.
    pub fn list_tags(&self, repository: &str) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        let mut tags = Vec::new();
        let mut next = Some(format!("{}/v2/{repository}/tags/list?n=100", self.base));
        let mut pages = 0;
        let mut seen = std::collections::HashSet::new();
        while let Some(url) = next.take() {
            pages += 1;
            if pages > MAX_TAG_PAGES {
                bail!(
                    "cannot list the tags of {}/{repository}: more than {MAX_TAG_PAGES} pages of tags; the registry's pagination does not end, report it to its operator",
                    self.host
                );
            }
            let response = self.send("GET", &url, &[], None, repository, false)?;
            match response.status {
                200 => {}
                404 => return Ok(Vec::new()),
                _ => bail!(
                    "cannot list the tags of {}/{repository}: {}",
                    self.host,
                    response.error_text()
                ),
            }
            let page: TagList = serde_json::from_slice(&response.body)
                .context("the registry's tag list is not JSON")?;
            tags.extend(page.tags.unwrap_or_default());
            next = response
                .header("link")
                .and_then(next_link)
                .map(|link| self.absolute(&link));
            if let Some(url) = &next {
                let last = last_of(url);
                if !seen.insert(last.clone()) {
                    bail!(
                        "cannot list the tags of {}/{repository}: the registry pointed to the page after {last:?} twice; the registry's pagination is broken, report it to its operator",
                        self.host
                    );
                }
            }
        }
        Ok(tags)
    }

    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{}{location}", self.base)
        }
    }
}

/// Pages of tags followed at most: 100 000 tags at 100 a page. A registry
/// whose `Link` never ends must not keep a release waiting forever.
const MAX_TAG_PAGES: usize = 1000;

/// The `last` parameter of a next-page URL (the tag the page starts
/// after), or the whole URL when it has none: a registry that names a page
/// twice would be followed in a circle.
fn last_of(url: &str) -> String {
    url.split_once('?')
        .and_then(|(_, query)| query.split('&').find_map(|p| p.strip_prefix("last=")))
        .unwrap_or(url)
        .to_owned()
}

/// The target of `Link: <…>; rel="next"`.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links() {
        assert_eq!(
            next_link("</v2/app/tags/list?last=b&n=2>; rel=\"next\"").as_deref(),
            Some("/v2/app/tags/list?last=b&n=2")
        );
        assert_eq!(next_link("<https://x/y>; rel=\"prev\""), None);
    }

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(Client::new("ghcr.io", true).is_err());
        assert!(Client::new("127.0.0.1:5000", true).is_ok());
    }
}

/// What a cross-repository mount did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    Mounted,
    /// Declined: an upload session was opened at this URL instead.
    Upload(String),
    /// Refused, for this reason: the blob is uploaded instead.
    Refused(String),
}
