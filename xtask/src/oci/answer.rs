//! How much of a registry's answer is read, by what the answer is. A
//! registry, or anything answering in its name, decides how long a body
//! is; each kind gets the most it can legitimately need, and a blob is
//! never held in memory whole unless it is one of the small ones.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Manifests, indexes, tag lists and referrers lists: distribution's own
/// limit for a manifest.
pub const DOCUMENT_LIMIT: u64 = 4 << 20;
/// A token service's reply, and the body of an error.
pub const SMALL_LIMIT: u64 = 1 << 20;
/// A blob read into memory: a config, a signature or attestation, a chart.
/// Layers are streamed to a file instead ([`Answer::BlobFile`]).
pub const IN_MEMORY_BLOB_LIMIT: u64 = 64 << 20;

/// What a request's successful answer is.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    /// A manifest, an index, a tag list or a referrers list.
    Document,
    /// A token service's reply.
    Token,
    /// A small blob, read into memory.
    Blob,
    /// A blob of any size, streamed into this file (created anew on each
    /// try) and hashed on the way.
    BlobFile(&'a Path),
}

impl Answer<'_> {
    fn limit(self) -> Option<(u64, &'static str)> {
        match self {
            Answer::Document => Some((DOCUMENT_LIMIT, "manifest, index or list")),
            Answer::Token => Some((SMALL_LIMIT, "token reply")),
            Answer::Blob => Some((IN_MEMORY_BLOB_LIMIT, "config or signature blob")),
            Answer::BlobFile(_) => None,
        }
    }
}

/// A body streamed into a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    pub size: u64,
    /// `sha256:<hex>` of what was written.
    pub digest: String,
}

/// A body as read: in memory, or spooled to a file.
pub struct Body {
    pub bytes: Vec<u8>,
    pub spooled: Option<Spooled>,
}

/// Reads `body`: a success as `answer` says, at most its limit (more is an
/// error naming `what`); an error's first `SMALL_LIMIT` bytes, the rest
/// left unread.
pub fn read(body: impl Read, success: bool, answer: Answer, what: &str) -> Result<Body> {
    if !success {
        let mut bytes = Vec::new();
        body.take(SMALL_LIMIT)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read the answer to {what}"))?;
        return Ok(Body {
            bytes,
            spooled: None,
        });
    }
    match (answer, answer.limit()) {
        (Answer::BlobFile(path), _) => {
            let file =
                File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            let spooled = spool(body, file).with_context(|| {
                format!("cannot read the answer to {what} into {}", path.display())
            })?;
            Ok(Body {
                bytes: Vec::new(),
                spooled: Some(spooled),
            })
        }
        (_, Some((limit, kind))) => {
            let mut bytes = Vec::new();
            body.take(limit + 1)
                .read_to_end(&mut bytes)
                .with_context(|| format!("cannot read the answer to {what}"))?;
            if bytes.len() as u64 > limit {
                bail!(
                    "the answer to {what} is larger than {} MiB, the most a {kind} may be; the registry is misbehaving",
                    limit >> 20
                );
            }
            Ok(Body {
                bytes,
                spooled: None,
            })
        }
        (_, None) => bail!("no limit for {answer:?}; this is a bug in the xtask"),
    }
}

/// Copies `from` into `to`, hashing on the way.
fn spool(mut from: impl Read, mut to: impl Write) -> std::io::Result<Spooled> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = from.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        to.write_all(&buffer[..n])?;
        size += n as u64;
    }
    to.flush()?;
    Ok(Spooled {
        size,
        digest: format!("sha256:{}", hex::encode(hasher.finalize())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_stops_at_its_limit() {
        let big = vec![b'x'; (DOCUMENT_LIMIT + 1) as usize];
        let error = read(&big[..], true, Answer::Document, "GET m")
            .err()
            .unwrap()
            .to_string();
        assert_eq!(error, "the answer to GET m is larger than 4 MiB, the most a manifest, index or list may be; the registry is misbehaving");
        assert!(read(&big[..DOCUMENT_LIMIT as usize], true, Answer::Document, "m").is_ok());
        let error = read(&big[..], true, Answer::Token, "GET t")
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("larger than 1 MiB, the most a token reply"),
            "{error}"
        );
        let error_body = read(&big[..], false, Answer::Document, "e").unwrap();
        assert_eq!(error_body.bytes.len() as u64, SMALL_LIMIT);
    }

    #[test]
    fn a_blob_file_is_hashed_as_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let body = read(&b"abc"[..], true, Answer::BlobFile(&path), "b").unwrap();
        assert_eq!(
            body.spooled,
            Some(Spooled {
                size: 3,
                digest: "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
                    .to_owned()
            })
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
    }
}
