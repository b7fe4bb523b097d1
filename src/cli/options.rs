//! The request-option flags shared by `ask`, `compare` and `exec`.

use std::path::PathBuf;

use clap::Args;

use crate::engine::options::RequestOptions;

/// Reasoning, structured output, tools and attachments.
#[derive(Debug, Clone, Default, Args)]
pub struct OptionFlags {
    /// Reasoning effort: minimal, low, medium or high (refused for models without thinking).
    #[arg(long, value_name = "EFFORT")]
    pub reasoning: Option<String>,
    /// Thinking budget in tokens (Anthropic budget_tokens, Gemini thinkingBudget).
    #[arg(long, value_name = "N")]
    pub thinking_budget: Option<u32>,
    /// Ask for a JSON object as the answer (the verdict is in --json output).
    #[arg(long)]
    pub json_mode: bool,
    /// Ask for JSON matching this JSON Schema; the answer is validated against it.
    #[arg(long, value_name = "FILE")]
    pub schema: Option<PathBuf>,
    /// Offer these tools: a JSON list of functions in OpenAI's shape.
    #[arg(long, value_name = "FILE")]
    pub tools: Option<PathBuf>,
    /// auto, none, required, or the name of one function of --tools.
    #[arg(long, value_name = "CHOICE")]
    pub tool_choice: Option<String>,
    /// Attach a text file, included with its name (repeatable).
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// Attach an image: PNG, JPEG, WebP or GIF (repeatable).
    #[arg(short = 'i', long = "image", value_name = "PATH")]
    pub images: Vec<PathBuf>,
}

impl OptionFlags {
    /// The engine's form of these flags.
    pub fn to_options(&self) -> RequestOptions {
        RequestOptions {
            reasoning: self.reasoning.clone(),
            thinking_budget: self.thinking_budget,
            json_mode: self.json_mode,
            schema: self.schema.clone(),
            tools: self.tools.clone(),
            tool_choice: self.tool_choice.clone(),
            files: self.files.clone(),
            images: self.images.clone(),
        }
    }
}

/// The verdicts of an answer as text lines for stderr: the schema check and
/// each tool call's validity.
pub fn verdict_lines(c: &crate::engine::Completion) -> Vec<String> {
    let mut out = Vec::new();
    match (c.schema_valid, &c.schema_error) {
        (Some(true), _) => out.push("schema: valid".to_string()),
        (Some(false), Some(e)) => out.push(format!(
            "schema: invalid at {}: {}",
            if e.path.is_empty() { "/" } else { &e.path },
            e.message
        )),
        (Some(false), None) => out.push("schema: invalid".to_string()),
        (None, _) => {}
    }
    out
}

/// ` ✓`, ` ✗ why` or nothing: a tool call's validity against its schema.
pub fn tool_mark(t: &crate::engine::ToolCall) -> String {
    t.validity_mark()
}
