//! Configuration: serde structs and the load order
//! embedded defaults ← user file ← environment ← flags.
//!
//! The user file is `--config PATH`, else `$QUORUM_CONFIG`, else
//! `config.toml` in the platform config dir (`directories`).
//! `$QUORUM_CONFIG` moves the default location (scripts and tests point it
//! at a scratch path), so like the default a missing file there means "no
//! user config"; a missing `--config PATH` is an error. `quorum models`
//! shows which file was read, or where none was found. Unknown keys are errors. Every error names the file, line, column
//! and key path. Loading builds a complete new [`Config`] or fails: a broken
//! config never half-applies, and nothing here panics.
//!
//! `${VAR}` in any string value is replaced by the environment variable
//! (`${VAR:-fallback}` when unset; `$${` writes a literal `${`); an unset
//! variable without a fallback is an error naming it. API keys never live in
//! the file: a provider names an environment variable (`api_key_env`) or a
//! command that prints the key (`api_key_cmd`, run once via `sh -c`, its
//! output kept in memory only as a [`Secret`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use toml::de::{DeTable, DeValue};

use crate::engine::provider::{default_base_url, mock, ProviderKind, ProviderSpec, Secret};
use crate::engine::registry::{normalize_ollama_host, Capabilities, EnvFn, ModelMeta, Registry};
use crate::engine::routing::{Limits, ProviderPolicy};
use crate::engine::EngineConfig;

/// The built-in defaults, parsed with the same code as a user file.
pub const DEFAULTS: &str = include_str!("config_defaults.toml");

/// Names of the built-in providers (present with no config at all).
pub const BUILTIN_PROVIDERS: &[&str] = &[
    "openai",
    "anthropic",
    "gemini",
    "openrouter",
    "ollama",
    "mock",
];

/// The standard base-URL variables of the built-in providers (as the
/// official SDKs read them). They override the config file's `base_url`.
const BUILTIN_BASE_ENV: &[(&str, &str)] = &[
    ("openai", "OPENAI_BASE_URL"),
    ("anthropic", "ANTHROPIC_BASE_URL"),
    ("gemini", "GEMINI_BASE_URL"),
    ("openrouter", "OPENROUTER_BASE_URL"),
    ("ollama", "OLLAMA_HOST"),
];

/// How long `api_key_cmd` may run.
const KEY_CMD_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Errors

/// A configuration error: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `environment variable X`, `built-in defaults`).
    pub origin: String,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// 1-based column (in characters), where known.
    pub column: Option<usize>,
    /// Dotted key path, e.g. `providers.openai.timeouts.idle_secs`.
    pub key_path: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        if let Some(k) = &self.key_path {
            write!(f, ": {k}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn plain(origin: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            origin: origin.into(),
            line: None,
            column: None,
            key_path: None,
            message: message.into(),
        }
    }

    fn env(var: &str, message: impl Into<String>) -> Self {
        Self::plain(format!("environment variable {var}"), message)
    }
}

/// A key path: table keys and array indices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KeyPath(Vec<Seg>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

impl KeyPath {
    fn of(keys: &[&str]) -> Self {
        KeyPath(keys.iter().map(|k| Seg::Key(k.to_string())).collect())
    }
    fn key(mut self, k: &str) -> Self {
        self.0.push(Seg::Key(k.to_string()));
        self
    }
    fn index(mut self, i: usize) -> Self {
        self.0.push(Seg::Index(i));
        self
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A parsed source text, kept to locate errors found after parsing.
#[derive(Debug, Clone)]
struct Source {
    origin: String,
    text: String,
}

impl Source {
    fn error_at(
        &self,
        span: Option<Range<usize>>,
        path: Option<KeyPath>,
        msg: String,
    ) -> ConfigError {
        let (line, column) = match span {
            Some(s) => {
                let (l, c) = line_col(&self.text, s.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        ConfigError {
            origin: self.origin.clone(),
            line,
            column,
            key_path: path.filter(|p| !p.0.is_empty()).map(|p| p.to_string()),
            message: msg,
        }
    }

    /// An error at `path`, located if the path is written in this source.
    fn error_for(&self, path: &KeyPath, msg: impl Into<String>) -> ConfigError {
        let span = DeTable::parse(&self.text)
            .ok()
            .and_then(|t| span_of_path(t.get_ref(), &path.0));
        self.error_at(span, Some(path.clone()), msg.into())
    }
}

/// 1-based line and column (in characters) of byte offset `pos`.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

fn key_str<'a>(k: &'a toml::Spanned<toml::de::DeString<'_>>) -> &'a str {
    k.get_ref().as_ref()
}

/// The key path of the deepest key or value whose span holds `pos`.
fn path_at_table(t: &DeTable<'_>, pos: usize) -> Option<Vec<Seg>> {
    for (k, v) in t.iter() {
        if let Some(mut sub) = path_at_value(v.get_ref(), pos) {
            sub.insert(0, Seg::Key(key_str(k).to_string()));
            return Some(sub);
        }
        if k.span().contains(&pos) || v.span().contains(&pos) {
            return Some(vec![Seg::Key(key_str(k).to_string())]);
        }
    }
    None
}

fn path_at_value(v: &DeValue<'_>, pos: usize) -> Option<Vec<Seg>> {
    match v {
        DeValue::Table(t) => path_at_table(t, pos),
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                if let Some(mut sub) = path_at_value(item.get_ref(), pos) {
                    sub.insert(0, Seg::Index(i));
                    return Some(sub);
                }
                if item.span().contains(&pos) {
                    return Some(vec![Seg::Index(i)]);
                }
            }
            None
        }
        _ => None,
    }
}

/// The span of the key (or array item) at `path`.
fn span_of_path(t: &DeTable<'_>, path: &[Seg]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    let Seg::Key(name) = first else { return None };
    let (k, v) = t.iter().find(|(k, _)| key_str(k) == name)?;
    if rest.is_empty() {
        return Some(k.span());
    }
    span_in_value(v, rest).or(Some(k.span()))
}

fn span_in_value(v: &toml::Spanned<DeValue<'_>>, path: &[Seg]) -> Option<Range<usize>> {
    match (v.get_ref(), path.first()?) {
        (DeValue::Table(t), Seg::Key(_)) => span_of_path(t, path),
        (DeValue::Array(a), Seg::Index(i)) => {
            let item = a.get(*i)?;
            if path.len() == 1 {
                Some(item.span())
            } else {
                span_in_value(item, &path[1..])
            }
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// The file format (every field optional: layers merge field by field)

/// One config file as written. Every field is optional so layers merge.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Model for `quorum ask` without `-m`.
    pub default_model: Option<String>,
    /// Targets the TUI compares by default.
    pub compare_targets: Option<Vec<String>>,
    /// The model the TUI's judge key asks (default: the first target).
    pub judge_model: Option<String>,
    /// Output limit of the TUI's requests where `[models]` sets none
    /// (default 4096; 0 sends none, leaving the model's own limit).
    pub tui_max_tokens: Option<u32>,
    /// Tag stored with blind votes from the TUI (none by default).
    pub vote_tag: Option<String>,
    /// TUI theme name.
    pub theme: Option<String>,
    /// Whether the ledger stores prompt and answer text.
    pub log_content: Option<bool>,
    /// Governance: exact `provider/model` names or globs.
    pub allowed_models: Option<Vec<String>>,
    /// Providers by name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderFile>,
    /// Alias -> target.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// Tiers.
    pub tiers: Option<TiersFile>,
    /// `provider/model` -> targets tried in order when it fails before its first token.
    #[serde(default)]
    pub fallbacks: BTreeMap<String, Vec<String>>,
    /// Facts per `provider/model`.
    #[serde(default)]
    pub models: BTreeMap<String, ModelFile>,
    /// Spending limits.
    pub budget: Option<BudgetConfig>,
    /// Local response cache.
    pub cache: Option<CacheFile>,
    /// Where the ledger lives.
    pub ledger: Option<LedgerFile>,
    /// Price overrides per `provider/model`.
    #[serde(default)]
    pub pricing: BTreeMap<String, PriceConfig>,
    /// TUI key bindings: action -> key.
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
}

/// One or more environment variable names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VarNames(pub Vec<String>);

impl<'de> Deserialize<'de> for VarNames {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = VarNames;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a variable name or a list of variable names")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<VarNames, E> {
                Ok(VarNames(vec![s.to_string()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<VarNames, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = a.next_element::<String>()? {
                    v.push(s);
                }
                Ok(VarNames(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// `[providers.NAME]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFile {
    /// Wire protocol.
    pub kind: Option<ProviderKind>,
    /// Base URL.
    pub base_url: Option<String>,
    /// Variable(s) holding the key; the first one set wins.
    pub api_key_env: Option<VarNames>,
    /// A command that prints the key.
    pub api_key_cmd: Option<String>,
    /// Extra headers.
    pub headers: Option<BTreeMap<String, String>>,
    /// Timeouts.
    pub timeouts: Option<TimeoutsFile>,
    /// Requests in flight at once.
    pub max_concurrency: Option<u32>,
    /// Requests started per minute.
    pub requests_per_minute: Option<u32>,
    /// Estimated tokens per minute.
    pub tokens_per_minute: Option<u64>,
    /// Bytes of an answer (streamed or whole) before `response_too_large`.
    pub max_response_bytes: Option<u64>,
    /// Bytes of an error body read.
    pub max_error_body_bytes: Option<u64>,
    /// An answer stops once its output passes this many times `max_tokens` (0 = off).
    pub max_tokens_factor: Option<u64>,
    /// Retry policy.
    pub retry: Option<RetryFile>,
    /// Circuit breaker.
    pub breaker: Option<BreakerFile>,
    /// Model names for the picker.
    pub models: Option<Vec<String>>,
    /// Azure OpenAI `api-version` (kind `azure`).
    pub api_version: Option<String>,
    /// Request template and response pointers (kind `template`).
    pub template: Option<crate::engine::provider::template::TemplateSpec>,
}

/// `[providers.NAME.timeouts]`, seconds; 0 = no limit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    /// TCP/TLS connect.
    pub connect_secs: Option<f64>,
    /// Until the first token.
    pub first_token_secs: Option<f64>,
    /// Longest gap between chunks.
    pub idle_secs: Option<f64>,
    /// Whole request.
    pub total_secs: Option<f64>,
}

/// `[providers.NAME.retry]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    /// Attempts in all.
    pub max_attempts: Option<u32>,
    /// First backoff step.
    pub base_delay_ms: Option<u64>,
    /// Longest wait.
    pub max_wait_secs: Option<f64>,
    /// Fail at once on 429.
    pub fail_fast_on_429: Option<bool>,
}

/// `[providers.NAME.breaker]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerFile {
    /// Consecutive failures that open it (0 = off).
    pub failure_threshold: Option<u32>,
    /// Seconds open before a probe.
    pub cooldown_secs: Option<f64>,
}

/// `[tiers]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TiersFile {
    /// Cheap and quick.
    pub fast: Option<Vec<String>>,
    /// Middle.
    pub balanced: Option<Vec<String>>,
    /// Best.
    pub premium: Option<Vec<String>>,
}

/// `[models."provider/model"]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Context window in tokens.
    pub context_window: Option<u64>,
    /// Default output limit.
    pub max_tokens: Option<u32>,
    /// Capabilities.
    pub capabilities: Option<CapabilitiesFile>,
}

/// `[models."provider/model".capabilities]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilitiesFile {
    /// Tool calling.
    pub tools: Option<bool>,
    /// Thinking.
    pub thinking: Option<bool>,
    /// Image input.
    pub vision: Option<bool>,
    /// JSON mode.
    pub json: Option<bool>,
}

/// `[budget]`: spending limits in USD (enforced by the ledger).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Per TUI/serve session.
    pub session_usd: Option<f64>,
    /// Per calendar day (local time).
    pub daily_usd: Option<f64>,
}

/// `[ledger]` as written.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerFile {
    /// `postgres://user:${PASSWORD}@host/db`: a shared PostgreSQL ledger instead of
    /// the SQLite file in the data dir.
    pub url: Option<String>,
}

impl fmt::Debug for LedgerFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LedgerFile")
            .field("url", &self.url.as_deref().map(LedgerUrl::mask))
            .finish()
    }
}

/// A ledger database URL. Its password never shows: `Debug` and `Display` mask it.
#[derive(Clone, PartialEq, Eq)]
pub struct LedgerUrl(String);

impl LedgerUrl {
    /// The URL with its credentials, for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }
    fn mask(u: &str) -> String {
        crate::engine::ledger::mask_url(u)
    }
}

impl fmt::Debug for LedgerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", Self::mask(&self.0))
    }
}

impl fmt::Display for LedgerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&Self::mask(&self.0))
    }
}

/// `[cache]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    /// Replay identical requests from the local cache.
    pub enabled: Option<bool>,
    /// Entry lifetime.
    pub ttl_secs: Option<u64>,
}

/// The local response cache settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheConfig {
    /// Replay identical requests from the local cache (default false).
    pub enabled: bool,
    /// Entry lifetime in seconds (default 86400).
    pub ttl_secs: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: false,
            ttl_secs: 86_400,
        }
    }
}

/// `[pricing."provider/model"]`: USD per million tokens, overriding the
/// built-in price table.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// Uncached input.
    pub input: f64,
    /// Output.
    pub output: f64,
    /// Cached input read.
    pub cached_input: Option<f64>,
    /// Cache write.
    pub cache_write: Option<f64>,
    /// Reasoning output, where it differs from output.
    pub reasoning: Option<f64>,
}

// ---------------------------------------------------------------------------
// Merging layers

fn over<T>(base: Option<T>, top: Option<T>) -> Option<T> {
    top.or(base)
}

impl FileConfig {
    /// `top` over `self`, field by field; maps merge per key.
    fn merge(mut self, top: FileConfig) -> FileConfig {
        for (name, p) in top.providers {
            let merged = match self.providers.remove(&name) {
                Some(base) => base.merge(p),
                None => p,
            };
            self.providers.insert(name, merged);
        }
        for (id, m) in top.models {
            let merged = match self.models.remove(&id) {
                Some(base) => base.merge(m),
                None => m,
            };
            self.models.insert(id, merged);
        }
        self.aliases.extend(top.aliases);
        self.fallbacks.extend(top.fallbacks);
        self.pricing.extend(top.pricing);
        self.keys.extend(top.keys);
        let tiers = match (self.tiers.take(), top.tiers) {
            (Some(b), Some(t)) => Some(TiersFile {
                fast: over(b.fast, t.fast),
                balanced: over(b.balanced, t.balanced),
                premium: over(b.premium, t.premium),
            }),
            (b, t) => t.or(b),
        };
        let cache = match (self.cache.take(), top.cache) {
            (Some(b), Some(t)) => Some(CacheFile {
                enabled: over(b.enabled, t.enabled),
                ttl_secs: over(b.ttl_secs, t.ttl_secs),
            }),
            (b, t) => t.or(b),
        };
        let budget = match (self.budget.take(), top.budget) {
            (Some(b), Some(t)) => Some(BudgetConfig {
                session_usd: over(b.session_usd, t.session_usd),
                daily_usd: over(b.daily_usd, t.daily_usd),
            }),
            (b, t) => t.or(b),
        };
        let ledger = top.ledger.or(self.ledger.take());
        FileConfig {
            ledger,
            default_model: over(self.default_model, top.default_model),
            compare_targets: over(self.compare_targets, top.compare_targets),
            judge_model: over(self.judge_model, top.judge_model),
            tui_max_tokens: over(self.tui_max_tokens, top.tui_max_tokens),
            vote_tag: over(self.vote_tag, top.vote_tag),
            theme: over(self.theme, top.theme),
            log_content: over(self.log_content, top.log_content),
            allowed_models: over(self.allowed_models, top.allowed_models),
            tiers,
            cache,
            budget,
            ..self
        }
    }
}

impl ProviderFile {
    fn merge(self, top: ProviderFile) -> ProviderFile {
        // A key source set in the upper layer replaces the lower one's,
        // whichever of the two kinds it is.
        let (api_key_env, api_key_cmd) = if top.api_key_env.is_some() || top.api_key_cmd.is_some() {
            (top.api_key_env, top.api_key_cmd)
        } else {
            (self.api_key_env, self.api_key_cmd)
        };
        let headers = match (self.headers, top.headers) {
            (Some(mut b), Some(t)) => {
                b.extend(t);
                Some(b)
            }
            (b, t) => t.or(b),
        };
        let timeouts = match (self.timeouts, top.timeouts) {
            (Some(b), Some(t)) => Some(TimeoutsFile {
                connect_secs: over(b.connect_secs, t.connect_secs),
                first_token_secs: over(b.first_token_secs, t.first_token_secs),
                idle_secs: over(b.idle_secs, t.idle_secs),
                total_secs: over(b.total_secs, t.total_secs),
            }),
            (b, t) => t.or(b),
        };
        let retry = match (self.retry, top.retry) {
            (Some(b), Some(t)) => Some(RetryFile {
                max_attempts: over(b.max_attempts, t.max_attempts),
                base_delay_ms: over(b.base_delay_ms, t.base_delay_ms),
                max_wait_secs: over(b.max_wait_secs, t.max_wait_secs),
                fail_fast_on_429: over(b.fail_fast_on_429, t.fail_fast_on_429),
            }),
            (b, t) => t.or(b),
        };
        let breaker = match (self.breaker, top.breaker) {
            (Some(b), Some(t)) => Some(BreakerFile {
                failure_threshold: over(b.failure_threshold, t.failure_threshold),
                cooldown_secs: over(b.cooldown_secs, t.cooldown_secs),
            }),
            (b, t) => t.or(b),
        };
        ProviderFile {
            kind: over(self.kind, top.kind),
            base_url: over(self.base_url, top.base_url),
            api_key_env,
            api_key_cmd,
            headers,
            timeouts,
            max_concurrency: over(self.max_concurrency, top.max_concurrency),
            requests_per_minute: over(self.requests_per_minute, top.requests_per_minute),
            tokens_per_minute: over(self.tokens_per_minute, top.tokens_per_minute),
            max_response_bytes: over(self.max_response_bytes, top.max_response_bytes),
            max_error_body_bytes: over(self.max_error_body_bytes, top.max_error_body_bytes),
            max_tokens_factor: over(self.max_tokens_factor, top.max_tokens_factor),
            retry,
            breaker,
            models: over(self.models, top.models),
            api_version: over(self.api_version, top.api_version),
            template: over(self.template, top.template),
        }
    }
}

impl ModelFile {
    fn merge(self, top: ModelFile) -> ModelFile {
        let capabilities = match (self.capabilities, top.capabilities) {
            (Some(b), Some(t)) => Some(CapabilitiesFile {
                tools: over(b.tools, t.tools),
                thinking: over(b.thinking, t.thinking),
                vision: over(b.vision, t.vision),
                json: over(b.json, t.json),
            }),
            (b, t) => t.or(b),
        };
        ModelFile {
            context_window: over(self.context_window, top.context_window),
            max_tokens: over(self.max_tokens, top.max_tokens),
            capabilities,
        }
    }
}

// ---------------------------------------------------------------------------
// Parsing one file

/// Replace `${VAR}` / `${VAR:-fallback}` in `s`; `$${` is a literal `${`.
/// `Err` names the unset variable (or says the reference is malformed).
pub fn substitute(s: &str, env: EnvFn<'_>) -> Result<String, String> {
    if !s.contains("${") {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = t;
        } else if let Some(t) = tail.strip_prefix("${") {
            let Some(end) = t.find('}') else {
                return Err(format!("unterminated ${{ in {s:?}"));
            };
            let inner = &t[..end];
            let (name, fallback) = match inner.split_once(":-") {
                Some((n, f)) => (n, Some(f)),
                None => (inner, None),
            };
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("invalid variable name {name:?} in ${{{inner}}}"));
            }
            match (env(name), fallback) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(f)) => out.push_str(f),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (used as ${{{name}}})"
                    ))
                }
            }
            rest = &t[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn substitute_table(
    t: &mut DeTable<'_>,
    path: &KeyPath,
    env: EnvFn<'_>,
) -> Result<(), (KeyPath, Range<usize>, String)> {
    for (k, v) in t.iter_mut() {
        let p = path.clone().key(key_str(k));
        substitute_value(v, &p, env)?;
    }
    Ok(())
}

fn substitute_value(
    v: &mut toml::Spanned<DeValue<'_>>,
    path: &KeyPath,
    env: EnvFn<'_>,
) -> Result<(), (KeyPath, Range<usize>, String)> {
    let span = v.span();
    match v.get_mut() {
        DeValue::String(s) if s.contains("${") => {
            let new = substitute(s, env).map_err(|m| (path.clone(), span, m))?;
            *s = std::borrow::Cow::Owned(new);
        }
        DeValue::Table(t) => substitute_table(t, path, env)?,
        DeValue::Array(a) => {
            for (i, item) in a.iter_mut().enumerate() {
                substitute_value(item, &path.clone().index(i), env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Headers that carry credentials: their values must come from `${VAR}`.
const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
];

/// Refuse a literal key anywhere under `[providers]`: a key field, or a
/// credential header whose value is not taken from the environment.
fn find_literal_key(t: &DeTable<'_>) -> Option<(KeyPath, Range<usize>, &'static str)> {
    const FIELD: &str = "API keys are not accepted in the config file: name an environment \
        variable with api_key_env, or a command that prints the key with api_key_cmd";
    const HEADER: &str = "a credential header must not hold a literal secret: take it from \
        the environment, e.g. \"Bearer ${MY_TOKEN}\"";
    let (_, providers) = t.iter().find(|(k, _)| key_str(k) == "providers")?;
    let DeValue::Table(ps) = providers.get_ref() else {
        return None;
    };
    for (name, p) in ps.iter() {
        let DeValue::Table(fields) = p.get_ref() else {
            continue;
        };
        for (k, v) in fields.iter() {
            let at = KeyPath::of(&["providers", key_str(name), key_str(k)]);
            if matches!(key_str(k), "api_key" | "key" | "token" | "secret") {
                return Some((at, k.span(), FIELD));
            }
            if key_str(k) != "headers" {
                continue;
            }
            let DeValue::Table(hs) = v.get_ref() else {
                continue;
            };
            for (h, hv) in hs.iter() {
                let credential = CREDENTIAL_HEADERS
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case(key_str(h)));
                let literal = hv.get_ref().as_str().is_some_and(|s| !s.contains("${"));
                if credential && literal {
                    return Some((at.clone().key(key_str(h)), h.span(), HEADER));
                }
            }
        }
    }
    None
}

/// Header names that suggest a credential, beyond [`CREDENTIAL_HEADERS`].
fn secret_like_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    CREDENTIAL_HEADERS.contains(&n.as_str())
        || ["key", "token", "secret", "auth", "password", "cookie"]
            .iter()
            .any(|w| n.contains(w))
}

/// The text a value keeps when its variables are unset: `${VAR}` removed,
/// `${VAR:-fallback}` replaced by the fallback.
fn literal_part(v: &str) -> String {
    let mut out = String::new();
    let mut rest = v;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            return out;
        };
        if let Some((_, fallback)) = after[..end].split_once(":-") {
            out.push_str(fallback);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Where a config text holds what looks like a literal secret the key checks
/// let through: a token-like header written out (or as a `${VAR:-fallback}`),
/// or an `api_key_cmd` that only prints a literal.
fn literal_secret_paths(text: &str) -> Vec<String> {
    let Ok(t) = DeTable::parse(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let Some((_, providers)) = t.get_ref().iter().find(|(k, _)| key_str(k) == "providers") else {
        return out;
    };
    let DeValue::Table(ps) = providers.get_ref() else {
        return out;
    };
    for (name, p) in ps.iter() {
        let DeValue::Table(fields) = p.get_ref() else {
            continue;
        };
        for (k, v) in fields.iter() {
            let at = KeyPath::of(&["providers", key_str(name), key_str(k)]);
            match (key_str(k), v.get_ref()) {
                ("api_key_cmd", DeValue::String(cmd)) => {
                    let c = cmd.trim_start();
                    if c.starts_with("echo ") || c.starts_with("printf ") {
                        out.push(at.to_string());
                    }
                }
                ("headers", DeValue::Table(hs)) => {
                    for (h, hv) in hs.iter() {
                        let Some(val) = hv.get_ref().as_str() else {
                            continue;
                        };
                        let lit = literal_part(val);
                        let lit = lit.trim();
                        let token = lit
                            .strip_prefix("Bearer ")
                            .or_else(|| lit.strip_prefix("Basic "))
                            .or_else(|| lit.strip_prefix("Token "))
                            .unwrap_or(lit)
                            .trim();
                        if secret_like_header(key_str(h)) && token.len() >= 8 {
                            out.push(at.clone().key(key_str(h)).to_string());
                        }
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// A warning when the file at `path` can be read by other users and holds
/// what looks like a literal secret.
pub fn exposure_warning(path: &Path, text: &str) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        if mode & 0o044 == 0 {
            return None;
        }
        let paths = literal_secret_paths(text);
        if paths.is_empty() {
            return None;
        }
        Some(format!(
            "{} can be read by other users (mode {mode:03o}) and holds what looks like a literal secret at {}: take it from the environment (${{VAR}}) or run `chmod 600 {}`",
            path.display(),
            paths.join(", "),
            path.display()
        ))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, text);
        None
    }
}

/// For a syntax error, where the parser has no table yet: the last table
/// header before `pos` and the key on the line of `pos`, read from the text.
fn guess_path(text: &str, pos: usize) -> Option<KeyPath> {
    let (line_no, _) = line_col(text, pos);
    let lines: Vec<&str> = text.lines().collect();
    let header = lines[..line_no.saturating_sub(1).min(lines.len())]
        .iter()
        .rev()
        .find_map(|l| {
            let l = l.trim();
            l.starts_with('[')
                .then(|| l.trim_matches(|c| c == '[' || c == ']').trim().to_string())
        });
    let key = lines.get(line_no.saturating_sub(1)).and_then(|l| {
        let (k, _) = l.split_once('=')?;
        let k = k.trim();
        (!k.is_empty() && !k.starts_with('[') && !k.starts_with('#')).then(|| k.to_string())
    });
    let mut p = KeyPath::default();
    for part in header
        .iter()
        .flat_map(|h| h.split('.'))
        .chain(key.iter().flat_map(|k| k.split('.')))
    {
        let part = part.trim().trim_matches('"');
        if !part.is_empty() {
            p = p.key(part);
        }
    }
    (!p.0.is_empty()).then_some(p)
}

/// Make serde's wording fit a config file.
fn reword(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or(msg).trim();
    if let Some(rest) = first.strip_prefix("unknown field ") {
        return match rest.split_once(", expected one of ") {
            Some((k, allowed)) => format!("unknown key {k}; allowed keys: {allowed}"),
            None => match rest.split_once(", there are no fields") {
                Some((k, _)) => format!("unknown key {k}; this table takes no keys"),
                None => format!("unknown key {rest}"),
            },
        };
    }
    if let Some(rest) = first.strip_prefix("unknown variant ") {
        return format!(
            "unknown value {}",
            rest.replacen(", expected one of", "; expected one of", 1)
        );
    }
    first.to_string()
}

fn parse_source(src: &Source, env: EnvFn<'_>) -> Result<FileConfig, ConfigError> {
    let mut table = match DeTable::parse(&src.text) {
        Ok(t) => t,
        Err(e) => {
            let span = e.span();
            let (partial, _) = DeTable::parse_recoverable(&src.text);
            let path = span
                .as_ref()
                .and_then(|s| path_at_table(partial.get_ref(), s.start))
                .map(KeyPath)
                .or_else(|| span.as_ref().and_then(|s| guess_path(&src.text, s.start)));
            return Err(src.error_at(
                span,
                path,
                format!("TOML syntax error: {}", reword(e.message())),
            ));
        }
    };
    if let Some((path, span, why)) = find_literal_key(table.get_ref()) {
        return Err(src.error_at(Some(span), Some(path), why.into()));
    }
    if let Err((path, span, msg)) = substitute_table(table.get_mut(), &KeyPath::default(), env) {
        return Err(src.error_at(Some(span), Some(path), msg));
    }
    let spans_for_errors = table.clone();
    FileConfig::deserialize(toml::de::Deserializer::from(table)).map_err(|e| {
        let span = e.span();
        let path = span
            .as_ref()
            .and_then(|s| path_at_table(spans_for_errors.get_ref(), s.start))
            .map(KeyPath);
        src.error_at(span, path, reword(e.message()))
    })
}

// ---------------------------------------------------------------------------
// The resolved configuration

/// A provider after all layers: everything needed to build its spec and policy.
#[derive(Clone, PartialEq)]
pub struct ProviderConfig {
    /// Registry name.
    pub name: String,
    /// Wire protocol.
    pub kind: ProviderKind,
    /// Base URL.
    pub base_url: String,
    /// Variables holding the key, first set wins.
    pub api_key_env: Vec<String>,
    /// Command printing the key (wins over `api_key_env`).
    pub api_key_cmd: Option<String>,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Timeouts, limits, retries, breaker.
    pub policy: ProviderPolicy,
    /// Model names for the picker.
    pub models: Vec<String>,
    /// Kind-specific settings (Azure's api-version, a template).
    pub extra: crate::engine::provider::ProviderExtra,
}

// Header values may carry tokens substituted from the environment.
impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key_env", &self.api_key_env)
            .field("api_key_cmd", &self.api_key_cmd.as_ref().map(|_| "…"))
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("policy", &self.policy)
            .field("models", &self.models)
            .finish()
    }
}

/// The user file's text, kept to locate errors found later (a key command
/// that fails). Never printed.
#[derive(Clone, Default)]
struct Origin(Option<Source>);

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Origin")
    }
}

impl PartialEq for Origin {
    fn eq(&self, _: &Origin) -> bool {
        true
    }
}

/// The configuration after every layer, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The user file that was read, if any.
    pub file: Option<PathBuf>,
    /// Where a user file was looked for and not found.
    pub searched: Option<PathBuf>,
    origin: Origin,
    /// Model for `quorum ask` without `-m`.
    pub default_model: Option<String>,
    /// Targets the TUI compares by default.
    pub compare_targets: Vec<String>,
    /// The model the TUI's judge key asks (None: the first target).
    pub judge_model: Option<String>,
    /// Output limit of the TUI's requests where `[models]` sets none (None: 4096).
    pub tui_max_tokens: Option<u32>,
    /// Tag stored with blind votes from the TUI.
    pub vote_tag: Option<String>,
    /// TUI theme name.
    pub theme: String,
    /// Whether the ledger stores prompt and answer text.
    pub log_content: bool,
    /// Governance patterns (empty: everything allowed).
    pub allowed_models: Vec<String>,
    /// Providers by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Aliases.
    pub aliases: BTreeMap<String, String>,
    /// Tiers (`fast`, `balanced`, `premium`).
    pub tiers: BTreeMap<String, Vec<String>>,
    /// Fallback chains keyed by `provider/model`.
    pub fallbacks: BTreeMap<String, Vec<String>>,
    /// Facts per `provider/model`.
    pub models: BTreeMap<String, ModelMeta>,
    /// Spending limits.
    pub budget: BudgetConfig,
    /// Response cache.
    pub cache: CacheConfig,
    /// A shared PostgreSQL ledger (`QUORUM_LEDGER_URL` over `[ledger] url`); None keeps
    /// the SQLite file in the data dir.
    pub ledger_url: Option<LedgerUrl>,
    /// Price overrides per `provider/model`.
    pub pricing: BTreeMap<String, PriceConfig>,
    /// TUI key bindings (validated by the TUI).
    pub keys: BTreeMap<String, String>,
    /// Things worth telling the user that do not stop quorum (e.g. a file
    /// holding a secret that other users can read). Faces print them.
    pub warnings: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config::defaults()
    }
}

/// Settings from flags: the top layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config PATH`.
    pub config: Option<PathBuf>,
    /// Default model.
    pub default_model: Option<String>,
    /// Governance patterns (replace the file's).
    pub allowed_models: Option<Vec<String>>,
    /// Total timeout of every request, seconds.
    pub timeout_secs: Option<f64>,
    /// Retries after the first attempt, for every provider.
    pub max_retries: Option<u32>,
}

/// The platform default config file (`config.toml` in the config dir).
pub fn default_config_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("dev", "llm-quorum", "quorum")
        .map(|d| d.config_dir().join("config.toml"))
}

/// Which user file to read, and whether it was named explicitly
/// (`--config`: must exist) or is a default location (may be absent).
pub fn config_path(ov: &Overrides, env: EnvFn<'_>) -> Option<(PathBuf, bool)> {
    if let Some(p) = &ov.config {
        return Some((p.clone(), true));
    }
    if let Some(p) = env("QUORUM_CONFIG").filter(|p| !p.trim().is_empty()) {
        return Some((PathBuf::from(p), false));
    }
    default_config_path().map(|p| (p, false))
}

/// Load the configuration: defaults ← user file ← environment ← flags.
pub fn load(ov: &Overrides, env: EnvFn<'_>) -> Result<Config, ConfigError> {
    load_from(config_path(ov, env), ov, env)
}

/// [`load`] with the user file given: `(path, explicit)`. A missing file is
/// fine unless it was named explicitly.
pub fn load_from(
    file: Option<(PathBuf, bool)>,
    ov: &Overrides,
    env: EnvFn<'_>,
) -> Result<Config, ConfigError> {
    let mut searched = None;
    let user = match file {
        Some((path, explicit)) => match std::fs::read(&path) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| {
                    ConfigError::plain(path.display().to_string(), "the file is not UTF-8")
                })?;
                Some((path, text))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                searched = Some(path);
                None
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::plain(
                    path.display().to_string(),
                    "config file not found (named by --config)",
                ))
            }
            Err(e) => {
                return Err(ConfigError::plain(
                    path.display().to_string(),
                    format!("cannot read the config file: {e}"),
                ))
            }
        },
        None => None,
    };
    match user {
        Some((path, text)) => load_text(Some(&path), &text, ov, env),
        None => build(FileConfig::default(), None, ov, env).map(|c| Config { searched, ..c }),
    }
}

/// Load from a config text (as if read from `path`): defaults ← text ←
/// environment ← flags.
pub fn load_text(
    path: Option<&Path>,
    text: &str,
    ov: &Overrides,
    env: EnvFn<'_>,
) -> Result<Config, ConfigError> {
    let src = Source {
        origin: path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<config>".into()),
        text: text.to_string(),
    };
    let user = parse_source(&src, env)?;
    let mut cfg = build(user, Some(&src), ov, env)?;
    if let Some(w) = path.and_then(|p| exposure_warning(p, text)) {
        cfg.warnings.push(w);
    }
    cfg.file = path.map(Path::to_path_buf);
    cfg.origin = Origin(Some(src));
    Ok(cfg)
}

fn defaults_file() -> FileConfig {
    let src = Source {
        origin: "built-in defaults".into(),
        text: DEFAULTS.to_string(),
    };
    // The defaults are tested; should they ever fail, run on nothing rather than panic.
    parse_source(&src, &|_| None).unwrap_or_default()
}

impl Config {
    /// The built-in defaults alone (no file, no environment).
    pub fn defaults() -> Config {
        build(FileConfig::default(), None, &Overrides::default(), &|_| {
            None
        })
        .unwrap_or_else(|_| Config::empty())
    }

    fn empty() -> Config {
        Config {
            file: None,
            searched: None,
            origin: Origin(None),
            default_model: None,
            compare_targets: Vec::new(),
            judge_model: None,
            tui_max_tokens: None,
            vote_tag: None,
            theme: "default".into(),
            log_content: true,
            allowed_models: Vec::new(),
            providers: BTreeMap::new(),
            aliases: BTreeMap::new(),
            tiers: BTreeMap::new(),
            fallbacks: BTreeMap::new(),
            models: BTreeMap::new(),
            budget: BudgetConfig::default(),
            cache: CacheConfig::default(),
            ledger_url: None,
            pricing: BTreeMap::new(),
            keys: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }
}

fn secs(
    v: Option<f64>,
    path: impl Fn() -> KeyPath,
    err: &dyn Fn(&KeyPath, String) -> ConfigError,
) -> Result<Option<Option<Duration>>, ConfigError> {
    match v {
        None => Ok(None),
        Some(s) if !s.is_finite() || s < 0.0 => Err(err(
            &path(),
            format!("must be a number of seconds ≥ 0 (0 = no limit), not {s}"),
        )),
        Some(0.0) => Ok(Some(None)),
        Some(s) => Ok(Some(Some(Duration::from_secs_f64(s)))),
    }
}

fn env_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Merge, apply environment and flags, validate.
fn build(
    user: FileConfig,
    src: Option<&Source>,
    ov: &Overrides,
    env: EnvFn<'_>,
) -> Result<Config, ConfigError> {
    let f = defaults_file().merge(user);
    let origin = src
        .map(|s| s.origin.clone())
        .unwrap_or_else(|| "built-in defaults".into());
    let err = |path: &KeyPath, msg: String| -> ConfigError {
        match src {
            Some(s) => s.error_for(path, msg),
            None => ConfigError {
                origin: origin.clone(),
                line: None,
                column: None,
                key_path: Some(path.to_string()),
                message: msg,
            },
        }
    };

    // --- environment layer (QUORUM_*) and flags, parsed up front.
    let env_default_model = env("QUORUM_DEFAULT_MODEL").filter(|s| !s.trim().is_empty());
    let env_ledger_url = env("QUORUM_LEDGER_URL").filter(|s| !s.trim().is_empty());
    let env_allowed = env("QUORUM_ALLOWED_MODELS")
        .filter(|s| !s.trim().is_empty())
        .map(|s| env_list(&s));
    if let Some(list) = &env_allowed {
        for p in list {
            globset::Glob::new(p).map_err(|e| {
                ConfigError::env(
                    "QUORUM_ALLOWED_MODELS",
                    format!("invalid pattern {p:?}: {}", e.kind()),
                )
            })?;
        }
    }
    let env_timeout = match env("QUORUM_TIMEOUT_SECS").filter(|s| !s.trim().is_empty()) {
        None => None,
        Some(s) => match s.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Some(v),
            _ => {
                return Err(ConfigError::env(
                    "QUORUM_TIMEOUT_SECS",
                    format!("expected a number of seconds, got {s:?}"),
                ))
            }
        },
    };
    let env_retries = match env("QUORUM_MAX_RETRIES").filter(|s| !s.trim().is_empty()) {
        None => None,
        Some(s) => match s.trim().parse::<u32>() {
            Ok(v) => Some(v),
            Err(_) => {
                return Err(ConfigError::env(
                    "QUORUM_MAX_RETRIES",
                    format!("expected a whole number of retries, got {s:?}"),
                ))
            }
        },
    };
    let timeout = ov.timeout_secs.or(env_timeout);
    if let Some(t) = ov.timeout_secs {
        if !t.is_finite() || t < 0.0 {
            return Err(ConfigError::plain("--timeout", "expected seconds ≥ 0"));
        }
    }
    let retries = ov.max_retries.or(env_retries);

    // --- providers
    let mut providers = BTreeMap::new();
    for (name, p) in &f.providers {
        let at = || KeyPath::of(&["providers", name]);
        if name.is_empty() || name.contains('/') || name.contains(char::is_whitespace) {
            return Err(err(
                &at(),
                "a provider name must be non-empty, without `/` or spaces".into(),
            ));
        }
        let Some(kind) = p.kind else {
            return Err(err(
                &at(),
                format!(
                    "`kind` is required for a provider that is not built in (one of: openai, \
                     anthropic, gemini, ollama, openrouter, compatible, openai-responses, azure, \
                     template, mock); built-in \
                     providers are {}",
                    BUILTIN_PROVIDERS.join(", ")
                ),
            ));
        };
        let mut base_url = p
            .base_url
            .clone()
            .unwrap_or_else(|| default_base_url(kind).to_string());
        if let Some((_, var)) = BUILTIN_BASE_ENV.iter().find(|(n, _)| n == name) {
            if let Some(v) = env(var).filter(|v| !v.trim().is_empty()) {
                base_url = if *var == "OLLAMA_HOST" {
                    normalize_ollama_host(&v)
                } else {
                    v.trim().to_string()
                };
            }
        }
        if kind != ProviderKind::Mock
            && !(base_url.starts_with("http://") || base_url.starts_with("https://"))
        {
            return Err(err(
                &at().key("base_url"),
                format!("must start with http:// or https://, got {base_url:?}"),
            ));
        }
        let mut headers = Vec::new();
        for (k, v) in p.headers.iter().flatten() {
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
                return Err(err(
                    &at().key("headers").key(k),
                    format!("{k:?} is not a valid HTTP header name"),
                ));
            }
            if reqwest::header::HeaderValue::from_str(v).is_err() {
                return Err(err(
                    &at().key("headers").key(k),
                    "the value holds characters not allowed in HTTP headers".into(),
                ));
            }
            headers.push((k.clone(), v.clone()));
        }
        if let Some(cmd) = &p.api_key_cmd {
            if cmd.trim().is_empty() {
                return Err(err(&at().key("api_key_cmd"), "the command is empty".into()));
            }
        }
        let mut policy = ProviderPolicy::default();
        let t = p.timeouts.clone().unwrap_or_default();
        let tp = || at().key("timeouts");
        if let Some(c) = secs(t.connect_secs, || tp().key("connect_secs"), &err)? {
            policy.connect_timeout = c;
        }
        if let Some(v) = secs(t.first_token_secs, || tp().key("first_token_secs"), &err)? {
            policy.timeouts.first_token = v;
        }
        if let Some(v) = secs(t.idle_secs, || tp().key("idle_secs"), &err)? {
            policy.timeouts.idle = v;
        }
        if let Some(v) = secs(t.total_secs, || tp().key("total_secs"), &err)? {
            policy.timeouts.total = v;
        }
        if let Some(t) = timeout {
            policy.timeouts.total = (t > 0.0).then(|| Duration::from_secs_f64(t));
        }
        let r = p.retry.clone().unwrap_or_default();
        if let Some(n) = r.max_attempts {
            if n == 0 {
                return Err(err(
                    &at().key("retry").key("max_attempts"),
                    "must be at least 1 (the first attempt counts)".into(),
                ));
            }
            policy.retry.max_attempts = n;
        }
        if let Some(ms) = r.base_delay_ms {
            policy.retry.base_delay = Duration::from_millis(ms);
        }
        if let Some(w) = secs(
            r.max_wait_secs,
            || at().key("retry").key("max_wait_secs"),
            &err,
        )? {
            policy.retry.max_wait = w.unwrap_or(Duration::ZERO);
        }
        if let Some(ff) = r.fail_fast_on_429 {
            policy.retry.fail_fast_on_429 = ff;
        }
        if let Some(n) = retries {
            policy.retry.max_attempts = n.saturating_add(1);
        }
        let b = p.breaker.clone().unwrap_or_default();
        if let Some(n) = b.failure_threshold {
            policy.breaker.failure_threshold = n;
        }
        if let Some(c) = secs(
            b.cooldown_secs,
            || at().key("breaker").key("cooldown_secs"),
            &err,
        )? {
            policy.breaker.cooldown = c.unwrap_or(Duration::ZERO);
        }
        if p.max_concurrency == Some(0) {
            return Err(err(
                &at().key("max_concurrency"),
                "must be at least 1".into(),
            ));
        }
        if p.requests_per_minute == Some(0) {
            return Err(err(
                &at().key("requests_per_minute"),
                "must be at least 1".into(),
            ));
        }
        if p.tokens_per_minute == Some(0) {
            return Err(err(
                &at().key("tokens_per_minute"),
                "must be at least 1".into(),
            ));
        }
        for (v, key) in [
            (p.max_response_bytes, "max_response_bytes"),
            (p.max_error_body_bytes, "max_error_body_bytes"),
        ] {
            if v.is_some_and(|v| v < 1024) {
                return Err(err(&at().key(key), "must be at least 1024 (bytes)".into()));
            }
        }
        if let Some(v) = p.max_response_bytes {
            policy.caps.max_response_bytes = v;
        }
        if let Some(v) = p.max_error_body_bytes {
            policy.caps.max_error_body = usize::try_from(v).unwrap_or(usize::MAX);
        }
        if let Some(v) = p.max_tokens_factor {
            policy.caps.max_tokens_factor = v;
        }
        policy.limits = Limits {
            max_concurrency: p.max_concurrency,
            requests_per_minute: p.requests_per_minute,
            tokens_per_minute: p.tokens_per_minute,
        };
        let extra = crate::engine::provider::ProviderExtra {
            api_version: p.api_version.clone(),
            template: match (&p.template, kind) {
                (Some(t), ProviderKind::Template) => {
                    t.validate()
                        .map_err(|why| err(&at().key("template"), why))?;
                    Some(std::sync::Arc::new(t.clone()))
                }
                (Some(_), _) => {
                    return Err(err(
                        &at().key("template"),
                        "only a provider of kind \"template\" takes a template".into(),
                    ))
                }
                (None, ProviderKind::Template) => {
                    return Err(err(
                        &at(),
                        "a provider of kind \"template\" needs a [template] table \
                         (path, body, text pointer)"
                            .into(),
                    ))
                }
                (None, _) => None,
            },
        };
        let models = p.models.clone().unwrap_or_default();
        for (i, m) in models.iter().enumerate() {
            if m.trim().is_empty() {
                return Err(err(&at().key("models").index(i), "empty model name".into()));
            }
        }
        providers.insert(
            name.clone(),
            ProviderConfig {
                name: name.clone(),
                kind,
                base_url,
                api_key_env: p.api_key_env.clone().map(|v| v.0).unwrap_or_default(),
                api_key_cmd: p.api_key_cmd.clone(),
                headers,
                policy,
                models,
                extra,
            },
        );
    }

    // --- targets named anywhere must name a known provider, alias or tier.
    let tiers: BTreeMap<String, Vec<String>> = f
        .tiers
        .clone()
        .map(|t| {
            [
                ("fast", t.fast),
                ("balanced", t.balanced),
                ("premium", t.premium),
            ]
            .into_iter()
            .filter_map(|(n, v)| v.map(|v| (n.to_string(), v)))
            .collect()
        })
        .unwrap_or_default();
    let check_target = |t: &str, path: KeyPath| -> Result<(), ConfigError> {
        let t = t.trim();
        if t.is_empty() {
            return Err(err(&path, "empty target".into()));
        }
        if let Some(tier) = t.strip_prefix("tier:") {
            if !tiers.contains_key(tier.trim()) {
                return Err(err(&path, format!("unknown tier {tier:?} in {t:?}")));
            }
            return Ok(());
        }
        match t.split_once('/') {
            Some((p, m)) => {
                if !providers.contains_key(p) {
                    let names: Vec<String> = providers.keys().cloned().collect();
                    return Err(err(
                        &path,
                        format!(
                            "{t:?}: no provider named {p:?} (providers: {})",
                            names.join(", ")
                        ),
                    ));
                }
                if m.is_empty() {
                    return Err(err(&path, format!("{t:?}: the model name is empty")));
                }
                Ok(())
            }
            None if f.aliases.contains_key(t) || tiers.contains_key(t) => Ok(()),
            None => Err(err(
                &path,
                format!("{t:?} is not provider/model, an alias or a tier"),
            )),
        }
    };
    for (a, t) in &f.aliases {
        if a.contains('/') || a.trim().is_empty() || a.starts_with("tier:") {
            return Err(err(
                &KeyPath::of(&["aliases", a]),
                "an alias name must be non-empty, without `/`, and not start with tier:".into(),
            ));
        }
        check_target(t, KeyPath::of(&["aliases", a]))?;
    }
    for (name, members) in &tiers {
        for (i, m) in members.iter().enumerate() {
            check_target(m, KeyPath::of(&["tiers", name]).index(i))?;
        }
    }
    for (from, to) in &f.fallbacks {
        check_target(from, KeyPath::of(&["fallbacks", from]))?;
        for (i, t) in to.iter().enumerate() {
            check_target(t, KeyPath::of(&["fallbacks", from]).index(i))?;
        }
    }
    for (i, t) in f.compare_targets.iter().flatten().enumerate() {
        check_target(t, KeyPath::of(&["compare_targets"]).index(i))?;
    }
    if let Some(t) = &f.judge_model {
        check_target(t, KeyPath::of(&["judge_model"]))?;
    }
    let need_id = |id: &str, path: KeyPath| -> Result<(), ConfigError> {
        match id.split_once('/') {
            Some((p, m)) if !p.is_empty() && !m.is_empty() => Ok(()),
            _ => Err(err(
                &path,
                format!("{id:?}: expected a \"provider/model\" key"),
            )),
        }
    };
    let mut models = BTreeMap::new();
    for (id, m) in &f.models {
        need_id(id, KeyPath::of(&["models", id]))?;
        let c = m.capabilities.clone().unwrap_or_default();
        models.insert(
            id.clone(),
            ModelMeta {
                context_window: m.context_window,
                max_tokens: m.max_tokens,
                capabilities: Capabilities {
                    tools: c.tools,
                    thinking: c.thinking,
                    vision: c.vision,
                    json: c.json,
                },
            },
        );
    }
    for (id, p) in &f.pricing {
        need_id(id, KeyPath::of(&["pricing", id]))?;
        let fields = [
            ("input", Some(p.input)),
            ("output", Some(p.output)),
            ("cached_input", p.cached_input),
            ("cache_write", p.cache_write),
            ("reasoning", p.reasoning),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                if !v.is_finite() || v < 0.0 {
                    return Err(err(
                        &KeyPath::of(&["pricing", id, k]),
                        format!("a price must be ≥ 0 (USD per million tokens), not {v}"),
                    ));
                }
            }
        }
    }
    if let Some(b) = &f.budget {
        for (k, v) in [("session_usd", b.session_usd), ("daily_usd", b.daily_usd)] {
            if let Some(v) = v {
                if !v.is_finite() || v < 0.0 {
                    return Err(err(
                        &KeyPath::of(&["budget", k]),
                        format!("must be ≥ 0, not {v}"),
                    ));
                }
            }
        }
    }
    let file_allowed = f.allowed_models.clone().unwrap_or_default();
    for (i, p) in file_allowed.iter().enumerate() {
        if let Err(e) = globset::Glob::new(p) {
            return Err(err(
                &KeyPath::of(&["allowed_models"]).index(i),
                format!("invalid pattern {p:?}: {}", e.kind()),
            ));
        }
    }
    let allowed_models = ov
        .allowed_models
        .clone()
        .or(env_allowed)
        .unwrap_or(file_allowed);

    let cache = f.cache.clone().unwrap_or_default();
    Ok(Config {
        file: None,
        searched: None,
        origin: Origin(None),
        default_model: ov
            .default_model
            .clone()
            .or(env_default_model)
            .or(f.default_model.clone()),
        compare_targets: f.compare_targets.clone().unwrap_or_default(),
        judge_model: f.judge_model.clone(),
        tui_max_tokens: f.tui_max_tokens,
        vote_tag: f.vote_tag.clone(),
        theme: f.theme.clone().unwrap_or_else(|| "default".into()),
        log_content: f.log_content.unwrap_or(true),
        allowed_models,
        providers,
        aliases: f.aliases.clone(),
        tiers,
        fallbacks: f.fallbacks.clone(),
        models,
        budget: f.budget.clone().unwrap_or_default(),
        cache: CacheConfig {
            enabled: cache.enabled.unwrap_or(false),
            ttl_secs: cache.ttl_secs.unwrap_or(86_400),
        },
        ledger_url: env_ledger_url
            .or_else(|| f.ledger.as_ref().and_then(|l| l.url.clone()))
            .filter(|u| !u.trim().is_empty())
            .map(|u| LedgerUrl(u.trim().to_string())),
        pricing: f.pricing.clone(),
        keys: f.keys.clone(),
        warnings: Vec::new(),
    })
}

// ---------------------------------------------------------------------------
// From config to engine

/// Run `api_key_cmd` once via `sh -c`; its trimmed stdout is the key. The
/// output is never shown, not even in errors.
///
/// The command runs in its own process group. Its output is read until the
/// command itself exits, not until every process holding the pipe closes it:
/// a background child left holding stdout never stalls a start. At the time
/// limit the whole group is killed.
pub fn run_key_cmd(provider: &str, cmd: &str) -> Result<Secret, ConfigError> {
    run_key_cmd_within(provider, cmd, KEY_CMD_TIMEOUT)
}

/// [`run_key_cmd`] with its own time limit.
pub fn run_key_cmd_within(
    provider: &str,
    cmd: &str,
    limit: Duration,
) -> Result<Secret, ConfigError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let origin = format!("providers.{provider}.api_key_cmd");
    let fail = |m: String| ConfigError::plain(origin.clone(), m);
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| {
            fail(format!(
                "the key command of provider {provider:?} could not start: {e}"
            ))
        })?;
    let pgid = child.id() as libc::pid_t;
    let kill_group = || {
        // SAFETY: kill(2) with a negative pid signals the process group we
        // created for this command; no memory is involved.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    };
    let Some(mut stdout) = child.stdout.take() else {
        kill_group();
        let _ = child.wait();
        return Err(fail("the key command's output could not be read".into()));
    };
    let fd = stdout.as_raw_fd();
    // SAFETY: fcntl(2) on a pipe descriptor we own, setting O_NONBLOCK.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    const MAX_OUT: usize = 64 << 10;
    let mut out = Vec::new();
    // Read what is in the pipe now; true at end of file.
    let mut drain = |out: &mut Vec<u8>| -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => {
                    if out.len() < MAX_OUT {
                        out.extend_from_slice(&buf[..n.min(MAX_OUT - out.len())]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    };
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        drain(&mut out);
        match child.try_wait() {
            Ok(Some(s)) => {
                // Everything the command wrote is in the pipe now; what a
                // background child may write later is not waited for.
                drain(&mut out);
                break s;
            }
            Ok(None) if std::time::Instant::now() >= deadline => {
                kill_group();
                let _ = child.wait();
                return Err(fail(format!(
                    "the key command of provider {provider:?} did not finish within {} s (its process group was killed)",
                    limit.as_secs_f64()
                )));
            }
            Ok(None) => {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll(2) on one valid pollfd; wakes on output or after 5 ms.
                unsafe {
                    libc::poll(&mut pfd, 1, 5);
                }
            }
            Err(e) => {
                kill_group();
                return Err(fail(format!(
                    "the key command of provider {provider:?} could not be waited for: {e}"
                )));
            }
        }
    };
    if !status.success() {
        let code = status
            .code()
            .map(|c| format!("exit status {c}"))
            .unwrap_or_else(|| "killed by a signal".into());
        return Err(fail(format!(
            "the key command of provider {provider:?} failed ({code}); its output is not shown"
        )));
    }
    let key = String::from_utf8(out).map_err(|_| {
        fail(format!(
            "the key command of provider {provider:?} printed non-UTF-8 output"
        ))
    })?;
    let key = key.trim();
    if key.is_empty() {
        return Err(fail(format!(
            "the key command of provider {provider:?} printed nothing"
        )));
    }
    Ok(Secret::new(key))
}

impl Config {
    /// The provider spec of `p`: its key from `api_key_cmd` (run now) or the
    /// first of its `api_key_env` variables that is set.
    pub fn provider_spec(p: &ProviderConfig, env: EnvFn<'_>) -> Result<ProviderSpec, ConfigError> {
        let mut spec = ProviderSpec::new(p.name.clone(), p.kind);
        spec.base_url = p.base_url.clone();
        spec.headers = p.headers.clone();
        spec.extra = p.extra.clone();
        spec.api_key = match &p.api_key_cmd {
            Some(cmd) => Some(run_key_cmd(&p.name, cmd)?),
            None => p
                .api_key_env
                .iter()
                .find_map(|k| env(k).filter(|v| !v.trim().is_empty()))
                .map(|v| Secret::new(v.trim())),
        };
        Ok(spec)
    }

    /// Build the engine's configuration: registry (providers with their
    /// keys, aliases, tiers, governance, model facts), policies, fallbacks.
    pub fn engine_config(&self, env: EnvFn<'_>) -> Result<EngineConfig, ConfigError> {
        let mut reg = Registry::new();
        let mut policies = HashMap::new();
        for p in self.providers.values() {
            let spec = Self::provider_spec(p, env).map_err(|e| match &self.origin.0 {
                Some(src) => src.error_for(
                    &KeyPath::of(&["providers", &p.name, "api_key_cmd"]),
                    e.message,
                ),
                None => e,
            })?;
            reg.insert(spec);
            for m in &p.models {
                reg.add_model(&p.name, m.clone());
            }
            if p.kind == ProviderKind::Mock {
                for m in mock::models() {
                    reg.add_model(&p.name, m.name);
                }
            }
            policies.insert(p.name.clone(), p.policy.clone());
        }
        for (a, t) in &self.aliases {
            reg.add_alias(a.clone(), t.clone());
        }
        for (t, members) in &self.tiers {
            reg.set_tier(t.clone(), members.clone());
        }
        for (id, m) in &self.models {
            reg.set_model_meta(id.clone(), m.clone());
        }
        reg.set_allowed(self.allowed_models.clone())
            .map_err(|e| ConfigError::plain("allowed_models", e.to_string()))?;
        Ok(EngineConfig {
            registry: reg,
            policies,
            fallbacks: self
                .fallbacks
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_parse_and_hold_the_builtins() {
        let src = Source {
            origin: "built-in defaults".into(),
            text: DEFAULTS.into(),
        };
        parse_source(&src, &no_env).expect("defaults parse");
        let c = Config::defaults();
        for b in BUILTIN_PROVIDERS {
            assert!(c.providers.contains_key(*b), "{b}");
        }
        assert_eq!(
            c.providers["gemini"].api_key_env,
            ["GEMINI_API_KEY", "GOOGLE_API_KEY"]
        );
        assert!(c.log_content);
        assert_eq!(c.cache, CacheConfig::default());
    }

    #[test]
    fn substitution() {
        let env = |k: &str| (k == "A").then(|| "x".to_string());
        assert_eq!(substitute("a${A}b", &env).unwrap(), "axb");
        assert_eq!(substitute("${B:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(substitute("$${A} $5", &env).unwrap(), "${A} $5");
        assert!(substitute("${B}", &env)
            .unwrap_err()
            .contains("B is not set"));
        assert!(substitute("${A", &env).is_err());
        assert!(substitute("${1x}", &env).is_err());
    }

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("", 0), (1, 1));
    }

    #[test]
    fn key_paths_quote_what_needs_quoting() {
        let p = KeyPath::of(&["models", "openai/gpt-4o", "max_tokens"]);
        assert_eq!(p.to_string(), "models.\"openai/gpt-4o\".max_tokens");
        assert_eq!(
            KeyPath::of(&["tiers", "fast"]).index(2).to_string(),
            "tiers.fast[2]"
        );
    }

    #[test]
    fn user_table_overrides_single_fields_of_a_builtin() {
        let c = load_text(
            None,
            "[providers.openai]\nbase_url = \"http://127.0.0.1:9/v1\"\n[providers.openai.retry]\nmax_attempts = 7\n",
            &Overrides::default(),
            &no_env,
        )
        .unwrap();
        let p = &c.providers["openai"];
        assert_eq!(p.base_url, "http://127.0.0.1:9/v1");
        assert_eq!(p.kind, ProviderKind::Openai);
        assert_eq!(p.api_key_env, ["OPENAI_API_KEY"]);
        assert_eq!(p.policy.retry.max_attempts, 7);
        assert!(!p.models.is_empty());
    }
}
