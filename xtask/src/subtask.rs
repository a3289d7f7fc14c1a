//! Running another task of this xtask as a child process, for tasks that
//! are steps of a larger one (release, image --sign). The child's stdout is
//! passed on to stderr, so that the parent's stdout stays its own result.

use anyhow::{bail, Context, Result};
use camino::Utf8Path;
use xshell::{cmd, Shell};

pub fn run(workspace_root: &Utf8Path, args: &[String]) -> Result<()> {
    // /proc/self/exe still runs this very binary when cargo has rebuilt
    // (replaced) the file in the meantime; the path would not.
    let proc_exe = std::path::Path::new("/proc/self/exe");
    let exe = if proc_exe.exists() {
        proc_exe.to_path_buf()
    } else {
        std::env::current_exe().context("cannot find the running xtask binary")?
    };
    let sh = Shell::new()?;
    sh.change_dir(workspace_root);
    let output = cmd!(sh, "{exe} {args...}")
        .quiet()
        .ignore_status()
        .output()
        .with_context(|| format!("cannot run cargo xtask {}", args.join(" ")))?;
    eprint!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        bail!("`cargo xtask {}` failed", args.join(" "));
    }
    Ok(())
}

/// The arguments of `cargo xtask sign` (or attest) for `reference`.
pub fn signing_args(
    task: &str,
    reference: &str,
    signing: &crate::flags::SigningArgs,
    insecure: bool,
) -> Vec<String> {
    let mut args = vec![task.to_owned(), reference.to_owned()];
    if let Some(key) = &signing.key {
        args.push(format!("--key={key}"));
    }
    if signing.no_tlog {
        args.push("--no-tlog".to_owned());
    }
    if insecure {
        args.push("--insecure".to_owned());
    }
    args
}
