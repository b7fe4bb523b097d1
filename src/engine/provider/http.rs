//! One attempt of one request: send it, check the status, decode the body,
//! and hand out deltas one at a time, enforcing the first-token, idle and
//! total timeouts. Dropping an [`Attempt`] drops the response body, which
//! closes the connection: that is how cancellation works.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use super::mask::Masker;
use super::{mock, ProviderKind, ProviderSpec, StreamDecoder};
use crate::engine::error::{EngineError, TimeoutPhase};
use crate::engine::event::Delta;
use crate::engine::request::ChatRequest;
use crate::engine::tokens::TokenEstimator;
use crate::engine::wire::{NdjsonDecoder, SseDecoder};

/// Timeouts of one attempt. `None` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From sending until the first delta (headers included).
    pub first_token: Option<Duration>,
    /// Longest gap between two chunks once streaming (stall detection).
    pub idle: Option<Duration>,
    /// The whole attempt.
    pub total: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            first_token: Some(Duration::from_secs(60)),
            idle: Some(Duration::from_secs(60)),
            total: Some(Duration::from_secs(600)),
        }
    }
}

/// What one request may take from an upstream, whatever it sends. The
/// defaults are far above any real answer; they stop a broken or hostile
/// upstream from filling memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseCaps {
    /// Bytes of an error body read (the rest is never read).
    pub max_error_body: usize,
    /// Bytes of an answer, streamed or whole; beyond it the request stops
    /// with `response_too_large`, the partial answer kept.
    pub max_response_bytes: u64,
    /// An answer stops with `response_too_large` once its running token
    /// count passes this many times `max_tokens` (plus 256); 0 turns it off.
    pub max_tokens_factor: u64,
}

/// Default cap of an error body read: 64 KiB.
pub const MAX_ERROR_BODY: usize = 64 << 10;
/// Default cap of an answer: 16 MiB.
pub const MAX_RESPONSE_BYTES: u64 = 16 << 20;

impl Default for ResponseCaps {
    fn default() -> Self {
        ResponseCaps {
            max_error_body: MAX_ERROR_BODY,
            max_response_bytes: MAX_RESPONSE_BYTES,
            max_tokens_factor: 4,
        }
    }
}

/// How one attempt runs: its timeouts, its caps, and the deadline of the
/// whole request (all attempts and the waits between them) when there is one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttemptOptions {
    /// Per-attempt timeouts.
    pub timeouts: Timeouts,
    /// Resource caps.
    pub caps: ResponseCaps,
    /// When the whole request must be over, and the limit it comes from
    /// (reported in the error): `--timeout` / `total_secs` across retries.
    pub deadline: Option<(Instant, Duration)>,
}

/// Per-call context sent as headers: W3C trace context and a request id.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// `traceparent` header value.
    pub traceparent: Option<String>,
    /// `tracestate` header value (sent only with a `traceparent`).
    pub tracestate: Option<String>,
    /// `x-request-id` header value.
    pub request_id: Option<String>,
}

struct HttpBody {
    resp: Resp,
    /// The first chunk, read at the start to tell SSE from a whole JSON answer.
    first: Option<bytes::Bytes>,
    framing: super::Framing,
    sse: SseDecoder,
    nd: NdjsonDecoder,
    decoder: Box<dyn StreamDecoder>,
}

enum Body {
    Http(Box<HttpBody>),
    Mock(mock::MockStream),
    Done,
}

/// A request in flight.
pub struct Attempt {
    body: Body,
    /// Deltas read and not taken yet, the next one last (a chunk's deltas are
    /// decoded straight into it, then turned around).
    pending: Vec<Delta>,
    timeouts: Timeouts,
    started: Instant,
    deadline: Option<Instant>,
    got_first: bool,
    trailing: Option<EngineError>,
    /// Masks the secrets we sent in everything the upstream sends back.
    masker: Arc<Masker>,
    caps: ResponseCaps,
    /// The output so far, against the cap far past `max_tokens`.
    out: OutputCount,
    /// The total limit to name in a timeout error.
    total_after: Option<Duration>,
    /// The first-token / idle / total timer of the HTTP body (see `fill`).
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Whether `timer` holds the task's current waker.
    timer_polled: PolledWith,
    /// Bytes received so far.
    pub bytes: u64,
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("bytes", &self.bytes)
            .finish()
    }
}

/// The output of an attempt counted against its cap (an answer far past
/// `max_tokens`): the larger of the provider's running count and a local,
/// lower-leaning one ([`TokenEstimator`]).
#[derive(Debug)]
struct OutputCount {
    cap: Option<u64>,
    est: TokenEstimator,
    /// `est`'s count when it was last fed.
    counted: u64,
    /// Output that arrived since, not fed to `est` yet. Each byte adds at most
    /// one token to the count, so while `counted` plus these bytes stays within
    /// the cap the count cannot pass it, and counting waits (up to
    /// [`UNFED_MAX`] bytes): the estimator runs once per few KB of answer
    /// instead of once per chunk.
    unfed: String,
    /// Output tokens as last reported by the provider (running).
    provider: u64,
}

/// Output bytes an [`OutputCount`] keeps before it counts them anyway.
const UNFED_MAX: usize = 4096;

impl OutputCount {
    fn new(cap: Option<u64>) -> Self {
        OutputCount {
            cap,
            est: TokenEstimator::new(),
            counted: 0,
            unfed: String::new(),
            provider: 0,
        }
    }

    /// Count what a delta says about the output.
    fn observe(&mut self, d: &Delta) {
        let text = match d {
            Delta::Text(t) | Delta::Thinking(t) | Delta::Refusal(t) => t,
            Delta::ToolCall { arguments, .. } => arguments,
            Delta::Usage(u) => {
                self.provider = u.output_tokens;
                return;
            }
            _ => return,
        };
        // Without a cap nothing reads the count.
        let Some(cap) = self.cap else { return };
        self.unfed.push_str(text);
        // Fed in pieces of a few KB at most, so the text kept stays small
        // whatever the cap.
        if self.unfed.len() >= UNFED_MAX
            || self.counted.saturating_add(self.unfed.len() as u64) > cap
        {
            self.est.push(&self.unfed);
            self.unfed.clear();
            self.counted = self.est.tokens();
        }
    }

    /// The error once the output is past the cap.
    fn past_cap(&self) -> Option<EngineError> {
        let cap = self.cap?;
        // `counted` is exact whenever the count could be past the cap.
        let n = self.provider.max(self.counted);
        (n > cap).then(|| EngineError::ResponseTooLarge {
            message: format!(
                "about {n} output tokens, far past max_tokens (the cap is {cap}); the partial answer is kept"
            ),
        })
    }
}

impl Attempt {
    /// Send the request and wait for the response headers. Errors never
    /// carry the key, even when the provider echoes it.
    pub async fn start(
        client: &reqwest::Client,
        spec: &ProviderSpec,
        model: &str,
        req: &ChatRequest,
        stream: bool,
        timeouts: Timeouts,
        ctx: &CallContext,
    ) -> Result<Attempt, EngineError> {
        let opts = AttemptOptions {
            timeouts,
            ..Default::default()
        };
        let via = Via {
            client,
            plain: None,
        };
        Self::start_via(via, spec, model, req, stream, &opts, ctx).await
    }

    /// [`Attempt::start`] with caps and a deadline over the whole request, through
    /// `lease`: a plain `http://` endpoint is sent to by hyper's client directly,
    /// without reqwest's layers (see [`PlainClient`]).
    pub async fn start_leased(
        lease: &ClientLease,
        spec: &ProviderSpec,
        model: &str,
        req: &ChatRequest,
        stream: bool,
        opts: &AttemptOptions,
        ctx: &CallContext,
    ) -> Result<Attempt, EngineError> {
        let via = Via {
            client: &lease.client,
            plain: lease.plain.as_ref(),
        };
        Self::start_via(via, spec, model, req, stream, opts, ctx).await
    }

    async fn start_via(
        via: Via<'_>,
        spec: &ProviderSpec,
        model: &str,
        req: &ChatRequest,
        stream: bool,
        opts: &AttemptOptions,
        ctx: &CallContext,
    ) -> Result<Attempt, EngineError> {
        let masker = if spec.kind == ProviderKind::Mock {
            Arc::new(Masker::default())
        } else {
            Masker::for_spec(spec)
        };
        match Self::start_inner(via, spec, model, req, stream, opts, ctx, &masker).await {
            Ok(a) => Ok(a),
            Err(e) => Err(masker.mask_error(e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_inner(
        via: Via<'_>,
        spec: &ProviderSpec,
        model: &str,
        req: &ChatRequest,
        stream: bool,
        opts: &AttemptOptions,
        ctx: &CallContext,
        masker: &Arc<Masker>,
    ) -> Result<Attempt, EngineError> {
        let started = Instant::now();
        let timeouts = opts.timeouts;
        let own = timeouts.total.map(|t| (started + t, t));
        // The earlier of the attempt's own limit and the request's deadline.
        let (deadline, total_after) = match (own, opts.deadline) {
            (Some(a), Some(b)) => {
                let (d, t) = if b.0 < a.0 { b } else { a };
                (Some(d), Some(t))
            }
            (Some((d, t)), None) | (None, Some((d, t))) => (Some(d), Some(t)),
            (None, None) => (None, None),
        };
        let factor = opts.caps.max_tokens_factor;
        let mut attempt = Attempt {
            body: Body::Done,
            pending: Vec::new(),
            timeouts,
            started,
            deadline,
            got_first: false,
            trailing: None,
            masker: masker.clone(),
            caps: opts.caps,
            out: OutputCount::new(
                req.max_tokens
                    .filter(|_| factor > 0)
                    .map(|m| u64::from(m).saturating_mul(factor).saturating_add(256)),
            ),
            total_after,
            timer: None,
            timer_polled: PolledWith::default(),
            bytes: 0,
        };
        if spec.kind == ProviderKind::Mock {
            attempt.body = Body::Mock(mock::start(model, req, stream)?);
            return Ok(attempt);
        }
        // A kind that cannot stream (a templated API) is asked for the whole answer.
        let stream = stream && spec.kind.can_stream();
        let call = super::build_call(spec, model, req, stream)?;
        let mut headers = call.headers;
        if let Some(tp) = &ctx.traceparent {
            super::put_header(&mut headers, "traceparent", tp, false)?;
            if let Some(ts) = &ctx.tracestate {
                super::put_header(&mut headers, "tracestate", ts, false)?;
            }
        }
        if let Some(id) = &ctx.request_id {
            super::put_header(&mut headers, "x-request-id", id, false)?;
        }
        let body = serde_json::to_vec(&call.body).map_err(|e| EngineError::Protocol {
            message: format!("could not encode request: {e}"),
        })?;
        let send = via.send(&call.url, headers, bytes::Bytes::from(body));
        let limit = attempt.first_limit();
        let mut resp = match limit {
            Some((d, phase)) => match tokio::time::timeout(d, send).await {
                Ok(r) => r,
                Err(_) => return Err(attempt.timeout_error(phase)),
            },
            None => send.await,
        }?;
        let status = resp.status();
        if !status.is_success() {
            let headers = resp.headers().clone();
            let cap = attempt.caps.max_error_body;
            let read = read_capped(&mut resp, None, cap);
            let (bytes, truncated) = match limit {
                Some((d, _)) => tokio::time::timeout(d, read)
                    .await
                    .unwrap_or_else(|_| (Vec::new(), false)),
                None => read.await,
            };
            return Err(EngineError::from_http_masked(
                status.as_u16(),
                &headers,
                &bytes,
                truncated,
                masker,
            ));
        }
        // A whole JSON answer to a streaming request (a server that does
        // not stream, whatever content type it names) is read as the whole
        // answer it is: an SSE body never starts with `{` or `[`.
        let mut first: Option<bytes::Bytes> = None;
        let mut whole_json = false;
        if stream && spec.kind.framing() == super::Framing::Sse {
            let read = resp.chunk();
            let c = match limit {
                Some((d, phase)) => match tokio::time::timeout(d, read).await {
                    Ok(c) => c,
                    Err(_) => return Err(attempt.timeout_error(phase)),
                },
                None => read.await,
            }?;
            whole_json = c.as_ref().is_some_and(|c| {
                c.iter()
                    .find(|b| !b.is_ascii_whitespace())
                    .is_some_and(|b| matches!(b, b'{' | b'['))
            });
            first = c;
        }
        if stream && !whole_json {
            attempt.body = Body::Http(Box::new(HttpBody {
                resp,
                first,
                framing: spec.kind.framing(),
                sse: SseDecoder::new(),
                nd: NdjsonDecoder::new(),
                decoder: super::stream_decoder_for(spec, model),
            }));
        } else {
            let cap = attempt.caps.max_response_bytes;
            let read = read_capped(&mut resp, first, usize::try_from(cap).unwrap_or(usize::MAX));
            let (bytes, truncated) = match attempt.remaining_total() {
                Some(d) => tokio::time::timeout(d, read)
                    .await
                    .map_err(|_| attempt.timeout_error(TimeoutPhase::Total))?,
                None => read.await,
            };
            attempt.bytes = bytes.len() as u64;
            if truncated {
                return Err(too_large_bytes(cap));
            }
            let text = masker.mask_bytes(&bytes);
            let deltas = super::parse_response_for(spec, model, text.as_bytes())?;
            for d in &deltas {
                attempt.out.observe(d);
            }
            attempt.pending.extend(deltas.into_iter().rev());
        }
        Ok(attempt)
    }

    /// Whether deltas already read wait to be taken (the next one needs no
    /// read from the upstream).
    pub fn has_buffered(&self) -> bool {
        !self.pending.is_empty()
    }

    fn remaining_total(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The tighter of the phase limit and the total limit.
    fn first_limit(&self) -> Option<(Duration, TimeoutPhase)> {
        let phase = if self.got_first {
            self.timeouts.idle.map(|d| (d, TimeoutPhase::Idle))
        } else {
            self.timeouts
                .first_token
                .map(|d| (d, TimeoutPhase::FirstToken))
        };
        match (phase, self.remaining_total()) {
            (Some((p, _)), Some(t)) if t < p => Some((t, TimeoutPhase::Total)),
            (Some(p), _) => Some(p),
            (None, Some(t)) => Some((t, TimeoutPhase::Total)),
            (None, None) => None,
        }
    }

    fn timeout_error(&self, phase: TimeoutPhase) -> EngineError {
        timeout_error(&self.timeouts, self.total_after, phase)
    }

    /// Time since the attempt started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The next delta; `None` at the end of the response.
    pub async fn next(&mut self) -> Option<Result<Delta, EngineError>> {
        match self.next_inner().await {
            Some(Err(e)) => Some(Err(self.masker.mask_error(e))),
            other => other,
        }
    }

    async fn next_inner(&mut self) -> Option<Result<Delta, EngineError>> {
        loop {
            if let Some(d) = self.pending.pop() {
                if !self.got_first && is_content(&d) {
                    self.got_first = true;
                }
                return Some(Ok(d));
            }
            if let Some(e) = self.trailing.take() {
                return Some(Err(e));
            }
            match self.fill().await {
                Ok(true) => continue,
                Ok(false) => return None,
                Err(e) => {
                    self.body = Body::Done;
                    return Some(Err(e));
                }
            }
        }
    }

    /// Read more of the body into `pending`. Ok(false) at the end.
    async fn fill(&mut self) -> Result<bool, EngineError> {
        let limit = self.first_limit();
        match &mut self.body {
            Body::Done => Ok(false),
            Body::Mock(m) => {
                let fut = m.next();
                let item = match limit {
                    Some((d, phase)) => match tokio::time::timeout(d, fut).await {
                        Ok(x) => x,
                        Err(_) => return Err(self.timeout_error(phase)),
                    },
                    None => fut.await,
                };
                match item {
                    Some(Ok(d)) => {
                        self.pending.push(d);
                        Ok(true)
                    }
                    Some(Err(e)) => Err(e),
                    None => {
                        self.body = Body::Done;
                        Ok(false)
                    }
                }
            }
            Body::Http(h) => {
                let HttpBody {
                    resp,
                    first,
                    framing,
                    sse,
                    nd,
                    decoder,
                } = &mut **h;
                let pre = first.take();
                let fut = async {
                    match pre {
                        Some(c) => Ok(Some(c)),
                        None => resp.chunk().await,
                    }
                };
                let chunk = match limit {
                    Some((d, phase)) => {
                        // One timer per attempt, re-armed lazily: a stream of
                        // thousands of chunks costs one clock read per chunk,
                        // not a timer-wheel insert and removal each.
                        let deadline = Instant::now() + d;
                        let timer = match &mut self.timer {
                            Some(t) => {
                                if t.deadline() > deadline {
                                    t.as_mut().reset(deadline);
                                }
                                t
                            }
                            None => {
                                self.timer_polled.forget();
                                self.timer
                                    .insert(Box::pin(tokio::time::sleep_until(deadline)))
                            }
                        };
                        let polled = &mut self.timer_polled;
                        let mut fut = std::pin::pin!(fut);
                        let read = std::future::poll_fn(|cx| {
                            use std::future::Future;
                            use std::task::Poll;
                            if let Poll::Ready(x) = fut.as_mut().poll(cx) {
                                return Poll::Ready(Some(x));
                            }
                            loop {
                                // Once polled with this task's waker the timer wakes
                                // the task when due: until the waker changes or its
                                // time comes, a clock read says enough (polling it
                                // cost ~500 instructions per chunk).
                                if polled.holds(cx)
                                    && Instant::now() < timer.deadline()
                                    && !timer.is_elapsed()
                                {
                                    return Poll::Pending;
                                }
                                if timer.as_mut().poll(cx).is_pending() {
                                    return Poll::Pending;
                                }
                                if Instant::now() >= deadline {
                                    return Poll::Ready(None);
                                }
                                // Armed for an earlier wait: wait on to this one's end.
                                timer.as_mut().reset(deadline);
                                polled.forget();
                            }
                        })
                        .await;
                        match read {
                            Some(x) => x,
                            None => {
                                return Err(timeout_error(&self.timeouts, self.total_after, phase))
                            }
                        }
                    }
                    None => fut.await,
                }?;
                // Only called once everything read was taken.
                let out = &mut self.pending;
                debug_assert!(out.is_empty());
                // Every frame is masked before a decoder keeps or emits any of
                // it (a finish word, a tool id, an error snippet), and nothing is
                // cut before masking (`StreamDecoder::frame_unmasked`).
                let masker = &*self.masker;
                match chunk {
                    Some(bytes) => {
                        self.bytes += bytes.len() as u64;
                        let fed = match framing {
                            super::Framing::Sse => sse.feed(&bytes, |f| {
                                decoder.frame_unmasked(f.event, f.data, masker, out)
                            }),
                            _ => nd.feed(&bytes, |l| decoder.frame_unmasked("", l, masker, out)),
                        };
                        // Deltas decoded before a failing frame (earlier frames of
                        // the same chunk, or the failing frame's own) still count:
                        // deliver them, then the error.
                        for d in out.iter() {
                            self.out.observe(d);
                        }
                        out.reverse();
                        if let Err(e) = fed {
                            self.body = Body::Done;
                            self.trailing = Some(e);
                        } else if self.bytes > self.caps.max_response_bytes {
                            self.body = Body::Done;
                            self.trailing = Some(too_large_bytes(self.caps.max_response_bytes));
                        } else if let Some(e) = self.out.past_cap() {
                            self.body = Body::Done;
                            self.trailing = Some(e);
                        }
                        Ok(true)
                    }
                    None => {
                        let fed = match framing {
                            super::Framing::Sse => {
                                sse.finish(|f| decoder.frame_unmasked(f.event, f.data, masker, out))
                            }
                            _ => nd.finish(|l| decoder.frame_unmasked("", l, masker, out)),
                        }
                        .and_then(|()| decoder.end(out));
                        let done = decoder.is_done();
                        out.reverse();
                        self.body = Body::Done;
                        if let Err(e) = fed {
                            self.trailing = Some(e);
                        } else if !done {
                            // Deliver what we have, then report the cut.
                            self.trailing = Some(EngineError::Network {
                                message: "the stream ended before the provider's end marker (connection cut)".into(),
                            });
                        }
                        Ok(true)
                    }
                }
            }
        }
    }
}

/// The timeout error of `phase`, naming the limit that ran out.
fn timeout_error(t: &Timeouts, total_after: Option<Duration>, phase: TimeoutPhase) -> EngineError {
    let after = match phase {
        TimeoutPhase::FirstToken => t.first_token,
        TimeoutPhase::Idle => t.idle,
        TimeoutPhase::Total => total_after,
        TimeoutPhase::Connect => None,
    }
    .unwrap_or_default();
    EngineError::Timeout { phase, after }
}

/// Read at most `cap` bytes of a body; true when there was more.
async fn read_capped(resp: &mut Resp, first: Option<bytes::Bytes>, cap: usize) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut first = first;
    loop {
        let next = match first.take() {
            Some(c) => Ok(Some(c)),
            None => resp.chunk().await,
        };
        match next {
            Ok(Some(c)) => {
                if buf.len() + c.len() > cap {
                    buf.extend_from_slice(&c[..cap - buf.len()]);
                    return (buf, true);
                }
                buf.extend_from_slice(&c);
            }
            // A body cut mid-way still says what it said so far.
            Ok(None) | Err(_) => return (buf, false),
        }
    }
}

/// The waker a waiter (a timer, a cancellation waiter) was last polled with. Once
/// polled, a waiter wakes the task it was polled by; until the task's waker changes
/// (a future moved to another task) a cheap check of its state says as much as
/// polling it again, which costs a lock or a timer-wheel touch per chunk.
#[derive(Default)]
pub(crate) struct PolledWith(Option<std::task::Waker>);

impl PolledWith {
    /// Whether the waiter holds `cx`'s waker; if not, it is taken as polled with it
    /// now (the caller polls it next).
    pub(crate) fn holds(&mut self, cx: &std::task::Context<'_>) -> bool {
        if self.0.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return true;
        }
        self.0 = Some(cx.waker().clone());
        false
    }

    /// The waiter was replaced or re-armed: poll it again.
    pub(crate) fn forget(&mut self) {
        self.0 = None;
    }
}

/// How an attempt reaches its upstream: reqwest, or for a plain `http://` endpoint
/// hyper's client directly when the lease has one.
struct Via<'a> {
    client: &'a reqwest::Client,
    plain: Option<&'a PlainClient>,
}

impl Via<'_> {
    /// POST `body` to `url` with `headers`; the response once its headers are in.
    async fn send(
        &self,
        url: &str,
        headers: reqwest::header::HeaderMap,
        body: bytes::Bytes,
    ) -> Result<Resp, EngineError> {
        if let Some((plain, uri)) = self.plain.zip(parsed_uri(url)) {
            let mut rq = hyper::Request::new(http_body_util::Full::new(body.clone()));
            *rq.method_mut() = hyper::Method::POST;
            *rq.uri_mut() = uri;
            *rq.headers_mut() = headers.clone();
            for (name, value) in [
                (hyper::header::USER_AGENT, USER_AGENT),
                (hyper::header::ACCEPT, "*/*"),
            ] {
                rq.headers_mut()
                    .entry(name)
                    .or_insert(hyper::header::HeaderValue::from_static(value));
            }
            let resp = plain.request(rq).await.map_err(|e| from_hyper(&e))?;
            // A redirect is left to reqwest, which follows it (or refuses another
            // scheme) as the TLS client would: sent again from the start.
            if !resp.status().is_redirection() {
                return Ok(Resp::Hyper(resp));
            }
        }
        self.client
            .post(parsed_url(url)?)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map(Resp::Reqwest)
            .map_err(EngineError::from_reqwest)
    }
}

/// An upstream's response, from reqwest or from hyper's client.
enum Resp {
    Reqwest(reqwest::Response),
    Hyper(hyper::Response<hyper::body::Incoming>),
}

impl Resp {
    fn status(&self) -> reqwest::StatusCode {
        match self {
            Resp::Reqwest(r) => r.status(),
            Resp::Hyper(r) => r.status(),
        }
    }

    fn headers(&self) -> &reqwest::header::HeaderMap {
        match self {
            Resp::Reqwest(r) => r.headers(),
            Resp::Hyper(r) => r.headers(),
        }
    }

    /// The next piece of the body; `None` at its end.
    async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, EngineError> {
        use http_body_util::BodyExt;
        match self {
            Resp::Reqwest(r) => r.chunk().await.map_err(EngineError::from_reqwest),
            Resp::Hyper(r) => loop {
                match r.body_mut().frame().await {
                    None => return Ok(None),
                    Some(Ok(f)) => {
                        // Trailers carry no body: read on.
                        if let Ok(data) = f.into_data() {
                            return Ok(Some(data));
                        }
                    }
                    Some(Err(e)) => return Err(from_hyper(&e)),
                }
            },
        }
    }
}

/// A network error from hyper's client: its message and causes, which name no URL
/// (reqwest's name it; [`EngineError::from_reqwest`] drops it). A connect that
/// timed out is a connect timeout, as reqwest's is.
fn from_hyper(e: &(dyn std::error::Error + 'static)) -> EngineError {
    let mut message = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return EngineError::Timeout {
                phase: TimeoutPhase::Connect,
                after: Duration::ZERO,
            };
        }
        message.push_str(": ");
        message.push_str(&s.to_string());
        src = s.source();
    }
    EngineError::Network { message }
}

/// hyper's own client for plain `http://` endpoints (a local server, a gateway on
/// the same host): the keep-alive pool under reqwest without reqwest's layers. Those
/// (the redirect policy parsing the URL again, the proxy matcher, the response's
/// URL) cost about 25,000 instructions per request and 400 per streamed chunk
/// through `quorum serve` (callgrind, issue #14). Not used when a proxy is set in
/// the environment (reqwest honours it); redirects are left to reqwest.
pub type PlainClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

const USER_AGENT: &str = concat!("llm-quorum/", env!("CARGO_PKG_VERSION"));

fn build_plain_hyper(connect_timeout: Duration) -> PlainClient {
    let mut c = hyper_util::client::legacy::connect::HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(connect_timeout));
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(c)
}

/// Whether the environment names a proxy reqwest would send plain `http://`
/// requests through.
fn proxy_in_env() -> bool {
    ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

/// `url` as hyper's URI, parsed once per process like [`parsed_url`]; `None` when
/// hyper's stricter parser refuses it (reqwest then sends it).
fn parsed_uri(url: &str) -> Option<hyper::Uri> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static CACHE: OnceLock<Mutex<HashMap<String, Option<hyper::Uri>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(u) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(url) {
        return u.clone();
    }
    let parsed = url
        .parse::<hyper::Uri>()
        .ok()
        .filter(|u| u.scheme() == Some(&hyper::http::uri::Scheme::HTTP) && u.host().is_some());
    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
    if c.len() >= PARSED_URLS {
        c.clear();
    }
    c.insert(url.to_string(), parsed.clone());
    parsed
}

fn too_large_bytes(cap: u64) -> EngineError {
    EngineError::ResponseTooLarge {
        message: format!(
            "the answer passed {} bytes ({:.1} MiB, max_response_bytes); the partial answer is kept",
            cap,
            cap as f64 / (1 << 20) as f64
        ),
    }
}

fn is_content(d: &Delta) -> bool {
    matches!(
        d,
        Delta::Text(_) | Delta::Thinking(_) | Delta::ToolCall { .. } | Delta::Refusal(_)
    )
}

/// Distinct upstream URLs kept parsed (a provider's endpoint, per model for
/// Gemini); past this many the cache starts over, so a client naming many
/// models cannot grow it without bound.
const PARSED_URLS: usize = 256;

/// `url`, parsed once per process instead of once per request (the parse,
/// host normalisation included, was a few µs of every request's setup).
fn parsed_url(url: &str) -> Result<reqwest::Url, EngineError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, reqwest::Url>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(u) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(url) {
        return Ok(u.clone());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| EngineError::Config {
        message: format!("the provider's URL is not valid ({e})"),
    })?;
    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
    if c.len() >= PARSED_URLS {
        c.clear();
    }
    c.insert(url.to_string(), parsed.clone());
    Ok(parsed)
}

fn builder(connect_timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .user_agent(USER_AGENT)
}

/// Build the shared HTTP client: rustls, HTTP/2 where offered, keep-alive pool.
pub fn build_client(connect_timeout: Duration) -> Result<reqwest::Client, EngineError> {
    builder(connect_timeout)
        .build()
        .map_err(EngineError::from_reqwest)
}

/// A client for plain `http://` endpoints only (local servers): the same
/// settings without loading the system's TLS roots. A redirect to another
/// scheme is refused with a clear error instead of followed.
pub fn build_plain_client(connect_timeout: Duration) -> Result<reqwest::Client, EngineError> {
    let policy = reqwest::redirect::Policy::custom(|a| {
        if a.url().scheme() != "http" {
            a.error("redirected from http:// to another scheme: use that URL as the base URL")
        } else if a.previous().len() >= 10 {
            a.error("too many redirects")
        } else {
            a.follow()
        }
    });
    builder(connect_timeout)
        .tls_certs_only(Vec::new())
        .redirect(policy)
        .build()
        .map_err(EngineError::from_reqwest)
}

/// The HTTP clients of one connect timeout, each built on first use.
///
/// Building a client with TLS loads and parses the system's root
/// certificates: hundreds of file reads and about a fifth of the CPU of a
/// one-shot `quorum ask`. Commands that send nothing (models, ledger), the
/// mock provider and local servers over plain `http://` never pay it.
///
/// Beyond [`PER_SHARD`] requests in flight, further requests get another
/// client (built then): hyper's connection pool scans its list of waiting
/// requests whenever one of them connects, which is quadratic in the
/// requests connecting at once; 10,000 streams started together spent most
/// of their start there. Below that, one client serves everything, so
/// keep-alive and HTTP/2 reuse are as before.
#[derive(Debug, Clone)]
pub struct LazyClient {
    connect_timeout: Duration,
    tls: Arc<Shards>,
    plain: Arc<Shards>,
}

/// Requests in flight per client before the next one is used.
pub const PER_SHARD: usize = 256;
const MAX_SHARDS: usize = 64;

#[derive(Debug)]
struct Shards {
    clients: Vec<OnceLock<Result<Shard, EngineError>>>,
    in_flight: AtomicUsize,
}

/// The clients of one shard: reqwest's, and for plain `http://` hyper's.
#[derive(Debug, Clone)]
struct Shard {
    client: reqwest::Client,
    plain: Option<PlainClient>,
}

impl Default for Shards {
    fn default() -> Self {
        Shards {
            clients: (0..MAX_SHARDS).map(|_| OnceLock::new()).collect(),
            in_flight: AtomicUsize::new(0),
        }
    }
}

/// A client for one request; dropping it ends the request's claim on it.
#[derive(Debug)]
pub struct ClientLease {
    client: reqwest::Client,
    /// For a plain `http://` endpoint when no proxy is set.
    plain: Option<PlainClient>,
    shards: Arc<Shards>,
}

impl std::ops::Deref for ClientLease {
    type Target = reqwest::Client;
    fn deref(&self) -> &reqwest::Client {
        &self.client
    }
}

impl Drop for ClientLease {
    fn drop(&mut self) {
        self.shards.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LazyClient {
    /// Clients with this connect timeout; nothing is built yet.
    pub fn new(connect_timeout: Duration) -> Self {
        LazyClient {
            connect_timeout,
            tls: Arc::default(),
            plain: Arc::default(),
        }
    }

    /// The client for one request to `base_url`: a plain one for `http://`
    /// (and the in-process mock), a TLS one for anything else. Hold the
    /// lease for as long as the request runs.
    pub fn lease(&self, base_url: &str) -> Result<ClientLease, EngineError> {
        let b = base_url.as_bytes();
        let plain = b
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"http://"))
            || base_url.starts_with("mock:");
        let shards = if plain { &self.plain } else { &self.tls };
        let n = shards.in_flight.fetch_add(1, Ordering::Relaxed);
        let built = shards.clients[(n / PER_SHARD).min(MAX_SHARDS - 1)]
            .get_or_init(|| {
                if plain {
                    Ok(Shard {
                        client: build_plain_client(self.connect_timeout)?,
                        plain: (!proxy_in_env()).then(|| build_plain_hyper(self.connect_timeout)),
                    })
                } else {
                    Ok(Shard {
                        client: build_client(self.connect_timeout)?,
                        plain: None,
                    })
                }
            })
            .clone();
        match built {
            Ok(Shard { client, plain }) => Ok(ClientLease {
                client,
                plain,
                shards: shards.clone(),
            }),
            Err(e) => {
                shards.in_flight.fetch_sub(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cached URL is the one a fresh parse gives, however many distinct
    /// URLs passed through (the cache starts over past its bound); a bad one
    /// is an error that names no URL (it may carry a key).
    #[test]
    fn parsed_urls_match_a_fresh_parse_and_stay_bounded() {
        for round in 0..2 {
            for i in 0..(PARSED_URLS + 10) {
                let u = format!("https://api.example.com/v1/models/m{i}:generate?round={round}");
                assert_eq!(parsed_url(&u).unwrap(), reqwest::Url::parse(&u).unwrap());
            }
        }
        let e = parsed_url("not a url?key=sk-secret")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("sk-secret"), "{e}");
    }

    proptest::proptest! {
        /// Counting lazily stops an answer exactly where counting every piece
        /// would: after each piece, past the cap or not alike; the text kept
        /// uncounted stays under its bound.
        #[test]
        fn a_lazy_count_passes_the_cap_where_an_eager_one_does(
            pieces in proptest::collection::vec("[a-z0-9 .,!\u{4e00}-\u{4e10}é]{0,12}|[a-z ]{200,400}", 0..80),
            cap in proptest::prop_oneof![0u64..60, 0u64..5000],
            thinking in proptest::collection::vec(proptest::bool::ANY, 80),
        ) {
            let mut lazy = OutputCount::new(Some(cap));
            let mut eager = TokenEstimator::new();
            for (i, p) in pieces.iter().enumerate() {
                let d = if thinking[i] { Delta::Thinking(p.clone()) } else { Delta::Text(p.clone()) };
                lazy.observe(&d);
                eager.push(p);
                proptest::prop_assert_eq!(lazy.past_cap().is_some(), eager.tokens() > cap, "piece {}", i);
                proptest::prop_assert!(lazy.unfed.len() < UNFED_MAX, "text kept: {}", lazy.unfed.len());
            }
        }
    }
}
