//! Drawing: a pure function of the state. Nothing here mutates the app or
//! does IO; every size comes from `layout`.

use std::time::Instant;

use ratatui::layout::{Alignment, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Clear, Paragraph, Wrap};
use ratatui::Frame;
use unicode_width::UnicodeWidthStr;

use crate::engine::cost::format_usd;
use crate::engine::{CostSource, Tally};

use super::app::{App, Confirm, Focus, HistoryView, LedgerRow, Overlay, Picker};
use super::help;
use super::keys::Action;
use super::layout::{self, centered, pane_body};
use super::pane::{Pane, PaneState};
use super::text::fit;
use super::theme::Theme;

/// Draw the whole screen.
pub fn render(app: &App, f: &mut Frame<'_>) {
    let area = f.area();
    if area.width == 0 || area.height == 0 {
        return;
    }
    let areas = app.areas_in(area);
    let t = &app.theme;
    f.render_widget(Block::new().style(t.base), area);
    if areas.banner.height > 0 {
        const HIDE: &str = " · Esc hides this";
        let mut lines: Vec<Line<'_>> = app
            .banner
            .iter()
            .map(|b| Line::styled(format!(" {b}"), t.banner))
            .collect();
        let full: usize = layout::banner_height(&app.banner, area.width).into();
        if full > areas.banner.height as usize {
            // Cut to what fits, keeping the way out visible.
            let room = (area.width as usize).saturating_sub(HIDE.width() + 2);
            let first = app.banner.first().map(String::as_str).unwrap_or("");
            lines = vec![Line::styled(
                format!(" {}{HIDE}", fit(first, room).trim_end()),
                t.banner,
            )];
        } else if let Some(last) = lines.last_mut() {
            last.spans.push(Span::styled(HIDE, t.banner));
        }
        f.render_widget(
            Paragraph::new(lines)
                .style(t.banner)
                .wrap(Wrap { trim: false }),
            areas.banner,
        );
    }
    let history_open = matches!(&app.overlay, Overlay::History(h) if h.open.is_some());
    if !history_open {
        for (i, r) in areas.panes.iter().enumerate() {
            if r.width == 0 || r.height == 0 {
                continue;
            }
            let focused = app.focus == Focus::Pane(i);
            draw_pane(f, app, &app.panes[i], *r, focused);
        }
        if app.panes.is_empty() && areas.panes_area.height > 0 {
            let msg = format!(
                "No targets. {} opens the target picker.",
                app.keys.short(Action::Targets)
            );
            f.render_widget(
                Paragraph::new(msg)
                    .style(t.dim)
                    .alignment(Alignment::Center),
                areas.panes_area,
            );
        }
        if areas.summary.height > 0 {
            draw_summary(f, app, areas.summary);
        }
        if app.zoom.is_none() {
            draw_editor(f, app, areas.editor);
            draw_ledger(f, app, areas.ledger);
        }
    }
    draw_status(f, app, areas.status);
    match &app.overlay {
        Overlay::None => {}
        Overlay::Help(top) => draw_help(f, app, area, *top),
        Overlay::Picker(p) => draw_picker(f, app, p, area),
        Overlay::Confirm(c) => draw_confirm(f, app, c, area),
        Overlay::History(h) => draw_history(f, app, h, areas.history_panes),
        Overlay::Consensus => draw_consensus(f, app, area),
        Overlay::Settings => draw_settings(f, app, area),
    }
}

/// The per-run settings: one row per setting, for every target or one target
/// (a target's row shows what it inherits, dim, until it sets its own).
fn draw_settings(f: &mut Frame<'_>, app: &App, area: Rect) {
    use super::settings::{Field, FIELDS};
    let t = &app.theme;
    let st = &app.settings;
    let rows = FIELDS.len() as u16 + 4 + u16::from(st.error.is_some());
    let r = centered(area, 76, rows);
    let title = match &st.scope {
        None => "run settings · every target".to_string(),
        Some(tg) => format!("run settings · {tg}"),
    };
    let label_w = 16usize;
    let value_w = (r.width as usize).saturating_sub(label_w + 4).max(4);
    let mut lines: Vec<Line<'static>> = Vec::new();
    for (i, fl) in FIELDS.iter().enumerate() {
        let selected = i == st.row;
        let (value, inherited) = match (fl, &st.editing) {
            (Field::Scope, _) => (
                match &st.scope {
                    None => "every target  (←/→: one target)".to_string(),
                    Some(tg) => format!("{tg}  (←/→: another)"),
                },
                false,
            ),
            (_, Some(text)) if selected => (format!("{text}▏"), false),
            _ => st.shown(*fl),
        };
        let value = if inherited && !value.is_empty() {
            format!("{value} (every target)")
        } else {
            value
        };
        let vstyle = if inherited { t.dim } else { t.text };
        let mut line = Line::from(vec![
            Span::styled(fit(fl.label(), label_w), t.key),
            Span::raw("  "),
            Span::styled(fit(&value, value_w).trim_end().to_string(), vstyle),
        ]);
        if selected {
            line = line.patch_style(Style::new().add_modifier(Modifier::REVERSED));
        }
        lines.push(line);
    }
    lines.push(Line::default());
    if let Some(e) = &st.error {
        lines.push(Line::styled(e.clone(), t.error));
    }
    lines.push(Line::styled(
        "↑/↓ row · ←/→ change · Enter edit/store · Del unset · Esc close",
        t.dim,
    ));
    f.render_widget(Clear, r);
    f.render_widget(Paragraph::new(lines).block(overlay_block(t, &title)), r);
}

fn state_style(t: &Theme, s: &PaneState) -> Style {
    match s {
        PaneState::Idle => t.dim,
        PaneState::Queued | PaneState::Waiting => t.dim,
        PaneState::Streaming => t.active,
        PaneState::Retrying { .. } => t.warn,
        PaneState::Done | PaneState::Cached => t.ok,
        PaneState::Failed => t.error,
        PaneState::Cancelled => t.warn,
    }
}

fn secs(ms: f64) -> String {
    if ms < 10_000.0 {
        format!("{:.2}s", ms / 1000.0)
    } else {
        format!("{:.1}s", ms / 1000.0)
    }
}

/// One piece of a pane header: its text, style and priority (0 is never dropped).
type Piece = (String, Style, u8);

/// The figures of a pane as header pieces, in display order.
fn stat_pieces(app: &App, p: &Pane, now: Instant) -> Vec<Piece> {
    let t = &app.theme;
    if p.stats.sent_at.is_none() {
        return vec![("—".into(), t.dim, 0)];
    }
    let mut parts: Vec<Piece> = Vec::new();
    let (n, exact) = p.stats.out_tokens();
    let tok = format!("{}{n} tok", if exact { "" } else { "~" });
    // While blind, price, speed and latency would tell who is who: only the
    // size of the answer and how it ended.
    let hidden = app
        .panes
        .iter()
        .position(|q| std::ptr::eq(q, p))
        .is_some_and(|i| app.pane_hidden(i));
    if hidden {
        // The answer's own size: thinking tokens would tell a reasoning model.
        let n = super::pane::approx_tokens(p.answer_text());
        parts.push((format!("~{n} tok"), t.dim, 0));
        if let Some(fr) = p.finish_reason() {
            parts.push((fr.as_str().to_string(), t.dim, 1));
        }
        // Whether the answer keeps to the schema says nothing of who wrote it.
        parts.extend(verdict_pieces(app, p));
        return parts;
    }
    if let Some(ttft) = p.stats.ttft_ms() {
        parts.push((format!("TTFT {}", secs(ttft)), t.dim, 4));
    }
    if let Some(tps) = p.stats.tokens_per_sec(now) {
        parts.push((format!("{tps:.0} tok/s"), t.dim, 3));
    }
    parts.push((tok, t.dim, 1));
    let (cost, src) = p.cost(&|a, b, c, d| app.quote(a, b, c, d));
    let mark_style = match src {
        CostSource::Unknown => t.warn,
        CostSource::Estimated => t.warn,
        _ => t.ok,
    };
    match cost {
        // Unknown is "?", never $0, and needs no second mark.
        None => parts.push(("$?".into(), mark_style, 0)),
        Some(_) => parts.push((format!("{} {}", format_usd(cost), src.mark()), t.text, 0)),
    }
    if let Some(l) = p.stats.latency_ms(now) {
        parts.push((secs(l), t.dim, 2));
    }
    if let Some(fr) = p.finish_reason() {
        parts.push((fr.as_str().to_string(), t.dim, 2));
    }
    parts.extend(verdict_pieces(app, p));
    parts
}

/// The answer's schema verdict and its tool calls' validity, as header pieces.
fn verdict_pieces(app: &App, p: &Pane) -> Vec<Piece> {
    let t = &app.theme;
    let Some(c) = &p.stats.done else {
        return Vec::new();
    };
    let mut out = Vec::new();
    match super::pane::schema_verdict(c) {
        Some(Ok(())) => out.push(("schema ✓".to_string(), t.ok, 0)),
        // Where it broke; the transcript says why.
        Some(Err(_)) => {
            let at = c
                .schema_error
                .as_ref()
                .map(|e| {
                    if e.path.is_empty() {
                        "/"
                    } else {
                        e.path.as_str()
                    }
                })
                .unwrap_or("/");
            out.push((format!("schema ✗ {at}"), t.error, 0))
        }
        None => {}
    }
    let checked: Vec<bool> = c.tool_calls.iter().filter_map(|t| t.valid).collect();
    if !c.tool_calls.is_empty() {
        let n = c.tool_calls.len();
        let bad = checked.iter().filter(|v| !**v).count();
        let word = if n == 1 { "tool call" } else { "tool calls" };
        let (text, style) = match (checked.is_empty(), bad) {
            (true, _) => (format!("{n} {word}"), t.dim),
            (false, 0) => (format!("{n} {word} ✓"), t.ok),
            (false, b) => (format!("{n} {word}, {b} ✗"), t.error),
        };
        out.push((text, style, 1));
    }
    out
}

/// Lay `pieces` out in at most `max_lines` lines of `width`, joined by
/// ` · `; when they do not fit, the lowest-priority pieces go first
/// (priority 0 stays, cut only if it alone is wider than a line).
fn pack(pieces: &[Piece], width: usize, max_lines: usize, sep: Style) -> Vec<Line<'static>> {
    let max_lines = max_lines.max(1);
    let mut keep: Vec<bool> = vec![true; pieces.len()];
    loop {
        let mut lines: Vec<Vec<Span<'static>>> = vec![Vec::new()];
        let mut used = 0usize;
        for (i, (text, style, _)) in pieces.iter().enumerate() {
            if !keep[i] {
                continue;
            }
            let w = text.width();
            if lines.last().is_some_and(|l| !l.is_empty()) && used + 3 + w > width {
                lines.push(Vec::new());
                used = 0;
            }
            if let Some(cur) = lines.last_mut() {
                if !cur.is_empty() {
                    cur.push(Span::styled(" · ", sep));
                    used += 3;
                }
                cur.push(Span::styled(text.clone(), *style));
                used += w;
            }
        }
        let fits = lines.len() <= max_lines;
        let droppable = (0..pieces.len())
            .filter(|&i| keep[i] && pieces[i].2 > 0)
            .max_by_key(|&i| (pieces[i].2, i));
        match (fits, droppable) {
            (false, Some(i)) => keep[i] = false,
            _ => {
                lines.truncate(max_lines);
                return lines.into_iter().map(Line::from).collect();
            }
        }
    }
}

/// The stats line of a pane, everything on one line (the pane itself lays
/// its header out by priority: see [`pane_header`]).
pub fn stats_line(app: &App, p: &Pane, now: Instant) -> Line<'static> {
    let pieces = stat_pieces(app, p, now);
    pack(&pieces, usize::MAX / 4, 1, app.theme.dim)
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// Shorten a name to `w` columns: the whole name, else the model part
/// (after the provider), else cut with `…`.
fn short_name(name: &str, w: usize) -> String {
    if name.width() <= w {
        return name.to_string();
    }
    let model = name.split_once('/').map_or(name, |(_, m)| m);
    if model.width() <= w {
        return model.to_string();
    }
    fit(model, w).trim_end().to_string()
}

/// A pane's header: the border title (name and state, the state never cut)
/// and the lines under it (figures, then notes). Narrow panes drop figures
/// by priority; a focused pane, or one with room, takes more lines so that
/// nothing is lost; the cost is never dropped.
pub fn pane_header(
    app: &App,
    p: &Pane,
    width: u16,
    body_rows: u16,
    focused: bool,
) -> (Line<'static>, Vec<Line<'static>>) {
    let t = &app.theme;
    let w = width.saturating_sub(2) as usize;
    let name = app
        .panes
        .iter()
        .position(|q| std::ptr::eq(q, p))
        .map(|i| app.pane_name(i))
        .unwrap_or_else(|| p.credited());
    let (state, reason) = match &p.state {
        PaneState::Retrying { reason, .. } => {
            let full = p.state.label(app.now);
            let short = full
                .split_once(" (")
                .map_or(full.clone(), |(a, _)| a.to_string());
            (short, (!reason.is_empty()).then(|| reason.clone()))
        }
        s => (s.label(app.now), None),
    };
    // " name · state ": the state whole, the name what is left (at least
    // eight columns: else the state's short form).
    let state = if state.width() + 5 + 8 > w {
        p.state.short_label(app.now)
    } else {
        state
    };
    let fixed = state.width() + 5;
    let shown = short_name(&name, w.saturating_sub(fixed).max(1));
    let cut = shown != name;
    let mut title = vec![
        Span::styled(format!(" {shown} "), t.title),
        Span::styled("· ", t.dim),
        Span::styled(format!("{state} "), state_style(t, &p.state)),
    ];
    let mut used = shown.width() + fixed;
    // Notes: on the title when they fit, else under the figures.
    let mut notes: Vec<Piece> = Vec::new();
    if cut && focused {
        notes.push((name.clone(), t.title, 1));
    }
    if let Some(r) = reason {
        notes.push((r, t.warn, 2));
    }
    // A routing note names models: not while blind.
    if let Some(n) = p.note.as_ref().filter(|_| !app.blind_hidden()) {
        notes.push((n.clone(), t.warn, 2));
    }
    if p.scroll.is_some() {
        notes.push(("scrolled".into(), t.dim, 5));
    }
    if p.read_only {
        notes.push(("read-only".into(), t.dim, 5));
    }
    let mut rest: Vec<Piece> = Vec::new();
    for n in notes {
        let nw = n.0.width() + 3;
        if rest.is_empty() && used + nw <= w && !(cut && n.0 == name) {
            title.push(Span::styled("· ", t.dim));
            title.push(Span::styled(format!("{} ", n.0), n.1));
            used += nw;
        } else {
            rest.push(n);
        }
    }
    let mut pieces = stat_pieces(app, p, app.now);
    pieces.extend(rest);
    let max_lines = if focused {
        3
    } else if body_rows >= 8 {
        2
    } else {
        1
    };
    (Line::from(title), pack(&pieces, w, max_lines, t.dim))
}

/// Draw one pane into `r`.
pub fn draw_pane(f: &mut Frame<'_>, app: &App, p: &Pane, r: Rect, focused: bool) {
    let t = &app.theme;
    let block = Block::bordered()
        .border_type(if focused {
            BorderType::Thick
        } else {
            BorderType::Plain
        })
        .border_style(if focused { t.border_focused } else { t.border });
    let (title, header) = pane_header(app, p, r.width, pane_body(r).height, focused);
    let block = block.title(title);
    let inner = block.inner(r);
    f.render_widget(block, r);
    if inner.height == 0 || inner.width == 0 {
        return;
    }
    let head_h = (header.len() as u16).min(inner.height);
    let stats = Rect {
        height: head_h,
        ..inner
    };
    f.render_widget(Paragraph::new(header), stats);
    let body = Rect {
        y: inner.y + head_h,
        height: inner.height - head_h,
        ..inner
    };
    if body.height == 0 || body.width == 0 {
        return;
    }
    let h = body.height as usize;
    let total = p.doc.total_lines(app.show_thinking);
    let max_top = total.saturating_sub(h);
    let top = p.scroll.map(|s| s.min(max_top)).unwrap_or(max_top);
    let mut lines = p.doc.visible(top, h, app.show_thinking);
    let nothing_yet = p.answer.is_empty() && p.thinking.is_empty();
    if p.state.in_flight() && nothing_yet && lines.len() < h {
        let label = p.state.label(app.now);
        let short = label.split_once(" (").map_or(label.as_str(), |(a, _)| a);
        lines.push(Line::styled(format!("{short}…"), t.dim));
    } else if p.state == PaneState::Streaming && p.scroll.is_none() {
        // A cursor where the text grows, when the last line has room for it.
        if let Some(last) = lines.last_mut() {
            if last.width() < body.width as usize {
                last.spans.push(Span::styled("▌", t.active));
            }
        }
    }
    f.render_widget(Paragraph::new(lines).style(t.text), body);
    if total > h {
        // A one-cell position mark on the right border.
        let pos = (top * h.saturating_sub(1))
            .checked_div(max_top)
            .unwrap_or(0);
        let y = body.y + pos as u16;
        let x = r.x + r.width.saturating_sub(1);
        if let Some(cell) = f.buffer_mut().cell_mut((x, y)) {
            cell.set_symbol("┃");
            cell.set_style(if focused { t.border_focused } else { t.dim });
        }
    }
}

fn projection_text(app: &App) -> (String, String) {
    let prompt = app.prompt_text();
    if prompt.trim().is_empty() || app.panes.is_empty() {
        return (String::new(), String::new());
    }
    match app.current_projection() {
        Some(p) if !p.targets.is_empty() => {
            let tok = p.targets.iter().map(|t| t.input_tokens).max().unwrap_or(0);
            let exact = p.targets.iter().all(|t| t.input_exact);
            let expected = match app.expected_cost(p) {
                Some(e) => format!("~{} ", format_usd(Some(e))),
                None => String::new(),
            };
            let bound = p.display();
            let cost = if expected.is_empty() {
                format!("next send {bound}")
            } else {
                format!("next send {expected}({bound})")
            };
            (format!("{}{tok} tok", if exact { "" } else { "~" }), cost)
        }
        Some(_) => (String::new(), "next send ≤ ?".into()),
        None => (
            format!("~{} tok", crate::engine::tokens::quick_estimate(&prompt)),
            "next send …".into(),
        ),
    }
}

fn draw_editor(f: &mut Frame<'_>, app: &App, r: Rect) {
    if r.width == 0 || r.height == 0 {
        return;
    }
    let t = &app.theme;
    let focused = app.focus == Focus::Editor;
    let (tok, cost) = projection_text(app);
    let mut title = vec![Span::styled(" prompt ", t.title)];
    if !tok.is_empty() {
        title.push(Span::styled(format!("· {tok} "), t.dim));
    }
    if !cost.is_empty() {
        title.push(Span::styled(format!("· {cost} "), t.dim));
    }
    let block = Block::bordered()
        .border_type(if focused {
            BorderType::Thick
        } else {
            BorderType::Plain
        })
        .border_style(if focused { t.border_focused } else { t.border })
        .title(Line::from(title));
    let inner = block.inner(r);
    f.render_widget(block, r);
    let n = app.panes.len();
    let placeholder = format!(
        "Type a prompt · {} sends it to {n} target{}",
        app.keys.short(Action::Send),
        if n == 1 { "" } else { "s" }
    );
    f.render_widget(
        super::editor::WrappedEditor {
            lines: app.editor.lines(),
            cursor: app.editor.cursor(),
            style: t.text,
            cursor_style: focused.then_some(t.text),
            placeholder: Some((placeholder, t.dim)),
        },
        inner,
    );
}

fn draw_ledger(f: &mut Frame<'_>, app: &App, r: Rect) {
    if r.width == 0 || r.height == 0 {
        return;
    }
    let t = &app.theme;
    let rows = app.live_ledger();
    let all: Tally = rows.iter().map(|r| &r.tally).sum();
    let total = all.cost_usd;
    let unknown = all.unpriced > 0;
    let priced = all.priced > 0;
    let total_s = if unknown && !priced {
        "$?".to_string()
    } else if unknown {
        format!("{} + ?", format_usd(Some(total)))
    } else {
        format_usd(Some(total))
    };
    let focused = app.focus == Focus::Ledger;
    let details = if r.height < 3 {
        format!("· {} for details ", app.keys.short(Action::FocusPrev))
    } else {
        String::new()
    };
    let block = Block::bordered()
        .border_type(if focused {
            BorderType::Thick
        } else {
            BorderType::Plain
        })
        .border_style(if focused { t.border_focused } else { t.border })
        .title(Line::from(vec![
            Span::styled(" ledger ", t.title),
            Span::styled(
                format!(
                    "· session {total_s} · {} send{} ",
                    app.sends,
                    if app.sends == 1 { "" } else { "s" }
                ),
                t.dim,
            ),
            Span::styled(details, t.dim),
        ]));
    let inner = block.inner(r);
    f.render_widget(block, r);
    if inner.width == 0 || inner.height == 0 {
        return;
    }
    let w = inner.width as usize;
    // Columns: in out cached reas cost src req err; the narrow form drops cached and reas.
    // While blind the cache and reasoning columns would be tells.
    let wide = w >= 66 && !app.blind_hidden();
    // The cost column fits its widest figure (`$0.00042+?` is ten wide).
    let cost_of = |r: &LedgerRow| {
        let t = &r.tally;
        if t.unpriced > 0 && t.priced == 0 {
            "$?".to_string()
        } else if t.unpriced > 0 {
            format!("{}+?", format_usd(Some(t.cost_usd)))
        } else {
            format_usd(Some(t.cost_usd))
        }
    };
    let all_cost = format_usd(Some(total)).width() + 2;
    let cw = rows
        .iter()
        .map(|r| cost_of(r).width())
        .chain(std::iter::once(all_cost))
        .max()
        .unwrap_or(0)
        .max(9)
        + 1;
    let fixed = if wide {
        7 + 7 + 7 + 6 + cw + 2 + 4 + 4
    } else {
        7 + 7 + cw + 2 + 4 + 4
    };
    let name_w = w.saturating_sub(fixed).max(6);
    let header = if wide {
        format!(
            "{}{:>7}{:>7}{:>7}{:>6}{:>cw$}{:>2}{:>4}{:>4}",
            fit("target", name_w),
            "in",
            "out",
            "cached",
            "reas",
            "cost",
            "",
            "req",
            "err"
        )
    } else {
        format!(
            "{}{:>7}{:>7}{:>cw$}{:>2}{:>4}{:>4}",
            fit("target", name_w),
            "in",
            "out",
            "cost",
            "",
            "req",
            "err"
        )
    };
    let mut lines = vec![Line::styled(header, t.dim.add_modifier(Modifier::BOLD))];
    let n = |x: u64| -> String {
        if x >= 10_000_000 {
            format!("{}M", x / 1_000_000)
        } else if x >= 100_000 {
            format!("{}k", x / 1000)
        } else {
            x.to_string()
        }
    };
    let mut shown: Vec<(&LedgerRow, bool)> = rows
        .iter()
        .skip(app.ledger_scroll)
        .map(|r| (r, false))
        .collect();
    let total_row = (rows.len() > 1).then(|| LedgerRow {
        target: "total".into(),
        tally: all,
        ..Default::default()
    });
    if let Some(t) = &total_row {
        shown.push((t, true));
    }
    for (row, is_total) in shown {
        let cost = cost_of(row);
        let shown_name = if is_total {
            row.target.clone()
        } else {
            app.ledger_name(row)
        };
        // While blind, cost, cache and reasoning figures would tell who is who.
        let hidden = !is_total && app.ledger_hidden(&row.asked);
        let out = if hidden {
            // Reasoning counts as output: without it, no model stands out.
            n(row
                .tally
                .usage
                .output_tokens
                .saturating_sub(row.tally.usage.reasoning_tokens))
        } else {
            n(row.tally.usage.output_tokens)
        };
        let (cost, cached, reas) = if hidden {
            ("–".to_string(), "–".to_string(), "–".to_string())
        } else {
            (
                cost,
                n(row.tally.usage.cached_input_tokens),
                n(row.tally.usage.reasoning_tokens),
            )
        };
        let text = if wide {
            format!(
                "{}{:>7}{:>7}{:>7}{:>6}{:>cw$}",
                fit(&shown_name, name_w),
                n(row.tally.usage.input_tokens),
                out,
                cached,
                reas,
                cost
            )
        } else {
            format!(
                "{}{:>7}{:>7}{:>cw$}",
                fit(&shown_name, name_w),
                n(row.tally.usage.input_tokens),
                out,
                cost
            )
        };
        let mark_style = match row.tally.mark() {
            "✓" => t.ok,
            _ => t.warn,
        };
        let err_style = if row.tally.errors > 0 {
            t.error
        } else {
            t.text
        };
        let text_style = if is_total {
            t.text.add_modifier(Modifier::BOLD)
        } else {
            t.text
        };
        lines.push(Line::from(vec![
            Span::styled(text, text_style),
            Span::styled(
                format!(
                    " {}",
                    // `+?` already says part is unknown: no second mark.
                    if row.tally.unpriced > 0 || hidden {
                        " "
                    } else {
                        row.tally.mark()
                    }
                ),
                mark_style,
            ),
            Span::styled(format!("{:>4}", row.tally.requests), t.text),
            Span::styled(format!("{:>4}", row.tally.errors), err_style),
        ]));
    }
    if rows.is_empty() {
        lines.push(Line::styled("no requests yet", t.dim));
    }
    f.render_widget(Paragraph::new(lines), inner);
}

fn hints(app: &App) -> Vec<(String, &'static str)> {
    let k = |a| app.keys.short(a);
    match (&app.overlay, app.focus) {
        (Overlay::History(h), _) if h.open.is_some() => vec![
            (k(Action::Cancel), "back"),
            (k(Action::FocusNext), "next pane"),
            ("j/k".into(), "scroll"),
            (k(Action::Copy), "copy"),
        ],
        (Overlay::History(_), _) => vec![
            ("↑/↓".into(), "select"),
            ("Enter".into(), "open read-only"),
            ("Esc".into(), "close"),
        ],
        (Overlay::Consensus, _) => {
            let mut v = vec![
                ("←/→".into(), "tabs"),
                ("j/k".into(), "scroll"),
                ("[ ] { }".into(), "diff panes"),
            ];
            if app.blind_hidden() {
                v.insert(0, ("Shift+letter".into(), "vote"));
                v.insert(1, ("=".into(), "tie"));
            }
            v.push((k(Action::Judge), "judge"));
            v.push(("Esc".into(), "close"));
            v
        }
        (Overlay::Settings, _) => vec![
            ("↑/↓".into(), "row"),
            ("←/→".into(), "change"),
            ("Enter".into(), "edit"),
            ("Del".into(), "unset"),
            ("Esc".into(), "close"),
        ],
        (Overlay::Picker(_), _) => vec![
            ("type".into(), "filter"),
            ("Space/Enter".into(), "toggle"),
            ("Esc".into(), "apply"),
        ],
        (_, Focus::Pane(_)) => vec![
            (k(Action::Help), "help"),
            (k(Action::CancelPane), "cancel"),
            (k(Action::RetryPane), "retry"),
            (k(Action::Zoom), "zoom"),
            (k(Action::Copy), "copy"),
            (k(Action::Continue), "continue"),
            ("j/k".into(), "scroll"),
            (k(Action::FocusNext), "focus"),
            (k(Action::Consensus), "consensus"),
            (k(Action::Diff), "diff"),
            (k(Action::Judge), "judge"),
            (k(Action::Blind), "blind"),
            (k(Action::Repeat), "repeat"),
        ],
        (_, focus) => {
            // In the editor a letter types itself: show keys that work there.
            let typing = focus == Focus::Editor;
            let kt = |a| {
                if typing {
                    app.keys.short_typing(a)
                } else {
                    Some(app.keys.short(a))
                }
            };
            let mut v = Vec::new();
            let mut add = |a, what| {
                if let Some(key) = kt(a) {
                    v.push((key, what));
                }
            };
            add(Action::Help, "help");
            if app.in_flight() {
                add(Action::CancelAll, "cancel all");
            }
            add(Action::Send, "send");
            add(Action::Newline, "newline");
            add(Action::FocusNext, "focus");
            add(Action::Targets, "targets");
            add(Action::Settings, "settings");
            add(Action::Quit, "quit");
            add(Action::Rerun, "rerun");
            add(Action::Export, "export");
            add(Action::History, "history");
            add(Action::Blind, "blind");
            add(Action::Repeat, "repeat");
            v
        }
    }
}

fn draw_status(f: &mut Frame<'_>, app: &App, r: Rect) {
    if r.width == 0 || r.height == 0 {
        return;
    }
    let t = &app.theme;
    let (_, proj) = projection_text(app);
    let mut next = Vec::new();
    if app.cons.blind_next {
        next.push("blind".to_string());
    }
    if app.cons.next_repeat() > 1 {
        next.push(format!("×{}", app.cons.next_repeat()));
    }
    let knobs = app.settings.summary();
    if !knobs.is_empty() {
        next.push(knobs);
    }
    let proj = match (next.is_empty(), proj.is_empty()) {
        (true, _) => proj,
        (false, true) => format!("next: {}", next.join(" ")),
        (false, false) => format!("next: {} · {proj}", next.join(" ")),
    };
    let right = if app.budget_set && !proj.is_empty() {
        format!("{proj} · budget on ")
    } else if proj.is_empty() {
        String::new()
    } else {
        format!("{proj} ")
    };
    let avail = (r.width as usize).saturating_sub(right.width() + 1);
    let mut spans: Vec<Span<'static>> = vec![Span::raw(" ")];
    let mut used = 1usize;
    if let Some(msg) = app.flash() {
        spans.push(Span::styled(
            fit(msg, avail.saturating_sub(1)).trim_end().to_string(),
            t.warn,
        ));
    } else {
        for (i, (key, what)) in hints(app).into_iter().enumerate() {
            let piece_w = key.width() + 1 + what.width() + if i > 0 { 3 } else { 0 };
            if used + piece_w > avail {
                break;
            }
            if i > 0 {
                spans.push(Span::styled(" · ", t.dim));
            }
            spans.push(Span::styled(key, t.key));
            spans.push(Span::styled(format!(" {what}"), t.status));
            used += piece_w;
        }
    }
    f.render_widget(Paragraph::new(Line::from(spans)).style(t.status), r);
    if !right.is_empty() && (right.width() as u16) < r.width {
        let w = right.width() as u16;
        let rr = Rect {
            x: r.x + r.width - w,
            width: w,
            ..r
        };
        f.render_widget(Paragraph::new(Span::styled(right, t.status)), rr);
    }
}

fn overlay_block<'a>(t: &Theme, title: &'a str) -> Block<'a> {
    Block::bordered()
        .border_type(BorderType::Rounded)
        .border_style(t.border_focused)
        .title(Span::styled(format!(" {title} "), t.title))
        .style(t.base)
}

fn draw_help(f: &mut Frame<'_>, app: &App, area: Rect, top: u16) {
    let t = &app.theme;
    let lines = help::lines(&app.keys, &app.theme);
    let (r, total, max) = help::geometry(&app.keys, &app.theme, area);
    let room = r.height.saturating_sub(2);
    let top = top.min(max);
    let below = total.saturating_sub(top + room);
    let title = match (top > 0, below > 0) {
        (false, false) => "keys".to_string(),
        (_, true) => format!("keys · {below} more below · j/k scroll"),
        (true, false) => format!("keys · {top} above · k scrolls up"),
    };
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines)
            .block(overlay_block(t, &title))
            .wrap(Wrap { trim: false })
            .scroll((top, 0)),
        r,
    );
}

fn draw_picker(f: &mut Frame<'_>, app: &App, p: &Picker, area: Rect) {
    let t = &app.theme;
    let r = centered(area, 64, area.height.saturating_sub(4).clamp(3, 24));
    f.render_widget(Clear, r);
    let block = overlay_block(t, "targets");
    let inner = block.inner(r);
    f.render_widget(block, r);
    if inner.height == 0 {
        return;
    }
    let on = p.items.iter().filter(|(_, on)| *on).count();
    let mut lines = vec![Line::from(vec![
        Span::styled("filter › ", t.dim),
        Span::styled(p.filter.clone(), t.text),
        Span::styled("█", t.dim),
        Span::styled(format!("   {on} on"), t.dim),
    ])];
    let list = p.filtered();
    let room = (inner.height as usize).saturating_sub(1);
    let start = p.cursor.saturating_sub(room.saturating_sub(1));
    for (row, &i) in list.iter().enumerate().skip(start).take(room) {
        let (name, sel) = &p.items[i];
        let mark = if *sel { "[x] " } else { "[ ] " };
        let style = if row == p.cursor { t.selection } else { t.text };
        let mut spans = vec![
            Span::styled(mark, if *sel { t.ok } else { t.dim }),
            Span::styled(name.clone(), style),
        ];
        if app.lacks_key(name) {
            spans.push(Span::styled("  no key", t.warn));
        }
        lines.push(Line::from(spans));
    }
    if list.is_empty() {
        lines.push(Line::styled("no match · Enter adds it as typed", t.dim));
    }
    f.render_widget(Paragraph::new(lines), inner);
}

fn draw_confirm(f: &mut Frame<'_>, app: &App, c: &Confirm, area: Rect) {
    let t = &app.theme;
    let (title, msg) = match c {
        Confirm::Quit => (
            "quit?",
            "Runs are in flight. Quit and cancel them?".to_string(),
        ),
        Confirm::Budget(why) => ("budget", format!("{why}\n\nSend anyway?")),
    };
    // One Line per line of the message: a newline inside a span is not a line break.
    let mut text: Vec<Line<'_>> = msg
        .split('\n')
        .map(|l| Line::styled(l.to_string(), t.text))
        .collect();
    text.push(Line::default());
    text.push(Line::from(vec![
        Span::styled("y", t.key),
        Span::styled(" yes  ", t.text),
        Span::styled("n", t.key),
        Span::styled(" no", t.text),
    ]));
    let w = area.width.min(72);
    let inner_w = w.saturating_sub(2).max(1) as usize;
    let rows: usize = text
        .iter()
        .map(|l| l.width().div_ceil(inner_w).max(1))
        .sum();
    let r = centered(area, w, rows as u16 + 2);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(text)
            .block(overlay_block(t, title))
            .wrap(Wrap { trim: false }),
        r,
    );
}

fn draw_history(f: &mut Frame<'_>, app: &App, h: &HistoryView, area: Rect) {
    let t = &app.theme;
    if area.width == 0 || area.height == 0 {
        return;
    }
    f.render_widget(Clear, area);
    if let Some(panes) = &h.open {
        let rects = layout::grid(area, panes.len());
        for (i, (p, r)) in panes.iter().zip(rects).enumerate() {
            draw_pane(f, app, p, r, i == h.focus);
        }
        if panes.is_empty() {
            f.render_widget(
                Paragraph::new("this run has no requests").style(t.dim),
                area,
            );
        }
        return;
    }
    let block = overlay_block(t, "history · past runs from the ledger");
    let inner = block.inner(area);
    f.render_widget(block, area);
    let mut lines = Vec::new();
    match &h.runs {
        None => lines.push(Line::styled("loading…", t.dim)),
        Some(runs) if runs.is_empty() => {
            lines.push(Line::styled(
                h.error
                    .clone()
                    .unwrap_or_else(|| "no runs recorded yet".into()),
                t.dim,
            ));
        }
        Some(runs) => {
            let room = inner.height as usize;
            let start = h.selected.saturating_sub(room.saturating_sub(1));
            for (i, run) in runs.iter().enumerate().skip(start).take(room) {
                let tally = Tally::of_rows(&run.rows);
                let (cost, unknown, failed) = (tally.cost_usd, tally.unpriced > 0, tally.failed());
                let when: String = run
                    .created_at
                    .chars()
                    .take(19)
                    .collect::<String>()
                    .replace('T', " ");
                let prompt = run
                    .prompt
                    .clone()
                    .or_else(|| run.rows.iter().find_map(|r| r.prompt.clone()))
                    .unwrap_or_else(|| "(prompt not stored)".into());
                let first = prompt.lines().next().unwrap_or("").to_string();
                let cost_s = format!(
                    "{}{}",
                    format_usd(Some(cost)),
                    if unknown { "+?" } else { "" }
                );
                let n = run.rows.len();
                let what = format!(
                    "{n} target{}{}",
                    if n == 1 { "" } else { "s" },
                    if failed > 0 {
                        format!(", {failed} failed")
                    } else {
                        String::new()
                    }
                );
                let meta = format!("{when}  {cost_s:>10}  {what:<22}  ");
                let style = if i == h.selected { t.selection } else { t.text };
                let w = inner.width as usize;
                let rest = w.saturating_sub(meta.width());
                lines.push(Line::from(vec![
                    Span::styled(meta, if i == h.selected { t.selection } else { t.dim }),
                    Span::styled(fit(&first, rest), style),
                ]));
            }
        }
    }
    f.render_widget(Paragraph::new(lines), inner);
}

/// The consensus view over the panes' report.
fn draw_consensus(f: &mut Frame<'_>, app: &App, area: Rect) {
    use super::consensus::ConsensusView;
    let t = &app.theme;
    // Room for the heat map of every pane, or the diff, without covering the whole screen.
    let rows = (app.cons.report.as_ref().map_or(0, |r| r.len()) as u16).saturating_add(14);
    let r = centered(
        area,
        area.width.saturating_sub(4).min(110),
        area.height.saturating_sub(2).min(rows.max(20)),
    );
    if r.width == 0 || r.height == 0 {
        return;
    }
    let k = |a| app.keys.short(a);
    let title = format!(
        " consensus · ←/→ tabs · {} judge · Esc close ",
        k(Action::Judge)
    );
    let block = Block::bordered()
        .border_type(BorderType::Rounded)
        .border_style(t.border_focused)
        .title(Span::styled(title, t.title))
        .style(t.base);
    f.render_widget(Clear, r);
    let c = &app.cons;
    let mut state = c.view.borrow_mut();
    let view = match &c.report {
        Some(rep) => ConsensusView::new(rep),
        None => ConsensusView::empty(),
    };
    f.render_stateful_widget(
        view.blind(c.blind.as_ref())
            .leaderboard(c.board.as_ref())
            .styles(&c.styles)
            .block(block),
        r,
        &mut state,
    );
}

/// The bar under the panes: waiting while answers stream, then the verdict.
fn draw_summary(f: &mut Frame<'_>, app: &App, r: Rect) {
    use super::consensus::SummaryLine;
    let st = &app.cons.styles;
    let (done, total) = app.answer_progress();
    let line = match (&app.cons.report, done == total) {
        (Some(rep), true) => SummaryLine::new(&rep.consensus).styles(st).line(),
        _ => SummaryLine::waiting(done, total).styles(st).line(),
    };
    let mut spans = vec![Span::raw(" ")];
    spans.extend(line.spans);
    let mut extra = Vec::new();
    if app.blind_hidden() {
        extra.push("blind: vote in the consensus view".to_string());
    }
    if let Some(rp) = &app.cons.repeat {
        extra.push(format!("{} runs each", rp.n));
    }
    if done == total {
        extra.push(format!("{} details", app.keys.short(Action::Consensus)));
    }
    for e in extra {
        spans.push(Span::styled(" · ", st.dim));
        spans.push(Span::styled(e, st.dim));
    }
    f.render_widget(Paragraph::new(Line::from(spans)).style(app.theme.base), r);
}
