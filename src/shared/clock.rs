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
    let t = time::OffsetDateTime::now_utc();
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
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
