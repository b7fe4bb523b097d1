//! The built-in offline provider: `mock/<model>`. No network, no key, no
//! cost; deterministic (the same model and request always give the same
//! answer, seeded from a stable hash of the model and the messages), and
//! streamed at a realistic pace so the faces can be shown, tested and
//! benchmarked without any account.
//!
//! The models answer the same prompt differently, so side-by-side and
//! consensus views have something to show:
//!
//! | model        | behaviour                                                      |
//! |--------------|----------------------------------------------------------------|
//! | `alpha`      | concise                                                        |
//! | `beta`       | verbose markdown: a heading, a list and a fenced code block    |
//! | `gamma`      | agrees with alpha in substance, phrased differently            |
//! | `contrarian` | dissents: a different number for arithmetic, "No" for yes/no   |
//! | `thinker`    | streams a thinking block first, then agrees with alpha         |
//! | `flaky`      | fails with HTTP 503 before the first token when the prompt     |
//! |              | contains "fail" (every attempt, so retries and fallbacks can   |
//! |              | be seen), otherwise answers like alpha                         |
//!
//! Every model also breaks its stream halfway with a network error when the
//! prompt contains "midstream", to show partial output followed by a failure.
//!
//! Every model can also judge: given the judge's request (the system prompt
//! of `engine::judge`, then `# Prompt` and `# Answer A`, `# Answer B`, ...)
//! it replies with the JSON verdict the judge asks for, decided the same way
//! every time: answers that end on the same number or yes/no agree, else
//! they are compared by the words they share; the best is the answer
//! closest to the others (the first of the majority).
//! So the judge key can be tried without any account.
//!
//! Prompts are understood just enough to be plausible: a simple arithmetic
//! expression (`2+2`, `12 * 7`, `10 divided by 4`) is computed, a yes/no
//! question (`Is ...?`, `Can ...?`) gets yes (no from the contrarian), and
//! anything else gets a paragraph built from the prompt's own words. With
//! tools offered and asked for, the models call one; after a tool result they
//! answer from it. JSON output is a small JSON object.
//!
//! Pace: `QUORUM_MOCK_TPS` tokens per second (default 80); `0` means no
//! pauses at all, for tests and benchmarks. The first token comes after
//! 150-400 ms at 80 tokens/s, scaled by the same factor.
//!
//! Usage is counted the way a provider would: input tokens are the
//! characters of all messages divided by four, output tokens the number of
//! chunks emitted (about one word each; thinking chunks included and also
//! counted as reasoning tokens).

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::engine::error::EngineError;
use crate::engine::event::{Delta, FinishReason, Usage};
use crate::engine::request::{ChatRequest, ResponseFormat, Role, Tool, ToolChoice};

/// Tokens per second when `QUORUM_MOCK_TPS` is unset.
pub const DEFAULT_TPS: f64 = 80.0;

/// A mock model.
#[derive(Debug, Clone, Copy)]
pub struct MockModel {
    /// Model name (after `mock/`).
    pub name: &'static str,
    /// One line saying what it does.
    pub description: &'static str,
}

const MODELS: &[MockModel] = &[
    MockModel {
        name: "alpha",
        description: "mock model (offline): concise answers",
    },
    MockModel {
        name: "beta",
        description:
            "mock model (offline): verbose markdown with a heading, a list and a code block",
    },
    MockModel {
        name: "gamma",
        description: "mock model (offline): agrees with alpha, phrased differently",
    },
    MockModel {
        name: "contrarian",
        description: "mock model (offline): dissents, giving a different final answer",
    },
    MockModel {
        name: "thinker",
        description: "mock model (offline): streams a thinking block, then the answer",
    },
    MockModel {
        name: "flaky",
        description:
            "mock model (offline): HTTP 503 when the prompt contains \"fail\", else like alpha",
    },
];

/// The mock models.
pub fn models() -> &'static [MockModel] {
    MODELS
}

/// Whether `name` is a mock model (`alpha` or `mock/alpha`).
pub fn is_mock_model(name: &str) -> bool {
    let name = name.strip_prefix("mock/").unwrap_or(name);
    MODELS.iter().any(|m| m.name == name)
}

/// A mock response in progress: every item is computed up front, each with
/// the pause that precedes it.
#[derive(Debug)]
pub struct MockStream {
    items: VecDeque<(Duration, Result<Delta, EngineError>)>,
}

impl MockStream {
    /// The next delta, after a realistic pause.
    pub async fn next(&mut self) -> Option<Result<Delta, EngineError>> {
        let (pause, item) = self.items.pop_front()?;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        Some(item)
    }
}

/// Start a mock response at the pace set by `QUORUM_MOCK_TPS`.
pub fn start(model: &str, req: &ChatRequest, stream: bool) -> Result<MockStream, EngineError> {
    let tps = tps_from(std::env::var("QUORUM_MOCK_TPS").ok().as_deref());
    start_with_rate(model, req, stream, tps)
}

/// Parse a `QUORUM_MOCK_TPS` value: a non-negative number, else the default.
pub fn tps_from(value: Option<&str>) -> f64 {
    match value.map(str::trim).and_then(|v| v.parse::<f64>().ok()) {
        Some(t) if t.is_finite() && t >= 0.0 => t,
        _ => DEFAULT_TPS,
    }
}

/// Start a mock response at `tps` tokens per second (0: no pauses).
pub fn start_with_rate(
    model: &str,
    req: &ChatRequest,
    stream: bool,
    tps: f64,
) -> Result<MockStream, EngineError> {
    let name = model.strip_prefix("mock/").unwrap_or(model);
    let Some(kind) = Kind::from_name(name) else {
        let names: Vec<&str> = MODELS.iter().map(|m| m.name).collect();
        return Err(EngineError::Config {
            message: format!(
                "no mock model {model:?}; the mock models are {}",
                names.join(", ")
            ),
        });
    };
    let seed = seed_for(name, req);
    let mut rng = Rng(seed);
    let plan = plan(kind, req, seed);
    Ok(schedule(plan, req, stream, tps, &mut rng))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Alpha,
    Beta,
    Gamma,
    Contrarian,
    Thinker,
    Flaky,
}

impl Kind {
    fn from_name(name: &str) -> Option<Kind> {
        Some(match name {
            "alpha" => Kind::Alpha,
            "beta" => Kind::Beta,
            "gamma" => Kind::Gamma,
            "contrarian" => Kind::Contrarian,
            "thinker" => Kind::Thinker,
            "flaky" => Kind::Flaky,
            _ => return None,
        })
    }
}

/// FNV-1a: a hash that is the same on every platform and Rust version (the
/// standard library's is not promised to be), so answers stay stable.
fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x0100_0000_01b3);
    }
}

fn seed_for(model: &str, req: &ChatRequest) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325;
    fnv(&mut h, model.as_bytes());
    for m in &req.messages {
        fnv(&mut h, &[0xff, m.role as u8]);
        fnv(&mut h, m.content.as_bytes());
        for c in &m.tool_calls {
            fnv(&mut h, c.name.as_bytes());
            fnv(&mut h, c.arguments.to_string().as_bytes());
        }
    }
    h
}

/// splitmix64: tiny, stable, good enough for choosing phrasings and pauses.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// A float in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str {
        options[self.below(options.len())]
    }
}

/// What a model will say, before pacing and limits.
#[derive(Debug, Default)]
struct Plan {
    thinking: String,
    text: String,
    tool_call: Option<(String, String, String)>,
    /// Fail before the first token.
    fail_first: Option<EngineError>,
    /// Break the stream after half the tokens.
    break_midway: bool,
}

fn plan(kind: Kind, req: &ChatRequest, seed: u64) -> Plan {
    let mut rng = Rng(seed ^ 0x5eed);
    let prompt = req.last_user_text();
    let lower = prompt.to_lowercase();
    let mut p = Plan {
        break_midway: lower.contains("midstream"),
        ..Default::default()
    };
    if kind == Kind::Flaky && lower.contains("fail") {
        p.fail_first = Some(EngineError::Server {
            status: 503,
            message: "mock/flaky: simulated 503 Service Unavailable (the prompt contains \"fail\")"
                .into(),
        });
        return p;
    }
    if let Some(verdict) = judge_verdict(req) {
        p.text = verdict;
        return p;
    }
    let after_tool = req.messages.last().filter(|m| m.role == Role::Tool);
    if after_tool.is_none() {
        if let Some(tool) = wanted_tool(req, &lower) {
            let args = tool_arguments(tool, prompt);
            let id = format!("call_mock_{:08x}", seed as u32);
            if kind == Kind::Thinker {
                p.thinking = format!(
                    "The user wants something the `{}` tool can provide. I should call it with {} rather than guess.",
                    tool.name, args
                );
            }
            if kind == Kind::Beta {
                p.text = format!("I'll use the `{}` tool for this.", tool.name);
            }
            p.tool_call = Some((id, tool.name.clone(), args));
            return p;
        }
    }
    let topic = if let Some(m) = after_tool {
        Topic::ToolResult {
            name: m.name.clone().unwrap_or_else(|| "tool".into()),
            content: m.content.trim().to_string(),
        }
    } else if let Some(a) = arithmetic(prompt) {
        Topic::Arithmetic(a)
    } else if is_yes_no(prompt) {
        Topic::YesNo(prompt.trim().to_string(), keywords(prompt, 4))
    } else {
        Topic::Open(topic_phrase(prompt), keywords(prompt, 6))
    };
    let json_out = !matches!(req.response_format, ResponseFormat::Text);
    if kind == Kind::Thinker {
        p.thinking = thinking_for(&topic, &mut rng);
    }
    p.text = if let ResponseFormat::JsonSchema { schema, .. } = &req.response_format {
        schema_answer(kind, &topic, schema)
    } else if json_out {
        json_answer(kind, &topic)
    } else {
        answer(kind, &topic, &mut rng)
    };
    p
}

/// The answers of a judge request, as (letter, text), when `req` is one.
fn judge_answers(req: &ChatRequest) -> Option<Vec<(String, String)>> {
    let judged = req
        .messages
        .iter()
        .any(|m| m.role == Role::System && m.content.contains("impartial judge"));
    if !judged {
        return None;
    }
    let body = req.last_user_text();
    let mut out: Vec<(String, String)> = Vec::new();
    for line in body.lines() {
        if let Some(l) = line.strip_prefix("# Answer ") {
            out.push((l.trim().to_string(), String::new()));
        } else if line.starts_with("# Prompt") || line.starts_with("Reply with the JSON") {
            continue;
        } else if let Some((_, text)) = out.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    (!out.is_empty()).then_some(out)
}

/// What an answer comes down to, when it is short: its last number, or yes / no.
fn answer_key(text: &str) -> Option<String> {
    if let Some(n) = numbers(text).last() {
        return Some(fmt_num(*n));
    }
    let lower = text.to_lowercase();
    let first = lower
        .split(|c: char| !c.is_alphanumeric())
        .find(|w| !w.is_empty())?;
    matches!(first, "yes" | "no").then(|| first.to_string())
}

fn word_set(text: &str) -> std::collections::BTreeSet<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 2)
        .map(str::to_string)
        .collect()
}

/// The mock judge's verdict (JSON text) on a judge request; None for other requests.
fn judge_verdict(req: &ChatRequest) -> Option<String> {
    let answers = judge_answers(req)?;
    let n = answers.len();
    let keys: Vec<Option<String>> = answers.iter().map(|(_, t)| answer_key(t)).collect();
    let (agreement, best, disagreements, summary) = if keys.iter().all(Option::is_some) {
        // Group by the final figure; the biggest group is the majority.
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, k) in keys.iter().flatten().enumerate() {
            match groups.iter_mut().find(|(g, _)| g == k) {
                Some((_, m)) => m.push(i),
                None => groups.push((k.clone(), vec![i])),
            }
        }
        let (key, members) = groups
            .iter()
            .max_by_key(|(_, m)| (m.len(), std::cmp::Reverse(m[0])))
            .cloned()
            .unwrap_or_default();
        let dis: Vec<String> = groups
            .iter()
            .filter(|(k, _)| *k != key)
            .flat_map(|(k, m)| {
                m.iter()
                    .map(|i| {
                        format!(
                            "Answer {} says {k} where the majority says {key}",
                            answers[*i].0
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let summary = format!(
            "{} of {n} answers agree on {key}; Answer {} states it plainly.",
            members.len(),
            answers[members[0]].0
        );
        (members.len() as f64 / n as f64, members[0], dis, summary)
    } else {
        // Open answers: how much of their vocabulary they share.
        let sets: Vec<_> = answers.iter().map(|(_, t)| word_set(t)).collect();
        let sim = |a: usize, b: usize| {
            let inter = sets[a].intersection(&sets[b]).count() as f64;
            let union = sets[a].union(&sets[b]).count().max(1) as f64;
            inter / union
        };
        let mean_to_others: Vec<f64> = (0..n)
            .map(|i| {
                let others: Vec<f64> = (0..n).filter(|j| *j != i).map(|j| sim(i, j)).collect();
                others.iter().sum::<f64>() / others.len().max(1) as f64
            })
            .collect();
        let best = (0..n)
            .max_by(|a, b| {
                mean_to_others[*a]
                    .total_cmp(&mean_to_others[*b])
                    .then(b.cmp(a))
            })
            .unwrap_or(0);
        let agreement = if n < 2 {
            1.0
        } else {
            mean_to_others.iter().sum::<f64>() / n as f64
        };
        let dis: Vec<String> = (0..n)
            .filter(|i| n > 1 && mean_to_others[*i] < 0.2)
            .map(|i| format!("Answer {} shares little with the others", answers[i].0))
            .collect();
        let summary = format!(
            "The answers overlap in part; Answer {} is closest to what they have in common.",
            answers[best].0
        );
        (agreement, best, dis, summary)
    };
    let v = json!({
        "agreement": (agreement * 100.0).round() / 100.0,
        "best": answers[best].0,
        "disagreements": disagreements,
        "summary": summary,
    });
    Some(v.to_string())
}

/// The tool a request asks for, if it should be called now.
fn wanted_tool<'a>(req: &'a ChatRequest, prompt_lower: &str) -> Option<&'a Tool> {
    if req.tools.is_empty() {
        return None;
    }
    let mentioned = || {
        req.tools.iter().find(|t| {
            t.name
                .split(['_', '-', '.'])
                .filter(|w| w.len() >= 3 && !matches!(*w, "get" | "set" | "the" | "for"))
                .any(|w| prompt_lower.contains(&w.to_lowercase()))
        })
    };
    match &req.tool_choice {
        ToolChoice::None => None,
        ToolChoice::Function(name) => req.tools.iter().find(|t| &t.name == name),
        ToolChoice::Required => mentioned().or(req.tools.first()),
        ToolChoice::Auto => mentioned(),
    }
}

/// Arguments for a tool from its JSON schema, filled from the prompt.
fn tool_arguments(tool: &Tool, prompt: &str) -> String {
    let props = tool.parameters["properties"].as_object();
    let required: Vec<&str> = tool.parameters["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let words = keywords(prompt, 8);
    // A capitalised word is the likeliest place or name ("Paris").
    let proper = prompt
        .split(|c: char| !c.is_alphanumeric())
        .skip(1)
        .find(|w| w.chars().next().is_some_and(char::is_uppercase))
        .map(str::to_string);
    let number = numbers(prompt).into_iter().next();
    let mut args = Map::new();
    if let Some(props) = props {
        for (name, schema) in props {
            if !required.is_empty() && !required.contains(&name.as_str()) {
                continue;
            }
            let v = match schema["type"].as_str().unwrap_or("string") {
                "integer" => json!(number.map(|n| n.round() as i64).unwrap_or(1)),
                "number" => json!(number.unwrap_or(1.0)),
                "boolean" => json!(true),
                "array" => json!(words.iter().take(2).collect::<Vec<_>>()),
                "object" => json!({}),
                _ => match schema["enum"].as_array().and_then(|e| e.first()) {
                    Some(first) => first.clone(),
                    None => json!(proper
                        .clone()
                        .or_else(|| words.last().cloned())
                        .unwrap_or_else(|| "example".into())),
                },
            };
            args.insert(name.clone(), v);
        }
    }
    Value::Object(args).to_string()
}

const STOPWORDS: &[&str] = &[
    "about", "above", "after", "again", "also", "because", "been", "before", "being", "between",
    "both", "could", "does", "doing", "each", "explain", "from", "have", "having", "here", "into",
    "just", "like", "more", "most", "much", "other", "over", "please", "should", "some", "such",
    "tell", "than", "that", "their", "them", "then", "there", "these", "they", "this", "those",
    "through", "very", "want", "what", "when", "where", "which", "while", "with", "would", "your",
    "answer", "give", "know", "make", "many", "only", "same", "whats", "will", "were",
];

/// Common verbs and request words: poor keywords ("converts", "explain").
const VERBS: &[&str] = &[
    "affect",
    "affects",
    "cause",
    "causes",
    "compare",
    "convert",
    "converts",
    "define",
    "describe",
    "differ",
    "differs",
    "happen",
    "happens",
    "help",
    "helps",
    "list",
    "mean",
    "means",
    "show",
    "summarise",
    "summarize",
    "work",
    "works",
    "write",
    "used",
    "uses",
];

/// The prompt's content words in order, as written, without repeats
/// (compared case-insensitively), without stopwords, verbs and numbers.
fn keywords(prompt: &str, max: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in prompt.split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '\'')) {
        let w = w.trim_matches(|c| c == '-' || c == '\'');
        let lower = w.to_lowercase();
        if w.chars().count() < 4
            || STOPWORDS.contains(&lower.as_str())
            || VERBS.contains(&lower.as_str())
            || w.parse::<f64>().is_ok()
        {
            continue;
        }
        if !out.iter().any(|o| o.to_lowercase() == lower) {
            out.push(w.to_string());
        }
        if out.len() == max {
            break;
        }
    }
    out
}

/// What a request is about, restated: "Explain how tides work." becomes
/// "how tides work".
fn topic_phrase(prompt: &str) -> String {
    const LEADS: &[&str] = &[
        "can you ",
        "could you ",
        "would you ",
        "please ",
        "explain ",
        "describe ",
        "tell me about ",
        "tell me ",
        "what is ",
        "what are ",
        "what's ",
        "give me ",
        "write ",
        "summarize ",
        "summarise ",
        "briefly ",
        "in detail ",
        "me ",
    ];
    let mut t = prompt.trim();
    loop {
        let lower = t.to_lowercase();
        match LEADS.iter().find(|l| lower.starts_with(*l)) {
            Some(l) => t = t[l.len()..].trim_start(),
            None => break,
        }
    }
    let t = t.trim_end_matches(['.', '?', '!', ' ', '\n']);
    let t = if t.is_empty() { prompt.trim() } else { t };
    // Lower-case a sentence-initial capital, not a name or an acronym.
    let mut words = t.split_whitespace();
    let first = words.next().unwrap_or("");
    let keep = first.chars().skip(1).any(char::is_uppercase) || first == "I";
    if keep {
        t.to_string()
    } else {
        let mut c = t.chars();
        match c.next() {
            Some(f) => f.to_lowercase().chain(c).collect(),
            None => String::new(),
        }
    }
}

fn is_yes_no(prompt: &str) -> bool {
    const AUX: &[&str] = &[
        "is", "are", "was", "were", "do", "does", "did", "can", "could", "should", "would", "will",
        "has", "have", "had", "am", "may", "must", "shall", "isn't", "aren't", "doesn't", "don't",
        "can't",
    ];
    let first = prompt
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_matches(|c: char| !c.is_alphanumeric() && c != '\'')
        .to_lowercase();
    AUX.contains(&first.as_str()) && prompt.trim_end().ends_with('?')
}

/// A simple binary expression found in a prompt.
#[derive(Debug, Clone, PartialEq)]
struct Arith {
    a: f64,
    op: char,
    b: f64,
    result: Option<f64>,
}

impl Arith {
    fn expr(&self) -> String {
        format!("{} {} {}", fmt_num(self.a), self.op, fmt_num(self.b))
    }
    fn result_text(&self) -> String {
        match self.result {
            Some(r) => fmt_num(r),
            None => "undefined".into(),
        }
    }
}

fn fmt_num(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 && x.abs() < 1e15 {
        format!("{}", x.round() as i64)
    } else {
        let s = format!("{x:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Op(char),
    Other,
}

fn tokenize(prompt: &str) -> Vec<Tok> {
    let lower = prompt.to_lowercase();
    let chars: Vec<char> = lower.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let unary_minus = c == '-'
            && chars.get(i + 1).is_some_and(char::is_ascii_digit)
            && !matches!(out.last(), Some(Tok::Num(_)));
        if c.is_ascii_digit() || unary_minus {
            let start = i;
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || chars[i] == ',' && chars.get(i + 1).is_some_and(char::is_ascii_digit)
                    || chars[i] == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
            {
                i += 1;
            }
            let s: String = chars[start..i].iter().filter(|c| **c != ',').collect();
            out.push(s.parse().map(Tok::Num).unwrap_or(Tok::Other));
            continue;
        }
        if c.is_alphabetic() {
            let start = i;
            while i < chars.len() && chars[i].is_alphabetic() {
                i += 1;
            }
            let w: String = chars[start..i].iter().collect();
            out.push(match w.as_str() {
                "plus" => Tok::Op('+'),
                "minus" => Tok::Op('-'),
                "times" | "x" => Tok::Op('×'),
                // "a divided by b": found by `arithmetic` from the text.
                "multiplied" | "divided" | "by" => continue,
                "over" => Tok::Op('÷'),
                _ => Tok::Other,
            });
            continue;
        }
        match c {
            '+' => out.push(Tok::Op('+')),
            '-' | '−' => out.push(Tok::Op('-')),
            '*' | '×' | '·' => out.push(Tok::Op('×')),
            '/' | '÷' => out.push(Tok::Op('÷')),
            '^' => out.push(Tok::Op('^')),
            c if c.is_whitespace() => {}
            _ => out.push(Tok::Other),
        }
        i += 1;
    }
    out
}

/// The first `a op b` in a prompt ("2+2", "12 * 7", "10 divided by 4").
fn arithmetic(prompt: &str) -> Option<Arith> {
    let lower = prompt.to_lowercase();
    let toks = tokenize(prompt);
    for w in toks.windows(3) {
        if let [Tok::Num(a), Tok::Op(op), Tok::Num(b)] = w {
            return Some(compute(*a, *op, *b));
        }
    }
    // "a divided by b", "a multiplied by b": no operator token between them.
    for w in toks.windows(2) {
        if let [Tok::Num(a), Tok::Num(b)] = w {
            if lower.contains("divided by") {
                return Some(compute(*a, '÷', *b));
            }
            if lower.contains("multiplied by") {
                return Some(compute(*a, '×', *b));
            }
        }
    }
    None
}

fn compute(a: f64, op: char, b: f64) -> Arith {
    let result = match op {
        '+' => Some(a + b),
        '-' => Some(a - b),
        '×' => Some(a * b),
        '÷' if b == 0.0 => None,
        '÷' => Some(a / b),
        '^' => Some(a.powf(b)).filter(|r| r.is_finite()),
        _ => None,
    };
    Arith { a, op, b, result }
}

fn numbers(prompt: &str) -> Vec<f64> {
    tokenize(prompt)
        .into_iter()
        .filter_map(|t| match t {
            Tok::Num(n) => Some(n),
            _ => None,
        })
        .collect()
}

#[derive(Debug)]
enum Topic {
    Arithmetic(Arith),
    /// The question, its key words.
    YesNo(String, Vec<String>),
    /// The restated topic, its key words.
    Open(String, Vec<String>),
    ToolResult {
        name: String,
        content: String,
    },
}

/// "a, b and c".
fn list(words: &[String]) -> String {
    match words {
        [] => "the question".into(),
        [a] => a.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

fn cap(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// A different number than `r`, deterministically.
fn dissent(r: f64, rng: &mut Rng) -> f64 {
    let offsets = [1.0, -1.0, 2.0, 10.0];
    let d = offsets[rng.below(offsets.len())];
    if r.fract() == 0.0 {
        r + d
    } else {
        (r * 1.1 * 1000.0).round() / 1000.0 + d / 10.0
    }
}

fn answer(kind: Kind, topic: &Topic, rng: &mut Rng) -> String {
    match topic {
        Topic::Arithmetic(a) => arithmetic_answer(kind, a, rng),
        Topic::YesNo(q, words) => yes_no_answer(kind, q, words, rng),
        Topic::Open(topic, words) => open_answer(kind, topic, words, rng),
        Topic::ToolResult { name, content } => tool_result_answer(kind, name, content),
    }
}

fn arithmetic_answer(kind: Kind, a: &Arith, rng: &mut Rng) -> String {
    let e = a.expr();
    let r = a.result_text();
    match kind {
        Kind::Alpha | Kind::Flaky => format!("{e} = {r}. The answer is **{r}**."),
        Kind::Gamma => {
            let lead = rng.pick(&[
                "Working it through",
                "Computing it directly",
                "Step by step",
            ]);
            format!("{lead}: {e} gives {r}. So the result is **{r}**.")
        }
        Kind::Thinker => format!("{e} = {r}.\n\nThe answer is **{r}**."),
        Kind::Beta => {
            let code = format!(
                "```python\nresult = {} {} {}\nprint(result)  # {r}\n```",
                fmt_num(a.a),
                match a.op {
                    '×' => "*".to_string(),
                    '÷' => "/".to_string(),
                    '^' => "**".to_string(),
                    o => o.to_string(),
                },
                fmt_num(a.b)
            );
            format!(
                "## Solving {e}\n\nThis is a single {} operation, so it can be evaluated directly.\n\n\
                 - Left operand: {}\n- Operator: `{}`\n- Right operand: {}\n- Result: {r}\n\n\
                 You can check it in Python:\n\n{code}\n\n**Answer: {r}**",
                op_name(a.op),
                fmt_num(a.a),
                a.op,
                fmt_num(a.b)
            )
        }
        Kind::Contrarian => {
            let other = match a.result {
                Some(x) => fmt_num(dissent(x, rng)),
                None => "0".into(),
            };
            let lead = rng.pick(&[
                "I'd dispute the obvious reading here.",
                "I come out somewhere else than the usual answer.",
                "Let me offer a dissenting view.",
            ]);
            format!("{lead} Taking {e} the way I read it, the result is **{other}**.")
        }
    }
}

fn op_name(op: char) -> &'static str {
    match op {
        '+' => "addition",
        '-' => "subtraction",
        '×' => "multiplication",
        '÷' => "division",
        _ => "exponentiation",
    }
}

fn yes_no_answer(kind: Kind, question: &str, words: &[String], rng: &mut Rng) -> String {
    match kind {
        Kind::Alpha | Kind::Flaky => {
            "Yes. By the usual understanding it holds, with only minor caveats.".into()
        }
        Kind::Gamma => {
            let lead = rng.pick(&["In short, yes", "Yes, generally", "Yes, by most accounts"]);
            format!(
                "{lead}: the common understanding supports it, and the exceptions are edge cases."
            )
        }
        Kind::Thinker => {
            "Yes. Weighing the usual view against the exceptions, the answer is yes.".into()
        }
        Kind::Beta => format!(
            "## Short answer\n\nYes.\n\n## Why\n\n- It matches the common understanding of {}.\n\
             - No widely accepted counter-example comes to mind.\n\
             - Edge cases exist, but they do not change the overall answer.\n\n\
             ```text\nquestion: {question}\nanswer:   yes\n```\n\n**Answer: yes**",
            list(words)
        ),
        Kind::Contrarian => {
            let lead = rng.pick(&["No.", "I'd say no.", "No, not as stated."]);
            format!("{lead} The usual answer glosses over too many exceptions to be a clear yes.")
        }
    }
}

/// A greeting or a prompt too short to say anything about.
fn is_small_talk(topic: &str, words: &[String]) -> bool {
    words.is_empty() || (words.len() == 1 && topic.chars().count() < 16)
}

fn open_answer(kind: Kind, topic: &str, words: &[String], rng: &mut Rng) -> String {
    if is_small_talk(topic, words) {
        return match kind {
            Kind::Beta => "## Hello\n\nThis is a mock model. Try a question such as:\n\n\
                - an arithmetic one (`What is 2+2?`)\n- a yes/no one (`Is the sky blue?`)\n\
                - an open one (`Explain how tides work.`)\n\n```text\nquorum ask -m mock/beta \"What is 2+2?\"\n```"
                .into(),
            Kind::Contrarian => "Hello. Fair warning: I am the mock model that disagrees.".into(),
            Kind::Gamma => "Hi there! Ask a question and the mock models will compare answers.".into(),
            _ => "Hello! Ask a question to see the mock models answer side by side.".into(),
        };
    }
    let k1 = words[0].as_str();
    let k2 = words.get(1).map(String::as_str).unwrap_or("the context");
    let three = list(&words[..words.len().min(3)]);
    match kind {
        Kind::Alpha | Kind::Flaky => {
            let tail = rng.pick(&[
                "most of the rest follows from it.",
                "add detail only where it helps.",
                "the rest depends on what you need it for.",
            ]);
            format!("Here is the short version of {topic}: it comes down to {three}. Start with {k1}; {tail}")
        }
        Kind::Gamma => {
            let lead = rng.pick(&["Put simply", "In a nutshell", "Broadly speaking"]);
            format!("{lead}, {topic} is mostly about {three}. Once {k1} is clear, the other parts fall into place.")
        }
        Kind::Thinker => format!(
            "The core of {topic} is {k1}, together with {k2}. With those two in place, the rest follows."
        ),
        Kind::Beta => {
            let mut items = String::new();
            let roles = ["where to start", "how it connects to the rest", "what changes the outcome", "common misconceptions"];
            for (w, role) in words.iter().take(4).zip(roles) {
                items.push_str(&format!("- **{}**: {role}\n", cap(w)));
            }
            let mut tree = String::new();
            let n = words.len().min(4);
            for (i, w) in words.iter().take(n).enumerate() {
                let branch = if i + 1 == n { "└─" } else { "├─" };
                tree.push_str(&format!("  {branch} {w}\n"));
            }
            format!(
                "## {}\n\nThere are several parts to {topic}; here is an overview.\n\n{items}\n\
                 How the pieces relate:\n\n```text\n{topic}\n{tree}```\n\n\
                 In short, start with {k1} and build from there.",
                cap(topic)
            )
        }
        Kind::Contrarian => {
            let lead = rng.pick(&[
                "I'd push back on the usual framing",
                "Contrary to the common view",
                "I disagree with the standard take",
            ]);
            format!(
                "{lead} of {topic}: {k1} gets too much credit, and {k2} matters more than most explanations admit."
            )
        }
    }
}

fn tool_result_answer(kind: Kind, name: &str, content: &str) -> String {
    let short: String = content.chars().take(200).collect();
    match kind {
        Kind::Beta => format!(
            "## Result from `{name}`\n\n- Source: the `{name}` tool\n- Output: {short}\n\n```json\n{short}\n```"
        ),
        Kind::Contrarian => {
            format!("The `{name}` tool says {short}, but I would double-check that before relying on it.")
        }
        Kind::Gamma => format!("According to `{name}`: {short}."),
        _ => format!("The `{name}` tool returned: {short}"),
    }
}

fn thinking_for(topic: &Topic, rng: &mut Rng) -> String {
    let check = rng.pick(&["Let me double-check", "Checking once more", "Verifying"]);
    match topic {
        Topic::Arithmetic(a) => format!(
            "The question is an arithmetic expression: {}. This is {}. {}: {} = {}. \
             Nothing else is asked, so the answer is just the number.",
            a.expr(),
            op_name(a.op),
            check,
            a.expr(),
            a.result_text()
        ),
        Topic::YesNo(q, _) => format!(
            "This is a yes/no question: \"{q}\". I should weigh the common understanding against exceptions. \
             {check}: the exceptions are edge cases, so the answer is yes."
        ),
        Topic::Open(topic, words) if is_small_talk(topic, words) => format!(
            "A greeting rather than a question. I should say hello and suggest what to ask. {check}: nothing else is needed."
        ),
        Topic::Open(topic, words) => format!(
            "The question is about {topic}. The key terms are {}. The most useful answer connects the main ideas \
             rather than listing facts. {check} that the answer stays short and on topic.",
            list(words)
        ),
        Topic::ToolResult { name, .. } => format!(
            "The `{name}` tool has answered. I should report its result plainly. {check} that I quote it correctly."
        ),
    }
}

fn json_answer(kind: Kind, topic: &Topic) -> String {
    let mut rng = Rng(0);
    let answer = match topic {
        Topic::Arithmetic(a) => match (kind, a.result) {
            (Kind::Contrarian, Some(r)) => num_value(dissent(r, &mut rng)),
            (_, Some(r)) => num_value(r),
            (_, None) => Value::Null,
        },
        Topic::YesNo(..) => json!(kind != Kind::Contrarian),
        Topic::Open(topic, _) => json!(topic),
        Topic::ToolResult { content, .. } => json!(content),
    };
    json!({"answer": answer}).to_string()
}

/// An answer shaped by a JSON Schema: every listed property filled with a
/// value of its type (the arithmetic result for numbers, the topic for
/// strings). The contrarian follows schemas loosely: it gives its first
/// property a value of the wrong type, so a comparison of the mock models
/// shows both verdicts.
fn schema_answer(kind: Kind, topic: &Topic, schema: &Value) -> String {
    let base: Value = serde_json::from_str(&json_answer(kind, topic))
        .ok()
        .and_then(|v: Value| v.get("answer").cloned())
        .unwrap_or(Value::Null);
    let mut v = fill_schema(schema, &base, 0);
    if kind == Kind::Contrarian {
        if let Some((_, first)) = v.as_object_mut().and_then(|o| o.iter_mut().next()) {
            *first = match first {
                Value::String(_) => json!(0),
                _ => json!("not sure"),
            };
        }
    }
    v.to_string()
}

fn fill_schema(s: &Value, base: &Value, depth: usize) -> Value {
    if depth > 8 {
        return Value::Null;
    }
    if let Some(e) = s
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return e.clone();
    }
    if let Some(c) = s.get("const") {
        return c.clone();
    }
    let ty = match s.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if s.get("properties").is_some() => "object",
        _ => "string",
    };
    let text = match base {
        Value::String(t) => t.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    match ty {
        "object" => {
            let mut o = serde_json::Map::new();
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (k, p) in props {
                    o.insert(k.clone(), fill_schema(p, base, depth + 1));
                }
            }
            Value::Object(o)
        }
        "array" => {
            let item = s.get("items").unwrap_or(&Value::Null);
            json!([fill_schema(item, base, depth + 1)])
        }
        "integer" => json!(base.as_f64().map_or(1, |x| x.round() as i64)),
        "number" => base.as_f64().map_or(json!(1), |x| json!(x)),
        "boolean" => json!(base.as_bool().unwrap_or(true)),
        "null" => Value::Null,
        _ => json!(text),
    }
}

/// A JSON number, integral when the value is whole.
fn num_value(x: f64) -> Value {
    if (x - x.round()).abs() < 1e-9 && x.abs() < 1e15 {
        json!(x.round() as i64)
    } else {
        json!(x)
    }
}

/// Split text into ~one-word chunks, each a run of whitespace followed by a
/// word (long words are cut into pieces), as tokens arrive from real models.
/// The chunks concatenate back to the text exactly.
fn chunks(text: &str) -> Vec<String> {
    const LONG: usize = 10;
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut word_len = 0;
    for ch in text.chars() {
        if ch.is_whitespace() {
            if word_len > 0 {
                out.push(std::mem::take(&mut cur));
                word_len = 0;
            }
            cur.push(ch);
        } else {
            if word_len == LONG {
                out.push(std::mem::take(&mut cur));
                word_len = 0;
            }
            cur.push(ch);
            word_len += 1;
        }
    }
    if !cur.is_empty() {
        match out.last_mut() {
            Some(last) if word_len == 0 => last.push_str(&cur),
            _ => out.push(cur),
        }
    }
    out
}

fn input_tokens(req: &ChatRequest) -> u64 {
    let chars: usize = req
        .messages
        .iter()
        .map(|m| {
            m.content.chars().count()
                + m.tool_calls
                    .iter()
                    .map(|c| c.name.len() + c.arguments.to_string().len())
                    .sum::<usize>()
        })
        .sum();
    (chars as u64).div_ceil(4).max(1)
}

/// Turn a plan into timed deltas: first-token latency, per-token pauses,
/// the `max_tokens` limit, stop sequences, usage and the finish.
fn schedule(plan: Plan, req: &ChatRequest, stream: bool, tps: f64, rng: &mut Rng) -> MockStream {
    let per_token = if tps > 0.0 { 1.0 / tps } else { 0.0 };
    let scale = if tps > 0.0 { DEFAULT_TPS / tps } else { 0.0 };
    let first = Duration::from_secs_f64((0.150 + 0.250 * rng.unit()) * scale);
    let mut items: VecDeque<(Duration, Result<Delta, EngineError>)> = VecDeque::new();
    if let Some(e) = plan.fail_first {
        items.push_back((first, Err(e)));
        return MockStream { items };
    }

    let mut text = plan.text;
    if let Some(cut) = req
        .stop
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
    {
        text.truncate(cut);
    }
    let limit = req.max_tokens.map(|m| m as usize).unwrap_or(usize::MAX);
    let thinking = chunks(&plan.thinking);
    let answer = chunks(&text);
    let args = plan
        .tool_call
        .as_ref()
        .map(|(_, _, a)| chunks(a))
        .unwrap_or_default();
    let total = thinking.len() + answer.len() + args.len();
    let emitted = total.min(limit);
    let break_at = plan.break_midway.then_some(emitted / 2);

    // (delta, is a token)
    let mut deltas: Vec<(Delta, bool)> = Vec::new();
    let mut n = 0;
    let mut reasoning = 0;
    for c in thinking {
        if n == emitted {
            break;
        }
        deltas.push((Delta::Thinking(c), true));
        n += 1;
        reasoning += 1;
    }
    for c in answer {
        if n == emitted {
            break;
        }
        deltas.push((Delta::Text(c), true));
        n += 1;
    }
    if let Some((id, name, _)) = &plan.tool_call {
        if n < emitted || args.is_empty() {
            deltas.push((
                Delta::ToolCall {
                    index: 0,
                    id: Some(id.clone()),
                    name: Some(name.clone()),
                    arguments: String::new(),
                },
                false,
            ));
        }
        for c in args {
            if n == emitted {
                break;
            }
            deltas.push((
                Delta::ToolCall {
                    index: 0,
                    id: None,
                    name: None,
                    arguments: c,
                },
                true,
            ));
            n += 1;
        }
    }
    let (reason, raw) = if emitted < total {
        (FinishReason::Length, "length")
    } else if plan.tool_call.is_some() {
        (FinishReason::ToolCalls, "tool_calls")
    } else {
        (FinishReason::Stop, "stop")
    };
    let usage = Usage {
        input_tokens: input_tokens(req),
        output_tokens: n as u64,
        reasoning_tokens: reasoning,
        ..Default::default()
    };

    if let Some(at) = break_at {
        // Keep the tokens before the break, then fail like a dropped connection.
        let mut tokens = 0;
        let keep = deltas
            .iter()
            .position(|(_, is_token)| {
                if *is_token {
                    tokens += 1;
                }
                tokens > at
            })
            .unwrap_or(deltas.len());
        deltas.truncate(keep);
    }

    if stream {
        let mut pause = first;
        for (d, is_token) in deltas {
            items.push_back((pause, Ok(d)));
            // A token takes 1/tps, with jitter, a little longer after a
            // sentence or line, as real decoders are not metronomes.
            pause = if is_token {
                let jitter = 0.6 + 0.8 * rng.unit();
                Duration::from_secs_f64(per_token * jitter)
            } else {
                Duration::ZERO
            };
        }
    } else {
        // The whole answer at once, after the time it took to generate.
        let gen = first + Duration::from_secs_f64(per_token * n as f64);
        let mut merged: Vec<Delta> = Vec::new();
        for (d, _) in deltas {
            match (merged.last_mut(), d) {
                (Some(Delta::Text(a)), Delta::Text(b)) => a.push_str(&b),
                (Some(Delta::Thinking(a)), Delta::Thinking(b)) => a.push_str(&b),
                (
                    Some(Delta::ToolCall { arguments: a, .. }),
                    Delta::ToolCall {
                        arguments: b,
                        id: None,
                        ..
                    },
                ) => a.push_str(&b),
                (_, d) => merged.push(d),
            }
        }
        let mut pause = gen;
        for d in merged {
            items.push_back((pause, Ok(d)));
            pause = Duration::ZERO;
        }
    }
    if break_at.is_some() {
        items.push_back((
            Duration::ZERO,
            Err(EngineError::Network {
                message:
                    "mock: simulated connection reset midstream (the prompt contains \"midstream\")"
                        .into(),
            }),
        ));
        return MockStream { items };
    }
    items.push_back((Duration::ZERO, Ok(Delta::Usage(usage))));
    items.push_back((
        Duration::ZERO,
        Ok(Delta::Finish {
            reason,
            raw: raw.into(),
        }),
    ));
    MockStream { items }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::event::{Accumulator, Completion};
    use crate::engine::request::Message;

    /// Run a mock with no pauses and fold it.
    async fn run(model: &str, req: &ChatRequest) -> (Completion, Vec<Delta>, Option<EngineError>) {
        let mut s = start_with_rate(model, req, true, 0.0).unwrap();
        let mut acc = Accumulator::default();
        let mut deltas = Vec::new();
        let mut err = None;
        while let Some(item) = s.next().await {
            match item {
                Ok(d) => {
                    acc.push(&d);
                    deltas.push(d);
                }
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        (acc.finish(), deltas, err)
    }

    async fn text(model: &str, prompt: &str) -> String {
        run(model, &ChatRequest::from_prompt(prompt)).await.0.text
    }

    #[tokio::test]
    async fn every_mock_can_judge_deterministically() {
        use crate::engine::consensus::AnswerInput;
        use crate::engine::judge::{parse_verdict, plan};
        let answers = vec![
            AnswerInput::new("mock/alpha", "2 + 2 = 4."),
            AnswerInput::new("mock/contrarian", "I make it 5."),
            AnswerInput::new("mock/gamma", "The sum is 4."),
        ];
        let judge = plan("What is 2+2?", &answers);
        let letters: Vec<String> = judge.key.iter().map(|k| k.letter.clone()).collect();
        for m in ["alpha", "thinker", "contrarian"] {
            let (c, _, err) = run(m, &judge.request).await;
            assert!(err.is_none());
            let v = parse_verdict(&c.text, &letters).expect("a verdict");
            assert_eq!(v.best.as_deref(), Some("A"), "{}", c.text);
            assert_eq!(v.agreement, Some(0.67));
            assert_eq!(v.disagreements.len(), 1, "{v:?}");
            assert!(v.disagreements[0].contains("Answer B says 5"), "{v:?}");
            // The same request, the same verdict.
            assert_eq!(run(m, &judge.request).await.0.text, c.text);
        }
        // Open answers are compared by the words they share.
        let open = plan(
            "Explain tides.",
            &[
                AnswerInput::new(
                    "a",
                    "Tides come from the moon's gravity pulling the oceans.",
                ),
                AnswerInput::new("b", "The moon's gravity pulls the oceans, making tides."),
                AnswerInput::new("c", "Bananas are yellow."),
            ],
        );
        let (c, _, _) = run("alpha", &open.request).await;
        let v = parse_verdict(&c.text, &["A".into(), "B".into(), "C".into()]).unwrap();
        assert!(matches!(v.best.as_deref(), Some("A" | "B")), "{v:?}");
        assert!(
            v.disagreements.iter().any(|d| d.contains("Answer C")),
            "{v:?}"
        );
        // Other requests are not judged.
        assert!(!text("alpha", "What is 2+2?").await.contains("agreement"));
    }

    #[test]
    fn models_are_listed_and_labelled() {
        let names: Vec<&str> = models().iter().map(|m| m.name).collect();
        assert_eq!(
            names,
            ["alpha", "beta", "gamma", "contrarian", "thinker", "flaky"]
        );
        for m in models() {
            assert!(m.description.contains("mock"), "{}", m.name);
            assert!(is_mock_model(m.name) && is_mock_model(&format!("mock/{}", m.name)));
        }
        assert!(!is_mock_model("gpt-4o"));
        let e = start_with_rate("omega", &ChatRequest::from_prompt("hi"), true, 0.0).unwrap_err();
        assert_eq!(e.kind(), "config");
        assert!(e.to_string().contains("alpha"));
    }

    #[test]
    fn tps_parsing() {
        assert_eq!(tps_from(None), DEFAULT_TPS);
        assert_eq!(tps_from(Some("0")), 0.0);
        assert_eq!(tps_from(Some(" 250 ")), 250.0);
        assert_eq!(tps_from(Some("fast")), DEFAULT_TPS);
        assert_eq!(tps_from(Some("-3")), DEFAULT_TPS);
    }

    #[tokio::test]
    async fn deterministic_per_model_and_request() {
        let req = ChatRequest {
            messages: vec![
                Message::system("Be helpful."),
                Message::user("Explain how photosynthesis converts sunlight into chemical energy."),
            ],
            ..Default::default()
        };
        let mut texts = Vec::new();
        for m in models() {
            let (a, da, _) = run(m.name, &req).await;
            let (b, db, _) = run(m.name, &req).await;
            assert_eq!(da, db, "{}", m.name);
            assert_eq!(a.text, b.text);
            assert!(!a.text.is_empty(), "{}", m.name);
            texts.push(a.text);
        }
        // alpha, beta, gamma, contrarian, thinker all say something different.
        for i in 0..5 {
            for j in i + 1..5 {
                assert_ne!(texts[i], texts[j], "{i} vs {j}");
            }
        }
        // The answer is built from the prompt's words.
        assert!(
            texts[0].to_lowercase().contains("photosynthesis"),
            "{}",
            texts[0]
        );
        // A different request gives a different answer.
        assert_ne!(text("alpha", "Explain how tides work.").await, texts[0]);
    }

    #[tokio::test]
    async fn usage_counts_chunks_and_prompt_characters() {
        let prompt = "Describe the water cycle in three sentences.";
        let req = ChatRequest {
            messages: vec![Message::system("Answer plainly."), Message::user(prompt)],
            ..Default::default()
        };
        let (c, deltas, err) = run("beta", &req).await;
        assert!(err.is_none());
        let chars = "Answer plainly.".len() + prompt.len();
        assert_eq!(c.usage.input_tokens, chars.div_ceil(4) as u64);
        let text_deltas = deltas
            .iter()
            .filter(|d| matches!(d, Delta::Text(_)))
            .count();
        assert_eq!(c.usage.output_tokens, text_deltas as u64);
        assert_eq!(chunks(&c.text).len(), text_deltas);
        assert!(text_deltas > 20);
        assert_eq!(c.finish_reason, FinishReason::Stop);
        assert_eq!(c.raw_finish_reason, "stop");
        assert!(c.usage_reported);
        // Beta is markdown with a heading, a list and a fenced code block.
        assert!(c.text.starts_with("## "), "{}", c.text);
        assert!(c.text.contains("\n- "));
        assert!(c.text.contains("```"));
    }

    #[tokio::test]
    async fn max_tokens_stops_with_length() {
        let mut req =
            ChatRequest::from_prompt("Explain the history of the printing press in Europe.");
        let (full, _, _) = run("beta", &req).await;
        assert!(full.usage.output_tokens > 7);
        req.max_tokens = Some(7);
        let (c, deltas, _) = run("beta", &req).await;
        assert_eq!(c.finish_reason, FinishReason::Length);
        assert_eq!(c.raw_finish_reason, "length");
        assert_eq!(c.usage.output_tokens, 7);
        assert_eq!(
            deltas
                .iter()
                .filter(|d| matches!(d, Delta::Text(_)))
                .count(),
            7
        );
        assert!(full.text.starts_with(&c.text) && c.text.len() < full.text.len());
        // Thinking counts against the limit too.
        req.max_tokens = Some(3);
        let (c, _, _) = run("thinker", &req).await;
        assert_eq!(c.usage.output_tokens, 3);
        assert_eq!(c.usage.reasoning_tokens, 3);
        assert!(c.text.is_empty() && !c.thinking.is_empty());
        assert_eq!(c.finish_reason, FinishReason::Length);
    }

    #[tokio::test]
    async fn thinker_thinks_first() {
        let (c, deltas, _) = run("thinker", &ChatRequest::from_prompt("What is 2+2?")).await;
        let first_text = deltas
            .iter()
            .position(|d| matches!(d, Delta::Text(_)))
            .unwrap();
        let last_thinking = deltas
            .iter()
            .rposition(|d| matches!(d, Delta::Thinking(_)))
            .unwrap();
        assert!(last_thinking < first_text);
        assert!(c.thinking.contains("2 + 2 = 4"), "{}", c.thinking);
        assert!(c.text.contains("**4**"));
        assert!(c.usage.reasoning_tokens > 0 && c.usage.reasoning_tokens < c.usage.output_tokens);
        // Other models do not think.
        assert!(run("alpha", &ChatRequest::from_prompt("What is 2+2?"))
            .await
            .0
            .thinking
            .is_empty());
    }

    #[tokio::test]
    async fn arithmetic_agreement_and_dissent() {
        for m in ["alpha", "beta", "gamma", "thinker", "flaky"] {
            let t = text(m, "What is 2+2?").await;
            assert!(
                t.contains("**4**") || t.contains("**Answer: 4**"),
                "{m}: {t}"
            );
        }
        let t = text("contrarian", "What is 2+2?").await;
        assert!(!t.contains("**4**"), "{t}");
        let n: f64 = t
            .rsplit("**")
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no bold number in {t}"));
        assert_ne!(n, 4.0);
        assert!(text("alpha", "what's 12 * 7").await.contains("**84**"));
        assert!(text("gamma", "Compute 10 divided by 4, please")
            .await
            .contains("**2.5**"));
        assert!(text("alpha", "What is 3 - -2?").await.contains("**5**"));
        assert!(text("alpha", "What is 1/0?").await.contains("undefined"));
    }

    #[tokio::test]
    async fn yes_no_questions() {
        assert!(text("alpha", "Is the sky blue?").await.starts_with("Yes"));
        assert!(text("gamma", "Is the sky blue?")
            .await
            .to_lowercase()
            .contains("yes"));
        assert!(text("contrarian", "Is the sky blue?")
            .await
            .starts_with("No"));
    }

    #[tokio::test]
    async fn flaky_fails_before_the_first_token_on_fail() {
        let (c, deltas, err) = run("flaky", &ChatRequest::from_prompt("Please fail now")).await;
        assert!(deltas.is_empty() && c.text.is_empty());
        let e = err.unwrap();
        assert_eq!(e.status(), Some(503));
        assert!(e.is_retryable());
        // Every attempt fails: deterministic.
        assert!(run("flaky", &ChatRequest::from_prompt("Please fail now"))
            .await
            .2
            .is_some());
        let (c, _, err) = run("flaky", &ChatRequest::from_prompt("What is 2+2?")).await;
        assert!(err.is_none() && c.text.contains("**4**"));
    }

    #[tokio::test]
    async fn midstream_breaks_after_partial_output() {
        let (c, _, err) = run(
            "alpha",
            &ChatRequest::from_prompt("Explain midstream failures of streaming APIs"),
        )
        .await;
        assert!(!c.text.is_empty());
        assert_eq!(err.unwrap().kind(), "network");
    }

    #[tokio::test]
    async fn tools_are_called_then_results_used() {
        let tool = Tool {
            name: "get_weather".into(),
            description: "Weather for a city".into(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}),
        };
        let mut req = ChatRequest::from_prompt("What's the weather in Paris?");
        req.tools = vec![tool];
        let (c, _, _) = run("alpha", &req).await;
        assert_eq!(c.finish_reason, FinishReason::ToolCalls);
        assert_eq!(c.tool_calls.len(), 1);
        assert_eq!(c.tool_calls[0].name, "get_weather");
        assert_eq!(c.tool_calls[0].arguments_json(), json!({"city": "Paris"}));
        assert!(c.tool_calls[0].id.starts_with("call_mock_"));
        assert_eq!(
            c.usage.output_tokens as usize,
            chunks(&c.tool_calls[0].arguments).len()
        );

        req.tool_choice = ToolChoice::None;
        assert!(run("alpha", &req).await.0.tool_calls.is_empty());

        req.tool_choice = ToolChoice::Auto;
        let mut asst = Message::assistant("");
        asst.tool_calls = vec![crate::engine::request::ToolCallRef {
            id: c.tool_calls[0].id.clone(),
            name: "get_weather".into(),
            arguments: c.tool_calls[0].arguments_json(),
        }];
        req.messages.push(asst);
        req.messages.push(Message::tool_result(
            &c.tool_calls[0].id,
            "get_weather",
            "18 C, sunny",
        ));
        let (c, _, _) = run("alpha", &req).await;
        assert!(c.tool_calls.is_empty());
        assert!(c.text.contains("18 C, sunny"), "{}", c.text);
    }

    #[tokio::test]
    async fn json_format_and_stop_sequences() {
        let mut req = ChatRequest::from_prompt("What is 6*7?");
        req.response_format = ResponseFormat::JsonObject;
        let v: Value = serde_json::from_str(&run("gamma", &req).await.0.text).unwrap();
        assert_eq!(v, json!({"answer": 42}));
        // A schema shapes the answer; the contrarian breaks its first property.
        req.response_format = ResponseFormat::JsonSchema {
            name: "r".into(),
            schema: json!({"type": "object", "required": ["result", "unit"],
                "properties": {"result": {"type": "integer"}, "unit": {"type": "string"},
                               "steps": {"type": "array", "items": {"type": "string"}}}}),
        };
        let v: Value = serde_json::from_str(&run("gamma", &req).await.0.text).unwrap();
        assert_eq!(v, json!({"result": 42, "unit": "42", "steps": ["42"]}));
        let v: Value = serde_json::from_str(&run("contrarian", &req).await.0.text).unwrap();
        assert_eq!(v["result"], json!("not sure"));
        let mut req = ChatRequest::from_prompt("What is 6*7?");
        req.stop = vec![".".into()];
        let (c, _, _) = run("alpha", &req).await;
        assert_eq!(c.text, "6 × 7 = 42");
        assert_eq!(c.finish_reason, FinishReason::Stop);
    }

    #[tokio::test]
    async fn non_streamed_is_one_piece_with_the_same_content() {
        let req = ChatRequest::from_prompt("What is 2+2?");
        let mut s = start_with_rate("thinker", &req, false, 0.0).unwrap();
        let mut deltas = Vec::new();
        while let Some(d) = s.next().await {
            deltas.push(d.unwrap());
        }
        let mut acc = Accumulator::default();
        deltas.iter().for_each(|d| acc.push(d));
        let c = acc.finish();
        let (streamed, _, _) = run("thinker", &req).await;
        assert_eq!(c.text, streamed.text);
        assert_eq!(c.thinking, streamed.thinking);
        assert_eq!(c.usage, streamed.usage);
        assert_eq!(deltas.len(), 4, "{deltas:?}"); // thinking, text, usage, finish
    }

    #[test]
    fn paced_at_the_token_rate() {
        // The schedule itself, checked exactly (no clock involved).
        let req = ChatRequest::from_prompt("Explain the history of the printing press in Europe.");
        let s = start_with_rate("beta", &req, true, DEFAULT_TPS).unwrap();
        let pauses: Vec<Duration> = s.items.iter().map(|(p, _)| *p).collect();
        let ttft = pauses[0];
        assert!(
            ttft >= Duration::from_millis(150) && ttft <= Duration::from_millis(400),
            "{ttft:?}"
        );
        let tokens = s
            .items
            .iter()
            .filter(|(_, d)| matches!(d, Ok(Delta::Text(_))))
            .count();
        let gen: Duration = pauses[1..].iter().sum();
        let expected = Duration::from_secs_f64((tokens - 1) as f64 / DEFAULT_TPS);
        assert!(
            gen >= expected.mul_f64(0.8) && gen <= expected.mul_f64(1.2),
            "{gen:?} vs {expected:?}"
        );
        // Twice the rate: half the latency and half the generation time.
        let fast = start_with_rate("beta", &req, true, 2.0 * DEFAULT_TPS).unwrap();
        let (f0, _) = &fast.items[0];
        assert!((f0.as_secs_f64() * 2.0 - ttft.as_secs_f64()).abs() < 1e-6);
        // Rate 0: no pauses at all.
        let none = start_with_rate("beta", &req, true, 0.0).unwrap();
        assert!(none.items.iter().all(|(p, _)| p.is_zero()));
        // Not streamed: one wait for the whole generation, then everything.
        let whole = start_with_rate("beta", &req, false, DEFAULT_TPS).unwrap();
        assert!(whole.items[0].0 >= ttft + expected.mul_f64(0.9));
        assert!(whole.items.iter().skip(1).all(|(p, _)| p.is_zero()));
    }

    #[tokio::test]
    async fn pauses_are_really_slept() {
        let req = ChatRequest::from_prompt("What is 2+2?");
        let mut s = start_with_rate("alpha", &req, true, 400.0).unwrap();
        let planned: Duration = s.items.iter().map(|(p, _)| *p).sum();
        assert!(planned >= Duration::from_millis(30), "{planned:?}");
        let t0 = std::time::Instant::now();
        while s.next().await.is_some() {}
        assert!(t0.elapsed() >= planned, "{:?} < {planned:?}", t0.elapsed());
    }

    #[tokio::test]
    async fn served_through_an_attempt() {
        use crate::engine::provider::http::{build_client, Attempt, CallContext, Timeouts};
        use crate::engine::provider::{ProviderKind, ProviderSpec};
        let client = build_client(Duration::from_secs(1)).unwrap();
        let spec = ProviderSpec::new("mock", ProviderKind::Mock);
        let req = ChatRequest::from_prompt("What is 2+2?");
        let mut a = Attempt::start(
            &client,
            &spec,
            "alpha",
            &req,
            true,
            Timeouts::default(),
            &CallContext::default(),
        )
        .await
        .unwrap();
        let mut acc = Accumulator::default();
        while let Some(d) = a.next().await {
            acc.push(&d.unwrap());
        }
        let c = acc.finish();
        assert_eq!(c.text, "2 + 2 = 4. The answer is **4**.");
        assert_eq!(c.finish_reason, FinishReason::Stop);
        let e = Attempt::start(
            &client,
            &spec,
            "nope",
            &req,
            true,
            Timeouts::default(),
            &CallContext::default(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), "config");
    }

    #[test]
    fn chunking_round_trips() {
        for t in [
            "",
            "one",
            "Hello, world!\n\n## Head\n- a\n  - b  ",
            "supercalifragilisticexpialidocious x",
            "  lead",
        ] {
            let c = chunks(t);
            assert_eq!(c.concat(), t);
            assert!(c.iter().all(|p| !p.is_empty()));
            assert!(c
                .iter()
                .all(|p| p.chars().filter(|c| !c.is_whitespace()).count() <= 10));
        }
        assert_eq!(chunks("Hello big world").len(), 3);
    }

    #[test]
    fn arithmetic_parser() {
        let r = |s: &str| arithmetic(s).and_then(|a| a.result);
        assert_eq!(r("What is 2+2?"), Some(4.0));
        assert_eq!(r("2 plus 3"), Some(5.0));
        assert_eq!(r("7 times 6"), Some(42.0));
        assert_eq!(r("9 multiplied by 3"), Some(27.0));
        assert_eq!(r("2^10"), Some(1024.0));
        assert_eq!(r("1,000 + 1"), Some(1001.0));
        assert_eq!(r("1.5 * 2"), Some(3.0));
        assert_eq!(r("5 - 8"), Some(-3.0));
        assert_eq!(arithmetic("What is the capital of France?"), None);
        assert_eq!(arithmetic("In 1999 there were 3 cats"), None);
    }
}
