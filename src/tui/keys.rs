//! Key bindings: actions, their default keys, and `[keys]` from config
//! (`action = "key"`, alternatives separated by spaces, e.g. `quit = "ctrl+q ctrl+c"`).

use std::collections::BTreeMap;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// Everything a key can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Send the prompt to every target.
    Send,
    /// Insert a newline in the editor.
    Newline,
    /// Leave the current view: close an overlay, leave zoom, back to the
    /// editor. Never cancels a request.
    Cancel,
    /// Cancel every request in flight (a deliberate act, its own key).
    CancelAll,
    /// Focus the next panel.
    FocusNext,
    /// Focus the previous panel.
    FocusPrev,
    /// Open the target picker.
    Targets,
    /// Open the per-run settings (system prompt, reasoning, JSON, schema, tools, ...).
    Settings,
    /// Rerun the last prompt.
    Rerun,
    /// Export the comparison.
    Export,
    /// Help overlay.
    Help,
    /// Quit.
    Quit,
    /// Show or hide thinking everywhere.
    Thinking,
    /// Browse past runs.
    History,
    /// Consensus view.
    Consensus,
    /// Ask the judge model to rank the finished answers.
    Judge,
    /// Blind mode for the next send (names hidden until a vote).
    Blind,
    /// Cycle how many times each target runs on the next send (1, 3, 5).
    Repeat,
    /// Word diff of the focused pane against the majority (or the next pane).
    Diff,
    /// Cancel the focused pane.
    CancelPane,
    /// Retry the focused pane.
    RetryPane,
    /// Zoom the focused pane.
    Zoom,
    /// Copy the focused pane's answer (OSC 52).
    Copy,
    /// Continue the conversation with the focused pane's answer.
    Continue,
    /// Scroll up a line.
    ScrollUp,
    /// Scroll down a line.
    ScrollDown,
    /// Scroll up a page.
    PageUp,
    /// Scroll down a page.
    PageDown,
}

/// Every action with its config name and what the help says.
pub const ACTIONS: &[(Action, &str, &str)] = &[
    (Action::Send, "send", "send the prompt to every target"),
    (Action::Newline, "newline", "new line in the prompt"),
    (
        Action::Cancel,
        "cancel",
        "leave: close / unzoom / back to the prompt (never cancels)",
    ),
    (
        Action::CancelAll,
        "cancel_all",
        "cancel every request in flight",
    ),
    (
        Action::FocusNext,
        "focus_next",
        "focus: editor → panes → ledger",
    ),
    (Action::FocusPrev, "focus_prev", "focus backwards"),
    (Action::Targets, "targets", "pick targets (fuzzy filter)"),
    (
        Action::Settings,
        "settings",
        "run settings: system, reasoning, JSON, schema, tools, per target",
    ),
    (Action::Rerun, "rerun", "rerun the last prompt"),
    (Action::Export, "export", "export to Markdown and JSON"),
    (Action::History, "history", "past runs from the ledger"),
    (
        Action::Thinking,
        "thinking",
        "show / hide thinking everywhere",
    ),
    (Action::Consensus, "consensus", "consensus of the answers"),
    (Action::Judge, "judge", "judge the finished answers"),
    (
        Action::Blind,
        "blind",
        "blind mode for the next send (vote to reveal)",
    ),
    (
        Action::Repeat,
        "repeat",
        "repeat each target 1 / 3 / 5 times next send",
    ),
    (Action::Diff, "diff", "pane: word diff against the majority"),
    (Action::Help, "help", "this help (? outside the editor)"),
    (Action::Quit, "quit", "quit (asks while runs are in flight)"),
    (Action::CancelPane, "cancel_pane", "pane: cancel it"),
    (Action::RetryPane, "retry_pane", "pane: retry it"),
    (Action::Zoom, "zoom", "pane: zoom to full screen"),
    (Action::Copy, "copy", "pane: copy its answer (OSC 52)"),
    (
        Action::Continue,
        "continue",
        "pane: continue with this answer",
    ),
    (Action::ScrollUp, "scroll_up", "pane: scroll up"),
    (Action::ScrollDown, "scroll_down", "pane: scroll down"),
    (Action::PageUp, "page_up", "pane: page up"),
    (Action::PageDown, "page_down", "pane: page down"),
];

const DEFAULTS: &[(Action, &str)] = &[
    (Action::Send, "enter"),
    (Action::Newline, "alt+enter ctrl+j"),
    (Action::Cancel, "esc"),
    (Action::CancelAll, "ctrl+g"),
    (Action::FocusNext, "tab"),
    (Action::FocusPrev, "shift+tab"),
    (Action::Targets, "ctrl+p"),
    (Action::Settings, "f2 ctrl+s"),
    (Action::Rerun, "ctrl+r"),
    (Action::Export, "ctrl+e"),
    (Action::History, "ctrl+o"),
    (Action::Thinking, "ctrl+t"),
    (Action::Consensus, "v"),
    (Action::Judge, "J"),
    (Action::Blind, "b ctrl+b"),
    (Action::Repeat, "n ctrl+n"),
    (Action::Diff, "d"),
    (Action::Help, "f1 ?"),
    (Action::Quit, "ctrl+q ctrl+c"),
    (Action::CancelPane, "x"),
    (Action::RetryPane, "r"),
    (Action::Zoom, "z"),
    (Action::Copy, "y"),
    (Action::Continue, "c"),
    (Action::ScrollUp, "k up"),
    (Action::ScrollDown, "j down"),
    (Action::PageUp, "pageup"),
    (Action::PageDown, "pagedown"),
];

/// A key with modifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The key.
    pub code: KeyCode,
    /// Ctrl, Alt, Shift (Shift is ignored for characters).
    pub mods: KeyModifiers,
}

impl Key {
    /// Parse `ctrl+p`, `alt+enter`, `shift+tab`, `f1`, `?`, `x`, `space`.
    pub fn parse(s: &str) -> Result<Key, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty key".into());
        }
        let mut mods = KeyModifiers::NONE;
        let parts: Vec<&str> = if s == "+" {
            vec!["+"]
        } else {
            s.split('+').collect()
        };
        let (last, modparts) = parts.split_last().ok_or("empty key")?;
        for m in modparts {
            match m.to_ascii_lowercase().as_str() {
                "ctrl" | "control" | "c" => mods |= KeyModifiers::CONTROL,
                "alt" | "meta" | "m" => mods |= KeyModifiers::ALT,
                "shift" | "s" => mods |= KeyModifiers::SHIFT,
                other => return Err(format!("unknown modifier `{other}` in `{s}`")),
            }
        }
        let lower = last.to_ascii_lowercase();
        let code = match lower.as_str() {
            "enter" | "return" => KeyCode::Enter,
            "esc" | "escape" => KeyCode::Esc,
            "tab" if mods.contains(KeyModifiers::SHIFT) => {
                mods.remove(KeyModifiers::SHIFT);
                KeyCode::BackTab
            }
            "tab" => KeyCode::Tab,
            "backtab" => KeyCode::BackTab,
            "space" => KeyCode::Char(' '),
            "up" => KeyCode::Up,
            "down" => KeyCode::Down,
            "left" => KeyCode::Left,
            "right" => KeyCode::Right,
            "pageup" | "pgup" => KeyCode::PageUp,
            "pagedown" | "pgdn" => KeyCode::PageDown,
            "home" => KeyCode::Home,
            "end" => KeyCode::End,
            "backspace" => KeyCode::Backspace,
            "delete" | "del" => KeyCode::Delete,
            f if f.starts_with('f')
                && f.len() > 1
                && f[1..].chars().all(|c| c.is_ascii_digit()) =>
            {
                KeyCode::F(f[1..].parse().map_err(|_| format!("bad key `{s}`"))?)
            }
            _ => {
                let mut chars = last.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => KeyCode::Char(if mods.contains(KeyModifiers::CONTROL) {
                        c.to_ascii_lowercase()
                    } else {
                        c
                    }),
                    _ => return Err(format!("unknown key `{last}` in `{s}`")),
                }
            }
        };
        if matches!(code, KeyCode::Char(_)) {
            mods.remove(KeyModifiers::SHIFT);
        }
        Ok(Key { code, mods })
    }

    /// Whether `ev` is this key.
    pub fn matches(&self, ev: &KeyEvent) -> bool {
        let mut mods =
            ev.modifiers & (KeyModifiers::CONTROL | KeyModifiers::ALT | KeyModifiers::SHIFT);
        let mut code = ev.code;
        match code {
            KeyCode::Char(c) => {
                mods.remove(KeyModifiers::SHIFT);
                if mods.contains(KeyModifiers::CONTROL) {
                    code = KeyCode::Char(c.to_ascii_lowercase());
                }
            }
            KeyCode::BackTab => mods.remove(KeyModifiers::SHIFT),
            _ => {}
        }
        code == self.code && mods == self.mods
    }

    /// How the help shows it.
    pub fn label(&self) -> String {
        let mut s = String::new();
        if self.mods.contains(KeyModifiers::CONTROL) {
            s.push_str("Ctrl+");
        }
        if self.mods.contains(KeyModifiers::ALT) {
            s.push_str("Alt+");
        }
        if self.mods.contains(KeyModifiers::SHIFT) {
            s.push_str("Shift+");
        }
        match self.code {
            KeyCode::Enter => s.push_str("Enter"),
            KeyCode::Esc => s.push_str("Esc"),
            KeyCode::Tab => s.push_str("Tab"),
            KeyCode::BackTab => s.push_str("Shift+Tab"),
            KeyCode::Char(' ') => s.push_str("Space"),
            KeyCode::Char(c) if self.mods.contains(KeyModifiers::CONTROL) => {
                s.push(c.to_ascii_uppercase())
            }
            KeyCode::Char(c) => s.push(c),
            KeyCode::F(n) => s.push_str(&format!("F{n}")),
            KeyCode::Up => s.push('↑'),
            KeyCode::Down => s.push('↓'),
            KeyCode::Left => s.push('←'),
            KeyCode::Right => s.push('→'),
            KeyCode::PageUp => s.push_str("PgUp"),
            KeyCode::PageDown => s.push_str("PgDn"),
            KeyCode::Home => s.push_str("Home"),
            KeyCode::End => s.push_str("End"),
            KeyCode::Backspace => s.push_str("Backspace"),
            KeyCode::Delete => s.push_str("Del"),
            other => s.push_str(&format!("{other:?}")),
        }
        s
    }
}

/// Actions bound to keys.
#[derive(Debug, Clone)]
pub struct KeyMap {
    binds: BTreeMap<Action, Vec<Key>>,
}

impl Default for KeyMap {
    fn default() -> Self {
        let mut binds = BTreeMap::new();
        for (a, keys) in DEFAULTS {
            binds.insert(*a, parse_list(keys).expect("default keys parse"));
        }
        KeyMap { binds }
    }
}

fn parse_list(s: &str) -> Result<Vec<Key>, String> {
    s.split_whitespace().map(Key::parse).collect()
}

impl KeyMap {
    /// Defaults overridden by `[keys]`; problems come back as warnings.
    pub fn from_config(keys: &BTreeMap<String, String>) -> (KeyMap, Vec<String>) {
        let mut map = KeyMap::default();
        let mut warnings = Vec::new();
        for (name, value) in keys {
            let Some((action, _, _)) = ACTIONS.iter().find(|(_, n, _)| n == name) else {
                let names: Vec<&str> = ACTIONS.iter().map(|(_, n, _)| *n).collect();
                warnings.push(format!(
                    "[keys] {name}: unknown action; known: {}",
                    names.join(", ")
                ));
                continue;
            };
            match parse_list(value) {
                Ok(k) if !k.is_empty() => {
                    map.binds.insert(*action, k);
                }
                Ok(_) => warnings.push(format!("[keys] {name}: no key given; keeping the default")),
                Err(e) => warnings.push(format!("[keys] {name}: {e}; keeping the default")),
            }
        }
        (map, warnings)
    }

    /// Whether `ev` triggers `action`.
    pub fn is(&self, action: Action, ev: &KeyEvent) -> bool {
        self.binds
            .get(&action)
            .is_some_and(|ks| ks.iter().any(|k| k.matches(ev)))
    }

    /// The keys of `action`, for display ("Ctrl+Q / Ctrl+C").
    pub fn label(&self, action: Action) -> String {
        self.binds
            .get(&action)
            .map(|ks| ks.iter().map(Key::label).collect::<Vec<_>>().join(" / "))
            .unwrap_or_default()
    }

    /// The first key of `action` that works while typing (not a plain
    /// letter, which the editor takes), for hints shown in the editor.
    pub fn short_typing(&self, action: Action) -> Option<String> {
        self.binds.get(&action).and_then(|ks| {
            ks.iter()
                .find(|k| {
                    !matches!(k.code, KeyCode::Char(_))
                        || k.mods.intersects(KeyModifiers::CONTROL | KeyModifiers::ALT)
                })
                .map(Key::label)
        })
    }

    /// The first key of `action`, for the status bar.
    pub fn short(&self, action: Action) -> String {
        self.binds
            .get(&action)
            .and_then(|ks| ks.first())
            .map(Key::label)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(code: KeyCode, mods: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, mods)
    }

    #[test]
    fn defaults_match() {
        let m = KeyMap::default();
        assert!(m.is(Action::Send, &ev(KeyCode::Enter, KeyModifiers::NONE)));
        assert!(m.is(Action::Newline, &ev(KeyCode::Enter, KeyModifiers::ALT)));
        assert!(m.is(
            Action::Newline,
            &ev(KeyCode::Char('j'), KeyModifiers::CONTROL)
        ));
        assert!(m.is(
            Action::FocusPrev,
            &ev(KeyCode::BackTab, KeyModifiers::SHIFT)
        ));
        assert!(m.is(Action::Help, &ev(KeyCode::Char('?'), KeyModifiers::SHIFT)));
        assert!(m.is(Action::Quit, &ev(KeyCode::Char('C'), KeyModifiers::CONTROL)));
        assert!(!m.is(Action::Send, &ev(KeyCode::Enter, KeyModifiers::ALT)));
        assert_eq!(m.label(Action::Quit), "Ctrl+Q / Ctrl+C");
    }

    #[test]
    fn config_overrides_and_warns() {
        let mut k = BTreeMap::new();
        k.insert("send".to_string(), "ctrl+s".to_string());
        k.insert("bogus".to_string(), "x".to_string());
        k.insert("zoom".to_string(), "hyper+z".to_string());
        let (m, w) = KeyMap::from_config(&k);
        assert!(m.is(Action::Send, &ev(KeyCode::Char('s'), KeyModifiers::CONTROL)));
        assert!(!m.is(Action::Send, &ev(KeyCode::Enter, KeyModifiers::NONE)));
        assert!(m.is(Action::Zoom, &ev(KeyCode::Char('z'), KeyModifiers::NONE)));
        assert_eq!(w.len(), 2, "{w:?}");
    }
}
