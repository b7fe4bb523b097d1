//! Anthropic Messages API (`POST /v1/messages`), streamed as SSE or returned
//! as one JSON message.
//!
//! Mapping choices worth knowing:
//! - Only `tool_use` blocks become [`Delta::ToolCall`]s. `server_tool_use`
//!   blocks (web search, tool search, ...) are executed by Anthropic itself;
//!   handing them to the caller would make it try to run a tool it does not
//!   have. Their inputs and result blocks are skipped.
//! - A tool call's index is its content-block index, so parallel calls never
//!   merge even when they call the same tool.
//! - Usage follows our convention: `input_tokens` counts every prompt token,
//!   so Anthropic's `input_tokens`, `cache_read_input_tokens` and
//!   `cache_creation_input_tokens` are added up.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{
    base_headers, join_url, put_header, require_key, snippet, HttpCall, ProviderSpec, StreamDecoder,
};
use crate::engine::error::EngineError;
use crate::engine::event::{Delta, FinishReason, Usage};
use crate::engine::request::{ChatRequest, ResponseFormat, Role, ToolChoice};

/// The API version we speak; pinned so a server-side default change cannot
/// silently alter the wire format.
pub const API_VERSION: &str = "2023-06-01";

/// `max_tokens` is mandatory on this API; this is what we send when the
/// request sets no limit.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// The smallest thinking budget the API accepts.
const MIN_THINKING_BUDGET: u32 = 1024;

/// Build the HTTP request.
///
/// `max_tokens` is always sent (the API requires it). With thinking on the
/// API also requires `max_tokens > budget_tokens`; when the requested limit
/// does not exceed the budget, the limit is read as the allowance for the
/// answer and the budget is added on top, so the answer is not starved by
/// the thinking.
pub fn build(
    spec: &ProviderSpec,
    model: &str,
    req: &ChatRequest,
    stream: bool,
) -> Result<HttpCall, EngineError> {
    let key = require_key(spec)?;
    // The spec's headers may pin another version or add `anthropic-beta`.
    let mut headers = base_headers(spec)?;
    if !headers.contains_key("anthropic-version") {
        put_header(&mut headers, "anthropic-version", API_VERSION, false)?;
    }
    put_header(&mut headers, "x-api-key", key, true)?;

    let mut body = Map::new();
    body.insert("model".into(), Value::String(model.to_string()));

    let budget = req
        .reasoning
        .map(|r| r.budget_tokens().max(MIN_THINKING_BUDGET));
    let mut max_tokens = req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).max(1);
    if let Some(b) = budget {
        if max_tokens <= b {
            max_tokens = max_tokens.saturating_add(b);
        }
    }
    body.insert("max_tokens".into(), json!(max_tokens));

    if let Some(system) = system_prompt(req) {
        body.insert("system".into(), Value::String(system));
    }
    body.insert("messages".into(), Value::Array(messages(req)));

    // The API refuses `temperature` together with thinking.
    if budget.is_none() {
        if let Some(t) = req.temperature {
            body.insert("temperature".into(), super::param_json(t));
        }
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), super::param_json(p));
    }
    if !req.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(req.stop));
    }
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut o = Map::new();
                o.insert("name".into(), Value::String(t.name.clone()));
                if !t.description.is_empty() {
                    o.insert("description".into(), Value::String(t.description.clone()));
                }
                let schema = if t.parameters.is_object() {
                    t.parameters.clone()
                } else {
                    json!({"type": "object", "properties": {}})
                };
                o.insert("input_schema".into(), schema);
                Value::Object(o)
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
        let choice = match &req.tool_choice {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::None => json!({"type": "none"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::Function(name) => json!({"type": "tool", "name": name}),
        };
        body.insert("tool_choice".into(), choice);
    }
    if let Some(b) = budget {
        body.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": b}),
        );
    }
    if stream {
        body.insert("stream".into(), Value::Bool(true));
    }
    Ok(HttpCall {
        url: join_url(&spec.base_url, "v1/messages"),
        headers,
        body: Value::Object(body),
    })
}

/// The top-level system prompt, with a JSON instruction appended when JSON
/// output is asked for: Anthropic has no JSON mode, so we ask in words.
fn system_prompt(req: &ChatRequest) -> Option<String> {
    let instruction = match &req.response_format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some(
            "Respond with a single valid JSON object and nothing else: no prose, no code fences."
                .to_string(),
        ),
        ResponseFormat::JsonSchema { name, schema } => Some(format!(
            "Respond with a single valid JSON object and nothing else: no prose, no code fences. \
             It must match this JSON Schema ({name}): {schema}"
        )),
    };
    match (req.system_text(), instruction) {
        (None, None) => None,
        (Some(s), None) => Some(s),
        (None, Some(i)) => Some(i),
        (Some(s), Some(i)) => Some(format!("{s}\n\n{i}")),
    }
}

/// The conversation as Anthropic messages: only `user` and `assistant`
/// roles, alternating (consecutive same-role turns are merged into one),
/// tool results as `tool_result` blocks of a user turn.
fn messages(req: &ChatRequest) -> Vec<Value> {
    let mut out: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in &req.messages {
        let (role, blocks) = match m.role {
            Role::System => continue,
            Role::User => ("user", user_blocks(m)),
            Role::Assistant => {
                // Signed thinking goes back first, unchanged: the API requires
                // it to continue a tool-use turn with thinking on.
                let mut blocks: Vec<Value> = m
                    .thinking
                    .iter()
                    .filter(|b| !b.signature.is_empty())
                    .map(|b| {
                        json!({"type": "thinking", "thinking": b.text, "signature": b.signature})
                    })
                    .collect();
                blocks.extend(text_block(&m.content));
                for c in &m.tool_calls {
                    let input = match &c.arguments {
                        Value::Object(_) => c.arguments.clone(),
                        Value::Null => json!({}),
                        // A string holding JSON (as OpenAI sends them) is decoded.
                        Value::String(s) => match serde_json::from_str::<Value>(s) {
                            Ok(v @ Value::Object(_)) => v,
                            _ => json!({}),
                        },
                        other => json!({ "value": other }),
                    };
                    blocks.push(json!({
                        "type": "tool_use", "id": c.id, "name": c.name, "input": input,
                    }));
                }
                ("assistant", blocks)
            }
            Role::Tool => (
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id.clone().unwrap_or_default(),
                    "content": m.content,
                })],
            ),
        };
        if blocks.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some((r, existing)) if *r == role => existing.extend(blocks),
            _ => out.push((role, blocks)),
        }
    }
    // A final assistant turn is a prefill; the API rejects one that ends in
    // whitespace.
    if let Some(("assistant", blocks)) = out.last_mut() {
        if let Some(Value::Object(b)) = blocks.last_mut() {
            if b.get("type").and_then(Value::as_str) == Some("text") {
                if let Some(Value::String(t)) = b.get_mut("text") {
                    let trimmed = t.trim_end().len();
                    t.truncate(trimmed);
                }
            }
        }
        if let Some(Value::Object(b)) = blocks.last() {
            if b.get("text").and_then(Value::as_str) == Some("") {
                blocks.pop();
            }
        }
        if blocks.is_empty() {
            out.pop();
        }
    }
    out.into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect()
}

/// A user turn's blocks: images first (as the API's guide recommends), then
/// the text with any attached files.
fn user_blocks(m: &crate::engine::request::Message) -> Vec<Value> {
    let mut blocks: Vec<Value> = m
        .images()
        .filter_map(|a| match &a.data {
            crate::engine::request::AttachmentData::Image {
                media_type, base64, ..
            } => Some(json!({
                "type": "image",
                "source": {"type": "base64", "media_type": media_type, "data": base64},
            })),
            crate::engine::request::AttachmentData::Text { .. } => None,
        })
        .collect();
    blocks.extend(text_block(&m.text_with_files()));
    blocks
}

/// A text block, or none for empty text (the API rejects empty text blocks).
fn text_block(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({"type": "text", "text": text}))
}

/// Normalise a `stop_reason`.
fn finish_reason(raw: &str) -> FinishReason {
    match raw {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        // end_turn, stop_sequence, pause_turn and anything new.
        _ => FinishReason::Stop,
    }
}

#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    output_tokens_details: Option<OutputDetails>,
}

#[derive(Debug, Default, Deserialize)]
struct OutputDetails {
    thinking_tokens: Option<u64>,
}

/// The raw counts as last reported; `message_delta` repeats some of what
/// `message_start` said, and every field present overrides the earlier one.
#[derive(Debug, Default, Clone, Copy)]
struct UsageParts {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_creation: u64,
    thinking: u64,
}

impl UsageParts {
    fn update(&mut self, u: &WireUsage) {
        if let Some(v) = u.input_tokens {
            self.input = v;
        }
        if let Some(v) = u.output_tokens {
            self.output = v;
        }
        if let Some(v) = u.cache_read_input_tokens {
            self.cache_read = v;
        }
        if let Some(v) = u.cache_creation_input_tokens {
            self.cache_creation = v;
        }
        if let Some(v) = u
            .output_tokens_details
            .as_ref()
            .and_then(|d| d.thinking_tokens)
        {
            self.thinking = v;
        }
    }

    fn to_usage(self) -> Usage {
        Usage {
            input_tokens: self.input + self.cache_read + self.cache_creation,
            output_tokens: self.output,
            cached_input_tokens: self.cache_read,
            cache_creation_input_tokens: self.cache_creation,
            reasoning_tokens: self.thinking,
            reported_cost_usd: None,
        }
    }
}

#[derive(Debug, Deserialize)]
struct WireError {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

impl WireError {
    fn into_engine(self) -> EngineError {
        match self.kind.as_str() {
            "overloaded_error" => EngineError::Overloaded {
                // Anthropic's HTTP status for overloaded_error.
                status: 529,
                message: self.message,
                retry_after: None,
            },
            "" => EngineError::InStream {
                message: self.message,
            },
            kind => EngineError::InStream {
                message: format!("{kind}: {}", self.message),
            },
        }
    }
}

// The wire shapes are flat structs with optional fields rather than
// internally tagged enums: serde buffers a tagged enum's whole content before
// choosing the variant, which for a server tool's result (tens of KB of
// encrypted search results) is needless work. Fields we do not name are
// skipped straight from the input.

/// A content block as `content_block_start` or a whole message carries it.
#[derive(Debug, Default, Deserialize)]
struct WireBlock {
    /// `text`, `thinking`, `redacted_thinking`, `tool_use`, and server-side
    /// kinds (`server_tool_use`, `web_search_tool_result`, ...).
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    input: Option<Value>,
}

/// The `delta` of `content_block_delta` (typed) or of `message_delta`
/// (untyped, with the stop reason).
#[derive(Debug, Default, Deserialize)]
struct WireDelta {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    partial_json: Option<String>,
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct MessageStartBody {
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// One SSE event's JSON.
#[derive(Debug, Default, Deserialize)]
struct WireEvent {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    message: Option<MessageStartBody>,
    #[serde(default)]
    content_block: Option<WireBlock>,
    #[serde(default)]
    delta: Option<WireDelta>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<WireError>,
}

/// What a content block is, remembered from its start so its deltas can be
/// routed (a server tool's `input_json_delta` must not become a tool call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    ClientTool,
    Other,
}

/// Decodes the SSE events of one streamed message.
#[derive(Debug, Default)]
pub struct Decoder {
    done: bool,
    /// (block index, kind) of the blocks started so far.
    blocks: Vec<(usize, BlockKind)>,
    usage: UsageParts,
}

impl Decoder {
    fn kind_of(&self, index: usize) -> BlockKind {
        self.blocks
            .iter()
            .rev()
            .find(|(i, _)| *i == index)
            .map(|(_, k)| *k)
            .unwrap_or(BlockKind::Other)
    }
}

/// The events we know; anything else (`ping`, future additions) is skipped
/// without even being parsed, so a new event type can never break a stream.
fn is_known_event(name: &str) -> bool {
    matches!(
        name,
        "message_start"
            | "content_block_start"
            | "content_block_delta"
            | "content_block_stop"
            | "message_delta"
            | "message_stop"
            | "error"
            // An unnamed event: dispatch on its JSON `type`.
            | "message"
    )
}

impl StreamDecoder for Decoder {
    fn frame(&mut self, event: &str, data: &str, out: &mut Vec<Delta>) -> Result<(), EngineError> {
        if !is_known_event(event) {
            return Ok(());
        }
        let data = data.trim();
        if data.is_empty() {
            return Ok(());
        }
        let ev: WireEvent = serde_json::from_str(data).map_err(|e| EngineError::Protocol {
            message: format!("malformed anthropic {event} event ({e}): {}", snippet(data)),
        })?;
        let index = ev.index.unwrap_or(0);
        match ev.kind.as_str() {
            "message_start" => {
                if let Some(u) = ev.message.as_ref().and_then(|m| m.usage.as_ref()) {
                    self.usage.update(u);
                    // Its `output_tokens` (1) is provisional: it counts
                    // nothing streamed yet. The real count comes with
                    // `message_delta`; until then the output is counted
                    // locally from what arrives.
                    self.usage.output = 0;
                    out.push(Delta::Usage(self.usage.to_usage()));
                }
            }
            "content_block_start" => {
                let block = ev.content_block.unwrap_or_default();
                let kind = if block.kind == "tool_use" {
                    BlockKind::ClientTool
                } else {
                    BlockKind::Other
                };
                // A tool_use start carries `input: {}`; the real input
                // follows as `input_json_delta`s.
                push_block(index, block, false, out);
                self.blocks.push((index, kind));
            }
            "content_block_delta" => {
                let d = ev.delta.unwrap_or_default();
                match d.kind.as_str() {
                    "text_delta" => out.push(Delta::Text(d.text.unwrap_or_default())),
                    "thinking_delta" => out.push(Delta::Thinking(d.thinking.unwrap_or_default())),
                    "signature_delta" => {
                        out.push(Delta::ThinkingSignature(d.signature.unwrap_or_default()))
                    }
                    "input_json_delta" => {
                        let part = d.partial_json.unwrap_or_default();
                        if self.kind_of(index) == BlockKind::ClientTool && !part.is_empty() {
                            out.push(Delta::ToolCall {
                                index,
                                id: None,
                                name: None,
                                arguments: part,
                            });
                        }
                    }
                    // citations_delta, and whatever comes later.
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(u) = &ev.usage {
                    self.usage.update(u);
                    out.push(Delta::Usage(self.usage.to_usage()));
                }
                if let Some(raw) = ev.delta.and_then(|d| d.stop_reason) {
                    out.push(Delta::Finish {
                        reason: finish_reason(&raw),
                        raw,
                    });
                }
            }
            "message_stop" => self.done = true,
            "error" => {
                let err = ev.error.unwrap_or(WireError {
                    kind: String::new(),
                    message: snippet(data),
                });
                return Err(err.into_engine());
            }
            // content_block_stop, ping, and event types added later.
            _ => {}
        }
        Ok(())
    }

    fn is_done(&self) -> bool {
        self.done
    }
}

/// Emit what a block carries in itself: the whole block of a non-streamed
/// message, or the start of a streamed one. Only client `tool_use` blocks
/// become tool calls; `redacted_thinking` is opaque and server-side blocks
/// are not ours.
fn push_block(index: usize, block: WireBlock, with_input: bool, out: &mut Vec<Delta>) {
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    match block.kind.as_str() {
        "text" => {
            if let Some(t) = nonempty(block.text) {
                out.push(Delta::Text(t));
            }
        }
        "thinking" => {
            if let Some(t) = nonempty(block.thinking) {
                out.push(Delta::Thinking(t));
            }
            if let Some(s) = nonempty(block.signature) {
                out.push(Delta::ThinkingSignature(s));
            }
        }
        "tool_use" => {
            let arguments = match block.input {
                Some(v) if with_input && !v.is_null() => v.to_string(),
                _ if with_input => "{}".to_string(),
                _ => String::new(),
            };
            out.push(Delta::ToolCall {
                index,
                id: Some(block.id.unwrap_or_default()),
                name: Some(block.name.unwrap_or_default()),
                arguments,
            });
        }
        _ => {}
    }
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    content: Vec<WireBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<WireError>,
}

/// Parse a non-streamed body (one Message object) into the same deltas a
/// stream of it would have produced.
pub fn parse_response(body: &[u8]) -> Result<Vec<Delta>, EngineError> {
    let msg: WireMessage = serde_json::from_slice(body).map_err(|e| EngineError::Protocol {
        message: format!(
            "malformed anthropic message ({e}): {}",
            snippet(&String::from_utf8_lossy(body))
        ),
    })?;
    if msg.kind == "error" {
        if let Some(err) = msg.error {
            return Err(err.into_engine());
        }
    }
    let mut out = Vec::new();
    for (index, block) in msg.content.into_iter().enumerate() {
        push_block(index, block, true, &mut out);
    }
    if let Some(u) = &msg.usage {
        let mut parts = UsageParts::default();
        parts.update(u);
        out.push(Delta::Usage(parts.to_usage()));
    }
    if let Some(raw) = msg.stop_reason {
        out.push(Delta::Finish {
            reason: finish_reason(&raw),
            raw,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::provider::{ProviderKind, Secret};
    use crate::engine::request::{Message, Reasoning, ReasoningEffort, Tool, ToolCallRef};

    fn spec() -> ProviderSpec {
        let mut s = ProviderSpec::new("anthropic", ProviderKind::Anthropic);
        s.api_key = Some(Secret::new("sk-ant-test"));
        s
    }

    fn body(req: &ChatRequest) -> Value {
        build(&spec(), "claude-x", req, false).unwrap().body
    }

    #[test]
    fn url_headers_and_defaults() {
        let mut s = spec();
        s.base_url = "http://127.0.0.1:9/".into();
        s.headers = vec![("anthropic-beta".into(), "tools-2024".into())];
        let call = build(&s, "claude-x", &ChatRequest::from_prompt("hi"), true).unwrap();
        assert_eq!(call.url, "http://127.0.0.1:9/v1/messages");
        assert_eq!(call.headers["x-api-key"], "sk-ant-test");
        assert!(call.headers["x-api-key"].is_sensitive());
        assert_eq!(call.headers["anthropic-version"], API_VERSION);
        assert_eq!(call.headers["anthropic-beta"], "tools-2024");
        assert_eq!(call.headers["content-type"], "application/json");
        assert!(!format!("{:?}", call.headers).contains("sk-ant-test"));
        let b = call.body;
        assert_eq!(b["model"], "claude-x");
        assert_eq!(b["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(b["stream"], true);
        assert_eq!(
            b["messages"],
            json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
        );
        assert!(b.get("system").is_none());
        assert!(b.get("temperature").is_none());
        assert!(b.get("tools").is_none());
        let b = body(&ChatRequest::from_prompt("hi"));
        assert!(b.get("stream").is_none());
        let mut default = ProviderSpec::new("default", ProviderKind::Anthropic);
        default.api_key = Some(Secret::new("k"));
        let call = build(&default, "m", &ChatRequest::from_prompt("x"), false).unwrap();
        assert_eq!(call.url, "https://api.anthropic.com/v1/messages");
    }

    #[test]
    fn missing_key_is_a_config_error() {
        let s = ProviderSpec::new("anthropic", ProviderKind::Anthropic);
        let e = build(&s, "m", &ChatRequest::from_prompt("x"), false).unwrap_err();
        assert_eq!(e.kind(), "config");
        let mut s = s;
        s.api_key = Some(Secret::new(""));
        assert!(build(&s, "m", &ChatRequest::from_prompt("x"), false).is_err());
    }

    #[test]
    fn system_top_level_and_parameters() {
        let req = ChatRequest {
            messages: vec![
                Message::system("Be brief."),
                Message::user("a"),
                Message::system("Use metric units."),
            ],
            temperature: Some(0.5),
            top_p: Some(0.9),
            max_tokens: Some(77),
            stop: vec!["END".into()],
            ..Default::default()
        };
        let b = body(&req);
        assert_eq!(b["system"], "Be brief.\n\nUse metric units.");
        assert_eq!(b["messages"].as_array().unwrap().len(), 1);
        assert_eq!(b["temperature"], 0.5);
        assert!((b["top_p"].as_f64().unwrap() - 0.9).abs() < 1e-6);
        assert_eq!(b["max_tokens"], 77);
        assert_eq!(b["stop_sequences"], json!(["END"]));
    }

    #[test]
    fn thinking_drops_temperature_and_keeps_max_tokens_above_budget() {
        let mut req = ChatRequest::from_prompt("think");
        req.temperature = Some(0.2);
        req.reasoning = Some(Reasoning::Budget(2000));
        let b = body(&req);
        assert_eq!(
            b["thinking"],
            json!({"type": "enabled", "budget_tokens": 2000})
        );
        assert!(b.get("temperature").is_none());
        assert_eq!(b["max_tokens"], DEFAULT_MAX_TOKENS);

        req.reasoning = Some(Reasoning::Effort(ReasoningEffort::High));
        let b = body(&req);
        assert_eq!(b["thinking"]["budget_tokens"], 16384);
        assert_eq!(b["max_tokens"], 16384 + DEFAULT_MAX_TOKENS);

        req.max_tokens = Some(500);
        req.reasoning = Some(Reasoning::Budget(100)); // below the API minimum
        let b = body(&req);
        assert_eq!(b["thinking"]["budget_tokens"], 1024);
        assert_eq!(b["max_tokens"], 1524);
        let mt = b["max_tokens"].as_u64().unwrap();
        assert!(mt > b["thinking"]["budget_tokens"].as_u64().unwrap());
    }

    #[test]
    fn tools_calls_results_and_role_merging() {
        let mut asst = Message::assistant("Checking.");
        asst.tool_calls = vec![
            ToolCallRef {
                id: "toolu_1".into(),
                name: "get_weather".into(),
                arguments: json!({"city": "Paris"}),
            },
            ToolCallRef {
                id: "toolu_2".into(),
                name: "get_time".into(),
                arguments: json!("{\"tz\":\"CET\"}"),
            },
        ];
        let req = ChatRequest {
            messages: vec![
                Message::user("Weather"),
                Message::user("and time?"),
                asst,
                Message::tool_result("toolu_1", "get_weather", "18C"),
                Message::tool_result("toolu_2", "get_time", "12:00"),
                Message::user("Thanks"),
            ],
            tools: vec![
                Tool {
                    name: "get_weather".into(),
                    description: "Weather of a city".into(),
                    parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
                },
                Tool {
                    name: "get_time".into(),
                    description: String::new(),
                    parameters: Value::Null,
                },
            ],
            tool_choice: ToolChoice::Function("get_weather".into()),
            ..Default::default()
        };
        let b = body(&req);
        assert_eq!(
            b["messages"],
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather"},
                    {"type": "text", "text": "and time?"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {"tz": "CET"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "12:00"},
                    {"type": "text", "text": "Thanks"}]}
            ])
        );
        assert_eq!(
            b["tools"],
            json!([
                {"name": "get_weather", "description": "Weather of a city",
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
            ])
        );
        assert_eq!(
            b["tool_choice"],
            json!({"type": "tool", "name": "get_weather"})
        );
        for (choice, want) in [
            (ToolChoice::Auto, json!({"type": "auto"})),
            (ToolChoice::None, json!({"type": "none"})),
            (ToolChoice::Required, json!({"type": "any"})),
        ] {
            let r = ChatRequest {
                tool_choice: choice,
                ..req.clone()
            };
            assert_eq!(body(&r)["tool_choice"], want);
        }
    }

    #[test]
    fn assistant_prefill_is_trimmed_and_empty_text_skipped() {
        let req = ChatRequest {
            messages: vec![
                Message::user("Write code"),
                Message::assistant(""),
                Message::assistant("```python\n"),
            ],
            ..Default::default()
        };
        let b = body(&req);
        assert_eq!(
            b["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "Write code"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "```python"}]}
            ])
        );
    }

    #[test]
    fn json_format_becomes_a_system_instruction() {
        let mut req = ChatRequest {
            messages: vec![Message::system("You are terse."), Message::user("data")],
            response_format: ResponseFormat::JsonObject,
            ..Default::default()
        };
        let s = body(&req)["system"].as_str().unwrap().to_string();
        assert!(s.starts_with("You are terse.\n\n"), "{s}");
        assert!(s.contains("JSON object"), "{s}");
        req.messages.remove(0);
        req.response_format = ResponseFormat::JsonSchema {
            name: "point".into(),
            schema: json!({"type": "object", "required": ["x"]}),
        };
        let s = body(&req)["system"].as_str().unwrap().to_string();
        assert!(
            s.contains("point") && s.contains("\"required\":[\"x\"]"),
            "{s}"
        );
        assert!(body(&req).get("response_format").is_none());
    }

    fn decode(events: &[(&str, &str)]) -> (Vec<Delta>, Result<(), EngineError>, bool) {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for (e, data) in events {
            if let Err(err) = d.frame(e, data, &mut out) {
                return (out, Err(err), d.is_done());
            }
        }
        (out, Ok(()), d.is_done())
    }

    #[test]
    fn decoder_routes_blocks_and_skips_server_tools() {
        let (out, r, done) = decode(&[
            (
                "message_start",
                r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"cache_read_input_tokens":5,"cache_creation_input_tokens":2,"output_tokens":1}}}   "#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"server_tool_use","id":"srv_1","name":"web_search","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"q\":1}"}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"web_search_tool_result","tool_use_id":"srv_1","content":[]}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":2,"content_block":{"type":"text","text":"Hi"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":2,"delta":{"type":"citations_delta","citation":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":" there"}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":3,"content_block":{"type":"tool_use","id":"toolu_9","name":"f","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"2}"}}"#,
            ),
            ("future_event", "not even json"),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":30,"output_tokens_details":{"thinking_tokens":4}}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ]);
        r.unwrap();
        assert!(done);
        let usage = Usage {
            input_tokens: 17,
            output_tokens: 0,
            cached_input_tokens: 5,
            cache_creation_input_tokens: 2,
            ..Default::default()
        };
        assert_eq!(
            out,
            vec![
                Delta::Usage(usage),
                Delta::Text("Hi".into()),
                Delta::Text(" there".into()),
                Delta::ToolCall {
                    index: 3,
                    id: Some("toolu_9".into()),
                    name: Some("f".into()),
                    arguments: String::new()
                },
                Delta::ToolCall {
                    index: 3,
                    id: None,
                    name: None,
                    arguments: "{\"a\":".into()
                },
                Delta::ToolCall {
                    index: 3,
                    id: None,
                    name: None,
                    arguments: "2}".into()
                },
                Delta::Usage(Usage {
                    output_tokens: 30,
                    reasoning_tokens: 4,
                    ..usage
                }),
                Delta::Finish {
                    reason: FinishReason::ToolCalls,
                    raw: "tool_use".into()
                },
            ]
        );
    }

    #[test]
    fn decoder_errors() {
        let (out, r, done) = decode(&[
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"par"}}"#,
            ),
            (
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ),
        ]);
        assert_eq!(out, vec![Delta::Text("par".into())]);
        assert!(!done);
        let e = r.unwrap_err();
        assert!(
            matches!(&e, EngineError::Overloaded { status: 529, message, .. } if message == "Overloaded"),
            "{e:?}"
        );
        assert!(e.is_retryable());

        let (_, r, _) = decode(&[(
            "error",
            r#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#,
        )]);
        assert_eq!(
            r.unwrap_err(),
            EngineError::InStream {
                message: "api_error: Internal server error".into()
            }
        );

        let (_, r, _) = decode(&[("content_block_delta", "{not json")]);
        assert_eq!(r.unwrap_err().kind(), "protocol");
    }

    #[test]
    fn finish_reasons() {
        for (raw, want) in [
            ("end_turn", FinishReason::Stop),
            ("stop_sequence", FinishReason::Stop),
            ("max_tokens", FinishReason::Length),
            ("tool_use", FinishReason::ToolCalls),
            ("refusal", FinishReason::ContentFilter),
            ("pause_turn", FinishReason::Stop),
        ] {
            assert_eq!(finish_reason(raw), want, "{raw}");
        }
    }

    #[test]
    fn parse_response_blocks_in_order() {
        let body = br#"{"type":"message","content":[
            {"type":"thinking","thinking":"hmm","signature":"sig"},
            {"type":"redacted_thinking","data":"opaque"},
            {"type":"text","text":"A"},
            {"type":"server_tool_use","id":"srv","name":"web_search","input":{"q":1}},
            {"type":"text","text":"B"},
            {"type":"tool_use","id":"toolu_1","name":"f","input":{"x":[1,2]}}],
            "stop_reason":"tool_use",
            "usage":{"input_tokens":3,"cache_read_input_tokens":null,"output_tokens":9}}"#;
        let out = parse_response(body).unwrap();
        assert_eq!(
            out,
            vec![
                Delta::Thinking("hmm".into()),
                Delta::ThinkingSignature("sig".into()),
                Delta::Text("A".into()),
                Delta::Text("B".into()),
                Delta::ToolCall {
                    index: 5,
                    id: Some("toolu_1".into()),
                    name: Some("f".into()),
                    arguments: "{\"x\":[1,2]}".into()
                },
                Delta::Usage(Usage {
                    input_tokens: 3,
                    output_tokens: 9,
                    ..Default::default()
                }),
                Delta::Finish {
                    reason: FinishReason::ToolCalls,
                    raw: "tool_use".into()
                },
            ]
        );
        let e = parse_response(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.kind(), "overloaded");
        assert_eq!(parse_response(b"<html>").unwrap_err().kind(), "protocol");
    }
}
