//! `quorum ledger`: totals by session, day, provider and model; `ledger sessions`;
//! `ledger show ID`.

use clap::{Args, Subcommand, ValueEnum};

use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::app::GlobalFlags;
use crate::engine::cost::format_usd;
use crate::engine::files::data_dir;
use crate::engine::ledger::{
    mask_url, GroupBy, Ledger, LedgerOptions, Location, RequestRow, Shown, TotalRow, LEDGER_FILE,
};
use crate::engine::Tally;

/// Arguments of `quorum ledger`.
#[derive(Debug, Args)]
pub struct LedgerArgs {
    #[command(subcommand)]
    command: Option<LedgerCommand>,
    /// Only one grouping.
    #[arg(long, value_enum)]
    by: Option<By>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum By {
    Session,
    Day,
    Provider,
    Model,
}

impl By {
    fn group(self) -> GroupBy {
        match self {
            By::Session => GroupBy::Session,
            By::Day => GroupBy::Day,
            By::Provider => GroupBy::Provider,
            By::Model => GroupBy::Model,
        }
    }
    fn name(self) -> &'static str {
        match self {
            By::Session => "session",
            By::Day => "day",
            By::Provider => "provider",
            By::Model => "model",
        }
    }
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Sessions, most recent first.
    Sessions {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One request (numeric id), run or session, with its requests.
    Show {
        /// Request id, run id or session id.
        id: String,
    },
    /// Copy the SQLite ledger into a PostgreSQL one (idempotent: run it again to
    /// resume an interrupted copy; rows already there are kept).
    Migrate {
        /// The database: `postgres://user:password@host:port/db` (prefer a `${VAR}`
        /// expanded by your shell for the password).
        #[arg(long, value_name = "URL")]
        to: String,
        /// The SQLite file (default: ledger.sqlite3 in the data dir).
        #[arg(long, value_name = "FILE")]
        from: Option<std::path::PathBuf>,
    },
}

/// The ledger the reports read: the PostgreSQL one when `QUORUM_LEDGER_URL` or
/// `[ledger] url` names one, else the SQLite file in the data dir (None if none yet).
fn open(flags: &GlobalFlags) -> Result<Option<Ledger>, String> {
    let cfg = crate::config::load(&flags.overrides(), &|k| std::env::var(k).ok())
        .map_err(|e| e.to_string())?;
    if let Some(url) = &cfg.ledger_url {
        return Ledger::open_at(
            &Location::Url(url.expose().to_string()),
            LedgerOptions::default(),
        )
        .map(Some)
        .map_err(|e| e.to_string());
    }
    let dir = data_dir().ok_or("no data directory: set QUORUM_DATA_DIR")?;
    let path = dir.join(LEDGER_FILE);
    if !path.exists() {
        return Ok(None);
    }
    Ledger::open(&path, LedgerOptions::default())
        .map(Some)
        .map_err(|e| e.to_string())
}

fn migrate(to: &str, from: Option<std::path::PathBuf>, json: bool) -> i32 {
    if !(to.starts_with("postgres://") || to.starts_with("postgresql://")) {
        eprintln!(
            "quorum: --to must be a postgres:// URL, not {}",
            mask_url(to)
        );
        return EXIT_USAGE;
    }
    let src = match from.or_else(|| data_dir().map(|d| d.join(LEDGER_FILE))) {
        Some(p) if p.exists() => p,
        Some(p) => {
            eprintln!("quorum: no SQLite ledger at {} to migrate", p.display());
            return EXIT_FAILED;
        }
        None => {
            eprintln!("quorum: no data directory: set QUORUM_DATA_DIR or pass --from");
            return EXIT_USAGE;
        }
    };
    let r = crate::engine::ledger::migrate(&src, to, |line| {
        if !json {
            eprintln!("quorum: {line}");
        }
    });
    match r {
        Ok(m) => {
            if json {
                println!("{}", serde_json::to_string(&m).unwrap_or_default());
            } else {
                println!(
                    "migrated {} to {}: {} rows read, {} new, {} requests there now",
                    src.display(),
                    mask_url(to),
                    m.read,
                    m.written,
                    m.requests_after
                );
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("quorum: {e}; run the same command again to resume");
            EXIT_FAILED
        }
    }
}

/// Run `quorum ledger`.
pub fn run(flags: &GlobalFlags, args: LedgerArgs) -> i32 {
    if let Some(LedgerCommand::Migrate { to, from }) = args.command {
        return migrate(&to, from, args.json);
    }
    let ledger = match open(flags) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("quorum: {e}");
            return EXIT_FAILED;
        }
    };
    match args.command {
        None => totals(ledger.as_ref(), args.by, args.json),
        Some(LedgerCommand::Sessions { limit }) => sessions(ledger.as_ref(), limit, args.json),
        Some(LedgerCommand::Show { id }) => show(ledger.as_ref(), &id, args.json),
        Some(LedgerCommand::Migrate { .. }) => EXIT_USAGE,
    }
}

fn cost_cell(cost: f64, unknown: u64) -> String {
    if unknown > 0 {
        format!("{} + {unknown}?", format_usd(Some(cost)))
    } else {
        format_usd(Some(cost))
    }
}

fn totals(ledger: Option<&Ledger>, by: Option<By>, json: bool) -> i32 {
    let groups: Vec<By> = match by {
        Some(b) => vec![b],
        None => vec![By::Session, By::Day, By::Provider, By::Model],
    };
    let mut out = serde_json::Map::new();
    let mut text = String::new();
    for g in groups {
        let rows: Vec<TotalRow> = match ledger.map(|l| l.totals(g.group())) {
            None => Vec::new(),
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                eprintln!("quorum: {e}");
                return EXIT_FAILED;
            }
        };
        if json {
            out.insert(
                format!("by_{}", g.name()),
                serde_json::to_value(&rows).unwrap_or_default(),
            );
            continue;
        }
        text.push_str(&format!(
            "by {}\n  {:<36} {:>6} {:>16} {:>10} {:>10} {:>9} {:>9} {:>6} {:>6}\n",
            g.name(),
            g.name(),
            "reqs",
            "cost",
            "in",
            "out",
            "cached",
            "reason",
            "hits",
            "failed"
        ));
        if rows.is_empty() {
            text.push_str("  (nothing yet)\n");
        }
        for r in rows {
            text.push_str(&format!(
                "  {:<36} {:>6} {:>16} {:>10} {:>10} {:>9} {:>9} {:>6} {:>6}\n",
                r.key,
                r.requests,
                cost_cell(r.cost_usd, r.unknown_cost),
                r.input_tokens,
                r.output_tokens,
                r.cached_input_tokens,
                r.reasoning_tokens,
                r.cache_hits,
                r.failed
            ));
        }
        text.push('\n');
    }
    if json {
        println!("{}", serde_json::Value::Object(out));
    } else {
        print!("{text}");
        println!("cost: known spend; \"+ N?\" counts requests whose price is unknown (never counted as $0)");
    }
    EXIT_OK
}

fn sessions(ledger: Option<&Ledger>, limit: usize, json: bool) -> i32 {
    let rows = match ledger.map(|l| l.sessions(limit)) {
        None => Vec::new(),
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            eprintln!("quorum: {e}");
            return EXIT_FAILED;
        }
    };
    if json {
        println!("{}", serde_json::to_value(&rows).unwrap_or_default());
        return EXIT_OK;
    }
    if rows.is_empty() {
        println!("no sessions yet");
        return EXIT_OK;
    }
    println!(
        "{:<36} {:<24} {:>5} {:>6} {:>16}  label",
        "session", "last", "runs", "reqs", "cost"
    );
    for s in rows {
        println!(
            "{:<36} {:<24} {:>5} {:>6} {:>16}  {}",
            s.id,
            s.last,
            s.runs,
            s.requests,
            cost_cell(s.cost_usd, s.unknown_cost),
            s.label.unwrap_or_default()
        );
    }
    EXIT_OK
}

fn request_line(r: &RequestRow) -> String {
    let cost = match r.cost_usd {
        Some(c) => format_usd(Some(c)),
        None => "?".into(),
    };
    let mut s = format!(
        "#{:<6} {:<40} {:<9} in {:>7} out {:>7} {:>10} ({})",
        r.id, r.target, r.status, r.input_tokens, r.output_tokens, cost, r.cost_source
    );
    if let Some(t) = r.ttft_ms {
        s.push_str(&format!(" ttft {t:.0}ms"));
    }
    if let Some(l) = r.latency_ms {
        s.push_str(&format!(" {l:.0}ms"));
    }
    if r.cache_hit {
        s.push_str(" cached");
    }
    if r.retries > 0 {
        s.push_str(&format!(" retries {}", r.retries));
    }
    if let Some(f) = &r.fell_back_from {
        s.push_str(&format!(" fell back from {f}"));
    }
    if let Some(k) = &r.error_kind {
        s.push_str(&format!(" error {k}"));
    }
    s
}

fn show(ledger: Option<&Ledger>, id: &str, json: bool) -> i32 {
    let Some(ledger) = ledger else {
        eprintln!("quorum: the ledger is empty");
        return EXIT_FAILED;
    };
    let shown = match ledger.show(id) {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!("quorum: no request, run or session {id:?} in the ledger");
            return EXIT_USAGE;
        }
        Err(e) => {
            eprintln!("quorum: {e}");
            return EXIT_FAILED;
        }
    };
    if json {
        println!("{}", serde_json::to_value(&shown).unwrap_or_default());
        return EXIT_OK;
    }
    match shown {
        Shown::Request(r) => {
            println!("{}", request_line(&r));
            println!(
                "  run {}  session {}",
                r.run_id,
                r.session_id.as_deref().unwrap_or("-")
            );
            println!("  provider {}  model {}", r.provider, r.model);
            println!(
                "  tokens in {} (cached {}, cache write {}) out {} (reasoning {}){}",
                r.input_tokens,
                r.cached_input_tokens,
                r.cache_write_tokens,
                r.output_tokens,
                r.reasoning_tokens,
                if r.usage_reported {
                    ""
                } else {
                    " counted locally"
                }
            );
            if let Some(p) = &r.price_ref {
                println!("  price row {p}");
                if let Ok(Some(row)) = ledger.price_row(p) {
                    println!(
                        "    in {} out {} cached {} write {} (USD per 1M; {})",
                        row["input"],
                        row["output"],
                        row.get("cached_input")
                            .cloned()
                            .unwrap_or(serde_json::Value::Null),
                        row.get("cache_write")
                            .cloned()
                            .unwrap_or(serde_json::Value::Null),
                        row["source"].as_str().unwrap_or("")
                    );
                }
            }
            if let Some(m) = &r.error_message {
                println!("  error: {m}");
            }
            println!("  at {}", r.created_at);
            if !r.attachments.is_empty() {
                let list: Vec<String> = r.attachments.iter().map(|a| a.summary()).collect();
                println!("  attachments: {}", list.join(", "));
            }
            if let Some(p) = &r.prompt {
                println!("--- prompt\n{p}");
            }
            if let Some(t) = &r.thinking {
                println!("--- thinking\n{t}");
            }
            if let Some(t) = &r.response {
                println!("--- response\n{t}");
            }
            if let Some(t) = &r.tool_calls {
                println!("--- tool calls\n{t}");
            }
        }
        Shown::Run { run, requests } => {
            println!(
                "run {}  session {}  at {}",
                run.id,
                run.session_id.as_deref().unwrap_or("-"),
                run.created_at
            );
            if let Some(p) = run.projected_usd {
                println!("  projected ≤ {}", format_usd(Some(p)));
            }
            let tally = Tally::of_rows(&requests);
            println!("  cost {}", cost_cell(tally.cost_usd, tally.unpriced));
            if let Some(p) = &run.prompt {
                println!("  prompt: {}", p.lines().next().unwrap_or(""));
            }
            for r in &requests {
                println!("  {}", request_line(r));
            }
        }
        Shown::Session {
            session,
            runs,
            requests,
        } => {
            println!(
                "session {}  {} runs, {} requests, {}",
                session.id,
                session.runs,
                session.requests,
                cost_cell(session.cost_usd, session.unknown_cost)
            );
            for run in runs {
                println!("  run {}  at {}", run.id, run.created_at);
                for r in requests.iter().filter(|r| r.run_id == run.id) {
                    println!("    {}", request_line(r));
                }
            }
        }
    }
    EXIT_OK
}
