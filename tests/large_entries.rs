//! Entries larger than one store answer, and values of another Redis type at the filter's keys,
//! through real Envoy, Webdis and Redis.
//!
//! - Several 12 MiB entries hit at once on one worker (Envoy `--concurrency 1`, so one wasm VM):
//!   each is read in pieces of at most 4 MiB (`outbox::ANSWER_BYTES`), never in one answer near
//!   Envoy's async-client buffer limit (four such values once came back as one ~48 MiB answer,
//!   which Envoy failed). Every response is the origin's body, byte for byte; with a roomy
//!   `store.timeout_ms` every one is a hit, with the default 100 ms a hit that cannot finish
//!   falls back to the origin (`detail=store-...`), never a 5xx; the VM never crashes.
//! - A 20 MiB entry (`max_body_bytes` 32 MiB): more pieces than may be out at once.
//! - A hash or a set at an entry's key is a foreign value: a miss (`detail=invalid-entry`),
//!   counted as corrupt, and the next write replaces it; a string at a tag set's or variants
//!   set's key does not stop the write that adds to the set.
//!
//! The in-proxy tier is off (`memory.max_bytes` 0): every hit reads Redis. Run with
//! `cargo test --test large_entries -- --test-threads 2`.

mod support;

use std::sync::{Barrier, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use fleet_cache::http::RequestHead;
use fleet_cache::key;
use fleet_cache::outbox::ANSWER_BYTES;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::origin::noise_body;
use support::stack::merge_patch;
use support::{Resp, Stack, StackOptions, binary_body, poll};

const MIB: usize = 1 << 20;
/// The body of each entry of the concurrent tests: three full pieces and a bit.
const BIG: usize = 12 * MIB;
const _: () = assert!(BIG >= 3 * ANSWER_BYTES);
/// What a crashed wasm VM leaves in Envoy's log (the SDK's panic, then V8's trap).
const CRASH_SIGNS: &[&str] = &[
    "panicked",
    "unexpected status",
    "RuntimeError",
    "unreachable",
    "Wasm VM failed",
];

// ---------------------------------------------------------------------------------------------
// Helpers

/// One worker (one wasm VM), the in-proxy tier off, and `patch` on top.
fn options(patch: Value) -> StackOptions {
    let mut config = json!({"memory": {"max_bytes": 0}});
    merge_patch(&mut config, &patch);
    StackOptions {
        concurrency: 1,
        plugin_config: config,
        ..StackOptions::default()
    }
}

/// Waits until counter `name` reaches `n` (`timeout` at most); panics with diagnostics.
fn wait_stat(st: &Stack, name: &str, n: u64, timeout: Duration) {
    if !poll(timeout, || st.counter(name) >= n) {
        panic!(
            "{name} did not reach {n} (is {})\n{}",
            st.counter(name),
            st.diag()
        );
    }
}

fn cache_status(r: &Resp) -> String {
    r.header("cache-status").unwrap_or_default().to_string()
}

fn is_hit(r: &Resp) -> bool {
    cache_status(r).split(';').any(|p| p.trim() == "hit")
}

/// A short fingerprint of a body for messages: length and the start of its SHA-256.
fn fingerprint(b: &[u8]) -> String {
    let h = Sha256::digest(b);
    format!(
        "{} bytes, sha256 {:02x}{:02x}{:02x}{:02x}..",
        b.len(),
        h[0],
        h[1],
        h[2],
        h[3]
    )
}

/// Lines of Envoy's log that show a crashed VM (the log is written every 100 ms).
fn crash_lines(st: &Stack) -> Vec<String> {
    thread::sleep(Duration::from_millis(300));
    st.envoy_log(0)
        .lines()
        .filter(|l| CRASH_SIGNS.iter().any(|s| l.contains(s)))
        .map(str::to_string)
        .collect()
}

/// One response of [`get_all`], with when its head and its last byte arrived.
struct Timed {
    resp: Resp,
    /// Request sent to response head: the lookup and the read of the entry, for a hit.
    head: Duration,
    /// Request sent to last byte.
    total: Duration,
}

/// GET through envoy 0, timed. The body is joined with one copy per piece
/// ([`support::StreamResp::body`] goes byte by byte: seconds of CPU for a few 12 MiB bodies
/// in a debug build, taken from the Envoy under test).
fn get_timed(st: &Stack, target: &str) -> Timed {
    let r = st.get_streaming(target, &[]);
    let last = r.chunks.last().map_or(r.headers_at, |c| c.0);
    let mut body = Vec::with_capacity(r.chunks.iter().map(|c| c.1.len()).sum());
    for (_, c) in &r.chunks {
        body.extend_from_slice(c);
    }
    Timed {
        head: r.headers_at - r.sent_at,
        total: last - r.sent_at,
        resp: Resp {
            status: r.status,
            headers: r.headers,
            body,
            complete: r.complete,
        },
    }
}

/// GETs every target at once, one client each (they meet at a barrier first).
fn get_all(st: &Stack, targets: &[String]) -> Vec<Timed> {
    let barrier = Barrier::new(targets.len());
    thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    get_timed(st, t)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Why `r` is not the origin's whole 200 with body `expected`, if it is not.
fn wrong_response(r: &Resp, expected: &[u8]) -> Option<String> {
    let why = if r.status != 200 {
        "status is not 200"
    } else if !r.complete {
        "truncated"
    } else if r.body != expected {
        "body differs from the origin's"
    } else if !r.has_header("cache-status") {
        "no cache-status: the filter did not run"
    } else {
        return None;
    };
    Some(format!(
        "{why}: status {}, cache-status {:?}, body {} (expected {})",
        r.status,
        r.header("cache-status"),
        fingerprint(&r.body),
        fingerprint(expected)
    ))
}

/// After the big ones: a small new URL on the same worker is still a MISS, stored, then a HIT
/// (right bodies, no 5xx). Retried for a few seconds: the breaker may be open after timeouts.
fn worker_still_serves(st: &Stack, target: &str, path: &str, size: usize) {
    let expected = binary_body(path, size);
    let mut seen = Vec::new();
    let hit = poll(Duration::from_secs(10), || {
        let r = st.get(target, &[]);
        if let Some(why) = wrong_response(&r, &expected) {
            panic!("{target} after the large entries: {why}\n{}", st.diag());
        }
        seen.push(cache_status(&r));
        is_hit(&r)
    });
    assert!(
        hit && seen.len() >= 2 && seen[0].contains("fwd="),
        "{target}: expected a miss then a hit, got {seen:?}\n{}",
        st.diag()
    );
}

// ---------------------------------------------------------------------------------------------
// Several 12 MiB entries hit at once on one worker

/// Tests that move tens of MiB through one Envoy worker run one at a time: two at once on a
/// small machine would mostly measure each other.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stores `n` distinct 12 MiB entries, then GETs them all at once, twice, with
/// `store.timeout_ms` = `timeout_ms`. With `all_hit`, every response must be a hit; otherwise
/// at least one, the others forwarded because of the store (`detail=store-...`).
fn big_entries_at_once(n: usize, timeout_ms: u64, all_hit: bool) {
    let _heavy = heavy();
    let t0 = Instant::now();
    let st = Stack::start(options(json!({"store": {"timeout_ms": timeout_ms}})));
    let paths: Vec<String> = (0..n).map(|i| format!("/big{i}")).collect();
    let targets: Vec<String> = paths
        .iter()
        .map(|p| format!("{p}?noise={BIG}&cc=max-age%3D600&ctype=application%2Foctet-stream"))
        .collect();
    let expected: Vec<Vec<u8>> = paths.iter().map(|p| noise_body(p, BIG)).collect();

    // Store them: a miss each (at once), then wait until every write landed.
    for (i, got) in get_all(&st, &targets).iter().enumerate() {
        if let Some(why) = wrong_response(&got.resp, &expected[i]) {
            panic!("storing {}: {why}\n{}", targets[i], st.diag());
        }
        let cs = cache_status(&got.resp);
        assert!(cs.contains("stored"), "storing {}: {cs}", targets[i]);
    }
    wait_stat(
        &st,
        "fleet_cache_published",
        n as u64,
        Duration::from_secs(20),
    );
    for t in &targets {
        let key = st.primary_key(t).redis_key;
        let len: usize = st.redis_cli(&["STRLEN", &key]).parse().expect("STRLEN");
        // Whole, and more than one answer carries: read in pieces.
        assert!(
            len > BIG,
            "{t}: Redis holds {len} bytes at {key}, expected an entry of more than 12 MiB"
        );
    }
    let stored_in = t0.elapsed();

    let hits0 = st.counter("fleet_cache_hits");
    let large0 = st.counter("fleet_cache_large_entry_reads");
    let mut failures = Vec::new();
    let mut hits = 0;
    let mut lines = Vec::new();
    for round in 1..=2 {
        for (i, got) in get_all(&st, &targets).iter().enumerate() {
            let (r, cs) = (&got.resp, cache_status(&got.resp));
            if let Some(why) = wrong_response(r, &expected[i]) {
                failures.push(format!("round {round}, {}: {why}", paths[i]));
            } else if is_hit(r) {
                hits += 1;
            } else if all_hit {
                failures.push(format!("round {round}, {}: not a hit: {cs}", paths[i]));
            } else if !(cs.contains("fwd=") && cs.contains("detail=store-")) {
                // Forwarded, but not because the store was slow, busy or skipped: an entry
                // lost or read wrong (`detail=invalid-entry`) would land here.
                failures.push(format!(
                    "round {round}, {}: forwarded without a store detail: {cs}",
                    paths[i]
                ));
            }
            lines.push(format!(
                "round {round} {}: head {:?}, last byte {:?}: {cs}",
                paths[i], got.head, got.total
            ));
        }
    }
    let crash = crash_lines(&st);
    assert!(
        failures.is_empty() && crash.is_empty(),
        "{} failure(s):\n- {}\ncrash lines: {crash:?}\nresponses:\n{}\n{}",
        failures.len(),
        failures.join("\n- "),
        lines.join("\n"),
        st.diag()
    );
    assert!(
        hits >= 1,
        "not a single hit of {}:\n{}\n{}",
        2 * n,
        lines.join("\n"),
        st.diag()
    );
    if all_hit {
        assert_eq!(hits, 2 * n);
        for p in &paths {
            assert_eq!(st.origin().count(p), 1, "{p}: a hit reached the origin");
        }
    }
    let large_reads = st.counter("fleet_cache_large_entry_reads") - large0;
    assert_eq!(
        st.counter("fleet_cache_hits") - hits0,
        hits as u64,
        "fleet_cache_hits vs the responses"
    );
    assert!(
        large_reads >= hits as u64,
        "{hits} hits of entries larger than one answer, but only {large_reads} read in pieces"
    );

    worker_still_serves(
        &st,
        "/small-after?size=2000&cc=max-age%3D60",
        "/small-after",
        2000,
    );
    let crash = crash_lines(&st);
    assert!(crash.is_empty(), "the wasm VM crashed: {crash:?}");
    eprintln!(
        "{n} x 12 MiB at once, timeout {timeout_ms} ms: {hits}/{} hits, large reads {large_reads}, \
         store timeouts {}, breaker openings {}, corrupt {}; stored in {stored_in:?}, \
         total {:?}\n{}",
        2 * n,
        st.counter("fleet_cache_store_timeouts"),
        st.counter("fleet_cache_store_breaker_openings"),
        st.counter("fleet_cache_corrupt_entries"),
        t0.elapsed(),
        lines.join("\n")
    );
}

#[test]
fn four_12_mib_entries_at_once_all_hit_with_a_roomy_timeout() {
    big_entries_at_once(4, 2000, true);
}

#[test]
fn five_12_mib_entries_at_once_all_hit_with_a_roomy_timeout() {
    big_entries_at_once(5, 2000, true);
}

#[test]
fn four_12_mib_entries_at_once_with_the_default_timeout_fail_open() {
    big_entries_at_once(4, 100, false);
}

#[test]
fn five_12_mib_entries_at_once_with_the_default_timeout_fail_open() {
    big_entries_at_once(5, 100, false);
}

// ---------------------------------------------------------------------------------------------
// One entry of more pieces than may be out at once

#[test]
fn a_20_mib_entry_is_read_in_more_pieces_than_go_out_at_once() {
    let _heavy = heavy();
    let size = 20 * MIB;
    let st = Stack::start(options(json!({
        "max_body_bytes": 32 * MIB,
        "store": {"timeout_ms": 2000}
    })));
    let target = format!("/huge?noise={size}&cc=max-age%3D600");
    let expected = noise_body("/huge", size);
    let miss = get_timed(&st, &target).resp;
    if let Some(why) = wrong_response(&miss, &expected) {
        panic!("the miss: {why}\n{}", st.diag());
    }
    assert!(
        cache_status(&miss).contains("stored"),
        "{}",
        cache_status(&miss)
    );
    wait_stat(&st, "fleet_cache_published", 1, Duration::from_secs(20));
    let key = st.primary_key(&target).redis_key;
    let len: usize = st.redis_cli(&["STRLEN", &key]).parse().expect("STRLEN");
    // More than four pieces: MAX_PIECES_OUT (4) go out, the rest after answers come back.
    assert!(len > 4 * ANSWER_BYTES, "Redis holds {len} bytes at {key}");

    let large0 = st.counter("fleet_cache_large_entry_reads");
    let Timed {
        resp: hit,
        head,
        total,
    } = get_timed(&st, &target);
    if let Some(why) = wrong_response(&hit, &expected) {
        panic!("the hit: {why}\n{}", st.diag());
    }
    assert!(
        is_hit(&hit),
        "not a hit: {}\n{}",
        cache_status(&hit),
        st.diag()
    );
    assert_eq!(st.origin().count("/huge"), 1, "the hit reached the origin");
    assert_eq!(
        st.counter("fleet_cache_large_entry_reads"),
        large0 + 1,
        "the hit was not read in pieces"
    );
    let crash = crash_lines(&st);
    assert!(crash.is_empty(), "the wasm VM crashed: {crash:?}");
    eprintln!(
        "20 MiB entry: {len} bytes in Redis = {} pieces; hit: head {head:?}, last byte {total:?}",
        len.div_ceil(ANSWER_BYTES)
    );
}

// ---------------------------------------------------------------------------------------------
// Values of another Redis type at the filter's keys

/// A hash or a set at a URL's entry key: the request goes to the origin as a corrupt entry,
/// the write replaces the foreign value, and the URL becomes a hit.
fn foreign_value_at_the_entry_key(path: &str, plant: &[&str]) {
    let st = Stack::start(options(json!({})));
    let size = 3000;
    let target = format!("{path}?noise={size}&cc=max-age%3D600");
    let expected = noise_body(path, size);
    let key = st.primary_key(&target).redis_key;
    let mut cmd = vec![plant[0], &key];
    cmd.extend_from_slice(&plant[1..]);
    st.redis_cli(&cmd);
    let planted_type = st.redis_cli(&["TYPE", &key]);
    assert!(
        planted_type == "hash" || planted_type == "set",
        "planted {planted_type}"
    );
    let corrupt0 = st.counter("fleet_cache_corrupt_entries");

    let r = st.get(&target, &[]);
    if let Some(why) = wrong_response(&r, &expected) {
        panic!("with a {planted_type} at the key: {why}\n{}", st.diag());
    }
    let cs = cache_status(&r);
    assert!(
        cs.contains("fwd=uri-miss") && cs.contains("detail=invalid-entry") && cs.contains("stored"),
        "with a {planted_type} at the key: {cs}"
    );
    assert_eq!(st.origin().count(path), 1);
    wait_stat(
        &st,
        "fleet_cache_corrupt_entries",
        corrupt0 + 1,
        Duration::from_secs(5),
    );

    // The write replaces the foreign value.
    if !poll(Duration::from_secs(5), || {
        st.redis_cli(&["TYPE", &key]) == "string"
    }) {
        panic!(
            "the {planted_type} at {key} was not replaced: TYPE {}\n{}",
            st.redis_cli(&["TYPE", &key]),
            st.diag()
        );
    }
    let hit = st.get(&target, &[]);
    if let Some(why) = wrong_response(&hit, &expected) {
        panic!("after the write: {why}\n{}", st.diag());
    }
    assert!(
        is_hit(&hit),
        "after the write: {}\n{}",
        cache_status(&hit),
        st.diag()
    );
    assert_eq!(st.origin().count(path), 1, "the hit reached the origin");
    assert_eq!(
        st.counter("fleet_cache_corrupt_entries"),
        corrupt0 + 1,
        "counted once"
    );
}

#[test]
fn a_hash_at_the_entry_key_is_a_counted_miss_and_replaced() {
    foreign_value_at_the_entry_key("/foreign-hash", &["HSET", "f", "v"]);
}

#[test]
fn a_set_at_the_entry_key_is_a_counted_miss_and_replaced() {
    foreign_value_at_the_entry_key("/foreign-set", &["SADD", "member"]);
}

/// A string at the key of a set the write adds to (a tag set, a variants set) is replaced by
/// the set: the write lands, and the URL becomes a hit.
fn string_at_a_set_key(
    st: &Stack,
    path: &str,
    target: &str,
    headers: &[(&str, &str)],
    set_key: &str,
    member: impl Fn() -> String,
) {
    let expected = binary_body(path, 2000);
    assert_eq!(st.redis_cli(&["SET", set_key, "not a set"]), "OK");
    let published0 = st.counter("fleet_cache_published");
    let failed0 =
        st.counter("fleet_cache_publish_failures") + st.counter("fleet_cache_publish_retries");

    let miss = st.get(target, headers);
    if let Some(why) = wrong_response(&miss, &expected) {
        panic!("{target}: {why}\n{}", st.diag());
    }
    let cs = cache_status(&miss);
    assert!(
        cs.contains("fwd=uri-miss") && cs.contains("stored"),
        "{target}: {cs}"
    );
    wait_stat(
        st,
        "fleet_cache_published",
        published0 + 1,
        Duration::from_secs(5),
    );
    assert_eq!(
        st.counter("fleet_cache_publish_failures") + st.counter("fleet_cache_publish_retries"),
        failed0,
        "the write failed at first (a string at {set_key})\n{}",
        st.diag()
    );
    assert_eq!(st.redis_cli(&["TYPE", set_key]), "set", "{set_key}");
    let m = member();
    assert_eq!(
        st.redis_cli(&["SISMEMBER", set_key, &m]),
        "1",
        "{set_key} does not list {m}: {:?}",
        st.redis_cli(&["SMEMBERS", set_key])
    );

    let hit = st.get(target, headers);
    if let Some(why) = wrong_response(&hit, &expected) {
        panic!("{target} after the write: {why}\n{}", st.diag());
    }
    assert!(
        is_hit(&hit),
        "{target} after the write: {}\n{}",
        cache_status(&hit),
        st.diag()
    );
    assert_eq!(st.origin().count(path), 1, "the hit reached the origin");
}

#[test]
fn a_string_at_a_tag_set_key_does_not_block_the_write() {
    let st = Stack::start(options(json!({})));
    let path = "/tagged";
    let target = format!("{path}?size=2000&cc=max-age%3D600&header=Surrogate-Key:shelf%20promo");
    let tag_key = key::tag_set_key(st.namespace(), "shelf");
    let entry_key = st.primary_key(&target).redis_key;
    string_at_a_set_key(&st, path, &target, &[], &tag_key, || entry_key.clone());
    // The other tag's set, never planted, was written alongside.
    let other = key::tag_set_key(st.namespace(), "promo");
    assert_eq!(st.redis_cli(&["SISMEMBER", &other, &entry_key]), "1");
}

#[test]
fn a_string_at_a_variants_set_key_does_not_block_the_write() {
    let st = Stack::start(options(json!({})));
    let path = "/varied";
    let target = format!("{path}?size=2000&cc=max-age%3D600&vary=Accept");
    let primary = st.primary_key(&target);
    let set_key = format!("{}:v", primary.redis_key);
    let headers = [("accept", "application/x-test")];
    // The variant's key, as the filter derives it from the variants record's header names.
    let variant_key = {
        let req = RequestHead {
            method: "GET".into(),
            scheme: "http".into(),
            authority: "localhost".into(),
            path: target.clone(),
            headers: vec![("accept".into(), "application/x-test".into())],
        };
        primary.variant(&["accept".to_string()], &req).redis_key
    };
    string_at_a_set_key(&st, path, &target, &headers, &set_key, || {
        variant_key.clone()
    });
}

// ---------------------------------------------------------------------------------------------
// A read abandoned while its pieces are out must not spoil the next read of the same key:
// each read of a large value is its own (the outbox ties a piece to its read, not its key;
// `a_piece_of_an_abandoned_read_is_no_one_elses` in src/outbox/tests.rs is the same, alone).

/// Through real Envoy: a client that goes away while a 20 MiB entry is being read, then
/// another request for it at once: a hit, not `detail=invalid-entry`.
#[test]
fn an_abandoned_read_does_not_spoil_the_next_read_of_the_entry() {
    use std::io::Write;
    use std::net::TcpStream;
    let _heavy = heavy();
    let size = 20 * MIB;
    let st = Stack::start(options(json!({
        "max_body_bytes": 32 * MIB,
        "store": {"timeout_ms": 2000}
    })));
    let target = format!("/abandoned?noise={size}&cc=max-age%3D600");
    let expected = noise_body("/abandoned", size);
    assert!(cache_status(&get_timed(&st, &target).resp).contains("stored"));
    wait_stat(&st, "fleet_cache_published", 1, Duration::from_secs(20));
    let mut seen = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(("127.0.0.1", st.envoy_port(0))).expect("connect");
        let head = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        c.write_all(head.as_bytes()).expect("send");
        // Long enough for the lookup to answer and the pieces to leave, not for them to return.
        thread::sleep(Duration::from_millis(10));
        drop(c);
        let r = get_timed(&st, &target).resp;
        if let Some(why) = wrong_response(&r, &expected) {
            panic!("after an abandoned read: {why}\n{}", st.diag());
        }
        seen.push(cache_status(&r));
        // Let everything of this round settle (writes after a miss included).
        thread::sleep(Duration::from_millis(1500));
    }
    assert!(
        seen.iter().all(|cs| cs.contains("hit")),
        "after an abandoned read of the entry: {seen:?}; corrupt entries {}",
        st.counter("fleet_cache_corrupt_entries")
    );
}
