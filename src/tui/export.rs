//! A comparison as files: Markdown for people, JSON for tools. Built from
//! state in `update` (pure); written by the loop.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::json;

use crate::engine::cost::format_usd;
use crate::engine::Completion;

/// One pane's answer.
#[derive(Debug, Clone, Serialize)]
pub struct ExportAnswer {
    /// Target as requested.
    pub target: String,
    /// State word (done, failed, ...).
    pub state: String,
    /// Answer text.
    pub text: String,
    /// Thinking text.
    pub thinking: String,
    /// The final completion (the `ask --json` object), when finished.
    pub completion: Option<Completion>,
}

/// One ledger row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExportLedgerRow {
    /// Target.
    pub target: String,
    /// Requests.
    pub requests: u64,
    /// Failed or cancelled requests.
    pub errors: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cached prompt tokens.
    pub cached_input_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
    /// Known cost.
    pub cost_usd: f64,
    /// Requests of unknown cost.
    pub unknown_cost: u64,
    /// ✓, ~ or ?.
    pub cost_mark: String,
}

/// A comparison to write.
#[derive(Debug, Clone, Serialize)]
pub struct ExportDoc {
    /// The prompt of the last send.
    pub prompt: String,
    /// Every pane.
    pub answers: Vec<ExportAnswer>,
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
    parts.push(format!(
        "{} {}",
        format_usd(c.cost_usd),
        c.cost_source.mark()
    ));
    parts.push(format!("finish {}", c.finish_reason));
    parts.join(" · ")
}

impl ExportDoc {
    /// Markdown.
    pub fn to_markdown(&self, created_at: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# quorum comparison\n\n{created_at}\n\n## Prompt\n");
        for l in self.prompt.lines() {
            let _ = writeln!(s, "> {l}");
        }
        for a in &self.answers {
            let _ = writeln!(s, "\n## {} ({})\n", a.target, a.state);
            if let Some(c) = &a.completion {
                let _ = writeln!(s, "*{}*\n", stats_line(c));
                if let Some(e) = &c.error {
                    let _ = writeln!(s, "**Error:** {e}\n");
                }
                for t in &c.tool_calls {
                    let _ = writeln!(s, "Tool call `{}`: `{}`\n", t.name, t.arguments);
                }
            }
            if !a.thinking.is_empty() {
                let _ = writeln!(
                    s,
                    "<details><summary>thinking</summary>\n\n{}\n\n</details>\n",
                    a.thinking.trim_end()
                );
            }
            let _ = writeln!(s, "{}", a.text.trim_end());
        }
        let _ = writeln!(
            s,
            "\n## Ledger\n\n| target | requests | errors | in | out | cached | reasoning | cost |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in &self.ledger {
            let cost = if r.unknown_cost > 0 {
                format!("{} + ? {}", format_usd(Some(r.cost_usd)), r.cost_mark)
            } else {
                format!("{} {}", format_usd(Some(r.cost_usd)), r.cost_mark)
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.target,
                r.requests,
                r.errors,
                r.input_tokens,
                r.output_tokens,
                r.cached_input_tokens,
                r.reasoning_tokens,
                cost
            );
        }
        s
    }

    /// JSON.
    pub fn to_json(&self, created_at: &str) -> serde_json::Value {
        json!({
            "created_at": created_at,
            "prompt": self.prompt,
            "answers": self.answers,
            "ledger": self.ledger,
        })
    }

    /// Write `<dir>/quorum-<stamp>.md` and `.json`; returns both paths.
    pub fn write(&self, dir: &Path, stamp: &str, created_at: &str) -> Result<Vec<PathBuf>, String> {
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
