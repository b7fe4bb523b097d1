//! The consensus widgets wired into the workbench: the report rebuilt as
//! answers end, the consensus overlay and its keys, the summary bar, blind
//! mode, votes, the leaderboard, the judge and repeat-N. State changes here
//! are `impl App` methods called from `update`; IO goes out as `Cmd`s.

use crossterm::event::{KeyCode, KeyEvent};

use crate::engine::consensus::{leaderboard, AnswerInput, ConsensusOptions};
use crate::engine::judge::JudgeOutcome;
use crate::engine::ledger::VoteRow;

use super::app::{App, Focus, Overlay};
use super::consensus::{
    votes_from_rows, BlindState, ConsensusReport, ConsensusTab, ConsensusViewState, JudgeStatus,
};
use super::consensus_state::seed_for;
pub use super::consensus_state::{styles_from_theme, ConsensusPanel, RepeatPlan};
use super::keys::Action;
use super::msg::Cmd;
use super::pane::Pane;

impl App {
    // ----- names ---------------------------------------------------------

    fn slot_of(&self, pane: usize) -> (usize, Option<u32>) {
        match &self.cons.repeat {
            Some(r) if r.slots.len() == self.panes.len() => {
                let (ti, k) = r.slots[pane];
                (ti, Some(k))
            }
            _ => (pane, None),
        }
    }

    fn hidden_name(&self, index: usize) -> Option<String> {
        let b = self.cons.blind.as_ref()?;
        (!b.revealed() && index < b.len()).then(|| b.label_for(index))
    }

    /// What pane `i` is called on screen: its target (with `#k` under
    /// repeat-N), or `Answer C` while blind.
    pub fn pane_name(&self, i: usize) -> String {
        let Some(p) = self.panes.get(i) else {
            return String::new();
        };
        let (li, k) = self.slot_of(i);
        let base = self.hidden_name(li).unwrap_or_else(|| p.credited());
        match k {
            Some(k) => format!("{base} #{k}"),
            None => base,
        }
    }

    /// Whether pane `i`'s target is hidden behind a letter (blind, not yet voted).
    pub fn pane_hidden(&self, i: usize) -> bool {
        i < self.panes.len() && self.hidden_name(self.slot_of(i).0).is_some()
    }

    /// What the ledger calls `target`: hidden behind its letter while blind.
    pub fn ledger_name(&self, row: &super::app::LedgerRow) -> String {
        self.cons
            .blind
            .as_ref()
            .filter(|b| !b.revealed())
            .and_then(|b| b.targets().iter().position(|t| *t == row.asked))
            .and_then(|i| self.hidden_name(i))
            .unwrap_or_else(|| row.target.clone())
    }

    /// Whether the ledger row of `target` is hidden behind a letter.
    pub fn ledger_hidden(&self, target: &str) -> bool {
        self.cons
            .blind
            .as_ref()
            .is_some_and(|b| !b.revealed() && b.targets().iter().any(|t| t == target))
    }

    /// Panes in screen order: configured order, or, while blind, the order
    /// of their letters (so the position on screen tells nothing).
    pub fn display_order(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.panes.len()).collect();
        if let Some(b) = self.cons.blind.as_ref().filter(|b| !b.revealed()) {
            let by_letter = b.panes_by_letter();
            let rank = |li: usize| by_letter.iter().position(|x| *x == li).unwrap_or(li);
            v.sort_by_key(|&i| {
                let (li, k) = self.slot_of(i);
                (rank(li), k)
            });
        }
        v
    }

    /// Blind mode shows only the current turn of each hidden pane, without
    /// thinking; revealed, everything again.
    pub(crate) fn sync_blind_view(&mut self) {
        for i in 0..self.panes.len() {
            let from = self.pane_hidden(i).then(|| self.panes[i].turn_prompt);
            if self.panes[i].doc.blind_from() != from {
                self.panes[i].doc.set_blind_from(from);
                self.panes[i].scroll = None;
            }
        }
    }

    /// Whether names are hidden now.
    pub fn blind_hidden(&self) -> bool {
        self.cons.blind.as_ref().is_some_and(|b| !b.revealed())
    }

    // ----- the report ----------------------------------------------------

    /// Panes that were sent something, and of those, how many have ended.
    pub fn answer_progress(&self) -> (usize, usize) {
        let sent: Vec<&Pane> = self
            .panes
            .iter()
            .filter(|p| p.stats.sent_at.is_some() || p.stats.done.is_some())
            .collect();
        let ended = sent
            .iter()
            .filter(|p| !p.state.in_flight() && p.stats.done.is_some())
            .count();
        (ended, sent.len())
    }

    /// Every sent pane has ended.
    pub fn answers_ended(&self) -> bool {
        let (e, t) = self.answer_progress();
        t > 0 && e == t
    }

    /// Rebuild the report from the panes (on open, and as answers end).
    pub fn rebuild_report(&mut self) {
        let prompt = self.last_prompt.clone().unwrap_or_default();
        let mut report = match &self.cons.repeat {
            Some(r) if r.slots.len() == self.panes.len() => {
                let results = self
                    .panes
                    .iter()
                    .zip(&r.slots)
                    .filter_map(|(p, (ti, k))| p.stats.done.clone().map(|c| (*ti, *k, c)))
                    .collect();
                ConsensusReport::from_runs(
                    &prompt,
                    r.n,
                    r.labels.clone(),
                    results,
                    ConsensusOptions::default(),
                )
            }
            _ => {
                // One answer per pane, in pane order (blind letters index panes).
                let answers = self
                    .panes
                    .iter()
                    .map(|p| match (&p.stats.done, p.state.in_flight()) {
                        (Some(c), false) => AnswerInput::from_completion(p.credited(), c),
                        (_, true) => AnswerInput::failed(p.target.clone(), "still running"),
                        (None, false) => AnswerInput::failed(p.target.clone(), "no answer"),
                    })
                    .collect();
                ConsensusReport::from_answers(&prompt, answers)
            }
        };
        if let Some(j) = &self.cons.judge {
            report.set_judge(j.clone());
        }
        if let Some(b) = self.cons.blind.take() {
            let b = if b.voted().is_none() && !b.revealed() && b.len() == report.len() {
                let eligible = (0..report.len())
                    .map(|i| {
                        report.status(i) == Some(crate::engine::consensus::AnswerStatus::Answered)
                    })
                    .collect();
                b.with_eligible(eligible)
            } else {
                b
            };
            self.cons.blind = Some(b);
        }
        self.cons.view.get_mut().set_panes(&report);
        self.cons.report = Some(report);
    }

    /// An answer ended: rebuild while the view is open or once all ended.
    pub(crate) fn on_answer_end(&mut self) {
        if matches!(self.overlay, Overlay::Consensus) || self.answers_ended() {
            self.rebuild_report();
        }
    }

    /// Open the consensus view (loads the leaderboard off the UI thread).
    pub(crate) fn open_consensus(&mut self, cmds: &mut Vec<Cmd>) {
        if self.panes.iter().all(|p| p.stats.done.is_none()) {
            self.set_flash_text("consensus needs finished answers");
            return;
        }
        let fresh = self.cons.report.is_none();
        self.rebuild_report();
        if fresh {
            if let Some(r) = &self.cons.report {
                *self.cons.view.get_mut() = ConsensusViewState::for_report(r);
            }
        }
        self.overlay = Overlay::Consensus;
        cmds.push(Cmd::LoadVotes);
    }

    /// The diff tab of pane `i` against the majority (or the next pane).
    pub(crate) fn open_diff(&mut self, i: usize, cmds: &mut Vec<Cmd>) {
        self.open_consensus(cmds);
        if !matches!(self.overlay, Overlay::Consensus) {
            return;
        }
        let Some(r) = &self.cons.report else { return };
        // Repeat-N reports have one answer per target: diff the target's.
        let (me, _) = self.slot_of(i);
        let n = r.len();
        if n < 2 {
            return;
        }
        let c = &r.consensus;
        let majority = c
            .majority
            .and_then(|m| c.clusters.get(m))
            .and_then(|cl| cl.members.iter().copied().find(|x| *x != me));
        let in_majority = c
            .majority
            .and_then(|m| c.clusters.get(m))
            .is_some_and(|cl| cl.members.contains(&me));
        let other = match majority {
            Some(o) if !in_majority => o,
            _ => (me + 1) % n,
        };
        let v = self.cons.view.get_mut();
        v.select_tab(ConsensusTab::Diff);
        v.select_diff(me.min(n - 1), other);
    }

    // ----- keys ----------------------------------------------------------

    /// A key while the consensus view is open.
    pub(crate) fn consensus_key(&mut self, k: KeyEvent, cmds: &mut Vec<Cmd>) {
        if k.code == KeyCode::Esc || self.keys.is(Action::Consensus, &k) {
            self.overlay = Overlay::None;
            return;
        }
        if let Some(vote) = self.cons.blind.as_mut().and_then(|b| b.handle_key(k)) {
            let who = vote.winner.clone().unwrap_or_else(|| "a tie".into());
            self.set_flash_text(&format!("voted {who} · names revealed"));
            cmds.push(Cmd::RecordVote {
                vote,
                run: self.cons.last_run,
            });
            return;
        }
        if self.keys.is(Action::Judge, &k) {
            self.start_judge(cmds);
            return;
        }
        self.cons.view.get_mut().handle_key(k);
    }

    /// Toggle blind mode for the next send.
    pub(crate) fn toggle_blind(&mut self) {
        self.cons.blind_next = !self.cons.blind_next;
        let s = if self.cons.blind_next {
            "blind mode on for the next send: names hidden until you vote in the consensus view"
        } else {
            "blind mode off"
        };
        self.set_flash_text(s);
    }

    /// Cycle repeat-N for the next send: 1, 3, 5.
    pub(crate) fn cycle_repeat(&mut self) {
        self.cons.repeat_next = match self.cons.next_repeat() {
            1 => 3,
            3 => 5,
            _ => 1,
        };
        let n = self.cons.repeat_next;
        let s = if n == 1 {
            "each target runs once on the next send".to_string()
        } else {
            format!("each target runs {n} times from the next send on (one pane per run)")
        };
        self.set_flash_text(&s);
    }

    // ----- sending -------------------------------------------------------

    /// Before a new send: lay panes out for repeat-N, set up blind mode,
    /// forget the last report and judge.
    pub(crate) fn prepare_send(&mut self, prompt: &str) {
        let n = self.cons.next_repeat();
        let labels: Vec<String> = match &self.cons.repeat {
            Some(r) if r.slots.len() == self.panes.len() => r.labels.clone(),
            _ => {
                let mut l: Vec<String> = Vec::new();
                for p in &self.panes {
                    if !l.contains(&p.target) {
                        l.push(p.target.clone());
                    }
                }
                l
            }
        };
        let had_plan = self.cons.repeat.is_some();
        if n > 1 || had_plan {
            let mut pool: Vec<Option<Pane>> = std::mem::take(&mut self.panes)
                .into_iter()
                .map(Some)
                .collect();
            let mut panes = Vec::new();
            let mut slots = Vec::new();
            for (ti, t) in labels.iter().enumerate() {
                let history = pool
                    .iter()
                    .flatten()
                    .find(|p| &p.target == t)
                    .map(|p| p.history.clone());
                for k in 1..=n {
                    let reuse = pool
                        .iter_mut()
                        .find(|p| p.as_ref().is_some_and(|p| &p.target == t))
                        .and_then(Option::take);
                    let pane = reuse.unwrap_or_else(|| {
                        let mut p = Pane::new(t.clone(), self.styles);
                        if let Some(h) = &history {
                            p.history = h.clone();
                        }
                        p
                    });
                    panes.push(pane);
                    slots.push((ti, k));
                }
            }
            self.panes = panes;
            self.cons.repeat = (n > 1).then(|| RepeatPlan {
                n,
                labels: labels.clone(),
                slots,
            });
            self.zoom = None;
            if let Focus::Pane(i) = self.focus {
                if i >= self.panes.len() {
                    self.focus = Focus::Editor;
                }
            }
        }
        self.cons.report = None;
        self.cons.judge = None;
        *self.cons.view.get_mut() = ConsensusViewState::default();
        self.cons.blind = if self.cons.blind_next {
            self.cons.blind_next = false;
            let targets = if n > 1 {
                labels
            } else {
                self.panes.iter().map(|p| p.target.clone()).collect()
            };
            Some(
                BlindState::new(targets, seed_for(prompt, self.sends))
                    .with_tag(self.cons.vote_tag.clone()),
            )
        } else {
            None
        };
    }

    // ----- the judge -----------------------------------------------------

    /// Ask the judge about the finished answers.
    pub(crate) fn start_judge(&mut self, cmds: &mut Vec<Cmd>) {
        if matches!(self.cons.judge, Some(JudgeStatus::Running { .. })) {
            self.set_flash_text("the judge is still thinking");
            return;
        }
        if !matches!(self.overlay, Overlay::Consensus) {
            self.open_consensus(cmds);
        }
        let Some(r) = &self.cons.report else { return };
        let prompt = r.prompt.clone();
        // Every pane's answer, in pane order: the judge's key indexes them,
        // and the judge leaves failed and empty ones out itself.
        let answers: Vec<AnswerInput> = r.answers.clone();
        let answered = answers
            .iter()
            .filter(|a| !a.failed && !a.text.trim().is_empty())
            .count();
        if answered < 2 {
            self.set_flash_text("the judge needs at least two finished answers");
            return;
        }
        let Some(target) = self
            .cons
            .judge_model
            .clone()
            .or_else(|| self.panes.first().map(|p| p.target.clone()))
        else {
            return;
        };
        let status = JudgeStatus::Running {
            target: target.clone(),
        };
        self.cons.judge = Some(status.clone());
        if let Some(r) = &mut self.cons.report {
            r.set_judge(status);
        }
        self.cons.view.get_mut().select_tab(ConsensusTab::Clusters);
        self.set_flash_text(&format!("asking {target} to judge"));
        cmds.push(Cmd::Judge {
            target,
            prompt,
            answers,
        });
    }

    /// The judge answered (or could not be asked).
    pub(crate) fn on_judged(&mut self, r: Result<Box<JudgeOutcome>, String>) {
        let status = match r {
            Ok(o) => {
                // It went through the engine like any request: count its cost.
                let label = format!("judge {}", o.target);
                self.add_ledger_completion(&label, &o.completion);
                JudgeStatus::Done(o)
            }
            Err(e) => JudgeStatus::Unavailable(e),
        };
        self.cons.judge = Some(status.clone());
        if let Some(r) = &mut self.cons.report {
            r.set_judge(status);
        }
    }

    // ----- votes ---------------------------------------------------------

    /// Votes loaded from the ledger.
    pub(crate) fn on_votes(&mut self, r: Result<Vec<VoteRow>, String>) {
        match r {
            Ok(rows) => {
                let votes = votes_from_rows(&rows);
                self.cons.board = Some(leaderboard(&votes, self.cons.vote_tag.as_deref()));
            }
            Err(e) => tracing::debug!("votes: {e}"),
        }
    }
}
