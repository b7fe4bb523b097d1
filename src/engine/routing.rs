//! Routing policy per provider: retries with backoff, a circuit breaker,
//! a concurrency limit that shrinks on 429 and recovers (AIMD), and
//! requests/min and tokens/min limits with queueing.
//!
//! Everything here is provider-scoped state that outlives a run: the
//! [`Router`] lives in the engine and hands each attempt the [`Route`] of its
//! provider. The decisions it takes are reported by `run.rs` as
//! [`StreamEvent`](super::event::StreamEvent)s (`Queued`, `Retrying`,
//! `BreakerOpen`), so a face can show why a pane waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::error::EngineError;
use super::provider::http::{ResponseCaps, Timeouts};
use super::provider::ProviderKind;
use super::request::ChatRequest;

/// Lock a mutex, shrugging off poisoning: the state guarded here is plain
/// counters that stay consistent even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------
// Retry

/// Retry policy of a provider.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// First backoff step.
    pub base_delay: Duration,
    /// Longest single wait (a longer Retry-After fails instead of waiting).
    pub max_wait: Duration,
    /// Fail at once on 429 instead of waiting (free tiers).
    pub fail_fast_on_429: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(500),
            max_wait: Duration::from_secs(60),
            fail_fast_on_429: false,
        }
    }
}

impl RetryPolicy {
    /// How long to wait before attempt `next_attempt` (2 = first retry) after
    /// `err`, or None when no retry should happen. Exponential backoff with
    /// full jitter; a provider's Retry-After wins.
    pub fn next_wait(
        &self,
        err: &EngineError,
        next_attempt: u32,
        jitter: f64,
    ) -> Option<(Duration, String)> {
        if next_attempt > self.max_attempts || !err.is_retryable() {
            return None;
        }
        if self.fail_fast_on_429 && matches!(err, EngineError::RateLimited { .. }) {
            return None;
        }
        let status = err
            .status()
            .map(|s| s.to_string())
            .unwrap_or_else(|| err.kind().to_string());
        if let Some(ra) = err.retry_after() {
            if ra > self.max_wait {
                return None;
            }
            return Some((ra, format!("{status}, Retry-After")));
        }
        let exp = self
            .base_delay
            .saturating_mul(1u32 << (next_attempt.saturating_sub(2)).min(16));
        let cap = exp.min(self.max_wait);
        let wait = cap.mul_f64(jitter.clamp(0.0, 1.0));
        Some((wait, format!("{status}, backoff")))
    }
}

// ---------------------------------------------------------------------------
// Policy

/// Circuit-breaker settings of a provider.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerPolicy {
    /// Consecutive failed attempts that open the breaker; 0 turns it off.
    pub failure_threshold: u32,
    /// How long it stays open before one probe is let through.
    pub cooldown: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failure_threshold: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

/// Concurrency and rate limits of a provider. `None` = no limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Requests in flight at once (the AIMD ceiling).
    pub max_concurrency: Option<u32>,
    /// Requests started per minute.
    pub requests_per_minute: Option<u32>,
    /// Estimated tokens (prompt chars / 4 + max_tokens) per minute.
    pub tokens_per_minute: Option<u64>,
}

/// Per-provider settings the engine applies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderPolicy {
    /// Retries.
    pub retry: RetryPolicy,
    /// First-token, idle and total timeouts of each attempt.
    pub timeouts: Timeouts,
    /// TCP/TLS connect timeout; `None` uses the engine's shared client.
    pub connect_timeout: Option<Duration>,
    /// Circuit breaker.
    pub breaker: BreakerPolicy,
    /// Concurrency and rate limits.
    pub limits: Limits,
    /// What one request may take from the upstream (bytes, tokens).
    pub caps: ResponseCaps,
}

/// Whether a failed attempt says the provider itself is unhealthy, and so
/// counts towards opening its breaker. Client errors (400/401/404, context
/// length) prove the server answered; 429 is handled by the concurrency
/// limiter and retries; a cancellation says nothing.
pub fn counts_against_breaker(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::Server { .. }
            | EngineError::Overloaded { .. }
            | EngineError::Timeout { .. }
            | EngineError::Network { .. }
            | EngineError::InStream { .. }
    )
}

/// Rough token cost of a request for tokens/min limiting: prompt characters
/// divided by four, plus the output allowance.
pub fn estimate_tokens(req: &ChatRequest) -> u64 {
    let chars: usize = req
        .messages
        .iter()
        .map(|m| {
            m.content.chars().count()
                + m.tool_calls
                    .iter()
                    .map(|t| t.arguments.to_string().len() + t.name.len())
                    .sum::<usize>()
        })
        .sum();
    let tools: usize = req
        .tools
        .iter()
        .map(|t| t.name.len() + t.description.len() + t.parameters.to_string().len())
        .sum();
    ((chars + tools) as u64).div_ceil(4) + u64::from(req.max_tokens.unwrap_or(0))
}

// ---------------------------------------------------------------------------
// Circuit breaker

/// What a face may show about a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Failing fast until the cooldown ends.
    Open,
    /// Cooldown over: one probe decides.
    HalfOpen,
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct BreakerInner {
    failures: u32,
    phase: Phase,
}

/// A per-provider circuit breaker: opens after N consecutive failed
/// attempts, fails fast while open, and after the cooldown lets exactly one
/// probe through; the probe's outcome closes or re-opens it.
#[derive(Debug)]
pub struct CircuitBreaker {
    policy: BreakerPolicy,
    inner: Mutex<BreakerInner>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy) -> Arc<CircuitBreaker> {
        Arc::new(CircuitBreaker {
            policy,
            inner: Mutex::new(BreakerInner {
                failures: 0,
                phase: Phase::Closed,
            }),
        })
    }

    /// Ask to send an attempt. `Err(remaining)` means fail fast: the breaker
    /// is open (or half-open with its probe already out) for about
    /// `remaining` more.
    pub fn acquire(self: &Arc<Self>) -> Result<BreakerTicket, Duration> {
        self.acquire_at(Instant::now())
    }

    /// [`acquire`](Self::acquire) at a given time (for tests).
    pub fn acquire_at(self: &Arc<Self>, now: Instant) -> Result<BreakerTicket, Duration> {
        let mut s = lock(&self.inner);
        let probe = match s.phase {
            Phase::Closed => false,
            Phase::Open { until } if now < until => return Err(until - now),
            Phase::Open { .. } => {
                s.phase = Phase::HalfOpen { probing: true };
                true
            }
            Phase::HalfOpen { probing: true } => return Err(Duration::ZERO),
            Phase::HalfOpen { probing: false } => {
                s.phase = Phase::HalfOpen { probing: true };
                true
            }
        };
        Ok(BreakerTicket {
            breaker: self.clone(),
            probe,
            done: false,
        })
    }

    /// Current state.
    pub fn state(&self) -> BreakerState {
        self.state_at(Instant::now())
    }

    /// [`state`](Self::state) at a given time (for tests).
    pub fn state_at(&self, now: Instant) -> BreakerState {
        match lock(&self.inner).phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if now < until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn settle(&self, probe: bool, outcome: Option<bool>, now: Instant) {
        let mut s = lock(&self.inner);
        match outcome {
            Some(true) => {
                s.failures = 0;
                s.phase = Phase::Closed;
            }
            Some(false) => {
                s.failures = s.failures.saturating_add(1);
                let trip = probe
                    || matches!(s.phase, Phase::HalfOpen { .. })
                    || (self.policy.failure_threshold > 0
                        && s.failures >= self.policy.failure_threshold);
                if trip && self.policy.failure_threshold > 0 {
                    s.phase = Phase::Open {
                        until: now + self.policy.cooldown,
                    };
                }
            }
            None => {
                if probe {
                    if let Phase::HalfOpen { probing } = &mut s.phase {
                        *probing = false;
                    }
                }
            }
        }
    }
}

/// Permission for one attempt; report its outcome with [`success`],
/// [`failure`] or [`neutral`]. Dropped without a verdict (cancelled), it
/// counts as neutral so a half-open breaker can send another probe.
///
/// [`success`]: BreakerTicket::success
/// [`failure`]: BreakerTicket::failure
/// [`neutral`]: BreakerTicket::neutral
#[derive(Debug)]
pub struct BreakerTicket {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
    done: bool,
}

impl BreakerTicket {
    /// Whether this attempt is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
    /// The provider answered properly.
    pub fn success(mut self) {
        self.done = true;
        self.breaker.settle(self.probe, Some(true), Instant::now());
    }
    /// The provider failed (see [`counts_against_breaker`]).
    pub fn failure(mut self) {
        self.failure_at(Instant::now());
    }
    /// [`failure`](Self::failure) at a given time (for tests).
    pub fn failure_at(&mut self, now: Instant) {
        self.done = true;
        self.breaker.settle(self.probe, Some(false), now);
    }
    /// The outcome says nothing about the provider's health.
    pub fn neutral(mut self) {
        self.done = true;
        self.breaker.settle(self.probe, None, Instant::now());
    }
    /// Report by error kind: `None` = success.
    pub fn report(self, err: Option<&EngineError>) {
        match err {
            None => self.success(),
            Some(e) if counts_against_breaker(e) => self.failure(),
            Some(_) => self.neutral(),
        }
    }
}

impl Drop for BreakerTicket {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.settle(self.probe, None, Instant::now());
        }
    }
}

// ---------------------------------------------------------------------------
// Concurrency (AIMD) and rate limits

#[derive(Debug)]
struct ConcState {
    max: u32,
    limit: u32,
    /// Permits to swallow when they come back (the limit shrank while they were out).
    debt: u32,
}

#[derive(Debug)]
struct Concurrency {
    sem: Arc<Semaphore>,
    st: Mutex<ConcState>,
}

/// A token bucket that refills continuously; `capacity` per minute.
#[derive(Debug, Clone)]
struct Bucket {
    capacity: f64,
    level: f64,
    per_sec: f64,
    last: Instant,
}

impl Bucket {
    fn per_minute(capacity: f64, now: Instant) -> Bucket {
        Bucket {
            capacity,
            level: capacity,
            per_sec: capacity / 60.0,
            last: now,
        }
    }
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.level = (self.level + dt * self.per_sec).min(self.capacity);
        self.last = now;
    }
    /// Wait until `need` fits. A need above the capacity waits for a full
    /// bucket and then drives the level negative, so it is not starved.
    fn wait_for(&self, need: f64) -> Duration {
        let need = need.min(self.capacity);
        if self.level >= need || self.per_sec <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.level) / self.per_sec)
        }
    }
}

#[derive(Debug)]
struct Rate {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

impl Rate {
    fn take_at(&mut self, now: Instant, tokens: u64) -> Result<(), Duration> {
        let mut wait = Duration::ZERO;
        if let Some(b) = &mut self.requests {
            b.refill(now);
            wait = wait.max(b.wait_for(1.0));
        }
        if let Some(b) = &mut self.tokens {
            b.refill(now);
            wait = wait.max(b.wait_for(tokens as f64));
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        if let Some(b) = &mut self.requests {
            b.level -= 1.0;
        }
        if let Some(b) = &mut self.tokens {
            b.level -= tokens as f64;
        }
        Ok(())
    }
}

/// A provider's concurrency and rate limiter.
///
/// Concurrency is a semaphore whose size follows AIMD: a 429 halves the
/// allowed number of requests in flight (never below one), every success
/// adds one back, up to `max_concurrency`. Requests/min and tokens/min are
/// token buckets that refill continuously; a request that does not fit waits.
#[derive(Debug)]
pub struct Limiter {
    conc: Option<Arc<Concurrency>>,
    rate: Option<Mutex<Rate>>,
}

/// A slot for one attempt; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    conc: Option<(OwnedSemaphorePermit, Arc<Concurrency>)>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some((p, c)) = self.conc.take() {
            let mut st = lock(&c.st);
            if st.debt > 0 {
                st.debt -= 1;
                p.forget();
            } else {
                drop(p);
            }
        }
    }
}

impl Limiter {
    /// A limiter for `limits` (no-op where a limit is absent).
    pub fn new(limits: &Limits) -> Arc<Limiter> {
        Self::new_at(limits, Instant::now())
    }

    fn new_at(limits: &Limits, now: Instant) -> Arc<Limiter> {
        let conc = limits.max_concurrency.map(|n| {
            let n = n.max(1);
            Arc::new(Concurrency {
                sem: Arc::new(Semaphore::new(n as usize)),
                st: Mutex::new(ConcState {
                    max: n,
                    limit: n,
                    debt: 0,
                }),
            })
        });
        let requests = limits
            .requests_per_minute
            .map(|n| Bucket::per_minute(f64::from(n.max(1)), now));
        let tokens = limits
            .tokens_per_minute
            .map(|n| Bucket::per_minute(n.max(1) as f64, now));
        let rate =
            (requests.is_some() || tokens.is_some()).then(|| Mutex::new(Rate { requests, tokens }));
        Arc::new(Limiter { conc, rate })
    }

    /// A slot now, or None when the caller would have to wait (then say
    /// "queued" and call [`acquire`](Self::acquire)).
    pub fn try_acquire(&self, tokens: u64) -> Option<Permit> {
        let conc = match &self.conc {
            Some(c) => Some((c.sem.clone().try_acquire_owned().ok()?, c.clone())),
            None => None,
        };
        let permit = Permit { conc };
        if let Some(r) = &self.rate {
            lock(r).take_at(Instant::now(), tokens).ok()?;
        }
        Some(permit)
    }

    /// Wait for a slot: first a concurrency permit, then room in the
    /// per-minute buckets (so the rate is charged when the request is sent).
    pub async fn acquire(&self, tokens: u64) -> Permit {
        let conc = match &self.conc {
            Some(c) => match c.sem.clone().acquire_owned().await {
                Ok(p) => Some((p, c.clone())),
                // The semaphore is never closed.
                Err(_) => None,
            },
            None => None,
        };
        let permit = Permit { conc };
        if let Some(r) = &self.rate {
            loop {
                let res = lock(r).take_at(Instant::now(), tokens);
                match res {
                    Ok(()) => break,
                    Err(wait) => tokio::time::sleep(wait).await,
                }
            }
        }
        permit
    }

    /// A 429 came back: halve the allowed concurrency (multiplicative decrease).
    pub fn on_rate_limited(&self) {
        let Some(c) = &self.conc else { return };
        let mut st = lock(&c.st);
        let new = (st.limit / 2).max(1);
        let dec = st.limit - new;
        if dec == 0 {
            return;
        }
        st.limit = new;
        let gone = c.sem.forget_permits(dec as usize) as u32;
        st.debt += dec - gone;
    }

    /// A request succeeded: allow one more in flight (additive increase).
    pub fn on_success(&self) {
        let Some(c) = &self.conc else { return };
        let mut st = lock(&c.st);
        if st.limit >= st.max {
            return;
        }
        st.limit += 1;
        if st.debt > 0 {
            st.debt -= 1;
        } else {
            c.sem.add_permits(1);
        }
    }

    /// The allowed concurrency now, if limited.
    pub fn concurrency_limit(&self) -> Option<u32> {
        self.conc.as_ref().map(|c| lock(&c.st).limit)
    }

    /// Correct the tokens/min bucket once the real usage is known.
    pub fn settle_tokens(&self, estimated: u64, actual: u64) {
        if let Some(r) = &self.rate {
            if let Some(b) = &mut lock(r).tokens {
                b.level = (b.level + estimated as f64 - actual as f64).min(b.capacity);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Router

/// The routing state of one provider.
#[derive(Debug)]
pub struct Route {
    /// Its policy.
    pub policy: ProviderPolicy,
    /// Its breaker.
    pub breaker: Arc<CircuitBreaker>,
    /// Its limits.
    pub limiter: Arc<Limiter>,
}

/// Routing state of every provider, created on first use and kept for the
/// engine's lifetime (breakers and limits span runs).
#[derive(Debug, Default)]
pub struct Router {
    policies: HashMap<String, ProviderPolicy>,
    routes: Mutex<HashMap<String, Arc<Route>>>,
}

impl Router {
    /// A router with these per-provider policies; others get the default.
    pub fn new(policies: HashMap<String, ProviderPolicy>) -> Router {
        Router {
            policies,
            routes: Mutex::new(HashMap::new()),
        }
    }

    /// The route of `provider`.
    pub fn route(&self, provider: &str) -> Arc<Route> {
        self.route_for(provider, None)
    }

    /// The route of `provider` of `kind`. Without a configured policy the
    /// in-process mock gets no breaker: its simulated failures (mock/flaky)
    /// say nothing about the health of its other models.
    pub fn route_for(&self, provider: &str, kind: Option<ProviderKind>) -> Arc<Route> {
        let mut routes = lock(&self.routes);
        if let Some(r) = routes.get(provider) {
            return r.clone();
        }
        let policy = self.policies.get(provider).cloned().unwrap_or_else(|| {
            let mut p = ProviderPolicy::default();
            if kind == Some(ProviderKind::Mock) {
                p.breaker.failure_threshold = 0;
            }
            p
        });
        let r = Arc::new(Route {
            breaker: CircuitBreaker::new(policy.breaker.clone()),
            limiter: Limiter::new(&policy.limits),
            policy,
        });
        routes.insert(provider.to_string(), r.clone());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_wins_and_permanent_errors_do_not_retry() {
        let p = RetryPolicy::default();
        let e = EngineError::RateLimited {
            message: "x".into(),
            retry_after: Some(Duration::from_secs(6)),
        };
        assert_eq!(p.next_wait(&e, 2, 0.5).unwrap().0, Duration::from_secs(6));
        let e = EngineError::Auth {
            status: 401,
            message: "x".into(),
        };
        assert!(p.next_wait(&e, 2, 0.5).is_none());
        let e = EngineError::Server {
            status: 500,
            message: "x".into(),
        };
        assert!(p.next_wait(&e, 4, 0.5).is_none());
        let w = p.next_wait(&e, 3, 1.0).unwrap().0;
        assert_eq!(w, Duration::from_millis(1000));
        let ff = RetryPolicy {
            fail_fast_on_429: true,
            ..p
        };
        let e = EngineError::RateLimited {
            message: "x".into(),
            retry_after: None,
        };
        assert!(ff.next_wait(&e, 2, 0.5).is_none());
    }

    #[test]
    fn retry_after_longer_than_max_wait_fails_instead_of_waiting() {
        let p = RetryPolicy {
            max_wait: Duration::from_secs(5),
            ..Default::default()
        };
        let e = EngineError::RateLimited {
            message: "x".into(),
            retry_after: Some(Duration::from_secs(30)),
        };
        assert!(p.next_wait(&e, 2, 0.5).is_none());
        for e in [
            EngineError::ContextLength {
                status: 400,
                message: "x".into(),
            },
            EngineError::BadRequest {
                status: 404,
                message: "x".into(),
            },
            EngineError::Auth {
                status: 403,
                message: "x".into(),
            },
        ] {
            assert!(p.next_wait(&e, 2, 0.5).is_none(), "{e:?}");
        }
    }

    fn server_err() -> EngineError {
        EngineError::Server {
            status: 500,
            message: "x".into(),
        }
    }

    #[test]
    fn breaker_opens_after_threshold_fails_fast_and_half_opens_one_probe() {
        let b = CircuitBreaker::new(BreakerPolicy {
            failure_threshold: 3,
            cooldown: Duration::from_secs(10),
        });
        let t0 = Instant::now();
        // Two failures, then a success resets the count.
        for _ in 0..2 {
            b.acquire_at(t0).unwrap().failure_at(t0);
        }
        b.acquire_at(t0).unwrap().success();
        for _ in 0..2 {
            b.acquire_at(t0).unwrap().failure_at(t0);
        }
        assert_eq!(b.state_at(t0), BreakerState::Closed);
        b.acquire_at(t0).unwrap().failure_at(t0);
        assert_eq!(b.state_at(t0), BreakerState::Open);
        // Fails fast while open, saying how long is left.
        let left = b.acquire_at(t0 + Duration::from_secs(4)).unwrap_err();
        assert_eq!(left, Duration::from_secs(6));
        // After the cooldown: exactly one probe.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.state_at(t1), BreakerState::HalfOpen);
        let probe = b.acquire_at(t1).unwrap();
        assert!(probe.is_probe());
        assert!(b.acquire_at(t1).is_err(), "second caller must fail fast");
        // A failed probe re-opens for a full cooldown.
        let mut probe = probe;
        probe.failure_at(t1);
        drop(probe);
        assert_eq!(b.state_at(t1 + Duration::from_secs(9)), BreakerState::Open);
        // The next probe succeeds: closed again, everyone flows.
        let t2 = t1 + Duration::from_secs(10);
        b.acquire_at(t2).unwrap().success();
        assert_eq!(b.state_at(t2), BreakerState::Closed);
        assert!(!b.acquire_at(t2).unwrap().is_probe());
    }

    #[test]
    fn a_cancelled_probe_lets_another_probe_through() {
        let b = CircuitBreaker::new(BreakerPolicy {
            failure_threshold: 1,
            cooldown: Duration::from_secs(1),
        });
        let t0 = Instant::now();
        b.acquire_at(t0).unwrap().failure_at(t0);
        let t1 = t0 + Duration::from_secs(1);
        let probe = b.acquire_at(t1).unwrap();
        drop(probe); // cancelled: no verdict
        assert!(b.acquire_at(t1).unwrap().is_probe());
    }

    #[test]
    fn breaker_ignores_client_errors_and_can_be_disabled() {
        let b = CircuitBreaker::new(BreakerPolicy {
            failure_threshold: 2,
            cooldown: Duration::from_secs(10),
        });
        let auth = EngineError::Auth {
            status: 401,
            message: "x".into(),
        };
        for _ in 0..5 {
            b.acquire().unwrap().report(Some(&auth));
        }
        assert_eq!(b.state(), BreakerState::Closed);
        let off = CircuitBreaker::new(BreakerPolicy {
            failure_threshold: 0,
            cooldown: Duration::from_secs(10),
        });
        for _ in 0..50 {
            off.acquire().unwrap().report(Some(&server_err()));
        }
        assert_eq!(off.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn aimd_halves_on_429_and_recovers_one_per_success() {
        let l = Limiter::new(&Limits {
            max_concurrency: Some(8),
            ..Default::default()
        });
        assert_eq!(l.concurrency_limit(), Some(8));
        // Six in flight when the 429 arrives.
        let held: Vec<Permit> = (0..6).map(|_| l.try_acquire(0).unwrap()).collect();
        l.on_rate_limited();
        assert_eq!(l.concurrency_limit(), Some(4));
        // Only 2 were idle; the other 2 are swallowed as in-flight ones return.
        assert!(l.try_acquire(0).is_none(), "6 in flight > limit 4");
        drop(held);
        let now: Vec<Permit> = (0..4).map(|_| l.try_acquire(0).unwrap()).collect();
        assert!(l.try_acquire(0).is_none(), "never more than the limit");
        l.on_rate_limited();
        l.on_rate_limited();
        l.on_rate_limited();
        assert_eq!(l.concurrency_limit(), Some(1), "never below one");
        drop(now);
        let one = l.try_acquire(0).unwrap();
        assert!(l.try_acquire(0).is_none());
        for want in 2..=8 {
            l.on_success();
            assert_eq!(l.concurrency_limit(), Some(want));
        }
        l.on_success();
        assert_eq!(l.concurrency_limit(), Some(8), "capped at max_concurrency");
        let rest: Vec<Permit> = (0..7).map(|_| l.try_acquire(0).unwrap()).collect();
        assert!(l.try_acquire(0).is_none());
        drop((one, rest));
    }

    #[tokio::test]
    async fn concurrency_limit_queues_and_wakes() {
        let l = Limiter::new(&Limits {
            max_concurrency: Some(1),
            ..Default::default()
        });
        let p = l.try_acquire(0).unwrap();
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.acquire(0).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(p);
        let got = tokio::time::timeout(Duration::from_secs(2), waiter).await;
        assert!(got.is_ok(), "the waiter gets the freed slot");
    }

    #[test]
    fn request_and_token_buckets_queue_until_refilled() {
        let t0 = Instant::now();
        let mut r = Rate {
            requests: Some(Bucket::per_minute(2.0, t0)),
            tokens: Some(Bucket::per_minute(600.0, t0)),
        };
        assert!(r.take_at(t0, 100).is_ok());
        assert!(r.take_at(t0, 100).is_ok());
        // Third request: the request bucket is empty; one refills in 30 s.
        let w = r.take_at(t0, 100).unwrap_err();
        assert!((w.as_secs_f64() - 30.0).abs() < 1e-6, "{w:?}");
        assert!(r.take_at(t0 + Duration::from_secs(29), 100).is_err());
        let t1 = t0 + Duration::from_secs(31);
        assert!(r.take_at(t1, 100).is_ok());
        // Tokens: 600/min = 10/s.
        let mut r = Rate {
            requests: None,
            tokens: Some(Bucket::per_minute(600.0, t0)),
        };
        assert!(r.take_at(t0, 500).is_ok());
        let w = r.take_at(t0, 200).unwrap_err();
        assert_eq!(w, Duration::from_secs(10), "100 left, 100 more at 10/s");
        assert!(r.take_at(t0 + Duration::from_secs(10), 200).is_ok());
        // A request larger than the whole bucket waits for a full bucket, not forever.
        let t2 = t0 + Duration::from_secs(200);
        assert!(r.take_at(t2, 5000).is_ok());
        assert!(r.take_at(t2, 1).is_err());
    }

    #[test]
    fn settling_tokens_refunds_an_overestimate() {
        let l = Limiter::new(&Limits {
            tokens_per_minute: Some(1000),
            ..Default::default()
        });
        let p = l.try_acquire(900).unwrap();
        assert!(l.try_acquire(900).is_none());
        l.settle_tokens(900, 100);
        drop(p);
        assert!(l.try_acquire(800).is_some());
    }

    #[test]
    fn token_estimate_is_chars_over_four_plus_max_tokens() {
        let mut r = ChatRequest::from_prompt("x".repeat(400));
        assert_eq!(estimate_tokens(&r), 100);
        r.max_tokens = Some(50);
        assert_eq!(estimate_tokens(&r), 150);
    }

    #[test]
    fn router_keeps_state_per_provider() {
        let mut pol = HashMap::new();
        pol.insert(
            "a".to_string(),
            ProviderPolicy {
                limits: Limits {
                    max_concurrency: Some(2),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        let r = Router::new(pol);
        assert!(Arc::ptr_eq(&r.route("a"), &r.route("a")));
        assert_eq!(r.route("a").limiter.concurrency_limit(), Some(2));
        assert_eq!(r.route("b").limiter.concurrency_limit(), None);
        let m = r.route_for("m", Some(ProviderKind::Mock));
        assert_eq!(m.policy.breaker.failure_threshold, 0);
    }
}
