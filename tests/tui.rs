//! The workbench without a terminal: `App::update` as pure state tests,
//! screens as insta snapshots on a TestBackend, colours cell by cell.

mod support;

use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind};
use llm_quorum::engine::budget::{Projection, TargetProjection};
use llm_quorum::engine::ledger::RequestRow;
use llm_quorum::engine::{
    Completion, CostSource, EngineError, FinishReason, Role, StreamEvent, TargetEvent, Usage,
};
use llm_quorum::tui::app::{Confirm, Focus, Overlay};
use llm_quorum::tui::keys::KeyMap;
use llm_quorum::tui::pane::PaneState;
use llm_quorum::tui::theme::Theme;
use llm_quorum::tui::{layout, view, App, AppInit, Cmd, HistRun, Msg};
use ratatui::backend::TestBackend;
use ratatui::layout::Rect;
use ratatui::style::Color;
use ratatui::Terminal;
use support::tui::{at, base, ctrl, key};

// ----- helpers -------------------------------------------------------------

fn app_with(targets: &[&str], size: (u16, u16)) -> App {
    app_themed(targets, size, Theme::builtin())
}

fn app_themed(targets: &[&str], size: (u16, u16), theme: Theme) -> App {
    let mut app = App::new(AppInit {
        targets: targets.iter().map(|s| s.to_string()).collect(),
        available: [
            "mock/alpha",
            "mock/beta",
            "mock/gamma",
            "mock/contrarian",
            "mock/thinker",
            "mock/flaky",
            "openai/gpt-4o-mini",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        theme,
        keys: KeyMap::default(),
        banner: Vec::new(),
        budget_set: false,
        pricing: None,
        size,
    });
    app.now = base();
    app
}

fn app3() -> App {
    app_with(&["mock/alpha", "mock/beta", "mock/thinker"], (120, 36))
}

fn type_text(app: &mut App, s: &str) -> Vec<Cmd> {
    let mut cmds = Vec::new();
    for c in s.chars() {
        cmds.extend(app.update(key(KeyCode::Char(c))));
    }
    cmds
}

/// Type and send; returns the Start commands as (run, targets, messages).
fn send(app: &mut App, s: &str) -> Vec<(u64, Vec<String>, Vec<llm_quorum::engine::Message>)> {
    type_text(app, s);
    app.update(key(KeyCode::Enter))
        .into_iter()
        .filter_map(|c| match c {
            Cmd::Start {
                run,
                request,
                targets,
                ..
            } => Some((run, targets, request.messages)),
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

fn started(app: &mut App, ms: u64, run: u64, target: usize, model: &str) {
    ev(
        app,
        ms,
        run,
        target,
        StreamEvent::Started {
            provider: "mock".into(),
            model: model.into(),
            attempt: 1,
        },
    );
}

fn text(app: &mut App, ms: u64, run: u64, target: usize, t: &str) {
    ev(app, ms, run, target, StreamEvent::TextDelta(t.into()));
}

fn completion(model: &str, text: &str, out: u64) -> Completion {
    Completion {
        provider: "mock".into(),
        model: model.into(),
        text: text.into(),
        usage: Usage {
            input_tokens: 12,
            output_tokens: out,
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

fn finished(app: &mut App, ms: u64, run: u64, target: usize, c: Completion) {
    ev(app, ms, run, target, StreamEvent::Finished(Box::new(c)));
}

fn draw(app: &App, w: u16, h: u16) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| view::render(app, f)).unwrap();
    t
}

fn screen(app: &App) -> String {
    let t = draw(app, app.size.0, app.size.1);
    t.backend().to_string()
}

/// Three panes mid-stream: alpha finished, beta streaming markdown, thinker thinking.
fn streaming_app() -> App {
    streaming_app_themed(Theme::builtin())
}

fn streaming_app_themed(theme: Theme) -> App {
    let mut app = app_themed(
        &["mock/alpha", "mock/beta", "mock/thinker"],
        (120, 36),
        theme,
    );
    let starts = send(&mut app, "What is 2+2?");
    let run = starts[0].0;
    started(&mut app, 10, run, 0, "alpha");
    started(&mut app, 10, run, 1, "beta");
    started(&mut app, 10, run, 2, "thinker");
    text(&mut app, 210, run, 0, "2 + 2 = 4. The answer is **4**.");
    finished(
        &mut app,
        900,
        run,
        0,
        completion("alpha", "2 + 2 = 4. The answer is **4**.", 12),
    );
    for (i, w) in "## Solving 2 + 2\n\nThis is a single *addition*:\n\n- Left operand: 2\n- Result: 4\n\n```python\nprint(2 + 2)\n```\nSo the"
        .split_inclusive(' ')
        .enumerate()
    {
        text(&mut app, 300 + i as u64 * 10, run, 1, w);
    }
    ev(
        &mut app,
        400,
        run,
        2,
        StreamEvent::ThinkingDelta("The user asks for 2+2. Adding two and two gives four.".into()),
    );
    app.now = at(1000);
    app.update(Msg::Tick);
    app
}

// ----- update: pure state ----------------------------------------------------

#[test]
fn send_starts_one_run_for_every_target_and_clears_the_editor() {
    let mut app = app3();
    let starts = send(&mut app, "What is 2+2?");
    assert_eq!(starts.len(), 1);
    let (_, targets, messages) = &starts[0];
    assert_eq!(targets, &["mock/alpha", "mock/beta", "mock/thinker"]);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].content, "What is 2+2?");
    assert_eq!(app.prompt_text(), "");
    assert!(app.panes.iter().all(|p| p.state == PaneState::Waiting));
    assert_eq!(app.sends, 1);
    // A second Enter while in flight sends nothing.
    let again = send(&mut app, "more");
    assert!(again.is_empty());
    assert!(app.flash().unwrap().contains("in flight"));
}

#[test]
fn events_fold_into_panes_and_the_ledger() {
    let app = streaming_app();
    assert_eq!(app.panes[0].state, PaneState::Done);
    assert_eq!(app.panes[1].state, PaneState::Streaming);
    assert_eq!(app.panes[2].state, PaneState::Streaming);
    assert!(app.panes[1].answer.starts_with("## Solving"));
    assert_eq!(app.panes[2].thinking.len(), 53);
    let rows = app.live_ledger();
    let order: Vec<&str> = rows.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(order, ["mock/alpha", "mock/beta", "mock/thinker"]);
    assert_eq!(rows[0].tally.requests, 1);
    assert_eq!(rows[0].tally.usage.output_tokens, 12);
    // Live: beta counts while streaming.
    let beta = rows.iter().find(|r| r.target == "mock/beta").unwrap();
    assert_eq!(beta.tally.requests, 0);
    assert!(beta.tally.usage.output_tokens > 10);
    // Finished answers become history.
    assert_eq!(app.panes[0].history.len(), 2);
    assert_eq!(app.panes[0].history[1].role, Role::Assistant);
    assert!(app.panes[1].history.is_empty());
}

#[test]
fn stale_events_of_an_old_run_do_not_touch_a_pane() {
    let mut app = app3();
    let run = send(&mut app, "hi")[0].0;
    text(&mut app, 10, run + 100, 0, "not mine");
    assert!(app.panes[0].answer.is_empty());
}

#[test]
fn esc_leaves_views_and_never_cancels() {
    let mut app = streaming_app();
    // Zoom a streaming pane, then Esc: out of zoom, and nothing is cancelled.
    app.update(key(KeyCode::Tab));
    app.update(key(KeyCode::Tab));
    app.update(key(KeyCode::Char('z')));
    assert_eq!(app.zoom, Some(1));
    let cmds = app.update(key(KeyCode::Esc));
    assert!(cmds.is_empty(), "Esc must not cancel: {cmds:?}");
    assert_eq!(app.zoom, None);
    assert_eq!(app.focus, Focus::Pane(1));
    assert!(app.in_flight());
    // Again: back to the editor; again: still nothing cancelled.
    assert!(app.update(key(KeyCode::Esc)).is_empty());
    assert_eq!(app.focus, Focus::Editor);
    assert!(app.update(key(KeyCode::Esc)).is_empty());
    assert_eq!(app.panes[1].state, PaneState::Streaming);
    // Overlays close on Esc without cancelling either.
    app.update(ctrl('p'));
    assert!(app
        .update(key(KeyCode::Esc))
        .iter()
        .all(|c| !matches!(c, Cmd::Cancel { .. })));
    assert!(app.in_flight());
    // The help names the deliberate key.
    let help = {
        app.update(key(KeyCode::F(1)));
        let s = screen(&app);
        app.update(key(KeyCode::Esc));
        s
    };
    assert!(
        help.contains("Ctrl+G") && help.contains("cancel every request"),
        "{help}"
    );
}

#[test]
fn ctrl_g_cancels_everything_in_flight() {
    let mut app = streaming_app();
    let cmds = app.update(ctrl('g'));
    assert!(
        matches!(cmds.as_slice(), [Cmd::Cancel { run: 1 }]),
        "{cmds:?}"
    );
    // The engine reports cancellation per target.
    let c = Completion {
        error: Some(EngineError::Cancelled),
        finish_reason: FinishReason::Cancelled,
        ..completion("beta", "", 3)
    };
    ev(&mut app, 1100, 1, 1, StreamEvent::Failed(Box::new(c)));
    assert_eq!(app.panes[1].state, PaneState::Cancelled);
    // A run whose channel closes without a word is cancelled, not stuck.
    app.update(Msg::RunClosed { run: 1 });
    assert_eq!(app.panes[2].state, PaneState::Cancelled);
    assert!(!app.in_flight());
}

#[test]
fn pane_keys_cancel_retry_zoom_copy() {
    let mut app = streaming_app();
    app.update(key(KeyCode::Tab));
    app.update(key(KeyCode::Tab));
    assert_eq!(app.focus, Focus::Pane(1));
    let cmds = app.update(key(KeyCode::Char('x')));
    assert!(
        matches!(cmds.as_slice(), [Cmd::CancelTarget { run: 1, index: 1 }]),
        "{cmds:?}"
    );
    // Failure, then retry: a new run with that pane only and the same messages.
    let mut c = completion("beta", "", 0);
    c.error = Some(EngineError::Network {
        message: "connection reset".into(),
    });
    c.finish_reason = FinishReason::Error;
    ev(&mut app, 1200, 1, 1, StreamEvent::Failed(Box::new(c)));
    assert_eq!(app.panes[1].state, PaneState::Failed);
    let cmds = app.update(key(KeyCode::Char('r')));
    let start = cmds
        .iter()
        .find_map(|c| match c {
            Cmd::Start {
                run,
                targets,
                request,
                ..
            } => Some((*run, targets.clone(), request.messages.clone())),
            _ => None,
        })
        .expect("retry starts a run");
    assert_eq!(start.1, ["mock/beta"]);
    assert_eq!(start.2.len(), 1);
    assert_eq!(app.panes[1].run, Some((start.0, 0)));
    assert!(
        app.panes[1].answer.is_empty(),
        "retry clears the turn's output"
    );
    app.update(key(KeyCode::Char('z')));
    assert_eq!(app.zoom, Some(1));
    app.update(key(KeyCode::Char('z')));
    assert_eq!(app.zoom, None);
    app.update(key(KeyCode::BackTab));
    assert_eq!(app.focus, Focus::Pane(0));
    let cmds = app.update(key(KeyCode::Char('y')));
    assert!(
        matches!(cmds.as_slice(), [Cmd::Copy(t)] if t == "2 + 2 = 4. The answer is **4**."),
        "{cmds:?}"
    );
}

#[test]
fn follow_ups_use_each_panes_own_history_and_continue_shares_one() {
    let mut app = app_with(&["mock/alpha", "mock/beta"], (120, 36));
    let run = send(&mut app, "Is water wet?")[0].0;
    finished(&mut app, 100, run, 0, completion("alpha", "Yes.", 2));
    finished(&mut app, 100, run, 1, completion("beta", "No.", 2));
    // Follow-up: histories differ, so one run per pane.
    let starts = send(&mut app, "Why?");
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[0].2[1].content, "Yes.");
    assert_eq!(starts[1].2[1].content, "No.");
    let (r1, r2) = (starts[0].0, starts[1].0);
    finished(&mut app, 200, r1, 0, completion("alpha", "Because.", 2));
    finished(&mut app, 200, r2, 0, completion("beta", "It is not.", 2));
    // Continue with beta's answer: the next send is one run with beta's history.
    app.update(key(KeyCode::Tab));
    app.update(key(KeyCode::Tab));
    assert_eq!(app.focus, Focus::Pane(1));
    app.update(key(KeyCode::Char('c')));
    assert_eq!(app.panes[0].history, app.panes[1].history);
    app.update(key(KeyCode::Esc));
    assert_eq!(app.focus, Focus::Editor);
    let starts = send(&mut app, "Sure?");
    assert_eq!(starts.len(), 1);
    let msgs = &starts[0].2;
    assert_eq!(msgs.len(), 5);
    assert_eq!(msgs[3].content, "It is not.");
    assert_eq!(starts[0].1, ["mock/alpha", "mock/beta"]);
}

#[test]
fn quit_asks_while_runs_are_in_flight() {
    let mut app = streaming_app();
    app.update(ctrl('q'));
    assert!(matches!(app.overlay, Overlay::Confirm(Confirm::Quit)));
    assert!(!app.quit);
    app.update(key(KeyCode::Char('n')));
    assert!(matches!(app.overlay, Overlay::None));
    app.update(ctrl('c'));
    let cmds = app.update(key(KeyCode::Char('y')));
    assert!(app.quit);
    assert!(cmds.iter().any(|c| matches!(c, Cmd::Cancel { .. })));
    // Nothing in flight: quit at once.
    let mut idle = app3();
    idle.update(ctrl('q'));
    assert!(idle.quit);
}

#[test]
fn editor_keys_newline_and_prompt_history() {
    let mut app = app3();
    type_text(&mut app, "one");
    app.update(Msg::Key(KeyEvent::new(KeyCode::Enter, KeyModifiers::ALT)));
    type_text(&mut app, "two");
    app.update(ctrl('j'));
    type_text(&mut app, "three");
    assert_eq!(app.prompt_text(), "one\ntwo\nthree");
    // ? inside the editor is text, not help.
    type_text(&mut app, "?");
    assert!(matches!(app.overlay, Overlay::None));
    app.update(key(KeyCode::Enter));
    let run = 1;
    for t in 0..3 {
        finished(&mut app, 100, run, t, completion("alpha", "ok", 1));
    }
    send(&mut app, "second");
    for t in 0..3 {
        let r = app.panes[t].run.unwrap().0;
        finished(&mut app, 200, r, 0, completion("alpha", "ok", 1));
    }
    assert_eq!(app.prompt_text(), "");
    app.update(key(KeyCode::Up));
    assert_eq!(app.prompt_text(), "second");
    app.update(key(KeyCode::Up));
    assert_eq!(app.prompt_text(), "one\ntwo\nthree?");
    app.update(key(KeyCode::Down));
    assert_eq!(app.prompt_text(), "second");
    app.update(key(KeyCode::Down));
    assert_eq!(app.prompt_text(), "");
    // Help: F1 anywhere, ? outside the editor.
    app.update(key(KeyCode::F(1)));
    assert!(matches!(app.overlay, Overlay::Help(_)));
    app.update(key(KeyCode::Char('q')));
    assert!(matches!(app.overlay, Overlay::None));
    app.update(key(KeyCode::Tab));
    app.update(key(KeyCode::Char('?')));
    assert!(matches!(app.overlay, Overlay::Help(_)));
}

#[test]
fn typing_projects_off_thread_and_shows_the_bound() {
    let mut app = app3();
    let cmds = type_text(&mut app, "hi");
    let gen = cmds
        .iter()
        .filter_map(|c| match c {
            Cmd::Project { gen, groups, .. } => {
                assert_eq!(groups.len(), 1);
                assert_eq!(groups[0].1.len(), 3);
                Some(*gen)
            }
            _ => None,
        })
        .next_back()
        .expect("a projection is asked for");
    assert!(screen(&app).contains("next send …"));
    let p = Projection {
        targets: (0..3)
            .map(|i| TargetProjection {
                target: format!("mock/{i}"),
                provider: "mock".into(),
                model: format!("{i}"),
                input_tokens: 9,
                input_exact: true,
                max_output_tokens: Some(100),
                bound_usd: Some(0.0),
                price_ref: None,
            })
            .collect(),
    };
    // A stale result is not shown; the current one is.
    app.update(Msg::Projection {
        gen: gen - 1,
        result: Ok(p.clone()),
    });
    assert!(screen(&app).contains("next send …"));
    app.update(Msg::Projection { gen, result: Ok(p) });
    let s = screen(&app);
    assert!(s.contains("next send ≤ $0"), "{s}");
    assert!(s.contains("9 tok"), "{s}");
}

#[test]
fn a_send_over_budget_asks_first() {
    let mut app = app3();
    app.budget_set = true;
    type_text(&mut app, "expensive");
    let cmds = app.update(key(KeyCode::Enter));
    assert!(cmds
        .iter()
        .any(|c| matches!(c, Cmd::CheckBudget { groups, .. } if groups[0].1.len() == 3)));
    assert!(app.panes.iter().all(|p| p.state == PaneState::Idle));
    app.update(Msg::BudgetChecked(Err(
        "this run may cost up to $2.00".into()
    )));
    assert!(matches!(&app.overlay, Overlay::Confirm(Confirm::Budget(m)) if m.contains("$2.00")));
    assert!(screen(&app).contains("Send anyway?"));
    let cmds = app.update(key(KeyCode::Char('y')));
    assert!(cmds.iter().any(|c| matches!(c, Cmd::Start { .. })));
    assert!(app.panes.iter().all(|p| p.state == PaneState::Waiting));
    // Under the cap: straight through.
    let mut ok = app3();
    ok.budget_set = true;
    type_text(&mut ok, "cheap");
    ok.update(key(KeyCode::Enter));
    let cmds = ok.update(Msg::BudgetChecked(Ok(())));
    assert!(cmds.iter().any(|c| matches!(c, Cmd::Start { .. })));
}

#[test]
fn picker_filters_fuzzily_and_toggles_targets() {
    let mut app = app3();
    app.update(ctrl('p'));
    for c in "gam".chars() {
        app.update(key(KeyCode::Char(c)));
    }
    let Overlay::Picker(p) = &app.overlay else {
        panic!("picker")
    };
    assert_eq!(p.items[p.filtered()[0]].0, "mock/gamma");
    app.update(key(KeyCode::Enter));
    app.update(key(KeyCode::Backspace));
    app.update(key(KeyCode::Backspace));
    app.update(key(KeyCode::Backspace));
    // alpha is first in the unfiltered list: turn it off.
    app.update(key(KeyCode::Char(' ')));
    app.update(key(KeyCode::Esc));
    let names: Vec<&str> = app.panes.iter().map(|p| p.target.as_str()).collect();
    assert_eq!(names, ["mock/beta", "mock/thinker", "mock/gamma"]);
}

#[test]
fn scrolling_pauses_follow_and_end_resumes_it() {
    let mut app = app3();
    let run = send(&mut app, "long")[0].0;
    for i in 0..200 {
        text(&mut app, 10 + i, run, 0, &format!("line {i}\n"));
    }
    app.update(key(KeyCode::Tab));
    app.update(key(KeyCode::PageUp));
    let top = app.panes[0].scroll.expect("scrolled");
    text(&mut app, 500, run, 0, "more\n");
    assert_eq!(
        app.panes[0].scroll,
        Some(top),
        "new text does not move a scrolled pane"
    );
    app.update(key(KeyCode::End));
    assert_eq!(app.panes[0].scroll, None);
    // Mouse wheel over the pane.
    app.update(Msg::Mouse(MouseEvent {
        kind: MouseEventKind::ScrollUp,
        column: 5,
        row: 5,
        modifiers: KeyModifiers::NONE,
    }));
    assert!(app.panes[0].scroll.is_some());
    let s = screen(&app);
    assert!(s.contains("scrolled"), "{s}");
}

#[test]
fn thinking_toggles_everywhere() {
    let mut app = streaming_app();
    assert!(screen(&app).contains("▸ thinking"));
    app.update(ctrl('t'));
    let s = screen(&app);
    assert!(s.contains("▾ thinking"), "{s}");
    assert!(s.contains("Adding two"), "{s}");
}

#[test]
fn export_holds_prompt_answers_stats_and_ledger() {
    let app = streaming_app();
    let doc = app.export_doc();
    assert_eq!(doc.turns.len(), 1);
    assert_eq!(doc.turns[0].prompt, "What is 2+2?");
    assert_eq!(doc.turns[0].answers.len(), 3);
    let md = doc.to_markdown("2026-12-01T13:00:00Z");
    assert!(md.contains("### mock/alpha (done)"), "{md}");
    assert!(md.contains("The answer is **4**."));
    assert!(md.contains("| mock/alpha | 1 | 0 | 12 | 12 |"), "{md}");
    let js = doc.to_json("t");
    assert_eq!(js["answers"][0]["completion"]["usage"]["output_tokens"], 12);
    let dir = tempfile::tempdir().unwrap();
    let paths = doc.write(dir.path(), "stamp", "t").unwrap();
    assert!(paths.iter().all(|p| p.exists()));
}

#[test]
fn retrying_and_fallback_states_show_in_the_header() {
    let mut app = app_with(&["mock/alpha", "mock/beta", "mock/thinker"], (200, 36));
    let run = send(&mut app, "fail")[0].0;
    ev(
        &mut app,
        100,
        run,
        0,
        StreamEvent::Retrying {
            attempt: 2,
            max_attempts: 3,
            wait: Duration::from_secs(6),
            reason: "503, Retry-After".into(),
        },
    );
    ev(
        &mut app,
        100,
        run,
        1,
        StreamEvent::FellBack {
            from: "mock/beta".into(),
            to: "mock/alpha".into(),
            reason: "503".into(),
        },
    );
    ev(&mut app, 100, run, 2, StreamEvent::Queued);
    app.now = at(100);
    let s = screen(&app);
    assert!(
        s.contains("retrying 2/3 in 6.0 s · 503, Retry-After"),
        "{s}"
    );
    assert!(
        s.contains("mock/alpha · waiting · fallback for mock/beta"),
        "{s}"
    );
    assert!(s.contains("queued"), "{s}");
}

#[test]
fn a_fallback_answer_is_credited_to_the_model_that_wrote_it() {
    // Setup: anthropic fails, the [fallbacks] entry moves it to openai.
    let mut app = app_with(&["anthropic/claude-sonnet-4-5", "mock/alpha"], (180, 45));
    let run = send(&mut app, "What is 2+2?")[0].0;
    ev(
        &mut app,
        100,
        run,
        0,
        StreamEvent::FellBack {
            from: "anthropic/claude-sonnet-4-5".into(),
            to: "openai/gpt-4o".into(),
            reason: "529 overloaded".into(),
        },
    );
    ev(
        &mut app,
        110,
        run,
        0,
        StreamEvent::Started {
            provider: "openai".into(),
            model: "gpt-4o".into(),
            attempt: 1,
        },
    );
    let mut c = completion("gpt-4o", "4", 2);
    c.provider = "openai".into();
    c.fell_back_from = Some("anthropic/claude-sonnet-4-5".into());
    finished(&mut app, 500, run, 0, c);
    finished(&mut app, 600, run, 1, completion("alpha", "4", 2));

    // Check: the pane, the ledger, the consensus report and the export
    // credit openai/gpt-4o, with the target asked for alongside.
    assert_eq!(app.pane_name(0), "openai/gpt-4o");
    let s = screen(&app);
    assert!(s.contains("openai/gpt-4o · done"), "{s}");
    assert!(
        s.contains("fallback for anthropic/claude-sonnet-4-5"),
        "{s}"
    );
    let ledger = app.live_ledger();
    assert_eq!(
        ledger[0].target,
        "openai/gpt-4o (for anthropic/claude-sonnet-4-5)"
    );
    assert!(ledger
        .iter()
        .all(|r| r.target != "anthropic/claude-sonnet-4-5"));
    let report = app.cons.report.as_ref().expect("report once all ended");
    let labels: Vec<&str> = report
        .consensus
        .answers
        .iter()
        .map(|a| a.label.as_str())
        .collect();
    assert_eq!(labels, ["openai/gpt-4o", "mock/alpha"]);
    let doc = app.export_doc();
    let a = &doc.turns[0].answers[0];
    assert_eq!(a.target, "openai/gpt-4o");
    assert_eq!(a.asked_for.as_deref(), Some("anthropic/claude-sonnet-4-5"));
    assert!(doc.to_markdown("t").contains(
        "### openai/gpt-4o (done)\n\n*Fallback: asked for anthropic/claude-sonnet-4-5.*"
    ));
}

#[test]
fn history_lists_runs_and_reopens_one_read_only() {
    let mut app = app3();
    let cmds = app.update(ctrl('o'));
    assert!(matches!(cmds.as_slice(), [Cmd::LoadHistory]));
    app.update(Msg::History(Ok(vec![
        hist_run("run-1", "What is 2+2?"),
        hist_run("run-0", "Earlier"),
    ])));
    insta::assert_snapshot!("history_list", screen(&app));
    app.update(key(KeyCode::Enter));
    let Overlay::History(h) = &app.overlay else {
        panic!()
    };
    let panes = h.open.as_ref().expect("open");
    assert!(panes.iter().all(|p| p.read_only));
    assert_eq!(panes[0].answer_text(), "4");
    insta::assert_snapshot!("history_open", screen(&app));
    app.update(key(KeyCode::Esc));
    app.update(key(KeyCode::Esc));
    assert!(matches!(app.overlay, Overlay::None));
}

fn hist_run(id: &str, prompt: &str) -> HistRun {
    let row = |n: i64, target: &str, text: &str| RequestRow {
        id: n,
        run_id: id.into(),
        session_id: Some("tui-1".into()),
        trace_id: None,
        source_agent: Some("quorum-tui".into()),
        target: target.into(),
        provider: "mock".into(),
        model: target.trim_start_matches("mock/").into(),
        input_tokens: 7,
        output_tokens: 3,
        cached_input_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        usage_reported: true,
        cost_usd: Some(0.0),
        cost_source: "computed".into(),
        price_ref: None,
        ttft_ms: Some(120.0),
        latency_ms: Some(450.0),
        status: "ok".into(),
        finish_reason: Some("stop".into()),
        raw_finish_reason: Some("stop".into()),
        error_kind: None,
        error_message: None,
        retries: 0,
        fell_back_from: None,
        cache_hit: false,
        prompt: Some(prompt.into()),
        response: Some(text.into()),
        thinking: None,
        tool_calls: None,
        attachments: Vec::new(),
        created_at: "2026-12-01T12:00:00.000Z".into(),
    };
    HistRun {
        run_id: id.into(),
        created_at: "2026-12-01T12:00:00.000Z".into(),
        prompt: Some(prompt.into()),
        rows: vec![row(1, "mock/alpha", "4"), row(2, "mock/beta", "Four.")],
    }
}

// ----- screens ---------------------------------------------------------------

#[test]
fn snapshot_first_run() {
    let mut app = app3();
    app.banner = vec![llm_quorum::tui::OFFLINE_BANNER.to_string()];
    app.update(Msg::Resize(120, 36));
    insta::assert_snapshot!("first_run", screen(&app));
}

#[test]
fn snapshot_three_panes_streaming() {
    let app = streaming_app();
    insta::assert_snapshot!("three_panes_streaming", screen(&app));
}

#[test]
fn snapshot_failed_pane() {
    let mut app = streaming_app();
    let mut c = completion("beta", "", 0);
    c.error = Some(EngineError::Network {
        message: "stream broke after 31 chunks".into(),
    });
    c.finish_reason = FinishReason::Error;
    ev(&mut app, 1200, 1, 1, StreamEvent::Failed(Box::new(c)));
    // The others go on.
    text(&mut app, 1300, 1, 2, "Two plus two is four.");
    let s = screen(&app);
    assert!(s.contains("mock/beta · failed"), "{s}");
    insta::assert_snapshot!("failed_pane", s);
}

#[test]
fn snapshot_help_overlay() {
    let mut app = app3();
    app.update(key(KeyCode::F(1)));
    insta::assert_snapshot!("help_overlay", screen(&app));
}

#[test]
fn snapshot_zoom() {
    let mut app = streaming_app();
    app.update(key(KeyCode::Tab));
    app.update(key(KeyCode::Tab));
    app.update(key(KeyCode::Char('z')));
    insta::assert_snapshot!("zoom", screen(&app));
}

#[test]
fn snapshot_narrow_terminal() {
    let mut app = streaming_app();
    app.update(Msg::Resize(60, 30));
    insta::assert_snapshot!("narrow_terminal", screen(&app));
}

#[test]
fn layout_puts_up_to_four_in_a_row_then_a_grid() {
    use llm_quorum::tui::layout::columns;
    assert_eq!(columns(3, 160), 3);
    assert_eq!(columns(4, 160), 4);
    assert_eq!(columns(6, 160), 3);
    assert_eq!(columns(5, 200), 3);
    assert_eq!(columns(3, 60), 2);
    assert_eq!(columns(2, 40), 1);
}

// ----- robustness --------------------------------------------------------------

#[test]
fn tiny_and_zero_areas_do_not_panic() {
    let mut app = streaming_app();
    for (w, h) in [(1, 1), (2, 1), (1, 5), (3, 3), (10, 4), (20, 2)] {
        app.update(Msg::Resize(w, h));
        draw(&app, w, h);
    }
    app.update(Msg::Resize(0, 0));
    let mut t = Terminal::new(TestBackend::new(1, 1)).unwrap();
    t.draw(|f| {
        let mut frame_area = f.area();
        frame_area.width = 0;
        view::draw_pane(f, &app, &app.panes[0], Rect::ZERO, true);
        view::draw_pane(f, &app, &app.panes[0], frame_area, false);
        view::render(&app, f);
    })
    .unwrap();
    // Overlays on a tiny screen.
    app.update(Msg::Resize(4, 3));
    app.update(key(KeyCode::F(1)));
    draw(&app, 4, 3);
    app.update(key(KeyCode::Esc));
    app.update(ctrl('p'));
    draw(&app, 4, 3);
}

#[test]
fn megabyte_lines_and_huge_answers_do_not_panic_and_stay_bounded() {
    let mut app = app_with(&["mock/alpha", "mock/beta"], (100, 30));
    let run = send(&mut app, "big")[0].0;
    let mb = "x".repeat(1 << 20);
    text(&mut app, 10, run, 0, &mb);
    text(&mut app, 11, run, 0, "\nend");
    let lines: String = (0..100_000).map(|i| format!("{i}\n")).collect();
    text(&mut app, 12, run, 1, &lines);
    let start = Instant::now();
    for _ in 0..10 {
        draw(&app, 100, 30);
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    // Resize while streaming re-wraps without panicking.
    app.update(Msg::Resize(37, 13));
    text(&mut app, 13, run, 1, "more ");
    draw(&app, 37, 13);
    let s = screen(&app);
    assert!(s.contains("mock/beta · streaming"), "{s}");
    app.update(Msg::Resize(100, 30));
    let s = screen(&app);
    assert!(s.contains("99999") && s.contains("more"), "{s}");
}

// ----- colours -------------------------------------------------------------------

#[test]
fn focused_pane_border_and_states_use_theme_colours() {
    let mut app = streaming_app();
    let mut c = completion("beta", "", 0);
    c.error = Some(EngineError::Network {
        message: "boom".into(),
    });
    ev(&mut app, 1200, 1, 1, StreamEvent::Failed(Box::new(c)));
    app.update(key(KeyCode::Tab));
    let t = draw(&app, 120, 36);
    let buf = t.backend().buffer();
    let theme = Theme::builtin();
    // Pane 0 is focused: its corner is drawn in the focus colour, pane 1's is not.
    assert_eq!(buf[(0, 0)].fg, theme.border_focused.fg.unwrap());
    assert_eq!(buf[(0, 0)].fg, Color::Cyan);
    let areas = app.areas();
    let p1 = areas.panes[1];
    assert_eq!(buf[(p1.x, p1.y)].fg, Color::DarkGray);
    // "failed" in pane 1's title is red.
    let row: String = (p1.x..p1.x + p1.width)
        .map(|x| buf[(x, p1.y)].symbol().to_string())
        .collect();
    let at = row.find("failed").expect("failed in title");
    let col = p1.x + row[..at].chars().count() as u16;
    assert_eq!(buf[(col, p1.y)].fg, Color::Red);
    // Heading and code in the markdown pane take their theme colours.
    let body: Vec<(u16, u16)> = (p1.y..p1.y + p1.height)
        .flat_map(|y| (p1.x..p1.x + p1.width).map(move |x| (x, y)))
        .collect();
    let find = |sym: &str| {
        body.iter()
            .find(|&&(x, y)| buf[(x, y)].symbol() == sym)
            .copied()
    };
    let (x, y) = find("╭").expect("code fence");
    assert_eq!(buf[(x, y)].fg, Color::DarkGray);
    let code_row: String = (p1.x..p1.x + p1.width)
        .map(|x| buf[(x, y + 1)].symbol().to_string())
        .collect();
    assert!(code_row.contains("print(2 + 2)"), "{code_row}");
    assert_eq!(buf[(x + 2, y + 1)].fg, Color::Green);
}

#[test]
fn no_color_theme_draws_without_colours() {
    let (t, _) = llm_quorum::tui::theme::load("dark", None, true);
    let app = streaming_app_themed(t);
    let term = draw(&app, 120, 36);
    let buf = term.backend().buffer();
    for y in 0..36 {
        for x in 0..120 {
            let c = &buf[(x, y)];
            // Transcript text was styled when it streamed; chrome follows the theme now.
            if y == 0 || y >= 30 {
                assert_eq!(c.fg, Color::Reset, "({x},{y}) {c:?}");
                assert_eq!(c.bg, Color::Reset, "({x},{y}) {c:?}");
            }
        }
    }
}

#[test]
fn tool_calls_and_cached_answers_show() {
    let mut app = app3();
    let run = send(&mut app, "weather in Paris?")[0].0;
    for (name, args) in [(Some("get_weather"), "{\"city\":"), (None, "\"Paris\"}")] {
        ev(
            &mut app,
            50,
            run,
            0,
            StreamEvent::ToolCallDelta {
                index: 0,
                id: Some("call_1".into()),
                name: name.map(String::from),
                arguments: args.into(),
            },
        );
    }
    let mut c = completion("beta", "It is sunny.", 4);
    c.cached = true;
    c.cost_source = CostSource::Cached;
    finished(&mut app, 60, run, 1, c);
    let s = screen(&app);
    assert!(s.contains("⚙ tool call get_weather"), "{s}");
    assert!(s.contains("{\"city\":\"Paris\"}"), "{s}");
    assert!(s.contains("mock/beta · cached"), "{s}");
    assert!(s.contains("It is sunny."), "{s}");
    // The ledger pane counts the hit as the ledger does: a request, no tokens billed.
    let beta = app
        .live_ledger()
        .into_iter()
        .find(|r| r.asked == "mock/beta")
        .expect("beta's row");
    assert_eq!((beta.tally.requests, beta.tally.cache_hits), (1, 1));
    assert_eq!(beta.tally.usage.output_tokens, 0, "{beta:?}");
}

#[test]
fn the_loop_runs_generic_over_backend_and_input() {
    use llm_quorum::tui::{run_loop, Effects, LoopOptions};
    use tokio::sync::mpsc;

    /// Answers every Start at once on the engine's event channel (events that name
    /// their run, as the engine's do), then asks the loop to quit once every target
    /// has ended.
    struct Fake {
        events: mpsc::Sender<TargetEvent>,
        started: Vec<Vec<String>>,
        replies: Vec<Msg>,
        left: usize,
    }
    impl Effects for Fake {
        fn run(&mut self, cmd: Cmd) {
            if let Cmd::Start { run, targets, .. } = cmd {
                let run_id = format!("run-engine-{run}");
                self.replies.push(Msg::RunStarted {
                    run,
                    run_id: run_id.clone(),
                    targets: (0..targets.len()).collect(),
                });
                for (i, t) in targets.iter().enumerate() {
                    let send = |event| {
                        self.events
                            .try_send(TargetEvent {
                                run_id: run_id.as_str().into(),
                                target: i,
                                event,
                            })
                            .unwrap()
                    };
                    send(StreamEvent::TextDelta(format!("answer from {t}")));
                    send(StreamEvent::Finished(Box::new(completion(
                        t,
                        &format!("answer from {t}"),
                        3,
                    ))));
                }
                self.left = targets.len();
                self.started.push(targets);
            }
        }
        fn seen(&mut self, msg: &Msg) {
            if let Msg::Engine { event, .. } = msg {
                assert!(event.run_id.starts_with("run-engine-"));
                if event.event.is_final() {
                    self.left -= 1;
                    if self.left == 0 {
                        self.replies.push(Msg::Quit);
                    }
                }
            }
        }
        fn replies(&mut self) -> Vec<Msg> {
            std::mem::take(&mut self.replies)
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (_tx, rx) = mpsc::channel(64);
        let (etx, erx) = mpsc::channel(64);
        let mut fx = Fake {
            events: etx,
            started: Vec::new(),
            replies: Vec::new(),
            left: 0,
        };
        let mut app = app3();
        let keys: Vec<std::io::Result<crossterm::event::Event>> = "hi\r"
            .chars()
            .map(|c| {
                let code = if c == '\r' {
                    KeyCode::Enter
                } else {
                    KeyCode::Char(c)
                };
                Ok(crossterm::event::Event::Key(KeyEvent::new(
                    code,
                    KeyModifiers::NONE,
                )))
            })
            .collect();
        let mut term = Terminal::new(TestBackend::new(120, 36)).unwrap();
        let report = run_loop(
            &mut term,
            futures_util::stream::iter(keys),
            rx,
            erx,
            &mut app,
            &mut fx,
            LoopOptions::default(),
        )
        .await
        .unwrap();
        assert!(app.quit);
        assert!(report.frames >= 1);
        assert_eq!(
            fx.started,
            [vec!["mock/alpha", "mock/beta", "mock/thinker"]]
        );
        assert!(app.panes.iter().all(|p| p.state == PaneState::Done));
        assert_eq!(
            app.live_ledger()
                .iter()
                .map(|r| r.tally.requests)
                .sum::<u64>(),
            3
        );
        // The run closed by itself when its last target ended.
        assert!(app.runs.is_empty(), "{:?}", app.runs);
        assert_eq!(app.run_key("run-engine-1"), None);
    });
}

#[test]
fn the_quit_key_works_from_every_overlay() {
    for open in [ctrl('p'), ctrl('o'), key(KeyCode::F(1))] {
        let mut app = app3();
        app.update(open);
        assert!(!matches!(app.overlay, Overlay::None));
        app.update(ctrl('q'));
        assert!(app.quit);
    }
}

#[test]
fn zoom_re_wraps_only_the_zoomed_pane() {
    let mut app = streaming_app();
    let before: Vec<usize> = app.panes.iter().map(|p| p.doc.width()).collect();
    app.update(key(KeyCode::Tab));
    app.update(key(KeyCode::Char('z')));
    assert_eq!(app.zoom, Some(0));
    assert!(app.panes[0].doc.width() > before[0]);
    assert_eq!(app.panes[1].doc.width(), before[1]);
    assert_eq!(app.panes[2].doc.width(), before[2]);
    app.update(key(KeyCode::Char('z')));
    let after: Vec<usize> = app.panes.iter().map(|p| p.doc.width()).collect();
    assert_eq!(before, after);
}

#[test]
fn big_transcripts_re_wrap_on_threads_with_the_same_result() {
    let mut app = app_with(&["mock/alpha", "mock/beta", "mock/gamma"], (150, 40));
    let run = send(&mut app, "big")[0].0;
    let body: String = (0..40_000)
        .map(|i| {
            if i % 12 == 11 {
                "word **x**\n"
            } else {
                "word "
            }
        })
        .collect();
    for t in 0..3 {
        text(&mut app, 10, run, t, &body);
    }
    app.update(Msg::Resize(97, 40));
    let mut single = llm_quorum::tui::text::Doc::new(app.styles);
    single.set_width(app.panes[1].doc.width());
    single.add(llm_quorum::tui::text::BlockKind::User, "big");
    single.add(llm_quorum::tui::text::BlockKind::Answer, &body);
    let n = single.total_lines(false);
    assert_eq!(app.panes[1].doc.total_lines(false), n);
    let a: Vec<String> = app.panes[1]
        .doc
        .visible(n - 30, 30, false)
        .iter()
        .map(|l| l.to_string())
        .collect();
    let b: Vec<String> = single
        .visible(n - 30, 30, false)
        .iter()
        .map(|l| l.to_string())
        .collect();
    assert_eq!(a, b);
}

#[test]
fn consensus_view_summarises_finished_answers() {
    let mut app = app3();
    let run = send(&mut app, "What is 2+2?")[0].0;
    finished(
        &mut app,
        100,
        run,
        0,
        completion("alpha", "The answer is 4.", 5),
    );
    finished(&mut app, 100, run, 1, completion("beta", "It is 4.", 4));
    finished(&mut app, 100, run, 2, completion("thinker", "5", 1));
    app.update(key(KeyCode::Tab));
    app.update(key(KeyCode::Char('v')));
    assert!(matches!(app.overlay, Overlay::Consensus));
    let c = &app.cons.report.as_ref().expect("report").consensus;
    assert_eq!(c.answers.len(), 3);
    assert!(c.headline().contains("2 of 3 finished agree on \"4\""));
    assert_eq!(c.dissenters, vec!["mock/thinker".to_string()]);
    app.update(key(KeyCode::Char('2')));
    let s = screen(&app);
    assert!(s.contains("mock/thinker"), "{s}");
}

mod wrap_props {
    use llm_quorum::tui::text::{BlockKind, Doc, TextStyles};
    use proptest::prelude::*;
    use unicode_width::UnicodeWidthStr;

    fn lines(d: &Doc) -> Vec<String> {
        let n = d.total_lines(true);
        d.visible(0, n, true)
            .iter()
            .map(|l| l.to_string())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Streaming in any chunks wraps exactly like the whole text, and no
        /// row is wider than the pane (wide characters aside).
        #[test]
        fn chunked_equals_whole_and_fits(
            text in "([a-z]{1,12}|[ ]{1,3}|\n|\\*\\*|`|# |- |```|日本|é){0,80}",
            width in 1usize..40,
            cuts in proptest::collection::vec(0usize..400, 0..12),
        ) {
            let st = TextStyles::default();
            let mut whole = Doc::new(st);
            whole.set_width(width);
            whole.add(BlockKind::Answer, &text);
            let mut parts = Doc::new(st);
            parts.set_width(width);
            let b = parts.add(BlockKind::Answer, "");
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| *c < text.len() && text.is_char_boundary(*c)).collect();
            cuts.sort_unstable();
            let mut at = 0;
            for c in cuts {
                parts.append(b, &text[at..c]);
                at = c;
            }
            parts.append(b, &text[at..]);
            prop_assert_eq!(lines(&whole), lines(&parts));
            for l in lines(&whole) {
                prop_assert!(l.width() <= width.max(2), "{l:?} wider than {width}");
            }
            // A resize gives what wrapping at the new width from scratch gives.
            let mut fresh = Doc::new(st);
            fresh.set_width(width + 7);
            fresh.add(BlockKind::Answer, &text);
            whole.set_width(width + 7);
            prop_assert_eq!(lines(&whole), lines(&fresh));
        }
    }
}

#[test]
fn live_counts_take_the_larger_of_reported_and_counted_until_final() {
    // Setup: Anthropic reports `output_tokens: 1` at message_start and the
    // real count only at the end.
    let mut app = app_with(&["anthropic/claude-sonnet-4-5"], (120, 36));
    app.pricing = Some(llm_quorum::engine::cost::Pricing::builtin());
    let run = send(&mut app, "Explain tides.")[0].0;
    ev(
        &mut app,
        10,
        run,
        0,
        StreamEvent::Started {
            provider: "anthropic".into(),
            model: "claude-sonnet-4-5".into(),
            attempt: 1,
        },
    );
    ev(
        &mut app,
        200,
        run,
        0,
        StreamEvent::Usage(Usage {
            input_tokens: 21,
            output_tokens: 1,
            ..Default::default()
        }),
    );
    // Exec: 60 words over three seconds.
    for i in 0..60u64 {
        text(&mut app, 300 + i * 50, run, 0, "tidal words ");
    }
    app.now = at(3300);
    app.update(Msg::Tick);
    // Check: a running count above 1, marked ~, a rate, and an estimated cost.
    let line = view::stats_line(&app, &app.panes[0], app.now).to_string();
    let (n, exact) = app.panes[0].stats.out_tokens();
    assert!(n > 50 && !exact, "{n} {exact}");
    assert!(line.contains(&format!("~{n} tok")), "{line}");
    assert!(line.contains("tok/s"), "{line}");
    assert!(line.contains(" ~") && !line.contains('✓'), "{line}");
    let ledger = app.live_ledger();
    assert_eq!(ledger[0].tally.usage.output_tokens, n);
    assert_eq!(ledger[0].tally.mark(), "~");
    // The final usage replaces the estimate, exact and priced.
    let mut c = completion("claude-sonnet-4-5", "tidal words", 130);
    c.provider = "anthropic".into();
    c.cost_usd = Some(0.002);
    finished(&mut app, 3400, run, 0, c);
    let line = view::stats_line(&app, &app.panes[0], app.now).to_string();
    assert!(line.contains(" 130 tok") && line.contains('✓'), "{line}");
}

#[test]
fn export_holds_every_turn_and_the_continue_and_stays_structurally_safe() {
    // Setup: nothing sent yet: nothing to export, and nothing written.
    let mut app = app_with(&["mock/alpha", "mock/beta"], (120, 36));
    let cmds = app.update(ctrl('e'));
    assert!(cmds.is_empty(), "{cmds:?}");
    assert!(screen(&app).contains("nothing to export yet"));
    assert!(app
        .export_doc()
        .write(std::path::Path::new("/nonexistent"), "s", "t")
        .unwrap_err()
        .contains("nothing to export"));

    // Exec: turn 1, beta's answer has its own headings and a code fence.
    let run = send(&mut app, "First question?")[0].0;
    let tricky = "## Heading of beta\n\n```rust\nfn main() {}\n```\n";
    finished(
        &mut app,
        500,
        run,
        0,
        completion("alpha", "First answer.", 3),
    );
    finished(&mut app, 600, run, 1, completion("beta", tricky, 9));
    // Continue with beta's answer, then turn 2.
    app.update(key(KeyCode::Tab));
    app.update(key(KeyCode::Tab));
    app.update(key(KeyCode::Char('c')));
    app.update(key(KeyCode::Esc));
    let run2 = send(&mut app, "Second question?")[0].0;
    finished(
        &mut app,
        900,
        run2,
        0,
        completion("alpha", "Second answer.", 3),
    );

    // Check: both turns, in order, with the continue marked.
    let doc = app.export_doc();
    assert_eq!(doc.turns.len(), 2);
    assert_eq!(doc.turns[0].prompt, "First question?");
    assert_eq!(doc.turns[0].answers[1].text, tricky);
    assert_eq!(doc.turns[1].prompt, "Second question?");
    assert_eq!(doc.turns[1].continued_from.as_deref(), Some("mock/beta"));
    let md = doc.to_markdown("t");
    let a1 = md.find("First answer.").unwrap();
    let a2 = md.find("Second answer.").unwrap();
    assert!(a1 < a2, "{md}");
    assert!(md.contains("Continues from mock/beta's answer"), "{md}");
    // The answer's heading and fence sit inside a longer fence: the only
    // level-2 headings at line start are the exporter's own.
    assert!(md.contains("````markdown\n## Heading of beta"), "{md}");
    let mut in_fence: Option<usize> = None;
    let mut h2 = Vec::new();
    for l in md.lines() {
        let ticks = l.chars().take_while(|c| *c == '`').count();
        match in_fence {
            Some(n) if ticks == n && l.trim() == "`".repeat(n) => in_fence = None,
            None if ticks >= 3 => in_fence = Some(ticks),
            None if l.starts_with("## ") => h2.push(l.to_string()),
            _ => {}
        }
    }
    assert_eq!(h2, ["## Turn 1", "## Turn 2", "## Ledger"], "{md}");
    let js = doc.to_json("t");
    assert_eq!(js["turns"].as_array().unwrap().len(), 2);
    assert_eq!(js["prompt"], "Second question?");
}

/// Four panes in every header situation: retrying with a long reason, a
/// fallback, streaming, done.
fn header_app(size: (u16, u16)) -> App {
    let mut app = app_with(
        &[
            "anthropic/claude-sonnet-4-5",
            "openai/gpt-4o-mini",
            "gemini/gemini-2.5-flash",
            "mock/alpha",
        ],
        size,
    );
    app.pricing = Some(llm_quorum::engine::cost::Pricing::builtin());
    let run = send(&mut app, "What is 2+2?")[0].0;
    ev(
        &mut app,
        100,
        run,
        0,
        StreamEvent::Retrying {
            attempt: 2,
            max_attempts: 3,
            wait: Duration::from_millis(1000),
            reason: "429 Too Many Requests, Retry-After".into(),
        },
    );
    ev(
        &mut app,
        100,
        run,
        1,
        StreamEvent::FellBack {
            from: "openai/gpt-4o-mini".into(),
            to: "openrouter/openai/gpt-4o".into(),
            reason: "503".into(),
        },
    );
    ev(
        &mut app,
        120,
        run,
        1,
        StreamEvent::Started {
            provider: "openrouter".into(),
            model: "openai/gpt-4o".into(),
            attempt: 1,
        },
    );
    text(&mut app, 300, run, 1, "Two plus two is four, ");
    ev(
        &mut app,
        120,
        run,
        2,
        StreamEvent::Started {
            provider: "gemini".into(),
            model: "gemini-2.5-flash".into(),
            attempt: 1,
        },
    );
    for i in 0..20 {
        text(&mut app, 300 + i * 20, run, 2, "four ");
    }
    finished(&mut app, 900, run, 3, completion("alpha", "4", 2));
    app.now = at(100);
    app.update(Msg::Tick);
    app
}

#[test]
fn pane_headers_keep_state_and_cost_whole_at_every_width() {
    for (w, h) in [(80, 24), (120, 36), (160, 40), (180, 45)] {
        let mut app = header_app((w, h));
        app.update(Msg::Resize(w, h));
        for focus in [false, true] {
            if focus {
                app.update(key(KeyCode::Tab));
            }
            let s = screen(&app);
            let retry = s.contains("retrying 2/3 in 1.0 s") || s.contains("retry 2/3 1.0s");
            assert!(retry, "the retry state was cut at {w}x{h}:\n{s}");
            assert!(s.matches("streaming ").count() >= 2, "{w}x{h}:\n{s}");
            assert!(s.contains("· done "), "{w}x{h}:\n{s}");
            // Every pane shows a whole cost figure.
            let costs = s.matches(" ~").count() + s.matches(" ✓").count() + s.matches("$?").count();
            assert!(costs >= 4, "a cost was cut at {w}x{h}:\n{s}");
        }
    }
}

#[test]
fn snapshot_pane_headers_80x24() {
    let app = header_app((80, 24));
    insta::assert_snapshot!("headers_80x24", screen(&app));
}

#[test]
fn snapshot_pane_headers_160x40() {
    let app = header_app((160, 40));
    insta::assert_snapshot!("headers_160x40", screen(&app));
}

#[test]
fn snapshot_pane_headers_180x45_focused() {
    let mut app = header_app((180, 45));
    app.update(key(KeyCode::Tab));
    insta::assert_snapshot!("headers_180x45_focused", screen(&app));
}

/// The streaming app at another size, with the offline banner of a first run.
fn small_app(size: (u16, u16)) -> App {
    let mut app = streaming_app();
    app.banner = vec![llm_quorum::tui::OFFLINE_BANNER.to_string()];
    app.update(Msg::Resize(size.0, size.1));
    app
}

#[test]
fn small_terminals_give_the_panes_room_and_the_banner_a_way_out() {
    let mut app = small_app((80, 24));
    let a = app.areas();
    // Three panes side by side, each with a real body.
    assert_eq!(a.panes.iter().map(|r| r.y).collect::<Vec<_>>().len(), 3);
    assert!(a.panes.iter().all(|r| r.y == a.panes[0].y), "{:?}", a.panes);
    assert!(
        a.panes.iter().all(|r| layout::pane_body(*r).height >= 10),
        "{:?}",
        a.panes
    );
    // The banner takes one line and says how to hide it; the ledger one line.
    assert_eq!(a.banner.height, 1);
    assert_eq!(a.ledger.height, 1);
    let s = screen(&app);
    assert!(s.contains("Esc hides this"), "{s}");
    assert!(s.contains("F1 help"), "{s}");
    // Esc hides the banner; Shift+Tab opens the ledger in full.
    app.update(key(KeyCode::Esc));
    assert!(app.banner.is_empty());
    app.update(key(KeyCode::BackTab));
    assert_eq!(app.focus, Focus::Ledger);
    assert!(app.areas().ledger.height >= 5);
    // The status bar keeps F1 at every width.
    for w in [40u16, 60, 80, 100, 119] {
        app.update(Msg::Resize(w, 24));
        let t = draw(&app, w, 24);
        let last = t.backend().buffer().content()[(w as usize) * 23..]
            .iter()
            .map(|c| c.symbol())
            .collect::<String>();
        assert!(last.contains("F1 help"), "{w}: {last}");
    }
}

#[test]
fn the_help_scrolls_on_a_short_terminal() {
    let mut app = small_app((80, 24));
    app.update(key(KeyCode::F(1)));
    let s = screen(&app);
    assert!(s.contains("more below"), "{s}");
    assert!(!s.contains("any other key closes"), "{s}");
    for _ in 0..40 {
        app.update(key(KeyCode::Char('j')));
    }
    assert!(
        matches!(app.overlay, Overlay::Help(_)),
        "j scrolls, not closes"
    );
    let s = screen(&app);
    assert!(s.contains("any other key closes"), "{s}");
    assert!(s.contains("above"), "{s}");
    app.update(key(KeyCode::Char('q')));
    assert!(matches!(app.overlay, Overlay::None));
}

#[test]
fn snapshot_small_80x24() {
    insta::assert_snapshot!("small_80x24", screen(&small_app((80, 24))));
}

#[test]
fn snapshot_large_180x45() {
    insta::assert_snapshot!("large_180x45", screen(&small_app((180, 45))));
}

#[test]
fn snapshot_help_80x24_scrolled() {
    let mut app = small_app((80, 24));
    app.update(key(KeyCode::F(1)));
    for _ in 0..5 {
        app.update(key(KeyCode::Char('j')));
    }
    insta::assert_snapshot!("help_80x24_scrolled", screen(&app));
}

/// A pasted 5,000-word prompt.
fn long_prompt() -> String {
    let para =
        "The committee reviewed the quarterly figures and asked for a summary of the risks. ";
    let mut s = String::new();
    for i in 0..350 {
        s.push_str(para);
        if i % 40 == 39 {
            s.push('\n');
        }
    }
    s
}

#[test]
fn long_prompts_wrap_in_the_editor_and_fold_in_the_panes() {
    for (w, h) in [(80u16, 24u16), (180, 45)] {
        let mut app = app_with(&["mock/alpha", "mock/beta", "mock/thinker"], (w, h));
        let prompt = long_prompt();
        assert!(prompt.split_whitespace().count() > 4500);
        app.update(Msg::Paste(prompt.clone()));
        // The editor grows to its cap and wraps: no line runs off the screen,
        // and the end of the text (where the cursor is) is in view.
        let a = app.areas();
        assert_eq!(a.editor.height, 10, "{w}x{h}");
        let s = screen(&app);
        assert!(s.contains("summary of the risks."), "{s}");
        // Send: every pane echoes a few lines and says how much more there is.
        let starts = app.update(key(KeyCode::Enter));
        let sent = starts
            .iter()
            .find_map(|c| match c {
                Cmd::Start { request, .. } => Some(request.messages[0].content.clone()),
                _ => None,
            })
            .expect("sent");
        assert_eq!(sent, prompt, "the whole prompt is sent");
        for p in &app.panes {
            let echo = p.doc.blocks()[0].raw();
            assert!(echo.chars().count() < 700, "{}", echo.len());
            assert!(echo.contains("prompt folded"), "{echo}");
            assert!(
                p.doc.total_lines(false) < 40,
                "{}",
                p.doc.total_lines(false)
            );
        }
        let s = screen(&app);
        assert!(s.contains("prompt folded"), "{s}");
        // The export keeps the prompt whole.
        assert_eq!(app.export_doc().turns[0].prompt, prompt);
    }
}

#[test]
fn snapshot_long_prompt_80x24() {
    let mut app = app_with(&["mock/alpha", "mock/beta", "mock/thinker"], (80, 24));
    app.update(Msg::Paste(long_prompt()));
    app.update(key(KeyCode::Enter));
    app.update(Msg::Paste(
        "And a follow-up that wraps in the editor because it is long enough".into(),
    ));
    insta::assert_snapshot!("long_prompt_80x24", screen(&app));
}

#[test]
fn snapshot_long_prompt_180x45() {
    let mut app = app_with(&["mock/alpha", "mock/beta", "mock/thinker"], (180, 45));
    app.update(Msg::Paste(long_prompt()));
    insta::assert_snapshot!("long_prompt_editor_180x45", screen(&app));
    app.update(key(KeyCode::Enter));
    insta::assert_snapshot!("long_prompt_sent_180x45", screen(&app));
}

#[test]
fn sends_carry_a_sane_output_limit_and_show_the_expected_cost_beside_the_bound() {
    // Setup: one priced target; a [models] limit for another.
    let mut app = app_with(
        &["anthropic/claude-sonnet-4-5", "openai/gpt-4o-mini"],
        (120, 36),
    );
    app.pricing = Some(llm_quorum::engine::cost::Pricing::builtin());
    app.model_max_tokens
        .insert("openai/gpt-4o-mini".into(), 1000);
    // Exec: type; the projection asked for carries each target's limit.
    let cmds = type_text(&mut app, "What is the capital of France? One word.");
    let (gen, groups) = cmds
        .iter()
        .filter_map(|c| match c {
            Cmd::Project { gen, groups, .. } => Some((*gen, groups.clone())),
            _ => None,
        })
        .next_back()
        .expect("a projection is asked for");
    let limits: Vec<(Option<u32>, Vec<String>)> = groups
        .iter()
        .map(|(r, t)| (r.max_tokens, t.clone()))
        .collect();
    assert_eq!(
        limits,
        [
            (Some(4096), vec!["anthropic/claude-sonnet-4-5".to_string()]),
            (Some(1000), vec!["openai/gpt-4o-mini".to_string()]),
        ]
    );
    // The engine's bound for 21 prompt tokens and 4096 output tokens.
    let p = Projection {
        targets: vec![TargetProjection {
            target: "anthropic/claude-sonnet-4-5".into(),
            provider: "anthropic".into(),
            model: "claude-sonnet-4-5".into(),
            input_tokens: 21,
            input_exact: false,
            max_output_tokens: Some(4096),
            bound_usd: Some(0.0615),
            price_ref: None,
        }],
    };
    let expected = app.expected_cost(&p).expect("priced");
    assert!(expected > 0.0 && expected < 0.0615 / 5.0, "{expected}");
    app.update(Msg::Projection { gen, result: Ok(p) });
    let s = screen(&app);
    assert!(s.contains("next send ~$0.006"), "{s}");
    assert!(s.contains("(≤ $0.062)") || s.contains("(≤ $0.061"), "{s}");
    // The send carries the limits too.
    let starts: Vec<Option<u32>> = app
        .update(key(KeyCode::Enter))
        .iter()
        .filter_map(|c| match c {
            Cmd::Start { request, .. } => Some(request.max_tokens),
            _ => None,
        })
        .collect();
    assert_eq!(starts, [Some(4096), Some(1000)]);
}

#[test]
fn the_budget_question_keeps_its_line_breaks() {
    let mut app = app3();
    app.budget_set = true;
    type_text(&mut app, "expensive");
    app.update(key(KeyCode::Enter));
    app.update(Msg::BudgetChecked(Err(
        "this run may cost up to $0.97; with $0.10 spent, the session budget of $1.00 would be exceeded".into(),
    )));
    let s = screen(&app);
    let exceeded = s
        .lines()
        .position(|l| l.contains("would be exceeded"))
        .expect(&s);
    let ask = s
        .lines()
        .position(|l| l.contains("Send anyway?"))
        .expect(&s);
    assert!(ask > exceeded + 1, "{s}");
    assert!(!s.contains("exceededSend"), "{s}");
}

#[test]
fn smaller_things_hints_keys_cancelled_and_the_ledger_total() {
    // Status-bar hints follow the focus: in the editor, letters type, so
    // blind and repeat are offered by their Ctrl keys only.
    let mut app = app_with(&["mock/alpha", "mock/beta"], (200, 36));
    let s = screen(&app);
    let status = s.lines().last().unwrap().to_string();
    assert!(
        status.contains("Ctrl+B blind") && status.contains("Ctrl+N repeat"),
        "{status}"
    );
    assert!(
        !status.contains(" b blind") && !status.contains(" n repeat"),
        "{status}"
    );
    app.update(key(KeyCode::Tab));
    let s = screen(&app);
    let status = s.lines().last().unwrap().to_string();
    assert!(
        status.contains("b blind") && status.contains("z zoom"),
        "{status}"
    );

    // The picker marks targets whose provider has no key.
    app.keyless = vec!["openai".into()];
    app.update(ctrl('p'));
    let s = screen(&app);
    let line = s
        .lines()
        .find(|l| l.contains("openai/gpt-4o-mini"))
        .unwrap();
    assert!(line.contains("no key"), "{line}");
    let line = s.lines().find(|l| l.contains("mock/gamma")).unwrap();
    assert!(!line.contains("no key"), "{line}");
    app.update(key(KeyCode::Esc));

    // Cancelled is not failed; the total's cost fits its column.
    let mut app = app_with(
        &["mock/alpha", "mock/beta", "openai/gpt-4o-mini"],
        (100, 36),
    );
    let run = send(&mut app, "q")[0].0;
    let mut a = completion("alpha", "4", 2);
    a.cost_usd = Some(0.00042);
    finished(&mut app, 100, run, 0, a);
    let c = Completion {
        error: Some(EngineError::Cancelled),
        finish_reason: FinishReason::Cancelled,
        ..completion("beta", "", 0)
    };
    ev(&mut app, 200, run, 1, StreamEvent::Failed(Box::new(c)));
    let mut u = completion("gpt-4o-mini", "4", 2);
    u.provider = "openai".into();
    u.cost_usd = None;
    u.cost_source = CostSource::Unknown;
    finished(&mut app, 300, run, 2, u);
    let rows = app.live_ledger();
    assert_eq!(rows[1].tally.errors, 0);
    assert_eq!(rows[1].tally.cancelled, 1);
    let s = screen(&app);
    let total = s.lines().find(|l| l.contains("│total")).expect(&s);
    assert!(total.contains(" $0.00042+? "), "{total}");
    assert!(!total.contains("0$"), "{total}");
    let fields: Vec<&str> = total
        .trim_matches(|c| c == '│' || c == '"')
        .split_whitespace()
        .collect();
    assert_eq!(fields[fields.len() - 2..], ["3", "0"], "{total}");
}
