//! `release --dry-run`: the preflight, the tag plan, then every step with
//! its exact commands. Writes nothing anywhere; reads the registry only
//! with --push.

use anyhow::Result;
use serde_json::json;

use super::Release;
use crate::build::binaries;
use crate::release::preflight::{self, Preflight};
use crate::supply_chain::cosign;
use crate::supply_chain::identity::Identity;
use crate::support::config::Platform;
use crate::tags::{self, Build};

impl Release<'_> {
    /// The preflight and the tag plan, then every step with its exact
    /// commands. Writes nothing; reads the registry only with --push.
    pub(super) fn print_plan(&self) -> Result<()> {
        // Without --push the release touches no network, and neither does
        // its plan: the registry and the tags are a --push run's business.
        let client = if self.flags.push {
            Some(self.client()?)
        } else {
            None
        };
        let preflight = preflight::check(
            self.config,
            &self.flags.version,
            client.as_ref().map(|c| (c, &self.target)),
            preflight::Signing {
                args: &self.flags.signing,
                push: self.flags.push,
            },
        )?;
        let tag_plan = match &client {
            Some(client) => {
                let published = tags::published(None, &self.target, Some(client))?;
                let plan = tags::compute(
                    &Build::Release(preflight.version.clone()),
                    &preflight.head,
                    &published,
                )?;
                Some((plan, published.len()))
            }
            None => None,
        };
        let steps = self.planned_steps(&preflight)?;
        let warnings: Vec<String> = crate::build::base::unpinned_warning(&self.base)
            .into_iter()
            .collect();
        if self.flags.json {
            println!(
                "{}",
                json!({
                    "version": preflight.tag,
                    "image": self.repo,
                    "head": preflight.head,
                    "dry_run": true,
                    "preflight": preflight,
                    "warnings": warnings,
                    "tags": tag_plan.as_ref().map(|(plan, published)| plan.to_output(*published)),
                    "steps": steps.iter().map(|(name, commands)| json!({"step": name, "commands": commands})).collect::<Vec<_>>(),
                })
            );
            return Ok(());
        }
        println!(
            "release {} of {} from {} (dry run: nothing is built, pushed or tagged)",
            preflight.tag, self.repo, preflight.head
        );
        println!("preflight:");
        for line in &preflight.passed {
            println!("  ok: {line}");
        }
        for warning in &warnings {
            println!("warning: {warning}");
        }
        match &tag_plan {
            Some((plan, _)) => {
                println!("tags, in the order they would be set:");
                for line in plan.table() {
                    println!("  {line}");
                }
            }
            None => println!("tags: none; without --push nothing is pushed or tagged"),
        }
        println!("steps:");
        for (number, (name, commands)) in steps.iter().enumerate() {
            println!("  {}. {name}", number + 1);
            for command in commands {
                println!("     {command}");
            }
        }
        Ok(())
    }

    pub(super) fn planned_steps(
        &self,
        preflight: &Preflight,
    ) -> Result<Vec<(String, Vec<String>)>> {
        let tag = &preflight.tag;
        let out = self.out_dir(tag);
        let index = format!("{}@<index digest>", self.repo);
        let mut steps = vec![
            ("preflight".to_owned(), vec!["the checks above".to_owned()]),
            (
                "dist".to_owned(),
                binaries::build_commands(self.config, &self.config.platforms)?,
            ),
            ("audit".to_owned(), self.audit_commands()),
        ];
        let mut image = vec![format!(
            "assemble {} on {} into {}",
            self.config
                .platforms
                .iter()
                .map(Platform::to_string)
                .collect::<Vec<_>>()
                .join(" + "),
            self.base,
            out.join("oci")
        )];
        if !self.flags.push {
            steps.push(("image".to_owned(), image));
            steps.push((
                "release assets".to_owned(),
                vec![format!(
                    "archives, SHA256SUMS, SBOMs, provenance and notes into {}",
                    out.join("assets")
                )],
            ));
            return Ok(steps);
        }
        image.push(format!(
            "push blobs, platform manifests, then the index, by digest and untagged, to {}",
            self.repo
        ));
        steps.push(("image, pushed untagged".to_owned(), image));
        for task in ["sign", "attest"] {
            steps.push((
                task.to_owned(),
                vec![cosign::xtask_signing_command(
                    task,
                    &index,
                    &self.flags.signing,
                    self.insecure(),
                )],
            ));
        }
        let identity = match &self.flags.signing.key {
            Some(_) => Identity::Key(out.join("cosign.pub").to_string()),
            None => Identity::Keyless,
        };
        let verify = cosign::xtask_verify_command(
            &index,
            &identity,
            self.flags.signing.no_tlog,
            self.insecure(),
            true,
        );
        steps.push((
            "verify".to_owned(),
            vec![format!("{verify} --expect-version={tag}")],
        ));
        if self.chart_enabled() {
            steps.push((
                "chart: pushed by digest, signed, tagged".to_owned(),
                vec![format!(
                    "cargo xtask chart --version {tag} --image-digest <index digest> --push (to {})",
                    crate::chart::repository(self.config, None, self.flags.registry.image.as_deref())
                )],
            ));
        }
        steps.push((
            "tag: exact first, floating last".to_owned(),
            vec![format!("point the tags listed above at {index}")],
        ));
        let mut assets = vec![format!(
            "archives, SHA256SUMS, SBOMs, provenance and notes into {}",
            out.join("assets")
        )];
        if std::env::var_os("GITHUB_TOKEN").is_some() {
            assets.push(format!(
                "gh release create {tag} --verify-tag --title {tag} --notes-file release-notes.md <assets>"
            ));
        }
        steps.push(("release assets".to_owned(), assets));
        Ok(steps)
    }

    /// The scan of each binary dist writes, before anything is pushed.
    fn audit_commands(&self) -> Vec<String> {
        let db = match &self.flags.audit_db {
            Some(db) => format!(" --db {db} --no-fetch"),
            None => String::new(),
        };
        let mut commands: Vec<String> = self
            .config
            .platforms
            .iter()
            .map(|p| {
                format!(
                    "cargo audit --json{db} bin {}",
                    self.config
                        .dist_dir()
                        .join(p.slug())
                        .join(&self.config.binary)
                )
            })
            .collect();
        commands.push("a denied advisory stops the release here; see docs/security.md".to_owned());
        commands
    }
}
