//! `quorum exec` as a whole process: one JSON task on stdin, one JSON result
//! on stdout, and one test per exit code.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use support::{Reply, Server};

struct Run {
    out: Output,
    dir: tempfile::TempDir,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.out.status.code()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.out.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}\n{}",
                String::from_utf8_lossy(&self.out.stdout),
                String::from_utf8_lossy(&self.out.stderr)
            )
        })
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).to_string()
    }
}

fn exec(task: &str, config: Option<&str>, env: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    if let Some(c) = config {
        std::fs::write(&cfg, c).unwrap();
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quorum"));
    cmd.arg("exec")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("QUORUM_DATA_DIR", dir.path())
        .env("QUORUM_CONFIG", &cfg)
        .env("QUORUM_MOCK_TPS", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(task.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run { out, dir }
}

const RESULT_KEYS: &[&str] = &[
    "status",
    "output",
    "task_id",
    "model",
    "execution_time_seconds",
    "tokens_used",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "cost_source",
    "timestamp",
    "exit_code",
    "error",
];

#[test]
fn exit_0_success_with_every_field() {
    let task = json!({
        "task_id": "t-1", "title": "Arithmetic", "description": "What is 2+2?",
        "system": "Answer briefly.", "model": "mock/alpha", "max_tokens": 64,
        "temperature": 0.2, "session_id": "exec-session", "source_agent": "harness",
        "trace_id": "0af7651916cd43dd8448eb211c80319c"
    });
    let r = exec(&task.to_string(), None, &[]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    let v = r.json();
    for k in RESULT_KEYS {
        assert!(v.get(*k).is_some(), "missing {k}: {v}");
    }
    assert_eq!(v["status"], "success");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["task_id"], "t-1");
    assert_eq!(v["model"], "mock/alpha");
    assert!(v["output"].as_str().unwrap().contains('4'), "{v}");
    assert_eq!(
        v["tokens_used"].as_u64().unwrap(),
        v["prompt_tokens"].as_u64().unwrap() + v["completion_tokens"].as_u64().unwrap()
    );
    assert!(v["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(v["cost_usd"], 0.0);
    assert_eq!(v["cost_source"], "computed");
    assert!(v["execution_time_seconds"].as_f64().unwrap() >= 0.0);
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(v["error"].is_null());
    assert_eq!(v["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert!(
        v.get("results").is_none(),
        "one model: no per-model results"
    );
    // The ledger row carries the trace, session and agent.
    let c = rusqlite::Connection::open(r.dir.path().join("ledger.sqlite3")).unwrap();
    let row: (String, String, String) = c
        .query_row(
            "SELECT trace_id, session_id, source_agent FROM requests",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        row,
        (
            "0af7651916cd43dd8448eb211c80319c".into(),
            "exec-session".into(),
            "harness".into()
        )
    );
}

#[test]
fn several_models_give_per_model_results() {
    let task = json!({"task_id": 9, "prompt": "What is 3+4?",
                      "models": ["mock/alpha", "mock/gamma", "mock/contrarian"]});
    let r = exec(&task.to_string(), None, &[]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    let v = r.json();
    assert_eq!(v["task_id"], "9");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[2]["target"], "mock/contrarian");
    let sum: u64 = results
        .iter()
        .map(|x| x["usage"]["output_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(v["completion_tokens"].as_u64().unwrap(), sum);
}

#[test]
fn exit_1_execution_error() {
    let r = exec(
        r#"{"task_id": "t-2", "prompt": "this will fail", "model": "mock/flaky"}"#,
        None,
        &[("QUORUM_MAX_RETRIES", "0")],
    );
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    let v = r.json();
    assert_eq!(v["status"], "error");
    assert_eq!(v["exit_code"], 1);
    assert_eq!(v["task_id"], "t-2");
    assert_eq!(v["error"]["kind"], "server");
    assert!(r.stderr().contains("mock/flaky"), "{}", r.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_1_upstream_auth_failure_never_shows_the_key() {
    let key = "sk-quorum-test-FAKEKEY-0123456789abcdef";
    let up = Server::start(vec![Reply::json(
        401,
        r#"{"error":{"message":"Incorrect API key provided: sk-quorum-test-FAKEKEY-0123456789abcdef"}}"#,
    )])
    .await;
    let base = format!("{}/v1", up.url);
    let r = tokio::task::spawn_blocking(move || {
        exec(
            r#"{"prompt": "hi", "model": "openai/gpt-4o-mini"}"#,
            None,
            &[("OPENAI_API_KEY", key), ("OPENAI_BASE_URL", &base)],
        )
    })
    .await
    .unwrap();
    assert_eq!(r.code(), Some(1));
    assert_eq!(r.json()["error"]["kind"], "auth");
    let all = format!("{}{}", String::from_utf8_lossy(&r.out.stdout), r.stderr());
    assert!(!all.contains(key), "{all}");
}

#[test]
fn exit_2_configuration_error() {
    let r = exec(
        r#"{"prompt": "hi", "model": "mock/alpha"}"#,
        Some("[providers.openai]\nbogus_key = 1\n"),
        &[],
    );
    assert_eq!(r.code(), Some(2), "{}", r.stderr());
    let v = r.json();
    assert_eq!(v["status"], "error");
    assert_eq!(v["exit_code"], 2);
    assert_eq!(v["error"]["kind"], "config");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bogus_key"),
        "{v}"
    );
    // Governance is configuration too: refused before sending.
    let r = exec(
        r#"{"prompt": "hi", "model": "mock/beta"}"#,
        None,
        &[("QUORUM_ALLOWED_MODELS", "mock/alpha")],
    );
    assert_eq!(r.code(), Some(2), "{}", r.stderr());
    assert_eq!(r.json()["error"]["kind"], "not_allowed");
    // A budget whose cap the projection crosses: refused before sending.
    let r = exec(
        r#"{"prompt": "hi", "model": "openai/gpt-4o-mini", "max_tokens": 1000}"#,
        Some("[budget]\ndaily_usd = 0.0000001\n"),
        &[
            ("OPENAI_API_KEY", "sk-test"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),
        ],
    );
    assert_eq!(r.code(), Some(2), "{}", r.stderr());
    assert_eq!(r.json()["error"]["kind"], "budget");
}

#[test]
fn exit_3_invalid_task_names_the_field() {
    let cases = [
        ("", "task"),
        ("{not json", "task"),
        ("[1, 2]", "task"),
        (r#"{"model": "mock/alpha"}"#, "prompt"),
        (
            r#"{"prompt": "hi", "model": "mock/alpha", "max_tokens": "ten"}"#,
            "max_tokens",
        ),
        (
            r#"{"prompt": "hi", "model": "mock/alpha", "max_tokens": 0}"#,
            "max_tokens",
        ),
        (
            r#"{"prompt": "hi", "model": "mock/alpha", "temperature": 5}"#,
            "temperature",
        ),
        (r#"{"prompt": "hi", "model": 7}"#, "model"),
        (r#"{"prompt": "hi", "models": "mock/alpha"}"#, "models"),
        (
            r#"{"prompt": "hi", "models": ["mock/alpha", 3]}"#,
            "models[1]",
        ),
        (r#"{"prompt": "hi", "model": "mock/alpah"}"#, "model"),
        (r#"{"prompt": "hi"}"#, "model"),
        (
            r#"{"prompt": "hi", "model": "mock/alpha", "trace_id": "xyz"}"#,
            "trace_id",
        ),
        (r#"{"prompt": 42, "model": "mock/alpha"}"#, "prompt"),
    ];
    for (task, field) in cases {
        let r = exec(task, None, &[]);
        assert_eq!(r.code(), Some(3), "{task}: {}", r.stderr());
        let v = r.json();
        assert_eq!(v["exit_code"], 3, "{task}");
        assert_eq!(v["status"], "error");
        assert_eq!(v["error"]["kind"], "invalid_task");
        assert_eq!(v["error"]["field"], field, "{task}: {v}");
        let e = r.stderr();
        assert!(
            e.contains(&format!("invalid task: {field}:")),
            "{task}: {e}"
        );
    }
    // The caller's id is kept even when the task is invalid.
    let r = exec(r#"{"task_id": "keep-me", "prompt": ""}"#, None, &[]);
    assert_eq!(r.code(), Some(3));
    assert_eq!(r.json()["task_id"], "keep-me");
}
