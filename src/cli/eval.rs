//! `quorum eval SUITE`: the batch face. It parses arguments, asks before crossing a
//! budget in a terminal, draws the progress line and prints the report; the suite,
//! the assertions, the scheduling and the reports are the engine's (`engine::eval`).

use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};

use super::{runtime, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::app::{self, GlobalFlags};
use crate::engine::eval::run::{self as eval_run, EvalOptions};
use crate::engine::eval::{report, suite, CaseOutcome, Progress};
use crate::engine::{Books, EngineError};

/// Exit code: the suite is invalid (the message names file, line and key).
pub const EXIT_INVALID_SUITE: i32 = 3;
/// Exit code: stopped by Ctrl+C (finished cases are kept; `--resume` continues).
pub const EXIT_INTERRUPTED: i32 = 130;

const AFTER_HELP: &str = "\
Suite (TOML):
  targets = [\"mock/alpha\", \"mock/beta\"]
  [[cases]]
  prompt = \"What is 2+2? Answer with one number.\"
  assert = [{ type = \"contains\", value = \"4\" }]

  Top level: targets, cases, assert (for every case), system, options, repeat, judge.
  A case: prompt, id, system, options, vars = { name = \"…\" }, dataset = \"rows.jsonl\" or
  \"rows.csv\" (one case per row; {{name}} is filled from the row), repeat, assert.
  options: max_tokens, temperature, top_p, stop, reasoning, thinking_budget, json_mode,
  schema, tools, tool_choice, files, images (paths relative to the suite).
  Assertions: equals, contains, regex (value; ignore_case), number (value, tolerance),
  json, schema (schema = { … } or file), max_latency_ms, max_cost_usd (value),
  consensus (threshold 0..1; kind), judge (rubric, model; threshold on the score).

Output: a summary on stdout (or --json, --markdown, --csv); --junit FILE writes JUnit XML.
The whole suite's cost is projected before the first request and budgets apply.

Exit codes:
  0  every case passed
  1  some case failed
  2  configuration or budget refusal (nothing was sent), or an unknown run id
  3  invalid suite (file, line and key are named)
  130 interrupted (continue with --resume)";

/// Arguments of `quorum eval`.
#[derive(Debug, Args)]
#[command(
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct EvalArgs {
    /// Compare two eval runs.
    #[command(subcommand)]
    pub command: Option<EvalCommand>,
    /// The suite file (TOML).
    #[arg(required = true)]
    pub suite: Option<PathBuf>,
    /// Requests in flight at most (the providers' own limits still apply).
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// Continue an interrupted run: the newest of this suite, or RUN_ID.
    #[arg(long, value_name = "RUN_ID", num_args = 0..=1, default_missing_value = "")]
    pub resume: Option<String>,
    /// Print one JSON object.
    #[arg(long, conflicts_with_all = ["markdown", "csv"])]
    pub json: bool,
    /// Print Markdown.
    #[arg(long, conflicts_with = "csv")]
    pub markdown: bool,
    /// Print CSV, one row per case × target × run.
    #[arg(long)]
    pub csv: bool,
    /// Also write JUnit XML here (one testcase per case × target).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Send even when the projected cost would cross a budget cap.
    #[arg(long)]
    pub force: bool,
    /// Bypass the response cache.
    #[arg(long, conflicts_with = "cache")]
    pub no_cache: bool,
    /// Use the response cache even when the config leaves it off (repeated runs reuse answers).
    #[arg(long)]
    pub cache: bool,
}

/// `quorum eval diff`.
#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// List the cases whose verdict or answer changed from RUN_A to RUN_B.
    Diff {
        /// The earlier run id.
        run_a: String,
        /// The later run id.
        run_b: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Open an eval run (the newest, or RUN_ID) in the terminal as cases × targets.
    View {
        /// The run id.
        run_id: Option<String>,
    },
}

fn ask_yes(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

fn progress_line(p: &Progress) {
    let left = p.total.saturating_sub(p.done);
    let eta = if p.done_here > 0 {
        let per = p.started.elapsed().as_secs_f64() / p.done_here as f64;
        format!("{:.0}s", per * left as f64)
    } else {
        "?".into()
    };
    eprint!(
        "\r\x1b[2Kquorum eval: {}/{} cases · {} failed · ${:.4} · ETA {eta}",
        p.done, p.total, p.failed, p.spent_usd
    );
    let _ = std::io::stderr().flush();
}

fn parse_cases(rows: Vec<crate::engine::ledger::EvalCaseRow>) -> Vec<CaseOutcome> {
    rows.into_iter()
        .filter_map(|r| serde_json::from_str(&r.result).ok())
        .collect()
}

/// Run `quorum eval`.
pub fn run(flags: &GlobalFlags, args: EvalArgs) -> i32 {
    match &args.command {
        Some(EvalCommand::Diff { run_a, run_b, json }) => return diff(flags, run_a, run_b, *json),
        Some(EvalCommand::View { .. }) => {
            // The terminal view is the TUI's; `main` sends it there.
            eprintln!("quorum: eval view is opened by the workbench");
            return EXIT_USAGE;
        }
        None => {}
    }
    let Some(path) = args.suite.clone() else {
        eprintln!("quorum: eval: give a suite file");
        return EXIT_USAGE;
    };
    let (engine, _settings) = match app::load(flags) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("quorum: {e:#}");
            return EXIT_USAGE;
        }
    };
    let suite = match suite::load(&path) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("quorum: invalid suite: {e}");
            return EXIT_INVALID_SUITE;
        }
    };
    // Every target and judge is known before anything is sent.
    let judges = suite.judges();
    for (what, list) in [("targets", &suite.targets), ("judge", &judges)] {
        for (i, t) in list.iter().enumerate() {
            if t.trim().starts_with("cheapest:") {
                continue;
            }
            if let Err(e) = engine.check_targets(std::slice::from_ref(t)) {
                let code = match e {
                    EngineError::NotAllowed { .. } => EXIT_USAGE,
                    _ => EXIT_INVALID_SUITE,
                };
                let at = if what == "targets" {
                    format!("targets[{i}]")
                } else {
                    format!("judge model {t:?}")
                };
                eprintln!("quorum: invalid suite: {}: {at}: {e}", path.display());
                return code;
            }
        }
    }
    let rt = runtime();
    rt.block_on(async move {
        if let Err(p) = engine.check_ledger().await {
            eprintln!("quorum: {p}");
            return EXIT_USAGE;
        }
        let name = eval_run::suite_name(&suite);
        // Resume: the run, and the cases it finished.
        let mut prior: Vec<CaseOutcome> = Vec::new();
        let eval_id = match &args.resume {
            None => eval_run::new_eval_id(),
            Some(want) => {
                let Books::On { ledger, .. } = engine.books().clone() else {
                    eprintln!("quorum: --resume needs the ledger (it is off)");
                    return EXIT_USAGE;
                };
                let (want, name2) = (want.clone(), name.clone());
                let found = tokio::task::spawn_blocking(move || {
                    let l = ledger.wait()?;
                    let id = (!want.is_empty()).then_some(want.as_str());
                    let r = l.eval_run(id, if id.is_none() { Some(&name2) } else { None })?;
                    match r {
                        Some(r) => {
                            let cases = l.eval_cases(&r.id)?;
                            Ok(Some((r, cases)))
                        }
                        None => Ok(None),
                    }
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
                match found {
                    Ok(Some((r, cases))) => {
                        if r.suite_hash != suite.hash {
                            eprintln!(
                                "quorum: eval run {} was of another version of the suite (or its datasets); start a new run",
                                r.id
                            );
                            return EXIT_USAGE;
                        }
                        prior = parse_cases(cases);
                        eprintln!(
                            "quorum: resuming {}: {} of {} cases already finished",
                            r.id,
                            prior.len(),
                            suite.cases.len()
                        );
                        r.id
                    }
                    Ok(None) => {
                        eprintln!("quorum: no eval run to resume for {name}");
                        return EXIT_USAGE;
                    }
                    Err(e) => {
                        eprintln!("quorum: {e}");
                        return EXIT_USAGE;
                    }
                }
            }
        };
        let skip: HashSet<String> = prior.iter().map(|c| c.key.clone()).collect();
        // The whole suite's cost, before the first request.
        let mut force = args.force;
        let gated = engine.budget().is_set() && !force;
        let projection = match eval_run::project_suite(&engine, &suite, &skip, gated) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("quorum: {e}");
                return EXIT_USAGE;
            }
        };
        let left = suite.cases.len() - skip.len().min(suite.cases.len());
        eprintln!(
            "quorum: eval {eval_id}: {left} cases × {} targets, {} requests (judges included) projected {}",
            suite.targets.len(),
            projection.targets.len(),
            projection.display()
        );
        if gated {
            if let Err(r) = eval_run::check_budget(&engine, &projection).await {
                let tty = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
                if tty && ask_yes(&format!("quorum: {r}. Run anyway?")) {
                    force = true;
                } else {
                    eprintln!("quorum: {r}; nothing was sent");
                    return EXIT_USAGE;
                }
            }
        }
        if let Err(e) = eval_run::begin(&engine, &eval_id, &suite).await {
            eprintln!("quorum: the ledger cannot note the eval run: {e}");
            return EXIT_USAGE;
        }
        let cancel = tokio_util::sync::CancellationToken::new();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                c2.cancel();
            }
        });
        let opts = EvalOptions {
            concurrency: args.concurrency as usize,
            force,
            cache: match (args.cache, args.no_cache) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
        };
        let tty = std::io::stderr().is_terminal();
        let already = (
            prior.len(),
            prior.iter().filter(|c| !c.pass).count(),
            prior.iter().map(|c| c.cost_usd_known).sum(),
        );
        let mut on_case = |_: &CaseOutcome, p: &Progress| {
            if tty {
                progress_line(p);
            }
        };
        let end = eval_run::run_suite(
            &engine,
            suite.clone(),
            &eval_id,
            &skip,
            already,
            opts,
            cancel.clone(),
            &mut on_case,
        )
        .await;
        if tty {
            eprint!("\r\x1b[2K");
        }
        let mut cases = prior;
        cases.extend(end.outcomes);
        cases.sort_by_key(|c| c.index);
        let status = if end.interrupted || end.refusal.is_some() {
            "interrupted"
        } else {
            "done"
        };
        if let Err(e) = eval_run::end(&engine, &eval_id, status).await {
            eprintln!("quorum: the ledger cannot close the eval run: {e}");
        }
        let total = suite.cases.len();
        let out = if args.json {
            let mut s = serde_json::to_string(&report::to_json(&eval_id, &name, &cases, total))
                .unwrap_or_default();
            s.push('\n');
            s
        } else if args.markdown {
            report::to_markdown(&eval_id, &name, &cases, total)
        } else if args.csv {
            report::to_csv(&cases)
        } else {
            report::to_text(&eval_id, &cases, total)
        };
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        let _ = lock.write_all(out.as_bytes());
        let _ = lock.flush();
        if let Some(f) = &args.junit {
            if let Err(e) = std::fs::write(f, report::to_junit(&name, &cases)) {
                eprintln!("quorum: cannot write {}: {e}", f.display());
                return EXIT_USAGE;
            }
        }
        if let Some((n, why)) = &end.unrecorded {
            eprintln!("quorum: {n} case(s) were not recorded in the ledger: {why}");
        }
        if let Some(r) = &end.refusal {
            eprintln!(
                "quorum: {r}; stopped after {} of {total} cases (continue with --resume {eval_id})",
                cases.len()
            );
            return EXIT_USAGE;
        }
        if end.interrupted {
            eprintln!(
                "quorum: interrupted after {} of {total} cases; continue with: quorum eval {} --resume {eval_id}",
                cases.len(),
                path.display()
            );
            return EXIT_INTERRUPTED;
        }
        if cases.iter().all(|c| c.pass) && end.unrecorded.is_none() {
            EXIT_OK
        } else {
            EXIT_FAILED
        }
    })
}

fn diff(flags: &GlobalFlags, a: &str, b: &str, json: bool) -> i32 {
    let (engine, _settings) = match app::load(flags) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("quorum: {e:#}");
            return EXIT_USAGE;
        }
    };
    let Books::On { ledger, .. } = engine.books().clone() else {
        eprintln!("quorum: eval diff needs the ledger (it is off)");
        return EXIT_USAGE;
    };
    let l = match ledger.wait() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("quorum: {e}");
            return EXIT_USAGE;
        }
    };
    let mut runs = Vec::new();
    for id in [a, b] {
        match l.eval_run(Some(id), None).and_then(|r| match r {
            Some(_) => l.eval_cases(id).map(Some),
            None => Ok(None),
        }) {
            Ok(Some(rows)) => runs.push(parse_cases(rows)),
            Ok(None) => {
                eprintln!("quorum: no eval run {id:?} in the ledger");
                return EXIT_USAGE;
            }
            Err(e) => {
                eprintln!("quorum: {e}");
                return EXIT_USAGE;
            }
        }
    }
    let changes = report::diff(&runs[0], &runs[1]);
    let mut out = String::new();
    if json {
        out =
            serde_json::to_string(&serde_json::json!({"run_a": a, "run_b": b, "changes": changes}))
                .unwrap_or_default();
        out.push('\n');
    } else {
        let word = |p: Option<bool>| match p {
            Some(true) => "pass",
            Some(false) => "fail",
            None => "absent",
        };
        for c in &changes {
            out.push_str(&format!(
                "{:<10}  {} · {}: {} → {}\n",
                c.kind,
                c.case,
                c.target,
                word(c.before),
                word(c.after)
            ));
            if c.kind == "answer" || c.kind == "regression" || c.kind == "fixed" {
                let cut = |s: &Option<String>| {
                    let s = s.as_deref().unwrap_or("").replace('\n', " ");
                    if s.chars().count() > 70 {
                        format!("{}…", s.chars().take(70).collect::<String>())
                    } else {
                        s
                    }
                };
                out.push_str(&format!("            - {}\n", cut(&c.answer_before)));
                out.push_str(&format!("            + {}\n", cut(&c.answer_after)));
            }
        }
        let regressions = changes.iter().filter(|c| c.kind == "regression").count();
        out.push_str(&format!(
            "{} change(s), {regressions} regression(s) from {a} to {b}\n",
            changes.len()
        ));
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
    if changes.iter().any(|c| c.kind == "regression") {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}
