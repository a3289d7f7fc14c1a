//! The `verify/` folder of a bundle: what an operator needs to load and
//! verify the release with cosign and crane alone, without this tool
//! (docs/air-gapped.md). The OCI layout readers (skopeo, crane, oras, and
//! `--load`) ignore files outside `index.json` and `blobs/`.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use camino::Utf8Path;

use crate::oci::Descriptor;
use crate::supply_chain::cosign::SigningArgs;
use crate::supply_chain::identity::WorkflowIdentity;

/// The folder in the archive.
pub const DIR: &str = "verify/";

/// The files of `verify/`, by path in the archive:
/// - `tags`: one `TAG DIGEST` line per tag, cosign's `sha256-<hex>` first
///   and the version last, the order in which they may be set;
/// - `identity`: whom to trust, with `--key` `key cosign.pub` (or the
///   key's URI), or with `--trusted-root` the release's exact keyless
///   workflow identity, one `FLAG VALUE` line per cosign flag
///   (`identity_lines`);
/// - `cosign.pub`: the public key, when bundled with `--key FILE`;
/// - `trusted_root.json`: the Sigstore trusted root, with `--trusted-root`.
pub fn files(
    refs: &[Descriptor],
    version: &str,
    signing: &SigningArgs,
    trusted_root: Option<&Utf8Path>,
    workflow: impl FnOnce() -> Result<WorkflowIdentity>,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = vec![(format!("{DIR}tags"), tags(refs, version).into_bytes())];
    match &signing.key {
        Some(key) if !key.contains("://") => {
            let bytes = std::fs::read(key)
                .with_context(|| format!("cannot read the public key {key}; pass the cosign.pub that verifies the release"))?;
            if String::from_utf8_lossy(&bytes).contains("PRIVATE KEY") {
                bail!("{key} is a private key; bundle the public key (cosign.pub), which is all an operator needs");
            }
            files.push((format!("{DIR}identity"), b"key cosign.pub\n".to_vec()));
            files.push((format!("{DIR}cosign.pub"), bytes));
        }
        Some(uri) => files.push((
            format!("{DIR}identity"),
            format!("key {uri}\n").into_bytes(),
        )),
        // Keyless trust is bundled only with its trusted root: without
        // one, the bundle says nothing about whom to trust.
        None if trusted_root.is_some() => files.push((
            format!("{DIR}identity"),
            identity_lines(&workflow()?).into_bytes(),
        )),
        None => {}
    }
    if let Some(root) = trusted_root {
        let bytes = std::fs::read(root).with_context(|| {
            format!("cannot read the trusted root {root}; pass a Sigstore trusted_root.json")
        })?;
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .with_context(|| format!("{root} is not JSON; pass a Sigstore trusted_root.json"))?;
        files.push((format!("{DIR}trusted_root.json"), bytes));
    }
    files.sort();
    Ok(files)
}

/// Refuses an archive whose `verify/` copies differ from `expected`, what
/// the operator's own trust would have bundled. The copies are a
/// convenience for crane and cosign; anyone who can alter the archive can
/// alter them, so they never decide anything: a copy the operator's trust
/// does not produce, or one with other bytes, stops the load.
pub fn check_copies(
    archive: &Utf8Path,
    copies: &BTreeMap<String, Vec<u8>>,
    expected: &[(String, Vec<u8>)],
) -> Result<()> {
    for (path, bytes) in copies {
        match expected.iter().find(|(p, _)| p == path) {
            Some((_, mine)) if mine == bytes => {}
            Some(_) => bail!(
                "cannot load {archive}: its {path} differs from what you trust (--key, or --trusted-root and the release's identity); the archive was altered or bundled with other trust: nothing was pushed or tagged"
            ),
            None => bail!(
                "cannot load {archive}: it carries {path}, which what you trust (--key, or --trusted-root and the release's identity) does not include; the archive was altered or bundled with other trust: nothing was pushed or tagged"
            ),
        }
    }
    Ok(())
}

/// The keyless identity as `verify/identity` holds it: each of cosign's
/// `--certificate-…` flags and its value on one line, `FLAG VALUE`.
pub fn identity_lines(workflow: &WorkflowIdentity) -> String {
    workflow
        .cosign_args()
        .iter()
        .filter_map(|arg| arg.strip_prefix("--")?.split_once('='))
        .map(|(flag, value)| format!("{flag} {value}\n"))
        .collect()
}

/// `TAG DIGEST` lines: signatures' fallback tags first, the version last.
fn tags(refs: &[Descriptor], version: &str) -> String {
    let named: Vec<(&str, &str)> = refs
        .iter()
        .map(|r| (super::ref_name(r), r.digest.as_str()))
        .filter(|(name, _)| !name.is_empty())
        .collect();
    let (release, signatures): (Vec<_>, Vec<_>) =
        named.into_iter().partition(|(name, _)| *name == version);
    signatures
        .into_iter()
        .chain(release)
        .map(|(name, digest)| format!("{name} {digest}\n"))
        .collect()
}

/// The commands that load the archive into another registry; the
/// operator's repository replaces `registry.internal/rust-release`. They
/// name the trust the archive was bundled with: the key, or for a keyless
/// release the Sigstore trusted root the operator brings (never the
/// archive's copy, which anyone who can alter the archive can replace).
/// Bundled with neither, the key form is shown with the keyless one beside
/// it.
pub fn load_instructions(
    files: &[(String, Vec<u8>)],
    version: &str,
    digest: &str,
    out: &Utf8Path,
) -> String {
    let file = out.file_name().unwrap_or(out.as_str());
    let repo = "registry.internal/rust-release";
    let identity = files
        .iter()
        .find(|(path, _)| *path == format!("{DIR}identity"))
        .map(|(_, bytes)| String::from_utf8_lossy(bytes).into_owned());
    let key_form = |key: &str| {
        (
            format!("--key {key}"),
            format!("cosign verify --key {key} --insecure-ignore-tlog=true {repo}@{digest}"),
        )
    };
    let keyless_form = (
        "--trusted-root trusted_root.json".to_owned(),
        format!("cargo xtask verify {repo}@{digest} --trusted-root trusted_root.json"),
    );
    let ((load_trust, verify), note) = match identity.as_deref() {
        Some(text) => match text.strip_prefix("key ") {
            Some(key) => (key_form(key.trim()), ""),
            None => (keyless_form, ""),
        },
        None => (
            key_form("cosign.pub"),
            "\n(a keyless release: --trusted-root trusted_root.json, the trusted root you bring, in place of --key)",
        ),
    };
    format!(
        "load it into your registry (replace {repo}):\n  sha256sum -c {file}.sha256\n  cargo xtask bundle {version} --load {load_trust} --out {file} --image {repo}\nthen verify there:\n  {verify}{note}\nwithout this tool, with crane and cosign: docs/air-gapped.md"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instructions(files: &[(&str, &str)]) -> String {
        let files: Vec<(String, Vec<u8>)> = files
            .iter()
            .map(|(p, b)| ((*p).to_owned(), b.as_bytes().to_vec()))
            .collect();
        load_instructions(
            &files,
            "v1.2.3",
            "sha256:ab",
            Utf8Path::new("/o/server-v1.2.3.oci.tar"),
        )
    }

    #[test]
    fn load_instructions_name_the_trust_the_archive_was_bundled_with() {
        let keyed = instructions(&[("verify/identity", "key cosign.pub\n")]);
        assert!(keyed.contains("cargo xtask bundle v1.2.3 --load --key cosign.pub --out server-v1.2.3.oci.tar --image registry.internal/rust-release\n"), "{keyed}");
        assert!(keyed.contains("  cosign verify --key cosign.pub --insecure-ignore-tlog=true registry.internal/rust-release@sha256:ab\n"), "{keyed}");
        let kms = instructions(&[("verify/identity", "key gcpkms://k\n")]);
        assert!(kms.contains("--load --key gcpkms://k --out"), "{kms}");
        let keyless = instructions(&[
                ("verify/identity", "certificate-identity https://github.com/o/r/.github/workflows/release.yml@refs/tags/v1.2.3\n"),
                ("verify/trusted_root.json", "{}"),
            ]);
        assert!(!keyless.contains("cosign.pub"), "{keyless}");
        assert!(keyless.contains("cargo xtask bundle v1.2.3 --load --trusted-root trusted_root.json --out server-v1.2.3.oci.tar --image registry.internal/rust-release\n"), "{keyless}");
        assert!(keyless.contains("  cargo xtask verify registry.internal/rust-release@sha256:ab --trusted-root trusted_root.json\n"), "{keyless}");
        // Bundled with no trust: the operator brings one or the other.
        let neither = instructions(&[]);
        assert!(
            neither.contains("--load --key cosign.pub --out"),
            "{neither}"
        );
        assert!(neither.contains("\n(a keyless release: --trusted-root trusted_root.json, the trusted root you bring, in place of --key)\n"), "{neither}");
    }

    fn named(name: &str, digest: &str) -> Descriptor {
        let mut annotations = BTreeMap::new();
        annotations.insert(super::super::REF_NAME.to_owned(), name.to_owned());
        Descriptor {
            annotations: Some(annotations),
            digest: digest.to_owned(),
            ..Descriptor::of(crate::oci::INDEX, b"{}")
        }
    }

    #[test]
    fn tags_list_signatures_first_and_the_version_last() {
        let refs = [
            named("v1.2.3", "sha256:aa"),
            named("sha256-aa", "sha256:bb"),
            Descriptor::of(crate::oci::INDEX, b"{}"),
            named("sha256-cc", "sha256:dd"),
        ];
        assert_eq!(
            tags(&refs, "v1.2.3"),
            "sha256-aa sha256:bb\nsha256-cc sha256:dd\nv1.2.3 sha256:aa\n"
        );
    }

    #[test]
    fn copies_must_equal_what_the_operator_trusts() {
        let expected = vec![
            ("verify/cosign.pub".to_owned(), b"mine".to_vec()),
            ("verify/identity".to_owned(), b"key cosign.pub\n".to_vec()),
            ("verify/tags".to_owned(), b"v1.2.3 sha256:aa\n".to_vec()),
        ];
        let archive = Utf8Path::new("a.tar");
        let copies = |list: &[(&str, &[u8])]| -> BTreeMap<String, Vec<u8>> {
            list.iter()
                .map(|(p, b)| (p.to_string(), b.to_vec()))
                .collect()
        };
        // The same, or fewer: a convenience left out decides nothing.
        check_copies(
            archive,
            &copies(&[("verify/cosign.pub", b"mine")]),
            &expected,
        )
        .unwrap();
        check_copies(archive, &copies(&[]), &expected).unwrap();
        let err = check_copies(
            archive,
            &copies(&[
                ("verify/cosign.pub", b"theirs"),
                ("verify/identity", b"key cosign.pub\n"),
            ]),
            &expected,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "cannot load a.tar: its verify/cosign.pub differs from what you trust (--key, or --trusted-root and the release's identity); the archive was altered or bundled with other trust: nothing was pushed or tagged");
        let err = check_copies(
            archive,
            &copies(&[("verify/trusted_root.json", b"{}")]),
            &expected,
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "cannot load a.tar: it carries verify/trusted_root.json, which what you trust"
            ),
            "{err}"
        );
        let err = check_copies(
            archive,
            &copies(&[("verify/tags", b"v2.0.0 sha256:aa\n")]),
            &expected,
        )
        .unwrap_err();
        assert!(err.to_string().contains("its verify/tags differs"), "{err}");
    }

    #[test]
    fn keyless_names_exactly_the_release_run() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let dir = tempfile::tempdir().unwrap();
        let root = camino::Utf8PathBuf::from_path_buf(dir.path().join("root.json")).unwrap();
        std::fs::write(&root, b"{}").unwrap();
        let identity = || {
            WorkflowIdentity::new(
                "https://github.com/acme/widget",
                &crate::supply_chain::identity::Run::Release(semver::Version::new(1, 2, 3)),
                Some(sha),
                crate::supply_chain::cosign::GITHUB_OIDC_ISSUER,
            )
        };
        // Without a trusted root, nothing is said about whom to trust.
        let bare = files(&[], "v1.2.3", &SigningArgs::default(), None, identity).unwrap();
        assert_eq!(
            bare.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
            ["verify/tags"]
        );
        let files = files(
            &[],
            "v1.2.3",
            &SigningArgs::default(),
            Some(&root),
            identity,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(files[0].1.clone()).unwrap(),
            format!("certificate-identity https://github.com/acme/widget/.github/workflows/release.yml@refs/tags/v1.2.3\ncertificate-oidc-issuer https://token.actions.githubusercontent.com\ncertificate-github-workflow-repository acme/widget\ncertificate-github-workflow-trigger push\ncertificate-github-workflow-ref refs/tags/v1.2.3\ncertificate-github-workflow-sha {sha}\n")
        );
        assert_eq!(files[0].0, "verify/identity");
        assert_eq!(files[2].0, "verify/trusted_root.json");
    }
}
