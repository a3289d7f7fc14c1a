//! A small client for the OCI distribution API: manifests, blobs and tag
//! lists, with the registries' token authentication.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::oci;
use crate::oci::auth::credentials;
pub use crate::oci::reference::{is_loopback, Reference};

pub struct Client {
    host: String,
    pub(super) base: String,
    agent: ureq::Agent,
    basic: Option<String>,
    tokens: RefCell<HashMap<String, String>>,
}

pub(super) struct Response {
    pub(super) status: u16,
    headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn error_text(&self) -> String {
        let body = String::from_utf8_lossy(&self.body);
        let body = body.trim();
        if body.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            format!(
                "HTTP {}: {}",
                self.status,
                body.chars().take(300).collect::<String>()
            )
        }
    }
}

/// Largest manifest or blob read into memory: layers of this image are a few MB.
const BODY_LIMIT: u64 = 512 * 1024 * 1024;

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
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        Ok(Client {
            host: host.to_owned(),
            base: format!("{scheme}://{api_host}"),
            agent,
            basic: credentials(host),
            tokens: RefCell::new(HashMap::new()),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub(super) fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        scope: &str,
    ) -> Result<Response> {
        let mut response = self.send_once(
            method,
            url,
            headers,
            body,
            self.authorization(scope).as_deref(),
        )?;
        if response.status == 401 {
            let challenge = response
                .header("www-authenticate")
                .unwrap_or_default()
                .to_owned();
            if self.authenticate(&challenge, scope)? {
                response = self.send_once(
                    method,
                    url,
                    headers,
                    body,
                    self.authorization(scope).as_deref(),
                )?;
            }
        }
        if response.status == 401 || response.status == 403 {
            bail!(
                "{} refused access to {scope} ({}); log in with `docker login {}` or set GITHUB_TOKEN for ghcr.io",
                self.host,
                response.error_text(),
                self.host
            );
        }
        Ok(response)
    }

    fn send_once(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        auth: Option<&str>,
    ) -> Result<Response> {
        let request = ureq::http::Request::builder().method(method).uri(url);
        let mut request = headers.iter().fold(request, |r, (k, v)| r.header(*k, *v));
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let result = match body {
            Some(body) => self.agent.run(
                request
                    .body(body.to_vec())
                    .context("cannot build the request")?,
            ),
            None => self
                .agent
                .run(request.body(()).context("cannot build the request")?),
        };
        let mut response = result.with_context(|| {
            format!(
                "cannot reach {} ({method} {url}); is the registry running?",
                self.host
            )
        })?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let body = if method == "HEAD" {
            Vec::new()
        } else {
            response
                .body_mut()
                .with_config()
                .limit(BODY_LIMIT)
                .read_to_vec()
                .with_context(|| {
                    format!(
                        "cannot read the answer to {method} {url} from {}",
                        self.host
                    )
                })?
        };
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    fn authorization(&self, scope: &str) -> Option<String> {
        if let Some(token) = self.tokens.borrow().get(scope) {
            return Some(format!("Bearer {token}"));
        }
        self.basic.as_ref().map(|b| format!("Basic {b}"))
    }

    /// Answers a `WWW-Authenticate` challenge; true if there is something
    /// new to retry with.
    fn authenticate(&self, challenge: &str, scope: &str) -> Result<bool> {
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            return Ok(false);
        };
        let param = |name: &str| {
            params.split(',').find_map(|p| {
                let (k, v) = p.trim().split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_owned())
            })
        };
        let realm = param("realm").context("the registry's Bearer challenge has no realm")?;
        let mut url = format!(
            "{realm}?scope={}",
            param("scope").unwrap_or_else(|| scope.to_owned())
        );
        if let Some(service) = param("service") {
            url.push_str(&format!("&service={service}"));
        }
        let auth = self.basic.as_ref().map(|b| format!("Basic {b}"));
        let response = self.send_once("GET", &url, &[], None, auth.as_deref())?;
        if response.status != 200 {
            bail!(
                "cannot get a token for {scope} from {realm} ({}); check your registry credentials",
                response.error_text()
            );
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let token: Token = serde_json::from_slice(&response.body)
            .context("the token service answered something that is not a token")?;
        let token = token
            .token
            .or(token.access_token)
            .context("the token service answered without a token")?;
        self.tokens.borrow_mut().insert(scope.to_owned(), token);
        Ok(true)
    }

    pub(super) fn scope(repository: &str, push: bool) -> String {
        format!(
            "repository:{repository}:{}",
            if push { "pull,push" } else { "pull" }
        )
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
            &Client::scope(repository, false),
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
        let response = self.send(
            "GET",
            &url,
            &[("Accept", &accept)],
            None,
            &Client::scope(repository, false),
        )?;
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
            &Client::scope(repository, true),
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
        let response = self.send("HEAD", &url, &[], None, &Client::scope(repository, false))?;
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

    pub fn get_blob(&self, repository: &str, digest: &str) -> Result<Vec<u8>> {
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base);
        let response = self.send("GET", &url, &[], None, &Client::scope(repository, false))?;
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

    /// Mounts a blob from another repository of the same registry; false if
    /// the registry declined (it then expects an upload).
    pub fn mount_blob(&self, repository: &str, digest: &str, from: &str) -> Result<bool> {
        let url = format!(
            "{}/v2/{repository}/blobs/uploads/?mount={digest}&from={from}",
            self.base
        );
        let response = self.send(
            "POST",
            &url,
            &[("Content-Length", "0")],
            Some(&[]),
            &Client::scope(repository, true),
        )?;
        match response.status {
            201 => Ok(true),
            202 => {
                // An upload session was opened instead; cancel it so it does
                // not linger.
                if let Some(location) = response.header("location") {
                    let url = self.absolute(location);
                    let _ = self.send("DELETE", &url, &[], None, &Client::scope(repository, true));
                }
                Ok(false)
            }
            _ => bail!(
                "cannot mount blob {digest} into {}/{repository}: {}",
                self.host,
                response.error_text()
            ),
        }
    }

    /// A monolithic upload: POST for a session, then PUT with the digest.
    pub fn upload_blob(&self, repository: &str, digest: &str, bytes: &[u8]) -> Result<()> {
        let scope = Client::scope(repository, true);
        let url = format!("{}/v2/{repository}/blobs/uploads/", self.base);
        let response = self.send("POST", &url, &[("Content-Length", "0")], Some(&[]), &scope)?;
        if response.status != 202 {
            bail!(
                "{} refused to start an upload to {repository}: {}",
                self.host,
                response.error_text()
            );
        }
        let location = response
            .header("location")
            .context("the registry started an upload without a Location")?;
        let mut url = self.absolute(location);
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest={digest}"));
        let response = self.send(
            "PUT",
            &url,
            &[("Content-Type", "application/octet-stream")],
            Some(bytes),
            &scope,
        )?;
        if response.status != 201 {
            bail!(
                "{} rejected blob {digest}: {}",
                self.host,
                response.error_text()
            );
        }
        Ok(())
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
        while let Some(url) = next.take() {
            let response = self.send("GET", &url, &[], None, &Client::scope(repository, false))?;
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
