//! Running a suite: the whole suite's cost projected and checked against the budget
//! before the first request, cases scheduled under a concurrency cap (the engine's
//! per-provider limits still gate every attempt), each case sent through the front
//! door ([`Engine::start`]), checked, and written to the ledger as it finishes so a
//! crash loses no finished case and `--resume` knows what is left.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::check::{answer_json, Check, CheckResult};
use super::suite::{Case, Suite};
use crate::engine::budget::{self, Projection};
use crate::engine::compare::{analyse, unique_labels};
use crate::engine::consensus::{ConsensusOptions, DEFAULT_THRESHOLD};
use crate::engine::front::Books;
use crate::engine::ledger::EvalCaseRow;
use crate::engine::request::{ChatRequest, Message};
use crate::engine::{Completion, Engine, EngineError, Refusal, RunOptions, StartOptions, Tally};

/// The judge's reply is cut at this many tokens (so its cost has a bound).
pub const JUDGE_MAX_TOKENS: u32 = 512;

/// How to run a suite.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Send even when a budget cap would be crossed.
    pub force: bool,
    /// Use the response cache (None: as configured).
    pub cache: Option<bool>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            concurrency: 16,
            force: false,
            cache: None,
        }
    }
}

/// One run of one target on one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunAnswer {
    /// Run number from 1.
    pub run: u32,
    /// The answer.
    pub text: String,
    /// Why the request failed.
    #[serde(default)]
    pub error: Option<String>,
    /// End to end.
    pub latency_ms: f64,
    /// Cost, when known.
    pub cost_usd: Option<f64>,
    /// Served from the response cache.
    #[serde(default)]
    pub cached: bool,
    /// Per-answer assertions.
    pub checks: Vec<CheckResult>,
}

/// One target on one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// The target's label.
    pub target: String,
    /// Every assertion held for every run.
    pub pass: bool,
    /// The runs.
    pub runs: Vec<RunAnswer>,
    /// Judge verdicts on the target's answer.
    #[serde(default)]
    pub checks: Vec<CheckResult>,
}

impl Cell {
    /// Every failed assertion, each once.
    pub fn failures(&self, case: &CaseOutcome) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let all = self
            .runs
            .iter()
            .flat_map(|r| r.checks.iter())
            .chain(&self.checks)
            .chain(&case.checks);
        for c in all.filter(|c| !c.pass) {
            let line = if c.detail.is_empty() {
                c.assertion.clone()
            } else {
                format!("{}: {}", c.assertion, c.detail)
            };
            if !out.contains(&line) {
                out.push(line);
            }
        }
        for r in &self.runs {
            if let Some(e) = &r.error {
                let line = format!("request failed: {e}");
                if !out.contains(&line) {
                    out.push(line);
                }
            }
        }
        out
    }

    /// Mean latency of the runs.
    pub fn latency_ms(&self) -> f64 {
        if self.runs.is_empty() {
            return 0.0;
        }
        self.runs.iter().map(|r| r.latency_ms).sum::<f64>() / self.runs.len() as f64
    }

    /// Known cost of the runs.
    pub fn cost_usd_known(&self) -> f64 {
        self.runs.iter().filter_map(|r| r.cost_usd).sum()
    }
}

/// A finished case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseOutcome {
    /// Its key in the suite.
    pub key: String,
    /// Its position.
    pub index: usize,
    /// The prompt sent.
    pub prompt: String,
    /// Every assertion held for every target.
    pub pass: bool,
    /// Agreement of the targets' answers (the consensus analysis), when two answered.
    pub agreement: Option<f64>,
    /// Case-wide assertions (consensus).
    #[serde(default)]
    pub checks: Vec<CheckResult>,
    /// One per target.
    pub cells: Vec<Cell>,
    /// Front-door run ids (answers, then judges): their requests are in the ledger.
    pub run_ids: Vec<String>,
    /// Total cost, judges included, when every price is known.
    pub cost_usd: Option<f64>,
    /// Sum of the known costs.
    pub cost_usd_known: f64,
}

/// Progress after each finished case.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Cases finished (resumed ones included).
    pub done: usize,
    /// Cases in the suite.
    pub total: usize,
    /// Cases that failed an assertion.
    pub failed: usize,
    /// Spent so far (known costs).
    pub spent_usd: f64,
    /// Cases finished in this process.
    pub done_here: usize,
    /// Since this process started running cases.
    pub started: Instant,
}

/// How a run ended.
#[derive(Debug, Default)]
pub struct RunEnd {
    /// Cases finished in this process, in finishing order.
    pub outcomes: Vec<CaseOutcome>,
    /// Stopped by the caller (Ctrl+C) before every case finished.
    pub interrupted: bool,
    /// The front door refused a case mid-suite; the suite stopped there.
    pub refusal: Option<Refusal>,
    /// Cases the ledger could not record, with the last error.
    pub unrecorded: Option<(usize, String)>,
}

/// A ledger-side failure of the eval bookkeeping.
fn ledger_of(engine: &Engine) -> Option<crate::engine::ledger::BackgroundLedger> {
    match engine.books() {
        Books::On { ledger, .. } => Some(ledger.clone()),
        _ => None,
    }
}

/// The request a judge grades one answer with.
pub fn judge_request(rubric: &str, prompt: &str, answer: &str) -> ChatRequest {
    let system = "You grade one AI answer against a rubric. Judge substance, not style. \
Reply with one JSON object and nothing else: {\"pass\": true or false, \"score\": a number from 0 to 1, \
\"reason\": \"one short sentence\"}.";
    let body = format!(
        "# Rubric\n\n{}\n\n# Prompt\n\n{}\n\n# Answer\n\n{}\n\nReply with the JSON object only.",
        rubric.trim(),
        prompt.trim(),
        answer.trim()
    );
    ChatRequest {
        messages: vec![Message::system(system), Message::user(body)],
        temperature: Some(0.0),
        max_tokens: Some(JUDGE_MAX_TOKENS),
        ..Default::default()
    }
}

/// Read a grade: `{"pass": bool, "score": 0..1, "reason": "..."}`, leniently (fences,
/// prose around it, a percentage, "yes"/"pass" for true). Pass is decided by
/// `threshold` on the score when given, else by `pass` (else score ≥ 0.5).
pub fn parse_grade(text: &str, threshold: Option<f64>) -> Result<(bool, String), String> {
    let v = answer_json(text)
        .ok()
        .filter(|v| v.is_object())
        .or_else(|| {
            let (a, b) = (text.find('{')?, text.rfind('}')?);
            (a < b)
                .then(|| serde_json::from_str::<serde_json::Value>(&text[a..=b]).ok())
                .flatten()
        })
        .ok_or_else(|| "the judge's reply holds no JSON grade".to_string())?;
    let score = v.get("score").and_then(|s| match s {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().trim_end_matches('%').parse().ok(),
        _ => None,
    });
    let score = score.map(|s| if s > 1.0 { s / 100.0 } else { s });
    let said = v.get("pass").and_then(|p| match p {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "pass" | "passed" => Some(true),
            "false" | "no" | "fail" | "failed" => Some(false),
            _ => None,
        },
        _ => None,
    });
    let reason = v
        .get("reason")
        .and_then(|r| r.as_str())
        .unwrap_or("")
        .to_string();
    let pass = match (threshold, score, said) {
        (Some(t), Some(s), _) => s >= t,
        (Some(_), None, _) => return Err("the judge gave no score".into()),
        (None, _, Some(p)) => p,
        (None, Some(s), None) => s >= 0.5,
        (None, None, None) => return Err("the judge's grade has neither pass nor score".into()),
    };
    let detail = match score {
        Some(s) => format!("score {s:.2}: {reason}"),
        None => reason,
    };
    Ok((pass, detail))
}

/// The suite's targets, repeated per run, as one front-door fan-out.
fn fan_out(targets: &[String], repeat: u32) -> (Vec<String>, Vec<(usize, u32)>) {
    let mut t = Vec::new();
    let mut slots = Vec::new();
    for (ti, m) in targets.iter().enumerate() {
        for r in 1..=repeat {
            t.push(m.clone());
            slots.push((ti, r));
        }
    }
    (t, slots)
}

/// The bound of the cases not in `skip`, judges included. `exact` counts tokens with
/// each target's tokenizer (as the front door does); otherwise characters are
/// counted (nothing loaded), enough for what is shown when no budget is set.
pub fn project_suite(
    engine: &Engine,
    suite: &Suite,
    skip: &HashSet<String>,
    exact: bool,
) -> Result<Projection, EngineError> {
    let mut out = Projection::default();
    for case in suite.cases.iter().filter(|c| !skip.contains(&c.key)) {
        let (targets, _) = fan_out(&suite.targets, case.repeat);
        let p = if exact {
            budget::project(engine, &case.request, &targets)?
        } else {
            budget::project_quick(engine, &case.request, &targets)
        };
        for a in &case.asserts {
            let Check::Judge { rubric, model, .. } = &a.check else {
                continue;
            };
            // One grade per target; the answer graded is at most its output bound.
            let req = judge_request(rubric, &case.prompt, "");
            let jp = if exact {
                budget::project(engine, &req, std::slice::from_ref(model))?
            } else {
                budget::project_quick(engine, &req, std::slice::from_ref(model))
            };
            let Some(j) = jp.targets.into_iter().next() else {
                continue;
            };
            for tp in p.targets.iter().step_by(case.repeat as usize) {
                let mut j = j.clone();
                match tp.max_output_tokens {
                    Some(n) => {
                        j.input_tokens += n;
                        j.bound_usd = budget::project_target(
                            engine.pricing(),
                            &j.target,
                            &j.provider,
                            &j.model,
                            j.input_tokens,
                            true,
                            Some(JUDGE_MAX_TOKENS),
                        )
                        .bound_usd;
                    }
                    None if j.bound_usd != Some(0.0) => j.bound_usd = None,
                    None => {}
                }
                out.targets.push(j);
            }
        }
        out.targets.extend(p.targets);
    }
    Ok(out)
}

/// Check a suite's projection against the caps, with what is spent so far.
pub async fn check_budget(engine: &Engine, p: &Projection) -> Result<(), Refusal> {
    let budget = engine.budget();
    if !budget.is_set() {
        return Ok(());
    }
    let Some(ledger) = ledger_of(engine) else {
        return Err(Refusal::Target(EngineError::Config {
            message: "a budget is set but the ledger is off, so spending cannot be tracked".into(),
        }));
    };
    let spend = tokio::task::spawn_blocking(move || ledger.wait().and_then(|l| l.spend(None)))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(String::from))
        .map_err(|e| {
            Refusal::Target(EngineError::Config {
                message: format!("cannot read spending from the ledger: {e}"),
            })
        })?;
    let mut deduped = p.clone();
    let mut seen = HashSet::new();
    // An unpriced target is named once, however many cases use it.
    deduped
        .targets
        .retain(|t| t.bound_usd.is_some() || seen.insert(t.target.clone()));
    budget.check(spend, &deduped).map_err(Refusal::Budget)
}

/// The suite as the ledger names it: its absolute path.
pub fn suite_name(suite: &Suite) -> String {
    std::fs::canonicalize(&suite.path)
        .unwrap_or_else(|_| suite.path.clone())
        .display()
        .to_string()
}

/// Note the eval run in the ledger (again, on resume). Without a ledger, nothing.
pub async fn begin(engine: &Engine, id: &str, suite: &Suite) -> Result<(), String> {
    let Some(ledger) = ledger_of(engine) else {
        return Ok(());
    };
    let (id, name, hash, targets, n) = (
        id.to_string(),
        suite_name(suite),
        suite.hash.clone(),
        suite.targets.clone(),
        suite.cases.len() as u64,
    );
    tokio::task::spawn_blocking(move || {
        ledger
            .wait()?
            .begin_eval_run(&id, &name, &hash, &targets, n)
            .map_err(String::from)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Mark the eval run `done` or `interrupted`.
pub async fn end(engine: &Engine, id: &str, status: &str) -> Result<(), String> {
    let Some(ledger) = ledger_of(engine) else {
        return Ok(());
    };
    let (id, status) = (id.to_string(), status.to_string());
    tokio::task::spawn_blocking(move || {
        ledger
            .wait()?
            .end_eval_run(&id, &status)
            .map_err(String::from)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A new eval run id.
pub fn new_eval_id() -> String {
    format!("eval-{}", crate::engine::run::new_id(6))
}

/// Run the cases of `suite` not in `skip`; `on_case` hears of each as it is recorded.
/// Cancelling `cancel` stops scheduling and cancels the cases in flight (they are not
/// recorded, so `--resume` runs them again).
#[allow(clippy::too_many_arguments)]
pub async fn run_suite(
    engine: &Engine,
    suite: Arc<Suite>,
    eval_run_id: &str,
    skip: &HashSet<String>,
    already: (usize, usize, f64),
    opts: EvalOptions,
    cancel: CancellationToken,
    on_case: &mut dyn FnMut(&CaseOutcome, &Progress),
) -> RunEnd {
    let conc = opts.concurrency.max(1);
    let sem = Arc::new(Semaphore::new(conc));
    let (tx, mut rx) = mpsc::channel::<Result<Option<CaseOutcome>, Refusal>>(conc * 2 + 8);
    let todo: Vec<usize> = suite
        .cases
        .iter()
        .filter(|c| !skip.contains(&c.key))
        .map(|c| c.index)
        .collect();
    let producer = {
        let (engine, suite, cancel, opts) =
            (engine.clone(), suite.clone(), cancel.clone(), opts.clone());
        tokio::spawn(async move {
            for i in todo {
                let case = &suite.cases[i];
                let need = (case.repeat as usize * suite.targets.len()).clamp(1, conc) as u32;
                let permit = tokio::select! {
                    p = sem.clone().acquire_many_owned(need) => match p { Ok(p) => p, Err(_) => break },
                    _ = cancel.cancelled() => break,
                };
                let (engine, suite, cancel, opts, tx) = (
                    engine.clone(),
                    suite.clone(),
                    cancel.clone(),
                    opts.clone(),
                    tx.clone(),
                );
                tokio::spawn(async move {
                    let case = &suite.cases[i];
                    let r = run_case(&engine, &suite.targets, case, &opts, &cancel).await;
                    drop(permit);
                    let _ = tx.send(r).await;
                });
            }
        })
    };
    let ledger = ledger_of(engine);
    let mut end = RunEnd::default();
    let (mut done, mut failed, mut spent) = already;
    let started = Instant::now();
    let mut unrecorded = 0usize;
    while let Some(msg) = rx.recv().await {
        match msg {
            Ok(Some(outcome)) => {
                if let Some(l) = &ledger {
                    let row = EvalCaseRow {
                        case_key: outcome.key.clone(),
                        case_index: outcome.index as u64,
                        passed: outcome.pass,
                        cost_usd: outcome.cost_usd,
                        result: serde_json::to_string(&outcome).unwrap_or_default(),
                    };
                    let (l, id) = (l.clone(), eval_run_id.to_string());
                    let r =
                        tokio::task::spawn_blocking(move || l.wait()?.record_eval_case(&id, &row))
                            .await
                            .map_err(|e| e.to_string())
                            .and_then(|r| r.map_err(String::from));
                    if let Err(e) = r {
                        engine.ledger_health().fail(&e);
                        unrecorded += 1;
                        end.unrecorded = Some((unrecorded, e));
                    }
                }
                done += 1;
                failed += usize::from(!outcome.pass);
                spent += outcome.cost_usd_known;
                let p = Progress {
                    done,
                    total: suite.cases.len(),
                    failed,
                    spent_usd: spent,
                    done_here: end.outcomes.len() + 1,
                    started,
                };
                on_case(&outcome, &p);
                end.outcomes.push(outcome);
            }
            Ok(None) => end.interrupted = true,
            Err(r) => {
                if end.refusal.is_none() {
                    end.refusal = Some(r);
                }
                cancel.cancel();
            }
        }
    }
    let _ = producer.await;
    if cancel.is_cancelled() && end.refusal.is_none() {
        end.interrupted = done < suite.cases.len();
    }
    end
}

async fn collect_cancellable(
    handle: crate::engine::RunHandle,
    cancel: &CancellationToken,
) -> Vec<Completion> {
    let token = handle.cancel_token();
    let fut = handle.collect();
    tokio::pin!(fut);
    tokio::select! {
        cs = &mut fut => cs,
        _ = cancel.cancelled() => {
            token.cancel();
            fut.await
        }
    }
}

/// Run one case: every target (× repeats) in one front-door fan-out, the answer
/// checks, the consensus, then the judges (each through the front door too).
/// `Ok(None)` when it was cancelled before it finished.
async fn run_case(
    engine: &Engine,
    targets: &[String],
    case: &Case,
    opts: &EvalOptions,
    cancel: &CancellationToken,
) -> Result<Option<CaseOutcome>, Refusal> {
    if cancel.is_cancelled() {
        return Ok(None);
    }
    let (fan, slots) = fan_out(targets, case.repeat);
    let start = StartOptions {
        run: RunOptions {
            cache: opts.cache,
            source_agent: Some("quorum-eval".into()),
            ..Default::default()
        },
        force: opts.force,
        ..Default::default()
    };
    let started = engine
        .start(case.request.clone(), fan, start.clone())
        .await?;
    let mut run_ids = vec![started.handle.run_id.clone()];
    let cs = collect_cancellable(started.handle, cancel).await;
    if cancel.is_cancelled()
        && cs
            .iter()
            .any(|c| matches!(c.error, Some(EngineError::Cancelled)))
    {
        return Ok(None);
    }
    let labels = unique_labels(targets);
    let results: Vec<(usize, u32, Completion)> = slots
        .iter()
        .zip(cs)
        .map(|(&(ti, r), c)| (ti, r, c))
        .collect();
    let mut tally = Tally::default();
    let mut cells: Vec<Cell> = labels
        .iter()
        .map(|l| Cell {
            target: l.clone(),
            pass: true,
            runs: Vec::new(),
            checks: Vec::new(),
        })
        .collect();
    for (ti, run, c) in &results {
        tally.add(c);
        let checks: Vec<CheckResult> = case.asserts.iter().filter_map(|a| a.on_answer(c)).collect();
        cells[*ti].runs.push(RunAnswer {
            run: *run,
            text: c.text.clone(),
            error: c.error.as_ref().map(|e| e.to_string()),
            latency_ms: c.latency_ms,
            cost_usd: c.cost_usd,
            cached: c.cached,
            checks,
        });
    }
    // The consensus over one answer per target (its majority run).
    let report = analyse(
        &case.prompt,
        case.repeat,
        labels.clone(),
        results,
        ConsensusOptions::default(),
    );
    let agreement = report.consensus.agreement;
    let mut case_checks = Vec::new();
    for a in &case.asserts {
        if let Check::Consensus { threshold, kind } = &a.check {
            let agreement = if kind.is_some() {
                let r = analyse(
                    &case.prompt,
                    case.repeat,
                    labels.clone(),
                    report.results.clone(),
                    ConsensusOptions {
                        kind: *kind,
                        threshold: DEFAULT_THRESHOLD,
                    },
                );
                r.consensus.agreement
            } else {
                agreement
            };
            case_checks.push(match agreement {
                Some(x) => CheckResult {
                    assertion: a.label.clone(),
                    pass: x + 1e-9 >= *threshold,
                    detail: format!("agreement {x:.2}"),
                },
                None => CheckResult {
                    assertion: a.label.clone(),
                    pass: false,
                    detail: "fewer than two targets answered".into(),
                },
            });
        }
    }
    // Judges grade each target's standing answer, through the front door.
    for a in &case.asserts {
        let Check::Judge {
            rubric,
            model,
            threshold,
        } = &a.check
        else {
            continue;
        };
        for (ti, &ri) in report.representative.iter().enumerate() {
            let (_, _, c) = &report.results[ri];
            if c.error.is_some() {
                cells[ti].checks.push(CheckResult {
                    assertion: a.label.clone(),
                    pass: false,
                    detail: "nothing to grade: the request failed".into(),
                });
                continue;
            }
            let req = judge_request(rubric, &case.prompt, &c.text);
            let s = engine
                .start(req, vec![model.clone()], start.clone())
                .await?;
            run_ids.push(s.handle.run_id.clone());
            let jc = collect_cancellable(s.handle, cancel)
                .await
                .into_iter()
                .next()
                .unwrap_or_default();
            if cancel.is_cancelled() && matches!(jc.error, Some(EngineError::Cancelled)) {
                return Ok(None);
            }
            tally.add(&jc);
            let r = match &jc.error {
                Some(e) => CheckResult {
                    assertion: a.label.clone(),
                    pass: false,
                    detail: format!("the judge request failed: {e}"),
                },
                None => match parse_grade(&jc.text, *threshold) {
                    Ok((pass, detail)) => CheckResult {
                        assertion: a.label.clone(),
                        pass,
                        detail,
                    },
                    Err(e) => CheckResult {
                        assertion: a.label.clone(),
                        pass: false,
                        detail: e,
                    },
                },
            };
            cells[ti].checks.push(r);
        }
    }
    let case_ok = case_checks.iter().all(|c| c.pass);
    for cell in &mut cells {
        cell.pass = case_ok
            && cell
                .runs
                .iter()
                .all(|r| r.error.is_none() && r.checks.iter().all(|c| c.pass))
            && cell.checks.iter().all(|c| c.pass);
    }
    Ok(Some(CaseOutcome {
        key: case.key.clone(),
        index: case.index,
        prompt: case.prompt.clone(),
        pass: cells.iter().all(|c| c.pass),
        agreement,
        checks: case_checks,
        cells,
        run_ids,
        cost_usd: tally.cost(),
        cost_usd_known: tally.cost_usd,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grades_are_read_leniently() {
        assert!(
            parse_grade("{\"pass\": true, \"score\": 0.9, \"reason\": \"ok\"}", None)
                .unwrap()
                .0
        );
        let (p, d) = parse_grade(
            "Here you go:\n```json\n{\"pass\": \"no\", \"score\": 30, \"reason\": \"wrong\"}\n```",
            None,
        )
        .unwrap();
        assert!(!p);
        assert!(d.contains("0.30"), "{d}");
        assert!(!parse_grade("{\"score\": 0.7}", Some(0.8)).unwrap().0);
        assert!(parse_grade("{\"score\": 0.7}", None).unwrap().0);
        assert!(parse_grade("looks fine to me", None).is_err());
    }
}
