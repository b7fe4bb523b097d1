//! Consensus: turn N finished answers into a verdict a person can trust at a
//! glance (do the models agree, on what, and who dissents), plus the word
//! diff of two answers, repeat-N stability and the blind-vote leaderboard.
//!
//! Everything here is pure: no network, no UI, no clock. The only IO is the
//! small [`JsonlVoteStore`] at the end, kept apart behind [`VoteStore`] so the
//! SQLite ledger can take it over.
//!
//! # How agreement is decided
//! 1. Every answer is *normalised* ([`normalize`]): markdown markers dropped,
//!    lower case, punctuation removed (decimal points and minus signs of
//!    numbers kept), whitespace collapsed.
//! 2. Every pair of answered targets gets two similarities, both reported:
//!    token-level F1 (bag of words, order-free, forgiving of rephrasing) and
//!    the sequence ratio of `similar` over the same tokens (order-aware,
//!    `2·matches / (len_a + len_b)`). Their mean is the pair's `score`.
//! 3. The prompt decides whether a *closed* answer can be extracted
//!    ([`QuestionKind::detect`]): a number (`4`, `4.0`, `four` are one value),
//!    yes/no, a choice letter A–E, or the final line. If any answer yields one,
//!    answers are clustered by that value and the agreement score is the share
//!    of answered targets in the largest cluster (0 when no two agree).
//!    Otherwise answers are clustered by text `score` (average linkage,
//!    [`DEFAULT_THRESHOLD`]) and the agreement score is the mean pairwise
//!    `score`.
//! 4. Failed and empty answers are listed as such, never put in a cluster and
//!    never counted as agreement (nor in the denominator).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::event::Completion;

/// Pair `score` at or above which two open-ended answers are clustered together.
///
/// Why 0.45: the score is the mean of token F1 and the sequence ratio.
/// Measured on the pinned examples in this module's tests: answers on a
/// different point (TCP handshake vs UDP; Rust ownership vs Go's collector)
/// score 0.13–0.25, since they share only function words; paraphrases of the
/// same point keep most content words (F1 0.6–0.9) but reorder them (ratio
/// 0.44–0.49), scoring 0.53–0.69; copies with small edits (code differing in
/// one line) score above 0.9. 0.45 sits between the first two groups with a
/// margin on each side. Lexical similarity cannot see that "Paris" and "Rome"
/// are different facts in otherwise equal sentences: closed questions are
/// compared by extracted answer instead, and the judge is there for the rest.
pub const DEFAULT_THRESHOLD: f64 = 0.45;

/// Answers longer than this many tokens are compared on their first
/// `MAX_TOKENS` tokens only, which bounds the quadratic cost of the diff.
const MAX_TOKENS: usize = 4000;

/// Time budget of one sequence diff; `similar` returns an approximation after it.
const DIFF_TIMEOUT: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------

/// One answer to analyse: the part of a [`Completion`] consensus looks at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerInput {
    /// Who answered (usually the target, `provider/model`).
    pub label: String,
    /// The answer text.
    pub text: String,
    /// The request failed; its (partial) text is ignored.
    #[serde(default)]
    pub failed: bool,
    /// Why it failed, for the report.
    #[serde(default)]
    pub error: Option<String>,
}

impl AnswerInput {
    /// An answered target.
    pub fn new(label: impl Into<String>, text: impl Into<String>) -> Self {
        AnswerInput {
            label: label.into(),
            text: text.into(),
            failed: false,
            error: None,
        }
    }

    /// A failed target.
    pub fn failed(label: impl Into<String>, error: impl Into<String>) -> Self {
        AnswerInput {
            label: label.into(),
            text: String::new(),
            failed: true,
            error: Some(error.into()),
        }
    }

    /// From a finished request. A cancelled or failed request counts as failed
    /// even if some text streamed first: a half answer must not vote. When the
    /// model answered only with tool calls, they stand in for the text so two
    /// models calling the same tool with the same arguments agree.
    pub fn from_completion(label: impl Into<String>, c: &Completion) -> Self {
        let failed = c.error.is_some();
        let mut text = c.text.clone();
        if text.trim().is_empty() && !c.tool_calls.is_empty() {
            text = c
                .tool_calls
                .iter()
                .map(|t| format!("{}({})", t.name, t.arguments_json()))
                .collect::<Vec<_>>()
                .join("\n");
        }
        if text.trim().is_empty() {
            if let Some(r) = &c.refusal {
                text = r.clone();
            }
        }
        AnswerInput {
            label: label.into(),
            text,
            failed,
            error: c.error.as_ref().map(|e| e.to_string()),
        }
    }
}

impl From<&Completion> for AnswerInput {
    /// Labelled `provider/model`.
    fn from(c: &Completion) -> Self {
        let label = if c.provider.is_empty() {
            c.model.clone()
        } else {
            format!("{}/{}", c.provider, c.model)
        };
        AnswerInput::from_completion(label, c)
    }
}

/// What kind of answer the prompt asks for; decides how a short final answer
/// is extracted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuestionKind {
    /// A number: `4`, `4.0`, `four` and `2 + 2 = 4` are one value.
    Number,
    /// Yes or no.
    YesNo,
    /// A choice letter A–E.
    Choice,
    /// A short answer: the final line of each answer.
    FinalLine,
    /// Open-ended: compared by text similarity only.
    Open,
}

impl QuestionKind {
    /// Guess from the prompt. Explicit instructions ("answer with a number",
    /// "yes or no", listed options) win over the question's shape ("how
    /// many", "is it ...?").
    pub fn detect(prompt: &str) -> QuestionKind {
        let p = prompt.to_lowercase();
        let has = |needles: &[&str]| needles.iter().any(|n| p.contains(n));
        if has(&[
            "with a number",
            "with one number",
            "with a single number",
            "with just a number",
            "with only a number",
            "only the number",
            "just the number",
            "give a number",
            "numeric answer",
            "numerical answer",
        ]) {
            return QuestionKind::Number;
        }
        if has(&["yes or no", "yes/no", "true or false", "true/false"]) {
            return QuestionKind::YesNo;
        }
        if has(&[
            "multiple choice",
            "multiple-choice",
            "which option",
            "the letter",
            "choice letter",
        ]) || count_listed_options(prompt) >= 2
        {
            return QuestionKind::Choice;
        }
        // "Is 2+2 equal to 4?" is a yes/no question: the last question's
        // shape wins over numbers in it.
        if last_question_is_polar(&p) {
            return QuestionKind::YesNo;
        }
        if has(&["how many", "how much", "calculate", "compute", "evaluate"]) || has_arithmetic(&p)
        {
            return QuestionKind::Number;
        }
        if has(&[
            "one word",
            "single word",
            "one line",
            "final answer",
            "short answer",
            "answer only",
            "only the answer",
            "just the answer",
            "only answer",
            "reply with only",
            "answer with only",
            "respond with only",
        ]) {
            return QuestionKind::FinalLine;
        }
        QuestionKind::Open
    }

    /// Whether a short answer is extracted for this kind.
    pub fn is_closed(self) -> bool {
        self != QuestionKind::Open
    }
}

/// Lines such as `A) ...`, `(B) ...`, `C. ...`, `d: ...`.
fn count_listed_options(prompt: &str) -> usize {
    let mut seen = [false; 5];
    for line in prompt.lines() {
        let t = line.trim_start().trim_start_matches(['-', '*', ' ']);
        let b = t.as_bytes();
        let letter = match b {
            [b'(', l, b')', ..] => Some(*l),
            [l, b')' | b'.' | b':', rest @ ..]
                if rest.is_empty() || rest[0] == b' ' || rest[0] == b'\t' =>
            {
                Some(*l)
            }
            _ => None,
        };
        if let Some(l) = letter {
            let l = l.to_ascii_uppercase();
            if (b'A'..=b'E').contains(&l) {
                seen[(l - b'A') as usize] = true;
            }
        }
    }
    seen.iter().filter(|s| **s).count()
}

/// `2+2`, `3 * 7`, `10 / 4`: a digit, an operator, a digit. `-` and `/`
/// count only when the prompt asks "what is", so dates and ratios in prose
/// do not turn a question numeric.
fn has_arithmetic(p: &str) -> bool {
    let chars: Vec<char> = p.chars().filter(|c| !c.is_whitespace()).collect();
    let asks_value = p.contains("what is") || p.contains("what's");
    chars.windows(3).any(|w| {
        w[0].is_ascii_digit()
            && w[2].is_ascii_digit()
            && match w[1] {
                '+' | '*' | '×' | '÷' | '^' => true,
                '-' | '/' => asks_value,
                _ => false,
            }
    })
}

/// The last question of the prompt starts with an auxiliary verb and offers
/// no alternatives ("Is it red or blue?" is not a yes/no question).
fn last_question_is_polar(p: &str) -> bool {
    let Some(q_end) = p.rfind('?') else {
        return false;
    };
    let head = &p[..q_end];
    let start = head
        .rfind(['.', '!', '?', '\n', ':'])
        .map(|i| i + 1)
        .unwrap_or(0);
    let question = head[start..].trim();
    let first = question.split_whitespace().next().unwrap_or("");
    const AUX: &[&str] = &[
        "is", "are", "am", "was", "were", "do", "does", "did", "can", "could", "should", "shall",
        "will", "would", "has", "have", "had", "may", "might", "must", "isn't", "aren't",
        "doesn't", "don't", "won't", "can't",
    ];
    AUX.contains(&first) && !question.contains(" or ")
}

// ---------------------------------------------------------------------------
// Normalisation and similarity
// ---------------------------------------------------------------------------

/// Normalise for comparison: markdown markers (fences, headings, emphasis,
/// bullets, link targets) dropped, lower case, punctuation replaced by spaces
/// (a decimal point or thousands comma between digits and a leading minus of
/// a number kept, apostrophes dropped so "don't" stays one word), whitespace
/// collapsed to single spaces.
pub fn normalize(text: &str) -> String {
    let stripped = strip_markdown(text);
    let lower = stripped.to_lowercase();
    let chars: Vec<char> = lower.chars().collect();
    let mut out = String::with_capacity(lower.len());
    for (i, &c) in chars.iter().enumerate() {
        let prev = if i > 0 { chars[i - 1] } else { ' ' };
        let next = chars.get(i + 1).copied().unwrap_or(' ');
        if c.is_alphanumeric() {
            out.push(c);
        } else if (c == '.' || c == ',') && prev.is_ascii_digit() && next.is_ascii_digit() {
            if c == '.' {
                out.push('.');
            }
        } else if c == '-' && next.is_ascii_digit() && !prev.is_alphanumeric() {
            out.push('-');
        } else if c == '\'' || c == '’' {
            // don't -> dont
        } else {
            out.push(' ');
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Drop markdown syntax but keep the words: fence lines lose their backticks
/// and language tag, headings/quotes/bullets lose their markers, `[t](url)`
/// keeps `t`, emphasis and inline-code markers vanish.
fn strip_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            out.push('\n');
            continue;
        }
        let mut t = t
            .trim_start_matches('#')
            .trim_start_matches('>')
            .trim_start();
        for bullet in ["- ", "* ", "+ "] {
            if let Some(rest) = t.strip_prefix(bullet) {
                t = rest;
                break;
            }
        }
        out.push_str(&strip_links(t));
        out.push('\n');
    }
    out.replace(['*', '`', '~'], "").replace("__", " ")
}

/// `[text](url)` -> `text`.
fn strip_links(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find("](") else { break };
        let Some(paren) = after[close + 2..].find(')') else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str(&after[..close]);
        rest = &after[close + 2 + paren + 1..];
    }
    out.push_str(rest);
    out
}

/// Similarity of one pair of answers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Similarity {
    /// Token-level F1 over the normalised words (bag of words).
    pub token_f1: f64,
    /// `similar`'s sequence ratio over the same words (order-aware).
    pub sequence_ratio: f64,
    /// Mean of the two: what open-ended clustering and agreement use.
    pub score: f64,
}

/// Compare two texts after [`normalize`]. Two empty texts are identical.
pub fn similarity(a: &str, b: &str) -> Similarity {
    let na = normalize(a);
    let nb = normalize(b);
    similarity_of_tokens(&tokens(&na), &tokens(&nb))
}

fn tokens(normalised: &str) -> Vec<&str> {
    normalised
        .split(' ')
        .filter(|t| !t.is_empty())
        .take(MAX_TOKENS)
        .collect()
}

fn similarity_of_tokens(a: &[&str], b: &[&str]) -> Similarity {
    if a.is_empty() && b.is_empty() {
        return Similarity {
            token_f1: 1.0,
            sequence_ratio: 1.0,
            score: 1.0,
        };
    }
    let f1 = token_f1(a, b);
    let ratio = similar::TextDiff::configure()
        .algorithm(similar::Algorithm::Myers)
        .timeout(DIFF_TIMEOUT)
        .diff_slices(a, b)
        .ratio() as f64;
    Similarity {
        token_f1: f1,
        sequence_ratio: ratio,
        score: (f1 + ratio) / 2.0,
    }
}

/// SQuAD-style token F1: overlap counted with multiplicity.
fn token_f1(a: &[&str], b: &[&str]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let mut counts: HashMap<&str, isize> = HashMap::new();
    for t in a {
        *counts.entry(t).or_default() += 1;
    }
    let mut common = 0usize;
    for t in b {
        if let Some(c) = counts.get_mut(t) {
            if *c > 0 {
                *c -= 1;
                common += 1;
            }
        }
    }
    if common == 0 {
        return 0.0;
    }
    let p = common as f64 / b.len() as f64;
    let r = common as f64 / a.len() as f64;
    2.0 * p * r / (p + r)
}

// ---------------------------------------------------------------------------
// Final-answer extraction
// ---------------------------------------------------------------------------

/// A short final answer extracted from one answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalAnswer {
    /// Canonical value compared across answers: `4`, `0.5`, `yes`, `B`, or
    /// the normalised final line.
    pub value: String,
    /// What to show: the canonical value, or the final line as written.
    pub display: String,
}

/// Extract the short answer of `kind` from `text`; `None` when there is none
/// (or `kind` is [`QuestionKind::Open`]).
pub fn extract_final_answer(text: &str, kind: QuestionKind) -> Option<FinalAnswer> {
    match kind {
        QuestionKind::Number => extract_number(text).map(|n| {
            let v = format_number(n);
            FinalAnswer {
                value: v.clone(),
                display: v,
            }
        }),
        QuestionKind::YesNo => extract_yes_no(text).map(|v| FinalAnswer {
            value: v.to_string(),
            display: v.to_string(),
        }),
        QuestionKind::Choice => extract_choice(text).map(|c| FinalAnswer {
            value: c.to_string(),
            display: c.to_string(),
        }),
        QuestionKind::FinalLine => extract_final_line(text),
        QuestionKind::Open => None,
    }
}

/// Phrases after which the answer itself follows.
const MARKERS: &[&str] = &[
    "final answer",
    "answer is",
    "answer:",
    "answer =",
    "result is",
    "result:",
    "equals",
    "is equal to",
    "comes to",
    "total is",
    "total:",
];

/// The text after the last answer marker (to the end of its line), if any.
fn after_last_marker(text: &str) -> Option<&str> {
    let lower = text.to_lowercase();
    // Lower-casing can change byte offsets for non-ASCII text; only trust
    // offsets when lengths agree.
    if lower.len() != text.len() {
        return None;
    }
    let mut best: Option<usize> = None;
    for m in MARKERS {
        if let Some(i) = lower.rfind(m) {
            let end = i + m.len();
            if best.is_none_or(|b| end > b) {
                best = Some(end);
            }
        }
    }
    if let Some(i) = lower.rfind('=') {
        if best.is_none_or(|b| i + 1 > b) {
            best = Some(i + 1);
        }
    }
    let rest = text.get(best?..)?;
    let line_end = rest.find('\n').unwrap_or(rest.len());
    Some(&rest[..line_end])
}

/// Spans between `**` pairs and inside `\boxed{...}`.
fn emphasised(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let parts: Vec<&str> = text.split("**").collect();
    for (i, p) in parts.iter().enumerate() {
        if i % 2 == 1 && i + 1 < parts.len() {
            out.push(*p);
        }
    }
    let mut rest = text;
    while let Some(i) = rest.find("\\boxed{") {
        let after = &rest[i + 7..];
        let end = after.find('}').unwrap_or(after.len());
        out.push(&after[..end]);
        rest = &after[end..];
    }
    out
}

/// Numbers in a text, in order: digits (`4`, `-3.5`, `1,000`, `$5`, `40%`)
/// and number words (`four`, `twenty-one`, `one hundred and five`). A bare
/// `one` is skipped when `prose` is set, since "no one" and "the right one"
/// are not numbers.
fn numbers_in(text: &str, prose: bool) -> Vec<f64> {
    let n = normalize(text);
    let toks: Vec<&str> = n.split(' ').filter(|t| !t.is_empty()).collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if let Some(v) = parse_digits(toks[i]) {
            out.push(v);
            i += 1;
            continue;
        }
        if let Some((v, used)) = parse_number_words(&toks[i..]) {
            let bare_one = used == 1 && (toks[i] == "one" || toks[i] == "zero");
            if !(prose && bare_one) {
                out.push(v);
            }
            i += used;
            continue;
        }
        i += 1;
    }
    out
}

fn parse_digits(tok: &str) -> Option<f64> {
    let t = tok.trim_end_matches(|c: char| c.is_alphabetic() && tok.len() > 1);
    // "4th", "3rd", "10x" -> the number; "abc" stays out.
    if t.is_empty() || !t.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    if !t
        .chars()
        .enumerate()
        .all(|(i, c)| c.is_ascii_digit() || c == '.' || (c == '-' && i == 0))
    {
        return None;
    }
    t.parse::<f64>().ok().filter(|v| v.is_finite())
}

fn word_value(w: &str) -> Option<(u64, bool)> {
    const UNITS: [&str; 20] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ];
    const TENS: [&str; 8] = [
        "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    ];
    if let Some(i) = UNITS.iter().position(|u| *u == w) {
        return Some((i as u64, false));
    }
    if let Some(i) = TENS.iter().position(|u| *u == w) {
        return Some((20 + 10 * i as u64, false));
    }
    match w {
        "hundred" => Some((100, true)),
        "thousand" => Some((1_000, true)),
        "million" => Some((1_000_000, true)),
        "billion" => Some((1_000_000_000, true)),
        _ => None,
    }
}

/// Parse a run of number words at the start of `toks` (hyphens were already
/// turned into spaces by [`normalize`]). Returns the value and tokens used.
fn parse_number_words(toks: &[&str]) -> Option<(f64, usize)> {
    let mut total: u64 = 0;
    let mut current: u64 = 0;
    let mut used = 0;
    let mut any = false;
    let mut i = 0;
    while i < toks.len() {
        let w = toks[i];
        if w == "and" && any && toks.get(i + 1).and_then(|n| word_value(n)).is_some() {
            i += 1;
            continue;
        }
        let Some((v, scale)) = word_value(w) else {
            break;
        };
        if scale && !any {
            break;
        }
        any = true;
        if !scale {
            current += v;
        } else if v == 100 {
            current = current.max(1) * 100;
        } else {
            total += current.max(1) * v;
            current = 0;
        }
        i += 1;
        used = i;
    }
    any.then(|| ((total + current) as f64, used))
}

fn extract_number(text: &str) -> Option<f64> {
    if text.trim().is_empty() {
        return None;
    }
    if let Some(rest) = after_last_marker(text) {
        if let Some(v) = numbers_in(rest, false).first() {
            return Some(*v);
        }
    }
    if let Some(v) = emphasised(text)
        .iter()
        .rev()
        .find_map(|e| numbers_in(e, false).last().copied())
    {
        return Some(v);
    }
    let all = numbers_in(text, true);
    let first = *all.first()?;
    if all.iter().all(|v| *v == first) {
        return Some(first);
    }
    // Answer-first style ("4. Because ...") puts the number on a short first line.
    let first_line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    if normalize(first_line).split(' ').count() <= 6 {
        if let Some(v) = numbers_in(first_line, true).first() {
            return Some(*v);
        }
    }
    text.lines()
        .rev()
        .find_map(|l| numbers_in(l, true).last().copied())
}

/// `4.0` -> `4`, `0.50` -> `0.5`, `-0` -> `0`.
pub fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        let i = v as i64;
        return i.to_string();
    }
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

fn yes_no_word(w: &str) -> Option<&'static str> {
    match w {
        "yes" | "true" => Some("yes"),
        "no" | "false" => Some("no"),
        _ => None,
    }
}

fn extract_yes_no(text: &str) -> Option<&'static str> {
    for e in emphasised(text).iter().rev() {
        let n = normalize(e);
        if let Some(v) = n.split(' ').next().and_then(yes_no_word) {
            return Some(v);
        }
    }
    if let Some(rest) = after_last_marker(text) {
        if let Some(v) = normalize(rest).split(' ').next().and_then(yes_no_word) {
            return Some(v);
        }
    }
    let n = normalize(text);
    let mut words = n.split(' ');
    if let Some(v) = words.next().and_then(yes_no_word) {
        return Some(v);
    }
    n.split(' ').find_map(|w| match w {
        "yes" => Some("yes"),
        "no" => Some("no"),
        _ => None,
    })
}

fn choice_letter(token: &str, upper_only: bool) -> Option<char> {
    let t = token.trim_matches(|c: char| "()[]*.:,;!`\"'".contains(c));
    let mut cs = t.chars();
    let c = cs.next()?;
    if cs.next().is_some() {
        return None;
    }
    if upper_only && !c.is_ascii_uppercase() {
        return None;
    }
    let u = c.to_ascii_uppercase();
    ('A'..='E').contains(&u).then_some(u)
}

fn extract_choice(text: &str) -> Option<char> {
    let lower = text.to_lowercase();
    if lower.len() == text.len() {
        // "answer is (b)", "option C", "choice: d"
        let mut best: Option<(usize, char)> = None;
        for m in [
            "answer is",
            "answer:",
            "option",
            "choice",
            "answer would be",
        ] {
            let mut from = 0;
            while let Some(i) = lower[from..].find(m) {
                let at = from + i + m.len();
                let rest = text.get(at..).unwrap_or("");
                let rest = rest.trim_start_matches([' ', ':', '*']);
                if let Some(tok) = rest.split_whitespace().next() {
                    let wrapped = tok.starts_with('(') || tok.ends_with(')');
                    let upper_only = !(wrapped || m == "option" || m == "choice");
                    if let Some(c) = choice_letter(tok, upper_only) {
                        if best.is_none_or(|(b, _)| at > b) {
                            best = Some((at, c));
                        }
                    }
                }
                from = at;
            }
        }
        if let Some((_, c)) = best {
            return Some(c);
        }
    }
    for e in emphasised(text).iter().rev() {
        if let Some(c) = e
            .split_whitespace()
            .next()
            .and_then(|t| choice_letter(t, false))
        {
            if e.split_whitespace().count() <= 4 {
                return Some(c);
            }
        }
    }
    let trimmed = text.trim();
    if let Some(first) = trimmed.split_whitespace().next() {
        // "B", "B.", "B)", "(B) because ..." but not the article "A good ...".
        let rest_empty = trimmed.split_whitespace().nth(1).is_none();
        let marked = first.len() > 1 && !first.ends_with(',');
        if rest_empty || marked {
            if let Some(c) = choice_letter(first, true) {
                return Some(c);
            }
        }
    }
    let mut in_parens: Vec<char> = Vec::new();
    let b = text.as_bytes();
    for i in 0..b.len().saturating_sub(2) {
        if b[i] == b'(' && b[i + 2] == b')' && (b'A'..=b'E').contains(&b[i + 1]) {
            let c = b[i + 1] as char;
            if !in_parens.contains(&c) {
                in_parens.push(c);
            }
        }
    }
    if in_parens.len() == 1 {
        return Some(in_parens[0]);
    }
    None
}

fn extract_final_line(text: &str) -> Option<FinalAnswer> {
    let stripped = strip_markdown(text);
    let line = stripped.lines().rev().find(|l| !normalize(l).is_empty())?;
    let mut shown = line.trim();
    let lower = shown.to_lowercase();
    for p in [
        "final answer:",
        "answer:",
        "final answer is",
        "the answer is",
    ] {
        if lower.starts_with(p) && lower.len() == shown.len() {
            shown = shown[p.len()..].trim();
            break;
        }
    }
    let shown = shown.trim_end_matches(['.', '!']).trim();
    let value = normalize(shown);
    (!value.is_empty()).then(|| FinalAnswer {
        value,
        display: shown.to_string(),
    })
}

/// Whether two final answers of `kind` agree. Closed values must be equal;
/// final lines also agree when the shorter (at most 4 words) appears as a
/// run of words in the longer ("Shakespeare" vs "It was William Shakespeare").
fn final_answers_agree(a: &FinalAnswer, b: &FinalAnswer, kind: QuestionKind) -> bool {
    if a.value == b.value {
        return true;
    }
    if kind != QuestionKind::FinalLine {
        return false;
    }
    let (s, l) = if a.value.len() <= b.value.len() {
        (&a.value, &b.value)
    } else {
        (&b.value, &a.value)
    };
    let sw: Vec<&str> = s.split(' ').collect();
    let lw: Vec<&str> = l.split(' ').collect();
    sw.len() <= 4 && lw.windows(sw.len()).any(|w| w == sw.as_slice())
}

// ---------------------------------------------------------------------------
// The analysis
// ---------------------------------------------------------------------------

/// How an answer entered the analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerStatus {
    /// It has text to compare.
    Answered,
    /// It finished with no text (after normalisation).
    Empty,
    /// The request failed.
    Failed,
}

/// One answer in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerReport {
    /// Position in the input.
    pub index: usize,
    /// Who answered.
    pub label: String,
    /// Answered, empty or failed.
    pub status: AnswerStatus,
    /// The extracted short answer, if any.
    pub final_answer: Option<FinalAnswer>,
    /// Index into [`Consensus::clusters`], for answered targets.
    pub cluster: Option<usize>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Similarity of two answered inputs (indices into the input).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairSimilarity {
    /// First answer.
    pub a: usize,
    /// Second answer.
    pub b: usize,
    /// The similarities.
    #[serde(flatten)]
    pub similarity: Similarity,
}

/// A group of answers that agree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    /// Input indices, ascending.
    pub members: Vec<usize>,
    /// Their labels, same order.
    pub labels: Vec<String>,
    /// What they agree on: the closed value, or a short excerpt of the most
    /// central answer when the question is open.
    pub answer: Option<String>,
}

/// The verdict over N answers. Serialises to the `consensus` block of
/// `quorum compare --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consensus {
    /// The kind of answer compared (after falling back to `open` when no
    /// answer yielded a closed one).
    pub kind: QuestionKind,
    /// The open-ended clustering threshold used.
    pub threshold: f64,
    /// Targets with text to compare.
    pub answered: usize,
    /// Every input, in input order.
    pub answers: Vec<AnswerReport>,
    /// Every pair of answered inputs.
    pub pairs: Vec<PairSimilarity>,
    /// Agreeing groups, largest first (ties: earliest member first).
    pub clusters: Vec<Cluster>,
    /// Index of the majority cluster: strictly the largest, with at least two members.
    pub majority: Option<usize>,
    /// What the majority says.
    pub majority_answer: Option<String>,
    /// 0..1; null when fewer than two targets answered. Closed questions: the
    /// share of answered targets in the largest cluster (0 when no two agree).
    /// Open questions: the mean pairwise `score`.
    pub agreement: Option<f64>,
    /// Mean pairwise `score` of answered targets, whatever the kind.
    pub mean_similarity: Option<f64>,
    /// Answered targets outside the majority cluster.
    pub dissenters: Vec<String>,
    /// Targets whose request failed.
    pub failed: Vec<String>,
    /// Targets that finished with no text.
    pub empty: Vec<String>,
}

/// Settings of [`analyze_with`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConsensusOptions {
    /// Force a kind instead of detecting it from the prompt.
    pub kind: Option<QuestionKind>,
    /// Open-ended clustering threshold on the pair `score`.
    pub threshold: f64,
}

impl Default for ConsensusOptions {
    fn default() -> Self {
        ConsensusOptions {
            kind: None,
            threshold: DEFAULT_THRESHOLD,
        }
    }
}

/// Analyse answers to `prompt` with the default options.
pub fn analyze(prompt: &str, answers: &[AnswerInput]) -> Consensus {
    analyze_with(prompt, answers, ConsensusOptions::default())
}

/// Analyse answers to `prompt`.
pub fn analyze_with(prompt: &str, answers: &[AnswerInput], opts: ConsensusOptions) -> Consensus {
    let normalised: Vec<String> = answers.iter().map(|a| normalize(&a.text)).collect();
    let status: Vec<AnswerStatus> = answers
        .iter()
        .zip(&normalised)
        .map(|(a, n)| {
            if a.failed {
                AnswerStatus::Failed
            } else if n.is_empty() {
                AnswerStatus::Empty
            } else {
                AnswerStatus::Answered
            }
        })
        .collect();
    let live: Vec<usize> = (0..answers.len())
        .filter(|i| status[*i] == AnswerStatus::Answered)
        .collect();

    let mut kind = opts.kind.unwrap_or_else(|| QuestionKind::detect(prompt));
    // Short one-line answers are final answers whatever the prompt looked like.
    if kind == QuestionKind::Open
        && opts.kind.is_none()
        && !live.is_empty()
        && live.iter().all(|i| {
            answers[*i].text.trim().lines().count() == 1 && normalised[*i].split(' ').count() <= 8
        })
    {
        kind = QuestionKind::FinalLine;
    }
    let mut finals: Vec<Option<FinalAnswer>> = answers
        .iter()
        .enumerate()
        .map(|(i, a)| {
            if status[i] == AnswerStatus::Answered {
                extract_final_answer(&a.text, kind)
            } else {
                None
            }
        })
        .collect();
    if kind.is_closed() && finals.iter().all(Option::is_none) {
        kind = QuestionKind::Open;
        finals.iter_mut().for_each(|f| *f = None);
    }

    let toks: Vec<Vec<&str>> = normalised.iter().map(|n| tokens(n)).collect();
    let mut pairs = Vec::new();
    let mut sim: HashMap<(usize, usize), f64> = HashMap::new();
    for (x, &i) in live.iter().enumerate() {
        for &j in &live[x + 1..] {
            let s = similarity_of_tokens(&toks[i], &toks[j]);
            sim.insert((i, j), s.score);
            pairs.push(PairSimilarity {
                a: i,
                b: j,
                similarity: s,
            });
        }
    }
    let pair_score = |i: usize, j: usize| -> f64 {
        let k = if i < j { (i, j) } else { (j, i) };
        sim.get(&k).copied().unwrap_or(0.0)
    };
    let mean_similarity = (!pairs.is_empty())
        .then(|| pairs.iter().map(|p| p.similarity.score).sum::<f64>() / pairs.len() as f64);

    let groups: Vec<Vec<usize>> = if kind.is_closed() {
        let agree = |i: usize, j: usize| -> f64 {
            match (&finals[i], &finals[j]) {
                (Some(a), Some(b)) if final_answers_agree(a, b, kind) => 1.0,
                _ => 0.0,
            }
        };
        // Complete agreement within a cluster: average linkage at 1.0.
        average_linkage(&live, &agree, 1.0)
    } else {
        average_linkage(&live, &pair_score, opts.threshold)
    };

    let mut clusters: Vec<Cluster> = groups
        .into_iter()
        .map(|members| {
            let answer = if kind.is_closed() {
                members
                    .iter()
                    .filter_map(|m| finals[*m].as_ref())
                    // Shortest value; ties by display, so arrival order never matters.
                    .min_by(|a, b| (a.value.len(), &a.display).cmp(&(b.value.len(), &b.display)))
                    .map(|f| f.display.clone())
            } else {
                let medoid = members
                    .iter()
                    .copied()
                    .max_by(|a, b| {
                        let sa: f64 = members.iter().map(|m| pair_score(*a, *m)).sum();
                        let sb: f64 = members.iter().map(|m| pair_score(*b, *m)).sum();
                        sa.total_cmp(&sb).then(b.cmp(a))
                    })
                    .unwrap_or(members[0]);
                Some(excerpt(&answers[medoid].text, 80))
            };
            Cluster {
                labels: members.iter().map(|m| answers[*m].label.clone()).collect(),
                members,
                answer,
            }
        })
        .collect();
    clusters.sort_by(|a, b| {
        b.members
            .len()
            .cmp(&a.members.len())
            .then(a.members[0].cmp(&b.members[0]))
    });

    let majority = match clusters.as_slice() {
        [first, rest @ ..]
            if first.members.len() >= 2
                && rest
                    .first()
                    .is_none_or(|r| r.members.len() < first.members.len()) =>
        {
            Some(0)
        }
        _ => None,
    };
    let agreement = if live.len() < 2 {
        None
    } else if kind.is_closed() {
        let largest = clusters.first().map_or(0, |c| c.members.len());
        Some(if largest >= 2 {
            largest as f64 / live.len() as f64
        } else {
            0.0
        })
    } else {
        mean_similarity
    };
    let mut cluster_of = vec![None; answers.len()];
    for (ci, c) in clusters.iter().enumerate() {
        for m in &c.members {
            cluster_of[*m] = Some(ci);
        }
    }
    let dissenters = match majority {
        Some(mi) => live
            .iter()
            .filter(|i| cluster_of[**i] != Some(mi))
            .map(|i| answers[*i].label.clone())
            .collect(),
        None => Vec::new(),
    };
    let label_if = |s: AnswerStatus| -> Vec<String> {
        (0..answers.len())
            .filter(|i| status[*i] == s)
            .map(|i| answers[i].label.clone())
            .collect()
    };
    let reports = answers
        .iter()
        .enumerate()
        .map(|(i, a)| AnswerReport {
            index: i,
            label: a.label.clone(),
            status: status[i],
            final_answer: finals[i].clone(),
            cluster: cluster_of[i],
            error: a.error.clone(),
        })
        .collect();
    Consensus {
        kind,
        threshold: opts.threshold,
        answered: live.len(),
        answers: reports,
        pairs,
        majority_answer: majority.and_then(|m| clusters[m].answer.clone()),
        clusters,
        majority,
        agreement,
        mean_similarity,
        dissenters,
        failed: label_if(AnswerStatus::Failed),
        empty: label_if(AnswerStatus::Empty),
    }
}

/// Agglomerative clustering: repeatedly merge the two clusters whose mean
/// pairwise similarity is highest, while it is at least `threshold`.
/// Average linkage avoids single linkage's chaining (A~B, B~C, A≁C all in
/// one group) without complete linkage's brittleness. Ties merge the
/// earliest pair, so the result is deterministic.
fn average_linkage(
    items: &[usize],
    sim: &dyn Fn(usize, usize) -> f64,
    threshold: f64,
) -> Vec<Vec<usize>> {
    let mut clusters: Vec<Vec<usize>> = items.iter().map(|i| vec![*i]).collect();
    loop {
        let mut best: Option<(f64, usize, usize)> = None;
        for x in 0..clusters.len() {
            for y in x + 1..clusters.len() {
                let mut total = 0.0;
                for a in &clusters[x] {
                    for b in &clusters[y] {
                        total += sim(*a, *b);
                    }
                }
                let mean = total / (clusters[x].len() * clusters[y].len()) as f64;
                if mean >= threshold - 1e-9 && best.is_none_or(|(m, _, _)| mean > m + 1e-12) {
                    best = Some((mean, x, y));
                }
            }
        }
        let Some((_, x, y)) = best else { break };
        let merged = clusters.remove(y);
        clusters[x].extend(merged);
        clusters[x].sort_unstable();
    }
    clusters
}

/// First non-empty line, markdown stripped, at most `max` characters.
fn excerpt(text: &str, max: usize) -> String {
    let s = strip_markdown(text);
    let line = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    if line.chars().count() <= max {
        line.to_string()
    } else {
        let cut: String = line.chars().take(max.saturating_sub(1)).collect();
        format!("{}…", cut.trim_end())
    }
}

impl Consensus {
    /// The agreement matrix for a heat map: `[i][j]` is the pair `score` of
    /// inputs `i` and `j`, 1 on the diagonal of answered inputs, `None`
    /// wherever an input failed or was empty.
    pub fn matrix(&self) -> Vec<Vec<Option<f64>>> {
        let n = self.answers.len();
        let mut m = vec![vec![None; n]; n];
        for r in &self.answers {
            if r.status == AnswerStatus::Answered {
                m[r.index][r.index] = Some(1.0);
            }
        }
        for p in &self.pairs {
            m[p.a][p.b] = Some(p.similarity.score);
            m[p.b][p.a] = Some(p.similarity.score);
        }
        m
    }

    /// The matrix the agreement score is built from: for a closed question,
    /// `1` where two answered inputs share a cluster (agree on the extracted
    /// answer) and `0` where they do not; for an open one, the same as
    /// [`Consensus::matrix`]. 1 on the diagonal of answered inputs, `None`
    /// wherever an input failed or was empty.
    pub fn agreement_matrix(&self) -> Vec<Vec<Option<f64>>> {
        if !self.kind.is_closed() {
            return self.matrix();
        }
        let mut m = self.matrix();
        for p in &self.pairs {
            let same = self.answers[p.a].cluster.is_some()
                && self.answers[p.a].cluster == self.answers[p.b].cluster;
            let v = if same { 1.0 } else { 0.0 };
            m[p.a][p.b] = Some(v);
            m[p.b][p.a] = Some(v);
        }
        m
    }

    /// The similarity of inputs `a` and `b`, if both answered.
    pub fn pair(&self, a: usize, b: usize) -> Option<Similarity> {
        let (a, b) = if a < b { (a, b) } else { (b, a) };
        self.pairs
            .iter()
            .find(|p| p.a == a && p.b == b)
            .map(|p| p.similarity)
    }

    /// One line for a status bar: `2 of 3 finished agree on "4" · agreement 0.67`.
    pub fn headline(&self) -> String {
        let total = self.answers.len();
        let mut s = match self.majority {
            Some(m) => {
                let c = &self.clusters[m];
                match (&self.majority_answer, self.kind.is_closed()) {
                    (Some(a), true) => format!(
                        "{} of {} finished agree on \"{}\"",
                        c.members.len(),
                        self.answered,
                        a
                    ),
                    _ => format!("{} of {} finished agree", c.members.len(), self.answered),
                }
            }
            None if self.answered < 2 => format!("{} of {} answered", self.answered, total),
            None => format!("no majority among {} answers", self.answered),
        };
        if let Some(a) = self.agreement {
            s.push_str(&format!(" · agreement {a:.2}"));
        }
        if !self.failed.is_empty() {
            s.push_str(&format!(" · {} failed", self.failed.len()));
        }
        if !self.empty.is_empty() {
            s.push_str(&format!(" · {} empty", self.empty.len()));
        }
        s
    }
}

// ---------------------------------------------------------------------------
// Word diff
// ---------------------------------------------------------------------------

/// What a diff span is, seen from the first text to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffOp {
    /// In both.
    Equal,
    /// Only in the second.
    Insert,
    /// Only in the first.
    Delete,
}

/// A run of text with one [`DiffOp`]; the TUI colours it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffSpan {
    /// What happened to this text.
    pub op: DiffOp,
    /// The text, whitespace included, exactly as in its source.
    pub text: String,
}

/// Word-level diff of two raw answers (`similar`'s word diff: words and
/// whitespace runs are the units). Adjacent units with the same op are
/// merged, so the spans alternate. Concatenating the `Equal` and `Delete`
/// spans gives back `a`; `Equal` and `Insert` give back `b`.
pub fn word_diff(a: &str, b: &str) -> Vec<DiffSpan> {
    let diff = similar::TextDiff::configure()
        .algorithm(similar::Algorithm::Patience)
        .timeout(DIFF_TIMEOUT)
        .diff_words(a, b);
    let mut out: Vec<DiffSpan> = Vec::new();
    for change in diff.iter_all_changes() {
        let op = match change.tag() {
            similar::ChangeTag::Equal => DiffOp::Equal,
            similar::ChangeTag::Insert => DiffOp::Insert,
            similar::ChangeTag::Delete => DiffOp::Delete,
        };
        let v = change.value();
        match out.last_mut() {
            Some(last) if last.op == op => last.text.push_str(v),
            _ => out.push(DiffSpan {
                op,
                text: v.to_string(),
            }),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Repeat-N stability
// ---------------------------------------------------------------------------

/// How stable one model is over N runs of the same prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stability {
    /// The model (target).
    pub label: String,
    /// Runs asked for.
    pub runs: usize,
    /// Runs with text to compare.
    pub answered: usize,
    /// Runs that failed.
    pub failed: usize,
    /// Distinct answers: the number of clusters among answered runs.
    pub distinct: usize,
    /// The same measure as [`Consensus::agreement`], across the runs of one
    /// model; null with fewer than two answered runs.
    pub self_agreement: Option<f64>,
    /// What most runs said.
    pub majority_answer: Option<String>,
}

/// Stability of one model from the answers of its repeated runs.
pub fn stability(prompt: &str, label: &str, runs: &[AnswerInput]) -> Stability {
    let c = analyze(prompt, runs);
    Stability {
        label: label.to_string(),
        runs: runs.len(),
        answered: c.answered,
        failed: c.failed.len(),
        distinct: c.clusters.len(),
        self_agreement: c.agreement,
        majority_answer: c.majority_answer.or_else(|| {
            // One answered run, or all the same: the only cluster's answer.
            (c.clusters.len() == 1)
                .then(|| c.clusters[0].answer.clone())
                .flatten()
        }),
    }
}

// ---------------------------------------------------------------------------
// Blind votes and the leaderboard
// ---------------------------------------------------------------------------

/// Starting Elo rating.
pub const ELO_START: f64 = 1000.0;
/// Elo K-factor.
pub const ELO_K: f64 = 32.0;

/// One blind vote: the targets shown (names hidden until the vote) and the
/// one picked, or a tie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    /// The targets compared.
    pub targets: Vec<String>,
    /// The winner; `None` is a tie.
    pub winner: Option<String>,
    /// Optional tag (a project, a task family) to filter the leaderboard by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The run voted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// When (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

impl Vote {
    /// A vote cast now (`created_at` set to the current UTC time).
    pub fn now(
        targets: Vec<String>,
        winner: Option<String>,
        tag: Option<String>,
        run_id: Option<String>,
    ) -> Vote {
        let created_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .ok();
        Vote {
            targets,
            winner,
            tag,
            run_id,
            created_at,
        }
    }
}

/// One model's standing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderboardRow {
    /// The target.
    pub target: String,
    /// Elo rating.
    pub elo: f64,
    /// Votes it took part in.
    pub votes: u32,
    /// Votes it won.
    pub wins: u32,
    /// Votes that were ties.
    pub ties: u32,
    /// Votes another target won.
    pub losses: u32,
    /// `(wins + ties / 2) / votes`.
    pub win_rate: f64,
}

/// The leaderboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leaderboard {
    /// The tag filtered on.
    pub tag: Option<String>,
    /// Votes counted.
    pub votes: u32,
    /// Votes ignored: fewer than two distinct targets, or a winner not among them.
    pub skipped: u32,
    /// Rows, best Elo first (ties by name).
    pub rows: Vec<LeaderboardRow>,
}

/// The Elo expectation of A against B.
pub fn elo_expected(ra: f64, rb: f64) -> f64 {
    1.0 / (1.0 + 10f64.powf((rb - ra) / 400.0))
}

/// Build the leaderboard from votes in the order they were cast.
///
/// Each vote is a set of pairwise games: the winner beats every other target
/// shown; a tie is a draw (half a point) between every pair. Losers do not
/// play each other. All games of one vote use the ratings from before it and
/// their deltas are summed, so the order of targets within a vote does not
/// matter (the order of votes does, as in any Elo).
pub fn leaderboard(votes: &[Vote], tag: Option<&str>) -> Leaderboard {
    let mut rating: HashMap<String, f64> = HashMap::new();
    let mut rows: HashMap<String, LeaderboardRow> = HashMap::new();
    let mut counted = 0u32;
    let mut skipped = 0u32;
    for v in votes {
        if let Some(t) = tag {
            if v.tag.as_deref() != Some(t) {
                continue;
            }
        }
        let mut targets: Vec<&String> = Vec::new();
        for t in &v.targets {
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
        let winner_ok = v.winner.as_ref().is_none_or(|w| targets.contains(&w));
        if targets.len() < 2 || !winner_ok {
            skipped += 1;
            continue;
        }
        counted += 1;
        // Every game of a vote reads the ratings from before it.
        let before = |t: &str| *rating.get(t).unwrap_or(&ELO_START);
        let mut delta: HashMap<&str, f64> = HashMap::new();
        let mut games: Vec<(&str, &str, f64)> = Vec::new();
        match &v.winner {
            Some(w) => {
                for t in &targets {
                    if *t != w {
                        games.push((w, t, 1.0));
                    }
                }
            }
            None => {
                for (i, a) in targets.iter().enumerate() {
                    for b in &targets[i + 1..] {
                        games.push((a, b, 0.5));
                    }
                }
            }
        }
        for (a, b, score_a) in games {
            let d = ELO_K * (score_a - elo_expected(before(a), before(b)));
            *delta.entry(a).or_default() += d;
            *delta.entry(b).or_default() -= d;
        }
        for t in &targets {
            let e = rating.entry((*t).clone()).or_insert(ELO_START);
            *e += delta.get(t.as_str()).copied().unwrap_or(0.0);
            let row = rows.entry((*t).clone()).or_insert_with(|| LeaderboardRow {
                target: (*t).clone(),
                elo: ELO_START,
                votes: 0,
                wins: 0,
                ties: 0,
                losses: 0,
                win_rate: 0.0,
            });
            row.votes += 1;
            match &v.winner {
                None => row.ties += 1,
                Some(w) if w == *t => row.wins += 1,
                Some(_) => row.losses += 1,
            }
        }
    }
    let mut rows: Vec<LeaderboardRow> = rows
        .into_values()
        .map(|mut row| {
            row.elo = rating[&row.target];
            row.win_rate = (row.wins as f64 + row.ties as f64 / 2.0) / row.votes as f64;
            row
        })
        .collect();
    rows.sort_by(|a, b| b.elo.total_cmp(&a.elo).then(a.target.cmp(&b.target)));
    Leaderboard {
        tag: tag.map(str::to_string),
        votes: counted,
        skipped,
        rows,
    }
}

/// Where votes are kept. The SQLite ledger's `votes` table (run_id, winner
/// target or 'tie', tag, created_at) is meant to implement this and replace
/// [`JsonlVoteStore`]; the faces only see the trait.
pub trait VoteStore {
    /// Append one vote; durable when it returns.
    fn record_vote(&self, vote: &Vote) -> Result<(), String>;
    /// Every vote, oldest first.
    fn votes(&self) -> Result<Vec<Vote>, String>;
}

/// Votes as JSON lines in `votes.jsonl` of the data dir: one [`Vote`] per
/// line, appended. A stopgap until the ledger owns votes: a line that does
/// not parse is skipped, not fatal, so a torn write loses one vote only.
#[derive(Debug, Clone)]
pub struct JsonlVoteStore {
    path: PathBuf,
}

impl JsonlVoteStore {
    /// A store at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        JsonlVoteStore { path: path.into() }
    }

    /// `votes.jsonl` in [`data_dir`].
    pub fn in_data_dir() -> Result<Self, String> {
        let dir = data_dir().ok_or("no data directory: set QUORUM_DATA_DIR")?;
        Ok(Self::new(dir.join("votes.jsonl")))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl VoteStore for JsonlVoteStore {
    fn record_vote(&self, vote: &Vote) -> Result<(), String> {
        use std::io::Write;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let mut line = serde_json::to_string(vote).map_err(|e| e.to_string())?;
        line.push('\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| format!("cannot open {}: {e}", self.path.display()))?;
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }

    fn votes(&self) -> Result<Vec<Vote>, String> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("cannot read {}: {e}", self.path.display())),
        };
        Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

/// Append a vote to the default store (`votes.jsonl` in the data dir).
pub fn record_vote(vote: &Vote) -> Result<(), String> {
    JsonlVoteStore::in_data_dir()?.record_vote(vote)
}

/// The folder of the ledger and caches: `QUORUM_DATA_DIR`, else the platform
/// data dir from `directories`.
pub fn data_dir() -> Option<PathBuf> {
    super::files::data_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ans(label: &str, text: &str) -> AnswerInput {
        AnswerInput::new(label, text)
    }

    #[test]
    fn normalize_drops_markdown_case_and_punctuation() {
        assert_eq!(
            normalize("## The **Answer** is `4.0`!\n\n- It's   *two*, plus two."),
            "the answer is 4.0 its two plus two"
        );
        assert_eq!(
            normalize("Costs $1,000 or -3 [see](http://x.y)"),
            "costs 1000 or -3 see"
        );
    }

    #[test]
    fn numbers_in_many_spellings() {
        for (t, v) in [
            ("4", 4.0),
            ("The answer is four.", 4.0),
            ("2 + 2 = 4.0", 4.0),
            ("**4**", 4.0),
            ("Twenty-one apples", 21.0),
            ("one hundred and five", 105.0),
            ("There are 3 r's in strawberry.", 3.0),
            ("\\boxed{12}", 12.0),
            ("3\n\nStrawberry has r at positions 3, 8 and 9.", 3.0),
        ] {
            assert_eq!(extract_number(t), Some(v), "{t}");
        }
        assert_eq!(extract_number("No one knows."), None);
        assert_eq!(format_number(4.0), "4");
        assert_eq!(format_number(0.50), "0.5");
    }

    #[test]
    fn yes_no_and_choice() {
        assert_eq!(
            extract_yes_no("Yes, it is vulnerable to SQL injection."),
            Some("yes")
        );
        assert_eq!(extract_yes_no("**No.** The input is escaped."), Some("no"));
        assert_eq!(extract_yes_no("The answer is no."), Some("no"));
        assert_eq!(extract_choice("The answer is (b)."), Some('B'));
        assert_eq!(extract_choice("C"), Some('C'));
        assert_eq!(extract_choice("B) because paris"), Some('B'));
        assert_eq!(extract_choice("A good guess: **D**"), Some('D'));
        assert_eq!(extract_choice("A good guess would be paris"), None);
    }

    #[test]
    fn detect_kinds() {
        assert_eq!(QuestionKind::detect("What is 2+2?"), QuestionKind::Number);
        assert_eq!(
            QuestionKind::detect("How many r's are in strawberry?"),
            QuestionKind::Number
        );
        assert_eq!(
            QuestionKind::detect("Here is my code.\nIs this code vulnerable?"),
            QuestionKind::YesNo
        );
        assert_eq!(
            QuestionKind::detect("Is it red or blue?"),
            QuestionKind::Open
        );
        assert_eq!(
            QuestionKind::detect("Capital of France?\nA) Paris\nB) Rome\nC) Oslo"),
            QuestionKind::Choice
        );
        assert_eq!(
            QuestionKind::detect("Who wrote Hamlet? One word."),
            QuestionKind::FinalLine
        );
        assert_eq!(
            QuestionKind::detect("Explain how TCP handshakes work."),
            QuestionKind::Open
        );
    }

    #[test]
    fn threshold_separates_paraphrase_from_unrelated() {
        let tcp = "TCP opens a connection with a three-way handshake: the client sends SYN, \
                   the server answers SYN-ACK, and the client replies with ACK.";
        let tcp2 = "The client sends a SYN, the server replies with SYN-ACK, and the client \
                    sends an ACK: this three-way handshake opens a TCP connection.";
        let udp = "UDP has no handshake at all; it simply sends datagrams and hopes \
                   they arrive, which is why it suits games and streaming.";
        let rust = "Rust guarantees memory safety through ownership and borrowing, checked \
                    at compile time, without a garbage collector.";
        let rust2 = "Through its ownership model and the borrow checker, Rust ensures memory \
                     safety at compile time and needs no garbage collector.";
        let go = "Go uses a garbage collector to manage memory, which makes programs \
                  simpler to write but adds pauses at run time.";
        for (a, b) in [(tcp, tcp2), (rust, rust2)] {
            let s = similarity(a, b);
            assert!(s.score >= DEFAULT_THRESHOLD + 0.05, "paraphrase {s:?}");
            assert!(
                s.token_f1 > s.sequence_ratio,
                "reordering costs ratio, not F1"
            );
        }
        for (a, b) in [(tcp, udp), (rust, go)] {
            let s = similarity(a, b);
            assert!(s.score <= DEFAULT_THRESHOLD - 0.15, "unrelated {s:?}");
        }
    }

    #[test]
    fn final_line_containment() {
        let c = analyze(
            "Who wrote Hamlet? Answer in one word.",
            &[
                ans("a", "Shakespeare"),
                ans("b", "Hamlet was written by\nWilliam Shakespeare."),
                ans("c", "Marlowe"),
            ],
        );
        assert_eq!(c.kind, QuestionKind::FinalLine);
        assert_eq!(c.majority_answer.as_deref(), Some("Shakespeare"));
        assert_eq!(c.dissenters, vec!["c"]);
    }

    #[test]
    fn agreement_matrix_follows_the_extracted_answer() {
        let c = analyze(
            "What is 2+2? Answer with one number.",
            &[
                ans("a", "4"),
                ans("b", "The answer is **four**."),
                ans("c", "5"),
                AnswerInput::failed("d", "429"),
            ],
        );
        let m = c.agreement_matrix();
        assert_eq!(m[0][1], Some(1.0));
        assert_eq!(m[0][2], Some(0.0));
        assert_eq!(m[2][2], Some(1.0));
        assert_eq!(m[3][0], None);
        assert_eq!(m[3][3], None);
        let open = analyze(
            "Explain it.",
            &[ans("a", "x y z w v u t s r q p"), ans("b", "x y z")],
        );
        assert_eq!(open.agreement_matrix(), open.matrix());
    }

    #[test]
    fn average_linkage_does_not_chain() {
        // 0~1 and 1~2 but 0≁2: 1 joins one side only.
        let s = |a: usize, b: usize| match (a.min(b), a.max(b)) {
            (0, 1) => 0.9,
            (1, 2) => 0.6,
            _ => 0.0,
        };
        let c = average_linkage(&[0, 1, 2], &s, 0.5);
        assert_eq!(c, vec![vec![0, 1], vec![2]]);
    }
}
