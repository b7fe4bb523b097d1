//! The consensus widgets inside the workbench: `App::update` state tests
//! (the overlay, key routing, blind mode and votes, the judge, repeat-N,
//! the diff key) and insta snapshots of the screens on a 120×40 TestBackend.

mod support;

use crossterm::event::KeyCode;
use llm_quorum::engine::judge::{JudgeKey, JudgeOutcome, Verdict};
use llm_quorum::engine::ledger::VoteRow;
use llm_quorum::engine::{Completion, CostSource, StreamEvent, TargetEvent, Usage};
use llm_quorum::tui::app::{Focus, Overlay};
use llm_quorum::tui::consensus::{ConsensusTab, JudgeStatus};
use llm_quorum::tui::theme::Theme;
use llm_quorum::tui::{App, Cmd, Msg};
use ratatui::layout::Rect;
use support::tui::{app_with, at, ch, ctrl, key, screen, shift};

// ----- helpers -------------------------------------------------------------

const QUESTION: &str = "What is 2+2? Answer with one number.";
const THREE: [&str; 3] = ["mock/alpha", "mock/beta", "mock/contrarian"];

/// Type and send; the Start commands as (run, targets).
fn send(app: &mut App, s: &str) -> Vec<(u64, Vec<String>)> {
    for c in s.chars() {
        app.update(ch(c));
    }
    app.update(key(KeyCode::Enter))
        .into_iter()
        .filter_map(|c| match c {
            Cmd::Start { run, targets, .. } => Some((run, targets)),
            _ => None,
        })
        .collect()
}

fn ev(app: &mut App, ms: u64, run: u64, target: usize, event: StreamEvent) -> Vec<Cmd> {
    app.now = at(ms);
    app.update(Msg::Engine {
        run,
        event: TargetEvent {
            run_id: "r".into(),
            target,
            event,
        },
    })
}

fn completion(target: &str, text: &str) -> Completion {
    Completion {
        provider: "mock".into(),
        model: target.trim_start_matches("mock/").into(),
        text: text.into(),
        usage: Usage {
            input_tokens: 12,
            output_tokens: 3,
            ..Default::default()
        },
        usage_reported: true,
        cost_usd: Some(0.0),
        cost_source: CostSource::Computed,
        ttft_ms: Some(210.0),
        latency_ms: 900.0,
        raw_finish_reason: "stop".into(),
        ..Default::default()
    }
}

/// What the mocks say to the closed question: 4, except the contrarian.
fn mock_answer(target: &str) -> &'static str {
    if target.contains("contrarian") {
        "5"
    } else {
        "4"
    }
}

/// Finish every target of every run with the mock answers.
fn finish_all(app: &mut App, runs: &[(u64, Vec<String>)]) {
    let mut ms = 500;
    for (run, targets) in runs {
        for (i, t) in targets.iter().enumerate() {
            ms += 50;
            ev(
                app,
                ms,
                *run,
                i,
                StreamEvent::Started {
                    provider: "mock".into(),
                    model: t.trim_start_matches("mock/").into(),
                    attempt: 1,
                },
            );
            ev(
                app,
                ms + 10,
                *run,
                i,
                StreamEvent::Finished(Box::new(completion(t, mock_answer(t)))),
            );
        }
    }
    app.now = at(ms + 100);
}

fn snapshot(name: &str, s: String) {
    insta::assert_snapshot!(name, filter_costs(&s));
}

/// `$0.0012` -> `$#.####`: costs are not what these snapshots are about
/// (same width, so the layout still reads).
fn filter_costs(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            while let Some(d) = chars.next_if(|d| d.is_ascii_digit() || *d == '.') {
                out.push(if d == '.' { '.' } else { '#' });
            }
        }
    }
    out
}

fn three_finished() -> App {
    let mut app = app_with(&THREE, (120, 40));
    let runs = send(&mut app, QUESTION);
    finish_all(&mut app, &runs);
    app
}

fn focus_pane(app: &mut App, i: usize) {
    while app.focus != Focus::Pane(i) {
        app.update(key(KeyCode::Tab));
    }
}

// ----- the view ------------------------------------------------------------

#[test]
fn consensus_view_opens_with_a_report_and_loads_votes() {
    let mut app = three_finished();
    focus_pane(&mut app, 0);
    let cmds = app.update(ch('v'));
    assert!(matches!(app.overlay, Overlay::Consensus));
    assert!(cmds.iter().any(|c| matches!(c, Cmd::LoadVotes)), "{cmds:?}");
    let r = app.cons.report.as_ref().expect("report");
    assert_eq!(r.len(), 3);
    assert_eq!(r.consensus.dissenters, vec!["mock/contrarian".to_string()]);
    let s = screen(&app);
    assert!(s.contains("1 matrix"), "{s}");
    // The votes arrive: the leaderboard tab has them.
    app.update(Msg::Votes(Ok(vec![VoteRow {
        run_id: None,
        targets: vec!["mock/alpha".into(), "mock/beta".into()],
        winner: Some("mock/alpha".into()),
        tag: None,
        created_at: "2026-01-01 00:00:00".into(),
    }])));
    assert_eq!(app.cons.board.as_ref().map(|b| b.votes), Some(1));
    app.update(ch('4'));
    let s = screen(&app);
    assert!(s.contains("mock/alpha"), "{s}");
}

#[test]
fn keys_route_to_the_view_and_esc_closes() {
    let mut app = three_finished();
    focus_pane(&mut app, 0);
    app.update(ch('v'));
    app.update(key(KeyCode::Right));
    assert_eq!(app.cons.view.borrow().tab, ConsensusTab::Clusters);
    app.update(ch('3'));
    assert_eq!(app.cons.view.borrow().tab, ConsensusTab::Diff);
    // `x` swaps the diff pair here; it must not cancel a pane.
    let before = app.cons.view.borrow().diff.pair();
    let cmds = app.update(ch('x'));
    assert!(cmds.is_empty());
    let after = app.cons.view.borrow().diff.pair();
    assert_eq!((before.1, before.0), after);
    app.update(key(KeyCode::Esc));
    assert!(matches!(app.overlay, Overlay::None));
    // The tab is kept when the view opens again.
    app.update(ch('v'));
    assert_eq!(app.cons.view.borrow().tab, ConsensusTab::Diff);
}

#[test]
fn open_view_is_rebuilt_when_an_answer_ends() {
    let mut app = app_with(&THREE, (120, 40));
    let runs = send(&mut app, QUESTION);
    let (run, targets) = runs[0].clone();
    for (i, t) in targets.iter().enumerate().take(2) {
        ev(
            &mut app,
            100,
            run,
            i,
            StreamEvent::Finished(Box::new(completion(t, mock_answer(t)))),
        );
    }
    // Not every pane ended and the view is closed: no report yet.
    assert!(app.cons.report.is_none());
    focus_pane(&mut app, 0);
    app.update(ch('v'));
    let r = app.cons.report.as_ref().expect("report");
    assert_eq!(
        r.consensus
            .answers
            .iter()
            .filter(|a| a.final_answer.is_some())
            .count(),
        2
    );
    ev(
        &mut app,
        200,
        run,
        2,
        StreamEvent::Finished(Box::new(completion("mock/contrarian", "5"))),
    );
    let r = app.cons.report.as_ref().expect("report");
    assert_eq!(r.consensus.dissenters, vec!["mock/contrarian".to_string()]);
}

#[test]
fn diff_key_compares_the_pane_with_the_majority() {
    let mut app = three_finished();
    focus_pane(&mut app, 2);
    app.update(ch('d'));
    assert!(matches!(app.overlay, Overlay::Consensus));
    let v = app.cons.view.borrow();
    assert_eq!(v.tab, ConsensusTab::Diff);
    assert_eq!(v.diff.pair(), (2, 0));
    drop(v);
    // `]` moves the first pane of the pair over the real panes.
    app.update(ch(']'));
    assert_ne!(app.cons.view.borrow().diff.pair(), (2, 0));
}

// ----- the summary bar -----------------------------------------------------

#[test]
fn summary_bar_waits_then_shows_the_verdict() {
    let mut app = app_with(&THREE, (120, 40));
    assert_eq!(app.areas().summary.height, 0, "no run yet");
    let runs = send(&mut app, QUESTION);
    assert_eq!(app.areas().summary.height, 1);
    let s = screen(&app);
    assert!(s.contains("consensus · waiting · 0 of 3 finished"), "{s}");
    finish_all(&mut app, &runs);
    let s = screen(&app);
    assert!(
        s.contains("consensus · 2 of 3 finished agree on \"4\""),
        "{s}"
    );
    // A tiny terminal keeps its rows for the panes.
    app.update(Msg::Resize(80, 16));
    assert_eq!(app.areas().summary, Rect::default());
    let _ = screen(&app);
    // One pane: no bar.
    let mut one = app_with(&["mock/alpha"], (120, 40));
    let runs = send(&mut one, QUESTION);
    finish_all(&mut one, &runs);
    assert_eq!(one.areas_in(Rect::new(0, 0, 120, 40)).summary.height, 0);
}

// ----- blind mode ----------------------------------------------------------

#[test]
fn blind_mode_hides_names_until_a_vote_then_reveals() {
    let mut app = app_with(&THREE, (120, 40));
    app.cons.vote_tag = Some("arith".into());
    app.update(ctrl('b'));
    assert!(app.cons.blind_next);
    let runs = send(&mut app, QUESTION);
    assert!(!app.cons.blind_next, "blind is for one send");
    finish_all(&mut app, &runs);
    let s = screen(&app);
    for t in THREE {
        assert!(!s.contains(t), "{t} shown while blind:\n{s}");
    }
    assert!(s.contains("Answer A") && s.contains("Answer B") && s.contains("Answer C"));
    focus_pane(&mut app, 0);
    app.update(ch('v'));
    let b = app.cons.blind.clone().expect("blind");
    // Vote for the contrarian's letter.
    let letter = b.letter_for(2).unwrap();
    let cmds = app.update(shift(letter.chars().next().unwrap()));
    let vote = cmds
        .iter()
        .find_map(|c| match c {
            Cmd::RecordVote { vote, run } => {
                assert_eq!(*run, Some(runs[0].0));
                Some(vote.clone())
            }
            _ => None,
        })
        .expect("a vote command");
    assert_eq!(vote.winner.as_deref(), Some("mock/contrarian"));
    assert_eq!(vote.targets, THREE.map(String::from).to_vec());
    assert_eq!(vote.tag.as_deref(), Some("arith"));
    // A second vote is not cast.
    let cmds = app.update(shift(letter.chars().next().unwrap()));
    assert!(!cmds.iter().any(|c| matches!(c, Cmd::RecordVote { .. })));
    app.update(key(KeyCode::Esc));
    let s = screen(&app);
    for t in THREE {
        assert!(s.contains(t), "{t} not revealed:\n{s}");
    }
}

#[test]
fn blind_tie_votes_with_no_winner() {
    let mut app = app_with(&THREE, (120, 40));
    app.update(ctrl('b'));
    let runs = send(&mut app, QUESTION);
    finish_all(&mut app, &runs);
    focus_pane(&mut app, 1);
    app.update(ch('v'));
    let cmds = app.update(ch('='));
    let Some(Cmd::RecordVote { vote: v, .. }) = cmds.first() else {
        panic!("{cmds:?}")
    };
    assert_eq!(v.winner, None);
    assert!(!app.blind_hidden());
}

// ----- the judge -----------------------------------------------------------

fn outcome(target: &str) -> JudgeOutcome {
    JudgeOutcome {
        target: target.into(),
        key: vec![
            JudgeKey {
                letter: "A".into(),
                label: "mock/alpha".into(),
                index: 0,
            },
            JudgeKey {
                letter: "B".into(),
                label: "mock/beta".into(),
                index: 1,
            },
        ],
        verdict: Some(Verdict {
            agreement: Some(0.9),
            best: Some("A".into()),
            best_target: Some("mock/alpha".into()),
            disagreements: vec!["the contrarian says 5".into()],
            summary: "Most answers say 4, which is right.".into(),
        }),
        error: None,
        completion: Completion {
            cost_usd: Some(0.25),
            ..completion(target, "{\"best\": \"A\"}")
        },
    }
}

#[test]
fn judge_key_sends_the_answers_and_the_verdict_lands_in_the_view() {
    let mut app = three_finished();
    app.cons.judge_model = Some("mock/gamma".into());
    focus_pane(&mut app, 0);
    let cmds = app.update(shift('J'));
    let Some(Cmd::Judge {
        target,
        prompt,
        answers,
    }) = cmds.iter().find(|c| matches!(c, Cmd::Judge { .. }))
    else {
        panic!("{cmds:?}")
    };
    assert_eq!(target, "mock/gamma");
    assert_eq!(prompt, QUESTION);
    assert_eq!(answers.len(), 3);
    assert!(matches!(app.overlay, Overlay::Consensus));
    assert!(matches!(
        app.cons.report.as_ref().and_then(|r| r.judge.clone()),
        Some(JudgeStatus::Running { .. })
    ));
    let s = screen(&app);
    assert!(s.contains("mock/gamma"), "{s}");
    app.update(Msg::Judged(Ok(Box::new(outcome("mock/gamma")))));
    let r = app.cons.report.as_ref().unwrap();
    assert_eq!(
        r.verdict().and_then(|v| v.best_target.as_deref()),
        Some("mock/alpha")
    );
    let s = screen(&app);
    assert!(s.contains("Most answers say 4"), "{s}");
    // Its cost is in the session ledger.
    let row = app
        .ledger
        .iter()
        .find(|r| r.target == "judge mock/gamma")
        .expect("judge row");
    assert_eq!(row.tally.requests, 1);
    let total: f64 = app.live_ledger().iter().map(|r| r.tally.cost_usd).sum();
    assert!((total - 0.25).abs() < 1e-9);
}

#[test]
fn judge_defaults_to_the_first_target_and_needs_two_answers() {
    let mut app = three_finished();
    focus_pane(&mut app, 0);
    let cmds = app.update(shift('J'));
    assert!(cmds
        .iter()
        .any(|c| matches!(c, Cmd::Judge { target, .. } if target == "mock/alpha")));
    // A failed judge is shown, not lost.
    app.update(Msg::Judged(Err("no key".into())));
    assert!(matches!(
        app.cons.report.as_ref().and_then(|r| r.judge.clone()),
        Some(JudgeStatus::Unavailable(_))
    ));
    let mut one = app_with(&["mock/alpha"], (120, 40));
    let runs = send(&mut one, QUESTION);
    finish_all(&mut one, &runs);
    focus_pane(&mut one, 0);
    let cmds = one.update(shift('J'));
    assert!(!cmds.iter().any(|c| matches!(c, Cmd::Judge { .. })));
}

// ----- repeat-N ------------------------------------------------------------

#[test]
fn repeat_n_runs_each_target_n_times_with_stability() {
    let mut app = app_with(&["mock/alpha", "mock/contrarian"], (120, 40));
    app.update(ctrl('n'));
    assert_eq!(app.cons.next_repeat(), 3);
    assert!(screen(&app).contains("next: ×3"));
    let runs = send(&mut app, QUESTION);
    let targets: Vec<String> = runs.iter().flat_map(|(_, t)| t.clone()).collect();
    assert_eq!(targets.len(), 6);
    assert_eq!(targets.iter().filter(|t| *t == "mock/alpha").count(), 3);
    assert_eq!(app.panes.len(), 6);
    assert_eq!(app.pane_name(1), "mock/alpha #2");
    assert_eq!(app.pane_name(5), "mock/contrarian #3");
    // The contrarian is not even consistent with itself.
    let mut ms = 100;
    for (run, ts) in &runs {
        for (i, t) in ts.iter().enumerate() {
            ms += 10;
            let text = if t.contains("contrarian") {
                ["5", "6", "5"][i % 3]
            } else {
                "4"
            };
            ev(
                &mut app,
                ms,
                *run,
                i,
                StreamEvent::Finished(Box::new(completion(t, text))),
            );
        }
    }
    let r = app.cons.report.as_ref().expect("report");
    assert_eq!(r.repeat, 3);
    assert_eq!(r.len(), 2, "one answer per target");
    let st = &r.stability;
    assert_eq!(st.len(), 2);
    assert_eq!(st[0].label, "mock/alpha");
    assert_eq!(st[0].distinct, 1);
    assert_eq!(st[1].distinct, 2);
    focus_pane(&mut app, 0);
    app.update(ch('v'));
    app.update(ch('5'));
    let s = screen(&app);
    assert!(s.contains("mock/contrarian"), "{s}");
    app.update(key(KeyCode::Esc));
    // Back to one run each: one pane per target again.
    app.update(key(KeyCode::Esc));
    app.update(ctrl('n'));
    app.update(ctrl('n'));
    assert_eq!(app.cons.next_repeat(), 1);
    let runs = send(&mut app, QUESTION);
    assert_eq!(runs.iter().map(|(_, t)| t.len()).sum::<usize>(), 2);
    assert_eq!(app.panes.len(), 2);
    assert_eq!(app.pane_name(1), "mock/contrarian");
}

#[test]
fn new_keys_are_in_the_help() {
    let mut app = app_with(&THREE, (120, 40));
    app.update(key(KeyCode::F(1)));
    let s = screen(&app);
    for what in [
        "judge the finished answers",
        "blind mode",
        "repeat each target",
        "word diff",
    ] {
        assert!(s.contains(what), "{what}:\n{s}");
    }
}

// ----- snapshots -----------------------------------------------------------

#[test]
fn snapshot_consensus_overlay() {
    let mut app = three_finished();
    focus_pane(&mut app, 0);
    app.update(ch('v'));
    snapshot("consensus_overlay", screen(&app));
    app.update(ch('2'));
    snapshot("consensus_overlay_clusters", screen(&app));
}

#[test]
fn snapshot_summary_bar() {
    let app = three_finished();
    snapshot("summary_bar", screen(&app));
}

#[test]
fn snapshot_blind_panes_before_the_vote() {
    let mut app = app_with(&THREE, (120, 40));
    app.update(ctrl('b'));
    let runs = send(&mut app, QUESTION);
    finish_all(&mut app, &runs);
    snapshot("blind_panes", screen(&app));
}

#[test]
fn consensus_styles_follow_the_theme_and_no_color() {
    use llm_quorum::tui::consensus::ConsensusStyles;
    use llm_quorum::tui::consensus_overlay::styles_from_theme;
    let t = Theme::builtin();
    let st = styles_from_theme(&t);
    assert_eq!(st.agree, t.ok);
    assert_eq!(st.disagree, t.warn);
    assert_eq!(st.failed, t.error);
    assert_eq!(
        styles_from_theme(&t.without_colors()),
        ConsensusStyles::monochrome()
    );
}

#[test]
fn picking_new_targets_ends_blind_and_repeat() {
    let mut app = app_with(&THREE, (120, 40));
    app.update(ctrl('b'));
    app.update(ctrl('n'));
    let runs = send(&mut app, QUESTION);
    finish_all(&mut app, &runs);
    assert_eq!(app.panes.len(), 9);
    assert!(app.blind_hidden());
    app.update(ctrl('p'));
    app.update(key(KeyCode::Esc));
    assert_eq!(app.panes.len(), 3);
    assert!(!app.blind_hidden());
    assert!(app.cons.repeat.is_none());
    assert_eq!(app.pane_name(0), "mock/alpha");
}

#[test]
fn a_closed_run_updates_the_summary() {
    let mut app = app_with(&["mock/alpha", "mock/beta"], (120, 40));
    let runs = send(&mut app, QUESTION);
    let run = runs[0].0;
    ev(
        &mut app,
        100,
        run,
        0,
        StreamEvent::Finished(Box::new(completion("mock/alpha", "4"))),
    );
    assert!(app.cons.report.is_none());
    // The run's channel closes with beta unfinished: it is cancelled, every pane ended.
    app.update(Msg::RunClosed { run });
    assert!(app.answers_ended());
    assert!(app.cons.report.is_some());
    let s = screen(&app);
    assert!(s.contains("consensus · "), "{s}");
    assert!(!s.contains("waiting"), "{s}");
}

// ----- discovery -------------------------------------------------------------

#[test]
fn discovered_targets_join_the_picker_even_while_it_is_open() {
    let mut app = app_with(&["mock/alpha"], (120, 40));
    app.update(ctrl('p'));
    assert!(matches!(app.overlay, Overlay::Picker(_)));
    app.update(Msg::Discovered(vec![
        "ollama/llama3.2:3b".into(),
        "mock/alpha".into(),
    ]));
    let Overlay::Picker(p) = &app.overlay else {
        panic!("the picker stays open")
    };
    let listed: Vec<&str> = p.items.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        listed.iter().filter(|t| **t == "mock/alpha").count(),
        1,
        "no duplicates: {listed:?}"
    );
    assert!(listed.contains(&"ollama/llama3.2:3b"), "{listed:?}");
    assert!(app.available.contains(&"ollama/llama3.2:3b".to_string()));
}

#[test]
fn a_blind_export_names_answers_by_letter_until_the_vote() {
    let mut app = app_with(&THREE, (120, 40));
    app.update(ctrl('b'));
    let runs = send(&mut app, QUESTION);
    finish_all(&mut app, &runs);
    let doc = app.export_doc();
    let text = format!(
        "{}\n{}",
        doc.to_markdown("2026-12-01T00:00:00Z"),
        doc.to_json("2026-12-01T00:00:00Z")
    );
    for t in THREE {
        assert!(!text.contains(t), "{t} in a blind export:\n{text}");
    }
    assert!(text.contains("Answer A"), "{text}");
    // After the vote the names are back.
    focus_pane(&mut app, 0);
    app.update(ch('v'));
    app.update(key(KeyCode::Char('=')));
    let doc = app.export_doc();
    let md = doc.to_markdown("2026-12-01T00:00:00Z");
    for t in THREE {
        assert!(
            md.contains(t),
            "{t} not in the export after the vote:\n{md}"
        );
    }
}

#[test]
fn blind_means_shuffled_panes_and_no_tell_on_screen_or_in_exports() {
    // Setup: a first, non-blind turn (with thinking and a price ref), then a blind one.
    let targets = ["mock/alpha", "mock/beta", "mock/thinker", "mock/gamma"];
    let mut app = app_with(&targets, (180, 45));
    let first = send(&mut app, "Warm-up question");
    finish_all(&mut app, &first);
    app.update(ctrl('b'));
    let runs = send(&mut app, QUESTION);
    let (run, ts) = &runs[0];
    for (i, t) in ts.iter().enumerate() {
        let model = t.trim_start_matches("mock/");
        ev(
            &mut app,
            600,
            *run,
            i,
            StreamEvent::Started {
                provider: "mock".into(),
                model: model.into(),
                attempt: 1,
            },
        );
        if model == "thinker" {
            ev(
                &mut app,
                620,
                *run,
                i,
                StreamEvent::ThinkingDelta("SECRET-THINKING about sums".into()),
            );
        }
        let mut c = completion(t, "4");
        c.price_ref = Some(format!("builtin:{t}@2025"));
        c.raw_finish_reason = "end_turn".into();
        c.usage.reasoning_tokens = if model == "thinker" { 9 } else { 0 };
        c.cost_usd = Some(0.00042);
        ev(&mut app, 700, *run, i, StreamEvent::Finished(Box::new(c)));
    }
    app.update(ctrl('t')); // ask for thinking: still hidden while blind

    // Check: screen order is the letter order, not the configured one.
    let areas = app.areas();
    let order = app.display_order();
    assert_ne!(order, vec![0, 1, 2, 3], "the panes were not shuffled");
    let mut by_pos: Vec<(u16, u16, String)> = (0..4)
        .map(|i| (areas.panes[i].y, areas.panes[i].x, app.pane_name(i)))
        .collect();
    by_pos.sort();
    let names: Vec<&str> = by_pos.iter().map(|(_, _, n)| n.as_str()).collect();
    assert_eq!(names, ["Answer A", "Answer B", "Answer C", "Answer D"]);
    // No model name, price, thinking or earlier turn anywhere on screen.
    let s = screen(&app);
    for t in targets {
        assert!(!s.contains(t), "{t} on a blind screen:\n{s}");
        assert!(
            !s.contains(t.trim_start_matches("mock/")),
            "{t} on a blind screen:\n{s}"
        );
    }
    for tell in [
        "SECRET-THINKING",
        "thinking",
        "Warm-up",
        "$0.00042",
        " reas",
        "tok/s",
    ] {
        assert!(!s.contains(tell), "{tell} on a blind screen:\n{s}");
    }
    // Nor in the export (the blind turn by letter, in letter order).
    let doc = app.export_doc();
    let last = doc.turns.last().unwrap();
    let letters: Vec<&str> = last.answers.iter().map(|a| a.target.as_str()).collect();
    assert_eq!(letters, ["Answer A", "Answer B", "Answer C", "Answer D"]);
    let text = format!(
        "{}\n{}",
        serde_json::to_string(&last).unwrap(),
        serde_json::to_string(&doc.ledger).unwrap()
    );
    for tell in [
        "mock/",
        "alpha",
        "thinker",
        "price_ref",
        "builtin:",
        "end_turn",
        "SECRET",
        "0.00042",
    ] {
        assert!(!text.contains(tell), "{tell} in a blind export:\n{text}");
    }
    // After the vote: names, order and the earlier turn are back.
    focus_pane(&mut app, 0);
    app.update(ch('v'));
    app.update(key(KeyCode::Char('=')));
    app.update(key(KeyCode::Esc));
    assert_eq!(app.display_order(), vec![0, 1, 2, 3]);
    let s = screen(&app);
    assert!(s.contains("mock/thinker") && s.contains("Warm-up"), "{s}");
}
