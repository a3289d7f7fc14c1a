//! The release assets: archives, SHA256SUMS and its signature bundle, the
//! per-platform SBOMs and provenance, the public key and the release
//! notes; uploaded with `gh` when GITHUB_TOKEN is set.

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Shell};

use super::Release;
use crate::attest;
use crate::build::assemble::Built;
use crate::build::binaries::{self, ArtifactKind};
use crate::oci::subject::Subject;
use crate::oci::Layout;
use crate::release::preflight::Preflight;
use crate::supply_chain::cosign::{self, Cosign};
use crate::supply_chain::identity::{self, Identity};
use crate::supply_chain::sigstore::Instance;
use crate::support::source::Source;
use crate::support::tools;

impl Release<'_> {
    /// Archives, SHA256SUMS and its signature bundle, per-platform SBOMs and
    /// provenance, release notes; uploaded with `gh` when GITHUB_TOKEN is set.
    pub(super) fn write_assets(
        &self,
        preflight: &Preflight,
        out: &Utf8Path,
        source: &Source,
        built: &Built,
        built_dist: &binaries::Dist,
    ) -> Result<Vec<Utf8PathBuf>> {
        let assets = out.join("assets");
        std::fs::create_dir_all(&assets).with_context(|| format!("cannot create {assets}"))?;
        let mut written = Vec::new();
        let mut sums = String::new();
        for artifact in built_dist
            .artifacts
            .iter()
            .filter(|a| a.kind == ArtifactKind::Archive)
        {
            let from = self.config.workspace_root.join(&artifact.path);
            let name = from
                .file_name()
                .with_context(|| format!("{from} has no file name"))?;
            let to = assets.join(name);
            std::fs::copy(&from, &to).with_context(|| format!("cannot copy {from} to {to}"))?;
            sums.push_str(&format!("{}  {name}\n", artifact.sha256));
            written.push(to);
        }
        written.extend(self.copy_predicates(out, source, built, &assets)?);
        let sums_path = assets.join("SHA256SUMS");
        std::fs::write(&sums_path, &sums).with_context(|| format!("cannot write {sums_path}"))?;
        written.push(sums_path.clone());
        if let Some(bundle) = self.sign_checksums(&sums_path, &assets)? {
            written.push(bundle);
        }
        let public = out.join("cosign.pub");
        if self.flags.signing.key.is_some() && public.is_file() {
            let to = assets.join("cosign.pub");
            std::fs::copy(&public, &to).with_context(|| format!("cannot copy {public}"))?;
            written.push(to);
        }
        let platforms: Vec<(String, String)> = built
            .platforms
            .iter()
            .map(|p| (p.platform.clone(), p.digest.clone()))
            .collect();
        let notes = assets.join("release-notes.md");
        let text = self.release_notes(&preflight.tag, &platforms, &built.digest)?;
        std::fs::write(&notes, text + &self.chart_notes(out)?)
            .with_context(|| format!("cannot write {notes}"))?;

        if self.flags.push && std::env::var_os("GITHUB_TOKEN").is_some() {
            self.upload(preflight, &notes, &written)?;
        }
        written.push(notes);
        Ok(written)
    }

    /// The SBOMs, provenance and scan results, copied byte for byte from the files that
    /// were attested (target/attest/<hex>/), so that what a user downloads
    /// is what the registry's signed statements say. Without --push nothing
    /// was attested: the same writer makes them under the release's own
    /// directory, naming the repository the image would be pushed to.
    fn copy_predicates(
        &self,
        out: &Utf8Path,
        source: &Source,
        built: &Built,
        assets: &Utf8Path,
    ) -> Result<Vec<Utf8PathBuf>> {
        let root = if self.flags.push {
            self.config.target_dir.join("attest")
        } else {
            let root = out.join("unattested");
            let subject =
                Subject::from_layout(&self.repo, &Layout::open(&built.layout)?, &built.digest)?;
            attest::write_predicates(self.config, source, &subject, &root)?;
            root
        };
        let mut written = Vec::new();
        for (from, name) in self.predicate_files(&root, built)? {
            let to = assets.join(name);
            std::fs::copy(&from, &to).with_context(|| format!("cannot copy {from} to {to}"))?;
            written.push(to);
        }
        Ok(written)
    }

    /// Every predicate file under `root` for this image, with its asset
    /// name. Checked before the tags move too: a release whose attested
    /// files are gone could not ship them, and must fail while nothing a
    /// user pulls has changed.
    pub(super) fn predicate_files(
        &self,
        root: &Utf8Path,
        built: &Built,
    ) -> Result<Vec<(Utf8PathBuf, String)>> {
        let subject =
            Subject::from_layout(&self.repo, &Layout::open(&built.layout)?, &built.digest)?;
        let mut files = Vec::new();
        for attestation in attest::plan(&subject, root) {
            let slug = attestation.subject.replace('/', "-");
            // Every kind names its own asset: two kinds on one name would
            // ship one and silently drop the other.
            let name = match attestation.kind {
                "cyclonedx" => format!("sbom-{slug}.cdx.json"),
                "spdxjson" => format!("sbom-{slug}.spdx.json"),
                "slsaprovenance1" => format!("provenance-{slug}.json"),
                "vuln" => format!("vuln-{slug}.json"),
                other => bail!("no release asset name for a {other} attestation of {slug}"),
            };
            if !attestation.predicate.is_file() {
                bail!(
                    "cannot ship the attested {} of {}: {} is missing; run the release again with the target directory that attested {}",
                    attestation.kind,
                    attestation.subject,
                    attestation.predicate,
                    attestation.digest
                );
            }
            files.push((attestation.predicate, name));
        }
        Ok(files)
    }

    /// `cosign sign-blob` on SHA256SUMS, with the key, or keyless in CI.
    /// Without either, the checksums stay unsigned and the notes say so.
    pub(super) fn sign_checksums(
        &self,
        sums: &Utf8Path,
        assets: &Utf8Path,
    ) -> Result<Option<Utf8PathBuf>> {
        let identity = match &self.flags.signing.key {
            Some(key) => Identity::Key(key.clone()),
            None if identity::github_oidc_available() => Identity::Keyless,
            None => {
                eprintln!("note: SHA256SUMS is not signed: no --key and no GitHub OIDC token");
                return Ok(None);
            }
        };
        identity::check_signing_key(&identity)?;
        let signing_config = if self.flags.signing.no_tlog {
            Some(cosign::write_no_tlog_signing_config(&cosign::work_dir(
                &self.config.target_dir,
            ))?)
        } else {
            None
        };
        let options = cosign::Options {
            identity,
            signing_config,
            ignore_tlog: self.flags.signing.no_tlog,
            insecure: false,
            workflow: None,
            sigstore: Instance::resolve(self.config, &self.flags.signing)?,
        };
        let bundle = assets.join("SHA256SUMS.sigstore.json");
        Cosign::find()?.run_ok(&options.sign_blob(sums, &bundle))?;
        Ok(Some(bundle))
    }

    pub(super) fn upload(
        &self,
        preflight: &Preflight,
        notes: &Utf8Path,
        assets: &[Utf8PathBuf],
    ) -> Result<()> {
        let gh = tools::GH.find()?;
        let sh = Shell::new()?;
        sh.change_dir(&self.config.workspace_root);
        let tag = &preflight.tag;
        let prerelease = (!preflight.version.pre.is_empty()).then_some("--prerelease");
        let exists = cmd!(sh, "{gh} release view {tag}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .is_ok();
        if exists {
            cmd!(sh, "{gh} release upload {tag} --clobber {assets...}")
                .run()
                .with_context(|| format!("cannot upload the assets to GitHub release {tag}"))?;
        } else {
            cmd!(
                sh,
                "{gh} release create {tag} --verify-tag --title {tag} --notes-file {notes} {prerelease...} {assets...}"
            )
            .run()
            .with_context(|| format!("cannot create GitHub release {tag}"))?;
        }
        Ok(())
    }

    pub(super) fn release_notes(
        &self,
        tag: &str,
        platforms: &[(String, String)],
        digest: &str,
    ) -> Result<String> {
        let repo = &self.repo;
        let mut notes = format!(
            "## {tag}\n\nImage `{repo}:{tag}`, index digest `{digest}` (linux/amd64 and linux/arm64).\n\nPull it by digest:\n\n```sh\ndocker pull {repo}@{digest}\n```\n\nVerify its signature, SBOM and provenance:\n\n```sh\n"
        );
        for command in self.verify_commands(platforms, digest)? {
            notes.push_str(&command);
            notes.push('\n');
        }
        notes
            .push_str("```\n\nVerify the downloaded archives:\n\n```sh\nsha256sum -c SHA256SUMS\n");
        let verify_blob = self
            .user_options()?
            .verify_blob("SHA256SUMS", "SHA256SUMS.sigstore.json")?;
        notes.push_str(&cosign::display(&verify_blob));
        notes.push_str("\n```\n");
        Ok(notes)
    }
}
