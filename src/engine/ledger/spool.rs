//! The local spool of a shared ledger: rows that could not reach the database while
//! it was away, kept durably in an append-only file (one JSON line each, fsynced before
//! the write is reported done) and replayed in order when it returns. A replay is
//! idempotent (each request carries its unique id), so a crash between replaying and
//! emptying the file writes nothing twice. Several processes may share one spool: every
//! append and replay holds an exclusive `flock` on it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{LedgerError, NewRequest};

/// One spooled write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A run noted before its requests were sent (no reservation: runs with a budget
    /// are never spooled).
    Run {
        /// Run id.
        id: String,
        /// Session.
        session_id: Option<String>,
        /// Trace id.
        trace_id: Option<String>,
        /// Targets.
        targets: Vec<String>,
        /// Bound.
        projected_usd: Option<f64>,
        /// Prompt (None without log_content).
        prompt: Option<String>,
    },
    /// A finished request.
    Request(Box<NewRequest>),
}

/// The spool file.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    backlog: AtomicU64,
    lock: Mutex<()>,
}

struct Flock(File);

impl Flock {
    fn exclusive(f: File) -> std::io::Result<Flock> {
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(Flock(f))
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
        }
    }
}

impl Spool {
    /// Open (creating 0600) the spool at `path`, counting what it already holds.
    pub fn open(path: &Path) -> Result<Spool, LedgerError> {
        let s = Spool {
            path: path.to_path_buf(),
            backlog: AtomicU64::new(0),
            lock: Mutex::new(()),
        };
        let f = s.file().map_err(|e| s.io(e))?;
        let n = BufReader::new(&f)
            .lines()
            .map_while(Result::ok)
            .filter(|l| serde_json::from_str::<Entry>(l).is_ok())
            .count();
        s.backlog.store(n as u64, Ordering::SeqCst);
        Ok(s)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, e: std::io::Error) -> LedgerError {
        LedgerError::Io {
            place: self.path.display().to_string(),
            detail: format!("spool: {e}"),
        }
    }

    fn file(&self) -> std::io::Result<File> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut o = OpenOptions::new();
        o.read(true).append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        o.open(&self.path)
    }

    /// Entries waiting for the database (as this process last saw them).
    pub fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::SeqCst)
    }

    /// Whether the spool takes a write now.
    pub fn check_writable(&self) -> Result<(), LedgerError> {
        self.file().map(|_| ()).map_err(|e| self.io(e))
    }

    /// Append `entry`; durable (fsynced) when this returns.
    pub fn append(&self, entry: &Entry) -> Result<(), LedgerError> {
        let mut line = serde_json::to_string(entry).map_err(|e| LedgerError::Io {
            place: self.path.display().to_string(),
            detail: format!("spool: cannot encode a row: {e}"),
        })?;
        line.push('\n');
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let f = self.file().map_err(|e| self.io(e))?;
        let mut f = Flock::exclusive(f).map_err(|e| self.io(e))?;
        f.0.write_all(line.as_bytes()).map_err(|e| self.io(e))?;
        f.0.sync_data().map_err(|e| self.io(e))?;
        self.backlog.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Replay every entry in order through `write` (called with chunks of at most
    /// `chunk` entries, each to be written in one transaction), then empty the file.
    /// On an error the file is kept whole (written entries are idempotent) and the
    /// error returned. Returns how many entries were replayed.
    pub fn replay(
        &self,
        chunk: usize,
        mut write: impl FnMut(&[Entry]) -> Result<(), LedgerError>,
    ) -> Result<usize, LedgerError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let f = self.file().map_err(|e| self.io(e))?;
        let f = Flock::exclusive(f).map_err(|e| self.io(e))?;
        let entries: Vec<Entry> = BufReader::new(&f.0)
            .lines()
            .map_while(Result::ok)
            // A line cut by a crash mid-append was never reported written.
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect();
        self.backlog.store(entries.len() as u64, Ordering::SeqCst);
        for c in entries.chunks(chunk.max(1)) {
            write(c)?;
        }
        f.0.set_len(0).map_err(|e| self.io(e))?;
        f.0.sync_all().map_err(|e| self.io(e))?;
        self.backlog.store(0, Ordering::SeqCst);
        Ok(entries.len())
    }
}
