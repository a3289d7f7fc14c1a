//! The pieces of the registry token flow that need no network: where a
//! token may be asked for, the request's URL or form, and the answer.

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::oci::reference::is_loopback;

/// RFC 3986 percent-encoding of everything but the unreserved characters:
/// scopes hold `:` and `,`, which a URI's query must not carry raw.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `service=…&scope=…&scope=…`, each value percent-encoded.
pub fn query(service: Option<&str>, scopes: &[String]) -> String {
    service
        .map(|s| format!("service={}", percent_encode(s)))
        .into_iter()
        .chain(
            scopes
                .iter()
                .map(|s| format!("scope={}", percent_encode(s))),
        )
        .collect::<Vec<_>>()
        .join("&")
}

/// The GET that asks for a token: the realm with the query appended.
pub fn token_url(realm: &str, service: Option<&str>, scopes: &[String]) -> String {
    let query = query(service, scopes);
    if query.is_empty() {
        realm.to_owned()
    } else if realm.contains('?') {
        format!("{realm}&{query}")
    } else {
        format!("{realm}?{query}")
    }
}

/// The OAuth2 form that trades an identity token for an access token.
pub fn refresh_form(service: Option<&str>, scopes: &[String], refresh_token: &str) -> String {
    format!(
        "grant_type=refresh_token&client_id=xtask&refresh_token={}&{}",
        percent_encode(refresh_token),
        query(service, scopes)
    )
}

/// The host of a URL: what is between `scheme://` and the path.
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    // Credentials in a URL are not part of the host.
    Some(authority.rsplit_once('@').map_or(authority, |(_, h)| h))
}

/// A realm must be HTTPS: the client sends it the user's password. Plain
/// HTTP is allowed only on loopback, and only with --insecure.
pub fn check_realm(registry: &str, realm: &str, insecure: bool) -> Result<()> {
    let lower = realm.to_ascii_lowercase();
    let host = url_host(realm).unwrap_or_default();
    if host.is_empty() {
        bail!("cannot log in to {registry}: its token realm {realm:?} is not an absolute URL; the registry is misconfigured");
    }
    if lower.starts_with("https://") {
        return Ok(());
    }
    if lower.starts_with("http://") {
        if insecure && is_loopback(host) {
            return Ok(());
        }
        bail!("cannot log in to {registry}: its token realm {realm} is plain HTTP; credentials go only to HTTPS realms (or to loopback with --insecure)");
    }
    bail!("cannot log in to {registry}: its token realm {realm} is neither HTTPS nor HTTP; the registry is misconfigured")
}

/// The token in a token service's JSON answer (`token`, or OAuth2's
/// `access_token`).
pub fn parse_token(body: &[u8]) -> Result<String> {
    #[derive(Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(body)
        .context("the token service answered something that is not JSON")?;
    match answer
        .token
        .filter(|t| !t.is_empty())
        .or(answer.access_token.filter(|t| !t.is_empty()))
    {
        Some(token) => Ok(token),
        None => bail!("the token service answered without a token"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            token_url(
                "https://auth.example/token",
                Some("registry example"),
                &["repository:org/app:pull,push".to_owned()]
            ),
            "https://auth.example/token?service=registry%20example&scope=repository%3Aorg%2Fapp%3Apull%2Cpush"
        );
        assert_eq!(
            token_url("https://a/t?x=1", None, &["a".into(), "b".into()]),
            "https://a/t?x=1&scope=a&scope=b"
        );
        assert_eq!(token_url("https://a/t", None, &[]), "https://a/t");
        assert_eq!(
            refresh_form(Some("s"), &["repository:a:pull".into()], "r+t/="),
            "grant_type=refresh_token&client_id=xtask&refresh_token=r%2Bt%2F%3D&service=s&scope=repository%3Aa%3Apull"
        );
        assert_eq!(percent_encode("AZaz09-._~"), "AZaz09-._~");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }

    #[test]
    fn realms() {
        assert!(check_realm("r", "https://auth.example/token", false).is_ok());
        assert!(check_realm("r", "HTTPS://auth.example", false).is_ok());
        assert!(check_realm("r", "http://127.0.0.1:5001/token", true).is_ok());
        for (realm, insecure) in [
            ("http://127.0.0.1:5001/token", false),
            ("http://auth.example/token", true),
            ("http://127.0.0.1.evil.example/token", true),
            ("ftp://auth.example/token", false),
            ("/token", false),
            ("", false),
        ] {
            assert!(check_realm("r", realm, insecure).is_err(), "{realm}");
        }
        assert_eq!(url_host("https://u:p@h.example:1/x?y"), Some("h.example:1"));
    }

    #[test]
    fn tokens() {
        assert_eq!(parse_token(br#"{"token":"a"}"#).unwrap(), "a");
        assert_eq!(parse_token(br#"{"access_token":"b"}"#).unwrap(), "b");
        assert_eq!(
            parse_token(br#"{"token":"","access_token":"c"}"#).unwrap(),
            "c"
        );
        assert!(parse_token(br#"{}"#).is_err());
        assert!(parse_token(b"<html>").is_err());
    }
}
