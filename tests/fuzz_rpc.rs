//! Fuzzing, as property tests: the JSON-RPC 2.0 face (`POST /rpc`,
//! `serve::rpc::handle`) and the OpenAI-compatible request parser
//! (`serve::openai_compat::parse`), fed arbitrary bytes, arbitrary JSON and
//! near-valid requests and batches. Nothing may panic; every `/rpc` answer
//! must be valid JSON-RPC 2.0 (right `jsonrpc`, the id rules, no answer to a
//! notification, a batch answered by an array or nothing, only documented
//! error codes); every parse error must be a 4xx in OpenAI's error shape.
//!
//! The handler runs in-process against an engine whose only reachable
//! provider is the offline `mock` (no ledger, no cache, no network), at
//! `QUORUM_MOCK_TPS=0`. Bounded and deterministic like `fuzz_decoders`:
//!
//! ```sh
//! QUORUM_FUZZ_CASES=100000 cargo test --release --test fuzz_rpc
//! ```
//!
//! Every failure found becomes a plain test at the bottom.

#[path = "support/app.rs"]
mod app_support;
#[path = "support/fuzz.rs"]
mod fuzz_support;

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use fuzz_support::config;
use llm_quorum::serve::openai_compat;
use llm_quorum::serve::rpc::{self, METHODS};
use llm_quorum::serve::{AppState, ServeOptions};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Error codes `src/serve/rpc.rs` documents.
const CODES: [i64; 9] = [
    rpc::PARSE_ERROR,
    rpc::INVALID_REQUEST,
    rpc::METHOD_NOT_FOUND,
    rpc::INVALID_PARAMS,
    rpc::INTERNAL_ERROR,
    rpc::RATE_LIMITED,
    rpc::BUDGET_EXCEEDED,
    rpc::MODEL_NOT_ALLOWED,
    rpc::PROVIDER_FAILED,
];

/// A small body limit, so the "too large" path is fuzzed too.
const MAX_BODY: usize = 16 * 1024;

struct Harness {
    rt: tokio::runtime::Runtime,
    state: Arc<AppState>,
    _dir: tempfile::TempDir,
}

/// One runtime and one state for every case: mock only, no data dir.
fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        // The mock reads its pace from the process environment.
        // SAFETY: set once, before the first call into the engine, while the
        // other tests of this binary wait on this `OnceLock`; std's own env
        // lock orders it against their `std::env::var` reads.
        unsafe { std::env::set_var("QUORUM_MOCK_TPS", "0") };
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let state = app_support::app_state(
            dir.path(),
            &[("QUORUM_MAX_RETRIES", "0")],
            ServeOptions {
                token: None,
                max_body_bytes: MAX_BODY,
                ..Default::default()
            },
        );
        Harness {
            rt,
            state,
            _dir: dir,
        }
    })
}

/// `POST /rpc` with `body`: (status, content type, body).
fn call_rpc(body: Vec<u8>, headers: HeaderMap) -> (StatusCode, String, Vec<u8>) {
    let h = harness();
    h.rt.block_on(async {
        let resp = rpc::handle(State(h.state.clone()), headers, Body::from(body)).await;
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            axum::body::to_bytes(resp.into_body(), usize::MAX),
        )
        .await
        .expect("the response body ends")
        .expect("the response body reads");
        (status, ctype, bytes.to_vec())
    })
}

// ---------------------------------------------------------------------------
// The JSON-RPC 2.0 rules

/// The id a request's response must carry, or `None` for a notification.
/// A request that is not an object, or whose id has the wrong type, is
/// answered with a null id.
fn expected_id(req: &Value) -> Option<Value> {
    match req {
        Value::Object(o) => match o.get("id") {
            None if is_notification(req) => None,
            // Not a valid request: answered, with a null id.
            None => Some(Value::Null),
            Some(i @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(i.clone()),
            Some(_) => Some(Value::Null),
        },
        _ => Some(Value::Null),
    }
}

/// The request is well-formed apart from the method and params: a
/// notification of it gets no response at all.
fn is_notification(req: &Value) -> bool {
    matches!(req, Value::Object(o) if !o.contains_key("id")
        && o.get("jsonrpc") == Some(&json!("2.0"))
        && o.get("method").is_some_and(Value::is_string)
        && matches!(o.get("params"), None | Some(Value::Object(_)) | Some(Value::Array(_))))
}

/// One response object: `jsonrpc`, `id`, exactly one of `result` / `error`,
/// an error with an integer documented code and a string message.
fn check_response(r: &Value) -> Result<Value, String> {
    let Value::Object(o) = r else {
        return Err(format!("not an object: {r}"));
    };
    if o.get("jsonrpc") != Some(&json!("2.0")) {
        return Err(format!("jsonrpc is not \"2.0\": {r}"));
    }
    let Some(id) = o.get("id") else {
        return Err(format!("no id: {r}"));
    };
    if !matches!(id, Value::String(_) | Value::Number(_) | Value::Null) {
        return Err(format!("id of a wrong type: {r}"));
    }
    for k in o.keys() {
        if !["jsonrpc", "id", "result", "error"].contains(&k.as_str()) {
            return Err(format!("stray member {k:?}: {r}"));
        }
    }
    match (o.get("result"), o.get("error")) {
        (Some(_), None) => {}
        (None, Some(Value::Object(e))) => {
            let code = e
                .get("code")
                .and_then(Value::as_i64)
                .ok_or(format!("error.code is not an integer: {r}"))?;
            if !CODES.contains(&code) {
                return Err(format!("undocumented error code {code}: {r}"));
            }
            if !e.get("message").is_some_and(Value::is_string) {
                return Err(format!("error.message is not a string: {r}"));
            }
        }
        _ => return Err(format!("not exactly one of result and error: {r}")),
    }
    Ok(id.clone())
}

/// Ids are equal, bit for bit: serde_json's `float_roundtrip` makes a
/// fractional id come back exactly as sent.
fn same_id(a: &Value, b: &Value) -> bool {
    a == b
}

fn error_code(r: &Value) -> Option<i64> {
    r.get("error")?.get("code")?.as_i64()
}

/// The final `event: result` frame of an `llm.stream` answer.
fn stream_result(body: &str) -> Result<Value, String> {
    let mut last = None;
    for frame in body.split("\n\n").filter(|f| !f.is_empty()) {
        let mut event = "";
        let mut data = "";
        for line in frame.lines() {
            if let Some(e) = line.strip_prefix("event: ") {
                event = e;
            } else if let Some(d) = line.strip_prefix("data: ") {
                data = d;
            }
        }
        serde_json::from_str::<Value>(data)
            .map_err(|e| format!("SSE data is not JSON ({e}): {frame}"))?;
        if event == "result" {
            last = Some(serde_json::from_str(data).unwrap());
        }
    }
    last.ok_or(format!("no result event: {body}"))
}

/// Send `body` and check the answer against what was sent.
fn check_rpc(body: Vec<u8>, headers: HeaderMap) -> Result<(), String> {
    let too_big = body.len() > MAX_BODY;
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let (status, ctype, out) = call_rpc(body, headers);
    let text = String::from_utf8_lossy(&out).to_string();
    if too_big {
        if status != StatusCode::PAYLOAD_TOO_LARGE {
            return Err(format!("a too-large body got {status}: {text}"));
        }
        let r: Value = serde_json::from_slice(&out).map_err(|e| format!("{e}: {text}"))?;
        let id = check_response(&r)?;
        if id != Value::Null || error_code(&r) != Some(rpc::INVALID_REQUEST) {
            return Err(format!("too large: want -32600 with a null id: {r}"));
        }
        return Ok(());
    }
    let Some(req) = parsed else {
        if status != StatusCode::OK {
            return Err(format!("parse error got {status}: {text}"));
        }
        let r: Value = serde_json::from_slice(&out).map_err(|e| format!("{e}: {text}"))?;
        let id = check_response(&r)?;
        if id != Value::Null || error_code(&r) != Some(rpc::PARSE_ERROR) {
            return Err(format!("not JSON: want -32700 with a null id: {r}"));
        }
        return Ok(());
    };
    if status == StatusCode::NO_CONTENT {
        if !out.is_empty() {
            return Err(format!("204 with a body: {text}"));
        }
        let all_notifications = match &req {
            Value::Array(items) => !items.is_empty() && items.iter().all(is_notification),
            v => is_notification(v),
        };
        if !all_notifications {
            return Err(format!("no response, but not only notifications: {req}"));
        }
        return Ok(());
    }
    if status != StatusCode::OK {
        return Err(format!("status {status}: {text}"));
    }
    if ctype.starts_with("text/event-stream") {
        // Only a single, non-notification `llm.stream` answers with a stream.
        let Value::Object(o) = &req else {
            return Err(format!("a stream for a non-object: {req}"));
        };
        if o.get("method") != Some(&json!("llm.stream")) || expected_id(&req).is_none() {
            return Err(format!("a stream for {req}"));
        }
        let r = stream_result(&text)?;
        let id = check_response(&r)?;
        if !expected_id(&req).is_some_and(|w| same_id(&w, &id)) {
            return Err(format!("stream result id does not match: {r} for {req}"));
        }
        return Ok(());
    }
    let r: Value = serde_json::from_slice(&out).map_err(|e| format!("{e}: {text}"))?;
    match &req {
        Value::Array(items) if items.is_empty() => {
            let id = check_response(&r)?;
            if id != Value::Null || error_code(&r) != Some(rpc::INVALID_REQUEST) {
                return Err(format!("empty batch: want -32600 with a null id: {r}"));
            }
        }
        Value::Array(items) => {
            let Value::Array(rs) = &r else {
                return Err(format!("a batch answered by a non-array: {r}"));
            };
            // One response per non-notification, in any order.
            let mut want: Vec<Value> = items.iter().filter_map(expected_id).collect();
            if rs.is_empty() || rs.len() != want.len() {
                return Err(format!(
                    "{} responses for {} requests: {r}",
                    rs.len(),
                    want.len()
                ));
            }
            for resp in rs {
                let id = check_response(resp)?;
                let Some(i) = want.iter().position(|w| same_id(w, &id)) else {
                    return Err(format!(
                        "response id {id} matches no request: {r} for {req}"
                    ));
                };
                want.swap_remove(i);
                if error_code(resp).is_none()
                    && items.iter().any(|it| {
                        it.get("method") == Some(&json!("llm.stream")) && it.get("id") == Some(&id)
                    })
                    && !items.iter().any(|it| {
                        it.get("method") != Some(&json!("llm.stream")) && it.get("id") == Some(&id)
                    })
                {
                    return Err(format!("llm.stream succeeded inside a batch: {r}"));
                }
            }
        }
        single => {
            let id = check_response(&r)?;
            match expected_id(single) {
                None => return Err(format!("a notification was answered: {r} for {single}")),
                Some(want) if !same_id(&want, &id) => {
                    return Err(format!("id {id} does not match {want}: {r}"))
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Inputs

/// Arbitrary JSON, nested a few levels, with unicode, huge numbers and
/// JSON-RPC's own words among the keys.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "\\PC{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("2.0"),
            Just("llm.complete"),
            Just("mock/alpha"),
            Just("héllo 世界 🕵️"),
            Just("\u{0}\u{7f}\u{feff}"),
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        let key = prop_oneof![
            Just("jsonrpc".to_string()),
            Just("id".to_string()),
            Just("method".to_string()),
            Just("params".to_string()),
            Just("result".to_string()),
            "\\PC{0,6}",
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key, inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn id_value() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        3 => Just(None),
        2 => (0i64..1000).prop_map(|n| Some(json!(n))),
        1 => any::<i64>().prop_map(|n| Some(json!(n))),
        1 => any::<u64>().prop_map(|n| Some(json!(n))),
        1 => Just(Some(json!(-0.0))),
        1 => Just(Some(json!(1.5e300))),
        1 => Just(Some(Value::Null)),
        2 => "\\PC{0,10}".prop_map(|s| Some(Value::String(s))),
        1 => Just(Some(json!("ïd-🕵️"))),
        1 => Just(Some(json!(true))),
        1 => Just(Some(json!([1]))),
        1 => Just(Some(json!({"id": 1}))),
    ]
}

fn jsonrpc_value() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        8 => Just(Some(json!("2.0"))),
        1 => Just(None),
        1 => Just(Some(json!("2"))),
        1 => Just(Some(json!("1.0"))),
        1 => Just(Some(json!(2.0))),
        1 => Just(Some(json!(" 2.0"))),
        1 => Just(Some(Value::Null)),
    ]
}

fn method_value() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        12 => proptest::sample::select(METHODS).prop_map(|m| Some(json!(m))),
        1 => Just(None),
        1 => Just(Some(json!("llm.COMPLETE"))),
        1 => Just(Some(json!("rpc.discover"))),
        1 => Just(Some(json!(""))),
        1 => "\\PC{0,12}".prop_map(|s| Some(Value::String(s))),
        1 => Just(Some(json!(7))),
        1 => Just(Some(json!(["llm.complete"]))),
    ]
}

/// Models: the quick mock ones, unknown ones, and a few wrong types.
fn model_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => proptest::sample::select(vec![
            "mock/alpha",
            "mock/beta",
            "mock/gamma",
            "mock/contrarian",
            "mock/thinker",
        ])
        .prop_map(|m| json!(m)),
        1 => Just(json!("nope/model")),
        1 => Just(json!("mock")),
        1 => Just(json!("")),
        1 => Just(json!("  ")),
        1 => "\\PC{0,10}".prop_map(Value::String),
        1 => Just(json!(42)),
        1 => Just(Value::Null),
    ]
}

/// A field value of the right type mostly, of the wrong one sometimes.
fn field(name: &'static str) -> BoxedStrategy<(String, Value)> {
    let v: BoxedStrategy<Value> = match name {
        "model" | "judge" => model_value().boxed(),
        "models" => prop_oneof![
            4 => proptest::collection::vec(model_value(), 0..4).prop_map(Value::Array),
            1 => model_value(),
        ]
        .boxed(),
        "prompt" => prop_oneof![
            Just(json!("What is 2+2?")),
            Just(json!("Is the sky blue?")),
            Just(json!("héllo 世界 🕵️ write a haiku")),
            Just(json!("")),
            Just(json!(12)),
            Just(json!(["hi"])),
        ]
        .boxed(),
        "messages" => prop_oneof![
            Just(json!([{"role": "user", "content": "What is 2+2?"}])),
            Just(
                json!([{"role": "system", "content": "terse"}, {"role": "user", "content": "hi"}])
            ),
            Just(json!([])),
            Just(json!([{"role": "robot", "content": "hi"}])),
            Just(json!([{"content": "hi"}])),
            Just(json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])),
            Just(json!({"role": "user"})),
            any_json(),
        ]
        .boxed(),
        "max_tokens" => prop_oneof![
            4 => (1u64..24).prop_map(|n| json!(n)),
            1 => Just(json!(0)),
            1 => Just(json!(-1)),
            1 => Just(json!(u64::MAX)),
            1 => Just(json!(1e300)),
            1 => Just(json!(2.5)),
            1 => Just(json!("8")),
        ]
        .boxed(),
        "temperature" | "top_p" | "threshold" => prop_oneof![
            (0.0f64..1.0).prop_map(|f| json!(f)),
            Just(json!(-1)),
            Just(json!(1e308)),
            Just(json!("0.5")),
        ]
        .boxed(),
        "repeat" => prop_oneof![
            4 => (1u64..3).prop_map(|n| json!(n)),
            1 => Just(json!(0)),
            1 => Just(json!(21)),
            1 => Just(json!(u64::MAX)),
            1 => Just(json!(-3)),
        ]
        .boxed(),
        "kind" => prop_oneof![
            Just(json!("number")),
            Just(json!("yes-no")),
            Just(json!("open")),
            Just(json!("nonsense")),
            Just(json!(3)),
        ]
        .boxed(),
        "trace_id" => prop_oneof![
            Just(json!("4bf92f3577b34da6a3ce929d0e0e4736")),
            Just(json!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            )),
            Just(json!("0".repeat(32))),
            Just(json!("xyz")),
            "\\PC{0,40}".prop_map(Value::String),
        ]
        .boxed(),
        "stream" | "cache" | "reset" => prop_oneof![
            3 => any::<bool>().prop_map(Value::Bool),
            1 => Just(json!("true")),
            1 => Just(json!(1)),
        ]
        .boxed(),
        _ => any_json().boxed(),
    };
    v.prop_map(move |v| (name.to_string(), v)).boxed()
}

const FIELDS: [&str; 22] = [
    "model",
    "models",
    "judge",
    "prompt",
    "messages",
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
    "repeat",
    "kind",
    "threshold",
    "reset",
    "unknown_field",
];

fn params_object() -> impl Strategy<Value = Value> {
    (
        field("model"),
        field("prompt"),
        field("max_tokens"),
        proptest::sample::subsequence(FIELDS.to_vec(), 0..5)
            .prop_flat_map(|names| names.into_iter().map(field).collect::<Vec<_>>()),
        any::<u8>(),
    )
        .prop_map(|(m, p, mt, rest, mask)| {
            let mut o = Map::new();
            // The usual three, mostly there, so most calls reach the engine.
            for (bit, (k, v)) in [(1u8, m), (2, p), (4, mt)] {
                if mask & bit != 0 || mask & 0x80 == 0 {
                    o.insert(k, v);
                }
            }
            for (k, v) in rest {
                o.insert(k, v);
            }
            // Keep mock calls quick (half the time, a bad max_tokens stays).
            let quick = o
                .get("max_tokens")
                .and_then(Value::as_u64)
                .is_some_and(|n| n < 64);
            if !quick && mask & 0x40 == 0 {
                o.insert("max_tokens".into(), json!(8));
            }
            Value::Object(o)
        })
}

fn params_value() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        10 => params_object().prop_map(Some),
        1 => Just(None),
        1 => Just(Some(json!(["What is 2+2?"]))),
        1 => Just(Some(json!("What is 2+2?"))),
        1 => Just(Some(json!(3))),
        1 => Just(Some(Value::Null)),
        1 => any_json().prop_map(Some),
    ]
}

/// A near-valid request object.
fn request() -> impl Strategy<Value = Value> {
    (
        jsonrpc_value(),
        id_value(),
        method_value(),
        params_value(),
        proptest::option::weighted(0.1, ("\\PC{0,6}", any_json())),
    )
        .prop_map(|(jsonrpc, id, method, params, extra)| {
            let mut o = Map::new();
            for (k, v) in [
                ("jsonrpc", jsonrpc),
                ("id", id),
                ("method", method),
                ("params", params),
            ] {
                if let Some(v) = v {
                    o.insert(k.into(), v);
                }
            }
            if let Some((k, v)) = extra {
                o.insert(k, v);
            }
            Value::Object(o)
        })
}

const MOCKS: [&str; 5] = [
    "mock/alpha",
    "mock/beta",
    "mock/gamma",
    "mock/contrarian",
    "mock/thinker",
];

/// A valid call of one of the methods, with random valid values: it must
/// succeed (the mock never fails on these prompts).
fn valid_call() -> impl Strategy<Value = Value> {
    let mock = || proptest::sample::select(MOCKS.to_vec()).prop_map(|m| json!(m));
    let prompt = proptest::sample::select(vec![
        "What is 2+2?",
        "Is water wet?",
        "12 * 7",
        "héllo 世界 🕵️ write a haiku",
    ])
    .prop_map(|p| json!(p));
    let id = prop_oneof![
        any::<i64>().prop_map(|n| json!(n)),
        "\\PC{0,10}".prop_map(Value::String),
    ];
    let opt = |k: &'static str, v: BoxedStrategy<Value>| {
        proptest::option::of(v).prop_map(move |v| v.map(|v| (k, v)))
    };
    let prompt_fields = (
        opt("max_tokens", (1u64..16).prop_map(|n| json!(n)).boxed()),
        opt("temperature", (0.0f64..1.0).prop_map(|f| json!(f)).boxed()),
        opt(
            "session_id",
            "[a-z0-9-]{1,12}".prop_map(Value::String).boxed(),
        ),
        opt(
            "trace_id",
            Just(json!("4bf92f3577b34da6a3ce929d0e0e4736")).boxed(),
        ),
        opt("system", Just(json!("Be terse.")).boxed()),
        opt("stream", any::<bool>().prop_map(Value::Bool).boxed()),
    );
    let call = prop_oneof![
        3 => (proptest::sample::select(vec!["llm.complete", "llm.stream"]), mock(), prompt.clone(), prompt_fields.clone())
            .prop_map(|(m, model, p, (a, b, c, d, e, f))| {
                let mut o = Map::new();
                o.insert("model".into(), model);
                o.insert("prompt".into(), p);
                for (k, v) in [a, b, c, d, e, f].into_iter().flatten() {
                    o.insert(k.into(), v);
                }
                (m, Value::Object(o))
            }),
        2 => (
            proptest::collection::vec(mock(), 1..4),
            prompt,
            prompt_fields,
            proptest::option::of(1u64..3),
            proptest::option::of(proptest::sample::select(vec!["number", "yes-no", "choice", "final-line", "open"])),
            proptest::option::of(0.0f64..1.0),
            proptest::option::of(mock()),
        )
            .prop_map(|(models, p, (a, b, c, d, e, f), repeat, kind, threshold, judge)| {
                let mut o = Map::new();
                o.insert("models".into(), Value::Array(models));
                o.insert("prompt".into(), p);
                for (k, v) in [a, b, c, d, e, f].into_iter().flatten() {
                    o.insert(k.into(), v);
                }
                if let Some(r) = repeat {
                    o.insert("repeat".into(), json!(r));
                }
                if let Some(k) = kind {
                    o.insert("kind".into(), json!(k));
                }
                if let Some(t) = threshold {
                    o.insert("threshold".into(), json!(t));
                }
                if let Some(j) = judge {
                    o.insert("judge".into(), j);
                }
                ("llm.compare", Value::Object(o))
            }),
        1 => (proptest::sample::select(vec!["llm.models", "llm.health", "llm.metrics"]), any::<bool>(), proptest::option::of("[a-z]{1,8}"))
            .prop_map(|(m, reset, agent)| {
                let mut o = Map::new();
                if m == "llm.metrics" && reset {
                    o.insert("reset".into(), json!(false));
                }
                if let Some(a) = agent {
                    o.insert("source_agent".into(), json!(a));
                }
                (m, Value::Object(o))
            }),
    ];
    (id, call).prop_map(|(id, (method, params))| {
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
    })
}

/// A batch: near-valid requests mixed with junk, nested arrays included.
fn batch() -> impl Strategy<Value = Value> {
    let item = prop_oneof![
        4 => valid_call(),
        4 => request(),
        1 => any_json(),
        1 => proptest::collection::vec(request(), 0..3).prop_map(Value::Array),
    ];
    proptest::collection::vec(item, 0..6).prop_map(Value::Array)
}

/// Headers, some with trace, session and agent values (valid or not).
fn headers() -> impl Strategy<Value = HeaderMap> {
    proptest::collection::vec(
        (
            proptest::sample::select(vec![
                "traceparent",
                "x-quorum-trace-id",
                "x-quorum-session-id",
                "x-quorum-source-agent",
            ]),
            prop_oneof![
                Just("4bf92f3577b34da6a3ce929d0e0e4736".to_string()),
                Just("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string()),
                Just("0".repeat(32)),
                "[ -~]{0,40}",
            ],
        ),
        0..2,
    )
    .prop_map(|hs| {
        let mut m = HeaderMap::new();
        for (k, v) in hs {
            if let Ok(v) = HeaderValue::from_str(&v) {
                m.insert(k, v);
            }
        }
        m
    })
}

// ---------------------------------------------------------------------------
// Properties: /rpc

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes: a parse error (or, when they happen to be JSON, a
    /// valid answer), never a panic.
    #[test]
    fn rpc_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        check_rpc(body, HeaderMap::new()).map_err(TestCaseError::fail)?;
    }

    /// Truncated and spliced near-valid requests: mostly parse errors.
    #[test]
    fn rpc_mangled_requests(r in request(), cut in any::<usize>(), junk in "\\PC{0,4}") {
        let mut s = r.to_string();
        let mut at = cut % (s.len() + 1);
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.insert_str(at, &junk);
        let mut end = (at + junk.len() + (cut >> 7) % 16).min(s.len());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        check_rpc(s.into_bytes(), HeaderMap::new()).map_err(TestCaseError::fail)?;
    }

    /// Arbitrary JSON values, single or as a batch.
    #[test]
    fn rpc_arbitrary_json(v in any_json()) {
        check_rpc(v.to_string().into_bytes(), HeaderMap::new()).map_err(TestCaseError::fail)?;
    }

    /// Near-valid single requests (notifications and `llm.stream` included).
    #[test]
    fn rpc_near_valid_requests(r in request(), h in headers()) {
        check_rpc(r.to_string().into_bytes(), h).map_err(TestCaseError::fail)?;
    }

    /// Valid calls of every method succeed, with the request's id.
    #[test]
    fn rpc_valid_calls_succeed(r in valid_call()) {
        check_rpc(r.to_string().into_bytes(), HeaderMap::new()).map_err(TestCaseError::fail)?;
        let (_, ctype, out) = call_rpc(r.to_string().into_bytes(), HeaderMap::new());
        let text = String::from_utf8_lossy(&out).to_string();
        let resp = if ctype.starts_with("text/event-stream") {
            stream_result(&text).map_err(TestCaseError::fail)?
        } else {
            serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?
        };
        prop_assert!(resp.get("result").is_some(), "{} failed: {}", r, resp);
    }

    /// Near-valid batches.
    #[test]
    fn rpc_near_valid_batches(b in batch(), h in headers()) {
        check_rpc(b.to_string().into_bytes(), h).map_err(TestCaseError::fail)?;
    }

    /// Deep nesting and big bodies: the parser's recursion limit and the body
    /// limit answer, nothing overflows.
    #[test]
    fn rpc_deep_and_big(depth in 1usize..400, pad in 0usize..(2 * MAX_BODY), array in any::<bool>()) {
        let (open, close) = if array { ("[", "]") } else { ("{\"a\":", "}") };
        let inner = format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"llm.models\",\"params\":{{\"x\":\"{}\"}}}}", "p".repeat(pad));
        let s = format!("{}{inner}{}", open.repeat(depth), close.repeat(depth));
        check_rpc(s.into_bytes(), HeaderMap::new()).map_err(TestCaseError::fail)?;
    }
}

// ---------------------------------------------------------------------------
// Properties: the OpenAI-compatible parser

/// An `ApiError` as the client sees it: a 4xx with OpenAI's error shape.
fn check_api_error(e: openai_compat::ApiError) -> Result<(), String> {
    let h = harness();
    let want_status = e.status;
    if !e.status.is_client_error() {
        return Err(format!("a parse error with status {}: {e:?}", e.status));
    }
    let resp = e.into_response();
    let status = resp.status();
    let bytes =
        h.rt.block_on(axum::body::to_bytes(resp.into_body(), usize::MAX))
            .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let err = &v["error"];
    let ok = status == want_status
        && v.as_object().is_some_and(|o| o.len() == 1)
        && err["message"].as_str().is_some_and(|m| !m.is_empty())
        && err["type"].is_string()
        && (err["param"].is_null() || err["param"].is_string())
        && err["code"].is_string();
    if ok {
        Ok(())
    } else {
        Err(format!("not OpenAI's error shape: {v}"))
    }
}

fn check_parse(body: &[u8]) -> Result<(), String> {
    match openai_compat::parse(body) {
        Ok(p) => {
            if p.model.trim().is_empty() {
                return Err(format!("parsed with an empty model: {p:?}"));
            }
            Ok(())
        }
        Err(e) => check_api_error(e),
    }
}

/// An OpenAI chat body: the real fields with values of the right type
/// mostly, wrong ones sometimes, plus junk fields.
fn openai_body() -> impl Strategy<Value = Value> {
    let msg = prop_oneof![
        Just(json!({"role": "user", "content": "hi"})),
        Just(json!({"role": "system", "content": "terse"})),
        Just(json!({"role": "developer", "content": "terse"})),
        Just(
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
        ),
        Just(json!({"role": "tool", "tool_call_id": "c1", "content": "42"})),
        Just(
            json!({"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:,"}}]})
        ),
        Just(json!({"role": "user", "name": "ïd", "content": "héllo 世界 🕵️"})),
        any_json(),
    ];
    let values = prop_oneof![
        ("model", model_value()),
        (
            "messages",
            proptest::collection::vec(msg, 0..4).prop_map(Value::Array)
        ),
        (
            "max_tokens",
            prop_oneof![
                (0u64..10).prop_map(|n| json!(n)),
                Just(json!(u64::MAX)),
                Just(json!(-1)),
                Just(json!(1e300))
            ]
        ),
        (
            "max_completion_tokens",
            prop_oneof![
                (0u64..10).prop_map(|n| json!(n)),
                Just(json!(4294967296u64))
            ]
        ),
        (
            "temperature",
            prop_oneof![(-1.0f64..3.0).prop_map(|f| json!(f)), Just(json!("1"))]
        ),
        ("top_p", (-1.0f64..2.0).prop_map(|f| json!(f))),
        (
            "n",
            prop_oneof![
                Just(json!(1)),
                Just(json!(2)),
                Just(json!(0)),
                Just(json!(1e20))
            ]
        ),
        (
            "stop",
            prop_oneof![
                Just(json!("x")),
                Just(json!(["a", "b"])),
                Just(json!([1])),
                Just(json!(3))
            ]
        ),
        (
            "stream",
            prop_oneof![any::<bool>().prop_map(Value::Bool), Just(json!("yes"))]
        ),
        (
            "stream_options",
            prop_oneof![
                Just(json!({"include_usage": true})),
                Just(json!({"include_usage": 1})),
                Just(json!([]))
            ]
        ),
        (
            "tools",
            prop_oneof![
                Just(
                    json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
                ),
                Just(json!([{"type": "function"}])),
                Just(json!([{"type": "retrieval"}])),
                Just(json!({})),
                any_json(),
            ]
        ),
        (
            "tool_choice",
            prop_oneof![
                Just(json!("auto")),
                Just(json!("none")),
                Just(json!("required")),
                Just(json!("sometimes")),
                Just(json!({"type": "function", "function": {"name": "f"}})),
                Just(json!({"type": "function"})),
                any_json(),
            ]
        ),
        (
            "response_format",
            prop_oneof![
                Just(json!({"type": "text"})),
                Just(json!({"type": "json_object"})),
                Just(
                    json!({"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}})
                ),
                Just(json!({"type": "json_schema"})),
                Just(json!({"type": "yaml"})),
                Just(json!("json")),
            ]
        ),
        (
            "reasoning_effort",
            prop_oneof![
                Just(json!("minimal")),
                Just(json!("high")),
                Just(json!("max")),
                Just(json!(2))
            ]
        ),
        (
            "trace_id",
            prop_oneof![
                Just(json!("4bf92f3577b34da6a3ce929d0e0e4736")),
                Just(json!("nope")),
                Just(json!(7))
            ]
        ),
        (
            "session_id",
            prop_oneof![Just(json!("s-1")), Just(json!(""))]
        ),
        ("user", any_json()),
        ("logit_bias", any_json()),
    ];
    proptest::collection::vec(values, 0..10)
        .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn openai_parse_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        check_parse(&body).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn openai_parse_arbitrary_json(v in any_json()) {
        check_parse(v.to_string().as_bytes()).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn openai_parse_near_valid_bodies(v in openai_body()) {
        check_parse(v.to_string().as_bytes()).map_err(TestCaseError::fail)?;
    }

    /// A valid minimal body always parses, whatever the model string and
    /// the user text.
    #[test]
    fn openai_parse_minimal_body_parses(
        model in "[a-z]{1,8}/[a-zA-Z0-9._:-]{1,16}",
        text in "\\PC{0,40}",
        stream in proptest::option::of(any::<bool>()),
        max_tokens in proptest::option::of(1u32..=u32::MAX),
    ) {
        let mut body = json!({"model": model, "messages": [{"role": "user", "content": text}]});
        if let Some(s) = stream {
            body["stream"] = json!(s);
        }
        if let Some(m) = max_tokens {
            body["max_tokens"] = json!(m);
        }
        let p = openai_compat::parse(body.to_string().as_bytes())
            .map_err(|e| TestCaseError::fail(format!("{e:?} for {body}")))?;
        prop_assert_eq!(p.model, model);
        prop_assert_eq!(p.stream, stream.unwrap_or(false));
        prop_assert_eq!(p.request.max_tokens, max_tokens);
        prop_assert_eq!(p.request.messages.len(), 1);
    }
}

// ---------------------------------------------------------------------------
// Plain tests: the shapes the properties rely on, and every failure found.

#[test]
fn a_valid_call_completes_with_the_mock() {
    let body = json!({"jsonrpc": "2.0", "id": "a", "method": "llm.complete",
        "params": {"model": "mock/alpha", "prompt": "What is 2+2?", "max_tokens": 8}});
    let (status, _, out) = call_rpc(body.to_string().into_bytes(), HeaderMap::new());
    assert_eq!(status, StatusCode::OK);
    let r: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(check_response(&r).unwrap(), json!("a"));
    assert!(r["result"]["text"].is_string(), "{r}");
}

#[test]
fn a_batch_of_notifications_gets_no_content() {
    let body = json!([
        {"jsonrpc": "2.0", "method": "llm.models"},
        {"jsonrpc": "2.0", "method": "no.such"},
    ]);
    let (status, _, out) = call_rpc(body.to_string().into_bytes(), HeaderMap::new());
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(out.is_empty());
}

#[test]
fn a_stream_answers_with_a_result_event() {
    let body = json!({"jsonrpc": "2.0", "id": 9, "method": "llm.stream",
        "params": {"model": "mock/thinker", "prompt": "What is 2+2?", "max_tokens": 8}});
    assert_eq!(
        check_rpc(body.to_string().into_bytes(), HeaderMap::new()),
        Ok(())
    );
}

#[test]
fn deep_nesting_is_a_parse_error_not_a_stack_overflow() {
    let s = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    // Past the body limit: refused before parsing. Under it: serde_json's
    // recursion limit.
    assert_eq!(check_rpc(s.into_bytes(), HeaderMap::new()), Ok(()));
    let s = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    assert_eq!(check_rpc(s.into_bytes(), HeaderMap::new()), Ok(()));
    assert!(check_parse(format!("{}{}", "[".repeat(5000), "]".repeat(5000)).as_bytes()).is_ok());
}

/// Found by `rpc_near_valid_requests`: a notification with positional params
/// was answered (-32602, null id). A notification is never answered.
#[test]
fn regression_a_notification_with_positional_params_gets_no_answer() {
    let body = json!({"jsonrpc": "2.0", "method": "llm.complete", "params": ["What is 2+2?"]});
    let (status, _, out) = call_rpc(body.to_string().into_bytes(), HeaderMap::new());
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(out.is_empty());
    // With an id it is still refused, by name.
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "llm.complete", "params": ["hi"]});
    let (_, _, out) = call_rpc(body.to_string().into_bytes(), HeaderMap::new());
    let r: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(error_code(&r), Some(rpc::INVALID_PARAMS), "{r}");
    assert_eq!(r["id"], json!(1));
}

/// Found by `rpc_near_valid_batches`: with a bad trace header, a batch of
/// notifications was answered with one null-id error per notification.
#[test]
fn regression_notifications_with_a_bad_trace_header_get_no_answer() {
    let mut h = HeaderMap::new();
    h.insert(
        "x-quorum-trace-id",
        HeaderValue::from_static("00000000000000000000000000000000"),
    );
    let body = json!([{"jsonrpc": "2.0", "method": "llm.models"}]);
    let (status, _, out) = call_rpc(body.to_string().into_bytes(), h.clone());
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "{}",
        String::from_utf8_lossy(&out)
    );
    // A call with an id still hears about the header.
    let body = json!({"jsonrpc": "2.0", "id": "t", "method": "llm.models"});
    let (_, _, out) = call_rpc(body.to_string().into_bytes(), h);
    let r: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(error_code(&r), Some(rpc::INVALID_PARAMS), "{r}");
    assert_eq!(r["id"], json!("t"));
}

/// Found by `rpc_arbitrary_json`: a fractional id came back one float step
/// off (serde_json's default float parsing); with `float_roundtrip` every id
/// comes back exactly.
#[test]
fn regression_ids_come_back_exactly() {
    for id in [json!(u64::MAX), json!(i64::MIN), json!("ïd-🕵️"), json!(0)] {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "llm.health"});
        let (_, _, out) = call_rpc(body.to_string().into_bytes(), HeaderMap::new());
        let r: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(r["id"], id, "{r}");
    }
    let sent = "5.664087076262583e-103";
    let body = format!(r#"{{"jsonrpc":"2.0","id":{sent},"method":"llm.health"}}"#);
    let (_, _, out) = call_rpc(body.into_bytes(), HeaderMap::new());
    let r: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(r["id"].to_string(), sent, "{r}");
}
