//! `quorum ledger migrate --to postgres://…`: copy an SQLite ledger into PostgreSQL.
//!
//! Every table is copied in chunks, each chunk in one transaction, and every row is
//! keyed (requests by `sqlite:<run id>:<row id>`, votes likewise, the rest by their own
//! ids) with `ON CONFLICT DO NOTHING`: running it again copies only what is missing, so
//! an interrupted migration resumes where it stopped and a finished one changes nothing.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::postgres::PgBackend;
use super::{
    request_written_columns, ColumnKind, Ledger, LedgerError, LedgerOptions, NewRequest, Value,
};

/// A session as copied.
#[derive(Debug, Clone)]
pub struct SessionCopy {
    /// Id.
    pub id: String,
    /// Created.
    pub created_at: String,
    /// Label.
    pub label: Option<String>,
    /// Agent.
    pub source_agent: Option<String>,
}

/// A run as copied, reservation state included.
#[derive(Debug, Clone)]
pub struct RunCopy {
    /// Id.
    pub id: String,
    /// Session.
    pub session_id: Option<String>,
    /// Trace.
    pub trace_id: Option<String>,
    /// Created.
    pub created_at: String,
    /// Targets JSON.
    pub targets: Option<String>,
    /// Bound.
    pub projected_usd: Option<f64>,
    /// Prompt.
    pub prompt: Option<String>,
    /// Reserved.
    pub reserved_usd: Option<f64>,
    /// Budget session.
    pub budget_session: Option<String>,
    /// Pid.
    pub pid: Option<i64>,
    /// Settled.
    pub settled_at: Option<String>,
}

/// One chunk of rows, written in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Sessions.
    pub sessions: Vec<SessionCopy>,
    /// Runs.
    pub runs: Vec<RunCopy>,
    /// Price rows: id, JSON, first used.
    pub prices: Vec<(String, String, String)>,
    /// Requests: uid, created_at, values.
    pub requests: Vec<(String, String, NewRequest)>,
    /// `eval_runs` rows, each column by name (the SQLite values as they are).
    pub eval_runs: Vec<Vec<(String, Value)>>,
    /// `eval_cases` rows, each column by name.
    pub eval_cases: Vec<Vec<(String, Value)>>,
    /// Votes: uid, run id, targets, winner, tag, created_at.
    #[allow(clippy::type_complexity)]
    pub votes: Vec<(
        String,
        Option<String>,
        Option<String>,
        String,
        Option<String>,
        String,
    )>,
}

/// What a migration did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Migrated {
    /// Rows read from the file.
    pub read: u64,
    /// Rows written (the rest were there already).
    pub written: u64,
    /// Request rows in the database afterwards.
    pub requests_after: u64,
}

const CHUNK: i64 = 500;

/// The columns of `eval_runs` and `eval_cases` copied (the same in both schemas).
pub(crate) const EVAL_RUN_COLUMNS: &[(&str, ColumnKind)] = &[
    ("id", ColumnKind::Text),
    ("suite", ColumnKind::Text),
    ("suite_hash", ColumnKind::Text),
    ("targets", ColumnKind::Text),
    ("cases", ColumnKind::Int),
    ("status", ColumnKind::Text),
    ("created_at", ColumnKind::Text),
    ("finished_at", ColumnKind::Text),
];
/// See [`EVAL_RUN_COLUMNS`].
pub(crate) const EVAL_CASE_COLUMNS: &[(&str, ColumnKind)] = &[
    ("eval_run_id", ColumnKind::Text),
    ("case_key", ColumnKind::Text),
    ("case_index", ColumnKind::Int),
    ("passed", ColumnKind::Int),
    ("cost_usd", ColumnKind::Real),
    ("result", ColumnKind::Text),
    ("created_at", ColumnKind::Text),
];

fn sql(place: &str) -> impl Fn(rusqlite::Error) -> LedgerError + '_ {
    move |e| super::sqlite::classify(place, e)
}

impl Batch {
    /// Rows in the batch.
    fn len(&self) -> u64 {
        (self.sessions.len()
            + self.runs.len()
            + self.prices.len()
            + self.requests.len()
            + self.eval_runs.len()
            + self.eval_cases.len()
            + self.votes.len()) as u64
    }
}

/// Copy one table page by page in key order: `select` reads the row's key (its
/// rowid) as its first column, takes the last key copied as `?1` and the page
/// size as `?2`; `row` reads one row; each page goes to `send` as one batch.
fn copy_pages<T>(
    conn: &Connection,
    e: &dyn Fn(rusqlite::Error) -> LedgerError,
    select: &str,
    row: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    mut send: impl FnMut(Vec<T>) -> Result<(), LedgerError>,
) -> Result<(), LedgerError> {
    let mut st = conn.prepare(select).map_err(e)?;
    let mut after = i64::MIN;
    loop {
        let rows = st
            .query_map([after, CHUNK], |r| Ok((r.get::<_, i64>(0)?, row(r)?)))
            .map_err(e)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(e)?;
        let Some(last) = rows.last().map(|r| r.0) else {
            return Ok(());
        };
        after = last;
        send(rows.into_iter().map(|r| r.1).collect())?;
    }
}

/// The named columns of a row as ledger values.
fn values(
    r: &rusqlite::Row<'_>,
    cols: impl Iterator<Item = (&'static str, ColumnKind)>,
) -> rusqlite::Result<Vec<(String, Value)>> {
    cols.map(|(name, kind)| {
        let v = match kind {
            ColumnKind::Int => r
                .get::<_, Option<i64>>(name)?
                .map_or(Value::Null, Value::Int),
            ColumnKind::Real => r
                .get::<_, Option<f64>>(name)?
                .map_or(Value::Null, Value::Real),
            ColumnKind::Text => r
                .get::<_, Option<String>>(name)?
                .map_or(Value::Null, Value::Text),
        };
        Ok((name.to_string(), v))
    })
    .collect()
}

/// Copy the SQLite ledger at `src` into the database at `url`; `progress` hears a line
/// per chunk.
pub fn migrate(
    src: &Path,
    url: &str,
    mut progress: impl FnMut(&str),
) -> Result<Migrated, LedgerError> {
    // Bring the file to this build's schema first (refusing a newer one).
    drop(Ledger::open(src, LedgerOptions::default())?);
    let place = src.display().to_string();
    let e = sql(&place);
    let conn = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(&e)?;
    let pg = PgBackend::connect(url)?;
    let mut out = Migrated::default();
    let mut send = |b: Batch, what: &str| -> Result<(), LedgerError> {
        out.read += b.len();
        out.written += pg.import(b)?;
        progress(&format!(
            "{what}: {} rows read, {} written",
            out.read, out.written
        ));
        Ok(())
    };

    // Sessions, then runs, then prices: what requests and votes refer to.
    copy_pages(
        &conn,
        &e,
        "SELECT rowid, id, created_at, label, source_agent FROM sessions
         WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        |r| {
            Ok(SessionCopy {
                id: r.get("id")?,
                created_at: r.get("created_at")?,
                label: r.get("label")?,
                source_agent: r.get("source_agent")?,
            })
        },
        |sessions| {
            send(
                Batch {
                    sessions,
                    ..Default::default()
                },
                "sessions",
            )
        },
    )?;
    copy_pages(
        &conn,
        &e,
        "SELECT rowid, id, session_id, trace_id, created_at, targets, projected_usd, prompt,
                reserved_usd, budget_session, pid, settled_at
         FROM runs WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        |r| {
            Ok(RunCopy {
                id: r.get("id")?,
                session_id: r.get("session_id")?,
                trace_id: r.get("trace_id")?,
                created_at: r.get("created_at")?,
                targets: r.get("targets")?,
                projected_usd: r.get("projected_usd")?,
                prompt: r.get("prompt")?,
                reserved_usd: r.get("reserved_usd")?,
                budget_session: r.get("budget_session")?,
                pid: r.get("pid")?,
                settled_at: r.get("settled_at")?,
            })
        },
        |runs| {
            send(
                Batch {
                    runs,
                    ..Default::default()
                },
                "runs",
            )
        },
    )?;
    copy_pages(
        &conn,
        &e,
        "SELECT rowid, id, row, first_used_at FROM prices
         WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        |r| Ok((r.get("id")?, r.get("row")?, r.get("first_used_at")?)),
        |prices| {
            send(
                Batch {
                    prices,
                    ..Default::default()
                },
                "prices",
            )
        },
    )?;

    // Requests, by the column table.
    let select = format!(
        "SELECT id, created_at, {} FROM requests WHERE id > ?1 ORDER BY id LIMIT ?2",
        request_written_columns()
            .map(|c| c.name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    copy_pages(
        &conn,
        &e,
        &select,
        |r| {
            let id: i64 = r.get("id")?;
            let run_id: String = r.get("run_id")?;
            Ok((
                format!("sqlite:{run_id}:{id}"),
                r.get("created_at")?,
                NewRequest {
                    uid: String::new(),
                    session: None,
                    run: (run_id, None, None, None),
                    price: None,
                    values: values(r, request_written_columns().map(|c| (c.name, c.kind)))?,
                },
            ))
        },
        |requests| {
            send(
                Batch {
                    requests,
                    ..Default::default()
                },
                "requests",
            )
        },
    )?;
    copy_pages(
        &conn,
        &e,
        "SELECT id, run_id, targets, winner, tag, created_at FROM votes
         WHERE id > ?1 ORDER BY id LIMIT ?2",
        |r| {
            let id: i64 = r.get("id")?;
            let created: String = r.get("created_at")?;
            Ok((
                format!("sqlite:vote:{created}:{id}"),
                r.get("run_id")?,
                r.get("targets")?,
                r.get("winner")?,
                r.get("tag")?,
                created,
            ))
        },
        |votes| {
            send(
                Batch {
                    votes,
                    ..Default::default()
                },
                "votes",
            )
        },
    )?;
    // `quorum eval`'s tables, column by column.
    for (table, cols) in [
        ("eval_runs", EVAL_RUN_COLUMNS),
        ("eval_cases", EVAL_CASE_COLUMNS),
    ] {
        let select = format!(
            "SELECT rowid, {} FROM {table} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
            cols.iter().map(|c| c.0).collect::<Vec<_>>().join(", ")
        );
        copy_pages(
            &conn,
            &e,
            &select,
            |r| values(r, cols.iter().copied()),
            |rows| {
                let b = if table == "eval_runs" {
                    Batch {
                        eval_runs: rows,
                        ..Default::default()
                    }
                } else {
                    Batch {
                        eval_cases: rows,
                        ..Default::default()
                    }
                };
                send(b, table)
            },
        )?;
    }
    out.requests_after = pg.request_count()?;
    Ok(out)
}

use super::Backend as _;
