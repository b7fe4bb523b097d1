//! Counters the server keeps: Prometheus text for `GET /metrics` and the
//! resettable usage totals of `llm.metrics`.
//!
//! Everything is folded from the completions the server hands out (each one
//! already committed to the ledger), so the engine needs no hook. Prometheus
//! counters only grow; `llm.metrics` has its own copy that `reset` clears.
//!
//! The exposition is the official `prometheus-client` crate's (OpenMetrics
//! text); label values are bounded here before they reach it: models only
//! when the registry knows them and at most [`MAX_MODEL_LABELS`], agents at
//! most [`MAX_AGENT_LABELS`], the rest fold into [`OTHER`].

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::{json, Value};

use crate::engine::routing::BreakerState;
use crate::engine::{Completion, Engine, Tally};

/// Upper bounds (seconds) of the latency buckets.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The `llm.metrics` object of a tally (one provider/model pair, a provider,
/// or the total). `errors` counts cancelled requests too.
fn usage_totals(t: &Tally) -> serde_json::Map<String, Value> {
    let u = &t.usage;
    [
        ("requests", json!(t.requests)),
        ("errors", json!(t.failed())),
        ("input_tokens", json!(u.input_tokens)),
        ("output_tokens", json!(u.output_tokens)),
        ("cached_input_tokens", json!(u.cached_input_tokens)),
        (
            "cache_creation_input_tokens",
            json!(u.cache_creation_input_tokens),
        ),
        ("reasoning_tokens", json!(u.reasoning_tokens)),
        ("cost_usd", json!(t.cost_usd)),
        ("unpriced_requests", json!(t.unpriced)),
        ("cache_hits", json!(t.cache_hits)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
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
    /// Resettable copy for `llm.metrics`.
    usage: BTreeMap<(String, String), Tally>,
    usage_since: Option<String>,
    last_error: BTreeMap<String, LastError>,
    /// Model and agent label values handed out so far (capped).
    model_labels: HashSet<(String, String)>,
    agent_labels: HashSet<String>,
    /// Ledger write failures already added to their counter.
    ledger_failures_seen: u64,
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

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    provider: String,
    model: String,
    endpoint: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    provider: String,
    model: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    provider: String,
    model: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    provider: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentStatus {
    agent: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentKind {
    agent: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabel {
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

type FloatCounter = Counter<f64, AtomicU64>;
type Histograms = Family<ModelLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

/// The Prometheus families, registered once.
struct Families {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    cost: Family<ModelLabels, FloatCounter>,
    unpriced: Family<ModelLabels, Counter>,
    latency: Histograms,
    ttft: Histograms,
    agent_requests: Family<AgentStatus, Counter>,
    agent_tokens: Family<AgentKind, Counter>,
    agent_cost: Family<AgentLabel, FloatCounter>,
    in_flight: Gauge,
    breaker: Family<ProviderLabel, Gauge>,
    http: Family<HttpLabels, Counter>,
    refusals: Family<KindLabel, Counter>,
    ledger_failures: Counter,
    ledger_backlog: Gauge,
    ledger_away: Gauge,
    rpc_errors: Family<CodeLabel, Counter>,
}

impl Families {
    fn new() -> Families {
        let mut r = Registry::with_prefix("quorum");
        let build: Family<VersionLabel, Gauge> = Family::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register("build_info", "Version of the running server.", build);
        let f = Families {
            requests: Family::default(),
            errors: Family::default(),
            tokens: Family::default(),
            cost: Family::default(),
            unpriced: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            ttft: Family::new_with_constructor(latency_histogram),
            agent_requests: Family::default(),
            agent_tokens: Family::default(),
            agent_cost: Family::default(),
            in_flight: Gauge::default(),
            breaker: Family::default(),
            http: Family::default(),
            refusals: Family::default(),
            ledger_failures: Counter::default(),
            ledger_backlog: Gauge::default(),
            ledger_away: Gauge::default(),
            rpc_errors: Family::default(),
            registry: Registry::default(),
        };
        r.register(
            "requests",
            "Finished upstream requests by provider, model, endpoint and status.",
            f.requests.clone(),
        );
        r.register(
            "request_errors",
            "Failed upstream requests by provider, model and error kind.",
            f.errors.clone(),
        );
        r.register(
            "tokens",
            "Tokens sent and received by provider, model and kind (input counts cached tokens too; answers from the local response cache count none).",
            f.tokens.clone(),
        );
        r.register(
            "cost_usd",
            "Known cost in US dollars by provider and model.",
            f.cost.clone(),
        );
        r.register(
            "unpriced_requests",
            "Requests whose price is unknown (not in quorum_cost_usd_total).",
            f.unpriced.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Latency of upstream requests, from start to the last byte.",
            f.latency.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "Time to the first token of upstream requests.",
            f.ttft.clone(),
        );
        r.register(
            "agent_requests",
            "Finished upstream requests by calling agent (source_agent) and status.",
            f.agent_requests.clone(),
        );
        r.register(
            "agent_tokens",
            "Tokens by calling agent and kind.",
            f.agent_tokens.clone(),
        );
        r.register(
            "agent_cost_usd",
            "Known cost in US dollars by calling agent.",
            f.agent_cost.clone(),
        );
        r.register(
            "in_flight_requests",
            "HTTP requests being served now.",
            f.in_flight.clone(),
        );
        r.register(
            "breaker_state",
            "Circuit breaker per provider: 0 closed, 1 half-open, 2 open.",
            f.breaker.clone(),
        );
        r.register(
            "http_responses",
            "HTTP responses by route and status code.",
            f.http.clone(),
        );
        r.register(
            "refusals",
            "Requests refused before sending, by kind (budget, not_allowed, config, internal).",
            f.refusals.clone(),
        );
        r.register(
            "ledger_write_failures",
            "Requests answered whose ledger row could not be written.",
            f.ledger_failures.clone(),
        );
        r.register(
            "ledger_backlog",
            "Ledger rows spooled locally, waiting for the shared database to return.",
            f.ledger_backlog.clone(),
        );
        r.register(
            "ledger_database_away",
            "1 while the shared ledger database cannot be reached (rows spool, or with a budget requests are refused).",
            f.ledger_away.clone(),
        );
        r.register(
            "rpc_errors",
            "JSON-RPC error responses by error code.",
            f.rpc_errors.clone(),
        );
        Families { registry: r, ..f }
    }
}

impl std::fmt::Debug for Families {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Families").finish_non_exhaustive()
    }
}

/// The server's counters.
#[derive(Debug)]
pub struct Metrics {
    state: Mutex<State>,
    prom: Families,
    in_flight: AtomicI64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            state: Mutex::default(),
            prom: Families::new(),
            in_flight: AtomicI64::new(0),
        }
    }
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
        let agent = s.agent_label(agent);
        let status = match &c.error {
            None => "ok",
            Some(crate::engine::EngineError::Cancelled) => "cancelled",
            Some(_) => "error",
        };
        s.usage
            .entry((provider.clone(), model.clone()))
            .or_default()
            .add(c);
        if let Some(e) = &c.error {
            if !matches!(e, crate::engine::EngineError::Cancelled) {
                s.last_error.insert(
                    provider.clone(),
                    LastError {
                        kind: e.kind().to_string(),
                        message: e.to_string(),
                        at: now_rfc3339(),
                    },
                );
            }
        }
        drop(s);
        let p = &self.prom;
        let u = &c.billed_usage();
        p.agent_requests
            .get_or_create(&AgentStatus {
                agent: agent.clone(),
                status,
            })
            .inc();
        for (kind, n) in [("input", u.input_tokens), ("output", u.output_tokens)] {
            p.agent_tokens
                .get_or_create(&AgentKind {
                    agent: agent.clone(),
                    kind,
                })
                .inc_by(n);
        }
        if let Some(x) = c.cost_usd {
            p.agent_cost.get_or_create(&AgentLabel { agent }).inc_by(x);
        }
        p.requests
            .get_or_create(&RequestLabels {
                provider: provider.clone(),
                model: model.clone(),
                endpoint: endpoint.to_string(),
                status,
            })
            .inc();
        if let Some(e) = &c.error {
            p.errors
                .get_or_create(&ErrorLabels {
                    provider: provider.clone(),
                    model: model.clone(),
                    kind: e.kind().to_string(),
                })
                .inc();
        }
        for (kind, n) in [
            ("input", u.input_tokens),
            ("output", u.output_tokens),
            ("cached_input", u.cached_input_tokens),
            ("cache_creation_input", u.cache_creation_input_tokens),
            ("reasoning", u.reasoning_tokens),
        ] {
            p.tokens
                .get_or_create(&TokenLabels {
                    provider: provider.clone(),
                    model: model.clone(),
                    kind,
                })
                .inc_by(n);
        }
        let key = ModelLabels { provider, model };
        let cost = p.cost.get_or_create(&key);
        let unpriced = p.unpriced.get_or_create(&key);
        match c.cost_usd {
            Some(x) => {
                cost.inc_by(x);
            }
            None => {
                unpriced.inc();
            }
        }
        p.latency.get_or_create(&key).observe(c.latency_ms / 1000.0);
        if let Some(t) = c.ttft_ms {
            p.ttft.get_or_create(&key).observe(t / 1000.0);
        }
    }

    /// Count one HTTP response.
    pub fn http(&self, route: &str, status: u16) {
        self.prom
            .http
            .get_or_create(&HttpLabels {
                route: route.to_string(),
                code: status.to_string(),
            })
            .inc();
    }

    /// Count one request refused before anything was sent (`budget`, `not_allowed`, `config`).
    pub fn refusal(&self, kind: &str) {
        self.prom
            .refusals
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Count one JSON-RPC error response.
    pub fn rpc_error(&self, code: i64) {
        self.prom
            .rpc_errors
            .get_or_create(&CodeLabel {
                code: code.to_string(),
            })
            .inc();
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
        let mut by_provider: BTreeMap<&str, Tally> = BTreeMap::new();
        let mut total = Tally::default();
        for ((p, m), t) in &s.usage {
            let mut o = usage_totals(t);
            o.insert("provider".into(), json!(p));
            o.insert("model".into(), json!(m));
            by_model.push(Value::Object(o));
            *by_provider.entry(p).or_default() += t;
            total += t;
        }
        let providers: Vec<Value> = by_provider
            .into_iter()
            .map(|(p, t)| {
                let mut o = usage_totals(&t);
                o.insert("provider".into(), json!(p));
                Value::Object(o)
            })
            .collect();
        let total = Value::Object(usage_totals(&total));
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

    /// The exposition (OpenMetrics text, [`CONTENT_TYPE`]): the counters, plus
    /// what is read from the engine now (breakers, ledger write failures).
    pub fn render(&self, engine: &Engine) -> String {
        let p = &self.prom;
        let mut o = String::with_capacity(4096);
        // One render at a time, so the ledger failures are added once.
        let Ok(mut s) = self.state.lock() else {
            return o;
        };
        p.in_flight.set(self.in_flight_now());
        for spec in engine.registry().providers() {
            let v = match engine.breaker_state(&spec.name) {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            };
            p.breaker
                .get_or_create(&ProviderLabel {
                    provider: spec.name.clone(),
                })
                .set(v);
        }
        let failures = engine.ledger_health().failures();
        if failures > s.ledger_failures_seen {
            p.ledger_failures.inc_by(failures - s.ledger_failures_seen);
            s.ledger_failures_seen = failures;
        }
        p.ledger_backlog
            .set(i64::try_from(engine.ledger_backlog()).unwrap_or(i64::MAX));
        p.ledger_away.set(i64::from(engine.ledger_away().is_some()));
        let _ = prometheus_client::encoding::text::encode(&mut o, &p.registry);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineError;

    fn completion(model: &str, error: Option<EngineError>) -> Completion {
        let mut c = Completion {
            provider: "mock".into(),
            model: model.into(),
            error,
            latency_ms: 3.0,
            ttft_ms: Some(1.0),
            cost_usd: Some(0.25),
            ..Default::default()
        };
        c.usage.input_tokens = 7;
        c.usage.output_tokens = 5;
        c
    }

    #[test]
    fn exposition_has_every_family_with_bounded_labels() {
        let engine = Engine::new(Default::default()).unwrap();
        let m = Metrics::new();
        m.record(
            "chat_completions",
            &completion("alpha", None),
            true,
            Some("bot \"1\""),
        );
        m.record(
            "rpc",
            &completion("alpha", Some(EngineError::Cancelled)),
            true,
            Some("a1"),
        );
        m.record("rpc", &completion("made-up", None), false, None);
        m.http("/rpc", 200);
        m.refusal("budget");
        m.rpc_error(-32600);
        let t = m.render(&engine);
        for line in [
            "quorum_requests_total{provider=\"mock\",model=\"alpha\",endpoint=\"chat_completions\",status=\"ok\"} 1",
            "quorum_requests_total{provider=\"mock\",model=\"alpha\",endpoint=\"rpc\",status=\"cancelled\"} 1",
            "quorum_requests_total{provider=\"mock\",model=\"other\",endpoint=\"rpc\",status=\"ok\"} 1",
            "quorum_request_errors_total{provider=\"mock\",model=\"alpha\",kind=\"cancelled\"} 1",
            "quorum_tokens_total{provider=\"mock\",model=\"alpha\",kind=\"input\"} 14",
            "quorum_cost_usd_total{provider=\"mock\",model=\"alpha\"} 0.5",
            "quorum_request_duration_seconds_bucket{le=\"0.005\",provider=\"mock\",model=\"alpha\"} 2",
            "quorum_request_duration_seconds_count{provider=\"mock\",model=\"alpha\"} 2",
            // An agent name that is not plain folds into `other`.
            "quorum_agent_requests_total{agent=\"other\",status=\"ok\"} 1",
            "quorum_agent_requests_total{agent=\"a1\",status=\"cancelled\"} 1",
            "quorum_agent_requests_total{agent=\"none\",status=\"ok\"} 1",
            "quorum_http_responses_total{route=\"/rpc\",code=\"200\"} 1",
            "quorum_refusals_total{kind=\"budget\"} 1",
            "quorum_rpc_errors_total{code=\"-32600\"} 1",
            "quorum_in_flight_requests 0",
            "quorum_ledger_write_failures_total 0",
            "# TYPE quorum_request_duration_seconds histogram",
            "# EOF",
        ] {
            assert!(t.lines().any(|l| l == line), "no line {line:?} in\n{t}");
        }
        assert!(t.contains("quorum_build_info{version="), "{t}");
    }

    #[test]
    fn model_labels_are_capped() {
        let m = Metrics::new();
        for i in 0..MAX_MODEL_LABELS + 50 {
            m.record("rpc", &completion(&format!("m{i}"), None), true, None);
        }
        let engine = Engine::new(Default::default()).unwrap();
        let t = m.render(&engine);
        let series = t
            .lines()
            .filter(|l| l.starts_with("quorum_requests_total{"))
            .count();
        assert_eq!(series, MAX_MODEL_LABELS + 1, "{t}");
        assert!(
            t.contains("model=\"other\",endpoint=\"rpc\",status=\"ok\"} 50"),
            "{t}"
        );
    }
}
