//! Messages into the app and commands out of it.

use std::path::PathBuf;

use crossterm::event::{KeyEvent, MouseEvent};

use crate::engine::budget::Projection;
use crate::engine::consensus::{AnswerInput, Vote};
use crate::engine::judge::JudgeOutcome;
use crate::engine::ledger::{RequestRow, VoteRow};
use crate::engine::options::RequestOptions;
use crate::engine::{ChatRequest, TargetEvent};

use super::export::ExportDoc;

/// A past run from the ledger.
#[derive(Debug, Clone)]
pub struct HistRun {
    /// Run id.
    pub run_id: String,
    /// When (UTC, as stored).
    pub created_at: String,
    /// The prompt, when stored.
    pub prompt: Option<String>,
    /// Its requests.
    pub rows: Vec<RequestRow>,
}

/// Something that happened.
#[derive(Debug)]
pub enum Msg {
    /// A key.
    Key(KeyEvent),
    /// A mouse event.
    Mouse(MouseEvent),
    /// Pasted text.
    Paste(String),
    /// The terminal was resized.
    Resize(u16, u16),
    /// An engine event of run `run`.
    Engine {
        /// Run key (ours, not the engine's id).
        run: u64,
        /// The event.
        event: TargetEvent,
    },
    /// The engine started run `run` as `run_id` (its events carry that id).
    /// Delivered before any of the run's events.
    RunStarted {
        /// Run key.
        run: u64,
        /// The engine's run id.
        run_id: String,
        /// For each of the engine run's targets, its index among ours (targets
        /// refused before sending are not in the engine's run).
        targets: Vec<usize>,
    },
    /// Forget run `run` (every target is done; a pane still waiting is cancelled).
    RunClosed {
        /// Run key.
        run: u64,
    },
    /// A projection finished.
    Projection {
        /// Which edit it was for.
        gen: u64,
        /// The bound, or why there is none.
        result: Result<Projection, String>,
    },
    /// The budget check of a pending send: Ok to go, or why it would cross a cap.
    BudgetChecked(Result<(), String>),
    /// Export written (paths) or failed.
    Exported(Result<Vec<PathBuf>, String>),
    /// Past runs loaded.
    History(Result<Vec<HistRun>, String>),
    /// The ledger's votes (for the leaderboard).
    Votes(Result<Vec<VoteRow>, String>),
    /// A vote was stored: every vote now, or why not.
    VoteRecorded(Result<Vec<VoteRow>, String>),
    /// The judge's verdict, or why it could not be asked.
    Judged(Result<Box<JudgeOutcome>, String>),
    /// The names in the directory of an `@path` being completed.
    PathEntries {
        /// The path typed so far (after the `@`).
        prefix: String,
        /// Names in its directory (directories end in `/`), or why not.
        entries: Result<Vec<String>, String>,
    },
    /// Prompts of earlier sessions, newest first.
    PromptHistory(Vec<String>),
    /// Targets the providers listed themselves (a local Ollama's models, the
    /// lists of providers with a key), for the picker.
    Discovered(Vec<String>),
    /// Time passed (countdowns, rates).
    Tick,
    /// Quit now (a signal): cancel what is in flight.
    Quit,
}

/// Something for the loop to do.
#[derive(Debug, Clone)]
pub enum Cmd {
    /// Start a run.
    Start {
        /// Our key for it.
        run: u64,
        /// The request.
        request: ChatRequest,
        /// Its targets.
        targets: Vec<String>,
        /// Reasoning, output format, tools and attachments, as the CLI's flags give
        /// them: files are read when the run starts.
        options: Box<RequestOptions>,
    },
    /// List the directory of an `@path` being completed.
    ListPath {
        /// The path typed so far (after the `@`).
        prefix: String,
    },
    /// Cancel a whole run.
    Cancel {
        /// Run key.
        run: u64,
    },
    /// Cancel one target of a run.
    CancelTarget {
        /// Run key.
        run: u64,
        /// Target index.
        index: usize,
    },
    /// Project the cost of a send, off the UI thread.
    Project {
        /// Edit generation.
        gen: u64,
        /// Requests and their targets.
        groups: Vec<(ChatRequest, Vec<String>)>,
        /// Each group's options (attachments count: images by each provider's formula).
        options: Vec<RequestOptions>,
    },
    /// Check a send against the budget, off the UI thread.
    CheckBudget {
        /// Requests and their targets.
        groups: Vec<(ChatRequest, Vec<String>)>,
        /// Each group's options.
        options: Vec<RequestOptions>,
    },
    /// Put text on the clipboard (OSC 52).
    Copy(String),
    /// Write an export.
    Export(Box<ExportDoc>),
    /// Load past runs from the ledger.
    LoadHistory,
    /// Load the ledger's votes, off the UI thread.
    LoadVotes,
    /// Store a blind vote in the ledger, off the UI thread.
    RecordVote {
        /// The vote.
        vote: Vote,
        /// Our key of the run voted on (the loop knows its ledger id).
        run: Option<u64>,
    },
    /// Ask `target` to judge `answers` to `prompt` (through the engine, so it is in the ledger).
    Judge {
        /// The judge model.
        target: String,
        /// The prompt.
        prompt: String,
        /// The finished answers.
        answers: Vec<AnswerInput>,
    },
}
