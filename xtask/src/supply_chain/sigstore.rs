//! Which Sigstore signs, and what verification trusts: the public-good
//! instance (Fulcio, Rekor and the trusted root from Sigstore's TUF
//! repository) unless the operator names their own with a signing config
//! and a trusted root, cosign v3's own formats.
//!
//! What proves that a ten-minute keyless certificate was valid when it
//! signed follows from those two files. A transparency log entry is required
//! only where the trusted root has a log and the signing config names a
//! Rekor; a signed timestamp wherever the signing config names a timestamp
//! authority (or, without one, where the trusted root has no log). A private
//! instance with a timestamp authority and no Rekor thus signs keylessly
//! without a log, and its signatures verify only with their timestamp.

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Deserialize;

use crate::supply_chain::cosign::{SigningArgs, GITHUB_OIDC_ISSUER};
use crate::supply_chain::identity::WorkflowIdentity;
use crate::support::config::Config;

/// The Sigstore one run signs with and verifies against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Which Fulcio, timestamp authority and Rekor sign; None: the
    /// public-good instance's, from its TUF repository.
    pub signing_config: Option<Utf8PathBuf>,
    /// Whose certificates, timestamps and log entries verify; None: the
    /// public-good trusted root.
    pub trusted_root: Option<Utf8PathBuf>,
    /// The OIDC issuer a keyless certificate must name.
    pub oidc_issuer: String,
    pub evidence: Evidence,
}

/// What a verification requires besides the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    /// An entry in a transparency log of the trusted root.
    pub transparency_log: bool,
    /// An RFC 3161 timestamp from a timestamp authority of the trusted root.
    pub signed_timestamp: bool,
    /// A certificate transparency log's SCT in keyless certificates.
    pub certificate_transparency: bool,
}

impl Default for Instance {
    fn default() -> Instance {
        Instance::public_good()
    }
}

impl Instance {
    /// Sigstore's public-good instance and GitHub Actions' issuer: Rekor
    /// proves the signing time, Fulcio's certificates carry SCTs.
    pub fn public_good() -> Instance {
        Instance {
            signing_config: None,
            trusted_root: None,
            oidc_issuer: GITHUB_OIDC_ISSUER.to_owned(),
            evidence: Evidence {
                transparency_log: true,
                signed_timestamp: false,
                certificate_transparency: true,
            },
        }
    }

    /// The flags, else `[workspace.metadata.release.sigstore]`, else the
    /// public-good instance; the files are read to learn what they require.
    pub fn resolve(config: &Config, signing: &SigningArgs) -> Result<Instance> {
        let configured =
            |value: &str| (!value.is_empty()).then(|| config.workspace_root.join(value));
        let signing_config = signing
            .signing_config
            .clone()
            .or_else(|| configured(&config.sigstore.signing_config));
        let trusted_root = signing
            .trusted_root
            .clone()
            .or_else(|| configured(&config.sigstore.trusted_root));
        let oidc_issuer = signing
            .oidc_issuer
            .clone()
            .or_else(|| {
                (!config.sigstore.oidc_issuer.is_empty())
                    .then(|| config.sigstore.oidc_issuer.clone())
            })
            .unwrap_or_else(|| GITHUB_OIDC_ISSUER.to_owned());
        Instance::from_files(signing_config, trusted_root, oidc_issuer)
    }

    fn from_files(
        signing_config: Option<Utf8PathBuf>,
        trusted_root: Option<Utf8PathBuf>,
        oidc_issuer: String,
    ) -> Result<Instance> {
        if oidc_issuer.is_empty() || !oidc_issuer.contains("://") {
            bail!("the OIDC issuer {oidc_issuer:?} is not a URL; pass --oidc-issuer with the issuer's URL, such as {GITHUB_OIDC_ISSUER}");
        }
        let Some(root_path) = &trusted_root else {
            if let Some(path) = &signing_config {
                bail!("the signing config {path} names a private Sigstore, but no trusted root says which of its certificates to trust; pass --trusted-root FILE (`cosign trusted-root create` makes one), or set sigstore.trusted-root in [workspace.metadata.release]");
            }
            return Ok(Instance {
                oidc_issuer,
                ..Instance::public_good()
            });
        };
        let root = TrustedRoot::read(root_path)?;
        let services = signing_config
            .as_deref()
            .map(SigningConfig::read)
            .transpose()?;
        let transparency_log = !root.tlogs.is_empty()
            && services
                .as_ref()
                .is_none_or(|s| !s.rekor_tlog_urls.is_empty());
        let signed_timestamp = !root.timestamp_authorities.is_empty()
            && services
                .as_ref()
                .map_or(!transparency_log, |s| !s.tsa_urls.is_empty());
        Ok(Instance {
            signing_config,
            trusted_root,
            oidc_issuer,
            evidence: Evidence {
                transparency_log,
                signed_timestamp,
                certificate_transparency: !root.ctlogs.is_empty(),
            },
        })
    }

    /// Keyless verification needs a proof of the signing time: the
    /// certificate alone was valid for ten minutes, long past.
    pub fn check_keyless(&self) -> Result<()> {
        if !self.evidence.transparency_log && !self.evidence.signed_timestamp {
            let root = self
                .trusted_root
                .as_ref()
                .map_or("the trusted root".to_owned(), |p| p.to_string());
            bail!("{root} (with the signing config) has neither a transparency log nor a timestamp authority, so nothing proves that a keyless certificate, valid for ten minutes, was valid when it signed; add a timestamp authority to the signing config and the trusted root, or sign with --key");
        }
        Ok(())
    }

    /// `workflow`, trusted through this instance's OIDC issuer.
    pub fn issued(&self, workflow: WorkflowIdentity) -> WorkflowIdentity {
        WorkflowIdentity {
            issuer: self.oidc_issuer.clone(),
            ..workflow
        }
    }

    /// Whether this is the public-good instance.
    pub fn is_public_good(&self) -> bool {
        self.trusted_root.is_none() && self.signing_config.is_none()
    }
}

/// The parts of a trusted root (`application/vnd.dev.sigstore.trustedroot+json`)
/// that decide what a verification can require.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrustedRoot {
    #[serde(default)]
    tlogs: Vec<serde_json::Value>,
    #[serde(default)]
    certificate_authorities: Vec<serde_json::Value>,
    #[serde(default)]
    ctlogs: Vec<serde_json::Value>,
    #[serde(default)]
    timestamp_authorities: Vec<serde_json::Value>,
}

impl TrustedRoot {
    fn read(path: &Utf8Path) -> Result<TrustedRoot> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("cannot read the trusted root {path}; pass the trusted_root.json of your Sigstore (`cosign trusted-root create` makes one)")
        })?;
        let root: TrustedRoot = serde_json::from_str(&text).with_context(|| {
            format!("{path} is not a Sigstore trusted root; pass the trusted_root.json of your Sigstore (`cosign trusted-root create` makes one)")
        })?;
        if root.certificate_authorities.is_empty()
            && root.timestamp_authorities.is_empty()
            && root.tlogs.is_empty()
        {
            bail!("the trusted root {path} trusts no certificate authority, timestamp authority or log; pass the trusted_root.json of your Sigstore");
        }
        Ok(root)
    }
}

/// The services a signing config (`application/vnd.dev.sigstore.signingconfig.v0.2+json`) names.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SigningConfig {
    #[serde(default)]
    rekor_tlog_urls: Vec<serde_json::Value>,
    #[serde(default)]
    tsa_urls: Vec<serde_json::Value>,
}

impl SigningConfig {
    fn read(path: &Utf8Path) -> Result<SigningConfig> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("cannot read the signing config {path}; pass the signing_config.json of your Sigstore (`cosign signing-config create` makes one)")
        })?;
        serde_json::from_str(&text).with_context(|| {
            format!("{path} is not a Sigstore signing config; pass the signing_config.json of your Sigstore (`cosign signing-config create` makes one)")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Utf8Path, name: &str, value: serde_json::Value) -> Utf8PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, value.to_string()).unwrap();
        path
    }

    fn root(dir: &Utf8Path, tlogs: usize, tsas: usize, ctlogs: usize) -> Utf8PathBuf {
        let entries = |n: usize| vec![serde_json::json!({}); n];
        write(
            dir,
            "root.json",
            serde_json::json!({
                "mediaType": crate::supply_chain::cosign::TRUSTED_ROOT_MEDIA_TYPE,
                "tlogs": entries(tlogs),
                "certificateAuthorities": entries(1),
                "ctlogs": entries(ctlogs),
                "timestampAuthorities": entries(tsas),
            }),
        )
    }

    fn services(dir: &Utf8Path, rekor: bool, tsa: bool) -> Utf8PathBuf {
        let url = |on: bool| {
            if on {
                vec![serde_json::json!({"url": "http://x"})]
            } else {
                vec![]
            }
        };
        write(
            dir,
            "signing.json",
            serde_json::json!({
                "mediaType": crate::supply_chain::cosign::SIGNING_CONFIG_MEDIA_TYPE,
                "caUrls": url(true),
                "rekorTlogUrls": url(rekor),
                "tsaUrls": url(tsa),
            }),
        )
    }

    fn evidence(instance: &Instance) -> (bool, bool, bool) {
        let e = instance.evidence;
        (
            e.transparency_log,
            e.signed_timestamp,
            e.certificate_transparency,
        )
    }

    #[test]
    fn what_verification_requires_follows_the_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Utf8Path::from_path(tmp.path()).unwrap();
        let issuer = || "https://issuer.internal".to_owned();
        // A timestamp authority and no Rekor: no log, the timestamp instead.
        let private = Instance::from_files(
            Some(services(dir, false, true)),
            Some(root(dir, 0, 1, 0)),
            issuer(),
        )
        .unwrap();
        assert_eq!(evidence(&private), (false, true, false));
        private.check_keyless().unwrap();
        // Both: both required.
        let both = Instance::from_files(
            Some(services(dir, true, true)),
            Some(root(dir, 1, 1, 1)),
            issuer(),
        )
        .unwrap();
        assert_eq!(evidence(&both), (true, true, true));
        // A verifier with only the trusted root: the log where there is one,
        // else the timestamp.
        let logged = Instance::from_files(None, Some(root(dir, 1, 1, 1)), issuer()).unwrap();
        assert_eq!(evidence(&logged), (true, false, true));
        let stamped = Instance::from_files(None, Some(root(dir, 0, 1, 0)), issuer()).unwrap();
        assert_eq!(evidence(&stamped), (false, true, false));
        // Neither: keyless cannot be verified.
        let none = Instance::from_files(
            Some(services(dir, false, false)),
            Some(root(dir, 1, 1, 0)),
            issuer(),
        )
        .unwrap();
        assert_eq!(evidence(&none), (false, false, false));
        assert!(none
            .check_keyless()
            .unwrap_err()
            .to_string()
            .ends_with("has neither a transparency log nor a timestamp authority, so nothing proves that a keyless certificate, valid for ten minutes, was valid when it signed; add a timestamp authority to the signing config and the trusted root, or sign with --key"));
    }

    #[test]
    fn the_public_good_instance_is_the_default() {
        let instance = Instance::from_files(None, None, GITHUB_OIDC_ISSUER.to_owned()).unwrap();
        assert!(instance.is_public_good());
        assert_eq!(instance, Instance::public_good());
        assert_eq!(evidence(&instance), (true, false, true));
    }

    #[test]
    fn bad_files_and_issuers_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Utf8Path::from_path(tmp.path()).unwrap();
        let err = Instance::from_files(
            Some(services(dir, false, true)),
            None,
            GITHUB_OIDC_ISSUER.to_owned(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("names a private Sigstore, but no trusted root says which of its certificates to trust; pass --trusted-root FILE"), "{err}");
        let err = Instance::from_files(
            None,
            Some(dir.join("missing.json")),
            GITHUB_OIDC_ISSUER.to_owned(),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("cannot read the trusted root"),
            "{err}"
        );
        let empty = write(dir, "empty.json", serde_json::json!({"mediaType": "x"}));
        let err =
            Instance::from_files(None, Some(empty), GITHUB_OIDC_ISSUER.to_owned()).unwrap_err();
        assert!(err.to_string().ends_with("trusts no certificate authority, timestamp authority or log; pass the trusted_root.json of your Sigstore"), "{err}");
        let err = Instance::from_files(None, None, "issuer.internal".to_owned()).unwrap_err();
        assert_eq!(err.to_string(), "the OIDC issuer \"issuer.internal\" is not a URL; pass --oidc-issuer with the issuer's URL, such as https://token.actions.githubusercontent.com");
    }
}
