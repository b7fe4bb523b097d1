//! End to end: `quorum eval view` in a real terminal (tmux) shows an eval run as
//! cases × targets, drills into a case, and quits with the terminal restored.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "q"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "q"];
        args.extend_from_slice(keys);
        assert!(self.cmd(&args).status.success());
    }

    /// Poll the screen until `ok` holds; panics with the screen after 60 s.
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
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

fn env_of(cmd: &mut Command, d: &Path) {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", d)
        .env("QUORUM_DATA_DIR", d.join("data"))
        .env("QUORUM_CONFIG", d.join("config.toml"))
        .env("QUORUM_MOCK_TPS", "0")
        .current_dir(d);
}

#[test]
fn the_matrix_shows_cases_by_targets_and_drills_into_a_case() {
    let have_tmux = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_tmux {
        eprintln!("SKIP: tmux is not installed; the eval matrix end-to-end test needs it");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("suite.toml"),
        "targets = [\"mock/alpha\", \"mock/contrarian\"]\n\
         [[cases]]\nid = \"sum\"\nprompt = \"What is 2+2? Answer with one number.\"\n\
         assert = [{ type = \"number\", value = 4 }]\n\
         [[cases]]\nid = \"sky\"\nprompt = \"Is the sky blue?\"\n",
    )
    .unwrap();
    let mut run = Command::new(env!("CARGO_BIN_EXE_quorum"));
    env_of(&mut run, d);
    let out = run
        .args(["eval", "suite.toml"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bin = env!("CARGO_BIN_EXE_quorum");
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    let dd = d.display();
    let script = format!(
        "#!/bin/sh\ncd '{dd}'\n\
         env -i PATH='{path}' HOME='{dd}' TERM=xterm-256color LANG=C.UTF-8 \
         QUORUM_DATA_DIR='{dd}/data' QUORUM_CONFIG='{dd}/config.toml' '{bin}' eval view\n\
         echo \"QUORUM-EXIT-$?\"\n\
         if stty -a | tr ' ;' '\\n\\n' | grep -qx icanon; then echo TTY-RESTORED; else echo TTY-RAW; fi\n\
         exec sleep 120\n"
    );
    std::fs::write(d.join("run.sh"), script).unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let t = Tmux {
        socket: format!("quorum-eval-{}-{nanos}", std::process::id()),
    };
    let run_sh = d.join("run.sh");
    let out = t.cmd(&[
        "new-session",
        "-d",
        "-s",
        "q",
        "-x",
        "140",
        "-y",
        "30",
        "sh",
        run_sh.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "tmux: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Wait for the whole frame (tmux may be captured mid-paint).
    t.wait_for("the matrix", |s| {
        s.contains("cases × targets")
            && s.contains("sky")
            && s.contains("mock/alpha")
            && s.contains("mock/contrarian")
            && s.contains("✓")
            && s.contains("✗")
            && s.contains("1/2 cases passed")
    });
    // Drill into the contrarian's cell of the first case.
    t.keys(&["Right"]);
    t.keys(&["Enter"]);
    t.wait_for("the answers side by side", |s| {
        s.contains("✗ mock/contrarian") && s.contains("✓ mock/alpha") && s.contains("number 4")
    });
    t.keys(&["Escape"]);
    t.wait_for("the matrix again", |s| s.contains("cases × targets"));
    t.keys(&["q"]);
    let s = t.wait_for("exit and tty check", |s| {
        s.contains("QUORUM-EXIT-") && s.contains("TTY-")
    });
    assert!(s.contains("QUORUM-EXIT-0"), "{s}");
    assert!(s.contains("TTY-RESTORED"), "{s}");
}
