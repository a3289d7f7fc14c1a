//! `cargo xtask release vX.Y.Z`: the whole pipeline in order. Preflight,
//! dist, image pushed by digest and untagged, sign, attest, verify, and
//! only then the tags (exact first, floating last) and the release assets.
//!
//! Tags are the commit point: until verification passes, nothing a user
//! pulls by tag has changed. A state file under target/release/VERSION/
//! records the finished signing steps, so that a re-run after a failure
//! resumes instead of signing and attesting the same digest twice.
//!
//! `execute` runs it, `plan` prints it (`--dry-run`), `assets` writes what
//! the GitHub release carries, `state` remembers what a re-run may skip.

mod assets;
mod chart;
mod execute;
mod plan;
pub mod preflight;
mod state;

use std::collections::BTreeMap;

use anyhow::Result;
use camino::Utf8PathBuf;
use serde::Serialize;

use crate::build::base;
use crate::flags;
use crate::oci::client::{Client, Reference};
use crate::oci::push::TagChange;
use crate::oci::reference;
use crate::supply_chain::cosign;
use crate::supply_chain::identity::{Identity, Run, WorkflowIdentity};
use crate::supply_chain::sigstore::Instance;
use crate::support::config::Config;
use crate::support::source::Source;

pub fn run(flags: &flags::Release) -> Result<()> {
    let config = Config::load()?;
    let target = reference::target(&config, flags.registry.image.as_deref())?;
    let base = base::chosen(&config, flags.base.as_deref());
    base::check(&base, base::origin(flags.base.as_deref()))?;
    let release = Release {
        config: &config,
        flags,
        repo: target.name(),
        target,
        base,
    };
    if flags.dry_run {
        release.print_plan()
    } else {
        release.execute()
    }
}

struct Release<'a> {
    config: &'a Config,
    flags: &'a flags::Release,
    /// `host/repository`.
    repo: String,
    target: Reference,
    base: String,
}

/// What a finished release produced: `release --json` prints it.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub version: String,
    pub image: String,
    pub digest: String,
    pub platforms: BTreeMap<String, String>,
    pub tags: Vec<TagChange>,
    pub not_tagged: Vec<String>,
    pub assets: Vec<Utf8PathBuf>,
    pub verify_commands: Vec<String>,
    /// The Helm chart, when the configuration publishes it.
    pub chart: Option<crate::chart::Chart>,
    pub resumed: Vec<String>,
    pub steps: Vec<(String, f64)>,
}

impl Release<'_> {
    fn out_dir(&self, tag: &str) -> Utf8PathBuf {
        self.config.target_dir.join("release").join(tag)
    }

    fn client(&self) -> Result<Client> {
        Client::new(&self.target.host, self.insecure())
    }

    fn insecure(&self) -> bool {
        self.flags.registry.transport.insecure
    }

    /// The options for the commands printed to users: the public key is
    /// shown as `cosign.pub`, the file the release writes next to the
    /// assets.
    fn user_options(&self) -> Result<cosign::Options> {
        let identity = match &self.flags.signing.key {
            Some(_) => Identity::Key("cosign.pub".to_owned()),
            None => Identity::Keyless,
        };
        // Keyless: exactly this release's run of release.yml, on its tag
        // and its commit, the one the image's revision annotation names.
        let sigstore = Instance::resolve(self.config, &self.flags.signing)?;
        let workflow = match identity {
            Identity::Keyless => Some(WorkflowIdentity::new(
                &self.config.repository,
                &Run::Release(crate::tags::parse_version(&self.flags.version)?),
                Some(&Source::detect(&self.config.workspace_root)?.sha),
                &sigstore.oidc_issuer,
            )?),
            Identity::Key(_) => None,
        };
        Ok(cosign::Options {
            identity,
            signing_config: None,
            ignore_tlog: self.flags.signing.no_tlog,
            insecure: self.insecure(),
            workflow,
            sigstore,
        })
    }

    /// Every verify command a user is shown: cosign's own, per platform for
    /// the SBOMs (they are attached to each platform, not to the index), and
    /// ours, each exactly as it must be typed.
    fn verify_commands(&self, platforms: &[(String, String)], digest: &str) -> Result<Vec<String>> {
        let reference = format!("{}@{digest}", self.repo);
        let options = self.user_options()?;
        let mut commands = vec![cosign::display(&options.verify(&reference)?)];
        for (_, platform_digest) in platforms {
            commands.push(cosign::display(&options.verify_attestation(
                &format!("{}@{platform_digest}", self.repo),
                "cyclonedx",
            )?));
        }
        commands.push(cosign::display(
            &options.verify_attestation(&reference, "slsaprovenance1")?,
        ));
        commands.push(cosign::xtask_verify_command(
            &reference,
            &options.identity,
            options.ignore_tlog,
            options.insecure,
            true,
        ));
        Ok(commands)
    }
}
