//! The workbench goes through the front door like every other face: the real
//! `EngineEffects` and loop (on a TestBackend), a real engine loaded from a config
//! file, and an OpenAI upstream on 127.0.0.1. `cheapest:` and tier names mean in the
//! TUI exactly what they mean in `ask`, `exec`, `compare` and `serve`; the judge's
//! request is reserved against the budget like any run.

mod support;

use std::collections::HashMap;
use std::path::Path;

use crossterm::event::{Event, KeyCode, KeyEvent, KeyModifiers};
use futures_util::StreamExt;
use llm_quorum::app::{load_with_env, GlobalFlags};
use llm_quorum::engine::consensus::AnswerInput;
use llm_quorum::engine::{Completion, Engine, StartOptions};
use llm_quorum::tui::app::AppInit;
use llm_quorum::tui::keys::KeyMap;
use llm_quorum::tui::pane::PaneState;
use llm_quorum::tui::theme::Theme;
use llm_quorum::tui::{run_loop, App, Cmd, Effects, EngineEffects, LoopOptions, Msg};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use support::{Reply, Server};
use tokio::sync::mpsc;

const FAKE_KEY: &str = "sk-quorum-test-FAKEKEY-0123456789abcdef";

/// Two OpenAI models in one tier: gpt-4o-mini is the cheaper, gpt-4o the first.
const TIERS: &str = "[tiers]\nfast = [\"openai/gpt-4o\", \"openai/gpt-4o-mini\"]\n";

fn openai_sse() -> String {
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"4\"},\"finish_reason\":null}]}\n\n\
     data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
     data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":14,\"completion_tokens\":1,\"total_tokens\":15}}\n\n\
     data: [DONE]\n\n"
        .to_string()
}

/// A real engine and settings from `config`, talking to `upstream`.
fn load(dir: &Path, config: &str, upstream: &str) -> (Engine, llm_quorum::app::Settings) {
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, config).unwrap();
    let env: HashMap<String, String> = [
        ("HOME", dir.display().to_string()),
        ("QUORUM_DATA_DIR", dir.join("data").display().to_string()),
        ("QUORUM_CONFIG", cfg.display().to_string()),
        ("QUORUM_NO_DISCOVERY", "1".into()),
        ("OPENAI_API_KEY", FAKE_KEY.into()),
        ("OPENAI_BASE_URL", format!("{upstream}/v1")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let flags = GlobalFlags {
        config: Some(cfg),
        ..Default::default()
    };
    load_with_env(&flags, &|k| env.get(k).cloned()).expect("the config loads")
}

fn models_seen(up: &Server) -> Vec<String> {
    let mut v: Vec<String> = up
        .requests()
        .iter()
        // The workbench also asks the provider which models it has (a GET).
        .filter(|r| r.method == "POST")
        .map(|r| r.json()["model"].as_str().unwrap_or("").to_string())
        .collect();
    v.sort();
    v
}

/// The real effects; asks the loop to quit once `expect` targets have ended.
struct Watch {
    real: EngineEffects,
    expect: usize,
    ended: usize,
    quit: bool,
}

impl Effects for Watch {
    fn run(&mut self, cmd: Cmd) {
        self.real.run(cmd)
    }
    fn seen(&mut self, msg: &Msg) {
        self.real.seen(msg);
        if let Msg::Engine { event, .. } = msg {
            // Engine events name their run; a target refused before sending has none.
            assert!(
                event.run_id.starts_with("run-")
                    || (event.run_id.is_empty()
                        && matches!(event.event, llm_quorum::engine::StreamEvent::Failed(_))),
                "engine events name their run: {:?}",
                event.run_id
            );
            if event.event.is_final() {
                self.ended += 1;
            }
        }
    }
    fn replies(&mut self) -> Vec<Msg> {
        let mut v = self.real.replies();
        if self.ended >= self.expect && !self.quit {
            self.quit = true;
            v.push(Msg::Quit);
        }
        v
    }
}

fn keys(text: &str) -> Vec<std::io::Result<Event>> {
    text.chars()
        .map(|c| {
            let code = if c == '\r' {
                KeyCode::Enter
            } else {
                KeyCode::Char(c)
            };
            Ok(Event::Key(KeyEvent::new(code, KeyModifiers::NONE)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workbench_takes_cheapest_and_tier_names_through_the_front_door() {
    let up = Server::start_with(|_| Reply::sse(openai_sse())).await;
    let dir = tempfile::tempdir().unwrap();
    // A budget too: the pre-send check names targets as the front door does.
    let config = format!("{TIERS}[budget]\ndaily_usd = 5.0\n");
    let (engine, settings) = load(dir.path(), &config, &up.url);

    let (tx, rx) = mpsc::channel(1024);
    let (etx, erx) = mpsc::channel(1024);
    let real = EngineEffects::new(engine, &settings, tx, etx, None);
    let mut fx = Watch {
        real,
        expect: 2,
        ended: 0,
        quit: false,
    };
    let mut app = App::new(AppInit {
        targets: vec!["cheapest:fast".into(), "fast".into()],
        available: Vec::new(),
        theme: Theme::builtin(),
        keys: KeyMap::default(),
        banner: Vec::new(),
        budget_set: settings.budget.is_set(),
        pricing: None,
        size: (120, 36),
    });
    let mut term = Terminal::new(TestBackend::new(120, 36)).unwrap();
    // The input never ends by itself: the loop quits when both targets ended.
    let input =
        futures_util::stream::iter(keys("What is 2+2?\r")).chain(futures_util::stream::pending());
    let run = run_loop(
        &mut term,
        input,
        rx,
        erx,
        &mut app,
        &mut fx,
        LoopOptions::default(),
    );
    tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("both panes end")
        .unwrap();

    for p in &app.panes {
        assert_eq!(
            p.state,
            PaneState::Done,
            "{}: {:?}",
            p.target,
            p.answer_text()
        );
        assert_eq!(p.answer_text(), "4", "{}", p.target);
    }
    // `cheapest:fast` chose the cheaper member, `fast` the tier's first one.
    assert_eq!(models_seen(&up), ["gpt-4o", "gpt-4o-mini"]);
    assert!(app.runs.is_empty(), "the run closed when its targets ended");
}

fn two_answers() -> Vec<AnswerInput> {
    ["mock/alpha", "mock/beta"]
        .iter()
        .map(|t| {
            AnswerInput::from_completion(
                t.to_string(),
                &Completion {
                    model: t.to_string(),
                    text: "4".into(),
                    ..Default::default()
                },
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_judge_is_reserved_against_the_budget_like_any_run() {
    let up = Server::start_with(|_| Reply::sse(openai_sse())).await;
    let dir = tempfile::tempdir().unwrap();
    // A cap no bounded request fits under: the judge is refused before sending.
    let (engine, _) = load(dir.path(), "[budget]\ndaily_usd = 0.0000001\n", &up.url);
    let r = llm_quorum::engine::judge::judge(
        &engine,
        "openai/gpt-4o-mini",
        "What is 2+2?",
        &two_answers(),
        StartOptions::default(),
    )
    .await;
    let e = r.expect_err("the judge is refused by the cap");
    assert!(e.contains("the judge was not asked"), "{e}");
    assert!(e.contains("cap") || e.contains("budget"), "{e}");
    assert_eq!(up.count(), 0, "nothing reached the upstream");

    // Under a cap it fits, the same judge runs (and `cheapest:` works for it too).
    let dir2 = tempfile::tempdir().unwrap();
    let (engine, _) = load(
        dir2.path(),
        &format!("{TIERS}[budget]\ndaily_usd = 5.0\n"),
        &up.url,
    );
    let o = llm_quorum::engine::judge::judge(
        &engine,
        "cheapest:fast",
        "What is 2+2?",
        &two_answers(),
        StartOptions::default(),
    )
    .await
    .expect("the judge runs");
    assert!(o.completion.error.is_none(), "{:?}", o.completion.error);
    assert_eq!(models_seen(&up), ["gpt-4o-mini"]);
}

/// A 1×1 PNG.
const PNG_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg==";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_at_image_goes_to_the_vision_target_and_a_text_only_one_is_refused_by_name() {
    use base64::Engine as _;
    let up = Server::start_with(|_| Reply::sse(openai_sse())).await;
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("dot.png");
    std::fs::write(
        &png,
        base64::engine::general_purpose::STANDARD
            .decode(PNG_B64)
            .unwrap(),
    )
    .unwrap();
    let (engine, settings) = load(dir.path(), "", &up.url);

    let (tx, rx) = mpsc::channel(1024);
    let (etx, erx) = mpsc::channel(1024);
    let real = EngineEffects::new(engine, &settings, tx, etx, None);
    let mut fx = Watch {
        real,
        expect: 2,
        ended: 0,
        quit: false,
    };
    let mut app = App::new(AppInit {
        targets: vec!["mock/alpha".into(), "openai/gpt-4o-mini".into()],
        available: Vec::new(),
        theme: Theme::builtin(),
        keys: KeyMap::default(),
        banner: Vec::new(),
        budget_set: false,
        pricing: None,
        size: (120, 36),
    });
    let mut term = Terminal::new(TestBackend::new(120, 36)).unwrap();
    let prompt = format!("What is in @{}?\r", png.display());
    let input = futures_util::stream::iter(keys(&prompt)).chain(futures_util::stream::pending());
    let run = run_loop(
        &mut term,
        input,
        rx,
        erx,
        &mut app,
        &mut fx,
        LoopOptions::default(),
    );
    tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("both panes end")
        .unwrap();

    let (alpha, gpt) = (&app.panes[0], &app.panes[1]);
    assert_eq!(alpha.state, PaneState::Failed);
    let why = alpha
        .stats
        .done
        .as_ref()
        .and_then(|c| c.error.as_ref())
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        why.contains("mock/alpha") && why.contains("images"),
        "{why}"
    );
    assert_eq!(gpt.state, PaneState::Done, "{:?}", gpt.answer_text());
    // Only the vision target was asked, with the image as its input.
    let bodies: Vec<serde_json::Value> = up
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.json())
        .collect();
    assert_eq!(bodies.len(), 1);
    let parts = bodies[0]["messages"][0]["content"].as_array().unwrap();
    assert!(
        parts.iter().any(|p| p["image_url"]["url"]
            .as_str()
            .is_some_and(|u| u == format!("data:image/png;base64,{PNG_B64}"))),
        "{parts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_at_file_fails_every_pane_with_the_file_named_and_sends_nothing() {
    let up = Server::start_with(|_| Reply::sse(openai_sse())).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, settings) = load(dir.path(), "", &up.url);
    let (tx, rx) = mpsc::channel(1024);
    let (etx, erx) = mpsc::channel(1024);
    let real = EngineEffects::new(engine, &settings, tx, etx, None);
    let mut fx = Watch {
        real,
        expect: 1,
        ended: 0,
        quit: false,
    };
    let mut app = App::new(AppInit {
        targets: vec!["openai/gpt-4o-mini".into()],
        theme: Theme::builtin(),
        size: (100, 30),
        ..Default::default()
    });
    let mut term = Terminal::new(TestBackend::new(100, 30)).unwrap();
    let input = futures_util::stream::iter(keys("Summarise @no-such-notes.md\r"))
        .chain(futures_util::stream::pending());
    let run = run_loop(
        &mut term,
        input,
        rx,
        erx,
        &mut app,
        &mut fx,
        LoopOptions::default(),
    );
    tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("the pane ends")
        .unwrap();
    let why = app.panes[0]
        .stats
        .done
        .as_ref()
        .and_then(|c| c.error.as_ref())
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        why.contains("no-such-notes.md") && why.contains("no such file"),
        "{why}"
    );
    assert_eq!(
        up.requests().iter().filter(|r| r.method == "POST").count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workbenchs_budget_question_is_the_engines_check() {
    let up = Server::start_with(|_| Reply::sse(openai_sse())).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = load(
        dir.path(),
        &format!("{TIERS}[budget]\ndaily_usd = 0.0000001\n"),
        &up.url,
    );
    let req = llm_quorum::engine::ChatRequest {
        messages: vec![llm_quorum::engine::Message::user("What is 2+2?")],
        max_tokens: Some(100),
        ..Default::default()
    };
    let groups = vec![(req.clone(), vec!["cheapest:fast".to_string()])];
    let e = tokio::task::spawn_blocking({
        let (engine, groups) = (engine.clone(), groups.clone());
        move || engine.check_budget(&groups, Some("tui-test"))
    })
    .await
    .unwrap()
    .expect_err("the cap is crossed");
    assert!(
        matches!(e, llm_quorum::engine::Refusal::Budget(_)),
        "a budget refusal, not a target error: {e}"
    );
    // The front door agrees, and nothing was sent.
    let r = engine
        .start(req, vec!["cheapest:fast".into()], StartOptions::default())
        .await;
    assert!(matches!(r, Err(llm_quorum::engine::Refusal::Budget(_))));
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workbenchs_projection_counts_an_attached_image() {
    use base64::Engine as _;
    let up = Server::start_with(|_| Reply::sse(openai_sse())).await;
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("dot.png");
    std::fs::write(
        &png,
        base64::engine::general_purpose::STANDARD
            .decode(PNG_B64)
            .unwrap(),
    )
    .unwrap();
    let (engine, settings) = load(dir.path(), "", &up.url);
    let (tx, mut rx) = mpsc::channel(1024);
    let (etx, _erx) = mpsc::channel(1024);
    let mut fx = EngineEffects::new(engine, &settings, tx, etx, None);
    let req = llm_quorum::engine::ChatRequest {
        messages: vec![llm_quorum::engine::Message::user("What is in this image?")],
        max_tokens: Some(100),
        ..Default::default()
    };
    let groups = vec![(req, vec!["openai/gpt-4o-mini".to_string()])];
    let mut input_tokens = Vec::new();
    for (gen, images) in [(1, vec![]), (2, vec![png.clone()])] {
        let options = vec![llm_quorum::engine::options::RequestOptions {
            images,
            ..Default::default()
        }];
        fx.run(Cmd::Project {
            gen,
            groups: groups.clone(),
            options,
        });
        let p = loop {
            match tokio::time::timeout(std::time::Duration::from_secs(60), rx.recv())
                .await
                .expect("a projection comes back")
                .expect("the channel is open")
            {
                Msg::Projection { gen: g, result } if g == gen => break result.unwrap(),
                _ => {}
            }
        };
        input_tokens.push(p.targets[0].input_tokens);
    }
    // gpt-4o-mini prices an image at 2833 + 5667 per tile (one tile here).
    assert!(
        input_tokens[1] >= input_tokens[0] + 2833,
        "{input_tokens:?}"
    );
}
