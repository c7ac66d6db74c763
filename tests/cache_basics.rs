//! The cache's core promises through real Envoy, Webdis and Redis: MISS then HIT with
//! byte-identical bodies, streaming without buffering, one cache shared by two proxies, Vary,
//! what is never stored, and expiry.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::{Resp, Stack, StackOptions, binary_body};

/// Publishing is asynchronous (the root context writes after the response ends): waits until
/// envoy `i` has published `n` entries in all.
fn wait_published(s: &Stack, i: usize, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let published = s.stat(i, "fleet_cache_published").unwrap_or(0);
        if published >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "envoy {i} published {published} of {n} entries; log:\n{}",
            s.envoy_log(i)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn cache_status(r: &Resp) -> &str {
    r.header("cache-status").unwrap_or("")
}

fn assert_hit(r: &Resp) {
    assert_eq!(r.status, 200);
    assert!(
        cache_status(r).starts_with("fleet-cache; hit"),
        "expected a hit: {:?}",
        r.headers
    );
}

fn assert_miss(r: &Resp) {
    assert!(
        cache_status(r).contains("fwd="),
        "expected a miss: {:?}",
        r.headers
    );
}

#[test]
fn miss_then_hit_is_byte_identical_with_nul_bytes() {
    let s = Stack::start(StackOptions::default());
    let path = "/bin?size=300000&cc=max-age%3D60&ctype=application%2Foctet-stream";
    let miss = s.get(path, &[]);
    assert_eq!(miss.status, 200);
    assert_eq!(
        cache_status(&miss),
        "fleet-cache; fwd=uri-miss; fwd-status=200; stored"
    );
    let expected = binary_body("/bin", 300_000);
    assert!(expected.contains(&0));
    assert_eq!(miss.body, expected);
    wait_published(&s, 0, 1);

    let hit = s.get(path, &[]);
    assert_hit(&hit);
    assert_eq!(hit.body, expected, "hit body byte-identical");
    assert_eq!(
        s.origin().count("/bin"),
        1,
        "the hit never reached the origin"
    );
    assert_eq!(hit.header("content-type"), Some("application/octet-stream"));
    assert_eq!(hit.header("content-length"), Some("300000"));
    // The origin's own headers are replayed as they were (the same values, not refetched).
    assert_eq!(hit.header("x-origin-seq"), miss.header("x-origin-seq"));
    assert!(hit.header("age").is_some());
    assert!(hit.header("date").is_some());
    // Per-fetch and hop-by-hop headers of the original fetch are not replayed.
    assert!(!hit.has_header("x-envoy-upstream-service-time"));
    assert!(!hit.has_header("transfer-encoding"));
    assert_eq!(hit.header_all("date").len(), 1);
    assert_eq!(hit.header_all("content-length").len(), 1);
    assert_eq!(s.stat(0, "fleet_cache_hits"), Some(1));
}

#[test]
fn an_8_mib_body_round_trips() {
    // Reading 8 MiB through Webdis takes tens of milliseconds on an idle machine and more on
    // a loaded one: give the lookup room, as a deployment with big bodies would.
    let s = Stack::start(StackOptions::with_config(
        json!({"store": {"timeout_ms": 3000}}),
    ));
    let size = 8 * 1024 * 1024;
    let path = format!("/big?size={size}&cc=max-age%3D60");
    let miss = s.get(&path, &[]);
    assert_miss(&miss);
    assert_eq!(miss.body.len(), size);
    wait_published(&s, 0, 1);
    let hit = s.get(&path, &[]);
    assert_hit(&hit);
    assert!(hit.body == binary_body("/big", size), "8 MiB hit differs");
    assert_eq!(s.origin().count("/big"), 1);
}

#[test]
fn streaming_is_not_buffered_and_the_hit_replays_it() {
    let s = Stack::start(StackOptions::default());
    let path = "/sse?size=4000&chunks=4&pause_ms=300&cc=max-age%3D60&ctype=text%2Fevent-stream";
    let first = s.get_streaming(path, &[]);
    assert!(first.complete);
    let written = s.origin().chunk_times("/sse");
    assert_eq!(written.len(), 4);
    // Every chunk reached the client before the origin even wrote the next one: by the time
    // origin chunk i is written, the client holds all of chunks 0..i.
    let sizes: Vec<usize> = support::origin::split_body(&binary_body("/sse", 4000), 4)
        .iter()
        .map(Vec::len)
        .collect();
    for (i, written_at) in written.iter().enumerate().skip(1) {
        let before: usize = first
            .chunks
            .iter()
            .filter(|(at, _)| at < written_at)
            .map(|(_, c)| c.len())
            .sum();
        let sent: usize = sizes[..i].iter().sum();
        assert!(
            before >= sent,
            "origin chunk {i} written when the client had {before} of {sent} bytes: buffered"
        );
    }
    let first = first.into_resp();
    assert_eq!(first.body, binary_body("/sse", 4000));
    wait_published(&s, 0, 1);

    let hit = s.get(path, &[]);
    assert_hit(&hit);
    assert_eq!(hit.status, first.status);
    assert_eq!(hit.body, first.body);
    assert_eq!(hit.header("content-type"), Some("text/event-stream"));
    assert_eq!(hit.header("x-origin-seq"), first.header("x-origin-seq"));
    assert_eq!(s.origin().count("/sse"), 1);
}

#[test]
fn two_proxies_share_one_cache() {
    let s = Stack::start(StackOptions {
        envoys: 2,
        ..StackOptions::default()
    });
    let path = "/shared?size=5000&cc=max-age%3D60";
    let miss = s.get_via(0, path, &[]);
    assert_miss(&miss);
    wait_published(&s, 0, 1);
    let hit = s.get_via(1, path, &[]);
    assert_hit(&hit);
    assert_eq!(hit.body, miss.body);
    assert_eq!(s.origin().count("/shared"), 1, "one fetch for the fleet");
    assert_eq!(s.stat(1, "fleet_cache_hits"), Some(1));
    assert_eq!(s.stat(1, "fleet_cache_published"), Some(0));
}

#[test]
fn vary_variants_are_cached_apart_and_never_cross_served() {
    let s = Stack::start(StackOptions::default());
    let path = "/v?vary=Accept&echo=accept&cc=max-age%3D60";
    let a = s.get(path, &[("accept", "text/a")]);
    assert_miss(&a);
    assert_eq!(a.body, b"text/a");
    wait_published(&s, 0, 1);
    let b = s.get(path, &[("accept", "text/b")]);
    assert!(cache_status(&b).contains("fwd=vary-miss"), "{b:?}");
    assert_eq!(b.body, b"text/b");
    wait_published(&s, 0, 2);

    for _ in 0..3 {
        let a = s.get(path, &[("accept", "text/a")]);
        assert_hit(&a);
        assert_eq!(a.body, b"text/a");
        let b = s.get(path, &[("accept", "text/b")]);
        assert_hit(&b);
        assert_eq!(b.body, b"text/b");
    }
    // Normalised: case and optional whitespace do not make a new variant.
    let a2 = s.get(path, &[("accept", " TEXT/A ")]);
    assert_hit(&a2);
    assert_eq!(a2.body, b"text/a");
    // No Accept at all is a variant of its own.
    let none = s.get(path, &[]);
    assert_miss(&none);
    assert_eq!(none.body, b"");
    assert_eq!(s.origin().count("/v"), 3);
}

#[test]
fn vary_star_is_never_stored() {
    let s = Stack::start(StackOptions::default());
    let path = "/star?vary=*&cc=max-age%3D60";
    for _ in 0..2 {
        let r = s.get(path, &[]);
        assert_eq!(r.status, 200);
        assert!(!cache_status(&r).contains("stored"), "{r:?}");
    }
    assert_eq!(s.origin().count("/star"), 2);
    assert!(s.stat(0, "fleet_cache_not_stored").unwrap_or(0) >= 2);
}

#[test]
fn uncacheable_responses_are_not_stored() {
    let s = Stack::start(StackOptions::default());
    let cases = [
        "/nostore?cc=no-store",
        "/private?cc=private%2C%20max-age%3D60",
        "/cookie?setcookie=1&cc=max-age%3D60",
        "/error?status=500",
        "/nofresh",
    ];
    for path in cases {
        let base = path.split('?').next().unwrap();
        for _ in 0..2 {
            let r = s.get(path, &[]);
            assert!(!cache_status(&r).contains("stored"), "{path}: {r:?}");
            assert_miss(&r);
        }
        assert_eq!(s.origin().count(base), 2, "{path} was served from cache");
    }
    // A cacheable control proves publishing works here: only it is an entry in Redis. The
    // others left a hit-for-miss mark in their lock key (`h`), the 500 not even that (an
    // error may not last).
    s.get("/control?cc=max-age%3D60", &[]);
    wait_published(&s, 0, 1);
    let keys = s.all_keys();
    let (marks, entries): (Vec<_>, Vec<_>) = keys.iter().partition(|k| k.ends_with(":lock"));
    assert_eq!(entries.len(), 1, "{keys:?}");
    assert_eq!(marks.len(), cases.len() - 1, "{keys:?}");
    for m in marks {
        assert_eq!(s.redis_cli(&["GET", m]), "h");
    }
    assert_eq!(
        s.stat(0, "fleet_cache_not_stored"),
        Some(2 * cases.len() as u64)
    );
}

#[test]
fn set_cookie_responses_are_stored_without_the_cookie_when_configured() {
    let s = Stack::start(StackOptions::with_config(json!({"set_cookie": "strip"})));
    let path = "/cookie?setcookie=1&cc=max-age%3D60";
    let miss = s.get(path, &[]);
    assert_eq!(
        miss.header("set-cookie"),
        Some("a=b"),
        "the fetching client gets it"
    );
    wait_published(&s, 0, 1);
    let hit = s.get(path, &[]);
    assert_hit(&hit);
    assert!(!hit.has_header("set-cookie"), "nobody else does");
}

#[test]
fn expired_entries_go_back_to_the_origin() {
    let s = Stack::start(StackOptions::default());
    // max-age=2, not 1: `Date` has one-second resolution, so an exchange that crosses a second
    // boundary is one second old on arrival (RFC 9111 §4.2.3), and a 1 s lifetime would be
    // stale before it is stored.
    let path = "/ttl?cc=max-age%3D2";
    let started = Instant::now();
    s.get(path, &[]);
    wait_published(&s, 0, 1);
    let hit = s.get(path, &[]);
    assert_hit(&hit);
    std::thread::sleep(Duration::from_millis(2200).saturating_sub(started.elapsed()));
    let after = s.get(path, &[]);
    assert_miss(&after);
    assert_eq!(s.origin().count("/ttl"), 2);
}

#[test]
fn default_ttl_applies_to_responses_without_freshness() {
    let s = Stack::start(StackOptions::with_config(json!({"default_ttl_s": 30})));
    s.get("/plain", &[]);
    wait_published(&s, 0, 1);
    let hit = s.get("/plain", &[]);
    assert_hit(&hit);
    assert!(cache_status(&hit).contains("ttl=30") || cache_status(&hit).contains("ttl=29"));
}

#[test]
fn post_bypasses_the_cache() {
    let s = Stack::start(StackOptions::default());
    for _ in 0..2 {
        let r = s.request("POST", "/form?cc=max-age%3D60", &[], b"x=1");
        assert_eq!(r.status, 200);
        assert!(cache_status(&r).contains("fwd=method"), "{r:?}");
    }
    assert_eq!(s.origin().count("/form"), 2);
    assert_eq!(s.stat(0, "fleet_cache_lookups"), Some(0));
}

#[test]
fn a_stale_entry_is_revalidated_and_a_304_answered_from_the_store() {
    let s = Stack::start(StackOptions::default());
    // max-age=2: the refreshed entry must still be fresh for the third request even when the
    // 304's one-second `Date` makes it a second old on arrival (see the expiry test).
    let path = "/reval?size=2000&cc=max-age%3D2&etag=%22v1%22";
    let started = Instant::now();
    let first = s.get(path, &[]);
    assert_miss(&first);
    wait_published(&s, 0, 1);
    std::thread::sleep(Duration::from_millis(2200).saturating_sub(started.elapsed()));
    let second = s.get(path, &[]);
    assert_eq!(second.status, 200);
    assert_eq!(
        cache_status(&second),
        "fleet-cache; fwd=stale; fwd-status=304; stored",
        "{second:?}"
    );
    assert_eq!(second.body, first.body, "answered from the stored body");
    assert_eq!(second.header("etag"), Some("\"v1\""));
    let conditional = s.origin().last_request("/reval").unwrap();
    assert_eq!(conditional.header("if-none-match"), Some("\"v1\""));
    assert_eq!(s.origin().count("/reval"), 2);
    assert_eq!(s.stat(0, "fleet_cache_revalidations"), Some(1));
    // The refreshed entry is fresh again: a hit, without sending the body to Redis again.
    wait_published(&s, 0, 2);
    let third = s.get(path, &[]);
    assert_hit(&third);
    assert_eq!(third.body, first.body);
    assert_eq!(s.origin().count("/reval"), 2);
}

#[test]
fn a_changed_resource_answers_revalidation_with_200_and_replaces_the_entry() {
    let s = Stack::start(StackOptions::default());
    // max-age=2: the refreshed entry must still be fresh for the third request even when the
    // 304's one-second `Date` makes it a second old on arrival (see the expiry test).
    let path = "/changing?cc=max-age%3D2&etag=auto&unique=1";
    let started = Instant::now();
    let first = s.get(path, &[]);
    assert_eq!(first.header("etag"), Some("\"v1\""));
    wait_published(&s, 0, 1);
    std::thread::sleep(Duration::from_millis(2200).saturating_sub(started.elapsed()));
    let second = s.get(path, &[]);
    let asked = s.origin().last_request("/changing").unwrap();
    assert_eq!(asked.header("if-none-match"), Some("\"v1\""), "revalidated");
    assert_eq!(
        cache_status(&second),
        "fleet-cache; fwd=stale; fwd-status=200; stored"
    );
    assert_eq!(second.header("etag"), Some("\"v2\""));
    assert_ne!(second.body, first.body);
    wait_published(&s, 0, 2);
    let third = s.get(path, &[]);
    assert_hit(&third);
    assert_eq!(
        third.body, second.body,
        "the new response replaced the entry"
    );
}

#[test]
fn a_hit_costs_one_store_round_trip_whatever_the_number_of_chunks() {
    // The in-proxy tier is off: this counts what a Redis hit costs.
    let s = Stack::start(StackOptions::with_config(
        json!({"memory": {"max_bytes": 0}}),
    ));
    let store_requests = || {
        s.stat(0, "cluster.fleet_cache_store.upstream_rq_total")
            .unwrap_or(0)
    };
    for chunks in [1, 64] {
        let path = format!("/chunked{chunks}?size=64000&chunks={chunks}&cc=max-age%3D60");
        s.get(&path, &[]);
        wait_published(&s, 0, if chunks == 1 { 1 } else { 2 });
        let before = store_requests();
        let hit = s.get(&path, &[]);
        assert_hit(&hit);
        assert_eq!(
            store_requests() - before,
            1,
            "{chunks} recorded chunks: one store request per hit"
        );
    }
}
