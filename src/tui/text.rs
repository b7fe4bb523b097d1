//! Transcripts: blocks of streamed text, word-wrapped incrementally.
//!
//! Each block keeps its raw text, the wrapped lines of every completed logical
//! line (rendered once, with basic markdown), and an incremental wrapper for
//! the line still being streamed. Appending costs what was appended; drawing
//! costs what is visible; only a width change re-wraps a whole block.

use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use unicode_width::UnicodeWidthChar;

use super::theme::Theme;

/// What a block holds; decides its styling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// The user's prompt.
    User,
    /// Answer text (markdown).
    Answer,
    /// Thinking text (dim, collapsible).
    Thinking,
    /// A tool call with its arguments.
    Tool,
    /// An error.
    Error,
    /// A note from quorum itself (continue, retry, ...).
    Notice,
}

/// Greedy word wrapper fed one character at a time. The line being filled is
/// kept as text plus style runs, so pushing a character is a byte copy.
#[derive(Debug, Clone)]
pub struct Wrapper {
    width: usize,
    hard: bool,
    text: String,
    runs: Vec<(usize, Style)>,
    cur_w: usize,
    fixed: usize,
    indent: String,
    indent_runs: Vec<(usize, Style)>,
    indent_w: usize,
    out: Rows,
}

fn str_width(s: &str) -> usize {
    if s.is_ascii() {
        s.len()
    } else {
        s.chars().map(|c| c.width().unwrap_or(0)).sum()
    }
}

fn push_run(text: &mut String, runs: &mut Vec<(usize, Style)>, s: &str, style: Style) {
    text.push_str(s);
    match runs.last_mut() {
        Some((end, st)) if *st == style => *end = text.len(),
        _ => runs.push((text.len(), style)),
    }
}

fn build(parts: &[(&str, Style)]) -> (String, Vec<(usize, Style)>, usize) {
    let mut text = String::new();
    let mut runs = Vec::new();
    for (s, st) in parts {
        if !s.is_empty() {
            push_run(&mut text, &mut runs, s, *st);
        }
    }
    let w = str_width(&text);
    (text, runs, w)
}

/// The spans of `text[..limit]`.
fn runs_to_line(text: &str, runs: &[(usize, Style)], limit: usize) -> Line<'static> {
    let mut spans = Vec::with_capacity(runs.len());
    let mut start = 0;
    for &(end, style) in runs {
        let e = end.min(limit);
        if e > start {
            spans.push(Span::styled(text[start..e].to_string(), style));
        }
        start = end;
        if start >= limit {
            break;
        }
    }
    Line::from(spans)
}

/// Wrapped rows stored flat: one text buffer and one list of style runs for
/// all of them, so a transcript of 100k rows is a handful of allocations and a
/// row becomes a `Line` only when it is drawn.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    text: String,
    runs: Vec<(usize, Style)>,
    /// Per row: (end of its text, end of its runs).
    ends: Vec<(usize, usize)>,
}

impl Rows {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Add the row `text[..limit]` styled by `runs` (ends into `text`).
    fn push(&mut self, text: &str, runs: &[(usize, Style)], limit: usize) {
        // Runs merge only within this row.
        let row_runs = self.ends.last().map(|r| r.1).unwrap_or(0);
        let mut start = 0;
        for &(end, style) in runs {
            let e = end.min(limit);
            if e > start {
                self.text.push_str(&text[start..e]);
                let mine = self.runs.len() > row_runs;
                match self.runs.last_mut() {
                    Some((end, st)) if mine && *st == style => *end = self.text.len(),
                    _ => self.runs.push((self.text.len(), style)),
                }
            }
            start = end;
            if start >= limit {
                break;
            }
        }
        self.ends.push((self.text.len(), self.runs.len()));
    }

    /// Add a whole styled row.
    fn push_styled(&mut self, text: &str, style: Style) {
        self.push(text, &[(text.len(), style)], text.len());
    }

    /// Append every row of `other`.
    fn extend(&mut self, other: &Rows) {
        let (tb, rb) = (self.text.len(), self.runs.len());
        self.text.push_str(&other.text);
        self.runs
            .extend(other.runs.iter().map(|&(e, st)| (e + tb, st)));
        self.ends
            .extend(other.ends.iter().map(|&(t, r)| (t + tb, r + rb)));
    }

    /// Row `i` as a line.
    pub fn line(&self, i: usize) -> Line<'static> {
        let (ts, rs) = if i == 0 { (0, 0) } else { self.ends[i - 1] };
        let (_, re) = self.ends[i];
        let mut start = ts;
        let spans: Vec<Span<'static>> = self.runs[rs..re]
            .iter()
            .map(|&(end, style)| {
                let s = Span::styled(self.text[start..end].to_string(), style);
                start = end;
                s
            })
            .collect();
        Line::from(spans)
    }
}

impl Wrapper {
    /// A wrapper for `width` columns; `prefix` starts the first line, `indent`
    /// every continuation line; `hard` breaks anywhere (code) instead of at spaces.
    pub fn new(
        width: usize,
        prefix: &[(&str, Style)],
        indent: &[(&str, Style)],
        hard: bool,
    ) -> Self {
        let width = width.max(1);
        // Decoration that leaves no room for a wide character is dropped.
        let (mut text, mut runs, mut pw) = build(prefix);
        if pw + 2 > width {
            text.clear();
            runs.clear();
            pw = 0;
        }
        let (mut indent, mut indent_runs, mut iw) = build(indent);
        if iw + 2 > width {
            indent.clear();
            indent_runs.clear();
            iw = 0;
        }
        Wrapper {
            width,
            hard,
            fixed: text.len(),
            text,
            runs,
            cur_w: pw,
            indent,
            indent_runs,
            indent_w: iw,
            out: Rows::default(),
        }
    }

    /// Feed text in one style.
    pub fn push_str(&mut self, s: &str, style: Style) {
        for ch in s.chars() {
            self.push(ch, style);
        }
    }

    /// Feed one character.
    pub fn push(&mut self, ch: char, style: Style) {
        if ch == '\t' {
            for _ in 0..4 {
                self.push(' ', style);
            }
            return;
        }
        let w = if ch.is_ascii() {
            if ch.is_ascii_control() {
                return;
            }
            1
        } else if ch.is_control() {
            return;
        } else {
            ch.width().unwrap_or(0)
        };
        if w == 0 {
            if !self.text.is_empty() {
                self.push_char(ch, style);
            }
            return;
        }
        if self.cur_w + w > self.width && self.text.len() > self.fixed {
            if ch == ' ' && !self.hard {
                self.break_line(None);
                return;
            }
            let split = if self.hard {
                None
            } else {
                // A space right after the prefix would leave an empty line: break hard instead.
                self.text[self.fixed..]
                    .rfind(' ')
                    .filter(|p| *p > 0)
                    .map(|p| p + self.fixed)
            };
            self.break_line(split);
            // The word carried over may still not leave room: break it.
            if self.cur_w + w > self.width && self.text.len() > self.fixed {
                self.break_line(None);
            }
        }
        self.push_char(ch, style);
        self.cur_w += w;
    }

    fn push_char(&mut self, ch: char, style: Style) {
        self.text.push(ch);
        match self.runs.last_mut() {
            Some((end, st)) if *st == style => *end = self.text.len(),
            _ => self.runs.push((self.text.len(), style)),
        }
    }

    fn break_line(&mut self, split: Option<usize>) {
        let text = std::mem::replace(&mut self.text, self.indent.clone());
        let runs = std::mem::replace(&mut self.runs, self.indent_runs.clone());
        self.fixed = self.text.len();
        self.cur_w = self.indent_w;
        match split {
            Some(p) => {
                self.out.push(&text, &runs, p);
                // The word after the space moves to the new line.
                let mut start = 0;
                for &(end, style) in &runs {
                    let s = start.max(p + 1);
                    if end > s {
                        let seg = &text[s..end];
                        self.cur_w += str_width(seg);
                        push_run(&mut self.text, &mut self.runs, seg, style);
                    }
                    start = end;
                }
            }
            None => self.out.push(&text, &runs, text.len()),
        }
    }

    /// Rows finished so far (the partial last row is not among them).
    pub fn done(&self) -> &Rows {
        &self.out
    }

    /// Whether the partial line holds anything beyond its prefix.
    pub fn has_partial(&self) -> bool {
        self.text.len() > self.fixed
    }

    /// The partial last line.
    pub fn partial(&self) -> Line<'static> {
        runs_to_line(&self.text, &self.runs, self.text.len())
    }

    /// Every row, the partial one included (at least one row).
    pub fn finish_rows(mut self) -> Rows {
        if self.has_partial() || self.out.is_empty() {
            let n = self.text.len();
            self.out.push(&self.text, &self.runs, n);
        }
        self.out
    }

    /// Every row as lines (tests, small texts).
    pub fn finish(self) -> Vec<Line<'static>> {
        let rows = self.finish_rows();
        (0..rows.len()).map(|i| rows.line(i)).collect()
    }
}

/// Styles a block's text is drawn with (taken from the theme once).
#[derive(Debug, Clone, Copy, Default)]
pub struct TextStyles {
    /// Answer text.
    pub text: Style,
    /// Prompt text.
    pub user: Style,
    /// Thinking text.
    pub thinking: Style,
    /// Tool calls.
    pub tool: Style,
    /// Errors.
    pub error: Style,
    /// Notices.
    pub notice: Style,
    /// Headings.
    pub heading: Style,
    /// Inline and fenced code.
    pub code: Style,
    /// Gutters, rules, list bullets.
    pub dim: Style,
    /// Links.
    pub link: Style,
}

impl TextStyles {
    /// From a theme.
    pub fn from_theme(t: &Theme) -> Self {
        TextStyles {
            text: t.text,
            user: t.user,
            thinking: t.thinking,
            tool: t.tool,
            error: t.error,
            notice: t.notice,
            heading: t.heading,
            code: t.code,
            dim: t.dim,
            link: t.link,
        }
    }

    fn base(&self, kind: BlockKind) -> Style {
        match kind {
            BlockKind::User => self.user,
            BlockKind::Answer => self.text,
            BlockKind::Thinking => self.thinking,
            BlockKind::Tool => self.tool,
            BlockKind::Error => self.error,
            BlockKind::Notice => self.notice,
        }
    }
}

type Parts<'a> = Vec<(&'a str, Style)>;

/// One block of a transcript.
#[derive(Debug, Clone)]
pub struct Block {
    /// What it holds.
    pub kind: BlockKind,
    raw: String,
    line_start: usize,
    in_code: bool,
    descs: Vec<LineDesc>,
    lines: Rows,
    open: Wrapper,
    open_code: bool,
    width: usize,
    closed: bool,
}

impl Block {
    fn new(kind: BlockKind, width: usize, st: &TextStyles) -> Self {
        let mut b = Block {
            kind,
            raw: String::new(),
            line_start: 0,
            in_code: false,
            descs: Vec::new(),
            lines: Rows::default(),
            open: Wrapper::new(width, &[], &[], false),
            open_code: false,
            width,
            closed: false,
        };
        b.reset_open(st);
        b
    }

    /// No more text comes: render the last line as a finished one (markdown).
    fn close(&mut self, st: &TextStyles) {
        if self.closed {
            return;
        }
        self.closed = true;
        if self.line_start < self.raw.len() {
            let (start, end) = (self.line_start, self.raw.len());
            self.finish_line(start, end, st);
            self.line_start = end;
            self.reset_open(st);
        }
    }

    /// The raw text.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    fn reset_open(&mut self, st: &TextStyles) {
        let (prefix, indent, hard): (Parts<'_>, Parts<'_>, bool) = if self.in_code {
            (vec![("│ ", st.dim)], vec![("│ ", st.dim)], true)
        } else if self.kind == BlockKind::User && self.line_start == 0 {
            (vec![("› ", st.user)], vec![("  ", st.user)], false)
        } else if self.kind == BlockKind::User {
            (vec![("  ", st.user)], vec![("  ", st.user)], false)
        } else {
            (vec![], vec![], false)
        };
        self.open = Wrapper::new(self.width, &prefix, &indent, hard);
        self.open_code = self.in_code;
    }

    fn push(&mut self, s: &str, st: &TextStyles) {
        if self.closed {
            // Reopened (a late fragment): the closed last line stays as rendered.
            self.closed = false;
        }
        let mut rest = s;
        while !rest.is_empty() {
            match memchr::memchr(b'\n', rest.as_bytes()) {
                Some(nl) => {
                    let (piece, after) = rest.split_at(nl);
                    self.raw.push_str(piece);
                    let end = self.raw.len();
                    self.raw.push('\n');
                    self.finish_line(self.line_start, end, st);
                    self.line_start = self.raw.len();
                    self.reset_open(st);
                    rest = &after[1..];
                }
                None => {
                    self.raw.push_str(rest);
                    let style = if self.open_code {
                        st.code
                    } else {
                        st.base(self.kind)
                    };
                    self.open.push_str(rest, style);
                    rest = "";
                }
            }
        }
    }

    fn finish_line(&mut self, start: usize, end: usize, st: &TextStyles) {
        let d = describe_line(
            &self.raw[start..end],
            self.kind,
            start == 0,
            &mut self.in_code,
            st,
        );
        wrap_desc(&d, self.width, st, &mut self.lines);
        self.descs.push(d);
    }

    fn set_width(&mut self, width: usize, st: &TextStyles) {
        let width = width.max(1);
        if width == self.width {
            return;
        }
        self.width = width;
        let mut lines = Rows::default();
        lines
            .text
            .reserve(self.lines.text.len() + self.lines.text.len() / 8);
        for d in &self.descs {
            wrap_desc(d, width, st, &mut lines);
        }
        self.lines = lines;
        // The open line: `in_code` is already the state at its start.
        self.reset_open(st);
        let style = if self.open_code {
            st.code
        } else {
            st.base(self.kind)
        };
        let start = self.line_start;
        let raw = std::mem::take(&mut self.raw);
        self.open.push_str(&raw[start..], style);
        self.raw = raw;
    }

    /// Visual lines at the current width.
    pub fn len(&self) -> usize {
        self.lines.len() + self.open.done().len() + usize::from(self.open.has_partial())
    }

    /// Whether the block shows nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The visual line `i` (< len).
    pub fn line(&self, i: usize) -> Line<'static> {
        if i < self.lines.len() {
            return self.lines.line(i);
        }
        let j = i - self.lines.len();
        let done = self.open.done();
        if j < done.len() {
            done.line(j)
        } else {
            self.open.partial()
        }
    }
}

/// A completed logical line, parsed once: what it says and how it is set,
/// independent of the width (a resize only wraps these again).
#[derive(Debug, Clone)]
enum LineDesc {
    Blank,
    Rule,
    Text {
        lead: usize,
        prefix: String,
        indent: String,
        pstyle: Style,
        hard: bool,
        spans: Vec<(String, Style)>,
    },
}

const SPACES: &str = "                ";

fn wrap_desc(d: &LineDesc, width: usize, st: &TextStyles, out: &mut Rows) {
    match d {
        LineDesc::Blank => out.push("", &[], 0),
        LineDesc::Rule => out.push_styled(&"─".repeat(width.min(40)), st.dim),
        LineDesc::Text {
            lead,
            prefix,
            indent,
            pstyle,
            hard,
            spans,
        } => {
            let lead = &SPACES[..(*lead).min(width / 2).min(SPACES.len())];
            let p = [(lead, *pstyle), (prefix.as_str(), *pstyle)];
            let i = [(lead, *pstyle), (indent.as_str(), *pstyle)];
            let mut w = Wrapper::new(width, &p, &i, *hard);
            for (s, style) in spans {
                w.push_str(s, *style);
            }
            out.extend(&w.finish_rows());
        }
    }
}

fn plain(
    prefix: &str,
    indent: &str,
    pstyle: Style,
    hard: bool,
    text: &str,
    style: Style,
) -> LineDesc {
    LineDesc::Text {
        lead: 0,
        prefix: prefix.to_string(),
        indent: indent.to_string(),
        pstyle,
        hard,
        spans: vec![(text.to_string(), style)],
    }
}

/// Parse one completed logical line of a block.
fn describe_line(
    text: &str,
    kind: BlockKind,
    first: bool,
    in_code: &mut bool,
    st: &TextStyles,
) -> LineDesc {
    let base = st.base(kind);
    match kind {
        BlockKind::User => {
            let p = if first { "› " } else { "  " };
            return plain(p, "  ", st.user, false, text, base);
        }
        BlockKind::Answer => {}
        _ => return plain("", "", base, false, text, base),
    }
    let trimmed = text.trim_start();
    if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
        let opening = !*in_code;
        *in_code = opening;
        let label = trimmed.trim_start_matches(['`', '~']).trim();
        let s = if opening {
            if label.is_empty() {
                "╭─".to_string()
            } else {
                format!("╭─ {label}")
            }
        } else {
            "╰─".to_string()
        };
        return plain("", "", st.dim, true, &s, st.dim);
    }
    if *in_code {
        return plain("│ ", "│ ", st.dim, true, text, st.code);
    }
    if trimmed.is_empty() {
        return LineDesc::Blank;
    }
    if trimmed.len() >= 3
        && trimmed
            .chars()
            .all(|c| c == '-' || c == '*' || c == '_' || c == ' ')
        && trimmed
            .chars()
            .filter(|c| *c != ' ')
            .all(|c| trimmed.starts_with(c))
    {
        return LineDesc::Rule;
    }
    let lead = text.len() - trimmed.len();
    // Heading.
    let hashes = trimmed.bytes().take_while(|b| *b == b'#').count();
    if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
        let content = trimmed[hashes..].trim();
        let mut hs = st.heading;
        if hashes == 1 {
            hs = hs.add_modifier(Modifier::UNDERLINED);
        }
        return LineDesc::Text {
            lead: 0,
            prefix: String::new(),
            indent: String::new(),
            pstyle: hs,
            hard: false,
            spans: inline_spans(content, hs, st),
        };
    }
    // Lists and quotes.
    let (bullet, content): (Option<String>, &str) = if let Some(r) = trimmed
        .strip_prefix("- ")
        .or_else(|| trimmed.strip_prefix("* "))
        .or_else(|| trimmed.strip_prefix("+ "))
    {
        (Some("• ".into()), r)
    } else {
        let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
        let after = &trimmed[digits..];
        if (1..=9).contains(&digits) && (after.starts_with(". ") || after.starts_with(") ")) {
            (Some(format!("{}. ", &trimmed[..digits])), &after[2..])
        } else {
            (None, trimmed)
        }
    };
    let quote = bullet.is_none() && trimmed.starts_with('>');
    let content = if quote {
        trimmed.trim_start_matches('>').trim_start()
    } else {
        content
    };
    let (prefix, indent) = match (&bullet, quote) {
        (Some(b), _) => (b.clone(), " ".repeat(b.chars().count())),
        (None, true) => ("▎ ".to_string(), "▎ ".to_string()),
        (None, false) => (String::new(), String::new()),
    };
    let pstyle = if bullet.is_some() || quote {
        st.dim
    } else {
        base
    };
    let body = if quote {
        base.add_modifier(Modifier::ITALIC)
    } else {
        base
    };
    LineDesc::Text {
        lead,
        prefix,
        indent,
        pstyle,
        hard: false,
        spans: inline_spans(content, body, st),
    }
}

/// Inline markdown (emphasis, strong, code, links) of one line.
fn inline_spans(text: &str, base: Style, st: &TextStyles) -> Vec<(String, Style)> {
    use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
    if !text
        .bytes()
        .any(|b| matches!(b, b'*' | b'_' | b'`' | b'[' | b'~' | b'<' | b'&' | b'\\'))
    {
        return vec![(text.to_string(), base)];
    }
    let mut out: Vec<(String, Style)> = Vec::new();
    let (mut strong, mut em, mut strike, mut link) = (0u32, 0u32, 0u32, 0u32);
    let style_now = |strong: u32, em: u32, strike: u32, link: u32| {
        let mut s = base;
        if strong > 0 {
            s = s.add_modifier(Modifier::BOLD);
        }
        if em > 0 {
            s = s.add_modifier(Modifier::ITALIC);
        }
        if strike > 0 {
            s = s.add_modifier(Modifier::CROSSED_OUT);
        }
        if link > 0 {
            s = s.patch(st.link);
        }
        s
    };
    for ev in Parser::new_ext(text, Options::ENABLE_STRIKETHROUGH) {
        match ev {
            Event::Text(t) | Event::Html(t) | Event::InlineHtml(t) => {
                out.push((t.to_string(), style_now(strong, em, strike, link)))
            }
            Event::Code(t) => out.push((t.to_string(), st.code)),
            Event::SoftBreak | Event::HardBreak => out.push((" ".into(), base)),
            Event::Start(Tag::Strong) => strong += 1,
            Event::End(TagEnd::Strong) => strong = strong.saturating_sub(1),
            Event::Start(Tag::Emphasis) => em += 1,
            Event::End(TagEnd::Emphasis) => em = em.saturating_sub(1),
            Event::Start(Tag::Strikethrough) => strike += 1,
            Event::End(TagEnd::Strikethrough) => strike = strike.saturating_sub(1),
            Event::Start(Tag::Link { .. }) => link += 1,
            Event::End(TagEnd::Link) => link = link.saturating_sub(1),
            _ => {}
        }
    }
    if out.iter().all(|(s, _)| s.trim().is_empty()) {
        return vec![(text.to_string(), base)];
    }
    out
}

/// A transcript: blocks, wrapped at one width.
#[derive(Debug, Clone)]
pub struct Doc {
    blocks: Vec<Block>,
    width: usize,
    styles: TextStyles,
    /// Blind mode: blocks before this one and every thinking block are not
    /// shown (earlier turns and thinking would tell who wrote what).
    blind_from: Option<usize>,
}

/// One visual row of a transcript as laid out.
enum Row<'a> {
    Blank,
    Summary(&'a Block),
    Line(&'a Block, usize),
}

impl Doc {
    /// An empty transcript.
    pub fn new(styles: TextStyles) -> Self {
        Doc {
            blocks: Vec::new(),
            width: 80,
            styles,
            blind_from: None,
        }
    }

    /// Start a new block; returns its index.
    pub fn add(&mut self, kind: BlockKind, text: &str) -> usize {
        let mut b = Block::new(kind, self.width, &self.styles);
        b.push(text, &self.styles);
        self.blocks.push(b);
        self.blocks.len() - 1
    }

    /// Append text to block `i`.
    pub fn append(&mut self, i: usize, text: &str) {
        if let Some(b) = self.blocks.get_mut(i) {
            b.push(text, &self.styles);
        }
    }

    /// Close every block: the last lines get their markdown.
    pub fn close_all(&mut self) {
        for b in &mut self.blocks {
            b.close(&self.styles);
        }
    }

    /// Drop blocks from `i` on.
    pub fn truncate(&mut self, i: usize) {
        self.blocks.truncate(i);
    }

    /// Show only blocks from `from` on, and no thinking (blind mode); None shows all.
    pub fn set_blind_from(&mut self, from: Option<usize>) {
        self.blind_from = from;
    }

    /// Where blind mode starts showing, if on.
    pub fn blind_from(&self) -> Option<usize> {
        self.blind_from
    }

    /// Number of blocks.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// Re-wrap for `width` columns (does nothing when unchanged).
    pub fn set_width(&mut self, width: usize) {
        let width = width.max(1);
        if width == self.width {
            return;
        }
        self.width = width;
        for b in &mut self.blocks {
            b.set_width(width, &self.styles);
        }
    }

    /// The width lines are wrapped at.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Bytes of text held.
    pub fn raw_len(&self) -> usize {
        self.blocks.iter().map(|b| b.raw.len()).sum()
    }

    fn segments(&self, show_thinking: bool) -> impl Iterator<Item = (usize, &Block, bool)> {
        // (visual rows, block, blank line before it)
        let from = self.blind_from;
        self.blocks.iter().enumerate().filter_map(move |(i, b)| {
            if let Some(f) = from {
                if i < f || b.kind == BlockKind::Thinking {
                    return None;
                }
            }
            let first = from.map_or(0, |f| f);
            let blank = i > first && matches!(b.kind, BlockKind::User | BlockKind::Notice);
            let rows = if b.kind == BlockKind::Thinking && !show_thinking {
                if b.raw.is_empty() {
                    0
                } else {
                    1
                }
            } else {
                b.len() + usize::from(b.kind == BlockKind::Thinking && !b.raw.is_empty())
            };
            if rows == 0 {
                return None;
            }
            Some((rows + usize::from(blank), b, blank))
        })
    }

    /// Visual rows in total.
    pub fn total_lines(&self, show_thinking: bool) -> usize {
        self.segments(show_thinking).map(|(n, _, _)| n).sum()
    }

    /// Rows `top..top + height`.
    pub fn visible(&self, top: usize, height: usize, show_thinking: bool) -> Vec<Line<'static>> {
        let mut rows: Vec<Row<'_>> = Vec::with_capacity(height);
        let mut skip = top;
        for (n, b, blank) in self.segments(show_thinking) {
            if rows.len() >= height {
                break;
            }
            if skip >= n {
                skip -= n;
                continue;
            }
            let thinking = b.kind == BlockKind::Thinking;
            for r in skip..n {
                if rows.len() >= height {
                    break;
                }
                let r2 = if blank {
                    if r == 0 {
                        rows.push(Row::Blank);
                        continue;
                    }
                    r - 1
                } else {
                    r
                };
                if thinking {
                    if r2 == 0 || !show_thinking {
                        rows.push(Row::Summary(b));
                    } else {
                        rows.push(Row::Line(b, r2 - 1));
                    }
                } else {
                    rows.push(Row::Line(b, r2));
                }
            }
            skip = 0;
        }
        rows.into_iter()
            .map(|r| match r {
                Row::Blank => Line::default(),
                Row::Summary(b) => {
                    let toks = crate::engine::tokens::quick_estimate(&b.raw);
                    let arrow = if show_thinking { "▾" } else { "▸" };
                    Line::styled(
                        format!("{arrow} thinking · ~{toks} tok"),
                        self.styles.thinking.add_modifier(Modifier::BOLD),
                    )
                }
                Row::Line(b, i) => b.line(i),
            })
            .collect()
    }
}

/// `s` padded or cut (with …) to `w` columns.
pub fn fit(s: &str, w: usize) -> String {
    if unicode_width::UnicodeWidthStr::width(s) <= w {
        return format!("{s:<w$}");
    }
    let mut out = String::new();
    let mut used = 0;
    for ch in s.chars() {
        let cw = unicode_width::UnicodeWidthChar::width(ch).unwrap_or(0);
        if used + cw + 1 > w {
            break;
        }
        out.push(ch);
        used += cw;
    }
    out.push('…');
    used += 1;
    out.push_str(&" ".repeat(w.saturating_sub(used)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(lines: &[Line<'_>]) -> Vec<String> {
        lines.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn wraps_at_spaces_and_hard_breaks_long_words() {
        let mut w = Wrapper::new(10, &[], &[], false);
        w.push_str("hello world this is longwordlongword end", Style::default());
        assert_eq!(
            text(&w.finish()),
            ["hello", "world this", "is", "longwordlo", "ngword end"]
        );
    }

    #[test]
    fn incremental_matches_whole() {
        let st = TextStyles::default();
        let s = "The quick brown fox jumps over the lazy dog. ".repeat(20);
        let mut a = Doc::new(st);
        a.set_width(17);
        let i = a.add(BlockKind::Answer, "");
        for chunk in s.as_bytes().chunks(3) {
            a.append(i, std::str::from_utf8(chunk).unwrap());
        }
        let mut b = Doc::new(st);
        b.set_width(17);
        b.add(BlockKind::Answer, &s);
        let n = a.total_lines(true);
        assert_eq!(n, b.total_lines(true));
        assert_eq!(text(&a.visible(0, n, true)), text(&b.visible(0, n, true)));
    }

    #[test]
    fn markdown_basics() {
        let st = TextStyles::default();
        let mut d = Doc::new(st);
        d.set_width(40);
        d.add(
            BlockKind::Answer,
            "# Title\n- one **bold**\n1. first\n```rust\nfn main() {}\n```\nplain `code`\n",
        );
        let n = d.total_lines(true);
        assert_eq!(
            text(&d.visible(0, n, true)),
            [
                "Title",
                "• one bold",
                "1. first",
                "╭─ rust",
                "│ fn main() {}",
                "╰─",
                "plain code"
            ]
        );
    }

    #[test]
    fn long_numbers_and_open_code_survive_a_resize() {
        let st = TextStyles::default();
        let mut d = Doc::new(st);
        d.set_width(40);
        let i = d.add(BlockKind::Answer, "10. tenth\n```\nlet x = 1;\nlet y");
        d.set_width(30);
        d.append(i, " = 2;\n```\nafter");
        d.close_all();
        let n = d.total_lines(true);
        assert_eq!(
            text(&d.visible(0, n, true)),
            [
                "10. tenth",
                "╭─",
                "│ let x = 1;",
                "│ let y = 2;",
                "╰─",
                "after"
            ]
        );
    }

    #[test]
    fn resize_rewraps_and_thinking_collapses() {
        let st = TextStyles::default();
        let mut d = Doc::new(st);
        d.add(BlockKind::Thinking, "let me think about it a while");
        d.add(BlockKind::Answer, "aaaa bbbb cccc dddd");
        d.set_width(9);
        assert_eq!(d.total_lines(false), 1 + 2);
        assert_eq!(d.total_lines(true), 1 + 4 + 2);
        d.set_width(100);
        assert_eq!(d.total_lines(true), 1 + 1 + 1);
        let v = text(&d.visible(0, 10, false));
        assert!(v[0].starts_with("▸ thinking"));
    }

    #[test]
    fn tiny_widths_and_huge_lines_do_not_panic() {
        let st = TextStyles::default();
        let mut d = Doc::new(st);
        d.set_width(1);
        let i = d.add(BlockKind::Answer, "日本語 wide ✓ chars\t\u{301}x");
        d.append(i, &"x".repeat(100_000));
        assert!(d.total_lines(true) > 1000);
        d.set_width(0);
        d.set_width(3);
        let _ = d.visible(usize::MAX / 2, 5, true);
        let _ = d.visible(0, 0, true);
    }
}
