//! Test support: a real HTTP/1.1 server on 127.0.0.1 that streams scripted
//! replies with real timing (chunked transfer, small pieces, pauses), and
//! access to the shared recorded fixtures.
#![allow(dead_code)]

pub mod app;
pub mod ledger;
pub mod pg;
pub mod serve;
pub mod tmux;
pub mod tui;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One scripted reply.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Body piece size in bytes.
    pub chunk: usize,
    /// Pause between pieces.
    pub pause: Duration,
    /// Pause before the response headers.
    pub delay: Duration,
    /// Close the connection after this many body bytes (a cut), without the final chunk.
    pub cut_after: Option<usize>,
    /// After the body (or cut point), keep the connection open this long before closing (a stall).
    pub stall: Duration,
}

impl Reply {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Reply {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
            chunk: 64,
            pause: Duration::from_millis(1),
            delay: Duration::ZERO,
            cut_after: None,
            stall: Duration::ZERO,
        }
    }
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self::new(status, "application/json", body)
    }
    pub fn sse(body: impl Into<Vec<u8>>) -> Self {
        Self::new(200, "text/event-stream", body)
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn chunked(mut self, chunk: usize, pause: Duration) -> Self {
        self.chunk = chunk.max(1);
        self.pause = pause;
        self
    }
}

/// A request the server received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// A scripted server. Replies are served in order; the last one repeats.
pub struct Server {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub in_flight: Arc<AtomicUsize>,
    pub max_in_flight: Arc<AtomicUsize>,
    /// Connections whose client went away before the reply finished.
    pub aborted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub async fn start(replies: Vec<Reply>) -> Server {
        Self::start_with(move |i| replies[i.min(replies.len() - 1)].clone()).await
    }

    /// `reply(n)` gives the reply to the n-th request (0-based).
    pub async fn start_with(reply: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let aborted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::new(AtomicUsize::new(0));
        let reply = Arc::new(reply);
        let (s2, f2, m2, a2) = (
            seen.clone(),
            in_flight.clone(),
            max_in_flight.clone(),
            aborted.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (s3, f3, m3, a3, c3, r3) = (
                    s2.clone(),
                    f2.clone(),
                    m2.clone(),
                    a2.clone(),
                    counter.clone(),
                    reply.clone(),
                );
                tokio::spawn(async move {
                    let _ = serve_conn(sock, s3, f3, m3, a3, c3, r3).await;
                });
            }
        });
        Server {
            url,
            seen,
            in_flight,
            max_in_flight,
            aborted,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let header_end;
    loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            header_end = p + 4;
            break;
        }
        let mut tmp = [0u8; 8192];
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.split("\r\n");
    let first = lines.next()?;
    let mut parts = first.split(' ');
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + len {
        let mut tmp = [0u8; 8192];
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = buf[header_end..header_end + len].to_vec();
    buf.drain(..header_end + len);
    Some(Seen {
        method,
        path,
        headers,
        body,
    })
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

#[allow(clippy::too_many_arguments)]
async fn serve_conn(
    mut sock: TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    aborted: Arc<AtomicUsize>,
    counter: Arc<AtomicUsize>,
    reply: Arc<dyn Fn(usize) -> Reply + Send + Sync>,
) -> std::io::Result<()> {
    let _ = sock.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let Some(req) = read_request(&mut sock, &mut buf).await else {
            return Ok(());
        };
        let n = counter.fetch_add(1, Ordering::SeqCst);
        seen.lock().unwrap().push(req);
        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        max_in_flight.fetch_max(now, Ordering::SeqCst);
        let r = reply(n);
        let res = write_reply(&mut sock, &r).await;
        in_flight.fetch_sub(1, Ordering::SeqCst);
        if res.is_err() {
            aborted.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        if r.cut_after.is_some() {
            return Ok(());
        }
    }
}

async fn write_reply(sock: &mut TcpStream, r: &Reply) -> std::io::Result<()> {
    if !r.delay.is_zero() {
        tokio::time::sleep(r.delay).await;
    }
    let mut head = format!("HTTP/1.1 {} X\r\ntransfer-encoding: chunked\r\n", r.status);
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await?;
    sock.flush().await?;
    let body = match r.cut_after {
        Some(n) => &r.body[..n.min(r.body.len())],
        None => &r.body[..],
    };
    for piece in body.chunks(r.chunk) {
        sock.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .await?;
        sock.write_all(piece).await?;
        sock.write_all(b"\r\n").await?;
        sock.flush().await?;
        if !r.pause.is_zero() {
            tokio::time::sleep(r.pause).await;
        }
    }
    if !r.stall.is_zero() {
        // Detect a client that goes away while we stall.
        let mut tmp = [0u8; 1];
        match tokio::time::timeout(r.stall, sock.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "client left",
                ))
            }
            _ => {}
        }
    }
    if r.cut_after.is_some() {
        return Ok(());
    }
    sock.write_all(b"0\r\n\r\n").await?;
    sock.flush().await
}

/// `../shared/fixtures`, or None (with a message) when absent.
pub fn fixtures_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("QUORUM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"));
    if dir.join("index.json").exists() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP: shared fixtures not found at {} (set QUORUM_FIXTURES); conformance cases skipped",
            dir.display()
        );
        None
    }
}

/// One recorded case: its meta and body.
pub struct Case {
    pub id: String,
    pub meta: serde_json::Value,
    pub body: Vec<u8>,
}

/// All cases of one fixture directory (`openai`, `anthropic`, `errors`, ...).
pub fn cases(provider_dir: &str) -> Vec<Case> {
    let Some(root) = fixtures_dir() else {
        return Vec::new();
    };
    let dir = root.join(provider_dir);
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(stem) = name.strip_suffix(".meta.json") {
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            let body_file = meta["body_file"].as_str().unwrap().to_string();
            let body = std::fs::read(dir.join(&body_file)).unwrap();
            out.push(Case {
                id: format!("{provider_dir}/{stem}"),
                meta,
                body,
            });
        }
    }
    out
}

/// A reply serving a recorded case with its status and content type, in small pieces.
pub fn reply_for(case: &Case) -> Reply {
    let status = case.meta["http_status"].as_u64().unwrap_or(200) as u16;
    let ct = case.meta["response_headers"]["content-type"]
        .as_str()
        .unwrap_or("application/json")
        .to_string();
    let mut r = Reply::new(status, &ct, case.body.clone()).chunked(97, Duration::from_micros(200));
    if let Some(ra) = case.meta["response_headers"]["retry-after"].as_str() {
        r = r.header("retry-after", ra);
    }
    r
}

/// Spawn `cmd` (a `quorum serve --listen 127.0.0.1:0 …` command), collect its
/// stderr on a thread, and wait for the address it says it listens on.
/// Returns the child, `http://ADDR`, and the stderr so far (growing).
pub fn spawn_serve(
    mut cmd: std::process::Command,
) -> (std::process::Child, String, Arc<Mutex<String>>) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn quorum serve");
    let stderr = child.stderr.take().expect("stderr piped");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let log2 = log.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(i) = line.find("listening on http://") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(line[i + "listening on ".len()..].trim().to_string());
                }
            }
            let mut l = log2.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let url = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(u) => u,
        Err(_) => {
            let _ = child.kill();
            panic!("serve did not start: {}", log.lock().unwrap());
        }
    };
    (child, url, log)
}

/// Generous deadline for anything a test waits on: a loaded 2-core machine
/// may be slow, but a real hang still fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Poll `done` until it holds (every 10 ms, up to [`PATIENCE`]); whether it did.
pub async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + PATIENCE;
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

/// [`eventually`] for blocking code.
pub fn eventually_blocking(mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + PATIENCE;
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

/// A port that refuses connections and stays reserved: a socket bound to it that never
/// listens (held open for the rest of the process). A listener bound and dropped would
/// free the port, and the next server bound in this process could get it (seen: the
/// "closed port" case then talked to the working Anthropic stand-in).
pub fn refused_port() -> u16 {
    // SAFETY: plain socket calls on a fresh descriptor and a zeroed sockaddr_in of the
    // right size; the descriptor is deliberately never closed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        addr.sin_port = 0;
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len);
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let mut out: libc::sockaddr_in = std::mem::zeroed();
        let mut out_len = len;
        let rc = libc::getsockname(fd, &mut out as *mut _ as *mut libc::sockaddr, &mut out_len);
        assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
        u16::from_be(out.sin_port)
    }
}

/// Whether `python3` can import `module` (tests that need it skip without it).
pub fn python_has(module: &str) -> bool {
    std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// An OpenAI stream of `n` content chunks (`w0 `, `w1 `, …), then `stop` and `[DONE]`.
pub fn openai_words_sse(n: usize) -> String {
    let mut sse = String::new();
    for i in 0..n {
        sse.push_str(&format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}}}}]}}\n\n"
        ));
    }
    sse.push_str("data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n");
    sse
}
