//! Consensus over fixed answer sets, the word diff, repeat-N stability, the
//! judge's verdict parser, and the blind-vote leaderboard (Elo math included).

use llm_quorum::engine::consensus::{
    analyze, analyze_with, elo_expected, leaderboard, similarity, stability, word_diff,
    AnswerInput, AnswerStatus, ConsensusOptions, DiffOp, JsonlVoteStore, QuestionKind, Vote,
    VoteStore, DEFAULT_THRESHOLD, ELO_START,
};
use llm_quorum::engine::judge::parse_verdict;
use llm_quorum::engine::{Completion, EngineError, FinishReason};

fn ans(label: &str, text: &str) -> AnswerInput {
    AnswerInput::new(label, text)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

// ---------------------------------------------------------------------------
// Fixed answer sets
// ---------------------------------------------------------------------------

#[test]
fn the_same_number_phrased_three_ways_agrees() {
    // Setup
    let answers = [
        ans("openai/gpt-4o-mini", "4"),
        ans("anthropic/claude", "The answer is **four**."),
        ans("gemini/flash", "2 + 2 = 4.0"),
    ];
    // Exec
    let c = analyze("What is 2+2? Answer with one number.", &answers);
    // Check
    assert_eq!(c.kind, QuestionKind::Number);
    assert_eq!(c.answered, 3);
    assert_eq!(c.clusters.len(), 1, "{:#?}", c.clusters);
    assert_eq!(c.majority, Some(0));
    assert_eq!(c.majority_answer.as_deref(), Some("4"));
    assert_eq!(c.agreement, Some(1.0));
    assert!(c.dissenters.is_empty());
    for a in &c.answers {
        assert_eq!(a.final_answer.as_ref().map(|f| f.value.as_str()), Some("4"));
    }
    // The texts themselves are far apart: only the extracted answer agrees.
    assert!(c.mean_similarity.unwrap() < 0.5);
    assert_eq!(
        c.headline(),
        "3 of 3 finished agree on \"4\" · agreement 1.00"
    );
}

#[test]
fn a_dissenting_number_is_named() {
    let c = analyze(
        "How many r's are in strawberry?",
        &[
            ans("a", "There are 3 r's in strawberry."),
            ans("b", "**3**"),
            ans("c", "Strawberry has two r's."),
        ],
    );
    assert_eq!(c.majority_answer.as_deref(), Some("3"));
    assert_eq!(c.dissenters, vec!["c"]);
    assert!(close(c.agreement.unwrap(), 2.0 / 3.0));
    assert_eq!(c.answers[2].final_answer.as_ref().unwrap().value, "2");
    assert_eq!(c.answers[2].cluster, Some(1));
}

#[test]
fn two_answers_disagree_on_yes_no() {
    let prompt =
        "def f(q): db.execute(\"SELECT * FROM t WHERE id=\" + q)\n\nIs this code vulnerable?";
    let c = analyze(
        prompt,
        &[
            ans(
                "a",
                "Yes. The query is built by string concatenation, so `q` can inject SQL.",
            ),
            ans(
                "b",
                "No, this is fine: the database driver escapes the parameter for you.",
            ),
        ],
    );
    assert_eq!(c.kind, QuestionKind::YesNo);
    assert_eq!(c.clusters.len(), 2);
    assert_eq!(c.majority, None, "one against one is no majority");
    assert_eq!(c.majority_answer, None);
    assert_eq!(c.agreement, Some(0.0), "nobody agrees with anybody");
    assert!(c.dissenters.is_empty());
    let finals: Vec<_> = c
        .answers
        .iter()
        .map(|a| a.final_answer.as_ref().unwrap().value.clone())
        .collect();
    assert_eq!(finals, vec!["yes", "no"]);
    assert!(c.headline().starts_with("no majority among 2 answers"));
}

#[test]
fn one_empty_and_one_failed_answer_are_reported_not_counted() {
    let failed = Completion {
        provider: "openai".into(),
        model: "gpt-4o".into(),
        // Partial text streamed before the failure must not vote.
        text: "Yes".into(),
        finish_reason: FinishReason::Error,
        error: Some(EngineError::Cancelled),
        ..Default::default()
    };
    let empty = Completion {
        provider: "gemini".into(),
        model: "flash".into(),
        text: "  \n** **\n".into(),
        ..Default::default()
    };
    let ok = Completion {
        provider: "anthropic".into(),
        model: "claude".into(),
        text: "No.".into(),
        ..Default::default()
    };
    let answers: Vec<AnswerInput> = [&failed, &empty, &ok].into_iter().map(Into::into).collect();
    let c = analyze("Is the sky green? Answer yes or no.", &answers);
    assert_eq!(c.failed, vec!["openai/gpt-4o"]);
    assert_eq!(c.empty, vec!["gemini/flash"]);
    assert_eq!(c.answered, 1);
    assert_eq!(c.answers[0].status, AnswerStatus::Failed);
    assert_eq!(c.answers[0].final_answer, None);
    assert_eq!(c.answers[0].cluster, None);
    assert!(c.answers[0].error.is_some());
    assert_eq!(c.answers[1].status, AnswerStatus::Empty);
    assert_eq!(c.answers[1].cluster, None);
    assert!(c.pairs.is_empty(), "no pair without two answers");
    assert_eq!(c.agreement, None, "one answer agrees with nobody");
    assert_eq!(c.majority, None);
    assert!(c.dissenters.is_empty());
    let m = c.matrix();
    assert_eq!(m[2][2], Some(1.0));
    assert_eq!(m[0][2], None);
    assert_eq!(m[1][1], None);
    assert_eq!(c.headline(), "1 of 3 answered · 1 failed · 1 empty");
}

#[test]
fn all_failed_gives_no_agreement() {
    let c = analyze(
        "What is 2+2?",
        &[
            AnswerInput::failed("a", "401"),
            AnswerInput::failed("b", "timeout"),
        ],
    );
    assert_eq!(c.answered, 0);
    assert_eq!(c.agreement, None);
    assert!(c.clusters.is_empty());
    assert_eq!(c.failed.len(), 2);
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

#[test]
fn long_code_answers_that_differ_in_one_line() {
    let a = code("    if value > limit:\n");
    let b = code("    if value >= limit:\n");
    let c = analyze(
        "Write the function.",
        &[
            ans("a", &a),
            ans("b", &b),
            ans("c", "I cannot help with that request."),
        ],
    );
    assert_eq!(c.kind, QuestionKind::Open);
    let s = c.pair(0, 1).unwrap();
    assert!(s.token_f1 > 0.95 && s.sequence_ratio > 0.95, "{s:?}");
    assert!(c.pair(0, 2).unwrap().score < DEFAULT_THRESHOLD);
    assert_eq!(c.clusters[0].labels, vec!["a", "b"]);
    assert_eq!(c.majority, Some(0));
    assert_eq!(c.dissenters, vec!["c"]);
    assert_eq!(c.majority_answer.as_deref(), Some("Here is the function:"));
    // Open question: agreement is the mean similarity of the three pairs.
    let mean = c.pairs.iter().map(|p| p.similarity.score).sum::<f64>() / 3.0;
    assert!(close(c.agreement.unwrap(), mean));

    // The word diff isolates the one change and rebuilds both texts.
    let spans = word_diff(&a, &b);
    let changed: Vec<_> = spans.iter().filter(|s| s.op != DiffOp::Equal).collect();
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert_eq!(
        (changed[0].op, changed[0].text.as_str()),
        (DiffOp::Delete, ">")
    );
    assert_eq!(
        (changed[1].op, changed[1].text.as_str()),
        (DiffOp::Insert, ">=")
    );
    let old: String = spans
        .iter()
        .filter(|s| s.op != DiffOp::Insert)
        .map(|s| s.text.as_str())
        .collect();
    let new: String = spans
        .iter()
        .filter(|s| s.op != DiffOp::Delete)
        .map(|s| s.text.as_str())
        .collect();
    assert_eq!(old, a);
    assert_eq!(new, b);
}

#[test]
fn word_diff_spans_alternate() {
    let spans = word_diff("the quick brown fox", "the slow brown dog");
    for w in spans.windows(2) {
        assert_ne!(w[0].op, w[1].op, "adjacent spans are merged: {spans:?}");
    }
    let json = serde_json::to_value(&spans).unwrap();
    assert_eq!(json[0], serde_json::json!({"op": "equal", "text": "the "}));
}

#[test]
fn choice_letters_agree_however_written() {
    let prompt = "Which is a prime?\nA) 4\nB) 6\nC) 7\nD) 9";
    let c = analyze(
        prompt,
        &[
            ans("a", "C"),
            ans(
                "b",
                "The answer is (c), since 7 has no divisors but 1 and itself.",
            ),
            ans("c", "**C) 7**"),
            ans("d", "A"),
        ],
    );
    assert_eq!(c.kind, QuestionKind::Choice);
    assert_eq!(c.majority_answer.as_deref(), Some("C"));
    assert_eq!(c.dissenters, vec!["d"]);
    assert!(close(c.agreement.unwrap(), 0.75));
}

const TCP_A: &str = "TCP opens a connection with a three-way handshake: the client sends SYN, \
                     the server answers SYN-ACK, and the client replies with ACK.";
const TCP_B: &str = "The client sends a SYN, the server replies with SYN-ACK, and the client \
                     sends an ACK: this three-way handshake opens a TCP connection.";
const UDP: &str = "UDP has no handshake at all; it simply sends datagrams and hopes \
                   they arrive, which is why it suits games and streaming.";

#[test]
fn short_one_line_answers_are_final_answers() {
    let c = analyze(
        "Name a primary colour.",
        &[ans("a", "Red."), ans("b", "red"), ans("c", "Blue")],
    );
    assert_eq!(c.kind, QuestionKind::FinalLine);
    assert_eq!(c.majority_answer.as_deref(), Some("Red"));
    assert_eq!(c.dissenters, vec!["c"]);
}

#[test]
fn open_answers_cluster_by_text() {
    let c = analyze(
        "Explain the TCP handshake.",
        &[ans("a", TCP_A), ans("b", TCP_B), ans("c", UDP)],
    );
    assert_eq!(c.kind, QuestionKind::Open);
    assert_eq!(c.clusters.len(), 2);
    assert_eq!(c.clusters[0].labels, vec!["a", "b"]);
    assert_eq!(c.dissenters, vec!["c"]);
    let p = c.pair(0, 1).unwrap();
    assert!(close(p.score, (p.token_f1 + p.sequence_ratio) / 2.0));
    // A stricter threshold splits the paraphrases too.
    let answers: Vec<AnswerInput> = c
        .answers
        .iter()
        .map(|r| {
            ans(
                &r.label,
                if r.index == 0 {
                    TCP_A
                } else if r.index == 1 {
                    TCP_B
                } else {
                    UDP
                },
            )
        })
        .collect();
    let strict = analyze_with(
        "Explain the TCP handshake.",
        &answers,
        ConsensusOptions {
            kind: None,
            threshold: 0.9,
        },
    );
    assert_eq!(strict.clusters.len(), 3);
    assert_eq!(strict.majority, None);
    assert!(strict.dissenters.is_empty());
}

#[test]
fn forced_kind_overrides_detection() {
    let c = analyze_with(
        "Tell me about it.",
        &[ans("a", "So, yes."), ans("b", "Yes: it holds.")],
        ConsensusOptions {
            kind: Some(QuestionKind::YesNo),
            ..Default::default()
        },
    );
    assert_eq!(c.kind, QuestionKind::YesNo);
    assert_eq!(c.majority_answer.as_deref(), Some("yes"));
}

#[test]
fn consensus_serialises_for_json_output() {
    let c = analyze("What is 2+2?", &[ans("a", "4"), ans("b", "5")]);
    let v = serde_json::to_value(&c).unwrap();
    for key in [
        "kind",
        "threshold",
        "answered",
        "answers",
        "pairs",
        "clusters",
        "majority",
        "majority_answer",
        "agreement",
        "mean_similarity",
        "dissenters",
        "failed",
        "empty",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["kind"], "number");
    assert!(v["pairs"][0]["token_f1"].is_number());
    assert!(v["pairs"][0]["sequence_ratio"].is_number());
    assert_eq!(v["answers"][0]["status"], "answered");
    assert_eq!(v["answers"][1]["final_answer"]["value"], "5");
    let back: llm_quorum::engine::consensus::Consensus = serde_json::from_value(v).unwrap();
    assert_eq!(back, c);
}

#[test]
fn similarity_is_symmetric_and_bounded() {
    let a = "Paris is the capital of France.";
    let b = "The capital of France is Paris, a city of two million.";
    let ab = similarity(a, b);
    let ba = similarity(b, a);
    assert!(close(ab.token_f1, ba.token_f1));
    assert!(close(ab.sequence_ratio, ba.sequence_ratio));
    for x in [ab.token_f1, ab.sequence_ratio, ab.score] {
        assert!((0.0..=1.0).contains(&x));
    }
    assert_eq!(similarity("Hello, World!", "hello world").score, 1.0);
}

// ---------------------------------------------------------------------------
// Repeat-N
// ---------------------------------------------------------------------------

#[test]
fn repeat_n_counts_distinct_answers_and_self_agreement() {
    let runs = [
        ans("m", "4"),
        ans("m", "The answer is 4."),
        ans("m", "5"),
        AnswerInput::failed("m", "timeout"),
    ];
    let s = stability("What is 2+2?", "mock/alpha", &runs);
    assert_eq!(s.runs, 4);
    assert_eq!(s.answered, 3);
    assert_eq!(s.failed, 1);
    assert_eq!(s.distinct, 2);
    assert!(close(s.self_agreement.unwrap(), 2.0 / 3.0));
    assert_eq!(s.majority_answer.as_deref(), Some("4"));

    let steady = stability("What is 2+2?", "m", &[ans("m", "4"), ans("m", "four")]);
    assert_eq!((steady.distinct, steady.self_agreement), (1, Some(1.0)));
    let once = stability("What is 2+2?", "m", &[ans("m", "4")]);
    assert_eq!((once.distinct, once.self_agreement), (1, None));
    assert_eq!(once.majority_answer.as_deref(), Some("4"));
}

// ---------------------------------------------------------------------------
// Judge verdict parser
// ---------------------------------------------------------------------------

fn letters(n: usize) -> Vec<String> {
    (0..n).map(llm_quorum::engine::judge::letter).collect()
}

#[test]
fn verdict_parser_reads_plain_json() {
    let v = parse_verdict(
        r#"{"agreement": 0.9, "best": "B", "disagreements": [], "summary": "Both say 4."}"#,
        &letters(2),
    )
    .unwrap();
    assert_eq!(v.agreement, Some(0.9));
    assert_eq!(v.best.as_deref(), Some("B"));
    assert!(v.disagreements.is_empty());
    assert_eq!(v.summary, "Both say 4.");
}

#[test]
fn verdict_parser_reads_fenced_json_after_prose() {
    let text = "Sure! Here is my assessment of the three answers.\n\n```json\n{\n  \"agreement\": \"67%\",\n  \"best\": \"Answer C\",\n  \"disagreements\": [\"A says 5\", {\"point\": \"B omits units\"}],\n  \"summary\": \"Two of three agree on 4.\",\n}\n```\nLet me know if you need more.";
    let v = parse_verdict(text, &letters(3)).unwrap();
    assert_eq!(v.agreement, Some(0.67));
    assert_eq!(v.best.as_deref(), Some("C"));
    assert_eq!(v.disagreements, vec!["A says 5", "B omits units"]);
    assert_eq!(v.summary, "Two of three agree on 4.");
}

#[test]
fn verdict_parser_finds_the_last_object_in_prose() {
    let text = "The format is {agreement, best, ...}. My verdict: {\"agreement\": 80, \
                \"best\": \"(a)\", \"disagreements\": \"only the wording {differs}\", \
                \"reasoning\": \"Same facts.\"} Thanks.";
    let v = parse_verdict(text, &letters(2)).unwrap();
    assert_eq!(v.agreement, Some(0.8));
    assert_eq!(v.best.as_deref(), Some("A"));
    assert_eq!(v.disagreements, vec!["only the wording {differs}"]);
    assert_eq!(v.summary, "Same facts.");
}

#[test]
fn verdict_parser_handles_nulls_wrappers_and_bad_letters() {
    let v = parse_verdict(
        r#"{"verdict": {"agreement": 0.2, "best": null, "disagreements": ["X vs Y"], "summary": "They differ."}}"#,
        &letters(2),
    )
    .unwrap();
    assert_eq!(v.best, None);
    assert_eq!(v.agreement, Some(0.2));

    // A letter that was never shown is not trusted; a 1-based number is read.
    let v = parse_verdict(r#"{"agreement": 1, "best": "F"}"#, &letters(2)).unwrap();
    assert_eq!(v.best, None);
    let v = parse_verdict(r#"{"agreement": 1, "best": 2}"#, &letters(2)).unwrap();
    assert_eq!(v.best.as_deref(), Some("B"));
    // Curly quotes from a chat UI.
    let v = parse_verdict("{\u{201c}best\u{201d}: \u{201c}A\u{201d}}", &letters(2)).unwrap();
    assert_eq!(v.best.as_deref(), Some("A"));
    // Out-of-range agreement is dropped rather than clamped into a lie.
    let v = parse_verdict(r#"{"agreement": 250, "summary": "?"}"#, &letters(2)).unwrap();
    assert_eq!(v.agreement, None);
}

#[test]
fn verdict_parser_rejects_replies_without_a_verdict() {
    for text in [
        "I think answer B is best.",
        "",
        "```json\n{\"foo\": 1}\n```",
        "{not json at all}",
    ] {
        let e = parse_verdict(text, &letters(2)).unwrap_err();
        assert!(e.contains("no JSON verdict"), "{e}");
    }
}

// ---------------------------------------------------------------------------
// Blind votes and the leaderboard
// ---------------------------------------------------------------------------

fn vote(targets: &[&str], winner: Option<&str>, tag: Option<&str>) -> Vote {
    Vote {
        targets: targets.iter().map(|s| s.to_string()).collect(),
        winner: winner.map(str::to_string),
        tag: tag.map(str::to_string),
        run_id: None,
        created_at: None,
    }
}

#[test]
fn elo_math() {
    assert!(close(elo_expected(1000.0, 1000.0), 0.5));
    assert!(close(elo_expected(1400.0, 1000.0), 10.0 / 11.0));

    // A beats B from the start: +16 / -16.
    let lb = leaderboard(&[vote(&["a", "b"], Some("a"), None)], None);
    assert_eq!(lb.rows[0].target, "a");
    assert!(close(lb.rows[0].elo, 1016.0));
    assert!(close(lb.rows[1].elo, 984.0));

    // Then B beats A: the underdog gains more (32 · (1 - 0.45408)).
    let lb = leaderboard(
        &[
            vote(&["a", "b"], Some("a"), None),
            vote(&["b", "a"], Some("b"), None),
        ],
        None,
    );
    assert_eq!(lb.rows[0].target, "b");
    assert!((lb.rows[0].elo - 1_001.469_501_5).abs() < 1e-6);
    assert!((lb.rows[1].elo - 998.530_498_5).abs() < 1e-6);

    // A tie between unequal ratings moves half a game towards the weaker.
    let lb = leaderboard(
        &[
            vote(&["a", "b"], Some("a"), None),
            vote(&["a", "b"], None, None),
        ],
        None,
    );
    let a = lb.rows.iter().find(|r| r.target == "a").unwrap();
    assert!((a.elo - (1016.0 - 1.469_501_5)).abs() < 1e-6);

    // Ratings are zero-sum.
    let total: f64 = lb.rows.iter().map(|r| r.elo).sum();
    assert!(close(total, 2.0 * ELO_START));
}

#[test]
fn a_three_way_vote_is_two_games_for_the_winner() {
    let lb = leaderboard(&[vote(&["a", "b", "c"], Some("b"), None)], None);
    let elo = |t: &str| lb.rows.iter().find(|r| r.target == t).unwrap().elo;
    assert!(close(elo("b"), 1032.0));
    assert!(close(elo("a"), 984.0));
    assert!(close(elo("c"), 984.0));
    let tie = leaderboard(&[vote(&["a", "b", "c"], None, None)], None);
    assert!(tie
        .rows
        .iter()
        .all(|r| close(r.elo, ELO_START) && r.ties == 1));
    assert!(tie.rows.iter().all(|r| close(r.win_rate, 0.5)));
}

#[test]
fn blind_votes_change_the_leaderboard_as_expected() {
    // Setup: a store in a temporary data dir.
    let dir = tempfile::tempdir().unwrap();
    let store = JsonlVoteStore::new(dir.path().join("votes.jsonl"));
    assert!(store.votes().unwrap().is_empty(), "no file yet is no votes");
    let (x, y) = ("openai/gpt-4o-mini", "anthropic/claude-sonnet-4-5");

    // Exec: x wins twice.
    store
        .record_vote(&vote(&[x, y], Some(x), Some("code")))
        .unwrap();
    store
        .record_vote(&vote(&[x, y], Some(x), Some("code")))
        .unwrap();
    let lb = leaderboard(&store.votes().unwrap(), None);
    assert_eq!(lb.rows[0].target, x);
    assert_eq!((lb.rows[0].wins, lb.rows[0].losses), (2, 0));
    assert!(close(lb.rows[0].win_rate, 1.0));

    // y wins three times on another tag and overtakes overall.
    for _ in 0..3 {
        store
            .record_vote(&vote(&[x, y], Some(y), Some("prose")))
            .unwrap();
    }
    store.record_vote(&vote(&[x, y], None, None)).unwrap();
    let votes = store.votes().unwrap();
    assert_eq!(votes.len(), 6);
    let lb = leaderboard(&votes, None);
    assert_eq!(lb.rows[0].target, y);
    let ry = &lb.rows[0];
    assert_eq!((ry.votes, ry.wins, ry.ties, ry.losses), (6, 3, 1, 2));
    assert!(close(ry.win_rate, 3.5 / 6.0));

    // Per tag, x still leads on code and y on prose.
    let code = leaderboard(&votes, Some("code"));
    assert_eq!(code.votes, 2);
    assert_eq!(code.rows[0].target, x);
    let prose = leaderboard(&votes, Some("prose"));
    assert_eq!(prose.rows[0].target, y);
    assert!(leaderboard(&votes, Some("nope")).rows.is_empty());
}

#[test]
fn a_vote_cast_now_is_stamped_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = JsonlVoteStore::new(dir.path().join("votes.jsonl"));
    let v = Vote::now(
        vec!["a".into(), "b".into()],
        None,
        Some("t".into()),
        Some("run-1".into()),
    );
    let stamp = v.created_at.clone().unwrap();
    assert!(stamp.len() >= 20 && stamp.contains('T'), "{stamp}");
    store.record_vote(&v).unwrap();
    assert_eq!(store.votes().unwrap(), vec![v]);
    let line = std::fs::read_to_string(store.path()).unwrap();
    assert!(
        line.contains("\"winner\":null"),
        "a tie is stored as null: {line}"
    );
}

#[test]
fn invalid_votes_are_skipped_and_torn_lines_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("votes.jsonl");
    let store = JsonlVoteStore::new(&path);
    store
        .record_vote(&vote(&["a", "b"], Some("a"), None))
        .unwrap();
    // A torn write and a vote for a target that was not shown.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"targets\": [\"a\"\n"))
        .unwrap();
    store
        .record_vote(&vote(&["a", "b"], Some("c"), None))
        .unwrap();
    store.record_vote(&vote(&["a"], Some("a"), None)).unwrap();
    let votes = store.votes().unwrap();
    assert_eq!(votes.len(), 3);
    let lb = leaderboard(&votes, None);
    assert_eq!((lb.votes, lb.skipped), (1, 2));
}

// ---------------------------------------------------------------------------
// The judge through the engine (mock provider, in process)
// ---------------------------------------------------------------------------

use std::sync::{Arc, Mutex};

use llm_quorum::engine::judge::judge;
use llm_quorum::engine::ledger::{LedgerSink, RequestMeta};
use llm_quorum::engine::registry::Registry;
use llm_quorum::engine::{ChatRequest, Engine, EngineConfig, StartOptions};

#[derive(Default)]
struct Rows(Mutex<Vec<(RequestMeta, Completion)>>);

impl LedgerSink for Rows {
    fn record(
        &self,
        meta: &RequestMeta,
        c: &Completion,
    ) -> Result<(), llm_quorum::engine::ledger::LedgerError> {
        self.0.lock().unwrap().push((meta.clone(), c.clone()));
        Ok(())
    }
}

fn mock_engine(rows: Arc<Rows>) -> Engine {
    let cfg = EngineConfig {
        registry: Registry::from_env(&|_| None),
        ..Default::default()
    };
    Engine::new(cfg).unwrap().with_ledger(rows)
}

#[tokio::test]
async fn judge_over_the_mock_provider_goes_in_the_ledger() {
    // Setup: real answers from the mock.
    let rows = Arc::new(Rows::default());
    let engine = mock_engine(rows.clone());
    let prompt = "What is 2+2?";
    let answers = engine
        .run(
            ChatRequest::from_prompt(prompt),
            vec![
                "mock/alpha".into(),
                "mock/contrarian".into(),
                "mock/gamma".into(),
            ],
            Default::default(),
        )
        .collect()
        .await;
    let inputs: Vec<AnswerInput> = answers.iter().map(AnswerInput::from).collect();
    let c = analyze(prompt, &inputs);
    assert_eq!(c.majority_answer.as_deref(), Some("4"));
    assert_eq!(c.dissenters, vec!["mock/contrarian"]);

    // Exec
    let out = judge(
        &engine,
        "mock/beta",
        prompt,
        &inputs,
        StartOptions::default(),
    )
    .await
    .unwrap();

    // Check: the judge's request is a request like any other.
    assert_eq!(out.completion.provider, "mock");
    assert_eq!(out.completion.model, "beta");
    assert!(out.completion.error.is_none());
    assert!(out.completion.usage.output_tokens > 0);
    let rows = rows.0.lock().unwrap();
    assert_eq!(rows.len(), 4, "three answers and the judge");
    let (meta, row) = rows.last().unwrap();
    assert_eq!(meta.target, "mock/beta");
    assert!(meta.prompt.contains("# Answer A\n\n"));
    assert!(meta.prompt.contains("# Answer C\n\n"));
    assert!(
        !meta.prompt.contains("mock/"),
        "names hidden from the judge"
    );
    assert_eq!(row.usage, out.completion.usage);
    // The mocks judge deterministically: 2 of 3 say 4, the first of them is best.
    assert!(out.error.is_none(), "{:?}", out.error);
    let v = out.verdict.as_ref().expect("a verdict");
    assert_eq!(v.agreement, Some(0.67));
    assert_eq!(v.best.as_deref(), Some("A"));
    assert_eq!(v.best_target.as_deref(), Some("mock/alpha"));
    let labels: Vec<&str> = out.key.iter().map(|k| k.label.as_str()).collect();
    assert_eq!(labels, ["mock/alpha", "mock/contrarian", "mock/gamma"]);
}

#[tokio::test]
async fn a_judge_with_fewer_than_two_answers_sends_nothing() {
    let rows = Arc::new(Rows::default());
    let engine = mock_engine(rows.clone());
    let inputs = [
        ans("mock/alpha", "4"),
        AnswerInput::failed("mock/beta", "503"),
    ];
    let e = judge(
        &engine,
        "mock/gamma",
        "What is 2+2?",
        &inputs,
        StartOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(e.contains("at least two answers; 1 answered"), "{e}");
    assert!(rows.0.lock().unwrap().is_empty());
}
