//! Validation of request parameters (JSON objects) shared by serve and exec, and the
//! trace/session/agent metadata of one call.

use serde_json::{Map, Value};

use crate::engine::attachment::{content_parts, image_from_url};
use crate::engine::request::{Role, Tool, ToolChoice};
use crate::engine::{ChatRequest, Message, RunOptions};

/// A field problem: which field, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// The field (`max_tokens`, `messages[2].role`, ...).
    pub field: String,
    /// Why it is wrong.
    pub message: String,
}

impl FieldError {
    /// A new error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The JSON type of a value, for messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON object being read.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    /// The object.
    pub map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// Wrap an object.
    pub fn new(map: &'a Map<String, Value>) -> Self {
        Fields { map }
    }

    fn get(&self, k: &str) -> Option<&'a Value> {
        self.map.get(k).filter(|v| !v.is_null())
    }

    /// Refuse fields outside `allowed`.
    pub fn only(&self, allowed: &[&str]) -> Result<(), FieldError> {
        for k in self.map.keys() {
            if !allowed.contains(&k.as_str()) {
                return Err(FieldError::new(
                    k.clone(),
                    format!("unknown field; expected one of: {}", allowed.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// Fields outside `allowed`.
    pub fn unknown(&self, allowed: &[&str]) -> Vec<String> {
        self.map
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .cloned()
            .collect()
    }

    /// An optional string.
    pub fn str(&self, k: &str) -> Result<Option<&'a str>, FieldError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(FieldError::new(
                k,
                format!("expected a string, got {}", type_name(v)),
            )),
        }
    }

    /// An optional non-empty string.
    pub fn nonempty_str(&self, k: &str) -> Result<Option<&'a str>, FieldError> {
        match self.str(k)? {
            Some(s) if s.trim().is_empty() => Err(FieldError::new(k, "must not be empty")),
            x => Ok(x),
        }
    }

    /// An optional string or number, as a string (ids).
    pub fn id(&self, k: &str) -> Result<Option<String>, FieldError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(v) => Err(FieldError::new(
                k,
                format!("expected a string or a number, got {}", type_name(v)),
            )),
        }
    }

    /// An optional boolean.
    pub fn bool(&self, k: &str) -> Result<Option<bool>, FieldError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(FieldError::new(
                k,
                format!("expected true or false, got {}", type_name(v)),
            )),
        }
    }

    /// An optional integer in `min..=max`.
    pub fn uint(&self, k: &str, min: u64, max: u64) -> Result<Option<u64>, FieldError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                let v = n.as_u64().or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                        .map(|f| f as u64)
                });
                match v {
                    Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
                    _ => Err(FieldError::new(
                        k,
                        format!("expected a whole number from {min} to {max}, got {n}"),
                    )),
                }
            }
            Some(v) => Err(FieldError::new(
                k,
                format!("expected a whole number, got {}", type_name(v)),
            )),
        }
    }

    /// An optional number in `min..=max`.
    pub fn num(&self, k: &str, min: f64, max: f64) -> Result<Option<f64>, FieldError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(v) if v >= min && v <= max => Ok(Some(v)),
                _ => Err(FieldError::new(
                    k,
                    format!("expected a number from {min} to {max}, got {n}"),
                )),
            },
            Some(v) => Err(FieldError::new(
                k,
                format!("expected a number, got {}", type_name(v)),
            )),
        }
    }

    /// An optional list of non-empty strings, itself non-empty.
    pub fn str_list(&self, k: &str) -> Result<Option<Vec<String>>, FieldError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Array(a)) => {
                if a.is_empty() {
                    return Err(FieldError::new(k, "must name at least one model"));
                }
                let mut out = Vec::new();
                for (i, v) in a.iter().enumerate() {
                    match v {
                        Value::String(s) if !s.trim().is_empty() => out.push(s.clone()),
                        Value::String(_) => {
                            return Err(FieldError::new(format!("{k}[{i}]"), "must not be empty"))
                        }
                        v => {
                            return Err(FieldError::new(
                                format!("{k}[{i}]"),
                                format!("expected a string, got {}", type_name(v)),
                            ))
                        }
                    }
                }
                Ok(Some(out))
            }
            Some(v) => Err(FieldError::new(
                k,
                format!("expected an array of strings, got {}", type_name(v)),
            )),
        }
    }

    /// The trace id (32 hex digits or a traceparent).
    pub fn trace_id(&self, k: &str) -> Result<Option<String>, FieldError> {
        match self.str(k)? {
            None => Ok(None),
            Some(s) => parse_trace_id(s)
                .map(Some)
                .map_err(|m| FieldError::new(k, m)),
        }
    }

    /// `trace_id`, `session_id`, `source_agent`.
    pub fn call_meta(&self) -> Result<CallMeta, FieldError> {
        Ok(CallMeta {
            trace_id: self.trace_id("trace_id")?,
            session_id: self.nonempty_str("session_id")?.map(String::from),
            source_agent: self.nonempty_str("source_agent")?.map(String::from),
        })
    }
}

/// The fields every prompt-taking method reads.
pub const PROMPT_FIELDS: &[&str] = &[
    "prompt",
    "messages",
    "images",
    "system",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "tools",
    "tool_choice",
    "stream",
    "cache",
    "trace_id",
    "session_id",
    "source_agent",
];

/// One of `messages`: `{role, content}` where `content` is a string or OpenAI-style
/// content parts (text, and `image_url` parts with data: URLs in user messages).
/// Attachments come only from image parts (or `images`), checked here: a client
/// cannot hand in an `attachments` list of its own.
fn message(i: usize, m: &Value) -> Result<Message, FieldError> {
    let at = format!("messages[{i}]");
    let mut m = m.clone();
    let mut images = Vec::new();
    if let Value::Object(o) = &mut m {
        if o.contains_key("attachments") {
            return Err(FieldError::new(
                format!("{at}.attachments"),
                "not accepted; send images as image_url content parts (data: URLs) or in images",
            ));
        }
        let user = o.get("role").and_then(Value::as_str) == Some("user");
        if let Some(Value::Array(parts)) = o.get("content") {
            let (text, imgs) = content_parts(parts, user)
                .map_err(|e| FieldError::new(format!("{at}.content{}", e.at), e.message))?;
            o.insert("content".into(), Value::String(text));
            images = imgs;
        }
    }
    let mut msg: Message =
        serde_json::from_value(m).map_err(|e| FieldError::new(at, e.to_string()))?;
    msg.attachments = images;
    Ok(msg)
}

/// The request of a prompt-taking method: `prompt` (string) or `messages`
/// (`[{role, content}]`), plus `system`, `max_tokens`, `temperature`, `top_p`,
/// `stop`, `tools`, `tool_choice`.
pub fn chat_request(f: &Fields<'_>) -> Result<ChatRequest, FieldError> {
    let mut req = ChatRequest::default();
    if let Some(s) = f.str("system")? {
        req.messages.push(Message::system(s));
    }
    let prompt = f.str("prompt")?;
    let messages = f.get("messages");
    match (prompt, messages) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                "prompt",
                "give either prompt or messages, not both",
            ))
        }
        (Some(p), None) => {
            if p.trim().is_empty() {
                return Err(FieldError::new("prompt", "must not be empty"));
            }
            req.messages.push(Message::user(p));
        }
        (None, Some(Value::Array(a))) => {
            if a.is_empty() {
                return Err(FieldError::new("messages", "must not be empty"));
            }
            for (i, m) in a.iter().enumerate() {
                req.messages.push(message(i, m)?);
            }
        }
        (None, Some(v)) => {
            return Err(FieldError::new(
                "messages",
                format!("expected an array of messages, got {}", type_name(v)),
            ))
        }
        (None, None) => return Err(FieldError::new("prompt", "missing (or give messages)")),
    }
    // `images`: data: URLs attached to the prompt (the last user message).
    if let Some(v) = f.get("images") {
        let Value::Array(urls) = v else {
            return Err(FieldError::new(
                "images",
                format!("expected an array of data: URLs, got {}", type_name(v)),
            ));
        };
        let mut images = Vec::new();
        for (j, u) in urls.iter().enumerate() {
            let Some(u) = u.as_str() else {
                return Err(FieldError::new(
                    format!("images[{j}]"),
                    format!("expected a data: URL string, got {}", type_name(u)),
                ));
            };
            images.push(
                image_from_url(&format!("image-{}", j + 1), u)
                    .map_err(|m| FieldError::new(format!("images[{j}]"), m))?,
            );
        }
        match req.messages.iter_mut().rev().find(|m| m.role == Role::User) {
            Some(m) => m.attachments.extend(images),
            None if images.is_empty() => {}
            None => {
                return Err(FieldError::new(
                    "images",
                    "there is no user message to attach them to",
                ))
            }
        }
    }
    req.max_tokens = f.uint("max_tokens", 1, u32::MAX as u64)?.map(|v| v as u32);
    req.temperature = f.num("temperature", 0.0, 2.0)?.map(|v| v as f32);
    req.top_p = f.num("top_p", 0.0, 1.0)?.map(|v| v as f32);
    match f.get("stop") {
        None => {}
        Some(Value::String(s)) => req.stop = vec![s.clone()],
        Some(Value::Array(_)) => req.stop = f.str_list("stop")?.unwrap_or_default(),
        Some(v) => {
            return Err(FieldError::new(
                "stop",
                format!(
                    "expected a string or an array of strings, got {}",
                    type_name(v)
                ),
            ))
        }
    }
    if let Some(t) = f.get("tools") {
        let Value::Array(items) = t else {
            return Err(FieldError::new(
                "tools",
                format!("expected an array, got {}", type_name(t)),
            ));
        };
        req.tools = items
            .iter()
            .enumerate()
            .map(|(i, t)| {
                serde_json::from_value::<Tool>(openai_unwrapped(t).clone())
                    .map_err(|e| FieldError::new(format!("tools[{i}]"), e.to_string()))
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(t) = f.get("tool_choice") {
        req.tool_choice = serde_json::from_value::<ToolChoice>(t.clone())
            .or_else(|e| match t.get("function").and_then(|f| f.get("name")) {
                // OpenAI's {"type": "function", "function": {"name": ...}}.
                Some(Value::String(n)) => Ok(ToolChoice::Function(n.clone())),
                _ => Err(e),
            })
            .map_err(|e| FieldError::new("tool_choice", e.to_string()))?;
    }
    Ok(req)
}

/// OpenAI's tool object `{"type": "function", "function": {name, description,
/// parameters}}` as its inner function; any other value as it is.
fn openai_unwrapped(t: &Value) -> &Value {
    match (t.get("type"), t.get("function")) {
        (Some(Value::String(ty)), Some(f @ Value::Object(_))) if ty == "function" => f,
        _ => t,
    }
}

/// Trace, session and calling agent of one call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallMeta {
    /// W3C trace id (32 lowercase hex digits).
    pub trace_id: Option<String>,
    /// Session id.
    pub session_id: Option<String>,
    /// Calling agent.
    pub source_agent: Option<String>,
}

impl CallMeta {
    /// Fields of the call override headers.
    pub fn merge(self, over: CallMeta) -> CallMeta {
        CallMeta {
            trace_id: over.trace_id.or(self.trace_id),
            session_id: over.session_id.or(self.session_id),
            source_agent: over.source_agent.or(self.source_agent),
        }
    }

    /// Run options carrying this metadata.
    pub fn run_options(&self) -> RunOptions {
        RunOptions {
            trace_id: self.trace_id.clone(),
            session_id: self.session_id.clone(),
            source_agent: self.source_agent.clone(),
            ..Default::default()
        }
    }
}

/// A trace id: 32 hex digits (not all zero), or a whole W3C `traceparent`.
pub fn parse_trace_id(s: &str) -> Result<String, String> {
    let s = s.trim();
    let id = match s.split('-').collect::<Vec<_>>().as_slice() {
        [_, id, _, _] => *id,
        _ => s,
    };
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("must be 32 hex digits (a W3C trace id) or a traceparent".into());
    }
    if id.bytes().all(|b| b == b'0') {
        return Err("an all-zero trace id is invalid".into());
    }
    Ok(id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn errors_name_the_field() {
        let m = obj(json!({"max_tokens": "ten", "temperature": 9}));
        let f = Fields::new(&m);
        let e = f.uint("max_tokens", 1, 100).unwrap_err();
        assert_eq!(e.field, "max_tokens");
        assert!(e.message.contains("a string"), "{e}");
        let e = f.num("temperature", 0.0, 2.0).unwrap_err();
        assert_eq!(e.field, "temperature");
    }

    #[test]
    fn prompt_or_messages() {
        let m = obj(json!({"prompt": "hi", "system": "be brief", "stop": "x"}));
        let r = chat_request(&Fields::new(&m)).unwrap();
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.stop, vec!["x".to_string()]);
        let m = obj(json!({"messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(chat_request(&Fields::new(&m)).unwrap().messages.len(), 1);
        let m = obj(json!({"messages": [{"role": "robot", "content": "hi"}]}));
        let e = chat_request(&Fields::new(&m)).unwrap_err();
        assert_eq!(e.field, "messages[0]");
        let m = obj(json!({}));
        assert_eq!(chat_request(&Fields::new(&m)).unwrap_err().field, "prompt");
    }

    #[test]
    fn tools_in_either_shape() {
        let m = obj(json!({"prompt": "hi",
            "tools": [
                {"name": "flat", "parameters": {"type": "object"}},
                {"type": "function", "function": {"name": "wrapped", "description": "d",
                 "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "wrapped"}}}));
        let r = chat_request(&Fields::new(&m)).unwrap();
        assert_eq!(r.tools[0].name, "flat");
        assert_eq!(r.tools[1].name, "wrapped");
        assert_eq!(r.tools[1].description, "d");
        assert_eq!(r.tool_choice, ToolChoice::Function("wrapped".into()));
        let m = obj(json!({"prompt": "hi", "tools": [{"type": "function"}]}));
        assert_eq!(
            chat_request(&Fields::new(&m)).unwrap_err().field,
            "tools[0]"
        );
    }
}
