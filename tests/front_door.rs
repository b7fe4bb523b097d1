//! The front door as every face meets it: the same `cheapest:` name works in `ask`,
//! `exec`, `compare` and both `serve` APIs; budgets hold across processes sharing one
//! ledger; a ledger that cannot be used refuses before anything is sent, and a
//! ledger write that fails after an answer is said out loud.
//!
//! Every upstream is a real HTTP server on 127.0.0.1; every ledger a real SQLite file.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
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

/// `quorum` with a clean environment, its data and config in `dir`.
fn command(dir: &Path, config: &str, upstream: &str) -> Command {
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quorum"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("QUORUM_DATA_DIR", dir.join("data"))
        .env("QUORUM_CONFIG", &cfg)
        .env("QUORUM_NO_DISCOVERY", "1")
        .env("OPENAI_API_KEY", FAKE_KEY)
        .env("OPENAI_BASE_URL", format!("{upstream}/v1"));
    cmd
}

fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(s) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
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

/// The model every request upstream asked for.
fn models_seen(up: &Server) -> Vec<String> {
    up.requests()
        .iter()
        .map(|r| r.json()["model"].as_str().unwrap_or("").to_string())
        .collect()
}

const TIERS: &str = "[tiers]\nfast = [\"openai/gpt-4o\", \"openai/gpt-4o-mini\"]\n";

#[tokio::test(flavor = "multi_thread")]
async fn the_same_cheapest_name_works_in_every_face() {
    let up = Server::start(vec![Reply::sse(openai_sse(1))]).await;
    let dir = tempfile::tempdir().unwrap();
    let cmd = || command(dir.path(), TIERS, &up.url);

    let mut ask = cmd();
    ask.args(["ask", "-m", "cheapest:fast", "What is 2+2?"]);
    let out = run(ask, None);
    assert_eq!(out.status.code(), Some(0), "ask: {}", text(&out.stderr));

    let mut exec = cmd();
    exec.arg("exec");
    let out = run(
        exec,
        Some(r#"{"model": "cheapest:fast", "prompt": "What is 2+2?"}"#),
    );
    assert_eq!(out.status.code(), Some(0), "exec: {}", text(&out.stderr));

    let mut compare = cmd();
    compare.args(["compare", "-m", "cheapest:fast", "--json", "What is 2+2?"]);
    let out = run(compare, None);
    assert_eq!(out.status.code(), Some(0), "compare: {}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["results"][0]["target"], "openai/gpt-4o-mini", "{v}");

    let s = serve(cmd());
    let v = rpc(
        &s.url,
        "llm.complete",
        json!({"model": "cheapest:fast", "prompt": "What is 2+2?"}),
    )
    .await;
    assert!(v["error"].is_null(), "llm.complete: {v}");
    let r = http()
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&json!({"model": "cheapest:fast",
                      "messages": [{"role": "user", "content": "What is 2+2?"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["model"], "openai/gpt-4o-mini", "{v}");

    // Five faces, five requests, each for the cheapest member.
    assert_eq!(models_seen(&up), vec!["gpt-4o-mini"; 5]);
}

/// Spend recorded in a ledger file, and the number of request rows.
fn recorded(db: &Path) -> (f64, i64) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(
        "SELECT COALESCE(SUM(cost_usd), 0), COUNT(*) FROM requests",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_sharing_a_ledger_never_cross_the_daily_cap() {
    // Setup: each answer uses 500 of the 1000 output tokens allowed, so a request's
    // bound (~$0.0006) is about twice its real cost (~$0.0003). The upstream is slow
    // enough that many requests are in flight at once.
    let up = Server::start(vec![
        Reply::sse(openai_sse(500)).chunked(48, Duration::from_millis(10))
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cap = 0.006;
    let config = format!("[budget]\ndaily_usd = {cap}\n");
    let a = serve(command(dir.path(), &config, &up.url));
    let b = serve(command(dir.path(), &config, &up.url));

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
    let mut ok = 0;
    let mut refused = 0;
    for c in calls {
        let v = c.await.unwrap();
        if v["error"].is_null() {
            ok += 1;
        } else {
            assert_eq!(v["error"]["data"]["kind"], "budget", "{v}");
            refused += 1;
        }
    }

    // Check: the caps held across both processes, and nothing refused went upstream.
    let (spent, rows) = recorded(&dir.path().join("data/ledger.sqlite3"));
    eprintln!("answered {ok}, refused {refused}, recorded ${spent:.6} against a cap of ${cap}");
    assert!(
        spent <= cap,
        "recorded spend ${spent} crossed the cap ${cap}"
    );
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
    assert_eq!(rows, ok as i64, "one row per answered request");
    assert_eq!(up.count(), ok, "refused requests never reach the upstream");
    // Every reservation was settled.
    let c = rusqlite::Connection::open(dir.path().join("data/ledger.sqlite3")).unwrap();
    let open: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM runs WHERE reserved_usd > 0 AND settled_at IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        support::eventually(|| {
            c.query_row(
                "SELECT COUNT(*) FROM runs WHERE reserved_usd > 0 AND settled_at IS NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
                == 0
        })
        .await,
        "{open} reservations still open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_drawing_on_budget_leases_never_cross_the_daily_cap() {
    // Setup: a cap large enough for leases (each holds 1/64 of it, about three
    // requests' bounds) and answers that use 90% of their bound: about 200 requests
    // fit under the cap.
    let up = Server::start(vec![
        Reply::sse(openai_sse(900)).chunked(48, Duration::from_millis(5))
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cap = 0.12;
    let config = format!("[budget]\ndaily_usd = {cap}\n");
    let a = serve(command(dir.path(), &config, &up.url));
    let b = serve(command(dir.path(), &config, &up.url));

    // Exec: 2 processes x 20 clients, each asking until it is refused.
    let (ok, refused) = support::serve::complete_until_refused(&[&a.url, &b.url], 20).await;

    // Check: leases were used, the cap held across both processes, nothing refused
    // went upstream, and every lease is released once its runs are over.
    let db = dir.path().join("data/ledger.sqlite3");
    let (spent, rows) = recorded(&db);
    let c = rusqlite::Connection::open(&db).unwrap();
    let count = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    let leases = count("SELECT COUNT(*) FROM runs WHERE id LIKE 'lease-%'");
    let on_lease = count("SELECT COUNT(*) FROM requests WHERE lease_id IS NOT NULL");
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
    assert_eq!(rows, ok as i64, "one row per answered request");
    assert_eq!(up.count(), ok, "refused requests never reach the upstream");
    let open = "SELECT COUNT(*) FROM runs WHERE reserved_usd > 0 AND settled_at IS NULL";
    assert!(
        support::eventually(|| count(open) == 0).await,
        "{} reservations still open",
        count(open)
    );
    let held: f64 = c
        .query_row(
            "SELECT COALESCE(SUM(usd), 0) FROM budget_spend WHERE scope LIKE 'held%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(held.abs() < 1e-12, "${held} still held");
}

/// Run `cmd` with every file it writes limited to `bytes` (a full disk, as the
/// process sees it: writes past the limit fail with EFBIG, SIGXFSZ ignored).
fn with_file_limit(cmd: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_in_every_face_before_anything_is_sent() {
    let up = Server::start(vec![Reply::sse(openai_sse(1))]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = "[budget]\ndaily_usd = 5.0\n";
    let full = || {
        let mut c = command(dir.path(), config, &up.url);
        with_file_limit(&mut c, 0);
        c
    };
    let db = dir.path().join("data/ledger.sqlite3");
    let says_so = |who: &str, err: &str| {
        assert!(
            err.contains(db.to_str().unwrap()),
            "{who} names the file: {err}"
        );
        assert!(err.contains("fix:"), "{who} says how to fix it: {err}");
        assert!(err.contains("nothing was sent"), "{who}: {err}");
    };

    let mut ask = full();
    ask.args(["ask", "-m", "openai/gpt-4o-mini", "hi"]);
    let out = run(ask, None);
    assert_eq!(out.status.code(), Some(2), "ask: {}", text(&out.stderr));
    says_so("ask", &text(&out.stderr));

    let mut compare = full();
    compare.args([
        "compare",
        "-m",
        "openai/gpt-4o-mini",
        "-m",
        "openai/gpt-4o",
        "hi",
    ]);
    let out = run(compare, None);
    assert_eq!(out.status.code(), Some(2), "compare: {}", text(&out.stderr));
    says_so("compare", &text(&out.stderr));

    let mut exec = full();
    exec.arg("exec");
    let out = run(
        exec,
        Some(r#"{"model": "openai/gpt-4o-mini", "prompt": "hi"}"#),
    );
    assert_eq!(out.status.code(), Some(2), "exec: {}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "ledger", "{v}");
    says_so("exec", v["error"]["message"].as_str().unwrap());

    let s = serve(full());
    let v = rpc(
        &s.url,
        "llm.complete",
        json!({"model": "openai/gpt-4o-mini", "prompt": "hi"}),
    )
    .await;
    assert_eq!(v["error"]["code"], -32603, "{v}");
    says_so("llm.complete", v["error"]["message"].as_str().unwrap());
    let h = rpc(&s.url, "llm.health", json!({})).await;
    assert_eq!(h["result"]["status"], "degraded", "{h}");
    let r = http()
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&json!({"model": "openai/gpt-4o-mini",
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    says_so("/v1", &r.text().await.unwrap());
    let hz: Value = http()
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(hz["status"], "degraded", "{hz}");

    assert_eq!(up.count(), 0, "nothing reached the upstream");
}

/// `ask` against a ledger file prepared by `prepare`: exit code and stderr.
fn ask_with_ledger(prepare: impl FnOnce(&Path)) -> (Option<i32>, String, usize) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    prepare(&data.join("ledger.sqlite3"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(Server::start(vec![Reply::sse(openai_sse(1))]));
    let mut ask = command(dir.path(), "", &up.url);
    ask.args(["ask", "-m", "openai/gpt-4o-mini", "hi"]);
    let out = run(ask, None);
    (out.status.code(), text(&out.stderr), up.count())
}

#[test]
fn a_corrupt_ledger_refuses_with_the_file_the_reason_and_the_fix() {
    let (code, err, sent) = ask_with_ledger(|p| {
        std::fs::write(p, vec![0x5au8; 8192]).unwrap();
    });
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("ledger.sqlite3"), "{err}");
    assert!(err.contains("not a database"), "{err}");
    assert!(err.contains("move the file aside"), "{err}");
    assert_eq!(sent, 0);
}

#[test]
fn a_newer_ledger_schema_refuses() {
    let (code, err, sent) = ask_with_ledger(|p| {
        let c = rusqlite::Connection::open(p).unwrap();
        c.pragma_update(None, "user_version", 999).unwrap();
    });
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("newer than this quorum"), "{err}");
    assert!(err.contains("upgrade quorum"), "{err}");
    assert_eq!(sent, 0);
}

#[test]
fn a_read_only_ledger_dir_refuses() {
    if unsafe { libc::geteuid() } == 0 {
        // root writes through permission bits; the full-disk test covers the write path.
        eprintln!("SKIP: running as root, a 0500 folder is still writable");
        return;
    }
    let (code, err, sent) = ask_with_ledger(|p| {
        use std::os::unix::fs::PermissionsExt;
        let dir = p.parent().unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500)).unwrap();
    });
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("writable"), "{err}");
    assert_eq!(sent, 0);
}

#[test]
fn no_ledger_with_a_budget_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut ask = command(
        dir.path(),
        "[budget]\ndaily_usd = 1.0\n",
        "http://127.0.0.1:9",
    );
    ask.args(["--no-ledger", "ask", "-m", "mock/alpha", "hi"]);
    let out = run(ask, None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--no-ledger"),
        "{}",
        text(&out.stderr)
    );
    // Without a budget, --no-ledger runs and writes nothing.
    let mut ask = command(dir.path(), "", "http://127.0.0.1:9");
    ask.args(["--no-ledger", "ask", "-m", "mock/alpha", "hi"]);
    let out = run(ask, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!dir.path().join("data/ledger.sqlite3").exists());
}

/// A ledger whose `requests` table refuses every insert, as a full disk would after
/// the run was noted: a real SQLite write failure on a real file.
fn refuse_request_rows(db: &Path) {
    let l = llm_quorum::engine::ledger::Ledger::open(db, Default::default()).unwrap();
    drop(l);
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(
        "CREATE TRIGGER full BEFORE INSERT ON requests BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
    )
    .unwrap();
}

#[test]
fn an_answer_the_ledger_cannot_record_is_delivered_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    refuse_request_rows(&data.join("ledger.sqlite3"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(Server::start(vec![Reply::sse(openai_sse(1))]));
    let mut ask = command(dir.path(), "", &up.url);
    ask.args(["ask", "-m", "openai/gpt-4o-mini", "What is 2+2?"]);
    let out = run(ask, None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains('4'), "the answer is delivered");
    let err = text(&out.stderr);
    assert!(err.contains("not recorded"), "{err}");
    assert!(err.contains("disk is full"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_turns_degraded_after_a_failed_write_and_refuses_while_a_budget_is_set() {
    let up = Server::start(vec![Reply::sse(openai_sse(1))]).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    refuse_request_rows(&data.join("ledger.sqlite3"));
    let s = serve(command(dir.path(), "[budget]\ndaily_usd = 5.0\n", &up.url));
    let params = json!({"model": "openai/gpt-4o-mini", "prompt": "What is 2+2?"});
    // The first answer is delivered though its row could not be written.
    let v = rpc(&s.url, "llm.complete", params.clone()).await;
    assert!(v["error"].is_null(), "{v}");
    let h = rpc(&s.url, "llm.health", json!({})).await;
    assert_eq!(h["result"]["status"], "degraded", "{h}");
    assert_eq!(h["result"]["ledger"], "failing", "{h}");
    let m = s.metrics().await;
    assert!(m.contains("quorum_ledger_write_failures_total 1"), "{m}");
    // Spending is unknown now: the next request is refused before sending.
    let v = rpc(&s.url, "llm.complete", params).await;
    assert_eq!(v["error"]["code"], -32603, "{v}");
    assert_eq!(up.count(), 1);
}

/// Without a budget a run's note is not waited for (it rides in a later commit), but a
/// note that cannot be written is still loud: `serve` counts it as a failed write and
/// reports itself degraded. The answer and its row are not harmed.
#[tokio::test(flavor = "multi_thread")]
async fn serve_counts_a_run_note_it_could_not_write_without_waiting_for_it() {
    let up = Server::start(vec![Reply::sse(openai_sse(1))]).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join("ledger.sqlite3");
    drop(llm_quorum::engine::ledger::Ledger::open(&db, Default::default()).unwrap());
    support::ledger::refuse_run_notes(&db);
    let s = serve(command(dir.path(), "", &up.url));
    let params = json!({"model": "openai/gpt-4o-mini", "prompt": "What is 2+2?"});
    let v = rpc(&s.url, "llm.complete", params).await;
    assert!(v["error"].is_null(), "{v}");
    assert_eq!(recorded(&db).1, 1, "the row is written");
    // Counted before the answer was released (the note's commit came first), but
    // waited for all the same: the event, with a generous deadline.
    let deadline = std::time::Instant::now() + support::PATIENCE;
    let mut h = rpc(&s.url, "llm.health", json!({})).await;
    while h["result"]["status"] != "degraded" && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        h = rpc(&s.url, "llm.health", json!({})).await;
    }
    assert_eq!(h["result"]["status"], "degraded", "{h}");
    assert_eq!(h["result"]["ledger"], "failing", "{h}");
    let last = h["result"]["ledger_last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        last.contains("not noted") && last.contains("disk is full"),
        "{h}"
    );
    let m = s.metrics().await;
    assert!(m.contains("quorum_ledger_write_failures_total 1"), "{m}");
}

#[test]
fn an_answer_over_sqlites_row_limit_is_recorded_cut_with_its_cost() {
    use llm_quorum::engine::ledger::{Ledger, LedgerSink, RequestMeta};
    use llm_quorum::engine::Completion;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.sqlite3");
    let limit = 200_000;
    let answer = "é".repeat(500_000); // 1 MB
                                      // The limit is real: a plain insert of this answer fails.
    let raw = rusqlite::Connection::open(&db).unwrap();
    raw.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, limit)
        .unwrap();
    raw.execute_batch("CREATE TABLE t (x TEXT)").unwrap();
    assert!(raw.execute("INSERT INTO t VALUES (?1)", [&answer]).is_err());
    drop(raw);

    let l = Ledger::open(&db, Default::default()).unwrap();
    l.set_length_limit(limit).unwrap();
    let c = Completion {
        provider: "openai".into(),
        model: "gpt-4o-mini".into(),
        text: answer.clone(),
        cost_usd: Some(0.25),
        ..Default::default()
    };
    let meta = RequestMeta {
        run_id: "r1".into(),
        target: "openai/gpt-4o-mini".into(),
        lease_id: None,
        prompt: "write a lot".into(),
        ..Default::default()
    };
    l.record(&meta, &c)
        .expect("an oversized answer is still recorded");
    drop(l);
    let raw = rusqlite::Connection::open(&db).unwrap();
    let (cost, response): (f64, String) = raw
        .query_row("SELECT cost_usd, response FROM requests", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(cost, 0.25);
    assert!(response.len() < limit as usize, "{}", response.len());
    assert!(response.contains("cut by quorum"), "the cut is marked");
    assert!(answer.starts_with(response.split('\n').next().unwrap()));
}
