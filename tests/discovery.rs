//! Model discovery over real HTTP: Ollama's installed models, an OpenAI-style
//! list with the key carried in a header, a failing provider that stays out of
//! the listing without leaking its key, and `quorum models --discover`.

mod support;

use std::time::Duration;

use llm_quorum::engine::discovery::{discover_all, list_models};
use llm_quorum::engine::provider::{ProviderKind, ProviderSpec, Secret};
use support::{Reply, Server};

const KEY: &str = "sk-discovery-test-KEY-1234567890";

fn spec(name: &str, kind: ProviderKind, url: &str, key: Option<&str>) -> ProviderSpec {
    let mut s = ProviderSpec::new(name, kind);
    s.base_url = url.to_string();
    s.api_key = key.map(Secret::new);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_tags_and_an_openai_list_with_the_key_in_a_header() {
    let ollama = Server::start(vec![Reply::json(
        200,
        r#"{"models":[{"name":"llama3.2:3b","details":{"parameter_size":"3.2B"}},{"name":"qwen3:8b"}]}"#,
    )])
    .await;
    let openai = Server::start(vec![Reply::json(
        200,
        r#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model"},{"id":"o3","object":"model"}]}"#,
    )])
    .await;
    let client = reqwest::Client::new();
    let o = list_models(
        &client,
        &spec("ollama", ProviderKind::Ollama, &ollama.url, None),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(
        o.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["llama3.2:3b", "qwen3:8b"]
    );
    assert_eq!(ollama.requests()[0].method, "GET");
    assert_eq!(ollama.requests()[0].path, "/api/tags");

    let url = format!("{}/v1", openai.url);
    let m = list_models(
        &client,
        &spec("openai", ProviderKind::Openai, &url, Some(KEY)),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(m.len(), 2);
    let seen = &openai.requests()[0];
    assert_eq!(seen.path, "/v1/models");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert!(!seen.path.contains(KEY), "never in the URL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_is_reported_without_its_key_and_the_others_still_list() {
    let bad = Server::start(vec![Reply::json(
        401,
        format!(r#"{{"error":{{"message":"Incorrect API key provided: {KEY}"}}}}"#),
    )])
    .await;
    let good = Server::start(vec![Reply::json(
        200,
        r#"{"models":[{"name":"models/gemini-2.5-flash","supportedGenerationMethods":["generateContent"]}]}"#,
    )])
    .await;
    let mut slow = Reply::json(200, r#"{"data":[]}"#);
    slow.delay = Duration::from_secs(3);
    let slow_server = Server::start(vec![slow]).await;
    let found = discover_all(
        vec![
            spec(
                "openai",
                ProviderKind::Openai,
                &format!("{}/v1", bad.url),
                Some(KEY),
            ),
            spec("gemini", ProviderKind::Gemini, &good.url, Some(KEY)),
            spec(
                "slow",
                ProviderKind::Compatible,
                &format!("{}/v1", slow_server.url),
                None,
            ),
        ],
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(found.len(), 3);
    let err = found[0].models.as_ref().unwrap_err();
    assert_eq!(err.kind(), "auth");
    assert!(!err.to_string().contains(KEY), "{err}");
    assert!(!format!("{err:?}").contains(KEY));
    let g = found[1].models.as_ref().unwrap();
    assert_eq!(g[0].name, "gemini-2.5-flash");
    assert_eq!(
        good.requests()[0].header("x-goog-api-key"),
        Some(KEY),
        "the key went in its header"
    );
    assert_eq!(found[2].models.as_ref().unwrap_err().kind(), "timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_models_discover_lists_what_a_local_ollama_has() {
    let ollama = Server::start(vec![Reply::json(
        200,
        r#"{"models":[{"name":"llama3.2:3b"}]}"#,
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let url = ollama.url.clone();
    let path = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_quorum"))
            .args(["models", "--discover", "--json"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &path)
            .env("QUORUM_DATA_DIR", &path)
            .env("QUORUM_CONFIG", path.join("none.toml"))
            .env("OLLAMA_HOST", url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "ollama/llama3.2:3b")
        .expect("the discovered model is listed")
        .clone();
    assert_eq!(row["discovered"], true);
    assert_eq!(row["price"]["input"], 0.0, "a local model is free");
}
