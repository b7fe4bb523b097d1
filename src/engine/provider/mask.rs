//! Masking the secrets we know in everything an upstream sends back.
//!
//! An upstream (a provider, a proxy, a compromised endpoint) may echo the key
//! in an error body, a stream field or a header. Every string taken from an
//! upstream goes through a [`Masker`] *before* it is cut, copied or stored, so
//! a cut can never leave a fragment of a key behind.
//!
//! The secrets are the ones we sent: the API key (from a variable or an
//! `api_key_cmd`) and the values of credential headers (`Authorization`,
//! `x-api-key`, any header whose name says key, token, secret, auth, password
//! or cookie; the config only accepts those from `${VAR}`). Other header
//! values are not secrets and are not masked, so `malformed` stays readable.
//!
//! Each secret is searched in the forms an echo takes: plain, JSON-escaped
//! (with and without `\/`), URL-encoded (upper- and lower-case hex), and
//! base64 (standard and URL-safe alphabets) at each of the three alignments
//! a secret can have inside a larger encoded blob such as `user:key` of
//! HTTP Basic auth; a base64 match masks the whole base64 run around it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use base64::Engine as _;

use super::{ProviderSpec, Secret};
use crate::engine::error::EngineError;

/// What replaces a secret.
pub const MASK: &str = "***";

/// Secrets shorter than this are not searched (they would garble text and
/// are no secret worth the name).
const MIN_SECRET: usize = 4;

/// A compiled set of secrets and their encodings.
#[derive(Clone, Default)]
pub struct Masker {
    ac: Option<AhoCorasick>,
    /// Per pattern: whether it is a base64 core (the match is widened to
    /// the surrounding base64 run).
    widen: Vec<bool>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field("patterns", &self.widen.len())
            .finish()
    }
}

fn is_b64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_')
}

/// Characters that end a word for [`cut`]: a cut inside a word drops the
/// whole word, since a word cut short may be a secret cut short.
fn is_delim(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '"' | '\'' | '<' | '>' | '{' | '}' | '[' | ']' | '(' | ')' | ',' | ';'
        )
}

/// The encoded forms of one secret (the plain one first).
pub fn forms(secret: &str) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = Vec::new();
    let add = |s: String, widen: bool, out: &mut Vec<(String, bool)>| {
        if s.len() >= MIN_SECRET && !out.iter().any(|(o, _)| *o == s) {
            out.push((s, widen));
        }
    };
    add(secret.to_string(), false, &mut out);
    if let Ok(j) = serde_json::to_string(secret) {
        let inner = j[1..j.len() - 1].to_string();
        add(inner.replace('/', "\\/"), false, &mut out);
        add(inner, false, &mut out);
    }
    let mut upper = String::new();
    let mut lower = String::new();
    for b in secret.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            upper.push(b as char);
            lower.push(b as char);
        } else {
            upper.push_str(&format!("%{b:02X}"));
            lower.push_str(&format!("%{b:02x}"));
        }
    }
    add(upper, false, &mut out);
    add(lower, false, &mut out);
    let bytes = secret.as_bytes();
    for shift in 0..3usize {
        if bytes.len() <= shift {
            break;
        }
        let rest = &bytes[shift..];
        let whole = rest.len() - rest.len() % 3;
        // Too short a core could match ordinary text.
        if whole < 6 {
            continue;
        }
        let core = &rest[..whole];
        add(
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(core),
            true,
            &mut out,
        );
        add(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(core),
            true,
            &mut out,
        );
    }
    out
}

impl Masker {
    /// A masker for these secrets (empty ones and very short ones are skipped).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut pats: Vec<(String, bool)> = Vec::new();
        for s in secrets {
            if s.len() < MIN_SECRET {
                continue;
            }
            for f in forms(s) {
                if !pats.iter().any(|p| p.0 == f.0) {
                    pats.push(f);
                }
            }
        }
        if pats.is_empty() {
            return Masker::default();
        }
        let ac = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .build(pats.iter().map(|p| p.0.as_str()))
            .ok();
        Masker {
            ac,
            widen: pats.into_iter().map(|p| p.1).collect(),
        }
    }

    /// The masker of a provider: its key and its credential headers.
    /// Built once per set of secrets and shared.
    pub fn for_spec(spec: &ProviderSpec) -> Arc<Masker> {
        let secrets = secrets_of(spec);
        if secrets.is_empty() {
            static EMPTY: OnceLock<Arc<Masker>> = OnceLock::new();
            return EMPTY.get_or_init(|| Arc::new(Masker::default())).clone();
        }
        let key: Vec<String> = secrets.iter().map(|s| s.expose().to_string()).collect();
        static CACHE: OnceLock<Mutex<HashMap<Vec<String>, Arc<Masker>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = map.get(&key) {
            return m.clone();
        }
        let m = Arc::new(Masker::new(key.iter().map(String::as_str)));
        if map.len() >= 256 {
            map.clear();
        }
        map.insert(key, m.clone());
        m
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.ac.is_none()
    }

    /// `s` with every known secret (in every form) replaced by `***`.
    pub fn mask<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let Some(ac) = &self.ac else {
            return Cow::Borrowed(s);
        };
        let mut it = ac.find_iter(s).peekable();
        if it.peek().is_none() {
            return Cow::Borrowed(s);
        }
        let b = s.as_bytes();
        let mut out = String::with_capacity(s.len());
        let mut last = 0usize;
        for m in it {
            let (mut start, mut end) = (m.start(), m.end());
            if start < last {
                // Inside a region already masked (a widened base64 run).
                if end <= last {
                    continue;
                }
                start = last;
            }
            if self.widen[m.pattern().as_usize()] {
                while start > last && is_b64(b[start - 1]) {
                    start -= 1;
                }
                while end < b.len() && is_b64(b[end]) {
                    end += 1;
                }
            }
            out.push_str(&s[last..start]);
            out.push_str(MASK);
            last = end;
        }
        out.push_str(&s[last..]);
        Cow::Owned(out)
    }

    /// Mask bytes from an upstream (read as UTF-8, lossily).
    pub fn mask_bytes(&self, b: &[u8]) -> String {
        let s = String::from_utf8_lossy(b);
        self.mask(&s).into_owned()
    }

    /// Mask every message an error carries.
    pub fn mask_error(&self, e: EngineError) -> EngineError {
        if self.is_empty() {
            return e;
        }
        e.map_message(|m| self.mask(m).into_owned())
    }
}

/// Cut `s` to at most `max` bytes, on a character boundary, after it has been
/// masked. When the cut falls inside a word, the whole word is dropped (a word
/// cut short could be a secret the upstream itself cut short), and `…` marks
/// the cut.
pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let next_is_word = s[end..].chars().next().is_some_and(|c| !is_delim(c));
    let mut kept = &s[..end];
    if next_is_word {
        let word_start = kept
            .char_indices()
            .rev()
            .find(|(_, c)| is_delim(*c))
            .map_or(0, |(i, c)| i + c.len_utf8());
        kept = &kept[..word_start];
    }
    format!("{}…", kept.trim_end())
}

/// Drop a trailing word of a buffer that was cut short by a read limit (see
/// [`cut`]): the upstream sent more than we read, so the last word may be
/// the start of a secret.
pub fn drop_cut_word(s: &str) -> &str {
    let word_start = s
        .char_indices()
        .rev()
        .find(|(_, c)| is_delim(*c))
        .map_or(0, |(i, c)| i + c.len_utf8());
    &s[..word_start]
}

/// Mask the strings of a finished completion: text, thinking, refusal, tool
/// calls, finish word (a key can arrive split across deltas).
pub fn mask_completion(spec: &ProviderSpec, c: &mut crate::engine::event::Completion) {
    if spec.kind == super::ProviderKind::Mock {
        return;
    }
    let m = Masker::for_spec(spec);
    if m.is_empty() {
        return;
    }
    let fix = |s: &mut String| {
        if let Cow::Owned(o) = m.mask(s) {
            *s = o;
        }
    };
    fix(&mut c.text);
    fix(&mut c.thinking);
    fix(&mut c.raw_finish_reason);
    if let Some(r) = &mut c.refusal {
        fix(r);
    }
    for t in &mut c.tool_calls {
        fix(&mut t.id);
        fix(&mut t.name);
        fix(&mut t.arguments);
    }
    if let Some(e) = c.error.take() {
        c.error = Some(m.mask_error(e));
    }
}

/// Header names that carry credentials.
pub fn is_credential_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "x-api-key" | "api-key" | "x-goog-api-key"
    ) || ["key", "token", "secret", "auth", "password", "cookie"]
        .iter()
        .any(|w| n.contains(w))
}

/// The secrets of a provider: its key, and the values of its credential
/// headers (whole, and the token after a scheme such as `Bearer`).
/// Longest first, so a secret containing another is masked whole.
pub fn secrets_of(spec: &ProviderSpec) -> Vec<Secret> {
    let mut out: Vec<Secret> = spec
        .api_key
        .iter()
        .filter(|k| !k.expose().trim().is_empty())
        .cloned()
        .collect();
    for (k, v) in &spec.headers {
        if !is_credential_header(k) {
            continue;
        }
        let v = v.trim();
        let token = v.rsplit(' ').next().unwrap_or(v);
        for s in [v, token] {
            if s.len() >= MIN_SECRET && !out.iter().any(|o| o.expose() == s) {
                out.push(Secret::new(s));
            }
        }
        // `Basic base64(user:pass)`: the password is a secret too.
        if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(token) {
            if let Ok(txt) = String::from_utf8(raw) {
                if let Some((_, pass)) = txt.split_once(':') {
                    if pass.len() >= MIN_SECRET && !out.iter().any(|o| o.expose() == pass) {
                        out.push(Secret::new(pass));
                    }
                }
            }
        }
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.expose().len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_form() {
        let key = "sk-Test/Key+0123456789abcdef";
        let m = Masker::new([key]);
        let json = serde_json::to_string(key).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("user:{key}"));
        for text in [
            format!("bad key {key}!"),
            format!("bad key {json}"),
            format!("bad key {}", json.replace('/', "\\/")),
            "url ?k=sk-Test%2FKey%2B0123456789abcdef&x".to_string(),
            "url ?k=sk-Test%2fKey%2b0123456789abcdef&x".to_string(),
            format!("Basic {b64} end"),
        ] {
            let out = m.mask(&text);
            assert!(out.contains(MASK), "{text} -> {out}");
            assert!(!out.contains("0123456789"), "{text} -> {out}");
        }
        assert_eq!(m.mask("Basic ").as_ref(), "Basic ");
        assert_eq!(
            m.mask(&format!("Basic {b64} end")).as_ref(),
            "Basic *** end"
        );
    }

    #[test]
    fn plain_headers_are_not_secrets() {
        let mut spec = ProviderSpec::new("x", super::super::ProviderKind::Openai);
        spec.headers = vec![
            ("x-title".into(), "malformed".into()),
            ("authorization".into(), "Bearer tok-123456789".into()),
        ];
        let s: Vec<String> = secrets_of(&spec)
            .iter()
            .map(|s| s.expose().to_string())
            .collect();
        assert_eq!(s, vec!["Bearer tok-123456789", "tok-123456789"]);
        let m = Masker::for_spec(&spec);
        assert_eq!(m.mask("malformed").as_ref(), "malformed");
    }

    #[test]
    fn cut_drops_a_word_cut_short() {
        assert_eq!(cut("hello world", 20), "hello world");
        assert_eq!(cut("hello world", 8), "hello…");
        assert_eq!(cut("hello world", 6), "hello…");
        assert_eq!(cut("héllo", 2), "…");
    }
}
