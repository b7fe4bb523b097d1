//! llm-quorum: one prompt, several LLM providers side by side, every token
//! and cent counted.

pub mod app;
pub mod cli;
pub mod config;
pub mod engine;
pub mod serve;
pub mod shared;
pub mod tui;
