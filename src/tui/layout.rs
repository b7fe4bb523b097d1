//! Where everything goes: a pure function of the state and the screen size,
//! shared by drawing and by `update` (wrap widths, mouse hits, page sizes).

use ratatui::layout::{Constraint, Direction, Layout, Rect};

/// What the layout depends on: a few facts of the state, so that this module
/// sits below the app (the app builds them: `App::layout_facts`).
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    /// Panes.
    pub panes: usize,
    /// Banner lines.
    pub banner: &'a [String],
    /// The zoomed pane.
    pub zoom: Option<usize>,
    /// The editor's lines.
    pub editor_lines: &'a [String],
    /// Rows of the ledger table.
    pub ledger_rows: usize,
    /// Whether the ledger has the focus.
    pub ledger_focused: bool,
    /// Panes sent a request in the current run (answered or not).
    pub answered: usize,
    /// Pane indices in screen order (shuffled while blind).
    pub order: Vec<usize>,
}

/// The screen, cut up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Areas {
    /// Banner lines at the top.
    pub banner: Rect,
    /// Every pane's rectangle (empty rects for panes not shown when zoomed).
    pub panes: Vec<Rect>,
    /// The whole pane region.
    pub panes_area: Rect,
    /// The prompt editor.
    pub editor: Rect,
    /// The ledger.
    pub ledger: Rect,
    /// The status bar.
    pub status: Rect,
    /// Where a reopened past run's panes go.
    pub history_panes: Rect,
    /// The consensus bar under the panes (empty when not shown).
    pub summary: Rect,
}

/// Rows a terminal needs before the consensus bar takes one.
pub const SUMMARY_MIN_HEIGHT: u16 = 24;

/// Whether the consensus bar shows: a run with two or more panes, room to spare.
pub fn shows_summary(app: &Facts<'_>, height: u16) -> bool {
    height >= SUMMARY_MIN_HEIGHT && app.panes >= 2 && app.answered >= 2
}

/// A pane's text area: inside the border, below the stats line.
pub fn pane_body(r: Rect) -> Rect {
    Rect {
        x: r.x.saturating_add(1),
        y: r.y.saturating_add(2),
        width: r.width.saturating_sub(2),
        height: r.height.saturating_sub(3),
    }
}

/// Columns for `n` panes in `width`: 2-4 in a row, fewer when narrow.
pub fn columns(n: usize, width: u16) -> usize {
    if n == 0 {
        return 1;
    }
    let fit = (width as usize / 30).max(1);
    let cols = n.min(4).min(fit);
    // Balance the grid: 5 panes as 3+2, not 4+1.
    let rows = n.div_ceil(cols);
    n.div_ceil(rows).max(1)
}

/// Rows a terminal needs before it counts as short (small layouts below).
pub const SHORT: u16 = 30;

/// `n` rectangles in a grid over `area`. On a short area, narrower panes
/// in one row beat panes of two or three lines each.
pub fn grid(area: Rect, n: usize) -> Vec<Rect> {
    if n == 0 {
        return Vec::new();
    }
    let mut cols = columns(n, area.width);
    if n.div_ceil(cols) > 1 && (area.height as usize / n.div_ceil(cols)) < 10 {
        let narrow = n.min(4).min((area.width as usize / 26).max(1));
        cols = n.div_ceil(n.div_ceil(narrow)).max(cols);
    }
    let rows = n.div_ceil(cols);
    let row_rects = Layout::default()
        .direction(Direction::Vertical)
        .constraints(vec![Constraint::Ratio(1, rows as u32); rows])
        .split(area);
    let mut out = Vec::with_capacity(n);
    for (ri, rr) in row_rects.iter().enumerate() {
        let in_row = (n - ri * cols).min(cols);
        let cells = Layout::default()
            .direction(Direction::Horizontal)
            .constraints(vec![Constraint::Ratio(1, in_row as u32); in_row])
            .split(*rr);
        out.extend(cells.iter().copied());
    }
    out
}

/// Rows the banner takes when wrapped at `width` (at most 4).
pub fn banner_height(lines: &[String], width: u16) -> u16 {
    let w = (width as usize).saturating_sub(1).max(1);
    // The last line also says how to hide the banner (" · Esc hides this").
    let n = lines.len();
    let rows: usize = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let extra = if i + 1 == n { 17 } else { 0 };
            (unicode_width::UnicodeWidthStr::width(l.as_str()) + 1 + extra)
                .div_ceil(w)
                .max(1)
        })
        .sum();
    rows.min(4) as u16
}

fn ledger_width(width: u16) -> u16 {
    (width * 45 / 100).clamp(40, 72)
}

/// Cut `area` up for a state with these facts.
pub fn areas(app: &Facts<'_>, area: Rect) -> Areas {
    let mut a = Areas::default();
    if area.width == 0 || area.height == 0 {
        a.panes = vec![Rect::default(); app.panes];
        return a;
    }
    // A short terminal gives the banner one line (Esc hides it).
    let banner_cap = if area.height < SHORT {
        1
    } else {
        area.height / 4
    };
    let banner_h = banner_height(app.banner, area.width).min(banner_cap);
    let [banner, rest, status] = Layout::vertical([
        Constraint::Length(banner_h),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    a.banner = banner;
    a.status = status;
    a.history_panes = rest;
    if let Some(z) = app.zoom.filter(|z| *z < app.panes) {
        a.panes = vec![Rect::default(); app.panes];
        a.panes[z] = rest;
        a.panes_area = rest;
        return a;
    }
    let wide = rest.width >= 110;
    let editor_w = if wide {
        rest.width - ledger_width(rest.width)
    } else {
        rest.width
    };
    // The editor wraps: its height follows the wrapped rows.
    let rows = super::editor::row_count(app.editor_lines, editor_w.saturating_sub(2).into());
    let editor_h = (rows as u16).clamp(1, 8) + 2;
    let ledger_rows = app.ledger_rows.max(app.panes) as u16;
    // Header, rows, a total row, borders.
    let ledger_h = ledger_rows + 2 + u16::from(ledger_rows > 1) + 2;
    // On a short terminal the ledger is one summary line until it has the
    // focus (Shift+Tab from the editor): the panes need the rows more.
    let short = area.height < SHORT && !app.ledger_focused;
    let bottom_h = match (wide, short) {
        (true, false) => editor_h.max(ledger_h.min(12)),
        (true, true) => editor_h.max(ledger_h.min(5)),
        (false, false) => editor_h + ledger_h.min(7),
        (false, true) => editor_h + 1,
    };
    // Never let the bottom eat the panes on a short terminal.
    let bottom_h = bottom_h.min(
        rest.height
            .saturating_sub(rest.height / 2)
            .max(editor_h.min(rest.height)),
    );
    let [panes, bottom] =
        Layout::vertical([Constraint::Min(0), Constraint::Length(bottom_h)]).areas(rest);
    let panes = if shows_summary(app, area.height) && panes.height > 4 {
        let [p, bar] = Layout::vertical([Constraint::Min(0), Constraint::Length(1)]).areas(panes);
        a.summary = bar;
        p
    } else {
        panes
    };
    a.panes_area = panes;
    // Screen slots in display order (shuffled while blind).
    let rects = grid(panes, app.panes);
    a.panes = vec![Rect::default(); app.panes];
    for (slot, &i) in app.order.iter().enumerate() {
        a.panes[i] = rects[slot];
    }
    if wide {
        let lw = ledger_width(bottom.width);
        let [ed, led] =
            Layout::horizontal([Constraint::Min(0), Constraint::Length(lw)]).areas(bottom);
        a.editor = ed;
        a.ledger = led;
    } else {
        let [ed, led] = Layout::vertical([
            Constraint::Length(editor_h.min(bottom.height)),
            Constraint::Min(0),
        ])
        .areas(bottom);
        a.editor = ed;
        a.ledger = led;
    }
    a
}

/// A `w`×`h` box centred in `area` (smaller when `area` is).
pub fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}
