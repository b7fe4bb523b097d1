//! `quorum exec`: one JSON task on stdin, one JSON result on stdout, for
//! agent harnesses. The same registry, router, budgets and ledger as `ask`.

use std::io::{IsTerminal, Read, Write};
use std::time::Instant;

use clap::Args;
use serde_json::{json, Value};

use super::{runtime, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::app::{self, GlobalFlags};
use crate::engine::{
    ChatRequest, Completion, CostSource, EngineError, Message, StartOptions, Tally,
};
use crate::shared::params::{type_name, FieldError, Fields};

/// Exit code: the task spec is invalid (the message names the field).
pub const EXIT_INVALID_TASK: i32 = 3;

/// Fields of a task.
pub const TASK_FIELDS: &[&str] = &[
    "task_id",
    "title",
    "description",
    "prompt",
    "system",
    "model",
    "models",
    "max_tokens",
    "temperature",
    "session_id",
    "trace_id",
    "source_agent",
    "reasoning",
    "thinking_budget",
    "json_mode",
    "schema",
    "tools",
    "tool_choice",
    "files",
    "images",
];

const AFTER_HELP: &str = "\
Task (one JSON object on stdin):
  {\"task_id\": \"t1\", \"title\": \"…\", \"description\": \"…\" | \"prompt\": \"…\", \"system\": \"…\",
   \"model\": \"provider/model\" | \"models\": [\"a/x\", \"b/y\"], \"max_tokens\": 256, \"temperature\": 0.2,
   \"session_id\": \"…\", \"trace_id\": \"32 hex digits\", \"source_agent\": \"…\",
   \"reasoning\": \"minimal|low|medium|high\" | \"thinking_budget\": N, \"json_mode\": true |
   \"schema\": \"schema.json\", \"tools\": \"tools.json\", \"tool_choice\": \"auto\",
   \"files\": [\"notes.md\"], \"images\": [\"shot.png\"]}
  prompt wins over description; a title is put before the description. Unknown fields are
  ignored (named on stderr). The model defaults to $QUORUM_DEFAULT_MODEL.

Result (one JSON object on stdout, whatever happens):
  {status: success | partial | error, output, task_id, model, execution_time_seconds,
   tokens_used, prompt_tokens, completion_tokens, cost_usd, cost_source, timestamp,
   exit_code, error: null | {kind, message, field?}, run_id, trace_id, session_id,
   results: [ask --json object + target] (when several models were asked)}

Exit codes:
  0  success
  1  execution error (a provider failed; with several models, any of them)
  2  configuration error (config file, model not allowed, budget refused; nothing was sent)
  3  invalid task spec (not JSON, a missing field, a wrong type or value, an unknown model)";

/// Arguments of `quorum exec`.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct ExecArgs {
    /// Bypass the response cache.
    #[arg(long)]
    pub no_cache: bool,
}

/// A validated task.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Caller's id.
    pub task_id: Option<String>,
    /// Title.
    pub title: Option<String>,
    /// The prompt sent.
    pub prompt: String,
    /// System prompt.
    pub system: Option<String>,
    /// Targets (empty: the default model).
    pub models: Vec<String>,
    /// Whether `models` (several) was given.
    pub several: bool,
    /// Output limit.
    pub max_tokens: Option<u32>,
    /// Temperature.
    pub temperature: Option<f32>,
    /// Session id.
    pub session_id: Option<String>,
    /// Trace id.
    pub trace_id: Option<String>,
    /// Calling agent.
    pub source_agent: Option<String>,
    /// Reasoning, structured output, tools and attachments (files are read
    /// when the task runs, before anything is sent).
    pub options: crate::engine::options::RequestOptions,
    /// Fields not understood.
    pub ignored: Vec<String>,
}

/// An optional list of file paths.
fn paths(
    map: &serde_json::Map<String, Value>,
    k: &str,
) -> Result<Vec<std::path::PathBuf>, FieldError> {
    match map.get(k) {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) if !s.trim().is_empty() => Ok(std::path::PathBuf::from(s)),
                v => Err(FieldError::new(
                    format!("{k}[{i}]"),
                    format!("expected a file path, got {}", type_name(v)),
                )),
            })
            .collect(),
        Some(v) => Err(FieldError::new(
            k,
            format!("expected an array of file paths, got {}", type_name(v)),
        )),
    }
}

/// Parse and validate a task.
pub fn parse_task(text: &str) -> Result<Task, FieldError> {
    if text.trim().is_empty() {
        return Err(FieldError::new(
            "task",
            "stdin is empty; expected one JSON object",
        ));
    }
    let v: Value = serde_json::from_str(text)
        .map_err(|e| FieldError::new("task", format!("not valid JSON: {e}")))?;
    let Value::Object(map) = &v else {
        return Err(FieldError::new(
            "task",
            format!("expected a JSON object, got {}", type_name(&v)),
        ));
    };
    let f = Fields::new(map);
    let task_id = f.id("task_id")?;
    let title = f.str("title")?.map(String::from);
    let description = f.str("description")?;
    let prompt = match (f.str("prompt")?, description) {
        (Some(p), _) if !p.trim().is_empty() => p.to_string(),
        (Some(_), _) => return Err(FieldError::new("prompt", "must not be empty")),
        (None, Some(d)) if !d.trim().is_empty() => match title.as_deref() {
            Some(t) if !t.trim().is_empty() => format!("{t}\n\n{d}"),
            _ => d.to_string(),
        },
        (None, Some(_)) => return Err(FieldError::new("description", "must not be empty")),
        (None, None) => {
            return Err(FieldError::new(
                "prompt",
                "missing: give prompt (or description)",
            ))
        }
    };
    let model = f.nonempty_str("model")?;
    let models = f.str_list("models")?;
    let (models, several) = match (model, models) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new("models", "give model or models, not both"))
        }
        (Some(m), None) => (vec![m.trim().to_string()], false),
        (None, Some(ms)) => {
            let n = ms.len();
            (ms, n > 1)
        }
        (None, None) => (Vec::new(), false),
    };
    let meta = f.call_meta()?;
    Ok(Task {
        task_id,
        title,
        prompt,
        system: f.str("system")?.map(String::from),
        models,
        several,
        max_tokens: f.uint("max_tokens", 1, u32::MAX as u64)?.map(|v| v as u32),
        temperature: f.num("temperature", 0.0, 2.0)?.map(|v| v as f32),
        session_id: meta.session_id,
        trace_id: meta.trace_id,
        source_agent: meta.source_agent,
        options: crate::engine::options::RequestOptions {
            reasoning: f.nonempty_str("reasoning")?.map(String::from),
            thinking_budget: f
                .uint("thinking_budget", 0, u32::MAX as u64)?
                .map(|v| v as u32),
            json_mode: f.bool("json_mode")?.unwrap_or(false),
            schema: f.nonempty_str("schema")?.map(std::path::PathBuf::from),
            tools: f.nonempty_str("tools")?.map(std::path::PathBuf::from),
            tool_choice: f.nonempty_str("tool_choice")?.map(String::from),
            files: paths(map, "files")?,
            images: paths(map, "images")?,
        },
        ignored: f.unknown(TASK_FIELDS),
    })
}

/// What an early exit prints.
struct Early {
    code: i32,
    kind: &'static str,
    message: String,
    field: Option<String>,
}

fn early_result(task_id: Option<&str>, e: &Early, started: Instant) -> Value {
    let mut err = json!({"kind": e.kind, "message": e.message});
    if let Some(f) = &e.field {
        err["field"] = json!(f);
    }
    json!({
        "status": "error",
        "output": "",
        "task_id": task_id,
        "model": null,
        "execution_time_seconds": secs(started),
        "tokens_used": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost_usd": 0.0,
        "cost_source": "computed",
        "timestamp": crate::shared::clock::now_rfc3339(),
        "exit_code": e.code,
        "error": err,
    })
}

fn secs(started: Instant) -> f64 {
    (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
}

fn print(v: &Value) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = serde_json::to_writer(&mut out, v);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

fn bail(task_id: Option<&str>, e: Early, started: Instant) -> i32 {
    match &e.field {
        Some(f) => eprintln!("quorum: invalid task: {f}: {}", e.message),
        None => eprintln!("quorum: {}", e.message),
    }
    print(&early_result(task_id, &e, started));
    e.code
}

/// The result object of finished completions.
pub fn result_json(task: &Task, targets: &[String], cs: &[Completion], started: Instant) -> Value {
    let tally = Tally::of(cs);
    let failed = tally.failed() as usize;
    let status = match failed {
        0 => "success",
        n if n == cs.len() => "error",
        _ => "partial",
    };
    let code = if failed == 0 { EXIT_OK } else { EXIT_FAILED };
    let main = cs.iter().find(|c| c.error.is_none()).or_else(|| cs.first());
    let prompt_tokens = tally.usage.input_tokens;
    let completion_tokens = tally.usage.output_tokens;
    let cost = tally.cost();
    let sources: Vec<CostSource> = cs.iter().map(|c| c.cost_source).collect();
    let cost_source = match sources.first() {
        Some(s) if sources.iter().all(|x| x == s) => s.as_str(),
        Some(_) => "mixed",
        None => "unknown",
    };
    let error = main
        .and_then(|c| c.error.as_ref())
        .map(|e| json!({"kind": e.kind(), "message": e.to_string()}));
    let error = if failed > 0 && error.is_none() {
        let (i, c) = cs
            .iter()
            .enumerate()
            .find(|(_, c)| c.error.is_some())
            .expect("a failure");
        let e = c.error.as_ref().expect("an error");
        Some(json!({"kind": e.kind(), "message": format!("{}: {e}", targets[i])}))
    } else {
        error
    };
    let mut v = json!({
        "status": status,
        "output": main.map(|c| c.text.as_str()).unwrap_or(""),
        "task_id": task.task_id,
        "title": task.title,
        "model": main.map(|c| format!("{}/{}", c.provider, c.model)),
        "execution_time_seconds": secs(started),
        "tokens_used": prompt_tokens + completion_tokens,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cost_usd": cost,
        "cost_source": cost_source,
        "timestamp": crate::shared::clock::now_rfc3339(),
        "exit_code": code,
        "error": error,
        "session_id": task.session_id,
        "source_agent": task.source_agent,
    });
    // The verdicts of the answer, when JSON output or tools were asked for.
    if let Some(c) = main {
        let cv = serde_json::to_value(c).unwrap_or(Value::Null);
        for k in ["schema_valid", "schema_error"] {
            if let Some(x) = cv.get(k) {
                v[k] = x.clone();
            }
        }
        if !c.tool_calls.is_empty() {
            v["tool_calls"] = cv["tool_calls"].clone();
        }
    }
    if task.several {
        let results: Vec<Value> = cs
            .iter()
            .zip(targets)
            .map(|(c, t)| {
                let mut r = serde_json::to_value(c).unwrap_or(Value::Null);
                r["target"] = json!(t);
                r
            })
            .collect();
        v["results"] = Value::Array(results);
    }
    v
}

/// Run `quorum exec`.
pub fn run(flags: &GlobalFlags, args: ExecArgs) -> i32 {
    let started = Instant::now();
    let mut text = String::new();
    if std::io::stdin().is_terminal() {
        eprintln!("quorum: exec: reading one JSON task from stdin (end with Ctrl-D)");
    }
    if let Err(e) = std::io::stdin().lock().read_to_string(&mut text) {
        let e = Early {
            code: EXIT_INVALID_TASK,
            kind: "invalid_task",
            message: format!("could not read stdin: {e}"),
            field: Some("task".into()),
        };
        return bail(None, e, started);
    }
    let task = match parse_task(&text) {
        Ok(t) => t,
        Err(e) => {
            // Keep the caller's id in the result when it can be read.
            let id = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| match &v["task_id"] {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                });
            let early = Early {
                code: EXIT_INVALID_TASK,
                kind: "invalid_task",
                message: e.message,
                field: Some(e.field),
            };
            return bail(id.as_deref(), early, started);
        }
    };
    if !task.ignored.is_empty() {
        eprintln!(
            "quorum: exec: ignoring unknown task field(s): {}",
            task.ignored.join(", ")
        );
    }
    let tid = task.task_id.clone();
    let (engine, settings) = match app::load(flags) {
        Ok(x) => x,
        Err(e) => {
            let early = Early {
                code: EXIT_USAGE,
                kind: "config",
                message: format!("{e:#}"),
                field: None,
            };
            return bail(tid.as_deref(), early, started);
        }
    };
    let mut targets = task.models.clone();
    if targets.is_empty() {
        match settings.default_model.clone() {
            Some(m) => targets.push(m),
            None => {
                let early = Early {
                    code: EXIT_INVALID_TASK,
                    kind: "invalid_task",
                    message: "missing: give model or models (no QUORUM_DEFAULT_MODEL is set)"
                        .into(),
                    field: Some("model".into()),
                };
                return bail(tid.as_deref(), early, started);
            }
        }
    }
    for (i, t) in targets.iter().enumerate() {
        // `cheapest:TIER` is chosen for the request at the front door.
        if t.trim().starts_with("cheapest:") {
            continue;
        }
        if let Err(e) = engine.check_targets(std::slice::from_ref(t)) {
            let field = if task.models.len() > 1 || task.several {
                format!("models[{i}]")
            } else {
                "model".to_string()
            };
            let early = match e {
                EngineError::NotAllowed { .. } => Early {
                    code: EXIT_USAGE,
                    kind: "not_allowed",
                    message: e.to_string(),
                    field: None,
                },
                e => Early {
                    code: EXIT_INVALID_TASK,
                    kind: "invalid_task",
                    message: e.to_string(),
                    field: Some(field),
                },
            };
            return bail(tid.as_deref(), early, started);
        }
    }
    let mut req = ChatRequest::default();
    if let Some(s) = &task.system {
        req.messages.push(Message::system(s.clone()));
    }
    req.messages.push(Message::user(task.prompt.clone()));
    req.max_tokens = task.max_tokens;
    req.temperature = task.temperature;
    // Files are read and checked before anything is sent.
    if let Err(e) = task.options.apply(&mut req) {
        let early = Early {
            code: EXIT_USAGE,
            kind: e.kind(),
            message: e.to_string(),
            field: None,
        };
        return bail(tid.as_deref(), early, started);
    }
    let opts = StartOptions {
        run: crate::engine::RunOptions {
            session_id: task.session_id.clone(),
            trace_id: task.trace_id.clone(),
            source_agent: task.source_agent.clone(),
            cache: if args.no_cache { Some(false) } else { None },
            ..Default::default()
        },
        ..Default::default()
    };
    let rt = runtime();
    rt.block_on(async move {
        let (handle, targets) = match engine.start(req, targets, opts).await {
            Ok(s) => {
                for w in &s.warnings {
                    eprintln!("quorum: warning: {w}");
                }
                (s.handle, s.targets)
            }
            Err(e) => {
                let early = Early {
                    code: EXIT_USAGE,
                    kind: e.kind(),
                    message: e.to_string(),
                    field: None,
                };
                return bail(tid.as_deref(), early, started);
            }
        };
        let cancel = handle.cancel_token();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                cancel.cancel();
            }
        });
        let (run_id, trace_id) = (handle.run_id.clone(), handle.trace_id.clone());
        let cs = handle.collect().await;
        let mut v = result_json(&task, &targets, &cs, started);
        v["run_id"] = json!(run_id);
        v["trace_id"] = json!(trace_id);
        for (c, t) in cs.iter().zip(&targets) {
            if let Some(e) = &c.error {
                eprintln!("quorum: {t}: {e}");
            }
        }
        // An answer the ledger could not record still counts as delivered, but the
        // run is not clean: exit 1 and say why.
        let unrecorded: Vec<&str> = cs
            .iter()
            .filter_map(|c| c.not_recorded.as_deref())
            .collect();
        if let Some(why) = unrecorded.first() {
            eprintln!("quorum: this request was not recorded in the ledger: {why}");
            v["not_recorded"] = json!(why);
            if v["exit_code"].as_i64() == Some(0) {
                v["exit_code"] = json!(1);
            }
        }
        print(&v);
        v["exit_code"].as_i64().unwrap_or(1) as i32
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_and_title_make_the_prompt() {
        let t = parse_task(
            r#"{"task_id": 7, "title": "Sum", "description": "2+2?", "model": "mock/alpha"}"#,
        )
        .unwrap();
        assert_eq!(t.task_id.as_deref(), Some("7"));
        assert_eq!(t.prompt, "Sum\n\n2+2?");
        assert_eq!(t.models, vec!["mock/alpha".to_string()]);
    }

    #[test]
    fn bad_fields_are_named() {
        let e = parse_task(r#"{"prompt": "x", "max_tokens": -1}"#).unwrap_err();
        assert_eq!(e.field, "max_tokens");
        let e = parse_task(r#"{"prompt": "x", "models": []}"#).unwrap_err();
        assert_eq!(e.field, "models");
        let e = parse_task(r#"{"prompt": "x", "trace_id": "nope"}"#).unwrap_err();
        assert_eq!(e.field, "trace_id");
        let e = parse_task("[1]").unwrap_err();
        assert_eq!(e.field, "task");
        let e = parse_task(r#"{"title": "only a title"}"#).unwrap_err();
        assert_eq!(e.field, "prompt");
    }
}
