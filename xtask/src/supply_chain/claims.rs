//! What cosign verified, read back: the claims of `cosign verify` and the
//! in-toto statements of `cosign verify-attestation`, each checked to name
//! the digest asked about.

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde_json::Value;

use crate::oci::subject::Subject;
use crate::supply_chain::cosign::{self, Cosign};
use crate::supply_chain::identity::Identity;

/// The `critical.type` of a claim made by `cosign sign`.
pub const SIGNATURE_TYPE: &str = "https://sigstore.dev/cosign/sign/v1";

pub fn verify_signature(
    cosign: &Cosign,
    options: &cosign::Options,
    subject: &Subject,
    digest: &str,
) -> Result<String> {
    let output = cosign.run(&options.verify(&subject.by_digest(digest))?, true)?;
    if !output.success {
        bail!(
            "not signed by {}: {}",
            trusted(options),
            output.error_line()
        );
    }
    // cosign v3 counts every bundle attached to the digest, attestations
    // included, as a signature: only a claim of the signing type shows
    // that the image itself was signed.
    let claims: Vec<Value> = serde_json::from_str(output.stdout.trim())
        .context("cosign verify printed something that is not its JSON claims")?;
    let signatures = claims
        .iter()
        .filter(|c| {
            c["critical"]["type"] == SIGNATURE_TYPE
                && c["critical"]["image"]["docker-manifest-digest"] == digest
        })
        .count();
    if signatures == 0 {
        let types: Vec<&str> = claims
            .iter()
            .filter_map(|c| c["critical"]["type"].as_str())
            .collect();
        bail!(
            "not signed by {}: cosign found only attestations ({}), no signature of {digest}",
            trusted(options),
            types.join(", ")
        );
    }
    Ok(format!("{signatures} signature(s) by {}", trusted(options)))
}

pub fn trusted(options: &cosign::Options) -> String {
    match &options.identity {
        Identity::Key(key) => format!("the key {key}"),
        Identity::Keyless => match &options.workflow {
            Some(workflow) => format!(
                "{} (issuer {}, commit {})",
                workflow.certificate_identity,
                workflow.issuer,
                workflow.sha.as_deref().unwrap_or("not checked")
            ),
            None => "a workflow (no identity given)".to_owned(),
        },
    }
}

/// The in-toto statements cosign accepted for one predicate type.
pub fn verified_statements(
    cosign: &Cosign,
    options: &cosign::Options,
    subject: &Subject,
    digest: &str,
    kind: &str,
) -> Result<Vec<Value>> {
    let output = cosign.run(
        &options.verify_attestation(&subject.by_digest(digest), kind)?,
        true,
    )?;
    if !output.success {
        bail!(
            "no {kind} attestation by {}: {}",
            trusted(options),
            output.error_line()
        );
    }
    let engine = base64::engine::general_purpose::STANDARD;
    let mut statements = Vec::new();
    for line in output.stdout.lines().filter(|l| !l.trim().is_empty()) {
        let envelope: Value = serde_json::from_str(line)
            .context("cosign verify-attestation printed a line that is not a DSSE envelope")?;
        let payload = envelope["payload"]
            .as_str()
            .context("a DSSE envelope without a payload")?;
        let statement: Value = serde_json::from_slice(
            &engine
                .decode(payload)
                .context("a DSSE payload that is not base64")?,
        )
        .context("a DSSE payload that is not an in-toto statement")?;
        let hex = digest.trim_start_matches("sha256:");
        let names_digest = statement["subject"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["digest"]["sha256"] == hex));
        if !names_digest {
            bail!("a {kind} attestation whose subject is not {digest}");
        }
        statements.push(statement);
    }
    if statements.is_empty() {
        bail!("cosign accepted no {kind} attestation for {digest}");
    }
    Ok(statements)
}
