//! The eval scheduler's own cost per case (issue 17: ≤ 100 µs).
//!
//! - `eval/bare_fan_outs`: 200 cases × 3 targets sent as bare fan-outs
//!   (`Engine::run`, 16 requests in flight), the mock provider answering at once:
//!   what the answers cost without any eval around them.
//! - `eval/run_suite`: the same 200 cases × 3 targets through `run_suite` (front
//!   door per case, concurrency 16, answer checks, consensus analysis, the case
//!   result built and serialised, progress), ledger off.
//!
//! Per case, `run_suite - bare_fan_outs` (divided by 200) is the scheduler's own cost.
//! `cargo bench --bench eval`.

use std::collections::HashSet;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use llm_quorum::engine::eval::run::{run_suite, EvalOptions};
use llm_quorum::engine::eval::suite;
use llm_quorum::engine::registry::Registry;
use llm_quorum::engine::{Engine, EngineConfig};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const CASES: usize = 200;

fn bench(c: &mut Criterion) {
    // The mock answers without pauses.
    std::env::set_var("QUORUM_MOCK_TPS", "0");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = Engine::new(EngineConfig {
        registry: Registry::from_env(&|_| None),
        ..Default::default()
    })
    .unwrap();
    let mut text =
        String::from("targets = [\"mock/alpha\", \"mock/gamma\", \"mock/contrarian\"]\n");
    for i in 0..CASES {
        text.push_str(&format!(
            "[[cases]]\nprompt = \"What is {i}+1? Answer with one number.\"\nassert = [{{ type = \"number\", value = {} }}, {{ type = \"contains\", value = \"{}\" }}]\n",
            i + 1,
            i + 1
        ));
    }
    let suite = Arc::new(suite::parse(&text, std::path::Path::new("bench.toml")).unwrap());
    let mut g = c.benchmark_group("eval");
    g.throughput(Throughput::Elements(CASES as u64));
    g.sample_size(20);
    g.bench_function("bare_fan_outs", |b| {
        b.iter(|| {
            rt.block_on(async {
                let sem = Arc::new(Semaphore::new(16));
                let mut tasks = tokio::task::JoinSet::new();
                for case in &suite.cases {
                    let p = sem.clone().acquire_many_owned(3).await.unwrap();
                    let h = engine.run(
                        case.request.clone(),
                        suite.targets.clone(),
                        Default::default(),
                    );
                    tasks.spawn(async move {
                        let cs = h.collect().await;
                        drop(p);
                        cs.len()
                    });
                }
                while tasks.join_next().await.is_some() {}
            })
        })
    });
    g.bench_function("run_suite", |b| {
        b.iter(|| {
            rt.block_on(async {
                let end = run_suite(
                    &engine,
                    suite.clone(),
                    "eval-bench",
                    &HashSet::new(),
                    (0, 0, 0.0),
                    EvalOptions::default(),
                    CancellationToken::new(),
                    &mut |_, _| {},
                )
                .await;
                assert_eq!(end.outcomes.len(), CASES);
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
