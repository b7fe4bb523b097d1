//! `quorum serve` as a whole process for tests: its command under a clean
//! environment, started on 127.0.0.1:0 with its own data dir and config, killed
//! when dropped.

use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};

/// A running `quorum serve`.
pub struct Serve {
    /// The process.
    pub child: Child,
    /// `http://ADDR`.
    pub url: String,
    /// `ADDR` (`127.0.0.1:PORT`).
    pub addr: String,
    /// Its stderr so far (growing).
    pub stderr: Arc<Mutex<String>>,
    /// The temp dir [`serve`] made: home, data dir and config.
    home: Option<tempfile::TempDir>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// Its home, data dir (the ledger is `ledger.sqlite3` in it) and config, when
    /// [`serve`] made them.
    pub fn dir(&self) -> &Path {
        self.home
            .as_ref()
            .expect("a server started by serve() (start() gets its dir from the caller)")
            .path()
    }

    /// Rows in the ledger's `requests` table.
    pub fn ledger_rows(&self) -> i64 {
        let c = rusqlite::Connection::open(self.dir().join("ledger.sqlite3")).unwrap();
        c.query_row("SELECT COUNT(*) FROM requests", [], |r| r.get(0))
            .unwrap()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// stderr once it holds `needle` (the reader thread may lag the process's
    /// exit by a moment), or as it is after [`super::PATIENCE`].
    pub fn stderr_with(&self, needle: &str) -> String {
        super::eventually_blocking(|| self.stderr().contains(needle));
        self.stderr()
    }

    /// Its `/metrics` text (OpenMetrics).
    pub async fn metrics(&self) -> String {
        http()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Its process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, wait for the exit, then the whole stderr (once the reader thread
    /// has the server's last line, `stopped`).
    pub fn stop(mut self) -> String {
        // SAFETY: a plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        let _ = self.child.wait();
        super::eventually_blocking(|| self.stderr().contains("stopped"));
        self.stderr()
    }
}

/// `quorum` under a clean environment: home and data dir `dir`, config
/// `dir/config.toml` (written when `config` is given), the mock models at full
/// speed, plus `env`.
pub fn command(dir: &Path, config: Option<&str>, env: &[(&str, &str)]) -> Command {
    let cfg = dir.join("config.toml");
    if let Some(c) = config {
        std::fs::write(&cfg, c).unwrap();
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quorum"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("QUORUM_DATA_DIR", dir)
        .env("QUORUM_CONFIG", &cfg)
        .env("QUORUM_MOCK_TPS", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Start `cmd` (a `quorum` command, its environment and global flags set) as
/// `serve --listen 127.0.0.1:0 ARGS` and wait for its address.
pub fn start(mut cmd: Command, args: &[&str]) -> Serve {
    cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(args);
    let (child, url, stderr) = super::spawn_serve(cmd);
    let addr = url.trim_start_matches("http://").to_string();
    Serve {
        child,
        url,
        addr,
        stderr,
        home: None,
    }
}

/// Start `quorum serve --listen 127.0.0.1:0 ARGS` in a fresh temp dir
/// ([`command`]) and wait for its address.
pub fn serve(args: &[&str], config: Option<&str>, env: &[(&str, &str)]) -> Serve {
    let home = tempfile::tempdir().unwrap();
    let mut s = start(command(home.path(), config, env), args);
    s.home = Some(home);
    s
}

/// An HTTP client for talking to a test server: a request that hangs fails
/// after twice [`super::PATIENCE`], long after a loaded machine would answer.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(2 * super::PATIENCE)
        .build()
        .unwrap()
}

/// `clients` clients per server in `urls`, each sending `llm.complete` (a 1,000-token
/// allowance to `openai/gpt-4o-mini`) until the budget refuses it (at most 100 each):
/// how many were answered, and how many clients were refused. Any other error fails.
#[allow(dead_code)]
pub async fn complete_until_refused(urls: &[&str], clients: usize) -> (usize, usize) {
    let mut tasks = Vec::new();
    for url in urls {
        for i in 0..clients {
            let url = format!("{url}/rpc");
            tasks.push(tokio::spawn(async move {
                for n in 0..100 {
                    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "llm.complete",
                        "params": {"model": "openai/gpt-4o-mini",
                                   "prompt": format!("question {i}.{n}"), "max_tokens": 1000}});
                    let v: serde_json::Value = http()
                        .post(&url)
                        .json(&body)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    if !v["error"].is_null() {
                        assert_eq!(v["error"]["data"]["kind"], "budget", "{v}");
                        return (n, 1);
                    }
                }
                (100, 0)
            }));
        }
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let (o, r) = t.await.unwrap();
        ok += o;
        refused += r;
    }
    (ok, refused)
}
