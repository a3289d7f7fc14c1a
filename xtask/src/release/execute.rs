//! Running a release, step by step, each in-process and numbered.

use anyhow::{Context, Result};
use camino::Utf8Path;

use super::state::{Resuming, State, ATTESTED, SIGNED};
use super::{Release, Summary};
use crate::attest::{self, AttestOptions};
use crate::audit::{self, PlatformScan};
use crate::build::assemble::{self, Built, Options};
use crate::build::base::Bases;
use crate::build::binaries::{self, DistOptions};
use crate::floating;
use crate::image::subtask_failed;
use crate::oci::client::{Client, Reference};
use crate::oci::push::{self, TagChange};
use crate::oci::Layout;
use crate::release::preflight::{self, Preflight};
use crate::sign::{self, SignOptions};
use crate::supply_chain::cosign::{self, Cosign, SigningArgs};
use crate::supply_chain::vuln::{self, Database};
use crate::support::fs::write_atomically;
use crate::support::progress::{Nest, Steps};
use crate::support::source::Source;
use crate::verify::{self, VerifyOptions};

impl Release<'_> {
    pub(super) fn execute(&self) -> Result<()> {
        let push = self.flags.push;
        let mut steps = Steps::new(if push { 9 + self.chart_steps() } else { 5 });
        // Without --push the release needs no account and no network.
        let client = if push { Some(self.client()?) } else { None };
        let registry = client.as_ref().map(|c| (c, &self.target));

        let preflight = steps.run("preflight", || {
            preflight::check(
                self.config,
                &self.flags.version,
                registry,
                preflight::Signing {
                    args: &self.flags.signing,
                    push,
                },
            )
        })?;
        let tag = preflight.tag.clone();
        let out = self.out_dir(&tag);
        let source = Source::detect(&self.config.workspace_root)?;
        let mut state = State::load(&out, self.state_key(&tag, &source))?;
        let mut summary = Summary {
            version: tag.clone(),
            image: self.repo.clone(),
            ..Summary::default()
        };

        let platforms = self.config.platforms.clone();
        let built_dist = steps.run("dist", || {
            binaries::build(self.config, &platforms, DistOptions::verified())
        })?;
        // Before anything is pushed: a denied advisory stops here.
        let database = Database::chosen(self.flags.audit_db.as_deref());
        let scans = steps.run("audit", || {
            audit::gate(self.config, &built_dist.artifacts, &database)
        })?;
        let built = steps.run(
            if push {
                "image, pushed by digest, untagged"
            } else {
                "image"
            },
            || self.build_and_push(&preflight, &built_dist, &out, client.as_ref()),
        )?;
        summary.digest = built.digest.clone();
        summary.platforms = built
            .platforms
            .iter()
            .map(|p| (p.platform.clone(), p.digest.clone()))
            .collect();
        self.write_scans(&scans, &built)?;
        state.start(&built.digest);
        let reference = format!("{}@{}", self.repo, built.digest);

        if let Some(client) = client.as_ref() {
            let signing = SignOptions {
                reference: reference.clone(),
                signing: self.flags.signing.clone(),
                insecure: self.insecure(),
                dry_run: false,
            };
            if self.still_signed(client, &mut state, &built, &out)? {
                summary.resumed.push(SIGNED.to_owned());
                steps.run(
                    &format!("{SIGNED}: already done for this digest"),
                    || Ok(()),
                )?;
            } else {
                steps.run_nested(SIGNED, |nest| {
                    sign::sign(self.config, &signing, nest)
                        .map(drop)
                        .map_err(|err| subtask_failed(SIGNED, &signing, err))
                })?;
                state.mark_done(SIGNED, &out)?;
            }
            let mut resuming = Resuming {
                state: &mut state,
                client,
                repository: &self.target.repository,
                out: &out,
                skipped: 0,
                attached: 0,
            };
            steps.run_nested(ATTESTED, |nest| {
                self.attest(&signing, &source, nest, &mut resuming)
                    .map_err(|err| subtask_failed(ATTESTED, &signing, err))
            })?;
            if resuming.attached == 0 && resuming.skipped > 0 {
                summary.resumed.push(ATTESTED.to_owned());
            }
            // Never skipped: it is what makes moving the tags safe.
            let verifying = self.verify_options(&reference, &out)?;
            steps.run_nested("verify", |nest| {
                self.verify(&verifying, nest)?;
                let attested = self.config.target_dir.join("attest");
                self.predicate_files(&attested, &built).map(drop)
            })?;
            summary.chart = self.publish_chart(&built.digest, &out, &mut steps)?;
            let (changes, not_set) = steps.run("tag: exact first, floating last", || {
                self.move_tags(client, &preflight, &built)
            })?;
            summary.tags = changes;
            summary.not_tagged = not_set;
        }

        summary.assets = steps.run("release assets", || {
            self.write_assets(&preflight, &out, &source, &built, &built_dist)
        })?;
        let platforms: Vec<(String, String)> = summary
            .platforms
            .iter()
            .map(|(p, d)| (p.clone(), d.clone()))
            .collect();
        summary.verify_commands = self.verify_commands(&platforms, &built.digest)?;
        summary
            .verify_commands
            .extend(summary.chart.iter().flat_map(|c| c.verify.clone()));
        summary.steps = steps
            .timings
            .iter()
            .map(|(name, d)| (name.clone(), d.as_secs_f64()))
            .collect();
        self.print_summary(&summary, &out, steps.total_elapsed().as_secs_f64())
    }

    /// Attaches the attestations not attached yet, recording each at once.
    pub(super) fn attest(
        &self,
        signing: &SignOptions,
        source: &Source,
        nest: &Nest,
        resume: &mut Resuming,
    ) -> Result<()> {
        let options = AttestOptions {
            reference: signing.reference.clone(),
            signing: signing.signing.clone(),
            insecure: signing.insecure,
            dry_run: false,
        };
        attest::attest_resuming(self.config, source, &options, nest, resume)?;
        Ok(())
    }

    /// Each platform's scan, as the vuln predicate next to its SBOMs: the
    /// attest step attaches it to that platform's digest.
    fn write_scans(&self, scans: &[PlatformScan], built: &Built) -> Result<()> {
        let out_root = self.config.target_dir.join("attest");
        let now = vuln::now_rfc3339();
        for platform in &built.platforms {
            let key = &platform.platform;
            let Some(scan) = scans.iter().find(|s| &s.platform == key) else {
                continue;
            };
            let dir = attest::predicate_dir(&out_root, &platform.digest);
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {dir}"))?;
            let predicate = scan.result.predicate(&now, &now);
            write_atomically(
                &dir.join(vuln::VULN_FILE),
                &serde_json::to_vec_pretty(&predicate)?,
            )?;
        }
        Ok(())
    }

    /// Verification uses the public half of the signing key, derived by
    /// cosign, or the keyless identity of the release workflow.
    pub(super) fn verify_options(&self, reference: &str, out: &Utf8Path) -> Result<VerifyOptions> {
        let key = match &self.flags.signing.key {
            Some(key) => {
                std::fs::create_dir_all(out).with_context(|| format!("cannot create {out}"))?;
                let public = out.join("cosign.pub");
                cosign::write_public_key(&Cosign::find()?, key, &public)?;
                Some(public.to_string())
            }
            None => None,
        };
        Ok(VerifyOptions {
            reference: reference.to_owned(),
            signing: SigningArgs {
                key,
                ..self.flags.signing.clone()
            },
            insecure: self.insecure(),
            run: true,
            expect_version: Some(self.flags.version.clone()),
            ci_build: None,
            // Attested just now, to this very repository.
            expect_repository: Some(self.repo.clone()),
            max_db_age: None,
            require_vuln: true,
        })
    }

    /// Verifies as a user would, from the registry; the table goes to
    /// stderr, since stdout is the release's own result.
    pub(super) fn verify(&self, options: &VerifyOptions, nest: &Nest) -> Result<()> {
        let report = verify::verify(self.config, options, nest)?;
        eprint!("{}", report.table());
        report.into_result().map(drop)
    }

    /// Builds the layout under target/release/VERSION/oci and, with --push,
    /// publishes it by digest. A version already published at another
    /// digest is refused before anything is pushed.
    pub(super) fn build_and_push(
        &self,
        preflight: &Preflight,
        built_dist: &binaries::Dist,
        out: &Utf8Path,
        client: Option<&Client>,
    ) -> Result<Built> {
        let bases = Bases::new(&self.base, self.insecure());
        let version = preflight.version.to_string();
        let options = Options {
            platforms: self.config.platforms.clone(),
            bases: &bases,
            out: out.join("oci"),
            version: &version,
        };
        let built = assemble::assemble(self.config, built_dist, &options)?;
        let Some(client) = client else {
            return Ok(built);
        };
        if !self.flags.force {
            preflight.check_registry_digest(&built.digest)?;
        }
        let mount_from = Reference::parse(&self.base)
            .ok()
            .filter(|b| b.host == self.target.host)
            .map(|b| b.repository);
        push::push_layout(
            client,
            &self.target.repository,
            &Layout::open(&built.layout)?,
            &built.digest,
            mount_from.as_deref(),
        )?;
        Ok(built)
    }

    /// The policy's tags, computed from what the registry holds now, each
    /// re-read right before it moves.
    pub(super) fn move_tags(
        &self,
        client: &Client,
        preflight: &Preflight,
        built: &Built,
    ) -> Result<(Vec<TagChange>, Vec<String>)> {
        floating::tag_release(
            client,
            &self.target.repository,
            &preflight.version,
            &preflight.head,
            &Layout::open(&built.layout)?.read_blob(&built.digest)?,
            &built.digest,
            self.flags.force,
        )
    }

    pub(super) fn print_summary(
        &self,
        summary: &Summary,
        out: &Utf8Path,
        total: f64,
    ) -> Result<()> {
        if self.flags.json {
            println!("{}", serde_json::to_string_pretty(summary)?);
            return Ok(());
        }
        eprintln!("\nreleased {} in {total:.1}s", summary.version);
        println!("{}@{}", self.repo, summary.digest);
        for (platform, digest) in &summary.platforms {
            eprintln!("  {platform:<14} {digest}");
        }
        for change in &summary.tags {
            let before = change.before.as_deref().unwrap_or("unset");
            let what = if change.is_noop() { "unchanged" } else { "set" };
            eprintln!("  {}:{} {what} (was {before})", self.repo, change.tag);
        }
        for reason in &summary.not_tagged {
            eprintln!("  {reason}");
        }
        if !summary.resumed.is_empty() {
            eprintln!(
                "  resumed: {} already done for this digest",
                summary.resumed.join(", ")
            );
        }
        eprintln!("  assets in {}", out.join("assets"));
        if self.flags.push {
            eprintln!("verify with:");
            for command in &summary.verify_commands {
                eprintln!("  {command}");
            }
        }
        Ok(())
    }
}
