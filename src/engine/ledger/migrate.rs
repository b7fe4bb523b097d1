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
    let mut send = |b: Batch, what: &str, out: &mut Migrated| -> Result<(), LedgerError> {
        let n =
            (b.sessions.len() + b.runs.len() + b.prices.len() + b.requests.len() + b.votes.len())
                as u64;
        out.read += n;
        out.written += pg.import(b)?;
        progress(&format!(
            "{what}: {} rows read, {} written",
            out.read, out.written
        ));
        Ok(())
    };

    // Sessions, then runs, then prices: what requests and votes refer to.
    let mut st = conn
        .prepare("SELECT id, created_at, label, source_agent FROM sessions ORDER BY rowid")
        .map_err(&e)?;
    let sessions = st
        .query_map([], |r| {
            Ok(SessionCopy {
                id: r.get(0)?,
                created_at: r.get(1)?,
                label: r.get(2)?,
                source_agent: r.get(3)?,
            })
        })
        .map_err(&e)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(&e)?;
    for c in sessions.chunks(CHUNK as usize) {
        send(
            Batch {
                sessions: c.to_vec(),
                ..Default::default()
            },
            "sessions",
            &mut out,
        )?;
    }
    let mut after = 0i64;
    loop {
        let mut st = conn
            .prepare(
                "SELECT rowid, id, session_id, trace_id, created_at, targets, projected_usd, prompt,
                        reserved_usd, budget_session, pid, settled_at
                 FROM runs WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
            )
            .map_err(&e)?;
        let rows = st
            .query_map([after, CHUNK], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    RunCopy {
                        id: r.get(1)?,
                        session_id: r.get(2)?,
                        trace_id: r.get(3)?,
                        created_at: r.get(4)?,
                        targets: r.get(5)?,
                        projected_usd: r.get(6)?,
                        prompt: r.get(7)?,
                        reserved_usd: r.get(8)?,
                        budget_session: r.get(9)?,
                        pid: r.get(10)?,
                        settled_at: r.get(11)?,
                    },
                ))
            })
            .map_err(&e)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&e)?;
        let Some(last) = rows.last().map(|r| r.0) else {
            break;
        };
        after = last;
        let runs = rows.into_iter().map(|r| r.1).collect();
        send(
            Batch {
                runs,
                ..Default::default()
            },
            "runs",
            &mut out,
        )?;
    }
    let mut st = conn
        .prepare("SELECT id, row, first_used_at FROM prices ORDER BY rowid")
        .map_err(&e)?;
    let prices = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(&e)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(&e)?;
    send(
        Batch {
            prices,
            ..Default::default()
        },
        "prices",
        &mut out,
    )?;

    // Requests, by the column table.
    let cols: Vec<&str> = request_written_columns().map(|c| c.name).collect();
    let select = format!(
        "SELECT id, created_at, {} FROM requests WHERE id > ?1 ORDER BY id LIMIT ?2",
        cols.join(", ")
    );
    let mut after = 0i64;
    loop {
        let mut st = conn.prepare_cached(&select).map_err(&e)?;
        let rows = st
            .query_map([after, CHUNK], |r| {
                let id: i64 = r.get("id")?;
                let created: String = r.get("created_at")?;
                let mut values = Vec::with_capacity(cols.len());
                for c in request_written_columns() {
                    let v = match c.kind {
                        ColumnKind::Int => r
                            .get::<_, Option<i64>>(c.name)?
                            .map_or(Value::Null, Value::Int),
                        ColumnKind::Real => r
                            .get::<_, Option<f64>>(c.name)?
                            .map_or(Value::Null, Value::Real),
                        ColumnKind::Text => r
                            .get::<_, Option<String>>(c.name)?
                            .map_or(Value::Null, Value::Text),
                    };
                    values.push((c.name.to_string(), v));
                }
                let run_id: String = r.get("run_id")?;
                Ok((
                    id,
                    (
                        format!("sqlite:{run_id}:{id}"),
                        created,
                        NewRequest {
                            uid: String::new(),
                            session: None,
                            run: (run_id, None, None, None),
                            price: None,
                            values,
                        },
                    ),
                ))
            })
            .map_err(&e)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&e)?;
        let Some(last) = rows.last().map(|r| r.0) else {
            break;
        };
        after = last;
        let requests = rows.into_iter().map(|r| r.1).collect();
        send(
            Batch {
                requests,
                ..Default::default()
            },
            "requests",
            &mut out,
        )?;
    }
    let mut st = conn
        .prepare("SELECT id, run_id, targets, winner, tag, created_at FROM votes ORDER BY id")
        .map_err(&e)?;
    let votes = st
        .query_map([], |r| {
            let id: i64 = r.get(0)?;
            let created: String = r.get(5)?;
            Ok((
                format!("sqlite:vote:{created}:{id}"),
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                created,
            ))
        })
        .map_err(&e)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(&e)?;
    for c in votes.chunks(CHUNK as usize) {
        send(
            Batch {
                votes: c.to_vec(),
                ..Default::default()
            },
            "votes",
            &mut out,
        )?;
    }
    // `quorum eval`'s tables, column by column.
    for (table, cols) in [
        ("eval_runs", EVAL_RUN_COLUMNS),
        ("eval_cases", EVAL_CASE_COLUMNS),
    ] {
        let mut st = conn
            .prepare(&format!(
                "SELECT {} FROM {table} ORDER BY rowid",
                cols.iter().map(|c| c.0).collect::<Vec<_>>().join(", ")
            ))
            .map_err(&e)?;
        let rows = st
            .query_map([], |r| {
                cols.iter()
                    .map(|(name, kind)| {
                        Ok((
                            name.to_string(),
                            match kind {
                                ColumnKind::Int => r
                                    .get::<_, Option<i64>>(*name)?
                                    .map_or(Value::Null, Value::Int),
                                ColumnKind::Real => r
                                    .get::<_, Option<f64>>(*name)?
                                    .map_or(Value::Null, Value::Real),
                                ColumnKind::Text => r
                                    .get::<_, Option<String>>(*name)?
                                    .map_or(Value::Null, Value::Text),
                            },
                        ))
                    })
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(&e)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&e)?;
        for c in rows.chunks(CHUNK as usize) {
            let b = if table == "eval_runs" {
                Batch {
                    eval_runs: c.to_vec(),
                    ..Default::default()
                }
            } else {
                Batch {
                    eval_cases: c.to_vec(),
                    ..Default::default()
                }
            };
            send(b, table, &mut out)?;
        }
    }
    out.requests_after = pg.request_count()?;
    Ok(out)
}

use super::Backend as _;
