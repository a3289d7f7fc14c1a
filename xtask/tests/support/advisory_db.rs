//! A RustSec advisory database made on the spot: a git repository whose
//! files follow the real database's layout and format, so that cargo-audit
//! reads it with `--db DIR --no-fetch` and nothing is fetched.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::run_ok;

/// One advisory against `krate`, fixed in `patched` (a version requirement).
pub struct Advisory<'a> {
    pub id: &'a str,
    pub krate: &'a str,
    pub patched: &'a str,
    pub title: &'a str,
}

/// Writes `advisories` under `dir` as crates/<name>/<id>.md and commits them.
pub fn write(dir: &Path, advisories: &[Advisory]) -> PathBuf {
    std::fs::create_dir_all(dir.join("crates")).unwrap();
    std::fs::write(dir.join("README.md"), "test advisory database\n").unwrap();
    for advisory in advisories {
        let folder = dir.join("crates").join(advisory.krate);
        std::fs::create_dir_all(&folder).unwrap();
        let text = format!(
            "```toml\n[advisory]\nid = \"{id}\"\npackage = \"{krate}\"\ndate = \"2026-01-15\"\nurl = \"https://example.invalid/{id}\"\ncategories = [\"memory-corruption\"]\nkeywords = [\"test\"]\n\n[versions]\npatched = [\"{patched}\"]\n```\n\n# {title}\n\nA test advisory.\n",
            id = advisory.id,
            krate = advisory.krate,
            patched = advisory.patched,
            title = advisory.title,
        );
        std::fs::write(folder.join(format!("{}.md", advisory.id)), text).unwrap();
    }
    let git = |args: &[&str]| {
        run_ok(
            Command::new("git")
                .args([
                    "-c",
                    "user.name=test",
                    "-c",
                    "user.email=test@example.invalid",
                ])
                .args(args)
                .current_dir(dir),
        )
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "advisories"]);
    dir.to_owned()
}

/// A database with no advisory that matches the server: what every release
/// test scans against, so that no test fetches the real database.
pub fn empty() -> &'static Path {
    static DB: OnceLock<PathBuf> = OnceLock::new();
    DB.get_or_init(|| {
        // Kept for the whole test process: every release in it scans here.
        let dir = tempfile::tempdir().unwrap().keep();
        write(
            &dir,
            &[Advisory {
                id: "RUSTSEC-2026-9000",
                krate: "no-such-crate-in-the-server",
                patched: ">= 1.0.0",
                title: "an advisory that matches nothing",
            }],
        )
    })
}
