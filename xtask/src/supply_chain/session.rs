//! What sign and attest share: cosign at the pinned version, the signing
//! options, and the image resolved once to its digests.

use anyhow::{Context, Result};
use camino::Utf8PathBuf;

use crate::oci::subject::{client_for, Subject};
use crate::supply_chain::cosign::{self, Cosign, SigningArgs};
use crate::supply_chain::identity::{self, Identity};
use crate::supply_chain::sigstore::Instance;
use crate::support::config::Config;
use crate::support::progress::Steps;

/// One signing run against one image.
pub struct Session {
    cosign: Option<Cosign>,
    cosign_for_plan: String,
    pub options: cosign::Options,
    pub subject: Subject,
    signing_config: Option<Utf8PathBuf>,
}

impl Session {
    /// Checks the identity and cosign before touching the registry, so that
    /// a missing key or a wrong cosign fails at once. A dry run only warns
    /// about cosign.
    pub fn open(
        config: &Config,
        reference: &str,
        signing: &SigningArgs,
        insecure: bool,
        dry_run: bool,
        steps: &mut Steps,
    ) -> Result<Session> {
        let identity = identity::signing_identity(signing)?;
        let (cosign, cosign_for_plan) = if dry_run {
            (None, cosign::for_plan())
        } else {
            identity::check_signing_key(&identity)?;
            let cosign = Cosign::find()?;
            let shown = cosign.path.display().to_string();
            (Some(cosign), shown)
        };
        let client = client_for(reference, insecure)?;
        let subject = steps.run("resolve the image", || Subject::resolve(reference, &client))?;
        if let Some(tag) = &subject.resolved_from_tag {
            eprintln!(
                "{}:{tag} is {}; everything from here works on that digest",
                subject.name, subject.digest
            );
        }
        let signing_config = signing
            .no_tlog
            .then(|| cosign::work_dir(&config.target_dir).join("signing-config-no-tlog.json"));
        Ok(Session {
            cosign,
            cosign_for_plan,
            options: cosign::Options {
                identity,
                signing_config: signing_config.clone(),
                ignore_tlog: signing.no_tlog,
                insecure,
                workflow: None,
                sigstore: Instance::resolve(config, signing)?,
            },
            subject,
            signing_config,
        })
    }

    pub fn cosign(&self) -> Result<&Cosign> {
        self.cosign
            .as_ref()
            .context("cosign is not run in a dry run")
    }

    /// Writes the no-tlog signing config where the options point.
    pub fn write_signing_config(&self) -> Result<()> {
        if let Some(path) = &self.signing_config {
            if let Some(dir) = path.parent() {
                cosign::write_no_tlog_signing_config(dir)?;
            }
        }
        Ok(())
    }

    /// A command as it will run, with the cosign path found.
    pub fn display(&self, args: &[String]) -> String {
        let line = cosign::display(args);
        match line.strip_prefix("cosign") {
            Some(rest) if self.cosign_for_plan != "cosign" => {
                format!("{}{rest}", self.cosign_for_plan)
            }
            _ => line,
        }
    }

    /// The lines before a dry run's commands, as shell comments so that the
    /// output can be pasted.
    pub fn print_plan_header(&self, what: &str) {
        let subject = &self.subject;
        println!("# plan: {what}");
        if let Some(tag) = &subject.resolved_from_tag {
            println!("# {}:{tag} resolved to {}", subject.name, subject.digest);
        }
        for platform in &subject.platforms {
            println!("#   {}  {}", platform.platform, platform.digest);
        }
        match &self.options.identity {
            Identity::Key(key) => println!("# signing with the key {key}"),
            Identity::Keyless => println!("# signing keyless with the GitHub Actions OIDC token"),
        }
        if let Some(path) = &self.signing_config {
            println!(
                "# writes {path} (no Fulcio, no Rekor, no timestamp authority): {}",
                cosign::no_tlog_signing_config()
            );
        } else if let Some(path) = &self.options.sigstore.signing_config {
            println!("# through the Sigstore that {path} names");
        }
    }
}
