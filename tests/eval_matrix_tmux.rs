//! End to end: `quorum eval view` in a real terminal (tmux) shows an eval run as
//! cases × targets, drills into a case, and quits with the terminal restored.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use support::tmux::{quorum_script, Tmux};

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
    if !Tmux::installed() {
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

    let run_sh = quorum_script(d, "", "eval view");
    let t = Tmux::start(&run_sh, "eval", 140, 30);
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
