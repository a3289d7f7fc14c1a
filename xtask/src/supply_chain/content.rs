//! What the signed statements say, checked against the image they are
//! attached to. A statement can be validly signed and still be false: an
//! SBOM attested onto the other platform, a provenance of another commit or
//! base. Each check fails with one line that names the mismatch.

use anyhow::{bail, Result};
use serde_json::Value;

use crate::oci::reference::Reference;
use crate::oci::subject::{PlatformImage, Subject};
use crate::oci::{BASE_DIGEST, REVISION, VERSION};
use crate::supply_chain::claims::verified_statements;
use crate::supply_chain::cosign::{self, Cosign};

pub const CYCLONEDX_PREDICATE: &str = "https://cyclonedx.org/bom";
pub const SLSA_V1_PREDICATE: &str = "https://slsa.dev/provenance/v1";
pub const SPDX_PREDICATE: &str = "https://spdx.dev/Document";

/// What one subject (a platform manifest or the index) is, from its
/// digest, labels and the checkout: what its statements must agree with.
#[derive(Debug, Clone)]
pub struct Facts {
    /// `linux/amd64`, or `index`.
    pub subject: String,
    /// `host/repository`.
    pub image: String,
    pub digest: String,
    /// The platform, or None for the index.
    pub platform: Option<String>,
    /// The index's platforms.
    pub platforms: Vec<String>,
    /// The image's version label, or the expected version without one.
    pub version: String,
    /// The base digest the image's labels record; None for `scratch`.
    pub base_digest: Option<String>,
    /// The commit the source must be, and where that comes from.
    pub revision: Option<(String, String)>,
    /// `host/repository` the statements must name, when the operator asks
    /// (`verify --expect-repository`); otherwise it is only reported.
    pub expect_repository: Option<String>,
}

/// The commit a version tag points to, when this checkout has the tag.
pub type TagCommit = Option<(String, String)>;

impl Facts {
    pub fn of_platform(
        subject: &Subject,
        platform: &PlatformImage,
        expected_version: &str,
        tag: &TagCommit,
        expect_repository: Option<&str>,
    ) -> Facts {
        let label = |key: &str| platform.label(key).map(str::to_owned);
        Facts {
            subject: platform.platform.to_string(),
            image: subject.name.clone(),
            digest: platform.digest.clone(),
            platform: Some(platform.platform.to_string()),
            platforms: vec![platform.platform.to_string()],
            version: label(VERSION).unwrap_or_else(|| expected_version.to_owned()),
            base_digest: label(BASE_DIGEST),
            revision: revision(tag, label(REVISION)),
            expect_repository: expect_repository.map(str::to_owned),
        }
    }

    pub fn of_index(
        subject: &Subject,
        expected_version: &str,
        tag: &TagCommit,
        expect_repository: Option<&str>,
    ) -> Facts {
        let annotation = |key: &str| subject.annotation(key).map(str::to_owned);
        Facts {
            subject: "index".to_owned(),
            image: subject.name.clone(),
            digest: subject.digest.clone(),
            platform: None,
            platforms: subject
                .platforms
                .iter()
                .map(|p| p.platform.to_string())
                .collect(),
            version: annotation(VERSION).unwrap_or_else(|| expected_version.to_owned()),
            base_digest: annotation(BASE_DIGEST),
            revision: revision(tag, annotation(REVISION)),
            expect_repository: expect_repository.map(str::to_owned),
        }
    }

    fn reference(&self) -> String {
        format!("{}@{}", self.image, self.digest)
    }
}

/// The version tag wins: the label was written by whoever built the image,
/// the tag is what this checkout calls that release.
fn revision(tag: &TagCommit, label: Option<String>) -> Option<(String, String)> {
    match (tag, label) {
        (Some((tag, sha)), _) => Some((sha.clone(), format!("the tag {tag}"))),
        (None, Some(sha)) => Some((sha, format!("the image's {REVISION} label"))),
        (None, None) => None,
    }
}

/// A statement is bound to the image by digest: what it names must be the
/// digest verified. The repository it names is where the release was first
/// pushed, which a mirror (`cargo xtask bundle --load` into a repository of
/// another name) does not change: it is returned, to be reported, and
/// required only when the operator expects one.
fn named_repository(named: &str, facts: &Facts, by_digest: bool) -> Result<String, String> {
    let Ok(reference) = Reference::parse(named) else {
        return Err(format!("{named:?}, which is not an image reference"));
    };
    if by_digest && reference.digest.as_deref() != Some(facts.digest.as_str()) {
        return Err(named.to_owned());
    }
    Ok(reference.name())
}

/// With `--expect-repository`: the repository a statement names must be it.
fn check_repository(what: &str, repository: &str, facts: &Facts) -> Result<()> {
    let Some(expected) = &facts.expect_repository else {
        return Ok(());
    };
    let expected_name = Reference::parse(expected)
        .map(|r| r.name())
        .unwrap_or_else(|_| expected.clone());
    if repository != expected_name {
        bail!(
            "{what} names the repository {repository}, not {expected_name} (--expect-repository)"
        );
    }
    Ok(())
}

fn property<'a>(properties: &'a Value, name: &str) -> Option<&'a str> {
    properties.as_array()?.iter().find(|p| p["name"] == name)?["value"].as_str()
}

/// The CycloneDX SBOM describes this platform's manifest, by digest, at
/// the image's version; returns the repository it names.
pub fn check_cyclonedx(bom: &Value, facts: &Facts) -> Result<String> {
    let metadata = &bom["metadata"];
    let component = &metadata["component"];
    let described = match (
        property(&component["properties"], "oci:image:repository"),
        property(&component["properties"], "oci:image:digest"),
    ) {
        (Some(repository), Some(digest)) => format!("{repository}@{digest}"),
        _ => "no image".to_owned(),
    };
    let platform = property(&metadata["properties"], "oci:platform").unwrap_or("no platform");
    let repository = match named_repository(&described, facts, true) {
        Ok(repository) if Some(platform) == facts.platform.as_deref() => repository,
        _ => bail!(
            "the CycloneDX SBOM attached to {} describes {platform} {described}, not {} {}",
            facts.subject,
            facts.subject,
            facts.reference()
        ),
    };
    let what = format!("the CycloneDX SBOM attached to {}", facts.subject);
    check_repository(&what, &repository, facts)?;
    let version = component["version"].as_str().unwrap_or("none");
    if version != facts.version {
        bail!(
            "the CycloneDX SBOM attached to {} has version {version}, but the image is {}",
            facts.subject,
            facts.version
        );
    }
    Ok(repository)
}

/// The SPDX SBOM's root package names this platform's manifest, by
/// digest, at the image's version; returns the repository it names.
pub fn check_spdx(document: &Value, facts: &Facts) -> Result<String> {
    let packages = document["packages"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let root = packages.iter().find(|p| {
        p["externalRefs"]
            .as_array()
            .is_some_and(|refs| refs.iter().any(|r| r["referenceType"] == "oci-image"))
    });
    let Some(root) = root else {
        bail!(
            "the SPDX SBOM attached to {} names no image; it must name {}",
            facts.subject,
            facts.reference()
        );
    };
    let locator = root["externalRefs"]
        .as_array()
        .and_then(|refs| refs.iter().find(|r| r["referenceType"] == "oci-image"))
        .and_then(|r| r["referenceLocator"].as_str())
        .unwrap_or("no image");
    let Ok(repository) = named_repository(locator, facts, true) else {
        bail!(
            "the SPDX SBOM attached to {} describes {locator}, not {}",
            facts.subject,
            facts.reference()
        );
    };
    check_repository(
        &format!("the SPDX SBOM attached to {}", facts.subject),
        &repository,
        facts,
    )?;
    let version = root["versionInfo"].as_str().unwrap_or("none");
    if version != facts.version {
        bail!(
            "the SPDX SBOM attached to {} has version {version}, but the image is {}",
            facts.subject,
            facts.version
        );
    }
    Ok(repository)
}

/// The provenance names this platform (or the index's platforms), the
/// image's version, the commit it was built from, and the base its labels
/// record; returns the repository it names. It is bound to the image by
/// its statement's subject, the digest cosign verified it for.
pub fn check_provenance(predicate: &Value, facts: &Facts) -> Result<String> {
    let subject = &facts.subject;
    let external = &predicate["buildDefinition"]["externalParameters"];
    let text = |value: &Value| value.as_str().unwrap_or("none").to_owned();
    let Some(image) = external["image"].as_str() else {
        bail!("the provenance of {subject} names no image")
    };
    let repository = named_repository(image, facts, false).map_err(|named| {
        anyhow::format_err!("the provenance of {subject} names the image {named}")
    })?;
    check_repository(&format!("the provenance of {subject}"), &repository, facts)?;
    let platforms: Vec<String> = match &facts.platform {
        Some(_) => vec![text(&external["platform"])],
        None => external["platforms"]
            .as_array()
            .map(|list| list.iter().map(text).collect())
            .unwrap_or_default(),
    };
    if platforms != facts.platforms {
        bail!(
            "the provenance of {subject} is for {}, not {}",
            describe(&platforms),
            describe(&facts.platforms)
        );
    }
    let version = text(&external["version"]);
    if version != facts.version {
        bail!(
            "the provenance of {subject} says version {version}, but the image is {}",
            facts.version
        );
    }
    let built_from = text(&external["source"]["revision"]);
    match &facts.revision {
        Some((sha, _)) if *sha == built_from => {}
        Some((sha, from)) => bail!(
            "the provenance of {subject} says it was built from {built_from}, but {from} is {sha}"
        ),
        None => bail!(
            "the provenance of {subject} says it was built from {built_from}, but neither a version tag in this checkout nor a {REVISION} label says which commit it must be; fetch the tags (`git fetch --tags`)"
        ),
    }
    let base = predicate["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .and_then(|deps| deps.iter().find(|d| d["name"] == "base-image"))
        .and_then(|d| d["digest"]["sha256"].as_str())
        .map(|hex| format!("sha256:{hex}"));
    if base != facts.base_digest {
        bail!(
            "the provenance of {subject} pins the base image at {}, but the image's {BASE_DIGEST} says {}",
            base.as_deref().unwrap_or("nothing"),
            facts.base_digest.as_deref().unwrap_or("nothing")
        );
    }
    Ok(repository)
}

fn describe(platforms: &[String]) -> String {
    if platforms.is_empty() {
        "no platform".to_owned()
    } else {
        platforms.join(", ")
    }
}

/// Both SBOMs, CycloneDX and SPDX: signed, of the expected version, and
/// describing the platform they are attached to.
pub fn verify_sbom(
    cosign: &Cosign,
    options: &cosign::Options,
    subject: &Subject,
    facts: &Facts,
    expected_version: &str,
) -> Result<String> {
    let statements = verified_statements(cosign, options, subject, &facts.digest, "cyclonedx")?;
    let mut named = std::collections::BTreeSet::new();
    for statement in &statements {
        if statement["predicateType"] != CYCLONEDX_PREDICATE {
            bail!(
                "the SBOM attestation has predicate type {}, not {CYCLONEDX_PREDICATE}",
                statement["predicateType"]
            );
        }
        let component = &statement["predicate"]["metadata"]["component"];
        let version = component["version"].as_str().unwrap_or("none");
        if version != expected_version {
            bail!(
                "the SBOM's root component {} has version {version}, not {expected_version}",
                component["name"].as_str().unwrap_or("(unnamed)")
            );
        }
        named.insert(check_cyclonedx(&statement["predicate"], facts)?);
    }
    let documents = verified_statements(cosign, options, subject, &facts.digest, "spdxjson")?;
    for statement in &documents {
        if statement["predicateType"] != SPDX_PREDICATE {
            bail!(
                "the SPDX attestation has predicate type {}, not {SPDX_PREDICATE}",
                statement["predicateType"]
            );
        }
        named.insert(check_spdx(&statement["predicate"], facts)?);
    }
    let component = &statements[0]["predicate"]["metadata"]["component"];
    Ok(format!(
        "CycloneDX, root component {} {expected_version}, of {}",
        component["name"].as_str().unwrap_or("(unnamed)"),
        named_in(&named, &facts.digest)
    ))
}

pub fn verify_provenance(
    cosign: &Cosign,
    options: &cosign::Options,
    subject: &Subject,
    facts: &Facts,
) -> Result<String> {
    let digest = &facts.digest;
    let statements = verified_statements(cosign, options, subject, digest, "slsaprovenance1")?;
    let mut named = std::collections::BTreeSet::new();
    for statement in &statements {
        if statement["predicateType"] != SLSA_V1_PREDICATE {
            bail!(
                "the provenance has predicate type {}, not {SLSA_V1_PREDICATE}",
                statement["predicateType"]
            );
        }
        named.insert(check_provenance(&statement["predicate"], facts)?);
    }
    let builder = statements[0]["predicate"]["runDetails"]["builder"]["id"]
        .as_str()
        .unwrap_or("unknown");
    Ok(format!(
        "SLSA v1 for {}, builder {builder}",
        named_in(&named, digest)
    ))
}

/// `REPOSITORY@DIGEST` as the statements name it: the repository where
/// the release was first pushed, which a mirror may not share.
fn named_in(repositories: &std::collections::BTreeSet<String>, digest: &str) -> String {
    let names: Vec<String> = repositories
        .iter()
        .map(|r| format!("{r}@{digest}"))
        .collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts() -> Facts {
        Facts {
            subject: "linux/arm64".into(),
            image: "127.0.0.1:5000/app".into(),
            digest: format!("sha256:{}", "b".repeat(64)),
            platform: Some("linux/arm64".into()),
            platforms: vec!["linux/arm64".into()],
            version: "0.1.0".into(),
            base_digest: Some(format!("sha256:{}", "e".repeat(64))),
            revision: Some(("c".repeat(40), "the tag v0.1.0".into())),
            expect_repository: None,
        }
    }

    fn bom(platform: &str, digest: &str) -> Value {
        json!({"metadata": {
            "component": {"version": "0.1.0", "properties": [
                {"name": "oci:image:digest", "value": digest},
                {"name": "oci:image:repository", "value": "127.0.0.1:5000/app"},
            ]},
            "properties": [{"name": "oci:platform", "value": platform}],
        }})
    }

    fn provenance() -> Value {
        json!({"buildDefinition": {
            "externalParameters": {
                "image": "127.0.0.1:5000/app",
                "platform": "linux/arm64",
                "version": "0.1.0",
                "source": {"revision": "c".repeat(40)},
            },
            "resolvedDependencies": [
                {"uri": "git+x", "digest": {"gitCommit": "c".repeat(40)}},
                {"name": "base-image", "digest": {"sha256": "e".repeat(64)}},
            ],
        }})
    }

    #[test]
    fn an_sbom_of_the_other_platform_is_named() {
        let facts = facts();
        assert!(check_cyclonedx(&bom("linux/arm64", &facts.digest), &facts).is_ok());
        let other = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            check_cyclonedx(&bom("linux/amd64", &other), &facts)
                .unwrap_err()
                .to_string(),
            format!(
                "the CycloneDX SBOM attached to linux/arm64 describes linux/amd64 127.0.0.1:5000/app@{other}, not linux/arm64 127.0.0.1:5000/app@{}",
                facts.digest
            )
        );
    }

    #[test]
    fn an_sbom_is_bound_by_digest_and_its_repository_required_only_when_expected() {
        let mut facts = facts();
        let document = |locator: &str| {
            json!({"packages": [{"versionInfo": "0.1.0", "externalRefs": [
                {"referenceType": "purl", "referenceLocator": "pkg:cargo/server@0.1.0"},
                {"referenceType": "oci-image", "referenceLocator": locator},
            ]}]})
        };
        assert_eq!(
            check_spdx(&document(&facts.reference()), &facts).unwrap(),
            "127.0.0.1:5000/app"
        );
        // Loaded into a mirror of another name: the same digest, reported.
        let first = format!("ghcr.io/fixture-org/rust-release@{}", facts.digest);
        assert_eq!(
            check_spdx(&document(&first), &facts).unwrap(),
            "ghcr.io/fixture-org/rust-release"
        );
        let other = format!("127.0.0.1:5000/app@sha256:{}", "a".repeat(64));
        assert_eq!(
            check_spdx(&document(&other), &facts)
                .unwrap_err()
                .to_string(),
            format!(
                "the SPDX SBOM attached to linux/arm64 describes {other}, not {}",
                facts.reference()
            )
        );
        assert!(check_spdx(&document("127.0.0.1:5000/app:v0.1.0"), &facts).is_err());
        facts.expect_repository = Some("127.0.0.1:5000/app".into());
        assert!(check_spdx(&document(&facts.reference()), &facts).is_ok());
        assert_eq!(
            check_spdx(&document(&first), &facts)
                .unwrap_err()
                .to_string(),
            "the SPDX SBOM attached to linux/arm64 names the repository ghcr.io/fixture-org/rust-release, not 127.0.0.1:5000/app (--expect-repository)"
        );
        let mut bom = bom("linux/arm64", &facts.digest);
        bom["metadata"]["component"]["properties"][1]["value"] = json!("ghcr.io/o/r");
        assert_eq!(
            check_cyclonedx(&bom, &facts).unwrap_err().to_string(),
            "the CycloneDX SBOM attached to linux/arm64 names the repository ghcr.io/o/r, not 127.0.0.1:5000/app (--expect-repository)"
        );
        facts.expect_repository = None;
        assert_eq!(check_cyclonedx(&bom, &facts).unwrap(), "ghcr.io/o/r");
    }

    #[test]
    fn a_provenance_of_another_commit_base_or_version_is_named() {
        let facts = facts();
        assert!(check_provenance(&provenance(), &facts).is_ok());
        let mut wrong = provenance();
        wrong["buildDefinition"]["externalParameters"]["source"]["revision"] =
            json!("d".repeat(40));
        assert_eq!(
            check_provenance(&wrong, &facts).unwrap_err().to_string(),
            format!(
                "the provenance of linux/arm64 says it was built from {}, but the tag v0.1.0 is {}",
                "d".repeat(40),
                "c".repeat(40)
            )
        );
        let mut wrong = provenance();
        wrong["buildDefinition"]["resolvedDependencies"][1]["digest"]["sha256"] =
            json!("f".repeat(64));
        assert_eq!(
            check_provenance(&wrong, &facts).unwrap_err().to_string(),
            format!(
                "the provenance of linux/arm64 pins the base image at sha256:{}, but the image's org.opencontainers.image.base.digest says sha256:{}",
                "f".repeat(64),
                "e".repeat(64)
            )
        );
        let mut wrong = provenance();
        wrong["buildDefinition"]["externalParameters"]["version"] = json!("0.2.0");
        assert_eq!(
            check_provenance(&wrong, &facts).unwrap_err().to_string(),
            "the provenance of linux/arm64 says version 0.2.0, but the image is 0.1.0"
        );
        let mut elsewhere = provenance();
        elsewhere["buildDefinition"]["externalParameters"]["image"] =
            json!("ghcr.io/fixture-org/rust-release");
        assert_eq!(
            check_provenance(&elsewhere, &facts).unwrap(),
            "ghcr.io/fixture-org/rust-release"
        );
        let expecting = Facts {
            expect_repository: Some("127.0.0.1:5000/app".into()),
            ..facts.clone()
        };
        assert_eq!(
            check_provenance(&elsewhere, &expecting).unwrap_err().to_string(),
            "the provenance of linux/arm64 names the repository ghcr.io/fixture-org/rust-release, not 127.0.0.1:5000/app (--expect-repository)"
        );
    }
}
