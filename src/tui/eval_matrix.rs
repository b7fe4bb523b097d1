//! The eval matrix: `quorum eval view [RUN_ID]` opens an eval run from the ledger as
//! cases × targets (pass/fail and cost per cell, agreement and cost per case). Enter
//! drills into a case: every target's answer side by side, the selected one
//! word-diffed against the first target's, and why each failed.

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell as TCell, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

use crate::app::GlobalFlags;
use crate::engine::consensus::{word_diff, DiffOp};
use crate::engine::eval::CaseOutcome;
use crate::engine::Books;
use crate::shared::exit::{EXIT_OK, EXIT_USAGE};

/// The view's state.
#[derive(Debug, Clone)]
pub struct Matrix {
    /// Eval run id.
    pub id: String,
    /// The finished cases, in suite order.
    pub cases: Vec<CaseOutcome>,
    /// Target labels (columns).
    pub targets: Vec<String>,
    /// Selected case.
    pub row: usize,
    /// Selected target.
    pub col: usize,
    /// Showing the selected case's answers.
    pub detail: bool,
}

impl Matrix {
    /// A matrix of `cases`.
    pub fn new(id: String, mut cases: Vec<CaseOutcome>) -> Matrix {
        cases.sort_by_key(|c| c.index);
        let mut targets: Vec<String> = Vec::new();
        for c in &cases {
            for cell in &c.cells {
                if !targets.contains(&cell.target) {
                    targets.push(cell.target.clone());
                }
            }
        }
        Matrix {
            id,
            cases,
            targets,
            row: 0,
            col: 0,
            detail: false,
        }
    }

    /// Handle a key; `false` to quit.
    pub fn key(&mut self, code: KeyCode) -> bool {
        let rows = self.cases.len().max(1);
        let cols = self.targets.len().max(1);
        match code {
            KeyCode::Char('q') => return false,
            KeyCode::Esc if !self.detail => return false,
            KeyCode::Esc | KeyCode::Backspace => self.detail = false,
            KeyCode::Enter => self.detail = !self.detail && !self.cases.is_empty(),
            KeyCode::Up | KeyCode::Char('k') => self.row = self.row.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => self.row = (self.row + 1).min(rows - 1),
            KeyCode::PageUp => self.row = self.row.saturating_sub(10),
            KeyCode::PageDown => self.row = (self.row + 10).min(rows - 1),
            KeyCode::Left | KeyCode::Char('h') => self.col = self.col.saturating_sub(1),
            KeyCode::Right | KeyCode::Char('l') => self.col = (self.col + 1).min(cols - 1),
            _ => {}
        }
        true
    }

    /// Draw the matrix or the selected case.
    pub fn draw(&self, f: &mut Frame<'_>) {
        let [main, foot] =
            Layout::vertical([Constraint::Min(3), Constraint::Length(1)]).areas(f.area());
        if self.detail {
            self.draw_detail(f, main);
        } else {
            self.draw_matrix(f, main);
        }
        let passed = self.cases.iter().filter(|c| c.pass).count();
        let cost: f64 = self.cases.iter().map(|c| c.cost_usd_known).sum();
        let help = if self.detail {
            "←→ target · Esc back · q quit"
        } else {
            "↑↓←→ move · Enter answers · q quit"
        };
        f.render_widget(
            Paragraph::new(format!(
                " {} · {passed}/{} cases passed · ${cost:.6} · {help}",
                self.id,
                self.cases.len()
            ))
            .style(Style::default().add_modifier(Modifier::REVERSED)),
            foot,
        );
    }

    fn draw_matrix(&self, f: &mut Frame<'_>, area: Rect) {
        let mut header = vec![TCell::from("case")];
        header.extend(self.targets.iter().map(|t| TCell::from(t.clone())));
        header.push(TCell::from("agree"));
        header.push(TCell::from("cost"));
        // Keep the selected row in view.
        let height = area.height.saturating_sub(3) as usize;
        let top = self.row.saturating_sub(height.saturating_sub(1));
        let rows = self
            .cases
            .iter()
            .enumerate()
            .skip(top)
            .take(height.max(1))
            .map(|(ri, c)| {
                let mut cells = vec![TCell::from(c.key.clone())];
                for (ti, t) in self.targets.iter().enumerate() {
                    let (text, style) = match c.cells.iter().find(|x| &x.target == t) {
                        Some(x) if x.pass => (
                            format!("✓ ${:.5}", x.cost_usd_known()),
                            Style::default().fg(Color::Green),
                        ),
                        Some(x) => (
                            format!("✗ ${:.5}", x.cost_usd_known()),
                            Style::default().fg(Color::Red),
                        ),
                        None => ("–".to_string(), Style::default()),
                    };
                    let style = if ri == self.row && ti == self.col {
                        style.add_modifier(Modifier::REVERSED)
                    } else {
                        style
                    };
                    cells.push(TCell::from(text).style(style));
                }
                cells.push(TCell::from(
                    c.agreement
                        .map(|a| format!("{:.0}%", a * 100.0))
                        .unwrap_or_else(|| "–".into()),
                ));
                cells.push(TCell::from(format!("${:.5}", c.cost_usd_known)));
                let row = Row::new(cells);
                if ri == self.row {
                    row.style(Style::default().add_modifier(Modifier::BOLD))
                } else {
                    row
                }
            });
        let mut widths = vec![Constraint::Min(12)];
        widths.extend(self.targets.iter().map(|_| Constraint::Min(12)));
        widths.push(Constraint::Length(6));
        widths.push(Constraint::Length(10));
        let table = Table::new(rows, widths)
            .header(Row::new(header).style(Style::default().add_modifier(Modifier::BOLD)))
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(" eval: cases × targets "),
            );
        f.render_widget(table, area);
    }

    fn draw_detail(&self, f: &mut Frame<'_>, area: Rect) {
        let Some(case) = self.cases.get(self.row) else {
            return;
        };
        let [top, panes] =
            Layout::vertical([Constraint::Length(3), Constraint::Min(3)]).areas(area);
        let agree = case
            .agreement
            .map(|a| format!("agreement {:.0}%", a * 100.0))
            .unwrap_or_else(|| "agreement –".into());
        f.render_widget(
            Paragraph::new(case.prompt.clone())
                .wrap(Wrap { trim: false })
                .block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(format!(" {} · {agree} ", case.key)),
                ),
            top,
        );
        let n = case.cells.len().max(1) as u32;
        let areas = Layout::horizontal((0..n).map(|_| Constraint::Ratio(1, n))).split(panes);
        let base = case
            .cells
            .first()
            .and_then(|c| c.runs.first())
            .map(|r| r.text.clone())
            .unwrap_or_default();
        for (i, (cell, rect)) in case.cells.iter().zip(areas.iter()).enumerate() {
            let answer = cell.runs.first().map(|r| r.text.as_str()).unwrap_or("");
            let selected = self.targets.get(self.col) == Some(&cell.target);
            let mut lines: Vec<Line> = Vec::new();
            if selected && i > 0 {
                // The selected answer against the first target's.
                let mut spans = Vec::new();
                for s in word_diff(&base, answer) {
                    let style = match s.op {
                        DiffOp::Equal => Style::default(),
                        DiffOp::Insert => Style::default().fg(Color::Green),
                        DiffOp::Delete => Style::default()
                            .fg(Color::Red)
                            .add_modifier(Modifier::CROSSED_OUT),
                    };
                    for (k, part) in s.text.split('\n').enumerate() {
                        if k > 0 {
                            lines.push(Line::from(std::mem::take(&mut spans)));
                        }
                        spans.push(Span::styled(part.to_string(), style));
                    }
                }
                lines.push(Line::from(spans));
            } else {
                lines.extend(answer.lines().map(|l| Line::from(l.to_string())));
            }
            let failures = cell.failures(case);
            if !failures.is_empty() {
                lines.push(Line::from(""));
                for w in failures {
                    lines.push(Line::styled(
                        format!("✗ {w}"),
                        Style::default().fg(Color::Red),
                    ));
                }
            }
            let mark = if cell.pass { "✓" } else { "✗" };
            let mut block = Block::default()
                .borders(Borders::ALL)
                .title(format!(" {mark} {} ", cell.target));
            if selected {
                block = block.border_style(Style::default().add_modifier(Modifier::BOLD));
            }
            f.render_widget(
                Paragraph::new(lines)
                    .wrap(Wrap { trim: false })
                    .block(block),
                *rect,
            );
        }
    }
}

/// `quorum eval view [RUN_ID]`: the newest eval run, or RUN_ID, as a matrix.
pub fn run(flags: &GlobalFlags, run_id: Option<String>) -> i32 {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        eprintln!("quorum: eval view needs a terminal; for scripts use `quorum eval SUITE --json`");
        return EXIT_USAGE;
    }
    let (engine, _settings) = match crate::app::load(flags) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("quorum: {e:#}");
            return EXIT_USAGE;
        }
    };
    let Books::On { ledger, .. } = engine.books().clone() else {
        eprintln!("quorum: eval view needs the ledger (it is off)");
        return EXIT_USAGE;
    };
    let loaded = ledger.wait().and_then(|l| {
        let r = l.eval_run(run_id.as_deref(), None)?;
        match r {
            Some(r) => Ok(Some((r.id.clone(), l.eval_cases(&r.id)?))),
            None => Ok(None),
        }
    });
    let (id, rows) = match loaded {
        Ok(Some(x)) => x,
        Ok(None) => {
            eprintln!("quorum: no eval run in the ledger");
            return EXIT_USAGE;
        }
        Err(e) => {
            eprintln!("quorum: {e}");
            return EXIT_USAGE;
        }
    };
    let cases: Vec<CaseOutcome> = rows
        .into_iter()
        .filter_map(|r| serde_json::from_str(&r.result).ok())
        .collect();
    let mut m = Matrix::new(id, cases);
    let mut guard = match super::terminal::TerminalGuard::enter() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("quorum: cannot set up the terminal: {e}");
            return EXIT_USAGE;
        }
    };
    loop {
        if guard.terminal().draw(|f| m.draw(f)).is_err() {
            break;
        }
        match event::read() {
            Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => {
                if k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL) {
                    break;
                }
                if !m.key(k.code) {
                    break;
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    guard.restore();
    EXIT_OK
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::eval::{Cell, RunAnswer};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn case(key: &str, i: usize, answers: &[(&str, bool, &str)]) -> CaseOutcome {
        CaseOutcome {
            key: key.into(),
            index: i,
            prompt: "What is 2+2?".into(),
            pass: answers.iter().all(|a| a.1),
            agreement: Some(0.5),
            checks: vec![],
            cells: answers
                .iter()
                .map(|(t, pass, text)| Cell {
                    target: t.to_string(),
                    pass: *pass,
                    runs: vec![RunAnswer {
                        run: 1,
                        text: text.to_string(),
                        error: None,
                        latency_ms: 1.0,
                        cost_usd: Some(0.001),
                        cached: false,
                        checks: vec![],
                    }],
                    checks: vec![],
                })
                .collect(),
            run_ids: vec![],
            cost_usd: Some(0.002),
            cost_usd_known: 0.002,
        }
    }

    fn screen(m: &Matrix) -> String {
        let mut t = Terminal::new(TestBackend::new(100, 20)).unwrap();
        t.draw(|f| m.draw(f)).unwrap();
        let buf = t.backend().buffer().clone();
        let mut s = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                s.push_str(buf[(x, y)].symbol());
            }
            s.push('\n');
        }
        s
    }

    #[test]
    fn matrix_then_answers_side_by_side() {
        let mut m = Matrix::new(
            "eval-1".into(),
            vec![
                case(
                    "sum",
                    0,
                    &[("mock/alpha", true, "4"), ("mock/contrarian", false, "5")],
                ),
                case(
                    "other",
                    1,
                    &[
                        ("mock/alpha", true, "yes"),
                        ("mock/contrarian", true, "yes"),
                    ],
                ),
            ],
        );
        let s = screen(&m);
        assert!(
            s.contains("mock/contrarian") && s.contains("✗ $0.00100"),
            "{s}"
        );
        assert!(s.contains("1/2 cases passed"), "{s}");
        assert!(m.key(KeyCode::Right));
        assert!(m.key(KeyCode::Enter));
        let s = screen(&m);
        assert!(
            s.contains("✗ mock/contrarian") && s.contains("✓ mock/alpha"),
            "{s}"
        );
        assert!(m.key(KeyCode::Esc));
        assert!(!m.detail);
        assert!(m.key(KeyCode::Down));
        assert_eq!(m.row, 1);
        assert!(!m.key(KeyCode::Char('q')));
    }
}
