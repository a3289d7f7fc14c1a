//! What a test run spent: `target/test-times.json`, the ten slowest
//! binaries on the terminal, and the order of the next run.
//!
//! The file maps each test binary to its seconds at the top level, so that
//! any script can sort it, and keeps the rest (the phases, the counts, the
//! commit) under `summary`. Times are reported, never asserted: a slow run
//! shows in the next run's output, not as a failed test.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use camino::Utf8Path;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::binaries::Outcome;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub commit: String,
    /// How many binaries ran at once.
    pub jobs: usize,
    /// Each step of `cargo xtask test` in order, in seconds.
    pub phases: Vec<Phase>,
    pub binaries: Vec<BinaryFigures>,
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct BinaryFigures {
    pub name: String,
    pub seconds: f64,
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub success: bool,
}

impl Summary {
    pub fn new(commit: String, jobs: usize, phases: Vec<Phase>, outcomes: &[Outcome]) -> Summary {
        let mut binaries: Vec<BinaryFigures> = outcomes
            .iter()
            .map(|o| BinaryFigures {
                name: o.name.clone(),
                seconds: round(o.seconds),
                passed: o.counts.passed,
                failed: o.counts.failed,
                ignored: o.counts.ignored,
                success: o.success,
            })
            .collect();
        binaries.sort_by(|a, b| b.seconds.total_cmp(&a.seconds).then(a.name.cmp(&b.name)));
        Summary {
            commit,
            jobs,
            phases,
            passed: binaries.iter().map(|b| b.passed).sum(),
            failed: binaries.iter().map(|b| b.failed).sum(),
            ignored: binaries.iter().map(|b| b.ignored).sum(),
            binaries,
        }
    }

    /// The file's document: every binary's seconds at the top, the rest
    /// under `summary`.
    pub fn to_json(&self) -> Result<Value> {
        let mut top = serde_json::Map::new();
        for binary in &self.binaries {
            top.insert(binary.name.clone(), binary.seconds.into());
        }
        top.insert(
            "summary".to_owned(),
            serde_json::to_value(self).context("cannot serialise the test times")?,
        );
        Ok(Value::Object(top))
    }

    /// The ten slowest binaries, then the phases, as a small table.
    pub fn text(&self) -> String {
        let mut text = String::from("The ten slowest test binaries:\n");
        for binary in self.binaries.iter().take(10) {
            let status = if binary.success { "" } else { "  FAILED" };
            text.push_str(&format!(
                "{:>9.1} s  {} ({} passed){status}\n",
                binary.seconds, binary.name, binary.passed
            ));
        }
        text.push_str("The phases:\n");
        for phase in &self.phases {
            text.push_str(&format!("{:>9.1} s  {}\n", phase.seconds, phase.name));
        }
        text
    }
}

fn round(seconds: f64) -> f64 {
    (seconds * 10.0).round() / 10.0
}

/// The seconds each binary took in the last run, when there was one.
pub fn previous(path: &Utf8Path) -> BTreeMap<String, f64> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return BTreeMap::new();
    };
    let Ok(Value::Object(top)) = serde_json::from_str::<Value>(&text) else {
        return BTreeMap::new();
    };
    top.into_iter()
        .filter_map(|(name, value)| value.as_f64().map(|s| (name, s)))
        .collect()
}

/// The order that ends soonest when binaries run several at once: longest
/// first. A binary without a last time is taken as `slow_guess` seconds
/// when `known_slow` names it, else as a minute.
pub fn longest_first<T>(
    items: &mut [T],
    name: impl Fn(&T) -> &str,
    last: &BTreeMap<String, f64>,
    known_slow: &[&str],
) {
    let slow_guess = last.values().copied().fold(600.0, f64::max);
    let expected = |n: &str| {
        last.get(n).copied().unwrap_or(if known_slow.contains(&n) {
            slow_guess
        } else {
            60.0
        })
    };
    items.sort_by(|a, b| {
        expected(name(b))
            .total_cmp(&expected(name(a)))
            .then_with(|| name(a).cmp(name(b)))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test::binaries::Counts;

    fn outcome(name: &str, seconds: f64, passed: u64, success: bool) -> Outcome {
        Outcome {
            name: name.to_owned(),
            seconds,
            counts: Counts {
                passed,
                failed: u64::from(!success),
                ignored: 0,
            },
            success,
            failure: None,
        }
    }

    #[test]
    fn the_file_maps_binaries_to_seconds_at_the_top() {
        let summary = Summary::new(
            "abc".to_owned(),
            3,
            vec![Phase {
                name: "cargo clippy".to_owned(),
                seconds: 50.04,
            }],
            &[
                outcome("xtask --lib", 3.04, 120, true),
                outcome("xtask --test release", 254.06, 3, false),
            ],
        );
        let json = summary.to_json().unwrap();
        assert_eq!(json["xtask --lib"], 3.0);
        assert_eq!(json["xtask --test release"], 254.1);
        assert_eq!(json["summary"]["jobs"], 3);
        assert_eq!(json["summary"]["passed"], 123);
        assert_eq!(json["summary"]["failed"], 1);
        assert_eq!(
            json["summary"]["binaries"][0]["name"],
            "xtask --test release"
        );
        assert_eq!(
            summary.text(),
            "The ten slowest test binaries:\n    254.1 s  xtask --test release (3 passed)  FAILED\n      3.0 s  xtask --lib (120 passed)\nThe phases:\n     50.0 s  cargo clippy\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = camino::Utf8PathBuf::from_path_buf(dir.path().join("t.json")).unwrap();
        std::fs::write(&path, json.to_string()).unwrap();
        assert_eq!(
            previous(&path),
            BTreeMap::from([
                ("xtask --lib".to_owned(), 3.0),
                ("xtask --test release".to_owned(), 254.1)
            ])
        );
    }

    #[test]
    fn longest_first_uses_the_last_run_then_the_known_slow() {
        let last = BTreeMap::from([("b".to_owned(), 30.0), ("c".to_owned(), 900.0)]);
        let mut names = vec!["a", "b", "c", "new-slow", "new"];
        longest_first(&mut names, |n| n, &last, &["new-slow"]);
        // new-slow is guessed as slow as the slowest known (900 s); ties by name.
        assert_eq!(names, ["c", "new-slow", "a", "new", "b"]);
        let mut fresh = vec!["quick", "slow"];
        longest_first(&mut fresh, |n| n, &BTreeMap::new(), &["slow"]);
        assert_eq!(fresh, ["slow", "quick"]);
    }

    #[test]
    fn an_unreadable_last_run_is_no_last_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = camino::Utf8PathBuf::from_path_buf(dir.path().join("t.json")).unwrap();
        assert!(previous(&path).is_empty());
        std::fs::write(&path, "[not json").unwrap();
        assert!(previous(&path).is_empty());
    }
}
