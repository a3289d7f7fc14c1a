//! When a registry request is tried again: only requests that may be
//! repeated without changing the outcome (GET, HEAD, and PUT of a
//! manifest or blob by digest), only for answers that say "later" (429,
//! 5xx) or a dropped connection, and at most `TRIES` times.

use std::time::Duration;

/// Tries in all, the first included.
pub const TRIES: u32 = 3;

/// A longer Retry-After is not waited for: the run fails and says when to
/// come back, rather than hanging silently.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Whether repeating the request cannot change the result. A PUT by
/// digest stores the same content under the same name; a POST opens a new
/// upload session, a PATCH appends, a DELETE may already have happened,
/// and a PUT by tag may race another writer's tag move.
pub fn is_idempotent(method: &str, url: &str) -> bool {
    match method {
        "GET" | "HEAD" => true,
        "PUT" => {
            let path = url.split_once('?').map_or(url, |(p, _)| p);
            let query = url.split_once('?').map_or("", |(_, q)| q);
            path.contains("/manifests/sha256:")
                || (path.contains("/blobs/uploads/")
                    && query.split('&').any(|p| p.starts_with("digest=")))
        }
        _ => false,
    }
}

/// Statuses that say "try again later".
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504)
}

/// Transport failures worth another try: the connection dropped or timed
/// out midway. A refused connection is not: nothing is listening.
pub fn is_transient(error: &ureq::Error) -> bool {
    use std::io::ErrorKind;
    match error {
        ureq::Error::Io(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof
                | ErrorKind::TimedOut
        ),
        ureq::Error::Timeout(_) | ureq::Error::Protocol(_) => true,
        _ => false,
    }
}

/// How long to wait before try `attempt + 1` (`attempt` counts from 1):
/// the server's Retry-After in seconds when it gave one, else 250 ms
/// doubling. None when the server asks for longer than `MAX_WAIT`.
pub fn delay(attempt: u32, retry_after: Option<&str>) -> Option<Duration> {
    if let Some(seconds) = retry_after.and_then(|v| v.trim().parse::<u64>().ok()) {
        let wait = Duration::from_secs(seconds);
        return (wait <= MAX_WAIT).then_some(wait);
    }
    // An HTTP-date or garbage: back off as if none were given.
    Some(Duration::from_millis(250) * 2u32.saturating_pow(attempt.saturating_sub(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_repeated() {
        let cases = [
            ("GET", "http://r/v2/a/manifests/v1", true),
            ("HEAD", "http://r/v2/a/blobs/sha256:ab", true),
            ("PUT", "http://r/v2/a/manifests/sha256:ab", true),
            ("PUT", "http://r/v2/a/manifests/v1", false),
            (
                "PUT",
                "http://r/v2/a/blobs/uploads/u?_state=x&digest=sha256:ab",
                true,
            ),
            ("PUT", "http://r/v2/a/blobs/uploads/u?_state=x", false),
            ("POST", "http://r/v2/a/blobs/uploads/", false),
            ("PATCH", "http://r/v2/a/blobs/uploads/u", false),
            ("DELETE", "http://r/v2/a/manifests/sha256:ab", false),
        ];
        for (method, url, expected) in cases {
            assert_eq!(is_idempotent(method, url), expected, "{method} {url}");
        }
        for (status, expected) in [
            (429, true),
            (500, true),
            (503, true),
            (501, false),
            (404, false),
            (401, false),
        ] {
            assert_eq!(is_retryable_status(status), expected, "{status}");
        }
    }

    #[test]
    fn delays() {
        assert_eq!(delay(1, None), Some(Duration::from_millis(250)));
        assert_eq!(delay(2, None), Some(Duration::from_millis(500)));
        assert_eq!(delay(1, Some(" 2 ")), Some(Duration::from_secs(2)));
        assert_eq!(delay(1, Some("0")), Some(Duration::ZERO));
        assert_eq!(delay(1, Some("3600")), None);
        assert_eq!(
            delay(1, Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(Duration::from_millis(250))
        );
    }
}
