//! What a re-run of the same release may skip: the signing steps already
//! done for the same version, commit, configuration and digest.

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Release;
use crate::support::config::Platform;
use crate::support::source::Source;

/// Steps a re-run skips for the same digest: repeating them would add
/// duplicate signatures and attestations. Everything else is idempotent.
pub const SIGNED: &str = "sign";
pub const ATTESTED: &str = "attest";

impl Release<'_> {
    pub(super) fn state_key(&self, tag: &str, source: &Source) -> StateKey {
        StateKey {
            version: tag.to_owned(),
            commit: source.sha.clone(),
            config: json!({
                "image": self.repo,
                "base": self.base,
                "platforms": self.config.platforms.iter().map(Platform::to_string).collect::<Vec<_>>(),
                "key": self.flags.signing.key,
                "no_tlog": self.flags.signing.no_tlog,
            })
            .to_string(),
        }
    }
}

/// What a state file is valid for: another version, commit or
/// configuration starts from scratch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateKey {
    version: String,
    commit: String,
    config: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct State {
    key: StateKey,
    digest: Option<String>,
    done: Vec<String>,
}

impl State {
    pub(super) fn path(out: &Utf8Path) -> Utf8PathBuf {
        out.join("state.json")
    }

    pub fn load(out: &Utf8Path, key: StateKey) -> Result<State> {
        let path = State::path(out);
        let fresh = State {
            key: key.clone(),
            digest: None,
            done: Vec::new(),
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(fresh);
        };
        match serde_json::from_str::<State>(&text) {
            Ok(state) if state.key == key => Ok(state),
            Ok(_) => {
                eprintln!("note: {path} is for another commit or configuration; starting over");
                Ok(fresh)
            }
            Err(err) => {
                eprintln!("note: ignoring the unreadable state file {path}: {err}");
                Ok(fresh)
            }
        }
    }

    /// Signatures belong to one digest: a different build starts over.
    pub fn start(&mut self, digest: &str) {
        if self.digest.as_deref() != Some(digest) {
            self.digest = Some(digest.to_owned());
            self.done.clear();
        }
    }

    pub fn is_done(&self, step: &str) -> bool {
        self.done.iter().any(|s| s == step)
    }

    pub fn mark_done(&mut self, step: &str, out: &Utf8Path) -> Result<()> {
        if !self.is_done(step) {
            self.done.push(step.to_owned());
        }
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {out}"))?;
        let path = State::path(out);
        crate::support::fs::write_atomically(&path, serde_json::to_string_pretty(self)?.as_bytes())
            .with_context(|| format!("cannot write the release state {path}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn key(commit: &str) -> StateKey {
        StateKey {
            version: "v1.0.0".into(),
            commit: commit.into(),
            config: "{}".into(),
        }
    }

    #[test]
    pub(super) fn state_resumes_only_for_the_same_key_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let out = Utf8Path::from_path(dir.path()).unwrap();
        let mut state = State::load(out, key("a")).unwrap();
        state.start("sha256:1");
        state.mark_done(SIGNED, out).unwrap();

        let mut again = State::load(out, key("a")).unwrap();
        again.start("sha256:1");
        assert!(again.is_done(SIGNED));
        assert!(!again.is_done(ATTESTED));

        let mut other_digest = State::load(out, key("a")).unwrap();
        other_digest.start("sha256:2");
        assert!(!other_digest.is_done(SIGNED));

        let other_commit = State::load(out, key("b")).unwrap();
        assert!(!other_commit.is_done(SIGNED));
    }
}
