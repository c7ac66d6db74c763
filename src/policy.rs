//! HTTP caching policy (RFC 9111), pure: may this request use the cache, may this response be
//! stored, for how long, how old is it.
//!
//! This first version covers what a shared cache must never get wrong: `no-store`, `private`,
//! `Set-Cookie`, `Authorization`, `Vary: *`, uncacheable statuses, and freshness from
//! `s-maxage`, `max-age`, `Expires`. Revalidation and the request directives beyond
//! `no-store`/`no-cache` come with the full RFC 9111 work; the types are shaped for it.

use crate::config::{Config, Method, SetCookiePolicy};
use crate::http::{RequestHead, ResponseHead};
use crate::key::Vary;
use std::time::{Duration, UNIX_EPOCH};

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
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
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
                    // With duplicates, the smallest lifetime wins: the conservative reading.
                    "max-age" => cc.max_age = min_some(cc.max_age, delta_seconds(arg)),
                    "s-maxage" => cc.s_maxage = min_some(cc.s_maxage, delta_seconds(arg)),
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

/// What to do with a request before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestPolicy {
    /// Look the request up (GET or HEAD).
    Lookup(Method),
    /// Don't look up (the client asked for a fresh answer), but record the response.
    Refresh(Method),
    /// Not the cache's business: pass it on, don't record.
    Bypass(BypassReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BypassReason {
    /// The method is not configured for caching.
    Method,
    /// The client sent `Cache-Control: no-store`.
    NoStore,
    /// A protocol upgrade (WebSocket): a tunnel, not a response.
    Upgrade,
}

pub fn request_policy(cfg: &Config, req: &RequestHead) -> RequestPolicy {
    let method = match req.method.as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => return RequestPolicy::Bypass(BypassReason::Method),
    };
    if !cfg.methods.contains(&method) {
        return RequestPolicy::Bypass(BypassReason::Method);
    }
    if req.has("upgrade") {
        return RequestPolicy::Bypass(BypassReason::Upgrade);
    }
    let cc = CacheControl::parse(req.values("cache-control"));
    if cc.no_store {
        return RequestPolicy::Bypass(BypassReason::NoStore);
    }
    // Pragma: no-cache is the HTTP/1.0 spelling, honoured only without Cache-Control
    // (RFC 9111 §5.4).
    let pragma_no_cache = !req.has("cache-control")
        && req.values("pragma").any(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("no-cache"))
        });
    if cc.no_cache || pragma_no_cache {
        return RequestPolicy::Refresh(method);
    }
    RequestPolicy::Lookup(method)
}

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

/// Response headers that must not be stored or replayed: hop-by-hop ones (RFC 9110 §7.6.1)
/// and those that describe one fetch rather than the resource.
const NOT_REPLAYED: [&str; 14] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authentication-info",
    // Envoy computes content-length for the local reply from the body.
    "content-length",
    // The hit gets a fresh Date and a computed Age instead.
    "date",
    "age",
    // Envoy sets its own on the way out.
    "server",
    "x-envoy-upstream-service-time",
];

/// The headers of a response as they are stored: without hop-by-hop and per-fetch headers,
/// without those `Connection` names, and without `Set-Cookie` when it is stripped.
pub fn stored_headers(resp: &ResponseHead, strip_set_cookie: bool) -> Vec<(String, String)> {
    let connection_listed: Vec<String> = resp
        .values("connection")
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    resp.headers
        .iter()
        .filter(|(name, _)| {
            let n = name.to_ascii_lowercase();
            let dropped = NOT_REPLAYED.contains(&n.as_str())
                || n.starts_with(':')
                || n.starts_with("x-envoy-")
                || connection_listed.contains(&n)
                || (strip_set_cookie && n == "set-cookie");
            !dropped
        })
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn request_policy_cases() {
        let cfg = Config::default();
        let mut r = get(&[]);
        assert_eq!(request_policy(&cfg, &r), RequestPolicy::Lookup(Method::Get));
        r.method = "HEAD".into();
        assert_eq!(
            request_policy(&cfg, &r),
            RequestPolicy::Lookup(Method::Head)
        );
        r.method = "POST".into();
        assert_eq!(
            request_policy(&cfg, &r),
            RequestPolicy::Bypass(BypassReason::Method)
        );
        let get_only = Config {
            methods: vec![Method::Get],
            ..Config::default()
        };
        r.method = "HEAD".into();
        assert_eq!(
            request_policy(&get_only, &r),
            RequestPolicy::Bypass(BypassReason::Method)
        );
        assert_eq!(
            request_policy(&cfg, &get(&[("cache-control", "no-store")])),
            RequestPolicy::Bypass(BypassReason::NoStore)
        );
        assert_eq!(
            request_policy(&cfg, &get(&[("cache-control", "no-cache")])),
            RequestPolicy::Refresh(Method::Get)
        );
        assert_eq!(
            request_policy(&cfg, &get(&[("pragma", "no-cache")])),
            RequestPolicy::Refresh(Method::Get)
        );
        assert_eq!(
            request_policy(
                &cfg,
                &get(&[("pragma", "no-cache"), ("cache-control", "max-age=5")])
            ),
            RequestPolicy::Lookup(Method::Get)
        );
        assert_eq!(
            request_policy(&cfg, &get(&[("upgrade", "websocket")])),
            RequestPolicy::Bypass(BypassReason::Upgrade)
        );
    }

    #[test]
    fn hop_by_hop_and_per_fetch_headers_are_not_stored() {
        let r = resp(
            200,
            &[
                ("content-type", "text/plain"),
                ("connection", "close, X-Private-Hop"),
                ("x-private-hop", "1"),
                ("transfer-encoding", "chunked"),
                ("date", "x"),
                ("age", "1"),
                ("content-length", "5"),
                ("x-envoy-upstream-service-time", "3"),
                ("keep-alive", "timeout=5"),
                ("etag", "\"v1\""),
                ("set-cookie", "a=b"),
            ],
        );
        let kept: Vec<String> = stored_headers(&r, false)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(kept, vec!["content-type", "etag", "set-cookie"]);
    }
}
