//! `quorum serve` as a whole process: JSON-RPC conformance, the
//! OpenAI-compatible API (with the official Python SDK as client), Prometheus
//! metrics (with prometheus_client's parser), auth, limits, graceful
//! shutdown. Every server binds 127.0.0.1:0 with its own data dir and config.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::python_has;
use support::serve::{command, http, serve, Serve};
use support::{Reply, Server};

const FAKE_KEY: &str = "sk-quorum-test-FAKEKEY-0123456789abcdef";

async fn rpc_raw(s: &Serve, body: impl Into<reqwest::Body>) -> (u16, String) {
    let r = http()
        .post(format!("{}/rpc", s.url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

async fn rpc(s: &Serve, v: Value) -> Value {
    let (status, text) = rpc_raw(s, v.to_string()).await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn req(id: i64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn code(v: &Value) -> i64 {
    v["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("no error: {v}"))
}

fn no_panic(s: &Serve) {
    let e = s.stderr();
    assert!(!e.contains("panicked"), "{e}");
}

fn py_script(name: &str) -> String {
    format!("{}/tests/py/{name}", env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// JSON-RPC conformance

#[tokio::test(flavor = "multi_thread")]
async fn standard_error_codes() {
    let s = serve(&[], None, &[]);
    // -32700: not JSON; the id cannot be known.
    let (st, t) = rpc_raw(&s, "{\"jsonrpc\": \"2.0\", \"method\": ").await;
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(code(&v), -32700);
    assert_eq!(v["id"], Value::Null);
    assert_eq!(v["jsonrpc"], "2.0");

    // -32600: not a request object.
    for bad in [
        json!(42),
        json!({"jsonrpc": "1.0", "id": 1, "method": "llm.health"}),
        json!({"id": 1, "method": "llm.health"}),
        json!({"jsonrpc": "2.0", "id": 1, "method": 7}),
        json!({"jsonrpc": "2.0", "id": {"x": 1}, "method": "llm.health"}),
        json!({"jsonrpc": "2.0", "id": 1, "method": "llm.health", "params": "x"}),
    ] {
        let v = rpc(&s, bad.clone()).await;
        assert_eq!(code(&v), -32600, "{bad} -> {v}");
    }
    // The id is echoed when it was valid.
    let v = rpc(
        &s,
        json!({"jsonrpc": "1.0", "id": "abc", "method": "llm.health"}),
    )
    .await;
    assert_eq!(v["id"], "abc");

    // -32601.
    let v = rpc(&s, req(3, "llm.nope", json!({}))).await;
    assert_eq!(code(&v), -32601);
    assert_eq!(v["id"], 3);

    // -32602: wrong type, with the field named; unknown model; unknown param.
    let v = rpc(
        &s,
        req(
            4,
            "llm.complete",
            json!({"model": "mock/alpha", "prompt": "hi", "max_tokens": "ten"}),
        ),
    )
    .await;
    assert_eq!(code(&v), -32602);
    assert_eq!(v["error"]["data"]["field"], "max_tokens");
    let v = rpc(
        &s,
        req(
            5,
            "llm.complete",
            json!({"model": "mock/alpah", "prompt": "hi"}),
        ),
    )
    .await;
    assert_eq!(code(&v), -32602);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did you mean"),
        "{v}"
    );
    let v = rpc(
        &s,
        req(
            6,
            "llm.complete",
            json!({"model": "mock/alpha", "promt": "hi"}),
        ),
    )
    .await;
    assert_eq!(code(&v), -32602);
    assert_eq!(v["error"]["data"]["field"], "promt");
    let v = rpc(&s, json!({"jsonrpc": "2.0", "id": 7, "method": "llm.complete", "params": ["mock/alpha", "hi"]})).await;
    assert_eq!(code(&v), -32602);
    let v = rpc(
        &s,
        req(
            8,
            "llm.complete",
            json!({"model": "mock/alpha", "prompt": "hi", "trace_id": "nope"}),
        ),
    )
    .await;
    assert_eq!(code(&v), -32602);
    assert_eq!(v["error"]["data"]["field"], "trace_id");

    // A success for contrast: the `ask --json` object.
    let v = rpc(
        &s,
        req(
            9,
            "llm.complete",
            json!({"model": "mock/alpha", "prompt": "What is 2+2?"}),
        ),
    )
    .await;
    assert_eq!(v["id"], 9);
    let r = &v["result"];
    assert_eq!(r["provider"], "mock");
    assert_eq!(r["model"], "alpha");
    assert!(r["text"].as_str().unwrap().contains('4'), "{v}");
    assert_eq!(r["finish_reason"], "stop");
    assert!(r["error"].is_null());
    for k in [
        "usage",
        "cost_usd",
        "cost_source",
        "ttft_ms",
        "latency_ms",
        "tool_calls",
        "trace_id",
        "run_id",
    ] {
        assert!(r.get(k).is_some(), "missing {k}: {v}");
    }
    no_panic(&s);
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_error_when_the_budget_cannot_be_checked() {
    // The data dir is a file: the ledger cannot open, so a budget cannot be kept.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let s = serve(
        &[],
        Some("[budget]\ndaily_usd = 5.0\n"),
        &[("QUORUM_DATA_DIR", file.to_str().unwrap())],
    );
    let v = rpc(
        &s,
        req(
            1,
            "llm.complete",
            json!({"model": "mock/alpha", "prompt": "hi"}),
        ),
    )
    .await;
    assert_eq!(code(&v), -32603, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("ledger"),
        "{v}"
    );
    no_panic(&s);
}

#[tokio::test(flavor = "multi_thread")]
async fn application_error_codes() {
    // Rate limited: a real upstream answering 429, no retries.
    let up = Server::start(vec![Reply::json(
        429,
        r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#,
    )
    .header("retry-after", "7")])
    .await;
    let base = format!("{}/v1", up.url);
    let s = serve(
        &[],
        Some("[budget]\ndaily_usd = 0.0000001\n"),
        &[
            ("OPENAI_API_KEY", FAKE_KEY),
            ("OPENAI_BASE_URL", &base),
            ("QUORUM_MAX_RETRIES", "0"),
            ("QUORUM_ALLOWED_MODELS", "mock/alpha,mock/flaky,openai/*"),
        ],
    );
    // Budget: a priced model whose bound crosses the cap; refused before sending.
    let v = rpc(
        &s,
        req(
            1,
            "llm.complete",
            json!({"model": "openai/gpt-4o-mini", "prompt": "hi", "max_tokens": 1000}),
        ),
    )
    .await;
    assert_eq!(code(&v), -32002, "{v}");
    assert_eq!(v["error"]["data"]["kind"], "budget");
    assert_eq!(up.count(), 0, "a refused request must not be sent");
    let m = s.metrics().await;
    assert!(
        m.contains("quorum_refusals_total{kind=\"budget\"} 1"),
        "{m}"
    );

    // Not allowed.
    let v = rpc(
        &s,
        req(
            2,
            "llm.complete",
            json!({"model": "mock/beta", "prompt": "hi"}),
        ),
    )
    .await;
    assert_eq!(code(&v), -32003, "{v}");

    // Provider failed: mock/flaky answers 503 to "fail".
    let v = rpc(
        &s,
        req(
            3,
            "llm.complete",
            json!({"model": "mock/flaky", "prompt": "please fail"}),
        ),
    )
    .await;
    assert_eq!(code(&v), -32004, "{v}");
    assert_eq!(v["error"]["data"]["kind"], "server");
    assert_eq!(v["error"]["data"]["result"]["finish_reason"], "error");

    // Rate limited needs a budget-free server (the cap above refuses openai).
    drop(s);
    let s = serve(
        &[],
        None,
        &[
            ("OPENAI_API_KEY", FAKE_KEY),
            ("OPENAI_BASE_URL", &base),
            ("QUORUM_MAX_RETRIES", "0"),
        ],
    );
    let v = rpc(
        &s,
        req(
            4,
            "llm.complete",
            json!({"model": "openai/gpt-4o-mini", "prompt": "hi"}),
        ),
    )
    .await;
    assert_eq!(code(&v), -32001, "{v}");
    assert_eq!(v["error"]["data"]["status"], 429);
    assert_eq!(up.count(), 1);
    let text = v.to_string();
    assert!(!text.contains(FAKE_KEY), "{text}");
    // The health view shows the provider's last error, never its key.
    let h = rpc(&s, req(5, "llm.health", json!({}))).await;
    let openai = h["result"]["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "openai")
        .unwrap()
        .clone();
    assert_eq!(openai["key_present"], true);
    assert_eq!(openai["last_error"]["kind"], "rate_limited");
    assert!(["closed", "open", "half_open"].contains(&openai["breaker"].as_str().unwrap()));
    assert!(!h.to_string().contains(FAKE_KEY));
    assert!(!s.stderr().contains(FAKE_KEY));
    no_panic(&s);
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_and_notifications() {
    let s = serve(&[], None, &[]);
    // Mixed batch: two calls, a notification, an invalid object, an unknown method.
    let v = rpc(
        &s,
        json!([
            req(1, "llm.complete", json!({"model": "mock/alpha", "prompt": "What is 2+2?"})),
            {"jsonrpc": "2.0", "method": "llm.complete", "params": {"model": "mock/gamma", "prompt": "note"}},
            1,
            req(2, "llm.nope", json!({})),
            req(3, "llm.health", json!({})),
        ]),
    )
    .await;
    let a = v.as_array().unwrap();
    assert_eq!(a.len(), 4, "{v}");
    let by_id = |id: Value| a.iter().find(|r| r["id"] == id).cloned();
    assert!(by_id(json!(1)).unwrap()["result"]["text"].is_string());
    assert_eq!(code(&by_id(json!(2)).unwrap()), -32601);
    assert_eq!(by_id(json!(3)).unwrap()["result"]["status"], "ok");
    let invalid: Vec<&Value> = a.iter().filter(|r| r["id"].is_null()).collect();
    assert_eq!(invalid.len(), 1);
    assert_eq!(code(invalid[0]), -32600);

    // Invalid request objects in a batch: one error each.
    let v = rpc(&s, json!([1, 2, 3])).await;
    let a = v.as_array().unwrap();
    assert_eq!(a.len(), 3);
    assert!(a.iter().all(|r| code(r) == -32600 && r["id"].is_null()));

    // Empty batch: one error, not an array.
    let v = rpc(&s, json!([])).await;
    assert!(v.is_object(), "{v}");
    assert_eq!(code(&v), -32600);

    // A notification alone, and a batch of notifications: no response at all.
    let (st, body) = rpc_raw(
        &s,
        json!({"jsonrpc": "2.0", "method": "llm.complete", "params": {"model": "mock/alpha", "prompt": "quiet"}}).to_string(),
    )
    .await;
    assert_eq!((st, body.as_str()), (204, ""));
    let (st, body) = rpc_raw(
        &s,
        json!([{"jsonrpc": "2.0", "method": "llm.health"}, {"jsonrpc": "2.0", "method": "llm.nope"}]).to_string(),
    )
    .await;
    assert_eq!((st, body.as_str()), (204, ""));

    // The notifications ran: 1 + 1 + 1 completions in the ledger.
    assert_eq!(s.ledger_rows(), 3);

    // llm.stream cannot be batched.
    let v = rpc(
        &s,
        json!([req(
            9,
            "llm.stream",
            json!({"model": "mock/alpha", "prompt": "x"})
        )]),
    )
    .await;
    assert_eq!(code(&v[0]), -32600);
    no_panic(&s);
}

#[tokio::test(flavor = "multi_thread")]
async fn hundred_concurrent_completes_none_lost() {
    let s = serve(&[], None, &[]);
    let client = http();
    let url = format!("{}/rpc", s.url);
    let mut tasks = Vec::new();
    for i in 0..100i64 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let body = req(
                i,
                "llm.complete",
                json!({"model": "mock/alpha", "prompt": format!("What is {i}+{i}?"), "session_id": "load"}),
            );
            let r = client.post(&url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.unwrap();
            (i, v)
        }));
    }
    let mut seen = std::collections::BTreeSet::new();
    for t in tasks {
        let (i, v) = t.await.unwrap();
        assert_eq!(v["id"], i, "{v}");
        assert!(v["error"].is_null(), "{v}");
        let text = v["result"]["text"].as_str().unwrap();
        assert!(text.contains(&(2 * i).to_string()), "{i}: {text}");
        seen.insert(i);
    }
    assert_eq!(seen.len(), 100);
    assert_eq!(s.ledger_rows(), 100);
    let m = rpc(&s, req(1000, "llm.metrics", json!({}))).await;
    assert_eq!(m["result"]["total"]["requests"], 100, "{m}");
    no_panic(&s);
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_is_sse_of_engine_events() {
    let s = serve(&[], None, &[]);
    let r = http()
        .post(format!("{}/rpc", s.url))
        .json(&req(
            1,
            "llm.stream",
            json!({"model": "mock/thinker", "prompt": "Is water wet?"}),
        ))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let body = r.text().await.unwrap();
    let events: Vec<(String, Value)> = body
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| {
            let mut ev = String::new();
            let mut data = String::new();
            for l in b.lines() {
                if let Some(x) = l.strip_prefix("event: ") {
                    ev = x.to_string();
                } else if let Some(x) = l.strip_prefix("data: ") {
                    data.push_str(x);
                }
            }
            (ev, serde_json::from_str(&data).unwrap())
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names.first(), Some(&"run"));
    assert!(names.contains(&"started"));
    assert!(names.contains(&"thinking"));
    assert!(names.contains(&"text"));
    assert!(names.contains(&"finished"));
    let (last, v) = events.last().unwrap();
    assert_eq!(last, "result");
    assert_eq!(v["id"], 1);
    let text: String = events
        .iter()
        .filter(|(e, _)| e == "text")
        .map(|(_, d)| d["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(v["result"]["text"].as_str().unwrap(), text);
    // Errors before the stream starts are plain JSON-RPC errors.
    let v = rpc(
        &s,
        req(
            2,
            "llm.stream",
            json!({"model": "mock/nope", "prompt": "x"}),
        ),
    )
    .await;
    assert_eq!(code(&v), -32602);
}

/// `llm.metrics` tallies as the ledger's totals do: a cache hit is a request and a
/// hit, but its replayed tokens were not sent and are not counted again.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_cache_hits_as_the_ledger_does() {
    use llm_quorum::engine::ledger::{GroupBy, Ledger};
    let s = serve(&[], Some("[cache]\nenabled = true\n"), &[]);
    for id in 1..=3 {
        let v = rpc(
            &s,
            req(
                id,
                "llm.complete",
                json!({"model": "mock/alpha", "prompt": "What is 2+2?"}),
            ),
        )
        .await;
        assert!(v["error"].is_null(), "{v}");
    }
    let m = rpc(&s, req(9, "llm.metrics", json!({}))).await;
    let total = &m["result"]["total"];
    assert_eq!(total["requests"], 3, "{m}");
    assert_eq!(total["cache_hits"], 2, "{m}");
    let ledger = Ledger::open_in(s.dir(), Default::default()).unwrap();
    let rows = ledger.totals(GroupBy::Model).unwrap();
    let row = rows.iter().find(|r| r.key == "mock/alpha").expect("a row");
    assert_eq!((row.requests, row.cache_hits), (3, 2), "{row:?}");
    assert!(row.input_tokens > 0 && row.output_tokens > 0, "{row:?}");
    for (key, n) in [
        ("input_tokens", row.input_tokens),
        ("output_tokens", row.output_tokens),
        ("cached_input_tokens", row.cached_input_tokens),
        ("reasoning_tokens", row.reasoning_tokens),
    ] {
        assert_eq!(total[key], n, "{key}: {m} vs {row:?}");
    }
    assert_eq!(total["cost_usd"].as_f64(), Some(row.cost_usd), "{m}");
    // Prometheus counts the same tokens.
    let text = s.metrics().await;
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("quorum_tokens_total{")
                && l.contains("model=\"alpha\"")
                && l.contains("kind=\"input\"")
        })
        .unwrap_or_else(|| panic!("no input token series in {text}"));
    let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(n, row.input_tokens, "{line}");
    no_panic(&s);
}

#[tokio::test(flavor = "multi_thread")]
async fn compare_models_metrics_health() {
    let s = serve(&[], None, &[]);
    let v = rpc(
        &s,
        req(
            1,
            "llm.compare",
            json!({"models": ["mock/alpha", "mock/gamma", "mock/contrarian"], "prompt": "What is 2+2?"}),
        ),
    )
    .await;
    let r = &v["result"];
    assert_eq!(r["results"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(r["consensus"]["majority_answer"], "4", "{v}");
    assert!(r["consensus"]["dissenters"]
        .as_array()
        .unwrap()
        .contains(&json!("mock/contrarian")));
    let v = rpc(&s, req(2, "llm.models", json!({}))).await;
    assert!(v["result"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "mock/alpha"));
    let v = rpc(&s, req(3, "llm.metrics", json!({"reset": true}))).await;
    let models = v["result"]["models"].as_array().unwrap();
    assert_eq!(models.len(), 3, "{v}");
    assert_eq!(v["result"]["total"]["requests"], 3);
    assert!(v["result"]["total"]["output_tokens"].as_u64().unwrap() > 0);
    let v = rpc(&s, req(4, "llm.metrics", json!({}))).await;
    assert_eq!(v["result"]["total"]["requests"], 0, "reset clears: {v}");
    let v = rpc(&s, req(5, "llm.health", json!({}))).await;
    let mock = v["result"]["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "mock")
        .unwrap()
        .clone();
    assert_eq!(mock["breaker"], "closed");
    assert_eq!(mock["key_present"], true);
    assert!(mock["last_error"].is_null());
}

// ---------------------------------------------------------------------------
// Trace, session, agent

#[tokio::test(flavor = "multi_thread")]
async fn trace_session_agent_reach_the_provider_and_the_ledger() {
    let sse = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"},\"finish_reason\":\"stop\"}]}\n\n\
               data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n\
               data: [DONE]\n\n";
    let up = Server::start(vec![Reply::sse(sse)]).await;
    let base = format!("{}/v1", up.url);
    let s = serve(
        &[],
        None,
        &[("OPENAI_API_KEY", FAKE_KEY), ("OPENAI_BASE_URL", &base)],
    );
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let v = rpc(
        &s,
        req(
            1,
            "llm.complete",
            json!({"model": "openai/gpt-4o-mini", "prompt": "hi", "trace_id": trace,
                   "session_id": "sess-1", "source_agent": "agent-x"}),
        ),
    )
    .await;
    assert_eq!(v["result"]["trace_id"], trace, "{v}");
    // The OpenAI face: headers this time.
    let r = http()
        .post(format!("{}/v1/chat/completions", s.url))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("x-quorum-session-id", "sess-2")
        .header("x-quorum-source-agent", "agent-y")
        .json(&json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    let tp0 = seen[0].header("traceparent").unwrap();
    assert!(tp0.starts_with(&format!("00-{trace}-")), "{tp0}");
    let tp1 = seen[1].header("traceparent").unwrap();
    assert!(
        tp1.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp1}"
    );
    let c = rusqlite::Connection::open(s.dir().join("ledger.sqlite3")).unwrap();
    let rows: Vec<(String, String, String)> = c
        .prepare("SELECT trace_id, session_id, source_agent FROM requests ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                trace.to_string(),
                "sess-1".to_string(),
                "agent-x".to_string()
            ),
            (
                "4bf92f3577b34da6a3ce929d0e0e4736".to_string(),
                "sess-2".to_string(),
                "agent-y".to_string()
            ),
        ]
    );
    // Serve never echoes the key or an Authorization header.
    let m = s.metrics().await;
    assert!(!m.contains(FAKE_KEY));
    assert!(!s.stderr().contains(FAKE_KEY));
}

// ---------------------------------------------------------------------------
// OpenAI-compatible

#[tokio::test(flavor = "multi_thread")]
async fn openai_sdk_as_a_client() {
    if !python_has("openai") {
        eprintln!("SKIP: python3 with the openai package is not available (pip install openai)");
        return;
    }
    let s = serve(&[], None, &[("QUORUM_ALLOWED_MODELS", "mock/*")]);
    let base = format!("{}/v1", s.url);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(py_script("openai_client.py"))
            .arg(base)
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v["plain"];
    assert!(p["content"].as_str().unwrap().contains('4'), "{v}");
    assert_eq!(p["finish"], "stop");
    assert_eq!(p["model"], "mock/alpha");
    assert!(p["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        p["total_tokens"].as_u64().unwrap(),
        p["prompt_tokens"].as_u64().unwrap() + p["completion_tokens"].as_u64().unwrap()
    );
    let st = &v["stream"];
    assert!(st["content"].as_str().unwrap().contains('4'), "{v}");
    assert_eq!(st["finish"], "stop");
    assert!(st["usage"]["completion"].as_u64().unwrap() > 0, "{v}");
    assert!(st["chunks"].as_u64().unwrap() > 3);
    assert_eq!(v["tools"]["name"], "get_weather", "{v}");
    assert_eq!(v["tools"]["finish"], "tool_calls");
    assert!(v["tools"]["arguments"].is_object());
    assert!(!v["tools"]["id"].as_str().unwrap().is_empty());
    assert_eq!(v["after_tool"]["finish"], "stop", "{v}");
    assert_eq!(v["stream_tools"]["finish"], "tool_calls", "{v}");
    assert_eq!(v["stream_tools"]["calls"][0]["name"], "get_weather");
    assert!(v["stream_tools"]["calls"][0]["arguments"].is_object());
    assert_eq!(v["not_found"]["status"], 404, "{v}");
    assert_eq!(v["not_found"]["code"], "model_not_found");
    assert_eq!(v["bad_request"]["status"], 400);
    assert_eq!(v["bad_request"]["param"], "temperature");
    assert_eq!(v["stream_not_found"]["status"], 404);
    assert!(v["models"]
        .as_array()
        .unwrap()
        .contains(&json!("mock/alpha")));
    assert!(!v["models"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| !m.as_str().unwrap().starts_with("mock/")));
    // The session from extra_body reached the ledger.
    let c = rusqlite::Connection::open(s.dir().join("ledger.sqlite3")).unwrap();
    let n: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM requests WHERE session_id = 'sdk-session' AND source_agent = 'openai-python'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    no_panic(&s);
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_errors_have_openai_shape_and_status() {
    let s = serve(
        &["--max-body-bytes", "2048"],
        Some("[budget]\ndaily_usd = 0.0000001\n"),
        &[
            ("QUORUM_ALLOWED_MODELS", "mock/*,openai/*"),
            ("OPENAI_API_KEY", FAKE_KEY),
            ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),
        ],
    );
    let client = http();
    let url = format!("{}/v1/chat/completions", s.url);
    let msg = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(Vec<u8>, u16, &str, Option<&str>)> = vec![
        (b"{not json".to_vec(), 400, "invalid_request", None),
        (b"[]".to_vec(), 400, "invalid_request", None),
        (json!({"messages": msg}).to_string().into(), 400, "invalid_request", Some("model")),
        (json!({"model": 5, "messages": msg}).to_string().into(), 400, "invalid_request", Some("model")),
        (json!({"model": "mock/alpha", "messages": "hi"}).to_string().into(), 400, "invalid_request", Some("messages")),
        (json!({"model": "mock/alpha", "messages": [{"role": "robot", "content": "x"}]}).to_string().into(), 400, "invalid_request", Some("messages[0].role")),
        (json!({"model": "mock/alpha", "messages": msg, "max_tokens": "many"}).to_string().into(), 400, "invalid_request", Some("max_tokens")),
        (json!({"model": "mock/alpha", "messages": msg, "stream": "yes"}).to_string().into(), 400, "invalid_request", Some("stream")),
        (json!({"model": "mock/alpha", "messages": msg, "n": 3}).to_string().into(), 400, "invalid_request", Some("n")),
        (json!({"model": "mock/zzz", "messages": msg}).to_string().into(), 404, "model_not_found", Some("model")),
        (json!({"model": "nowhere/zzz", "messages": msg}).to_string().into(), 404, "model_not_found", Some("model")),
        (json!({"model": "anthropic/claude-haiku-4-5", "messages": msg}).to_string().into(), 403, "model_not_allowed", None),
        (json!({"model": "openai/gpt-4o-mini", "messages": msg, "max_tokens": 500}).to_string().into(), 402, "budget_exceeded", None),
        (json!({"model": "mock/alpha", "messages": [{"role": "user", "content": "x".repeat(4000)}]}).to_string().into(), 413, "request_too_large", None),
    ];
    for (body, status, code, param) in cases {
        let r = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let got = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        let shown = String::from_utf8_lossy(&body[..body.len().min(120)]).to_string();
        assert_eq!(got, status, "{shown} -> {v}");
        assert_eq!(v["error"]["code"], code, "{shown} -> {v}");
        assert!(v["error"]["message"].is_string());
        assert!(v["error"]["type"].is_string());
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], p, "{shown} -> {v}");
        }
    }
    // The same limits on /rpc.
    let (st, t) = rpc_raw(&s, format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"llm.complete\",\"params\":{{\"model\":\"mock/alpha\",\"prompt\":\"{}\"}}}}", "y".repeat(5000))).await;
    assert_eq!(st, 413);
    let v: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(code(&v), -32600);
    // Still alive, nothing panicked.
    let r = client
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    no_panic(&s);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_failure_before_first_token_is_an_http_error_in_streaming_too() {
    let s = serve(&[], None, &[("QUORUM_MAX_RETRIES", "0")]);
    let body = json!({"model": "mock/flaky", "stream": true,
                      "messages": [{"role": "user", "content": "please fail"}]});
    let r = http()
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_error");
    assert_eq!(v["error"]["type"], "api_error");
    // After the first token: an error event inside the stream.
    let body = json!({"model": "mock/alpha", "stream": true,
                      "messages": [{"role": "user", "content": "tell me midstream things"}]});
    let r = http()
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t = r.text().await.unwrap();
    assert!(t.contains("\"error\""), "{t}");
    assert!(t.contains("chat.completion.chunk"), "{t}");
}

// ---------------------------------------------------------------------------
// Prometheus

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_with_prometheus_client() {
    if !python_has("prometheus_client") {
        eprintln!(
            "SKIP: python3 with prometheus_client is not available (pip install prometheus-client)"
        );
        return;
    }
    let s = serve(&[], None, &[("QUORUM_MAX_RETRIES", "0")]);
    for (i, (m, p)) in [
        ("mock/alpha", "What is 2+2?"),
        ("mock/thinker", "Is it?"),
        ("mock/flaky", "fail now"),
    ]
    .iter()
    .enumerate()
    {
        rpc(
            &s,
            req(i as i64, "llm.complete", json!({"model": m, "prompt": p})),
        )
        .await;
    }
    let _ = http()
        .post(format!("{}/v1/chat/completions", s.url))
        .body("{bad")
        .send()
        .await
        .unwrap();
    let r = http()
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap();
    let ctype = r.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap();
    assert!(
        ctype.starts_with("application/openmetrics-text; version=1.0.0"),
        "{ctype}"
    );
    let text = r.text().await.unwrap();
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut c = Command::new("python3")
            .arg(py_script("parse_metrics.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let fam = |n: &str| -> Value {
        v.get(n)
            .cloned()
            .unwrap_or_else(|| panic!("no family {n}: {v}"))
    };
    let sample = |fam: &Value, name: &str, labels: Value| -> f64 {
        fam["samples"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                s[0] == name
                    && labels
                        .as_object()
                        .unwrap()
                        .iter()
                        .all(|(k, val)| s[1][k] == *val)
            })
            .unwrap_or_else(|| panic!("no sample {name} {labels} in {fam}"))[2]
            .as_f64()
            .unwrap()
    };
    let reqs = fam("quorum_requests");
    assert_eq!(reqs["type"], "counter");
    assert_eq!(
        sample(
            &reqs,
            "quorum_requests_total",
            json!({"provider": "mock", "model": "alpha", "status": "ok"})
        ),
        1.0
    );
    let errs = fam("quorum_request_errors");
    assert_eq!(
        sample(
            &errs,
            "quorum_request_errors_total",
            json!({"model": "flaky", "kind": "server"})
        ),
        1.0
    );
    let tokens = fam("quorum_tokens");
    assert!(
        sample(
            &tokens,
            "quorum_tokens_total",
            json!({"model": "thinker", "kind": "reasoning"})
        ) > 0.0
    );
    assert_eq!(fam("quorum_request_duration_seconds")["type"], "histogram");
    assert_eq!(
        fam("quorum_time_to_first_token_seconds")["type"],
        "histogram"
    );
    let lat = fam("quorum_request_duration_seconds");
    assert_eq!(
        sample(
            &lat,
            "quorum_request_duration_seconds_count",
            json!({"model": "alpha"})
        ),
        1.0
    );
    assert_eq!(fam("quorum_cost_usd")["type"], "counter");
    assert_eq!(fam("quorum_in_flight_requests")["type"], "gauge");
    let br = fam("quorum_breaker_state");
    assert_eq!(
        sample(&br, "quorum_breaker_state", json!({"provider": "mock"})),
        0.0
    );
    let http_f = fam("quorum_http_responses");
    assert_eq!(
        sample(
            &http_f,
            "quorum_http_responses_total",
            json!({"route": "/v1/chat/completions", "code": "400"})
        ),
        1.0
    );
}

// ---------------------------------------------------------------------------
// Auth

#[test]
fn non_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = command(dir.path(), None, &[])
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("--token-env"), "{e}");
    // A named variable that is not set is refused too.
    let out = command(dir.path(), None, &[])
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--token-env",
            "QUORUM_TEST_TOKEN",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_token_is_required_when_set() {
    let token = "tok-quorum-test-7f3a9c";
    let s = serve(
        &["--token-env", "QUORUM_TEST_TOKEN"],
        None,
        &[("QUORUM_TEST_TOKEN", token)],
    );
    let client = http();
    let body = req(1, "llm.health", json!({}));
    let r = client
        .post(format!("{}/rpc", s.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = client
        .post(format!("{}/rpc", s.url))
        .bearer_auth("wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let t = r.text().await.unwrap();
    assert!(!t.contains(token) && !t.contains("\"wrong"), "{t}");
    for path in ["/v1/models", "/metrics"] {
        let r = client.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = client
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("{}/rpc", s.url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{}/metrics", s.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let m = r.text().await.unwrap();
    assert!(
        m.contains("quorum_http_responses_total{route=\"/rpc\",code=\"401\"} 2"),
        "{m}"
    );
    assert!(!m.contains(token));
    assert!(!s.stderr().contains(token));
}

// ---------------------------------------------------------------------------
// Graceful shutdown

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_request_in_flight_and_keeps_its_ledger_row() {
    let sse = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"slow \"}}]}\n\n\
               data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"answer\"},\"finish_reason\":\"stop\"}]}\n\n\
               data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n\
               data: [DONE]\n\n";
    let mut slow = Reply::sse(sse);
    slow.delay = Duration::from_millis(700);
    let up = Server::start(vec![slow]).await;
    let base = format!("{}/v1", up.url);
    let mut s = serve(
        &[],
        None,
        &[("OPENAI_API_KEY", FAKE_KEY), ("OPENAI_BASE_URL", &base)],
    );
    let url = format!("{}/rpc", s.url);
    let call = tokio::spawn(async move {
        http()
            .post(url)
            .json(&req(
                1,
                "llm.complete",
                json!({"model": "openai/gpt-4o-mini", "prompt": "hi"}),
            ))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    // Wait until the request is upstream, then ask the server to stop.
    support::eventually(|| up.count() == 1).await;
    assert_eq!(up.count(), 1);
    assert_eq!(unsafe { libc::kill(s.pid(), libc::SIGTERM) }, 0);
    let v = call.await.unwrap();
    assert_eq!(v["result"]["text"], "slow answer", "{v}");
    let status = tokio::task::spawn_blocking(move || {
        let st = s.child.wait().unwrap();
        (st, s)
    })
    .await
    .unwrap();
    let (st, s) = status;
    assert_eq!(st.code(), Some(0), "{}", s.stderr());
    let e = s.stderr_with("stopped");
    assert!(e.contains("shutting down"), "{e}");
    assert!(e.contains("stopped"), "{e}");
    let c = rusqlite::Connection::open(s.dir().join("ledger.sqlite3")).unwrap();
    let (n, status): (i64, String) = c
        .query_row("SELECT COUNT(*), MAX(status) FROM requests", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((n, status.as_str()), (1, "ok"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_goes_away_cancels_the_upstream_stream() {
    let sse = support::openai_words_sse(200);
    let up = Server::start(vec![Reply::sse(sse).chunked(64, Duration::from_millis(20))]).await;
    let base = format!("{}/v1", up.url);
    let s = serve(
        &[],
        None,
        &[("OPENAI_API_KEY", FAKE_KEY), ("OPENAI_BASE_URL", &base)],
    );
    let mut r = http()
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&json!({"model": "openai/gpt-4o-mini", "stream": true,
                      "messages": [{"role": "user", "content": "go on"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("chat.completion.chunk"));
    drop(r);
    support::eventually(|| up.aborted.load(std::sync::atomic::Ordering::SeqCst) > 0).await;
    assert_eq!(up.aborted.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The ledger says so, once the cancelled request is written.
    let mut status = String::new();
    let db = s.dir().join("ledger.sqlite3");
    support::eventually(|| {
        let Ok(c) = rusqlite::Connection::open(&db) else {
            return false;
        };
        match c.query_row("SELECT status FROM requests", [], |r| r.get::<_, String>(0)) {
            Ok(st) => {
                status = st;
                true
            }
            Err(_) => false,
        }
    })
    .await;
    assert_eq!(status, "cancelled");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_stream_in_flight_finish() {
    let sse = support::openai_words_sse(20);
    let up = Server::start(vec![Reply::sse(sse).chunked(64, Duration::from_millis(15))]).await;
    let base = format!("{}/v1", up.url);
    let mut s = serve(
        &[],
        None,
        &[("OPENAI_API_KEY", FAKE_KEY), ("OPENAI_BASE_URL", &base)],
    );
    let mut r = http()
        .post(format!("{}/rpc", s.url))
        .json(&req(
            1,
            "llm.stream",
            json!({"model": "openai/gpt-4o-mini", "prompt": "go"}),
        ))
        .send()
        .await
        .unwrap();
    let mut body = String::from_utf8_lossy(&r.chunk().await.unwrap().unwrap()).to_string();
    assert_eq!(unsafe { libc::kill(s.pid(), libc::SIGTERM) }, 0);
    while let Some(c) = r.chunk().await.unwrap() {
        body.push_str(&String::from_utf8_lossy(&c));
    }
    assert!(body.contains("event: result"), "{body}");
    assert!(body.contains("w19 "), "{body}");
    let st = tokio::task::spawn_blocking(move || {
        let st = s.child.wait().unwrap();
        (st, s)
    })
    .await
    .unwrap();
    assert_eq!(st.0.code(), Some(0), "{}", st.1.stderr());
    assert_eq!(st.1.ledger_rows(), 1);
}
