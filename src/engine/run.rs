//! The engine's front door: fan one request out to several targets, one
//! task per target, every event tagged with its target index on one
//! bounded channel. Retries, fallbacks, cost and the ledger happen here,
//! before a face is told a request finished; the per-provider breaker and
//! limits of [`routing`](super::routing) gate every attempt.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::budget::Budget;
use super::cache::{self, CachedAnswer, ResponseCache};
use super::cost::Pricing;
use super::error::EngineError;
use super::event::{Accumulator, Completion, Delta, FinishReason, StreamEvent};
use super::front::{Books, LedgerHealth, Settle};
use super::lease::Leases;
use super::ledger::{LedgerSink, RequestMeta};
use super::provider::http::{Attempt, AttemptOptions, CallContext, LazyClient, PolledWith};
use super::registry::{Registry, Resolved};
use super::request::ChatRequest;
use super::routing::{estimate_tokens, BreakerState, Route, Router};

pub use super::routing::ProviderPolicy;

/// Engine settings.
#[derive(Clone, Default)]
pub struct EngineConfig {
    /// Providers, aliases, known models.
    pub registry: Registry,
    /// Policy per provider name; missing ones use the default.
    pub policies: HashMap<String, ProviderPolicy>,
    /// Fallback chains: target -> targets to try in order when it fails before its first token.
    pub fallbacks: HashMap<String, Vec<String>>,
    /// Prices.
    pub pricing: Pricing,
    /// Connect timeout of the shared HTTP client.
    pub connect_timeout: Option<Duration>,
}

/// Options of one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stream the answers (true) or ask for whole responses.
    pub stream: bool,
    /// Session id for the ledger.
    pub session_id: Option<String>,
    /// W3C trace id (32 hex digits); one is made up when absent.
    pub trace_id: Option<String>,
    /// Calling agent, for the ledger.
    pub source_agent: Option<String>,
    /// Use the configured fallback chains.
    pub fallbacks: bool,
    /// Use the response cache: None follows the configured default.
    pub cache: Option<bool>,
    /// The span id upstream requests name as their parent in `traceparent`
    /// (16 hex digits). `None`: each target makes one of its own (the id of its
    /// call span, kept in [`Completion::span_id`]). A gateway that exports no
    /// spans of its own passes its caller's span here, so the provider's spans
    /// hang under the caller's.
    pub upstream_parent: Option<String>,
    /// The sampled flag upstream `traceparent`s carry: a gateway follows its
    /// caller's (W3C: a span whose parent is not sampled is not sampled either).
    pub upstream_sampled: bool,
    /// The W3C `tracestate` passed upstream (the caller's, at most 512 bytes).
    pub upstream_tracestate: Option<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            stream: true,
            session_id: None,
            trace_id: None,
            source_agent: None,
            fallbacks: true,
            cache: None,
            upstream_parent: None,
            upstream_sampled: true,
            upstream_tracestate: None,
        }
    }
}

/// An event of one target of a run. Several runs may share one channel
/// ([`StartOptions::events`](super::front::StartOptions)): the run id tells them apart.
#[derive(Debug, Clone)]
pub struct TargetEvent {
    /// The run's id ([`RunHandle::run_id`]).
    pub run_id: Arc<str>,
    /// Index into the run's targets.
    pub target: usize,
    /// The event.
    pub event: StreamEvent,
}

/// A run in flight. Dropping it cancels nothing by itself; call [`RunHandle::cancel`].
#[derive(Debug)]
pub struct RunHandle {
    /// Run id.
    pub run_id: String,
    /// Trace id shared by every request of the run.
    pub trace_id: String,
    /// Targets as requested.
    pub targets: Vec<String>,
    /// The events of every target (read through [`RunHandle::recv`]); closes
    /// when all targets are done. None when they go to the caller's channel
    /// ([`StartOptions::events`](super::front::StartOptions)) or the run is inline.
    events: Option<mpsc::Receiver<TargetEvent>>,
    cancel: CancellationToken,
    per_target: Vec<CancellationToken>,
    /// A target run on the consumer's task (see `inline`).
    inline: Option<Inline>,
}

/// An inline target: its events, and its work until that is done.
#[derive(Debug)]
struct Inline {
    queue: Arc<Local>,
    work: Option<Driver>,
}

/// The events of an inline target. Its work and its reader are one task, so
/// a plain queue does what the run's channel would, without the channel's
/// block of 32 slots (about 4 KB) allocated for every run.
#[derive(Debug, Default)]
struct Local {
    queue: std::sync::Mutex<std::collections::VecDeque<TargetEvent>>,
    /// Events queued: the reader looks here before it takes the lock (it finds
    /// the queue empty about as often as not).
    len: std::sync::atomic::AtomicUsize,
    /// The reader is gone: every further event is refused, as a closed channel's.
    closed: std::sync::atomic::AtomicBool,
}

/// Events an inline target may have waiting before its work pauses (its
/// reader polls the work again once the queue is empty), as a channel's bound.
const LOCAL_CAP: usize = 1024;

impl Local {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<TargetEvent>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pop(&self) -> Option<TargetEvent> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut q = self.lock();
        let ev = q.pop_front();
        self.len.store(q.len(), Ordering::Release);
        ev
    }

    fn clear(&self) {
        let mut q = self.lock();
        q.clear();
        self.len.store(0, Ordering::Release);
    }

    /// Queue `ev`; `false` once the reader is gone. Pending while the queue is
    /// full: only the reader polls this work, and it does so again only after
    /// it has taken everything queued, so no waker is needed.
    fn push(&self, ev: &mut Option<TargetEvent>) -> std::task::Poll<bool> {
        use std::task::Poll;
        if self.closed.load(Ordering::Acquire) {
            return Poll::Ready(false);
        }
        let mut q = self.lock();
        if q.len() >= LOCAL_CAP {
            return Poll::Pending;
        }
        if let Some(ev) = ev.take() {
            q.push_back(ev);
            self.len.store(q.len(), Ordering::Release);
        }
        Poll::Ready(true)
    }
}

/// A run's cancellation waiter, polled with a waker of its own that marks it
/// fired before it wakes the task. Until it fires, the run is not cancelled:
/// tokio-util's `is_cancelled` takes the token's lock, which per relayed chunk
/// was ~2% of `serve`'s instructions (issue #14).
#[derive(Default)]
struct CancelWatch {
    flag: Arc<CancelFlag>,
    /// The waiter was polled with `flag`'s waker (and stays registered).
    armed: bool,
    /// The task waker `flag` wakes.
    task: PolledWith,
}

#[derive(Default)]
struct CancelFlag {
    fired: std::sync::atomic::AtomicBool,
    task: std::sync::Mutex<Option<std::task::Waker>>,
}

impl std::task::Wake for CancelFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(w) = task {
            w.wake();
        }
    }
}

impl CancelWatch {
    /// Whether the waiter is known not to have fired (so the run is not cancelled).
    fn quiet(&self) -> bool {
        self.armed && !self.flag.fired.load(Ordering::Acquire)
    }

    /// Whether the run is cancelled, the waiter left to wake the task in
    /// `cx` when it is.
    fn poll(
        &mut self,
        stop: std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
        cx: &mut std::task::Context<'_>,
    ) -> bool {
        use std::future::Future;
        if !self.task.holds(cx) {
            *self.flag.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
        }
        if self.quiet() {
            return false;
        }
        // Not polled yet, or woken: poll the waiter (a spurious wake re-arms it).
        self.flag.fired.store(false, Ordering::Release);
        let waker = std::task::Waker::from(self.flag.clone());
        self.armed = true;
        stop.poll(&mut std::task::Context::from_waker(&waker))
            .is_ready()
    }
}

/// Pending once, without a wake-up: for an inline run with events queued,
/// whose reader polls it again once it has taken them.
async fn pause_once() {
    let mut paused = false;
    std::future::poll_fn(|_| {
        if paused {
            std::task::Poll::Ready(())
        } else {
            paused = true;
            std::task::Poll::Pending
        }
    })
    .await
}

/// The future of a target driven by the task that reads its events.
struct Driver(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>);

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Driver")
    }
}

impl Drop for RunHandle {
    /// An inline target whose consumer goes away early goes on in a task of
    /// its own, as a spawned one would: it still records itself (as
    /// cancelled, when the consumer cancelled it) and settles its budget.
    fn drop(&mut self) {
        let Some(inline) = &mut self.inline else {
            return;
        };
        // Before the work moves to its own task: whatever it sends from now
        // on is refused, as on a channel whose reader is gone.
        inline.queue.closed.store(true, Ordering::Release);
        inline.queue.clear();
        if let Some(d) = inline.work.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(d.0);
                }
                Err(_) => tracing::error!(
                    run = %self.run_id,
                    "a run was dropped outside a runtime before it finished; it is not recorded"
                ),
            }
        }
    }
}

impl RunHandle {
    /// The next event of any target; `None` when every target is done.
    pub async fn recv(&mut self) -> Option<TargetEvent> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// Poll for the next event. An inline target's work is polled only when
    /// nothing it sent is waiting, so a burst of queued events costs one poll
    /// of it; its own wakers (the upstream's socket, timers) wake the caller.
    pub fn poll_event(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<TargetEvent>> {
        use std::task::Poll;
        let Some(inline) = &mut self.inline else {
            return match &mut self.events {
                Some(rx) => rx.poll_recv(cx),
                None => Poll::Ready(None),
            };
        };
        if let Some(ev) = inline.queue.pop() {
            return Poll::Ready(Some(ev));
        }
        let Some(d) = inline.work.as_mut() else {
            // The work is done and everything it sent was taken.
            return Poll::Ready(None);
        };
        if d.0.as_mut().poll(cx).is_ready() {
            inline.work = None;
            return Poll::Ready(inline.queue.pop());
        }
        inline
            .queue
            .pop()
            .map_or(Poll::Pending, |ev| Poll::Ready(Some(ev)))
    }

    /// Whether events are waiting to be taken without any more work (an inline
    /// target's queue, or the run's channel).
    pub fn has_queued(&self) -> bool {
        match (&self.inline, &self.events) {
            (Some(inline), _) => inline.queue.len.load(Ordering::Acquire) > 0,
            (None, Some(rx)) => !rx.is_empty(),
            (None, None) => false,
        }
    }

    /// Cancel every target: their HTTP streams are dropped at once.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Cancel one target.
    pub fn cancel_target(&self, i: usize) {
        if let Some(t) = self.per_target.get(i) {
            t.cancel();
        }
    }

    /// A token that cancels the whole run when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Wait for every target; the final completion of each, in target order.
    pub async fn collect(mut self) -> Vec<Completion> {
        let mut out: Vec<Option<Completion>> = vec![None; self.targets.len()];
        while let Some(ev) = self.recv().await {
            match ev.event {
                StreamEvent::Finished(c) | StreamEvent::Failed(c) => out[ev.target] = Some(*c),
                _ => {}
            }
        }
        out.into_iter()
            .zip(&self.targets)
            .map(|(c, t)| {
                c.unwrap_or_else(|| Completion {
                    model: t.clone(),
                    finish_reason: FinishReason::Error,
                    error: Some(EngineError::Cancelled),
                    ..Default::default()
                })
            })
            .collect()
    }
}

struct Inner {
    http: LazyClient,
    /// Clients of providers with their own connect timeout.
    clients: HashMap<String, LazyClient>,
    router: Arc<Router>,
    cfg: EngineConfig,
    ledger: Option<Arc<dyn LedgerSink>>,
    cache: Option<Arc<ResponseCache>>,
    seq: AtomicU64,
    books: Books,
    budget: Budget,
    health: Arc<LedgerHealth>,
    /// Budget leases of this engine's books (see `engine::lease`).
    leases: Arc<Leases>,
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("providers", &self.inner.cfg.registry.providers().count())
            .finish()
    }
}

impl Engine {
    /// Build an engine. Its HTTP clients are built on first use (see [`LazyClient`]).
    pub fn new(cfg: EngineConfig) -> Result<Engine, EngineError> {
        let connect = cfg.connect_timeout.unwrap_or(Duration::from_secs(10));
        let http = LazyClient::new(connect);
        let mut clients = HashMap::new();
        for (name, p) in &cfg.policies {
            if let Some(c) = p.connect_timeout.filter(|c| *c != connect) {
                clients.insert(name.clone(), LazyClient::new(c));
            }
        }
        Ok(Engine {
            inner: Arc::new(Inner {
                http,
                clients,
                router: Arc::new(Router::new(cfg.policies.clone())),
                cfg,
                ledger: None,
                cache: None,
                seq: AtomicU64::new(0),
                books: Books::Off,
                budget: Budget::default(),
                health: Arc::default(),
                leases: Arc::default(),
            }),
        })
    }

    /// This engine's state, taken out (or copied when the engine is shared:
    /// the router's state stays shared either way).
    fn into_inner(self) -> Inner {
        Arc::try_unwrap(self.inner).unwrap_or_else(|arc| Inner {
            http: arc.http.clone(),
            clients: arc.clients.clone(),
            router: arc.router.clone(),
            cfg: arc.cfg.clone(),
            ledger: arc.ledger.clone(),
            cache: arc.cache.clone(),
            seq: AtomicU64::new(arc.seq.load(Ordering::Relaxed)),
            books: arc.books.clone(),
            budget: arc.budget,
            health: arc.health.clone(),
            leases: arc.leases.clone(),
        })
    }

    /// Attach a ledger; every finished request is recorded there before the face hears of it.
    pub fn with_ledger(self, ledger: Arc<dyn LedgerSink>) -> Engine {
        let mut inner = self.into_inner();
        inner.ledger = Some(ledger);
        Engine {
            inner: Arc::new(inner),
        }
    }

    /// Attach the response cache; runs use it as [`RunOptions::cache`] and its settings say.
    pub fn with_cache(self, cache: Arc<ResponseCache>) -> Engine {
        let mut inner = self.into_inner();
        inner.cache = Some(cache);
        Engine {
            inner: Arc::new(inner),
        }
    }

    /// Attach the books the front door keeps ([`Engine::start`]) and the caps it holds
    /// runs to.
    pub fn with_books(self, books: Books, budget: Budget) -> Engine {
        let mut inner = self.into_inner();
        inner.books = books;
        inner.budget = budget;
        inner.leases = Arc::default();
        Engine {
            inner: Arc::new(inner),
        }
    }

    /// The budget leases of these books.
    pub(crate) fn leases(&self) -> &Arc<Leases> {
        &self.inner.leases
    }

    /// Where the books are kept.
    pub fn books(&self) -> &Books {
        &self.inner.books
    }

    /// The spending caps.
    pub fn budget(&self) -> Budget {
        self.inner.budget
    }

    /// Failed ledger writes since start.
    pub fn ledger_health(&self) -> &LedgerHealth {
        &self.inner.health
    }

    /// Failed ledger writes since start, shared (for handlers that outlive a call).
    pub(crate) fn ledger_health_arc(&self) -> Arc<LedgerHealth> {
        self.inner.health.clone()
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.inner.cfg.registry
    }

    /// The price table.
    pub fn pricing(&self) -> &Pricing {
        &self.inner.cfg.pricing
    }

    /// The routing state of a provider (breaker, limits, policy).
    pub fn route(&self, provider: &str) -> Arc<Route> {
        self.inner.router.route(provider)
    }

    /// The breaker state of a provider, for display.
    pub fn breaker_state(&self, provider: &str) -> BreakerState {
        self.inner.router.route(provider).breaker.state()
    }

    /// Resolve every target before sending anything; the first error wins.
    pub fn check_targets(&self, targets: &[String]) -> Result<Vec<Resolved>, EngineError> {
        targets
            .iter()
            .map(|t| self.inner.cfg.registry.resolve(t))
            .collect()
    }

    /// Start a run with no checks: one task per target. Faces call
    /// [`Engine::start`] instead. Must be called inside a tokio runtime.
    pub fn run(&self, request: ChatRequest, targets: Vec<String>, opts: RunOptions) -> RunHandle {
        let run_id = self.next_run_id();
        let trace_id = self.trace_id_for(&opts);
        self.run_with(request, targets, opts, run_id, trace_id, None, None, false)
    }

    /// A new run id: `run-<ms since 1970, 12 hex digits>-<8 random bytes>-<seq>`. The
    /// time prefix keeps ids in creation order, so a ledger's indexes on run ids take
    /// new runs at their right edge: a commit rewrites one index page for a batch of
    /// runs, where random ids dirtied one page per run (`serve` under 64 connections:
    /// 8.4 file writes per request became 2.6, and 12–15% more requests per second).
    pub(crate) fn next_run_id(&self) -> String {
        let n = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        format!("run-{ms:012x}-{}-{n}", new_id(8))
    }

    pub(crate) fn trace_id_for(&self, opts: &RunOptions) -> String {
        opts.trace_id
            .clone()
            .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .unwrap_or_else(|| new_id(16))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_with(
        &self,
        request: ChatRequest,
        targets: Vec<String>,
        opts: RunOptions,
        run_id: String,
        trace_id: String,
        events: Option<mpsc::Sender<TargetEvent>>,
        settle: Option<Arc<Settle>>,
        inline: bool,
    ) -> RunHandle {
        // Only a run of one target reading its own channel: events sent
        // elsewhere would have no consumer polling the work.
        let inline = inline && targets.len() == 1 && events.is_none();
        // An inline run's events go through a plain queue.
        let queue: Option<Arc<Local>> = inline.then(Arc::default);
        let (sink, rx) = match (events, &queue) {
            (_, Some(q)) => (Sink::Local(q.clone()), None),
            (Some(tx), None) => (Sink::Channel(tx), None),
            (None, None) => {
                let (tx, rx) = mpsc::channel(1024);
                (Sink::Channel(tx), Some(rx))
            }
        };
        let mut work = None;
        let cancel = CancellationToken::new();
        let request = Arc::new(request);
        let run_tag: Arc<str> = Arc::from(run_id.as_str());
        let mut per_target = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            let token = cancel.child_token();
            per_target.push(token.clone());
            let job = TargetJob {
                inner: self.inner.clone(),
                index: i,
                target: t.clone(),
                request: request.clone(),
                opts: opts.clone(),
                run_id: run_id.clone(),
                run_tag: run_tag.clone(),
                traceparent: format!(
                    "00-{trace_id}-{}-{}",
                    opts.upstream_parent
                        .as_deref()
                        .filter(|p| is_span_id(p))
                        .map_or_else(|| new_id(8), str::to_string),
                    if opts.upstream_sampled { "01" } else { "00" }
                ),
                trace_id: trace_id.clone(),
                cancel: token,
                _settle: settle.clone(),
                tx: sink.clone(),
            };
            if inline {
                work = Some(Driver(Box::pin(job.run())));
            } else {
                tokio::spawn(job.run());
            }
        }
        RunHandle {
            run_id,
            trace_id,
            targets,
            events: rx,
            cancel,
            per_target,
            inline: queue.map(|queue| Inline { queue, work }),
        }
    }
}

/// 16 lowercase hex digits, not all zero (a W3C span id).
fn is_span_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

/// Random hex id of `bytes` bytes.
pub fn new_id(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::fill(&mut b[..]);
    hex::encode(b)
}

/// The longest `tracestate` passed on (W3C: vendors may drop a longer one).
const MAX_TRACESTATE: usize = 512;

struct TargetJob {
    inner: Arc<Inner>,
    index: usize,
    target: String,
    request: Arc<ChatRequest>,
    opts: RunOptions,
    run_id: String,
    run_tag: Arc<str>,
    trace_id: String,
    /// This target's `traceparent`: `00-{trace}-{span}-{flags}`, the span being
    /// its call span (the same for every attempt and fallback).
    traceparent: String,
    cancel: CancellationToken,
    /// Dropped before `tx`, so a run's reservation is settled before its channel closes.
    _settle: Option<Arc<Settle>>,
    tx: Sink,
}

/// Where a target's events go.
#[derive(Clone)]
enum Sink {
    /// The run's channel (a spawned target, or several targets).
    Channel(mpsc::Sender<TargetEvent>),
    /// An inline target's queue.
    Local(Arc<Local>),
}

enum Outcome {
    Done(Completion),
    /// Failed; `delivered` says whether any output reached the consumer.
    Failed(Completion, EngineError, bool),
}

impl TargetJob {
    async fn emit(&self, event: StreamEvent) -> bool {
        let ev = TargetEvent {
            run_id: self.run_tag.clone(),
            target: self.index,
            event,
        };
        match &self.tx {
            Sink::Channel(tx) => tx.send(ev).await.is_ok(),
            Sink::Local(l) => {
                let mut ev = Some(ev);
                std::future::poll_fn(|_| l.push(&mut ev)).await
            }
        }
    }

    async fn run(self) {
        let started = Instant::now();
        // Response cache: a hit replays at once and sends nothing.
        if let Some((r, hit)) = self.cache_lookup().await {
            for ev in hit.events() {
                if !self.emit(ev).await {
                    return;
                }
            }
            let elapsed = started.elapsed();
            self.finish(hit.to_completion(), &r, started, 0, Some(elapsed), None)
                .await;
            return;
        }
        let mut chain = vec![self.target.clone()];
        if self.opts.fallbacks {
            // Chains are keyed by `provider/model`; an alias finds its model's chain.
            let fallbacks = &self.inner.cfg.fallbacks;
            let f = fallbacks.get(self.target.trim()).or_else(|| {
                let r = self.inner.cfg.registry.resolve(&self.target).ok()?;
                fallbacks.get(&r.id())
            });
            if let Some(f) = f {
                chain.extend(f.iter().filter(|t| **t != self.target).cloned());
            }
        }
        let mut retries = 0u32;
        let mut last: Option<(Completion, EngineError)> = None;
        let mut resolved_last: Option<Resolved> = None;
        let mut ttft: Option<Duration> = None;
        for (ci, t) in chain.iter().enumerate() {
            let resolved = match self.inner.cfg.registry.resolve(t) {
                Ok(r) => r,
                Err(e) => {
                    last = Some((Completion::default(), e));
                    continue;
                }
            };
            if ci > 0 {
                let reason = last
                    .as_ref()
                    .map(|(_, e)| e.to_string())
                    .unwrap_or_default();
                let from = chain[ci - 1].clone();
                if !self
                    .emit(StreamEvent::FellBack {
                        from,
                        to: t.clone(),
                        reason,
                    })
                    .await
                {
                    return;
                }
            }
            resolved_last = Some(resolved.clone());
            match self
                .run_one(&resolved, started, &mut retries, &mut ttft)
                .await
            {
                Outcome::Done(mut c) => {
                    if ci == 0 {
                        self.cache_store(&resolved, &c).await;
                    }
                    if ci > 0 {
                        c.fell_back_from = Some(self.target.clone());
                    }
                    self.finish(c, &resolved, started, retries, ttft, None)
                        .await;
                    return;
                }
                Outcome::Failed(c, e, delivered) => {
                    let stop = delivered || matches!(e, EngineError::Cancelled);
                    last = Some((c, e));
                    if stop {
                        break;
                    }
                }
            }
        }
        let (c, e) = last.unwrap_or((
            Completion::default(),
            EngineError::Config {
                message: "no target to run".into(),
            },
        ));
        match resolved_last {
            Some(r) => self.finish(c, &r, started, retries, ttft, Some(e)).await,
            None => {
                let mut c = c;
                c.model = self.target.clone();
                c.finish_reason = FinishReason::Error;
                c.latency_ms = ms(started.elapsed());
                c.error = Some(e);
                self.emit(StreamEvent::Failed(Box::new(c))).await;
            }
        }
    }

    /// The request as sent to `r`: the model's configured default
    /// max_tokens applies when the request sets none.
    fn request_for(&self, r: &Resolved) -> Arc<ChatRequest> {
        if self.request.max_tokens.is_none() {
            if let Some(mt) = self
                .inner
                .cfg
                .registry
                .model_meta(&r.spec.name, &r.model)
                .and_then(|m| m.max_tokens)
            {
                let mut req = (*self.request).clone();
                req.max_tokens = Some(mt);
                return Arc::new(req);
            }
        }
        self.request.clone()
    }

    /// Attempts against one resolved target, with retries before the first
    /// token. Each attempt passes the provider's breaker (fail fast while
    /// open) and its concurrency and rate limits (queue while full).
    async fn run_one(
        &self,
        r: &Resolved,
        started: Instant,
        retries: &mut u32,
        ttft: &mut Option<Duration>,
    ) -> Outcome {
        let cancelled = || Outcome::Failed(Completion::default(), EngineError::Cancelled, false);
        if let Err(e) = super::capability::check(
            &self.inner.cfg.registry,
            &self.inner.cfg.pricing,
            r,
            &self.request,
        ) {
            return Outcome::Failed(Completion::default(), e, false);
        }
        let route = self.inner.router.route_for(&r.spec.name, Some(r.spec.kind));
        let policy = &route.policy;
        let request = self.request_for(r);
        let estimate = estimate_tokens(&request);
        let client = match self
            .inner
            .clients
            .get(&r.spec.name)
            .unwrap_or(&self.inner.http)
            .lease(&r.spec.base_url)
        {
            Ok(c) => c,
            Err(e) => return Outcome::Failed(Completion::default(), e, false),
        };
        // `--timeout` / `total_secs` bounds the whole request: every attempt
        // and every wait between them, counted from the job's start.
        let deadline = policy.timeouts.total.map(|t| (started + t, t));
        let total_timeout = || {
            let after = policy.timeouts.total.unwrap_or_default();
            Outcome::Failed(
                Completion::default(),
                EngineError::Timeout {
                    phase: super::error::TimeoutPhase::Total,
                    after,
                },
                false,
            )
        };
        let opts = AttemptOptions {
            timeouts: policy.timeouts,
            caps: policy.caps,
            deadline,
        };
        let mut attempt_no = 1u32;
        loop {
            let ticket = match route.breaker.acquire() {
                Ok(t) => t,
                Err(_) => {
                    let provider = r.spec.name.clone();
                    self.emit(StreamEvent::BreakerOpen {
                        provider: provider.clone(),
                    })
                    .await;
                    return Outcome::Failed(
                        Completion::default(),
                        EngineError::BreakerOpen { provider },
                        false,
                    );
                }
            };
            let permit = match route.limiter.try_acquire(estimate) {
                Some(p) => p,
                None => {
                    if !self.emit(StreamEvent::Queued).await {
                        return cancelled();
                    }
                    let until = deadline.map(|(d, _)| d);
                    tokio::select! {
                        biased;
                        _ = self.cancel.cancelled() => return cancelled(),
                        p = route.limiter.acquire(estimate) => p,
                        _ = sleep_until_opt(until) => return total_timeout(),
                    }
                }
            };
            if !self
                .emit(StreamEvent::Started {
                    provider: r.spec.name.clone(),
                    model: r.model.clone(),
                    attempt: attempt_no,
                })
                .await
            {
                return cancelled();
            }
            let ctx = CallContext {
                traceparent: Some(self.traceparent.clone()),
                tracestate: self
                    .opts
                    .upstream_tracestate
                    .clone()
                    .filter(|t| !t.is_empty() && t.len() <= MAX_TRACESTATE),
                request_id: Some(format!("{}-{}-{attempt_no}", self.run_id, self.index)),
            };
            let mut acc = Accumulator::default();
            let mut delivered = false;
            // The running output count last sent in a Usage event.
            let mut shown_out = 0u64;
            let result: Result<(), EngineError> = async {
                // One cancellation waiter for the whole attempt, not one per chunk.
                let mut stop = std::pin::pin!(self.cancel.cancelled());
                let mut a = tokio::select! {
                    biased;
                    _ = &mut stop => return Err(EngineError::Cancelled),
                    a = Attempt::start_leased(&client, &r.spec, &r.model, &request, self.opts.stream, &opts, &ctx) => a?,
                };
                let mut watch = CancelWatch::default();
                loop {
                    // The next delta first, then cancellation, only while the upstream
                    // has nothing ready. Polling the waiter takes two locks (~800
                    // instructions, per chunk) and asking the token one; the waiter
                    // is polled with a waker that marks it fired, so until it does
                    // an atomic load says the run goes on.
                    use std::future::Future;
                    use std::task::Poll;
                    let next = {
                        let mut d = std::pin::pin!(a.next());
                        std::future::poll_fn(|cx| {
                            if let Poll::Ready(d) = d.as_mut().poll(cx) {
                                // A cancelled run emits nothing more.
                                let cancelled = !watch.quiet() && self.cancel.is_cancelled();
                                return Poll::Ready((!cancelled).then_some(d));
                            }
                            if watch.poll(stop.as_mut(), cx) {
                                Poll::Ready(None)
                            } else {
                                Poll::Pending
                            }
                        })
                        .await
                    };
                    let Some(next) = next else {
                        return Err(EngineError::Cancelled);
                    };
                    match next {
                        None => return Ok(()),
                        Some(Err(e)) => return Err(e),
                        Some(Ok(d)) => {
                            acc.push(&d);
                            let content = is_content(&d);
                            if content {
                                delivered = true;
                                if ttft.is_none() {
                                    *ttft = Some(started.elapsed());
                                }
                            }
                            let ev = match d {
                                // Usage carries the running output count.
                                Delta::Usage(_) => {
                                    shown_out = acc.running_output_tokens();
                                    Some(StreamEvent::Usage(acc.running_usage()))
                                }
                                d => StreamEvent::from_delta_owned(d),
                            };
                            let emitted = ev.is_some();
                            if let Some(ev) = ev {
                                if !self.emit(ev).await {
                                    return Err(EngineError::Cancelled);
                                }
                            }
                            // Once the provider has reported usage, keep the
                            // figure moving as output arrives (every few tokens).
                            if content && acc.completion.usage_reported {
                                let now = acc.running_output_tokens();
                                if now >= shown_out + 1 + shown_out / 32 {
                                    shown_out = now;
                                    if !self.emit(StreamEvent::Usage(acc.running_usage())).await {
                                        return Err(EngineError::Cancelled);
                                    }
                                }
                            }
                            // An inline run pauses once what the upstream sent is
                            // queued: its reader takes the events and polls the run
                            // again when it wants more, so the upstream is not asked
                            // again (and found empty) before the events are relayed.
                            if emitted && !a.has_buffered() {
                                if let Sink::Local(_) = &self.tx {
                                    pause_once().await;
                                }
                            }
                        }
                    }
                }
            }
            .await;
            // The attempt (and its connection) is gone: free the slot.
            drop(permit);
            if acc.completion.usage_reported {
                route
                    .limiter
                    .settle_tokens(estimate, acc.completion.usage.total_tokens());
            }
            match &result {
                Ok(()) => route.limiter.on_success(),
                Err(EngineError::RateLimited { .. }) => route.limiter.on_rate_limited(),
                Err(_) => {}
            }
            ticket.report(result.as_ref().err());
            match result {
                Ok(()) => return Outcome::Done(acc.finish()),
                Err(e) => {
                    // Once output reached the consumer the stream is never
                    // retried or failed over: the partial text is kept, and
                    // its usage is the running figure (estimated).
                    if delivered || matches!(e, EngineError::Cancelled) {
                        return Outcome::Failed(acc.finish_unfinished(), e, delivered);
                    }
                    let jitter: f64 = rand::random();
                    match policy.retry.next_wait(&e, attempt_no + 1, jitter) {
                        None => return Outcome::Failed(acc.finish_unfinished(), e, false),
                        Some((wait, _))
                            if deadline.is_some_and(|(d, _)| Instant::now() + wait >= d) =>
                        {
                            // The wait would outlast the request's total limit:
                            // fail now, with the error that asked for it.
                            return Outcome::Failed(acc.finish_unfinished(), e, false);
                        }
                        Some((wait, reason)) => {
                            attempt_no += 1;
                            *retries += 1;
                            if !self
                                .emit(StreamEvent::Retrying {
                                    attempt: attempt_no,
                                    max_attempts: policy.retry.max_attempts,
                                    wait,
                                    reason,
                                })
                                .await
                            {
                                return cancelled();
                            }
                            tokio::select! {
                                _ = self.cancel.cancelled() => return cancelled(),
                                _ = tokio::time::sleep(wait) => {}
                            }
                        }
                    }
                }
            }
        }
    }

    async fn finish(
        &self,
        mut c: Completion,
        r: &Resolved,
        started: Instant,
        retries: u32,
        ttft: Option<Duration>,
        error: Option<EngineError>,
    ) {
        c.provider = r.spec.name.clone();
        c.model = r.model.clone();
        c.span_id = self.span_id().map(str::to_string);
        // A key split across deltas (a model echoing it) is masked too.
        super::provider::mask::mask_completion(&r.spec, &mut c);
        c.retries = retries;
        c.ttft_ms = ttft.map(ms);
        c.latency_ms = ms(started.elapsed());
        let failed = error.is_some();
        if let Some(e) = error {
            c.finish_reason = if matches!(e, EngineError::Cancelled) {
                FinishReason::Cancelled
            } else {
                FinishReason::Error
            };
            c.error = Some(e);
        }
        if !failed {
            super::validate::judge(&self.request, &mut c);
        }
        super::cost::settle(&self.inner.cfg.pricing, &self.request, &mut c).await;
        if let Some(ledger) = &self.inner.ledger {
            let meta = RequestMeta {
                run_id: self.run_id.clone(),
                session_id: self.opts.session_id.clone(),
                trace_id: Some(self.trace_id.clone()),
                source_agent: self.opts.source_agent.clone(),
                target: self.target.clone(),
                lease_id: self
                    ._settle
                    .as_deref()
                    .and_then(Settle::lease_id)
                    .map(String::from),
                prompt: self.request.last_user_text().to_string(),
                attachments: crate::engine::ledger::AttachmentNote::of_request(&self.request),
            };
            // The run's last target still going (the others dropped their share): its
            // row ends the run's reservation in the same commit.
            let last = self
                ._settle
                .clone()
                .filter(|s| Arc::strong_count(s) == 2 && s.lease_id().is_none());
            let settled = |done: bool| {
                if let (true, Some(s)) = (done, &last) {
                    s.mark_done();
                }
            };
            let res = match ledger.record_async(&meta, &c, last.is_some()) {
                // The ledger's writer thread commits it; nothing blocks here.
                Some(rx) => match rx.await {
                    Ok(r) => r.map(settled).map_err(|e| e.to_string()),
                    Err(_) => Err("the ledger write did not finish".to_string()),
                },
                None => {
                    let (ledger, row, settle) = (ledger.clone(), c.clone(), last.is_some());
                    let res = tokio::task::spawn_blocking(move || {
                        if settle {
                            ledger.record_settling(&meta, &row)
                        } else {
                            ledger.record(&meta, &row).map(|()| false)
                        }
                    })
                    .await;
                    match res {
                        Ok(r) => r.map(settled).map_err(|e| e.to_string()),
                        Err(e) => Err(format!("the ledger write did not finish: {e}")),
                    }
                }
            };
            if let Err(e) = res {
                tracing::error!("ledger write failed: {e}");
                self.inner.health.fail(&e);
                c.not_recorded = Some(e);
            }
        }
        let ev = if failed {
            StreamEvent::Failed(Box::new(c))
        } else {
            StreamEvent::Finished(Box::new(c))
        };
        self.emit(ev).await;
    }
}

impl TargetJob {
    /// The span id this target's upstream requests name as their parent.
    fn span_id(&self) -> Option<&str> {
        self.traceparent.split('-').nth(2)
    }

    fn cache(&self) -> Option<Arc<ResponseCache>> {
        self.inner
            .cache
            .clone()
            .filter(|c| c.enabled_for(self.opts.cache))
    }

    async fn cache_lookup(&self) -> Option<(Resolved, CachedAnswer)> {
        let cache = self.cache()?;
        let r = self.inner.cfg.registry.resolve(&self.target).ok()?;
        let key = cache::key(&r.spec.name, &r.model, &self.request);
        let hit = tokio::task::spawn_blocking(move || cache.get(&key))
            .await
            .ok()?;
        match hit {
            Ok(Some(a)) => Some((r, a)),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("response cache read failed: {e}");
                None
            }
        }
    }

    async fn cache_store(&self, r: &Resolved, c: &Completion) {
        let Some(cache) = self.cache() else { return };
        if !cache::cacheable(c) {
            return;
        }
        let key = cache::key(&r.spec.name, &r.model, &self.request);
        let mut answer = CachedAnswer::from_completion(c);
        answer.provider = r.spec.name.clone();
        answer.model = r.model.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || cache.put(&key, &answer)).await {
            tracing::warn!("response cache write failed: {e}");
        }
    }
}

fn is_content(d: &Delta) -> bool {
    matches!(
        d,
        Delta::Text(_) | Delta::Thinking(_) | Delta::ToolCall { .. } | Delta::Refusal(_)
    )
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;

    fn ev(i: usize) -> Option<TargetEvent> {
        Some(TargetEvent {
            run_id: Arc::from("run"),
            target: i,
            event: StreamEvent::Queued,
        })
    }

    /// A full queue pauses the work (Pending, the event kept) until the reader
    /// takes one; a closed one refuses everything, as a channel would.
    #[test]
    fn an_inline_queue_is_bounded_and_refuses_once_its_reader_is_gone() {
        let l = Local::default();
        for i in 0..LOCAL_CAP {
            assert_eq!(l.push(&mut ev(i)), Poll::Ready(true));
        }
        let mut next = ev(LOCAL_CAP);
        assert_eq!(l.push(&mut next), Poll::Pending);
        assert!(next.is_some(), "a paused event is kept for the next poll");
        assert_eq!(l.pop().map(|e| e.target), Some(0));
        assert_eq!(l.push(&mut next), Poll::Ready(true));
        assert!(next.is_none());
        let order: Vec<usize> = std::iter::from_fn(|| l.pop().map(|e| e.target)).collect();
        assert_eq!(order, (1..=LOCAL_CAP).collect::<Vec<_>>());
        l.closed.store(true, Ordering::Release);
        assert_eq!(l.push(&mut ev(0)), Poll::Ready(false));
        assert!(l.pop().is_none());
    }
}
