//! HTTP dates and ages.

use std::time::{Duration, UNIX_EPOCH};

/// Parses an HTTP-date into unix seconds.
pub fn http_date_s(v: &str) -> Option<u64> {
    httpdate::parse_http_date(v.trim())
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Formats unix ms as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn format_http_date(unix_ms: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(unix_ms))
}

/// Current age of a stored response (RFC 9111 §4.2.3), seconds.
pub fn current_age_s(stored_at_ms: u64, initial_age_s: u64, now_ms: u64) -> u64 {
    initial_age_s.saturating_add(now_ms.saturating_sub(stored_at_ms) / 1000)
}
