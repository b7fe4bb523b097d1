//! What a fan-out may cost before it is sent, and the caps that stop it.
//!
//! The projection is an upper bound per target: estimated prompt tokens x the input
//! price, plus the most output the request allows (its `max_tokens`, else the model's
//! output limit) x the dearest output rate (reasoning included). Prompt tokens are exact
//! for OpenAI encodings; for other families they are an o200k_base count raised by
//! [`ESTIMATE_MARGIN`], since their tokenizers may cut text finer. The long-context tier
//! is used when the estimate could cross its threshold. A target with no price has no
//! bound ("?"), and a fan-out with one is unbounded.
//!
//! A budget (per session, per day) refuses a run whose bound would cross a cap, before
//! anything is sent; spend so far comes from the ledger.

use super::cost::Pricing;
use super::error::EngineError;
use super::event::Usage;
use super::ledger::{BackgroundLedger, Ledger, LedgerError};
use super::request::ChatRequest;
use super::run::Engine;
use super::tokens;

/// Headroom on prompt-token estimates for families whose tokenizer we do not have.
pub const ESTIMATE_MARGIN: f64 = 1.3;

/// The bound of one target.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TargetProjection {
    /// Target as requested.
    pub target: String,
    /// Provider.
    pub provider: String,
    /// Model.
    pub model: String,
    /// Prompt tokens used for the bound (margin included when not exact).
    pub input_tokens: u64,
    /// Whether the prompt count is exact.
    pub input_exact: bool,
    /// Output tokens allowed, when known.
    pub max_output_tokens: Option<u64>,
    /// Upper bound in USD; None when no price or no output limit is known.
    pub bound_usd: Option<f64>,
    /// The price row used.
    pub price_ref: Option<String>,
}

/// The bound of a whole fan-out.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct Projection {
    /// Per target.
    pub targets: Vec<TargetProjection>,
}

impl Projection {
    /// Sum of the known bounds.
    pub fn known_usd(&self) -> f64 {
        self.targets.iter().filter_map(|t| t.bound_usd).sum()
    }

    /// Targets without a bound.
    pub fn unbounded(&self) -> Vec<&str> {
        self.targets
            .iter()
            .filter(|t| t.bound_usd.is_none())
            .map(|t| t.target.as_str())
            .collect()
    }

    /// The total bound, None if any target has none.
    pub fn total_usd(&self) -> Option<f64> {
        if self.targets.iter().all(|t| t.bound_usd.is_some()) {
            Some(self.known_usd())
        } else {
            None
        }
    }

    /// `≤ $0.043`, or `≤ $0.043 + ?` when a target has no price.
    pub fn display(&self) -> String {
        let known = super::cost::format_usd(Some(self.known_usd()));
        if self.unbounded().is_empty() {
            format!("≤ {known}")
        } else if self.targets.iter().all(|t| t.bound_usd.is_none()) {
            "≤ ?".into()
        } else {
            format!("≤ {known} + ?")
        }
    }
}

/// The bound of one target given its prompt size.
pub fn project_target(
    pricing: &Pricing,
    target: &str,
    provider: &str,
    model: &str,
    input_tokens: u64,
    input_exact: bool,
    max_tokens: Option<u32>,
) -> TargetProjection {
    let input = if input_exact {
        input_tokens
    } else {
        (input_tokens as f64 * ESTIMATE_MARGIN).ceil() as u64
    };
    let row = pricing.lookup(provider, model);
    let max_out = max_tokens
        .map(u64::from)
        .or_else(|| pricing.limits(provider, model).1);
    let bound = match (row, max_out) {
        (Some(r), _) if r.is_free() => Some(0.0),
        (Some(r), Some(out)) => {
            let p = r.price_for(input);
            Some((input as f64 * p.input + out as f64 * p.max_output_rate()) * 1e-6)
        }
        _ => None,
    };
    TargetProjection {
        target: target.to_string(),
        provider: provider.to_string(),
        model: model.to_string(),
        input_tokens: input,
        input_exact,
        max_output_tokens: max_out,
        bound_usd: bound,
        price_ref: row.map(|r| r.id.clone()),
    }
}

/// The bound of a fan-out, counting the prompt with each target's tokenizer. Loads a
/// BPE vocabulary on first use: call it off the UI thread.
pub fn project(
    engine: &Engine,
    req: &ChatRequest,
    targets: &[String],
) -> Result<Projection, EngineError> {
    let resolved = engine.check_targets(targets)?;
    let mut out = Projection::default();
    for (t, r) in targets.iter().zip(resolved) {
        let count = tokens::count_request(&r.model, req);
        // Images by the provider's published formula: an estimate.
        let images = super::attachment::request_image_tokens(r.spec.kind, &r.model, req);
        out.targets.push(project_target(
            engine.pricing(),
            t,
            &r.spec.name,
            &r.model,
            count.tokens + images,
            count.exact && images == 0,
            req.max_tokens,
        ));
    }
    Ok(out)
}

/// A quick bound for the as-you-type path: characters instead of tokens, nothing loaded.
/// Unresolvable targets get no bound.
pub fn project_quick(engine: &Engine, req: &ChatRequest, targets: &[String]) -> Projection {
    let n = tokens::quick_estimate_request(req);
    let mut out = Projection::default();
    for t in targets {
        match engine.registry().resolve(t) {
            Ok(r) => out.targets.push(project_target(
                engine.pricing(),
                t,
                &r.spec.name,
                &r.model,
                n + super::attachment::request_image_tokens(r.spec.kind, &r.model, req),
                false,
                req.max_tokens,
            )),
            Err(_) => out.targets.push(TargetProjection {
                target: t.clone(),
                provider: String::new(),
                model: t.clone(),
                input_tokens: n,
                input_exact: false,
                max_output_tokens: None,
                bound_usd: None,
                price_ref: None,
            }),
        }
    }
    out
}

/// The bound for a known usage shape (fixtures, tests): `usage.input_tokens` as the prompt.
pub fn project_usage(
    pricing: &Pricing,
    provider: &str,
    model: &str,
    usage: &Usage,
    max_tokens: Option<u32>,
) -> TargetProjection {
    project_target(
        pricing,
        &format!("{provider}/{model}"),
        provider,
        model,
        usage.input_tokens,
        true,
        max_tokens,
    )
}

/// Spending caps in USD (`[budget]` in config).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Budget {
    /// Cap per session.
    pub session_usd: Option<f64>,
    /// Cap per local calendar day.
    pub daily_usd: Option<f64>,
}

impl Budget {
    /// Whether any cap is set.
    pub fn is_set(&self) -> bool {
        self.session_usd.is_some() || self.daily_usd.is_some()
    }

    /// Refuse a run whose bound would take spending over a cap. A run with an unpriced
    /// target cannot be bounded, so it is refused too while a cap is set.
    pub fn check(&self, spend: Spend, p: &Projection) -> Result<(), Refusal> {
        let caps = [
            (Cap::Session, self.session_usd, spend.session_usd),
            (Cap::Daily, self.daily_usd, spend.today_usd),
        ];
        for (cap, limit, spent) in caps {
            let Some(limit) = limit else { continue };
            let unbounded: Vec<String> = p.unbounded().into_iter().map(String::from).collect();
            if !unbounded.is_empty() || spent + p.known_usd() > limit {
                return Err(Refusal {
                    cap,
                    limit_usd: limit,
                    spent_usd: spent,
                    projected_usd: p.total_usd(),
                    unpriced: unbounded,
                });
            }
        }
        Ok(())
    }
}

pub use super::ledger::Spend;

/// Which cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// The session cap.
    Session,
    /// The daily cap.
    Daily,
}

/// Why a run was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The cap in the way.
    pub cap: Cap,
    /// Its limit.
    pub limit_usd: f64,
    /// Spent so far against it.
    pub spent_usd: f64,
    /// The run's bound (None if unbounded).
    pub projected_usd: Option<f64>,
    /// Targets without a price.
    pub unpriced: Vec<String>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use super::cost::format_usd;
        let cap = match self.cap {
            Cap::Session => "session",
            Cap::Daily => "daily",
        };
        if !self.unpriced.is_empty() {
            return write!(
                f,
                "{cap} budget {} is set and the cost of {} cannot be bounded (no price; add one under [pricing] or pass --force)",
                format_usd(Some(self.limit_usd)),
                self.unpriced.join(", ")
            );
        }
        write!(
            f,
            "this run may cost up to {}; with {} spent, the {cap} budget of {} would be exceeded (pass --force to send anyway)",
            format_usd(self.projected_usd),
            format_usd(Some(self.spent_usd)),
            format_usd(Some(self.limit_usd))
        )
    }
}

impl From<Refusal> for EngineError {
    fn from(r: Refusal) -> Self {
        EngineError::Budget {
            message: r.to_string(),
        }
    }
}

/// Where a budget reads spending so far and notes runs: the ledger, opened or
/// opening in the background.
pub trait SpendLedger: Send + Sync {
    /// Spend today and in `session`.
    fn spend(&self, session: Option<&str>) -> Result<Spend, LedgerError>;
    /// Note a run with its targets and bound.
    fn note_run(
        &self,
        run_id: &str,
        session_id: Option<&str>,
        trace_id: Option<&str>,
        targets: &[String],
        projected_usd: Option<f64>,
        prompt: &str,
    ) -> Result<(), LedgerError>;
}

impl SpendLedger for Ledger {
    fn spend(&self, session: Option<&str>) -> Result<Spend, LedgerError> {
        Ledger::spend(self, session)
    }
    fn note_run(
        &self,
        run_id: &str,
        session_id: Option<&str>,
        trace_id: Option<&str>,
        targets: &[String],
        projected_usd: Option<f64>,
        prompt: &str,
    ) -> Result<(), LedgerError> {
        Ledger::note_run(
            self,
            run_id,
            session_id,
            trace_id,
            targets,
            projected_usd,
            prompt,
        )
    }
}

impl SpendLedger for BackgroundLedger {
    fn spend(&self, session: Option<&str>) -> Result<Spend, LedgerError> {
        self.wait()?.spend(session)
    }
    fn note_run(
        &self,
        run_id: &str,
        session_id: Option<&str>,
        trace_id: Option<&str>,
        targets: &[String],
        projected_usd: Option<f64>,
        prompt: &str,
    ) -> Result<(), LedgerError> {
        self.wait()?
            .note_run(run_id, session_id, trace_id, targets, projected_usd, prompt)
    }
}
