//! Which provider serves a `provider/model` target.
//!
//! Built-in providers appear when their standard key variables are set; the
//! mock provider is always there. Config (issue 3) adds named providers,
//! aliases, tiers and governance on top.

use std::collections::BTreeMap;
use std::sync::Arc;

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::error::EngineError;
use super::provider::{ProviderKind, ProviderSpec, Secret};
use super::request::{ChatRequest, ResponseFormat};

/// `f("{provider}/{model}")`, built on the stack when it is short: resolving a
/// target and looking up a model's facts happen several times per request.
fn with_id<R>(provider: &str, model: &str, f: impl FnOnce(&str) -> R) -> R {
    let n = provider.len() + 1 + model.len();
    let mut buf = [0u8; 192];
    if n > buf.len() {
        return f(&format!("{provider}/{model}"));
    }
    buf[..provider.len()].copy_from_slice(provider.as_bytes());
    buf[provider.len()] = b'/';
    buf[provider.len() + 1..n].copy_from_slice(model.as_bytes());
    // Two whole strs around an ASCII '/': always UTF-8.
    f(std::str::from_utf8(&buf[..n]).unwrap_or_default())
}

/// A target resolved to a provider and a model name.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// What the user asked for (`fast`, `openai/gpt-4o-mini`, ...).
    pub requested: String,
    /// The provider.
    pub spec: Arc<ProviderSpec>,
    /// The model name as the provider knows it.
    pub model: String,
}

impl Resolved {
    /// `provider/model`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.spec.name, self.model)
    }
}

/// What a model can do, where known (`None` = not said; nothing is refused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    /// Function / tool calling.
    pub tools: Option<bool>,
    /// Thinking / reasoning output.
    pub thinking: Option<bool>,
    /// Image input.
    pub vision: Option<bool>,
    /// JSON mode / structured output.
    pub json: Option<bool>,
}

/// Per-model facts from config: limits and capabilities.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ModelMeta {
    /// Context window in tokens.
    pub context_window: Option<u64>,
    /// Output limit used when a request sets none.
    pub max_tokens: Option<u32>,
    /// Capabilities.
    pub capabilities: Capabilities,
}

/// `allowed_models` governance: exact names or globs over `provider/model`.
#[derive(Debug, Clone)]
struct Governance {
    patterns: Vec<String>,
    set: GlobSet,
}

/// The providers known to this process.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    providers: BTreeMap<String, Arc<ProviderSpec>>,
    aliases: BTreeMap<String, String>,
    /// Tier name -> members in order of preference.
    tiers: BTreeMap<String, Vec<String>>,
    /// Known model names per provider (for suggestions and the picker).
    models: BTreeMap<String, Vec<String>>,
    /// Facts per `provider/model`.
    meta: BTreeMap<String, ModelMeta>,
    allowed: Option<Governance>,
}

/// Reads an environment variable; injectable for tests.
pub type EnvFn<'a> = &'a dyn Fn(&str) -> Option<String>;

fn env_nonempty(env: EnvFn<'_>, k: &str) -> Option<String> {
    env(k).filter(|v| !v.trim().is_empty())
}

/// Whether requests to `spec` can be sent as far as keys go: it has a key,
/// or its kind needs none.
pub fn has_key(spec: &ProviderSpec) -> bool {
    !spec.kind.needs_key()
        || spec
            .api_key
            .as_ref()
            .is_some_and(|k| !k.expose().is_empty())
}

/// Alias and tier chains longer than this are treated as loops.
const MAX_DEPTH: usize = 8;

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in providers, from the standard environment variables.
    /// `mock` and `ollama` are always present (Ollama needs no key).
    pub fn from_env(env: EnvFn<'_>) -> Self {
        let mut r = Registry::new();
        r.insert(ProviderSpec::new("mock", ProviderKind::Mock));
        let builtin: [(&str, ProviderKind, &[&str], &str); 4] = [
            (
                "openai",
                ProviderKind::Openai,
                &["OPENAI_API_KEY"],
                "OPENAI_BASE_URL",
            ),
            (
                "anthropic",
                ProviderKind::Anthropic,
                &["ANTHROPIC_API_KEY"],
                "ANTHROPIC_BASE_URL",
            ),
            (
                "gemini",
                ProviderKind::Gemini,
                &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
                "GEMINI_BASE_URL",
            ),
            (
                "openrouter",
                ProviderKind::Openrouter,
                &["OPENROUTER_API_KEY"],
                "OPENROUTER_BASE_URL",
            ),
        ];
        for (name, kind, keys, base) in builtin {
            let mut spec = ProviderSpec::new(name, kind);
            spec.api_key = keys
                .iter()
                .find_map(|k| env_nonempty(env, k))
                .map(Secret::new);
            if let Some(b) = env_nonempty(env, base) {
                spec.base_url = b;
            }
            r.insert(spec);
        }
        let mut ollama = ProviderSpec::new("ollama", ProviderKind::Ollama);
        if let Some(h) = env_nonempty(env, "OLLAMA_HOST") {
            ollama.base_url = normalize_ollama_host(&h);
        }
        r.insert(ollama);
        for m in super::provider::mock::models() {
            r.add_model("mock", m.name);
        }
        r
    }

    /// Add or replace a provider.
    pub fn insert(&mut self, spec: ProviderSpec) {
        self.providers.insert(spec.name.clone(), Arc::new(spec));
    }

    /// Add an alias (`fast` -> `openai/gpt-4o-mini`).
    pub fn add_alias(&mut self, alias: impl Into<String>, target: impl Into<String>) {
        self.aliases.insert(alias.into(), target.into());
    }

    /// Set a tier: a name that resolves to the first of `members` that has
    /// a key and is allowed.
    pub fn set_tier(&mut self, tier: impl Into<String>, members: Vec<String>) {
        self.tiers.insert(tier.into(), members);
    }

    /// Restrict every target to `patterns` (exact `provider/model` names or
    /// globs such as `openai/*`); an empty list allows everything.
    pub fn set_allowed(&mut self, patterns: Vec<String>) -> Result<(), EngineError> {
        if patterns.is_empty() {
            self.allowed = None;
            return Ok(());
        }
        let mut b = GlobSetBuilder::new();
        for p in &patterns {
            let g = Glob::new(p).map_err(|e| EngineError::Config {
                message: format!("allowed_models: invalid pattern {p:?}: {}", e.kind()),
            })?;
            b.add(g);
        }
        let set = b.build().map_err(|e| EngineError::Config {
            message: format!("allowed_models: {e}"),
        })?;
        self.allowed = Some(Governance { patterns, set });
        Ok(())
    }

    /// Record facts about `provider/model`.
    pub fn set_model_meta(&mut self, id: impl Into<String>, meta: ModelMeta) {
        self.meta.insert(id.into(), meta);
    }

    /// Record a known model of a provider.
    pub fn add_model(&mut self, provider: &str, model: impl Into<String>) {
        let list = self.models.entry(provider.to_string()).or_default();
        let m = model.into();
        if !list.contains(&m) {
            list.push(m);
        }
    }

    /// A provider by name.
    pub fn provider(&self, name: &str) -> Option<&Arc<ProviderSpec>> {
        self.providers.get(name)
    }

    /// All providers.
    pub fn providers(&self) -> impl Iterator<Item = &Arc<ProviderSpec>> {
        self.providers.values()
    }

    /// Aliases.
    pub fn aliases(&self) -> &BTreeMap<String, String> {
        &self.aliases
    }

    /// Tiers and their members.
    pub fn tiers(&self) -> &BTreeMap<String, Vec<String>> {
        &self.tiers
    }

    /// Known models of a provider, in configured order.
    pub fn models(&self, provider: &str) -> &[String] {
        self.models.get(provider).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Facts about `provider/model`, if configured.
    pub fn model_meta(&self, provider: &str, model: &str) -> Option<&ModelMeta> {
        if self.meta.is_empty() {
            return None;
        }
        with_id(provider, model, |id| self.meta.get(id))
    }

    /// Every `provider/model` with configured facts.
    pub fn model_metas(&self) -> &BTreeMap<String, ModelMeta> {
        &self.meta
    }

    /// The `allowed_models` patterns (empty: everything allowed).
    pub fn allowed_patterns(&self) -> &[String] {
        self.allowed
            .as_ref()
            .map(|g| g.patterns.as_slice())
            .unwrap_or(&[])
    }

    /// Whether `provider/model` passes `allowed_models`.
    pub fn is_allowed(&self, id: &str) -> bool {
        self.allowed.as_ref().is_none_or(|g| g.set.is_match(id))
    }

    /// Every known `provider/model` name, plus aliases and tiers.
    pub fn known_targets(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .models
            .iter()
            .flat_map(|(p, ms)| ms.iter().map(move |m| format!("{p}/{m}")))
            .collect();
        v.extend(self.aliases.keys().cloned());
        v.extend(self.tiers.keys().cloned());
        v
    }

    /// Resolve a target: an alias, a tier (`fast` or `tier:fast`), or
    /// `provider/model` (split at the first `/`), then apply
    /// `allowed_models`. Nothing is sent before this succeeds.
    pub fn resolve(&self, target: &str) -> Result<Resolved, EngineError> {
        self.resolve_at(target.trim(), 0)
    }

    fn resolve_at(&self, target: &str, depth: usize) -> Result<Resolved, EngineError> {
        if depth > MAX_DEPTH {
            return Err(EngineError::Config {
                message: format!("{target:?}: aliases or tiers refer to each other in a loop"),
            });
        }
        if let Some(tier) = target.strip_prefix("tier:") {
            return self.resolve_tier(target, tier.trim(), depth);
        }
        if let Some(t) = self.aliases.get(target) {
            let mut r = self.resolve_at(t, depth + 1)?;
            r.requested = target.to_string();
            return Ok(r);
        }
        if !target.contains('/') && self.tiers.contains_key(target) {
            return self.resolve_tier(target, target, depth);
        }
        let Some((p, m)) = target.split_once('/') else {
            return Err(self.unknown(
                target,
                "not an alias or tier; targets are written provider/model",
            ));
        };
        let Some(spec) = self.providers.get(p) else {
            return Err(self.unknown(target, &format!("no provider named {p:?}")));
        };
        if m.is_empty() {
            return Err(self.unknown(target, "the model name is empty"));
        }
        if spec.kind == ProviderKind::Mock && !super::provider::mock::is_mock_model(m) {
            return Err(self.unknown(target, "no such mock model"));
        }
        if self.allowed.is_some() && !with_id(p, m, |id| self.is_allowed(id)) {
            return Err(EngineError::NotAllowed {
                message: format!(
                    "{p}/{m} is not in allowed_models [{}]",
                    self.allowed_patterns().join(", ")
                ),
            });
        }
        Ok(Resolved {
            requested: target.to_string(),
            spec: spec.clone(),
            model: m.to_string(),
        })
    }

    fn resolve_tier(
        &self,
        requested: &str,
        tier: &str,
        depth: usize,
    ) -> Result<Resolved, EngineError> {
        let Some(members) = self.tiers.get(tier) else {
            let names: Vec<String> = self.tiers.keys().cloned().collect();
            let close = closest(tier, &names, 3);
            let mut message = format!("unknown tier {tier:?}");
            if !names.is_empty() {
                message.push_str(&format!("; tiers are: {}", names.join(", ")));
            }
            if !close.is_empty() {
                message.push_str(&format!("; did you mean: {}?", close.join(", ")));
            }
            return Err(EngineError::Config { message });
        };
        let mut why = Vec::new();
        for m in members {
            match self.resolve_at(m, depth + 1) {
                Ok(r) if has_key(&r.spec) => {
                    return Ok(Resolved {
                        requested: requested.to_string(),
                        ..r
                    })
                }
                Ok(r) => why.push(format!("{} (no API key)", r.id())),
                Err(EngineError::NotAllowed { .. }) => why.push(format!("{m} (not allowed)")),
                Err(e) => why.push(format!("{m} ({e})")),
            }
        }
        Err(EngineError::Config {
            message: format!(
                "tier {tier:?} has no usable model: {}",
                if why.is_empty() {
                    "it is empty".to_string()
                } else {
                    why.join(", ")
                }
            ),
        })
    }

    /// Refuse, before sending, a request that uses a capability the model
    /// is configured not to have.
    pub fn check_capabilities(&self, r: &Resolved, req: &ChatRequest) -> Result<(), EngineError> {
        let Some(meta) = self.model_meta(&r.spec.name, &r.model) else {
            return Ok(());
        };
        let c = meta.capabilities;
        let lacks = |cap: Option<bool>, what: &str| -> Result<(), EngineError> {
            if cap == Some(false) {
                return Err(EngineError::Config {
                    message: format!(
                        "{} does not support {what} (models.\"{}\".capabilities in the config)",
                        r.id(),
                        r.id()
                    ),
                });
            }
            Ok(())
        };
        if !req.tools.is_empty() {
            lacks(c.tools, "tools")?;
        }
        if req.reasoning.is_some() {
            lacks(c.thinking, "thinking")?;
        }
        if !matches!(req.response_format, ResponseFormat::Text) {
            lacks(c.json, "JSON output")?;
        }
        if req.has_images() {
            lacks(c.vision, "images")?;
        }
        Ok(())
    }

    fn unknown(&self, target: &str, why: &str) -> EngineError {
        let close = closest(target, &self.known_targets(), 5);
        let mut message = format!("unknown model {target:?}: {why}");
        if !close.is_empty() {
            message.push_str(&format!("; did you mean: {}?", close.join(", ")));
        }
        EngineError::Config { message }
    }
}

/// `OLLAMA_HOST` may be `host:port`, `0.0.0.0`, or a URL.
pub fn normalize_ollama_host(h: &str) -> String {
    let h = h.trim().trim_end_matches('/');
    let with_scheme = if h.contains("://") {
        h.to_string()
    } else {
        format!("http://{h}")
    };
    let host_part = with_scheme.split("://").nth(1).unwrap_or("");
    if host_part.contains(':') {
        with_scheme.replace("0.0.0.0", "127.0.0.1")
    } else {
        format!("{}:11434", with_scheme.replace("0.0.0.0", "127.0.0.1"))
    }
}

/// Up to `n` candidates closest to `what` (Jaro-Winkler, with substring hits first).
pub fn closest(what: &str, candidates: &[String], n: usize) -> Vec<String> {
    let w = what.to_ascii_lowercase();
    let mut scored: Vec<(f64, &String)> = candidates
        .iter()
        .map(|c| {
            let cl = c.to_ascii_lowercase();
            let mut s = strsim::jaro_winkler(&w, &cl);
            let tail = cl.rsplit('/').next().unwrap_or(&cl);
            s = s.max(strsim::jaro_winkler(&w, tail));
            if cl.contains(&w) || w.contains(tail) {
                s += 0.3;
            }
            (s, c)
        })
        .filter(|(s, _)| *s > 0.75)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().take(n).map(|(_, c)| c.clone()).collect()
}

fn credential_name(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    ["key", "token", "secret", "pass", "sig", "auth"]
        .iter()
        .any(|w| k.contains(w))
}

/// A URL fit to show: a password or token in its userinfo, and the values of
/// query parameters named like credentials (`key`, `token`, `secret`,
/// `password`, `sig`, `auth`), become `***`.
pub fn mask_url_credentials(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        None => tail.to_string(),
        Some((path, query)) => {
            let (query, frag) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let masked: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if credential_name(k) => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            let mut t = format!("{path}?{}", masked.join("&"));
            if let Some(f) = frag {
                t.push('#');
                t.push_str(f);
            }
            t
        }
    };
    match scheme {
        Some(s) => format!("{s}://{authority}{tail}"),
        None => format!("{authority}{tail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_joined_on_the_stack_or_the_heap() {
        assert_eq!(with_id("openai", "gpt-4o", str::to_string), "openai/gpt-4o");
        let long = "m".repeat(400);
        assert_eq!(
            with_id("openai", &long, str::to_string),
            format!("openai/{long}")
        );
        let edge = "é".repeat(92); // 184 bytes: 6 + 1 + 184 = 191 fit
        assert_eq!(with_id("openai", &edge, str::len), 191);
        let mut r = reg();
        r.set_model_meta("openai/gpt-4o", ModelMeta::default());
        assert!(r.model_meta("openai", "gpt-4o").is_some());
        assert!(r.model_meta("openai", &long).is_none());
        r.set_allowed(vec!["openai/gpt-4o*".into()]).unwrap();
        assert!(r.resolve("openai/gpt-4o").is_ok());
        assert!(matches!(
            r.resolve("openai/o3"),
            Err(EngineError::NotAllowed { message }) if message.starts_with("openai/o3 is not in allowed_models")
        ));
    }

    fn reg() -> Registry {
        let mut r = Registry::new();
        let mut oa = ProviderSpec::new("openai", ProviderKind::Openai);
        oa.api_key = Some(Secret::new("k"));
        r.insert(oa);
        r.insert(ProviderSpec::new("anthropic", ProviderKind::Anthropic));
        r.insert(ProviderSpec::new("ollama", ProviderKind::Ollama));
        r.add_model("openai", "gpt-4o-mini");
        r.add_model("openai", "gpt-4o");
        r.add_model("anthropic", "claude-sonnet-4-5");
        r.add_alias("quick", "openai/gpt-4o-mini");
        r.add_alias("best", "tier:premium");
        r.set_tier(
            "premium",
            vec!["anthropic/claude-sonnet-4-5".into(), "openai/gpt-4o".into()],
        );
        r.set_tier("fast", vec!["quick".into()]);
        r
    }

    #[test]
    fn aliases_and_tiers_resolve() {
        let r = reg();
        let x = r.resolve("quick").unwrap();
        assert_eq!(
            (x.id(), x.requested.as_str()),
            ("openai/gpt-4o-mini".into(), "quick")
        );
        // Anthropic has no key: the tier skips to the next member.
        assert_eq!(r.resolve("premium").unwrap().id(), "openai/gpt-4o");
        assert_eq!(r.resolve("tier:premium").unwrap().id(), "openai/gpt-4o");
        assert_eq!(r.resolve("best").unwrap().id(), "openai/gpt-4o");
        assert_eq!(r.resolve("fast").unwrap().id(), "openai/gpt-4o-mini");
        // Split at the first slash.
        let mut r2 = r.clone();
        r2.insert(ProviderSpec::new("openrouter", ProviderKind::Openrouter));
        let x = r2
            .resolve("openrouter/anthropic/claude-3.5-sonnet")
            .unwrap();
        assert_eq!(x.model, "anthropic/claude-3.5-sonnet");
    }

    #[test]
    fn tier_with_no_usable_model_says_why() {
        let mut r = reg();
        r.set_tier("solo", vec!["anthropic/claude-sonnet-4-5".into()]);
        let e = r.resolve("solo").unwrap_err().to_string();
        assert!(
            e.contains("no usable model") && e.contains("no API key"),
            "{e}"
        );
        let e = r.resolve("tier:premum").unwrap_err().to_string();
        assert!(e.contains("did you mean: premium"), "{e}");
    }

    #[test]
    fn unknown_targets_list_close_names() {
        let r = reg();
        let e = r.resolve("opena/gpt-4o-mini").unwrap_err().to_string();
        assert!(e.contains("no provider named \"opena\""), "{e}");
        assert!(e.contains("openai/gpt-4o-mini"), "{e}");
        let e = r.resolve("quik").unwrap_err().to_string();
        assert!(e.contains("did you mean") && e.contains("quick"), "{e}");
    }

    #[test]
    fn allowed_models_refuses_with_the_pattern_list() {
        let mut r = reg();
        r.set_allowed(vec!["openai/gpt-4o-mini".into(), "ollama/*".into()])
            .unwrap();
        assert!(r.resolve("quick").is_ok());
        assert!(r.resolve("ollama/llama3.2:3b").is_ok());
        let e = r.resolve("openai/gpt-4o").unwrap_err();
        assert_eq!(e.kind(), "not_allowed");
        assert!(
            e.to_string().contains("[openai/gpt-4o-mini, ollama/*]"),
            "{e}"
        );
        // Tiers skip models that are not allowed.
        r.set_tier("t", vec!["openai/gpt-4o".into(), "ollama/qwen3".into()]);
        assert_eq!(r.resolve("t").unwrap().id(), "ollama/qwen3");
        assert!(r.set_allowed(vec!["openai/[".into()]).is_err());
    }

    #[test]
    fn alias_loops_are_errors_not_hangs() {
        let mut r = reg();
        r.add_alias("a", "b");
        r.add_alias("b", "a");
        assert!(r.resolve("a").unwrap_err().to_string().contains("loop"));
    }

    #[test]
    fn capabilities_refuse_before_sending() {
        let mut r = reg();
        r.set_model_meta(
            "openai/gpt-4o-mini",
            ModelMeta {
                context_window: Some(128_000),
                max_tokens: Some(1000),
                capabilities: Capabilities {
                    tools: Some(false),
                    ..Default::default()
                },
            },
        );
        let x = r.resolve("quick").unwrap();
        let mut req = ChatRequest::from_prompt("hi");
        assert!(r.check_capabilities(&x, &req).is_ok());
        req.tools.push(crate::engine::request::Tool {
            name: "f".into(),
            description: String::new(),
            parameters: serde_json::json!({}),
        });
        let e = r.check_capabilities(&x, &req).unwrap_err().to_string();
        assert!(e.contains("does not support tools"), "{e}");
        assert_eq!(
            r.model_meta("openai", "gpt-4o-mini")
                .unwrap()
                .context_window,
            Some(128_000)
        );
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(
            mask_url_credentials("https://user:hunter2@proxy.example/v1"),
            "https://***@proxy.example/v1"
        );
        assert_eq!(
            mask_url_credentials("http://127.0.0.1:8080/v1?api-version=2024&api_key=abc#x"),
            "http://127.0.0.1:8080/v1?api-version=2024&api_key=***#x"
        );
        assert_eq!(
            mask_url_credentials("https://api.openai.com/v1"),
            "https://api.openai.com/v1"
        );
    }
}
