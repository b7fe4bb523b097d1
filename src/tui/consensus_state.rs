//! What the consensus parts of the workbench remember (the report, blind mode,
//! votes, the judge, repeat-N) and their look. Plain state below the app: the app
//! holds a [`ConsensusPanel`]; `consensus_overlay` changes it.

use std::cell::RefCell;

use ratatui::style::{Color, Modifier};

use crate::engine::consensus::Leaderboard;

use super::consensus::{
    BlindState, ConsensusReport, ConsensusStyles, ConsensusViewState, JudgeStatus,
};
use super::theme::Theme;

/// Repeat-N: every target of the send runs `n` times, one pane per run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepeatPlan {
    /// Runs per target.
    pub n: u32,
    /// The targets, once each, in pane order.
    pub labels: Vec<String>,
    /// Per pane: (index into `labels`, run from 1).
    pub slots: Vec<(usize, u32)>,
}

/// Everything the consensus parts of the workbench remember.
#[derive(Debug, Clone, Default)]
pub struct ConsensusPanel {
    /// The report over the panes, rebuilt when an answer ends (not per frame).
    pub report: Option<ConsensusReport>,
    /// The view's tab, scroll and diff pair (a cell: drawing clamps the scroll).
    pub view: RefCell<ConsensusViewState>,
    /// The leaderboard from the ledger's votes, once loaded.
    pub board: Option<Leaderboard>,
    /// The judge of the current answers.
    pub judge: Option<JudgeStatus>,
    /// Blind mode of the current run.
    pub blind: Option<BlindState>,
    /// Blind mode for the next send.
    pub blind_next: bool,
    /// Runs per target for the next send (1, 3 or 5; 0 reads as 1).
    pub repeat_next: u32,
    /// Repeat-N of the current panes.
    pub repeat: Option<RepeatPlan>,
    /// The judge model from config (None: the first target).
    pub judge_model: Option<String>,
    /// Tag stored with votes.
    pub vote_tag: Option<String>,
    /// The widgets' look, from the theme.
    pub styles: ConsensusStyles,
    /// Our key of the last run started (a vote names it).
    pub last_run: Option<u64>,
}

impl ConsensusPanel {
    /// A panel styled after `theme`.
    pub fn new(theme: &Theme) -> Self {
        ConsensusPanel {
            styles: styles_from_theme(theme),
            repeat_next: 1,
            ..Default::default()
        }
    }

    /// Runs per target on the next send.
    pub fn next_repeat(&self) -> u32 {
        self.repeat_next.max(1)
    }
}

/// The consensus widgets' styles from the workbench theme; monochrome when
/// the theme has no colour at all (NO_COLOR).
pub fn styles_from_theme(t: &Theme) -> ConsensusStyles {
    let coloured = [t.ok, t.warn, t.error, t.title, t.dim, t.text]
        .iter()
        .any(|s| s.fg.is_some_and(|c| c != Color::Reset) || s.bg.is_some());
    if !coloured {
        return ConsensusStyles::monochrome();
    }
    let d = ConsensusStyles::default();
    ConsensusStyles {
        title: t.title,
        text: t.text,
        dim: t.dim,
        key: t.key,
        agree: t.ok,
        disagree: t.warn,
        failed: t.error,
        empty: t.dim.add_modifier(Modifier::ITALIC),
        tab: t.dim,
        tab_selected: t.title.add_modifier(Modifier::REVERSED),
        bar: if t.active.fg.is_some() {
            t.active
        } else {
            d.bar
        },
        ..d
    }
}

pub(crate) fn seed_for(prompt: &str, n: u64) -> u64 {
    // FNV-1a: the same prompt and send number always give the same letters.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ n;
    for b in prompt.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
