//! Hostile and broken upstreams over real HTTP on 127.0.0.1: endless
//! streams and error bodies (bounded memory, `response_too_large`, a ledger
//! row), keys echoed back at every cut, usage of streams that never finish,
//! 408/409 retries, a total timeout across retries, a JSON answer to a stream
//! request, parameter precision, and `api_key_cmd` process groups.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use llm_quorum::config::{self, Overrides};
use llm_quorum::engine::error::TimeoutPhase;
use llm_quorum::engine::ledger::{Ledger, LedgerOptions, RequestRow};
use llm_quorum::engine::{
    ChatRequest, Completion, Engine, EngineError, RunHandle, RunOptions, StreamEvent,
};
use support::{Reply, Server};

/// A made-up key, spelled in pieces so that no secret scanner takes the source for a
/// leak; the assembled value is what the tests hand to quorum and look for.
const KEY: &str = concat!("sk-", "FAKE", "HOSTILE", "7QZ9XW4K2M8P3R6T1V5Y0B");

fn engine_with(text: &str, url: &str, ledger: Option<&Path>) -> Engine {
    let text = text.replace("{A}", url);
    let env = |k: &str| (k == "TEST_KEY").then(|| KEY.to_string());
    let cfg = config::load_text(None, &text, &Overrides::default(), &env)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut ec = cfg.engine_config(&env).unwrap();
    ec.pricing = llm_quorum::engine::cost::Pricing::builtin();
    let e = Engine::new(ec).unwrap();
    match ledger {
        Some(p) => e.with_ledger(Arc::new(Ledger::open(p, LedgerOptions::default()).unwrap())),
        None => e,
    }
}

fn openai(extra: &str) -> String {
    format!(
        "[providers.p]\nkind = \"openai\"\nbase_url = \"{{A}}/v1\"\napi_key_env = \"TEST_KEY\"\n{extra}"
    )
}

fn prompt() -> ChatRequest {
    ChatRequest::from_prompt("Say something.")
}

async fn drain(h: RunHandle) -> (Vec<StreamEvent>, Completion) {
    let mut h = h;
    let mut evs = Vec::new();
    while let Some(ev) = h.recv().await {
        evs.push(ev.event);
    }
    let done = evs
        .iter()
        .rev()
        .find_map(|e| match e {
            StreamEvent::Finished(c) | StreamEvent::Failed(c) => Some((**c).clone()),
            _ => None,
        })
        .expect("a final event");
    (evs, done)
}

fn rows(path: &Path) -> Vec<RequestRow> {
    Ledger::open(path, LedgerOptions::default())
        .unwrap()
        .recent(100)
        .unwrap()
}

fn chunk(content: &str) -> String {
    let v = serde_json::json!({
        "id": "c", "object": "chat.completion.chunk", "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]
    });
    format!("data: {v}\n\n")
}

/// A server on a thread that answers every request with `head` and then
/// writes `piece` (as HTTP chunks) until the client goes away. Returns the
/// URL and a counter of connections the client closed.
fn endless(head: &'static str, piece: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let closed = Arc::new(AtomicUsize::new(0));
    let c2 = closed.clone();
    std::thread::spawn(move || {
        for sock in l.incoming() {
            let Ok(mut sock) = sock else { return };
            let piece = piece.clone();
            let c3 = c2.clone();
            std::thread::spawn(move || {
                // Read the request head (and whatever body came with it).
                let mut buf = [0u8; 65536];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = sock.write_all(head.as_bytes());
                let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
                framed.extend_from_slice(&piece);
                framed.extend_from_slice(b"\r\n");
                let big: Vec<u8> = framed.repeat((65536 / framed.len()).max(1));
                loop {
                    if sock.write_all(&big).is_err() {
                        c3.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            });
        }
    });
    (url, closed)
}

const SSE_HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
const ERR_HEAD: &str =
    "HTTP/1.1 500 Oops\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";

/// A fragment of `key` of `n` or more characters, if `text` holds one.
fn fragment(text: &str, key: &str, n: usize) -> Option<String> {
    (0..=key.len().saturating_sub(n))
        .map(|i| &key[i..i + n])
        .find(|w| text.contains(w))
        .map(str::to_string)
}

// ---------------------------------------------------------------------------
// Bounded resources

#[tokio::test]
async fn endless_stream_stops_with_response_too_large_keeps_the_text_and_writes_a_row() {
    // Setup: an upstream that streams text without end; a 1 MiB cap.
    let (url, closed) = endless(SSE_HEAD, chunk("lorem ipsum dolor sit amet ").into_bytes());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let e = engine_with(&openai("max_response_bytes = 1048576\n"), &url, Some(&db));
    // Exec
    let (_, done) = drain(e.run(prompt(), vec!["p/m".into()], RunOptions::default())).await;
    // Check: a clear error, the partial answer, a running usage, one row.
    let err = done.error.clone().expect("an error");
    assert_eq!(err.kind(), "response_too_large", "{err}");
    assert!(err.to_string().contains("1048576 bytes"), "{err}");
    assert!(done.text.starts_with("lorem ipsum"));
    assert!(done.text.len() > 100_000 && done.text.len() < 1 << 20);
    assert!(!done.usage_reported);
    assert!(done.usage.output_tokens > 10_000, "{:?}", done.usage);
    let rows = rows(&db);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].error_kind.as_deref(), Some("response_too_large"));
    assert_eq!(rows[0].output_tokens, done.usage.output_tokens);
    // The connection was dropped, not drained.
    for _ in 0..3000 {
        if closed.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(closed.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn answer_far_past_max_tokens_stops() {
    let (url, _) = endless(SSE_HEAD, chunk("word ").into_bytes());
    let e = engine_with(&openai(""), &url, None);
    let mut req = prompt();
    req.max_tokens = Some(100);
    let (_, done) = drain(e.run(req, vec!["p/m".into()], RunOptions::default())).await;
    let err = done.error.clone().expect("an error");
    assert_eq!(err.kind(), "response_too_large", "{err}");
    assert!(err.to_string().contains("max_tokens"), "{err}");
    // 4 x 100 + 256 is the cap; a few more words may have come in the last chunk.
    let words = done.text.split_whitespace().count();
    assert!((657..5000).contains(&words), "{words}");
}

#[tokio::test]
async fn endless_error_body_is_read_only_to_its_cap() {
    let (url, closed) = endless(ERR_HEAD, b"all work and no play ".to_vec());
    let e = engine_with(
        &openai("[providers.p.retry]\nmax_attempts = 1\n"),
        &url,
        None,
    );
    let (_, done) = drain(e.run(prompt(), vec!["p/m".into()], RunOptions::default())).await;
    let err = done.error.expect("an error");
    assert_eq!(err.kind(), "server");
    let msg = err.to_string();
    assert!(msg.contains("all work and no play"), "{msg}");
    assert!(msg.len() < 700, "{}", msg.len());
    for _ in 0..3000 {
        if closed.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(closed.load(Ordering::SeqCst), 1);
}

/// `quorum ask` against an endless stream: a clear error, a non-zero exit,
/// a ledger row, and a peak RSS far below the stream's size.
#[test]
#[allow(clippy::zombie_processes)] // reaped by wait4 below, for its rusage
fn quorum_ask_against_an_endless_stream_ends_bounded() {
    let (url, _) = endless(SSE_HEAD, chunk(&"endless text ".repeat(20)).into_bytes());
    let data = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_quorum"))
        .args(["ask", "-m", "openai/gpt-4o-mini", "hello"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", data.path())
        .env("QUORUM_DATA_DIR", data.path())
        .env("QUORUM_CONFIG", data.path().join("none.toml"))
        .env("OPENAI_API_KEY", KEY)
        .env("OPENAI_BASE_URL", format!("{url}/v1"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    let pid = child.id() as libc::pid_t;
    let mut err_pipe = child.stderr.unwrap();
    err_pipe.read_to_string(&mut stderr).unwrap();
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter for wait4(2).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, with valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid);
    let peak_mb = ru.ru_maxrss as f64 / 1024.0;
    eprintln!("peak RSS of quorum ask against an endless stream: {peak_mb:.1} MB");
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0);
    assert!(stderr.contains("response too large"), "{stderr}");
    assert!(!stderr.contains(KEY));
    // Bounded by the 16 MB response cap, not by the stream: the text, the final
    // completion and its ledger row each hold up to one copy, and growing a huge
    // buffer briefly holds the old one beside the new (mimalloc copies where
    // glibc's realloc remaps: 111 MB here against glibc's 91 MB).
    let cap_mb = (llm_quorum::engine::provider::http::MAX_RESPONSE_BYTES >> 20) as f64;
    assert!(peak_mb < 8.0 * cap_mb, "{peak_mb} MB");
    let db = data.path().join(llm_quorum::engine::ledger::LEDGER_FILE);
    let rows = rows(&db);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].error_kind.as_deref(), Some("response_too_large"));
    assert_eq!(rows[0].cost_source, "estimated");
    assert!(rows[0].output_tokens > 100_000, "{}", rows[0].output_tokens);
}

// ---------------------------------------------------------------------------
// Secrets at every cut

#[tokio::test]
async fn a_key_straddling_every_cut_never_leaks() {
    // 600 is where a provider message is clipped, 1024 the error body read cap.
    let mut bodies = Vec::new();
    for off in 0..=KEY.len() + 1 {
        let pad = "x ".repeat(300);
        let msg = format!("{}{KEY} tail", &pad[..600 - off.min(600)]);
        bodies.push(serde_json::json!({"error": {"message": msg}}).to_string());
        let raw = format!(
            "{}{KEY} tail {}",
            &"y ".repeat(512)[..1024 - off],
            "z".repeat(2000)
        );
        bodies.push(raw);
    }
    let n = bodies.len();
    let bodies = Arc::new(bodies);
    let b2 = bodies.clone();
    let server = Server::start_with(move |i| Reply::json(400, b2[i % n].clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let e = engine_with(
        &openai("max_error_body_bytes = 1024\n"),
        &server.url,
        Some(&db),
    );
    for i in 0..n {
        let (_, done) = drain(e.run(prompt(), vec!["p/m".into()], RunOptions::default())).await;
        let err = done.error.clone().expect("an error");
        let shown = format!("{err} {} {:?}", serde_json::to_string(&done).unwrap(), done);
        assert!(
            fragment(&shown, KEY, 6).is_none(),
            "case {i}: {:?} in {shown}",
            fragment(&shown, KEY, 6)
        );
    }
    for r in rows(&db) {
        let m = r.error_message.unwrap_or_default();
        assert!(fragment(&m, KEY, 6).is_none(), "{m}");
    }
}

#[tokio::test]
async fn a_key_echoed_in_stream_fields_is_masked_and_plain_headers_are_not() {
    let fin = serde_json::json!({
        "id": "c", "object": "chat.completion.chunk", "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": format!("stop {KEY}")}]
    });
    let body = format!(
        "{}{}data: {fin}\n\ndata: [DONE]\n\n",
        chunk("Hi "),
        chunk(KEY)
    );
    let server = Server::start(vec![Reply::sse(body)]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let text = openai("[providers.p.headers]\nx-title = \"malformed\"\n");
    let e = engine_with(&text, &server.url, Some(&db));
    let (_, done) = drain(e.run(prompt(), vec!["p/m".into()], RunOptions::default())).await;
    assert!(done.error.is_none(), "{:?}", done.error);
    assert_eq!(done.raw_finish_reason, "stop ***");
    assert_eq!(done.text, "Hi ***");
    let row = &rows(&db)[0];
    assert_eq!(row.raw_finish_reason.as_deref(), Some("stop ***"));
    // A plain header value is no secret: an error quoting it stays readable.
    let server = Server::start(vec![Reply::json(
        400,
        r#"{"error":{"message":"header x-title is malformed"}}"#,
    )])
    .await;
    let e = engine_with(&text, &server.url, None);
    let (_, done) = drain(e.run(prompt(), vec!["p/m".into()], RunOptions::default())).await;
    assert!(
        done.error.unwrap().to_string().contains("is malformed"),
        "a plain header value was masked"
    );
}

#[tokio::test]
async fn a_malformed_frame_quoting_the_key_at_the_snippet_cut_never_leaks() {
    for off in 0..=KEY.len() {
        let frame = format!("data: {{{}{KEY} broken\n\n", "a".repeat(119 - off.min(119)));
        let server = Server::start(vec![Reply::sse(frame)]).await;
        let e = engine_with(
            &openai("[providers.p.retry]\nmax_attempts = 1\n"),
            &server.url,
            None,
        );
        let (_, done) = drain(e.run(prompt(), vec!["p/m".into()], RunOptions::default())).await;
        let msg = done.error.expect("an error").to_string();
        assert!(fragment(&msg, KEY, 6).is_none(), "offset {off}: {msg}");
    }
}

// ---------------------------------------------------------------------------
// Usage for every ending

fn anthropic_start() -> String {
    let start = serde_json::json!({"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
        "content": [], "stop_reason": null,
        "usage": {"input_tokens": 12, "output_tokens": 1}}});
    let block = serde_json::json!({"type": "content_block_start", "index": 0,
        "content_block": {"type": "text", "text": ""}});
    format!("event: message_start\ndata: {start}\n\nevent: content_block_start\ndata: {block}\n\n")
}

fn anthropic_text(t: &str) -> String {
    let d = serde_json::json!({"type": "content_block_delta", "index": 0,
        "delta": {"type": "text_delta", "text": t}});
    format!("event: content_block_delta\ndata: {d}\n\n")
}

#[tokio::test]
async fn a_cancelled_anthropic_stream_records_its_running_output_estimated() {
    let mut body = anthropic_start();
    for _ in 0..40 {
        body.push_str(&anthropic_text("The quick brown fox jumps. "));
    }
    let mut reply = Reply::new(200, "text/event-stream", body);
    reply.stall = Duration::from_secs(120);
    let server = Server::start(vec![reply]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let text = "[providers.anthropic]\nbase_url = \"{A}\"\napi_key_env = \"TEST_KEY\"\n";
    let e = engine_with(text, &server.url, Some(&db));
    let mut h = e.run(
        prompt(),
        vec!["anthropic/claude-haiku-4-5".into()],
        RunOptions::default(),
    );
    // Exec: cancel once all the text has arrived (the server then stalls).
    let mut texts = 0;
    let mut usage_outs = Vec::new();
    let mut done = None;
    while let Some(ev) = h.recv().await {
        match ev.event {
            StreamEvent::TextDelta(_) => {
                texts += 1;
                if texts == 40 {
                    h.cancel();
                }
            }
            StreamEvent::Usage(u) => usage_outs.push(u.output_tokens),
            StreamEvent::Failed(c) | StreamEvent::Finished(c) => done = Some(*c),
            _ => {}
        }
    }
    let done = done.unwrap();
    // Check: cancelled, the running count (never the provisional 1), estimated.
    assert_eq!(done.error, Some(EngineError::Cancelled));
    assert!(!usage_outs.contains(&1), "{usage_outs:?}");
    assert!(
        usage_outs.windows(2).all(|w| w[0] <= w[1]),
        "{usage_outs:?}"
    );
    assert!(*usage_outs.last().unwrap() > 100, "{usage_outs:?}");
    let row = &rows(&db)[0];
    assert_eq!(row.status, "cancelled");
    assert!(row.output_tokens > 100, "{}", row.output_tokens);
    assert_eq!(row.output_tokens, done.usage.output_tokens);
    assert_eq!(row.input_tokens, 12);
    assert!(!row.usage_reported);
    assert_eq!(row.cost_source, "estimated");
    assert!(row.cost_usd.unwrap() > 0.0);
}

#[tokio::test]
async fn an_empty_answer_without_usage_counts_its_input() {
    let fin = serde_json::json!({"id": "c", "object": "chat.completion.chunk", "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    let server = Server::start(vec![Reply::sse(format!("data: {fin}\n\ndata: [DONE]\n\n"))]).await;
    let text = "[providers.openai]\nbase_url = \"{A}/v1\"\napi_key_env = \"TEST_KEY\"\n";
    let e = engine_with(text, &server.url, None);
    let (_, done) = drain(e.run(
        prompt(),
        vec!["openai/gpt-4o-mini".into()],
        RunOptions::default(),
    ))
    .await;
    assert!(done.error.is_none());
    assert!(done.usage.input_tokens > 0);
    assert_eq!(done.cost_source.as_str(), "estimated");
    assert!(done.cost_usd.is_some());
}

/// Every recorded stream, cut at several points over HTTP: the usage
/// recorded for the cut never exceeds what the whole stream reports.
#[tokio::test]
async fn reported_usage_bounds_the_estimate_of_every_cut_fixture() {
    let mut checked = 0;
    for dir in ["openai", "anthropic", "gemini", "ollama", "openrouter"] {
        for case in support::cases(dir) {
            if case.meta["streaming"] != true || case.meta["format"] == "json-array-stream" {
                continue;
            }
            let kind = dir;
            let base = match kind {
                "openai" => "{A}/v1",
                "openrouter" => "{A}/api/v1",
                _ => "{A}",
            };
            let text = format!(
                "[providers.t]\nkind = \"{kind}\"\nbase_url = \"{base}\"\napi_key_env = \"TEST_KEY\"\n[providers.t.retry]\nmax_attempts = 1\n"
            );
            let model = case.meta["request_model"]
                .as_str()
                .unwrap_or("m")
                .to_string();
            let target = format!("t/{model}");
            // The whole stream.
            let full = Server::start(vec![support::reply_for(&case)]).await;
            let e = engine_with(&text, &full.url, None);
            let (_, whole) =
                drain(e.run(prompt(), vec![target.clone()], RunOptions::default())).await;
            if !whole.usage_reported {
                continue;
            }
            let reported = whole.usage.output_tokens;
            let len = case.body.len();
            for cut in [len / 4, len / 2, len * 3 / 4, len.saturating_sub(20)] {
                let mut r = support::reply_for(&case);
                r.cut_after = Some(cut);
                let server = Server::start(vec![r]).await;
                let e = engine_with(&text, &server.url, None);
                let (_, c) =
                    drain(e.run(prompt(), vec![target.clone()], RunOptions::default())).await;
                let est = c.usage.output_tokens;
                assert!(
                    est <= reported,
                    "{}: cut at {cut}: estimated {est} > reported {reported}",
                    case.id
                );
                checked += 1;
            }
        }
    }
    if support::fixtures_dir().is_some() {
        assert!(checked > 40, "{checked}");
    }
}

// ---------------------------------------------------------------------------
// Timeouts and retries

fn ok_stream() -> Reply {
    let fin = serde_json::json!({"id": "c", "object": "chat.completion.chunk", "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    Reply::sse(format!("{}data: {fin}\n\ndata: [DONE]\n\n", chunk("Hello")))
}

#[tokio::test]
async fn request_timeout_408_and_conflict_409_are_retried() {
    for status in [408u16, 409] {
        let server = Server::start(vec![
            Reply::json(status, r#"{"error":{"message":"try again"}}"#),
            ok_stream(),
        ])
        .await;
        let e = engine_with(
            &openai("[providers.p.retry]\nbase_delay_ms = 1\n"),
            &server.url,
            None,
        );
        let (ev, done) = drain(e.run(prompt(), vec!["p/m".into()], RunOptions::default())).await;
        assert!(done.error.is_none(), "{status}: {:?}", done.error);
        assert_eq!(done.text, "Hello");
        assert_eq!(done.retries, 1);
        assert_eq!(server.count(), 2);
        let reason = ev
            .iter()
            .find_map(|e| match e {
                StreamEvent::Retrying { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .unwrap();
        assert!(reason.starts_with(&status.to_string()), "{reason}");
    }
}

#[tokio::test]
async fn total_timeout_spans_attempts_and_backoff() {
    // Every attempt would wait 10 s for headers; 5 attempts of 3 s each
    // would take 15 s. The total of 3 s ends the request.
    let mut slow = Reply::json(500, "{}");
    slow.delay = Duration::from_secs(10);
    let server = Server::start(vec![slow]).await;
    let e = engine_with(
        &openai("[providers.p.timeouts]\ntotal_secs = 3\nfirst_token_secs = 60\n[providers.p.retry]\nmax_attempts = 5\nbase_delay_ms = 1\n"),
        &server.url,
        None,
    );
    let t = tokio::time::Instant::now();
    let (_, done) = drain(e.run(prompt(), vec!["p/m".into()], RunOptions::default())).await;
    let took = t.elapsed();
    let err = done.error.expect("an error");
    assert_eq!(
        err,
        EngineError::Timeout {
            phase: TimeoutPhase::Total,
            after: Duration::from_secs(3)
        }
    );
    assert!(err.to_string().contains("total"), "{err}");
    assert!(took >= Duration::from_millis(2900), "{took:?}");
    assert!(took < Duration::from_secs(12), "{took:?}");
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn a_backoff_past_the_total_ends_the_request_at_once() {
    let server = Server::start(vec![Reply::json(503, "{}").header("retry-after", "30")]).await;
    let e = engine_with(
        &openai("[providers.p.timeouts]\ntotal_secs = 20\n[providers.p.retry]\nmax_attempts = 3\nmax_wait_secs = 60\n"),
        &server.url,
        None,
    );
    let t = tokio::time::Instant::now();
    let (_, done) = drain(e.run(prompt(), vec!["p/m".into()], RunOptions::default())).await;
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    // The error that asked for the wait, not a timeout that never ran.
    assert_eq!(done.error.unwrap().kind(), "overloaded");
    assert_eq!(server.count(), 1);
}

// ---------------------------------------------------------------------------
// Valid surprises

#[tokio::test]
async fn a_json_answer_to_a_stream_request_is_read_whole() {
    let whole = serde_json::json!({
        "id": "x", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Whole answer"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    })
    .to_string();
    // Named as JSON, and mislabelled as an event stream.
    for ct in ["application/json", "text/event-stream"] {
        let server = Server::start(vec![Reply::new(200, ct, whole.clone())]).await;
        let e = engine_with(&openai(""), &server.url, None);
        let (_, done) = drain(e.run(prompt(), vec!["p/m".into()], RunOptions::default())).await;
        assert!(done.error.is_none(), "{ct}: {:?}", done.error);
        assert_eq!(done.text, "Whole answer");
        assert_eq!(done.usage.output_tokens, 2);
        assert_eq!(server.count(), 1, "no retry");
        assert!(server.requests()[0].json()["stream"] == true);
    }
}

#[tokio::test]
async fn parameters_keep_the_users_precision() {
    let body = format!(
        "{}event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n",
        anthropic_start()
    );
    let server = Server::start(vec![Reply::sse(body)]).await;
    let text = "[providers.anthropic]\nbase_url = \"{A}\"\napi_key_env = \"TEST_KEY\"\n";
    let e = engine_with(text, &server.url, None);
    let mut req = prompt();
    req.temperature = Some(0.3);
    req.top_p = Some(0.9);
    let _ = drain(e.run(
        req,
        vec!["anthropic/claude-haiku-4-5".into()],
        RunOptions::default(),
    ))
    .await;
    let raw = String::from_utf8(server.requests()[0].body.clone()).unwrap();
    assert!(raw.contains("\"temperature\":0.3"), "{raw}");
    assert!(raw.contains("\"top_p\":0.9"), "{raw}");
}

// ---------------------------------------------------------------------------
// api_key_cmd

#[test]
fn a_key_command_leaving_a_background_child_does_not_stall() {
    let t = std::time::Instant::now();
    let key = config::run_key_cmd("p", "echo sk-from-cmd-123456; sleep 120 &").unwrap();
    assert_eq!(key.expose(), "sk-from-cmd-123456");
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
}

#[test]
fn a_key_command_past_its_limit_is_killed_with_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let cmd = format!("sleep 300 & echo $! > {}; sleep 300", pidfile.display());
    let err = config::run_key_cmd_within("p", &cmd, Duration::from_millis(500)).unwrap_err();
    assert!(err.to_string().contains("did not finish"), "{err}");
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The background sleep is gone (or a zombie awaiting its reaper).
    let mut gone = false;
    for _ in 0..3000 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => gone = true,
            Ok(s) => {
                gone = s
                    .rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            }
        }
        if gone {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(gone, "background child {pid} survived");
}

// ---------------------------------------------------------------------------
// Masking before every cut, exhaustively and as a property

mod masking {
    use base64::Engine as _;
    use llm_quorum::engine::provider::mask::Masker;
    use llm_quorum::engine::EngineError;
    use proptest::prelude::*;

    const ENCODINGS: usize = 5;

    fn encode(key: &str, enc: usize) -> String {
        match enc {
            0 => key.to_string(),
            1 => {
                let j = serde_json::to_string(key).unwrap();
                j[1..j.len() - 1].to_string()
            }
            2 => key.replace('/', "\\/"),
            3 => key
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect(),
            _ => base64::engine::general_purpose::STANDARD.encode(format!("user:{key}")),
        }
    }

    /// The secret part of an encoded form (base64 of `user:key` starts with
    /// the encoding of `user:`, which is no secret).
    fn secret_part(form: &str, enc: usize) -> &str {
        if enc == 4 {
            &form[8..]
        } else {
            form
        }
    }

    fn leak(shown: &str, key: &str, form: &str, enc: usize) -> Option<String> {
        let plain = super::fragment(shown, key, 6);
        let part = secret_part(form, enc);
        plain.or_else(|| super::fragment(shown, part, 8.min(part.len())))
    }

    /// Put the encoded key so it starts `off` bytes before `cut` (of the raw
    /// body for the read cap, of the message for the clip), and classify.
    fn shown(key: &str, enc: usize, json: bool, read_cut: bool, off: usize) -> (String, String) {
        let form = encode(key, enc);
        let prefix = r#"{"error":{"message":""#.len();
        let cut = if read_cut { 1024 } else { 600 };
        let at = if json && read_cut { cut - prefix } else { cut };
        let pad = "x ".repeat(600);
        let msg = format!(
            "{}{form} tail {}",
            &pad[..at.saturating_sub(off)],
            "y".repeat(1500)
        );
        let body = if json {
            serde_json::json!({"error": {"message": msg}}).to_string()
        } else {
            msg
        };
        let b = body.as_bytes();
        let (bytes, truncated) = if read_cut && b.len() > cut {
            (&b[..cut], true)
        } else {
            (b, false)
        };
        let e = EngineError::from_http_masked(
            400,
            &reqwest::header::HeaderMap::new(),
            bytes,
            truncated,
            &Masker::new([key]),
        );
        (format!("{e} {e:?}"), form)
    }

    #[test]
    fn a_key_at_every_offset_around_every_cut_in_every_encoding() {
        for key in [
            concat!("sk-", "FAKE", "QZ7W4K2M8P3R6T1V5Y0B9N"),
            "AZ/+B9Q7-W_4K2M8P/3R6T1+V5Y",
            "GEMINIKEY0123456789ABCDEFGH",
        ] {
            for enc in 0..ENCODINGS {
                let len = encode(key, enc).len();
                for json in [false, true] {
                    for read_cut in [false, true] {
                        for off in 0..=len + 2 {
                            let (shown, form) = shown(key, enc, json, read_cut, off);
                            assert!(
                                leak(&shown, key, &form, enc).is_none(),
                                "key {key} enc {enc} json {json} read_cut {read_cut} off {off}: {shown}"
                            );
                        }
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn no_fragment_of_a_key_survives_a_cut(
            key in "[A-Z0-9/+_-]{16,48}",
            enc in 0..ENCODINGS,
            json in any::<bool>(),
            read_cut in any::<bool>(),
            off in 0usize..160,
        ) {
            let len = encode(&key, enc).len();
            let off = off % (len + 3);
            let (shown, form) = shown(&key, enc, json, read_cut, off);
            prop_assert!(leak(&shown, &key, &form, enc).is_none(), "{}", shown);
        }
    }
}

// ---------------------------------------------------------------------------
// Reported >= estimated at every ending of every recorded stream

#[test]
fn every_prefix_of_every_recorded_stream_estimates_at_most_the_reported_output() {
    use llm_quorum::engine::event::{Accumulator, Delta};
    use llm_quorum::engine::provider::{stream_decoder, ProviderKind};
    use llm_quorum::engine::wire::{NdjsonDecoder, SseDecoder};
    let mut checked = 0;
    for dir in ["openai", "anthropic", "gemini", "ollama", "openrouter"] {
        let kind: ProviderKind = serde_json::from_value(serde_json::json!(dir)).unwrap();
        for case in support::cases(dir) {
            let format = case.meta["format"].as_str().unwrap_or("");
            if !matches!(format, "sse" | "ndjson") {
                continue;
            }
            let mut dec = stream_decoder(kind);
            let mut deltas: Vec<Delta> = Vec::new();
            let r: Result<(), EngineError> = if format == "sse" {
                let mut sse = SseDecoder::new();
                sse.feed(&case.body, |f| dec.frame(f.event, f.data, &mut deltas))
                    .and_then(|()| sse.finish(|f| dec.frame(f.event, f.data, &mut deltas)))
            } else {
                let mut nd = NdjsonDecoder::new();
                nd.feed(&case.body, |l| dec.frame("", l, &mut deltas))
                    .and_then(|()| nd.finish(|l| dec.frame("", l, &mut deltas)))
            };
            if r.is_err() {
                continue; // an error case: no final report to compare with
            }
            let _ = dec.end(&mut deltas);
            let mut all = Accumulator::default();
            for d in &deltas {
                all.push(d);
            }
            let whole = all.finish();
            if !whole.usage_reported {
                continue;
            }
            let reported = whole.usage.output_tokens;
            for k in 0..=deltas.len() {
                let mut acc = Accumulator::default();
                for d in &deltas[..k] {
                    acc.push(d);
                }
                let running = acc.running_output_tokens();
                let est = acc.finish_unfinished().usage.output_tokens;
                assert_eq!(running, est);
                assert!(
                    est <= reported,
                    "{}: after {k} of {} deltas: estimated {est} > reported {reported}",
                    case.id,
                    deltas.len()
                );
                checked += 1;
            }
        }
    }
    if support::fixtures_dir().is_some() {
        assert!(checked > 500, "{checked}");
    }
}
