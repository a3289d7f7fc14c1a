//! Cross-compiling the server: static, stripped, reproducible binaries for
//! every configured platform, with archives, SHA256SUMS and dist.json
//! under target/dist/.

use anyhow::{anyhow, bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};
use xshell::{cmd, Shell};

use crate::build::fingerprint;
use crate::build::plan::{built_binary, BuildPlan, Strategy};
use crate::build::schedule::Schedule;
use crate::support::archive::{self, Entry};
use crate::support::cache::Cache;
use crate::support::config::{Config, Platform};
use crate::support::elf::Elf;
use crate::support::fs::write_if_changed;
use crate::support::process;
use crate::support::progress::Steps;
use crate::support::source::Source;
use crate::support::tools;

/// What an artifact of dist is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// The static binary the image carries.
    Binary,
    /// `server-<platform>.tar.gz`, a release asset.
    Archive,
}

/// One line of dist.json.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Artifact {
    pub platform: String,
    pub target: String,
    pub kind: ArtifactKind,
    /// Relative to the workspace root.
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct Dist {
    pub source: Source,
    pub artifacts: Vec<Artifact>,
}

/// How dist builds.
#[derive(Debug, Clone, Copy)]
pub struct DistOptions {
    pub strategy: Strategy,
    /// Check the ELF machine, static linking and `server version`.
    pub verify: bool,
    /// Print the plan and the commands; build nothing.
    pub dry_run: bool,
}

impl DistOptions {
    /// What the image and release tasks build with: verified binaries.
    pub fn verified() -> DistOptions {
        DistOptions {
            strategy: Strategy::RELEASE,
            verify: true,
            dry_run: false,
        }
    }
}

impl Dist {
    /// The binary built for `platform`, as an absolute path.
    pub fn binary(&self, config: &Config, platform: &Platform) -> Result<Utf8PathBuf> {
        self.artifacts
            .iter()
            .find(|a| a.kind == ArtifactKind::Binary && a.platform == platform.to_string())
            .map(|a| config.workspace_root.join(&a.path))
            .with_context(|| format!("dist has no binary for {platform}; run `cargo xtask dist --platform {platform}`"))
    }
}

/// The platforms named on the command line, or the configured ones.
pub fn select_platforms(config: &Config, requested: &[String]) -> Result<Vec<Platform>> {
    if requested.is_empty() {
        return Ok(config.platforms.clone());
    }
    requested.iter().map(|p| p.parse()).collect()
}

/// The exact build command per platform, for plans and dry runs, as this
/// machine's schedule runs them.
pub fn build_commands(config: &Config, platforms: &[Platform]) -> Result<Vec<String>> {
    let source = Source::detect(&config.workspace_root)?;
    let schedule = Schedule::for_this_machine(platforms.len())?;
    platforms
        .iter()
        .map(|platform| {
            let plan = BuildPlan::new(config, platform, Strategy::RELEASE)?;
            Ok(match schedule.parallel_jobs {
                Some(jobs) => plan
                    .in_parallel(config)
                    .describe(config, &source, Some(jobs)),
                None => plan.describe(config, &source, None),
            })
        })
        .collect()
}

/// Builds, archives and verifies; returns what is in target/dist/.
pub fn build(config: &Config, platforms: &[Platform], options: DistOptions) -> Result<Dist> {
    let DistOptions {
        strategy,
        verify,
        dry_run,
    } = options;
    let source = Source::detect(&config.workspace_root)?;
    let version = config.version.to_string();
    let dist_dir = config.dist_dir();
    let sh = Shell::new()?;
    sh.change_dir(&config.workspace_root);
    sh.set_var("PATH", tools::augmented_path());

    let schedule = Schedule::for_this_machine(platforms.len())?;
    if dry_run {
        println!("# {}", schedule.describe());
    } else {
        eprintln!("{}", schedule.describe());
    }
    let build_steps = match schedule.parallel_jobs {
        Some(_) => 1,
        None => platforms.len(),
    };
    let mut steps = Steps::new(build_steps + platforms.len() * if verify { 2 } else { 1 } + 1);
    match schedule.parallel_jobs {
        None => {
            for platform in platforms {
                let triple = platform.triple();
                steps.run(&format!("{platform}: build {triple}"), || {
                    let plan = BuildPlan::new(config, platform, strategy)?;
                    if dry_run {
                        println!("{}", plan.describe(config, &source, None));
                        return Ok(());
                    }
                    let Some(fingerprint) = stale_fingerprint(config, &plan, &source)? else {
                        return Ok(());
                    };
                    plan.command(&sh, config, &source).run().with_context(|| {
                        format!("building {triple} failed; see the cargo output above")
                    })?;
                    fingerprint::record_build(config, triple, &fingerprint, &plan.built(config))
                })?;
            }
        }
        Some(jobs) => {
            let triples: Vec<&str> = platforms.iter().map(|p| p.triple()).collect();
            steps.run(
                &format!("build {} in parallel", triples.join(" and ")),
                || {
                    let plans = platforms
                        .iter()
                        .map(|platform| {
                            BuildPlan::new(config, platform, strategy)
                                .map(|plan| plan.in_parallel(config))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    if dry_run {
                        for plan in &plans {
                            println!("{}", plan.describe(config, &source, Some(jobs)));
                        }
                        return Ok(());
                    }
                    build_in_parallel(config, &source, &plans, platforms, jobs)
                },
            )?;
        }
    }
    if dry_run {
        return Ok(Dist {
            source,
            artifacts: Vec::new(),
        });
    }

    let mut artifacts = Vec::new();
    for platform in platforms {
        let triple = platform.triple();
        let binary = steps.run(&format!("{platform}: archive"), || {
            let built = built_binary(config, triple, schedule.parallel_jobs.is_some());
            let binary = dist_dir.join(platform.slug()).join(&config.binary);
            let bytes = std::fs::read(&built)
                .with_context(|| format!("cannot read the built binary {built}"))?;
            write_if_changed(&binary, &bytes, 0o755)?;
            let folder = format!("{}-{version}-{}", config.binary, platform.slug());
            let entry_path = format!("{folder}/{}", config.binary);
            let (archive, _) = Cache::in_target(&config.target_dir).tar_gz(
                &[Entry {
                    path: &entry_path,
                    data: &bytes,
                    mode: 0o755,
                }],
                source.epoch,
            )?;
            let archive_path = dist_dir.join(format!("{folder}.tar.gz"));
            write_if_changed(&archive_path, &archive.gz, 0o644)?;
            for (kind, path, data) in [
                (ArtifactKind::Binary, &binary, &bytes),
                (ArtifactKind::Archive, &archive_path, &archive.gz),
            ] {
                artifacts.push(Artifact {
                    platform: platform.to_string(),
                    target: triple.to_owned(),
                    kind,
                    path: config.relative(path).to_string(),
                    sha256: archive::sha256_hex(data),
                    size: data.len() as u64,
                });
            }
            Ok(binary)
        })?;
        if verify {
            steps.run(&format!("{platform}: verify"), || {
                verify_binary(&sh, config, &binary, platform, &version, &source)
            })?;
        }
    }
    steps.run("write SHA256SUMS and dist.json", || {
        write_manifests(config, &artifacts)
    })?;
    Ok(Dist { source, artifacts })
}

/// The fingerprint to record after building, or None when cargo can be
/// skipped. It is taken over the command without `--jobs`: the job count
/// changes how fast cargo builds, not what it builds.
fn stale_fingerprint(config: &Config, plan: &BuildPlan, source: &Source) -> Result<Option<String>> {
    let fingerprint = fingerprint::of_build(
        config,
        &plan.describe(config, source, None),
        &plan.toolchain.rustc,
        &plan.toolchain.cargo,
    )?;
    if fingerprint::is_up_to_date(config, plan.triple, &fingerprint, &plan.built(config)) {
        eprintln!(
            "{}: sources, toolchain and flags unchanged since the last build; cargo skipped",
            plan.triple
        );
        return Ok(None);
    }
    Ok(Some(fingerprint))
}

/// Runs the cargo of every stale target at once, each with `--jobs jobs`,
/// its output streamed with its platform before each line. Both run to
/// the end even when one fails, so that each failure is reported.
fn build_in_parallel(
    config: &Config,
    source: &Source,
    plans: &[BuildPlan],
    platforms: &[Platform],
    jobs: usize,
) -> Result<()> {
    let mut stale = Vec::new();
    for (plan, platform) in plans.iter().zip(platforms) {
        if let Some(fingerprint) = stale_fingerprint(config, plan, source)? {
            stale.push((plan, platform, fingerprint));
        }
    }
    // A lone stale target has the whole machine to itself.
    let jobs = (stale.len() > 1).then_some(jobs);
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = stale
            .iter()
            .map(|(plan, platform, fingerprint)| {
                scope.spawn(move || {
                    build_streamed(config, source, plan, platform, jobs)?;
                    fingerprint::record_build(config, plan.triple, fingerprint, &plan.built(config))
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(&stale)
            .map(|(handle, (plan, _, _))| {
                handle.join().unwrap_or_else(|_| {
                    Err(anyhow!("the thread building {} panicked", plan.triple))
                })
            })
            .collect()
    });
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{}", failures.join("\n\n"))
    }
}

/// The last lines of a failed cargo's output go into the error: its own
/// error is at the end, and the full output has already been shown.
const FAILED_OUTPUT_LINES: usize = 60;

fn build_streamed(
    config: &Config,
    source: &Source,
    plan: &BuildPlan,
    platform: &Platform,
    jobs: Option<usize>,
) -> Result<()> {
    let triple = plan.triple;
    let finished = process::stream_stderr_prefixed(
        plan.expression(config, source, jobs),
        &format!("cargo build for {triple}"),
        &format!("    {platform} | "),
    )?;
    if finished.success {
        return Ok(());
    }
    let lines: Vec<&str> = finished.stderr.lines().collect();
    let tail = lines[lines.len().saturating_sub(FAILED_OUTPUT_LINES)..].join("\n");
    bail!("building {triple} failed; the end of its cargo output:\n{tail}")
}

fn write_manifests(config: &Config, artifacts: &[Artifact]) -> Result<()> {
    let dist_dir = config.dist_dir();
    let mut sums = String::new();
    for artifact in artifacts {
        let path = config.workspace_root.join(&artifact.path);
        let name = path.strip_prefix(&dist_dir).unwrap_or(&path);
        sums.push_str(&format!("{}  {name}\n", artifact.sha256));
    }
    write_if_changed(&dist_dir.join("SHA256SUMS"), sums.as_bytes(), 0o644)?;
    let json = serde_json::to_string_pretty(artifacts)? + "\n";
    write_if_changed(&dist_dir.join("dist.json"), json.as_bytes(), 0o644)?;
    Ok(())
}

/// Checks the ELF machine, static linking, and what the binary says it is.
fn verify_binary(
    sh: &Shell,
    config: &Config,
    binary: &Utf8Path,
    platform: &Platform,
    version: &str,
    source: &Source,
) -> Result<()> {
    let bytes = std::fs::read(binary).with_context(|| format!("cannot read {binary}"))?;
    let elf = Elf::parse(&bytes).with_context(|| format!("{binary} is not an ELF executable"))?;
    if elf.machine != platform.machine() {
        bail!(
            "{binary} is built for {}, not {platform} ({})",
            elf.machine,
            platform.machine()
        );
    }
    if elf.has_interpreter {
        bail!("{binary} is dynamically linked (it has a PT_INTERP program header); it must be static for a distroless image");
    }
    // The run is what takes time (under qemu for arm64): a binary with this
    // digest already reported this version and commit.
    let digest = archive::sha256_hex(&bytes);
    if fingerprint::was_verified(config, &digest, version, &source.sha) {
        return Ok(());
    }
    let output = if platform.is_host() {
        cmd!(sh, "{binary} version --json").quiet().read()
    } else {
        let qemu = tools::find_opt(&format!("qemu-{}-static", platform.machine()))
            .with_context(|| format!("qemu-{}-static not found: run `cargo xtask setup` (apt-get install qemu-user-static)", platform.machine()))?;
        cmd!(sh, "{qemu} {binary} version --json").quiet().read()
    }
    .with_context(|| format!("cannot run `{binary} version --json`"))?;
    let info: serde_json::Value = serde_json::from_str(&output)
        .with_context(|| format!("`server version --json` printed invalid JSON: {output}"))?;
    let (got_version, got_sha) = (
        info["version"].as_str().unwrap_or(""),
        info["git_sha"].as_str().unwrap_or(""),
    );
    if got_version != version || got_sha != source.sha {
        bail!(
            "{binary} reports version {got_version} at {got_sha}, expected {version} at {}",
            source.sha
        );
    }
    fingerprint::record_verified(config, &digest, version, &source.sha)
}
