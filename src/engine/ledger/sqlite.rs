//! The SQLite backend: one file, WAL, `synchronous=FULL` for request rows, writers
//! that take the lock up front (`BEGIN IMMEDIATE`) and wait for each other
//! (`busy_timeout`). Users may query the file with `sqlite3`; the schema version is
//! `user_version`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::types::ToSqlOutput;
use rusqlite::{
    params, params_from_iter, Connection, ErrorCode, OptionalExtension, TransactionBehavior,
};

use super::{
    content_cap_for, migrations, request_select_list, request_written_columns, scope, Backend,
    BackendKind, BookOp, CounterCheck, EvalCaseRow, EvalRunRow, GroupBy, LedgerError, NewRequest,
    Refused, RequestFilter, RequestRow, RowRead, RunEntry, RunFilter, RunRow, SessionRow, Spend,
    TotalRow, Value, VoteRow, WriteOp, NOW,
};
use crate::engine::budget::Refusal as BudgetRefusal;
use crate::engine::files::{create_private_dir, touch_private};

/// The SQLite backend.
pub(crate) struct SqliteBackend {
    conn: Mutex<Connection>,
    place: String,
    /// The longest content field taken ([`content_cap_for`] of SQLite's length
    /// limit), read once at open and on [`Backend::set_length_limit`]: asked for
    /// every request, it must not take the connection lock.
    content_cap: AtomicUsize,
}

/// [`content_cap_for`] of the connection's `SQLITE_LIMIT_LENGTH`.
fn cap_of(conn: &Connection) -> usize {
    content_cap_for(
        conn.limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH)
            .unwrap_or(1_000_000_000)
            .max(0) as usize,
    )
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
/// What a run still holds: its reservation less what its finished requests cost (a
/// lease's: its runs' requests).
const OUTSTANDING: &str = "MAX(r.reserved_usd - COALESCE((SELECT SUM(q.cost_usd) FROM requests q WHERE q.run_id = r.id), 0)
    - COALESCE((SELECT SUM(q.cost_usd) FROM requests q WHERE q.lease_id = r.id), 0), 0)";
/// [`OUTSTANDING`] before leases (schema 5).
const OUTSTANDING_V5: &str = "MAX(r.reserved_usd - COALESCE((SELECT SUM(q.cost_usd) FROM requests q WHERE q.run_id = r.id), 0), 0)";

/// The budget counters recomputed from the rows, as `(scope, usd, n)`: what open runs
/// hold (all, and per budget session; `n` open runs), what requests cost per local
/// day and per budget session (a request's budget session is its run's, else its own
/// session). The migration fills `budget_spend` with it; tests compare the two.
fn recompute_sql() -> String {
    recompute_sql_with(OUTSTANDING)
}

/// [`recompute_sql`] with `outstanding` for what an open run holds.
fn recompute_sql_with(outstanding: &str) -> String {
    format!(
        "SELECT 'held', COALESCE(SUM({outstanding}), 0), COUNT(*) FROM runs r WHERE {OPEN}
         UNION ALL
         SELECT 'held:' || r.budget_session, SUM({outstanding}), COUNT(*) FROM runs r
          WHERE {OPEN} AND r.budget_session IS NOT NULL GROUP BY r.budget_session
         UNION ALL
         SELECT 'day:' || date(q.created_at, 'localtime'), SUM(q.cost_usd), 0 FROM requests q
          WHERE q.cost_usd IS NOT NULL GROUP BY 1
         UNION ALL
         SELECT 'session:' || COALESCE(r.budget_session, q.session_id), SUM(q.cost_usd), 0
          FROM requests q LEFT JOIN runs r ON r.id = q.run_id
          WHERE q.cost_usd IS NOT NULL AND COALESCE(r.budget_session, q.session_id) IS NOT NULL
          GROUP BY 1"
    )
}

/// Budget counters (`budget_spend`, one row per scope, see `ledger::scope`), kept in
/// the transaction of every change so a cap check reads a few rows instead of summing
/// the day's requests; `runs.held_usd` is what an open run still holds. Backfilled
/// from the rows.
pub(crate) static COUNTERS_MIGRATION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| {
        format!(
            "ALTER TABLE runs ADD COLUMN held_usd REAL NOT NULL DEFAULT 0;
             UPDATE runs SET held_usd = MAX(reserved_usd - COALESCE(
                 (SELECT SUM(q.cost_usd) FROM requests q WHERE q.run_id = runs.id), 0), 0)
              WHERE settled_at IS NULL AND reserved_usd > 0;
             CREATE TABLE budget_spend (
                 scope TEXT PRIMARY KEY,
                 usd   REAL NOT NULL DEFAULT 0,
                 n     INTEGER NOT NULL DEFAULT 0
             );
             INSERT INTO budget_spend (scope, usd, n) SELECT * FROM ({}) WHERE true;",
            recompute_sql_with(OUTSTANDING_V5)
        )
    });

/// Add `usd` and `n` open runs to `scope`. A held scope whose last open run ends
/// goes back to exactly zero (no rounding drift accumulates).
fn bump(conn: &Connection, scope: &str, usd: f64, n: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO budget_spend (scope, usd, n) VALUES (?1, ?2, ?3)
         ON CONFLICT(scope) DO UPDATE SET
             usd = CASE WHEN excluded.n < 0 AND n + excluded.n <= 0 THEN 0 ELSE usd + excluded.usd END,
             n = n + excluded.n",
    )?
    .execute(params![scope, usd, n])
    .map(|_| ())
}

/// Spend today and in budget session `session`: a few counter rows.
fn spend_in(conn: &Connection, session: Option<&str>) -> rusqlite::Result<Spend> {
    let (sess, held_s) = match session {
        Some(s) => (Some(scope::session(s)), Some(scope::held_in(s))),
        None => (None, None),
    };
    let mut st = conn.prepare_cached(
        "SELECT scope, usd FROM budget_spend
         WHERE scope IN ('held', 'day:' || date('now', 'localtime'), ?1, ?2)",
    )?;
    let mut rows = st.query(params![sess, held_s])?;
    let (mut held, mut day, mut spent_s, mut held_in) = (0.0, 0.0, 0.0, 0.0);
    while let Some(r) = rows.next()? {
        let (k, usd): (String, f64) = (r.get(0)?, r.get(1)?);
        if k == scope::HELD {
            held = usd.max(0.0);
        } else if k.starts_with("day:") {
            day = usd;
        } else if Some(&k) == sess.as_ref() {
            spent_s = usd;
        } else {
            held_in = usd.max(0.0);
        }
    }
    Ok(Spend {
        session_usd: if session.is_some() {
            spent_s + held_in
        } else {
            0.0
        },
        today_usd: day + held,
    })
}

/// End run `id`'s reservation (a no-op when it is settled): it holds nothing more.
fn settle_in(conn: &Connection, memo: &mut Memo, id: &str) -> rusqlite::Result<()> {
    let open: Option<(f64, Option<f64>, Option<String>)> = conn
        .prepare_cached(
            "SELECT held_usd, reserved_usd, budget_session FROM runs
             WHERE id = ?1 AND settled_at IS NULL",
        )?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((held, reserved, bs)) = open else {
        return Ok(());
    };
    conn.prepare_cached(&format!(
        "UPDATE runs SET settled_at = {NOW}, held_usd = 0 WHERE id = ?1"
    ))?
    .execute([id])?;
    memo.runs.insert(id.to_string(), (bs.clone(), 0.0, false));
    if reserved.unwrap_or(0.0) > 0.0 {
        bump(conn, scope::HELD, -held, -1)?;
        if let Some(bs) = bs {
            bump(conn, &scope::held_in(&bs), -held, -1)?;
        }
    }
    Ok(())
}

/// Settle the reservations of processes that are gone (a crash, a kill -9).
fn expire_dead(conn: &Connection, memo: &mut Memo) -> rusqlite::Result<()> {
    let me = crate::shared::pid() as i64;
    let pids: Vec<i64> = conn
        .prepare_cached(&format!(
            "SELECT DISTINCT pid FROM runs r WHERE {OPEN} AND pid IS NOT NULL AND pid <> ?1"
        ))?
        .query_map([me], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for pid in pids {
        if !super::process_alive(pid) {
            let ids: Vec<String> = conn
                .prepare_cached("SELECT id FROM runs WHERE pid = ?1 AND settled_at IS NULL")?
                .query_map([pid], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for id in ids {
                settle_in(conn, memo, &id)?;
            }
        }
    }
    Ok(())
}

/// What one write transaction knows of its own writes, so that a request row does
/// not ask the database again what the same transaction just wrote, and what it adds
/// to the counters, written once per scope. The transaction holds the write lock
/// (`BEGIN IMMEDIATE`): nobody else changes these rows meanwhile. A `serve` burst's
/// request row took about ten statements; with this, three or four (issue #14).
struct Memo {
    /// The transaction's time, in the schema default's shape (see [`sql_now`]).
    now: String,
    /// The `day:` scope of `now` (SQLite's `date(now, 'localtime')`, asked once).
    day: Option<String>,
    /// Runs this transaction wrote: what [`holding`] would read of each (its budget
    /// session, what it holds, whether its reservation is open).
    runs: HashMap<String, Holding>,
    /// Sessions this transaction inserted or found.
    sessions: HashSet<String>,
    /// Price rows this transaction inserted or found.
    prices: HashSet<String>,
    /// Cost to add to the day's counter and to each session's: written before a
    /// cap check reads them ([`Memo::flush`]) and before the commit.
    day_usd: f64,
    spend: BTreeMap<String, f64>,
    /// What each lease's runs' requests cost, to draw its hold down ([`release_in`]).
    leases: BTreeMap<String, f64>,
}

/// A run's budget session, what it still holds, and whether its reservation is open.
type Holding = (Option<String>, f64, bool);

impl Memo {
    fn new() -> Memo {
        Memo {
            now: sql_now(),
            day: None,
            day_usd: 0.0,
            runs: HashMap::new(),
            sessions: HashSet::new(),
            prices: HashSet::new(),
            spend: BTreeMap::new(),
            leases: BTreeMap::new(),
        }
    }

    /// The `day:` scope of the transaction's time, as the schema's counters and
    /// [`recompute_sql`] name it.
    fn day(&mut self, conn: &Connection) -> rusqlite::Result<&str> {
        if self.day.is_none() {
            let d: String = conn
                .prepare_cached("SELECT 'day:' || date(?1, 'localtime')")?
                .query_row([&self.now], |r| r.get(0))?;
            self.day = Some(d);
        }
        Ok(self.day.as_deref().unwrap_or_default())
    }

    /// Write what the transaction's rows released and cost so far: a cap check
    /// reads the counters next.
    fn flush(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        release_in(conn, self)?;
        let usd = std::mem::take(&mut self.day_usd);
        if usd != 0.0 {
            bump(conn, self.day(conn)?, usd, 0)?;
        }
        for (scope, usd) in std::mem::take(&mut self.spend) {
            bump(conn, &scope, usd, 0)?;
        }
        Ok(())
    }
}

/// Note run `e` (reserving its bound when gated and within the caps).
fn begin_in(
    conn: &Connection,
    memo: &mut Memo,
    e: &RunEntry,
) -> rusqlite::Result<Result<(), BudgetRefusal>> {
    if let Some((budget, projection)) = &e.gate {
        let spend = spend_in(conn, e.budget_session.as_deref())?;
        if let Err(r) = budget.check(spend, projection) {
            return Ok(Err(r));
        }
    }
    if let Some(s) = &e.session_id {
        if !memo.sessions.contains(s) {
            conn.prepare_cached("INSERT OR IGNORE INTO sessions (id, created_at) VALUES (?1, ?2)")?
                .execute([s, &memo.now])?;
            memo.sessions.insert(s.clone());
        }
    }
    let reserved = e.bound();
    // A run noted for the first time (the common case) holds its whole bound; one
    // noted again has what it held replaced by the new note's hold, less what its
    // requests already cost.
    let fresh = reserved.filter(|r| *r > 0.0).unwrap_or(0.0);
    let inserted =
        !memo.runs.contains_key(&e.run_id) && write_run(conn, e, fresh, &memo.now, false)?;
    let (holds, held) = if inserted {
        (fresh > 0.0, fresh)
    } else {
        renote(conn, memo, e)?
    };
    if holds {
        bump(conn, scope::HELD, held, 1)?;
        if let Some(bs) = &e.budget_session {
            bump(conn, &scope::held_in(bs), held, 1)?;
        }
    }
    memo.runs
        .insert(e.run_id.clone(), (e.budget_session.clone(), held, holds));
    Ok(Ok(()))
}

/// Note again run `e`, which has a row: what it held before is replaced by the new
/// note's hold. Whether it now holds, and how much.
fn renote(conn: &Connection, memo: &Memo, e: &RunEntry) -> rusqlite::Result<(bool, f64)> {
    let prior: Option<(f64, Option<f64>, Option<String>, bool)> = conn
        .prepare_cached(
            "SELECT held_usd, reserved_usd, budget_session, settled_at IS NOT NULL
             FROM runs WHERE id = ?1",
        )?
        .query_row([&e.run_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let mut settled = false;
    let mut spent = 0.0;
    if let Some((held, reserved, bs, was_settled)) = prior {
        settled = was_settled;
        if !was_settled && reserved.unwrap_or(0.0) > 0.0 {
            bump(conn, scope::HELD, -held, -1)?;
            if let Some(bs) = bs {
                bump(conn, &scope::held_in(&bs), -held, -1)?;
            }
        }
        spent = conn
            .prepare_cached("SELECT COALESCE(SUM(cost_usd), 0) FROM requests WHERE run_id = ?1")?
            .query_row([&e.run_id], |r| r.get(0))?;
    }
    let reserved = e.bound();
    let holds = !settled && reserved.unwrap_or(0.0) > 0.0;
    let held = if holds {
        (reserved.unwrap_or(0.0) - spent).max(0.0)
    } else {
        0.0
    };
    write_run(conn, e, held, &memo.now, true)?;
    Ok((holds, held))
}

/// Write run `e`'s row holding `held`: a new row, or with `replace` the existing
/// row's note replaced (its time and session kept). Whether a row was written.
fn write_run(
    conn: &Connection,
    e: &RunEntry,
    held: f64,
    now: &str,
    replace: bool,
) -> rusqlite::Result<bool> {
    const INSERT: &str = "INSERT INTO runs (id, session_id, trace_id, targets, projected_usd,
            prompt, reserved_usd, budget_session, pid, held_usd, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
    static NEW: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("{INSERT} ON CONFLICT(id) DO NOTHING"));
    static REPLACE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "{INSERT} ON CONFLICT(id) DO UPDATE SET targets = excluded.targets,
                 projected_usd = excluded.projected_usd,
                 reserved_usd = excluded.reserved_usd,
                 budget_session = excluded.budget_session, pid = excluded.pid,
                 held_usd = excluded.held_usd"
        )
    });
    let sql = if replace { &*REPLACE } else { &*NEW };
    let n = conn.prepare_cached(sql)?.execute(params![
        e.run_id,
        e.session_id,
        e.trace_id,
        e.targets,
        e.projected_usd,
        e.prompt,
        e.bound(),
        e.budget_session,
        crate::shared::pid(),
        held,
        now,
    ])?;
    Ok(n == 1)
}

/// Count request `id` (just inserted from `row`) in the counters: its cost goes to
/// its day and budget session, and releases as much of its run's hold. A run on a
/// lease holds nothing itself: its cost is added to the memo's leases, to draw the
/// lease's hold down once per transaction ([`release_in`]).
fn count_request(conn: &Connection, memo: &mut Memo, row: &NewRequest) -> rusqlite::Result<()> {
    let cost = match row.value("cost_usd") {
        Value::Real(f) => *f,
        Value::Int(i) => *i as f64,
        _ => 0.0,
    };
    if cost == 0.0 {
        return Ok(());
    }
    let (bs, held, open) = holding(conn, memo, &row.run.0)?.unwrap_or((None, 0.0, false));
    // To the day of the row's `created_at`: the transaction's time.
    memo.day_usd += cost;
    let own = match row.value("session_id") {
        Value::Text(s) => Some(s.clone()),
        _ => None,
    };
    if let Some(s) = bs.clone().or(own) {
        *memo.spend.entry(scope::session(&s)).or_default() += cost;
    }
    match row.value("lease_id") {
        Value::Text(lease) if *lease != row.run.0 => {
            if cost > 0.0 {
                *memo.leases.entry(lease.to_string()).or_default() += cost;
            }
        }
        _ => {
            if cost > 0.0 && open && held > 0.0 {
                release(conn, memo, &row.run.0, held, bs.as_deref(), cost)?;
            }
        }
    }
    Ok(())
}

/// Release `cost` (as much as it holds) of the hold of run `id`, which holds `held`
/// in budget session `bs`.
fn release(
    conn: &Connection,
    memo: &mut Memo,
    id: &str,
    held: f64,
    bs: Option<&str>,
    cost: f64,
) -> rusqlite::Result<()> {
    let release = cost.min(held);
    let left = (held - release).max(0.0);
    conn.prepare_cached("UPDATE runs SET held_usd = ?2 WHERE id = ?1")?
        .execute(params![id, left])?;
    memo.runs
        .insert(id.to_string(), (bs.map(String::from), left, true));
    bump(conn, scope::HELD, -release, 0)?;
    if let Some(bs) = bs {
        bump(conn, &scope::held_in(bs), -release, 0)?;
    }
    Ok(())
}

/// What run (or lease) `id` holds: its budget session, what it still holds, and
/// whether its reservation is open (from the memo when this transaction wrote it).
fn holding(conn: &Connection, memo: &Memo, id: &str) -> rusqlite::Result<Option<Holding>> {
    if let Some(h) = memo.runs.get(id) {
        return Ok(Some(h.clone()));
    }
    conn.prepare_cached(
        "SELECT budget_session, held_usd, settled_at IS NULL AND COALESCE(reserved_usd, 0) > 0
         FROM runs WHERE id = ?1",
    )?
    .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
    .optional()
}

/// Draw each lease's hold down by what its runs' requests in this transaction cost.
fn release_in(conn: &Connection, memo: &mut Memo) -> rusqlite::Result<()> {
    for (id, cost) in std::mem::take(&mut memo.leases) {
        if let Some((bs, held, true)) = holding(conn, memo, &id)? {
            if held > 0.0 {
                release(conn, memo, &id, held, bs.as_deref(), cost)?;
            }
        }
    }
    Ok(())
}

/// Insert request `row` (with its session, run and price row, unless this
/// transaction already wrote them) and count it; its id.
fn insert_in(tx: &Connection, memo: &mut Memo, row: &NewRequest) -> rusqlite::Result<i64> {
    if let Some((s, agent)) = &row.session {
        if !memo.sessions.contains(s) {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO sessions (id, source_agent, created_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![s, agent, memo.now])?;
            memo.sessions.insert(s.clone());
        }
    }
    let (run, session, trace, prompt) = &row.run;
    if !memo.runs.contains_key(run) {
        let n = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO runs (id, session_id, trace_id, prompt, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![run, session, trace, prompt, memo.now])?;
        if n == 1 {
            // A run without a note: no budget session, nothing held.
            memo.runs.insert(run.clone(), (None, 0.0, false));
        }
    }
    if let Some((id, json)) = &row.price {
        if !memo.prices.contains(id) {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO prices (id, row, first_used_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![id, json, memo.now])?;
            memo.prices.insert(id.clone());
        }
    }
    let now = Value::Text(memo.now.clone());
    tx.prepare_cached(&INSERT_SQL)?.execute(params_from_iter(
        request_written_columns()
            .map(|c| row.value(c.name))
            .chain(std::iter::once(&now)),
    ))?;
    let id = tx.last_insert_rowid();
    count_request(tx, memo, row)?;
    Ok(id)
}

/// Now, as the schema's `DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))` writes
/// it (UTC, milliseconds). Computed once per write batch and bound into each
/// insert: SQLite's `strftime` cost about 3,000 instructions per call, six times
/// per streamed request through `serve` (callgrind, issue #14).
pub(crate) fn sql_now() -> String {
    crate::shared::clock::utc_stamp(false)
}

/// The insert of one request row.
static INSERT_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    // `created_at` last: the batch's time, bound by the caller (see [`sql_now`]).
    let cols: Vec<&str> = request_written_columns()
        .map(|c| c.name)
        .chain(["created_at"])
        .collect();
    let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO requests ({}) VALUES ({})",
        cols.join(", "),
        marks.join(", ")
    )
});

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
            content_cap: AtomicUsize::new(cap_of(&conn)),
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
}

impl Backend for SqliteBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Sqlite
    }

    fn place(&self) -> &str {
        &self.place
    }

    fn content_cap(&self) -> usize {
        self.content_cap.load(Ordering::Relaxed)
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

    fn write(&self, ops: &[WriteOp]) -> Result<Vec<Result<i64, Refused>>, LedgerError> {
        let err = |e| self.err(e);
        let mut conn = self.lock()?;
        // Bookkeeping alone (run notes before the send, settlements): atomic and
        // consistent (WAL) without its own fsync; it becomes durable with the next
        // request row's. Losing it in a power cut loses no request row, only holds of
        // runs that died with the machine. A batch with a row is fsynced.
        let rows = ops.iter().any(|o| matches!(o, WriteOp::Row { .. }));
        if !rows {
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(err)?;
        }
        let r = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Dead processes' holds are expired lazily, only when a cap check fails
            // (then the check runs again). This is safe: a dead process's holds only
            // add to the held counters, so leaving them in place can only make a check
            // stricter, never let a run pass that should be refused; and a check that
            // fails with them gets its second chance without them.
            let mut expired = false;
            let mut memo = Memo::new();
            let mut out = Vec::with_capacity(ops.len());
            for op in ops {
                out.push(match op {
                    WriteOp::Book(BookOp::Begin(e)) => {
                        if e.gate.is_some() {
                            // The caps see what earlier rows released and cost.
                            memo.flush(&tx)?;
                        }
                        let mut r = begin_in(&tx, &mut memo, e)?;
                        if r.is_err() && !expired {
                            expire_dead(&tx, &mut memo)?;
                            expired = true;
                            r = begin_in(&tx, &mut memo, e)?;
                        }
                        r.map(|()| 0).map_err(Refused::Budget)
                    }
                    WriteOp::Book(BookOp::Settle(id)) => {
                        // A lease settles after its runs' rows: they draw it down first.
                        release_in(&tx, &mut memo)?;
                        settle_in(&tx, &mut memo, id).map(|()| Ok(0))?
                    }
                    WriteOp::Row { row, settle } => {
                        let id = insert_in(&tx, &mut memo, row)?;
                        if *settle {
                            settle_in(&tx, &mut memo, &row.run.0)?;
                        }
                        Ok(id)
                    }
                });
            }
            memo.flush(&tx)?;
            tx.commit()?;
            Ok(out)
        })();
        let full = if rows {
            Ok(())
        } else {
            conn.pragma_update(None, "synchronous", "FULL")
        };
        let out = r.map_err(err)?;
        full.map_err(err)?;
        Ok(out)
    }

    fn budget_counters(&self) -> Result<CounterCheck, LedgerError> {
        let err = |e| self.err(e);
        let conn = self.lock()?;
        let read = |sql: &str| -> rusqlite::Result<Vec<(String, f64, i64)>> {
            conn.prepare(sql)?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        };
        Ok(CounterCheck {
            kept: read("SELECT scope, usd, n FROM budget_spend ORDER BY scope").map_err(err)?,
            recomputed: read(&format!("SELECT * FROM ({}) ORDER BY 1", recompute_sql()))
                .map_err(err)?,
        })
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
        let conn = self.lock()?;
        conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, bytes)
            .map_err(|e| self.err(e))?;
        self.content_cap.store(cap_of(&conn), Ordering::Relaxed);
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::budget::{Budget, Projection, TargetProjection};
    use crate::engine::event::Completion;
    use crate::engine::ledger::{LedgerOptions, RequestMeta};
    use proptest::prelude::*;

    /// One op of the batch property test, over a few runs and sessions.
    #[derive(Debug, Clone)]
    enum Op {
        /// Note run `run` (in session `session`), gated by a cap of `cap` with a bound
        /// of `bound` when `cap` is set.
        Begin {
            run: u8,
            session: Option<u8>,
            cap: Option<f64>,
            bound: f64,
        },
        /// A request row of `run` costing `cost`, on lease `lease`, with price row
        /// `price`; `settle` ends its run's reservation too.
        Row {
            run: u8,
            session: Option<u8>,
            cost: Option<f64>,
            lease: Option<u8>,
            price: Option<u8>,
            settle: bool,
        },
        Settle(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let session = proptest::option::of(0u8..2);
        prop_oneof![
            (
                0u8..4,
                session.clone(),
                proptest::option::of(0.0f64..0.1),
                0.0f64..0.05
            )
                .prop_map(|(run, session, cap, bound)| Op::Begin {
                    run,
                    session,
                    cap,
                    bound
                }),
            (
                0u8..4,
                session,
                proptest::option::of(0.0f64..0.02),
                proptest::option::of(0u8..4),
                proptest::option::of(0u8..2),
                any::<bool>()
            )
                .prop_map(|(run, session, cost, lease, price, settle)| Op::Row {
                    run,
                    session,
                    cost,
                    lease,
                    price,
                    settle
                }),
            (0u8..4).prop_map(Op::Settle),
        ]
    }

    fn write_op(o: &Op) -> WriteOp {
        let run = |i: &u8| format!("run-{i}");
        let sess = |s: &Option<u8>| s.map(|s| format!("s-{s}"));
        match o {
            Op::Begin {
                run: r,
                session,
                cap,
                bound,
            } => WriteOp::Book(BookOp::Begin(Box::new(RunEntry {
                run_id: run(r),
                session_id: sess(session),
                budget_session: sess(session),
                trace_id: None,
                targets: "[]".into(),
                projected_usd: Some(*bound),
                prompt: None,
                gate: cap.map(|c| {
                    let budget = Budget {
                        session_usd: Some(c),
                        daily_usd: Some(c * 4.0),
                    };
                    let projection = Projection {
                        targets: vec![TargetProjection {
                            target: "p/m".into(),
                            provider: "p".into(),
                            model: "m".into(),
                            input_tokens: 1,
                            input_exact: true,
                            max_output_tokens: Some(1),
                            bound_usd: Some(*bound),
                            price_ref: None,
                        }],
                    };
                    (budget, projection)
                }),
            }))),
            Op::Row {
                run: r,
                session,
                cost,
                lease,
                price,
                settle,
            } => {
                let meta = RequestMeta {
                    run_id: run(r),
                    session_id: sess(session),
                    target: "p/m".into(),
                    lease_id: lease.map(|l| run(&l)),
                    ..Default::default()
                };
                let c = Completion {
                    provider: "p".into(),
                    model: "m".into(),
                    cost_usd: *cost,
                    ..Default::default()
                };
                let mut row = NewRequest::build(&meta, &c, LedgerOptions::default(), None, 1000);
                row.price = price.map(|p| (format!("price-{p}"), "{}".into()));
                WriteOp::Row {
                    row: Box::new(row),
                    settle: *settle,
                }
            }
            Op::Settle(r) => WriteOp::Book(BookOp::Settle(run(r))),
        }
    }

    /// Everything a batch may change, as text to compare.
    fn state(b: &SqliteBackend) -> String {
        let conn = b.lock().unwrap();
        let mut out = String::new();
        for sql in [
            "SELECT id, session_id, budget_session, printf('%.9f', held_usd),
                    reserved_usd, settled_at IS NULL FROM runs ORDER BY id",
            "SELECT id, source_agent FROM sessions ORDER BY id",
            "SELECT id FROM prices ORDER BY id",
            "SELECT run_id, session_id, lease_id, cost_usd FROM requests ORDER BY id",
            "SELECT scope, printf('%.9f', usd), n FROM budget_spend WHERE usd <> 0 OR n <> 0
             ORDER BY scope",
        ] {
            let mut st = conn.prepare(sql).unwrap();
            let n = st.column_count();
            let rows = st
                .query_map([], |r| {
                    (0..n)
                        .map(|i| {
                            r.get::<_, rusqlite::types::Value>(i)
                                .map(|v| format!("{v:?}"))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .unwrap();
            for r in rows {
                out.push_str(&r.unwrap().join(" | "));
                out.push('\n');
            }
            out.push_str("--\n");
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A batch written in one transaction leaves the ledger as the same ops
        /// written one transaction each: what the memo of a transaction skips
        /// (sessions, runs and price rows it wrote, holds it knows, counters added
        /// once per scope) changes nothing.
        #[test]
        fn a_batch_writes_what_its_ops_write_one_by_one(ops in proptest::collection::vec(op(), 1..24)) {
            let dir = tempfile::tempdir().unwrap();
            let batched = SqliteBackend::open(&dir.path().join("a.sqlite3")).unwrap();
            let single = SqliteBackend::open(&dir.path().join("b.sqlite3")).unwrap();
            let ops: Vec<WriteOp> = ops.iter().map(write_op).collect();
            let all = batched.write(&ops).unwrap();
            let each: Vec<_> = ops
                .iter()
                .map(|o| single.write(std::slice::from_ref(o)).unwrap().remove(0))
                .collect();
            // Sums taken in another order may differ in the last bits.
            let shown = |r: &[Result<i64, Refused>]| -> Vec<String> {
                r.iter()
                    .map(|r| match r {
                        Err(Refused::Budget(b)) => format!(
                            "refused {:?} {:.9} {:.9} {:?}",
                            b.cap,
                            b.limit_usd,
                            b.spent_usd,
                            b.projected_usd.map(|p| format!("{p:.9}"))
                        ),
                        other => format!("{other:?}"),
                    })
                    .collect()
            };
            prop_assert_eq!(shown(&all), shown(&each));
            prop_assert_eq!(state(&batched), state(&single));
            // The counters agree with the rows as well as one op per transaction
            // makes them agree. (Not always exactly: a run noted after its rows,
            // which no face does, keeps their session spend under the row's own
            // session while the recount moves it to the note's budget session.)
            let drift = |b: &SqliteBackend| -> Vec<String> {
                let d = b.budget_counters().unwrap().differences(1e-9);
                d.iter().map(|d| d.split(": kept").next().unwrap_or_default().to_string()).collect()
            };
            prop_assert_eq!(drift(&batched), drift(&single));
        }
    }

    /// `sql_now` writes what the schema's `strftime` default wrote, so times
    /// sort and compare as before.
    #[test]
    fn the_batch_time_has_the_schema_default_shape() {
        let conn = Connection::open_in_memory().unwrap();
        let before: String = conn
            .query_row(&format!("SELECT {NOW}"), [], |r| r.get(0))
            .unwrap();
        let ours = sql_now();
        let after: String = conn
            .query_row(&format!("SELECT {NOW}"), [], |r| r.get(0))
            .unwrap();
        let shape = |s: &str| -> String {
            s.chars()
                .map(|c| if c.is_ascii_digit() { '9' } else { c })
                .collect()
        };
        assert_eq!(shape(&ours), shape(&before), "{ours} vs {before}");
        assert_eq!(shape(&ours), "9999-99-99T99:99:99.999Z");
        assert!(
            before <= ours && ours <= after,
            "{before} <= {ours} <= {after}"
        );
    }
}
