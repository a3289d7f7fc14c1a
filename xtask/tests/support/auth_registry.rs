//! The registry of `Registry::start` with authentication: htpasswd
//! (Basic) or token (Bearer, from a `TokenService`).

use std::process::Command;

use super::{free_port, run_ok, tool, Registry};

impl Registry {
    /// A registry that wants Basic credentials: `users` as (name,
    /// password), stored bcrypt-hashed by `htpasswd -B` as distribution
    /// requires.
    pub fn start_with_htpasswd(users: &[(&str, &str)]) -> Registry {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        let htpasswd = tool("htpasswd");
        let entries: String = users
            .iter()
            .map(|(user, password)| {
                run_ok(Command::new(&htpasswd).args(["-Bbn", user, password]))
                    .trim()
                    .to_owned()
                    + "\n"
            })
            .collect();
        let file = dir.path().join("htpasswd");
        std::fs::write(&file, entries).expect("cannot write the htpasswd file");
        let auth = format!(
            "auth:\n  htpasswd:\n    realm: xtask-test\n    path: {}\n",
            file.display()
        );
        Registry::start_in(dir, free_port(), auth, false)
    }

    /// A registry that wants Bearer tokens from `tokens`, which signs them
    /// with a certificate this registry trusts.
    pub fn start_with_token(tokens: &super::token_service::TokenService) -> Registry {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        let auth = format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            tokens.realm(),
            super::token_service::SERVICE,
            super::token_service::ISSUER,
            tokens.cert.display()
        );
        Registry::start_in(dir, free_port(), auth, false)
    }
}

/// Writes `dir/docker-credential-test`, a credential helper that answers
/// `get` for `host` with `user` and `secret` and, as the protocol says,
/// "credentials not found" for any other server.
pub fn write_credential_helper(dir: &std::path::Path, host: &str, user: &str, secret: &str) {
    use std::os::unix::fs::PermissionsExt;
    let helper = dir.join("docker-credential-test");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nserver=$(cat)\nif [ \"$1\" = get ] && [ \"$server\" = {host} ]; then\n  printf '%s' '{{\"ServerURL\":\"'\"$server\"'\",\"Username\":\"{user}\",\"Secret\":\"{secret}\"}}'\nelse\n  echo 'credentials not found in native keychain'\n  exit 1\nfi\n"
        ),
    )
    .expect("cannot write the credential helper");
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755))
        .expect("cannot make the credential helper executable");
}
