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

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

use super::{Backend, BookOp, LedgerError, NewRequest, Refused};

struct State<I, O> {
    next: u64,
    pending: Vec<(u64, I)>,
    done: HashMap<u64, O>,
    committing: bool,
}

impl<I, O> Default for State<I, O> {
    fn default() -> Self {
        State {
            next: 0,
            pending: Vec::new(),
            done: HashMap::new(),
            committing: false,
        }
    }
}

/// A group-commit queue of items `I` with results `O`.
pub(crate) struct Queue<I, O> {
    state: Mutex<State<I, O>>,
    cv: Condvar,
}

impl<I, O> Default for Queue<I, O> {
    fn default() -> Self {
        Queue {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        }
    }
}

/// The most items one transaction takes.
const MAX_BATCH: usize = 512;

impl<I, O> Queue<I, O> {
    /// Commit `item` with whatever items arrive alongside it, through `commit` (which
    /// returns one result per item, in order); `item`'s result once committed.
    pub(crate) fn submit(&self, item: I, commit: impl Fn(Vec<I>) -> Vec<O>) -> O {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = g.next;
        g.next += 1;
        g.pending.push((ticket, item));
        loop {
            if let Some(r) = g.done.remove(&ticket) {
                return r;
            }
            if !g.committing {
                g.committing = true;
                let n = g.pending.len().min(MAX_BATCH);
                let (tickets, items): (Vec<u64>, Vec<I>) = g.pending.drain(..n).unzip();
                drop(g);
                let results = commit(items);
                g = self.state.lock().unwrap_or_else(|p| p.into_inner());
                g.done.extend(tickets.into_iter().zip(results));
                g.committing = false;
                self.cv.notify_all();
                continue;
            }
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
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
