//! The workbench: `quorum` with no arguments. Panes side by side, the prompt
//! editor, the ledger, the status bar. TEA: `App::update(Msg) -> Vec<Cmd>`,
//! drawing a pure function of the state, one loop (generic over the backend
//! and the input stream) that batches engine events and redraws at most 60
//! times a second, only when something changed.

pub mod app;
pub mod consensus;
pub mod consensus_overlay;
pub mod consensus_state;
pub mod editor;
pub mod eval_matrix;
pub mod export;
pub mod help;
pub mod keys;
pub mod layout;
pub mod msg;
pub mod pane;
pub mod settings;
pub mod terminal;
pub mod text;
pub mod theme;
pub mod view;

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossterm::event::Event;
use futures_util::{Stream, StreamExt};
use ratatui::backend::Backend;
use ratatui::Terminal;
use tokio::sync::{mpsc, watch};

use crate::app::{GlobalFlags, Settings};
use crate::engine::budget::Projection;
use crate::engine::ledger::BackgroundLedger;
use crate::engine::options::RequestOptions;
use crate::engine::EngineError;
use crate::engine::{
    ChatRequest, Completion, Engine, FinishReason, RunHandle, RunOptions, StartOptions,
    StreamEvent, TargetEvent,
};

pub use app::{App, AppInit};
pub use msg::{Cmd, HistRun, Msg};

/// Set to exit right after the first frame is drawn (measures startup).
pub const EXIT_AFTER_FIRST_FRAME: &str = "QUORUM_TUI_EXIT_AFTER_FIRST_FRAME";

/// The log file in the data dir.
pub const LOG_FILE: &str = "quorum-tui.log";

/// Shortest time between two frames (60 per second at most).
pub const FRAME: Duration = Duration::from_millis(16);

/// What the loop does with commands.
pub trait Effects {
    /// Carry out one command.
    fn run(&mut self, cmd: Cmd);
    /// See a message before the app does (bookkeeping).
    fn seen(&mut self, _msg: &Msg) {}
    /// Messages the commands just run answered at once (a run's start, a refusal):
    /// the app gets them before anything else, so it knows a run's id before its events.
    fn replies(&mut self) -> Vec<Msg> {
        Vec::new()
    }
}

/// Set to panic right after the first frame (tests that the terminal is restored on panic).
pub const TEST_PANIC: &str = "QUORUM_TUI_TEST_PANIC";

/// Options of [`run_loop`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LoopOptions {
    /// Quit once the first frame is drawn.
    pub exit_after_first_frame: bool,
    /// Panic once the first frame is drawn (a test of the panic path).
    pub panic_after_first_frame: bool,
}

/// What [`run_loop`] measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoopReport {
    /// When the first frame was on screen.
    pub first_frame_at: Option<Instant>,
    /// Frames drawn.
    pub frames: u64,
}

fn input_msg(ev: Event) -> Option<Msg> {
    Some(match ev {
        Event::Key(k) => Msg::Key(k),
        Event::Mouse(m) => Msg::Mouse(m),
        Event::Paste(s) => Msg::Paste(s),
        Event::Resize(w, h) => Msg::Resize(w, h),
        _ => return None,
    })
}

fn feed<E: Effects>(app: &mut App, fx: &mut E, msg: Msg) {
    let mut queue = std::collections::VecDeque::from([msg]);
    while let Some(msg) = queue.pop_front() {
        app.now = Instant::now();
        fx.seen(&msg);
        for cmd in app.update(msg) {
            fx.run(cmd);
        }
        queue.extend(fx.replies());
    }
}

/// An engine event, for the app: tagged with our key of its run (dropped when the
/// run is no longer ours, e.g. a late event of a run already forgotten).
fn engine_msg(app: &App, mut event: TargetEvent) -> Option<Msg> {
    let (run, target) = app.route(&event.run_id, event.target)?;
    event.target = target;
    Some(Msg::Engine { run, event })
}

/// The loop: select over input, the engine's events (one channel for every run:
/// each event names its run), messages (results of commands) and a frame timer;
/// update; draw when dirty, at most every [`FRAME`].
pub async fn run_loop<B, S, E>(
    terminal: &mut Terminal<B>,
    mut input: S,
    mut rx: mpsc::Receiver<Msg>,
    mut events: mpsc::Receiver<TargetEvent>,
    app: &mut App,
    fx: &mut E,
    opts: LoopOptions,
) -> io::Result<LoopReport>
where
    B: Backend,
    S: Stream<Item = io::Result<Event>> + Unpin,
    E: Effects,
{
    let mut report = LoopReport::default();
    let size = terminal.size()?;
    feed(app, fx, Msg::Resize(size.width, size.height));
    terminal.draw(|f| view::render(app, f))?;
    app.dirty = false;
    report.first_frame_at = Some(Instant::now());
    report.frames = 1;
    if opts.exit_after_first_frame {
        return Ok(report);
    }
    if opts.panic_after_first_frame {
        panic!("{TEST_PANIC} is set: panicking after the first frame");
    }
    let mut last_draw = Instant::now();
    let mut input_open = true;
    let mut events_open = true;
    // Resizes are applied once per frame: a drag re-wraps the transcripts once, not per event.
    let mut pending_resize: Option<(u16, u16)> = None;
    loop {
        let now = Instant::now();
        let deadline = if app.dirty {
            last_draw + FRAME
        } else if app.in_flight() || app.flash().is_some() {
            now + Duration::from_millis(250)
        } else {
            now + Duration::from_secs(3600)
        };
        tokio::select! {
            ev = input.next(), if input_open => match ev {
                Some(Ok(Event::Resize(w, h))) => {
                    pending_resize = Some((w, h));
                    app.dirty = true;
                }
                Some(Ok(ev)) => {
                    if let Some(m) = input_msg(ev) {
                        if let Some((w, h)) = pending_resize.take() {
                            feed(app, fx, Msg::Resize(w, h));
                        }
                        feed(app, fx, m);
                    }
                }
                Some(Err(e)) => return Err(e),
                None => input_open = false,
            },
            ev = events.recv(), if events_open => match ev {
                Some(ev) => {
                    if let Some(m) = engine_msg(app, ev) {
                        feed(app, fx, m);
                    }
                    // Drain what is queued: one frame for a burst of deltas.
                    let mut n = 0;
                    while n < 20_000 {
                        match events.try_recv() {
                            Ok(ev) => {
                                if let Some(m) = engine_msg(app, ev) {
                                    feed(app, fx, m);
                                }
                            }
                            Err(_) => break,
                        }
                        n += 1;
                    }
                }
                None => events_open = false,
            },
            m = rx.recv() => {
                let Some(m) = m else { break };
                feed(app, fx, m);
                // Drain what is queued: one frame for a burst of deltas.
                let mut n = 0;
                while n < 20_000 {
                    match rx.try_recv() {
                        Ok(m) => feed(app, fx, m),
                        Err(_) => break,
                    }
                    n += 1;
                }
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                if !app.dirty {
                    feed(app, fx, Msg::Tick);
                }
            },
        }
        if app.quit {
            break;
        }
        if app.dirty && last_draw.elapsed() >= FRAME {
            if let Some((w, h)) = pending_resize.take() {
                feed(app, fx, Msg::Resize(w, h));
            }
            terminal.draw(|f| view::render(app, f))?;
            app.dirty = false;
            last_draw = Instant::now();
            report.frames += 1;
        }
    }
    Ok(report)
}

// ----- the real effects --------------------------------------------------

type Groups = Vec<(ChatRequest, Vec<String>)>;

/// The groups' requests with their options applied (files read, as a send reads them).
fn with_options(mut groups: Groups, options: &[RequestOptions]) -> Result<Groups, String> {
    for ((req, _), o) in groups.iter_mut().zip(options) {
        o.apply(req).map_err(|e| e.to_string())?;
    }
    Ok(groups)
}

/// Project several requests and their targets into one bound.
pub fn project_groups(engine: &Engine, groups: &Groups) -> Result<Projection, String> {
    let mut out = Projection::default();
    for (req, targets) in groups {
        // Named as the front door names them (`cheapest:`, tiers, aliases).
        let p = engine.preview(req, targets).map_err(|e| e.to_string())?;
        out.targets.extend(p.targets);
    }
    Ok(out)
}

/// Commands carried out against the engine, the ledger and the terminal.
pub struct EngineEffects {
    engine: Engine,
    ledger: Option<BackgroundLedger>,
    session: String,
    handles: HashMap<u64, RunHandle>,
    /// Our run key -> for each of the engine run's targets, its index among ours.
    subsets: HashMap<u64, Vec<usize>>,
    /// Engine run id -> (our key, targets not yet ended).
    left: HashMap<String, (u64, usize)>,
    /// Where every run sends its events (the loop reads them directly).
    events: mpsc::Sender<TargetEvent>,
    /// Messages for the app, delivered right after the command that made them.
    replies: Vec<Msg>,
    /// Our run keys -> the engine's run ids (votes name the run).
    run_ids: HashMap<u64, String>,
    tx: mpsc::Sender<Msg>,
    projector: watch::Sender<Option<(u64, Groups, Vec<RequestOptions>)>>,
    data_dir: Option<PathBuf>,
    /// The next start skips the budget (the user chose to send anyway).
    force_next: bool,
}

impl EngineEffects {
    /// Effects for `engine`; results come back on `tx`. Call inside a runtime.
    pub fn new(
        engine: Engine,
        settings: &Settings,
        tx: mpsc::Sender<Msg>,
        events: mpsc::Sender<TargetEvent>,
        data_dir: Option<PathBuf>,
    ) -> Self {
        let (ptx, mut prx) = watch::channel::<Option<(u64, Groups, Vec<RequestOptions>)>>(None);
        let (e2, tx2) = (engine.clone(), tx.clone());
        // One projection at a time; edits made meanwhile collapse into the latest.
        tokio::spawn(async move {
            while prx.changed().await.is_ok() {
                let job = prx.borrow_and_update().clone();
                let Some((gen, groups, options)) = job else {
                    continue;
                };
                let e = e2.clone();
                let result = tokio::task::spawn_blocking(move || {
                    project_groups(&e, &with_options(groups, &options)?)
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
                if tx2.send(Msg::Projection { gen, result }).await.is_err() {
                    break;
                }
            }
        });
        let session = format!("tui-{}", crate::engine::run::new_id(6));
        if let Some(l) = settings.ledger.clone() {
            let s = session.clone();
            let tx3 = tx.clone();
            tokio::task::spawn_blocking(move || {
                let Ok(l) = l.wait() else { return };
                let _ = l.start_session(&s, Some("tui"), Some("quorum-tui"));
                if let Ok(rows) = l.recent(300) {
                    let mut seen = Vec::new();
                    for r in rows {
                        if let Some(p) = r.prompt {
                            if !seen.contains(&p) {
                                seen.push(p);
                            }
                        }
                        if seen.len() >= 100 {
                            break;
                        }
                    }
                    let _ = tx3.blocking_send(Msg::PromptHistory(seen));
                }
            });
        }
        // Parse the price table now, off the first frame, so live costs never wait for it.
        let pricing = engine.pricing().clone();
        tokio::task::spawn_blocking(move || pricing.warm());
        // Ask a local Ollama and every provider with a key which models they offer, off
        // the first frame and with a short timeout: the picker offers what answers.
        if std::env::var_os("QUORUM_NO_DISCOVERY").is_none() {
            let specs = crate::engine::discovery::discoverable(engine.registry());
            let (reg, tx4) = (engine.clone(), tx.clone());
            tokio::spawn(async move {
                let found =
                    crate::engine::discovery::discover_all(specs, Duration::from_secs(3)).await;
                let targets: Vec<String> = found
                    .into_iter()
                    .filter_map(|d| d.models.ok().map(|m| (d.provider, m)))
                    .flat_map(|(p, ms)| ms.into_iter().map(move |m| format!("{p}/{}", m.name)))
                    .filter(|t| reg.registry().is_allowed(t))
                    .collect();
                if !targets.is_empty() {
                    let _ = tx4.send(Msg::Discovered(targets)).await;
                }
            });
        }
        EngineEffects {
            engine,
            ledger: settings.ledger.clone(),
            session,
            handles: HashMap::new(),
            left: HashMap::new(),
            subsets: HashMap::new(),
            events,
            replies: Vec::new(),
            run_ids: HashMap::new(),
            tx,
            projector: ptx,
            data_dir,
            force_next: false,
        }
    }

    fn blocking<F>(&self, f: F)
    where
        F: FnOnce() -> Msg + Send + 'static,
    {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            if let Ok(m) = tokio::task::spawn_blocking(f).await {
                let _ = tx.send(m).await;
            }
        });
    }
}

/// OSC 52: put `text` on the terminal's clipboard.
pub fn osc52(text: &str) -> String {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
    format!("\x1b]52;c;{b}\x07")
}

fn group_runs(rows: Vec<crate::engine::ledger::RequestRow>, limit: usize) -> Vec<HistRun> {
    let mut runs: Vec<HistRun> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for r in rows {
        match index.get(&r.run_id) {
            Some(&i) => runs[i].rows.push(r),
            None => {
                if runs.len() >= limit {
                    continue;
                }
                index.insert(r.run_id.clone(), runs.len());
                runs.push(HistRun {
                    run_id: r.run_id.clone(),
                    created_at: r.created_at.clone(),
                    prompt: r.prompt.clone(),
                    rows: vec![r],
                });
            }
        }
    }
    for run in &mut runs {
        run.rows.sort_by_key(|r| r.id);
    }
    runs
}

/// The names in `dir` (directories end in `/`), for `@path` completion.
fn list_dir(dir: &str) -> Result<Vec<String>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{dir}: {e}"))?;
    Ok(rd
        .flatten()
        .take(5000)
        .map(|e| {
            let mut n = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                n.push('/');
            }
            n
        })
        .collect())
}

impl EngineEffects {
    /// Fail target `target` of run `run` before anything was sent, saying why.
    fn refuse(&mut self, run: u64, target: usize, model: &str, why: EngineError) {
        let c = Completion {
            model: model.to_string(),
            finish_reason: FinishReason::Error,
            error: Some(why),
            ..Default::default()
        };
        let event = TargetEvent {
            run_id: Arc::from(""),
            target,
            event: StreamEvent::Failed(Box::new(c)),
        };
        self.replies.push(Msg::Engine { run, event });
    }

    /// Start a run through the front door: the request options are applied (their
    /// files read) first, and targets that cannot take the request (a text-only model
    /// given an image) are refused by name while the others are sent.
    fn start(
        &mut self,
        run: u64,
        mut request: ChatRequest,
        targets: Vec<String>,
        options: RequestOptions,
    ) {
        if let Err(e) = options.apply(&mut request) {
            // A missing file, a bad schema: nothing is sent, every pane says why.
            for (i, t) in targets.iter().enumerate() {
                self.refuse(run, i, t, e.clone());
            }
            self.replies.push(Msg::RunClosed { run });
            return;
        }
        let mut keep = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            match self.engine.check_target(&request, t) {
                Ok(()) => keep.push(i),
                Err(e) => self.refuse(run, i, t, e),
            }
        }
        if keep.is_empty() {
            self.replies.push(Msg::RunClosed { run });
            return;
        }
        let send: Vec<String> = keep.iter().map(|&i| targets[i].clone()).collect();
        let opts = StartOptions {
            run: RunOptions {
                session_id: Some(self.session.clone()),
                source_agent: Some("quorum-tui".into()),
                ..Default::default()
            },
            // The user saw the budget's refusal and chose to send anyway.
            force: std::mem::take(&mut self.force_next),
            // Every run's events come straight to the loop, naming their run.
            events: Some(self.events.clone()),
            ..Default::default()
        };
        // The front door is quick (a projection and one ledger transaction):
        // wait for it here so the run's handle exists before the next command.
        let engine = self.engine.clone();
        let started = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(engine.start(request, send, opts))
        });
        match started {
            Ok(s) => {
                let h = s.handle;
                self.replies.push(Msg::RunStarted {
                    run,
                    run_id: h.run_id.clone(),
                    targets: keep.clone(),
                });
                self.left.insert(h.run_id.clone(), (run, h.targets.len()));
                self.run_ids.insert(run, h.run_id.clone());
                self.subsets.insert(run, keep);
                self.handles.insert(run, h);
            }
            Err(refusal) => {
                // Nothing was sent: every pane of the run says why.
                for i in keep {
                    self.refuse(run, i, &targets[i], refusal.clone().into());
                }
                self.replies.push(Msg::RunClosed { run });
            }
        }
    }
}

impl Effects for EngineEffects {
    fn replies(&mut self) -> Vec<Msg> {
        std::mem::take(&mut self.replies)
    }

    fn seen(&mut self, msg: &Msg) {
        match msg {
            Msg::RunClosed { run } => {
                self.handles.remove(run);
                self.subsets.remove(run);
            }
            // The run's last target ended: its handle is no longer needed.
            Msg::Engine { run, event } if event.event.is_final() => {
                if let Some((_, n)) = self.left.get_mut(&*event.run_id) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.left.remove(&*event.run_id);
                        self.handles.remove(run);
                        self.subsets.remove(run);
                    }
                }
            }
            // A send after a refused check is the user's "send anyway".
            Msg::BudgetChecked(r) => self.force_next = r.is_err(),
            _ => {}
        }
    }

    fn run(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Start {
                run,
                request,
                targets,
                options,
            } => self.start(run, request, targets, *options),
            Cmd::ListPath { prefix } => {
                self.blocking(move || {
                    let entries = list_dir(&settings::completion_dir(&prefix));
                    Msg::PathEntries { prefix, entries }
                });
            }
            Cmd::Cancel { run } => {
                if let Some(h) = self.handles.get(&run) {
                    h.cancel();
                }
            }
            Cmd::CancelTarget { run, index } => {
                // The engine's run holds only the targets that were not refused.
                let at = self
                    .subsets
                    .get(&run)
                    .and_then(|m| m.iter().position(|i| *i == index));
                if let (Some(h), Some(at)) = (self.handles.get(&run), at) {
                    h.cancel_target(at);
                }
            }
            Cmd::Project {
                gen,
                groups,
                options,
            } => {
                let _ = self.projector.send(Some((gen, groups, options)));
            }
            Cmd::CheckBudget { groups, options } => {
                // The engine's check, as its front door makes it (nothing reserved):
                // a refusal asks the user, who may send anyway.
                let (engine, session) = (self.engine.clone(), self.session.clone());
                self.blocking(move || {
                    // A file that cannot be read fails the send itself, naming it,
                    // before anything is sent: nothing to ask about here.
                    let Ok(groups) = with_options(groups, &options) else {
                        return Msg::BudgetChecked(Ok(()));
                    };
                    let r = engine.check_budget(&groups, Some(&session)).map_err(|r| {
                        r.to_string()
                            .replace(" (pass --force to send anyway)", "")
                            .replace(" or pass --force", "")
                    });
                    Msg::BudgetChecked(r)
                });
            }
            Cmd::Copy(text) => {
                use std::io::Write;
                let mut out = io::stdout();
                let _ = out.write_all(osc52(&text).as_bytes());
                let _ = out.flush();
            }
            Cmd::Export(doc) => {
                let dir = self.data_dir.clone();
                self.blocking(move || {
                    let Some(dir) = dir else {
                        return Msg::Exported(
                            Err("no data directory (set QUORUM_DATA_DIR)".into()),
                        );
                    };
                    let now = time::OffsetDateTime::now_utc();
                    let stamp = now
                        .format(time::macros::format_description!(
                            "[year][month][day]-[hour][minute][second]"
                        ))
                        .unwrap_or_default();
                    let created = now
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default();
                    Msg::Exported(doc.write(&dir.join("exports"), &stamp, &created))
                });
            }
            Cmd::LoadHistory => {
                let ledger = self.ledger.clone();
                self.blocking(move || {
                    let r = match ledger {
                        None => Err("no ledger (no data directory)".to_string()),
                        Some(l) => l
                            .wait()
                            .and_then(|l| l.recent(3000))
                            .map(|rows| group_runs(rows, 300))
                            .map_err(|e| e.to_string()),
                    };
                    Msg::History(r)
                });
            }
            Cmd::LoadVotes => {
                let ledger = self.ledger.clone();
                self.blocking(move || {
                    Msg::Votes(match ledger {
                        None => Err("no ledger (no data directory)".to_string()),
                        Some(l) => l.wait().and_then(|l| l.votes()).map_err(|e| e.to_string()),
                    })
                });
            }
            Cmd::RecordVote { mut vote, run } => {
                if vote.run_id.is_none() {
                    vote.run_id = run.and_then(|r| self.run_ids.get(&r).cloned());
                }
                let ledger = self.ledger.clone();
                self.blocking(move || {
                    Msg::VoteRecorded(match ledger {
                        None => Err("no ledger (no data directory)".to_string()),
                        Some(l) => l
                            .wait()
                            .and_then(|l| {
                                l.record_vote(
                                    vote.run_id.as_deref(),
                                    &vote.targets,
                                    vote.winner.as_deref(),
                                    vote.tag.as_deref(),
                                )?;
                                l.votes()
                            })
                            .map_err(|e| e.to_string()),
                    })
                });
            }
            Cmd::Judge {
                target,
                prompt,
                answers,
            } => {
                let (engine, tx) = (self.engine.clone(), self.tx.clone());
                // Through the front door, like any run: reserved against the budget
                // and noted in the ledger.
                let opts = StartOptions {
                    run: RunOptions {
                        session_id: Some(self.session.clone()),
                        source_agent: Some("quorum-tui".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                tokio::spawn(async move {
                    let r = crate::engine::judge::judge(&engine, &target, &prompt, &answers, opts)
                        .await;
                    let _ = tx.send(Msg::Judged(r.map(Box::new))).await;
                });
            }
        }
    }
}

// ----- start -------------------------------------------------------------

/// Targets to open with, and whether we are offline (no provider key at all).
pub fn default_targets(engine: &Engine, settings: &Settings) -> (Vec<String>, bool) {
    let reg = engine.registry();
    let keyed: Vec<String> = reg
        .providers()
        .filter(|p| p.kind.needs_key() && crate::engine::registry::has_key(p))
        .map(|p| p.name.clone())
        .collect();
    let offline = keyed.is_empty();
    if !settings.config.compare_targets.is_empty() {
        return (settings.config.compare_targets.clone(), offline);
    }
    if !offline {
        let mut v: Vec<String> = keyed
            .iter()
            .filter_map(|p| reg.models(p).first().map(|m| format!("{p}/{m}")))
            .take(4)
            .collect();
        if !v.is_empty() {
            v.truncate(4);
            return (v, offline);
        }
    }
    (
        vec![
            "mock/alpha".into(),
            "mock/beta".into(),
            "mock/thinker".into(),
        ],
        offline,
    )
}

/// The banner of an offline first run.
pub const OFFLINE_BANNER: &str = "offline: no API key found, so the mock models answer · for real ones set OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY or OPENROUTER_API_KEY, or add [providers] to the config";

fn init_logging(data_dir: Option<&std::path::Path>) {
    let Some(dir) = data_dir else { return };
    if crate::engine::files::create_private_dir(dir).is_err() {
        return;
    }
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(LOG_FILE))
    else {
        return;
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("QUORUM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
}

/// SIGTERM, SIGHUP and SIGINT quit cleanly (the terminal is restored).
fn spawn_signal_watch(tx: mpsc::Sender<Msg>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut hup), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = hup.recv() => {}
            _ = int.recv() => {}
        }
        let _ = tx.send(Msg::Quit).await;
    });
    #[cfg(not(unix))]
    drop(tx);
}

/// `quorum` with no arguments: run the workbench; returns the exit code.
pub fn run(flags: &GlobalFlags, theme_flag: Option<String>) -> i32 {
    let started = Instant::now();
    {
        use std::io::IsTerminal;
        if !io::stdout().is_terminal() || !io::stdin().is_terminal() {
            eprintln!(
                "quorum: the workbench needs a terminal; for scripts use `quorum ask` or `quorum compare` (see `quorum --help`)"
            );
            return crate::shared::exit::EXIT_USAGE;
        }
    }
    let (engine, settings) = match crate::app::load(flags) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("quorum: {e:#}");
            return crate::shared::exit::EXIT_USAGE;
        }
    };
    let data_dir = crate::engine::files::data_dir();
    init_logging(data_dir.as_deref());
    let theme_name = theme_flag.unwrap_or_else(|| settings.config.theme.clone());
    let config_dir = settings
        .config
        .file
        .as_ref()
        .or(settings.config.searched.as_ref())
        .and_then(|p| p.parent().map(|d| d.to_path_buf()));
    let (theme, mut warnings) =
        theme::load(&theme_name, config_dir.as_deref(), theme::no_color_env());
    let (keys, kw) = keys::KeyMap::from_config(&settings.config.keys);
    warnings.extend(kw);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let (targets, offline) = default_targets(&engine, &settings);
    let keyless: Vec<String> = engine
        .registry()
        .providers()
        .filter(|p| p.kind.needs_key() && !crate::engine::registry::has_key(p))
        .map(|p| p.name.clone())
        .collect();
    let mut banner = Vec::new();
    if offline {
        banner.push(OFFLINE_BANNER.to_string());
    }
    banner.extend(warnings);
    let mut available = engine.registry().known_targets();
    available.sort();
    available.dedup();
    let init = AppInit {
        targets,
        available,
        theme,
        keys,
        banner,
        budget_set: settings.budget.is_set(),
        pricing: Some(engine.pricing().clone()),
        size: (80, 24),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quorum: cannot start the runtime: {e}");
            return crate::shared::exit::EXIT_FAILED;
        }
    };
    let flag = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    let exit_after = flag(EXIT_AFTER_FIRST_FRAME);
    let panic_after = flag(TEST_PANIC);
    let mut guard = match terminal::TerminalGuard::enter() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("quorum: cannot set up the terminal: {e}");
            return crate::shared::exit::EXIT_FAILED;
        }
    };
    let result = rt.block_on(async {
        let (tx, rx) = mpsc::channel(8192);
        let (etx, erx) = mpsc::channel(8192);
        spawn_signal_watch(tx.clone());
        let mut fx = EngineEffects::new(engine, &settings, tx, etx, data_dir.clone());
        let mut app = App::new(init);
        app.cons.judge_model = settings.config.judge_model.clone();
        app.keyless = keyless;
        app.max_tokens = match settings.config.tui_max_tokens {
            Some(0) => None,
            Some(n) => Some(n),
            None => Some(app::DEFAULT_MAX_TOKENS),
        };
        app.model_max_tokens = settings
            .config
            .models
            .iter()
            .filter_map(|(id, m)| m.max_tokens.map(|n| (id.clone(), n)))
            .collect();
        app.cons.vote_tag = settings.config.vote_tag.clone();
        let input = crossterm::event::EventStream::new();
        let r = run_loop(
            guard.terminal(),
            input,
            rx,
            erx,
            &mut app,
            &mut fx,
            LoopOptions {
                exit_after_first_frame: exit_after,
                panic_after_first_frame: panic_after,
            },
        )
        .await;
        // Cancel what is still in flight so its ledger rows are written.
        for cmd in app
            .runs
            .keys()
            .map(|&run| Cmd::Cancel { run })
            .collect::<Vec<_>>()
        {
            fx.run(cmd);
        }
        r
    });
    guard.restore();
    drop(guard);
    rt.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(rep) => {
            if let Some(at) = rep.first_frame_at {
                let ms = at.duration_since(started).as_secs_f64() * 1e3;
                tracing::info!("first frame after {ms:.1} ms; {} frames", rep.frames);
                if exit_after {
                    eprintln!("first frame: {ms:.1} ms");
                }
            }
            crate::shared::exit::EXIT_OK
        }
        Err(e) => {
            eprintln!("quorum: terminal error: {e}");
            crate::shared::exit::EXIT_FAILED
        }
    }
}
