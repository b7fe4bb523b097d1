//! The SQLite ledger: schema, durability across SIGKILL, concurrent writers, queries.
//!
//! The crash and concurrency tests re-run this test binary as a child process
//! (`ledger_child_writer`, which does nothing unless QUORUM_LEDGER_CHILD is set): the
//! child records requests in a loop and prints `COMMITTED <run id>` after each
//! `record` returns; the parent kills it or waits, then reopens the file.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use llm_quorum::engine::cost::Pricing;
use llm_quorum::engine::ledger::{
    self, BackgroundLedger, GroupBy, Ledger, LedgerOptions, LedgerSink, Shown,
};
use llm_quorum::engine::{tokens, Completion, CostSource, EngineError, FinishReason, ToolCall};
use support::ledger::{completion, costing, meta, reserve, ROOMY};

/// The child half of the crash and concurrency tests.
#[test]
fn ledger_child_writer() {
    let Ok(path) = std::env::var("QUORUM_LEDGER_CHILD") else {
        return;
    };
    let tag = std::env::var("QUORUM_LEDGER_TAG").unwrap();
    let n: u64 = std::env::var("QUORUM_LEDGER_N").unwrap().parse().unwrap();
    let l = Ledger::open(Path::new(&path), LedgerOptions::default()).unwrap();
    for i in 0..n {
        let run = format!("{tag}-{i}");
        l.record(&meta(&run, Some(&tag)), &completion(i)).unwrap();
        println!("COMMITTED {run}");
    }
}

fn spawn_child(path: &Path, tag: &str, n: u64) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "ledger_child_writer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("QUORUM_LEDGER_CHILD", path)
        .env("QUORUM_LEDGER_TAG", tag)
        .env("QUORUM_LEDGER_N", n.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The run id of a `COMMITTED` line (libtest may print its own words before it).
fn committed_id(line: &str) -> Option<String> {
    let at = line.find("COMMITTED ")?;
    Some(line[at + "COMMITTED ".len()..].trim().to_string())
}

fn committed_lines(out: impl std::io::Read) -> Vec<String> {
    BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| committed_id(&l))
        .collect()
}

fn run_ids(l: &Ledger, session: &str) -> std::collections::HashSet<String> {
    match l.show(session).unwrap() {
        Some(Shown::Session { requests, .. }) => requests.into_iter().map(|r| r.run_id).collect(),
        _ => Default::default(),
    }
}

#[test]
fn sigkill_mid_run_loses_no_request_that_had_finished() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite3");
    let mut child = spawn_child(&path, "crash", 1_000_000);
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut committed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut line = String::new();
    while committed.len() < 40 && Instant::now() < deadline {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(id) = committed_id(&line) {
            committed.push(id);
        }
    }
    assert!(
        committed.len() >= 40,
        "child wrote too little: {}",
        committed.len()
    );
    // SIGKILL while it is writing.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
    }
    // Lines it printed before dying were for committed rows too.
    committed.extend(committed_lines(reader));
    let l = Ledger::open(&path, LedgerOptions::default()).unwrap();
    let stored = run_ids(&l, "crash");
    for id in &committed {
        assert!(
            stored.contains(id),
            "{id} was reported committed but is missing"
        );
    }
    // At most the one in flight when killed is extra.
    assert!(
        stored.len() <= committed.len() + 1,
        "{} vs {}",
        stored.len(),
        committed.len()
    );
}

#[test]
fn two_processes_writing_one_ledger_at_once_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh").join("ledger.sqlite3");
    let n = 150;
    // Both start on a file that does not exist yet: creation and migration race too.
    let mut a = spawn_child(&path, "alpha", n);
    let mut b = spawn_child(&path, "beta", n);
    let out_a = committed_lines(a.stdout.take().unwrap());
    let out_b = committed_lines(b.stdout.take().unwrap());
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    assert_eq!((out_a.len(), out_b.len()), (n as usize, n as usize));
    let l = Ledger::open(&path, LedgerOptions::default()).unwrap();
    assert_eq!(l.request_count().unwrap(), 2 * n);
    let (sa, sb) = (run_ids(&l, "alpha"), run_ids(&l, "beta"));
    for id in &out_a {
        assert!(sa.contains(id), "{id}");
    }
    for id in &out_b {
        assert!(sb.contains(id), "{id}");
    }
    assert_eq!(l.version().unwrap(), ledger::schema_version());
}

#[test]
fn schema_is_versioned_wal_and_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a").join("quorum");
    let l = Ledger::open_in(&data, LedgerOptions::default()).unwrap();
    assert_eq!(l.version().unwrap(), ledger::schema_version());
    assert!(ledger::schema_version() >= 1);
    drop(l);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700, "data dir");
        assert_eq!(mode(&data.join("ledger.sqlite3")), 0o600, "db file");
    }
    // Plain SQLite sees the documented tables, in WAL mode.
    let c = rusqlite::Connection::open(data.join("ledger.sqlite3")).unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let mut st = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap();
    let names: Vec<String> = st
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        names,
        [
            "budget_spend",
            "eval_cases",
            "eval_runs",
            "prices",
            "requests",
            "runs",
            "sessions",
            "votes"
        ]
    );
    // Reopening an up-to-date file migrates nothing; a newer one is refused.
    let l = Ledger::open_in(&data, LedgerOptions::default()).unwrap();
    drop(l);
    c.pragma_update(None, "user_version", 99).unwrap();
    let err = Ledger::open_in(&data, LedgerOptions::default()).unwrap_err();
    assert!(
        matches!(err, ledger::LedgerError::Schema { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("newer"), "{err}");
    assert!(err.to_string().contains("upgrade quorum"), "{err}");
}

#[test]
fn a_request_round_trips_with_its_price_row_and_shows_by_any_id() {
    let dir = tempfile::tempdir().unwrap();
    let pricing = Pricing::builtin();
    let l = Ledger::open_in(dir.path(), LedgerOptions::default())
        .unwrap()
        .with_pricing(pricing.clone());
    l.start_session("s1", Some("trying things"), Some("tui"))
        .unwrap();
    let mut c = completion(1);
    c.thinking = "hmm".into();
    c.tool_calls = vec![ToolCall {
        id: "call_1".into(),
        name: "calc".into(),
        arguments: "{\"x\":1}".into(),
        ..Default::default()
    }];
    c.retries = 2;
    c.fell_back_from = Some("anthropic/claude-haiku-4-5".into());
    let id = l.record_request(&meta("run-1", Some("s1")), &c).unwrap();
    let mut failed = Completion {
        provider: "openai".into(),
        model: "mystery-model".into(),
        finish_reason: FinishReason::Error,
        error: Some(EngineError::RateLimited {
            retry_after: None,
            message: "slow down".into(),
        }),
        latency_ms: 5.0,
        ..Default::default()
    };
    pricing.apply(&mut failed);
    assert_eq!(failed.cost_source, CostSource::Unknown);
    l.record_request(&meta("run-1", Some("s1")), &failed)
        .unwrap();

    let Some(Shown::Request(r)) = l.show(&id.to_string()).unwrap() else {
        panic!("request by id")
    };
    assert_eq!(r.run_id, "run-1");
    assert_eq!(r.session_id.as_deref(), Some("s1"));
    assert_eq!(
        r.trace_id.as_deref(),
        Some("0af7651916cd43dd8448eb211c80319c")
    );
    assert_eq!(r.source_agent.as_deref(), Some("test"));
    assert_eq!(
        (r.provider.as_str(), r.model.as_str()),
        ("openai", "gpt-4o-mini")
    );
    assert_eq!(
        (r.input_tokens, r.output_tokens, r.cached_input_tokens),
        (101, 10, 50)
    );
    assert_eq!(r.cost_usd, c.cost_usd);
    assert_eq!(r.cost_source, "computed");
    assert_eq!(
        r.price_ref.as_deref(),
        Some("builtin:openai/gpt-4o-mini@2024-07-18")
    );
    assert_eq!((r.ttft_ms, r.latency_ms), (Some(12.5), Some(40.0)));
    assert_eq!((r.status.as_str(), r.retries), ("ok", 2));
    assert_eq!(
        r.fell_back_from.as_deref(),
        Some("anthropic/claude-haiku-4-5")
    );
    assert_eq!(r.prompt.as_deref(), Some("What is 2+2?"));
    assert_eq!(r.response.as_deref(), Some("answer 1"));
    assert_eq!(r.thinking.as_deref(), Some("hmm"));
    assert_eq!(r.tool_calls.as_ref().unwrap()[0]["arguments"]["x"], 1);
    assert!(!r.cache_hit);
    // The price row is kept in the ledger, so it explains the row whatever happens later.
    let row = l
        .price_row(r.price_ref.as_deref().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        (row["input"].as_f64(), row["output"].as_f64()),
        (Some(0.15), Some(0.6))
    );

    let Some(Shown::Run { requests, .. }) = l.show("run-1").unwrap() else {
        panic!("run by id")
    };
    assert_eq!(requests.len(), 2);
    let bad = &requests[1];
    assert_eq!(
        (bad.status.as_str(), bad.error_kind.as_deref()),
        ("error", Some("rate_limited"))
    );
    assert!(bad.error_message.as_deref().unwrap().contains("slow down"));
    assert_eq!(bad.cost_usd, None);
    let Some(Shown::Session { session, runs, .. }) = l.show("s1").unwrap() else {
        panic!("session by id")
    };
    assert_eq!(session.label.as_deref(), Some("trying things"));
    assert_eq!(
        (session.requests, session.unknown_cost, runs.len()),
        (2, 1, 1)
    );
    assert!(l.show("nothing-like-this").unwrap().is_none());

    // Totals: unknown costs are counted apart, never as $0.
    for by in [
        GroupBy::Session,
        GroupBy::Day,
        GroupBy::Provider,
        GroupBy::Model,
    ] {
        let t = l.totals(by).unwrap();
        let all: u64 = t.iter().map(|r| r.requests).sum();
        assert_eq!(all, 2, "{by:?}");
        let unknown: u64 = t.iter().map(|r| r.unknown_cost).sum();
        assert_eq!(unknown, 1, "{by:?}");
    }
    let by_model = l.totals(GroupBy::Model).unwrap();
    let m = by_model
        .iter()
        .find(|r| r.key == "openai/gpt-4o-mini")
        .unwrap();
    assert!((m.cost_usd - c.cost_usd.unwrap()).abs() < 1e-15);
    // Spend: today and in the session.
    let s = l.spend(Some("s1")).unwrap();
    assert!((s.today_usd - c.cost_usd.unwrap()).abs() < 1e-15);
    assert!((s.session_usd - c.cost_usd.unwrap()).abs() < 1e-15);
    assert_eq!(l.spend(Some("other")).unwrap().session_usd, 0.0);
    // Runs noted before sending keep their bound and targets.
    l.note_run(
        "run-2",
        Some("s1"),
        None,
        &["a/b".into(), "c/d".into()],
        Some(0.5),
        "p",
    )
    .unwrap();
    let Some(Shown::Run { run, .. }) = l.show("run-2").unwrap() else {
        panic!()
    };
    assert_eq!((run.targets.len(), run.projected_usd), (2, Some(0.5)));
}

#[test]
fn log_content_false_keeps_no_text() {
    let dir = tempfile::tempdir().unwrap();
    let l = Ledger::open_in(dir.path(), LedgerOptions { log_content: false }).unwrap();
    let mut c = completion(3);
    c.thinking = "secret thoughts".into();
    c.tool_calls = vec![ToolCall {
        id: "x".into(),
        name: "f".into(),
        arguments: "{}".into(),
        ..Default::default()
    }];
    l.record_request(&meta("run-x", None), &c).unwrap();
    let r = l.recent(1).unwrap().remove(0);
    assert_eq!(
        (r.prompt, r.response, r.thinking, r.tool_calls),
        (None, None, None, None)
    );
    assert_eq!(r.output_tokens, 10, "numbers are still kept");
    drop(l);
    let raw = std::fs::read(dir.path().join("ledger.sqlite3")).unwrap();
    let wal = std::fs::read(dir.path().join("ledger.sqlite3-wal")).unwrap_or_default();
    for needle in ["What is 2+2?", "answer 3", "secret thoughts"] {
        let hit = |b: &[u8]| b.windows(needle.len()).any(|w| w == needle.as_bytes());
        assert!(!hit(&raw) && !hit(&wal), "{needle:?} found on disk");
    }
}

#[test]
fn votes_are_kept_for_the_leaderboard() {
    let dir = tempfile::tempdir().unwrap();
    let l = Ledger::open_in(dir.path(), LedgerOptions::default()).unwrap();
    let t = vec!["openai/gpt-4o-mini".to_string(), "mock/alpha".to_string()];
    l.record_vote(Some("run-1"), &t, Some("openai/gpt-4o-mini"), Some("math"))
        .unwrap();
    l.record_vote(Some("run-2"), &t, None, None).unwrap();
    let v = l.votes().unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].winner.as_deref(), Some("openai/gpt-4o-mini"));
    assert_eq!(v[0].tag.as_deref(), Some("math"));
    assert_eq!(v[1].winner, None, "tie");
    assert_eq!(v[1].targets, t);
}

#[test]
fn the_background_ledger_opens_off_thread_and_records_durably() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bg").join("ledger.sqlite3");
    let t0 = Instant::now();
    let bg = BackgroundLedger::spawn(
        path.clone(),
        LedgerOptions::default(),
        Some(Pricing::builtin()),
    );
    let spawn_time = t0.elapsed();
    assert!(
        spawn_time < Duration::from_millis(50),
        "spawning took {spawn_time:?}"
    );
    bg.record(&meta("bg-1", None), &completion(1)).unwrap();
    assert!(bg.ready().unwrap().is_ok());
    let l = Ledger::open(&path, LedgerOptions::default()).unwrap();
    assert_eq!(l.request_count().unwrap(), 1);
    // A ledger that cannot open reports it on record, it does not panic.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let bad = BackgroundLedger::spawn(
        blocker.join("ledger.sqlite3"),
        LedgerOptions::default(),
        None,
    );
    assert!(bad.record(&meta("bg-2", None), &completion(2)).is_err());
}

#[test]
fn pricing_and_the_ledger_never_load_a_tokenizer() {
    // Nothing in this test binary counts tokens.
    let p = Pricing::builtin();
    assert!(p.lookup("openai", "gpt-4o-mini").is_some());
    let dir = tempfile::tempdir().unwrap();
    let l = Ledger::open_in(dir.path(), LedgerOptions::default()).unwrap();
    l.record_request(&meta("r", None), &completion(0)).unwrap();
    let _ = l.totals(GroupBy::Model).unwrap();
    let _ = tokens::quick_estimate("as you type");
    assert!(!tokens::is_loaded(tokens::Encoding::O200kBase));
    assert!(!tokens::is_loaded(tokens::Encoding::Cl100kBase));
}

#[test]
fn quorum_ledger_prints_totals_sessions_and_rows_as_json() {
    let data = tempfile::tempdir().unwrap();
    let quorum = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_quorum"))
            .args(args)
            .env("QUORUM_DATA_DIR", data.path())
            .output()
            .unwrap()
    };
    // No ledger yet: empty totals, and the file is not created by reading.
    let out = quorum(&["ledger", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["by_day"], serde_json::json!([]));
    assert!(!data.path().join("ledger.sqlite3").exists());
    let l = Ledger::open_in(data.path(), LedgerOptions::default()).unwrap();
    l.record(&meta("run-a", Some("s-1")), &completion(1))
        .unwrap();
    l.record(&meta("run-a", Some("s-1")), &completion(2))
        .unwrap();
    let mut unknown = completion(3);
    unknown.model = "mystery".into();
    Pricing::builtin().apply(&mut unknown);
    l.record(&meta("run-b", None), &unknown).unwrap();
    drop(l);
    let out = quorum(&["ledger", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in ["by_session", "by_day", "by_provider", "by_model"] {
        let n: u64 = v[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["requests"].as_u64().unwrap())
            .sum();
        assert_eq!(n, 3, "{k}");
    }
    let models = v["by_model"].as_array().unwrap();
    let mystery = models
        .iter()
        .find(|r| r["key"] == "openai/mystery")
        .unwrap();
    assert_eq!(
        (
            mystery["cost_usd"].as_f64(),
            mystery["unknown_cost"].as_u64()
        ),
        (Some(0.0), Some(1))
    );
    let out = quorum(&["ledger", "--by", "model"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("openai/mystery") && text.contains("+ 1?"),
        "{text}"
    );
    let out = quorum(&["ledger", "sessions", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["id"], "s-1");
    assert_eq!(
        (v[0]["runs"].as_u64(), v[0]["requests"].as_u64()),
        (Some(1), Some(2))
    );
    let out = quorum(&["ledger", "show", "run-a", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "run");
    assert_eq!(v["requests"].as_array().unwrap().len(), 2);
    let out = quorum(&["ledger", "show", "3"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("openai/gpt-4o-mini") && text.contains("?"),
        "{text}"
    );
    let out = quorum(&["ledger", "show", "no-such-thing"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn concurrent_writers_share_transactions_and_one_bad_row_fails_alone() {
    // Setup: a trigger refuses one answer; 16 threads record 20 requests each at once,
    // so rows are committed in shared batches (group commit).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite3");
    let l = std::sync::Arc::new(Ledger::open(&path, LedgerOptions::default()).unwrap());
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch(
        "CREATE TRIGGER no_13 BEFORE INSERT ON requests WHEN NEW.response = 'answer 13'
         BEGIN SELECT RAISE(ABORT, 'answer 13 refused'); END;",
    )
    .unwrap();
    drop(raw);

    // Exec.
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let l = l.clone();
            std::thread::spawn(move || {
                (0..20u64)
                    .map(|i| {
                        let run = format!("run-{t}-{i}");
                        (i, l.record_request(&meta(&run, None), &completion(i)))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<(u64, Result<i64, ledger::LedgerError>)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();

    // Check: exactly the refused answers failed, every other row is there once.
    for (i, r) in &results {
        assert_eq!(r.is_err(), *i == 13, "answer {i}: {r:?}");
    }
    let mut ids: Vec<i64> = results.iter().filter_map(|(_, r)| r.clone().ok()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 16 * 19, "every good row has its own id");
    assert_eq!(l.request_count().unwrap(), 16 * 19);
}

/// A ledger written before `requests.attachments` existed migrates forward: its rows
/// read back with no attachments, and new rows keep names, sizes and hashes.
#[test]
fn attachments_column_migrates_forward_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite3");
    let l = Ledger::open(&path, LedgerOptions::default()).unwrap();
    l.record(&meta("old", None), &completion(1)).unwrap();
    drop(l);
    // Back to the schema before the column (version 3; the budget counters of
    // version 5 and the leases of version 6 go too).
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "ALTER TABLE requests DROP COLUMN attachments;
         DROP TABLE budget_spend; ALTER TABLE runs DROP COLUMN held_usd;
         DROP INDEX requests_lease; ALTER TABLE requests DROP COLUMN lease_id;",
    )
    .unwrap();
    c.pragma_update(None, "user_version", 3).unwrap();
    drop(c);
    let l = Ledger::open(&path, LedgerOptions::default()).unwrap();
    assert_eq!(l.version().unwrap(), ledger::schema_version());
    let Some(Shown::Run { requests, .. }) = l.show("old").unwrap() else {
        panic!("the old run is gone");
    };
    assert!(requests[0].attachments.is_empty());
    let note = ledger::AttachmentNote {
        name: "notes/report.txt".into(),
        kind: "file".into(),
        media_type: "text/plain".into(),
        bytes: 12_345,
        sha256: "ab12cd34ef56".repeat(5) + "abcd",
    };
    let mut m = meta("new", None);
    m.attachments = vec![note.clone()];
    l.record(&m, &completion(2)).unwrap();
    let Some(Shown::Run { requests, .. }) = l.show("new").unwrap() else {
        panic!("the new run is missing");
    };
    assert_eq!(requests[0].attachments, vec![note.clone()]);
    assert_eq!(
        note.summary(),
        "notes/report.txt (12.3 KB, sha256 ab12cd34ef56…)"
    );
}

// --- Budget counters -----------------------------------------------------------------

use llm_quorum::engine::budget::Budget;
use llm_quorum::engine::ledger::Refused;

/// The holding half of the counters test: reserves three runs, records one request,
/// says `HELD` and waits to be killed (a crash with holds open).
#[test]
fn ledger_child_holder() {
    let Ok(path) = std::env::var("QUORUM_LEDGER_HOLDER") else {
        return;
    };
    let l = Ledger::open(Path::new(&path), LedgerOptions::default()).unwrap();
    for i in 0..3 {
        reserve(&l, &format!("dead-{i}"), Some("s-dead"), 0.004, &ROOMY).unwrap();
    }
    l.record(&meta("dead-0", Some("s-dead")), &costing(0, Some(0.001)))
        .unwrap();
    println!("HELD");
    std::thread::sleep(Duration::from_secs(300));
}

/// Every counter equals its recount from the rows; and today's spend is what the
/// rows say.
fn assert_counters_agree(l: &Ledger) -> ledger::CounterCheck {
    let c = l.budget_counters().unwrap();
    let diff = c.differences(1e-9);
    assert!(diff.is_empty(), "counters drifted from the rows: {diff:#?}");
    c
}

fn recount(c: &ledger::CounterCheck, scope: &str) -> (f64, i64) {
    c.recomputed
        .iter()
        .find(|(k, _, _)| k == scope)
        .map_or((0.0, 0), |(_, u, n)| (*u, *n))
}

fn today() -> String {
    let c = rusqlite::Connection::open_in_memory().unwrap();
    c.query_row("SELECT date('now', 'localtime')", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_lease_is_drawn_down_by_its_runs_requests_and_released_when_settled() {
    let dir = tempfile::tempdir().unwrap();
    let l = Ledger::open(&dir.path().join("ledger.sqlite3"), LedgerOptions::default()).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    reserve(&l, "lease-1", Some("s"), 0.012, &ROOMY).unwrap();
    assert_eq!(l.open_reservations().unwrap().0, 1);
    // A run on the lease holds nothing itself: its request's cost draws the lease down.
    let mut m = meta("run-a", Some("s"));
    m.lease_id = Some("lease-1".into());
    l.record(&m, &costing(1, Some(0.005))).unwrap();
    let (n, held) = l.open_reservations().unwrap();
    assert!(n == 1 && close(held, 0.007), "{n} open, ${held} held");
    let spend = l.spend(Some("s")).unwrap();
    assert!(close(spend.today_usd, 0.012), "{spend:?}");
    assert!(close(spend.session_usd, 0.012), "{spend:?}");
    // Another run's two requests, the second beyond what is left: the lease gives
    // what it has, no more.
    let mut b = meta("run-b", Some("s"));
    b.lease_id = Some("lease-1".into());
    l.record(&b, &costing(2, Some(0.004))).unwrap();
    let (_, held) = l.open_reservations().unwrap();
    assert!(close(held, 0.003), "${held} held");
    l.record(&b, &costing(3, Some(0.006))).unwrap();
    let (n, held) = l.open_reservations().unwrap();
    assert!(n == 1 && close(held, 0.0), "{n} open, ${held} held");
    let spend = l.spend(Some("s")).unwrap();
    assert!(close(spend.today_usd, 0.015), "{spend:?}");
    l.settle_run("lease-1").unwrap();
    assert_eq!(l.open_reservations().unwrap().0, 0);
    assert_counters_agree(&l);
}

#[test]
fn budget_counters_equal_a_recount_after_a_mixed_workload_a_crash_and_a_migration() {
    // Setup: a process that dies holding reservations.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite3");
    let l = std::sync::Arc::new(Ledger::open(&path, LedgerOptions::default()).unwrap());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "ledger_child_holder",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("QUORUM_LEDGER_HOLDER", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let held = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("HELD"));
    assert!(held, "the holder never held");
    let (n, usd) = l.open_reservations().unwrap();
    assert_eq!(n, 3);
    assert!((usd - (0.012 - 0.001)).abs() < 1e-12, "{usd}");
    assert_counters_agree(&l);
    child.kill().unwrap();
    child.wait().unwrap();

    // Exec: the mixed concurrent workload.
    support::ledger::mixed_workload(&l);
    // A run noted twice holds its second bound less what it already cost.
    reserve(&l, "renoted", Some("s0"), 0.01, &ROOMY).unwrap();
    l.record(&meta("renoted", Some("s0")), &costing(0, Some(0.004)))
        .unwrap();
    reserve(&l, "renoted", Some("s0"), 0.02, &ROOMY).unwrap();
    // A refused run holds nothing.
    let tight = Budget {
        session_usd: None,
        daily_usd: Some(0.01),
    };
    assert!(matches!(
        reserve(&l, "refused", Some("s0"), 0.01, &tight),
        Err(Refused::Budget(_))
    ));

    // Check: the dead process's holds were expired; every counter equals its recount;
    // spend and open reservations read the same figures.
    let c = assert_counters_agree(&l);
    let raw = rusqlite::Connection::open(&path).unwrap();
    let open_dead: i64 = raw
        .query_row(
            "SELECT COUNT(*) FROM runs WHERE id LIKE 'dead-%' AND settled_at IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(open_dead, 0, "the dead process's holds are still open");
    let (held, open) = recount(&c, "held");
    assert_eq!(open, 8 + 8 + 1, "open-*, unsettled overshoots, renoted");
    let want_held = 8.0 * 0.007 + (0.02 - 0.004);
    assert!((held - want_held).abs() < 1e-9, "{held} vs {want_held}");
    assert_eq!(l.open_reservations().unwrap().0 as i64, open);
    let day = recount(&c, &format!("day:{}", today())).0;
    let s = l.spend(Some("s-open")).unwrap();
    assert!((s.today_usd - (day + held)).abs() < 1e-9);
    let (spent_open, _) = recount(&c, "session:s-open");
    let (held_open, _) = recount(&c, "held:s-open");
    assert!((s.session_usd - (spent_open + held_open)).abs() < 1e-9);
    assert!((spent_open - 8.0 * 0.003).abs() < 1e-9);
    assert!(l.spend(Some("refused")).unwrap().session_usd == 0.0);

    // A ledger from before the counters migrates forward to the same counters.
    let kept = c.kept.clone();
    drop(l);
    raw.execute_batch(
        "DROP TABLE budget_spend; ALTER TABLE runs DROP COLUMN held_usd;
         DROP INDEX requests_lease; ALTER TABLE requests DROP COLUMN lease_id;",
    )
    .unwrap();
    raw.pragma_update(None, "user_version", ledger::schema_version() - 2)
        .unwrap();
    drop(raw);
    let l = Ledger::open(&path, LedgerOptions::default()).unwrap();
    let c = assert_counters_agree(&l);
    let again = ledger::CounterCheck {
        kept,
        recomputed: c.kept,
    };
    assert!(
        again.differences(1e-9).is_empty(),
        "{:#?}",
        again.differences(1e-9)
    );
}

#[test]
fn a_new_day_starts_at_zero_and_yesterday_stays_in_its_own_counter() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite3");
    let l = Ledger::open(&path, LedgerOptions::default()).unwrap();
    reserve(&l, "r1", Some("s"), 0.01, &ROOMY).unwrap();
    l.record(&meta("r1", Some("s")), &costing(1, Some(0.004)))
        .unwrap();
    l.settle_run("r1").unwrap();
    assert!((l.spend(None).unwrap().today_usd - 0.004).abs() < 1e-12);
    // The same ledger seen a day later: its rows (and so its day counter) are
    // yesterday's.
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch(
        "UPDATE requests SET created_at =
             strftime('%Y-%m-%dT%H:%M:%fZ', created_at, '-1 day');
         UPDATE budget_spend SET scope = 'day:' || date('now', 'localtime', '-1 day')
          WHERE scope = 'day:' || date('now', 'localtime');",
    )
    .unwrap();
    assert_counters_agree(&l);
    let s = l.spend(Some("s")).unwrap();
    assert_eq!(s.today_usd, 0.0, "yesterday's spend counted today");
    assert!(
        (s.session_usd - 0.004).abs() < 1e-12,
        "a session spans days"
    );
    // Today's first request starts today's counter.
    reserve(&l, "r2", Some("s"), 0.01, &ROOMY).unwrap();
    l.record(&meta("r2", Some("s")), &costing(2, Some(0.001)))
        .unwrap();
    l.settle_run("r2").unwrap();
    assert_counters_agree(&l);
    let s = l.spend(Some("s")).unwrap();
    assert!((s.today_usd - 0.001).abs() < 1e-12);
    assert!((s.session_usd - 0.005).abs() < 1e-12);
}

/// The one tally adds completions as the ledger's own totals do, and the rows read
/// back tally the same: errors and cancels, unknown costs, estimated costs and cache
/// hits (a hit is a request, but its replayed tokens are not counted again).
#[test]
fn the_tally_of_completions_is_the_ledgers_totals_and_its_rows() {
    use llm_quorum::engine::Tally;
    let dir = tempfile::tempdir().unwrap();
    let l = Ledger::open_in(dir.path(), LedgerOptions::default()).unwrap();
    let mut failed = completion(1);
    failed.error = Some(EngineError::RateLimited {
        message: "slow down".into(),
        retry_after: None,
    });
    let mut cancelled = completion(2);
    cancelled.error = Some(EngineError::Cancelled);
    cancelled.cost_source = CostSource::Estimated;
    let mut unknown = completion(3);
    unknown.cost_usd = None;
    unknown.cost_source = CostSource::Unknown;
    let mut hit = completion(4);
    hit.cached = true;
    hit.cost_usd = Some(0.0);
    hit.cost_source = CostSource::Cached;
    let cs = [completion(0), failed, cancelled, unknown, hit];
    for c in &cs {
        l.record_request(&meta("run-t", Some("s-t")), c).unwrap();
    }
    let t = Tally::of(&cs);
    assert_eq!((t.requests, t.errors, t.cancelled), (5, 1, 1));
    assert_eq!((t.unpriced, t.estimated, t.cache_hits), (1, 1, 1));

    let totals = l.totals(GroupBy::Session).unwrap();
    let row = totals.iter().find(|r| r.key == "s-t").expect("the session");
    assert_eq!(row.requests, t.requests);
    assert_eq!(row.failed, t.failed());
    assert_eq!(row.unknown_cost, t.unpriced);
    assert_eq!(row.estimated, t.estimated);
    assert_eq!(row.cache_hits, t.cache_hits);
    assert_eq!(row.input_tokens, t.usage.input_tokens);
    assert_eq!(row.output_tokens, t.usage.output_tokens);
    assert_eq!(row.cached_input_tokens, t.usage.cached_input_tokens);
    assert_eq!(row.reasoning_tokens, t.usage.reasoning_tokens);
    assert!((row.cost_usd - t.cost_usd).abs() < 1e-12, "{row:?} {t:?}");

    let Some(Shown::Run { requests, .. }) = l.show("run-t").unwrap() else {
        panic!("run-t is there");
    };
    let back = Tally::of_rows(&requests);
    assert_eq!(
        Tally {
            cost_usd: 0.0,
            ..back
        },
        Tally { cost_usd: 0.0, ..t }
    );
    assert!((back.cost_usd - t.cost_usd).abs() < 1e-12, "{back:?} {t:?}");
}

/// An ungated run's note does not wait for a commit: it rides in the next one, and
/// when no row follows (a run that writes none) it is committed on its own, visible
/// to another connection, and its handler hears once that it was.
#[test]
fn a_passenger_note_is_committed_though_its_run_writes_no_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite3");
    let l = Ledger::open(&path, LedgerOptions::default()).unwrap();
    let targets = vec!["openai/gpt-4o-mini".to_string()];
    let note = ledger::RunNote {
        run_id: "rowless",
        session_id: Some("s1"),
        budget_session: None,
        trace_id: Some("0123456789abcdef0123456789abcdef"),
        targets: &targets,
        projected_usd: None,
        prompt: "hi",
    };
    let (tx, rx) = std::sync::mpsc::channel();
    l.note_run_passenger(&note, move |r| tx.send(r).unwrap());
    let r = rx
        .recv_timeout(support::PATIENCE)
        .expect("the note's outcome");
    assert_eq!(r, Ok(()));
    // Committed: another connection sees it, with its targets.
    let other = Ledger::open(&path, LedgerOptions::default()).unwrap();
    match other.show("rowless").unwrap() {
        Some(Shown::Run { run, .. }) => assert_eq!(run.targets, targets),
        other => panic!("{other:?}"),
    }
    assert!(rx.try_recv().is_err(), "told once");
}

/// A passenger note whose write fails is reported to its handler (the front door
/// counts it in the ledger's health), and the request row that rode with it is still
/// written: one bad op never fails its neighbours.
#[test]
fn a_passenger_note_that_fails_is_reported_and_its_row_still_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite3");
    let l = Ledger::open(&path, LedgerOptions::default()).unwrap();
    support::ledger::refuse_run_notes(&path);
    let targets = vec!["openai/gpt-4o-mini".to_string()];
    let note = ledger::RunNote {
        run_id: "unnoted",
        session_id: None,
        budget_session: None,
        trace_id: None,
        targets: &targets,
        projected_usd: None,
        prompt: "hi",
    };
    let (tx, rx) = std::sync::mpsc::channel();
    l.note_run_passenger(&note, move |r| tx.send(r).unwrap());
    l.record(&meta("unnoted", None), &completion(1)).unwrap();
    let r = rx
        .recv_timeout(support::PATIENCE)
        .expect("the note's outcome");
    let e = r.expect_err("the note cannot be written");
    assert!(e.to_string().contains("disk is full"), "{e}");
    assert_eq!(l.run_requests("unnoted").unwrap().len(), 1);
}
