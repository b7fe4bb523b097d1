//! Gemini conformance: every recorded case in `../shared/fixtures/gemini`
//! served over real HTTP and decoded through `Attempt`, the SSE cases also
//! split at every byte offset, plus our own cut/error scenarios in
//! `tests/fixtures/gemini`.

mod support;

use std::time::Duration;

use llm_quorum::engine::provider::http::{build_client, Attempt, CallContext, Timeouts};
use llm_quorum::engine::provider::{gemini, ProviderKind, ProviderSpec, Secret, StreamDecoder};
use llm_quorum::engine::wire::SseDecoder;
use llm_quorum::engine::{
    Accumulator, ChatRequest, Completion, Delta, EngineError, FinishReason, Usage,
};
use serde_json::Value;
use support::{Case, Reply, Server};

const KEY: &str = "AIzaTEST-not-a-real-key";

fn spec(url: &str) -> ProviderSpec {
    let mut s = ProviderSpec::new("gemini", ProviderKind::Gemini);
    s.base_url = url.to_string();
    s.api_key = Some(Secret::new(KEY));
    s
}

/// What the meta says a correct parser produces.
struct Want {
    text: String,
    thinking: String,
    /// (name, args, id)
    calls: Vec<(String, Value, String)>,
    raw: String,
    reason: FinishReason,
    usage: Option<Usage>,
}

fn want(case: &Case) -> Want {
    let e = &case.meta["expected"];
    let calls: Vec<(String, Value, String)> = e["function_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["args"].clone(),
                c["id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    // A blocked prompt has no finishReason; its blockReason is the raw word.
    let block = e["prompt_feedback"]["blockReason"].as_str();
    let raw = e["finish_reason"]
        .as_str()
        .or(block)
        .unwrap_or("")
        .to_string();
    let reason = match raw.as_str() {
        _ if e["finish_reason"].is_null() && block.is_some() => FinishReason::ContentFilter,
        "STOP" if !calls.is_empty() => FinishReason::ToolCalls,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        _ => FinishReason::Stop,
    };
    let u = &e["usage"];
    let n = |k: &str| u[k].as_u64();
    let counts = [
        n("prompt_token_count"),
        n("candidates_token_count"),
        n("thoughts_token_count"),
        n("cached_content_token_count"),
    ];
    let usage = if counts.iter().all(Option::is_none) {
        None
    } else {
        let thoughts = counts[2].unwrap_or(0);
        Some(Usage {
            input_tokens: counts[0].unwrap_or(0),
            output_tokens: counts[1].unwrap_or(0) + thoughts,
            cached_input_tokens: counts[3].unwrap_or(0),
            reasoning_tokens: thoughts,
            ..Usage::default()
        })
    };
    Want {
        text: e["text"].as_str().unwrap_or("").to_string(),
        thinking: e["thought_text"].as_str().unwrap_or("").to_string(),
        calls,
        raw,
        reason,
        usage,
    }
}

/// Compare a completion with the meta; every difference is one line.
fn diff(id: &str, w: &Want, c: &Completion) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |what: &str, ok: bool, got: String, exp: String| {
        if !ok {
            out.push(format!("{id}: {what}: got {got}, want {exp}"));
        }
    };
    check(
        "text",
        c.text == w.text,
        format!("{:?}", c.text),
        format!("{:?}", w.text),
    );
    check(
        "thinking",
        c.thinking == w.thinking,
        format!("{:?}", c.thinking),
        format!("{:?}", w.thinking),
    );
    let got_calls: Vec<(String, Value, String)> = c
        .tool_calls
        .iter()
        .map(|t| (t.name.clone(), t.arguments_json(), t.id.clone()))
        .collect();
    check(
        "tool calls",
        got_calls == w.calls,
        format!("{got_calls:?}"),
        format!("{:?}", w.calls),
    );
    check(
        "raw finish",
        c.raw_finish_reason == w.raw,
        c.raw_finish_reason.clone(),
        w.raw.clone(),
    );
    check(
        "finish",
        c.finish_reason == w.reason,
        c.finish_reason.to_string(),
        w.reason.to_string(),
    );
    let got_usage = c.usage_reported.then_some(c.usage);
    check(
        "usage",
        got_usage == w.usage,
        format!("{got_usage:?}"),
        format!("{:?}", w.usage),
    );
    out
}

/// Drain an attempt; the error (if any) comes back with the partial completion.
async fn drain(mut a: Attempt) -> (Completion, Option<EngineError>) {
    let mut acc = Accumulator::default();
    let mut err = None;
    while let Some(d) = a.next().await {
        match d {
            Ok(d) => acc.push(&d),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    (acc.finish(), err)
}

async fn run(server: &Server, model: &str, stream: bool) -> Result<Completion, EngineError> {
    let client = build_client(Duration::from_secs(5)).unwrap();
    let req = ChatRequest::from_prompt("hello");
    let a = Attempt::start(
        &client,
        &spec(&server.url),
        model,
        &req,
        stream,
        Timeouts::default(),
        &CallContext::default(),
    )
    .await?;
    match drain(a).await {
        (c, None) => Ok(c),
        (_, Some(e)) => Err(e),
    }
}

#[tokio::test]
async fn every_recorded_case_over_http() {
    let cases = support::cases("gemini");
    let mut problems = Vec::new();
    for case in &cases {
        let w = want(case);
        let format = case.meta["format"].as_str().unwrap();
        // The JSON-array stream is one JSON document: parse_response reads it.
        let streaming = format == "sse";
        let model = case.meta["request_model"].as_str().unwrap();
        let server = Server::start(vec![support::reply_for(case)]).await;
        match run(&server, model, streaming).await {
            Ok(c) => problems.extend(diff(&case.id, &w, &c)),
            Err(e) => problems.push(format!("{}: failed: {e}", case.id)),
        }
        let seen = server.requests();
        let path = &seen[0].path;
        if streaming != path.ends_with(":streamGenerateContent?alt=sse") {
            problems.push(format!("{}: unexpected path {path}", case.id));
        }
    }
    eprintln!("{} gemini cases checked", cases.len());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Feed an SSE body to the wire decoder and ours in two pieces split at `cut`.
fn decode_split(body: &[u8], cut: usize) -> Result<(Completion, bool), EngineError> {
    let mut sse = SseDecoder::new();
    let mut dec = gemini::Decoder::default();
    let mut out: Vec<Delta> = Vec::new();
    for piece in [&body[..cut], &body[cut..]] {
        sse.feed(piece, |f| dec.frame(f.event, f.data, &mut out))?;
    }
    sse.finish(|f| dec.frame(f.event, f.data, &mut out))?;
    dec.end(&mut out)?;
    let mut acc = Accumulator::default();
    for d in &out {
        acc.push(d);
    }
    Ok((acc.finish(), dec.is_done()))
}

/// Bodies up to this size are split at every offset and decoded whole each
/// time; that is quadratic, so larger ones are split at every offset of each
/// event within a window of its neighbouring events (see `split_windowed`).
const FULL_SPLIT_MAX: usize = 8 * 1024;

#[test]
fn sse_cases_split_at_every_byte() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for case in support::cases("gemini") {
        if case.meta["format"] != "sse" {
            continue;
        }
        checked += 1;
        let w = want(&case);
        let full = if case.body.len() <= FULL_SPLIT_MAX {
            case.body.len()
        } else {
            0
        };
        for cut in 0..=full {
            match decode_split(&case.body, cut) {
                Ok((c, done)) => {
                    let d = diff(&format!("{} cut {cut}", case.id), &w, &c);
                    if !done {
                        problems.push(format!("{} cut {cut}: not done", case.id));
                    }
                    if !d.is_empty() {
                        problems.extend(d);
                        break; // one failing cut per case is enough to read
                    }
                }
                Err(e) => {
                    problems.push(format!("{} cut {cut}: {e}", case.id));
                    break;
                }
            }
        }
        if full == 0 {
            problems.extend(split_windowed(&case.id, &case.body));
        }
    }
    eprintln!("{checked} gemini SSE cases split");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
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

/// For each event: the event with its neighbours, split at every offset
/// inside the event, must decode exactly as the same window unsplit.
fn split_windowed(id: &str, body: &[u8]) -> Vec<String> {
    let ev = events(body);
    assert_eq!(ev.concat(), body, "{id}: event segmentation lost bytes");
    let mut problems = Vec::new();
    for i in 0..ev.len() {
        let lo = i.saturating_sub(1);
        let hi = (i + 2).min(ev.len());
        let window = ev[lo..hi].concat();
        let before: usize = ev[lo..i].iter().map(|e| e.len()).sum();
        let whole = decode_split(&window, 0);
        for j in 0..=ev[i].len() {
            let got = decode_split(&window, before + j);
            if got != whole {
                problems.push(format!(
                    "{id}: event {i} split at {j}: {got:?} != {whole:?}"
                ));
                break;
            }
        }
    }
    problems
}

#[test]
fn json_array_cases_match_elementwise_decoding() {
    // parse_response over the whole array must equal the decoder fed each element.
    for case in support::cases("gemini") {
        if case.meta["format"] != "json-array-stream" {
            continue;
        }
        let whole = gemini::parse_response(&case.body).unwrap();
        let arr: Vec<Value> = serde_json::from_slice(&case.body).unwrap();
        assert_eq!(
            arr.len() as u64,
            case.meta["expected"]["chunks"].as_u64().unwrap()
        );
        let mut dec = gemini::Decoder::default();
        let mut out = Vec::new();
        for el in &arr {
            dec.frame("message", &el.to_string(), &mut out).unwrap();
        }
        assert!(dec.is_done(), "{}", case.id);
        assert_eq!(whole, out, "{}", case.id);
    }
}

#[tokio::test]
async fn request_on_the_wire() {
    let server = Server::start(vec![Reply::sse(
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"ok\"}]},\"finishReason\": \"STOP\"}]}\r\n\r\n",
    )])
    .await;
    let c = run(&server, "gemini-2.0-flash", true).await.unwrap();
    assert_eq!(c.text, "ok");
    let seen = &server.requests()[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(
        seen.path,
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    );
    assert!(!seen.path.contains(KEY), "key leaked into the URL");
    assert_eq!(seen.header("x-goog-api-key"), Some(KEY));
    assert!(seen.header("authorization").is_none());
    assert!(seen
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let body = seen.json();
    assert_eq!(
        body["contents"],
        serde_json::json!([{"role": "user", "parts": [{"text": "hello"}]}])
    );

    let server = Server::start(vec![Reply::json(
        200,
        r#"{"candidates": [{"content": {"parts": [{"text": "ok"}]}, "finishReason": "STOP"}]}"#,
    )])
    .await;
    run(&server, "models/gemini-2.0-flash", false)
        .await
        .unwrap();
    let seen = &server.requests()[0];
    assert_eq!(seen.path, "/v1beta/models/gemini-2.0-flash:generateContent");
    assert_eq!(seen.header("x-goog-api-key"), Some(KEY));
}

#[tokio::test]
async fn recorded_http_errors_are_classified() {
    // A 400 to a streaming request is plain JSON despite text/event-stream.
    for case in support::cases("errors") {
        if !case.id.starts_with("errors/gemini-") {
            continue;
        }
        let server = Server::start(vec![support::reply_for(&case)]).await;
        let e = run(&server, "gemini-2.0-flash", case.id.contains("sse"))
            .await
            .unwrap_err();
        let status = case.meta["expected"]["http_status"].as_u64().unwrap() as u16;
        assert_eq!(e.status(), Some(status), "{}: {e}", case.id);
        let msg = case.meta["expected"]["message"].as_str().unwrap();
        assert!(e.to_string().contains(msg), "{}: {e}", case.id);
        assert!(!e.to_string().contains(KEY));
    }
}

fn own(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gemini")
        .join(name);
    std::fs::read(p).unwrap()
}

#[tokio::test]
async fn stream_ending_before_finish_reason_is_an_error_after_the_text() {
    let body = own("stream-cut-before-finish.sse");
    let want = "Once upon a time, a café owner named Zoë opened her doors 🍵";
    // The server ends the body cleanly, but no finishReason ever came.
    let server = Server::start(vec![Reply::sse(body.clone()).chunked(7, Duration::ZERO)]).await;
    let client = build_client(Duration::from_secs(5)).unwrap();
    let req = ChatRequest::from_prompt("story");
    let a = Attempt::start(
        &client,
        &spec(&server.url),
        "gemini-2.5-flash",
        &req,
        true,
        Timeouts::default(),
        &CallContext::default(),
    )
    .await
    .unwrap();
    let (c, err) = drain(a).await;
    assert_eq!(c.text, want);
    assert_eq!(c.usage.input_tokens, 9);
    assert!(c.raw_finish_reason.is_empty());
    let err = err.expect("a cut stream must fail");
    assert_eq!(err.kind(), "network", "{err}");

    // The connection itself drops in the middle of the third event.
    let cut_at = body.len() - 20;
    let mut reply = Reply::sse(body.clone()).chunked(11, Duration::ZERO);
    reply.cut_after = Some(cut_at);
    let server = Server::start(vec![reply]).await;
    let a = Attempt::start(
        &client,
        &spec(&server.url),
        "gemini-2.5-flash",
        &req,
        true,
        Timeouts::default(),
        &CallContext::default(),
    )
    .await
    .unwrap();
    let (c, err) = drain(a).await;
    assert_eq!(c.text, "Once upon a time, a café owner named Zoë ");
    assert!(err.is_some(), "a dropped connection must fail");
}

#[tokio::test]
async fn error_object_inside_the_stream() {
    let server = Server::start(vec![Reply::sse(own("stream-error-midway.sse"))]).await;
    let client = build_client(Duration::from_secs(5)).unwrap();
    let a = Attempt::start(
        &client,
        &spec(&server.url),
        "gemini-2.5-flash",
        &ChatRequest::from_prompt("x"),
        true,
        Timeouts::default(),
        &CallContext::default(),
    )
    .await
    .unwrap();
    let (c, err) = drain(a).await;
    assert_eq!(c.text, "Partial answer");
    assert_eq!(
        err,
        Some(EngineError::InStream {
            message: "UNAVAILABLE: The model is overloaded. Please try again later.".into()
        })
    );
}
