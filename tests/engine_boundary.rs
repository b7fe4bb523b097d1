//! The engine knows nothing of terminals: no file under src/engine may use a UI crate.

use std::path::Path;

fn walk(dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&p).unwrap();
            for (n, line) in text.lines().enumerate() {
                for bad in ["ratatui", "crossterm", "tui_textarea"] {
                    if line
                        .split(|c: char| !c.is_alphanumeric() && c != '_')
                        .any(|w| w == bad)
                    {
                        out.push(format!("{}:{}: {}", p.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
}

#[test]
fn engine_imports_no_ui_crate() {
    let mut hits = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine"),
        &mut hits,
    );
    assert!(
        hits.is_empty(),
        "UI crates used inside src/engine:\n{}",
        hits.join("\n")
    );
}

/// Lines of the `.rs` files under `dir` that name `needle`.
fn uses(dir: &str, needle: &str) -> Vec<String> {
    fn go(dir: &Path, needle: &str, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                go(&p, needle, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for (n, line) in text.lines().enumerate() {
                    if line.contains(needle) {
                        out.push(format!("{}:{}: {}", p.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    go(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(dir),
        needle,
        &mut out,
    );
    out
}

#[test]
fn no_face_imports_another() {
    let faces = ["cli", "serve", "tui"];
    let mut hits = Vec::new();
    for a in faces {
        for b in faces.iter().filter(|b| **b != a) {
            hits.extend(uses(&format!("src/{a}"), &format!("crate::{b}")));
        }
        // Nor does the engine or a shared module import a face.
        hits.extend(uses("src/engine", &format!("crate::{a}")));
        hits.extend(uses("src/shared", &format!("crate::{a}")));
    }
    assert!(
        hits.is_empty(),
        "faces import each other:\n{}",
        hits.join("\n")
    );
}

/// `quorum eval` is a thin face: the suite, the assertions, the scheduling and the
/// reports live in `engine::eval`; the face imports no other command and no UI crate.
#[test]
fn the_eval_face_stays_thin() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let face = std::fs::read_to_string(root.join("src/cli/eval.rs")).unwrap();
    let mut hits = Vec::new();
    for (n, line) in face.lines().enumerate() {
        for other in [
            "ask",
            "compare",
            "exec",
            "leaderboard",
            "ledger",
            "models",
            "options",
            "pricing",
        ] {
            if line.contains(&format!("super::{other}")) || line.contains(&format!("cli::{other}"))
            {
                hits.push(format!("src/cli/eval.rs:{}: {}", n + 1, line.trim()));
            }
        }
        for bad in ["ratatui", "crossterm", "crate::tui", "crate::serve"] {
            if line.contains(bad) {
                hits.push(format!("src/cli/eval.rs:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        hits.is_empty(),
        "the eval face reaches past the engine:\n{}",
        hits.join("\n")
    );
    // The engine's eval module answers to no face.
    for face in ["cli", "serve", "tui"] {
        let used = uses("src/engine/eval", &format!("crate::{face}"));
        assert!(used.is_empty(), "{}", used.join("\n"));
    }
}

/// The modules of `src/tui` (files directly in it) that each one names through
/// `super::x` or `crate::tui::x`.
fn tui_module_deps() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/tui");
    let mut mods = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if name == "mod" {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let mut deps = std::collections::BTreeSet::new();
        for prefix in ["super::", "crate::tui::"] {
            for (i, _) in text.match_indices(prefix) {
                let rest = &text[i + prefix.len()..];
                let word: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !word.is_empty() && word != name {
                    deps.insert(word);
                }
            }
        }
        mods.insert(name, deps);
    }
    mods
}

#[test]
fn the_tui_modules_import_no_cycle() {
    let mods = tui_module_deps();
    assert!(
        mods.contains_key("app") && mods.contains_key("view"),
        "{mods:?}"
    );
    // Depth-first search for a module that reaches itself.
    fn reach(
        mods: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        from: &str,
        path: &mut Vec<String>,
        cycles: &mut Vec<String>,
    ) {
        for d in mods.get(from).into_iter().flatten() {
            if let Some(i) = path.iter().position(|p| p == d) {
                cycles.push(format!("{} -> {d}", path[i..].join(" -> ")));
            } else if path.len() < mods.len() {
                path.push(d.clone());
                reach(mods, d, path, cycles);
                path.pop();
            }
        }
    }
    let mut cycles = Vec::new();
    for m in mods.keys() {
        reach(&mods, m, &mut vec![m.clone()], &mut cycles);
    }
    assert!(cycles.is_empty(), "import cycles in src/tui: {cycles:#?}");
}
