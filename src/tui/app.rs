//! The workbench's state and its one `update`: messages in, commands out.
//! No IO happens here; the loop in `mod.rs` runs the commands.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEvent, MouseEventKind};
use ratatui::layout::Rect;
use ratatui::style::Style;
use tui_textarea::TextArea;

use crate::engine::budget::Projection;
use crate::engine::cost::Pricing;
use crate::engine::{
    ChatRequest, Completion, CostSource, EngineError, Message, Role, StreamEvent, Tally, Usage,
};

use super::consensus_state::ConsensusPanel;
use super::export::{ExportAnswer, ExportDoc, ExportLedgerRow, ExportTurn};
use super::keys::{Action, KeyMap};
use super::layout::{self, Areas};
use super::msg::{Cmd, HistRun, Msg};
use super::pane::{Pane, PaneState};
use super::settings::{self, Attachments, Field, Knobs, SettingsPanel};
use super::text::TextStyles;
use super::theme::Theme;

/// Most panes the picker allows.
pub const MAX_PANES: usize = 12;

/// Output limit of a send where neither `tui_max_tokens` nor `[models]` sets one.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Output tokens an answer is expected to take when the session has no
/// answer of that target yet (for the expected cost shown next to the bound).
pub const TYPICAL_OUTPUT_TOKENS: u64 = 400;

/// What has the keyboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    /// The prompt editor.
    Editor,
    /// Pane `i`.
    Pane(usize),
    /// The ledger.
    Ledger,
}

/// A question waiting for y / n.
#[derive(Debug, Clone)]
pub enum Confirm {
    /// Quit with runs in flight.
    Quit,
    /// A send that would cross a budget cap.
    Budget(String),
}

/// The target picker.
#[derive(Debug, Clone, Default)]
pub struct Picker {
    /// Filter text.
    pub filter: String,
    /// Every target offered, with whether it is on.
    pub items: Vec<(String, bool)>,
    /// Cursor into the filtered list.
    pub cursor: usize,
}

impl Picker {
    /// Indices of items matching the filter, best first.
    pub fn filtered(&self) -> Vec<usize> {
        let mut v: Vec<(i64, usize)> = self
            .items
            .iter()
            .enumerate()
            .filter_map(|(i, (t, _))| fuzzy_score(&self.filter, t).map(|s| (s, i)))
            .collect();
        v.sort_by_key(|(s, i)| (-*s, *i));
        v.into_iter().map(|(_, i)| i).collect()
    }
}

/// Subsequence match, case-insensitive; higher is better; None when no match.
pub fn fuzzy_score(pattern: &str, text: &str) -> Option<i64> {
    if pattern.is_empty() {
        return Some(0);
    }
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let mut score = 0i64;
    let mut pos = 0usize;
    let mut last: Option<usize> = None;
    for pc in pattern.to_lowercase().chars() {
        if pc == ' ' {
            continue;
        }
        let found = (pos..t.len()).find(|&i| t[i] == pc)?;
        score += 10;
        if last.is_some_and(|l| l + 1 == found) {
            score += 15;
        }
        if found == 0 || matches!(t[found - 1], '/' | '-' | '_' | '.' | ' ') {
            score += 8;
        }
        score -= (found - pos) as i64;
        last = Some(found);
        pos = found + 1;
    }
    Some(score)
}

/// The history browser.
#[derive(Debug, Clone, Default)]
pub struct HistoryView {
    /// Loaded runs, newest first (None while loading).
    pub runs: Option<Vec<HistRun>>,
    /// Why loading failed.
    pub error: Option<String>,
    /// Selected run.
    pub selected: usize,
    /// The reopened run's panes (read-only).
    pub open: Option<Vec<Pane>>,
    /// Focused pane of the reopened run.
    pub focus: usize,
}

/// An overlay over the main screen.
#[derive(Debug, Clone, Default)]
pub enum Overlay {
    /// None.
    #[default]
    None,
    /// Key help, scrolled this many lines.
    Help(u16),
    /// Target picker.
    Picker(Picker),
    /// A y / n question.
    Confirm(Confirm),
    /// Past runs.
    History(Box<HistoryView>),
    /// The consensus view (its state is `App::cons`).
    Consensus,
    /// The per-run settings (their state is `App::settings`).
    Settings,
}

/// Session totals of one target.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LedgerRow {
    /// Who is credited: the target, or `provider/model (for target)` when a
    /// fallback answered.
    pub target: String,
    /// The target asked for (the pane's).
    pub asked: String,
    /// Requests, tokens and spend.
    pub tally: Tally,
}

/// What the app is given at start.
#[derive(Debug, Clone, Default)]
pub struct AppInit {
    /// Targets to open with.
    pub targets: Vec<String>,
    /// Every target the picker offers.
    pub available: Vec<String>,
    /// Theme.
    pub theme: Theme,
    /// Keys.
    pub keys: KeyMap,
    /// Banner lines (offline first run, warnings).
    pub banner: Vec<String>,
    /// Whether a budget cap is set (sends are checked first).
    pub budget_set: bool,
    /// Prices for live cost (None: unknown until the engine settles).
    pub pricing: Option<Pricing>,
    /// Terminal size.
    pub size: (u16, u16),
}

/// The whole state.
pub struct App {
    /// Theme.
    pub theme: Theme,
    /// Keys.
    pub keys: KeyMap,
    /// Styles of transcripts.
    pub styles: TextStyles,
    /// Output panes.
    pub panes: Vec<Pane>,
    /// Keyboard focus.
    pub focus: Focus,
    /// Overlay.
    pub overlay: Overlay,
    /// Zoomed pane.
    pub zoom: Option<usize>,
    /// The prompt editor.
    pub editor: TextArea<'static>,
    /// Terminal size.
    pub size: (u16, u16),
    /// The clock, set by the loop before each update.
    pub now: Instant,
    /// Show thinking blocks expanded.
    pub show_thinking: bool,
    /// Banner lines.
    pub banner: Vec<String>,
    /// Runs in flight: key -> targets.
    pub runs: HashMap<u64, Vec<String>>,
    /// The engine's run ids of the runs in flight -> our keys, and for each of the
    /// engine run's targets its index among ours.
    run_keys: HashMap<String, (u64, Vec<usize>)>,
    /// Targets of a run in flight that have ended.
    ended: HashMap<u64, usize>,
    next_run: u64,
    /// Session ledger rows, in order of first use.
    pub ledger: Vec<LedgerRow>,
    /// Sends this session.
    pub sends: u64,
    /// The last prompt sent.
    pub last_prompt: Option<String>,
    /// Prompts sent, newest last.
    pub prompt_history: Vec<String>,
    hist_idx: Option<usize>,
    /// Edit generation of the projection.
    pub proj_gen: u64,
    /// The last projection and the generation it is for.
    pub projection: Option<(u64, Projection)>,
    /// A short message in the status bar, with when it was set.
    pub flash: Option<(String, Instant)>,
    /// Whether sends are checked against a budget first.
    pub budget_set: bool,
    pending_send: Option<Vec<Group>>,
    /// Prices for live cost.
    pub pricing: Option<Pricing>,
    /// Targets the picker offers.
    pub available: Vec<String>,
    /// Ledger pane scroll.
    pub ledger_scroll: usize,
    /// Set when the app should exit.
    pub quit: bool,
    /// Set when something visible changed.
    pub dirty: bool,
    /// The consensus view, blind mode, the judge and repeat-N.
    pub cons: ConsensusPanel,
    /// Providers that need a key and have none (the picker marks their targets).
    pub keyless: Vec<String>,
    /// Output limit of sends where `model_max_tokens` has none (None: no limit).
    pub max_tokens: Option<u32>,
    /// `[models."provider/model"] max_tokens` from config, by target.
    pub model_max_tokens: HashMap<String, u32>,
    /// Earlier turns of the conversation, for the export.
    pub past_turns: Vec<ExportTurn>,
    /// Per-run settings (system prompt, reasoning, JSON, schema, tools, per target).
    pub settings: SettingsPanel,
    pending_close: Option<ExportTurn>,
    /// The pane whose answer the current turn continued from.
    turn_continued: Option<String>,
    next_continued: Option<String>,
}

/// Panes that get the same request go in one run.
#[derive(Debug, Clone)]
struct Group {
    messages: Vec<Message>,
    max_tokens: Option<u32>,
    knobs: Knobs,
    attach: Attachments,
    prompt: String,
    members: Vec<(usize, bool)>,
}

/// Each group's options, in the order of [`App::groups_for_cmd`].
fn options_for_cmd(plan: &[Group]) -> Vec<crate::engine::options::RequestOptions> {
    plan.iter()
        .map(|g| g.knobs.request_options(&g.attach))
        .collect()
}

impl Group {
    /// The request of this group: its messages, system prompt, temperature and limit
    /// (its options and attachments go with it in [`Cmd::Start`]).
    fn request(&self) -> ChatRequest {
        ChatRequest {
            messages: self.messages.clone(),
            max_tokens: self.max_tokens,
            temperature: self.knobs.temperature,
            ..Default::default()
        }
    }
}

const FLASH_FOR: Duration = Duration::from_secs(6);

impl App {
    /// A new app.
    pub fn new(init: AppInit) -> App {
        let styles = TextStyles::from_theme(&init.theme);
        let mut app = App {
            panes: init
                .targets
                .iter()
                .take(MAX_PANES)
                .map(|t| Pane::new(t.clone(), styles))
                .collect(),
            styles,
            keys: init.keys,
            focus: Focus::Editor,
            overlay: Overlay::None,
            zoom: None,
            editor: TextArea::default(),
            size: init.size,
            now: Instant::now(),
            show_thinking: false,
            banner: init.banner,
            runs: HashMap::new(),
            run_keys: HashMap::new(),
            ended: HashMap::new(),
            next_run: 1,
            ledger: Vec::new(),
            sends: 0,
            last_prompt: None,
            prompt_history: Vec::new(),
            hist_idx: None,
            proj_gen: 0,
            projection: None,
            flash: None,
            budget_set: init.budget_set,
            pending_send: None,
            pricing: init.pricing,
            available: init.available,
            ledger_scroll: 0,
            quit: false,
            dirty: true,
            cons: ConsensusPanel::new(&init.theme),
            theme: init.theme,
            keyless: Vec::new(),
            max_tokens: Some(DEFAULT_MAX_TOKENS),
            model_max_tokens: HashMap::new(),
            past_turns: Vec::new(),
            settings: SettingsPanel::default(),
            pending_close: None,
            turn_continued: None,
            next_continued: None,
        };
        app.style_editor();
        app.relayout();
        app
    }

    fn style_editor(&mut self) {
        let t = &self.theme;
        self.editor.set_style(t.text);
        self.editor.set_cursor_line_style(Style::new());
        self.editor.set_placeholder_style(t.dim);
        let n = self.panes.len();
        self.editor.set_placeholder_text(format!(
            "Type a prompt · {} sends it to {n} target{}",
            self.keys.short(Action::Send),
            if n == 1 { "" } else { "s" }
        ));
        let cursor = if self.focus == Focus::Editor {
            t.text.add_modifier(ratatui::style::Modifier::REVERSED)
        } else {
            Style::new()
        };
        self.editor.set_cursor_style(cursor);
    }

    /// The `@path` being typed just before the editor's cursor (without the `@`).
    pub fn at_prefix(&self) -> Option<String> {
        let (row, col) = self.editor.cursor();
        let line = self.editor.lines().get(row)?;
        let before: String = line.chars().take(col).collect();
        settings::at_prefix(&before).map(str::to_string)
    }

    fn on_path_entries(&mut self, prefix: &str, entries: Result<Vec<String>, String>) {
        // The user typed on meanwhile: this listing is stale.
        if self.at_prefix().as_deref() != Some(prefix) {
            return;
        }
        let entries = match entries {
            Ok(e) => e,
            Err(e) => return self.set_flash(format!("@{prefix}: {e}")),
        };
        match settings::complete(prefix, &entries) {
            Some(done) => {
                self.editor.insert_str(&done[prefix.len()..]);
                self.hist_idx = None;
            }
            None => {
                let stem = prefix.rsplit('/').next().unwrap_or(prefix);
                let mut m: Vec<&String> = entries.iter().filter(|e| e.starts_with(stem)).collect();
                m.sort();
                let flash = match m.len() {
                    0 => format!("no file matches @{prefix}"),
                    n => {
                        let shown: Vec<&str> = m.iter().take(6).map(|s| s.as_str()).collect();
                        let more = if n > 6 {
                            format!(" (+{})", n - 6)
                        } else {
                            String::new()
                        };
                        format!("@{prefix}: {}{more}", shown.join("  "))
                    }
                };
                self.set_flash(flash);
            }
        }
    }

    /// A key in the settings panel: ↑/↓ rows, ←/→ change the target or a choice,
    /// Enter edits a text row (Enter again stores it), Esc or the settings key closes.
    fn settings_key(&mut self, k: KeyEvent) {
        let targets: Vec<String> = self.panes.iter().map(|p| p.target.clone()).collect();
        let close = self.keys.is(Action::Settings, &k);
        let st = &mut self.settings;
        if let Some(text) = &mut st.editing {
            match k.code {
                KeyCode::Enter => {
                    let _ = st.commit_edit();
                }
                KeyCode::Esc => {
                    st.editing = None;
                    st.error = None;
                }
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c)
                    if !k
                        .modifiers
                        .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT) =>
                {
                    text.push(c)
                }
                _ => {}
            }
            self.overlay = Overlay::Settings;
            return;
        }
        if k.code == KeyCode::Esc || close {
            st.open = false;
            st.tidy();
            return;
        }
        let n = settings::FIELDS.len();
        match k.code {
            KeyCode::Up => st.row = (st.row + n - 1) % n,
            KeyCode::Down | KeyCode::Tab => st.row = (st.row + 1) % n,
            KeyCode::Left | KeyCode::Right => {
                let fwd = k.code == KeyCode::Right;
                if st.field() == Field::Scope {
                    st.step_scope(&targets, fwd);
                } else {
                    st.cycle(fwd);
                }
            }
            KeyCode::Enter | KeyCode::Char(' ') => match st.field() {
                Field::Scope => st.step_scope(&targets, true),
                f if f.is_text() => st.start_edit(),
                _ => st.cycle(true),
            },
            // Unset the row in this layer (a target then inherits it again).
            KeyCode::Delete | KeyCode::Backspace => st.unset(),
            _ => {}
        }
        self.overlay = Overlay::Settings;
    }

    /// The editor's text.
    pub fn prompt_text(&self) -> String {
        self.editor.lines().join("\n")
    }

    fn set_prompt(&mut self, text: &str) {
        let lines: Vec<String> = text.split('\n').map(String::from).collect();
        self.editor = TextArea::new(lines);
        self.editor.move_cursor(tui_textarea::CursorMove::Bottom);
        self.editor.move_cursor(tui_textarea::CursorMove::End);
        self.style_editor();
    }

    /// Whether any request is in flight.
    pub fn in_flight(&self) -> bool {
        self.panes.iter().any(|p| p.state.in_flight())
    }

    /// Screen areas for the current size.
    pub fn areas(&self) -> Areas {
        self.areas_in(Rect::new(0, 0, self.size.0, self.size.1))
    }

    /// Screen areas in `area`.
    pub fn areas_in(&self, area: Rect) -> Areas {
        layout::areas(&self.layout_facts(), area)
    }

    /// What the layout needs to know of the state.
    pub fn layout_facts(&self) -> layout::Facts<'_> {
        layout::Facts {
            panes: self.panes.len(),
            banner: &self.banner,
            zoom: self.zoom,
            editor_lines: self.editor.lines(),
            ledger_rows: self.live_ledger().len(),
            ledger_focused: self.focus == Focus::Ledger,
            answered: self.answer_progress().1,
            order: self.display_order(),
        }
    }

    /// Re-wrap panes for their current widths (cheap when unchanged).
    pub fn relayout(&mut self) {
        let areas = self.areas();
        let mut jobs: Vec<(&mut Pane, usize)> = Vec::new();
        // Panes hidden by a zoom keep their width (nothing to draw, nothing to re-wrap).
        for (p, r) in self.panes.iter_mut().zip(areas.panes.iter()) {
            if r.width > 0 && r.height > 0 {
                jobs.push((p, layout::pane_body(*r).width as usize));
            }
        }
        if let Overlay::History(h) = &mut self.overlay {
            if let Some(panes) = &mut h.open {
                let rects = layout::grid(areas.history_panes, panes.len());
                for (p, r) in panes.iter_mut().zip(rects) {
                    jobs.push((p, layout::pane_body(r).width as usize));
                }
            }
        }
        rewrap(jobs);
    }

    /// Fold one message; returns what the loop must do.
    pub fn update(&mut self, msg: Msg) -> Vec<Cmd> {
        let mut cmds = Vec::new();
        // Widths change only with the size, zoom, panes or an overlay: not with engine events.
        let relayout = !matches!(msg, Msg::Engine { .. } | Msg::Tick | Msg::Projection { .. });
        match msg {
            Msg::Key(k) if k.kind != KeyEventKind::Release => self.on_key(k, &mut cmds),
            Msg::Key(_) => return cmds,
            Msg::Mouse(m) => self.on_mouse(m),
            Msg::Paste(s) => self.on_paste(&s, &mut cmds),
            Msg::Resize(w, h) => self.size = (w, h),
            Msg::Engine { run, event } => self.on_engine(run, event.target, event.event),
            Msg::RunStarted {
                run,
                run_id,
                targets,
            } => {
                if self.runs.contains_key(&run) {
                    self.run_keys.insert(run_id, (run, targets));
                }
            }
            Msg::PathEntries { prefix, entries } => self.on_path_entries(&prefix, entries),
            Msg::RunClosed { run } => {
                self.close_run(run);
                let now = self.now;
                for p in &mut self.panes {
                    if p.run.is_some_and(|(r, _)| r == run) {
                        p.apply(
                            StreamEvent::Failed(Box::new(Completion {
                                model: p.target.clone(),
                                error: Some(EngineError::Cancelled),
                                finish_reason: crate::engine::FinishReason::Cancelled,
                                ..Default::default()
                            })),
                            now,
                        );
                    }
                }
                self.on_answer_end();
            }
            Msg::Projection { gen, result } => match result {
                Ok(p) => self.projection = Some((gen, p)),
                Err(e) => {
                    tracing::debug!("projection: {e}");
                    self.projection = Some((gen, Projection::default()));
                }
            },
            Msg::BudgetChecked(r) => {
                if let Some(plan) = self.pending_send.take() {
                    match r {
                        Ok(()) => self.begin(plan, &mut cmds),
                        Err(why) => {
                            self.pending_send = Some(plan);
                            self.overlay = Overlay::Confirm(Confirm::Budget(why));
                        }
                    }
                }
            }
            Msg::Exported(r) => match r {
                Ok(paths) => {
                    let p: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                    self.set_flash(format!("exported to {}", p.join(" and ")));
                }
                Err(e) => self.set_flash(format!("export failed: {e}")),
            },
            Msg::History(r) => {
                if let Overlay::History(h) = &mut self.overlay {
                    match r {
                        Ok(runs) => h.runs = Some(runs),
                        Err(e) => {
                            h.runs = Some(Vec::new());
                            h.error = Some(e);
                        }
                    }
                }
            }
            Msg::Votes(r) => self.on_votes(r),
            Msg::Judged(r) => self.on_judged(r),
            Msg::VoteRecorded(r) => match r {
                Ok(rows) => self.on_votes(Ok(rows)),
                Err(e) => self.set_flash(format!("the vote was not stored: {e}")),
            },
            Msg::Discovered(found) => {
                for t in found {
                    if !self.available.contains(&t) {
                        if let Overlay::Picker(p) = &mut self.overlay {
                            if !p.items.iter().any(|(x, _)| *x == t) {
                                p.items.push((t.clone(), false));
                            }
                        }
                        self.available.push(t);
                    }
                }
                self.available.sort();
            }
            Msg::PromptHistory(mut old) => {
                old.reverse();
                old.retain(|p| !self.prompt_history.contains(p));
                old.append(&mut self.prompt_history);
                self.prompt_history = old;
            }
            Msg::Quit => {
                self.cancel_all(&mut cmds);
                self.quit = true;
            }
            Msg::Tick => {
                let flash_live = self.flash.as_ref().is_some_and(|(_, at)| {
                    self.now.duration_since(*at) < FLASH_FOR + Duration::from_secs(1)
                });
                if !(self.in_flight() || flash_live) {
                    return cmds;
                }
            }
        }
        self.sync_blind_view();
        if relayout {
            self.relayout();
        }
        self.dirty = true;
        cmds
    }

    fn set_flash(&mut self, s: String) {
        self.flash = Some((s, self.now));
    }

    pub(crate) fn set_flash_text(&mut self, s: &str) {
        self.set_flash(s.to_string());
    }

    /// Count a request that did not come through a pane (the judge).
    pub(crate) fn add_ledger_completion(&mut self, label: &str, c: &Completion) {
        self.ledger_row(label, label).tally.add(c);
    }

    /// The flash message, while fresh.
    pub fn flash(&self) -> Option<&str> {
        self.flash
            .as_ref()
            .filter(|(_, at)| self.now.saturating_duration_since(*at) < FLASH_FOR)
            .map(|(s, _)| s.as_str())
    }

    // ----- engine events -------------------------------------------------

    /// Our key of the engine's run `run_id`, while it is in flight.
    pub fn run_key(&self, run_id: &str) -> Option<u64> {
        self.run_keys.get(run_id).map(|(r, _)| *r)
    }

    /// An engine event as ours: our key of its run and its target's index among
    /// ours (None when the run is not ours, or no longer in flight).
    pub fn route(&self, run_id: &str, target: usize) -> Option<(u64, usize)> {
        let (run, map) = self.run_keys.get(run_id)?;
        Some((*run, *map.get(target)?))
    }

    /// Forget run `run`: a pane still waiting on it is marked cancelled.
    fn close_run(&mut self, run: u64) {
        self.runs.remove(&run);
        self.ended.remove(&run);
        self.run_keys.retain(|_, (r, _)| *r != run);
    }

    fn on_engine(&mut self, run: u64, target: usize, ev: StreamEvent) {
        if let StreamEvent::Finished(c) | StreamEvent::Failed(c) = &ev {
            let asked = self
                .runs
                .get(&run)
                .and_then(|t| t.get(target))
                .cloned()
                .unwrap_or_else(|| c.model.clone());
            let label = credit_label(&asked, c);
            self.ledger_row(&label, &asked).tally.add(c);
        }
        let ended = matches!(ev, StreamEvent::Finished(_) | StreamEvent::Failed(_));
        let now = self.now;
        if let Some(p) = self.panes.iter_mut().find(|p| p.run == Some((run, target))) {
            p.apply(ev, now);
        }
        if ended {
            // Every target of the run has ended: it is closed.
            let n = self.ended.entry(run).or_default();
            *n += 1;
            if self.runs.get(&run).is_some_and(|t| *n >= t.len()) {
                self.close_run(run);
            }
            self.on_answer_end();
        }
    }

    fn ledger_row(&mut self, target: &str, asked: &str) -> &mut LedgerRow {
        let i = match self.ledger.iter().position(|r| r.target == target) {
            Some(i) => i,
            None => {
                self.ledger.push(LedgerRow {
                    target: target.to_string(),
                    asked: asked.to_string(),
                    ..Default::default()
                });
                self.ledger.len() - 1
            }
        };
        &mut self.ledger[i]
    }

    /// Price a usage with the loaded table.
    pub fn quote(
        &self,
        provider: &str,
        model: &str,
        u: &Usage,
        reported: bool,
    ) -> (Option<f64>, CostSource) {
        match &self.pricing {
            Some(p) => p.cost(provider, model, u, reported),
            None => (None, CostSource::Unknown),
        }
    }

    /// Ledger rows with what is in flight added (live while streaming).
    pub fn live_ledger(&self) -> Vec<LedgerRow> {
        let mut rows = self.ledger.clone();
        for p in &self.panes {
            if !p.state.in_flight() {
                continue;
            }
            let label = match p.answered_by() {
                Some(by) => format!("{by} (for {})", p.target),
                None => p.target.clone(),
            };
            let i = match rows.iter().position(|r| r.target == label) {
                Some(i) => i,
                None => {
                    rows.push(LedgerRow {
                        target: label,
                        asked: p.target.clone(),
                        ..Default::default()
                    });
                    rows.len() - 1
                }
            };
            let u = p.stats.live_usage();
            let (cost, src) = p.cost(&|a, b, c, d| self.quote(a, b, c, d));
            rows[i].tally.add_in_flight(u, cost, src);
        }
        // Panes' targets first, in screen order (letter order while blind);
        // targets no longer shown after.
        let order = self.display_order();
        rows.sort_by_key(|r| {
            order
                .iter()
                .position(|&i| self.panes[i].target == r.asked)
                .unwrap_or(usize::MAX)
        });
        rows
    }

    // ----- sending -------------------------------------------------------

    fn plan(&self, prompt: &str, panes: impl Iterator<Item = usize>, restart: bool) -> Vec<Group> {
        let mut groups: Vec<Group> = Vec::new();
        for i in panes {
            let p = &self.panes[i];
            let knobs = self.settings.for_target(&p.target);
            let (messages, re) = match (&p.last_request, restart) {
                (Some(m), true) => (m.clone(), true),
                _ => {
                    // The system prompt of this send, then the conversation so far.
                    let mut m: Vec<Message> = knobs
                        .system_prompt()
                        .map(|s| Message::system(s.to_string()))
                        .into_iter()
                        .collect();
                    m.extend(p.history.iter().filter(|m| m.role != Role::System).cloned());
                    m.push(Message::user(prompt.to_string()));
                    (m, false)
                }
            };
            let max_tokens = knobs.max_tokens.or_else(|| self.max_tokens_for(&p.target));
            let attach = settings::attachments(prompt);
            match groups
                .iter_mut()
                .find(|g| g.messages == messages && g.max_tokens == max_tokens && g.knobs == knobs)
            {
                Some(g) => g.members.push((i, re)),
                None => groups.push(Group {
                    messages,
                    max_tokens,
                    knobs,
                    attach,
                    prompt: prompt.to_string(),
                    members: vec![(i, re)],
                }),
            }
        }
        groups
    }

    fn groups_for_cmd(&self, plan: &[Group]) -> Vec<(ChatRequest, Vec<String>)> {
        plan.iter()
            .map(|g| {
                (
                    g.request(),
                    g.members
                        .iter()
                        .map(|(i, _)| self.panes[*i].target.clone())
                        .collect(),
                )
            })
            .collect()
    }

    fn submit(&mut self, plan: Vec<Group>, cmds: &mut Vec<Cmd>) {
        if plan.is_empty() {
            return;
        }
        if self.budget_set {
            cmds.push(Cmd::CheckBudget {
                groups: self.groups_for_cmd(&plan),
                options: options_for_cmd(&plan),
            });
            self.pending_send = Some(plan);
            self.set_flash("checking the budget…".into());
        } else {
            self.begin(plan, cmds);
        }
    }

    fn begin(&mut self, plan: Vec<Group>, cmds: &mut Vec<Cmd>) {
        let now = self.now;
        let mut new_prompt = None;
        for g in plan {
            let run = self.next_run;
            self.next_run += 1;
            let targets: Vec<String> = g
                .members
                .iter()
                .map(|(i, _)| self.panes[*i].target.clone())
                .collect();
            for (ti, (i, restart)) in g.members.iter().enumerate() {
                let p = &mut self.panes[*i];
                p.scroll = None;
                if *restart {
                    p.restart(g.messages.clone(), (run, ti), now);
                } else {
                    p.begin_turn(&g.prompt, g.messages.clone(), (run, ti), now);
                    new_prompt = Some(g.prompt.clone());
                }
            }
            self.runs.insert(run, targets.clone());
            self.cons.last_run = Some(run);
            cmds.push(Cmd::Start {
                run,
                request: g.request(),
                options: Box::new(g.knobs.request_options(&g.attach)),
                targets,
            });
        }
        if let Some(p) = new_prompt {
            if let Some(t) = self.pending_close.take() {
                self.past_turns.push(t);
            }
            self.turn_continued = self.next_continued.take();
            if self.prompt_history.last() != Some(&p) {
                self.prompt_history.push(p.clone());
            }
            self.last_prompt = Some(p);
            self.sends += 1;
            self.set_prompt("");
            self.hist_idx = None;
            self.reproject(cmds);
        }
    }

    fn send(&mut self, cmds: &mut Vec<Cmd>) {
        let prompt = self.prompt_text();
        if prompt.trim().is_empty() {
            self.set_flash("nothing to send: type a prompt first".into());
            return;
        }
        if self.panes.is_empty() {
            self.set_flash(format!(
                "no targets: {} picks some",
                self.keys.short(Action::Targets)
            ));
            return;
        }
        if self.pending_send.is_some() {
            self.set_flash("checking the budget of the last send…".into());
            return;
        }
        if self.in_flight() {
            self.set_flash(format!(
                "runs are in flight: wait, or {} cancels them",
                self.keys.short(Action::CancelAll)
            ));
            return;
        }
        // The turn on screen becomes history once this send starts.
        self.pending_close = self.current_turn(false);
        self.prepare_send(&prompt);
        let plan = self.plan(&prompt, 0..self.panes.len(), false);
        self.submit(plan, cmds);
    }

    fn rerun(&mut self, cmds: &mut Vec<Cmd>) {
        let Some(prompt) = self.last_prompt.clone() else {
            self.set_flash("nothing to rerun yet".into());
            return;
        };
        if self.in_flight() {
            self.cancel_all(cmds);
        }
        self.cons.judge = None;
        let plan = self.plan(&prompt, 0..self.panes.len(), true);
        self.submit(plan, cmds);
    }

    fn retry_pane(&mut self, i: usize, cmds: &mut Vec<Cmd>) {
        let Some(p) = self.panes.get(i) else { return };
        if p.last_request.is_none() {
            self.set_flash("nothing to retry in this pane".into());
            return;
        }
        if let Some((run, index)) = p.run {
            cmds.push(Cmd::CancelTarget { run, index });
        }
        let prompt = self.last_prompt.clone().unwrap_or_default();
        let plan = self.plan(&prompt, std::iter::once(i), true);
        self.submit(plan, cmds);
    }

    fn cancel_all(&mut self, cmds: &mut Vec<Cmd>) {
        let mut keys: Vec<u64> = self.runs.keys().copied().collect();
        keys.sort_unstable();
        for run in keys {
            cmds.push(Cmd::Cancel { run });
        }
        if self.pending_send.take().is_some() {
            self.set_flash("send cancelled".into());
        }
    }

    /// Ask for a fresh projection of the editor's text.
    fn reproject(&mut self, cmds: &mut Vec<Cmd>) {
        self.proj_gen += 1;
        let prompt = self.prompt_text();
        if prompt.trim().is_empty() || self.panes.is_empty() {
            return;
        }
        let plan = self.plan(&prompt, 0..self.panes.len(), false);
        cmds.push(Cmd::Project {
            gen: self.proj_gen,
            groups: self.groups_for_cmd(&plan),
            options: options_for_cmd(&plan),
        });
    }

    /// Whether `target`'s provider needs a key it does not have.
    pub fn lacks_key(&self, target: &str) -> bool {
        target
            .split_once('/')
            .is_some_and(|(p, _)| self.keyless.iter().any(|k| k == p))
    }

    /// The output limit a send to `target` carries.
    pub fn max_tokens_for(&self, target: &str) -> Option<u32> {
        self.model_max_tokens
            .get(target)
            .copied()
            .or(self.max_tokens)
    }

    /// What the next send is expected to cost (not its bound): the prompt,
    /// plus as much output as this target's answers took so far this
    /// session (else a typical answer), within its limit. None when a
    /// target has no price.
    pub fn expected_cost(&self, p: &Projection) -> Option<f64> {
        let mut total = 0.0;
        for t in &p.targets {
            let typical = self
                .ledger
                .iter()
                .find(|r| r.target == t.target)
                .and_then(|r| r.tally.mean_output_tokens())
                .unwrap_or(TYPICAL_OUTPUT_TOKENS);
            let out = t.max_output_tokens.map_or(typical, |m| typical.min(m));
            let u = Usage {
                input_tokens: t.input_tokens,
                output_tokens: out,
                ..Default::default()
            };
            total += self.quote(&t.provider, &t.model, &u, true).0?;
        }
        Some(total)
    }

    /// The projection for the editor as it is now, if ready.
    pub fn current_projection(&self) -> Option<&Projection> {
        self.projection
            .as_ref()
            .filter(|(g, _)| *g == self.proj_gen)
            .map(|(_, p)| p)
    }

    fn continue_with(&mut self, i: usize) {
        let Some(src) = self.panes.get(i) else { return };
        if src.state.in_flight()
            || src
                .history
                .last()
                .is_none_or(|m| m.role != crate::engine::Role::Assistant)
        {
            self.set_flash("continue needs a finished answer in this pane".into());
            return;
        }
        let history = src.history.clone();
        let name = self.pane_name(i);
        self.next_continued = Some(name.clone());
        for (j, p) in self.panes.iter_mut().enumerate() {
            p.history = history.clone();
            p.last_request = None;
            if j == i {
                p.notice("↳ this answer is now the shared history");
            } else {
                p.notice(&format!("↳ continuing with {name}'s answer"));
            }
        }
        self.set_flash(format!(
            "the next prompt continues from {name}'s answer in every pane"
        ));
    }

    // ----- keys ----------------------------------------------------------

    fn on_key(&mut self, k: KeyEvent, cmds: &mut Vec<Cmd>) {
        match self.overlay {
            Overlay::None => {}
            _ => return self.on_overlay_key(k, cmds),
        }
        let keys = &self.keys;
        let in_editor = self.focus == Focus::Editor;
        if keys.is(Action::Quit, &k) {
            if self.in_flight() {
                self.overlay = Overlay::Confirm(Confirm::Quit);
            } else {
                self.quit = true;
            }
            return;
        }
        if keys.is(Action::Newline, &k) && in_editor {
            self.editor.insert_newline();
            self.hist_idx = None;
            self.reproject(cmds);
            return;
        }
        if keys.is(Action::Send, &k) && (in_editor || !self.is_char(&k)) {
            self.send(cmds);
            return;
        }
        if keys.is(Action::CancelAll, &k) {
            if self.in_flight() || self.pending_send.is_some() {
                self.cancel_all(cmds);
                self.set_flash("cancelling everything in flight".into());
            } else {
                self.set_flash("nothing in flight to cancel".into());
            }
            return;
        }
        if keys.is(Action::Cancel, &k) {
            self.leave_view();
            return;
        }
        // Tab after an `@path` in the editor completes the path.
        if in_editor && k.code == KeyCode::Tab && k.modifiers.is_empty() {
            if let Some(prefix) = self.at_prefix() {
                cmds.push(Cmd::ListPath { prefix });
                return;
            }
        }
        if keys.is(Action::FocusNext, &k) {
            self.cycle_focus(true);
            return;
        }
        if keys.is(Action::FocusPrev, &k) {
            self.cycle_focus(false);
            return;
        }
        if keys.is(Action::Targets, &k) {
            self.open_picker();
            return;
        }
        if keys.is(Action::Settings, &k) {
            self.settings.open = true;
            self.settings.scope = match self.focus {
                Focus::Pane(i) => self.panes.get(i).map(|p| p.target.clone()),
                _ => None,
            };
            self.overlay = Overlay::Settings;
            return;
        }
        if keys.is(Action::Rerun, &k) {
            self.rerun(cmds);
            return;
        }
        if keys.is(Action::Export, &k) {
            let doc = self.export_doc();
            if doc.is_empty() {
                self.set_flash("nothing to export yet: send a prompt first".into());
            } else {
                cmds.push(Cmd::Export(Box::new(doc)));
            }
            return;
        }
        if keys.is(Action::History, &k) {
            self.overlay = Overlay::History(Box::default());
            cmds.push(Cmd::LoadHistory);
            return;
        }
        if keys.is(Action::Thinking, &k) {
            self.show_thinking = !self.show_thinking;
            return;
        }
        if keys.is(Action::Help, &k) && (!in_editor || !self.is_char(&k)) {
            self.overlay = Overlay::Help(0);
            return;
        }
        // Letter keys act outside the editor only; Ctrl keys everywhere.
        let global = !in_editor || !self.is_char(&k);
        if keys.is(Action::Blind, &k) && global {
            self.toggle_blind();
            return;
        }
        if keys.is(Action::Repeat, &k) && global {
            self.cycle_repeat();
            return;
        }
        if keys.is(Action::Judge, &k) && global {
            self.start_judge(cmds);
            return;
        }
        match self.focus {
            Focus::Editor => self.editor_key(k, cmds),
            Focus::Pane(i) => self.pane_key(i, k, cmds),
            Focus::Ledger => self.ledger_key(k, cmds),
        }
    }

    /// Esc: leave one level of view (zoom, then a pane's focus, then the
    /// banner). Leaving a view never cancels anything: runs keep streaming.
    fn leave_view(&mut self) {
        if self.zoom.is_some() {
            self.zoom = None;
        } else if self.focus != Focus::Editor {
            self.focus = Focus::Editor;
            self.style_editor();
        } else if !self.banner.is_empty() {
            self.banner.clear();
        } else if self.in_flight() {
            self.set_flash(format!(
                "runs keep going · {} cancels them",
                self.keys.short(Action::CancelAll)
            ));
        }
    }

    fn is_char(&self, k: &KeyEvent) -> bool {
        matches!(k.code, KeyCode::Char(_))
            && !k
                .modifiers
                .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT)
    }

    fn cycle_focus(&mut self, forward: bool) {
        let order: Vec<Focus> = std::iter::once(Focus::Editor)
            .chain(self.display_order().into_iter().map(Focus::Pane))
            .chain(std::iter::once(Focus::Ledger))
            .collect();
        let at = order.iter().position(|f| *f == self.focus).unwrap_or(0);
        let len = order.len();
        let next = if forward {
            (at + 1) % len
        } else {
            (at + len - 1) % len
        };
        self.focus = order[next];
        if let (Some(_), Focus::Pane(i)) = (self.zoom, self.focus) {
            self.zoom = Some(i);
        }
        self.style_editor();
    }

    fn editor_key(&mut self, k: KeyEvent, cmds: &mut Vec<Cmd>) {
        let walking = self.hist_idx.is_some() || self.prompt_text().is_empty();
        if walking && !self.prompt_history.is_empty() && k.modifiers.is_empty() {
            let n = self.prompt_history.len();
            match k.code {
                KeyCode::Up => {
                    let i = match self.hist_idx {
                        None => n - 1,
                        Some(i) => i.saturating_sub(1),
                    };
                    self.hist_idx = Some(i);
                    let p = self.prompt_history[i].clone();
                    self.set_prompt(&p);
                    self.reproject(cmds);
                    return;
                }
                KeyCode::Down if self.hist_idx.is_some() => {
                    let i = self.hist_idx.unwrap_or(0) + 1;
                    if i >= n {
                        self.hist_idx = None;
                        self.set_prompt("");
                    } else {
                        self.hist_idx = Some(i);
                        let p = self.prompt_history[i].clone();
                        self.set_prompt(&p);
                    }
                    self.reproject(cmds);
                    return;
                }
                _ => {}
            }
        }
        if self.editor.input(k) {
            self.hist_idx = None;
            self.reproject(cmds);
        }
    }

    fn pane_body_height(&self, i: usize) -> usize {
        let a = self.areas();
        a.panes
            .get(i)
            .map(|r| layout::pane_body(*r).height as usize)
            .unwrap_or(1)
            .max(1)
    }

    fn scroll_pane(&mut self, i: usize, delta: i64) {
        let h = self.pane_body_height(i);
        let show = self.show_thinking;
        let Some(p) = self.panes.get_mut(i) else {
            return;
        };
        scroll_by(p, h, show, delta);
    }

    fn pane_key(&mut self, i: usize, k: KeyEvent, cmds: &mut Vec<Cmd>) {
        let keys = self.keys.clone();
        let page = self.pane_body_height(i) as i64;
        if keys.is(Action::CancelPane, &k) {
            if let Some((run, index)) = self.panes.get(i).and_then(|p| p.run) {
                cmds.push(Cmd::CancelTarget { run, index });
                self.set_flash(format!("cancelling {}", self.pane_name(i)));
            }
        } else if keys.is(Action::RetryPane, &k) {
            self.retry_pane(i, cmds);
        } else if keys.is(Action::Zoom, &k) {
            self.zoom = if self.zoom.is_some() { None } else { Some(i) };
        } else if keys.is(Action::Copy, &k) {
            let text = self
                .panes
                .get(i)
                .map(|p| p.answer_text().to_string())
                .unwrap_or_default();
            if text.is_empty() {
                self.set_flash("nothing to copy yet".into());
            } else {
                self.set_flash(format!(
                    "copied {} characters (OSC 52)",
                    text.chars().count()
                ));
                cmds.push(Cmd::Copy(text));
            }
        } else if keys.is(Action::Continue, &k) {
            self.continue_with(i);
        } else if keys.is(Action::Consensus, &k) {
            self.open_consensus(cmds);
        } else if keys.is(Action::Diff, &k) {
            self.open_diff(i, cmds);
        } else if keys.is(Action::ScrollUp, &k) {
            self.scroll_pane(i, -1);
        } else if keys.is(Action::ScrollDown, &k) {
            self.scroll_pane(i, 1);
        } else if keys.is(Action::PageUp, &k) {
            self.scroll_pane(i, -page.max(1));
        } else if keys.is(Action::PageDown, &k) {
            self.scroll_pane(i, page.max(1));
        } else if k.code == KeyCode::Home {
            if let Some(p) = self.panes.get_mut(i) {
                p.scroll = Some(0);
            }
        } else if k.code == KeyCode::End {
            if let Some(p) = self.panes.get_mut(i) {
                p.scroll = None;
            }
        } else if self.is_char(&k) {
            // Typing on a pane goes to the editor.
            self.focus = Focus::Editor;
            self.style_editor();
            self.editor_key(k, cmds);
        }
    }

    fn ledger_key(&mut self, k: KeyEvent, cmds: &mut Vec<Cmd>) {
        if self.keys.is(Action::ScrollUp, &k) || self.keys.is(Action::PageUp, &k) {
            self.ledger_scroll = self.ledger_scroll.saturating_sub(1);
        } else if self.keys.is(Action::ScrollDown, &k) || self.keys.is(Action::PageDown, &k) {
            self.ledger_scroll =
                (self.ledger_scroll + 1).min(self.live_ledger().len().saturating_sub(1));
        } else if self.keys.is(Action::Consensus, &k) {
            self.open_consensus(cmds);
        } else if self.is_char(&k) {
            self.focus = Focus::Editor;
            self.style_editor();
            self.editor_key(k, cmds);
        }
    }

    fn on_paste(&mut self, s: &str, cmds: &mut Vec<Cmd>) {
        let s = s.replace("\r\n", "\n").replace('\r', "\n");
        match &mut self.overlay {
            Overlay::Picker(p) => {
                p.filter.push_str(s.lines().next().unwrap_or(""));
                p.cursor = 0;
            }
            Overlay::None => {
                self.focus = Focus::Editor;
                self.style_editor();
                self.editor.insert_str(&s);
                self.hist_idx = None;
                self.reproject(cmds);
            }
            _ => {}
        }
    }

    fn on_mouse(&mut self, m: MouseEvent) {
        let areas = self.areas();
        let hit = |r: &Rect| {
            m.column >= r.x && m.column < r.x + r.width && m.row >= r.y && m.row < r.y + r.height
        };
        let pane = areas.panes.iter().position(hit);
        match m.kind {
            MouseEventKind::ScrollUp => {
                if let Some(i) = pane {
                    self.scroll_pane(i, -3);
                }
            }
            MouseEventKind::ScrollDown => {
                if let Some(i) = pane {
                    self.scroll_pane(i, 3);
                }
            }
            MouseEventKind::Down(_) => {
                if !matches!(self.overlay, Overlay::None) {
                    return;
                }
                if let Some(i) = pane {
                    self.focus = Focus::Pane(i);
                } else if hit(&areas.editor) {
                    self.focus = Focus::Editor;
                } else if hit(&areas.ledger) {
                    self.focus = Focus::Ledger;
                }
                self.style_editor();
            }
            _ => {}
        }
    }

    // ----- overlays ------------------------------------------------------

    fn open_picker(&mut self) {
        let mut items: Vec<(String, bool)> = Vec::new();
        for p in &self.panes {
            if !items.iter().any(|(t, _)| *t == p.target) {
                items.push((p.target.clone(), true));
            }
        }
        for t in &self.available {
            if !items.iter().any(|(x, _)| x == t) {
                items.push((t.clone(), false));
            }
        }
        self.overlay = Overlay::Picker(Picker {
            filter: String::new(),
            items,
            cursor: 0,
        });
    }

    fn apply_picker(&mut self, picker: Picker, cmds: &mut Vec<Cmd>) {
        let chosen: Vec<String> = picker
            .items
            .iter()
            .filter(|(_, on)| *on)
            .map(|(t, _)| t.clone())
            .take(MAX_PANES)
            .collect();
        let mut panes = Vec::new();
        let old = std::mem::take(&mut self.panes);
        let mut old: Vec<Option<Pane>> = old.into_iter().map(Some).collect();
        for t in &chosen {
            match old
                .iter_mut()
                .find(|p| p.as_ref().is_some_and(|p| &p.target == t))
            {
                Some(slot) => panes.push(slot.take().expect("found")),
                None => {
                    let mut p = Pane::new(t.clone(), self.styles);
                    // A new pane joins the conversation of the first one, if any.
                    if let Some(h) = panes.first().map(|p: &Pane| p.history.clone()) {
                        p.history = h;
                    }
                    panes.push(p);
                }
            }
        }
        for p in old.into_iter().flatten() {
            if let Some((run, index)) = p.run {
                cmds.push(Cmd::CancelTarget { run, index });
            }
        }
        self.panes = panes;
        self.zoom = None;
        // New panes: the repeat layout, blind letters and report were for the old ones.
        self.cons.repeat = None;
        self.cons.blind = None;
        self.cons.report = None;
        if let Focus::Pane(i) = self.focus {
            if i >= self.panes.len() {
                self.focus = Focus::Editor;
            }
        }
        self.style_editor();
        self.reproject(cmds);
        self.set_flash(format!(
            "{} target{}",
            self.panes.len(),
            if self.panes.len() == 1 { "" } else { "s" }
        ));
    }

    fn on_overlay_key(&mut self, k: KeyEvent, cmds: &mut Vec<Cmd>) {
        let overlay = std::mem::take(&mut self.overlay);
        let quit_key = self.keys.is(Action::Quit, &k);
        if quit_key && !matches!(overlay, Overlay::Confirm(_)) {
            // The quit key works from every overlay (asking first while runs are in flight).
            self.on_key(k, cmds);
            return;
        }
        match overlay {
            Overlay::None => {}
            Overlay::Settings => self.settings_key(k),
            // Scroll keys scroll (a short terminal cuts it); any other key closes.
            Overlay::Help(top) => {
                let keys = &self.keys;
                let max = super::help::scroll_max(&self.keys, &self.theme, self.size);
                let d: i32 = if keys.is(Action::ScrollDown, &k) {
                    1
                } else if keys.is(Action::ScrollUp, &k) {
                    -1
                } else if keys.is(Action::PageDown, &k) || k.code == KeyCode::Char(' ') {
                    10
                } else if keys.is(Action::PageUp, &k) {
                    -10
                } else if k.code == KeyCode::Home {
                    -1000
                } else if k.code == KeyCode::End {
                    1000
                } else {
                    return;
                };
                let next = (i32::from(top) + d).clamp(0, i32::from(max)) as u16;
                self.overlay = Overlay::Help(next);
            }
            Overlay::Consensus => {
                self.overlay = Overlay::Consensus;
                self.consensus_key(k, cmds);
            }
            Overlay::Confirm(c) => {
                let yes = matches!(k.code, KeyCode::Char('y' | 'Y')) || k.code == KeyCode::Enter;
                let no = matches!(k.code, KeyCode::Char('n' | 'N')) || k.code == KeyCode::Esc;
                match c {
                    Confirm::Quit if yes || quit_key => {
                        self.cancel_all(cmds);
                        self.quit = true;
                    }
                    Confirm::Budget(_) if yes => {
                        if let Some(plan) = self.pending_send.take() {
                            self.begin(plan, cmds);
                        }
                    }
                    Confirm::Budget(_) if no => {
                        self.pending_send = None;
                        self.set_flash("not sent".into());
                    }
                    c if !no => self.overlay = Overlay::Confirm(c),
                    _ => {}
                }
            }
            Overlay::Picker(mut p) => {
                let list = p.filtered();
                if k.code == KeyCode::Esc || self.keys.is(Action::Targets, &k) {
                    self.apply_picker(p, cmds);
                    return;
                }
                match k.code {
                    KeyCode::Up => p.cursor = p.cursor.saturating_sub(1),
                    KeyCode::Down => p.cursor = (p.cursor + 1).min(list.len().saturating_sub(1)),
                    KeyCode::Enter | KeyCode::Char(' ') | KeyCode::Tab => {
                        if let Some(&i) = list.get(p.cursor) {
                            p.items[i].1 = !p.items[i].1;
                        } else if k.code == KeyCode::Enter && !p.filter.trim().is_empty() {
                            // A target not in the list: add it as typed.
                            p.items.push((p.filter.trim().to_string(), true));
                            p.filter.clear();
                        }
                    }
                    KeyCode::Backspace => {
                        p.filter.pop();
                        p.cursor = 0;
                    }
                    KeyCode::Char(c)
                        if !k
                            .modifiers
                            .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT) =>
                    {
                        p.filter.push(c);
                        p.cursor = 0;
                    }
                    _ => {}
                }
                self.overlay = Overlay::Picker(p);
            }
            Overlay::History(mut h) => {
                let keys = self.keys.clone();
                if let Some(panes) = &mut h.open {
                    let n = panes.len().max(1);
                    if k.code == KeyCode::Esc || keys.is(Action::Cancel, &k) {
                        h.open = None;
                    } else if keys.is(Action::FocusNext, &k) {
                        h.focus = (h.focus + 1) % n;
                    } else if keys.is(Action::FocusPrev, &k) {
                        h.focus = (h.focus + n - 1) % n;
                    } else if keys.is(Action::Thinking, &k) {
                        self.show_thinking = !self.show_thinking;
                    } else if keys.is(Action::Copy, &k) {
                        if let Some(p) = panes.get(h.focus) {
                            cmds.push(Cmd::Copy(p.answer_text().to_string()));
                        }
                    } else {
                        let d = if keys.is(Action::ScrollUp, &k) {
                            -1
                        } else if keys.is(Action::ScrollDown, &k) {
                            1
                        } else if keys.is(Action::PageUp, &k) {
                            -10
                        } else if keys.is(Action::PageDown, &k) {
                            10
                        } else {
                            0
                        };
                        let area = self.areas().history_panes;
                        let rects = layout::grid(area, panes.len());
                        if let (Some(p), Some(r)) = (panes.get_mut(h.focus), rects.get(h.focus)) {
                            scroll_by(
                                p,
                                layout::pane_body(*r).height as usize,
                                self.show_thinking,
                                d,
                            );
                        }
                    }
                    self.overlay = Overlay::History(h);
                    return;
                }
                let n = h.runs.as_ref().map(|r| r.len()).unwrap_or(0);
                if k.code == KeyCode::Esc || keys.is(Action::History, &k) || quit_key {
                    return;
                }
                match k.code {
                    KeyCode::Up | KeyCode::Char('k') => h.selected = h.selected.saturating_sub(1),
                    KeyCode::Down | KeyCode::Char('j') => {
                        h.selected = (h.selected + 1).min(n.saturating_sub(1))
                    }
                    KeyCode::PageUp => h.selected = h.selected.saturating_sub(10),
                    KeyCode::PageDown => h.selected = (h.selected + 10).min(n.saturating_sub(1)),
                    KeyCode::Enter => {
                        if let Some(run) = h.runs.as_ref().and_then(|r| r.get(h.selected)) {
                            h.open = Some(history_panes(run, self.styles, self.now));
                            h.focus = 0;
                        }
                    }
                    _ => {}
                }
                self.overlay = Overlay::History(h);
            }
        }
    }

    // ----- export --------------------------------------------------------

    /// The turn on screen (None before the first send). With `as_shown`,
    /// named as on screen: while blind, answers go by their letters in letter
    /// order, with no model name, price, thinking or provider wording.
    pub fn current_turn(&self, as_shown: bool) -> Option<ExportTurn> {
        let prompt = self.last_prompt.clone()?;
        let order: Vec<usize> = if as_shown {
            self.display_order()
        } else {
            (0..self.panes.len()).collect()
        };
        let blind = as_shown && self.blind_hidden();
        let answers = order
            .into_iter()
            .map(|i| {
                let p = &self.panes[i];
                let hidden = as_shown && self.pane_hidden(i);
                let name = if as_shown {
                    self.pane_name(i)
                } else {
                    p.credited()
                };
                let mut completion = p.stats.done.clone();
                let mut thinking = p.thinking.clone();
                if hidden {
                    thinking.clear();
                    if let Some(c) = completion.as_mut() {
                        c.provider = String::new();
                        c.model = name.clone();
                        c.thinking.clear();
                        c.price_ref = None;
                        c.cost_usd = None;
                        c.cost_source = crate::engine::CostSource::Unknown;
                        c.raw_finish_reason = c.finish_reason.as_str().to_string();
                        c.fell_back_from = None;
                        c.usage.reasoning_tokens = 0;
                        c.usage.cached_input_tokens = 0;
                        c.usage.cache_creation_input_tokens = 0;
                        c.usage.reported_cost_usd = None;
                    }
                }
                ExportAnswer {
                    target: name,
                    asked_for: (!hidden && p.answered_by().is_some()).then(|| p.target.clone()),
                    state: p.state.label(self.now),
                    text: p.answer_text().to_string(),
                    thinking,
                    completion,
                }
            })
            .collect();
        Some(ExportTurn {
            prompt,
            continued_from: self.turn_continued.clone(),
            blind,
            answers,
        })
    }

    /// The whole conversation as it stands: earlier turns, then the one on
    /// screen named as on screen (letters while blind).
    pub fn export_doc(&self) -> ExportDoc {
        let mut turns = self.past_turns.clone();
        turns.extend(self.current_turn(true));
        ExportDoc {
            turns,
            ledger: self
                .live_ledger()
                .iter()
                .map(|r| {
                    let hidden = self.ledger_hidden(&r.asked);
                    ExportLedgerRow {
                        target: self.ledger_name(r),
                        requests: r.tally.requests,
                        errors: r.tally.errors,
                        input_tokens: r.tally.usage.input_tokens,
                        output_tokens: r.tally.usage.output_tokens,
                        cached_input_tokens: (!hidden).then_some(r.tally.usage.cached_input_tokens),
                        reasoning_tokens: (!hidden).then_some(r.tally.usage.reasoning_tokens),
                        cost_usd: (!hidden).then_some(r.tally.cost_usd),
                        unknown_cost: r.tally.unpriced,
                        cost_mark: if hidden {
                            String::new()
                        } else {
                            r.tally.mark().to_string()
                        },
                    }
                })
                .collect(),
        }
    }
}

/// The ledger's name for a request: the target, or the model that answered
/// with the target asked for alongside when a fallback answered.
pub fn credit_label(asked: &str, c: &Completion) -> String {
    match &c.fell_back_from {
        Some(_) if !c.provider.is_empty() => format!("{}/{} (for {asked})", c.provider, c.model),
        _ => asked.to_string(),
    }
}

/// Re-wrap panes for new widths; long transcripts are re-wrapped on several
/// threads at once (a resize is the one time a whole transcript is wrapped again).
fn rewrap(mut jobs: Vec<(&mut Pane, usize)>) {
    jobs.retain(|(p, w)| p.doc.width() != (*w).max(1));
    let work: usize = jobs.iter().map(|(p, _)| p.doc.raw_len()).sum();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(jobs.len())
        .min(8);
    if work < (1 << 18) || threads < 2 {
        for (p, w) in jobs {
            p.doc.set_width(w);
        }
        return;
    }
    // Balance by size: biggest first onto the least loaded thread.
    jobs.sort_by_key(|(p, _)| std::cmp::Reverse(p.doc.raw_len()));
    let mut buckets: Vec<(usize, Vec<(&mut Pane, usize)>)> =
        (0..threads).map(|_| (0, Vec::new())).collect();
    for job in jobs {
        let b = buckets
            .iter_mut()
            .min_by_key(|(load, _)| *load)
            .expect("at least two buckets");
        b.0 += job.0.doc.raw_len();
        b.1.push(job);
    }
    std::thread::scope(|s| {
        for (_, bucket) in buckets {
            s.spawn(move || {
                for (p, w) in bucket {
                    p.doc.set_width(w);
                }
            });
        }
    });
}

fn scroll_by(p: &mut Pane, h: usize, show_thinking: bool, delta: i64) {
    let total = p.doc.total_lines(show_thinking);
    let max_top = total.saturating_sub(h);
    let top = p.scroll.unwrap_or(max_top).min(max_top) as i64;
    let next = (top + delta).clamp(0, max_top as i64) as usize;
    p.scroll = if next >= max_top { None } else { Some(next) };
}

/// Read-only panes rebuilt from a past run's ledger rows.
pub fn history_panes(run: &HistRun, styles: TextStyles, now: Instant) -> Vec<Pane> {
    run.rows
        .iter()
        .map(|r| {
            let mut p = Pane::new(r.target.clone(), styles);
            p.read_only = true;
            if let Some(prompt) = r.prompt.as_ref().or(run.prompt.as_ref()) {
                p.doc.add(
                    super::text::BlockKind::User,
                    &super::pane::fold_prompt(prompt),
                );
            }
            p.stats.sent_at = Some(now);
            p.serving = Some((r.provider.clone(), r.model.clone()));
            let c = r.to_completion();
            if !c.thinking.is_empty() {
                p.apply(StreamEvent::ThinkingDelta(c.thinking.clone()), now);
            }
            if !c.text.is_empty() {
                p.apply(StreamEvent::TextDelta(c.text.clone()), now);
            }
            if let Some(calls) = r.tool_calls.as_ref().and_then(|v| v.as_array()) {
                for call in calls {
                    p.doc.add(
                        super::text::BlockKind::Tool,
                        &format!(
                            "⚙ tool call {} {}",
                            call["name"].as_str().unwrap_or("?"),
                            call["arguments"]
                        ),
                    );
                }
            }
            let state = match r.status.as_str() {
                "ok" | "success" | "done" => {
                    if r.cache_hit {
                        PaneState::Cached
                    } else {
                        PaneState::Done
                    }
                }
                "cancelled" => PaneState::Cancelled,
                _ if r.error_message.is_some() => PaneState::Failed,
                _ => PaneState::Done,
            };
            if let Some(e) = &r.error_message {
                p.doc.add(super::text::BlockKind::Error, &format!("✗ {e}"));
            }
            p.doc.close_all();
            p.stats.done = Some(c);
            p.state = state;
            p
        })
        .collect()
}
