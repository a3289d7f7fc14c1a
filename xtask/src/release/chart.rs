//! The chart step of a release: after the image is verified and before
//! any tag moves, when `[workspace.metadata.release.chart] publish = true`.
//! A failure here stops the release with every floating tag where it was.

use anyhow::{Context, Result};
use camino::Utf8Path;

use super::Release;
use crate::chart::{self, Chart, ChartOptions};
use crate::supply_chain::cosign;
use crate::support::progress::Steps;

/// What the release notes read back: the chart published by this release.
const CHART_JSON: &str = "chart.json";

impl Release<'_> {
    pub(super) fn chart_enabled(&self) -> bool {
        self.config.chart.publish
    }

    /// The steps the chart adds to a pushed release: one, when enabled.
    pub(super) fn chart_steps(&self) -> usize {
        usize::from(self.chart_enabled())
    }

    /// Packages the chart with the verified image digest, pushes it by
    /// digest, signs it, then sets its version tag. None when disabled.
    pub(super) fn publish_chart(
        &self,
        digest: &str,
        out: &Utf8Path,
        steps: &mut Steps,
    ) -> Result<Option<Chart>> {
        if !self.chart_enabled() {
            return Ok(None);
        }
        let options = ChartOptions {
            release: self.flags.version.clone(),
            image: self.repo.clone(),
            image_digest: digest.to_owned(),
            repository: chart::repository(self.config, None, self.flags.registry.image.as_deref()),
            push: true,
            signing: self.flags.signing.clone(),
            insecure: self.insecure(),
            dry_run: false,
            out: out.join("chart"),
        };
        let mut published = steps
            .run_nested("chart: pushed by digest, signed, tagged", |nest| {
                chart::chart(self.config, &options, nest)
            })?;
        if let Some(chart_digest) = &published.digest {
            // As the image's: checked with the public key next to the assets.
            let reference = format!(
                "{}@{chart_digest}",
                published.repository.trim_start_matches("oci://")
            );
            published.verify[0] = cosign::display(&self.user_options()?.verify(&reference)?);
        }
        let path = out.join(CHART_JSON);
        std::fs::write(&path, serde_json::to_vec_pretty(&published)?)
            .with_context(|| format!("cannot write {path}"))?;
        Ok(Some(published))
    }

    /// The release notes' chart section, if this release published one.
    pub(super) fn chart_notes(&self, out: &Utf8Path) -> Result<String> {
        let path = out.join(CHART_JSON);
        if !self.chart_enabled() || !path.is_file() {
            return Ok(String::new());
        }
        let text = std::fs::read(&path).with_context(|| format!("cannot read {path}"))?;
        let chart: serde_json::Value = serde_json::from_slice(&text)
            .with_context(|| format!("{path} is not JSON; delete it and re-run the release"))?;
        let field = |name: &str| chart[name].as_str().unwrap_or_default().to_owned();
        let mut notes = format!(
            "\nHelm chart `{}` version {}, digest `{}`, running `{}` by default. Verify it, then install it by digest (docs/kubernetes.md):\n\n```sh\n",
            field("repository"),
            field("version"),
            field("digest"),
            field("image"),
        );
        for command in chart["verify"].as_array().into_iter().flatten() {
            notes.push_str(command.as_str().unwrap_or_default());
            notes.push('\n');
        }
        notes.push_str(&format!(
            "helm install server {}@{}\n```\n",
            field("repository"),
            field("digest")
        ));
        Ok(notes)
    }
}
