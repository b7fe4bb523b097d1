//! `quorum serve`: the headless face over HTTP.
//!
//! - `POST /rpc`: JSON-RPC 2.0 (batches, notifications): `llm.complete`,
//!   `llm.stream` (Server-Sent Events), `llm.compare`, `llm.models`,
//!   `llm.metrics`, `llm.health` ([`rpc`]).
//! - `POST /v1/chat/completions`, `GET /v1/models`: OpenAI-compatible
//!   ([`openai_compat`]).
//! - `GET /metrics`: Prometheus text ([`metrics`]); `GET /healthz`.
//!
//! Every call goes through the same registry, router, budgets and ledger as
//! the CLI. Loopback by default; any other address needs a bearer token.
//! SIGTERM or Ctrl-C stop accepting, let in-flight requests finish, then
//! flush the ledger.

pub mod metrics;
pub mod openai_compat;
pub use crate::shared::params;
pub mod rpc;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Args;
use futures_util::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::app::{self, GlobalFlags, Settings};
use crate::engine::ledger::BackgroundLedger;
use crate::engine::{
    Books, ChatRequest, Engine, EngineError, Refusal, RunHandle, RunOptions, StartOptions,
};
use crate::shared::exit::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};

pub use metrics::Metrics;

/// Default `--listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// Default request body limit in bytes.
pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;

const AFTER_HELP: &str = "\
Endpoints:
  POST /rpc                   JSON-RPC 2.0: llm.complete, llm.stream (SSE), llm.compare,
                              llm.models, llm.metrics, llm.health; batches and notifications
  POST /v1/chat/completions   OpenAI-compatible (stream or not); model = provider/model or alias
  GET  /v1/models             OpenAI-compatible model list
  GET  /metrics               Prometheus text
  GET  /healthz               liveness (never needs the token)

The bound address is printed on stderr: `quorum: listening on http://ADDR`.
Binding anything but loopback needs --token-env; with a token every endpoint but
/healthz wants `Authorization: Bearer TOKEN`. SIGTERM or Ctrl-C: stop accepting,
finish in-flight requests (up to --shutdown-timeout), flush the ledger, exit 0.";

/// Arguments of `quorum serve`.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Environment variable holding the bearer token clients must send
    /// (required when listening on anything but loopback).
    #[arg(long, value_name = "VAR")]
    pub token_env: Option<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_BODY)]
    pub max_body_bytes: usize,
    /// Seconds to wait for in-flight requests on shutdown.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub shutdown_timeout: f64,
}

/// Options of the HTTP face.
#[derive(Clone)]
pub struct ServeOptions {
    /// Bearer token required on every endpoint but `/healthz`.
    pub token: Option<String>,
    /// Request body limit in bytes.
    pub max_body_bytes: usize,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            token: None,
            max_body_bytes: DEFAULT_MAX_BODY,
        }
    }
}

/// What every handler shares.
pub struct AppState {
    /// The engine.
    pub engine: Engine,
    /// Configuration beyond the engine.
    pub settings: Settings,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Options.
    pub opts: ServeOptions,
    /// This server process's session: budget caps count it as one.
    pub session: String,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("AppState")
            .field("engine", &self.engine)
            .field("token_set", &self.opts.token.is_some())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Shared state from an engine and its settings.
    pub fn new(engine: Engine, settings: Settings, opts: ServeOptions) -> Arc<AppState> {
        Arc::new(AppState {
            engine,
            settings,
            metrics: Arc::new(Metrics::new()),
            opts,
            session: format!(
                "serve-{}-{}",
                std::process::id(),
                crate::engine::run::new_id(4)
            ),
        })
    }

    /// Start a run through the engine's front door. Budget caps count this server
    /// process as one session (see `--help`): a client's own session id labels its
    /// rows in the ledger but cannot walk around the cap.
    pub async fn start(
        &self,
        req: ChatRequest,
        targets: Vec<String>,
        mut opts: RunOptions,
    ) -> Result<RunHandle, StartError> {
        if opts.session_id.is_none() {
            opts.session_id = Some(self.session.clone());
        }
        let start = StartOptions {
            run: opts,
            budget_session: Some(self.session.clone()),
            ..Default::default()
        };
        match self.engine.start(req, targets, start).await {
            Ok(s) => Ok(s.handle),
            Err(r) => {
                self.metrics.refusal(match &r {
                    Refusal::Ledger(_) => "internal",
                    r => r.kind(),
                });
                Err(match r {
                    Refusal::Ledger(p) => StartError::Internal(p.to_string()),
                    r => StartError::Engine(r.into()),
                })
            }
        }
    }

    /// `ok`, or `degraded` when the ledger cannot be used or a write to it failed.
    pub fn health_word(&self) -> &'static str {
        if self.ledger_word() == "ok"
            || self.ledger_word() == "opening"
            || self.ledger_word() == "off"
        {
            "ok"
        } else {
            "degraded"
        }
    }

    /// The ledger's state: `ok`, `opening`, `off`, `unavailable`, or `failing` (writes failed).
    pub fn ledger_word(&self) -> &'static str {
        if self.engine.ledger_health().failures() > 0 {
            return "failing";
        }
        match self.engine.books() {
            Books::Off => "off",
            Books::Unusable(_) => "unavailable",
            Books::On { ledger, .. } => match ledger.ready() {
                None => "opening",
                Some(Ok(_)) => "ok",
                Some(Err(_)) => "unavailable",
            },
        }
    }
}

/// Why a run did not start.
#[derive(Debug, Clone)]
pub enum StartError {
    /// Refused before sending: unknown or disallowed model, budget, ...
    Engine(EngineError),
    /// The server cannot do its part (the ledger is unavailable).
    Internal(String),
}

impl From<EngineError> for StartError {
    fn from(e: EngineError) -> Self {
        StartError::Engine(e)
    }
}

/// Cancels a run when dropped: a client that goes away stops its upstream requests.
pub(crate) struct CancelOnDrop(pub CancellationToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

pub use crate::shared::params::{parse_trace_id, CallMeta};

impl CallMeta {
    /// From request headers: `traceparent` (or `x-quorum-trace-id`),
    /// `x-quorum-session-id`, `x-quorum-source-agent`.
    pub fn from_headers(h: &HeaderMap) -> Result<CallMeta, String> {
        let get = |k: &str| {
            h.get(k)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let trace = match get("x-quorum-trace-id").or_else(|| get("traceparent")) {
            Some(t) => Some(parse_trace_id(&t).map_err(|e| format!("trace header: {e}"))?),
            None => None,
        };
        Ok(CallMeta {
            trace_id: trace,
            session_id: get("x-quorum-session-id"),
            source_agent: get("x-quorum-source-agent"),
        })
    }
}

/// The HTTP router, for `serve` and for tests that drive it in-process.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/rpc", post(rpc::handle))
        .route(
            "/v1/chat/completions",
            post(openai_compat::chat_completions),
        )
        .route("/v1/models", get(openai_compat::models))
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        // Bodies are read with our own limit, so that the refusal has our shape.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({
            "status": state.health_word(),
            "ledger": state.ledger_word(),
            "ledger_write_failures": state.engine.ledger_health().failures(),
        })),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": {"message": "no such endpoint", "type": "invalid_request_error", "param": null, "code": "not_found"}})),
    )
        .into_response()
}

async fn metrics_handler(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.render(&state.engine);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Constant-time equality, so a wrong token's timing says nothing about the right one.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(token: &str, h: &HeaderMap) -> bool {
    let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let v = v.trim();
    let Some(given) = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
    else {
        return false;
    };
    ct_eq(given.trim().as_bytes(), token.as_bytes())
}

/// Bearer token, in-flight gauge and response counters around every request.
async fn guard(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = match req.uri().path() {
        p @ ("/rpc" | "/v1/chat/completions" | "/v1/models" | "/metrics" | "/healthz") => p,
        _ => "other",
    }
    .to_string();
    if let Some(token) = &state.opts.token {
        if route != "/healthz" && !authorized(token, req.headers()) {
            state.metrics.http(&route, 401);
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                axum::Json(json!({"error": {
                    "message": "missing or invalid bearer token (send Authorization: Bearer TOKEN)",
                    "type": "authentication_error", "param": null, "code": "unauthorized"}})),
            )
                .into_response();
        }
    }
    let in_flight = state.metrics.in_flight();
    let resp = next.run(req).await;
    state.metrics.http(&route, resp.status().as_u16());
    let is_stream = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_stream {
        return resp;
    }
    // A stream is in flight until its body is done.
    let (parts, body) = resp.into_parts();
    let body = Body::from_stream(body.into_data_stream().map(move |chunk| {
        let _ = &in_flight;
        chunk
    }));
    Response::from_parts(parts, body)
}

/// Read a body up to the limit; `Err` when it is larger.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, BodyError> {
    match axum::body::to_bytes(body, limit).await {
        Ok(b) => Ok(b),
        Err(e) => {
            let too_big = std::error::Error::source(&e)
                .is_some_and(|s| s.to_string().contains("length limit"))
                || e.to_string().contains("length limit");
            if too_big {
                Err(BodyError::TooLarge)
            } else {
                Err(BodyError::Read(e.to_string()))
            }
        }
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    TooLarge,
    Read(String),
}

/// Shutdown: SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn resolve_listen(listen: &str) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|e| format!("--listen {listen}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("--listen {listen}: resolves to no address"));
    }
    Ok(addrs)
}

/// Run `quorum serve`.
pub fn run(flags: &GlobalFlags, args: ServeArgs) -> i32 {
    let addrs = match resolve_listen(&args.listen) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("quorum: {e}");
            return EXIT_USAGE;
        }
    };
    let token = match &args.token_env {
        Some(var) => match std::env::var(var) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            _ => {
                eprintln!("quorum: --token-env {var}: the variable is not set or empty");
                return EXIT_USAGE;
            }
        },
        None => None,
    };
    let loopback = addrs.iter().all(|a| a.ip().is_loopback());
    if !loopback && token.is_none() {
        eprintln!(
            "quorum: refusing to listen on {} without a bearer token: pass --token-env VAR (and set VAR), or listen on 127.0.0.1",
            args.listen
        );
        return EXIT_USAGE;
    }
    if args.max_body_bytes == 0 {
        eprintln!("quorum: --max-body-bytes must be at least 1");
        return EXIT_USAGE;
    }
    if !(args.shutdown_timeout.is_finite() && args.shutdown_timeout >= 0.0) {
        eprintln!("quorum: --shutdown-timeout must be a number of seconds >= 0");
        return EXIT_USAGE;
    }
    let (engine, settings) = match app::load(flags) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("quorum: {e:#}");
            return EXIT_USAGE;
        }
    };
    let ledger = settings.ledger.clone();
    let opts = ServeOptions {
        token,
        max_body_bytes: args.max_body_bytes,
    };
    let state = AppState::new(engine, settings, opts);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quorum: cannot start the runtime: {e}");
            return EXIT_FAILED;
        }
    };
    let grace = Duration::from_secs_f64(args.shutdown_timeout);
    let code = rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&addrs[..]).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("quorum: cannot listen on {}: {e}", args.listen);
                return EXIT_USAGE;
            }
        };
        let local = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| args.listen.clone());
        eprintln!("quorum: listening on http://{local}");
        let metrics = state.metrics.clone();
        let app = router(state);
        let stop = CancellationToken::new();
        let stop2 = stop.clone();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown_signal().await;
            eprintln!(
                "quorum: shutting down: finishing {} in-flight request(s)",
                metrics.in_flight_now()
            );
            stop2.cancel();
        });
        let mut server = std::pin::pin!(async move { server.await });
        let res = tokio::select! {
            r = &mut server => r,
            _ = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
                eprintln!("quorum: shutdown timeout: dropping the requests still in flight");
                Ok(())
            }
        };
        match res {
            Ok(()) => EXIT_OK,
            Err(e) => {
                eprintln!("quorum: server error: {e}");
                EXIT_FAILED
            }
        }
    });
    // Let the runtime finish whatever writes are left, then flush the ledger.
    rt.shutdown_timeout(Duration::from_secs(5));
    flush_ledger(ledger.as_ref());
    eprintln!("quorum: stopped");
    code
}

fn flush_ledger(ledger: Option<&BackgroundLedger>) {
    let Some(l) = ledger else { return };
    match l.ready() {
        Some(Ok(l)) => {
            if let Err(e) = l.checkpoint() {
                eprintln!("quorum: ledger flush failed: {e}");
            }
        }
        Some(Err(e)) => eprintln!("quorum: ledger unavailable: {e}"),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids() {
        let id = "4BF92F3577B34DA6A3CE929D0E0E4736";
        assert_eq!(parse_trace_id(id).unwrap(), id.to_ascii_lowercase());
        assert_eq!(
            parse_trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(parse_trace_id("xyz").is_err());
        assert!(parse_trace_id(&"0".repeat(32)).is_err());
    }

    #[test]
    fn bearer_check() {
        let mut h = HeaderMap::new();
        assert!(!authorized("s3cret", &h));
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(authorized("s3cret", &h));
        h.insert(header::AUTHORIZATION, "Bearer s3cre".parse().unwrap());
        assert!(!authorized("s3cret", &h));
        h.insert(header::AUTHORIZATION, "Basic s3cret".parse().unwrap());
        assert!(!authorized("s3cret", &h));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let o = ServeOptions {
            token: Some("tok-123".into()),
            ..Default::default()
        };
        let s = format!("{o:?}");
        assert!(!s.contains("tok-123"), "{s}");
        assert!(s.contains("***"), "{s}");
    }
}
