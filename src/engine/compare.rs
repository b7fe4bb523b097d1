//! Comparison of a fan-out's answers: the results in target order, the
//! consensus over one answer per target, per-target stability, the judge, and
//! the JSON every face prints. Shared by `compare`, serve's `llm.compare` and
//! the TUI's consensus view; no face owns it.

use serde_json::{json, Value};

use super::consensus::{
    analyze_with, stability, AnswerInput, Consensus, ConsensusOptions, QuestionKind, Stability,
};
use super::judge::{self, JudgeOutcome};
use super::{Completion, Engine, EngineError, FinishReason, StartOptions, Tally};

/// Parse a kind as the faces spell it (`number`, `yes-no`, `choice`,
/// `final-line`, `open`; case and `_`/`-` do not matter).
pub fn parse_kind(s: &str) -> Option<QuestionKind> {
    match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
        "number" => Some(QuestionKind::Number),
        "yes-no" | "yesno" => Some(QuestionKind::YesNo),
        "choice" => Some(QuestionKind::Choice),
        "final-line" | "finalline" => Some(QuestionKind::FinalLine),
        "open" => Some(QuestionKind::Open),
        _ => None,
    }
}

/// Everything a run of `compare` produced, ready to print.
#[derive(Debug)]
pub struct Report {
    /// The prompt.
    pub prompt: String,
    /// Runs per target.
    pub repeat: u32,
    /// Distinct labels of the targets, in order.
    pub labels: Vec<String>,
    /// Every result: (target index, run number from 1, completion), target-major.
    pub results: Vec<(usize, u32, Completion)>,
    /// Index into `results` of the run standing for each target.
    pub representative: Vec<usize>,
    /// Consensus over the representatives.
    pub consensus: Consensus,
    /// Per-target stability.
    pub stability: Vec<Stability>,
    /// The judge, if asked.
    pub judge: Option<Result<JudgeOutcome, String>>,
}

impl Report {
    /// Results that failed (cancelled ones included).
    pub fn failed(&self) -> usize {
        Tally::of(self.results.iter().map(|(_, _, c)| c)).failed() as usize
    }

    /// Whether every result failed (and there was at least one).
    pub fn all_failed(&self) -> bool {
        !self.results.is_empty() && self.failed() == self.results.len()
    }

    /// The judge's completion, when it answered.
    pub fn judge_completion(&self) -> Option<&Completion> {
        match &self.judge {
            Some(Ok(j)) => Some(&j.completion),
            _ => None,
        }
    }

    /// The tally of every request, the judge's included.
    pub fn tally(&self) -> Tally {
        Tally::of(self.all_completions())
    }

    /// Total cost when every request's price is known, else `None`.
    pub fn cost_usd(&self) -> Option<f64> {
        self.tally().cost()
    }

    /// Sum of the costs that are known.
    pub fn cost_usd_known(&self) -> f64 {
        self.tally().cost_usd
    }

    fn all_completions(&self) -> impl Iterator<Item = &Completion> {
        self.results
            .iter()
            .map(|(_, _, c)| c)
            .chain(self.judge_completion())
    }
}

/// The completions of a fan-out in target order, as `(target index, run, completion)`;
/// a slot that never finished (the run was cancelled) is a cancelled completion.
pub fn collect_results(
    done: Vec<Option<Completion>>,
    slots: &[(usize, u32)],
    targets: &[String],
) -> Vec<(usize, u32, Completion)> {
    done.into_iter()
        .zip(slots)
        .zip(targets)
        .map(|((c, &(ti, r)), t)| {
            let c = c.unwrap_or_else(|| Completion {
                model: t.clone(),
                finish_reason: FinishReason::Cancelled,
                error: Some(EngineError::Cancelled),
                ..Default::default()
            });
            (ti, r, c)
        })
        .collect()
}

/// Ask `judge_target` to judge the answers standing for each target of `report`
/// (through the front door: the judge's request is reserved and noted like any run).
pub async fn judge_report(
    engine: &Engine,
    judge_target: &str,
    report: &Report,
    opts: StartOptions,
) -> Result<JudgeOutcome, String> {
    let reps: Vec<AnswerInput> = report
        .representative
        .iter()
        .map(|i| {
            let (ti, _, c) = &report.results[*i];
            AnswerInput::from_completion(report.labels[*ti].clone(), c)
        })
        .collect();
    judge::judge(engine, judge_target, &report.prompt, &reps, opts).await
}

/// `-m a -m b -m a` -> `a`, `b`, `a#2`: labels must tell results apart.
pub fn unique_labels(models: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in models {
        let mut label = m.clone();
        let mut n = 1;
        while out.contains(&label) {
            n += 1;
            label = format!("{m}#{n}");
        }
        out.push(label);
    }
    out
}

/// Consensus over one answer per target (the first run in the target's
/// largest cluster, so a flaky run does not speak for a stable model) and
/// stability per target. Pure: what the tests and the faces share.
pub fn analyse(
    prompt: &str,
    repeat: u32,
    labels: Vec<String>,
    results: Vec<(usize, u32, Completion)>,
    opts: ConsensusOptions,
) -> Report {
    let mut stabilities = Vec::new();
    let mut representative = Vec::new();
    for (ti, label) in labels.iter().enumerate() {
        let idx: Vec<usize> = (0..results.len()).filter(|i| results[*i].0 == ti).collect();
        let runs: Vec<AnswerInput> = idx
            .iter()
            .map(|i| AnswerInput::from_completion(label.clone(), &results[*i].2))
            .collect();
        let own = analyze_with(prompt, &runs, opts);
        let pick = own
            .clusters
            .first()
            .and_then(|c| c.members.first().copied())
            .unwrap_or(0);
        representative.push(idx.get(pick).copied().unwrap_or(0));
        stabilities.push(stability_with(prompt, label, &runs, opts));
    }
    let reps: Vec<AnswerInput> = representative
        .iter()
        .map(|i| {
            let (ti, _, c) = &results[*i];
            AnswerInput::from_completion(labels[*ti].clone(), c)
        })
        .collect();
    let consensus = analyze_with(prompt, &reps, opts);
    Report {
        prompt: prompt.to_string(),
        repeat,
        labels,
        results,
        representative,
        consensus,
        stability: stabilities,
        judge: None,
    }
}

fn stability_with(
    prompt: &str,
    label: &str,
    runs: &[AnswerInput],
    opts: ConsensusOptions,
) -> Stability {
    if opts == ConsensusOptions::default() {
        return stability(prompt, label, runs);
    }
    // Same measure as `stability`, with the user's kind and threshold.
    let c = analyze_with(prompt, runs, opts);
    Stability {
        label: label.to_string(),
        runs: runs.len(),
        answered: c.answered,
        failed: c.failed.len(),
        distinct: c.clusters.len(),
        self_agreement: c.agreement,
        majority_answer: c.majority_answer.or_else(|| {
            (c.clusters.len() == 1)
                .then(|| c.clusters[0].answer.clone())
                .flatten()
        }),
    }
}

/// The `--json` object.
pub fn to_json(r: &Report) -> Value {
    let results: Vec<Value> = r
        .results
        .iter()
        .map(|(ti, run, c)| {
            let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("target".into(), json!(r.labels[*ti]));
                m.insert("run".into(), json!(run));
            }
            v
        })
        .collect();
    let mut consensus = serde_json::to_value(&r.consensus).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut consensus {
        m.insert("headline".into(), json!(r.consensus.headline()));
        let reps: Vec<usize> = r.representative.clone();
        m.insert("result_index".into(), json!(reps));
    }
    let judge = match &r.judge {
        None => Value::Null,
        Some(Ok(j)) => serde_json::to_value(j).unwrap_or(Value::Null),
        Some(Err(e)) => json!({"error": e, "verdict": null, "completion": null}),
    };
    json!({
        "prompt": r.prompt,
        "repeat": r.repeat,
        "results": results,
        "consensus": consensus,
        "stability": r.stability,
        "judge": judge,
        "cost_usd": r.cost_usd(),
        "cost_usd_known": r.cost_usd_known(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(provider: &str, model: &str, text: &str) -> Completion {
        Completion {
            provider: provider.into(),
            model: model.into(),
            text: text.into(),
            cost_usd: Some(0.001),
            ..Default::default()
        }
    }

    #[test]
    fn representative_is_the_models_majority_run() {
        let results = vec![
            (0, 1, done("mock", "alpha", "5")),
            (0, 2, done("mock", "alpha", "4")),
            (0, 3, done("mock", "alpha", "four")),
            (1, 1, done("mock", "beta", "4")),
        ];
        let r = analyse(
            "What is 2+2?",
            3,
            vec!["mock/alpha".into(), "mock/beta".into()],
            results,
            ConsensusOptions::default(),
        );
        assert_eq!(r.representative, vec![1, 3]);
        assert_eq!(r.consensus.agreement, Some(1.0));
        assert_eq!(r.stability[0].distinct, 2);
        assert_eq!(r.failed(), 0);
        assert!((r.cost_usd().unwrap() - 0.004).abs() < 1e-12);
    }

    #[test]
    fn failures_and_unknown_cost() {
        let mut failed = done("mock", "beta", "");
        failed.error = Some(EngineError::Cancelled);
        failed.cost_usd = None;
        let r = analyse(
            "hi",
            1,
            vec!["a".into(), "b".into()],
            vec![(0, 1, done("mock", "alpha", "hi")), (1, 1, failed.clone())],
            ConsensusOptions::default(),
        );
        assert_eq!(r.failed(), 1);
        assert!(!r.all_failed());
        assert_eq!(
            r.cost_usd(),
            None,
            "one unknown price makes the total unknown"
        );
        assert!((r.cost_usd_known() - 0.001).abs() < 1e-12);
        let all = analyse(
            "hi",
            1,
            vec!["b".into()],
            vec![(0, 1, failed)],
            ConsensusOptions::default(),
        );
        assert!(all.all_failed());
    }

    #[test]
    fn duplicate_targets_get_distinct_labels() {
        let l = unique_labels(&["a".into(), "b".into(), "a".into(), "a".into()]);
        assert_eq!(l, vec!["a", "b", "a#2", "a#3"]);
    }

    #[test]
    fn kinds_parse_as_the_faces_spell_them() {
        assert_eq!(parse_kind("yes-no"), Some(QuestionKind::YesNo));
        assert_eq!(parse_kind("Final_Line"), Some(QuestionKind::FinalLine));
        assert_eq!(parse_kind("essay"), None);
    }
}
