//! The front door: [`Engine::start`], the one way a face sends a request.
//!
//! Every guarantee made before a byte leaves is made here, once, so that every face
//! keeps it the same way: target resolution (aliases, tiers, `cheapest:`),
//! `allowed_models`, capability checks, deprecation warnings (returned as data), the
//! cost projection, the budget reservation and noting the run in the ledger. A
//! guarantee that cannot be kept refuses loudly before anything is sent: an unusable
//! ledger refuses every run (unless the ledger is explicitly off), and a ledger whose
//! writes have failed refuses runs while a budget is set.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::budget::{self, Projection};
use super::error::EngineError;
use super::lease::{InFlight, Lease, Reserving, Take};
use super::ledger::{BackgroundLedger, Gate, Ledger, LedgerError, Refused, RunNote};
use super::request::ChatRequest;
use super::run::{Engine, RunHandle, RunOptions, TargetEvent};
use super::select;

/// Where the engine keeps its books.
#[derive(Debug, Clone, Default)]
pub enum Books {
    /// No ledger, by the user's explicit choice (`--no-ledger`); budgets cannot be set.
    #[default]
    Off,
    /// A ledger was wanted but cannot be used (no data directory).
    Unusable(LedgerProblem),
    /// The ledger (opening in the background): SQLite or PostgreSQL.
    On {
        /// The ledger.
        ledger: BackgroundLedger,
    },
}

/// Failed ledger writes since start: while there are any, runs with a budget are refused.
#[derive(Debug, Default)]
pub struct LedgerHealth {
    failures: AtomicU64,
    last: Mutex<Option<String>>,
}

impl LedgerHealth {
    /// Count a failed write.
    pub fn fail(&self, why: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut g) = self.last.lock() {
            *g = Some(why.to_string());
        }
    }

    /// Failed writes so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The last failure, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last.lock().ok().and_then(|g| g.clone())
    }
}

/// Why the ledger cannot be used, and what to do about it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LedgerProblem {
    /// The ledger file, or its URL with the password masked, when there is one.
    pub place: Option<String>,
    /// What went wrong.
    pub reason: String,
    /// What the user can do.
    pub fix: String,
}

impl LedgerProblem {
    /// A problem at `place` (a file or a masked URL) that is not a [`LedgerError`].
    pub fn at(place: &str, reason: &str, fix: &str) -> LedgerProblem {
        LedgerProblem {
            place: Some(place.to_string()),
            reason: reason.to_string(),
            fix: format!("{fix}; or run with --no-ledger (no budgets then)"),
        }
    }
}

impl From<&LedgerError> for LedgerProblem {
    fn from(e: &LedgerError) -> Self {
        LedgerProblem {
            place: e.place().map(String::from),
            reason: e.reason(),
            fix: format!("{}; or run with --no-ledger (no budgets then)", e.fix()),
        }
    }
}

impl From<LedgerError> for LedgerProblem {
    fn from(e: LedgerError) -> Self {
        LedgerProblem::from(&e)
    }
}

impl std::fmt::Display for LedgerProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.place {
            Some(p) => write!(f, "the ledger {p} cannot be used: {}", self.reason)?,
            None => write!(f, "the ledger cannot be used: {}", self.reason)?,
        }
        write!(f, " (fix: {}); nothing was sent", self.fix)
    }
}

/// Options of [`Engine::start`].
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Options of the run itself.
    pub run: RunOptions,
    /// Send even when the projection would cross a cap (the run is still noted).
    pub force: bool,
    /// The session whose cap applies (default: `run.session_id`). `serve` sets its
    /// process session here so that a client cannot walk around the cap.
    pub budget_session: Option<String>,
    /// Send the run's events here instead of a channel of its own.
    pub events: Option<mpsc::Sender<TargetEvent>>,
    /// Run a one-target run on the task that reads its events instead of a
    /// task of its own (ignored for several targets or with `events`): each
    /// upstream chunk then costs one task wake-up less. That task must read
    /// the events through [`RunHandle::recv`](super::run::RunHandle::recv) or
    /// [`RunHandle::poll_event`](super::run::RunHandle::poll_event), the only
    /// calls that drive the run; dropping the handle early hands the rest of
    /// the run to a task, so it still ends and records itself.
    pub inline: bool,
}

/// A run that passed the front door.
#[derive(Debug)]
pub struct Started {
    /// The run.
    pub handle: RunHandle,
    /// The targets as resolved (`cheapest:TIER` replaced by the member chosen).
    pub targets: Vec<String>,
    /// Deprecation warnings, one line per target.
    pub warnings: Vec<String>,
    /// The bound reserved against the budget, when one is set.
    pub projection: Option<Projection>,
}

/// Why a run was refused before anything was sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// A target cannot be used: unknown, not allowed, lacks a capability, no key, ...
    Target(EngineError),
    /// A budget cap would be crossed.
    Budget(budget::Refusal),
    /// The ledger cannot be used (or its writes failed while a budget is set).
    Ledger(LedgerProblem),
}

impl Refusal {
    /// A short stable word for metrics and error objects.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Target(e) => e.kind(),
            Refusal::Budget(_) => "budget",
            Refusal::Ledger(_) => "ledger",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Target(e) => e.fmt(f),
            Refusal::Budget(r) => r.fmt(f),
            Refusal::Ledger(p) => p.fmt(f),
        }
    }
}

impl From<Refusal> for EngineError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Target(e) => e,
            Refusal::Budget(b) => b.into(),
            Refusal::Ledger(p) => EngineError::Config {
                message: p.to_string(),
            },
        }
    }
}

/// The note of run `run_id` (no bound yet: see [`RunNote::projecting`]).
fn run_note<'a>(
    run_id: &'a str,
    trace_id: &'a str,
    targets: &'a [String],
    request: &'a ChatRequest,
    (session_id, budget_session): (Option<&'a str>, Option<&'a str>),
) -> RunNote<'a> {
    RunNote {
        run_id,
        session_id,
        budget_session,
        trace_id: Some(trace_id),
        targets,
        projected_usd: None,
        prompt: request.last_user_text(),
    }
}

/// Whether [`budget::project`] is quick for `request` to `resolved` (a short prompt,
/// every tokenizer it needs loaded already): then the front door runs it in place
/// instead of on a blocking thread.
fn projects_quickly(request: &ChatRequest, resolved: &[super::registry::Resolved]) -> bool {
    use super::tokens;
    tokens::quick_estimate_request(request) <= 8192
        && resolved
            .iter()
            .all(|r| tokens::is_loaded(tokens::encoding_for(&r.model).0))
}

/// Settles a run's reservation when the last of its targets is done (every request
/// row is written by then). Usually the last target's row settles it in the same
/// commit ([`Settle::mark_done`]); dropping it settles it otherwise (a run that ends
/// without a row, two targets finishing at once, a failed write). A run whose bound
/// came from a lease holds nothing itself: its rows draw the lease down, and the
/// lease is released when its last run ends.
pub(crate) struct Settle {
    ledger: BackgroundLedger,
    run_id: String,
    done: std::sync::atomic::AtomicBool,
    /// The lease the run's bound was claimed from (dropped before `_in_flight`).
    lease: Option<Arc<Lease>>,
    _in_flight: Option<InFlight>,
}

impl Settle {
    /// The reservation was ended with the run's last row.
    pub(crate) fn mark_done(&self) {
        self.done.store(true, Ordering::Relaxed);
    }

    /// The lease whose hold the run's rows draw down, if its bound came from one.
    pub(crate) fn lease_id(&self) -> Option<&str> {
        self.lease.as_deref().map(Lease::id)
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if *self.done.get_mut() || self.lease.is_some() {
            return;
        }
        settle_detached(self.ledger.clone(), std::mem::take(&mut self.run_id));
    }
}

/// Settle run (or lease) `run_id` in `ledger` without waiting for the commit.
pub(crate) fn settle_detached(ledger: BackgroundLedger, run_id: String) {
    // Detached: the blocking thread returns as soon as the settlement is queued
    // when a bookkeeping commit is running (it rides in the next batch).
    let settle = move || match ledger.wait() {
        Ok(l) => l.settle_run_detached(&run_id),
        // The hold expires when this process exits.
        Err(e) => tracing::error!("ledger: cannot settle run {run_id}: {e}"),
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn_blocking(settle);
        }
        Err(_) => settle(),
    }
}

impl Engine {
    /// Start a run through the front door: resolve the targets (aliases, tiers,
    /// `cheapest:`), check them (`allowed_models`, capabilities), project the cost,
    /// reserve it against the budget and note the run in the ledger, then send. Every
    /// face calls this; nothing is sent when it returns an error.
    pub async fn start(
        &self,
        request: ChatRequest,
        targets: Vec<String>,
        opts: StartOptions,
    ) -> Result<Started, Refusal> {
        let targets = select::expand_targets(self, &targets, &request).map_err(Refusal::Target)?;
        let resolved = self.check_targets(&targets).map_err(Refusal::Target)?;
        for r in &resolved {
            super::capability::check(self.registry(), self.pricing(), r, &request)
                .map_err(Refusal::Target)?;
        }
        let targets: Vec<String> = resolved.iter().map(|r| r.id()).collect();
        let mut warnings = select::deprecation_warnings(self, &targets);
        let budget = self.budget();
        let gated = budget.is_set() && !opts.force;
        let run_id = self.next_run_id();
        let trace_id = self.trace_id_for(&opts.run);
        let mut settle = None;
        let mut projection = None;
        match self.books() {
            Books::Off if gated => {
                return Err(Refusal::Target(EngineError::Config {
                    message: "a budget is set but the ledger is off, so spending cannot be tracked"
                        .into(),
                }))
            }
            Books::Off => {}
            Books::Unusable(p) => return Err(Refusal::Ledger(p.clone())),
            Books::On { ledger } => {
                let health = self.ledger_health();
                if gated && health.failures() > 0 {
                    return Err(Refusal::Ledger(LedgerProblem::at(
                        ledger.place(),
                        &format!(
                            "{} write(s) failed since start (last: {}), so spending so far is unknown",
                            health.failures(),
                            health.last_error().unwrap_or_default()
                        ),
                        "fix the cause named above and restart",
                    )));
                }
                let refused = |r: Refused| match r {
                    Refused::Budget(b) => Refusal::Budget(b),
                    Refused::Ledger(e) => Refusal::Ledger(e.into()),
                };
                let away;
                match ledger.ready().and_then(Result::ok) {
                    // Nothing to reserve: the note is queued and the run goes on at
                    // once (no wait before the first byte); it rides in the next
                    // commit, usually with the run's first request row.
                    Some(l) if !gated => {
                        let sessions = (
                            opts.run.session_id.as_deref(),
                            opts.budget_session.as_deref(),
                        );
                        self.note_passenger(
                            &l, &request, &targets, &run_id, &trace_id, sessions, None,
                        );
                        away = l.away_warning();
                    }
                    // A short prompt and tokenizers loaded already: projected here, and
                    // the reservation (the run's own, or a lease's) awaited without
                    // holding a blocking thread.
                    Some(l) if projects_quickly(&request, &resolved) => {
                        let p =
                            budget::project(self, &request, &targets).map_err(Refusal::Target)?;
                        let sessions = (
                            opts.run.session_id.as_deref(),
                            opts.budget_session.as_deref(),
                        );
                        let note = run_note(&run_id, &trace_id, &targets, &request, sessions)
                            .projecting(p.total_usd());
                        let scope = note.budget_session.or(note.session_id);
                        let leases = self.leases();
                        let in_flight = leases.enter(scope);
                        let mut leased = None;
                        if let Some(bound) = p.total_usd() {
                            leased = match leases.take(scope, bound, &budget) {
                                Take::Leased(lease, renew) => {
                                    if let Some(r) = renew {
                                        self.renew_lease(&l, ledger, scope, r);
                                    }
                                    Some(lease)
                                }
                                // Dropped mid-way (the client went away), `r` lets the
                                // scope reserve again.
                                Take::Reserve(r) => {
                                    let lease =
                                        self.reserve_lease(&l, ledger, scope, r.size()).await;
                                    if let Some(lease) = &lease {
                                        r.opened(lease.clone(), bound);
                                    }
                                    lease
                                }
                                Take::Own => None,
                            };
                        }
                        match &leased {
                            // The bound is inside the lease's hold: the note rides with
                            // the run's first row, as without a budget.
                            Some(_) => {
                                self.note_passenger(
                                    &l,
                                    &request,
                                    &targets,
                                    &run_id,
                                    &trace_id,
                                    sessions,
                                    p.total_usd(),
                                );
                            }
                            None => {
                                let gate = Gate {
                                    budget: &budget,
                                    projection: &p,
                                };
                                match l.begin_run_async(&note, gate).await {
                                    Ok(r) => r.map_err(refused)?,
                                    Err(_) => return Err(Refusal::Ledger(LedgerProblem::at(
                                        l.place(),
                                        "the reservation was not answered (the ledger is closing)",
                                        "retry",
                                    ))),
                                }
                            }
                        }
                        settle = Some(Arc::new(Settle {
                            ledger: ledger.clone(),
                            run_id: run_id.clone(),
                            done: Default::default(),
                            lease: leased,
                            _in_flight: Some(in_flight),
                        }));
                        projection = Some(p);
                        away = l.away_warning();
                    }
                    _ => {
                        let (engine, ledger2) = (self.clone(), ledger.clone());
                        let (req2, targets2) = (request.clone(), targets.clone());
                        let (rid, tid) = (run_id.clone(), trace_id.clone());
                        let session = opts.run.session_id.clone();
                        let bsession = opts.budget_session.clone();
                        let work =
                            move || -> Result<(Option<Projection>, Option<String>), Refusal> {
                                let p = if gated {
                                    Some(
                                        budget::project(&engine, &req2, &targets2)
                                            .map_err(Refusal::Target)?,
                                    )
                                } else {
                                    None
                                };
                                let l = ledger2.wait().map_err(|e| Refusal::Ledger(e.into()))?;
                                let sessions = (session.as_deref(), bsession.as_deref());
                                let Some(projection) = p.as_ref() else {
                                    engine.note_passenger(
                                        &l, &req2, &targets2, &rid, &tid, sessions, None,
                                    );
                                    return Ok((None, l.away_warning()));
                                };
                                let note = run_note(&rid, &tid, &targets2, &req2, sessions)
                                    .projecting(projection.total_usd());
                                let gate = Gate {
                                    budget: &budget,
                                    projection,
                                };
                                l.begin_run(&note, Some(gate)).map_err(refused)?;
                                Ok((p, l.away_warning()))
                            };
                        (projection, away) =
                            tokio::task::spawn_blocking(work).await.map_err(|e| {
                                Refusal::Target(EngineError::Config {
                                    message: format!("the front door failed: {e}"),
                                })
                            })??;
                    }
                }
                // The shared database is away: the run goes on, its rows wait locally.
                warnings.extend(away);
                if projection.is_some() && settle.is_none() {
                    settle = Some(Arc::new(Settle {
                        ledger: ledger.clone(),
                        run_id: run_id.clone(),
                        done: Default::default(),
                        lease: None,
                        _in_flight: None,
                    }));
                }
            }
        }
        let handle = self.run_with(
            request,
            targets.clone(),
            opts.run,
            run_id,
            trace_id,
            opts.events,
            settle,
            opts.inline,
        );
        Ok(Started {
            handle,
            targets,
            warnings,
            projection,
        })
    }

    /// Note an ungated run in `l` without waiting (see [`Ledger::note_run_passenger`]);
    /// a failure is counted in [`LedgerHealth`] and logged, so that `serve` reports
    /// itself degraded and refuses runs while a budget is set.
    #[allow(clippy::too_many_arguments)]
    fn note_passenger(
        &self,
        l: &Ledger,
        request: &ChatRequest,
        targets: &[String],
        run_id: &str,
        trace_id: &str,
        sessions: (Option<&str>, Option<&str>),
        projected_usd: Option<f64>,
    ) {
        let note = run_note(run_id, trace_id, targets, request, sessions).projecting(projected_usd);
        let (health, id) = (self.ledger_health_arc(), run_id.to_string());
        l.note_run_passenger(&note, move |r| {
            if let Err(e) = r {
                tracing::error!("ledger: run {id} was not noted: {e}");
                health.fail(&format!("run {id} was not noted: {e}"));
            }
        });
    }

    /// Reserve the next lease for `scope` in the background, while the open one lasts.
    fn renew_lease(
        &self,
        l: &Arc<Ledger>,
        ledger: &BackgroundLedger,
        scope: Option<&str>,
        r: Reserving,
    ) {
        let (engine, l, ledger) = (self.clone(), l.clone(), ledger.clone());
        let scope = scope.map(String::from);
        tokio::spawn(async move {
            if let Some(lease) = engine
                .reserve_lease(&l, &ledger, scope.as_deref(), r.size())
                .await
            {
                r.opened(lease, 0.0);
            }
        });
    }

    /// Reserve a lease of `size` against the budget for `scope` (see [`super::lease`]):
    /// `None` when the caps refuse it or the ledger cannot (the run then reserves its
    /// own bound, and hears why if that fails too).
    async fn reserve_lease(
        &self,
        l: &Ledger,
        ledger: &BackgroundLedger,
        scope: Option<&str>,
        size: f64,
    ) -> Option<Arc<Lease>> {
        let id = self.next_run_id().replacen("run-", "lease-", 1);
        let projection = Projection {
            targets: vec![budget::TargetProjection {
                target: "lease".into(),
                provider: String::new(),
                model: String::new(),
                input_tokens: 0,
                input_exact: true,
                max_output_tokens: None,
                bound_usd: Some(size),
                price_ref: None,
            }],
        };
        let note = RunNote {
            run_id: &id,
            session_id: None,
            budget_session: scope,
            trace_id: None,
            targets: &[],
            projected_usd: Some(size),
            prompt: "",
        };
        let budget = self.budget();
        let gate = Gate {
            budget: &budget,
            projection: &projection,
        };
        match l.begin_run_async(&note, gate).await {
            Ok(Ok(())) => Some(Arc::new(Lease::new(id, ledger.clone()))),
            Ok(Err(_)) | Err(_) => None,
        }
    }

    /// Rows waiting in the local spool for a shared ledger's database (0 for SQLite,
    /// and while the ledger is opening).
    pub fn ledger_backlog(&self) -> u64 {
        match self.books() {
            Books::On { ledger } => match ledger.ready() {
                Some(Ok(l)) => l.backlog(),
                _ => 0,
            },
            _ => 0,
        }
    }

    /// Why a shared ledger's database is known to be away (rows go to the local spool
    /// without a budget; with one, requests are refused): `None` when it is reachable,
    /// for SQLite, and while the ledger is opening.
    pub fn ledger_away(&self) -> Option<String> {
        match self.books() {
            Books::On { ledger } => match ledger.ready() {
                Some(Ok(l)) => l.away(),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether sending `groups` (requests and their targets) now would cross a cap,
    /// checked as [`Engine::start`] checks it (the same names, the same projection,
    /// the ledger's spend so far in `session`); nothing is reserved or sent. For a
    /// face that asks the user before sending; [`Engine::start`] still holds the cap.
    /// Blocking (reads the ledger and may load a tokenizer): call it off the UI thread.
    pub fn check_budget(
        &self,
        groups: &[(ChatRequest, Vec<String>)],
        session: Option<&str>,
    ) -> Result<(), Refusal> {
        use super::budget::SpendLedger as _;
        let budget = self.budget();
        if !budget.is_set() {
            return Ok(());
        }
        let mut p = Projection::default();
        for (req, targets) in groups {
            let one = self.preview(req, targets).map_err(Refusal::Target)?;
            p.targets.extend(one.targets);
        }
        let spend = match self.books() {
            Books::Off => {
                return Err(Refusal::Target(EngineError::Config {
                    message: "a budget is set but the ledger is off, so spending cannot be tracked"
                        .into(),
                }))
            }
            Books::Unusable(problem) => return Err(Refusal::Ledger(problem.clone())),
            Books::On { ledger } => ledger
                .spend(session)
                .map_err(|e| Refusal::Ledger(e.into()))?,
        };
        budget.check(spend, &p).map_err(Refusal::Budget)
    }

    /// Whether `target` can take `request`, checked as [`Engine::start`] checks it
    /// (aliases, tiers, `cheapest:`, `allowed_models`, capabilities such as images),
    /// nothing reserved or sent: so a face can name the targets it must leave out
    /// of a run before sending it to the others.
    pub fn check_target(&self, request: &ChatRequest, target: &str) -> Result<(), EngineError> {
        let t = select::expand_targets(self, &[target.to_string()], request)?;
        for r in self.check_targets(&t)? {
            super::capability::check(self.registry(), self.pricing(), &r, request)?;
        }
        Ok(())
    }

    /// The bound [`Engine::start`] would reserve for `request` to `targets`, the names
    /// resolved the same way (aliases, tiers, `cheapest:`) but labelled as given. For a
    /// face's preview; nothing is reserved or sent. Loads a BPE vocabulary on first
    /// use: call it off the UI thread.
    pub fn preview(
        &self,
        request: &ChatRequest,
        targets: &[String],
    ) -> Result<Projection, EngineError> {
        let expanded = select::expand_targets(self, targets, request)?;
        let mut p = budget::project(self, request, &expanded)?;
        for (t, name) in p.targets.iter_mut().zip(targets) {
            t.target = name.clone();
        }
        Ok(p)
    }

    /// Check the ledger now (open, known schema, writable) so a face can refuse before
    /// reading input; `Ok` when the ledger is off by choice.
    pub async fn check_ledger(&self) -> Result<(), LedgerProblem> {
        let Books::On { ledger } = self.books().clone() else {
            return match self.books() {
                Books::Unusable(p) => Err(p.clone()),
                _ => Ok(()),
            };
        };
        tokio::task::spawn_blocking(move || {
            let l = ledger.wait()?;
            l.check_writable().map_err(LedgerProblem::from)
        })
        .await
        .unwrap_or_else(|e| {
            Err(LedgerProblem {
                place: None,
                reason: format!("the check failed: {e}"),
                fix: "retry".into(),
            })
        })
    }
}
