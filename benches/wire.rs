//! SSE and NDJSON decoding throughput on a large stream (target >= 200 MB/s).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use llm_quorum::engine::wire::{LineTooLong, NdjsonDecoder, SseDecoder};

fn openai_like_stream(events: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..events {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"word{i} \"}},\"finish_reason\":null}}]}}\n\n"
        ));
    }
    s.push_str("data: [DONE]\n\n");
    s.into_bytes()
}

fn bench(c: &mut Criterion) {
    let body = openai_like_stream(100_000);
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.sample_size(20);
    for chunk in [1024usize, 16 * 1024] {
        g.bench_function(format!("sse_{}k_reads", chunk / 1024), |b| {
            b.iter(|| {
                let mut d = SseDecoder::new();
                let mut n = 0usize;
                for piece in body.chunks(chunk) {
                    d.feed(piece, |f| -> Result<(), LineTooLong> {
                        n += f.data.len();
                        Ok(())
                    })
                    .unwrap();
                }
                d.finish(|_| -> Result<(), LineTooLong> { Ok(()) }).unwrap();
                n
            })
        });
    }
    let nd: Vec<u8> = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .flat_map(|l| l.iter().copied().skip(6).chain(std::iter::once(b'\n')))
        .collect();
    g.throughput(Throughput::Bytes(nd.len() as u64));
    g.bench_function("ndjson_16k_reads", |b| {
        b.iter(|| {
            let mut d = NdjsonDecoder::new();
            let mut n = 0usize;
            for piece in nd.chunks(16 * 1024) {
                d.feed(piece, |l| -> Result<(), LineTooLong> {
                    n += l.len();
                    Ok(())
                })
                .unwrap();
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
