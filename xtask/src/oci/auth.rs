//! Registry credentials, found as Docker finds them: GITHUB_TOKEN for
//! ghcr.io in CI, else `$DOCKER_CONFIG/config.json` (or
//! `~/.docker/config.json`): `credHelpers` for the host, else `credsStore`,
//! else `auths`. Helpers speak Docker's credential-helper protocol.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, format_err, Context, Result};
use base64::Engine;
use serde::Deserialize;

use crate::support::tools;

/// What a user logged in with.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user name and a password or token, sent as Basic, and only to
    /// the registry that asked for Basic or to its token service.
    Basic { username: String, secret: String },
    /// An OAuth2 refresh token (`identitytoken`, or a helper's `<token>`
    /// user), exchanged at the token service.
    IdentityToken(String),
}

// Secrets stay out of logs and panics.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credential::IdentityToken(_) => write!(f, "IdentityToken(<redacted>)"),
        }
    }
}

impl Credential {
    /// The value of an `Authorization: Basic …` header, if this is one.
    pub fn basic_header(&self) -> Option<String> {
        match self {
            Credential::Basic { username, secret } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{secret}"))
            )),
            Credential::IdentityToken(_) => None,
        }
    }
}

/// A credential and where it came from, for error messages.
#[derive(Debug, Clone)]
pub struct Found {
    pub credential: Credential,
    pub source: String,
}

/// The user a helper names when its secret is an identity token.
const TOKEN_USERNAME: &str = "<token>";

/// `user:GITHUB_TOKEN`, base64, as ghcr.io takes it in CI.
pub fn github_token_auth() -> Option<String> {
    let token = std::env::var("GITHUB_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())?;
    let user = std::env::var("GITHUB_ACTOR").unwrap_or_else(|_| "token".to_owned());
    Some(base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}")))
}

/// The directory of the Docker config: `$DOCKER_CONFIG`, else `~/.docker`.
pub fn docker_config_dir() -> Option<PathBuf> {
    std::env::var_os("DOCKER_CONFIG")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
}

/// The credential for `host`, or None to go anonymous. An unreadable
/// config or a failing helper is an error: silently pushing anonymously
/// would only fail later with a less useful message.
pub fn credentials(host: &str) -> Result<Option<Found>> {
    if host == "ghcr.io" {
        if let Some(auth) = github_token_auth() {
            return Ok(Some(Found {
                credential: decode_auth(&auth).context("cannot decode GITHUB_TOKEN")?,
                source: "GITHUB_TOKEN".to_owned(),
            }));
        }
    }
    let Some(dir) = docker_config_dir() else {
        return Ok(None);
    };
    let path = dir.join("config.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read the Docker config {}", path.display()))
        }
    };
    let config: DockerConfig = serde_json::from_str(&text).with_context(|| {
        format!(
            "cannot parse the Docker config {}; fix it or point DOCKER_CONFIG elsewhere",
            path.display()
        )
    })?;
    from_config(&config, host, &path)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// The keys Docker may have stored `host` under: `docker login` writes
/// Docker Hub as its v1 URL and older clients wrote `https://host`.
fn keys_for(host: &str) -> Vec<String> {
    if matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        return vec![
            "https://index.docker.io/v1/".to_owned(),
            "index.docker.io".to_owned(),
            "docker.io".to_owned(),
            "registry-1.docker.io".to_owned(),
        ];
    }
    vec![host.to_owned()]
}

/// `https://host/v1/` → `host`: how Docker compares `auths` keys.
fn normalize_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

fn from_config(config: &DockerConfig, host: &str, path: &Path) -> Result<Option<Found>> {
    let keys = keys_for(host);
    let helper = keys
        .iter()
        .find_map(|k| config.cred_helpers.get(k))
        .or(config.creds_store.as_ref())
        .filter(|h| !h.is_empty());
    if let Some(helper) = helper {
        // Docker asks the helper only, never `auths`, once one is set.
        for key in &keys {
            if let Some(credential) = run_helper(helper, key)? {
                return Ok(Some(Found {
                    credential,
                    source: format!("docker-credential-{helper} (from {})", path.display()),
                }));
            }
        }
        return Ok(None);
    }
    let entry = keys.iter().find_map(|k| {
        config
            .auths
            .iter()
            .find(|(key, _)| normalize_key(key) == normalize_key(k))
            .map(|(_, entry)| entry)
    });
    let Some(entry) = entry else {
        return Ok(None);
    };
    let source = format!("auths in {}", path.display());
    let credential = if let Some(token) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
        Credential::IdentityToken(token.clone())
    } else if let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) {
        decode_auth(auth).with_context(|| format!("cannot decode the {host} entry of {source}"))?
    } else if let (Some(username), Some(secret)) = (&entry.username, &entry.password) {
        Credential::Basic {
            username: username.clone(),
            secret: secret.clone(),
        }
    } else {
        return Ok(None);
    };
    Ok(Some(Found { credential, source }))
}

/// `base64(user:secret)`, as `auths` stores it.
fn decode_auth(auth: &str) -> Result<Credential> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .context("not base64")?;
    let text = String::from_utf8(bytes).context("not UTF-8")?;
    let (username, secret) = text
        .split_once(':')
        .ok_or_else(|| format_err!("not user:secret"))?;
    Ok(Credential::Basic {
        username: username.to_owned(),
        secret: secret.to_owned(),
    })
}

/// `docker-credential-NAME get` with the server on stdin; None when the
/// helper answers that it has nothing for that server.
fn run_helper(name: &str, server: &str) -> Result<Option<Credential>> {
    let program = format!("docker-credential-{name}");
    let path = tools::find_opt(&program).ok_or_else(|| {
        format_err!("cannot find {program}, which the Docker config names as a credential helper; install it or remove it from config.json")
    })?;
    let output = duct::cmd(&path, ["get"])
        .stdin_bytes(server.as_bytes())
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .with_context(|| format!("cannot run {}", path.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // The protocol's words for "nothing stored", on stdout.
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "cannot get credentials for {server} from {program}: {}; check the helper (try `echo {server} | {program} get`)",
            format!("{} {}", stdout.trim(), stderr.trim()).trim()
        );
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        username: String,
        secret: String,
    }
    let answer: Answer = serde_json::from_str(&stdout).with_context(|| {
        format!("cannot parse what {program} answered for {server}; expected {{\"Username\", \"Secret\"}}")
    })?;
    Ok(Some(if answer.username == TOKEN_USERNAME {
        Credential::IdentityToken(answer.secret)
    } else {
        Credential::Basic {
            username: answer.username,
            secret: answer.secret,
        }
    }))
}

/// A Docker config directory of our own for a child process (cosign reads
/// credentials only from one): a 0600 `config.json` in a fresh 0700
/// directory, removed when this is dropped, on every path out, errors too.
#[derive(Debug)]
pub struct PrivateDockerConfig {
    dir: PathBuf,
}

impl PrivateDockerConfig {
    /// Writes `config` as the `config.json` of a new private directory.
    pub fn write(config: &serde_json::Value) -> Result<PrivateDockerConfig> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "xtask-docker-config-{}-{nanos}-{n}",
            std::process::id()
        ));
        // `create`, not `create_all`: an existing path (someone else's, or
        // a symlink planted there) is an error, not something to write into.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create the private directory {}", dir.display()))?;
        // From here on Drop removes the directory, whatever fails next.
        let private = PrivateDockerConfig { dir };
        let path = private.dir.join("config.json");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let text = serde_json::to_string(config).context("cannot serialize a Docker config")?;
        file.write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(private)
    }

    /// The user's own config with GITHUB_TOKEN as the ghcr.io entry, so
    /// that cosign logs in to ghcr.io as the registry client does. None
    /// without GITHUB_TOKEN, or when DOCKER_CONFIG is set (the user chose).
    pub fn with_github_token() -> Result<Option<PrivateDockerConfig>> {
        let Some(auth) = github_token_auth() else {
            return Ok(None);
        };
        if std::env::var_os("DOCKER_CONFIG").is_some() {
            return Ok(None);
        }
        let mut config = docker_config_dir()
            .and_then(|d| std::fs::read_to_string(d.join("config.json")).ok())
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({}));
        config["auths"]["ghcr.io"] = serde_json::json!({ "auth": auth });
        // A helper for ghcr.io would win over `auths`.
        if let Some(helpers) = config
            .get_mut("credHelpers")
            .and_then(serde_json::Value::as_object_mut)
        {
            helpers.remove("ghcr.io");
        }
        PrivateDockerConfig::write(&config).map(Some)
    }

    /// The value for DOCKER_CONFIG.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PrivateDockerConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> DockerConfig {
        serde_json::from_str(json).unwrap()
    }

    fn basic(user: &str, secret: &str) -> Credential {
        Credential::Basic {
            username: user.to_owned(),
            secret: secret.to_owned(),
        }
    }

    #[test]
    fn auths_entries() {
        let path = Path::new("/c/config.json");
        let c = config(
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOnB3"},
                "https://reg.example:5000/v2/": {"username": "u", "password": "p"},
                "tok.example": {"identitytoken": "refresh"},
                "empty.example": {}
            }}"#,
        );
        let got = |host| from_config(&c, host, path).unwrap().map(|f| f.credential);
        assert_eq!(got("docker.io"), Some(basic("hub", "pw")));
        assert_eq!(got("reg.example:5000"), Some(basic("u", "p")));
        assert_eq!(
            got("tok.example"),
            Some(Credential::IdentityToken("refresh".into()))
        );
        assert_eq!(got("empty.example"), None);
        assert_eq!(got("reg.example"), None);
        assert!(from_config(&config(r#"{"auths": {"x": {"auth": "!!"}}}"#), "x", path).is_err());
    }

    #[test]
    fn a_missing_helper_is_an_error_that_names_it() {
        let c = config(r#"{"credHelpers": {"h.example": "xtask-no-such-helper"}}"#);
        let e = from_config(&c, "h.example", Path::new("/c")).unwrap_err();
        assert!(
            format!("{e:#}").contains("cannot find docker-credential-xtask-no-such-helper"),
            "{e:#}"
        );
        // Another host does not consult that helper.
        assert!(from_config(&c, "other.example", Path::new("/c"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let text = format!("{:?}", basic("u", "hunter2"));
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn private_config_is_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let private = PrivateDockerConfig::write(&serde_json::json!({"auths": {}})).unwrap();
        let dir = private.dir().to_path_buf();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("config.json")), 0o600);
        let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
        assert_eq!(text, r#"{"auths":{}}"#);
        drop(private);
        assert!(!dir.exists(), "{} is left behind", dir.display());
        // Two at once do not collide.
        let (a, b) = (
            PrivateDockerConfig::write(&serde_json::json!({})).unwrap(),
            PrivateDockerConfig::write(&serde_json::json!({})).unwrap(),
        );
        assert_ne!(a.dir(), b.dir());
    }

    #[test]
    fn private_config_is_removed_when_the_caller_fails() {
        let mut seen = PathBuf::new();
        let mut use_it = || -> Result<()> {
            let private = PrivateDockerConfig::write(&serde_json::json!({}))?;
            seen = private.dir().to_path_buf();
            bail!("cosign failed")
        };
        assert!(use_it().is_err());
        assert!(!seen.as_os_str().is_empty());
        assert!(!seen.exists(), "{} is left behind", seen.display());
    }
}
