//! Targeted cache-control fields (RFC 9213), such as `CDN-Cache-Control`.
//!
//! Unlike `Cache-Control`, a targeted field is a Structured Field Dictionary (RFC 9213 §2.1,
//! RFC 9651 §3.2) and is parsed strictly: a value that does not parse, or whose directives have
//! the wrong type (`max-age="60"`, `max-age=1.5`, `max-age=-1`, `no-store=?0`), is ignored as a
//! whole, and the response falls back to `Cache-Control` and `Expires`. Being lenient here
//! would let garbage in one field override a `Cache-Control: no-store` in another.

use super::CacheControl;
use super::structured::{self, Bare, Member};

/// The directives of a targeted field, or `None` when the field must be ignored (absent,
/// empty, unparsable, or a known directive of the wrong type).
// Not inlined: one copy, off the hit path (~2 KB less .wasm).
#[inline(never)]
pub fn parse_targeted<'a>(lines: impl Iterator<Item = &'a str>) -> Option<CacheControl> {
    // RFC 9651 §4.2: the field lines are parsed as one value, joined with ", ". Empty lines
    // are empty list members in HTTP (RFC 9110 §5.3) and join nothing.
    let mut value = String::new();
    for line in lines.filter(|l| !l.trim_matches([' ', '\t']).is_empty()) {
        if !value.is_empty() {
            value.push_str(", ");
        }
        value.push_str(line);
    }
    if value.is_empty() {
        return None;
    }
    // RFC 9651 §4.2.2: a repeated key's later member replaces the earlier one.
    let mut seen: [Option<Member>; ALL.len()] = [None; ALL.len()];
    structured::dictionary(&value, |key, member| {
        // Unknown directives are ignored whatever their type (RFC 9111 §5.2.3).
        if let Some(d) = Directive::named(key) {
            seen[d as usize] = Some(member);
        }
    })
    .ok()?;
    let mut cc = CacheControl::default();
    for (d, member) in ALL.into_iter().zip(seen) {
        let Some(member) = member else { continue };
        let seconds = match (d.shape(), member) {
            (Shape::Flag | Shape::FlagOrNames, Member::Item(Bare::Boolean(true))) => None,
            (Shape::FlagOrNames, Member::Item(Bare::String)) => None,
            // A delta-seconds is a non-negative Integer (RFC 9111 §1.2.2).
            (Shape::Seconds, Member::Item(Bare::Integer(s))) => Some(u64::try_from(s).ok()?),
            // RFC 9213 §2.1: values that violate a directive's type are not consumed.
            _ => return None,
        };
        match d {
            Directive::MaxAge => cc.max_age = seconds,
            Directive::SMaxage => cc.s_maxage = seconds,
            Directive::NoStore => cc.no_store = true,
            Directive::NoCache => cc.no_cache = true,
            Directive::Private => cc.private = true,
            Directive::Public => cc.public = true,
            Directive::MustRevalidate => cc.must_revalidate = true,
            Directive::ProxyRevalidate => cc.proxy_revalidate = true,
            Directive::Immutable => cc.immutable = true,
            Directive::StaleWhileRevalidate => cc.stale_while_revalidate = seconds,
            Directive::StaleIfError => cc.stale_if_error = seconds,
        }
    }
    Some(cc)
}

/// The response directives this cache obeys or will (RFC 9111 §5.2.2, RFC 5861, RFC 8246),
/// whose types a targeted field must respect. Others are ignored whatever their type: this
/// cache consumes none of their values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Directive {
    MaxAge,
    SMaxage,
    StaleWhileRevalidate,
    StaleIfError,
    NoStore,
    MustRevalidate,
    ProxyRevalidate,
    Public,
    Immutable,
    NoCache,
    Private,
}

const ALL: [Directive; 11] = [
    Directive::MaxAge,
    Directive::SMaxage,
    Directive::StaleWhileRevalidate,
    Directive::StaleIfError,
    Directive::NoStore,
    Directive::MustRevalidate,
    Directive::ProxyRevalidate,
    Directive::Public,
    Directive::Immutable,
    Directive::NoCache,
    Directive::Private,
];

/// The type a directive's value must have (RFC 9213 §2.1's mapping of RFC 9111 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Boolean true: the directive without a value.
    Flag,
    /// A non-negative Integer.
    Seconds,
    /// Boolean true, or a String listing field names (`no-cache="set-cookie"`).
    FlagOrNames,
}

impl Directive {
    /// Dictionary keys are lower case (RFC 9651 §3.2), so the match is exact.
    fn named(key: &str) -> Option<Directive> {
        Some(match key {
            "max-age" => Directive::MaxAge,
            "s-maxage" => Directive::SMaxage,
            "stale-while-revalidate" => Directive::StaleWhileRevalidate,
            "stale-if-error" => Directive::StaleIfError,
            "no-store" => Directive::NoStore,
            "must-revalidate" => Directive::MustRevalidate,
            "proxy-revalidate" => Directive::ProxyRevalidate,
            "public" => Directive::Public,
            "immutable" => Directive::Immutable,
            "no-cache" => Directive::NoCache,
            "private" => Directive::Private,
            _ => return None,
        })
    }

    fn shape(self) -> Shape {
        match self {
            Directive::MaxAge
            | Directive::SMaxage
            | Directive::StaleWhileRevalidate
            | Directive::StaleIfError => Shape::Seconds,
            Directive::NoCache | Directive::Private => Shape::FlagOrNames,
            _ => Shape::Flag,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> Option<CacheControl> {
        parse_targeted(lines.iter().copied())
    }

    #[test]
    fn rfc9213_2_1_directives_map_to_structured_types() {
        let cc = parse(&["max-age=60, s-maxage=30, must-revalidate, public"]).unwrap();
        assert_eq!(cc.max_age, Some(60));
        assert_eq!(cc.s_maxage, Some(30));
        assert!(cc.must_revalidate && cc.public);
        let cc = parse(&["no-cache=\"set-cookie\", private"]).unwrap();
        assert!(cc.no_cache && cc.private, "field-name lists are Strings");
        let cc = parse(&["no-store;x=1, max-age=5;y"]).unwrap();
        assert!(cc.no_store, "parameters are ignored");
        assert_eq!(cc.max_age, Some(5));
        // `none` (RFC 9213 §3.1's example) is a valid field with no known directive.
        assert_eq!(parse(&["none"]), Some(CacheControl::default()));
        // Unknown directives are ignored whatever their type.
        assert_eq!(
            parse(&["x=(a b), y=:AQID:, max-age=7"]).unwrap().max_age,
            Some(7)
        );
    }

    #[test]
    fn rfc9213_2_1_a_value_that_fails_to_parse_ignores_the_whole_field() {
        for bad in [
            "max-age=10000, &&&&&",
            "max-age=60,",
            "max-age=60 no-store",
            "Max-Age=60",
            "max-age=60, no-store=\"unterminated",
            "max-age=1234567890123456",
            "max-age=60, ;",
            "max-age=60, x=\u{e9}",
        ] {
            assert_eq!(parse(&[bad]), None, "{bad:?}");
        }
    }

    #[test]
    fn rfc9213_2_1_a_directive_of_the_wrong_type_ignores_the_whole_field() {
        for bad in [
            "max-age=\"10000\"",
            "max-age=1.5",
            "max-age=-1",
            "max-age",
            "max-age=(60)",
            "s-maxage=a",
            "no-store=?0",
            "no-store=1",
            "must-revalidate=\"yes\"",
            "private=(a b)",
            "stale-while-revalidate=\"5\"",
            "max-age=60, public=:AQID:",
        ] {
            assert_eq!(parse(&[bad]), None, "{bad:?}");
        }
    }

    #[test]
    fn rfc9651_4_2_2_lines_are_joined_and_the_last_member_wins() {
        assert_eq!(
            parse(&["max-age=60", "no-store"]).map(|c| (c.max_age, c.no_store)),
            Some((Some(60), true))
        );
        // A later member replaces an earlier one, even one of the wrong type.
        assert_eq!(
            parse(&["max-age=\"x\", max-age=9"]).unwrap().max_age,
            Some(9)
        );
        assert_eq!(parse(&["max-age=9", "max-age=1.5"]), None);
        // A string may only be whole once the lines are joined.
        assert!(parse(&["no-cache=\"a", "b\""]).unwrap().no_cache);
        // Empty lines join nothing; an empty field is no field.
        assert_eq!(parse(&["", "max-age=3", " "]).unwrap().max_age, Some(3));
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&["  "]), None);
    }
}
