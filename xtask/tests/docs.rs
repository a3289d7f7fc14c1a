//! docs/configuration.md against the server's source: every `SERVER_*`
//! variable the server reads at run time is documented with its default,
//! every variable its build script reads is documented as build-time, and
//! the docs list nothing the server does not read.
//!
//! The source is scanned for string literals that are exactly a variable
//! name, not for words: a name in a comment or inside an error message does
//! not count, and a literal inside `env!(…)` is a compile-time value.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use support::workspace_root;

/// The string literals of one line of Rust, each with the code before it;
/// stops at a `//` comment outside a string.
fn literals(line: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '/' if chars.get(i + 1) == Some(&'/') => break,
            // A char literal such as '"' is not the start of a string.
            '\'' if chars.get(i + 2) == Some(&'\'') => i += 3,
            '\'' if chars.get(i + 1) == Some(&'\\') && chars.get(i + 3) == Some(&'\'') => i += 4,
            '"' => {
                let before: String = chars[..i].iter().collect();
                let mut text = String::new();
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    if let Some(c) = chars.get(i) {
                        text.push(*c);
                    }
                    i += 1;
                }
                found.push((before, text));
                i += 1;
            }
            _ => i += 1,
        }
    }
    found
}

fn is_variable_name(text: &str) -> bool {
    text.len() > "SERVER_".len()
        && text.starts_with("SERVER_")
        && text
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// What the server reads, from its source: run-time variable names with
/// their defaults where the `VARIABLES` table gives one, and the names
/// taken at compile time with `env!`.
#[derive(Debug, Default, PartialEq)]
struct Reads {
    runtime: BTreeMap<String, Option<String>>,
    compile_time: BTreeSet<String>,
}

fn scan_source(sources: &[(String, String)]) -> Reads {
    let mut reads = Reads::default();
    for (_, text) in sources {
        // Unit tests name variables too, but only to feed them in.
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        for line in text.lines() {
            let literals = literals(line);
            for (index, (before, literal)) in literals.iter().enumerate() {
                if !is_variable_name(literal) {
                    continue;
                }
                if before.trim_end().ends_with("env!(") {
                    reads.compile_time.insert(literal.clone());
                    continue;
                }
                // `("SERVER_X", "default")`: an entry of the defaults table.
                let default = (line.trim_start().starts_with("(\"") && literals.len() == 2)
                    .then(|| literals.get(index + 1).map(|(_, d)| d.clone()))
                    .flatten();
                let entry = reads.runtime.entry(literal.clone()).or_default();
                if default.is_some() {
                    *entry = default;
                }
            }
        }
    }
    reads
}

/// What build.rs declares: the variables it reads (`rerun-if-env-changed`)
/// and the ones it sets for the compiler (`rustc-env`).
fn scan_build_script(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let after = |prefix: &str| -> BTreeSet<String> {
        text.split(prefix)
            .skip(1)
            .map(|rest| {
                rest.chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect()
            })
            .collect()
    };
    (
        after("cargo:rerun-if-env-changed="),
        after("cargo:rustc-env="),
    )
}

/// The variables each `## ` section of the docs lists in a table, with the
/// second column (the default).
fn scan_docs(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            section = heading.trim().to_owned();
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[0].is_empty() {
            continue;
        }
        if let Some(name) = cells[1].strip_prefix('`').and_then(|c| c.strip_suffix('`')) {
            sections
                .entry(section.clone())
                .or_default()
                .insert(name.to_owned(), cells[2].trim_matches('`').to_owned());
        }
    }
    sections
}

const RUNTIME: &str = "Runtime variables";
const BUILD_TIME: &str = "Build-time variables";
const COMPILER: &str = "Set by the build script";

/// Every disagreement between the source and the docs, one line each.
fn disagreements(sources: &[(String, String)], build_rs: &str, docs: &str) -> Vec<String> {
    let reads = scan_source(sources);
    let (build_inputs, rustc_env) = scan_build_script(build_rs);
    let sections = scan_docs(docs);
    let empty = BTreeMap::new();
    let runtime_docs = sections.get(RUNTIME).unwrap_or(&empty);
    let build_docs = sections.get(BUILD_TIME).unwrap_or(&empty);
    let compiler_docs = sections.get(COMPILER).unwrap_or(&empty);
    let mut problems = Vec::new();
    for (name, default) in &reads.runtime {
        match runtime_docs.get(name) {
            None => problems.push(format!(
                "the server reads {name} but docs/configuration.md does not list it under \"{RUNTIME}\""
            )),
            Some(documented) => {
                if let Some(default) = default {
                    if documented != default {
                        problems.push(format!(
                            "{name}: docs/configuration.md gives the default {documented:?}, the server uses {default:?}"
                        ));
                    }
                }
            }
        }
    }
    for name in runtime_docs.keys() {
        if !reads.runtime.contains_key(name) {
            problems.push(format!(
                "docs/configuration.md lists {name} under \"{RUNTIME}\" but the server does not read it"
            ));
        }
    }
    let documented: BTreeSet<String> = build_docs.keys().cloned().collect();
    if documented != build_inputs {
        problems.push(format!(
            "\"{BUILD_TIME}\" lists {documented:?} but server/build.rs reads {build_inputs:?}"
        ));
    }
    if reads.compile_time != rustc_env {
        problems.push(format!(
            "the server takes {:?} with env!() but server/build.rs sets {rustc_env:?}",
            reads.compile_time
        ));
    }
    let documented: BTreeSet<String> = compiler_docs.keys().cloned().collect();
    if documented != rustc_env {
        problems.push(format!(
            "\"{COMPILER}\" lists {documented:?} but server/build.rs sets {rustc_env:?}"
        ));
    }
    problems
}

fn server_sources() -> Vec<(String, String)> {
    let dir = workspace_root().join("server/src");
    let mut files = Vec::new();
    collect_rs(&dir, &mut files);
    files.sort();
    assert!(!files.is_empty(), "no sources under {}", dir.display());
    files
}

fn collect_rs(dir: &Path, files: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rs(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap(),
            ));
        }
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(workspace_root().join(path))
        .unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

#[test]
fn configuration_docs_list_exactly_what_the_server_reads() {
    let sources = server_sources();
    let problems = disagreements(
        &sources,
        &read("server/build.rs"),
        &read("docs/configuration.md"),
    );
    assert_eq!(problems, Vec::<String>::new());
    // The scan found what is really there, not nothing.
    let reads = scan_source(&sources);
    assert_eq!(
        reads.runtime.keys().collect::<Vec<_>>(),
        [
            "SERVER_ADDR",
            "SERVER_BODY_TIMEOUT",
            "SERVER_DATABASE_URL",
            "SERVER_DATABASE_WAIT",
            "SERVER_DRAIN_DELAY",
            "SERVER_HEADER_TIMEOUT",
            "SERVER_LOG",
            "SERVER_LOG_FORMAT",
            "SERVER_MAX_CONNECTIONS",
            "SERVER_SHUTDOWN_TIMEOUT"
        ]
    );
    assert_eq!(
        reads.runtime["SERVER_ADDR"].as_deref(),
        Some("0.0.0.0:8080")
    );
    assert_eq!(
        reads.compile_time.iter().collect::<Vec<_>>(),
        [
            "SERVER_GIT_SHA",
            "SERVER_SOURCE_DATE_EPOCH",
            "SERVER_TARGET"
        ]
    );
}

#[test]
fn a_variable_missing_from_the_docs_or_extra_in_them_fails() {
    let sources = vec![(
        "config.rs".to_owned(),
        [
            "// SERVER_IN_A_COMMENT is not read",
            "pub const VARIABLES: &[(&str, &str)] = &[",
            "    (\"SERVER_ADDR\", \"0.0.0.0:8080\"),",
            "];",
            "fn f() { let _ = std::env::var(\"SERVER_NEW\"); } // \"SERVER_TRAILING\"",
            "const M: &str = \"invalid SERVER_ADDR: expected IP:PORT\";",
            "const SHA: &str = env!(\"SERVER_GIT_SHA\");",
            "#[cfg(test)]",
            "mod tests { const T: &str = \"SERVER_ONLY_IN_TESTS\"; }",
        ]
        .join("\n"),
    )];
    let build_rs = "println!(\"cargo:rerun-if-env-changed=SERVER_BUILD_GIT_SHA\");\nprintln!(\"cargo:rustc-env=SERVER_GIT_SHA={sha}\");";
    let docs = "\
## Runtime variables

| variable | default | example | meaning |
|---|---|---|---|
| `SERVER_ADDR` | `0.0.0.0:9090` | `[::]:8080` | where to listen |
| `SERVER_GONE` | `x` | `y` | removed long ago |

## Build-time variables

| variable | default | example | meaning |
|---|---|---|---|
| `SERVER_BUILD_GIT_SHA` | git | `0123…` | the commit |

## Set by the build script

| variable | value | example | meaning |
|---|---|---|---|
| `SERVER_GIT_SHA` | - | - | - |
";
    assert_eq!(
        disagreements(&sources, build_rs, docs),
        [
            "SERVER_ADDR: docs/configuration.md gives the default \"0.0.0.0:9090\", the server uses \"0.0.0.0:8080\"",
            "the server reads SERVER_NEW but docs/configuration.md does not list it under \"Runtime variables\"",
            "docs/configuration.md lists SERVER_GONE under \"Runtime variables\" but the server does not read it",
        ]
    );
    // With the docs fixed, nothing is left: comments, messages, env!() and
    // unit tests were never counted as reads.
    let fixed = docs
        .replace("`0.0.0.0:9090`", "`0.0.0.0:8080`")
        .replace("| `SERVER_GONE` |", "| `SERVER_NEW` |");
    assert_eq!(
        disagreements(&sources, build_rs, &fixed),
        Vec::<String>::new()
    );
    // A build input the docs do not give is caught too.
    let build_rs_more =
        format!("{build_rs}\nprintln!(\"cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH\");");
    assert_eq!(
        disagreements(&sources, &build_rs_more, &fixed),
        ["\"Build-time variables\" lists {\"SERVER_BUILD_GIT_SHA\"} but server/build.rs reads {\"SERVER_BUILD_GIT_SHA\", \"SOURCE_DATE_EPOCH\"}"]
    );
}

#[test]
fn the_usage_text_points_at_the_configuration_docs() {
    assert!(read("server/src/main.rs").contains("see docs/configuration.md"));
    assert!(workspace_root().join("docs/configuration.md").is_file());
}
