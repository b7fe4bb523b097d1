//! ollama wire protocol (to be implemented).

use super::{HttpCall, ProviderSpec, StreamDecoder};
use crate::engine::error::EngineError;
use crate::engine::event::Delta;
use crate::engine::request::ChatRequest;

/// Build the HTTP request.
pub fn build(
    _spec: &ProviderSpec,
    _model: &str,
    _req: &ChatRequest,
    _stream: bool,
) -> Result<HttpCall, EngineError> {
    Err(EngineError::Config {
        message: "not implemented".into(),
    })
}

/// Stream decoder.
#[derive(Debug, Default)]
pub struct Decoder {
    done: bool,
}

impl StreamDecoder for Decoder {
    fn frame(
        &mut self,
        _event: &str,
        _data: &str,
        _out: &mut Vec<Delta>,
    ) -> Result<(), EngineError> {
        Ok(())
    }
    fn is_done(&self) -> bool {
        self.done
    }
}

/// Parse a non-streamed body.
pub fn parse_response(_body: &[u8]) -> Result<Vec<Delta>, EngineError> {
    Ok(Vec::new())
}
