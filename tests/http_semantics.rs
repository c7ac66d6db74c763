//! RFC 9110/9111 semantics through real Envoy, Webdis and Redis: client conditional requests
//! answered from the cache, preconditions and ranges, `only-if-cached`, the request's limits on
//! age and staleness, `CDN-Cache-Control`, `Authorization`, which statuses are stored,
//! heuristic freshness and `Pragma: no-cache`.
//!
//! Every test starts its own stack. What a response looks like is chosen by the origin's query
//! parameters (tests/support/origin.rs); whether a request reached the origin is checked with
//! the origin's per-path counter.

mod support;

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime};
use support::origin::{http_date, percent_encode};
use support::stack::merge_patch;
use support::{Resp, Stack, StackOptions, binary_body};

/// A fixed Last-Modified (and dates just before and after it) for the conditional tests.
const LM: &str = "Tue, 14 Nov 2023 22:13:20 GMT";
const BEFORE_LM: &str = "Tue, 14 Nov 2023 22:13:19 GMT";
const AFTER_LM: &str = "Wed, 15 Nov 2023 00:00:00 GMT";

/// A stack whose plugin config is the defaults plus `patch`. The lookup deadline is raised
/// from 100 ms so that parallel tests on a loaded machine don't turn hits into store timeouts
/// (these tests are about HTTP semantics, not the fail-open path).
fn start(patch: Value) -> Stack {
    // The in-proxy tier is off: a refresh through one worker must be seen by the next request
    // whichever worker takes it (the tier's own bound is tests/memory_tier.rs'). Hit-for-miss
    // is off: these tests repeat uncacheable URLs and compare Cache-Status exactly, which it
    // would tag (`detail=hit-for-miss`); tests/origin_protection.rs is its own.
    let mut cfg = json!({"store": {"timeout_ms": 2000}, "memory": {"max_bytes": 0},
                         "hit_for_miss_s": 0});
    merge_patch(&mut cfg, &patch);
    Stack::start(StackOptions::with_config(cfg))
}

fn enc(s: &str) -> String {
    percent_encode(s.as_bytes())
}

/// Publishing is asynchronous (the root context writes after the response ends): waits until
/// envoy 0 has published `n` entries in all.
fn wait_published(s: &Stack, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let published = s.stat(0, "fleet_cache_published").unwrap_or(0);
        if published >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "published {published} of {n} entries; log:\n{}",
            s.envoy_log(0)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn cache_status(r: &Resp) -> &str {
    r.header("cache-status").unwrap_or("")
}

fn assert_cs(r: &Resp, expected: &str) {
    assert_eq!(
        cache_status(r),
        expected,
        "status {} headers {:?}",
        r.status,
        r.headers
    );
}

/// The `ttl` of a hit's Cache-Status (panics if it is not a hit).
fn hit_ttl(r: &Resp) -> i64 {
    let cs = cache_status(r);
    // A hit from the in-proxy tier says so after the ttl; the semantics are the same.
    cs.strip_prefix("fleet-cache; hit; ttl=")
        .map(|t| t.strip_suffix("; detail=memory").unwrap_or(t))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("expected a hit: status {} {:?}", r.status, r.headers))
}

fn assert_hit(r: &Resp, status: u16) {
    hit_ttl(r);
    assert_eq!(r.status, status, "{:?}", r.headers);
}

fn age(r: &Resp) -> u64 {
    r.header("age")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no numeric age: {:?}", r.headers))
}

/// One GET on a raw socket (`Connection: close`): the status, the header lines (names
/// lowercased) and every byte Envoy sent after the head until it closed the connection. For
/// answers whose body the client must not read by framing (304) this shows what really went
/// over the wire.
fn raw_get(
    s: &Stack,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut c = TcpStream::connect(("127.0.0.1", s.envoy_port(0))).expect("connect to envoy");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.write_all(req.as_bytes()).unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all)
        .unwrap_or_else(|e| panic!("read {target}: {e} after {all:?}"));
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head: {:?}", String::from_utf8_lossy(&all)));
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let hs = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, hs, all[end + 4..].to_vec())
}

fn raw_header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------------------------
// 1. Client conditional requests on a fresh hit

#[test]
fn conditional_requests_on_a_fresh_hit_get_304_from_the_cache() {
    let s = start(json!({}));
    let path = format!(
        "/cond?etag=%22v1%22&last_modified={}&cc=max-age%3D60",
        enc(LM)
    );
    let miss = s.get(&path, &[]);
    assert_eq!(miss.status, 200);
    assert_eq!(miss.header("etag"), Some("\"v1\""), "origin decodes %22");
    assert_cs(&miss, "fleet-cache; fwd=uri-miss; fwd-status=200; stored");
    wait_published(&s, 1);

    for inm in ["\"v1\"", "W/\"v1\"", "\"x\", \"v1\"", "*"] {
        let r = s.get(&path, &[("if-none-match", inm)]);
        assert_hit(&r, 304);
        assert_eq!(r.header("etag"), Some("\"v1\""), "{inm}");
        assert_eq!(r.header("cache-control"), Some("max-age=60"), "{inm}");
        assert!(r.has_header("date") && r.has_header("age"), "{inm}");
        // Only the headers a 304 carries (RFC 9110 §15.4.5): no representation metadata, and
        // no Last-Modified when there is an ETag.
        for h in ["content-type", "last-modified", "x-origin-count"] {
            assert!(!r.has_header(h), "{inm}: {h} on a 304: {:?}", r.headers);
        }
    }
    // What actually goes over the wire for a 304 local reply: no body bytes at all.
    let (status, hs, body) = raw_get(&s, &path, &[("if-none-match", "\"v1\"")]);
    assert_eq!(status, 304, "{hs:?}");
    assert!(body.is_empty(), "body bytes after a 304: {body:?}");
    assert!(raw_header(&hs, "transfer-encoding").is_none(), "{hs:?}");
    // Envoy 1.40 sends no Content-Length on it (a `0` would claim an empty representation).
    assert_eq!(raw_header(&hs, "content-length"), None, "{hs:?}");
    assert_eq!(raw_header(&hs, "etag"), Some("\"v1\""));
    assert!(
        raw_header(&hs, "cache-status").is_some_and(|c| c.starts_with("fleet-cache; hit; ttl=")),
        "{hs:?}"
    );

    // Another tag: the full response, from the cache.
    let r = s.get(&path, &[("if-none-match", "\"v2\"")]);
    assert_hit(&r, 200);
    assert_eq!(r.body, miss.body);
    assert_eq!(
        r.header("content-length"),
        Some(&*miss.body.len().to_string())
    );
    assert_eq!(r.header("etag"), Some("\"v1\""));

    // If-Modified-Since (only without If-None-Match): not modified since, or later.
    for ims in [LM, AFTER_LM] {
        let r = s.get(&path, &[("if-modified-since", ims)]);
        assert_hit(&r, 304);
        assert_eq!(r.header("etag"), Some("\"v1\""));
    }
    let r = s.get(&path, &[("if-modified-since", BEFORE_LM)]);
    assert_hit(&r, 200);
    assert_eq!(r.body, miss.body);
    // If-None-Match decides alone: a non-matching tag wins over a matching date.
    let r = s.get(
        &path,
        &[("if-none-match", "\"v2\""), ("if-modified-since", LM)],
    );
    assert_hit(&r, 200);

    assert_eq!(
        s.origin().count("/cond"),
        1,
        "every answer came from the cache"
    );

    // Without an ETag, the 304 carries Last-Modified.
    let path = format!("/lm?last_modified={}&cc=max-age%3D60", enc(LM));
    assert_eq!(s.get(&path, &[]).status, 200);
    wait_published(&s, 2);
    let r = s.get(&path, &[("if-modified-since", LM)]);
    assert_hit(&r, 304);
    assert_eq!(r.header("last-modified"), Some(LM));
    assert_eq!(r.header("cache-control"), Some("max-age=60"));
    // An If-None-Match against a response without an ETag never matches.
    let r = s.get(&path, &[("if-none-match", "\"v1\"")]);
    assert_hit(&r, 200);
    assert_eq!(s.origin().count("/lm"), 1);
}

// ---------------------------------------------------------------------------------------------
// 2. Preconditions the cache can't evaluate go to the origin

#[test]
fn if_match_and_if_unmodified_since_go_to_the_origin() {
    let s = start(json!({}));
    let path = format!(
        "/pre?etag=%22v1%22&last_modified={}&cc=max-age%3D60",
        enc(LM)
    );
    s.get(&path, &[]);
    wait_published(&s, 1);
    assert_hit(&s.get(&path, &[]), 200);
    assert_eq!(s.origin().count("/pre"), 1);

    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[("if-match", "\"v1\"")], "if-match"),
        (&[("if-unmodified-since", LM)], "if-unmodified-since"),
        (
            &[("if-range", "\"v1\""), ("range", "bytes=0-3")],
            "if-range",
        ),
    ];
    for (i, (headers, name)) in cases.into_iter().enumerate() {
        let r = s.get(&path, headers);
        assert_eq!(r.status, 200, "{name}");
        assert_cs(&r, "fleet-cache; fwd=request; fwd-status=200; stored");
        assert_eq!(s.origin().count("/pre"), 2 + i, "{name} reached the origin");
        let seen = s.origin().last_request("/pre").unwrap();
        assert_eq!(
            seen.header(name),
            Some(headers[0].1),
            "the precondition is forwarded intact"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Byte ranges

#[test]
fn single_ranges_are_answered_from_a_hit() {
    let s = start(json!({}));
    let path = "/r?size=1000&cc=max-age%3D60";
    let full = binary_body("/r", 1000);
    let miss = s.get(path, &[]);
    assert_eq!(miss.body, full);
    wait_published(&s, 1);

    for (range, first, last) in [
        ("bytes=0-9", 0usize, 9usize),
        ("bytes=-5", 995, 999),
        ("bytes=100-", 100, 999),
        ("bytes=990-5000", 990, 999),
    ] {
        let r = s.get(path, &[("range", range)]);
        assert_hit(&r, 206);
        assert_eq!(
            r.header("content-range"),
            Some(&*format!("bytes {first}-{last}/1000")),
            "{range}"
        );
        assert!(r.complete, "{range}");
        assert!(r.body == full[first..=last], "{range}: wrong bytes");
        assert_eq!(
            r.header("content-length"),
            Some(&*(last - first + 1).to_string()),
            "{range}"
        );
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    }

    let r = s.get(path, &[("range", "bytes=5000-")]);
    assert_hit(&r, 416);
    assert_eq!(r.header("content-range"), Some("bytes */1000"));
    assert!(r.body.is_empty(), "416 body: {:?}", r.body);
    assert_eq!(r.header("content-length"), Some("0"));
    assert!(!r.has_header("content-type"), "{:?}", r.headers);
    assert_eq!(s.origin().count("/r"), 1, "every range came from the cache");

    // Several ranges: a multipart answer is the origin's to make. The test origin ignores
    // Range and answers the whole body, which is what the client gets (and is stored).
    let r = s.get(path, &[("range", "bytes=0-1,5-6")]);
    assert_eq!(s.origin().count("/r"), 2);
    assert_eq!(
        s.origin().last_request("/r").unwrap().header("range"),
        Some("bytes=0-1,5-6")
    );
    assert_eq!(r.status, 200);
    assert!(r.body == full);
    assert_cs(
        &r,
        "fleet-cache; fwd=bypass; fwd-status=200; stored; detail=multiple-ranges",
    );
}

#[test]
fn a_range_request_that_misses_goes_to_the_origin_and_a_full_200_is_stored() {
    let s = start(json!({}));
    let path = "/rm?size=1000&cc=max-age%3D60";
    let full = binary_body("/rm", 1000);
    let miss = s.get(path, &[("range", "bytes=0-9")]);
    assert_eq!(miss.status, 200, "the origin ignores Range");
    assert!(miss.body == full);
    assert_cs(&miss, "fleet-cache; fwd=uri-miss; fwd-status=200; stored");
    assert_eq!(
        s.origin().last_request("/rm").unwrap().header("range"),
        Some("bytes=0-9"),
        "Range is forwarded"
    );
    wait_published(&s, 1);

    let r = s.get(path, &[("range", "bytes=0-9")]);
    assert_hit(&r, 206);
    assert_eq!(r.header("content-range"), Some("bytes 0-9/1000"));
    assert!(r.body == full[..10]);
    let r = s.get(path, &[]);
    assert_hit(&r, 200);
    assert!(r.body == full);
    assert_eq!(s.origin().count("/rm"), 1);
}

// ---------------------------------------------------------------------------------------------
// 4. only-if-cached

#[test]
fn only_if_cached_answers_504_without_the_origin_until_cached() {
    let s = start(json!({}));
    let path = "/oic?cc=max-age%3D60";
    let oic = [("cache-control", "only-if-cached")];
    let r = s.get(path, &oic);
    assert_eq!(r.status, 504);
    assert_cs(&r, "fleet-cache; detail=only-if-cached");
    assert!(r.body.is_empty(), "{:?}", r.text());
    assert_eq!(r.header("content-length"), Some("0"));
    assert_eq!(s.origin().count("/oic"), 0, "the origin was not contacted");

    let miss = s.get(path, &[]);
    assert_cs(&miss, "fleet-cache; fwd=uri-miss; fwd-status=200; stored");
    wait_published(&s, 1);
    let r = s.get(path, &oic);
    assert_hit(&r, 200);
    assert_eq!(r.body, miss.body);
    assert_eq!(s.origin().count("/oic"), 1);

    // A stored but stale entry is not usable either: 504, still without the origin.
    let path = "/oics?cc=max-age%3D1&header=age%3A5&etag=%22s%22";
    s.get(path, &[]);
    wait_published(&s, 2);
    let r = s.get(path, &oic);
    assert_eq!(r.status, 504);
    assert_cs(&r, "fleet-cache; detail=only-if-cached");
    assert_eq!(s.origin().count("/oics"), 1);
    // ... unless the client also accepts staleness.
    let r = s.get(path, &[("cache-control", "only-if-cached, max-stale")]);
    assert_hit(&r, 200);
    assert_eq!(s.origin().count("/oics"), 1);
}

// ---------------------------------------------------------------------------------------------
// 5. The request's limits on age and staleness

#[test]
fn request_max_age_and_min_fresh_send_an_old_entry_to_the_origin() {
    let s = start(json!({}));
    // The origin says the response is already 30 s old (Age: 30), fresh for 60.
    let path = "/age?cc=max-age%3D60&header=age%3A30";
    let miss = s.get(path, &[]);
    assert_cs(&miss, "fleet-cache; fwd=uri-miss; fwd-status=200; stored");
    wait_published(&s, 1);
    let hit = s.get(path, &[]);
    assert_hit(&hit, 200);
    assert!((30..=32).contains(&age(&hit)), "{:?}", hit.headers);
    assert!((28..=30).contains(&hit_ttl(&hit)), "{:?}", hit.headers);
    assert_eq!(s.origin().count("/age"), 1);

    let mut fetches = 1;
    let mut published = 1;
    for cc in ["max-age=0", "max-age=10", "min-fresh=40"] {
        let r = s.get(path, &[("cache-control", cc)]);
        fetches += 1;
        published += 1;
        assert_eq!(r.status, 200);
        assert_cs(&r, "fleet-cache; fwd=stale; fwd-status=200; stored");
        assert_eq!(s.origin().count("/age"), fetches, "{cc}");
        wait_published(&s, published);
    }
    for cc in ["max-age=50", "min-fresh=10"] {
        let r = s.get(path, &[("cache-control", cc)]);
        assert_hit(&r, 200);
        assert_eq!(s.origin().count("/age"), fetches, "{cc}");
    }
}

/// `r` answered a request that had to go to the origin because the stored entry (ETag `etag`,
/// body `body`) is too stale for it; the origin has now seen `n` requests for `p`. Either the
/// filter forwarded the request as it was (the origin's 200 passes and is recorded again), or
/// it revalidated: the origin saw the stored ETag in `If-None-Match`, answered 304, and the
/// client got the stored 200 (`fwd-status=304`) while the refreshed metadata is written back.
/// Both end in one write.
fn assert_forwarded_stale(s: &Stack, p: &str, n: usize, r: &Resp, etag: &str, body: &[u8]) {
    assert_eq!(s.origin().count(p), n, "{p}: the origin was not asked");
    assert_eq!(r.status, 200, "{p}: {:?}", r.headers);
    assert!(r.body == body, "{p}: body {:?}", r.text());
    let seen = s.origin().last_request(p).unwrap();
    match seen.header("if-none-match") {
        Some(inm) => {
            assert_eq!(inm, etag, "{p}: revalidated with the stored ETag");
            assert_cs(r, "fleet-cache; fwd=stale; fwd-status=304; stored");
            assert_eq!(r.header("etag"), Some(etag));
        }
        None => assert_cs(r, "fleet-cache; fwd=stale; fwd-status=200; stored"),
    }
}

#[test]
fn max_stale_serves_a_stale_entry_unless_it_must_be_revalidated() {
    let s = start(json!({}));
    // Fresh for 1 s, 5 s old on arrival: stale at once, but kept (it has a validator).
    let path = "/stale?cc=max-age%3D1&header=age%3A5&etag=%22s1%22";
    let miss = s.get(path, &[]);
    assert_cs(&miss, "fleet-cache; fwd=uri-miss; fwd-status=200; stored");
    wait_published(&s, 1);

    // A plain request doesn't accept it.
    let r = s.get(path, &[]);
    assert_forwarded_stale(&s, "/stale", 2, &r, "\"s1\"", &miss.body);
    wait_published(&s, 2);

    let r = s.get(path, &[("cache-control", "max-stale")]);
    assert_hit(&r, 200);
    assert_eq!(r.body, miss.body);
    let ttl = hit_ttl(&r);
    assert!((-7..=-4).contains(&ttl), "ttl {ttl}: {:?}", r.headers);
    assert!((5..=7).contains(&age(&r)), "{:?}", r.headers);
    let r = s.get(path, &[("cache-control", "max-stale=100")]);
    assert_hit(&r, 200);
    assert_eq!(s.origin().count("/stale"), 2);
    // A client's own If-None-Match on the stale entry is the origin's to answer: its 304 goes
    // back to the client as it is (not stored).
    let r = s.get(path, &[("if-none-match", "\"s1\"")]);
    assert_eq!(r.status, 304);
    assert_cs(&r, "fleet-cache; fwd=stale; fwd-status=304");
    assert_eq!(s.origin().count("/stale"), 3);
    let seen = s.origin().last_request("/stale").unwrap();
    assert_eq!(seen.header("if-none-match"), Some("\"s1\""));
    // Staler than the client accepts.
    let r = s.get(path, &[("cache-control", "max-stale=2")]);
    assert_forwarded_stale(&s, "/stale", 4, &r, "\"s1\"", &miss.body);
    wait_published(&s, 3);

    // must-revalidate, proxy-revalidate and s-maxage (proxy-revalidate for a shared cache):
    // never served stale, whatever the client accepts.
    let mut published = 3;
    for (p, cc) in [
        ("/mr", "max-age%3D1%2C%20must-revalidate"),
        ("/pr", "max-age%3D1%2C%20proxy-revalidate"),
        ("/sm", "s-maxage%3D1"),
    ] {
        let path = format!("{p}?cc={cc}&header=age%3A5&etag=%22m1%22");
        let miss = s.get(&path, &[]);
        assert_cs(&miss, "fleet-cache; fwd=uri-miss; fwd-status=200; stored");
        published += 1;
        wait_published(&s, published);
        let r = s.get(&path, &[("cache-control", "max-stale")]);
        assert_forwarded_stale(&s, p, 2, &r, "\"m1\"", &miss.body);
        published += 1;
        wait_published(&s, published);
    }
}

// ---------------------------------------------------------------------------------------------
// 6. CDN-Cache-Control

#[test]
fn cdn_cache_control_is_obeyed_and_not_passed_on() {
    let s = start(json!({}));
    let path = "/cdn?cc=no-store&header=CDN-Cache-Control%3Amax-age%3D60";
    assert_eq!(
        s.origin_request("GET", path, &[])
            .header("cdn-cache-control"),
        Some("max-age=60"),
        "the origin sends it"
    );
    let miss = s.get(path, &[]);
    assert_eq!(miss.status, 200);
    assert_cs(&miss, "fleet-cache; fwd=uri-miss; fwd-status=200; stored");
    assert!(!miss.has_header("cdn-cache-control"), "{:?}", miss.headers);
    assert_eq!(miss.header("cache-control"), Some("no-store"));
    wait_published(&s, 1);

    let hit = s.get(path, &[]);
    assert_hit(&hit, 200);
    assert!((59..=60).contains(&hit_ttl(&hit)), "{:?}", hit.headers);
    assert!(!hit.has_header("cdn-cache-control"), "{:?}", hit.headers);
    assert_eq!(hit.header("cache-control"), Some("no-store"));
    assert_eq!(hit.body, miss.body);
    assert_eq!(s.origin().count("/cdn"), 2, "one direct request, one miss");

    // And the other way round: CDN-Cache-Control: no-store wins over Cache-Control.
    let path = "/cdn2?cc=max-age%3D60&header=CDN-Cache-Control%3Ano-store";
    for _ in 0..2 {
        let r = s.get(path, &[]);
        assert_cs(&r, "fleet-cache; fwd=uri-miss; fwd-status=200");
        assert!(!r.has_header("cdn-cache-control"), "{:?}", r.headers);
        assert_eq!(r.header("cache-control"), Some("max-age=60"));
    }
    assert_eq!(s.origin().count("/cdn2"), 2);
}

#[test]
fn an_invalid_cdn_cache_control_is_ignored_as_a_whole() {
    let s = start(json!({}));
    // RFC 9213 §2.1: a field that is not a valid Structured Field Dictionary, or has a
    // directive of the wrong type, is ignored; Cache-Control: no-store then rules.
    for (name, field) in [
        ("/unparsable", "max-age%3D10000%2C%20%26%26%26%26%26"),
        ("/wrong-type", "max-age%3D%2210000%22"),
    ] {
        let path = format!("{name}?cc=no-store&header=CDN-Cache-Control%3A{field}");
        for _ in 0..2 {
            let r = s.get(&path, &[]);
            assert_eq!(r.status, 200);
            assert_cs(&r, "fleet-cache; fwd=uri-miss; fwd-status=200");
        }
        assert_eq!(
            s.origin().count(name),
            2,
            "{name}: never served from the cache"
        );
    }
    assert_eq!(s.stat(0, "fleet_cache_published"), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 7. Authorization

#[test]
fn authorized_requests_are_stored_only_when_the_response_allows_it() {
    let s = start(json!({}));
    let auth = [("authorization", "Bearer secret")];
    let path = "/auth?cc=max-age%3D60";
    for _ in 0..2 {
        let r = s.get(path, &auth);
        assert_eq!(r.status, 200);
        assert_cs(&r, "fleet-cache; fwd=uri-miss; fwd-status=200");
    }
    assert_eq!(s.origin().count("/auth"), 2);
    assert_eq!(
        s.origin()
            .last_request("/auth")
            .unwrap()
            .header("authorization"),
        Some("Bearer secret")
    );

    let mut published = 0;
    for (p, cc) in [
        ("/authpub", "public%2C%20max-age%3D60"),
        ("/authsm", "s-maxage%3D60"),
        ("/authmr", "must-revalidate%2C%20max-age%3D60"),
    ] {
        let path = format!("{p}?cc={cc}");
        let miss = s.get(&path, &auth);
        assert_cs(&miss, "fleet-cache; fwd=uri-miss; fwd-status=200; stored");
        published += 1;
        wait_published(&s, published);
        let r = s.get(&path, &auth);
        assert_hit(&r, 200);
        assert_eq!(r.body, miss.body);
        assert_eq!(s.origin().count(p), 1, "{p}");
    }
    assert_eq!(s.stat(0, "fleet_cache_published"), Some(3));
}

// ---------------------------------------------------------------------------------------------
// 8. Statuses

#[test]
fn explicit_freshness_makes_any_final_status_storable() {
    let s = start(json!({}));
    let path = "/e500?status=500&cc=max-age%3D60";
    let miss = s.get(path, &[]);
    assert_eq!(miss.status, 500);
    assert_cs(&miss, "fleet-cache; fwd=uri-miss; fwd-status=500; stored");
    wait_published(&s, 1);
    let hit = s.get(path, &[]);
    assert_hit(&hit, 500);
    assert_eq!(hit.body, miss.body);
    assert_eq!(s.origin().count("/e500"), 1);

    // Without freshness, a 500 is not stored (not even with a Last-Modified for heuristics).
    let path = format!("/e500n?status=500&last_modified={}", enc(LM));
    for _ in 0..2 {
        let r = s.get(&path, &[]);
        assert_eq!(r.status, 500);
        assert_cs(&r, "fleet-cache; fwd=uri-miss; fwd-status=500");
    }
    assert_eq!(s.origin().count("/e500n"), 2);

    let path = "/r302?status=302&cc=max-age%3D60&header=Location%3A%2Fnext";
    let miss = s.get(path, &[]);
    assert_eq!(miss.status, 302);
    assert_cs(&miss, "fleet-cache; fwd=uri-miss; fwd-status=302; stored");
    wait_published(&s, 2);
    let hit = s.get(path, &[]);
    assert_hit(&hit, 302);
    assert_eq!(hit.header("location"), Some("/next"));
    assert_eq!(s.origin().count("/r302"), 1);

    // A 302 without freshness is not stored.
    let path = "/r302n?status=302&header=Location%3A%2Fnext";
    for _ in 0..2 {
        let r = s.get(path, &[]);
        assert_cs(&r, "fleet-cache; fwd=uri-miss; fwd-status=302");
    }
    assert_eq!(s.origin().count("/r302n"), 2);
    assert_eq!(s.stat(0, "fleet_cache_published"), Some(2));
}

// ---------------------------------------------------------------------------------------------
// 9. Heuristic freshness

#[test]
fn heuristic_freshness_is_a_tenth_of_the_age_capped_at_a_day() {
    let s = start(json!({}));
    let day = Duration::from_secs(86_400);
    let mut published = 0;
    // (path, days since Last-Modified, expected lifetime)
    for (p, days, lifetime) in [
        ("/h5", 5, 43_200i64),
        ("/h10", 10, 86_400),
        ("/h30", 30, 86_400),
    ] {
        let lm = http_date(SystemTime::now() - day * days);
        let path = format!("{p}?last_modified={}", enc(&lm));
        let before = s.keys();
        let miss = s.get(&path, &[]);
        assert_eq!(miss.header("last-modified"), Some(&*lm));
        assert!(!miss.has_header("cache-control"));
        assert_cs(&miss, "fleet-cache; fwd=uri-miss; fwd-status=200; stored");
        published += 1;
        wait_published(&s, published);
        let hit = s.get(&path, &[]);
        assert_hit(&hit, 200);
        let ttl = hit_ttl(&hit);
        assert!(
            (lifetime - 2..=lifetime).contains(&ttl),
            "{p}: ttl {ttl}, expected about {lifetime}"
        );
        assert_eq!(s.origin().count(p), 1);
        // The store TTL follows: the remaining freshness plus keep_stale_s (3600).
        let key = s
            .keys()
            .into_iter()
            .find(|k| !before.contains(k))
            .expect("a new key");
        let pttl: i64 = s.redis_cli(&["PTTL", &key]).parse().unwrap();
        let expected = (lifetime + 3600) * 1000;
        assert!(
            (expected - 5000..=expected).contains(&pttl),
            "{p}: PTTL {pttl}, expected about {expected}"
        );
    }
}

#[test]
fn heuristic_max_s_caps_the_heuristic_lifetime() {
    let s = start(json!({"heuristic_max_s": 600}));
    let lm = http_date(SystemTime::now() - Duration::from_secs(5 * 86_400));
    let path = format!("/hcap?last_modified={}", enc(&lm));
    s.get(&path, &[]);
    wait_published(&s, 1);
    let ttl = hit_ttl(&s.get(&path, &[]));
    assert!((598..=600).contains(&ttl), "ttl {ttl}");
}

// ---------------------------------------------------------------------------------------------
// 10. Pragma: no-cache

#[test]
fn pragma_no_cache_refreshes_the_entry() {
    let s = start(json!({}));
    let path = "/pragma?cc=max-age%3D60&unique=1";
    let first = s.get(path, &[]);
    assert_eq!(first.header("x-origin-count"), Some("1"));
    wait_published(&s, 1);
    assert_hit(&s.get(path, &[]), 200);

    let r = s.get(path, &[("pragma", "no-cache")]);
    assert_eq!(r.status, 200);
    assert_cs(&r, "fleet-cache; fwd=request; fwd-status=200; stored");
    assert_eq!(r.header("x-origin-count"), Some("2"));
    assert_eq!(s.origin().count("/pragma"), 2);
    wait_published(&s, 2);
    // The entry now holds the refreshed response.
    let hit = s.get(path, &[]);
    assert_hit(&hit, 200);
    assert_eq!(hit.header("x-origin-count"), Some("2"));
    assert_eq!(hit.body, r.body);
    assert_ne!(hit.body, first.body);

    // With a Cache-Control, Pragma is ignored (RFC 9111 §5.4).
    let r = s.get(
        path,
        &[("pragma", "no-cache"), ("cache-control", "max-age=100")],
    );
    assert_hit(&r, 200);
    // Cache-Control: no-cache does the same as Pragma.
    let r = s.get(path, &[("cache-control", "no-cache")]);
    assert_cs(&r, "fleet-cache; fwd=request; fwd-status=200; stored");
    assert_eq!(s.origin().count("/pragma"), 3);
}

#[test]
fn ignore_client_no_cache_serves_pragma_and_no_cache_requests_from_the_cache() {
    let s = start(json!({"ignore_client_no_cache": true}));
    let path = "/pragma?cc=max-age%3D60&unique=1";
    let first = s.get(path, &[]);
    wait_published(&s, 1);
    for h in [("pragma", "no-cache"), ("cache-control", "no-cache")] {
        let r = s.get(path, &[h]);
        assert_hit(&r, 200);
        assert_eq!(r.body, first.body, "{h:?}");
    }
    assert_eq!(s.origin().count("/pragma"), 1);
}

/// RFC 9110 §13.2.1: "A server MUST ignore all received preconditions if its response to the
/// same request without those conditions ... would have been a status code other than a 2xx
/// (Successful) or 412". The test origin does exactly that (it answers 304 only instead of a
/// 200); the cache must answer like it: a stored 404/500/302 is never turned into a 304, or a
/// client revalidating its own older 200 by date would keep using it after the resource is
/// gone.
#[test]
fn preconditions_are_ignored_on_a_stored_error_or_redirect() {
    let s = start(json!({}));
    let mut published = 0;
    for (p, status) in [("/gone", 404u16), ("/err", 500), ("/moved", 302)] {
        let path = format!(
            "{p}?status={status}&cc=max-age%3D60&etag=%22e%22&last_modified={}",
            enc(LM)
        );
        // What the origin itself answers to the same conditional request.
        let direct = s.origin_request("GET", &path, &[("if-none-match", "\"e\"")]);
        assert_eq!(direct.status, status);
        let miss = s.get(&path, &[]);
        assert_cs(
            &miss,
            &format!("fleet-cache; fwd=uri-miss; fwd-status={status}; stored"),
        );
        published += 1;
        wait_published(&s, published);
        for cond in [("if-none-match", "\"e\""), ("if-modified-since", AFTER_LM)] {
            let r = s.get(&path, &[cond]);
            assert_hit(&r, status);
            assert_eq!(r.body, miss.body, "{p} {cond:?}");
        }
        assert_eq!(s.origin().count(p), 2, "one direct request, one miss");
    }
}

fn date_s(r: &Resp) -> u64 {
    let d = r.header("date").expect("a Date");
    httpdate::parse_http_date(d)
        .expect("an HTTP-date")
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// RFC 9111 §4 / §4.2.3: a hit sends the stored response's own `Date`, with `Age` saying how
/// old it is (a fresh `Date` plus `Age` would make a downstream cache count the age twice); a
/// 304-refreshed answer sends the 304's `Date`.
#[test]
fn rfc9111_4_hits_send_the_stored_date_with_age_and_a_304_updates_it() {
    let s = start(json!({}));
    let path = "/dated?cc=max-age%3D60";
    let miss = s.get(path, &[]);
    let stored_date = miss.header("date").expect("the origin's Date").to_string();
    wait_published(&s, 1);
    std::thread::sleep(Duration::from_millis(2_100));
    let hit = s.get(path, &[]);
    assert_hit(&hit, 200);
    assert_eq!(hit.header("date"), Some(stored_date.as_str()), "{hit:?}");
    assert_eq!(hit.header_all("date").len(), 1, "one Date");
    assert!(age(&hit) >= 2, "age {}", age(&hit));

    // Stale after 1 s, revalidated: the origin's 304 carries a newer Date, which the answer
    // (and the next hits) send.
    let reval = "/redated?cc=max-age%3D1&etag=%22v1%22";
    let first = s.get(reval, &[]);
    let first_date = date_s(&first);
    wait_published(&s, 2);
    std::thread::sleep(Duration::from_millis(2_100));
    let refreshed = s.get(reval, &[]);
    assert!(
        cache_status(&refreshed).contains("fwd-status=304"),
        "{refreshed:?}"
    );
    assert!(date_s(&refreshed) >= first_date + 2, "{refreshed:?}");
    assert!(age(&refreshed) <= 1, "{refreshed:?}");
    assert_eq!(refreshed.header_all("date").len(), 1, "one Date");
}
