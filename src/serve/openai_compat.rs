//! `POST /v1/chat/completions` and `GET /v1/models`, OpenAI-compatible: any
//! OpenAI SDK pointed at `http://ADDR/v1` routes through quorum's registry,
//! router, budgets and ledger. The model is `provider/model` (or an alias or
//! tier); errors come in OpenAI's error shape with a fitting HTTP status.
//!
//! Beyond OpenAI's fields, a request may carry `trace_id`, `session_id` and
//! `source_agent` (the SDKs' `extra_body`), or the headers `traceparent` /
//! `x-quorum-trace-id`, `x-quorum-session-id`, `x-quorum-source-agent`. A
//! response carries a `quorum` object (provider, cost, cost source, timings,
//! trace id); thinking text, where a model streams it, is `reasoning_content`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::metrics::unix_now;
use super::params::{type_name, FieldError, Fields};
use super::{read_body, AppState, BodyError, CallMeta, CancelOnDrop, StartError};
use crate::engine::attachment::content_parts;
use crate::engine::provider::ProviderKind;
use crate::engine::registry::has_key;
use crate::engine::request::{
    Attachment, Reasoning, ReasoningEffort, ResponseFormat, Role, Tool, ToolCallRef, ToolChoice,
};
use crate::engine::{
    ChatRequest, Completion, EngineError, FinishReason, Message, StreamEvent, TargetEvent,
};

/// An error in OpenAI's shape.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// `error.message`.
    pub message: String,
    /// `error.type`.
    pub kind: &'static str,
    /// `error.param`.
    pub param: Option<String>,
    /// `error.code`.
    pub code: &'static str,
    /// Seconds for a `retry-after` header.
    pub retry_after: Option<f64>,
}

impl ApiError {
    fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(String::from),
            code: "invalid_request",
            retry_after: None,
        }
    }

    fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::invalid(Some(&e.field), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&format!("{}", s.ceil() as u64)) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}

/// HTTP status, type and code for an engine error.
pub fn engine_error(e: &EngineError) -> ApiError {
    use EngineError as E;
    let (status, kind, code) = match e {
        E::RateLimited { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limit_exceeded",
        ),
        E::Budget { .. } => (
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_quota",
            "budget_exceeded",
        ),
        E::NotAllowed { .. } => (
            StatusCode::FORBIDDEN,
            "permission_error",
            "model_not_allowed",
        ),
        E::Config { .. } => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
        ),
        E::ContextLength { .. } => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "context_length_exceeded",
        ),
        E::BadRequest { .. } => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "upstream_bad_request",
        ),
        E::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "api_error", "upstream_timeout"),
        E::BreakerOpen { .. } => (StatusCode::SERVICE_UNAVAILABLE, "api_error", "breaker_open"),
        E::Overloaded { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "upstream_overloaded",
        ),
        E::Auth { .. } => (StatusCode::BAD_GATEWAY, "api_error", "upstream_auth_failed"),
        E::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "api_error", "cancelled"),
        E::Server { .. } | E::Network { .. } | E::Protocol { .. } | E::InStream { .. } => {
            (StatusCode::BAD_GATEWAY, "api_error", "upstream_error")
        }
        E::Transient { .. } => (StatusCode::BAD_GATEWAY, "api_error", "upstream_error"),
        E::ResponseTooLarge { .. } => (StatusCode::BAD_GATEWAY, "api_error", "response_too_large"),
    };
    ApiError {
        status,
        message: e.to_string(),
        kind,
        param: None,
        code,
        retry_after: e.retry_after().map(|d| d.as_secs_f64()),
    }
}

/// A parsed chat completion request.
#[derive(Debug)]
pub struct Parsed {
    /// Target as given.
    pub model: String,
    /// The neutral request.
    pub request: ChatRequest,
    /// `stream`.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// Trace, session, agent from the body.
    pub meta: CallMeta,
}

/// A message's `content`: a string, or content parts (text, and `image_url` parts
/// with data: URLs where `images_ok`); its text and its images.
fn message_content(
    v: Option<&Value>,
    field: &str,
    images_ok: bool,
) -> Result<(String, Vec<Attachment>), ApiError> {
    match v {
        None | Some(Value::Null) => Ok((String::new(), Vec::new())),
        Some(Value::String(s)) => Ok((s.clone(), Vec::new())),
        Some(Value::Array(parts)) => content_parts(parts, images_ok).map_err(|e| {
            let at = format!("{field}{}", e.at);
            ApiError::invalid(Some(&at), format!("{at}: {}", e.message))
        }),
        Some(v) => Err(ApiError::invalid(
            Some(field),
            format!(
                "{field}: expected a string or an array of content parts, got {}",
                type_name(v)
            ),
        )),
    }
}

fn parse_messages(v: Option<&Value>) -> Result<Vec<Message>, ApiError> {
    let Some(Value::Array(items)) = v else {
        return Err(ApiError::invalid(
            Some("messages"),
            match v {
                None | Some(Value::Null) => "messages: missing (an array of messages)".to_string(),
                Some(v) => format!("messages: expected an array, got {}", type_name(v)),
            },
        ));
    };
    if items.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "messages: must not be empty",
        ));
    }
    let mut out: Vec<Message> = Vec::new();
    for (i, m) in items.iter().enumerate() {
        let at = format!("messages[{i}]");
        let Value::Object(o) = m else {
            return Err(ApiError::invalid(
                Some(&at),
                format!("{at}: expected an object, got {}", type_name(m)),
            ));
        };
        let role = match o.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => Role::System,
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some("tool") => Role::Tool,
            Some(r) => {
                return Err(ApiError::invalid(
                    Some(&format!("{at}.role")),
                    format!(
                    "{at}.role: unknown role {r:?} (system, developer, user, assistant or tool)"
                ),
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    Some(&format!("{at}.role")),
                    format!("{at}.role: missing or not a string"),
                ))
            }
        };
        let (content, images) = message_content(
            o.get("content"),
            &format!("{at}.content"),
            role == Role::User,
        )?;
        let mut msg = Message::new(role, content);
        msg.attachments = images;
        if role == Role::Assistant {
            if let Some(Value::Array(calls)) = o.get("tool_calls") {
                for (j, c) in calls.iter().enumerate() {
                    let f = c.get("function");
                    let id = c.get("id").and_then(Value::as_str);
                    let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
                    let (Some(id), Some(name)) = (id, name) else {
                        return Err(ApiError::invalid(
                            Some(&format!("{at}.tool_calls[{j}]")),
                            format!("{at}.tool_calls[{j}]: needs id and function.name"),
                        ));
                    };
                    let args = f
                        .and_then(|f| f.get("arguments"))
                        .and_then(Value::as_str)
                        .unwrap_or("{}");
                    let arguments = serde_json::from_str(args)
                        .unwrap_or_else(|_| Value::String(args.to_string()));
                    msg.tool_calls.push(ToolCallRef {
                        id: id.to_string(),
                        name: name.to_string(),
                        arguments,
                    });
                }
            }
        }
        if role == Role::Tool {
            let Some(call_id) = o.get("tool_call_id").and_then(Value::as_str) else {
                return Err(ApiError::invalid(
                    Some(&format!("{at}.tool_call_id")),
                    format!(
                        "{at}.tool_call_id: a tool message needs the id of the call it answers"
                    ),
                ));
            };
            // Gemini wants the tool's name: find the call this answers.
            let name = o
                .get("name")
                .and_then(Value::as_str)
                .map(String::from)
                .or_else(|| {
                    out.iter()
                        .rev()
                        .flat_map(|m| m.tool_calls.iter())
                        .find(|c| c.id == call_id)
                        .map(|c| c.name.clone())
                });
            msg.tool_call_id = Some(call_id.to_string());
            msg.name = name;
        }
        out.push(msg);
    }
    Ok(out)
}

fn parse_tools(v: Option<&Value>) -> Result<Vec<Tool>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = v else {
        return Err(ApiError::invalid(
            Some("tools"),
            format!("tools: expected an array, got {}", type_name(v)),
        ));
    };
    let mut out = Vec::new();
    for (i, t) in items.iter().enumerate() {
        let f = t.get("function");
        let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
        let Some(name) = name.filter(|_| t.get("type").and_then(Value::as_str) == Some("function"))
        else {
            return Err(ApiError::invalid(
                Some(&format!("tools[{i}]")),
                format!("tools[{i}]: expected {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"),
            ));
        };
        out.push(Tool {
            name: name.to_string(),
            description: f
                .and_then(|f| f.get("description"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            parameters: f
                .and_then(|f| f.get("parameters"))
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        });
    }
    Ok(out)
}

fn parse_tool_choice(v: Option<&Value>) -> Result<ToolChoice, ApiError> {
    Ok(match v {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            _ => {
                return Err(ApiError::invalid(
                    Some("tool_choice"),
                    format!(
                        "tool_choice: unknown value {s:?} (auto, none, required or a function)"
                    ),
                ))
            }
        },
        Some(o) => {
            match o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
            {
                Some(n) => ToolChoice::Function(n.to_string()),
                None => return Err(ApiError::invalid(
                    Some("tool_choice"),
                    "tool_choice: expected {\"type\": \"function\", \"function\": {\"name\": ...}}",
                )),
            }
        }
    })
}

fn parse_response_format(v: Option<&Value>) -> Result<ResponseFormat, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(ResponseFormat::Text);
    };
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let s = v.get("json_schema");
            Ok(ResponseFormat::JsonSchema {
                name: s
                    .and_then(|s| s.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("response")
                    .to_string(),
                schema: s
                    .and_then(|s| s.get("schema"))
                    .cloned()
                    .unwrap_or_else(|| json!({})),
            })
        }
        _ => Err(ApiError::invalid(
            Some("response_format"),
            "response_format.type: expected text, json_object or json_schema",
        )),
    }
}

/// Parse an OpenAI chat completion request body.
pub fn parse(body: &[u8]) -> Result<Parsed, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(o) = v else {
        return Err(ApiError::invalid(
            None,
            format!(
                "the request body must be a JSON object, got {}",
                type_name(&v)
            ),
        ));
    };
    parse_object(&o)
}

/// The request fields quorum reads itself; any other is passed through to
/// OpenAI-wire upstreams ([`ChatRequest::passthrough`]) or refused.
pub const OWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "tools",
    "tool_choice",
    "response_format",
    "reasoning_effort",
    "stream",
    "stream_options",
    "logprobs",
    "top_logprobs",
    "trace_id",
    "session_id",
    "source_agent",
];

fn parse_object(o: &Map<String, Value>) -> Result<Parsed, ApiError> {
    let f = Fields::new(o);
    // Token log probabilities would need the engine to carry them: refused
    // rather than answered without them.
    for k in ["logprobs", "top_logprobs"] {
        match o.get(k) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(_) => {
                return Err(ApiError::invalid(
                    Some(k),
                    format!("{k}: token log probabilities are not supported by quorum's gateway"),
                ))
            }
        }
    }
    let model = f
        .nonempty_str("model")?
        .ok_or_else(|| ApiError::invalid(Some("model"), "model: missing (provider/model)"))?
        .trim()
        .to_string();
    let mut req = ChatRequest {
        messages: parse_messages(o.get("messages"))?,
        ..Default::default()
    };
    let max = f
        .uint("max_completion_tokens", 1, u32::MAX as u64)?
        .or(f.uint("max_tokens", 1, u32::MAX as u64)?);
    req.max_tokens = max.map(|v| v as u32);
    req.temperature = f.num("temperature", 0.0, 2.0)?.map(|v| v as f32);
    req.top_p = f.num("top_p", 0.0, 1.0)?.map(|v| v as f32);
    if let Some(n) = f.uint("n", 1, 128)? {
        if n != 1 {
            return Err(ApiError::invalid(Some("n"), "n: only n = 1 is supported"));
        }
    }
    match o.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => req.stop = vec![s.clone()],
        Some(Value::Array(_)) => req.stop = f.str_list("stop")?.unwrap_or_default(),
        Some(v) => {
            return Err(ApiError::invalid(
                Some("stop"),
                format!("stop: expected a string or an array, got {}", type_name(v)),
            ))
        }
    }
    req.tools = parse_tools(o.get("tools"))?;
    req.tool_choice = parse_tool_choice(o.get("tool_choice"))?;
    req.response_format = parse_response_format(o.get("response_format"))?;
    req.reasoning = match f.str("reasoning_effort")? {
        None => None,
        Some("minimal" | "low") => Some(Reasoning::Effort(ReasoningEffort::Low)),
        Some("medium") => Some(Reasoning::Effort(ReasoningEffort::Medium)),
        Some("high") => Some(Reasoning::Effort(ReasoningEffort::High)),
        Some(x) => {
            return Err(ApiError::invalid(
                Some("reasoning_effort"),
                format!("reasoning_effort: unknown value {x:?} (low, medium, high)"),
            ))
        }
    };
    req.passthrough = o
        .iter()
        .filter(|(k, _)| !OWN_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match o.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(so)) => Fields::new(so).bool("include_usage")?.unwrap_or(false),
        Some(v) => {
            return Err(ApiError::invalid(
                Some("stream_options"),
                format!("stream_options: expected an object, got {}", type_name(v)),
            ))
        }
    };
    Ok(Parsed {
        model,
        request: req,
        stream,
        include_usage,
        meta: f.call_meta()?,
    })
}

fn usage_json(c: &Completion) -> Value {
    let u = &c.usage;
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total_tokens(),
        "prompt_tokens_details": {"cached_tokens": u.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    })
}

fn finish_word(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
        _ => "stop",
    }
}

fn quorum_json(c: &Completion, run_id: &str, trace_id: &str) -> Value {
    json!({
        "provider": c.provider, "model": c.model, "cost_usd": c.cost_usd,
        "cost_source": c.cost_source, "price_ref": c.price_ref, "ttft_ms": c.ttft_ms,
        "latency_ms": c.latency_ms, "cached": c.cached, "retries": c.retries,
        "fell_back_from": c.fell_back_from, "run_id": run_id, "trace_id": trace_id,
    })
}

fn call_id(id: &str, i: usize) -> String {
    if id.is_empty() {
        format!("call_{i}")
    } else {
        id.to_string()
    }
}

/// The `chat.completion` object of a finished completion.
pub fn completion_object(
    c: &Completion,
    id: &str,
    model: &str,
    run_id: &str,
    trace_id: &str,
) -> Value {
    let mut message = json!({
        "role": "assistant",
        "content": if c.text.is_empty() && !c.tool_calls.is_empty() { Value::Null } else { json!(c.text) },
        "refusal": c.refusal,
    });
    if !c.tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(
            c.tool_calls
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    json!({"id": call_id(&t.id, i), "type": "function",
                           "function": {"name": t.name, "arguments": t.arguments}})
                })
                .collect(),
        );
    }
    if !c.thinking.is_empty() {
        message["reasoning_content"] = json!(c.thinking);
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "system_fingerprint": null,
        "choices": [{"index": 0, "message": message, "logprobs": null,
                     "finish_reason": finish_word(c.finish_reason)}],
        "usage": usage_json(c),
        "quorum": quorum_json(c, run_id, trace_id),
    })
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(chat(state, headers, body))
        .catch_unwind()
        .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "internal error".into(),
            kind: "api_error",
            param: None,
            code: "internal_error",
            retry_after: None,
        }
        .into_response(),
    }
}

async fn chat(state: Arc<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let bytes = match read_body(&state, body).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return Err(ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!(
                    "the request body is larger than {} bytes",
                    state.opts.max_body_bytes
                ),
                kind: "invalid_request_error",
                param: None,
                code: "request_too_large",
                retry_after: None,
            })
        }
        Err(BodyError::Timeout) => {
            return Err(ApiError {
                status: StatusCode::REQUEST_TIMEOUT,
                message: format!(
                    "the request body took longer than {} s to arrive",
                    state.opts.limits.body_timeout.as_secs_f64()
                ),
                kind: "invalid_request_error",
                param: None,
                code: "request_timeout",
                retry_after: None,
            })
        }
        Err(BodyError::Read(m)) => {
            return Err(ApiError::invalid(
                None,
                format!("could not read the body: {m}"),
            ))
        }
    };
    let p = parse(&bytes)?;
    let hmeta = CallMeta::from_headers(&headers).map_err(|m| ApiError::invalid(None, m))?;
    let meta = hmeta.merge(p.meta.clone());
    // An unknown model is a 404 here; `cheapest:TIER` is chosen at the front door.
    let checked = match p.model.trim().starts_with("cheapest:") {
        true => Ok(()),
        false => state
            .engine
            .check_targets(std::slice::from_ref(&p.model))
            .map(|_| ()),
    };
    if let Err(e) = &checked {
        state.metrics.refusal(e.kind());
    }
    match checked {
        Ok(()) => {}
        Err(e @ EngineError::Config { .. }) => {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!("model {:?}: {e}", p.model),
                kind: "invalid_request_error",
                param: Some("model".into()),
                code: "model_not_found",
                retry_after: None,
            })
        }
        Err(e) => return Err(engine_error(&e)),
    }
    // Parameters quorum has no field for reach OpenAI-wire upstreams only.
    if let (Some(k), Ok(r)) = (
        p.request.passthrough.keys().next(),
        state.engine.registry().resolve(&p.model),
    ) {
        if !matches!(
            r.spec.kind,
            ProviderKind::Openai | ProviderKind::Openrouter | ProviderKind::Compatible
        ) {
            return Err(ApiError::invalid(
                Some(k),
                format!(
                    "{k}: not supported for {} ({} provider); it is passed only to OpenAI-compatible upstreams",
                    r.id(),
                    r.spec.kind.as_str()
                ),
            ));
        }
    }
    let agent = meta.source_agent.clone();
    // The run goes on this connection's task: each upstream chunk wakes one
    // task fewer on its way to the client.
    let handle = state
        .start_with(p.request, vec![p.model.clone()], meta.run_options(), true)
        .await
        .map_err(|e| match e {
            StartError::Engine(e) => engine_error(&e),
            StartError::Internal(m) => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!("internal error: {m}"),
                kind: "api_error",
                param: None,
                code: "internal_error",
                retry_after: None,
            },
        })?;
    let model_id = handle.targets[0].clone();
    let id = format!("chatcmpl-{}", handle.run_id);
    let (run_id, trace_id) = (handle.run_id.clone(), handle.trace_id.clone());
    let trace_header = HeaderValue::from_str(&trace_id).ok();
    let mut resp = if p.stream {
        stream(state, handle, id, model_id, p.include_usage, agent).await?
    } else {
        let mut cancel = CancelOnDrop::new(&state, &handle, "chat_completions", agent.clone());
        let c = handle
            .collect()
            .await
            .into_iter()
            .next()
            .unwrap_or_default();
        cancel.record(0, &c);
        if let Some(e) = &c.error {
            return Err(engine_error(e));
        }
        axum::Json(completion_object(&c, &id, &model_id, &run_id, &trace_id)).into_response()
    };
    if let Some(v) = trace_header {
        resp.headers_mut().insert("x-quorum-trace-id", v);
    }
    Ok(resp)
}

/// Renders `chat.completion.chunk` frames. The constant part of each frame is
/// rendered once per response, so a text delta costs one string escape.
struct Chunker {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// `data: {"id":…,"model":…,"choices":[{"index":0,"delta":`
    head: Vec<u8>,
    /// `,"logprobs":null,"finish_reason":null}]…}\n\n`
    tail: &'static [u8],
}

impl Chunker {
    fn new(id: String, model: String, include_usage: bool) -> Chunker {
        let created = unix_now();
        let mut head = b"data: {\"id\":".to_vec();
        let _ = serde_json::to_writer(&mut head, &id);
        head.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        head.extend_from_slice(created.to_string().as_bytes());
        head.extend_from_slice(b",\"model\":");
        let _ = serde_json::to_writer(&mut head, &model);
        head.extend_from_slice(
            b",\"system_fingerprint\":null,\"choices\":[{\"index\":0,\"delta\":",
        );
        let tail: &'static [u8] = if include_usage {
            b",\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"
        } else {
            b",\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        };
        Chunker {
            id,
            model,
            created,
            include_usage,
            head,
            tail,
        }
    }

    /// A delta of one string field (`content`, `reasoning_content`).
    fn text(&self, out: &mut Vec<u8>, field: &str, text: &str) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"{\"");
        out.extend_from_slice(field.as_bytes());
        out.extend_from_slice(b"\":");
        let _ = serde_json::to_writer(&mut *out, text);
        out.push(b'}');
        out.extend_from_slice(self.tail);
    }

    fn chunk(&self, out: &mut Vec<u8>, delta: &Value, finish: Option<&str>) {
        out.extend_from_slice(&self.head);
        let _ = serde_json::to_writer(&mut *out, delta);
        match finish {
            None => out.extend_from_slice(self.tail),
            Some(f) => {
                out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
                let _ = serde_json::to_writer(&mut *out, f);
                out.extend_from_slice(b"}]");
                if self.include_usage {
                    out.extend_from_slice(b",\"usage\":null");
                }
                out.extend_from_slice(b"}\n\n");
            }
        }
    }
}

fn data(out: &mut Vec<u8>, v: &Value) {
    out.extend_from_slice(b"data: ");
    let _ = serde_json::to_writer(&mut *out, v);
    out.extend_from_slice(b"\n\n");
}

fn is_content(ev: &StreamEvent) -> bool {
    matches!(
        ev,
        StreamEvent::TextDelta(_)
            | StreamEvent::ThinkingDelta(_)
            | StreamEvent::ToolCallDelta { .. }
    )
}

/// Frames written at most per body chunk when events queue up.
const COALESCE_BYTES: usize = 32 * 1024;

/// The body of a streamed response: engine events in, SSE frames out, with
/// no task or channel of its own. Events that are already queued go out in
/// one write. Dropping it (the client went away) cancels the run.
struct Relay {
    // First, so that it drops first: the run is cancelled before its
    // receiver goes, and records itself as cancelled.
    guard: CancelOnDrop,
    handle: crate::engine::RunHandle,
    ch: Chunker,
    early: std::vec::IntoIter<TargetEvent>,
    tool_ids: Vec<usize>,
    started: bool,
    done: bool,
    pace: Arc<super::pace::Pace>,
    holding: super::pace::Holding,
}

impl Relay {
    fn frame(&mut self, out: &mut Vec<u8>, ev: TargetEvent) {
        let ch = &self.ch;
        match ev.event {
            StreamEvent::TextDelta(t) => ch.text(out, "content", &t),
            StreamEvent::ThinkingDelta(t) => ch.text(out, "reasoning_content", &t),
            StreamEvent::ToolCallDelta {
                index,
                id,
                name,
                arguments,
            } => {
                let mut call = json!({"index": index, "function": {"arguments": arguments}});
                if !self.tool_ids.contains(&index) {
                    self.tool_ids.push(index);
                    call["id"] = json!(call_id(id.as_deref().unwrap_or(""), index));
                    call["type"] = json!("function");
                    call["function"]["name"] = json!(name.unwrap_or_default());
                } else if let Some(n) = name.filter(|n| !n.is_empty()) {
                    call["function"]["name"] = json!(n);
                }
                ch.chunk(out, &json!({"tool_calls": [call]}), None)
            }
            StreamEvent::Finished(c) => {
                self.guard.record(ev.target, &c);
                ch.chunk(out, &json!({}), Some(finish_word(c.finish_reason)));
                if ch.include_usage {
                    let mut u = json!({
                        "id": ch.id, "object": "chat.completion.chunk", "created": ch.created,
                        "model": ch.model, "system_fingerprint": null, "choices": [],
                        "usage": usage_json(&c),
                    });
                    u["quorum"] = quorum_json(&c, &self.handle.run_id, &self.handle.trace_id);
                    data(out, &u);
                }
            }
            StreamEvent::Failed(c) => {
                self.guard.record(ev.target, &c);
                let e = c.error.clone().unwrap_or(EngineError::Cancelled);
                data(out, &engine_error(&e).body());
            }
            _ => {}
        }
    }

    fn poll_chunk(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Bytes>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        // While the server is behind, a stream under way lets the requests
        // still starting go first (see `serve::pace`); the upstream waits.
        if self.started && self.early.len() == 0 && self.pace.hold(&mut self.holding, cx) {
            return Poll::Pending;
        }
        // Allocated at the first frame (a poll that finds nothing allocates
        // nothing), with room for a typical one (the constant head plus a short
        // delta) so it is not grown several times per chunk.
        let room = self.ch.head.len() + 256;
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            self.ch
                .chunk(&mut out, &json!({"role": "assistant", "content": ""}), None);
        }
        while out.len() < COALESCE_BYTES {
            let ev = match self.early.next() {
                Some(ev) => ev,
                None => match self.handle.poll_event(cx) {
                    Poll::Ready(Some(ev)) => ev,
                    Poll::Ready(None) => {
                        out.extend_from_slice(b"data: [DONE]\n\n");
                        self.done = true;
                        break;
                    }
                    Poll::Pending => break,
                },
            };
            if out.capacity() == 0 {
                out.reserve(room);
            }
            self.frame(&mut out, ev);
            // What is queued goes in this frame; the run itself is polled
            // again on the server's next poll, not now (it would find the
            // upstream empty, and the server polls until it does anyway).
            if self.early.len() == 0 && !self.handle.has_queued() {
                break;
            }
        }
        if out.is_empty() {
            Poll::Pending
        } else {
            self.holding.sent();
            Poll::Ready(Some(Bytes::from(out)))
        }
    }
}

/// Stream as `chat.completion.chunk` events. Nothing is committed before the
/// first token: a request that fails before it gets a proper HTTP error.
async fn stream(
    state: Arc<AppState>,
    mut handle: crate::engine::RunHandle,
    id: String,
    model: String,
    include_usage: bool,
    agent: Option<String>,
) -> Result<Response, ApiError> {
    let mut cancel = CancelOnDrop::new(&state, &handle, "chat_completions", agent);
    let mut early: Vec<TargetEvent> = Vec::new();
    loop {
        match handle.recv().await {
            None => break,
            Some(ev) => {
                if let StreamEvent::Failed(c) = &ev.event {
                    cancel.record(ev.target, c);
                    let e = c.error.clone().unwrap_or(EngineError::Cancelled);
                    return Err(engine_error(&e));
                }
                let stop = is_content(&ev.event) || matches!(ev.event, StreamEvent::Finished(_));
                early.push(ev);
                if stop {
                    break;
                }
            }
        }
    }
    let mut relay = Relay {
        guard: cancel,
        handle,
        ch: Chunker::new(id, model, include_usage),
        early: early.into_iter(),
        tool_ids: Vec::new(),
        started: false,
        done: false,
        pace: state.pace.clone(),
        holding: Default::default(),
    };
    let body = Body::from_stream(futures_util::stream::poll_fn(move |cx| {
        relay.poll_chunk(cx).map(|o| o.map(Ok::<_, Infallible>))
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

/// `GET /v1/models`: every allowed model whose provider is usable now.
pub async fn models(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({"object": "list", "data": model_list(&state)})).into_response()
}

/// `GET /v1/models/{id}` (the id is `provider/model`, slash included).
pub async fn model(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let id = id.trim_start_matches('/');
    match model_list(&state).into_iter().find(|m| m["id"] == id) {
        Some(m) => axum::Json(m).into_response(),
        None => ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("the model {id:?} does not exist or is not available here"),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: "model_not_found",
            retry_after: None,
        }
        .into_response(),
    }
}

fn model_list(state: &AppState) -> Vec<Value> {
    let reg = state.engine.registry();
    let mut data = Vec::new();
    for spec in reg.providers() {
        if spec.kind.needs_key() && !has_key(spec) {
            continue;
        }
        let mut names: Vec<String> = reg.models(&spec.name).to_vec();
        let prefix = format!("{}/", spec.name);
        for id in reg.model_metas().keys() {
            if let Some(m) = id.strip_prefix(&prefix) {
                if !names.iter().any(|n| n == m) {
                    names.push(m.to_string());
                }
            }
        }
        for m in names {
            let id = format!("{}/{m}", spec.name);
            if reg.is_allowed(&id) {
                data.push(
                    json!({"id": id, "object": "model", "created": 0, "owned_by": spec.name}),
                );
            }
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_sdk_request() {
        let body = br#"{"model":"mock/alpha","messages":[{"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hi"}]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},
            {"role":"tool","tool_call_id":"c1","content":"42"}],
            "max_tokens":20,"stream":true,"stream_options":{"include_usage":true},
            "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],
            "tool_choice":{"type":"function","function":{"name":"f"}},"seed":1}"#;
        let p = parse(body).unwrap();
        assert_eq!(p.model, "mock/alpha");
        assert!(p.stream && p.include_usage);
        assert_eq!(p.request.messages.len(), 4);
        assert_eq!(p.request.messages[1].content, "hi");
        assert_eq!(p.request.messages[3].name.as_deref(), Some("f"));
        assert_eq!(p.request.tool_choice, ToolChoice::Function("f".into()));
        assert_eq!(p.request.max_tokens, Some(20));
    }

    #[test]
    fn wrong_types_name_the_param() {
        let e = parse(br#"{"model":"mock/alpha","messages":"hi"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = parse(br#"{"model":"mock/alpha","messages":[{"role":"user","content":"x"}],"max_tokens":"9"}"#)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = parse(b"{not json").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = parse(br#"{"messages":[]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
    }
}
