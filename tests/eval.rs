//! `quorum eval`, run as the real binary against the built-in mock provider and,
//! where a price or a judge's reply must be scripted, a local OpenAI-wire server
//! (`tests/support`).

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::{Reply, Server};

use llm_quorum::engine::ledger::{Ledger, LedgerOptions};

const FAKE_KEY: &str = "sk-test-eval-0000000000000000";

fn cmd(args: &[&str], data: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quorum"));
    cmd.args(args).env_clear().current_dir(data);
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    cmd.env("QUORUM_DATA_DIR", data.join("data"))
        .env("QUORUM_MOCK_TPS", "0")
        .env("HOME", data)
        .env("XDG_CONFIG_HOME", data.join("config"))
        .env("QUORUM_CONFIG", data.join("config.toml"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn quorum(args: &[&str], data: &Path, env: &[(&str, &str)]) -> Output {
    cmd(args, data, env).output().expect("run quorum")
}

async fn quorum_async(args: &[&str], data: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = cmd(args, data, env);
    tokio::task::spawn_blocking(move || c.output().expect("run quorum"))
        .await
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            stderr(o)
        )
    })
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn ledger(data: &Path) -> Ledger {
    Ledger::open_in(&data.join("data"), LedgerOptions::default()).unwrap()
}

/// `case -> target -> [(assertion, pass)]` from the JSON report.
fn verdicts(v: &Value, case: &str, target: &str) -> Vec<(String, bool)> {
    let c = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == case)
        .unwrap_or_else(|| panic!("no case {case} in {v}"));
    let cell = c["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["target"] == target)
        .unwrap();
    let mut out = Vec::new();
    for r in cell["runs"].as_array().unwrap() {
        for k in r["checks"].as_array().unwrap() {
            out.push((
                k["assertion"].as_str().unwrap().to_string(),
                k["pass"].as_bool().unwrap(),
            ));
        }
    }
    for k in cell["checks"]
        .as_array()
        .unwrap()
        .iter()
        .chain(c["checks"].as_array().unwrap())
    {
        out.push((
            k["assertion"].as_str().unwrap().to_string(),
            k["pass"].as_bool().unwrap(),
        ));
    }
    out
}

fn passed(v: &Value, case: &str, target: &str, assertion: &str) -> bool {
    let all = verdicts(v, case, target);
    all.iter()
        .find(|(a, _)| a.starts_with(assertion))
        .unwrap_or_else(|| panic!("no {assertion} in {all:?}"))
        .1
}

#[test]
fn the_minimal_suite_passes_and_every_format_prints() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "suite.toml",
        r#"targets = ["mock/alpha", "mock/beta"]
[[cases]]
prompt = "What is 2+2? Answer with one number."
assert = [{ type = "contains", value = "4" }]
"#,
    );
    let out = quorum(&["eval", "suite.toml"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("mock/alpha") && text.contains("1/1"),
        "{text}"
    );
    assert!(text.contains("1/1 cases passed"), "{text}");
    let v = json_of(&quorum(&["eval", "suite.toml", "--json"], dir.path(), &[]));
    assert_eq!(v["summary"]["passed"], 1);
    assert_eq!(v["summary"]["targets"].as_array().unwrap().len(), 2);
    let md = quorum(&["eval", "suite.toml", "--markdown"], dir.path(), &[]);
    assert!(String::from_utf8_lossy(&md.stdout).contains("| mock/beta | 1/1 |"));
    let csv = quorum(&["eval", "suite.toml", "--csv"], dir.path(), &[]);
    let mut r = csv::Reader::from_reader(&csv.stdout[..]);
    let head: Vec<&str> = r.headers().unwrap().iter().take(4).collect();
    assert_eq!(head, ["case", "target", "run", "pass"]);
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    assert_eq!(rows.len(), 2, "one row per case × target × run");
    assert!(
        rows[1][9].contains("```"),
        "multi-line answers survive: {:?}",
        &rows[1]
    );
}

#[test]
fn each_assertion_type_passes_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "schema.json",
        r#"{"type": "object", "required": ["nope"]}"#,
    );
    write(
        dir.path(),
        "suite.toml",
        r#"targets = ["mock/alpha", "mock/contrarian"]

[[cases]]
id = "text"
prompt = "What is 2+2? Answer with one number."
assert = [
  { type = "contains", value = "4" },
  { type = "contains", value = "ANSWER", ignore_case = true },
  { type = "equals", value = "2 + 2 = 4. The answer is **4**." },
  { type = "regex", value = "\\*\\*4\\*\\*" },
  { type = "number", value = 4 },
  { type = "number", value = 4.4, tolerance = 0.5 },
  { type = "max_latency_ms", value = 60000 },
  { type = "max_latency_ms", value = 0 },
  { type = "max_cost_usd", value = 0.01 },
  { type = "consensus", threshold = 0.9 },
]

[[cases]]
id = "json"
prompt = "List one colour."
options = { json_mode = true }
assert = [
  { type = "json" },
  { type = "schema", schema = { type = "object" } },
  { type = "schema", file = "schema.json" },
]

[[cases]]
id = "not-json"
prompt = "Say hello."
assert = [{ type = "json" }]

[[cases]]
id = "agree"
prompt = "What is 3+3? Answer with one number."
assert = [{ type = "consensus", threshold = 0.0 }]
"#,
    );
    let out = quorum(&["eval", "suite.toml", "--json"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json_of(&out);
    let (a, c) = ("mock/alpha", "mock/contrarian");
    assert!(passed(&v, "text", a, "contains \"4\""));
    assert!(!passed(&v, "text", c, "contains \"4\""));
    assert!(passed(&v, "text", a, "contains \"ANSWER\""), "ignore_case");
    assert!(passed(&v, "text", a, "equals"));
    assert!(!passed(&v, "text", c, "equals"));
    assert!(passed(&v, "text", a, "regex"));
    assert!(!passed(&v, "text", c, "regex"));
    assert!(passed(&v, "text", a, "number 4"));
    assert!(!passed(&v, "text", c, "number 4"));
    assert!(passed(&v, "text", a, "number 4.4 ± 0.5"));
    assert!(passed(&v, "text", a, "max_latency_ms 60000"));
    assert!(!passed(&v, "text", a, "max_latency_ms 0"));
    assert!(passed(&v, "text", a, "max_cost_usd"), "the mock is free");
    assert!(
        !passed(&v, "text", a, "consensus"),
        "alpha and the contrarian disagree"
    );
    assert!(passed(&v, "json", a, "json"));
    assert!(passed(&v, "json", a, "schema"));
    let schema: Vec<_> = verdicts(&v, "json", a)
        .into_iter()
        .filter(|(n, _)| n == "schema")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(
        schema,
        vec![true, false],
        "inline passes, the file's `required` fails"
    );
    assert!(!passed(&v, "not-json", a, "json"));
    assert!(passed(&v, "agree", a, "consensus"));
    // Verdicts roll up: a case passes only when every target passes everything.
    let cases = v["cases"].as_array().unwrap();
    assert!(cases
        .iter()
        .all(|c| c["pass"] == false || c["key"] == "agree"));
}

/// One OpenAI SSE answer.
fn openai_sse(text: &str) -> Reply {
    let chunk = serde_json::json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": "stop"}]});
    let body = format!(
        "data: {chunk}\n\ndata: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":50,\"completion_tokens\":20,\"total_tokens\":70}}}}\n\ndata: [DONE]\n\n"
    );
    Reply::sse(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_grades_through_the_front_door_and_its_cost_is_in_the_ledger() {
    let grader = Server::start_with(|n| {
        // First a pass, then a fail: one grade per target's answer.
        if n == 0 {
            openai_sse(r#"{"pass": true, "score": 0.9, "reason": "right"}"#)
        } else {
            openai_sse("```json\n{\"pass\": false, \"score\": 0.1, \"reason\": \"wrong\"}\n```")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "config.toml",
        "[pricing.\"openai/grader\"]\ninput = 1.0\noutput = 2.0\n",
    );
    write(
        dir.path(),
        "suite.toml",
        r#"targets = ["mock/alpha", "mock/contrarian"]
judge = "openai/grader"
[[cases]]
id = "graded"
prompt = "What is 2+2?"
assert = [{ type = "judge", rubric = "The answer must be 4." }]
"#,
    );
    let base = format!("{}/v1", grader.url);
    let env = [
        ("OPENAI_API_KEY", FAKE_KEY),
        ("OPENAI_BASE_URL", base.as_str()),
    ];
    let out = quorum_async(
        &["eval", "suite.toml", "--json", "--concurrency", "1"],
        dir.path(),
        &env,
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json_of(&out);
    assert!(passed(&v, "graded", "mock/alpha", "judge"));
    assert!(!passed(&v, "graded", "mock/contrarian", "judge"));
    assert_eq!(grader.count(), 2, "one grade per target");
    let body = grader.requests()[0].json();
    let prompt = body["messages"][1]["content"].to_string();
    assert!(prompt.contains("The answer must be 4."), "{prompt}");
    // The judge's requests are in the ledger with their cost, and in the case's cost.
    let l = ledger(dir.path());
    let rows = l.recent(10).unwrap();
    let judged: Vec<_> = rows
        .iter()
        .filter(|r| r.target == "openai/grader")
        .collect();
    assert_eq!(judged.len(), 2, "{rows:?}");
    assert!(judged.iter().all(|r| r.cost_usd.unwrap_or(0.0) > 0.0));
    assert!(v["cases"][0]["cost_usd"].as_f64().unwrap() > 0.0);
    assert!(!stderr(&out).contains(FAKE_KEY));
}

#[test]
fn variables_come_from_jsonl_and_csv_datasets() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "rows.jsonl",
        "{\"a\": 2, \"b\": 2, \"sum\": 4}\n\n{\"a\": 3, \"b\": 4, \"sum\": \"7\"}\n",
    );
    write(dir.path(), "rows.csv", "a,b,sum\n10,5,15\n\"6\",1,7\n");
    write(
        dir.path(),
        "suite.toml",
        r#"targets = ["mock/alpha"]
[[cases]]
id = "j"
dataset = "rows.jsonl"
prompt = "What is {{a}}+{{ b }}? Answer with one number."
assert = [{ type = "number", value = "{{sum}}" }]
[[cases]]
id = "c"
dataset = "rows.csv"
system = "Row {{a}}."
prompt = "What is {{a}}+{{b}}? Answer with one number."
assert = [{ type = "contains", value = "{{sum}}" }]
"#,
    );
    let out = quorum(&["eval", "suite.toml", "--json"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json_of(&out);
    let keys: Vec<&str> = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, vec!["j#1", "j#2", "c#1", "c#2"]);
    let prompts: Vec<&str> = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["prompt"].as_str().unwrap())
        .collect();
    assert_eq!(prompts[1], "What is 3+4? Answer with one number.");
    assert_eq!(prompts[2], "What is 10+5? Answer with one number.");
    assert_eq!(v["summary"]["passed"], 4);
    // A row missing a variable is named with its line.
    write(dir.path(), "bad.csv", "a\n1\n");
    write(
        dir.path(),
        "bad.toml",
        "targets = [\"mock/alpha\"]\n[[cases]]\ndataset = \"bad.csv\"\nprompt = \"{{a}} and {{b}}\"\n",
    );
    let out = quorum(&["eval", "bad.toml"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(3));
    let e = stderr(&out);
    assert!(
        e.contains("bad.toml:4") && e.contains("cases[0].prompt"),
        "{e}"
    );
    assert!(e.contains("{{b}}") && e.contains("bad.csv:2"), "{e}");
}

#[test]
fn invalid_suites_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "targets = [\"mock/alpha\"]\n[[cases]]\nprompt = \"x\"\nassert = [{ type = \"containz\", value = \"4\" }]\n",
            ":4:",
            "cases[0].assert[0].type",
        ),
        (
            "targets = [\"mock/alpha\"]\n\n[[cases]]\nprompt = \"x\"\nrepeat = 0\n",
            ":5:",
            "cases[0].repeat",
        ),
        (
            "targets = [\"mock/alpha\"]\n[[cases]]\nprompt = \"x\"\n[[cases]]\nprompt = \"y\"\nassert = [{ type = \"regex\", value = \"(\" }]\n",
            ":6:",
            "cases[1].assert[0].value",
        ),
        (
            "targets = [\"mock/alpha\"]\n[[cases]]\nprompt = \"x\"\nprompty = 1\n",
            ":4:",
            "cases[0].prompty",
        ),
        ("targets = [\"mock/alpha\"\n[[cases]]\n", ":2:", ""),
        (
            "targets = [\"mock/alpha\"]\nassert = [{ type = \"number\" }]\n[[cases]]\nprompt = \"x\"\n",
            ":2:",
            "assert[0]",
        ),
    ];
    for (i, (text, line, key)) in cases.iter().enumerate() {
        let name = format!("s{i}.toml");
        write(dir.path(), &name, text);
        let out = quorum(&["eval", &name], dir.path(), &[]);
        assert_eq!(out.status.code(), Some(3), "{name}: {}", stderr(&out));
        let e = stderr(&out);
        assert!(e.contains(&format!("{name}{line}")), "{name}: {e}");
        assert!(e.contains(key), "{name}: {e}");
    }
    // An unknown target is an invalid suite too; nothing is sent.
    write(
        dir.path(),
        "t.toml",
        "targets = [\"mock/alpha\", \"nope/x\"]\n[[cases]]\nprompt = \"x\"\n",
    );
    let out = quorum(&["eval", "t.toml"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("targets[1]"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_refuses_the_whole_suite_before_any_request() {
    let server = Server::start(vec![openai_sse("4")]).await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "config.toml",
        "[budget]\ndaily_usd = 0.01\n[pricing.\"openai/costly\"]\ninput = 10.0\noutput = 10.0\n",
    );
    // Each case alone fits the cap (≤ $0.001); the 20 together do not.
    let mut suite = String::from("targets = [\"openai/costly\"]\noptions = { max_tokens = 50 }\n");
    for i in 0..20 {
        suite.push_str(&format!("[[cases]]\nprompt = \"What is {i}+1?\"\n"));
    }
    write(dir.path(), "suite.toml", &suite);
    let base = format!("{}/v1", server.url);
    let env = [
        ("OPENAI_API_KEY", FAKE_KEY),
        ("OPENAI_BASE_URL", base.as_str()),
    ];
    let out = quorum_async(&["eval", "suite.toml"], dir.path(), &env).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("budget"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing was sent"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.count(), 0, "nothing may be sent");
    // --force sends it all.
    let out = quorum_async(&["eval", "suite.toml", "--force"], dir.path(), &env).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(server.count(), 20);
}

#[test]
fn junit_xml_is_accepted_by_a_real_parser() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("SKIPPED: python3 is not installed, so the JUnit XML cannot be parsed here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "suite.toml",
        r#"targets = ["mock/alpha", "mock/contrarian"]
[[cases]]
id = "a <&> \"quoted\""
prompt = "What is 2+2? Answer with one number."
assert = [{ type = "contains", value = "4" }]
[[cases]]
prompt = "Is water wet? Say <yes> & 'no'"
assert = [{ type = "regex", value = "^(?i)yes" }]
"#,
    );
    let out = quorum(
        &["eval", "suite.toml", "--junit", "report.xml"],
        dir.path(),
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let script = r#"
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
cases = root.findall('.//testcase')
fails = [c for c in cases if c.find('failure') is not None]
print(root.tag, root.get('tests'), root.get('failures'), len(cases), len(fails))
print(sorted(set(c.get('name') for c in cases)))
"#;
    let py = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir.path().join("report.xml"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&py.stdout).to_string();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let mut lines = said.lines();
    let counts = lines.next().unwrap();
    let fails: usize = counts.split(' ').nth(4).unwrap().parse().unwrap();
    assert!(counts.starts_with("testsuites 4 "), "{said}");
    assert!(counts.contains(" 4 "), "{said}");
    assert!(fails >= 1, "{said}");
    assert!(lines.next().unwrap().contains("a <&> \"quoted\""), "{said}");
}

#[test]
fn resume_continues_a_killed_run_without_redoing_finished_cases() {
    let dir = tempfile::tempdir().unwrap();
    let mut suite = String::from("targets = [\"mock/alpha\"]\n");
    for i in 0..8 {
        suite.push_str(&format!(
            "[[cases]]\nprompt = \"What is {i}+1? Answer with one number.\"\nassert = [{{ type = \"number\", value = {} }}]\n",
            i + 1
        ));
    }
    write(dir.path(), "suite.toml", &suite);
    // A slow mock: about a second per case, one case at a time.
    let mut child = cmd(
        &["eval", "suite.toml", "--concurrency", "1"],
        dir.path(),
        &[("QUORUM_MOCK_TPS", "40")],
    )
    .spawn()
    .unwrap();
    // Wait for the ledger to hold two finished cases, then kill the process hard.
    let mut finished_before = 0;
    let seen = support::eventually_blocking(|| {
        if !dir.path().join("data").join("ledger.sqlite3").exists() {
            return false;
        }
        let l = ledger(dir.path());
        let Ok(Some(run)) = l.eval_run(None, None) else {
            return false;
        };
        finished_before = l.eval_cases(&run.id).map(|c| c.len()).unwrap_or(0);
        finished_before >= 2
    });
    child.kill().unwrap();
    let _ = child.wait();
    assert!(seen, "two cases never finished");
    let l = ledger(dir.path());
    let run = l.eval_run(None, None).unwrap().unwrap();
    let before = l.eval_cases(&run.id).unwrap();
    assert!(before.len() >= 2 && before.len() < 8, "{}", before.len());
    drop(l);
    let out = quorum(
        &["eval", "suite.toml", "--resume", "--json"],
        dir.path(),
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("resuming {}: {} of 8", run.id, before.len())),
        "{}",
        stderr(&out)
    );
    let v = json_of(&out);
    assert_eq!(v["eval_run_id"], run.id.as_str());
    assert_eq!(v["summary"]["finished"], 8);
    assert_eq!(v["summary"]["passed"], 8);
    let l = ledger(dir.path());
    let after = l.eval_cases(&run.id).unwrap();
    assert_eq!(after.len(), 8);
    // The cases finished before the kill were kept as they were, not run again.
    for b in &before {
        assert!(after.contains(b), "{} changed", b.case_key);
    }
    // One request per case in the ledger: none was sent twice (a request cut by the
    // kill never finished, so it has no row).
    let rows = l.recent(100).unwrap();
    let done: Vec<_> = rows.iter().filter(|r| r.status == "ok").collect();
    assert_eq!(done.len(), 8, "{rows:?}");
    assert_eq!(
        l.eval_run(Some(&run.id), None).unwrap().unwrap().status,
        "done"
    );
}

#[test]
fn eval_diff_lists_regressions_between_runs() {
    let dir = tempfile::tempdir().unwrap();
    let suite = |want: &str| {
        format!(
            "targets = [\"mock/alpha\", \"mock/gamma\"]\n[[cases]]\nid = \"sum\"\nprompt = \"What is 2+2? Answer with one number.\"\nassert = [{{ type = \"number\", value = {want} }}]\n[[cases]]\nid = \"same\"\nprompt = \"Is the sky blue?\"\n"
        )
    };
    write(dir.path(), "a.toml", &suite("4"));
    write(dir.path(), "b.toml", &suite("5"));
    let a = json_of(&quorum(&["eval", "a.toml", "--json"], dir.path(), &[]));
    let b = json_of(&quorum(&["eval", "b.toml", "--json"], dir.path(), &[]));
    let (ia, ib) = (
        a["eval_run_id"].as_str().unwrap(),
        b["eval_run_id"].as_str().unwrap(),
    );
    let out = quorum(&["eval", "diff", ia, ib, "--json"], dir.path(), &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a regression exits 1: {}",
        stderr(&out)
    );
    let v = json_of(&out);
    let changes = v["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2, "{v}");
    assert!(changes
        .iter()
        .all(|c| c["case"] == "sum" && c["kind"] == "regression"));
    let out = quorum(&["eval", "diff", ib, ia], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("fixed"));
    let out = quorum(&["eval", "diff", ia, "eval-nope"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_cleanly_and_the_run_can_be_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let mut suite = String::from("targets = [\"mock/alpha\", \"mock/gamma\"]\n");
    for i in 0..6 {
        suite.push_str(&format!("[[cases]]\nprompt = \"What is {i}+2?\"\n"));
    }
    write(dir.path(), "suite.toml", &suite);
    let child = cmd(
        &["eval", "suite.toml", "--concurrency", "2"],
        dir.path(),
        &[("QUORUM_MOCK_TPS", "40")],
    )
    .spawn()
    .unwrap();
    let seen = support::eventually_blocking(|| {
        if !dir.path().join("data").join("ledger.sqlite3").exists() {
            return false;
        }
        let l = ledger(dir.path());
        let Ok(Some(run)) = l.eval_run(None, None) else {
            return false;
        };
        l.eval_cases(&run.id)
            .map(|c| !c.is_empty())
            .unwrap_or(false)
    });
    // SIGINT, as Ctrl+C in a terminal sends.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    assert!(seen, "no case finished");
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("--resume"), "{}", stderr(&out));
    let l = ledger(dir.path());
    let run = l.eval_run(None, None).unwrap().unwrap();
    assert_eq!(run.status, "interrupted");
    let kept = l.eval_cases(&run.id).unwrap().len();
    assert!((1..6).contains(&kept), "{kept}");
    drop(l);
    let out = quorum(
        &["eval", "suite.toml", "--resume", &run.id],
        dir.path(),
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(ledger(dir.path()).eval_cases(&run.id).unwrap().len(), 6);
}

#[test]
fn cache_reuses_answers_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "suite.toml",
        "targets = [\"mock/alpha\", \"mock/gamma\"]\n[[cases]]\nprompt = \"What is 5+5?\"\nassert = [{ type = \"number\", value = 10 }]\n",
    );
    let cached = |v: &Value| -> Vec<bool> {
        v["cases"][0]["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["runs"][0]["cached"].as_bool().unwrap())
            .collect()
    };
    let first = json_of(&quorum(
        &["eval", "suite.toml", "--cache", "--json"],
        dir.path(),
        &[],
    ));
    assert_eq!(cached(&first), vec![false, false]);
    let second = json_of(&quorum(
        &["eval", "suite.toml", "--cache", "--json"],
        dir.path(),
        &[],
    ));
    assert_eq!(cached(&second), vec![true, true], "{second}");
    assert_eq!(second["summary"]["passed"], 1);
    let bypass = json_of(&quorum(
        &["eval", "suite.toml", "--no-cache", "--json"],
        dir.path(),
        &[],
    ));
    assert_eq!(cached(&bypass), vec![false, false]);
}
