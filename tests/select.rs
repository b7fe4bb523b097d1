//! `cheapest:TIER` and deprecation warnings: selection that needs prices.

use llm_quorum::engine::cost::Pricing;
use llm_quorum::engine::provider::{ProviderKind, ProviderSpec, Secret};
use llm_quorum::engine::registry::Registry;
use llm_quorum::engine::request::{Reasoning, Tool};
use llm_quorum::engine::select::{cheapest, deprecation_warnings, expand_targets};
use llm_quorum::engine::{ChatRequest, Engine, EngineConfig};

fn engine(tier: &[&str]) -> Engine {
    let mut r = Registry::from_env(&|_| None);
    for (name, kind) in [
        ("openai", ProviderKind::Openai),
        ("anthropic", ProviderKind::Anthropic),
    ] {
        let mut spec = ProviderSpec::new(name, kind);
        spec.api_key = Some(Secret::new("sk-test-not-a-real-key"));
        r.insert(spec);
    }
    r.set_tier("fast", tier.iter().map(|s| s.to_string()).collect());
    Engine::new(EngineConfig {
        registry: r,
        pricing: Pricing::builtin(),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn cheapest_picks_the_lowest_projected_cost_among_members_with_a_key() {
    // gemini has no key here; gpt-4o costs more than gpt-4o-mini.
    let e = engine(&[
        "openai/gpt-4o",
        "gemini/gemini-2.5-flash-lite",
        "openai/gpt-4o-mini",
        "anthropic/claude-sonnet-4-5",
    ]);
    let req = ChatRequest::from_prompt("What is 2+2?");
    let r = cheapest(&e, "fast", &req).unwrap();
    assert_eq!(r.id(), "openai/gpt-4o-mini");
    assert_eq!(r.requested, "cheapest:fast");
    let t = expand_targets(
        &e,
        &["cheapest:fast".to_string(), "mock/alpha".to_string()],
        &req,
    )
    .unwrap();
    assert_eq!(t, ["openai/gpt-4o-mini", "mock/alpha"]);
}

#[test]
fn an_unpriced_member_ranks_last_and_capabilities_filter() {
    let e = engine(&["openai/some-unpriced-model", "openai/gpt-4o"]);
    let req = ChatRequest::from_prompt("hi");
    assert_eq!(cheapest(&e, "fast", &req).unwrap().id(), "openai/gpt-4o");
    // Only unpriced: still chosen, rather than nothing.
    let e = engine(&["openai/some-unpriced-model"]);
    assert_eq!(
        cheapest(&e, "fast", &req).unwrap().id(),
        "openai/some-unpriced-model"
    );
    // A request that thinks skips a model the table lists without thinking.
    let e = engine(&["openai/gpt-4o-mini", "openai/o3-mini"]);
    let mut think = ChatRequest::from_prompt("prove it");
    think.reasoning = Some(Reasoning::Budget(2048));
    assert_eq!(cheapest(&e, "fast", &think).unwrap().id(), "openai/o3-mini");
    // And tools pass where the table lists them.
    let mut tools = ChatRequest::from_prompt("weather?");
    tools.tools.push(Tool {
        name: "get_weather".into(),
        description: "weather".into(),
        parameters: serde_json::json!({"type": "object"}),
    });
    assert_eq!(
        cheapest(&e, "fast", &tools).unwrap().id(),
        "openai/gpt-4o-mini"
    );
}

#[test]
fn no_usable_member_and_unknown_tier_are_clear_errors() {
    let e = engine(&["gemini/gemini-2.5-flash"]);
    let err = cheapest(&e, "fast", &ChatRequest::from_prompt("hi")).unwrap_err();
    assert!(err.to_string().contains("no API key"), "{err}");
    let err =
        expand_targets(&e, &["cheapest:fsat".to_string()], &ChatRequest::default()).unwrap_err();
    assert!(err.to_string().contains("did you mean: fast"), "{err}");
}

#[test]
fn deprecated_models_warn_with_their_replacement() {
    let e = engine(&[]);
    let w = deprecation_warnings(
        &e,
        &[
            "anthropic/claude-3-5-haiku".to_string(),
            "openai/gpt-4o-mini".to_string(),
        ],
    );
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with("anthropic/claude-3-5-haiku is deprecated (retired 2026-02-19)"));
    assert!(w[0].ends_with("use claude-haiku-4-5 instead"), "{}", w[0]);
}
