//! Replays a GitHub workflow's jobs on this machine, as a runner would run
//! them: the `run:` steps in order, each through `bash -eo pipefail` in an
//! environment cleared as by `env -i` and filled with what the workflow,
//! the job and the step declare, GitHub's own variables (`GITHUB_REPOSITORY`,
//! `GITHUB_REF`, `GITHUB_SHA`, `GITHUB_WORKFLOW_REF`, …) and, for a job with
//! `permissions: id-token: write`, the `ACTIONS_ID_TOKEN_REQUEST_*` pair
//! pointing at the test issuer. `${{ github.* }}` and `${{ secrets.* }}`
//! are expanded; any other expression fails the replay, so that a workflow
//! the harness cannot replay faithfully is noticed.
//!
//! Actions are not run: `actions/checkout` is the runner's workspace
//! (a clone), `actions/setup-go` the Go on the runner's PATH, and
//! `actions/upload-artifact` / `download-artifact` copy a directory through
//! the runner's artifact store, so that one job's artifact reaches the next.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use yaml_rust2::{Yaml, YamlLoader};

use super::github_oidc::{GithubOidc, Job};
use super::run;

/// A workflow file, parsed.
pub struct Workflow {
    /// The file name under .github/workflows/, such as `release.yml`.
    pub file: String,
    yaml: Yaml,
}

impl Workflow {
    pub fn read(workspace: &Path, file: &str) -> Workflow {
        let path = workspace.join(".github/workflows").join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let yaml = YamlLoader::load_from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
            .remove(0);
        Workflow {
            file: file.to_owned(),
            yaml,
        }
    }

    pub fn name(&self) -> String {
        self.yaml["name"].as_str().unwrap_or(&self.file).to_owned()
    }

    /// The jobs' ids, in the file's order.
    pub fn jobs(&self) -> Vec<String> {
        self.yaml["jobs"]
            .as_hash()
            .map(|h| {
                h.keys()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn job(&self, id: &str) -> &Yaml {
        let job = &self.yaml["jobs"][id];
        assert!(!job.is_badvalue(), "{} has no job {id}", self.file);
        job
    }

    /// Whether the job may ask for an OIDC token: `id-token: write` in its
    /// permissions, or in the workflow's when the job sets none.
    fn has_id_token(&self, id: &str) -> bool {
        let job = self.job(id);
        let permissions = if job["permissions"].is_badvalue() {
            &self.yaml["permissions"]
        } else {
            &job["permissions"]
        };
        permissions["id-token"].as_str() == Some("write")
            || permissions.as_str() == Some("write-all")
    }
}

/// What triggered the run.
#[derive(Debug, Clone)]
pub struct Event {
    /// `OWNER/REPO`
    pub repository: String,
    /// `refs/tags/v0.1.0`, `refs/heads/main`
    pub git_ref: String,
    pub sha: String,
    /// `push`, `pull_request`
    pub name: String,
}

/// The machine the jobs run on.
pub struct Runner<'a> {
    /// The checkout (`GITHUB_WORKSPACE`).
    pub workspace: PathBuf,
    /// What the machine itself provides: PATH, HOME, a Docker config left
    /// by a login, … Every step starts from these alone.
    pub machine_env: Vec<(String, String)>,
    pub secrets: BTreeMap<String, String>,
    pub event: Event,
    pub issuer: &'a GithubOidc,
    /// The claims of the job's OIDC token, when a test hands it another
    /// job's token; None: the token of this very run.
    pub token_for: Option<Job>,
    /// `run:` texts (trimmed) not replayed, such as the steps that install
    /// tools the machine already has.
    pub skip: Vec<String>,
    /// Where upload-artifact puts directories and download-artifact takes them.
    pub artifacts: PathBuf,
}

/// One replayed step.
pub struct StepRun {
    pub name: String,
    pub run: String,
    pub output: Output,
}

impl StepRun {
    /// stdout and stderr, for a failure message.
    pub fn text(&self) -> String {
        format!(
            "step {:?} ({}) exited with {}\nstdout:\n{}\nstderr:\n{}",
            self.name,
            self.run,
            self.output.status,
            String::from_utf8_lossy(&self.output.stdout),
            String::from_utf8_lossy(&self.output.stderr)
        )
    }
}

impl Runner<'_> {
    /// GitHub's claims for this run of `workflow`'s job.
    pub fn job_claims(&self, workflow: &Workflow) -> Job {
        Job {
            repository: self.event.repository.clone(),
            workflow_file: workflow.file.clone(),
            workflow_name: workflow.name(),
            git_ref: self.event.git_ref.clone(),
            sha: self.event.sha.clone(),
            event_name: self.event.name.clone(),
            called_workflow: None,
        }
    }

    /// Runs job `id` of `workflow`; stops after the first step that fails,
    /// as GitHub does. Returns every step that ran.
    pub fn run_job(&self, workflow: &Workflow, id: &str) -> Vec<StepRun> {
        let job = workflow.job(id);
        let mut base = self.github_env(workflow, id);
        if workflow.has_id_token(id) {
            let claims = self
                .token_for
                .clone()
                .unwrap_or_else(|| self.job_claims(workflow));
            let (url, token) = self.issuer.job(claims);
            base.insert("ACTIONS_ID_TOKEN_REQUEST_URL".into(), url);
            base.insert("ACTIONS_ID_TOKEN_REQUEST_TOKEN".into(), token);
        }
        let mut declared = BTreeMap::new();
        for scope in [&workflow.yaml["env"], &job["env"]] {
            declared.extend(self.env_of(scope, &base));
        }
        let mut done = Vec::new();
        for (index, step) in job["steps"].as_vec().into_iter().flatten().enumerate() {
            let name = step["name"]
                .as_str()
                .or(step["uses"].as_str())
                .or(step["run"].as_str())
                .map_or_else(|| format!("step {index}"), str::to_owned);
            if let Some(action) = step["uses"].as_str() {
                self.act(action, step);
                continue;
            }
            let Some(script) = step["run"].as_str() else {
                continue;
            };
            if self.skip.iter().any(|s| s == script.trim()) {
                continue;
            }
            let mut env = base.clone();
            env.extend(declared.clone());
            env.extend(self.env_of(&step["env"], &env));
            let script = self.expand(script, &env);
            let output = run(Command::new("bash")
                .args(["--noprofile", "--norc", "-eo", "pipefail", "-c", &script])
                .current_dir(&self.workspace)
                .env_clear()
                .envs(&env));
            let failed = !output.status.success();
            done.push(StepRun {
                name,
                run: script,
                output,
            });
            if failed {
                break;
            }
        }
        done
    }

    /// The variables every step of a job on GitHub gets.
    fn github_env(&self, workflow: &Workflow, job: &str) -> BTreeMap<String, String> {
        let event = &self.event;
        let (ref_type, ref_name) = match event.git_ref.strip_prefix("refs/tags/") {
            Some(tag) => ("tag", tag),
            None => (
                "branch",
                event
                    .git_ref
                    .strip_prefix("refs/heads/")
                    .unwrap_or(&event.git_ref),
            ),
        };
        let owner = event.repository.split('/').next().unwrap_or_default();
        let temp = self.workspace.with_file_name("runner-temp");
        std::fs::create_dir_all(&temp).expect("cannot create RUNNER_TEMP");
        let mut env: BTreeMap<String, String> = self.machine_env.iter().cloned().collect();
        for (key, value) in [
            ("CI", "true".to_owned()),
            ("GITHUB_ACTIONS", "true".to_owned()),
            ("GITHUB_SERVER_URL", "https://github.com".to_owned()),
            ("GITHUB_REPOSITORY", event.repository.clone()),
            ("GITHUB_REPOSITORY_OWNER", owner.to_owned()),
            ("GITHUB_REF", event.git_ref.clone()),
            ("GITHUB_REF_NAME", ref_name.to_owned()),
            ("GITHUB_REF_TYPE", ref_type.to_owned()),
            ("GITHUB_SHA", event.sha.clone()),
            ("GITHUB_EVENT_NAME", event.name.clone()),
            ("GITHUB_WORKFLOW", workflow.name()),
            (
                "GITHUB_WORKFLOW_REF",
                format!(
                    "{}/.github/workflows/{}@{}",
                    event.repository, workflow.file, event.git_ref
                ),
            ),
            ("GITHUB_JOB", job.to_owned()),
            ("GITHUB_ACTOR", "release-bot".to_owned()),
            ("GITHUB_RUN_ID", "4000004".to_owned()),
            ("GITHUB_RUN_ATTEMPT", "1".to_owned()),
            ("GITHUB_WORKSPACE", self.workspace.display().to_string()),
            ("RUNNER_TEMP", temp.display().to_string()),
        ] {
            env.insert(key.to_owned(), value);
        }
        env
    }

    /// An `env:` mapping with its expressions expanded.
    fn env_of(&self, scope: &Yaml, env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        scope
            .as_hash()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| {
                let value = match v {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    _ => return None,
                };
                Some((k.as_str()?.to_owned(), self.expand(&value, env)))
            })
            .collect()
    }

    /// `${{ github.X }}` and `${{ secrets.X }}`, as GitHub expands them
    /// before the shell sees the text; an unset secret is empty.
    fn expand(&self, text: &str, env: &BTreeMap<String, String>) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${{") {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find("}}")
                .unwrap_or_else(|| panic!("unclosed expression in {text:?}"))
                + start;
            let expression = rest[start + 3..end].trim();
            let value = if let Some(name) = expression.strip_prefix("secrets.") {
                self.secrets.get(name).cloned().unwrap_or_default()
            } else if let Some(name) = expression.strip_prefix("github.") {
                let variable = format!("GITHUB_{}", name.to_ascii_uppercase());
                env.get(&variable)
                    .cloned()
                    .unwrap_or_else(|| panic!("the replay has no value for {expression}"))
            } else {
                panic!("the replay cannot expand ${{{{ {expression} }}}} in {text:?}");
            };
            out.push_str(&value);
            rest = &rest[end + 2..];
        }
        out.push_str(rest);
        out
    }

    /// What the actions a workflow uses do, as far as a replay needs.
    fn act(&self, action: &str, step: &Yaml) {
        let name = action.split('@').next().unwrap_or(action);
        let with = |key: &str| step["with"][key].as_str().map(str::to_owned);
        match name {
            // The workspace is the checkout; Go is on the machine's PATH.
            "actions/checkout" | "actions/setup-go" => {}
            "actions/upload-artifact" => {
                let artifact = with("name").expect("upload-artifact needs a name");
                let from = self
                    .workspace
                    .join(with("path").expect("upload-artifact needs a path"));
                copy_dir(&from, &self.artifacts.join(artifact));
            }
            "actions/download-artifact" => {
                let artifact = with("name").expect("download-artifact needs a name");
                let to = self.workspace.join(with("path").unwrap_or_default());
                copy_dir(&self.artifacts.join(artifact), &to);
            }
            other => panic!("the replay does not know what the action {other} does"),
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("cannot create {}: {e}", to.display()));
    for entry in
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("cannot read {}: {e}", from.display()))
    {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("cannot copy {}: {e}", entry.path().display()));
        }
    }
}
