//! Registry failures told so that a user can act: which registry, which
//! repository, what it said (the OCI `errors[]` body), and what to do.

use serde::Deserialize;

/// One entry of the distribution API's `{"errors": [...]}` body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ApiError {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

pub fn parse_errors(body: &[u8]) -> Vec<ApiError> {
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        errors: Vec<ApiError>,
    }
    serde_json::from_slice::<Body>(body)
        .map(|b| b.errors)
        .unwrap_or_default()
}

/// `HTTP 401: UNAUTHORIZED (authentication required)`, or the start of a
/// body that is not the API's error document.
pub fn summary(status: u16, body: &[u8]) -> String {
    let errors = parse_errors(body);
    if !errors.is_empty() {
        let said = errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{} ({})", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        return format!("HTTP {status}: {said}");
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!(
            "HTTP {status}: {}",
            text.chars().take(300).collect::<String>()
        )
    }
}

/// What the client knew when the registry said no.
pub struct Failure<'a> {
    pub host: &'a str,
    pub repository: &'a str,
    pub push: bool,
    pub status: u16,
    pub body: &'a [u8],
    /// Where the credential came from (`auths in …`, a helper,
    /// GITHUB_TOKEN); None when the request went anonymous.
    pub credential: Option<&'a str>,
    /// Whether the credential was accepted (a token was issued for it or
    /// Basic was taken for another request): a refusal is then about
    /// permission, not identity.
    pub authenticated: bool,
    /// Tries made, for 429 and 5xx.
    pub tries: u32,
    pub retry_after: Option<&'a str>,
}

fn login_hint(host: &str) -> String {
    if host == "ghcr.io" {
        "set GITHUB_TOKEN (a workflow's token, or a personal access token with the packages scopes) or run `docker login ghcr.io`".to_owned()
    } else {
        format!("run `docker login {host}` (or configure a credential helper for it)")
    }
}

fn permission_hint(host: &str, push: bool) -> String {
    match (host == "ghcr.io", push) {
        (true, true) => "GITHUB_TOKEN needs `packages: write` (in the workflow's `permissions:`), and the package must give this repository write access in its settings".to_owned(),
        (true, false) => "GITHUB_TOKEN needs `packages: read`, and a private package must give this repository access in its settings".to_owned(),
        (false, true) => format!("ask the owner of {host} for push access, or log in as a user who has it"),
        (false, false) => format!("check the repository name, or ask the owner of {host} for pull access"),
    }
}

/// The error for a final answer of 401, 403, 404, 429 or 5xx.
pub fn describe(f: &Failure) -> anyhow::Error {
    let (host, repo) = (f.host, f.repository);
    let said = summary(f.status, f.body);
    let action = if f.push { "push" } else { "pull" };
    let message = match f.status {
        401 if f.credential.is_none() => format!(
            "not logged in to {host}, which requires it to {action} {repo} ({said}); {}",
            login_hint(host)
        ),
        401 | 403 if f.authenticated || f.status == 403 => format!(
            "no {action} permission for {repo} on {host} {} ({said}); {}",
            f.credential.map_or("as an anonymous user".to_owned(), |c| format!(
                "with the credentials from {c}"
            )),
            permission_hint(host, f.push)
        ),
        401 => format!(
            "{host} rejected the credentials from {} ({said}); they are wrong or expired: {}",
            f.credential.unwrap_or("nowhere"),
            login_hint(host)
        ),
        404 => format!(
            "{repo} not found on {host} ({said}); check the image name{}",
            if f.credential.is_none() {
                format!(", or log in: a private repository looks missing to anonymous users ({})", login_hint(host))
            } else {
                String::new()
            }
        ),
        429 => format!(
            "{host} is limiting the rate of requests ({said}; {} tries{}); wait and re-run{}",
            f.tries,
            f.retry_after
                .map(|s| format!(", it asked to wait {s} s"))
                .unwrap_or_default(),
            if f.credential.is_none() {
                format!(", or log in for a higher limit: {}", login_hint(host))
            } else {
                String::new()
            }
        ),
        500..=599 => format!(
            "{host} failed while serving {repo} ({said}; {} tries); the registry is in trouble: re-run later",
            f.tries
        ),
        _ => format!("{host} refused a request for {repo} ({said})"),
    };
    anyhow::Error::msg(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(
        status: u16,
        push: bool,
        credential: Option<&'static str>,
        authenticated: bool,
    ) -> String {
        let body = br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied","detail":null}]}"#;
        describe(&Failure {
            host: "registry.example",
            repository: "team/app",
            push,
            status,
            body,
            credential,
            authenticated,
            tries: 3,
            retry_after: None,
        })
        .to_string()
    }

    #[test]
    fn bodies() {
        assert_eq!(
            summary(
                401,
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
            ),
            "HTTP 401: UNAUTHORIZED (authentication required)"
        );
        assert_eq!(summary(502, b"  "), "HTTP 502");
        assert_eq!(
            summary(500, b"<html>oops</html>"),
            "HTTP 500: <html>oops</html>"
        );
    }

    #[test]
    fn messages() {
        let cases: &[(String, &[&str])] = &[
            (
                failure(401, true, None, false),
                &[
                    "not logged in to registry.example",
                    "push team/app",
                    "docker login registry.example",
                ],
            ),
            (
                failure(401, true, Some("auths in c"), true),
                &[
                    "no push permission for team/app on registry.example with the credentials from auths in c",
                    "DENIED",
                    "push access",
                ],
            ),
            (
                failure(403, false, Some("h"), false),
                &["no pull permission for team/app on registry.example"],
            ),
            (
                failure(401, false, Some("h"), false),
                &[
                    "registry.example rejected the credentials from h",
                    "wrong or expired",
                ],
            ),
            (
                failure(404, false, None, false),
                &["team/app not found on registry.example", "log in"],
            ),
            (
                failure(429, false, Some("h"), true),
                &["limiting the rate", "3 tries", "wait and re-run"],
            ),
            (
                failure(503, true, Some("h"), true),
                &[
                    "registry.example failed while serving team/app",
                    "HTTP 503",
                    "re-run later",
                ],
            ),
        ];
        for (message, needles) in cases {
            for needle in *needles {
                assert!(message.contains(needle), "{needle:?} not in {message:?}");
            }
            assert!(!message.ends_with('.'), "{message}");
        }
        let ghcr = describe(&Failure {
            host: "ghcr.io",
            repository: "o/app",
            push: true,
            status: 403,
            body: b"",
            credential: Some("GITHUB_TOKEN"),
            authenticated: true,
            tries: 1,
            retry_after: None,
        })
        .to_string();
        assert!(
            ghcr.starts_with("no push permission for o/app on ghcr.io"),
            "{ghcr}"
        );
        assert!(
            ghcr.contains("GITHUB_TOKEN needs `packages: write`"),
            "{ghcr}"
        );
    }
}
