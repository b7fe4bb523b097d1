//! The workbench without a terminal: an `App` at a fixed clock, key messages,
//! and its screen drawn on a `TestBackend`.

use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use llm_quorum::tui::keys::KeyMap;
use llm_quorum::tui::theme::Theme;
use llm_quorum::tui::{view, App, AppInit, Msg};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

/// An app over `targets` in a `size` terminal, the built-in theme and keys, at [`at`]`(0)`.
pub fn app_with(targets: &[&str], size: (u16, u16)) -> App {
    let mut app = App::new(AppInit {
        targets: targets.iter().map(|s| s.to_string()).collect(),
        available: Vec::new(),
        theme: Theme::builtin(),
        keys: KeyMap::default(),
        banner: Vec::new(),
        budget_set: false,
        pricing: None,
        size,
    });
    app.now = at(0);
    app
}

/// The tests' clock zero (the first call's instant, the same for the whole process).
pub fn base() -> Instant {
    use std::sync::OnceLock;
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// `ms` after [`base`].
pub fn at(ms: u64) -> Instant {
    base() + Duration::from_millis(ms)
}

/// A key press without modifiers.
pub fn key(code: KeyCode) -> Msg {
    Msg::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

/// A character typed.
pub fn ch(c: char) -> Msg {
    key(KeyCode::Char(c))
}

/// Shift + a character.
pub fn shift(c: char) -> Msg {
    Msg::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::SHIFT))
}

/// Ctrl + a character.
pub fn ctrl(c: char) -> Msg {
    Msg::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
}

/// The app drawn at its own size.
pub fn draw(app: &App) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(app.size.0, app.size.1)).unwrap();
    t.draw(|f| view::render(app, f)).unwrap();
    t
}

/// The app's screen as text.
pub fn screen(app: &App) -> String {
    draw(app).backend().to_string()
}
