//! Ollama conformance: every recorded case in `../shared/fixtures/ollama`
//! served over real HTTP and decoded through `Attempt`, the NDJSON cases
//! also split at every byte offset, plus our own cut/error scenarios in
//! `tests/fixtures/ollama`.

mod support;

use std::time::Duration;

use llm_quorum::engine::provider::http::{build_client, Attempt, CallContext, Timeouts};
use llm_quorum::engine::provider::{ollama, ProviderKind, ProviderSpec, StreamDecoder};
use llm_quorum::engine::wire::NdjsonDecoder;
use llm_quorum::engine::{
    Accumulator, ChatRequest, Completion, Delta, EngineError, FinishReason, Usage,
};
use serde_json::Value;
use support::{Case, Reply, Server};

fn spec(url: &str) -> ProviderSpec {
    let mut s = ProviderSpec::new("ollama", ProviderKind::Ollama);
    s.base_url = url.to_string();
    s
}

/// What the meta says a correct parser produces.
struct Want {
    text: String,
    thinking: String,
    /// (name, arguments, id)
    calls: Vec<(String, Value, String)>,
    raw: String,
    reason: FinishReason,
    usage: Usage,
}

fn want(case: &Case) -> Want {
    let e = &case.meta["expected"];
    let calls: Vec<(String, Value, String)> = e["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["arguments"].clone(),
                c["id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let raw = e["done_reason"].as_str().unwrap().to_string();
    let reason = match raw.as_str() {
        "length" => FinishReason::Length,
        _ if !calls.is_empty() => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    };
    Want {
        text: e["text"].as_str().unwrap_or("").to_string(),
        thinking: e["thinking"].as_str().unwrap_or("").to_string(),
        calls,
        raw,
        reason,
        usage: Usage {
            input_tokens: e["prompt_eval_count"].as_u64().unwrap(),
            output_tokens: e["eval_count"].as_u64().unwrap(),
            ..Usage::default()
        },
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
    check(
        "usage",
        c.usage_reported && c.usage == w.usage,
        format!("{:?} (reported {})", c.usage, c.usage_reported),
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

async fn start(server: &Server, model: &str, stream: bool) -> Result<Attempt, EngineError> {
    let client = build_client(Duration::from_secs(5)).unwrap();
    Attempt::start(
        &client,
        &spec(&server.url),
        model,
        &ChatRequest::from_prompt("hello"),
        stream,
        Timeouts::default(),
        &CallContext::default(),
    )
    .await
}

#[tokio::test]
async fn every_recorded_case_over_http() {
    let cases = support::cases("ollama");
    let mut problems = Vec::new();
    for case in &cases {
        let w = want(case);
        let streaming = case.meta["format"] == "ndjson";
        let model = case.meta["request_model"].as_str().unwrap();
        let server = Server::start(vec![support::reply_for(case)]).await;
        match start(&server, model, streaming).await {
            Ok(a) => match drain(a).await {
                (c, None) => problems.extend(diff(&case.id, &w, &c)),
                (_, Some(e)) => problems.push(format!("{}: failed mid-stream: {e}", case.id)),
            },
            Err(e) => problems.push(format!("{}: failed: {e}", case.id)),
        }
        let seen = server.requests();
        if seen[0].json()["stream"] != Value::Bool(streaming) {
            problems.push(format!("{}: stream flag not sent as {streaming}", case.id));
        }
    }
    eprintln!("{} ollama cases checked", cases.len());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Feed an NDJSON body to the wire decoder and ours in two pieces split at `cut`.
fn decode_split(body: &[u8], cut: usize) -> Result<(Completion, bool), EngineError> {
    let mut nd = NdjsonDecoder::new();
    let mut dec = ollama::Decoder::default();
    let mut out: Vec<Delta> = Vec::new();
    for piece in [&body[..cut], &body[cut..]] {
        nd.feed(piece, |l| dec.frame("", l, &mut out))?;
    }
    nd.finish(|l| dec.frame("", l, &mut out))?;
    dec.end(&mut out)?;
    let mut acc = Accumulator::default();
    for d in &out {
        acc.push(d);
    }
    Ok((acc.finish(), dec.is_done()))
}

/// Bodies up to this size are split at every offset and decoded whole each
/// time; that is quadratic, so larger ones (the 104 KB thinking stream) are
/// split at every offset of each line within a window of its neighbouring
/// lines (see `split_windowed`).
const FULL_SPLIT_MAX: usize = 8 * 1024;

#[test]
fn ndjson_cases_split_at_every_byte() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for case in support::cases("ollama") {
        if case.meta["format"] != "ndjson" {
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
                        break;
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
    eprintln!("{checked} ollama NDJSON cases split");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// For each line: the line with its neighbours, split at every offset inside
/// the line, must decode exactly as the same window unsplit.
fn split_windowed(id: &str, body: &[u8]) -> Vec<String> {
    let lines: Vec<&[u8]> = body.split_inclusive(|&b| b == b'\n').collect();
    let mut problems = Vec::new();
    for i in 0..lines.len() {
        let lo = i.saturating_sub(1);
        let hi = (i + 2).min(lines.len());
        let window = lines[lo..hi].concat();
        let before: usize = lines[lo..i].iter().map(|l| l.len()).sum();
        let whole = decode_split(&window, 0);
        for j in 0..=lines[i].len() {
            let got = decode_split(&window, before + j);
            if got != whole {
                problems.push(format!("{id}: line {i} split at {j}: {got:?} != {whole:?}"));
                break;
            }
        }
    }
    problems
}

#[tokio::test]
async fn request_on_the_wire() {
    let line = "{\"model\":\"llama3.2\",\"message\":{\"role\":\"assistant\",\"content\":\"ok\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":1,\"eval_count\":1}\n";
    let server = Server::start(vec![Reply::new(
        200,
        "application/x-ndjson",
        line.as_bytes().to_vec(),
    )])
    .await;
    let (c, err) = drain(start(&server, "llama3.2", true).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(c.text, "ok");
    let seen = &server.requests()[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/api/chat");
    assert!(seen.header("authorization").is_none());
    assert_eq!(
        seen.json(),
        serde_json::json!({"model": "llama3.2", "stream": true,
            "messages": [{"role": "user", "content": "hello"}]})
    );

    let server = Server::start(vec![Reply::json(200, line.trim().as_bytes().to_vec())]).await;
    let (c, err) = drain(start(&server, "llama3.2", false).await.unwrap()).await;
    assert!(err.is_none() && c.text == "ok");
    assert_eq!(server.requests()[0].json()["stream"], false);
}

#[tokio::test]
async fn recorded_http_error_is_classified() {
    for case in support::cases("errors") {
        if !case.id.starts_with("errors/ollama-") {
            continue;
        }
        let server = Server::start(vec![support::reply_for(&case)]).await;
        let e = start(&server, "nonexistent-model:latest", true)
            .await
            .unwrap_err();
        let status = case.meta["expected"]["http_status"].as_u64().unwrap() as u16;
        assert_eq!(e.status(), Some(status), "{}: {e}", case.id);
        let msg = case.meta["expected"]["message"].as_str().unwrap();
        assert!(e.to_string().contains(msg), "{}: {e}", case.id);
    }
}

fn own(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ollama")
        .join(name);
    std::fs::read(p).unwrap()
}

#[tokio::test]
async fn error_line_inside_the_stream() {
    let body = own("chat-stream-error.ndjson");
    let server = Server::start(vec![
        Reply::new(200, "application/x-ndjson", body).chunked(13, Duration::ZERO)
    ])
    .await;
    let (c, err) = drain(start(&server, "llama3.2", true).await.unwrap()).await;
    assert_eq!(c.text, "The answer is");
    assert_eq!(
        err,
        Some(EngineError::InStream {
            message: "an error was encountered while running the model: unexpected EOF".into()
        })
    );
}

#[tokio::test]
async fn stream_ending_before_done_is_an_error_after_the_text() {
    let body = own("chat-stream-cut.ndjson");
    let server = Server::start(vec![
        Reply::new(200, "application/x-ndjson", body.clone()).chunked(5, Duration::ZERO)
    ])
    .await;
    let (c, err) = drain(start(&server, "llama3.2", true).await.unwrap()).await;
    assert_eq!(c.text, "Counting: 1, 2, 3…");
    assert!(!c.usage_reported);
    let err = err.expect("a stream without done must fail");
    assert_eq!(err.kind(), "network", "{err}");

    // The connection drops inside the last line: its half is never decoded
    // as JSON garbage, the earlier lines survive.
    let mut reply =
        Reply::new(200, "application/x-ndjson", body.clone()).chunked(9, Duration::ZERO);
    reply.cut_after = Some(body.len() - 10);
    let server = Server::start(vec![reply]).await;
    let (c, err) = drain(start(&server, "llama3.2", true).await.unwrap()).await;
    assert_eq!(c.text, "Counting: 1, 2,");
    assert!(err.is_some());
}
