//! Fuzzing, as property tests: the SSE and NDJSON decoders and every
//! provider's event mapping, fed arbitrary bytes, arbitrary splits and
//! arbitrary JSON-ish frames, must never panic, and the byte decoders must
//! not care where the network split the stream.
//!
//! The run is bounded and deterministic (fixed seed, fixed case count) so it
//! belongs in `cargo test`. A longer run:
//!
//! ```sh
//! QUORUM_FUZZ_CASES=100000 cargo test --release --test fuzz_decoders
//! QUORUM_FUZZ_SEED=7 QUORUM_FUZZ_CASES=100000 cargo test --release --test fuzz_decoders
//! ```
//!
//! Every failure found becomes a plain test at the bottom.

#[path = "support/fuzz.rs"]
mod fuzz_support;

use fuzz_support::config;
use llm_quorum::engine::provider::{parse_response, stream_decoder, ProviderKind};
use llm_quorum::engine::wire::{LineTooLong, NdjsonDecoder, SseDecoder};
use llm_quorum::engine::Delta;
use proptest::prelude::*;
use serde_json::{Map, Value};

const KINDS: [ProviderKind; 8] = [
    ProviderKind::Openai,
    ProviderKind::Responses,
    ProviderKind::Azure,
    ProviderKind::Openrouter,
    ProviderKind::Compatible,
    ProviderKind::Anthropic,
    ProviderKind::Gemini,
    ProviderKind::Ollama,
];

type Frame = (String, String, String);

fn sse_frames(pieces: &[&[u8]]) -> (Vec<Frame>, u64, Option<u64>) {
    let mut d = SseDecoder::new();
    let mut out = Vec::new();
    let mut push = |f: llm_quorum::engine::wire::SseFrame<'_>| -> Result<(), LineTooLong> {
        out.push((f.event.to_string(), f.data.to_string(), f.id.to_string()));
        Ok(())
    };
    for p in pieces {
        d.feed(p, &mut push).expect("short lines never overflow");
    }
    d.finish(&mut push).expect("finish");
    (out, d.comments(), d.retry_ms())
}

fn ndjson_lines(pieces: &[&[u8]]) -> Vec<String> {
    let mut d = NdjsonDecoder::new();
    let mut out = Vec::new();
    let mut push = |l: &str| -> Result<(), LineTooLong> {
        out.push(l.to_string());
        Ok(())
    };
    for p in pieces {
        d.feed(p, &mut push).expect("short lines never overflow");
    }
    d.finish(&mut push).expect("finish");
    out
}

/// Cut `bytes` at the given offsets (taken modulo its length, sorted).
fn split<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|c| {
            if bytes.is_empty() {
                0
            } else {
                c % (bytes.len() + 1)
            }
        })
        .collect();
    at.sort_unstable();
    let mut out = Vec::new();
    let mut prev = 0;
    for a in at {
        out.push(&bytes[prev..a]);
        prev = a;
    }
    out.push(&bytes[prev..]);
    out
}

// ---------------------------------------------------------------------------
// Inputs

/// Bytes that look like an event stream: field names, separators, CR/LF mixes,
/// BOMs, comments, JSON fragments and the odd invalid UTF-8 byte.
fn streamish() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"data: ".to_vec()),
        Just(b"data:".to_vec()),
        Just(b"data".to_vec()),
        Just(b"event: ".to_vec()),
        Just(b"event:message_stop".to_vec()),
        Just(b"id: 7".to_vec()),
        Just(b"id\0x".to_vec()),
        Just(b"retry: 1500".to_vec()),
        Just(b": keep-alive".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n\n".to_vec()),
        Just(b"\r\n\r\n".to_vec()),
        Just(b"\xEF\xBB\xBF".to_vec()),
        Just(b"[DONE]".to_vec()),
        Just(br#"{"choices":[{"delta":{"content":"hi"}}]}"#.to_vec()),
        Just("héllo 世界 🕵️".as_bytes().to_vec()),
        Just(b"\xFF\xC3".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..12),
    ];
    proptest::collection::vec(token, 0..48).prop_map(|v| v.concat())
}

/// JSON values built from the words the providers use, nested a few levels.
fn jsonish() -> impl Strategy<Value = Value> {
    const KEYS: &[&str] = &[
        "choices",
        "delta",
        "content",
        "finish_reason",
        "usage",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
        "cached_tokens",
        "completion_tokens_details",
        "reasoning_tokens",
        "cost",
        "type",
        "index",
        "content_block",
        "text",
        "thinking",
        "signature",
        "partial_json",
        "tool_calls",
        "function",
        "function_call",
        "arguments",
        "name",
        "id",
        "message",
        "error",
        "code",
        "candidates",
        "parts",
        "thought",
        "thoughtSignature",
        "functionCall",
        "args",
        "usageMetadata",
        "promptTokenCount",
        "candidatesTokenCount",
        "thoughtsTokenCount",
        "cachedContentTokenCount",
        "totalTokenCount",
        "finishReason",
        "done",
        "done_reason",
        "eval_count",
        "prompt_eval_count",
        "stop_reason",
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "reasoning",
        "reasoning_content",
        "refusal",
        "role",
        "input",
        "tool_use",
        "model",
        "promptFeedback",
        "blockReason",
    ];
    const WORDS: &[&str] = &[
        "",
        "stop",
        "length",
        "tool_calls",
        "content_filter",
        "end_turn",
        "max_tokens",
        "STOP",
        "MAX_TOKENS",
        "SAFETY",
        "text_delta",
        "thinking_delta",
        "input_json_delta",
        "signature_delta",
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "tool_use",
        "text",
        "thinking",
        "redacted_thinking",
        "error",
        "overloaded_error",
        "assistant",
        "{",
        "{\"a\":",
        "[DONE]",
        "héllo",
        "🕵️",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        proptest::sample::select(WORDS).prop_map(|w| Value::from(w.to_string())),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..6).prop_map(
                |kv| {
                    let mut m = Map::new();
                    for (k, v) in kv {
                        m.insert(k.to_string(), v);
                    }
                    Value::Object(m)
                }
            ),
        ]
    })
}

fn event_name() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(
            &[
                "message",
                "",
                "error",
                "ping",
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ][..]
        )
        .prop_map(str::to_string),
        ".{0,8}",
    ]
}

/// A frame's data: JSON-ish (most of the time), truncated JSON, or any text.
fn frame_data() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => jsonish().prop_map(|v| v.to_string()),
        1 => (jsonish(), any::<usize>()).prop_map(|(v, cut)| {
            let s = v.to_string();
            let mut c = cut % (s.len() + 1);
            while !s.is_char_boundary(c) {
                c -= 1;
            }
            s[..c].to_string()
        }),
        1 => ".{0,40}",
        1 => Just("[DONE]".to_string()),
    ]
}

/// Feed frames to a fresh decoder of `kind`; errors are fine, panics are not.
fn run_frames(kind: ProviderKind, frames: &[(String, String)]) -> Vec<Delta> {
    let mut d = stream_decoder(kind);
    let mut out = Vec::new();
    for (event, data) in frames {
        if d.frame(event, data, &mut out).is_err() {
            break;
        }
    }
    let _ = d.end(&mut out);
    let _ = d.is_done();
    out
}

// ---------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sse_never_panics_and_ignores_splits(bytes in streamish(), cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        let whole = sse_frames(&[&bytes]);
        let pieces = split(&bytes, &cuts);
        prop_assert_eq!(sse_frames(&pieces), whole);
    }

    #[test]
    fn sse_arbitrary_bytes_one_at_a_time(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let whole = sse_frames(&[&bytes]);
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(sse_frames(&singles), whole);
    }

    #[test]
    fn ndjson_never_panics_and_ignores_splits(bytes in streamish(), cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        let whole = ndjson_lines(&[&bytes]);
        prop_assert_eq!(ndjson_lines(&split(&bytes, &cuts)), whole);
    }

    #[test]
    fn provider_decoders_take_any_frames(
        frames in proptest::collection::vec((event_name(), frame_data()), 0..12),
    ) {
        for kind in KINDS {
            run_frames(kind, &frames);
        }
    }

    #[test]
    fn provider_decoders_take_any_bytes(
        bytes in streamish(),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        // The whole path a body takes: framing, then the provider's mapping.
        for kind in KINDS {
            let mut d = stream_decoder(kind);
            let mut out = Vec::new();
            let pieces = split(&bytes, &cuts);
            if kind == ProviderKind::Ollama {
                let mut nd = NdjsonDecoder::new();
                for p in &pieces {
                    if nd.feed(p, |l| d.frame("", l, &mut out)).is_err() {
                        break;
                    }
                }
                let _ = nd.finish(|l| d.frame("", l, &mut out));
            } else {
                let mut sse = SseDecoder::new();
                for p in &pieces {
                    if sse.feed(p, |f| d.frame(f.event, f.data, &mut out)).is_err() {
                        break;
                    }
                }
                let _ = sse.finish(|f| d.frame(f.event, f.data, &mut out));
            }
            let _ = d.end(&mut out);
            let _ = d.is_done();
        }
    }

    #[test]
    fn whole_responses_take_anything(v in jsonish(), junk in proptest::collection::vec(any::<u8>(), 0..64)) {
        let body = v.to_string();
        for kind in KINDS {
            let _ = parse_response(kind, body.as_bytes());
            let _ = parse_response(kind, &junk);
        }
    }
}

// ---------------------------------------------------------------------------
// Edge cases kept as plain tests (the properties found no failure so far;
// a failure they find is added here as its own test).

#[test]
fn edge_cr_at_the_end_of_a_piece_then_bom_bytes() {
    let bytes = b"data: a\r\xEF\xBB\xBF\n\n";
    let whole = sse_frames(&[bytes]);
    for cut in 0..=bytes.len() {
        assert_eq!(
            sse_frames(&[&bytes[..cut], &bytes[cut..]]),
            whole,
            "cut {cut}"
        );
    }
}

#[test]
fn edge_empty_and_whitespace_frames_map_to_nothing() {
    for kind in KINDS {
        let out = run_frames(
            kind,
            &[
                ("message".into(), "".into()),
                ("".into(), "   ".into()),
                ("message".into(), "null".into()),
                ("message".into(), "[]".into()),
                ("message".into(), "{}".into()),
            ],
        );
        assert!(
            out.iter()
                .all(|d| !matches!(d, Delta::Text(t) if !t.is_empty())),
            "{kind:?}: {out:?}"
        );
    }
}
