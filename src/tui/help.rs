//! The key help: its lines and its box, from the key map and the theme alone
//! (the app scrolls it, the view draws it).

use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use unicode_width::UnicodeWidthStr;

use super::keys::{KeyMap, ACTIONS};
use super::layout::centered;
use super::text::fit;
use super::theme::Theme;

const FOOTER: [&str; 4] = [
    "↑/↓ in an empty editor: prompt history · mouse wheel scrolls the pane under it",
    "Letter keys act outside the editor; in it, use their Ctrl form (Ctrl+B blind, Ctrl+N repeat).",
    "Keys are set in [keys] of the config file (see config.example.toml).",
    "j/k PgUp/PgDn scroll this help · any other key closes it.",
];

/// One line per action (its keys and what it does), then the footer.
pub fn lines(keys: &KeyMap, t: &Theme) -> Vec<Line<'static>> {
    let mut lines: Vec<Line<'static>> = Vec::new();
    let kw = ACTIONS
        .iter()
        .map(|(a, _, _)| keys.label(*a).width())
        .max()
        .unwrap_or(10)
        .min(24);
    for (a, _, what) in ACTIONS {
        lines.push(Line::from(vec![
            Span::styled(fit(&keys.label(*a), kw), t.key),
            Span::raw("  "),
            Span::styled(*what, t.text),
        ]));
    }
    lines.push(Line::default());
    for l in FOOTER {
        lines.push(Line::styled(l, t.dim));
    }
    lines
}

/// The help's box in `area`, its rows after wrapping, and the furthest it scrolls.
pub fn geometry(keys: &KeyMap, t: &Theme, area: Rect) -> (Rect, u16, u16) {
    let lines = lines(keys, t);
    let inner_w = area.width.min(96).saturating_sub(2).max(1) as usize;
    let total: usize = lines
        .iter()
        .map(|l| l.width().div_ceil(inner_w).max(1))
        .sum();
    let total = total as u16;
    let r = centered(area, 96, total.saturating_add(2));
    let room = r.height.saturating_sub(2);
    (r, total, total.saturating_sub(room))
}

/// How far the help scrolls on a terminal of `size`.
pub fn scroll_max(keys: &KeyMap, t: &Theme, size: (u16, u16)) -> u16 {
    geometry(keys, t, Rect::new(0, 0, size.0, size.1)).2
}
