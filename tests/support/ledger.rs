//! The ledger's test rows: a priced completion, its request metadata, a reservation
//! under a budget, and the mixed concurrent workload the budget-counter tests run on
//! both backends (SQLite and PostgreSQL).

use std::sync::Arc;

use llm_quorum::engine::budget::{Budget, Projection, TargetProjection};
use llm_quorum::engine::cost::Pricing;
use llm_quorum::engine::ledger::{Gate, Ledger, LedgerSink, Refused, RequestMeta, RunNote};
use llm_quorum::engine::{Completion, EngineError, FinishReason, Usage};

/// Make the SQLite ledger at `db` (made already) refuse every run note as a full
/// disk would, while request rows still go in: a note carries targets, a row's own
/// insert of its run does not. A real SQLite write failure on a real file.
pub fn refuse_run_notes(db: &std::path::Path) {
    rusqlite::Connection::open(db)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER no_notes BEFORE INSERT ON runs WHEN NEW.targets IS NOT NULL
             BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
        )
        .unwrap();
}

/// Request `i`: openai/gpt-4o-mini, 100+i input tokens (50 cached), 10 output, priced
/// from the built-in table.
pub fn completion(i: u64) -> Completion {
    let pricing = Pricing::builtin();
    let mut c = Completion {
        provider: "openai".into(),
        model: "gpt-4o-mini".into(),
        text: format!("answer {i}"),
        finish_reason: FinishReason::Stop,
        raw_finish_reason: "stop".into(),
        usage: Usage {
            input_tokens: 100 + i,
            output_tokens: 10,
            cached_input_tokens: 50,
            ..Default::default()
        },
        usage_reported: true,
        ttft_ms: Some(12.5),
        latency_ms: 40.0,
        ..Default::default()
    };
    pricing.apply(&mut c);
    c
}

/// Request `i` costing `cost` (`None`: price unknown).
pub fn costing(i: u64, cost: Option<f64>) -> Completion {
    let mut c = completion(i);
    c.cost_usd = cost;
    c
}

/// Metadata of a request of run `run` in `session`.
pub fn meta(run: &str, session: Option<&str>) -> RequestMeta {
    RequestMeta {
        run_id: run.into(),
        session_id: session.map(String::from),
        trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
        source_agent: Some("test".into()),
        target: "openai/gpt-4o-mini".into(),
        lease_id: None,
        prompt: "What is 2+2?".into(),
        attachments: Vec::new(),
    }
}

/// A projection of one gpt-4o-mini call bounded at `bound`.
pub fn bounded(bound: f64) -> Projection {
    Projection {
        targets: vec![TargetProjection {
            target: "openai/gpt-4o-mini".into(),
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            input_tokens: 10,
            input_exact: true,
            max_output_tokens: Some(100),
            bound_usd: Some(bound),
            price_ref: None,
        }],
    }
}

/// Note run `run` in `session`, reserving `bound` against `budget`.
pub fn reserve(
    l: &Ledger,
    run: &str,
    session: Option<&str>,
    bound: f64,
    budget: &Budget,
) -> Result<(), Refused> {
    let p = bounded(bound);
    let targets = vec!["openai/gpt-4o-mini".to_string()];
    let note = RunNote {
        run_id: run,
        session_id: session,
        budget_session: session,
        trace_id: None,
        targets: &targets,
        projected_usd: Some(bound),
        prompt: "hi",
    };
    l.begin_run(
        &note,
        Some(Gate {
            budget,
            projection: &p,
        }),
    )
}

/// Caps no test run reaches.
pub const ROOMY: Budget = Budget {
    session_usd: Some(50.0),
    daily_usd: Some(100.0),
};

/// 8 threads at once, each a mix of settled, failed, cancelled, overshooting,
/// left-open, ungated and unnoted runs in three budget sessions (`s0`..`s2`), and
/// one run per thread left open in `s-open`. Half the threads settle runs with their
/// last row (in its commit) and note ungated runs as passengers (not waited for),
/// the other half settle and note on their own. Checks that exactly the runs left
/// open still hold a reservation, and that every passenger note was committed.
pub fn mixed_workload(l: &Arc<Ledger>) {
    let open_before = l.open_reservations().unwrap().0;
    let (noted_tx, noted) = std::sync::mpsc::channel::<Result<(), String>>();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let l = l.clone();
            let noted_tx = noted_tx.clone();
            std::thread::spawn(move || {
                for i in 0..10u64 {
                    let run = format!("t{t}-{i}");
                    let s = format!("s{}", t % 3);
                    let s = Some(s.as_str());
                    match i % 5 {
                        0 => {
                            reserve(&l, &run, s, 0.01, &ROOMY).unwrap();
                            l.record(&meta(&run, s), &completion(i)).unwrap();
                            if t % 2 == 0 {
                                l.record_settling(&meta(&run, s), &completion(i + 1))
                                    .unwrap();
                            } else {
                                l.record(&meta(&run, s), &completion(i + 1)).unwrap();
                                l.settle_run(&run).unwrap();
                            }
                        }
                        1 => {
                            reserve(&l, &run, s, 0.01, &ROOMY).unwrap();
                            let mut failed = costing(i, None);
                            failed.error = Some(EngineError::Cancelled);
                            l.record(&meta(&run, s), &failed).unwrap();
                            l.settle_run(&run).unwrap();
                        }
                        2 => {
                            reserve(&l, &run, s, 0.01, &ROOMY).unwrap();
                            l.settle_run(&run).unwrap();
                        }
                        3 => {
                            reserve(&l, &run, s, 0.01, &ROOMY).unwrap();
                            let over = costing(i, Some(0.02));
                            match t % 4 {
                                1 => {
                                    l.record(&meta(&run, s), &over).unwrap();
                                    l.settle_run(&run).unwrap();
                                }
                                3 => {
                                    l.record_settling(&meta(&run, s), &over).unwrap();
                                }
                                _ => {
                                    l.record(&meta(&run, s), &over).unwrap();
                                }
                            }
                        }
                        _ => {
                            let targets = vec!["openai/gpt-4o-mini".to_string()];
                            if t % 2 == 0 {
                                let note = RunNote {
                                    run_id: &run,
                                    session_id: s,
                                    budget_session: s,
                                    trace_id: None,
                                    targets: &targets,
                                    projected_usd: None,
                                    prompt: "hi",
                                };
                                let tx = noted_tx.clone();
                                l.note_run_passenger(&note, move |r| {
                                    let _ = tx.send(r.map_err(|e| e.to_string()));
                                });
                            } else {
                                l.note_run(&run, s, None, &targets, None, "hi").unwrap();
                            }
                            l.record(&meta(&run, s), &completion(i)).unwrap();
                            l.record(&meta(&format!("loose-{run}"), s), &completion(i))
                                .unwrap();
                        }
                    }
                }
                // A lease: the requests of two runs noted without a hold of their own
                // draw it down (one beyond what is left), then it is released.
                let lease = format!("lease-{t}");
                let s = format!("s{}", t % 3);
                let s = Some(s.as_str());
                reserve(&l, &lease, s, 0.012, &ROOMY).unwrap();
                for k in 0..3u64 {
                    let run = format!("leased-{t}-{k}");
                    let mut m = meta(&run, s);
                    m.lease_id = Some(lease.clone());
                    l.record(&m, &costing(k, Some(0.005))).unwrap();
                }
                l.settle_run(&lease).unwrap();
                // Left open: a reservation with part of it spent.
                let run = format!("open-{t}");
                reserve(&l, &run, Some("s-open"), 0.01, &ROOMY).unwrap();
                l.record(&meta(&run, Some("s-open")), &costing(t, Some(0.003)))
                    .unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(noted_tx);
    // 4 threads × 2 passenger notes, each committed once.
    let notes: Vec<_> = (0..8)
        .map(|_| {
            noted
                .recv_timeout(super::PATIENCE)
                .expect("a passenger note's outcome")
        })
        .collect();
    assert!(notes.iter().all(|r| r.is_ok()), "{notes:?}");
    // Left open: runs 3 and 8 of the threads that do not settle them, and `open-*`.
    assert_eq!(l.open_reservations().unwrap().0 - open_before, 8 + 8);
}
