//! `quorum serve`: the headless face over HTTP.
//!
//! - `POST /rpc`: JSON-RPC 2.0 (batches, notifications): `llm.complete`,
//!   `llm.stream` (Server-Sent Events), `llm.compare`, `llm.models`,
//!   `llm.metrics`, `llm.health` ([`rpc`]).
//! - `POST /v1/chat/completions`, `GET /v1/models`: OpenAI-compatible
//!   ([`openai_compat`]).
//! - `GET /metrics`: Prometheus / OpenMetrics text ([`metrics`]); `GET /healthz`.
//!
//! Every call goes through the same registry, router, budgets and ledger as
//! the CLI. Loopback by default; any other address needs a bearer token.
//! SIGTERM or Ctrl-C stop accepting, let in-flight requests finish, then
//! flush the ledger.

pub mod listener;
pub mod metrics;
pub mod openai_compat;
pub mod pace;
pub use crate::shared::params;
pub mod rpc;
pub mod telemetry;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Args;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::app::{self, GlobalFlags, Settings};
use crate::engine::ledger::BackgroundLedger;
use crate::engine::{
    Books, ChatRequest, Completion, Engine, EngineError, FinishReason, Refusal, RunHandle,
    RunOptions, StartOptions,
};
use crate::shared::exit::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};

pub use listener::Limits;
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
  GET  /v1/models/{id}        one model (id = provider/model)
  GET  /metrics               Prometheus metrics (OpenMetrics text)
  GET  /healthz               liveness (never needs the token)

The bound address is printed on stderr: `quorum: listening on http://ADDR`.
Binding anything but loopback needs --token-env; with a token every endpoint but
/healthz wants `Authorization: Bearer TOKEN`. SIGTERM or Ctrl-C: stop accepting,
finish in-flight requests (up to --shutdown-timeout), flush the ledger, exit 0.

Budgets: the server process is one budget session, so [budget] session_usd caps all
it serves whatever session ids clients send; daily_usd is shared with every process
using the same ledger. Each request reserves its cost bound before it is sent.";

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
    /// Open connections at once; the next one is answered 503 and closed.
    #[arg(long, value_name = "N", default_value_t = listener::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers (also how long a
    /// keep-alive connection may sit idle between requests).
    #[arg(long, value_name = "SECS", default_value_t = listener::DEFAULT_HEADER_TIMEOUT)]
    pub header_timeout: f64,
    /// Seconds a client has to send a whole request body (408 after).
    #[arg(long, value_name = "SECS", default_value_t = listener::DEFAULT_BODY_TIMEOUT)]
    pub body_timeout: f64,
    /// Seconds a response may wait on a client that reads nothing before the
    /// connection is closed.
    #[arg(long, value_name = "SECS", default_value_t = listener::DEFAULT_IDLE_TIMEOUT)]
    pub idle_timeout: f64,
    /// Requests in one JSON-RPC batch (413 and -32600 beyond).
    #[arg(long, value_name = "N", default_value_t = listener::DEFAULT_MAX_BATCH)]
    pub max_batch: usize,
    /// Upstream calls one HTTP request may start: models × repeat, summed
    /// over a batch (413 and -32600 beyond).
    #[arg(long, value_name = "N", default_value_t = listener::DEFAULT_MAX_FANOUT)]
    pub max_fanout: usize,
    /// Requests in flight from one client address (429 and -32005 beyond).
    #[arg(long, value_name = "N", default_value_t = listener::DEFAULT_MAX_PER_CLIENT)]
    pub max_per_client: usize,
    /// While the server is behind (accepted connections wait for it), streams
    /// already under way hold their next frame up to this many milliseconds, so
    /// that requests still starting get their first token sooner (0: never hold).
    #[arg(long, value_name = "MS", default_value_t = pace::DEFAULT_HOLD_MS)]
    pub hold_under_load: f64,
}

/// Options of the HTTP face.
#[derive(Clone)]
pub struct ServeOptions {
    /// Bearer token required on every endpoint but `/healthz`.
    pub token: Option<String>,
    /// Request body limit in bytes.
    pub max_body_bytes: usize,
    /// Connection, time, batch and fan-out limits.
    pub limits: Limits,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            token: None,
            max_body_bytes: DEFAULT_MAX_BODY,
            limits: Limits::default(),
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
    /// Runs in flight, cancelled together when the shutdown grace runs out.
    pub(crate) runs: Arc<Runs>,
    /// Requests in flight per client address.
    clients: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    /// Whether the server is behind (its accept backlog, requests starting),
    /// and the streams holding a frame meanwhile.
    pub pace: Arc<pace::Pace>,
}

/// The runs in flight, by a serial number.
#[derive(Debug, Default)]
pub(crate) struct Runs {
    next: AtomicU64,
    live: std::sync::Mutex<HashMap<u64, CancellationToken>>,
}

impl Runs {
    /// Cancel every run in flight; how many there were.
    pub(crate) fn cancel_all(&self) -> usize {
        let live = match self.live.lock() {
            Ok(l) => l.values().cloned().collect::<Vec<_>>(),
            Err(_) => return 0,
        };
        for t in &live {
            t.cancel();
        }
        live.len()
    }
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
            pace: pace::Pace::new(opts.limits.hold_under_load),
            opts,
            runs: Arc::default(),
            clients: Arc::default(),
            session: format!(
                "serve-{}-{}",
                crate::shared::pid(),
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
        opts: RunOptions,
    ) -> Result<RunHandle, StartError> {
        self.start_with(req, targets, opts, false).await
    }

    /// [`AppState::start`], with the run driven by the caller's task when
    /// `inline` (see [`StartOptions::inline`]): read its events with
    /// [`RunHandle::recv`] or [`RunHandle::poll_event`].
    pub async fn start_with(
        &self,
        req: ChatRequest,
        targets: Vec<String>,
        mut opts: RunOptions,
        inline: bool,
    ) -> Result<RunHandle, StartError> {
        self.continue_trace(&mut opts);
        let start = StartOptions {
            run: opts,
            budget_session: Some(self.session.clone()),
            inline,
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

    /// Fill in what every run of this request shares: the server's session, and
    /// the trace context upstream requests carry.
    pub(crate) fn continue_trace(&self, opts: &mut RunOptions) {
        if opts.session_id.is_none() {
            opts.session_id = Some(self.session.clone());
        }
        let Some(parent) = ACCESS.try_with(|a| a.parent.clone()).ok().flatten() else {
            return;
        };
        // The upstream `traceparent` continues the caller's trace. While spans are
        // exported its parent is this request's call span (a child of the server
        // span); otherwise quorum is transparent and passes the caller's span on.
        // Either way it keeps the caller's sampling decision (the exporter's
        // sampler follows the parent) and its `tracestate`.
        if opts.upstream_parent.is_none() && !telemetry::enabled() {
            opts.upstream_parent = Some(parent.span_id().to_string());
        }
        opts.upstream_sampled = parent.is_sampled();
        let state = parent.trace_state().header();
        opts.upstream_tracestate = (!state.is_empty()).then_some(state);
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

    /// The ledger's state: `ok`, `opening`, `off`, `unavailable`, `failing` (writes
    /// failed), or `spooling` (a shared database is away; rows wait in the local spool).
    pub fn ledger_word(&self) -> &'static str {
        if self.engine.ledger_health().failures() > 0 {
            return "failing";
        }
        if self.engine.ledger_backlog() > 0 {
            return "spooling";
        }
        // A shared database that is away: rows spool without a budget; with one,
        // requests are refused until it returns.
        if self.engine.ledger_away().is_some() {
            return if self.engine.budget().is_set() {
                "unavailable"
            } else {
                "spooling"
            };
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

/// Cancels a run when dropped: a client that goes away stops its upstream
/// requests. While alive, the run is one the shutdown can cancel. Counts
/// every target of the run in the metrics exactly once: as it finished, or
/// as cancelled when the guard drops first.
pub(crate) struct CancelOnDrop {
    token: CancellationToken,
    runs: Arc<Runs>,
    serial: u64,
    engine: Engine,
    metrics: Arc<Metrics>,
    endpoint: &'static str,
    agent: Option<String>,
    targets: Vec<String>,
    done: Vec<bool>,
    access: Option<Arc<Access>>,
}

impl CancelOnDrop {
    pub(crate) fn new(
        state: &AppState,
        handle: &RunHandle,
        endpoint: &'static str,
        agent: Option<String>,
    ) -> Self {
        let token = handle.cancel_token();
        let runs = state.runs.clone();
        let serial = runs.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = runs.live.lock() {
            l.insert(serial, token.clone());
        }
        let access = ACCESS.try_with(Arc::clone).ok();
        if let Some(a) = &access {
            a.run(&handle.trace_id);
        }
        CancelOnDrop {
            access,
            token,
            runs,
            serial,
            engine: state.engine.clone(),
            metrics: state.metrics.clone(),
            endpoint,
            agent,
            targets: handle.targets.clone(),
            done: vec![false; handle.targets.len()],
        }
    }

    /// Count target `i`'s final completion.
    pub(crate) fn record(&mut self, i: usize, c: &Completion) {
        if let Some(d) = self.done.get_mut(i) {
            *d = true;
        }
        if let Some(a) = &self.access {
            a.completion(c);
        }
        record(
            &self.engine,
            &self.metrics,
            self.endpoint,
            c,
            self.agent.as_deref(),
        );
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.token.cancel();
        if let Ok(mut l) = self.runs.live.lock() {
            l.remove(&self.serial);
        }
        for (t, done) in self.targets.iter().zip(&self.done) {
            if *done {
                continue;
            }
            let (provider, model) = match self.engine.registry().resolve(t) {
                Ok(r) => (r.spec.name.clone(), r.model.clone()),
                Err(_) => (String::new(), t.clone()),
            };
            let c = Completion {
                provider,
                model,
                finish_reason: FinishReason::Cancelled,
                error: Some(EngineError::Cancelled),
                ..Default::default()
            };
            if let Some(a) = &self.access {
                a.completion(&c);
            }
            record(
                &self.engine,
                &self.metrics,
                self.endpoint,
                &c,
                self.agent.as_deref(),
            );
        }
    }
}

/// Whether the registry knows `provider/model` (so it may be a metrics label).
fn known_model(engine: &Engine, provider: &str, model: &str) -> bool {
    let reg = engine.registry();
    reg.models(provider).iter().any(|m| m == model) || reg.model_meta(provider, model).is_some()
}

fn record(engine: &Engine, metrics: &Metrics, endpoint: &str, c: &Completion, agent: Option<&str>) {
    let known = known_model(engine, &c.provider, &c.model);
    metrics.record(endpoint, c, known, agent);
}

impl AppState {
    /// Count a completion that no run guard counts (a judge's verdict): in the
    /// metrics, and in this request's access line and trace.
    pub(crate) fn record(&self, endpoint: &str, c: &Completion, agent: Option<&str>) {
        if let Ok(a) = ACCESS.try_with(Arc::clone) {
            a.completion(c);
        }
        record(&self.engine, &self.metrics, endpoint, c, agent);
    }
}

tokio::task_local! {
    /// The access record of the HTTP request being served.
    static ACCESS: Arc<Access>;
}

/// What one HTTP request did, written as one `quorum::access` line (info)
/// when the request is over (for a stream: when its body ends). Never holds
/// a header, a body or a prompt.
pub(crate) struct Access {
    started: std::time::Instant,
    started_at: std::time::SystemTime,
    method: String,
    route: String,
    status: std::sync::atomic::AtomicU16,
    runs: std::sync::Mutex<AccessRuns>,
    /// The caller's span (`traceparent`).
    parent: Option<opentelemetry::trace::SpanContext>,
}

#[derive(Default)]
struct AccessRuns {
    trace_id: Option<String>,
    models: Vec<String>,
    tally: crate::engine::Tally,
    ttft_ms: Option<f64>,
    /// Upstream calls for the trace (only while traces are exported; capped).
    calls: Vec<telemetry::Call>,
}

/// Most upstream calls one request's trace shows.
const MAX_TRACED_CALLS: usize = 256;

impl Access {
    fn new(method: &str, route: &str, headers: &HeaderMap) -> Arc<Access> {
        Arc::new(Access {
            started: std::time::Instant::now(),
            started_at: std::time::SystemTime::now(),
            parent: headers
                .contains_key("traceparent")
                .then(|| telemetry::parent_from(headers))
                .flatten(),
            method: method.to_string(),
            route: route.to_string(),
            status: std::sync::atomic::AtomicU16::new(0),
            runs: std::sync::Mutex::default(),
        })
    }

    fn run(&self, trace_id: &str) {
        if let Ok(mut r) = self.runs.lock() {
            r.trace_id.get_or_insert_with(|| trace_id.to_string());
        }
    }

    fn completion(&self, c: &Completion) {
        let Ok(mut r) = self.runs.lock() else { return };
        let id = format!("{}/{}", c.provider, c.model);
        if r.models.len() < 8 && !r.models.contains(&id) {
            r.models.push(id);
        }
        r.tally.add(c);
        if r.ttft_ms.is_none() {
            r.ttft_ms = c.ttft_ms;
        }
        if telemetry::enabled() && r.calls.len() < MAX_TRACED_CALLS {
            r.calls.push(telemetry::Call::of(c));
        }
    }

    /// The access line's fields: `trace_id="…" method=… route=… status=…
    /// model=… upstream_requests=… upstream_errors=… latency_ms=… ttft_ms=…
    /// input_tokens=… output_tokens=… cost_usd=…`.
    fn line(&self, r: &AccessRuns) -> String {
        use std::fmt::Write;
        let mut l = String::with_capacity(320);
        let _ = write!(
            l,
            "trace_id={:?} method={} route={} status={} model=",
            r.trace_id.as_deref().unwrap_or("-"),
            self.method,
            self.route,
            self.status.load(Ordering::Relaxed)
        );
        if r.models.is_empty() {
            l.push('-');
        }
        for (i, m) in r.models.iter().enumerate() {
            if i > 0 {
                l.push(',');
            }
            l.push_str(m);
        }
        let _ = write!(
            l,
            " upstream_requests={} upstream_errors={} latency_ms={:.1} ttft_ms=",
            r.tally.requests,
            r.tally.failed(),
            self.started.elapsed().as_secs_f64() * 1000.0
        );
        match r.ttft_ms {
            Some(t) => {
                let _ = write!(l, "{t:.1}");
            }
            None => l.push('-'),
        }
        let _ = write!(
            l,
            " input_tokens={} output_tokens={} cost_usd=",
            r.tally.usage.input_tokens, r.tally.usage.output_tokens
        );
        match r.tally.cost() {
            Some(x) => {
                let _ = write!(l, "{x:.6}");
            }
            None => l.push_str("unknown"),
        }
        l
    }
}

impl Drop for Access {
    fn drop(&mut self) {
        let r = self.runs.get_mut().map(std::mem::take).unwrap_or_default();
        crate::logging::access_line(|| self.line(&r));
        if telemetry::enabled() {
            telemetry::export(&telemetry::Request {
                method: &self.method,
                route: &self.route,
                status: self.status.load(Ordering::Relaxed),
                started: self.started_at,
                elapsed: self.started.elapsed(),
                trace_id: r.trace_id.as_deref(),
                parent: self.parent.as_ref(),
                calls: &r.calls,
            });
        }
    }
}

/// One request in flight from a client address; counts down when dropped.
struct ClientSlot {
    clients: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Ok(mut c) = self.clients.lock() {
            if let Some(n) = c.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    c.remove(&self.ip);
                }
            }
        }
    }
}

impl AppState {
    /// Take a slot for a request from `ip`, or `None` when it has too many in flight.
    fn client_slot(&self, ip: IpAddr) -> Option<ClientSlot> {
        let mut c = self.clients.lock().ok()?;
        let n = c.entry(ip).or_insert(0);
        if *n >= self.opts.limits.max_per_client {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            clients: self.clients.clone(),
            ip,
        })
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
        .route("/v1/models/{*id}", get(openai_compat::model))
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
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
            "ledger_backlog": state.engine.ledger_backlog(),
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
    let text = state.metrics.render(&state.engine, &state.pace);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
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
    // The scheme is case-insensitive (RFC 9110, section 11.1).
    let Some((scheme, given)) = v.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && ct_eq(given.trim().as_bytes(), token.as_bytes())
}

/// Bearer token, in-flight gauge and response counters around every request.
async fn guard(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = match req.uri().path() {
        p @ ("/rpc" | "/v1/chat/completions" | "/v1/models" | "/metrics" | "/healthz") => p,
        p if p.starts_with("/v1/models/") => "/v1/models/{id}",
        _ => "other",
    }
    .to_string();
    let access = Access::new(req.method().as_str(), &route, req.headers());
    if let Some(token) = &state.opts.token {
        if route != "/healthz" && !authorized(token, req.headers()) {
            state.metrics.http(&route, 401);
            access.status.store(401, Ordering::Relaxed);
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
    let slot = match req.extensions().get::<ConnectInfo<SocketAddr>>() {
        None => None,
        Some(ConnectInfo(peer)) => match state.client_slot(peer.ip()) {
            Some(s) => Some(s),
            None => {
                state.metrics.http(&route, 429);
                access.status.store(429, Ordering::Relaxed);
                return too_many_from_client(&route, state.opts.limits.max_per_client);
            }
        },
    };
    let in_flight = state.metrics.in_flight();
    let starting = state.pace.starting();
    let resp = ACCESS.scope(access.clone(), next.run(req)).await;
    drop(starting);
    access
        .status
        .store(resp.status().as_u16(), Ordering::Relaxed);
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
    let body = Body::new(Guarded {
        body,
        _guards: (in_flight, slot, access),
    });
    Response::from_parts(parts, body)
}

/// A body that keeps its guards until it is done or dropped.
struct Guarded<G> {
    body: Body,
    _guards: G,
}

impl<G: Unpin> http_body::Body for Guarded<G> {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn too_many_from_client(route: &str, limit: usize) -> Response {
    let message = format!(
        "too many requests in flight from this client (the server's --max-per-client is {limit})"
    );
    let body = if route == "/rpc" {
        json!({"jsonrpc": "2.0", "id": null, "error": {"code": rpc::TOO_MANY_REQUESTS, "message": message,
               "data": {"limit": limit}}})
    } else {
        json!({"error": {"message": message, "type": "rate_limit_error", "param": null,
               "code": "too_many_requests"}})
    };
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, "1")],
        axum::Json(body),
    )
        .into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(json!({"error": {
            "message": format!("method {} is not allowed on {}", req.method(), req.uri().path()),
            "type": "invalid_request_error", "param": null, "code": "method_not_allowed"}})),
    )
        .into_response()
}

/// Read a body up to the size limit within the body timeout.
pub(crate) async fn read_body(state: &AppState, body: Body) -> Result<bytes::Bytes, BodyError> {
    let limit = state.opts.max_body_bytes;
    let read = axum::body::to_bytes(body, limit);
    let Ok(r) = tokio::time::timeout(state.opts.limits.body_timeout, read).await else {
        return Err(BodyError::Timeout);
    };
    match r {
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
    Timeout,
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
    crate::logging::init_stderr(Some("warn,quorum::access=info"));
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
    if let (false, Some(t)) = (loopback, &token) {
        if t.chars().count() < MIN_TOKEN_CHARS {
            eprintln!(
                "quorum: refusing to listen on {} with a bearer token shorter than {MIN_TOKEN_CHARS} characters: use a long random token (e.g. `openssl rand -hex 24`)",
                args.listen
            );
            return EXIT_USAGE;
        }
    }
    let limits = match limits_from(&args) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("quorum: {e}");
            return EXIT_USAGE;
        }
    };
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
    // Before the runtime: the exporter's HTTP client has a runtime of its own.
    let traces = match telemetry::Telemetry::from_env() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("quorum: {e}");
            return EXIT_USAGE;
        }
    };
    let ledger = settings.ledger.clone();
    let opts = ServeOptions {
        token,
        max_body_bytes: args.max_body_bytes,
        limits: limits.clone(),
    };
    let state = AppState::new(engine, settings, opts);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
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
        let listener = match listener::bind(&addrs, limits.max_connections) {
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
        let runs = state.runs.clone();
        let pace = state.pace.clone();
        let app = router(state);
        let stop = CancellationToken::new();
        let server = listener::serve(listener, app, limits, pace, stop.clone());
        let mut server = std::pin::pin!(server);
        tokio::select! {
            _ = &mut server => {}
            _ = shutdown_signal() => {
                eprintln!(
                    "quorum: shutting down: finishing {} in-flight request(s)",
                    metrics.in_flight_now()
                );
                stop.cancel();
                if tokio::time::timeout(grace, &mut server).await.is_err() {
                    // Cancelled runs still write their ledger rows and end their
                    // streams with an error event; give them a moment to.
                    let n = runs.cancel_all();
                    eprintln!("quorum: shutdown timeout: cancelled {n} run(s) still in flight");
                    let _ = tokio::time::timeout(CANCEL_GRACE, &mut server).await;
                }
            }
        }
        EXIT_OK
    });
    // Let the runtime finish whatever writes are left, then flush the ledger.
    rt.shutdown_timeout(Duration::from_secs(5));
    flush_ledger(ledger.as_ref());
    if let Some(t) = traces {
        t.shutdown(Duration::from_secs(5));
    }
    eprintln!("quorum: stopped");
    code
}

// A current-thread runtime when the process has one core was tried and
// measured slower (1,000 concurrent streams on one core: 1.75–1.92 s of CPU
// against 1.31–1.39 s for this scheduler), so it is the multi-thread one always.

/// Threads for blocking work (ledger and cache writes, token estimates). The
/// ledger's writes queue on one SQLite connection anyway: tokio's default of
/// 512 let a burst of 1,000 streams start ~500 threads that only waited on its
/// lock, and the thread churn cost more CPU than the requests themselves.
const MAX_BLOCKING_THREADS: usize = 16;

/// How long cancelled runs get to record themselves after the shutdown timeout.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Shortest bearer token accepted off loopback.
pub const MIN_TOKEN_CHARS: usize = 16;

fn secs(flag: &str, v: f64) -> Result<Duration, String> {
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!("{flag} must be a number of seconds > 0"))
    }
}

fn at_least_one(flag: &str, v: usize) -> Result<usize, String> {
    if v == 0 {
        Err(format!("{flag} must be at least 1"))
    } else {
        Ok(v)
    }
}

fn hold_ms(v: f64) -> Result<Duration, String> {
    if v.is_finite() && (0.0..=1000.0).contains(&v) {
        Ok(Duration::from_secs_f64(v / 1000.0))
    } else {
        Err("--hold-under-load must be a number of milliseconds from 0 to 1000".into())
    }
}

fn limits_from(a: &ServeArgs) -> Result<Limits, String> {
    Ok(Limits {
        max_connections: at_least_one("--max-connections", a.max_connections)?,
        header_timeout: secs("--header-timeout", a.header_timeout)?,
        body_timeout: secs("--body-timeout", a.body_timeout)?,
        idle_timeout: secs("--idle-timeout", a.idle_timeout)?,
        max_batch: at_least_one("--max-batch", a.max_batch)?,
        max_fanout: at_least_one("--max-fanout", a.max_fanout)?,
        max_per_client: at_least_one("--max-per-client", a.max_per_client)?,
        hold_under_load: hold_ms(a.hold_under_load)?,
    })
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
    fn hold_under_load_is_milliseconds_from_0_to_1000() {
        assert_eq!(hold_ms(0.0), Ok(Duration::ZERO));
        assert_eq!(hold_ms(20.0), Ok(Duration::from_millis(20)));
        assert_eq!(hold_ms(1000.0), Ok(Duration::from_secs(1)));
        for bad in [-1.0, 1000.5, f64::NAN, f64::INFINITY] {
            let e = hold_ms(bad).unwrap_err();
            assert!(e.contains("--hold-under-load"), "{e}");
        }
    }

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
        for scheme in ["BEARER", "bearer", "BeArEr"] {
            h.insert(
                header::AUTHORIZATION,
                format!("{scheme} s3cret").parse().unwrap(),
            );
            assert!(authorized("s3cret", &h), "{scheme}");
        }
        h.insert(header::AUTHORIZATION, "Bearers3cret".parse().unwrap());
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
