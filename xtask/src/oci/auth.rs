//! Registry credentials, found as Docker finds them, and GITHUB_TOKEN for
//! ghcr.io in CI.

use base64::Engine;

/// `user:GITHUB_TOKEN`, base64, as ghcr.io takes it in CI.
pub fn github_token_auth() -> Option<String> {
    let token = std::env::var("GITHUB_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())?;
    let user = std::env::var("GITHUB_ACTOR").unwrap_or_else(|_| "token".to_owned());
    Some(base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}")))
}

/// Basic credentials for `host`: GITHUB_TOKEN for ghcr.io, else the
/// `auths` entry of ~/.docker/config.json (or $DOCKER_CONFIG/config.json).
pub fn credentials(host: &str) -> Option<String> {
    if host == "ghcr.io" {
        if let Some(auth) = github_token_auth() {
            return Some(auth);
        }
    }
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".docker"))
        })?;
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    let auths = config.get("auths")?.as_object()?;
    let keys = [
        host.to_owned(),
        format!("https://{host}"),
        format!("https://{host}/v1/"),
    ];
    keys.iter()
        .find_map(|k| auths.get(k)?.get("auth")?.as_str().map(str::to_owned))
}
