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
