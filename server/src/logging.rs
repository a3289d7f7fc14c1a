//! One JSON object per line when stdout is not a terminal (log collectors
//! parse it), a readable line when it is.

use std::io::{IsTerminal, Write};
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Off => "off",
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        }
    }
}

impl FromStr for Level {
    type Err = ();
    fn from_str(s: &str) -> Result<Level, ()> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "off" => Level::Off,
            "error" => Level::Error,
            "warn" | "warning" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            "trace" => Level::Trace,
            _ => return Err(()),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Auto,
    Json,
    Text,
}

impl FromStr for Format {
    type Err = ();
    fn from_str(s: &str) -> Result<Format, ()> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Format::Auto),
            "json" => Ok(Format::Json),
            "text" => Ok(Format::Text),
            _ => Err(()),
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static JSON: AtomicU8 = AtomicU8::new(1);

pub fn init(level: Level, format: Format) {
    LEVEL.store(level as u8, Ordering::Relaxed);
    let json = match format {
        Format::Json => true,
        Format::Text => false,
        Format::Auto => !std::io::stdout().is_terminal(),
    };
    JSON.store(u8::from(json), Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level != Level::Off && level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Writes one log record. `fields` are appended in order.
pub fn log(level: Level, msg: &str, fields: &[(&str, Value)]) {
    if !enabled(level) {
        return;
    }
    let ts = timestamp();
    let line = if JSON.load(Ordering::Relaxed) == 1 {
        let mut record = Map::new();
        record.insert("ts".into(), Value::from(ts));
        record.insert("level".into(), Value::from(level.as_str()));
        record.insert("msg".into(), Value::from(msg));
        for (key, value) in fields {
            record.insert((*key).into(), value.clone());
        }
        Value::Object(record).to_string()
    } else {
        let mut line = format!("{ts} {:5} {msg}", level.as_str().to_uppercase());
        for (key, value) in fields {
            match value {
                Value::String(s) => line.push_str(&format!(" {key}={s}")),
                other => line.push_str(&format!(" {key}={other}")),
            }
        }
        line
    };
    // A closed stdout must not take the server down.
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = crate::build_info::rfc3339_utc(now.as_secs() as i64);
    // Insert milliseconds before the trailing Z.
    format!("{}.{:03}Z", &secs[..secs.len() - 1], now.subsec_millis())
}
