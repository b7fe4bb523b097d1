//! The offline mock provider (to be implemented).

use crate::engine::error::EngineError;
use crate::engine::event::Delta;
use crate::engine::request::ChatRequest;

/// A mock response in progress.
#[derive(Debug)]
pub struct MockStream {
    items: std::collections::VecDeque<Delta>,
}

impl MockStream {
    /// The next delta, after a realistic pause.
    pub async fn next(&mut self) -> Option<Result<Delta, EngineError>> {
        self.items.pop_front().map(Ok)
    }
}

/// Start a mock response.
pub fn start(_model: &str, _req: &ChatRequest, _stream: bool) -> Result<MockStream, EngineError> {
    Ok(MockStream {
        items: Default::default(),
    })
}
