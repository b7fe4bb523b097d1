//! The ledger of every request, in SQLite (`ledger.sqlite3` in the data dir).
//!
//! Durability is the point: a request's row is committed (WAL, `synchronous=FULL`)
//! before [`LedgerSink::record`] returns, and the engine calls it before any face hears
//! that the request finished, so a crash or `kill -9` never loses a finished request.
//! Several processes may write one ledger at once: writes take the lock up front
//! (`BEGIN IMMEDIATE`) and wait for each other (`busy_timeout`).
//!
//! Users may query the file with `sqlite3`; the schema is versioned with `user_version`
//! and migrated forward on open. API keys are never written: nothing here sees them.
//!
//! Opening costs a few milliseconds of disk work, so faces that care about their first
//! frame use [`BackgroundLedger`], which opens on its own thread.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use super::cost::Pricing;
use super::error::EngineError;
use super::event::Completion;
use super::files::{create_private_dir, data_dir, touch_private};

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
    /// The prompt (last user message).
    pub prompt: String,
}

/// Where finished requests are recorded.
pub trait LedgerSink: Send + Sync {
    /// Record one finished or failed request. Must be durable when it returns.
    fn record(&self, meta: &RequestMeta, completion: &Completion) -> Result<(), String>;
}

/// File name of the ledger inside the data dir.
pub const LEDGER_FILE: &str = "ledger.sqlite3";

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
    ]
}

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

/// The caps a run must fit, with its bound.
#[derive(Debug, Clone, Copy)]
pub struct Gate<'a> {
    /// The caps.
    pub budget: &'a super::budget::Budget,
    /// The run's projection.
    pub projection: &'a super::budget::Projection,
}

/// Why [`SqliteLedger::begin_run`] did not note the run.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// A cap would be crossed.
    Budget(super::budget::Refusal),
    /// The ledger could not be written.
    Ledger(String),
}

/// The most bytes one content field (prompt, response, thinking, tool calls) may take:
/// a quarter of SQLite's length limit, less room for the rest of the row. A longer
/// answer is stored cut, so its cost and tokens are still recorded.
fn content_cap(conn: &Connection) -> usize {
    let max = conn
        .limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH)
        .unwrap_or(1_000_000_000)
        .max(0) as usize;
    (max.saturating_sub(64 * 1024) / 4).max(256)
}

/// `s`, cut at a character boundary to fit `cap` bytes with a note saying so.
fn clip(s: &str, cap: usize) -> std::borrow::Cow<'_, str> {
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

/// Runs holding a reservation.
const OPEN: &str = "r.settled_at IS NULL AND r.reserved_usd > 0";
/// What a run still holds: its reservation less what its finished requests cost.
const OUTSTANDING: &str = "MAX(r.reserved_usd - COALESCE((SELECT SUM(q.cost_usd) FROM requests q WHERE q.run_id = r.id), 0), 0)";

fn spend_in(conn: &Connection, session: Option<&str>) -> rusqlite::Result<Spend> {
    let held: f64 = conn.query_row(
        &format!("SELECT COALESCE(SUM({OUTSTANDING}), 0) FROM runs r WHERE {OPEN}"),
        [],
        |r| r.get(0),
    )?;
    let today: f64 = conn.query_row(
        "SELECT COALESCE(SUM(cost_usd), 0) FROM requests
         WHERE created_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', 'localtime', 'start of day', 'utc')",
        [],
        |r| r.get(0),
    )?;
    let session_usd: f64 = match session {
        Some(s) => {
            let done: f64 = conn.query_row(
                "SELECT COALESCE(SUM(q.cost_usd), 0) FROM requests q
                 WHERE q.run_id IN (SELECT id FROM runs WHERE budget_session = ?1)
                    OR (q.session_id = ?1 AND q.run_id NOT IN
                        (SELECT id FROM runs WHERE budget_session IS NOT NULL))",
                [s],
                |r| r.get(0),
            )?;
            let held: f64 = conn.query_row(
                &format!(
                    "SELECT COALESCE(SUM({OUTSTANDING}), 0) FROM runs r WHERE {OPEN} AND r.budget_session = ?1"
                ),
                [s],
                |r| r.get(0),
            )?;
            done + held
        }
        None => 0.0,
    };
    Ok(Spend {
        session_usd,
        today_usd: today + held,
    })
}

/// Settle the reservations of processes that are gone (a crash, a kill -9).
fn expire_dead(conn: &Connection) -> rusqlite::Result<()> {
    let me = std::process::id() as i64;
    let pids: Vec<i64> = conn
        .prepare(&format!(
            "SELECT DISTINCT pid FROM runs r WHERE {OPEN} AND pid IS NOT NULL AND pid <> ?1"
        ))?
        .query_map([me], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for pid in pids {
        if !process_alive(pid) {
            conn.execute(
                &format!(
                    "UPDATE runs SET settled_at = {NOW} WHERE pid = ?1 AND settled_at IS NULL"
                ),
                [pid],
            )?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn process_alive(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence only; EPERM means it exists under another user.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(not(unix))]
fn process_alive(_pid: i64) -> bool {
    true
}

/// The SQLite ledger.
pub struct SqliteLedger {
    conn: Mutex<Connection>,
    path: PathBuf,
    opts: LedgerOptions,
    pricing: Option<Pricing>,
}

impl std::fmt::Debug for SqliteLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteLedger")
            .field("path", &self.path)
            .field("log_content", &self.opts.log_content)
            .finish()
    }
}

fn sql_err(e: rusqlite::Error) -> String {
    format!("ledger: {e}")
}

impl SqliteLedger {
    /// Open (creating and migrating as needed) the ledger at `path`.
    pub fn open(path: &Path, opts: LedgerOptions) -> Result<SqliteLedger, String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        touch_private(path)?;
        let conn = Connection::open(path).map_err(sql_err)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(sql_err)?;
        // Switching to WAL needs a moment of exclusive access: retry while another
        // process holds the file.
        let mut tries = 0;
        loop {
            match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
                Ok(m) if m.eq_ignore_ascii_case("wal") => break,
                Ok(m) => return Err(format!("ledger: cannot use WAL (journal_mode={m})")),
                Err(_) if tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(sql_err(e)),
            }
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql_err)?;
        // No checkpoint when the connection closes: a one-shot `quorum ask` would
        // otherwise pay two more fsyncs (WAL and database) at every exit, and
        // recreate the WAL on the next start. The WAL stays beside the file
        // (same 0600 mode) and is checkpointed automatically every 1000 pages.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .map_err(sql_err)?;
        let mut l = SqliteLedger {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            opts,
            pricing: None,
        };
        l.migrate()?;
        Ok(l)
    }

    /// Open `ledger.sqlite3` in `dir` (created 0700 if missing).
    pub fn open_in(dir: &Path, opts: LedgerOptions) -> Result<SqliteLedger, String> {
        Self::open(&dir.join(LEDGER_FILE), opts)
    }

    /// Open the ledger in [`data_dir`].
    pub fn open_default(opts: LedgerOptions) -> Result<SqliteLedger, String> {
        let dir = data_dir().ok_or("no data directory: set QUORUM_DATA_DIR")?;
        Self::open_in(&dir, opts)
    }

    /// Keep a copy of each price row used, so a ledger row stays explainable even after
    /// the price table changes.
    pub fn with_pricing(mut self, pricing: Pricing) -> Self {
        self.pricing = Some(pricing);
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&mut self) -> Result<(), String> {
        let migs = migrations();
        let conn = self.conn.get_mut().map_err(|_| "ledger: lock poisoned")?;
        loop {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql_err)?;
            let v: i64 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(sql_err)?;
            if v as usize >= migs.len() {
                if v as usize > migs.len() {
                    return Err(format!(
                        "ledger: {} has schema version {v}, newer than this quorum knows ({}); upgrade quorum",
                        self.path.display(),
                        migs.len()
                    ));
                }
                tx.commit().map_err(sql_err)?;
                return Ok(());
            }
            tx.execute_batch(&migs[v as usize]).map_err(sql_err)?;
            tx.pragma_update(None, "user_version", v + 1)
                .map_err(sql_err)?;
            tx.commit().map_err(sql_err)?;
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, String> {
        self.conn
            .lock()
            .map_err(|_| "ledger: lock poisoned".to_string())
    }

    /// Whether the file takes a write now: rewrites its schema version in a committed
    /// transaction (the cheapest real write).
    pub fn check_writable(&self) -> Result<(), String> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        let v: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql_err)?;
        tx.pragma_update(None, "user_version", v).map_err(sql_err)?;
        tx.commit().map_err(sql_err)
    }

    /// Lower SQLite's length limit (bytes per string and per row) on this connection.
    pub fn set_length_limit(&self, bytes: i32) -> Result<(), String> {
        self.lock()?
            .set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, bytes)
            .map(|_| ())
            .map_err(sql_err)
    }

    /// The schema version of the open file.
    pub fn version(&self) -> Result<i64, String> {
        self.lock()?
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql_err)
    }

    /// Record one request; returns its row id. Committed when this returns.
    pub fn record_request(&self, meta: &RequestMeta, c: &Completion) -> Result<i64, String> {
        let content = self.opts.log_content;
        let price_row = c.price_ref.as_deref().and_then(|id| {
            let p = self.pricing.as_ref()?.row_by_id(id)?;
            serde_json::to_string(p).ok()
        });
        let status = match &c.error {
            None => "ok",
            Some(EngineError::Cancelled) => "cancelled",
            Some(_) => "error",
        };
        let tool_calls = if content && !c.tool_calls.is_empty() {
            serde_json::to_string(
                &c.tool_calls
                    .iter()
                    .map(|t| serde_json::json!({"id": t.id, "name": t.name, "arguments": t.arguments_json()}))
                    .collect::<Vec<_>>(),
            )
            .ok()
        } else {
            None
        };
        let mut conn = self.lock()?;
        let cap = content_cap(&conn);
        let (prompt, text, thinking) = (
            clip(&meta.prompt, cap),
            clip(&c.text, cap),
            clip(&c.thinking, cap),
        );
        let tool_calls = tool_calls.map(|t| clip(&t, cap).into_owned());
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        if let Some(s) = &meta.session_id {
            tx.execute(
                "INSERT OR IGNORE INTO sessions (id, source_agent) VALUES (?1, ?2)",
                params![s, meta.source_agent],
            )
            .map_err(sql_err)?;
        }
        tx.execute(
            "INSERT OR IGNORE INTO runs (id, session_id, trace_id, prompt) VALUES (?1, ?2, ?3, ?4)",
            params![
                meta.run_id,
                meta.session_id,
                meta.trace_id,
                content.then_some(meta.prompt.as_str())
            ],
        )
        .map_err(sql_err)?;
        if let (Some(id), Some(row)) = (&c.price_ref, &price_row) {
            tx.execute(
                "INSERT OR IGNORE INTO prices (id, row) VALUES (?1, ?2)",
                params![id, row],
            )
            .map_err(sql_err)?;
        }
        let u = &c.usage;
        tx.execute(
            "INSERT INTO requests (
                run_id, session_id, trace_id, source_agent, target, provider, model,
                input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
                reasoning_tokens, usage_reported, cost_usd, cost_source, price_ref,
                ttft_ms, latency_ms, status, finish_reason, raw_finish_reason,
                error_kind, error_message, retries, fell_back_from, cache_hit,
                prompt, response, thinking, tool_calls
            ) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                      ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30)",
            params![
                meta.run_id,
                meta.session_id,
                meta.trace_id,
                meta.source_agent,
                meta.target,
                c.provider,
                c.model,
                u.input_tokens as i64,
                u.output_tokens as i64,
                u.cached_input_tokens as i64,
                u.cache_creation_input_tokens as i64,
                u.reasoning_tokens as i64,
                c.usage_reported,
                c.cost_usd,
                c.cost_source.as_str(),
                c.price_ref,
                c.ttft_ms,
                c.latency_ms,
                status,
                c.finish_reason.as_str(),
                c.raw_finish_reason,
                c.error.as_ref().map(|e| e.kind()),
                c.error.as_ref().map(|e| e.to_string()),
                c.retries,
                c.fell_back_from,
                c.cached,
                content.then_some(&*prompt),
                content.then_some(&*text),
                (content && !c.thinking.is_empty()).then_some(&*thinking),
                tool_calls,
            ],
        )
        .map_err(sql_err)?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(sql_err)?;
        Ok(id)
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
    ) -> Result<(), String> {
        let targets = serde_json::to_string(targets).map_err(|e| e.to_string())?;
        let content = self.opts.log_content;
        let mut conn = self.lock()?;
        // The run's row is bookkeeping, written before its requests are sent: it
        // is committed without its own fsync (synchronous=NORMAL; WAL keeps that
        // safe from corruption) and becomes durable with the fsync of the first
        // request row after it, which stays synchronous=FULL. That keeps a
        // durable write off the path to the first token.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql_err)?;
        let r = Self::insert_run(
            &mut conn,
            run_id,
            session_id,
            trace_id,
            &targets,
            projected_usd,
            content.then_some(prompt),
        );
        let full = conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(sql_err);
        r.and(full)
    }

    fn insert_run(
        conn: &mut Connection,
        run_id: &str,
        session_id: Option<&str>,
        trace_id: Option<&str>,
        targets: &str,
        projected_usd: Option<f64>,
        prompt: Option<&str>,
    ) -> Result<(), String> {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        if let Some(s) = session_id {
            tx.execute("INSERT OR IGNORE INTO sessions (id) VALUES (?1)", [s])
                .map_err(sql_err)?;
        }
        tx.execute(
            "INSERT INTO runs (id, session_id, trace_id, targets, projected_usd, prompt)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(id) DO UPDATE SET targets = excluded.targets,
                 projected_usd = excluded.projected_usd",
            params![run_id, session_id, trace_id, targets, projected_usd, prompt],
        )
        .map_err(sql_err)?;
        tx.commit().map_err(sql_err)
    }

    /// Start (or rename) a session.
    pub fn start_session(
        &self,
        id: &str,
        label: Option<&str>,
        source_agent: Option<&str>,
    ) -> Result<(), String> {
        self.lock()?
            .execute(
                "INSERT INTO sessions (id, label, source_agent) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET label = COALESCE(excluded.label, label)",
                params![id, label, source_agent],
            )
            .map(|_| ())
            .map_err(sql_err)
    }

    /// What was spent today (local calendar day) and in `session`, counting what runs in
    /// flight still hold (see [`SqliteLedger::begin_run`]). Unknown costs count as nothing
    /// here: they are shown as unknown elsewhere.
    pub fn spend(&self, session: Option<&str>) -> Result<Spend, String> {
        let conn = self.lock()?;
        spend_in(&conn, session).map_err(sql_err)
    }

    /// Note a run before anything is sent, and when `gate` is given reserve its bound in
    /// the same `BEGIN IMMEDIATE` transaction that checks the caps: concurrent runs, in
    /// this process or another one sharing the file, can never together cross a cap.
    /// The reservation holds until [`SqliteLedger::settle_run`].
    pub fn begin_run(&self, note: &RunNote<'_>, gate: Option<Gate<'_>>) -> Result<(), Refused> {
        let targets =
            serde_json::to_string(note.targets).map_err(|e| Refused::Ledger(e.to_string()))?;
        let content = self.opts.log_content;
        let mut conn = self.lock().map_err(Refused::Ledger)?;
        // Bookkeeping before the send: atomic and consistent (WAL) without its own
        // fsync; it becomes durable with the first request row's.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| Refused::Ledger(sql_err(e)))?;
        let r = (|| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| Refused::Ledger(sql_err(e)))?;
            let sql = |e| Refused::Ledger(sql_err(e));
            let cap = content_cap(&tx);
            let mut reserved = None;
            if let Some(g) = gate {
                expire_dead(&tx).map_err(sql)?;
                let spend = spend_in(&tx, note.budget_session).map_err(sql)?;
                g.budget
                    .check(spend, g.projection)
                    .map_err(Refused::Budget)?;
                reserved = Some(g.projection.known_usd());
            }
            if let Some(s) = note.session_id {
                tx.execute("INSERT OR IGNORE INTO sessions (id) VALUES (?1)", [s])
                    .map_err(sql)?;
            }
            tx.execute(
                "INSERT INTO runs (id, session_id, trace_id, targets, projected_usd, prompt,
                                   reserved_usd, budget_session, pid)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(id) DO UPDATE SET targets = excluded.targets,
                     projected_usd = excluded.projected_usd,
                     reserved_usd = excluded.reserved_usd,
                     budget_session = excluded.budget_session, pid = excluded.pid",
                params![
                    note.run_id,
                    note.session_id,
                    note.trace_id,
                    targets,
                    note.projected_usd,
                    content.then(|| clip(note.prompt, cap)),
                    reserved,
                    note.budget_session.or(note.session_id),
                    std::process::id(),
                ],
            )
            .map_err(sql)?;
            tx.commit().map_err(sql)
        })();
        let full = conn.pragma_update(None, "synchronous", "FULL");
        r?;
        full.map_err(|e| Refused::Ledger(sql_err(e)))
    }

    /// End a run's reservation: what it really cost is in its request rows now (a
    /// failed or cancelled request costs what it used, often nothing).
    pub fn settle_run(&self, run_id: &str) -> Result<(), String> {
        self.lock()?
            .execute(
                &format!("UPDATE runs SET settled_at = {NOW} WHERE id = ?1 AND settled_at IS NULL"),
                [run_id],
            )
            .map(|_| ())
            .map_err(sql_err)
    }

    /// Runs still holding a reservation (for tests and `llm.health`).
    pub fn open_reservations(&self) -> Result<(u64, f64), String> {
        self.lock()?
            .query_row(
                &format!(
                    "SELECT COUNT(*), COALESCE(SUM({OUTSTANDING}), 0) FROM runs r WHERE {OPEN}"
                ),
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .map_err(sql_err)
    }

    /// Totals grouped by `by`, most recent first.
    pub fn totals(&self, by: GroupBy) -> Result<Vec<TotalRow>, String> {
        let key = match by {
            GroupBy::Session => "COALESCE(session_id, '(none)')",
            GroupBy::Day => "date(created_at, 'localtime')",
            GroupBy::Provider => "provider",
            GroupBy::Model => "provider || '/' || model",
        };
        let sql = format!(
            "SELECT {key} AS k, COUNT(*), COALESCE(SUM(cost_usd), 0),
                    SUM(cost_usd IS NULL), SUM(cost_source = 'estimated'),
                    SUM(CASE WHEN cache_hit = 0 THEN input_tokens ELSE 0 END),
                    SUM(CASE WHEN cache_hit = 0 THEN output_tokens ELSE 0 END),
                    SUM(CASE WHEN cache_hit = 0 THEN cached_input_tokens ELSE 0 END),
                    SUM(CASE WHEN cache_hit = 0 THEN reasoning_tokens ELSE 0 END),
                    SUM(cache_hit), SUM(status <> 'ok'), MIN(created_at), MAX(created_at)
             FROM requests GROUP BY k ORDER BY MAX(created_at) DESC"
        );
        let conn = self.lock()?;
        let mut st = conn.prepare(&sql).map_err(sql_err)?;
        let rows = st
            .query_map([], |r| {
                Ok(TotalRow {
                    key: r.get(0)?,
                    requests: r.get(1)?,
                    cost_usd: r.get(2)?,
                    unknown_cost: r.get(3)?,
                    estimated: r.get(4)?,
                    input_tokens: r.get(5)?,
                    output_tokens: r.get(6)?,
                    cached_input_tokens: r.get(7)?,
                    reasoning_tokens: r.get(8)?,
                    cache_hits: r.get(9)?,
                    failed: r.get(10)?,
                    first: r.get(11)?,
                    last: r.get(12)?,
                })
            })
            .map_err(sql_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sql_err)
    }

    /// Sessions, most recent first.
    pub fn sessions(&self, limit: usize) -> Result<Vec<SessionRow>, String> {
        let conn = self.lock()?;
        let mut st = conn
            .prepare(
                "SELECT s.id, s.label, s.source_agent, s.created_at,
                        COUNT(DISTINCT r.run_id), COUNT(r.id), COALESCE(SUM(r.cost_usd), 0),
                        COALESCE(SUM(r.cost_usd IS NULL AND r.id IS NOT NULL), 0),
                        COALESCE(MAX(r.created_at), s.created_at) AS last
                 FROM sessions s LEFT JOIN requests r ON r.session_id = s.id
                 GROUP BY s.id ORDER BY last DESC LIMIT ?1",
            )
            .map_err(sql_err)?;
        let rows = st
            .query_map([limit as i64], |r| {
                Ok(SessionRow {
                    id: r.get(0)?,
                    label: r.get(1)?,
                    source_agent: r.get(2)?,
                    created_at: r.get(3)?,
                    runs: r.get(4)?,
                    requests: r.get(5)?,
                    cost_usd: r.get(6)?,
                    unknown_cost: r.get(7)?,
                    last: r.get(8)?,
                })
            })
            .map_err(sql_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sql_err)
    }

    fn requests_where(&self, cond: &str, arg: &str) -> Result<Vec<RequestRow>, String> {
        let conn = self.lock()?;
        let sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE {cond} ORDER BY id");
        let mut st = conn.prepare(&sql).map_err(sql_err)?;
        let rows = st.query_map([arg], request_row).map_err(sql_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sql_err)
    }

    /// Every request of a run, in order.
    pub fn run_requests(&self, run_id: &str) -> Result<Vec<RequestRow>, String> {
        self.requests_where("run_id = ?1", run_id)
    }

    /// The most recent requests, newest first.
    pub fn recent(&self, limit: usize) -> Result<Vec<RequestRow>, String> {
        let conn = self.lock()?;
        let sql = format!("SELECT {REQUEST_COLUMNS} FROM requests ORDER BY id DESC LIMIT ?1");
        let mut st = conn.prepare(&sql).map_err(sql_err)?;
        let rows = st.query_map([limit as i64], request_row).map_err(sql_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sql_err)
    }

    /// Look up `id` as a request id, a run id, then a session id.
    pub fn show(&self, id: &str) -> Result<Option<Shown>, String> {
        if let Ok(n) = id.parse::<i64>() {
            let r = self.requests_where("id = ?1", &n.to_string())?;
            if let Some(r) = r.into_iter().next() {
                return Ok(Some(Shown::Request(Box::new(r))));
            }
        }
        let run = {
            let conn = self.lock()?;
            conn.query_row(
                "SELECT id, session_id, trace_id, created_at, targets, projected_usd, prompt
                 FROM runs WHERE id = ?1",
                [id],
                run_row,
            )
            .optional()
            .map_err(sql_err)?
        };
        if let Some(run) = run {
            let requests = self.run_requests(id)?;
            return Ok(Some(Shown::Run { run, requests }));
        }
        let session = self
            .sessions(usize::MAX >> 1)?
            .into_iter()
            .find(|s| s.id == id);
        if let Some(session) = session {
            let runs = {
                let conn = self.lock()?;
                let mut st = conn
                    .prepare(
                        "SELECT id, session_id, trace_id, created_at, targets, projected_usd, prompt
                         FROM runs WHERE session_id = ?1 ORDER BY created_at",
                    )
                    .map_err(sql_err)?;
                let rows = st.query_map([id], run_row).map_err(sql_err)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(sql_err)?
            };
            let requests = self.requests_where("session_id = ?1", id)?;
            return Ok(Some(Shown::Session {
                session,
                runs,
                requests,
            }));
        }
        Ok(None)
    }

    /// The stored copy of a price row (as JSON), by id.
    pub fn price_row(&self, id: &str) -> Result<Option<serde_json::Value>, String> {
        let conn = self.lock()?;
        let s: Option<String> = conn
            .query_row("SELECT row FROM prices WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(sql_err)?;
        Ok(s.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Record a vote on a run: the winning target, or None for a tie.
    pub fn record_vote(
        &self,
        run_id: Option<&str>,
        targets: &[String],
        winner: Option<&str>,
        tag: Option<&str>,
    ) -> Result<(), String> {
        let targets = serde_json::to_string(targets).map_err(|e| e.to_string())?;
        self.lock()?
            .execute(
                "INSERT INTO votes (run_id, targets, winner, tag) VALUES (?1, ?2, ?3, ?4)",
                params![run_id, targets, winner.unwrap_or("tie"), tag],
            )
            .map(|_| ())
            .map_err(sql_err)
    }

    /// Every vote, oldest first.
    pub fn votes(&self) -> Result<Vec<VoteRow>, String> {
        let conn = self.lock()?;
        let mut st = conn
            .prepare("SELECT run_id, targets, winner, tag, created_at FROM votes ORDER BY id")
            .map_err(sql_err)?;
        let rows = st
            .query_map([], |r| {
                let targets: Option<String> = r.get(1)?;
                let winner: String = r.get(2)?;
                Ok(VoteRow {
                    run_id: r.get(0)?,
                    targets: targets
                        .and_then(|t| serde_json::from_str(&t).ok())
                        .unwrap_or_default(),
                    winner: (winner != "tie").then_some(winner),
                    tag: r.get(3)?,
                    created_at: r.get(4)?,
                })
            })
            .map_err(sql_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sql_err)
    }

    /// Number of request rows.
    pub fn request_count(&self) -> Result<u64, String> {
        self.lock()?
            .query_row("SELECT COUNT(*) FROM requests", [], |r| r.get(0))
            .map_err(sql_err)
    }

    /// Copy the write-ahead log into the main file (every row is already
    /// committed; this leaves the file whole for readers that copy it).
    pub fn checkpoint(&self) -> Result<(), String> {
        self.lock()?
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(sql_err)
    }
}

impl LedgerSink for SqliteLedger {
    fn record(&self, meta: &RequestMeta, completion: &Completion) -> Result<(), String> {
        self.record_request(meta, completion).map(|_| ())
    }
}

const REQUEST_COLUMNS: &str =
    "id, run_id, session_id, trace_id, source_agent, target, provider, model,
    input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens,
    usage_reported, cost_usd, cost_source, price_ref, ttft_ms, latency_ms, status,
    finish_reason, raw_finish_reason, error_kind, error_message, retries, fell_back_from,
    cache_hit, prompt, response, thinking, tool_calls, created_at";

fn request_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RequestRow> {
    Ok(RequestRow {
        id: r.get(0)?,
        run_id: r.get(1)?,
        session_id: r.get(2)?,
        trace_id: r.get(3)?,
        source_agent: r.get(4)?,
        target: r.get(5)?,
        provider: r.get(6)?,
        model: r.get(7)?,
        input_tokens: r.get(8)?,
        output_tokens: r.get(9)?,
        cached_input_tokens: r.get(10)?,
        cache_write_tokens: r.get(11)?,
        reasoning_tokens: r.get(12)?,
        usage_reported: r.get(13)?,
        cost_usd: r.get(14)?,
        cost_source: r.get(15)?,
        price_ref: r.get(16)?,
        ttft_ms: r.get(17)?,
        latency_ms: r.get(18)?,
        status: r.get(19)?,
        finish_reason: r.get(20)?,
        raw_finish_reason: r.get(21)?,
        error_kind: r.get(22)?,
        error_message: r.get(23)?,
        retries: r.get(24)?,
        fell_back_from: r.get(25)?,
        cache_hit: r.get(26)?,
        prompt: r.get(27)?,
        response: r.get(28)?,
        thinking: r.get(29)?,
        tool_calls: r
            .get::<_, Option<String>>(30)?
            .and_then(|t| serde_json::from_str(&t).ok()),
        created_at: r.get(31)?,
    })
}

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    let targets: Option<String> = r.get(4)?;
    Ok(RunRow {
        id: r.get(0)?,
        session_id: r.get(1)?,
        trace_id: r.get(2)?,
        created_at: r.get(3)?,
        targets: targets
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default(),
        projected_usd: r.get(5)?,
        prompt: r.get(6)?,
    })
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

type Slot = Option<Result<Arc<SqliteLedger>, String>>;

/// A ledger opened on a background thread, so opening it never delays a first frame.
/// Recording waits for the open to finish; [`BackgroundLedger::ready`] never waits.
#[derive(Clone)]
pub struct BackgroundLedger {
    cell: Arc<(Mutex<Slot>, Condvar)>,
}

impl std::fmt::Debug for BackgroundLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackgroundLedger").finish_non_exhaustive()
    }
}

impl BackgroundLedger {
    /// Start opening the ledger at `path` on a new thread.
    pub fn spawn(path: PathBuf, opts: LedgerOptions, pricing: Option<Pricing>) -> Self {
        let cell: Arc<(Mutex<Slot>, Condvar)> = Arc::new((Mutex::new(None), Condvar::new()));
        let c2 = cell.clone();
        let started = std::thread::Builder::new()
            .name("quorum-ledger".into())
            .spawn(move || {
                let r = SqliteLedger::open(&path, opts).map(|l| match pricing {
                    Some(p) => Arc::new(l.with_pricing(p)),
                    None => Arc::new(l),
                });
                let (m, cv) = &*c2;
                if let Ok(mut g) = m.lock() {
                    *g = Some(r);
                }
                cv.notify_all();
            });
        if let Err(e) = started {
            if let Ok(mut g) = cell.0.lock() {
                *g = Some(Err(format!("ledger: cannot start thread: {e}")));
            }
        }
        BackgroundLedger { cell }
    }

    /// Start opening `ledger.sqlite3` in [`data_dir`].
    pub fn spawn_default(opts: LedgerOptions, pricing: Option<Pricing>) -> Self {
        match data_dir() {
            Some(d) => Self::spawn(d.join(LEDGER_FILE), opts, pricing),
            None => BackgroundLedger {
                cell: Arc::new((
                    Mutex::new(Some(Err("no data directory: set QUORUM_DATA_DIR".into()))),
                    Condvar::new(),
                )),
            },
        }
    }

    /// Wait for the open to finish.
    pub fn wait(&self) -> Result<Arc<SqliteLedger>, String> {
        let (m, cv) = &*self.cell;
        let mut g = m.lock().map_err(|_| "ledger: lock poisoned")?;
        while g.is_none() {
            g = cv.wait(g).map_err(|_| "ledger: lock poisoned")?;
        }
        g.as_ref()
            .cloned()
            .unwrap_or_else(|| Err("ledger: not open".into()))
    }

    /// The ledger if the open has finished (never waits).
    pub fn ready(&self) -> Option<Result<Arc<SqliteLedger>, String>> {
        self.cell.0.lock().ok().and_then(|g| g.clone())
    }
}

impl LedgerSink for BackgroundLedger {
    fn record(&self, meta: &RequestMeta, completion: &Completion) -> Result<(), String> {
        self.wait()?.record(meta, completion)
    }
}
