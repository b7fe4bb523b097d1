//! The bounded, deterministic proptest configuration of the fuzz targets
//! (`tests/fuzz_*.rs`): a fixed seed and case count, so `cargo test` runs the
//! same inputs every time, in seconds. `QUORUM_FUZZ_CASES` and
//! `QUORUM_FUZZ_SEED` make a longer or different run.

use proptest::test_runner::{Config, RngAlgorithm, RngSeed};

/// Cases per property unless `QUORUM_FUZZ_CASES` says otherwise.
pub const DEFAULT_CASES: u32 = 1000;

pub fn config() -> Config {
    let env = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Config {
        cases: env("QUORUM_FUZZ_CASES").map_or(DEFAULT_CASES, |n| n as u32),
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(env("QUORUM_FUZZ_SEED").unwrap_or(0x5eed_c0de)),
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    }
}
