//! A token service for distribution's `auth: token`, as Docker Hub or
//! Harbor run one: it checks Basic credentials, grants each user the
//! actions it may have, and issues RS256 JWTs that carry their signing
//! certificate in `x5c`. Distribution 2.8 trusts a token whose x5c chain
//! ends in its `rootcertbundle`, so one self-signed certificate, made here
//! with openssl, is both the chain and the bundle.

use std::path::PathBuf;
use std::process::Command;

use base64::Engine;

use super::scripted::{self, Scripted};
use super::{run_ok, tool};

pub const SERVICE: &str = "xtask-test-registry";
pub const ISSUER: &str = "xtask-test-issuer";

/// A user, its password and the actions it is granted on every repository.
pub struct Grant {
    pub user: &'static str,
    pub password: &'static str,
    pub actions: &'static [&'static str],
}

pub struct TokenService {
    endpoint: Scripted,
    pub cert: PathBuf,
    _dir: tempfile::TempDir,
}

impl TokenService {
    pub fn start(grants: Vec<Grant>) -> TokenService {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        run_ok(
            Command::new(tool("openssl"))
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args(["-subj", "/CN=xtask test token issuer", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        );
        let der = Command::new(tool("openssl"))
            .args(["x509", "-outform", "der", "-in"])
            .arg(&cert)
            .output()
            .expect("openssl x509");
        assert!(der.status.success(), "openssl x509 -outform der failed");
        let x5c = base64::engine::general_purpose::STANDARD.encode(&der.stdout);
        let endpoint = Scripted::start(Box::new(move |_, request| {
            Some(answer(request, &grants, &key, &x5c))
        }));
        TokenService {
            endpoint,
            cert,
            _dir: dir,
        }
    }

    /// The realm the registry names in its challenge. A host name, not
    /// 127.0.0.1: cosign (go-containerregistry) refuses a realm that is a
    /// loopback or private IP address other than the registry's own, as a
    /// guard against requests forged to internal services.
    pub fn realm(&self) -> String {
        let port = self
            .endpoint
            .host()
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        format!("http://localhost:{port}/token")
    }

    /// The requests the service was sent.
    pub fn requests(&self) -> Vec<String> {
        self.endpoint.requests()
    }

    /// Every `scope` asked for, decoded.
    pub fn scopes(&self) -> Vec<String> {
        self.requests()
            .iter()
            .flat_map(|r| query(scripted::target(r)))
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v)
            .collect()
    }
}

fn answer(request: &str, grants: &[Grant], key: &std::path::Path, x5c: &str) -> String {
    let denied = |why: &str| {
        scripted::response(
            401,
            &[("Content-Type", "application/json")],
            &format!(r#"{{"errors":[{{"code":"UNAUTHORIZED","message":"{why}"}}]}}"#),
        )
    };
    let params = query(scripted::target(request));
    if !params.iter().any(|(k, v)| k == "service" && v == SERVICE) {
        return denied("unknown service");
    }
    // Anonymous users get a token with no access, as public registries do.
    let grant = match scripted::header(request, "authorization") {
        None => None,
        Some(value) => {
            let decoded = value
                .strip_prefix("Basic ")
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            match grants
                .iter()
                .find(|g| decoded == format!("{}:{}", g.user, g.password))
            {
                Some(grant) => Some(grant),
                None => return denied("invalid username or password"),
            }
        }
    };
    let access: Vec<serde_json::Value> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .filter_map(|(_, scope)| {
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            let granted: Vec<&str> = actions
                .split(',')
                .filter(|a| grant.is_some_and(|g| g.actions.contains(a)))
                .collect();
            Some(serde_json::json!({"type": kind, "name": name, "actions": granted}))
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": grant.map_or("", |g| g.user),
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{now}-{}", std::process::id()),
        "access": access,
    });
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = sign(key, signing_input.as_bytes());
    let token = format!("{signing_input}.{}", b64(&signature));
    scripted::response(
        200,
        &[("Content-Type", "application/json")],
        &serde_json::json!({"token": token, "expires_in": 300}).to_string(),
    )
}

/// RS256: an RSASSA-PKCS1-v1_5 SHA-256 signature, by openssl.
pub fn sign(key: &std::path::Path, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(tool("openssl"))
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl dgst");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "openssl dgst -sign failed");
    output.stdout
}

/// The decoded `name=value` pairs of a request target's query.
pub fn query(target: &str) -> Vec<(String, String)> {
    let Some((_, query)) = target.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((decode(k), decode(v)))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => out.push(b),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
