//! An OIDC issuer that plays GitHub Actions' `token.actions.githubusercontent.com`:
//! discovery and JWKS for Fulcio, and the job's token endpoint that a
//! runner names in `ACTIONS_ID_TOKEN_REQUEST_URL`. cosign asks that URL
//! with `&audience=sigstore` and `Authorization: bearer
//! $ACTIONS_ID_TOKEN_REQUEST_TOKEN`, and gets `{"value": JWT}`.
//!
//! Each job is registered with its GitHub context ([`Job`]); its request
//! token selects which claims the JWT carries, so that a test can hand a
//! workflow the token of another repository, workflow file or tag. The
//! claims are the ones GitHub sets and Fulcio's `github-workflow` issuer
//! type requires: it writes them into the certificate's SAN
//! (`https://github.com/` + `job_workflow_ref`) and its extensions.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::Engine;

use super::scripted::{self, Scripted};
use super::token_service::{query, sign};
use super::{run_ok, tool};

/// The GitHub context of one job: what its token says.
#[derive(Debug, Clone)]
pub struct Job {
    /// `OWNER/REPO`
    pub repository: String,
    /// The workflow file under .github/workflows/, such as `release.yml`.
    pub workflow_file: String,
    /// The workflow's `name:`.
    pub workflow_name: String,
    /// `refs/tags/v0.1.0`, `refs/heads/main`, `refs/pull/7/merge`
    pub git_ref: String,
    /// The 40-hex commit.
    pub sha: String,
    /// `push`, `pull_request`
    pub event_name: String,
    /// The reusable workflow the job runs, `OWNER/REPO/.github/workflows/FILE@REF`,
    /// when it calls one (GitHub's `job_workflow_ref`, which Fulcio makes
    /// the SAN); None: the workflow itself.
    pub called_workflow: Option<String>,
}

impl Job {
    /// `OWNER/REPO/.github/workflows/FILE@REF`: GitHub's `workflow_ref`
    /// and, for a workflow that calls no reusable one, `job_workflow_ref`.
    pub fn workflow_ref(&self) -> String {
        format!(
            "{}/.github/workflows/{}@{}",
            self.repository, self.workflow_file, self.git_ref
        )
    }

    /// GitHub's `job_workflow_ref`.
    pub fn job_workflow_ref(&self) -> String {
        self.called_workflow
            .clone()
            .unwrap_or_else(|| self.workflow_ref())
    }

    /// The certificate's SAN that Fulcio derives from the token.
    pub fn certificate_identity(&self) -> String {
        format!("https://github.com/{}", self.job_workflow_ref())
    }

    fn claims(&self, issuer: &str, audience: &str, now: u64) -> serde_json::Value {
        let owner = self.repository.split('/').next().unwrap_or_default();
        let (ref_type, ref_name) = match self.git_ref.strip_prefix("refs/tags/") {
            Some(tag) => ("tag", tag.to_owned()),
            None => (
                "branch",
                self.git_ref
                    .strip_prefix("refs/heads/")
                    .unwrap_or(&self.git_ref)
                    .to_owned(),
            ),
        };
        serde_json::json!({
            "iss": issuer,
            "aud": audience,
            "sub": format!("repo:{}:ref:{}", self.repository, self.git_ref),
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("{now}-{}", self.sha),
            "repository": self.repository,
            "repository_id": "100001",
            "repository_owner": owner,
            "repository_owner_id": "200002",
            "repository_visibility": "public",
            "actor": "release-bot",
            "actor_id": "300003",
            "ref": self.git_ref,
            "ref_type": ref_type,
            "ref_protected": "true",
            "sha": self.sha,
            "event_name": self.event_name,
            "workflow": self.workflow_name,
            "workflow_ref": self.workflow_ref(),
            "workflow_sha": self.sha,
            "job_workflow_ref": self.job_workflow_ref(),
            "job_workflow_sha": self.sha,
            "runner_environment": "github-hosted",
            "run_id": "4000004",
            "run_number": "7",
            "run_attempt": "1",
            "head_ref": "",
            "base_ref": "",
            "ref_name": ref_name,
        })
    }
}

pub struct GithubOidc {
    endpoint: Scripted,
    jobs: Arc<Mutex<BTreeMap<String, Job>>>,
    _dir: tempfile::TempDir,
}

impl GithubOidc {
    pub fn start() -> GithubOidc {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("issuer-key.pem");
        run_ok(
            Command::new(tool("openssl"))
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                ])
                .arg(&key),
        );
        let modulus = run_ok(
            Command::new(tool("openssl"))
                .args(["rsa", "-noout", "-modulus", "-in"])
                .arg(&key),
        );
        let modulus = hex::decode(
            modulus
                .trim()
                .strip_prefix("Modulus=")
                .expect("openssl prints Modulus=HEX"),
        )
        .expect("the modulus is hex");
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let jwks = serde_json::json!({"keys": [{
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": "test-issuer",
            "n": b64(&modulus), "e": b64(&[1, 0, 1]),
        }]})
        .to_string();
        let jobs: Arc<Mutex<BTreeMap<String, Job>>> = Arc::default();
        let jobs2 = jobs.clone();
        // The issuer names itself by its own port, known only once bound.
        let own_url: Arc<Mutex<String>> = Arc::default();
        let own_url2 = own_url.clone();
        let endpoint = Scripted::start(Box::new(move |_, request| {
            let issuer = own_url2.lock().unwrap().clone();
            Some(answer(
                request,
                &issuer,
                &jwks,
                &jobs2.lock().unwrap(),
                &key,
            ))
        }));
        *own_url.lock().unwrap() = format!("http://{}", endpoint.host());
        GithubOidc {
            endpoint,
            jobs,
            _dir: dir,
        }
    }

    /// The issuer URL: the `iss` of its tokens, and what Fulcio writes into
    /// the certificate's issuer extension.
    pub fn url(&self) -> String {
        format!("http://{}", self.endpoint.host())
    }

    /// Registers a job; returns `ACTIONS_ID_TOKEN_REQUEST_URL` and
    /// `ACTIONS_ID_TOKEN_REQUEST_TOKEN` for it, as a runner sets them.
    pub fn job(&self, job: Job) -> (String, String) {
        let mut jobs = self.jobs.lock().unwrap();
        let token = format!("job-request-token-{}", jobs.len() + 1);
        jobs.insert(token.clone(), job);
        (format!("{}/_apis/token?api-version=2.0", self.url()), token)
    }

    /// The requests served so far.
    pub fn requests(&self) -> Vec<String> {
        self.endpoint.requests()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

fn answer(
    request: &str,
    issuer: &str,
    jwks: &str,
    jobs: &BTreeMap<String, Job>,
    key: &std::path::Path,
) -> String {
    let json = [("Content-Type", "application/json")];
    let target = scripted::target(request);
    let path = target.split('?').next().unwrap_or_default();
    match path {
        "/.well-known/openid-configuration" => scripted::response(
            200,
            &json,
            &serde_json::json!({
                "issuer": issuer,
                "jwks_uri": format!("{issuer}/.well-known/jwks"),
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public", "pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf", "ref", "repository", "repository_owner", "sha", "event_name", "workflow", "workflow_ref", "job_workflow_ref", "runner_environment"],
            })
            .to_string(),
        ),
        "/.well-known/jwks" => scripted::response(200, &json, jwks),
        "/_apis/token" => {
            let bearer = scripted::header(request, "authorization")
                .and_then(|v| v.strip_prefix("bearer ").or_else(|| v.strip_prefix("Bearer ")));
            let Some(job) = bearer.and_then(|t| jobs.get(t)) else {
                return scripted::response(401, &json, r#"{"message":"unknown request token"}"#);
            };
            let params = query(target);
            let Some((_, audience)) = params.iter().find(|(k, _)| k == "audience") else {
                return scripted::response(400, &json, r#"{"message":"no audience"}"#);
            };
            let token = jwt(&job.claims(issuer, audience, now()), key);
            scripted::response(200, &json, &serde_json::json!({"value": token}).to_string())
        }
        _ => scripted::response(404, &json, r#"{"message":"not found"}"#),
    }
}

fn jwt(claims: &serde_json::Value, key: &std::path::Path) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "kid": "test-issuer"});
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = sign(key, signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&signature))
}
