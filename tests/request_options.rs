//! Request options end to end, over real HTTP on 127.0.0.1: images for the
//! four vision providers in their documented shapes, capability refusals
//! before sending, JSON Schema and tool-call verdicts, signed thinking sent
//! back, and the OpenAI Responses API, Azure OpenAI and templated providers.
//! Engines are built from config text, as a user would write it.

mod support;

use std::path::PathBuf;

use llm_quorum::config::{self, Overrides};
use llm_quorum::engine::attachment::image_from_bytes;
use llm_quorum::engine::cost::Pricing;
use llm_quorum::engine::request::{
    Message, Reasoning, ReasoningEffort, ResponseFormat, Tool, ToolChoice,
};
use llm_quorum::engine::validate::parse_tools;
use llm_quorum::engine::{ChatRequest, Completion, Engine, FinishReason, RunOptions};
use serde_json::json;
use support::{Reply, Server};

const KEY: &str = "sk-options-test-0123456789";

/// A 1x1 PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0xF8, 0xCF, 0xC0, 0xF0,
    0x1F, 0x00, 0x05, 0x00, 0x01, 0xFF, 0x89, 0x99, 0x3D, 0x1D, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
];

fn engine(text: &str) -> Engine {
    let env = |k: &str| k.ends_with("_API_KEY").then(|| KEY.to_string());
    let cfg = config::load_text(None, text, &Overrides::default(), &env)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut ec = cfg.engine_config(&env).unwrap();
    // The built-in price table, with its capability lists, as the app loads it.
    ec.pricing = Pricing::load(Vec::new(), None);
    Engine::new(ec).unwrap()
}

async fn run(engine: &Engine, req: ChatRequest, target: &str, stream: bool) -> Completion {
    let opts = RunOptions {
        stream,
        cache: Some(false),
        ..Default::default()
    };
    engine
        .run(req, vec![target.to_string()], opts)
        .collect()
        .await
        .remove(0)
}

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/responses")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn image_request(prompt: &str) -> ChatRequest {
    let mut m = Message::user(prompt);
    m.attachments
        .push(image_from_bytes("dot.png", PNG).unwrap());
    ChatRequest {
        messages: vec![m],
        ..Default::default()
    }
}

const PNG_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg==";

// ---------------------------------------------------------------------------
// Images, in each provider's documented vision shape

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_reach_all_four_vision_providers_in_their_shapes() {
    // Setup: one server per provider, each answering in its own format.
    let openai = Server::start(vec![Reply::json(
        200,
        r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"A dot."},"finish_reason":"stop"}],"usage":{"prompt_tokens":90,"completion_tokens":3}}"#,
    )])
    .await;
    let anthropic = Server::start(vec![Reply::json(
        200,
        r#"{"type":"message","role":"assistant","content":[{"type":"text","text":"A dot."}],"stop_reason":"end_turn","usage":{"input_tokens":20,"output_tokens":3}}"#,
    )])
    .await;
    let gemini = Server::start(vec![Reply::json(
        200,
        r#"{"candidates":[{"content":{"parts":[{"text":"A dot."}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":260,"candidatesTokenCount":3}}"#,
    )])
    .await;
    let ollama = Server::start(vec![Reply::json(
        200,
        r#"{"model":"llava","message":{"role":"assistant","content":"A dot."},"done":true,"done_reason":"stop","prompt_eval_count":580,"eval_count":3}"#,
    )])
    .await;
    let e = engine(&format!(
        "[providers.openai]\nbase_url = \"{}/v1\"\n\
         [providers.anthropic]\nbase_url = \"{}\"\n\
         [providers.gemini]\nbase_url = \"{}\"\n\
         [providers.ollama]\nbase_url = \"{}\"\n",
        openai.url, anthropic.url, gemini.url, ollama.url
    ));

    // Exec
    for (target, server) in [
        ("openai/gpt-4o-mini", &openai),
        ("anthropic/claude-sonnet-4-5", &anthropic),
        ("gemini/gemini-2.5-flash", &gemini),
        ("ollama/llava", &ollama),
    ] {
        let c = run(&e, image_request("What is this?"), target, false).await;
        assert!(c.error.is_none(), "{target}: {:?}", c.error);
        assert_eq!(c.text, "A dot.", "{target}");
        assert_eq!(server.count(), 1, "{target}");
    }

    // Check: the documented shapes.
    // OpenAI Chat Completions: content parts, `image_url.url` a data URL.
    let b = openai.requests()[0].json();
    assert_eq!(
        b["messages"][0]["content"],
        json!([
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG_B64}")}}
        ])
    );
    // Anthropic Messages: an `image` block with a base64 source, before the text.
    let b = anthropic.requests()[0].json();
    assert_eq!(
        b["messages"][0]["content"],
        json!([
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
            {"type": "text", "text": "What is this?"}
        ])
    );
    // Gemini: an `inlineData` part with its MIME type.
    let b = gemini.requests()[0].json();
    assert_eq!(
        b["contents"][0]["parts"],
        json!([
            {"text": "What is this?"},
            {"inlineData": {"mimeType": "image/png", "data": PNG_B64}}
        ])
    );
    // Ollama /api/chat: `images`, a list of bare base64 strings.
    let b = ollama.requests()[0].json();
    assert_eq!(
        b["messages"][0],
        json!({"role": "user", "content": "What is this?", "images": [PNG_B64]})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_without_vision_is_refused_before_sending_by_name() {
    let s = Server::start(vec![Reply::json(200, "{}")]).await;
    let e = engine(&format!(
        "[providers.openai]\nbase_url = \"{}/v1\"\n\
         [providers.house]\nkind = \"openai\"\nbase_url = \"{}/v1\"\napi_key_env = \"HOUSE_API_KEY\"\n\
         [models.\"house/eyeless\".capabilities]\nvision = false\n",
        s.url, s.url
    ));
    // The price table says gpt-3.5-turbo has no vision.
    let c = run(&e, image_request("see?"), "openai/gpt-3.5-turbo", true).await;
    let err = c.error.expect("refused").to_string();
    assert!(
        err.contains("openai/gpt-3.5-turbo") && err.contains("images"),
        "{err}"
    );
    // Config says so.
    let c = run(&e, image_request("see?"), "house/eyeless", true).await;
    let err = c.error.expect("refused").to_string();
    assert!(
        err.contains("house/eyeless") && err.contains("images"),
        "{err}"
    );
    // Mock models read text only.
    let c = run(&e, image_request("see?"), "mock/alpha", true).await;
    assert!(c.error.expect("refused").to_string().contains("mock/alpha"));
    // Thinking on a model without it.
    let mut req = ChatRequest::from_prompt("think");
    req.reasoning = Some(Reasoning::Effort(ReasoningEffort::High));
    let c = run(&e, req, "openai/gpt-4o-mini", true).await;
    let err = c.error.expect("refused").to_string();
    assert!(
        err.contains("openai/gpt-4o-mini") && err.contains("reasoning"),
        "{err}"
    );
    assert_eq!(s.count(), 0, "nothing was sent");
}

// ---------------------------------------------------------------------------
// Structured output and tools, judged

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_verdict_and_tool_call_validity_in_the_completion() {
    let s = Server::start(vec![
        Reply::json(
            200,
            r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"{\"name\":\"Ada\",\"age\":\"36\"}"},"finish_reason":"stop"}]}"#,
        ),
        Reply::json(
            200,
            r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[
                {"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
                {"id":"c2","type":"function","function":{"name":"get_weather","arguments":"{\"town\":\"Lyon\"}"}}]},"finish_reason":"tool_calls"}]}"#,
        ),
    ])
    .await;
    let e = engine(&format!(
        "[providers.openai]\nbase_url = \"{}/v1\"\n",
        s.url
    ));
    let schema = json!({"type": "object", "required": ["name", "age"],
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}});
    let mut req = ChatRequest::from_prompt("Who?");
    req.response_format = ResponseFormat::JsonSchema {
        name: "person".into(),
        schema: schema.clone(),
    };
    let c = run(&e, req, "openai/gpt-4o-mini", false).await;
    assert_eq!(c.schema_valid, Some(false));
    let err = c.schema_error.clone().unwrap();
    assert_eq!(err.path, "/age");
    let j = serde_json::to_value(&c).unwrap();
    assert_eq!(j["schema_valid"], json!(false));
    assert_eq!(j["schema_error"]["path"], json!("/age"));
    // The documented json_schema response_format went out.
    assert_eq!(
        s.requests()[0].json()["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    );

    let mut req = ChatRequest::from_prompt("Weather?");
    req.tools = parse_tools(
        &json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": false}}}]),
    )
    .unwrap();
    req.tool_choice = ToolChoice::Required;
    let c = run(&e, req, "openai/gpt-4o-mini", false).await;
    assert_eq!(c.finish_reason, FinishReason::ToolCalls);
    assert_eq!(c.tool_calls[0].valid, Some(true));
    assert_eq!(c.tool_calls[1].valid, Some(false));
    let why = c.tool_calls[1].invalid_reason.as_deref().unwrap();
    assert!(why.starts_with("at /: ") && why.contains("town"), "{why}");
    let sent = s.requests()[1].json();
    assert_eq!(sent["tool_choice"], json!("required"));
    assert_eq!(sent["tools"][0]["type"], json!("function"));
}

// ---------------------------------------------------------------------------
// Reasoning, mapped per provider, and signed thinking sent back

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_thinking_signature_goes_back_with_the_tool_result() {
    let sse = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"usage\":{\"input_tokens\":50,\"output_tokens\":1}}}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"I need the weather tool.\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"get_weather\",\"input\":{}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \\\"Paris\\\"}\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":60}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";
    let s = Server::start(vec![Reply::sse(sse)]).await;
    let e = engine(&format!(
        "[providers.anthropic]\nbase_url = \"{}\"\n",
        s.url
    ));
    let tool = Tool {
        name: "get_weather".into(),
        description: "Weather of a city".into(),
        parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
    };
    let mut req = ChatRequest::from_prompt("Weather in Paris?");
    req.tools = vec![tool];
    req.reasoning = Some(Reasoning::Budget(2048));
    let c = run(&e, req.clone(), "anthropic/claude-sonnet-4-5", true).await;
    assert!(c.error.is_none(), "{:?}", c.error);
    assert_eq!(c.thinking_blocks.len(), 1);
    assert_eq!(c.tool_calls[0].valid, Some(true));
    // First request: the documented thinking object.
    let first = s.requests()[0].json();
    assert_eq!(
        first["thinking"],
        json!({"type": "enabled", "budget_tokens": 2048})
    );

    // The next turn carries the signed thinking block first, unchanged.
    req.messages.push(Message::from_completion(&c));
    req.messages.push(Message::tool_result(
        "toolu_01",
        "get_weather",
        "21 C, sunny",
    ));
    let _ = run(&e, req, "anthropic/claude-sonnet-4-5", true).await;
    let second = s.requests()[1].json();
    assert_eq!(
        second["messages"][1]["content"],
        json!([
            {"type": "thinking", "thinking": "I need the weather tool.",
             "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"},
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}
        ])
    );
    assert_eq!(
        second["messages"][2]["content"][0]["type"],
        json!("tool_result")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_maps_to_each_providers_parameter() {
    let openai = Server::start(vec![Reply::json(
        200,
        r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}"#,
    )])
    .await;
    let gemini = Server::start(vec![Reply::json(
        200,
        r#"{"candidates":[{"content":{"parts":[{"text":"ok"}],"role":"model"},"finishReason":"STOP"}]}"#,
    )])
    .await;
    let e = engine(&format!(
        "[providers.openai]\nbase_url = \"{}/v1\"\n[providers.gemini]\nbase_url = \"{}\"\n",
        openai.url, gemini.url
    ));
    let mut req = ChatRequest::from_prompt("think");
    req.reasoning = Some(Reasoning::Effort(ReasoningEffort::Minimal));
    run(&e, req.clone(), "openai/gpt-5-mini", false).await;
    assert_eq!(
        openai.requests()[0].json()["reasoning_effort"],
        json!("minimal")
    );
    req.reasoning = Some(Reasoning::Effort(ReasoningEffort::High));
    run(&e, req.clone(), "gemini/gemini-3-pro-preview", false).await;
    assert_eq!(
        gemini.requests()[0].json()["generationConfig"]["thinkingConfig"],
        json!({"thinkingLevel": "high", "includeThoughts": true})
    );
    req.reasoning = Some(Reasoning::Budget(3000));
    run(&e, req, "gemini/gemini-2.5-flash", false).await;
    assert_eq!(
        gemini.requests()[1].json()["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 3000, "includeThoughts": true})
    );
}

// ---------------------------------------------------------------------------
// The OpenAI Responses API

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_api_streams_reasoning_tool_calls_and_usage() {
    let s = Server::start(vec![Reply::sse(fixture("stream-reasoning-tool-call.sse"))]).await;
    let e = engine(&format!(
        "[providers.openai]\nbase_url = \"{}/v1\"\n",
        s.url
    ));
    let mut req = ChatRequest::from_prompt("Weather in Paris?");
    req.reasoning = Some(Reasoning::Effort(ReasoningEffort::High));
    req.tools = parse_tools(&json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]))
    .unwrap();
    // o3-pro is served only by the Responses API: chosen automatically.
    let c = run(&e, req, "openai/o3-pro", true).await;
    assert!(c.error.is_none(), "{:?}", c.error);
    let seen = &s.requests()[0];
    assert_eq!(seen.path, "/v1/responses");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    let b = seen.json();
    assert_eq!(b["reasoning"], json!({"effort": "high", "summary": "auto"}));
    assert_eq!(
        b["input"],
        json!([{"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]}])
    );
    assert_eq!(b["tools"][0]["name"], json!("get_weather"));
    assert_eq!(b["stream"], json!(true));
    assert_eq!(
        c.thinking,
        "**Planning the lookup**\n\nThe user wants Paris weather; I will call the tool."
    );
    assert_eq!(c.tool_calls.len(), 1);
    assert_eq!(c.tool_calls[0].id, "call_Xk2");
    assert_eq!(c.tool_calls[0].arguments, r#"{"city":"Paris"}"#);
    assert_eq!(c.tool_calls[0].valid, Some(true));
    assert_eq!(c.finish_reason, FinishReason::ToolCalls);
    assert_eq!(c.usage.input_tokens, 81);
    assert_eq!(c.usage.cached_input_tokens, 64);
    assert_eq!(c.usage.output_tokens, 412);
    assert_eq!(c.usage.reasoning_tokens, 384);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_api_chosen_in_config_schema_and_errors() {
    let s = Server::start(vec![
        Reply::sse(fixture("stream-text.sse")),
        Reply::sse(fixture("error-event.sse")),
    ])
    .await;
    let e = engine(&format!(
        "[providers.resp]\nkind = \"openai-responses\"\nbase_url = \"{}/v1\"\napi_key_env = \"RESP_API_KEY\"\n",
        s.url
    ));
    let mut req = ChatRequest::from_prompt("Who?");
    req.response_format = ResponseFormat::JsonSchema {
        name: "person".into(),
        schema: json!({"type": "object", "properties": {"age": {"type": "integer"}}}),
    };
    let c = run(&e, req.clone(), "resp/gpt-4.1", true).await;
    assert_eq!(c.text, r#"{"name": "Ada", "age": "36"}"#);
    assert_eq!(c.schema_valid, Some(false));
    assert_eq!(c.schema_error.unwrap().path, "/age");
    assert_eq!(
        s.requests()[0].json()["text"],
        json!({"format": {"type": "json_schema", "name": "person",
            "schema": {"type": "object", "properties": {"age": {"type": "integer"}}}, "strict": false}})
    );
    let c = run(&e, req, "resp/gpt-4.1", true).await;
    let err = c.error.expect("error event fails the request");
    assert!(err.to_string().contains("server_error"), "{err}");
}

// ---------------------------------------------------------------------------
// Azure OpenAI and a templated REST provider

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_deployment_url_api_version_and_key_header() {
    let s = Server::start(vec![Reply::sse(
        "data: {\"choices\":[],\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{}}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\n\
data: [DONE]\n\n",
    )])
    .await;
    let e = engine(&format!(
        "[providers.az]\nkind = \"azure\"\nbase_url = \"{}\"\napi_key_env = \"AZURE_OPENAI_API_KEY\"\napi_version = \"2025-04-01-preview\"\n",
        s.url
    ));
    let c = run(&e, ChatRequest::from_prompt("hi"), "az/gpt4o-prod", true).await;
    assert!(c.error.is_none(), "{:?}", c.error);
    assert_eq!(c.text, "Hi");
    assert_eq!(c.usage.input_tokens, 5);
    let seen = &s.requests()[0];
    assert_eq!(
        seen.path,
        "/openai/deployments/gpt4o-prod/chat/completions?api-version=2025-04-01-preview"
    );
    assert_eq!(seen.header("api-key"), Some(KEY));
    assert_eq!(seen.header("authorization"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templated_provider_from_config_alone() {
    let s = Server::start(vec![Reply::json(
        200,
        r#"{"result":{"generated_text":"Four.","stop":"eos"},"meta":{"tokens_in":9,"tokens_out":2}}"#,
    )])
    .await;
    let e = engine(&format!(
        r#"[providers.house]
kind = "template"
base_url = "{}"
api_key_env = "HOUSE_API_KEY"
[providers.house.template]
path = "/generate"
body = {{ model = "{{{{model}}}}", inputs = "{{{{prompt}}}}", parameters = {{ max_new_tokens = "{{{{max_tokens}}}}" }} }}
text = "/result/generated_text"
finish_reason = "/result/stop"
input_tokens = "/meta/tokens_in"
output_tokens = "/meta/tokens_out"
"#,
        s.url
    ));
    let mut req = ChatRequest::from_prompt("2+2?");
    req.max_tokens = Some(16);
    // Asked to stream: a template is asked for the whole answer.
    let c = run(&e, req, "house/house-7b", true).await;
    assert!(c.error.is_none(), "{:?}", c.error);
    assert_eq!(c.text, "Four.");
    assert_eq!((c.usage.input_tokens, c.usage.output_tokens), (9, 2));
    assert_eq!(c.raw_finish_reason, "eos");
    let seen = &s.requests()[0];
    assert_eq!(seen.path, "/generate");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(
        seen.json(),
        json!({"model": "house-7b", "inputs": "2+2?", "parameters": {"max_new_tokens": 16}})
    );
}

#[test]
fn a_bad_template_is_a_config_error_naming_the_key() {
    let env = |_: &str| None;
    let text = "[providers.h]\nkind = \"template\"\nbase_url = \"http://127.0.0.1:1\"\n\
                [providers.h.template]\nbody = { p = \"{{promt}}\" }\ntext = \"/x\"\n";
    let e = config::load_text(None, text, &Overrides::default(), &env).unwrap_err();
    assert!(e.to_string().contains("promt"), "{e}");
    let text = "[providers.h]\nkind = \"template\"\nbase_url = \"http://127.0.0.1:1\"\n";
    let e = config::load_text(None, text, &Overrides::default(), &env).unwrap_err();
    assert!(e.to_string().contains("[template]"), "{e}");
}

/// The Responses fixtures decode the same whatever the network splits:
/// every byte offset, through the SSE framing and the decoder.
#[test]
fn responses_fixtures_split_at_every_byte() {
    use llm_quorum::engine::provider::{stream_decoder, ProviderKind};
    use llm_quorum::engine::wire::SseDecoder;
    use llm_quorum::engine::Delta;
    fn decode(pieces: &[&[u8]]) -> (Vec<Delta>, Option<String>, bool) {
        let mut d = stream_decoder(ProviderKind::Responses);
        let mut sse = SseDecoder::new();
        let mut out = Vec::new();
        let mut err = None;
        for p in pieces {
            if let Err(e) = sse.feed(p, |f| d.frame(f.event, f.data, &mut out)) {
                err = Some(e.to_string());
                break;
            }
        }
        if err.is_none() {
            if let Err(e) = sse.finish(|f| d.frame(f.event, f.data, &mut out)) {
                err = Some(e.to_string());
            }
        }
        (out, err, d.is_done())
    }
    for name in [
        "stream-reasoning-tool-call.sse",
        "stream-text.sse",
        "error-event.sse",
    ] {
        let bytes = fixture(name);
        let whole = decode(&[&bytes]);
        assert!(whole.2 || whole.1.is_some(), "{name} ends");
        for cut in 1..bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(decode(&[a, b]), whole, "{name} split at {cut}");
        }
    }
}
