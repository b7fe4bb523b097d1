//! Leases: one reservation against the budget that many runs draw their bounds from.
//!
//! A gated run reserves its bound in a commit that checks the caps before it sends
//! anything. Under load, that commit is most of what a budget costs: a transaction and
//! a wait before every request's first byte. So while a budget scope (a budget session,
//! or none) already has a run in flight, the front door reserves a *lease* instead: a
//! hold of [`LEASE_PER_RUN`] bounds per run in flight, checked against the caps in the same kind
//! of commit, written as a run of its own (`lease-…`) so that every process sharing the
//! ledger counts it and a dead process's lease expires like its runs. The runs that
//! follow claim their bound from the lease in memory and note themselves in the ledger
//! without waiting; each request row's cost draws the lease's hold down in the row's
//! own commit; when the lease's last run ends, what is left of it is released.
//!
//! The caps hold exactly as with a reservation per run: every run's bound is inside a
//! hold that was checked against the caps before the run was sent, so a cap can be
//! exceeded only by what a request costs beyond its bound, never by concurrency. A lease
//! is at most [`LEASE_SHARE`] of the smallest cap, and a run whose bound it cannot cover
//! reserves its own; so the unused part of leases can refuse a run early (by at most
//! that share per lease) but never let one through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::budget::Budget;
use super::ledger::BackgroundLedger;

/// How many bounds a lease holds per run in flight in its scope. It is in proportion,
/// so that a client cannot hold much more of a cap than its own runs in flight would
/// (two runs at once hold eight bounds, not more).
pub(crate) const LEASE_PER_RUN: usize = 4;

/// How long a scope's open lease outlives its last run in flight: runs often end
/// together (a commit answers many), and the next ones follow at once.
pub(crate) const LINGER: Duration = Duration::from_millis(250);

/// The largest share of the smallest cap one lease may hold.
pub(crate) const LEASE_SHARE: f64 = 1.0 / 64.0;

/// The lease to reserve for runs of bound `bound` under `budget` while `in_flight`
/// runs are in flight: `None` when it would not hold two such runs (then each run
/// reserves its own bound).
pub(crate) fn lease_size(budget: &Budget, bound: f64, in_flight: usize) -> Option<f64> {
    let cap = [budget.daily_usd, budget.session_usd]
        .into_iter()
        .flatten()
        .fold(f64::INFINITY, f64::min);
    let runs = (LEASE_PER_RUN * in_flight.max(1)) as f64;
    let size = (bound * runs).min(cap * LEASE_SHARE);
    (bound > 0.0 && size.is_finite() && size >= 2.0 * bound).then_some(size)
}

/// The leases of one engine (one ledger), by budget scope.
#[derive(Default)]
pub(crate) struct Leases {
    scopes: Mutex<HashMap<Option<String>, Scope>>,
}

#[derive(Default)]
struct Scope {
    /// Gated runs in flight in this scope, leased or not.
    in_flight: usize,
    /// The lease new runs claim from.
    open: Option<Open>,
    /// The lease reserved ahead, opened when the open one is spent.
    next: Option<Open>,
    /// A lease is being reserved; runs meanwhile reserve their own bound.
    reserving: bool,
    /// Since when no run is in flight (the scope is forgotten, and its leases
    /// released, [`LINGER`] later).
    idle_since: Option<Instant>,
    /// A sweep is due.
    sweeping: bool,
}

struct Open {
    lease: Arc<Lease>,
    size: f64,
    claimed: f64,
}

/// A lease in use by its runs: released (settled) when the last of them ends.
pub(crate) struct Lease {
    id: String,
    ledger: BackgroundLedger,
}

impl Lease {
    /// A lease `id` reserved in `ledger`.
    pub(crate) fn new(id: String, ledger: BackgroundLedger) -> Lease {
        Lease { id, ledger }
    }

    /// Its id in the ledger.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let id = std::mem::take(&mut self.id);
        match self.ledger.ready() {
            // A writer thread settles it: nothing blocks here, with or without a
            // runtime (a server shutting down drops its leases as its runtime stops).
            Some(Ok(l)) => l.settle_run_async(&id),
            _ => super::front::settle_detached(self.ledger.clone(), id),
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("id", &self.id).finish()
    }
}

/// What a gated run does about its bound.
pub(crate) enum Take {
    /// Claimed from this lease; with a reservation, the lease is half spent and the
    /// next one should be reserved now, without waiting for it.
    Leased(Arc<Lease>, Option<Reserving>),
    /// Reserve a lease for this run.
    Reserve(Reserving),
    /// Reserve its own bound.
    Own,
}

/// The scope's one lease reservation under way: [`Reserving::opened`] once the lease
/// is reserved. Dropped otherwise (the caps refused it, the ledger failed, or the
/// caller went away mid-way), the scope may reserve a lease again.
pub(crate) struct Reserving {
    leases: Arc<Leases>,
    scope: Option<String>,
    size: f64,
    done: bool,
}

impl Reserving {
    /// The size of the lease to reserve.
    pub(crate) fn size(&self) -> f64 {
        self.size
    }

    /// The lease was reserved, `claimed` already (see [`Leases::opened`]).
    pub(crate) fn opened(mut self, lease: Arc<Lease>, claimed: f64) {
        self.done = true;
        self.leases
            .opened(self.scope.as_deref(), lease, self.size, claimed);
    }
}

impl Drop for Reserving {
    fn drop(&mut self) {
        if !self.done {
            self.leases.failed(self.scope.as_deref());
        }
    }
}

/// A gated run counted in flight in its scope until dropped.
pub(crate) struct InFlight {
    leases: Arc<Leases>,
    scope: Option<String>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut scopes = self.leases.lock();
        let Some(s) = scopes.get_mut(&self.scope) else {
            return;
        };
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight > 0 {
            return;
        }
        // The scope's last run ended: its open leases (held by nobody else now) are
        // released a little later, unless runs come meanwhile; without a runtime to
        // wait on, at once.
        s.idle_since = Some(Instant::now());
        if s.sweeping {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                s.sweeping = true;
                let (leases, scope) = (self.leases.clone(), self.scope.clone());
                drop(scopes);
                h.spawn(async move { leases.sweep(scope).await });
            }
            Err(_) => {
                let gone = scopes.remove(&self.scope);
                drop(scopes);
                drop(gone);
            }
        }
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("scope", &self.scope)
            .finish()
    }
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Option<String>, Scope>> {
        self.scopes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forget `scope` (releasing its open leases) once it has been idle for [`LINGER`].
    async fn sweep(&self, scope: Option<String>) {
        loop {
            let wait = {
                let mut scopes = self.lock();
                let Some(s) = scopes.get_mut(&scope) else {
                    return;
                };
                match s.idle_since.map(|t| t.elapsed()) {
                    Some(idle) if s.in_flight == 0 && idle >= LINGER => {
                        let gone = scopes.remove(&scope);
                        drop(scopes);
                        drop(gone);
                        return;
                    }
                    Some(idle) if s.in_flight == 0 => LINGER - idle,
                    // Busy again: the run that ends it last sweeps again.
                    _ => {
                        s.sweeping = false;
                        return;
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Count a gated run in flight in `scope`.
    pub(crate) fn enter(self: &Arc<Self>, scope: Option<&str>) -> InFlight {
        let scope = scope.map(String::from);
        let mut scopes = self.lock();
        let s = scopes.entry(scope.clone()).or_default();
        s.in_flight += 1;
        s.idle_since = None;
        drop(scopes);
        InFlight {
            leases: self.clone(),
            scope,
        }
    }

    /// How a run of bound `bound` in `scope` (entered) reserves it under `budget`:
    /// from the open lease when it covers the bound; by reserving a lease when another
    /// run of the scope is in flight and no lease is being reserved; else on its own.
    pub(crate) fn take(self: &Arc<Self>, scope: Option<&str>, bound: f64, budget: &Budget) -> Take {
        let reserving = |size| Reserving {
            leases: self.clone(),
            scope: scope.map(String::from),
            size,
            done: false,
        };
        let mut scopes = self.lock();
        let Some(s) = scopes.get_mut(&scope.map(String::from)) else {
            return Take::Own;
        };
        let size = lease_size(budget, bound, s.in_flight);
        let spent = s.open.as_ref().is_some_and(|o| o.claimed + bound > o.size);
        if spent && s.next.is_some() {
            // The open lease's runs keep it until they end.
            s.open = s.next.take();
        }
        if let Some(o) = &mut s.open {
            if o.claimed + bound <= o.size {
                o.claimed += bound;
                let renew = match size {
                    Some(size) if !s.reserving && s.next.is_none() && o.claimed * 2.0 > o.size => {
                        s.reserving = true;
                        Some(reserving(size))
                    }
                    _ => None,
                };
                return Take::Leased(o.lease.clone(), renew);
            }
        }
        match size {
            Some(size) if s.in_flight > 1 && !s.reserving => {
                s.reserving = true;
                Take::Reserve(reserving(size))
            }
            _ => Take::Own,
        }
    }

    /// The lease of `size` reserved for `scope`, `claimed` already (the bound of the
    /// run that reserved it, or nothing when reserved ahead). A lease reserved ahead
    /// waits until the open one is spent; one reserved for a run replaces it (its runs
    /// keep it until they end). A lease reserved ahead for a scope whose runs all ended
    /// meanwhile is released at once.
    fn opened(&self, scope: Option<&str>, lease: Arc<Lease>, size: f64, claimed: f64) {
        let mut scopes = self.lock();
        let mut gone = Some(lease);
        if let Some(s) = scopes.get_mut(&scope.map(String::from)) {
            s.reserving = false;
            if s.in_flight > 0 {
                let open = Open {
                    lease: gone.take().expect("just set"),
                    size,
                    claimed,
                };
                let ahead = claimed == 0.0 && s.open.is_some();
                let slot = if ahead { &mut s.next } else { &mut s.open };
                gone = slot.replace(open).map(|o| o.lease);
            }
        }
        drop(scopes);
        drop(gone);
    }

    /// The lease for `scope` could not be reserved.
    fn failed(&self, scope: Option<&str>) {
        if let Some(s) = self.lock().get_mut(&scope.map(String::from)) {
            s.reserving = false;
        }
    }

    /// Scopes known (runs in flight or a lease open): for tests.
    #[cfg(test)]
    fn scopes(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(daily: f64) -> Budget {
        Budget {
            session_usd: None,
            daily_usd: Some(daily),
        }
    }

    #[test]
    fn a_lease_holds_four_bounds_per_run_in_flight_but_never_more_than_a_share_of_the_cap() {
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-12);
        assert!(close(lease_size(&budget(1000.0), 0.01, 2), 0.08));
        assert!(close(lease_size(&budget(1000.0), 0.01, 20), 0.8));
        // 1/64 of $6.40 is $0.10: room for 10 runs of $0.01.
        assert!(close(lease_size(&budget(6.4), 0.01, 20), 0.1));
        // Not two runs' worth: each run reserves its own.
        assert_eq!(lease_size(&budget(1.0), 0.01, 20), None);
        assert_eq!(lease_size(&budget(1000.0), 0.0, 20), None);
        let both = Budget {
            session_usd: Some(0.64),
            daily_usd: Some(1000.0),
        };
        assert!(close(lease_size(&both, 0.001, 20), 0.01));
    }

    fn ledger() -> BackgroundLedger {
        BackgroundLedger::failed(super::super::ledger::LedgerError::NoDataDir)
    }

    #[test]
    fn runs_claim_a_lease_renew_it_half_way_and_the_scope_is_forgotten_after() {
        // Runs of $1, under a cap that does not limit the leases.
        let b = budget(64.0 * 1000.0);
        let leases = Arc::new(Leases::default());
        let first = leases.enter(None);
        // Alone in its scope: it reserves its own bound.
        assert!(matches!(leases.take(None, 1.0, &b), Take::Own));
        // Four in flight: a lease of 16 bounds.
        let second: Vec<_> = (0..3).map(|_| leases.enter(None)).collect();
        let Take::Reserve(r) = leases.take(None, 1.0, &b) else {
            panic!("a run with others in flight reserves a lease");
        };
        assert_eq!(r.size(), 16.0);
        // While it is being reserved, others reserve their own.
        let third = leases.enter(None);
        assert!(matches!(leases.take(None, 1.0, &b), Take::Own));
        let lease = Arc::new(Lease::new("lease-1".into(), ledger()));
        r.opened(lease.clone(), 1.0);
        let mut claims = vec![lease];
        // Claims up to half the lease renew nothing; the claim past half renews it
        // (once).
        let mut renewal = None;
        for n in 2..=16 {
            match leases.take(None, 1.0, &b) {
                Take::Leased(l, renew) => {
                    assert_eq!(renew.is_some(), n == 9, "claim {n}");
                    renewal = renewal.or(renew);
                    claims.push(l);
                }
                _ => panic!("the lease covers 16 runs"),
            }
        }
        // Spent while the renewal is under way: the run reserves its own.
        assert!(matches!(leases.take(None, 1.0, &b), Take::Own));
        let next = Arc::new(Lease::new("lease-2".into(), ledger()));
        let watch = Arc::downgrade(&next);
        renewal.expect("renewed").opened(next, 0.0);
        match leases.take(None, 1.0, &b) {
            Take::Leased(l, None) => {
                assert_eq!(l.id(), "lease-2");
                claims.push(l);
            }
            _ => panic!("the renewed lease is open"),
        }
        // Another scope knows nothing of it.
        let other = leases.enter(Some("s"));
        assert!(matches!(leases.take(Some("s"), 1.0, &b), Take::Own));
        drop(other);
        assert_eq!(leases.scopes(), 1);
        // Runs end (their claims first, as a run's settlement drops them).
        drop(claims);
        assert!(
            watch.upgrade().is_some(),
            "the open lease is kept while runs are in flight"
        );
        drop((first, second, third));
        assert!(
            watch.upgrade().is_none(),
            "the last run's end releases the open lease"
        );
        assert_eq!(leases.scopes(), 0);
        // A lease reserved ahead for a scope with nothing in flight is released.
        let late = Arc::new(Lease::new("lease-3".into(), ledger()));
        let watch = Arc::downgrade(&late);
        leases.opened(None, late, 16.0, 0.0);
        // A reservation given up (refused, or its caller gone) lets the scope reserve
        // again.
        let runs: Vec<_> = (0..2).map(|_| leases.enter(None)).collect();
        let Take::Reserve(r) = leases.take(None, 1.0, &b) else {
            panic!("reserves a lease");
        };
        assert!(matches!(leases.take(None, 1.0, &b), Take::Own));
        drop(r);
        assert!(matches!(leases.take(None, 1.0, &b), Take::Reserve(_)));
        drop(runs);
        assert!(watch.upgrade().is_none());
        assert_eq!(leases.scopes(), 0);
    }

    #[test]
    fn a_lease_reserved_ahead_waits_until_the_open_one_is_spent() {
        let b = budget(64.0 * 1000.0);
        let leases = Arc::new(Leases::default());
        let runs: Vec<_> = (0..2).map(|_| leases.enter(None)).collect();
        let Take::Reserve(mut r) = leases.take(None, 1.0, &b) else {
            panic!("reserves a lease");
        };
        // A lease of four runs.
        r.size = 4.0;
        r.opened(Arc::new(Lease::new("lease-1".into(), ledger())), 1.0);
        let mut claims = Vec::new();
        let mut renewals = Vec::new();
        for _ in 0..3 {
            match leases.take(None, 1.0, &b) {
                Take::Leased(l, renew) => {
                    renewals.extend(renew);
                    claims.push(l);
                }
                _ => panic!("lease-1 covers four runs"),
            }
        }
        assert_eq!(renewals.len(), 1);
        renewals
            .pop()
            .unwrap()
            .opened(Arc::new(Lease::new("lease-2".into(), ledger())), 0.0);
        assert!(claims.iter().all(|l| l.id() == "lease-1"));
        // lease-1 is spent: the next claim opens lease-2.
        match leases.take(None, 1.0, &b) {
            Take::Leased(l, _) => assert_eq!(l.id(), "lease-2"),
            _ => panic!("lease-2 was reserved ahead"),
        }
        drop((claims, runs));
        assert_eq!(leases.scopes(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_scope_keeps_its_lease_a_moment_then_releases_it() {
        let b = budget(64.0 * 1000.0);
        let leases = Arc::new(Leases::default());
        let runs: Vec<_> = (0..2).map(|_| leases.enter(None)).collect();
        let Take::Reserve(r) = leases.take(None, 1.0, &b) else {
            panic!("reserves a lease");
        };
        let lease = Arc::new(Lease::new("lease-1".into(), ledger()));
        let watch = Arc::downgrade(&lease);
        r.opened(lease, 1.0);
        drop(runs);
        // The next run comes before the sweep looks (it cannot run before this task
        // yields): the lease stays open for it.
        let again = leases.enter(None);
        tokio::task::yield_now().await;
        match leases.take(None, 1.0, &b) {
            Take::Leased(l, _) => assert_eq!(l.id(), "lease-1"),
            _ => panic!("the open lease outlived a moment without runs"),
        }
        drop(again);
        // Idle for good: released after LINGER.
        let deadline = Instant::now() + Duration::from_secs(60);
        while watch.upgrade().is_some() {
            assert!(
                Instant::now() < deadline,
                "the idle lease was never released"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(leases.scopes(), 0);
    }
}
