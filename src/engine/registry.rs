//! Which provider serves a `provider/model` target.
//!
//! Built-in providers appear when their standard key variables are set; the
//! mock provider is always there. Config (issue 3) adds named providers,
//! aliases, tiers and governance on top.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::error::EngineError;
use super::provider::{ProviderKind, ProviderSpec, Secret};

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

/// The providers known to this process.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    providers: BTreeMap<String, Arc<ProviderSpec>>,
    aliases: BTreeMap<String, String>,
    /// Known model names per provider (for suggestions and the picker).
    models: BTreeMap<String, Vec<String>>,
}

/// Reads an environment variable; injectable for tests.
pub type EnvFn<'a> = &'a dyn Fn(&str) -> Option<String>;

fn env_nonempty(env: EnvFn<'_>, k: &str) -> Option<String> {
    env(k).filter(|v| !v.trim().is_empty())
}

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

    /// Every known `provider/model` name (plus aliases).
    pub fn known_targets(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .models
            .iter()
            .flat_map(|(p, ms)| ms.iter().map(move |m| format!("{p}/{m}")))
            .collect();
        v.extend(self.aliases.keys().cloned());
        v
    }

    /// Resolve `provider/model` (split at the first `/`) or an alias.
    pub fn resolve(&self, target: &str) -> Result<Resolved, EngineError> {
        let target_trim = target.trim();
        let mut name = target_trim.to_string();
        for _ in 0..8 {
            match self.aliases.get(&name) {
                Some(t) => name = t.clone(),
                None => break,
            }
        }
        let Some((p, m)) = name.split_once('/') else {
            return Err(self.unknown(target_trim, "targets are written provider/model"));
        };
        let Some(spec) = self.providers.get(p) else {
            return Err(self.unknown(target_trim, &format!("no provider named {p:?}")));
        };
        if m.is_empty() {
            return Err(self.unknown(target_trim, "the model name is empty"));
        }
        if spec.kind == ProviderKind::Mock && !super::provider::mock::is_mock_model(m) {
            return Err(self.unknown(target_trim, "no such mock model"));
        }
        Ok(Resolved {
            requested: target_trim.to_string(),
            spec: spec.clone(),
            model: m.to_string(),
        })
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
