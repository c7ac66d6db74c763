//! Resilience of the cache filter against real processes: the store down, stalled or holding
//! garbage, an origin that resets mid-body, concurrent misses of one key, bad plugin
//! configurations, and HEAD requests. Each test starts its own stack (Redis, Webdis, Envoy, the
//! test origin). Run with `cargo test --test resilience`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use fleet_cache::entry::{self, Decoded};
use serde_json::json;
use support::origin::{text_body, unique_suffix};
use support::{Resp, Stack, StackOptions, poll};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
/// These tests poke the shared store directly (stop it, plant garbage, read it back): the
/// in-proxy tier, which may answer from a copy for up to its max age, is off.
fn store_only() -> StackOptions {
    StackOptions::with_config(json!({"memory": {"max_bytes": 0}}))
}

/// Waits until counter `name` reaches `n` (5 s at most); panics with diagnostics otherwise.
fn wait_stat(st: &Stack, name: &str, n: u64) {
    if !poll(Duration::from_secs(5), || st.counter(name) >= n) {
        panic!(
            "{name} did not reach {n} (is {})\n{}",
            st.counter(name),
            st.diag()
        );
    }
}

/// Publishes settled: every recording the responses announced (`stored`) was written or given
/// up, i.e. `published + publish_failures + publish_dropped == expected` (5 s at most).
fn wait_publishes_settled(st: &Stack, expected: u64) {
    let settled = || {
        st.counter("fleet_cache_published")
            + st.counter("fleet_cache_publish_failures")
            + st.counter("fleet_cache_publish_dropped")
    };
    if !poll(Duration::from_secs(5), || settled() >= expected) {
        panic!(
            "publishes did not settle: {} of {expected}\n{}",
            settled(),
            st.diag()
        );
    }
}

fn cache_status(r: &Resp) -> String {
    r.header("cache-status").unwrap_or_default().to_string()
}

fn origin_count_header(r: &Resp) -> Option<usize> {
    r.header("x-origin-count").and_then(|v| v.parse().ok())
}

/// Sends a request over a raw connection (`Connection: close`) and returns everything Envoy
/// sent back until it closed: the head and, split off, whatever followed it.
fn raw_exchange(port: u16, request: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to envoy");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).expect("write request");
    let mut all = Vec::new();
    // Envoy closes after the response (Connection: close); a read error also ends it.
    let _ = s.read_to_end(&mut all);
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    (head, all[end + 4..].to_vec())
}

// ---------------------------------------------------------------------------------------------
// 7. Store down

/// Redis stopped: every request is answered by the origin (fail-open, no 5xx), counted as a
/// store error, and after `store.breaker_failures` of them the store is skipped (breaker
/// open); once Redis is back, caching resumes within a second without restarting Envoy.
#[test]
fn redis_down_fails_open_then_caching_resumes() {
    let st = Stack::start(store_only());
    st.stop_redis();

    for i in 0..20 {
        let path = format!("/down{}", i % 4);
        let target = format!("{path}?cc=max-age%3D60");
        let r = st.get(&target, &[]);
        let cs = cache_status(&r);
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert!(r.complete, "request {i} incomplete");
        assert_eq!(r.text(), text_body(&target), "request {i}");
        // Served by the origin: this path's i/4+1-th origin request.
        assert_eq!(
            origin_count_header(&r),
            Some(i / 4 + 1),
            "request {i}: {r:?}"
        );
        assert!(cs.contains("fwd=miss"), "request {i}: {cs}");
        let detail = if i < 5 {
            "detail=store-unavailable"
        } else {
            // The breaker opened after five failures (probes may fail in between).
            "detail=store-"
        };
        assert!(cs.contains(detail), "request {i}: {cs}");
        // A store that refused the read is not written to: no write storm during an outage.
        assert!(!cs.contains("; stored"), "request {i}: {cs}");
    }
    for p in 0..4 {
        assert_eq!(st.origin().count(&format!("/down{p}")), 5);
    }
    assert_eq!(st.counter("fleet_cache_lookups"), 20, "{}", st.diag());
    let errors = st.counter("fleet_cache_store_errors");
    let skipped = st.counter("fleet_cache_store_skipped");
    assert_eq!(errors + skipped, 20, "{}", st.diag());
    assert!(
        skipped >= 10,
        "the breaker skipped the store: {}",
        st.diag()
    );
    // Each worker (two) has its own breaker; the gauge counts those open.
    let openings = st.counter("fleet_cache_store_breaker_openings");
    assert!((1..=2).contains(&openings), "{}", st.diag());
    assert_eq!(
        st.counter("fleet_cache_store_breaker_open"),
        openings,
        "{}",
        st.diag()
    );
    assert_eq!(st.counter("fleet_cache_hits"), 0);
    // Nothing was recorded, so nothing was even tried.
    assert_eq!(st.counter("fleet_cache_published"), 0, "{}", st.diag());
    assert_eq!(
        st.counter("fleet_cache_publish_failures"),
        0,
        "{}",
        st.diag()
    );
    assert_eq!(
        st.counter("fleet_cache_publish_retries"),
        0,
        "{}",
        st.diag()
    );

    st.start_redis();
    // Webdis reconnects its pooled Redis connections on its own; wait until a run of lookups
    // through it succeeds so that the checks below don't race that.
    let mut ok_in_a_row = 0;
    let reconnected = poll(Duration::from_secs(5), || {
        if st.webdis_request("GET", "/PING.raw", &[]).status == 200 {
            ok_in_a_row += 1;
        } else {
            ok_in_a_row = 0;
        }
        ok_in_a_row >= 40
    });
    assert!(
        reconnected,
        "webdis did not reconnect:\n{}",
        st.webdis_log()
    );

    // The next request after the backoff probes the store and closes the breaker: caching
    // is back within a second (the backoff is at most `store.breaker_max_backoff_ms`).
    let back = Instant::now();
    let closed = poll(Duration::from_millis(1_500), || {
        !cache_status(&st.get("/probe", &[])).contains("detail=")
    });
    assert!(
        closed,
        "breaker still open after {:?}: {}",
        back.elapsed(),
        st.diag()
    );
    let target = "/after?cc=max-age%3D60";
    let published_before = st.counter("fleet_cache_published");
    let miss = st.get(target, &[]);
    assert_eq!(miss.status, 200);
    assert_eq!(miss.text(), text_body(target));
    let cs = cache_status(&miss);
    assert!(
        cs.contains("fwd=uri-miss") && cs.contains("stored") && !cs.contains("detail="),
        "{cs}"
    );
    wait_stat(&st, "fleet_cache_published", published_before + 1);
    assert_eq!(st.keys().len(), 1, "{}", st.diag());
    // Every worker's breaker closes on its next request's probe (two backoffs of at most
    // `breaker_max_backoff_ms`, 1 s: a first probe may still find Webdis reconnecting).
    let all_closed = poll(Duration::from_millis(3_000), || {
        st.get("/probe", &[]);
        st.counter("fleet_cache_store_breaker_open") == 0
    });
    assert!(all_closed, "{}", st.diag());

    let hit = st.get(target, &[]);
    assert_eq!(hit.status, 200);
    assert!(cache_status(&hit).contains("; hit"), "{hit:?}");
    assert_eq!(hit.body, miss.body);
    assert_eq!(st.origin().count("/after"), 1, "the hit reached the origin");
    assert_eq!(st.counter("fleet_cache_hits"), 1);
}

// ---------------------------------------------------------------------------------------------
// 8. Store stalled

/// Redis paused (Webdis hangs): lookups give up at `store.timeout_ms` and the request goes to
/// the origin with a bounded added latency, also for several requests at once.
#[test]
fn stalled_store_adds_bounded_latency() {
    let st = Stack::start(StackOptions::with_config(
        json!({"store": {"timeout_ms": 100}}),
    ));
    // Warm up the path through Envoy and Webdis first (connection pools, wasm VMs), so the
    // timing below is the stall's and nothing else's.
    assert_eq!(st.get("/warmup?cc=max-age%3D60", &[]).status, 200);

    st.pause_redis(3000);
    let paused_at = Instant::now();

    let target = "/stall?cc=max-age%3D60";
    let t = Instant::now();
    let r = st.get(target, &[]);
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), text_body(target));
    assert_eq!(origin_count_header(&r), Some(1));
    let cs = cache_status(&r);
    assert!(
        cs.contains("fwd=miss") && cs.contains("detail=store-timeout"),
        "{cs}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "a stalled store added {took:?} (timeout 100 ms)"
    );
    assert!(
        took >= Duration::from_millis(90),
        "answered in {took:?}: the lookup did not wait for the store at all?"
    );
    assert!(
        st.counter("fleet_cache_store_timeouts") >= 1,
        "{}",
        st.diag()
    );
    eprintln!("stalled store: one request took {took:?} ({cs})");

    // Several at once, still within the stall.
    const N: usize = 8;
    let barrier = Barrier::new(N);
    let batch_start = Instant::now();
    let results: Vec<(Resp, Duration)> = thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let (st, barrier) = (&st, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let t = Instant::now();
                    let r = st.get(&format!("/stall-par{i}?cc=max-age%3D60"), &[]);
                    (r, t.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let batch = batch_start.elapsed();
    for (i, (r, took)) in results.iter().enumerate() {
        assert_eq!(r.status, 200, "parallel {i}: {r:?}");
        assert_eq!(
            r.text(),
            text_body(&format!("/stall-par{i}?cc=max-age%3D60"))
        );
        let cs = cache_status(r);
        assert!(cs.contains("detail=store-timeout"), "parallel {i}: {cs}");
        assert!(
            *took < Duration::from_millis(1500),
            "parallel {i} took {took:?}"
        );
        assert_eq!(st.origin().count(&format!("/stall-par{i}")), 1);
    }
    eprintln!(
        "stalled store: {N} parallel requests took {batch:?}, slowest {:?}",
        results.iter().map(|(_, t)| *t).max().unwrap_or_default()
    );
    assert!(batch < Duration::from_millis(1500), "batch took {batch:?}");
    // All of it happened while Redis was paused (else the details above could not say timeout).
    assert!(paused_at.elapsed() < Duration::from_millis(3000));
    // One lookup per stalled request, each a timeout (the warm-up's succeeded).
    assert_eq!(
        st.counter("fleet_cache_store_timeouts"),
        1 + N as u64,
        "{}",
        st.diag()
    );
    assert_eq!(
        st.counter("fleet_cache_store_errors"),
        st.counter("fleet_cache_store_timeouts"),
        "{}",
        st.diag()
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Origin reset mid-body

/// An origin reset mid-stream reaches the client as a truncated response and publishes
/// nothing; the next request goes to the origin again.
#[test]
fn origin_reset_publishes_nothing() {
    let st = Stack::start(store_only());
    let target = "/reset?reset_after=2&chunks=5&pause_ms=50&cc=max-age%3D60";
    let full = text_body(target);

    let r = st.get_streaming(target, &[]);
    assert_eq!(r.status, 200);
    assert!(!r.complete, "a reset response must not look complete");
    let got = r.body();
    assert!(
        got.len() < full.len(),
        "{} bytes of {}",
        got.len(),
        full.len()
    );
    assert_eq!(got, full.as_bytes()[..got.len()]);
    assert!(
        r.header("cache-status")
            .is_some_and(|cs| cs.contains("fwd=uri-miss")),
        "{:?}",
        r.headers
    );

    wait_stat(&st, "fleet_cache_recordings_aborted", 1);
    // A publish would have been queued at the end of the stream, before the abort was
    // counted; give it the time a publish takes on the happy path, and then some.
    let stayed_empty = !poll(Duration::from_millis(300), || !st.keys().is_empty());
    assert!(stayed_empty, "a reset response was stored:\n{}", st.diag());
    assert_eq!(st.counter("fleet_cache_published"), 0);

    let again = st.get_streaming(target, &[]);
    assert_eq!(again.status, 200);
    assert!(!again.complete);
    assert!(
        again
            .header("cache-status")
            .is_some_and(|cs| cs.contains("fwd=uri-miss")),
        "{:?}",
        again.headers
    );
    assert_eq!(st.origin().count("/reset"), 2);
    wait_stat(&st, "fleet_cache_recordings_aborted", 2);
    assert_eq!(st.counter("fleet_cache_hits"), 0);
}

// ---------------------------------------------------------------------------------------------
// 10. Concurrent misses of one key

/// 20 concurrent misses of one key, each with a different body: the entry that remains is one
/// of them, whole (no mix of two writes), and the hit serves exactly it.
#[test]
fn concurrent_misses_leave_one_whole_entry() {
    const N: usize = 20;
    // Collapsing off: this is about concurrent writes of one key racing, which collapsing
    // otherwise prevents (tests/origin_protection.rs).
    let st = Stack::start(StackOptions::with_config(json!({
        "memory": {"max_bytes": 0},
        "collapse": {"max_wait_ms": 0},
    })));
    // The delay keeps every request's lookup ahead of the first publish.
    let target = "/race?unique=1&cc=max-age%3D60&delay_ms=300";
    let base = text_body(target);

    let barrier = Barrier::new(N);
    let responses: Vec<Resp> = thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|_| {
                let (st, barrier) = (&st, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    st.get(target, &[])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut misses = 0;
    let mut announced_stored = 0;
    for (i, r) in responses.iter().enumerate() {
        assert_eq!(r.status, 200, "client {i}: {r:?}");
        assert!(r.complete, "client {i}");
        // Whatever the client got is one whole origin response: base text + its counter.
        let n = origin_count_header(r).expect("x-origin-count");
        let mut expect = base.clone();
        expect.push_str(&unique_suffix(n));
        assert_eq!(r.text(), expect, "client {i}");
        let cs = cache_status(r);
        if cs.contains("fwd=") {
            misses += 1;
            if cs.contains("; stored") {
                announced_stored += 1;
            }
        }
    }
    eprintln!("concurrent misses: {misses} of {N} requests were misses");
    assert_eq!(
        st.origin().count("/race"),
        misses,
        "one origin fetch per miss"
    );
    assert!(
        misses >= 2,
        "only {misses} concurrent misses: the race was not exercised"
    );
    assert_eq!(announced_stored, misses);
    let mut lens: Vec<usize> = responses.iter().map(|r| r.body.len()).collect();
    lens.sort();
    lens.dedup();
    assert_eq!(lens.len(), misses, "the origin bodies must all differ");

    wait_publishes_settled(&st, announced_stored as u64);
    assert_eq!(
        st.counter("fleet_cache_published"),
        announced_stored as u64,
        "{}",
        st.diag()
    );

    let hit = st.get(target, &[]);
    assert_eq!(hit.status, 200);
    assert!(cache_status(&hit).contains("; hit"), "{hit:?}");
    assert_eq!(
        st.origin().count("/race"),
        misses,
        "the hit reached the origin"
    );
    let winner = responses
        .iter()
        .find(|r| r.body == hit.body)
        .unwrap_or_else(|| panic!("the hit's body is none of the clients' bodies: {hit:?}"));
    assert_eq!(
        hit.header("content-length"),
        Some(hit.body.len().to_string().as_str())
    );
    // Headers and body come from the same response.
    assert_eq!(
        hit.header("x-origin-count"),
        winner.header("x-origin-count")
    );

    let keys = st.keys();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let value = st.redis_get(&keys[0]);
    match entry::decode(&value) {
        Ok(Decoded::Response { meta, body }) => {
            assert_eq!(body, hit.body.as_slice());
            assert_eq!(meta.body_len, hit.body.len() as u64);
            assert_eq!(meta.status, 200);
        }
        other => panic!("the stored value does not decode to a response: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 11. Garbage and truncated entries

/// A MISS then a HIT; `corrupt` then replaces the stored value. The next request goes to the
/// origin (`detail=invalid-entry`), its response overwrites the entry, and a later request is
/// a hit with that response's body.
fn invalid_entry_is_refetched_and_repaired(corrupt: impl FnOnce(&[u8]) -> Vec<u8>) {
    let st = Stack::start(store_only());
    // unique=1: every origin response differs, so a hit shows which fetch wrote the entry.
    let target = "/entry?unique=1&cc=max-age%3D60";
    let first = st.get(target, &[]);
    assert_eq!(first.status, 200);
    wait_stat(&st, "fleet_cache_published", 1);
    let hit = st.get(target, &[]);
    assert!(cache_status(&hit).contains("; hit"), "{hit:?}");
    assert_eq!(hit.body, first.body);
    assert_eq!(st.origin().count("/entry"), 1);

    let keys = st.keys();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key = &keys[0];
    let good = st.redis_get(key);
    assert!(
        matches!(entry::decode(&good), Ok(Decoded::Response { body, .. }) if body == first.body),
        "the stored value is not the response"
    );
    let bad = corrupt(&good);
    assert_ne!(bad, good);
    assert!(
        entry::decode(&bad).is_err(),
        "the corruption is not invalid"
    );
    st.redis_set(key, &bad);
    assert_eq!(st.redis_get(key), bad);

    let refetch = st.get(target, &[]);
    assert_eq!(refetch.status, 200, "{refetch:?}");
    assert!(refetch.complete);
    assert_eq!(
        st.origin().count("/entry"),
        2,
        "not refetched from the origin"
    );
    let mut expect = text_body(target);
    expect.push_str(&unique_suffix(2));
    assert_eq!(refetch.text(), expect);
    let cs = cache_status(&refetch);
    assert!(
        cs.contains("fwd=uri-miss") && cs.contains("detail=invalid-entry"),
        "{cs}"
    );
    assert!(
        st.counter("fleet_cache_corrupt_entries") >= 1,
        "{}",
        st.diag()
    );

    // Repaired: the refetch overwrote the entry.
    wait_stat(&st, "fleet_cache_published", 2);
    let repaired = st.get(target, &[]);
    assert_eq!(repaired.status, 200);
    assert!(cache_status(&repaired).contains("; hit"), "{repaired:?}");
    assert_eq!(repaired.body, refetch.body);
    assert_eq!(
        st.origin().count("/entry"),
        2,
        "the repaired hit reached the origin"
    );
    assert!(
        matches!(entry::decode(&st.redis_get(key)), Ok(Decoded::Response { body, .. }) if body == refetch.body),
        "the stored value is not the refetched response"
    );
}

#[test]
fn garbage_entry_is_refetched_and_repaired() {
    // Not an entry, and bytes that look like RESP framing and a missing key.
    invalid_entry_is_refetched_and_repaired(|_| {
        b"\0garbage\r\n$-1\r\n\xff\xfe not an entry".to_vec()
    });
}

#[test]
fn truncated_entry_is_refetched_and_repaired() {
    invalid_entry_is_refetched_and_repaired(|good| good[..good.len() - 10].to_vec());
}

// ---------------------------------------------------------------------------------------------
// 12. Bad plugin configuration

/// Envoy refuses the plugin (never becomes ready) and its log names the field.
fn refused(config_text: &str, field: &str) {
    let log = Stack::start_envoy_expect_failure(config_text);
    assert!(
        log.contains("Unable to create Wasm plugin fleet_cache"),
        "{config_text}: envoy did not refuse the plugin:\n{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("fleet-cache: invalid plugin configuration"))
        .unwrap_or_else(|| panic!("no configuration error in the log of {config_text}:\n{log}"));
    eprintln!("{config_text}: {line}");
    assert!(line.contains(field), "{config_text}: {line}");
}

#[test]
fn bad_config_unknown_field_is_refused() {
    refused(r#"{"store":{"timeoutt_ms":5}}"#, "timeoutt_ms");
}

#[test]
fn bad_config_wrong_type_is_refused() {
    refused(r#"{"store":{"timeout_ms":"fast"}}"#, "store.timeout_ms");
}

#[test]
fn bad_config_zero_timeout_is_refused() {
    refused(r#"{"store":{"timeout_ms":0}}"#, "store.timeout_ms");
}

// ---------------------------------------------------------------------------------------------
// 13. HEAD

/// A HEAD miss goes to the origin and stores nothing; a HEAD on a hit gets the stored headers
/// with the body's content-length and no body, without reaching the origin.
#[test]
fn head_served_from_get_entry_and_never_creates_one() {
    let st = Stack::start(store_only());
    let target = "/head?size=1000&cc=max-age%3D60&header=X-Stored:yes";

    let head_miss = st.request("HEAD", target, &[], &[]);
    assert_eq!(head_miss.status, 200);
    assert!(head_miss.body.is_empty());
    let cs = cache_status(&head_miss);
    assert!(
        cs.contains("fwd=uri-miss") && !cs.contains("stored"),
        "{cs}"
    );
    assert_eq!(st.origin().count("/head"), 1);
    assert_eq!(st.origin().last_request("/head").unwrap().method, "HEAD");
    // Nothing gets written (a write would be queued before the response reached us).
    let stayed_empty = !poll(Duration::from_millis(300), || !st.keys().is_empty());
    assert!(stayed_empty, "a HEAD created an entry:\n{}", st.diag());
    assert_eq!(st.counter("fleet_cache_published"), 0);

    // The GET after it is a miss too, and fills the cache.
    let get = st.get(target, &[]);
    assert_eq!(get.status, 200);
    assert_eq!(get.body.len(), 1000);
    assert!(cache_status(&get).contains("fwd=uri-miss"), "{get:?}");
    assert_eq!(st.origin().count("/head"), 2);
    wait_stat(&st, "fleet_cache_published", 1);

    // HEAD on the hit, read raw: nothing may follow the head.
    let (head, rest) = raw_exchange(
        st.envoy_port(0),
        &format!("HEAD {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    );
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(lower.contains("cache-status: fleet-cache; hit"), "{head}");
    assert!(lower.contains("\r\ncontent-length: 1000\r\n"), "{head}");
    assert!(lower.contains("\r\nx-stored: yes\r\n"), "{head}");
    assert!(
        lower.contains("\r\ncontent-type: application/octet-stream\r\n"),
        "{head}"
    );
    assert!(
        lower.contains("\r\ncache-control: max-age=60\r\n"),
        "{head}"
    );
    assert!(lower.contains("\r\nx-origin-count: 2\r\n"), "{head}");
    assert!(lower.contains("\r\nage: "), "{head}");
    assert!(
        rest.is_empty(),
        "a HEAD answer carried {} body bytes",
        rest.len()
    );
    assert_eq!(
        st.origin().count("/head"),
        2,
        "the HEAD hit reached the origin"
    );
    assert_eq!(st.counter("fleet_cache_hits"), 1);

    // And the entry is still the GET's.
    let hit = st.get(target, &[]);
    assert!(cache_status(&hit).contains("; hit"));
    assert_eq!(hit.body, get.body);
    assert_eq!(st.keys().len(), 1);
}
