//! Protecting the origin through real Envoy, Webdis and Redis: stale entries answering for a
//! failing or unreachable origin (RFC 5861 `stale-if-error`).
//!
//! Every test starts its own stack; what a response looks like is chosen by the origin's query
//! parameters (tests/support/origin.rs). `status` is left out of the cache key
//! (`key.query_ignore`), so one resource can answer 200 and then fail.

mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::origin::Origin;
use support::stack::merge_patch;
use support::{Resp, Stack, StackOptions};

/// A stack whose plugin config is the defaults plus `patch`; the in-proxy tier is off and the
/// lookup deadline generous (these tests are about what is served, not about store speed).
fn options(patch: Value) -> StackOptions {
    let mut cfg = json!({
        "store": {"timeout_ms": 2000},
        "memory": {"max_bytes": 0},
        "key": {"query_ignore": ["status"]},
    });
    merge_patch(&mut cfg, &patch);
    StackOptions::with_config(cfg)
}

fn cache_status(r: &Resp) -> &str {
    r.header("cache-status").unwrap_or_default()
}

fn wait_counter(s: &Stack, name: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.counter(name) < n {
        assert!(
            Instant::now() < deadline,
            "{name} is {} of {n}\n{}",
            s.counter(name),
            s.diag()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `max-age=1` on a response 5 s old (`Age: 5`): stale on arrival, stored because its
/// `stale-if-error` window still covers it.
const STALE_SIE: &str = "cc=max-age%3D1%2C%20stale-if-error%3D600&header=age%3A5";

#[test]
fn stale_if_error_answers_for_an_origin_that_fails() {
    let s = Stack::start(options(json!({})));
    let path = format!("/sie?{STALE_SIE}");
    let first = s.get(&path, &[]);
    assert_eq!(first.status, 200);
    assert!(cache_status(&first).contains("stored"), "{first:?}");
    wait_counter(&s, "fleet_cache_published", 1);

    for (i, status) in [500, 502, 503, 504].into_iter().enumerate() {
        let r = s.get(&format!("{path}&status={status}"), &[]);
        assert_eq!(r.status, 200, "{status}: {:?}", r.headers);
        assert_eq!(r.body, first.body, "{status}: the stored body");
        let cs = cache_status(&r);
        assert!(
            cs.starts_with(&format!(
                "fleet-cache; fwd=stale; fwd-status={status}; ttl=-"
            )) && cs.ends_with("; detail=stale-if-error"),
            "{cs}"
        );
        let age: u64 = r.header("age").unwrap().parse().unwrap();
        assert!((5..=8).contains(&age), "age {age}");
        assert_eq!(s.origin().count("/sie"), 2 + i, "the origin was asked");
    }
    assert_eq!(s.counter("fleet_cache_stale_if_error"), 4);

    // An answer that is not an error goes through.
    let r = s.get(&format!("{path}&status=404"), &[]);
    assert_eq!(r.status, 404);
    assert!(cache_status(&r).contains("fwd-status=404"), "{r:?}");
}

#[test]
fn stale_if_error_answers_for_an_origin_that_is_gone() {
    let origin = Origin::start();
    let mut opts = options(json!({}));
    opts.origin_port = Some(origin.port());
    let s = Stack::start(opts);
    let path = format!("/gone?{STALE_SIE}");
    let first = s.get(&path, &[]);
    assert_eq!(first.status, 200);
    wait_counter(&s, "fleet_cache_published", 1);
    // A resource whose response allows no stale use.
    let strict =
        "/strict?cc=max-age%3D1%2C%20stale-if-error%3D600%2C%20must-revalidate&header=age%3A5";
    assert_eq!(s.get(strict, &[]).status, 200);

    drop(origin);
    for _ in 0..3 {
        let r = s.get(&path, &[]);
        assert_eq!(r.status, 200, "{:?}", r.headers);
        assert_eq!(r.body, first.body);
        let cs = cache_status(&r);
        assert!(
            cs.starts_with("fleet-cache; fwd=stale; fwd-status=503; ttl=-"),
            "{cs}"
        );
    }
    let r = s.get(strict, &[]);
    assert_eq!(r.status, 503, "must-revalidate: Envoy's error goes through");
    // Nothing stored for this one at all: Envoy's error goes through.
    let r = s.get("/never-stored", &[]);
    assert_eq!(r.status, 503);
}

#[test]
fn stale_if_error_default_from_the_plugin_config() {
    let s = Stack::start(options(json!({"stale": {"if_error_s": 600}})));
    // Stale on arrival (Age 5 > max-age 1), stored under the configured window.
    let path = "/default?cc=max-age%3D1&header=age%3A5";
    let first = s.get(path, &[]);
    wait_counter(&s, "fleet_cache_published", 1);
    let r = s.get(&format!("{path}&status=503"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, first.body);
    // Without the default, the same resource's error goes through.
    let plain = Stack::start(options(json!({})));
    plain.get(path, &[]);
    let r = plain.get(&format!("{path}&status=503"), &[]);
    assert_eq!(r.status, 503);
}
