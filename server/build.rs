//! Embeds build information: the git sha and the build date.
//!
//! The release xtask passes both explicitly (`SERVER_BUILD_GIT_SHA`,
//! `SOURCE_DATE_EPOCH`) so that a build is reproducible from any checkout
//! path. A plain `cargo build` falls back to git, and a build outside git
//! says `unknown` rather than failing.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SERVER_BUILD_GIT_SHA");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");

    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        // HEAD moves on checkout, the branch ref on commit. Only existing
        // files are named: cargo treats a missing one as always changed.
        // In a linked worktree HEAD is in the worktree's git dir but the
        // branch refs are in the common dir; watching only the former left
        // the embedded sha stale after every commit.
        let dir = Path::new(&dir);
        // Printed relative to the directory git ran in, the manifest dir.
        let common = git(&["rev-parse", "--git-common-dir"])
            .zip(std::env::var_os("CARGO_MANIFEST_DIR"))
            .map(|(common, manifest_dir)| Path::new(&manifest_dir).join(common))
            .unwrap_or_else(|| dir.to_path_buf());
        let mut watched = vec![dir.join("HEAD"), common.join("packed-refs")];
        if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(common.join(head_ref));
        }
        for path in watched.iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }

    let sha = std::env::var("SERVER_BUILD_GIT_SHA")
        .ok()
        .filter(|s| is_full_sha(s))
        .or_else(|| git(&["rev-parse", "HEAD"]).filter(|s| is_full_sha(s)))
        .unwrap_or_else(|| "unknown".to_owned());

    // The commit time, not the wall clock, so that rebuilding the same commit
    // gives the same bytes.
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .filter(|s| s.parse::<u64>().is_ok())
        .or_else(|| {
            git(&["log", "-1", "--format=%ct", "HEAD"]).filter(|s| s.parse::<u64>().is_ok())
        });

    println!("cargo:rustc-env=SERVER_GIT_SHA={sha}");
    println!(
        "cargo:rustc-env=SERVER_SOURCE_DATE_EPOCH={}",
        epoch.as_deref().unwrap_or("")
    );
    println!(
        "cargo:rustc-env=SERVER_TARGET={}",
        std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_owned())
    );
}

fn git(args: &[&str]) -> Option<String> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    let out = Command::new("git")
        .args(args)
        .current_dir(manifest_dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn is_full_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}
