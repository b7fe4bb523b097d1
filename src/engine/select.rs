//! Target selection that needs prices: `cheapest:TIER` (the cheapest member of
//! a tier that can serve this request) and deprecation warnings.
//!
//! The registry resolves names without knowing prices; this module sits on top
//! of it and the price table. Faces call [`expand_targets`] before a run and
//! show [`deprecation_warnings`] next to it.

use super::budget::project_target;
use super::error::EngineError;
use super::registry::{has_key, Resolved};
use super::request::{ChatRequest, ResponseFormat};
use super::run::Engine;
use super::tokens::quick_estimate_request;

/// Output tokens assumed when ranking by cost and the request sets no limit.
const RANKING_OUTPUT_TOKENS: u32 = 1000;

/// Whether the price table says the model lacks a capability the request needs
/// (a row with no capability list says nothing either way).
fn table_lacks(engine: &Engine, r: &Resolved, req: &ChatRequest) -> Option<&'static str> {
    let row = engine.pricing().lookup(&r.spec.name, &r.model)?;
    if row.capabilities.is_empty() {
        return None;
    }
    let has = |c: &str| row.capabilities.iter().any(|x| x == c);
    if !req.tools.is_empty() && !has("tools") {
        return Some("tools");
    }
    if req.reasoning.is_some() && !has("thinking") {
        return Some("thinking");
    }
    if !matches!(req.response_format, ResponseFormat::Text) && !has("json") {
        return Some("JSON output");
    }
    if req.has_images() && !has("vision") {
        return Some("vision");
    }
    None
}

/// The cheapest member of `tier` that has a key, is allowed, and has the
/// capabilities `req` uses, ranked by the projected cost of this request
/// (members with no price rank last, in tier order).
pub fn cheapest(engine: &Engine, tier: &str, req: &ChatRequest) -> Result<Resolved, EngineError> {
    let reg = engine.registry();
    let Some(members) = reg.tiers().get(tier) else {
        // Let the registry word the error (close matches included).
        return reg.resolve(&format!("tier:{tier}"));
    };
    let input = quick_estimate_request(req);
    let out = Some(req.max_tokens.unwrap_or(RANKING_OUTPUT_TOKENS));
    let mut why = Vec::new();
    let mut best: Option<(f64, Resolved)> = None;
    for m in members {
        let r = match reg.resolve(m) {
            Ok(r) => r,
            Err(e) => {
                why.push(format!("{m} ({e})"));
                continue;
            }
        };
        if !has_key(&r.spec) {
            why.push(format!("{} (no API key)", r.id()));
            continue;
        }
        if let Err(e) = reg.check_capabilities(&r, req) {
            why.push(format!("{} ({e})", r.id()));
            continue;
        }
        if let Some(cap) = table_lacks(engine, &r, req) {
            why.push(format!("{} (no {cap})", r.id()));
            continue;
        }
        let p = project_target(
            engine.pricing(),
            &r.id(),
            &r.spec.name,
            &r.model,
            input,
            false,
            out,
        );
        let cost = p.bound_usd.unwrap_or(f64::INFINITY);
        if best.as_ref().is_none_or(|(c, _)| cost < *c) {
            best = Some((cost, r));
        }
    }
    match best {
        Some((_, r)) => Ok(Resolved {
            requested: format!("cheapest:{tier}"),
            ..r
        }),
        None => Err(EngineError::Config {
            message: format!(
                "tier {tier:?} has no model that can serve this request: {}",
                if why.is_empty() {
                    "it is empty".to_string()
                } else {
                    why.join(", ")
                }
            ),
        }),
    }
}

/// Replace every `cheapest:TIER` target by the `provider/model` chosen for `req`;
/// other targets are kept as written (the engine resolves them).
pub fn expand_targets(
    engine: &Engine,
    targets: &[String],
    req: &ChatRequest,
) -> Result<Vec<String>, EngineError> {
    targets
        .iter()
        .map(|t| match t.trim().strip_prefix("cheapest:") {
            Some(tier) => cheapest(engine, tier.trim(), req).map(|r| r.id()),
            None => Ok(t.clone()),
        })
        .collect()
}

/// One line per target whose model the price table marks deprecated, with its
/// retirement date and replacement.
pub fn deprecation_warnings(engine: &Engine, targets: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for t in targets {
        let Ok(r) = engine.registry().resolve(t) else {
            continue;
        };
        let Some(row) = engine.pricing().lookup(&r.spec.name, &r.model) else {
            continue;
        };
        if let Some(date) = &row.deprecated {
            let mut line = format!("{} is deprecated (retired {date})", r.id());
            if let Some(rep) = &row.replacement {
                line.push_str(&format!("; use {rep} instead"));
            }
            out.push(line);
        }
    }
    out
}
