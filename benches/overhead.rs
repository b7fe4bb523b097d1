//! Engine overhead against a bare reqwest loop, on the same bytes from the
//! same local server (issue 2's speed targets):
//!
//! - `stream_100/raw_reqwest` vs `stream_100/engine`: one streamed request of
//!   100 chunks (OpenAI wire, usage chunk, `[DONE]`); the difference of the
//!   two medians is what the engine adds per request (target ≤ 0.3 ms).
//! - `concurrent_1000/engine`: 1,000 streams at once through one engine in
//!   one process; every one must complete with its 100 chunks.
//!
//! `cargo bench --bench overhead`. The server runs in this process on its
//! own thread and answers from memory, so neither client waits on it. The
//! whole-process comparison with the peers is `examples/load.rs` (see
//! `benches/RESULTS.md`).

use std::io::Write as _;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use llm_quorum::engine::provider::{ProviderKind, ProviderSpec, Secret};
use llm_quorum::engine::registry::Registry;
use llm_quorum::engine::{ChatRequest, Engine, EngineConfig, Message, RunOptions, StreamEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHUNKS: usize = 100;
const BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Write a short story."}],"stream":true,"stream_options":{"include_usage":true}}"#;

/// The HTTP response: chunked SSE, one chunk per event, as a server streams it.
fn response() -> Vec<u8> {
    let mut events = Vec::new();
    for i in 0..CHUNKS {
        events.push(format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"word{i} \"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
        ));
    }
    events.push("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n".into());
    events.push("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":100,\"total_tokens\":112}}\n\n".into());
    events.push("data: [DONE]\n\n".into());
    let mut out = Vec::new();
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    for e in &events {
        write!(out, "{:x}\r\n{e}\r\n", e.len()).unwrap();
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A keep-alive HTTP/1.1 server on 127.0.0.1 that answers every POST with
/// [`response`]; runs on its own thread for the life of the bench.
fn start_server() -> String {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", std_listener.local_addr().unwrap());
    std_listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            let resp: &'static [u8] = Box::leak(response().into_boxed_slice());
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    continue;
                };
                let _ = sock.set_nodelay(true);
                tokio::spawn(async move {
                    let mut buf = Vec::with_capacity(4096);
                    let mut tmp = [0u8; 4096];
                    loop {
                        // One request: head, then content-length bytes of body.
                        let head_end = loop {
                            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break p + 4;
                            }
                            match sock.read(&mut tmp).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buf.len() < head_end + len {
                            match sock.read(&mut tmp).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                            }
                        }
                        buf.drain(..head_end + len);
                        if sock.write_all(resp).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    });
    url
}

/// The bare client: reqwest, then SSE lines split by hand and every event
/// parsed as JSON (what mockload, the bench's raw floor, does).
async fn raw_once(client: &reqwest::Client, url: &str) -> usize {
    let mut resp = client
        .post(url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-bench")
        .body(BODY)
        .send()
        .await
        .unwrap();
    let mut buf: Vec<u8> = Vec::new();
    let mut texts = 0;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        buf.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|b| *b == b'\n') {
            let line = &buf[start..start + nl];
            start += nl + 1;
            if let Some(data) = line.strip_prefix(b"data: ") {
                if data == b"[DONE]" {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_slice(data).unwrap();
                if v["choices"][0]["delta"]["content"].as_str().is_some() {
                    texts += 1;
                }
            }
        }
        buf.drain(..start);
    }
    texts
}

fn engine(url: &str) -> Engine {
    let mut spec = ProviderSpec::new("openai", ProviderKind::Openai);
    spec.base_url = format!("{url}/v1");
    spec.api_key = Some(Secret::new("sk-bench"));
    let mut registry = Registry::new();
    registry.insert(spec);
    Engine::new(EngineConfig {
        registry,
        ..Default::default()
    })
    .unwrap()
}

/// One request through the engine, consumed as a face does; text chunks seen.
async fn engine_once(engine: &Engine, req: &ChatRequest) -> usize {
    let mut h = engine.run(
        req.clone(),
        vec!["openai/gpt-4o-mini".to_string()],
        RunOptions::default(),
    );
    let mut texts = 0;
    let mut ok = false;
    while let Some(ev) = h.recv().await {
        match ev.event {
            StreamEvent::TextDelta(_) => texts += 1,
            StreamEvent::Finished(_) => ok = true,
            StreamEvent::Failed(c) => panic!("failed: {:?}", c.error),
            _ => {}
        }
    }
    assert!(ok, "no Finished event");
    texts
}

fn bench(c: &mut Criterion) {
    let url = start_server();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let endpoint = format!("{url}/v1/chat/completions");
    let eng = rt.block_on(async { engine(&url) });
    let mut req = ChatRequest::default();
    req.messages.push(Message::user("Write a short story."));
    assert_eq!(rt.block_on(raw_once(&client, &endpoint)), CHUNKS);
    assert_eq!(rt.block_on(engine_once(&eng, &req)), CHUNKS);

    let mut g = c.benchmark_group("stream_100");
    g.sample_size(200)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(2));
    g.bench_function("raw_reqwest", |b| {
        b.iter(|| rt.block_on(raw_once(&client, &endpoint)))
    });
    g.bench_function("engine", |b| {
        b.iter(|| rt.block_on(engine_once(&eng, &req)))
    });
    g.finish();

    let mut g = c.benchmark_group("concurrent_1000");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("engine", |b| {
        b.iter(|| {
            rt.block_on(async {
                let tasks: Vec<_> = (0..1000)
                    .map(|_| {
                        let (e, r) = (eng.clone(), req.clone());
                        tokio::spawn(async move { engine_once(&e, &r).await })
                    })
                    .collect();
                for t in tasks {
                    assert_eq!(t.await.unwrap(), CHUNKS, "every stream completes");
                }
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
