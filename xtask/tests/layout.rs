//! The shape of the xtask, held as a test (as rust-analyzer holds its tidy
//! rules): the library never uses a task, the top-level modules form no
//! cycle, every source file stays under 500 lines outside its tests, and
//! nothing hides dead code.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library folders, each allowed to use only those before it.
const LIBRARY: &[&str] = &["support", "oci", "build", "supply_chain"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: `oci` for src/oci/client.rs,
/// `sign` for src/sign.rs.
fn top_module(path: &Path) -> String {
    let relative = path.strip_prefix(src()).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_owned()
}

/// The top-level modules a file names: `crate::x::…` and `crate::{x, y}`.
fn uses(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name = item.trim().split("::").next().unwrap_or("").trim();
                if !name.is_empty() {
                    found.insert(name.to_owned());
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = top_module(&file);
        if module == "main" || module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let edges = graph.entry(module.clone()).or_default();
        edges.extend(uses(&text).into_iter().filter(|m| *m != module));
    }
    graph
}

#[test]
fn the_library_never_uses_a_task() {
    let graph = graph();
    let mut wrong = Vec::new();
    for (position, library) in LIBRARY.iter().enumerate() {
        for used in &graph[*library] {
            if !LIBRARY[..position].contains(&used.as_str()) {
                wrong.push(format!("{library} uses {used}"));
            }
        }
    }
    assert_eq!(wrong, Vec::<String>::new());
}

#[test]
fn the_top_level_modules_form_no_cycle() {
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|m| m == module) {
            let mut cycle = path[start..].to_vec();
            cycle.push(module.to_owned());
            return Some(cycle);
        }
        if !done.insert(module.to_owned()) {
            return None;
        }
        path.push(module.to_owned());
        for next in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let graph = graph();
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        let cycle = visit(module, &graph, &mut Vec::new(), &mut done);
        assert_eq!(cycle, None, "a cycle between top-level modules");
    }
}

#[test]
fn no_source_file_is_over_500_lines_outside_its_tests() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut long = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let lines = text
            .lines()
            .take_while(|l| !l.starts_with("#[cfg(test)]"))
            .count();
        if lines > 500 {
            long.push(format!("{} has {lines} lines", file.display()));
        }
    }
    assert_eq!(long, Vec::<String>::new());
}

#[test]
fn nothing_hides_dead_code_and_main_only_dispatches() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("allow(dead_code)"),
            "{} allows dead code",
            file.display()
        );
    }
    let main = std::fs::read_to_string(src().join("main.rs")).unwrap();
    assert!(!main.contains("\nmod "), "main.rs declares modules");
    assert!(
        main.lines().filter(|l| l.starts_with("fn ")).count() == 1,
        "main.rs has one function, main"
    );
}

/// The checker itself: a library module naming a task is caught.
#[test]
fn uses_finds_both_forms() {
    let found = uses("use crate::{flags, sign::Signed};\nlet x = crate::oci::digest_of(b);");
    assert_eq!(
        found,
        ["flags", "oci", "sign"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}
