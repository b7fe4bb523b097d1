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

use std::collections::{BTreeMap, HashMap, HashSet};
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

use super::pace::Pace;
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

#[derive(Default)]
struct State {
    /// Resettable copy for `llm.metrics`, by provider then model label.
    usage: BTreeMap<String, BTreeMap<String, Tally>>,
    usage_since: Option<String>,
    last_error: BTreeMap<String, LastError>,
    /// Model label values handed out so far, by provider (capped at
    /// [`MAX_MODEL_LABELS`] in all), and agent label values (capped).
    model_labels: HashMap<String, HashSet<String>>,
    model_label_count: usize,
    agent_labels: HashSet<String>,
    /// The series a finished request adds to, by provider, model label and
    /// endpoint, and by agent label: found once, so that recording a request
    /// costs a few lookups and atomic adds rather than a dozen label sets
    /// built, hashed and looked up. Bounded by the label sets above.
    series: HashMap<String, HashMap<String, Vec<ModelSeries>>>,
    agents: HashMap<String, AgentSeries>,
    /// Ledger write failures already added to their counter.
    ledger_failures_seen: u64,
    /// Held frames already added to the counter.
    held_seen: u64,
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
    fn model_label<'a>(&mut self, provider: &str, model: &'a str, known: bool) -> &'a str {
        if !known {
            return OTHER;
        }
        if let Some(ms) = self.model_labels.get(provider) {
            if ms.contains(model) {
                return model;
            }
        }
        if self.model_label_count >= MAX_MODEL_LABELS {
            return OTHER;
        }
        self.model_label_count += 1;
        self.model_labels
            .entry(provider.to_string())
            .or_default()
            .insert(model.to_string());
        model
    }

    /// The agent label: `none` without one; a short plain name while the
    /// label set has room; else `other`.
    fn agent_label<'a>(&mut self, agent: Option<&'a str>) -> &'a str {
        let Some(a) = agent else {
            return "none";
        };
        let plain = !a.is_empty()
            && a.len() <= 64
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@".contains(&b));
        if !plain {
            return OTHER;
        }
        if self.agent_labels.contains(a) {
            return a;
        }
        if self.agent_labels.len() < MAX_AGENT_LABELS {
            self.agent_labels.insert(a.to_string());
            a
        } else {
            OTHER
        }
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("usage", &self.usage)
            .field("model_labels", &self.model_label_count)
            .field("agent_labels", &self.agent_labels.len())
            .finish_non_exhaustive()
    }
}

/// The index of a request status in the per-status handles.
const STATUSES: [&str; 3] = ["ok", "cancelled", "error"];

/// The token kinds of `quorum_tokens_total`, in [`ModelSeries::tokens`]' order.
const TOKEN_KINDS: [&str; 5] = [
    "input",
    "output",
    "cached_input",
    "cache_creation_input",
    "reasoning",
];

/// The series one provider, model label and endpoint add to. A series is
/// created when first added to, as `get_or_create` would at that moment:
/// the per-status and TTFT ones on first use, the others with the entry.
struct ModelSeries {
    endpoint: String,
    requests: [Option<Counter>; 3],
    tokens: [Counter; 5],
    cost: FloatCounter,
    unpriced: Counter,
    latency: Histogram,
    ttft: Option<Histogram>,
}

impl ModelSeries {
    fn new(p: &Families, provider: &str, model: &str, endpoint: &str) -> ModelSeries {
        let key = ModelLabels {
            provider: provider.to_string(),
            model: model.to_string(),
        };
        ModelSeries {
            endpoint: endpoint.to_string(),
            requests: Default::default(),
            tokens: TOKEN_KINDS.map(|kind| {
                p.tokens.get_or_create_owned(&TokenLabels {
                    provider: provider.to_string(),
                    model: model.to_string(),
                    kind,
                })
            }),
            cost: p.cost.get_or_create_owned(&key),
            unpriced: p.unpriced.get_or_create_owned(&key),
            latency: p.latency.get_or_create_owned(&key),
            ttft: None,
        }
    }
}

/// The series one agent label adds to (see [`ModelSeries`]).
struct AgentSeries {
    requests: [Option<Counter>; 3],
    tokens: [Counter; 2],
    cost: Option<FloatCounter>,
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
    held_frames: Counter,
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
            held_frames: Counter::default(),
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
        r.register(
            "stream_frames_held",
            "Frames of streams under way held while the server was behind, so that starting requests went first (--hold-under-load).",
            f.held_frames.clone(),
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
        let Ok(mut guard) = self.state.lock() else {
            return;
        };
        let s = &mut *guard;
        let provider = if c.provider.is_empty() {
            "unknown"
        } else {
            c.provider.as_str()
        };
        let model = s.model_label(provider, &c.model, known);
        let agent = s.agent_label(agent);
        let status = match &c.error {
            None => 0,
            Some(crate::engine::EngineError::Cancelled) => 1,
            Some(_) => 2,
        };
        let by_model = match s.usage.get_mut(provider) {
            Some(m) => m,
            None => s.usage.entry(provider.to_string()).or_default(),
        };
        match by_model.get_mut(model) {
            Some(t) => t.add(c),
            None => by_model.entry(model.to_string()).or_default().add(c),
        }
        if let Some(e) = &c.error {
            if !matches!(e, crate::engine::EngineError::Cancelled) {
                s.last_error.insert(
                    provider.to_string(),
                    LastError {
                        kind: e.kind().to_string(),
                        message: e.to_string(),
                        at: now_rfc3339(),
                    },
                );
            }
        }
        let p = &self.prom;
        let u = &c.billed_usage();

        let a = match s.agents.get_mut(agent) {
            Some(a) => a,
            None => s
                .agents
                .entry(agent.to_string())
                .or_insert_with(|| AgentSeries {
                    requests: Default::default(),
                    tokens: ["input", "output"].map(|kind| {
                        p.agent_tokens.get_or_create_owned(&AgentKind {
                            agent: agent.to_string(),
                            kind,
                        })
                    }),
                    cost: None,
                }),
        };
        a.requests[status]
            .get_or_insert_with(|| {
                p.agent_requests.get_or_create_owned(&AgentStatus {
                    agent: agent.to_string(),
                    status: STATUSES[status],
                })
            })
            .inc();
        a.tokens[0].inc_by(u.input_tokens);
        a.tokens[1].inc_by(u.output_tokens);
        if let Some(x) = c.cost_usd {
            a.cost
                .get_or_insert_with(|| {
                    p.agent_cost.get_or_create_owned(&AgentLabel {
                        agent: agent.to_string(),
                    })
                })
                .inc_by(x);
        }

        let models = match s.series.get_mut(provider) {
            Some(m) => m,
            None => s.series.entry(provider.to_string()).or_default(),
        };
        let list = match models.get_mut(model) {
            Some(l) => l,
            None => models.entry(model.to_string()).or_default(),
        };
        let m = match list.iter().position(|m| m.endpoint == endpoint) {
            Some(i) => &mut list[i],
            None => {
                list.push(ModelSeries::new(p, provider, model, endpoint));
                list.last_mut().expect("just pushed")
            }
        };
        m.requests[status]
            .get_or_insert_with(|| {
                p.requests.get_or_create_owned(&RequestLabels {
                    provider: provider.to_string(),
                    model: model.to_string(),
                    endpoint: endpoint.to_string(),
                    status: STATUSES[status],
                })
            })
            .inc();
        if let Some(e) = &c.error {
            p.errors
                .get_or_create(&ErrorLabels {
                    provider: provider.to_string(),
                    model: model.to_string(),
                    kind: e.kind().to_string(),
                })
                .inc();
        }
        for (t, n) in m.tokens.iter().zip([
            u.input_tokens,
            u.output_tokens,
            u.cached_input_tokens,
            u.cache_creation_input_tokens,
            u.reasoning_tokens,
        ]) {
            t.inc_by(n);
        }
        match c.cost_usd {
            Some(x) => {
                m.cost.inc_by(x);
            }
            None => {
                m.unpriced.inc();
            }
        }
        m.latency.observe(c.latency_ms / 1000.0);
        if let Some(t) = c.ttft_ms {
            m.ttft
                .get_or_insert_with(|| {
                    p.ttft.get_or_create_owned(&ModelLabels {
                        provider: provider.to_string(),
                        model: model.to_string(),
                    })
                })
                .observe(t / 1000.0);
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
        for (p, ms) in &s.usage {
            for (m, t) in ms {
                let mut o = usage_totals(t);
                o.insert("provider".into(), json!(p));
                o.insert("model".into(), json!(m));
                by_model.push(Value::Object(o));
                *by_provider.entry(p).or_default() += t;
                total += t;
            }
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
    /// what is read from the engine now (breakers, ledger write failures) and
    /// the frames `pace` held.
    pub fn render(&self, engine: &Engine, pace: &Pace) -> String {
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
        let held = pace.holds();
        if held > s.held_seen {
            p.held_frames.inc_by(held - s.held_seen);
            s.held_seen = held;
        }
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
        let t = m.render(&engine, &Pace::new(std::time::Duration::ZERO));
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

    /// Recording goes through handles found once per series; a series still
    /// appears only when first added to, and counts keep adding up.
    #[test]
    fn series_appear_when_first_used_and_keep_counting() {
        let engine = Engine::new(Default::default()).unwrap();
        let m = Metrics::new();
        let mut bare = completion("alpha", None);
        bare.ttft_ms = None;
        bare.cost_usd = None;
        m.record("rpc", &bare, true, Some("a1"));
        m.record("rpc", &bare, true, Some("a1"));
        let t = m.render(&engine, &Pace::new(std::time::Duration::ZERO));
        for absent in [
            "quorum_time_to_first_token_seconds_count{",
            "quorum_agent_cost_usd_total{",
            "status=\"error\"",
        ] {
            assert!(!t.contains(absent), "{absent} in\n{t}");
        }
        assert!(
            t.contains("quorum_unpriced_requests_total{provider=\"mock\",model=\"alpha\"} 2"),
            "{t}"
        );
        m.record("rpc", &completion("alpha", None), true, Some("a1"));
        m.record(
            "rpc",
            &completion(
                "alpha",
                Some(EngineError::Network {
                    message: "x".into(),
                }),
            ),
            true,
            Some("a1"),
        );
        let t = m.render(&engine, &Pace::new(std::time::Duration::ZERO));
        for line in [
            "quorum_requests_total{provider=\"mock\",model=\"alpha\",endpoint=\"rpc\",status=\"ok\"} 3",
            "quorum_requests_total{provider=\"mock\",model=\"alpha\",endpoint=\"rpc\",status=\"error\"} 1",
            "quorum_time_to_first_token_seconds_count{provider=\"mock\",model=\"alpha\"} 2",
            "quorum_agent_requests_total{agent=\"a1\",status=\"ok\"} 3",
            "quorum_agent_tokens_total{agent=\"a1\",kind=\"output\"} 20",
            "quorum_agent_cost_usd_total{agent=\"a1\"} 0.5",
            "quorum_tokens_total{provider=\"mock\",model=\"alpha\",kind=\"input\"} 28",
            "quorum_unpriced_requests_total{provider=\"mock\",model=\"alpha\"} 2",
        ] {
            assert!(t.lines().any(|l| l == line), "no line {line:?} in\n{t}");
        }
        // `llm.metrics` keeps its own, resettable, copy.
        let u = m.usage_json(true);
        assert_eq!(u["models"][0]["requests"], 4, "{u}");
        assert_eq!(m.usage_json(false)["models"], json!([]));
        assert!(m
            .render(&engine, &Pace::new(std::time::Duration::ZERO))
            .contains("status=\"ok\"} 3"));
    }

    #[test]
    fn model_labels_are_capped() {
        let m = Metrics::new();
        for i in 0..MAX_MODEL_LABELS + 50 {
            m.record("rpc", &completion(&format!("m{i}"), None), true, None);
        }
        let engine = Engine::new(Default::default()).unwrap();
        let t = m.render(&engine, &Pace::new(std::time::Duration::ZERO));
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
