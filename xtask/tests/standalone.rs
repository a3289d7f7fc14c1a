//! The repository stands alone: no doc or comment sends its reader to a
//! design note, a tracker issue or a file that is not in the repository,
//! and every relative link of the Markdown files resolves to a file here.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// The tracked text files, with their contents.
fn tracked_texts(root: &Path) -> Vec<(String, String)> {
    let listed = support::run_ok(
        Command::new("git")
            .args(["ls-files", "-z"])
            .current_dir(root),
    );
    listed
        .split('\0')
        .filter(|f| !f.is_empty())
        // The JSON schemas are third-party documents, kept verbatim.
        .filter(|f| !f.starts_with("xtask/schemas/"))
        .filter_map(|f| Some((f.to_owned(), std::fs::read_to_string(root.join(f)).ok()?)))
        .collect()
}

/// What a line points at outside the repository, if anything.
fn outside_reference(line: &str) -> Option<String> {
    // Built from parts, so that this file does not name them itself.
    let shared = ["..", "/shared"].concat();
    let design = ["DESIGN", ".md"].concat();
    if line.contains(&shared) || line.contains(&design) {
        return Some("a design note outside the repository".to_owned());
    }
    let lower = line.to_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    for pair in words.windows(2) {
        let number = pair[1].trim_start_matches('#');
        if pair[0] == "issue" && number.starts_with(|c: char| c.is_ascii_digit()) {
            return Some(format!("a tracker issue (`{} {}`)", pair[0], pair[1]));
        }
    }
    if lower.contains(&["as the ", "issue asks"].concat()) {
        return Some("a tracker issue".to_owned());
    }
    None
}

/// The relative link targets of a Markdown line: `[text](target)`.
fn relative_links(line: &str) -> Vec<String> {
    line.split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(target, _)| target))
        .map(|target| target.split('#').next().unwrap_or_default().to_owned())
        .filter(|target| {
            !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:")
        })
        .collect()
}

/// `path` made lexical: `..` pops, `.` goes; None when it climbs out.
fn normalized(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

fn violations(root: &Path, files: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (file, text) in files {
        for (n, line) in text.lines().enumerate() {
            if let Some(what) = outside_reference(line) {
                found.push(format!("{file}:{}: points at {what}", n + 1));
            }
            if !file.ends_with(".md") {
                continue;
            }
            let dir = Path::new(file).parent().unwrap_or(Path::new(""));
            for target in relative_links(line) {
                match normalized(&dir.join(&target)) {
                    Some(path) if root.join(&path).exists() => {}
                    Some(_) => found.push(format!(
                        "{file}:{}: links to {target}, which does not exist",
                        n + 1
                    )),
                    None => found.push(format!(
                        "{file}:{}: links to {target}, outside the repository",
                        n + 1
                    )),
                }
            }
        }
    }
    found
}

#[test]
fn nothing_points_outside_the_repository() {
    let root = support::workspace_root();
    assert_eq!(
        violations(&root, &tracked_texts(&root)),
        Vec::<String>::new()
    );
}

#[test]
fn each_kind_of_outside_reference_is_caught() {
    let root = support::workspace_root();
    let file = |text: &str| vec![("docs/x.md".to_owned(), text.to_owned())];
    let shared = ["..", "/shared"].concat();
    let cases = [
        (
            format!("see {shared}/notes"),
            "docs/x.md:1: points at a design note outside the repository",
        ),
        (
            ["as ", "DESIGN", ".md says"].concat(),
            "docs/x.md:1: points at a design note outside the repository",
        ),
        (
            ["fixed in Issue ", "6."].concat(),
            "docs/x.md:1: points at a tracker issue (`issue 6.`)",
        ),
        (
            "[x](../../elsewhere.md)".to_owned(),
            "docs/x.md:1: links to ../../elsewhere.md, outside the repository",
        ),
        (
            "[x](missing.md#part)".to_owned(),
            "docs/x.md:1: links to missing.md, which does not exist",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(
            violations(&root, &file(&text)),
            vec![expected.to_owned()],
            "{text}"
        );
    }
    assert_eq!(
        violations(
            &root,
            &file("[ok](../README.md), [web](https://example.com/a), [here](#top)")
        ),
        Vec::<String>::new()
    );
}
