//! End to end: the real `quorum` binary in a real terminal (tmux), offline
//! with the mock models. Type a prompt, send it, watch every pane answer and
//! the ledger count tokens, quit, and find the terminal restored.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::tmux::{quorum_script, Tmux};

/// The ledger row of `target`: (in, out, requests, errors), if on screen.
fn ledger_row(screen: &str, target: &str) -> Option<(u64, u64, u64, u64)> {
    for line in screen.lines() {
        let Some(at) = line.rfind(&format!("│{target} ")) else {
            continue;
        };
        let rest: Vec<&str> = line[at + target.len() + 3..]
            .trim_end_matches('│')
            .split_whitespace()
            .collect();
        // in out cached reas cost mark req err
        if rest.len() >= 8 {
            let n = |s: &str| s.parse::<u64>().ok();
            return Some((n(rest[0])?, n(rest[1])?, n(rest[6])?, n(rest[7])?));
        }
    }
    None
}

fn write_script(dir: &Path, extra_env: &str) -> PathBuf {
    quorum_script(dir, &format!("QUORUM_MOCK_TPS=5000 {extra_env}"), "")
}

fn start(script: &Path, name: &str) -> Tmux {
    Tmux::start(script, name, 160, 45)
}

#[test]
fn a_panic_restores_the_terminal() {
    if !Tmux::installed() {
        eprintln!("SKIP: tmux is not installed; the TUI end-to-end test needs it");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(dir.path(), "QUORUM_TUI_TEST_PANIC=1");
    let t = start(&script, "panic");
    let after = t.wait_for("quorum to exit", |s| {
        s.contains("QUORUM-EXIT-") && s.contains("TTY-")
    });
    assert!(after.contains("QUORUM-EXIT-101"), "{after}");
    assert!(after.contains("panicking after the first frame"), "{after}");
    assert!(after.contains("TTY-RESTORED"), "{after}");
    assert!(
        !after.contains("ledger ·"),
        "alternate screen not left:\n{after}"
    );
}

#[test]
fn workbench_streams_every_pane_and_restores_the_terminal() {
    if !Tmux::installed() {
        eprintln!("SKIP: tmux is not installed; the TUI end-to-end test needs it");
        return;
    }
    // Setup
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(dir.path(), "");
    let t = start(&script, "workbench");

    // Exec: the first screen, offline.
    let first = t.wait_for("the first frame", |s| {
        s.contains("mock/alpha · ready") && s.contains("mock/thinker · ready")
    });
    assert!(first.contains("offline: no API key found"), "{first}");
    assert!(first.contains("ledger"), "{first}");

    t.literal("What is 2+2?");
    t.wait_for("the prompt in the editor", |s| {
        s.contains("What is 2+2?") && s.contains("next send ~$0 (≤ $0)")
    });
    t.keys(&["Enter"]);

    // Check: every pane answers, the ledger counts tokens.
    let done = t.wait_for("every pane done", |s| {
        ["mock/alpha", "mock/beta", "mock/thinker"]
            .iter()
            .all(|m| s.contains(&format!("{m} · done")))
            && ["mock/alpha", "mock/beta", "mock/thinker"]
                .iter()
                .all(|m| ledger_row(s, m).is_some_and(|(i, o, r, _)| i > 0 && o > 0 && r == 1))
    });
    assert!(done.contains("› What is 2+2?"), "{done}");
    assert!(done.contains("4"), "{done}");
    assert!(done.contains("▸ thinking"), "{done}");
    assert!(done.contains("· 1 send"), "{done}");

    // Resize the terminal: the panes re-flow (a grid when narrow) and nothing breaks.
    t.resize(70, 30);
    t.wait_for("the narrow layout", |s| {
        s.lines().next().is_some_and(|l| l.chars().count() <= 70)
            && s.contains("mock/thinker · done")
            && s.lines()
                .any(|l| l.contains("mock/alpha · done") && !l.contains("mock/thinker"))
    });
    t.resize(160, 45);
    t.wait_for("the wide layout again", |s| {
        s.lines()
            .any(|l| l.contains("mock/alpha · done") && l.contains("mock/thinker · done"))
    });

    // Quit; the shell after quorum sees a restored terminal.
    t.keys(&["C-q"]);
    let after = t.wait_for("quorum to exit", |s| {
        s.contains("QUORUM-EXIT-") && s.contains("TTY-")
    });
    assert!(after.contains("QUORUM-EXIT-0"), "{after}");
    assert!(after.contains("TTY-RESTORED"), "{after}");
    assert!(
        !after.contains("ledger ·"),
        "alternate screen not left:\n{after}"
    );
    let log = std::fs::read_to_string(dir.path().join("data/quorum-tui.log")).unwrap_or_default();
    assert!(log.contains("first frame after"), "log: {log}");
}

#[test]
fn without_a_terminal_the_workbench_says_so_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_quorum"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("QUORUM_DATA_DIR", dir.path().join("data"))
        .env("QUORUM_CONFIG", dir.path().join("config.toml"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a terminal"), "{err}");
}

#[test]
fn consensus_view_opens_after_the_mock_answers() {
    if !Tmux::installed() {
        eprintln!("SKIP: tmux is not installed; the TUI end-to-end test needs it");
        return;
    }
    // Setup: three mocks, one of which dissents.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "compare_targets = [\"mock/alpha\", \"mock/beta\", \"mock/contrarian\"]\n",
    )
    .unwrap();
    let script = write_script(dir.path(), "");
    let t = start(&script, "consensus");
    t.wait_for("the first frame", |s| {
        s.contains("mock/alpha · ready") && s.contains("mock/contrarian · ready")
    });

    // Exec: ask a closed question, wait for every answer.
    t.literal("What is 2+2? Answer with one number.");
    t.wait_for("the prompt in the editor", |s| {
        s.contains("Answer with one number.")
    });
    t.keys(&["Enter"]);
    let done = t.wait_for("every pane done and the summary bar", |s| {
        ["mock/alpha", "mock/beta", "mock/contrarian"]
            .iter()
            .all(|m| s.contains(&format!("{m} · done")))
            && s.contains("consensus · 2 of 3 finished agree on \"4\"")
    });
    assert!(done.contains("agreement"), "{done}");

    // Check: `v` on a pane opens the consensus view with the agreement line.
    t.keys(&["Tab"]);
    t.keys(&["v"]);
    let view = t.wait_for("the consensus view", |s| {
        s.contains("1 matrix") && s.contains("2 clusters")
    });
    assert!(view.contains("agreement"), "{view}");
    assert!(view.contains("mock/contrarian"), "{view}");
    t.keys(&["2"]);
    t.wait_for("the clusters tab", |s| {
        s.contains("dissent") && s.contains("mock/contrarian said")
    });
    t.keys(&["Escape"]);
    t.wait_for("the view closed", |s| !s.contains("1 matrix"));
    t.keys(&["C-q"]);
    let after = t.wait_for("quorum to exit", |s| {
        s.contains("QUORUM-EXIT-") && s.contains("TTY-")
    });
    assert!(after.contains("QUORUM-EXIT-0"), "{after}");
}

#[test]
fn blind_vote_and_judge_end_to_end() {
    if !Tmux::installed() {
        eprintln!("SKIP: tmux is not installed; the TUI end-to-end test needs it");
        return;
    }
    // Setup: two mocks that agree, a tag for the vote.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "compare_targets = [\"mock/alpha\", \"mock/beta\"]\nvote_tag = \"e2e\"\njudge_model = \"mock/gamma\"\n",
    )
    .unwrap();
    let script = write_script(dir.path(), "");
    let t = start(&script, "blind");
    t.wait_for("the first frame", |s| s.contains("mock/beta · ready"));

    // Exec: blind mode, send, vote for Answer A.
    t.keys(&["C-b"]);
    t.wait_for("blind mode on", |s| s.contains("next: blind"));
    t.literal("What is 2+2? Answer with one number.");
    t.keys(&["Enter"]);
    let blind = t.wait_for("both answers, blind", |s| {
        s.contains("Answer A · done") && s.contains("Answer B · done")
    });
    assert!(!blind.contains("mock/alpha · done"), "{blind}");
    t.keys(&["Tab"]);
    t.keys(&["v"]);
    t.wait_for("the blind view", |s| s.contains("names hidden"));
    t.keys(&["A"]);
    t.wait_for("names revealed", |s| {
        s.contains("names revealed") && s.contains("mock/alpha · done")
    });
    // The judge: its request is counted in the ledger.
    t.keys(&["J"]);
    t.wait_for("the judge's row in the ledger", |s| {
        s.contains("judge mock/gamma") && !s.contains("judging…")
    });
    // The quit key works from the overlay (no Esc first: Esc then Ctrl+Q can read as Alt+Ctrl+Q).
    t.keys(&["C-q"]);
    t.wait_for("quorum to exit", |s| s.contains("QUORUM-EXIT-0"));

    // Check: the vote is in the SQLite ledger, with its run and tag.
    let ledger =
        llm_quorum::engine::ledger::Ledger::open_in(&dir.path().join("data"), Default::default())
            .unwrap();
    let votes = ledger.votes().unwrap();
    assert_eq!(votes.len(), 1, "{votes:?}");
    assert_eq!(votes[0].tag.as_deref(), Some("e2e"));
    assert!(votes[0].run_id.is_some());
    assert_eq!(votes[0].targets.len(), 2);
    assert!(votes[0].winner.is_some());
}

/// Quit, and check quorum exited cleanly.
fn quit(t: &Tmux) {
    t.keys(&["C-q"]);
    let s = t.wait_for("the quit question or the exit", |s| {
        s.contains("QUORUM-EXIT-") || s.contains("Quit and cancel")
    });
    if s.contains("Quit and cancel") {
        t.keys(&["y"]);
    }
    let after = t.wait_for("quorum to exit", |s| s.contains("QUORUM-EXIT-"));
    assert!(after.contains("QUORUM-EXIT-0"), "{after}");
}

#[test]
fn zoom_then_esc_keeps_the_streams_running() {
    if !Tmux::installed() {
        eprintln!("SKIP: tmux is not installed; the TUI end-to-end test needs it");
        return;
    }
    // Setup: slow mocks (5 tokens a second), so the answers are still streaming.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "compare_targets = [\"mock/alpha\", \"mock/beta\"]\n",
    )
    .unwrap();
    let script = write_script(dir.path(), "QUORUM_MOCK_TPS=5");
    let t = start(&script, "zoom-esc");
    t.wait_for("the first frame", |s| s.contains("mock/beta · ready"));
    t.literal("Explain how tides work in detail.");
    t.keys(&["Enter"]);
    t.wait_for("both panes streaming", |s| {
        s.matches("· streaming").count() == 2
    });

    // Exec: focus the first pane, zoom, Esc.
    t.keys(&["Tab"]);
    t.keys(&["z"]);
    t.wait_for("the zoomed pane", |s| {
        s.contains("mock/alpha · streaming") && !s.contains("mock/beta") && !s.contains("ledger ·")
    });
    t.keys(&["Escape"]);

    // Check: out of zoom, and both still streaming (nothing cancelled).
    let s = t.wait_for("the panes again", |s| {
        s.contains("mock/beta") && s.contains("ledger ·")
    });
    assert!(!s.contains("cancelled"), "{s}");
    assert_eq!(s.matches("· streaming").count(), 2, "{s}");
    // Esc again (back to the editor): still nothing cancelled.
    t.keys(&["Escape"]);
    t.wait_for("the status bar of the editor", |s| s.contains("Enter send"));
    assert!(!t.screen().contains("cancelled"));
    // The deliberate key cancels.
    t.keys(&["C-g"]);
    t.wait_for("both cancelled", |s| s.matches("cancelled").count() >= 2);
    quit(&t);
}

#[test]
fn a_blind_run_shows_no_model_name_until_the_vote_and_the_mock_judges() {
    if !Tmux::installed() {
        eprintln!("SKIP: tmux is not installed; the TUI end-to-end test needs it");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "compare_targets = [\"mock/alpha\", \"mock/thinker\", \"mock/contrarian\"]\n",
    )
    .unwrap();
    let script = write_script(dir.path(), "");
    let t = start(&script, "blind-names");
    t.wait_for("the first frame", |s| s.contains("mock/contrarian · ready"));

    // Exec: blind, send, wait for all three.
    t.keys(&["C-b"]);
    t.wait_for("blind mode on", |s| s.contains("next: blind"));
    t.literal("What is 2+2? Answer with one number.");
    t.keys(&["Enter"]);
    let blind = t.wait_for("three blind answers", |s| {
        ["Answer A · done", "Answer B · done", "Answer C · done"]
            .iter()
            .all(|a| s.contains(a))
    });
    // Check: no model name, no thinking, no price anywhere on screen.
    for tell in [
        "mock/",
        "alpha",
        "thinker",
        "contrarian",
        "thinking",
        " reas",
        "tok/s",
    ] {
        assert!(!blind.contains(tell), "{tell} shows while blind:\n{blind}");
    }
    // No price per answer (the session total is no tell).
    for l in blind.lines().filter(|l| l.contains("Answer ")) {
        assert!(!l.contains('$'), "a price while blind: {l}");
    }
    // The consensus view: still no names until the vote.
    t.keys(&["Tab"]);
    t.keys(&["v"]);
    let view = t.wait_for("the blind view", |s| s.contains("names hidden"));
    assert!(!view.contains("mock/"), "{view}");
    t.keys(&["="]);
    t.wait_for("names revealed", |s| {
        s.contains("names revealed") && s.contains("mock/thinker")
    });
    // The judge answers offline, with a verdict.
    t.keys(&["J"]);
    t.wait_for("the mock judge's verdict", |s| {
        s.contains("agreement 0.67") && s.contains("best") && !s.contains("judging…")
    });
    quit(&t);
}

#[test]
fn an_export_after_two_turns_holds_both() {
    if !Tmux::installed() {
        eprintln!("SKIP: tmux is not installed; the TUI end-to-end test needs it");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "compare_targets = [\"mock/alpha\", \"mock/beta\"]\n",
    )
    .unwrap();
    let script = write_script(dir.path(), "");
    let t = start(&script, "export-two");
    t.wait_for("the first frame", |s| s.contains("mock/beta · ready"));

    // Nothing yet: nothing is written.
    t.keys(&["C-e"]);
    t.wait_for("nothing to export", |s| s.contains("nothing to export yet"));

    // Two turns.
    t.literal("What is 2+2?");
    t.keys(&["Enter"]);
    t.wait_for("turn one", |s| s.matches("· done").count() == 2);
    t.literal("And what is 3*7?");
    t.keys(&["Enter"]);
    t.wait_for("turn two", |s| {
        s.matches("· done").count() == 2 && s.contains("· 2 sends")
    });
    t.keys(&["C-e"]);
    t.wait_for("the export written", |s| s.contains("exported to"));
    quit(&t);

    // Check: the Markdown holds both prompts and both answers of each.
    let exports = dir.path().join("data/exports");
    let md = std::fs::read_dir(&exports)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "md"))
        .expect("a Markdown export");
    let md = std::fs::read_to_string(md).unwrap();
    assert_eq!(
        std::fs::read_dir(&exports).unwrap().count(),
        2,
        "one .md, one .json"
    );
    let t1 = md.find("## Turn 1").expect(&md);
    let t2 = md.find("## Turn 2").expect(&md);
    assert!(t1 < t2);
    assert!(
        md[t1..t2].contains("What is 2+2?") && md[t1..t2].contains("4"),
        "{md}"
    );
    assert!(
        md[t2..].contains("And what is 3*7?") && md[t2..].contains("21"),
        "{md}"
    );
    assert_eq!(md.matches("### mock/alpha (done)").count(), 2, "{md}");
    assert_eq!(md.matches("### mock/beta (done)").count(), 2, "{md}");
}

#[test]
fn a_json_schema_comparison_of_the_mocks_shows_each_panes_verdict() {
    if !Tmux::installed() {
        eprintln!("SKIP: tmux is not installed; the TUI end-to-end test needs it");
        return;
    }
    // Setup: two mocks (the contrarian follows schemas loosely) and a schema file.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "compare_targets = [\"mock/alpha\", \"mock/contrarian\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("answer.schema.json"),
        r#"{"type": "object", "required": ["result", "unit"],
            "properties": {"result": {"type": "number"}, "unit": {"type": "string"}}}"#,
    )
    .unwrap();
    let script = write_script(dir.path(), "");
    let t = start(&script, "schema");
    t.wait_for("the first frame", |s| {
        s.contains("mock/alpha · ready") && s.contains("mock/contrarian · ready")
    });

    // Exec: F2 opens the settings; the schema row takes the file (the workbench
    // runs in `dir`); Esc closes; the status bar says the next send has a schema.
    t.keys(&["F2"]);
    t.wait_for("the settings panel", |s| {
        s.contains("run settings · every target")
    });
    for _ in 0..5 {
        t.keys(&["Down"]);
    }
    t.keys(&["Enter"]);
    t.literal("answer.schema.json");
    t.keys(&["Enter"]);
    t.wait_for("the schema row set", |s| {
        s.contains("schema file       answer.schema.json")
    });
    t.keys(&["Escape"]);
    t.wait_for("the panel closed", |s| {
        !s.contains("run settings") && s.contains("next: schema")
    });
    t.literal("Give 2+2 with its unit.");
    t.keys(&["Enter"]);
    let done = t.wait_for("both panes done with a verdict", |s| {
        s.contains("mock/alpha · done")
            && s.contains("mock/contrarian · done")
            && s.contains("schema ✓")
            && s.contains("schema ✗")
    });

    // Check: the valid verdict is in alpha's column, the invalid one in the
    // contrarian's, with the path of the first error.
    let col = |needle: &str| {
        done.lines()
            .find_map(|l| l.find(needle).map(|b| l[..b].chars().count()))
            .unwrap_or_else(|| panic!("{needle} not on screen:\n{done}"))
    };
    let contrarian = col("mock/contrarian · done");
    assert!(col("schema ✓") < contrarian, "{done}");
    assert!(col("schema ✗") >= contrarian - 2, "{done}");
    assert!(done.contains("schema ✗ invalid at /"), "{done}");
    t.keys(&["C-q"]);
    let after = t.wait_for("quorum to exit", |s| {
        s.contains("QUORUM-EXIT-") && s.contains("TTY-")
    });
    assert!(after.contains("QUORUM-EXIT-0"), "{after}");
}
