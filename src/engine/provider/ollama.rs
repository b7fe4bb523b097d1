//! Ollama's native API: `POST {base_url}/api/chat`.
//!
//! Streams are NDJSON, one object per line, ending with a `done: true` line
//! that carries the counts and `done_reason`. Ollama streams by default, so
//! `stream` is always sent explicitly. Tool-call arguments are JSON objects
//! on the wire (not strings), and each call arrives complete. The decoder
//! also reads `/api/generate` lines (`response` instead of
//! `message.content`), since both endpoints share the final-line shape.

use serde_json::{json, Map, Value};

use super::{base_headers, join_url, parse_json, put_header, snippet};
use super::{HttpCall, ProviderSpec, StreamDecoder};
use crate::engine::error::EngineError;
use crate::engine::event::{Delta, FinishReason, Usage};
use crate::engine::request::{ChatRequest, ResponseFormat, Role, ToolChoice};

/// Build the HTTP request. Ollama needs no key; one is sent as a Bearer
/// token when configured, for authenticating proxies in front of it.
pub fn build(
    spec: &ProviderSpec,
    model: &str,
    req: &ChatRequest,
    stream: bool,
) -> Result<HttpCall, EngineError> {
    let mut headers = base_headers(spec)?;
    if let Some(key) = spec.api_key.as_ref().filter(|k| !k.expose().is_empty()) {
        put_header(
            &mut headers,
            "authorization",
            &format!("Bearer {}", key.expose()),
            true,
        )?;
    }
    Ok(HttpCall {
        url: join_url(&spec.base_url, "api/chat"),
        headers,
        body: body(model, req, stream),
    })
}

fn body(model: &str, req: &ChatRequest, stream: bool) -> Value {
    let mut b = Map::new();
    b.insert("model".into(), json!(model));
    b.insert(
        "messages".into(),
        Value::Array(req.messages.iter().map(message).collect()),
    );
    b.insert("stream".into(), json!(stream));
    let mut options = Map::new();
    if let Some(t) = req.temperature {
        options.insert("temperature".into(), f32_json(t));
    }
    if let Some(n) = req.max_tokens {
        options.insert("num_predict".into(), json!(n));
    }
    if let Some(p) = req.top_p {
        options.insert("top_p".into(), f32_json(p));
    }
    if !req.stop.is_empty() {
        options.insert("stop".into(), json!(req.stop));
    }
    if !options.is_empty() {
        b.insert("options".into(), Value::Object(options));
    }
    match &req.response_format {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => {
            b.insert("format".into(), json!("json"));
        }
        ResponseFormat::JsonSchema { schema, .. } => {
            b.insert("format".into(), schema.clone());
        }
    }
    // Ollama has no tool_choice: "none" sends no tools, a named function
    // sends only that one; "required" cannot be enforced.
    let tools: Vec<&crate::engine::request::Tool> = match &req.tool_choice {
        ToolChoice::None => Vec::new(),
        ToolChoice::Function(name) => req.tools.iter().filter(|t| &t.name == name).collect(),
        ToolChoice::Auto | ToolChoice::Required => req.tools.iter().collect(),
    };
    if !tools.is_empty() {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    }
                })
            })
            .collect();
        b.insert("tools".into(), Value::Array(tools));
    }
    if let Some(r) = req.reasoning {
        // gpt-oss ignores a boolean and takes an effort level instead.
        let think = if model.contains("gpt-oss") {
            json!(r.effort().as_str())
        } else {
            json!(true)
        };
        b.insert("think".into(), think);
    }
    Value::Object(b)
}

/// An `f32` setting as the JSON number it was written as (0.9, not
/// 0.8999999761581421, which is what widening to f64 gives).
fn f32_json(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

fn message(m: &crate::engine::request::Message) -> Value {
    let role = match m.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    let mut o = Map::new();
    o.insert("role".into(), json!(role));
    o.insert("content".into(), json!(m.text_with_files()));
    // Vision models take images as bare base64 strings beside the text.
    let images: Vec<Value> = m
        .images()
        .filter_map(|a| match &a.data {
            crate::engine::request::AttachmentData::Image { base64, .. } => Some(json!(base64)),
            crate::engine::request::AttachmentData::Text { .. } => None,
        })
        .collect();
    if !images.is_empty() {
        o.insert("images".into(), Value::Array(images));
    }
    if !m.tool_calls.is_empty() {
        let calls: Vec<Value> = m
            .tool_calls
            .iter()
            .map(|c| {
                let args = match &c.arguments {
                    Value::Null => json!({}),
                    v => v.clone(),
                };
                let mut call = Map::new();
                if !c.id.is_empty() {
                    call.insert("id".into(), json!(c.id));
                }
                call.insert(
                    "function".into(),
                    json!({ "name": c.name, "arguments": args }),
                );
                Value::Object(call)
            })
            .collect();
        o.insert("tool_calls".into(), Value::Array(calls));
    }
    if m.role == Role::Tool {
        if let Some(n) = m.name.as_deref().filter(|n| !n.is_empty()) {
            o.insert("tool_name".into(), json!(n));
        }
        if let Some(id) = m.tool_call_id.as_deref().filter(|s| !s.is_empty()) {
            o.insert("tool_call_id".into(), json!(id));
        }
    }
    Value::Object(o)
}

/// Decodes `/api/chat` (and `/api/generate`) NDJSON lines into deltas.
#[derive(Debug, Default)]
pub struct Decoder {
    done: bool,
    /// Tool calls seen so far: the index of the next one; non-zero turns a
    /// `stop` into "tool calls".
    calls: usize,
}

impl Decoder {
    fn object(&mut self, v: &Value, out: &mut Vec<Delta>) -> Result<(), EngineError> {
        if let Some(err) = v.get("error") {
            let message = match err {
                Value::String(s) => s.clone(),
                other => other
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| snippet(&other.to_string())),
            };
            return Err(EngineError::InStream { message });
        }
        let msg = v.get("message");
        let field = |k: &str| {
            msg.and_then(|m| m.get(k))
                .or_else(|| v.get(k))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        if let Some(t) = field("thinking") {
            out.push(Delta::Thinking(t.to_string()));
        }
        let content = msg
            .and_then(|m| m.get("content"))
            .or_else(|| v.get("response"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        if let Some(t) = content {
            out.push(Delta::Text(t.to_string()));
        }
        let calls = msg
            .and_then(|m| m.get("tool_calls"))
            .and_then(Value::as_array);
        for call in calls.into_iter().flatten() {
            let f = call.get("function").unwrap_or(&Value::Null);
            let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
            let arguments = match f.get("arguments") {
                None | Some(Value::Null) => "{}".to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(a) => a.to_string(),
            };
            let id = call
                .get("id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            // Each call arrives whole; a running index keeps them apart even
            // where `function.index` restarts at 0 on every line.
            out.push(Delta::ToolCall {
                index: self.calls,
                id,
                name: Some(name.to_string()),
                arguments,
            });
            self.calls += 1;
        }
        if v.get("done").and_then(Value::as_bool) == Some(true) {
            let count = |k: &str| v.get(k).and_then(Value::as_u64);
            let (input, output) = (count("prompt_eval_count"), count("eval_count"));
            if input.is_some() || output.is_some() {
                out.push(Delta::Usage(Usage {
                    input_tokens: input.unwrap_or(0),
                    output_tokens: output.unwrap_or(0),
                    ..Usage::default()
                }));
            }
            let raw = v
                .get("done_reason")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let reason = match raw {
                "length" => FinishReason::Length,
                _ if self.calls > 0 => FinishReason::ToolCalls,
                _ => FinishReason::Stop,
            };
            out.push(Delta::Finish {
                reason,
                raw: raw.to_string(),
            });
            self.done = true;
        }
        Ok(())
    }
}

impl StreamDecoder for Decoder {
    fn frame(&mut self, _event: &str, data: &str, out: &mut Vec<Delta>) -> Result<(), EngineError> {
        if data.trim().is_empty() {
            return Ok(());
        }
        let v = parse_json("Ollama stream", data)?;
        self.object(&v, out)
    }

    fn is_done(&self) -> bool {
        self.done
    }
}

/// Parse a non-streamed body: one JSON object (`/api/chat` or
/// `/api/generate`). A body that is NDJSON after all (a proxy that ignored
/// `"stream": false`) is decoded line by line.
pub fn parse_response(body: &[u8]) -> Result<Vec<Delta>, EngineError> {
    let text = String::from_utf8_lossy(body);
    let mut d = Decoder::default();
    let mut out = Vec::new();
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(v) if v.is_object() => d.object(&v, &mut out)?,
        Ok(_) => {
            return Err(EngineError::Protocol {
                message: format!("unexpected Ollama response: {}", snippet(&text)),
            })
        }
        Err(_) => {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                d.frame("", line, &mut out)?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::provider::{ProviderKind, Secret};
    use crate::engine::request::{Message, Reasoning, ReasoningEffort, Tool, ToolCallRef};

    fn spec() -> ProviderSpec {
        let mut s = ProviderSpec::new("ollama", ProviderKind::Ollama);
        s.base_url = "http://localhost:11434/".into();
        s
    }

    #[test]
    fn url_stream_flag_and_no_auth() {
        let req = ChatRequest::from_prompt("hi");
        for stream in [true, false] {
            let c = build(&spec(), "llama3.2", &req, stream).unwrap();
            assert_eq!(c.url, "http://localhost:11434/api/chat");
            assert!(c.headers.get("authorization").is_none());
            assert_eq!(
                c.body,
                json!({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
            );
        }
    }

    #[test]
    fn optional_bearer_is_sensitive() {
        let mut s = spec();
        s.api_key = Some(Secret::new("tok"));
        let c = build(&s, "m", &ChatRequest::from_prompt("x"), true).unwrap();
        let h = c.headers.get("authorization").unwrap();
        assert!(h.is_sensitive());
        assert_eq!(h.to_str().unwrap(), "Bearer tok");
        s.api_key = Some(Secret::new(""));
        let c = build(&s, "m", &ChatRequest::from_prompt("x"), true).unwrap();
        assert!(c.headers.get("authorization").is_none());
    }

    #[test]
    fn body_options_format_tools_think() {
        let mut req = ChatRequest::from_prompt("add 2 and 3");
        req.messages.insert(0, Message::system("sys"));
        let mut asst = Message::assistant("");
        asst.tool_calls = vec![ToolCallRef {
            id: "call_1".into(),
            name: "add".into(),
            arguments: json!({"a": 2, "b": 3}),
        }];
        req.messages.push(asst);
        req.messages
            .push(Message::tool_result("call_1", "add", "5"));
        req.temperature = Some(0.0);
        req.max_tokens = Some(50);
        req.top_p = Some(0.9);
        req.stop = vec!["\n\n".into()];
        req.response_format = ResponseFormat::JsonObject;
        req.tools = vec![Tool {
            name: "add".into(),
            description: "Add".into(),
            parameters: json!({"type": "object", "properties": {"a": {"type": "integer"}}}),
        }];
        req.reasoning = Some(Reasoning::Effort(ReasoningEffort::High));
        let b = build(&spec(), "qwen3", &req, false).unwrap().body;
        assert_eq!(
            b["messages"],
            json!([
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "add 2 and 3"},
                {"role": "assistant", "content": "",
                 "tool_calls": [{"id": "call_1", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]},
                {"role": "tool", "content": "5", "tool_name": "add", "tool_call_id": "call_1"}
            ])
        );
        assert_eq!(b["stream"], json!(false));
        assert_eq!(
            b["options"],
            json!({"temperature": 0.0, "num_predict": 50, "top_p": 0.9, "stop": ["\n\n"]})
        );
        assert_eq!(b["format"], "json");
        assert_eq!(b["think"], json!(true));
        assert_eq!(
            b["tools"],
            json!([{"type": "function", "function": {"name": "add", "description": "Add",
                "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}])
        );
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
        req.response_format = ResponseFormat::JsonSchema {
            name: "n".into(),
            schema: schema.clone(),
        };
        req.tool_choice = ToolChoice::None;
        let b = build(&spec(), "gpt-oss:20b", &req, true).unwrap().body;
        assert_eq!(b["format"], schema);
        assert!(b.get("tools").is_none());
        assert_eq!(b["think"], "high");
    }

    #[test]
    fn decoder_chat_generate_and_tools() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for l in [
            r#"{"message":{"role":"assistant","content":"","thinking":"hmm"},"done":false}"#,
            r#"{"message":{"role":"assistant","content":"Hi"},"done":false}"#,
            r#"{"message":{"role":"assistant","content":"","tool_calls":[{"function":{"index":0,"name":"f","arguments":{"x":1}}}]},"done":false}"#,
            r#"{"message":{"role":"assistant","content":"","tool_calls":[{"id":"c2","function":{"index":0,"name":"g","arguments":{}}}]},"done":false}"#,
            r#"{"response":" there","done":false}"#,
            r#"{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":3,"eval_count":4}"#,
        ] {
            assert!(!d.is_done());
            d.frame("", l, &mut out).unwrap();
        }
        assert!(d.is_done());
        assert_eq!(
            out,
            vec![
                Delta::Thinking("hmm".into()),
                Delta::Text("Hi".into()),
                Delta::ToolCall {
                    index: 0,
                    id: None,
                    name: Some("f".into()),
                    arguments: r#"{"x":1}"#.into()
                },
                Delta::ToolCall {
                    index: 1,
                    id: Some("c2".into()),
                    name: Some("g".into()),
                    arguments: "{}".into()
                },
                Delta::Text(" there".into()),
                Delta::Usage(Usage {
                    input_tokens: 3,
                    output_tokens: 4,
                    ..Usage::default()
                }),
                Delta::Finish {
                    reason: FinishReason::ToolCalls,
                    raw: "stop".into()
                },
            ]
        );
    }

    #[test]
    fn decoder_done_reasons_and_errors() {
        for (word, want) in [
            ("stop", FinishReason::Stop),
            ("length", FinishReason::Length),
            ("load", FinishReason::Stop),
        ] {
            let mut d = Decoder::default();
            let mut out = Vec::new();
            d.frame(
                "",
                &format!(r#"{{"done":true,"done_reason":"{word}"}}"#),
                &mut out,
            )
            .unwrap();
            assert_eq!(
                out,
                vec![Delta::Finish {
                    reason: want,
                    raw: word.into()
                }]
            );
        }
        let mut d = Decoder::default();
        let e = d
            .frame(
                "",
                r#"{"error":"model runner has unexpectedly stopped"}"#,
                &mut Vec::new(),
            )
            .unwrap_err();
        assert_eq!(
            e,
            EngineError::InStream {
                message: "model runner has unexpectedly stopped".into()
            }
        );
        assert_eq!(
            d.frame("", "nope", &mut Vec::new()).unwrap_err().kind(),
            "protocol"
        );
    }

    #[test]
    fn parse_response_object_or_lines() {
        let one = br#"{"model":"m","response":"Hello","done":true,"done_reason":"stop","context":[1,2],"prompt_eval_count":1,"eval_count":2}"#;
        let want = vec![
            Delta::Text("Hello".into()),
            Delta::Usage(Usage {
                input_tokens: 1,
                output_tokens: 2,
                ..Usage::default()
            }),
            Delta::Finish {
                reason: FinishReason::Stop,
                raw: "stop".into(),
            },
        ];
        assert_eq!(parse_response(one).unwrap(), want);
        let lines = b"{\"response\":\"Hel\",\"done\":false}\n{\"response\":\"lo\",\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":1,\"eval_count\":2}\n";
        let mut got = parse_response(lines).unwrap();
        assert_eq!(got.remove(0), Delta::Text("Hel".into()));
        assert_eq!(got[0], Delta::Text("lo".into()));
        assert!(parse_response(b"[1]").is_err());
    }
}
