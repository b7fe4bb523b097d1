//! The engine: providers, wire decoding, routing, pricing and the ledger.
//! It knows nothing of terminals: no UI crate is imported anywhere below
//! this module (a test checks it).

pub mod attachment;
pub mod error;
pub mod eval;
pub mod event;
pub mod provider;
pub mod request;
pub mod wire;

pub use error::EngineError;
pub use event::{
    Accumulator, Completion, CostSource, Delta, FinishReason, StreamEvent, ToolCall, Usage,
};
pub use request::{ChatRequest, Message, Role};
pub mod budget;
pub mod cache;
pub mod capability;
pub mod compare;
pub mod consensus;
pub mod cost;
pub mod discovery;
pub mod files;
pub mod front;
pub mod judge;
mod lease;
pub mod ledger;
pub mod options;
pub mod pricing_file;
pub mod registry;
pub mod routing;
pub mod run;
pub mod select;
pub mod tally;
pub mod tokens;
pub mod validate;

pub use front::{Books, Refusal, StartOptions, Started};
pub use run::{Engine, EngineConfig, RunHandle, RunOptions, TargetEvent};
pub use tally::Tally;
