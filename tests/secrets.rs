//! Secret audit: a distinctive fake key for every provider, then every face
//! and every failure path; no key may appear in any output, file or `Debug`
//! text. The servers check the keys did reach them, so the test cannot pass
//! by never sending them.
//!
//! A new face is one line in [`faces`] (a `quorum` command line) or in
//! `debug_texts` (an in-process value). The whole data dir is scanned, so
//! new files there (exports, logs, caches) are covered without a change.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use support::{Reply, Server};

// The fake keys: long, distinctive, and each found by its own middle part too.
const OPENAI_KEY: &str = "sk-proj-AUDITopenai7Qx9vLm2Zr4Kp8Wn3Jt6Yb1";
const ANTHROPIC_KEY: &str = "sk-ant-FAKE.audit.anthropic.5Hd8Fs2Gq9Lx4Vc7";
const GEMINI_KEY: &str = "AIzaSyAUDITgemini3Mn6Bv9Cx2Zl5Kj8Hg1Fd";
const OPENROUTER_KEY: &str = "sk-or-v1-AUDITopenrouter8Pq3Wr6Ty9Ui2Op5";
/// The compatible provider's key, printed by its `api_key_cmd`.
const CMD_KEY: &str = "lab-AUDITcmdkey4Rt7Yu1Io3Pa6Sd9Fg2Hj";
/// A header value taken from `${LAB_TOKEN}`.
const HEADER_TOKEN: &str = "tok-AUDITheader2Zx5Cv8Bn1Mq4We7Rt0Yu";

const ALL: [&str; 6] = [
    OPENAI_KEY,
    ANTHROPIC_KEY,
    GEMINI_KEY,
    OPENROUTER_KEY,
    CMD_KEY,
    HEADER_TOKEN,
];

/// `quorum serve`'s bearer token (`--token-env QUORUM_SERVE_TOKEN`), and a
/// wrong one a client sends: neither may come back in any answer or log.
const SERVE_TOKEN: &str = "srv-AUDITservetok6Gh9Jk2Lm5Nb8Vc1Xz4";
const WRONG_TOKEN: &str = "srv-AUDITwrongtok3Qw6Er9Ty2Ui5Op8As1";

/// Environment reads and `set_var` must not race between the tests here.
static ENV: Mutex<()> = Mutex::new(());

/// A key, or a telling part of it (a truncated or re-encoded copy is a leak too).
fn leaks(hay: &[u8]) -> Vec<&'static str> {
    ALL.iter()
        .chain(&[SERVE_TOKEN, WRONG_TOKEN])
        .copied()
        .filter(|k| {
            let mid = &k[k.len() / 4..k.len() / 4 + 16];
            [k.as_bytes(), mid.as_bytes()]
                .iter()
                .any(|n| hay.windows(n.len()).any(|w| w == *n))
        })
        .collect()
}

fn assert_clean(what: &str, hay: &[u8]) {
    let found = leaks(hay);
    assert!(
        found.is_empty(),
        "{what}: a key leaked ({found:?}):\n{}",
        String::from_utf8_lossy(hay)
    );
}

// ---------------------------------------------------------------------------
// Servers

fn openai_sse() -> Vec<u8> {
    concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"four\"},\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\n",
        "data: [DONE]\n\n"
    )
    .into()
}

fn anthropic_sse() -> Vec<u8> {
    concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"four\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":1}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
    )
    .into()
}

fn gemini_sse() -> Vec<u8> {
    b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"four\"}],\"role\":\"model\"},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":1,\"totalTokenCount\":6}}\r\n\r\n".to_vec()
}

/// A careless (or hostile) server: it answers every request with an error
/// that quotes every header value it received, keys included.
struct Echo {
    url: String,
    /// Header values of every request it got.
    seen: std::sync::Arc<Mutex<Vec<String>>>,
}

#[derive(Clone, Copy)]
enum EchoMode {
    Status(u16),
    InStream,
}

async fn echo_server(mode: EchoMode) -> Echo {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                let head_end = loop {
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p;
                    }
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let values: Vec<String> = head
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
                    .collect();
                let quoted = format!("invalid credentials: {}", values.join(" | "));
                seen.lock().unwrap().extend(values);
                let msg = serde_json::Value::from(quoted).to_string();
                let (status, ctype, body) = match mode {
                    EchoMode::Status(code) => (
                        code,
                        "application/json",
                        format!(
                            r#"{{"type":"error","error":{{"message":{msg},"type":"invalid_request_error","code":"invalid_api_key","status":"UNAUTHENTICATED"}}}}"#
                        ),
                    ),
                    EchoMode::InStream if path.contains("/messages") => (
                        200,
                        "text/event-stream",
                        format!("event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\",\"message\":{msg}}}}}\n\n"),
                    ),
                    EchoMode::InStream => (
                        200,
                        "text/event-stream",
                        format!("data: {{\"error\":{{\"message\":{msg},\"type\":\"server_error\"}}}}\n\ndata: {msg}\n\n"),
                    ),
                };
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Echo { url, seen }
}

fn ok(body: Vec<u8>) -> Reply {
    Reply::sse(body).chunked(4096, Duration::ZERO)
}

struct Servers {
    openai: Server,
    anthropic: Server,
    gemini: Server,
    openrouter: Server,
    lab: Server,
    unauthorized: Echo,
    bad_request: Echo,
    in_stream_error: Echo,
    slow: Server,
    closed: String,
}

async fn servers() -> Servers {
    let closed = format!("http://127.0.0.1:{}", support::refused_port());
    let mut slow = ok(openai_sse());
    slow.delay = Duration::from_secs(5);
    Servers {
        openai: Server::start(vec![ok(openai_sse())]).await,
        anthropic: Server::start(vec![ok(anthropic_sse())]).await,
        gemini: Server::start(vec![ok(gemini_sse())]).await,
        openrouter: Server::start(vec![ok(openai_sse())]).await,
        lab: Server::start(vec![ok(openai_sse())]).await,
        unauthorized: echo_server(EchoMode::Status(401)).await,
        bad_request: echo_server(EchoMode::Status(400)).await,
        in_stream_error: echo_server(EchoMode::InStream).await,
        slow: Server::start(vec![slow]).await,
        closed,
    }
}

// ---------------------------------------------------------------------------
// The process under audit

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lab.key"), format!("{CMD_KEY}\n")).unwrap();
        Home { dir }
    }
    fn data(&self) -> PathBuf {
        // Not created beforehand: quorum makes it, and must make it private.
        self.dir.path().join("data").join("quorum")
    }
    fn config(&self, lab: &str) -> PathBuf {
        let p = self.dir.path().join("config.toml");
        let key_file = self.dir.path().join("lab.key");
        let text = format!(
            r#"
[providers.lab]
kind = "compatible"
base_url = "{lab}/v1"
api_key_cmd = "cat '{}'"
models = ["lab-model"]

[providers.lab.headers]
X-Lab-Token = "${{LAB_TOKEN}}"
"#,
            key_file.display()
        );
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// Where each provider is sent for one process.
#[derive(Clone)]
struct Urls {
    openai: String,
    anthropic: String,
    gemini: String,
    openrouter: String,
    lab: String,
}

impl Urls {
    fn of(s: &Servers) -> Urls {
        Urls {
            openai: s.openai.url.clone(),
            anthropic: s.anthropic.url.clone(),
            gemini: s.gemini.url.clone(),
            openrouter: s.openrouter.url.clone(),
            lab: s.lab.url.clone(),
        }
    }
    /// Every provider at the same (failing) server.
    fn all(url: &str) -> Urls {
        Urls {
            openai: url.into(),
            anthropic: url.into(),
            gemini: url.into(),
            openrouter: url.into(),
            lab: url.into(),
        }
    }
}

/// The environment every process under audit gets: every key, every base URL.
fn env_pairs(home: &Home, urls: &Urls) -> Vec<(String, String)> {
    [
        ("HOME", home.dir.path().display().to_string()),
        ("QUORUM_DATA_DIR", home.data().display().to_string()),
        (
            "QUORUM_CONFIG",
            home.config(&urls.lab).display().to_string(),
        ),
        ("QUORUM_MOCK_TPS", "0".into()),
        ("OPENAI_API_KEY", OPENAI_KEY.into()),
        ("OPENAI_BASE_URL", format!("{}/v1", urls.openai)),
        ("ANTHROPIC_API_KEY", ANTHROPIC_KEY.into()),
        ("ANTHROPIC_BASE_URL", urls.anthropic.clone()),
        ("GEMINI_API_KEY", GEMINI_KEY.into()),
        ("GEMINI_BASE_URL", urls.gemini.clone()),
        ("OPENROUTER_API_KEY", OPENROUTER_KEY.into()),
        ("OPENROUTER_BASE_URL", format!("{}/api/v1", urls.openrouter)),
        ("LAB_TOKEN", HEADER_TOKEN.into()),
        ("QUORUM_MAX_RETRIES", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn quorum(home: &Home, urls: &Urls, args: &[&str]) -> Output {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quorum"));
    cmd.args(args)
        .env_clear()
        .env("PATH", path)
        .env("HOME", home.dir.path())
        .env("QUORUM_DATA_DIR", home.data())
        .env("QUORUM_CONFIG", home.config(&urls.lab))
        .env("QUORUM_MOCK_TPS", "0")
        .env("RUST_LOG", "trace")
        .env("RUST_BACKTRACE", "1")
        .env("OPENAI_API_KEY", OPENAI_KEY)
        .env("OPENAI_BASE_URL", format!("{}/v1", urls.openai))
        .env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        .env("ANTHROPIC_BASE_URL", &urls.anthropic)
        .env("GEMINI_API_KEY", GEMINI_KEY)
        .env("GEMINI_BASE_URL", &urls.gemini)
        .env("OPENROUTER_API_KEY", OPENROUTER_KEY)
        .env("OPENROUTER_BASE_URL", format!("{}/api/v1", urls.openrouter))
        .env("LAB_TOKEN", HEADER_TOKEN)
        .env("QUORUM_MAX_RETRIES", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.output().unwrap()
}

const TARGETS: [&str; 5] = [
    "openai/gpt-4o-mini",
    "anthropic/claude-haiku-4-5",
    "gemini/gemini-2.5-flash",
    "openrouter/openai/gpt-4o-mini",
    "lab/lab-model",
];

/// Every face there is now, one line each. Add new ones here
/// (e.g. `&["serve", ...]`, a TUI export) as they land.
fn faces() -> Vec<Vec<&'static str>> {
    let mut v: Vec<Vec<&str>> = Vec::new();
    for t in TARGETS {
        v.push(vec!["ask", "-m", t, "What is 2+2?"]);
        v.push(vec!["ask", "-m", t, "--json", "What is 2+2?"]);
        v.push(vec![
            "ask",
            "-m",
            t,
            "--no-stream",
            "--json",
            "What is 2+2?",
        ]);
    }
    v.extend([
        vec![
            "compare",
            "--json",
            "-m",
            TARGETS[0],
            "-m",
            TARGETS[1],
            "-m",
            TARGETS[2],
            "-m",
            TARGETS[3],
            "-m",
            TARGETS[4],
            "What is 2+2?",
        ],
        vec![
            "compare",
            "-m",
            TARGETS[0],
            "-m",
            TARGETS[4],
            "What is 2+2?",
        ],
        vec![
            "compare",
            "--markdown",
            "-m",
            TARGETS[1],
            "-m",
            TARGETS[2],
            "What is 2+2?",
        ],
        vec![
            "compare",
            "--csv",
            "-m",
            TARGETS[3],
            "-m",
            "mock/alpha",
            "What is 2+2?",
        ],
        vec!["models"],
        vec!["models", "--json"],
        vec!["ledger"],
        vec!["ledger", "--json"],
        vec!["ledger", "sessions"],
        vec!["ledger", "show", "1"],
        vec!["pricing", "show"],
        vec!["pricing", "show", "--json"],
        vec!["leaderboard"],
        vec!["completions", "bash"],
        vec!["completions", "zsh"],
        vec!["--help"],
        vec!["ask", "--help"],
        vec!["--version"],
    ]);
    v
}

/// Failure paths: (what, where every provider is sent, extra flags).
fn failures(s: &Servers) -> Vec<(&'static str, Urls, Vec<&'static str>)> {
    vec![
        (
            "401 echoing the key",
            Urls::all(&s.unauthorized.url),
            vec![],
        ),
        ("400 echoing the key", Urls::all(&s.bad_request.url), vec![]),
        (
            "in-stream error echoing the key",
            Urls::all(&s.in_stream_error.url),
            vec![],
        ),
        ("network error (closed port)", Urls::all(&s.closed), vec![]),
        ("timeout", Urls::all(&s.slow.url), vec!["--timeout", "0.3"]),
    ]
}

fn check_output(what: &str, out: &Output) {
    assert_clean(&format!("{what}: stdout"), &out.stdout);
    assert_clean(&format!("{what}: stderr"), &out.stderr);
}

/// Every file under `dir`: the ledger (and its WAL), caches, logs, exports.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn seen_header(s: &Server, name: &str) -> Vec<String> {
    s.requests()
        .iter()
        .filter_map(|r| r.header(name).map(str::to_string))
        .collect()
}

// ---------------------------------------------------------------------------

#[test]
fn no_face_and_no_failure_shows_a_key() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(servers());
    let home = Home::new();
    let urls = Urls::of(&s);

    // Setup: the answers work, so the ledger has rows to show.
    for args in faces() {
        let out = quorum(&home, &urls, &args);
        check_output(&args.join(" "), &out);
    }
    let ok = quorum(&home, &urls, &["ask", "-m", "lab/lab-model", "hi"]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("four"));

    for (what, urls, flags) in failures(&s) {
        for t in TARGETS {
            for json in [false, true] {
                let mut args = flags.clone();
                args.extend(["ask", "-m", t]);
                if json {
                    args.push("--json");
                }
                args.push("What is 2+2?");
                let out = quorum(&home, &urls, &args);
                let label = format!("{what}: {}", args.join(" "));
                assert_eq!(out.status.code(), Some(1), "{label} should fail: {out:?}");
                check_output(&label, &out);
            }
        }
        let out = quorum(
            &home,
            &urls,
            &[
                &flags[..],
                &[
                    "compare", "--json", "-m", TARGETS[0], "-m", TARGETS[4], "hi",
                ],
            ]
            .concat(),
        );
        check_output(&format!("{what}: compare"), &out);
    }
    // The ledger now holds failed rows too: its faces once more.
    for args in [
        vec!["ledger"],
        vec!["ledger", "--json"],
        vec!["ledger", "show", "2"],
    ] {
        check_output(&args.join(" "), &quorum(&home, &urls, &args));
    }

    // Every file in the data dir, the SQLite bytes and WAL included.
    let data = home.data();
    let all = files(&data);
    assert!(
        all.iter().any(|p| p.ends_with("ledger.sqlite3")),
        "no ledger in {all:?}"
    );
    for f in &all {
        assert_clean(&f.display().to_string(), &std::fs::read(f).unwrap());
    }
    // And through SQLite itself, in case of compression or paging tricks.
    let db = rusqlite::Connection::open(data.join("ledger.sqlite3")).unwrap();
    let dump: String = db
        .query_row(
            "SELECT group_concat(coalesce(error_message,'') || coalesce(response,'') || coalesce(prompt,''), '|') FROM requests",
            [],
            |r| r.get::<_, Option<String>>(0),
        )
        .unwrap()
        .unwrap_or_default();
    assert!(dump.contains("four"), "the ledger has the answers");
    assert_clean("ledger rows", dump.as_bytes());

    // Private data dir and files.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700, "data dir");
        assert_eq!(mode(data.parent().unwrap()), 0o700, "created parent");
        for f in &all {
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
    }

    // Not vacuous: every key did reach its server, in the header it belongs in.
    let bearer = |k: &str| format!("Bearer {k}");
    assert!(seen_header(&s.openai, "authorization").contains(&bearer(OPENAI_KEY)));
    assert!(seen_header(&s.anthropic, "x-api-key").contains(&ANTHROPIC_KEY.to_string()));
    assert!(seen_header(&s.gemini, "x-goog-api-key").contains(&GEMINI_KEY.to_string()));
    assert!(seen_header(&s.openrouter, "authorization").contains(&bearer(OPENROUTER_KEY)));
    assert!(seen_header(&s.lab, "authorization").contains(&bearer(CMD_KEY)));
    assert!(seen_header(&s.lab, "x-lab-token").contains(&HEADER_TOKEN.to_string()));
    for (name, srv) in [
        ("401", &s.unauthorized),
        ("400", &s.bad_request),
        ("in-stream", &s.in_stream_error),
    ] {
        let sent = srv.seen.lock().unwrap().join(" ");
        for k in ALL {
            assert!(
                sent.contains(k),
                "{name}: {k} was never sent, so its echo proves nothing"
            );
        }
    }
    assert!(s.slow.count() > 0, "the timeout path reached its server");
}

/// `Debug` of everything a face may print or log: the config, the engine,
/// its registry and settings. One line per value.
#[test]
fn debug_output_of_the_loaded_config_and_engine_shows_no_key() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let home = Home::new();
    let cfg_path = home.config("http://127.0.0.1:9");
    // The data dir is read from the process environment.
    // SAFETY: the lock above keeps the other test of this file from reading
    // the environment meanwhile, and nothing else in this process does.
    unsafe { std::env::set_var("QUORUM_DATA_DIR", home.data()) };
    let env = |k: &str| -> Option<String> {
        match k {
            "OPENAI_API_KEY" => Some(OPENAI_KEY.into()),
            "ANTHROPIC_API_KEY" => Some(ANTHROPIC_KEY.into()),
            "GEMINI_API_KEY" => Some(GEMINI_KEY.into()),
            "OPENROUTER_API_KEY" => Some(OPENROUTER_KEY.into()),
            "LAB_TOKEN" => Some(HEADER_TOKEN.into()),
            "QUORUM_CONFIG" => Some(cfg_path.display().to_string()),
            "QUORUM_DATA_DIR" => Some(home.data().display().to_string()),
            _ => None,
        }
    };
    let flags = llm_quorum::app::GlobalFlags::default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (engine, settings) = rt
        .block_on(async { llm_quorum::app::load_with_env(&flags, &env) })
        .unwrap();
    let cfg = llm_quorum::config::load(&flags.overrides(), &env).unwrap();
    let spec = engine.registry().provider("lab").unwrap();
    assert_eq!(
        spec.api_key.as_ref().map(|k| k.expose()),
        Some(CMD_KEY),
        "the key was loaded"
    );
    let debug_texts = [
        ("config", format!("{cfg:?} {cfg:#?}")),
        ("settings", format!("{settings:?} {settings:#?}")),
        ("engine", format!("{engine:?} {engine:#?}")),
        (
            "registry",
            format!("{:?} {:#?}", engine.registry(), engine.registry()),
        ),
        ("lab spec", format!("{spec:?}")),
        (
            "engine config",
            format!("{:?}", cfg.engine_config(&env).map(|c| c.registry)),
        ),
    ];
    for (what, text) in debug_texts {
        assert_clean(what, text.as_bytes());
    }
    drop((engine, settings));
}

/// A config file that holds a literal secret (here a `${VAR:-fallback}`
/// written out) gets a warning while other users can read it, and none once
/// it is private; the warning names the key path, never the value.
#[test]
fn a_readable_config_with_a_literal_secret_is_warned_about() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let home = Home::new();
    let p = home.dir.path().join("exposed.toml");
    std::fs::write(
        &p,
        format!(
            "[providers.lab]\nkind = \"compatible\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\n[providers.lab.headers]\nX-Lab-Token = \"${{UNSET_TOKEN:-{HEADER_TOKEN}}}\"\n"
        ),
    )
    .unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_quorum"))
            .args(["--config", p.to_str().unwrap(), "models"])
            .env_clear()
            .env("HOME", home.dir.path())
            .env("QUORUM_DATA_DIR", home.data())
            .output()
            .unwrap()
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = run();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            err.contains("warning")
                && err.contains("providers.lab.headers.X-Lab-Token")
                && err.contains("chmod 600"),
            "{err}"
        );
        check_output("exposure warning", &out);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = run();
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("warning"),
            "{out:?}"
        );
        // A config that takes its secrets from the environment is never warned about.
        let clean = home.config("http://127.0.0.1:9");
        std::fs::set_permissions(&clean, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_quorum"))
            .args(["--config", clean.to_str().unwrap(), "models"])
            .env_clear()
            .env("HOME", home.dir.path())
            .env("QUORUM_DATA_DIR", home.data())
            .env("LAB_TOKEN", HEADER_TOKEN)
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("warning"),
            "{out:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// `quorum serve`

/// A `quorum serve` under audit: the home's environment, every log line, a token.
fn start_serve(home: &Home, urls: &Urls, global: &[&str]) -> support::serve::Serve {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quorum"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env_pairs(home, urls))
        .env("RUST_LOG", "trace")
        .env("RUST_BACKTRACE", "1")
        .env("QUORUM_SERVE_TOKEN", SERVE_TOKEN)
        .args(global);
    support::serve::start(cmd, &["--token-env", "QUORUM_SERVE_TOKEN"])
}

/// One HTTP exchange: (what, status, body).
async fn exchange(
    c: &reqwest::Client,
    what: String,
    rb: reqwest::RequestBuilder,
) -> (String, u16, String) {
    let _ = c;
    let r = rb.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = r.status().as_u16();
    (what, status, r.text().await.unwrap_or_default())
}

/// Every endpoint and method of `quorum serve` against one set of upstreams.
async fn serve_traffic(url: &str) -> Vec<(String, u16, String)> {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let auth = format!("Bearer {SERVE_TOKEN}");
    let rpc = |body: serde_json::Value| {
        c.post(format!("{url}/rpc"))
            .header("authorization", &auth)
            .json(&body)
    };
    let mut out = Vec::new();
    for (i, t) in TARGETS.iter().enumerate() {
        let p = serde_json::json!({"model": t, "prompt": "What is 2+2?"});
        for method in ["llm.complete", "llm.stream"] {
            let body =
                serde_json::json!({"jsonrpc": "2.0", "id": i, "method": method, "params": p});
            out.push(exchange(&c, format!("{method} {t}"), rpc(body)).await);
        }
        // A batch and a notification go down the same path.
        let batch = serde_json::json!([
            {"jsonrpc": "2.0", "id": "b", "method": "llm.complete", "params": p},
            {"jsonrpc": "2.0", "method": "llm.complete", "params": p},
        ]);
        out.push(exchange(&c, format!("batch {t}"), rpc(batch)).await);
        for stream in [false, true] {
            let body = serde_json::json!({"model": t, "stream": stream,
                "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "What is 2+2?"}]});
            let rb = c
                .post(format!("{url}/v1/chat/completions"))
                .header("authorization", &auth)
                .json(&body);
            out.push(exchange(&c, format!("/v1/chat/completions stream={stream} {t}"), rb).await);
        }
    }
    let compare = serde_json::json!({"jsonrpc": "2.0", "id": "c", "method": "llm.compare",
        "params": {"models": TARGETS, "prompt": "What is 2+2?", "judge": TARGETS[1]}});
    out.push(exchange(&c, "llm.compare".into(), rpc(compare)).await);
    for method in ["llm.models", "llm.health", "llm.metrics"] {
        let body = serde_json::json!({"jsonrpc": "2.0", "id": method, "method": method});
        out.push(exchange(&c, method.into(), rpc(body)).await);
    }
    for path in ["/v1/models", "/metrics", "/healthz", "/nowhere"] {
        let rb = c.get(format!("{url}{path}")).header("authorization", &auth);
        out.push(exchange(&c, path.into(), rb).await);
    }
    // Wrong, malformed and missing tokens: a 401 that repeats none of them.
    for (how, value) in [
        ("wrong token", Some(format!("Bearer {WRONG_TOKEN}"))),
        ("token as Basic", Some(format!("Basic {SERVE_TOKEN}"))),
        (
            "token with a suffix",
            Some(format!("Bearer {SERVE_TOKEN}x")),
        ),
        ("no token", None),
    ] {
        for path in ["/rpc", "/v1/chat/completions", "/v1/models", "/metrics"] {
            let mut rb = if path == "/v1/models" || path == "/metrics" {
                c.get(format!("{url}{path}"))
            } else {
                c.post(format!("{url}{path}")).body(
                    serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "llm.health",
                        "model": TARGETS[0], "messages": [{"role": "user", "content": "hi"}]})
                    .to_string(),
                )
            };
            if let Some(v) = &value {
                rb = rb.header("authorization", v);
            }
            let (what, status, body) = exchange(&c, format!("{how} {path}"), rb).await;
            assert_eq!(status, 401, "{what}: {body}");
            out.push((what, status, body));
        }
    }
    out
}

/// `quorum serve` on every failure path: no answer, no stderr line and no
/// file in the data dir shows a provider key or the serve token.
#[test]
fn serve_shows_no_key_on_any_failure_path() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(servers());
    let home = Home::new();
    let mut modes = failures(&s);
    modes.push(("working upstreams", Urls::of(&s), vec![]));
    for (what, urls, flags) in modes {
        let srv = start_serve(&home, &urls, &flags);
        let answers = rt.block_on(serve_traffic(&srv.url));
        let err = srv.stop();
        for (call, status, body) in &answers {
            assert_clean(
                &format!("serve, {what}: {call} ({status})"),
                body.as_bytes(),
            );
        }
        assert_clean(&format!("serve, {what}: stderr"), err.as_bytes());
        assert!(err.contains("listening on http://"), "{err}");
        // Not vacuous: the calls did fail (or work) where they should.
        let complete = answers
            .iter()
            .find(|(c, ..)| c == "llm.complete lab/lab-model")
            .unwrap();
        if what == "working upstreams" {
            assert!(complete.2.contains("four"), "{what}: {complete:?}");
        } else {
            assert!(complete.2.contains("-32004"), "{what}: {complete:?}");
            let oa = answers
                .iter()
                .find(|(c, ..)| c == "/v1/chat/completions stream=false openai/gpt-4o-mini")
                .unwrap();
            assert!(oa.1 >= 400 && oa.2.contains("\"error\""), "{what}: {oa:?}");
            let st = answers
                .iter()
                .find(|(c, ..)| c == "llm.stream anthropic/claude-haiku-4-5")
                .unwrap();
            assert!(
                st.2.contains("event: result") && st.2.contains("-32004"),
                "{what}: {st:?}"
            );
            if what.contains("echoing") {
                // The echo itself came back (redacted), so the check had teeth.
                assert!(
                    complete.2.contains("invalid credentials"),
                    "{what}: {complete:?}"
                );
            }
        }
    }
    // The ledger, its WAL, caches: every file the servers left.
    let all = files(&home.data());
    assert!(
        all.iter().any(|p| p.ends_with("ledger.sqlite3")),
        "no ledger in {all:?}"
    );
    for f in &all {
        assert_clean(&f.display().to_string(), &std::fs::read(f).unwrap());
    }
    let db = rusqlite::Connection::open(home.data().join("ledger.sqlite3")).unwrap();
    let (rows, failed): (i64, i64) = db
        .query_row(
            "SELECT COUNT(*), COUNT(error_message) FROM requests",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(rows > 0 && failed > 0, "{rows} rows, {failed} failed");
    // The keys did reach the upstreams, so their echoes were a real test.
    for (name, srv) in [
        ("401", &s.unauthorized),
        ("400", &s.bad_request),
        ("in-stream", &s.in_stream_error),
    ] {
        let sent = srv.seen.lock().unwrap().join(" ");
        for k in ALL {
            assert!(sent.contains(k), "serve, {name}: {k} was never sent");
        }
        assert!(!sent.contains(SERVE_TOKEN), "the serve token went upstream");
    }
    assert!(s.slow.count() > 0, "the timeout path reached its server");
    assert!(seen_header(&s.lab, "authorization").contains(&format!("Bearer {CMD_KEY}")));
}

// ---------------------------------------------------------------------------
// The TUI: failed panes on screen, and their Ctrl+E export

/// Panes whose completions failed at the fake-key upstreams, driven by the
/// real engine: their screen (each pane zoomed too) and their Markdown and
/// JSON export show no key.
#[test]
fn tui_failed_panes_and_their_export_show_no_key() {
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use llm_quorum::tui::keys::KeyMap;
    use llm_quorum::tui::pane::PaneState;
    use llm_quorum::tui::theme::Theme;
    use llm_quorum::tui::{view, App, AppInit, Cmd, Msg};

    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(servers());
    let home = Home::new();
    // The data dir (ledger, cache) is read from the process environment.
    // SAFETY: the lock above keeps the other environment users of this file
    // out meanwhile.
    unsafe { std::env::set_var("QUORUM_DATA_DIR", home.data()) };
    let key = |c: KeyCode| Msg::Key(KeyEvent::new(c, KeyModifiers::NONE));
    let mut exported = Vec::new();
    for (what, urls, flags) in failures(&s) {
        let pairs = env_pairs(&home, &urls);
        let env = move |k: &str| -> Option<String> {
            pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        };
        let mut gflags = llm_quorum::app::GlobalFlags::default();
        if flags.contains(&"--timeout") {
            gflags.timeout_secs = Some(0.3);
        }
        let (engine, settings) = rt
            .block_on(async { llm_quorum::app::load_with_env(&gflags, &env) })
            .unwrap();
        let mut app = App::new(AppInit {
            targets: TARGETS.iter().map(|t| t.to_string()).collect(),
            available: TARGETS.iter().map(|t| t.to_string()).collect(),
            theme: Theme::builtin(),
            keys: KeyMap::default(),
            banner: Vec::new(),
            budget_set: false,
            pricing: None,
            size: (200, 60),
        });
        for c in "What is 2+2?".chars() {
            app.update(key(KeyCode::Char(c)));
        }
        let (run, request, targets) = app
            .update(key(KeyCode::Enter))
            .into_iter()
            .find_map(|c| match c {
                Cmd::Start {
                    run,
                    request,
                    targets,
                    ..
                } => Some((run, request, targets)),
                _ => None,
            })
            .expect("Enter starts a run");
        rt.block_on(async {
            let mut h = engine.run(request, targets, Default::default());
            while let Some(event) = h.recv().await {
                app.update(Msg::Engine { run, event });
            }
        });
        app.update(Msg::RunClosed { run });
        for (i, p) in app.panes.iter().enumerate() {
            assert_eq!(
                p.state,
                PaneState::Failed,
                "{what}: pane {i} ({})",
                TARGETS[i]
            );
        }
        // The screen, then every pane zoomed (wide enough for a whole message).
        let screen = |app: &App| {
            let mut t =
                ratatui::Terminal::new(ratatui::backend::TestBackend::new(200, 60)).unwrap();
            t.draw(|f| view::render(app, f)).unwrap();
            t.backend().to_string()
        };
        let first = screen(&app);
        assert!(first.contains("lab/lab-model"), "{what}:\n{first}");
        assert_clean(&format!("TUI, {what}: screen"), first.as_bytes());
        for i in 0..TARGETS.len() {
            app.update(key(KeyCode::Tab));
            app.update(key(KeyCode::Char('z')));
            assert_eq!(app.zoom, Some(i), "{what}: zoom pane {i}");
            let zoomed = screen(&app);
            assert_clean(&format!("TUI, {what}: pane {i} zoomed"), zoomed.as_bytes());
            app.update(key(KeyCode::Char('z')));
        }
        // Ctrl+E builds the document the loop writes.
        let doc = app
            .update(Msg::Key(KeyEvent::new(
                KeyCode::Char('e'),
                KeyModifiers::CONTROL,
            )))
            .into_iter()
            .find_map(|c| match c {
                Cmd::Export(d) => Some(d),
                _ => None,
            })
            .expect("Ctrl+E exports");
        let dir = home.data().join("exports");
        let stamp = format!("audit-{}", exported.len());
        let paths = doc.write(&dir, &stamp, "2026-12-01T14:00:00Z").unwrap();
        assert_eq!(paths.len(), 2);
        for p in &paths {
            let bytes = std::fs::read(p).unwrap();
            assert!(
                String::from_utf8_lossy(&bytes).contains("failed"),
                "{what}: {} holds the failures",
                p.display()
            );
            assert_clean(&format!("TUI export, {what}: {}", p.display()), &bytes);
        }
        exported.extend(paths);
        drop((engine, settings));
    }
    // The echoes reached the panes (redacted), so the check above had teeth.
    let md = std::fs::read_to_string(&exported[0]).unwrap();
    assert!(md.contains("invalid credentials"), "{md}");
    for (name, srv) in [
        ("401", &s.unauthorized),
        ("400", &s.bad_request),
        ("in-stream", &s.in_stream_error),
    ] {
        let sent = srv.seen.lock().unwrap().join(" ");
        for k in ALL {
            assert!(sent.contains(k), "TUI, {name}: {k} was never sent");
        }
    }
    assert!(s.slow.count() > 0, "the timeout path reached its server");
    for f in files(&home.data()) {
        assert_clean(&f.display().to_string(), &std::fs::read(f).unwrap());
    }
}

/// The TUI's panic path (`QUORUM_TUI_TEST_PANIC`, as in `tui_tmux.rs`'s
/// `a_panic_restores_the_terminal`) with every key in the environment and
/// `RUST_BACKTRACE=1`: the first frame, the panic message and the backtrace,
/// all the terminal ever saw (a `script` typescript), show no key.
#[test]
fn a_tui_panic_shows_no_key() {
    let have_script = Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_script {
        eprintln!("SKIP: script(1) is not installed; the panic audit needs a pty");
        return;
    }
    let home = Home::new();
    let log = home.dir.path().join("typescript");
    let bin = env!("CARGO_BIN_EXE_quorum");
    let out = Command::new("timeout")
        .args(["30", "script", "-qec"])
        .arg(format!("stty cols 160 rows 45; exec '{bin}'"))
        .arg(&log)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TERM", "xterm-256color")
        .env("LANG", "C.UTF-8")
        .envs(env_pairs(&home, &Urls::all("http://127.0.0.1:9")))
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LOG", "trace")
        .env("QUORUM_TUI_TEST_PANIC", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(101), "{out:?}");
    check_output("TUI panic", &out);
    let seen = std::fs::read(&log).unwrap();
    let text = String::from_utf8_lossy(&seen);
    // Not vacuous: the keyed providers were on screen, then the panic and its backtrace.
    assert!(text.contains("openai/gpt-4o-mini"), "{text}");
    assert!(text.contains("panicking after the first frame"), "{text}");
    assert!(text.contains("stack backtrace"), "{text}");
    assert_clean("TUI panic: the terminal", &seen);
    for f in files(&home.data()) {
        assert_clean(&f.display().to_string(), &std::fs::read(f).unwrap());
    }
}
