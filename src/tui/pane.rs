//! One output pane: a target, its conversation, the transcript being
//! streamed, and live stats.

use std::time::{Duration, Instant};

use crate::engine::{Completion, CostSource, FinishReason, Message, StreamEvent, Usage};

use super::text::{BlockKind, Doc, TextStyles};

/// Rough tokens of streamed text (characters / 4), shown with `~` until usage arrives.
pub fn approx_tokens(s: &str) -> u64 {
    crate::engine::tokens::quick_estimate(s)
}

/// The schema verdict of an answer: Ok when valid, Err with where and why when
/// not (`at /items/0: ...`), None when no schema was asked for.
pub fn schema_verdict(c: &Completion) -> Option<Result<(), String>> {
    match (c.schema_valid?, &c.schema_error) {
        (true, _) => Some(Ok(())),
        (false, Some(e)) => Some(Err(format!(
            "at {}: {}",
            if e.path.is_empty() { "/" } else { &e.path },
            e.message
        ))),
        (false, None) => Some(Err("(no detail)".into())),
    }
}

/// Lines of a prompt echoed in a pane before the rest is folded.
pub const PROMPT_ECHO_LINES: usize = 3;
/// Characters of a prompt echoed in a pane before the rest is folded.
pub const PROMPT_ECHO_CHARS: usize = 160;

/// A prompt as a pane echoes it: whole when short, else its first lines
/// and a note of how much more there is (the whole prompt was sent, and
/// is in the export and the history).
pub fn fold_prompt(prompt: &str) -> String {
    let lines: Vec<&str> = prompt.lines().collect();
    let chars = prompt.chars().count();
    if lines.len() <= PROMPT_ECHO_LINES + 2 && chars <= PROMPT_ECHO_CHARS + 200 {
        return prompt.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    let mut shown_lines = 0;
    for l in lines.iter().take(PROMPT_ECHO_LINES) {
        let room = PROMPT_ECHO_CHARS.saturating_sub(used);
        if room == 0 {
            break;
        }
        let part: String = l.chars().take(room).collect();
        used += part.chars().count();
        let cut = part.chars().count() < l.chars().count();
        out.push_str(&part);
        if cut {
            out.push('…');
        }
        out.push('\n');
        shown_lines += 1;
        if cut {
            break;
        }
    }
    let more_lines = lines.len().saturating_sub(shown_lines);
    let words = prompt.split_whitespace().count();
    let more = if more_lines > 0 {
        format!("{more_lines} more lines, ")
    } else {
        String::new()
    };
    out.push_str(&format!(
        "⋯ prompt folded: {more}{words} words, {chars} characters in all (sent whole)"
    ));
    out
}

/// Where a pane's request is.
#[derive(Debug, Clone, PartialEq)]
pub enum PaneState {
    /// Nothing sent yet.
    Idle,
    /// Waiting for a concurrency or rate-limit slot.
    Queued,
    /// Sent; no token yet.
    Waiting,
    /// Tokens arriving.
    Streaming,
    /// A retry is scheduled.
    Retrying {
        /// Attempt about to be made.
        attempt: u32,
        /// Of how many.
        max: u32,
        /// When it goes.
        at: Instant,
        /// Why.
        reason: String,
    },
    /// Finished.
    Done,
    /// Replayed from the local cache.
    Cached,
    /// Failed (the error is in the transcript).
    Failed,
    /// Cancelled by the user.
    Cancelled,
}

impl PaneState {
    /// Whether a request is in flight.
    pub fn in_flight(&self) -> bool {
        matches!(
            self,
            PaneState::Queued
                | PaneState::Waiting
                | PaneState::Streaming
                | PaneState::Retrying { .. }
        )
    }

    /// The label for a narrow header: "retry 2/3 6.0s" for a retry.
    pub fn short_label(&self, now: Instant) -> String {
        match self {
            PaneState::Retrying {
                attempt, max, at, ..
            } => {
                let left = at.saturating_duration_since(now).as_secs_f64();
                format!("retry {attempt}/{max} {left:.1}s")
            }
            s => s.label(now),
        }
    }

    /// What the header says.
    pub fn label(&self, now: Instant) -> String {
        match self {
            PaneState::Idle => "ready".into(),
            PaneState::Queued => "queued".into(),
            PaneState::Waiting => "waiting".into(),
            PaneState::Streaming => "streaming".into(),
            PaneState::Retrying {
                attempt,
                max,
                at,
                reason,
            } => {
                let left = at.saturating_duration_since(now).as_secs_f64();
                let left = if left >= 10.0 {
                    format!("{left:.0} s")
                } else {
                    format!("{left:.1} s")
                };
                if reason.is_empty() {
                    format!("retrying {attempt}/{max} in {left}")
                } else {
                    format!("retrying {attempt}/{max} in {left} ({reason})")
                }
            }
            PaneState::Done => "done".into(),
            PaneState::Cached => "cached".into(),
            PaneState::Failed => "failed".into(),
            PaneState::Cancelled => "cancelled".into(),
        }
    }
}

/// Live figures of the current request.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// When it was sent.
    pub sent_at: Option<Instant>,
    /// First token.
    pub first_at: Option<Instant>,
    /// Last token (tokens/s is measured up to here).
    pub last_at: Option<Instant>,
    /// Usage so far (from the provider, when it sends any mid-stream).
    pub usage: Option<Usage>,
    /// Output tokens counted locally (characters / 4) until usage arrives.
    pub approx_out: u64,
    /// The final completion, once finished or failed.
    pub done: Option<Completion>,
}

impl Stats {
    /// Output tokens and whether the figure is exact (final and reported).
    /// While streaming it is the larger of what the provider reported so far
    /// and what was counted here: some providers report a provisional count
    /// at the start (Anthropic's `message_start` says 1) and the real one
    /// only at the end.
    pub fn out_tokens(&self) -> (u64, bool) {
        if let Some(c) = &self.done {
            // An unfinished stream's figure is the engine's running count.
            if c.usage_reported || c.usage.output_tokens > 0 {
                return (c.usage.output_tokens, c.usage_reported);
            }
            return (c.usage.output_tokens.max(self.approx_out), false);
        }
        let reported = self.usage.map_or(0, |u| u.output_tokens);
        (reported.max(self.approx_out), false)
    }

    /// Usage so far with the running output count in it (see `out_tokens`).
    pub fn live_usage(&self) -> Usage {
        let mut u = self.usage.unwrap_or_default();
        u.output_tokens = self.out_tokens().0;
        u
    }

    /// Time to first token in ms.
    pub fn ttft_ms(&self) -> Option<f64> {
        if let Some(t) = self.done.as_ref().and_then(|c| c.ttft_ms) {
            return Some(t);
        }
        Some(self.first_at?.duration_since(self.sent_at?).as_secs_f64() * 1e3)
    }

    /// Tokens per second after the first token.
    pub fn tokens_per_sec(&self, now: Instant) -> Option<f64> {
        let first = self.first_at?;
        let end = if self.done.is_some() {
            self.last_at.unwrap_or(now)
        } else {
            now
        };
        let secs = end.saturating_duration_since(first).as_secs_f64();
        let (n, _) = self.out_tokens();
        (secs > 0.05 && n > 1).then(|| n as f64 / secs)
    }

    /// Latency in ms (final, or elapsed so far).
    pub fn latency_ms(&self, now: Instant) -> Option<f64> {
        if let Some(c) = &self.done {
            return Some(c.latency_ms);
        }
        Some(now.saturating_duration_since(self.sent_at?).as_secs_f64() * 1e3)
    }
}

/// Prices a usage: (provider, model, usage, reported) -> (cost, provenance).
pub type QuoteFn<'a> = &'a dyn Fn(&str, &str, &Usage, bool) -> (Option<f64>, CostSource);

/// One target's output pane.
#[derive(Debug, Clone)]
pub struct Pane {
    /// Target as requested (`provider/model`, alias or tier).
    pub target: String,
    /// Provider and model actually serving it (from `Started`).
    pub serving: Option<(String, String)>,
    /// Where the request is.
    pub state: PaneState,
    /// A routing note: "fell back to X", "breaker open".
    pub note: Option<String>,
    /// The target a fallback moved this request to, while it runs.
    pub fell_back_to: Option<String>,
    /// The transcript.
    pub doc: Doc,
    /// Top row when the user scrolled; None follows the stream.
    pub scroll: Option<usize>,
    /// The conversation so far (committed turns).
    pub history: Vec<Message>,
    /// The messages of the last request sent (kept for retry).
    pub last_request: Option<Vec<Message>>,
    /// Block index where the current turn's output starts.
    pub turn_start: usize,
    /// Block index of the current turn's prompt (blind mode shows from here).
    pub turn_prompt: usize,
    answer_block: Option<usize>,
    thinking_block: Option<usize>,
    tool_blocks: Vec<(usize, usize)>,
    /// Answer text of the current turn.
    pub answer: String,
    /// Thinking text of the current turn.
    pub thinking: String,
    /// Live stats of the current turn.
    pub stats: Stats,
    /// The run and the target index in it, while one is current.
    pub run: Option<(u64, usize)>,
    /// Read-only (reopened from history).
    pub read_only: bool,
}

impl Pane {
    /// A fresh pane for `target`.
    pub fn new(target: impl Into<String>, styles: TextStyles) -> Self {
        Pane {
            target: target.into(),
            serving: None,
            state: PaneState::Idle,
            note: None,
            fell_back_to: None,
            doc: Doc::new(styles),
            scroll: None,
            history: Vec::new(),
            last_request: None,
            turn_start: 0,
            turn_prompt: 0,
            answer_block: None,
            thinking_block: None,
            tool_blocks: Vec::new(),
            answer: String::new(),
            thinking: String::new(),
            stats: Stats::default(),
            run: None,
            read_only: false,
        }
    }

    /// Begin a turn: show the prompt, reset the stats.
    pub fn begin_turn(
        &mut self,
        prompt: &str,
        messages: Vec<Message>,
        run: (u64, usize),
        now: Instant,
    ) {
        self.turn_prompt = self.doc.add(BlockKind::User, &fold_prompt(prompt));
        self.turn_start = self.doc.blocks().len();
        self.restart(messages, run, now);
    }

    /// Start (again) the current turn's request: output of the turn is dropped.
    pub fn restart(&mut self, messages: Vec<Message>, run: (u64, usize), now: Instant) {
        self.doc.truncate(self.turn_start);
        self.answer_block = None;
        self.thinking_block = None;
        self.tool_blocks.clear();
        self.answer.clear();
        self.thinking.clear();
        self.note = None;
        self.fell_back_to = None;
        self.serving = None;
        self.stats = Stats {
            sent_at: Some(now),
            ..Default::default()
        };
        self.last_request = Some(messages);
        self.run = Some(run);
        self.state = PaneState::Waiting;
    }

    /// Add a note line to the transcript.
    pub fn notice(&mut self, text: &str) {
        self.doc.add(BlockKind::Notice, text);
        self.turn_start = self.doc.blocks().len();
    }

    fn first_token(&mut self, now: Instant) {
        if self.stats.first_at.is_none() {
            self.stats.first_at = Some(now);
        }
        self.stats.last_at = Some(now);
        if !matches!(self.state, PaneState::Streaming) {
            self.state = PaneState::Streaming;
        }
    }

    /// Fold one engine event into the pane.
    pub fn apply(&mut self, ev: StreamEvent, now: Instant) {
        match ev {
            StreamEvent::Queued => self.state = PaneState::Queued,
            StreamEvent::Started {
                provider, model, ..
            } => {
                self.serving = Some((provider, model));
                if !matches!(self.state, PaneState::Streaming) {
                    self.state = PaneState::Waiting;
                }
            }
            StreamEvent::TextDelta(t) => {
                self.first_token(now);
                let b = match self.answer_block {
                    Some(b) => b,
                    None => {
                        let b = self.doc.add(BlockKind::Answer, "");
                        self.answer_block = Some(b);
                        b
                    }
                };
                self.stats.approx_out += approx_tokens(&t);
                self.answer.push_str(&t);
                self.doc.append(b, &t);
            }
            StreamEvent::ThinkingDelta(t) => {
                self.first_token(now);
                let b = match self.thinking_block {
                    Some(b) => b,
                    None => {
                        let b = self.doc.add(BlockKind::Thinking, "");
                        self.thinking_block = Some(b);
                        b
                    }
                };
                self.stats.approx_out += approx_tokens(&t);
                self.thinking.push_str(&t);
                self.doc.append(b, &t);
            }
            StreamEvent::ToolCallDelta {
                index,
                name,
                arguments,
                ..
            } => {
                self.first_token(now);
                let b = match self.tool_blocks.iter().find(|(i, _)| *i == index) {
                    Some((_, b)) => *b,
                    None => {
                        let b = self.doc.add(BlockKind::Tool, "⚙ tool call ");
                        self.tool_blocks.push((index, b));
                        b
                    }
                };
                if let Some(n) = name.filter(|n| !n.is_empty()) {
                    self.doc.append(b, &format!("{n} "));
                }
                self.stats.approx_out += approx_tokens(&arguments);
                self.doc.append(b, &arguments);
            }
            StreamEvent::Usage(u) => self.stats.usage = Some(u),
            StreamEvent::Retrying {
                attempt,
                max_attempts,
                wait,
                reason,
            } => {
                self.state = PaneState::Retrying {
                    attempt,
                    max: max_attempts,
                    at: now + wait,
                    reason,
                };
            }
            StreamEvent::FellBack { from, to, .. } => {
                self.note = Some(format!("fallback for {from}"));
                self.fell_back_to = Some(to);
                self.state = PaneState::Waiting;
            }
            StreamEvent::BreakerOpen { provider } => {
                self.note = Some(format!("breaker open ({provider})"));
            }
            StreamEvent::Finished(c) => self.finish(*c, now),
            StreamEvent::Failed(c) => self.finish(*c, now),
        }
    }

    fn finish(&mut self, c: Completion, now: Instant) {
        self.run = None;
        if self.stats.last_at.is_none() {
            self.stats.last_at = Some(now);
        }
        // Text the stream did not carry (a non-streamed or cached answer) still shows.
        if self.answer.is_empty() && !c.text.is_empty() {
            self.apply(StreamEvent::TextDelta(c.text.clone()), now);
        }
        if self.thinking.is_empty() && !c.thinking.is_empty() {
            self.apply(StreamEvent::ThinkingDelta(c.thinking.clone()), now);
        }
        if let Some(from) = &c.fell_back_from {
            if self.note.is_none() {
                self.note = Some(format!("fallback for {from}"));
            }
        }
        match &c.error {
            None => {
                self.state = if c.cached {
                    PaneState::Cached
                } else {
                    PaneState::Done
                };
                if let Some(msgs) = self.last_request.clone() {
                    let mut h = msgs;
                    let mut m = Message::assistant(c.text.clone());
                    m.tool_calls = c
                        .tool_calls
                        .iter()
                        .map(|t| crate::engine::request::ToolCallRef {
                            id: t.id.clone(),
                            name: t.name.clone(),
                            arguments: t.arguments_json(),
                        })
                        .collect();
                    h.push(m);
                    self.history = h;
                }
                self.show_verdicts(&c);
            }
            Some(crate::engine::EngineError::Cancelled) => {
                self.state = PaneState::Cancelled;
                self.doc.add(BlockKind::Notice, "cancelled");
            }
            Some(e) => {
                self.state = PaneState::Failed;
                self.doc.add(BlockKind::Error, &format!("✗ {e}"));
            }
        }
        self.doc.close_all();
        self.stats.done = Some(c);
    }

    /// The answer's schema verdict and each tool call's validity, in the transcript.
    fn show_verdicts(&mut self, c: &Completion) {
        for (j, t) in c.tool_calls.iter().enumerate() {
            let mark = t.validity_mark();
            match self.tool_blocks.get(j) {
                Some((_, b)) => {
                    let b = *b;
                    if !mark.is_empty() {
                        self.doc.append(b, &mark);
                    }
                }
                // Not streamed (a whole response, a cached answer): shown now.
                None => {
                    self.doc.add(
                        BlockKind::Tool,
                        &format!("⚙ tool call {} {}{mark}", t.name, t.arguments),
                    );
                }
            }
        }
        match schema_verdict(c) {
            Some(Ok(())) => {
                self.doc.add(BlockKind::Notice, "schema ✓ valid");
            }
            Some(Err(e)) => {
                self.doc
                    .add(BlockKind::Error, &format!("schema ✗ invalid {e}"));
            }
            None => {}
        }
    }

    /// Cost so far and its mark; `quote` prices a usage where the engine has not yet.
    pub fn cost(&self, quote: QuoteFn<'_>) -> (Option<f64>, CostSource) {
        if let Some(c) = &self.stats.done {
            return (c.cost_usd, c.cost_source);
        }
        let Some((p, m)) = &self.serving else {
            return (None, CostSource::Unknown);
        };
        // Until the final usage arrives the figure is an estimate (`~`),
        // whatever the provider reported so far.
        let u = self.stats.live_usage();
        let (c, s) = quote(p, m, &u, self.stats.usage.is_some());
        (
            c,
            if s == CostSource::Unknown {
                s
            } else {
                CostSource::Estimated
            },
        )
    }

    /// The model that wrote this answer when it is not the target asked
    /// for (a fallback answered): `provider/model`.
    pub fn answered_by(&self) -> Option<String> {
        if let Some(c) = &self.stats.done {
            return c
                .fell_back_from
                .as_ref()
                .map(|_| format!("{}/{}", c.provider, c.model));
        }
        if self.fell_back_to.is_some() {
            if let Some((p, m)) = &self.serving {
                return Some(format!("{p}/{m}"));
            }
        }
        self.fell_back_to.clone()
    }

    /// Who gets the credit: the model that answered, else the target.
    pub fn credited(&self) -> String {
        self.answered_by().unwrap_or_else(|| self.target.clone())
    }

    /// Finish reason, once finished.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.stats.done.as_ref().map(|c| c.finish_reason)
    }

    /// The answer text to copy or export (the final one when finished).
    pub fn answer_text(&self) -> &str {
        match &self.stats.done {
            Some(c) if !c.text.is_empty() => &c.text,
            _ => &self.answer,
        }
    }

    /// Elapsed since sent, for display.
    pub fn elapsed(&self, now: Instant) -> Duration {
        self.stats
            .sent_at
            .map(|s| now.saturating_duration_since(s))
            .unwrap_or_default()
    }
}
