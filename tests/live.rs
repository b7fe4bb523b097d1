//! Live checks against the real provider APIs. Skipped unless run with
//! `cargo test --test live -- --ignored` and the provider's key is set, so a
//! maintainer can check the wire formats against the services themselves.

use llm_quorum::engine::registry::Registry;
use llm_quorum::engine::request::{Reasoning, ReasoningEffort, Tool};
use llm_quorum::engine::{ChatRequest, Engine, EngineConfig, FinishReason, RunOptions};

fn engine() -> Engine {
    let env = |k: &str| std::env::var(k).ok();
    Engine::new(EngineConfig {
        registry: Registry::from_env(&env),
        ..Default::default()
    })
    .unwrap()
}

async fn check(target: &str, key_var: &str, stream: bool) {
    if std::env::var(key_var).map(|v| v.is_empty()).unwrap_or(true) {
        eprintln!("SKIP {target}: {key_var} is not set");
        return;
    }
    let mut req = ChatRequest::from_prompt("What is 2+2? Answer with one number.");
    req.max_tokens = Some(64);
    let c = engine()
        .run(
            req,
            vec![target.into()],
            RunOptions {
                stream,
                ..Default::default()
            },
        )
        .collect()
        .await
        .remove(0);
    assert!(c.error.is_none(), "{target}: {:?}", c.error);
    assert!(c.text.contains('4'), "{target}: {:?}", c.text);
    assert_eq!(c.finish_reason, FinishReason::Stop);
    assert!(
        c.usage.input_tokens > 0 && c.usage.output_tokens > 0,
        "{target}: {:?}",
        c.usage
    );
}

async fn check_tools(target: &str, key_var: &str) {
    if std::env::var(key_var).map(|v| v.is_empty()).unwrap_or(true) {
        eprintln!("SKIP {target}: {key_var} is not set");
        return;
    }
    let mut req = ChatRequest::from_prompt("What's the weather in Paris? Use the tool.");
    req.max_tokens = Some(256);
    req.tools = vec![Tool {
        name: "get_weather".into(),
        description: "Current weather for a city".into(),
        parameters: serde_json::json!({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}),
    }];
    let c = engine()
        .run(req, vec![target.into()], RunOptions::default())
        .collect()
        .await
        .remove(0);
    assert!(c.error.is_none(), "{target}: {:?}", c.error);
    assert_eq!(c.finish_reason, FinishReason::ToolCalls, "{target}");
    assert_eq!(c.tool_calls[0].name, "get_weather");
    assert!(c.tool_calls[0].arguments_json()["city"].is_string());
}

#[tokio::test]
#[ignore = "live: needs OPENAI_API_KEY"]
async fn live_openai() {
    check("openai/gpt-4o-mini", "OPENAI_API_KEY", true).await;
    check("openai/gpt-4o-mini", "OPENAI_API_KEY", false).await;
    check_tools("openai/gpt-4o-mini", "OPENAI_API_KEY").await;
}

#[tokio::test]
#[ignore = "live: needs ANTHROPIC_API_KEY"]
async fn live_anthropic() {
    check("anthropic/claude-haiku-4-5", "ANTHROPIC_API_KEY", true).await;
    check("anthropic/claude-haiku-4-5", "ANTHROPIC_API_KEY", false).await;
    check_tools("anthropic/claude-haiku-4-5", "ANTHROPIC_API_KEY").await;
}

#[tokio::test]
#[ignore = "live: needs ANTHROPIC_API_KEY"]
async fn live_anthropic_thinking() {
    if std::env::var("ANTHROPIC_API_KEY").is_err() {
        return;
    }
    let mut req = ChatRequest::from_prompt("Is 17 prime? Answer yes or no.");
    req.reasoning = Some(Reasoning::Effort(ReasoningEffort::Low));
    let c = engine()
        .run(
            req,
            vec!["anthropic/claude-haiku-4-5".into()],
            RunOptions::default(),
        )
        .collect()
        .await
        .remove(0);
    assert!(c.error.is_none(), "{:?}", c.error);
    assert!(!c.thinking.is_empty());
}

#[tokio::test]
#[ignore = "live: needs GEMINI_API_KEY"]
async fn live_gemini() {
    check("gemini/gemini-2.5-flash", "GEMINI_API_KEY", true).await;
    check("gemini/gemini-2.5-flash", "GEMINI_API_KEY", false).await;
    check_tools("gemini/gemini-2.5-flash", "GEMINI_API_KEY").await;
}

#[tokio::test]
#[ignore = "live: needs OPENROUTER_API_KEY"]
async fn live_openrouter() {
    check("openrouter/openai/gpt-4o-mini", "OPENROUTER_API_KEY", true).await;
}

#[tokio::test]
#[ignore = "live: needs a local Ollama with llama3.2 (set QUORUM_LIVE_OLLAMA=1)"]
async fn live_ollama() {
    check("ollama/llama3.2", "QUORUM_LIVE_OLLAMA", true).await;
}
