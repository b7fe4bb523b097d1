//! `quorum serve`'s limits, probed over real HTTP on 127.0.0.1 as an
//! attacker would: slow headers, short bodies, too many connections, too
//! many requests from one client, oversized batches and fan-outs, many model
//! names in metrics, credentials in listings, shutdown with requests in flight.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::python_has;
use support::serve::{http, Serve};
use support::{Reply, Server};

const FAKE_KEY: &str = "sk-quorum-test-FAKEKEY-0123456789abcdef";

/// `quorum serve` with `config` (an empty config file when `None`).
fn serve(args: &[&str], config: Option<&str>, env: &[(&str, &str)]) -> Serve {
    support::serve::serve(args, Some(config.unwrap_or("")), env)
}

/// `quorum` with `config` (an empty config file when `None`).
fn command(dir: &std::path::Path, config: Option<&str>, env: &[(&str, &str)]) -> Command {
    support::serve::command(dir, Some(config.unwrap_or("")), env)
}

/// Read what the server sends until it closes the connection (or 30 s pass).
fn read_to_close(sock: &mut TcpStream) -> (String, Duration) {
    let t0 = Instant::now();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), t0.elapsed())
}

fn body_json(raw: &str) -> Value {
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw}"))
}

#[test]
fn slow_headers_are_cut_off() {
    let s = serve(&["--header-timeout", "1"], None, &[]);
    let mut sock = TcpStream::connect(&s.addr).unwrap();
    sock.write_all(b"POST /rpc HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // ... and never the rest.
    let (_, took) = read_to_close(&mut sock);
    assert!(
        took < Duration::from_secs(25),
        "held for {took:?}: {}",
        s.stderr.lock().unwrap()
    );
    // An idle keep-alive connection (no request at all) is closed too.
    let mut idle = TcpStream::connect(&s.addr).unwrap();
    let (_, took) = read_to_close(&mut idle);
    assert!(took < Duration::from_secs(25), "held for {took:?}");
}

#[test]
fn a_short_body_gets_408_with_a_body() {
    let s = serve(&["--body-timeout", "1"], None, &[]);
    for (path, check) in [("/rpc", "rpc"), ("/v1/chat/completions", "openai")] {
        let mut sock = TcpStream::connect(&s.addr).unwrap();
        write!(
            sock,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{{\"jsonrpc\""
        )
        .unwrap();
        let (raw, took) = read_to_close(&mut sock);
        assert!(raw.starts_with("HTTP/1.1 408"), "{path}: {raw}");
        assert!(took < Duration::from_secs(25));
        let v = body_json(&raw);
        if check == "rpc" {
            assert_eq!(v["error"]["code"], -32600, "{v}");
        } else {
            assert_eq!(v["error"]["code"], "request_timeout", "{v}");
        }
    }
}

#[test]
fn connections_over_the_cap_get_503_and_the_server_stays_up() {
    let s = serve(
        &["--max-connections", "3", "--header-timeout", "120"],
        None,
        &[],
    );
    // Three idle connections take every slot (accepted in order, before the fourth).
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(&s.addr).unwrap())
        .collect();
    let mut extra = TcpStream::connect(&s.addr).unwrap();
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (raw, _) = read_to_close(&mut extra);
    assert!(raw.starts_with("HTTP/1.1 503"), "{raw}");
    assert_eq!(body_json(&raw)["error"]["code"], "too_many_connections");
    // A slot freed is a slot taken again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = TcpStream::connect(&s.addr).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let (raw, _) = read_to_close(&mut c);
        if raw.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "never served again: {raw}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn rpc_raw(s: &Serve, body: &Value) -> (u16, Value) {
    let r = http()
        .post(format!("{}/rpc", s.url))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn complete(id: i64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "llm.complete",
           "params": {"model": "mock/alpha", "prompt": "hi"}})
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_batches_and_fan_outs_are_refused_before_sending() {
    let s = serve(&["--max-batch", "5", "--max-fanout", "8"], None, &[]);
    // A batch over --max-batch.
    let batch: Vec<Value> = (0..6).map(complete).collect();
    let (status, v) = rpc_raw(&s, &json!(batch)).await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["error"]["code"], -32600);
    assert_eq!(v["error"]["data"]["limit"], 5);
    // Within it: answered.
    let batch: Vec<Value> = (0..5).map(complete).collect();
    let (status, v) = rpc_raw(&s, &json!(batch)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 5);
    // One compare fanning out to 3 models × repeat 3 = 9 > 8.
    let cmp = |repeat: u64| {
        json!({"jsonrpc": "2.0", "id": 7, "method": "llm.compare",
               "params": {"models": ["mock/alpha", "mock/beta", "mock/gamma"], "repeat": repeat,
                          "prompt": "2+2?"}})
    };
    let (status, v) = rpc_raw(&s, &cmp(3)).await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["id"], 7);
    assert_eq!(v["error"]["code"], -32600);
    assert_eq!(v["error"]["data"]["fanout"], 9);
    // Summed over a batch: 2 compares of 3 × 1 plus 3 completes = 9 > 8.
    let mut batch = vec![cmp(1), cmp(1)];
    batch[1]["id"] = json!(8);
    batch.extend((0..3).map(complete));
    let (status, v) = rpc_raw(&s, &json!(batch)).await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["error"]["data"]["fanout"], 9);
    // Nothing reached the ledger from the refused ones: only the 5 completes.
    let c = rusqlite::Connection::open(s.dir().join("ledger.sqlite3")).unwrap();
    let n: i64 = c
        .query_row("SELECT COUNT(*) FROM requests", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 5);
    let (status, v) = rpc_raw(&s, &cmp(2)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["failed"], 0, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_client_cannot_hold_more_than_its_share() {
    // Streams paced at 2 tokens a second stay open while we probe.
    let s = serve(
        &["--max-per-client", "2"],
        None,
        &[("QUORUM_MOCK_TPS", "2")],
    );
    let start = || {
        http()
            .post(format!("{}/v1/chat/completions", s.url))
            .json(&json!({"model": "mock/beta", "stream": true,
                          "messages": [{"role": "user", "content": "tell me a long story"}]}))
            .send()
    };
    let mut a = start().await.unwrap();
    let mut b = start().await.unwrap();
    assert_eq!(a.status(), 200);
    assert_eq!(b.status(), 200);
    assert!(a.chunk().await.unwrap().is_some());
    assert!(b.chunk().await.unwrap().is_some());
    let r = start().await.unwrap();
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "too_many_requests", "{v}");
    let (status, v) = rpc_raw(&s, &complete(1)).await;
    assert_eq!(status, 429);
    assert_eq!(v["error"]["code"], -32005, "{v}");
    // The slots come back when the streams end.
    drop(a);
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = rpc_raw(&s, &complete(2)).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_stay_small_under_many_model_names() {
    let sse = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\ndata: [DONE]\n\n";
    let up = Server::start(vec![Reply::sse(sse)]).await;
    let base = format!("{}/v1", up.url);
    let s = serve(
        &[],
        None,
        &[("OPENAI_API_KEY", FAKE_KEY), ("OPENAI_BASE_URL", &base)],
    );
    let client = http();
    let names = 300;
    for chunk in (0..names).collect::<Vec<_>>().chunks(50) {
        let futs = chunk.iter().map(|i| {
            let agent = format!("agent-{i}");
            client
                .post(format!("{}/v1/chat/completions", s.url))
                .header("x-quorum-source-agent", agent)
                .json(&json!({"model": format!("openai/made-up-{i}"),
                              "messages": [{"role": "user", "content": "hi"}]}))
                .send()
        });
        for r in futures_util::future::join_all(futs).await {
            assert_eq!(r.unwrap().status(), 200);
        }
    }
    // A known model keeps its own label.
    let r = client
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&json!({"model": "openai/gpt-4o-mini",
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = client
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!m.contains("made-up"), "an unknown model became a label");
    assert!(
        m.contains(
            "quorum_requests_total{provider=\"openai\",model=\"other\",endpoint=\"chat_completions\",status=\"ok\"} 300"
        ),
        "{m}"
    );
    assert!(m.contains("model=\"gpt-4o-mini\""));
    // Agents: the first 50 get their own label, the rest fold into `other`.
    let agents: std::collections::HashSet<&str> = m
        .lines()
        .filter(|l| l.starts_with("quorum_agent_requests_total{"))
        .filter_map(|l| l.split("agent=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(agents.len(), 52, "{agents:?}"); // 50 + other + none
    assert!(agents.contains("other") && agents.contains("none"));
    assert!(m.len() < 100_000, "{} bytes", m.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn listings_never_show_credentials() {
    let config = r#"
[providers.corp]
kind = "compatible"
base_url = "https://bob:${CORP_PROXY_PASSWORD}@proxy.example/v1?api_key=${CORP_PROXY_PASSWORD}"
models = ["m1"]
"#;
    let secret = "hunter2-very-secret-password";
    let s = serve(&[], Some(config), &[("CORP_PROXY_PASSWORD", secret)]);
    let (status, v) = rpc_raw(
        &s,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "llm.models"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let text = v.to_string();
    assert!(text.contains("proxy.example"), "{text}");
    assert!(!text.contains(secret), "{text}");
    assert!(!text.contains("bob"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_error_status_has_a_body() {
    let s = serve(&[], None, &[]);
    let r = http().get(format!("{}/rpc", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "method_not_allowed");
    let r = http()
        .get(format!("{}/nowhere", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_found");
}

#[test]
fn short_tokens_are_refused_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let out = command(dir.path(), None, &[("T", "short-token")])
        .args(["serve", "--listen", "0.0.0.0:0", "--token-env", "T"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("shorter than 16"), "{e}");
    assert!(!e.contains("short-token"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bearer_scheme_is_case_insensitive() {
    let token = "tok-quorum-test-7f3a9c-long-enough";
    let s = serve(&["--token-env", "T"], None, &[("T", token)]);
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = http()
            .get(format!("{}/v1/models", s.url))
            .header("authorization", format!("{scheme} {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scheme}");
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_timeout_cancels_what_is_in_flight_and_records_it() {
    let s = serve(
        &["--shutdown-timeout", "0.5"],
        None,
        &[("QUORUM_MOCK_TPS", "2")],
    );
    let mut r = http()
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&json!({"model": "mock/beta", "stream": true,
                      "messages": [{"role": "user", "content": "tell me a long story"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.chunk().await.unwrap().is_some());
    unsafe {
        libc::kill(s.child.id() as i32, libc::SIGTERM);
    }
    let mut rest = String::new();
    while let Ok(Some(c)) = r.chunk().await {
        rest.push_str(&String::from_utf8_lossy(&c));
    }
    assert!(rest.contains("\"code\":\"cancelled\""), "{rest}");
    // The process exits by itself, and the request has its ledger row.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut s = s;
    loop {
        if s.child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "serve did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = rusqlite::Connection::open(s.dir().join("ledger.sqlite3")).unwrap();
    let status: String = c
        .query_row("SELECT status FROM requests", [], |r| r.get(0))
        .unwrap();
    assert_eq!(status, "cancelled");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_access_line_per_request_and_never_a_secret() {
    let token = "tok-quorum-test-access-log-0123";
    let s = serve(&["--token-env", "T"], None, &[("T", token)]);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = http()
        .post(format!("{}/v1/chat/completions", s.url))
        .bearer_auth(token)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&json!({"model": "mock/alpha", "stream": true,
                      "messages": [{"role": "user", "content": "the secret prompt"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.text().await.unwrap();
    let r = http()
        .get(format!("{}/v1/models", s.url))
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let log = s.stderr.lock().unwrap().clone();
        if log.matches("quorum::access").count() >= 2 || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("quorum::access"))
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    let chat = lines
        .iter()
        .find(|l| l.contains("/v1/chat/completions"))
        .unwrap();
    for want in [
        &format!("trace_id=\"{trace}\"") as &str,
        "model=mock/alpha",
        "status=200",
        "output_tokens=",
        "cost_usd=",
        "latency_ms=",
    ] {
        assert!(chat.contains(want), "{want}: {chat}");
    }
    assert!(lines.iter().any(|l| l.contains("status=401")), "{log}");
    assert!(
        !log.contains(token) && !log.contains("wrong-token"),
        "{log}"
    );
    assert!(!log.contains("secret prompt"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_litellm_and_langchain_clients_pass_every_parameter_or_get_a_400() {
    if !python_has("openai") {
        eprintln!("SKIP: python3 with the openai package is not available (pip install openai)");
        return;
    }
    let sse = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hello\"}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\ndata: [DONE]\n\n";
    let up = Server::start(vec![Reply::sse(sse)]).await;
    let base = format!("{}/v1", up.url);
    let s = serve(
        &[],
        None,
        &[("OPENAI_API_KEY", FAKE_KEY), ("OPENAI_BASE_URL", &base)],
    );
    let url = format!("{}/v1", s.url);
    let script = format!("{}/tests/py/compat_clients.py", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(url)
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
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
    let o = &v["openai"];
    assert_eq!(o["retrieve"]["id"], "openai/gpt-4o-mini", "{v}");
    assert_eq!(o["retrieve"]["object"], "model");
    assert_eq!(o["retrieve_missing"], 404);
    assert_eq!(o["passthrough"], "hello");
    assert_eq!(o["stream"], "hello");
    assert_eq!(o["refused"], json!(["logprobs", "logprobs"]), "{v}");
    assert_eq!(o["mock_seed"], json!({"status": 400, "param": "seed"}));
    // What reached the upstream: every parameter, as sent.
    let bodies: Vec<Value> = up.requests().iter().map(|r| r.json()).collect();
    let full = bodies
        .iter()
        .find(|b| b.get("logit_bias").is_some())
        .unwrap_or_else(|| panic!("no passthrough body: {bodies:?}"));
    for (k, want) in [
        ("seed", json!(7)),
        ("frequency_penalty", json!(0.5)),
        ("presence_penalty", json!(0.25)),
        ("logit_bias", json!({"50256": -100})),
        ("user", json!("user-1")),
        ("parallel_tool_calls", json!(false)),
        ("service_tier", json!("default")),
        ("metadata", json!({"k": "v"})),
        ("store", json!(false)),
        ("custom_unknown", json!({"x": 1})),
    ] {
        assert_eq!(full[k], want, "{k}: {full}");
    }
    assert!(bodies.iter().any(|b| b["seed"] == 8), "stream seed");
    for (client, seed, user) in [
        ("litellm", 11, None),
        ("langchain", 13, Some("langchain-user")),
    ] {
        let c = &v[client];
        if let Some(why) = c.get("skipped") {
            eprintln!(
                "SKIP: {client} is not installed ({why}); pip install litellm langchain-openai"
            );
            continue;
        }
        assert_eq!(c["content"], "hello", "{client}: {v}");
        assert_eq!(c["stream"], "hello", "{client}: {v}");
        let b = bodies
            .iter()
            .find(|b| b["seed"] == seed)
            .unwrap_or_else(|| panic!("{client}: seed never reached the upstream: {bodies:?}"));
        if let Some(u) = user {
            assert_eq!(b["user"], u, "{client}: {b}");
        }
    }
}
