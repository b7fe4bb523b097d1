//! Group commit: writes that arrive together share one transaction (and one fsync).
//!
//! Every write of a ledger goes through one queue: run notes (with their budget
//! reservations), request rows and settlements ([`WriteOp`]), written together by
//! [`Backend::write`] in one transaction. A blocking writer ([`Queue::submit`]) that
//! arrives while a leader is free becomes one: it takes every item waiting, commits
//! them, hands each its own result and wakes the writers it served. Writers that
//! arrive while every leader is busy wait and are taken by the next one. Up to
//! `leaders` commits run at once (one on SQLite; two on PostgreSQL, so the database
//! works on one batch while the next is sent). Nobody who waits hears of its item
//! before the transaction holding it committed, so a row is still durable before its
//! answer is released. When a batch fails as a whole, its items are retried one by
//! one, so one bad row (say, too large) never fails its neighbours; when the database
//! is away, no op is at fault and none is retried alone.
//!
//! Items nobody blocks on go to a handler with their result:
//! - *async* items ([`Queue::submit_async`], an engine task's request row, awaited on a
//!   oneshot): the queue's writer threads (one per leader) commit them at once, or
//!   right after the commits running;
//! - *detached* items ([`Queue::submit_detached`], a settlement whose run ended without
//!   settling with its last row): committed now when a leader is free, else with the
//!   next batch;
//! - *passengers* ([`Queue::submit_passenger`], the note of a run without a budget): they
//!   never make anyone wait; they ride in the transaction of their run's first request
//!   row (the ledger's queue is keyed by run), and a writer thread commits those that
//!   waited [`PASSENGER_WAIT`] without a ride (with whatever else is due); dropping the
//!   queue commits what is left. Their handler must make a failure loud.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::{Backend, LedgerError, Refused, WriteOp};

/// How long a passenger waits for a transaction to ride in before the flusher
/// commits it. Long enough that the notes of a burst of streams ride with their rows
/// (or with each other, a second later) instead of taking the core while the burst's
/// first tokens are due: at 1,000 concurrent streams on one core, 20 ms here cost
/// 20–35 ms of median time to first token.
pub(crate) const PASSENGER_WAIT: Duration = Duration::from_millis(1000);

/// Who learns an item's result.
enum Taker<O> {
    /// A writer waiting on the slot.
    Waiting,
    /// A handler (detached items and passengers).
    Handler(Box<dyn FnOnce(O) + Send>),
}

/// Where a writer waits: its result, or the word that it leads the next batch. Each
/// writer has its own, so a commit wakes exactly the writers it served (and one more to
/// lead), not every writer waiting.
struct Slot<O> {
    state: Mutex<(Option<O>, bool)>,
    cv: Condvar,
    taker: Mutex<Option<Taker<O>>>,
}

impl<O> Slot<O> {
    fn new(taker: Taker<O>) -> Self {
        Slot {
            state: Mutex::new((None, false)),
            cv: Condvar::new(),
            taker: Mutex::new(Some(taker)),
        }
    }

    fn put(&self, r: Option<O>) {
        if let Some(r) = r {
            let taker = self.taker.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(Taker::Handler(h)) = taker {
                h(r);
                return;
            }
            self.state.lock().unwrap_or_else(|p| p.into_inner()).0 = Some(r);
        } else {
            self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        }
        self.cv.notify_one();
    }
}

/// An item waiting, with who takes its result and how it waits.
struct Pending<I, O> {
    slot: Arc<Slot<O>>,
    item: I,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// A writer blocks on its slot.
    Waiting,
    /// An async caller awaits its handler: a writer thread commits it at once.
    Async,
    /// Detached: the leader commits it after its batch when nobody else waits.
    Detached,
    /// A passenger since then: rides in the next transaction, or the flusher's.
    Passenger(Instant),
}

struct State<I, O> {
    pending: Vec<Pending<I, O>>,
    /// Commits running now.
    committing: usize,
}

type Commit<I, O> = Box<dyn Fn(Vec<I>) -> Vec<O> + Send + Sync>;

/// A group-commit queue of items `I` with results `O`, committed by its `commit`
/// function (one result per item, in order).
pub(crate) struct Queue<I, O> {
    state: Mutex<State<I, O>>,
    commit: Commit<I, O>,
    /// How many commits may run at once (1: one after the other).
    leaders: usize,
    /// The key of an item (see [`Queue::keyed`]).
    key: Option<fn(&I) -> Option<&str>>,
    /// Threads that commit what nobody blocks on (as many as `leaders`).
    writers: OnceLock<Vec<std::thread::Thread>>,
    next_writer: AtomicUsize,
}

/// The most items one transaction takes.
const MAX_BATCH: usize = 512;

impl<I: Send + 'static, O: Send + 'static> Queue<I, O> {
    /// A queue committing through `commit`, up to `leaders` commits at once.
    pub(crate) fn new(
        leaders: usize,
        commit: impl Fn(Vec<I>) -> Vec<O> + Send + Sync + 'static,
    ) -> Self {
        Queue {
            state: Mutex::new(State {
                pending: Vec::new(),
                committing: 0,
            }),
            commit: Box::new(commit),
            leaders: leaders.max(1),
            key: None,
            writers: OnceLock::new(),
            next_writer: AtomicUsize::new(0),
        }
    }

    /// Passengers of this queue wait for an item of the same `key` (or until due)
    /// rather than ride in the next batch.
    pub(crate) fn keyed(mut self, key: fn(&I) -> Option<&str>) -> Self {
        self.key = Some(key);
        self
    }

    fn lock(&self) -> MutexGuard<'_, State<I, O>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commit `item` with whatever items arrive alongside it; `item`'s result once
    /// committed.
    pub(crate) fn submit(&self, item: I) -> O {
        let slot = Arc::new(Slot::new(Taker::Waiting));
        let mut g = self.lock();
        g.pending.push(Pending {
            slot: slot.clone(),
            item,
            kind: Kind::Waiting,
        });
        loop {
            if g.committing < self.leaders {
                g = self.lead(g);
            }
            drop(g);
            {
                let mut s = slot.state.lock().unwrap_or_else(|p| p.into_inner());
                while s.0.is_none() && !s.1 {
                    s = slot.cv.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                if let Some(r) = s.0.take() {
                    return r;
                }
                s.1 = false;
            }
            g = self.lock();
        }
    }

    /// Queue `item` without waiting for it: it rides in the batch being formed (or
    /// the next one), and `done` gets its result once committed. When no commit is
    /// running the caller commits it now; otherwise it returns at once, and the
    /// running leader hands it to the next batch (committing it itself when nobody
    /// else waits).
    pub(crate) fn submit_detached(&self, item: I, done: impl FnOnce(O) + Send + 'static) {
        let slot = Arc::new(Slot::new(Taker::Handler(Box::new(done))));
        let mut g = self.lock();
        g.pending.push(Pending {
            slot,
            item,
            kind: Kind::Detached,
        });
        if g.committing < self.leaders {
            drop(self.lead(g));
        }
    }

    /// Queue `item` as a passenger: it never makes anyone wait, the caller included.
    /// It rides in the next transaction committed (anyone's); when none starts within
    /// [`PASSENGER_WAIT`], a writer thread commits it. `done` gets its result.
    pub(crate) fn submit_passenger(
        self: &Arc<Self>,
        item: I,
        done: impl FnOnce(O) + Send + 'static,
    ) {
        self.push_handled(item, done, Kind::Passenger(Instant::now()));
    }

    /// Queue `item` for a caller that must not block (an async task): a writer thread
    /// commits it with whatever waits alongside, at once (or right after the commits
    /// running), and `done` gets its result once committed.
    pub(crate) fn submit_async(self: &Arc<Self>, item: I, done: impl FnOnce(O) + Send + 'static) {
        self.push_handled(item, done, Kind::Async);
    }

    fn push_handled(self: &Arc<Self>, item: I, done: impl FnOnce(O) + Send + 'static, kind: Kind) {
        let slot = Arc::new(Slot::new(Taker::Handler(Box::new(done))));
        let wake = {
            let mut g = self.lock();
            // A writer already keeps time for the passengers waiting.
            let timed = matches!(kind, Kind::Passenger(_))
                && g.pending
                    .iter()
                    .any(|p| matches!(p.kind, Kind::Passenger(_)));
            g.pending.push(Pending { slot, item, kind });
            g.committing < self.leaders && !timed
        };
        let writers = self.writers.get_or_init(|| self.spawn_writers());
        if writers.is_empty() {
            // No thread to spare: commit it now rather than never.
            let g = self.lock();
            if g.committing < self.leaders {
                drop(self.lead(g));
            }
        } else if wake {
            // Busy leaders wake a writer themselves once their commit is done.
            self.wake(writers);
        }
    }

    /// Wake one writer thread (in turn).
    fn wake(&self, writers: &[std::thread::Thread]) {
        let i = self.next_writer.fetch_add(1, Ordering::Relaxed);
        writers[i % writers.len()].unpark();
    }

    fn spawn_writers(self: &Arc<Self>) -> Vec<std::thread::Thread> {
        (0..self.leaders)
            .filter_map(|_| {
                let q: Weak<Self> = Arc::downgrade(self);
                std::thread::Builder::new()
                    .name("quorum-ledger-write".into())
                    .spawn(move || writer_loop(&q))
                    .ok()
                    .map(|h| h.thread().clone())
            })
            .collect()
    }

    /// A writer thread's turn: commit what nobody blocks on (async and detached items
    /// now, passengers once they waited long enough) when a leader is free; when to
    /// look again (`None`: nothing waits for a writer).
    fn work(&self) -> Option<Duration> {
        let g = self.lock();
        if g.committing >= self.leaders || g.pending.is_empty() {
            return None;
        }
        let urgent = g
            .pending
            .iter()
            .any(|p| matches!(p.kind, Kind::Async | Kind::Detached));
        if !urgent {
            let oldest = g
                .pending
                .iter()
                .filter_map(|p| match p.kind {
                    Kind::Passenger(t) => Some(t),
                    _ => None,
                })
                .min()?;
            let waited = oldest.elapsed();
            if g.committing > 0 || waited < PASSENGER_WAIT {
                return Some(
                    PASSENGER_WAIT
                        .saturating_sub(waited)
                        .max(Duration::from_millis(1)),
                );
            }
        }
        drop(self.lead(g));
        Some(Duration::ZERO)
    }

    /// The next batch out of `pending`, in order, up to [`MAX_BATCH`] items. In a
    /// keyed queue, while no passenger is due, a passenger rides only with an item of
    /// its own key (a run's note with the run's row): a note and its row then share a
    /// transaction, instead of landing in two that run at once, the second waiting on
    /// the first's locks.
    fn take(&self, pending: &mut Vec<Pending<I, O>>) -> Vec<Pending<I, O>> {
        let Some(key) = self.key else {
            let n = pending.len().min(MAX_BATCH);
            return pending.drain(..n).collect();
        };
        let keys: std::collections::HashSet<String> = pending
            .iter()
            .filter(|p| !matches!(p.kind, Kind::Passenger(_)))
            .filter_map(|p| key(&p.item).map(String::from))
            .collect();
        let (mut taken, mut left) = (Vec::new(), Vec::new());
        // One clock read for the batch: a burst can leave a thousand passengers here.
        // Once the oldest is due, every passenger rides: a burst's notes go in one
        // transaction (or a few of MAX_BATCH), not one small transaction for each
        // few that came due since the last.
        let now = Instant::now();
        let due = pending.iter().any(|p| match p.kind {
            Kind::Passenger(t) => now.saturating_duration_since(t) >= PASSENGER_WAIT,
            _ => false,
        });
        for p in pending.drain(..) {
            let rides = match p.kind {
                Kind::Passenger(_) => due || key(&p.item).is_some_and(|k| keys.contains(k)),
                _ => true,
            };
            if rides && taken.len() < MAX_BATCH {
                taken.push(p);
            } else {
                left.push(p);
            }
        }
        *pending = left;
        taken
    }

    /// Commit batches as a leader (fewer than `leaders` commits run on entry): one,
    /// then more while only detached items wait (nobody else would take them at once);
    /// then the first waiting writer leads the next batch. Passengers left over wait
    /// for the next transaction, or the flusher.
    fn lead<'a>(&'a self, mut g: MutexGuard<'a, State<I, O>>) -> MutexGuard<'a, State<I, O>> {
        loop {
            let batch = self.take(&mut g.pending);
            // Another leader took everything (its own item included) meanwhile.
            if batch.is_empty() {
                return g;
            }
            g.committing += 1;
            let (slots, items): (Vec<Arc<Slot<O>>>, Vec<I>) =
                batch.into_iter().map(|p| (p.slot, p.item)).unzip();
            drop(g);
            let results = (self.commit)(items);
            for (s, r) in slots.iter().zip(results) {
                s.put(Some(r));
            }
            g = self.lock();
            g.committing -= 1;
            // Whoever waits first leads the next batch.
            if let Some(next) = g.pending.iter().find(|p| p.kind == Kind::Waiting) {
                next.slot.put(None);
                return g;
            }
            if g.pending.is_empty() {
                return g;
            }
            let urgent = g
                .pending
                .iter()
                .any(|p| matches!(p.kind, Kind::Async | Kind::Detached));
            match self.writers.get().filter(|w| !w.is_empty()) {
                // A writer thread takes what is left (passengers when due).
                Some(w) => {
                    self.wake(w);
                    return g;
                }
                None if urgent => {}
                None => return g,
            }
        }
    }
}

/// A writer thread: commits what [`Queue::work`] finds due until the queue is gone.
fn writer_loop<I: Send + 'static, O: Send + 'static>(q: &Weak<Queue<I, O>>) {
    background_priority();
    loop {
        let next = match q.upgrade() {
            Some(q) => q.work(),
            None => return,
        };
        match next {
            Some(d) if d.is_zero() => {}
            // Woken early by new work; rechecks at least every second
            // whether the queue is gone.
            _ => std::thread::park_timeout(next.unwrap_or(Duration::from_secs(1))),
        }
    }
}

/// Linux: the calling thread is scheduled as batch work (`SCHED_BATCH`): its fair
/// share of the CPU is the same, but its wake-ups do not preempt the thread running.
/// A writer is woken for every request row; at 1,000 streams on one core it used to
/// preempt the runtime's worker a few hundred times a second to commit two or three
/// rows at a time. Now it runs when the worker sleeps or its slice ends, and each
/// commit takes what gathered meanwhile (issue #14: 180 → 150 µs of CPU per one-chunk
/// request, `benches/serve_setup.sh`). Commit latency when the core is idle is
/// unchanged. Elsewhere (and if the call fails) nothing changes.
fn background_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: plain FFI call on the calling thread (pid 0) with a valid param.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        if rc != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "ledger writer: SCHED_BATCH not set"
            );
        }
    }
}

impl<I, O> Drop for Queue<I, O> {
    /// Items nobody waits for are committed before the queue goes.
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let (slots, items): (Vec<Arc<Slot<O>>>, Vec<I>) = std::mem::take(&mut st.pending)
            .into_iter()
            .map(|p| (p.slot, p.item))
            .unzip();
        if items.is_empty() {
            return;
        }
        for (s, r) in slots.iter().zip((self.commit)(items)) {
            s.put(Some(r));
        }
    }
}

/// The ledger's write queue.
pub(crate) type Writes = Queue<WriteOp, Result<i64, Refused>>;

/// Write `ops` through `backend` in one transaction; one result per op. When the
/// transaction fails as a whole, each op is written alone, in order, so one bad op
/// fails alone.
pub(crate) fn commit(backend: &dyn Backend, ops: &[WriteOp]) -> Vec<Result<i64, Refused>> {
    match backend.write(ops) {
        Ok(out) if out.len() == ops.len() => out,
        Err(e) if ops.len() == 1 => vec![Err(Refused::Ledger(e))],
        // The database is away: no op is at fault, and none would get through alone.
        Err(e) if e.is_unavailable() => ops
            .iter()
            .map(|_| Err(Refused::Ledger(e.clone())))
            .collect(),
        // The batch failed as a whole: find which ops are at fault.
        _ => ops
            .iter()
            .map(|op| match backend.write(std::slice::from_ref(op)) {
                Ok(mut out) if out.len() == 1 => out.remove(0),
                Ok(_) => Err(Refused::Ledger(LedgerError::Backend {
                    place: backend.place().to_string(),
                    detail: "the ledger answered a write batch with the wrong count".into(),
                })),
                Err(e) => Err(Refused::Ledger(e)),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::{Queue, PASSENGER_WAIT};
    use std::sync::mpsc;
    use std::sync::{Arc, Barrier, Mutex};
    use std::time::Duration;

    type Log = Arc<Mutex<Vec<Vec<u32>>>>;

    /// A queue whose commits multiply by 10 and are logged; the first commit of
    /// exactly `[hold]` waits at `entered`/`release`.
    fn queue(
        hold: u32,
        entered: Arc<Barrier>,
        release: Arc<Barrier>,
    ) -> (Arc<Queue<u32, u32>>, Log) {
        let log: Log = Arc::default();
        let l = log.clone();
        let q = Queue::new(1, move |items: Vec<u32>| {
            l.lock().unwrap().push(items.clone());
            if items == [hold] {
                entered.wait();
                release.wait();
            }
            items.iter().map(|i| i * 10).collect()
        });
        (Arc::new(q), log)
    }

    /// A detached item queued while a commit runs is committed by that leader once
    /// its batch is done, although nobody else submits anything.
    #[test]
    fn a_detached_item_is_committed_without_another_writer() {
        let (entered, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let (q, _) = queue(1, entered.clone(), release.clone());
        let leader = {
            let q = q.clone();
            std::thread::spawn(move || q.submit(1))
        };
        entered.wait();
        // The leader is inside its commit: this returns at once.
        let (tx, rx) = mpsc::channel();
        q.submit_detached(2, move |r| tx.send(r).unwrap());
        assert!(rx.try_recv().is_err());
        release.wait();
        assert_eq!(leader.join().unwrap(), 10);
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap(), 20);
        // With no commit running, the caller commits it itself.
        let (tx, rx) = mpsc::channel();
        q.submit_detached(3, move |r| tx.send(r).unwrap());
        assert_eq!(rx.try_recv().unwrap(), 30);
    }

    /// A passenger rides in the next writer's transaction, and the caller never
    /// commits it itself.
    #[test]
    fn a_passenger_rides_with_the_next_writer() {
        let never = || Arc::new(Barrier::new(1));
        let (q, log) = queue(u32::MAX, never(), never());
        let (tx, rx) = mpsc::channel();
        q.submit_passenger(4, move |r| tx.send(r).unwrap());
        // Nothing committed by the caller; the next writer takes it along (unless the
        // flusher was quicker: then it committed alone).
        assert_eq!(q.submit(5), 50);
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap(), 40);
        let log = log.lock().unwrap().clone();
        assert!(
            log == [vec![4, 5]] || log == [vec![4], vec![5]],
            "commits: {log:?}"
        );
    }

    /// In a keyed queue a passenger rides with an item of its own key, not with the
    /// next item of another key (it is committed once due instead).
    type Keyed = Arc<Queue<(&'static str, u32), u32>>;

    /// A queue keyed by each item's name whose commits multiply by 10 and are logged.
    fn keyed_queue() -> (Keyed, Log) {
        let log: Log = Arc::default();
        let l = log.clone();
        let q = Queue::new(1, move |items: Vec<(&'static str, u32)>| {
            l.lock().unwrap().push(items.iter().map(|i| i.1).collect());
            items.iter().map(|i| i.1 * 10).collect::<Vec<u32>>()
        })
        .keyed(|i| Some(i.0));
        (Arc::new(q), log)
    }

    #[test]
    fn a_keyed_passenger_rides_with_its_own_key() {
        let (q, log) = keyed_queue();
        let (tx, rx) = mpsc::channel();
        let t0 = std::time::Instant::now();
        q.submit_passenger(("a", 1), move |r| tx.send(r).unwrap());
        assert_eq!(q.submit(("b", 2)), 20);
        let young = t0.elapsed() < PASSENGER_WAIT;
        assert_eq!(q.submit(("a", 3)), 30);
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap(), 10);
        let log = log.lock().unwrap().clone();
        if young {
            // Not taken by "b" while young: with "a", or alone once due.
            assert!(
                log == [vec![2], vec![1, 3]] || log == [vec![2], vec![1], vec![3]],
                "{log:?}"
            );
        }
    }

    /// A passenger no writer takes along is committed by a writer thread, after it
    /// waited at least PASSENGER_WAIT.
    #[test]
    fn a_passenger_without_a_ride_is_flushed() {
        let never = || Arc::new(Barrier::new(1));
        let (q, log) = queue(u32::MAX, never(), never());
        let (tx, rx) = mpsc::channel();
        let t0 = std::time::Instant::now();
        q.submit_passenger(6, move |r| tx.send(r).unwrap());
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap(), 60);
        assert!(t0.elapsed() >= PASSENGER_WAIT);
        assert_eq!(*log.lock().unwrap(), [vec![6]]);
    }

    /// In a keyed queue, once the oldest passenger is due, the flusher takes every
    /// passenger waiting, of any key and however young: a burst's notes go in one
    /// transaction, not one per few that came due.
    #[test]
    fn due_passengers_take_the_younger_ones_along() {
        let (q, log) = keyed_queue();
        let (tx, rx) = mpsc::channel();
        let t0 = std::time::Instant::now();
        let tx2 = tx.clone();
        q.submit_passenger(("a", 1), move |r| tx.send(r).unwrap());
        // Younger by a clear margin, so it is not due when the first is.
        std::thread::sleep(PASSENGER_WAIT / 4);
        q.submit_passenger(("b", 2), move |r| tx2.send(r).unwrap());
        let young = t0.elapsed() < PASSENGER_WAIT;
        let mut got = vec![
            rx.recv_timeout(Duration::from_secs(60)).unwrap(),
            rx.recv_timeout(Duration::from_secs(60)).unwrap(),
        ];
        got.sort();
        assert_eq!(got, [10, 20]);
        if young {
            assert_eq!(*log.lock().unwrap(), [vec![1, 2]]);
        }
    }

    /// An async item is committed by a writer thread, never by its caller, and its
    /// handler hears the result once.
    #[test]
    fn an_async_item_is_committed_by_a_writer_thread() {
        let caller = std::thread::current().id();
        let log: Arc<Mutex<Vec<std::thread::ThreadId>>> = Arc::default();
        let l = log.clone();
        let q = Arc::new(Queue::new(1, move |items: Vec<u32>| {
            l.lock().unwrap().push(std::thread::current().id());
            items.iter().map(|i| i * 10).collect()
        }));
        let (tx, rx) = mpsc::channel();
        q.submit_async(8, move |r| tx.send(r).unwrap());
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap(), 80);
        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), 1);
        assert_ne!(log[0], caller);
    }

    /// With two leaders, a second commit runs while the first is still inside its
    /// transaction.
    #[test]
    fn two_leaders_commit_at_once() {
        let (entered, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let (e, r) = (entered.clone(), release.clone());
        let q = Arc::new(Queue::new(2, move |items: Vec<u32>| {
            if items == [1] {
                e.wait();
                r.wait();
            }
            items.iter().map(|i| i * 10).collect()
        }));
        let first = {
            let q = q.clone();
            std::thread::spawn(move || q.submit(1))
        };
        entered.wait();
        let (tx, rx) = mpsc::channel();
        let second = {
            let q = q.clone();
            std::thread::spawn(move || tx.send(q.submit(2)).unwrap())
        };
        let r = rx.recv_timeout(Duration::from_secs(60));
        release.wait();
        assert_eq!(r, Ok(20), "the second commit waited for the first");
        assert_eq!(first.join().unwrap(), 10);
        second.join().unwrap();
    }

    /// Dropping the queue commits the passengers still waiting.
    #[test]
    fn dropping_the_queue_commits_waiting_passengers() {
        let never = || Arc::new(Barrier::new(1));
        let (q, log) = queue(u32::MAX, never(), never());
        let (tx, rx) = mpsc::channel();
        q.submit_passenger(7, move |r| tx.send(r).unwrap());
        drop(q);
        // Either the flusher was quicker or the drop committed it: exactly once.
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap(), 70);
        assert_eq!(*log.lock().unwrap(), [vec![7]]);
    }

    /// On Linux the writer threads run as batch work (`SCHED_BATCH`), so a wake-up
    /// for each request row does not preempt the thread serving requests.
    #[cfg(target_os = "linux")]
    #[test]
    fn writer_threads_are_batch_work() {
        let q = Arc::new(Queue::new(1, |items: Vec<u32>| {
            // SAFETY: plain FFI query of the calling thread's policy.
            let policy = unsafe { libc::sched_getscheduler(0) } as u32;
            items.iter().map(|_| policy).collect()
        }));
        let (tx, rx) = mpsc::channel();
        q.submit_async(1, move |r| tx.send(r).unwrap());
        let policy = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(policy, libc::SCHED_BATCH as u32);
    }
}
