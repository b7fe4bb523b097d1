//! Images through `serve`: OpenAI `image_url` content parts with data: URLs on
//! `/v1/chat/completions`, and the same parts (or `images`) on JSON-RPC
//! `llm.complete`, reach the provider as its vision input; http(s) image URLs and
//! damaged images are refused with the field that is wrong; a target that cannot
//! read images is refused by name before anything is sent.

mod support;

use serde_json::{json, Value};
use support::serve::Serve;
use support::{Reply, Server};

const FAKE_KEY: &str = "sk-quorum-test-FAKEKEY-0123456789abcdef";

/// A 1×1 PNG.
const PNG_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg==";

fn openai_sse() -> String {
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"a dot\"},\"finish_reason\":null}]}\n\n\
     data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
     data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":90,\"completion_tokens\":2,\"total_tokens\":92}}\n\n\
     data: [DONE]\n\n"
        .to_string()
}

/// `quorum serve` with an empty config and OpenAI at `upstream`.
fn serve(upstream: &str) -> Serve {
    support::serve::serve(
        &[],
        Some(""),
        &[
            ("QUORUM_NO_DISCOVERY", "1"),
            ("OPENAI_API_KEY", FAKE_KEY),
            ("OPENAI_BASE_URL", &format!("{upstream}/v1")),
        ],
    )
}

async fn post(url: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn data_url() -> String {
    format!("data:image/png;base64,{PNG_B64}")
}

/// The image parts of the upstream requests, as the provider got them.
fn upstream_images(up: &Server) -> Vec<String> {
    up.requests()
        .iter()
        .filter(|r| r.method == "POST")
        .flat_map(|r| {
            let v = r.json();
            let mut out = Vec::new();
            for m in v["messages"].as_array().cloned().unwrap_or_default() {
                for p in m["content"].as_array().cloned().unwrap_or_default() {
                    if p["type"] == "image_url" {
                        out.push(p["image_url"]["url"].as_str().unwrap_or("").to_string());
                    }
                }
            }
            out
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn v1_image_parts_reach_the_provider_and_bad_ones_are_refused() {
    let up = Server::start_with(|_| Reply::sse(openai_sse())).await;
    let s = serve(&up.url);
    let chat = format!("{}/v1/chat/completions", s.url);

    let (status, v) = post(
        &chat,
        json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": data_url(), "detail": "auto"}}
        ]}]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "a dot", "{v}");
    assert_eq!(upstream_images(&up), [data_url()]);

    // A URL on the network is not fetched: 400 naming the field, nothing sent.
    let before = up.count();
    let (status, v) = post(
        &chat,
        json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
        ]}]}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("messages[0].content[0].image_url.url"), "{v}");
    assert!(msg.contains("not fetched") && msg.contains("data:"), "{v}");

    // Not an image at all.
    let (status, v) = post(
        &chat,
        json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}
        ]}]}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not a PNG, JPEG, WebP or GIF"),
        "{v}"
    );

    // A model that reads text only is refused by name.
    let (status, v) = post(
        &chat,
        json!({"model": "mock/alpha", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": data_url()}}
        ]}]}),
    )
    .await;
    assert!((400..500).contains(&status), "{status} {v}");
    assert!(v.to_string().contains("mock/alpha"), "{v}");
    assert_eq!(up.count(), before, "nothing refused reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn llm_complete_takes_image_parts_and_images() {
    let up = Server::start_with(|_| Reply::sse(openai_sse())).await;
    let s = serve(&up.url);
    let rpc = format!("{}/rpc", s.url);
    let call = |params: Value| json!({"jsonrpc": "2.0", "id": 1, "method": "llm.complete", "params": params});

    let (_, v) = post(
        &rpc,
        call(
            json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": data_url()}}
            ]}]}),
        ),
    )
    .await;
    assert!(v["error"].is_null(), "{v}");
    assert_eq!(v["result"]["text"], "a dot", "{v}");

    let (_, v) = post(
        &rpc,
        call(
            json!({"model": "openai/gpt-4o-mini", "prompt": "What is in this image?",
                    "images": [data_url()]}),
        ),
    )
    .await;
    assert!(v["error"].is_null(), "{v}");
    assert_eq!(upstream_images(&up), [data_url(), data_url()]);

    // Bad input names its field; nothing more is sent.
    for (params, field) in [
        (
            json!({"model": "openai/gpt-4o-mini", "prompt": "x", "images": ["http://example.com/a.png"]}),
            "images[0]",
        ),
        (
            json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "system", "content": [
                {"type": "image_url", "image_url": {"url": data_url()}}]}]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x",
                "attachments": [{"name": "a", "size": 1, "sha256": "00", "kind": "text", "text": "x"}]}]}),
            "messages[0].attachments",
        ),
    ] {
        let (_, v) = post(&rpc, call(params)).await;
        assert!(!v["error"].is_null(), "{v}");
        assert!(v["error"].to_string().contains(field), "{field}: {v}");
    }
    let (_, v) = post(
        &rpc,
        call(json!({"model": "mock/alpha", "prompt": "What is in this image?", "images": [data_url()]})),
    )
    .await;
    assert!(v["error"].to_string().contains("mock/alpha"), "{v}");
    assert_eq!(upstream_images(&up).len(), 2);
}
