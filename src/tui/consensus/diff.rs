//! The word diff of two panes: deletions and insertions styled, equal text
//! plain, word-wrapped, scrollable. The diff and its wrapping are cached in
//! [`DiffState`] per (pair, texts, width, styles), so a frame costs only the
//! visible lines.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::StatefulWidget;

use super::text::{max_scroll, render_line, render_lines, split_lines, wrap, Piece, WrappedLine};
use super::{default_styles, BlindState, ConsensusReport, ConsensusStyles, PaneNames};
use crate::engine::consensus::{word_diff, AnswerStatus, DiffOp, DiffSpan};

/// Which two panes are compared, the scroll, and the cached diff.
#[derive(Debug, Clone, Default)]
pub struct DiffState {
    left: usize,
    right: usize,
    scroll: usize,
    viewport: u16,
    cache: Option<DiffCache>,
}

#[derive(Debug, Clone)]
struct DiffCache {
    key: u64,
    lines: Vec<WrappedLine>,
    /// Line indices where a run of changed lines starts.
    starts: Vec<usize>,
    /// Changes (maximal runs of inserted/deleted text).
    changes: usize,
}

impl DiffState {
    /// Compare pane `left` (the old side) with pane `right`.
    pub fn new(left: usize, right: usize) -> Self {
        DiffState {
            left,
            right,
            ..Default::default()
        }
    }

    /// The pair shown.
    pub fn pair(&self) -> (usize, usize) {
        (self.left, self.right)
    }

    /// Compare `left` with `right`; false (nothing changes) when they are equal.
    pub fn select(&mut self, left: usize, right: usize) -> bool {
        if left == right {
            return false;
        }
        if (left, right) != (self.left, self.right) {
            self.left = left;
            self.right = right;
            self.scroll = 0;
        }
        true
    }

    /// Keep the pair valid for `n` panes: in range and distinct.
    pub fn set_panes(&mut self, n: usize) {
        if n == 0 {
            self.left = 0;
            self.right = 0;
            return;
        }
        self.left = self.left.min(n - 1);
        self.right = self.right.min(n - 1);
        if n >= 2 && self.left == self.right {
            self.right = (self.left + 1) % n;
        }
    }

    fn step(cur: usize, other: usize, n: usize, forward: bool) -> usize {
        if n < 2 {
            return cur;
        }
        let mut x = cur;
        loop {
            x = if forward {
                (x + 1) % n
            } else {
                (x + n - 1) % n
            };
            if x != other {
                return x;
            }
        }
    }

    /// Move the first pane forward (or back) among `n`, skipping the second.
    pub fn cycle_left(&mut self, n: usize, forward: bool) {
        self.set_panes(n);
        self.left = Self::step(self.left, self.right, n, forward);
        self.scroll = 0;
    }

    /// Move the second pane forward (or back) among `n`, skipping the first.
    pub fn cycle_right(&mut self, n: usize, forward: bool) {
        self.set_panes(n);
        self.right = Self::step(self.right, self.left, n, forward);
        self.scroll = 0;
    }

    /// Swap the two sides.
    pub fn swap(&mut self) {
        std::mem::swap(&mut self.left, &mut self.right);
        self.scroll = 0;
    }

    /// First line shown.
    pub fn scroll(&self) -> usize {
        self.scroll
    }

    /// Lines of the last rendered diff (0 before the first render).
    pub fn content_len(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.lines.len())
    }

    /// Changes in the last rendered diff.
    pub fn changes(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.changes)
    }

    /// Rows of the diff body at the last render.
    pub fn viewport(&self) -> u16 {
        self.viewport
    }

    fn max(&self) -> usize {
        max_scroll(self.content_len(), self.viewport)
    }

    /// Scroll by `delta` lines, within the content.
    pub fn scroll_by(&mut self, delta: isize) {
        let s = self.scroll as isize + delta;
        self.scroll = (s.max(0) as usize).min(self.max());
    }

    /// Scroll to line `line`, within the content.
    pub fn scroll_to(&mut self, line: usize) {
        self.scroll = line.min(self.max());
    }

    /// Scroll to the next change below the top line; false if none.
    pub fn next_change(&mut self) -> bool {
        let Some(c) = &self.cache else { return false };
        match c.starts.iter().find(|s| **s > self.scroll) {
            Some(s) => {
                let s = *s;
                self.scroll_to(s);
                true
            }
            None => false,
        }
    }

    /// Scroll to the previous change above the top line; false if none.
    pub fn prev_change(&mut self) -> bool {
        let Some(c) = &self.cache else { return false };
        match c.starts.iter().rev().find(|s| **s < self.scroll) {
            Some(s) => {
                let s = *s;
                self.scroll_to(s);
                true
            }
            None => false,
        }
    }
}

/// The diff of `a` (old) and `b` (new), wrapped to `width`: equal text in
/// `styles.text`, deletions in `styles.delete`, insertions in
/// `styles.insert` (inside `[-…-]`/`{+…+}` with `diff_markers`). Lines
/// holding a change are flagged `changed`.
pub fn diff_lines(a: &str, b: &str, width: u16, styles: &ConsensusStyles) -> Vec<WrappedLine> {
    diff_with_count(a, b, width, styles).0
}

fn diff_with_count(
    a: &str,
    b: &str,
    width: u16,
    st: &ConsensusStyles,
) -> (Vec<WrappedLine>, usize) {
    let spans = tidy(word_diff(a, b));
    let mut changes = 0;
    let mut prev = DiffOp::Equal;
    let pieces: Vec<Piece> = spans
        .into_iter()
        .map(|s| {
            if s.op != DiffOp::Equal && prev == DiffOp::Equal {
                changes += 1;
            }
            prev = s.op;
            match s.op {
                DiffOp::Equal => Piece::new(s.text, st.text),
                DiffOp::Delete if st.diff_markers => {
                    Piece::marked(format!("[-{}-]", s.text), st.delete)
                }
                DiffOp::Delete => Piece::marked(s.text, st.delete),
                DiffOp::Insert if st.diff_markers => {
                    Piece::marked(format!("{{+{}+}}", s.text), st.insert)
                }
                DiffOp::Insert => Piece::marked(s.text, st.insert),
            }
        })
        .collect();
    (wrap(&split_lines(pieces), width as usize), changes)
}

/// A run of equal text, or one change: (deleted, inserted).
enum Chunk {
    Equal(String),
    Change(String, String),
}

/// Semantic cleanup, after diff-match-patch: an equal run between two
/// changes that is no longer than the edits on either side is folded into
/// them. Two unrelated answers then read as one replacement instead of
/// words interleaved at every shared space or `=`; answers that differ in a
/// word keep their long equal runs untouched. Old and new texts are kept.
pub(crate) fn tidy(spans: Vec<DiffSpan>) -> Vec<DiffSpan> {
    let mut chunks: Vec<Chunk> = Vec::new();
    for s in spans {
        match (s.op, chunks.last_mut()) {
            (DiffOp::Equal, _) => chunks.push(Chunk::Equal(s.text)),
            (DiffOp::Delete, Some(Chunk::Change(d, _))) => d.push_str(&s.text),
            (DiffOp::Insert, Some(Chunk::Change(_, i))) => i.push_str(&s.text),
            (DiffOp::Delete, _) => chunks.push(Chunk::Change(s.text, String::new())),
            (DiffOp::Insert, _) => chunks.push(Chunk::Change(String::new(), s.text)),
        }
    }
    let len = |s: &str| s.chars().count();
    let mut k = 1;
    while k + 1 < chunks.len() {
        let merged = match (&chunks[k - 1], &chunks[k], &chunks[k + 1]) {
            (Chunk::Change(d1, i1), Chunk::Equal(e), Chunk::Change(d2, i2))
                if len(e) <= len(d1).max(len(i1)) && len(e) <= len(d2).max(len(i2)) =>
            {
                Some(Chunk::Change(
                    format!("{d1}{e}{d2}"),
                    format!("{i1}{e}{i2}"),
                ))
            }
            _ => None,
        };
        match merged {
            Some(c) => {
                chunks.splice(k - 1..k + 2, [c]);
                // The merged change may now swallow the next equal run too.
                k = k.saturating_sub(1).max(1);
            }
            None => k += 1,
        }
    }
    let mut out = Vec::with_capacity(chunks.len() * 2);
    for c in chunks {
        match c {
            Chunk::Equal(t) => out.push(DiffSpan {
                op: DiffOp::Equal,
                text: t,
            }),
            Chunk::Change(d, i) => {
                for (op, text) in [(DiffOp::Delete, d), (DiffOp::Insert, i)] {
                    if !text.is_empty() {
                        out.push(DiffSpan { op, text });
                    }
                }
            }
        }
    }
    out
}

/// The word diff of two panes of a report.
#[derive(Debug, Clone)]
pub struct WordDiffView<'a> {
    report: &'a ConsensusReport,
    blind: Option<&'a BlindState>,
    styles: &'a ConsensusStyles,
}

impl<'a> WordDiffView<'a> {
    /// The diff view of `report`; the pair comes from the [`DiffState`].
    pub fn new(report: &'a ConsensusReport) -> Self {
        WordDiffView {
            report,
            blind: None,
            styles: default_styles(),
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

    /// Rows above the diff: the pair and the legend.
    pub const HEADER_HEIGHT: u16 = 2;
}

fn cache_key(l: usize, r: usize, a: &str, b: &str, width: u16, st: &ConsensusStyles) -> u64 {
    let mut h = DefaultHasher::new();
    (l, r, a, b, width).hash(&mut h);
    (st.text, st.insert, st.delete, st.diff_markers).hash(&mut h);
    h.finish()
}

impl StatefulWidget for WordDiffView<'_> {
    type State = DiffState;

    fn render(self, area: Rect, buf: &mut Buffer, state: &mut DiffState) {
        let area = area.intersection(buf.area);
        if area.is_empty() {
            return;
        }
        let st = self.styles;
        let n = self.report.len();
        if n < 2 {
            state.viewport = 0;
            render_line(
                Line::styled("fewer than two panes: nothing to compare", st.dim),
                area,
                0,
                buf,
            );
            return;
        }
        state.set_panes(n);
        let (l, r) = state.pair();
        let names = PaneNames::for_report(self.report, self.blind);
        let c = &self.report.consensus;

        let mut head = vec![
            Span::styled(names.full(l), st.key),
            Span::styled(" → ", st.dim),
            Span::styled(names.full(r), st.key),
        ];
        if let Some(s) = c.pair(l, r) {
            head.push(Span::styled(
                format!(
                    " · similarity {:.2} (F1 {:.2} · ratio {:.2})",
                    s.score, s.token_f1, s.sequence_ratio
                ),
                st.dim,
            ));
        }
        render_line(Line::from(head), area, 0, buf);

        let body = Rect::new(
            area.x,
            area.y.saturating_add(Self::HEADER_HEIGHT),
            area.width,
            area.height.saturating_sub(Self::HEADER_HEIGHT),
        )
        .intersection(area);

        let failed: Vec<usize> = [l, r]
            .into_iter()
            .filter(|i| c.answers[*i].status == AnswerStatus::Failed)
            .collect();
        if !failed.is_empty() {
            state.viewport = body.height;
            state.cache = None;
            state.scroll = 0;
            let lines: Vec<WrappedLine> = failed
                .iter()
                .map(|i| WrappedLine {
                    line: Line::from(vec![
                        Span::styled(format!("✗ {} failed", names.full(*i)), st.failed),
                        Span::styled(
                            format!(
                                " — {}; nothing to compare",
                                c.answers[*i].error.as_deref().unwrap_or("no answer")
                            ),
                            st.dim,
                        ),
                    ]),
                    changed: false,
                })
                .collect();
            render_lines(&lines, 0, body, buf);
            return;
        }

        let text_of = |i: usize| self.report.answers.get(i).map_or("", |a| a.text.as_str());
        let (a, b) = (text_of(l), text_of(r));
        let key = cache_key(l, r, a, b, body.width, st);
        if state.cache.as_ref().is_none_or(|c| c.key != key) && body.width > 0 {
            let (lines, changes) = diff_with_count(a, b, body.width, st);
            let starts = (0..lines.len())
                .filter(|i| lines[*i].changed && (*i == 0 || !lines[*i - 1].changed))
                .collect();
            state.cache = Some(DiffCache {
                key,
                lines,
                starts,
                changes,
            });
        }
        state.viewport = body.height;
        state.scroll = state.scroll.min(state.max());

        let total = state.content_len();
        let changes = state.changes();
        let mut legend = vec![
            Span::styled("removed", st.delete),
            Span::styled(format!(" from {} · ", names.key(l)), st.dim),
            Span::styled("added", st.insert),
            Span::styled(format!(" in {} · ", names.key(r)), st.dim),
        ];
        let empties: Vec<String> = [l, r]
            .into_iter()
            .filter(|i| c.answers[*i].status == AnswerStatus::Empty)
            .map(|i| format!("∅ {} is empty · ", names.key(i)))
            .collect();
        for e in empties {
            legend.push(Span::styled(e, st.empty));
        }
        legend.push(Span::styled(
            match changes {
                0 => "identical".to_string(),
                1 => "1 change".to_string(),
                k => format!("{k} changes"),
            },
            st.text,
        ));
        if total > body.height as usize {
            legend.push(Span::styled(
                format!(
                    " · lines {}–{} of {total}",
                    state.scroll + 1,
                    (state.scroll + body.height as usize).min(total)
                ),
                st.dim,
            ));
        }
        legend.push(Span::styled(
            " · [ ] { } panes · x swap · n/p change",
            st.dim,
        ));
        render_line(Line::from(legend), area, 1, buf);
        if let Some(cache) = &state.cache {
            render_lines(&cache.lines, state.scroll, body, buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rebuild(spans: &[DiffSpan], skip: DiffOp) -> String {
        spans
            .iter()
            .filter(|s| s.op != skip)
            .map(|s| s.text.as_str())
            .collect()
    }

    #[test]
    fn tidy_folds_small_equalities_and_keeps_both_texts() {
        let a = "total = compute(11, data) * weight";
        let b = "I cannot help with that request.";
        let spans = tidy(word_diff(a, b));
        assert_eq!(rebuild(&spans, DiffOp::Insert), a);
        assert_eq!(rebuild(&spans, DiffOp::Delete), b);
        assert_eq!(spans.len(), 2, "one replacement: {spans:?}");
        let near = tidy(word_diff("the quick brown fox", "the quick red fox"));
        assert_eq!(near, word_diff("the quick brown fox", "the quick red fox"));
    }
}
