//! `quorum compare`: one prompt to several targets at once; one result per
//! target (the `ask --json` object) plus the consensus block, as text, JSON,
//! Markdown or CSV.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};

use clap::{Args, ValueEnum};

use super::ask::read_prompt;
use super::{runtime, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::app::{self, GlobalFlags};
use crate::engine::compare::{
    analyse, collect_results, judge_report, to_json, unique_labels, Report,
};
use crate::engine::consensus::{
    extract_final_answer, ConsensusOptions, QuestionKind, DEFAULT_THRESHOLD,
};
use crate::engine::{ChatRequest, Completion, Message, Refusal, RunOptions, StartOptions};
use crate::engine::{StreamEvent, TargetEvent};

/// Exit code: every target failed.
pub const EXIT_ALL_FAILED: i32 = 3;

const AFTER_HELP: &str = "\
Output:
  default     each answer under a header, then the consensus, judge and stability
  --json      one JSON object: {prompt, repeat, results: [ask --json object + target, run],
              consensus, stability, judge, cost_usd, cost_usd_known}
  --markdown  a results table, the consensus, the judge, then every answer
  --csv       one row per result (header first); cluster and in_majority are set on
              the run that stood for its target in the consensus

Consensus: answers are compared after normalising case, whitespace, markdown and
punctuation. When the prompt asks a closed question (a number, yes/no, a choice
letter, a one-word or final answer; see --kind) the short answers are extracted
and agreement is the share of answering targets that give the majority answer;
otherwise it is the mean text similarity (token F1 and sequence ratio), and
answers at or above --threshold cluster together. Failed and empty answers are
listed, never counted as agreement. With --repeat N every target runs N times:
its first run in its largest cluster stands for it, and each target's distinct
answers and self-agreement are reported.

Exit codes:
  0  every request succeeded
  1  some requests failed (the others are still printed)
  2  usage or configuration error (nothing was sent)
  3  every request failed
The judge's own failure is reported but does not change the exit code.";

/// Forced answer kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// A number: 4, 4.0 and "four" agree.
    Number,
    /// Yes or no.
    YesNo,
    /// A choice letter A-E.
    Choice,
    /// The final line of each answer.
    FinalLine,
    /// Compare whole texts only.
    Open,
}

impl From<KindArg> for QuestionKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Number => QuestionKind::Number,
            KindArg::YesNo => QuestionKind::YesNo,
            KindArg::Choice => QuestionKind::Choice,
            KindArg::FinalLine => QuestionKind::FinalLine,
            KindArg::Open => QuestionKind::Open,
        }
    }
}

/// Arguments of `quorum compare`.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct CompareArgs {
    /// A target as provider/model (or an alias); repeat the flag for each.
    #[arg(short, long = "model", value_name = "PROVIDER/MODEL", required = true)]
    pub models: Vec<String>,
    /// Ask this model to judge the anonymised answers (its cost is counted).
    #[arg(long, value_name = "PROVIDER/MODEL")]
    pub judge: Option<String>,
    /// Run every target N times to measure its stability.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
    /// Print one JSON object.
    #[arg(long, conflicts_with_all = ["markdown", "csv"])]
    pub json: bool,
    /// Print Markdown.
    #[arg(long, conflicts_with = "csv")]
    pub markdown: bool,
    /// Print CSV, one row per result.
    #[arg(long)]
    pub csv: bool,
    /// System prompt.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Output token limit.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    #[arg(long, value_name = "T")]
    pub temperature: Option<f32>,
    /// What kind of answer to compare (default: guessed from the prompt).
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// Text similarity at or above which open answers cluster together (0..1).
    #[arg(long, value_name = "X", default_value_t = DEFAULT_THRESHOLD)]
    pub threshold: f64,
    /// Send even when the projected cost would cross a budget cap.
    #[arg(long)]
    pub force: bool,
    /// Bypass the response cache for this run.
    #[arg(long)]
    pub no_cache: bool,
    /// Reasoning, structured output, tools and attachments.
    #[command(flatten)]
    pub options: super::options::OptionFlags,
    /// The prompt (read from stdin when absent).
    pub prompt: Vec<String>,
}

/// The exit code of a report: 0 all succeeded, 1 some failed, 3 all failed.
pub fn exit_code(r: &Report) -> i32 {
    if r.all_failed() {
        EXIT_ALL_FAILED
    } else if r.failed() > 0 {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

/// Run `quorum compare`.
pub fn run(flags: &GlobalFlags, args: CompareArgs) -> i32 {
    let (engine, _settings) = match app::load(flags) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("quorum: {e:#}");
            return EXIT_USAGE;
        }
    };
    if !(0.0..=1.0).contains(&args.threshold) {
        eprintln!("quorum: --threshold must be between 0 and 1");
        return EXIT_USAGE;
    }
    let prompt = match read_prompt(&args.prompt) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("quorum: {e}");
            return EXIT_USAGE;
        }
    };
    let mut req = ChatRequest::default();
    if let Some(s) = &args.system {
        req.messages.push(Message::system(s.clone()));
    }
    req.messages.push(Message::user(prompt.clone()));
    req.max_tokens = args.max_tokens;
    req.temperature = args.temperature;
    // Files are read and checked here, before anything is sent.
    if let Err(e) = args.options.to_options().apply(&mut req) {
        eprintln!("quorum: {e}");
        return EXIT_USAGE;
    }
    // The judge is checked before anything is sent; the targets at the front door.
    if let Some(j) = &args.judge {
        if let Err(e) = engine.check_targets(std::slice::from_ref(j)) {
            eprintln!("quorum: {e}");
            return EXIT_USAGE;
        }
    }
    let repeat = args.repeat;
    let mut targets = Vec::new();
    let mut slots = Vec::new();
    for (ti, m) in args.models.iter().enumerate() {
        for r in 1..=repeat {
            targets.push(m.clone());
            slots.push((ti, r));
        }
    }
    let progress = std::io::stderr().is_terminal();
    let opts = ConsensusOptions {
        kind: args.kind.map(Into::into),
        threshold: args.threshold,
    };
    let start = StartOptions {
        run: RunOptions {
            cache: if args.no_cache { Some(false) } else { None },
            ..Default::default()
        },
        force: args.force,
        ..Default::default()
    };
    let judge_start = start.clone();
    let rt = runtime();
    let report = rt.block_on(async {
        // The front door refuses the whole fan-out before anything is sent.
        let started = engine.start(req, targets, start).await?;
        for w in &started.warnings {
            eprintln!("quorum: warning: {w}");
        }
        // `cheapest:TIER` is named by the member it chose.
        let targets = started.targets;
        let models: Vec<String> = targets.iter().step_by(repeat as usize).cloned().collect();
        let labels = unique_labels(&models);
        let mut handle = started.handle;
        let cancel = handle.cancel_token();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                cancel.cancel();
            }
        });
        let mut done: Vec<Option<Completion>> = vec![None; targets.len()];
        let mut finished = 0;
        while let Some(TargetEvent { target, event, .. }) = handle.recv().await {
            if let StreamEvent::Finished(c) | StreamEvent::Failed(c) = event {
                finished += 1;
                if progress {
                    let what = match &c.error {
                        Some(e) => format!("failed: {e}"),
                        None => format!("done in {:.1} s", c.latency_ms / 1000.0),
                    };
                    eprintln!(
                        "quorum: {} {what} ({finished}/{})",
                        targets[target],
                        targets.len()
                    );
                }
                done[target] = Some(*c);
            }
        }
        let results = collect_results(done, &slots, &targets);
        let mut report = analyse(&prompt, repeat, labels, results, opts);
        if let Some(j) = &args.judge {
            let outcome = judge_report(&engine, j, &report, judge_start).await;
            report.judge = Some(outcome);
        }
        Ok::<_, Refusal>(report)
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("quorum: {e}");
            return EXIT_USAGE;
        }
    };

    let out = if args.json {
        let mut s = serde_json::to_string(&to_json(&report)).unwrap_or_default();
        s.push('\n');
        s
    } else if args.markdown {
        to_markdown(&report)
    } else if args.csv {
        to_csv(&report)
    } else {
        to_text(&report)
    };
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let _ = lock.write_all(out.as_bytes());
    let _ = lock.flush();
    let mut unrecorded = false;
    for (_, _, c) in &report.results {
        unrecorded |= super::ask::not_recorded(c);
    }
    for (ti, run, c) in &report.results {
        if let Some(e) = &c.error {
            let run = if repeat > 1 {
                format!(" (run {run})")
            } else {
                String::new()
            };
            eprintln!("quorum: {}{run}: {e}", report.labels[*ti]);
        }
    }
    match &report.judge {
        Some(Ok(j)) => {
            if let Some(e) = &j.error {
                eprintln!("quorum: judge {}: {e}", j.target);
            }
        }
        Some(Err(e)) => eprintln!("quorum: judge skipped: {e}"),
        None => {}
    }
    match exit_code(&report) {
        EXIT_OK if unrecorded => EXIT_FAILED,
        code => code,
    }
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

fn cost_str(c: &Completion) -> String {
    match c.cost_usd {
        Some(x) => format!("${x:.6} {}", c.cost_source.mark()),
        None => "$? ?".to_string(),
    }
}

fn total_cost_str(r: &Report) -> String {
    match r.cost_usd() {
        Some(x) => format!("${x:.6}"),
        None if r.cost_usd_known() > 0.0 => format!("${:.6} + unknown", r.cost_usd_known()),
        None => "unknown".to_string(),
    }
}

fn secs(ms: Option<f64>) -> String {
    ms.map(|m| format!("{:.2} s", m / 1000.0))
        .unwrap_or_else(|| "–".into())
}

fn result_name(r: &Report, ti: usize, run: u32) -> String {
    if r.repeat > 1 {
        format!("{} · run {run}", r.labels[ti])
    } else {
        r.labels[ti].clone()
    }
}

/// The default, human-readable output.
pub fn to_text(r: &Report) -> String {
    let mut s = String::new();
    for (ti, run, c) in &r.results {
        let name = result_name(r, *ti, *run);
        match &c.error {
            Some(e) => {
                let _ = writeln!(s, "━━ {name} · failed · {}", e.kind());
                let _ = writeln!(s, "{e}");
                if !c.text.trim().is_empty() {
                    let _ = writeln!(s, "partial answer before the failure (not compared):");
                    let _ = writeln!(s, "{}", c.text.trim_end());
                }
            }
            None => {
                let _ = writeln!(
                    s,
                    "━━ {name} · {} · {}→{} tok · {} · TTFT {} · {}",
                    c.finish_reason,
                    c.usage.input_tokens,
                    c.usage.output_tokens,
                    cost_str(c),
                    secs(c.ttft_ms),
                    secs(Some(c.latency_ms)),
                );
                let text = c.text.trim_end();
                if text.is_empty() && c.tool_calls.is_empty() {
                    let _ = writeln!(s, "(empty answer)");
                } else {
                    let _ = writeln!(s, "{text}");
                }
                for t in &c.tool_calls {
                    let mark = super::options::tool_mark(t);
                    let _ = writeln!(s, "[tool call] {}({}){mark}", t.name, t.arguments);
                }
                for line in super::options::verdict_lines(c) {
                    let _ = writeln!(s, "[{line}]");
                }
            }
        }
        s.push('\n');
    }
    let k = &r.consensus;
    let _ = writeln!(s, "consensus ({}): {}", kind_word(k.kind), k.headline());
    if let Some(m) = k.majority {
        let _ = writeln!(s, "  majority:   {}", k.clusters[m].labels.join(", "));
    }
    for (ci, c) in k.clusters.iter().enumerate() {
        if Some(ci) == k.majority {
            continue;
        }
        let said = c
            .answer
            .as_ref()
            .map(|a| format!(" said \"{a}\""))
            .unwrap_or_default();
        let who = if k.majority.is_some() {
            "dissent:    "
        } else {
            "group:      "
        };
        let _ = writeln!(s, "  {who}{}{said}", c.labels.join(", "));
    }
    if !k.failed.is_empty() {
        let _ = writeln!(s, "  failed:     {}", k.failed.join(", "));
    }
    if !k.empty.is_empty() {
        let _ = writeln!(s, "  empty:      {}", k.empty.join(", "));
    }
    if !k.pairs.is_empty() {
        let _ = writeln!(s, "  similarity (token F1 / sequence ratio):");
        for p in &k.pairs {
            let _ = writeln!(
                s,
                "    {} ~ {}: {:.2} / {:.2}",
                r.labels[p.a], r.labels[p.b], p.similarity.token_f1, p.similarity.sequence_ratio
            );
        }
    }
    if r.repeat > 1 {
        let _ = writeln!(s, "\nstability ({} runs each):", r.repeat);
        for st in &r.stability {
            let _ = writeln!(
                s,
                "  {}: {} distinct of {} answered · self-agreement {}{}",
                st.label,
                st.distinct,
                st.answered,
                st.self_agreement
                    .map(|a| format!("{a:.2}"))
                    .unwrap_or_else(|| "–".into()),
                st.majority_answer
                    .as_ref()
                    .map(|a| format!(" · mostly \"{a}\""))
                    .unwrap_or_default()
            );
        }
    }
    match &r.judge {
        Some(Ok(j)) => {
            let _ = writeln!(s, "\njudge ({}, {}):", j.target, cost_str(&j.completion));
            match (&j.verdict, &j.error) {
                (Some(v), _) => {
                    let best = match (&v.best, &v.best_target) {
                        (Some(l), Some(t)) => format!("Answer {l} ({t})"),
                        (Some(l), None) => format!("Answer {l}"),
                        _ => "none".into(),
                    };
                    let agreement = v
                        .agreement
                        .map(|a| format!("{a:.2}"))
                        .unwrap_or_else(|| "–".into());
                    let _ = writeln!(s, "  agreement {agreement} · best {best}");
                    if !v.summary.is_empty() {
                        let _ = writeln!(s, "  {}", v.summary);
                    }
                    for d in &v.disagreements {
                        let _ = writeln!(s, "  - {d}");
                    }
                }
                (None, Some(e)) => {
                    let _ = writeln!(s, "  no verdict: {e}");
                }
                (None, None) => {}
            }
        }
        Some(Err(e)) => {
            let _ = writeln!(s, "\njudge skipped: {e}");
        }
        None => {}
    }
    let _ = writeln!(s, "\ntotal cost: {}", total_cost_str(r));
    s
}

fn kind_word(k: QuestionKind) -> &'static str {
    match k {
        QuestionKind::Number => "number",
        QuestionKind::YesNo => "yes/no",
        QuestionKind::Choice => "choice",
        QuestionKind::FinalLine => "final line",
        QuestionKind::Open => "open",
    }
}

/// Escape a table cell: pipes and newlines would break the row.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\r', '\n'], " ")
}

/// `--markdown`.
pub fn to_markdown(r: &Report) -> String {
    let mut s = String::new();
    let k = &r.consensus;
    let _ = writeln!(s, "# quorum compare\n");
    let _ = writeln!(s, "> {}\n", md_cell(r.prompt.trim()));
    let _ = writeln!(
        s,
        "| target | run | status | final answer | tokens in/out | cost | TTFT | latency |"
    );
    let _ = writeln!(s, "|---|---:|---|---|---:|---:|---:|---:|");
    for (i, (ti, run, c)) in r.results.iter().enumerate() {
        let status = match &c.error {
            Some(e) => format!("failed: {}", e.kind()),
            None => c.finish_reason.to_string(),
        };
        let fa = final_answer_of(r, i, c).unwrap_or_default();
        let _ = writeln!(
            s,
            "| {} | {run} | {} | {} | {}/{} | {} | {} | {} |",
            md_cell(&r.labels[*ti]),
            md_cell(&status),
            md_cell(&fa),
            c.usage.input_tokens,
            c.usage.output_tokens,
            md_cell(&cost_str(c)),
            secs(c.ttft_ms),
            secs(Some(c.latency_ms)),
        );
    }
    let _ = writeln!(s, "\n## Consensus\n");
    let _ = writeln!(s, "**{}**\n", md_cell(&k.headline()));
    let _ = writeln!(s, "- Kind: {}", kind_word(k.kind));
    if let Some(m) = k.majority {
        let _ = writeln!(s, "- Majority: {}", k.clusters[m].labels.join(", "));
    }
    if !k.dissenters.is_empty() {
        let _ = writeln!(s, "- Dissenters: {}", k.dissenters.join(", "));
    }
    if !k.failed.is_empty() {
        let _ = writeln!(s, "- Failed: {}", k.failed.join(", "));
    }
    if !k.empty.is_empty() {
        let _ = writeln!(s, "- Empty: {}", k.empty.join(", "));
    }
    if !k.pairs.is_empty() {
        let _ = writeln!(s, "\n| pair | token F1 | sequence ratio | score |");
        let _ = writeln!(s, "|---|---:|---:|---:|");
        for p in &k.pairs {
            let _ = writeln!(
                s,
                "| {} ~ {} | {:.2} | {:.2} | {:.2} |",
                md_cell(&r.labels[p.a]),
                md_cell(&r.labels[p.b]),
                p.similarity.token_f1,
                p.similarity.sequence_ratio,
                p.similarity.score
            );
        }
    }
    if r.repeat > 1 {
        let _ = writeln!(s, "\n## Stability ({} runs each)\n", r.repeat);
        let _ = writeln!(
            s,
            "| target | answered | distinct | self-agreement | mostly |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---|");
        for st in &r.stability {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                md_cell(&st.label),
                st.answered,
                st.distinct,
                st.self_agreement
                    .map(|a| format!("{a:.2}"))
                    .unwrap_or_else(|| "–".into()),
                md_cell(st.majority_answer.as_deref().unwrap_or(""))
            );
        }
    }
    match &r.judge {
        Some(Ok(j)) => {
            let _ = writeln!(s, "\n## Judge: {}\n", j.target);
            match &j.verdict {
                Some(v) => {
                    if let Some(a) = v.agreement {
                        let _ = writeln!(s, "- Agreement: {a:.2}");
                    }
                    if let Some(l) = &v.best {
                        let t = v.best_target.as_deref().unwrap_or("?");
                        let _ = writeln!(s, "- Best: Answer {l} ({t})");
                    }
                    for d in &v.disagreements {
                        let _ = writeln!(s, "- Disagreement: {}", md_cell(d));
                    }
                    if !v.summary.is_empty() {
                        let _ = writeln!(s, "\n{}", v.summary.trim());
                    }
                }
                None => {
                    let _ = writeln!(s, "No verdict: {}", j.error.as_deref().unwrap_or(""));
                }
            }
            let _ = writeln!(s, "\nJudge cost: {}", cost_str(&j.completion));
        }
        Some(Err(e)) => {
            let _ = writeln!(s, "\n## Judge\n\nSkipped: {e}");
        }
        None => {}
    }
    let _ = writeln!(s, "\n## Answers");
    for (ti, run, c) in &r.results {
        let _ = writeln!(s, "\n### {}\n", result_name(r, *ti, *run));
        match &c.error {
            Some(e) => {
                let _ = writeln!(s, "*Failed:* {e}");
            }
            None if c.text.trim().is_empty() => {
                let _ = writeln!(s, "*(empty answer)*");
            }
            None => {
                let _ = writeln!(s, "{}", c.text.trim_end());
            }
        }
    }
    let _ = writeln!(s, "\nTotal cost: {}", total_cost_str(r));
    s
}

/// The extracted short answer of result `i`, by the consensus's kind.
fn final_answer_of(r: &Report, i: usize, c: &Completion) -> Option<String> {
    if c.error.is_some() {
        return None;
    }
    if let Some(t) = r.representative.iter().position(|x| *x == i) {
        return r.consensus.answers[t]
            .final_answer
            .as_ref()
            .map(|f| f.display.clone());
    }
    extract_final_answer(&c.text, r.consensus.kind).map(|f| f.display)
}

/// RFC 4180: quote when needed, double inner quotes.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `--csv`: a header, then one row per result.
pub fn to_csv(r: &Report) -> String {
    const HEADER: [&str; 18] = [
        "target",
        "run",
        "provider",
        "model",
        "status",
        "finish_reason",
        "final_answer",
        "cluster",
        "in_majority",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "cost_source",
        "ttft_ms",
        "latency_ms",
        "error_kind",
        "error",
        "text",
    ];
    let mut s = HEADER.join(",");
    s.push_str("\r\n");
    let k = &r.consensus;
    for (i, (ti, run, c)) in r.results.iter().enumerate() {
        let rep = r.representative.iter().position(|x| *x == i);
        let report = rep.map(|t| &k.answers[t]);
        let status = match report {
            Some(a) => serde_json::to_value(a.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            None if c.error.is_some() => "failed".into(),
            None if c.text.trim().is_empty() => "empty".into(),
            None => "answered".into(),
        };
        let cluster = report
            .and_then(|a| a.cluster)
            .map(|c| c.to_string())
            .unwrap_or_default();
        let in_majority = match (report, k.majority) {
            (Some(a), Some(m)) if a.cluster.is_some() => (a.cluster == Some(m)).to_string(),
            (Some(a), None) if a.cluster.is_some() => "false".into(),
            _ => String::new(),
        };
        let row = [
            r.labels[*ti].clone(),
            run.to_string(),
            c.provider.clone(),
            c.model.clone(),
            status,
            c.finish_reason.to_string(),
            final_answer_of(r, i, c).unwrap_or_default(),
            cluster,
            in_majority,
            c.usage.input_tokens.to_string(),
            c.usage.output_tokens.to_string(),
            c.cost_usd.map(|x| x.to_string()).unwrap_or_default(),
            c.cost_source.as_str().to_string(),
            c.ttft_ms.map(|x| x.to_string()).unwrap_or_default(),
            c.latency_ms.to_string(),
            c.error
                .as_ref()
                .map(|e| e.kind().to_string())
                .unwrap_or_default(),
            c.error.as_ref().map(|e| e.to_string()).unwrap_or_default(),
            c.text.clone(),
        ];
        let fields: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
        s.push_str(&fields.join(","));
        s.push_str("\r\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineError;

    fn done(text: &str) -> Completion {
        Completion {
            provider: "mock".into(),
            model: "alpha".into(),
            text: text.into(),
            ..Default::default()
        }
    }

    #[test]
    fn exit_codes() {
        let mut failed = done("");
        failed.error = Some(EngineError::Cancelled);
        let r = |results: Vec<(usize, u32, Completion)>| {
            analyse(
                "hi",
                1,
                vec!["a".into(), "b".into()],
                results,
                ConsensusOptions::default(),
            )
        };
        assert_eq!(
            exit_code(&r(vec![(0, 1, done("hi")), (1, 1, done("hi"))])),
            EXIT_OK
        );
        assert_eq!(
            exit_code(&r(vec![(0, 1, done("hi")), (1, 1, failed.clone())])),
            EXIT_FAILED
        );
        assert_eq!(
            exit_code(&r(vec![(0, 1, failed.clone()), (1, 1, failed)])),
            EXIT_ALL_FAILED
        );
    }

    #[test]
    fn csv_quotes_fields() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\"\nbye"), "\"say \"\"hi\"\"\nbye\"");
    }
}
