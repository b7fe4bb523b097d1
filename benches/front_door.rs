//! The front door's own cost, and what reservations cost `serve` (issue 12).
//!
//! - `front_door/run`: `Engine::run`, the bare fan-out (spawning the target task).
//! - `front_door/start_no_ledger`: `Engine::start` with the ledger off: resolution,
//!   `cheapest:`-expansion, allowed models, capabilities, deprecation warnings.
//!   Its difference to `run` is the front door's own cost (target ≤ 20 µs).
//! - `front_door/start_noting` and `front_door/start_reserving`: the same with the
//!   run noted in a real SQLite ledger, without and with a budget (projection +
//!   one `BEGIN IMMEDIATE` transaction that checks the caps and reserves).
//! - `serve_throughput/{reservations_off,reservations_on}`: 400 `llm.complete`
//!   calls, 50 at a time, over HTTP to an in-process server (mock provider, real
//!   ledger in a temp dir), without and with a budget set (target: ≤ 10% lower).
//!
//! `cargo bench --bench front_door`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use llm_quorum::app::{self, GlobalFlags};
use llm_quorum::engine::budget::Budget;
use llm_quorum::engine::cost::{Price, Pricing};
use llm_quorum::engine::ledger::{BackgroundLedger, LedgerOptions};
use llm_quorum::engine::registry::Registry;
use llm_quorum::engine::{Books, ChatRequest, Engine, EngineConfig, RunOptions, StartOptions};
use llm_quorum::serve::{router, AppState, ServeOptions};
use serde_json::json;

fn mock_engine() -> Engine {
    // A priced mock, so a budget can bound (and reserve) every request.
    let mut pricing = Pricing::empty();
    pricing.insert("mock", "alpha", Price::flat(1.0, 2.0));
    Engine::new(EngineConfig {
        registry: Registry::from_env(&|_| None),
        pricing,
        ..Default::default()
    })
    .unwrap()
}

/// Time `n` calls of `start` (each run cancelled and drained outside the timing).
fn timed<F, Fut>(rt: &tokio::runtime::Runtime, n: u64, start: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = llm_quorum::engine::RunHandle>,
{
    rt.block_on(async {
        let mut total = Duration::ZERO;
        for _ in 0..n {
            let t = Instant::now();
            let h = start().await;
            total += t.elapsed();
            h.cancel();
            let _ = h.collect().await;
        }
        total
    })
}

fn front_door(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut req = ChatRequest::from_prompt("What is 2+2?");
    req.max_tokens = Some(256);
    let targets = vec!["mock/alpha".to_string()];
    let engine = mock_engine();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite3");
    let books = || Books::On {
        ledger: BackgroundLedger::spawn(path.clone(), LedgerOptions::default(), None),
    };
    let noting = mock_engine().with_books(books(), Budget::default());
    let reserving = mock_engine().with_books(
        books(),
        Budget {
            session_usd: None,
            daily_usd: Some(1e9),
        },
    );
    let mut g = c.benchmark_group("front_door");
    g.bench_function("run", |b| {
        b.iter_custom(|n| {
            timed(&rt, n, || {
                let h = engine.run(req.clone(), targets.clone(), RunOptions::default());
                async move { h }
            })
        })
    });
    for (name, e) in [
        ("start_no_ledger", &engine),
        ("start_noting", &noting),
        ("start_reserving", &reserving),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|n| {
                timed(&rt, n, || async {
                    e.start(req.clone(), targets.clone(), StartOptions::default())
                        .await
                        .unwrap()
                        .handle
                })
            })
        });
    }
    g.finish();
}

/// An in-process `quorum serve` over a fresh data dir; `budget` sets a daily cap.
fn server(rt: &tokio::runtime::Runtime, budget: bool) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    let text = if budget {
        "[budget]\ndaily_usd = 1000000.0\n"
    } else {
        ""
    };
    std::fs::write(&cfg, text).unwrap();
    let d = dir.path().to_path_buf();
    let env = move |k: &str| match k {
        "QUORUM_CONFIG" => Some(cfg.display().to_string()),
        "QUORUM_MOCK_TPS" => Some("0".into()),
        _ => None,
    };
    // The data dir is read from the process environment.
    std::env::set_var("QUORUM_DATA_DIR", &d);
    let (engine, settings) = app::load_with_env(&GlobalFlags::default(), &env).unwrap();
    let state = AppState::new(engine, settings, ServeOptions::default());
    let url = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, router(state)).await.unwrap();
        });
        format!("http://{addr}/rpc")
    });
    (url, dir)
}

fn serve_throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::new();
    let mut g = c.benchmark_group("serve_throughput");
    g.sample_size(10);
    g.throughput(criterion::Throughput::Elements(400));
    for (name, budget) in [("reservations_off", false), ("reservations_on", true)] {
        let (url, _dir) = server(&rt, budget);
        let url = Arc::new(url);
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                    let mut tasks = Vec::new();
                    for _ in 0..50 {
                        let (client, url, next) = (client.clone(), url.clone(), next.clone());
                        tasks.push(tokio::spawn(async move {
                            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 400 {
                                let body = json!({"jsonrpc": "2.0", "id": 1, "method": "llm.complete",
                                                  "params": {"model": "mock/alpha", "prompt": "What is 2+2?"}});
                                let v: serde_json::Value = client
                                    .post(url.as_str())
                                    .json(&body)
                                    .send()
                                    .await
                                    .unwrap()
                                    .json()
                                    .await
                                    .unwrap();
                                assert!(v["error"].is_null(), "{v}");
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, front_door, serve_throughput);
criterion_main!(benches);
