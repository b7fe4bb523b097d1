//! `quorum ask` with request options, as a whole process: `--image` against
//! local servers speaking each vision provider's wire, `--schema` and
//! `--tools` verdicts, and bad input refused with the file named before
//! anything is sent.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use support::{Reply, Server};

const KEY: &str = "sk-quorum-options-FAKEKEY-0123456789";

/// A 1x1 PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0xF8, 0xCF, 0xC0, 0xF0,
    0x1F, 0x00, 0x05, 0x00, 0x01, 0xFF, 0x89, 0x99, 0x3D, 0x1D, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
];

fn quorum(args: &[&str], env: &[(&str, &str)]) -> Output {
    let data = tempfile::tempdir().unwrap();
    quorum_in(data.path(), args, env)
}

/// `quorum` with `data` as its data dir (and home), kept after it exits.
fn quorum_in(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quorum"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", data)
        .env("QUORUM_DATA_DIR", data)
        .env("QUORUM_CONFIG", data.join("none.toml"))
        .env("QUORUM_MOCK_TPS", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

async fn quorum_async(args: Vec<String>, env: Vec<(String, String)>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        quorum(&args, &env)
    })
    .await
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn write(dir: &Path, name: &str, body: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.to_string_lossy().into_owned()
}

const PNG_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg==";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_image_against_all_four_vision_providers() {
    let dir = tempfile::tempdir().unwrap();
    let img = write(dir.path(), "dot.png", PNG);
    let cases: Vec<(&str, &str, &str, Reply, &str)> = vec![
        (
            "openai/gpt-4o-mini",
            "OPENAI_API_KEY",
            "OPENAI_BASE_URL",
            Reply::sse(
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"A dot.\"},\"finish_reason\":\"stop\"}]}\n\n\
                 data: [DONE]\n\n",
            ),
            "/v1",
        ),
        (
            "anthropic/claude-sonnet-4-5",
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_BASE_URL",
            Reply::sse(
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n\
                 event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
                 event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"A dot.\"}}\n\n\
                 event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":3}}\n\n\
                 event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            ),
            "",
        ),
        (
            "gemini/gemini-2.5-flash",
            "GEMINI_API_KEY",
            "GEMINI_BASE_URL",
            Reply::sse(
                "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"A dot.\"}],\"role\":\"model\"},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":260,\"candidatesTokenCount\":3}}\n\n",
            ),
            "",
        ),
        (
            "ollama/llava",
            "OLLAMA_API_KEY",
            "OLLAMA_HOST",
            Reply::new(
                200,
                "application/x-ndjson",
                "{\"message\":{\"role\":\"assistant\",\"content\":\"A dot.\"},\"done\":false}\n\
                 {\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":580,\"eval_count\":3}\n",
            ),
            "",
        ),
    ];
    for (target, key_var, base_var, reply, suffix) in cases {
        let s = Server::start(vec![reply]).await;
        let out = quorum_async(
            vec![
                "ask".into(),
                "-m".into(),
                target.into(),
                "-i".into(),
                img.clone(),
                "What is this?".into(),
            ],
            vec![
                (key_var.into(), KEY.into()),
                (base_var.into(), format!("{}{suffix}", s.url)),
            ],
        )
        .await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{target}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout).trim(), "A dot.", "{target}");
        let b = s.requests()[0].json();
        let images: Value = match target.split('/').next().unwrap() {
            "openai" => b["messages"][0]["content"][1]["image_url"]["url"].clone(),
            "anthropic" => b["messages"][0]["content"][0]["source"].clone(),
            "gemini" => b["contents"][0]["parts"][1]["inlineData"].clone(),
            _ => b["messages"][0]["images"].clone(),
        };
        let want = match target.split('/').next().unwrap() {
            "openai" => json!(format!("data:image/png;base64,{PNG_B64}")),
            "anthropic" => json!({"type": "base64", "media_type": "image/png", "data": PNG_B64}),
            "gemini" => json!({"mimeType": "image/png", "data": PNG_B64}),
            _ => json!([PNG_B64]),
        };
        assert_eq!(images, want, "{target}: {b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_and_tools_verdicts_in_json_output() {
    let dir = tempfile::tempdir().unwrap();
    let schema = write(
        dir.path(),
        "answer.schema.json",
        br#"{"type":"object","required":["answer"],"properties":{"answer":{"type":"integer"}}}"#,
    );
    // The mock answers {"answer": 4} to arithmetic in JSON mode.
    let out = quorum(
        &[
            "ask",
            "-m",
            "mock/alpha",
            "--schema",
            &schema,
            "--json",
            "What is 2+2?",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema_valid"], json!(true), "{v}");
    let strict = write(
        dir.path(),
        "strict.json",
        br#"{"type":"object","required":["answer","unit"],"properties":{"answer":{"type":"string"}}}"#,
    );
    let out = quorum(
        &[
            "ask",
            "-m",
            "mock/alpha",
            "--schema",
            &strict,
            "--json",
            "What is 2+2?",
        ],
        &[],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema_valid"], json!(false), "{v}");
    assert!(v["schema_error"]["message"].as_str().is_some(), "{v}");
    // In text mode the verdict goes to stderr.
    let out = quorum(
        &[
            "ask",
            "-m",
            "mock/alpha",
            "--schema",
            &strict,
            "What is 2+2?",
        ],
        &[],
    );
    assert!(
        text(&out.stderr).contains("schema: invalid at "),
        "{}",
        text(&out.stderr)
    );

    // Tools over HTTP: the documented body, and each call judged.
    let tools = write(
        dir.path(),
        "tools.json",
        br#"[{"type":"function","function":{"name":"get_weather","description":"Weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]"#,
    );
    let s = Server::start(vec![Reply::json(
        200,
        r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":7}"}}]},"finish_reason":"tool_calls"}]}"#,
    )])
    .await;
    let out = quorum_async(
        vec![
            "ask".into(),
            "-m".into(),
            "openai/gpt-4o-mini".into(),
            "--tools".into(),
            tools,
            "--tool-choice".into(),
            "get_weather".into(),
            "--no-stream".into(),
            "--json".into(),
            "Weather in Paris?".into(),
        ],
        vec![
            ("OPENAI_API_KEY".into(), KEY.into()),
            ("OPENAI_BASE_URL".into(), format!("{}/v1", s.url)),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tool_calls"][0]["valid"], json!(false), "{v}");
    assert!(v["tool_calls"][0]["invalid_reason"]
        .as_str()
        .unwrap()
        .starts_with("at /city"));
    let b = s.requests()[0].json();
    assert_eq!(
        b["tool_choice"],
        json!({"type": "function", "function": {"name": "get_weather"}})
    );
    assert_eq!(b["tools"][0]["function"]["name"], json!("get_weather"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_named_and_nothing_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(vec![Reply::json(200, "{}")]).await;
    let fake_png = write(dir.path(), "shot.png", b"not really a png");
    let bad_schema = write(dir.path(), "bad.schema.json", br#"{"type": 12}"#);
    let not_list = write(dir.path(), "tools.json", br#"{"name": "f"}"#);
    let missing = dir
        .path()
        .join("nowhere.txt")
        .to_string_lossy()
        .into_owned();
    for (flag, path, want) in [
        (
            "-i",
            fake_png.as_str(),
            "shot.png: is not a PNG, JPEG, WebP or GIF",
        ),
        (
            "--schema",
            bad_schema.as_str(),
            "bad.schema.json: is not a valid JSON Schema",
        ),
        (
            "--tools",
            not_list.as_str(),
            "tools.json: must be a JSON list of functions",
        ),
        ("-f", missing.as_str(), "nowhere.txt: no such file"),
    ] {
        let out = quorum_async(
            vec![
                "ask".into(),
                "-m".into(),
                "openai/gpt-4o-mini".into(),
                flag.into(),
                path.into(),
                "hi".into(),
            ],
            vec![
                ("OPENAI_API_KEY".into(), KEY.into()),
                ("OPENAI_BASE_URL".into(), format!("{}/v1", s.url)),
            ],
        )
        .await;
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains(want), "{flag}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // A model without vision, refused by name.
    let img = write(dir.path(), "dot.png", PNG);
    let out = quorum_async(
        vec![
            "ask".into(),
            "-m".into(),
            "openai/gpt-3.5-turbo".into(),
            "-i".into(),
            img,
            "hi".into(),
        ],
        vec![
            ("OPENAI_API_KEY".into(), KEY.into()),
            ("OPENAI_BASE_URL".into(), format!("{}/v1", s.url)),
        ],
    )
    .await;
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("openai/gpt-3.5-turbo"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(s.count(), 0, "nothing was sent");
}

fn exec(task: &str) -> Output {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_quorum"))
        .arg("exec")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", data.path())
        .env("QUORUM_DATA_DIR", data.path())
        .env("QUORUM_CONFIG", data.path().join("none.toml"))
        .env("QUORUM_MOCK_TPS", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(task.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn exec_task_takes_the_same_options() {
    let dir = tempfile::tempdir().unwrap();
    let schema = write(
        dir.path(),
        "s.json",
        br#"{"type":"object","required":["answer"],"properties":{"answer":{"type":"integer"}}}"#,
    );
    let task = json!({"prompt": "What is 2+2?", "model": "mock/alpha", "schema": schema});
    let out = exec(&task.to_string());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema_valid"], json!(true), "{v}");
    let missing = dir.path().join("gone.png").to_string_lossy().into_owned();
    let task = json!({"prompt": "see", "model": "mock/alpha", "images": [missing]});
    let out = exec(&task.to_string());
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gone.png: no such file"),
        "{v}"
    );
    // A malformed field is a task error, like any other field of the task.
    let out = exec(r#"{"prompt": "x", "files": "notes.md"}"#);
    assert_eq!(out.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["field"], json!("files"), "{v}");
}

/// The ledger keeps what was attached by name, size and SHA-256, never the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_records_attachments_by_name_size_and_hash() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let body = "SECRET-FILE-BODY line one\nline two of the report\n";
    let file = write(dir.path(), "report.txt", body.as_bytes());
    let img = write(dir.path(), "dot.png", PNG);
    let s = Server::start(vec![Reply::sse(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"A report and a dot.\"},\"finish_reason\":\"stop\"}]}\n\n\
         data: [DONE]\n\n",
    )])
    .await;
    let (base, home) = (s.url.clone(), data.path().to_path_buf());
    // Names are kept as given on the command line.
    let args = [&file, &img].map(|p| p.to_string());
    let out = tokio::task::spawn_blocking(move || {
        let (file, img) = (&args[0], &args[1]);
        quorum_in(
            &home,
            &[
                "ask",
                "-m",
                "openai/gpt-4o-mini",
                "-f",
                file,
                "-i",
                img,
                "Summarise this.",
            ],
            &[
                ("OPENAI_API_KEY", KEY),
                ("OPENAI_BASE_URL", &format!("{base}/v1")),
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The file did reach the model; only the ledger leaves it out.
    assert!(text(&s.requests()[0].body).contains("SECRET-FILE-BODY"));
    let file_sha = hex::encode(Sha256::digest(body.as_bytes()));
    let img_sha = hex::encode(Sha256::digest(PNG));

    // The row as stored: every column, as text.
    let db = rusqlite::Connection::open(data.path().join("ledger.sqlite3")).unwrap();
    let (row, attachments): (String, String) = db
        .query_row(
            "SELECT quote(run_id) || quote(target) || quote(prompt) || quote(response) \
                 || quote(attachments), attachments FROM requests",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let list: Value = serde_json::from_str(&attachments).unwrap();
    assert_eq!(
        list,
        json!([
            {"name": file, "kind": "file", "media_type": "text/plain",
             "bytes": body.len(), "sha256": file_sha},
            {"name": img, "kind": "image", "media_type": "image/png",
             "bytes": PNG.len(), "sha256": img_sha},
        ]),
        "{attachments}"
    );
    assert!(!row.contains("SECRET-FILE-BODY"), "{row}");
    assert!(!row.contains(&PNG_B64[..24]), "{row}");
    // No column of the row holds the file's text or the image's bytes.
    let cols: Vec<String> = db
        .prepare("SELECT name FROM pragma_table_info('requests')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(cols.iter().any(|c| c == "attachments"), "{cols:?}");
    for c in &cols {
        let v: Option<String> = db
            .query_row(
                &format!("SELECT CAST({c} AS TEXT) FROM requests"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        let v = v.unwrap_or_default();
        assert!(!v.contains("SECRET-FILE-BODY"), "{c}: {v}");
        assert!(!v.contains(&PNG_B64[..24]), "{c}: {v}");
    }

    // `quorum ledger show` names them, with size and hash.
    let out = quorum_in(data.path(), &["ledger", "show", "1"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    let line = shown
        .lines()
        .find(|l| l.trim_start().starts_with("attachments:"))
        .unwrap_or_else(|| panic!("no attachments line in:\n{shown}"));
    assert!(
        line.contains(&format!(
            "report.txt ({} B, sha256 {}…)",
            body.len(),
            &file_sha[..12]
        )),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "dot.png ({} B, sha256 {}…)",
            PNG.len(),
            &img_sha[..12]
        )),
        "{line}"
    );
    assert!(!shown.contains("SECRET-FILE-BODY"), "{shown}");
    let out = quorum_in(data.path(), &["ledger", "show", "1", "--json"], &[]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let got = serde_json::to_string(&v).unwrap();
    assert!(got.contains(&file_sha) && got.contains(&img_sha), "{got}");
}
