//! The ledger of every request (issue 4 persists it in SQLite).

use super::event::Completion;

/// Who asked, for the ledger row.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    /// Run id (one prompt fanned out).
    pub run_id: String,
    /// Session id.
    pub session_id: Option<String>,
    /// W3C trace id.
    pub trace_id: Option<String>,
    /// Calling agent.
    pub source_agent: Option<String>,
    /// Target as requested.
    pub target: String,
    /// The prompt (last user message).
    pub prompt: String,
}

/// Where finished requests are recorded.
pub trait LedgerSink: Send + Sync {
    /// Record one finished or failed request. Must be durable when it returns.
    fn record(&self, meta: &RequestMeta, completion: &Completion) -> Result<(), String>;
}
