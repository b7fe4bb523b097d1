//! Small pieces several faces need (exit codes, parameter validation, time
//! formatting, the version). They live here so that no face imports another.

pub mod catalog;
pub mod clock;
pub mod exit;
pub mod params;

/// The version with the commit it was built from.
pub fn version_string() -> &'static str {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (",
        env!("QUORUM_GIT_COMMIT"),
        ")"
    )
}

/// This process's id, read once: `std::process::id()` is a system call each
/// time, and the ledger writes it into every run row (the process never forks
/// without exec, so it cannot change).
pub fn pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}
