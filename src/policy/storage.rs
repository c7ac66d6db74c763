//! May a response be stored, for how long, and how old is it already (RFC 9111 §3, §4.2).

use super::targeted::parse_targeted;
use super::{CacheControl, Freshness, http_date_s};
use crate::config::{Config, SetCookiePolicy};
use crate::http::{RequestHead, ResponseHead};
use crate::key::Vary;

/// Why a response was not stored (reported in logs and tests, never to clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Status,
    NoStore,
    Private,
    /// `no-cache` without a validator: every use would be a full refetch anyway.
    NoCache,
    SetCookie,
    Authorization,
    VaryAny,
    /// No lifetime, or already stale when received, and no validator to revalidate it with.
    NotFresh,
    /// A header value the host can't hand back verbatim (not UTF-8).
    BadHeader,
    /// The answer was made by Envoy (no route, upstream failure), not by the origin.
    NotFromOrigin,
    /// Content-Length says the body is larger than `max_body_bytes`.
    TooLarge,
}

/// The storage decision for a response that may be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storable {
    pub freshness: Freshness,
    pub vary: Vary,
    pub strip_set_cookie: bool,
    /// Has `ETag` or `Last-Modified`: a stale copy can be revalidated with a conditional
    /// request instead of refetched.
    pub has_validator: bool,
}

/// Times of the exchange (unix ms): when the request was sent and the response received.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    pub request_ms: u64,
    pub response_ms: u64,
}

pub fn storability(
    cfg: &Config,
    req: &RequestHead,
    resp: &ResponseHead,
    ex: Exchange,
) -> Result<Storable, NotStored> {
    // Partial and validation answers are never whole responses; informational ones are
    // not final.
    if resp.status < 200 || resp.status > 599 || resp.status == 206 || resp.status == 304 {
        return Err(NotStored::Status);
    }
    let (cc, targeted) = response_directives(cfg, resp);
    if cc.no_store {
        return Err(NotStored::NoStore);
    }
    // The field-named form (`private="set-cookie"`) is treated as the plain one: stricter,
    // never wrong.
    if cc.private {
        return Err(NotStored::Private);
    }
    let has_validator = resp.has("etag") || resp.has("last-modified");
    if cc.no_cache && !has_validator {
        return Err(NotStored::NoCache);
    }
    // RFC 9111 §3: a status that is not heuristically cacheable needs explicit freshness or
    // `public`.
    let listed = cfg.statuses.contains(&resp.status);
    let explicit = explicit_lifetime(&cc, resp, ex.response_ms / 1000, targeted);
    if !listed && explicit.is_none() && !cc.public {
        return Err(NotStored::Status);
    }
    // RFC 9111 §3.5: a shared cache stores a response to an authorized request only when the
    // response explicitly allows it.
    if req.has("authorization") && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return Err(NotStored::Authorization);
    }
    let strip_set_cookie = resp.has("set-cookie");
    if strip_set_cookie && cfg.set_cookie == SetCookiePolicy::NoStore {
        return Err(NotStored::SetCookie);
    }
    let vary = Vary::parse(resp.values("vary"));
    if vary == Vary::Any {
        return Err(NotStored::VaryAny);
    }
    let lifetime_s = explicit
        .or_else(|| heuristic_lifetime(cfg, &cc, resp, ex.response_ms / 1000))
        .unwrap_or(if listed || cc.public {
            cfg.default_ttl_s
        } else {
            0
        })
        .min(cfg.max_ttl_s);
    let initial_age_s = corrected_initial_age(resp, ex);
    let freshness = Freshness {
        lifetime_s,
        initial_age_s,
        no_cache: cc.no_cache,
        must_revalidate: cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some(),
        stale_while_revalidate_s: cc
            .stale_while_revalidate
            .unwrap_or(cfg.stale.while_revalidate_s),
        stale_if_error_s: cc.stale_if_error.unwrap_or(cfg.stale.if_error_s),
    };
    // A response already stale on arrival is still worth keeping if it can be revalidated
    // (`max-age=0` with an ETag is the common "always revalidate" pattern), or while a stale
    // window still covers it.
    let revalidatable = has_validator && cfg.keep_stale_s > 0;
    let window = freshness
        .stale_while_revalidate_s
        .max(freshness.stale_if_error_s);
    let stale_usable = freshness.within_stale_window(initial_age_s, window);
    if lifetime_s <= initial_age_s && !revalidatable && !stale_usable {
        return Err(NotStored::NotFresh);
    }
    Ok(Storable {
        freshness,
        vary,
        strip_set_cookie,
        has_validator,
    })
}

/// The configured targeted field (RFC 9213), if this response carries it.
pub fn targeted_field<'c>(cfg: &'c Config, resp: &ResponseHead) -> Option<&'c str> {
    cfg.cdn_cache_control.as_deref().filter(|f| resp.has(f))
}

/// The directives this cache obeys, and whether they came from the targeted field: those of
/// its targeted field (`CDN-Cache-Control`, RFC 9213) when the response has a valid one, else
/// `Cache-Control` (plus `Pragma: no-cache` when there is no Cache-Control at all, §5.4).
fn response_directives(cfg: &Config, resp: &ResponseHead) -> (CacheControl, bool) {
    if let Some(cc) = targeted_field(cfg, resp).and_then(|f| parse_targeted(resp.values(f))) {
        return (cc, true);
    }
    let mut cc = CacheControl::parse(resp.values("cache-control"));
    if !resp.has("cache-control")
        && resp.values("pragma").any(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("no-cache"))
        })
    {
        cc.no_cache = true;
    }
    (cc, false)
}

/// RFC 9111 §4.2.1: `s-maxage`, else `max-age`, else `Expires - Date`. With a targeted field
/// in charge, `Expires` is not consulted: the targeted directives replace the others.
fn explicit_lifetime(
    cc: &CacheControl,
    resp: &ResponseHead,
    received_s: u64,
    targeted: bool,
) -> Option<u64> {
    if let Some(s) = cc.s_maxage {
        return Some(s);
    }
    if let Some(m) = cc.max_age {
        return Some(m);
    }
    if targeted {
        return None;
    }
    let expires = resp.header("expires")?;
    // An invalid Expires (`0`, garbage) means "already expired" (§5.3).
    let Some(expires) = http_date_s(expires) else {
        return Some(0);
    };
    Some(expires.saturating_sub(date_or(resp, received_s)))
}

/// The Date of a response; without a valid one, RFC 9110 §6.6.1: the time it was received.
fn date_or(resp: &ResponseHead, received_s: u64) -> u64 {
    resp.header("date")
        .and_then(http_date_s)
        .unwrap_or(received_s)
}

/// RFC 9111 §4.2.2: a fraction (configured, 10% by default) of the time since Last-Modified,
/// capped, for statuses that allow heuristics (checked by the caller) without explicit
/// freshness.
fn heuristic_lifetime(
    cfg: &Config,
    cc: &CacheControl,
    resp: &ResponseHead,
    received_s: u64,
) -> Option<u64> {
    if cfg.heuristic_percent == 0 || !(cfg.statuses.contains(&resp.status) || cc.public) {
        return None;
    }
    let modified = http_date_s(resp.header("last-modified")?)?;
    let since = date_or(resp, received_s).saturating_sub(modified);
    Some((since.saturating_mul(cfg.heuristic_percent as u64) / 100).min(cfg.heuristic_max_s))
}

/// RFC 9111 §4.2.3, in seconds.
fn corrected_initial_age(resp: &ResponseHead, ex: Exchange) -> u64 {
    let response_s = ex.response_ms / 1000;
    let request_s = ex.request_ms / 1000;
    let date = resp.header("date").and_then(http_date_s);
    let apparent_age = date.map_or(0, |d| response_s.saturating_sub(d));
    // RFC 9111 §5.1: of a list-valued Age use the first member; an invalid value is ignored.
    let age_value = resp
        .header("age")
        .map(|a| a.split(',').next().unwrap_or("").trim())
        .filter(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()))
        .map_or(0, |a| a.parse().unwrap_or(u64::MAX));
    let response_delay = response_s.saturating_sub(request_s);
    apparent_age.max(age_value.saturating_add(response_delay))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{current_age_s, format_http_date, stored_headers};

    const NOW: u64 = 1_700_000_000_000;
    const EX: Exchange = Exchange {
        request_ms: NOW,
        response_ms: NOW,
    };

    fn get(headers: &[(&str, &str)]) -> RequestHead {
        RequestHead::for_test("GET", "/", headers)
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHead {
        ResponseHead::for_test(status, headers)
    }

    fn store(headers: &[(&str, &str)]) -> Result<Storable, NotStored> {
        storability(&Config::default(), &get(&[]), &resp(200, headers), EX)
    }

    #[test]
    fn rfc9111_4_2_1_s_maxage_over_max_age_over_expires() {
        assert_eq!(
            store(&[("cache-control", "max-age=10, s-maxage=20")])
                .unwrap()
                .freshness
                .lifetime_s,
            20
        );
        assert_eq!(
            store(&[("cache-control", "max-age=10")])
                .unwrap()
                .freshness
                .lifetime_s,
            10
        );
        let date = format_http_date(NOW);
        let expires = format_http_date(NOW + 30_000);
        assert_eq!(
            store(&[("date", &date), ("expires", &expires)])
                .unwrap()
                .freshness
                .lifetime_s,
            30
        );
        assert_eq!(
            store(&[
                ("cache-control", "max-age=5"),
                ("date", &date),
                ("expires", &expires)
            ])
            .unwrap()
            .freshness
            .lifetime_s,
            5
        );
    }

    #[test]
    fn rfc9111_5_3_invalid_expires_is_stale() {
        assert_eq!(store(&[("expires", "0")]), Err(NotStored::NotFresh));
        let date = format_http_date(NOW);
        assert_eq!(
            store(&[("date", &date), ("expires", "garbage")]),
            Err(NotStored::NotFresh)
        );
    }

    #[test]
    fn rfc9110_5_6_7_expires_in_any_of_the_three_formats_and_any_case() {
        let date = format_http_date(NOW);
        // NOW + 30 s as an IMF-fixdate, `Www, DD Mon YYYY HH:MM:SS GMT`, rewritten as the
        // other two formats, with names in odd case and asctime's day unpadded.
        let fixdate = format_http_date(NOW + 30_000);
        let p: Vec<&str> = fixdate
            .split([',', ' '])
            .filter(|p| !p.is_empty())
            .collect();
        let (wday, day, month, year, time) = (p[0], p[1], p[2], p[3], p[4]);
        let full = crate::policy::dates::WEEKDAYS
            .into_iter()
            .find(|d| d.starts_with(wday))
            .unwrap();
        for expires in [
            fixdate.to_lowercase(),
            format!(
                "{}, {day}-{}-{} {time} GMT",
                full.to_uppercase(),
                month.to_lowercase(),
                &year[2..]
            ),
            format!(
                "{} {} {} {time} {year}",
                wday.to_lowercase(),
                month.to_uppercase(),
                day.trim_start_matches('0')
            ),
        ] {
            let s = store(&[("date", &date), ("expires", &expires)]);
            assert_eq!(s.map(|s| s.freshness.lifetime_s), Ok(30), "{expires}");
        }
    }

    #[test]
    fn rfc9110_6_6_1_expires_without_date_counts_from_receipt() {
        let expires = format_http_date(NOW + 30_000);
        assert_eq!(
            store(&[("expires", &expires)])
                .unwrap()
                .freshness
                .lifetime_s,
            30
        );
    }

    #[test]
    fn default_ttl_applies_only_without_freshness_and_zero_means_no_store() {
        assert_eq!(store(&[]), Err(NotStored::NotFresh));
        let cfg = Config {
            default_ttl_s: 7,
            ..Config::default()
        };
        let s = storability(&cfg, &get(&[]), &resp(200, &[]), EX).unwrap();
        assert_eq!(s.freshness.lifetime_s, 7);
    }

    #[test]
    fn lifetime_is_capped_by_max_ttl() {
        let cfg = Config {
            max_ttl_s: 100,
            ..Config::default()
        };
        let r = resp(200, &[("cache-control", "max-age=100000")]);
        assert_eq!(
            storability(&cfg, &get(&[]), &r, EX)
                .unwrap()
                .freshness
                .lifetime_s,
            100
        );
    }

    #[test]
    fn rfc9111_3_not_stored_cases() {
        let cases: [(&[(&str, &str)], NotStored); 5] = [
            (
                &[("cache-control", "no-store, max-age=60")],
                NotStored::NoStore,
            ),
            (
                &[("cache-control", "max-age=60, Private")],
                NotStored::Private,
            ),
            (
                &[("cache-control", "no-cache, max-age=60")],
                NotStored::NoCache,
            ),
            (
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
                NotStored::SetCookie,
            ),
            (
                &[("cache-control", "max-age=60"), ("vary", "accept, *")],
                NotStored::VaryAny,
            ),
        ];
        for (headers, why) in cases {
            assert_eq!(store(headers), Err(why), "{headers:?}");
        }
        let cfg = Config {
            default_ttl_s: 60,
            ..Config::default()
        };
        for status in [100, 206, 304, 500, 302] {
            let r = resp(
                status,
                &[("last-modified", "Tue, 14 Nov 2023 00:00:00 GMT")],
            );
            assert_eq!(
                storability(&cfg, &get(&[]), &r, EX),
                Err(NotStored::Status),
                "{status} without explicit freshness"
            );
        }
    }

    #[test]
    fn rfc9111_3_other_statuses_need_explicit_freshness() {
        for (status, cc) in [
            (500, "max-age=10"),
            (302, "s-maxage=10"),
            (403, "max-age=10"),
        ] {
            let r = resp(status, &[("cache-control", cc)]);
            let s = storability(&Config::default(), &get(&[]), &r, EX).unwrap();
            assert_eq!(s.freshness.lifetime_s, 10, "{status}");
        }
        let date = format_http_date(NOW);
        let expires = format_http_date(NOW + 20_000);
        let r = resp(307, &[("date", &date), ("expires", &expires)]);
        assert!(storability(&Config::default(), &get(&[]), &r, EX).is_ok());
        for status in [206, 304] {
            let r = resp(status, &[("cache-control", "max-age=10")]);
            assert_eq!(
                storability(&Config::default(), &get(&[]), &r, EX),
                Err(NotStored::Status)
            );
        }
    }

    #[test]
    fn rfc9111_4_2_2_heuristic_freshness() {
        let date = format_http_date(NOW);
        let modified = format_http_date(NOW - 1_000_000);
        let h = [
            ("date", date.as_str()),
            ("last-modified", modified.as_str()),
        ];
        assert_eq!(
            store(&h).unwrap().freshness.lifetime_s,
            100,
            "10% of 1000 s"
        );
        let capped = Config {
            heuristic_max_s: 30,
            ..Config::default()
        };
        let r = resp(200, &h);
        assert_eq!(
            storability(&capped, &get(&[]), &r, EX)
                .unwrap()
                .freshness
                .lifetime_s,
            30
        );
        let off = Config {
            heuristic_percent: 0,
            ..Config::default()
        };
        // Off: no freshness; kept only as a stale copy to revalidate (Last-Modified).
        assert_eq!(
            storability(&off, &get(&[]), &r, EX)
                .unwrap()
                .freshness
                .lifetime_s,
            0
        );
        // Only for heuristically cacheable statuses, or with `public`.
        let r = resp(302, &h);
        assert_eq!(
            storability(&Config::default(), &get(&[]), &r, EX),
            Err(NotStored::Status)
        );
        let public = [h[0], h[1], ("cache-control", "public")];
        let r = resp(302, &public);
        assert_eq!(
            storability(&Config::default(), &get(&[]), &r, EX)
                .unwrap()
                .freshness
                .lifetime_s,
            100
        );
        // Explicit freshness wins over the heuristic.
        let explicit = [h[0], h[1], ("cache-control", "max-age=5")];
        assert_eq!(store(&explicit).unwrap().freshness.lifetime_s, 5);
    }

    #[test]
    fn rfc9111_5_2_2_4_no_cache_is_stored_for_revalidation_when_it_can_be() {
        let s = store(&[
            ("cache-control", "no-cache, max-age=60"),
            ("etag", "\"v1\""),
        ])
        .unwrap();
        assert!(s.freshness.no_cache);
        assert_eq!(
            store(&[("cache-control", "no-cache=\"set-cookie\", max-age=60")]),
            Err(NotStored::NoCache),
            "field-named form treated as plain: no validator, not stored"
        );
        // HTTP/1.0 Pragma without Cache-Control.
        let s = store(&[
            ("pragma", "no-cache"),
            ("etag", "\"v\""),
            ("expires", &format_http_date(NOW + 60_000)),
        ])
        .unwrap();
        assert!(s.freshness.no_cache);
    }

    #[test]
    fn stale_on_arrival_is_kept_only_if_revalidatable() {
        let s = store(&[("cache-control", "max-age=0"), ("etag", "\"v1\"")]).unwrap();
        assert_eq!(s.freshness.lifetime_s, 0);
        assert_eq!(s.freshness.store_ttl_ms(3600), 3_600_000);
        assert_eq!(
            store(&[("cache-control", "max-age=0")]),
            Err(NotStored::NotFresh)
        );
        let no_keep = Config {
            keep_stale_s: 0,
            ..Config::default()
        };
        let r = resp(200, &[("cache-control", "max-age=0"), ("etag", "\"v1\"")]);
        assert_eq!(
            storability(&no_keep, &get(&[]), &r, EX),
            Err(NotStored::NotFresh)
        );
    }

    #[test]
    fn rfc9111_5_2_2_revalidation_directives_are_recorded() {
        for cc in [
            "max-age=60, must-revalidate",
            "max-age=60, proxy-revalidate",
            "s-maxage=60",
        ] {
            assert!(
                store(&[("cache-control", cc)])
                    .unwrap()
                    .freshness
                    .must_revalidate,
                "{cc}"
            );
        }
        assert!(
            !store(&[("cache-control", "max-age=60")])
                .unwrap()
                .freshness
                .must_revalidate
        );
    }

    #[test]
    fn rfc9213_targeted_field_overrides_cache_control() {
        // CDN-Cache-Control wins over Cache-Control (which is for browsers).
        let s = store(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=120"),
        ])
        .unwrap();
        assert_eq!(s.freshness.lifetime_s, 120);
        assert_eq!(
            store(&[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "no-store")
            ]),
            Err(NotStored::NoStore)
        );
        // Expires is not consulted when the targeted field is in charge.
        let r = [
            ("cdn-cache-control", "public"),
            ("date", &format_http_date(NOW)),
            ("expires", &format_http_date(NOW + 50_000)),
        ];
        assert_eq!(store(&r), Err(NotStored::NotFresh));
        // Another targeted field name, and disabled.
        let custom = Config {
            cdn_cache_control: Some("fleet-cache-control".into()),
            ..Config::default()
        };
        let r = resp(
            200,
            &[
                ("cache-control", "no-store"),
                ("fleet-cache-control", "max-age=9"),
            ],
        );
        assert_eq!(
            storability(&custom, &get(&[]), &r, EX)
                .unwrap()
                .freshness
                .lifetime_s,
            9
        );
        let off = Config {
            cdn_cache_control: None,
            ..Config::default()
        };
        let r = resp(
            200,
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=9"),
            ],
        );
        assert_eq!(
            storability(&off, &get(&[]), &r, EX),
            Err(NotStored::NoStore)
        );
    }

    #[test]
    fn rfc9213_2_1_an_invalid_targeted_field_falls_back_to_cache_control() {
        for bad in [
            "max-age=10000, &&&&&",
            "max-age=\"10000\"",
            "max-age=1.5",
            "",
        ] {
            assert_eq!(
                store(&[("cache-control", "no-store"), ("cdn-cache-control", bad)]),
                Err(NotStored::NoStore),
                "{bad:?}"
            );
            // ... and to Expires, which a valid targeted field would have replaced.
            let r = [
                ("cdn-cache-control", bad),
                ("date", &format_http_date(NOW)),
                ("expires", &format_http_date(NOW + 50_000)),
            ];
            assert_eq!(store(&r).unwrap().freshness.lifetime_s, 50, "{bad:?}");
        }
    }

    #[test]
    fn set_cookie_can_be_stripped_instead() {
        let cfg = Config {
            set_cookie: SetCookiePolicy::Strip,
            ..Config::default()
        };
        let r = resp(
            200,
            &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
        );
        let s = storability(&cfg, &get(&[]), &r, EX).unwrap();
        assert!(s.strip_set_cookie);
        assert!(
            stored_headers(&r, true, None)
                .iter()
                .all(|(n, _)| n != "set-cookie")
        );
    }

    #[test]
    fn rfc9111_3_5_authorization_needs_explicit_permission() {
        let auth = get(&[("authorization", "Bearer x")]);
        let cfg = Config::default();
        let plain = resp(200, &[("cache-control", "max-age=60")]);
        assert_eq!(
            storability(&cfg, &auth, &plain, EX),
            Err(NotStored::Authorization)
        );
        for cc in [
            "public, max-age=60",
            "s-maxage=60",
            "must-revalidate, max-age=60",
        ] {
            let r = resp(200, &[("cache-control", cc)]);
            assert!(storability(&cfg, &auth, &r, EX).is_ok(), "{cc}");
        }
    }

    #[test]
    fn rfc9111_4_2_3_initial_age() {
        let date = format_http_date(NOW - 10_000);
        // Apparent age 10 s (Date is 10 s old), Age 3 + 2 s delay = 5: the larger wins.
        let r = resp(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("date", &date),
                ("age", "3"),
            ],
        );
        let ex = Exchange {
            request_ms: NOW - 2_000,
            response_ms: NOW,
        };
        let s = storability(&Config::default(), &get(&[]), &r, ex).unwrap();
        assert_eq!(s.freshness.initial_age_s, 10);
        assert_eq!(s.freshness.store_ttl_ms(0), 50_000);
        assert_eq!(s.freshness.store_ttl_ms(100), 150_000);
        let r = resp(200, &[("cache-control", "max-age=60"), ("age", "30")]);
        let s = storability(&Config::default(), &get(&[]), &r, ex).unwrap();
        assert_eq!(s.freshness.initial_age_s, 32);
        let r = resp(200, &[("cache-control", "max-age=60"), ("age", "x")]);
        let s = storability(&Config::default(), &get(&[]), &r, EX).unwrap();
        assert_eq!(s.freshness.initial_age_s, 0, "invalid Age ignored");
        let r = resp(200, &[("cache-control", "max-age=60"), ("age", "7, 9")]);
        let s = storability(&Config::default(), &get(&[]), &r, EX).unwrap();
        assert_eq!(s.freshness.initial_age_s, 7, "first member of a list");
        let r = resp(200, &[("cache-control", "max-age=60"), ("age", "60")]);
        assert_eq!(
            storability(&Config::default(), &get(&[]), &r, EX),
            Err(NotStored::NotFresh)
        );
        assert_eq!(current_age_s(NOW, 4, NOW + 2_500), 6);
    }

    #[test]
    fn rfc5861_stale_windows_from_the_response_else_the_configured_defaults() {
        let s = store(&[(
            "cache-control",
            "max-age=60, stale-while-revalidate=30, stale-if-error=600",
        )])
        .unwrap();
        assert_eq!(s.freshness.stale_while_revalidate_s, 30);
        assert_eq!(s.freshness.stale_if_error_s, 600);
        let none = store(&[("cache-control", "max-age=60")]).unwrap();
        assert_eq!(none.freshness.stale_while_revalidate_s, 0);
        assert_eq!(none.freshness.stale_if_error_s, 0);
        let cfg = Config {
            stale: crate::config::StaleConfig {
                while_revalidate_s: 5,
                if_error_s: 50,
            },
            ..Config::default()
        };
        let r = resp(200, &[("cache-control", "max-age=60, stale-if-error=7")]);
        let s = storability(&cfg, &get(&[]), &r, EX).unwrap();
        assert_eq!(s.freshness.stale_while_revalidate_s, 5, "the default");
        assert_eq!(s.freshness.stale_if_error_s, 7, "the response's own wins");
        // A targeted field replaces Cache-Control's windows too.
        let r = resp(
            200,
            &[
                ("cache-control", "max-age=60, stale-if-error=7"),
                ("cdn-cache-control", "max-age=60, stale-if-error=9"),
            ],
        );
        let s = storability(&Config::default(), &get(&[]), &r, EX).unwrap();
        assert_eq!(s.freshness.stale_if_error_s, 9);
        // Garbage grants nothing.
        let s = store(&[("cache-control", "max-age=60, stale-if-error=soon")]).unwrap();
        assert_eq!(s.freshness.stale_if_error_s, 0);
    }

    #[test]
    fn a_response_stale_on_arrival_is_kept_while_a_stale_window_covers_it() {
        let stale = |cc: &str| store(&[("cache-control", cc), ("age", "30")]);
        assert_eq!(stale("max-age=10"), Err(NotStored::NotFresh));
        assert!(stale("max-age=10, stale-if-error=60").is_ok());
        assert!(stale("max-age=10, stale-while-revalidate=60").is_ok());
        assert_eq!(
            stale("max-age=10, stale-if-error=19"),
            Err(NotStored::NotFresh),
            "stale by 20 s: past the window"
        );
        assert_eq!(
            stale("max-age=10, stale-if-error=60, must-revalidate"),
            Err(NotStored::NotFresh),
            "never served stale"
        );
    }
}
