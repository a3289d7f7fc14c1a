//! One registry's HTTP: authentication as go-containerregistry does it
//! (no credentials until the registry challenges; Basic only to a registry
//! that asks for Basic; for Bearer, the credentials go to the token realm
//! only and the token, cached per scope, only to the registry), retries of
//! idempotent requests, and the registry's refusals turned into errors.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::oci::answer::{self, Answer, Spooled};
use crate::oci::auth::{self, Credential, Found};
use crate::oci::challenge;
use crate::oci::errors::{self, Failure};
use crate::oci::{retry, token};

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Empty for a HEAD, and for a success spooled to a file.
    pub body: Vec<u8>,
    /// A success's body streamed to the request's file.
    pub spooled: Option<Spooled>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The status and what the registry said, for error messages.
    pub fn error_text(&self) -> String {
        errors::summary(self.status, &self.body)
    }
}

/// A request to the registry API, for a repository.
pub struct Request<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<&'a [u8]>,
    pub repository: &'a str,
    pub push: bool,
    /// Another repository of the registry the request reads: the source of
    /// a cross-repository mount. The token asked for covers both, since the
    /// registry checks every scope of a request against one token.
    pub pull_from: Option<&'a str>,
    /// What a success's body is, which says how much of it is read.
    pub answer: Answer<'a>,
    /// A body streamed instead of `body`: a blob read from disk, never
    /// held in memory whole.
    pub upload: Option<&'a Upload<'a>>,
}

/// A blob to send: its size, and how to open its bytes, once per try.
pub struct Upload<'a> {
    pub size: u64,
    pub open: &'a (dyn Fn() -> Result<Box<dyn std::io::Read + Send>> + Sync),
}

#[derive(Debug, Clone)]
enum Scheme {
    /// Not challenged yet: requests go without credentials.
    Unknown,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

pub struct Transport {
    /// The host as the user named it, for messages and credentials.
    host: String,
    /// `scheme://api-host`: requests to anything else carry no credentials.
    pub base: String,
    insecure: bool,
    agent: ureq::Agent,
    /// Looked up on the first challenge: a registry that never asks never
    /// runs a credential helper.
    credential: Mutex<Option<Option<Found>>>,
    scheme: Mutex<Scheme>,
    tokens: Mutex<HashMap<String, String>>,
    /// Held while a token is fetched, so that blob uploads running side by
    /// side that all lack the push token wait for one fetch instead of each
    /// asking the token service. The other locks are never held across a
    /// request, so uploads that have their token are not serialized.
    fetching: Mutex<()>,
}

/// The guarded value even if another thread panicked holding the lock.
/// Every lock of the client guards a value replaced whole, never left
/// half-written, and a panicking upload thread ends the push anyway.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn scope(repository: &str, push: bool) -> String {
    format!(
        "repository:{repository}:{}",
        if push { "pull,push" } else { "pull" }
    )
}

/// The scopes of `request`, space-separated as in a challenge's `scope`:
/// the key of its token in the cache, and what a token is asked for.
fn request_scope(request: &Request) -> String {
    let own = scope(request.repository, request.push);
    match request.pull_from {
        Some(from) if from != request.repository => format!("{own} {}", scope(from, false)),
        _ => own,
    }
}

impl Transport {
    pub fn new(host: &str, base: String, insecure: bool) -> Transport {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        Transport {
            host: host.to_owned(),
            base,
            insecure,
            agent,
            credential: Mutex::new(None),
            scheme: Mutex::new(Scheme::Unknown),
            tokens: Mutex::new(HashMap::new()),
            fetching: Mutex::new(()),
        }
    }

    fn credential(&self) -> Result<Option<Found>> {
        if let Some(found) = lock(&self.credential).as_ref() {
            return Ok(found.clone());
        }
        // Looked up outside the lock: a credential helper is a process, and
        // two threads running it at first is harmless.
        let found = auth::credentials(&self.host)
            .with_context(|| format!("cannot find credentials for {}", self.host))?;
        *lock(&self.credential) = Some(found.clone());
        Ok(found)
    }

    /// Sends `request`, authenticating when challenged. Statuses the caller
    /// can act on (2xx, 3xx, 404, other 4xx) come back as a Response;
    /// 401, 403, 429 and 5xx as an error that says what to do.
    pub fn send(&self, request: &Request) -> Result<Response> {
        let scope = request_scope(request);
        let mut auth = self.authorization(&scope, request.url)?;
        let mut response = self.send_with_retries(request, auth.as_deref())?;
        if response.status == 401 && self.answer_challenge(&response, &scope, auth.as_deref())? {
            auth = self.authorization(&scope, request.url)?;
            response = self.send_with_retries(request, auth.as_deref())?;
        }
        match response.status {
            401 | 403 | 429 | 500..=599 => {
                let found = lock(&self.credential).clone().flatten();
                Err(errors::describe(&Failure {
                    host: &self.host,
                    repository: request.repository,
                    push: request.push,
                    status: response.status,
                    body: &response.body,
                    credential: found.as_ref().map(|f| f.source.as_str()),
                    authenticated: auth.is_some() && lock(&self.tokens).contains_key(&scope),
                    tries: if retry::is_idempotent(request.method, request.url) {
                        retry::TRIES
                    } else {
                        1
                    },
                    retry_after: response.header("retry-after"),
                }))
            }
            _ => Ok(response),
        }
    }

    /// The Authorization for a request to `url`, fetching a token for
    /// `scope` when the registry is known to want one. None for any URL
    /// outside the registry (an upload Location on a storage host).
    fn authorization(&self, scope: &str, url: &str) -> Result<Option<String>> {
        let ours = url
            .strip_prefix(&self.base)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        if !ours {
            return Ok(None);
        }
        let scheme = lock(&self.scheme).clone();
        match scheme {
            Scheme::Unknown => Ok(None),
            Scheme::Basic => Ok(self.credential()?.and_then(|f| f.credential.basic_header())),
            Scheme::Bearer { realm, service } => {
                let token = self.token(&realm, service.as_deref(), scope, None)?;
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// Answers a 401's challenge; true if there is something new to try
    /// the request again with.
    fn answer_challenge(
        &self,
        response: &Response,
        scope: &str,
        sent: Option<&str>,
    ) -> Result<bool> {
        let Some(header) = response.header("www-authenticate") else {
            return Ok(false);
        };
        let challenges = challenge::parse(header)
            .with_context(|| format!("cannot authenticate to {}", self.host))?;
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            if sent.is_some_and(|s| s.starts_with("Bearer ")) {
                // A token refused for want of scope: asking again would get
                // the same grant. Otherwise it expired: get a fresh one.
                if bearer.param("error") == Some("insufficient_scope") {
                    return Ok(false);
                }
            }
            let realm = bearer.param("realm").with_context(|| {
                format!("cannot authenticate to {}: its Bearer challenge has no realm; the registry is misconfigured", self.host)
            })?;
            token::check_realm(&self.host, realm, self.insecure)?;
            let service = bearer.param("service").map(str::to_owned);
            *lock(&self.scheme) = Scheme::Bearer {
                realm: realm.to_owned(),
                service: service.clone(),
            };
            let stale = sent.and_then(|s| s.strip_prefix("Bearer "));
            self.token(realm, service.as_deref(), scope, stale)?;
            return Ok(true);
        }
        if challenges.iter().any(|c| c.scheme == "basic") && sent.is_none() {
            let has_basic = self
                .credential()?
                .is_some_and(|f| matches!(f.credential, Credential::Basic { .. }));
            if has_basic {
                *lock(&self.scheme) = Scheme::Basic;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The cached token for `scope`, unless it is `stale` (the one the
    /// registry just refused); otherwise a fresh one from `realm`. Another
    /// thread's fetch is waited for and its token used: a burst of uploads
    /// asks the token service once.
    fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        stale: Option<&str>,
    ) -> Result<String> {
        let cached = |tokens: &HashMap<String, String>| {
            tokens
                .get(scope)
                .filter(|t| Some(t.as_str()) != stale)
                .cloned()
        };
        if let Some(token) = cached(&lock(&self.tokens)) {
            return Ok(token);
        }
        let _fetching = lock(&self.fetching);
        if let Some(token) = cached(&lock(&self.tokens)) {
            return Ok(token);
        }
        let token = self.fetch_token(realm, service, scope)?;
        lock(&self.tokens).insert(scope.to_owned(), token.clone());
        Ok(token)
    }

    /// Gets a token for `scope` from `realm`. The user's credentials go
    /// here, and only here, for a Bearer registry.
    fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<String> {
        let scopes: Vec<String> = scope.split(' ').map(str::to_owned).collect();
        let found = self.credential()?;
        let response = match found.as_ref().map(|f| &f.credential) {
            Some(Credential::IdentityToken(refresh)) => {
                let form = token::refresh_form(service, &scopes, refresh);
                let request = Request {
                    method: "POST",
                    url: realm,
                    headers: &[("Content-Type", "application/x-www-form-urlencoded")],
                    body: Some(form.as_bytes()),
                    repository: "",
                    push: false,
                    pull_from: None,
                    answer: Answer::Token,
                    upload: None,
                };
                self.send_once(&request, None)
            }
            credential => {
                let url = token::token_url(realm, service, &scopes);
                let basic = credential.and_then(Credential::basic_header);
                let request = Request {
                    method: "GET",
                    url: &url,
                    headers: &[],
                    body: None,
                    repository: "",
                    push: false,
                    pull_from: None,
                    answer: Answer::Token,
                    upload: None,
                };
                self.send_with_retries(&request, basic.as_deref())
            }
        }
        .with_context(|| format!("cannot get a token for {scope} from {realm}"))?;
        if response.status != 200 {
            let who = found
                .as_ref()
                .map_or("an anonymous user".to_owned(), |f| f.source.clone());
            anyhow::bail!(
                "cannot log in to {}: its token service {realm} refused {who} for {scope} ({}); {}",
                self.host,
                response.error_text(),
                if found.is_some() {
                    format!(
                        "the credentials are wrong or expired: log in again with `docker login {}`",
                        self.host
                    )
                } else {
                    format!("log in with `docker login {}`", self.host)
                }
            );
        }
        token::parse_token(&response.body)
            .with_context(|| format!("cannot get a token for {scope} from {realm}"))
    }

    /// Sends, and for an idempotent request tries again on 429, 5xx or a
    /// dropped connection, up to `retry::TRIES` in all.
    fn send_with_retries(&self, request: &Request, auth: Option<&str>) -> Result<Response> {
        let idempotent = retry::is_idempotent(request.method, request.url);
        let mut attempt = 1;
        loop {
            let last = !idempotent || attempt >= retry::TRIES;
            let wait = match self.send_once(request, auth) {
                Ok(response) if !last && retry::is_retryable_status(response.status) => {
                    match retry::delay(attempt, response.header("retry-after")) {
                        Some(wait) => wait,
                        None => return Ok(response),
                    }
                }
                Err(e)
                    if !last
                        && e.downcast_ref::<ureq::Error>()
                            .is_some_and(retry::is_transient) =>
                {
                    retry::delay(attempt, None).unwrap_or_default()
                }
                Err(e) if idempotent && attempt > 1 => {
                    return Err(e.context(format!("still failing after {attempt} tries")))
                }
                other => return other,
            };
            std::thread::sleep(wait);
            attempt += 1;
        }
    }

    fn send_once(&self, request: &Request, auth: Option<&str>) -> Result<Response> {
        let (method, url) = (request.method, request.url);
        let builder = ureq::http::Request::builder().method(method).uri(url);
        let mut builder = request
            .headers
            .iter()
            .fold(builder, |r, (k, v)| r.header(*k, *v));
        if let Some(auth) = auth {
            builder = builder.header("Authorization", auth);
        }
        let built = |e| format_request_error(e, method, url);
        let result = match (request.upload, request.body) {
            (Some(upload), _) => {
                let reader = (upload.open)()?;
                let builder = builder.header("Content-Length", upload.size.to_string());
                let body = ureq::SendBody::from_owned_reader(reader);
                self.agent.run(builder.body(body).map_err(built)?)
            }
            (None, Some(body)) => self.agent.run(builder.body(body.to_vec()).map_err(built)?),
            (None, None) => self.agent.run(builder.body(()).map_err(built)?),
        };
        let mut response = result.map_err(|err| {
            let hint = unreachable_hint(&err, &self.host);
            anyhow::Error::from(err).context(format!(
                "cannot reach {} ({method} {url}); {hint}",
                self.host
            ))
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
            answer::Body {
                bytes: Vec::new(),
                spooled: None,
            }
        } else {
            answer::read(
                response.body_mut().as_reader(),
                (200..300).contains(&status),
                request.answer,
                &format!("{method} {url} from {}", self.host),
            )?
        };
        Ok(Response {
            status,
            headers,
            body: body.bytes,
            spooled: body.spooled,
        })
    }
}

/// What to check when a request got no answer: a name that does not
/// resolve is a typo or DNS, not a stopped registry. (ureq reports a failed
/// lookup as an I/O error, so the name is looked up again to tell.)
fn unreachable_hint(err: &ureq::Error, host: &str) -> String {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let resolves = || {
        use std::net::ToSocketAddrs;
        (name.trim_start_matches('[').trim_end_matches(']'), 443)
            .to_socket_addrs()
            .is_ok_and(|mut addrs| addrs.next().is_some())
    };
    match err {
        ureq::Error::Timeout(_) => {
            "it did not answer in time; check the network path to the registry".to_owned()
        }
        ureq::Error::HostNotFound | ureq::Error::Io(_) if !resolves() => format!(
            "the name {name} does not resolve; check the registry's host name and this machine's DNS"
        ),
        _ => "is the registry running?".to_owned(),
    }
}

fn format_request_error(e: ureq::http::Error, method: &str, url: &str) -> anyhow::Error {
    anyhow::format_err!("cannot build the request {method} {url}: {e}; this is a bug in the xtask")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_does_not_resolve_is_not_called_a_stopped_registry() {
        assert_eq!(
            unreachable_hint(&ureq::Error::HostNotFound, "registry.invalid:5000"),
            "the name registry.invalid does not resolve; check the registry's host name and this machine's DNS"
        );
        assert_eq!(
            unreachable_hint(
                &ureq::Error::Io(std::io::Error::other("lookup failed")),
                "registry.invalid"
            ),
            "the name registry.invalid does not resolve; check the registry's host name and this machine's DNS"
        );
        let refused = ureq::Error::Io(std::io::ErrorKind::ConnectionRefused.into());
        for host in ["127.0.0.1:9", "localhost:9", "[::1]:9"] {
            assert_eq!(unreachable_hint(&refused, host), "is the registry running?");
        }
    }
}
