//! HTTP dates and ages.

use std::time::UNIX_EPOCH;

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
///
/// By hand, where parsing stays with httpdate: its formatter goes through `SystemTime`, whose
/// `expect` drags `Duration`'s Debug printer into the .wasm (~3 KB with the rest). The civil
/// date is Hinnant's `civil_from_days`; tests check every output against httpdate's.
pub fn format_http_date(unix_ms: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // IMF-fixdate has four year digits: past 9999 the date is clamped to its last second.
    let secs = (unix_ms / 1000).min(MAX_FIXDATE_S);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Days since 0000-03-01 (a year starts in March: leap days end it).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
    )
}

/// 9999-12-31T23:59:59Z, the last instant an IMF-fixdate can say.
const MAX_FIXDATE_S: u64 = 253_402_300_799;

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
    fn fixdates_match_httpdate_over_four_centuries_and_at_the_edges() {
        use std::time::Duration;
        let oracle = |s: u64| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s));
        // Every day of 1970..2370 (leap years, 2100's skipped leap day, 2000's kept one) at a
        // second that walks through every hour, minute and second, and the edges.
        let mut s = 0u64;
        while s < 12_623_000_000 {
            assert_eq!(format_http_date(s * 1000 + 999), oracle(s), "{s}");
            s += 86_400 + 3_607;
        }
        for s in [
            0,
            59,
            951_782_400,
            4_107_456_000,
            4_107_542_399,
            MAX_FIXDATE_S,
        ] {
            assert_eq!(format_http_date(s * 1000), oracle(s), "{s}");
        }
        assert_eq!(
            format_http_date(784_111_777_000),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        // Past what four year digits can say: the last second, not a panic.
        assert_eq!(format_http_date(u64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
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
