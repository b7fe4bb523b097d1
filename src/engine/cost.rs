//! Cost of a request from its usage (issue 4 brings the price table).

use super::event::{CostSource, Usage};

/// Prices in USD per million tokens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Price {
    /// Uncached input.
    pub input: f64,
    /// Output (reasoning included unless `reasoning` is set).
    pub output: f64,
    /// Cached input read.
    pub cached_input: Option<f64>,
    /// Cache write.
    pub cache_write: Option<f64>,
    /// Reasoning output, where it differs from output.
    pub reasoning: Option<f64>,
}

impl Price {
    /// The cost of `u` at this price.
    pub fn cost(&self, u: &Usage) -> f64 {
        let m = 1e-6;
        let cached = self.cached_input.unwrap_or(self.input);
        let write = self.cache_write.unwrap_or(self.input);
        let (reason_rate, plain_out) = match self.reasoning {
            Some(r) => (r, u.output_tokens.saturating_sub(u.reasoning_tokens)),
            None => (0.0, u.output_tokens),
        };
        let reasoning_part = if self.reasoning.is_some() {
            u.reasoning_tokens as f64 * reason_rate
        } else {
            0.0
        };
        (u.uncached_input_tokens() as f64 * self.input
            + u.cached_input_tokens as f64 * cached
            + u.cache_creation_input_tokens as f64 * write
            + plain_out as f64 * self.output
            + reasoning_part)
            * m
    }
}

/// Looks up prices. The default knows none (every cost is unknown, never $0).
#[derive(Debug, Clone, Default)]
pub struct Pricing {
    rows: Vec<(String, String, Price)>,
}

impl Pricing {
    /// No prices at all.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Add a price for `provider`, `model`.
    pub fn insert(&mut self, provider: &str, model: &str, price: Price) {
        self.rows
            .push((provider.to_string(), model.to_string(), price));
    }

    /// The price of `model` at `provider`, if known.
    pub fn lookup(&self, provider: &str, model: &str) -> Option<&Price> {
        self.rows
            .iter()
            .find(|(p, m, _)| p == provider && m == model)
            .map(|(_, _, price)| price)
    }

    /// Cost and its provenance.
    pub fn cost(
        &self,
        provider: &str,
        model: &str,
        usage: &Usage,
        usage_reported: bool,
    ) -> (Option<f64>, CostSource) {
        if let Some(c) = usage.reported_cost_usd {
            return (Some(c), CostSource::Provider);
        }
        match self.lookup(provider, model) {
            Some(p) => (
                Some(p.cost(usage)),
                if usage_reported {
                    CostSource::Computed
                } else {
                    CostSource::Estimated
                },
            ),
            None => (None, CostSource::Unknown),
        }
    }
}
