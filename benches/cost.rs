//! Price lookup (target: well under 1 µs) and token counting throughput.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use llm_quorum::engine::cost::Pricing;
use llm_quorum::engine::tokens::{self, Encoding};
use llm_quorum::engine::Usage;

fn lookup(c: &mut Criterion) {
    let p = Pricing::builtin();
    p.warm();
    let u = Usage {
        input_tokens: 1200,
        output_tokens: 300,
        cached_input_tokens: 200,
        ..Default::default()
    };
    let mut g = c.benchmark_group("price");
    g.bench_function("lookup_exact", |b| {
        b.iter(|| p.lookup(black_box("openai"), black_box("gpt-4o-mini")))
    });
    g.bench_function("lookup_dated_snapshot", |b| {
        b.iter(|| {
            p.lookup(
                black_box("anthropic"),
                black_box("claude-haiku-4-5-20251001"),
            )
        })
    });
    g.bench_function("lookup_unknown", |b| {
        b.iter(|| p.lookup(black_box("openai"), black_box("no-such-model-2024-01-01")))
    });
    g.bench_function("quote", |b| {
        b.iter(|| {
            p.quote(
                black_box("openai"),
                black_box("gpt-4o-mini"),
                black_box(&u),
                true,
            )
        })
    });
    g.finish();
}

fn text(bytes: usize) -> String {
    let para = "The quick brown fox jumps over the lazy dog. Pricing tables, token \
                counts and ledgers: every number says where it came from. 東京は晴れ。 ";
    para.repeat(bytes / para.len() + 1)[..bytes].to_string()
}

fn counting(c: &mut Criterion) {
    let s = text(16 * 1024);
    tokens::warm(Encoding::O200kBase);
    tokens::warm(Encoding::Cl100kBase);
    let mut g = c.benchmark_group("tokens");
    g.throughput(Throughput::Bytes(s.len() as u64));
    g.bench_function("o200k_base_16KiB", |b| {
        b.iter(|| tokens::count_text(Encoding::O200kBase, black_box(&s)))
    });
    g.bench_function("cl100k_base_16KiB", |b| {
        b.iter(|| tokens::count_text(Encoding::Cl100kBase, black_box(&s)))
    });
    g.bench_function("quick_estimate_16KiB", |b| {
        b.iter(|| tokens::quick_estimate(black_box(&s)))
    });
    g.finish();
}

criterion_group!(benches, lookup, counting);
criterion_main!(benches);
