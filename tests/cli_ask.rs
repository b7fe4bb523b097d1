//! `quorum ask` as a whole process: stdout, stderr and exit codes, against the
//! mock provider and against a real local HTTP server speaking OpenAI's wire.

mod support;

use std::process::{Command, Output, Stdio};

use support::{Reply, Server};

const FAKE_KEY: &str = "sk-quorum-test-FAKEKEY-0123456789abcdef";

fn quorum(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quorum"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", data.path())
        .env("QUORUM_DATA_DIR", data.path())
        .env("QUORUM_CONFIG", data.path().join("none.toml"))
        .env("QUORUM_MOCK_TPS", "0")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(s) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[test]
fn mock_answer_streams_to_stdout() {
    let out = quorum(&["ask", "-m", "mock/alpha", "What is 2+2?"], &[], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains('4'), "{}", text(&out.stdout));
}

#[test]
fn prompt_from_stdin_and_json_object() {
    let out = quorum(
        &["ask", "-m", "mock/thinker", "--json"],
        &[],
        Some("Is the sky blue?"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["provider"], "mock");
    assert_eq!(v["model"], "thinker");
    assert_eq!(v["finish_reason"], "stop");
    assert!(!v["thinking"].as_str().unwrap().is_empty());
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert!(v["error"].is_null());
    for k in [
        "text",
        "tool_calls",
        "raw_finish_reason",
        "cost_usd",
        "ttft_ms",
        "latency_ms",
    ] {
        assert!(v.get(k).is_some(), "missing {k}");
    }
}

#[test]
fn unknown_model_is_a_usage_error_with_suggestions() {
    let out = quorum(&["ask", "-m", "mock/alpah", "hi"], &[], None);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("mock/alpha"), "{err}");
}

#[test]
fn no_model_and_no_prompt_are_usage_errors() {
    assert_eq!(quorum(&["ask", "hi"], &[], None).status.code(), Some(2));
    assert_eq!(
        quorum(&["ask", "-m", "mock/alpha"], &[], Some("  "))
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        quorum(&["ask", "--bogus"], &[], None).status.code(),
        Some(2)
    );
}

#[test]
fn default_model_from_env() {
    let out = quorum(
        &["ask", "hello"],
        &[("QUORUM_DEFAULT_MODEL", "mock/gamma")],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_wire_over_http_and_auth_failure() {
    let body = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\n\
                data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n\
                data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n\
                data: [DONE]\n\n";
    let ok = Server::start(vec![Reply::sse(body)]).await;
    let base = format!("{}/v1", ok.url);
    let out = tokio::task::spawn_blocking(move || {
        quorum(
            &["ask", "-m", "openai/gpt-4o-mini", "--json", "hi"],
            &[("OPENAI_API_KEY", FAKE_KEY), ("OPENAI_BASE_URL", &base)],
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["text"], "Hello");
    assert_eq!(v["usage"]["input_tokens"], 5);
    let seen = ok.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {FAKE_KEY}").as_str())
    );
    assert!(seen[0].header("traceparent").is_some());

    // A 401 whose body echoes the key: exit 1, one-line reason, key never shown.
    let bad = Server::start(vec![Reply::json(
        401,
        format!("{{\"error\":{{\"message\":\"Incorrect API key provided: {FAKE_KEY}\",\"type\":\"invalid_request_error\"}}}}"),
    )])
    .await;
    let base = format!("{}/v1", bad.url);
    let out = tokio::task::spawn_blocking(move || {
        quorum(
            &["ask", "-m", "openai/gpt-4o-mini", "hi"],
            &[("OPENAI_API_KEY", FAKE_KEY), ("OPENAI_BASE_URL", &base)],
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("authentication failed"), "{err}");
    assert!(
        !err.contains(FAKE_KEY) && !text(&out.stdout).contains(FAKE_KEY),
        "key leaked: {err}"
    );
    assert_eq!(bad.count(), 1, "401 must not be retried");
}
