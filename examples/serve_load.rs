//! Load driver for `quorum serve`: what the HTTP face adds over a direct
//! engine call, and how many `llm.complete` calls per second it serves,
//! against a local mock upstream (`../shared/bench/mockllm`).
//!
//! ```sh
//! mockllm --listen 127.0.0.1:18080 --tokens 20 &
//! cargo run --release --example serve_load -- --upstream http://127.0.0.1:18080/v1
//! ```
//!
//! Options: `--upstream URL` (OpenAI-compatible base, with `/v1`),
//! `--requests N` (per phase, default 2000), `--concurrency C` (default 64),
//! `--model M` (default openai/gpt-4o-mini), `--url URL` (drive an already
//! running `quorum serve` instead of the in-process one), `--data-dir DIR`
//! (where the fresh ledger goes; default a temp dir: the ledger commits with
//! `synchronous=FULL`, so its disk shows in the figures; `/dev/shm` takes it
//! out). The ledger is on, as in `quorum serve`.
//!
//! Phases, each after a warm-up, one at a time then C at a time: (1)
//! `Engine::run` called directly; (2) `budget::start_run`, what `ask`, `exec`
//! and `serve` call (it also notes the run in the ledger: a second commit);
//! (3) `POST /rpc` `llm.complete` on the in-process server (the same router
//! `quorum serve` runs, bound to 127.0.0.1:0). The overhead of serve is (3)
//! minus (2) at the sequential medians: the loopback HTTP hop, the JSON-RPC
//! parse, the checks and the result's serialisation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use llm_quorum::app::{self, GlobalFlags, Settings};
use llm_quorum::engine::{ChatRequest, Engine, RunOptions, StartOptions};
use llm_quorum::serve::{router, AppState, ServeOptions};
use serde_json::json;

struct Args {
    upstream: String,
    requests: usize,
    concurrency: usize,
    model: String,
    url: Option<String>,
    data_dir: Option<std::path::PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        upstream: "http://127.0.0.1:18080/v1".into(),
        requests: 2000,
        concurrency: 64,
        model: "openai/gpt-4o-mini".into(),
        url: None,
        data_dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(f) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{f} needs a value"));
        match f.as_str() {
            "--upstream" => a.upstream = v(),
            "--requests" => a.requests = v().parse().expect("--requests N"),
            "--concurrency" => a.concurrency = v().parse().expect("--concurrency C"),
            "--model" => a.model = v(),
            "--url" => a.url = Some(v()),
            "--data-dir" => a.data_dir = Some(v().into()),
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
    }
    a
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn report(name: &str, mut lat: Vec<Duration>) -> f64 {
    lat.sort();
    let med = pct(&lat, 0.5);
    println!(
        "{name:<34} n={:<6} median {med:>7.3} ms  p90 {:>7.3} ms  p99 {:>7.3} ms",
        lat.len(),
        pct(&lat, 0.9),
        pct(&lat, 0.99)
    );
    med
}

async fn direct(engine: &Engine, model: &str) -> Duration {
    let t = Instant::now();
    let req = ChatRequest::from_prompt("Write a short story.");
    let c = engine
        .run(req, vec![model.to_string()], RunOptions::default())
        .collect()
        .await;
    assert!(c[0].error.is_none(), "{:?}", c[0].error);
    t.elapsed()
}

async fn via_start_run(engine: &Engine, _settings: &Settings, model: &str) -> Duration {
    let t = Instant::now();
    let req = ChatRequest::from_prompt("Write a short story.");
    let s = engine
        .start(req, vec![model.to_string()], StartOptions::default())
        .await
        .expect("start");
    let c = s.handle.collect().await;
    assert!(c[0].error.is_none(), "{:?}", c[0].error);
    t.elapsed()
}

async fn via_rpc(client: &reqwest::Client, url: &str, model: &str, id: usize) -> Duration {
    let t = Instant::now();
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "llm.complete",
                      "params": {"model": model, "prompt": "Write a short story."}});
    let r = client.post(url).json(&body).send().await.expect("send");
    let v: serde_json::Value = r.json().await.expect("json");
    assert!(v["error"].is_null(), "{v}");
    t.elapsed()
}

async fn concurrent<F, Fut>(n: usize, c: usize, f: F) -> (Duration, Vec<Duration>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Duration> + Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..c {
        let (f, next) = (f.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                lat.push(f(i).await);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    (start.elapsed(), all)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let a = args();
    let data = a
        .data_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("quorum-serve-load-{}", std::process::id()));
    std::fs::create_dir_all(&data).expect("data dir");
    // Set before anything reads the environment (single-threaded here).
    std::env::set_var("QUORUM_DATA_DIR", &data);
    std::env::set_var("OPENAI_BASE_URL", &a.upstream);
    std::env::set_var("OPENAI_API_KEY", "sk-bench-not-a-key");
    std::env::set_var("QUORUM_CONFIG", data.join("none.toml"));
    let (engine, settings) = app::load(&GlobalFlags::default()).expect("config");
    println!(
        "upstream {}  model {}  requests/phase {}  concurrency {}",
        a.upstream, a.model, a.requests, a.concurrency
    );

    // Phase 1: the engine, directly.
    for _ in 0..100 {
        direct(&engine, &a.model).await;
    }
    let mut lat = Vec::new();
    for _ in 0..a.requests {
        lat.push(direct(&engine, &a.model).await);
    }
    let direct_med = report("engine direct, sequential", lat);
    let (e2, m2) = (engine.clone(), a.model.clone());
    let (wall, lat) = concurrent(a.requests, a.concurrency, move |_| {
        let (e, m) = (e2.clone(), m2.clone());
        async move { direct(&e, &m).await }
    })
    .await;
    report(&format!("engine direct, {} at a time", a.concurrency), lat);
    let direct_rps = a.requests as f64 / wall.as_secs_f64();
    println!("{:<34} {direct_rps:>9.0} req/s", "engine direct throughput");

    // Phase 2: budget::start_run, as every face calls it.
    for _ in 0..100 {
        via_start_run(&engine, &settings, &a.model).await;
    }
    let mut lat = Vec::new();
    for _ in 0..a.requests {
        lat.push(via_start_run(&engine, &settings, &a.model).await);
    }
    let start_med = report("engine start_run, sequential", lat);
    let (e2, s2, m2) = (engine.clone(), settings.clone(), a.model.clone());
    let (wall, lat) = concurrent(a.requests, a.concurrency, move |_| {
        let (e, s, m) = (e2.clone(), s2.clone(), m2.clone());
        async move { via_start_run(&e, &s, &m).await }
    })
    .await;
    report(
        &format!("engine start_run, {} at a time", a.concurrency),
        lat,
    );
    let start_rps = a.requests as f64 / wall.as_secs_f64();
    println!(
        "{:<34} {start_rps:>9.0} req/s",
        "engine start_run throughput"
    );

    // Phase 3: through the server.
    let url = match &a.url {
        Some(u) => format!("{}/rpc", u.trim_end_matches('/')),
        None => {
            let state = AppState::new(engine.clone(), settings, ServeOptions::default());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move {
                axum::serve(listener, router(state)).await.expect("serve");
            });
            format!("http://{addr}/rpc")
        }
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(a.concurrency.max(1))
        .build()
        .expect("client");
    for i in 0..100 {
        via_rpc(&client, &url, &a.model, i).await;
    }
    let mut lat = Vec::new();
    for i in 0..a.requests {
        lat.push(via_rpc(&client, &url, &a.model, i).await);
    }
    let serve_med = report("serve llm.complete, sequential", lat);
    let (c2, u2, m2) = (client.clone(), url.clone(), a.model.clone());
    let (wall, lat) = concurrent(a.requests, a.concurrency, move |i| {
        let (c, u, m) = (c2.clone(), u2.clone(), m2.clone());
        async move { via_rpc(&c, &u, &m, i).await }
    })
    .await;
    report(
        &format!("serve llm.complete, {} at a time", a.concurrency),
        lat,
    );
    let serve_rps = a.requests as f64 / wall.as_secs_f64();
    println!(
        "{:<34} {serve_rps:>9.0} req/s",
        "serve llm.complete throughput"
    );
    println!(
        "{:<34} {:>9.3} ms per request (sequential medians)",
        "serve over start_run",
        serve_med - start_med
    );
    println!(
        "{:<34} {:>9.3} ms per request (sequential medians)",
        "serve over Engine::run",
        serve_med - direct_med
    );
    let _ = std::fs::remove_dir_all(&data);
}
