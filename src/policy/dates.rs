//! HTTP dates and ages.

use std::time::{Duration, UNIX_EPOCH};

/// Parses an HTTP-date into unix seconds: IMF-fixdate, rfc850-date or asctime-date (RFC 9110
/// §5.6.7), leniently as recipients should be: day and month names in any case, runs of spaces,
/// an asctime day without its padding space.
pub fn http_date_s(v: &str) -> Option<u64> {
    let v = v.trim();
    let parsed = httpdate::parse_http_date(v).or_else(|_| httpdate::parse_http_date(&canonical(v)));
    parsed
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// An HTTP-date rewritten the way the strict parser reads it: letter runs capitalised as
/// `Sun`/`Nov` (`GMT` upper case), single spaces, and asctime's day padded to two columns.
fn canonical(v: &str) -> String {
    let words: Vec<String> = v.split_ascii_whitespace().map(capitalise).collect();
    let asctime = words.len() == 5 && !words[0].ends_with(',');
    match words.as_slice() {
        [wday, month, day, time, year] if asctime => {
            format!("{wday} {month} {day:>2} {time} {year}")
        }
        _ => words.join(" "),
    }
}

fn capitalise(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    let mut first_of_run = true;
    for c in word.chars() {
        if c.is_ascii_alphabetic() {
            out.push(if first_of_run {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            });
            first_of_run = false;
        } else {
            out.push(c);
            first_of_run = true;
        }
    }
    if out == "Gmt" { "GMT".to_string() } else { out }
}

/// Formats unix ms as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn format_http_date(unix_ms: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(unix_ms))
}

/// Current age of a stored response (RFC 9111 §4.2.3), seconds.
pub fn current_age_s(stored_at_ms: u64, initial_age_s: u64, now_ms: u64) -> u64 {
    initial_age_s.saturating_add(now_ms.saturating_sub(stored_at_ms) / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9110_5_6_7_all_three_formats_in_any_case() {
        let t = Some(784_111_777);
        for v in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "sun, 06 nov 1994 08:49:37 gmt",
            "SUN, 06 NOV 1994 08:49:37 GMT",
            "SUNDAY, 06-NOV-94 08:49:37 GMT",
            "sun nov 6 08:49:37 1994",
            " Sun,  06 Nov 1994   08:49:37 GMT ",
        ] {
            assert_eq!(http_date_s(v), t, "{v:?}");
        }
    }

    #[test]
    fn garbage_is_not_a_date() {
        for v in [
            "",
            "0",
            "-1",
            "tomorrow",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Nov 1994",
        ] {
            assert_eq!(http_date_s(v), None, "{v:?}");
        }
    }
}
