//! HTTP dates and ages.
//!
//! Parsed and formatted here, by hand: httpdate (a dev-dependency now, the tests' oracle) did
//! it through `SystemTime`, which brought `Duration`'s Debug printer, its own strict parser and
//! a second lenient pass into the .wasm (~8 KB). The tests compare both directions with it over
//! centuries of dates and thousands of mangled ones.

/// Parses an HTTP-date into unix seconds: IMF-fixdate, rfc850-date or asctime-date (RFC 9110
/// §5.6.7), leniently as recipients should be: day and month names in any case, runs of spaces,
/// an asctime day without its padding space. The weekday must be the date's, the date a real
/// one between 1970 and 9999 (two-digit rfc850 years below 70 are 20xx).
pub fn http_date_s(v: &str) -> Option<u64> {
    if !v.is_ascii() {
        return None;
    }
    let w: Vec<&str> = v.split_ascii_whitespace().collect();
    let (wday, day, month, year, time) = match w.as_slice() {
        // IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`
        [wd, d, m, y, t, gmt] if gmt.eq_ignore_ascii_case("GMT") => {
            let wd = wd.strip_suffix(',')?;
            (
                weekday(wd, 3)?,
                digits(d, 2, 2)?,
                month(m)?,
                digits(y, 4, 4)?,
                *t,
            )
        }
        // rfc850-date: `Sunday, 06-Nov-94 08:49:37 GMT`
        [wd, dmy, t, gmt] if gmt.eq_ignore_ascii_case("GMT") => {
            let wd = wd.strip_suffix(',')?;
            let mut parts = dmy.split('-');
            let (d, m, y) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() {
                return None;
            }
            let yy = digits(y, 2, 2)?;
            let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
            (weekday(wd, 0)?, digits(d, 2, 2)?, month(m)?, year, *t)
        }
        // asctime-date: `Sun Nov  6 08:49:37 1994`
        [wd, m, d, t, y] if !wd.ends_with(',') => (
            weekday(wd, 3)?,
            digits(d, 1, 2)?,
            month(m)?,
            digits(y, 4, 4)?,
            *t,
        ),
        _ => return None,
    };
    let t = time.as_bytes();
    if t.len() != 8 || t[2] != b':' || t[5] != b':' {
        return None;
    }
    let (h, mi, s) = (
        digits(&time[..2], 2, 2)?,
        digits(&time[3..5], 2, 2)?,
        digits(&time[6..], 2, 2)?,
    );
    if h > 23 || mi > 59 || s > 59 || !(1970..=9999).contains(&year) {
        return None;
    }
    if day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    // 1970-01-01 was a Thursday (weekday 4, Monday 1 .. Sunday 7).
    if (days + 3) % 7 + 1 != wday {
        return None;
    }
    Some(days * 86_400 + h * 3600 + mi * 60 + s)
}

/// Monday first: `weekday` numbers them from 1.
pub(crate) const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `a` is `b` in any case. Not inlined: the searches of the day and month names below are
/// unrolled, and a comparison inlined in each of their 26 steps cost 3 KB of .wasm.
#[inline(never)]
fn same_letters(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Monday 1 .. Sunday 7, from its first `len` letters, or its whole name when `len` is 0.
fn weekday(name: &str, len: usize) -> Option<u64> {
    let i = WEEKDAYS.iter().position(|full| {
        if len == 0 {
            same_letters(name, full)
        } else {
            name.len() == len && same_letters(name, &full[..len])
        }
    })?;
    Some(i as u64 + 1)
}

/// January 1 .. December 12, from its three letters in any case.
fn month(name: &str) -> Option<u64> {
    let i = MONTHS.iter().position(|m| same_letters(name, m))?;
    Some(i as u64 + 1)
}

/// A decimal number of `min..=max` digits, nothing else. (Not inlined: its nine uses here
/// would each carry a copy.)
#[inline(never)]
fn digits(s: &str, min: usize, max: usize) -> Option<u64> {
    if s.len() < min || s.len() > max || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0, |n, b| n * 10 + u64::from(b - b'0')))
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a date from 1970 on (Hinnant's `days_from_civil`).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y % 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats unix ms as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`). The civil date is
/// Hinnant's `civil_from_days`; tests check every output against httpdate's.
pub fn format_http_date(unix_ms: u64) -> String {
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
        // 1970-01-01 was a Thursday.
        &WEEKDAYS[((days + 3) % 7) as usize][..3],
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
    use std::time::{Duration, UNIX_EPOCH};

    /// What the filter did before parsing by hand: httpdate's strict parser, then again on the
    /// value rewritten the way it reads (letter runs capitalised, single spaces, asctime's day
    /// padded). The new parser must agree with it on everything.
    fn oracle(v: &str) -> Option<u64> {
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
        let v = v.trim();
        let parsed =
            httpdate::parse_http_date(v).or_else(|_| httpdate::parse_http_date(&canonical(v)));
        parsed
            .ok()?
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs())
    }

    /// The three forms of the date at unix second `s`.
    fn forms(s: u64) -> [String; 3] {
        let imf = format_http_date(s * 1000);
        let (wd, rest) = imf.split_once(", ").unwrap();
        let p: Vec<&str> = rest.split(' ').collect();
        let (d, m, y, t) = (p[0], p[1], p[2], p[3]);
        let full = WEEKDAYS.iter().find(|w| w.starts_with(wd)).unwrap();
        let rfc850 = format!("{full}, {d}-{m}-{} {t} GMT", &y[2..]);
        let asctime = format!("{wd} {m} {:>2} {t} {y}", d.trim_start_matches('0'));
        [imf, rfc850, asctime]
    }

    #[test]
    fn parsing_agrees_with_the_httpdate_oracle_on_valid_dates_over_centuries() {
        let mut s = 0u64;
        let mut checked = 0;
        while s < 12_623_000_000 {
            for f in forms(s) {
                assert_eq!(http_date_s(&f), oracle(&f), "{f}");
                checked += 1;
            }
            // Every day of four centuries, at a second that walks through the clock.
            s += 86_400 + 3_607;
        }
        assert!(checked > 300_000);
        assert_eq!(http_date_s(&forms(784_111_777)[0]), Some(784_111_777));
    }

    #[test]
    fn parsing_agrees_with_the_httpdate_oracle_on_mangled_dates() {
        // Deterministic mutations of each form: a byte replaced, removed or doubled, case
        // flipped, spaces added. Whatever the oracle accepts or refuses, so does the parser.
        let alphabet = b" ,:-0123456789aAgGmMtTsSuUnNdDyY\t";
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut accepted = 0;
        for i in 0..30_000u64 {
            let s = next() % 9_000_000_000;
            let f = &forms(s)[(i % 3) as usize];
            let mut b = f.clone().into_bytes();
            for _ in 0..1 + next() % 3 {
                let at = (next() % b.len() as u64) as usize;
                match next() % 5 {
                    0 => b[at] = alphabet[(next() % alphabet.len() as u64) as usize],
                    1 => {
                        b.remove(at);
                    }
                    2 => b.insert(at, b[at]),
                    3 => b[at] = b[at].to_ascii_uppercase(),
                    _ => b.insert(at, b' '),
                }
            }
            let m = String::from_utf8(b).unwrap();
            let (ours, theirs) = (http_date_s(&m), oracle(&m));
            if ours.is_none() && theirs.is_some() {
                // httpdate's one over-acceptance: it never looks at rfc850's space between
                // date and time (`04-Sep-38416:41:48`). Words must be the form's.
                let words = m.split_ascii_whitespace().count();
                assert!(i % 3 == 1 && words != 4, "{m:?} (from {f:?}): refused");
                continue;
            }
            assert_eq!(ours, theirs, "{m:?} (from {f:?})");
            accepted += usize::from(ours.is_some());
        }
        // Some mutations keep a valid date (case, spaces): both sides were exercised.
        assert!(accepted > 1_000, "{accepted}");
    }

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
