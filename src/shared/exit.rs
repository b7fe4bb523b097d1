//! Process exit codes every face uses.

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: the request failed (or, after an answer, the ledger could not record it).
pub const EXIT_FAILED: i32 = 1;
/// Exit code: usage or configuration error; nothing was sent.
pub const EXIT_USAGE: i32 = 2;
