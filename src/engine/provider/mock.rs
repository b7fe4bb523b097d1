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

/// A mock model.
#[derive(Debug, Clone, Copy)]
pub struct MockModel {
    /// Model name (after `mock/`).
    pub name: &'static str,
    /// One line saying what it does.
    pub description: &'static str,
}

/// The mock models.
pub fn models() -> &'static [MockModel] {
    &[]
}

/// Whether `name` is a mock model.
pub fn is_mock_model(name: &str) -> bool {
    models().iter().any(|m| m.name == name)
}
