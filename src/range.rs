//! A single byte range (RFC 9110 §14) answered from a stored full response.

/// What to do with a request's `Range` against a stored body of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No usable Range (absent, another unit, or malformed: RFC 9110 §14.2 lets a server
    /// ignore it): send the whole body.
    Full,
    /// 206 with these inclusive byte positions.
    Partial { first: u64, last: u64 },
    /// 416: no byte of the body is in the range.
    Unsatisfiable,
    /// Several ranges: a multipart answer is the origin's to make.
    Multiple,
}

pub fn answer(range: Option<&str>, len: u64) -> RangeAnswer {
    let Some(range) = range else {
        return RangeAnswer::Full;
    };
    let Some(spec) = range
        .trim()
        .strip_prefix("bytes=")
        .or_else(|| range.trim().strip_prefix("Bytes="))
    else {
        return RangeAnswer::Full;
    };
    let specs: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if specs.len() > 1 {
        return RangeAnswer::Multiple;
    }
    let Some(one) = specs.first() else {
        return RangeAnswer::Full;
    };
    let Some((a, b)) = one.split_once('-') else {
        return RangeAnswer::Full;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.trim(), b.trim()) {
        // Suffix: the last n bytes.
        ("", n) => match num(n) {
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if len == 0 => RangeAnswer::Unsatisfiable,
            Some(n) => RangeAnswer::Partial {
                first: len.saturating_sub(n),
                last: len - 1,
            },
            None => RangeAnswer::Full,
        },
        (a, b) => {
            let Some(first) = num(a) else {
                return RangeAnswer::Full;
            };
            let last = if b.is_empty() {
                None
            } else {
                match num(b) {
                    Some(l) if l >= first => Some(l),
                    _ => return RangeAnswer::Full,
                }
            };
            if first >= len {
                return RangeAnswer::Unsatisfiable;
            }
            RangeAnswer::Partial {
                first,
                last: last.map_or(len - 1, |l| l.min(len - 1)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeAnswer::*;

    #[test]
    fn rfc9110_14_1_2_byte_ranges() {
        assert_eq!(answer(None, 10), Full);
        assert_eq!(answer(Some("bytes=0-4"), 10), Partial { first: 0, last: 4 });
        assert_eq!(answer(Some("bytes=5-"), 10), Partial { first: 5, last: 9 });
        assert_eq!(answer(Some("bytes=-3"), 10), Partial { first: 7, last: 9 });
        assert_eq!(answer(Some("bytes=-30"), 10), Partial { first: 0, last: 9 });
        assert_eq!(
            answer(Some("bytes=8-100"), 10),
            Partial { first: 8, last: 9 }
        );
        assert_eq!(
            answer(Some(" bytes=2-2 "), 10),
            Partial { first: 2, last: 2 }
        );
    }

    #[test]
    fn rfc9110_15_5_17_unsatisfiable() {
        assert_eq!(answer(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(answer(Some("bytes=10-20"), 10), Unsatisfiable);
        assert_eq!(answer(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(answer(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(answer(Some("bytes=-5"), 0), Unsatisfiable);
    }

    #[test]
    fn rfc9110_14_2_malformed_or_other_units_are_ignored() {
        for r in [
            "items=0-1",
            "bytes=a-b",
            "bytes=5-1",
            "bytes=",
            "bytes=1",
            "bytes=--1",
            "bytes=+1-2",
        ] {
            assert_eq!(answer(Some(r), 10), Full, "{r}");
        }
        assert_eq!(answer(Some("bytes=0-1, 4-5"), 10), Multiple);
    }
}
