//! The ledger's record of `quorum eval`: one row per suite run (`eval_runs`) and one
//! per finished case (`eval_cases`), written as each case finishes so that a crash
//! loses no finished case and `--resume` knows what is left. The requests of a case
//! are in `requests` as always (their run ids are in the case's `result`).

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use super::{sql_err, SqliteLedger};

/// Schema migration 3: the eval tables.
pub(super) const MIGRATION: &str = "CREATE TABLE eval_runs (
            id          TEXT PRIMARY KEY,
            suite       TEXT NOT NULL,
            suite_hash  TEXT NOT NULL,
            targets     TEXT NOT NULL,
            cases       INTEGER NOT NULL,
            status      TEXT NOT NULL DEFAULT 'running',
            created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
            finished_at TEXT
        );
        CREATE TABLE eval_cases (
            eval_run_id TEXT NOT NULL,
            case_key    TEXT NOT NULL,
            case_index  INTEGER NOT NULL,
            passed      INTEGER NOT NULL,
            cost_usd    REAL,
            result      TEXT NOT NULL,
            created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
            PRIMARY KEY (eval_run_id, case_key)
        );";

/// One eval run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalRunRow {
    /// Eval run id.
    pub id: String,
    /// The suite file as given.
    pub suite: String,
    /// SHA-256 of the suite text (a resumed run must run the same suite).
    pub suite_hash: String,
    /// Targets, as in the suite.
    pub targets: Vec<String>,
    /// Cases in the suite (after datasets are expanded).
    pub cases: u64,
    /// `running`, `interrupted` or `done`.
    pub status: String,
    /// When it started.
    pub created_at: String,
    /// When it ended, if it did.
    pub finished_at: Option<String>,
}

/// One finished case of an eval run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalCaseRow {
    /// Stable key of the case in its suite.
    pub case_key: String,
    /// Position in the suite.
    pub case_index: u64,
    /// Whether every assertion passed for every target.
    pub passed: bool,
    /// What the case cost, when every price is known.
    pub cost_usd: Option<f64>,
    /// The case's result as JSON (answers, verdicts, run ids).
    pub result: String,
}

impl SqliteLedger {
    /// Note an eval run before its first case is sent (or again on `--resume`).
    pub fn begin_eval_run(
        &self,
        id: &str,
        suite: &str,
        suite_hash: &str,
        targets: &[String],
        cases: u64,
    ) -> Result<(), String> {
        let targets = serde_json::to_string(targets).map_err(|e| e.to_string())?;
        self.lock()?
            .execute(
                "INSERT INTO eval_runs (id, suite, suite_hash, targets, cases) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET status = 'running', finished_at = NULL",
                params![id, suite, suite_hash, targets, cases as i64],
            )
            .map(|_| ())
            .map_err(sql_err)
    }

    /// Record one finished case; committed when this returns, so it survives a crash or
    /// kill of this process (WAL); the next request row's fsync makes it durable against
    /// a power cut too.
    pub fn record_eval_case(&self, eval_run_id: &str, row: &EvalCaseRow) -> Result<(), String> {
        let mut conn = self.lock()?;
        // As with a run's note: committed (WAL) without an fsync of its own.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql_err)?;
        let r = Self::insert_eval_case(&mut conn, eval_run_id, row);
        let full = conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(sql_err);
        r.and(full)
    }

    fn insert_eval_case(
        conn: &mut rusqlite::Connection,
        eval_run_id: &str,
        row: &EvalCaseRow,
    ) -> Result<(), String> {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        tx.execute(
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
        .map_err(sql_err)?;
        tx.commit().map_err(sql_err)
    }

    /// Mark an eval run `done` or `interrupted`.
    pub fn end_eval_run(&self, id: &str, status: &str) -> Result<(), String> {
        self.lock()?
            .execute(
                "UPDATE eval_runs SET status = ?2, finished_at = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id = ?1",
                params![id, status],
            )
            .map(|_| ())
            .map_err(sql_err)
    }

    /// An eval run by id; `latest_for` instead picks the newest run of that suite file.
    pub fn eval_run(
        &self,
        id: Option<&str>,
        latest_for: Option<&str>,
    ) -> Result<Option<EvalRunRow>, String> {
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
        .map_err(sql_err)
    }

    /// The finished cases of an eval run, in suite order.
    pub fn eval_cases(&self, eval_run_id: &str) -> Result<Vec<EvalCaseRow>, String> {
        let conn = self.lock()?;
        let mut st = conn
            .prepare(
                "SELECT case_key, case_index, passed, cost_usd, result FROM eval_cases
                 WHERE eval_run_id = ?1 ORDER BY case_index",
            )
            .map_err(sql_err)?;
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
            .map_err(sql_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql_err);
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::super::LedgerOptions;
    use super::*;

    #[test]
    fn runs_and_cases_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let l = SqliteLedger::open_in(dir.path(), LedgerOptions::default()).unwrap();
        let t = vec!["mock/alpha".to_string()];
        l.begin_eval_run("ev-1", "s.toml", "h", &t, 2).unwrap();
        let row = EvalCaseRow {
            case_key: "c1".into(),
            case_index: 1,
            passed: true,
            cost_usd: Some(0.5),
            result: "{}".into(),
        };
        l.record_eval_case("ev-1", &row).unwrap();
        assert_eq!(l.eval_cases("ev-1").unwrap(), vec![row]);
        let r = l.eval_run(None, Some("s.toml")).unwrap().unwrap();
        assert_eq!((r.id.as_str(), r.status.as_str()), ("ev-1", "running"));
        l.end_eval_run("ev-1", "done").unwrap();
        let r = l.eval_run(Some("ev-1"), None).unwrap().unwrap();
        assert_eq!(r.status, "done");
        assert!(l.eval_run(Some("nope"), None).unwrap().is_none());
    }
}
