//! `quorum`: the thin binary. Arguments in, a face out: the argv dispatch
//! lives here so that no face has to import another.

use clap::{Parser, Subcommand};

use llm_quorum::app::GlobalFlags;
use llm_quorum::cli::{ask, compare, eval, exec, leaderboard, ledger, models, pricing};
use llm_quorum::shared::exit::{EXIT_OK, EXIT_USAGE};
use llm_quorum::shared::version_string;

/// mimalloc instead of glibc's malloc: a request's setup in `serve` is mostly
/// small short-lived allocations across worker threads, where glibc spent 17% of
/// the gateway's CPU (see benches/RESULTS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "quorum",
    version = version_string(),
    about = "One prompt, several LLMs side by side, every token and cent counted",
    long_about = None
)]
struct Cli {
    /// Config file (default: $QUORUM_CONFIG, else the platform config dir).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<std::path::PathBuf>,
    /// Total timeout of every request in seconds, 0 = none (over $QUORUM_TIMEOUT_SECS).
    #[arg(long, global = true, value_name = "SECS")]
    timeout: Option<f64>,
    /// Retries after the first attempt, for every provider (over $QUORUM_MAX_RETRIES).
    #[arg(long, global = true, value_name = "N")]
    max_retries: Option<u32>,
    /// Keep no ledger (over $QUORUM_NO_LEDGER); a budget is then a configuration error.
    #[arg(long, global = true)]
    no_ledger: bool,
    /// TUI colour theme: dark, light, high-contrast or a user theme (over the config's `theme`).
    #[arg(long, value_name = "NAME")]
    theme: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ask one model; stream its answer to stdout.
    Ask(ask::AskArgs),
    /// List providers and models: key present, context window, price; aliases and tiers.
    Models(models::ModelsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Ask several models at once; print every answer and whether they agree.
    Compare(compare::CompareArgs),
    /// Run an eval suite: many prompts × several targets, with assertions, budgets and reports.
    Eval(eval::EvalArgs),
    /// Win rates and Elo ratings from blind votes.
    Leaderboard(leaderboard::LeaderboardArgs),
    /// Spending and usage: totals by session, day, provider and model.
    Ledger(ledger::LedgerArgs),
    /// Prices: show them, or import LiteLLM's table.
    Pricing(pricing::PricingArgs),
    /// Run one JSON task from stdin; print one JSON result (for agent harnesses).
    Exec(exec::ExecArgs),
    /// Serve JSON-RPC, an OpenAI-compatible API and Prometheus metrics over HTTP.
    Serve(llm_quorum::serve::ServeArgs),
}

/// Parse arguments and run a face; returns the process exit code.
fn dispatch() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return code;
        }
    };
    let flags = GlobalFlags {
        config: cli.config,
        timeout_secs: cli.timeout,
        max_retries: cli.max_retries,
        no_ledger: cli.no_ledger,
    };
    if !matches!(cli.command, None | Some(Command::Serve(_))) {
        // `serve` logs its access lines by default; the TUI logs to a file.
        llm_quorum::logging::init_stderr(None);
    }
    match cli.command {
        Some(Command::Ask(a)) => ask::run(&flags, a),
        Some(Command::Models(a)) => models::run(&flags, a),
        Some(Command::Completions { shell }) => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "quorum", &mut std::io::stdout());
            EXIT_OK
        }
        Some(Command::Compare(a)) => compare::run(&flags, a),
        Some(Command::Eval(eval::EvalArgs {
            command: Some(eval::EvalCommand::View { run_id }),
            ..
        })) => llm_quorum::tui::eval_matrix::run(&flags, run_id),
        Some(Command::Eval(a)) => eval::run(&flags, a),
        Some(Command::Leaderboard(a)) => leaderboard::run(&flags, a),
        Some(Command::Ledger(a)) => ledger::run(&flags, a),
        Some(Command::Pricing(a)) => pricing::run(&flags, a),
        Some(Command::Exec(a)) => exec::run(&flags, a),
        Some(Command::Serve(a)) => llm_quorum::serve::run(&flags, a),
        None => llm_quorum::tui::run(&flags, cli.theme),
    }
}

fn main() {
    std::process::exit(dispatch());
}

/// mimalloc commits its arenas eagerly by default; with transparent huge pages every
/// first touch then faults in a whole 2 MiB page. The first burst of 1,000 streams in
/// a fresh `serve` grew RSS by 98 MB (67 MB on demand) and its median time to first
/// token was 323–371 ms (144–157 ms on demand). The option is read when the first
/// arena is made, at the first allocation, which the Rust runtime makes before `main`:
/// so it is set here, as the program is loaded, before any allocation (no `std::env`,
/// which allocates). `MIMALLOC_ARENA_EAGER_COMMIT` in the environment still wins.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static COMMIT_HEAP_ON_DEMAND: extern "C" fn() = commit_heap_on_demand;

#[cfg(target_os = "linux")]
extern "C" fn commit_heap_on_demand() {
    use std::ffi::{c_int, c_long};
    extern "C" {
        fn mi_option_get(option: c_int) -> c_long;
        fn mi_option_set(option: c_int, value: c_long);
    }
    // `mi_option_arena_eager_commit` in mimalloc v3's `mi_option_e`. Its default, 2
    // ("on systems that overcommit"), also checks that the number still names it.
    const ARENA_EAGER_COMMIT: c_int = 4;
    // SAFETY: `getenv` with a NUL-terminated name, before any thread exists; the
    // option calls only read and write the allocator's option table.
    unsafe {
        if libc::getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()).is_null()
            && mi_option_get(ARENA_EAGER_COMMIT) == 2
        {
            mi_option_set(ARENA_EAGER_COMMIT, 0);
        }
    }
}
