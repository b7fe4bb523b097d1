//! Counters the server keeps: Prometheus text for `GET /metrics` and the
//! resettable usage totals of `llm.metrics`.
//!
//! Everything is folded from the completions the server hands out (each one
//! already committed to the ledger), so the engine needs no hook. Prometheus
//! counters only grow; `llm.metrics` has its own copy that `reset` clears.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::{json, Value};

use crate::engine::routing::BreakerState;
use crate::engine::{Completion, Engine};

/// Upper bounds (seconds) of the latency buckets.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; LATENCY_BUCKETS.len()];
        }
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

/// Usage and spend of one provider/model pair.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UsageTotals {
    /// Requests finished (successful or not).
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Prompt tokens (cached included).
    pub input_tokens: u64,
    /// Output tokens (reasoning included).
    pub output_tokens: u64,
    /// Prompt tokens read from a provider cache.
    pub cached_input_tokens: u64,
    /// Prompt tokens written to a provider cache.
    pub cache_creation_input_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
    /// Known cost in USD.
    pub cost_usd: f64,
    /// Requests whose price is unknown (their cost is not in `cost_usd`).
    pub unpriced_requests: u64,
    /// Answers served from the local response cache.
    pub cache_hits: u64,
}

impl UsageTotals {
    fn add(&mut self, c: &Completion) {
        self.requests += 1;
        if c.error.is_some() {
            self.errors += 1;
        }
        let u = &c.usage;
        self.input_tokens += u.input_tokens;
        self.output_tokens += u.output_tokens;
        self.cached_input_tokens += u.cached_input_tokens;
        self.cache_creation_input_tokens += u.cache_creation_input_tokens;
        self.reasoning_tokens += u.reasoning_tokens;
        match c.cost_usd {
            Some(x) => self.cost_usd += x,
            None => self.unpriced_requests += 1,
        }
        if c.cached {
            self.cache_hits += 1;
        }
    }
}

#[derive(Debug, Default)]
struct ModelStats {
    /// Finished requests by endpoint and status (`ok`, `error`, `cancelled`).
    requests: BTreeMap<(String, String), u64>,
    /// Errors by kind.
    errors: BTreeMap<String, u64>,
    latency: Histogram,
    ttft: Histogram,
    totals: UsageTotals,
}

/// The last error a provider gave.
#[derive(Debug, Clone, Serialize)]
pub struct LastError {
    /// Error kind (`rate_limited`, `server`, ...).
    pub kind: String,
    /// The (already redacted) message.
    pub message: String,
    /// When (RFC 3339, UTC).
    pub at: String,
}

#[derive(Debug, Default)]
struct State {
    /// (provider, model) -> stats.
    models: BTreeMap<(String, String), ModelStats>,
    /// Resettable copy for `llm.metrics`.
    usage: BTreeMap<(String, String), UsageTotals>,
    usage_since: Option<String>,
    /// HTTP responses by route and status.
    http: BTreeMap<(String, u16), u64>,
    /// JSON-RPC errors by code.
    rpc_errors: BTreeMap<i64, u64>,
    /// Requests refused before sending, by kind.
    refusals: BTreeMap<String, u64>,
    last_error: BTreeMap<String, LastError>,
    /// Finished requests by calling agent and status.
    agent_requests: BTreeMap<(String, &'static str), u64>,
    /// Tokens by calling agent and kind.
    agent_tokens: BTreeMap<(String, &'static str), u64>,
    /// Known cost by calling agent.
    agent_cost: BTreeMap<String, f64>,
    /// Model and agent label values handed out so far (capped).
    model_labels: HashSet<(String, String)>,
    agent_labels: HashSet<String>,
}

/// Most model label values (provider/model pairs) ever handed out; later ones are `other`.
pub const MAX_MODEL_LABELS: usize = 200;
/// Most agent label values ever handed out; later ones are `other`.
pub const MAX_AGENT_LABELS: usize = 50;
/// The label value unbounded or unknown values fold into.
pub const OTHER: &str = "other";

impl State {
    /// The model label: the model itself when the registry knows it and the
    /// label set has room, else `other`.
    fn model_label(&mut self, provider: &str, model: &str, known: bool) -> String {
        let key = (provider.to_string(), model.to_string());
        if known && (self.model_labels.contains(&key) || self.model_labels.len() < MAX_MODEL_LABELS)
        {
            self.model_labels.insert(key);
            model.to_string()
        } else {
            OTHER.to_string()
        }
    }

    /// The agent label: `none` without one; a short plain name while the
    /// label set has room; else `other`.
    fn agent_label(&mut self, agent: Option<&str>) -> String {
        let Some(a) = agent else {
            return "none".to_string();
        };
        let plain = !a.is_empty()
            && a.len() <= 64
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@".contains(&b));
        if plain && (self.agent_labels.contains(a) || self.agent_labels.len() < MAX_AGENT_LABELS) {
            self.agent_labels.insert(a.to_string());
            a.to_string()
        } else {
            OTHER.to_string()
        }
    }
}

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
    in_flight: AtomicI64,
}

/// Counts one in-flight HTTP request while alive.
#[derive(Debug)]
pub struct InFlight(std::sync::Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub use crate::shared::clock::{now_rfc3339, unix_now};

impl Metrics {
    /// Fresh counters.
    pub fn new() -> Metrics {
        let m = Metrics::default();
        if let Ok(mut s) = m.state.lock() {
            s.usage_since = Some(now_rfc3339());
        }
        m
    }

    /// Count a request in flight until the guard drops.
    pub fn in_flight(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Requests in flight now.
    pub fn in_flight_now(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Fold one finished request (`endpoint`: `rpc`, `chat_completions`,
    /// ...). `known`: the registry knows the model, so it may be a label
    /// value; `agent`: the calling agent (`source_agent`).
    pub fn record(&self, endpoint: &str, c: &Completion, known: bool, agent: Option<&str>) {
        let Ok(mut s) = self.state.lock() else { return };
        let provider = if c.provider.is_empty() {
            "unknown".to_string()
        } else {
            c.provider.clone()
        };
        let model = s.model_label(&provider, &c.model, known);
        let key = (provider.clone(), model);
        let status = match &c.error {
            None => "ok",
            Some(crate::engine::EngineError::Cancelled) => "cancelled",
            Some(_) => "error",
        };
        let agent = s.agent_label(agent);
        *s.agent_requests.entry((agent.clone(), status)).or_default() += 1;
        for (kind, n) in [
            ("input", c.usage.input_tokens),
            ("output", c.usage.output_tokens),
        ] {
            *s.agent_tokens.entry((agent.clone(), kind)).or_default() += n;
        }
        if let Some(x) = c.cost_usd {
            *s.agent_cost.entry(agent).or_default() += x;
        }
        let st = s.models.entry(key.clone()).or_default();
        *st.requests
            .entry((endpoint.to_string(), status.to_string()))
            .or_default() += 1;
        if let Some(e) = &c.error {
            *st.errors.entry(e.kind().to_string()).or_default() += 1;
        }
        st.latency.observe(c.latency_ms / 1000.0);
        if let Some(t) = c.ttft_ms {
            st.ttft.observe(t / 1000.0);
        }
        st.totals.add(c);
        s.usage.entry(key).or_default().add(c);
        if let Some(e) = &c.error {
            if !matches!(e, crate::engine::EngineError::Cancelled) {
                s.last_error.insert(
                    provider,
                    LastError {
                        kind: e.kind().to_string(),
                        message: e.to_string(),
                        at: now_rfc3339(),
                    },
                );
            }
        }
    }

    /// Count one HTTP response.
    pub fn http(&self, route: &str, status: u16) {
        if let Ok(mut s) = self.state.lock() {
            *s.http.entry((route.to_string(), status)).or_default() += 1;
        }
    }

    /// Count one request refused before anything was sent (`budget`, `not_allowed`, `config`).
    pub fn refusal(&self, kind: &str) {
        if let Ok(mut s) = self.state.lock() {
            *s.refusals.entry(kind.to_string()).or_default() += 1;
        }
    }

    /// Count one JSON-RPC error response.
    pub fn rpc_error(&self, code: i64) {
        if let Ok(mut s) = self.state.lock() {
            *s.rpc_errors.entry(code).or_default() += 1;
        }
    }

    /// The last error of a provider.
    pub fn last_error(&self, provider: &str) -> Option<LastError> {
        self.state.lock().ok()?.last_error.get(provider).cloned()
    }

    /// `llm.metrics`: usage and spend per provider and model since the last
    /// reset; `reset` clears them after reading.
    pub fn usage_json(&self, reset: bool) -> Value {
        let Ok(mut s) = self.state.lock() else {
            return Value::Null;
        };
        let mut by_model = Vec::new();
        let mut by_provider: BTreeMap<String, UsageTotals> = BTreeMap::new();
        let mut total = UsageTotals::default();
        for ((p, m), u) in &s.usage {
            let mut v = serde_json::to_value(u).unwrap_or(Value::Null);
            if let Value::Object(o) = &mut v {
                o.insert("provider".into(), json!(p));
                o.insert("model".into(), json!(m));
            }
            by_model.push(v);
            let bp = by_provider.entry(p.clone()).or_default();
            for t in [&mut *bp, &mut total] {
                t.requests += u.requests;
                t.errors += u.errors;
                t.input_tokens += u.input_tokens;
                t.output_tokens += u.output_tokens;
                t.cached_input_tokens += u.cached_input_tokens;
                t.cache_creation_input_tokens += u.cache_creation_input_tokens;
                t.reasoning_tokens += u.reasoning_tokens;
                t.cost_usd += u.cost_usd;
                t.unpriced_requests += u.unpriced_requests;
                t.cache_hits += u.cache_hits;
            }
        }
        let providers: Vec<Value> = by_provider
            .into_iter()
            .map(|(p, u)| {
                let mut v = serde_json::to_value(u).unwrap_or(Value::Null);
                if let Value::Object(o) = &mut v {
                    o.insert("provider".into(), json!(p));
                }
                v
            })
            .collect();
        let out = json!({
            "since": s.usage_since,
            "in_flight": self.in_flight_now(),
            "total": total,
            "providers": providers,
            "models": by_model,
            "reset": reset,
        });
        if reset {
            s.usage.clear();
            s.usage_since = Some(now_rfc3339());
        }
        out
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, engine: &Engine) -> String {
        let mut o = String::with_capacity(4096);
        let Ok(s) = self.state.lock() else {
            return o;
        };
        let _ = writeln!(
            o,
            "# HELP quorum_build_info Version of the running server.\n# TYPE quorum_build_info gauge\nquorum_build_info{{version=\"{}\"}} 1",
            esc(env!("CARGO_PKG_VERSION"))
        );

        head(
            &mut o,
            "quorum_requests_total",
            "counter",
            "Finished upstream requests by provider, model, endpoint and status.",
        );
        for ((p, m), st) in &s.models {
            for ((ep, status), n) in &st.requests {
                let _ = writeln!(
                    o,
                    "quorum_requests_total{{provider=\"{}\",model=\"{}\",endpoint=\"{}\",status=\"{}\"}} {n}",
                    esc(p), esc(m), esc(ep), esc(status)
                );
            }
        }
        head(
            &mut o,
            "quorum_request_errors_total",
            "counter",
            "Failed upstream requests by provider, model and error kind.",
        );
        for ((p, m), st) in &s.models {
            for (kind, n) in &st.errors {
                let _ = writeln!(
                    o,
                    "quorum_request_errors_total{{provider=\"{}\",model=\"{}\",kind=\"{}\"}} {n}",
                    esc(p),
                    esc(m),
                    esc(kind)
                );
            }
        }
        head(
            &mut o,
            "quorum_tokens_total",
            "counter",
            "Tokens by provider, model and kind (input counts cached tokens too).",
        );
        for ((p, m), st) in &s.models {
            let t = &st.totals;
            for (kind, n) in [
                ("input", t.input_tokens),
                ("output", t.output_tokens),
                ("cached_input", t.cached_input_tokens),
                ("cache_creation_input", t.cache_creation_input_tokens),
                ("reasoning", t.reasoning_tokens),
            ] {
                let _ = writeln!(
                    o,
                    "quorum_tokens_total{{provider=\"{}\",model=\"{}\",kind=\"{kind}\"}} {n}",
                    esc(p),
                    esc(m)
                );
            }
        }
        head(
            &mut o,
            "quorum_cost_usd_total",
            "counter",
            "Known cost in US dollars by provider and model.",
        );
        for ((p, m), st) in &s.models {
            let _ = writeln!(
                o,
                "quorum_cost_usd_total{{provider=\"{}\",model=\"{}\"}} {}",
                esc(p),
                esc(m),
                float(st.totals.cost_usd)
            );
        }
        head(
            &mut o,
            "quorum_unpriced_requests_total",
            "counter",
            "Requests whose price is unknown (not in quorum_cost_usd_total).",
        );
        for ((p, m), st) in &s.models {
            let _ = writeln!(
                o,
                "quorum_unpriced_requests_total{{provider=\"{}\",model=\"{}\"}} {}",
                esc(p),
                esc(m),
                st.totals.unpriced_requests
            );
        }
        for (name, help, pick) in [
            (
                "quorum_request_duration_seconds",
                "Latency of upstream requests, from start to the last byte.",
                0,
            ),
            (
                "quorum_time_to_first_token_seconds",
                "Time to the first token of upstream requests.",
                1,
            ),
        ] {
            head(&mut o, name, "histogram", help);
            for ((p, m), st) in &s.models {
                let h = if pick == 0 { &st.latency } else { &st.ttft };
                if h.count == 0 {
                    continue;
                }
                let l = format!("provider=\"{}\",model=\"{}\"", esc(p), esc(m));
                for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        o,
                        "{name}_bucket{{{l},le=\"{}\"}} {}",
                        float(*b),
                        h.counts[i]
                    );
                }
                let _ = writeln!(o, "{name}_bucket{{{l},le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(o, "{name}_sum{{{l}}} {}", float(h.sum));
                let _ = writeln!(o, "{name}_count{{{l}}} {}", h.count);
            }
        }
        head(
            &mut o,
            "quorum_agent_requests_total",
            "counter",
            "Finished upstream requests by calling agent (source_agent) and status.",
        );
        for ((agent, status), n) in &s.agent_requests {
            let _ = writeln!(
                o,
                "quorum_agent_requests_total{{agent=\"{}\",status=\"{status}\"}} {n}",
                esc(agent)
            );
        }
        head(
            &mut o,
            "quorum_agent_tokens_total",
            "counter",
            "Tokens by calling agent and kind.",
        );
        for ((agent, kind), n) in &s.agent_tokens {
            let _ = writeln!(
                o,
                "quorum_agent_tokens_total{{agent=\"{}\",kind=\"{kind}\"}} {n}",
                esc(agent)
            );
        }
        head(
            &mut o,
            "quorum_agent_cost_usd_total",
            "counter",
            "Known cost in US dollars by calling agent.",
        );
        for (agent, x) in &s.agent_cost {
            let _ = writeln!(
                o,
                "quorum_agent_cost_usd_total{{agent=\"{}\"}} {}",
                esc(agent),
                float(*x)
            );
        }
        head(
            &mut o,
            "quorum_in_flight_requests",
            "gauge",
            "HTTP requests being served now.",
        );
        let _ = writeln!(o, "quorum_in_flight_requests {}", self.in_flight_now());
        head(
            &mut o,
            "quorum_breaker_state",
            "gauge",
            "Circuit breaker per provider: 0 closed, 1 half-open, 2 open.",
        );
        for spec in engine.registry().providers() {
            let v = match engine.breaker_state(&spec.name) {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            };
            let _ = writeln!(
                o,
                "quorum_breaker_state{{provider=\"{}\"}} {v}",
                esc(&spec.name)
            );
        }
        head(
            &mut o,
            "quorum_http_responses_total",
            "counter",
            "HTTP responses by route and status code.",
        );
        for ((route, status), n) in &s.http {
            let _ = writeln!(
                o,
                "quorum_http_responses_total{{route=\"{}\",code=\"{status}\"}} {n}",
                esc(route)
            );
        }
        head(
            &mut o,
            "quorum_refusals_total",
            "counter",
            "Requests refused before sending, by kind (budget, not_allowed, config, internal).",
        );
        for (kind, n) in &s.refusals {
            let _ = writeln!(o, "quorum_refusals_total{{kind=\"{}\"}} {n}", esc(kind));
        }
        head(
            &mut o,
            "quorum_ledger_write_failures_total",
            "counter",
            "Requests answered whose ledger row could not be written.",
        );
        let _ = writeln!(
            o,
            "quorum_ledger_write_failures_total {}",
            engine.ledger_health().failures()
        );
        head(
            &mut o,
            "quorum_ledger_backlog",
            "gauge",
            "Ledger rows spooled locally, waiting for the shared database to return.",
        );
        let _ = writeln!(o, "quorum_ledger_backlog {}", engine.ledger_backlog());
        head(
            &mut o,
            "quorum_rpc_errors_total",
            "counter",
            "JSON-RPC error responses by error code.",
        );
        for (code, n) in &s.rpc_errors {
            let _ = writeln!(o, "quorum_rpc_errors_total{{code=\"{code}\"}} {n}");
        }
        o
    }
}

fn head(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escape a label value: backslash, double quote and newline.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn float(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else if v.is_nan() {
        "NaN".into()
    } else if v > 0.0 {
        "+Inf".into()
    } else {
        "-Inf".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.003);
        h.observe(0.2);
        assert_eq!(h.count, 2);
        assert_eq!(h.counts[0], 0);
        assert_eq!(h.counts[2], 1); // 0.005
        assert_eq!(*h.counts.last().unwrap(), 2);
    }
}
