//! Assertions and how one answer is checked against them. `consensus` is checked
//! over every target of a case and `judge` by a judge model; [`super::run`] does those.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::consensus::{extract_final_answer, QuestionKind};
use crate::engine::Completion;

/// What an assertion checks.
#[derive(Debug, Clone)]
pub enum Check {
    /// The whole answer (trimmed) equals the value.
    Equals {
        /// Expected text.
        value: String,
        /// Compare ignoring case.
        ignore_case: bool,
    },
    /// The answer contains the value.
    Contains {
        /// Expected substring.
        value: String,
        /// Compare ignoring case.
        ignore_case: bool,
    },
    /// The answer matches the regular expression.
    Regex(regex::Regex),
    /// The answer's final number is within `tolerance` of `value`.
    Number {
        /// Expected number.
        value: f64,
        /// Absolute tolerance.
        tolerance: f64,
    },
    /// The answer is valid JSON (a Markdown fence around it is allowed).
    Json,
    /// The answer is JSON matching the schema.
    Schema(Arc<jsonschema::Validator>),
    /// The request took at most this long, end to end.
    MaxLatencyMs(f64),
    /// The request cost at most this much (an unknown cost fails).
    MaxCostUsd(f64),
    /// The targets' answers agree at least this much (the consensus analysis).
    Consensus {
        /// 0..1.
        threshold: f64,
        /// Force the kind of answer compared.
        kind: Option<QuestionKind>,
    },
    /// A judge model grades each target's answer against the rubric.
    Judge {
        /// What a good answer does.
        rubric: String,
        /// The judge, `provider/model`.
        model: String,
        /// Pass when the judge's score is at least this (default: the judge's pass/fail).
        threshold: Option<f64>,
    },
}

/// An assertion with the label reports show.
#[derive(Debug, Clone)]
pub struct Assertion {
    /// The check.
    pub check: Check,
    /// Short and stable, e.g. `contains "4"`.
    pub label: String,
}

/// How one assertion went for one answer (or target, or case).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The assertion's label.
    pub assertion: String,
    /// Whether it held.
    pub pass: bool,
    /// Why not (or what was seen).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

fn cut(s: &str, n: usize) -> String {
    let t = s.trim();
    if t.chars().count() <= n {
        t.to_string()
    } else {
        format!("{}…", t.chars().take(n).collect::<String>())
    }
}

impl Assertion {
    /// An assertion with its label.
    pub fn new(check: Check) -> Assertion {
        let label = match &check {
            Check::Equals { value, .. } => format!("equals {:?}", cut(value, 40)),
            Check::Contains { value, .. } => format!("contains {:?}", cut(value, 40)),
            Check::Regex(r) => format!("regex /{}/", cut(r.as_str(), 40)),
            Check::Number { value, tolerance } if *tolerance > 0.0 => {
                format!("number {value} ± {tolerance}")
            }
            Check::Number { value, .. } => format!("number {value}"),
            Check::Json => "json".into(),
            Check::Schema(_) => "schema".into(),
            Check::MaxLatencyMs(v) => format!("max_latency_ms {v}"),
            Check::MaxCostUsd(v) => format!("max_cost_usd {v}"),
            Check::Consensus { threshold, .. } => format!("consensus ≥ {threshold}"),
            Check::Judge { model, .. } => format!("judge {model}"),
        };
        Assertion { check, label }
    }

    /// Whether this is checked on each answer by itself.
    pub fn per_answer(&self) -> bool {
        !matches!(self.check, Check::Consensus { .. } | Check::Judge { .. })
    }

    /// Check one answer; `None` for `consensus` and `judge`.
    pub fn on_answer(&self, c: &Completion) -> Option<CheckResult> {
        if !self.per_answer() {
            return None;
        }
        let res = |pass: bool, detail: String| {
            Some(CheckResult {
                assertion: self.label.clone(),
                pass,
                detail: if pass { String::new() } else { detail },
            })
        };
        // Latency and cost are measured on failed requests too; the rest need an answer.
        match &self.check {
            Check::MaxLatencyMs(max) => {
                return res(c.latency_ms <= *max, format!("took {:.0} ms", c.latency_ms))
            }
            Check::MaxCostUsd(max) => {
                return match c.cost_usd {
                    Some(x) => res(x <= *max, format!("cost ${x:.6}")),
                    None => res(false, "the cost is unknown (no price)".into()),
                }
            }
            _ => {}
        }
        if let Some(e) = &c.error {
            return res(false, format!("the request failed: {e}"));
        }
        let text = c.text.as_str();
        match &self.check {
            Check::Equals { value, ignore_case } => {
                let (a, b) = (text.trim(), value.trim());
                let ok = if *ignore_case {
                    a.to_lowercase() == b.to_lowercase()
                } else {
                    a == b
                };
                res(ok, format!("got {:?}", cut(text, 80)))
            }
            Check::Contains { value, ignore_case } => {
                let ok = if *ignore_case {
                    text.to_lowercase().contains(&value.to_lowercase())
                } else {
                    text.contains(value.as_str())
                };
                res(ok, format!("got {:?}", cut(text, 80)))
            }
            Check::Regex(re) => res(re.is_match(text), format!("got {:?}", cut(text, 80))),
            Check::Number { value, tolerance } => {
                match extract_final_answer(text, QuestionKind::Number)
                    .and_then(|f| f.value.parse::<f64>().ok())
                {
                    Some(x) => res(
                        (x - value).abs() <= *tolerance + 1e-12 * value.abs().max(1.0),
                        format!("got {x}"),
                    ),
                    None => res(false, format!("no number in {:?}", cut(text, 80))),
                }
            }
            Check::Json => match answer_json(text) {
                Ok(_) => res(true, String::new()),
                Err(e) => res(false, e),
            },
            Check::Schema(v) => match answer_json(text) {
                Ok(j) => match v.iter_errors(&j).next() {
                    None => res(true, String::new()),
                    Some(e) => {
                        let at = e.instance_path().to_string();
                        res(
                            false,
                            if at.is_empty() {
                                e.to_string()
                            } else {
                                format!("at {at}: {e}")
                            },
                        )
                    }
                },
                Err(e) => res(false, e),
            },
            Check::MaxLatencyMs(_)
            | Check::MaxCostUsd(_)
            | Check::Consensus { .. }
            | Check::Judge { .. } => None,
        }
    }
}

/// The JSON of an answer: the text itself, or the inside of a Markdown code fence.
pub fn answer_json(text: &str) -> Result<Value, String> {
    let t = text.trim();
    if let Ok(v) = serde_json::from_str(t) {
        return Ok(v);
    }
    if let Some(start) = t.find("```") {
        let rest = &t[start + 3..];
        let rest = rest.strip_prefix("json").unwrap_or(rest);
        if let Some(end) = rest.find("```") {
            return serde_json::from_str(rest[..end].trim())
                .map_err(|e| format!("the fenced answer is not JSON ({e})"));
        }
    }
    serde_json::from_str::<Value>(t).map_err(|e| format!("the answer is not JSON ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(text: &str) -> Completion {
        Completion {
            text: text.into(),
            latency_ms: 120.0,
            cost_usd: Some(0.002),
            ..Default::default()
        }
    }

    fn pass(c: Check, text: &str) -> bool {
        Assertion::new(c).on_answer(&answer(text)).unwrap().pass
    }

    #[test]
    fn every_answer_check() {
        let eq = |v: &str, i| Check::Equals {
            value: v.into(),
            ignore_case: i,
        };
        assert!(pass(eq("Paris", false), " Paris\n"));
        assert!(!pass(eq("paris", false), "Paris"));
        assert!(pass(eq("paris", true), "Paris"));
        let has = |v: &str| Check::Contains {
            value: v.into(),
            ignore_case: false,
        };
        assert!(pass(has("4"), "It is 4."));
        assert!(!pass(has("5"), "It is 4."));
        let re = regex::Regex::new(r"^\d+$").unwrap();
        assert!(pass(Check::Regex(re.clone()), "42"));
        assert!(!pass(Check::Regex(re), "forty-two"));
        let num = |v, t| Check::Number {
            value: v,
            tolerance: t,
        };
        assert!(pass(num(4.0, 0.0), "The answer is 4."));
        assert!(pass(num(2.5, 0.01), "about 2.505"));
        assert!(!pass(num(3.0, 0.5), "3.6"));
        assert!(!pass(num(4.0, 0.0), "no idea"));
        assert!(pass(Check::Json, "```json\n{\"a\": 1}\n```"));
        assert!(!pass(Check::Json, "{a: 1}"));
        let schema = serde_json::json!({"type": "object", "required": ["a"]});
        let v = Arc::new(jsonschema::validator_for(&schema).unwrap());
        assert!(pass(Check::Schema(v.clone()), "{\"a\": 1}"));
        let r = Assertion::new(Check::Schema(v))
            .on_answer(&answer("{\"b\": 1}"))
            .unwrap();
        assert!(!r.pass && r.detail.contains("\"a\""), "{r:?}");
        assert!(pass(Check::MaxLatencyMs(200.0), "x"));
        assert!(!pass(Check::MaxLatencyMs(100.0), "x"));
        assert!(pass(Check::MaxCostUsd(0.01), "x"));
        assert!(!pass(Check::MaxCostUsd(0.001), "x"));
        let mut unpriced = answer("x");
        unpriced.cost_usd = None;
        assert!(
            !Assertion::new(Check::MaxCostUsd(1.0))
                .on_answer(&unpriced)
                .unwrap()
                .pass
        );
        let mut failed = answer("4");
        failed.error = Some(crate::engine::EngineError::Cancelled);
        assert!(!Assertion::new(has("4")).on_answer(&failed).unwrap().pass);
    }
}
