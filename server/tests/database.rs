//! The server against a real PostgreSQL 15: migrations on boot, refusal of
//! a database this binary does not match, the items API with its tokens,
//! and a database that goes away and comes back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use support::pg::Postgres;
use support::{Server, STEP_TIMEOUT};

const ALL: &str = "migrations applied: 0001_items, 0002_api_tokens";

fn boot(pg: &Postgres, database: &str) -> Server {
    let url = pg.url(database);
    Server::start(&[
        ("SERVER_DATABASE_URL", url.as_str()),
        ("SERVER_DRAIN_DELAY", "0s"),
        ("SERVER_LOG", "debug"),
    ])
}

fn messages(server: &Server) -> Vec<String> {
    server
        .logs()
        .iter()
        .map(|r| r["msg"].as_str().unwrap().to_owned())
        .collect()
}

fn stop(mut server: Server) {
    server.signal("TERM");
    assert_eq!(server.wait_exit(STEP_TIMEOUT).code(), Some(0));
}

/// `method path` with an optional bearer token and body, on a fresh
/// connection.
fn call(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let port = server.port();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let response = support::request(
        port,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    (response.status, response.body)
}

fn serve_exit(pg: &Postgres, database: &str) -> (Option<i32>, String, String) {
    let url = pg.url(database);
    let output = support::run(
        &["serve"],
        &[
            ("SERVER_ADDR", "127.0.0.1:0"),
            ("SERVER_DATABASE_URL", &url),
        ],
    );
    (
        output.status.code(),
        support::text(&output.stdout),
        support::text(&output.stderr),
    )
}

fn bootstrap(pg: &Postgres) -> (Option<i32>, String, String) {
    let url = pg.url("postgres");
    let output = support::run(&["bootstrap"], &[("SERVER_DATABASE_URL", &url)]);
    (
        output.status.code(),
        support::text(&output.stdout),
        support::text(&output.stderr),
    )
}

#[test]
fn a_fresh_database_is_migrated_on_boot_and_the_second_boot_has_nothing_pending() {
    let pg = Postgres::start();
    let server = boot(&pg, "postgres");
    assert_eq!(
        messages(&server)[..2],
        [ALL.to_owned(), "listening".to_owned()]
    );
    assert_eq!(server.get("/readyz").status, 200);
    stop(server);
    let server = boot(&pg, "postgres");
    assert_eq!(
        messages(&server)[..2],
        ["no pending migrations".to_owned(), "listening".to_owned()]
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT string_agg(version, ',' ORDER BY version) FROM schema_migrations"
        ),
        "0001_items,0002_api_tokens"
    );
    stop(server);
}

#[test]
fn two_servers_started_together_apply_once_and_both_serve() {
    let pg = Postgres::start();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| boot(&pg, "postgres"));
        let b = s.spawn(|| boot(&pg, "postgres"));
        (a.join().unwrap(), b.join().unwrap())
    });
    let mut firsts = [messages(&a)[0].clone(), messages(&b)[0].clone()];
    firsts.sort();
    assert_eq!(firsts, [ALL.to_owned(), "no pending migrations".to_owned()]);
    assert_eq!(
        (a.get("/readyz").status, b.get("/readyz").status),
        (200, 200)
    );
    stop(a);
    stop(b);
}

#[test]
fn bootstrap_creates_one_hashed_token_and_writes_need_it() {
    let pg = Postgres::start();
    let (code, token, stderr) = bootstrap(&pg);
    assert_eq!(code, Some(0), "{stderr}");
    let token = token.trim_end().to_owned();
    assert_eq!(token.len(), 64, "{token:?}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        stderr,
        "server: created the first API token, printed above once; store it now, the database keeps only its hash\n"
    );
    assert_eq!(
        bootstrap(&pg),
        (
            Some(0),
            String::new(),
            "server: an API token exists already; bootstrap changed nothing\n".to_owned()
        )
    );
    // Only the hash is stored.
    assert_eq!(
        pg.psql("postgres", "SELECT sha256 FROM api_tokens"),
        pg.psql(
            "postgres",
            &format!("SELECT encode(sha256('{token}'::bytea), 'hex')")
        )
    );
    assert_eq!(
        pg.psql(
            "postgres",
            &format!("SELECT count(*) FROM api_tokens WHERE sha256 = '{token}'")
        ),
        "0"
    );

    let server = boot(&pg, "postgres");
    let path = "/v1/items/greeting";
    assert_eq!(
        call(&server, "PUT", path, None, r#"{"hello":"world"}"#),
        (401, "writes need Authorization: Bearer TOKEN; create the first token with `server bootstrap`\n".to_owned())
    );
    assert_eq!(call(&server, "PUT", path, Some("wrong"), "{}").0, 401);
    assert_eq!(
        call(&server, "PUT", path, Some(&token), r#"{"hello":"world"}"#),
        (201, "created\n".to_owned())
    );
    assert_eq!(
        call(&server, "PUT", path, Some(&token), r#"{"hello": "again"}"#),
        (200, "updated\n".to_owned())
    );
    assert_eq!(
        call(&server, "GET", path, None, ""),
        (200, "{\"hello\": \"again\"}\n".to_owned())
    );
    assert_eq!(call(&server, "DELETE", path, None, "").0, 401);
    assert_eq!(
        call(&server, "DELETE", path, Some(&token), ""),
        (200, "deleted\n".to_owned())
    );
    assert_eq!(
        call(&server, "GET", path, None, ""),
        (404, "not found\n".to_owned())
    );
    assert_eq!(call(&server, "PUT", path, Some(&token), "not json").0, 400);
    assert_eq!(
        call(&server, "PUT", "/v1/items/a%2Fb", Some(&token), "{}"),
        (
            400,
            "invalid key: use 1 to 128 characters from A-Z, a-z, 0-9, '.', '_' and '-'\n"
                .to_owned()
        )
    );
    let big = format!("\"{}\"", "x".repeat(64 * 1024));
    assert_eq!(call(&server, "PUT", path, Some(&token), &big).0, 413);
    stop(server);
}

/// The schema of the version before this one: its migrations applied the
/// way it applied them.
fn migrate_like_the_previous_version(pg: &Postgres) {
    let sql = include_str!("../migrations/0001_items.sql");
    pg.psql("postgres", sql);
    pg.psql(
        "postgres",
        &format!(
            "CREATE TABLE schema_migrations (version text PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO schema_migrations (version, checksum) VALUES ('0001_items', encode(sha256(convert_to($sql${sql}$sql$, 'UTF8')), 'hex'))"
        ),
    );
}

#[test]
fn an_upgrade_from_the_previous_schema_applies_only_the_new_migration_and_keeps_items() {
    let pg = Postgres::start();
    migrate_like_the_previous_version(&pg);
    pg.psql(
        "postgres",
        r#"INSERT INTO items (key, value) VALUES ('kept', '{"n": 1}')"#,
    );
    let server = boot(&pg, "postgres");
    assert_eq!(messages(&server)[0], "migrations applied: 0002_api_tokens");
    assert_eq!(
        call(&server, "GET", "/v1/items/kept", None, ""),
        (200, "{\"n\": 1}\n".to_owned())
    );
    stop(server);
}

#[test]
fn a_database_from_a_newer_version_is_refused_with_exit_3_and_left_untouched() {
    let pg = Postgres::start();
    stop(boot(&pg, "postgres"));
    pg.psql(
        "postgres",
        r#"INSERT INTO items (key, value) VALUES ('kept', '{"n": 1}')"#,
    );
    // A backup before the upgrade, as docs/upgrading.md says.
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("before-upgrade.dump");
    let status = std::process::Command::new(pg.tool("pg_dump"))
        .args(["-Fc", "-f"])
        .arg(&dump)
        .arg(pg.url("postgres"))
        .status()
        .unwrap();
    assert!(status.success());
    // The newer version ran and migrated.
    pg.psql(
        "postgres",
        "INSERT INTO schema_migrations (version, checksum) VALUES ('0003_future', 'x')",
    );
    let before = pg.psql("postgres", "SELECT count(*) FROM items");

    let (code, stdout, stderr) = serve_exit(&pg, "postgres");
    assert_eq!(code, Some(3), "{stdout}");
    assert_eq!(
        stderr,
        format!("server: the database has migration 0003_future, which server {} (schema 0002_api_tokens) does not know; run the newer version that applied it, or restore the backup taken before the upgrade\n", env!("CARGO_PKG_VERSION"))
    );
    assert!(!stdout.contains("listening"), "{stdout}");
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM items"), before);
    assert_eq!(
        pg.psql("postgres", "SELECT count(*) FROM schema_migrations"),
        "3"
    );
    let status = support::run(
        &["migrate", "status"],
        &[("SERVER_DATABASE_URL", &pg.url("postgres"))],
    );
    assert_eq!(status.status.code(), Some(3));

    // Restoring the backup lets this version serve again, items included.
    pg.psql("postgres", "CREATE DATABASE restored");
    let status = std::process::Command::new(pg.tool("pg_restore"))
        .arg("-d")
        .arg(pg.url("restored"))
        .arg(&dump)
        .status()
        .unwrap();
    assert!(status.success());
    let server = boot(&pg, "restored");
    assert_eq!(messages(&server)[0], "no pending migrations");
    assert_eq!(
        call(&server, "GET", "/v1/items/kept", None, ""),
        (200, "{\"n\": 1}\n".to_owned())
    );
    stop(server);
}

#[test]
fn an_edited_migration_is_refused_with_exit_3() {
    let pg = Postgres::start();
    stop(boot(&pg, "postgres"));
    pg.psql(
        "postgres",
        "UPDATE schema_migrations SET checksum = 'edited' WHERE version = '0001_items'",
    );
    let (code, _, stderr) = serve_exit(&pg, "postgres");
    assert_eq!(code, Some(3));
    assert_eq!(
        stderr,
        format!("server: migration 0001_items in the database differs from the one in server {} (schema 0002_api_tokens); run the version that applied it, or restore the backup taken before the upgrade\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn migrate_status_and_up_report_in_text_and_json() {
    let pg = Postgres::start();
    let url = pg.url("postgres");
    let env = [("SERVER_DATABASE_URL", url.as_str())];
    let status = support::run(&["migrate", "status", "--json"], &env);
    assert_eq!(
        support::text(&status.stdout),
        "{\"applied\":[],\"pending\":[\"0001_items\",\"0002_api_tokens\"]}\n"
    );
    let up = support::run(&["migrate", "up"], &env);
    assert_eq!(
        support::text(&up.stdout),
        format!("{ALL}\napplied  0001_items\napplied  0002_api_tokens\n")
    );
    let again = support::run(&["migrate", "up", "--json"], &env);
    assert_eq!(
        support::text(&again.stdout),
        "{\"applied\":[\"0001_items\",\"0002_api_tokens\"],\"applied_now\":[],\"pending\":[]}\n"
    );
    let bad = support::run(&["migrate", "down"], &env);
    assert_eq!(bad.status.code(), Some(2));
    let unset = support::run(&["migrate", "status"], &[]);
    assert_eq!(
        (unset.status.code(), support::text(&unset.stderr).as_str()),
        (Some(2), "server: SERVER_DATABASE_URL is not set; set it to postgres://USER:PASSWORD@HOST:PORT/DATABASE\n")
    );
}

#[test]
fn the_database_going_away_turns_readyz_503_until_it_is_back_and_the_server_stays_up() {
    let mut pg = Postgres::start();
    let server = boot(&pg, "postgres");
    assert_eq!(server.get("/readyz").status, 200);
    pg.stop();
    support::wait_until("/readyz 503", || {
        let r = server.get("/readyz");
        (r.status, r.body.as_str()) == (503, "database unavailable\n")
    });
    assert_eq!(
        call(&server, "GET", "/v1/items/x", None, ""),
        (503, "database unavailable\n".to_owned())
    );
    pg.resume();
    support::wait_until("/readyz 200", || server.get("/readyz").status == 200);
    assert_eq!(call(&server, "GET", "/v1/items/x", None, "").0, 404);
    stop(server);
}

#[test]
fn an_unreachable_database_at_start_exits_1_after_the_wait() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let output = support::run(
        &["serve"],
        &[
            ("SERVER_ADDR", "127.0.0.1:0"),
            ("SERVER_DATABASE_URL", &url),
            ("SERVER_DATABASE_WAIT", "1s"),
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = support::text(&output.stderr);
    assert!(
        stderr
            .starts_with("server: cannot reach the database within SERVER_DATABASE_WAIT=1000ms: "),
        "{stderr}"
    );
    assert!(
        stderr.ends_with("; check SERVER_DATABASE_URL and that PostgreSQL is up\n"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1);
}

#[test]
fn sslmode_require_encrypts_and_verify_full_refuses_a_self_signed_certificate() {
    let pg = Postgres::start_with_tls();
    let url = format!("{}?sslmode=require", pg.url("postgres"));
    let server = Server::start(&[
        ("SERVER_DATABASE_URL", url.as_str()),
        ("SERVER_DRAIN_DELAY", "0s"),
    ]);
    assert_eq!(server.get("/readyz").status, 200);
    // psql connects without TLS: the one encrypted session is the server's.
    assert_eq!(
        pg.psql("postgres", "SELECT count(*) FROM pg_stat_ssl WHERE ssl"),
        "1"
    );
    stop(server);

    let url = format!("{}?sslmode=verify-full", pg.url("postgres"));
    let output = support::run(
        &["serve"],
        &[
            ("SERVER_ADDR", "127.0.0.1:0"),
            ("SERVER_DATABASE_URL", &url),
            ("SERVER_DATABASE_WAIT", "0s"),
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    // The certificate is its own issuer, which no root vouches for.
    assert_eq!(
        support::text(&output.stderr),
        "server: cannot reach the database within SERVER_DATABASE_WAIT=0ms: error performing TLS handshake: invalid peer certificate: Other(OtherError(CaUsedAsEndEntity)); check SERVER_DATABASE_URL and that PostgreSQL is up\n"
    );
}

#[test]
fn sslmode_require_against_a_server_without_tls_fails_with_one_line() {
    let pg = Postgres::start();
    let url = format!("{}?sslmode=require", pg.url("postgres"));
    let output = support::run(
        &["serve"],
        &[
            ("SERVER_ADDR", "127.0.0.1:0"),
            ("SERVER_DATABASE_URL", &url),
            ("SERVER_DATABASE_WAIT", "0s"),
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = support::text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("TLS"), "{stderr}");
}

/// SIGSTOP or SIGCONT to the postmaster and its backends: a database that
/// keeps its connections open but answers nothing, like a frozen host.
fn freeze(pg: &Postgres, signal: &str) {
    let postmaster = pg.pid().to_string();
    let children = std::process::Command::new("pgrep")
        .args(["-P", &postmaster])
        .output()
        .unwrap();
    let mut pids: Vec<String> = support::text(&children.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    pids.push(postmaster);
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .args(&pids)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_database_that_stops_answering_turns_readyz_503_and_back_when_it_answers() {
    let pg = Postgres::start();
    let server = boot(&pg, "postgres");
    assert_eq!(server.get("/readyz").status, 200);
    freeze(&pg, "STOP");
    support::wait_until("/readyz 503", || {
        let r = server.get("/readyz");
        (r.status, r.body.as_str()) == (503, "database unavailable\n")
    });
    freeze(&pg, "CONT");
    support::wait_until("/readyz 200", || server.get("/readyz").status == 200);
    let warned: Vec<String> = messages(&server)
        .into_iter()
        .filter(|m| m.starts_with("database"))
        .collect();
    assert_eq!(
        warned,
        [
            "database did not answer a ping in time",
            "database connection restored"
        ]
    );
    stop(server);
}

/// The token `server bootstrap` prints, on a database it migrates first.
fn first_token(pg: &Postgres) -> String {
    let (code, token, stderr) = bootstrap(pg);
    assert_eq!(code, Some(0), "{stderr}");
    token.trim_end().to_owned()
}

#[test]
fn after_a_reconnect_to_a_database_a_newer_version_migrated_writes_stop_with_the_reason() {
    let pg = Postgres::start();
    let token = first_token(&pg);
    let server = boot(&pg, "postgres");
    let path = "/v1/items/kept";
    assert_eq!(call(&server, "PUT", path, Some(&token), "1").0, 201);
    // A newer version migrated, and this server's session is cut: it
    // reconnects to a schema it does not know.
    pg.psql(
        "postgres",
        "INSERT INTO schema_migrations (version, checksum) VALUES ('0003_future', 'x')",
    );
    pg.psql(
        "postgres",
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
    );
    let refused = format!(
        "writes stopped: the database has migration 0003_future, which server {} (schema 0002_api_tokens) does not know; run the newer version that applied it, or restore the backup taken before the upgrade\n",
        env!("CARGO_PKG_VERSION")
    );
    support::wait_until("PUT refused after the reconnect", || {
        call(&server, "PUT", path, Some(&token), "2") == (503, refused.clone())
    });
    assert_eq!(
        call(&server, "DELETE", path, Some(&token), ""),
        (503, refused.clone())
    );
    assert_eq!(
        call(&server, "GET", path, None, ""),
        (200, "1\n".to_owned())
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT value::text FROM items WHERE key = 'kept'"
        ),
        "1"
    );
    stop(server);
}

#[test]
fn a_json_string_holding_a_nul_is_a_400_that_says_so() {
    let pg = Postgres::start();
    let token = first_token(&pg);
    let server = boot(&pg, "postgres");
    let expected = (
        400,
        "the body holds \\u0000 (NUL) in a string, which the database cannot store; remove it or encode the value, as base64 for example\n".to_owned(),
    );
    for body in [r#"{"a": "x\u0000y"}"#, r#"{"x\u0000": 1}"#, r#"["\u0000"]"#] {
        assert_eq!(
            call(&server, "PUT", "/v1/items/nul", Some(&token), body),
            expected,
            "{body}"
        );
    }
    assert_eq!(
        call(
            &server,
            "PUT",
            "/v1/items/nul",
            Some(&token),
            r#"{"a": "\u0001"}"#
        )
        .0,
        201
    );
    assert_eq!(server.get("/readyz").status, 200);
    stop(server);
}
