//! `--hold-under-load`: while accepted connections wait for the server, a
//! stream already under way holds its next frame, and goes on, losing
//! nothing, when the backlog is gone or the hold is over. Driven in-process
//! (the backlog is the server's own count, raised here by hand), streaming
//! from a scripted OpenAI upstream on 127.0.0.1.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use http_body_util::BodyExt;
use llm_quorum::serve::listener::Limits;
use llm_quorum::serve::openai_compat;
use llm_quorum::serve::{AppState, ServeOptions};
use serde_json::json;

/// The server's state, its OpenAI provider at `upstream`.
fn state(hold: Duration, upstream: &str) -> (Arc<AppState>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let base = format!("{upstream}/v1");
    let env = [
        ("OPENAI_BASE_URL", base.as_str()),
        ("OPENAI_API_KEY", "sk-test-0123456789abcdef"),
    ];
    let opts = ServeOptions {
        limits: Limits {
            hold_under_load: hold,
            ..Limits::default()
        },
        ..ServeOptions::default()
    };
    (support::app::app_state(dir.path(), &env, opts), dir)
}

/// A streamed chat completion's body.
async fn stream(state: &Arc<AppState>, model: &str) -> Body {
    let body = json!({
        "model": model,
        "stream": true,
        "messages": [{"role": "user", "content": "Write a few sentences about rivers."}],
    });
    let resp = openai_compat::chat_completions(
        State(state.clone()),
        HeaderMap::new(),
        Body::from(body.to_string()),
    )
    .await;
    assert_eq!(resp.status(), 200);
    resp.into_body()
}

/// The next data frame of `body` (`None` at its end), waiting at most `within`.
async fn frame(body: &mut Body, within: Duration) -> Result<Option<String>, ()> {
    loop {
        match tokio::time::timeout(within, body.frame()).await {
            Err(_) => return Err(()),
            Ok(None) => return Ok(None),
            Ok(Some(f)) => {
                if let Ok(d) = f.unwrap().into_data() {
                    return Ok(Some(String::from_utf8(d.to_vec()).unwrap()));
                }
            }
        }
    }
}

const LONG: Duration = Duration::from_secs(60);

/// An OpenAI stream of `n` one-word chunks, sent 40 bytes every 10 ms.
fn upstream_reply(n: usize) -> support::Reply {
    let mut body = String::new();
    for i in 0..n {
        let c = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": format!("w{i} ")}, "finish_reason": null}]});
        body.push_str(&format!("data: {c}\n\n"));
    }
    let end = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    body.push_str(&format!("data: {end}\n\ndata: [DONE]\n\n"));
    support::Reply::sse(body).chunked(40, Duration::from_millis(10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_holds_while_connections_wait_and_goes_on_when_they_are_served() {
    let up = support::Server::start(vec![upstream_reply(60)]).await;
    // A hold longer than the test: only the backlog's end releases the stream.
    let (state, _dir) = state(Duration::from_secs(3600), &up.url);
    let mut body = stream(&state, "openai/gpt-4o-mini").await;
    let first = frame(&mut body, LONG).await.unwrap().unwrap();
    assert!(first.contains("\"role\":\"assistant\""), "{first}");
    // A connection is accepted and waits for the runtime.
    let waiting = state.pace.arrived();
    // Nothing goes out while it waits, though the upstream goes on sending.
    assert!(
        frame(&mut body, Duration::from_millis(600)).await.is_err(),
        "a frame went out while a connection waited"
    );
    drop(waiting);
    // Nothing was lost.
    let text = content(&first) + &words(&mut body).await;
    assert_eq!(text, want(60));
    // And /metrics tells the operator.
    let m = state.metrics.render(&state.engine, &state.pace);
    assert!(m.contains("quorum_stream_frames_held_total 1\n"), "{m}");
}

fn want(n: usize) -> String {
    (0..n).map(|i| format!("w{i} ")).collect()
}

/// The text of a frame's chunks.
fn content(frame: &str) -> String {
    let mut text = String::new();
    for l in frame.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
            if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                text.push_str(t);
            }
        }
    }
    text
}

/// The text of the rest of a streamed body.
async fn words(body: &mut Body) -> String {
    let mut text = String::new();
    while let Some(f) = frame(body, LONG).await.unwrap() {
        text.push_str(&content(&f));
    }
    text
}

/// A whole stream while a connection waits for as long as it lasts: every
/// word arrives (within `LONG` per frame).
async fn streams_whole_under_a_lasting_backlog(hold: Duration) {
    let up = support::Server::start(vec![upstream_reply(60)]).await;
    let (state, _dir) = state(hold, &up.url);
    let _waiting = state.pace.arrived();
    let mut body = stream(&state, "openai/gpt-4o-mini").await;
    assert_eq!(words(&mut body).await, want(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_hold_a_backlog_holds_nothing() {
    streams_whole_under_a_lasting_backlog(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_ends_on_its_own_however_long_the_backlog() {
    streams_whole_under_a_lasting_backlog(Duration::from_millis(50)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_stream_holds_too_once_its_content_flows() {
    let up = support::Server::start(vec![upstream_reply(60)]).await;
    let (state, _dir) = state(Duration::from_secs(3600), &up.url);
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": "llm.stream",
        "params": {"model": "openai/gpt-4o-mini", "prompt": "Rivers?"}});
    let resp = llm_quorum::serve::rpc::handle(
        State(state.clone()),
        HeaderMap::new(),
        Body::from(req.to_string()),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // Frames before the first text ("run", "started") are never held.
    let mut seen = String::new();
    while !seen.contains("event: text\n") {
        seen.push_str(&frame(&mut body, LONG).await.unwrap().unwrap());
    }
    let waiting = state.pace.arrived();
    assert!(
        frame(&mut body, Duration::from_millis(600)).await.is_err(),
        "a frame went out while a connection waited"
    );
    drop(waiting);
    while let Some(f) = frame(&mut body, LONG).await.unwrap() {
        seen.push_str(&f);
    }
    let text: String = seen
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("event: text\ndata: "))
        .map(|d| {
            serde_json::from_str::<serde_json::Value>(d).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(text, want(60));
    assert!(seen.contains("event: result\n"), "{seen}");
}
