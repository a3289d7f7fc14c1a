//! The GitHub workflows: actionlint, zizmor, and the project's own rules
//! read from the parsed YAML: pinned actions, least privilege per job, every
//! step a `cargo xtask` call, releases one at a time. Each rule is also shown
//! to catch a mutated workflow.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::{run, tool};
use yaml_rust2::{Yaml, YamlLoader};

/// `run:` steps that are not `cargo xtask …`, each justified in docs/ci.md:
/// they bring in what `cargo xtask` itself needs before it can run.
const TOOLCHAIN_STEPS: &[&str] = &[
    // The container's rustup profile is minimal; `cargo xtask test` runs fmt and clippy.
    "rustup component add rustfmt clippy",
    // `cargo xtask setup` installs syft, hadolint and others with pip.
    "apt-get update -q && apt-get install -y -q --no-install-recommends python3-pip",
    // The same, plus gh, with which `cargo xtask release` uploads the assets.
    "apt-get update -q && apt-get install -y -q --no-install-recommends python3-pip gh",
];

/// The tag reaches the release step through `env:` and a quoted shell
/// variable, never expanded into the script (template injection).
const RELEASE_RUN: &str =
    "cargo xtask release \"$VERSION\" --push ${COSIGN_PRIVATE_KEY:+--key=env://COSIGN_PRIVATE_KEY}";
const RELEASE_VERSION: &str = "${{ github.ref_name }}";
/// The rescan: latest and every floating vX.Y, one issue per advisory.
const RESCAN_RUN: &str = "cargo xtask audit --published --report-issues";

fn workflow_path(name: &str) -> PathBuf {
    support::workspace_root()
        .join(".github/workflows")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(workflow_path(name))
        .unwrap_or_else(|e| panic!("cannot read .github/workflows/{name}: {e}"))
}

fn str_of(yaml: &Yaml) -> Option<&str> {
    yaml.as_str()
}

/// The permissions block as `scope: level` lines, sorted; None when absent.
fn permissions(yaml: &Yaml) -> Option<Vec<String>> {
    let hash = yaml["permissions"].as_hash()?;
    let mut lines: Vec<String> = hash
        .iter()
        .map(|(k, v)| format!("{}: {}", str_of(k).unwrap_or("?"), str_of(v).unwrap_or("?")))
        .collect();
    lines.sort();
    Some(lines)
}

fn steps(job: &Yaml) -> &[Yaml] {
    job["steps"].as_vec().map(Vec::as_slice).unwrap_or(&[])
}

fn runs(job: &Yaml) -> Vec<String> {
    steps(job)
        .iter()
        .filter_map(|s| str_of(&s["run"]))
        .map(|r| r.trim().to_owned())
        .collect()
}

fn is_hex40(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Every rule that both workflows must keep, as one message per breach.
fn violations(name: &str, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let docs = match YamlLoader::load_from_str(text) {
        Ok(docs) => docs,
        Err(e) => return vec![format!("{name}: not YAML: {e}")],
    };
    let Some(doc) = docs.first() else {
        return vec![format!("{name}: empty")];
    };

    // Actions pinned by full commit sha, with the version it stands for.
    for line in text.lines() {
        let Some(rest) = line
            .trim_start()
            .trim_start_matches("- ")
            .strip_prefix("uses:")
        else {
            continue;
        };
        let (reference, comment) = rest.split_once('#').unwrap_or((rest, ""));
        let reference = reference.trim();
        let pinned = reference
            .rsplit_once('@')
            .is_some_and(|(_, sha)| is_hex40(sha));
        if !pinned {
            found.push(format!(
                "{name}: `uses: {reference}` is not pinned to a 40-hex commit sha"
            ));
        } else if !comment.trim().starts_with('v') {
            found.push(format!(
                "{name}: `uses: {reference}` has no `# vX` comment naming its version"
            ));
        }
    }

    if permissions(doc) != Some(vec!["contents: read".to_owned()]) {
        found.push(format!(
            "{name}: the top-level permissions must be exactly `contents: read`"
        ));
    }
    if str_of(&doc["concurrency"]["group"]).is_none() {
        found.push(format!("{name}: no concurrency group"));
    }

    let Some(jobs) = doc["jobs"].as_hash() else {
        found.push(format!("{name}: no jobs"));
        return found;
    };
    for (job_name, job) in jobs {
        let job_name = str_of(job_name).unwrap_or("?");
        let runs = runs(job);
        let signs = runs.iter().any(|r| {
            r.starts_with("cargo xtask sign ")
                || r.starts_with("cargo xtask release ")
                || (r.starts_with("cargo xtask image ")
                    && r.split_whitespace().any(|w| w == "--sign"))
        });
        let pushes = runs
            .iter()
            .any(|r| r.starts_with("cargo xtask") && r.split_whitespace().any(|w| w == "--push"));
        let releases = runs.iter().any(|r| r.starts_with("cargo xtask release "));
        let reports = runs
            .iter()
            .any(|r| r.starts_with("cargo xtask audit ") && r.contains("--report-issues"));
        let pulls = runs.iter().any(|r| {
            r.starts_with("cargo xtask audit ")
                && r.split_whitespace()
                    .skip(3)
                    .any(|w| !w.starts_with("--") || w == "--published")
        });
        let Some(granted) = permissions(job) else {
            found.push(format!("{name}: job {job_name} has no permissions block"));
            continue;
        };
        let has = |p: &str| granted.iter().any(|g| g == p);
        for grant in &granted {
            let allowed = match grant.as_str() {
                "contents: read" => true,
                "contents: write" => releases,
                "packages: write" => pushes,
                "id-token: write" => signs,
                "issues: write" => reports,
                "packages: read" => pulls,
                _ => false,
            };
            if !allowed {
                found.push(format!(
                    "{name}: job {job_name} is granted `{grant}` but does not need it"
                ));
            }
        }
        if signs && !has("id-token: write") {
            found.push(format!(
                "{name}: job {job_name} signs without `id-token: write`"
            ));
        }
        // A cache entry is written by any run of the same key, pull
        // requests included: a job that publishes must not read one.
        let caches = steps(job)
            .iter()
            .any(|s| str_of(&s["uses"]).is_some_and(|u| u.starts_with("actions/cache@")));
        if caches && (pushes || signs || releases) {
            found.push(format!(
                "{name}: job {job_name} publishes and restores a cache: a poisoned entry would reach what it publishes"
            ));
        }
        if pushes && !has("packages: write") {
            found.push(format!(
                "{name}: job {job_name} pushes without `packages: write`"
            ));
        }
        for run in &runs {
            if !run.starts_with("cargo xtask ") && !TOOLCHAIN_STEPS.contains(&run.as_str()) {
                found.push(format!(
                    "{name}: job {job_name} runs `{run}`: every step must be a `cargo xtask` call or a listed toolchain step"
                ));
            }
        }
    }
    found
}

/// The rules particular to each workflow.
fn release_violations(text: &str) -> Vec<String> {
    let mut found = violations("release.yml", text);
    let Ok(docs) = YamlLoader::load_from_str(text) else {
        return found;
    };
    let doc = &docs[0];
    let tags: Vec<&str> = doc["on"]["push"]["tags"]
        .as_vec()
        .map(|v| v.iter().filter_map(str_of).collect())
        .unwrap_or_default();
    if tags != ["v*"] || !doc["on"]["pull_request"].is_badvalue() {
        found.push("release.yml: must run on the push of v* tags only".to_owned());
    }
    if doc["concurrency"]["cancel-in-progress"].as_bool() != Some(false) {
        found.push("release.yml: a release in progress must never be cancelled".to_owned());
    }
    let all_steps: Vec<&Yaml> = doc["jobs"]
        .as_hash()
        .map(|jobs| jobs.values().flat_map(steps).collect())
        .unwrap_or_default();
    if !all_steps.iter().any(|s| {
        str_of(&s["run"]).map(str::trim) == Some(RELEASE_RUN)
            && str_of(&s["env"]["VERSION"]) == Some(RELEASE_VERSION)
    }) {
        found.push(format!(
            "release.yml: no step runs `{RELEASE_RUN}` with env VERSION `{RELEASE_VERSION}`"
        ));
    }
    found
}

/// The rescan: scheduled daily, scanning what is published and reporting
/// through issues, with nothing more than it needs.
fn rescan_violations(text: &str) -> Vec<String> {
    let mut found = violations("rescan.yml", text);
    let Ok(docs) = YamlLoader::load_from_str(text) else {
        return found;
    };
    let doc = &docs[0];
    let daily = doc["on"]["schedule"].as_vec().is_some_and(|v| {
        v.iter()
            .any(|s| str_of(&s["cron"]).is_some_and(|c| c.ends_with(" * * *")))
    });
    if !daily || !doc["on"]["push"].is_badvalue() || !doc["on"]["pull_request"].is_badvalue() {
        found.push("rescan.yml: must run on a daily schedule only".to_owned());
    }
    let all_runs: Vec<String> = doc["jobs"]
        .as_hash()
        .map(|jobs| jobs.values().flat_map(runs).collect())
        .unwrap_or_default();
    if !all_runs.iter().any(|r| r == RESCAN_RUN) {
        found.push(format!("rescan.yml: no step runs `{RESCAN_RUN}`"));
    }
    found
}

fn ci_violations(text: &str) -> Vec<String> {
    let mut found = violations("ci.yml", text);
    let Ok(docs) = YamlLoader::load_from_str(text) else {
        return found;
    };
    let doc = &docs[0];
    let branches: Vec<&str> = doc["on"]["push"]["branches"]
        .as_vec()
        .map(|v| v.iter().filter_map(str_of).collect())
        .unwrap_or_default();
    if branches != ["main"] || doc["on"]["pull_request"].is_badvalue() {
        found.push("ci.yml: must run on pull requests and on pushes to main".to_owned());
    }
    if doc["concurrency"]["cancel-in-progress"].as_bool() != Some(true)
        || !str_of(&doc["concurrency"]["group"]).is_some_and(|g| g.contains("github.ref"))
    {
        found
            .push("ci.yml: a newer run must cancel the one in progress on the same ref".to_owned());
    }
    let jobs = &doc["jobs"];
    if !runs(&jobs["test"]).contains(&"cargo xtask test --no-setup".to_owned()) {
        found.push("ci.yml: job test does not run `cargo xtask test`".to_owned());
    }
    let image_runs = runs(&jobs["image"]);
    if !image_runs.contains(&"cargo xtask image --push --sign".to_owned()) {
        found.push("ci.yml: job image must push and sign the image".to_owned());
    }
    if str_of(&jobs["image"]["needs"]) != Some("test") {
        found.push("ci.yml: job image must wait for the tests".to_owned());
    }
    // Forks get no write token: only this repository's PRs, and main.
    if str_of(&jobs["image"]["if"]) != Some(
        "github.event_name == 'push' || github.event.pull_request.head.repo.full_name == github.repository",
    ) {
        found.push("ci.yml: job image must run only for main and same-repository pull requests".to_owned());
    }
    found
}

/// The image name is written once, in [workspace.metadata.release]: a
/// workflow that repeats it goes stale when the project is renamed.
fn workflows_naming_the_image() -> Vec<String> {
    let image = support::release_image();
    let dir = support::workspace_root().join(".github/workflows");
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            std::fs::read_to_string(path)
                .unwrap()
                .contains(image.as_str())
        })
        .map(|path| {
            format!(
                "{}: names {image}; let `cargo xtask` read it from Cargo.toml",
                path.file_name().unwrap().to_string_lossy()
            )
        })
        .collect();
    found.sort();
    found
}

#[test]
fn no_workflow_repeats_the_image_name() {
    assert_eq!(workflows_naming_the_image(), Vec::<String>::new());
}

#[test]
fn the_workflows_keep_every_rule() {
    assert_eq!(ci_violations(&read("ci.yml")), Vec::<String>::new());
    assert_eq!(rescan_violations(&read("rescan.yml")), Vec::<String>::new());
    assert_eq!(
        release_violations(&read("release.yml")),
        Vec::<String>::new()
    );
}

/// Replaces exactly one occurrence, so that a mutation cannot silently miss.
fn mutate(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "the mutation's anchor {from:?} must occur once"
    );
    text.replacen(from, to, 1)
}

#[test]
fn a_broken_workflow_is_caught() {
    let ci = read("ci.yml");
    let release = read("release.yml");
    let rescan = read("rescan.yml");
    let checkout = "actions/checkout@08c6903cd8c0fde910a37f88322edcfb5dd907a8 # v5.0.0";
    const CACHE: &str = "actions/cache@5a3ec84eff668545956fd18022155c47e93e2684 # v4.2.3";
    assert!(
        ci.contains(CACHE),
        "the test job restores its caches with {CACHE}"
    );

    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            rescan_violations(&mutate(&rescan, RESCAN_RUN, "cargo xtask audit --published")),
            vec![
                "rescan.yml: job rescan is granted `issues: write` but does not need it".to_owned(),
                format!("rescan.yml: no step runs `{RESCAN_RUN}`"),
            ],
        ),
        (
            rescan_violations(&mutate(&rescan, "  schedule:\n    - cron: \"17 5 * * *\"\n", "  push:\n")),
            vec!["rescan.yml: must run on a daily schedule only".to_owned()],
        ),
        (
            rescan_violations(&mutate(&rescan, "      issues: write\n", "      issues: write\n      contents: write\n")),
            vec!["rescan.yml: job rescan is granted `contents: write` but does not need it".to_owned()],
        ),
        (
            release_violations(&mutate(&release, checkout, "actions/checkout@v5")),
            vec!["release.yml: `uses: actions/checkout@v5` is not pinned to a 40-hex commit sha".to_owned()],
        ),
        (
            release_violations(&mutate(
                &release,
                checkout,
                "actions/checkout@08c6903cd8c0fde910a37f88322edcfb5dd907a8",
            )),
            vec!["release.yml: `uses: actions/checkout@08c6903cd8c0fde910a37f88322edcfb5dd907a8` has no `# vX` comment naming its version".to_owned()],
        ),
        (
            ci_violations(&mutate(
                &ci,
                "    timeout-minutes: 90\n    permissions:\n      contents: read\n",
                "    timeout-minutes: 90\n    permissions:\n      contents: read\n      id-token: write\n",
            )),
            vec!["ci.yml: job test is granted `id-token: write` but does not need it".to_owned()],
        ),
        (
            ci_violations(&mutate(&ci, "      id-token: write\n", "")),
            vec!["ci.yml: job image signs without `id-token: write`".to_owned()],
        ),
        (
            ci_violations(&mutate(&ci, "permissions:\n  contents: read\n", "permissions: write-all\n")),
            vec!["ci.yml: the top-level permissions must be exactly `contents: read`".to_owned()],
        ),
        (
            ci_violations(&mutate(
                &ci,
                "run: cargo xtask test --no-setup",
                "run: curl -sSf https://example.com/install.sh | sh",
            )),
            vec![
                "ci.yml: job test runs `curl -sSf https://example.com/install.sh | sh`: every step must be a `cargo xtask` call or a listed toolchain step".to_owned(),
                "ci.yml: job test does not run `cargo xtask test`".to_owned(),
            ],
        ),
        (
            release_violations(&mutate(
                &release,
                "concurrency:\n  group: release\n  cancel-in-progress: false\n",
                "",
            )),
            vec![
                "release.yml: no concurrency group".to_owned(),
                "release.yml: a release in progress must never be cancelled".to_owned(),
            ],
        ),
        (
            release_violations(&mutate(&release, RELEASE_RUN, "cargo xtask release \"$VERSION\"")),
            vec![
                "release.yml: job release is granted `packages: write` but does not need it".to_owned(),
                format!("release.yml: no step runs `{RELEASE_RUN}` with env VERSION `{RELEASE_VERSION}`"),
            ],
        ),
        (
            release_violations(&mutate(&release, "VERSION: ${{ github.ref_name }}", "VERSION: ${{ github.sha }}")),
            vec![format!("release.yml: no step runs `{RELEASE_RUN}` with env VERSION `{RELEASE_VERSION}`")],
        ),
        (
            ci_violations(&mutate(
                &ci,
                "      - name: Install the pinned tools (cosign v3.1.3 among them)\n",
                &format!("      - uses: {CACHE}\n        with:\n          path: target\n          key: k\n      - name: Install the pinned tools (cosign v3.1.3 among them)\n"),
            )),
            vec!["ci.yml: job image publishes and restores a cache: a poisoned entry would reach what it publishes".to_owned()],
        ),
        (
            ci_violations(&mutate(&ci, "      contents: read\n      packages: write\n", "      contents: write\n      packages: write\n")),
            vec!["ci.yml: job image is granted `contents: write` but does not need it".to_owned()],
        ),
    ];
    for (i, (got, expected)) in cases.iter().enumerate() {
        assert_eq!(got, expected, "mutation {i}");
    }
}

fn actionlint(path: &Path) -> std::process::Output {
    run(Command::new(tool("actionlint"))
        .args(["-no-color", "-oneline"])
        .arg(path)
        .current_dir(support::workspace_root()))
}

#[test]
fn actionlint_passes_and_catches_a_bad_expression() {
    for name in ["ci.yml", "release.yml", "rescan.yml"] {
        let output = actionlint(&workflow_path(name));
        assert!(
            output.status.success(),
            "actionlint {name}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // actionlint must be able to fail: an undefined context property.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("release.yml");
    std::fs::write(
        &broken,
        mutate(
            &read("release.yml"),
            "VERSION: ${{ github.ref_name }}",
            "VERSION: ${{ github.ref_nmae }}",
        ),
    )
    .unwrap();
    let output = actionlint(&broken);
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("property \"ref_nmae\" is not defined in object type"),
        "{stdout}"
    );
}

/// zizmor's exit status, the rule of each finding (from its JSON output),
/// and what it printed, for `path`: a file or a directory of workflows,
/// audited with the default persona.
fn zizmor(path: &Path) -> (std::process::ExitStatus, Vec<String>, String) {
    zizmor_as(path, "regular")
}

/// [`zizmor`] with another persona (`regular`, `pedantic`, `auditor`).
fn zizmor_as(path: &Path, persona: &str) -> (std::process::ExitStatus, Vec<String>, String) {
    let output = run(Command::new(tool("zizmor"))
        .args(["--offline", "--format", "json"])
        .arg(format!("--persona={persona}"))
        .arg(path)
        .current_dir(support::workspace_root()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = format!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let findings: Vec<Value> = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("zizmor printed no JSON array of findings ({e}):\n{report}"));
    let rules = findings
        .iter()
        .map(|f| {
            f["ident"]
                .as_str()
                .unwrap_or_else(|| panic!("a zizmor finding without an ident:\n{report}"))
                .to_owned()
        })
        .collect();
    (output.status, rules, report)
}

#[test]
fn zizmor_finds_nothing() {
    let (status, rules, report) = zizmor(&support::workspace_root().join(".github/workflows"));
    assert_eq!(rules, Vec::<String>::new(), "zizmor:\n{report}");
    assert!(status.success(), "zizmor exited with {status}:\n{report}");
}

/// The auditor persona: no secret outside a dedicated environment (the
/// release job's signing key lives in the `release` environment).
#[test]
fn the_auditor_persona_finds_no_secret_outside_an_environment() {
    let (_, rules, report) = zizmor_as(
        &support::workspace_root().join(".github/workflows"),
        "auditor",
    );
    assert!(
        !rules.iter().any(|r| r == "secrets-outside-env"),
        "zizmor --persona=auditor:\n{report}"
    );
}

#[test]
fn zizmor_catches_a_template_injection() {
    // The tag expanded into the script again, as release.yml once did.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("release.yml");
    std::fs::write(
        &broken,
        mutate(
            &read("release.yml"),
            RELEASE_RUN,
            "cargo xtask release ${{ github.ref_name }} --push",
        ),
    )
    .unwrap();
    let (status, rules, report) = zizmor(&broken);
    assert_eq!(rules, ["template-injection"], "zizmor:\n{report}");
    assert!(!status.success(), "zizmor:\n{report}");
}

/// The release step's command line as the runner's shell expands it, with a
/// stand-in `cargo` that prints its arguments, one per line.
fn release_arguments(private_key: Option<&str>) -> Vec<String> {
    let text = read("release.yml");
    let docs = YamlLoader::load_from_str(&text).unwrap();
    let step = steps(&docs[0]["jobs"]["release"])
        .iter()
        .find(|s| str_of(&s["env"]["VERSION"]).is_some())
        .expect("release.yml has the release step");
    assert_eq!(
        str_of(&step["env"]["COSIGN_PRIVATE_KEY"]),
        Some("${{ secrets.COSIGN_PRIVATE_KEY }}")
    );
    assert_eq!(
        str_of(&step["env"]["COSIGN_PASSWORD"]),
        Some("${{ secrets.COSIGN_PASSWORD }}")
    );
    let bin = tempfile::tempdir().unwrap();
    let cargo = bin.path().join("cargo");
    std::fs::write(&cargo, "#!/bin/sh\nprintf '%s\\n' \"$@\"\n").unwrap();
    std::fs::set_permissions(&cargo, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut command = std::process::Command::new("sh");
    command
        .args(["-e", "-c", str_of(&step["run"]).unwrap()])
        .env("PATH", format!("{}:/usr/bin:/bin", bin.path().display()))
        .env("VERSION", "v1.2.3")
        .env("COSIGN_PRIVATE_KEY", private_key.unwrap_or(""));
    support::run_ok(&mut command)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_release_signs_with_the_key_secret_only_when_it_is_set() {
    assert_eq!(
        release_arguments(None),
        ["xtask", "release", "v1.2.3", "--push"]
    );
    assert_eq!(
        release_arguments(Some("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----")),
        [
            "xtask",
            "release",
            "v1.2.3",
            "--push",
            "--key=env://COSIGN_PRIVATE_KEY"
        ]
    );
}
