//! Group commit: writes that arrive together share one transaction (and one fsync).
//!
//! The first writer to arrive while no commit is running becomes the leader: it takes
//! every item waiting, writes them in one transaction, hands each writer its own result
//! and wakes them. Writers that arrive meanwhile wait and are taken by the next leader.
//! Nobody returns before the transaction holding its item committed, so a row is still
//! durable before its answer is released. When a batch fails as a whole, its items are
//! retried one by one, so one bad row (say, too large) never fails its neighbours.
//!
//! Two queues use it: request rows ([`Batcher`]) and run bookkeeping
//! ([`Bookkeeper`]: run notes with their budget reservations, and settlements).

use std::sync::{Arc, Condvar, Mutex};

use super::{Backend, BookOp, LedgerError, NewRequest, Refused};

/// Where a writer waits: its result, or the word that it leads the next batch. Each
/// writer has its own, so a commit wakes exactly the writers it served (and one more to
/// lead), not every writer waiting.
struct Slot<O> {
    state: Mutex<(Option<O>, bool)>,
    cv: Condvar,
    /// A detached item's handler: nobody waits on this slot, its result goes here.
    detached: Mutex<Option<Detached<O>>>,
}

type Detached<O> = Box<dyn FnOnce(O) + Send>;

impl<O> Slot<O> {
    fn new() -> Self {
        Slot {
            state: Mutex::new((None, false)),
            cv: Condvar::new(),
            detached: Mutex::new(None),
        }
    }

    fn is_detached(&self) -> bool {
        self.detached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn put(&self, r: Option<O>) {
        if let Some(r) = r {
            let handler = self
                .detached
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(h) = handler {
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

struct State<I, O> {
    pending: Vec<(Arc<Slot<O>>, I)>,
    committing: bool,
}

/// A group-commit queue of items `I` with results `O`.
pub(crate) struct Queue<I, O> {
    state: Mutex<State<I, O>>,
}

impl<I, O> Default for Queue<I, O> {
    fn default() -> Self {
        Queue {
            state: Mutex::new(State {
                pending: Vec::new(),
                committing: false,
            }),
        }
    }
}

/// The most items one transaction takes.
const MAX_BATCH: usize = 512;

impl<I, O> Queue<I, O> {
    /// Commit `item` with whatever items arrive alongside it, through `commit` (which
    /// returns one result per item, in order); `item`'s result once committed.
    pub(crate) fn submit(&self, item: I, commit: impl Fn(Vec<I>) -> Vec<O>) -> O {
        let slot = Arc::new(Slot::new());
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.pending.push((slot.clone(), item));
        loop {
            if !g.committing {
                g = self.lead(g, &commit);
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
            g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl<I, O> Queue<I, O> {
    /// Queue `item` without waiting for it: it rides in the batch being formed (or
    /// the next one), and `done` gets its result once committed. When no commit is
    /// running the caller commits it now; otherwise it returns at once, and the
    /// running leader hands it to the next batch (committing it itself when nobody
    /// else waits).
    pub(crate) fn submit_detached(
        &self,
        item: I,
        done: impl FnOnce(O) + Send + 'static,
        commit: impl Fn(Vec<I>) -> Vec<O>,
    ) {
        let slot = Arc::new(Slot::new());
        *slot.detached.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(done));
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.pending.push((slot, item));
        if !g.committing {
            drop(self.lead(g, &commit));
        }
    }

    /// Commit batches as the leader (`g.committing` is false on entry): one, then
    /// more while only detached items wait (nobody else would take them); then the
    /// first waiting writer leads the next batch.
    fn lead<'a>(
        &'a self,
        mut g: std::sync::MutexGuard<'a, State<I, O>>,
        commit: &impl Fn(Vec<I>) -> Vec<O>,
    ) -> std::sync::MutexGuard<'a, State<I, O>> {
        loop {
            g.committing = true;
            let n = g.pending.len().min(MAX_BATCH);
            let (slots, items): (Vec<Arc<Slot<O>>>, Vec<I>) = g.pending.drain(..n).unzip();
            drop(g);
            let results = commit(items);
            for (s, r) in slots.iter().zip(results) {
                s.put(Some(r));
            }
            g = self.state.lock().unwrap_or_else(|p| p.into_inner());
            g.committing = false;
            // Whoever waits first leads the next batch.
            match g.pending.iter().find(|(s, _)| !s.is_detached()) {
                Some((next, _)) => {
                    next.put(None);
                    return g;
                }
                None if g.pending.is_empty() => return g,
                None => {}
            }
        }
    }
}

/// The group-commit queue of request rows.
#[derive(Default)]
pub(crate) struct Batcher(Queue<NewRequest, Result<i64, LedgerError>>);

impl Batcher {
    /// Write `row` through `backend`, with whatever rows arrive alongside it; its
    /// row id once committed.
    pub(crate) fn write(&self, backend: &dyn Backend, row: NewRequest) -> Result<i64, LedgerError> {
        self.0.submit(row, |rows| commit_rows(backend, rows))
    }
}

fn commit_rows(backend: &dyn Backend, rows: Vec<NewRequest>) -> Vec<Result<i64, LedgerError>> {
    match backend.insert_requests(&rows) {
        Ok(ids) if ids.len() == rows.len() => ids.into_iter().map(Ok).collect(),
        Err(e) if rows.len() == 1 => vec![Err(e)],
        // The batch failed as a whole: find which rows are at fault.
        _ => rows
            .iter()
            .map(|r| {
                backend
                    .insert_requests(std::slice::from_ref(r))
                    .map(|ids| ids.first().copied().unwrap_or_default())
            })
            .collect(),
    }
}

/// The group-commit queue of run bookkeeping: concurrent reservations share one
/// transaction (and, on PostgreSQL, one round of budget locks).
#[derive(Default)]
pub(crate) struct Bookkeeper(Queue<BookOp, Result<(), Refused>>);

impl Bookkeeper {
    /// Apply `op` through `backend`, with whatever ops arrive alongside it.
    pub(crate) fn apply(&self, backend: &dyn Backend, op: BookOp) -> Result<(), Refused> {
        self.0.submit(op, |ops| commit_ops(backend, ops))
    }

    /// Apply `op` with the batch being formed (or the next one) without waiting for
    /// it; `done` gets its result.
    pub(crate) fn apply_detached(
        &self,
        backend: &dyn Backend,
        op: BookOp,
        done: impl FnOnce(Result<(), Refused>) + Send + 'static,
    ) {
        self.0
            .submit_detached(op, done, |ops| commit_ops(backend, ops))
    }
}

fn commit_ops(backend: &dyn Backend, ops: Vec<BookOp>) -> Vec<Result<(), Refused>> {
    match backend.book(&ops) {
        Ok(out) if out.len() == ops.len() => out,
        Err(e) if ops.len() == 1 => vec![Err(Refused::Ledger(e))],
        // The batch failed as a whole: each op alone, so one bad op fails alone.
        _ => ops
            .iter()
            .map(|op| match backend.book(std::slice::from_ref(op)) {
                Ok(mut out) if out.len() == 1 => out.remove(0),
                Ok(_) => Err(Refused::Ledger(LedgerError::Backend {
                    place: backend.place().to_string(),
                    detail: "the ledger answered a bookkeeping batch with the wrong count".into(),
                })),
                Err(e) => Err(Refused::Ledger(e)),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::Queue;
    use std::sync::mpsc;
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    /// A detached item queued while a commit runs is committed by that leader once
    /// its batch is done, although nobody else submits anything.
    #[test]
    fn a_detached_item_is_committed_without_another_writer() {
        let q: Arc<Queue<u32, u32>> = Arc::default();
        let (entered, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let leader = {
            let (q, entered, release) = (q.clone(), entered.clone(), release.clone());
            std::thread::spawn(move || {
                q.submit(1, |items| {
                    if items == [1] {
                        entered.wait();
                        release.wait();
                    }
                    items.iter().map(|i| i * 10).collect()
                })
            })
        };
        entered.wait();
        // The leader is inside its commit: this returns at once.
        let (tx, rx) = mpsc::channel();
        q.submit_detached(2, move |r| tx.send(r).unwrap(), |_| unreachable!());
        assert!(rx.try_recv().is_err());
        release.wait();
        assert_eq!(leader.join().unwrap(), 10);
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap(), 20);
        // With no commit running, the caller commits it itself.
        let (tx, rx) = mpsc::channel();
        q.submit_detached(
            3,
            move |r| tx.send(r).unwrap(),
            |items| items.iter().map(|i| i * 10).collect(),
        );
        assert_eq!(rx.try_recv().unwrap(), 30);
    }
}
