//! New requests before streams already flowing, while the server is behind.
//!
//! When connections are accepted faster than the runtime gets to them (a burst
//! of clients on a saturated core), every relayed chunk of a stream already
//! under way competes for the same CPU as the new requests' setup, and each
//! new client waits for its first token behind thousands of chunks of others.
//! So, while the server is *behind*, a stream that has already sent its first
//! frame *holds* its next one: it is not relayed now but when the server has
//! caught up, or after at most `hold` (`--hold-under-load`), whichever is
//! first (to the millisecond). What the upstream sends meanwhile waits in the
//! upstream socket; nothing is lost or reordered.
//!
//! The server is behind while an accepted connection waits for its task's
//! first poll, and, after a connection waited [`BEHIND`] or more for it, for
//! [`BEHIND_FOR`] while any request is still *starting* (between the
//! handler's start and its response's head: for a chat completion stream,
//! its first token).
//! A server that keeps up never holds anything: its connections are polled
//! within microseconds, whether or not their clients have sent a request (so
//! idle connections cannot hold other streams). No stream waits longer than
//! `hold` per frame however long the server stays behind, and a stream holds
//! again only [`REHOLD`] times `hold` after its last hold began: however long
//! the server stays behind (an overload that lasts, not a burst), a stream is
//! held at most about a tenth of the time, instead of crawling at one frame per
//! `hold`.
//!
//! The cost when nothing is held is one or two atomic loads per relayed frame.
//! Measured (`benches/serve_burst.sh`, 1,000 streams on one core after 100):
//! see the README and issue #14's notes.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

/// How often held streams are looked at: the server may have caught up.
const TICK: Duration = Duration::from_millis(1);

/// A stream holds again only this many times `hold` after its last hold began.
pub const REHOLD: u32 = 10;

/// Default `--hold-under-load`, milliseconds. A held stream goes on as soon as
/// the server has caught up, so this only bounds the pause of a burst the
/// server cannot keep up with. Measured (`PRE100=1 benches/serve_burst.sh 5`,
/// one core, first 1,000-stream burst after 100; median TTFT, median of five
/// runs): 20 ms: 112 ms; 60: 101; 100: 100 (93–102), 200: 103 (81–104, wider);
/// the warm burst's 72 ms falls to 62 with 100. Wall and CPU unchanged.
pub const DEFAULT_HOLD_MS: f64 = 100.0;

/// A connection that waited this long for its task's first poll shows the
/// server is behind.
pub const BEHIND: Duration = Duration::from_millis(1);

/// How long such a wait counts, while requests are starting.
pub const BEHIND_FOR: Duration = Duration::from_millis(50);

/// One server's backlog and held streams.
#[derive(Debug)]
pub struct Pace {
    /// Accepted connections whose task has not run yet.
    waiting: AtomicUsize,
    /// Requests between their handler's start and their response's head.
    starting: AtomicUsize,
    /// When a connection last waited [`BEHIND`] or more for its first poll,
    /// in milliseconds after `born` (0: never).
    behind_at: AtomicU64,
    born: Instant,
    /// The longest a stream holds a frame; zero: never.
    hold: Duration,
    held: Mutex<Held>,
    /// Frames held so far (for `/metrics`).
    holds: AtomicU64,
}

#[derive(Debug, Default)]
struct Held {
    /// Held streams: when each hold is over, its mark, its waker.
    parked: Vec<(Instant, Arc<AtomicBool>, Waker)>,
    /// Whether a ticker task is running.
    ticking: bool,
}

/// A stream's side of [`Pace::hold`].
#[derive(Debug, Default)]
pub struct Holding {
    /// When this stream's current frame was first held.
    since: Option<Instant>,
    /// When its last hold began.
    last: Option<Instant>,
    /// Set while its waker is parked (cleared by whoever wakes it).
    parked: Option<Arc<AtomicBool>>,
}

impl Holding {
    /// The stream sent a frame: its next one may be held afresh.
    pub fn sent(&mut self) {
        self.since = None;
    }
}

/// An accepted connection whose task has not run yet; dropping it (first
/// thing in the task) takes it off the backlog.
#[derive(Debug)]
pub struct Waiting {
    pace: Arc<Pace>,
    accepted: Instant,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.pace.waiting.fetch_sub(1, Ordering::Relaxed);
        if self.accepted.elapsed() >= BEHIND {
            self.pace
                .behind_at
                .store(self.pace.now_ms().max(1), Ordering::Relaxed);
        }
    }
}

/// A request that has not yet produced its response's head.
#[derive(Debug)]
pub struct Starting(Arc<Pace>);

impl Drop for Starting {
    fn drop(&mut self) {
        self.0.starting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pace {
    /// A pace that holds a stream's frame for at most `hold` (zero: never).
    pub fn new(hold: Duration) -> Arc<Pace> {
        Arc::new(Pace {
            waiting: AtomicUsize::new(0),
            starting: AtomicUsize::new(0),
            behind_at: AtomicU64::new(0),
            born: Instant::now(),
            hold,
            held: Mutex::new(Held::default()),
            holds: AtomicU64::new(0),
        })
    }

    /// A connection was accepted; it is on the backlog until the guard drops.
    pub fn arrived(self: &Arc<Self>) -> Waiting {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting {
            pace: self.clone(),
            accepted: Instant::now(),
        }
    }

    /// A request's handler started; it is starting until the guard drops
    /// (when its response's head is ready).
    pub fn starting(self: &Arc<Self>) -> Starting {
        self.starting.fetch_add(1, Ordering::Relaxed);
        Starting(self.clone())
    }

    /// Frames held so far.
    pub fn holds(&self) -> u64 {
        self.holds.load(Ordering::Relaxed)
    }

    /// Accepted connections whose task has not run yet.
    pub fn backlog(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the server is behind (see the module's doc).
    #[inline]
    pub fn behind(&self) -> bool {
        if self.backlog() > 0 {
            return true;
        }
        if self.starting.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.behind_lately()
    }

    #[inline(never)]
    fn behind_lately(&self) -> bool {
        let at = self.behind_at.load(Ordering::Relaxed);
        at > 0 && u128::from(self.now_ms().saturating_sub(at)) < BEHIND_FOR.as_millis()
    }

    /// Whether a stream should hold its next frame now. When it should, the
    /// task is woken again when the server has caught up or the hold is over (the
    /// caller returns `Pending`). Call it only where returning `Pending` loses
    /// nothing: after the stream's first frame, with nothing of its own queued.
    #[inline]
    pub fn hold(self: &Arc<Self>, h: &mut Holding, cx: &Context<'_>) -> bool {
        if self.hold.is_zero() || !self.behind() {
            h.since = None;
            return false;
        }
        self.hold_behind(h, cx)
    }

    /// [`Pace::hold`] while the server is behind.
    #[inline(never)]
    fn hold_behind(self: &Arc<Self>, h: &mut Holding, cx: &Context<'_>) -> bool {
        let now = Instant::now();
        let since = match h.since {
            Some(since) => since,
            None => {
                if h.last
                    .is_some_and(|l| now.saturating_duration_since(l) < self.hold * REHOLD)
                {
                    return false;
                }
                h.last = Some(now);
                self.holds.fetch_add(1, Ordering::Relaxed);
                *h.since.insert(now)
            }
        };
        if now.saturating_duration_since(since) >= self.hold {
            return false;
        }
        let mark = h.parked.get_or_insert_with(Arc::default);
        if mark.swap(true, Ordering::AcqRel) {
            // Parked already (woken by its upstream meanwhile, say).
            return true;
        }
        let Ok(mut held) = self.held.lock() else {
            mark.store(false, Ordering::Release);
            return false;
        };
        held.parked
            .push((since + self.hold, mark.clone(), cx.waker().clone()));
        if !held.ticking {
            held.ticking = true;
            tokio::spawn(tick(self.clone()));
        }
        true
    }

    /// Wake the held streams whose hold is over (all of them once the
    /// server has caught up); whether the ticker should go on.
    fn look(&self) -> bool {
        let Ok(mut held) = self.held.lock() else {
            return false;
        };
        let now = Instant::now();
        let all = !self.behind();
        // In place: a tick that wakes nothing allocates nothing.
        let mut due = Vec::new();
        held.parked.retain_mut(|(until, mark, waker)| {
            let go = all || *until <= now;
            if go {
                mark.store(false, Ordering::Release);
                due.push(std::mem::replace(waker, Waker::noop().clone()));
            }
            !go
        });
        let more = !held.parked.is_empty();
        held.ticking = more;
        drop(held);
        for waker in due {
            waker.wake();
        }
        more
    }
}

async fn tick(pace: Arc<Pace>) {
    loop {
        tokio::time::sleep(TICK).await;
        if !pace.look() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::task::Poll;

    /// Polls `hold` until it lets the stream go; how many times the task was
    /// woken in between.
    async fn held_until_released(pace: &Arc<Pace>, h: &mut Holding) -> usize {
        let mut polls = 0;
        let released = poll_fn(|cx| {
            polls += 1;
            if pace.hold(h, cx) {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        });
        tokio::time::timeout(Duration::from_secs(60), released)
            .await
            .expect("the stream is released");
        polls - 1
    }

    #[tokio::test]
    async fn nothing_is_held_without_a_backlog_or_a_hold() {
        let pace = Pace::new(Duration::from_secs(60));
        let mut h = Holding::default();
        assert_eq!(held_until_released(&pace, &mut h).await, 0);
        let off = Pace::new(Duration::ZERO);
        let _w = off.arrived();
        assert_eq!(off.backlog(), 1);
        assert_eq!(held_until_released(&off, &mut h).await, 0);
    }

    #[tokio::test]
    async fn a_held_stream_goes_on_when_the_backlog_is_gone() {
        // A hold far longer than the test: only the backlog's end can release it.
        let pace = Pace::new(Duration::from_secs(3600));
        let w = pace.arrived();
        let p2 = pace.clone();
        let held = tokio::spawn(async move {
            let mut h = Holding::default();
            held_until_released(&p2, &mut h).await
        });
        // Wait until the stream is parked, then clear the backlog.
        while pace.held.lock().unwrap().parked.is_empty() {
            tokio::task::yield_now().await;
        }
        assert!(!held.is_finished());
        drop(w);
        let held = tokio::time::timeout(Duration::from_secs(60), held);
        assert_eq!(pace.backlog(), 0);
        assert!(held.await.expect("released").unwrap() >= 1);
        // The ticker stops once nothing is held.
        while pace.held.lock().unwrap().ticking {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_stream_is_held_no_longer_than_the_hold_however_long_the_backlog() {
        let hold = Duration::from_millis(30);
        let pace = Pace::new(hold);
        let _w = pace.arrived();
        let mut h = Holding::default();
        let cooldown = hold * REHOLD;
        // Holds beyond one per round: only when this machine was so slow
        // that the cool-down had passed before the stream was polled again.
        let mut late = 0;
        for _ in 0..3 {
            let t = Instant::now();
            assert!(held_until_released(&pace, &mut h).await >= 1);
            assert!(t.elapsed() >= hold, "released early: {:?}", t.elapsed());
            let began = h.last.expect("the hold's start is kept");
            // It sent a frame. The next ones flow until REHOLD holds have
            // passed since this hold began; then one is held afresh.
            h.sent();
            if held_until_released(&pace, &mut h).await > 0 {
                assert!(
                    began.elapsed() >= cooldown,
                    "held again after {:?}",
                    began.elapsed()
                );
                late += 1;
                h.sent();
            }
            let began = h.last.expect("the hold's start is kept");
            while began.elapsed() < cooldown {
                tokio::time::sleep(cooldown - began.elapsed()).await;
            }
        }
        assert_eq!(pace.backlog(), 1);
        assert_eq!(pace.holds(), 3 + late, "one hold per {cooldown:?}");
    }

    #[test]
    fn a_connection_that_waited_marks_the_server_behind_while_requests_start() {
        let pace = Pace::new(Duration::from_secs(1));
        // Polled at once: not behind, whatever is starting.
        let t = Instant::now();
        drop(pace.arrived());
        let s = pace.starting();
        if t.elapsed() < BEHIND {
            assert!(!pace.behind());
        }
        drop(s);
        // A connection that waited for its first poll.
        let w = pace.arrived();
        assert!(pace.behind(), "a connection is waiting");
        std::thread::sleep(BEHIND * 2);
        let t0 = Instant::now();
        drop(w);
        assert!(!pace.behind(), "nothing is starting");
        let s = pace.starting();
        let behind = pace.behind();
        if t0.elapsed() < BEHIND_FOR / 2 {
            assert!(behind, "a request is starting after a wait");
        }
        // It counts for BEHIND_FOR only.
        while pace.behind() {
            assert!(t0.elapsed() < Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(t0.elapsed() + Duration::from_millis(1) >= BEHIND_FOR);
        drop(s);
    }

    #[tokio::test]
    async fn a_stream_repolled_while_held_parks_once() {
        let pace = Pace::new(Duration::from_secs(3600));
        let w = pace.arrived();
        let waker = futures_util::task::noop_waker();
        let cx = Context::from_waker(&waker);
        let mut h = Holding::default();
        for _ in 0..5 {
            assert!(pace.hold(&mut h, &cx));
        }
        assert_eq!(pace.held.lock().unwrap().parked.len(), 1);
        assert_eq!(pace.holds(), 1, "one frame held");
        drop(w);
        assert!(!pace.hold(&mut h, &cx));
    }
}
