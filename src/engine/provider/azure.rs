//! Azure OpenAI deployments: the Chat Completions protocol at
//! `{base_url}/openai/deployments/{deployment}/chat/completions?api-version=V`,
//! authenticated with an `api-key` header. The model of a target is the
//! deployment name (`azure/my-gpt4o`); the body is OpenAI's, and so is the
//! stream (decoded by [`super::openai::Decoder`]).

use super::{base_headers, join_url, put_header, require_key, HttpCall, ProviderSpec};
use crate::engine::error::EngineError;
use crate::engine::provider::ProviderKind;
use crate::engine::request::ChatRequest;

/// The `api-version` sent when the config names none: the current GA version
/// of the data-plane inference API.
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

/// Build the request for deployment `deployment`.
pub fn build(
    spec: &ProviderSpec,
    deployment: &str,
    req: &ChatRequest,
    stream: bool,
) -> Result<HttpCall, EngineError> {
    let key = require_key(spec)?;
    if deployment.is_empty()
        || !deployment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(EngineError::Config {
            message: format!(
                "{deployment:?} is not an Azure deployment name (letters, digits, - _ . only)"
            ),
        });
    }
    let version = spec
        .extra
        .api_version
        .as_deref()
        .filter(|v| !v.is_empty())
        .unwrap_or(DEFAULT_API_VERSION);
    let mut headers = base_headers(spec)?;
    put_header(&mut headers, "api-key", key, true)?;
    let path = format!("openai/deployments/{deployment}/chat/completions?api-version={version}");
    Ok(HttpCall {
        url: join_url(&spec.base_url, &path),
        headers,
        body: super::openai::body(ProviderKind::Azure, deployment, req, stream),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::provider::Secret;
    use serde_json::json;

    #[test]
    fn deployment_url_api_version_and_key_header() {
        let mut s = ProviderSpec::new("azure", ProviderKind::Azure);
        s.base_url = "https://contoso.openai.azure.com/".into();
        s.api_key = Some(Secret::new("azure-secret-key"));
        let mut req = ChatRequest::from_prompt("hi");
        req.max_tokens = Some(50);
        let call = build(&s, "gpt4o-prod", &req, true).unwrap();
        assert_eq!(
            call.url,
            "https://contoso.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(call.headers["api-key"], "azure-secret-key");
        assert!(call.headers["api-key"].is_sensitive());
        assert!(call.headers.get("authorization").is_none());
        assert!(!format!("{call:?}").contains("azure-secret-key"));
        assert_eq!(
            call.body["messages"],
            json!([{"role": "user", "content": "hi"}])
        );
        assert_eq!(call.body["max_completion_tokens"], json!(50));
        assert_eq!(call.body["stream_options"], json!({"include_usage": true}));

        s.extra.api_version = Some("2025-04-01-preview".into());
        let call = build(&s, "o4-mini", &req, false).unwrap();
        assert!(call
            .url
            .ends_with("/o4-mini/chat/completions?api-version=2025-04-01-preview"));
        assert!(build(&s, "a/b", &req, false).is_err());
        s.api_key = None;
        assert_eq!(build(&s, "x", &req, false).unwrap_err().kind(), "config");
    }
}
