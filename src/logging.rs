//! Logs on stderr for the headless faces, filtered by `QUORUM_LOG`
//! (`tracing_subscriber`'s `EnvFilter` syntax: `info`, `quorum::access=info,warn`,
//! ...). The TUI logs to a file instead (`tui::run`).

use tracing_subscriber::EnvFilter;

/// The variable holding the filter.
pub const ENV: &str = "QUORUM_LOG";

/// Install a stderr logger filtered by `QUORUM_LOG`, or by `default` when it
/// is unset (`None`: log nothing unless it is set). Does nothing when a
/// logger is already installed.
pub fn init_stderr(default: Option<&str>) {
    let filter = match (std::env::var(ENV), default) {
        (Ok(v), _) if !v.trim().is_empty() => EnvFilter::try_new(v.trim()).unwrap_or_else(|e| {
            eprintln!("quorum: {ENV}: {e}; logging warnings only");
            EnvFilter::new("warn")
        }),
        (_, Some(d)) => EnvFilter::new(d),
        (_, None) => return,
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Write one `quorum::access` line on stderr, in the stderr logger's format
/// (`2026-12-04T15:53:24.000630Z  INFO quorum::access: {fields}`), when the
/// installed logger enables that target at `info` (`fields` is only built then).
///
/// The line is written here rather than as a `tracing` event: the fmt layer
/// sanitises and copies a message character by character, which cost about
/// 16,000 instructions per line, 5% of a streamed request through `serve`
/// (`callgrind`, issue #14). The fields are quorum's own text (fixed route
/// names, registry model ids, numbers, a quoted trace id), so they need no
/// escaping. Returns whether the line was written.
pub fn access_line(fields: impl FnOnce() -> String) -> bool {
    use std::io::Write;
    if !tracing::enabled!(target: "quorum::access", tracing::Level::INFO) {
        return false;
    }
    let fields = fields();
    let mut line = crate::shared::clock::utc_stamp(true);
    line.reserve(fields.len() + 32);
    line.push_str("  INFO quorum::access: ");
    line.push_str(&fields);
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    true
}
