//! A real terminal for end-to-end tests: `quorum` run by a script in a detached
//! session of a private tmux server, read back with `capture-pane`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::PATIENCE;

/// A private tmux server (its own socket) with one session, `q`; killed on drop.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// Whether tmux is installed (the tests that need it skip without it).
    pub fn installed() -> bool {
        Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Run `script` with `sh` in a `cols`×`rows` terminal, on a server of its own
    /// named after `name`, the process and the time.
    pub fn start(script: &Path, name: &str, cols: u16, rows: u16) -> Tmux {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let t = Tmux {
            socket: format!("quorum-e2e-{name}-{}-{nanos}", std::process::id()),
        };
        let (cols, rows) = (cols.to_string(), rows.to_string());
        let out = t.cmd(&[
            "new-session",
            "-d",
            "-s",
            "q",
            "-x",
            &cols,
            "-y",
            &rows,
            "sh",
            script.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    /// Run a tmux command against this server.
    pub fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    /// The screen now, as text.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "q"]).stdout).into_owned()
    }

    /// Send keys by tmux name (`Enter`, `C-q`, `Tab`, ...).
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "q"];
        args.extend_from_slice(keys);
        assert!(self.cmd(&args).status.success());
    }

    /// Type `text` as it is.
    pub fn literal(&self, text: &str) {
        assert!(self
            .cmd(&["send-keys", "-t", "q", "-l", text])
            .status
            .success());
    }

    /// Resize the terminal.
    pub fn resize(&self, cols: u16, rows: u16) {
        let (cols, rows) = (cols.to_string(), rows.to_string());
        assert!(self
            .cmd(&["resize-window", "-t", "q", "-x", &cols, "-y", &rows])
            .status
            .success());
    }

    /// Poll the screen until `ok` holds and return it; panics with the screen
    /// after [`PATIENCE`].
    pub fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(40));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// Write `dir/run.sh`: in `dir`, under a clean environment (home, data dir and
/// config in `dir`, plus `env`, `NAME=value` words), run `quorum args`; then
/// print `QUORUM-EXIT-<status>` and `TTY-RESTORED` or `TTY-RAW` (whether the
/// terminal is back in canonical mode), and stay so the screen can be read.
pub fn quorum_script(dir: &Path, env: &str, args: &str) -> PathBuf {
    let bin = env!("CARGO_BIN_EXE_quorum");
    let d = dir.display();
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    let script = format!(
        "#!/bin/sh\n\
         cd '{d}'\n\
         env -i PATH='{path}' HOME='{d}' TERM=xterm-256color LANG=C.UTF-8 \
         QUORUM_DATA_DIR='{d}/data' QUORUM_CONFIG='{d}/config.toml' {env} '{bin}' {args}\n\
         echo \"QUORUM-EXIT-$?\"\n\
         if stty -a | tr ' ;' '\\n\\n' | grep -qx icanon; then echo TTY-RESTORED; else echo TTY-RAW; fi\n\
         exec sleep 120\n"
    );
    let p = dir.join("run.sh");
    std::fs::write(&p, script).unwrap();
    p
}
