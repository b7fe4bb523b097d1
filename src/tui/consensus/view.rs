//! The consensus view: a tab bar over the heat map, the clusters and
//! verdict, the diff, the leaderboard and stability, with one state and
//! one pure key handler.

use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, StatefulWidget, Widget};

use super::text::{max_scroll, render_line, render_lines, WrappedLine};
use super::{
    default_styles, AgreementMatrix, BlindState, ClusterSummary, ConsensusReport, ConsensusStyles,
    DiffState, LeaderboardTable, MatrixMetric, PaneNames, StabilityTable, VoteChoice, WordDiffView,
};
use crate::engine::consensus::Leaderboard;

/// The tabs of the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ConsensusTab {
    /// The agreement heat map.
    #[default]
    Matrix,
    /// Majority, dissent, failures, groups and the judge.
    Clusters,
    /// The word diff of two panes.
    Diff,
    /// Win rates and Elo from blind votes.
    Leaderboard,
    /// Repeat-N stability.
    Stability,
}

impl ConsensusTab {
    /// Every tab, in order.
    pub const ALL: [ConsensusTab; 5] = [
        ConsensusTab::Matrix,
        ConsensusTab::Clusters,
        ConsensusTab::Diff,
        ConsensusTab::Leaderboard,
        ConsensusTab::Stability,
    ];

    /// Its name on the tab bar.
    pub fn title(self) -> &'static str {
        match self {
            ConsensusTab::Matrix => "matrix",
            ConsensusTab::Clusters => "clusters",
            ConsensusTab::Diff => "diff",
            ConsensusTab::Leaderboard => "leaderboard",
            ConsensusTab::Stability => "stability",
        }
    }

    /// Position, from 0.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The next tab, wrapping.
    pub fn next(self) -> Self {
        Self::ALL[(self.index() + 1) % Self::ALL.len()]
    }

    /// The previous tab, wrapping.
    pub fn prev(self) -> Self {
        Self::ALL[(self.index() + Self::ALL.len() - 1) % Self::ALL.len()]
    }
}

/// Everything the view remembers between frames.
#[derive(Debug, Clone, Default)]
pub struct ConsensusViewState {
    /// The tab shown.
    pub tab: ConsensusTab,
    /// What the heat map shows.
    pub metric: MatrixMetric,
    /// The diff's pair, scroll and cache.
    pub diff: DiffState,
    scroll: [usize; 5],
    /// Content lines and body rows at the last render, to clamp scrolling.
    len: [usize; 5],
    viewport: [u16; 5],
    panes: usize,
}

impl ConsensusViewState {
    /// A view of `panes` panes, diffing the first two.
    pub fn new(panes: usize) -> Self {
        let mut s = ConsensusViewState {
            diff: DiffState::new(0, 1),
            panes,
            ..Default::default()
        };
        s.diff.set_panes(panes);
        s
    }

    /// A view of `report`, diffing the majority against the first dissenter
    /// (or the two largest groups) when there is one.
    pub fn for_report(report: &ConsensusReport) -> Self {
        let mut s = Self::new(report.len());
        let c = &report.consensus;
        let pair = match (c.majority, report.dissenting().first()) {
            (Some(m), Some(d)) => Some((c.clusters[m].members[0], *d)),
            _ if c.clusters.len() >= 2 => {
                Some((c.clusters[0].members[0], c.clusters[1].members[0]))
            }
            _ => None,
        };
        if let Some((a, b)) = pair {
            s.diff.select(a.min(b), a.max(b));
        }
        s
    }

    /// A new report came in: keep the tab and scroll, keep the diff pair valid.
    pub fn set_panes(&mut self, report: &ConsensusReport) {
        self.panes = report.len();
        self.diff.set_panes(self.panes);
    }

    /// Show `tab`.
    pub fn select_tab(&mut self, tab: ConsensusTab) {
        self.tab = tab;
    }

    /// Diff pane `a` against pane `b`; false when they are the same or out of range.
    pub fn select_diff(&mut self, a: usize, b: usize) -> bool {
        a < self.panes && b < self.panes && self.diff.select(a, b)
    }

    /// First line shown on the current tab.
    pub fn scroll(&self) -> usize {
        match self.tab {
            ConsensusTab::Diff => self.diff.scroll(),
            t => self.scroll[t.index()],
        }
    }

    fn viewport(&self) -> u16 {
        match self.tab {
            ConsensusTab::Diff => self.diff.viewport(),
            t => self.viewport[t.index()],
        }
    }

    /// Scroll the current tab by `delta` lines.
    pub fn scroll_by(&mut self, delta: isize) {
        match self.tab {
            ConsensusTab::Diff => self.diff.scroll_by(delta),
            t => {
                let i = t.index();
                let max = max_scroll(self.len[i], self.viewport[i]);
                let s = self.scroll[i] as isize + delta;
                self.scroll[i] = (s.max(0) as usize).min(max);
            }
        }
    }

    /// Handle a key; true when it was consumed (redraw), false when it is
    /// not the view's (pass it on). Key releases and keys with Ctrl or Alt
    /// are never consumed. Blind votes are [`BlindState::handle_key`]'s.
    pub fn handle_key(&mut self, key: impl Into<KeyEvent>) -> bool {
        let key = key.into();
        if key.kind == KeyEventKind::Release
            || key
                .modifiers
                .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT)
        {
            return false;
        }
        let page = self.viewport().max(1) as isize;
        let n = self.panes;
        let diff = self.tab == ConsensusTab::Diff;
        match key.code {
            KeyCode::Left | KeyCode::Char('h') => self.tab = self.tab.prev(),
            KeyCode::Right | KeyCode::Char('l') => self.tab = self.tab.next(),
            KeyCode::Char(c @ '1'..='5') => {
                self.tab = ConsensusTab::ALL[(c as u8 - b'1') as usize];
            }
            KeyCode::Up | KeyCode::Char('k') => self.scroll_by(-1),
            KeyCode::Down | KeyCode::Char('j') => self.scroll_by(1),
            KeyCode::PageUp => self.scroll_by(-page),
            KeyCode::PageDown | KeyCode::Char(' ') => self.scroll_by(page),
            KeyCode::Home => self.scroll_by(isize::MIN / 2),
            KeyCode::End => self.scroll_by(isize::MAX / 2),
            KeyCode::Char('m') if self.tab == ConsensusTab::Matrix => {
                self.metric = self.metric.next();
            }
            KeyCode::Char('[') if diff => self.diff.cycle_left(n, false),
            KeyCode::Char(']') if diff => self.diff.cycle_left(n, true),
            KeyCode::Char('{') if diff => self.diff.cycle_right(n, false),
            KeyCode::Char('}') if diff => self.diff.cycle_right(n, true),
            KeyCode::Char('x') if diff => self.diff.swap(),
            KeyCode::Char('n') if diff => {
                self.diff.next_change();
            }
            KeyCode::Char('p') if diff => {
                self.diff.prev_change();
            }
            _ => return false,
        }
        true
    }

    fn clamp(&mut self, tab: ConsensusTab, len: usize, viewport: u16) -> usize {
        let i = tab.index();
        self.len[i] = len;
        self.viewport[i] = viewport;
        self.scroll[i] = self.scroll[i].min(max_scroll(len, viewport));
        self.scroll[i]
    }
}

/// The whole consensus view.
#[derive(Debug, Clone)]
pub struct ConsensusView<'a> {
    report: Option<&'a ConsensusReport>,
    blind: Option<&'a BlindState>,
    leaderboard: Option<&'a Leaderboard>,
    styles: &'a ConsensusStyles,
    block: Option<Block<'a>>,
}

impl<'a> ConsensusView<'a> {
    /// The view of `report`.
    pub fn new(report: &'a ConsensusReport) -> Self {
        ConsensusView {
            report: Some(report),
            blind: None,
            leaderboard: None,
            styles: default_styles(),
            block: None,
        }
    }

    /// Before any answer: only the leaderboard has content.
    pub fn empty() -> Self {
        ConsensusView {
            report: None,
            blind: None,
            leaderboard: None,
            styles: default_styles(),
            block: None,
        }
    }

    /// Blind mode: names hidden until `blind` is revealed.
    pub fn blind(mut self, blind: Option<&'a BlindState>) -> Self {
        self.blind = blind;
        self
    }

    /// The leaderboard tab's content.
    pub fn leaderboard(mut self, board: Option<&'a Leaderboard>) -> Self {
        self.leaderboard = board;
        self
    }

    /// The look.
    pub fn styles(mut self, styles: &'a ConsensusStyles) -> Self {
        self.styles = styles;
        self
    }

    /// A block around the view.
    pub fn block(mut self, block: Block<'a>) -> Self {
        self.block = Some(block);
        self
    }
}

fn tab_bar(selected: ConsensusTab, width: usize, st: &ConsensusStyles) -> Line<'static> {
    let full: usize = ConsensusTab::ALL
        .iter()
        .map(|t| t.title().len() + 4)
        .sum::<usize>();
    let short = width < full;
    let tiny = width < 5 * 7;
    let mut spans = Vec::new();
    for t in ConsensusTab::ALL {
        let label = if tiny {
            format!(" {} ", t.index() + 1)
        } else if short {
            format!(" {} {} ", t.index() + 1, &t.title()[..3])
        } else {
            format!(" {} {} ", t.index() + 1, t.title())
        };
        let style = if t == selected {
            st.tab_selected
        } else {
            st.tab
        };
        spans.push(Span::styled(label, style));
    }
    Line::from(spans)
}

fn blind_banner(blind: &BlindState, st: &ConsensusStyles) -> Line<'static> {
    let mut spans = vec![Span::styled("blind", st.title), Span::styled(" · ", st.dim)];
    match (blind.revealed(), blind.voted()) {
        (false, _) => {
            let last = blind
                .len()
                .checked_sub(1)
                .map(crate::engine::judge::letter)
                .unwrap_or_else(|| "A".into());
            spans.push(Span::styled("names hidden", st.text));
            spans.push(Span::styled(
                format!(" · Shift+A–{last} votes for that answer · = tie"),
                st.dim,
            ));
        }
        (true, Some(VoteChoice::Pane(p))) => {
            spans.push(Span::styled(
                format!(
                    "voted Answer {} = {}",
                    blind.letter_for(p).unwrap_or_default(),
                    blind.label_for(p)
                ),
                st.agree,
            ));
            spans.push(Span::styled(" · names revealed", st.dim));
        }
        (true, Some(VoteChoice::Tie)) => {
            spans.push(Span::styled("voted a tie", st.agree));
            spans.push(Span::styled(" · names revealed", st.dim));
        }
        (true, None) => spans.push(Span::styled("names revealed without a vote", st.dim)),
    }
    Line::from(spans)
}

impl StatefulWidget for ConsensusView<'_> {
    type State = ConsensusViewState;

    fn render(self, area: Rect, buf: &mut Buffer, state: &mut ConsensusViewState) {
        let mut area = area.intersection(buf.area);
        if let Some(b) = &self.block {
            let inner = b.inner(area);
            b.clone().render(area, buf);
            area = inner;
        }
        if area.is_empty() {
            return;
        }
        let st = self.styles;
        render_line(tab_bar(state.tab, area.width as usize, st), area, 0, buf);
        let mut top = 1u16;
        if let Some(b) = self.blind {
            render_line(blind_banner(b, st), area, 1, buf);
            top += 1;
        }
        let body = Rect::new(
            area.x,
            area.y.saturating_add(top),
            area.width,
            area.height.saturating_sub(top),
        )
        .intersection(area);
        if body.is_empty() {
            return;
        }
        if let Some(r) = self.report {
            state.panes = r.len();
        }
        let tab = state.tab;
        let show = |lines: Vec<WrappedLine>, state: &mut ConsensusViewState, buf: &mut Buffer| {
            let s = state.clamp(tab, lines.len(), body.height);
            render_lines(&lines, s, body, buf);
        };
        let no_answers = || {
            vec![WrappedLine {
                line: Line::styled("no answers yet: send a prompt to compare", st.dim),
                changed: false,
            }]
        };
        match (tab, self.report) {
            (ConsensusTab::Leaderboard, _) => {
                let lines = match self.leaderboard {
                    Some(lb) => LeaderboardTable::new(lb).styles(st).lines(body.width),
                    None => vec![WrappedLine {
                        line: Line::styled("no leaderboard loaded", st.dim),
                        changed: false,
                    }],
                };
                show(lines, state, buf);
            }
            (_, None) => show(no_answers(), state, buf),
            (ConsensusTab::Matrix, Some(r)) => {
                let s = state.clamp(
                    tab,
                    AgreementMatrix::content_height(r),
                    body.height.saturating_sub(AgreementMatrix::HEADER_HEIGHT),
                );
                AgreementMatrix::new(r)
                    .blind(self.blind)
                    .styles(st)
                    .metric(state.metric)
                    .scroll(s)
                    .render(body, buf);
            }
            (ConsensusTab::Clusters, Some(r)) => {
                let lines = ClusterSummary::new(r)
                    .blind(self.blind)
                    .styles(st)
                    .lines(body.width);
                show(lines, state, buf);
            }
            (ConsensusTab::Diff, Some(r)) => {
                WordDiffView::new(r).blind(self.blind).styles(st).render(
                    body,
                    buf,
                    &mut state.diff,
                );
            }
            (ConsensusTab::Stability, Some(r)) => {
                let names = PaneNames::for_report(r, self.blind);
                let lines = StabilityTable::new(&r.stability)
                    .names(Some(&names))
                    .styles(st)
                    .lines(body.width);
                show(lines, state, buf);
            }
        }
    }
}
