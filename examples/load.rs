//! Load client on the engine, for `../shared/bench/run_peers.sh`.
//!
//! Takes the arguments of the bench's raw-Rust floor, `mockload`, and prints
//! the same one-line JSON, so the engine lands in the same tables as the
//! peers, measured in the same run:
//!
//! ```sh
//! cargo build --release --example load
//! EXTRA_CLIENTS="quorum=$PWD/target/release/examples/load" ../shared/bench/run_peers.sh
//! ```
//!
//! Every request goes through the whole engine as a face uses it:
//! [`Engine::run`] (registry, router, breaker, limiter, retries), one HTTP
//! attempt over the shared reqwest client, the SSE decoder and provider
//! mapping, the accumulator, pricing, and the event channel, consumed here.
//! There is no ledger or response cache (a library user may attach them; the
//! `quorum ask` figure in `benches/RESULTS.md` has both).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use llm_quorum::engine::provider::{ProviderKind, ProviderSpec, Secret};
use llm_quorum::engine::registry::Registry;
use llm_quorum::engine::{ChatRequest, Engine, EngineConfig, Message, RunOptions, StreamEvent};
use serde_json::{json, Value};

const HELP: &str = "\
load - the llm-quorum engine as a load client (one JSON line on stdout);
       the arguments and output of mockload (../shared/bench/mockllm)

  --base-url URL       server root, e.g. http://127.0.0.1:8080 (the provider's path is added)
  --url URL            accepted for mockload compatibility: its scheme://host:port is used
  --provider P         openai | anthropic | gemini | ollama
  --model M            model name (default mock-model)
  --mode M             seq (N requests one after another, keep-alive)
                       | conc (N requests at once)   (default seq)
  --concurrency N      same as --requests (for conc)
  --requests N         number of measured requests (default 200)
  --warmup W           unmeasured requests first (seq only, default 10)
  --stream / --no-stream  (default --stream)
  --header 'K: V'      extra request header (repeatable), e.g. 'x-mock-tokens: 100'
  --expect-tokens N    count a request as an error unless exactly N text chunks arrive
  --threads T          runtime threads, 1 = current-thread (default 1)
  --timeout-s S        per-request timeout (default 600)
  --rss-every N        (seq) print a JSON line of the RSS to stderr every N requests and
                       keep only counts, not each request's figures: a memory soak
";

struct Opts {
    base_url: String,
    provider: String,
    model: String,
    mode: String,
    requests: usize,
    warmup: usize,
    stream: bool,
    headers: Vec<(String, String)>,
    expect_tokens: Option<usize>,
    threads: usize,
    timeout: Duration,
    rss_every: Option<usize>,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        base_url: String::new(),
        provider: "openai".into(),
        model: "mock-model".into(),
        mode: "seq".into(),
        requests: 200,
        warmup: 10,
        stream: true,
        headers: vec![],
        expect_tokens: None,
        threads: 1,
        timeout: Duration::from_secs(600),
        rss_every: None,
    };
    let mut url = String::new();
    let mut it = std::env::args().skip(1);
    while let Some(f) = it.next() {
        let mut v = || it.next().ok_or_else(|| format!("{f} needs a value"));
        match f.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                std::process::exit(0)
            }
            "--url" => url = v()?,
            "--base-url" => o.base_url = v()?,
            "--provider" => o.provider = v()?,
            "--model" => o.model = v()?,
            "--mode" => o.mode = v()?,
            "--requests" | "--concurrency" => {
                o.requests = v()?.parse().map_err(|_| "bad --requests")?
            }
            "--warmup" => o.warmup = v()?.parse().map_err(|_| "bad --warmup")?,
            "--stream" => o.stream = true,
            "--no-stream" => o.stream = false,
            "--header" => {
                let h = v()?;
                let (k, val) = h.split_once(':').ok_or("header must be 'K: V'")?;
                o.headers
                    .push((k.trim().to_string(), val.trim().to_string()));
            }
            "--expect-tokens" => {
                o.expect_tokens = Some(v()?.parse().map_err(|_| "bad --expect-tokens")?)
            }
            "--threads" => o.threads = v()?.parse().map_err(|_| "bad --threads")?,
            "--rss-every" => o.rss_every = Some(v()?.parse().map_err(|_| "bad --rss-every")?),
            "--timeout-s" => {
                o.timeout = Duration::from_secs_f64(v()?.parse().map_err(|_| "bad --timeout-s")?)
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if o.base_url.is_empty() {
        // The engine builds the provider's path itself: keep the origin.
        let rest = url
            .strip_prefix("http://")
            .ok_or("--base-url (or an http:// --url) is required")?;
        let host = rest.split('/').next().unwrap_or(rest);
        o.base_url = format!("http://{host}");
    }
    if !matches!(o.mode.as_str(), "seq" | "conc") {
        return Err(format!("unknown --mode {}", o.mode));
    }
    Ok(o)
}

/// The engine with one provider pointed at the server, as `quorum` builds it
/// from `OPENAI_BASE_URL` and friends.
fn engine(o: &Opts) -> Result<Engine, String> {
    let root = o.base_url.trim_end_matches('/');
    let (kind, base) = match o.provider.as_str() {
        "openai" => (ProviderKind::Openai, format!("{root}/v1")),
        "anthropic" => (ProviderKind::Anthropic, root.to_string()),
        "gemini" => (ProviderKind::Gemini, root.to_string()),
        "ollama" => (ProviderKind::Ollama, root.to_string()),
        p => return Err(format!("unknown --provider {p}")),
    };
    let mut spec = ProviderSpec::new(o.provider.clone(), kind);
    spec.base_url = base;
    spec.api_key = Some(Secret::new("sk-mock"));
    spec.headers = o.headers.clone();
    let mut registry = Registry::new();
    registry.insert(spec);
    Engine::new(EngineConfig {
        registry,
        ..Default::default()
    })
    .map_err(|e| e.to_string())
}

#[derive(Default)]
struct Outcome {
    ok: bool,
    err: Option<String>,
    lat: f64,
    ttft: Option<f64>,
    tokens: usize,
}

async fn one(engine: &Engine, o: &Opts, target: &str, req: &ChatRequest) -> Outcome {
    let t0 = Instant::now();
    let opts = RunOptions {
        stream: o.stream,
        ..Default::default()
    };
    let mut h = engine.run(req.clone(), vec![target.to_string()], opts);
    let mut out = Outcome::default();
    let mut finished = false;
    while let Some(ev) = h.recv().await {
        match ev.event {
            StreamEvent::TextDelta(t) if !t.is_empty() => {
                out.tokens += 1;
                if out.ttft.is_none() {
                    out.ttft = Some(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            StreamEvent::Finished(c) => {
                finished = true;
                if !o.stream {
                    out.tokens = usize::from(!c.text.is_empty());
                    if c.text.is_empty() {
                        out.err = Some("no text in answer".into());
                    }
                }
            }
            StreamEvent::Failed(c) => {
                finished = true;
                out.err = Some(match &c.error {
                    Some(e) => format!("{}: {e}", e.kind()),
                    None => "failed".into(),
                });
            }
            _ => {}
        }
    }
    out.lat = t0.elapsed().as_secs_f64() * 1e3;
    if !finished && out.err.is_none() {
        out.err = Some("the run ended without a result".into());
    }
    if out.err.is_none() {
        if let (true, Some(n)) = (o.stream, o.expect_tokens) {
            if out.tokens != n {
                out.err = Some(format!("expected {n} text chunks, got {}", out.tokens));
            }
        }
    }
    out.ok = out.err.is_none();
    out
}

async fn one_timed(engine: &Engine, o: &Opts, target: &str, req: &ChatRequest) -> Outcome {
    tokio::time::timeout(o.timeout, one(engine, o, target, req))
        .await
        .unwrap_or_else(|_| Outcome {
            err: Some("timeout".into()),
            ..Default::default()
        })
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    // Nearest rank, as mockload and peers/harness.py.
    let k = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[k - 1]
}

fn summary(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let mean = v.iter().sum::<f64>() / n as f64;
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    json!({
        "n": n, "median": median, "p95": pct(&v, 0.95), "p99": pct(&v, 0.99),
        "mean": mean, "min": v[0], "max": v[n - 1]
    })
}

fn rusage() -> (f64, i64) {
    // SAFETY: getrusage fills the zeroed struct we own.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        (tv(ru.ru_utime) + tv(ru.ru_stime), ru.ru_maxrss as i64)
    }
}

async fn run(o: Opts, engine: Engine) -> Value {
    // The same request the peers send: one user message.
    let mut req = ChatRequest::default();
    req.messages.push(Message::user("Write a short story."));
    if o.provider == "anthropic" {
        req.max_tokens = Some(4096);
    }
    let target = format!("{}/{}", o.provider, o.model);
    let o = std::sync::Arc::new(o);
    let (cpu0, _) = rusage();
    let w0 = Instant::now();
    let mut outs: Vec<Outcome> = Vec::with_capacity(o.requests);
    let mut soak_errors = 0usize;
    if let (Some(every), "seq") = (o.rss_every, o.mode.as_str()) {
        for i in 0..(o.warmup + o.requests) {
            let r = one_timed(&engine, &o, &target, &req).await;
            if i >= o.warmup {
                soak_errors += usize::from(!r.ok);
            }
            if i >= o.warmup && (i - o.warmup + 1) % every.max(1) == 0 {
                eprintln!(
                    "{}",
                    json!({"after": i - o.warmup + 1, "rss_kb": current_rss_kb(), "errors": soak_errors})
                );
            }
        }
    } else if o.mode == "seq" {
        for i in 0..(o.warmup + o.requests) {
            let r = one_timed(&engine, &o, &target, &req).await;
            if i >= o.warmup {
                outs.push(r);
            }
        }
    } else {
        let mut tasks = Vec::with_capacity(o.requests);
        for _ in 0..o.requests {
            let (engine, o, target, req) = (engine.clone(), o.clone(), target.clone(), req.clone());
            tasks.push(tokio::spawn(async move {
                one_timed(&engine, &o, &target, &req).await
            }));
        }
        for t in tasks {
            outs.push(t.await.unwrap_or_else(|e| Outcome {
                err: Some(format!("join: {e}")),
                ..Default::default()
            }));
        }
    }
    let wall = w0.elapsed().as_secs_f64();
    let (cpu1, maxrss) = rusage();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for r in &outs {
        if let Some(e) = &r.err {
            *kinds.entry(e.clone()).or_default() += 1;
        }
    }
    let ok: Vec<&Outcome> = outs.iter().filter(|r| r.ok).collect();
    let soak = o.rss_every.is_some() && o.mode == "seq";
    let (n, n_ok) = if soak {
        (o.requests, o.requests - soak_errors)
    } else {
        (outs.len(), ok.len())
    };
    json!({
        "client": "quorum-engine",
        "provider": o.provider,
        "mode": o.mode,
        "stream": o.stream,
        "requests": n,
        "ok": n_ok,
        "errors": n - n_ok,
        "error_kinds": kinds,
        "tokens_total": ok.iter().map(|r| r.tokens).sum::<usize>(),
        "lat_ms": summary(ok.iter().map(|r| r.lat).collect()),
        "ttft_ms": summary(ok.iter().filter_map(|r| r.ttft).collect()),
        "wall_s": wall,
        "cpu_s": cpu1 - cpu0,
        "cpu_total_s": cpu1,
        "maxrss_kb": maxrss,
    })
}

/// Resident set size now (VmRSS), in KiB; 0 where /proc is missing.
fn current_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn raise_nofile() {
    // SAFETY: plain libc calls on a struct we own.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("load: {e}");
            std::process::exit(2)
        }
    };
    raise_nofile();
    let rt = if o.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(o.threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    let engine = match rt.block_on(async { engine(&o) }) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("load: {e}");
            std::process::exit(2)
        }
    };
    let v = rt.block_on(run(o, engine));
    println!("{v}");
}
