//! Routing policy: retries with backoff, and (issue 3) circuit breakers,
//! concurrency and rate limits per provider.

use std::time::Duration;

use super::error::EngineError;

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
}
