//! `quorum compare` and `quorum leaderboard`, run as the real binary.
//!
//! The targets are Ollama models served by the scripted HTTP server of
//! `tests/support` (Ollama needs no key; `OLLAMA_HOST` points at the
//! server), so every answer crosses a real socket and the real NDJSON
//! decoder. Replies go out in arrival order, which is random across
//! concurrent targets: the assertions only rely on the multiset of answers.

mod support;

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use support::{Reply, Server};

use llm_quorum::engine::consensus::{JsonlVoteStore, Vote, VoteStore};

/// One streamed Ollama `/api/chat` answer in NDJSON, split in two pieces.
fn ollama_answer(text: &str) -> Reply {
    let cut = text.len() / 2;
    let cut = (0..=cut)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    let (a, b) = text.split_at(cut);
    let line = |content: &str| {
        serde_json::json!({
            "model": "m", "created_at": "2025-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": content}, "done": false
        })
        .to_string()
    };
    let done = serde_json::json!({
        "model": "m", "created_at": "2025-01-01T00:00:01Z",
        "message": {"role": "assistant", "content": ""},
        "done": true, "done_reason": "stop", "prompt_eval_count": 12, "eval_count": 7
    });
    let body = format!("{}\n{}\n{}\n", line(a), line(b), done);
    Reply::new(200, "application/x-ndjson", body).chunked(40, std::time::Duration::from_millis(1))
}

fn ollama_error(status: u16, message: &str) -> Reply {
    Reply::json(status, serde_json::json!({ "error": message }).to_string())
}

/// Run the binary with only the variables a test needs.
async fn quorum(
    args: &[&str],
    server: Option<&Server>,
    data: &Path,
    stdin: Option<&str>,
) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_quorum"));
    cmd.args(args).env_clear();
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    cmd.env("QUORUM_DATA_DIR", data)
        .env("QUORUM_MOCK_TPS", "0")
        .env("HOME", data)
        .env("XDG_CONFIG_HOME", data.join("config"))
        .env("QUORUM_CONFIG", data.join("no-config.toml"));
    if let Some(s) = server {
        cmd.env("OLLAMA_HOST", &s.url);
    }
    let input = stdin.map(|s| s.to_string());
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::process::Stdio;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn quorum");
        let mut pipe = child.stdin.take().unwrap();
        if let Some(i) = input {
            pipe.write_all(i.as_bytes()).unwrap();
        }
        drop(pipe);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{}\nstderr: {}",
            stdout(o),
            stderr(o)
        )
    })
}

const THREE: [&str; 6] = ["-m", "ollama/a", "-m", "ollama/b", "-m", "ollama/c"];

fn with<'a>(base: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["compare"];
    v.extend_from_slice(base);
    v.extend_from_slice(more);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_json_has_one_result_per_target_and_the_consensus() {
    // Setup
    let server = Server::start(vec![
        ollama_answer("4"),
        ollama_answer("The answer is **four**."),
        ollama_answer("I make it 5."),
    ])
    .await;
    let data = tempfile::tempdir().unwrap();
    // Exec
    let out = quorum(
        &with(&THREE, &["--json", "What is 2+2? Answer with one number."]),
        Some(&server),
        data.path(),
        None,
    )
    .await;
    // Check
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let v = json_of(&out);
    assert_eq!(v["prompt"], "What is 2+2? Answer with one number.");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for (r, target) in results.iter().zip(["ollama/a", "ollama/b", "ollama/c"]) {
        // The ask --json schema, plus target and run.
        for key in [
            "provider",
            "model",
            "text",
            "thinking",
            "tool_calls",
            "finish_reason",
            "raw_finish_reason",
            "usage",
            "cost_usd",
            "ttft_ms",
            "latency_ms",
            "error",
        ] {
            assert!(r.get(key).is_some(), "result lacks {key}: {r}");
        }
        assert_eq!(r["target"], target);
        assert_eq!(r["run"], 1);
        assert_eq!(r["provider"], "ollama");
        assert_eq!(r["model"], &target["ollama/".len()..]);
        assert_eq!(r["finish_reason"], "stop");
        assert_eq!(r["usage"]["input_tokens"], 12);
        assert_eq!(r["usage"]["output_tokens"], 7);
        assert!(r["error"].is_null());
        // A local Ollama model is free, and known to be: 0, not unknown
        // (tests/cost.rs covers the unknown price: null, never 0).
        assert_eq!(r["cost_usd"], 0.0, "a local model costs a known 0");
    }
    let c = &v["consensus"];
    assert_eq!(c["kind"], "number");
    assert_eq!(c["majority_answer"], "4");
    assert!((c["agreement"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    let five = results
        .iter()
        .find(|r| r["text"] == "I make it 5.")
        .unwrap()["target"]
        .clone();
    assert_eq!(c["dissenters"], serde_json::json!([five]));
    assert_eq!(c["pairs"].as_array().unwrap().len(), 3);
    assert!(c["headline"]
        .as_str()
        .unwrap()
        .starts_with("2 of 3 finished agree on \"4\""));
    assert_eq!(v["stability"].as_array().unwrap().len(), 3);
    assert!(v["judge"].is_null());
    assert_eq!(v["cost_usd"], 0.0);
    // Every target was asked the same thing, concurrently.
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    let mut models: Vec<String> = reqs
        .iter()
        .map(|r| {
            let b = r.json();
            assert_eq!(
                b["messages"][0]["content"],
                "What is 2+2? Answer with one number."
            );
            b["model"].as_str().unwrap().to_string()
        })
        .collect();
    models.sort();
    assert_eq!(models, ["a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_markdown_output() {
    let server = Server::start(vec![
        ollama_answer("Yes: `q` is concatenated into the SQL."),
        ollama_answer("Yes, it is injectable."),
        ollama_answer("No | it is safe."),
    ])
    .await;
    let data = tempfile::tempdir().unwrap();
    let out = quorum(
        &with(
            &THREE,
            &[
                "--markdown",
                "--system",
                "Be brief.",
                "Is this code vulnerable?",
            ],
        ),
        Some(&server),
        data.path(),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let md = stdout(&out);
    assert!(
        md.starts_with("# quorum compare\n\n> Is this code vulnerable?\n"),
        "{md}"
    );
    assert!(md.contains(
        "| target | run | status | final answer | tokens in/out | cost | TTFT | latency |"
    ));
    let rows: Vec<&str> = md
        .lines()
        .filter(|l| l.starts_with("| ollama/") && l.contains(" | 1 | "))
        .collect();
    assert_eq!(rows.len(), 3, "{md}");
    assert!(rows
        .iter()
        .all(|r| r.contains("| 1 | stop |") && r.contains("| 12/7 |")));
    assert_eq!(rows.iter().filter(|r| r.contains("| yes |")).count(), 2);
    assert!(md.contains("## Consensus\n\n**2 of 3 finished agree on \"yes\" · agreement 0.67**"));
    assert!(md.contains("- Kind: yes/no"));
    assert!(md.contains("| pair | token F1 | sequence ratio | score |"));
    assert!(md.contains("## Answers\n\n### ollama/a\n"));
    // The pipe in an answer is kept in the answer section.
    assert!(md.contains("\nNo | it is safe.\n"));
    assert!(md.trim_end().ends_with("Total cost: $0.000000"), "{md}");
    // The system prompt went out.
    let b = server.requests()[0].json();
    assert_eq!(b["messages"][0]["role"], "system");
}

/// A minimal RFC 4180 reader for the check.
fn parse_csv(s: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_csv_output_and_some_failed_exit_code() {
    let server = Server::start(vec![
        ollama_answer("C"),
        ollama_answer("The answer is (c), \"seven\".\nIt is prime."),
        ollama_error(404, "model \"x\" not found, try pulling it first"),
    ])
    .await;
    let data = tempfile::tempdir().unwrap();
    let out = quorum(
        &with(&THREE, &["--csv", "Which is prime?\nA) 4\nB) 6\nC) 7"]),
        Some(&server),
        data.path(),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "some failed: exit 1");
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    let csv = stdout(&out);
    assert!(csv.contains("\r\n"), "CSV rows end in CRLF");
    let rows = parse_csv(&csv);
    assert_eq!(rows.len(), 4, "{csv}");
    assert_eq!(
        rows[0],
        [
            "target",
            "run",
            "provider",
            "model",
            "status",
            "finish_reason",
            "final_answer",
            "cluster",
            "in_majority",
            "input_tokens",
            "output_tokens",
            "cost_usd",
            "cost_source",
            "ttft_ms",
            "latency_ms",
            "error_kind",
            "error",
            "text"
        ]
    );
    let failed: Vec<_> = rows[1..].iter().filter(|r| r[4] == "failed").collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0][5], "error");
    assert_eq!(failed[0][15], "bad_request");
    assert_eq!(
        failed[0][8], "",
        "a failed answer is not in or out of any majority"
    );
    let ok: Vec<_> = rows[1..].iter().filter(|r| r[4] == "answered").collect();
    assert_eq!(ok.len(), 2);
    for r in &ok {
        assert_eq!(r[6], "C");
        assert_eq!(r[7], "0");
        assert_eq!(r[8], "true");
        assert_eq!(r[11], "0", "a local model costs a known 0");
        assert_eq!(r[12], "computed");
    }
    assert!(ok
        .iter()
        .any(|r| r[17] == "The answer is (c), \"seven\".\nIt is prime."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_failed_exits_3_and_usage_errors_exit_2() {
    let server = Server::start(vec![ollama_error(400, "bad")]).await;
    let data = tempfile::tempdir().unwrap();
    let out = quorum(
        &with(&THREE, &["--json", "hi"]),
        Some(&server),
        data.path(),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
    let v = json_of(&out);
    assert_eq!(v["consensus"]["failed"].as_array().unwrap().len(), 3);
    assert!(v["consensus"]["agreement"].is_null());
    assert!(v["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["error"]["kind"] == "bad_request"));

    let before = server.count();
    // Unknown target: nothing is sent.
    let out = quorum(
        &["compare", "-m", "nope/x", "hi"],
        Some(&server),
        data.path(),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown model"), "{}", stderr(&out));
    // No -m at all.
    let out = quorum(&["compare", "hi"], Some(&server), data.path(), None).await;
    assert_eq!(out.status.code(), Some(2));
    // Two output formats.
    let out = quorum(
        &["compare", "-m", "ollama/a", "--json", "--csv", "hi"],
        Some(&server),
        data.path(),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    // An empty prompt on stdin.
    let out = quorum(
        &["compare", "-m", "ollama/a"],
        Some(&server),
        data.path(),
        Some("  \n"),
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(server.count(), before, "usage errors send nothing");

    // The exit codes are documented in --help.
    let out = quorum(&["compare", "--help"], None, data.path(), None).await;
    let help = stdout(&out);
    for line in [
        "0  every request succeeded",
        "1  some requests failed",
        "2  usage or configuration error",
        "3  every request failed",
    ] {
        assert!(help.contains(line), "--help lacks {line:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_from_stdin_and_default_text_output() {
    let server = Server::start(vec![ollama_answer("Paris."), ollama_answer("paris")]).await;
    let data = tempfile::tempdir().unwrap();
    let out = quorum(
        &["compare", "-m", "ollama/a", "-m", "ollama/b"],
        Some(&server),
        data.path(),
        Some("Capital of France? One word.\n"),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("━━ ollama/a · stop · 12→7 tok · $0.000000 ✓ · TTFT "),
        "{text}"
    );
    assert!(
        text.contains(
            "consensus (final line): 2 of 2 finished agree on \"Paris\" · agreement 1.00"
        ),
        "{text}"
    );
    assert!(text.contains("total cost: $0.000000"), "{text}");
    let b = server.requests()[0].json();
    assert_eq!(
        b["messages"][0]["content"],
        "Capital of France? One word.\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeat_runs_every_target_n_times() {
    // Arrival order is random, so both models see a mix; the totals are fixed.
    let server = Server::start_with(|n| match n {
        0..=2 => ollama_answer("4"),
        _ => ollama_answer("5"),
    })
    .await;
    let data = tempfile::tempdir().unwrap();
    let out = quorum(
        &[
            "compare",
            "-m",
            "ollama/a",
            "-m",
            "ollama/b",
            "--repeat",
            "2",
            "--json",
            "What is 2+2?",
        ],
        Some(&server),
        data.path(),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let v = json_of(&out);
    assert_eq!(v["repeat"], 2);
    let results = v["results"].as_array().unwrap();
    let tags: Vec<(String, u64)> = results
        .iter()
        .map(|r| {
            (
                r["target"].as_str().unwrap().to_string(),
                r["run"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tags,
        [
            ("ollama/a".to_string(), 1),
            ("ollama/a".to_string(), 2),
            ("ollama/b".to_string(), 1),
            ("ollama/b".to_string(), 2)
        ]
    );
    assert_eq!(server.count(), 4);
    let st = v["stability"].as_array().unwrap();
    assert_eq!(st.len(), 2);
    // Three 4s and one 5: exactly one model gave two distinct answers.
    let distinct: Vec<u64> = st.iter().map(|s| s["distinct"].as_u64().unwrap()).collect();
    let mut sorted = distinct.clone();
    sorted.sort();
    assert_eq!(sorted, [1, 2]);
    for s in st {
        assert_eq!(s["runs"], 2);
        let expect = if s["distinct"] == 1 { 1.0 } else { 0.0 };
        assert_eq!(s["self_agreement"].as_f64(), Some(expect));
    }
    // The stable model's run stands for it; the unstable one's 1-1 tie goes
    // to its earlier run, whichever answer that was.
    let reps: Vec<usize> = v["consensus"]["result_index"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(reps.len(), 2);
    let rep_texts: Vec<&str> = reps
        .iter()
        .map(|i| results[*i]["text"].as_str().unwrap())
        .collect();
    for (t, i) in reps.iter().enumerate() {
        assert_eq!(results[*i]["target"], ["ollama/a", "ollama/b"][t]);
    }
    if rep_texts == ["4", "4"] {
        assert_eq!(v["consensus"]["majority_answer"], "4");
        assert_eq!(v["consensus"]["agreement"], 1.0);
    } else {
        let unstable = st.iter().position(|s| s["distinct"] == 2).unwrap();
        assert_eq!(reps[unstable] % 2, 0, "the earlier run of the tie");
        assert!(v["consensus"]["majority_answer"].is_null());
        assert_eq!(v["consensus"]["agreement"], 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judge_over_http_sees_anonymised_answers_and_is_counted() {
    let verdict = "Here is my verdict.\n```json\n{\"agreement\": 0.5, \"best\": \"Answer B\", \
                   \"disagreements\": [\"4 vs 5\"], \"summary\": \"Two say 4.\"}\n```";
    let server = Server::start_with(move |n| match n {
        0 => ollama_answer("4"),
        1 => ollama_answer("5"),
        _ => ollama_answer(verdict),
    })
    .await;
    let data = tempfile::tempdir().unwrap();
    let out = quorum(
        &[
            "compare",
            "-m",
            "ollama/a",
            "-m",
            "ollama/b",
            "--judge",
            "ollama/judge",
            "--json",
            "What is 2+2?",
        ],
        Some(&server),
        data.path(),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let v = json_of(&out);
    let j = &v["judge"];
    assert_eq!(j["target"], "ollama/judge");
    assert_eq!(j["verdict"]["agreement"], 0.5);
    assert_eq!(j["verdict"]["best"], "B");
    assert_eq!(j["verdict"]["best_target"], "ollama/b");
    assert_eq!(j["verdict"]["disagreements"], serde_json::json!(["4 vs 5"]));
    assert!(j["error"].is_null());
    assert_eq!(j["completion"]["model"], "judge");
    assert_eq!(j["completion"]["usage"]["output_tokens"], 7);
    assert_eq!(j["key"][0]["label"], "ollama/a");
    // The judge ran after the answers, saw both, anonymised.
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    let jb = reqs[2].json();
    assert_eq!(jb["model"], "judge");
    let user = jb["messages"][1]["content"].as_str().unwrap();
    let a_text = v["results"][0]["text"].as_str().unwrap();
    assert!(
        user.contains(&format!("# Answer A\n\n{a_text}\n")),
        "{user}"
    );
    assert!(user.contains("# Answer B\n\n"));
    assert!(
        !user.contains("ollama/"),
        "target names leaked to the judge"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judge_failure_is_reported_without_changing_the_exit_code() {
    let server = Server::start_with(|n| match n {
        0 | 1 => ollama_answer("4"),
        _ => ollama_answer("I refuse to output JSON."),
    })
    .await;
    let data = tempfile::tempdir().unwrap();
    let out = quorum(
        &[
            "compare",
            "-m",
            "ollama/a",
            "-m",
            "ollama/b",
            "--judge",
            "ollama/j",
            "What is 2+2?",
        ],
        Some(&server),
        data.path(),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("no verdict: the judge's reply has no JSON verdict"));
    assert!(stderr(&out).contains("judge ollama/j"));
}

// ---------------------------------------------------------------------------
// Leaderboard
// ---------------------------------------------------------------------------

fn vote(targets: &[&str], winner: Option<&str>, tag: Option<&str>) -> Vote {
    Vote {
        targets: targets.iter().map(|s| s.to_string()).collect(),
        winner: winner.map(str::to_string),
        tag: tag.map(str::to_string),
        run_id: Some("run-1".into()),
        created_at: Some("2025-01-01T00:00:00Z".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaderboard_reads_votes_from_the_data_dir() {
    let data = tempfile::tempdir().unwrap();
    let out = quorum(&["leaderboard"], None, data.path(), None).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).starts_with("no votes yet"));

    let store = JsonlVoteStore::new(data.path().join("votes.jsonl"));
    store
        .record_vote(&vote(&["x/a", "y/b"], Some("x/a"), Some("code")))
        .unwrap();
    store
        .record_vote(&vote(&["x/a", "y/b", "z/c"], Some("y/b"), None))
        .unwrap();
    store
        .record_vote(&vote(&["x/a", "y/b"], Some("y/b"), None))
        .unwrap();
    store
        .record_vote(&vote(&["x/a", "z/c"], None, None))
        .unwrap();

    let out = quorum(&["leaderboard", "--json"], None, data.path(), None).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let v = json_of(&out);
    assert_eq!(v["votes"], 4);
    let order: Vec<&str> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["target"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["y/b", "x/a", "z/c"]);
    assert_eq!(v["rows"][0]["wins"], 2);

    let out = quorum(&["leaderboard", "--tag", "code"], None, data.path(), None).await;
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains("target") && lines[0].contains("elo"),
        "{text}"
    );
    assert!(lines[1].trim_start().starts_with("1  x/a"), "{text}");
    assert!(
        lines[1].contains("1016") && lines[1].contains("100.0%"),
        "{text}"
    );
    assert!(lines[2].contains("984"), "{text}");
    assert_eq!(lines[3], "1 votes tagged \"code\"");
}

// ---------------------------------------------------------------------------
// Over the offline mock provider
// ---------------------------------------------------------------------------

const MOCKS: [&str; 8] = [
    "-m",
    "mock/alpha",
    "-m",
    "mock/beta",
    "-m",
    "mock/gamma",
    "-m",
    "mock/contrarian",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_targets_json_consensus_names_the_contrarian() {
    let data = tempfile::tempdir().unwrap();
    let out = quorum(
        &with(&MOCKS, &["--json", "What is 12 * 7?"]),
        None,
        data.path(),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let v = json_of(&out);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert!(results
        .iter()
        .all(|r| r["provider"] == "mock" && r["error"].is_null()));
    assert!(results
        .iter()
        .all(|r| r["usage"]["output_tokens"].as_u64().unwrap() > 0));
    let c = &v["consensus"];
    assert_eq!(c["kind"], "number");
    assert_eq!(c["majority_answer"], "84");
    assert_eq!(c["agreement"], 0.75);
    assert_eq!(c["dissenters"], serde_json::json!(["mock/contrarian"]));
    assert_eq!(
        c["clusters"][0]["labels"],
        serde_json::json!(["mock/alpha", "mock/beta", "mock/gamma"])
    );
    assert_ne!(c["answers"][3]["final_answer"]["value"], "84");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_targets_markdown_and_csv() {
    let data = tempfile::tempdir().unwrap();
    let out = quorum(
        &with(&MOCKS, &["--markdown", "Is the sky blue?"]),
        None,
        data.path(),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let md = stdout(&out);
    assert!(
        md.contains("**3 of 4 finished agree on \"yes\" · agreement 0.75**"),
        "{md}"
    );
    assert!(md.contains("- Dissenters: mock/contrarian"));
    assert!(md.contains("| mock/contrarian | 1 | stop | no |"), "{md}");
    // beta answers in markdown; its heading stays inside the answers section.
    let answers = md.split("## Answers").nth(1).unwrap();
    assert!(answers.contains("### mock/beta\n\n## "), "{answers}");

    let out = quorum(
        &with(&MOCKS, &["--csv", "Is the sky blue?"]),
        None,
        data.path(),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    let rows = parse_csv(&stdout(&out));
    assert_eq!(rows.len(), 5);
    let by_target: Vec<(&str, &str, &str)> = rows[1..]
        .iter()
        .map(|r| (r[0].as_str(), r[6].as_str(), r[8].as_str()))
        .collect();
    assert_eq!(
        by_target,
        [
            ("mock/alpha", "yes", "true"),
            ("mock/beta", "yes", "true"),
            ("mock/gamma", "yes", "true"),
            ("mock/contrarian", "no", "false"),
        ]
    );
    assert!(
        rows[2][17].starts_with("## "),
        "beta's full markdown text is kept in one field"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_streams_cut_midway_all_fail_with_exit_3() {
    let data = tempfile::tempdir().unwrap();
    let out = quorum(
        &[
            "compare",
            "-m",
            "mock/alpha",
            "-m",
            "mock/gamma",
            "midstream: what is 2+2?",
        ],
        None,
        data.path(),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(3));
    let text = stdout(&out);
    assert!(
        text.contains("partial answer before the failure (not compared)"),
        "{text}"
    );
    assert!(
        text.contains("consensus (open): 0 of 2 answered · 2 failed"),
        "{text}"
    );
    assert_eq!(
        stderr(&out).matches("connection reset midstream").count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_judge_runs_through_the_engine_and_its_reply_is_reported() {
    // The mocks can judge: the verdict is deterministic (alpha says 4, the
    // contrarian 5: half agree, the first of the tied groups is best), and
    // the judge's completion and cost fields are kept.
    let data = tempfile::tempdir().unwrap();
    let out = quorum(
        &[
            "compare",
            "-m",
            "mock/alpha",
            "-m",
            "mock/contrarian",
            "--judge",
            "mock/gamma",
            "--json",
            "What is 2+2?",
        ],
        None,
        data.path(),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let v = json_of(&out);
    let j = &v["judge"];
    assert_eq!(j["target"], "mock/gamma");
    assert!(j["error"].is_null(), "{j}");
    assert_eq!(j["verdict"]["agreement"], 0.5, "{j}");
    assert_eq!(j["verdict"]["best"], "A", "{j}");
    assert_eq!(j["verdict"]["best_target"], "mock/alpha", "{j}");
    assert_eq!(j["completion"]["provider"], "mock");
    assert_eq!(j["completion"]["model"], "gamma");
    assert_eq!(j["completion"]["finish_reason"], "stop");
    assert!(
        j["completion"]["usage"]["input_tokens"].as_u64().unwrap() > 20,
        "the judge read the answers"
    );
    assert!(j["completion"].get("cost_usd").is_some());
    assert_eq!(
        j["key"],
        serde_json::json!([
            {"letter": "A", "label": "mock/alpha", "index": 0},
            {"letter": "B", "label": "mock/contrarian", "index": 1}
        ])
    );
    // A verdict is no error: nothing about the judge on stderr.
    assert!(
        !stderr(&out).contains("judge mock/gamma"),
        "{}",
        stderr(&out)
    );

    // A judge needs two answers: with one target it is skipped, nothing sent.
    let out = quorum(
        &[
            "compare",
            "-m",
            "mock/alpha",
            "--judge",
            "mock/gamma",
            "--json",
            "What is 2+2?",
        ],
        None,
        data.path(),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    let v = json_of(&out);
    assert!(v["judge"]["error"]
        .as_str()
        .unwrap()
        .contains("at least two answers"));
    assert!(v["judge"]["completion"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_refuses_the_whole_fan_out_before_sending_unless_forced() {
    let server = Server::start(vec![ollama_answer("4"), ollama_answer("4")]).await;
    let data = tempfile::tempdir().unwrap();
    // The helper points QUORUM_CONFIG here. Prices make the local models costly.
    std::fs::write(
        data.path().join("no-config.toml"),
        r#"
[budget]
daily_usd = 0.001
[pricing."ollama/a"]
input = 100.0
output = 100.0
[pricing."ollama/b"]
input = 100.0
output = 100.0
"#,
    )
    .unwrap();
    let args = [
        "compare",
        "-m",
        "ollama/a",
        "-m",
        "ollama/b",
        "--max-tokens",
        "100",
        "What is 2+2?",
    ];
    let out = quorum(&args, Some(&server), data.path(), None).await;
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("budget"), "{}", stderr(&out));
    assert_eq!(server.count(), 0, "nothing may be sent");
    let mut forced = args.to_vec();
    forced.push("--force");
    let out = quorum(&forced, Some(&server), data.path(), None).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(server.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaderboard_counts_votes_the_tui_stored_in_the_ledger_with_the_jsonl_ones() {
    use llm_quorum::engine::ledger::{Ledger, LedgerOptions};
    let data = tempfile::tempdir().unwrap();
    let ledger = Ledger::open_in(data.path(), LedgerOptions::default()).unwrap();
    let pair = ["x/a".to_string(), "y/b".to_string()];
    ledger
        .record_vote(Some("run-1"), &pair, Some("y/b"), Some("code"))
        .unwrap();
    ledger
        .record_vote(Some("run-2"), &pair, None, None)
        .unwrap();
    drop(ledger);
    JsonlVoteStore::new(data.path().join("votes.jsonl"))
        .record_vote(&vote(&["x/a", "y/b"], Some("y/b"), None))
        .unwrap();
    let out = quorum(&["leaderboard", "--json"], None, data.path(), None).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let v = json_of(&out);
    assert_eq!(v["votes"], 3, "{v}");
    assert_eq!(v["rows"][0]["target"], "y/b");
    assert_eq!(v["rows"][0]["wins"], 2);
    assert_eq!(v["rows"][0]["ties"], 1);
    let out = quorum(
        &["leaderboard", "--tag", "code", "--json"],
        None,
        data.path(),
        None,
    )
    .await;
    assert_eq!(json_of(&out)["votes"], 1);
}
