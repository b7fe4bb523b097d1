//! Google Gemini `generateContent` / `streamGenerateContent`.
//!
//! Requests go to `{base_url}/v1beta/models/{model}:generateContent`, or
//! `:streamGenerateContent?alt=sse` when streaming. The key travels in the
//! `x-goog-api-key` header, never in the URL, so it cannot leak into logs or
//! error messages that quote a URL.
//!
//! Every streamed event (and every element of the JSON array that
//! `streamGenerateContent` returns without `alt=sse`) is a complete
//! `GenerateContentResponse`: parts arrive whole, function calls arrive
//! complete, and `usageMetadata` is cumulative. One decoder therefore serves
//! the streamed and the non-streamed paths.

use serde_json::{json, Map, Value};

use super::{base_headers, join_url, parse_json, put_header, require_key, snippet};
use super::{HttpCall, ProviderSpec, StreamDecoder};
use crate::engine::error::EngineError;
use crate::engine::event::{Delta, FinishReason, Usage};
use crate::engine::request::{ChatRequest, Message, ResponseFormat, Role, ToolChoice};

/// The dummy thought signature Google documents for function calls the
/// model did not produce in this conversation (or whose signature was not
/// kept). Gemini 3 models reject a history whose function calls carry no
/// signature; our [`crate::engine::request::ToolCallRef`] keeps none, so the
/// first call of each model turn gets this one.
const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

/// Build the HTTP request: URL, `x-goog-api-key` header and JSON body.
pub fn build(
    spec: &ProviderSpec,
    model: &str,
    req: &ChatRequest,
    stream: bool,
) -> Result<HttpCall, EngineError> {
    let key = require_key(spec)?;
    // Accept the resource name form (`models/gemini-2.5-flash`) too.
    let model = model.strip_prefix("models/").unwrap_or(model);
    if model.is_empty() {
        return Err(EngineError::Config {
            message: "empty Gemini model name".into(),
        });
    }
    let path = if stream {
        format!("v1beta/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("v1beta/models/{model}:generateContent")
    };
    let url = join_url(&spec.base_url, &path);
    let mut headers = base_headers(spec)?;
    put_header(&mut headers, "x-goog-api-key", key, true)?;
    Ok(HttpCall {
        url,
        headers,
        body: body(model, req),
    })
}

/// The `GenerateContentRequest` JSON.
fn body(model: &str, req: &ChatRequest) -> Value {
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents(&req.messages)));
    if let Some(system) = req.system_text() {
        body.insert(
            "systemInstruction".into(),
            json!({ "parts": [{ "text": system }] }),
        );
    }
    let config = generation_config(model, req);
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    // With tool_choice None the declarations stay (mode NONE forbids calls)
    // so that a history holding earlier calls remains valid.
    if !req.tools.is_empty() {
        let decls: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut d = Map::new();
                d.insert("name".into(), json!(t.name));
                if !t.description.is_empty() {
                    d.insert("description".into(), json!(t.description));
                }
                if let Some(params) = function_parameters(&t.parameters) {
                    d.insert("parameters".into(), params);
                }
                Value::Object(d)
            })
            .collect();
        body.insert("tools".into(), json!([{ "functionDeclarations": decls }]));
        let fcc = match &req.tool_choice {
            ToolChoice::Auto => json!({ "mode": "AUTO" }),
            ToolChoice::None => json!({ "mode": "NONE" }),
            ToolChoice::Required => json!({ "mode": "ANY" }),
            ToolChoice::Function(name) => {
                json!({ "mode": "ANY", "allowedFunctionNames": [name] })
            }
        };
        body.insert("toolConfig".into(), json!({ "functionCallingConfig": fcc }));
    }
    Value::Object(body)
}

/// Messages as Gemini `contents`: roles `user` and `model`; system messages
/// go to `systemInstruction` instead; tool results are `user` parts of
/// `functionResponse`. Adjacent messages of the same role are merged into
/// one content, so the answers to parallel calls share one turn, as Gemini
/// expects, and turns alternate.
fn contents(messages: &[Message]) -> Vec<Value> {
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let (role, parts) = match m.role {
            Role::System => continue,
            Role::User => {
                let text = m.text_with_files();
                let mut parts = Vec::new();
                // An image alone needs no (empty) text part beside it.
                if !text.is_empty() || m.images().next().is_none() {
                    parts.push(json!({ "text": text }));
                }
                for a in m.images() {
                    if let crate::engine::request::AttachmentData::Image {
                        media_type,
                        base64,
                        ..
                    } = &a.data
                    {
                        parts.push(
                            json!({ "inlineData": { "mimeType": media_type, "data": base64 } }),
                        );
                    }
                }
                ("user", parts)
            }
            Role::Assistant => ("model", model_parts(m)),
            Role::Tool => {
                let mut fr = Map::new();
                fr.insert("name".into(), json!(tool_name(messages, i)));
                fr.insert("response".into(), json!({ "content": m.content }));
                if let Some(id) = m.tool_call_id.as_deref().filter(|s| !s.is_empty()) {
                    fr.insert("id".into(), json!(id));
                }
                (
                    "user",
                    vec![json!({ "functionResponse": Value::Object(fr) })],
                )
            }
        };
        match turns.last_mut() {
            Some((r, prev)) if *r == role => prev.extend(parts),
            _ => turns.push((role, parts)),
        }
    }
    turns
        .into_iter()
        .map(|(role, parts)| json!({ "role": role, "parts": parts }))
        .collect()
}

/// An assistant message as `model` parts: its text, then its function calls.
fn model_parts(m: &Message) -> Vec<Value> {
    let mut parts = Vec::new();
    if !m.content.is_empty() {
        parts.push(json!({ "text": m.content }));
    }
    for (n, call) in m.tool_calls.iter().enumerate() {
        let mut fc = Map::new();
        fc.insert("name".into(), json!(call.name));
        let args = match &call.arguments {
            Value::Null => json!({}),
            v => v.clone(),
        };
        fc.insert("args".into(), args);
        if !call.id.is_empty() {
            fc.insert("id".into(), json!(call.id));
        }
        let mut part = Map::new();
        part.insert("functionCall".into(), Value::Object(fc));
        if n == 0 {
            // The signature Gemini gave this turn, when it was kept.
            let sig = m
                .thinking
                .iter()
                .map(|b| b.signature.as_str())
                .find(|s| !s.is_empty())
                .unwrap_or(SKIP_SIGNATURE);
            part.insert("thoughtSignature".into(), json!(sig));
        }
        parts.push(Value::Object(part));
    }
    if parts.is_empty() {
        parts.push(json!({ "text": "" }));
    }
    parts
}

/// The function name a tool result answers: its own `name`, else the name
/// of the earlier call with the same id.
fn tool_name(messages: &[Message], i: usize) -> String {
    let m = &messages[i];
    if let Some(n) = m.name.as_deref().filter(|n| !n.is_empty()) {
        return n.to_string();
    }
    if let Some(id) = m.tool_call_id.as_deref() {
        for prev in messages[..i].iter().rev() {
            if let Some(c) = prev.tool_calls.iter().find(|c| c.id == id) {
                return c.name.clone();
            }
        }
    }
    String::new()
}

fn generation_config(model: &str, req: &ChatRequest) -> Map<String, Value> {
    let mut c = Map::new();
    if let Some(t) = req.temperature {
        c.insert("temperature".into(), f32_json(t));
    }
    if let Some(m) = req.max_tokens {
        c.insert("maxOutputTokens".into(), json!(m));
    }
    if let Some(p) = req.top_p {
        c.insert("topP".into(), f32_json(p));
    }
    if !req.stop.is_empty() {
        c.insert("stopSequences".into(), json!(req.stop));
    }
    match &req.response_format {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => {
            c.insert("responseMimeType".into(), json!("application/json"));
        }
        ResponseFormat::JsonSchema { schema, .. } => {
            c.insert("responseMimeType".into(), json!("application/json"));
            c.insert("responseSchema".into(), to_gemini_schema(schema));
        }
    }
    if let Some(r) = req.reasoning {
        c.insert("thinkingConfig".into(), thinking_config(model, r));
    }
    c
}

/// `thinkingConfig`: Gemini 3 models take a `thinkingLevel` (`low` or
/// `high`) for an effort; 2.5 models a `thinkingBudget` in tokens. A budget
/// is sent as a budget either way.
fn thinking_config(model: &str, r: crate::engine::request::Reasoning) -> Value {
    use crate::engine::request::{Reasoning, ReasoningEffort};
    match r {
        Reasoning::Effort(e) if model.starts_with("gemini-3") => {
            let level = match e {
                ReasoningEffort::Minimal | ReasoningEffort::Low => "low",
                ReasoningEffort::Medium | ReasoningEffort::High => "high",
            };
            json!({ "thinkingLevel": level, "includeThoughts": true })
        }
        r => json!({ "thinkingBudget": r.budget_tokens(), "includeThoughts": true }),
    }
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

/// Function parameters as a Gemini schema; `None` for a function without
/// parameters (Gemini rejects an object schema with empty `properties`).
fn function_parameters(params: &Value) -> Option<Value> {
    match params {
        Value::Object(o) if o.is_empty() => None,
        Value::Null => None,
        Value::Object(o)
            if o.get("type").and_then(Value::as_str) == Some("object")
                && o.get("properties")
                    .and_then(Value::as_object)
                    .is_none_or(|p| p.is_empty()) =>
        {
            None
        }
        v => Some(to_gemini_schema(v)),
    }
}

/// Keywords of Gemini's `Schema` (a subset of OpenAPI 3.0). Any other key is
/// a 400 ("Unknown name ..."), so JSON Schemas written for other providers
/// (`additionalProperties`, `$schema`, `strict`, ...) are trimmed to these.
const SCHEMA_KEYS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

/// Translate a JSON Schema into Gemini's schema dialect: local `$ref`s are
/// inlined, `type: [T, "null"]` becomes `type: T, nullable: true`, `oneOf`
/// becomes `anyOf`, `const` a one-value `enum`, and unsupported keywords are
/// dropped.
pub fn to_gemini_schema(schema: &Value) -> Value {
    convert_schema(schema, schema, 0)
}

fn convert_schema(node: &Value, root: &Value, depth: usize) -> Value {
    const MAX_DEPTH: usize = 32;
    let Value::Object(o) = node else {
        return node.clone();
    };
    if depth > MAX_DEPTH {
        return json!({});
    }
    if let Some(target) = o
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| resolve_ref(root, r))
    {
        let mut merged = convert_schema(target, root, depth + 1);
        // Sibling keywords of a $ref (e.g. description) still apply.
        if let (Value::Object(m), Value::Object(rest)) =
            (&mut merged, convert_schema_keys(o, root, depth))
        {
            for (k, v) in rest {
                m.insert(k, v);
            }
        }
        return merged;
    }
    convert_schema_keys(o, root, depth)
}

fn convert_schema_keys(o: &Map<String, Value>, root: &Value, depth: usize) -> Value {
    let mut out = Map::new();
    for (k, v) in o {
        match k.as_str() {
            "type" => match v {
                Value::Array(types) => {
                    let non_null: Vec<&Value> = types
                        .iter()
                        .filter(|t| t.as_str() != Some("null"))
                        .collect();
                    if non_null.len() < types.len() {
                        out.insert("nullable".into(), json!(true));
                    }
                    if let Some(t) = non_null.first() {
                        out.insert("type".into(), (*t).clone());
                    }
                }
                v => {
                    out.insert("type".into(), v.clone());
                }
            },
            "properties" => {
                if let Value::Object(props) = v {
                    let p: Map<String, Value> = props
                        .iter()
                        .map(|(name, s)| (name.clone(), convert_schema(s, root, depth + 1)))
                        .collect();
                    out.insert("properties".into(), Value::Object(p));
                }
            }
            "items" => {
                out.insert("items".into(), convert_schema(v, root, depth + 1));
            }
            "anyOf" | "oneOf" => {
                if let Value::Array(alts) = v {
                    let null = alts
                        .iter()
                        .any(|a| a.get("type").and_then(Value::as_str) == Some("null"));
                    let rest: Vec<Value> = alts
                        .iter()
                        .filter(|a| a.get("type").and_then(Value::as_str) != Some("null"))
                        .map(|a| convert_schema(a, root, depth + 1))
                        .collect();
                    if null {
                        out.insert("nullable".into(), json!(true));
                    }
                    match rest.len() {
                        0 => {}
                        1 => {
                            if let Value::Object(one) = &rest[0] {
                                for (k2, v2) in one {
                                    out.entry(k2.clone()).or_insert_with(|| v2.clone());
                                }
                            }
                        }
                        _ => {
                            out.insert("anyOf".into(), Value::Array(rest));
                        }
                    }
                }
            }
            "const" => {
                out.insert("enum".into(), json!([v]));
            }
            k if SCHEMA_KEYS.contains(&k) => {
                out.insert(k.to_string(), v.clone());
            }
            _ => {}
        }
    }
    Value::Object(out)
}

/// Resolve a local reference such as `#/$defs/Point` or `#/definitions/Point`.
fn resolve_ref<'a>(root: &'a Value, r: &str) -> Option<&'a Value> {
    let path = r.strip_prefix('#')?;
    if path.is_empty() {
        return None; // recursion to the root: not representable
    }
    root.pointer(path)
}

/// Decodes `GenerateContentResponse` chunks (SSE events or JSON-array
/// elements) into deltas.
#[derive(Debug, Default)]
pub struct Decoder {
    done: bool,
    /// Function calls seen so far: the index of the next one; non-zero
    /// turns a `STOP` into "tool calls".
    calls: usize,
}

impl Decoder {
    /// Decode one parsed chunk.
    fn chunk(&mut self, v: &Value, out: &mut Vec<Delta>) -> Result<(), EngineError> {
        if let Some(err) = v.get("error") {
            return Err(EngineError::InStream {
                message: error_message(err),
            });
        }
        let candidate = v.get("candidates").and_then(Value::as_array).and_then(|c| {
            // Candidate 0: by its `index` where given, else the first.
            c.iter()
                .find(|x| x.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        });
        if let Some(cand) = candidate {
            let parts = cand
                .get("content")
                .and_then(|c| c.get("parts"))
                .and_then(Value::as_array);
            for part in parts.into_iter().flatten() {
                self.part(part, out);
            }
        }
        if let Some(u) = v.get("usageMetadata").and_then(usage) {
            out.push(Delta::Usage(u));
        }
        if let Some(raw) = candidate
            .and_then(|c| c.get("finishReason"))
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
        {
            let reason = match raw {
                "STOP" if self.calls > 0 => FinishReason::ToolCalls,
                "MAX_TOKENS" => FinishReason::Length,
                "SAFETY"
                | "RECITATION"
                | "BLOCKLIST"
                | "PROHIBITED_CONTENT"
                | "SPII"
                | "IMAGE_SAFETY"
                | "IMAGE_PROHIBITED_CONTENT"
                | "IMAGE_RECITATION" => FinishReason::ContentFilter,
                _ => FinishReason::Stop,
            };
            out.push(Delta::Finish {
                reason,
                raw: raw.to_string(),
            });
            self.done = true;
        } else if candidate.is_none() {
            // A blocked prompt has no candidates at all, only the reason.
            if let Some(block) = v
                .get("promptFeedback")
                .and_then(|p| p.get("blockReason"))
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
            {
                out.push(Delta::Finish {
                    reason: FinishReason::ContentFilter,
                    raw: block.to_string(),
                });
                self.done = true;
            }
        }
        Ok(())
    }

    fn part(&mut self, part: &Value, out: &mut Vec<Delta>) {
        let thought = part.get("thought").and_then(Value::as_bool) == Some(true);
        if let Some(text) = part.get("text").and_then(Value::as_str) {
            if !text.is_empty() {
                out.push(if thought {
                    Delta::Thinking(text.to_string())
                } else {
                    Delta::Text(text.to_string())
                });
            }
        }
        if let Some(sig) = part.get("thoughtSignature").and_then(Value::as_str) {
            if !sig.is_empty() {
                out.push(Delta::ThinkingSignature(sig.to_string()));
            }
        }
        if let Some(fc) = part.get("functionCall") {
            let name = fc.get("name").and_then(Value::as_str).unwrap_or_default();
            let arguments = match fc.get("args") {
                None | Some(Value::Null) => "{}".to_string(),
                Some(a) => a.to_string(),
            };
            let id = fc
                .get("id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            out.push(Delta::ToolCall {
                index: self.calls,
                id,
                name: Some(name.to_string()),
                arguments,
            });
            self.calls += 1;
        }
    }
}

/// `usageMetadata` as a usage snapshot; `None` when it holds no counts (a
/// blocked Vertex prompt reports only `trafficType`).
fn usage(u: &Value) -> Option<Usage> {
    let count = |k: &str| u.get(k).and_then(Value::as_u64);
    let prompt = count("promptTokenCount");
    let candidates = count("candidatesTokenCount");
    let thoughts = count("thoughtsTokenCount");
    let cached = count("cachedContentTokenCount");
    // Tokens of tool-use prompts (e.g. search results fed back) are billed as input.
    let tool_prompt = count("toolUsePromptTokenCount");
    if [prompt, candidates, thoughts, cached, tool_prompt]
        .iter()
        .all(Option::is_none)
    {
        return None;
    }
    let thoughts = thoughts.unwrap_or(0);
    Some(Usage {
        input_tokens: prompt.unwrap_or(0) + tool_prompt.unwrap_or(0),
        // Gemini bills thoughts as output, outside candidatesTokenCount.
        output_tokens: candidates.unwrap_or(0) + thoughts,
        cached_input_tokens: cached.unwrap_or(0),
        cache_creation_input_tokens: 0,
        reasoning_tokens: thoughts,
        reported_cost_usd: None,
    })
}

/// The message of a Google `error` object (`{code, message, status}`).
fn error_message(err: &Value) -> String {
    if let Some(s) = err.as_str() {
        return s.to_string();
    }
    let msg = err
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| snippet(&err.to_string()));
    match err.get("status").and_then(Value::as_str) {
        Some(status) if !status.is_empty() => format!("{status}: {msg}"),
        _ => msg,
    }
}

impl StreamDecoder for Decoder {
    fn frame(&mut self, _event: &str, data: &str, out: &mut Vec<Delta>) -> Result<(), EngineError> {
        let data = data.trim();
        if data.is_empty() {
            return Ok(());
        }
        let v = parse_json("Gemini stream", data)?;
        match &v {
            // Tolerate a proxy that wraps a chunk (or an error) in an array.
            Value::Array(items) => {
                for item in items {
                    self.chunk(item, out)?;
                }
                Ok(())
            }
            _ => self.chunk(&v, out),
        }
    }

    fn is_done(&self) -> bool {
        self.done
    }
}

/// Parse a non-streamed body: one `GenerateContentResponse`, or the JSON
/// array of chunks that `streamGenerateContent` returns without `alt=sse`.
pub fn parse_response(body: &[u8]) -> Result<Vec<Delta>, EngineError> {
    let text = String::from_utf8_lossy(body);
    let v = parse_json("Gemini response", &text)?;
    let mut d = Decoder::default();
    let mut out = Vec::new();
    match &v {
        Value::Array(items) => {
            for item in items {
                d.chunk(item, &mut out)?;
            }
        }
        Value::Object(_) => d.chunk(&v, &mut out)?,
        _ => {
            return Err(EngineError::Protocol {
                message: format!("unexpected Gemini response: {}", snippet(&text)),
            })
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::provider::{ProviderKind, Secret};
    use crate::engine::request::{Reasoning, Tool, ToolCallRef};

    fn spec() -> ProviderSpec {
        let mut s = ProviderSpec::new("gemini", ProviderKind::Gemini);
        s.base_url = "https://example.test/".into();
        s.api_key = Some(Secret::new("AIza-secret"));
        s
    }

    #[test]
    fn urls_and_key_header() {
        let req = ChatRequest::from_prompt("hi");
        let c = build(&spec(), "gemini-2.5-flash", &req, false).unwrap();
        assert_eq!(
            c.url,
            "https://example.test/v1beta/models/gemini-2.5-flash:generateContent"
        );
        let c = build(&spec(), "models/gemini-2.5-flash", &req, true).unwrap();
        assert_eq!(
            c.url,
            "https://example.test/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert!(!c.url.contains("AIza"));
        let key = c.headers.get("x-goog-api-key").unwrap();
        assert!(key.is_sensitive());
        assert_eq!(key.to_str().unwrap(), "AIza-secret");
        assert!(!format!("{:?}", c.headers).contains("AIza-secret"));
        assert_eq!(c.headers.get("content-type").unwrap(), "application/json");
    }

    #[test]
    fn missing_key_is_a_config_error() {
        let mut s = spec();
        s.api_key = None;
        let e = build(&s, "m", &ChatRequest::from_prompt("x"), false).unwrap_err();
        assert_eq!(e.kind(), "config");
        s.api_key = Some(Secret::new(""));
        assert!(build(&s, "m", &ChatRequest::from_prompt("x"), false).is_err());
    }

    #[test]
    fn body_roles_system_tools_and_results() {
        let mut req = ChatRequest::from_prompt("weather in Paris and Rome?");
        req.messages.insert(0, Message::system("be brief"));
        req.messages.push(Message::system("use celsius"));
        let mut asst = Message::assistant("");
        asst.tool_calls = vec![
            ToolCallRef {
                id: "c1".into(),
                name: "get_weather".into(),
                arguments: json!({"city": "Paris"}),
            },
            ToolCallRef {
                id: String::new(),
                name: "get_weather".into(),
                arguments: json!({"city": "Rome"}),
            },
        ];
        req.messages.push(asst);
        req.messages
            .push(Message::tool_result("c1", "get_weather", "18C"));
        let mut r2 = Message::tool_result("c2", "", "21C");
        r2.name = None;
        r2.tool_call_id = Some("zz".into());
        req.messages.push(r2);
        req.messages
            .push(Message::assistant("Paris 18C, Rome 21C."));
        req.messages.push(Message::user("thanks"));
        req.messages.push(Message::user("bye"));
        req.tools = vec![Tool {
            name: "get_weather".into(),
            description: "Weather now".into(),
            parameters: json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": ["string", "null"]}},
                "required": ["city"],
                "additionalProperties": false
            }),
        }];
        req.tool_choice = ToolChoice::Function("get_weather".into());
        let b = build(&spec(), "g", &req, true).unwrap().body;
        assert_eq!(
            b["systemInstruction"],
            json!({"parts": [{"text": "be brief\n\nuse celsius"}]})
        );
        let contents = b["contents"].as_array().unwrap();
        let roles: Vec<&str> = contents
            .iter()
            .map(|c| c["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "model", "user", "model", "user"]);
        assert_eq!(
            contents[0]["parts"],
            json!([{"text": "weather in Paris and Rome?"}])
        );
        assert_eq!(
            contents[1]["parts"],
            json!([
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"},
                 "thoughtSignature": SKIP_SIGNATURE},
                {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}}
            ])
        );
        // Both results in one user turn; the nameless one found no call "zz": empty name.
        assert_eq!(
            contents[2]["parts"],
            json!([
                {"functionResponse": {"name": "get_weather", "response": {"content": "18C"}, "id": "c1"}},
                {"functionResponse": {"name": "", "response": {"content": "21C"}, "id": "zz"}}
            ])
        );
        assert_eq!(
            contents[3]["parts"],
            json!([{"text": "Paris 18C, Rome 21C."}])
        );
        // Adjacent user messages share one turn.
        assert_eq!(
            contents[4]["parts"],
            json!([{"text": "thanks"}, {"text": "bye"}])
        );
        assert_eq!(
            b["tools"],
            json!([{"functionDeclarations": [{
                "name": "get_weather",
                "description": "Weather now",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "nullable": true}},
                    "required": ["city"]
                }
            }]}])
        );
        assert_eq!(
            b["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
        );
        assert!(b.get("generationConfig").is_none());
    }

    #[test]
    fn tool_result_name_from_earlier_call() {
        let mut req = ChatRequest::from_prompt("x");
        let mut asst = Message::assistant("");
        asst.tool_calls = vec![ToolCallRef {
            id: "k9".into(),
            name: "lookup".into(),
            arguments: json!({}),
        }];
        req.messages.push(asst);
        let mut r = Message::tool_result("k9", "", "{\"ok\":true}");
        r.name = None;
        req.messages.push(r);
        let b = body("gemini-2.5-flash", &req);
        assert_eq!(
            b["contents"][2]["parts"][0]["functionResponse"]["name"],
            "lookup"
        );
    }

    #[test]
    fn tool_choice_modes() {
        let mut req = ChatRequest::from_prompt("x");
        req.tools = vec![Tool {
            name: "noargs".into(),
            description: String::new(),
            parameters: json!({"type": "object", "properties": {}}),
        }];
        for (choice, mode) in [
            (ToolChoice::Auto, "AUTO"),
            (ToolChoice::None, "NONE"),
            (ToolChoice::Required, "ANY"),
        ] {
            req.tool_choice = choice;
            let b = body("gemini-2.5-flash", &req);
            assert_eq!(
                b["toolConfig"]["functionCallingConfig"],
                json!({"mode": mode})
            );
            // No parameters: the declaration has none (Gemini rejects empty properties).
            assert_eq!(
                b["tools"][0]["functionDeclarations"][0],
                json!({"name": "noargs"})
            );
        }
        req.tools.clear();
        req.tool_choice = ToolChoice::Required;
        let b = body("gemini-2.5-flash", &req);
        assert!(b.get("tools").is_none() && b.get("toolConfig").is_none());
    }

    #[test]
    fn generation_config_fields() {
        let mut req = ChatRequest::from_prompt("x");
        req.temperature = Some(0.5);
        req.max_tokens = Some(100);
        req.top_p = Some(0.25);
        req.stop = vec!["END".into()];
        req.reasoning = Some(Reasoning::Budget(2048));
        req.response_format = ResponseFormat::JsonObject;
        let g = body("gemini-2.5-flash", &req)["generationConfig"].clone();
        assert_eq!(
            g,
            json!({
                "temperature": 0.5, "maxOutputTokens": 100, "topP": 0.25,
                "stopSequences": ["END"], "responseMimeType": "application/json",
                "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": true}
            })
        );
        req.response_format = ResponseFormat::JsonSchema {
            name: "pt".into(),
            schema: json!({
                "type": "object",
                "properties": {"p": {"$ref": "#/$defs/Point", "description": "where"},
                               "k": {"const": "a"},
                               "o": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
                "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}},
                                    "additionalProperties": false}},
                "strict": true
            }),
        };
        let g = body("gemini-2.5-flash", &req)["generationConfig"].clone();
        assert_eq!(g["responseMimeType"], "application/json");
        assert_eq!(
            g["responseSchema"],
            json!({
                "type": "object",
                "properties": {
                    "p": {"type": "object", "properties": {"x": {"type": "number"}}, "description": "where"},
                    "k": {"enum": ["a"]},
                    "o": {"type": "integer", "nullable": true}
                }
            })
        );
    }

    fn decode(frames: &[&str]) -> (Vec<Delta>, bool) {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for f in frames {
            d.frame("message", f, &mut out).unwrap();
        }
        (out, d.is_done())
    }

    #[test]
    fn decoder_parts_usage_and_finish() {
        let (out, done) = decode(&[
            r#"{"candidates":[{"content":{"parts":[{"text":"hm","thought":true}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":5,"totalTokenCount":5}}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"Hi"},{"text":"","thoughtSignature":"c2ln"}]}}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":1,"thoughtsTokenCount":3,"cachedContentTokenCount":2}}"#,
            r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{"a":1},"id":"x1"}}]},"finishReason":"STOP"}]}"#,
        ]);
        assert!(done);
        assert_eq!(
            out,
            vec![
                Delta::Thinking("hm".into()),
                Delta::Usage(Usage {
                    input_tokens: 5,
                    ..Usage::default()
                }),
                Delta::Text("Hi".into()),
                Delta::ThinkingSignature("c2ln".into()),
                Delta::Usage(Usage {
                    input_tokens: 5,
                    output_tokens: 4,
                    cached_input_tokens: 2,
                    reasoning_tokens: 3,
                    ..Usage::default()
                }),
                Delta::ToolCall {
                    index: 0,
                    id: Some("x1".into()),
                    name: Some("f".into()),
                    arguments: r#"{"a":1}"#.into()
                },
                Delta::Finish {
                    reason: FinishReason::ToolCalls,
                    raw: "STOP".into()
                },
            ]
        );
    }

    #[test]
    fn decoder_finish_words() {
        for (word, want) in [
            ("STOP", FinishReason::Stop),
            ("MAX_TOKENS", FinishReason::Length),
            ("SAFETY", FinishReason::ContentFilter),
            ("RECITATION", FinishReason::ContentFilter),
            ("PROHIBITED_CONTENT", FinishReason::ContentFilter),
            ("MALFORMED_FUNCTION_CALL", FinishReason::Stop),
            ("OTHER", FinishReason::Stop),
        ] {
            let f = format!(r#"{{"candidates":[{{"content":{{}},"finishReason":"{word}"}}]}}"#);
            let (out, done) = decode(&[&f]);
            assert!(done, "{word}");
            assert_eq!(
                out,
                vec![Delta::Finish {
                    reason: want,
                    raw: word.into()
                }]
            );
        }
        let (out, done) = decode(&[
            r#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":7}}"#,
        ]);
        assert!(done);
        assert_eq!(
            out.last(),
            Some(&Delta::Finish {
                reason: FinishReason::ContentFilter,
                raw: "SAFETY".into()
            })
        );
        // Not done without a finish reason.
        let (_, done) = decode(&[r#"{"candidates":[{"content":{"parts":[{"text":"a"}]}}]}"#]);
        assert!(!done);
    }

    #[test]
    fn decoder_errors() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        let e = d
            .frame(
                "message",
                r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#,
                &mut out,
            )
            .unwrap_err();
        assert_eq!(
            e,
            EngineError::InStream {
                message: "UNAVAILABLE: The model is overloaded.".into()
            }
        );
        let e = d.frame("message", "{not json", &mut out).unwrap_err();
        assert_eq!(e.kind(), "protocol");
    }

    #[test]
    fn parse_response_object_and_array() {
        let one = r#"{"candidates":[{"content":{"parts":[{"text":"A"}]},"finishReason":"STOP"}]}"#;
        let arr = format!(
            "[{},\r\n{}]",
            r#"{"candidates":[{"content":{"parts":[{"text":"A"}]}}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"B"}]},"finishReason":"MAX_TOKENS"}]}"#
        );
        assert_eq!(
            parse_response(one.as_bytes()).unwrap(),
            vec![
                Delta::Text("A".into()),
                Delta::Finish {
                    reason: FinishReason::Stop,
                    raw: "STOP".into()
                }
            ]
        );
        assert_eq!(
            parse_response(arr.as_bytes()).unwrap(),
            vec![
                Delta::Text("A".into()),
                Delta::Text("B".into()),
                Delta::Finish {
                    reason: FinishReason::Length,
                    raw: "MAX_TOKENS".into()
                }
            ]
        );
        assert!(parse_response(b"[{\"error\":{\"message\":\"bad\"}}]").is_err());
        assert!(parse_response(b"42").is_err());
    }
}
