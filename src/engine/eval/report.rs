//! Reports of an eval run: the terminal summary, JSON, Markdown, CSV, JUnit XML, and
//! the diff of two runs. Pure functions of the finished cases.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::run::CaseOutcome;

/// Pass rate, cost and latency of one target over the finished cases.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TargetSummary {
    /// The target's label.
    pub target: String,
    /// Cases run.
    pub cases: usize,
    /// Cases passed.
    pub passed: usize,
    /// passed / cases.
    pub pass_rate: f64,
    /// Known cost of its requests (judges not included).
    pub cost_usd: f64,
    /// Mean latency.
    pub mean_latency_ms: f64,
    /// 95th percentile latency.
    pub p95_latency_ms: f64,
    /// Requests that failed.
    pub errors: usize,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Cases in the suite.
    pub total: usize,
    /// Cases finished.
    pub finished: usize,
    /// Cases passed (every target).
    pub passed: usize,
    /// Known cost, judges included.
    pub cost_usd: f64,
    /// Whether some cost is unknown.
    pub cost_incomplete: bool,
    /// Mean agreement over the cases where two targets answered.
    pub mean_agreement: Option<f64>,
    /// Per target.
    pub targets: Vec<TargetSummary>,
}

/// Summarise finished cases (in any order) of a suite of `total` cases.
pub fn summarize(cases: &[CaseOutcome], total: usize) -> Summary {
    let mut targets: Vec<TargetSummary> = Vec::new();
    let mut lat: Vec<Vec<f64>> = Vec::new();
    for c in cases {
        for cell in &c.cells {
            let i = match targets.iter().position(|t| t.target == cell.target) {
                Some(i) => i,
                None => {
                    targets.push(TargetSummary {
                        target: cell.target.clone(),
                        cases: 0,
                        passed: 0,
                        pass_rate: 0.0,
                        cost_usd: 0.0,
                        mean_latency_ms: 0.0,
                        p95_latency_ms: 0.0,
                        errors: 0,
                    });
                    lat.push(Vec::new());
                    targets.len() - 1
                }
            };
            let t = &mut targets[i];
            t.cases += 1;
            t.passed += usize::from(cell.pass);
            t.cost_usd += cell.cost_usd_known();
            t.errors += cell.runs.iter().filter(|r| r.error.is_some()).count();
            lat[i].extend(cell.runs.iter().map(|r| r.latency_ms));
        }
    }
    for (t, l) in targets.iter_mut().zip(&mut lat) {
        t.pass_rate = if t.cases == 0 {
            0.0
        } else {
            t.passed as f64 / t.cases as f64
        };
        if !l.is_empty() {
            l.sort_by(|a, b| a.total_cmp(b));
            t.mean_latency_ms = l.iter().sum::<f64>() / l.len() as f64;
            let k = ((l.len() as f64 * 0.95).ceil() as usize).clamp(1, l.len()) - 1;
            t.p95_latency_ms = l[k];
        }
    }
    let agreements: Vec<f64> = cases.iter().filter_map(|c| c.agreement).collect();
    Summary {
        total,
        finished: cases.len(),
        passed: cases.iter().filter(|c| c.pass).count(),
        cost_usd: cases.iter().map(|c| c.cost_usd_known).sum(),
        cost_incomplete: cases.iter().any(|c| c.cost_usd.is_none()),
        mean_agreement: (!agreements.is_empty())
            .then(|| agreements.iter().sum::<f64>() / agreements.len() as f64),
        targets,
    }
}

fn usd(s: &Summary) -> String {
    let mark = if s.cost_incomplete { " + unknown" } else { "" };
    format!("${:.6}{mark}", s.cost_usd)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// The terminal summary: failures first, then a table per target.
pub fn to_text(eval_id: &str, cases: &[CaseOutcome], total: usize) -> String {
    let s = summarize(cases, total);
    let mut out = String::new();
    for c in cases.iter().filter(|c| !c.pass) {
        for cell in c.cells.iter().filter(|x| !x.pass) {
            let _ = writeln!(out, "FAIL {} · {}", c.key, cell.target);
            for f in cell.failures(c) {
                let _ = writeln!(out, "     {f}");
            }
        }
    }
    if !out.is_empty() {
        out.push('\n');
    }
    let w = s
        .targets
        .iter()
        .map(|t| t.target.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    let _ = writeln!(
        out,
        "{:<w$}  {:>9}  {:>7}  {:>12}  {:>10}  {:>10}",
        "target", "passed", "rate", "cost", "mean ms", "p95 ms"
    );
    for t in &s.targets {
        let _ = writeln!(
            out,
            "{:<w$}  {:>9}  {:>7}  {:>12}  {:>10.0}  {:>10.0}",
            t.target,
            format!("{}/{}", t.passed, t.cases),
            pct(t.pass_rate),
            format!("${:.6}", t.cost_usd),
            t.mean_latency_ms,
            t.p95_latency_ms
        );
    }
    let agreement = s
        .mean_agreement
        .map(pct)
        .unwrap_or_else(|| "n/a".to_string());
    let _ = writeln!(
        out,
        "\n{eval_id}: {}/{} cases passed ({} finished of {}) · cost {} · mean agreement {agreement}",
        s.passed,
        s.finished,
        s.finished,
        s.total,
        usd(&s)
    );
    out
}

/// The `--json` object.
pub fn to_json(eval_id: &str, suite: &str, cases: &[CaseOutcome], total: usize) -> Value {
    let s = summarize(cases, total);
    json!({
        "eval_run_id": eval_id,
        "suite": suite,
        "summary": s,
        "cases": cases,
    })
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// Markdown: the per-target table, then one row per failed case × target.
pub fn to_markdown(eval_id: &str, suite: &str, cases: &[CaseOutcome], total: usize) -> String {
    let s = summarize(cases, total);
    let mut out = format!("# quorum eval: {}\n\n", md_cell(suite));
    let _ = writeln!(
        out,
        "Run `{eval_id}`: **{}/{} cases passed** ({} of {} finished), cost {}, mean agreement {}.\n",
        s.passed,
        s.finished,
        s.finished,
        s.total,
        usd(&s),
        s.mean_agreement
            .map(pct)
            .unwrap_or_else(|| "n/a".to_string())
    );
    out.push_str("| target | passed | rate | cost | mean latency | p95 latency | errors |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for t in &s.targets {
        let _ = writeln!(
            out,
            "| {} | {}/{} | {} | ${:.6} | {:.0} ms | {:.0} ms | {} |",
            md_cell(&t.target),
            t.passed,
            t.cases,
            pct(t.pass_rate),
            t.cost_usd,
            t.mean_latency_ms,
            t.p95_latency_ms,
            t.errors
        );
    }
    let failed: Vec<_> = cases
        .iter()
        .flat_map(|c| c.cells.iter().filter(|x| !x.pass).map(move |x| (c, x)))
        .collect();
    if !failed.is_empty() {
        out.push_str("\n## Failures\n\n| case | target | why |\n|---|---|---|\n");
        for (c, cell) in failed {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                md_cell(&c.key),
                md_cell(&cell.target),
                md_cell(&cell.failures(c).join("; "))
            );
        }
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// CSV: one row per case × target × run.
pub fn to_csv(cases: &[CaseOutcome]) -> String {
    let mut out =
        String::from("case,target,run,pass,latency_ms,cost_usd,cached,error,failures,answer\n");
    for c in cases {
        for cell in &c.cells {
            let failures = cell.failures(c).join("; ");
            for r in &cell.runs {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{:.1},{},{},{},{},{}",
                    csv_field(&c.key),
                    csv_field(&cell.target),
                    r.run,
                    cell.pass,
                    r.latency_ms,
                    r.cost_usd.map(|x| format!("{x:.8}")).unwrap_or_default(),
                    r.cached,
                    csv_field(r.error.as_deref().unwrap_or("")),
                    csv_field(&failures),
                    csv_field(&r.text)
                );
            }
        }
    }
    out
}

/// Text made safe for XML 1.0: the five entities escaped, characters XML cannot hold
/// dropped.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(ch),
            c if (c as u32) < 0x20 => {}
            '\u{FFFE}' | '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// JUnit XML: one `<testsuite>` per target, one `<testcase>` per case × target.
pub fn to_junit(suite: &str, cases: &[CaseOutcome]) -> String {
    let s = summarize(cases, cases.len());
    let tests: usize = s.targets.iter().map(|t| t.cases).sum();
    let failures: usize = s.targets.iter().map(|t| t.cases - t.passed).sum();
    let total_secs: f64 = cases
        .iter()
        .flat_map(|c| &c.cells)
        .map(|x| x.latency_ms() / 1000.0)
        .sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" time=\"{total_secs:.3}\">",
        xml_escape(&format!("quorum eval {suite}"))
    );
    for t in &s.targets {
        let time: f64 = cases
            .iter()
            .flat_map(|c| &c.cells)
            .filter(|x| x.target == t.target)
            .map(|x| x.latency_ms() / 1000.0)
            .sum();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" time=\"{time:.3}\">",
            xml_escape(&t.target),
            t.cases,
            t.cases - t.passed
        );
        for c in cases {
            for cell in c.cells.iter().filter(|x| x.target == t.target) {
                let _ = write!(
                    out,
                    "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
                    xml_escape(&t.target),
                    xml_escape(&c.key),
                    cell.latency_ms() / 1000.0
                );
                if cell.pass {
                    out.push_str("/>\n");
                    continue;
                }
                let why = cell.failures(c);
                let answer = cell.runs.first().map(|r| r.text.as_str()).unwrap_or("");
                let _ = writeln!(
                    out,
                    ">\n      <failure message=\"{}\" type=\"assertion\">{}</failure>\n      <system-out>{}</system-out>\n    </testcase>",
                    xml_escape(why.first().map(String::as_str).unwrap_or("failed")),
                    xml_escape(&format!("prompt: {}\n{}", c.prompt, why.join("\n"))),
                    xml_escape(answer)
                );
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// A case × target whose verdict or answer differs between two runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Change {
    /// Case key.
    pub case: String,
    /// Target label.
    pub target: String,
    /// `regression` (pass → fail), `fixed` (fail → pass), `answer` (same verdict,
    /// another answer), `added` or `removed`.
    pub kind: &'static str,
    /// Verdict in run A (None: not there).
    pub before: Option<bool>,
    /// Verdict in run B.
    pub after: Option<bool>,
    /// First answer in A.
    pub answer_before: Option<String>,
    /// First answer in B.
    pub answer_after: Option<String>,
}

/// What changed from run `a` to run `b`, case by case and target by target.
pub fn diff(a: &[CaseOutcome], b: &[CaseOutcome]) -> Vec<Change> {
    use std::collections::BTreeMap;
    type Cells = BTreeMap<(usize, String, String), (bool, String)>;
    let index = |cases: &[CaseOutcome]| -> Cells {
        let mut m = BTreeMap::new();
        for c in cases {
            for cell in &c.cells {
                let ans = cell
                    .runs
                    .first()
                    .map(|r| r.text.trim().to_string())
                    .unwrap_or_default();
                m.insert(
                    (c.index, c.key.clone(), cell.target.clone()),
                    (cell.pass, ans),
                );
            }
        }
        m
    };
    let (ia, ib) = (index(a), index(b));
    // Match by case key and target (indices may shift when a suite is edited).
    let by_key = |m: &Cells| -> BTreeMap<(String, String), (usize, bool, String)> {
        m.iter()
            .map(|((i, k, t), (p, s))| ((k.clone(), t.clone()), (*i, *p, s.clone())))
            .collect()
    };
    let (ka, kb) = (by_key(&ia), by_key(&ib));
    let mut keys: Vec<(usize, String, String)> = ka
        .iter()
        .map(|((k, t), (i, _, _))| (*i, k.clone(), t.clone()))
        .chain(
            kb.iter()
                .filter(|(k, _)| !ka.contains_key(*k))
                .map(|((k, t), (i, _, _))| (*i, k.clone(), t.clone())),
        )
        .collect();
    keys.sort();
    let mut out = Vec::new();
    for (_, case, target) in keys {
        let k = (case.clone(), target.clone());
        let (x, y) = (ka.get(&k), kb.get(&k));
        let kind = match (x, y) {
            (Some((_, true, _)), Some((_, false, _))) => "regression",
            (Some((_, false, _)), Some((_, true, _))) => "fixed",
            (Some((_, _, s)), Some((_, _, t))) if s != t => "answer",
            (Some(_), Some(_)) => continue,
            (None, Some(_)) => "added",
            (Some(_), None) => "removed",
            (None, None) => continue,
        };
        out.push(Change {
            case,
            target,
            kind,
            before: x.map(|v| v.1),
            after: y.map(|v| v.1),
            answer_before: x.map(|v| v.2.clone()),
            answer_after: y.map(|v| v.2.clone()),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::check::CheckResult;
    use super::super::run::{Cell, RunAnswer};
    use super::*;

    fn case(key: &str, index: usize, cells: &[(&str, bool, &str)]) -> CaseOutcome {
        CaseOutcome {
            key: key.into(),
            index,
            prompt: "p <&>".into(),
            pass: cells.iter().all(|c| c.1),
            agreement: Some(1.0),
            checks: vec![],
            cells: cells
                .iter()
                .map(|(t, pass, text)| Cell {
                    target: t.to_string(),
                    pass: *pass,
                    runs: vec![RunAnswer {
                        run: 1,
                        text: text.to_string(),
                        error: None,
                        latency_ms: 100.0,
                        cost_usd: Some(0.001),
                        cached: false,
                        checks: vec![CheckResult {
                            assertion: "contains \"4\"".into(),
                            pass: *pass,
                            detail: if *pass {
                                String::new()
                            } else {
                                "got \"5\"".into()
                            },
                        }],
                    }],
                    checks: vec![],
                })
                .collect(),
            run_ids: vec![],
            cost_usd: Some(0.002),
            cost_usd_known: 0.002,
        }
    }

    #[test]
    fn summary_and_formats() {
        let cases = vec![
            case(
                "a",
                0,
                &[("x/1", true, "4"), ("y/2", false, "5 \u{1} \"q\"")],
            ),
            case("b", 1, &[("x/1", true, "4"), ("y/2", true, "4")]),
        ];
        let s = summarize(&cases, 3);
        assert_eq!((s.passed, s.finished, s.total), (1, 2, 3));
        assert_eq!(s.targets[1].passed, 1);
        assert!((s.targets[0].pass_rate - 1.0).abs() < 1e-9);
        let j = to_junit("s.toml", &cases);
        assert!(j.contains("tests=\"4\" failures=\"1\""), "{j}");
        assert!(!j.contains('\u{1}'));
        assert!(j.contains("&quot;q&quot;") && j.contains("p &lt;&amp;&gt;"));
        let csv = to_csv(&cases);
        assert_eq!(csv.lines().count(), 5);
        assert!(to_markdown("e", "s", &cases, 2).contains("## Failures"));
        assert!(to_text("e", &cases, 2).contains("FAIL a · y/2"));
    }

    #[test]
    fn diff_names_regressions_fixes_and_new_answers() {
        let a = vec![
            case("a", 0, &[("x", true, "4"), ("y", false, "5")]),
            case("b", 1, &[("x", true, "4")]),
        ];
        let b = vec![
            case("a", 0, &[("x", false, "3"), ("y", true, "4")]),
            case("b", 1, &[("x", true, "four")]),
        ];
        let d = diff(&a, &b);
        let kinds: Vec<_> = d
            .iter()
            .map(|c| (c.case.as_str(), c.target.as_str(), c.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("a", "x", "regression"),
                ("a", "y", "fixed"),
                ("b", "x", "answer")
            ]
        );
        assert!(diff(&a, &a).is_empty());
    }
}
