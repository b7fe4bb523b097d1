//! `POST /rpc`: JSON-RPC 2.0.
//!
//! Batches run concurrently and answer in one array (notifications leave no
//! entry; a batch of notifications only gets `204 No Content`). `llm.stream`
//! answers with Server-Sent Events and cannot be batched.
//!
//! | code   | meaning                                                       |
//! |--------|---------------------------------------------------------------|
//! | -32700 | parse error: the body is not JSON                             |
//! | -32600 | invalid request (not a request object, empty batch, too big)  |
//! | -32601 | method not found                                              |
//! | -32602 | invalid params (names the field), unknown model               |
//! | -32603 | internal error                                                |
//! | -32001 | rate limited (upstream 429 after retries)                     |
//! | -32002 | budget exceeded: refused before sending                       |
//! | -32003 | model not allowed (`allowed_models`): refused before sending  |
//! | -32004 | provider failed (auth, 5xx, timeout, network, breaker open)   |
//! | -32005 | too many requests in flight from this client (HTTP 429)       |
//!
//! Limits answer with an HTTP status as well: a body over `--max-body-bytes`
//! is 413 and -32600, one that takes longer than `--body-timeout` 408 and
//! -32600; a batch over `--max-batch` or a request fanning out to more than
//! `--max-fanout` upstream calls (models × repeat, summed over a batch) is 413
//! and -32600 before anything is sent.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::join_all;
use futures_util::FutureExt;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::pace::Holding;
use super::params::{chat_request, FieldError, Fields, PROMPT_FIELDS};
use super::{read_body, AppState, BodyError, CallMeta, CancelOnDrop, StartError};
use crate::engine::compare::{analyse, collect_results, judge_report, parse_kind, to_json};
use crate::engine::consensus::{ConsensusOptions, DEFAULT_THRESHOLD};
use crate::engine::registry::has_key;
use crate::engine::routing::BreakerState;
use crate::engine::{
    Completion, EngineError, FinishReason, StartOptions, StreamEvent, TargetEvent,
};

/// Parse error.
pub const PARSE_ERROR: i64 = -32700;
/// Invalid request.
pub const INVALID_REQUEST: i64 = -32600;
/// Method not found.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid params.
pub const INVALID_PARAMS: i64 = -32602;
/// Internal error.
pub const INTERNAL_ERROR: i64 = -32603;
/// Upstream rate limited the request.
pub const RATE_LIMITED: i64 = -32001;
/// A budget cap refused the request before sending.
pub const BUDGET_EXCEEDED: i64 = -32002;
/// `allowed_models` refused the model before sending.
pub const MODEL_NOT_ALLOWED: i64 = -32003;
/// The provider failed.
pub const PROVIDER_FAILED: i64 = -32004;
/// Too many requests in flight from this client.
pub const TOO_MANY_REQUESTS: i64 = -32005;

/// The methods.
pub const METHODS: &[&str] = &[
    "llm.complete",
    "llm.stream",
    "llm.compare",
    "llm.models",
    "llm.metrics",
    "llm.health",
];

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// Code.
    pub code: i64,
    /// Message.
    pub message: String,
    /// Extra data.
    pub data: Option<Value>,
}

impl RpcError {
    /// A new error.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    fn with_data(mut self, d: Value) -> Self {
        self.data = Some(d);
        self
    }

    fn to_json(&self) -> Value {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some(d) = &self.data {
            e["data"] = d.clone();
        }
        e
    }
}

impl From<FieldError> for RpcError {
    fn from(e: FieldError) -> Self {
        RpcError::new(INVALID_PARAMS, format!("invalid params: {e}"))
            .with_data(json!({"field": e.field, "reason": e.message}))
    }
}

/// The JSON-RPC error for an engine error.
pub fn engine_error(e: &EngineError) -> RpcError {
    let code = match e {
        EngineError::RateLimited { .. } => RATE_LIMITED,
        EngineError::Budget { .. } => BUDGET_EXCEEDED,
        EngineError::NotAllowed { .. } => MODEL_NOT_ALLOWED,
        EngineError::Config { .. } => INVALID_PARAMS,
        _ => PROVIDER_FAILED,
    };
    let mut d = json!({"kind": e.kind()});
    if let Some(s) = e.status() {
        d["status"] = json!(s);
    }
    if let Some(w) = e.retry_after() {
        d["retry_after_secs"] = json!(w.as_secs_f64());
    }
    RpcError::new(code, e.to_string()).with_data(d)
}

fn response(id: &Value, r: Result<Value, RpcError>) -> Value {
    match r {
        Ok(v) => json!({"jsonrpc": "2.0", "id": id, "result": v}),
        Err(e) => json!({"jsonrpc": "2.0", "id": id, "error": e.to_json()}),
    }
}

enum Reply {
    /// A notification: nothing to send.
    None,
    /// One response object.
    Json(Value),
    /// An SSE stream (`llm.stream`).
    Stream(Response),
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

/// `POST /rpc`.
pub async fn handle(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match read_body(&state, body).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            state.metrics.rpc_error(INVALID_REQUEST);
            let e = RpcError::new(
                INVALID_REQUEST,
                format!(
                    "request body larger than {} bytes",
                    state.opts.max_body_bytes
                ),
            );
            return json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &response(&Value::Null, Err(e)),
            );
        }
        Err(BodyError::Timeout) => {
            state.metrics.rpc_error(INVALID_REQUEST);
            let e = RpcError::new(
                INVALID_REQUEST,
                format!(
                    "the request body took longer than {} s to arrive",
                    state.opts.limits.body_timeout.as_secs_f64()
                ),
            );
            return json_response(StatusCode::REQUEST_TIMEOUT, &response(&Value::Null, Err(e)));
        }
        Err(BodyError::Read(m)) => {
            let e = RpcError::new(PARSE_ERROR, format!("could not read the body: {m}"));
            state.metrics.rpc_error(PARSE_ERROR);
            return json_response(StatusCode::BAD_REQUEST, &response(&Value::Null, Err(e)));
        }
    };
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            state.metrics.rpc_error(PARSE_ERROR);
            let e = RpcError::new(PARSE_ERROR, format!("parse error: {e}"));
            return json_response(StatusCode::OK, &response(&Value::Null, Err(e)));
        }
    };
    let hmeta = CallMeta::from_headers(&headers);
    if let Err(r) = within_limits(&state, &value) {
        return r;
    }
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                state.metrics.rpc_error(INVALID_REQUEST);
                let e = RpcError::new(INVALID_REQUEST, "invalid request: empty batch");
                return json_response(StatusCode::OK, &response(&Value::Null, Err(e)));
            }
            let replies = join_all(
                items
                    .into_iter()
                    .map(|item| guarded(&state, &hmeta, item, true)),
            )
            .await;
            let out: Vec<Value> = replies
                .into_iter()
                .filter_map(|r| match r {
                    Reply::Json(v) => Some(v),
                    _ => None,
                })
                .collect();
            if out.is_empty() {
                StatusCode::NO_CONTENT.into_response()
            } else {
                json_response(StatusCode::OK, &Value::Array(out))
            }
        }
        v => match guarded(&state, &hmeta, v, false).await {
            Reply::None => StatusCode::NO_CONTENT.into_response(),
            Reply::Json(v) => json_response(StatusCode::OK, &v),
            Reply::Stream(r) => r,
        },
    }
}

/// Upstream calls one request object would start.
fn fanout(v: &Value) -> usize {
    let method = v.get("method").and_then(Value::as_str).unwrap_or("");
    let params = v.get("params");
    match method {
        "llm.complete" | "llm.stream" => 1,
        "llm.compare" => {
            let p = |k: &str| params.and_then(|p| p.get(k));
            let models = p("models").and_then(Value::as_array).map_or(0, Vec::len);
            let repeat = p("repeat").and_then(Value::as_u64).unwrap_or(1).max(1);
            let judge = usize::from(p("judge").is_some_and(|j| !j.is_null()));
            models
                .saturating_mul(usize::try_from(repeat).unwrap_or(usize::MAX))
                .saturating_add(judge)
        }
        _ => 0,
    }
}

/// Refuse, before anything starts, a batch over `--max-batch` or a request
/// fanning out to more upstream calls than `--max-fanout`.
#[allow(clippy::result_large_err)]
fn within_limits(state: &AppState, value: &Value) -> Result<(), Response> {
    let limits = &state.opts.limits;
    let (id, n, calls) = match value {
        Value::Array(items) => (
            Value::Null,
            items.len(),
            items.iter().map(fanout).fold(0usize, usize::saturating_add),
        ),
        v => (v.get("id").cloned().unwrap_or(Value::Null), 1, fanout(v)),
    };
    let refuse = |message: String, data: Value| {
        state.metrics.rpc_error(INVALID_REQUEST);
        let e = RpcError::new(INVALID_REQUEST, message).with_data(data);
        Err(json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &response(&id, Err(e)),
        ))
    };
    if n > limits.max_batch {
        return refuse(
            format!(
                "invalid request: a batch of {n} requests; the server takes at most {} (--max-batch)",
                limits.max_batch
            ),
            json!({"limit": limits.max_batch, "batch": n}),
        );
    }
    if calls > limits.max_fanout {
        return refuse(
            format!(
                "invalid request: this would start {calls} upstream calls (models × repeat, summed over a batch); the server allows at most {} per request (--max-fanout)",
                limits.max_fanout
            ),
            json!({"limit": limits.max_fanout, "fanout": calls}),
        );
    }
    Ok(())
}

/// [`one`], with a panic answered as an internal error instead of a dropped connection.
async fn guarded(
    state: &Arc<AppState>,
    hmeta: &Result<CallMeta, String>,
    v: Value,
    in_batch: bool,
) -> Reply {
    let id = match &v {
        Value::Object(o) => o.get("id").cloned(),
        _ => None,
    };
    match std::panic::AssertUnwindSafe(one(state, hmeta, v, in_batch))
        .catch_unwind()
        .await
    {
        Ok(r) => r,
        Err(_) => {
            state.metrics.rpc_error(INTERNAL_ERROR);
            match id {
                None => Reply::None,
                Some(id) => Reply::Json(response(
                    &id,
                    Err(RpcError::new(INTERNAL_ERROR, "internal error")),
                )),
            }
        }
    }
}

/// One request object of a call or batch.
async fn one(
    state: &Arc<AppState>,
    hmeta: &Result<CallMeta, String>,
    v: Value,
    in_batch: bool,
) -> Reply {
    let fail = |id: &Value, e: RpcError| {
        state.metrics.rpc_error(e.code);
        Reply::Json(response(id, Err(e)))
    };
    let Value::Object(obj) = v else {
        return fail(
            &Value::Null,
            RpcError::new(INVALID_REQUEST, "invalid request: expected an object"),
        );
    };
    // The id, when it is a valid one; a notification has none.
    let id = match obj.get("id") {
        None => None,
        Some(i @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(i.clone()),
        Some(_) => {
            return fail(
                &Value::Null,
                RpcError::new(
                    INVALID_REQUEST,
                    "invalid request: id must be a string, a number or null",
                ),
            )
        }
    };
    let rid = id.clone().unwrap_or(Value::Null);
    if obj.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return fail(
            &rid,
            RpcError::new(INVALID_REQUEST, "invalid request: jsonrpc must be \"2.0\""),
        );
    }
    let Some(Value::String(method)) = obj.get("method") else {
        return fail(
            &rid,
            RpcError::new(INVALID_REQUEST, "invalid request: method must be a string"),
        );
    };
    let notification = id.is_none();
    // A well-formed request from here on: a notification gets no answer,
    // whatever goes wrong with it (JSON-RPC 2.0, section 4.1).
    let refuse = |e: RpcError| {
        if notification {
            state.metrics.rpc_error(e.code);
            Reply::None
        } else {
            fail(&rid, e)
        }
    };
    let empty = Map::new();
    let params = match obj.get("params") {
        None => &empty,
        Some(Value::Object(m)) => m,
        Some(Value::Array(_)) => {
            return refuse(RpcError::new(
                INVALID_PARAMS,
                "invalid params: pass params by name (an object), not by position",
            ))
        }
        Some(_) => {
            return fail(
                &rid,
                RpcError::new(
                    INVALID_REQUEST,
                    "invalid request: params must be an object or an array",
                ),
            )
        }
    };
    let hmeta = match hmeta {
        Ok(m) => m.clone(),
        Err(e) => return refuse(RpcError::new(INVALID_PARAMS, e.clone())),
    };
    let f = Fields::new(params);
    let result = match method.as_str() {
        "llm.stream" if in_batch => Err(RpcError::new(
            INVALID_REQUEST,
            "llm.stream answers with a stream and cannot be part of a batch",
        )),
        "llm.stream" if !notification => {
            return match stream(state, f, hmeta, rid.clone()).await {
                Ok(r) => Reply::Stream(r),
                Err(e) => fail(&rid, e),
            }
        }
        "llm.complete" | "llm.stream" => complete(state, f, hmeta).await,
        "llm.compare" => compare(state, f, hmeta).await,
        "llm.models" => models(state, f),
        "llm.metrics" => metrics(state, f),
        "llm.health" => health(state, f),
        other => Err(RpcError::new(
            METHOD_NOT_FOUND,
            format!(
                "method not found: {other:?}; methods are {}",
                METHODS.join(", ")
            ),
        )),
    };
    if notification {
        if let Err(e) = &result {
            state.metrics.rpc_error(e.code);
        }
        return Reply::None;
    }
    match result {
        Ok(v) => Reply::Json(response(&rid, Ok(v))),
        Err(e) => fail(&rid, e),
    }
}

/// The prompt fields plus `extra`.
fn with_fields(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = PROMPT_FIELDS.to_vec();
    v.extend_from_slice(extra);
    v
}

fn the_model(state: &AppState, f: &Fields<'_>) -> Result<String, RpcError> {
    match f.nonempty_str("model")? {
        Some(m) => Ok(m.to_string()),
        None => state.settings.default_model.clone().ok_or_else(|| {
            FieldError::new("model", "missing (and no QUORUM_DEFAULT_MODEL is set)").into()
        }),
    }
}

struct Prepared {
    req: crate::engine::ChatRequest,
    opts: crate::engine::RunOptions,
}

fn prepare(f: &Fields<'_>, hmeta: CallMeta) -> Result<Prepared, RpcError> {
    let req = chat_request(f)?;
    let meta = hmeta.merge(f.call_meta()?);
    let mut opts = meta.run_options();
    opts.stream = f.bool("stream")?.unwrap_or(true);
    opts.cache = f.bool("cache")?;
    Ok(Prepared { req, opts })
}

/// The `ask --json` object plus the run's ids.
fn completion_json(c: &Completion, run_id: &str, trace_id: &str, session: Option<&str>) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("run_id".into(), json!(run_id));
        m.insert("trace_id".into(), json!(trace_id));
        m.insert("session_id".into(), json!(session));
    }
    v
}

fn start_error(e: StartError) -> RpcError {
    match e {
        StartError::Engine(e) => engine_error(&e),
        StartError::Internal(m) => RpcError::new(INTERNAL_ERROR, format!("internal error: {m}")),
    }
}

async fn complete(state: &AppState, f: Fields<'_>, hmeta: CallMeta) -> Result<Value, RpcError> {
    f.only(&with_fields(&["model"]))?;
    let model = the_model(state, &f)?;
    let p = prepare(&f, hmeta)?;
    let session = p.opts.session_id.clone();
    let agent = p.opts.source_agent.clone();
    let handle = state
        .start(p.req, vec![model], p.opts)
        .await
        .map_err(start_error)?;
    let (run_id, trace_id) = (handle.run_id.clone(), handle.trace_id.clone());
    let mut cancel = CancelOnDrop::new(state, &handle, "rpc", agent);
    let c = handle
        .collect()
        .await
        .into_iter()
        .next()
        .unwrap_or_default();
    cancel.record(0, &c);
    let v = completion_json(&c, &run_id, &trace_id, session.as_deref());
    match &c.error {
        None => Ok(v),
        Some(e) => {
            let mut err = engine_error(e);
            if let Some(Value::Object(d)) = &mut err.data {
                d.insert("result".into(), v);
            }
            Err(err)
        }
    }
}

fn sse_frame(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// Whether an event of [`event_json`] by this name carries answer content
/// (text, thinking, a tool call).
fn is_content(event: &str) -> bool {
    matches!(event, "text" | "thinking" | "tool_call")
}

/// A face event as JSON: (SSE event name, data).
pub fn event_json(ev: &TargetEvent) -> (&'static str, Value) {
    let t = ev.target;
    match &ev.event {
        StreamEvent::Queued => ("queued", json!({"target": t})),
        StreamEvent::Started {
            provider,
            model,
            attempt,
        } => (
            "started",
            json!({"target": t, "provider": provider, "model": model, "attempt": attempt}),
        ),
        StreamEvent::TextDelta(s) => ("text", json!({"target": t, "text": s})),
        StreamEvent::ThinkingDelta(s) => ("thinking", json!({"target": t, "text": s})),
        StreamEvent::ToolCallDelta {
            index,
            id,
            name,
            arguments,
        } => (
            "tool_call",
            json!({"target": t, "index": index, "id": id, "name": name, "arguments": arguments}),
        ),
        StreamEvent::Usage(u) => ("usage", json!({"target": t, "usage": u})),
        StreamEvent::Retrying {
            attempt,
            max_attempts,
            wait,
            reason,
        } => (
            "retrying",
            json!({"target": t, "attempt": attempt, "max_attempts": max_attempts,
                   "wait_ms": wait.as_secs_f64() * 1000.0, "reason": reason}),
        ),
        StreamEvent::FellBack { from, to, reason } => (
            "fell_back",
            json!({"target": t, "from": from, "to": to, "reason": reason}),
        ),
        StreamEvent::BreakerOpen { provider } => {
            ("breaker_open", json!({"target": t, "provider": provider}))
        }
        StreamEvent::Finished(c) => ("finished", json!({"target": t, "completion": &**c})),
        StreamEvent::Failed(c) => ("failed", json!({"target": t, "completion": &**c})),
    }
}

/// `llm.stream`: the engine's events as SSE, then `event: result` carrying
/// the JSON-RPC response (the `ask --json` object, or the error).
async fn stream(
    state: &Arc<AppState>,
    f: Fields<'_>,
    hmeta: CallMeta,
    id: Value,
) -> Result<Response, RpcError> {
    f.only(&with_fields(&["model"]))?;
    let model = the_model(state, &f)?;
    let p = prepare(&f, hmeta)?;
    let session = p.opts.session_id.clone();
    let agent = p.opts.source_agent.clone();
    let mut handle = state
        .start(p.req, vec![model], p.opts)
        .await
        .map_err(start_error)?;
    // Each frame with whether it carries answer content.
    let (tx, mut rx) = mpsc::channel::<(Bytes, bool)>(256);
    let state2 = state.clone();
    let mut cancel = CancelOnDrop::new(state, &handle, "rpc_stream", agent);
    tokio::spawn(async move {
        let (run_id, trace_id) = (handle.run_id.clone(), handle.trace_id.clone());
        let head = json!({"run_id": run_id, "trace_id": trace_id, "targets": handle.targets});
        if tx.send((sse_frame("run", &head), false)).await.is_err() {
            return;
        }
        let mut last: Option<Completion> = None;
        while let Some(ev) = handle.recv().await {
            if let StreamEvent::Finished(c) | StreamEvent::Failed(c) = &ev.event {
                cancel.record(ev.target, c);
                last = Some((**c).clone());
            }
            let (name, data) = event_json(&ev);
            if tx
                .send((sse_frame(name, &data), is_content(name)))
                .await
                .is_err()
            {
                // The client went away: `cancel` stops the upstream request.
                return;
            }
        }
        let c = last.unwrap_or_else(|| Completion {
            finish_reason: FinishReason::Cancelled,
            error: Some(EngineError::Cancelled),
            ..Default::default()
        });
        let v = completion_json(&c, &run_id, &trace_id, session.as_deref());
        let r = match &c.error {
            None => Ok(v),
            Some(e) => {
                let mut err = engine_error(e);
                if let Some(Value::Object(d)) = &mut err.data {
                    d.insert("result".into(), v);
                }
                state2.metrics.rpc_error(err.code);
                Err(err)
            }
        };
        let _ = tx
            .send((sse_frame("result", &response(&id, r)), false))
            .await;
        drop(cancel);
    });
    // Once its first content has gone out, the stream's frames hold while the
    // server is behind, as the OpenAI relay's do (`serve::pace`).
    let (pace, mut holding, mut flowing) = (state.pace.clone(), Holding::default(), false);
    let body = Body::from_stream(futures_util::stream::poll_fn(move |cx| {
        if flowing && pace.hold(&mut holding, cx) {
            return std::task::Poll::Pending;
        }
        rx.poll_recv(cx).map(|o| {
            o.map(|(frame, content)| {
                flowing |= content;
                holding.sent();
                Ok::<_, Infallible>(frame)
            })
        })
    }));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

fn labels(models: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in models {
        let mut label = m.clone();
        let mut n = 1;
        while out.contains(&label) {
            n += 1;
            label = format!("{m}#{n}");
        }
        out.push(label);
    }
    out
}

/// `llm.compare`: issue 6's result (`quorum compare --json`).
async fn compare(state: &AppState, f: Fields<'_>, hmeta: CallMeta) -> Result<Value, RpcError> {
    f.only(&with_fields(&[
        "models",
        "judge",
        "repeat",
        "kind",
        "threshold",
    ]))?;
    let models = f
        .str_list("models")?
        .ok_or_else(|| FieldError::new("models", "missing: name the targets to compare"))?;
    let judge = f.nonempty_str("judge")?.map(String::from);
    let repeat = f.uint("repeat", 1, 20)?.unwrap_or(1) as u32;
    let kind = match f.str("kind")? {
        None => None,
        Some(k) => Some(parse_kind(k).ok_or_else(|| {
            FieldError::new(
                "kind",
                "expected one of: number, yes-no, choice, final-line, open",
            )
        })?),
    };
    let threshold = f.num("threshold", 0.0, 1.0)?.unwrap_or(DEFAULT_THRESHOLD);
    let p = prepare(&f, hmeta)?;
    if let Some(j) = &judge {
        state
            .engine
            .check_targets(std::slice::from_ref(j))
            .map_err(|e| engine_error(&e))?;
    }
    let prompt = p.req.last_user_text().to_string();
    let mut targets = Vec::new();
    let mut slots = Vec::new();
    for (ti, m) in models.iter().enumerate() {
        for r in 1..=repeat {
            targets.push(m.clone());
            slots.push((ti, r));
        }
    }
    let judge_opts = p.opts.clone();
    let agent = p.opts.source_agent.clone();
    let mut handle = state
        .start(p.req, targets.clone(), p.opts)
        .await
        .map_err(start_error)?;
    let mut cancel = CancelOnDrop::new(state, &handle, "rpc", agent.clone());
    let mut done: Vec<Option<Completion>> = vec![None; targets.len()];
    while let Some(TargetEvent { target, event, .. }) = handle.recv().await {
        if let StreamEvent::Finished(c) | StreamEvent::Failed(c) = event {
            cancel.record(target, &c);
            done[target] = Some(*c);
        }
    }
    let results = collect_results(done, &slots, &targets);
    let opts = ConsensusOptions { kind, threshold };
    let mut report = analyse(&prompt, repeat, labels(&models), results, opts);
    if let Some(j) = &judge {
        // The judge's call belongs to the same trace as the answers it judges.
        let mut run = judge_opts;
        run.trace_id = Some(handle.trace_id.clone());
        state.continue_trace(&mut run);
        let start = StartOptions {
            run,
            budget_session: Some(state.session.clone()),
            ..Default::default()
        };
        let outcome = judge_report(&state.engine, j, &report, start).await;
        if let Ok(o) = &outcome {
            state.record("rpc", &o.completion, agent.as_deref());
        }
        report.judge = Some(outcome);
    }
    let mut v = to_json(&report);
    v["trace_id"] = json!(handle.trace_id);
    v["run_id"] = json!(handle.run_id);
    v["failed"] = json!(report.failed());
    Ok(v)
}

fn models(state: &AppState, f: Fields<'_>) -> Result<Value, RpcError> {
    f.only(&["trace_id", "session_id", "source_agent"])?;
    let l = crate::shared::catalog::listing(&state.engine, &state.settings.config, &|k| {
        std::env::var(k).ok()
    });
    serde_json::to_value(&l).map_err(|e| RpcError::new(INTERNAL_ERROR, e.to_string()))
}

fn metrics(state: &AppState, f: Fields<'_>) -> Result<Value, RpcError> {
    f.only(&["reset", "trace_id", "session_id", "source_agent"])?;
    let reset = f.bool("reset")?.unwrap_or(false);
    Ok(state.metrics.usage_json(reset))
}

fn breaker_word(s: BreakerState) -> &'static str {
    match s {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
    }
}

fn health(state: &AppState, f: Fields<'_>) -> Result<Value, RpcError> {
    f.only(&["trace_id", "session_id", "source_agent"])?;
    let providers: Vec<Value> = state
        .engine
        .registry()
        .providers()
        .map(|spec| {
            json!({
                "name": spec.name,
                "kind": spec.kind.as_str(),
                "key_needed": spec.kind.needs_key(),
                "key_present": has_key(spec),
                "breaker": breaker_word(state.engine.breaker_state(&spec.name)),
                "last_error": state.metrics.last_error(&spec.name),
            })
        })
        .collect();
    Ok(json!({
        "status": state.health_word(),
        "ledger": state.ledger_word(),
        "ledger_write_failures": state.engine.ledger_health().failures(),
        "ledger_last_error": state.engine.ledger_health().last_error(),
        "ledger_backlog": state.engine.ledger_backlog(),
        "version": crate::shared::version_string(),
        "in_flight": state.metrics.in_flight_now(),
        "providers": providers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_frames_are_told_apart() {
        for e in ["text", "thinking", "tool_call"] {
            assert!(is_content(e), "{e}");
        }
        for e in ["run", "started", "queued", "usage", "texts", "result"] {
            assert!(!is_content(e), "{e}");
        }
    }
}
