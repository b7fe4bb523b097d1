//! The accept loop: `TCP_NODELAY` on every socket, a connection cap, a
//! header timeout (hyper's, which also closes a keep-alive connection idle
//! between requests) and a write-stall timeout (a client that stops reading
//! a response). Body timeouts are applied where bodies are read
//! ([`super::read_body`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use super::pace::Pace;

/// Limits of the HTTP face. Every one is on by default.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections at once; the next one gets a 503 and is closed.
    pub max_connections: usize,
    /// Time for a request's headers, counted from when the connection starts
    /// waiting for a request (so also the keep-alive idle timeout).
    pub header_timeout: Duration,
    /// Time for a whole request body.
    pub body_timeout: Duration,
    /// A connection whose response accepts no bytes for this long is closed.
    pub idle_timeout: Duration,
    /// Requests in one JSON-RPC batch.
    pub max_batch: usize,
    /// Upstream calls one HTTP request may start (models × repeat, summed over a batch).
    pub max_fanout: usize,
    /// Requests in flight from one client address.
    pub max_per_client: usize,
    /// The longest a stream holds a frame while the server is behind (zero:
    /// never); see [`super::pace`].
    pub hold_under_load: Duration,
}

/// Default `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default `--header-timeout`, seconds.
pub const DEFAULT_HEADER_TIMEOUT: f64 = 10.0;
/// Default `--body-timeout`, seconds.
pub const DEFAULT_BODY_TIMEOUT: f64 = 30.0;
/// Default `--idle-timeout`, seconds.
pub const DEFAULT_IDLE_TIMEOUT: f64 = 60.0;
/// Default `--max-batch`.
pub const DEFAULT_MAX_BATCH: usize = 100;
/// Default `--max-fanout`.
pub const DEFAULT_MAX_FANOUT: usize = 100;
/// Default `--max-per-client`.
pub const DEFAULT_MAX_PER_CLIENT: usize = 2048;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: Duration::from_secs_f64(DEFAULT_HEADER_TIMEOUT),
            body_timeout: Duration::from_secs_f64(DEFAULT_BODY_TIMEOUT),
            idle_timeout: Duration::from_secs_f64(DEFAULT_IDLE_TIMEOUT),
            max_batch: DEFAULT_MAX_BATCH,
            max_fanout: DEFAULT_MAX_FANOUT,
            max_per_client: DEFAULT_MAX_PER_CLIENT,
            hold_under_load: Duration::from_secs_f64(super::pace::DEFAULT_HOLD_MS / 1000.0),
        }
    }
}

/// The answer to a connection over the cap.
const REFUSED: &str = "{\"error\":{\"message\":\"too many connections (the server's --max-connections); retry later\",\"type\":\"api_error\",\"param\":null,\"code\":\"too_many_connections\"}}";

fn refused_response() -> Vec<u8> {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{REFUSED}",
        REFUSED.len()
    )
    .into_bytes()
}

/// Listen on the first of `addrs` that binds, with an accept queue of
/// `max_connections` (at least 1,024; the kernel caps it at `somaxconn`).
/// Tokio's `TcpListener::bind` asks for 1,024: a burst of 1,000 clients
/// overflowed it while the accept loop was busy, and every dropped SYN cost
/// its client a one-second retransmission.
pub fn bind(addrs: &[SocketAddr], max_connections: usize) -> io::Result<TcpListener> {
    let backlog = u32::try_from(max_connections.clamp(1024, 65_535)).unwrap_or(65_535);
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to listen on");
    for a in addrs {
        let sock = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        };
        let bound = sock.and_then(|s| {
            #[cfg(unix)]
            s.set_reuseaddr(true)?;
            s.bind(*a)?;
            s.listen(backlog)
        });
        match bound {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Serve `app` on `listener` until `stop` is cancelled, then stop accepting
/// and ask every connection to finish its request and close. Returns when
/// every connection is closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    pace: Arc<Pace>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Every connection task holds a receiver; `closed()` resolves when all are gone.
    let (close_tx, close_rx) = watch::channel(());
    loop {
        let (sock, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = sock.set_nodelay(true);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(sock));
            continue;
        };
        let app = app.clone();
        let stop = stop.clone();
        let limits = limits.clone();
        let close_rx = close_rx.clone();
        let waiting = pace.arrived();
        tokio::spawn(async move {
            // The runtime got to this connection: it is off the backlog.
            drop(waiting);
            connection(sock, peer, app, &limits, stop).await;
            drop(permit);
            drop(close_rx);
        });
    }
    drop(listener);
    drop(close_rx);
    close_tx.closed().await;
}

async fn refuse(mut sock: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        sock.write_all(&refused_response()).await?;
        sock.shutdown().await?;
        // Drain what the client sent, so that closing does not reset the
        // connection before it reads the answer.
        let mut buf = [0u8; 4096];
        while sock.read(&mut buf).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

async fn connection(
    sock: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: &Limits,
    stop: CancellationToken,
) {
    let io = TokioIo::new(StallGuard::new(sock, limits.idle_timeout));
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move { app.call(req.map(axum::body::Body::new)).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(io, svc);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A socket whose writes fail with `TimedOut` once they have been blocked
/// (the client reads nothing) for longer than the limit.
struct StallGuard {
    inner: TcpStream,
    limit: Duration,
    stall: Option<Pin<Box<Sleep>>>,
    stalled: bool,
}

impl StallGuard {
    fn new(inner: TcpStream, limit: Duration) -> Self {
        StallGuard {
            inner,
            limit,
            stall: None,
            stalled: false,
        }
    }

    /// Track a write's outcome: progress disarms the timer, `Pending` arms it.
    fn track<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => {
                let deadline = tokio::time::Instant::now() + self.limit;
                if !self.stalled {
                    self.stalled = true;
                    match &mut self.stall {
                        Some(s) => s.as_mut().reset(deadline),
                        None => self.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                if let Some(s) = &mut self.stall {
                    if s.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client read nothing for --idle-timeout",
                        )));
                    }
                }
                Poll::Pending
            }
            r => {
                self.stalled = false;
                r
            }
        }
    }
}

impl AsyncRead for StallGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallGuard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.track(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
