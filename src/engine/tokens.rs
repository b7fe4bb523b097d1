//! Counting tokens locally: exact for OpenAI's encodings, a labelled estimate for every
//! other family, and a cheap character estimate for the as-you-type path.
//!
//! Loading a BPE vocabulary takes about 0.2 s and 50 MB (o200k_base), so it happens once,
//! on first use, through tiktoken-rs's `*_singleton` functions, and only from functions
//! that count. Call them off the UI thread (or [`warm`] on a background thread);
//! [`quick_estimate`] never loads anything.

use std::sync::atomic::{AtomicBool, Ordering};

use super::event::{Completion, Usage};
use super::request::{ChatRequest, Role};

/// A BPE encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// gpt-4o, gpt-4.1, gpt-5, o-series.
    O200kBase,
    /// gpt-3.5, gpt-4.
    Cl100kBase,
}

impl Encoding {
    /// tiktoken's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        }
    }
}

/// A token count and how far to trust it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCount {
    /// Tokens.
    pub tokens: u64,
    /// True when the model's own encoding was used on plain text; false for other
    /// families (counted with o200k_base as a proxy) and for tool definitions.
    pub exact: bool,
    /// The encoding used.
    pub encoding: Encoding,
}

impl TokenCount {
    /// `exact (o200k_base)` or `estimate (o200k_base)`.
    pub fn label(&self) -> String {
        format!(
            "{} ({})",
            if self.exact { "exact" } else { "estimate" },
            self.encoding.as_str()
        )
    }
}

/// The encoding for `model` and whether it is the model's own. OpenRouter-style names
/// (`openai/gpt-4o-mini`) are understood; other families get o200k_base as an estimate.
pub fn encoding_for(model: &str) -> (Encoding, bool) {
    let m = model.strip_prefix("openai/").unwrap_or(model);
    let m = m.to_ascii_lowercase();
    let o200k = [
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "chatgpt-4o",
        "o1",
        "o3",
        "o4",
    ];
    if o200k.iter().any(|p| {
        m.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', '.', ':']))
    }) && !m.starts_with("gpt-oss")
    {
        return (Encoding::O200kBase, true);
    }
    if m.starts_with("gpt-3.5") || m.starts_with("gpt-35") {
        return (Encoding::Cl100kBase, true);
    }
    if let Some(rest) = m.strip_prefix("gpt-4") {
        if rest.is_empty() || rest.starts_with('-') {
            return (Encoding::Cl100kBase, true);
        }
    }
    (Encoding::O200kBase, false)
}

static O200K_LOADED: AtomicBool = AtomicBool::new(false);
static CL100K_LOADED: AtomicBool = AtomicBool::new(false);

fn bpe(enc: Encoding) -> &'static tiktoken_rs::CoreBPE {
    match enc {
        Encoding::O200kBase => {
            O200K_LOADED.store(true, Ordering::Relaxed);
            tiktoken_rs::o200k_base_singleton()
        }
        Encoding::Cl100kBase => {
            CL100K_LOADED.store(true, Ordering::Relaxed);
            tiktoken_rs::cl100k_base_singleton()
        }
    }
}

/// Whether this process has loaded `enc` (commands that count nothing never do).
pub fn is_loaded(enc: Encoding) -> bool {
    match enc {
        Encoding::O200kBase => O200K_LOADED.load(Ordering::Relaxed),
        Encoding::Cl100kBase => CL100K_LOADED.load(Ordering::Relaxed),
    }
}

/// Load `enc` now (call on a background thread to have it ready).
pub fn warm(enc: Encoding) {
    let _ = bpe(enc);
}

/// Tokens of `text` in `enc` (special-token text counts as ordinary text).
pub fn count_text(enc: Encoding, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    bpe(enc).encode_ordinary(text).len() as u64
}

/// Framing tokens per message and for priming the reply (OpenAI cookbook).
const PER_MESSAGE: u64 = 3;
const REPLY_PRIMING: u64 = 3;
/// Rough cost of declaring one tool beyond its JSON text.
const PER_TOOL: u64 = 10;

fn role_word(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

/// Prompt tokens of a whole request for `model`: messages with their framing, tool
/// calls and tool definitions.
pub fn count_request(model: &str, req: &ChatRequest) -> TokenCount {
    let (enc, mut exact) = encoding_for(model);
    let mut n = REPLY_PRIMING;
    for m in &req.messages {
        n += PER_MESSAGE
            + count_text(enc, role_word(m.role))
            + count_text(enc, &m.text_with_files());
        if let Some(name) = &m.name {
            n += 1 + count_text(enc, name);
        }
        for c in &m.tool_calls {
            n += 1 + count_text(enc, &c.name) + count_text(enc, &c.arguments.to_string());
        }
    }
    for t in &req.tools {
        exact = false;
        n += PER_TOOL
            + count_text(enc, &t.name)
            + count_text(enc, &t.description)
            + count_text(enc, &t.parameters.to_string());
    }
    TokenCount {
        tokens: n,
        exact,
        encoding: enc,
    }
}

/// Output tokens of a completion for `model`: text, thinking and tool calls.
pub fn count_output(model: &str, c: &Completion) -> TokenCount {
    let (enc, exact) = encoding_for(model);
    let mut n = count_text(enc, &c.text) + count_text(enc, &c.thinking);
    if let Some(r) = &c.refusal {
        n += count_text(enc, r);
    }
    for t in &c.tool_calls {
        n += 1 + count_text(enc, &t.name) + count_text(enc, &t.arguments);
    }
    TokenCount {
        tokens: n,
        exact,
        encoding: enc,
    }
}

/// Usage counted locally, for a provider that sent none.
pub fn estimate_usage(model: &str, req: &ChatRequest, c: &Completion) -> Usage {
    let input = count_request(model, req).tokens;
    let thinking = {
        let (enc, _) = encoding_for(model);
        count_text(enc, &c.thinking)
    };
    Usage {
        input_tokens: input,
        output_tokens: count_output(model, c).tokens,
        cached_input_tokens: 0,
        cache_creation_input_tokens: 0,
        reasoning_tokens: thinking,
        reported_cost_usd: None,
    }
}

/// A running, lower-leaning count of the tokens of a text fed in pieces, that
/// loads nothing: the figure shown while a stream runs and recorded for a
/// stream that never finished (cut, cancelled, timed out, capped).
///
/// It counts what every tokenizer in use must spend at least: one token per
/// word of up to 16 letters, one per 3 digits, one per 3 CJK characters, one
/// per 4 symbols standing alone (symbols glued to a word are taken to merge
/// with it, as `'t`, `),` or `.com` do), nothing for whitespace. Feeding the
/// text in pieces gives the same figure as feeding it whole, so a count taken
/// mid-stream never exceeds what the provider reports at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenEstimator {
    done: u64,
    class: u8,
    run: u64,
    /// The last class before the current run (for glued symbols).
    prev: u8,
}

const C_SPACE: u8 = 0;
const C_WORD: u8 = 1;
const C_DIGIT: u8 = 2;
const C_CJK: u8 = 3;
const C_SYM: u8 = 4;

fn char_class(c: char) -> u8 {
    if c.is_whitespace() {
        C_SPACE
    } else if c.is_ascii_digit() {
        C_DIGIT
    } else if is_cjk(c) {
        C_CJK
    } else if c.is_alphanumeric() {
        C_WORD
    } else {
        C_SYM
    }
}

/// [`char_class`] of each ASCII character, looked up rather than worked out:
/// streamed text is mostly ASCII and is counted as it arrives, chunk by chunk.
const ASCII_CLASS: [u8; 128] = {
    let mut t = [C_SYM; 128];
    let mut i = 0;
    while i < 128 {
        let c = i as u8;
        t[i] = if c == b' ' || (c >= 0x09 && c <= 0x0d) {
            C_SPACE
        } else if c.is_ascii_digit() {
            C_DIGIT
        } else if c.is_ascii_alphabetic() {
            C_WORD
        } else {
            C_SYM
        };
        i += 1;
    }
    t
};

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x3400..=0x4DBF    // CJK Extension A
        | 0x4E00..=0x9FFF    // CJK Unified
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0xF900..=0xFAFF    // CJK compatibility
        | 0x20000..=0x2FFFF) // CJK Extensions B+
}

impl TokenEstimator {
    /// A fresh count.
    pub fn new() -> Self {
        Self::default()
    }

    fn close_run(&mut self) {
        let n = self.run;
        self.done += match self.class {
            C_WORD => n.div_ceil(16),
            C_DIGIT => n.div_ceil(3),
            C_CJK => n.div_ceil(3),
            C_SYM if self.prev == C_SPACE => n.div_ceil(4),
            _ => 0,
        };
    }

    /// Feed the next piece of text.
    pub fn push(&mut self, s: &str) {
        if s.is_ascii() {
            for &b in s.as_bytes() {
                self.step(ASCII_CLASS[b as usize]);
            }
            return;
        }
        for ch in s.chars() {
            self.step(char_class(ch));
        }
    }

    #[inline]
    fn step(&mut self, c: u8) {
        if c != self.class {
            self.close_run();
            self.prev = self.class;
            self.class = c;
            self.run = 0;
        }
        self.run += 1;
    }

    /// The count so far.
    pub fn tokens(&self) -> u64 {
        let mut t = *self;
        t.close_run();
        t.done
    }

    /// The count of one whole text.
    pub fn count(s: &str) -> u64 {
        let mut t = TokenEstimator::new();
        t.push(s);
        t.tokens()
    }
}

/// Prompt tokens of a request counted with [`TokenEstimator`]: a lower-leaning
/// figure that loads nothing, for requests that never got the provider's count.
pub fn lower_estimate_request(req: &ChatRequest) -> u64 {
    let mut n = 0;
    for m in &req.messages {
        n += TokenEstimator::count(&m.content);
        for c in &m.tool_calls {
            n += TokenEstimator::count(&c.name) + TokenEstimator::count(&c.arguments.to_string());
        }
    }
    for t in &req.tools {
        n += TokenEstimator::count(&t.name)
            + TokenEstimator::count(&t.description)
            + TokenEstimator::count(&t.parameters.to_string());
    }
    n
}

/// A cheap upper-leaning estimate that loads nothing: ASCII characters / 4, plus one
/// token per other character (CJK runs close to one token per character; accented
/// Latin is over-counted, which suits a bound). For the as-you-type path.
pub fn quick_estimate(text: &str) -> u64 {
    let mut ascii = 0u64;
    let mut other = 0u64;
    for ch in text.chars() {
        if ch.is_ascii() {
            ascii += 1;
        } else {
            other += 1;
        }
    }
    ascii.div_ceil(4) + other
}

/// [`quick_estimate`] over a whole request, with message framing.
pub fn quick_estimate_request(req: &ChatRequest) -> u64 {
    let mut n = REPLY_PRIMING;
    for m in &req.messages {
        n += PER_MESSAGE + 1 + quick_estimate(&m.text_with_files());
        for c in &m.tool_calls {
            n += 1 + quick_estimate(&c.name) + quick_estimate(&c.arguments.to_string());
        }
    }
    for t in &req.tools {
        n += PER_TOOL
            + quick_estimate(&t.name)
            + quick_estimate(&t.description)
            + quick_estimate(&t.parameters.to_string());
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ascii_table_classes_as_char_class_does() {
        for b in 0u8..128 {
            assert_eq!(ASCII_CLASS[b as usize], char_class(b as char), "{b}");
        }
    }

    #[test]
    fn encodings_by_family() {
        assert_eq!(encoding_for("gpt-4o-mini"), (Encoding::O200kBase, true));
        assert_eq!(
            encoding_for("gpt-4o-mini-2024-07-18"),
            (Encoding::O200kBase, true)
        );
        assert_eq!(encoding_for("gpt-4.1-nano"), (Encoding::O200kBase, true));
        assert_eq!(encoding_for("gpt-5"), (Encoding::O200kBase, true));
        assert_eq!(encoding_for("o3"), (Encoding::O200kBase, true));
        assert_eq!(encoding_for("o4-mini"), (Encoding::O200kBase, true));
        assert_eq!(encoding_for("openai/gpt-4o"), (Encoding::O200kBase, true));
        assert_eq!(encoding_for("gpt-4"), (Encoding::Cl100kBase, true));
        assert_eq!(encoding_for("gpt-4-turbo"), (Encoding::Cl100kBase, true));
        assert_eq!(encoding_for("gpt-3.5-turbo"), (Encoding::Cl100kBase, true));
        assert_eq!(
            encoding_for("claude-haiku-4-5"),
            (Encoding::O200kBase, false)
        );
        assert_eq!(
            encoding_for("gemini-2.5-flash"),
            (Encoding::O200kBase, false)
        );
        assert_eq!(encoding_for("gpt-oss-20b"), (Encoding::O200kBase, false));
        assert_eq!(encoding_for("o3x"), (Encoding::O200kBase, false));
    }

    #[test]
    fn running_estimate_is_a_lower_bound_and_split_invariant() {
        let text = "Hello, world! Don't panic: see https://example.com/a?b=1 — 2024 \
            **bold** 日本語のテキスト {\"city\": \"Paris\"} internationalization 🕵️‍♀️";
        let whole = TokenEstimator::count(text);
        for cut in (0..text.len()).filter(|i| text.is_char_boundary(*i)) {
            let mut t = TokenEstimator::new();
            t.push(&text[..cut]);
            t.push(&text[cut..]);
            assert_eq!(t.tokens(), whole, "cut {cut}");
        }
        let exact = count_text(Encoding::O200kBase, text);
        assert!(whole > 10 && whole <= exact, "{whole} vs {exact}");
        assert_eq!(TokenEstimator::count(""), 0);
        assert_eq!(TokenEstimator::count("the"), 1);
    }

    #[test]
    fn quick_estimate_is_cheap_and_sane() {
        assert_eq!(quick_estimate(""), 0);
        assert_eq!(quick_estimate("abcd"), 1);
        assert_eq!(quick_estimate("abcde"), 2);
        assert_eq!(quick_estimate("日本語"), 3);
    }
}
