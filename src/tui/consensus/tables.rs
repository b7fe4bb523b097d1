//! The leaderboard (win rate and Elo per model, from blind votes) and
//! repeat-N stability (distinct answers and self-agreement per model).

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::Widget;
use unicode_width::UnicodeWidthStr;

use super::text::{fit, pad, pad_left, render_lines, WrappedLine};
use super::{default_styles, ConsensusStyles, PaneNames};
use crate::engine::consensus::{Leaderboard, Stability};

/// One column of a text table.
struct Col {
    header: &'static str,
    width: usize,
    right: bool,
    /// Dropped first when the table is too wide: higher goes first; 0 never.
    drop: u8,
    /// Takes the room left, shrinks first (never below 6).
    flex: bool,
    cells: Vec<(String, Style)>,
}

impl Col {
    fn new(header: &'static str, right: bool, drop: u8, cells: Vec<(String, Style)>) -> Self {
        let width = cells
            .iter()
            .map(|c| c.0.width())
            .chain([header.width()])
            .max()
            .unwrap_or(1);
        Col {
            header,
            width,
            right,
            drop,
            flex: false,
            cells,
        }
    }

    fn flex(mut self) -> Self {
        self.flex = true;
        self
    }
}

const GAP: usize = 2;

fn table(mut cols: Vec<Col>, width: usize, st: &ConsensusStyles) -> Vec<WrappedLine> {
    let total = |cols: &[Col]| -> usize {
        cols.iter().map(|c| c.width).sum::<usize>() + GAP * cols.len().saturating_sub(1)
    };
    // Shrink the flexible column to a reasonable size, then drop columns,
    // then shrink it further.
    let shrink = |cols: &mut Vec<Col>, floor: usize| {
        let t = total(cols);
        if t > width {
            if let Some(f) = cols.iter_mut().find(|c| c.flex) {
                let over = t - width;
                f.width = f.width.saturating_sub(over).max(floor.min(f.width));
            }
        }
    };
    shrink(&mut cols, 16);
    while total(&cols) > width {
        let Some((i, _)) = cols
            .iter()
            .enumerate()
            .filter(|(_, c)| c.drop > 0)
            .max_by_key(|(i, c)| (c.drop, *i))
        else {
            break;
        };
        cols.remove(i);
    }
    shrink(&mut cols, 6);
    let rows = cols.first().map_or(0, |c| c.cells.len());
    let mut out = Vec::with_capacity(rows + 1);
    let cell = |c: &Col, s: &str| {
        if c.right {
            pad_left(s, c.width)
        } else {
            pad(s, c.width)
        }
    };
    let mut head = Vec::new();
    for (k, c) in cols.iter().enumerate() {
        if k > 0 {
            head.push(Span::raw(" ".repeat(GAP)));
        }
        head.push(Span::styled(cell(c, c.header), st.title));
    }
    out.push(WrappedLine {
        line: Line::from(head),
        changed: false,
    });
    for r in 0..rows {
        let mut spans = Vec::new();
        for (k, c) in cols.iter().enumerate() {
            if k > 0 {
                spans.push(Span::raw(" ".repeat(GAP)));
            }
            let (t, s) = &c.cells[r];
            spans.push(Span::styled(cell(c, t), *s));
        }
        out.push(WrappedLine {
            line: Line::from(spans),
            changed: false,
        });
    }
    out
}

/// `█████░░░░░` for `v` in 0..1.
fn bar(v: f64, width: usize) -> String {
    let v = if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let full = (v * width as f64).round() as usize;
    let mut s = "█".repeat(full);
    s.push_str(&"░".repeat(width - full));
    s
}

fn plain(text: String, st: Style) -> WrappedLine {
    WrappedLine {
        line: Line::styled(text, st),
        changed: false,
    }
}

// ---------------------------------------------------------------------------
// Leaderboard
// ---------------------------------------------------------------------------

/// Win rate and Elo per model, best first.
#[derive(Debug, Clone)]
pub struct LeaderboardTable<'a> {
    board: &'a Leaderboard,
    styles: &'a ConsensusStyles,
    scroll: usize,
}

impl<'a> LeaderboardTable<'a> {
    /// The table of `board` (from `engine::consensus::leaderboard`).
    pub fn new(board: &'a Leaderboard) -> Self {
        LeaderboardTable {
            board,
            styles: default_styles(),
            scroll: 0,
        }
    }

    /// The look.
    pub fn styles(mut self, styles: &'a ConsensusStyles) -> Self {
        self.styles = styles;
        self
    }

    /// First line shown.
    pub fn scroll(mut self, scroll: usize) -> Self {
        self.scroll = scroll;
        self
    }

    /// The lines at `width`.
    pub fn lines(&self, width: u16) -> Vec<WrappedLine> {
        let st = self.styles;
        let lb = self.board;
        if lb.rows.is_empty() {
            let what = match &lb.tag {
                Some(t) => format!("no votes tagged {t:?} yet"),
                None => "no votes yet".to_string(),
            };
            return vec![plain(
                format!("{what}: vote in a blind comparison to rank models"),
                st.dim,
            )];
        }
        let rows = &lb.rows;
        let cells = |f: &dyn Fn(usize) -> (String, Style)| (0..rows.len()).map(f).collect();
        let cols = vec![
            Col::new("#", true, 0, cells(&|i| ((i + 1).to_string(), st.dim))),
            Col::new(
                "model",
                false,
                0,
                cells(&|i| (rows[i].target.clone(), st.key)),
            )
            .flex(),
            Col::new(
                "elo",
                true,
                0,
                cells(&|i| (format!("{:.0}", rows[i].elo), st.text)),
            ),
            Col::new(
                "win rate",
                true,
                0,
                cells(&|i| {
                    let w = rows[i].win_rate;
                    (format!("{:.1}%", w * 100.0), st.heat.text_style(w))
                }),
            ),
            Col::new(
                "",
                false,
                4,
                cells(&|i| (bar(rows[i].win_rate, 10), st.bar)),
            ),
            Col::new(
                "wins",
                true,
                3,
                cells(&|i| (rows[i].wins.to_string(), st.agree)),
            ),
            Col::new(
                "ties",
                true,
                3,
                cells(&|i| (rows[i].ties.to_string(), st.text)),
            ),
            Col::new(
                "losses",
                true,
                3,
                cells(&|i| (rows[i].losses.to_string(), st.disagree)),
            ),
            Col::new(
                "votes",
                true,
                2,
                cells(&|i| (rows[i].votes.to_string(), st.dim)),
            ),
        ];
        let mut out = table(cols, width as usize, st);
        let tag = lb
            .tag
            .as_ref()
            .map(|t| format!(" tagged {t:?}"))
            .unwrap_or_default();
        let plural = if lb.votes == 1 { "" } else { "s" };
        let mut foot = format!("{} vote{plural}{tag}", lb.votes);
        if lb.skipped > 0 {
            foot.push_str(&format!(" ({} skipped as invalid)", lb.skipped));
        }
        foot.push_str(" · Elo from 1000, K 32 · a tie is half a win");
        out.push(plain(String::new(), st.dim));
        out.push(plain(foot, st.dim));
        out
    }
}

impl Widget for LeaderboardTable<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let area = area.intersection(buf.area);
        if area.is_empty() {
            return;
        }
        render_lines(&self.lines(area.width), self.scroll, area, buf);
    }
}

// ---------------------------------------------------------------------------
// Stability
// ---------------------------------------------------------------------------

/// Per model over N runs: distinct answers and self-agreement.
#[derive(Debug, Clone)]
pub struct StabilityTable<'a> {
    rows: &'a [Stability],
    names: Option<&'a PaneNames>,
    styles: &'a ConsensusStyles,
    scroll: usize,
}

impl<'a> StabilityTable<'a> {
    /// The table of `rows` (from `engine::consensus::stability`, one per pane).
    pub fn new(rows: &'a [Stability]) -> Self {
        StabilityTable {
            rows,
            names: None,
            styles: default_styles(),
            scroll: 0,
        }
    }

    /// Name row `i` by pane `i` of `names` (blind letters) instead of its label.
    pub fn names(mut self, names: Option<&'a PaneNames>) -> Self {
        self.names = names;
        self
    }

    /// The look.
    pub fn styles(mut self, styles: &'a ConsensusStyles) -> Self {
        self.styles = styles;
        self
    }

    /// First line shown.
    pub fn scroll(mut self, scroll: usize) -> Self {
        self.scroll = scroll;
        self
    }

    /// The lines at `width`.
    pub fn lines(&self, width: u16) -> Vec<WrappedLine> {
        let st = self.styles;
        let rows = self.rows;
        if rows.is_empty() {
            return vec![plain(
                "one run per model: repeat the prompt N times to see how stable each model is"
                    .into(),
                st.dim,
            )];
        }
        let name = |i: usize| match self.names {
            Some(n) if n.len() == rows.len() => n.full(i),
            _ => rows[i].label.clone(),
        };
        let cells = |f: &dyn Fn(usize) -> (String, Style)| (0..rows.len()).map(f).collect();
        let distinct_style = |s: &Stability| {
            if s.distinct <= 1 {
                st.agree
            } else {
                st.disagree
            }
        };
        let cols = vec![
            Col::new("model", false, 0, cells(&|i| (name(i), st.key))).flex(),
            Col::new(
                "runs",
                true,
                0,
                cells(&|i| (rows[i].runs.to_string(), st.text)),
            ),
            Col::new(
                "failed",
                true,
                3,
                cells(&|i| {
                    let f = rows[i].failed;
                    (f.to_string(), if f > 0 { st.failed } else { st.dim })
                }),
            ),
            Col::new(
                "distinct",
                true,
                0,
                cells(&|i| {
                    let s = &rows[i];
                    (
                        format!("{} of {}", s.distinct, s.answered),
                        distinct_style(s),
                    )
                }),
            ),
            Col::new(
                "self-agreement",
                true,
                0,
                cells(&|i| match rows[i].self_agreement {
                    Some(a) => (format!("{a:.2}"), st.heat.text_style(a)),
                    None => ("–".into(), st.dim),
                }),
            ),
            Col::new(
                "",
                false,
                4,
                cells(&|i| match rows[i].self_agreement {
                    Some(a) => (bar(a, 10), st.bar),
                    None => (String::new(), st.dim),
                }),
            ),
            Col::new(
                "mostly",
                false,
                5,
                cells(&|i| match &rows[i].majority_answer {
                    Some(a) => (format!("\"{}\"", fit(a, 30)), st.text),
                    None => ("–".into(), st.dim),
                }),
            ),
        ];
        let mut out = table(cols, width as usize, st);
        let n = rows.iter().map(|r| r.runs).max().unwrap_or(0);
        out.push(plain(String::new(), st.dim));
        out.push(plain(
            format!(
                "{n} runs each · distinct = answers that do not agree · self-agreement as in consensus"
            ),
            st.dim,
        ));
        out
    }
}

impl Widget for StabilityTable<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let area = area.intersection(buf.area);
        if area.is_empty() {
            return;
        }
        render_lines(&self.lines(area.width), self.scroll, area, buf);
    }
}
