//! Conformance of the OpenAI Chat Completions protocol module (kinds
//! `openai`, `openrouter`, `compatible`) against recorded responses from the
//! real services (`../shared/fixtures`) and hand-written scenarios
//! (`tests/fixtures/openai`), over real HTTP through `Attempt`.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use llm_quorum::engine::provider::http::{
    build_client, Attempt, AttemptOptions, CallContext, LazyClient, Timeouts,
};
use llm_quorum::engine::provider::openai::Decoder;
use llm_quorum::engine::provider::{ProviderKind, ProviderSpec, Secret, StreamDecoder};
use llm_quorum::engine::wire::SseDecoder;
use llm_quorum::engine::{
    Accumulator, ChatRequest, Completion, Delta, EngineError, FinishReason, Usage,
};
use serde_json::Value;
use support::{Case, Reply, Server};

const KEY: &str = "sk-test-conformance-0123456789abcdef";

fn spec(kind: ProviderKind, server: &Server) -> ProviderSpec {
    ProviderSpec {
        name: kind.as_str().to_string(),
        kind,
        base_url: format!("{}/v1", server.url),
        api_key: Some(Secret::new(KEY)),
        headers: Vec::new(),
        extra: Default::default(),
    }
}

fn client() -> reqwest::Client {
    build_client(Duration::from_secs(5)).unwrap()
}

/// What came out of one attempt: every delta, folded, and the error if any.
struct Outcome {
    deltas: Vec<Delta>,
    completion: Completion,
    saw_finish: bool,
    error: Option<EngineError>,
}

/// One attempt through reqwest, then the same through the engine's lease, which
/// sends to a plain `http://` endpoint with hyper's client directly (what a local
/// server or gateway gets): both must deliver the same deltas and error.
async fn run(spec: &ProviderSpec, model: &str, streaming: bool) -> Outcome {
    let out = run_via(spec, model, streaming, false).await;
    let plain = run_via(spec, model, streaming, true).await;
    assert_eq!(
        format!("{:?}", out.deltas),
        format!("{:?}", plain.deltas),
        "reqwest and hyper's plain client delivered different deltas"
    );
    // The same kind of error (the wording of a network error is each client's).
    assert_eq!(
        out.error.as_ref().map(|e| e.kind()),
        plain.error.as_ref().map(|e| e.kind()),
        "reqwest and hyper's plain client ended differently: {:?} / {:?}",
        out.error,
        plain.error
    );
    out
}

async fn run_via(spec: &ProviderSpec, model: &str, streaming: bool, leased: bool) -> Outcome {
    let req = ChatRequest::from_prompt("conformance");
    let mut deltas = Vec::new();
    let mut error = None;
    let lazy = LazyClient::new(Duration::from_secs(5));
    let started = if leased {
        let lease = lazy.lease(&spec.base_url).unwrap();
        let opts = AttemptOptions::default();
        Attempt::start_leased(
            &lease,
            spec,
            model,
            &req,
            streaming,
            &opts,
            &CallContext::default(),
        )
        .await
    } else {
        Attempt::start(
            &client(),
            spec,
            model,
            &req,
            streaming,
            Timeouts::default(),
            &CallContext::default(),
        )
        .await
    };
    match started {
        Err(e) => error = Some(e),
        Ok(mut attempt) => {
            while let Some(r) = attempt.next().await {
                match r {
                    Ok(d) => deltas.push(d),
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
        }
    }
    let mut acc = Accumulator::default();
    for d in &deltas {
        acc.push(d);
    }
    let saw_finish = acc.saw_finish();
    Outcome {
        deltas,
        completion: acc.finish(),
        saw_finish,
        error,
    }
}

/// Our normalisation, restated from the OpenAI docs rather than imported.
fn normalised(raw: &str) -> FinishReason {
    match raw {
        "" | "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        other => panic!("fixture has an unexpected finish_reason {other:?}"),
    }
}

fn str_or_empty(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// Compare a completion with a case's `expected`; one line per mismatch.
fn check(case: &Case, c: &Completion, error: &Option<EngineError>) -> Vec<String> {
    let e = &case.meta["expected"];
    let mut bad = Vec::new();
    let mut eq = |what: &str, got: String, want: String| {
        if got != want {
            bad.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    };
    eq("error", format!("{error:?}"), "None".into());
    eq("text", c.text.clone(), str_or_empty(&e["text"]).into());
    eq(
        "thinking",
        c.thinking.clone(),
        str_or_empty(&e["reasoning"]).into(),
    );
    eq(
        "refusal",
        format!("{:?}", c.refusal),
        format!("{:?}", e["refusal"].as_str()),
    );
    let mut want_calls: Vec<(String, String, String)> = e["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                t["name"].as_str().unwrap().to_string(),
                t["arguments"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    if let Some(f) = e.get("legacy_function_call") {
        // The legacy API gives no id.
        want_calls.push((
            String::new(),
            f["name"].as_str().unwrap().to_string(),
            f["arguments"].as_str().unwrap().to_string(),
        ));
    }
    let got_calls: Vec<(String, String, String)> = c
        .tool_calls
        .iter()
        .map(|t| (t.id.clone(), t.name.clone(), t.arguments.clone()))
        .collect();
    eq(
        "tool_calls",
        format!("{got_calls:?}"),
        format!("{want_calls:?}"),
    );
    let raw = str_or_empty(&e["finish_reason"]);
    eq("raw finish", c.raw_finish_reason.clone(), raw.into());
    eq(
        "finish",
        c.finish_reason.to_string(),
        normalised(raw).to_string(),
    );
    let u = &e["usage"];
    let want_usage = if u.is_null() {
        None
    } else {
        let n = |k: &str| u[k].as_u64().unwrap_or(0);
        Some(Usage {
            input_tokens: n("prompt_tokens"),
            output_tokens: n("completion_tokens"),
            cached_input_tokens: n("cached_tokens"),
            cache_creation_input_tokens: 0,
            reasoning_tokens: n("reasoning_tokens"),
            reported_cost_usd: u["cost"].as_f64(),
        })
    };
    let got_usage = c.usage_reported.then_some(c.usage);
    eq("usage", format!("{got_usage:?}"), format!("{want_usage:?}"));
    bad
}

fn report(failures: Vec<String>, ran: usize) {
    assert!(
        failures.is_empty(),
        "{} of {ran} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Serve every case of a fixture directory over HTTP and check what the
/// `Attempt` delivers, and what the server saw.
async fn conformance(dir: &str, kind: ProviderKind) {
    let cases = support::cases(dir);
    let mut failures = Vec::new();
    for case in &cases {
        let server = Server::start(vec![support::reply_for(case)]).await;
        let spec = spec(kind, &server);
        let streaming = case.meta["streaming"].as_bool().unwrap();
        let model = case.meta["request_model"].as_str().unwrap_or("m");
        let out = run(&spec, model, streaming).await;
        let mut bad = check(case, &out.completion, &out.error);
        if !out.saw_finish {
            bad.push("no finish delta".into());
        }
        let seen = server.requests();
        assert_eq!(seen.len(), 2, "one request per client");
        for r in &seen {
            let body = r.json();
            if r.method != "POST" || r.path != "/v1/chat/completions" {
                bad.push(format!("request line {} {}", r.method, r.path));
            }
            if r.header("authorization") != Some(&format!("Bearer {KEY}")) {
                bad.push(format!("authorization {:?}", r.header("authorization")));
            }
            if body["model"] != model {
                bad.push(format!("model {}", body["model"]));
            }
            let want_stream = if streaming {
                serde_json::json!({"stream": true, "stream_options": {"include_usage": true}})
            } else {
                serde_json::json!({"stream": null, "stream_options": null})
            };
            if body["stream"] != want_stream["stream"]
                || body["stream_options"] != want_stream["stream_options"]
            {
                bad.push(format!(
                    "stream {} stream_options {}",
                    body["stream"], body["stream_options"]
                ));
            }
            if kind == ProviderKind::Openrouter
                && (r.header("x-title") != Some("llm-quorum")
                    || r.header("http-referer") != Some("https://github.com/llm-quorum/llm-quorum"))
            {
                bad.push("openrouter attribution headers missing".into());
            }
        }
        for b in bad {
            failures.push(format!("{}: {b}", case.id));
        }
    }
    eprintln!("{dir}: {} cases checked", cases.len());
    report(failures, cases.len());
}

#[tokio::test]
async fn openai_recorded_cases() {
    conformance("openai", ProviderKind::Openai).await;
}

#[tokio::test]
async fn openrouter_recorded_cases() {
    conformance("openrouter", ProviderKind::Openrouter).await;
}

/// The judgement call on `openrouter/stream-error-after-finish`: an error
/// object that arrives after choice 0 already finished does not fail the
/// completed answer; its usage (in the same chunk) still counts.
#[tokio::test]
async fn error_after_finish_keeps_the_finished_answer() {
    let Some(case) = support::cases("openrouter")
        .into_iter()
        .find(|c| c.id == "openrouter/stream-error-after-finish")
    else {
        return;
    };
    let server = Server::start(vec![support::reply_for(&case)]).await;
    let out = run(
        &spec(ProviderKind::Openrouter, &server),
        "minimax/minimax-m2:free",
        true,
    )
    .await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.completion.finish_reason, FinishReason::Length);
    assert_eq!(out.completion.usage.reasoning_tokens, 11);
    assert_eq!(out.completion.usage.reported_cost_usd, Some(0.0));
    // The finish is repeated on the wire but reported once.
    let finishes = out
        .deltas
        .iter()
        .filter(|d| matches!(d, Delta::Finish { .. }))
        .count();
    assert_eq!(finishes, 1);
}

fn message_of(e: &EngineError) -> &str {
    match e {
        EngineError::Auth { message, .. }
        | EngineError::RateLimited { message, .. }
        | EngineError::Overloaded { message, .. }
        | EngineError::ContextLength { message, .. }
        | EngineError::BadRequest { message, .. }
        | EngineError::Server { message, .. }
        | EngineError::InStream { message } => message,
        other => panic!("not an HTTP error: {other:?}"),
    }
}

fn expected_kind(status: u64) -> &'static str {
    match status {
        401 | 403 => "auth",
        400 | 404 => "bad_request",
        429 => "rate_limited",
        other => panic!("no expectation for HTTP {other}"),
    }
}

/// Check one classified error against its case; one line per mismatch.
fn check_error(case: &Case, err: &EngineError) -> Vec<String> {
    let e = &case.meta["expected"];
    let mut bad = Vec::new();
    let status = e["http_status"].as_u64().unwrap();
    if err.kind() != expected_kind(status) {
        bad.push(format!("kind {} for HTTP {status}", err.kind()));
    }
    if err.status() != Some(status as u16) {
        bad.push(format!("status {:?}", err.status()));
    }
    let want = e["message"].as_str().unwrap();
    let got = message_of(err);
    match e["error_metadata"]["raw"].as_str() {
        // OpenRouter's upstream message is appended.
        Some(raw) => {
            if got != format!("{want} (upstream: {raw})") {
                bad.push(format!("message {got:?}"));
            }
        }
        None => {
            if got != want {
                bad.push(format!("message {got:?}, want {want:?}"));
            }
        }
    }
    // OpenRouter's X-Ratelimit-Reset (epoch ms) also yields a wait; a reset
    // time already past (as in the recording) gives zero.
    let reset_only = case.meta["response_headers"].as_object().is_some_and(|h| {
        h.keys()
            .any(|k| k.eq_ignore_ascii_case("x-ratelimit-reset"))
    });
    if e["retry_after_header"].is_null() && err.retry_after().is_some() && !reset_only {
        bad.push(format!(
            "retry_after {:?} without a header",
            err.retry_after()
        ));
    }
    if !err.to_string().contains(want) {
        bad.push(format!("Display {err} lacks the message"));
    }
    bad
}

/// OpenAI, Azure OpenAI and OpenRouter error bodies, served over HTTP.
#[tokio::test]
async fn openai_family_errors_over_http() {
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in support::cases("errors") {
        let kind = match case.meta["service"].as_str().unwrap() {
            "openai" | "azure-openai" => ProviderKind::Openai,
            "openrouter" => ProviderKind::Openrouter,
            _ => continue,
        };
        ran += 1;
        let server = Server::start(vec![support::reply_for(&case)]).await;
        let streaming = case.meta["streaming"].as_bool().unwrap_or(false);
        let model = case.meta["request_model"].as_str().unwrap_or("m");
        let out = run(&spec(kind, &server), model, streaming).await;
        let bad = match &out.error {
            None => vec!["no error".to_string()],
            Some(err) => check_error(&case, err),
        };
        if !out.deltas.is_empty() {
            failures.push(format!("{}: deltas from an error body", case.id));
        }
        for b in bad {
            failures.push(format!("{}: {b}", case.id));
        }
    }
    if !support::cases("errors").is_empty() {
        assert_eq!(ran, 7, "openai-family error cases");
    }
    report(failures, ran);
}

/// Every provider's error bodies through the shared classification (the
/// other protocol modules are not needed for it).
#[test]
fn all_error_bodies_classified() {
    let cases = support::cases("errors");
    let mut failures = Vec::new();
    for case in &cases {
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in case.meta["response_headers"].as_object().unwrap() {
            headers.insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.as_str().unwrap().parse().unwrap(),
            );
        }
        let status = case.meta["http_status"].as_u64().unwrap() as u16;
        let err = EngineError::from_http(status, &headers, &case.body);
        for b in check_error(case, &err) {
            failures.push(format!("{}: {b}", case.id));
        }
    }
    report(failures, cases.len());
}

/// Decode a body given in pieces with the SSE decoder and our decoder, no HTTP.
fn decode(pieces: &[&[u8]]) -> (Completion, Option<EngineError>, bool) {
    let mut sse = SseDecoder::new();
    let mut dec = Decoder::default();
    let mut out = Vec::new();
    let mut error = None;
    for p in pieces {
        if let Err(e) = sse.feed(p, |f| dec.frame(f.event, f.data, &mut out)) {
            error = Some(e);
            break;
        }
    }
    if error.is_none() {
        if let Err(e) = sse
            .finish(|f| dec.frame(f.event, f.data, &mut out))
            .and_then(|()| dec.end(&mut out))
        {
            error = Some(e);
        }
    }
    let mut acc = Accumulator::default();
    for d in &out {
        acc.push(d);
    }
    (acc.finish(), error, dec.is_done())
}

fn sse_cases() -> Vec<Case> {
    ["openai", "openrouter"]
        .iter()
        .flat_map(|d| support::cases(d))
        .filter(|c| c.meta["format"] == "sse")
        .collect()
}

/// Small recorded SSE bodies split in two at every byte offset, each split
/// run through the whole pipeline (SSE decoder, our decoder, accumulator)
/// from scratch: the same result as in one piece, and the expected one.
#[test]
fn small_sse_fixtures_split_at_every_byte() {
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in sse_cases().iter().filter(|c| c.body.len() <= 4096) {
        ran += 1;
        let (whole, err, done) = decode(&[&case.body]);
        let mut bad = check(case, &whole, &err);
        if !done {
            bad.push("decoder not done at the end".into());
        }
        let b = &case.body;
        for cut in 1..b.len() {
            let got = decode(&[&b[..cut], &b[cut..]]);
            if got.0 != whole || got.1 != err || got.2 != done {
                bad.push(format!("split at byte {cut} differs: {:?}", got.0));
                break;
            }
        }
        failures.extend(bad.into_iter().map(|x| format!("{}: {x}", case.id)));
    }
    report(failures, ran);
}

/// Every recorded SSE body split in two at every byte offset.
///
/// Re-decoding a 30 KB body from scratch for each of its 30 000 cuts costs
/// minutes in a debug build, so each split is checked where it can make a
/// difference: between the event boundaries (blank lines) around the cut.
/// Both decoders hold nothing but sticky fields at an event boundary (the
/// fixtures have no `id:` lines), so the split window goes through a fresh
/// SSE decoder and a clone of our decoder as it stood at the window's start
/// in the unsplit run; it must emit exactly the unsplit run's deltas for the
/// window and leave our decoder in exactly the unsplit run's state at the
/// window's end, from which the rest of the run is the same by determinism.
/// `small_sse_fixtures_split_at_every_byte` checks the literal version.
#[test]
fn sse_fixtures_split_at_every_byte() {
    let cases = sse_cases();
    let mut failures = Vec::new();
    let mut cuts = 0usize;
    for case in &cases {
        let b = &case.body;
        let n = b.len();
        if b.windows(4).any(|w| w == b"\nid:") || b.starts_with(b"id:") {
            failures.push(format!(
                "{}: has id: lines; the window argument needs none",
                case.id
            ));
            continue;
        }
        // Event boundaries: just after a blank line, plus both ends.
        let mut bounds: Vec<usize> = vec![0];
        bounds.extend((2..n).filter(|&i| &b[i - 2..i] == b"\n\n"));
        bounds.push(n);
        // The unsplit run, segment by segment, with our decoder's state and
        // the delta count at every boundary.
        let mut dec = Decoder::default();
        let mut deltas = Vec::new();
        let mut states = vec![dec.clone()];
        let mut counts = vec![0];
        for w in bounds.windows(2) {
            let mut sse = SseDecoder::new();
            sse.feed(&b[w[0]..w[1]], |f| dec.frame(f.event, f.data, &mut deltas))
                .and_then(|()| sse.finish(|f| dec.frame(f.event, f.data, &mut deltas)))
                .unwrap_or_else(|e| panic!("{}: {e}", case.id));
            if w[1] == n {
                dec.end(&mut deltas).unwrap();
            }
            states.push(dec.clone());
            counts.push(deltas.len());
        }
        // The segmented run is the unsplit run: same deltas as one piece.
        let mut acc = Accumulator::default();
        for d in &deltas {
            acc.push(d);
        }
        let (whole, err, done) = decode(&[b]);
        if acc.finish() != whole || err.is_some() || !done {
            failures.push(format!("{}: segmented run differs from the whole", case.id));
            continue;
        }
        let mut bad = check(case, &whole, &err);
        for cut in 1..n {
            cuts += 1;
            let jp = bounds.partition_point(|&x| x < cut) - 1;
            let jq = bounds.partition_point(|&x| x <= cut);
            let (p, q) = (bounds[jp], bounds[jq]);
            let mut sse = SseDecoder::new();
            let mut dec = states[jp].clone();
            let mut out = Vec::new();
            let r = sse
                .feed(&b[p..cut], |f| dec.frame(f.event, f.data, &mut out))
                .and_then(|()| sse.feed(&b[cut..q], |f| dec.frame(f.event, f.data, &mut out)))
                .and_then(|()| sse.finish(|f| dec.frame(f.event, f.data, &mut out)))
                .and_then(|()| if q == n { dec.end(&mut out) } else { Ok(()) });
            if r.is_err() || out[..] != deltas[counts[jp]..counts[jq]] || dec != states[jq] {
                bad.push(format!(
                    "split at byte {cut} (window {p}..{q}) differs: {r:?} {out:?}"
                ));
                break;
            }
        }
        failures.extend(bad.into_iter().map(|x| format!("{}: {x}", case.id)));
    }
    eprintln!("{} SSE bodies, {cuts} cuts", cases.len());
    report(failures, cases.len());
}

fn own(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/openai")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Keep-alive comments, a `retry:` field and blank lines between events,
/// served a few bytes at a time.
#[tokio::test]
async fn keepalive_comments_are_skipped() {
    let reply = Reply::sse(own("keepalive-comments.sse")).chunked(7, Duration::from_micros(100));
    let server = Server::start(vec![reply]).await;
    let out = run(
        &spec(ProviderKind::Openrouter, &server),
        "openai/gpt-4o-mini",
        true,
    )
    .await;
    assert!(out.error.is_none(), "{:?}", out.error);
    let c = out.completion;
    assert_eq!(c.text, "Bonjour, le monde — ça va ? 🌍");
    assert_eq!(c.finish_reason, FinishReason::Stop);
    assert_eq!(c.usage.input_tokens, 12);
    assert_eq!(c.usage.output_tokens, 9);
    assert_eq!(c.usage.reported_cost_usd, Some(0.0000072));
}

/// A connection cut before the finish: the text so far arrives, then a
/// network error.
#[tokio::test]
async fn cut_stream_delivers_partial_text_then_fails() {
    let body = own("cut-before-done.sse");
    let text = String::from_utf8(body.clone()).unwrap();
    let cut = text.find("data: {\"id\":\"chatcmpl-cut\",\"object\":\"chat.completion.chunk\",\"created\":1760000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}").unwrap();
    let mut reply = Reply::sse(body).chunked(50, Duration::from_micros(100));
    reply.cut_after = Some(cut);
    let server = Server::start(vec![reply]).await;
    let out = run(&spec(ProviderKind::Openai, &server), "gpt-4o-mini", true).await;
    assert_eq!(
        out.completion.text,
        "The quick brown fox jumps over the lazy dog."
    );
    assert!(!out.saw_finish);
    let err = out.error.expect("a cut stream fails");
    assert_eq!(err.kind(), "network", "{err}");
    // The same body complete is fine (the fixture is not broken).
    let server = Server::start(vec![Reply::sse(own("cut-before-done.sse"))]).await;
    let out = run(&spec(ProviderKind::Openai, &server), "gpt-4o-mini", true).await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.completion.usage.output_tokens, 10);
}

/// A compatible server (DeepSeek-style `reasoning_content`) that ends the
/// body after the finish chunk, without `[DONE]` and without a final blank
/// line; no key configured, so no Authorization header is sent.
#[tokio::test]
async fn compatible_stream_without_done_marker() {
    let server = Server::start(vec![Reply::sse(own("compatible-no-done.sse"))]).await;
    let mut s = spec(ProviderKind::Compatible, &server);
    s.api_key = None;
    let out = run(&s, "deepseek-r1-distill-qwen-7b", true).await;
    assert!(out.error.is_none(), "{:?}", out.error);
    let c = out.completion;
    assert_eq!(c.thinking, "Two plus two is four.");
    assert_eq!(c.text, "4");
    assert_eq!(c.raw_finish_reason, "stop");
    assert_eq!(
        c.usage,
        Usage {
            input_tokens: 11,
            output_tokens: 8,
            ..Usage::default()
        }
    );
    let seen = server.requests();
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].header("authorization"), None);
}

/// An error object before any finish (OpenRouter's mid-stream error shape):
/// the text so far, then the provider's message.
#[tokio::test]
async fn in_stream_error_before_finish_fails_after_the_text() {
    // One piece: the error frame shares a network chunk with the text frames.
    let reply = Reply::sse(own("error-before-finish.sse")).chunked(1 << 16, Duration::ZERO);
    let server = Server::start(vec![reply]).await;
    let out = run(
        &spec(ProviderKind::Openrouter, &server),
        "anthropic/claude-sonnet-4.5",
        true,
    )
    .await;
    assert_eq!(out.completion.text, "Once upon a time");
    assert_eq!(
        out.error,
        Some(EngineError::InStream {
            message: "Provider disconnected".into()
        })
    );
}

async fn rate_limited(header: (&str, &str)) -> EngineError {
    let reply = Reply::json(429, own("rate-limit-429.json")).header(header.0, header.1);
    let server = Server::start(vec![reply]).await;
    let out = run(&spec(ProviderKind::Openai, &server), "gpt-4o-mini", true).await;
    assert!(out.deltas.is_empty());
    out.error.expect("429 fails")
}

#[tokio::test]
async fn rate_limit_retry_after_seconds() {
    let err = rate_limited(("retry-after", "7")).await;
    assert_eq!(err.kind(), "rate_limited");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert!(err.is_retryable());
    assert!(message_of(&err).starts_with("Rate limit reached for gpt-4o-mini"));
}

#[tokio::test]
async fn rate_limit_retry_after_ms() {
    let err = rate_limited(("retry-after-ms", "1500")).await;
    assert_eq!(err.kind(), "rate_limited");
    assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
}
