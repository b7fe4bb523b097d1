//! The ledger's record of `quorum eval`: one row per suite run (`eval_runs`) and one
//! per finished case (`eval_cases`), written as each case finishes so that a crash
//! loses no finished case and `--resume` knows what is left. The requests of a case
//! are in `requests` as always (their run ids are in the case's `result`).

use serde::Serialize;

use super::{Ledger, LedgerError};

/// SQLite schema migration 3: the eval tables (PostgreSQL: [`PG_MIGRATION`]).
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

/// PostgreSQL schema migration 2: the eval tables, with the SQLite column types.
pub(super) const PG_MIGRATION: &str = "CREATE TABLE eval_runs (
            id          TEXT PRIMARY KEY,
            suite       TEXT NOT NULL,
            suite_hash  TEXT NOT NULL,
            targets     TEXT NOT NULL,
            cases       BIGINT NOT NULL,
            status      TEXT NOT NULL DEFAULT 'running',
            created_at  TEXT NOT NULL DEFAULT (to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')),
            finished_at TEXT
        );
        CREATE TABLE eval_cases (
            eval_run_id TEXT NOT NULL,
            case_key    TEXT NOT NULL,
            case_index  BIGINT NOT NULL,
            passed      BIGINT NOT NULL,
            cost_usd    DOUBLE PRECISION,
            result      TEXT NOT NULL,
            created_at  TEXT NOT NULL DEFAULT (to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')),
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

impl Ledger {
    /// Note an eval run before its first case is sent (or again on `--resume`).
    pub fn begin_eval_run(
        &self,
        id: &str,
        suite: &str,
        suite_hash: &str,
        targets: &[String],
        cases: u64,
    ) -> Result<(), LedgerError> {
        let targets = serde_json::to_string(targets).unwrap_or_else(|_| "[]".into());
        self.backend()
            .begin_eval_run(id, suite, suite_hash, &targets, cases as i64)
    }

    /// Record one finished case; committed when this returns, so it survives a crash or
    /// kill of this process; the next request row's flush makes it durable against a
    /// power cut too.
    pub fn record_eval_case(
        &self,
        eval_run_id: &str,
        row: &EvalCaseRow,
    ) -> Result<(), LedgerError> {
        self.backend().record_eval_case(eval_run_id, row)
    }

    /// Mark an eval run `done` or `interrupted`.
    pub fn end_eval_run(&self, id: &str, status: &str) -> Result<(), LedgerError> {
        self.backend().end_eval_run(id, status)
    }

    /// An eval run by id; `latest_for` instead picks the newest run of that suite file.
    pub fn eval_run(
        &self,
        id: Option<&str>,
        latest_for: Option<&str>,
    ) -> Result<Option<EvalRunRow>, LedgerError> {
        self.backend().eval_run(id, latest_for)
    }

    /// The finished cases of an eval run, in suite order.
    pub fn eval_cases(&self, eval_run_id: &str) -> Result<Vec<EvalCaseRow>, LedgerError> {
        self.backend().eval_cases(eval_run_id)
    }
}

#[cfg(test)]
mod tests {
    use super::super::LedgerOptions;
    use super::*;

    #[test]
    fn runs_and_cases_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open_in(dir.path(), LedgerOptions::default()).unwrap();
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
