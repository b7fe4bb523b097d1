//! The SQLite backend: one file, WAL, `synchronous=FULL` for request rows, writers
//! that take the lock up front (`BEGIN IMMEDIATE`) and wait for each other
//! (`busy_timeout`). Users may query the file with `sqlite3`; the schema version is
//! `user_version`.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::types::ToSqlOutput;
use rusqlite::{
    params, params_from_iter, Connection, ErrorCode, OptionalExtension, TransactionBehavior,
};

use super::{
    content_cap_for, migrations, request_select_list, request_written_columns, Backend,
    BackendKind, EvalCaseRow, EvalRunRow, Gate, GroupBy, LedgerError, NewRequest, Refused,
    RequestFilter, RequestRow, RowRead, RunFilter, RunNote, RunRow, SessionRow, Spend, TotalRow,
    Value, VoteRow, NOW,
};
use crate::engine::files::{create_private_dir, touch_private};

/// The SQLite backend.
pub(crate) struct SqliteBackend {
    conn: Mutex<Connection>,
    place: String,
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use rusqlite::types::ValueRef;
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
        }))
    }
}

impl RowRead for rusqlite::Row<'_> {
    fn text(&self, name: &str) -> Result<String, String> {
        self.get(name).map_err(|e| e.to_string())
    }
    fn opt_text(&self, name: &str) -> Result<Option<String>, String> {
        self.get(name).map_err(|e| e.to_string())
    }
    fn int(&self, name: &str) -> Result<i64, String> {
        self.get::<_, Option<i64>>(name)
            .map(Option::unwrap_or_default)
            .map_err(|e| e.to_string())
    }
    fn opt_real(&self, name: &str) -> Result<Option<f64>, String> {
        self.get(name).map_err(|e| e.to_string())
    }
}

/// Sort an SQLite error into a [`LedgerError`] naming the file.
pub(crate) fn classify(place: &str, e: rusqlite::Error) -> LedgerError {
    let place = place.to_string();
    let detail = e.to_string();
    let code = match &e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.code),
        _ => None,
    };
    match code {
        Some(ErrorCode::DiskFull) => LedgerError::Full { place, detail },
        Some(ErrorCode::ReadOnly) => LedgerError::ReadOnly { place, detail },
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => {
            LedgerError::Corrupt { place, detail }
        }
        Some(ErrorCode::TooBig) => LedgerError::TooLarge { place, detail },
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => {
            LedgerError::Locked { place, detail }
        }
        Some(ErrorCode::CannotOpen) | Some(ErrorCode::PermissionDenied) => {
            LedgerError::Open { place, detail }
        }
        Some(ErrorCode::SystemIoFailure) => LedgerError::Io { place, detail },
        _ => LedgerError::Backend { place, detail },
    }
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
        if !super::process_alive(pid) {
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

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    let targets: Option<String> = r.get("targets")?;
    Ok(RunRow {
        id: r.get("id")?,
        session_id: r.get("session_id")?,
        trace_id: r.get("trace_id")?,
        created_at: r.get("created_at")?,
        targets: targets
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default(),
        projected_usd: r.get("projected_usd")?,
        prompt: r.get("prompt")?,
    })
}

const RUN_COLUMNS: &str = "id, session_id, trace_id, created_at, targets, projected_usd, prompt";

impl SqliteBackend {
    /// Open (creating and migrating as needed) the file at `path`.
    pub(crate) fn open(path: &Path) -> Result<SqliteBackend, LedgerError> {
        let place = path.display().to_string();
        let open_err = |detail: String| LedgerError::Open {
            place: place.clone(),
            detail,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(open_err)?;
        }
        touch_private(path).map_err(open_err)?;
        let err = |e| classify(&place, e);
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        // Switching to WAL needs a moment of exclusive access: retry while another
        // process holds the file.
        let mut tries = 0;
        loop {
            match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
                Ok(m) if m.eq_ignore_ascii_case("wal") => break,
                Ok(m) => {
                    return Err(LedgerError::Backend {
                        place,
                        detail: format!("cannot use WAL (journal_mode={m})"),
                    })
                }
                Err(_) if tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(err(e)),
            }
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        // No checkpoint when the connection closes: a one-shot `quorum ask` would
        // otherwise pay two more fsyncs (WAL and database) at every exit, and
        // recreate the WAL on the next start. The WAL stays beside the file
        // (same 0600 mode) and is checkpointed automatically every 1000 pages.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .map_err(err)?;
        let mut b = SqliteBackend {
            conn: Mutex::new(conn),
            place: place.clone(),
        };
        b.migrate()?;
        Ok(b)
    }

    fn err(&self, e: rusqlite::Error) -> LedgerError {
        classify(&self.place, e)
    }

    fn migrate(&mut self) -> Result<(), LedgerError> {
        let migs = migrations();
        let place = self.place.clone();
        let err = |e| classify(&place, e);
        let conn = self.conn.get_mut().map_err(|_| LedgerError::Backend {
            place: place.clone(),
            detail: "lock poisoned".into(),
        })?;
        loop {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            let v: i64 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(err)?;
            if v as usize >= migs.len() {
                if v as usize > migs.len() {
                    return Err(LedgerError::Schema {
                        place: place.clone(),
                        found: v,
                        known: migs.len() as i64,
                    });
                }
                tx.commit().map_err(err)?;
                return Ok(());
            }
            tx.execute_batch(&migs[v as usize]).map_err(err)?;
            tx.pragma_update(None, "user_version", v + 1).map_err(err)?;
            tx.commit().map_err(err)?;
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Connection>, LedgerError> {
        self.conn.lock().map_err(|_| LedgerError::Backend {
            place: self.place.clone(),
            detail: "lock poisoned".into(),
        })
    }

    fn insert_sql() -> String {
        let cols: Vec<&str> = request_written_columns().map(|c| c.name).collect();
        let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        format!(
            "INSERT INTO requests ({}) VALUES ({})",
            cols.join(", "),
            marks.join(", ")
        )
    }
}

impl Backend for SqliteBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Sqlite
    }

    fn place(&self) -> &str {
        &self.place
    }

    fn content_cap(&self) -> usize {
        let max = self
            .lock()
            .ok()
            .and_then(|c| c.limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH).ok())
            .unwrap_or(1_000_000_000)
            .max(0) as usize;
        content_cap_for(max)
    }

    fn version(&self) -> Result<i64, LedgerError> {
        self.lock()?
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Rewrites the schema version in a committed transaction (the cheapest real write).
    fn check_writable(&self) -> Result<(), LedgerError> {
        let err = |e| self.err(e);
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let v: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        tx.pragma_update(None, "user_version", v).map_err(err)?;
        tx.commit().map_err(err)
    }

    fn insert_requests(&self, rows: &[NewRequest]) -> Result<Vec<i64>, LedgerError> {
        let err = |e| self.err(e);
        let names: Vec<&str> = request_written_columns().map(|c| c.name).collect();
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let mut ids = Vec::with_capacity(rows.len());
        {
            let mut insert = tx.prepare_cached(&Self::insert_sql()).map_err(err)?;
            for row in rows {
                if let Some((s, agent)) = &row.session {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO sessions (id, source_agent) VALUES (?1, ?2)",
                    )
                    .and_then(|mut st| st.execute(params![s, agent]))
                    .map_err(err)?;
                }
                let (run, session, trace, prompt) = &row.run;
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO runs (id, session_id, trace_id, prompt) VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut st| st.execute(params![run, session, trace, prompt]))
                .map_err(err)?;
                if let Some((id, json)) = &row.price {
                    tx.prepare_cached("INSERT OR IGNORE INTO prices (id, row) VALUES (?1, ?2)")
                        .and_then(|mut st| st.execute(params![id, json]))
                        .map_err(err)?;
                }
                insert
                    .execute(params_from_iter(names.iter().map(|n| row.value(n))))
                    .map_err(err)?;
                ids.push(tx.last_insert_rowid());
            }
        }
        tx.commit().map_err(err)?;
        Ok(ids)
    }

    fn begin_run(
        &self,
        note: &RunNote<'_>,
        prompt: Option<&str>,
        gate: Option<(Gate<'_>, f64)>,
    ) -> Result<(), Refused> {
        let targets = serde_json::to_string(note.targets).unwrap_or_else(|_| "[]".into());
        let mut conn = self.lock()?;
        // Bookkeeping before the send: atomic and consistent (WAL) without its own
        // fsync; it becomes durable with the first request row's.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.err(e))?;
        let r = (|| {
            let sql = |e| Refused::Ledger(self.err(e));
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let mut reserved = None;
            if let Some((g, bound)) = gate {
                expire_dead(&tx).map_err(sql)?;
                let spend = spend_in(&tx, note.budget_session).map_err(sql)?;
                g.budget
                    .check(spend, g.projection)
                    .map_err(Refused::Budget)?;
                reserved = Some(bound);
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
                    prompt,
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
        full.map_err(|e| Refused::Ledger(self.err(e)))
    }

    fn settle_run(&self, run_id: &str) -> Result<(), LedgerError> {
        self.lock()?
            .execute(
                &format!("UPDATE runs SET settled_at = {NOW} WHERE id = ?1 AND settled_at IS NULL"),
                [run_id],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn start_session(
        &self,
        id: &str,
        label: Option<&str>,
        source_agent: Option<&str>,
    ) -> Result<(), LedgerError> {
        self.lock()?
            .execute(
                "INSERT INTO sessions (id, label, source_agent) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET label = COALESCE(excluded.label, label)",
                params![id, label, source_agent],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn spend(&self, session: Option<&str>) -> Result<Spend, LedgerError> {
        let conn = self.lock()?;
        spend_in(&conn, session).map_err(|e| self.err(e))
    }

    fn open_reservations(&self) -> Result<(u64, f64), LedgerError> {
        self.lock()?
            .query_row(
                &format!(
                    "SELECT COUNT(*), COALESCE(SUM({OUTSTANDING}), 0) FROM runs r WHERE {OPEN}"
                ),
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .map_err(|e| self.err(e))
    }

    fn totals(&self, by: GroupBy) -> Result<Vec<TotalRow>, LedgerError> {
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
        let err = |e| self.err(e);
        let conn = self.lock()?;
        let mut st = conn.prepare(&sql).map_err(err)?;
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
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    fn sessions(&self, limit: usize) -> Result<Vec<SessionRow>, LedgerError> {
        let err = |e| self.err(e);
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
            .map_err(err)?;
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
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    fn requests(&self, filter: RequestFilter<'_>) -> Result<Vec<RequestRow>, LedgerError> {
        let (cond, order, arg): (&str, &str, rusqlite::types::Value) = match filter {
            RequestFilter::Id(n) => ("id = ?1", "id", n.into()),
            RequestFilter::Run(r) => ("run_id = ?1", "id", r.to_string().into()),
            RequestFilter::Session(s) => ("session_id = ?1", "id", s.to_string().into()),
            RequestFilter::Recent(n) => (
                "1 = 1",
                "id DESC LIMIT ?1",
                (n.min(i64::MAX as usize) as i64).into(),
            ),
        };
        let sql = format!(
            "SELECT {} FROM requests WHERE {cond} ORDER BY {order}",
            request_select_list()
        );
        let err = |e| self.err(e);
        let conn = self.lock()?;
        let mut st = conn.prepare_cached(&sql).map_err(err)?;
        let mut rows = st.query([arg]).map_err(err)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(err)? {
            out.push(
                RequestRow::from_row(r).map_err(|detail| LedgerError::Backend {
                    place: self.place.clone(),
                    detail,
                })?,
            );
        }
        Ok(out)
    }

    fn runs(&self, filter: RunFilter<'_>) -> Result<Vec<RunRow>, LedgerError> {
        let (cond, arg) = match filter {
            RunFilter::Id(id) => ("id = ?1", id),
            RunFilter::Session(s) => ("session_id = ?1", s),
        };
        let err = |e| self.err(e);
        let conn = self.lock()?;
        let mut st = conn
            .prepare(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE {cond} ORDER BY created_at"
            ))
            .map_err(err)?;
        let rows = st.query_map([arg], run_row).map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    fn price_row(&self, id: &str) -> Result<Option<String>, LedgerError> {
        self.lock()?
            .query_row("SELECT row FROM prices WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    fn record_vote(
        &self,
        run_id: Option<&str>,
        targets: &str,
        winner: &str,
        tag: Option<&str>,
    ) -> Result<(), LedgerError> {
        self.lock()?
            .execute(
                "INSERT INTO votes (run_id, targets, winner, tag) VALUES (?1, ?2, ?3, ?4)",
                params![run_id, targets, winner, tag],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn votes(&self) -> Result<Vec<VoteRow>, LedgerError> {
        let err = |e| self.err(e);
        let conn = self.lock()?;
        let mut st = conn
            .prepare("SELECT run_id, targets, winner, tag, created_at FROM votes ORDER BY id")
            .map_err(err)?;
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
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    fn request_count(&self) -> Result<u64, LedgerError> {
        self.lock()?
            .query_row("SELECT COUNT(*) FROM requests", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    fn flush(&self) -> Result<(), LedgerError> {
        self.lock()?
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| self.err(e))
    }

    fn set_length_limit(&self, bytes: i32) -> Result<(), LedgerError> {
        self.lock()?
            .set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, bytes)
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn begin_eval_run(
        &self,
        id: &str,
        suite: &str,
        suite_hash: &str,
        targets: &str,
        cases: i64,
    ) -> Result<(), LedgerError> {
        self.lock()?
            .execute(
                "INSERT INTO eval_runs (id, suite, suite_hash, targets, cases) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET status = 'running', finished_at = NULL",
                params![id, suite, suite_hash, targets, cases],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn record_eval_case(&self, eval_run_id: &str, row: &EvalCaseRow) -> Result<(), LedgerError> {
        let conn = self.lock()?;
        // As with a run's note: committed (WAL) without an fsync of its own.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.err(e))?;
        let r = conn
            .execute(
                "INSERT OR REPLACE INTO eval_cases (eval_run_id, case_key, case_index, passed, cost_usd, result)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    eval_run_id,
                    row.case_key,
                    row.case_index as i64,
                    row.passed,
                    row.cost_usd,
                    row.result
                ],
            )
            .map(|_| ())
            .map_err(|e| self.err(e));
        let full = conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(|e| self.err(e));
        r.and(full)
    }

    fn end_eval_run(&self, id: &str, status: &str) -> Result<(), LedgerError> {
        self.lock()?
            .execute(
                &format!("UPDATE eval_runs SET status = ?2, finished_at = {NOW} WHERE id = ?1"),
                params![id, status],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn eval_run(
        &self,
        id: Option<&str>,
        latest_for: Option<&str>,
    ) -> Result<Option<EvalRunRow>, LedgerError> {
        let conn = self.lock()?;
        let sql = "SELECT id, suite, suite_hash, targets, cases, status, created_at, finished_at
                   FROM eval_runs WHERE (?1 IS NULL OR id = ?1) AND (?2 IS NULL OR suite = ?2)
                   ORDER BY created_at DESC, rowid DESC LIMIT 1";
        conn.query_row(sql, params![id, latest_for], |r| {
            let targets: String = r.get(3)?;
            Ok(EvalRunRow {
                id: r.get(0)?,
                suite: r.get(1)?,
                suite_hash: r.get(2)?,
                targets: serde_json::from_str(&targets).unwrap_or_default(),
                cases: r.get::<_, i64>(4)? as u64,
                status: r.get(5)?,
                created_at: r.get(6)?,
                finished_at: r.get(7)?,
            })
        })
        .optional()
        .map_err(|e| self.err(e))
    }

    fn eval_cases(&self, eval_run_id: &str) -> Result<Vec<EvalCaseRow>, LedgerError> {
        let err = |e| self.err(e);
        let conn = self.lock()?;
        let mut st = conn
            .prepare(
                "SELECT case_key, case_index, passed, cost_usd, result FROM eval_cases
                 WHERE eval_run_id = ?1 ORDER BY case_index",
            )
            .map_err(err)?;
        let rows = st
            .query_map([eval_run_id], |r| {
                Ok(EvalCaseRow {
                    case_key: r.get(0)?,
                    case_index: r.get::<_, i64>(1)? as u64,
                    passed: r.get(2)?,
                    cost_usd: r.get(3)?,
                    result: r.get(4)?,
                })
            })
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err);
        rows
    }
}
