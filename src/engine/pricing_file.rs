//! The user pricing file (`pricing.json` in the data dir) and the import of LiteLLM's
//! `model_prices_and_context_window.json` into it.
//!
//! The file keeps history: an import never edits a row; a changed price is appended as a
//! new row effective from the import date, so requests already in the ledger keep the id
//! of the row they were priced with and can still be explained.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::cost::{Origin, Price, PriceRow, Tier};

/// File name of the user pricing file inside the data dir.
pub const FILE_NAME: &str = "pricing.json";

#[derive(Debug, Serialize, Deserialize)]
struct UserFile {
    version: u32,
    rows: Vec<PriceRow>,
}

/// Read the user pricing file; a missing file has no rows.
pub fn load(path: &Path) -> Result<Vec<PriceRow>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let f: UserFile = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a quorum pricing file: {e}", path.display()))?;
    Ok(f.rows)
}

/// Write the user pricing file atomically (temp file + rename), readable by the owner only.
pub fn save(path: &Path, rows: &[PriceRow]) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        super::files::create_private_dir(dir)?;
    }
    let body = serde_json::to_vec_pretty(&serde_json::json!({"version": 1, "rows": rows}))
        .map_err(|e| e.to_string())?;
    let tmp = path.with_extension("json.tmp");
    {
        use std::io::Write;
        let mut f = super::files::create_private_file(&tmp)?;
        f.write_all(&body)
            .and_then(|_| f.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

/// LiteLLM providers whose models quorum can call, and the provider name used here.
const LITELLM_PROVIDERS: &[(&str, &str)] = &[
    ("openai", "openai"),
    ("anthropic", "anthropic"),
    ("gemini", "gemini"),
    ("openrouter", "openrouter"),
    ("deepseek", "deepseek"),
    ("groq", "groq"),
    ("mistral", "mistral"),
    ("xai", "xai"),
    ("together_ai", "together"),
    ("fireworks_ai", "fireworks"),
    ("cerebras", "cerebras"),
    ("perplexity", "perplexity"),
    ("deepinfra", "deepinfra"),
];

fn per_million(v: &serde_json::Value) -> Option<f64> {
    let x = v.as_f64()?;
    // Per token -> per million, rounded to kill float noise (1.5e-07 * 1e6 = 0.15000000000000002).
    Some((x * 1e6 * 1e9).round() / 1e9)
}

/// The rows LiteLLM's table describes (chat models of the providers quorum can call),
/// keyed `provider/model`. `source_label` names where the JSON came from.
pub fn litellm_rows(json: &serde_json::Value, source_label: &str) -> Vec<PriceRow> {
    let Some(map) = json.as_object() else {
        return Vec::new();
    };
    // (provider, model) -> (key had the provider prefix, row). LiteLLM sometimes lists a
    // model twice (`gemini-exp-1206` and `gemini/gemini-exp-1206`); the prefixed entry
    // is the provider-specific one and wins.
    let mut out: BTreeMap<(String, String), (bool, PriceRow)> = BTreeMap::new();
    for (key, v) in map {
        let Some(o) = v.as_object() else { continue };
        let Some(lp) = o.get("litellm_provider").and_then(|p| p.as_str()) else {
            continue;
        };
        let Some(&(_, provider)) = LITELLM_PROVIDERS.iter().find(|(l, _)| *l == lp) else {
            continue;
        };
        let mode = o.get("mode").and_then(|m| m.as_str()).unwrap_or("chat");
        if mode != "chat" && mode != "responses" {
            continue;
        }
        let (Some(input), Some(output)) = (
            o.get("input_cost_per_token").and_then(per_million),
            o.get("output_cost_per_token").and_then(per_million),
        ) else {
            continue;
        };
        let prefixed = key.starts_with(&format!("{lp}/"));
        let model = key
            .strip_prefix(&format!("{lp}/"))
            .unwrap_or(key)
            .to_string();
        if model.is_empty() || model.starts_with("ft:") {
            continue;
        }
        // A zero cache rate next to a non-zero input rate means "no such charge listed",
        // not "free": leave it unset so those tokens fall back to the input rate.
        let cache_rate = |k: &str| {
            o.get(k)
                .and_then(per_million)
                .filter(|r| *r != 0.0 || input == 0.0)
        };
        let price = Price {
            input,
            output,
            cached_input: cache_rate("cache_read_input_token_cost"),
            cache_write: cache_rate("cache_creation_input_token_cost"),
            reasoning: o
                .get("output_cost_per_reasoning_token")
                .and_then(per_million)
                .filter(|r| (r - output).abs() > 1e-12),
        };
        let long_context = litellm_tier(o);
        let mut caps = Vec::new();
        for (flag, cap) in [
            ("supports_function_calling", "tools"),
            ("supports_vision", "vision"),
            ("supports_reasoning", "thinking"),
            ("supports_response_schema", "json"),
        ] {
            if o.get(flag).and_then(|b| b.as_bool()) == Some(true) {
                caps.push(cap.to_string());
            }
        }
        let as_u64 = |k: &str| o.get(k).and_then(|x| x.as_u64());
        let upstream = o.get("source").and_then(|s| s.as_str()).unwrap_or("");
        let row = PriceRow {
            origin: Origin::User,
            provider: provider.to_string(),
            model,
            price,
            long_context,
            context_window: as_u64("max_input_tokens"),
            max_output: as_u64("max_output_tokens"),
            capabilities: caps,
            source: if upstream.is_empty() {
                format!("litellm ({source_label})")
            } else {
                format!("litellm ({source_label}); {upstream}")
            },
            deprecated: o
                .get("deprecation_date")
                .and_then(|d| d.as_str())
                .map(str::to_string),
            ..Default::default()
        };
        let k = (row.provider.clone(), row.model.clone());
        match out.get(&k) {
            Some((true, _)) if !prefixed => {}
            _ => {
                out.insert(k, (prefixed, row));
            }
        }
    }
    out.into_values().map(|(_, r)| r).collect()
}

/// LiteLLM's `*_above_<N>k_tokens` prices (plain tier only, not batch/flex/priority).
fn litellm_tier(o: &serde_json::Map<String, serde_json::Value>) -> Option<Tier> {
    let mut threshold = None;
    for k in o.keys() {
        let Some(rest) = k.strip_prefix("input_cost_per_token_above_") else {
            continue;
        };
        let Some(n) = rest.strip_suffix("k_tokens") else {
            continue;
        };
        if let Ok(n) = n.parse::<u64>() {
            threshold = Some(n);
        }
    }
    let n = threshold?;
    let get = |base: &str| {
        o.get(&format!("{base}_above_{n}k_tokens"))
            .and_then(per_million)
    };
    Some(Tier {
        threshold: n * 1000,
        price: Price {
            input: get("input_cost_per_token")?,
            output: get("output_cost_per_token")
                .or_else(|| o.get("output_cost_per_token").and_then(per_million))?,
            cached_input: get("cache_read_input_token_cost"),
            cache_write: get("cache_creation_input_token_cost"),
            reasoning: None,
        },
    })
}

/// What an import changed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ImportReport {
    /// New models: ids of the rows added.
    pub added: Vec<String>,
    /// Changed prices: (previous row id, new row id).
    pub changed: Vec<(String, String)>,
    /// Rows whose price is the same as before.
    pub unchanged: usize,
    /// Models in the file but not in this import (kept).
    pub not_in_import: usize,
}

impl ImportReport {
    /// Whether anything would be written.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty()
    }
}

/// Merge `incoming` into the `existing` user rows as of `today`: new models and changed
/// prices become new rows effective today; unchanged prices keep their row (and id).
pub fn merge(
    existing: Vec<PriceRow>,
    incoming: Vec<PriceRow>,
    today: &str,
) -> (Vec<PriceRow>, ImportReport) {
    let mut report = ImportReport::default();
    let mut rows = existing;
    for r in rows.iter_mut() {
        if r.id.is_empty() {
            r.id = PriceRow::make_id(Origin::User, &r.provider, &r.model, &r.effective);
        }
    }
    // Current row per model in the file.
    let mut current: HashMap<(String, String), usize> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        let key = (r.provider.clone(), r.model.clone());
        match current.get(&key) {
            Some(&j) if rows[j].effective > r.effective => {}
            _ => {
                current.insert(key, i);
            }
        }
    }
    let mut ids: HashMap<String, ()> = rows.iter().map(|r| (r.id.clone(), ())).collect();
    let mut touched: BTreeMap<(String, String), ()> = BTreeMap::new();
    for mut r in incoming {
        let key = (r.provider.clone(), r.model.clone());
        touched.insert(key.clone(), ());
        r.origin = Origin::User;
        r.effective = today.to_string();
        let mut id = PriceRow::make_id(Origin::User, &r.provider, &r.model, today);
        let mut n = 1;
        while ids.contains_key(&id) {
            n += 1;
            id = format!(
                "{}.{n}",
                PriceRow::make_id(Origin::User, &r.provider, &r.model, today)
            );
        }
        match current.get(&key) {
            Some(&i) => {
                let old = &rows[i];
                if old.price.same_as(&r.price) && old.long_context == r.long_context {
                    report.unchanged += 1;
                    continue;
                }
                r.id = id.clone();
                report.changed.push((old.id.clone(), id.clone()));
            }
            None => {
                r.id = id.clone();
                report.added.push(id.clone());
            }
        }
        ids.insert(id, ());
        current.insert(key, rows.len());
        rows.push(r);
    }
    report.not_in_import = current.keys().filter(|k| !touched.contains_key(*k)).count();
    (rows, report)
}
