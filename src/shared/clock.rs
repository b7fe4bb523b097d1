//! Wall-clock time as the faces print it.

use std::time::SystemTime;

/// Now as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Now in UTC as `2026-12-04T15:53:24.000630Z`: fixed width, with
/// microseconds (the stderr logger's form) or milliseconds (SQLite's
/// `strftime('%Y-%m-%dT%H:%M:%fZ')`, the ledger's), so stamps sort as text.
pub fn utc_stamp(micros: bool) -> String {
    stamp_of(time::OffsetDateTime::now_utc(), micros)
}

/// [`utc_stamp`] of `t`, its digits written one by one: `format!` with padded
/// fields took about 2,500 instructions, on every access line and ledger batch.
fn stamp_of(t: time::OffsetDateTime, micros: bool) -> String {
    let (frac, width) = match micros {
        true => (t.microsecond(), 6),
        false => (u32::from(t.millisecond()), 3),
    };
    let mut b = [0u8; 27];
    let mut at = 0;
    let mut put = |n: u32, w: usize, after: u8| {
        let mut n = n;
        for i in (0..w).rev() {
            b[at + i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        b[at + w] = after;
        at += w + 1;
    };
    // Years outside 0..=9999 do not occur on a clock; clamp rather than widen.
    put(t.year().clamp(0, 9999) as u32, 4, b'-');
    put(u32::from(u8::from(t.month())), 2, b'-');
    put(u32::from(t.day()), 2, b'T');
    put(u32::from(t.hour()), 2, b':');
    put(u32::from(t.minute()), 2, b':');
    put(u32::from(t.second()), 2, b'.');
    put(frac, width, b'Z');
    String::from_utf8_lossy(&b[..at]).into_owned()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digits written one by one read as `format!` wrote them.
    #[test]
    fn stamps_read_as_the_padded_format() {
        let old = |t: time::OffsetDateTime, micros: bool| {
            let (frac, width) = match micros {
                true => (t.microsecond(), 6),
                false => (u32::from(t.millisecond()), 3),
            };
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{frac:0width$}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
            )
        };
        let mut t = time::OffsetDateTime::from_unix_timestamp(0).unwrap();
        // Every field's edges over 70 years, in uneven steps.
        for _ in 0..20_000 {
            for micros in [true, false] {
                assert_eq!(stamp_of(t, micros), old(t, micros));
            }
            t += time::Duration::nanoseconds(110_437_912_345_677);
        }
        assert_eq!(utc_stamp(true).len(), 27);
        assert_eq!(utc_stamp(false).len(), 24);
    }
}
