//! `quorum serve` exports OpenTelemetry traces to a real OTLP/HTTP receiver on
//! 127.0.0.1 (tests/py/otlp_receiver.py, built on the `opentelemetry-proto`
//! package): a server span per request that continues the caller's
//! `traceparent`, a GenAI client span per upstream call, flushed on shutdown,
//! and never a prompt or a token in them.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};
use support::python_has;

const TOKEN: &str = "serve-token-0123456789abcdef-SECRET";
const PROMPT: &str = "PROMPT-TEXT-never-in-a-span";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const OWN_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// Kills the child when dropped.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn receiver(out: &Path) -> (Kill, u16) {
    let mut child = Command::new("python3")
        .arg(format!(
            "{}/tests/py/otlp_receiver.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("receiver said {line:?}"));
    (Kill(child), port)
}

fn spans(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("spans.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_genai_spans_continuing_the_callers_trace() {
    if !python_has("opentelemetry.proto.collector.trace.v1.trace_service_pb2") {
        eprintln!(
            "SKIP: python3 with the opentelemetry-proto package is not available (pip install opentelemetry-proto)"
        );
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let (_rx, port) = receiver(out.path());
    let otlp = format!("http://127.0.0.1:{port}");
    let mut serve = support::serve::serve(
        &["--token-env", "QTOKEN"],
        Some(""),
        &[
            ("QTOKEN", TOKEN),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp),
            ("OTEL_SERVICE_NAME", "quorum-under-test"),
            // Nothing would leave before the test ends but the flush on shutdown.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    );
    let url = serve.url.clone();
    let http = reqwest::Client::builder()
        .timeout(support::PATIENCE)
        .build()
        .unwrap();

    // Whole, continuing the caller's trace.
    let r = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(TOKEN)
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .json(&json!({"model": "mock/alpha", "messages": [{"role": "user", "content": PROMPT}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let whole: Value = r.json().await.unwrap();
    // Streamed, with only a quorum trace id.
    let r = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(TOKEN)
        .header("x-quorum-trace-id", OWN_TRACE)
        .json(&json!({"model": "mock/beta", "stream": true,
                      "messages": [{"role": "user", "content": PROMPT}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("[DONE]"));
    // Refused before any upstream call.
    let r = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(TOKEN)
        .json(&json!({"model": "nope/nothing", "messages": [{"role": "user", "content": PROMPT}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    assert!(spans(out.path()).is_empty(), "exported before shutdown");
    // SIGTERM: the server flushes its spans as it stops.
    let pid = serve.pid();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let exited = support::eventually_blocking(|| matches!(serve.child.try_wait(), Ok(Some(_))));
    assert!(exited, "serve did not stop: {}", serve.stderr());
    let got = spans(out.path());
    let find = |pred: &dyn Fn(&Value) -> bool| -> Vec<Value> {
        got.iter().filter(|s| pred(s)).cloned().collect()
    };

    // The first request: a server span under the caller's span ...
    let server = find(&|s| s["trace_id"] == TRACE && s["kind"] == 2);
    assert_eq!(server.len(), 1, "{got:#?}");
    let server = &server[0];
    assert_eq!(server["parent_span_id"], PARENT);
    assert_eq!(server["name"], "POST /v1/chat/completions");
    let a = &server["attributes"];
    assert_eq!(a["http.request.method"], "POST");
    assert_eq!(a["http.route"], "/v1/chat/completions");
    assert_eq!(a["http.response.status_code"], 200);
    assert_eq!(a["quorum.trace_id"], TRACE);
    assert_eq!(server["resource"]["service.name"], "quorum-under-test");
    // ... over one GenAI client span.
    let call = find(&|s| s["parent_span_id"] == server["span_id"]);
    assert_eq!(call.len(), 1, "{got:#?}");
    let call = &call[0];
    assert_eq!(call["trace_id"], TRACE);
    assert_eq!(call["kind"], 3, "client");
    assert_eq!(call["name"], "chat alpha");
    let a = &call["attributes"];
    assert_eq!(a["gen_ai.operation.name"], "chat");
    assert_eq!(a["gen_ai.provider.name"], "mock");
    assert_eq!(a["gen_ai.system"], "mock");
    assert_eq!(a["gen_ai.request.model"], "alpha");
    assert_eq!(a["gen_ai.response.model"], "alpha");
    assert_eq!(a["gen_ai.response.finish_reasons"], json!(["stop"]));
    assert_eq!(
        a["gen_ai.usage.input_tokens"],
        whole["usage"]["prompt_tokens"]
    );
    assert_eq!(
        a["gen_ai.usage.output_tokens"],
        whole["usage"]["completion_tokens"]
    );
    assert!(a["gen_ai.usage.output_tokens"].as_i64().unwrap() > 0);
    assert!(a["quorum.ttft_ms"].as_f64().is_some(), "{a}");
    assert!(a["quorum.latency_ms"].as_f64().is_some(), "{a}");
    assert_eq!(a["quorum.cost_source"], whole["quorum"]["cost_source"]);
    match whole["quorum"]["cost_usd"].as_f64() {
        Some(x) => assert_eq!(a["quorum.cost_usd"].as_f64(), Some(x)),
        None => assert!(a.get("quorum.cost_usd").is_none()),
    }
    let (s0, e0) = (
        server["start"].as_u64().unwrap(),
        server["end"].as_u64().unwrap(),
    );
    let (s1, e1) = (
        call["start"].as_u64().unwrap(),
        call["end"].as_u64().unwrap(),
    );
    assert!(s0 <= e0 && s1 <= e1, "{server} {call}");

    // The streamed request: a root span whose trace id is quorum's own.
    let root = find(&|s| s["trace_id"] == OWN_TRACE && s["kind"] == 2);
    assert_eq!(root.len(), 1, "{got:#?}");
    assert_eq!(root[0]["parent_span_id"], "");
    let call = find(&|s| s["parent_span_id"] == root[0]["span_id"]);
    assert_eq!(call.len(), 1);
    assert_eq!(call[0]["attributes"]["gen_ai.request.model"], "beta");

    // The refused one: a 404 span, no upstream call.
    let refused = find(&|s| s["attributes"]["http.response.status_code"] == 404);
    assert_eq!(refused.len(), 1, "{got:#?}");
    assert!(find(&|s| s["parent_span_id"] == refused[0]["span_id"]).is_empty());

    // Neither the prompt nor the token left.
    let raw = std::fs::read(out.path().join("raw.bin")).unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert!(!raw.contains(PROMPT), "the prompt was exported");
    assert!(!raw.contains(TOKEN), "the token was exported");
}

const UPSTREAM_SSE: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\ndata: [DONE]\n\n";

/// `quorum serve` in front of an OpenAI-wire stand-in on 127.0.0.1, with or
/// without an OTLP endpoint.
fn serve_in_front(
    dir: &Path,
    upstream: &str,
    otlp: Option<u16>,
) -> (Kill, String, std::sync::Arc<std::sync::Mutex<String>>) {
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, "").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quorum"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("QUORUM_DATA_DIR", dir)
        .env("QUORUM_CONFIG", &cfg)
        .env("OPENAI_API_KEY", "sk-FAKE-test-key")
        .env("OPENAI_BASE_URL", format!("{upstream}/v1"))
        .env("QTOKEN", TOKEN)
        .args(["serve", "--listen", "127.0.0.1:0", "--token-env", "QTOKEN"]);
    if let Some(port) = otlp {
        cmd.env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000");
    }
    let (child, url, stderr) = support::spawn_serve(cmd);
    (Kill(child), url, stderr)
}

/// The `traceparent` an upstream request carried: (trace id, parent span id).
fn upstream_parent(seen: &support::Seen) -> (String, String) {
    let tp = seen.header("traceparent").expect("upstream traceparent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    assert_eq!(parts[2].len(), 16, "{tp}");
    (parts[1].to_string(), parts[2].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_requests_continue_the_trace_under_the_call_span() {
    if !python_has("opentelemetry.proto.collector.trace.v1.trace_service_pb2") {
        eprintln!(
            "SKIP: python3 with the opentelemetry-proto package is not available (pip install opentelemetry-proto)"
        );
        return;
    }
    let up = support::Server::start(vec![support::Reply::sse(UPSTREAM_SSE)]).await;
    let out = tempfile::tempdir().unwrap();
    let (_rx, port) = receiver(out.path());
    let dir = tempfile::tempdir().unwrap();
    let (mut serve, url, stderr) = serve_in_front(dir.path(), &up.url, Some(port));
    let http = reqwest::Client::builder()
        .timeout(support::PATIENCE)
        .build()
        .unwrap();
    // Whole, under the caller's span.
    let r = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(TOKEN)
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .json(&json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", stderr.lock().unwrap());
    // Streamed, with no caller span: the trace is quorum's own.
    let r = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(TOKEN)
        .header("x-quorum-trace-id", OWN_TRACE)
        .json(&json!({"model": "openai/gpt-4o-mini", "stream": true,
                      "messages": [{"role": "user", "content": PROMPT}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("[DONE]"));
    let seen = up.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");

    let pid = serve.0.id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let exited = support::eventually_blocking(|| matches!(serve.0.try_wait(), Ok(Some(_))));
    assert!(exited, "serve did not stop: {}", stderr.lock().unwrap());
    let got = spans(out.path());

    for (seen, trace) in [(&seen[0], TRACE), (&seen[1], OWN_TRACE)] {
        let (t, parent) = upstream_parent(seen);
        assert_eq!(t, trace);
        assert_ne!(
            parent, PARENT,
            "the parent is quorum's call span, not the caller's"
        );
        // The upstream's parent is the exported GenAI client span ...
        let call: Vec<&Value> = got.iter().filter(|s| s["span_id"] == parent).collect();
        assert_eq!(call.len(), 1, "no span {parent} in {got:#?}");
        let call = call[0];
        assert_eq!(call["trace_id"], trace);
        assert_eq!(call["kind"], 3, "client");
        assert_eq!(call["name"], "chat gpt-4o-mini");
        // ... whose parent is the request's server span.
        let server: Vec<&Value> = got
            .iter()
            .filter(|s| s["span_id"] == call["parent_span_id"])
            .collect();
        assert_eq!(server.len(), 1, "{got:#?}");
        assert_eq!(server[0]["kind"], 2, "server");
        assert_eq!(server[0]["trace_id"], trace);
        let expect_parent = if trace == TRACE { PARENT } else { "" };
        assert_eq!(server[0]["parent_span_id"], expect_parent);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_traces_the_callers_span_is_passed_upstream() {
    let up = support::Server::start(vec![support::Reply::sse(UPSTREAM_SSE)]).await;
    let dir = tempfile::tempdir().unwrap();
    let (_serve, url, stderr) = serve_in_front(dir.path(), &up.url, None);
    let http = reqwest::Client::builder()
        .timeout(support::PATIENCE)
        .build()
        .unwrap();
    let send = |h: Option<(&'static str, String)>| {
        let mut r = http
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(TOKEN)
            .json(&json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}));
        if let Some((k, v)) = h {
            r = r.header(k, v);
        }
        r.send()
    };
    let r = send(Some(("traceparent", format!("00-{TRACE}-{PARENT}-01"))))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", stderr.lock().unwrap());
    assert_eq!(r.headers()["x-quorum-trace-id"], TRACE);
    let r = send(Some(("x-quorum-trace-id", OWN_TRACE.to_string())))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = send(None).await.unwrap();
    assert_eq!(r.status(), 200);
    let own = r.headers()["x-quorum-trace-id"]
        .to_str()
        .unwrap()
        .to_string();
    // A caller that does not sample, with a vendor's tracestate.
    let r = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(TOKEN)
        .header("traceparent", format!("00-{TRACE}-{PARENT}-00"))
        .header("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        .json(&json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.requests();
    assert_eq!(seen.len(), 4, "{seen:?}");
    // The caller's own span is the provider's parent: quorum is transparent,
    // sampling decision and tracestate included.
    assert_eq!(
        upstream_parent(&seen[0]),
        (TRACE.to_string(), PARENT.to_string())
    );
    assert!(seen[0].header("traceparent").unwrap().ends_with("-01"));
    assert_eq!(seen[0].header("tracestate"), None);
    assert_eq!(
        seen[3].header("traceparent"),
        Some(format!("00-{TRACE}-{PARENT}-00").as_str())
    );
    assert_eq!(
        seen[3].header("tracestate"),
        Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    );
    // Without a caller span, the trace is quorum's (as in the ledger and the
    // response header) under a span id of its own.
    let (t, p) = upstream_parent(&seen[1]);
    assert_eq!(t, OWN_TRACE);
    assert!(p != PARENT && p != "0000000000000000", "{p}");
    let (t, _) = upstream_parent(&seen[2]);
    assert_eq!(t, own);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judges_call_is_a_span_in_the_comparisons_trace() {
    if !python_has("opentelemetry.proto.collector.trace.v1.trace_service_pb2") {
        eprintln!(
            "SKIP: python3 with the opentelemetry-proto package is not available (pip install opentelemetry-proto)"
        );
        return;
    }
    let up = support::Server::start(vec![]).await;
    let out = tempfile::tempdir().unwrap();
    let (_rx, port) = receiver(out.path());
    let dir = tempfile::tempdir().unwrap();
    let (mut serve, url, stderr) = serve_in_front(dir.path(), &up.url, Some(port));
    let http = reqwest::Client::builder()
        .timeout(support::PATIENCE)
        .build()
        .unwrap();
    let r: Value = http
        .post(format!("{url}/rpc"))
        .bearer_auth(TOKEN)
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "llm.compare", "params": {
            "prompt": "What is 2+2?",
            "models": ["mock/alpha", "mock/contrarian", "mock/gamma"],
            "judge": "mock/beta"}}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        r["result"]["judge"].is_object(),
        "{r:#} {}",
        stderr.lock().unwrap()
    );
    let pid = serve.0.id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let exited = support::eventually_blocking(|| matches!(serve.0.try_wait(), Ok(Some(_))));
    assert!(exited, "serve did not stop: {}", stderr.lock().unwrap());
    let got = spans(out.path());
    let server: Vec<&Value> = got.iter().filter(|s| s["kind"] == 2).collect();
    assert_eq!(server.len(), 1, "{got:#?}");
    let calls: Vec<&Value> = got
        .iter()
        .filter(|s| s["kind"] == 3 && s["parent_span_id"] == server[0]["span_id"])
        .collect();
    let mut names: Vec<&str> = calls.iter().map(|s| s["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        ["chat alpha", "chat beta", "chat contrarian", "chat gamma"],
        "three answers and the judge, under the request's span: {got:#?}"
    );
    assert!(calls.iter().all(|s| s["trace_id"] == TRACE));
}
