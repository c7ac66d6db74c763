//! Removing entries through real Envoy, Webdis and Redis: invalidation by unsafe requests
//! (RFC 9111 §4.4) and operators' purges by URL and by tag, fleet-wide.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::{Resp, Stack, StackOptions};

const TOKEN: &str = "integration-test-purge-token";

fn cache_status(r: &Resp) -> &str {
    r.header("cache-status").unwrap_or("")
}

/// Polls until `f` holds (writes are asynchronous), for at most 10 s.
fn eventually(what: &str, s: &Stack, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "never happened: {what}\n{}",
            s.envoy_log(0)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// GETs `path` through envoy `i` until it is a hit (it was just fetched and is being written).
fn cached(s: &Stack, i: usize, path: &str) -> Resp {
    let first = s.get_via(i, path, &[]);
    assert_eq!(first.status, 200, "{first:?}");
    let mut last = first;
    eventually(&format!("{path} cached"), s, || {
        last = s.get_via(i, path, &[]);
        cache_status(&last).contains("hit")
    });
    last
}

/// Two proxies that may purge. Their in-proxy tiers are off: these tests are about what the
/// shared store holds (tests/memory_tier.rs shows a purge reaching a tier within its max age).
fn purging() -> StackOptions {
    StackOptions {
        envoys: 2,
        ..StackOptions::with_config(json!({
            "purge": {"token": TOKEN},
            "memory": {"max_bytes": 0}
        }))
    }
}

#[test]
fn unsafe_methods_invalidate_the_target_and_its_location() {
    let s = Stack::start(StackOptions::default());
    let doc = "/doc?cc=max-age%3D60";
    cached(&s, 0, doc);
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let before = s.origin().count("/doc");
        let r = s.request(method, doc, &[], b"change");
        assert_eq!(r.status, 200, "{method}");
        // The next GET goes to the origin: the stored response is gone (the unsafe response
        // was held until the store confirmed it).
        let next = s.get(doc, &[]);
        assert!(!cache_status(&next).contains("hit"), "{method}: {next:?}");
        assert!(s.origin().count("/doc") > before + 1, "{method}");
        cached(&s, 0, doc);
    }
    // Location and Content-Location of the same origin.
    let item = "/items/7?cc=max-age%3D60";
    cached(&s, 0, item);
    let created = s.request(
        "POST",
        "/items?status=201&header=location:/items/7%3Fcc%3Dmax-age%253D60",
        &[],
        b"new",
    );
    assert_eq!(created.status, 201);
    assert!(
        !cache_status(&s.get(item, &[])).contains("hit"),
        "Location invalidated"
    );
    // An error answer invalidates nothing.
    cached(&s, 0, doc);
    let failed = s.request("DELETE", "/doc?status=500&cc=max-age%3D60", &[], b"");
    assert_eq!(failed.status, 500);
    std::thread::sleep(Duration::from_millis(200));
    assert!(cache_status(&s.get(doc, &[])).contains("hit"));
}

/// RFC 9111 §4.4, raced: a GET sent the moment a PUT's response arrived, through a proxy with
/// two workers and their in-proxy tiers on, never gets the invalidated entry, whichever worker
/// either request lands on.
#[test]
fn a_get_right_after_a_put_never_gets_the_old_entry() {
    let s = Stack::start(StackOptions {
        concurrency: 2,
        ..StackOptions::default()
    });
    for round in 0..200 {
        let path = format!("/raced{round}?cc=max-age%3D60");
        cached(&s, 0, &path);
        // Into the tiers of both workers (connections land on either).
        for _ in 0..6 {
            assert!(cache_status(&s.get(&path, &[])).contains("hit"));
        }
        let put = s.request("PUT", &path, &[], b"new");
        assert_eq!(put.status, 200);
        let after = s.get(&path, &[]);
        assert!(
            !cache_status(&after).contains("hit"),
            "round {round}: the old entry after the PUT: {after:?}\n{}",
            s.diag()
        );
    }
    assert_eq!(s.counter("fleet_cache_invalidations_unconfirmed"), 0);
    assert!(
        s.counter("fleet_cache_memory_hits") > 200,
        "the tiers were in play"
    );
}

#[test]
fn purge_by_url_is_fleet_wide() {
    let s = Stack::start(purging());
    let path = "/page?cc=max-age%3D60";
    cached(&s, 0, path);
    cached(&s, 1, path);
    let r = s.request_via(1, "PURGE", path, &[("x-purge-token", TOKEN)], b"");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, b"{\"purged\":1}\n");
    let after = s.get_via(0, path, &[]);
    assert!(!cache_status(&after).contains("hit"), "{after:?}");
    assert_eq!(s.stat(1, "fleet_cache_purges"), Some(1));
}

#[test]
fn purge_by_tag_removes_every_tagged_resource() {
    let s = Stack::start(purging());
    let a = "/a?cc=max-age%3D60&header=surrogate-key:red%20blue";
    let b = "/b?cc=max-age%3D60&header=surrogate-key:blue";
    let c = "/c?cc=max-age%3D60&header=surrogate-key:green";
    for p in [a, b, c] {
        cached(&s, 0, p);
    }
    let r = s.request_via(
        1,
        "PURGE",
        "/",
        &[("x-purge-token", TOKEN), ("x-purge-tags", "blue")],
        b"",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, b"{\"purged\":2}\n");
    assert!(!cache_status(&s.get(a, &[])).contains("hit"));
    assert!(!cache_status(&s.get(b, &[])).contains("hit"));
    assert!(
        cache_status(&s.get(c, &[])).contains("hit"),
        "green untouched"
    );
}

/// A purge naming more tags than one request may (32) is refused whole with a 400 that names
/// the limit, never carried out in part; within the limit every tag named is purged. A
/// response's tags past the limit are counted (`fleet_cache_tags_dropped`).
#[test]
fn a_purge_over_the_tag_limit_is_refused_whole_never_partial() {
    let s = Stack::start(purging());
    let paths: Vec<String> = (0..40)
        .map(|i| format!("/t{i}?cc=max-age%3D60&header=surrogate-key:tag{i}"))
        .collect();
    for p in &paths {
        cached(&s, 0, p);
    }
    let all: String = (0..40).map(|i| format!("tag{i} ")).collect();
    let r = s.request_via(
        1,
        "PURGE",
        "/",
        &[("x-purge-token", TOKEN), ("x-purge-tags", &all)],
        b"",
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.text().contains("at most 32"), "{}", r.text());
    for p in &paths {
        assert!(
            cache_status(&s.get(p, &[])).contains("hit"),
            "{p} purged in part"
        );
    }
    for chunk in [0..32, 32..40] {
        let tags: String = chunk.map(|i| format!("tag{i} ")).collect();
        let r = s.request_via(
            1,
            "PURGE",
            "/",
            &[("x-purge-token", TOKEN), ("x-purge-tags", &tags)],
            b"",
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
    for p in &paths {
        assert!(
            !cache_status(&s.get(p, &[])).contains("hit"),
            "{p} not purged"
        );
    }
    // A response with 40 tags: recorded with 32 of them, and said so in a counter.
    let many: String = (0..40).map(|i| format!("m{i}%20")).collect();
    cached(
        &s,
        0,
        &format!("/many?cc=max-age%3D60&header=surrogate-key:{many}"),
    );
    eventually("the dropped tags counted", &s, || {
        s.stat(0, "fleet_cache_tags_dropped").unwrap_or(0) >= 1
    });
}

#[test]
fn unauthenticated_purges_are_refused() {
    let s = Stack::start(purging());
    let path = "/keep?cc=max-age%3D60";
    cached(&s, 0, path);
    let fetched = s.origin().count("/keep");
    for headers in [
        &[][..],
        &[("x-purge-token", "integration-test-purge-tokeX")][..],
        &[("x-purge-token", "")][..],
    ] {
        let r = s.request("PURGE", path, headers, b"");
        assert_eq!(r.status, 403, "{headers:?}: {r:?}");
        assert!(r.text().contains("x-purge-token"));
    }
    assert!(cache_status(&s.get(path, &[])).contains("hit"));
    assert_eq!(
        s.origin().count("/keep"),
        fetched,
        "purge requests never reach the origin"
    );
    // Without a configured token, purging is off altogether.
    let off = Stack::start(StackOptions::default());
    let r = off.request("PURGE", path, &[("x-purge-token", TOKEN)], b"");
    assert_eq!(r.status, 405);
}
