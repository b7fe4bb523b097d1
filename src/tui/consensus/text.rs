//! Word wrapping of styled text and width-aware truncation, shared by the
//! consensus views. Wrapping is done once per (content, width) by callers
//! that cache, so a frame only pays for the visible lines.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::Widget;
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// A run of styled text; `mark` flags the lines it lands on (a diff change).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Piece {
    pub text: String,
    pub style: Style,
    pub mark: bool,
}

impl Piece {
    pub fn new(text: impl Into<String>, style: Style) -> Self {
        Piece {
            text: text.into(),
            style,
            mark: false,
        }
    }

    pub fn marked(text: impl Into<String>, style: Style) -> Self {
        Piece {
            text: text.into(),
            style,
            mark: true,
        }
    }
}

/// One screen line after wrapping.
#[derive(Debug, Clone, PartialEq)]
pub struct WrappedLine {
    /// What to draw.
    pub line: Line<'static>,
    /// Whether a marked piece (a diff change) is on it.
    pub changed: bool,
}

/// Tabs become four spaces; other control characters (but newlines) go, so
/// a stray escape in a model's answer cannot move the cursor.
pub(crate) fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\t' => out.push_str("    "),
            '\n' => out.push('\n'),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Split pieces at newlines into logical lines.
pub(crate) fn split_lines(pieces: impl IntoIterator<Item = Piece>) -> Vec<Vec<Piece>> {
    let mut lines: Vec<Vec<Piece>> = vec![Vec::new()];
    for p in pieces {
        let text = clean(&p.text);
        for (i, part) in text.split('\n').enumerate() {
            if i > 0 {
                lines.push(Vec::new());
            }
            if !part.is_empty() {
                if let Some(last) = lines.last_mut() {
                    last.push(Piece {
                        text: part.to_string(),
                        style: p.style,
                        mark: p.mark,
                    });
                }
            } else if p.mark && i > 0 {
                // A changed newline: the new line is part of the change.
                if let Some(last) = lines.last_mut() {
                    last.push(Piece {
                        text: String::new(),
                        style: p.style,
                        mark: true,
                    });
                }
            }
        }
    }
    lines
}

struct LineBuilder {
    spans: Vec<(String, Style)>,
    width: usize,
    changed: bool,
}

impl LineBuilder {
    fn new() -> Self {
        LineBuilder {
            spans: Vec::new(),
            width: 0,
            changed: false,
        }
    }

    fn push(&mut self, s: &str, style: Style, w: usize, mark: bool) {
        self.changed |= mark;
        match self.spans.last_mut() {
            Some((t, st)) if *st == style => t.push_str(s),
            _ => self.spans.push((s.to_string(), style)),
        }
        self.width += w;
    }

    /// End the line at a soft break: trailing spaces go.
    fn finish_soft(&mut self, out: &mut Vec<WrappedLine>) {
        while let Some((t, _)) = self.spans.last_mut() {
            let trimmed = t.trim_end().len();
            t.truncate(trimmed);
            if t.is_empty() {
                self.spans.pop();
            } else {
                break;
            }
        }
        self.finish(out);
    }

    fn finish(&mut self, out: &mut Vec<WrappedLine>) {
        let spans: Vec<Span<'static>> = self
            .spans
            .drain(..)
            .map(|(t, s)| Span::styled(t, s))
            .collect();
        out.push(WrappedLine {
            line: Line::from(spans),
            changed: self.changed,
        });
        self.width = 0;
        self.changed = false;
    }
}

/// Runs of whitespace and of other characters, in order.
fn tokens(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut prev_ws: Option<bool> = None;
    for (i, c) in s.char_indices() {
        let ws = c.is_whitespace();
        if prev_ws.is_some_and(|p| p != ws) {
            out.push(&s[start..i]);
            start = i;
        }
        prev_ws = Some(ws);
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// Word-wrap logical lines to `width` columns. Spaces at a soft break are
/// dropped; indentation after a hard newline is kept; a word wider than the
/// line is broken between characters. Every logical line gives at least
/// one screen line. Width 0 gives nothing.
pub(crate) fn wrap(logical: &[Vec<Piece>], width: usize) -> Vec<WrappedLine> {
    let mut out = Vec::new();
    if width == 0 {
        return out;
    }
    for line in logical {
        let mut b = LineBuilder::new();
        let mut soft = false;
        for p in line {
            if p.mark && p.text.is_empty() {
                b.changed = true;
            }
            for tok in tokens(&p.text) {
                let tw = tok.width();
                let is_ws = tok.chars().next().is_some_and(char::is_whitespace);
                if is_ws {
                    if soft && b.width == 0 {
                        continue;
                    }
                    if b.width + tw <= width {
                        b.push(tok, p.style, tw, p.mark);
                    } else {
                        if b.width > 0 {
                            b.finish_soft(&mut out);
                        }
                        soft = true;
                    }
                } else if b.width + tw <= width {
                    b.push(tok, p.style, tw, p.mark);
                } else if tw <= width {
                    b.finish_soft(&mut out);
                    soft = true;
                    b.push(tok, p.style, tw, p.mark);
                } else {
                    for ch in tok.chars() {
                        let cw = ch.width().unwrap_or(0);
                        if b.width + cw > width && b.width > 0 {
                            b.finish_soft(&mut out);
                            soft = true;
                        }
                        let mut tmp = [0u8; 4];
                        b.push(ch.encode_utf8(&mut tmp), p.style, cw, p.mark);
                    }
                }
            }
        }
        b.finish(&mut out);
    }
    out
}

/// `s` cut to `w` display columns, with `…` when cut.
pub(crate) fn fit(s: &str, w: usize) -> String {
    if s.width() <= w {
        return s.to_string();
    }
    if w == 0 {
        return String::new();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let cw = c.width().unwrap_or(0);
        if used + cw > w - 1 {
            break;
        }
        out.push(c);
        used += cw;
    }
    out.push('…');
    out
}

/// [`fit`], then padded with spaces to exactly `w` columns.
pub(crate) fn pad(s: &str, w: usize) -> String {
    let mut out = fit(s, w);
    let used = out.width();
    out.extend(std::iter::repeat_n(' ', w.saturating_sub(used)));
    out
}

/// [`fit`], then padded on the left to `w` columns.
pub(crate) fn pad_left(s: &str, w: usize) -> String {
    let f = fit(s, w);
    let used = f.width();
    let mut out: String = std::iter::repeat_n(' ', w.saturating_sub(used)).collect();
    out.push_str(&f);
    out
}

/// Draw `lines[scroll..]` into `area`, one per row, clipped to it.
pub(crate) fn render_lines(lines: &[WrappedLine], scroll: usize, area: Rect, buf: &mut Buffer) {
    let area = area.intersection(buf.area);
    for (row, l) in lines
        .iter()
        .skip(scroll)
        .take(area.height as usize)
        .enumerate()
    {
        let r = Rect::new(area.x, area.y + row as u16, area.width, 1);
        l.line.clone().render(r, buf);
    }
}

/// Draw one line at row `y` of `area` (if it is inside).
pub(crate) fn render_line(line: Line<'_>, area: Rect, y: u16, buf: &mut Buffer) {
    let area = area.intersection(buf.area);
    if y < area.height {
        line.render(Rect::new(area.x, area.y + y, area.width, 1), buf);
    }
}

/// Largest valid scroll offset for content of `len` lines in `height` rows.
pub(crate) fn max_scroll(len: usize, height: u16) -> usize {
    len.saturating_sub(height as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(lines: &[WrappedLine]) -> Vec<String> {
        lines.iter().map(|l| l.line.to_string()).collect()
    }

    #[test]
    fn wraps_at_words_and_keeps_indentation() {
        let logical = split_lines([Piece::new("    if x:\n  the quick brown fox", Style::new())]);
        let w = wrap(&logical, 10);
        assert_eq!(plain(&w), vec!["    if x:", "  the", "quick", "brown fox"]);
    }

    #[test]
    fn breaks_long_words_and_handles_zero_width() {
        let logical = split_lines([Piece::new("abcdefghij", Style::new())]);
        assert_eq!(plain(&wrap(&logical, 4)), vec!["abcd", "efgh", "ij"]);
        assert!(wrap(&logical, 0).is_empty());
        assert_eq!(plain(&wrap(&split_lines([]), 5)), vec![""]);
    }

    #[test]
    fn marks_follow_their_pieces_and_fit_truncates() {
        let logical = split_lines([
            Piece::new("same same ", Style::new()),
            Piece::marked("changed", Style::new()),
        ]);
        let w = wrap(&logical, 10);
        assert_eq!(plain(&w), vec!["same same", "changed"]);
        assert_eq!((w[0].changed, w[1].changed), (false, true));
        assert_eq!(fit("openai/gpt-4o", 6), "opena…");
        assert_eq!(pad("ab", 4), "ab  ");
        assert_eq!(pad_left("ab", 4), "  ab");
        assert_eq!(clean("a\tb\x1b[2J"), "a    b[2J");
    }
}
