//! A JSON API described in config, with no code: a request template and JSON
//! pointers into the answer. So a team's in-house model joins a comparison:
//!
//! ```toml
//! [providers.inhouse]
//! kind = "template"
//! base_url = "http://10.0.0.5:9000"
//! api_key_env = "INHOUSE_KEY"          # optional; sent as `Authorization: Bearer …`
//!
//! [providers.inhouse.template]
//! path = "/v1/generate"
//! body = { model = "{{model}}", prompt = "{{prompt}}", system = "{{system}}",
//!          params = { max_new_tokens = "{{max_tokens}}", temperature = "{{temperature}}" } }
//! text = "/output/text"                 # JSON pointers into the response
//! finish_reason = "/output/stop_reason"
//! input_tokens = "/usage/in"
//! output_tokens = "/usage/out"
//! error = "/error/message"
//! ```
//!
//! A string that is exactly one placeholder becomes that value with its JSON
//! type (a number, an array, an object), and its key is dropped when the
//! value is unset; placeholders inside longer strings are replaced by text.
//! Placeholders: `model`, `prompt` (the last user message with its attached
//! files), `system`, `messages` (`[{role, content}]`), `max_tokens`,
//! `temperature`, `top_p`, `stop`. Requests are never streamed.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{base_headers, join_url, put_header, snippet, HttpCall, ProviderSpec};
use crate::engine::error::EngineError;
use crate::engine::event::{Delta, FinishReason, Usage};
use crate::engine::request::{ChatRequest, Role};

/// `[providers.NAME.template]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// Path appended to the provider's base URL.
    #[serde(default)]
    pub path: String,
    /// The request body, with `{{placeholders}}`.
    pub body: Value,
    /// Pointer to the answer text (required).
    pub text: String,
    /// Pointer to the finish reason.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Pointer to the prompt token count.
    #[serde(default)]
    pub input_tokens: Option<String>,
    /// Pointer to the output token count.
    #[serde(default)]
    pub output_tokens: Option<String>,
    /// Pointer to an error message in a 200 response.
    #[serde(default)]
    pub error: Option<String>,
    /// Header carrying the key (default `authorization`).
    #[serde(default)]
    pub auth_header: Option<String>,
    /// Prefix of the key in that header (default `Bearer ` for
    /// `authorization`, none otherwise).
    #[serde(default)]
    pub auth_prefix: Option<String>,
}

/// The placeholder names a template may use.
pub const PLACEHOLDERS: &[&str] = &[
    "model",
    "prompt",
    "system",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
];

impl TemplateSpec {
    /// Check the pointers and placeholders, naming what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let pointers = [
            ("text", Some(&self.text)),
            ("finish_reason", self.finish_reason.as_ref()),
            ("input_tokens", self.input_tokens.as_ref()),
            ("output_tokens", self.output_tokens.as_ref()),
            ("error", self.error.as_ref()),
        ];
        for (k, p) in pointers {
            if let Some(p) = p {
                if !p.is_empty() && !p.starts_with('/') {
                    return Err(format!(
                        "`{k}` must be a JSON pointer starting with `/`, got {p:?}"
                    ));
                }
            }
        }
        let mut unknown = Vec::new();
        walk_strings(&self.body, &mut |s| {
            for name in placeholders_in(s) {
                if !PLACEHOLDERS.contains(&name) {
                    unknown.push(name.to_string());
                }
            }
        });
        if !unknown.is_empty() {
            return Err(format!(
                "unknown placeholder(s) in `body`: {}; known: {}",
                unknown.join(", "),
                PLACEHOLDERS.join(", ")
            ));
        }
        Ok(())
    }
}

fn walk_strings(v: &Value, f: &mut impl FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().for_each(|x| walk_strings(x, f)),
        Value::Object(o) => o.values().for_each(|x| walk_strings(x, f)),
        _ => {}
    }
}

/// The names of the `{{name}}` placeholders in `s`.
fn placeholders_in(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("{{") {
        let after = &rest[i + 2..];
        let Some(j) = after.find("}}") else { break };
        out.push(after[..j].trim());
        rest = &after[j + 2..];
    }
    out
}

/// The error for a `template` provider with no `[template]` table.
pub fn missing(spec: &ProviderSpec) -> EngineError {
    EngineError::Config {
        message: format!(
            "provider {:?} is of kind \"template\" but has no [providers.{}.template] table",
            spec.name, spec.name
        ),
    }
}

/// The values of the placeholders for one request.
fn values(model: &str, req: &ChatRequest) -> Map<String, Value> {
    let mut v = Map::new();
    v.insert("model".into(), json!(model));
    let prompt = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| m.text_with_files().into_owned())
        .unwrap_or_default();
    v.insert("prompt".into(), json!(prompt));
    v.insert(
        "system".into(),
        req.system_text().map_or(Value::Null, Value::String),
    );
    let messages: Vec<Value> = req
        .messages
        .iter()
        .map(|m| {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
            };
            json!({"role": role, "content": m.text_with_files()})
        })
        .collect();
    v.insert("messages".into(), Value::Array(messages));
    let num = |x: Option<f32>| {
        x.and_then(|x| x.to_string().parse::<f64>().ok())
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number)
    };
    v.insert(
        "max_tokens".into(),
        req.max_tokens.map_or(Value::Null, |n| json!(n)),
    );
    v.insert("temperature".into(), num(req.temperature));
    v.insert("top_p".into(), num(req.top_p));
    v.insert(
        "stop".into(),
        if req.stop.is_empty() {
            Value::Null
        } else {
            json!(req.stop)
        },
    );
    v
}

/// Fill a template node; `None` means "drop this key" (an unset value).
fn fill(node: &Value, vals: &Map<String, Value>) -> Option<Value> {
    match node {
        Value::String(s) => {
            let names = placeholders_in(s);
            let t = s.trim();
            if names.len() == 1 && t.starts_with("{{") && t.ends_with("}}") {
                let v = vals.get(names[0]).cloned().unwrap_or(Value::Null);
                return (!v.is_null()).then_some(v);
            }
            let mut out = s.clone();
            for n in names {
                let text = match vals.get(n) {
                    Some(Value::String(x)) => x.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                };
                out = out.replacen(&format!("{{{{{n}}}}}"), &text, 1);
                // Spaced form `{{ n }}`.
                out = out.replacen(&format!("{{{{ {n} }}}}"), &text, 1);
            }
            Some(Value::String(out))
        }
        Value::Array(a) => Some(Value::Array(
            a.iter().filter_map(|x| fill(x, vals)).collect(),
        )),
        Value::Object(o) => Some(Value::Object(
            o.iter()
                .filter_map(|(k, v)| fill(v, vals).map(|v| (k.clone(), v)))
                .collect(),
        )),
        other => Some(other.clone()),
    }
}

/// Build the request. Images cannot be sent (a template has no place for
/// them); the capability check refuses them before this.
pub fn build(spec: &ProviderSpec, model: &str, req: &ChatRequest) -> Result<HttpCall, EngineError> {
    let t = spec.extra.template.as_ref().ok_or_else(|| missing(spec))?;
    if req.has_images() {
        return Err(EngineError::Config {
            message: format!(
                "{}/{model} (a templated provider) cannot take images",
                spec.name
            ),
        });
    }
    let mut headers = base_headers(spec)?;
    if let Some(key) = spec.api_key.as_ref().filter(|k| !k.expose().is_empty()) {
        let header = t.auth_header.as_deref().unwrap_or("authorization");
        let prefix =
            t.auth_prefix
                .as_deref()
                .unwrap_or(if header.eq_ignore_ascii_case("authorization") {
                    "Bearer "
                } else {
                    ""
                });
        put_header(
            &mut headers,
            header,
            &format!("{prefix}{}", key.expose()),
            true,
        )?;
    }
    let vals = values(model, req);
    Ok(HttpCall {
        url: if t.path.is_empty() {
            spec.base_url.clone()
        } else {
            join_url(&spec.base_url, &t.path)
        },
        headers,
        body: fill(&t.body, &vals).unwrap_or(Value::Null),
    })
}

/// Read a response through the template's pointers.
pub fn parse_response(t: &TemplateSpec, body: &[u8]) -> Result<Vec<Delta>, EngineError> {
    let text = String::from_utf8_lossy(body);
    let v: Value = serde_json::from_str(text.trim()).map_err(|e| EngineError::Protocol {
        message: format!("templated provider sent no JSON ({e}): {}", snippet(&text)),
    })?;
    let at = |p: &Option<String>| p.as_deref().and_then(|p| v.pointer(p));
    if let Some(e) = at(&t.error).filter(|e| !e.is_null()) {
        let message = e.as_str().map_or_else(|| e.to_string(), str::to_string);
        if !message.is_empty() {
            return Err(EngineError::InStream { message });
        }
    }
    let answer = match v.pointer(&t.text) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => {
            return Err(EngineError::Protocol {
                message: format!(
                    "templated provider: nothing at the text pointer {:?} in {}",
                    t.text,
                    snippet(&text)
                ),
            })
        }
        Some(other) => other.to_string(),
    };
    let mut out = Vec::new();
    if !answer.is_empty() {
        out.push(Delta::Text(answer));
    }
    let count = |p: &Option<String>| {
        at(p).and_then(|x| x.as_u64().or_else(|| x.as_f64().map(|f| f as u64)))
    };
    let (input, output) = (count(&t.input_tokens), count(&t.output_tokens));
    if input.is_some() || output.is_some() {
        out.push(Delta::Usage(Usage {
            input_tokens: input.unwrap_or(0),
            output_tokens: output.unwrap_or(0),
            ..Usage::default()
        }));
    }
    let raw = at(&t.finish_reason)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let reason = match raw.to_ascii_lowercase().as_str() {
        "length" | "max_tokens" | "max_length" | "max_new_tokens" | "truncated" => {
            FinishReason::Length
        }
        "content_filter" | "safety" | "filtered" => FinishReason::ContentFilter,
        "tool_calls" | "tool_use" => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    };
    out.push(Delta::Finish { reason, raw });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::provider::{ProviderKind, Secret};
    use crate::engine::request::Message;

    fn tpl() -> TemplateSpec {
        toml::from_str(
            r#"
path = "/v1/generate"
body = { model = "{{model}}", prompt = "{{prompt}}", system = "{{system}}", note = "for {{model}}",
         params = { max_new_tokens = "{{max_tokens}}", temperature = "{{temperature}}", stop = "{{stop}}" } }
text = "/output/text"
finish_reason = "/output/stop"
input_tokens = "/usage/in"
output_tokens = "/usage/out"
error = "/error"
"#,
        )
        .unwrap()
    }

    #[test]
    fn body_from_template() {
        let t = tpl();
        t.validate().unwrap();
        let mut spec = ProviderSpec::new("inhouse", ProviderKind::Template);
        spec.base_url = "http://127.0.0.1:9000".into();
        spec.api_key = Some(Secret::new("k-123"));
        spec.extra.template = Some(std::sync::Arc::new(t));
        let mut req = ChatRequest::from_prompt("Hi \"there\"");
        req.max_tokens = Some(64);
        req.temperature = Some(0.2);
        let call = build(&spec, "house-7b", &req).unwrap();
        assert_eq!(call.url, "http://127.0.0.1:9000/v1/generate");
        assert_eq!(call.headers["authorization"], "Bearer k-123");
        assert!(call.headers["authorization"].is_sensitive());
        assert_eq!(
            call.body,
            json!({"model": "house-7b", "prompt": "Hi \"there\"", "note": "for house-7b",
                   "params": {"max_new_tokens": 64, "temperature": 0.2}})
        );
        let mut img = Message::user("look");
        img.attachments.push(
            crate::engine::attachment::image_from_bytes(
                "a.png",
                crate::engine::attachment::tests_png(),
            )
            .unwrap(),
        );
        req.messages = vec![img];
        assert!(build(&spec, "m", &req)
            .unwrap_err()
            .to_string()
            .contains("cannot take images"));
    }

    #[test]
    fn bad_templates_are_named() {
        let mut t = tpl();
        t.text = "output.text".into();
        assert!(t
            .validate()
            .unwrap_err()
            .contains("`text` must be a JSON pointer"));
        let mut t = tpl();
        t.body = json!({"p": "{{promt}}"});
        assert!(t.validate().unwrap_err().contains("promt"));
    }

    #[test]
    fn response_through_pointers() {
        let t = tpl();
        let out = parse_response(
            &t,
            br#"{"output":{"text":"Hello","stop":"max_new_tokens"},"usage":{"in":7,"out":3},"error":null}"#,
        )
        .unwrap();
        assert_eq!(
            out,
            vec![
                Delta::Text("Hello".into()),
                Delta::Usage(Usage {
                    input_tokens: 7,
                    output_tokens: 3,
                    ..Usage::default()
                }),
                Delta::Finish {
                    reason: FinishReason::Length,
                    raw: "max_new_tokens".into()
                }
            ]
        );
        let e = parse_response(&t, br#"{"error":"model offline"}"#).unwrap_err();
        assert_eq!(e.to_string(), "provider error in stream: model offline");
        let e = parse_response(&t, br#"{"output":{}}"#).unwrap_err();
        assert!(e.to_string().contains("/output/text"), "{e}");
    }
}
