//! Discovery: which models a provider offers right now.
//!
//! Each provider kind has a list endpoint: Ollama's `GET /api/tags` (the models
//! installed locally), OpenAI-style `GET {base}/models`, OpenRouter's
//! `GET /api/v1/models` (with prices and context lengths), Anthropic's
//! `GET /v1/models`, Gemini's `GET /v1beta/models`. The faces call this off the
//! path to their first frame, with a short timeout, and offer what comes back in
//! the target picker; a provider that does not answer is simply not listed.
//!
//! Keys go in headers marked sensitive, never in URLs, and errors are redacted
//! like every other engine error.

use std::time::Duration;

use serde_json::Value;

use super::cost::Price;
use super::error::EngineError;
use super::provider::http::build_client;
use super::provider::{base_headers, put_header, ProviderKind, ProviderSpec};

/// One model a provider listed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DiscoveredModel {
    /// The model name as the provider spells it (`gpt-4o-mini`, `llama3.2:3b`).
    pub name: String,
    /// A display name, where the provider gives one.
    pub display_name: Option<String>,
    /// Context window in tokens, where listed.
    pub context_window: Option<u64>,
    /// Output token limit, where listed.
    pub max_output: Option<u64>,
    /// Price in USD per million tokens, where listed (OpenRouter).
    pub price: Option<Price>,
}

/// What one provider answered.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// Registry name of the provider.
    pub provider: String,
    /// Its models, or why they could not be listed.
    pub models: Result<Vec<DiscoveredModel>, EngineError>,
}

/// The request that lists a provider's models (URL and headers), or None for
/// providers without one (mock).
fn list_request(
    spec: &ProviderSpec,
) -> Result<Option<(String, reqwest::header::HeaderMap)>, EngineError> {
    let base = spec.base_url.trim_end_matches('/');
    let mut headers = base_headers(spec)?;
    let key = spec.api_key.as_ref().map(|k| k.expose());
    let url = match spec.kind {
        // Azure lists deployments only on its management plane; a template has no list.
        ProviderKind::Mock | ProviderKind::Azure | ProviderKind::Template => return Ok(None),
        ProviderKind::Ollama => format!("{base}/api/tags"),
        ProviderKind::Openai
        | ProviderKind::Openrouter
        | ProviderKind::Compatible
        | ProviderKind::Responses => {
            if let Some(k) = key {
                if !headers.contains_key(reqwest::header::AUTHORIZATION) {
                    put_header(&mut headers, "authorization", &format!("Bearer {k}"), true)?;
                }
            }
            format!("{base}/models")
        }
        ProviderKind::Anthropic => {
            if let Some(k) = key {
                put_header(&mut headers, "x-api-key", k, true)?;
            }
            if !headers.contains_key("anthropic-version") {
                put_header(&mut headers, "anthropic-version", "2023-06-01", false)?;
            }
            format!("{base}/v1/models?limit=1000")
        }
        ProviderKind::Gemini => {
            if let Some(k) = key {
                put_header(&mut headers, "x-goog-api-key", k, true)?;
            }
            format!("{base}/v1beta/models?pageSize=1000")
        }
    };
    Ok(Some((url, headers)))
}

/// Providers worth asking for their models: those with a key, plus the keyless
/// ones (a local Ollama). Not the mock, whose models are always listed.
pub fn discoverable(reg: &super::registry::Registry) -> Vec<ProviderSpec> {
    reg.providers()
        .filter(|s| {
            s.kind != ProviderKind::Mock && (super::registry::has_key(s) || !s.kind.needs_key())
        })
        .map(|s| ProviderSpec::clone(s))
        .collect()
}

/// List the models of one provider, giving up after `timeout`.
pub async fn list_models(
    client: &reqwest::Client,
    spec: &ProviderSpec,
    timeout: Duration,
) -> Result<Vec<DiscoveredModel>, EngineError> {
    if spec.kind == ProviderKind::Mock {
        return Ok(super::provider::mock::models()
            .iter()
            .map(|m| DiscoveredModel {
                name: m.name.to_string(),
                display_name: Some(format!("{} (mock)", m.name)),
                ..Default::default()
            })
            .collect());
    }
    let Some((url, headers)) = list_request(spec)? else {
        return Ok(Vec::new());
    };
    let secret = spec.api_key.as_ref().map(|k| k.expose().to_string());
    let redact = |e: EngineError| match &secret {
        Some(s) => e.redact(s),
        None => e,
    };
    let fetch = async {
        let resp = client
            .get(&url)
            .headers(headers)
            .send()
            .await
            .map_err(EngineError::from_reqwest)?;
        let status = resp.status().as_u16();
        let resp_headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(EngineError::from_reqwest)?;
        if !(200..300).contains(&status) {
            return Err(EngineError::from_http(status, &resp_headers, &body));
        }
        parse_list(spec.kind, &body)
    };
    match tokio::time::timeout(timeout, fetch).await {
        Ok(r) => r.map_err(redact),
        Err(_) => Err(EngineError::Timeout {
            phase: super::error::TimeoutPhase::Total,
            after: timeout,
        }),
    }
}

/// List the models of every given provider at once (a fresh client; each
/// provider gets `timeout`).
pub async fn discover_all(specs: Vec<ProviderSpec>, timeout: Duration) -> Vec<Discovery> {
    let client = match build_client(timeout) {
        Ok(c) => c,
        Err(e) => {
            return specs
                .into_iter()
                .map(|s| Discovery {
                    provider: s.name,
                    models: Err(e.clone()),
                })
                .collect()
        }
    };
    let tasks = specs.into_iter().map(|spec| {
        let client = client.clone();
        async move {
            let models = list_models(&client, &spec, timeout).await;
            Discovery {
                provider: spec.name,
                models,
            }
        }
    });
    futures_util::future::join_all(tasks).await
}

fn protocol(what: &str) -> EngineError {
    EngineError::Protocol {
        message: format!("model list: {what}"),
    }
}

fn u64_of(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// OpenRouter prices are USD per token, as strings ("0.00000015").
fn per_million(v: &Value) -> Option<f64> {
    let x = match v {
        Value::String(s) => s.parse::<f64>().ok()?,
        Value::Number(n) => n.as_f64()?,
        _ => return None,
    };
    (x.is_finite() && x >= 0.0).then_some(x * 1e6)
}

/// The array under `key`, or a protocol error naming it.
fn array<'v>(v: &'v Value, key: &str) -> Result<&'v Vec<Value>, EngineError> {
    v.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| protocol(&format!("no `{key}` array")))
}

/// The string under `key`, owned.
fn string(m: &Value, key: &str) -> Option<String> {
    m.get(key).and_then(Value::as_str).map(str::to_string)
}

/// Parse a list response body of a provider kind.
pub fn parse_list(kind: ProviderKind, body: &[u8]) -> Result<Vec<DiscoveredModel>, EngineError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| protocol(&e.to_string()))?;
    let mut out = Vec::new();
    match kind {
        ProviderKind::Mock | ProviderKind::Azure | ProviderKind::Template => {}
        ProviderKind::Ollama => {
            let list = array(&v, "models")?;
            for m in list {
                let Some(name) = m
                    .get("name")
                    .or_else(|| m.get("model"))
                    .and_then(Value::as_str)
                else {
                    continue;
                };
                let size = m
                    .pointer("/details/parameter_size")
                    .and_then(Value::as_str)
                    .map(|p| format!("{name} ({p})"));
                out.push(DiscoveredModel {
                    name: name.to_string(),
                    display_name: size,
                    ..Default::default()
                });
            }
        }
        ProviderKind::Openai
        | ProviderKind::Openrouter
        | ProviderKind::Compatible
        | ProviderKind::Responses => {
            let list = array(&v, "data")?;
            for m in list {
                let Some(id) = m.get("id").and_then(Value::as_str) else {
                    continue;
                };
                let price = match (
                    m.pointer("/pricing/prompt").and_then(per_million),
                    m.pointer("/pricing/completion").and_then(per_million),
                ) {
                    (Some(input), Some(output)) => Some(Price {
                        input,
                        output,
                        cached_input: m.pointer("/pricing/input_cache_read").and_then(per_million),
                        cache_write: m
                            .pointer("/pricing/input_cache_write")
                            .and_then(per_million),
                        reasoning: m
                            .pointer("/pricing/internal_reasoning")
                            .and_then(per_million)
                            .filter(|r| *r > 0.0),
                    }),
                    _ => None,
                };
                out.push(DiscoveredModel {
                    name: id.to_string(),
                    display_name: string(m, "name"),
                    context_window: m
                        .get("context_length")
                        .or_else(|| m.get("context_window"))
                        .and_then(u64_of),
                    max_output: m
                        .pointer("/top_provider/max_completion_tokens")
                        .and_then(u64_of),
                    price,
                });
            }
        }
        ProviderKind::Anthropic => {
            let list = array(&v, "data")?;
            for m in list {
                let Some(id) = m.get("id").and_then(Value::as_str) else {
                    continue;
                };
                out.push(DiscoveredModel {
                    name: id.to_string(),
                    display_name: string(m, "display_name"),
                    ..Default::default()
                });
            }
        }
        ProviderKind::Gemini => {
            let list = array(&v, "models")?;
            for m in list {
                let Some(name) = m.get("name").and_then(Value::as_str) else {
                    continue;
                };
                // Only models that can chat: embedding-only models are not targets.
                let chats = m
                    .get("supportedGenerationMethods")
                    .and_then(Value::as_array)
                    .is_none_or(|a| a.iter().any(|x| x == "generateContent"));
                if !chats {
                    continue;
                }
                out.push(DiscoveredModel {
                    name: name.strip_prefix("models/").unwrap_or(name).to_string(),
                    display_name: string(m, "displayName"),
                    context_window: m.get("inputTokenLimit").and_then(u64_of),
                    max_output: m.get("outputTokenLimit").and_then(u64_of),
                    price: None,
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_tags() {
        let body = br#"{"models":[{"name":"llama3.2:3b","model":"llama3.2:3b","details":{"parameter_size":"3.2B"}},{"model":"qwen3:8b"}]}"#;
        let m = parse_list(ProviderKind::Ollama, body).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name, "llama3.2:3b");
        assert_eq!(m[0].display_name.as_deref(), Some("llama3.2:3b (3.2B)"));
        assert_eq!(m[1].name, "qwen3:8b");
    }

    #[test]
    fn openrouter_prices_are_per_token_strings() {
        let body = br#"{"data":[{"id":"openai/gpt-4o-mini","name":"OpenAI: GPT-4o-mini","context_length":128000,
            "pricing":{"prompt":"0.00000015","completion":"0.0000006","input_cache_read":"0.000000075","internal_reasoning":"0"},
            "top_provider":{"max_completion_tokens":16384}}]}"#;
        let m = parse_list(ProviderKind::Openrouter, body).unwrap();
        let p = m[0].price.clone().unwrap();
        assert!((p.input - 0.15).abs() < 1e-9 && (p.output - 0.6).abs() < 1e-9);
        assert!((p.cached_input.unwrap() - 0.075).abs() < 1e-9);
        assert_eq!(
            p.reasoning, None,
            "a zero reasoning rate means none of its own"
        );
        assert_eq!(m[0].context_window, Some(128000));
        assert_eq!(m[0].max_output, Some(16384));
    }

    #[test]
    fn gemini_lists_only_chat_models_without_the_prefix() {
        let body = br#"{"models":[
            {"name":"models/gemini-2.5-flash","displayName":"Gemini 2.5 Flash","inputTokenLimit":1048576,"outputTokenLimit":65536,"supportedGenerationMethods":["generateContent","countTokens"]},
            {"name":"models/text-embedding-004","supportedGenerationMethods":["embedContent"]}]}"#;
        let m = parse_list(ProviderKind::Gemini, body).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].name, "gemini-2.5-flash");
        assert_eq!(m[0].context_window, Some(1048576));
    }

    #[test]
    fn anthropic_and_openai_lists() {
        let a = parse_list(
            ProviderKind::Anthropic,
            br#"{"data":[{"type":"model","id":"claude-sonnet-4-5","display_name":"Claude Sonnet 4.5"}],"has_more":false}"#,
        )
        .unwrap();
        assert_eq!(a[0].display_name.as_deref(), Some("Claude Sonnet 4.5"));
        let o = parse_list(
            ProviderKind::Openai,
            br#"{"object":"list","data":[{"id":"gpt-4o","object":"model"},{"id":"gpt-4o","object":"model"}]}"#,
        )
        .unwrap();
        assert_eq!(o.len(), 1, "duplicates collapse");
    }

    #[test]
    fn malformed_lists_are_protocol_errors() {
        for kind in [
            ProviderKind::Ollama,
            ProviderKind::Openai,
            ProviderKind::Anthropic,
            ProviderKind::Gemini,
        ] {
            let e = parse_list(kind, b"{\"nope\":1}").unwrap_err();
            assert_eq!(e.kind(), "protocol");
            assert!(parse_list(kind, b"not json").is_err());
        }
    }
}
