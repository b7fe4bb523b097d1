//! The prompt editor as drawn: tui-textarea edits the text, this wraps it
//! (the textarea does not), keeps the cursor in view and draws it. A pasted
//! page of text is read as wrapped lines, not one line running off screen.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Widget};
use unicode_width::UnicodeWidthChar;

/// One visual row: logical line `line`, characters `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// Logical line.
    pub line: usize,
    /// First character.
    pub start: usize,
    /// One past the last character.
    pub end: usize,
}

/// Wrap `lines` at `width` columns, breaking after a space where one is near.
pub fn wrap(lines: &[String], width: usize) -> Vec<Row> {
    let width = width.max(1);
    let mut rows = Vec::new();
    for (li, l) in lines.iter().enumerate() {
        let chars: Vec<char> = l.chars().collect();
        let mut start = 0;
        if chars.is_empty() {
            rows.push(Row {
                line: li,
                start: 0,
                end: 0,
            });
            continue;
        }
        while start < chars.len() {
            let mut w = 0;
            let mut end = start;
            let mut last_space = None;
            while end < chars.len() {
                let cw = chars[end].width().unwrap_or(0);
                // Leave one column for the cursor at the end of a full row.
                if w + cw > width.saturating_sub(1).max(1) {
                    break;
                }
                w += cw;
                if chars[end] == ' ' {
                    last_space = Some(end);
                }
                end += 1;
            }
            if end < chars.len() {
                if let Some(sp) = last_space.filter(|sp| *sp > start) {
                    end = sp + 1;
                }
            }
            let end = end.max(start + 1);
            rows.push(Row {
                line: li,
                start,
                end,
            });
            start = end;
        }
    }
    rows
}

/// Visual rows of `lines` at `width` (for the editor's height).
pub fn row_count(lines: &[String], width: usize) -> usize {
    wrap(lines, width).len()
}

/// The visual row and column of the cursor `(line, col)`.
pub fn cursor_at(rows: &[Row], cursor: (usize, usize)) -> (usize, usize) {
    let (line, col) = cursor;
    let mut found = (0, 0);
    for (i, r) in rows.iter().enumerate() {
        if r.line != line {
            continue;
        }
        found = (i, col.saturating_sub(r.start));
        if col < r.end {
            break;
        }
    }
    found
}

/// The editor's text wrapped into `area`, scrolled so the cursor shows.
pub struct WrappedEditor<'a> {
    /// Logical lines.
    pub lines: &'a [String],
    /// Cursor (line, column in characters).
    pub cursor: (usize, usize),
    /// Text style.
    pub style: Style,
    /// Cursor style (None: not drawn).
    pub cursor_style: Option<Style>,
    /// Shown when empty.
    pub placeholder: Option<(String, Style)>,
}

impl Widget for WrappedEditor<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if area.width == 0 || area.height == 0 {
            return;
        }
        let empty = self.lines.iter().all(|l| l.is_empty());
        if empty {
            // After the cursor's cell, as the textarea drew it.
            if let Some((p, st)) = &self.placeholder {
                let r = Rect {
                    x: area.x + 1,
                    width: area.width - 1,
                    ..area
                };
                Paragraph::new(Line::styled(p.clone(), *st)).render(r, buf);
            }
        }
        let rows = wrap(self.lines, area.width as usize);
        let (crow, ccol) = cursor_at(&rows, self.cursor);
        let h = area.height as usize;
        let top = crow.saturating_sub(h - 1);
        if !empty {
            let text: Vec<Line<'static>> = rows
                .iter()
                .skip(top)
                .take(h)
                .map(|r| {
                    let s: String = self.lines[r.line]
                        .chars()
                        .skip(r.start)
                        .take(r.end - r.start)
                        .collect();
                    Line::styled(s, self.style)
                })
                .collect();
            Paragraph::new(text).render(area, buf);
        }
        if let Some(cs) = self.cursor_style {
            let r = rows[crow.min(rows.len().saturating_sub(1))];
            let before: usize = self.lines[r.line]
                .chars()
                .skip(r.start)
                .take(ccol)
                .map(|c| c.width().unwrap_or(0))
                .sum();
            let x = area.x + (before as u16).min(area.width - 1);
            let y = area.y + (crow - top) as u16;
            if let Some(cell) = buf.cell_mut((x, y)) {
                if cell.symbol().is_empty() {
                    cell.set_symbol(" ");
                }
                cell.set_style(cs.add_modifier(Modifier::REVERSED));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_at_spaces_and_finds_the_cursor() {
        let lines = vec!["one two three four".to_string(), String::new()];
        let rows = wrap(&lines, 10);
        let text: Vec<String> = rows
            .iter()
            .map(|r| {
                lines[r.line]
                    .chars()
                    .skip(r.start)
                    .take(r.end - r.start)
                    .collect()
            })
            .collect();
        assert_eq!(text, ["one two ", "three ", "four", ""]);
        assert_eq!(cursor_at(&rows, (0, 18)), (2, 4));
        assert_eq!(cursor_at(&rows, (0, 9)), (1, 1));
        assert_eq!(cursor_at(&rows, (1, 0)), (3, 0));
        // A word longer than the row is cut.
        assert_eq!(wrap(&["x".repeat(25)], 10).len(), 3);
    }
}
