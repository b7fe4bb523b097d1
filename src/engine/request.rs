//! The provider-neutral request.

use serde::{Deserialize, Serialize};

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// System instructions.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool result.
    Tool,
}

/// A tool call made by the assistant in an earlier turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallRef {
    /// Call id.
    pub id: String,
    /// Function name.
    pub name: String,
    /// Arguments as a JSON object.
    pub arguments: serde_json::Value,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Role.
    pub role: Role,
    /// Text content.
    #[serde(default)]
    pub content: String,
    /// Tool calls made by an assistant message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallRef>,
    /// For a tool result: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For a tool result: the tool's name (Gemini needs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Files and images sent with a user message, after its text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// For an assistant message: its thinking blocks with their signatures,
    /// sent back so a provider that signs its thinking (Anthropic, Gemini)
    /// can continue a multi-turn or tool-use conversation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thinking: Vec<ThinkingBlock>,
}

/// One signed block of thinking from an earlier assistant turn.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ThinkingBlock {
    /// The thinking text as the model produced it.
    pub text: String,
    /// The provider's opaque signature of it ("" when none was sent).
    #[serde(default)]
    pub signature: String,
}

/// What an attachment holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AttachmentData {
    /// A text file, sent as text under its name.
    Text {
        /// The file's text.
        text: String,
    },
    /// An image, sent as the provider's vision input.
    Image {
        /// `image/png`, `image/jpeg`, `image/webp` or `image/gif`.
        media_type: String,
        /// The image bytes, base64 (standard alphabet, padded).
        base64: String,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
}

/// A file or image attached to a message. Build one with
/// [`crate::engine::attachment::load_text`] / [`crate::engine::attachment::load_image`],
/// which check the file before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The file name as given (shown to the model for text files).
    pub name: String,
    /// Size of the file in bytes.
    pub size: u64,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
    /// The content.
    #[serde(flatten)]
    pub data: AttachmentData,
}

impl Attachment {
    /// Whether this is an image.
    pub fn is_image(&self) -> bool {
        matches!(self.data, AttachmentData::Image { .. })
    }

    /// A text file as the text part a model reads: its name, then its content.
    pub fn text_part(&self) -> Option<String> {
        match &self.data {
            AttachmentData::Text { text } => Some(format!(
                "File: {}\n```\n{}\n```",
                self.name,
                text.trim_end_matches('\n')
            )),
            AttachmentData::Image { .. } => None,
        }
    }

    /// An image as a `data:` URL (OpenAI's `image_url`).
    pub fn data_url(&self) -> Option<String> {
        match &self.data {
            AttachmentData::Image {
                media_type, base64, ..
            } => Some(format!("data:{media_type};base64,{base64}")),
            AttachmentData::Text { .. } => None,
        }
    }
}

impl Message {
    /// A plain message.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
            attachments: Vec::new(),
            thinking: Vec::new(),
        }
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
    /// A tool result.
    pub fn tool_result(
        call_id: impl Into<String>,
        name: impl Into<String>,
        content: impl Into<String>,
    ) -> Self {
        Message {
            role: Role::Tool,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: Some(call_id.into()),
            name: Some(name.into()),
            attachments: Vec::new(),
            thinking: Vec::new(),
        }
    }

    /// The assistant turn a completion was: its text, tool calls and signed
    /// thinking, ready to be sent back in the next request.
    pub fn from_completion(c: &crate::engine::event::Completion) -> Self {
        let mut m = Message::assistant(c.text.clone());
        m.tool_calls = c
            .tool_calls
            .iter()
            .map(|t| ToolCallRef {
                id: t.id.clone(),
                name: t.name.clone(),
                arguments: t.arguments_json(),
            })
            .collect();
        m.thinking = c.thinking_blocks.clone();
        m
    }

    /// The text of the message followed by its text attachments, each under
    /// its name: for providers (and counts) that take one string.
    pub fn text_with_files(&self) -> std::borrow::Cow<'_, str> {
        let files: Vec<String> = self
            .attachments
            .iter()
            .filter_map(Attachment::text_part)
            .collect();
        if files.is_empty() {
            return std::borrow::Cow::Borrowed(&self.content);
        }
        let mut s = self.content.clone();
        for f in files {
            if !s.is_empty() {
                s.push_str("\n\n");
            }
            s.push_str(&f);
        }
        std::borrow::Cow::Owned(s)
    }

    /// The images attached to this message.
    pub fn images(&self) -> impl Iterator<Item = &Attachment> {
        self.attachments.iter().filter(|a| a.is_image())
    }
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// Function name.
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: serde_json::Value,
}

/// How the model may use tools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides.
    #[default]
    Auto,
    /// No tool calls.
    None,
    /// At least one tool call.
    Required,
    /// This function.
    Function(String),
}

/// Output format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Free text.
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching this schema.
    JsonSchema {
        /// Schema name.
        name: String,
        /// The schema.
        schema: serde_json::Value,
    },
}

/// Reasoning effort for models that think.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningEffort {
    /// As little thinking as the model allows (OpenAI `minimal`).
    Minimal,
    /// Little thinking.
    Low,
    /// Some thinking.
    Medium,
    /// Much thinking.
    High,
}

impl ReasoningEffort {
    /// Wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasoningEffort::Minimal => "minimal",
            ReasoningEffort::Low => "low",
            ReasoningEffort::Medium => "medium",
            ReasoningEffort::High => "high",
        }
    }
    /// Parse `minimal`, `low`, `medium` or `high`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "minimal" => ReasoningEffort::Minimal,
            "low" => ReasoningEffort::Low,
            "medium" => ReasoningEffort::Medium,
            "high" => ReasoningEffort::High,
            _ => return None,
        })
    }
    /// A thinking-token budget for providers that take one (Anthropic's
    /// smallest accepted budget is 1024, so `minimal` and `low` meet there).
    pub fn budget_tokens(self) -> u32 {
        match self {
            ReasoningEffort::Minimal => 1024,
            ReasoningEffort::Low => 1024,
            ReasoningEffort::Medium => 4096,
            ReasoningEffort::High => 16384,
        }
    }
}

/// Thinking / reasoning settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reasoning {
    /// An effort level (OpenAI `reasoning_effort`; mapped to a budget elsewhere).
    Effort(ReasoningEffort),
    /// A thinking-token budget (Anthropic `budget_tokens`, Gemini `thinkingBudget`).
    Budget(u32),
}

impl Reasoning {
    /// The budget in tokens.
    pub fn budget_tokens(self) -> u32 {
        match self {
            Reasoning::Effort(e) => e.budget_tokens(),
            Reasoning::Budget(b) => b,
        }
    }
    /// The effort level (a budget maps to the nearest).
    pub fn effort(self) -> ReasoningEffort {
        match self {
            Reasoning::Effort(e) => e,
            Reasoning::Budget(0) => ReasoningEffort::Minimal,
            Reasoning::Budget(b) if b <= 2048 => ReasoningEffort::Low,
            Reasoning::Budget(b) if b <= 8192 => ReasoningEffort::Medium,
            Reasoning::Budget(_) => ReasoningEffort::High,
        }
    }
}

/// A chat request, independent of provider.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The conversation. System messages may appear anywhere; providers that
    /// take a top-level system prompt get them joined.
    pub messages: Vec<Message>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Output token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Output format.
    #[serde(default)]
    pub response_format: ResponseFormat,
    /// Tools offered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    /// Tool choice.
    #[serde(default)]
    pub tool_choice: ToolChoice,
    /// Thinking settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<Reasoning>,
    /// Chat Completions parameters quorum has no field for (`seed`,
    /// `logit_bias`, `user`, ...), sent as they are by the OpenAI-wire
    /// providers (OpenAI, OpenRouter, compatible servers). A face must refuse
    /// them for the other providers rather than drop them.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub passthrough: serde_json::Map<String, serde_json::Value>,
}

impl ChatRequest {
    /// A one-message request.
    pub fn from_prompt(prompt: impl Into<String>) -> Self {
        ChatRequest {
            messages: vec![Message::user(prompt)],
            ..Default::default()
        }
    }

    /// All system messages joined with blank lines, or None.
    pub fn system_text(&self) -> Option<String> {
        let parts: Vec<&str> = self
            .messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
            .collect();
        if parts.is_empty() {
            None
        } else {
            Some(parts.join("\n\n"))
        }
    }

    /// Whether any message carries an image.
    pub fn has_images(&self) -> bool {
        self.messages.iter().any(|m| m.images().next().is_some())
    }

    /// The text of the last user message.
    pub fn last_user_text(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
            .unwrap_or("")
    }
}
