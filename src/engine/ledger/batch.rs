//! Group commit: requests that finish together share one transaction (and one fsync).
//!
//! The first writer to arrive while no commit is running becomes the leader: it takes
//! every row waiting, writes them in one transaction, hands each writer its own result
//! and wakes them. Writers that arrive meanwhile wait and are taken by the next leader.
//! Nobody returns before the transaction holding its row committed, so a row is still
//! durable before its answer is released. When a batch fails as a whole, its rows are
//! retried one by one, so one bad row (say, too large) never fails its neighbours.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

use super::{Backend, LedgerError, NewRequest};

#[derive(Default)]
struct State {
    next: u64,
    pending: Vec<(u64, NewRequest)>,
    done: HashMap<u64, Result<i64, LedgerError>>,
    committing: bool,
}

/// The group-commit queue of one ledger.
#[derive(Default)]
pub(crate) struct Batcher {
    state: Mutex<State>,
    cv: Condvar,
}

/// The most rows one transaction takes.
const MAX_BATCH: usize = 512;

impl Batcher {
    /// Write `row` through `backend`, with whatever rows arrive alongside it; its
    /// row id once committed.
    pub(crate) fn write(&self, backend: &dyn Backend, row: NewRequest) -> Result<i64, LedgerError> {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = g.next;
        g.next += 1;
        g.pending.push((ticket, row));
        loop {
            if let Some(r) = g.done.remove(&ticket) {
                return r;
            }
            if !g.committing {
                g.committing = true;
                let n = g.pending.len().min(MAX_BATCH);
                let batch: Vec<(u64, NewRequest)> = g.pending.drain(..n).collect();
                drop(g);
                let results = commit(backend, batch);
                g = self.state.lock().unwrap_or_else(|p| p.into_inner());
                g.done.extend(results);
                g.committing = false;
                self.cv.notify_all();
                continue;
            }
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

fn commit(
    backend: &dyn Backend,
    batch: Vec<(u64, NewRequest)>,
) -> Vec<(u64, Result<i64, LedgerError>)> {
    let (tickets, rows): (Vec<u64>, Vec<NewRequest>) = batch.into_iter().unzip();
    match backend.insert_requests(&rows) {
        Ok(ids) if ids.len() == rows.len() => {
            tickets.into_iter().zip(ids.into_iter().map(Ok)).collect()
        }
        Err(e) if rows.len() == 1 => vec![(tickets[0], Err(e))],
        // The batch failed as a whole: find which rows are at fault.
        _ => tickets
            .into_iter()
            .zip(rows)
            .map(|(t, r)| {
                let one = backend
                    .insert_requests(std::slice::from_ref(&r))
                    .map(|ids| ids.first().copied().unwrap_or_default());
                (t, one)
            })
            .collect(),
    }
}
