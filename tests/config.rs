//! Config loading: layers, `${VAR}`, keys from env or a command, and one
//! test per kind of mistake (each error names file, line, column, key path).
//! Nothing here reads the real user's config dir: every load names its file
//! or injects the environment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use llm_quorum::app::{self, GlobalFlags};
use llm_quorum::config::{self, ConfigError, Overrides};
use llm_quorum::engine::provider::ProviderKind;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| m.get(k).cloned()
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// Load a fixture the way the binary does (`--config PATH`), keys included.
fn load_fixture(name: &str) -> Result<config::Config, ConfigError> {
    let ov = Overrides {
        config: Some(fixture(name)),
        ..Default::default()
    };
    let c = config::load(&ov, &no_env)?;
    c.engine_config(&no_env)?;
    Ok(c)
}

fn check(e: &ConfigError, file: &str, line: usize, col: usize, key: &str) {
    assert!(e.origin.ends_with(file), "origin {:?}", e.origin);
    assert_eq!((e.line, e.column), (Some(line), Some(col)), "{e}");
    assert_eq!(e.key_path.as_deref(), Some(key), "{e}");
    let shown = e.to_string();
    assert!(
        shown.contains(&format!("{file}:{line}:{col}: {key}: ")),
        "Display names file:line:col: key: — {shown}"
    );
}

fn tmp_file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

// ---------------------------------------------------------------------------
// config.example.toml

#[test]
fn example_config_parses_and_every_section_lands() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = config::load_text(Some(&path), &text, &Overrides::default(), &no_env)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.default_model.as_deref(), Some("fast"));
    assert_eq!(c.compare_targets.len(), 3);
    assert_eq!(c.theme, "default");
    assert!(c.log_content);
    let oa = &c.providers["openai"];
    assert_eq!(oa.policy.limits.max_concurrency, Some(8));
    assert_eq!(oa.policy.limits.requests_per_minute, Some(500));
    assert_eq!(
        oa.policy.timeouts.idle,
        Some(std::time::Duration::from_secs(30))
    );
    assert_eq!(
        c.providers["anthropic"].policy.limits.max_concurrency,
        Some(4)
    );
    assert_eq!(c.providers["anthropic"].kind, ProviderKind::Anthropic);
    assert_eq!(
        c.providers["groq"].base_url, "https://api.groq.com/openai/v1",
        "${{VAR:-fallback}} used the fallback"
    );
    assert_eq!(
        c.providers["local"].api_key_cmd.as_deref(),
        Some("pass show llm/local-server")
    );
    assert_eq!(c.aliases["best"], "tier:premium");
    assert_eq!(c.tiers["fast"][0], "openai/gpt-4o-mini");
    assert_eq!(
        c.fallbacks["openai/gpt-4o-mini"],
        ["groq/llama-3.3-70b-versatile"]
    );
    assert_eq!(c.models["openai/gpt-4o-mini"].max_tokens, Some(4096));
    assert_eq!(
        c.models["openai/gpt-4o-mini"].capabilities.thinking,
        Some(false)
    );
    assert_eq!(c.budget.daily_usd, Some(5.0));
    assert!(!c.cache.enabled);
    assert_eq!(c.cache.ttl_secs, 86400);
    assert_eq!(c.pricing["groq/llama-3.3-70b-versatile"].input, 0.59);
    assert_eq!(c.keys["send"], "enter");
    assert!(c.allowed_models.contains(&"openai/*".to_string()));

    // With the password-manager command swapped for one that works here, the
    // whole example builds an engine whose names resolve.
    let text = text.replace("pass show llm/local-server", "printf local-key");
    let env = env_of(&[("OPENAI_API_KEY", "sk-a"), ("GROQ_API_KEY", "gsk")]);
    let c = config::load_text(Some(&path), &text, &Overrides::default(), &env).unwrap();
    let ec = c.engine_config(&env).unwrap();
    assert_eq!(
        ec.registry.resolve("mini").unwrap().id(),
        "openai/gpt-4o-mini"
    );
    assert_eq!(
        ec.registry.resolve("fast").unwrap().id(),
        "openai/gpt-4o-mini"
    );
    assert_eq!(ec.registry.resolve("best").unwrap().id(), "openai/gpt-4.1");
    let local = ec.registry.provider("local").unwrap();
    assert_eq!(local.api_key.as_ref().unwrap().expose(), "local-key");
    assert_eq!(
        ec.registry
            .resolve("openrouter/openai/gpt-4o-mini")
            .unwrap_err()
            .kind(),
        "not_allowed"
    );
}

// ---------------------------------------------------------------------------
// One test per kind of mistake

#[test]
fn syntax_error_names_line_column_and_key() {
    let e = load_fixture("syntax_error.toml").unwrap_err();
    check(&e, "syntax_error.toml", 5, 11, "providers.openai.base_url");
    assert!(e.message.contains("TOML syntax error"), "{e}");
}

#[test]
fn unknown_key_names_its_path_and_the_allowed_keys() {
    let e = load_fixture("unknown_key.toml").unwrap_err();
    check(
        &e,
        "unknown_key.toml",
        5,
        1,
        "providers.openai.timeouts.idle_sec",
    );
    assert!(e.message.contains("unknown key `idle_sec`"), "{e}");
    assert!(
        e.message.contains("allowed keys") && e.message.contains("`idle_secs`"),
        "{e}"
    );
}

#[test]
fn wrong_type_names_the_key() {
    let e = load_fixture("wrong_type.toml").unwrap_err();
    check(
        &e,
        "wrong_type.toml",
        2,
        19,
        "providers.openai.max_concurrency",
    );
    assert!(e.message.contains("invalid type: string \"ten\""), "{e}");
}

#[test]
fn unknown_provider_kind_lists_the_kinds() {
    let e = load_fixture("unknown_kind.toml").unwrap_err();
    check(&e, "unknown_kind.toml", 2, 8, "providers.groq.kind");
    assert!(
        e.message.contains("`groq`") && e.message.contains("`compatible`"),
        "{e}"
    );
}

#[test]
fn missing_kind_for_a_new_provider() {
    let e = load_fixture("missing_kind.toml").unwrap_err();
    check(&e, "missing_kind.toml", 1, 12, "providers.groq");
    assert!(e.message.contains("`kind` is required"), "{e}");
}

#[test]
fn unset_variable_in_substitution_is_named() {
    let e = load_fixture("missing_env_var.toml").unwrap_err();
    check(&e, "missing_env_var.toml", 3, 12, "providers.groq.base_url");
    assert!(
        e.message.contains("GROQ_TEST_BASE_URL_UNSET is not set"),
        "{e}"
    );
    // Set, it substitutes.
    let env = env_of(&[("GROQ_TEST_BASE_URL_UNSET", "https://example.test")]);
    let ov = Overrides {
        config: Some(fixture("missing_env_var.toml")),
        ..Default::default()
    };
    let c = config::load(&ov, &env).unwrap();
    assert_eq!(
        c.providers["groq"].base_url,
        "https://example.test/openai/v1"
    );
}

#[test]
fn failing_key_command_names_the_provider_but_not_its_output() {
    let e = load_fixture("failing_key_cmd.toml").unwrap_err();
    check(
        &e,
        "failing_key_cmd.toml",
        4,
        1,
        "providers.vault.api_key_cmd",
    );
    let shown = format!("{e} {e:?}");
    assert!(
        shown.contains("\"vault\"") && shown.contains("exit status 3"),
        "{shown}"
    );
    assert!(
        !shown.contains("sk-leaked") && !shown.contains("oops"),
        "{shown}"
    );
}

#[test]
fn a_literal_api_key_is_refused_without_echoing_it() {
    let e = load_fixture("literal_api_key.toml").unwrap_err();
    check(&e, "literal_api_key.toml", 2, 1, "providers.openai.api_key");
    assert!(
        e.message.contains("api_key_env") && e.message.contains("api_key_cmd"),
        "{e}"
    );
    assert!(!format!("{e:?}").contains("sk-should"), "{e:?}");
}

#[test]
fn a_literal_credential_header_is_refused_but_one_from_the_environment_is_fine() {
    let e = load_fixture("literal_auth_header.toml").unwrap_err();
    check(
        &e,
        "literal_auth_header.toml",
        7,
        1,
        "providers.proxy.headers.Authorization",
    );
    assert!(!format!("{e:?}").contains("sk-literal"), "{e:?}");
    let text = std::fs::read_to_string(fixture("literal_auth_header.toml"))
        .unwrap()
        .replace("sk-literal-in-header", "${PROXY_TOKEN}");
    let env = env_of(&[("PROXY_TOKEN", "tok-1")]);
    let c = config::load_text(None, &text, &Overrides::default(), &env).unwrap();
    let h = &c.providers["proxy"].headers;
    assert!(h.contains(&("Authorization".into(), "Bearer tok-1".into())));
    assert!(h.contains(&("X-Team".into(), "research".into())));
    assert!(
        !format!("{c:?}").contains("tok-1"),
        "header values stay out of Debug"
    );
}

#[test]
fn invalid_glob_in_allowed_models() {
    let e = load_fixture("bad_glob.toml").unwrap_err();
    check(&e, "bad_glob.toml", 1, 41, "allowed_models[1]");
    assert!(e.message.contains("anthropic/[claude"), "{e}");
}

#[test]
fn fallback_to_an_unknown_provider() {
    let e = load_fixture("unknown_fallback_provider.toml").unwrap_err();
    check(
        &e,
        "unknown_fallback_provider.toml",
        2,
        34,
        "fallbacks.\"anthropic/claude-sonnet-4-5\"[0]",
    );
    assert!(e.message.contains("no provider named \"opneai\""), "{e}");
}

#[test]
fn a_missing_explicit_file_is_an_error_but_a_missing_default_is_fine() {
    let missing = fixture("does-not-exist.toml");
    let ov = Overrides {
        config: Some(missing.clone()),
        ..Default::default()
    };
    let e = config::load(&ov, &no_env).unwrap_err();
    assert!(
        e.origin.ends_with("does-not-exist.toml") && e.message.contains("not found"),
        "{e}"
    );
    // QUORUM_CONFIG moves the default location: absent there means no user
    // file, and the place looked at is remembered for `quorum models`.
    let env = env_of(&[("QUORUM_CONFIG", missing.to_str().unwrap())]);
    let c = config::load(&Overrides::default(), &env).unwrap();
    assert!(c.file.is_none());
    assert_eq!(c.searched.as_deref(), Some(missing.as_path()));
    assert!(c.providers.contains_key("openai"));
    // The platform default path, absent: the built-in defaults.
    let c = config::load_from(Some((missing, false)), &Overrides::default(), &no_env).unwrap();
    assert!(c.file.is_none());
    // --config wins over QUORUM_CONFIG.
    let ov = Overrides {
        config: Some(fixture("wrong_type.toml")),
        ..Default::default()
    };
    let env = env_of(&[("QUORUM_CONFIG", "/nonexistent/x.toml")]);
    assert!(config::load(&ov, &env)
        .unwrap_err()
        .origin
        .ends_with("wrong_type.toml"));
}

#[test]
fn bad_environment_values_name_the_variable() {
    let e = config::load_text(
        None,
        "",
        &Overrides::default(),
        &env_of(&[("QUORUM_TIMEOUT_SECS", "soon")]),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("environment variable QUORUM_TIMEOUT_SECS: "),
        "{e}"
    );
    let e = config::load_text(
        None,
        "",
        &Overrides::default(),
        &env_of(&[("QUORUM_MAX_RETRIES", "-1")]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("QUORUM_MAX_RETRIES"), "{e}");
    let e = config::load_text(
        None,
        "",
        &Overrides::default(),
        &env_of(&[("QUORUM_ALLOWED_MODELS", "openai/[")]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("QUORUM_ALLOWED_MODELS"), "{e}");
}

#[test]
fn semantic_mistakes_are_located_too() {
    let cases = [
        (
            "[providers.x]\nkind = \"openai\"\nmax_concurrency = 0\n",
            3,
            "providers.x.max_concurrency",
        ),
        (
            "[providers.openai.retry]\nmax_attempts = 0\n",
            2,
            "providers.openai.retry.max_attempts",
        ),
        (
            "[providers.openai.timeouts]\nidle_secs = -1\n",
            2,
            "providers.openai.timeouts.idle_secs",
        ),
        (
            "[providers.x]\nkind = \"compatible\"\nbase_url = \"localhost:8000\"\n",
            3,
            "providers.x.base_url",
        ),
        ("[aliases]\nq = \"nowhere/model\"\n", 2, "aliases.q"),
        ("[models.gpt]\ncontext_window = 1\n", 1, "models.gpt"),
        (
            "[tiers]\nfast = [\"openai/gpt-4o-mini\", \"\"]\n",
            2,
            "tiers.fast[1]",
        ),
        ("[tiers]\nturbo = []\n", 2, "tiers.turbo"),
        ("[cache]\nttl = 5\n", 2, "cache.ttl"),
        (
            "[providers.openai.headers]\n\"bad header\" = \"x\"\n",
            2,
            "providers.openai.headers.\"bad header\"",
        ),
    ];
    for (text, line, key) in cases {
        let e = config::load_text(
            Some(Path::new("c.toml")),
            text,
            &Overrides::default(),
            &no_env,
        )
        .expect_err(text);
        assert_eq!(e.line, Some(line), "{text}: {e}");
        assert_eq!(e.key_path.as_deref(), Some(key), "{text}: {e}");
    }
}

// ---------------------------------------------------------------------------
// Layers

#[test]
fn environment_overrides_the_file_and_flags_override_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = tmp_file(
        &dir,
        "c.toml",
        r#"
default_model = "mock/file"
allowed_models = ["openai/*"]
[providers.openai]
base_url = "https://file.example/v1"
[providers.openai.timeouts]
total_secs = 100
[providers.openai.retry]
max_attempts = 5
"#,
    );
    // File alone (named by QUORUM_CONFIG).
    let env = env_of(&[("QUORUM_CONFIG", path.to_str().unwrap())]);
    let c = config::load(&Overrides::default(), &env).unwrap();
    assert_eq!(c.file.as_deref(), Some(path.as_path()));
    assert_eq!(c.default_model.as_deref(), Some("mock/file"));
    assert_eq!(c.providers["openai"].base_url, "https://file.example/v1");
    assert_eq!(c.providers["openai"].policy.retry.max_attempts, 5);
    // Environment over the file.
    let env = env_of(&[
        ("QUORUM_CONFIG", path.to_str().unwrap()),
        ("QUORUM_DEFAULT_MODEL", "mock/env"),
        ("QUORUM_ALLOWED_MODELS", "mock/*, ollama/*"),
        ("QUORUM_TIMEOUT_SECS", "7"),
        ("QUORUM_MAX_RETRIES", "0"),
        ("OPENAI_BASE_URL", "http://env.example/v1"),
        ("OLLAMA_HOST", "0.0.0.0:9999"),
    ]);
    let c = config::load(&Overrides::default(), &env).unwrap();
    assert_eq!(c.default_model.as_deref(), Some("mock/env"));
    assert_eq!(c.allowed_models, ["mock/*", "ollama/*"]);
    let p = &c.providers["openai"].policy;
    assert_eq!(p.timeouts.total, Some(std::time::Duration::from_secs(7)));
    assert_eq!(p.retry.max_attempts, 1);
    assert_eq!(c.providers["anthropic"].policy.retry.max_attempts, 1);
    assert_eq!(c.providers["openai"].base_url, "http://env.example/v1");
    assert_eq!(c.providers["ollama"].base_url, "http://127.0.0.1:9999");
    // Flags over the environment.
    let ov = Overrides {
        default_model: Some("mock/flag".into()),
        allowed_models: Some(vec!["mock/flag".into()]),
        timeout_secs: Some(3.0),
        max_retries: Some(4),
        ..Default::default()
    };
    let c = config::load(&ov, &env).unwrap();
    assert_eq!(c.default_model.as_deref(), Some("mock/flag"));
    assert_eq!(c.allowed_models, ["mock/flag"]);
    let p = &c.providers["openai"].policy;
    assert_eq!(p.timeouts.total, Some(std::time::Duration::from_secs(3)));
    assert_eq!(p.retry.max_attempts, 5);
}

#[test]
fn builtin_providers_exist_with_no_config_and_take_keys_from_the_environment() {
    let env = env_of(&[
        ("ANTHROPIC_API_KEY", "sk-ant-x"),
        ("GOOGLE_API_KEY", "g-key"),
    ]);
    let c = config::load_text(None, "", &Overrides::default(), &env).unwrap();
    let ec = c.engine_config(&env).unwrap();
    let r = &ec.registry;
    for name in config::BUILTIN_PROVIDERS {
        assert!(r.provider(name).is_some(), "{name}");
    }
    assert_eq!(
        r.provider("anthropic")
            .unwrap()
            .api_key
            .as_ref()
            .unwrap()
            .expose(),
        "sk-ant-x"
    );
    assert_eq!(
        r.provider("gemini")
            .unwrap()
            .api_key
            .as_ref()
            .unwrap()
            .expose(),
        "g-key"
    );
    assert!(r.provider("openai").unwrap().api_key.is_none());
    // The fast tier skips openai (no key) for gemini.
    assert_eq!(r.resolve("fast").unwrap().id(), "gemini/gemini-2.5-flash");
    assert_eq!(
        r.model_meta("anthropic", "claude-sonnet-4-5")
            .unwrap()
            .context_window,
        Some(200_000)
    );
    // Keys never show in Debug.
    let dbg = format!("{r:?}");
    assert!(!dbg.contains("sk-ant-x") && !dbg.contains("g-key"), "{dbg}");
}

#[test]
fn key_command_runs_once_and_its_output_stays_secret() {
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    let cmd = format!(
        "echo run >> {}; printf '  sk-from-cmd-42\\n'",
        count.display()
    );
    let text = format!(
        "[providers.vault]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_cmd = {cmd:?}\n\n[providers.openai]\napi_key_cmd = \"printf sk-openai-cmd\"\n"
    );
    // api_key_cmd in the file wins over the built-in api_key_env.
    let env = env_of(&[("OPENAI_API_KEY", "sk-from-env")]);
    let c = config::load_text(None, &text, &Overrides::default(), &env).unwrap();
    let dbg_cfg = format!("{c:?}");
    let ec = c.engine_config(&env).unwrap();
    let vault = ec.registry.provider("vault").unwrap();
    assert_eq!(vault.api_key.as_ref().unwrap().expose(), "sk-from-cmd-42");
    let oa = ec.registry.provider("openai").unwrap();
    assert_eq!(oa.api_key.as_ref().unwrap().expose(), "sk-openai-cmd");
    assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 1);
    let dbg = format!("{:?} {dbg_cfg}", ec.registry);
    assert!(
        !dbg.contains("sk-from-cmd-42") && !dbg.contains("sk-openai-cmd"),
        "{dbg}"
    );
    // Both sources in one table is ambiguous only in the sense that the command wins.
    assert!(c.providers["openai"].api_key_cmd.is_some());
}

#[test]
fn a_broken_file_gives_no_engine_at_all() {
    let flags = GlobalFlags {
        config: Some(fixture("wrong_type.toml")),
        ..Default::default()
    };
    let e = app::load_with_env(&flags, &no_env).unwrap_err();
    assert!(e.to_string().contains("wrong_type.toml:2:19"), "{e}");
    let flags = GlobalFlags {
        config: Some(fixture("does-not-exist.toml")),
        ..Default::default()
    };
    assert!(app::load_with_env(&flags, &no_env).is_err());
}

// ---------------------------------------------------------------------------
// `quorum models`

fn quorum(args: &[&str], envs: &[(&str, &str)], home: &Path) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_quorum"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"));
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn models_json_lists_providers_keys_aliases_tiers_and_unknown_prices() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tmp_file(
        &dir,
        "c.toml",
        r#"
allowed_models = ["openai/*", "groq/*", "mock/*"]
[providers.groq]
kind = "compatible"
base_url = "https://api.groq.com/openai/v1"
api_key_env = "GROQ_API_KEY"
models = ["llama-unpriced-test"]
[aliases]
mini = "openai/gpt-4o-mini"
[models."groq/llama-unpriced-test"]
context_window = 131072
max_tokens = 8192
"#,
    );
    let out = quorum(
        &["models", "--json", "--config", cfg.to_str().unwrap()],
        &[("OPENAI_API_KEY", "sk-test-secret-9")],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("sk-test-secret-9"), "the key never shows");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let providers = v["providers"].as_array().unwrap();
    let p = |n: &str| providers.iter().find(|p| p["name"] == n).unwrap().clone();
    assert_eq!(p("openai")["key_present"], true);
    assert_eq!(p("openai")["key_source"], "env:OPENAI_API_KEY");
    assert_eq!(p("anthropic")["key_present"], false);
    assert_eq!(p("groq")["kind"], "compatible");
    assert_eq!(p("ollama")["key_needed"], false);
    let models = v["models"].as_array().unwrap();
    let m = |id: &str| models.iter().find(|m| m["id"] == id).unwrap().clone();
    let groq = m("groq/llama-unpriced-test");
    assert_eq!(groq["context_window"], 131072);
    assert_eq!(groq["max_tokens"], 8192);
    assert!(groq["price"].is_null(), "unknown price is null, never 0");
    assert_eq!(m("anthropic/claude-sonnet-4-5")["allowed"], false);
    assert_eq!(v["aliases"]["mini"]["resolves_to"], "openai/gpt-4o-mini");
    assert_eq!(v["tiers"]["fast"]["resolves_to"], "openai/gpt-4o-mini");
    assert_eq!(v["allowed_models"][1], "groq/*");
    assert!(v["config_file"].as_str().unwrap().ends_with("c.toml"));

    // The table form says the same.
    let out = quorum(
        &["models", "--config", cfg.to_str().unwrap()],
        &[],
        dir.path(),
    );
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("missing (set OPENAI_API_KEY)"), "{text}");
    assert!(
        text.contains("groq/llama-unpriced-test") && text.contains("131k"),
        "{text}"
    );
    assert!(text.contains("not allowed"), "{text}");

    // A broken config: exit 2 and a located one-line reason.
    let out = quorum(
        &[
            "models",
            "--config",
            fixture("unknown_key.toml").to_str().unwrap(),
        ],
        &[],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("unknown_key.toml:5:1: providers.openai.timeouts.idle_sec"),
        "{err}"
    );
}
