//! The ledger of every request: one [`Ledger`] type in front of a storage backend,
//! SQLite (`ledger.sqlite3` in the data dir, the embedded default) or PostgreSQL
//! (`[ledger] url = "postgres://…"`, shared by several processes and machines).
//!
//! Durability is the point: a request's row is committed before [`LedgerSink::record`]
//! returns, and the engine calls it before any face hears that the request finished, so
//! a crash or `kill -9` never loses a finished request. Several processes may write one
//! ledger at once; a run's budget reservation is checked and taken in one transaction.
//!
//! The `requests` columns are listed once ([`REQUEST_COLUMNS`]): that table drives the
//! INSERT and the SELECT of both backends, and rows are read back by column name. The
//! schema is versioned and migrated forward on open; a newer schema refuses. API keys
//! are never written: nothing here sees them.
//!
//! Opening costs a few milliseconds of disk work (or a connection), so faces that care
//! about their first frame use [`BackgroundLedger`], which opens on its own thread.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use serde::{Deserialize, Serialize};

use super::cost::Pricing;
use super::error::EngineError;
use super::event::{Completion, CostSource, FinishReason, Usage};
use super::files::data_dir;
use super::request::{Attachment, AttachmentData, ChatRequest};

mod batch;
pub mod migrate;
pub mod pg_conn;
pub mod pg_tls;
pub mod postgres;
pub mod spool;
mod sqlite;

pub use migrate::{migrate, Migrated};
pub use postgres::mask_url;

mod eval;
pub use eval::{EvalCaseRow, EvalRunRow};

/// Who asked, for the ledger row.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    /// Run id (one prompt fanned out).
    pub run_id: String,
    /// Session id.
    pub session_id: Option<String>,
    /// W3C trace id.
    pub trace_id: Option<String>,
    /// Calling agent.
    pub source_agent: Option<String>,
    /// Target as requested.
    pub target: String,
    /// The lease whose hold this request's cost draws down, when its run took its
    /// bound from a lease rather than holding it itself (see `engine::lease`).
    pub lease_id: Option<String>,
    /// The prompt (last user message).
    pub prompt: String,
    /// What was attached to the request: names, sizes and hashes, never the bytes.
    pub attachments: Vec<AttachmentNote>,
}

/// An attachment as the ledger keeps it: its name, kind, media type, size and
/// SHA-256, never its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentNote {
    /// The file name as given.
    pub name: String,
    /// `file` (text) or `image`.
    pub kind: String,
    /// `text/plain` for files; the sniffed type (`image/png`, ...) for images.
    pub media_type: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
}

impl AttachmentNote {
    /// The note of one attachment.
    pub fn of(a: &Attachment) -> AttachmentNote {
        let (kind, media_type) = match &a.data {
            AttachmentData::Text { .. } => ("file", "text/plain".to_string()),
            AttachmentData::Image { media_type, .. } => ("image", media_type.clone()),
        };
        AttachmentNote {
            name: a.name.clone(),
            kind: kind.into(),
            media_type,
            bytes: a.size,
            sha256: a.sha256.clone(),
        }
    }

    /// `report.txt (12.3 KB, sha256 ab12cd34ef56…)`: how a face shows it.
    pub fn summary(&self) -> String {
        let b = self.bytes as f64;
        let size = if self.bytes < 1000 {
            format!("{} B", self.bytes)
        } else if b < 1e6 {
            format!("{:.1} KB", b / 1e3)
        } else {
            format!("{:.1} MB", b / 1e6)
        };
        let hash: String = self.sha256.chars().take(12).collect();
        format!("{} ({size}, sha256 {hash}…)", self.name)
    }

    /// The notes of every attachment a request sends, in message order.
    pub fn of_request(req: &ChatRequest) -> Vec<AttachmentNote> {
        req.messages
            .iter()
            .flat_map(|m| &m.attachments)
            .map(AttachmentNote::of)
            .collect()
    }
}

/// Where finished requests are recorded.
pub trait LedgerSink: Send + Sync {
    /// Record one finished or failed request. Must be durable when it returns.
    fn record(&self, meta: &RequestMeta, completion: &Completion) -> Result<(), LedgerError>;
    /// Record the last request of a run that holds a reservation, and end the
    /// reservation in the same commit; whether it was ended (else the caller settles
    /// it separately). Durable when it returns.
    fn record_settling(
        &self,
        meta: &RequestMeta,
        completion: &Completion,
    ) -> Result<bool, LedgerError> {
        self.record(meta, completion).map(|()| false)
    }
    /// Record without blocking the caller (with `settle`, as
    /// [`LedgerSink::record_settling`]): the outcome arrives on the receiver once
    /// committed. `None` when this sink cannot (or not yet): then call the blocking
    /// methods from a blocking thread.
    fn record_async(
        &self,
        _meta: &RequestMeta,
        _completion: &Completion,
        _settle: bool,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<bool, LedgerError>>> {
        None
    }
}

/// File name of the ledger inside the data dir.
pub const LEDGER_FILE: &str = "ledger.sqlite3";

/// File name, inside the data dir, of the spool of a shared ledger (rows waiting for
/// the database to return).
pub const LEDGER_SPOOL_FILE: &str = "ledger-spool.jsonl";

/// Spend so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spend {
    /// In the current session.
    pub session_usd: f64,
    /// Today (local calendar day).
    pub today_usd: f64,
}

/// Ledger settings.
#[derive(Debug, Clone, Copy)]
pub struct LedgerOptions {
    /// Store prompt and response text (`log_content`, default true).
    pub log_content: bool,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        LedgerOptions { log_content: true }
    }
}

/// Everything that can go wrong with the ledger. `place` is the file, or the
/// database URL with its password masked; every message names it and the fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LedgerError {
    /// No data directory to keep the ledger in.
    #[error("no data directory for the ledger (fix: set QUORUM_DATA_DIR to a writable folder)")]
    NoDataDir,
    /// The ledger cannot be opened or reached.
    #[error("the ledger {place} cannot be opened: {detail} (fix: {})", self.fix())]
    Open {
        /// File or masked URL.
        place: String,
        /// Why.
        detail: String,
    },
    /// The schema is newer than this build knows.
    #[error("the ledger {place} has schema version {found}, newer than this quorum knows ({known}) (fix: {})", self.fix())]
    Schema {
        /// File or masked URL.
        place: String,
        /// Version found.
        found: i64,
        /// Newest version this build knows.
        known: i64,
    },
    /// The file or its folder is read-only.
    #[error("the ledger {place} is read-only: {detail} (fix: {})", self.fix())]
    ReadOnly {
        /// File or masked URL.
        place: String,
        /// Why.
        detail: String,
    },
    /// The disk (or the database) is full.
    #[error("the ledger {place} is full: {detail} (fix: {})", self.fix())]
    Full {
        /// File or masked URL.
        place: String,
        /// Why.
        detail: String,
    },
    /// A row is larger than the backend allows.
    #[error("a row is too large for the ledger {place}: {detail} (fix: {})", self.fix())]
    TooLarge {
        /// File or masked URL.
        place: String,
        /// Why.
        detail: String,
    },
    /// The file is not a database or is damaged.
    #[error("the ledger {place} is corrupt: {detail} (fix: {})", self.fix())]
    Corrupt {
        /// File or masked URL.
        place: String,
        /// Why.
        detail: String,
    },
    /// Another process held the lock for too long.
    #[error("the ledger {place} is locked: {detail} (fix: {})", self.fix())]
    Locked {
        /// File or masked URL.
        place: String,
        /// Why.
        detail: String,
    },
    /// A file operation failed.
    #[error("the ledger {place} failed to read or write: {detail} (fix: {})", self.fix())]
    Io {
        /// File or masked URL.
        place: String,
        /// Why.
        detail: String,
    },
    /// The database server cannot be reached right now.
    #[error("the ledger database {place} is unavailable: {detail} (fix: {})", self.fix())]
    Unavailable {
        /// Masked URL.
        place: String,
        /// Why.
        detail: String,
    },
    /// Anything else the backend reported.
    #[error("the ledger {place} failed: {detail} (fix: {})", self.fix())]
    Backend {
        /// File or masked URL.
        place: String,
        /// Why.
        detail: String,
    },
}

impl LedgerError {
    /// The file or masked URL, when there is one.
    pub fn place(&self) -> Option<&str> {
        match self {
            LedgerError::NoDataDir => None,
            LedgerError::Open { place, .. }
            | LedgerError::Schema { place, .. }
            | LedgerError::ReadOnly { place, .. }
            | LedgerError::Full { place, .. }
            | LedgerError::TooLarge { place, .. }
            | LedgerError::Corrupt { place, .. }
            | LedgerError::Locked { place, .. }
            | LedgerError::Io { place, .. }
            | LedgerError::Unavailable { place, .. }
            | LedgerError::Backend { place, .. } => Some(place),
        }
    }

    /// What went wrong, without the place or the fix.
    pub fn reason(&self) -> String {
        match self {
            LedgerError::NoDataDir => "no data directory".into(),
            LedgerError::Schema { found, known, .. } => {
                format!("schema version {found}, newer than this quorum knows ({known})")
            }
            LedgerError::Open { detail, .. }
            | LedgerError::ReadOnly { detail, .. }
            | LedgerError::Full { detail, .. }
            | LedgerError::TooLarge { detail, .. }
            | LedgerError::Corrupt { detail, .. }
            | LedgerError::Locked { detail, .. }
            | LedgerError::Io { detail, .. }
            | LedgerError::Unavailable { detail, .. }
            | LedgerError::Backend { detail, .. } => detail.clone(),
        }
    }

    /// What the user can do about it.
    pub fn fix(&self) -> &'static str {
        let remote = self.place().is_some_and(|p| p.contains("://"));
        match self {
            LedgerError::NoDataDir => "set QUORUM_DATA_DIR to a writable folder",
            LedgerError::Schema { .. } if remote => {
                "upgrade quorum on this machine, or point [ledger] url at another database"
            }
            LedgerError::Schema { .. } => {
                "upgrade quorum, or point QUORUM_DATA_DIR at another folder"
            }
            LedgerError::Corrupt { .. } => {
                "move the file aside (quorum then starts a new ledger), or point QUORUM_DATA_DIR at another folder"
            }
            LedgerError::Full { .. } if remote => "free space on the database server",
            LedgerError::Full { .. } => {
                "free space on its filesystem, or point QUORUM_DATA_DIR at another folder"
            }
            LedgerError::TooLarge { .. } => {
                "lower the request's max_tokens, or set log_content = false"
            }
            LedgerError::Locked { .. } => {
                "retry; if it lasts, stop the process that holds the ledger"
            }
            LedgerError::Open { detail, .. }
                if remote
                    && (detail.starts_with("TLS")
                        || detail.starts_with("[ledger] url")
                        || detail.starts_with("ssl")
                        || detail.contains("client certificate")) =>
            {
                "correct the TLS parameters (sslmode, sslrootcert, sslcert, sslkey, sslcrl) in [ledger] url or QUORUM_LEDGER_URL, or their PG* variables (see the README's shared ledger section), or the server's TLS setup"
            }
            LedgerError::Open { detail, .. }
                if remote && (detail.starts_with("PG") || detail.starts_with("the URL names no")) =>
            {
                "correct the PG* variable named, or give the value in [ledger] url / QUORUM_LEDGER_URL (the URL wins over the environment)"
            }
            LedgerError::Unavailable { .. } | LedgerError::Open { .. } if remote => {
                "start the database or check [ledger] url / QUORUM_LEDGER_URL and its credentials"
            }
            LedgerError::Backend { .. } if remote => {
                "check the database server's log, or [ledger] url / QUORUM_LEDGER_URL"
            }
            _ => "make the folder writable, or point QUORUM_DATA_DIR at a writable folder",
        }
    }

    /// Whether the backend is away for now (a retry later may succeed), as opposed
    /// to refusing this row.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, LedgerError::Unavailable { .. })
    }

    /// A stable word for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            LedgerError::NoDataDir => "no_data_dir",
            LedgerError::Open { .. } => "open",
            LedgerError::Schema { .. } => "schema",
            LedgerError::ReadOnly { .. } => "read_only",
            LedgerError::Full { .. } => "full",
            LedgerError::TooLarge { .. } => "too_large",
            LedgerError::Corrupt { .. } => "corrupt",
            LedgerError::Locked { .. } => "locked",
            LedgerError::Io { .. } => "io",
            LedgerError::Unavailable { .. } => "unavailable",
            LedgerError::Backend { .. } => "backend",
        }
    }
}

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ','now')";

/// Schema migrations; migration `i` takes `user_version` from `i` to `i + 1`.
fn migrations() -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE sessions (
            id           TEXT PRIMARY KEY,
            created_at   TEXT NOT NULL DEFAULT ({NOW}),
            label        TEXT,
            source_agent TEXT
        );
        CREATE TABLE runs (
            id            TEXT PRIMARY KEY,
            session_id    TEXT,
            trace_id      TEXT,
            created_at    TEXT NOT NULL DEFAULT ({NOW}),
            targets       TEXT,
            projected_usd REAL,
            prompt        TEXT
        );
        CREATE TABLE prices (
            id            TEXT PRIMARY KEY,
            row           TEXT NOT NULL,
            first_used_at TEXT NOT NULL DEFAULT ({NOW})
        );
        CREATE TABLE requests (
            id                  INTEGER PRIMARY KEY,
            run_id              TEXT NOT NULL,
            session_id          TEXT,
            trace_id            TEXT,
            source_agent        TEXT,
            target              TEXT NOT NULL,
            provider            TEXT NOT NULL,
            model               TEXT NOT NULL,
            input_tokens        INTEGER NOT NULL DEFAULT 0,
            output_tokens       INTEGER NOT NULL DEFAULT 0,
            cached_input_tokens INTEGER NOT NULL DEFAULT 0,
            cache_write_tokens  INTEGER NOT NULL DEFAULT 0,
            reasoning_tokens    INTEGER NOT NULL DEFAULT 0,
            usage_reported      INTEGER NOT NULL DEFAULT 0,
            cost_usd            REAL,
            cost_source         TEXT NOT NULL,
            price_ref           TEXT,
            ttft_ms             REAL,
            latency_ms          REAL,
            status              TEXT NOT NULL,
            finish_reason       TEXT,
            raw_finish_reason   TEXT,
            error_kind          TEXT,
            error_message       TEXT,
            retries             INTEGER NOT NULL DEFAULT 0,
            fell_back_from      TEXT,
            cache_hit           INTEGER NOT NULL DEFAULT 0,
            prompt              TEXT,
            response            TEXT,
            thinking            TEXT,
            tool_calls          TEXT,
            created_at          TEXT NOT NULL DEFAULT ({NOW})
        );
        CREATE INDEX requests_run ON requests(run_id);
        CREATE INDEX requests_session ON requests(session_id);
        CREATE INDEX requests_created ON requests(created_at);
        CREATE TABLE votes (
            id         INTEGER PRIMARY KEY,
            run_id     TEXT,
            targets    TEXT,
            winner     TEXT NOT NULL,
            tag        TEXT,
            created_at TEXT NOT NULL DEFAULT ({NOW})
        );
        CREATE INDEX votes_run ON votes(run_id);"
        ),
        // Reservations: a run holds its projected bound from the moment the cap is
        // checked until it settles; `pid` lets another process expire the holds of
        // a process that died.
        "ALTER TABLE runs ADD COLUMN reserved_usd REAL;
        ALTER TABLE runs ADD COLUMN budget_session TEXT;
        ALTER TABLE runs ADD COLUMN pid INTEGER;
        ALTER TABLE runs ADD COLUMN settled_at TEXT;
        CREATE INDEX runs_open ON runs(settled_at) WHERE reserved_usd > 0;
        CREATE INDEX runs_budget_session ON runs(budget_session);"
            .to_string(),
        // `quorum eval`: a suite run and each finished case (see `ledger/eval.rs`).
        eval::MIGRATION.to_string(),
        // Attachments: a JSON list of {name, kind, media_type, bytes, sha256}.
        ATTACHMENTS_MIGRATION.to_string(),
        // Budget counters, so a reservation checks its caps in O(1) (see `sqlite.rs`).
        sqlite::COUNTERS_MIGRATION.clone(),
        // Budget leases: the lease a request's cost drew down (see `engine::lease`).
        LEASES_MIGRATION.to_string(),
    ]
}

/// Adds `requests.lease_id` (the same statements on both backends).
pub(crate) const LEASES_MIGRATION: &str = "ALTER TABLE requests ADD COLUMN lease_id TEXT;
     CREATE INDEX requests_lease ON requests(lease_id) WHERE lease_id IS NOT NULL;";

/// Adds `requests.attachments` (the same statement on both backends).
pub(crate) const ATTACHMENTS_MIGRATION: &str = "ALTER TABLE requests ADD COLUMN attachments TEXT;";

/// The schema version this build writes.
pub fn schema_version() -> i64 {
    migrations().len() as i64
}

/// A run as noted before it is sent.
#[derive(Debug, Clone, Copy)]
pub struct RunNote<'a> {
    /// Run id.
    pub run_id: &'a str,
    /// Ledger session.
    pub session_id: Option<&'a str>,
    /// The session whose cap applies (default: `session_id`).
    pub budget_session: Option<&'a str>,
    /// Trace id.
    pub trace_id: Option<&'a str>,
    /// Targets as resolved.
    pub targets: &'a [String],
    /// The run's bound, when known.
    pub projected_usd: Option<f64>,
    /// The last user message.
    pub prompt: &'a str,
}

impl RunNote<'_> {
    /// The same note with bound `usd`.
    pub fn projecting(self, usd: Option<f64>) -> Self {
        RunNote {
            projected_usd: usd,
            ..self
        }
    }
}

/// The caps a run must fit, with its bound.
#[derive(Debug, Clone, Copy)]
pub struct Gate<'a> {
    /// The caps.
    pub budget: &'a super::budget::Budget,
    /// The run's projection.
    pub projection: &'a super::budget::Projection,
}

/// A run to note, owned (it may wait in a bookkeeping batch).
#[derive(Debug, Clone)]
pub struct RunEntry {
    /// Run id.
    pub run_id: String,
    /// Ledger session.
    pub session_id: Option<String>,
    /// The session whose cap applies (the note's, else its ledger session).
    pub budget_session: Option<String>,
    /// Trace id.
    pub trace_id: Option<String>,
    /// Targets as resolved, as JSON.
    pub targets: String,
    /// The run's bound, when known.
    pub projected_usd: Option<f64>,
    /// The last user message (clipped), when content is logged.
    pub prompt: Option<String>,
    /// The caps and the run's projection, when the run is gated.
    pub gate: Option<(super::budget::Budget, super::budget::Projection)>,
}

impl RunEntry {
    /// The entry of `note`.
    pub fn new(note: &RunNote<'_>, prompt: Option<&str>, gate: Option<Gate<'_>>) -> RunEntry {
        RunEntry {
            run_id: note.run_id.to_string(),
            session_id: note.session_id.map(String::from),
            budget_session: note.budget_session.or(note.session_id).map(String::from),
            trace_id: note.trace_id.map(String::from),
            targets: serde_json::to_string(note.targets).unwrap_or_else(|_| "[]".into()),
            projected_usd: note.projected_usd,
            prompt: prompt.map(String::from),
            gate: gate.map(|g| (*g.budget, g.projection.clone())),
        }
    }

    /// What it reserves: its known bound when gated, else nothing.
    pub fn bound(&self) -> Option<f64> {
        self.gate.as_ref().map(|(_, p)| p.known_usd())
    }
}

/// One bookkeeping op (see [`WriteOp`]).
#[derive(Debug, Clone)]
pub enum BookOp {
    /// Note a run (and reserve its bound when gated).
    Begin(Box<RunEntry>),
    /// End a run's reservation.
    Settle(String),
}

/// One write of the ledger's queue (see [`Backend::write`]).
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Run bookkeeping.
    Book(BookOp),
    /// A request row; with `settle`, its run's reservation ends in the same
    /// transaction (it was the run's last row).
    Row {
        /// The row.
        row: Box<NewRequest>,
        /// Settle its run too.
        settle: bool,
    },
}

impl WriteOp {
    /// The run it belongs to.
    fn run_id(&self) -> Option<&str> {
        Some(match self {
            WriteOp::Book(BookOp::Begin(e)) => &e.run_id,
            WriteOp::Book(BookOp::Settle(id)) => id,
            WriteOp::Row { row, .. } => &row.run.0,
        })
    }

    /// The spool entry this write becomes while a shared database is away: rows and
    /// notes without a reservation; never a reservation or a settlement.
    fn spool_entry(&self) -> Option<spool::Entry> {
        match self {
            WriteOp::Row { row, settle: false } => Some(spool::Entry::Request(row.clone())),
            WriteOp::Book(BookOp::Begin(e)) if e.gate.is_none() => Some(spool::Entry::Run {
                id: e.run_id.clone(),
                session_id: e.session_id.clone(),
                trace_id: e.trace_id.clone(),
                targets: serde_json::from_str(&e.targets).unwrap_or_default(),
                projected_usd: e.projected_usd,
                prompt: e.prompt.clone(),
            }),
            _ => None,
        }
    }
}

/// The budget counters and their recomputation from rows (see
/// [`Backend::budget_counters`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CounterCheck {
    /// As kept: `(scope, usd, open runs)`.
    pub kept: Vec<(String, f64, i64)>,
    /// As recomputed from the rows.
    pub recomputed: Vec<(String, f64, i64)>,
}

impl CounterCheck {
    /// The scopes where kept and recomputed differ by more than `tol` USD (or in
    /// open runs); a scope missing on one side counts as zero.
    pub fn differences(&self, tol: f64) -> Vec<String> {
        type Both = ((f64, i64), (f64, i64));
        let mut all: std::collections::BTreeMap<&str, Both> = Default::default();
        for (k, u, n) in &self.kept {
            all.entry(k).or_default().0 = (*u, *n);
        }
        for (k, u, n) in &self.recomputed {
            all.entry(k).or_default().1 = (*u, *n);
        }
        all.into_iter()
            .filter(|(_, (a, b))| (a.0 - b.0).abs() > tol || a.1 != b.1)
            .map(|(k, (a, b))| {
                format!(
                    "{k}: kept ${} / {} open, rows say ${} / {} open",
                    a.0, a.1, b.0, b.1
                )
            })
            .collect()
    }
}

/// Budget counter scopes: what open runs hold (all, and per budget session), and what
/// requests cost per local calendar day and per budget session.
pub(crate) mod scope {
    /// What every open run still holds.
    pub const HELD: &str = "held";
    /// What the open runs of budget session `s` still hold.
    pub fn held_in(s: &str) -> String {
        format!("held:{s}")
    }
    /// What requests cost on local day `d` (`YYYY-MM-DD`).
    pub fn day(d: &str) -> String {
        format!("day:{d}")
    }
    /// What the requests of budget session `s` cost.
    pub fn session(s: &str) -> String {
        format!("session:{s}")
    }
}

/// Why [`Ledger::begin_run`] did not note the run.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// A cap would be crossed.
    Budget(super::budget::Refusal),
    /// The ledger could not be written.
    Ledger(LedgerError),
}

/// A refusal where only a ledger error can be told.
fn refused_error(place: &str, r: Refused) -> LedgerError {
    match r {
        Refused::Ledger(e) => e,
        Refused::Budget(b) => LedgerError::Backend {
            place: place.to_string(),
            detail: b.to_string(),
        },
    }
}

impl From<LedgerError> for Refused {
    fn from(e: LedgerError) -> Self {
        Refused::Ledger(e)
    }
}

/// How a column is stored (the same on both backends: integers, flags included, as
/// 64-bit integers; reals as doubles; text as text; times as ISO 8601 UTC text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// 64-bit integer (flags are 0/1).
    Int,
    /// Double.
    Real,
    /// Text.
    Text,
}

/// One column of `requests`.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Its name.
    pub name: &'static str,
    /// How it is stored.
    pub kind: ColumnKind,
    /// Whether a recorded request writes it (`id` and `created_at` are the database's).
    pub written: bool,
}

const fn col(name: &'static str, kind: ColumnKind) -> Column {
    Column {
        name,
        kind,
        written: true,
    }
}

/// The columns of `requests`, once: the INSERT and the SELECT of every backend are
/// built from this list, and rows are read back by these names.
pub const REQUEST_COLUMNS: &[Column] = {
    use ColumnKind::{Int, Real, Text};
    &[
        Column {
            name: "id",
            kind: Int,
            written: false,
        },
        col("run_id", Text),
        col("session_id", Text),
        col("trace_id", Text),
        col("source_agent", Text),
        col("target", Text),
        col("provider", Text),
        col("model", Text),
        col("input_tokens", Int),
        col("output_tokens", Int),
        col("cached_input_tokens", Int),
        col("cache_write_tokens", Int),
        col("reasoning_tokens", Int),
        col("usage_reported", Int),
        col("cost_usd", Real),
        col("cost_source", Text),
        col("price_ref", Text),
        col("ttft_ms", Real),
        col("latency_ms", Real),
        col("status", Text),
        col("finish_reason", Text),
        col("raw_finish_reason", Text),
        col("error_kind", Text),
        col("error_message", Text),
        col("retries", Int),
        col("fell_back_from", Text),
        col("cache_hit", Int),
        col("prompt", Text),
        col("response", Text),
        col("thinking", Text),
        col("tool_calls", Text),
        col("attachments", Text),
        col("lease_id", Text),
        Column {
            name: "created_at",
            kind: Text,
            written: false,
        },
    ]
};

/// `a, b, c` of every column of `requests` (for SELECT).
pub fn request_select_list() -> String {
    REQUEST_COLUMNS
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The columns a recorded request writes, in INSERT order.
pub fn request_written_columns() -> impl Iterator<Item = &'static Column> {
    REQUEST_COLUMNS.iter().filter(|c| c.written)
}

/// A value bound to a statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// NULL.
    Null,
    /// Integer.
    Int(i64),
    /// Real.
    Real(f64),
    /// Text.
    Text(String),
}

impl Value {
    fn text(s: Option<&str>) -> Value {
        s.map_or(Value::Null, |s| Value::Text(s.to_string()))
    }
    fn real(f: Option<f64>) -> Value {
        f.map_or(Value::Null, Value::Real)
    }
}

/// A request row about to be written: everything the backends need, already clipped
/// and serialised, so that a batch, the spool and a replay write exactly the same row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewRequest {
    /// Unique id of this request (idempotent writes and replays).
    pub uid: String,
    /// The session to note (with the calling agent), if any.
    pub session: Option<(String, Option<String>)>,
    /// The run: id, session, trace id, prompt (None without log_content).
    pub run: (String, Option<String>, Option<String>, Option<String>),
    /// The price row used, as JSON, to keep beside the ledger.
    pub price: Option<(String, String)>,
    /// `requests` values by column name (see [`REQUEST_COLUMNS`]).
    pub values: Vec<(String, Value)>,
}

impl NewRequest {
    /// The value of column `name` (NULL when absent).
    pub fn value(&self, name: &str) -> &Value {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map_or(&Value::Null, |(_, v)| v)
    }

    /// The row of `meta` and `c`, with content fields cut to `cap` bytes each.
    pub fn build(
        meta: &RequestMeta,
        c: &Completion,
        opts: LedgerOptions,
        pricing: Option<&Pricing>,
        cap: usize,
    ) -> NewRequest {
        let content = opts.log_content;
        let price = c.price_ref.as_deref().and_then(|id| {
            let json = pricing?.row_json_by_id(id)?;
            Some((id.to_string(), json.to_string()))
        });
        let status = match &c.error {
            None => "ok",
            Some(EngineError::Cancelled) => "cancelled",
            Some(_) => "error",
        };
        let tool_calls = (content && !c.tool_calls.is_empty())
            .then(|| {
                serde_json::to_string(
                    &c.tool_calls
                        .iter()
                        .map(|t| serde_json::json!({"id": t.id, "name": t.name, "arguments": t.arguments_json()}))
                        .collect::<Vec<_>>(),
                )
                .ok()
            })
            .flatten()
            .map(|t| clip(&t, cap).into_owned());
        // Names, sizes and hashes only: small whatever the files were, so never clipped
        // (a clipped list would not parse back).
        let attachments = (!meta.attachments.is_empty())
            .then(|| serde_json::to_string(&meta.attachments).ok())
            .flatten();
        let u = &c.usage;
        let int = |n: u64| Value::Int(n as i64);
        let values = request_written_columns()
            .map(|col| {
                let v = match col.name {
                    "run_id" => Value::Text(meta.run_id.clone()),
                    "session_id" => Value::text(meta.session_id.as_deref()),
                    "trace_id" => Value::text(meta.trace_id.as_deref()),
                    "source_agent" => Value::text(meta.source_agent.as_deref()),
                    "target" => Value::Text(meta.target.clone()),
                    "provider" => Value::Text(c.provider.clone()),
                    "model" => Value::Text(c.model.clone()),
                    "input_tokens" => int(u.input_tokens),
                    "output_tokens" => int(u.output_tokens),
                    "cached_input_tokens" => int(u.cached_input_tokens),
                    "cache_write_tokens" => int(u.cache_creation_input_tokens),
                    "reasoning_tokens" => int(u.reasoning_tokens),
                    "usage_reported" => Value::Int(c.usage_reported.into()),
                    "cost_usd" => Value::real(c.cost_usd),
                    "cost_source" => Value::Text(c.cost_source.as_str().into()),
                    "price_ref" => Value::text(c.price_ref.as_deref()),
                    "ttft_ms" => Value::real(c.ttft_ms),
                    "latency_ms" => Value::Real(c.latency_ms),
                    "status" => Value::Text(status.into()),
                    "finish_reason" => Value::Text(c.finish_reason.as_str().into()),
                    "raw_finish_reason" => Value::Text(c.raw_finish_reason.clone()),
                    "error_kind" => Value::text(c.error.as_ref().map(|e| e.kind())),
                    "error_message" => {
                        Value::text(c.error.as_ref().map(|e| e.to_string()).as_deref())
                    }
                    "retries" => Value::Int(c.retries.into()),
                    "fell_back_from" => Value::text(c.fell_back_from.as_deref()),
                    "cache_hit" => Value::Int(c.cached.into()),
                    "prompt" => Value::text(content.then(|| clip(&meta.prompt, cap)).as_deref()),
                    "response" => Value::text(content.then(|| clip(&c.text, cap)).as_deref()),
                    "thinking" => Value::text(
                        (content && !c.thinking.is_empty())
                            .then(|| clip(&c.thinking, cap))
                            .as_deref(),
                    ),
                    "tool_calls" => Value::text(tool_calls.as_deref()),
                    "attachments" => Value::text(attachments.as_deref()),
                    "lease_id" => Value::text(meta.lease_id.as_deref()),
                    other => unreachable!("requests column {other} has no value"),
                };
                (col.name.to_string(), v)
            })
            .collect();
        NewRequest {
            uid: new_uid(),
            session: meta
                .session_id
                .clone()
                .map(|s| (s, meta.source_agent.clone())),
            run: (
                meta.run_id.clone(),
                meta.session_id.clone(),
                meta.trace_id.clone(),
                content.then(|| clip(&meta.prompt, cap).into_owned()),
            ),
            price,
            values,
        }
    }
}

/// A new unique request id: process, time and a counter, plus randomness so that
/// two machines never collide.
fn new_uid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "{t:016x}-{:08x}-{n:x}-{:08x}",
        crate::shared::pid(),
        rand::random::<u32>()
    )
}

/// Reads a stored row by column name (one implementation per backend).
pub trait RowRead {
    /// A text column (NULL is an error).
    fn text(&self, name: &str) -> Result<String, String>;
    /// A nullable text column.
    fn opt_text(&self, name: &str) -> Result<Option<String>, String>;
    /// An integer column (NULL reads as 0).
    fn int(&self, name: &str) -> Result<i64, String>;
    /// A nullable real column.
    fn opt_real(&self, name: &str) -> Result<Option<f64>, String>;
}

impl RequestRow {
    /// A stored row, read by the names of [`REQUEST_COLUMNS`].
    pub fn from_row(r: &impl RowRead) -> Result<RequestRow, String> {
        let u = |n: &str| r.int(n).map(|v| v.max(0) as u64);
        Ok(RequestRow {
            id: r.int("id")?,
            run_id: r.text("run_id")?,
            session_id: r.opt_text("session_id")?,
            trace_id: r.opt_text("trace_id")?,
            source_agent: r.opt_text("source_agent")?,
            target: r.text("target")?,
            provider: r.text("provider")?,
            model: r.text("model")?,
            input_tokens: u("input_tokens")?,
            output_tokens: u("output_tokens")?,
            cached_input_tokens: u("cached_input_tokens")?,
            cache_write_tokens: u("cache_write_tokens")?,
            reasoning_tokens: u("reasoning_tokens")?,
            usage_reported: r.int("usage_reported")? != 0,
            cost_usd: r.opt_real("cost_usd")?,
            cost_source: r.text("cost_source")?,
            price_ref: r.opt_text("price_ref")?,
            ttft_ms: r.opt_real("ttft_ms")?,
            latency_ms: r.opt_real("latency_ms")?,
            status: r.text("status")?,
            finish_reason: r.opt_text("finish_reason")?,
            raw_finish_reason: r.opt_text("raw_finish_reason")?,
            error_kind: r.opt_text("error_kind")?,
            error_message: r.opt_text("error_message")?,
            retries: r.int("retries")?.clamp(0, u32::MAX as i64) as u32,
            fell_back_from: r.opt_text("fell_back_from")?,
            cache_hit: r.int("cache_hit")? != 0,
            prompt: r.opt_text("prompt")?,
            response: r.opt_text("response")?,
            thinking: r.opt_text("thinking")?,
            tool_calls: r
                .opt_text("tool_calls")?
                .and_then(|t| serde_json::from_str(&t).ok()),
            attachments: r
                .opt_text("attachments")?
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default(),
            created_at: r.text("created_at")?,
        })
    }

    /// The request as the engine reported it (what a face shows for a past run).
    /// The error itself is not rebuilt: `error_message` carries its text.
    pub fn to_completion(&self) -> Completion {
        Completion {
            provider: self.provider.clone(),
            model: self.model.clone(),
            text: self.response.clone().unwrap_or_default(),
            thinking: self.thinking.clone().unwrap_or_default(),
            usage: Usage {
                input_tokens: self.input_tokens,
                output_tokens: self.output_tokens,
                cached_input_tokens: self.cached_input_tokens,
                cache_creation_input_tokens: self.cache_write_tokens,
                reasoning_tokens: self.reasoning_tokens,
                reported_cost_usd: None,
            },
            usage_reported: self.usage_reported,
            cost_usd: self.cost_usd,
            cost_source: CostSource::parse(&self.cost_source),
            price_ref: self.price_ref.clone(),
            ttft_ms: self.ttft_ms,
            latency_ms: self.latency_ms.unwrap_or(0.0),
            finish_reason: self
                .finish_reason
                .as_deref()
                .map_or(FinishReason::Stop, FinishReason::parse),
            raw_finish_reason: self.raw_finish_reason.clone().unwrap_or_default(),
            retries: self.retries,
            cached: self.cache_hit,
            fell_back_from: self.fell_back_from.clone(),
            ..Default::default()
        }
    }
}

/// The most bytes one content field (prompt, response, thinking, tool calls) may take
/// when the backend's row limit is `max` bytes: a quarter of it, less room for the rest
/// of the row. A longer answer is stored cut, so its cost and tokens are still recorded.
pub(crate) fn content_cap_for(max: usize) -> usize {
    (max.saturating_sub(64 * 1024) / 4).max(256)
}

/// `s`, cut at a character boundary to fit `cap` bytes with a note saying so.
pub(crate) fn clip(s: &str, cap: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= cap {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = cap.saturating_sub(96);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!(
        "{}\n… [cut by quorum: {end} of {} bytes kept; the row limit is {cap} bytes per field]",
        &s[..end],
        s.len()
    ))
}

/// Which requests a query returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFilter<'a> {
    /// One request by row id.
    Id(i64),
    /// Every request of a run, in order.
    Run(&'a str),
    /// Every request of a session, in order.
    Session(&'a str),
    /// The newest `n`, newest first.
    Recent(usize),
}

/// Which runs a query returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunFilter<'a> {
    /// One run.
    Id(&'a str),
    /// The runs of a session, oldest first.
    Session(&'a str),
}

/// Which backend a ledger uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// An SQLite file.
    Sqlite,
    /// A PostgreSQL database.
    Postgres,
}

/// What a ledger backend does: storage only. The [`Ledger`] in front of it builds
/// rows, clips content, keeps price rows and batches writes, the same for every backend.
pub trait Backend: Send + Sync {
    /// Which backend.
    fn kind(&self) -> BackendKind;
    /// The file, or the URL with its password masked.
    fn place(&self) -> &str;
    /// The longest content field it takes (see [`content_cap_for`]).
    fn content_cap(&self) -> usize;
    /// The schema version.
    fn version(&self) -> Result<i64, LedgerError>;
    /// Whether it takes a write now (a real, committed write).
    fn check_writable(&self) -> Result<(), LedgerError>;
    /// Apply `ops` in one transaction: note runs (a gated one reserves its bound in the
    /// transaction that checks the caps, or is refused), write request rows (with
    /// their sessions, runs and price rows, counted in the budget counters), settle
    /// runs. One result per op, in order: a row's id, 0 for bookkeeping; `Err` when
    /// the transaction failed as a whole. Committed (visible to every process) when it
    /// returns, and durable when it holds a request row; bookkeeping alone may skip
    /// its own flush (it becomes durable with the next request row's commit).
    fn write(&self, ops: &[WriteOp]) -> Result<Vec<Result<i64, Refused>>, LedgerError>;
    /// How many [`Backend::write`] transactions the ledger's queue runs at once.
    fn concurrent_writes(&self) -> usize {
        1
    }
    /// Write requests in one transaction; their row ids, in order. Durable when it
    /// returns.
    fn insert_requests(&self, rows: &[NewRequest]) -> Result<Vec<i64>, LedgerError> {
        let ops: Vec<WriteOp> = rows
            .iter()
            .map(|r| WriteOp::Row {
                row: Box::new(r.clone()),
                settle: false,
            })
            .collect();
        self.write(&ops)?
            .into_iter()
            .map(|r| r.map_err(|r| refused_error(self.place(), r)))
            .collect()
    }
    /// Note a run, and with `gate` reserve its bound in the transaction that checks
    /// the caps.
    fn begin_run(
        &self,
        note: &RunNote<'_>,
        prompt: Option<&str>,
        gate: Option<Gate<'_>>,
    ) -> Result<(), Refused> {
        let op = WriteOp::Book(BookOp::Begin(Box::new(RunEntry::new(note, prompt, gate))));
        match self.write(std::slice::from_ref(&op)) {
            Ok(mut out) if out.len() == 1 => out.remove(0).map(|_| ()),
            Ok(_) => Ok(()),
            Err(e) => Err(Refused::Ledger(e)),
        }
    }
    /// End a run's reservation.
    fn settle_run(&self, run_id: &str) -> Result<(), LedgerError> {
        match self.write(&[WriteOp::Book(BookOp::Settle(run_id.to_string()))]) {
            Ok(mut out) if out.len() == 1 => out
                .remove(0)
                .map(|_| ())
                .map_err(|r| refused_error(self.place(), r)),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }
    /// The budget counters, and the same figures recomputed from the rows (the
    /// counters must always equal the recomputation; for tests and `quorum ledger`
    /// checks). Each list is `(scope, usd, open runs)`, sorted by scope.
    fn budget_counters(&self) -> Result<CounterCheck, LedgerError>;
    /// Start (or rename) a session.
    fn start_session(
        &self,
        id: &str,
        label: Option<&str>,
        source_agent: Option<&str>,
    ) -> Result<(), LedgerError>;
    /// Spend today and in `session`, holds included.
    fn spend(&self, session: Option<&str>) -> Result<Spend, LedgerError>;
    /// Runs holding a reservation, and what they hold.
    fn open_reservations(&self) -> Result<(u64, f64), LedgerError>;
    /// Totals grouped by `by`, most recent first.
    fn totals(&self, by: GroupBy) -> Result<Vec<TotalRow>, LedgerError>;
    /// Sessions, most recent first.
    fn sessions(&self, limit: usize) -> Result<Vec<SessionRow>, LedgerError>;
    /// Requests.
    fn requests(&self, filter: RequestFilter<'_>) -> Result<Vec<RequestRow>, LedgerError>;
    /// Runs.
    fn runs(&self, filter: RunFilter<'_>) -> Result<Vec<RunRow>, LedgerError>;
    /// The stored copy of a price row (JSON text).
    fn price_row(&self, id: &str) -> Result<Option<String>, LedgerError>;
    /// Record a vote (`winner` "tie" for a tie).
    fn record_vote(
        &self,
        run_id: Option<&str>,
        targets: &str,
        winner: &str,
        tag: Option<&str>,
    ) -> Result<(), LedgerError>;
    /// Every vote, oldest first.
    fn votes(&self) -> Result<Vec<VoteRow>, LedgerError>;
    /// Number of request rows.
    fn request_count(&self) -> Result<u64, LedgerError>;
    /// Make every committed row whole for outside readers (SQLite: checkpoint the WAL).
    fn flush(&self) -> Result<(), LedgerError>;
    /// Lower the backend's row limit (tests of oversized rows; SQLite only).
    fn set_length_limit(&self, bytes: i32) -> Result<(), LedgerError>;
    /// Note an eval run (again on resume: back to `running`).
    fn begin_eval_run(
        &self,
        id: &str,
        suite: &str,
        suite_hash: &str,
        targets: &str,
        cases: i64,
    ) -> Result<(), LedgerError>;
    /// Record (or replace) one finished eval case.
    fn record_eval_case(&self, eval_run_id: &str, row: &EvalCaseRow) -> Result<(), LedgerError>;
    /// Mark an eval run ended.
    fn end_eval_run(&self, id: &str, status: &str) -> Result<(), LedgerError>;
    /// An eval run by id, or the newest of a suite.
    fn eval_run(
        &self,
        id: Option<&str>,
        latest_for: Option<&str>,
    ) -> Result<Option<EvalRunRow>, LedgerError>;
    /// The finished cases of an eval run, in suite order.
    fn eval_cases(&self, eval_run_id: &str) -> Result<Vec<EvalCaseRow>, LedgerError>;
}

impl From<LedgerError> for String {
    fn from(e: LedgerError) -> String {
        e.to_string()
    }
}

/// The ledger: one type in front of either backend.
pub struct Ledger {
    backend: Arc<dyn Backend>,
    opts: LedgerOptions,
    pricing: Option<Pricing>,
    spool: Option<Arc<spool::Spool>>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    /// Every write goes through this one group-commit queue (see `batch.rs`).
    writes: Arc<batch::Writes>,
    /// Why the database is known to be away (rows go to the spool), until a replay
    /// or a probe reaches it again.
    away: Arc<Mutex<Option<String>>>,
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let (m, cv) = &*self.stop;
        if let Ok(mut g) = m.lock() {
            *g = true;
        }
        cv.notify_all();
    }
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("place", &self.backend.place())
            .field("log_content", &self.opts.log_content)
            .finish()
    }
}

/// Where a ledger lives.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// An SQLite file.
    File(PathBuf),
    /// A PostgreSQL URL (with its credentials; never shown: see [`Location::place`]).
    Url(String),
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(p) => f.debug_tuple("File").field(p).finish(),
            Location::Url(u) => f.debug_tuple("Url").field(&mask_url(u)).finish(),
        }
    }
}

impl Location {
    /// The file, or the URL with its password masked.
    pub fn place(&self) -> String {
        match self {
            Location::File(p) => p.display().to_string(),
            Location::Url(u) => mask_url(u),
        }
    }
}

impl Ledger {
    /// A ledger over `backend`.
    pub fn with_backend(backend: Box<dyn Backend>, opts: LedgerOptions) -> Ledger {
        let backend: Arc<dyn Backend> = Arc::from(backend);
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let away = Arc::new(Mutex::new(None));
        Ledger {
            writes: write_queue(&backend, None, &away, &stop),
            backend,
            opts,
            pricing: None,
            spool: None,
            stop,
            away,
        }
    }

    /// Open the PostgreSQL ledger at `url` even while the database cannot be reached
    /// (a warning says so; the schema is made or migrated when it is first reached).
    /// With a spool at `spool` (no budget, see [`Ledger::with_spool`]) rows wait there
    /// meanwhile; without one (a budget is set) every write is refused until it
    /// returns (fail closed), and no process needs a restart when it does. Anything but
    /// an unreachable database (a bad URL, TLS, a refused login, a newer schema) still
    /// fails here.
    pub fn open_url(
        url: &str,
        opts: LedgerOptions,
        spool: Option<&Path>,
    ) -> Result<Ledger, LedgerError> {
        let (backend, away) = postgres::PgBackend::connect_lazy(url)?;
        let l = Self::with_backend(Box::new(backend), opts);
        let Some(spool) = spool else {
            if let Some(e) = away {
                tracing::warn!(
                    "ledger: {e}; a budget is set, so every request is refused until it returns"
                );
                l.set_away(Some(e.to_string()));
                let (backend, stop, away) = (l.backend.clone(), l.stop.clone(), l.away.clone());
                std::thread::Builder::new()
                    .name("quorum-ledger-watch".into())
                    .spawn(move || replay_loop(&*backend, None, &stop, &away))
                    .map_err(|e| LedgerError::Io {
                        place: l.place().to_string(),
                        detail: format!("cannot start the watch thread: {e}"),
                    })?;
            }
            return Ok(l);
        };
        let l = l.with_spool(spool)?;
        if let Some(e) = away {
            tracing::warn!(
                "ledger: {e}; no budget is set, so rows are kept in {} and written to the \
                 database when it returns",
                spool.display()
            );
            l.set_away(Some(e.to_string()));
        } else if l.backlog() > 0 {
            // Rows an earlier process left: written before this one's, and before a
            // short-lived process (`quorum ask`) is gone again.
            match l.replay_spool() {
                Ok(n) => tracing::info!("ledger: replayed {n} spooled row(s) into {}", l.place()),
                Err(e) => tracing::warn!(
                    "ledger: cannot replay the spool {} yet ({e}); rows keep waiting there",
                    spool.display()
                ),
            }
        }
        Ok(l)
    }

    fn set_away(&self, why: Option<String>) {
        set_away(&self.away, why);
    }

    /// Why the shared database is known to be away (`None` when it is reachable, and
    /// for SQLite).
    pub fn away(&self) -> Option<String> {
        self.away.lock().ok().and_then(|g| g.clone())
    }

    /// A line for the user while the shared database is away and rows wait in the
    /// local spool.
    pub fn away_warning(&self) -> Option<String> {
        let why = self.away()?;
        let sp = self.spool.as_ref()?;
        Some(format!(
            "{why}; rows are kept in {} ({} waiting) and written when it returns",
            sp.path().display(),
            sp.backlog()
        ))
    }

    /// Keep rows the database cannot take right now (it is away) in the spool file at
    /// `path`, durably, and replay them in order when it returns. Only for runs without
    /// a budget: with a budget set, a ledger that cannot be written refuses instead.
    pub fn with_spool(mut self, path: &Path) -> Result<Self, LedgerError> {
        let spool = Arc::new(spool::Spool::open(path)?);
        let (backend, sp, stop) = (self.backend.clone(), spool.clone(), self.stop.clone());
        let away = self.away.clone();
        std::thread::Builder::new()
            .name("quorum-ledger-replay".into())
            .spawn(move || replay_loop(&*backend, Some(&sp), &stop, &away))
            .map_err(|e| LedgerError::Io {
                place: path.display().to_string(),
                detail: format!("cannot start the replay thread: {e}"),
            })?;
        self.writes = write_queue(&self.backend, Some(&spool), &self.away, &self.stop);
        self.spool = Some(spool);
        Ok(self)
    }

    /// Rows waiting in the spool for the database.
    pub fn backlog(&self) -> u64 {
        self.spool.as_ref().map_or(0, |s| s.backlog())
    }

    /// Replay the spool now; how many entries went to the database.
    pub fn replay_spool(&self) -> Result<usize, LedgerError> {
        match &self.spool {
            Some(sp) => {
                let n = replay(&*self.backend, sp)?;
                self.set_away(None);
                Ok(n)
            }
            None => Ok(0),
        }
    }

    /// Open (creating and migrating as needed) the SQLite ledger at `path`.
    pub fn open(path: &Path, opts: LedgerOptions) -> Result<Ledger, LedgerError> {
        Ok(Self::with_backend(
            Box::new(sqlite::SqliteBackend::open(path)?),
            opts,
        ))
    }

    /// Open `ledger.sqlite3` in `dir` (created 0700 if missing).
    pub fn open_in(dir: &Path, opts: LedgerOptions) -> Result<Ledger, LedgerError> {
        Self::open(&dir.join(LEDGER_FILE), opts)
    }

    /// Open the SQLite ledger in [`data_dir`].
    pub fn open_default(opts: LedgerOptions) -> Result<Ledger, LedgerError> {
        let dir = data_dir().ok_or(LedgerError::NoDataDir)?;
        Self::open_in(&dir, opts)
    }

    /// Open the ledger at `loc`.
    pub fn open_at(loc: &Location, opts: LedgerOptions) -> Result<Ledger, LedgerError> {
        match loc {
            Location::File(p) => Self::open(p, opts),
            Location::Url(u) => Ok(Self::with_backend(
                Box::new(postgres::PgBackend::connect(u)?),
                opts,
            )),
        }
    }

    /// Keep a copy of each price row used, so a ledger row stays explainable even after
    /// the price table changes.
    pub fn with_pricing(mut self, pricing: Pricing) -> Self {
        self.pricing = Some(pricing);
        self
    }

    /// Which backend.
    pub fn kind(&self) -> BackendKind {
        self.backend.kind()
    }

    /// The file, or the URL with its password masked.
    pub fn place(&self) -> &str {
        self.backend.place()
    }

    /// The backend.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// Whether the ledger takes a write now.
    pub fn check_writable(&self) -> Result<(), LedgerError> {
        match (self.backend.check_writable(), &self.spool) {
            (Err(e), Some(sp)) if e.is_unavailable() => sp.check_writable(),
            (r, _) => r,
        }
    }

    /// Lower the row length limit (SQLite's, bytes per string and per row).
    pub fn set_length_limit(&self, bytes: i32) -> Result<(), LedgerError> {
        self.backend.set_length_limit(bytes)
    }

    /// The schema version.
    pub fn version(&self) -> Result<i64, LedgerError> {
        self.backend.version()
    }

    /// The row `meta` and `c` make in this ledger.
    pub fn new_request(&self, meta: &RequestMeta, c: &Completion) -> NewRequest {
        NewRequest::build(
            meta,
            c,
            self.opts,
            self.pricing.as_ref(),
            self.backend.content_cap(),
        )
    }

    /// Record one request; returns its row id. Committed when this returns.
    pub fn record_request(&self, meta: &RequestMeta, c: &Completion) -> Result<i64, LedgerError> {
        self.write_row(meta, c, false)
    }

    /// Record a run's last request and end its reservation in the same transaction
    /// (see [`Ledger::settle_run`]); its row id. Committed when this returns.
    pub fn record_settling(&self, meta: &RequestMeta, c: &Completion) -> Result<i64, LedgerError> {
        self.write_row(meta, c, true)
    }

    fn write_row(
        &self,
        meta: &RequestMeta,
        c: &Completion,
        settle: bool,
    ) -> Result<i64, LedgerError> {
        let row = Box::new(self.new_request(meta, c));
        // Writes arriving together share one transaction (group commit).
        self.writes
            .submit(WriteOp::Row { row, settle })
            .map_err(|r| refused_error(self.place(), r))
    }

    /// Write prepared rows in one transaction (a batch, or a replay).
    pub fn insert_requests(&self, rows: &[NewRequest]) -> Result<Vec<i64>, LedgerError> {
        self.backend.insert_requests(rows)
    }

    /// Note a run before its requests finish: its targets and the pre-send bound.
    pub fn note_run(
        &self,
        run_id: &str,
        session_id: Option<&str>,
        trace_id: Option<&str>,
        targets: &[String],
        projected_usd: Option<f64>,
        prompt: &str,
    ) -> Result<(), LedgerError> {
        let note = RunNote {
            run_id,
            session_id,
            budget_session: None,
            trace_id,
            targets,
            projected_usd,
            prompt,
        };
        self.begin_run(&note, None)
            .map_err(|r| refused_error(self.place(), r))
    }

    /// Start (or rename) a session.
    pub fn start_session(
        &self,
        id: &str,
        label: Option<&str>,
        source_agent: Option<&str>,
    ) -> Result<(), LedgerError> {
        self.backend.start_session(id, label, source_agent)
    }

    /// What was spent today (local calendar day) and in `session`, counting what runs in
    /// flight still hold (see [`Ledger::begin_run`]). Unknown costs count as nothing
    /// here: they are shown as unknown elsewhere.
    pub fn spend(&self, session: Option<&str>) -> Result<Spend, LedgerError> {
        self.backend.spend(session)
    }

    /// Note a run before anything is sent, and when `gate` is given reserve its bound in
    /// the same transaction that checks the caps: concurrent runs, in this process or
    /// another one sharing the ledger, can never together cross a cap. The reservation
    /// holds until [`Ledger::settle_run`].
    pub fn begin_run(&self, note: &RunNote<'_>, gate: Option<Gate<'_>>) -> Result<(), Refused> {
        // Concurrent writes share one transaction (see `batch.rs`).
        self.writes
            .submit(WriteOp::Book(BookOp::Begin(Box::new(
                self.entry(note, gate),
            ))))
            .map(|_| ())
    }

    /// [`Ledger::begin_run`] for an async caller: nothing blocks, the outcome arrives
    /// on the receiver once the decision is committed.
    pub fn begin_run_async(
        &self,
        note: &RunNote<'_>,
        gate: Gate<'_>,
    ) -> tokio::sync::oneshot::Receiver<Result<(), Refused>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writes.submit_async(
            WriteOp::Book(BookOp::Begin(Box::new(self.entry(note, Some(gate))))),
            move |r| {
                let _ = tx.send(r.map(|_| ()));
            },
        );
        rx
    }

    /// Note a run that reserves nothing without waiting for it: the note rides in the
    /// next transaction (usually with the run's first request row), or is committed on
    /// its own within moments when none comes. `done` gets the outcome, once committed
    /// (or spooled): a failure must be made loud there.
    pub fn note_run_passenger(
        &self,
        note: &RunNote<'_>,
        done: impl FnOnce(Result<(), LedgerError>) + Send + 'static,
    ) {
        let place = self.place().to_string();
        self.writes.submit_passenger(
            WriteOp::Book(BookOp::Begin(Box::new(self.entry(note, None)))),
            move |r| done(r.map(|_| ()).map_err(|r| refused_error(&place, r))),
        )
    }

    /// The owned entry of `note` (its prompt clipped, or left out without
    /// `log_content`).
    fn entry(&self, note: &RunNote<'_>, gate: Option<Gate<'_>>) -> RunEntry {
        let prompt = self
            .opts
            .log_content
            .then(|| clip(note.prompt, self.backend.content_cap()));
        RunEntry::new(note, prompt.as_deref(), gate)
    }

    /// End a run's reservation: what it really cost is in its request rows now (a
    /// failed or cancelled request costs what it used, often nothing).
    pub fn settle_run(&self, run_id: &str) -> Result<(), LedgerError> {
        self.writes
            .submit(WriteOp::Book(BookOp::Settle(run_id.to_string())))
            .map(|_| ())
            .map_err(|r| refused_error(self.place(), r))
    }

    /// [`Ledger::settle_run`] without waiting: the settlement rides in the batch being
    /// formed (or commits now when none is running); a failure is logged (the hold
    /// then expires when this process exits, as after a crash).
    pub fn settle_run_detached(&self, run_id: &str) {
        self.writes
            .submit_detached(settle_op(run_id), log_settle_failure(run_id))
    }

    /// Settle run (or lease) `run_id` without blocking the caller: a writer thread
    /// commits it with whatever else is due; a failure is logged.
    pub fn settle_run_async(&self, run_id: &str) {
        self.writes
            .submit_async(settle_op(run_id), log_settle_failure(run_id))
    }

    /// The budget counters beside their recomputation from the rows (they must agree).
    pub fn budget_counters(&self) -> Result<CounterCheck, LedgerError> {
        self.backend.budget_counters()
    }

    /// Runs still holding a reservation (for tests and `llm.health`).
    pub fn open_reservations(&self) -> Result<(u64, f64), LedgerError> {
        self.backend.open_reservations()
    }

    /// Totals grouped by `by`, most recent first.
    pub fn totals(&self, by: GroupBy) -> Result<Vec<TotalRow>, LedgerError> {
        self.backend.totals(by)
    }

    /// Sessions, most recent first.
    pub fn sessions(&self, limit: usize) -> Result<Vec<SessionRow>, LedgerError> {
        self.backend.sessions(limit)
    }

    /// Every request of a run, in order.
    pub fn run_requests(&self, run_id: &str) -> Result<Vec<RequestRow>, LedgerError> {
        self.backend.requests(RequestFilter::Run(run_id))
    }

    /// The most recent requests, newest first.
    pub fn recent(&self, limit: usize) -> Result<Vec<RequestRow>, LedgerError> {
        self.backend.requests(RequestFilter::Recent(limit))
    }

    /// Look up `id` as a request id, a run id, then a session id.
    pub fn show(&self, id: &str) -> Result<Option<Shown>, LedgerError> {
        if let Ok(n) = id.parse::<i64>() {
            if let Some(r) = self
                .backend
                .requests(RequestFilter::Id(n))?
                .into_iter()
                .next()
            {
                return Ok(Some(Shown::Request(Box::new(r))));
            }
        }
        if let Some(run) = self.backend.runs(RunFilter::Id(id))?.into_iter().next() {
            let requests = self.run_requests(id)?;
            return Ok(Some(Shown::Run { run, requests }));
        }
        let session = self
            .sessions(usize::MAX >> 1)?
            .into_iter()
            .find(|s| s.id == id);
        if let Some(session) = session {
            let runs = self.backend.runs(RunFilter::Session(id))?;
            let requests = self.backend.requests(RequestFilter::Session(id))?;
            return Ok(Some(Shown::Session {
                session,
                runs,
                requests,
            }));
        }
        Ok(None)
    }

    /// The stored copy of a price row (as JSON), by id.
    pub fn price_row(&self, id: &str) -> Result<Option<serde_json::Value>, LedgerError> {
        Ok(self
            .backend
            .price_row(id)?
            .and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Record a vote on a run: the winning target, or None for a tie.
    pub fn record_vote(
        &self,
        run_id: Option<&str>,
        targets: &[String],
        winner: Option<&str>,
        tag: Option<&str>,
    ) -> Result<(), LedgerError> {
        let targets = serde_json::to_string(targets).unwrap_or_else(|_| "[]".into());
        self.backend
            .record_vote(run_id, &targets, winner.unwrap_or("tie"), tag)
    }

    /// Every vote, oldest first.
    pub fn votes(&self) -> Result<Vec<VoteRow>, LedgerError> {
        self.backend.votes()
    }

    /// Number of request rows.
    pub fn request_count(&self) -> Result<u64, LedgerError> {
        self.backend.request_count()
    }

    /// Make every committed row whole for outside readers (SQLite: copy the
    /// write-ahead log into the main file).
    pub fn checkpoint(&self) -> Result<(), LedgerError> {
        self.backend.flush()
    }
}

impl LedgerSink for Ledger {
    fn record(&self, meta: &RequestMeta, completion: &Completion) -> Result<(), LedgerError> {
        self.record_request(meta, completion).map(|_| ())
    }

    fn record_settling(
        &self,
        meta: &RequestMeta,
        completion: &Completion,
    ) -> Result<bool, LedgerError> {
        self.record_settling(meta, completion).map(|_| true)
    }

    fn record_async(
        &self,
        meta: &RequestMeta,
        completion: &Completion,
        settle: bool,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<bool, LedgerError>>> {
        let row = Box::new(self.new_request(meta, completion));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let place = self.place().to_string();
        self.writes
            .submit_async(WriteOp::Row { row, settle }, move |r| {
                let _ = tx.send(r.map(|_| settle).map_err(|r| refused_error(&place, r)));
            });
        Some(rx)
    }
}

/// How `quorum ledger` groups totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// By session id.
    Session,
    /// By local calendar day.
    Day,
    /// By provider.
    Provider,
    /// By `provider/model`.
    Model,
}

/// One line of totals.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TotalRow {
    /// Session id, day, provider or `provider/model`.
    pub key: String,
    /// Requests.
    pub requests: u64,
    /// Known cost in USD (unknown costs are not in it; see `unknown_cost`).
    pub cost_usd: f64,
    /// Requests whose cost is unknown.
    pub unknown_cost: u64,
    /// Requests whose cost was estimated from locally counted tokens.
    pub estimated: u64,
    /// Prompt tokens (cache hits excluded: nothing was billed).
    pub input_tokens: u64,
    /// Output tokens (cache hits excluded).
    pub output_tokens: u64,
    /// Prompt tokens read from a provider cache.
    pub cached_input_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
    /// Answers replayed from the local cache.
    pub cache_hits: u64,
    /// Failed or cancelled requests.
    pub failed: u64,
    /// First request (UTC).
    pub first: String,
    /// Last request (UTC).
    pub last: String,
}

/// One session.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SessionRow {
    /// Id.
    pub id: String,
    /// Label.
    pub label: Option<String>,
    /// Calling agent.
    pub source_agent: Option<String>,
    /// Started (UTC).
    pub created_at: String,
    /// Runs.
    pub runs: u64,
    /// Requests.
    pub requests: u64,
    /// Known cost.
    pub cost_usd: f64,
    /// Requests of unknown cost.
    pub unknown_cost: u64,
    /// Last activity (UTC).
    pub last: String,
}

/// One run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunRow {
    /// Run id.
    pub id: String,
    /// Session.
    pub session_id: Option<String>,
    /// Trace id.
    pub trace_id: Option<String>,
    /// Started (UTC).
    pub created_at: String,
    /// Targets, when the face noted them.
    pub targets: Vec<String>,
    /// Pre-send upper bound, when projected.
    pub projected_usd: Option<f64>,
    /// Prompt (absent with log_content = false).
    pub prompt: Option<String>,
}

/// One request, as stored.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[allow(missing_docs)]
pub struct RequestRow {
    pub id: i64,
    pub run_id: String,
    pub session_id: Option<String>,
    pub trace_id: Option<String>,
    pub source_agent: Option<String>,
    pub target: String,
    pub provider: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    pub usage_reported: bool,
    pub cost_usd: Option<f64>,
    pub cost_source: String,
    pub price_ref: Option<String>,
    pub ttft_ms: Option<f64>,
    pub latency_ms: Option<f64>,
    pub status: String,
    pub finish_reason: Option<String>,
    pub raw_finish_reason: Option<String>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub retries: u32,
    pub fell_back_from: Option<String>,
    pub cache_hit: bool,
    pub prompt: Option<String>,
    pub response: Option<String>,
    pub thinking: Option<String>,
    pub tool_calls: Option<serde_json::Value>,
    /// Names, sizes and hashes of what was attached (empty when nothing was).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentNote>,
    pub created_at: String,
}

/// A stored vote.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VoteRow {
    /// Run voted on.
    pub run_id: Option<String>,
    /// Targets compared.
    pub targets: Vec<String>,
    /// Winner; None is a tie.
    pub winner: Option<String>,
    /// Tag.
    pub tag: Option<String>,
    /// When (UTC).
    pub created_at: String,
}

/// What `ledger show ID` found.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Shown {
    /// A request.
    Request(Box<RequestRow>),
    /// A run and its requests.
    Run {
        /// The run.
        run: RunRow,
        /// Its requests.
        requests: Vec<RequestRow>,
    },
    /// A session, its runs and requests.
    Session {
        /// The session.
        session: SessionRow,
        /// Its runs.
        runs: Vec<RunRow>,
        /// Its requests.
        requests: Vec<RequestRow>,
    },
}

type Slot = Option<Result<Arc<Ledger>, LedgerError>>;

/// A ledger opened on a background thread, so opening it never delays a first frame.
/// Recording waits for the open to finish; [`BackgroundLedger::ready`] never waits.
#[derive(Clone)]
pub struct BackgroundLedger {
    cell: Arc<(Mutex<Slot>, Condvar)>,
    place: Arc<str>,
}

impl std::fmt::Debug for BackgroundLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackgroundLedger")
            .field("place", &self.place)
            .finish_non_exhaustive()
    }
}

impl BackgroundLedger {
    /// Start opening the SQLite ledger at `path` on a new thread.
    pub fn spawn(path: PathBuf, opts: LedgerOptions, pricing: Option<Pricing>) -> Self {
        Self::spawn_at(Location::File(path), opts, pricing, None)
    }

    /// Start opening the ledger at `loc` on a new thread, with a spool at `spool` for
    /// rows the database cannot take while it is away (see [`Ledger::with_spool`]).
    pub fn spawn_at(
        loc: Location,
        opts: LedgerOptions,
        pricing: Option<Pricing>,
        spool: Option<PathBuf>,
    ) -> Self {
        let place: Arc<str> = loc.place().into();
        let cell: Arc<(Mutex<Slot>, Condvar)> = Arc::new((Mutex::new(None), Condvar::new()));
        let c2 = cell.clone();
        let started = std::thread::Builder::new()
            .name("quorum-ledger".into())
            .spawn(move || {
                let r = match (&loc, &spool) {
                    // A shared database may be away at start.
                    (Location::Url(u), s) => Ledger::open_url(u, opts, s.as_deref()),
                    (_, Some(s)) => Ledger::open_at(&loc, opts).and_then(|l| l.with_spool(s)),
                    (_, None) => Ledger::open_at(&loc, opts),
                }
                .map(|l| match pricing {
                    Some(p) => l.with_pricing(p),
                    None => l,
                })
                .map(Arc::new);
                let (m, cv) = &*c2;
                if let Ok(mut g) = m.lock() {
                    *g = Some(r);
                }
                cv.notify_all();
            });
        if let Err(e) = started {
            if let Ok(mut g) = cell.0.lock() {
                *g = Some(Err(LedgerError::Io {
                    place: place.to_string(),
                    detail: format!("cannot start a thread: {e}"),
                }));
            }
        }
        BackgroundLedger { cell, place }
    }

    /// A ledger already open.
    pub fn ready_now(ledger: Arc<Ledger>) -> Self {
        let place: Arc<str> = ledger.place().into();
        BackgroundLedger {
            cell: Arc::new((Mutex::new(Some(Ok(ledger))), Condvar::new())),
            place,
        }
    }

    /// A ledger that failed to open with `e`.
    #[cfg(test)]
    pub(crate) fn failed(e: LedgerError) -> Self {
        BackgroundLedger {
            cell: Arc::new((Mutex::new(Some(Err(e))), Condvar::new())),
            place: "".into(),
        }
    }

    /// Start opening `ledger.sqlite3` in [`data_dir`].
    pub fn spawn_default(opts: LedgerOptions, pricing: Option<Pricing>) -> Self {
        match data_dir() {
            Some(d) => Self::spawn(d.join(LEDGER_FILE), opts, pricing),
            None => BackgroundLedger {
                cell: Arc::new((
                    Mutex::new(Some(Err(LedgerError::NoDataDir))),
                    Condvar::new(),
                )),
                place: "".into(),
            },
        }
    }

    /// The file, or the URL with its password masked.
    pub fn place(&self) -> &str {
        &self.place
    }

    fn poisoned(&self) -> LedgerError {
        LedgerError::Backend {
            place: self.place.to_string(),
            detail: "lock poisoned".into(),
        }
    }

    /// Wait for the open to finish.
    pub fn wait(&self) -> Result<Arc<Ledger>, LedgerError> {
        let (m, cv) = &*self.cell;
        let mut g = m.lock().map_err(|_| self.poisoned())?;
        while g.is_none() {
            g = cv.wait(g).map_err(|_| self.poisoned())?;
        }
        g.as_ref().cloned().unwrap_or_else(|| Err(self.poisoned()))
    }

    /// The ledger if the open has finished (never waits).
    pub fn ready(&self) -> Option<Result<Arc<Ledger>, LedgerError>> {
        self.cell.0.lock().ok().and_then(|g| g.clone())
    }
}

impl LedgerSink for BackgroundLedger {
    fn record(&self, meta: &RequestMeta, completion: &Completion) -> Result<(), LedgerError> {
        self.wait()?.record(meta, completion)
    }

    fn record_settling(
        &self,
        meta: &RequestMeta,
        completion: &Completion,
    ) -> Result<bool, LedgerError> {
        LedgerSink::record_settling(&*self.wait()?, meta, completion)
    }

    fn record_async(
        &self,
        meta: &RequestMeta,
        completion: &Completion,
        settle: bool,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<bool, LedgerError>>> {
        match self.ready() {
            Some(Ok(l)) => l.record_async(meta, completion, settle),
            _ => None,
        }
    }
}

/// Write spooled entries through `backend`, in order, a chunk per transaction.
fn replay(backend: &dyn Backend, sp: &spool::Spool) -> Result<usize, LedgerError> {
    sp.replay(256, |entries| {
        let ops: Vec<WriteOp> = entries
            .iter()
            .map(|e| match e {
                spool::Entry::Request(r) => WriteOp::Row {
                    row: r.clone(),
                    settle: false,
                },
                spool::Entry::Run {
                    id,
                    session_id,
                    trace_id,
                    targets,
                    projected_usd,
                    prompt,
                } => WriteOp::Book(BookOp::Begin(Box::new(RunEntry {
                    run_id: id.clone(),
                    session_id: session_id.clone(),
                    budget_session: session_id.clone(),
                    trace_id: trace_id.clone(),
                    targets: serde_json::to_string(targets).unwrap_or_else(|_| "[]".into()),
                    projected_usd: *projected_usd,
                    prompt: prompt.clone(),
                    gate: None,
                }))),
            })
            .collect();
        for r in backend.write(&ops)? {
            r.map_err(|r| refused_error(backend.place(), r))?;
        }
        Ok(())
    })
}

/// The write queue of a ledger over `backend`: with `spool` (a shared database, no
/// budget), writes it cannot take because it is away, and writes arriving while older
/// ones still wait there, go to the spool instead, in queue order.
fn write_queue(
    backend: &Arc<dyn Backend>,
    spool: Option<&Arc<spool::Spool>>,
    away: &Arc<Mutex<Option<String>>>,
    stop: &Arc<(Mutex<bool>, Condvar)>,
) -> Arc<batch::Writes> {
    let backend = backend.clone();
    let leaders = backend.concurrent_writes();
    let Some(sp) = spool.cloned() else {
        return Arc::new(
            batch::Queue::new(leaders, move |ops: Vec<WriteOp>| {
                batch::commit(&*backend, &ops)
            })
            .keyed(WriteOp::run_id),
        );
    };
    let (away, stop) = (away.clone(), stop.clone());
    // Two batches spooling at once may interleave; a replay does not mind the order
    // of a run's note and its rows (both are upserts of the run).
    Arc::new(
        batch::Queue::new(leaders, move |ops: Vec<WriteOp>| {
            let spooled = |entry: spool::Entry, why: Option<&LedgerError>| {
                sp.append(&entry).map_err(Refused::Ledger)?;
                if let Some(e) = why {
                    tracing::warn!("ledger: spooled a write to {} ({e})", sp.path().display());
                    set_away(&away, Some(e.to_string()));
                }
                stop.1.notify_all();
                Ok(0)
            };
            if sp.backlog() > 0 {
                // Older entries still wait: these queue behind them, in order (what cannot
                // be spooled goes to the database).
                let mut out: Vec<Option<Result<i64, Refused>>> = Vec::with_capacity(ops.len());
                let mut direct = Vec::new();
                for (i, op) in ops.iter().enumerate() {
                    match op.spool_entry() {
                        Some(entry) => out.push(Some(spooled(entry, None))),
                        None => {
                            out.push(None);
                            direct.push(i);
                        }
                    }
                }
                if !direct.is_empty() {
                    let d: Vec<WriteOp> = direct.iter().map(|&i| ops[i].clone()).collect();
                    for (i, r) in direct.into_iter().zip(batch::commit(&*backend, &d)) {
                        out[i] = Some(r);
                    }
                }
                return out.into_iter().map(|r| r.unwrap_or(Ok(0))).collect();
            }
            batch::commit(&*backend, &ops)
                .into_iter()
                .zip(&ops)
                .map(|(r, op)| match (r, op.spool_entry()) {
                    (Err(Refused::Ledger(e)), Some(entry)) if e.is_unavailable() => {
                        spooled(entry, Some(&e))
                    }
                    (r, _) => r,
                })
                .collect()
        })
        .keyed(WriteOp::run_id),
    )
}

fn set_away(away: &Mutex<Option<String>>, why: Option<String>) {
    if let Ok(mut g) = away.lock() {
        *g = why;
    }
}

/// Replay the spool whenever it holds something, until the ledger is dropped; while
/// the database is known away and nothing waits, check now and then whether it is
/// back (the first call that reaches it also makes or migrates the schema). Without
/// a spool, only watch until the database is back.
fn replay_loop(
    backend: &dyn Backend,
    sp: Option<&spool::Spool>,
    stop: &(Mutex<bool>, Condvar),
    away: &Mutex<Option<String>>,
) {
    let (m, cv) = stop;
    let mut wait = std::time::Duration::from_millis(200);
    let is_away = || away.lock().map(|g| g.is_some()).unwrap_or(false);
    // The last failure that was not the database being away (a setting to fix),
    // said once.
    let mut said: Option<String> = None;
    loop {
        {
            let Ok(g) = m.lock() else { return };
            if *g {
                return;
            }
            let Ok((g, _)) = cv.wait_timeout(g, wait) else {
                return;
            };
            if *g {
                return;
            }
        }
        let backlog = sp.map_or(0, |sp| sp.backlog());
        let outcome = match sp {
            Some(sp) if backlog > 0 => replay(backend, sp),
            _ if is_away() => backend.check_writable().map(|()| 0),
            // Nothing to watch without a spool once the database is back.
            None => return,
            Some(_) => {
                wait = std::time::Duration::from_millis(500);
                continue;
            }
        };
        match outcome {
            Ok(n) => {
                if is_away() {
                    tracing::warn!("ledger: the database {} is back", backend.place());
                    set_away(away, None);
                }
                if n > 0 {
                    tracing::info!(
                        "ledger: replayed {n} spooled row(s) into {}",
                        backend.place()
                    );
                }
                said = None;
                wait = std::time::Duration::from_millis(200);
            }
            Err(e) => {
                if e.is_unavailable() {
                    tracing::debug!("ledger: the database is still away, will retry: {e}");
                } else if said.as_deref() != Some(&e.to_string()) {
                    // Not a database that is away: it will not pass by waiting.
                    match sp {
                        Some(sp) => tracing::error!(
                            "ledger: cannot write the {backlog} spooled row(s) in {}: {e}",
                            sp.path().display()
                        ),
                        None => tracing::error!("ledger: {e}"),
                    }
                    said = Some(e.to_string());
                }
                wait = (wait * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }
}

/// The op that settles run `run_id`.
fn settle_op(run_id: &str) -> WriteOp {
    WriteOp::Book(BookOp::Settle(run_id.to_string()))
}

/// The handler of a settlement nobody waits for: a failure is logged.
fn log_settle_failure(run_id: &str) -> impl FnOnce(Result<i64, Refused>) + Send + 'static {
    let id = run_id.to_string();
    move |r| match r {
        Ok(_) => {}
        Err(Refused::Ledger(e)) => tracing::error!("ledger: cannot settle run {id}: {e}"),
        Err(Refused::Budget(b)) => tracing::error!("ledger: cannot settle run {id}: {b}"),
    }
}

/// Whether process `pid` (on this machine) still runs.
#[cfg(unix)]
pub(crate) fn process_alive(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence only; EPERM means it exists under another user.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether process `pid` still runs (always assumed elsewhere).
#[cfg(not(unix))]
pub(crate) fn process_alive(_pid: i64) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_written_column_has_a_value() {
        let row = NewRequest::build(
            &RequestMeta::default(),
            &Completion::default(),
            LedgerOptions::default(),
            None,
            1000,
        );
        let names: Vec<&str> = row.values.iter().map(|(n, _)| n.as_str()).collect();
        let written: Vec<&str> = request_written_columns().map(|c| c.name).collect();
        assert_eq!(names, written);
    }

    #[test]
    fn a_row_reads_back_as_the_completion_it_was() {
        let c = Completion {
            provider: "openai".into(),
            model: "m".into(),
            text: "hi".into(),
            finish_reason: FinishReason::Length,
            cost_source: CostSource::Estimated,
            cost_usd: Some(0.5),
            latency_ms: 3.0,
            ..Default::default()
        };
        let row = RequestRow {
            id: 1,
            run_id: "r".into(),
            session_id: None,
            trace_id: None,
            source_agent: None,
            target: "openai/m".into(),
            provider: "openai".into(),
            model: "m".into(),
            input_tokens: 0,
            output_tokens: 0,
            cached_input_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            usage_reported: false,
            cost_usd: Some(0.5),
            cost_source: "estimated".into(),
            price_ref: None,
            ttft_ms: None,
            latency_ms: Some(3.0),
            status: "ok".into(),
            finish_reason: Some("length".into()),
            raw_finish_reason: None,
            error_kind: None,
            error_message: None,
            retries: 0,
            fell_back_from: None,
            cache_hit: false,
            prompt: None,
            response: Some("hi".into()),
            thinking: None,
            tool_calls: None,
            attachments: Vec::new(),
            created_at: "".into(),
        };
        let back = row.to_completion();
        assert_eq!(back.text, c.text);
        assert_eq!(back.finish_reason, c.finish_reason);
        assert_eq!(back.cost_source, c.cost_source);
        assert_eq!(back.cost_usd, c.cost_usd);
    }
}
