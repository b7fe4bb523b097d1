//! Fuzzing the config loader, as property tests: any text, TOML or not,
//! gives either a configuration or an error that names where it is (line and
//! column, or the key path) — never a panic. Bounded and deterministic (see
//! `tests/support/fuzz.rs`); `QUORUM_FUZZ_CASES=20000 cargo test --release
//! --test fuzz_config` runs longer.

#[path = "support/fuzz.rs"]
mod fuzz_support;

use llm_quorum::config::{self, Overrides};
use proptest::prelude::*;

fn env(k: &str) -> Option<String> {
    match k {
        "SET" => Some("value".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn check(text: &str) -> Result<(), TestCaseError> {
    match config::load_text(None, text, &Overrides::default(), &env) {
        Ok(_) => Ok(()),
        Err(e) => {
            prop_assert!(!e.origin.is_empty(), "no origin: {e}");
            prop_assert!(
                e.line.is_some() || e.key_path.is_some(),
                "an error that says neither where nor which key: {e}\n--- text ---\n{text}"
            );
            prop_assert!(!e.message.is_empty(), "empty message: {e}");
            Ok(())
        }
    }
}

/// Lines of TOML built from the config's own vocabulary, valid or nearly so.
fn tomlish() -> impl Strategy<Value = String> {
    const TABLES: &[&str] = &[
        "[providers.openai]",
        "[providers.groq]",
        "[providers.local]",
        "[providers.x.headers]",
        "[providers.openai.timeouts]",
        "[providers.openai.retry]",
        "[providers.openai.breaker]",
        "[providers.openai.limits]",
        "[aliases]",
        "[tiers]",
        "[fallbacks]",
        "[budget]",
        "[cache]",
        "[keys]",
        "[pricing.\"openai/gpt-4o\"]",
        "[models.\"openai/gpt-4o\"]",
        "[[providers]]",
        "[providers]",
        "[",
        "[]",
        "[a.b.c.d]",
    ];
    const KEYS: &[&str] = &[
        "kind",
        "base_url",
        "api_key_env",
        "api_key_cmd",
        "api_key",
        "key",
        "token",
        "headers",
        "authorization",
        "x-api-key",
        "models",
        "default_model",
        "compare_targets",
        "theme",
        "log_content",
        "allowed_models",
        "max_attempts",
        "base_delay_ms",
        "max_wait_secs",
        "first_token_secs",
        "idle_secs",
        "total_secs",
        "connect_secs",
        "failure_threshold",
        "cooldown_secs",
        "max_concurrency",
        "requests_per_minute",
        "tokens_per_minute",
        "session_usd",
        "daily_usd",
        "enabled",
        "ttl_secs",
        "input",
        "output",
        "cached_input",
        "cache_write",
        "reasoning",
        "context_window",
        "max_tokens",
        "tools",
        "vision",
        "thinking",
        "json",
        "fast",
        "unknown_key",
        "\"quoted key\"",
        "a.b",
    ];
    const VALUES: &[&str] = &[
        "\"openai\"",
        "\"anthropic\"",
        "\"gemini\"",
        "\"ollama\"",
        "\"compatible\"",
        "\"mock\"",
        "\"nonsense\"",
        "\"http://127.0.0.1:1/v1\"",
        "\"not a url\"",
        "\"${SET}\"",
        "\"${UNSET}\"",
        "\"${UNSET:-fallback}\"",
        "\"${EMPTY}\"",
        "\"${\"",
        "\"$${SET}\"",
        "\"Bearer ${SET}\"",
        "\"Bearer sk-literal\"",
        "\"echo key\"",
        "\"\"",
        "0",
        "-1",
        "1.5",
        "1e400",
        "nan",
        "inf",
        "18446744073709551616",
        "true",
        "false",
        "[]",
        "[\"a\", 1]",
        "[\"openai/gpt-4o\"]",
        "{}",
        "{ a = 1 }",
        "1979-05-27T07:32:00Z",
        "'''multi\nline'''",
        "\"unterminated",
        "\"\\u00e9\"",
        "\"\\uD800\"",
    ];
    let line = prop_oneof![
        2 => proptest::sample::select(TABLES).prop_map(str::to_string),
        6 => (proptest::sample::select(KEYS), proptest::sample::select(VALUES))
            .prop_map(|(k, v)| format!("{k} = {v}")),
        1 => ".{0,30}",
        1 => Just(String::new()),
        1 => Just("# comment".to_string()),
    ];
    proptest::collection::vec(line, 0..24).prop_map(|l| l.join("\n"))
}

proptest! {
    #![proptest_config(fuzz_support::config())]

    #[test]
    fn config_text_gives_a_config_or_a_located_error(text in tomlish()) {
        check(&text)?;
    }

    #[test]
    fn arbitrary_text_gives_a_config_or_a_located_error(text in ".{0,200}") {
        check(&text)?;
    }

    #[test]
    fn arbitrary_bytes_as_text_give_a_config_or_a_located_error(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        check(&String::from_utf8_lossy(&bytes))?;
    }
}

#[test]
fn the_example_config_with_any_one_line_cut_gives_a_config_or_a_located_error() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
            .expect("config.example.toml");
    let lines: Vec<&str> = example.lines().collect();
    for i in 0..lines.len() {
        let mut cut = lines.clone();
        cut.remove(i);
        check(&cut.join("\n")).unwrap_or_else(|e| panic!("without line {}: {e}", i + 1));
    }
}
