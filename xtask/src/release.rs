//! `cargo xtask release vX.Y.Z`: DESIGN.md §2 in order. Preflight, dist,
//! image pushed by digest and untagged, sign, attest, verify, and only then
//! the tags (exact first, floating last) and the release assets.
//!
//! Tags are the commit point: until verification passes, nothing a user
//! pulls by tag has changed. A state file under target/release/VERSION/
//! records the finished signing steps, so that a re-run after a failure
//! resumes instead of signing and attesting the same digest twice.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};
use serde_json::json;
use xshell::{cmd, Shell};

use crate::config::{Config, Platform};
use crate::cosign::{self, Cosign, Identity};
use crate::flags::{self, Strategy};
use crate::image::{self, Built, Options};
use crate::oci::Layout;
use crate::preflight::{self, Preflight};
use crate::progress::Steps;
use crate::publish::{self, RegistryFetcher};
use crate::push::{self, TagChange};
use crate::registry::{Client, Reference};
use crate::source::Source;
use crate::tags::{self, Build};
use crate::{dist, provenance, sbom, subtask, tools};

/// Steps a re-run skips for the same digest: repeating them would add
/// duplicate signatures and attestations. Everything else is idempotent.
const SIGNED: &str = "sign";
const ATTESTED: &str = "attest";

pub fn run(flags: &flags::Release) -> Result<()> {
    let config = Config::load()?;
    let (_, target) = publish::repository(&config, &flags.registry)?;
    let base = publish::base_or_configured(&config, flags.base.as_deref());
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

/// What a finished release produced, printed as the summary.
#[derive(Debug, Default, Serialize)]
struct Summary {
    version: String,
    image: String,
    digest: String,
    platforms: BTreeMap<String, String>,
    tags: Vec<TagChange>,
    not_tagged: Vec<String>,
    assets: Vec<Utf8PathBuf>,
    verify_commands: Vec<String>,
    resumed: Vec<String>,
    steps: Vec<(String, f64)>,
}

impl Release<'_> {
    fn out_dir(&self, tag: &str) -> Utf8PathBuf {
        self.config.target_dir.join("release").join(tag)
    }

    fn client(&self) -> Result<Client> {
        Client::new(&self.target.host, self.flags.registry.insecure)
    }

    fn execute(&self) -> Result<()> {
        let push = self.flags.push;
        let mut steps = Steps::new(if push { 8 } else { 4 });
        // Without --push the release needs no account and no network.
        let client = if push { Some(self.client()?) } else { None };
        let registry = client.as_ref().map(|c| (c, &self.target));

        let preflight = steps.run("preflight", || {
            preflight::check(self.config, &self.flags.version, registry)
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
            dist::build(self.config, &platforms, Strategy::Auto, true, false)
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
        state.start(&built.digest);
        let reference = format!("{}@{}", self.repo, built.digest);

        if let Some(client) = client.as_ref() {
            for (step, task) in [(SIGNED, "sign"), (ATTESTED, "attest")] {
                if state.is_done(step) {
                    summary.resumed.push(step.to_owned());
                    steps.run(&format!("{step}: already done for this digest"), || Ok(()))?;
                    continue;
                }
                steps.run(step, || self.xtask(&self.signing_args(task, &reference)))?;
                state.mark_done(step, &out)?;
            }
            // Never skipped: it is what makes moving the tags safe.
            let verify = self.verify_args(&reference, &out)?;
            steps.run("verify", || self.xtask(&verify))?;
            let (changes, not_set) = steps.run("tag: exact first, floating last", || {
                self.move_tags(client, &preflight, &built)
            })?;
            summary.tags = changes;
            summary.not_tagged = not_set;
        }

        summary.assets = steps.run("release assets", || {
            self.write_assets(&preflight, &out, &source, &built, &built_dist)
        })?;
        summary.verify_commands = self.verify_commands(&built.digest)?;
        summary.steps = steps
            .timings
            .iter()
            .map(|(name, d)| (name.clone(), d.as_secs_f64()))
            .collect();
        self.print_summary(&summary, &out, steps.total_elapsed().as_secs_f64())
    }

    /// Builds the layout under target/release/VERSION/oci and, with --push,
    /// publishes it by digest. A version already published at another
    /// digest is refused before anything is pushed.
    fn build_and_push(
        &self,
        preflight: &Preflight,
        built_dist: &dist::Dist,
        out: &Utf8Path,
        client: Option<&Client>,
    ) -> Result<Built> {
        let fetcher = RegistryFetcher::new(self.flags.registry.insecure);
        let version = preflight.version.to_string();
        let options = Options {
            platforms: self.config.platforms.clone(),
            base: self.base.clone(),
            out: out.join("oci"),
            version: &version,
            fetcher: &fetcher,
        };
        let built = image::assemble(self.config, built_dist, &options)?;
        for warning in fetcher.warnings.borrow().iter() {
            eprintln!("warning: {warning}");
        }
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
    fn move_tags(
        &self,
        client: &Client,
        preflight: &Preflight,
        built: &Built,
    ) -> Result<(Vec<TagChange>, Vec<String>)> {
        let published = client.list_tags(&self.target.repository)?;
        let plan = tags::compute(
            &Build::Release(preflight.version.clone()),
            &preflight.head,
            &published,
        )?;
        let changes = push::plan_tags(
            client,
            &self.target.repository,
            &plan.with_immutability(),
            &built.digest,
            self.flags.force,
        )?;
        let index = Layout::open(&built.layout)?.read_blob(&built.digest)?;
        push::apply_tags(client, &self.target.repository, &changes, &index)?;
        Ok((changes, plan.not_set))
    }

    fn xtask(&self, args: &[String]) -> Result<()> {
        subtask::run(&self.config.workspace_root, args)
    }

    fn signing_args(&self, task: &str, reference: &str) -> Vec<String> {
        subtask::signing_args(
            task,
            reference,
            &self.flags.signing,
            self.flags.registry.insecure,
        )
    }

    /// Verification uses the public half of the signing key, derived by
    /// cosign, or the keyless identity of the release workflow.
    fn verify_args(&self, reference: &str, out: &Utf8Path) -> Result<Vec<String>> {
        let mut args = vec![
            "verify".to_owned(),
            reference.to_owned(),
            "--run".to_owned(),
            format!("--expect-version={}", self.flags.version),
        ];
        if let Some(key) = &self.flags.signing.key {
            std::fs::create_dir_all(out).with_context(|| format!("cannot create {out}"))?;
            let public = out.join("cosign.pub");
            cosign::write_public_key(&Cosign::find()?, key, &public)?;
            args.push(format!("--key={public}"));
        }
        if self.flags.signing.no_tlog {
            args.push("--no-tlog".to_owned());
        }
        if self.flags.registry.insecure {
            args.push("--insecure".to_owned());
        }
        Ok(args)
    }

    /// The options for the commands printed to users: the public key is
    /// shown as `cosign.pub`, the file the release writes next to the
    /// assets.
    fn user_options(&self) -> Result<cosign::Options> {
        let identity = match &self.flags.signing.key {
            Some(_) => Identity::Key("cosign.pub".to_owned()),
            None => Identity::Keyless,
        };
        let identity_regexp = match identity {
            Identity::Keyless => Some(cosign::release_identity_regexp(&self.config.repository)?),
            Identity::Key(_) => None,
        };
        Ok(cosign::Options {
            identity,
            signing_config: None,
            ignore_tlog: self.flags.signing.no_tlog,
            insecure: self.flags.registry.insecure,
            identity_regexp,
        })
    }

    fn verify_commands(&self, digest: &str) -> Result<Vec<String>> {
        let reference = format!("{}@{digest}", self.repo);
        let options = self.user_options()?;
        let mut commands = vec![cosign::display(&options.verify(&reference)?)];
        for kind in ["cyclonedx", "slsaprovenance1"] {
            commands.push(cosign::display(
                &options.verify_attestation(&reference, kind)?,
            ));
        }
        let mut ours = format!("cargo xtask verify {reference} --run");
        if let Identity::Key(key) = &options.identity {
            ours.push_str(&format!(" --key {key}"));
        }
        if options.ignore_tlog {
            ours.push_str(" --no-tlog");
        }
        commands.push(ours);
        Ok(commands)
    }

    /// Archives, SHA256SUMS and its signature bundle, per-platform SBOMs and
    /// provenance, release notes; uploaded with `gh` when GITHUB_TOKEN is set.
    fn write_assets(
        &self,
        preflight: &Preflight,
        out: &Utf8Path,
        source: &Source,
        built: &Built,
        built_dist: &dist::Dist,
    ) -> Result<Vec<Utf8PathBuf>> {
        let assets = out.join("assets");
        std::fs::create_dir_all(&assets).with_context(|| format!("cannot create {assets}"))?;
        let mut written = Vec::new();
        let mut sums = String::new();
        for artifact in built_dist.artifacts.iter().filter(|a| a.kind == "archive") {
            let from = self.config.workspace_root.join(&artifact.path);
            let name = from
                .file_name()
                .with_context(|| format!("{from} has no file name"))?;
            let to = assets.join(name);
            std::fs::copy(&from, &to).with_context(|| format!("cannot copy {from} to {to}"))?;
            sums.push_str(&format!("{}  {name}\n", artifact.sha256));
            written.push(to);
        }
        let build_command = self.build_command(&preflight.tag);
        for platform in &built.platforms {
            let parsed: Platform = platform.platform.parse()?;
            let files = sbom::write(self.config, &parsed, Some(&platform.digest), &assets)?;
            written.push(files.cyclonedx);
            written.push(files.spdx);
            let predicate = provenance::predicate(&provenance::ProvenanceInput {
                config: self.config,
                source,
                platform: Some(&parsed),
                base_name: &built.base_name,
                base_digest: platform.base_digest.as_deref(),
                build_command: &build_command,
            })?;
            let path = assets.join(format!("provenance-{}.json", parsed.slug()));
            let text = serde_json::to_string_pretty(&predicate)? + "\n";
            std::fs::write(&path, text).with_context(|| format!("cannot write {path}"))?;
            written.push(path);
        }
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
        let notes = assets.join("release-notes.md");
        std::fs::write(&notes, self.release_notes(&preflight.tag, &built.digest)?)
            .with_context(|| format!("cannot write {notes}"))?;

        if self.flags.push && std::env::var_os("GITHUB_TOKEN").is_some() {
            self.upload(preflight, &notes, &written)?;
        }
        written.push(notes);
        Ok(written)
    }

    /// `cosign sign-blob` on SHA256SUMS, with the key, or keyless in CI.
    /// Without either, the checksums stay unsigned and the notes say so.
    fn sign_checksums(&self, sums: &Utf8Path, assets: &Utf8Path) -> Result<Option<Utf8PathBuf>> {
        let identity = match &self.flags.signing.key {
            Some(key) => Identity::Key(key.clone()),
            None if cosign::github_oidc_available() => Identity::Keyless,
            None => {
                eprintln!("note: SHA256SUMS is not signed: no --key and no GitHub OIDC token");
                return Ok(None);
            }
        };
        cosign::check_password(&identity)?;
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
            identity_regexp: None,
        };
        let bundle = assets.join("SHA256SUMS.sigstore.json");
        Cosign::find()?.run_ok(&options.sign_blob(sums, &bundle))?;
        Ok(Some(bundle))
    }

    fn upload(
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

    fn build_command(&self, tag: &str) -> Vec<String> {
        let mut command = vec!["cargo".into(), "xtask".into(), "release".into(), tag.into()];
        if self.flags.push {
            command.push("--push".into());
        }
        command
    }

    fn release_notes(&self, tag: &str, digest: &str) -> Result<String> {
        let repo = &self.repo;
        let mut notes = format!(
            "## {tag}\n\nImage `{repo}:{tag}`, index digest `{digest}` (linux/amd64 and linux/arm64).\n\nPull it by digest:\n\n```sh\ndocker pull {repo}@{digest}\n```\n\nVerify its signature, SBOM and provenance:\n\n```sh\n"
        );
        for command in self.verify_commands(digest)? {
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

    fn state_key(&self, tag: &str, source: &Source) -> StateKey {
        StateKey {
            version: tag.to_owned(),
            commit: source.sha.clone(),
            config: json!({
                "image": self.repo,
                "base": self.base,
                "platforms": self.config.platforms.iter().map(Platform::to_string).collect::<Vec<_>>(),
                "key": self.flags.signing.key,
                "no_tlog": self.flags.signing.no_tlog,
            })
            .to_string(),
        }
    }

    /// The preflight and the tag plan, then every step with its exact
    /// commands. Reads the registry; writes nothing anywhere.
    fn print_plan(&self) -> Result<()> {
        let client = self.client()?;
        let preflight = preflight::check(
            self.config,
            &self.flags.version,
            Some((&client, &self.target)),
        )?;
        let published = tags::published(None, &self.target, Some(&client))?;
        let plan = tags::compute(
            &Build::Release(preflight.version.clone()),
            &preflight.head,
            &published,
        )?;
        let steps = self.planned_steps(&preflight)?;
        if self.flags.json {
            println!(
                "{}",
                json!({
                    "version": preflight.tag,
                    "image": self.repo,
                    "head": preflight.head,
                    "dry_run": true,
                    "preflight": preflight,
                    "tags": plan.to_json(published.len()),
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
        println!("tags, in the order they would be set:");
        for line in plan.table() {
            println!("  {line}");
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

    fn planned_steps(&self, preflight: &Preflight) -> Result<Vec<(String, Vec<String>)>> {
        let tag = &preflight.tag;
        let out = self.out_dir(tag);
        let index = format!("{}@<index digest>", self.repo);
        let mut steps = vec![
            ("preflight".to_owned(), vec!["the checks above".to_owned()]),
            (
                "dist".to_owned(),
                dist::build_commands(self.config, &self.config.platforms)?,
            ),
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
        let xtask = |args: Vec<String>| format!("cargo xtask {}", args.join(" "));
        steps.push((
            "sign".to_owned(),
            vec![xtask(self.signing_args("sign", &index))],
        ));
        steps.push((
            "attest".to_owned(),
            vec![xtask(self.signing_args("attest", &index))],
        ));
        let mut verify = vec![
            "verify".to_owned(),
            index.clone(),
            "--run".to_owned(),
            format!("--expect-version={tag}"),
        ];
        if self.flags.signing.key.is_some() {
            verify.push(format!("--key={}", out.join("cosign.pub")));
        }
        if self.flags.signing.no_tlog {
            verify.push("--no-tlog".to_owned());
        }
        if self.flags.registry.insecure {
            verify.push("--insecure".to_owned());
        }
        steps.push(("verify".to_owned(), vec![xtask(verify)]));
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

    fn print_summary(&self, summary: &Summary, out: &Utf8Path, total: f64) -> Result<()> {
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

/// What a state file is valid for: another version, commit or
/// configuration starts from scratch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StateKey {
    version: String,
    commit: String,
    config: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    key: StateKey,
    digest: Option<String>,
    done: Vec<String>,
}

impl State {
    fn path(out: &Utf8Path) -> Utf8PathBuf {
        out.join("state.json")
    }

    fn load(out: &Utf8Path, key: StateKey) -> Result<State> {
        let path = State::path(out);
        let fresh = State {
            key: key.clone(),
            digest: None,
            done: Vec::new(),
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(fresh);
        };
        match serde_json::from_str::<State>(&text) {
            Ok(state) if state.key == key => Ok(state),
            Ok(_) => {
                eprintln!("note: {path} is for another commit or configuration; starting over");
                Ok(fresh)
            }
            Err(err) => {
                eprintln!("note: ignoring the unreadable state file {path}: {err}");
                Ok(fresh)
            }
        }
    }

    /// Signatures belong to one digest: a different build starts over.
    fn start(&mut self, digest: &str) {
        if self.digest.as_deref() != Some(digest) {
            self.digest = Some(digest.to_owned());
            self.done.clear();
        }
    }

    fn is_done(&self, step: &str) -> bool {
        self.done.iter().any(|s| s == step)
    }

    fn mark_done(&mut self, step: &str, out: &Utf8Path) -> Result<()> {
        if !self.is_done(step) {
            self.done.push(step.to_owned());
        }
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {out}"))?;
        let path = State::path(out);
        cosign::write_atomically(&path, serde_json::to_string_pretty(self)?.as_bytes())
            .with_context(|| format!("cannot write the release state {path}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(commit: &str) -> StateKey {
        StateKey {
            version: "v1.0.0".into(),
            commit: commit.into(),
            config: "{}".into(),
        }
    }

    #[test]
    fn state_resumes_only_for_the_same_key_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let out = Utf8Path::from_path(dir.path()).unwrap();
        let mut state = State::load(out, key("a")).unwrap();
        state.start("sha256:1");
        state.mark_done(SIGNED, out).unwrap();

        let mut again = State::load(out, key("a")).unwrap();
        again.start("sha256:1");
        assert!(again.is_done(SIGNED));
        assert!(!again.is_done(ATTESTED));

        let mut other_digest = State::load(out, key("a")).unwrap();
        other_digest.start("sha256:2");
        assert!(!other_digest.is_done(SIGNED));

        let other_commit = State::load(out, key("b")).unwrap();
        assert!(!other_commit.is_done(SIGNED));
    }
}
