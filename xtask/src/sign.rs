//! `cargo xtask sign REF`: `cosign sign --recursive` on the index digest,
//! which signs the index and every platform manifest it lists.

use anyhow::Result;
use serde::Serialize;

use crate::flags;
use crate::oci::subject::Subject;
use crate::supply_chain::cosign::{self, SigningArgs};
use crate::supply_chain::identity::Identity;
use crate::supply_chain::session::Session;
use crate::support::config::Config;
use crate::support::progress::{Nest, Steps};

/// What to sign, and how.
#[derive(Debug, Clone)]
pub struct SignOptions {
    /// IMAGE@sha256:… or IMAGE:TAG; a tag is resolved to a digest once.
    pub reference: String,
    pub signing: SigningArgs,
    pub insecure: bool,
    /// Print the plan and the exact command; sign nothing.
    pub dry_run: bool,
}

/// What `sign --json` prints.
#[derive(Debug, Serialize)]
pub struct Signed {
    pub image: String,
    pub digest: String,
    pub platforms: Vec<SignedPlatform>,
    /// The command that checks the signatures.
    pub verify: String,
}

#[derive(Debug, Serialize)]
pub struct SignedPlatform {
    pub platform: String,
    pub digest: String,
}

pub fn run(flags: &flags::Sign) -> Result<()> {
    let config = Config::load()?;
    let options = SignOptions {
        reference: flags.reference.clone(),
        signing: flags.signing.clone(),
        insecure: flags.registry.insecure,
        dry_run: flags.dry_run,
    };
    let Some(signed) = sign(&config, &options, &Nest::top())? else {
        return Ok(());
    };
    if flags.json {
        println!("{}", serde_json::to_string_pretty(&signed)?);
        return Ok(());
    }
    println!("{}@{}", signed.image, signed.digest);
    for platform in &signed.platforms {
        eprintln!("  signed {}  {}", platform.platform, platform.digest);
    }
    eprintln!("verify with: {}", signed.verify);
    Ok(())
}

/// Signs the index and every platform by digest. None in a dry run, which
/// prints its plan on stdout instead.
pub fn sign(config: &Config, options: &SignOptions, nest: &Nest) -> Result<Option<Signed>> {
    let mut steps = Steps::within(nest, 2);
    let session = Session::open(
        config,
        &options.reference,
        &options.signing,
        options.insecure,
        options.dry_run,
        &mut steps,
    )?;
    let subject = &session.subject;
    let args = session.options.sign(&subject.by_digest(&subject.digest));
    if options.dry_run {
        session.print_plan_header(&format!(
            "sign {} and its {} platform manifest(s), recursively",
            subject.by_digest(&subject.digest),
            subject.platforms.len()
        ));
        println!("{}", session.display(&args));
        return Ok(None);
    }
    session.write_signing_config()?;
    steps.run("sign the index and every platform manifest", || {
        session.cosign()?.run_ok(&args).map(drop)
    })?;
    Ok(Some(Signed {
        image: subject.name.clone(),
        digest: subject.digest.clone(),
        platforms: subject
            .platforms
            .iter()
            .map(|p| SignedPlatform {
                platform: p.platform.to_string(),
                digest: p.digest.clone(),
            })
            .collect(),
        verify: verify_hint(options, &session, subject),
    }))
}

fn verify_hint(options: &SignOptions, session: &Session, subject: &Subject) -> String {
    let identity = match &session.options.identity {
        Identity::Key(key) => Identity::Key(cosign::public_key_hint(key)),
        Identity::Keyless => Identity::Keyless,
    };
    cosign::xtask_verify_command(
        &subject.by_digest(&subject.digest),
        &identity,
        session.options.signing_config.is_some(),
        options.insecure,
        false,
    )
}

#[cfg(test)]
mod tests {
    use crate::supply_chain::cosign::public_key_hint;

    #[test]
    fn public_key_next_to_the_private_key() {
        assert_eq!(public_key_hint("/k/cosign.key"), "/k/cosign.pub");
        assert_eq!(public_key_hint("env://KEY"), "<public key>");
    }
}
