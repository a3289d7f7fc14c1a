//! The HTTP server: routing, timeouts, and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api;
use crate::build_info::BuildInfo;
use crate::config::Config;
use crate::db::{self, Db};
use crate::logging::{self, Level};
use crate::metrics::Metrics;
use crate::migrate;

/// Only the items API takes a body; anything larger is refused rather than
/// buffered.
const MAX_BODY_BYTES: usize = 64 * 1024;

struct State {
    draining: AtomicBool,
    /// None when SERVER_DATABASE_URL is unset: no /v1 API, no database in
    /// readiness.
    db: Option<Arc<Db>>,
    metrics: Metrics,
    version_json: String,
    body_timeout: Duration,
}

/// Why the server stopped: the exit code and one line.
pub struct Failure(pub u8, pub String);

impl From<std::io::Error> for Failure {
    fn from(err: std::io::Error) -> Failure {
        Failure(1, err.to_string())
    }
}

pub fn run(config: Config, listener: StdTcpListener) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(config, listener))
}

/// Connects with bounded retry and applies the pending migrations, before
/// the server takes its first request.
async fn open_database(config: &Config) -> Result<Option<Arc<Db>>, Failure> {
    let Some(pg) = &config.database else {
        return Ok(None);
    };
    let (mut client, task) = db::connect(pg, config.database_wait)
        .await
        .map_err(|line| Failure(1, line))?;
    match migrate::up(&mut client).await {
        Ok(applied) if applied.is_empty() => {
            logging::log(Level::Info, "no pending migrations", &[]);
        }
        Ok(applied) => logging::log(
            Level::Info,
            &format!("migrations applied: {}", applied.join(", ")),
            &[("applied", json!(applied))],
        ),
        Err(migrate::Error::Refused(line)) => {
            return Err(Failure(migrate::REFUSED_EXIT_CODE, line))
        }
        Err(err) => return Err(Failure(1, err.to_string())),
    }
    Ok(Some(Db::supervise(pg.clone(), client, task)))
}

async fn serve(config: Config, listener: StdTcpListener) -> Result<(), Failure> {
    let db = open_database(&config).await?;
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let local = listener.local_addr()?;
    let state = Arc::new(State {
        draining: AtomicBool::new(false),
        db,
        metrics: Metrics::default(),
        version_json: BuildInfo::current().json(),
        body_timeout: config.body_timeout,
    });
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .keep_alive(true);
    let acceptor = Acceptor {
        http,
        graceful: GracefulShutdown::new(),
        state: state.clone(),
        limit: Arc::new(Semaphore::new(config.max_connections)),
    };

    let info = BuildInfo::current();
    logging::log(
        Level::Info,
        "listening",
        &[
            ("addr", json!(local.to_string())),
            ("version", json!(info.version)),
            ("git_sha", json!(info.git_sha)),
            ("max_connections", json!(config.max_connections)),
        ],
    );

    let signal = acceptor.accept_until(&listener, shutdown_signal()).await;

    // Keep accepting while load balancers notice the 503 on /readyz and take
    // this instance out: closing the listener at once would refuse the
    // connections they still send. Every response from now on says
    // `Connection: close`, so keep-alive clients reconnect elsewhere.
    state.draining.store(true, Ordering::SeqCst);
    logging::log(
        Level::Info,
        "shutting down",
        &[
            ("signal", json!(signal)),
            (
                "drain_delay_ms",
                json!(config.drain_delay.as_millis() as u64),
            ),
            (
                "timeout_ms",
                json!(config.shutdown_timeout.as_millis() as u64),
            ),
        ],
    );
    acceptor
        .accept_until(&listener, tokio::time::sleep(config.drain_delay))
        .await;
    let backlog = acceptor.accept_backlog(listener)?;
    logging::log(
        Level::Info,
        "stopped accepting",
        &[("accepted_from_backlog", json!(backlog))],
    );
    tokio::select! {
        _ = acceptor.graceful.shutdown() => logging::log(Level::Info, "stopped", &[]),
        _ = tokio::time::sleep(config.shutdown_timeout) => {
            logging::log(Level::Warn, "shutdown timeout reached, closing remaining connections", &[]);
        }
    }
    Ok(())
}

struct Acceptor {
    http: http1::Builder,
    graceful: GracefulShutdown,
    state: Arc<State>,
    /// One permit per open connection. Waiting for a permit before
    /// `accept` leaves the excess in the kernel's backlog, where it waits
    /// for a slot instead of costing memory and a file descriptor here.
    limit: Arc<Semaphore>,
}

impl Acceptor {
    /// Accepts and serves connections until `until` completes.
    async fn accept_until<F: Future>(&self, listener: &TcpListener, until: F) -> F::Output {
        tokio::pin!(until);
        loop {
            let permit = tokio::select! {
                biased;
                out = &mut until => return out,
                permit = self.limit.clone().acquire_owned() => permit,
            };
            // The semaphore is never closed; this only keeps the types total.
            let Ok(permit) = permit else {
                return until.await;
            };
            tokio::select! {
                biased;
                out = &mut until => return out,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => self.serve_connection(stream, peer, permit),
                    Err(err) => {
                        // Usually EMFILE: back off instead of spinning.
                        logging::log(Level::Warn, "accept failed", &[("error", json!(err.to_string()))]);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    /// Takes the connections that completed their handshake but were not
    /// accepted yet, then closes the listener. Closing it with a backlog
    /// would reset connections whose clients already sent a request.
    fn accept_backlog(&self, listener: TcpListener) -> std::io::Result<usize> {
        let listener = listener.into_std()?;
        listener.set_nonblocking(true)?;
        let mut count = 0;
        while let Ok(permit) = self.limit.clone().try_acquire_owned() {
            let Ok((stream, peer)) = listener.accept() else {
                break;
            };
            stream.set_nonblocking(true)?;
            self.serve_connection(TcpStream::from_std(stream)?, peer, permit);
            count += 1;
        }
        Ok(count)
    }

    fn serve_connection(&self, stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let state = self.state.clone();
        let service = service_fn(move |req| handle(state.clone(), req, peer));
        let connection = self
            .graceful
            .watch(self.http.serve_connection(TokioIo::new(stream), service));
        let state = self.state.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                // hyper answers an oversized head itself, before any handler
                // runs: count it here, or /metrics would never show it.
                if err.is_parse_too_large() {
                    state.metrics.request_finished("other", "other", 431);
                }
                logging::log(
                    Level::Debug,
                    "connection error",
                    &[
                        ("peer", json!(peer.to_string())),
                        ("error", json!(err.to_string())),
                    ],
                );
            }
            drop(permit);
        });
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the server can still serve; it just cannot
        // drain, so wait forever rather than exit.
        logging::log(Level::Error, "cannot install signal handlers", &[]);
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    let _in_flight = state.metrics.request_started();
    let method = method_label(req.method());
    let path = req.uri().path().to_owned();
    let route = route_label(&path);
    let (parts, body) = req.into_parts();

    let response = match read_body(body, state.body_timeout).await {
        Err(status) => text(status, status.canonical_reason().unwrap_or("error")),
        Ok(body) => match (&state.db, path.strip_prefix(api::PREFIX)) {
            (Some(db), Some(key)) => {
                api::handle(db, &parts.method, key, &parts.headers, body).await
            }
            _ => route_request(&state, &parts.method, route),
        },
    };

    let mut response = response;
    if state.draining.load(Ordering::SeqCst) {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    let status = response.status().as_u16();
    state.metrics.request_finished(route, method, status);
    // Probes and scrapes come every few seconds from machines; at info they
    // would drown the requests of people.
    let level = match route {
        "/healthz" | "/readyz" | "/metrics" => Level::Debug,
        _ => Level::Info,
    };
    logging::log(
        level,
        "request",
        &[
            ("method", json!(parts.method.as_str())),
            ("path", json!(path)),
            ("status", json!(status)),
            (
                "duration_ms",
                json!(started.elapsed().as_secs_f64() * 1000.0),
            ),
            ("peer", json!(peer.to_string())),
        ],
    );
    Ok(response)
}

/// Reads the body to its end, so that a slow client holds the request open
/// no longer than the body timeout, and keep-alive stays usable.
async fn read_body(body: Incoming, timeout: Duration) -> Result<Bytes, StatusCode> {
    match tokio::time::timeout(timeout, Limited::new(body, MAX_BODY_BYTES).collect()).await {
        Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        }
        Ok(Err(_)) => Err(StatusCode::BAD_REQUEST),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

fn route_request(state: &State, method: &Method, route: &'static str) -> Response<Full<Bytes>> {
    // Without a database there is no API: its paths are as unknown as any.
    if route == "other" || route == "/v1/items" {
        return text(StatusCode::NOT_FOUND, "not found");
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match route {
        "/healthz" => text(StatusCode::OK, "ok"),
        "/readyz" if state.draining.load(Ordering::SeqCst) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining")
        }
        "/readyz" if state.db.as_ref().is_some_and(|db| db.client().is_none()) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
        }
        "/readyz" => text(StatusCode::OK, "ready"),
        "/version" => with_type(
            StatusCode::OK,
            format!("{}\n", state.version_json),
            "application/json",
        ),
        "/metrics" => with_type(
            StatusCode::OK,
            state.metrics.render(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

fn route_label(path: &str) -> &'static str {
    match path {
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/version" => "/version",
        "/metrics" => "/metrics",
        _ if path.starts_with(api::PREFIX) => "/v1/items",
        _ => "other",
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

pub fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    with_type(status, format!("{body}\n"), "text/plain; charset=utf-8")
}

pub fn with_type(
    status: StatusCode,
    body: String,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
