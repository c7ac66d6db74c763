//! Protecting the origin through real Envoy, Webdis and Redis: concurrent misses of one
//! resource collapsed into one origin fetch across two proxies, hit-for-miss, and stale
//! entries answering for a failing or unreachable origin (RFC 5861 `stale-if-error`).
//!
//! Every test starts its own stack; what a response looks like is chosen by the origin's query
//! parameters (tests/support/origin.rs). `status` is left out of the cache key
//! (`key.query_ignore`), so one resource can answer 200 and then fail.

mod support;

use serde_json::{Value, json};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};
use support::origin::Origin;
use support::stack::merge_patch;
use support::{Resp, Stack, StackOptions, poll};

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

// ---------------------------------------------------------------------------------------------
// Collapsed misses

/// Two proxies (two workers each) on one Redis.
fn fleet(patch: Value) -> Stack {
    let mut opts = options(patch);
    opts.envoys = 2;
    Stack::start(opts)
}

/// `n` clients at once, alternating between the two proxies; each response with how long it
/// took. They all ask for one Host, as clients of one service behind a fleet do (the key
/// includes it; the proxies' own ports differ).
fn herd(s: &Stack, n: usize, path: &str) -> Vec<(Resp, Duration)> {
    let barrier = Barrier::new(n);
    thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let t = Instant::now();
                    let r = s.get_via(i % 2, path, &[("host", "app.test")]);
                    (r, t.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Every response whole and identical to the origin's body for `path`.
fn assert_all_whole(rs: &[(Resp, Duration)], body: &[u8]) {
    for (r, _) in rs {
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.complete, "truncated: {r:?}");
        assert!(r.body == body, "a different body: {:?}", r.text());
    }
}

#[test]
fn a_herd_on_a_slow_stream_costs_the_origin_one_fetch_across_the_fleet() {
    let s = fleet(json!({}));
    // Five chunks 250 ms apart: about a second of streaming, like an LLM completion.
    let path = "/herd?chunks=5&pause_ms=250&cc=max-age%3D60&ctype=text/event-stream";
    let rs = herd(&s, 20, path);
    let body = s.origin_request("GET", path, &[]).body;
    assert_all_whole(&rs, &body);
    // The request above counts too.
    let fetches = s.origin().count("/herd") - 1;
    assert!(
        (1..=2).contains(&fetches),
        "{fetches} origin fetches for 20 clients"
    );
    let collapsed = rs
        .iter()
        .filter(|(r, _)| cache_status(r).ends_with("; collapsed"))
        .count();
    assert!(collapsed >= 20 - 2 * fetches, "collapsed {collapsed}");
    let waits = s.stat(0, "fleet_cache_collapse_waits").unwrap_or(0)
        + s.stat(1, "fleet_cache_collapse_waits").unwrap_or(0);
    assert!(waits >= collapsed as u64, "waits {waits}");
}

#[test]
fn a_herd_on_a_fast_response_costs_the_origin_one_fetch_across_the_fleet() {
    let s = fleet(json!({}));
    let path = "/fast?cc=max-age%3D60&delay_ms=20";
    let rs = herd(&s, 20, path);
    let body = s.origin_request("GET", path, &[]).body;
    assert_all_whole(&rs, &body);
    let fetches = s.origin().count("/fast") - 1;
    assert!(
        (1..=2).contains(&fetches),
        "{fetches} origin fetches for 20 clients"
    );
}

#[test]
fn a_leader_reset_mid_stream_hands_the_fetch_to_a_follower_never_a_partial_body() {
    let s = fleet(json!({}));
    // The first fetch is reset after two of four chunks; the next one completes.
    let path = "/reset?chunks=4&pause_ms=200&reset_first=2&cc=max-age%3D60";
    let rs = herd(&s, 10, path);
    let body = s.origin_request("GET", path, &[]).body;
    let (cut, whole): (Vec<_>, Vec<_>) = rs.into_iter().partition(|(r, _)| !r.complete);
    assert_eq!(
        cut.len(),
        1,
        "only the first fetch's own client sees the reset"
    );
    assert_all_whole(&whole, &body);
    let fetches = s.origin().count("/reset") - 1;
    assert!((2..=3).contains(&fetches), "{fetches} origin fetches");
}

#[test]
fn followers_of_a_response_that_is_not_storable_go_at_once_and_later_requests_skip_the_lookup() {
    let s = fleet(json!({}));
    let path = "/private?cc=private&delay_ms=400";
    let t = Instant::now();
    let rs = herd(&s, 10, path);
    for (r, took) in &rs {
        assert_eq!(r.status, 200);
        // The leader's answer (~0.4 s) releases them, then their own fetch (~0.4 s): far from
        // the 10 s a wait may last.
        assert!(*took < Duration::from_secs(3), "took {took:?}");
    }
    assert!(t.elapsed() < Duration::from_secs(4));
    assert_eq!(
        s.origin().count("/private"),
        10,
        "nothing stored, every client fetched"
    );
    // Later requests skip the lookup on workers that know (each learned it at most once).
    // Counters reach Envoy's stats within 100 ms.
    std::thread::sleep(Duration::from_millis(300));
    let lookups_before = s.counter("fleet_cache_lookups");
    for _ in 0..8 {
        assert_eq!(s.get_via(0, path, &[]).status, 200);
    }
    wait_counter(&s, "fleet_cache_hit_for_miss", 6);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        s.counter("fleet_cache_lookups") <= lookups_before + 2,
        "lookups {} -> {}",
        lookups_before,
        s.counter("fleet_cache_lookups")
    );
}

#[test]
fn a_follower_waits_at_most_collapse_max_wait_ms() {
    let s = fleet(json!({"collapse": {"max_wait_ms": 400}}));
    // A fetch of about 1.6 s.
    let path = "/slow?chunks=4&pause_ms=400&cc=max-age%3D60";
    let rs = herd(&s, 4, path);
    let body = s.origin_request("GET", path, &[]).body;
    assert_all_whole(&rs, &body);
    let timed_out = rs
        .iter()
        .filter(|(r, _)| cache_status(r).contains("detail=collapse-timeout"))
        .count();
    assert!(
        timed_out >= 1,
        "{:?}",
        rs.iter().map(|(r, _)| cache_status(r)).collect::<Vec<_>>()
    );
    let timeouts = s.stat(0, "fleet_cache_collapse_timeouts").unwrap_or(0)
        + s.stat(1, "fleet_cache_collapse_timeouts").unwrap_or(0);
    assert_eq!(timeouts, timed_out as u64);
}

// ---------------------------------------------------------------------------------------------
// Grace

#[test]
fn with_redis_down_the_in_proxy_tier_keeps_serving_within_the_responses_freshness() {
    // One worker, so the entry read into memory is the one asked again.
    let mut opts = options(json!({
        "memory": {"max_bytes": 1 << 20, "max_age_ms": 300},
        "store": {"timeout_ms": 100, "breaker_failures": 2, "breaker_backoff_ms": 5000,
                  "breaker_max_backoff_ms": 5000},
    }));
    opts.concurrency = 1;
    let s = Stack::start(opts);
    let path = "/grace?cc=max-age%3D60";
    let first = s.get(path, &[]);
    wait_counter(&s, "fleet_cache_published", 1);
    let hit = s.get(path, &[]);
    assert!(cache_status(&hit).contains("hit"), "{hit:?}");
    s.stop_redis();
    // Failures open the breaker (those requests go to the origin); then the tier serves,
    // past its max age of 300 ms.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut graced = 0;
    while graced < 5 {
        assert!(Instant::now() < deadline, "no grace hits\n{}", s.diag());
        let r = s.get(path, &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, first.body);
        if cache_status(&r).contains("detail=memory-grace") {
            graced += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let fetched = s.origin().count("/grace");
    for _ in 0..5 {
        let r = s.get(path, &[]);
        assert!(cache_status(&r).contains("detail=memory-grace"), "{r:?}");
    }
    assert_eq!(
        s.origin().count("/grace"),
        fetched,
        "the origin is not asked"
    );
    // A resource the tier never held goes to the origin, as before.
    assert_eq!(s.get("/other?cc=max-age%3D60", &[]).status, 200);
}

// ---------------------------------------------------------------------------------------------
// Request rules

#[test]
fn requests_outside_the_rules_cost_no_lookup_and_are_never_stored() {
    let s = Stack::start(options(json!({"rules": {
        "include": [{"path_prefix": "/api/"}, {"host": "*.assets.test"}],
        "exclude": [{"path": "/api/me"}],
    }})));
    let cached = "/api/items?cc=max-age%3D60";
    s.get(cached, &[]);
    wait_counter(&s, "fleet_cache_published", 1);
    assert!(cache_status(&s.get(cached, &[])).contains("hit"));
    // Counters reach Envoy's stats within 100 ms.
    let settled = Duration::from_millis(300);
    std::thread::sleep(settled);
    let lookups = s.counter("fleet_cache_lookups");
    for path in ["/static/a.css?cc=max-age%3D60", "/api/me?cc=max-age%3D60"] {
        for _ in 0..2 {
            let r = s.get(path, &[]);
            assert_eq!(r.status, 200);
            assert_eq!(
                cache_status(&r),
                "fleet-cache; fwd=bypass; fwd-status=200; detail=excluded"
            );
        }
    }
    // By host: included.
    let r = s.get("/logo.png?cc=max-age%3D60", &[("host", "img.assets.test")]);
    assert!(cache_status(&r).contains("stored"), "{r:?}");
    wait_counter(&s, "fleet_cache_lookups", lookups + 1);
    std::thread::sleep(settled);
    assert_eq!(
        s.counter("fleet_cache_lookups"),
        lookups + 1,
        "only the included host looked up"
    );
    assert_eq!(s.origin().count("/static/a.css"), 2);
    assert_eq!(s.origin().count("/api/me"), 2);
}

// ---------------------------------------------------------------------------------------------
// Stale while revalidate

#[test]
fn stale_while_revalidate_answers_at_once_and_revalidates_once_across_the_fleet() {
    // One resource whatever its `cc` and `delay_ms`: the origin's answers change under it.
    let s = fleet(json!({"key": {"query_ignore": ["status", "cc", "delay_ms"]}}));
    let host = [("host", "app.test")];
    let base = "/swr?etag=%22v1%22";
    // Stale at once (max-age=0), inside its stale-while-revalidate window: stored.
    let first = s.get_via(
        0,
        &format!("{base}&cc=max-age%3D0%2C%20stale-while-revalidate%3D60"),
        &host,
    );
    assert!(cache_status(&first).contains("stored"), "{first:?}");
    wait_counter(&s, "fleet_cache_published", 1);
    // The origin is now slow (1.5 s), and would make it fresh for a minute.
    let slow = format!("{base}&cc=max-age%3D60&delay_ms=1500");
    let barrier = Barrier::new(10);
    let rs: Vec<(Resp, Duration)> = thread::scope(|scope| {
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let (s, barrier, slow) = (&s, &barrier, &slow);
                scope.spawn(move || {
                    barrier.wait();
                    let t = Instant::now();
                    let r = s.get_via(i % 2, slow, &host);
                    (r, t.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (r, took) in &rs {
        assert_eq!(r.status, 200);
        assert_eq!(r.body, first.body, "the stale entry");
        let cs = cache_status(r);
        assert!(
            cs.starts_with("fleet-cache; hit; ttl=")
                && cs.ends_with("detail=stale-while-revalidate"),
            "{cs}"
        );
        assert!(
            *took < Duration::from_millis(500),
            "not waiting for the origin: {took:?}"
        );
    }
    // One revalidation for the fleet, conditional, in the background.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.origin().count("/swr") < 2 {
        assert!(
            Instant::now() < deadline,
            "no background revalidation\n{}",
            s.diag()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let revalidation = s.origin().last_request("/swr").unwrap();
    assert_eq!(revalidation.header("if-none-match"), Some("\"v1\""));
    assert_eq!(revalidation.header("host"), Some("app.test"));
    // Once its 304 refreshed the entry: fresh, through either proxy.
    let fresh = poll(Duration::from_secs(5), || {
        let r = s.get_via(1, &slow, &host);
        cache_status(&r).starts_with("fleet-cache; hit; ttl=5")
    });
    assert!(fresh, "{}", s.diag());
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        s.origin().count("/swr"),
        2,
        "one revalidation, not one per stale hit"
    );
    let started = s
        .stat(0, "fleet_cache_background_revalidations")
        .unwrap_or(0)
        + s.stat(1, "fleet_cache_background_revalidations")
            .unwrap_or(0);
    assert_eq!(started, 1);
}
