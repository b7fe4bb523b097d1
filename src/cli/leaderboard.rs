//! `quorum leaderboard`: win rates and Elo ratings from blind votes.
//!
//! Votes are read from the SQLite ledger's `votes` table (where the TUI's
//! blind mode records them) and from `votes.jsonl` in the data dir (the
//! [`VoteStore`] written by scripts and older versions), oldest first.

use std::fmt::Write as _;

use clap::Args;

use super::{EXIT_OK, EXIT_USAGE};
use crate::app::GlobalFlags;
use crate::engine::consensus::{leaderboard, JsonlVoteStore, Leaderboard, Vote, VoteStore};
use crate::engine::ledger::{Ledger, LedgerOptions, LEDGER_FILE};

/// Arguments of `quorum leaderboard`.
#[derive(Debug, Args)]
#[command(after_help = "\
Votes come from blind comparisons (pane names hidden until you pick a winner or a tie).
Each vote is a set of games: the winner beats every other target shown; a tie is a
draw between all of them. Elo starts at 1000 with K = 32; win rate counts a tie as
half a win. Votes are read from the ledger (ledger.sqlite3, where the TUI's blind
mode stores them) and votes.jsonl in $QUORUM_DATA_DIR (else the platform data dir).")]
pub struct LeaderboardArgs {
    /// Only votes with this tag.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Where votes are read from.
pub fn open_store() -> Result<Box<dyn VoteStore>, String> {
    Ok(Box::new(JsonlVoteStore::in_data_dir()?))
}

/// Every vote: the ledger's, then the JSON-lines store's, in time order.
pub fn all_votes() -> Result<Vec<Vote>, String> {
    let mut votes = Vec::new();
    if let Some(dir) = crate::engine::files::data_dir() {
        let path = dir.join(LEDGER_FILE);
        if path.exists() {
            let l = Ledger::open(&path, LedgerOptions::default()).map_err(|e| e.to_string())?;
            votes.extend(
                l.votes()
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|r| Vote {
                        targets: r.targets,
                        winner: r.winner,
                        tag: r.tag,
                        run_id: r.run_id,
                        created_at: Some(r.created_at),
                    }),
            );
        }
    }
    votes.extend(open_store()?.votes()?);
    // RFC 3339 and SQLite's UTC stamps sort as text once `T` is a space; the
    // sort is stable, so undated votes go first in the order they were read.
    votes.sort_by_cached_key(|v| v.created_at.as_deref().unwrap_or("").replace('T', " "));
    Ok(votes)
}

/// Run `quorum leaderboard`.
pub fn run(_flags: &GlobalFlags, args: LeaderboardArgs) -> i32 {
    let votes = match all_votes() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("quorum: {e}");
            return EXIT_USAGE;
        }
    };
    let lb = leaderboard(&votes, args.tag.as_deref());
    if args.json {
        println!("{}", serde_json::to_string(&lb).unwrap_or_default());
    } else {
        print!("{}", to_text(&lb));
    }
    EXIT_OK
}

/// The table.
pub fn to_text(lb: &Leaderboard) -> String {
    let mut s = String::new();
    if lb.rows.is_empty() {
        let what = match &lb.tag {
            Some(t) => format!("no votes tagged {t:?} yet"),
            None => "no votes yet".to_string(),
        };
        let _ = writeln!(s, "{what}: vote in a blind comparison to rank models");
        return s;
    }
    let w = lb
        .rows
        .iter()
        .map(|r| r.target.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    let _ = writeln!(
        s,
        "{:>3}  {:<w$}  {:>6}  {:>8}  {:>5}  {:>4}  {:>6}  {:>5}",
        "#", "target", "elo", "win rate", "wins", "ties", "losses", "votes"
    );
    for (i, r) in lb.rows.iter().enumerate() {
        let _ = writeln!(
            s,
            "{:>3}  {:<w$}  {:>6.0}  {:>7.1}%  {:>5}  {:>4}  {:>6}  {:>5}",
            i + 1,
            r.target,
            r.elo,
            r.win_rate * 100.0,
            r.wins,
            r.ties,
            r.losses,
            r.votes
        );
    }
    let tag = lb
        .tag
        .as_ref()
        .map(|t| format!(" tagged {t:?}"))
        .unwrap_or_default();
    let _ = write!(s, "{} votes{tag}", lb.votes);
    if lb.skipped > 0 {
        let _ = write!(s, " ({} skipped as invalid)", lb.skipped);
    }
    s.push('\n');
    s
}
