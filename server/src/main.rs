//! A small HTTP server made for a distroless image.
//!
//! Arguments are parsed by hand: the binary has five subcommands (serve,
//! healthcheck, migrate, bootstrap, version) and a size budget, and an
//! argument-parsing crate would be its largest part.

mod admin;
mod api;
mod build_info;
mod config;
mod db;
mod healthcheck;
mod logging;
mod metrics;
mod migrate;
mod serve;
mod tls;

use std::process::ExitCode;
use std::time::Duration;

use build_info::BuildInfo;
use config::Config;

const USAGE: &str = "\
usage: server [COMMAND]

commands:
  serve                         serve HTTP on SERVER_ADDR (the default command)
  healthcheck [--url URL] [--timeout DURATION]
                                probe /healthz of the local server; exit 0 if healthy, 1 if not
  migrate status|up [--json]    show or apply the database migrations (SERVER_DATABASE_URL)
  bootstrap                     create the first API token and print it once
  version [--json]              print the build information

Configuration is read from SERVER_* environment variables; see docs/configuration.md.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] | ["serve"] => serve(),
        ["healthcheck", rest @ ..] => healthcheck(rest),
        ["migrate", rest @ ..] => admin::migrate(rest),
        ["bootstrap"] => admin::bootstrap(),
        ["version"] | ["--version"] | ["-V"] => {
            println!("{}", BuildInfo::current().line());
            ExitCode::SUCCESS
        }
        ["version", "--json"] => {
            println!("{}", BuildInfo::current().json());
            ExitCode::SUCCESS
        }
        ["help"] | ["--help"] | ["-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => usage_error(&format!("unknown arguments {:?}", args.join(" "))),
    }
}

fn serve() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => return config_error(&err.0),
    };
    logging::init(config.log_level, config.log_format);
    let names: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .collect();
    for (name, closest) in config::unknown_variables(names.iter().map(String::as_str)) {
        logging::log(
            logging::Level::Warn,
            &format!("ignoring unknown variable {name}: did you mean {closest}?"),
            &[("variable", name.into()), ("closest", closest.into())],
        );
    }
    // Bind before starting the runtime so that a taken port is a
    // configuration error with its own exit code, not a runtime failure.
    let listener = match std::net::TcpListener::bind(config.addr) {
        Ok(listener) => listener,
        Err(err) => {
            return config_error(&format!(
            "cannot listen on SERVER_ADDR={}: {err}; set SERVER_ADDR to a free address and port",
            config.addr
        ))
        }
    };
    match serve::run(config, listener) {
        Ok(()) => ExitCode::SUCCESS,
        Err(serve::Failure(code, line)) => {
            eprintln!("server: {line}");
            ExitCode::from(code)
        }
    }
}

fn healthcheck(args: &[&str]) -> ExitCode {
    let mut url = None;
    let mut timeout = healthcheck::DEFAULT_TIMEOUT;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match (*arg, args.next()) {
            ("--url", Some(value)) => url = Some(*value),
            ("--timeout", Some(value)) => match config::parse_duration(value) {
                Some(value) if !value.is_zero() => timeout = value,
                _ => {
                    eprintln!("unhealthy: invalid --timeout {value:?}: expected a duration such as 2s or 500ms");
                    return ExitCode::from(1);
                }
            },
            _ => {
                eprintln!("unhealthy: unknown healthcheck argument {arg:?}; see `server --help`");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::from(healthcheck::run(url, timeout.min(Duration::from_secs(60))))
}

pub fn config_error(message: &str) -> ExitCode {
    eprintln!("server: {message}");
    ExitCode::from(2)
}

pub fn usage_error(message: &str) -> ExitCode {
    eprintln!("server: {message}; run `server --help` for usage");
    ExitCode::from(2)
}
