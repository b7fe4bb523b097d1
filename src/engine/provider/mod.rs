//! Providers: one module per wire protocol. A provider is translation only:
//! it builds the HTTP request from a [`ChatRequest`] and decodes the wire
//! frames into [`Delta`]s. Sending, timeouts and retries live elsewhere
//! ([`http`], `routing`).

pub mod anthropic;
pub mod azure;
pub mod gemini;
pub mod http;
pub mod mask;
pub mod mock;
pub mod ollama;
pub mod openai;
pub mod responses;
pub mod template;

use std::fmt;

use serde::{Deserialize, Serialize};

use super::error::EngineError;
use super::event::Delta;
use super::request::ChatRequest;

/// The wire protocol family of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI Chat Completions.
    Openai,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini generateContent.
    Gemini,
    /// Ollama native `/api/chat`.
    Ollama,
    /// OpenRouter (OpenAI wire plus cost and comments).
    Openrouter,
    /// Any OpenAI-compatible endpoint.
    Compatible,
    /// Offline, in-process, deterministic.
    Mock,
    /// OpenAI Responses API (`POST /responses`); also chosen automatically
    /// for `openai` models served only there (o1-pro, o3-pro, codex...).
    #[serde(rename = "openai-responses", alias = "responses")]
    Responses,
    /// Azure OpenAI deployments: the model name is the deployment name.
    Azure,
    /// A JSON API described in config: a request template and JSON pointers.
    Template,
}

impl ProviderKind {
    /// Config word.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Ollama => "ollama",
            ProviderKind::Openrouter => "openrouter",
            ProviderKind::Compatible => "compatible",
            ProviderKind::Mock => "mock",
            ProviderKind::Responses => "openai-responses",
            ProviderKind::Azure => "azure",
            ProviderKind::Template => "template",
        }
    }

    /// Whether this kind can stream at all (a templated API is asked for
    /// whole responses).
    pub fn can_stream(self) -> bool {
        self != ProviderKind::Template
    }

    /// How a streamed response is framed.
    pub fn framing(self) -> Framing {
        match self {
            ProviderKind::Ollama => Framing::Ndjson,
            ProviderKind::Mock => Framing::InProcess,
            _ => Framing::Sse,
        }
    }

    /// Whether requests need an API key.
    pub fn needs_key(self) -> bool {
        matches!(
            self,
            ProviderKind::Openai
                | ProviderKind::Anthropic
                | ProviderKind::Gemini
                | ProviderKind::Openrouter
                | ProviderKind::Responses
                | ProviderKind::Azure
        )
    }
}

/// How a streamed body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Server-Sent Events.
    Sse,
    /// Newline-delimited JSON.
    Ndjson,
    /// No HTTP at all (the mock provider).
    InProcess,
}

/// A string that never shows itself: Debug and Display print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself; call only where it goes on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A provider, resolved: everything needed to build its requests.
/// `Debug` shows the names of its headers, not their values (they may hold
/// tokens), and never the key.
#[derive(Clone)]
pub struct ProviderSpec {
    /// Registry name (`openai`, `groq`, `mock`, ...).
    pub name: String,
    /// Wire protocol.
    pub kind: ProviderKind,
    /// Base URL. Conventions follow the official SDKs: OpenAI and OpenRouter
    /// include the version path (`https://api.openai.com/v1`,
    /// `https://openrouter.ai/api/v1`); Anthropic, Gemini and Ollama do not.
    pub base_url: String,
    /// The key, if any.
    pub api_key: Option<Secret>,
    /// Extra headers sent with every request.
    pub headers: Vec<(String, String)>,
    /// Settings only some kinds have (Azure's api-version, a template).
    pub extra: ProviderExtra,
}

/// Settings of a provider that only some kinds use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderExtra {
    /// Azure OpenAI `api-version` (default [`azure::DEFAULT_API_VERSION`]).
    pub api_version: Option<String>,
    /// The request template and response pointers of a `template` provider.
    pub template: Option<std::sync::Arc<template::TemplateSpec>>,
}

impl fmt::Debug for ProviderSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderSpec")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key)
            .field("extra", &self.extra)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ProviderSpec {
    /// A spec with the kind's default base URL and no key.
    pub fn new(name: impl Into<String>, kind: ProviderKind) -> Self {
        ProviderSpec {
            name: name.into(),
            kind,
            base_url: default_base_url(kind).to_string(),
            api_key: None,
            headers: Vec::new(),
            extra: ProviderExtra::default(),
        }
    }
}

/// The default base URL of a provider kind.
pub fn default_base_url(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Openai => "https://api.openai.com/v1",
        ProviderKind::Anthropic => "https://api.anthropic.com",
        ProviderKind::Gemini => "https://generativelanguage.googleapis.com",
        ProviderKind::Ollama => "http://127.0.0.1:11434",
        ProviderKind::Openrouter => "https://openrouter.ai/api/v1",
        ProviderKind::Compatible => "http://127.0.0.1:8000/v1",
        ProviderKind::Mock => "mock://local",
        ProviderKind::Responses => "https://api.openai.com/v1",
        // No sensible default: a resource endpoint is per customer.
        ProviderKind::Azure => "https://YOUR-RESOURCE.openai.azure.com",
        ProviderKind::Template => "http://127.0.0.1:8000",
    }
}

/// A ready-to-send HTTP request (always a POST of a JSON body).
#[derive(Debug, Clone)]
pub struct HttpCall {
    /// Full URL.
    pub url: String,
    /// Headers, auth included (header values holding keys are marked sensitive).
    pub headers: reqwest::header::HeaderMap,
    /// JSON body.
    pub body: serde_json::Value,
}

/// Decodes the frames of one streamed response into deltas. One per response.
pub trait StreamDecoder: Send {
    /// One SSE event (`event` is "message" when unnamed) or one NDJSON line
    /// (`event` is ""). Pushes what it extracts onto `out`.
    fn frame(&mut self, event: &str, data: &str, out: &mut Vec<Delta>) -> Result<(), EngineError>;

    /// One frame as the upstream sent it: nothing of it may be kept or
    /// emitted before `masker` has masked it. By default the whole frame is
    /// masked, then read by [`StreamDecoder::frame`].
    fn frame_unmasked(
        &mut self,
        event: &str,
        data: &str,
        masker: &mask::Masker,
        out: &mut Vec<Delta>,
    ) -> Result<(), EngineError> {
        self.frame(event, &masker.mask(data), out)
    }

    /// The body ended. Emit whatever was held back (e.g. a final usage).
    fn end(&mut self, _out: &mut Vec<Delta>) -> Result<(), EngineError> {
        Ok(())
    }

    /// Whether the protocol's own end marker was seen (`[DONE]`,
    /// `message_stop`, `done: true`, a finishReason). A body that ends
    /// before it is a cut stream.
    fn is_done(&self) -> bool;
}

/// The protocol a request to `model` at `spec` speaks: an `openai` model
/// that only the Responses API serves (o1-pro, o3-pro, gpt-5-pro, codex
/// models) is sent there.
pub fn wire_kind(spec: &ProviderSpec, model: &str) -> ProviderKind {
    match spec.kind {
        ProviderKind::Openai if responses::needs_responses_api(model) => ProviderKind::Responses,
        k => k,
    }
}

/// Build the HTTP request for `model` at `spec`.
pub fn build_call(
    spec: &ProviderSpec,
    model: &str,
    req: &ChatRequest,
    stream: bool,
) -> Result<HttpCall, EngineError> {
    match wire_kind(spec, model) {
        ProviderKind::Openai | ProviderKind::Openrouter | ProviderKind::Compatible => {
            openai::build(spec, model, req, stream)
        }
        ProviderKind::Anthropic => anthropic::build(spec, model, req, stream),
        ProviderKind::Gemini => gemini::build(spec, model, req, stream),
        ProviderKind::Ollama => ollama::build(spec, model, req, stream),
        ProviderKind::Responses => responses::build(spec, model, req, stream),
        ProviderKind::Azure => azure::build(spec, model, req, stream),
        ProviderKind::Template => template::build(spec, model, req),
        ProviderKind::Mock => Err(EngineError::Config {
            message: "the mock provider does not use HTTP".into(),
        }),
    }
}

/// A fresh stream decoder for a provider kind.
pub fn stream_decoder(kind: ProviderKind) -> Box<dyn StreamDecoder> {
    match kind {
        ProviderKind::Openai
        | ProviderKind::Openrouter
        | ProviderKind::Compatible
        | ProviderKind::Azure => Box::new(openai::Decoder::default()),
        ProviderKind::Anthropic => Box::new(anthropic::Decoder::default()),
        ProviderKind::Gemini => Box::new(gemini::Decoder::default()),
        ProviderKind::Responses => Box::new(responses::Decoder::default()),
        ProviderKind::Ollama | ProviderKind::Mock | ProviderKind::Template => {
            Box::new(ollama::Decoder::default())
        }
    }
}

/// The stream decoder for a request to `model` at `spec` (see [`wire_kind`]).
pub fn stream_decoder_for(spec: &ProviderSpec, model: &str) -> Box<dyn StreamDecoder> {
    stream_decoder(wire_kind(spec, model))
}

/// Decode a complete non-streamed response body.
pub fn parse_response(kind: ProviderKind, body: &[u8]) -> Result<Vec<Delta>, EngineError> {
    match kind {
        ProviderKind::Openai
        | ProviderKind::Openrouter
        | ProviderKind::Compatible
        | ProviderKind::Azure => openai::parse_response(body),
        ProviderKind::Anthropic => anthropic::parse_response(body),
        ProviderKind::Gemini => gemini::parse_response(body),
        ProviderKind::Responses => responses::parse_response(body),
        ProviderKind::Ollama | ProviderKind::Mock | ProviderKind::Template => {
            ollama::parse_response(body)
        }
    }
}

/// Decode a complete body of a request to `model` at `spec`: like
/// [`parse_response`], and a templated provider reads its own pointers.
pub fn parse_response_for(
    spec: &ProviderSpec,
    model: &str,
    body: &[u8],
) -> Result<Vec<Delta>, EngineError> {
    match (wire_kind(spec, model), &spec.extra.template) {
        (ProviderKind::Template, Some(t)) => template::parse_response(t, body),
        (ProviderKind::Template, None) => Err(template::missing(spec)),
        (kind, _) => parse_response(kind, body),
    }
}

/// Insert a header, marking it sensitive when it carries a secret.
pub(crate) fn put_header(
    headers: &mut reqwest::header::HeaderMap,
    name: &str,
    value: &str,
    sensitive: bool,
) -> Result<(), EngineError> {
    let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        EngineError::Config {
            message: format!("invalid header name {name:?}"),
        }
    })?;
    let mut v = reqwest::header::HeaderValue::from_str(value).map_err(|_| EngineError::Config {
        message: if sensitive {
            format!("the value of header {name} holds characters not allowed in HTTP headers")
        } else {
            format!("invalid value for header {name}: {value:?}")
        },
    })?;
    v.set_sensitive(sensitive);
    headers.insert(name, v);
    Ok(())
}

/// Common headers: JSON content type plus the spec's extra headers.
pub(crate) fn base_headers(spec: &ProviderSpec) -> Result<reqwest::header::HeaderMap, EngineError> {
    let mut h = reqwest::header::HeaderMap::new();
    put_header(&mut h, "content-type", "application/json", false)?;
    for (k, v) in &spec.headers {
        put_header(&mut h, k, v, false)?;
    }
    Ok(h)
}

/// The key, or a clear error naming the provider.
pub(crate) fn require_key(spec: &ProviderSpec) -> Result<&str, EngineError> {
    match &spec.api_key {
        Some(k) if !k.expose().is_empty() => Ok(k.expose()),
        _ => Err(EngineError::Config {
            message: format!(
                "no API key for provider {:?}: set its key variable (see `quorum models`)",
                spec.name
            ),
        }),
    }
}

/// Join a base URL and a path with exactly one slash.
pub(crate) fn join_url(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// Parse a JSON frame, naming the frame in the error.
pub(crate) fn parse_json(what: &str, data: &str) -> Result<serde_json::Value, EngineError> {
    serde_json::from_str(data.trim()).map_err(|e| EngineError::Protocol {
        message: format!("malformed {what} frame ({e}): {}", snippet(data)),
    })
}

/// An `f32` parameter as the JSON number the user wrote (0.3, not the
/// 0.30000001192092896 that widening to f64 gives): the shortest decimal
/// that reads back as the same f32.
pub(crate) fn param_json(x: f32) -> serde_json::Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// The first 120 characters of a frame, for error messages.
pub(crate) fn snippet(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(120) {
        // A word cut short is dropped (see `mask::cut`).
        Some((i, _)) => mask::cut(s, i),
        None => s.to_string(),
    }
}
