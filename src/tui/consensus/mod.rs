//! The consensus part of the TUI: the agreement heat map, clusters and
//! verdict, the word diff of two panes, blind voting, the leaderboard and
//! repeat-N stability, as ratatui widgets over the engine's pure consensus
//! types. Nothing here does IO or reads a clock: state changes through
//! plain methods, and rendering is a function of state.
//!
//! # Integrating it into the main TUI
//!
//! **Build a report** when answers finish (on `Finished`/`Failed`, not per
//! frame: the analysis diffs every pair of answers):
//! ```ignore
//! let report = ConsensusReport::from_completions(&prompt, panes.iter().map(|p| (p.target.clone(), &p.completion)));
//! // repeat-N: ConsensusReport::from_runs(&prompt, repeat, labels, results, opts)
//! // judge, when it runs: report.set_judge(JudgeStatus::Running { target }) then Done(Box::new(outcome))
//! view_state.set_panes(&report);        // keeps the tab and scroll, fixes the diff pair
//! ```
//! **Blind mode** (optional): `let mut blind = BlindState::for_report(&report, seed).with_tag(tag);`
//! with any seed the loop picks (the run id's hash, say); the same seed
//! always gives the same letters. Pane titles use `blind.label_for(i)`.
//!
//! **On a key** while the consensus view has focus:
//! ```ignore
//! if let Some(vote) = blind.as_mut().and_then(|b| b.handle_key(key)) {
//!     cmds.push(Cmd::RecordVote(vote));   // ledger.record_vote(..) / VoteStore::record_vote
//! } else if view_state.handle_key(key) {
//!     dirty = true;                       // consumed: redraw
//! }                                       // else: not ours (Esc, Tab, Ctrl-…): handle globally
//! ```
//! Keys: `←`/`→` or `h`/`l` change tab, `1`–`5` pick one; `↑`/`↓`, `j`/`k`,
//! `PgUp`/`PgDn`, `Home`/`End` scroll; `m` cycles the heat map's metric;
//! on the diff tab `[`/`]` change the first pane, `{`/`}` the second,
//! `x` swaps them, `n`/`p` jump to the next/previous change. In blind mode
//! `Shift`+letter votes for that answer and `=` is a tie (then names show).
//! Keys with Ctrl or Alt are never consumed.
//!
//! **Render**:
//! ```ignore
//! let styles = ConsensusStyles::from_no_color(no_color);   // or ::default() / ::monochrome()
//! frame.render_stateful_widget(
//!     ConsensusView::new(&report).blind(blind.as_ref()).leaderboard(Some(&board)).styles(&styles).block(block),
//!     area, &mut view_state);
//! // the bar under the panes:
//! frame.render_widget(SummaryLine::new(&report.consensus).styles(&styles), bar);
//! // while answers stream: SummaryLine::waiting(finished, total)
//! ```
//! The leaderboard comes from the engine: `leaderboard(&votes, tag)`, with
//! ledger rows turned into votes by [`votes_from_rows`].
//! Every widget can also be used alone: [`AgreementMatrix`],
//! [`ClusterSummary`], [`WordDiffView`], [`LeaderboardTable`],
//! [`StabilityTable`], [`SummaryLine`].

mod blind;
mod diff;
mod matrix;
mod summary;
mod tables;
mod text;
mod view;

pub use blind::{BlindState, VoteChoice};
pub use diff::{diff_lines, DiffState, WordDiffView};
pub use matrix::{AgreementMatrix, MatrixMetric};
pub use summary::{ClusterSummary, SummaryLine};
pub use tables::{LeaderboardTable, StabilityTable};
pub use text::WrappedLine;
pub use view::{ConsensusTab, ConsensusView, ConsensusViewState};

use ratatui::style::{Color, Modifier, Style};

use crate::engine::consensus::{
    analyze_with, AnswerInput, AnswerStatus, Consensus, ConsensusOptions, Stability, Vote,
};
use crate::engine::judge::{JudgeOutcome, Verdict};
use crate::engine::ledger::VoteRow;
use crate::engine::Completion;

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

/// Where the judge is.
#[derive(Debug, Clone)]
pub enum JudgeStatus {
    /// Asked, no answer yet.
    Running {
        /// The judge model.
        target: String,
    },
    /// Answered (the verdict may still be missing: see `JudgeOutcome::error`).
    Done(Box<JudgeOutcome>),
    /// Not run, with why (fewer than two answers, a failed request).
    Unavailable(String),
}

/// Everything the consensus views show about one run: the answers (for the
/// diff), the engine's analysis, per-model stability and the judge.
#[derive(Debug, Clone)]
pub struct ConsensusReport {
    /// The prompt.
    pub prompt: String,
    /// One answer per pane, in pane order (the order of `consensus.answers`).
    pub answers: Vec<AnswerInput>,
    /// The engine's verdict over `answers`.
    pub consensus: Consensus,
    /// Per-pane stability over repeated runs; empty with one run each.
    pub stability: Vec<Stability>,
    /// Runs per pane.
    pub repeat: u32,
    /// The judge, if asked.
    pub judge: Option<JudgeStatus>,
}

impl ConsensusReport {
    /// Analyse one answer per pane with the default options.
    pub fn from_answers(prompt: &str, answers: Vec<AnswerInput>) -> Self {
        Self::from_answers_with(prompt, answers, ConsensusOptions::default())
    }

    /// Analyse one answer per pane.
    pub fn from_answers_with(
        prompt: &str,
        answers: Vec<AnswerInput>,
        opts: ConsensusOptions,
    ) -> Self {
        let consensus = analyze_with(prompt, &answers, opts);
        ConsensusReport {
            prompt: prompt.to_string(),
            answers,
            consensus,
            stability: Vec::new(),
            repeat: 1,
            judge: None,
        }
    }

    /// From finished requests, labelled by the caller (usually the target).
    pub fn from_completions<'a, L: Into<String>>(
        prompt: &str,
        completions: impl IntoIterator<Item = (L, &'a Completion)>,
    ) -> Self {
        let answers = completions
            .into_iter()
            .map(|(l, c)| AnswerInput::from_completion(l, c))
            .collect();
        Self::from_answers(prompt, answers)
    }

    /// Repeat-N: `results` are (pane index, run from 1, completion). The
    /// same computation as `quorum compare --repeat`: each pane is
    /// represented by a run of its largest cluster, and gets a stability row.
    pub fn from_runs(
        prompt: &str,
        repeat: u32,
        labels: Vec<String>,
        results: Vec<(usize, u32, Completion)>,
        opts: ConsensusOptions,
    ) -> Self {
        Self::from_compare(&crate::engine::compare::analyse(
            prompt, repeat, labels, results, opts,
        ))
    }

    /// From a `quorum compare` report.
    pub fn from_compare(r: &crate::engine::compare::Report) -> Self {
        let answers = r
            .representative
            .iter()
            .filter_map(|i| r.results.get(*i))
            .map(|(ti, _, c)| AnswerInput::from_completion(r.labels[*ti].clone(), c))
            .collect();
        let judge = r.judge.as_ref().map(|j| match j {
            Ok(o) => JudgeStatus::Done(Box::new(o.clone())),
            Err(e) => JudgeStatus::Unavailable(e.clone()),
        });
        ConsensusReport {
            prompt: r.prompt.clone(),
            answers,
            consensus: r.consensus.clone(),
            stability: if r.repeat > 1 {
                r.stability.clone()
            } else {
                Vec::new()
            },
            repeat: r.repeat,
            judge,
        }
    }

    /// With the judge's status.
    pub fn with_judge(mut self, judge: JudgeStatus) -> Self {
        self.judge = Some(judge);
        self
    }

    /// Set the judge's status.
    pub fn set_judge(&mut self, judge: JudgeStatus) {
        self.judge = Some(judge);
    }

    /// Panes in the report.
    pub fn len(&self) -> usize {
        self.consensus.answers.len()
    }

    /// No panes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The judge's verdict, when there is one.
    pub fn verdict(&self) -> Option<&Verdict> {
        match &self.judge {
            Some(JudgeStatus::Done(o)) => o.verdict.as_ref(),
            _ => None,
        }
    }

    /// The status of pane `i`.
    pub fn status(&self, i: usize) -> Option<AnswerStatus> {
        self.consensus.answers.get(i).map(|a| a.status)
    }

    /// Answered panes outside the majority cluster (indices).
    pub fn dissenting(&self) -> Vec<usize> {
        let Some(m) = self.consensus.majority else {
            return Vec::new();
        };
        self.consensus
            .answers
            .iter()
            .filter(|a| a.status == AnswerStatus::Answered && a.cluster != Some(m))
            .map(|a| a.index)
            .collect()
    }
}

/// Ledger vote rows as engine votes, for `leaderboard`.
pub fn votes_from_rows(rows: &[VoteRow]) -> Vec<Vote> {
    rows.iter()
        .map(|r| Vote {
            targets: r.targets.clone(),
            winner: r.winner.clone(),
            tag: r.tag.clone(),
            run_id: r.run_id.clone(),
            created_at: Some(r.created_at.clone()),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

/// How panes are named on screen: a short key (`1`, `2`… or the blind
/// letter) and a name (the target, or `Answer C` while blind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaneNames {
    keys: Vec<String>,
    names: Vec<String>,
    hidden: bool,
}

impl PaneNames {
    /// Names for `labels`, hidden behind `blind`'s letters until it is revealed.
    pub fn new(labels: &[String], blind: Option<&BlindState>) -> Self {
        let mut keys = Vec::with_capacity(labels.len());
        let mut names = Vec::with_capacity(labels.len());
        let hidden = blind.is_some_and(|b| !b.revealed());
        for (i, l) in labels.iter().enumerate() {
            match blind.and_then(|b| b.letter_for(i)) {
                Some(letter) => {
                    names.push(if hidden {
                        format!("Answer {letter}")
                    } else {
                        l.clone()
                    });
                    keys.push(letter);
                }
                None => {
                    keys.push((i + 1).to_string());
                    names.push(if hidden {
                        format!("Answer {}", i + 1)
                    } else {
                        l.clone()
                    });
                }
            }
        }
        PaneNames {
            keys,
            names,
            hidden,
        }
    }

    /// Names for the panes of `report`.
    pub fn for_report(report: &ConsensusReport, blind: Option<&BlindState>) -> Self {
        let labels: Vec<String> = report
            .consensus
            .answers
            .iter()
            .map(|a| a.label.clone())
            .collect();
        Self::new(&labels, blind)
    }

    /// Short key of pane `i`.
    pub fn key(&self, i: usize) -> &str {
        self.keys.get(i).map(String::as_str).unwrap_or("?")
    }

    /// Name of pane `i`.
    pub fn name(&self, i: usize) -> &str {
        self.names.get(i).map(String::as_str).unwrap_or("?")
    }

    /// Key and name (`2 openai/gpt-4o`), or only `Answer C` while hidden.
    pub fn full(&self, i: usize) -> String {
        if self.hidden {
            self.name(i).to_string()
        } else {
            format!("{} {}", self.key(i), self.name(i))
        }
    }

    /// Whether names are hidden.
    pub fn hidden(&self) -> bool {
        self.hidden
    }

    /// Panes named.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// None named.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

// ---------------------------------------------------------------------------
// Styles
// ---------------------------------------------------------------------------

/// How a score in 0..1 is shown in the heat map.
#[derive(Debug, Clone, PartialEq)]
pub enum Heat {
    /// Background colours from low to high score.
    Gradient(Vec<Color>),
    /// No colour: shade characters `░▒▓█` from low to high (NO_COLOR).
    Shades,
}

/// Shade characters of [`Heat::Shades`], low to high.
pub const SHADES: [char; 4] = ['░', '▒', '▓', '█'];

impl Heat {
    fn steps(&self) -> usize {
        match self {
            Heat::Gradient(c) => c.len().max(1),
            Heat::Shades => SHADES.len(),
        }
    }

    /// Which step a score falls in.
    pub fn bucket(&self, score: f64) -> usize {
        let n = self.steps();
        let s = if score.is_finite() {
            score.clamp(0.0, 1.0)
        } else {
            0.0
        };
        ((s * n as f64).floor() as usize).min(n - 1)
    }

    /// The style of a heat-map cell.
    pub fn cell_style(&self, score: f64) -> Style {
        match self {
            Heat::Gradient(c) if !c.is_empty() => {
                Style::new().bg(c[self.bucket(score)]).fg(Color::Black)
            }
            _ => Style::new(),
        }
    }

    /// The character a heat-map cell is filled with.
    pub fn fill(&self, score: f64) -> char {
        match self {
            Heat::Gradient(_) => ' ',
            Heat::Shades => SHADES[self.bucket(score)],
        }
    }

    /// The style of a score shown in text (the agreement figure).
    pub fn text_style(&self, score: f64) -> Style {
        match self {
            Heat::Gradient(c) if !c.is_empty() => Style::new().fg(c[self.bucket(score)]),
            _ => Style::new().add_modifier(Modifier::BOLD),
        }
    }
}

/// The look of every consensus widget. [`Default`] is coloured;
/// [`ConsensusStyles::monochrome`] uses no colour at all (NO_COLOR): shades
/// for the heat map, modifiers and `[-…-]`/`{+…+}` markers for the diff.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsensusStyles {
    /// Headings and the selected tab's name.
    pub title: Style,
    /// Plain text.
    pub text: Style,
    /// Secondary text: captions, help, separators.
    pub dim: Style,
    /// Pane keys (`1`, `A`).
    pub key: Style,
    /// The majority.
    pub agree: Style,
    /// Dissent.
    pub disagree: Style,
    /// Failed answers.
    pub failed: Style,
    /// Empty answers.
    pub empty: Style,
    /// Text only in the second pane of a diff.
    pub insert: Style,
    /// Text only in the first pane of a diff.
    pub delete: Style,
    /// Unselected tabs.
    pub tab: Style,
    /// The selected tab.
    pub tab_selected: Style,
    /// Bars (win rate, self-agreement).
    pub bar: Style,
    /// The heat map.
    pub heat: Heat,
    /// Wrap diff changes in `[-…-]` / `{+…+}` so they read without colour.
    pub diff_markers: bool,
}

impl Default for ConsensusStyles {
    fn default() -> Self {
        ConsensusStyles {
            title: Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
            text: Style::new(),
            dim: Style::new().fg(Color::DarkGray),
            key: Style::new().add_modifier(Modifier::BOLD),
            agree: Style::new().fg(Color::Green),
            disagree: Style::new().fg(Color::Yellow),
            failed: Style::new().fg(Color::Red),
            empty: Style::new()
                .fg(Color::DarkGray)
                .add_modifier(Modifier::ITALIC),
            insert: Style::new().fg(Color::Green).add_modifier(Modifier::BOLD),
            delete: Style::new()
                .fg(Color::Red)
                .add_modifier(Modifier::CROSSED_OUT),
            tab: Style::new().fg(Color::DarkGray),
            tab_selected: Style::new()
                .fg(Color::Cyan)
                .add_modifier(Modifier::BOLD | Modifier::REVERSED),
            bar: Style::new().fg(Color::Cyan),
            heat: Heat::Gradient(vec![
                Color::Red,
                Color::LightRed,
                Color::Yellow,
                Color::LightGreen,
                Color::Green,
            ]),
            diff_markers: false,
        }
    }
}

impl ConsensusStyles {
    /// No colour anywhere, for NO_COLOR.
    pub fn monochrome() -> Self {
        ConsensusStyles {
            title: Style::new().add_modifier(Modifier::BOLD),
            text: Style::new(),
            dim: Style::new().add_modifier(Modifier::DIM),
            key: Style::new().add_modifier(Modifier::BOLD),
            agree: Style::new().add_modifier(Modifier::BOLD),
            disagree: Style::new().add_modifier(Modifier::ITALIC),
            failed: Style::new().add_modifier(Modifier::BOLD),
            empty: Style::new().add_modifier(Modifier::ITALIC),
            insert: Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
            delete: Style::new().add_modifier(Modifier::CROSSED_OUT),
            tab: Style::new(),
            tab_selected: Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED),
            bar: Style::new(),
            heat: Heat::Shades,
            diff_markers: true,
        }
    }

    /// Monochrome when `no_color`, else the default.
    pub fn from_no_color(no_color: bool) -> Self {
        if no_color {
            Self::monochrome()
        } else {
            Self::default()
        }
    }

    /// Monochrome when `NO_COLOR` is set to a non-empty value (no-color.org).
    pub fn from_env() -> Self {
        Self::from_no_color(std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()))
    }
}

/// The default styles, for widgets not given any.
pub(crate) fn default_styles() -> &'static ConsensusStyles {
    static DEFAULT: std::sync::OnceLock<ConsensusStyles> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(ConsensusStyles::default)
}
