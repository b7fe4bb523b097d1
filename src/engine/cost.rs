//! What a request cost, and how we know.
//!
//! Prices come in three layers, highest first:
//! 1. **config**: `[pricing."provider/model"]` in the config file (flat prices, no tiers),
//! 2. **user**: the user pricing file in the data dir, written by `quorum pricing update`,
//! 3. **builtin**: `assets/models.toml`, embedded in the binary.
//!
//! A model name is looked up exactly first, in every layer in that order; only then with
//! a dated snapshot suffix removed (`claude-haiku-4-5-20251001` -> `claude-haiku-4-5`),
//! then the provider's wildcard row (`ollama/*`, `mock/*`: free, "local"). So the most
//! specific name wins, and for the same name config beats the user file beats the table.
//! Nothing is ever matched by prefix, so `gpt-4o-mini-search-preview` is unknown rather
//! than priced as `gpt-4o-mini`.
//!
//! Every price row has an id (`builtin:openai/gpt-4o-mini@2024-07-18`) that the ledger
//! stores with each request; a price change is a new row with a later date, never an edit,
//! so an old ledger row can always be explained.
//!
//! The tables are parsed on first use, not at startup: building a [`Pricing`] is free, so
//! nothing here sits on the path to the TUI's first frame (call [`Pricing::warm`] on a
//! background thread to pay the parse early).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use super::error::EngineError;
use super::event::{Completion, CostSource, Usage};
use super::request::ChatRequest;

/// Prices in USD per million tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// Uncached input.
    pub input: f64,
    /// Output (reasoning included unless `reasoning` is set).
    pub output: f64,
    /// Cached input read; defaults to `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
    /// Cache write; defaults to `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
    /// Reasoning output, where it differs from output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<f64>,
}

impl Price {
    /// A flat price with no cache or reasoning rates.
    pub fn flat(input: f64, output: f64) -> Price {
        Price {
            input,
            output,
            ..Default::default()
        }
    }

    /// The cost of `u` at this price: every kind of token at its own rate.
    pub fn cost(&self, u: &Usage) -> f64 {
        let cached = self.cached_input.unwrap_or(self.input);
        let write = self.cache_write.unwrap_or(self.input);
        let (reasoning_part, plain_out) = match self.reasoning {
            Some(r) => (
                u.reasoning_tokens.min(u.output_tokens) as f64 * r,
                u.output_tokens.saturating_sub(u.reasoning_tokens),
            ),
            None => (0.0, u.output_tokens),
        };
        (u.uncached_input_tokens() as f64 * self.input
            + u.cached_input_tokens as f64 * cached
            + u.cache_creation_input_tokens as f64 * write
            + plain_out as f64 * self.output
            + reasoning_part)
            * 1e-6
    }

    /// The dearest rate an output token can have (for upper bounds).
    pub fn max_output_rate(&self) -> f64 {
        self.output.max(self.reasoning.unwrap_or(0.0))
    }

    /// Whether every rate is zero.
    pub fn is_free(&self) -> bool {
        self.input == 0.0
            && self.output == 0.0
            && self.cached_input.unwrap_or(0.0) == 0.0
            && self.cache_write.unwrap_or(0.0) == 0.0
            && self.reasoning.unwrap_or(0.0) == 0.0
    }

    /// Equal within rounding (imports go through per-token floats).
    pub fn same_as(&self, o: &Price) -> bool {
        fn eq(a: f64, b: f64) -> bool {
            (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-6)
        }
        fn eq_opt(a: Option<f64>, b: Option<f64>) -> bool {
            match (a, b) {
                (None, None) => true,
                (Some(a), Some(b)) => eq(a, b),
                _ => false,
            }
        }
        eq(self.input, o.input)
            && eq(self.output, o.output)
            && eq_opt(self.cached_input, o.cached_input)
            && eq_opt(self.cache_write, o.cache_write)
            && eq_opt(self.reasoning, o.reasoning)
    }
}

/// A long-context tier: above `threshold` prompt tokens the whole request is billed at
/// these prices (Gemini 2.5 Pro, Claude Sonnet 4/4.5 with the 1M context).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tier {
    /// Prompt tokens (cached ones included) above which the tier applies.
    pub threshold: u64,
    /// The tier's prices.
    #[serde(flatten)]
    pub price: Price,
}

/// Which layer a price row came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `assets/models.toml`, embedded.
    #[default]
    Builtin,
    /// The user pricing file (`quorum pricing update`).
    User,
    /// A `[pricing."provider/model"]` entry of the config file.
    Config,
}

impl Origin {
    /// Wire word, also the prefix of row ids.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Builtin => "builtin",
            Origin::User => "user",
            Origin::Config => "config",
        }
    }
}

/// One price row: what a model costs from a date on, and where that figure comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PriceRow {
    /// Stable id, stored in the ledger: `origin:provider/model@effective`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Layer.
    #[serde(default)]
    pub origin: Origin,
    /// Provider name (`openai`, `openrouter`, a configured compatible host).
    pub provider: String,
    /// Model name as the provider knows it; `*` prices every model of the provider.
    pub model: String,
    /// Other names of the same model at the same price.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Prices.
    #[serde(flatten)]
    pub price: Price,
    /// Long-context tier, where the provider has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context: Option<Tier>,
    /// Context window in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u64>,
    /// Output token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output: Option<u64>,
    /// `tools`, `vision`, `thinking`, `json`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Where the price was read (a URL, `local`, `config`, an imported file).
    #[serde(default)]
    pub source: String,
    /// Date from which this price applies (YYYY-MM-DD).
    #[serde(default)]
    pub effective: String,
    /// Date the model is retired, if announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<String>,
    /// What to use instead once deprecated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    /// Free-text remark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl PriceRow {
    /// The prices applying to a request with `input_tokens` prompt tokens.
    pub fn price_for(&self, input_tokens: u64) -> &Price {
        match &self.long_context {
            Some(t) if input_tokens > t.threshold => &t.price,
            _ => &self.price,
        }
    }

    /// The cost of `u` (the tier chosen by its prompt size).
    pub fn cost(&self, u: &Usage) -> f64 {
        self.price_for(u.input_tokens).cost(u)
    }

    /// Whether the model costs nothing (local and mock models).
    pub fn is_free(&self) -> bool {
        self.price.is_free() && self.long_context.as_ref().is_none_or(|t| t.price.is_free())
    }

    /// Whether the row lists capability `cap`.
    pub fn has(&self, cap: &str) -> bool {
        self.capabilities.iter().any(|c| c == cap)
    }

    /// `provider/model`.
    pub fn target(&self) -> String {
        format!("{}/{}", self.provider, self.model)
    }

    /// The id this row gets in `origin`.
    pub fn make_id(origin: Origin, provider: &str, model: &str, effective: &str) -> String {
        if effective.is_empty() {
            format!("{}:{provider}/{model}", origin.as_str())
        } else {
            format!("{}:{provider}/{model}@{effective}", origin.as_str())
        }
    }
}

#[derive(Debug, Deserialize)]
struct TomlTable {
    model: Vec<PriceRow>,
}

/// One layer: every row (history included) and, per provider and name, the current one.
#[derive(Debug, Default, Clone)]
struct Table {
    rows: Vec<Arc<PriceRow>>,
    /// Each row's JSON, as the ledger's `prices` table keeps it: written once
    /// per row rather than for every request row that cites it.
    json: Vec<std::sync::OnceLock<Option<Arc<str>>>>,
    current: HashMap<String, HashMap<String, usize>>,
    by_id: HashMap<String, usize>,
}

impl Table {
    fn build(mut rows: Vec<PriceRow>, origin: Origin, today: &str) -> Table {
        let mut t = Table::default();
        // Ids: fill in, and keep them unique (a second change on the same day gets `.2`).
        for r in rows.iter_mut() {
            r.origin = origin;
            if r.id.is_empty() {
                r.id = PriceRow::make_id(origin, &r.provider, &r.model, &r.effective);
            }
        }
        let mut seen: HashMap<String, u32> = HashMap::new();
        for r in rows.iter_mut() {
            let n = seen.entry(r.id.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                r.id = format!("{}.{}", r.id, n);
            }
        }
        // Current row per (provider, model): the latest effective date not in the future,
        // else the earliest.
        let mut best: HashMap<(String, String), usize> = HashMap::new();
        for (i, r) in rows.iter().enumerate() {
            let key = (r.provider.clone(), r.model.clone());
            match best.get(&key) {
                None => {
                    best.insert(key, i);
                }
                Some(&j) => {
                    if better(&r.effective, &rows[j].effective, today) {
                        best.insert(key, i);
                    }
                }
            }
        }
        for (i, r) in rows.iter().enumerate() {
            t.by_id.insert(r.id.clone(), i);
        }
        // Aliases first so a real model name always wins over another row's alias.
        for ((p, _), &i) in &best {
            for a in &rows[i].aliases {
                t.current.entry(p.clone()).or_default().insert(a.clone(), i);
            }
        }
        for ((p, m), i) in best {
            t.current.entry(p).or_default().insert(m, i);
        }
        t.json = rows.iter().map(|_| Default::default()).collect();
        t.rows = rows.into_iter().map(Arc::new).collect();
        t
    }

    #[inline]
    fn get(&self, provider: &str, model: &str) -> Option<&Arc<PriceRow>> {
        let i = *self.current.get(provider)?.get(model)?;
        self.rows.get(i)
    }
}

/// Whether effective date `a` should replace `b` as the current row.
fn better(a: &str, b: &str, today: &str) -> bool {
    let a_ok = a <= today;
    let b_ok = b <= today;
    match (a_ok, b_ok) {
        (true, true) => a >= b,
        (true, false) => true,
        (false, true) => false,
        (false, false) => a < b,
    }
}

/// Today's date (UTC), YYYY-MM-DD.
pub fn today() -> String {
    let d = time::OffsetDateTime::now_utc().date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// The embedded price table, as shipped.
pub const EMBEDDED_TABLE: &str = include_str!("../../assets/models.toml");

fn builtin_table() -> &'static Result<Table, String> {
    static BUILTIN: OnceLock<Result<Table, String>> = OnceLock::new();
    BUILTIN.get_or_init(|| {
        parse_toml_rows(EMBEDDED_TABLE).map(|rows| Table::build(rows, Origin::Builtin, &today()))
    })
}

/// Parse rows in the `assets/models.toml` format (`[[model]]` entries).
pub fn parse_toml_rows(text: &str) -> Result<Vec<PriceRow>, String> {
    toml::from_str::<TomlTable>(text)
        .map(|t| t.model)
        .map_err(|e| format!("price table: {e}"))
}

#[derive(Debug, Default)]
struct Layers {
    user: Table,
    errors: Vec<String>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Include the embedded table (false for [`Pricing::empty`]).
    builtin: bool,
    config: Table,
    user_file: Option<PathBuf>,
    lazy: OnceLock<Layers>,
}

/// Looks up prices by provider and model. Cheap to clone; parses lazily.
///
/// The default knows no price at all (every cost is unknown, never $0); the faces use
/// [`Pricing::load`].
#[derive(Debug, Clone, Default)]
pub struct Pricing {
    inner: Arc<Inner>,
}

/// A cost with its provenance: what goes into a [`Completion`] and the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct Quote {
    /// USD; None when unknown (shown as "?", never $0).
    pub cost_usd: Option<f64>,
    /// Where the figure comes from.
    pub source: CostSource,
    /// The price row used, when one was.
    pub price_ref: Option<String>,
}

impl Pricing {
    /// No prices at all.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The embedded table only.
    pub fn builtin() -> Self {
        Self::load(Vec::new(), None)
    }

    /// The three layers: `overrides` from config (keyed `provider/model`), the user
    /// pricing file (read on first use; a missing file is fine), the embedded table.
    pub fn load(overrides: Vec<(String, Price)>, user_file: Option<PathBuf>) -> Self {
        let rows = overrides
            .into_iter()
            .filter_map(|(target, price)| {
                let (p, m) = target.split_once('/')?;
                Some(PriceRow {
                    provider: p.to_string(),
                    model: m.to_string(),
                    price,
                    source: "config".into(),
                    ..Default::default()
                })
            })
            .collect();
        Pricing {
            inner: Arc::new(Inner {
                builtin: true,
                config: Table::build(rows, Origin::Config, ""),
                user_file,
                lazy: OnceLock::new(),
            }),
        }
    }

    /// Add a price for `provider`, `model` in the config layer (tests, and faces that
    /// learn prices at run time, e.g. OpenRouter's model list).
    pub fn insert(&mut self, provider: &str, model: &str, price: Price) {
        self.insert_row(PriceRow {
            provider: provider.to_string(),
            model: model.to_string(),
            price,
            source: "config".into(),
            ..Default::default()
        });
    }

    /// Price every model of `provider` at zero, labelled "local" (a configured provider
    /// of Ollama's kind under another name).
    pub fn mark_local(&mut self, provider: &str) {
        self.insert_row(PriceRow {
            provider: provider.to_string(),
            model: "*".into(),
            source: "local".into(),
            ..Default::default()
        });
    }

    fn insert_row(&mut self, row: PriceRow) {
        let inner = inner_mut(&mut self.inner);
        let mut rows: Vec<PriceRow> = inner
            .config
            .rows
            .iter()
            .map(|r| PriceRow::clone(r))
            .filter(|r| !(r.provider == row.provider && r.model == row.model))
            .collect();
        rows.push(row);
        inner.config = Table::build(rows, Origin::Config, "");
    }

    /// Parse the tables now (on a background thread, before the first lookup).
    pub fn warm(&self) {
        let _ = self.layers();
    }

    /// Problems met while loading the tables (a broken user file is skipped, not fatal).
    pub fn load_errors(&self) -> Vec<String> {
        let mut e = self.layers().errors.clone();
        if self.inner.builtin {
            if let Err(b) = builtin_table() {
                e.push(b.clone());
            }
        }
        e
    }

    /// The user pricing file, if one is configured.
    pub fn user_file(&self) -> Option<&std::path::Path> {
        self.inner.user_file.as_deref()
    }

    fn layers(&self) -> &Layers {
        self.inner.lazy.get_or_init(|| {
            let mut l = Layers::default();
            if let Some(path) = &self.inner.user_file {
                match super::pricing_file::load(path) {
                    Ok(rows) => l.user = Table::build(rows, Origin::User, &today()),
                    Err(e) => {
                        tracing::warn!("{e}");
                        l.errors.push(e);
                    }
                }
            }
            l
        })
    }

    fn tables(&self) -> [Option<&Table>; 3] {
        let builtin = if self.inner.builtin {
            builtin_table().as_ref().ok()
        } else {
            None
        };
        [Some(&self.inner.config), Some(&self.layers().user), builtin]
    }

    /// The price row for `provider`, `model`, if known (see the module docs for the order).
    pub fn lookup(&self, provider: &str, model: &str) -> Option<&PriceRow> {
        let tables = self.tables();
        let find = |name: &str| {
            tables
                .iter()
                .flatten()
                .find_map(|t| t.get(provider, name))
                .map(|r| &**r)
        };
        if let Some(r) = find(model) {
            return Some(r);
        }
        let bare = model.strip_prefix("models/").unwrap_or(model);
        if bare != model {
            if let Some(r) = find(bare) {
                return Some(r);
            }
        }
        let base = strip_snapshot(bare);
        if base != bare {
            if let Some(r) = find(base) {
                return Some(r);
            }
        }
        if model.ends_with(":free") {
            if let Some(r) = find("*:free") {
                return Some(r);
            }
        }
        find("*")
    }

    /// A row by its id, current or historical (to explain an old ledger row).
    pub fn row_by_id(&self, id: &str) -> Option<&PriceRow> {
        self.tables()
            .iter()
            .flatten()
            .find_map(|t| t.by_id.get(id).map(|&i| &*t.rows[i]))
    }

    /// A row's JSON by its id (see [`Pricing::row_by_id`]), serialised on first use.
    pub fn row_json_by_id(&self, id: &str) -> Option<Arc<str>> {
        self.tables().iter().flatten().find_map(|t| {
            let &i = t.by_id.get(id)?;
            t.json
                .get(i)?
                .get_or_init(|| serde_json::to_string(&*t.rows[i]).ok().map(Arc::from))
                .clone()
        })
    }

    /// Context window, output limit and capabilities: the first layer that knows each
    /// (a config price override keeps the table's limits).
    pub fn limits(&self, provider: &str, model: &str) -> (Option<u64>, Option<u64>) {
        let Some(first) = self.lookup(provider, model) else {
            return (None, None);
        };
        let mut cw = first.context_window;
        let mut mo = first.max_output;
        if cw.is_none() || mo.is_none() {
            // Look the same name up below the layer that priced it.
            for t in self.tables().iter().flatten() {
                let bare = model.strip_prefix("models/").unwrap_or(model);
                let r = t
                    .get(provider, model)
                    .or_else(|| t.get(provider, bare))
                    .or_else(|| t.get(provider, strip_snapshot(bare)));
                if let Some(r) = r {
                    cw = cw.or(r.context_window);
                    mo = mo.or(r.max_output);
                }
            }
        }
        (cw, mo)
    }

    /// Every row in force, highest layer first within each `provider/model`, and whether
    /// a higher layer shadows it.
    pub fn current_rows(&self) -> Vec<(&PriceRow, bool)> {
        let mut out: Vec<(&PriceRow, bool)> = Vec::new();
        let mut seen: std::collections::HashSet<(String, String)> = Default::default();
        for t in self.tables().iter().flatten() {
            let mut rows: Vec<&PriceRow> = t
                .current
                .values()
                .flat_map(|m| m.values())
                .map(|&i| &*t.rows[i])
                .collect();
            rows.sort_by(|a, b| (&a.provider, &a.model).cmp(&(&b.provider, &b.model)));
            rows.dedup_by(|a, b| a.id == b.id);
            for r in rows {
                let key = (r.provider.clone(), r.model.clone());
                let shadowed = !seen.insert(key);
                out.push((r, shadowed));
            }
        }
        out.sort_by(|a, b| (&a.0.provider, &a.0.model, a.1).cmp(&(&b.0.provider, &b.0.model, b.1)));
        out
    }

    /// Every row ever known for `provider`, `model` in any layer (its price history),
    /// newest first.
    pub fn history(&self, provider: &str, model: &str) -> Vec<&PriceRow> {
        let base = strip_snapshot(model.strip_prefix("models/").unwrap_or(model));
        let mut v: Vec<&PriceRow> = self
            .tables()
            .iter()
            .flatten()
            .flat_map(|t| t.rows.iter())
            .map(|r| &**r)
            .filter(|r| {
                r.provider == provider
                    && (r.model == model || r.model == base || r.aliases.iter().any(|a| a == model))
            })
            .collect();
        v.sort_by(|a, b| b.effective.cmp(&a.effective));
        v
    }

    /// Cost and its provenance for a usage.
    ///
    /// The provider's own figure wins; else usage x the price row (`computed`, or
    /// `estimated` when the usage was counted locally); else unknown. A request with
    /// neither usage nor any counted tokens is unknown, never $0.
    pub fn quote(&self, provider: &str, model: &str, usage: &Usage, usage_reported: bool) -> Quote {
        if let Some(c) = usage.reported_cost_usd {
            return Quote {
                cost_usd: Some(c),
                source: CostSource::Provider,
                price_ref: None,
            };
        }
        let Some(row) = self.lookup(provider, model) else {
            return Quote {
                cost_usd: None,
                source: CostSource::Unknown,
                price_ref: None,
            };
        };
        if !usage_reported && usage.total_tokens() == 0 && !row.is_free() {
            return Quote {
                cost_usd: None,
                source: CostSource::Unknown,
                price_ref: Some(row.id.clone()),
            };
        }
        Quote {
            cost_usd: Some(row.cost(usage)),
            source: if usage_reported || row.is_free() {
                CostSource::Computed
            } else {
                CostSource::Estimated
            },
            price_ref: Some(row.id.clone()),
        }
    }

    /// Cost and its provenance (the tuple form of [`Pricing::quote`]).
    pub fn cost(
        &self,
        provider: &str,
        model: &str,
        usage: &Usage,
        usage_reported: bool,
    ) -> (Option<f64>, CostSource) {
        let q = self.quote(provider, model, usage, usage_reported);
        (q.cost_usd, q.source)
    }

    /// Fill `cost_usd`, `cost_source` and `price_ref` of a completion whose provider,
    /// model and usage are set. A cached answer costs $0, marked `cached`.
    pub fn apply(&self, c: &mut Completion) {
        if c.cached {
            c.cost_usd = Some(0.0);
            c.cost_source = CostSource::Cached;
            c.price_ref = None;
            return;
        }
        let q = self.quote(&c.provider, &c.model, &c.usage, c.usage_reported);
        c.cost_usd = q.cost_usd;
        c.cost_source = q.source;
        c.price_ref = q.price_ref;
    }
}

/// Settle a finished request's cost: when the provider sent no usage but the model has a
/// price, count the tokens locally (off the async threads: the tokenizer may need
/// loading) and mark the cost `estimated`; then price it.
///
/// A stream that ended without the provider's last word (cut, cancelled, timed out,
/// capped) arrives with its running usage (`usage_reported` false, see
/// [`Accumulator::finish_unfinished`](super::event::Accumulator::finish_unfinished)):
/// its output figure is kept as is (it is already the larger of the provider's running
/// count and a local count of what arrived), and only input tokens the provider never
/// reported are counted here.
pub async fn settle(pricing: &Pricing, request: &Arc<ChatRequest>, c: &mut Completion) {
    let has_output = !c.text.is_empty() || !c.thinking.is_empty() || !c.tool_calls.is_empty();
    if !c.cached && !c.usage_reported && !has_output && c.error.as_ref().is_some_and(never_billed) {
        // Refused before any token was processed: nothing to pay, and we know it.
        c.cost_usd = Some(0.0);
        c.cost_source = CostSource::Computed;
        c.price_ref = None;
        return;
    }
    let priced = pricing
        .lookup(&c.provider, &c.model)
        .is_some_and(|r| !r.is_free());
    let open = !c.cached && !c.usage_reported && c.usage.reported_cost_usd.is_none() && priced;
    // Running figures of a stream that never finished.
    let partial = c.error.is_some() && c.usage.total_tokens() > 0;
    // Whether the prompt reached the model: an answer (even empty) or
    // output came back, or it failed after the request was accepted.
    let reached =
        has_output || partial || c.error.is_none() || c.error.as_ref().is_some_and(reached_model);
    if open && reached {
        if partial || !has_output {
            // Input only, counted without loading a tokenizer (and without
            // copying the answer); the output figure stays as it is.
            if c.usage.input_tokens == 0 {
                c.usage.input_tokens = super::tokens::lower_estimate_request(request);
            }
        } else {
            let req = request.clone();
            let done = c.clone();
            if let Ok(u) = tokio::task::spawn_blocking(move || {
                super::tokens::estimate_usage(&done.model, &req, &done)
            })
            .await
            {
                c.usage = u;
            }
        }
    }
    pricing.apply(c);
}

/// Errors that come after the provider accepted the request: the prompt was (or
/// may well have been) processed, so its input tokens count.
fn reached_model(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::InStream { .. }
            | EngineError::ResponseTooLarge { .. }
            | EngineError::Timeout {
                phase: super::error::TimeoutPhase::FirstToken
                    | super::error::TimeoutPhase::Idle
                    | super::error::TimeoutPhase::Total,
                ..
            }
    )
}

/// Errors the provider answers with a refusal status before processing any token (or
/// that stop the request before it is sent): such a request costs nothing. Timeouts,
/// network cuts, 5xx and cancellations are not in the list: the prompt may have been
/// processed, so without usage their cost stays unknown.
fn never_billed(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::Auth { .. }
            | EngineError::RateLimited { .. }
            | EngineError::Overloaded { .. }
            | EngineError::ContextLength { .. }
            | EngineError::BadRequest { .. }
            | EngineError::Config { .. }
            | EngineError::NotAllowed { .. }
            | EngineError::Budget { .. }
            | EngineError::BreakerOpen { .. }
    )
}

/// Remove one dated-snapshot suffix: `-20251001`, `-2024-07-18`, `@20241022`, Gemini's
/// `-001`, and `-latest`. Only date-shaped endings are removed, so a family is never
/// changed (`gpt-4o-mini-2024-07-18` -> `gpt-4o-mini`, never `gpt-4o`).
pub fn strip_snapshot(model: &str) -> &str {
    let b = model.as_bytes();
    let n = b.len();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    // -YYYY-MM-DD
    if n > 11 {
        let t = &b[n - 11..];
        if t[0] == b'-'
            && digits(&t[1..5])
            && t[5] == b'-'
            && digits(&t[6..8])
            && t[8] == b'-'
            && digits(&t[9..11])
            && t[1] == b'2'
        {
            return &model[..n - 11];
        }
    }
    // -YYYYMMDD or @YYYYMMDD
    if n > 9 {
        let t = &b[n - 9..];
        if (t[0] == b'-' || t[0] == b'@') && digits(&t[1..]) && t[1] == b'2' && t[2] == b'0' {
            return &model[..n - 9];
        }
    }
    // -NNN (Gemini stable versions: gemini-2.0-flash-001)
    if n > 4 && model.starts_with("gemini") {
        let t = &b[n - 4..];
        if t[0] == b'-' && digits(&t[1..]) {
            return &model[..n - 4];
        }
    }
    if let Some(s) = model.strip_suffix("-latest") {
        return s;
    }
    model
}

/// A unique `Inner` to change: the config layer is copied, the lazily parsed layers are
/// left to be parsed again.
fn inner_mut(this: &mut Arc<Inner>) -> &mut Inner {
    if Arc::get_mut(this).is_none() {
        *this = Arc::new(Inner {
            builtin: this.builtin,
            config: this.config.clone(),
            user_file: this.user_file.clone(),
            lazy: OnceLock::new(),
        });
    }
    Arc::get_mut(this).expect("unique after copy")
}

/// Format a USD amount for people: `$0`, `$0.00013`, `$0.0123`, `$1.23`; None is `?`.
pub fn format_usd(v: Option<f64>) -> String {
    match v {
        None => "?".into(),
        Some(0.0) => "$0".into(),
        Some(x) if x.abs() >= 1.0 => format!("${x:.2}"),
        Some(x) if x.abs() >= 0.01 => format!("${x:.4}"),
        Some(x) => {
            // Two significant digits.
            let digits = (-x.abs().log10()).ceil() as usize + 1;
            let s = format!("${x:.digits$}");
            s
        }
    }
}
