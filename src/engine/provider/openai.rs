//! The OpenAI Chat Completions wire protocol (`POST {base}/chat/completions`).
//!
//! One module serves three provider kinds, because they speak the same
//! protocol with small dialect differences:
//! - `openai`: api.openai.com (and Azure-style deployments behind a base URL);
//!   sends `max_completion_tokens`, which reasoning models require.
//! - `openrouter`: adds attribution headers, takes `reasoning: {effort}`, and
//!   reports `usage.cost`, `delta.reasoning`, keep-alive comments and
//!   in-stream errors.
//! - `compatible`: vLLM, llama.cpp, LM Studio, Groq, Together, DeepSeek,
//!   xAI...: the key is optional, `reasoning_content` carries thinking, and
//!   some servers end a stream without `[DONE]`.
//!
//! Only choice 0 is read: `n > 1` streams interleave other choices, which
//! nothing downstream can show.

use std::borrow::Cow;

use serde_json::{json, Map, Value};

use super::{
    base_headers, join_url, parse_json, put_header, require_key, HttpCall, ProviderKind,
    ProviderSpec, StreamDecoder,
};
use crate::engine::error::EngineError;
use crate::engine::event::{Delta, FinishReason, Usage};
use crate::engine::request::{ChatRequest, Message, Reasoning, ResponseFormat, Role, ToolChoice};

/// OpenRouter's attribution headers: they name the app on openrouter.ai's
/// rankings instead of leaving the traffic anonymous.
const OPENROUTER_REFERER: &str = "https://github.com/llm-quorum/llm-quorum";
const OPENROUTER_TITLE: &str = "llm-quorum";

/// Build the `chat/completions` request for `model`.
///
/// The key is required for `openai` and `openrouter` and optional for
/// `compatible` (local servers usually take none); it travels only in a
/// sensitive `Authorization` header, so it never shows in `Debug` output.
pub fn build(
    spec: &ProviderSpec,
    model: &str,
    req: &ChatRequest,
    stream: bool,
) -> Result<HttpCall, EngineError> {
    let mut headers = base_headers(spec)?;
    let key = match spec.kind {
        ProviderKind::Compatible => spec
            .api_key
            .as_ref()
            .map(|k| k.expose())
            .filter(|k| !k.is_empty()),
        _ => Some(require_key(spec)?),
    };
    if let Some(key) = key {
        put_header(
            &mut headers,
            "authorization",
            &format!("Bearer {key}"),
            true,
        )?;
    }
    if spec.kind == ProviderKind::Openrouter {
        // The spec's own headers win over our defaults.
        if !headers.contains_key("http-referer") {
            put_header(&mut headers, "http-referer", OPENROUTER_REFERER, false)?;
        }
        if !headers.contains_key("x-title") {
            put_header(&mut headers, "x-title", OPENROUTER_TITLE, false)?;
        }
    }
    Ok(HttpCall {
        url: join_url(&spec.base_url, "chat/completions"),
        headers,
        body: body(spec.kind, model, req, stream),
    })
}

/// The JSON body. Optional settings are left out when unset so servers apply
/// their own defaults (and strict compatible servers see no unknown keys).
pub(crate) fn body(kind: ProviderKind, model: &str, req: &ChatRequest, stream: bool) -> Value {
    let mut b = Map::new();
    b.insert("model".into(), json!(model));
    b.insert(
        "messages".into(),
        Value::Array(req.messages.iter().map(message).collect()),
    );
    if stream {
        b.insert("stream".into(), json!(true));
        // Without it the stream carries no usage at all.
        b.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(t) = req.temperature {
        b.insert("temperature".into(), number(t));
    }
    if let Some(p) = req.top_p {
        b.insert("top_p".into(), number(p));
    }
    if let Some(n) = req.max_tokens {
        // OpenAI deprecated `max_tokens` and its reasoning models reject it;
        // most other servers only know `max_tokens`.
        let field = if matches!(kind, ProviderKind::Openai | ProviderKind::Azure) {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        b.insert(field.into(), json!(n));
    }
    if !req.stop.is_empty() {
        b.insert("stop".into(), json!(req.stop));
    }
    match &req.response_format {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => {
            b.insert("response_format".into(), json!({"type": "json_object"}));
        }
        ResponseFormat::JsonSchema { name, schema } => {
            // Not `strict`: strict mode rejects schemas that do not list every
            // property as required, which ordinary user schemas often do not.
            b.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema}}),
            );
        }
    }
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut f = Map::new();
                f.insert("name".into(), json!(t.name));
                if !t.description.is_empty() {
                    f.insert("description".into(), json!(t.description));
                }
                f.insert("parameters".into(), t.parameters.clone());
                json!({"type": "function", "function": f})
            })
            .collect();
        b.insert("tools".into(), Value::Array(tools));
        let choice = match &req.tool_choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Function(name) => json!({"type": "function", "function": {"name": name}}),
        };
        b.insert("tool_choice".into(), choice);
    }
    if let Some(r) = req.reasoning {
        if kind == ProviderKind::Openrouter {
            // OpenRouter's unified parameter; it takes a budget directly.
            let r = match r {
                Reasoning::Effort(e) => json!({"effort": e.as_str()}),
                Reasoning::Budget(n) => json!({"max_tokens": n}),
            };
            b.insert("reasoning".into(), r);
        } else {
            b.insert("reasoning_effort".into(), json!(r.effort().as_str()));
        }
    }
    // Parameters passed through; never over a field set above.
    for (k, v) in &req.passthrough {
        b.entry(k.clone()).or_insert_with(|| v.clone());
    }
    Value::Object(b)
}

/// One conversation message in the Chat Completions shape.
fn message(m: &Message) -> Value {
    match m.role {
        Role::System => json!({"role": "system", "content": m.content}),
        Role::User => {
            let text = m.text_with_files();
            if m.images().next().is_none() {
                return json!({"role": "user", "content": text});
            }
            // Vision input: content parts, the text first.
            let mut parts = Vec::new();
            if !text.is_empty() {
                parts.push(json!({"type": "text", "text": text}));
            }
            for img in m.images() {
                if let Some(url) = img.data_url() {
                    parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
                }
            }
            json!({"role": "user", "content": parts})
        }
        Role::Assistant => {
            let mut o = Map::new();
            o.insert("role".into(), json!("assistant"));
            // A pure tool-call turn has null content, as the API itself returns it.
            let content = if m.content.is_empty() && !m.tool_calls.is_empty() {
                Value::Null
            } else {
                json!(m.content)
            };
            o.insert("content".into(), content);
            if !m.tool_calls.is_empty() {
                let calls: Vec<Value> = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        json!({
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": arguments_string(&c.arguments)},
                        })
                    })
                    .collect();
                o.insert("tool_calls".into(), Value::Array(calls));
            }
            Value::Object(o)
        }
        Role::Tool => json!({
            "role": "tool",
            "tool_call_id": m.tool_call_id.as_deref().unwrap_or(""),
            "content": m.content,
        }),
    }
}

/// The wire wants arguments as a JSON *string*. A string value is arguments
/// text that never parsed (see `ToolCall::arguments_json`): send it back
/// verbatim rather than quoting it twice.
fn arguments_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "{}".to_string(),
        v => v.to_string(),
    }
}

/// An `f32` as the JSON number a person typed: `0.7`, not `0.699999988079071`.
fn number(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Normalise a `finish_reason`. Unknown words count as a natural stop: the
/// raw word is kept alongside for anyone who needs it.
fn finish_reason(raw: &str) -> FinishReason {
    match raw {
        "length" | "max_tokens" | "model_length" => FinishReason::Length,
        "tool_calls" | "function_call" | "tool_use" => FinishReason::ToolCalls,
        "content_filter" | "safety" => FinishReason::ContentFilter,
        "error" => FinishReason::Error,
        _ => FinishReason::Stop,
    }
}

/// A token count; some compatible servers send `12.0` instead of `12`.
fn count(v: Option<&Value>) -> u64 {
    match v {
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .unwrap_or(0),
        None => 0,
    }
}

/// `d[k]` for an optional object.
fn detail<'a>(d: Option<&'a Value>, k: &str) -> Option<&'a Value> {
    d.and_then(|d| d.get(k))
}

/// A `usage` object, or None for `null` / absent (every chunk but the usage
/// chunk carries `"usage": null`).
fn usage(u: Option<&Value>) -> Option<Usage> {
    let u = u?.as_object()?;
    let prompt_details = u.get("prompt_tokens_details");
    // DeepSeek reports cache hits at the top level.
    let cached =
        detail(prompt_details, "cached_tokens").or_else(|| u.get("prompt_cache_hit_tokens"));
    Some(Usage {
        input_tokens: count(u.get("prompt_tokens")),
        output_tokens: count(u.get("completion_tokens")),
        cached_input_tokens: count(cached),
        cache_creation_input_tokens: count(detail(prompt_details, "cache_write_tokens")),
        reasoning_tokens: count(detail(
            u.get("completion_tokens_details"),
            "reasoning_tokens",
        )),
        reported_cost_usd: u.get("cost").and_then(Value::as_f64),
    })
}

/// The usage of a chunk or body: `usage`, or Groq's `x_groq.usage`.
fn usage_of(v: &Value) -> Option<Usage> {
    usage(v.get("usage")).or_else(|| usage(v.get("x_groq").and_then(|x| x.get("usage"))))
}

/// The message of a top-level `error` value (an object with `message`, or a
/// bare string as some compatible servers send).
fn error_message(err: &Value) -> String {
    let msg = match err {
        Value::String(s) => s.clone(),
        Value::Object(o) => match o.get("message").and_then(Value::as_str) {
            Some(m) => {
                let mut m = m.to_string();
                // OpenRouter puts the upstream provider's words in metadata.raw.
                if let Some(raw) = o
                    .get("metadata")
                    .and_then(|md| md.get("raw"))
                    .and_then(Value::as_str)
                {
                    m.push_str(" (upstream: ");
                    m.push_str(raw);
                    m.push(')');
                }
                m
            }
            None => err.to_string(),
        },
        other => other.to_string(),
    };
    if msg.trim().is_empty() {
        "(no message)".to_string()
    } else {
        msg
    }
}

/// A top-level `error` that is really there (not `null`).
fn top_error(v: &Value) -> Option<&Value> {
    v.get("error").filter(|e| !e.is_null())
}

/// The choice with index 0 (a missing index counts as 0).
fn choice0(v: &Value) -> Option<&Value> {
    v.get("choices")?
        .as_array()?
        .iter()
        .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
}

/// Thinking text: DeepSeek and vLLM say `reasoning_content`, OpenRouter and
/// newer servers `reasoning`; a server sending both means the same text, so
/// only one is taken.
fn reasoning_text(m: &Value) -> Option<&str> {
    ["reasoning_content", "reasoning"]
        .iter()
        .filter_map(|k| m.get(*k).and_then(Value::as_str))
        .find(|s| !s.is_empty())
}

/// A non-empty string field.
fn text_field<'a>(m: &'a Value, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// Tool-call arguments as the string they should be; a few compatible
/// servers send an object instead of the JSON text.
fn arguments_of(f: Option<&Value>) -> String {
    match f.and_then(|f| f.get("arguments")) {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => String::new(),
        Some(v) => v.to_string(),
    }
}

/// Stream decoder for Chat Completions SSE.
///
/// Done when `[DONE]` arrives, or once choice 0 has a `finish_reason`:
/// several compatible servers end the body without `[DONE]`, and the answer
/// is complete by then.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Decoder {
    /// `data: [DONE]` seen; later frames are ignored.
    done_marker: bool,
    /// The last `finish_reason` of choice 0, once there is one.
    finish: Option<String>,
    /// The envelope of the last plain text chunk read.
    envelope: Envelope,
}

/// What surrounds the text of a plain text chunk: a server sends the same
/// bytes around every text delta of a stream (id, model, fingerprint, the
/// choice's other fields), except OpenAI's `obfuscation` padding, a last
/// top-level string of random length. A chunk that is this envelope around
/// text without quotes, backslashes or control characters (and, when padded,
/// around other padding of that kind) is the same JSON as the chunk the
/// envelope came from with other strings in two places, so it reads the same:
/// that text, nothing else. Checking that costs two comparisons and a scan
/// instead of a parse (about 5,500 instructions of the 23,000 that relaying a
/// chunk through `serve` cost; callgrind, issue #14).
#[derive(Debug, Default, Clone)]
struct Envelope {
    /// Whether `before` and `after` hold an envelope.
    set: bool,
    /// Everything up to the text's opening quote, included.
    before: String,
    /// From the text's closing quote: to the end, or when `padded`, to the
    /// padding's opening quote (included); the chunk then ends `"}`.
    after: String,
    padded: bool,
}

/// A cache: decoders are equal whatever envelope they last saw.
impl PartialEq for Envelope {
    fn eq(&self, _: &Envelope) -> bool {
        true
    }
}
impl Eq for Envelope {}

/// No quote, backslash or control character: a JSON string's text as is.
fn plain_json_text(s: &str) -> bool {
    !s.bytes().any(|c| c == b'"' || c == b'\\' || c < 0x20)
}

impl Envelope {
    /// The text of `data` when it is this envelope around plain text.
    fn text<'d>(&self, data: &'d str) -> Option<&'d str> {
        if !self.set {
            return None;
        }
        let body = data.strip_prefix(self.before.as_str())?;
        let end = memchr::memchr(b'"', body.as_bytes())?;
        let (text, rest) = body.split_at(end);
        if !plain_json_text(text) {
            return None;
        }
        if self.padded {
            let pad = rest
                .strip_prefix(self.after.as_str())?
                .strip_suffix("\"}")?;
            plain_json_text(pad).then_some(text)
        } else {
            (rest == self.after).then_some(text)
        }
    }

    /// Keep the envelope of `data`, a chunk whose only content is `text` (a
    /// slice of it, read without escapes), with no finish and no usage.
    fn keep(&mut self, data: &str, text: &str) {
        let start = text.as_ptr() as usize - data.as_ptr() as usize;
        let end = start + text.len();
        let (before, rest) = (&data[..start], &data[end..]);
        self.set = before.ends_with('"') && rest.starts_with('"');
        if !self.set {
            return;
        }
        const PAD: &str = ",\"obfuscation\":\"";
        let padded = rest
            .rfind(PAD)
            .map(|k| k + PAD.len())
            .filter(|&k| rest[k..].strip_suffix("\"}").is_some_and(plain_json_text));
        self.before.clear();
        self.before.push_str(before);
        self.after.clear();
        self.after.push_str(&rest[..padded.unwrap_or(rest.len())]);
        self.padded = padded.is_some();
    }
}

impl StreamDecoder for Decoder {
    fn frame(&mut self, event: &str, data: &str, out: &mut Vec<Delta>) -> Result<(), EngineError> {
        if self.done_marker {
            return Ok(());
        }
        let data = data.trim();
        if data.is_empty() {
            return Ok(());
        }
        if data == "[DONE]" {
            self.done_marker = true;
            return Ok(());
        }
        if event == "error" {
            // A named error event (some compatible servers); its data may not be JSON.
            let message = match serde_json::from_str::<Value>(data) {
                Ok(v) => error_message(top_error(&v).unwrap_or(&v)),
                Err(_) => data.to_string(),
            };
            return Err(EngineError::InStream { message });
        }
        if let Some(c) = common_chunk(data) {
            if let (Some(Cow::Borrowed(text)), None, None) = (&c.text, &c.finish, &c.usage) {
                self.envelope.keep(data, text);
            }
            // A bad usage object: the general path says what is wrong.
            let used = match c.usage.map(|raw| usage_typed(raw.get())) {
                None => None,
                Some(Ok(u)) => u,
                Some(Err(_)) => return self.general_frame(data, out),
            };
            if let Some(text) = c.text.filter(|t| !t.is_empty()) {
                out.push(Delta::Text(text.into_owned()));
            }
            if let Some(u) = used {
                out.push(Delta::Usage(u));
            }
            if let Some(raw) = c.finish {
                self.finish_once(raw.into_owned(), out);
            }
            return Ok(());
        }
        self.general_frame(data, out)
    }

    /// A chunk in the kept envelope needs only its text masked: the envelope
    /// is the same bytes as a chunk already masked, and a secret cannot reach
    /// across the quotes around the text (nor can its base64 widening).
    fn frame_unmasked(
        &mut self,
        event: &str,
        data: &str,
        masker: &super::mask::Masker,
        out: &mut Vec<Delta>,
    ) -> Result<(), EngineError> {
        if self.done_marker {
            return Ok(());
        }
        if event != "error" {
            if let Some(text) = self.envelope.text(data.trim()) {
                let text = masker.mask(text);
                if !text.is_empty() {
                    out.push(Delta::Text(text.into_owned()));
                }
                return Ok(());
            }
        }
        self.frame(event, &masker.mask(data), out)
    }

    fn is_done(&self) -> bool {
        self.done_marker || self.finish.is_some()
    }
}

impl Decoder {
    /// Any JSON chunk, read as a [`Value`] tree.
    fn general_frame(&mut self, data: &str, out: &mut Vec<Delta>) -> Result<(), EngineError> {
        let v = parse_json("OpenAI stream", data)?;
        let mut finish = None;
        if let Some(c) = choice0(&v) {
            if let Some(d) = c.get("delta").filter(|d| d.is_object()) {
                stream_delta(d, out);
            }
            if let Some(raw) = c.get("finish_reason").and_then(Value::as_str) {
                finish = Some(raw.to_string());
            }
        }
        if let Some(u) = usage_of(&v) {
            out.push(Delta::Usage(u));
        }
        if let Some(err) = top_error(&v) {
            let message = error_message(err);
            if self.finish.is_none() {
                // Everything pushed so far is delivered before the error.
                return Err(EngineError::InStream { message });
            }
            // The answer already finished (OpenRouter sends e.g. "Token limit
            // reached" after finish_reason "length"): nothing is lost, so the
            // completed answer stands.
            tracing::warn!(%message, "provider error after the finish of the stream; ignored");
        }
        if let Some(raw) = finish {
            self.finish_once(raw, out);
        }
        Ok(())
    }

    /// A finish, reported once: OpenRouter repeats it in its usage chunk.
    fn finish_once(&mut self, raw: String, out: &mut Vec<Delta>) {
        if self.finish.as_deref() != Some(raw.as_str()) {
            out.push(Delta::Finish {
                reason: finish_reason(&raw),
                raw: raw.clone(),
            });
            self.finish = Some(raw);
        }
    }
}

/// Typed reads of chunk parts that must accept and refuse exactly what a
/// [`Value`] read does.
mod typed {
    use serde::de::{MapAccess, Visitor};
    use serde::Deserialize;
    use std::borrow::Cow;

    /// Any value, checked as a [`Value`] would be (escapes, surrogate pairs,
    /// number ranges) but not kept. serde's `IgnoredAny` skips a value without
    /// those checks, which would let this path read a frame the general path
    /// refuses.
    pub(super) struct Checked;
    impl<'de> Deserialize<'de> for Checked {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Checked;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a value")
                }
                fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
                    Ok(Checked)
                }
                fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
                    Ok(Checked)
                }
                fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
                    Ok(Checked)
                }
                fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
                    Ok(Checked)
                }
                fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
                    Ok(Checked)
                }
                fn visit_unit<E>(self) -> Result<Checked, E> {
                    Ok(Checked)
                }
                fn visit_none<E>(self) -> Result<Checked, E> {
                    Ok(Checked)
                }
                fn visit_some<D: serde::Deserializer<'de>>(
                    self,
                    d: D,
                ) -> Result<Checked, D::Error> {
                    Checked::deserialize(d)
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<Checked, A::Error> {
                    while seq.next_element::<Checked>()?.is_some() {}
                    Ok(Checked)
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
                    while map.next_entry::<Checked, Checked>()?.is_some() {}
                    Ok(Checked)
                }
            }
            d.deserialize_any(V)
        }
    }

    /// A string, borrowed from the chunk when it has no escapes (serde's
    /// `Cow<str>` inside an `Option` is always owned).
    pub(super) struct Text<'a>(pub(super) Cow<'a, str>);
    impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<'a>(std::marker::PhantomData<&'a ()>);
            impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
                type Value = Text<'a>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a string")
                }
                fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Text<'a>, E> {
                    Ok(Text(Cow::Borrowed(s)))
                }
                fn visit_str<E>(self, s: &str) -> Result<Text<'a>, E> {
                    Ok(Text(Cow::Owned(s.to_string())))
                }
                fn visit_string<E>(self, s: String) -> Result<Text<'a>, E> {
                    Ok(Text(Cow::Owned(s)))
                }
            }
            d.deserialize_str(V(std::marker::PhantomData))
        }
    }
}

/// A `usage` object's text read as [`usage`] reads its [`Value`], typed: the
/// same figures from the same input, and an error for exactly the input a
/// [`Value`] read refuses (a property test checks both). `None` when it is not
/// an object. Reading it as a tree cost ~10,000 instructions per streamed
/// answer (callgrind, issue #14); this reads only what [`usage`] looks at and
/// checks the rest.
fn usage_typed(raw: &str) -> serde_json::Result<Option<Usage>> {
    use serde::de::{MapAccess, Visitor};
    use serde::Deserialize;
    use typed::{Checked, Text};

    /// A value as [`count`] and `as_f64` see it.
    #[derive(Clone, Copy)]
    enum Num {
        U(u64),
        I(i64),
        F(f64),
        /// Not a number (checked, not kept).
        Other,
    }
    impl Num {
        fn count(self) -> u64 {
            match self {
                Num::U(n) => n,
                Num::F(f) if f >= 0.0 => f as u64,
                _ => 0,
            }
        }
        fn as_f64(self) -> Option<f64> {
            match self {
                Num::U(n) => Some(n as f64),
                Num::I(n) => Some(n as f64),
                Num::F(f) => Some(f),
                Num::Other => None,
            }
        }
    }
    impl<'de> Deserialize<'de> for Num {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Num;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a value")
                }
                fn visit_u64<E>(self, n: u64) -> Result<Num, E> {
                    Ok(Num::U(n))
                }
                fn visit_i64<E>(self, n: i64) -> Result<Num, E> {
                    // serde_json gives i64 only below zero; a tree keeps
                    // others as unsigned.
                    Ok(if n >= 0 { Num::U(n as u64) } else { Num::I(n) })
                }
                fn visit_f64<E>(self, f: f64) -> Result<Num, E> {
                    Ok(Num::F(f))
                }
                fn visit_bool<E>(self, _: bool) -> Result<Num, E> {
                    Ok(Num::Other)
                }
                fn visit_str<E>(self, _: &str) -> Result<Num, E> {
                    Ok(Num::Other)
                }
                fn visit_unit<E>(self) -> Result<Num, E> {
                    Ok(Num::Other)
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<Num, A::Error> {
                    while seq.next_element::<Checked>()?.is_some() {}
                    Ok(Num::Other)
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Num, A::Error> {
                    while map.next_entry::<Checked, Checked>()?.is_some() {}
                    Ok(Num::Other)
                }
            }
            d.deserialize_any(V)
        }
    }

    /// What is read from an object; any other value is checked and gives
    /// [`FromMap::OTHER`].
    trait FromMap<'de>: Sized {
        const OTHER: Self;
        fn from_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error>;
    }
    struct ObjectOr<T>(std::marker::PhantomData<T>);
    impl<'de, T: FromMap<'de>> Visitor<'de> for ObjectOr<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a value")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::from_map(map)
        }
        fn visit_bool<E>(self, _: bool) -> Result<T, E> {
            Ok(T::OTHER)
        }
        fn visit_u64<E>(self, _: u64) -> Result<T, E> {
            Ok(T::OTHER)
        }
        fn visit_i64<E>(self, _: i64) -> Result<T, E> {
            Ok(T::OTHER)
        }
        fn visit_f64<E>(self, _: f64) -> Result<T, E> {
            Ok(T::OTHER)
        }
        fn visit_str<E>(self, _: &str) -> Result<T, E> {
            Ok(T::OTHER)
        }
        fn visit_unit<E>(self) -> Result<T, E> {
            Ok(T::OTHER)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
            while seq.next_element::<Checked>()?.is_some() {}
            Ok(T::OTHER)
        }
    }
    fn object_or<'de, D: serde::Deserializer<'de>, T: FromMap<'de>>(d: D) -> Result<T, D::Error> {
        d.deserialize_any(ObjectOr(std::marker::PhantomData))
    }

    /// `prompt_tokens_details` / `completion_tokens_details`: the fields asked
    /// for, present or not (`object`: whether it is an object at all). A
    /// repeated key keeps its last value, as a tree's map does.
    struct Details {
        object: bool,
        cached: Option<Num>,
        cache_write: Option<Num>,
        reasoning: Option<Num>,
    }
    impl<'de> FromMap<'de> for Details {
        const OTHER: Details = Details {
            object: false,
            cached: None,
            cache_write: None,
            reasoning: None,
        };
        fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Details, A::Error> {
            let mut d = Details {
                object: true,
                ..Details::OTHER
            };
            while let Some(Text(k)) = map.next_key::<Text>()? {
                let slot = match k.as_ref() {
                    "cached_tokens" => &mut d.cached,
                    "cache_write_tokens" => &mut d.cache_write,
                    "reasoning_tokens" => &mut d.reasoning,
                    _ => {
                        map.next_value::<Checked>()?;
                        continue;
                    }
                };
                *slot = Some(map.next_value::<Num>()?);
            }
            Ok(d)
        }
    }
    impl<'de> Deserialize<'de> for Details {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            object_or(d)
        }
    }

    struct Read(Option<Usage>);
    impl<'de> FromMap<'de> for Read {
        const OTHER: Read = Read(None);
        fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Read, A::Error> {
            let (mut prompt, mut completion, mut hit, mut cost) = (None, None, None, None);
            let (mut pd, mut cd) = (Details::OTHER, Details::OTHER);
            while let Some(Text(k)) = map.next_key::<Text>()? {
                match k.as_ref() {
                    "prompt_tokens" => prompt = Some(map.next_value::<Num>()?),
                    "completion_tokens" => completion = Some(map.next_value::<Num>()?),
                    "prompt_cache_hit_tokens" => hit = Some(map.next_value::<Num>()?),
                    "cost" => cost = Some(map.next_value::<Num>()?),
                    "prompt_tokens_details" => pd = map.next_value::<Details>()?,
                    "completion_tokens_details" => cd = map.next_value::<Details>()?,
                    _ => {
                        map.next_value::<Checked>()?;
                    }
                }
            }
            let count = |n: Option<Num>| n.map_or(0, Num::count);
            // DeepSeek reports cache hits at the top level.
            let cached = if pd.object && pd.cached.is_some() {
                pd.cached
            } else {
                hit
            };
            Ok(Read(Some(Usage {
                input_tokens: count(prompt),
                output_tokens: count(completion),
                cached_input_tokens: count(cached),
                cache_creation_input_tokens: count(pd.cache_write.filter(|_| pd.object)),
                reasoning_tokens: count(cd.reasoning.filter(|_| cd.object)),
                reported_cost_usd: cost.and_then(Num::as_f64),
            })))
        }
    }
    impl<'de> Deserialize<'de> for Read {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            object_or(d)
        }
    }

    serde_json::from_str::<Read>(raw).map(|r| r.0)
}

/// What [`common_chunk`] reads of a chunk.
struct Common<'a> {
    /// `choices[0].delta.content` (`None` without a choice).
    text: Option<std::borrow::Cow<'a, str>>,
    /// `choices[0].finish_reason` when it is a string.
    finish: Option<std::borrow::Cow<'a, str>>,
    /// The `usage` object's text when it is there and not `null`.
    usage: Option<&'a serde_json::value::RawValue>,
}

/// The common chunks, typed: at most one choice (index 0) whose delta holds
/// at most `role` and `content`, with or without a string finish, and with or
/// without `usage`; no error. That is every chunk of a plain text answer,
/// its finish chunk and its usage chunk. Parsing them this way costs a
/// fraction of a [`Value`] tree (no map per object, borrowed text), and it
/// yields exactly what the general path below would (a property test checks
/// this). Anything else (tool calls, reasoning, refusals, several choices,
/// Groq's `x_groq`, an error, a duplicate key, an odd type) is `None` and
/// takes the general path.
fn common_chunk(data: &str) -> Option<Common<'_>> {
    use serde::de::{Error as _, MapAccess, Visitor};
    use serde::Deserialize;
    use serde_json::value::RawValue;

    use typed::{Checked, Text};

    /// `Some(value)` for the first time a field comes, an error the second
    /// (serde's derived structs refuse repeated fields the same way).
    fn once<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
        slot: &mut Option<T>,
        seen: &mut bool,
        map: &mut A,
    ) -> Result<(), A::Error> {
        if std::mem::replace(seen, true) {
            return Err(A::Error::custom("repeated field"));
        }
        *slot = map.next_value()?;
        Ok(())
    }

    /// `T` from a JSON object only: serde's derived structs also accept an
    /// array of their fields, which the general path would not read.
    struct Obj<T>(T);
    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<T>(std::marker::PhantomData<T>);
            impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
                type Value = T;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                    T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                }
            }
            d.deserialize_map(V(std::marker::PhantomData)).map(Obj)
        }
    }

    /// No choice, or one: a second choice goes the general way (which looks
    /// for index 0 among them).
    struct AtMostOne<T>(Option<T>);
    impl<'de, T: Deserialize<'de>> Deserialize<'de> for AtMostOne<T> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<T>(std::marker::PhantomData<T>);
            impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
                type Value = AtMostOne<T>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an array of at most one choice")
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<Self::Value, A::Error> {
                    let first = seq.next_element()?;
                    if first.is_some() && seq.next_element::<Checked>()?.is_some() {
                        return Err(serde::de::Error::custom("more than one choice"));
                    }
                    Ok(AtMostOne(first))
                }
            }
            d.deserialize_seq(V(std::marker::PhantomData))
        }
    }

    /// Unknown fields are read as [`Checked`], so these two are written out
    /// rather than derived (a derived struct skips them unchecked).
    struct Chunk<'a> {
        choices: AtMostOne<Choice<'a>>,
        usage: Option<&'a RawValue>,
        error: Option<Checked>,
        x_groq: Option<Checked>,
    }
    impl<'de> Deserialize<'de> for Chunk<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Chunk<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a chunk")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Chunk<'de>, A::Error> {
                    let (mut choices, mut usage, mut error, mut x_groq) = (None, None, None, None);
                    let mut seen = [false; 4];
                    while let Some(Text(k)) = map.next_key::<Text<'de>>()? {
                        match k.as_ref() {
                            "choices" => once(&mut choices, &mut seen[0], &mut map)?,
                            "usage" => once(&mut usage, &mut seen[1], &mut map)?,
                            "error" => once(&mut error, &mut seen[2], &mut map)?,
                            "x_groq" => once(&mut x_groq, &mut seen[3], &mut map)?,
                            _ => {
                                map.next_value::<Checked>()?;
                            }
                        }
                    }
                    Ok(Chunk {
                        choices: choices.ok_or_else(|| A::Error::missing_field("choices"))?,
                        usage,
                        error,
                        x_groq,
                    })
                }
            }
            d.deserialize_map(V)
        }
    }
    struct Choice<'a> {
        index: Option<u64>,
        delta: Option<Obj<PlainDelta<'a>>>,
        finish_reason: Option<Text<'a>>,
    }
    impl<'de> Deserialize<'de> for Choice<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Choice<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a choice")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Choice<'de>, A::Error> {
                    let (mut index, mut delta, mut finish_reason) = (None, None, None);
                    let mut seen = [false; 3];
                    while let Some(Text(k)) = map.next_key::<Text<'de>>()? {
                        match k.as_ref() {
                            "index" => once(&mut index, &mut seen[0], &mut map)?,
                            "delta" => once(&mut delta, &mut seen[1], &mut map)?,
                            "finish_reason" => once(&mut finish_reason, &mut seen[2], &mut map)?,
                            _ => {
                                map.next_value::<Checked>()?;
                            }
                        }
                    }
                    Ok(Choice {
                        index,
                        delta,
                        finish_reason,
                    })
                }
            }
            d.deserialize_map(V)
        }
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PlainDelta<'a> {
        #[serde(borrow)]
        content: Option<Text<'a>>,
        #[serde(rename = "role")]
        _role: Option<Checked>,
        refusal: Option<Checked>,
        reasoning: Option<Checked>,
        reasoning_content: Option<Checked>,
        tool_calls: Option<Checked>,
        function_call: Option<Checked>,
    }
    let c = serde_json::from_str::<Chunk<'_>>(data).ok()?;
    if c.error.is_some() || c.x_groq.is_some() {
        return None;
    }
    let usage = c.usage;
    let Some(choice) = c.choices.0 else {
        return Some(Common {
            text: None,
            finish: None,
            usage,
        });
    };
    if choice.index.unwrap_or(0) != 0 {
        return None;
    }
    let mut text = None;
    if let Some(Obj(d)) = choice.delta {
        let plain = d.refusal.is_none()
            && d.reasoning.is_none()
            && d.reasoning_content.is_none()
            && d.tool_calls.is_none()
            && d.function_call.is_none();
        if !plain {
            return None;
        }
        text = d.content.map(|t| t.0);
    }
    Some(Common {
        text,
        finish: choice.finish_reason.map(|t| t.0),
        usage,
    })
}

/// The deltas of one `choices[0].delta` object.
fn stream_delta(d: &Value, out: &mut Vec<Delta>) {
    if let Some(t) = reasoning_text(d) {
        out.push(Delta::Thinking(t.to_string()));
    }
    if let Some(t) = text_field(d, "content") {
        out.push(Delta::Text(t.to_string()));
    }
    if let Some(r) = text_field(d, "refusal") {
        out.push(Delta::Refusal(r.to_string()));
    }
    if let Some(calls) = d.get("tool_calls").and_then(Value::as_array) {
        for (pos, tc) in calls.iter().enumerate() {
            let index = tc
                .get("index")
                .and_then(Value::as_u64)
                .map(|i| i as usize)
                .unwrap_or(pos);
            let f = tc.get("function");
            let id = text_field(tc, "id").map(str::to_string);
            let name = f.and_then(|f| text_field(f, "name")).map(str::to_string);
            let arguments = arguments_of(f);
            if id.is_some() || name.is_some() || !arguments.is_empty() {
                out.push(Delta::ToolCall {
                    index,
                    id,
                    name,
                    arguments,
                });
            }
        }
    }
    // The legacy `functions` API streams one call, without an id.
    if let Some(f) = d.get("function_call").filter(|f| f.is_object()) {
        let name = text_field(f, "name").map(str::to_string);
        let arguments = arguments_of(Some(f));
        if name.is_some() || !arguments.is_empty() {
            out.push(Delta::ToolCall {
                index: 0,
                id: None,
                name,
                arguments,
            });
        }
    }
}

/// Parse a complete, non-streamed body into the same deltas a stream gives.
///
/// Tolerates what real servers send: leading whitespace padding
/// (OpenRouter keep-alives), a choice without `message` (Azure content
/// filter) or without `finish_reason` (taken as a plain stop: the body is
/// complete), and a 200 whose body is an `error` object.
pub fn parse_response(body: &[u8]) -> Result<Vec<Delta>, EngineError> {
    let text = String::from_utf8_lossy(body);
    let v = parse_json("OpenAI response", &text)?;
    let choice = choice0(&v);
    if choice.is_none() {
        if let Some(err) = top_error(&v) {
            // A 200 carrying an error: classify by its own code when it has one.
            return Err(match err.get("code").and_then(Value::as_u64) {
                Some(code @ 400..=599) => {
                    EngineError::from_http(code as u16, &Default::default(), body)
                }
                _ => EngineError::InStream {
                    message: error_message(err),
                },
            });
        }
    }
    let mut out = Vec::new();
    if let Some(c) = choice {
        if let Some(m) = c.get("message").filter(|m| m.is_object()) {
            if let Some(t) = reasoning_text(m) {
                out.push(Delta::Thinking(t.to_string()));
            }
            if let Some(t) = text_field(m, "content") {
                out.push(Delta::Text(t.to_string()));
            }
            if let Some(r) = text_field(m, "refusal") {
                out.push(Delta::Refusal(r.to_string()));
            }
            let mut index = 0;
            if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                for tc in calls {
                    let f = tc.get("function");
                    out.push(Delta::ToolCall {
                        index,
                        id: Some(text_field(tc, "id").unwrap_or("").to_string()),
                        name: Some(
                            f.and_then(|f| text_field(f, "name"))
                                .unwrap_or("")
                                .to_string(),
                        ),
                        arguments: arguments_of(f),
                    });
                    index += 1;
                }
            }
            if let Some(f) = m.get("function_call").filter(|f| f.is_object()) {
                out.push(Delta::ToolCall {
                    index,
                    id: None,
                    name: Some(text_field(f, "name").unwrap_or("").to_string()),
                    arguments: arguments_of(Some(f)),
                });
            }
        }
    }
    if let Some(u) = usage_of(&v) {
        out.push(Delta::Usage(u));
    }
    match choice {
        Some(c) => {
            let raw = c.get("finish_reason").and_then(Value::as_str).unwrap_or("");
            out.push(Delta::Finish {
                reason: finish_reason(raw),
                raw: raw.to_string(),
            });
        }
        None if out.is_empty() => {
            return Err(EngineError::Protocol {
                message: format!("response has no choices: {}", super::snippet(&text)),
            })
        }
        None => {}
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::event::Accumulator;
    use crate::engine::provider::Secret;
    use crate::engine::request::{ReasoningEffort, Tool, ToolCallRef};

    const KEY: &str = "sk-test-very-secret-0123456789";

    fn spec(kind: ProviderKind) -> ProviderSpec {
        let mut s = ProviderSpec::new(kind.as_str(), kind);
        s.api_key = Some(Secret::new(KEY));
        s
    }

    fn conversation() -> ChatRequest {
        let mut assistant = Message::assistant("");
        assistant.tool_calls.push(ToolCallRef {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: json!({"city": "Paris"}),
        });
        ChatRequest {
            messages: vec![
                Message::system("Be brief."),
                Message::user("Weather in Paris?"),
                assistant,
                Message::tool_result("call_1", "get_weather", "{\"temp_c\":21}"),
            ],
            temperature: Some(0.7),
            max_tokens: Some(256),
            top_p: Some(0.9),
            stop: vec!["END".into()],
            response_format: ResponseFormat::JsonSchema {
                name: "weather".into(),
                schema: json!({"type": "object", "properties": {"summary": {"type": "string"}}}),
            },
            tools: vec![Tool {
                name: "get_weather".into(),
                description: "Current weather of a city".into(),
                parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
            }],
            tool_choice: ToolChoice::Function("get_weather".into()),
            reasoning: Some(Reasoning::Effort(ReasoningEffort::Low)),
            ..Default::default()
        }
    }

    #[test]
    fn passthrough_parameters_reach_the_body_but_never_override() {
        let mut req = ChatRequest::from_prompt("hi");
        req.max_tokens = Some(5);
        req.passthrough.insert("seed".into(), json!(7));
        req.passthrough
            .insert("logit_bias".into(), json!({"50256": -100}));
        req.passthrough.insert("model".into(), json!("evil"));
        let call = build(&spec(ProviderKind::Compatible), "m", &req, false).unwrap();
        let body = call.body;
        assert_eq!(body["seed"], json!(7));
        assert_eq!(body["logit_bias"], json!({"50256": -100}));
        assert_eq!(body["model"], json!("m"));
    }

    #[test]
    fn body_of_a_full_conversation() {
        let call = build(
            &spec(ProviderKind::Openai),
            "gpt-5-mini",
            &conversation(),
            true,
        )
        .unwrap();
        assert_eq!(call.url, "https://api.openai.com/v1/chat/completions");
        let want = json!({
            "model": "gpt-5-mini",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\":21}"},
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": 0.7,
            "top_p": 0.9,
            "max_completion_tokens": 256,
            "stop": ["END"],
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "weather",
                "schema": {"type": "object", "properties": {"summary": {"type": "string"}}}}},
            "tools": [{"type": "function", "function": {
                "name": "get_weather",
                "description": "Current weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "reasoning_effort": "low",
        });
        assert_eq!(call.body, want);
    }

    #[test]
    fn dialects_of_the_three_kinds() {
        let mut req = conversation();
        req.reasoning = Some(Reasoning::Effort(ReasoningEffort::High));
        req.response_format = ResponseFormat::JsonObject;
        req.tool_choice = ToolChoice::Required;

        let or = build(&spec(ProviderKind::Openrouter), "openai/o3", &req, false).unwrap();
        assert_eq!(or.url, "https://openrouter.ai/api/v1/chat/completions");
        assert_eq!(or.body["reasoning"], json!({"effort": "high"}));
        assert!(or.body.get("reasoning_effort").is_none());
        assert_eq!(or.body["max_tokens"], json!(256));
        assert!(or.body.get("max_completion_tokens").is_none());
        assert!(or.body.get("stream").is_none());
        assert!(or.body.get("stream_options").is_none());
        assert_eq!(or.body["response_format"], json!({"type": "json_object"}));
        assert_eq!(or.body["tool_choice"], json!("required"));
        assert_eq!(or.headers["http-referer"], OPENROUTER_REFERER);
        assert_eq!(or.headers["x-title"], OPENROUTER_TITLE);

        req.reasoning = Some(Reasoning::Budget(3000));
        let or = build(&spec(ProviderKind::Openrouter), "x/y", &req, false).unwrap();
        assert_eq!(or.body["reasoning"], json!({"max_tokens": 3000}));

        let mut local = ProviderSpec::new("vllm", ProviderKind::Compatible);
        local.base_url = "http://127.0.0.1:8000/v1/".into();
        local.headers.push(("x-extra".into(), "1".into()));
        let c = build(&local, "qwen3", &req, true).unwrap();
        assert_eq!(c.url, "http://127.0.0.1:8000/v1/chat/completions");
        assert!(
            c.headers.get("authorization").is_none(),
            "no key, no auth header"
        );
        assert_eq!(c.headers["x-extra"], "1");
        assert!(c.headers.get("x-title").is_none());
        assert_eq!(c.body["reasoning_effort"], json!("medium"));
        assert_eq!(c.body["max_tokens"], json!(256));

        // Auto and no tools: nothing about tools on the wire.
        let plain = build(&local, "m", &ChatRequest::from_prompt("hi"), false).unwrap();
        assert_eq!(
            plain.body,
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        );
    }

    #[test]
    fn key_is_required_sensitive_and_never_printed() {
        for kind in [ProviderKind::Openai, ProviderKind::Openrouter] {
            let mut s = spec(kind);
            s.api_key = None;
            let e = build(&s, "m", &ChatRequest::from_prompt("hi"), true).unwrap_err();
            assert_eq!(e.kind(), "config", "{kind:?}");
        }
        for kind in [
            ProviderKind::Openai,
            ProviderKind::Openrouter,
            ProviderKind::Compatible,
        ] {
            let call = build(&spec(kind), "m", &ChatRequest::from_prompt("hi"), true).unwrap();
            let auth = &call.headers["authorization"];
            assert!(auth.is_sensitive(), "{kind:?}");
            assert_eq!(auth.to_str().unwrap(), format!("Bearer {KEY}"));
            let debug = format!("{call:?}");
            assert!(
                !debug.contains(KEY),
                "{kind:?} Debug leaks the key: {debug}"
            );
            assert!(!debug.contains("very-secret"), "{kind:?}");
        }
    }

    #[test]
    fn spec_headers_override_attribution() {
        let mut s = spec(ProviderKind::Openrouter);
        s.headers.push(("X-Title".into(), "my-app".into()));
        let call = build(&s, "m", &ChatRequest::from_prompt("hi"), true).unwrap();
        assert_eq!(call.headers["x-title"], "my-app");
        assert_eq!(call.headers.get_all("x-title").iter().count(), 1);
    }

    #[test]
    fn unparsed_arguments_go_back_verbatim() {
        let mut m = Message::assistant("calling");
        m.tool_calls.push(ToolCallRef {
            id: "c".into(),
            name: "f".into(),
            arguments: Value::String("{not json".into()),
        });
        let v = message(&m);
        assert_eq!(v["content"], json!("calling"));
        assert_eq!(
            v["tool_calls"][0]["function"]["arguments"],
            json!("{not json")
        );
    }

    fn decode(frames: &[&str]) -> (Accumulator, Result<(), EngineError>, bool) {
        let mut d = Decoder::default();
        let mut acc = Accumulator::default();
        let mut out = Vec::new();
        let mut res = Ok(());
        for f in frames {
            res = d.frame("message", f, &mut out);
            if res.is_err() {
                break;
            }
        }
        for x in &out {
            acc.push(x);
        }
        (acc, res, d.is_done())
    }

    #[test]
    fn decoder_choice0_only_and_finish_once() {
        let (acc, res, done) = decode(&[
            r#"{"choices":[{"index":1,"delta":{"content":"other"}},{"index":0,"delta":{"content":"mine","reasoning_content":"hm"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}],"usage":null}"#,
            r#"{"choices":[{"index":1,"delta":{},"finish_reason":"stop"}]}"#,
        ]);
        res.unwrap();
        assert!(done, "a finish of choice 0 ends the stream");
        let c = acc.finish();
        assert_eq!(c.text, "mine");
        assert_eq!(c.thinking, "hm");
        assert_eq!(c.finish_reason, FinishReason::Length);
        assert_eq!(c.raw_finish_reason, "length");
    }

    #[test]
    fn decoder_in_stream_error_before_finish_fails() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        d.frame(
            "message",
            r#"{"choices":[{"index":0,"delta":{"content":"par"}}]}"#,
            &mut out,
        )
        .unwrap();
        let e = d
            .frame(
                "message",
                r#"{"error":{"code":502,"message":"Upstream died"},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}"#,
                &mut out,
            )
            .unwrap_err();
        assert_eq!(
            e,
            EngineError::InStream {
                message: "Upstream died".into()
            }
        );
        assert_eq!(out, vec![Delta::Text("par".into())]);
        let e = Decoder::default()
            .frame("error", r#"{"message":"bad things"}"#, &mut out)
            .unwrap_err();
        assert_eq!(e.to_string(), "provider error in stream: bad things");
    }

    #[test]
    fn decoder_rejects_malformed_frames_and_ignores_after_done() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        assert_eq!(
            d.frame("message", "{not json", &mut out)
                .unwrap_err()
                .kind(),
            "protocol"
        );
        d.frame("message", "[DONE]", &mut out).unwrap();
        d.frame("message", "{garbage after done", &mut out).unwrap();
        assert!(d.is_done());
        assert!(out.is_empty());
    }

    #[test]
    fn response_shapes() {
        assert_eq!(
            parse_response(
                br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}]}"#
            )
            .unwrap(),
            vec![
                Delta::Text("hi".into()),
                Delta::Finish {
                    reason: FinishReason::Stop,
                    raw: String::new()
                }
            ]
        );
        let e = parse_response(br#"{"error":{"code":502,"message":"Upstream down"}}"#).unwrap_err();
        assert_eq!(e.kind(), "server");
        let e = parse_response(br#"{"error":"model loading"}"#).unwrap_err();
        assert_eq!(e.kind(), "in_stream");
        assert_eq!(parse_response(b"{}").unwrap_err().kind(), "protocol");
        assert_eq!(parse_response(b"<html>").unwrap_err().kind(), "protocol");
        // DeepSeek cache hits, Groq usage placement, float counts.
        let u = parse_response(
            br#"{"choices":[],"x_groq":{"usage":{"prompt_tokens":10.0,"completion_tokens":2,"prompt_cache_hit_tokens":4}}}"#,
        )
        .unwrap();
        assert_eq!(
            u,
            vec![Delta::Usage(Usage {
                input_tokens: 10,
                output_tokens: 2,
                cached_input_tokens: 4,
                ..Usage::default()
            })]
        );
    }
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;
    use proptest::prelude::*;

    /// `s` with one character (at `at`, modulo its length) deleted, doubled
    /// by `ch` inserted, or replaced by `ch`.
    fn twisted(s: &str, at: usize, how: u8, ch: char) -> String {
        let mut cs: Vec<char> = s.chars().collect();
        let at = at % cs.len();
        match how {
            0 => {
                cs.remove(at);
            }
            1 => cs.insert(at, ch),
            _ => cs[at] = ch,
        }
        cs.into_iter().collect()
    }

    /// Common chunks as servers send them (spacing, escapes, usage, finish),
    /// half of them with one character deleted, doubled or replaced: the
    /// fast path must read every valid one and refuse whatever the general
    /// path would not read the same.
    fn common(twists: bool) -> impl Strategy<Value = String> {
        let text = prop_oneof![
            Just(r#""Hello""#),
            Just(r#""""#),
            Just(r#""caf\u00e9 \"q\" \\ \n""#),
            Just(r#""\ud83d\ude00 é 😀""#),
            Just("null"),
        ];
        let finish = prop_oneof![Just("null"), Just(r#""stop""#), Just(r#""length""#)];
        let usage = prop_oneof![
            Just("null"),
            Just(r#"{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}"#),
            Just(
                r#"{"prompt_tokens":3,"completion_tokens":2.0,"prompt_tokens_details":{"cached_tokens":1},"cost":0.5}"#
            ),
        ];
        let sp = prop_oneof![Just(""), Just(" "), Just("\n  ")];
        (
            text,
            finish,
            usage,
            sp,
            0..4u8,
            proptest::option::of((0..200usize, 0..3u8, proptest::sample::select(vec![
                '"', ',', '}', ']', '{', '[', '\\', ' ', '0', 'n', '\t', ':', 'e', '-', '1', 'x', 'é',
            ]))),
        )
            .prop_map(move |(text, finish, usage, sp, shape, twist)| {
                let delta = match shape {
                    0 => format!(r#"{{"role":"assistant","content":{text},"refusal":null}}"#),
                    1 => "{}".to_string(),
                    _ => format!(r#"{{{sp}"content"{sp}:{sp}{text}{sp}}}"#),
                };
                let choices = if shape == 3 {
                    "[]".to_string()
                } else {
                    format!(
                        r#"[{{"index":0,{sp}"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]"#
                    )
                };
                let mut c = format!(
                    r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,{sp}"model":"gpt-4o-mini","system_fingerprint":"fp_1","choices":{choices},"usage":{usage}}}"#
                );
                if let Some((at, how, ch)) = twist.filter(|_| twists) {
                    c = twisted(&c, at, how, ch);
                }
                c
            })
    }

    /// Usage objects as servers send them and odder: repeated and escaped
    /// keys, details that are not objects, numbers of every kind, strings a
    /// tree refuses (lone surrogates), with or without a twist that breaks them.
    fn usage_object() -> impl Strategy<Value = String> {
        let scalar = prop_oneof![
            Just("null"),
            Just("0"),
            Just("7"),
            Just("-3"),
            Just("2.0"),
            Just("2.9"),
            Just("-0.5"),
            Just("1e3"),
            Just("-0"),
            Just("12345678901234567890123"),
            Just("18446744073709551615"),
            Just("true"),
            Just("\"9\""),
            Just("\"\\ud800\""),
            Just("[]"),
            Just("[1,{\"a\":2}]"),
            Just("{}"),
            Just("1e999"),
        ];
        let detail_key = prop_oneof![
            Just("cached_tokens"),
            Just("cache_write_tokens"),
            Just("reasoning_tokens"),
            Just("cached\\u005ftokens"),
            Just("audio_tokens"),
        ];
        let details = prop_oneof![
            scalar.clone().prop_map(str::to_string),
            proptest::collection::vec((detail_key, scalar.clone()), 0..4).prop_map(|kv| {
                let body: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", body.join(","))
            }),
        ];
        let key = prop_oneof![
            Just("prompt_tokens"),
            Just("completion_tokens"),
            Just("total_tokens"),
            Just("prompt_cache_hit_tokens"),
            Just("cost"),
            Just("prompt_tokens_details"),
            Just("completion_tokens_details"),
            Just("prompt\\u005ftokens"),
            Just("other"),
        ];
        let entry = (key, details, scalar).prop_map(|(k, d, v)| {
            let value = if k.ends_with("details") {
                d
            } else {
                v.to_string()
            };
            format!("\"{k}\":{value}")
        });
        (
            proptest::collection::vec(entry, 0..8),
            0..10u8,
            proptest::option::of((
                0..400usize,
                0..3u8,
                proptest::sample::select(vec![
                    '"', ',', '}', ']', '{', '\\', ' ', '0', '-', 'e', '.',
                ]),
            )),
        )
            .prop_map(|(entries, shape, twist)| {
                let mut s = match shape {
                    0 => "5".to_string(),
                    1 => "\"usage\"".to_string(),
                    2 => "[1,2]".to_string(),
                    _ => format!("{{{}}}", entries.join(",")),
                };
                if let Some((at, how, ch)) = twist {
                    s = twisted(&s, at, how, ch);
                }
                s
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// The typed usage read gives what the tree read gives, and refuses
        /// what it refuses.
        #[test]
        fn typed_usage_reads_as_the_tree_does(raw in usage_object()) {
            let tree = serde_json::from_str::<Value>(&raw).map(|v| usage(Some(&v)));
            let typed = usage_typed(&raw);
            prop_assert_eq!(tree.is_ok(), typed.is_ok(), "{}", raw);
            if let (Ok(a), Ok(b)) = (tree, typed) {
                prop_assert_eq!(a, b, "{}", raw);
            }
        }
    }

    /// `data` read by `fast` (the decoder's own way) and by `general` (the
    /// general path alone) gives the same deltas, result and finish.
    fn read_alike(
        fast: &mut Decoder,
        general: &mut Decoder,
        data: &str,
    ) -> Result<(), TestCaseError> {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let ra = fast
            .frame_unmasked(
                "message",
                data,
                &super::super::mask::Masker::new([]),
                &mut a,
            )
            .map_err(|e| e.to_string());
        let rb = general
            .general_frame(data.trim(), &mut b)
            .map_err(|e| e.to_string());
        prop_assert_eq!(&a, &b, "{}", data);
        prop_assert_eq!(ra, rb, "{}", data);
        prop_assert_eq!(&fast.finish, &general.finish);
        Ok(())
    }

    /// Chunks shaped like the real ones, with the odd twist.
    fn chunk() -> impl Strategy<Value = String> {
        let scalar = prop_oneof![
            Just("null".to_string()),
            Just("\"\"".to_string()),
            Just("\"hi \\u00e9\\n\"".to_string()),
            Just("\"stop\"".to_string()),
            Just("0".to_string()),
            Just("1".to_string()),
            Just("-1".to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
            Just("[\"x\"]".to_string()),
            Just("{\"prompt_tokens\":1}".to_string()),
            Just("{\"prompt_tokens\":3,\"completion_tokens\":2.0,\"prompt_tokens_details\":{\"cached_tokens\":1},\"cost\":0.5}".to_string()),
            Just("\"length\"".to_string()),
            Just("\"\"".to_string()),
            Just("\"\\ud800\"".to_string()),
            Just("\"\\ud83d\\ude00 a\\\"b\\\\c\\/\"".to_string()),
            Just("\"bad \\x escape\"".to_string()),
            Just("\"raw\ttab\"".to_string()),
            Just("1e5".to_string()),
            Just("-0".to_string()),
            Just("0.5".to_string()),
            Just("01".to_string()),
            Just("12345678901234567890123".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            Just("nul".to_string()),
            Just(" \"spaced\" ".to_string()),
            Just("[1,]".to_string()),
            Just("[1,[2,{\"a\":null,\"a\":[true,false]}]]".to_string()),
        ];
        let delta_keys = proptest::sample::subsequence(
            vec![
                "content",
                "role",
                "refusal",
                "reasoning",
                "reasoning_content",
                "tool_calls",
                "function_call",
                "other",
                "content",
                "cont\\u0065nt",
            ],
            0..5,
        );
        let choice_keys = proptest::sample::subsequence(
            vec!["index", "finish_reason", "logprobs", "index"],
            0..3,
        );
        let top_keys = proptest::sample::subsequence(
            vec![
                "usage",
                "error",
                "x_groq",
                "id",
                "model",
                "usage",
                "us\\u0061ge",
            ],
            0..3,
        );
        (
            delta_keys,
            proptest::collection::vec(scalar.clone(), 9),
            choice_keys,
            proptest::collection::vec(scalar.clone(), 4),
            top_keys,
            proptest::collection::vec(scalar, 6),
            0..6u8,
        )
            .prop_map(|(dk, dv, ck, cv, tk, tv, shape)| {
                let obj = |ks: &[&str], vs: &[String]| {
                    let body: Vec<String> = ks
                        .iter()
                        .zip(vs)
                        .map(|(k, v)| format!("\"{k}\":{v}"))
                        .collect();
                    format!("{{{}}}", body.join(","))
                };
                let delta = obj(&dk, &dv);
                let delta = if shape == 1 {
                    format!("[{}]", dv[0])
                } else {
                    delta
                };
                let mut cks: Vec<String> = ck
                    .iter()
                    .zip(&cv)
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect();
                cks.push(format!("\"delta\":{delta}"));
                let choice = if shape == 2 {
                    format!("[{delta}]")
                } else {
                    format!("{{{}}}", cks.join(","))
                };
                let choices = match shape {
                    3 => format!("[{choice},{choice}]"),
                    4 => "[]".to_string(),
                    _ => format!("[{choice}]"),
                };
                let mut tks: Vec<String> = tk
                    .iter()
                    .zip(&tv)
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect();
                tks.push(format!("\"choices\":{choices}"));
                if shape == 5 {
                    format!("[{}]", choices)
                } else {
                    format!("{{{}}}", tks.join(","))
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 3000,
            rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
            rng_seed: proptest::test_runner::RngSeed::Fixed(11),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// The typed fast path yields exactly what the general path yields.
        #[test]
        fn fast_path_matches_the_general_path(data in chunk()) {
            let (mut fast, mut general) = (Decoder::default(), Decoder::default());
            read_alike(&mut fast, &mut general, &data)?;
            prop_assert_eq!(fast, general);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 4000,
            rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
            rng_seed: proptest::test_runner::RngSeed::Fixed(12),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// The one-pass reader yields exactly what the general path yields, on
        /// real-looking chunks and on near misses.
        #[test]
        fn common_chunks_read_as_the_general_path_reads_them(data in common(true)) {
            let (mut fast, mut general) = (Decoder::default(), Decoder::default());
            read_alike(&mut fast, &mut general, &data)?;
            prop_assert_eq!(fast, general);
        }
    }

    /// Streams of chunks in one envelope (with or without OpenAI's padding),
    /// texts and paddings of every kind, the odd finish, usage or twisted
    /// character: read in order by one decoder, they give what the general
    /// path gives chunk by chunk.
    fn envelope_stream() -> impl Strategy<Value = Vec<String>> {
        let text = prop_oneof![
            Just("Lorem "),
            Just(""),
            Just("a\\\"b"),
            Just("\\u00e9\\n"),
            Just("é 😀"),
            Just("\"}"),
            Just("x\",\"y"),
        ];
        let pad = prop_oneof![Just("bZuWwpMP"), Just(""), Just("q\\\"s"), Just("a\"}")];
        let item = (
            text,
            pad,
            prop_oneof![4 => Just("null"), 1 => Just(r#""stop""#)],
            prop_oneof![4 => Just("null"), 1 => Just(r#"{"prompt_tokens":2,"completion_tokens":3}"#)],
            proptest::option::weighted(
                0.2,
                (
                    0..300usize,
                    proptest::sample::select(vec!['"', '}', 'x', '\\', ' ']),
                ),
            ),
        );
        (any::<bool>(), any::<bool>(), proptest::collection::vec(item, 1..8)).prop_map(
            |(padded, role, items)| {
                items
                    .into_iter()
                    .map(|(text, pad, finish, usage, twist)| {
                        let role = if role { r#""role":"assistant","# } else { "" };
                        let mut c = format!(
                            r#"{{"id":"chatcmpl-9","object":"chat.completion.chunk","created":1755691077,"model":"m","choices":[{{"index":0,"delta":{{{role}"content":"{text}"}},"logprobs":null,"finish_reason":{finish}}}],"usage":{usage}"#
                        );
                        if padded {
                            c.push_str(&format!(r#","obfuscation":"{pad}""#));
                        }
                        c.push('}');
                        if let Some((at, ch)) = twist {
                            let mut cs: Vec<char> = c.chars().collect();
                            let at = at % cs.len();
                            cs[at] = ch;
                            c = cs.into_iter().collect();
                        }
                        c
                    })
                    .collect()
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 2000,
            rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
            rng_seed: proptest::test_runner::RngSeed::Fixed(13),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn streams_in_one_envelope_read_as_the_general_path_reads_them(chunks in envelope_stream()) {
            let (mut fast, mut general) = (Decoder::default(), Decoder::default());
            for data in &chunks {
                read_alike(&mut fast, &mut general, data)?;
            }
        }
    }

    /// The envelope is kept from a plain chunk and read around new text,
    /// padded or not; anything else in it is a miss.
    #[test]
    fn chunks_in_a_kept_envelope_are_read_without_a_parse() {
        for pad in [false, true] {
            let chunk = |text: &str, p: &str| {
                let tail = if pad {
                    format!(r#","obfuscation":"{p}""#)
                } else {
                    String::new()
                };
                format!(
                    r#"{{"id":"c","choices":[{{"index":0,"delta":{{"content":"{text}"}},"finish_reason":null}}],"usage":null{tail}}}"#
                )
            };
            let mut d = Decoder::default();
            let mut out = Vec::new();
            d.frame("message", &chunk("Hi", "abc"), &mut out).unwrap();
            assert!(d.envelope.set && d.envelope.padded == pad);
            assert_eq!(d.envelope.text(&chunk("there", "x1")), Some("there"));
            assert_eq!(d.envelope.text(&chunk("", "")), Some(""));
            assert_eq!(d.envelope.text(&chunk(r"a\nb", "x")), None);
            assert_eq!(
                d.envelope.text(&chunk("ok", r#"q"z"#)),
                if pad { None } else { Some("ok") }.filter(|_| !pad)
            );
            assert_eq!(
                d.envelope
                    .text(&chunk("ok", "x").replace(r#""c""#, r#""d""#)),
                None
            );
        }
    }

    /// On the envelope path only the text is masked, and that is enough: a
    /// secret in the text is masked, one in the envelope misses it.
    #[test]
    fn secrets_are_masked_on_the_envelope_path() {
        let key = "sk-secret-key-0123456789abcdef";
        let masker = super::super::mask::Masker::new([key]);
        let chunk = |id: &str, text: &str| {
            format!(
                r#"{{"id":"{id}","choices":[{{"index":0,"delta":{{"content":"{text}"}},"finish_reason":null}}],"usage":null,"obfuscation":"pad"}}"#
            )
        };
        let mut d = Decoder::default();
        let mut out = Vec::new();
        d.frame_unmasked("message", &chunk("c1", "Hi"), &masker, &mut out)
            .unwrap();
        assert!(d.envelope.set);
        let secret_text = format!("key {key} ok");
        d.frame_unmasked("message", &chunk("c1", &secret_text), &masker, &mut out)
            .unwrap();
        d.frame_unmasked("message", &chunk(key, "there"), &masker, &mut out)
            .unwrap();
        assert_eq!(
            out,
            vec![
                Delta::Text("Hi".into()),
                Delta::Text("key *** ok".into()),
                Delta::Text("there".into()),
            ]
        );
        // The id with the key took the full path and was masked there.
        assert!(!d.envelope.before.contains(key), "{:?}", d.envelope.before);
    }

    /// Untouched common chunks all take the fast path.
    #[test]
    fn untwisted_common_chunks_are_all_read_fast() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        for _ in 0..500 {
            let c = proptest::strategy::ValueTree::current(
                &common(false).new_tree(&mut runner).unwrap(),
            );
            assert!(common_chunk(&c).is_some(), "{c}");
        }
    }

    #[test]
    fn the_common_chunk_takes_the_fast_path() {
        let d = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi \u00e9"},"finish_reason":null,"logprobs":null}],"usage":null}"#;
        let text = |d| common_chunk(d).and_then(|c| c.text.map(|t| t.into_owned()));
        assert_eq!(text(d).as_deref(), Some("Hi é"));
        let first =
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null}}]}"#;
        assert_eq!(text(first).as_deref(), Some(""));
        let fin = common_chunk(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#)
            .expect("a finish chunk is common");
        assert_eq!(fin.finish.as_deref(), Some("stop"));
        let u = common_chunk(r#"{"choices":[],"usage":{"prompt_tokens":1}}"#)
            .expect("a usage chunk is common");
        assert_eq!(u.usage.map(|u| u.get()), Some(r#"{"prompt_tokens":1}"#));
        let spaced = common_chunk(
            " {\"id\" : \"x\", \"choices\" : [ { \"index\" : 0 , \"delta\" : { \"content\" : \"a\\nb\\u00e9\" } } ] , \"usage\" : null } ",
        )
        .expect("whitespace and escapes are common");
        assert_eq!(spaced.text.as_deref(), Some("a\nbé"));
        assert!(spaced.usage.is_none());
        // Escaped keys read as the general path reads them.
        assert_eq!(
            text(r#"{"choices":[{"delta":{"cont\u0065nt":"x"}}]}"#).as_deref(),
            Some("x")
        );
        for other in [
            r#"{"choices":[{"delta":{"tool_calls":[]}}]}"#,
            r#"{"choices":[{"delta":["x"]}]}"#,
            r#"{"choices":[{"delta":{}},{"delta":{}}]}"#,
            r#"{"choices":[{"index":1,"delta":{}}]}"#,
            r#"{"choices":[],"error":{"message":"x"}}"#,
            r#"[[{"delta":{"content":"x"}}]]"#,
            r#"{"choices":[],"choices":[]}"#,
            r#"{"choices":[{"delta":{"content":"x"}}]} x"#,
            r#"{"choices":[{"delta":{"content":"\ud800"}}]}"#,
            r#"{"n":1e400,"choices":[]}"#,
        ] {
            assert!(common_chunk(other).is_none(), "{other}");
        }
    }
}
