//! What a re-run of the same release may skip: the signature and each
//! attestation already made for the same version, commit, configuration
//! and digest, and still in the registry. The file alone is never trusted:
//! a registry wiped, or a state file copied from another machine, would
//! otherwise skip signing and fail verification on every re-run.

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Release;
use crate::attest::{self, Attestation, Resume};
use crate::build::assemble::Built;
use crate::oci::client::Client;
use crate::oci::referrers::{self, Kind};
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
    /// Each attestation attached, recorded as soon as it is.
    #[serde(default)]
    attested: Vec<Attested>,
}

/// One attestation: the digest it is attached to and cosign's `--type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Attested {
    digest: String,
    kind: String,
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
            attested: Vec::new(),
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
            self.attested.clear();
        }
    }

    pub fn is_done(&self, step: &str) -> bool {
        self.done.iter().any(|s| s == step)
    }

    pub fn mark_done(&mut self, step: &str, out: &Utf8Path) -> Result<()> {
        if !self.is_done(step) {
            self.done.push(step.to_owned());
        }
        self.save(out)
    }

    fn forget(&mut self, step: &str) {
        self.done.retain(|s| s != step);
    }

    fn is_attested(&self, attestation: &Attestation) -> bool {
        self.attested
            .iter()
            .any(|a| a.digest == attestation.digest && a.kind == attestation.kind)
    }

    fn mark_attested(&mut self, attestation: &Attestation, out: &Utf8Path) -> Result<()> {
        if !self.is_attested(attestation) {
            self.attested.push(Attested {
                digest: attestation.digest.clone(),
                kind: attestation.kind.to_owned(),
            });
        }
        self.save(out)
    }

    fn save(&self, out: &Utf8Path) -> Result<()> {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {out}"))?;
        let path = State::path(out);
        crate::support::fs::write_atomically(&path, serde_json::to_string_pretty(self)?.as_bytes())
            .with_context(|| format!("cannot write the release state {path}"))
    }
}

impl Release<'_> {
    /// Whether the signing step may be skipped: the state says it was done
    /// for this digest, and the registry has a signature on the index and
    /// on every platform (`sign --recursive` makes one on each).
    pub(super) fn still_signed(
        &self,
        client: &Client,
        state: &mut State,
        built: &Built,
        out: &Utf8Path,
    ) -> Result<bool> {
        if !state.is_done(SIGNED) {
            return Ok(false);
        }
        let subjects =
            std::iter::once(&built.digest).chain(built.platforms.iter().map(|p| &p.digest));
        for digest in subjects {
            let attached = referrers::attached(client, &self.target.repository, digest)?;
            if !attached.iter().any(|a| a.kind == Kind::Signature) {
                eprintln!(
                    "note: {} says {digest} is signed, but {} has no signature on it; signing again",
                    State::path(out),
                    self.repo
                );
                state.forget(SIGNED);
                state.save(out)?;
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Resumes attest: an attestation is skipped only when the state recorded
/// it for this digest and the registry still has one of its predicate type
/// on the same subject.
pub(super) struct Resuming<'a> {
    pub state: &'a mut State,
    pub client: &'a Client,
    pub repository: &'a str,
    pub out: &'a Utf8Path,
    pub skipped: usize,
    pub attached: usize,
}

impl Resume for Resuming<'_> {
    fn is_attached(&mut self, attestation: &Attestation) -> Result<bool> {
        if !self.state.is_attested(attestation) {
            return Ok(false);
        }
        let predicate_type = attest::predicate_type(attestation.kind)
            .with_context(|| format!("no predicate type is known for {}", attestation.kind))?;
        let present = referrers::attached(self.client, self.repository, &attestation.digest)?
            .iter()
            .any(|a| a.is_attestation_of(predicate_type));
        if present {
            self.skipped += 1;
        } else {
            eprintln!(
                "note: {} says the {} attestation of {} is attached, but the registry has none; attaching it again",
                State::path(self.out),
                attestation.kind,
                attestation.digest
            );
        }
        Ok(present)
    }

    fn attached(&mut self, attestation: &Attestation) -> Result<()> {
        self.attached += 1;
        self.state.mark_attested(attestation, self.out)
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
