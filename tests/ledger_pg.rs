//! The shared PostgreSQL ledger against a real PostgreSQL (a throwaway cluster per
//! test, see `support::pg`): replicas sharing one daily cap, a database that goes away
//! mid-run and comes back, and `quorum ledger migrate` from an SQLite ledger. Each test
//! prints `SKIP:` and returns when PostgreSQL is not installed.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use llm_quorum::engine::ledger::{GroupBy, Ledger, LedgerOptions, Location, Shown};
use serde_json::{json, Value};
use support::ledger::{completion, costing, meta, reserve, ROOMY};
use support::pg::{cluster_or_skip, PgCluster};
use support::serve::http;
use support::{Reply, Server};

const FAKE_KEY: &str = "sk-quorum-test-FAKEKEY-0123456789abcdef";

/// An OpenAI stream of `out` output tokens (14 prompt tokens).
fn openai_sse(out: u64) -> String {
    format!(
        "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"4\"}},\"finish_reason\":null}}]}}\n\n\
         data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\n\
         data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{{\"prompt_tokens\":14,\"completion_tokens\":{out},\"total_tokens\":{}}}}}\n\n\
         data: [DONE]\n\n",
        14 + out
    )
}

/// `quorum` with a clean environment, its data and config in `dir`, the ledger in
/// the cluster: the config names `${QUORUM_TEST_PG_URL}`, so the password is only
/// in the environment.
fn command(dir: &Path, config: &str, upstream: &str, pg: &PgCluster) -> Command {
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!("{config}\n[ledger]\nurl = \"${{QUORUM_TEST_PG_URL}}\"\n"),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quorum"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("QUORUM_DATA_DIR", dir.join("data"))
        .env("QUORUM_CONFIG", &cfg)
        .env("QUORUM_NO_DISCOVERY", "1")
        .env("QUORUM_TEST_PG_URL", pg.url())
        .env("OPENAI_API_KEY", FAKE_KEY)
        .env("OPENAI_BASE_URL", format!("{upstream}/v1"));
    cmd
}

/// `quorum serve` from `cmd` (environment and config set).
fn serve(cmd: Command) -> support::serve::Serve {
    support::serve::start(cmd, &[])
}

async fn rpc(url: &str, method: &str, params: Value) -> Value {
    http()
        .post(format!("{url}/rpc"))
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn open(pg: &PgCluster) -> Ledger {
    Ledger::open_at(&Location::Url(pg.url()), LedgerOptions::default()).unwrap()
}

fn spent(l: &Ledger) -> f64 {
    l.totals(GroupBy::Provider)
        .unwrap()
        .iter()
        .map(|t| t.cost_usd)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_one_postgres_never_cross_the_daily_cap() {
    let Some(pg) = cluster_or_skip() else { return };
    // Setup: each answer uses 500 of the 1000 output tokens allowed, so a request's
    // bound (~$0.0006) is about twice its real cost (~$0.0003). The upstream is slow
    // enough that many requests are in flight at once. Two data dirs: the replicas
    // share nothing but the database.
    let up = Server::start(vec![
        Reply::sse(openai_sse(500)).chunked(48, Duration::from_millis(10))
    ])
    .await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cap = 0.006;
    let config = format!("[budget]\ndaily_usd = {cap}\n");
    let a = serve(command(da.path(), &config, &up.url, &pg));
    let b = serve(command(db.path(), &config, &up.url, &pg));

    // Exec: 2 processes x 50 concurrent requests.
    let mut calls = Vec::new();
    for s in [&a, &b] {
        for i in 0..50 {
            let url = s.url.clone();
            calls.push(tokio::spawn(async move {
                rpc(
                    &url,
                    "llm.complete",
                    json!({"model": "openai/gpt-4o-mini", "prompt": format!("question {i}"),
                           "max_tokens": 1000}),
                )
                .await
            }));
        }
    }
    let (mut ok, mut refused) = (0, 0);
    for c in calls {
        let v = c.await.unwrap();
        if v["error"].is_null() {
            ok += 1;
        } else {
            assert_eq!(v["error"]["data"]["kind"], "budget", "{v}");
            refused += 1;
        }
    }

    // Check: the cap held across both processes, and nothing refused went upstream.
    let l = tokio::task::spawn_blocking({
        let url = pg.url();
        move || Ledger::open_at(&Location::Url(url), LedgerOptions::default()).unwrap()
    })
    .await
    .unwrap();
    let l = Arc::new(l);
    let l2 = l.clone();
    let (spent, rows) =
        tokio::task::spawn_blocking(move || (spent(&l2), l2.request_count().unwrap()))
            .await
            .unwrap();
    eprintln!("answered {ok}, refused {refused}, recorded ${spent:.6} against a cap of ${cap}");
    assert!(
        spent <= cap,
        "recorded spend ${spent} crossed the cap ${cap}"
    );
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
    assert_eq!(rows, ok as u64, "one row per answered request");
    assert_eq!(up.count(), ok, "refused requests never reach the upstream");
    let l3 = l.clone();
    assert!(
        support::eventually(move || l3.open_reservations().unwrap().0 == 0).await,
        "every reservation is settled"
    );
    // The password was only ever in the environment, and never in a log line.
    for s in [&a, &b] {
        let log = s.stderr();
        assert!(!log.contains(&pg.password), "the password leaked: {log}");
    }
    drop(l);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_drawing_on_budget_leases_in_one_postgres_never_cross_the_daily_cap() {
    let Some(pg) = cluster_or_skip() else { return };
    // Setup: a cap large enough for leases (each holds 1/64 of it, about three
    // requests' bounds) and answers that use 90% of their bound: about 200 requests
    // fit under the cap. Two data dirs: the replicas share nothing but the database.
    let up = Server::start(vec![
        Reply::sse(openai_sse(900)).chunked(48, Duration::from_millis(5))
    ])
    .await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cap = 0.12;
    let config = format!("[budget]\ndaily_usd = {cap}\n");
    let a = serve(command(da.path(), &config, &up.url, &pg));
    let b = serve(command(db.path(), &config, &up.url, &pg));

    // Exec: 2 processes x 20 clients, each asking until it is refused.
    let (ok, refused) = support::serve::complete_until_refused(&[&a.url, &b.url], 20).await;

    // Check: leases were used, the cap held across both processes, nothing refused
    // went upstream, every lease is released, and the counters equal a recount.
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let leases = count("SELECT COUNT(*) FROM runs WHERE id LIKE 'lease-%'").await;
    let on_lease = count("SELECT COUNT(*) FROM requests WHERE lease_id IS NOT NULL").await;
    let l = tokio::task::spawn_blocking({
        let url = pg.url();
        move || Ledger::open_at(&Location::Url(url), LedgerOptions::default()).unwrap()
    })
    .await
    .unwrap();
    let l = Arc::new(l);
    let l2 = l.clone();
    let (spent, rows) =
        tokio::task::spawn_blocking(move || (spent(&l2), l2.request_count().unwrap()))
            .await
            .unwrap();
    eprintln!(
        "answered {ok} ({on_lease} on {leases} leases), refused {refused}, \
         recorded ${spent:.6} against a cap of ${cap}"
    );
    assert!(leases > 0 && on_lease > 0, "no request drew on a lease");
    assert!(
        spent <= cap,
        "recorded spend ${spent} crossed the cap ${cap}"
    );
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
    assert_eq!(rows, ok as u64, "one row per answered request");
    assert_eq!(up.count(), ok, "refused requests never reach the upstream");
    let l3 = l.clone();
    assert!(
        support::eventually(move || l3.open_reservations().unwrap().0 == 0).await,
        "every lease and reservation is released"
    );
    let l4 = l.clone();
    let diff = tokio::task::spawn_blocking(move || l4.budget_counters().unwrap().differences(1e-9))
        .await
        .unwrap();
    assert!(diff.is_empty(), "counters drifted from the rows: {diff:#?}");
    drop(l);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_stopped_mid_run_loses_and_doubles_nothing() {
    let Some(pg) = cluster_or_skip() else { return };
    // Setup: one replica without a budget, so rows the database cannot take are
    // spooled; four clients keep sending while the database stops and restarts.
    let up = Server::start(vec![
        Reply::sse(openai_sse(5)).chunked(64, Duration::from_millis(2))
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = serve(command(dir.path(), "", &up.url, &pg));
    let answered = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (url, answered, failed, stop) = (
            s.url.clone(),
            answered.clone(),
            failed.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let r = http()
                    .post(format!("{url}/v1/chat/completions"))
                    .json(&json!({"model": "openai/gpt-4o-mini",
                                  "messages": [{"role": "user", "content": format!("q {w}-{i}")}]}))
                    .send()
                    .await
                    .unwrap();
                if r.status() == 200 {
                    r.bytes().await.unwrap();
                    answered.fetch_add(1, Ordering::SeqCst);
                } else {
                    eprintln!("{}: {}", r.status(), r.text().await.unwrap_or_default());
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    let at_least = |n: usize| {
        let a = answered.clone();
        async move { support::eventually(move || a.load(Ordering::SeqCst) >= n).await }
    };

    // Exec: up, down, up again.
    assert!(at_least(20).await);
    tokio::task::block_in_place(|| pg.stop());
    let before = answered.load(Ordering::SeqCst);
    assert!(
        at_least(before + 20).await,
        "answers go on while the database is away"
    );
    let h = rpc(&s.url, "llm.health", json!({})).await;
    assert!(
        h["result"]["ledger_backlog"].as_u64().unwrap_or(0) > 0,
        "{h}"
    );
    assert_eq!(h["result"]["ledger"], "spooling", "{h}");
    let m = s.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("quorum_ledger_backlog ") && !l.ends_with(" 0")),
        "{m}"
    );
    tokio::task::block_in_place(|| pg.restart());
    let before = answered.load(Ordering::SeqCst);
    assert!(at_least(before + 20).await);
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }

    // Check: the spool drains, and every answered request is in the database once.
    let url = s.url.clone();
    let mut drained = false;
    for _ in 0..600 {
        let h = rpc(&url, "llm.health", json!({})).await;
        if h["result"]["ledger_backlog"] == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(drained, "the spool drained");
    let total = answered.load(Ordering::SeqCst);
    assert_eq!(failed.load(Ordering::SeqCst), 0, "no request failed");
    let url = pg.url();
    let (rows, distinct) = tokio::task::spawn_blocking(move || {
        let l = Ledger::open_at(&Location::Url(url), LedgerOptions::default()).unwrap();
        let rows = l.recent(100_000).unwrap();
        let prompts: std::collections::HashSet<String> =
            rows.iter().filter_map(|r| r.prompt.clone()).collect();
        (rows.len(), prompts.len())
    })
    .await
    .unwrap();
    eprintln!("answered {total}, rows {rows}");
    assert_eq!(rows, total, "every answered request is recorded");
    assert_eq!(distinct, total, "and recorded once");
    assert_eq!(up.count(), total);
}

/// `quorum ledger ARGS --json` against `dir`'s ledger (PostgreSQL when `pg` is given).
fn report(dir: &Path, pg: Option<&PgCluster>, args: &[&str]) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quorum"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("QUORUM_DATA_DIR", dir.join("data"))
        .env("QUORUM_CONFIG", dir.join("none.toml"))
        .env("TZ", "UTC")
        .args(["ledger"])
        .args(args)
        .arg("--json");
    if let Some(pg) = pg {
        cmd.env("QUORUM_LEDGER_URL", pg.url());
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "ledger {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Row ids are the database's own; everything else must match.
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                if m.get("id").is_some_and(|i| i.is_i64()) {
                    m.remove("id");
                }
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

fn migrate(dir: &Path, pg: &PgCluster) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_quorum"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("QUORUM_DATA_DIR", dir.join("data"))
        .env("QUORUM_CONFIG", dir.join("none.toml"))
        .args(["ledger", "migrate", "--to", &pg.url(), "--json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "migrate: {err}");
    assert!(!err.contains(&pg.password), "the password leaked: {err}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn migrate_round_trips_an_sqlite_ledger_and_resumes() {
    let Some(pg) = cluster_or_skip() else { return };
    // Setup: a ledger made by the SQLite code: sessions, runs, requests (one failed),
    // price rows and votes.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let l = Ledger::open_in(&data, LedgerOptions::default())
            .unwrap()
            .with_pricing(llm_quorum::engine::cost::Pricing::builtin());
        l.start_session("s1", Some("trying things"), Some("tui"))
            .unwrap();
        let t = vec![
            "openai/gpt-4o-mini".to_string(),
            "openai/gpt-4o".to_string(),
        ];
        l.note_run("run-1", Some("s1"), None, &t, Some(0.01), "What is 2+2?")
            .unwrap();
        for i in 0..7 {
            l.record_request(&meta("run-1", Some("s1")), &completion(i))
                .unwrap();
        }
        let mut failed = completion(9);
        failed.error = Some(llm_quorum::engine::EngineError::RateLimited {
            message: "slow down".into(),
            retry_after: None,
        });
        let mut m = meta("run-2", None);
        m.attachments = vec![llm_quorum::engine::ledger::AttachmentNote {
            name: "dot.png".into(),
            kind: "image".into(),
            media_type: "image/png".into(),
            bytes: 70,
            sha256: "4ff6ab670a58c14270e034e2090d9a432caa263a14e0a25785386b0c12f880b5".into(),
        }];
        l.record_request(&m, &failed).unwrap();
        l.record_vote(Some("run-1"), &t, Some("openai/gpt-4o"), Some("math"))
            .unwrap();
        l.record_vote(Some("run-1"), &t, None, None).unwrap();
        l.begin_eval_run("ev-1", "suite.toml", "h1", &t, 2).unwrap();
        l.record_eval_case(
            "ev-1",
            &llm_quorum::engine::ledger::EvalCaseRow {
                case_key: "c1".into(),
                case_index: 0,
                passed: true,
                cost_usd: Some(0.001),
                result: "{}".into(),
            },
        )
        .unwrap();
        l.end_eval_run("ev-1", "done").unwrap();
    }

    // Exec: migrate, then again (nothing new), then after losing rows (resumes).
    let first = migrate(dir.path(), &pg);
    assert_eq!(first["requests_after"], 8, "{first}");
    assert!(first["written"].as_u64().unwrap() > 8, "{first}");
    let again = migrate(dir.path(), &pg);
    assert_eq!(again["written"], 0, "a second run copies nothing: {again}");
    // The copied costs are in the budget counters, once.
    let counters = open(&pg).budget_counters().unwrap();
    assert!(
        counters.differences(1e-9).is_empty(),
        "{:#?}",
        counters.differences(1e-9)
    );
    assert!(counters
        .kept
        .iter()
        .any(|(k, u, _)| k.starts_with("day:") && *u > 0.0));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c.execute("DELETE FROM requests WHERE id > 3", &[])
            .await
            .unwrap();
    });
    let resumed = migrate(dir.path(), &pg);
    assert_eq!(resumed["written"], 5, "only the missing rows: {resumed}");
    assert_eq!(resumed["requests_after"], 8, "{resumed}");

    // Check: every report reads the same from both backends.
    for args in [
        vec![],
        vec!["sessions"],
        vec!["show", "run-1"],
        vec!["show", "s1"],
        vec!["show", "run-2"],
    ] {
        let a = report(dir.path(), None, &args);
        let b = report(dir.path(), Some(&pg), &args);
        assert_eq!(a, b, "ledger {args:?} differs");
    }
    let l = open(&pg);
    let Some(Shown::Run { requests, .. }) = l.show("run-2").unwrap() else {
        panic!("run-2 is there");
    };
    assert!(requests[0]
        .error_message
        .as_deref()
        .unwrap()
        .contains("slow down"));
    assert_eq!(requests[0].attachments.len(), 1);
    assert_eq!(requests[0].attachments[0].name, "dot.png");
    assert_eq!(requests[0].attachments[0].bytes, 70);
    assert_eq!(l.votes().unwrap().len(), 2);
    let sqlite = Ledger::open_in(&data, LedgerOptions::default()).unwrap();
    assert_eq!(l.votes().unwrap(), sqlite.votes().unwrap());
    assert!(l.price_row("builtin:openai/gpt-4o-mini").is_ok());
    assert_eq!(
        l.eval_run(None, Some("suite.toml")).unwrap(),
        sqlite.eval_run(None, Some("suite.toml")).unwrap()
    );
    assert_eq!(
        l.eval_cases("ev-1").unwrap(),
        sqlite.eval_cases("ev-1").unwrap()
    );
    assert_eq!(l.eval_cases("ev-1").unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_budget_an_unreachable_database_refuses_before_sending() {
    let Some(pg) = cluster_or_skip() else { return };
    // Setup: a replica with a daily cap; one request goes through, then the
    // database stops.
    let up = Server::start(vec![Reply::sse(openai_sse(5))]).await;
    let dir = tempfile::tempdir().unwrap();
    let s = serve(command(
        dir.path(),
        "[budget]\ndaily_usd = 5.0\n",
        &up.url,
        &pg,
    ));
    let params =
        json!({"model": "openai/gpt-4o-mini", "prompt": "What is 2+2?", "max_tokens": 100});
    let v = rpc(&s.url, "llm.complete", params.clone()).await;
    assert!(v["error"].is_null(), "{v}");
    tokio::task::block_in_place(|| pg.stop());

    // Exec: spending so far cannot be read, so the cap cannot be checked.
    let v = rpc(&s.url, "llm.complete", params).await;

    // Check: refused, loudly, naming the database without its password; nothing sent;
    // nothing spooled (fail closed).
    assert_eq!(v["error"]["code"], -32603, "{v}");
    let msg = v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("127.0.0.1"), "{msg}");
    assert!(msg.contains("***") && !msg.contains(&pg.password), "{msg}");
    assert_eq!(up.count(), 1, "nothing reached the upstream");
    assert!(!dir
        .path()
        .join("data")
        .join(llm_quorum::engine::ledger::LEDGER_SPOOL_FILE)
        .exists());
    let log = s.stderr();
    assert!(!log.contains(&pg.password), "the password leaked: {log}");
}

// --- Budget counters -----------------------------------------------------------------

use llm_quorum::engine::budget::Budget;
use llm_quorum::engine::ledger::{LedgerSink, Refused};

/// The first column of the first row of `q`, as text.
fn sql(pg: &PgCluster, q: &str) -> Option<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c.simple_query(q)
            .await
            .unwrap()
            .into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(String::from),
                _ => None,
            })
    })
}

#[test]
fn budget_counters_equal_a_recount_after_a_mixed_workload_and_a_crash() {
    let Some(pg) = cluster_or_skip() else { return };
    let l = Arc::new(open(&pg));
    // Setup: holds of a process that crashed (its pid is gone).
    for i in 0..3 {
        reserve(&l, &format!("dead-{i}"), Some("s-dead"), 0.004, &ROOMY).unwrap();
    }
    l.record(&meta("dead-0", Some("s-dead")), &costing(0, Some(0.001)))
        .unwrap();
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    sql(
        &pg,
        &format!("UPDATE runs SET pid = {pid} WHERE id LIKE 'dead-%'"),
    );
    assert_eq!(l.open_reservations().unwrap().0, 3);

    // Exec: the mixed concurrent workload.
    support::ledger::mixed_workload(&l);
    let tight = Budget {
        session_usd: None,
        daily_usd: Some(0.01),
    };
    assert!(matches!(
        reserve(&l, "refused", Some("s0"), 0.01, &tight),
        Err(Refused::Budget(_))
    ));

    // Check: the crashed process's holds expired; every counter equals its recount;
    // spend and open reservations read the same figures.
    let c = l.budget_counters().unwrap();
    assert!(c.differences(1e-9).is_empty(), "{:#?}", c.differences(1e-9));
    assert_eq!(
        sql(
            &pg,
            "SELECT COUNT(*) FROM runs WHERE id LIKE 'dead-%' AND settled_at IS NULL"
        )
        .as_deref(),
        Some("0")
    );
    let find = |k: &str| {
        c.recomputed
            .iter()
            .find(|(s, _, _)| s == k)
            .map_or((0.0, 0), |(_, u, n)| (*u, *n))
    };
    let (held, open_runs) = find("held");
    assert_eq!(open_runs, 8 + 8, "open-* and unsettled overshoots");
    assert!((held - 8.0 * 0.007).abs() < 1e-9, "{held}");
    assert_eq!(l.open_reservations().unwrap().0 as i64, open_runs);
    let day: f64 = c
        .recomputed
        .iter()
        .filter(|(k, _, _)| k.starts_with("day:"))
        .map(|(_, u, _)| u)
        .sum();
    let s = l.spend(Some("s-open")).unwrap();
    assert!((s.today_usd - (day + held)).abs() < 1e-9, "{s:?}");
    assert!(
        (s.session_usd - (8.0 * 0.003 + 8.0 * 0.007)).abs() < 1e-9,
        "{s:?}"
    );
    // The reports read the same spend as the counters.
    assert!((spent(&l) - day).abs() < 1e-9);
}
