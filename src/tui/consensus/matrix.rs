//! The agreement matrix as a heat map: one row and one column per pane,
//! cells coloured (or shaded) by the pair's score, with the score when the
//! cell is wide enough.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::Widget;
use unicode_width::UnicodeWidthStr;

use super::text::{fit, render_line};
use super::{default_styles, BlindState, ConsensusReport, ConsensusStyles, Heat, PaneNames};
use crate::engine::consensus::{AnswerStatus, Consensus, QuestionKind};

/// What the heat map shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatrixMetric {
    /// What the agreement score is built from: agreement on the extracted
    /// answer for closed questions (1 or 0), text similarity for open ones.
    #[default]
    Agreement,
    /// Text similarity: the mean of token F1 and the sequence ratio.
    Score,
    /// Token F1 (bag of words).
    TokenF1,
    /// Sequence ratio (order-aware).
    SequenceRatio,
}

impl MatrixMetric {
    /// The next metric (`m`).
    pub fn next(self) -> Self {
        match self {
            MatrixMetric::Agreement => MatrixMetric::Score,
            MatrixMetric::Score => MatrixMetric::TokenF1,
            MatrixMetric::TokenF1 => MatrixMetric::SequenceRatio,
            MatrixMetric::SequenceRatio => MatrixMetric::Agreement,
        }
    }

    /// The N×N values: `None` where a pane failed or was empty.
    pub fn values(self, c: &Consensus) -> Vec<Vec<Option<f64>>> {
        match self {
            MatrixMetric::Agreement => c.agreement_matrix(),
            MatrixMetric::Score => c.matrix(),
            MatrixMetric::TokenF1 | MatrixMetric::SequenceRatio => {
                let mut m = c.matrix();
                for p in &c.pairs {
                    let v = if self == MatrixMetric::TokenF1 {
                        p.similarity.token_f1
                    } else {
                        p.similarity.sequence_ratio
                    };
                    m[p.a][p.b] = Some(v);
                    m[p.b][p.a] = Some(v);
                }
                m
            }
        }
    }

    /// A caption for the map.
    pub fn caption(self, kind: QuestionKind) -> String {
        match self {
            MatrixMetric::Agreement if kind.is_closed() => {
                format!(
                    "agreement on the extracted {} (1 = same answer)",
                    kind_word(kind)
                )
            }
            MatrixMetric::Agreement | MatrixMetric::Score => {
                "text similarity (mean of token F1 and sequence ratio)".into()
            }
            MatrixMetric::TokenF1 => "token F1 (shared words, any order)".into(),
            MatrixMetric::SequenceRatio => "sequence ratio (shared words, in order)".into(),
        }
    }
}

/// The word for a question kind.
pub(crate) fn kind_word(k: QuestionKind) -> &'static str {
    match k {
        QuestionKind::Number => "number",
        QuestionKind::YesNo => "yes/no",
        QuestionKind::Choice => "choice letter",
        QuestionKind::FinalLine => "final line",
        QuestionKind::Open => "open answer",
    }
}

/// The heat map of a report.
#[derive(Debug, Clone)]
pub struct AgreementMatrix<'a> {
    report: &'a ConsensusReport,
    blind: Option<&'a BlindState>,
    styles: &'a ConsensusStyles,
    metric: MatrixMetric,
    scroll: usize,
}

/// Width of one cell at most: a gap and ` 0.92 `.
const CELL: usize = 6;

impl<'a> AgreementMatrix<'a> {
    /// The map of `report`.
    pub fn new(report: &'a ConsensusReport) -> Self {
        AgreementMatrix {
            report,
            blind: None,
            styles: default_styles(),
            metric: MatrixMetric::default(),
            scroll: 0,
        }
    }

    /// Hide names behind blind letters.
    pub fn blind(mut self, blind: Option<&'a BlindState>) -> Self {
        self.blind = blind;
        self
    }

    /// The look.
    pub fn styles(mut self, styles: &'a ConsensusStyles) -> Self {
        self.styles = styles;
        self
    }

    /// What the cells show.
    pub fn metric(mut self, metric: MatrixMetric) -> Self {
        self.metric = metric;
        self
    }

    /// First row shown (rows, then the legend and the headline, scroll).
    pub fn scroll(mut self, scroll: usize) -> Self {
        self.scroll = scroll;
        self
    }

    /// Rows that scroll: one per pane, a blank, the legend and the headline.
    pub fn content_height(report: &ConsensusReport) -> usize {
        report.len() + 3
    }

    /// Rows above the scrolling part: the caption and the column keys.
    pub const HEADER_HEIGHT: u16 = 2;
}

fn answer_cell(report: &ConsensusReport, i: usize, styles: &ConsensusStyles) -> (String, Style) {
    let c = &report.consensus;
    let a = &c.answers[i];
    match a.status {
        AnswerStatus::Failed => ("✗ failed".into(), styles.failed),
        AnswerStatus::Empty => ("∅ empty".into(), styles.empty),
        AnswerStatus::Answered => {
            let style = if c.majority.is_some() && a.cluster == c.majority {
                styles.agree
            } else if c.majority.is_some() {
                styles.disagree
            } else {
                styles.text
            };
            let text = match (&a.final_answer, a.cluster) {
                (Some(f), _) if c.kind.is_closed() => fit(&f.display, 16),
                (_, Some(k)) => format!("group {}", k + 1),
                _ => String::new(),
            };
            (text, style)
        }
    }
}

fn row_style(report: &ConsensusReport, i: usize, styles: &ConsensusStyles) -> Style {
    let c = &report.consensus;
    let a = &c.answers[i];
    match a.status {
        AnswerStatus::Failed => styles.failed,
        AnswerStatus::Empty => styles.empty,
        AnswerStatus::Answered if c.majority.is_some() && a.cluster == c.majority => styles.agree,
        AnswerStatus::Answered if c.majority.is_some() => styles.disagree,
        AnswerStatus::Answered => styles.text,
    }
}

/// The legend line of the heat map.
pub(crate) fn legend(styles: &ConsensusStyles) -> Line<'static> {
    let mut spans = vec![Span::styled("low ", styles.dim)];
    match &styles.heat {
        Heat::Gradient(colors) => {
            for c in colors {
                spans.push(Span::styled("  ", Style::new().bg(*c)));
            }
        }
        Heat::Shades => spans.push(Span::styled(SHADE_STR, styles.text)),
    }
    spans.push(Span::styled(" high · ", styles.dim));
    spans.push(Span::styled("✗", styles.failed));
    spans.push(Span::styled(" failed ", styles.dim));
    spans.push(Span::styled("∅", styles.empty));
    spans.push(Span::styled(" empty · never counted", styles.dim));
    Line::from(spans)
}

const SHADE_STR: &str = "░▒▓█";

impl Widget for AgreementMatrix<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let area = area.intersection(buf.area);
        if area.is_empty() {
            return;
        }
        let st = self.styles;
        let report = self.report;
        let c = &report.consensus;
        let n = report.len();
        render_line(
            Line::from(vec![
                Span::styled(self.metric.caption(c.kind), st.dim),
                Span::styled(" · m: metric", st.dim),
            ]),
            area,
            0,
            buf,
        );
        if n == 0 {
            render_line(Line::styled("no answers yet", st.dim), area, 1, buf);
            return;
        }
        let names = PaneNames::for_report(report, self.blind);
        let values = self.metric.values(c);
        let labels: Vec<String> = (0..n).map(|i| names.full(i)).collect();
        let answers: Vec<(String, Style)> = (0..n).map(|i| answer_cell(report, i, st)).collect();

        let w = area.width as usize;
        let key_w = (0..n).map(|i| names.key(i).width()).max().unwrap_or(1) + 1;
        let label_ideal = labels.iter().map(|l| l.width()).max().unwrap_or(1) + 2;
        let ans_ideal = answers.iter().map(|a| a.0.width()).max().unwrap_or(0) + 1;
        let mut label_w = label_ideal.min(w);
        let mut cw = CELL;
        let mut ans_w = ans_ideal;
        if label_w + n * cw + ans_w > w {
            ans_w = 0;
        }
        if label_w + n * cw > w {
            label_w = w
                .saturating_sub(n * (CELL - 1))
                .max(key_w.min(w))
                .min(label_ideal);
            cw = (w.saturating_sub(label_w) / n).clamp(1, CELL);
        }
        let painted = if cw >= 3 { cw - 1 } else { cw };
        let x0 = area.x as usize;
        let right = area.right() as usize;

        // Column keys.
        if area.height > 1 {
            let y = area.y + 1;
            for j in 0..n {
                let x = x0 + label_w + j * cw;
                if x >= right {
                    break;
                }
                let k = fit(names.key(j), painted);
                let off = painted.saturating_sub(k.width()) / 2;
                let max = right - x;
                buf.set_stringn((x + off) as u16, y, &k, max.saturating_sub(off), st.key);
            }
        }

        let body = Rect::new(
            area.x,
            area.y.saturating_add(AgreementMatrix::HEADER_HEIGHT),
            area.width,
            area.height.saturating_sub(AgreementMatrix::HEADER_HEIGHT),
        )
        .intersection(area);
        for (row, k) in (self.scroll..Self::content_height(report))
            .take(body.height as usize)
            .enumerate()
        {
            let y = body.y + row as u16;
            if k < n {
                let i = k;
                let label = if label_w <= key_w {
                    fit(names.key(i), label_w.saturating_sub(1))
                } else {
                    fit(&labels[i], label_w - 1)
                };
                buf.set_stringn(area.x, y, &label, w, row_style(report, i, st));
                for (j, value) in values[i].iter().enumerate() {
                    let x = x0 + label_w + j * cw;
                    if x >= right {
                        break;
                    }
                    let max = (right - x).min(painted);
                    match *value {
                        Some(v) => {
                            let fill: String =
                                std::iter::repeat_n(st.heat.fill(v), painted).collect();
                            let style = st.heat.cell_style(v);
                            buf.set_stringn(x as u16, y, &fill, max, style);
                            if painted >= 4 {
                                let num = format!("{v:.2}");
                                let off = (painted - 3) / 2;
                                if off < max {
                                    buf.set_stringn((x + off) as u16, y, &num, max - off, style);
                                }
                            }
                        }
                        None => {
                            let (mark, style) = if i == j {
                                match c.answers[i].status {
                                    AnswerStatus::Failed => ("✗", st.failed),
                                    AnswerStatus::Empty => ("∅", st.empty),
                                    AnswerStatus::Answered => ("·", st.dim),
                                }
                            } else {
                                ("·", st.dim)
                            };
                            let off = painted.saturating_sub(1) / 2;
                            if off < max {
                                buf.set_stringn((x + off) as u16, y, mark, max - off, style);
                            }
                        }
                    }
                }
                if ans_w > 0 {
                    let x = x0 + label_w + n * cw + 1;
                    if x < right {
                        let (t, s) = &answers[i];
                        buf.set_stringn(x as u16, y, t, right - x, *s);
                    }
                }
            } else if k == n + 1 {
                render_line(legend(st), body, row as u16, buf);
            } else if k == n + 2 {
                let mut spans = vec![Span::styled(c.headline(), st.text)];
                if let Some(a) = c.agreement {
                    // Re-style the agreement figure by its heat.
                    let h = c.headline();
                    if let Some(pos) = h.find(" · agreement ") {
                        let (head, rest) = h.split_at(pos);
                        let fig_start = " · agreement ".len();
                        let fig_end = rest[fig_start..]
                            .find(' ')
                            .map(|e| fig_start + e)
                            .unwrap_or(rest.len());
                        spans = vec![
                            Span::styled(head.to_string(), st.text),
                            Span::styled(" · agreement ", st.dim),
                            Span::styled(
                                rest[fig_start..fig_end].to_string(),
                                st.heat.text_style(a),
                            ),
                            Span::styled(rest[fig_end..].to_string(), st.text),
                        ];
                    }
                }
                render_line(Line::from(spans), body, row as u16, buf);
            }
        }
    }
}
