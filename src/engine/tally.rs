//! The one usage tally every face sums finished requests with: the TUI's
//! ledger pane and history, `serve`'s `llm.metrics` and access log, `exec`'s
//! result, `ledger show`, the comparison report and the eval runner. It adds
//! completions ([`Tally::add`]) or stored rows ([`Tally::add_row`]) alike.
//!
//! The rules, the same as the ledger's own totals (`ledger totals`):
//! - a cancelled request is not an error: `errors` and `cancelled` are apart
//!   ([`Tally::failed`] is both);
//! - an unknown cost is never $0: it stays out of `cost_usd` and is counted in
//!   `unpriced`, so a face can say "+ ?";
//! - an answer replayed from the local response cache is a request and a cache
//!   hit, but its tokens stay out of `usage` (nothing was sent or billed; the
//!   ledger's `SUM(CASE WHEN cache_hit = 0 ...)`). Its cost is $0 and priced.

use super::error::EngineError;
use super::event::{Completion, CostSource, Usage};
use super::ledger::RequestRow;

/// Requests, tokens and spend of any number of finished requests.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    /// Requests finished, failed or cancelled.
    pub requests: u64,
    /// Requests that failed (cancelled ones are not failures).
    pub errors: u64,
    /// Requests cancelled.
    pub cancelled: u64,
    /// Tokens of the requests that were sent (cache hits excluded).
    pub usage: Usage,
    /// Known cost in USD: unknown costs are not in it (see `unpriced`).
    pub cost_usd: f64,
    /// Requests with a known cost.
    pub priced: u64,
    /// Requests whose cost is unknown.
    pub unpriced: u64,
    /// Requests whose cost was estimated from locally counted tokens.
    pub estimated: u64,
    /// Answers replayed from the local response cache.
    pub cache_hits: u64,
}

impl Tally {
    /// Count one finished (or failed, or cancelled) request.
    pub fn add(&mut self, c: &Completion) {
        self.requests += 1;
        match &c.error {
            Some(EngineError::Cancelled) => self.cancelled += 1,
            Some(_) => self.errors += 1,
            None => {}
        }
        self.cache_hits += u64::from(c.cached);
        self.usage += c.billed_usage();
        self.add_cost(c.cost_usd, c.cost_source);
    }

    /// Count one request as the ledger stored it (`status` `ok`, `cancelled`, or
    /// an error): the same as [`Tally::add`] of the completion it was.
    pub fn add_row(&mut self, r: &RequestRow) {
        self.requests += 1;
        match r.status.as_str() {
            "ok" => {}
            "cancelled" => self.cancelled += 1,
            _ => self.errors += 1,
        }
        if r.cache_hit {
            self.cache_hits += 1;
        } else {
            self.usage += Usage {
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
                cached_input_tokens: r.cached_input_tokens,
                cache_creation_input_tokens: r.cache_write_tokens,
                reasoning_tokens: r.reasoning_tokens,
                reported_cost_usd: None,
            };
        }
        self.add_cost(r.cost_usd, CostSource::parse(&r.cost_source));
    }

    /// The tally of some stored requests.
    pub fn of_rows<'a>(rows: impl IntoIterator<Item = &'a RequestRow>) -> Tally {
        let mut t = Tally::default();
        for r in rows {
            t.add_row(r);
        }
        t
    }

    /// Count the usage and cost of a request still in flight (a live figure):
    /// it is not a request yet, but its cost and tokens show.
    pub fn add_in_flight(&mut self, usage: Usage, cost_usd: Option<f64>, source: CostSource) {
        self.usage += usage;
        self.add_cost(cost_usd, source);
    }

    fn add_cost(&mut self, cost_usd: Option<f64>, source: CostSource) {
        match cost_usd {
            Some(x) => {
                self.cost_usd += x;
                self.priced += 1;
            }
            None => self.unpriced += 1,
        }
        if source == CostSource::Estimated {
            self.estimated += 1;
        }
    }

    /// The tally of some completions.
    pub fn of<'a>(cs: impl IntoIterator<Item = &'a Completion>) -> Tally {
        cs.into_iter().collect()
    }

    /// Failed or cancelled requests.
    pub fn failed(&self) -> u64 {
        self.errors + self.cancelled
    }

    /// Requests that produced an answer (neither failed nor cancelled).
    pub fn answered(&self) -> u64 {
        self.requests.saturating_sub(self.failed())
    }

    /// The whole cost when every price is known, else `None`.
    pub fn cost(&self) -> Option<f64> {
        (self.unpriced == 0).then_some(self.cost_usd)
    }

    /// One mark for the cost, as [`CostSource::mark`]: `?` when some cost is
    /// unknown, `~` when some is estimated, else `✓`.
    pub fn mark(&self) -> &'static str {
        if self.unpriced > 0 {
            CostSource::Unknown.mark()
        } else if self.estimated > 0 {
            CostSource::Estimated.mark()
        } else {
            CostSource::Computed.mark()
        }
    }

    /// Output tokens of a typical sent answer (cache hits and failures
    /// aside), when there was one.
    pub fn mean_output_tokens(&self) -> Option<u64> {
        let sent = self.answered().saturating_sub(self.cache_hits);
        (sent > 0).then(|| self.usage.output_tokens / sent)
    }
}

impl std::ops::AddAssign<&Tally> for Tally {
    fn add_assign(&mut self, o: &Tally) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.cancelled += o.cancelled;
        self.usage += o.usage;
        self.cost_usd += o.cost_usd;
        self.priced += o.priced;
        self.unpriced += o.unpriced;
        self.estimated += o.estimated;
        self.cache_hits += o.cache_hits;
    }
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        *self += &o;
    }
}

impl std::ops::Add for Tally {
    type Output = Tally;
    fn add(mut self, o: Tally) -> Tally {
        self += &o;
        self
    }
}

impl std::iter::Sum for Tally {
    fn sum<I: Iterator<Item = Tally>>(it: I) -> Tally {
        it.fold(Tally::default(), |a, b| a + b)
    }
}

impl<'a> std::iter::Sum<&'a Tally> for Tally {
    fn sum<I: Iterator<Item = &'a Tally>>(it: I) -> Tally {
        it.fold(Tally::default(), |mut a, b| {
            a += b;
            a
        })
    }
}

impl<'a> Extend<&'a Completion> for Tally {
    fn extend<I: IntoIterator<Item = &'a Completion>>(&mut self, cs: I) {
        for c in cs {
            self.add(c);
        }
    }
}

impl<'a> FromIterator<&'a Completion> for Tally {
    fn from_iter<I: IntoIterator<Item = &'a Completion>>(cs: I) -> Tally {
        let mut t = Tally::default();
        t.extend(cs);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(input: u64, output: u64, cost: Option<f64>, source: CostSource) -> Completion {
        Completion {
            usage: Usage {
                input_tokens: input,
                output_tokens: output,
                cached_input_tokens: 1,
                reasoning_tokens: 2,
                ..Default::default()
            },
            cost_usd: cost,
            cost_source: source,
            ..Default::default()
        }
    }

    #[test]
    fn an_unknown_cost_stays_out_of_the_known_sum() {
        let t = Tally::of(&[
            done(10, 5, Some(0.25), CostSource::Computed),
            done(20, 7, None, CostSource::Unknown),
            done(30, 9, Some(0.5), CostSource::Provider),
        ]);
        assert_eq!(t.requests, 3);
        assert_eq!(t.cost_usd, 0.75);
        assert_eq!((t.priced, t.unpriced), (2, 1));
        assert_eq!(t.cost(), None, "a sum with an unknown part is not a total");
        assert_eq!(t.mark(), "?");
        assert_eq!(t.usage.input_tokens, 60);
        assert_eq!(t.usage.output_tokens, 21);
        assert_eq!(t.usage.cached_input_tokens, 3);
        assert_eq!(t.usage.reasoning_tokens, 6);
        let priced = Tally::of(&[done(1, 1, Some(0.25), CostSource::Computed)]);
        assert_eq!(priced.cost(), Some(0.25));
        assert_eq!(priced.mark(), "✓");
        assert_eq!(Tally::default().cost(), Some(0.0));
    }

    #[test]
    fn cancelled_is_not_an_error() {
        let mut cancelled = done(3, 1, Some(0.01), CostSource::Estimated);
        cancelled.error = Some(EngineError::Cancelled);
        let mut failed = done(3, 0, Some(0.0), CostSource::Computed);
        failed.error = Some(EngineError::Config {
            message: "no key".into(),
        });
        let ok = done(3, 4, Some(0.02), CostSource::Computed);
        let t = Tally::of([&cancelled, &failed, &ok]);
        assert_eq!((t.requests, t.errors, t.cancelled), (3, 1, 1));
        assert_eq!(t.failed(), 2);
        assert_eq!(t.answered(), 1);
        // What a cancelled stream used is still spent.
        assert_eq!(t.usage.output_tokens, 5);
        assert_eq!(t.estimated, 1);
        assert_eq!(t.mark(), "~");
    }

    #[test]
    fn a_cache_hit_counts_as_a_request_but_not_its_tokens() {
        let mut hit = done(100, 50, Some(0.0), CostSource::Cached);
        hit.cached = true;
        let sent = done(100, 50, Some(0.3), CostSource::Computed);
        let t = Tally::of([&hit, &sent]);
        assert_eq!((t.requests, t.cache_hits), (2, 1));
        assert_eq!(
            t.usage.input_tokens, 100,
            "the replayed tokens were not billed"
        );
        assert_eq!(t.usage.output_tokens, 50);
        assert_eq!(t.cost(), Some(0.3));
        assert_eq!(t.mark(), "✓");
        assert_eq!(t.mean_output_tokens(), Some(50));
        assert_eq!(Tally::of([&hit]).mean_output_tokens(), None);
    }

    #[test]
    fn in_flight_usage_shows_without_being_a_request() {
        let mut t = Tally::default();
        t.add_in_flight(
            Usage {
                output_tokens: 9,
                ..Default::default()
            },
            None,
            CostSource::Unknown,
        );
        assert_eq!(t.requests, 0);
        assert_eq!(t.usage.output_tokens, 9);
        assert_eq!(t.unpriced, 1);
    }

    #[test]
    fn merging_is_adding_the_completions_together() {
        let a = [
            done(1, 2, Some(0.5), CostSource::Computed),
            done(3, 4, None, CostSource::Unknown),
        ];
        let mut hit = done(5, 6, Some(0.0), CostSource::Cached);
        hit.cached = true;
        let mut cancelled = done(7, 8, Some(0.125), CostSource::Estimated);
        cancelled.error = Some(EngineError::Cancelled);
        let b = [hit, cancelled];
        let mut merged = Tally::of(&a);
        merged += Tally::of(&b);
        assert_eq!(merged, Tally::of(a.iter().chain(&b)));
        let summed: Tally = [Tally::of(&a), Tally::of(&b)].iter().sum();
        assert_eq!(summed, merged);
        assert_eq!(merged.requests, 4);
        assert_eq!(merged.cost_usd, 0.625);
    }
}
