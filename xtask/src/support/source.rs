//! The source being built: its commit and its reproducible timestamp.

use anyhow::{bail, Context, Result};
use camino::Utf8Path;

use crate::support::git::Git;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The full commit sha, or `unknown` outside git.
    pub sha: String,
    /// SOURCE_DATE_EPOCH: from the environment, else the commit time.
    pub epoch: u64,
}

impl Source {
    pub fn detect(workspace_root: &Utf8Path) -> Result<Source> {
        let from_env = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(value) if !value.is_empty() => Some(value.parse::<u64>().with_context(|| {
                format!("invalid SOURCE_DATE_EPOCH={value:?}: expected seconds since 1970, such as the output of `git log -1 --format=%ct`")
            })?),
            _ => None,
        };
        let git = Git::open(workspace_root).ok().filter(Git::is_repository);
        let sha = match &git {
            Some(git) => git.head_sha()?,
            None => "unknown".to_owned(),
        };
        let epoch = match (from_env, &git) {
            (Some(epoch), _) => epoch,
            (None, Some(git)) => git.head_commit_time()?,
            (None, None) => bail!("not a git checkout and SOURCE_DATE_EPOCH is not set; set it to the source's release time in seconds"),
        };
        Ok(Source { sha, epoch })
    }

    pub fn short_sha(&self) -> &str {
        self.sha.get(..7).unwrap_or(&self.sha)
    }

    /// RFC 3339 in UTC, as OCI `created` wants it.
    pub fn created(&self) -> String {
        rfc3339_utc(self.epoch)
    }
}

pub fn rfc3339_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats() {
        assert_eq!(super::rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339_utc(1_795_305_600), "2026-11-22T00:00:00Z");
    }
}
