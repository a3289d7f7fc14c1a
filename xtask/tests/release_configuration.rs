//! docs/release-configuration.md against the configuration reader: every
//! key `[workspace.metadata.release]` accepts is documented, and every key
//! the page documents is one the reader accepts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::collections::BTreeSet;

/// The keys in the first column of the page's tables: `| `key` | …`.
fn documented_keys(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once("` |").map(|(key, _)| key.to_owned()))
        .collect()
}

fn disagreements(accepted: &[String], page: &str) -> Vec<String> {
    let accepted: BTreeSet<String> = accepted.iter().cloned().collect();
    let documented = documented_keys(page);
    let mut found: Vec<String> = accepted
        .difference(&documented)
        .map(|k| format!("`{k}` is accepted but not documented"))
        .collect();
    found.extend(
        documented
            .difference(&accepted)
            .map(|k| format!("`{k}` is documented but not read")),
    );
    found
}

fn page() -> String {
    std::fs::read_to_string(support::workspace_root().join("docs/release-configuration.md"))
        .unwrap()
}

#[test]
fn every_accepted_key_is_documented_and_every_documented_key_is_read() {
    let accepted = xtask::support::config::accepted_keys();
    assert!(accepted.len() >= 17, "{accepted:?}");
    assert_eq!(disagreements(&accepted, &page()), Vec::<String>::new());
}

#[test]
fn a_drift_either_way_is_caught() {
    let mut accepted = xtask::support::config::accepted_keys();
    accepted.retain(|k| k != "base-digest");
    accepted.push("chart.name".to_owned());
    assert_eq!(
        disagreements(&accepted, &page()),
        [
            "`chart.name` is accepted but not documented",
            "`base-digest` is documented but not read",
        ]
    );
}
