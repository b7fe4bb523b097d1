//! Cost truth: prices with provenance, estimates, projections, budgets and the response
//! cache. Fixture usages come from ../shared/fixtures (skipped with a message if absent).

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use llm_quorum::engine::budget::{self, Budget, Cap, Spend};
use llm_quorum::engine::cache::{self, CacheSettings, CachedAnswer, ResponseCache};
use llm_quorum::engine::cost::{self, Price, Pricing};
use llm_quorum::engine::front::LedgerProblem;
use llm_quorum::engine::ledger::{
    BackgroundLedger, Ledger, LedgerOptions, LedgerSink, RequestMeta, LEDGER_FILE,
};
use llm_quorum::engine::provider::{ProviderKind, ProviderSpec, Secret};
use llm_quorum::engine::registry::Registry;
use llm_quorum::engine::{
    pricing_file, tokens, ChatRequest, Completion, CostSource, EngineConfig, EngineError,
    FinishReason, RunOptions, StreamEvent, ToolCall, Usage,
};
use llm_quorum::engine::{Books, StartOptions};
use llm_quorum::engine::{Engine, Message};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 + 1e-9 * b.abs()
}

fn assert_cost(got: Option<f64>, want: f64, what: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: cost is unknown, wanted {want}"));
    assert!(
        close(got, want),
        "{what}: cost {got} != hand-computed {want}"
    );
}

/// The usage the engine reports for a fixture's `expected.usage`, following the
/// normalisation in event.rs: input counts every prompt token (Anthropic's cache reads
/// and writes included); Gemini's output is candidates + thoughts.
fn usage_of(provider_dir: &str, u: &serde_json::Value) -> Option<Usage> {
    let n = |k: &str| u.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    if u.is_null() {
        return None;
    }
    Some(match provider_dir {
        "anthropic" => Usage {
            input_tokens: n("input_tokens")
                + n("cache_read_input_tokens")
                + n("cache_creation_input_tokens"),
            output_tokens: n("output_tokens"),
            cached_input_tokens: n("cache_read_input_tokens"),
            cache_creation_input_tokens: n("cache_creation_input_tokens"),
            ..Default::default()
        },
        "gemini" => {
            // A blocked prompt reports no counts at all.
            u.get("prompt_token_count")?.as_u64()?;
            Usage {
                input_tokens: n("prompt_token_count"),
                output_tokens: n("candidates_token_count") + n("thoughts_token_count"),
                cached_input_tokens: n("cached_content_token_count"),
                reasoning_tokens: n("thoughts_token_count"),
                ..Default::default()
            }
        }
        _ => Usage {
            input_tokens: n("prompt_tokens"),
            output_tokens: n("completion_tokens"),
            cached_input_tokens: n("cached_tokens"),
            reasoning_tokens: n("reasoning_tokens"),
            reported_cost_usd: u.get("cost").and_then(|c| c.as_f64()),
            ..Default::default()
        },
    })
}

fn provider_of(provider_dir: &str) -> &str {
    provider_dir
}

fn case_usage(id: &str) -> Option<(String, Usage, serde_json::Value)> {
    let (dir, _) = id.split_once('/').unwrap();
    let case = support::cases(dir).into_iter().find(|c| c.id == id)?;
    let model = case.meta["request_model"].as_str().unwrap().to_string();
    let u = usage_of(dir, &case.meta["expected"]["usage"])?;
    Some((model, u, case.meta))
}

#[test]
fn fixture_costs_equal_hand_computed_values() {
    if support::fixtures_dir().is_none() {
        return;
    }
    let pricing = Pricing::builtin();
    // (case, tokens in, tokens out, hand-computed USD from the table's per-1M prices)
    let cases: &[(&str, u64, u64, f64)] = &[
        // gpt-4o-mini $0.15/$0.60: 16*0.15 + 10*0.60 = 8.4 per 1M
        ("openai/max-tokens-length", 16, 10, 8.4e-6),
        // gpt-5-nano $0.05/$0.40, reasoning billed as output: 11*0.05 + 228*0.40 = 91.75
        ("openai/reasoning-usage", 11, 228, 91.75e-6),
        // gpt-4 $30/$60: 12*30 + 5*60 = 660
        ("openai/stream-text-usage", 12, 5, 660e-6),
        // gpt-4.1-nano $0.10/$0.40: 43*0.1 + 16*0.4 = 10.7
        ("openai/korean-text", 43, 16, 10.7e-6),
        // gpt-3.5-turbo $0.50/$1.50: 13*0.5 + 31*1.5 = 53
        ("openai/basic", 13, 31, 53e-6),
        // claude-haiku-4-5-20251001 -> claude-haiku-4-5 $1/$5: 10 + 20 = 30
        ("anthropic/stream-text", 10, 4, 30e-6),
        // claude-opus-4-1-20250805 $15/$75: 10423*15 + 341*75 = 181920
        ("anthropic/stream-web-search-citations", 10423, 341, 0.18192),
        // claude-sonnet-4-5 $3/$15: 43*3 + 199*15 = 3114
        ("anthropic/thinking", 43, 199, 3114e-6),
        // claude-3-opus-20240229 $15/$75: 13*15 + 35*75 = 2820
        ("anthropic/basic", 13, 35, 2820e-6),
        // claude-3-5-haiku-20241022 $0.80/$4: 17*0.8 + 82*4 = 341.6
        ("anthropic/stream-emoji-zwj-split", 17, 82, 341.6e-6),
        // gemini-2.5-flash $0.30/$2.50, thoughts as output: 93*0.3 + (398+768)*2.5 = 2942.9
        ("gemini/thinking", 93, 1166, 2942.9e-6),
        // gemini-2.0-flash $0.10/$0.40: 45*0.1 + 23*0.4 = 13.7
        ("gemini/basic", 45, 23, 13.7e-6),
        // gemini-2.5-pro $1.25/$10: 15*1.25 + 2*10 = 38.75
        ("gemini/max-tokens-thinking-empty", 15, 2, 38.75e-6),
        // OpenRouter meta-llama/llama-3.2-3b-instruct $0.01/$0.02: 66*0.01 + 15*0.02 = 0.96
        ("openrouter/basic", 66, 15, 0.96e-6),
        // OpenRouter mistralai/mistral-small $0.20/$0.60: 134*0.2 + 43*0.6 = 52.6
        ("openrouter/tool-call", 134, 43, 52.6e-6),
    ];
    for &(id, tin, tout, want) in cases {
        let (model, usage, _) = case_usage(id).unwrap_or_else(|| panic!("{id}: no usage"));
        assert_eq!(
            (usage.input_tokens, usage.output_tokens),
            (tin, tout),
            "{id}: tokens"
        );
        let provider = provider_of(id.split_once('/').unwrap().0);
        let q = pricing.quote(provider, &model, &usage, true);
        assert_cost(q.cost_usd, want, id);
        assert_eq!(q.source, CostSource::Computed, "{id}");
        let r = q.price_ref.expect("price row named");
        assert!(r.starts_with("builtin:"), "{id}: {r}");
        assert!(pricing.row_by_id(&r).is_some(), "{id}: {r} resolves");
    }
}

#[test]
fn openrouter_reported_cost_is_used_as_is_and_our_rows_agree_with_it() {
    if support::fixtures_dir().is_none() {
        return;
    }
    let pricing = Pricing::builtin();
    for id in [
        "openrouter/reasoning-cost",
        "openrouter/stream-o3-encrypted-reasoning",
        "openrouter/stream-reasoning-comments",
        "openrouter/stream-web-search-annotations",
        "openrouter/stream-free-model-wire",
    ] {
        let (model, usage, _) = case_usage(id).unwrap();
        let reported = usage.reported_cost_usd.expect("fixture reports a cost");
        let q = pricing.quote("openrouter", &model, &usage, true);
        assert_eq!(
            q.cost_usd,
            Some(reported),
            "{id}: the provider's figure, untouched"
        );
        assert_eq!(q.source, CostSource::Provider, "{id}");
    }
    // Where OpenRouter passes the first-party price through, our rows give the same
    // figure: claude-sonnet-4.5 43*3 + 53*15 = 924; o3 9*2 + 104*8 = 850; 43*3 + 36*15 = 669.
    for (id, want) in [
        ("openrouter/reasoning-cost", 924e-6),
        ("openrouter/stream-o3-encrypted-reasoning", 850e-6),
        ("openrouter/stream-reasoning-comments", 669e-6),
    ] {
        let (model, mut usage, _) = case_usage(id).unwrap();
        let reported = usage.reported_cost_usd.take().unwrap();
        assert!(close(reported, want), "{id}: reported {reported}");
        let q = pricing.quote("openrouter", &model, &usage, true);
        assert_cost(q.cost_usd, want, id);
        assert_eq!(q.source, CostSource::Computed);
    }
    // A reported zero (a :free model) is a real zero from the provider.
    let u = Usage {
        input_tokens: 586,
        output_tokens: 3,
        reported_cost_usd: Some(0.0),
        ..Default::default()
    };
    let q = pricing.quote(
        "openrouter",
        "meta-llama/llama-3.2-3b-instruct:free",
        &u,
        true,
    );
    assert_eq!((q.cost_usd, q.source), (Some(0.0), CostSource::Provider));
}

#[test]
fn unpriced_model_gives_null_and_unknown_never_zero() {
    let pricing = Pricing::builtin();
    let u = Usage {
        input_tokens: 100,
        output_tokens: 50,
        ..Default::default()
    };
    for (p, m) in [
        ("openai", "gpt-4o-mini-search-preview"),
        ("openai", "this-model-does-not-exist"),
        ("anthropic", "claude-sonet-4-5"),
        ("compatible", "some-local-model"),
        ("openrouter", "meta-llama/llama-3.2-3b-instruct:nitro"),
    ] {
        let q = pricing.quote(p, m, &u, true);
        assert_eq!(q.cost_usd, None, "{p}/{m}");
        assert_eq!(q.source, CostSource::Unknown, "{p}/{m}");
        assert_eq!(q.price_ref, None);
    }
    let mut c = Completion {
        provider: "openai".into(),
        model: "this-model-does-not-exist".into(),
        text: "hi".into(),
        usage: u,
        usage_reported: true,
        cost_usd: Some(0.0),
        ..Default::default()
    };
    pricing.apply(&mut c);
    let v = serde_json::to_value(&c).unwrap();
    assert!(v["cost_usd"].is_null(), "{v}");
    assert_eq!(v["cost_source"], "unknown");
    assert!(v.get("price_ref").is_none());
    // A priced model with no usage and nothing counted is unknown too, not $0.
    let q = pricing.quote("openai", "gpt-4o-mini", &Usage::default(), false);
    assert_eq!((q.cost_usd, q.source), (None, CostSource::Unknown));
    // The empty table (the engine default) knows nothing.
    let q = Pricing::empty().quote("openai", "gpt-4o-mini", &u, true);
    assert_eq!((q.cost_usd, q.source), (None, CostSource::Unknown));
}

#[test]
fn local_and_mock_models_are_free_not_unknown() {
    let pricing = Pricing::builtin();
    let u = Usage {
        input_tokens: 1000,
        output_tokens: 1000,
        ..Default::default()
    };
    for (p, m) in [
        ("ollama", "llama3"),
        ("ollama", "qwen3.6:latest"),
        ("mock", "alpha"),
    ] {
        let q = pricing.quote(p, m, &u, true);
        assert_eq!(q.cost_usd, Some(0.0), "{p}/{m}");
        assert_eq!(q.source, CostSource::Computed);
        let r = pricing.row_by_id(q.price_ref.as_deref().unwrap()).unwrap();
        assert_eq!(r.source, "local");
    }
    // Even without usage (Ollama always reports it, but still) a free model is $0.
    let q = pricing.quote("ollama", "llama3", &Usage::default(), false);
    assert_eq!(q.cost_usd, Some(0.0));
    let q = pricing.quote(
        "openrouter",
        "meta-llama/llama-3.3-70b-instruct:free",
        &u,
        true,
    );
    assert_eq!(q.cost_usd, Some(0.0));
    // A configured provider of Ollama's kind under another name.
    let mut p2 = Pricing::builtin();
    p2.mark_local("homebox");
    let q = p2.quote("homebox", "anything", &u, true);
    assert_eq!(q.cost_usd, Some(0.0));
    assert_eq!(
        p2.row_by_id(q.price_ref.as_deref().unwrap())
            .unwrap()
            .source,
        "local"
    );
}

#[test]
fn snapshot_names_match_their_family_and_never_another() {
    let p = Pricing::builtin();
    let row = |prov: &str, m: &str| p.lookup(prov, m).map(|r| r.model.clone());
    assert_eq!(
        row("openai", "gpt-4o-mini-2024-07-18").as_deref(),
        Some("gpt-4o-mini")
    );
    assert_eq!(
        row("openai", "gpt-4o-2024-08-06").as_deref(),
        Some("gpt-4o")
    );
    // An exact snapshot row beats the family row: the first gpt-4o kept its launch price.
    assert_eq!(
        row("openai", "gpt-4o-2024-05-13").as_deref(),
        Some("gpt-4o-2024-05-13")
    );
    assert_eq!(
        p.lookup("openai", "gpt-4o-2024-05-13").unwrap().price.input,
        5.0
    );
    assert_eq!(
        row("anthropic", "claude-haiku-4-5-20251001").as_deref(),
        Some("claude-haiku-4-5")
    );
    assert_eq!(
        row("anthropic", "claude-sonnet-4-5-20250929").as_deref(),
        Some("claude-sonnet-4-5")
    );
    assert_eq!(
        row("anthropic", "claude-opus-4-1-20250805").as_deref(),
        Some("claude-opus-4-1")
    );
    assert_eq!(
        row("anthropic", "claude-sonnet-4-0").as_deref(),
        Some("claude-sonnet-4")
    );
    assert_eq!(
        row("anthropic", "claude-3-5-haiku-latest").as_deref(),
        Some("claude-3-5-haiku")
    );
    assert_eq!(
        row("gemini", "gemini-2.0-flash-001").as_deref(),
        Some("gemini-2.0-flash")
    );
    assert_eq!(
        row("gemini", "models/gemini-2.5-pro").as_deref(),
        Some("gemini-2.5-pro")
    );
    assert_eq!(row("openai", "gpt-4").as_deref(), Some("gpt-4"));
    assert_eq!(row("openai", "gpt-4-0613").as_deref(), Some("gpt-4"));
    assert_eq!(row("openai", "o3-mini").as_deref(), Some("o3-mini"));
    assert_eq!(
        row("openai", "o3-mini-2025-01-31").as_deref(),
        Some("o3-mini")
    );
    // Never a neighbouring family.
    for m in [
        "gpt-4o-mini-search-preview",
        "gpt-4o-mini-tts",
        "gpt-4.1-mini-foo",
        "o3-pro",
        "gpt-3.5-turbo-1106",
        "gpt-5-codex",
        "claude-haiku-4",
        "gemini-2.5-flash-preview-05-20",
        "gpt-4o-mini-realtime-preview-2024-12-17",
    ] {
        assert_eq!(row("openai", m), None, "{m} must not borrow a price");
        assert_eq!(row("anthropic", m), None);
        assert_eq!(row("gemini", m), None);
    }
    // The provider matters: an OpenAI name under OpenRouter is its own row.
    assert_eq!(row("openrouter", "gpt-4o-mini"), None);
    assert_eq!(
        row("openrouter", "openai/gpt-4o-mini").as_deref(),
        Some("openai/gpt-4o-mini")
    );
    assert_eq!(
        cost::strip_snapshot("claude-haiku-4-5-20251001"),
        "claude-haiku-4-5"
    );
    assert_eq!(
        cost::strip_snapshot("gpt-4o-mini-2024-07-18"),
        "gpt-4o-mini"
    );
    assert_eq!(
        cost::strip_snapshot("claude-3-5-haiku@20241022"),
        "claude-3-5-haiku"
    );
    assert_eq!(cost::strip_snapshot("gpt-4.1"), "gpt-4.1");
    assert_eq!(cost::strip_snapshot("o4-mini"), "o4-mini");
}

#[test]
fn cached_cache_write_reasoning_and_long_context_tokens_use_their_own_rates() {
    let p = Pricing::builtin();
    // Anthropic with prompt caching: 100 fresh + 2000 read + 500 written, 50 out at
    // claude-sonnet-4-5: 100*3 + 2000*0.30 + 500*3.75 + 50*15 = 3525 per 1M.
    let u = Usage {
        input_tokens: 2600,
        output_tokens: 50,
        cached_input_tokens: 2000,
        cache_creation_input_tokens: 500,
        ..Default::default()
    };
    assert_cost(
        p.quote("anthropic", "claude-sonnet-4-5", &u, true).cost_usd,
        3525e-6,
        "cache",
    );
    // OpenAI cached prompt: gpt-4o-mini 1000 in (800 cached), 10 out:
    // 200*0.15 + 800*0.075 + 10*0.6 = 96.
    let u = Usage {
        input_tokens: 1000,
        output_tokens: 10,
        cached_input_tokens: 800,
        ..Default::default()
    };
    assert_cost(
        p.quote("openai", "gpt-4o-mini", &u, true).cost_usd,
        96e-6,
        "openai cached",
    );
    // Long context: Sonnet 4.5 above 200k prompt tokens is $6/$22.50 for the whole request.
    let u = Usage {
        input_tokens: 250_000,
        output_tokens: 1000,
        ..Default::default()
    };
    assert_cost(
        p.quote("anthropic", "claude-sonnet-4-5", &u, true).cost_usd,
        1.5225,
        "tier",
    );
    let u200 = Usage {
        input_tokens: 200_000,
        output_tokens: 1000,
        ..Default::default()
    };
    assert_cost(
        p.quote("anthropic", "claude-sonnet-4-5", &u200, true)
            .cost_usd,
        0.615,
        "at threshold",
    );
    // Gemini 2.5 Pro above 200k: $2.50/$15.
    let u = Usage {
        input_tokens: 300_000,
        output_tokens: 1000,
        ..Default::default()
    };
    assert_cost(
        p.quote("gemini", "gemini-2.5-pro", &u, true).cost_usd,
        0.765,
        "gemini tier",
    );
    // A reasoning rate of its own (config override): 60 plain out at $2, 40 reasoning at $4.
    let mut p2 = Pricing::builtin();
    p2.insert(
        "custom",
        "thinker",
        Price {
            input: 1.0,
            output: 2.0,
            reasoning: Some(4.0),
            ..Default::default()
        },
    );
    let u = Usage {
        input_tokens: 10,
        output_tokens: 100,
        reasoning_tokens: 40,
        ..Default::default()
    };
    assert_cost(
        p2.quote("custom", "thinker", &u, true).cost_usd,
        290e-6,
        "reasoning",
    );
}

#[test]
fn config_overrides_beat_the_user_file_which_beats_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let user = dir.path().join(pricing_file::FILE_NAME);
    let mut row = Pricing::builtin()
        .lookup("openai", "gpt-4o-mini")
        .unwrap()
        .clone();
    row.id.clear();
    row.price.input = 0.20;
    row.effective = "2026-01-01".into();
    let mut other = row.clone();
    other.model = "gpt-4.1".into();
    other.price.input = 9.0;
    pricing_file::save(&user, &[row, other]).unwrap();
    let p = Pricing::load(
        vec![("openai/gpt-4o-mini".into(), Price::flat(0.11, 0.22))],
        Some(user.clone()),
    );
    let r = p.lookup("openai", "gpt-4o-mini").unwrap();
    assert_eq!(
        (r.price.input, r.id.as_str()),
        (0.11, "config:openai/gpt-4o-mini")
    );
    // The config row keeps the table's limits for projections.
    assert_eq!(
        p.limits("openai", "gpt-4o-mini"),
        (Some(128000), Some(16384))
    );
    let r = p.lookup("openai", "gpt-4.1").unwrap();
    assert_eq!(
        (r.price.input, r.id.as_str()),
        (9.0, "user:openai/gpt-4.1@2026-01-01")
    );
    let r = p.lookup("openai", "gpt-4o").unwrap();
    assert_eq!(r.id, "builtin:openai/gpt-4o@2024-10-02");
    // Old rows stay resolvable by id.
    assert!(p
        .row_by_id("builtin:openai/gpt-4o-mini@2024-07-18")
        .is_some());
    assert!(p.row_by_id("builtin:openai/o3@2025-04-16").is_some());
    // A row's JSON (what the ledger's `prices` table keeps) is written once.
    let id = "builtin:openai/gpt-4o-mini@2024-07-18";
    let json = p.row_json_by_id(id).unwrap();
    assert_eq!(
        &*json,
        serde_json::to_string(p.row_by_id(id).unwrap()).unwrap()
    );
    assert!(std::sync::Arc::ptr_eq(
        &json,
        &p.row_json_by_id(id).unwrap()
    ));
    assert!(p
        .row_json_by_id("builtin:openai/no-such@2024-01-01")
        .is_none());
    // A broken user file is reported and skipped, not fatal.
    std::fs::write(&user, b"{not json").unwrap();
    let p = Pricing::load(Vec::new(), Some(user));
    assert_eq!(
        p.lookup("openai", "gpt-4.1").unwrap().origin,
        cost::Origin::Builtin
    );
    assert_eq!(p.load_errors().len(), 1);
}

/// ../shared/data/litellm_model_prices.json (next to the fixtures), or None with a message.
fn litellm_json() -> Option<serde_json::Value> {
    let base = std::env::var_os("QUORUM_FIXTURES")
        .map(|f| PathBuf::from(f).join(".."))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let path = base.join("data/litellm_model_prices.json");
    match std::fs::read(&path) {
        Ok(b) => Some(serde_json::from_slice(&b).expect("LiteLLM JSON parses")),
        Err(_) => {
            eprintln!(
                "SKIP: {} not found (set QUORUM_FIXTURES to ../shared/fixtures)",
                path.display()
            );
            None
        }
    }
}

#[test]
fn litellm_import_round_trips() {
    let Some(json) = litellm_json() else { return };
    let rows = pricing_file::litellm_rows(&json, "litellm_model_prices.json");
    assert!(rows.len() > 200, "{} rows", rows.len());
    // Per-token figures survive the trip to per-1M and back.
    for r in &rows {
        // The entry the row came from: provider-prefixed first (LiteLLM names some
        // providers `together_ai`, `fireworks_ai`), then the bare name.
        let candidates = [
            format!("{}/{}", r.provider, r.model),
            format!("{}_ai/{}", r.provider, r.model),
            r.model.clone(),
        ];
        let Some((key, src)) = candidates.iter().find_map(|k| {
            let v = json.get(k)?;
            let lp = v["litellm_provider"].as_str()?;
            (lp.trim_end_matches("_ai") == r.provider).then_some((k, v))
        }) else {
            panic!("{}/{}: no LiteLLM entry", r.provider, r.model)
        };
        let per_tok = src["input_cost_per_token"].as_f64().unwrap();
        assert!(
            close(r.price.input * 1e-6, per_tok),
            "{key}: input {} vs {per_tok}",
            r.price.input
        );
        let per_tok = src["output_cost_per_token"].as_f64().unwrap();
        assert!(close(r.price.output * 1e-6, per_tok), "{key}: output");
    }
    let g = rows
        .iter()
        .find(|r| r.provider == "gemini" && r.model == "gemini-2.5-pro")
        .expect("gemini-2.5-pro imported");
    let tier = g.long_context.as_ref().expect("its long-context tier");
    assert_eq!(
        (tier.threshold, tier.price.input, tier.price.output),
        (200_000, 2.5, 15.0)
    );
    // Write, read back, nothing lost.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join(pricing_file::FILE_NAME);
    let (merged, report) = pricing_file::merge(Vec::new(), rows.clone(), "2026-11-01");
    assert_eq!(report.added.len(), rows.len());
    pricing_file::save(&path, &merged).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let back = pricing_file::load(&path).unwrap();
    assert_eq!(back, merged);
    // Importing the same file again changes nothing.
    let (again, report) = pricing_file::merge(back.clone(), rows.clone(), "2026-11-02");
    assert!(report.is_empty(), "{report:?}");
    assert_eq!(report.unchanged, rows.len());
    assert_eq!(again, back);
    // The imported rows are what lookups see (user layer above the table).
    let p = Pricing::load(Vec::new(), Some(path.clone()));
    let r = p.lookup("openai", "gpt-4o-mini").unwrap();
    assert_eq!(r.id, "user:openai/gpt-4o-mini@2026-11-01");
    assert_eq!(r.price.input, 0.15);
    // A changed price is a new row; the old one stays, so old ledger rows stay explained.
    let mut changed = json.clone();
    changed["gpt-4o-mini"]["input_cost_per_token"] = serde_json::json!(2.0e-7);
    let rows2 = pricing_file::litellm_rows(&changed, "edited.json");
    let (merged2, report) = pricing_file::merge(back, rows2, "2026-12-01");
    assert_eq!(report.added.len(), 0);
    assert_eq!(
        report.changed,
        vec![(
            "user:openai/gpt-4o-mini@2026-11-01".to_string(),
            "user:openai/gpt-4o-mini@2026-12-01".to_string()
        )]
    );
    pricing_file::save(&path, &merged2).unwrap();
    let p = Pricing::load(Vec::new(), Some(path));
    let r = p.lookup("openai", "gpt-4o-mini").unwrap();
    // Effective from a date still in the future of "today" only if today < 2026-12-01;
    // either way both rows exist and resolve by id.
    assert!(r.id.starts_with("user:openai/gpt-4o-mini@2026-1"));
    assert_eq!(
        p.row_by_id("user:openai/gpt-4o-mini@2026-11-01")
            .unwrap()
            .price
            .input,
        0.15
    );
    assert_eq!(
        p.row_by_id("user:openai/gpt-4o-mini@2026-12-01")
            .unwrap()
            .price
            .input,
        0.2
    );
    assert_eq!(p.history("openai", "gpt-4o-mini").len(), 3);
}

#[test]
fn embedded_table_agrees_with_litellm_where_both_list_a_model() {
    let Some(json) = litellm_json() else { return };
    let p = Pricing::builtin();
    let mut checked = 0;
    let mut diffs = Vec::new();
    for (r, shadowed) in p.current_rows() {
        if shadowed || r.model.contains('*') {
            continue;
        }
        let key = match r.provider.as_str() {
            "openai" | "anthropic" => r.model.clone(),
            "gemini" | "deepseek" | "openrouter" | "groq" => format!("{}/{}", r.provider, r.model),
            _ => continue,
        };
        let Some(src) = json.get(&key) else { continue };
        let m = |k: &str| src.get(k).and_then(|v| v.as_f64()).map(|x| x * 1e6);
        let same = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        checked += 1;
        if !same(m("input_cost_per_token"), r.price.input)
            || !same(m("output_cost_per_token"), r.price.output)
        {
            diffs.push(format!("{key}: ours {:?}", r.price));
        }
        if let (Some(theirs), Some(ours)) = (m("cache_read_input_token_cost"), r.price.cached_input)
        {
            if (theirs - ours).abs() > 1e-9 {
                diffs.push(format!("{key}: cached {ours} vs {theirs}"));
            }
        }
    }
    assert!(checked >= 30, "only {checked} rows cross-checked");
    assert!(
        diffs.is_empty(),
        "table and LiteLLM disagree:\n{}",
        diffs.join("\n")
    );
}

#[test]
fn projection_is_never_below_the_computed_cost_of_any_fixture() {
    if support::fixtures_dir().is_none() {
        return;
    }
    let p = Pricing::builtin();
    let mut checked = 0;
    for dir in ["openai", "anthropic", "gemini", "openrouter"] {
        for case in support::cases(dir) {
            let Some(mut u) = usage_of(dir, &case.meta["expected"]["usage"]) else {
                continue;
            };
            u.reported_cost_usd = None;
            let model = case.meta["request_model"].as_str().unwrap();
            let provider = provider_of(dir);
            let Some(real) = p.quote(provider, model, &u, true).cost_usd else {
                continue;
            };
            let params = &case.meta["request_params"];
            let max = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
                .iter()
                .find_map(|k| params.get(*k).and_then(|v| v.as_u64()))
                .map(|v| v as u32);
            let proj = budget::project_usage(&p, provider, model, &u, max);
            let bound = proj
                .bound_usd
                .unwrap_or_else(|| panic!("{}: no bound", case.id));
            assert!(bound >= real, "{}: bound {bound} < real {real}", case.id);
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} fixtures projected");
}

fn engine_with(registry: Registry, pricing: Pricing) -> Engine {
    Engine::new(EngineConfig {
        registry,
        pricing,
        ..Default::default()
    })
    .unwrap()
}

fn openai_at(url: &str) -> Registry {
    let mut r = Registry::from_env(&|_| None);
    let mut spec = ProviderSpec::new("openai", ProviderKind::Openai);
    spec.base_url = format!("{url}/v1");
    spec.api_key = Some(Secret::new("sk-test-not-a-real-key"));
    r.insert(spec);
    r
}

#[test]
fn projection_of_a_fan_out_counts_tokens_and_marks_unknowns() {
    let engine = engine_with(Registry::from_env(&|_| None), Pricing::builtin());
    let mut req = ChatRequest::from_prompt("What is 2+2? Answer with one number.");
    req.messages.insert(0, Message::system("You are terse."));
    req.max_tokens = Some(100);
    let targets: Vec<String> = [
        "openai/gpt-4o-mini",
        "anthropic/claude-haiku-4-5",
        "ollama/llama3",
        "openai/no-such-model",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let proj = budget::project(&engine, &req, &targets).unwrap();
    let exact = tokens::count_request("gpt-4o-mini", &req);
    assert!(exact.exact);
    let t0 = &proj.targets[0];
    assert_eq!(t0.input_tokens, exact.tokens);
    assert_cost(
        t0.bound_usd,
        (exact.tokens as f64 * 0.15 + 100.0 * 0.6) * 1e-6,
        "gpt-4o-mini bound",
    );
    let t1 = &proj.targets[1];
    assert!(!t1.input_exact);
    let est = tokens::count_request("claude-haiku-4-5", &req).tokens;
    assert_eq!(
        t1.input_tokens,
        (est as f64 * budget::ESTIMATE_MARGIN).ceil() as u64
    );
    assert_cost(
        t1.bound_usd,
        (t1.input_tokens as f64 * 1.0 + 100.0 * 5.0) * 1e-6,
        "haiku bound",
    );
    assert_eq!(proj.targets[2].bound_usd, Some(0.0));
    assert_eq!(proj.targets[3].bound_usd, None);
    assert_eq!(proj.total_usd(), None);
    assert!(proj.display().ends_with("+ ?"), "{}", proj.display());
    // Without max_tokens the model's output limit bounds the output.
    req.max_tokens = None;
    let proj = budget::project(&engine, &req, &targets[..1]).unwrap();
    assert_eq!(proj.targets[0].max_output_tokens, Some(16384));
    // The quick path loads nothing and is in the same ballpark.
    let quick = budget::project_quick(&engine, &req, &targets[..1]);
    assert!(quick.targets[0].bound_usd.unwrap() > 0.0);
}

fn spent_completion(cost: f64) -> Completion {
    Completion {
        provider: "openai".into(),
        model: "gpt-4o-mini".into(),
        text: "earlier answer".into(),
        usage_reported: true,
        cost_usd: Some(cost),
        cost_source: CostSource::Computed,
        ..Default::default()
    }
}

#[test]
fn budget_check_refuses_runs_that_would_cross_a_cap() {
    let engine = engine_with(Registry::from_env(&|_| None), Pricing::builtin());
    let mut req = ChatRequest::from_prompt("hello");
    req.max_tokens = Some(1000);
    let t = vec!["openai/gpt-4o-mini".to_string()];
    let p = budget::project(&engine, &req, &t).unwrap();
    let bound = p.total_usd().unwrap();
    let b = Budget {
        session_usd: None,
        daily_usd: Some(0.01),
    };
    assert!(b
        .check(
            Spend {
                session_usd: 0.0,
                today_usd: 0.0
            },
            &p
        )
        .is_ok());
    let r = b
        .check(
            Spend {
                session_usd: 0.0,
                today_usd: 0.01 - bound / 2.0,
            },
            &p,
        )
        .unwrap_err();
    assert_eq!(r.cap, Cap::Daily);
    let b = Budget {
        session_usd: Some(0.001),
        daily_usd: Some(100.0),
    };
    let r = b
        .check(
            Spend {
                session_usd: 0.001,
                today_usd: 0.0,
            },
            &p,
        )
        .unwrap_err();
    assert_eq!(r.cap, Cap::Session);
    assert!(r.to_string().contains("--force"));
    // An unpriced target cannot be bounded: refused while a cap is set.
    let t2 = vec![
        "openai/gpt-4o-mini".to_string(),
        "openai/mystery".to_string(),
    ];
    let p2 = budget::project(&engine, &req, &t2).unwrap();
    let r = Budget {
        session_usd: None,
        daily_usd: Some(1000.0),
    }
    .check(Spend::default(), &p2)
    .unwrap_err();
    assert_eq!(r.unpriced, vec!["openai/mystery".to_string()]);
    // No cap, no check.
    assert!(Budget::default()
        .check(
            Spend {
                session_usd: 1e9,
                today_usd: 1e9
            },
            &p2
        )
        .is_ok());
}

const OPENAI_SSE: &str = concat!(
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"4\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":14,\"completion_tokens\":1,\"total_tokens\":15}}\n\n",
    "data: [DONE]\n\n"
);

fn not_implemented(c: &Completion) -> bool {
    matches!(&c.error, Some(EngineError::Config { message }) if message.contains("not implemented"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_refuses_before_any_request_reaches_the_server() {
    let server = support::Server::start(vec![support::Reply::sse(OPENAI_SSE)]).await;
    let engine = engine_with(openai_at(&server.url), Pricing::builtin());
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open_in(dir.path(), LedgerOptions::default()).unwrap());
    // Spent today already: $0.0095.
    ledger
        .record(
            &RequestMeta {
                run_id: "earlier".into(),
                target: "openai/gpt-4o-mini".into(),
                lease_id: None,
                ..Default::default()
            },
            &spent_completion(0.0095),
        )
        .unwrap();
    let mut req = ChatRequest::from_prompt("What is 2+2?");
    req.max_tokens = Some(1000); // bound ≈ 1000 * $0.60/1M = $0.0006
    let budget = Budget {
        session_usd: None,
        daily_usd: Some(0.01),
    };
    let targets = vec!["openai/gpt-4o-mini".to_string()];
    let path = dir.path().join(LEDGER_FILE);
    let books = Books::On {
        ledger: BackgroundLedger::spawn(path.clone(), LedgerOptions::default(), None),
    };
    let gated = engine.clone().with_books(books, budget);
    let err = gated
        .start(req.clone(), targets.clone(), StartOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "budget", "{err}");
    assert!(err.to_string().contains("daily budget"), "{err}");
    assert_eq!(server.count(), 0, "nothing may reach the server");
    assert_eq!(ledger.request_count().unwrap(), 1);
    // A budget with no ledger to read spending from refuses too.
    let unusable = Books::Unusable(LedgerProblem {
        reason: "no data directory".into(),
        ..Default::default()
    });
    let err = engine
        .clone()
        .with_books(unusable, budget)
        .start(req.clone(), targets.clone(), StartOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "ledger");
    assert_eq!(server.count(), 0);
    // --force sends it.
    let forced = StartOptions {
        force: true,
        ..Default::default()
    };
    let started = gated.start(req, targets, forced).await.unwrap();
    assert!(started.projection.is_none());
    let handle = started.handle;
    let done = handle.collect().await;
    if not_implemented(&done[0]) {
        eprintln!("SKIP positive control: the openai provider is not implemented on this branch");
    } else {
        assert_eq!(server.count(), 1, "forced run reached the server");
        assert!(done[0].error.is_none(), "{:?}", done[0].error);
        assert_cost(
            done[0].cost_usd,
            (14.0 * 0.15 + 1.0 * 0.6) * 1e-6,
            "forced run",
        );
    }
}

fn cached_answer() -> CachedAnswer {
    CachedAnswer {
        provider: "openai".into(),
        model: "gpt-4o-mini".into(),
        text: "The answer is 4.".into(),
        thinking: "two plus two".into(),
        refusal: None,
        tool_calls: vec![ToolCall {
            id: "call_1".into(),
            name: "calc".into(),
            arguments: "{\"expr\":\"2+2\"}".into(),
            ..Default::default()
        }],
        finish_reason: FinishReason::Stop,
        raw_finish_reason: "stop".into(),
        usage: Usage {
            input_tokens: 14,
            output_tokens: 6,
            ..Default::default()
        },
        usage_reported: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_hit_replays_at_once_and_sends_no_request() {
    let server = support::Server::start(vec![support::Reply::sse(OPENAI_SSE)]).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(ResponseCache::new(
        dir.path(),
        CacheSettings {
            enabled: true,
            ttl_secs: 3600,
        },
    ));
    let req = ChatRequest::from_prompt("What is 2+2?");
    cache
        .put(&cache::key("openai", "gpt-4o-mini", &req), &cached_answer())
        .unwrap();
    let ledger = Arc::new(Ledger::open_in(dir.path(), LedgerOptions::default()).unwrap());
    let engine = engine_with(openai_at(&server.url), Pricing::builtin())
        .with_ledger(ledger.clone())
        .with_cache(cache.clone());
    let mut h = engine.run(
        req.clone(),
        vec!["openai/gpt-4o-mini".into()],
        RunOptions::default(),
    );
    let mut events = Vec::new();
    while let Some(ev) = h.recv().await {
        events.push(ev.event);
    }
    assert_eq!(server.count(), 0, "a hit sends nothing");
    assert!(matches!(&events[0], StreamEvent::Started { provider, .. } if provider == "openai"));
    assert!(events
        .iter()
        .any(|e| matches!(e, StreamEvent::ThinkingDelta(t) if t == "two plus two")));
    assert!(events
        .iter()
        .any(|e| matches!(e, StreamEvent::TextDelta(t) if t == "The answer is 4.")));
    assert!(events
        .iter()
        .any(|e| matches!(e, StreamEvent::ToolCallDelta { name: Some(n), .. } if n == "calc")));
    assert!(events
        .iter()
        .any(|e| matches!(e, StreamEvent::Usage(u) if u.input_tokens == 14)));
    let StreamEvent::Finished(c) = events.last().unwrap() else {
        panic!("ends with Finished: {events:?}")
    };
    assert!(c.cached);
    assert_eq!(c.cost_usd, Some(0.0));
    assert_eq!(c.cost_source, CostSource::Cached);
    assert_eq!(c.text, "The answer is 4.");
    assert_eq!(c.tool_calls[0].arguments, "{\"expr\":\"2+2\"}");
    assert!(c.latency_ms < 1000.0);
    let v = serde_json::to_value(&**c).unwrap();
    assert_eq!(
        (v["cached"].as_bool(), v["cost_source"].as_str()),
        (Some(true), Some("cached"))
    );
    // Marked cached in the ledger too, at $0.
    let rows = ledger.recent(10).unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].cache_hit);
    assert_eq!(
        (rows[0].cost_usd, rows[0].cost_source.as_str()),
        (Some(0.0), "cached")
    );
    // A different request, or a run that opts out, misses.
    let other = ChatRequest::from_prompt("What is 3+3?");
    assert!(cache
        .get(&cache::key("openai", "gpt-4o-mini", &other))
        .unwrap()
        .is_none());
    let h = engine.run(
        req.clone(),
        vec!["openai/gpt-4o-mini".into()],
        RunOptions {
            cache: Some(false),
            ..Default::default()
        },
    );
    let done = h.collect().await;
    assert!(!done[0].cached);
    // An expired entry is not served.
    let short = ResponseCache::new(
        dir.path(),
        CacheSettings {
            enabled: true,
            ttl_secs: 0,
        },
    );
    short.put("k", &cached_answer()).unwrap();
    assert!(short.get("k").unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_identical_request_is_served_from_the_cache() {
    let server = support::Server::start(vec![support::Reply::sse(OPENAI_SSE)]).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(ResponseCache::new(
        dir.path(),
        CacheSettings {
            enabled: true,
            ttl_secs: 3600,
        },
    ));
    let engine = engine_with(openai_at(&server.url), Pricing::builtin()).with_cache(cache);
    let req = ChatRequest::from_prompt("What is 2+2?");
    let first = engine
        .run(
            req.clone(),
            vec!["openai/gpt-4o-mini".into()],
            RunOptions::default(),
        )
        .collect()
        .await;
    if not_implemented(&first[0]) {
        eprintln!("SKIP: the openai provider is not implemented on this branch");
        return;
    }
    assert_eq!(server.count(), 1);
    assert!(!first[0].cached);
    let second = engine
        .run(
            req,
            vec!["openai/gpt-4o-mini".into()],
            RunOptions::default(),
        )
        .collect()
        .await;
    assert_eq!(server.count(), 1, "the second request was not sent");
    assert!(second[0].cached);
    assert_eq!(second[0].text, first[0].text);
    assert_eq!(second[0].cost_usd, Some(0.0));
}

#[tokio::test]
async fn no_usage_from_the_provider_means_locally_counted_and_estimated() {
    let p = Pricing::builtin();
    let req = Arc::new(ChatRequest::from_prompt(
        "Say hello to the world, politely.",
    ));
    let mut c = Completion {
        provider: "openai".into(),
        model: "gpt-3.5-turbo".into(),
        text: "Hello, world! It is a pleasure to meet you.".into(),
        usage_reported: false,
        ..Default::default()
    };
    cost::settle(&p, &req, &mut c).await;
    assert_eq!(c.cost_source, CostSource::Estimated);
    let input = tokens::count_request("gpt-3.5-turbo", &req).tokens;
    let output = tokens::count_text(tokens::Encoding::Cl100kBase, &c.text);
    assert_eq!(
        (c.usage.input_tokens, c.usage.output_tokens),
        (input, output)
    );
    assert!(input > 8 && output > 8, "{input} {output}");
    assert_cost(
        c.cost_usd,
        (input as f64 * 0.5 + output as f64 * 1.5) * 1e-6,
        "estimate",
    );
    assert_eq!(
        c.price_ref.as_deref(),
        Some("builtin:openai/gpt-3.5-turbo@2024-01-25")
    );
    // A failed request with no output and no usage: unknown, not $0.
    let mut f = Completion {
        provider: "openai".into(),
        model: "gpt-4o-mini".into(),
        finish_reason: FinishReason::Error,
        error: Some(EngineError::Cancelled),
        ..Default::default()
    };
    cost::settle(&p, &req, &mut f).await;
    assert_eq!((f.cost_usd, f.cost_source), (None, CostSource::Unknown));
    // Refused with a status before any token was processed: known to cost nothing.
    let mut r = Completion {
        provider: "openai".into(),
        model: "gpt-4o-mini".into(),
        finish_reason: FinishReason::Error,
        error: Some(EngineError::RateLimited {
            message: "slow down".into(),
            retry_after: None,
        }),
        ..Default::default()
    };
    cost::settle(&p, &req, &mut r).await;
    assert_eq!(
        (r.cost_usd, r.cost_source),
        (Some(0.0), CostSource::Computed)
    );
}

#[test]
fn usd_is_formatted_for_people() {
    assert_eq!(cost::format_usd(None), "?");
    assert_eq!(cost::format_usd(Some(0.0)), "$0");
    assert_eq!(cost::format_usd(Some(0.00013)), "$0.00013");
    assert_eq!(cost::format_usd(Some(0.0123)), "$0.0123");
    assert_eq!(cost::format_usd(Some(1.5)), "$1.50");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pricing_update_from_a_url_prints_what_changed_and_keeps_history() {
    let litellm = |input: f64| {
        serde_json::json!({
            "sample_spec": {"litellm_provider": "one of https://docs.litellm.ai/docs/providers", "input_cost_per_token": 0.0},
            "gpt-4o-mini": {
                "litellm_provider": "openai", "mode": "chat",
                "input_cost_per_token": input, "output_cost_per_token": 6e-7,
                "cache_read_input_token_cost": 7.5e-8,
                "max_input_tokens": 128000, "max_output_tokens": 16384,
                "supports_function_calling": true, "supports_vision": true,
                "source": "https://platform.openai.com/docs/pricing"
            },
            "gemini/gemini-2.5-pro": {
                "litellm_provider": "gemini", "mode": "chat",
                "input_cost_per_token": 1.25e-6, "output_cost_per_token": 1e-5,
                "input_cost_per_token_above_200k_tokens": 2.5e-6,
                "output_cost_per_token_above_200k_tokens": 1.5e-5
            },
            "text-embedding-3-small": {"litellm_provider": "openai", "mode": "embedding", "input_cost_per_token": 2e-8, "output_cost_per_token": 0.0}
        })
        .to_string()
    };
    let server = support::Server::start_with(move |n| {
        support::Reply::json(200, litellm(if n == 0 { 1.5e-7 } else { 2e-7 }))
    })
    .await;
    let data = tempfile::tempdir().unwrap();
    let quorum = |args: Vec<String>| {
        let data = data.path().to_path_buf();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_quorum"))
                .args(&args)
                .env("QUORUM_DATA_DIR", &data)
                .env_remove("OPENAI_API_KEY")
                .output()
                .await
                .unwrap()
        }
    };
    let url = format!("{}/model_prices_and_context_window.json", server.url);
    let out = quorum(vec![
        "pricing".into(),
        "update".into(),
        "--from".into(),
        url.clone(),
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("+ openai/gpt-4o-mini: in 0.15 out 0.6 cached 0.075"),
        "{text}"
    );
    assert!(text.contains("+ gemini/gemini-2.5-pro"), "{text}");
    assert!(text.contains("2 added, 0 changed"), "{text}");
    assert!(!text.contains("embedding"), "{text}");
    assert!(data.path().join("pricing.json").exists());
    // The second fetch has a new price: one changed row, the old one kept.
    let out = quorum(vec![
        "pricing".into(),
        "update".into(),
        "--from".into(),
        url,
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "~ openai/gpt-4o-mini: in 0.15 out 0.6 cached 0.075 -> in 0.2 out 0.6 cached 0.075"
        ),
        "{text}"
    );
    assert!(text.contains("0 added, 1 changed, 1 unchanged"), "{text}");
    assert_eq!(server.count(), 2);
    let out = quorum(vec![
        "pricing".into(),
        "show".into(),
        "openai/gpt-4o-mini-2024-07-18".into(),
        "--json".into(),
    ])
    .await;
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["price"]["origin"], "user");
    assert_eq!(v["price"]["input"], 0.2);
    let ids: Vec<&str> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(
        ids.contains(&"builtin:openai/gpt-4o-mini@2024-07-18"),
        "{ids:?}"
    );
    // An unknown model exits non-zero and says so.
    let out = quorum(vec!["pricing".into(), "show".into(), "openai/nope".into()]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no price known"));
}

/// A run started `inline` goes on the task that reads it: read to the end, it
/// delivers what a spawned run does and writes the same ledger row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_run_read_to_the_end_is_recorded_like_a_spawned_one() {
    let server = support::Server::start(vec![
        support::Reply::sse(OPENAI_SSE),
        support::Reply::sse(OPENAI_SSE),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open_in(dir.path(), LedgerOptions::default()).unwrap());
    let engine =
        engine_with(openai_at(&server.url), Pricing::builtin()).with_ledger(ledger.clone());
    let mut done = Vec::new();
    for inline in [false, true] {
        let mut h = engine
            .start(
                ChatRequest::from_prompt("What is 2+2?"),
                vec!["openai/gpt-4o-mini".into()],
                StartOptions {
                    inline,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .handle;
        let mut events = Vec::new();
        while let Some(ev) = h.recv().await {
            events.push(ev.event);
        }
        let Some(StreamEvent::Finished(c)) = events.last() else {
            panic!("inline={inline}: ends with Finished: {events:?}")
        };
        assert!(events
            .iter()
            .any(|e| matches!(e, StreamEvent::TextDelta(t) if t == "4")));
        done.push((
            c.text.clone(),
            c.usage.input_tokens,
            c.usage.output_tokens,
            c.cost_usd,
        ));
    }
    assert_eq!(done[0], done[1]);
    assert_eq!(server.count(), 2);
    let rows = ledger.recent(10).unwrap();
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!((r.status.as_str(), r.output_tokens), ("ok", 1), "{r:?}");
    }
}

/// A one-target run of `prompt` on gpt-4o-mini, driven by its reader.
async fn start_inline(
    engine: &llm_quorum::engine::Engine,
    prompt: &str,
) -> llm_quorum::engine::RunHandle {
    engine
        .start(
            ChatRequest::from_prompt(prompt),
            vec!["openai/gpt-4o-mini".into()],
            StartOptions {
                inline: true,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .handle
}

/// A long answer sent at once through an inline run (its events go through
/// the run's own queue, not a channel): every word arrives, once and in
/// order, and the run is recorded. The queue's bound is tested in `run.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_answer_sent_at_once_through_an_inline_run_arrives_whole() {
    let n = 3000;
    let server =
        support::Server::start(vec![support::Reply::sse(support::openai_words_sse(n))]).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open_in(dir.path(), LedgerOptions::default()).unwrap());
    let engine =
        engine_with(openai_at(&server.url), Pricing::builtin()).with_ledger(ledger.clone());
    let mut h = start_inline(&engine, "Count.").await;
    let mut text = String::new();
    let mut finished = None;
    while let Some(ev) = h.recv().await {
        match ev.event {
            StreamEvent::TextDelta(t) => text.push_str(&t),
            StreamEvent::Finished(c) => finished = Some(c),
            _ => {}
        }
    }
    let want: String = (0..n).map(|i| format!("w{i} ")).collect();
    assert!(
        text == want,
        "{} of {} bytes arrived",
        text.len(),
        want.len()
    );
    assert_eq!(finished.expect("finished").text, want);
    let rows = ledger.recent(1).unwrap();
    assert_eq!(rows[0].status, "ok");
}

/// A consumer that cancels an inline run and drops it mid-stream (a client
/// that went away) leaves nothing unrecorded: the rest of the run goes on in
/// a task of its own, stops its upstream request and writes a `cancelled` row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_run_dropped_mid_stream_still_records_itself_as_cancelled() {
    let sse = support::openai_words_sse(200);
    let server = support::Server::start(vec![
        support::Reply::sse(sse).chunked(64, std::time::Duration::from_millis(20))
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open_in(dir.path(), LedgerOptions::default()).unwrap());
    let engine =
        engine_with(openai_at(&server.url), Pricing::builtin()).with_ledger(ledger.clone());
    let mut h = start_inline(&engine, "go on").await;
    // Read until the first words arrive, then go away.
    loop {
        let ev = h
            .recv()
            .await
            .expect("the stream goes on past its first words");
        if matches!(ev.event, StreamEvent::TextDelta(_)) {
            break;
        }
    }
    h.cancel();
    drop(h);
    support::eventually(|| server.aborted.load(std::sync::atomic::Ordering::SeqCst) > 0).await;
    let mut rows = Vec::new();
    support::eventually(|| {
        rows = ledger.recent(10).unwrap();
        !rows.is_empty()
    })
    .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "cancelled", "{:?}", rows[0]);
}
