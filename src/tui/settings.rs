//! The per-run settings panel's state: system prompt, reasoning or thinking
//! budget, JSON mode, schema file, tools file, temperature and max tokens, for
//! every target or overridden per target; and `@path` attachments typed in the
//! editor. Plain state and pure functions (no IO): the settings become the same
//! [`RequestOptions`] and [`ChatRequest`] fields the CLI's flags do, and the loop
//! reads the files when it sends.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::engine::options::RequestOptions;

/// Settings of a send; `None` leaves a setting to the layer below (the settings for
/// every target, then the defaults).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Knobs {
    /// System prompt ("" for none).
    pub system: Option<String>,
    /// `off`, `minimal`, `low`, `medium` or `high`.
    pub reasoning: Option<String>,
    /// Thinking-token budget (0 for none).
    pub thinking_budget: Option<u32>,
    /// Any JSON object as the answer.
    pub json_mode: Option<bool>,
    /// JSON Schema file the answer must match ("" for none).
    pub schema: Option<String>,
    /// Tools file: a JSON list of functions ("" for none).
    pub tools: Option<String>,
    /// Temperature.
    pub temperature: Option<f32>,
    /// Output limit.
    pub max_tokens: Option<u32>,
}

impl Knobs {
    /// These settings over `base`: each one set here wins.
    pub fn over(&self, base: &Knobs) -> Knobs {
        Knobs {
            system: self.system.clone().or_else(|| base.system.clone()),
            reasoning: self.reasoning.clone().or_else(|| base.reasoning.clone()),
            thinking_budget: self.thinking_budget.or(base.thinking_budget),
            json_mode: self.json_mode.or(base.json_mode),
            schema: self.schema.clone().or_else(|| base.schema.clone()),
            tools: self.tools.clone().or_else(|| base.tools.clone()),
            temperature: self.temperature.or(base.temperature),
            max_tokens: self.max_tokens.or(base.max_tokens),
        }
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Knobs::default()
    }

    /// The system prompt, when there is one.
    pub fn system_prompt(&self) -> Option<&str> {
        self.system.as_deref().filter(|s| !s.trim().is_empty())
    }

    /// The request options these settings and `attach` ask for, in the CLI's words
    /// (`--reasoning`, `--thinking-budget`, `--json-mode`, `--schema`, `--tools`,
    /// `-f`, `-i`).
    pub fn request_options(&self, attach: &Attachments) -> RequestOptions {
        let path = |s: &Option<String>| {
            s.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        };
        RequestOptions {
            reasoning: self.reasoning.clone().filter(|r| r != "off"),
            thinking_budget: self.thinking_budget.filter(|n| *n > 0),
            json_mode: self.json_mode.unwrap_or(false),
            schema: path(&self.schema),
            tools: path(&self.tools),
            tool_choice: None,
            files: attach.files.clone(),
            images: attach.images.clone(),
        }
    }

    /// A short summary for the status bar (`sys · high · schema`), "" when empty.
    pub fn summary(&self) -> String {
        let mut v: Vec<String> = Vec::new();
        if self.system_prompt().is_some() {
            v.push("system".into());
        }
        if let Some(r) = self.reasoning.as_deref().filter(|r| *r != "off") {
            v.push(format!("reasoning {r}"));
        }
        if let Some(n) = self.thinking_budget.filter(|n| *n > 0) {
            v.push(format!("thinking {n}"));
        }
        if self.json_mode == Some(true) {
            v.push("json".into());
        }
        if self.schema.as_deref().is_some_and(|s| !s.trim().is_empty()) {
            v.push("schema".into());
        }
        if self.tools.as_deref().is_some_and(|s| !s.trim().is_empty()) {
            v.push("tools".into());
        }
        if let Some(t) = self.temperature {
            v.push(format!("temp {t}"));
        }
        if let Some(n) = self.max_tokens {
            v.push(format!("max {n}"));
        }
        v.join(" · ")
    }
}

/// One row of the panel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Which target the rows below set (every target, or one).
    Scope,
    /// System prompt.
    System,
    /// Reasoning effort.
    Reasoning,
    /// Thinking budget.
    ThinkingBudget,
    /// JSON mode.
    JsonMode,
    /// Schema file.
    Schema,
    /// Tools file.
    Tools,
    /// Temperature.
    Temperature,
    /// Max tokens.
    MaxTokens,
}

/// The rows, in order.
pub const FIELDS: [Field; 9] = [
    Field::Scope,
    Field::System,
    Field::Reasoning,
    Field::ThinkingBudget,
    Field::JsonMode,
    Field::Schema,
    Field::Tools,
    Field::Temperature,
    Field::MaxTokens,
];

/// Reasoning words, cycled with Enter / ← →.
pub const REASONING: [&str; 5] = ["off", "minimal", "low", "medium", "high"];

impl Field {
    /// The row's label.
    pub fn label(self) -> &'static str {
        match self {
            Field::Scope => "for",
            Field::System => "system prompt",
            Field::Reasoning => "reasoning",
            Field::ThinkingBudget => "thinking budget",
            Field::JsonMode => "JSON mode",
            Field::Schema => "schema file",
            Field::Tools => "tools file",
            Field::Temperature => "temperature",
            Field::MaxTokens => "max tokens",
        }
    }

    /// Whether the row is edited as text (Enter starts, Enter ends).
    pub fn is_text(self) -> bool {
        matches!(
            self,
            Field::System
                | Field::ThinkingBudget
                | Field::Schema
                | Field::Tools
                | Field::Temperature
                | Field::MaxTokens
        )
    }
}

/// The panel's state and the settings it holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SettingsPanel {
    /// Settings for every target.
    pub all: Knobs,
    /// Per-target overrides, by target name.
    pub per_target: BTreeMap<String, Knobs>,
    /// Whether the panel is open.
    pub open: bool,
    /// The selected row.
    pub row: usize,
    /// Which layer the rows set: None for every target, else a target.
    pub scope: Option<String>,
    /// The text being edited in the selected row, while editing.
    pub editing: Option<String>,
    /// Why the last edit was refused.
    pub error: Option<String>,
}

impl SettingsPanel {
    /// The settings that apply to `target`.
    pub fn for_target(&self, target: &str) -> Knobs {
        match self.per_target.get(target) {
            Some(k) => k.over(&self.all),
            None => self.all.clone(),
        }
    }

    /// The layer the rows show and set.
    pub fn layer(&self) -> &Knobs {
        static EMPTY: std::sync::OnceLock<Knobs> = std::sync::OnceLock::new();
        match &self.scope {
            None => &self.all,
            Some(t) => self
                .per_target
                .get(t)
                .unwrap_or_else(|| EMPTY.get_or_init(Knobs::default)),
        }
    }

    fn layer_mut(&mut self) -> &mut Knobs {
        match &self.scope {
            None => &mut self.all,
            Some(t) => self.per_target.entry(t.clone()).or_default(),
        }
    }

    /// The selected row.
    pub fn field(&self) -> Field {
        FIELDS[self.row.min(FIELDS.len() - 1)]
    }

    /// A row's value as shown: the layer's own, or `(inherited)` what applies.
    pub fn shown(&self, f: Field) -> (String, bool) {
        let own = value_of(self.layer(), f);
        if own.is_some() || self.scope.is_none() {
            return (own.unwrap_or_else(|| default_of(f).into()), false);
        }
        let inherited = value_of(&self.all, f).unwrap_or_else(|| default_of(f).into());
        (inherited, true)
    }

    /// Step the scope through every target and back (`targets` in pane order).
    pub fn step_scope(&mut self, targets: &[String], forward: bool) {
        let mut all: Vec<Option<String>> = vec![None];
        for t in targets {
            if !all.contains(&Some(t.clone())) {
                all.push(Some(t.clone()));
            }
        }
        let i = all.iter().position(|s| *s == self.scope).unwrap_or(0);
        let n = all.len();
        let j = if forward {
            (i + 1) % n
        } else {
            (i + n - 1) % n
        };
        self.scope = all[j].clone();
    }

    /// Cycle a choice row (reasoning, JSON mode) one step.
    pub fn cycle(&mut self, forward: bool) {
        match self.field() {
            Field::Reasoning => {
                let cur = self.layer().reasoning.clone();
                let i = cur
                    .as_deref()
                    .and_then(|c| REASONING.iter().position(|r| *r == c));
                // Unset -> off -> minimal ... -> high -> unset (inherit) for a target.
                let next = match (i, forward) {
                    (None, true) => Some(0),
                    (None, false) => Some(REASONING.len() - 1),
                    (Some(i), true) if i + 1 < REASONING.len() => Some(i + 1),
                    (Some(i), false) if i > 0 => Some(i - 1),
                    _ => None,
                };
                self.layer_mut().reasoning = next.map(|i| REASONING[i].to_string());
                if self
                    .layer()
                    .reasoning
                    .as_deref()
                    .is_some_and(|r| r != "off")
                {
                    // One way to ask for thinking at a time, as on the command line.
                    self.layer_mut().thinking_budget = None;
                }
            }
            Field::JsonMode => {
                let l = self.layer_mut();
                l.json_mode = match l.json_mode {
                    None => Some(true),
                    Some(true) => Some(false),
                    Some(false) => None,
                };
                if l.json_mode == Some(true) {
                    l.schema = None;
                }
            }
            _ => {}
        }
    }

    /// Start editing the selected text row.
    pub fn start_edit(&mut self) {
        let f = self.field();
        if f.is_text() {
            self.editing = Some(value_of(self.layer(), f).unwrap_or_default());
            self.error = None;
        }
    }

    /// End the edit: parse and store it (empty text unsets the row); Err says why not.
    pub fn commit_edit(&mut self) -> Result<(), String> {
        let Some(text) = self.editing.take() else {
            return Ok(());
        };
        let f = self.field();
        let t = text.trim();
        let r = set_value(self.layer_mut(), f, t);
        if let Err(e) = &r {
            self.editing = Some(text);
            self.error = Some(e.clone());
        } else {
            self.error = None;
            let l = self.layer_mut();
            if f == Field::ThinkingBudget && l.thinking_budget.is_some_and(|n| n > 0) {
                l.reasoning = None;
            }
            if f == Field::Schema && l.schema.as_deref().is_some_and(|s| !s.is_empty()) {
                l.json_mode = None;
            }
        }
        r
    }

    /// Unset the selected row in the layer shown (a target then inherits it).
    pub fn unset(&mut self) {
        let f = self.field();
        let l = self.layer_mut();
        match f {
            Field::Scope => {}
            Field::System => l.system = None,
            Field::Reasoning => l.reasoning = None,
            Field::ThinkingBudget => l.thinking_budget = None,
            Field::JsonMode => l.json_mode = None,
            Field::Schema => l.schema = None,
            Field::Tools => l.tools = None,
            Field::Temperature => l.temperature = None,
            Field::MaxTokens => l.max_tokens = None,
        }
        self.error = None;
    }

    /// Drop overrides that set nothing.
    pub fn tidy(&mut self) {
        self.per_target.retain(|_, k| !k.is_empty());
    }

    /// The status-bar summary of what applies to every target, plus a count of
    /// targets with their own settings.
    pub fn summary(&self) -> String {
        let mut s = self.all.summary();
        let n = self.per_target.values().filter(|k| !k.is_empty()).count();
        if n > 0 {
            if !s.is_empty() {
                s.push_str(" · ");
            }
            s.push_str(&format!("{n} target{} own", if n == 1 { "" } else { "s" }));
        }
        s
    }
}

fn value_of(k: &Knobs, f: Field) -> Option<String> {
    match f {
        Field::Scope => None,
        Field::System => k.system.clone(),
        Field::Reasoning => k.reasoning.clone(),
        Field::ThinkingBudget => k.thinking_budget.map(|n| n.to_string()),
        Field::JsonMode => k
            .json_mode
            .map(|b| if b { "on" } else { "off" }.to_string()),
        Field::Schema => k.schema.clone(),
        Field::Tools => k.tools.clone(),
        Field::Temperature => k.temperature.map(|t| t.to_string()),
        Field::MaxTokens => k.max_tokens.map(|n| n.to_string()),
    }
}

fn default_of(f: Field) -> &'static str {
    match f {
        Field::Reasoning => "off",
        Field::JsonMode => "off",
        Field::Temperature | Field::MaxTokens => "default",
        _ => "",
    }
}

fn set_value(k: &mut Knobs, f: Field, t: &str) -> Result<(), String> {
    let empty = t.is_empty();
    match f {
        Field::System => k.system = (!empty).then(|| t.to_string()),
        Field::Schema => k.schema = (!empty).then(|| t.to_string()),
        Field::Tools => k.tools = (!empty).then(|| t.to_string()),
        Field::ThinkingBudget => {
            k.thinking_budget = if empty {
                None
            } else {
                Some(t.parse::<u32>().map_err(|_| {
                    format!("thinking budget {t:?}: a number of tokens (0 for none)")
                })?)
            }
        }
        Field::Temperature => {
            k.temperature = if empty {
                None
            } else {
                let v: f32 = t
                    .parse()
                    .map_err(|_| format!("temperature {t:?}: a number from 0 to 2"))?;
                if !(0.0..=2.0).contains(&v) {
                    return Err(format!("temperature {v}: must be from 0 to 2"));
                }
                Some(v)
            }
        }
        Field::MaxTokens => {
            k.max_tokens = if empty {
                None
            } else {
                let n: u32 = t
                    .parse()
                    .map_err(|_| format!("max tokens {t:?}: a whole number above 0"))?;
                if n == 0 {
                    return Err("max tokens: must be above 0".into());
                }
                Some(n)
            }
        }
        Field::Scope | Field::Reasoning | Field::JsonMode => {}
    }
    Ok(())
}

// ----- @path attachments ------------------------------------------------

/// Files and images named with `@path` in a prompt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attachments {
    /// Text files (`-f`).
    pub files: Vec<PathBuf>,
    /// Images (`-i`), by extension: .png .jpg .jpeg .webp .gif.
    pub images: Vec<PathBuf>,
}

impl Attachments {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.images.is_empty()
    }

    /// Whether any is an image.
    pub fn has_images(&self) -> bool {
        !self.images.is_empty()
    }
}

/// Whether `path` names an image (by its extension; the bytes are checked when read).
pub fn is_image_path(path: &str) -> bool {
    let l = path.to_ascii_lowercase();
    [".png", ".jpg", ".jpeg", ".webp", ".gif"]
        .iter()
        .any(|e| l.ends_with(e))
}

/// The `@path` words of a prompt: an `@` at the start of a word, then the path
/// up to the next space (`\ ` keeps a space). A lone `@`, or one inside a word
/// (`me@example.com`), is text.
pub fn attachments(prompt: &str) -> Attachments {
    let mut out = Attachments::default();
    for p in at_words(prompt) {
        let path = PathBuf::from(&p);
        if is_image_path(&p) {
            if !out.images.contains(&path) {
                out.images.push(path);
            }
        } else if !out.files.contains(&path) {
            out.files.push(path);
        }
    }
    out
}

fn at_words(prompt: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = prompt.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i] == '@' && (i == 0 || chars[i - 1].is_whitespace());
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        let mut word = String::new();
        while j < chars.len() && !chars[j].is_whitespace() {
            if chars[j] == '\\' && chars.get(j + 1) == Some(&' ') {
                word.push(' ');
                j += 2;
                continue;
            }
            word.push(chars[j]);
            j += 1;
        }
        // A sentence's full stop or comma after the path is not part of it.
        while word.ends_with(['.', ',', ';', ':', ')', '?', '!']) && !word.ends_with("..") {
            word.pop();
        }
        if !word.is_empty() {
            out.push(word);
        }
        i = j;
    }
    out
}

/// The `@path` being typed at the end of `line_before_cursor`, if any (without the `@`).
pub fn at_prefix(line_before_cursor: &str) -> Option<&str> {
    let start = line_before_cursor
        .rfind(char::is_whitespace)
        .map(|i| i + 1)
        .unwrap_or(0);
    line_before_cursor[start..].strip_prefix('@')
}

/// Complete `prefix` (a path being typed) against `entries`, the names in its
/// directory (directories end in `/`): the longest text every match shares, added
/// to the prefix; None when nothing matches or there is nothing to add.
pub fn complete(prefix: &str, entries: &[String]) -> Option<String> {
    let (dir, stem) = match prefix.rfind('/') {
        Some(i) => (&prefix[..=i], &prefix[i + 1..]),
        None => ("", prefix),
    };
    let mut matches: Vec<&String> = entries
        .iter()
        .filter(|e| e.starts_with(stem) && (stem.starts_with('.') || !e.starts_with('.')))
        .collect();
    matches.sort();
    let first = matches.first()?;
    let mut common: &str = first;
    for m in &matches[1..] {
        let n = common
            .char_indices()
            .zip(m.chars())
            .take_while(|((_, a), b)| a == b)
            .last()
            .map(|((i, c), _)| i + c.len_utf8())
            .unwrap_or(0);
        common = &common[..n];
    }
    (common.len() > stem.len()).then(|| format!("{dir}{common}"))
}

/// The directory a completion of `prefix` lists (`.` for a bare name).
pub fn completion_dir(prefix: &str) -> String {
    match prefix.rfind('/') {
        Some(0) => "/".into(),
        Some(i) => prefix[..i].to_string(),
        None => ".".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_words_are_paths_at_the_start_of_a_word() {
        let a = attachments("read @notes.md and @shot.PNG, mail me@example.com @ @dir/a\\ b.txt.");
        assert_eq!(
            a.files,
            [PathBuf::from("notes.md"), PathBuf::from("dir/a b.txt")]
        );
        assert_eq!(a.images, [PathBuf::from("shot.PNG")]);
    }

    #[test]
    fn completion_extends_to_the_shared_text() {
        let e: Vec<String> = ["notes.md", "notebook/", "other.txt", ".hidden"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(complete("no", &e).as_deref(), Some("note"));
        assert_eq!(complete("notes", &e).as_deref(), Some("notes.md"));
        assert_eq!(complete("sub/ot", &e).as_deref(), Some("sub/other.txt"));
        assert_eq!(complete("zz", &e), None);
        assert_eq!(complete("", &e).as_deref(), None);
        assert_eq!(completion_dir("sub/ot"), "sub");
        assert_eq!(completion_dir("ot"), ".");
        assert_eq!(at_prefix("look at @sub/o"), Some("sub/o"));
        assert_eq!(at_prefix("mail me@x"), None);
    }

    #[test]
    fn per_target_settings_win_over_the_ones_for_every_target() {
        let mut p = SettingsPanel::default();
        p.all.temperature = Some(0.2);
        p.all.system = Some("be brief".into());
        p.per_target.insert(
            "mock/beta".into(),
            Knobs {
                temperature: Some(1.0),
                ..Default::default()
            },
        );
        let b = p.for_target("mock/beta");
        assert_eq!(b.temperature, Some(1.0));
        assert_eq!(b.system.as_deref(), Some("be brief"));
        assert_eq!(p.for_target("mock/alpha").temperature, Some(0.2));
    }
}
