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

/// The OpenAI Responses API, chosen automatically for a codex model, with a
/// reasoning effort: text and usage come back through the typed events.
#[tokio::test]
#[ignore = "live: needs OPENAI_API_KEY"]
async fn live_openai_responses_api() {
    if std::env::var("OPENAI_API_KEY").is_err() {
        return;
    }
    let mut req = ChatRequest::from_prompt("What is 2+2? Answer with one number.");
    req.reasoning = Some(Reasoning::Effort(ReasoningEffort::Low));
    req.max_tokens = Some(512);
    for stream in [true, false] {
        let c = engine()
            .run(
                req.clone(),
                vec!["openai/gpt-5-codex".into()],
                RunOptions {
                    stream,
                    ..Default::default()
                },
            )
            .collect()
            .await
            .remove(0);
        assert!(c.error.is_none(), "{:?}", c.error);
        assert!(c.text.contains('4'), "{:?}", c.text);
        assert!(c.usage.output_tokens > 0, "{:?}", c.usage);
    }
}

/// An image to each vision provider whose key is set: the 1x1 red PNG's colour.
#[tokio::test]
#[ignore = "live: needs OPENAI_API_KEY, ANTHROPIC_API_KEY or GEMINI_API_KEY"]
async fn live_image_input() {
    // A 1x1 red PNG.
    const PNG: &[u8] = &[
        0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90,
        0x77, 0x53, 0xDE, 0x00, 0x00, 0x00, 0x0C, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0xF8,
        0xCF, 0xC0, 0x00, 0x00, 0x03, 0x01, 0x01, 0x00, 0xC9, 0xFE, 0x92, 0xEF, 0x00, 0x00, 0x00,
        0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
    ];
    for (target, var) in [
        ("openai/gpt-4o-mini", "OPENAI_API_KEY"),
        ("anthropic/claude-haiku-4-5", "ANTHROPIC_API_KEY"),
        ("gemini/gemini-2.5-flash", "GEMINI_API_KEY"),
    ] {
        if std::env::var(var).map(|v| v.is_empty()).unwrap_or(true) {
            eprintln!("SKIP {target}: {var} is not set");
            continue;
        }
        let mut m = llm_quorum::engine::Message::user("What colour is this image? One word.");
        m.attachments
            .push(llm_quorum::engine::attachment::image_from_bytes("red.png", PNG).unwrap());
        let req = ChatRequest {
            messages: vec![m],
            max_tokens: Some(32),
            ..Default::default()
        };
        let c = engine()
            .run(req, vec![target.into()], RunOptions::default())
            .collect()
            .await
            .remove(0);
        assert!(c.error.is_none(), "{target}: {:?}", c.error);
        assert!(
            c.text.to_lowercase().contains("red"),
            "{target}: {:?}",
            c.text
        );
    }
}
