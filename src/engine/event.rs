//! The one streaming event model every provider maps onto, and the fold that
//! turns a stream of provider deltas into a finished [`Completion`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::EngineError;

/// Token usage, normalised across providers.
///
/// `input_tokens` counts every prompt token, cached ones included (for
/// Anthropic: `input_tokens + cache_read_input_tokens +
/// cache_creation_input_tokens`). `cached_input_tokens` and
/// `cache_creation_input_tokens` are parts of it. `reasoning_tokens` is the
/// part of `output_tokens` spent on thinking, where the provider says so.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Every prompt token, cached ones included.
    pub input_tokens: u64,
    /// Generated tokens, reasoning included.
    pub output_tokens: u64,
    /// Prompt tokens read from a provider-side cache.
    pub cached_input_tokens: u64,
    /// Prompt tokens written to a provider-side cache.
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    /// Output tokens spent on reasoning.
    pub reasoning_tokens: u64,
    /// Cost in USD as reported by the provider itself (OpenRouter's `usage.cost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_cost_usd: Option<f64>,
}

/// One tally for every face: token counts add; a provider-reported cost adds where
/// both sides have one, else the known side stands.
impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cached_input_tokens += o.cached_input_tokens;
        self.cache_creation_input_tokens += o.cache_creation_input_tokens;
        self.reasoning_tokens += o.reasoning_tokens;
        self.reported_cost_usd = match (self.reported_cost_usd, o.reported_cost_usd) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(mut self, o: Usage) -> Usage {
        self += o;
        self
    }
}

impl std::iter::Sum for Usage {
    fn sum<I: Iterator<Item = Usage>>(it: I) -> Usage {
        it.fold(Usage::default(), |a, b| a + b)
    }
}

impl Usage {
    /// Input tokens not read from any cache and not written to one.
    pub fn uncached_input_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_sub(self.cached_input_tokens)
            .saturating_sub(self.cache_creation_input_tokens)
    }

    /// Total tokens, input plus output.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

/// Why generation stopped, normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Natural end, or a stop sequence.
    #[default]
    Stop,
    /// Output token limit reached.
    Length,
    /// The model asked for tool calls.
    ToolCalls,
    /// A safety or content filter stopped it.
    ContentFilter,
    /// The request failed.
    Error,
    /// The user cancelled it.
    Cancelled,
}

impl FinishReason {
    /// The wire word of the normalised reason (`stop`, `length`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Error => "error",
            FinishReason::Cancelled => "cancelled",
        }
    }

    /// The reason of a wire word ([`FinishReason::as_str`]); unknown words are `Stop`.
    pub fn parse(word: &str) -> FinishReason {
        match word {
            "length" => FinishReason::Length,
            "tool_calls" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            "error" => FinishReason::Error,
            "cancelled" => FinishReason::Cancelled,
            _ => FinishReason::Stop,
        }
    }
}

impl std::fmt::Display for FinishReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A finished tool call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Provider-assigned id ("" when the provider assigns none, as older Gemini models).
    pub id: String,
    /// Function name.
    pub name: String,
    /// The exact argument string as sent (concatenated fragments when streamed).
    pub arguments: String,
    /// Whether the call names an offered tool and its arguments match that
    /// tool's schema; `None` when not checked (no tools were offered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid: Option<bool>,
    /// Why the call is invalid: the first error, with its JSON path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
}

impl ToolCall {
    /// ` ✓`, ` ✗ why` or nothing: the call's validity against its tool's schema, as
    /// every face shows it.
    pub fn validity_mark(&self) -> String {
        match (self.valid, &self.invalid_reason) {
            (Some(true), _) => " ✓".to_string(),
            (Some(false), Some(r)) => format!(" ✗ {r}"),
            (Some(false), None) => " ✗".to_string(),
            (None, _) => String::new(),
        }
    }

    /// The arguments parsed as JSON; an empty string is `{}`; unparsable text is kept as a string.
    pub fn arguments_json(&self) -> serde_json::Value {
        if self.arguments.trim().is_empty() {
            return serde_json::Value::Object(Default::default());
        }
        serde_json::from_str(&self.arguments)
            .unwrap_or_else(|_| serde_json::Value::String(self.arguments.clone()))
    }
}

/// What a provider decoder extracts from the wire: the vocabulary shared by
/// every protocol module. Nothing downstream ever sees provider JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// Answer text.
    Text(String),
    /// Thinking / reasoning text.
    Thinking(String),
    /// Opaque signature of a thinking block (Anthropic, Gemini thought signatures).
    ThinkingSignature(String),
    /// A refusal message (OpenAI structured outputs).
    Refusal(String),
    /// A fragment of a tool call; fragments with the same `index` are merged.
    ToolCall {
        /// Position of the call in the answer.
        index: usize,
        /// Id, usually only on the first fragment.
        id: Option<String>,
        /// Name, usually only on the first fragment.
        name: Option<String>,
        /// A piece of the argument string.
        arguments: String,
    },
    /// A usage snapshot; it replaces any earlier one (providers report cumulative usage).
    Usage(Usage),
    /// The provider's stop signal.
    Finish {
        /// Normalised reason.
        reason: FinishReason,
        /// The provider's own word.
        raw: String,
    },
}

/// How the cost of a request was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CostSource {
    /// The provider reported it (OpenRouter's `usage.cost`).
    Provider,
    /// Usage times a named price row.
    Computed,
    /// The provider sent no usage: tokens were counted locally.
    Estimated,
    /// No price known: the cost is null, never $0.
    #[default]
    Unknown,
    /// Served from the local response cache: $0.
    Cached,
}

impl CostSource {
    /// Wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            CostSource::Provider => "provider",
            CostSource::Computed => "computed",
            CostSource::Estimated => "estimated",
            CostSource::Unknown => "unknown",
            CostSource::Cached => "cached",
        }
    }
    /// The source of a wire word ([`CostSource::as_str`]); unknown words are `Unknown`.
    pub fn parse(word: &str) -> CostSource {
        match word {
            "provider" => CostSource::Provider,
            "computed" => CostSource::Computed,
            "estimated" => CostSource::Estimated,
            "cached" => CostSource::Cached,
            _ => CostSource::Unknown,
        }
    }
    /// One-character mark for the UI: ✓ priced, ~ estimated, ? unknown.
    pub fn mark(self) -> &'static str {
        match self {
            CostSource::Provider | CostSource::Computed | CostSource::Cached => "✓",
            CostSource::Estimated => "~",
            CostSource::Unknown => "?",
        }
    }
}

/// The result of one request: the `quorum ask --json` object.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Completion {
    /// Provider name (registry key, e.g. `openai`).
    pub provider: String,
    /// Model name as sent to the provider.
    pub model: String,
    /// Answer text.
    pub text: String,
    /// Thinking text ("" when none).
    pub thinking: String,
    /// Refusal text, if the model refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// Finished tool calls.
    #[serde(serialize_with = "ser_tool_calls")]
    pub tool_calls: Vec<ToolCall>,
    /// The thinking split into the provider's signed blocks (for sending the
    /// turn back; see [`crate::engine::request::Message::from_completion`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub thinking_blocks: Vec<crate::engine::request::ThinkingBlock>,
    /// Whether the answer is valid JSON (JSON mode) or matches the requested
    /// JSON Schema; `None` when no JSON output was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_valid: Option<bool>,
    /// The first schema error: where in the answer (a JSON pointer, "" for
    /// the whole answer) and what.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_error: Option<SchemaError>,
    /// Normalised finish reason.
    pub finish_reason: FinishReason,
    /// The provider's own finish word.
    pub raw_finish_reason: String,
    /// Usage; zeros when the provider sent none (see `usage_reported`).
    pub usage: Usage,
    /// Whether the provider reported usage at all.
    #[serde(skip)]
    pub usage_reported: bool,
    /// Cost in USD, null when unknown.
    pub cost_usd: Option<f64>,
    /// Where the cost came from.
    pub cost_source: CostSource,
    /// The price row used (`builtin:openai/gpt-4o-mini@2024-07-18`), when one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_ref: Option<String>,
    /// Time to first token in ms.
    pub ttft_ms: Option<f64>,
    /// Total latency in ms.
    pub latency_ms: f64,
    /// Whether this answer was replayed from the local cache.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// Retries spent before this answer.
    #[serde(skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// Set when a fallback target produced this answer: the target first asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fell_back_from: Option<String>,
    /// The error, when the request failed.
    #[serde(serialize_with = "ser_error")]
    pub error: Option<EngineError>,
    /// Set when the ledger could not record this request: why. The answer stands;
    /// the face says so and exits 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_recorded: Option<String>,
    /// The span id upstream requests carried as their `traceparent` parent
    /// (16 hex digits): the id of this call's span when traces are exported.
    #[serde(skip)]
    pub span_id: Option<String>,
}

impl Completion {
    /// The tokens this request sent and received: none for an answer replayed
    /// from the local response cache (its `usage` is the original call's). Every
    /// tally (the ledger's totals, [`super::tally::Tally`], serve's counters)
    /// counts these.
    pub fn billed_usage(&self) -> Usage {
        if self.cached {
            Usage::default()
        } else {
            self.usage
        }
    }
}

/// The first reason an answer failed its JSON check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaError {
    /// JSON pointer into the answer (`/items/0/price`); "" is the answer itself.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn ser_tool_calls<S: serde::Serializer>(calls: &[ToolCall], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(calls.len()))?;
    for c in calls {
        let mut o = serde_json::json!({
            "id": c.id, "name": c.name, "arguments": c.arguments_json(),
        });
        if let Some(valid) = c.valid {
            o["valid"] = serde_json::json!(valid);
            if let Some(r) = &c.invalid_reason {
                o["invalid_reason"] = serde_json::json!(r);
            }
        }
        seq.serialize_element(&o)?;
    }
    seq.end()
}

fn ser_error<S: serde::Serializer>(e: &Option<EngineError>, s: S) -> Result<S::Ok, S::Error> {
    match e {
        None => s.serialize_none(),
        Some(e) => serde_json::json!({"kind": e.kind(), "message": e.to_string()}).serialize(s),
    }
}

/// Folds provider deltas into a [`Completion`]: text and thinking
/// concatenated, tool-call fragments merged by index, the last usage snapshot
/// kept, the last finish kept.
#[derive(Debug, Default)]
pub struct Accumulator {
    /// The completion being built.
    pub completion: Completion,
    tool_slots: Vec<(usize, ToolCall)>,
    saw_finish: bool,
    /// Local running count of the output that arrived, up to `uncounted`.
    estimate: super::tokens::TokenEstimator,
    /// Where the answer text not yet fed to `estimate` starts: text is counted
    /// when a count is asked for (or other output arrives), not chunk by chunk,
    /// since most streams report their usage and need no count. Feeding the
    /// estimator in pieces or whole gives the same figure.
    uncounted: Option<usize>,
}

impl Accumulator {
    /// Fold one delta.
    pub fn push(&mut self, d: &Delta) {
        if let Delta::Text(t) = d {
            let c = &mut self.completion;
            self.uncounted.get_or_insert(c.text.len());
            c.text.push_str(t);
            return;
        }
        // Other output is counted after the text that came before it.
        if matches!(
            d,
            Delta::Thinking(_) | Delta::Refusal(_) | Delta::ToolCall { .. }
        ) {
            self.count_text();
        }
        let c = &mut self.completion;
        match d {
            Delta::Text(_) => unreachable!("handled above"),
            Delta::Thinking(t) => {
                self.estimate.push(t);
                c.thinking.push_str(t);
                // A signed block is closed: new thinking opens the next one.
                match c.thinking_blocks.last_mut() {
                    Some(b) if b.signature.is_empty() => b.text.push_str(t),
                    _ => c
                        .thinking_blocks
                        .push(crate::engine::request::ThinkingBlock {
                            text: t.clone(),
                            signature: String::new(),
                        }),
                }
            }
            Delta::ThinkingSignature(s) => match c.thinking_blocks.last_mut() {
                Some(b) if b.signature.is_empty() => b.signature.push_str(s),
                // A signature without thinking text (Gemini signs answer and
                // call parts too, Anthropic may redact the text).
                _ => c
                    .thinking_blocks
                    .push(crate::engine::request::ThinkingBlock {
                        text: String::new(),
                        signature: s.clone(),
                    }),
            },
            Delta::Refusal(r) => {
                self.estimate.push(r);
                c.refusal.get_or_insert_with(String::new).push_str(r)
            }
            Delta::ToolCall {
                index,
                id,
                name,
                arguments,
            } => {
                let slot = match self.tool_slots.iter().position(|(i, _)| i == index) {
                    Some(p) => &mut self.tool_slots[p].1,
                    None => {
                        self.tool_slots.push((*index, ToolCall::default()));
                        &mut self.tool_slots.last_mut().expect("just pushed").1
                    }
                };
                if let Some(id) = id {
                    if !id.is_empty() {
                        slot.id = id.clone();
                    }
                }
                if let Some(n) = name {
                    if !n.is_empty() {
                        slot.name = n.clone();
                    }
                }
                self.estimate.push(arguments);
                slot.arguments.push_str(arguments);
            }
            Delta::Usage(u) => {
                c.usage = *u;
                c.usage_reported = true;
            }
            Delta::Finish { reason, raw } => {
                c.finish_reason = *reason;
                c.raw_finish_reason = raw.clone();
                self.saw_finish = true;
            }
        }
    }

    /// Whether a finish signal was seen.
    pub fn saw_finish(&self) -> bool {
        self.saw_finish
    }

    /// Whether anything the user would see (text, thinking, tool call) arrived.
    pub fn has_output(&self) -> bool {
        !self.completion.text.is_empty()
            || !self.completion.thinking.is_empty()
            || !self.tool_slots.is_empty()
    }

    /// Feed the answer text not yet counted to the estimator.
    fn count_text(&mut self) {
        if let Some(from) = self.uncounted.take() {
            self.estimate.push(&self.completion.text[from..]);
        }
    }

    /// Output tokens so far: the larger of the provider's running count and
    /// a local, lower-leaning count of what arrived (see
    /// [`TokenEstimator`](super::tokens::TokenEstimator)). Once the answer
    /// finished, the provider's figure is its final word and stands alone
    /// (OpenAI's usage chunk comes after the finish: a long answer is then
    /// never counted locally at all).
    pub fn running_output_tokens(&mut self) -> u64 {
        if !self.completion.usage_reported {
            self.count_text();
            return self.estimate.tokens();
        }
        let reported = self.completion.usage.output_tokens;
        if self.saw_finish {
            return reported;
        }
        self.count_text();
        reported.max(self.estimate.tokens())
    }

    /// The local count alone.
    pub fn local_output_tokens(&mut self) -> u64 {
        self.count_text();
        self.estimate.tokens()
    }

    /// The usage so far, with [`Accumulator::running_output_tokens`] as its output.
    pub fn running_usage(&mut self) -> Usage {
        Usage {
            output_tokens: self.running_output_tokens(),
            ..self.completion.usage
        }
    }

    /// Finish a stream that ended without the provider's last word (cut,
    /// cancelled, timed out, stopped by a cap): its usage is the running
    /// figure, marked not reported (so its cost is `estimated`).
    pub fn finish_unfinished(mut self) -> Completion {
        let usage = self.running_usage();
        let mut c = self.finish();
        c.usage = usage;
        c.usage_reported = false;
        c
    }

    /// Finish: tool calls in index order.
    pub fn finish(mut self) -> Completion {
        self.tool_slots.sort_by_key(|(i, _)| *i);
        self.completion.tool_calls = self.tool_slots.into_iter().map(|(_, t)| t).collect();
        self.completion
    }
}

/// One event of a target's stream, as the faces see it.
#[derive(Debug, Clone)]
pub enum StreamEvent {
    /// Waiting for a concurrency or rate-limit slot.
    Queued,
    /// An attempt started against `provider/model`.
    Started {
        /// Provider name.
        provider: String,
        /// Model name.
        model: String,
        /// 1-based attempt number.
        attempt: u32,
    },
    /// Answer text.
    TextDelta(String),
    /// Thinking text.
    ThinkingDelta(String),
    /// A fragment of a tool call.
    ToolCallDelta {
        /// Call index.
        index: usize,
        /// Id (first fragment).
        id: Option<String>,
        /// Name (first fragment).
        name: Option<String>,
        /// Argument fragment.
        arguments: String,
    },
    /// Usage snapshot so far (cumulative). Its `output_tokens` is the
    /// running count: the larger of the provider's figure and a local count
    /// of what arrived, so a provisional figure (Anthropic's `1` at the
    /// start) never shows for a whole stream; once the answer finished, the
    /// provider's figure alone (its final word). Sent whenever the provider
    /// reports usage, and as output arrives once it has.
    Usage(Usage),
    /// A retry is scheduled.
    Retrying {
        /// Attempt about to be made (2 = first retry).
        attempt: u32,
        /// Maximum attempts.
        max_attempts: u32,
        /// How long we wait first.
        wait: Duration,
        /// Why: e.g. "429, Retry-After".
        reason: String,
    },
    /// The target failed and a fallback takes over.
    FellBack {
        /// Target that failed.
        from: String,
        /// Target now tried.
        to: String,
        /// Why.
        reason: String,
    },
    /// The circuit breaker of the provider is open: failing fast.
    BreakerOpen {
        /// Provider name.
        provider: String,
    },
    /// Done: the completion, with cost. The ledger row is already committed.
    Finished(Box<Completion>),
    /// Failed: the completion holds the partial output and the error.
    Failed(Box<Completion>),
}

impl StreamEvent {
    /// Whether this is a target's last event (finished or failed).
    pub fn is_final(&self) -> bool {
        matches!(self, StreamEvent::Finished(_) | StreamEvent::Failed(_))
    }

    /// Map a provider delta to a face event, where it has one.
    pub fn from_delta(d: &Delta) -> Option<StreamEvent> {
        Some(match d {
            Delta::Text(t) => StreamEvent::TextDelta(t.clone()),
            Delta::Thinking(t) => StreamEvent::ThinkingDelta(t.clone()),
            Delta::Refusal(t) => StreamEvent::TextDelta(t.clone()),
            Delta::ToolCall {
                index,
                id,
                name,
                arguments,
            } => StreamEvent::ToolCallDelta {
                index: *index,
                id: id.clone(),
                name: name.clone(),
                arguments: arguments.clone(),
            },
            Delta::Usage(u) => StreamEvent::Usage(*u),
            Delta::ThinkingSignature(_) | Delta::Finish { .. } => return None,
        })
    }

    /// [`StreamEvent::from_delta`], taking the delta: the text moves into the
    /// event instead of being copied.
    pub fn from_delta_owned(d: Delta) -> Option<StreamEvent> {
        Some(match d {
            Delta::Text(t) | Delta::Refusal(t) => StreamEvent::TextDelta(t),
            Delta::Thinking(t) => StreamEvent::ThinkingDelta(t),
            Delta::ToolCall {
                index,
                id,
                name,
                arguments,
            } => StreamEvent::ToolCallDelta {
                index,
                id,
                name,
                arguments,
            },
            Delta::Usage(u) => StreamEvent::Usage(u),
            Delta::ThinkingSignature(_) | Delta::Finish { .. } => return None,
        })
    }
}

#[cfg(test)]
mod usage_tests {
    use super::Usage;

    #[test]
    fn usages_add_field_by_field() {
        let a = Usage {
            input_tokens: 10,
            output_tokens: 5,
            cached_input_tokens: 2,
            cache_creation_input_tokens: 1,
            reasoning_tokens: 3,
            reported_cost_usd: Some(0.5),
        };
        let b = Usage {
            input_tokens: 1,
            output_tokens: 1,
            reported_cost_usd: None,
            ..a
        };
        let t: Usage = [a, b, a].into_iter().sum();
        assert_eq!(t.input_tokens, 21);
        assert_eq!(t.output_tokens, 11);
        assert_eq!(t.cached_input_tokens, 6);
        assert_eq!(t.cache_creation_input_tokens, 3);
        assert_eq!(t.reasoning_tokens, 9);
        assert_eq!(t.reported_cost_usd, Some(1.0));
    }
}

#[cfg(test)]
mod accumulator_tests {
    use super::{Accumulator, Delta};
    use crate::engine::tokens::TokenEstimator;

    proptest::proptest! {
        /// Text counted when a count is asked for gives the figure counting
        /// every delta as it came gives, whatever the mix of outputs.
        #[test]
        fn a_count_taken_late_equals_one_taken_as_output_came(
            steps in proptest::collection::vec(
                (0u8..7, "[a-z0-9 .,!\\u{4e00}-\\u{4e10}]{0,10}"),
                0..60,
            ),
        ) {
            let mut acc = Accumulator::default();
            let mut eager = TokenEstimator::new();
            for (kind, t) in steps {
                let d = match kind {
                    0 | 1 => Delta::Text(t.clone()),
                    2 => Delta::Thinking(t.clone()),
                    3 => Delta::Refusal(t.clone()),
                    4 => Delta::ToolCall { index: 0, id: None, name: None, arguments: t.clone() },
                    // Neither is output: nothing to count.
                    5 => Delta::Usage(super::Usage::default()),
                    _ => Delta::Finish { reason: super::FinishReason::Stop, raw: "stop".into() },
                };
                acc.push(&d);
                if kind < 5 {
                    eager.push(&t);
                }
                if kind == 1 {
                    proptest::prop_assert_eq!(acc.local_output_tokens(), eager.tokens());
                }
            }
            proptest::prop_assert_eq!(acc.local_output_tokens(), eager.tokens());
        }
    }
}
