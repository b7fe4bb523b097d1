//! Byte-stream decoders: Server-Sent Events (per the WHATWG HTML spec) and
//! newline-delimited JSON. Both are incremental: feed them whatever the
//! network hands over, split anywhere (inside a UTF-8 character, inside a
//! line of a megabyte), and they yield complete frames.
//!
//! Lines only ever end at the ASCII bytes CR and LF, which never occur inside
//! a multi-byte UTF-8 sequence, so a complete line is always complete UTF-8
//! and no partial character is ever decoded.

/// One dispatched SSE event, borrowed from the decoder's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseFrame<'a> {
    /// The `event:` field, or "message" when none was given.
    pub event: &'a str,
    /// The `data:` lines joined with `\n`.
    pub data: &'a str,
    /// The last event id seen (sticky, as per the spec).
    pub id: &'a str,
}

/// Incremental SSE decoder.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already known to contain no line end.
    scanned: usize,
    /// The previous chunk ended with CR: a leading LF of the next one belongs to it.
    after_cr: bool,
    /// Whether the start of the stream (and a possible BOM) was handled.
    started: bool,
    event: String,
    data: String,
    has_data: bool,
    id: String,
    retry_ms: Option<u64>,
    comments: u64,
}

/// Upper bound for one line; beyond it the stream is malformed (64 MiB).
pub const MAX_LINE: usize = 64 << 20;

/// A line longer than [`MAX_LINE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineTooLong;

impl SseDecoder {
    /// A fresh decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Comment lines seen so far (keep-alives such as `: OPENROUTER PROCESSING`).
    pub fn comments(&self) -> u64 {
        self.comments
    }

    /// The reconnection time last sent in a `retry:` field.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// Feed bytes; `f` is called for every complete event. Stops at the first
    /// error `f` returns.
    pub fn feed<E>(
        &mut self,
        chunk: &[u8],
        mut f: impl FnMut(SseFrame<'_>) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<LineTooLong>,
    {
        let mut chunk = chunk;
        if self.after_cr && !chunk.is_empty() {
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
            self.after_cr = false;
        }
        self.buf.extend_from_slice(chunk);
        if !self.started {
            if self.buf.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.buf) {
                return Ok(()); // could still be a BOM
            }
            if self.buf.starts_with(b"\xEF\xBB\xBF") {
                self.buf.drain(..3);
            }
            self.started = true;
        }
        let mut start = 0;
        let mut i = self.scanned;
        let len = self.buf.len();
        while i < len {
            // Find the next CR or LF.
            let Some(off) = memchr::memchr2(b'\n', b'\r', &self.buf[i..]) else {
                break;
            };
            let end = i + off;
            let next = if self.buf[end] == b'\r' {
                if end + 1 < len {
                    if self.buf[end + 1] == b'\n' {
                        end + 2
                    } else {
                        end + 1
                    }
                } else {
                    self.after_cr = true;
                    end + 1
                }
            } else {
                end + 1
            };
            // Split borrow: take the line out of buf by range.
            let (s, e) = (start, end);
            self.process_line_range(s, e, &mut f)?;
            start = next;
            i = next;
        }
        if start > 0 {
            self.buf.drain(..start);
        }
        self.scanned = self.buf.len();
        if self.buf.len() > MAX_LINE {
            return Err(E::from(LineTooLong));
        }
        Ok(())
    }

    /// End of stream: a last event not followed by a blank line is still
    /// dispatched (lenient: real servers sometimes omit the final blank line).
    pub fn finish<E>(&mut self, mut f: impl FnMut(SseFrame<'_>) -> Result<(), E>) -> Result<(), E> {
        if !self.buf.is_empty() {
            let len = self.buf.len();
            self.process_line_range(0, len, &mut f)?;
            self.buf.clear();
        }
        self.scanned = 0;
        self.dispatch(&mut f)
    }

    fn process_line_range<E>(
        &mut self,
        s: usize,
        e: usize,
        f: &mut impl FnMut(SseFrame<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if s == e {
            return self.dispatch(f);
        }
        let line = &self.buf[s..e];
        if line[0] == b':' {
            self.comments += 1;
            return Ok(());
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(p) => {
                let v = &line[p + 1..];
                (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                push_utf8(&mut self.data, value);
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                push_utf8(&mut self.event, value);
            }
            b"id" if !value.contains(&0) => {
                self.id.clear();
                push_utf8(&mut self.id, value);
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry_ms = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch<E>(&mut self, f: &mut impl FnMut(SseFrame<'_>) -> Result<(), E>) -> Result<(), E> {
        if !self.has_data {
            self.event.clear();
            return Ok(());
        }
        let event = if self.event.is_empty() {
            "message"
        } else {
            self.event.as_str()
        };
        let r = f(SseFrame {
            event,
            data: &self.data,
            id: &self.id,
        });
        self.data.clear();
        self.event.clear();
        self.has_data = false;
        r
    }
}

fn push_utf8(dst: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => dst.push_str(s),
        Err(_) => dst.push_str(&String::from_utf8_lossy(bytes)),
    }
}

/// Incremental newline-delimited JSON splitter: yields each non-blank line
/// (CR stripped) as `&str`.
#[derive(Debug, Default)]
pub struct NdjsonDecoder {
    buf: Vec<u8>,
    scanned: usize,
    line: String,
}

impl NdjsonDecoder {
    /// A fresh decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes; `f` gets every complete non-blank line.
    pub fn feed<E>(
        &mut self,
        chunk: &[u8],
        mut f: impl FnMut(&str) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<LineTooLong>,
    {
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        let mut i = self.scanned;
        while let Some(off) = memchr::memchr(b'\n', &self.buf[i..]) {
            let end = i + off;
            let mut line = &self.buf[start..end];
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                self.line.clear();
                push_utf8(&mut self.line, line);
                f(&self.line)?;
            }
            start = end + 1;
            i = start;
        }
        if start > 0 {
            self.buf.drain(..start);
        }
        self.scanned = self.buf.len();
        if self.buf.len() > MAX_LINE {
            return Err(E::from(LineTooLong));
        }
        Ok(())
    }

    /// End of stream: a last line without a newline is still yielded.
    pub fn finish<E>(&mut self, mut f: impl FnMut(&str) -> Result<(), E>) -> Result<(), E> {
        let buf = std::mem::take(&mut self.buf);
        self.scanned = 0;
        let line = buf.strip_suffix(b"\r").unwrap_or(&buf);
        if !line.iter().all(u8::is_ascii_whitespace) {
            self.line.clear();
            push_utf8(&mut self.line, line);
            f(&self.line)?;
        }
        Ok(())
    }
}

impl From<LineTooLong> for super::error::EngineError {
    fn from(_: LineTooLong) -> Self {
        super::error::EngineError::Protocol {
            message: format!("a line longer than {} MiB", MAX_LINE >> 20),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(input: &[&[u8]]) -> Vec<(String, String, String)> {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        let mut push = |fr: SseFrame<'_>| -> Result<(), LineTooLong> {
            out.push((fr.event.to_string(), fr.data.to_string(), fr.id.to_string()));
            Ok(())
        };
        for c in input {
            d.feed(c, &mut push).unwrap();
        }
        d.finish(&mut push).unwrap();
        out
    }

    fn ev(e: &str, d: &str, id: &str) -> (String, String, String) {
        (e.into(), d.into(), id.into())
    }

    #[test]
    fn spec_examples() {
        // WHATWG example: multi-line data, comments, ids.
        let s = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n";
        assert_eq!(
            collect(&[s]),
            vec![
                ev("message", "first event", "1"),
                ev("message", "second event", ""),
                ev("message", " third event", "")
            ]
        );
        let s = b"data\n\ndata\ndata\n\ndata:\n";
        // The last event lacks a blank line; we dispatch it at EOF (lenient).
        assert_eq!(
            collect(&[s]),
            vec![
                ev("message", "", ""),
                ev("message", "\n", ""),
                ev("message", "", "")
            ]
        );
        let s = b"data:YHOO\ndata: +2\ndata\ndata: 10\n\n";
        assert_eq!(collect(&[s]), vec![ev("message", "YHOO\n+2\n\n10", "")]);
    }

    #[test]
    fn line_endings_bom_and_event_field() {
        let want = vec![ev("ping", "a", ""), ev("message", "b", "")];
        assert_eq!(
            collect(&[b"\xEF\xBB\xBFevent: ping\r\ndata: a\r\n\r\ndata: b\r\n\r\n"]),
            want
        );
        assert_eq!(collect(&[b"event: ping\rdata: a\r\rdata: b\r\r"]), want);
        // CR at the end of one chunk, LF at the start of the next.
        assert_eq!(
            collect(&[b"event: ping\r", b"\ndata: a\r", b"\n\r", b"\ndata: b\n\n"]),
            want
        );
        // BOM split across chunks.
        assert_eq!(
            collect(&[b"\xEF", b"\xBB", b"\xBFevent: ping\ndata: a\n\ndata: b\n\n"]),
            want
        );
    }

    #[test]
    fn utf8_split_anywhere() {
        let s = "data: {\"t\":\"🕵️‍♀️ héllo 世界\"}\n\n".as_bytes();
        for cut in 0..s.len() {
            let got = collect(&[&s[..cut], &s[cut..]]);
            assert_eq!(
                got,
                vec![ev("message", "{\"t\":\"🕵️‍♀️ héllo 世界\"}", "")],
                "cut {cut}"
            );
        }
    }

    #[test]
    fn megabyte_line_in_small_pieces() {
        let big = "x".repeat(1 << 20);
        let s = format!("data: {big}\n\n");
        let pieces: Vec<&[u8]> = s.as_bytes().chunks(1000).collect();
        let got = collect(&pieces);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.len(), 1 << 20);
    }

    #[test]
    fn ndjson_lines() {
        let mut d = NdjsonDecoder::new();
        let mut out = Vec::new();
        let s = "{\"a\":1}\r\n\n{\"b\":\"é\"}\n{\"c\":3}";
        let b = s.as_bytes();
        for cut in 0..b.len() {
            out.clear();
            let mut push = |l: &str| -> Result<(), LineTooLong> {
                out.push(l.to_string());
                Ok(())
            };
            d.feed(&b[..cut], &mut push).unwrap();
            d.feed(&b[cut..], &mut push).unwrap();
            d.finish(&mut push).unwrap();
            assert_eq!(
                out,
                vec!["{\"a\":1}", "{\"b\":\"é\"}", "{\"c\":3}"],
                "cut {cut}"
            );
        }
    }
}
