//! Command-line faces: `ask`, `compare`, `eval`, `exec`, `models`, `ledger`, `pricing`,
//! `leaderboard`. The argv dispatch lives in `main.rs`.

pub mod ask;
pub mod compare;
pub mod eval;
pub mod exec;
pub mod leaderboard;
pub mod ledger;
pub mod models;
pub mod options;
pub mod pricing;

pub use crate::shared::exit::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};

/// A current-thread runtime: one-shot commands start fast and need no pool.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
