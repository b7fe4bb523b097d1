//! Anthropic Messages conformance: every recorded case in
//! `../shared/fixtures/anthropic` is served over real HTTP and run through
//! the engine's `Attempt`, and the result is checked field by field against
//! the case's `expected` facts. Hand-written scenarios (errors, cuts, future
//! events) live in `tests/fixtures/anthropic`.

mod support;

use std::time::Duration;

use llm_quorum::engine::event::{Accumulator, Completion, Delta, FinishReason};
use llm_quorum::engine::provider::anthropic;
use llm_quorum::engine::provider::http::{build_client, Attempt, CallContext, Timeouts};
use llm_quorum::engine::provider::{ProviderKind, ProviderSpec, Secret, StreamDecoder};
use llm_quorum::engine::request::{ChatRequest, Message, Reasoning, Tool};
use llm_quorum::engine::wire::SseDecoder;
use llm_quorum::engine::EngineError;
use serde_json::{json, Value};
use support::{Case, Reply, Server};

const KEY: &str = "sk-ant-conformance-test";

fn spec(url: &str) -> ProviderSpec {
    let mut s = ProviderSpec::new("anthropic", ProviderKind::Anthropic);
    s.base_url = url.to_string();
    s.api_key = Some(Secret::new(KEY));
    s
}

/// The request of a case, shaped by its recorded parameters (limits, stop
/// sequences, thinking budget, tool names) so the request we send resembles
/// the recorded one.
fn request_for(case: &Case) -> ChatRequest {
    let p = &case.meta["request_params"];
    let mut req = ChatRequest {
        messages: vec![
            Message::system("You are a conformance test."),
            Message::user("Hello"),
        ],
        ..Default::default()
    };
    req.max_tokens = p["max_tokens"].as_u64().map(|n| n as u32);
    req.temperature = p["temperature"].as_f64().map(|t| t as f32);
    if let Some(stops) = p["stop_sequences"].as_array() {
        req.stop = stops
            .iter()
            .filter_map(|s| s.as_str().map(String::from))
            .collect();
    }
    if let Some(b) = p["thinking"]["budget_tokens"].as_u64() {
        req.reasoning = Some(Reasoning::Budget(b as u32));
    }
    if let Some(tools) = p["tools"].as_array() {
        req.tools = tools
            .iter()
            .filter_map(|t| t.as_str())
            .map(|name| Tool {
                name: name.to_string(),
                description: format!("{name} (conformance stub)"),
                parameters: json!({"type": "object", "properties": {}}),
            })
            .collect();
    }
    req
}

/// Drain an attempt: the deltas folded, plus the first error if any.
async fn drain(attempt: &mut Attempt) -> (Completion, Option<EngineError>, Vec<Delta>) {
    let mut acc = Accumulator::default();
    let mut deltas = Vec::new();
    let mut err = None;
    while let Some(item) = attempt.next().await {
        match item {
            Ok(d) => {
                acc.push(&d);
                deltas.push(d);
            }
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    (acc.finish(), err, deltas)
}

fn normalised(raw: &str) -> FinishReason {
    match raw {
        "end_turn" | "stop_sequence" | "pause_turn" => FinishReason::Stop,
        "max_tokens" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        other => panic!("fixture has a stop_reason this test does not know: {other}"),
    }
}

/// Compare a completion with a case's `expected`; push one line per mismatch.
fn check(case: &Case, got: &Completion, bad: &mut Vec<String>) {
    let id = &case.id;
    let exp = &case.meta["expected"];
    let mut fail = |what: &str, want: String, got: String| {
        bad.push(format!("{id}: {what}: expected {want}, got {got}"));
    };

    let want_text = exp["text"].as_str().unwrap_or("");
    if got.text != want_text {
        fail("text", format!("{want_text:?}"), format!("{:?}", got.text));
    }
    let want_thinking = exp["thinking"].as_str().unwrap_or("");
    if got.thinking != want_thinking {
        fail(
            "thinking",
            format!("{want_thinking:?}"),
            format!("{:?}", got.thinking),
        );
    }

    // Only client tool calls (block_type tool_use) reach the caller;
    // server_tool_use blocks ran at Anthropic and are not ours to execute.
    let want_calls: Vec<&Value> = exp["tool_calls"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|c| c["block_type"].as_str() == Some("tool_use"))
                .collect()
        })
        .unwrap_or_default();
    if got.tool_calls.len() != want_calls.len() {
        fail(
            "tool call count",
            want_calls.len().to_string(),
            format!("{} ({:?})", got.tool_calls.len(), got.tool_calls),
        );
    }
    for (i, (g, w)) in got.tool_calls.iter().zip(&want_calls).enumerate() {
        if g.id != w["id"].as_str().unwrap_or("") {
            fail(
                &format!("tool_calls[{i}].id"),
                w["id"].to_string(),
                g.id.clone(),
            );
        }
        if g.name != w["name"].as_str().unwrap_or("") {
            fail(
                &format!("tool_calls[{i}].name"),
                w["name"].to_string(),
                g.name.clone(),
            );
        }
        if g.arguments_json() != w["input"] {
            fail(
                &format!("tool_calls[{i}].arguments"),
                w["input"].to_string(),
                g.arguments.clone(),
            );
        }
        if let Some(raw) = w["input_json_concatenated"].as_str() {
            if g.arguments != raw {
                fail(
                    &format!("tool_calls[{i}].raw arguments"),
                    format!("{raw:?}"),
                    format!("{:?}", g.arguments),
                );
            }
        }
    }

    let raw = exp["stop_reason"].as_str().unwrap_or("");
    if got.raw_finish_reason != raw {
        fail(
            "raw stop_reason",
            raw.to_string(),
            got.raw_finish_reason.clone(),
        );
    }
    if !raw.is_empty() && got.finish_reason != normalised(raw) {
        fail(
            "finish_reason",
            normalised(raw).to_string(),
            got.finish_reason.to_string(),
        );
    }

    let u = &exp["usage"];
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    let want_input =
        n("input_tokens") + n("cache_read_input_tokens") + n("cache_creation_input_tokens");
    if !got.usage_reported {
        fail("usage", "a usage report".into(), "none".into());
    }
    for (what, want, have) in [
        ("usage.input_tokens", want_input, got.usage.input_tokens),
        (
            "usage.output_tokens",
            n("output_tokens"),
            got.usage.output_tokens,
        ),
        (
            "usage.cached_input_tokens",
            n("cache_read_input_tokens"),
            got.usage.cached_input_tokens,
        ),
        (
            "usage.cache_creation_input_tokens",
            n("cache_creation_input_tokens"),
            got.usage.cache_creation_input_tokens,
        ),
    ] {
        if want != have {
            fail(what, want.to_string(), have.to_string());
        }
    }
}

#[tokio::test]
async fn recorded_cases_over_http() {
    let cases = support::cases("anthropic");
    if cases.is_empty() {
        return; // support already said why
    }
    let client = build_client(Duration::from_secs(5)).unwrap();
    let mut bad = Vec::new();
    for case in &cases {
        let streaming = case.meta["streaming"].as_bool().unwrap_or(false);
        let server = Server::start(vec![support::reply_for(case)]).await;
        let req = request_for(case);
        let model = case.meta["request_model"].as_str().unwrap_or("claude-test");
        let mut attempt = match Attempt::start(
            &client,
            &spec(&server.url),
            model,
            &req,
            streaming,
            Timeouts::default(),
            &CallContext::default(),
        )
        .await
        {
            Ok(a) => a,
            Err(e) => {
                bad.push(format!("{}: start failed: {e}", case.id));
                continue;
            }
        };
        let (got, err, _) = drain(&mut attempt).await;
        if let Some(e) = err {
            bad.push(format!("{}: stream error: {e}", case.id));
        }
        check(case, &got, &mut bad);

        // What the server saw.
        let seen = server.requests();
        if seen.len() != 1 {
            bad.push(format!("{}: {} requests seen", case.id, seen.len()));
            continue;
        }
        let s = &seen[0];
        let body = s.json();
        let mut fail = |what: &str| bad.push(format!("{}: request: {what}", case.id));
        if s.method != "POST" || s.path != "/v1/messages" {
            fail(&format!("{} {}", s.method, s.path));
        }
        if s.header("x-api-key") != Some(KEY) {
            fail("x-api-key missing or wrong");
        }
        if s.header("authorization").is_some() {
            fail("an Authorization header was sent");
        }
        if s.header("anthropic-version") != Some("2023-06-01") {
            fail("anthropic-version missing or wrong");
        }
        if !body["max_tokens"].is_u64() {
            fail("max_tokens missing");
        }
        if let Some(b) = body["thinking"]["budget_tokens"].as_u64() {
            if body["max_tokens"].as_u64().unwrap_or(0) <= b {
                fail("max_tokens does not exceed budget_tokens");
            }
            if body.get("temperature").is_some() {
                fail("temperature sent with thinking");
            }
        }
        if body["system"] != "You are a conformance test." {
            fail(&format!("system not top-level: {}", body["system"]));
        }
        if body["messages"]
            .as_array()
            .is_none_or(|m| m.iter().any(|m| m["role"] == "system"))
        {
            fail("a system role inside messages");
        }
        if body["model"] != model {
            fail("model");
        }
        if (body["stream"] == true) != streaming {
            fail(&format!(
                "stream flag {} for streaming={streaming}",
                body["stream"]
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} mismatches over {} cases:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
}

/// Decode an SSE body delivered in the given pieces, with our own decoder.
fn decode_pieces(pieces: &[&[u8]]) -> Result<(Vec<Delta>, bool), EngineError> {
    let mut sse = SseDecoder::new();
    let mut dec = anthropic::Decoder::default();
    let mut out = Vec::new();
    for p in pieces {
        sse.feed(p, |f| dec.frame(f.event, f.data, &mut out))?;
    }
    sse.finish(|f| dec.frame(f.event, f.data, &mut out))?;
    dec.end(&mut out)?;
    Ok((out, dec.is_done()))
}

/// Bodies up to this size are split at every offset and decoded whole each
/// time. That is quadratic, so larger ones are split at every offset of each
/// event, decoded within a window of its neighbouring events (the decoders'
/// state from outside the window is the same either way).
const FULL_SPLIT_MAX: usize = 8 * 1024;

/// Offsets `0..=len` of an event to split at: all of them, except strictly
/// inside long runs of base64 characters (thinking signatures, encrypted
/// search results), where one offset in 61 is kept. No line end, field
/// separator or multi-byte character can fall inside such a run, so every
/// split there takes the same path through the decoders, and a 30 KB
/// search-result event would otherwise cost its size squared.
fn split_points(event: &[u8]) -> Vec<usize> {
    const RUN: usize = 32;
    let b64 = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=');
    // run[i]: length of the base64 run containing byte i (0 if not base64).
    let mut run = vec![0usize; event.len()];
    let mut i = 0;
    while i < event.len() {
        if !b64(event[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < event.len() && b64(event[i]) {
            i += 1;
        }
        run[start..i].fill(i - start);
    }
    (0..=event.len())
        .filter(|&c| {
            let inside = c > 0 && c < event.len() && run[c - 1] >= RUN && run[c] >= RUN;
            !inside || c % 61 == 0
        })
        .collect()
}

#[test]
fn split_points_keep_every_structural_offset() {
    let sig = "A".repeat(100);
    let body = format!("data: {{\"s\":\"{sig}\",\"t\":\"é\"}}\n\n");
    let pts = split_points(body.as_bytes());
    let start = body.find('A').unwrap();
    // Every offset outside the run, and the run's own edges, are kept.
    for c in (0..=start).chain(start + 100..=body.len()) {
        assert!(pts.contains(&c), "{c}");
    }
    assert!(pts.len() < body.len() + 1 - 90);
}

/// The body cut after every blank line that ends an event.
fn events(body: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < body.len() {
        let end = if body[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if body[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        };
        match end {
            Some(e) => {
                out.push(&body[start..e]);
                start = e;
                i = e;
            }
            None => i += 1,
        }
    }
    if start < body.len() {
        out.push(&body[start..]);
    }
    out
}

fn split_at(body: &[u8], cut: usize) -> Result<(Vec<Delta>, bool), EngineError> {
    let (a, b) = body.split_at(cut);
    decode_pieces(&[a, b])
}

#[test]
fn recorded_streams_split_at_every_byte() {
    let cases: Vec<Case> = support::cases("anthropic")
        .into_iter()
        .filter(|c| c.meta["format"] == "sse")
        .collect();
    let mut bad = Vec::new();
    for case in &cases {
        let id = &case.id;
        let whole = decode_pieces(&[&case.body]);
        let (deltas, done) = whole.clone().unwrap();
        assert!(done, "{id}: no message_stop seen");
        let mut acc = Accumulator::default();
        deltas.iter().for_each(|d| acc.push(d));
        check(case, &acc.finish(), &mut bad);
        if case.body.len() <= FULL_SPLIT_MAX {
            if let Some(cut) = (0..=case.body.len()).find(|&c| split_at(&case.body, c) != whole) {
                bad.push(format!(
                    "{id}: split at {cut}: {:?}",
                    split_at(&case.body, cut)
                ));
            }
            continue;
        }
        let ev = events(&case.body);
        assert_eq!(
            ev.concat(),
            case.body,
            "{id}: event segmentation lost bytes"
        );
        for i in 0..ev.len() {
            let lo = i.saturating_sub(1);
            let window = ev[lo..(i + 2).min(ev.len())].concat();
            let before: usize = ev[lo..i].iter().map(|e| e.len()).sum();
            let whole = decode_pieces(&[&window]);
            let found = split_points(ev[i])
                .into_iter()
                .find(|&j| split_at(&window, before + j) != whole);
            if let Some(j) = found {
                bad.push(format!(
                    "{id}: event {i} split at {j}: {:?} != {whole:?}",
                    split_at(&window, before + j)
                ));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

fn own(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/anthropic")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

async fn run_stream(reply: Reply) -> (Completion, Option<EngineError>, Vec<Delta>) {
    let server = Server::start(vec![reply]).await;
    let client = build_client(Duration::from_secs(5)).unwrap();
    let mut attempt = Attempt::start(
        &client,
        &spec(&server.url),
        "claude-test",
        &ChatRequest::from_prompt("What is 2+2?"),
        true,
        Timeouts::default(),
        &CallContext::default(),
    )
    .await
    .expect("headers arrive");
    drain(&mut attempt).await
}

#[tokio::test]
async fn overloaded_error_event_mid_stream() {
    let reply = Reply::sse(own("overloaded-mid-stream.sse")).chunked(13, Duration::from_millis(1));
    let (got, err, deltas) = run_stream(reply).await;
    assert_eq!(got.text, "The answer is", "partial text is delivered first");
    assert!(deltas
        .iter()
        .any(|d| matches!(d, Delta::Usage(u) if u.input_tokens == 12)));
    match err {
        Some(EngineError::Overloaded {
            status: 529,
            message,
            ..
        }) => assert_eq!(message, "Overloaded"),
        other => panic!("expected an overloaded error, got {other:?}"),
    }
}

#[tokio::test]
async fn stream_ending_before_message_stop_is_a_cut() {
    let (got, err, _) = run_stream(Reply::sse(own("cut-before-message-stop.sse"))).await;
    assert_eq!(got.text, "Half of an answer");
    let err = err.expect("a cut stream is an error");
    assert_eq!(err.kind(), "network", "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn connection_dropped_before_message_stop() {
    // A complete stream, but the connection dies just before message_stop
    // (no terminating chunk): the deltas so far arrive, then an error.
    let body = own("unknown-future-event.sse");
    let at = String::from_utf8_lossy(&body)
        .find("event: message_stop")
        .unwrap();
    let mut reply = Reply::sse(body);
    reply.cut_after = Some(at);
    let (got, err, _) = run_stream(reply).await;
    assert_eq!(got.text, "Four.");
    assert_eq!(got.raw_finish_reason, "end_turn");
    let err = err.expect("a dropped connection is an error");
    assert_eq!(err.kind(), "network", "{err}");
}

#[tokio::test]
async fn unknown_future_events_and_blocks_are_ignored() {
    let (got, err, deltas) = run_stream(Reply::sse(own("unknown-future-event.sse"))).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got.text, "Four.");
    assert!(got.tool_calls.is_empty());
    assert_eq!(got.finish_reason, FinishReason::Stop);
    assert_eq!(got.raw_finish_reason, "end_turn");
    assert_eq!(got.usage.input_tokens, 7 + 3 + 100);
    assert_eq!(got.usage.cached_input_tokens, 100);
    assert_eq!(got.usage.cache_creation_input_tokens, 3);
    assert_eq!(got.usage.output_tokens, 5);
    assert_eq!(got.usage.uncached_input_tokens(), 7);
    // The usage snapshots are cumulative: first the start (its provisional
    // output count of 1 is not passed on), then the final.
    let outs: Vec<u64> = deltas
        .iter()
        .filter_map(|d| match d {
            Delta::Usage(u) => Some(u.output_tokens),
            _ => None,
        })
        .collect();
    assert_eq!(outs, vec![0, 5]);
}

#[tokio::test]
async fn http_error_bodies_are_classified() {
    for case in support::cases("errors")
        .iter()
        .filter(|c| c.id.starts_with("errors/anthropic-"))
    {
        let server = Server::start(vec![support::reply_for(case)]).await;
        let client = build_client(Duration::from_secs(5)).unwrap();
        let err = Attempt::start(
            &client,
            &spec(&server.url),
            "claude-test",
            &ChatRequest::from_prompt("hi"),
            true,
            Timeouts::default(),
            &CallContext::default(),
        )
        .await
        .expect_err(&case.id);
        let want_msg = case.meta["expected"]["message"].as_str().unwrap();
        assert_eq!(
            err.status(),
            case.meta["http_status"].as_u64().map(|s| s as u16)
        );
        assert!(err.to_string().contains(want_msg), "{}: {err}", case.id);
        assert!(!err.to_string().contains(KEY));
        assert!(!err.is_retryable(), "{}: {err}", case.id);
    }
}
