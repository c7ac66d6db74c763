//! The in-proxy tier through real Envoy: repeated hits skip Redis, and what changes elsewhere
//! in the fleet (a purge through another proxy) is seen within the tier's max age.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::{Resp, Stack, StackOptions};

const TOKEN: &str = "memory-tier-test-purge-token";

fn cache_status(r: &Resp) -> &str {
    r.header("cache-status").unwrap_or("")
}

/// Until a GET through envoy `i` is a hit from memory (Envoy has 2 workers, each with its own
/// tier: both must have read the entry once).
fn warm_memory(s: &Stack, i: usize, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = s.get_via(i, path, &[]);
        if cache_status(&r).ends_with("detail=memory") {
            return;
        }
        assert!(Instant::now() < deadline, "never a memory hit: {r:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn repeated_hits_come_from_memory_without_the_store() {
    let s = Stack::start(StackOptions::with_config(
        json!({"memory": {"max_age_ms": 5000}}),
    ));
    let path = "/m?size=3000&cc=max-age%3D60";
    let first = s.get(path, &[]);
    warm_memory(&s, 0, path);
    warm_memory(&s, 0, path);
    let lookups = s.stat(0, "fleet_cache_lookups").unwrap();
    let fetched = s.origin().count("/m");
    let mut from_memory = 0;
    for _ in 0..20 {
        let r = s.get(path, &[]);
        assert_eq!(r.body, first.body);
        assert!(cache_status(&r).starts_with("fleet-cache; hit"), "{r:?}");
        if cache_status(&r).ends_with("detail=memory") {
            from_memory += 1;
        }
    }
    // Two workers: each may need one store read of its own; after that, memory only.
    assert!(from_memory >= 19, "{from_memory} of 20 from memory");
    assert!(s.stat(0, "fleet_cache_lookups").unwrap() <= lookups + 1);
    assert!(s.stat(0, "fleet_cache_memory_hits").unwrap() >= 19);
    assert_eq!(s.origin().count("/m"), fetched);
}

#[test]
fn a_purge_through_another_proxy_is_seen_within_the_max_age() {
    let max_age_ms = 700;
    let s = Stack::start(StackOptions {
        envoys: 2,
        ..StackOptions::with_config(json!({
            "memory": {"max_age_ms": max_age_ms},
            "purge": {"token": TOKEN}
        }))
    });
    let path = "/p?cc=max-age%3D60";
    s.get_via(0, path, &[]);
    warm_memory(&s, 0, path);
    let purged = s.request_via(1, "PURGE", path, &[("x-purge-token", TOKEN)], b"");
    assert_eq!(purged.status, 200, "{purged:?}");
    let at = Instant::now();
    loop {
        let r = s.get_via(0, path, &[]);
        if !cache_status(&r).contains("hit") {
            break;
        }
        assert!(
            at.elapsed() < Duration::from_millis(max_age_ms + 500),
            "proxy 0 still serves the purged entry after {:?}",
            at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_tier_can_be_turned_off() {
    let s = Stack::start(StackOptions::with_config(
        json!({"memory": {"max_bytes": 0}}),
    ));
    let path = "/off?cc=max-age%3D60";
    s.get(path, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cache_status(&s.get(path, &[])).contains("hit") {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    for _ in 0..10 {
        let r = s.get(path, &[]);
        assert_eq!(cache_status(&r), "fleet-cache; hit; ttl=60", "{r:?}");
    }
    assert_eq!(s.stat(0, "fleet_cache_memory_hits"), Some(0));
}
