//! The judge: one chosen model reads the prompt and the anonymised answers
//! (Answer A, Answer B, ...) and returns a JSON verdict. It goes through the
//! front door ([`Engine::start`]) like any request: resolved and checked, its cost
//! projected and reserved against the budget, the run noted in the ledger; its cost
//! is returned with the verdict.
//!
//! Models wrap JSON in prose and code fences, use percentages, write
//! "Answer B" for "B": [`parse_verdict`] accepts all of that rather than
//! failing a paid request over formatting.

use serde::Serialize;
use serde_json::{Map, Value};

use super::consensus::{AnswerInput, AnswerStatus};
use super::event::Completion;
use super::front::StartOptions;
use super::request::{ChatRequest, Message};
use super::run::Engine;

/// Each answer is cut to this many characters before the judge sees it, so
/// one runaway answer cannot blow the judge's context or the bill.
pub const MAX_ANSWER_CHARS: usize = 12_000;

const SYSTEM: &str = "You are an impartial judge. Several AI assistants answered the same \
prompt; their answers are anonymised as Answer A, Answer B, and so on, in no particular order. \
Judge substance, not style or length, and do not guess who wrote which.\n\n\
Reply with one JSON object and nothing else, with these keys:\n\
- \"agreement\": a number from 0 to 1, how far the answers agree on substance (1 = they say the same thing)\n\
- \"best\": the letter of the best answer, for example \"A\", or null if none is better\n\
- \"disagreements\": a list of short strings, one per point where the answers differ (empty if none)\n\
- \"summary\": one or two sentences on what the answers agree on and what the best one gets right";

/// The judge's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// 0..1, as the judge saw it; null when it gave none.
    pub agreement: Option<f64>,
    /// Letter of the best answer.
    pub best: Option<String>,
    /// The target behind `best` (filled by [`JudgeKey::reveal`]).
    pub best_target: Option<String>,
    /// Points of disagreement.
    pub disagreements: Vec<String>,
    /// The judge's summary.
    pub summary: String,
}

/// Which letter hides which answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JudgeKey {
    /// `A`, `B`, ...
    pub letter: String,
    /// The target behind it.
    pub label: String,
    /// Index into the answers given.
    pub index: usize,
}

impl JudgeKey {
    /// Put the target name on a verdict's `best` letter.
    pub fn reveal(keys: &[JudgeKey], verdict: &mut Verdict) {
        verdict.best_target = verdict
            .best
            .as_ref()
            .and_then(|b| keys.iter().find(|k| &k.letter == b))
            .map(|k| k.label.clone());
    }
}

/// The request to send and the key to read the answer with.
#[derive(Debug, Clone)]
pub struct JudgePlan {
    /// The judge's request.
    pub request: ChatRequest,
    /// Letters in the order shown.
    pub key: Vec<JudgeKey>,
}

/// `A`..`Z`, then `AA`, `AB`, ...
pub fn letter(i: usize) -> String {
    let mut n = i;
    let mut s = Vec::new();
    loop {
        s.push(b'A' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

/// Build the judge's request. Failed and empty answers are left out: there
/// is nothing to judge in them, and naming them would leak which is which.
pub fn plan(prompt: &str, answers: &[AnswerInput]) -> JudgePlan {
    let mut key = Vec::new();
    let mut body = format!("# Prompt\n\n{}\n", prompt.trim());
    for (i, a) in answers.iter().enumerate() {
        if answer_status(a) != AnswerStatus::Answered {
            continue;
        }
        let l = letter(key.len());
        let mut text: String = a.text.trim().chars().take(MAX_ANSWER_CHARS).collect();
        if a.text.trim().chars().count() > MAX_ANSWER_CHARS {
            text.push_str("\n[… truncated]");
        }
        body.push_str(&format!("\n# Answer {l}\n\n{text}\n"));
        key.push(JudgeKey {
            letter: l,
            label: a.label.clone(),
            index: i,
        });
    }
    body.push_str("\nReply with the JSON object only.");
    // Plain text, not a JSON-schema response format: every provider and
    // model accepts it (older OpenAI models and some compatible hosts reject
    // `json_schema`), and `parse_verdict` copes with fences and prose.
    let request = ChatRequest {
        messages: vec![Message::system(SYSTEM), Message::user(body)],
        temperature: Some(0.0),
        ..Default::default()
    };
    JudgePlan { request, key }
}

fn answer_status(a: &AnswerInput) -> AnswerStatus {
    if a.failed {
        AnswerStatus::Failed
    } else if super::consensus::normalize(&a.text).is_empty() {
        AnswerStatus::Empty
    } else {
        AnswerStatus::Answered
    }
}

/// What a judge run produced: always the completion (it cost money), and
/// the verdict or why there is none.
#[derive(Debug, Clone, Serialize)]
pub struct JudgeOutcome {
    /// The judge target.
    pub target: String,
    /// Which letter was which answer.
    pub key: Vec<JudgeKey>,
    /// The parsed verdict, with `best_target` revealed.
    pub verdict: Option<Verdict>,
    /// Why there is no verdict (the request failed, or the reply had no usable JSON).
    pub error: Option<String>,
    /// The judge's own request, in the `ask --json` schema (cost included).
    pub completion: Completion,
}

/// Ask `target` to judge the answers to `prompt`, through the front door. Needs at
/// least two answered inputs; returns `Err` without sending anything otherwise, or
/// when the front door refuses (an unknown target, a budget cap, the ledger).
pub async fn judge(
    engine: &Engine,
    target: &str,
    prompt: &str,
    answers: &[AnswerInput],
    mut opts: StartOptions,
) -> Result<JudgeOutcome, String> {
    let plan = plan(prompt, answers);
    if plan.key.len() < 2 {
        return Err(format!(
            "the judge needs at least two answers; {} answered",
            plan.key.len()
        ));
    }
    // The verdict is read here, from the run's own channel.
    opts.events = None;
    let started = engine
        .start(plan.request, vec![target.to_string()], opts)
        .await
        .map_err(|r| format!("the judge was not asked: {r}"))?;
    let completion = started
        .handle
        .collect()
        .await
        .into_iter()
        .next()
        .unwrap_or_default();
    let letters: Vec<String> = plan.key.iter().map(|k| k.letter.clone()).collect();
    let (verdict, error) = match &completion.error {
        Some(e) => (None, Some(format!("the judge request failed: {e}"))),
        None => match parse_verdict(&completion.text, &letters) {
            Ok(mut v) => {
                JudgeKey::reveal(&plan.key, &mut v);
                (Some(v), None)
            }
            Err(e) => (None, Some(e)),
        },
    };
    Ok(JudgeOutcome {
        target: target.to_string(),
        key: plan.key,
        verdict,
        error,
        completion,
    })
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Parse a judge's reply. Tries, in order: the whole reply as JSON, the
/// contents of code fences (last first), then every balanced `{...}` in the
/// prose (last first, since models tend to restate the format before
/// answering). Trailing commas and curly quotes are repaired. The first
/// object with at least one verdict key wins. `letters` are the valid
/// answer letters: a `best` outside them is dropped, not trusted.
pub fn parse_verdict(text: &str, letters: &[String]) -> Result<Verdict, String> {
    let mut candidates: Vec<String> = vec![text.trim().to_string()];
    candidates.extend(fenced_blocks(text).into_iter().rev());
    candidates.extend(balanced_objects(text).into_iter().rev());
    for c in candidates {
        let Some(obj) = parse_object(&c) else {
            continue;
        };
        if let Some(v) = verdict_from(&obj, letters) {
            return Ok(v);
        }
    }
    let shown: String = text.trim().chars().take(120).collect();
    Err(format!("the judge's reply has no JSON verdict: {shown:?}"))
}

fn parse_object(s: &str) -> Option<Map<String, Value>> {
    let s = s.trim();
    if !s.starts_with('{') {
        return None;
    }
    let attempt = |t: &str| match serde_json::from_str::<Value>(t) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    };
    attempt(s).or_else(|| attempt(&repair(s)))
}

/// Curly quotes to straight ones, trailing commas before `}`/`]` removed.
fn repair(s: &str) -> String {
    let s = s.replace(['\u{201c}', '\u{201d}'], "\"");
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut in_str = false;
    let mut escaped = false;
    for (i, &c) in chars.iter().enumerate() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        if c == '"' {
            in_str = true;
        }
        if c == ',' {
            let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
            if matches!(next, Some('}') | Some(']')) {
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Bodies of ``` fences, language tag dropped.
fn fenced_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            match current.take() {
                Some(body) => out.push(body),
                None => current = Some(String::new()),
            }
            continue;
        }
        if let Some(body) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// Every outermost balanced `{...}`, aware of JSON strings and escapes.
fn balanced_objects(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' || c == '\u{201d}' {
                in_str = false;
            }
            continue;
        }
        match c {
            '"' | '\u{201c}' if depth > 0 => in_str = true,
            '{' => {
                if depth == 0 {
                    start = i;
                }
                depth += 1;
            }
            '}' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    out.push(text[start..=i].to_string());
                }
            }
            _ => {}
        }
    }
    out
}

fn get<'a>(obj: &'a Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| {
            let k = k.to_ascii_lowercase();
            names.iter().any(|n| *n == k)
        })
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

fn verdict_from(obj: &Map<String, Value>, letters: &[String]) -> Option<Verdict> {
    // A wrapper such as {"verdict": {...}}.
    if let Some(Value::Object(inner)) = get(obj, &["verdict", "result", "judgement", "judgment"]) {
        if let Some(v) = verdict_from(inner, letters) {
            return Some(v);
        }
    }
    let agreement_v = get(obj, &["agreement", "agreement_score", "consensus", "score"]);
    let best_v = get(obj, &["best", "best_answer", "winner", "best_letter"]);
    let dis_v = get(
        obj,
        &[
            "disagreements",
            "disagreement",
            "differences",
            "points_of_disagreement",
        ],
    );
    let sum_v = get(
        obj,
        &[
            "summary",
            "reasoning",
            "rationale",
            "explanation",
            "reason",
            "comment",
        ],
    );
    if agreement_v.is_none() && best_v.is_none() && dis_v.is_none() && sum_v.is_none() {
        return None;
    }
    Some(Verdict {
        agreement: agreement_v.and_then(parse_agreement),
        best: best_v.and_then(|v| parse_best(v, letters)),
        best_target: None,
        disagreements: dis_v.map(parse_list).unwrap_or_default(),
        summary: sum_v.map(value_text).unwrap_or_default(),
    })
}

/// `0.8`, `"0.8"`, `80`, `"80%"` -> 0.8; clamped to 0..1.
fn parse_agreement(v: &Value) -> Option<f64> {
    let x = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => {
            let t = s.trim();
            let pct = t.ends_with('%');
            let n: f64 = t.trim_end_matches('%').trim().parse().ok()?;
            if pct {
                n / 100.0
            } else {
                n
            }
        }
        _ => return None,
    };
    if !x.is_finite() || x < 0.0 {
        return None;
    }
    let x = if x > 1.0 && x <= 100.0 { x / 100.0 } else { x };
    (x <= 1.0).then_some(x)
}

/// `"B"`, `"Answer B"`, `"(b)"`, `"**B**"`, `2` -> `"B"`; `null`, `"none"`,
/// `"tie"` or a letter not shown -> `None`.
fn parse_best(v: &Value, letters: &[String]) -> Option<String> {
    let pick = |l: String| letters.contains(&l).then_some(l);
    match v {
        Value::Number(n) => {
            let i = n.as_u64()?;
            (1..=letters.len() as u64)
                .contains(&i)
                .then(|| letters[i as usize - 1].clone())
        }
        Value::String(s) => {
            let cleaned: String = s
                .chars()
                .map(|c| if c.is_alphanumeric() { c } else { ' ' })
                .collect();
            let words: Vec<&str> = cleaned.split_whitespace().collect();
            let lw: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
            // "Answer B" / "answer b"
            if let Some(p) = lw.iter().position(|w| w == "answer") {
                if let Some(next) = words.get(p + 1) {
                    if let Some(l) = pick(next.to_ascii_uppercase()) {
                        return Some(l);
                    }
                }
            }
            if words.len() == 1 {
                return pick(words[0].to_ascii_uppercase());
            }
            // "B is best": a lone upper-case letter somewhere.
            words
                .iter()
                .filter(|w| w.len() <= 2 && w.chars().all(|c| c.is_ascii_uppercase()))
                .find_map(|w| pick(w.to_string()))
        }
        Value::Array(a) => a.first().and_then(|v| parse_best(v, letters)),
        _ => None,
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim().to_string(),
        Value::Object(o) => {
            for k in ["point", "description", "issue", "text", "summary", "detail"] {
                if let Some(Value::String(s)) = o.get(k) {
                    return s.trim().to_string();
                }
            }
            v.to_string()
        }
        other => other.to_string(),
    }
}

fn parse_list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().map(value_text).filter(|s| !s.is_empty()).collect(),
        Value::String(s) if s.trim().is_empty() => Vec::new(),
        other => vec![value_text(other)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_go_past_z() {
        assert_eq!(letter(0), "A");
        assert_eq!(letter(25), "Z");
        assert_eq!(letter(26), "AA");
        assert_eq!(letter(27), "AB");
    }

    #[test]
    fn repair_trailing_commas_only_outside_strings() {
        assert_eq!(
            repair(r#"{"a": [1, 2,], "b": "x,}",}"#),
            r#"{"a": [1, 2], "b": "x,}"}"#
        );
    }

    #[test]
    fn plan_hides_names_and_skips_failures() {
        let answers = vec![
            AnswerInput::new("openai/gpt-4o", "Four."),
            AnswerInput::failed("anthropic/claude", "429"),
            AnswerInput::new("gemini/flash", "   "),
            AnswerInput::new("mock/alpha", "4"),
        ];
        let p = plan("What is 2+2?", &answers);
        let body = &p.request.messages[1].content;
        assert!(body.contains("# Answer A\n\nFour."));
        assert!(body.contains("# Answer B\n\n4"));
        assert!(!body.contains("Answer C"));
        for name in ["openai", "claude", "gemini", "mock"] {
            assert!(!body.contains(name), "{name} leaked");
        }
        assert_eq!(p.key[1].label, "mock/alpha");
        assert_eq!(p.key[1].index, 3);
    }
}
