//! What the xtask needs to know from git.

use anyhow::{bail, Context, Result};
use camino::Utf8Path;
use xshell::{cmd, Shell};

use crate::support::tools;

pub struct Git {
    sh: Shell,
    git: std::path::PathBuf,
}

impl Git {
    pub fn open(dir: &Utf8Path) -> Result<Git> {
        let sh = Shell::new()?;
        sh.change_dir(dir);
        Ok(Git {
            sh,
            git: tools::GIT.find()?,
        })
    }

    fn read(&self, args: &[&str]) -> Result<String> {
        let git = &self.git;
        let out = cmd!(self.sh, "{git} {args...}")
            .quiet()
            .ignore_stderr()
            .read()
            .with_context(|| format!("git {} failed", args.join(" ")))?;
        Ok(out.trim().to_owned())
    }

    pub fn is_repository(&self) -> bool {
        self.read(&["rev-parse", "--git-dir"]).is_ok()
    }

    /// The full sha of HEAD.
    pub fn head_sha(&self) -> Result<String> {
        self.read(&["rev-parse", "HEAD"])
            .context("cannot read HEAD; is this a git checkout with a commit?")
    }

    /// The committer time of HEAD, the reproducible SOURCE_DATE_EPOCH.
    pub fn head_commit_time(&self) -> Result<u64> {
        let text = self.read(&["log", "-1", "--format=%ct", "HEAD"])?;
        text.parse()
            .with_context(|| format!("unexpected commit time {text:?} from git"))
    }

    /// The current branch, or None on a detached HEAD.
    pub fn current_branch(&self) -> Option<String> {
        self.read(&["symbolic-ref", "--short", "-q", "HEAD"])
            .ok()
            .filter(|b| !b.is_empty())
    }

    /// The commit a tag points at, or None if the tag does not exist.
    pub fn tag_commit(&self, tag: &str) -> Result<Option<String>> {
        let refname = format!("refs/tags/{tag}^{{commit}}");
        match self.read(&["rev-parse", "-q", "--verify", &refname]) {
            Ok(sha) if !sha.is_empty() => Ok(Some(sha)),
            _ => Ok(None),
        }
    }
}

/// Accepts a full 40-hex sha, or an abbreviation of at least 7.
pub fn check_sha(sha: &str) -> Result<()> {
    if sha.len() < 7 || sha.len() > 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("invalid commit sha {sha:?}: expected 7 to 40 hex characters, such as the output of `git rev-parse HEAD`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shas() {
        assert!(check_sha("abc1234").is_ok());
        assert!(check_sha("abc123").is_err());
        assert!(check_sha("xyz1234").is_err());
    }
}
