//! What this binary is: embedded at compile time by `build.rs`.

use serde::Serialize;

pub const NAME: &str = env!("CARGO_PKG_NAME");
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_SHA: &str = env!("SERVER_GIT_SHA");
pub const TARGET: &str = env!("SERVER_TARGET");
const SOURCE_DATE_EPOCH: &str = env!("SERVER_SOURCE_DATE_EPOCH");

#[derive(Debug, Serialize)]
pub struct BuildInfo {
    pub name: &'static str,
    pub version: &'static str,
    pub git_sha: &'static str,
    pub build_date: String,
    pub target: &'static str,
}

impl BuildInfo {
    pub fn current() -> BuildInfo {
        BuildInfo {
            name: NAME,
            version: VERSION,
            git_sha: GIT_SHA,
            build_date: build_date(),
            target: TARGET,
        }
    }

    pub fn short_sha(&self) -> &str {
        self.git_sha.get(..7).unwrap_or(self.git_sha)
    }

    /// The one-line form printed by `server version`.
    pub fn line(&self) -> String {
        format!(
            "{} {} ({} {}) {}",
            self.name,
            self.version,
            self.short_sha(),
            self.build_date,
            self.target
        )
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

fn build_date() -> String {
    match SOURCE_DATE_EPOCH.parse::<i64>() {
        Ok(secs) => rfc3339_utc(secs),
        Err(_) => "unknown".to_owned(),
    }
}

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`, without pulling
/// a date crate into a binary that only ever needs this one format.
pub fn rfc3339_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

// Howard Hinnant's days-to-civil algorithm (public domain).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_795_305_600), "2026-11-22T00:00:00Z");
        assert_eq!(rfc3339_utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
