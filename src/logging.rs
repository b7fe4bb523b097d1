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
