//! A conversation as files: Markdown for people, JSON for tools. Built from
//! state in `update` (pure); written by the loop. Every turn is in it, with
//! "continue with this answer" marked; answers and prompts sit in fenced
//! blocks longer than any fence inside them, so an answer's own `##` or
//! code fences cannot break the document's structure.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::json;

use crate::engine::cost::format_usd;
use crate::engine::Completion;

/// One pane's answer in one turn.
#[derive(Debug, Clone, Serialize)]
pub struct ExportAnswer {
    /// Who is credited: the target, the model a fallback moved it to, or
    /// `Answer C` while blind.
    pub target: String,
    /// The target asked for, when a fallback answered instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asked_for: Option<String>,
    /// State word (done, failed, ...).
    pub state: String,
    /// Answer text.
    pub text: String,
    /// Thinking text.
    pub thinking: String,
    /// The final completion (the `ask --json` object), when finished.
    pub completion: Option<Completion>,
}

/// One prompt and its answers.
#[derive(Debug, Clone, Serialize)]
pub struct ExportTurn {
    /// The prompt.
    pub prompt: String,
    /// Set when this turn continued from one pane's answer (its name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continued_from: Option<String>,
    /// Whether names were hidden (blind, not yet voted) when exported.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub blind: bool,
    /// Every pane's answer.
    pub answers: Vec<ExportAnswer>,
}

/// One ledger row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExportLedgerRow {
    /// Target (or its blind letter).
    pub target: String,
    /// Requests.
    pub requests: u64,
    /// Failed requests (cancelled ones not included).
    pub errors: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cached prompt tokens; null while blind.
    pub cached_input_tokens: Option<u64>,
    /// Reasoning tokens; null while blind.
    pub reasoning_tokens: Option<u64>,
    /// Known cost; null while blind.
    pub cost_usd: Option<f64>,
    /// Requests of unknown cost.
    pub unknown_cost: u64,
    /// ✓, ~ or ? ("" while blind).
    pub cost_mark: String,
}

/// A conversation to write.
#[derive(Debug, Clone, Serialize)]
pub struct ExportDoc {
    /// Every turn, oldest first.
    pub turns: Vec<ExportTurn>,
    /// The session ledger.
    pub ledger: Vec<ExportLedgerRow>,
}

fn stats_line(c: &Completion) -> String {
    let mut parts = Vec::new();
    if let Some(t) = c.ttft_ms {
        parts.push(format!("TTFT {:.2} s", t / 1000.0));
    }
    parts.push(format!("{:.2} s", c.latency_ms / 1000.0));
    parts.push(format!(
        "{} in / {} out tokens",
        c.usage.input_tokens, c.usage.output_tokens
    ));
    if !c.provider.is_empty() {
        parts.push(format!(
            "{} {}",
            format_usd(c.cost_usd),
            c.cost_source.mark()
        ));
    }
    parts.push(format!("finish {}", c.finish_reason));
    parts.join(" · ")
}

/// `text` in a fence longer than any run of backticks inside it.
pub fn fenced(text: &str, info: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for ch in text.chars() {
        if ch == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    let fence = "`".repeat((longest + 1).max(3));
    format!("{fence}{info}\n{}\n{fence}\n", text.trim_end())
}

/// One line of a table cell or heading: no newlines, no pipes.
fn cell(s: &str) -> String {
    s.replace(['\n', '\r'], " ").replace('|', "\\|")
}

impl ExportDoc {
    /// Whether there is anything to write.
    pub fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }

    /// Markdown.
    pub fn to_markdown(&self, created_at: &str) -> String {
        let mut s = String::new();
        let n = self.turns.len();
        let _ = writeln!(
            s,
            "# quorum conversation\n\n{created_at} · {n} turn{}\n",
            if n == 1 { "" } else { "s" }
        );
        for (ti, turn) in self.turns.iter().enumerate() {
            let _ = writeln!(s, "## Turn {}\n", ti + 1);
            if let Some(from) = &turn.continued_from {
                let _ = writeln!(
                    s,
                    "*Continues from {}'s answer (the shared history of every pane).*\n",
                    cell(from)
                );
            }
            if turn.blind {
                let _ = writeln!(s, "*Blind: names hidden until the vote.*\n");
            }
            let _ = writeln!(s, "### Prompt\n\n{}", fenced(&turn.prompt, "text"));
            for a in &turn.answers {
                let _ = writeln!(s, "### {} ({})\n", cell(&a.target), cell(&a.state));
                if let Some(asked) = &a.asked_for {
                    let _ = writeln!(s, "*Fallback: asked for {}.*\n", cell(asked));
                }
                if let Some(c) = &a.completion {
                    let _ = writeln!(s, "*{}*\n", stats_line(c));
                    if let Some(e) = &c.error {
                        let _ = writeln!(s, "**Error:** {}\n", cell(&e.to_string()));
                    }
                    for t in &c.tool_calls {
                        let _ = writeln!(
                            s,
                            "Tool call `{}`:\n\n{}",
                            cell(&t.name),
                            fenced(&t.arguments.to_string(), "json")
                        );
                    }
                }
                if !a.thinking.is_empty() {
                    let _ = writeln!(
                        s,
                        "<details><summary>thinking</summary>\n\n{}\n</details>\n",
                        fenced(&a.thinking, "text")
                    );
                }
                if !a.text.is_empty() {
                    let _ = writeln!(s, "{}", fenced(&a.text, "markdown"));
                }
            }
        }
        let _ = writeln!(
            s,
            "## Ledger\n\n| target | requests | errors | in | out | cached | reasoning | cost |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        let opt = |x: Option<u64>| x.map_or("–".to_string(), |v| v.to_string());
        for r in &self.ledger {
            let cost = match r.cost_usd {
                None => "–".to_string(),
                Some(c) if r.unknown_cost > 0 => {
                    format!("{} + ? {}", format_usd(Some(c)), r.cost_mark)
                }
                Some(c) => format!("{} {}", format_usd(Some(c)), r.cost_mark),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(&r.target),
                r.requests,
                r.errors,
                r.input_tokens,
                r.output_tokens,
                opt(r.cached_input_tokens),
                opt(r.reasoning_tokens),
                cost
            );
        }
        s
    }

    /// JSON: every turn, plus the last turn's `prompt` and `answers` at the
    /// top level as before.
    pub fn to_json(&self, created_at: &str) -> serde_json::Value {
        let last = self.turns.last();
        json!({
            "created_at": created_at,
            "prompt": last.map(|t| t.prompt.as_str()).unwrap_or(""),
            "answers": last.map(|t| t.answers.as_slice()).unwrap_or(&[]),
            "turns": self.turns,
            "ledger": self.ledger,
        })
    }

    /// Write `<dir>/quorum-<stamp>.md` and `.json`; returns both paths.
    pub fn write(&self, dir: &Path, stamp: &str, created_at: &str) -> Result<Vec<PathBuf>, String> {
        if self.is_empty() {
            return Err("nothing to export yet: send a prompt first".into());
        }
        crate::engine::files::create_private_dir(dir)?;
        let md = dir.join(format!("quorum-{stamp}.md"));
        let js = dir.join(format!("quorum-{stamp}.json"));
        std::fs::write(&md, self.to_markdown(created_at))
            .map_err(|e| format!("cannot write {}: {e}", md.display()))?;
        let text =
            serde_json::to_string_pretty(&self.to_json(created_at)).map_err(|e| e.to_string())?;
        std::fs::write(&js, text).map_err(|e| format!("cannot write {}: {e}", js.display()))?;
        Ok(vec![md, js])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_outgrow_the_text() {
        assert_eq!(fenced("a", ""), "```\na\n```\n");
        let f = fenced("```rust\nx\n```", "markdown");
        assert!(
            f.starts_with("````markdown\n") && f.ends_with("\n````\n"),
            "{f}"
        );
    }
}
