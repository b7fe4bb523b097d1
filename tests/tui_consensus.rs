//! The consensus widgets of the TUI over fixed answer sets: the heat map,
//! clusters and verdict, the word diff, blind mode, the leaderboard and
//! stability. Widgets are rendered into a Buffer; colours are checked per
//! cell here, layouts by text snapshots.

use llm_quorum::engine::consensus::{leaderboard, AnswerInput, ConsensusOptions, Vote};
use llm_quorum::engine::judge::{JudgeKey, JudgeOutcome, Verdict};
use llm_quorum::engine::{Completion, EngineError, FinishReason};
use llm_quorum::tui::consensus::{
    diff_lines, votes_from_rows, AgreementMatrix, BlindState, ClusterSummary, ConsensusReport,
    ConsensusStyles, ConsensusTab, ConsensusView, ConsensusViewState, DiffState, JudgeStatus,
    LeaderboardTable, MatrixMetric, PaneNames, StabilityTable, SummaryLine, VoteChoice,
    WordDiffView, SHADES,
};
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier};
use ratatui::widgets::{StatefulWidget, Widget};
use ratatui::Terminal;

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

fn done(provider: &str, model: &str, text: &str) -> Completion {
    Completion {
        provider: provider.into(),
        model: model.into(),
        text: text.into(),
        ..Default::default()
    }
}

fn failed(provider: &str, model: &str, error: EngineError) -> Completion {
    Completion {
        provider: provider.into(),
        model: model.into(),
        text: "Yes".into(), // streamed before the failure: must not vote
        finish_reason: FinishReason::Error,
        error: Some(error),
        ..Default::default()
    }
}

fn report_of(prompt: &str, cs: &[Completion]) -> ConsensusReport {
    ConsensusReport::from_completions(
        prompt,
        cs.iter()
            .map(|c| (format!("{}/{}", c.provider, c.model), c)),
    )
}

/// The same number phrased three ways.
fn three_fours() -> ConsensusReport {
    report_of(
        "What is 2+2? Answer with one number.",
        &[
            done("openai", "gpt-4o-mini", "4"),
            done("anthropic", "claude-sonnet-4-5", "The answer is **four**."),
            done("gemini", "gemini-2.5-flash", "2 + 2 = 4.0"),
        ],
    )
}

const SQL: &str =
    "def f(q): db.execute(\"SELECT * FROM t WHERE id=\" + q)\n\nIs this code vulnerable?";

fn yes_yes_no() -> ConsensusReport {
    report_of(
        SQL,
        &[
            done(
                "openai",
                "gpt-4o",
                "Yes. The query is built by string concatenation, so `q` can inject SQL.",
            ),
            done(
                "anthropic",
                "claude",
                "**Yes** — concatenating `q` into the SQL string allows injection.",
            ),
            done(
                "ollama",
                "llama3",
                "No, this is fine: the database driver escapes the parameter for you.",
            ),
        ],
    )
}

fn failed_and_empty() -> ConsensusReport {
    report_of(
        "Is the sky green? Answer yes or no.",
        &[
            failed(
                "openai",
                "gpt-4o",
                EngineError::RateLimited {
                    message: "slow down".into(),
                    retry_after: None,
                },
            ),
            done("gemini", "flash", "  \n** **\n"),
            done("anthropic", "claude", "No."),
            done("mock", "alpha", "No, it is blue."),
        ],
    )
}

fn code(line: &str) -> String {
    let mut s = String::from("Here is the function:\n\n```python\n");
    for i in 0..40 {
        if i == 20 {
            s.push_str(line);
        } else {
            s.push_str(&format!(
                "    total_{i} = compute_step({i}, data[{i}]) * weight_{i}\n"
            ));
        }
    }
    s.push_str("```\n\nIt runs in linear time.");
    s
}

fn code_pair() -> ConsensusReport {
    ConsensusReport::from_answers(
        "Write the function.",
        vec![
            AnswerInput::new("openai/gpt-4o", code("    if value > limit:\n")),
            AnswerInput::new("anthropic/claude", code("    if value >= limit:\n")),
            AnswerInput::new("mock/alpha", "I cannot help with that request."),
        ],
    )
}

fn render(w: impl Widget, width: u16, height: u16) -> Buffer {
    let mut buf = Buffer::empty(Rect::new(0, 0, width, height));
    w.render(buf.area, &mut buf);
    buf
}

fn row(buf: &Buffer, y: u16) -> String {
    (0..buf.area.width)
        .map(|x| buf[(x, y)].symbol())
        .collect::<String>()
}

fn text(buf: &Buffer) -> String {
    (0..buf.area.height)
        .map(|y| row(buf, y).trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The row holding `needle` and the column where it starts.
fn find(buf: &Buffer, needle: &str) -> Option<(u16, u16)> {
    for y in 0..buf.area.height {
        let cells: Vec<&str> = (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect();
        let line: String = cells.concat();
        if let Some(byte) = line.find(needle) {
            // Map the byte offset back to a cell.
            let mut acc = 0;
            for (x, c) in cells.iter().enumerate() {
                if acc == byte {
                    return Some((x as u16, y));
                }
                acc += c.len();
            }
        }
    }
    None
}

fn view(
    report: &ConsensusReport,
    state: &mut ConsensusViewState,
    blind: Option<&BlindState>,
    board: Option<&llm_quorum::engine::consensus::Leaderboard>,
    styles: &ConsensusStyles,
    width: u16,
    height: u16,
) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(width, height)).unwrap();
    t.draw(|f| {
        f.render_stateful_widget(
            ConsensusView::new(report)
                .blind(blind)
                .leaderboard(board)
                .styles(styles),
            f.area(),
            state,
        )
    })
    .unwrap();
    t
}

fn tab_state(report: &ConsensusReport, tab: ConsensusTab) -> ConsensusViewState {
    let mut s = ConsensusViewState::for_report(report);
    s.select_tab(tab);
    s
}

fn vote(targets: &[&str], winner: Option<&str>) -> Vote {
    Vote {
        targets: targets.iter().map(|t| t.to_string()).collect(),
        winner: winner.map(str::to_string),
        tag: None,
        run_id: None,
        created_at: None,
    }
}

// ---------------------------------------------------------------------------
// The heat map
// ---------------------------------------------------------------------------

#[test]
fn the_same_number_three_ways_is_all_high_and_one_cluster() {
    // Setup
    let r = three_fours();
    let styles = ConsensusStyles::default();
    // Exec
    let buf = render(AgreementMatrix::new(&r).styles(&styles), 100, 10);
    // Check
    assert_eq!(r.consensus.clusters.len(), 1);
    let t = text(&buf);
    assert!(t.contains("agreement on the extracted number"), "{t}");
    for y in 2..5 {
        let line = row(&buf, y);
        assert_eq!(line.matches("1.00").count(), 3, "{line}");
        assert!(
            line.trim_end().ends_with(" 4"),
            "extracted answer shown: {line}"
        );
    }
    // Every score cell has the top colour.
    let (x, y) = find(&buf, "1.00").unwrap();
    for dy in 0..3 {
        for k in 0..3u16 {
            let cell = &buf[(x + k * 6, y + dy)];
            assert_eq!(cell.bg, Color::Green, "row {dy} col {k}");
        }
    }
    assert!(
        t.contains("3 of 3 finished agree on \"4\" · agreement 1.00"),
        "{t}"
    );
    // The texts themselves differ: the text metric shows it.
    let by_text = render(
        AgreementMatrix::new(&r)
            .styles(&styles)
            .metric(MatrixMetric::Score),
        100,
        10,
    );
    assert!(text(&by_text).contains("text similarity"));
    assert!(
        row(&by_text, 2).matches("1.00").count() == 1,
        "only the diagonal"
    );
}

#[test]
fn yes_no_disagreement_shows_two_clusters_and_the_dissenter() {
    let r = yes_yes_no();
    let c = &r.consensus;
    assert_eq!(c.clusters.len(), 2);
    assert_eq!(c.majority_answer.as_deref(), Some("yes"));
    let styles = ConsensusStyles::default();
    let m = render(AgreementMatrix::new(&r).styles(&styles), 100, 10);
    let row_gpt = row(&m, 2);
    assert_eq!(row_gpt.matches("1.00").count(), 2, "{row_gpt}");
    assert_eq!(row_gpt.matches("0.00").count(), 1, "{row_gpt}");
    let (x, y) = find(&m, "0.00").unwrap();
    assert_eq!(
        m[(x, y)].bg,
        Color::Red,
        "disagreement is the coldest colour"
    );
    // The dissenter's row is labelled in the dissent style.
    let (lx, ly) = find(&m, "3 ollama/llama3").unwrap();
    assert_eq!(m[(lx, ly)].fg, Color::Yellow);

    let s = render(ClusterSummary::new(&r).styles(&styles), 100, 12);
    let t = text(&s);
    assert!(
        t.contains("majority   \"yes\" · 2 of 3: 1 openai/gpt-4o, 2 anthropic/claude"),
        "{t}"
    );
    assert!(t.contains("dissent    3 ollama/llama3 said \"no\""), "{t}");
    assert!(t.contains("groups     1. \"yes\""), "{t}");
    assert!(t.contains("2. \"no\" · 3 ollama/llama3"), "{t}");
    let (dx, dy) = find(&s, "3 ollama/llama3 said").unwrap();
    assert_eq!(s[(dx, dy)].fg, Color::Yellow);
}

#[test]
fn one_against_one_is_no_majority() {
    let r = report_of(
        SQL,
        &[
            done("a", "x", "Yes, q can inject SQL."),
            done("b", "y", "No, the driver escapes it."),
        ],
    );
    let t = text(&render(ClusterSummary::new(&r), 100, 10));
    assert!(
        t.contains("majority   none · 2 answers, no strict majority"),
        "{t}"
    );
    assert!(!t.contains("dissent"), "{t}");
    assert!(t.contains("1. \"yes\" · 1 a/x"), "{t}");
    assert!(t.contains("2. \"no\" · 2 b/y"), "{t}");
    assert_eq!(
        SummaryLine::new(&r.consensus).text(),
        "consensus · no majority among 2 answers · agreement 0.00"
    );
}

#[test]
fn failed_and_empty_answers_are_reported_never_counted() {
    let r = failed_and_empty();
    let styles = ConsensusStyles::default();
    let m = render(AgreementMatrix::new(&r).styles(&styles), 100, 10);
    let t = text(&m);
    // Rows 2.. are panes: failed (0), empty (1), two answered.
    let failed_row = row(&m, 2);
    let empty_row = row(&m, 3);
    assert!(
        failed_row.contains('✗') && failed_row.contains("failed"),
        "{t}"
    );
    assert!(
        empty_row.contains('∅') && empty_row.contains("empty"),
        "{t}"
    );
    for r_ in [&failed_row, &empty_row] {
        assert!(!r_.contains("0.") && !r_.contains("1.0"), "no score: {r_}");
    }
    // No heat colour anywhere in the failed and empty rows or columns: the
    // first heat cell is the third column of the third pane.
    let (x0, y0) = find(&m, "1.00").unwrap();
    assert_eq!(y0, 4);
    for y in 2..6u16 {
        for x in 0..100u16 {
            if y < 4 || x < x0.saturating_sub(1) {
                assert_eq!(
                    m[(x, y)].bg,
                    Color::Reset,
                    "({x},{y}) in a failed/empty row or column"
                );
            }
        }
    }
    assert_ne!(m[(x0, y0)].bg, Color::Reset);
    assert_eq!(
        row(&m, 4).matches("1.00").count(),
        2,
        "the two answered agree"
    );
    assert!(
        t.contains("2 of 2 finished agree on \"no\""),
        "only answered panes count: {t}"
    );

    let s = text(&render(ClusterSummary::new(&r), 100, 12));
    assert!(
        s.contains("failed     ✗ 1 openai/gpt-4o — rate limited (HTTP 429): slow down"),
        "{s}"
    );
    assert!(
        s.contains("empty      ∅ 2 gemini/flash — finished with no text"),
        "{s}"
    );
    assert!(s.contains("2 of 4 answered"), "{s}");
    assert_eq!(
        SummaryLine::new(&r.consensus).text(),
        "consensus · 2 of 2 finished agree on \"no\" · agreement 1.00 · 1 failed · 1 empty"
    );
}

#[test]
fn summary_line_for_the_bar() {
    let r = report_of(
        "What is 2+2? Answer with one number.",
        &[
            done("openai", "gpt-4o-mini", "4"),
            done("anthropic", "claude", "Two plus two equals 4."),
            done("gemini", "flash", "5"),
        ],
    );
    let line = SummaryLine::new(&r.consensus);
    assert_eq!(
        line.text(),
        "consensus · 2 of 3 finished agree on \"4\" · agreement 0.67"
    );
    let buf = render(line.clone(), 60, 1);
    assert_eq!(buf[(0, 0)].fg, Color::Cyan, "title style");
    let (x, _) = find(&buf, "0.67").unwrap();
    assert_eq!(
        buf[(x, 0)].fg,
        Color::LightGreen,
        "agreement coloured by its heat"
    );
    let narrow = render(line, 20, 1);
    assert_eq!(row(&narrow, 0), "consensus · 2 of 3 …");
    assert_eq!(
        SummaryLine::waiting(1, 3).text(),
        "consensus · waiting · 1 of 3 finished"
    );
}

// ---------------------------------------------------------------------------
// The judge
// ---------------------------------------------------------------------------

fn judged(r: ConsensusReport) -> ConsensusReport {
    // The judge saw answers A, B, C in pane order (all answered).
    let key: Vec<JudgeKey> = (0..r.len())
        .map(|i| JudgeKey {
            letter: llm_quorum::engine::judge::letter(i),
            label: r.consensus.answers[i].label.clone(),
            index: i,
        })
        .collect();
    let outcome = JudgeOutcome {
        target: "mock/judge".into(),
        key,
        verdict: Some(Verdict {
            agreement: Some(0.6),
            best: Some("B".into()),
            best_target: Some("anthropic/claude".into()),
            disagreements: vec!["Answer C says the driver escapes the parameter".into()],
            summary: "Answer A and Answer B both spot the injection.".into(),
        }),
        error: None,
        completion: Completion::default(),
    };
    r.with_judge(JudgeStatus::Done(Box::new(outcome)))
}

#[test]
fn the_judge_verdict_is_shown_with_names_on_its_letters() {
    let r = judged(yes_yes_no());
    let t = text(&render(ClusterSummary::new(&r), 100, 14));
    assert!(
        t.contains("judge      mock/judge · agreement 0.60 · best 2 anthropic/claude"),
        "{t}"
    );
    assert!(
        t.contains("openai/gpt-4o and anthropic/claude both spot the injection."),
        "{t}"
    );
    assert!(
        t.contains("differ on  · ollama/llama3 says the driver escapes"),
        "{t}"
    );

    let running = yes_yes_no().with_judge(JudgeStatus::Running {
        target: "mock/judge".into(),
    });
    assert!(text(&render(ClusterSummary::new(&running), 100, 14)).contains("mock/judge · judging…"));
    let mut no_verdict = match judged(yes_yes_no()).judge {
        Some(JudgeStatus::Done(o)) => o,
        _ => unreachable!(),
    };
    no_verdict.verdict = None;
    no_verdict.error = Some("the judge's reply has no JSON verdict".into());
    let nv = yes_yes_no().with_judge(JudgeStatus::Done(no_verdict));
    assert!(text(&render(ClusterSummary::new(&nv), 100, 14))
        .contains("mock/judge · no verdict: the judge's reply has no JSON verdict"));
    let skipped = yes_yes_no().with_judge(JudgeStatus::Unavailable("fewer than two".into()));
    assert!(
        text(&render(ClusterSummary::new(&skipped), 100, 14)).contains("skipped: fewer than two")
    );
}

// ---------------------------------------------------------------------------
// The word diff
// ---------------------------------------------------------------------------

#[test]
fn code_differing_in_one_line_diffs_only_that_lines_words() {
    // Setup
    let r = code_pair();
    let styles = ConsensusStyles::default();
    let mut st = DiffState::new(0, 1);
    // Exec
    let mut buf = Buffer::empty(Rect::new(0, 0, 100, 40));
    WordDiffView::new(&r)
        .styles(&styles)
        .render(buf.area, &mut buf, &mut st);
    // Check
    let t = text(&buf);
    assert!(
        t.starts_with("1 openai/gpt-4o → 2 anthropic/claude · similarity"),
        "{t}"
    );
    assert!(t.contains("1 change"), "{t}");
    let mut changed = Vec::new();
    for y in 0..40 {
        for x in 0..100 {
            let c = &buf[(x, y)];
            let inserted = c.fg == Color::Green && c.modifier == Modifier::BOLD;
            let deleted = c.fg == Color::Red && c.modifier == Modifier::CROSSED_OUT;
            if inserted {
                changed.push(('+', x, y, c.symbol().to_string()));
            } else if deleted {
                changed.push(('-', x, y, c.symbol().to_string()));
            } else if y >= 2 {
                assert_eq!(
                    (c.fg, c.modifier),
                    (Color::Reset, Modifier::empty()),
                    "({x},{y}) plain"
                );
            }
        }
    }
    // Drop the legend (row 1).
    changed.retain(|c| c.2 >= 2);
    let line_y = find(&buf, "    if value").unwrap().1;
    assert!(
        changed.iter().all(|c| c.2 == line_y),
        "only one line: {changed:?}"
    );
    let deleted: String = changed
        .iter()
        .filter(|c| c.0 == '-')
        .map(|c| c.3.clone())
        .collect();
    let inserted: String = changed
        .iter()
        .filter(|c| c.0 == '+')
        .map(|c| c.3.clone())
        .collect();
    assert_eq!(deleted, ">");
    assert_eq!(inserted, ">=");
    assert_eq!(row(&buf, line_y).trim_end(), "    if value >>= limit:");
    let (x, y) = find(&buf, "if value").unwrap();
    assert_eq!(buf[(x, y)].fg, Color::Reset, "equal text is plain");
    assert_eq!(buf[(x + 9, y)].fg, Color::Red);
    assert_eq!(buf[(x + 10, y)].fg, Color::Green);

    // Scrolling: 40+ lines in 38 rows; End reaches the last line.
    let mut vs = ConsensusViewState::for_report(&r);
    assert_eq!(vs.diff.pair(), (0, 2), "majority against the dissenter");
    assert!(vs.select_diff(0, 1));
    vs.select_tab(ConsensusTab::Diff);
    let t0 = view(&r, &mut vs, None, None, &styles, 100, 20);
    assert!(vs.handle_key(KeyCode::End));
    let t1 = view(&r, &mut vs, None, None, &styles, 100, 20);
    assert!(vs.scroll() > 0);
    assert_ne!(format!("{}", t0.backend()), format!("{}", t1.backend()));
    assert!(format!("{}", t1.backend()).contains("It runs in linear time."));
    // n jumps to the change.
    assert!(vs.handle_key(KeyCode::Home));
    view(&r, &mut vs, None, None, &styles, 100, 20);
    assert!(vs.handle_key(KeyCode::Char('n')));
    let t2 = format!(
        "{}",
        view(&r, &mut vs, None, None, &styles, 100, 20).backend()
    );
    let first_body = t2.lines().nth(3).unwrap();
    assert!(first_body.contains("if value >>= limit"), "{t2}");
}

#[test]
fn diff_wraps_words_and_marks_changes_without_colour() {
    let mono = ConsensusStyles::monochrome();
    let lines = diff_lines(
        "the quick brown fox jumps over the lazy dog",
        "the quick red fox jumps over the lazy cat",
        16,
        &mono,
    );
    let plain: Vec<String> = lines.iter().map(|l| l.line.to_string()).collect();
    assert_eq!(
        plain,
        vec![
            "the quick",
            "[-brown-]{+red+}",
            "fox jumps over",
            "the lazy [-dog-]",
            "{+cat+}"
        ]
    );
    let changed: Vec<bool> = lines.iter().map(|l| l.changed).collect();
    assert_eq!(changed, vec![false, true, false, true, true]);
}

#[test]
fn diff_pane_selection_by_index_and_keys() {
    let r = yes_yes_no();
    let mut s = ConsensusViewState::new(3);
    s.select_tab(ConsensusTab::Diff);
    assert_eq!(s.diff.pair(), (0, 1));
    assert!(!s.select_diff(1, 1), "a pane against itself");
    assert!(!s.select_diff(0, 7), "out of range");
    assert!(s.handle_key(KeyCode::Char(']')));
    assert_eq!(s.diff.pair(), (2, 1));
    assert!(s.handle_key(KeyCode::Char(']')));
    assert_eq!(s.diff.pair(), (0, 1), "wraps, skipping the other side");
    assert!(s.handle_key(KeyCode::Char('}')));
    assert_eq!(s.diff.pair(), (0, 2));
    assert!(s.handle_key(KeyCode::Char('{')));
    assert_eq!(s.diff.pair(), (0, 1));
    assert!(s.handle_key(KeyCode::Char('x')));
    assert_eq!(s.diff.pair(), (1, 0));
    let t = format!(
        "{}",
        view(&r, &mut s, None, None, &ConsensusStyles::default(), 100, 10).backend()
    );
    assert!(t.contains("2 anthropic/claude → 1 openai/gpt-4o"), "{t}");
    // Failed panes are said to be failed, not diffed.
    let f = failed_and_empty();
    let mut fs = ConsensusViewState::new(f.len());
    fs.select_tab(ConsensusTab::Diff);
    let t = format!(
        "{}",
        view(
            &f,
            &mut fs,
            None,
            None,
            &ConsensusStyles::default(),
            100,
            10
        )
        .backend()
    );
    assert!(t.contains("✗ 1 openai/gpt-4o failed — rate limited"), "{t}");
}

// ---------------------------------------------------------------------------
// Blind mode
// ---------------------------------------------------------------------------

#[test]
fn blind_mode_hides_names_until_the_vote_then_reveals() {
    // Setup
    let r = judged(yes_yes_no());
    let mut blind = BlindState::for_report(&r, 7).with_tag(Some("sql".into()));
    let styles = ConsensusStyles::default();
    let names = [
        "openai",
        "anthropic",
        "ollama",
        "gpt-4o",
        "claude",
        "llama3",
    ];
    // Exec: every tab while hidden.
    for tab in ConsensusTab::ALL {
        if tab == ConsensusTab::Leaderboard {
            continue;
        }
        let mut s = tab_state(&r, tab);
        let t = format!(
            "{}",
            view(&r, &mut s, Some(&blind), None, &styles, 100, 30).backend()
        );
        for n in names {
            assert!(!t.contains(n), "{n} leaked on {tab:?}:\n{t}");
        }
        assert!(t.contains("names hidden"), "{t}");
    }
    let letters: Vec<String> = (0..3).map(|p| blind.letter_for(p).unwrap()).collect();
    let mut sorted = letters.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["A", "B", "C"], "a permutation");
    assert_eq!(blind.label_for(0), format!("Answer {}", letters[0]));
    // The judge's own letters are rewritten to the blind ones.
    let mut s = tab_state(&r, ConsensusTab::Clusters);
    let t = format!(
        "{}",
        view(&r, &mut s, Some(&blind), None, &styles, 100, 30).backend()
    );
    assert!(
        t.contains(&format!(
            "Answer {} and Answer {} both spot",
            letters[0], letters[1]
        )),
        "{t}"
    );
    assert!(t.contains(&format!("best Answer {}", letters[1])), "{t}");

    // A lower-case letter is not a vote; Shift+letter is.
    assert_eq!(blind.handle_key(KeyCode::Char('a')), None);
    assert!(!blind.revealed());
    let pick = blind.pane_for_letter(&letters[1]).unwrap();
    assert_eq!(pick, 1);
    let key = KeyEvent::new(
        KeyCode::Char(letters[1].chars().next().unwrap()),
        KeyModifiers::SHIFT,
    );
    let v = blind.handle_key(key).expect("a vote");
    // Check
    assert_eq!(
        v,
        Vote {
            targets: vec![
                "openai/gpt-4o".into(),
                "anthropic/claude".into(),
                "ollama/llama3".into()
            ],
            winner: Some("anthropic/claude".into()),
            tag: Some("sql".into()),
            run_id: None,
            created_at: None,
        }
    );
    assert!(blind.revealed());
    assert_eq!(blind.voted(), Some(VoteChoice::Pane(1)));
    assert_eq!(blind.label_for(1), "anthropic/claude");
    assert_eq!(blind.vote(VoteChoice::Tie), None, "one vote per comparison");
    let t = format!(
        "{}",
        view(&r, &mut s, Some(&blind), None, &styles, 100, 30).backend()
    );
    assert!(
        t.contains(&format!("voted Answer {} = anthropic/claude", letters[1])),
        "{t}"
    );
    assert!(t.contains(&format!("{} openai/gpt-4o", letters[0])), "{t}");
}

#[test]
fn blind_tie_and_stable_letters() {
    let targets: Vec<String> = ["a/x", "b/y", "c/z", "d/w"].map(String::from).to_vec();
    let one = BlindState::new(targets.clone(), 42);
    let again = BlindState::new(targets.clone(), 42);
    assert_eq!(one, again, "same seed, same letters");
    let letters = |b: &BlindState| (0..4).map(|p| b.letter_for(p).unwrap()).collect::<Vec<_>>();
    let differ = (0..20u64)
        .map(|s| letters(&BlindState::new(targets.clone(), s)))
        .collect::<std::collections::HashSet<_>>();
    assert!(differ.len() > 5, "seeds shuffle: {differ:?}");
    assert_eq!(one.panes_by_letter().len(), 4);
    for (k, p) in one.panes_by_letter().into_iter().enumerate() {
        assert_eq!(
            one.letter_for(p).unwrap(),
            llm_quorum::engine::judge::letter(k)
        );
    }

    let mut b = BlindState::new(targets.clone(), 1).with_run_id(Some("run-9".into()));
    let ctrl = KeyEvent::new(KeyCode::Char('='), KeyModifiers::CONTROL);
    assert_eq!(b.handle_key(ctrl), None);
    let release = KeyEvent {
        kind: KeyEventKind::Release,
        ..KeyEvent::from(KeyCode::Char('='))
    };
    assert_eq!(b.handle_key(release), None);
    let v = b.handle_key(KeyCode::Char('=')).unwrap();
    assert_eq!(v.winner, None);
    assert_eq!(v.targets, targets);
    assert_eq!(v.run_id.as_deref(), Some("run-9"));
    assert_eq!(b.voted(), Some(VoteChoice::Tie));
    // Out of range and lone panes cannot vote.
    let mut c = BlindState::new(targets.clone(), 1);
    assert_eq!(c.vote(VoteChoice::Pane(9)), None);
    assert!(!c.revealed());
    let mut lone = BlindState::new(vec!["a/x".into()], 1);
    assert_eq!(lone.vote(VoteChoice::Pane(0)), None);
    // Failed and empty panes get letters but are not in the vote.
    let f = failed_and_empty();
    let mut fb = BlindState::for_report(&f, 5);
    assert!(fb.letter_for(0).is_some() && fb.letter_for(1).is_some());
    assert!(!fb.is_eligible(0) && !fb.is_eligible(1));
    assert_eq!(
        fb.vote(VoteChoice::Pane(0)),
        None,
        "a failed pane cannot win"
    );
    assert!(!fb.revealed());
    let v = fb.vote(VoteChoice::Pane(3)).unwrap();
    assert_eq!(v.targets, vec!["anthropic/claude", "mock/alpha"]);
    assert_eq!(v.winner.as_deref(), Some("mock/alpha"));
    // Revealing without a vote.
    c.reveal();
    assert!(c.revealed());
    assert_eq!(c.vote(VoteChoice::Pane(0)), None);
    assert_eq!(
        PaneNames::new(&targets, Some(&c)).full(0),
        format!("{} a/x", c.letter_for(0).unwrap())
    );
}

// ---------------------------------------------------------------------------
// Leaderboard and stability
// ---------------------------------------------------------------------------

#[test]
fn the_leaderboard_reflects_blind_votes() {
    let targets: Vec<String> = ["openai/gpt-4o", "anthropic/claude", "gemini/flash"]
        .map(String::from)
        .to_vec();
    let mut votes = Vec::new();
    for seed in 0..3 {
        let mut b = BlindState::new(targets.clone(), seed);
        votes.push(b.vote(VoteChoice::Pane(1)).unwrap());
    }
    let mut b = BlindState::new(targets.clone(), 9);
    votes.push(b.vote(VoteChoice::Tie).unwrap());
    votes.push(vote(&["openai/gpt-4o"], None)); // invalid: one target
    let lb = leaderboard(&votes, None);
    let buf = render(LeaderboardTable::new(&lb), 100, 8);
    let t = text(&buf);
    let top = row(&buf, 1);
    assert!(top.contains("anthropic/claude"), "{t}");
    assert!(top.contains("87.5%"), "3 wins and a tie in 4: {t}");
    assert!(top.contains(&format!("{:.0}", lb.rows[0].elo)), "{t}");
    assert!(t.contains("4 votes (1 skipped as invalid)"), "{t}");
    let one = leaderboard(&[vote(&["a/x", "b/y"], None)], None);
    assert!(text(&render(LeaderboardTable::new(&one), 100, 6)).contains("1 vote ·"));
    assert!(row(&buf, 0).contains("win rate"), "{t}");
    // Ledger rows convert to the same votes.
    let rows = vec![llm_quorum::engine::ledger::VoteRow {
        run_id: Some("r1".into()),
        targets: targets.clone(),
        winner: Some("gemini/flash".into()),
        tag: Some("t".into()),
        created_at: "2026-12-01T12:00:00Z".into(),
    }];
    let lb2 = leaderboard(&votes_from_rows(&rows), Some("t"));
    assert_eq!(lb2.rows[0].target, "gemini/flash");
    let empty = leaderboard(&[], Some("x"));
    assert!(
        text(&render(LeaderboardTable::new(&empty), 80, 3)).contains("no votes tagged \"x\" yet")
    );
}

fn repeated() -> ConsensusReport {
    let mk = |p: &str, m: &str, t: &str| done(p, m, t);
    let results = vec![
        (0, 1, mk("openai", "gpt-4o", "4")),
        (0, 2, mk("openai", "gpt-4o", "The answer is 4.")),
        (0, 3, mk("openai", "gpt-4o", "four")),
        (1, 1, mk("mock", "flaky", "4")),
        (1, 2, mk("mock", "flaky", "5")),
        (1, 3, failed("mock", "flaky", EngineError::Cancelled)),
    ];
    ConsensusReport::from_runs(
        "What is 2+2?",
        3,
        vec!["openai/gpt-4o".into(), "mock/flaky".into()],
        results,
        ConsensusOptions::default(),
    )
}

#[test]
fn stability_shows_distinct_answers_and_self_agreement() {
    let r = repeated();
    assert_eq!(r.stability.len(), 2);
    let buf = render(StabilityTable::new(&r.stability), 100, 6);
    let t = text(&buf);
    let steady = row(&buf, 1);
    let flaky = row(&buf, 2);
    assert!(
        steady.contains("openai/gpt-4o") && steady.contains("1 of 3"),
        "{t}"
    );
    assert!(steady.contains("1.00") && steady.contains("\"4\""), "{t}");
    assert!(
        flaky.contains("mock/flaky") && flaky.contains("2 of 2"),
        "{t}"
    );
    assert!(flaky.contains("0.00"), "{t}");
    let (x, y) = find(&buf, "2 of 2").unwrap();
    assert_eq!(
        buf[(x, y)].fg,
        Color::Yellow,
        "more than one answer is dissent"
    );
    assert!(t.contains("3 runs each"), "{t}");
    let none = render(StabilityTable::new(&[]), 100, 2);
    assert!(text(&none).contains("one run per model"));
}

// ---------------------------------------------------------------------------
// The view's keys
// ---------------------------------------------------------------------------

#[test]
fn keys_move_between_tabs_and_scroll_within_bounds() {
    let r = judged(yes_yes_no());
    let styles = ConsensusStyles::default();
    let mut s = ConsensusViewState::for_report(&r);
    assert_eq!(s.tab, ConsensusTab::Matrix);
    assert!(s.handle_key(KeyCode::Right));
    assert_eq!(s.tab, ConsensusTab::Clusters);
    assert!(s.handle_key(KeyCode::Char('h')));
    assert!(s.handle_key(KeyCode::Left));
    assert_eq!(s.tab, ConsensusTab::Stability, "wraps");
    assert!(s.handle_key(KeyCode::Char('2')));
    assert_eq!(s.tab, ConsensusTab::Clusters);
    // Not ours: Ctrl, Alt, Esc, Tab, Enter, releases.
    assert!(!s.handle_key(KeyEvent::new(KeyCode::Char('l'), KeyModifiers::CONTROL)));
    assert!(!s.handle_key(KeyEvent::new(KeyCode::Right, KeyModifiers::ALT)));
    for k in [KeyCode::Esc, KeyCode::Tab, KeyCode::Enter] {
        assert!(!s.handle_key(k), "{k:?}");
    }
    let release = KeyEvent {
        kind: KeyEventKind::Release,
        ..KeyEvent::from(KeyCode::Right)
    };
    assert!(!s.handle_key(release));
    assert_eq!(s.tab, ConsensusTab::Clusters);
    assert!(
        !s.handle_key(KeyCode::Char('[')),
        "diff keys only on the diff tab"
    );
    // Scrolling is clamped to the content after a render.
    view(&r, &mut s, None, None, &styles, 60, 6);
    for _ in 0..100 {
        s.handle_key(KeyCode::Down);
    }
    let max = s.scroll();
    assert!(max > 0);
    let shown = format!("{}", view(&r, &mut s, None, None, &styles, 60, 6).backend());
    assert!(shown.contains("differ on"), "the last lines: {shown}");
    s.handle_key(KeyCode::PageUp);
    assert!(s.scroll() < max);
    s.handle_key(KeyCode::Home);
    assert_eq!(s.scroll(), 0);
    s.handle_key(KeyCode::Up);
    assert_eq!(s.scroll(), 0);
    // m cycles the heat map's metric, on the matrix tab only.
    s.select_tab(ConsensusTab::Matrix);
    assert!(s.handle_key(KeyCode::Char('m')));
    assert_eq!(s.metric, MatrixMetric::Score);
    let t = format!(
        "{}",
        view(&r, &mut s, None, None, &styles, 100, 10).backend()
    );
    assert!(t.contains("text similarity"), "{t}");
}

// ---------------------------------------------------------------------------
// Robustness and NO_COLOR
// ---------------------------------------------------------------------------

#[test]
fn tiny_and_narrow_areas_never_panic() {
    let reports = [
        three_fours(),
        judged(yes_yes_no()),
        failed_and_empty(),
        code_pair(),
        repeated(),
        ConsensusReport::from_answers("x", vec![]),
        ConsensusReport::from_answers("x", vec![AnswerInput::new("solo", "hi")]),
    ];
    let lb = leaderboard(&[vote(&["a/x", "b/y"], Some("a/x"))], None);
    let sizes = [
        (0, 0),
        (1, 1),
        (2, 1),
        (1, 5),
        (5, 2),
        (7, 3),
        (13, 4),
        (24, 6),
        (40, 12),
    ];
    for styles in [ConsensusStyles::default(), ConsensusStyles::monochrome()] {
        for r in &reports {
            let blind = BlindState::for_report(r, 3);
            for (w, h) in sizes {
                for tab in ConsensusTab::ALL {
                    for b in [None, Some(&blind)] {
                        let mut s = tab_state(r, tab);
                        let mut buf = Buffer::empty(Rect::new(0, 0, w, h));
                        ConsensusView::new(r)
                            .blind(b)
                            .leaderboard(Some(&lb))
                            .styles(&styles)
                            .block(ratatui::widgets::Block::bordered())
                            .render(buf.area, &mut buf, &mut s);
                        let mut buf = Buffer::empty(Rect::new(0, 0, w, h));
                        ConsensusView::new(r)
                            .blind(b)
                            .styles(&styles)
                            .render(buf.area, &mut buf, &mut s);
                        for k in [KeyCode::End, KeyCode::Char('n'), KeyCode::Char(']')] {
                            s.handle_key(k);
                        }
                        ConsensusView::new(r).render(buf.area, &mut buf, &mut s);
                    }
                }
                render(AgreementMatrix::new(r).styles(&styles), w, h);
                render(ClusterSummary::new(r).styles(&styles), w, h);
                render(SummaryLine::new(&r.consensus).styles(&styles), w, h);
                render(StabilityTable::new(&r.stability).styles(&styles), w, h);
                render(LeaderboardTable::new(&lb).styles(&styles), w, h);
                let mut ds = DiffState::new(0, 1);
                let mut buf = Buffer::empty(Rect::new(0, 0, w, h));
                WordDiffView::new(r).render(buf.area, &mut buf, &mut ds);
            }
        }
        // An area offset inside a larger buffer stays inside its area.
        let r = three_fours();
        let mut buf = Buffer::empty(Rect::new(0, 0, 30, 8));
        let inner = Rect::new(3, 2, 10, 3);
        let mut s = ConsensusViewState::for_report(&r);
        ConsensusView::new(&r).render(inner, &mut buf, &mut s);
        for y in 0..8 {
            for x in 0..30 {
                if !(3..13).contains(&x) || !(2..5).contains(&y) {
                    assert_eq!(buf[(x, y)].symbol(), " ", "({x},{y}) drawn outside");
                }
            }
        }
    }
    let mut empty = ConsensusViewState::new(0);
    let mut buf = Buffer::empty(Rect::new(0, 0, 30, 5));
    ConsensusView::empty()
        .leaderboard(Some(&lb))
        .render(buf.area, &mut buf, &mut empty);
    assert!(text(&buf).contains("no answers yet"));
}

#[test]
fn heat_buckets_cover_the_range() {
    let colour = ConsensusStyles::default().heat;
    assert_eq!(colour.cell_style(0.0).bg, Some(Color::Red));
    assert_eq!(colour.cell_style(0.5).bg, Some(Color::Yellow));
    assert_eq!(colour.cell_style(0.99).bg, Some(Color::Green));
    assert_eq!(colour.cell_style(1.0).bg, Some(Color::Green));
    assert_eq!(colour.cell_style(f64::NAN).bg, Some(Color::Red));
    let shades = ConsensusStyles::monochrome().heat;
    assert_eq!(shades.fill(0.0), '░');
    assert_eq!(shades.fill(0.3), '▒');
    assert_eq!(shades.fill(0.6), '▓');
    assert_eq!(shades.fill(1.0), '█');
    assert_eq!(shades.cell_style(1.0), ratatui::style::Style::new());
}

#[test]
fn monochrome_uses_no_colour_and_still_reads() {
    let mono = ConsensusStyles::monochrome();
    let lb = leaderboard(&[vote(&["a/x", "b/y"], Some("a/x"))], None);
    let reports = [
        judged(yes_yes_no()),
        failed_and_empty(),
        code_pair(),
        repeated(),
    ];
    for r in &reports {
        for tab in ConsensusTab::ALL {
            let mut s = tab_state(r, tab);
            let t = view(r, &mut s, None, Some(&lb), &mono, 100, 30);
            for c in t.backend().buffer().content() {
                assert_eq!((c.fg, c.bg), (Color::Reset, Color::Reset), "{tab:?}");
            }
        }
    }
    // The heat map shades instead of colouring.
    let r = yes_yes_no();
    let buf = render(AgreementMatrix::new(&r).styles(&mono), 100, 10);
    let t = text(&buf);
    assert!(t.contains("█1.00"), "{t}");
    assert!(t.contains("░0.00"), "{t}");
    assert!(
        t.contains(&SHADES.iter().collect::<String>()),
        "legend: {t}"
    );
    // The diff carries markers.
    let c = code_pair();
    let mut ds = DiffState::new(0, 1);
    let mut buf = Buffer::empty(Rect::new(0, 0, 100, 40));
    WordDiffView::new(&c)
        .styles(&mono)
        .render(buf.area, &mut buf, &mut ds);
    assert!(text(&buf).contains("    if value [->-]{+>=+} limit:"));
}

// ---------------------------------------------------------------------------
// Snapshots (text) of the main views at 100×30
// ---------------------------------------------------------------------------

fn snap(r: &ConsensusReport, tab: ConsensusTab, blind: Option<&BlindState>) -> String {
    let lb = leaderboard(
        &[
            vote(
                &["openai/gpt-4o", "anthropic/claude", "ollama/llama3"],
                Some("anthropic/claude"),
            ),
            vote(&["openai/gpt-4o", "anthropic/claude"], None),
            vote(&["openai/gpt-4o", "ollama/llama3"], Some("openai/gpt-4o")),
        ],
        None,
    );
    let mut s = tab_state(r, tab);
    let t = view(
        r,
        &mut s,
        blind,
        Some(&lb),
        &ConsensusStyles::default(),
        100,
        30,
    );
    format!("{}", t.backend())
}

#[test]
fn snapshot_matrix() {
    insta::assert_snapshot!(snap(&three_fours(), ConsensusTab::Matrix, None));
}

#[test]
fn snapshot_matrix_with_failures() {
    insta::assert_snapshot!(snap(&failed_and_empty(), ConsensusTab::Matrix, None));
}

#[test]
fn snapshot_clusters_with_judge() {
    insta::assert_snapshot!(snap(&judged(yes_yes_no()), ConsensusTab::Clusters, None));
}

#[test]
fn snapshot_clusters_with_failures() {
    insta::assert_snapshot!(snap(&failed_and_empty(), ConsensusTab::Clusters, None));
}

#[test]
fn snapshot_diff() {
    insta::assert_snapshot!(snap(&code_pair(), ConsensusTab::Diff, None));
}

#[test]
fn snapshot_diff_at_the_change() {
    let r = code_pair();
    let mut s = tab_state(&r, ConsensusTab::Diff);
    assert!(s.select_diff(0, 1));
    let styles = ConsensusStyles::default();
    view(&r, &mut s, None, None, &styles, 100, 30);
    assert!(s.handle_key(KeyCode::Char('n')));
    let t = view(&r, &mut s, None, None, &styles, 100, 30);
    insta::assert_snapshot!(format!("{}", t.backend()));
}

#[test]
fn snapshot_leaderboard() {
    insta::assert_snapshot!(snap(&three_fours(), ConsensusTab::Leaderboard, None));
}

#[test]
fn snapshot_stability() {
    insta::assert_snapshot!(snap(&repeated(), ConsensusTab::Stability, None));
}

#[test]
fn snapshot_blind_matrix() {
    let r = judged(yes_yes_no());
    let b = BlindState::for_report(&r, 7);
    insta::assert_snapshot!(snap(&r, ConsensusTab::Matrix, Some(&b)));
}

#[test]
fn snapshot_blind_clusters() {
    let r = judged(yes_yes_no());
    let b = BlindState::for_report(&r, 7);
    insta::assert_snapshot!(snap(&r, ConsensusTab::Clusters, Some(&b)));
}
