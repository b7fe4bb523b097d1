//! The verdict in words: agreement, majority, dissent, failures, groups and
//! the judge; and the one-line summary for the bar under the panes.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Widget;
use unicode_width::UnicodeWidthStr;

use super::matrix::kind_word;
use super::text::{fit, render_lines, split_lines, wrap, Piece, WrappedLine};
use super::{default_styles, BlindState, ConsensusReport, ConsensusStyles, JudgeStatus, PaneNames};
use crate::engine::consensus::{AnswerStatus, Consensus};
use crate::engine::judge::JudgeKey;

/// Width of the label column (`agreement `).
const LABEL: usize = 11;

/// Clusters, majority, dissenters, failed and empty answers, and the judge.
#[derive(Debug, Clone)]
pub struct ClusterSummary<'a> {
    report: &'a ConsensusReport,
    blind: Option<&'a BlindState>,
    styles: &'a ConsensusStyles,
    scroll: usize,
}

impl<'a> ClusterSummary<'a> {
    /// The summary of `report`.
    pub fn new(report: &'a ConsensusReport) -> Self {
        ClusterSummary {
            report,
            blind: None,
            styles: default_styles(),
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

    /// First line shown.
    pub fn scroll(mut self, scroll: usize) -> Self {
        self.scroll = scroll;
        self
    }

    /// The lines, wrapped to `width`.
    pub fn lines(&self, width: u16) -> Vec<WrappedLine> {
        let entries = entries(self.report, self.blind, self.styles);
        let width = width as usize;
        let indent = if width >= LABEL + 12 { LABEL } else { 0 };
        let mut out = Vec::new();
        for (label, pieces) in entries {
            let mut pieces = pieces;
            if indent == 0 && !label.is_empty() {
                pieces.insert(0, Piece::new(format!("{label} "), self.styles.title));
            }
            let wrapped = wrap(&split_lines(pieces), width - indent);
            for (k, mut l) in wrapped.into_iter().enumerate() {
                if indent > 0 {
                    let head = if k == 0 {
                        format!("{label:<indent$}")
                    } else {
                        " ".repeat(indent)
                    };
                    l.line
                        .spans
                        .insert(0, Span::styled(head, self.styles.title));
                }
                out.push(l);
            }
        }
        out
    }
}

impl Widget for ClusterSummary<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let area = area.intersection(buf.area);
        if area.is_empty() {
            return;
        }
        let lines = self.lines(area.width);
        render_lines(&lines, self.scroll, area, buf);
    }
}

type Entry = (String, Vec<Piece>);

fn entries(
    report: &ConsensusReport,
    blind: Option<&BlindState>,
    st: &ConsensusStyles,
) -> Vec<Entry> {
    let c = &report.consensus;
    let names = PaneNames::for_report(report, blind);
    let mut out: Vec<Entry> = Vec::new();
    if report.is_empty() {
        out.push((String::new(), vec![Piece::new("no answers yet", st.dim)]));
        return out;
    }

    // Agreement.
    let how = if c.kind.is_closed() {
        format!(
            "share of answered panes in the largest group ({})",
            kind_word(c.kind)
        )
    } else {
        "mean text similarity of the answered pairs".to_string()
    };
    let mut p = match c.agreement {
        Some(a) => vec![
            Piece::new(format!("{a:.2}"), st.heat.text_style(a)),
            Piece::new(format!("  {how}"), st.dim),
        ],
        None => vec![
            Piece::new("–", st.dim),
            Piece::new("  fewer than two answers to compare", st.dim),
        ],
    };
    p.push(Piece::new(
        format!(" · {} of {} answered", c.answered, report.len()),
        st.dim,
    ));
    out.push(("agreement".into(), p));

    // Majority.
    let who = |members: &[usize]| -> String {
        let mut members = members.to_vec();
        // By key, so blind letters read A, B, C.
        members.sort_by_key(|m| (names.key(*m).len(), names.key(*m).to_string()));
        members
            .iter()
            .map(|m| names.full(*m))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match c.majority {
        Some(m) => {
            let cl = &c.clusters[m];
            let mut p = Vec::new();
            if let Some(a) = &c.majority_answer {
                p.push(Piece::new(format!("\"{a}\""), st.agree));
                p.push(Piece::new(" · ", st.dim));
            }
            p.push(Piece::new(
                format!("{} of {}: ", cl.members.len(), c.answered),
                st.dim,
            ));
            p.push(Piece::new(who(&cl.members), st.agree));
            out.push(("majority".into(), p));
        }
        None if c.answered >= 2 => out.push((
            "majority".into(),
            vec![Piece::new(
                format!("none · {} answers, no strict majority", c.answered),
                st.disagree,
            )],
        )),
        None => {}
    }

    // Dissent.
    for (k, i) in report.dissenting().into_iter().enumerate() {
        let said = c.answers[i]
            .cluster
            .and_then(|ci| c.clusters.get(ci))
            .and_then(|cl| cl.answer.clone());
        let mut p = vec![Piece::new(names.full(i), st.disagree)];
        if let Some(s) = said {
            p.push(Piece::new(" said ", st.dim));
            p.push(Piece::new(format!("\"{s}\""), st.disagree));
        }
        out.push((if k == 0 { "dissent" } else { "" }.into(), p));
    }

    // Failed and empty: reported, never counted.
    let mut first_failed = true;
    let mut first_empty = true;
    for a in &c.answers {
        match a.status {
            AnswerStatus::Failed => {
                let mut p = vec![Piece::new(format!("✗ {}", names.full(a.index)), st.failed)];
                if let Some(e) = &a.error {
                    p.push(Piece::new(format!(" — {}", one_line(e)), st.dim));
                }
                out.push((if first_failed { "failed" } else { "" }.into(), p));
                first_failed = false;
            }
            AnswerStatus::Empty => {
                out.push((
                    if first_empty { "empty" } else { "" }.into(),
                    vec![
                        Piece::new(format!("∅ {}", names.full(a.index)), st.empty),
                        Piece::new(" — finished with no text", st.dim),
                    ],
                ));
                first_empty = false;
            }
            AnswerStatus::Answered => {}
        }
    }

    // Groups, when there is more than one.
    if c.clusters.len() > 1 {
        for (ci, cl) in c.clusters.iter().enumerate() {
            let style = match c.majority {
                Some(m) if m == ci => st.agree,
                Some(_) => st.disagree,
                None => st.text,
            };
            let mut p = vec![Piece::new(format!("{}. ", ci + 1), st.key)];
            if let Some(a) = &cl.answer {
                p.push(Piece::new(format!("\"{a}\""), style));
                p.push(Piece::new(" · ", st.dim));
            }
            p.push(Piece::new(who(&cl.members), style));
            if c.majority == Some(ci) {
                p.push(Piece::new(" (majority)", st.dim));
            }
            out.push((if ci == 0 { "groups" } else { "" }.into(), p));
        }
    }

    // The judge.
    match &report.judge {
        None => {}
        Some(JudgeStatus::Running { target }) => out.push((
            "judge".into(),
            vec![
                Piece::new(target.clone(), st.key),
                Piece::new(" · judging…", st.dim),
            ],
        )),
        Some(JudgeStatus::Unavailable(e)) => out.push((
            "judge".into(),
            vec![Piece::new(format!("skipped: {}", one_line(e)), st.dim)],
        )),
        Some(JudgeStatus::Done(o)) => match &o.verdict {
            None => out.push((
                "judge".into(),
                vec![
                    Piece::new(o.target.clone(), st.key),
                    Piece::new(
                        format!(
                            " · no verdict: {}",
                            one_line(o.error.as_deref().unwrap_or("none given"))
                        ),
                        st.failed,
                    ),
                ],
            )),
            Some(v) => {
                let mut p = vec![
                    Piece::new(o.target.clone(), st.key),
                    Piece::new(" · agreement ", st.dim),
                ];
                match v.agreement {
                    Some(a) => p.push(Piece::new(format!("{a:.2}"), st.heat.text_style(a))),
                    None => p.push(Piece::new("–", st.dim)),
                }
                p.push(Piece::new(" · best ", st.dim));
                let best = v.best.as_ref().map(|l| {
                    o.key
                        .iter()
                        .find(|k| &k.letter == l)
                        .map(|k| names.full(k.index))
                        .unwrap_or_else(|| format!("Answer {l}"))
                });
                match best {
                    Some(b) => p.push(Piece::new(b, st.agree)),
                    None => p.push(Piece::new("none", st.dim)),
                }
                out.push(("judge".into(), p));
                if !v.summary.is_empty() {
                    out.push((
                        String::new(),
                        vec![Piece::new(
                            translate_letters(&v.summary, &o.key, &names),
                            st.text,
                        )],
                    ));
                }
                for (k, d) in v.disagreements.iter().enumerate() {
                    out.push((
                        if k == 0 { "differ on" } else { "" }.into(),
                        vec![
                            Piece::new("· ", st.disagree),
                            Piece::new(translate_letters(d, &o.key, &names), st.text),
                        ],
                    ));
                }
            }
        },
    }
    out
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The judge saw its own letters (`Answer A` = the first answered pane);
/// rewrite them to the names on screen, so its text matches the panes (and
/// the blind letters, in blind mode).
pub(crate) fn translate_letters(text: &str, key: &[JudgeKey], names: &PaneNames) -> String {
    const WORD: &str = "Answer ";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(WORD) {
        let after = &rest[i + WORD.len()..];
        let letters: String = after
            .chars()
            .take_while(|c| c.is_ascii_uppercase())
            .collect();
        let boundary = after[letters.len()..]
            .chars()
            .next()
            .is_none_or(|c| !c.is_alphanumeric());
        let hit = (!letters.is_empty() && boundary)
            .then(|| key.iter().find(|k| k.letter == letters))
            .flatten();
        out.push_str(&rest[..i]);
        match hit {
            Some(k) => out.push_str(names.name(k.index)),
            None => out.push_str(&rest[i..i + WORD.len() + letters.len()]),
        }
        rest = &after[letters.len()..];
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------
// The bar under the panes
// ---------------------------------------------------------------------------

/// `consensus · 2 of 3 finished agree on "4" · agreement 0.67`, one line.
#[derive(Debug, Clone)]
pub struct SummaryLine<'a> {
    consensus: Option<&'a Consensus>,
    waiting: (usize, usize),
    styles: &'a ConsensusStyles,
}

impl<'a> SummaryLine<'a> {
    /// The summary of a verdict.
    pub fn new(consensus: &'a Consensus) -> Self {
        SummaryLine {
            consensus: Some(consensus),
            waiting: (0, 0),
            styles: default_styles(),
        }
    }

    /// While answers stream: `consensus · waiting · 1 of 3 finished`.
    pub fn waiting(finished: usize, total: usize) -> Self {
        SummaryLine {
            consensus: None,
            waiting: (finished, total),
            styles: default_styles(),
        }
    }

    /// The look.
    pub fn styles(mut self, styles: &'a ConsensusStyles) -> Self {
        self.styles = styles;
        self
    }

    /// The styled line.
    pub fn line(&self) -> Line<'static> {
        let st = self.styles;
        let mut spans = vec![
            Span::styled("consensus", st.title),
            Span::styled(" · ", st.dim),
        ];
        match self.consensus {
            None => spans.push(Span::styled(
                format!(
                    "waiting · {} of {} finished",
                    self.waiting.0, self.waiting.1
                ),
                st.dim,
            )),
            Some(c) => {
                let h = c.headline();
                let marker = " · agreement ";
                match (h.find(marker), c.agreement) {
                    (Some(pos), Some(a)) => {
                        let fig = pos + marker.len();
                        let end = h[fig..].find(' ').map(|e| fig + e).unwrap_or(h.len());
                        let head_style = if c.majority.is_some() {
                            st.text
                        } else {
                            st.disagree
                        };
                        spans.push(Span::styled(h[..pos].to_string(), head_style));
                        spans.push(Span::styled(marker.to_string(), st.dim));
                        spans.push(Span::styled(h[fig..end].to_string(), st.heat.text_style(a)));
                        spans.push(Span::styled(h[end..].to_string(), st.dim));
                    }
                    _ => spans.push(Span::styled(h, st.text)),
                }
            }
        }
        Line::from(spans)
    }

    /// The text, unstyled.
    pub fn text(&self) -> String {
        self.line().to_string()
    }
}

/// Spans cut to `w` columns, the last cut one ending in `…`.
pub(crate) fn fit_spans(line: Line<'static>, w: usize) -> Line<'static> {
    if line.width() <= w {
        return line;
    }
    let mut out = Vec::new();
    let mut used = 0;
    for s in line.spans {
        let sw = s.content.width();
        if used + sw < w {
            used += sw;
            out.push(s);
        } else {
            let room = w - used;
            if room > 0 {
                // Always cut with `…`: a span that fits exactly is followed
                // by more text, so something is lost here.
                let forced = format!("{}…", s.content);
                out.push(Span::styled(fit(&forced, room), s.style));
            }
            break;
        }
    }
    Line::from(out)
}

impl Widget for SummaryLine<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let area = area.intersection(buf.area);
        if area.is_empty() {
            return;
        }
        let line = fit_spans(self.line(), area.width as usize);
        line.render(Rect::new(area.x, area.y, area.width, 1), buf);
    }
}
