//! Request options as the faces take them from a user (words and file
//! paths), turned into a [`ChatRequest`]'s settings with one meaning
//! everywhere. Every file is read and checked here, before anything is
//! sent, and every error names the file or the option.

use std::path::PathBuf;

use super::attachment;
use super::error::EngineError;
use super::request::{ChatRequest, Reasoning, ReasoningEffort, ResponseFormat, Role, ToolChoice};
use super::validate;

/// What a user asked for, unparsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestOptions {
    /// `minimal`, `low`, `medium` or `high`.
    pub reasoning: Option<String>,
    /// A thinking-token budget.
    pub thinking_budget: Option<u32>,
    /// Any JSON object as the answer.
    pub json_mode: bool,
    /// A JSON Schema file the answer must match.
    pub schema: Option<PathBuf>,
    /// A JSON list of functions (OpenAI's shape).
    pub tools: Option<PathBuf>,
    /// `auto`, `none`, `required`, or a function name from the tools file.
    pub tool_choice: Option<String>,
    /// Text files, included with their names.
    pub files: Vec<PathBuf>,
    /// Images (PNG, JPEG, WebP, GIF).
    pub images: Vec<PathBuf>,
}

fn usage(message: impl Into<String>) -> EngineError {
    EngineError::Config {
        message: message.into(),
    }
}

impl RequestOptions {
    /// Whether nothing was asked for.
    pub fn is_empty(&self) -> bool {
        *self == RequestOptions::default()
    }

    /// Apply to `req`: reasoning, output format, tools and attachments (on
    /// the last user message, added if there is none). Reads every file.
    pub fn apply(&self, req: &mut ChatRequest) -> Result<(), EngineError> {
        req.reasoning = match (&self.reasoning, self.thinking_budget) {
            (Some(_), Some(_)) => {
                return Err(usage(
                    "--reasoning and --thinking-budget both set the thinking: use one",
                ))
            }
            (Some(word), None) => Some(Reasoning::Effort(
                ReasoningEffort::parse(word).ok_or_else(|| {
                    usage(format!(
                        "--reasoning {word:?}: use minimal, low, medium or high"
                    ))
                })?,
            )),
            (None, Some(n)) => Some(Reasoning::Budget(n)),
            (None, None) => req.reasoning,
        };
        match (self.json_mode, &self.schema) {
            (true, Some(_)) => {
                return Err(usage(
                    "--json-mode and --schema both set the output format: use one",
                ))
            }
            (true, None) => req.response_format = ResponseFormat::JsonObject,
            (false, Some(path)) => req.response_format = validate::load_schema(path)?,
            (false, None) => {}
        }
        if let Some(path) = &self.tools {
            req.tools = validate::load_tools(path)?;
        }
        if let Some(choice) = &self.tool_choice {
            if req.tools.is_empty() {
                return Err(usage("--tool-choice needs --tools FILE"));
            }
            req.tool_choice = match choice.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" | "any" => ToolChoice::Required,
                name if req.tools.iter().any(|t| t.name == name) => {
                    ToolChoice::Function(name.to_string())
                }
                other => {
                    let names: Vec<&str> = req.tools.iter().map(|t| t.name.as_str()).collect();
                    return Err(usage(format!(
                        "--tool-choice {other:?}: use auto, none, required, or a function of the tools file ({})",
                        names.join(", ")
                    )));
                }
            };
        }
        let mut attached = Vec::new();
        for p in &self.files {
            attached.push(attachment::load_text(p)?);
        }
        for p in &self.images {
            attached.push(attachment::load_image(p)?);
        }
        if !attached.is_empty() {
            if !req.messages.iter().any(|m| m.role == Role::User) {
                req.messages.push(super::request::Message::user(""));
            }
            let last = req
                .messages
                .iter_mut()
                .rev()
                .find(|m| m.role == Role::User)
                .ok_or_else(|| usage("no user message to attach files to"))?;
            last.attachments.extend(attached);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_files_and_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let tools = dir.path().join("tools.json");
        std::fs::write(
            &tools,
            r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]"#,
        )
        .unwrap();
        let notes = dir.path().join("notes.txt");
        std::fs::write(&notes, "remember").unwrap();
        let o = RequestOptions {
            reasoning: Some("minimal".into()),
            json_mode: true,
            tools: Some(tools.clone()),
            tool_choice: Some("get_weather".into()),
            files: vec![notes],
            ..Default::default()
        };
        let mut req = ChatRequest::from_prompt("hi");
        o.apply(&mut req).unwrap();
        assert_eq!(
            req.reasoning,
            Some(Reasoning::Effort(ReasoningEffort::Minimal))
        );
        assert_eq!(req.response_format, ResponseFormat::JsonObject);
        assert_eq!(req.tool_choice, ToolChoice::Function("get_weather".into()));
        assert_eq!(req.messages[0].attachments.len(), 1);
        assert!(req.messages[0].text_with_files().contains("remember"));

        for (o, want) in [
            (
                RequestOptions {
                    reasoning: Some("max".into()),
                    ..Default::default()
                },
                "minimal, low, medium or high",
            ),
            (
                RequestOptions {
                    reasoning: Some("low".into()),
                    thinking_budget: Some(10),
                    ..Default::default()
                },
                "use one",
            ),
            (
                RequestOptions {
                    tool_choice: Some("auto".into()),
                    ..Default::default()
                },
                "needs --tools",
            ),
            (
                RequestOptions {
                    tools: Some(tools.clone()),
                    tool_choice: Some("launch".into()),
                    ..Default::default()
                },
                "get_weather",
            ),
            (
                RequestOptions {
                    images: vec![dir.path().join("missing.png")],
                    ..Default::default()
                },
                "missing.png: no such file",
            ),
        ] {
            let e = o
                .apply(&mut ChatRequest::from_prompt("x"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e} / {want}");
        }
    }
}
