//! The engine's one error type. Variants carry the HTTP status and the
//! provider's own message (trimmed), never an API key.

use std::time::Duration;

/// Which timeout fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// Establishing the connection.
    Connect,
    /// Waiting for the first token (or the response headers).
    FirstToken,
    /// Gap between two chunks of a stream (stall detection).
    Idle,
    /// The whole request.
    Total,
}

impl TimeoutPhase {
    fn as_str(self) -> &'static str {
        match self {
            TimeoutPhase::Connect => "connect",
            TimeoutPhase::FirstToken => "first token",
            TimeoutPhase::Idle => "idle gap between chunks",
            TimeoutPhase::Total => "total for the request, retries and waits included",
        }
    }
}

/// Everything that can go wrong with a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// 401/403: the key is missing, wrong or lacks permission.
    #[error("authentication failed (HTTP {status}): {message}")]
    Auth {
        /// HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// 429.
    #[error("rate limited (HTTP 429){}: {message}", fmt_wait(.retry_after))]
    RateLimited {
        /// The provider's message.
        message: String,
        /// Wait asked for by `retry-after` / `retry-after-ms`.
        retry_after: Option<Duration>,
    },
    /// 529 / 503: the provider is overloaded or unavailable.
    #[error("provider overloaded (HTTP {status}){}: {message}", fmt_wait(.retry_after))]
    Overloaded {
        /// HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
        /// Wait asked for by the provider.
        retry_after: Option<Duration>,
    },
    /// The prompt does not fit the model's context window.
    #[error("context length exceeded (HTTP {status}): {message}")]
    ContextLength {
        /// HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// 400/404/422 and other client errors.
    #[error("bad request (HTTP {status}): {message}")]
    BadRequest {
        /// HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// 408 (request timeout) and 409 (conflict): client-side statuses that
    /// say "try again", retried like 5xx (as the official SDKs do).
    #[error("{} (HTTP {status}), retryable{}: {message}", transient_word(*.status), fmt_wait(.retry_after))]
    Transient {
        /// HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
        /// Wait asked for by the provider.
        retry_after: Option<Duration>,
    },
    /// 5xx.
    #[error("server error (HTTP {status}): {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// An error event inside an otherwise successful stream.
    #[error("provider error in stream: {message}")]
    InStream {
        /// The provider's message.
        message: String,
    },
    /// A timeout fired.
    #[error("timed out ({}) after {:.1} s", .phase.as_str(), .after.as_secs_f64())]
    Timeout {
        /// Which timeout.
        phase: TimeoutPhase,
        /// Configured limit.
        after: Duration,
    },
    /// Connection refused, reset, DNS, TLS...
    #[error("network error: {message}")]
    Network {
        /// What failed (URL stripped).
        message: String,
    },
    /// A frame could not be understood.
    #[error("protocol error: {message}")]
    Protocol {
        /// Which frame and why.
        message: String,
    },
    /// The answer grew past a configured cap (bytes, or far past
    /// `max_tokens`): reading stopped, the partial answer is kept.
    #[error("response too large: {message}")]
    ResponseTooLarge {
        /// Which cap, and its value.
        message: String,
    },
    /// Cancelled by the user.
    #[error("cancelled")]
    Cancelled,
    /// Configuration problem: unknown model, missing key, bad target.
    #[error("{message}")]
    Config {
        /// Explanation.
        message: String,
    },
    /// Refused by `allowed_models` governance before sending.
    #[error("model not allowed: {message}")]
    NotAllowed {
        /// Explanation.
        message: String,
    },
    /// Refused by a budget before sending.
    #[error("budget exceeded: {message}")]
    Budget {
        /// Explanation.
        message: String,
    },
    /// The provider's circuit breaker is open.
    #[error("circuit breaker open for {provider}: failing fast")]
    BreakerOpen {
        /// Provider name.
        provider: String,
    },
}

fn transient_word(status: u16) -> &'static str {
    match status {
        408 => "request timeout",
        409 => "conflict",
        _ => "transient error",
    }
}

fn fmt_wait(d: &Option<Duration>) -> String {
    match d {
        Some(d) => format!(", retry after {:.1} s", d.as_secs_f64()),
        None => String::new(),
    }
}

impl EngineError {
    /// Stable machine-readable kind, used in JSON and the ledger.
    pub fn kind(&self) -> &'static str {
        match self {
            EngineError::Auth { .. } => "auth",
            EngineError::RateLimited { .. } => "rate_limited",
            EngineError::Overloaded { .. } => "overloaded",
            EngineError::ContextLength { .. } => "context_length",
            EngineError::BadRequest { .. } => "bad_request",
            EngineError::Server { .. } => "server",
            EngineError::Transient { status: 408, .. } => "request_timeout",
            EngineError::Transient { status: 409, .. } => "conflict",
            EngineError::Transient { .. } => "transient",
            EngineError::ResponseTooLarge { .. } => "response_too_large",
            EngineError::InStream { .. } => "in_stream",
            EngineError::Timeout { .. } => "timeout",
            EngineError::Network { .. } => "network",
            EngineError::Protocol { .. } => "protocol",
            EngineError::Cancelled => "cancelled",
            EngineError::Config { .. } => "config",
            EngineError::NotAllowed { .. } => "not_allowed",
            EngineError::Budget { .. } => "budget",
            EngineError::BreakerOpen { .. } => "breaker_open",
        }
    }

    /// Whether a retry could help (never for 400/401/403/404 or context length).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EngineError::RateLimited { .. }
                | EngineError::Overloaded { .. }
                | EngineError::Server { .. }
                | EngineError::Transient { .. }
                | EngineError::Timeout { .. }
                | EngineError::Network { .. }
        )
    }

    /// The wait the provider asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            EngineError::RateLimited { retry_after, .. }
            | EngineError::Overloaded { retry_after, .. }
            | EngineError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// HTTP status, where there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            EngineError::Auth { status, .. }
            | EngineError::Overloaded { status, .. }
            | EngineError::ContextLength { status, .. }
            | EngineError::BadRequest { status, .. }
            | EngineError::Server { status, .. }
            | EngineError::Transient { status, .. } => Some(*status),
            EngineError::RateLimited { .. } => Some(429),
            _ => None,
        }
    }

    /// Replace every occurrence of `secret` in the messages with `***`: a
    /// provider (or a proxy) may echo the key back in an error body.
    pub fn redact(self, secret: &str) -> EngineError {
        if secret.len() < 4 {
            return self;
        }
        self.map_message(|m| {
            if m.contains(secret) {
                m.replace(secret, "***")
            } else {
                m.to_string()
            }
        })
    }

    /// The same error with its message (if it has one) passed through `f`.
    pub fn map_message(mut self, f: impl Fn(&str) -> String) -> EngineError {
        match &mut self {
            EngineError::Auth { message, .. }
            | EngineError::RateLimited { message, .. }
            | EngineError::Overloaded { message, .. }
            | EngineError::ContextLength { message, .. }
            | EngineError::BadRequest { message, .. }
            | EngineError::Transient { message, .. }
            | EngineError::Server { message, .. }
            | EngineError::InStream { message }
            | EngineError::Network { message }
            | EngineError::Protocol { message }
            | EngineError::ResponseTooLarge { message }
            | EngineError::Config { message }
            | EngineError::NotAllowed { message }
            | EngineError::Budget { message } => {
                *message = f(message);
            }
            EngineError::Timeout { .. }
            | EngineError::Cancelled
            | EngineError::BreakerOpen { .. } => {}
        }
        self
    }

    /// Build a network error from reqwest's, without the URL (it may carry a key in a query).
    pub fn from_reqwest(e: reqwest::Error) -> EngineError {
        let e = e.without_url();
        if e.is_timeout() {
            return EngineError::Timeout {
                phase: TimeoutPhase::Connect,
                after: Duration::ZERO,
            };
        }
        let mut message = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            message.push_str(": ");
            message.push_str(&s.to_string());
            src = s.source();
        }
        EngineError::Network { message }
    }

    /// Classify a non-2xx HTTP response from its status, headers and body.
    pub fn from_http(
        status: u16,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> EngineError {
        Self::from_http_masked(
            status,
            headers,
            body,
            false,
            &crate::engine::provider::mask::Masker::default(),
        )
    }

    /// [`EngineError::from_http`] for a body that may echo secrets: every
    /// known secret is masked in the raw body and again in the message
    /// extracted from it (a JSON string may spell it with escapes), before
    /// anything is cut. `truncated` says the body was cut by a read limit:
    /// its last word is dropped (it may be a secret cut short).
    pub fn from_http_masked(
        status: u16,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
        truncated: bool,
        masker: &crate::engine::provider::mask::Masker,
    ) -> EngineError {
        let raw = masker.mask_bytes(body);
        let raw = if truncated {
            format!("{}…", crate::engine::provider::mask::drop_cut_word(&raw))
        } else {
            raw
        };
        let message = provider_message_with(raw.as_bytes(), &|m| masker.mask(m).into_owned());
        let retry_after = parse_retry_after(headers);
        let lower = message.to_ascii_lowercase();
        let context = lower.contains("context_length_exceeded")
            || lower.contains("context length")
            || lower.contains("prompt is too long")
            || lower.contains("maximum context")
            || lower.contains("too many tokens")
            || lower.contains("exceeds the maximum number of tokens");
        match status {
            401 | 403 => EngineError::Auth { status, message },
            429 => EngineError::RateLimited {
                message,
                retry_after,
            },
            503 | 529 => EngineError::Overloaded {
                status,
                message,
                retry_after,
            },
            400 | 413 | 422 if context => EngineError::ContextLength { status, message },
            408 | 409 => EngineError::Transient {
                status,
                message,
                retry_after,
            },
            400..=499 => EngineError::BadRequest { status, message },
            _ => EngineError::Server { status, message },
        }
    }
}

/// Extract the provider's human message from an error body in any of the
/// shapes seen: `{"error":{"message":..}}` (OpenAI, Anthropic, Gemini,
/// OpenRouter, with OpenRouter's `metadata.raw` appended), `{"error":"..."}`
/// (Ollama), `{"message":..}`, or the trimmed raw body.
pub fn provider_message(body: &[u8]) -> String {
    provider_message_with(body, &|m| m.to_string())
}

/// [`provider_message`], passing the extracted message through `mask`
/// before it is cut.
pub fn provider_message_with(body: &[u8], mask: &dyn Fn(&str) -> String) -> String {
    let clip = |s: &str| clip(&mask(s));
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(trimmed) {
        // Gemini sometimes wraps errors in a one-element array.
        let v = match v {
            serde_json::Value::Array(mut a) if !a.is_empty() => a.swap_remove(0),
            v => v,
        };
        if let Some(err) = v.get("error") {
            if let Some(s) = err.as_str() {
                return clip(s);
            }
            if let Some(m) = err.get("message").and_then(|m| m.as_str()) {
                let mut msg = m.to_string();
                if let Some(raw) = err
                    .get("metadata")
                    .and_then(|md| md.get("raw"))
                    .and_then(|r| r.as_str())
                {
                    msg.push_str(" (upstream: ");
                    msg.push_str(raw);
                    msg.push(')');
                }
                return clip(&msg);
            }
        }
        if let Some(m) = v.get("message").and_then(|m| m.as_str()) {
            return clip(m);
        }
    }
    if trimmed.is_empty() {
        "(empty body)".to_string()
    } else {
        clip(trimmed)
    }
}

fn clip(s: &str) -> String {
    const MAX: usize = 600;
    crate::engine::provider::mask::cut(s.trim(), MAX)
}

/// `retry-after-ms` (milliseconds, OpenAI/Anthropic) wins over `retry-after`
/// (seconds, or an HTTP date).
pub fn parse_retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
    {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    let Some(v) = headers.get("retry-after").and_then(|v| v.to_str().ok()) else {
        return ratelimit_reset(headers);
    };
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs));
        }
        return None;
    }
    // HTTP-date form.
    let when =
        time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?;
    let now = time::OffsetDateTime::now_utc();
    let secs = (when - now).as_seconds_f64().max(0.0);
    Some(Duration::from_secs_f64(secs))
}

/// OpenRouter sends no Retry-After on 429 but `X-Ratelimit-Reset` as epoch
/// milliseconds; read it as a wait when it is a plausible epoch time.
fn ratelimit_reset(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v: f64 = headers
        .get("x-ratelimit-reset")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if !(1e12..1e14).contains(&v) {
        return None;
    }
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e6;
    Some(Duration::from_secs_f64(
        ((v - now_ms) / 1000.0).clamp(0.0, 3600.0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> reqwest::header::HeaderMap {
        let mut m = reqwest::header::HeaderMap::new();
        for (k, v) in pairs {
            m.insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(
            parse_retry_after(&h(&[("retry-after", "7")])),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after(&h(&[("retry-after", "7"), ("retry-after-ms", "1500")])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after(&h(&[("retry-after", "soon")])), None);
        let later = time::OffsetDateTime::now_utc() + time::Duration::seconds(30);
        let date = later
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap();
        let d = parse_retry_after(&h(&[("retry-after", &date)])).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(31),
            "{d:?}"
        );
        let reset = (time::OffsetDateTime::now_utc().unix_timestamp() + 10) * 1000;
        let d = parse_retry_after(&h(&[("x-ratelimit-reset", &reset.to_string())])).unwrap();
        assert!(
            d > Duration::from_secs(8) && d <= Duration::from_secs(11),
            "{d:?}"
        );
        assert_eq!(parse_retry_after(&h(&[("x-ratelimit-reset", "60")])), None);
    }

    #[test]
    fn messages_from_every_error_shape() {
        assert_eq!(
            provider_message(br#"{"error":{"message":"bad key","type":"x"}}"#),
            "bad key"
        );
        assert_eq!(
            provider_message(br#"{"error":"model not found"}"#),
            "model not found"
        );
        assert_eq!(
            provider_message(
                br#"{"error":{"message":"Provider returned error","metadata":{"raw":"quota"}}}"#
            ),
            "Provider returned error (upstream: quota)"
        );
        assert_eq!(provider_message(b"  "), "(empty body)");
        let e = EngineError::from_http(400, &h(&[]), br#"{"error":{"message":"This model's maximum context length is 8192 tokens","code":"context_length_exceeded"}}"#);
        assert_eq!(e.kind(), "context_length");
        assert!(!e.is_retryable());
        let e = EngineError::from_http(
            529,
            &h(&[("retry-after", "2")]),
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(e.kind(), "overloaded");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
    }
}
