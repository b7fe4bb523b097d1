//! The workbench's per-run settings, `@path` attachments and per-pane verdicts:
//! `App::update` state tests (the settings reach the next send as the CLI's
//! options do, per-target overrides split the run, `@path` attaches and Tab
//! completes it) and insta snapshots of the panel and the verdicts at 80×24 and
//! 160×40 on a TestBackend.

mod support;

use std::path::PathBuf;

use crossterm::event::KeyCode;
use llm_quorum::engine::event::SchemaError;
use llm_quorum::engine::options::RequestOptions;
use llm_quorum::engine::{
    ChatRequest, Completion, CostSource, Role, StreamEvent, TargetEvent, ToolCall, Usage,
};
use llm_quorum::tui::app::Overlay;
use llm_quorum::tui::{App, Cmd, Msg};
use support::tui::{app_with, at, key, screen};

fn typed(app: &mut App, s: &str) {
    for c in s.chars() {
        app.update(key(KeyCode::Char(c)));
    }
}

/// Open the settings and go to row `row` (0 is the scope row).
fn to_row(app: &mut App, row: usize) {
    if !matches!(app.overlay, Overlay::Settings) {
        app.update(key(KeyCode::F(2)));
    }
    while app.settings.row != row {
        app.update(key(KeyCode::Down));
    }
}

/// Edit text row `row` to `text` in the layer shown.
fn set_text(app: &mut App, row: usize, text: &str) {
    to_row(app, row);
    app.update(key(KeyCode::Enter));
    // Clear what was there.
    for _ in 0..64 {
        app.update(key(KeyCode::Backspace));
    }
    typed(app, text);
    app.update(key(KeyCode::Enter));
}

const SYSTEM: usize = 1;
const REASONING: usize = 2;
const JSON_MODE: usize = 4;
const SCHEMA: usize = 5;
const TOOLS: usize = 6;
const TEMPERATURE: usize = 7;
const MAX_TOKENS: usize = 8;

/// Send `prompt`; the Start commands as (targets, request, options).
fn send(app: &mut App, prompt: &str) -> Vec<(Vec<String>, ChatRequest, RequestOptions)> {
    typed(app, prompt);
    app.update(key(KeyCode::Enter))
        .into_iter()
        .filter_map(|c| match c {
            Cmd::Start {
                targets,
                request,
                options,
                ..
            } => Some((targets, request, *options)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_settings_reach_the_next_send_as_the_clis_options_do() {
    let mut app = app_with(&["mock/alpha", "mock/beta"], (120, 36));
    set_text(&mut app, SYSTEM, "Answer in French.");
    to_row(&mut app, REASONING);
    for _ in 0..5 {
        // off, minimal, low, medium, high
        app.update(key(KeyCode::Right));
    }
    set_text(&mut app, SCHEMA, "answer.schema.json");
    set_text(&mut app, TOOLS, "tools.json");
    set_text(&mut app, TEMPERATURE, "0.3");
    set_text(&mut app, MAX_TOKENS, "700");
    app.update(key(KeyCode::Esc));
    assert!(matches!(app.overlay, Overlay::None));
    // The status bar says what the next send carries.
    let s = screen(&app);
    assert!(
        s.contains("next: system · reasoning high · schema · tools · temp 0.3 · max 700"),
        "{s}"
    );

    let starts = send(&mut app, "What is 2+2?");
    assert_eq!(
        starts.len(),
        1,
        "one run: every target has the same settings"
    );
    let (targets, req, opts) = &starts[0];
    assert_eq!(targets, &["mock/alpha", "mock/beta"]);
    assert_eq!(req.messages[0].role, Role::System);
    assert_eq!(req.messages[0].content, "Answer in French.");
    assert_eq!(req.messages[1].content, "What is 2+2?");
    assert_eq!(req.temperature, Some(0.3));
    assert_eq!(req.max_tokens, Some(700));
    assert_eq!(
        opts,
        &RequestOptions {
            reasoning: Some("high".into()),
            schema: Some(PathBuf::from("answer.schema.json")),
            tools: Some(PathBuf::from("tools.json")),
            ..Default::default()
        }
    );
}

#[test]
fn a_per_target_override_splits_the_run_and_the_rest_inherit() {
    let mut app = app_with(&["mock/alpha", "mock/beta", "mock/thinker"], (120, 36));
    set_text(&mut app, TEMPERATURE, "0.2");
    // Scope: → every target -> mock/alpha -> mock/beta.
    to_row(&mut app, 0);
    app.update(key(KeyCode::Right));
    app.update(key(KeyCode::Right));
    assert_eq!(app.settings.scope.as_deref(), Some("mock/beta"));
    set_text(&mut app, TEMPERATURE, "1.1");
    to_row(&mut app, JSON_MODE);
    app.update(key(KeyCode::Enter));
    app.update(key(KeyCode::Esc));

    let starts = send(&mut app, "Name a colour.");
    assert_eq!(starts.len(), 2, "{starts:?}");
    let by: Vec<(Vec<String>, Option<f32>, bool)> = starts
        .iter()
        .map(|(t, r, o)| (t.clone(), r.temperature, o.json_mode))
        .collect();
    assert!(by.contains(&(
        vec!["mock/alpha".into(), "mock/thinker".into()],
        Some(0.2),
        false
    )));
    assert!(by.contains(&(vec!["mock/beta".into()], Some(1.1), true)));
}

#[test]
fn a_bad_number_is_refused_in_the_panel_and_not_stored() {
    let mut app = app_with(&["mock/alpha"], (100, 30));
    set_text(&mut app, TEMPERATURE, "hot");
    assert!(app.settings.editing.is_some(), "the edit stays open");
    let s = screen(&app);
    assert!(
        s.contains("temperature \"hot\": a number from 0 to 2"),
        "{s}"
    );
    app.update(key(KeyCode::Esc));
    assert_eq!(app.settings.all.temperature, None);
}

#[test]
fn at_paths_attach_files_and_images_like_dash_f_and_dash_i() {
    let mut app = app_with(&["mock/alpha"], (100, 30));
    let starts = send(
        &mut app,
        "Compare @notes.md with @shots/before.png, mail me@x.org",
    );
    let (_, req, opts) = &starts[0];
    assert_eq!(opts.files, [PathBuf::from("notes.md")]);
    assert_eq!(opts.images, [PathBuf::from("shots/before.png")]);
    // The prompt is sent as typed.
    assert!(req.messages[0].content.contains("@notes.md"));
}

#[test]
fn tab_after_an_at_path_completes_it_from_the_directory_listing() {
    let mut app = app_with(&["mock/alpha"], (100, 30));
    typed(&mut app, "look at @shots/be");
    let cmds = app.update(key(KeyCode::Tab));
    let prefix = cmds
        .iter()
        .find_map(|c| match c {
            Cmd::ListPath { prefix } => Some(prefix.clone()),
            _ => None,
        })
        .expect("Tab asks for the directory listing");
    assert_eq!(prefix, "shots/be");
    assert!(matches!(app.focus, llm_quorum::tui::app::Focus::Editor));
    app.update(Msg::PathEntries {
        prefix,
        entries: Ok(vec!["before.png".into(), "behind.png".into(), "x/".into()]),
    });
    assert_eq!(app.prompt_text(), "look at @shots/beh".replace("beh", "be"));
    // Only one match left once more is typed: it completes in full.
    typed(&mut app, "f");
    let cmds = app.update(key(KeyCode::Tab));
    assert!(cmds.iter().any(|c| matches!(c, Cmd::ListPath { .. })));
    app.update(Msg::PathEntries {
        prefix: "shots/bef".into(),
        entries: Ok(vec!["before.png".into(), "behind.png".into()]),
    });
    assert_eq!(app.prompt_text(), "look at @shots/before.png");
    // Without an `@` word, Tab still moves the focus.
    let mut app = app_with(&["mock/alpha"], (100, 30));
    typed(&mut app, "plain");
    let cmds = app.update(key(KeyCode::Tab));
    assert!(cmds.iter().all(|c| !matches!(c, Cmd::ListPath { .. })));
    assert!(!matches!(app.focus, llm_quorum::tui::app::Focus::Editor));
}

// ----- verdicts --------------------------------------------------------------

fn done(target: &str, text: &str) -> Completion {
    Completion {
        provider: "mock".into(),
        model: target.trim_start_matches("mock/").into(),
        text: text.into(),
        usage: Usage {
            input_tokens: 30,
            output_tokens: 12,
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

/// Two panes answered under a schema (one valid, one not) and a third that
/// called tools (one call valid, one not).
fn verdicts(size: (u16, u16)) -> App {
    let mut app = app_with(&["mock/alpha", "mock/contrarian", "mock/beta"], size);
    set_text(&mut app, SCHEMA, "answer.schema.json");
    app.update(key(KeyCode::Esc));
    let run = match &send(&mut app, "Give 2+2 with its unit.")[..] {
        [_] => 1,
        other => panic!("{other:?}"),
    };
    let mut alpha = done("mock/alpha", r#"{"result": 4, "unit": "apples"}"#);
    alpha.schema_valid = Some(true);
    let mut contra = done("mock/contrarian", r#"{"result": "four", "unit": "apples"}"#);
    contra.schema_valid = Some(false);
    contra.schema_error = Some(SchemaError {
        path: "/result".into(),
        message: "\"four\" is not of type \"number\"".into(),
    });
    let mut beta = done("mock/beta", "");
    beta.tool_calls = vec![
        ToolCall {
            id: "c1".into(),
            name: "add".into(),
            arguments: r#"{"a":2,"b":2}"#.into(),
            valid: Some(true),
            invalid_reason: None,
        },
        ToolCall {
            id: "c2".into(),
            name: "unit".into(),
            arguments: r#"{"name":7}"#.into(),
            valid: Some(false),
            invalid_reason: Some("/name: 7 is not of type \"string\"".into()),
        },
    ];
    for (i, c) in [alpha, contra, beta].into_iter().enumerate() {
        app.now = at(100);
        app.update(Msg::Engine {
            run,
            event: TargetEvent {
                run_id: "r".into(),
                target: i,
                event: StreamEvent::Started {
                    provider: "mock".into(),
                    model: c.model.clone(),
                    attempt: 1,
                },
            },
        });
        app.now = at(900);
        app.update(Msg::Engine {
            run,
            event: TargetEvent {
                run_id: "r".into(),
                target: i,
                event: StreamEvent::Finished(Box::new(c)),
            },
        });
    }
    app.now = at(1000);
    app
}

#[test]
fn each_pane_shows_its_schema_verdict_and_its_tool_calls() {
    let app = verdicts((160, 40));
    let s = screen(&app);
    assert!(s.contains("schema ✓"), "{s}");
    assert!(s.contains("schema ✗ /result"), "{s}");
    assert!(
        s.contains("schema ✗ invalid at /result: \"four\" is not of type"),
        "{s}"
    );
    assert!(s.contains("2 tool calls, 1 ✗"), "{s}");
    assert!(s.contains("⚙ tool call add {\"a\":2,\"b\":2} ✓"), "{s}");
    assert!(s.contains("⚙ tool call unit {\"name\":7} ✗ /name"), "{s}");
    // Each verdict is in its own pane's column.
    let col = |needle: &str| {
        s.lines()
            .find_map(|l| l.find(needle).map(|b| l[..b].chars().count()))
            .unwrap()
    };
    assert!(col("schema ✓") < col("┌ mock/contrarian"), "{s}");
    assert!(col("schema ✗") >= col("┌ mock/contrarian"), "{s}");
    assert!(col("schema ✗") < col("┌ mock/beta"), "{s}");
}

#[test]
fn snapshot_settings_panel_80x24() {
    let mut app = app_with(&["mock/alpha", "mock/beta"], (80, 24));
    set_text(&mut app, SYSTEM, "Answer in one sentence.");
    set_text(&mut app, TEMPERATURE, "0.4");
    to_row(&mut app, JSON_MODE);
    app.update(key(KeyCode::Enter));
    insta::assert_snapshot!("settings_panel_80x24", screen(&app));
}

#[test]
fn snapshot_settings_panel_per_target_160x40() {
    let mut app = app_with(&["mock/alpha", "mock/beta", "mock/thinker"], (160, 40));
    set_text(&mut app, SYSTEM, "Answer in one sentence.");
    set_text(&mut app, MAX_TOKENS, "500");
    to_row(&mut app, 0);
    app.update(key(KeyCode::Right));
    app.update(key(KeyCode::Right));
    set_text(&mut app, MAX_TOKENS, "2000");
    to_row(&mut app, REASONING);
    for _ in 0..4 {
        app.update(key(KeyCode::Right));
    }
    insta::assert_snapshot!("settings_panel_per_target_160x40", screen(&app));
}

#[test]
fn snapshot_verdicts_80x24() {
    insta::assert_snapshot!("verdicts_80x24", screen(&verdicts((80, 24))));
}

#[test]
fn snapshot_verdicts_160x40() {
    insta::assert_snapshot!("verdicts_160x40", screen(&verdicts((160, 40))));
}
