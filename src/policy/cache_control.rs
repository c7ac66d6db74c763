//! `Cache-Control` (and targeted fields like `CDN-Cache-Control`, RFC 9213) parsing.

/// Parsed `Cache-Control` directives that matter to a shared cache. Parsing is forgiving of
/// case, spacing, quotes and duplicates, and garbage never adds permission: an unparsable
/// `max-age` counts as `max-age=0` (RFC 9111 §4.2.1 says treat invalid as stale).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub immutable: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    /// RFC 5861 §3 and §4.
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    // Request-only directives (RFC 9111 §5.2.1).
    /// `max-stale` (`Some(None)`: any staleness) .
    pub max_stale: Option<Option<u64>>,
    pub min_fresh: Option<u64>,
    pub only_if_cached: bool,
}

impl CacheControl {
    pub fn parse<'a>(values: impl Iterator<Item = &'a str>) -> CacheControl {
        let mut cc = CacheControl::default();
        for value in values {
            for (name, arg) in directives(value) {
                match name.as_str() {
                    "no-store" => cc.no_store = true,
                    // The field-named forms (`no-cache="set-cookie"`) are treated as the plain
                    // directive: stricter, never wrong.
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" => cc.must_revalidate = true,
                    "proxy-revalidate" => cc.proxy_revalidate = true,
                    "immutable" => cc.immutable = true,
                    "only-if-cached" => cc.only_if_cached = true,
                    // Without a value, any staleness; a bad value allows none (never more
                    // permission from garbage).
                    "max-stale" => {
                        let limit = arg.map(|a| delta_seconds(Some(a)));
                        cc.max_stale = Some(match (cc.max_stale, limit) {
                            (Some(Some(a)), Some(b)) => Some(a.min(b)),
                            (Some(Some(a)), None) => Some(a),
                            (_, l) => l,
                        });
                    }
                    // The largest min-fresh is the strictest.
                    "min-fresh" => {
                        let v = delta_seconds(arg);
                        cc.min_fresh = Some(cc.min_fresh.map_or(v, |m| m.max(v)));
                    }
                    // With duplicates, the smallest lifetime wins: the conservative reading.
                    "max-age" => cc.max_age = min_some(cc.max_age, delta_seconds(arg)),
                    "s-maxage" => cc.s_maxage = min_some(cc.s_maxage, delta_seconds(arg)),
                    // Permission to serve stale: the smallest is the conservative reading.
                    "stale-while-revalidate" => {
                        cc.stale_while_revalidate =
                            min_some(cc.stale_while_revalidate, delta_seconds(arg))
                    }
                    "stale-if-error" => {
                        cc.stale_if_error = min_some(cc.stale_if_error, delta_seconds(arg))
                    }
                    _ => {}
                }
            }
        }
        cc
    }
}

fn min_some(a: Option<u64>, b: u64) -> Option<u64> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// RFC 9111 §1.2.2: a non-negative integer; anything else is 0 (stale), and a value too big
/// for us saturates.
fn delta_seconds(arg: Option<String>) -> u64 {
    match arg {
        Some(a) if !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) => {
            a.parse().unwrap_or(u64::MAX)
        }
        _ => 0,
    }
}

/// Splits one Cache-Control value into (lower-cased name, unquoted argument) pairs, keeping
/// commas inside quoted strings.
fn directives(value: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut escaped = false;
    for c in value.chars() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
                continue;
            } else if c == '"' {
                in_quotes = false;
            }
            cur.push(c);
        } else if c == '"' {
            in_quotes = true;
            cur.push(c);
        } else if c == ',' {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    for p in parts {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let (name, arg) = match p.split_once('=') {
            Some((n, a)) => {
                let a = a.trim();
                let a = a
                    .strip_prefix('"')
                    .and_then(|a| a.strip_suffix('"'))
                    .unwrap_or(a);
                (n.trim(), Some(a.to_string()))
            }
            None => (p, None),
        };
        out.push((name.to_ascii_lowercase(), arg));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_parsing_is_robust() {
        let cc = CacheControl::parse(["Max-Age=60 ,  PUBLIC", "s-maxage=\"30\""].into_iter());
        assert_eq!(cc.max_age, Some(60));
        assert_eq!(cc.s_maxage, Some(30));
        assert!(cc.public);
        let cc = CacheControl::parse(["private=\"set-cookie, x-a\", max-age=5"].into_iter());
        assert!(cc.private);
        assert_eq!(cc.max_age, Some(5), "comma inside quotes does not split");
        let cc = CacheControl::parse(["max-age=60, max-age=10"].into_iter());
        assert_eq!(cc.max_age, Some(10), "duplicates: the smaller wins");
        let cc = CacheControl::parse(["max-age=-1", "s-maxage=abc"].into_iter());
        assert_eq!(cc.max_age, Some(0), "garbage is stale, not absent");
        assert_eq!(cc.s_maxage, Some(0));
        let cc = CacheControl::parse(["max-age=99999999999999999999999"].into_iter());
        assert_eq!(cc.max_age, Some(u64::MAX));
    }

    #[test]
    fn rfc9111_5_2_1_request_directives() {
        let cc = CacheControl::parse(["max-stale, min-fresh=5, only-if-cached"].into_iter());
        assert_eq!(cc.max_stale, Some(None));
        assert_eq!(cc.min_fresh, Some(5));
        assert!(cc.only_if_cached);
        let cc = CacheControl::parse(
            ["max-stale=30, max-stale=10", "min-fresh=1, min-fresh=9"].into_iter(),
        );
        assert_eq!(cc.max_stale, Some(Some(10)));
        assert_eq!(cc.min_fresh, Some(9));
        let cc = CacheControl::parse(["max-stale=abc"].into_iter());
        assert_eq!(cc.max_stale, Some(Some(0)), "garbage allows no staleness");
        assert!(CacheControl::parse(["immutable"].into_iter()).immutable);
    }
}
