//! Eval suites in TOML: targets, cases (a prompt with `{{variables}}` filled
//! from inline `vars` or the rows of a JSONL or CSV dataset), a system prompt and
//! request options per case or for all, repeats, and assertions per case or for all.
//! Every error names the file, the line and the key.
//!
//! ```toml
//! targets = ["mock/alpha", "mock/beta"]
//! [[cases]]
//! prompt = "What is 2+2? Answer with one number."
//! assert = [{ type = "contains", value = "4" }]
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};
use toml::de::{DeTable, DeValue};
use toml::Value;

use super::check::{Assertion, Check};
use crate::engine::compare::parse_kind;
use crate::engine::options::RequestOptions;
use crate::engine::request::{ChatRequest, Message};
use crate::shared::params::{type_name, Fields};

/// An invalid suite: where and what.
#[derive(Debug, Clone, PartialEq)]
pub struct SuiteError {
    /// The file (the suite, or a dataset it names).
    pub file: String,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// 1-based column, where known.
    pub column: Option<usize>,
    /// Dotted key path, e.g. `cases[0].assert[1].value`.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for SuiteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        if let Some(k) = &self.key {
            write!(f, ": {k}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for SuiteError {}

/// One case to run: the request sent to every target, and what must hold.
#[derive(Debug, Clone)]
pub struct Case {
    /// Stable key in the suite (`id`, else `case-N`; `#row` for dataset rows).
    pub key: String,
    /// Position in the expanded suite, from 0.
    pub index: usize,
    /// The prompt, variables filled.
    pub prompt: String,
    /// The request (system prompt, options and attachments applied).
    pub request: ChatRequest,
    /// Runs per target.
    pub repeat: u32,
    /// The case's assertions, then the suite's.
    pub asserts: Vec<Assertion>,
    /// The variables the case was filled with.
    pub vars: BTreeMap<String, String>,
}

/// A parsed suite.
#[derive(Debug, Clone)]
pub struct Suite {
    /// The file.
    pub path: PathBuf,
    /// SHA-256 of the suite text and every dataset's, hex.
    pub hash: String,
    /// The targets, in order.
    pub targets: Vec<String>,
    /// The cases, datasets expanded.
    pub cases: Vec<Case>,
}

impl Suite {
    /// Requests the whole suite sends (judges not included).
    pub fn requests(&self) -> usize {
        self.cases
            .iter()
            .map(|c| c.repeat as usize * self.targets.len())
            .sum()
    }

    /// Judge models named by any assertion.
    pub fn judges(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in &self.cases {
            for a in &c.asserts {
                if let Check::Judge { model, .. } = &a.check {
                    if !out.contains(model) {
                        out.push(model.clone());
                    }
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone, Default, PartialEq)]
struct KeyPath(Vec<Seg>);

impl KeyPath {
    fn key(&self, k: &str) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }
    fn index(&self, i: usize) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// The suite text, kept to locate errors.
struct Src<'a> {
    file: String,
    text: &'a str,
    spans: Option<DeTable<'a>>,
    dir: PathBuf,
}

impl Src<'_> {
    fn err(&self, path: &KeyPath, msg: impl Into<String>) -> SuiteError {
        let span = self.spans.as_ref().and_then(|t| span_of_path(t, &path.0));
        let (line, column) = match span {
            Some(s) => {
                let (l, c) = line_col(self.text, s.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        SuiteError {
            file: self.file.clone(),
            line,
            column,
            key: (!path.0.is_empty()).then(|| path.to_string()),
            message: msg.into(),
        }
    }
}

fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

fn span_of_path(t: &DeTable<'_>, path: &[Seg]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    let Seg::Key(name) = first else { return None };
    let (k, v) = t.iter().find(|(k, _)| {
        let s: &str = k.get_ref().as_ref();
        s == name
    })?;
    if rest.is_empty() {
        return Some(k.span());
    }
    span_in_value(v, rest).or(Some(k.span()))
}

fn span_in_value(v: &toml::Spanned<DeValue<'_>>, path: &[Seg]) -> Option<Range<usize>> {
    match (v.get_ref(), path.first()?) {
        (DeValue::Table(t), Seg::Key(_)) => span_of_path(t, path),
        (DeValue::Array(a), Seg::Index(i)) => {
            let item = a.get(*i)?;
            if path.len() == 1 {
                Some(item.span())
            } else {
                span_in_value(item, &path[1..])
            }
        }
        _ => None,
    }
}

const SUITE_KEYS: &[&str] = &[
    "targets",
    "cases",
    "assert",
    "system",
    "options",
    "repeat",
    "judge",
    "description",
];
const CASE_KEYS: &[&str] = &[
    "id",
    "prompt",
    "system",
    "options",
    "vars",
    "dataset",
    "repeat",
    "assert",
    "description",
];
const OPTION_KEYS: &[&str] = &[
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "reasoning",
    "thinking_budget",
    "json_mode",
    "schema",
    "tools",
    "tool_choice",
    "files",
    "images",
];
const ASSERT_KEYS: &[&str] = &[
    "type",
    "value",
    "ignore_case",
    "tolerance",
    "schema",
    "file",
    "threshold",
    "kind",
    "rubric",
    "model",
];

/// The assertion types, as spelled in a suite.
pub const ASSERT_TYPES: &[&str] = &[
    "equals",
    "contains",
    "regex",
    "number",
    "json",
    "schema",
    "max_latency_ms",
    "max_cost_usd",
    "consensus",
    "judge",
];

fn check_keys(
    src: &Src<'_>,
    t: &toml::Table,
    at: &KeyPath,
    allowed: &[&str],
) -> Result<(), SuiteError> {
    for k in t.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(src.err(
                &at.key(k),
                format!("unknown key; expected one of: {}", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

fn tname(v: &Value) -> &'static str {
    v.type_str()
}

fn get_str<'t>(
    src: &Src<'_>,
    t: &'t toml::Table,
    at: &KeyPath,
    k: &str,
) -> Result<Option<&'t str>, SuiteError> {
    match t.get(k) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(src.err(&at.key(k), format!("expected a string, got {}", tname(v)))),
    }
}

fn get_repeat(src: &Src<'_>, t: &toml::Table, at: &KeyPath) -> Result<Option<u32>, SuiteError> {
    match t.get("repeat") {
        None => Ok(None),
        Some(Value::Integer(n)) if (1..=100).contains(n) => Ok(Some(*n as u32)),
        Some(v) => Err(src.err(
            &at.key("repeat"),
            format!("expected a whole number from 1 to 100, got {v}"),
        )),
    }
}

fn get_table<'t>(
    src: &Src<'_>,
    t: &'t toml::Table,
    at: &KeyPath,
    k: &str,
) -> Result<Option<&'t toml::Table>, SuiteError> {
    match t.get(k) {
        None => Ok(None),
        Some(Value::Table(x)) => Ok(Some(x)),
        Some(v) => Err(src.err(&at.key(k), format!("expected a table, got {}", tname(v)))),
    }
}

fn to_json(v: &Value) -> Json {
    match v {
        Value::String(s) => Json::String(s.clone()),
        Value::Integer(i) => Json::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .unwrap_or(Json::Null),
        Value::Boolean(b) => Json::Bool(*b),
        Value::Datetime(d) => Json::String(d.to_string()),
        Value::Array(a) => Json::Array(a.iter().map(to_json).collect()),
        Value::Table(t) => Json::Object(t.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
    }
}

/// Fill `{{name}}` (spaces allowed inside the braces) from `vars`.
pub fn fill(text: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            out.push_str(&rest[open..]);
            return Ok(out);
        };
        let name = after[..close].trim();
        match vars.get(name) {
            Some(v) => out.push_str(v),
            None => {
                let known: Vec<&str> = vars.keys().map(String::as_str).collect();
                return Err(format!(
                    "variable {{{{{name}}}}} is not defined (defined here: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ));
            }
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Read and parse a suite file, expanding its datasets.
pub fn load(path: &Path) -> Result<Suite, SuiteError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| SuiteError {
        file: file.clone(),
        line: None,
        column: None,
        key: None,
        message: match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".into(),
            _ => format!("cannot be read ({e})"),
        },
    })?;
    parse(&text, path)
}

/// Parse suite `text` read from `path` (datasets and files are relative to its folder).
pub fn parse(text: &str, path: &Path) -> Result<Suite, SuiteError> {
    let file = path.display().to_string();
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let (line, column) = match e.span() {
            Some(s) => {
                let (l, c) = line_col(text, s.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        SuiteError {
            file: file.clone(),
            line,
            column,
            key: None,
            message: e.message().trim().to_string(),
        }
    })?;
    let src = Src {
        file,
        text,
        spans: DeTable::parse(text).ok().map(|t| t.into_inner()),
        dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let root = KeyPath::default();
    check_keys(&src, &table, &root, SUITE_KEYS)?;
    let mut hasher = Sha256::new();
    hasher.update(text.as_bytes());

    let targets = match table.get("targets") {
        None => return Err(src.err(&root, "missing key `targets` (a list of provider/model)")),
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(src.err(&root.key("targets"), "must name at least one target"))
        }
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for (i, v) in a.iter().enumerate() {
                match v {
                    Value::String(s) if !s.trim().is_empty() => out.push(s.trim().to_string()),
                    v => {
                        return Err(src.err(
                            &root.key("targets").index(i),
                            format!("expected a provider/model string, got {}", tname(v)),
                        ))
                    }
                }
            }
            out
        }
        Some(v) => {
            return Err(src.err(
                &root.key("targets"),
                format!("expected an array of strings, got {}", tname(v)),
            ))
        }
    };
    let default_judge = get_str(&src, &table, &root, "judge")?.map(str::to_string);
    let suite_system = get_str(&src, &table, &root, "system")?;
    let suite_options = get_table(&src, &table, &root, "options")?;
    if let Some(o) = suite_options {
        check_keys(&src, o, &root.key("options"), OPTION_KEYS)?;
    }
    let suite_repeat = get_repeat(&src, &table, &root)?.unwrap_or(1);
    let suite_asserts = match table.get("assert") {
        None => None,
        Some(Value::Array(a)) => Some(a),
        Some(v) => {
            return Err(src.err(
                &root.key("assert"),
                format!("expected an array of assertions, got {}", tname(v)),
            ))
        }
    };
    let cases_v = match table.get("cases") {
        None => return Err(src.err(&root, "missing `[[cases]]` (at least one case)")),
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(src.err(&root.key("cases"), "must hold at least one case"))
        }
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(src.err(
                &root.key("cases"),
                format!("expected an array of tables ([[cases]]), got {}", tname(v)),
            ))
        }
    };

    let mut cases = Vec::new();
    let mut keys = std::collections::HashSet::new();
    for (ci, cv) in cases_v.iter().enumerate() {
        let at = root.key("cases").index(ci);
        let Value::Table(ct) = cv else {
            return Err(src.err(&at, format!("expected a table, got {}", tname(cv))));
        };
        check_keys(&src, ct, &at, CASE_KEYS)?;
        let Some(prompt_t) = get_str(&src, ct, &at, "prompt")? else {
            return Err(src.err(&at, "missing key `prompt`"));
        };
        if prompt_t.trim().is_empty() {
            return Err(src.err(&at.key("prompt"), "must not be empty"));
        }
        let id = get_str(&src, ct, &at, "id")?.map(str::to_string);
        let system_t = get_str(&src, ct, &at, "system")?.or(suite_system);
        let repeat = get_repeat(&src, ct, &at)?.unwrap_or(suite_repeat);
        let case_options = get_table(&src, ct, &at, "options")?;
        if let Some(o) = case_options {
            check_keys(&src, o, &at.key("options"), OPTION_KEYS)?;
        }
        // Options: the suite's, then the case's key by key; errors point at the one given.
        let mut merged = toml::Table::new();
        let mut origin: BTreeMap<String, KeyPath> = BTreeMap::new();
        if let Some(o) = suite_options {
            for (k, v) in o {
                merged.insert(k.clone(), v.clone());
                origin.insert(k.clone(), root.key("options").key(k));
            }
        }
        if let Some(o) = case_options {
            for (k, v) in o {
                merged.insert(k.clone(), v.clone());
                origin.insert(k.clone(), at.key("options").key(k));
            }
        }
        let case_asserts = match ct.get("assert") {
            None => None,
            Some(Value::Array(a)) => Some(a),
            Some(v) => {
                return Err(src.err(
                    &at.key("assert"),
                    format!("expected an array of assertions, got {}", tname(v)),
                ))
            }
        };
        let mut base_vars = BTreeMap::new();
        if let Some(vt) = get_table(&src, ct, &at, "vars")? {
            for (k, v) in vt {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Integer(_) | Value::Float(_) | Value::Boolean(_) => v.to_string(),
                    v => {
                        return Err(src.err(
                            &at.key("vars").key(k),
                            format!("expected a string or number, got {}", tname(v)),
                        ))
                    }
                };
                base_vars.insert(k.clone(), s);
            }
        }
        // One case, or one per dataset row.
        let rows: Vec<(Option<String>, BTreeMap<String, String>)> =
            match get_str(&src, ct, &at, "dataset")? {
                None => vec![(None, base_vars.clone())],
                Some(d) => {
                    let dpath = src.dir.join(d);
                    let (rows, bytes) = read_dataset(&dpath).map_err(|mut e| {
                        if e.line.is_none() {
                            // The dataset itself is missing or unreadable: point at the key.
                            let mut k = src.err(&at.key("dataset"), e.message.clone());
                            k.message = format!("{}: {}", dpath.display(), e.message);
                            return k;
                        }
                        e.key = Some(at.key("dataset").to_string());
                        e
                    })?;
                    hasher.update(&bytes);
                    if rows.is_empty() {
                        return Err(src.err(
                            &at.key("dataset"),
                            format!("{}: has no rows", dpath.display()),
                        ));
                    }
                    rows.into_iter()
                        .map(|(line, row)| {
                            let mut vars = base_vars.clone();
                            vars.extend(row);
                            (Some(format!("{}:{line}", dpath.display())), vars)
                        })
                        .collect()
                }
            };
        let many = rows.len() > 1 || ct.contains_key("dataset");
        for (ri, (row_at, vars)) in rows.into_iter().enumerate() {
            let in_row = |e: String| match &row_at {
                Some(r) => format!("{e} (row at {r})"),
                None => e,
            };
            let base_key = id.clone().unwrap_or_else(|| format!("case-{}", ci + 1));
            let key = if many {
                format!("{base_key}#{}", ri + 1)
            } else {
                base_key
            };
            if !keys.insert(key.clone()) {
                return Err(src.err(&at.key("id"), format!("duplicate case id {key:?}")));
            }
            let prompt =
                fill(prompt_t, &vars).map_err(|e| src.err(&at.key("prompt"), in_row(e)))?;
            let system = match system_t {
                Some(s) => Some(fill(s, &vars).map_err(|e| {
                    let p = if ct.contains_key("system") {
                        at.key("system")
                    } else {
                        root.key("system")
                    };
                    src.err(&p, in_row(e))
                })?),
                None => None,
            };
            let mut request = ChatRequest::default();
            if let Some(s) = system {
                request.messages.push(Message::system(s));
            }
            request.messages.push(Message::user(prompt.clone()));
            apply_options(&src, &merged, &origin, &mut request)?;
            let mut asserts = Vec::new();
            for (list, base) in [
                (case_asserts, at.key("assert")),
                (suite_asserts, root.key("assert")),
            ] {
                let Some(list) = list else { continue };
                for (ai, av) in list.iter().enumerate() {
                    let apath = base.index(ai);
                    asserts.push(parse_assert(
                        &src,
                        av,
                        &apath,
                        &vars,
                        default_judge.as_deref(),
                        &in_row,
                    )?);
                }
            }
            cases.push(Case {
                key,
                index: cases.len(),
                prompt,
                request,
                repeat,
                asserts,
                vars,
            });
        }
    }
    Ok(Suite {
        path: path.to_path_buf(),
        hash: hex::encode(hasher.finalize()),
        targets,
        cases,
    })
}

fn apply_options(
    src: &Src<'_>,
    merged: &toml::Table,
    origin: &BTreeMap<String, KeyPath>,
    req: &mut ChatRequest,
) -> Result<(), SuiteError> {
    if merged.is_empty() {
        return Ok(());
    }
    let map: Map<String, Json> = merged
        .iter()
        .map(|(k, v)| (k.clone(), to_json(v)))
        .collect();
    let at = |k: &str| origin.get(k).cloned().unwrap_or_default();
    let field = |e: crate::shared::params::FieldError| {
        let k = e.field.split(['[', '.']).next().unwrap_or("").to_string();
        src.err(&at(&k), e.message)
    };
    let f = Fields::new(&map);
    req.max_tokens = f
        .uint("max_tokens", 1, u32::MAX as u64)
        .map_err(field)?
        .map(|v| v as u32);
    req.temperature = f
        .num("temperature", 0.0, 2.0)
        .map_err(field)?
        .map(|v| v as f32);
    req.top_p = f.num("top_p", 0.0, 1.0).map_err(field)?.map(|v| v as f32);
    match map.get("stop") {
        None => {}
        Some(Json::String(s)) => req.stop = vec![s.clone()],
        Some(Json::Array(_)) => req.stop = f.str_list("stop").map_err(field)?.unwrap_or_default(),
        Some(v) => {
            return Err(src.err(
                &at("stop"),
                format!(
                    "expected a string or an array of strings, got {}",
                    type_name(v)
                ),
            ))
        }
    }
    let path_of = |s: &str| src.dir.join(s);
    let paths = |k: &str| -> Result<Vec<PathBuf>, SuiteError> {
        match map.get(k) {
            None => Ok(Vec::new()),
            Some(Json::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Json::String(s) if !s.trim().is_empty() => Ok(path_of(s)),
                    v => Err(src.err(&at(k), format!("expected file paths, got {}", type_name(v)))),
                })
                .collect(),
            Some(v) => Err(src.err(
                &at(k),
                format!("expected an array of file paths, got {}", type_name(v)),
            )),
        }
    };
    let opts = RequestOptions {
        reasoning: f.str("reasoning").map_err(field)?.map(str::to_string),
        thinking_budget: f
            .uint("thinking_budget", 0, u32::MAX as u64)
            .map_err(field)?
            .map(|v| v as u32),
        json_mode: f.bool("json_mode").map_err(field)?.unwrap_or(false),
        schema: f.str("schema").map_err(field)?.map(path_of),
        tools: f.str("tools").map_err(field)?.map(path_of),
        tool_choice: f.str("tool_choice").map_err(field)?.map(str::to_string),
        files: paths("files")?,
        images: paths("images")?,
    };
    opts.apply(req).map_err(|e| {
        // Name the option the message is about.
        let msg = e.to_string();
        let k = OPTION_KEYS
            .iter()
            .find(|k| {
                merged.contains_key(**k)
                    && (msg.contains(&k.replace('_', "-")) || msg.contains(**k))
            })
            .copied()
            .or_else(|| {
                merged
                    .keys()
                    .find(|k| !["max_tokens", "temperature", "top_p", "stop"].contains(&k.as_str()))
                    .map(String::as_str)
            })
            .unwrap_or("");
        src.err(&at(k), msg)
    })
}

fn parse_assert(
    src: &Src<'_>,
    v: &Value,
    at: &KeyPath,
    vars: &BTreeMap<String, String>,
    default_judge: Option<&str>,
    in_row: &dyn Fn(String) -> String,
) -> Result<Assertion, SuiteError> {
    let Value::Table(t) = v else {
        return Err(src.err(
            at,
            format!(
                "expected a table like {{ type = \"contains\", value = \"4\" }}, got {}",
                tname(v)
            ),
        ));
    };
    check_keys(src, t, at, ASSERT_KEYS)?;
    let Some(ty) = get_str(src, t, at, "type")? else {
        return Err(src.err(
            at,
            format!("missing key `type` (one of: {})", ASSERT_TYPES.join(", ")),
        ));
    };
    let text_value = |k: &str| -> Result<String, SuiteError> {
        match t.get(k) {
            Some(Value::String(s)) => fill(s, vars).map_err(|e| src.err(&at.key(k), in_row(e))),
            Some(Value::Integer(_) | Value::Float(_) | Value::Boolean(_)) => Ok(t[k].to_string()),
            Some(v) => Err(src.err(&at.key(k), format!("expected a string, got {}", tname(v)))),
            None => Err(src.err(at, format!("`{ty}` needs `{k}`"))),
        }
    };
    let number = |k: &str, min: f64| -> Result<Option<f64>, SuiteError> {
        match t.get(k) {
            None => Ok(None),
            Some(Value::Integer(i)) if *i as f64 >= min => Ok(Some(*i as f64)),
            Some(Value::Float(x)) if *x >= min && x.is_finite() => Ok(Some(*x)),
            Some(Value::String(s)) => match fill(s, vars)
                .map_err(|e| src.err(&at.key(k), in_row(e)))?
                .trim()
                .parse::<f64>()
            {
                Ok(x) if x >= min && x.is_finite() => Ok(Some(x)),
                _ => Err(src.err(&at.key(k), format!("expected a number ≥ {min}, got {s:?}"))),
            },
            Some(v) => Err(src.err(&at.key(k), format!("expected a number ≥ {min}, got {v}"))),
        }
    };
    let ignore_case = match t.get("ignore_case") {
        None => false,
        Some(Value::Boolean(b)) => *b,
        Some(v) => {
            return Err(src.err(
                &at.key("ignore_case"),
                format!("expected true or false, got {}", tname(v)),
            ))
        }
    };
    let check = match ty {
        "equals" => Check::Equals {
            value: text_value("value")?,
            ignore_case,
        },
        "contains" => Check::Contains {
            value: text_value("value")?,
            ignore_case,
        },
        "regex" => {
            let p = text_value("value")?;
            let re = regex::RegexBuilder::new(&p)
                .case_insensitive(ignore_case)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| src.err(&at.key("value"), format!("not a valid regex: {e}")))?;
            Check::Regex(re)
        }
        "number" => {
            let Some(value) = number("value", f64::NEG_INFINITY)? else {
                return Err(src.err(at, "`number` needs `value`"));
            };
            Check::Number {
                value,
                tolerance: number("tolerance", 0.0)?.unwrap_or(0.0),
            }
        }
        "json" => Check::Json,
        "schema" => {
            let schema =
                match (t.get("schema"), t.get("file")) {
                    (Some(_), Some(_)) => {
                        return Err(src.err(&at.key("file"), "give `schema` or `file`, not both"))
                    }
                    (Some(Value::Table(s)), None) => to_json(&Value::Table(s.clone())),
                    (Some(v), None) => {
                        return Err(src.err(
                            &at.key("schema"),
                            format!(
                                "expected an inline table (the JSON Schema), got {}",
                                tname(v)
                            ),
                        ))
                    }
                    (None, Some(Value::String(f))) => {
                        let p = src.dir.join(f);
                        let text = std::fs::read_to_string(&p).map_err(|e| {
                            src.err(
                                &at.key("file"),
                                format!("{}: cannot be read ({e})", p.display()),
                            )
                        })?;
                        serde_json::from_str(&text).map_err(|e| {
                            src.err(
                                &at.key("file"),
                                format!("{}: not valid JSON ({e})", p.display()),
                            )
                        })?
                    }
                    (None, Some(v)) => {
                        return Err(src.err(
                            &at.key("file"),
                            format!("expected a file path, got {}", tname(v)),
                        ))
                    }
                    (None, None) => return Err(src.err(
                        at,
                        "`schema` needs `schema` (an inline table) or `file` (a JSON Schema file)",
                    )),
                };
            crate::engine::validate::check_schema(&schema).map_err(|e| {
                src.err(
                    &at.key(if t.contains_key("file") {
                        "file"
                    } else {
                        "schema"
                    }),
                    e,
                )
            })?;
            let v = jsonschema::validator_for(&schema).map_err(|e| src.err(at, e.to_string()))?;
            Check::Schema(std::sync::Arc::new(v))
        }
        "max_latency_ms" => match number("value", 0.0)? {
            Some(v) => Check::MaxLatencyMs(v),
            None => return Err(src.err(at, "`max_latency_ms` needs `value` (milliseconds)")),
        },
        "max_cost_usd" => match number("value", 0.0)? {
            Some(v) => Check::MaxCostUsd(v),
            None => return Err(src.err(at, "`max_cost_usd` needs `value` (USD)")),
        },
        "consensus" => {
            let threshold = number("threshold", 0.0)?.unwrap_or(1.0);
            if threshold > 1.0 {
                return Err(src.err(&at.key("threshold"), "must be between 0 and 1"));
            }
            let kind = match get_str(src, t, at, "kind")? {
                None => None,
                Some(k) => Some(parse_kind(k).ok_or_else(|| {
                    src.err(
                        &at.key("kind"),
                        "use number, yes-no, choice, final-line or open",
                    )
                })?),
            };
            Check::Consensus { threshold, kind }
        }
        "judge" => {
            let rubric = text_value("rubric")?;
            let model = match get_str(src, t, at, "model")?.or(default_judge) {
                Some(m) => m.to_string(),
                None => {
                    return Err(src.err(
                        at,
                        "`judge` needs `model` (or a suite-wide `judge = \"provider/model\"`)",
                    ))
                }
            };
            let threshold = number("threshold", 0.0)?;
            if threshold.is_some_and(|x| x > 1.0) {
                return Err(src.err(&at.key("threshold"), "must be between 0 and 1"));
            }
            Check::Judge {
                rubric,
                model,
                threshold,
            }
        }
        other => {
            return Err(src.err(
                &at.key("type"),
                format!(
                    "unknown assertion type {other:?}; use one of: {}",
                    ASSERT_TYPES.join(", ")
                ),
            ))
        }
    };
    Ok(Assertion::new(check))
}

type Rows = Vec<(usize, BTreeMap<String, String>)>;

/// Rows of a JSONL (one object per line) or CSV (a header row) dataset, with the line
/// each came from, and the file's bytes.
fn read_dataset(path: &Path) -> Result<(Rows, Vec<u8>), SuiteError> {
    let file = path.display().to_string();
    let bad = |line: Option<usize>, message: String| SuiteError {
        file: file.clone(),
        line,
        column: None,
        key: None,
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| {
        bad(
            None,
            match e.kind() {
                std::io::ErrorKind::NotFound => "no such file".into(),
                _ => format!("cannot be read ({e})"),
            },
        )
    })?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut rows = Vec::new();
    match ext.as_str() {
        "jsonl" | "ndjson" => {
            let text = std::str::from_utf8(&bytes).map_err(|_| bad(None, "is not UTF-8".into()))?;
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v: Json = serde_json::from_str(line)
                    .map_err(|e| bad(Some(n + 1), format!("not valid JSON ({e})")))?;
                let Json::Object(m) = v else {
                    return Err(bad(
                        Some(n + 1),
                        format!("expected a JSON object, got {}", type_name(&v)),
                    ));
                };
                let row = m
                    .into_iter()
                    .map(|(k, v)| {
                        let s = match v {
                            Json::String(s) => s,
                            v => v.to_string(),
                        };
                        (k, s)
                    })
                    .collect();
                rows.push((n + 1, row));
            }
        }
        "csv" => {
            let mut r = csv::ReaderBuilder::new()
                .flexible(false)
                .from_reader(&bytes[..]);
            let headers: Vec<String> = r
                .headers()
                .map_err(|e| bad(Some(1), format!("cannot read the header row ({e})")))?
                .iter()
                .map(|h| h.trim().to_string())
                .collect();
            if headers.iter().any(String::is_empty) {
                return Err(bad(
                    Some(1),
                    "a column of the header row has no name".into(),
                ));
            }
            for rec in r.records() {
                let rec = rec.map_err(|e| {
                    let line = e.position().map(|p| p.line() as usize);
                    bad(line, format!("not valid CSV ({e})"))
                })?;
                let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
                let row = headers
                    .iter()
                    .cloned()
                    .zip(rec.iter().map(str::to_string))
                    .collect();
                rows.push((line, row));
            }
        }
        _ => {
            return Err(bad(
                None,
                "a dataset must be a .jsonl or a .csv file".into(),
            ))
        }
    }
    Ok((rows, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Suite, SuiteError> {
        parse(text, Path::new("suite.toml"))
    }

    #[test]
    fn the_minimal_form_parses() {
        let s = parse_str(
            "targets = [\"mock/alpha\", \"mock/beta\"]\n[[cases]]\nprompt = \"What is 2+2? Answer with one number.\"\nassert = [{ type = \"contains\", value = \"4\" }]\n",
        )
        .unwrap();
        assert_eq!(s.targets, vec!["mock/alpha", "mock/beta"]);
        assert_eq!(s.cases.len(), 1);
        assert_eq!(s.cases[0].key, "case-1");
        assert_eq!(s.cases[0].asserts.len(), 1);
        assert_eq!(s.requests(), 2);
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = parse_str("targets = [\"mock/alpha\"]\n[[cases]]\nprompt = \"x\"\nassert = [{ type = \"containz\", value = \"4\" }]\n").unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert_eq!(e.key.as_deref(), Some("cases[0].assert[0].type"));
        let e =
            parse_str("targets = [\"mock/alpha\"]\n[[cases]]\nprompt = \"{{who}}\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("cases[0].prompt")),
            "{e}"
        );
        let e = parse_str(
            "targets = [\"a/b\"]\n[[cases]]\nprompt = \"x\"\noptions = { temperature = 9 }\n",
        )
        .unwrap_err();
        assert_eq!(
            e.key.as_deref(),
            Some("cases[0].options.temperature"),
            "{e}"
        );
        assert_eq!(e.line, Some(4));
        let e = parse_str("targets = [\"a/b\"\n").unwrap_err();
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn variables_fill() {
        let vars = BTreeMap::from([("a".to_string(), "1".to_string())]);
        assert_eq!(fill("x {{a}} {{ a }}", &vars).unwrap(), "x 1 1");
        assert!(fill("{{b}}", &vars).unwrap_err().contains("{{b}}"));
    }
}
