//! The data directory and owner-only files in it (the ledger, caches, the user
//! pricing file all live there). No other engine module is needed here, so
//! every module that writes a file can use it without import cycles.

use std::path::{Path, PathBuf};

/// The folder of the ledger, caches and the user pricing file: `QUORUM_DATA_DIR`, else
/// the platform data dir from `directories`.
pub fn data_dir() -> Option<PathBuf> {
    data_dir_in(&|k| std::env::var(k).ok())
}

/// [`data_dir`] with `QUORUM_DATA_DIR` read through `env` (the environment the config
/// was loaded with), so a caller with its own environment never touches the user's.
pub fn data_dir_in(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(d) = env("QUORUM_DATA_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    directories::ProjectDirs::from("dev", "llm-quorum", "quorum")
        .map(|p| p.data_dir().to_path_buf())
}

/// Create `dir` (and parents) readable by the owner only (0700) when it does not exist.
pub fn create_private_dir(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// Create (or truncate) `path` readable by the owner only (0600).
pub fn create_private_file(path: &Path) -> Result<std::fs::File, String> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// Create `path` empty with mode 0600 if it does not exist (SQLite gives its -wal and
/// -shm files the database file's mode).
pub fn touch_private(path: &Path) -> Result<(), String> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
        .map(|_| ())
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}
