//! Who signs, and whom verification trusts: a cosign key, or keyless with
//! the GitHub Actions OIDC identity of the release workflow.

use anyhow::{bail, Context, Result};
use camino::Utf8Path;

use crate::supply_chain::cosign::SigningArgs;

/// Who signs, or whom a verification trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A key file, `env://VAR`, or a KMS URI, passed through to cosign.
    Key(String),
    /// Fulcio certificates from GitHub Actions OIDC.
    Keyless,
}

/// True in a GitHub Actions job that may request an OIDC token
/// (`permissions: id-token: write`).
pub fn github_oidc_available() -> bool {
    std::env::var("ACTIONS_ID_TOKEN_REQUEST_URL").is_ok_and(|v| !v.is_empty())
}

/// The signing identity for sign and attest.
pub fn signing_identity(signing: &SigningArgs) -> Result<Identity> {
    match &signing.key {
        Some(key) => {
            check_key_exists(key)?;
            Ok(Identity::Key(key.clone()))
        }
        None if github_oidc_available() => {
            if signing.no_tlog {
                bail!("--no-tlog needs --key: a keyless certificate lives ten minutes and only a transparency log proves it was valid at signing time");
            }
            Ok(Identity::Keyless)
        }
        None => bail!(
            "no signing key: pass --key cosign.key (or env://VAR, or a KMS URI), or run in GitHub Actions with `permissions: id-token: write` for keyless signing"
        ),
    }
}

/// The identity verify trusts: the public key, or else the release workflow.
pub fn verifying_identity(signing: &SigningArgs) -> Result<Identity> {
    match &signing.key {
        Some(key) => {
            check_key_exists(key)?;
            Ok(Identity::Key(key.clone()))
        }
        None => Ok(Identity::Keyless),
    }
}

fn check_key_exists(key: &str) -> Result<()> {
    if !key.contains("://") && !Utf8Path::new(key).is_file() {
        bail!("the key {key} does not exist; pass the path of a cosign key (cosign generate-key-pair makes one), env://VAR, or a KMS URI");
    }
    Ok(())
}

/// A cosign private key file needs its password in COSIGN_PASSWORD: cosign
/// would otherwise prompt on a terminal that a release job does not have.
pub fn check_password(identity: &Identity) -> Result<()> {
    if let Identity::Key(key) = identity {
        if !key.contains("://") && std::env::var_os("COSIGN_PASSWORD").is_none() {
            bail!("COSIGN_PASSWORD is not set; export the password of {key} (an empty value for a key without one)");
        }
    }
    Ok(())
}

/// `^https://github\.com/OWNER/REPO/\.github/workflows/release\.yml@refs/tags/v`
/// for `https://github.com/OWNER/REPO`.
pub fn release_identity_regexp(repository: &str) -> Result<String> {
    let path = repository
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .strip_prefix("https://github.com/")
        .filter(|p| p.split('/').count() == 2 && !p.split('/').any(str::is_empty))
        .with_context(|| {
            format!(
                "keyless verification trusts the release workflow of a GitHub repository, but the package's repository is {repository:?}; set repository = \"https://github.com/OWNER/REPO\" in Cargo.toml, or pass --key cosign.pub"
            )
        })?;
    Ok(format!(
        "^https://github\\.com/{}/\\.github/workflows/release\\.yml@refs/tags/v",
        regex_escape(path)
    ))
}

fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
