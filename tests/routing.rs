//! Routing over real HTTP on 127.0.0.1: retries and Retry-After, the
//! first-token rule, timeouts, the circuit breaker, fallbacks, concurrency
//! and rate limits, cancellation, governance and trace context. Engines are
//! built from config text, as a user would write it.

mod support;

use std::time::Duration;

use llm_quorum::config::{self, Overrides};
use llm_quorum::engine::error::TimeoutPhase;
use llm_quorum::engine::request::Tool;
use llm_quorum::engine::{
    ChatRequest, Completion, Engine, EngineError, FinishReason, RunHandle, RunOptions, StreamEvent,
};
use support::{Reply, Server};
use tokio::time::Instant;

const KEY: &str = "sk-routing-test";

/// An engine from config text; `{A}`, `{B}` are replaced by server URLs.
fn engine(text: &str, urls: &[&str]) -> Engine {
    let mut text = text.to_string();
    for (i, u) in urls.iter().enumerate() {
        let name = ["{A}", "{B}"][i];
        text = text.replace(name, u);
    }
    let env = |k: &str| (k == "TEST_KEY").then(|| KEY.to_string());
    let cfg = config::load_text(None, &text, &Overrides::default(), &env)
        .unwrap_or_else(|e| panic!("{e}"));
    Engine::new(cfg.engine_config(&env).unwrap()).unwrap()
}

/// A provider `p` of kind openai at `{A}`, plus whatever `extra` adds.
fn one_provider(extra: &str) -> String {
    format!(
        "[providers.p]\nkind = \"openai\"\nbase_url = \"{{A}}/v1\"\napi_key_env = \"TEST_KEY\"\n{extra}"
    )
}

fn chunk(content: &str) -> String {
    let v = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]
    });
    format!("data: {v}\n\n")
}

/// A complete OpenAI stream of `words`.
fn sse_body(words: &[&str]) -> String {
    let mut s: String = words.iter().map(|w| chunk(w)).collect();
    let fin = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    });
    s.push_str(&format!("data: {fin}\n\n"));
    let usage = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m", "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    });
    s.push_str(&format!("data: {usage}\n\n"));
    s.push_str("data: [DONE]\n\n");
    s
}

fn ok_stream() -> Reply {
    Reply::sse(sse_body(&["Hello", " world"]))
}

fn ok_json() -> Reply {
    Reply::json(
        200,
        serde_json::json!({
            "id": "chatcmpl-2", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Whole answer"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        })
        .to_string(),
    )
}

fn error(status: u16) -> Reply {
    Reply::json(
        status,
        format!(r#"{{"error":{{"message":"status {status}","type":"x"}}}}"#),
    )
}

/// The first event of `sse_body(["Hel", "lo"])` and then a cut or a stall.
fn first_token_then(stall: Duration) -> Reply {
    let body = sse_body(&["Hel", "lo"]);
    let first = chunk("Hel").len();
    let mut r = Reply::sse(body);
    r.cut_after = Some(first);
    r.stall = stall;
    r
}

/// Every event per target, and the final completions.
async fn drain(h: RunHandle) -> (Vec<Vec<StreamEvent>>, Vec<Completion>) {
    drain_after(h, Vec::new()).await
}

/// [`drain`] for a run whose first events were already read (`seen`).
async fn drain_after(
    mut h: RunHandle,
    seen: Vec<(usize, StreamEvent)>,
) -> (Vec<Vec<StreamEvent>>, Vec<Completion>) {
    let n = h.targets.len();
    let mut events = vec![Vec::new(); n];
    let mut done: Vec<Option<Completion>> = vec![None; n];
    for (t, ev) in seen {
        if let StreamEvent::Finished(c) | StreamEvent::Failed(c) = &ev {
            done[t] = Some((**c).clone());
        }
        events[t].push(ev);
    }
    let fut = async {
        while let Some(ev) = h.recv().await {
            if let StreamEvent::Finished(c) | StreamEvent::Failed(c) = &ev.event {
                done[ev.target] = Some((**c).clone());
            }
            events[ev.target].push(ev.event);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("run finished in time");
    let done = done
        .into_iter()
        .map(|c| c.expect("every target ends"))
        .collect();
    (events, done)
}

fn prompt() -> ChatRequest {
    ChatRequest::from_prompt("Say hello")
}

fn retries(ev: &[StreamEvent]) -> Vec<(u32, Duration, String)> {
    ev.iter()
        .filter_map(|e| match e {
            StreamEvent::Retrying {
                attempt,
                wait,
                reason,
                ..
            } => Some((*attempt, *wait, reason.clone())),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Retries

#[tokio::test]
async fn rate_limited_429_with_retry_after_waits_about_a_second_then_succeeds() {
    let server = Server::start(vec![error(429).header("retry-after", "1"), ok_stream()]).await;
    let e = engine(&one_provider(""), &[&server.url]);
    let t0 = Instant::now();
    let (ev, done) = drain(e.run(prompt(), vec!["p/m".into()], RunOptions::default())).await;
    let took = t0.elapsed();
    let c = &done[0];
    assert!(c.error.is_none(), "{:?}", c.error);
    assert_eq!(c.text, "Hello world");
    assert_eq!(c.retries, 1);
    assert_eq!(server.count(), 2);
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let r = retries(&ev[0]);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, 2);
    assert_eq!(r[0].1, Duration::from_secs(1));
    assert!(
        r[0].2.contains("429") && r[0].2.contains("Retry-After"),
        "{r:?}"
    );
}

#[tokio::test]
async fn server_errors_503_503_200_succeed_on_the_third_attempt() {
    let server = Server::start(vec![error(503), error(503), ok_stream()]).await;
    let e = engine(
        &one_provider("[providers.p.retry]\nmax_attempts = 3\nbase_delay_ms = 20\n"),
        &[&server.url],
    );
    let (ev, done) = drain(e.run(prompt(), vec!["p/m".into()], RunOptions::default())).await;
    assert!(done[0].error.is_none(), "{:?}", done[0].error);
    assert_eq!(done[0].text, "Hello world");
    assert_eq!(server.count(), 3);
    let r = retries(&ev[0]);
    assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), [2, 3]);
    assert!(r.iter().all(|x| x.1 <= Duration::from_millis(40)), "{r:?}");
    let starts = ev[0]
        .iter()
        .filter(|e| matches!(e, StreamEvent::Started { .. }))
        .count();
    assert_eq!(starts, 3);
}

#[tokio::test]
async fn unauthorized_401_sends_exactly_one_request() {
    let server = Server::start(vec![error(401), ok_stream()]).await;
    let e = engine(
        &one_provider("[providers.p.retry]\nmax_attempts = 5\nbase_delay_ms = 1\n"),
        &[&server.url],
    );
    let (ev, done) = drain(e.run(prompt(), vec!["p/m".into()], RunOptions::default())).await;
    assert_eq!(done[0].error.as_ref().unwrap().kind(), "auth");
    assert_eq!(server.count(), 1);
    assert!(retries(&ev[0]).is_empty());
}

#[tokio::test]
async fn fail_fast_on_429_does_not_wait() {
    let server = Server::start(vec![error(429).header("retry-after", "5"), ok_stream()]).await;
    let e = engine(
        &one_provider("[providers.p.retry]\nfail_fast_on_429 = true\n"),
        &[&server.url],
    );
    let t0 = Instant::now();
    let (ev, done) = drain(e.run(prompt(), vec!["p/m".into()], RunOptions::default())).await;
    assert_eq!(done[0].error.as_ref().unwrap().kind(), "rate_limited");
    assert_eq!(server.count(), 1);
    assert!(retries(&ev[0]).is_empty());
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_cut_after_the_first_token_is_not_retried_nor_failed_over_and_keeps_the_partial_text() {
    let a = Server::start(vec![first_token_then(Duration::ZERO), ok_stream()]).await;
    let b = Server::start(vec![ok_stream()]).await;
    let text = format!(
        "{}\n[providers.q]\nkind = \"openai\"\nbase_url = \"{{B}}/v1\"\napi_key_env = \"TEST_KEY\"\n\
         [fallbacks]\n\"p/m\" = [\"q/m\"]\n",
        one_provider("[providers.p.retry]\nmax_attempts = 3\nbase_delay_ms = 1\n")
    );
    let e = engine(&text, &[&a.url, &b.url]);
    let (ev, done) = drain(e.run(prompt(), vec!["p/m".into()], RunOptions::default())).await;
    let c = &done[0];
    assert_eq!(c.text, "Hel", "the partial text is kept");
    assert_eq!(c.finish_reason, FinishReason::Error);
    assert_eq!(c.error.as_ref().unwrap().kind(), "network", "{:?}", c.error);
    assert_eq!(a.count(), 1, "not retried");
    assert_eq!(b.count(), 0, "not failed over");
    assert!(retries(&ev[0]).is_empty());
    assert!(!ev[0]
        .iter()
        .any(|e| matches!(e, StreamEvent::FellBack { .. })));
}

/// A plain `http://` upstream that redirects: the engine's own hyper client leaves
/// the redirect to reqwest, which sends the request again and follows it.
#[tokio::test]
async fn a_redirect_from_a_plain_http_upstream_is_followed() {
    let b = Server::start(vec![ok_stream()]).await;
    let to = format!("{}/v1/chat/completions", b.url);
    let a = Server::start(vec![Reply::json(307, "").header("location", &to)]).await;
    let e = engine(&one_provider(""), &[&a.url]);
    let (_, done) = drain(e.run(prompt(), vec!["p/m".into()], RunOptions::default())).await;
    assert!(done[0].error.is_none(), "{:?}", done[0].error);
    assert_eq!(done[0].text, "Hello world");
    assert_eq!(a.count(), 2, "hyper's request, then reqwest's");
    for r in a.requests() {
        let ua = r.header("user-agent").unwrap_or_default();
        assert!(ua.starts_with("llm-quorum/"), "{ua}");
    }
    assert_eq!(b.count(), 1);
    let seen = b.requests();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].json()["model"], "m");
}

// ---------------------------------------------------------------------------
// Timeouts

#[tokio::test]
async fn a_stall_after_the_first_token_trips_the_idle_timeout() {
    let server = Server::start(vec![first_token_then(Duration::from_secs(10))]).await;
    let e = engine(
        &one_provider("[providers.p.timeouts]\nidle_secs = 0.3\n"),
        &[&server.url],
    );
    let t0 = Instant::now();
    let (_, done) = drain(e.run(prompt(), vec!["p/m".into()], RunOptions::default())).await;
    let took = t0.elapsed();
    let c = &done[0];
    assert_eq!(c.text, "Hel");
    match c.error.as_ref().unwrap() {
        EngineError::Timeout { phase, after } => {
            assert_eq!(*phase, TimeoutPhase::Idle);
            assert_eq!(*after, Duration::from_millis(300));
        }
        other => panic!("expected an idle timeout, got {other:?}"),
    }
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(server.count(), 1);
}

/// The idle timer is armed once and moved on lazily: a stream whose pieces keep
/// coming, each well inside the idle limit, never trips it, however long the whole
/// stream lasts (here about four idle limits).
#[tokio::test]
async fn a_steady_stream_longer_than_the_idle_limit_never_trips_it() {
    let words: Vec<String> = (0..24).map(|i| format!("w{i} ")).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let body = sse_body(&words);
    // 24 text events and the rest, in about 40 pieces 60 ms apart: ~2.4 s in all.
    let piece = body.len() / 40 + 1;
    let server = Server::start(vec![
        Reply::sse(body).chunked(piece, Duration::from_millis(60))
    ])
    .await;
    let e = engine(
        &one_provider("[providers.p.timeouts]\nidle_secs = 0.6\n"),
        &[&server.url],
    );
    let t0 = Instant::now();
    let (_, done) = drain(e.run(prompt(), vec!["p/m".into()], RunOptions::default())).await;
    assert!(done[0].error.is_none(), "{:?}", done[0].error);
    assert_eq!(done[0].text, words.concat());
    assert!(
        t0.elapsed() > Duration::from_millis(1200),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn no_first_token_in_time_is_a_first_token_timeout_and_is_retried() {
    let mut slow = ok_stream();
    slow.delay = Duration::from_secs(5);
    let server = Server::start(vec![slow, ok_stream()]).await;
    let e = engine(
        &one_provider(
            "[providers.p.timeouts]\nfirst_token_secs = 0.3\n[providers.p.retry]\nbase_delay_ms = 1\n",
        ),
        &[&server.url],
    );
    let (ev, done) = drain(e.run(prompt(), vec!["p/m".into()], RunOptions::default())).await;
    assert!(done[0].error.is_none(), "{:?}", done[0].error);
    assert_eq!(done[0].text, "Hello world");
    let r = retries(&ev[0]);
    assert_eq!(r.len(), 1);
    assert!(r[0].2.contains("timeout"), "{r:?}");
}

// ---------------------------------------------------------------------------
// Circuit breaker

#[tokio::test]
async fn the_breaker_opens_fails_fast_and_half_opens_one_probe() {
    let server = Server::start_with(|i| {
        if i < 2 {
            error(500)
        } else {
            let mut r = ok_stream();
            r.delay = Duration::from_millis(150);
            r
        }
    })
    .await;
    let e = engine(
        &one_provider(
            "[providers.p.retry]\nmax_attempts = 1\n[providers.p.breaker]\nfailure_threshold = 2\ncooldown_secs = 0.4\n",
        ),
        &[&server.url],
    );
    let run = |n: usize| e.run(prompt(), vec!["p/m".into(); n], RunOptions::default());
    // Two consecutive failures open it.
    for _ in 0..2 {
        let (_, done) = drain(run(1)).await;
        assert_eq!(done[0].error.as_ref().unwrap().kind(), "server");
    }
    assert_eq!(server.count(), 2);
    // Open: fail fast, nothing sent, and the face hears why.
    let t0 = Instant::now();
    let (ev, done) = drain(run(1)).await;
    assert!(t0.elapsed() < Duration::from_millis(300));
    assert_eq!(done[0].error.as_ref().unwrap().kind(), "breaker_open");
    assert!(ev[0]
        .iter()
        .any(|e| matches!(e, StreamEvent::BreakerOpen { provider } if provider == "p")));
    assert_eq!(server.count(), 2);
    // After the cooldown exactly one probe goes through; the other fails fast.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (_, done) = drain(run(2)).await;
    let kinds: Vec<&str> = done
        .iter()
        .map(|c| c.error.as_ref().map(|e| e.kind()).unwrap_or("ok"))
        .collect();
    assert!(
        kinds.contains(&"ok") && kinds.contains(&"breaker_open"),
        "{kinds:?}"
    );
    assert_eq!(server.count(), 3);
    // The probe succeeded: closed again.
    let (_, done) = drain(run(2)).await;
    assert!(done.iter().all(|c| c.error.is_none()));
    assert_eq!(server.count(), 5);
}

// ---------------------------------------------------------------------------
// Fallbacks

#[tokio::test]
async fn a_fallback_reaches_the_second_provider_streamed_and_whole() {
    let a = Server::start(vec![error(500)]).await;
    let b = Server::start_with(|i| if i == 0 { ok_stream() } else { ok_json() }).await;
    let text = format!(
        "{}\n[providers.q]\nkind = \"openai\"\nbase_url = \"{{B}}/v1\"\napi_key_env = \"TEST_KEY\"\n\
         [aliases]\nmain = \"p/m\"\n[fallbacks]\n\"p/m\" = [\"q/n\"]\n",
        one_provider(
            "[providers.p.retry]\nmax_attempts = 2\nbase_delay_ms = 1\n[providers.p.breaker]\nfailure_threshold = 0\n"
        )
    );
    let e = engine(&text, &[&a.url, &b.url]);
    // Streamed, through an alias: the chain of the model it names applies.
    let (ev, done) = drain(e.run(prompt(), vec!["main".into()], RunOptions::default())).await;
    let c = &done[0];
    assert!(c.error.is_none(), "{:?}", c.error);
    assert_eq!((c.provider.as_str(), c.model.as_str()), ("q", "n"));
    assert_eq!(c.text, "Hello world");
    assert_eq!(c.fell_back_from.as_deref(), Some("main"));
    assert!(ev[0].iter().any(|e| matches!(e,
        StreamEvent::FellBack { from, to, reason } if from == "main" && to == "q/n" && reason.contains("500"))));
    assert_eq!(a.count(), 2, "the first provider's retries come first");
    assert_eq!(b.count(), 1);
    assert_eq!(b.requests()[0].json()["model"], "n");
    // Whole response.
    let opts = RunOptions {
        stream: false,
        ..Default::default()
    };
    let (_, done) = drain(e.run(prompt(), vec!["p/m".into()], opts)).await;
    assert!(done[0].error.is_none(), "{:?}", done[0].error);
    assert_eq!(done[0].text, "Whole answer");
    assert_eq!(done[0].provider, "q");
    // Fallbacks can be switched off per run.
    let opts = RunOptions {
        fallbacks: false,
        ..Default::default()
    };
    let (_, done) = drain(e.run(prompt(), vec!["p/m".into()], opts)).await;
    assert_eq!(done[0].error.as_ref().unwrap().kind(), "server");
}

// ---------------------------------------------------------------------------
// Limits

#[tokio::test]
async fn a_concurrency_limit_of_3_is_never_exceeded_under_50_requests() {
    let server = Server::start(vec![ok_stream().chunked(24, Duration::from_millis(2))]).await;
    let e = engine(&one_provider("max_concurrency = 3\n"), &[&server.url]);
    let (ev, done) = drain(e.run(prompt(), vec!["p/m".into(); 50], RunOptions::default())).await;
    assert!(done
        .iter()
        .all(|c| c.error.is_none() && c.text == "Hello world"));
    assert_eq!(server.count(), 50);
    let max = server
        .max_in_flight
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(max, 3, "never more than 3, and the limit was reached");
    let queued = ev
        .iter()
        .filter(|e| e.iter().any(|x| matches!(x, StreamEvent::Queued)))
        .count();
    assert!(queued >= 40, "waiting targets say so ({queued})");
}

#[tokio::test]
async fn a_429_halves_the_allowed_concurrency_and_success_grows_it_back() {
    let server = Server::start(vec![error(429), ok_stream()]).await;
    let e = engine(
        &one_provider("max_concurrency = 4\n[providers.p.retry]\nbase_delay_ms = 1\n"),
        &[&server.url],
    );
    let (_, done) = drain(e.run(prompt(), vec!["p/m".into()], RunOptions::default())).await;
    assert!(done[0].error.is_none());
    // 4 -> 2 on the 429, then +1 for the success.
    assert_eq!(e.route("p").limiter.concurrency_limit(), Some(3));
}

#[tokio::test]
async fn requests_per_minute_queue_and_a_queued_target_can_be_cancelled() {
    let server = Server::start(vec![ok_stream()]).await;
    let e = engine(&one_provider("requests_per_minute = 1\n"), &[&server.url]);
    let mut h = e.run(
        prompt(),
        vec!["p/m".into(), "p/m".into()],
        RunOptions::default(),
    );
    // One target goes, the other waits a minute for the bucket: it says "queued".
    let mut seen = Vec::new();
    let q = loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), h.recv())
            .await
            .unwrap()
            .expect("a target queues");
        let queued = matches!(ev.event, StreamEvent::Queued).then_some(ev.target);
        seen.push((ev.target, ev.event));
        if let Some(q) = queued {
            break q;
        }
    };
    h.cancel_target(q);
    let (_, done) = drain_after(h, seen).await;
    assert_eq!(done[q].finish_reason, FinishReason::Cancelled);
    assert!(done[1 - q].error.is_none());
    assert_eq!(server.count(), 1);
}

// ---------------------------------------------------------------------------
// Cancellation

#[tokio::test]
async fn cancelling_a_run_closes_its_connection_promptly() {
    let server = Server::start(vec![first_token_then(Duration::from_secs(10))]).await;
    let e = engine(&one_provider(""), &[&server.url]);
    let mut h = e.run(prompt(), vec!["p/m".into()], RunOptions::default());
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), h.recv())
            .await
            .unwrap()
            .unwrap();
        if matches!(ev.event, StreamEvent::TextDelta(_)) {
            break;
        }
    }
    let t0 = Instant::now();
    h.cancel();
    let (_, done) = drain(h).await;
    assert_eq!(done[0].finish_reason, FinishReason::Cancelled);
    assert_eq!(done[0].text, "Hel");
    while server.aborted.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "the server saw the client go away"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn cancelling_one_target_leaves_the_others_streaming() {
    let a = Server::start(vec![first_token_then(Duration::from_secs(10))]).await;
    let b = Server::start(vec![ok_stream().chunked(8, Duration::from_millis(20))]).await;
    let text = format!(
        "{}\n[providers.q]\nkind = \"openai\"\nbase_url = \"{{B}}/v1\"\napi_key_env = \"TEST_KEY\"\n",
        one_provider("")
    );
    let e = engine(&text, &[&a.url, &b.url]);
    let mut h = e.run(
        prompt(),
        vec!["p/m".into(), "q/m".into()],
        RunOptions::default(),
    );
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), h.recv())
            .await
            .unwrap()
            .unwrap();
        if ev.target == 0 && matches!(ev.event, StreamEvent::TextDelta(_)) {
            break;
        }
    }
    h.cancel_target(0);
    let (_, done) = drain(h).await;
    assert_eq!(done[0].finish_reason, FinishReason::Cancelled);
    assert!(done[1].error.is_none());
    assert_eq!(done[1].text, "Hello world");
    assert_eq!(a.aborted.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(b.aborted.load(std::sync::atomic::Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------
// Refusals before sending

#[tokio::test]
async fn allowed_models_refuses_before_any_request_is_made() {
    let server = Server::start(vec![ok_stream()]).await;
    let e = engine(
        &format!("allowed_models = [\"p/allowed-*\"]\n{}", one_provider("")),
        &[&server.url],
    );
    let err = e.check_targets(&["p/other".into()]).unwrap_err();
    assert_eq!(err.kind(), "not_allowed");
    assert!(err.to_string().contains("[p/allowed-*]"), "{err}");
    let (_, done) = drain(e.run(prompt(), vec!["p/other".into()], RunOptions::default())).await;
    assert_eq!(done[0].error.as_ref().unwrap().kind(), "not_allowed");
    assert_eq!(server.count(), 0);
    // An allowed one goes through.
    let (_, done) = drain(e.run(prompt(), vec!["p/allowed-1".into()], RunOptions::default())).await;
    assert!(done[0].error.is_none());
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn a_missing_capability_is_refused_before_sending_and_default_max_tokens_apply() {
    let server = Server::start(vec![ok_stream()]).await;
    let e = engine(
        &one_provider(
            "[models.\"p/m\"]\nmax_tokens = 77\n[models.\"p/m\".capabilities]\ntools = false\n",
        ),
        &[&server.url],
    );
    let mut req = prompt();
    req.tools.push(Tool {
        name: "get_weather".into(),
        description: String::new(),
        parameters: serde_json::json!({"type": "object"}),
    });
    let (_, done) = drain(e.run(req, vec!["p/m".into()], RunOptions::default())).await;
    let err = done[0].error.as_ref().unwrap().to_string();
    assert!(err.contains("does not support tools"), "{err}");
    assert_eq!(server.count(), 0);
    let (_, done) = drain(e.run(prompt(), vec!["p/m".into()], RunOptions::default())).await;
    assert!(done[0].error.is_none());
    assert_eq!(server.requests()[0].json()["max_completion_tokens"], 77);
    let mut req = prompt();
    req.max_tokens = Some(5);
    drain(e.run(req, vec!["p/m".into()], RunOptions::default())).await;
    assert_eq!(server.requests()[1].json()["max_completion_tokens"], 5);
}

// ---------------------------------------------------------------------------
// Context propagation

#[tokio::test]
async fn every_request_carries_the_runs_traceparent_and_a_request_id() {
    let server = Server::start(vec![error(500), ok_stream()]).await;
    let e = engine(
        &one_provider("[providers.p.retry]\nbase_delay_ms = 1\n"),
        &[&server.url],
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let opts = RunOptions {
        trace_id: Some(trace.into()),
        session_id: Some("s-1".into()),
        source_agent: Some("tester".into()),
        ..Default::default()
    };
    let h = e.run(prompt(), vec!["p/m".into()], opts);
    assert_eq!(h.trace_id, trace);
    let (_, done) = drain(h).await;
    assert!(done[0].error.is_none());
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    let mut ids = Vec::new();
    for s in &seen {
        let tp = s.header("traceparent").expect("traceparent");
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], trace);
        assert_eq!(parts[2].len(), 16);
        assert!(parts[2].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(parts[3], "01");
        ids.push(s.header("x-request-id").expect("x-request-id").to_string());
        assert_eq!(
            s.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
    }
    assert_ne!(ids[0], ids[1], "each attempt has its own request id");
}

#[tokio::test]
async fn offline_mock_flaky_falls_back_and_never_trips_a_breaker() {
    let e = engine(
        "[fallbacks]\n\"mock/flaky\" = [\"mock/alpha\"]\n[providers.mock.retry]\nbase_delay_ms = 1\n",
        &[],
    );
    // 3 runs x 3 failed attempts: past the default breaker threshold of 5.
    for _ in 0..3 {
        let (ev, done) = drain(e.run(
            ChatRequest::from_prompt("please fail: what is 2+2?"),
            vec!["mock/flaky".into()],
            RunOptions::default(),
        ))
        .await;
        let c = &done[0];
        assert!(c.error.is_none(), "{:?}", c.error);
        assert_eq!(c.model, "alpha");
        assert_eq!(c.fell_back_from.as_deref(), Some("mock/flaky"));
        assert_eq!(
            retries(&ev[0]).len(),
            2,
            "flaky is retried before falling back"
        );
        assert!(!ev[0]
            .iter()
            .any(|e| matches!(e, StreamEvent::BreakerOpen { .. })));
    }
}
