//! Blind mode: pane names hidden behind shuffled letters until the user
//! votes for one answer (or a tie); the vote is returned as an engine
//! [`Vote`] for the main loop to store, and the names are revealed.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::ConsensusReport;
use crate::engine::consensus::{AnswerStatus, Vote};
use crate::engine::judge::letter;

/// What the user voted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteChoice {
    /// The pane at this index (pane order, not letter order).
    Pane(usize),
    /// No answer better than the others.
    Tie,
}

/// Blind comparison of the panes showing `targets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlindState {
    targets: Vec<String>,
    /// `slot[pane]`: the position of the pane's letter (0 = `A`).
    slot: Vec<usize>,
    /// Panes that can win and are counted in the vote (answered ones).
    eligible: Vec<bool>,
    tag: Option<String>,
    run_id: Option<String>,
    voted: Option<VoteChoice>,
    revealed: bool,
}

/// SplitMix64: a fixed, documented generator, so a seed gives the same
/// letters on every platform and every version of `rand`.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl BlindState {
    /// Hide `targets` (pane order) behind letters shuffled by `seed`.
    pub fn new(targets: Vec<String>, seed: u64) -> Self {
        let n = targets.len();
        // Fisher–Yates over letter positions.
        let mut order: Vec<usize> = (0..n).collect();
        let mut s = seed;
        for i in (1..n).rev() {
            let j = (splitmix64(&mut s) % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        // order[letter position] = pane; invert it.
        let mut slot = vec![0; n];
        for (pos, pane) in order.iter().enumerate() {
            slot[*pane] = pos;
        }
        BlindState {
            eligible: vec![true; n],
            targets,
            slot,
            tag: None,
            run_id: None,
            voted: None,
            revealed: false,
        }
    }

    /// Blind over every pane of `report`. Every pane gets a letter, but
    /// only answered ones take part in the vote: a failed or empty pane has
    /// no answer to judge, and must not lose Elo for an outage.
    pub fn for_report(report: &ConsensusReport, seed: u64) -> Self {
        let mut b = Self::new(
            report
                .consensus
                .answers
                .iter()
                .map(|a| a.label.clone())
                .collect(),
            seed,
        );
        b.eligible = report
            .consensus
            .answers
            .iter()
            .map(|a| a.status == AnswerStatus::Answered)
            .collect();
        b
    }

    /// Which panes take part in the vote (pane order); missing ones do not.
    pub fn with_eligible(mut self, eligible: Vec<bool>) -> Self {
        self.eligible = (0..self.len())
            .map(|i| eligible.get(i).copied().unwrap_or(false))
            .collect();
        self
    }

    /// Whether pane `pane` takes part in the vote.
    pub fn is_eligible(&self, pane: usize) -> bool {
        self.eligible.get(pane).copied().unwrap_or(false)
    }

    /// The targets a vote counts: the eligible panes', in pane order.
    pub fn vote_targets(&self) -> Vec<String> {
        (0..self.len())
            .filter(|p| self.is_eligible(*p))
            .map(|p| self.targets[p].clone())
            .collect()
    }

    /// Tag the vote (a project, a task family).
    pub fn with_tag(mut self, tag: Option<String>) -> Self {
        self.tag = tag;
        self
    }

    /// The run the vote is about.
    pub fn with_run_id(mut self, run_id: Option<String>) -> Self {
        self.run_id = run_id;
        self
    }

    /// Change the tag before voting.
    pub fn set_tag(&mut self, tag: Option<String>) {
        self.tag = tag;
    }

    /// Panes.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// No panes.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The targets, pane order.
    pub fn targets(&self) -> &[String] {
        &self.targets
    }

    /// The letter of pane `pane` (`A`, `B`, …), shown hidden or not.
    pub fn letter_for(&self, pane: usize) -> Option<String> {
        self.slot.get(pane).map(|s| letter(*s))
    }

    /// What pane `pane` is called: `Answer C` until revealed, then its target.
    pub fn label_for(&self, pane: usize) -> String {
        match (self.revealed, self.targets.get(pane)) {
            (true, Some(t)) => t.clone(),
            (_, Some(_)) => format!("Answer {}", letter(self.slot[pane])),
            (_, None) => String::new(),
        }
    }

    /// The pane behind a letter (case-insensitive).
    pub fn pane_for_letter(&self, l: &str) -> Option<usize> {
        let l = l.trim().to_ascii_uppercase();
        (0..self.len()).find(|p| letter(self.slot[*p]) == l)
    }

    /// Panes in letter order (`A` first).
    pub fn panes_by_letter(&self) -> Vec<usize> {
        let mut p: Vec<usize> = (0..self.len()).collect();
        p.sort_by_key(|i| self.slot[*i]);
        p
    }

    /// Whether names are shown.
    pub fn revealed(&self) -> bool {
        self.revealed
    }

    /// The vote cast, if any.
    pub fn voted(&self) -> Option<VoteChoice> {
        self.voted
    }

    /// Cast the vote: names are revealed and the vote (over the eligible
    /// panes) returned for the caller to store (`created_at` unset: the
    /// store stamps it). `None`, and nothing changes, if a vote was already
    /// cast or the names were revealed, the pane does not exist or is not
    /// eligible, or fewer than two panes are eligible.
    pub fn vote(&mut self, choice: VoteChoice) -> Option<Vote> {
        let targets = self.vote_targets();
        if self.revealed || self.voted.is_some() || targets.len() < 2 {
            return None;
        }
        let winner = match choice {
            VoteChoice::Pane(p) if self.is_eligible(p) => Some(self.targets[p].clone()),
            VoteChoice::Pane(_) => return None,
            VoteChoice::Tie => None,
        };
        self.voted = Some(choice);
        self.revealed = true;
        Some(Vote {
            targets,
            winner,
            tag: self.tag.clone(),
            run_id: self.run_id.clone(),
            created_at: None,
        })
    }

    /// Show the names without voting.
    pub fn reveal(&mut self) {
        self.revealed = true;
    }

    /// The vote a key stands for while names are hidden: an upper-case
    /// letter (Shift+letter) votes for that answer, `=` is a tie.
    pub fn choice_for_key(&self, key: impl Into<KeyEvent>) -> Option<VoteChoice> {
        let key = key.into();
        if self.revealed
            || key.kind == KeyEventKind::Release
            || key
                .modifiers
                .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT)
        {
            return None;
        }
        match key.code {
            KeyCode::Char('=') => Some(VoteChoice::Tie),
            KeyCode::Char(c) if c.is_ascii_uppercase() => {
                self.pane_for_letter(&c.to_string()).map(VoteChoice::Pane)
            }
            _ => None,
        }
    }

    /// [`choice_for_key`](Self::choice_for_key), then [`vote`](Self::vote).
    pub fn handle_key(&mut self, key: impl Into<KeyEvent>) -> Option<Vote> {
        let choice = self.choice_for_key(key)?;
        self.vote(choice)
    }
}
