//! Configuration from `SERVER_*` environment variables.
//!
//! Every variable read here is listed in `docs/configuration.md`; a test
//! fails when the two disagree.

use std::net::SocketAddr;
use std::time::Duration;

use crate::logging::{Format, Level};

/// Every environment variable the server reads, with its default.
pub const VARIABLES: &[(&str, &str)] = &[
    ("SERVER_ADDR", "0.0.0.0:8080"),
    ("SERVER_LOG", "info"),
    ("SERVER_LOG_FORMAT", "auto"),
    ("SERVER_DRAIN_DELAY", "5s"),
    ("SERVER_SHUTDOWN_TIMEOUT", "10s"),
    ("SERVER_MAX_CONNECTIONS", "1024"),
    ("SERVER_DATABASE_URL", ""),
    ("SERVER_DATABASE_WAIT", "30s"),
    ("SERVER_HEADER_TIMEOUT", "5s"),
    ("SERVER_BODY_TIMEOUT", "10s"),
];

#[derive(Debug, Clone)]
pub struct Config {
    /// None: the server is stateless and has no /v1 API.
    pub database: Option<crate::db::Target>,
    pub database_wait: Duration,
    pub addr: SocketAddr,
    pub log_level: Level,
    pub log_format: Format,
    pub drain_delay: Duration,
    pub shutdown_timeout: Duration,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

/// A configuration error: one line that names the variable and the fix.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let value = |var: &'static str| -> (String, &'static str) {
            let default = VARIABLES
                .iter()
                .find(|(v, _)| *v == var)
                .map_or("", |(_, d)| d);
            let value = lookup(var)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned());
            (value, var)
        };
        let (log_level, var) = value("SERVER_LOG");
        let log_level = log_level.parse().map_err(|_| {
            ConfigError(format!(
                "invalid {var}={log_level:?}: expected one of off, error, warn, info, debug, trace"
            ))
        })?;
        let (log_format, var) = value("SERVER_LOG_FORMAT");
        let log_format = log_format.parse().map_err(|_| {
            ConfigError(format!(
                "invalid {var}={log_format:?}: expected one of auto, json, text"
            ))
        })?;
        let (url, _) = value("SERVER_DATABASE_URL");
        Ok(Config {
            database: match url.as_str() {
                "" => None,
                url => Some(crate::db::parse_url(url)?),
            },
            database_wait: duration_var(value("SERVER_DATABASE_WAIT"), Duration::ZERO)?,
            addr: parse_addr_var(&value("SERVER_ADDR").0)?,
            log_level,
            log_format,
            // Zero is a valid shutdown timeout (exit without draining), but a
            // zero header or body timeout would refuse every slow-ish client.
            drain_delay: duration_var(value("SERVER_DRAIN_DELAY"), Duration::ZERO)?,
            shutdown_timeout: duration_var(value("SERVER_SHUTDOWN_TIMEOUT"), Duration::ZERO)?,
            max_connections: count_var(value("SERVER_MAX_CONNECTIONS"), MAX_CONNECTIONS)?,
            header_timeout: duration_var(value("SERVER_HEADER_TIMEOUT"), Duration::from_millis(1))?,
            body_timeout: duration_var(value("SERVER_BODY_TIMEOUT"), Duration::from_millis(1))?,
        })
    }
}

/// Parses `SERVER_ADDR`. Only IP literals are accepted: the binary runs in an
/// image without a resolver configuration, so a host name could not work.
pub fn parse_addr_var(value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse::<SocketAddr>().map_err(|_| {
        ConfigError(format!(
            "invalid SERVER_ADDR={value:?}: expected IP:PORT such as 0.0.0.0:8080 or [::]:8080"
        ))
    })
}

/// The longest timeout accepted. hyper adds the header timeout to
/// `Instant::now()`, which panics on overflow, so an absurd value must be
/// refused here rather than crash the server on its first connection.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

fn duration_var(
    (value, var): (String, &'static str),
    min: Duration,
) -> Result<Duration, ConfigError> {
    let duration = parse_duration(&value).ok_or_else(|| {
        ConfigError(format!(
            "invalid {var}={value:?}: expected a duration such as 10s, 500ms or 2m"
        ))
    })?;
    if duration < min || duration > MAX_DURATION {
        let lowest = if min.is_zero() { "0s" } else { "1ms" };
        return Err(ConfigError(format!(
            "invalid {var}={value:?}: expected a duration from {lowest} to 24h such as 10s, 500ms or 2m"
        )));
    }
    Ok(duration)
}

/// The most connections `SERVER_MAX_CONNECTIONS` may allow: far above what
/// the default file descriptor limit lets a process open anyway.
pub const MAX_CONNECTIONS: usize = 1 << 20;

fn count_var((value, var): (String, &'static str), max: usize) -> Result<usize, ConfigError> {
    match value.trim().parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError(format!(
            "invalid {var}={value:?}: expected a whole number from 1 to {max} such as 1024"
        ))),
    }
}

/// The `SERVER_*` names in `names` that the server does not read, each with
/// the known variable closest in spelling: a typo such as `SERVER_ADDRESS`
/// would otherwise be ignored without a word while the default applies.
pub fn unknown_variables<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Vec<(&'a str, &'static str)> {
    names
        .into_iter()
        .filter(|name| name.starts_with("SERVER_"))
        .filter(|name| !VARIABLES.iter().any(|(known, _)| known == name))
        .filter_map(|name| {
            VARIABLES
                .iter()
                .map(|(known, _)| *known)
                .min_by_key(|known| edit_distance(name, known))
                .map(|closest| (name, closest))
        })
        .collect()
}

/// Levenshtein distance: the number of single-character edits.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Accepts `500ms`, `10s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let number: f64 = number.parse().ok()?;
    if !number.is_finite() || number < 0.0 {
        return None;
    }
    let secs = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(c.addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.log_level, Level::Info);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(c.header_timeout, Duration::from_secs(5));
        assert_eq!(c.drain_delay, Duration::from_secs(5));
        assert_eq!(c.max_connections, 1024);
    }

    #[test]
    fn connection_limits() {
        assert_eq!(
            config(&[("SERVER_MAX_CONNECTIONS", "2")])
                .unwrap()
                .max_connections,
            2
        );
        for bad in ["0", "-1", "many", "1048577"] {
            assert_eq!(
                config(&[("SERVER_MAX_CONNECTIONS", bad)]).unwrap_err().0,
                format!("invalid SERVER_MAX_CONNECTIONS={bad:?}: expected a whole number from 1 to 1048576 such as 1024")
            );
        }
    }

    #[test]
    fn unknown_variables_name_the_closest_known_one() {
        assert_eq!(
            unknown_variables([
                "SERVER_ADDRESS",
                "SERVER_ADDR",
                "PATH",
                "SERVER_SHUTDOWN_TIMOUT",
                "SERVER_DRAIN_DELY",
                "SERVER_LOG_FMT"
            ]),
            [
                ("SERVER_ADDRESS", "SERVER_ADDR"),
                ("SERVER_SHUTDOWN_TIMOUT", "SERVER_SHUTDOWN_TIMEOUT"),
                ("SERVER_DRAIN_DELY", "SERVER_DRAIN_DELAY"),
                ("SERVER_LOG_FMT", "SERVER_LOG_FORMAT"),
            ]
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn errors_name_the_variable_and_the_fix() {
        assert_eq!(
            config(&[("SERVER_ADDR", "localhost:80")]).unwrap_err().0,
            "invalid SERVER_ADDR=\"localhost:80\": expected IP:PORT such as 0.0.0.0:8080 or [::]:8080"
        );
        assert_eq!(
            config(&[("SERVER_LOG", "loud")]).unwrap_err().0,
            "invalid SERVER_LOG=\"loud\": expected one of off, error, warn, info, debug, trace"
        );
        assert_eq!(
            config(&[("SERVER_SHUTDOWN_TIMEOUT", "soon")]).unwrap_err().0,
            "invalid SERVER_SHUTDOWN_TIMEOUT=\"soon\": expected a duration such as 10s, 500ms or 2m"
        );
    }

    #[test]
    fn durations_out_of_range_are_refused() {
        assert_eq!(
            config(&[("SERVER_HEADER_TIMEOUT", "0")]).unwrap_err().0,
            "invalid SERVER_HEADER_TIMEOUT=\"0\": expected a duration from 1ms to 24h such as 10s, 500ms or 2m"
        );
        assert_eq!(
            config(&[("SERVER_BODY_TIMEOUT", "9999999999999999999")]).unwrap_err().0,
            "invalid SERVER_BODY_TIMEOUT=\"9999999999999999999\": expected a duration from 1ms to 24h such as 10s, 500ms or 2m"
        );
        assert_eq!(
            config(&[("SERVER_SHUTDOWN_TIMEOUT", "25h")]).unwrap_err().0,
            "invalid SERVER_SHUTDOWN_TIMEOUT=\"25h\": expected a duration from 0s to 24h such as 10s, 500ms or 2m"
        );
        let c = config(&[
            ("SERVER_SHUTDOWN_TIMEOUT", "0"),
            ("SERVER_HEADER_TIMEOUT", "24h"),
        ])
        .unwrap();
        assert_eq!(c.shutdown_timeout, Duration::ZERO);
        assert_eq!(c.header_timeout, MAX_DURATION);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("1d"), None);
        assert_eq!(parse_duration(""), None);
    }
}
