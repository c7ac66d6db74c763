//! The store stalled under load (Redis `CLIENT PAUSE ... ALL`, Webdis hangs), with real Envoy,
//! Webdis and Redis: each request waits at most `store.timeout_ms` for the store whatever else
//! is in flight; after consecutive failures the breaker opens and requests go straight to the
//! origin at about the origin-only rate; once Redis answers again, caching is back within about
//! a second (the longest backoff).

mod support;

use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};
use support::{Stack, StackOptions};

const CLIENTS: usize = 16;
const TIMEOUT_MS: u64 = 100;
const PAUSE_MS: u64 = 5_000;

/// One request: when it started (since `t0`), how long it took, its `cache-status`.
struct Sample {
    at: Duration,
    took: Duration,
    cache_status: String,
}

/// `CLIENTS` clients sending GETs back to back for `how_long`; `path(client, i)` names each.
fn load(
    st: &Stack,
    t0: Instant,
    how_long: Duration,
    headers: &[(&str, &str)],
    path: impl Fn(usize, usize) -> String + Sync,
) -> Vec<Sample> {
    let stop = AtomicBool::new(false);
    let failures = AtomicUsize::new(0);
    let samples: Vec<Sample> = thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (stop, failures, path) = (&stop, &failures, &path);
                s.spawn(move || {
                    let mut out = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        let r = st.get(&path(c, i), headers);
                        if r.status != 200 || !r.complete {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                        out.push(Sample {
                            at: start - t0,
                            took: start.elapsed(),
                            cache_status: r.header("cache-status").unwrap_or_default().into(),
                        });
                        i += 1;
                    }
                    out
                })
            })
            .collect();
        thread::sleep(how_long);
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client"))
            .collect()
    });
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "non-200 or cut responses"
    );
    samples
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn rate(samples: &[Sample], from: Duration, to: Duration) -> f64 {
    let n = samples
        .iter()
        .filter(|s| s.at >= from && s.at + s.took <= to)
        .count();
    n as f64 / (to - from).as_secs_f64()
}

#[test]
fn a_stalled_store_is_skipped_under_load_and_caching_comes_back() {
    // The in-proxy tier keeps values a minute: what it holds is served through the stall.
    let st = Stack::start(StackOptions::with_config(json!({
        "store": {"timeout_ms": TIMEOUT_MS},
        "memory": {"max_age_ms": 60_000}
    })));
    for i in 0..20 {
        st.get(&format!("/warm{i}?cc=max-age%3D60"), &[]);
    }
    // A hot URL, stored, then read from Redis into each worker's tier (requests spread over
    // both workers).
    let hot = "/hot?cc=max-age%3D600";
    st.get(hot, &[]);
    let warmed = (0..200).any(|_| {
        thread::sleep(Duration::from_millis(5));
        let memory_hits = (0..8)
            .filter(|_| {
                st.get(hot, &[])
                    .header("cache-status")
                    .is_some_and(|c| c.contains("detail=memory"))
            })
            .count();
        memory_hits == 8
    });
    assert!(warmed, "the hot URL never came from every worker's memory");

    // The origin-only rate: the same load with the cache bypassed (client no-store).
    let t0 = Instant::now();
    let origin_only = load(
        &st,
        t0,
        Duration::from_millis(1_500),
        &[("cache-control", "no-store")],
        |c, i| format!("/base-{c}-{i}"),
    );
    let base_rate = rate(&origin_only, Duration::ZERO, Duration::from_millis(1_500));
    let base_p50 = percentile(origin_only.iter().map(|s| s.took).collect(), 0.5);

    // The stall, under load: every request a miss of its own URL.
    st.pause_redis(PAUSE_MS);
    let paused = Instant::now();
    let stalled = load(
        &st,
        paused,
        Duration::from_millis(PAUSE_MS - 500),
        &[],
        |c, i| format!("/stall-{c}-{i}?cc=max-age%3D60"),
    );
    // Still within the stall: the in-proxy tier answers what it holds.
    for _ in 0..8 {
        let r = st.get(hot, &[]);
        let cs = r.header("cache-status").unwrap_or_default();
        assert!(
            cs.contains("hit") && cs.contains("detail=memory"),
            "during the stall: {cs}"
        );
    }
    let p99 = percentile(stalled.iter().map(|s| s.took).collect(), 0.99);
    let worst = stalled.iter().map(|s| s.took).max().unwrap_or_default();
    let timeouts = stalled
        .iter()
        .filter(|s| s.cache_status.contains("detail=store-timeout"))
        .count();
    let skipped = stalled
        .iter()
        .filter(|s| s.cache_status.contains("detail=store-breaker-open"))
        .count();
    // After the breaker opened (well within the first second), until the load stopped.
    let stall_rate = rate(
        &stalled,
        Duration::from_millis(1_000),
        Duration::from_millis(PAUSE_MS - 500),
    );
    eprintln!(
        "origin-only: {base_rate:.0} req/s, p50 {base_p50:?}; stalled store: {} requests, \
         {timeouts} timed out, {skipped} skipped, p99 {p99:?}, worst {worst:?}, \
         {stall_rate:.0} req/s after the breaker opened ({:.2}x)",
        stalled.len(),
        stall_rate / base_rate
    );
    assert!(timeouts > 0, "the stall was never seen");
    assert!(
        skipped > stalled.len() / 2,
        "the breaker did not skip the store"
    );
    // Each request waits at most the timeout for the store, whatever else is out.
    assert!(
        p99 <= base_p50 + Duration::from_millis(TIMEOUT_MS + 20),
        "p99 {p99:?} over origin p50 {base_p50:?} + timeout + 20 ms"
    );
    // Without the breaker the rate fell to ~0.02x (every request paid the timeout). The bound
    // is loose because other tests share the machine's two cores with this one (0.71x seen
    // under a parallel build); the ratio itself is measured by `make bench`.
    assert!(
        stall_rate >= 0.5 * base_rate,
        "{stall_rate:.0} req/s during the stall against {base_rate:.0} origin-only"
    );

    // Redis answers again: the next requests after each worker's backoff probe it.
    let resume_at = paused + Duration::from_millis(PAUSE_MS);
    thread::sleep(resume_at.saturating_duration_since(Instant::now()));
    let mut back_after = None;
    let mut i = 0;
    while paused.elapsed() < Duration::from_millis(PAUSE_MS + 3_000) {
        let r = st.get(&format!("/back-{i}?cc=max-age%3D60"), &[]);
        i += 1;
        let cs = r.header("cache-status").unwrap_or_default().to_string();
        if cs.contains("fwd=uri-miss") && cs.contains("stored") && !cs.contains("detail=") {
            back_after = Some(resume_at.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    let back_after = back_after.expect("caching never came back");
    eprintln!("caching back {back_after:?} after the store");
    assert!(
        back_after <= Duration::from_millis(1_100),
        "caching back only {back_after:?} after the store returned"
    );
    let log = st.envoy_log(0);
    for bad in [
        "panicked",
        "unexpected status",
        "RuntimeError",
        "unreachable",
    ] {
        assert!(!log.contains(bad), "{bad} in Envoy's log");
    }
}
