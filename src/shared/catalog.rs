//! The model catalogue as every face lists it: providers, their models, whether
//! a key is present (never the key), context window and price; aliases and tiers
//! with what they resolve to now. `quorum models` prints it, serve's `llm.models`
//! returns it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Config;
use crate::engine::discovery::Discovery;
use crate::engine::registry::{has_key, Capabilities, EnvFn};
use crate::engine::Engine;

/// A price as listed: USD per million tokens.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ListedPrice {
    /// Input.
    pub input: f64,
    /// Output.
    pub output: f64,
}

/// One `provider/model` row.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRow {
    /// `provider/model`.
    pub id: String,
    /// Provider name.
    pub provider: String,
    /// Model name.
    pub model: String,
    /// Whether requests can be sent as far as keys go.
    pub key_present: bool,
    /// Whether `allowed_models` lets it through.
    pub allowed: bool,
    /// Context window, if known.
    pub context_window: Option<u64>,
    /// Default max_tokens, if configured.
    pub max_tokens: Option<u32>,
    /// Capabilities, where configured.
    pub capabilities: Capabilities,
    /// Price, null when unknown (never $0).
    pub price: Option<ListedPrice>,
    /// Listed by the provider itself (`--discover`), not known from config or the table.
    pub discovered: bool,
}

/// One provider.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderRow {
    /// Name.
    pub name: String,
    /// Wire protocol.
    pub kind: String,
    /// Base URL.
    pub base_url: String,
    /// Whether a key is present (or none is needed).
    pub key_present: bool,
    /// Whether the kind needs a key at all.
    pub key_needed: bool,
    /// Where the key comes from: `env:NAME`, `command`, or null.
    pub key_source: Option<String>,
    /// Variables that would provide the key.
    pub key_env: Vec<String>,
    /// Known models.
    pub models: Vec<String>,
}

/// An alias or tier and what it resolves to now.
#[derive(Debug, Clone, Serialize)]
pub struct NameRow {
    /// The alias target or the tier's members.
    pub targets: Vec<String>,
    /// `provider/model` it resolves to now, if it does.
    pub resolves_to: Option<String>,
    /// Why it does not resolve.
    pub error: Option<String>,
}

/// The whole listing (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// The config file read, if any.
    pub config_file: Option<String>,
    /// Where a config file was looked for and not found.
    pub config_searched: Option<String>,
    /// Providers.
    pub providers: Vec<ProviderRow>,
    /// Every known `provider/model`.
    pub models: Vec<ModelRow>,
    /// Aliases.
    pub aliases: BTreeMap<String, NameRow>,
    /// Tiers.
    pub tiers: BTreeMap<String, NameRow>,
    /// `allowed_models` (empty: everything allowed).
    pub allowed_models: Vec<String>,
    /// Providers asked for their models (`--discover`) that did not answer, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub discovery_errors: Vec<(String, String)>,
}

fn resolve_row(engine: &Engine, name: &str, targets: Vec<String>) -> NameRow {
    match engine.registry().resolve(name) {
        Ok(r) => NameRow {
            targets,
            resolves_to: Some(r.id()),
            error: None,
        },
        Err(e) => NameRow {
            targets,
            resolves_to: None,
            error: Some(e.to_string()),
        },
    }
}

/// Build the listing from an engine and its configuration.
pub fn listing(engine: &Engine, cfg: &Config, env: EnvFn<'_>) -> Listing {
    let reg = engine.registry();
    let mut providers = Vec::new();
    let mut models = Vec::new();
    for spec in reg.providers() {
        let pc = cfg.providers.get(&spec.name);
        let key_env = pc.map(|p| p.api_key_env.clone()).unwrap_or_default();
        let key_source = match pc {
            _ if spec.api_key.is_none() => None,
            Some(p) if p.api_key_cmd.is_some() => Some("command".to_string()),
            _ => key_env
                .iter()
                .find(|k| env(k).is_some_and(|v| !v.trim().is_empty()))
                .map(|k| format!("env:{k}")),
        };
        let mut names: Vec<String> = reg.models(&spec.name).to_vec();
        let prefix = format!("{}/", spec.name);
        for id in reg.model_metas().keys() {
            if let Some(m) = id.strip_prefix(&prefix) {
                if !names.iter().any(|n| n == m) {
                    names.push(m.to_string());
                }
            }
        }
        let key_present = has_key(spec);
        for m in &names {
            let id = format!("{}/{m}", spec.name);
            let meta = reg.model_meta(&spec.name, m).cloned().unwrap_or_default();
            models.push(ModelRow {
                allowed: reg.is_allowed(&id),
                id,
                provider: spec.name.clone(),
                model: m.clone(),
                key_present,
                context_window: meta.context_window,
                max_tokens: meta.max_tokens,
                capabilities: meta.capabilities,
                price: engine.pricing().lookup(&spec.name, m).map(|p| ListedPrice {
                    input: p.price.input,
                    output: p.price.output,
                }),
                discovered: false,
            });
        }
        providers.push(ProviderRow {
            name: spec.name.clone(),
            kind: spec.kind.as_str().to_string(),
            base_url: spec.base_url.clone(),
            key_present,
            key_needed: spec.kind.needs_key(),
            key_source,
            key_env,
            models: names,
        });
    }
    let aliases = reg
        .aliases()
        .iter()
        .map(|(a, t)| (a.clone(), resolve_row(engine, a, vec![t.clone()])))
        .collect();
    let tiers = reg
        .tiers()
        .iter()
        .map(|(t, members)| {
            (
                t.clone(),
                resolve_row(engine, &format!("tier:{t}"), members.clone()),
            )
        })
        .collect();
    Listing {
        config_file: cfg.file.as_ref().map(|p| p.display().to_string()),
        config_searched: cfg.searched.as_ref().map(|p| p.display().to_string()),
        providers,
        models,
        aliases,
        tiers,
        allowed_models: reg.allowed_patterns().to_vec(),
        discovery_errors: Vec::new(),
    }
}

/// Add what the providers listed themselves to a listing: new rows for models
/// not known yet (with the context window and price the provider gave, where
/// our table has none), and the providers that did not answer.
pub fn merge_discovered(l: &mut Listing, engine: &Engine, found: Vec<Discovery>) {
    let reg = engine.registry();
    for d in found {
        let models = match d.models {
            Ok(m) => m,
            Err(e) => {
                l.discovery_errors.push((d.provider, e.to_string()));
                continue;
            }
        };
        let key_present = reg.provider(&d.provider).is_some_and(|s| has_key(s));
        for m in models {
            let id = format!("{}/{}", d.provider, m.name);
            if l.models.iter().any(|r| r.id == id) {
                continue;
            }
            let price = engine
                .pricing()
                .lookup(&d.provider, &m.name)
                .map(|p| (p.price.input, p.price.output))
                .or(m.price.as_ref().map(|p| (p.input, p.output)))
                .map(|(input, output)| ListedPrice { input, output });
            if let Some(p) = l.providers.iter_mut().find(|p| p.name == d.provider) {
                p.models.push(m.name.clone());
            }
            l.models.push(ModelRow {
                allowed: reg.is_allowed(&id),
                id,
                provider: d.provider.clone(),
                model: m.name,
                key_present,
                context_window: m.context_window,
                max_tokens: None,
                capabilities: Capabilities::default(),
                price,
                discovered: true,
            });
        }
    }
}
