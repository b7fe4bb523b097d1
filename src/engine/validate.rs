//! Structured output and tool calls, checked: a schema or tools file is read
//! and validated before anything is sent, and every answer is judged after
//! (`schema_valid` and the first error path; each tool call's validity
//! against its function's parameter schema).

use std::path::Path;

use serde_json::Value;

use super::error::EngineError;
use super::event::{Completion, SchemaError};
use super::request::{ChatRequest, ResponseFormat, Tool};

fn bad(path: &Path, why: impl std::fmt::Display) -> EngineError {
    EngineError::Config {
        message: format!("{}: {why}", path.display()),
    }
}

fn read_json(path: &Path) -> Result<Value, EngineError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        bad(
            path,
            match e.kind() {
                std::io::ErrorKind::NotFound => "no such file".to_string(),
                _ => format!("cannot be read ({e})"),
            },
        )
    })?;
    serde_json::from_str(&text).map_err(|e| bad(path, format!("is not valid JSON ({e})")))
}

/// Whether `schema` is a usable JSON Schema; the error says what is wrong.
pub fn check_schema(schema: &Value) -> Result<(), String> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err("a JSON Schema must be an object".into());
    }
    jsonschema::validator_for(schema).map(|_| ()).map_err(|e| {
        let at = e.instance_path().to_string();
        if at.is_empty() {
            format!("is not a valid JSON Schema: {e}")
        } else {
            format!("is not a valid JSON Schema: at {at}: {e}")
        }
    })
}

/// Read a JSON Schema file for `--schema`: the response format asking for
/// JSON that matches it, named after the file (or the schema's `title`).
pub fn load_schema(path: &Path) -> Result<ResponseFormat, EngineError> {
    let schema = read_json(path)?;
    check_schema(&schema).map_err(|why| bad(path, why))?;
    let name = schema
        .get("title")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().replace(".schema", ""))
        })
        .unwrap_or_else(|| "answer".into());
    // OpenAI wants `^[a-zA-Z0-9_-]{1,64}$`.
    let mut name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        name = "answer".into();
    }
    Ok(ResponseFormat::JsonSchema { name, schema })
}

/// Parse a tools list: a JSON array of functions in OpenAI's shape
/// (`{"type": "function", "function": {name, description, parameters}}`),
/// or of bare `{name, description, parameters}` objects.
pub fn parse_tools(v: &Value) -> Result<Vec<Tool>, String> {
    let list = v.as_array().ok_or(
        "must be a JSON list of functions ([{\"type\": \"function\", \"function\": {...}}])",
    )?;
    if list.is_empty() {
        return Err("is an empty list: give at least one function".into());
    }
    let mut out: Vec<Tool> = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let f = match item.get("type").and_then(Value::as_str) {
            Some("function") => item.get("function").ok_or(format!(
                "item {i}: `type` is \"function\" but there is no `function` object"
            ))?,
            Some(other) => {
                return Err(format!(
                    "item {i}: only function tools can be compared, not {other:?}"
                ))
            }
            None => item,
        };
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or(format!("item {i}: a function needs a non-empty `name`"))?;
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            || name.len() > 64
        {
            return Err(format!(
                "item {i}: function name {name:?} must be 1-64 letters, digits, _ or -"
            ));
        }
        if out.iter().any(|t| t.name == name) {
            return Err(format!("item {i}: function {name:?} is listed twice"));
        }
        let parameters = f
            .get("parameters")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}}));
        if parameters.get("type").and_then(Value::as_str) != Some("object") {
            return Err(format!(
                "item {i} ({name}): `parameters` must be a JSON Schema of type \"object\""
            ));
        }
        check_schema(&parameters).map_err(|e| format!("item {i} ({name}): `parameters` {e}"))?;
        out.push(Tool {
            name: name.to_string(),
            description: f
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            parameters,
        });
    }
    Ok(out)
}

/// Read a tools file for `--tools`.
pub fn load_tools(path: &Path) -> Result<Vec<Tool>, EngineError> {
    let v = read_json(path)?;
    parse_tools(&v).map_err(|why| bad(path, why))
}

/// The JSON of an answer: the text itself, or the inside of one Markdown
/// code fence around it (models asked in words sometimes add one).
fn answer_json(text: &str) -> Result<Value, String> {
    let t = text.trim();
    let inner = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|s| s.strip_suffix("```"))
        .unwrap_or(t);
    serde_json::from_str(inner.trim()).map_err(|e| format!("the answer is not JSON ({e})"))
}

/// The first error of `instance` against `schema`, as (pointer, message).
fn first_error(schema: &Value, instance: &Value) -> Option<(String, String)> {
    let validator = jsonschema::validator_for(schema).ok()?;
    let e = validator.iter_errors(instance).next()?;
    Some((e.instance_path().to_string(), e.to_string()))
}

/// Judge a finished answer against what the request asked for: JSON mode
/// (`schema_valid` = the answer is a JSON object), a JSON Schema (matches
/// it, else the first error and its path), and each tool call (names an
/// offered function and its arguments match its parameters).
pub fn judge(req: &ChatRequest, c: &mut Completion) {
    let answered = c.error.is_none() || !c.text.is_empty();
    match &req.response_format {
        ResponseFormat::Text => {}
        _ if !answered || (c.text.is_empty() && !c.tool_calls.is_empty()) => {}
        ResponseFormat::JsonObject => match answer_json(&c.text) {
            Ok(Value::Object(_)) => {
                c.schema_valid = Some(true);
                c.schema_error = None;
            }
            Ok(_) => {
                c.schema_valid = Some(false);
                c.schema_error = Some(SchemaError {
                    path: String::new(),
                    message: "the answer is JSON but not an object".into(),
                });
            }
            Err(message) => {
                c.schema_valid = Some(false);
                c.schema_error = Some(SchemaError {
                    path: String::new(),
                    message,
                });
            }
        },
        ResponseFormat::JsonSchema { schema, .. } => match answer_json(&c.text) {
            Ok(v) => match first_error(schema, &v) {
                None => {
                    c.schema_valid = Some(true);
                    c.schema_error = None;
                }
                Some((path, message)) => {
                    c.schema_valid = Some(false);
                    c.schema_error = Some(SchemaError { path, message });
                }
            },
            Err(message) => {
                c.schema_valid = Some(false);
                c.schema_error = Some(SchemaError {
                    path: String::new(),
                    message,
                });
            }
        },
    }
    if req.tools.is_empty() {
        return;
    }
    for call in &mut c.tool_calls {
        let Some(tool) = req.tools.iter().find(|t| t.name == call.name) else {
            call.valid = Some(false);
            call.invalid_reason = Some(format!("{:?} is not one of the offered tools", call.name));
            continue;
        };
        let args = call.arguments_json();
        if let Value::String(_) = args {
            call.valid = Some(false);
            call.invalid_reason = Some("the arguments are not JSON".into());
            continue;
        }
        match first_error(&tool.parameters, &args) {
            None => {
                call.valid = Some(true);
                call.invalid_reason = None;
            }
            Some((path, message)) => {
                call.valid = Some(false);
                let at = if path.is_empty() { "/".into() } else { path };
                call.invalid_reason = Some(format!("at {at}: {message}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::event::ToolCall;
    use serde_json::json;

    fn schema_req() -> ChatRequest {
        let mut req = ChatRequest::from_prompt("x");
        req.response_format = ResponseFormat::JsonSchema {
            name: "person".into(),
            schema: json!({"type": "object", "required": ["name", "age"],
                "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                               "tags": {"type": "array", "items": {"type": "string"}}}}),
        };
        req
    }

    fn verdict(req: &ChatRequest, text: &str) -> (Option<bool>, Option<SchemaError>) {
        let mut c = Completion {
            text: text.into(),
            ..Default::default()
        };
        judge(req, &mut c);
        (c.schema_valid, c.schema_error)
    }

    #[test]
    fn answers_against_a_schema() {
        let req = schema_req();
        assert_eq!(
            verdict(&req, r#"{"name":"Ada","age":36}"#),
            (Some(true), None)
        );
        assert_eq!(
            verdict(&req, "```json\n{\"name\":\"Ada\",\"age\":36}\n```").0,
            Some(true)
        );
        let (ok, e) = verdict(&req, r#"{"name":"Ada","age":36,"tags":["a",7]}"#);
        assert_eq!(ok, Some(false));
        let e = e.unwrap();
        assert_eq!(e.path, "/tags/1");
        assert!(e.message.contains("string"), "{}", e.message);
        let (_, e) = verdict(&req, r#"{"name":"Ada"}"#);
        assert_eq!(e.unwrap().path, "");
        let (ok, e) = verdict(&req, "Ada is 36.");
        assert_eq!(ok, Some(false));
        assert!(e.unwrap().message.contains("not JSON"));
        // JSON mode: any object.
        let mut req = ChatRequest::from_prompt("x");
        req.response_format = ResponseFormat::JsonObject;
        assert_eq!(verdict(&req, r#"{"a":1}"#).0, Some(true));
        assert_eq!(verdict(&req, "[1]").0, Some(false));
        // No JSON asked: no verdict.
        assert_eq!(verdict(&ChatRequest::from_prompt("x"), "hi"), (None, None));
    }

    #[test]
    fn tool_calls_against_their_schemas() {
        let mut req = ChatRequest::from_prompt("x");
        req.tools = parse_tools(&json!([{"type": "function", "function": {
            "name": "get_weather", "description": "d",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]))
        .unwrap();
        let mut c = Completion::default();
        for (name, args) in [
            ("get_weather", r#"{"city":"Paris"}"#),
            ("get_weather", r#"{"city":3}"#),
            ("get_weather", "{broken"),
            ("launch", "{}"),
        ] {
            c.tool_calls.push(ToolCall {
                name: name.into(),
                arguments: args.into(),
                ..Default::default()
            });
        }
        judge(&req, &mut c);
        let v: Vec<Option<bool>> = c.tool_calls.iter().map(|t| t.valid).collect();
        assert_eq!(v, vec![Some(true), Some(false), Some(false), Some(false)]);
        assert!(c.tool_calls[1]
            .invalid_reason
            .as_deref()
            .unwrap()
            .starts_with("at /city:"));
        assert!(c.tool_calls[3]
            .invalid_reason
            .as_deref()
            .unwrap()
            .contains("not one of"));
        let j = serde_json::to_value(&c).unwrap();
        assert_eq!(j["tool_calls"][0]["valid"], json!(true));
        assert_eq!(j["tool_calls"][1]["valid"], json!(false));
    }

    #[test]
    fn bad_files_are_named_before_sending() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str, body: &str| {
            let path = dir.path().join(n);
            std::fs::write(&path, body).unwrap();
            path
        };
        let e = load_schema(&dir.path().join("gone.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gone.json") && e.contains("no such file"), "{e}");
        let e = load_schema(&p("broken.json", "{")).unwrap_err().to_string();
        assert!(
            e.contains("broken.json") && e.contains("not valid JSON"),
            "{e}"
        );
        let e = load_schema(&p("odd.json", r#"{"type": "bogus"}"#))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("odd.json") && e.contains("not a valid JSON Schema"),
            "{e}"
        );
        let ok = load_schema(&p("person.schema.json", r#"{"type": "object"}"#)).unwrap();
        assert!(matches!(ok, ResponseFormat::JsonSchema { ref name, .. } if name == "person"));
        let e = load_tools(&p("tools.json", r#"{"name": "f"}"#))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tools.json") && e.contains("list of functions"),
            "{e}"
        );
        let e = load_tools(&p("t2.json", r#"[{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]"#))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t2.json") && e.contains("type \"object\""),
            "{e}"
        );
        let e = load_tools(&p("t3.json", r#"[{"type": "web_search"}]"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("only function tools"), "{e}");
        let tools = load_tools(&p(
            "t4.json",
            r#"[{"name": "f", "parameters": {"type": "object"}}]"#,
        ))
        .unwrap();
        assert_eq!(tools[0].name, "f");
    }
}
