//! OpenTelemetry traces of `quorum serve`, on when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set: OTLP over HTTP/protobuf, batched on a thread of its own, flushed on
//! shutdown. The exporter reads the other standard variables itself
//! (`OTEL_EXPORTER_OTLP_HEADERS`, `…_TIMEOUT`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`); `OTEL_SDK_DISABLED=true` turns it off.
//!
//! Every HTTP request is a server span (`POST /v1/chat/completions`) that
//! continues the caller's W3C `traceparent`; without one, its trace id is the
//! request's quorum trace id (`x-quorum-trace-id`, the ledger's `trace_id`).
//! Each upstream call under it is a client span following OpenTelemetry's
//! GenAI semantic conventions: `chat {model}` with `gen_ai.operation.name`,
//! `gen_ai.provider.name` (and the older `gen_ai.system`),
//! `gen_ai.request.model`, `gen_ai.response.model`,
//! `gen_ai.usage.input_tokens` / `output_tokens`,
//! `gen_ai.response.finish_reasons`, `error.type`, plus `quorum.cost_usd`,
//! `quorum.ttft_ms` and the like. Spans carry no prompt, answer, header or
//! key: only names, counts, timings and kinds.
//!
//! Upstream requests carry a W3C `traceparent` in the same trace whose parent
//! is that call's client span, so the provider's own spans hang under it.
//! With traces off, the parent is the caller's span when it sent one (quorum
//! passes the trace through), else a span id of quorum's own.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use axum::http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceId, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider, Tracer};
use opentelemetry_sdk::Resource;

use crate::engine::{Completion, EngineError, FinishReason};

static TRACER: OnceLock<Tracer> = OnceLock::new();

thread_local! {
    /// The trace id the next root span takes (set just before it starts).
    static NEXT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
    /// The span id the next span takes (set just before it starts): an upstream
    /// call's span keeps the id its request sent as the `traceparent` parent.
    static NEXT_SPAN_ID: Cell<Option<SpanId>> = const { Cell::new(None) };
}

/// Root spans take the request's quorum trace id, so the ledger's rows and
/// the trace line up; everything else is random.
#[derive(Debug, Default)]
struct QuorumIds(RandomIdGenerator);

impl IdGenerator for QuorumIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID
            .with(Cell::take)
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_SPAN_ID
            .with(Cell::take)
            .unwrap_or_else(|| self.0.new_span_id())
    }
}

/// Whether the environment asks for traces.
pub fn wanted() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let disabled =
        std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The exporter, while traces are on; shut it down to flush.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Start exporting when the environment asks for it. An unusable
    /// configuration is an error naming the variable; none is `Ok(None)`.
    pub fn from_env() -> Result<Option<Telemetry>, String> {
        if !wanted() {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: cannot export traces: {e}"))?;
        let resource = Resource::builder()
            .with_service_name(
                std::env::var("OTEL_SERVICE_NAME")
                    .ok()
                    .filter(|s| !s.trim().is_empty())
                    .unwrap_or_else(|| "quorum".to_string()),
            )
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_id_generator(QuorumIds::default())
            .with_resource(resource)
            .build();
        let _ = TRACER.set(provider.tracer("quorum"));
        Ok(Some(Telemetry { provider }))
    }

    /// Export what is left and stop (blocks up to `timeout`).
    pub fn shutdown(self, timeout: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            eprintln!("quorum: could not flush traces: {e}");
        }
    }
}

/// Whether spans are being made.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The caller's span from its `traceparent` (and `tracestate`), if valid.
pub fn parent_from(headers: &HeaderMap) -> Option<SpanContext> {
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// One upstream call as a span records it.
#[derive(Debug, Clone)]
pub struct Call {
    provider: String,
    model: String,
    requested: String,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: Option<f64>,
    cost_source: &'static str,
    ttft_ms: Option<f64>,
    latency_ms: f64,
    retries: u32,
    cached: bool,
    finish: &'static str,
    error: Option<&'static str>,
    ended: SystemTime,
    /// The span id its upstream requests named as their parent.
    span_id: Option<SpanId>,
}

impl Call {
    /// From a final completion (just finished).
    pub fn of(c: &Completion) -> Call {
        let requested = c
            .fell_back_from
            .as_deref()
            .map(|t| t.split_once('/').map_or(t, |(_, m)| m).to_string())
            .unwrap_or_else(|| c.model.clone());
        Call {
            provider: c.provider.clone(),
            model: c.model.clone(),
            requested,
            input_tokens: c.usage.input_tokens,
            output_tokens: c.usage.output_tokens,
            cost_usd: c.cost_usd,
            cost_source: c.cost_source.as_str(),
            ttft_ms: c.ttft_ms,
            latency_ms: c.latency_ms,
            retries: c.retries,
            cached: c.cached,
            finish: finish_word(c.finish_reason),
            error: c.error.as_ref().map(EngineError::kind),
            ended: SystemTime::now(),
            span_id: c
                .span_id
                .as_deref()
                .and_then(|s| SpanId::from_hex(s).ok())
                .filter(|s| *s != SpanId::INVALID),
        }
    }
}

fn finish_word(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
        FinishReason::Cancelled => "cancelled",
        FinishReason::Error => "error",
    }
}

/// What the server span of one HTTP request says.
pub struct Request<'a> {
    /// `GET`, `POST`...
    pub method: &'a str,
    /// The route (bounded: `/rpc`, `/v1/chat/completions`, ..., `other`).
    pub route: &'a str,
    /// The response's status code.
    pub status: u16,
    /// When the request arrived, and how long it took.
    pub started: SystemTime,
    /// How long it took.
    pub elapsed: Duration,
    /// The quorum trace id of its run, if it started one.
    pub trace_id: Option<&'a str>,
    /// The caller's span (`traceparent`).
    pub parent: Option<&'a SpanContext>,
    /// Its upstream calls.
    pub calls: &'a [Call],
}

/// Export one request's spans (no-op while traces are off).
pub fn export(r: &Request<'_>) {
    let Some(tracer) = TRACER.get() else { return };
    let parent = match r.parent {
        Some(sc) => Context::new().with_remote_span_context(sc.clone()),
        None => {
            if let Some(id) = r.trace_id.and_then(|t| TraceId::from_hex(t).ok()) {
                NEXT_TRACE_ID.with(|c| c.set(Some(id)));
            }
            Context::new()
        }
    };
    let mut attrs = vec![
        KeyValue::new("http.request.method", r.method.to_string()),
        KeyValue::new("http.route", r.route.to_string()),
        KeyValue::new("http.response.status_code", i64::from(r.status)),
        KeyValue::new("quorum.upstream_requests", r.calls.len() as i64),
    ];
    if let Some(t) = r.trace_id {
        attrs.push(KeyValue::new("quorum.trace_id", t.to_string()));
    }
    let priced: Vec<f64> = r.calls.iter().filter_map(|c| c.cost_usd).collect();
    if !r.calls.is_empty() && priced.len() == r.calls.len() {
        attrs.push(KeyValue::new("quorum.cost_usd", priced.iter().sum::<f64>()));
    }
    if r.status >= 500 {
        attrs.push(KeyValue::new("error.type", r.status.to_string()));
    }
    let end = r.started + r.elapsed;
    let span = tracer
        .span_builder(format!("{} {}", r.method, r.route))
        .with_kind(SpanKind::Server)
        .with_start_time(r.started)
        .with_attributes(attrs)
        .start_with_context(tracer, &parent);
    // Never left set for an unrelated span on this thread.
    NEXT_TRACE_ID.with(|c| c.take());
    let cx = Context::new().with_span(span);
    for c in r.calls {
        call_span(tracer, &cx, c);
    }
    let span = cx.span();
    if r.status >= 500 {
        span.set_status(Status::error(format!("HTTP {}", r.status)));
    }
    span.end_with_timestamp(end);
}

fn call_span(tracer: &Tracer, parent: &Context, c: &Call) {
    let mut attrs = vec![
        KeyValue::new("gen_ai.operation.name", "chat"),
        KeyValue::new("gen_ai.provider.name", c.provider.clone()),
        KeyValue::new("gen_ai.system", c.provider.clone()),
        KeyValue::new("gen_ai.request.model", c.requested.clone()),
        KeyValue::new("gen_ai.response.model", c.model.clone()),
        KeyValue::new("gen_ai.usage.input_tokens", c.input_tokens as i64),
        KeyValue::new("gen_ai.usage.output_tokens", c.output_tokens as i64),
        KeyValue::new(
            "gen_ai.response.finish_reasons",
            opentelemetry::Value::Array(vec![opentelemetry::StringValue::from(c.finish)].into()),
        ),
        KeyValue::new("quorum.latency_ms", c.latency_ms),
        KeyValue::new("quorum.retries", i64::from(c.retries)),
        KeyValue::new("quorum.cached", c.cached),
        KeyValue::new("quorum.cost_source", c.cost_source),
    ];
    if let Some(x) = c.cost_usd {
        attrs.push(KeyValue::new("quorum.cost_usd", x));
    }
    if let Some(t) = c.ttft_ms {
        attrs.push(KeyValue::new("quorum.ttft_ms", t));
    }
    if let Some(e) = c.error {
        attrs.push(KeyValue::new("error.type", e));
    }
    let started = c
        .ended
        .checked_sub(Duration::from_secs_f64(c.latency_ms.max(0.0) / 1000.0))
        .unwrap_or(c.ended);
    NEXT_SPAN_ID.with(|s| s.set(c.span_id));
    let mut span = tracer
        .span_builder(format!("chat {}", c.requested))
        .with_kind(SpanKind::Client)
        .with_start_time(started)
        .with_attributes(attrs)
        .start_with_context(tracer, parent);
    // Never left set for an unrelated span on this thread.
    NEXT_SPAN_ID.with(|s| s.take());
    if let Some(e) = c.error {
        use opentelemetry::trace::Span as _;
        span.set_status(Status::error(e));
    }
    opentelemetry::trace::Span::end_with_timestamp(&mut span, c.ended);
}
