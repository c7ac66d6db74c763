//! May a response be stored, for how long, and how old is it already (RFC 9111 §3, §4.2).

use super::{CacheControl, http_date_s};
use crate::config::{Config, SetCookiePolicy};
use crate::http::{RequestHead, ResponseHead};
use crate::key::Vary;

/// Why a response was not stored (reported in logs and tests, never to clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Status,
    NoStore,
    Private,
    /// `no-cache` responses must be revalidated on every use; until revalidation exists they
    /// are not stored.
    NoCache,
    SetCookie,
    Authorization,
    VaryAny,
    /// No lifetime, or already stale when received.
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
    /// Freshness lifetime, capped by `max_ttl_s`.
    pub lifetime_s: u64,
    /// Corrected initial age (RFC 9111 §4.2.3).
    pub initial_age_s: u64,
    pub vary: Vary,
    pub strip_set_cookie: bool,
}

impl Storable {
    /// How long the entry stays useful in the store: the rest of its freshness.
    pub fn remaining_ms(&self) -> u64 {
        self.lifetime_s.saturating_sub(self.initial_age_s) * 1000
    }
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
    if !cfg.statuses.contains(&resp.status) {
        return Err(NotStored::Status);
    }
    let cc = CacheControl::parse(resp.values("cache-control"));
    if cc.no_store {
        return Err(NotStored::NoStore);
    }
    if cc.private {
        return Err(NotStored::Private);
    }
    if cc.no_cache {
        return Err(NotStored::NoCache);
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
    let lifetime_s = freshness_lifetime(cfg, &cc, resp, ex.response_ms / 1000).min(cfg.max_ttl_s);
    let initial_age_s = corrected_initial_age(resp, ex);
    if lifetime_s <= initial_age_s {
        return Err(NotStored::NotFresh);
    }
    Ok(Storable {
        lifetime_s,
        initial_age_s,
        vary,
        strip_set_cookie,
    })
}

/// RFC 9111 §4.2.1: `s-maxage`, else `max-age`, else `Expires - Date`, else the configured
/// default.
fn freshness_lifetime(
    cfg: &Config,
    cc: &CacheControl,
    resp: &ResponseHead,
    received_s: u64,
) -> u64 {
    if let Some(s) = cc.s_maxage {
        return s;
    }
    if let Some(m) = cc.max_age {
        return m;
    }
    if let Some(expires) = resp.header("expires") {
        // An invalid Expires (`0`, garbage) means "already expired" (§5.3).
        let Some(expires) = http_date_s(expires) else {
            return 0;
        };
        // Without a (valid) Date, RFC 9110 §6.6.1: the time the response was received.
        let date = resp
            .header("date")
            .and_then(http_date_s)
            .unwrap_or(received_s);
        return expires.saturating_sub(date);
    }
    cfg.default_ttl_s
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
                .lifetime_s,
            20
        );
        assert_eq!(
            store(&[("cache-control", "max-age=10")])
                .unwrap()
                .lifetime_s,
            10
        );
        let date = format_http_date(NOW);
        let expires = format_http_date(NOW + 30_000);
        assert_eq!(
            store(&[("date", &date), ("expires", &expires)])
                .unwrap()
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
    fn rfc9110_6_6_1_expires_without_date_counts_from_receipt() {
        let expires = format_http_date(NOW + 30_000);
        assert_eq!(store(&[("expires", &expires)]).unwrap().lifetime_s, 30);
    }

    #[test]
    fn default_ttl_applies_only_without_freshness_and_zero_means_no_store() {
        assert_eq!(store(&[]), Err(NotStored::NotFresh));
        let cfg = Config {
            default_ttl_s: 7,
            ..Config::default()
        };
        let s = storability(&cfg, &get(&[]), &resp(200, &[]), EX).unwrap();
        assert_eq!(s.lifetime_s, 7);
    }

    #[test]
    fn lifetime_is_capped_by_max_ttl() {
        let cfg = Config {
            max_ttl_s: 100,
            ..Config::default()
        };
        let r = resp(200, &[("cache-control", "max-age=100000")]);
        assert_eq!(
            storability(&cfg, &get(&[]), &r, EX).unwrap().lifetime_s,
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
        let r = resp(500, &[("cache-control", "max-age=60")]);
        assert_eq!(
            storability(&Config::default(), &get(&[]), &r, EX),
            Err(NotStored::Status)
        );
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
            stored_headers(&r, true)
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
        assert_eq!(s.initial_age_s, 10);
        assert_eq!(s.remaining_ms(), 50_000);
        let r = resp(200, &[("cache-control", "max-age=60"), ("age", "30")]);
        let s = storability(&Config::default(), &get(&[]), &r, ex).unwrap();
        assert_eq!(s.initial_age_s, 32);
        let r = resp(200, &[("cache-control", "max-age=60"), ("age", "x")]);
        let s = storability(&Config::default(), &get(&[]), &r, EX).unwrap();
        assert_eq!(s.initial_age_s, 0, "invalid Age ignored");
        let r = resp(200, &[("cache-control", "max-age=60"), ("age", "7, 9")]);
        let s = storability(&Config::default(), &get(&[]), &r, EX).unwrap();
        assert_eq!(s.initial_age_s, 7, "first member of a list");
        let r = resp(200, &[("cache-control", "max-age=60"), ("age", "60")]);
        assert_eq!(
            storability(&Config::default(), &get(&[]), &r, EX),
            Err(NotStored::NotFresh)
        );
        assert_eq!(current_age_s(NOW, 4, NOW + 2_500), 6);
    }
}
