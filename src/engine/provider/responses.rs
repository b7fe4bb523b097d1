//! The OpenAI Responses API (`POST {base}/responses`).
//!
//! OpenAI's newest reasoning models (o1-pro, o3-pro, gpt-5-pro, the codex
//! models) are served only here, so an `openai` target naming one of them is
//! sent here automatically ([`needs_responses_api`]); a provider of kind
//! `openai-responses` sends every model here.
//!
//! The stream is typed events, not chunks: `response.output_text.delta`,
//! `response.reasoning_summary_text.delta` (thinking),
//! `response.output_item.added` + `response.function_call_arguments.delta`
//! (tool calls, indexed by output item), and a terminal
//! `response.completed` / `response.incomplete` / `response.failed` carrying
//! the whole response with its usage. There is no `[DONE]`.
//!
//! Requests are sent with `store: false`: a comparison is not a
//! conversation to keep on OpenAI's side.

use serde_json::{json, Map, Value};

use super::{
    base_headers, join_url, parse_json, put_header, require_key, snippet, HttpCall, ProviderSpec,
    StreamDecoder,
};
use crate::engine::error::EngineError;
use crate::engine::event::{Delta, FinishReason, Usage};
use crate::engine::request::{ChatRequest, Message, ResponseFormat, Role, ToolChoice};

/// Whether an OpenAI model is served only by the Responses API.
pub fn needs_responses_api(model: &str) -> bool {
    let m = model.rsplit('/').next().unwrap_or(model);
    m.starts_with("o1-pro")
        || m.starts_with("o3-pro")
        || m.starts_with("o3-deep-research")
        || m.starts_with("o4-mini-deep-research")
        || m.starts_with("computer-use")
        || m.contains("codex")
        || (m.starts_with("gpt-5") && m.contains("-pro"))
}

/// Build the request.
pub fn build(
    spec: &ProviderSpec,
    model: &str,
    req: &ChatRequest,
    stream: bool,
) -> Result<HttpCall, EngineError> {
    let key = require_key(spec)?;
    let mut headers = base_headers(spec)?;
    put_header(
        &mut headers,
        "authorization",
        &format!("Bearer {key}"),
        true,
    )?;
    Ok(HttpCall {
        url: join_url(&spec.base_url, "responses"),
        headers,
        body: body(model, req, stream),
    })
}

/// The JSON body. `stop` has no counterpart in this API and is not sent.
pub(crate) fn body(model: &str, req: &ChatRequest, stream: bool) -> Value {
    let mut b = Map::new();
    b.insert("model".into(), json!(model));
    if let Some(system) = req.system_text() {
        b.insert("instructions".into(), json!(system));
    }
    let mut input = Vec::new();
    for m in &req.messages {
        input_items(m, &mut input);
    }
    b.insert("input".into(), Value::Array(input));
    if stream {
        b.insert("stream".into(), json!(true));
    }
    b.insert("store".into(), json!(false));
    if let Some(n) = req.max_tokens {
        b.insert("max_output_tokens".into(), json!(n));
    }
    if let Some(t) = req.temperature {
        b.insert("temperature".into(), f32_json(t));
    }
    if let Some(p) = req.top_p {
        b.insert("top_p".into(), f32_json(p));
    }
    if let Some(r) = req.reasoning {
        b.insert(
            "reasoning".into(),
            json!({"effort": r.effort().as_str(), "summary": "auto"}),
        );
    }
    match &req.response_format {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => {
            b.insert("text".into(), json!({"format": {"type": "json_object"}}));
        }
        ResponseFormat::JsonSchema { name, schema } => {
            b.insert(
                "text".into(),
                json!({"format": {"type": "json_schema", "name": name, "schema": schema, "strict": false}}),
            );
        }
    }
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut f = Map::new();
                f.insert("type".into(), json!("function"));
                f.insert("name".into(), json!(t.name));
                if !t.description.is_empty() {
                    f.insert("description".into(), json!(t.description));
                }
                f.insert("parameters".into(), t.parameters.clone());
                f.insert("strict".into(), json!(false));
                Value::Object(f)
            })
            .collect();
        b.insert("tools".into(), Value::Array(tools));
        let choice = match &req.tool_choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Function(name) => json!({"type": "function", "name": name}),
        };
        b.insert("tool_choice".into(), choice);
    }
    Value::Object(b)
}

/// One message as input items: a user message with its text, files and
/// images; an assistant message and its function calls; a tool result.
fn input_items(m: &Message, out: &mut Vec<Value>) {
    match m.role {
        Role::System => {}
        Role::User => {
            let mut parts = Vec::new();
            let text = m.text_with_files();
            if !text.is_empty() {
                parts.push(json!({"type": "input_text", "text": text}));
            }
            for img in m.images() {
                if let Some(url) = img.data_url() {
                    parts.push(json!({"type": "input_image", "image_url": url, "detail": "auto"}));
                }
            }
            out.push(json!({"role": "user", "content": parts}));
        }
        Role::Assistant => {
            if !m.content.is_empty() {
                out.push(json!({"role": "assistant", "content": m.content}));
            }
            for c in &m.tool_calls {
                let arguments = match &c.arguments {
                    Value::String(s) => s.clone(),
                    Value::Null => "{}".into(),
                    v => v.to_string(),
                };
                out.push(json!({
                    "type": "function_call", "call_id": c.id, "name": c.name, "arguments": arguments,
                }));
            }
        }
        Role::Tool => out.push(json!({
            "type": "function_call_output",
            "call_id": m.tool_call_id.as_deref().unwrap_or(""),
            "output": m.content,
        })),
    }
}

fn f32_json(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

fn count(v: Option<&Value>) -> u64 {
    v.and_then(Value::as_u64).unwrap_or(0)
}

/// The `usage` of a response: `input_tokens` (cached ones included, as ours),
/// `input_tokens_details.cached_tokens`, `output_tokens` (reasoning included)
/// and `output_tokens_details.reasoning_tokens`.
fn usage(u: &Value) -> Option<Usage> {
    let u = u.as_object()?;
    Some(Usage {
        input_tokens: count(u.get("input_tokens")),
        output_tokens: count(u.get("output_tokens")),
        cached_input_tokens: count(
            u.get("input_tokens_details")
                .and_then(|d| d.get("cached_tokens")),
        ),
        cache_creation_input_tokens: 0,
        reasoning_tokens: count(
            u.get("output_tokens_details")
                .and_then(|d| d.get("reasoning_tokens")),
        ),
        reported_cost_usd: None,
    })
}

/// The error message of an `error` object or event.
fn error_message(e: &Value) -> String {
    let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
    match e.get("code").and_then(Value::as_str) {
        Some(code) if !code.is_empty() && !msg.is_empty() => format!("{code}: {msg}"),
        _ if !msg.is_empty() => msg.to_string(),
        _ => snippet(&e.to_string()),
    }
}

/// The finish of a terminal response object: its status, why it is
/// incomplete, and whether it called functions.
fn finish_of(resp: &Value) -> Delta {
    let status = resp
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("completed");
    let incomplete = resp
        .get("incomplete_details")
        .and_then(|d| d.get("reason"))
        .and_then(Value::as_str);
    let called = resp
        .get("output")
        .and_then(Value::as_array)
        .is_some_and(|o| {
            o.iter()
                .any(|i| i.get("type").and_then(Value::as_str) == Some("function_call"))
        });
    let (reason, raw) = match (status, incomplete) {
        (_, Some(r @ "max_output_tokens")) => (FinishReason::Length, r),
        (_, Some(r @ "content_filter")) => (FinishReason::ContentFilter, r),
        ("incomplete", r) => (FinishReason::Length, r.unwrap_or("incomplete")),
        (s, _) if called => (FinishReason::ToolCalls, s),
        (s, _) => (FinishReason::Stop, s),
    };
    Delta::Finish {
        reason,
        raw: raw.to_string(),
    }
}

/// Decodes the typed SSE events of one streamed response.
#[derive(Debug, Default)]
pub struct Decoder {
    done: bool,
}

impl StreamDecoder for Decoder {
    fn frame(&mut self, event: &str, data: &str, out: &mut Vec<Delta>) -> Result<(), EngineError> {
        let data = data.trim();
        if self.done || data.is_empty() || data == "[DONE]" {
            return Ok(());
        }
        let v = parse_json("Responses stream", data)?;
        // The type is in the JSON; the SSE event name repeats it.
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(event)
            .to_string();
        let index = v.get("output_index").and_then(Value::as_u64).unwrap_or(0) as usize;
        let delta = || {
            v.get("delta")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        match kind.as_str() {
            "response.output_text.delta" => {
                let d = delta();
                if !d.is_empty() {
                    out.push(Delta::Text(d));
                }
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                let d = delta();
                if !d.is_empty() {
                    out.push(Delta::Thinking(d));
                }
            }
            // Separate summary parts as paragraphs.
            "response.reasoning_summary_part.added"
                if v.get("summary_index").and_then(Value::as_u64).unwrap_or(0) > 0 =>
            {
                out.push(Delta::Thinking("\n\n".into()));
            }
            "response.refusal.delta" => {
                let d = delta();
                if !d.is_empty() {
                    out.push(Delta::Refusal(d));
                }
            }
            "response.output_item.added" => {
                let item = v.get("item").unwrap_or(&Value::Null);
                if item.get("type").and_then(Value::as_str) == Some("function_call") {
                    let s = |k: &str| item.get(k).and_then(Value::as_str).map(str::to_string);
                    out.push(Delta::ToolCall {
                        index,
                        id: s("call_id"),
                        name: s("name"),
                        arguments: s("arguments").unwrap_or_default(),
                    });
                }
            }
            "response.function_call_arguments.delta" => {
                let d = delta();
                if !d.is_empty() {
                    out.push(Delta::ToolCall {
                        index,
                        id: None,
                        name: None,
                        arguments: d,
                    });
                }
            }
            "response.completed" | "response.incomplete" => {
                let resp = v.get("response").unwrap_or(&Value::Null);
                if let Some(u) = resp.get("usage").and_then(usage) {
                    out.push(Delta::Usage(u));
                }
                out.push(finish_of(resp));
                self.done = true;
            }
            "response.failed" => {
                self.done = true;
                let err = v
                    .get("response")
                    .and_then(|r| r.get("error"))
                    .filter(|e| !e.is_null());
                return Err(EngineError::InStream {
                    message: err.map_or_else(|| "response failed".to_string(), error_message),
                });
            }
            "error" => {
                self.done = true;
                let e = v.get("error").filter(|e| e.is_object()).unwrap_or(&v);
                return Err(EngineError::InStream {
                    message: error_message(e),
                });
            }
            // created, in_progress, content_part.*, *.done, annotations...
            _ => {}
        }
        Ok(())
    }

    fn is_done(&self) -> bool {
        self.done
    }
}

/// Parse a whole (non-streamed) Response object.
pub fn parse_response(body: &[u8]) -> Result<Vec<Delta>, EngineError> {
    let text = String::from_utf8_lossy(body);
    let v = parse_json("Responses response", &text)?;
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        return Err(EngineError::InStream {
            message: error_message(e),
        });
    }
    let Some(output) = v.get("output").and_then(Value::as_array) else {
        return Err(EngineError::Protocol {
            message: format!("response has no output: {}", snippet(&text)),
        });
    };
    let mut out = Vec::new();
    for (index, item) in output.iter().enumerate() {
        match item.get("type").and_then(Value::as_str) {
            Some("reasoning") => {
                let parts = item.get("summary").and_then(Value::as_array);
                let texts: Vec<&str> = parts
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect();
                if !texts.is_empty() {
                    out.push(Delta::Thinking(texts.join("\n\n")));
                }
            }
            Some("message") => {
                for c in item
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    match c.get("type").and_then(Value::as_str) {
                        Some("output_text") => {
                            if let Some(t) = c.get("text").and_then(Value::as_str) {
                                out.push(Delta::Text(t.to_string()));
                            }
                        }
                        Some("refusal") => {
                            if let Some(t) = c.get("refusal").and_then(Value::as_str) {
                                out.push(Delta::Refusal(t.to_string()));
                            }
                        }
                        _ => {}
                    }
                }
            }
            Some("function_call") => {
                let s = |k: &str| {
                    item.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                out.push(Delta::ToolCall {
                    index,
                    id: Some(s("call_id")),
                    name: Some(s("name")),
                    arguments: s("arguments"),
                });
            }
            _ => {}
        }
    }
    if let Some(u) = v.get("usage").and_then(usage) {
        out.push(Delta::Usage(u));
    }
    out.push(finish_of(&v));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::event::Accumulator;
    use crate::engine::provider::{ProviderKind, Secret};
    use crate::engine::request::{Reasoning, ReasoningEffort, Tool, ToolCallRef};

    fn spec() -> ProviderSpec {
        let mut s = ProviderSpec::new("openai", ProviderKind::Openai);
        s.api_key = Some(Secret::new("sk-test-responses"));
        s
    }

    #[test]
    fn models_that_need_it() {
        for m in [
            "o1-pro",
            "o3-pro-2025-06-10",
            "gpt-5-pro",
            "gpt-5.1-codex",
            "codex-mini-latest",
            "gpt-5-codex",
        ] {
            assert!(needs_responses_api(m), "{m}");
        }
        for m in ["gpt-4o-mini", "o3", "o4-mini", "gpt-5", "gpt-5-mini"] {
            assert!(!needs_responses_api(m), "{m}");
        }
        // Dispatch: an openai target naming such a model goes to /responses.
        let call = crate::engine::provider::build_call(
            &spec(),
            "o3-pro",
            &ChatRequest::from_prompt("x"),
            true,
        )
        .unwrap();
        assert_eq!(call.url, "https://api.openai.com/v1/responses");
        let call = crate::engine::provider::build_call(
            &spec(),
            "o3",
            &ChatRequest::from_prompt("x"),
            true,
        )
        .unwrap();
        assert!(call.url.ends_with("/chat/completions"));
    }

    /// The documented request shape: `instructions`, `input` items
    /// (`input_text`, `input_image`, `function_call`,
    /// `function_call_output`), `max_output_tokens`, `reasoning.effort`,
    /// `text.format`, flat function tools and `tool_choice`.
    #[test]
    fn request_body_shape() {
        let mut user = Message::user("What is in this picture?");
        user.attachments.push(
            crate::engine::attachment::image_from_bytes(
                "dot.png",
                crate::engine::attachment::tests_png(),
            )
            .unwrap(),
        );
        let mut asst = Message::assistant("");
        asst.tool_calls.push(ToolCallRef {
            id: "call_1".into(),
            name: "lookup".into(),
            arguments: json!({"q": "dot"}),
        });
        let req = ChatRequest {
            messages: vec![
                Message::system("Be brief."),
                user,
                asst,
                Message::tool_result("call_1", "lookup", "a dot"),
            ],
            max_tokens: Some(300),
            stop: vec!["END".into()],
            reasoning: Some(Reasoning::Effort(ReasoningEffort::High)),
            response_format: ResponseFormat::JsonSchema {
                name: "answer".into(),
                schema: json!({"type": "object"}),
            },
            tools: vec![Tool {
                name: "lookup".into(),
                description: "Look up".into(),
                parameters: json!({"type": "object", "properties": {"q": {"type": "string"}}}),
            }],
            tool_choice: ToolChoice::Function("lookup".into()),
            ..Default::default()
        };
        let call = build(&spec(), "o3-pro", &req, true).unwrap();
        assert_eq!(call.headers["authorization"], "Bearer sk-test-responses");
        assert!(call.headers["authorization"].is_sensitive());
        let b = call.body;
        let png = b["input"][0]["content"][1]["image_url"].as_str().unwrap();
        assert!(png.starts_with("data:image/png;base64,iVBOR"));
        assert_eq!(
            b,
            json!({
                "model": "o3-pro",
                "instructions": "Be brief.",
                "input": [
                    {"role": "user", "content": [
                        {"type": "input_text", "text": "What is in this picture?"},
                        {"type": "input_image", "image_url": png, "detail": "auto"}]},
                    {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{\"q\":\"dot\"}"},
                    {"type": "function_call_output", "call_id": "call_1", "output": "a dot"},
                ],
                "stream": true,
                "store": false,
                "max_output_tokens": 300,
                "reasoning": {"effort": "high", "summary": "auto"},
                "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": false}},
                "tools": [{"type": "function", "name": "lookup", "description": "Look up",
                           "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}, "strict": false}],
                "tool_choice": {"type": "function", "name": "lookup"},
            })
        );
    }

    fn decode(frames: &[(&str, &str)]) -> (Vec<Delta>, Result<(), EngineError>, bool) {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        let mut res = Ok(());
        for (ev, data) in frames {
            res = d.frame(ev, data, &mut out);
            if res.is_err() {
                break;
            }
        }
        (out, res, d.is_done())
    }

    #[test]
    fn stream_text_reasoning_tools_and_usage() {
        let (out, res, done) = decode(&[
            (
                "response.created",
                r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","status":"in_progress","output":[]}}"#,
            ),
            (
                "response.reasoning_summary_part.added",
                r#"{"type":"response.reasoning_summary_part.added","output_index":0,"summary_index":0,"part":{"type":"summary_text","text":""}}"#,
            ),
            (
                "response.reasoning_summary_text.delta",
                r#"{"type":"response.reasoning_summary_text.delta","item_id":"rs_1","output_index":0,"summary_index":0,"delta":"**Checking** the weather"}"#,
            ),
            (
                "response.output_item.added",
                r#"{"type":"response.output_item.added","output_index":1,"item":{"type":"function_call","id":"fc_1","call_id":"call_9","name":"get_weather","arguments":"","status":"in_progress"}}"#,
            ),
            (
                "response.function_call_arguments.delta",
                r#"{"type":"response.function_call_arguments.delta","item_id":"fc_1","output_index":1,"delta":"{\"city\":"}"#,
            ),
            (
                "response.function_call_arguments.delta",
                r#"{"type":"response.function_call_arguments.delta","item_id":"fc_1","output_index":1,"delta":"\"Paris\"}"}"#,
            ),
            (
                "response.output_text.delta",
                r#"{"type":"response.output_text.delta","item_id":"msg_1","output_index":2,"content_index":0,"delta":"Sunny"}"#,
            ),
            (
                "response.completed",
                r#"{"type":"response.completed","response":{"id":"resp_1","status":"completed","output":[{"type":"reasoning"},{"type":"function_call","call_id":"call_9"}],"usage":{"input_tokens":120,"input_tokens_details":{"cached_tokens":64},"output_tokens":300,"output_tokens_details":{"reasoning_tokens":256},"total_tokens":420}}}"#,
            ),
        ]);
        res.unwrap();
        assert!(done);
        let mut acc = Accumulator::default();
        for d in &out {
            acc.push(d);
        }
        let c = acc.finish();
        assert_eq!(c.thinking, "**Checking** the weather");
        assert_eq!(c.text, "Sunny");
        assert_eq!(c.tool_calls.len(), 1);
        assert_eq!(
            (
                c.tool_calls[0].id.as_str(),
                c.tool_calls[0].name.as_str(),
                c.tool_calls[0].arguments.as_str()
            ),
            ("call_9", "get_weather", r#"{"city":"Paris"}"#)
        );
        assert_eq!(c.finish_reason, FinishReason::ToolCalls);
        assert_eq!(
            c.usage,
            Usage {
                input_tokens: 120,
                output_tokens: 300,
                cached_input_tokens: 64,
                reasoning_tokens: 256,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn incomplete_failed_and_error_events() {
        let (out, res, done) = decode(&[(
            "response.incomplete",
            r#"{"type":"response.incomplete","response":{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"output":[],"usage":{"input_tokens":5,"output_tokens":16}}}"#,
        )]);
        res.unwrap();
        assert!(done);
        assert_eq!(
            out.last(),
            Some(&Delta::Finish {
                reason: FinishReason::Length,
                raw: "max_output_tokens".into()
            })
        );
        let (_, res, _) = decode(&[(
            "response.failed",
            r#"{"type":"response.failed","response":{"status":"failed","error":{"code":"server_error","message":"The model failed"}}}"#,
        )]);
        assert_eq!(
            res.unwrap_err().to_string(),
            "provider error in stream: server_error: The model failed"
        );
        let (_, res, _) = decode(&[(
            "error",
            r#"{"type":"error","code":"rate_limit_exceeded","message":"Slow down","param":null}"#,
        )]);
        assert!(res
            .unwrap_err()
            .to_string()
            .contains("rate_limit_exceeded: Slow down"));
        let (_, res, _) = decode(&[("message", "{oops")]);
        assert_eq!(res.unwrap_err().kind(), "protocol");
    }

    #[test]
    fn whole_response() {
        let body = br#"{"id":"resp_2","object":"response","status":"completed","output":[
            {"type":"reasoning","id":"rs_1","summary":[{"type":"summary_text","text":"Thought A"},{"type":"summary_text","text":"Thought B"}]},
            {"type":"message","id":"msg_1","role":"assistant","content":[{"type":"output_text","text":"Hello.","annotations":[]}]}
        ],"usage":{"input_tokens":10,"input_tokens_details":{"cached_tokens":0},"output_tokens":20,"output_tokens_details":{"reasoning_tokens":12},"total_tokens":30}}"#;
        let out = parse_response(body).unwrap();
        assert_eq!(out[0], Delta::Thinking("Thought A\n\nThought B".into()));
        assert_eq!(out[1], Delta::Text("Hello.".into()));
        assert!(matches!(
            out[2],
            Delta::Usage(Usage {
                reasoning_tokens: 12,
                output_tokens: 20,
                ..
            })
        ));
        assert_eq!(
            out[3],
            Delta::Finish {
                reason: FinishReason::Stop,
                raw: "completed".into()
            }
        );
        let e =
            parse_response(br#"{"error":{"code":"invalid_prompt","message":"no"},"output":[]}"#)
                .unwrap_err();
        assert!(e.to_string().contains("invalid_prompt"));
        assert_eq!(parse_response(b"{}").unwrap_err().kind(), "protocol");
    }
}
