//! Checking a published chart: its signature, by digest, and that its
//! default values run the image that was verified.

use std::io::Read;

use anyhow::{bail, Context, Result};

use super::CONTENT_MEDIA_TYPE;
use crate::oci::client::{Client, Reference};
use crate::oci::Manifest;
use crate::supply_chain::cosign::{self, Cosign, SigningArgs};
use crate::supply_chain::identity::{self, WorkflowIdentity};
use crate::supply_chain::sigstore::Instance;

/// The chart's checks, for `verify --chart` to report with the image's.
pub struct ChartVerification {
    /// The chart's manifest digest, resolved once.
    pub digest: String,
    pub signature: Result<String>,
    pub image: Result<String>,
}

/// Resolves `reference` (oci://HOST/…/charts/server@sha256:… or :VERSION)
/// once, then checks the digest it names. An error only when the chart
/// cannot be found at all.
pub fn verify_chart(
    reference: &str,
    signing: &SigningArgs,
    insecure: bool,
    image_digest: &str,
    workflow: Option<&WorkflowIdentity>,
    sigstore: &Instance,
) -> Result<ChartVerification> {
    let parsed = Reference::parse(reference.trim_start_matches("oci://"))
        .with_context(|| format!("cannot verify the chart {reference}"))?;
    let client = Client::new(&parsed.host, insecure)?;
    let repository = &parsed.repository;
    let digest = match (&parsed.digest, &parsed.tag) {
        (Some(digest), _) => digest.clone(),
        (None, Some(tag)) => client.manifest_digest(repository, tag)?.with_context(|| {
            format!("cannot verify the chart: {reference} does not exist; check the version")
        })?,
        (None, None) => bail!(
            "cannot verify the chart {reference}: it names no version or digest; add @sha256:… (best) or :VERSION"
        ),
    };
    let by_digest = format!("{}@{digest}", parsed.name());
    let signature = check_signature(signing, insecure, &by_digest, workflow, sigstore);
    let image = default_image_digest(&client, repository, &digest).and_then(|found| {
        if found == image_digest {
            Ok(format!("its default values run {found}"))
        } else {
            bail!("its default values run {found}, not the verified image {image_digest}")
        }
    });
    Ok(ChartVerification {
        digest,
        signature,
        image,
    })
}

/// The chart is signed by the run that signed the image: keyless, it is
/// held to the image's workflow identity.
fn check_signature(
    signing: &SigningArgs,
    insecure: bool,
    by_digest: &str,
    workflow: Option<&WorkflowIdentity>,
    sigstore: &Instance,
) -> Result<String> {
    let identity = identity::verifying_identity(signing)?;
    let options = cosign::Options {
        identity,
        signing_config: None,
        ignore_tlog: signing.no_tlog,
        insecure,
        workflow: workflow.cloned(),
        sigstore: sigstore.clone(),
    };
    Cosign::find()?
        .run_ok(&options.verify(by_digest)?)
        .with_context(|| format!("cosign refused the signature of {by_digest}"))?;
    Ok("cosign verified the chart's signature".to_owned())
}

/// `image.digest` in the chart's values.yaml, as `cargo xtask chart`
/// writes it.
fn default_image_digest(client: &Client, repository: &str, digest: &str) -> Result<String> {
    let (_, bytes) = client
        .get_manifest(repository, digest)?
        .with_context(|| format!("the chart {repository}@{digest} does not exist"))?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .with_context(|| format!("the chart manifest {digest} is not valid JSON"))?;
    let layer = manifest
        .layers
        .iter()
        .find(|l| l.media_type == CONTENT_MEDIA_TYPE)
        .with_context(|| format!("the manifest {digest} has no Helm chart layer"))?;
    let tgz = client.get_blob(repository, &layer.digest)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&tgz[..]));
    let entries = archive.entries().context("cannot read the chart archive")?;
    for entry in entries {
        let mut entry = entry.context("cannot read the chart archive")?;
        let path = entry.path().context("cannot read the chart archive")?;
        if !path.ends_with("values.yaml") || path.components().count() != 2 {
            continue;
        }
        let mut values = String::new();
        entry
            .read_to_string(&mut values)
            .context("cannot read the chart's values.yaml")?;
        let line = values
            .lines()
            .find(|l| l.starts_with("  digest:"))
            .context("the chart's values.yaml has no image digest")?;
        let value = line
            .trim_start_matches("  digest:")
            .trim()
            .trim_matches('"');
        return Ok(value.to_owned());
    }
    bail!("the chart {digest} has no values.yaml")
}
