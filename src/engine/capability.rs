//! Whether a target can serve what a request asks for (thinking, JSON
//! output, tools, images), decided before anything is sent.
//!
//! Three layers, first that knows wins: the config's
//! `[models."p/m".capabilities]`, the price table's capability list, and
//! what the wire protocol itself cannot carry (a templated API takes no
//! images or tools; the mock models read text only).

use super::cost::Pricing;
use super::error::EngineError;
use super::provider::ProviderKind;
use super::registry::{Registry, Resolved};
use super::request::{ChatRequest, ResponseFormat};

/// What a request needs, as capability words of the price table.
pub fn needs(req: &ChatRequest) -> Vec<(&'static str, &'static str)> {
    let mut v = Vec::new();
    if req.reasoning.is_some() {
        v.push(("thinking", "reasoning / thinking"));
    }
    if !matches!(req.response_format, ResponseFormat::Text) {
        v.push(("json", "JSON output"));
    }
    if !req.tools.is_empty() {
        v.push(("tools", "tools"));
    }
    if req.has_images() {
        v.push(("vision", "images"));
    }
    v
}

/// What the protocol of `kind` cannot carry at all.
fn protocol_lacks(kind: ProviderKind, cap: &str) -> Option<&'static str> {
    match (kind, cap) {
        (ProviderKind::Template, "vision" | "tools" | "thinking") => {
            Some("a templated provider sends text only")
        }
        (ProviderKind::Mock, "vision") => Some("mock models read text only"),
        _ => None,
    }
}

/// Refuse, naming the target, a request that uses a capability the target
/// lacks. Unknown stays allowed: a model nobody describes is given the chance.
pub fn check(
    registry: &Registry,
    pricing: &Pricing,
    r: &Resolved,
    req: &ChatRequest,
) -> Result<(), EngineError> {
    registry.check_capabilities(r, req)?;
    let configured = registry
        .model_meta(&r.spec.name, &r.model)
        .map(|m| m.capabilities)
        .unwrap_or_default();
    let row = pricing.lookup(&r.spec.name, &r.model);
    for (cap, what) in needs(req) {
        let said = match cap {
            "thinking" => configured.thinking,
            "json" => configured.json,
            "tools" => configured.tools,
            "vision" => configured.vision,
            _ => None,
        };
        if said == Some(true) {
            continue;
        }
        if let Some(why) = protocol_lacks(r.spec.kind, cap) {
            return Err(EngineError::Config {
                message: format!("{} cannot take {what}: {why}", r.id()),
            });
        }
        if let Some(row) = row.filter(|row| !row.capabilities.is_empty()) {
            if !row.has(cap) {
                return Err(EngineError::Config {
                    message: format!(
                        "{} does not support {what} (its capabilities are: {}); \
                         set models.\"{}\".capabilities.{cap} = true in the config if it does",
                        r.id(),
                        row.capabilities.join(", "),
                        r.id()
                    ),
                });
            }
        }
    }
    Ok(())
}
