//! Concurrent requests of one proxy share store callouts. Lookups (src/outbox/mod.rs): keys that
//! queue while callouts are out leave together, a key already asked is not asked again, and a
//! client that leaves while its lookup waits disturbs no one. Writes (src/outbox/writes.rs): entries
//! that queue while write callouts are out are written together, and small ones ride with
//! lookups. Redis is paused with CLIENT PAUSE to make requests queue deterministically.

mod support;

use serde_json::json;
use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};
use support::{Resp, Stack, StackOptions};

/// Redis only (no in-proxy tier), and a deadline well past the pauses below.
fn redis_only() -> StackOptions {
    StackOptions::with_config(json!({
        "memory": {"max_bytes": 0},
        "store": {"timeout_ms": 3000}
    }))
}

fn wait_published(s: &Stack, n: u64) {
    wait_stat(s, "fleet_cache_published", n);
}

fn wait_stat(s: &Stack, name: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.stat(0, name).unwrap_or(0) < n {
        assert!(
            Instant::now() < deadline,
            "{name} < {n}: {}",
            s.envoy_log(0)
        );
    }
}

fn store_callouts(s: &Stack) -> u64 {
    s.stat(0, "cluster.fleet_cache_store.upstream_rq_total")
        .unwrap_or(0)
}

fn is_hit(r: &Resp) -> bool {
    r.header("cache-status")
        .is_some_and(|c| c.starts_with("fleet-cache; hit"))
}

/// Sends every path at once (one thread each) while Redis is paused, so that all of them
/// wait for the store together; returns the responses in path order.
fn all_at_once_while_paused(s: &Stack, paths: &[String], pause_ms: u64) -> Vec<Resp> {
    all_at_once_while_paused_with(s, paths, pause_ms, &[])
}

fn all_at_once_while_paused_with(
    s: &Stack,
    paths: &[String],
    pause_ms: u64,
    headers: &[(&str, &str)],
) -> Vec<Resp> {
    s.pause_redis(pause_ms);
    thread::scope(|scope| {
        let handles: Vec<_> = paths
            .iter()
            .map(|p| scope.spawn(move || s.get(p, headers)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn requests_waiting_together_share_callouts_and_each_gets_its_own_entry() {
    let s = Stack::start(redis_only());
    let paths: Vec<String> = (0..24)
        .map(|i| format!("/batch{i}?size={}&cc=max-age%3D60", 1000 + i))
        .collect();
    let misses: Vec<Resp> = paths.iter().map(|p| s.get(p, &[])).collect();
    wait_published(&s, paths.len() as u64);

    let before = store_callouts(&s);
    let hits = all_at_once_while_paused(&s, &paths, 300);
    let callouts = store_callouts(&s) - before;
    for ((path, miss), hit) in paths.iter().zip(&misses).zip(&hits) {
        assert!(is_hit(hit), "{path}: {:?}", hit.headers);
        assert_eq!(hit.body, miss.body, "{path}: its own entry, byte for byte");
    }
    // Each of Envoy's 2 workers sends at most 2 batches while Redis is paused, then whatever
    // queued meanwhile in one or two more (16 keys per batch at most).
    assert!(
        callouts < paths.len() as u64 / 2,
        "{callouts} store callouts for {} concurrent lookups",
        paths.len()
    );
}

#[test]
fn a_key_already_asked_is_not_asked_again() {
    let s = Stack::start(redis_only());
    let path = "/hot?size=5000&cc=max-age%3D60".to_string();
    let miss = s.get(&path, &[]);
    wait_published(&s, 1);

    let before = store_callouts(&s);
    let hits = all_at_once_while_paused(&s, &vec![path.clone(); 16], 300);
    let callouts = store_callouts(&s) - before;
    for hit in &hits {
        assert!(is_hit(hit), "{:?}", hit.headers);
        assert_eq!(hit.body, miss.body);
    }
    // One lookup per worker that received requests (Envoy runs 2).
    assert!(
        callouts <= 2,
        "{callouts} store callouts for 16 hits of one key"
    );
}

#[test]
fn a_client_gone_while_its_lookup_waits_disturbs_no_one() {
    let s = Stack::start(redis_only());
    let path = "/left?size=3000&cc=max-age%3D60";
    let miss = s.get(path, &[]);
    wait_published(&s, 1);

    s.pause_redis(400);
    // Clients that send the request and leave while the lookup waits for the store...
    for _ in 0..4 {
        let mut c = TcpStream::connect(("127.0.0.1", s.envoy_port(0))).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").unwrap();
        thread::sleep(Duration::from_millis(20));
        drop(c);
    }
    // ...and one that waits, for the same key (it joins the lookup the first asked).
    let stayed = s.get(path, &[]);
    assert!(is_hit(&stayed), "{:?}", stayed.headers);
    assert_eq!(stayed.body, miss.body);

    // The proxy is healthy after the answers that had no one to serve.
    let after = s.get(path, &[]);
    assert!(is_hit(&after), "{:?}", after.headers);
    let log = s.envoy_log(0);
    assert!(
        !log.contains("panicked") && !log.contains("wasm trap"),
        "{log}"
    );
}

#[test]
fn entries_waiting_together_are_written_together() {
    const TOKEN: &str = "batching-test-purge-token";
    let s = Stack::start(StackOptions::with_config(json!({
        "memory": {"max_bytes": 0},
        "store": {"timeout_ms": 3000},
        "purge": {"token": TOKEN}
    })));
    // Plain entries, variants (Vary: Accept) and tagged entries, mixed in the same batches.
    let paths: Vec<String> = (0..24)
        .map(|i| {
            let shape = match i % 3 {
                0 => "",
                1 => "&vary=Accept",
                _ => "&header=surrogate-key:batched",
            };
            format!("/write{i}?size={}&cc=max-age%3D60{shape}", 2000 + i)
        })
        .collect();
    let accept = ("accept", "text/x-batch");
    // `no-cache` requests go to the origin without a lookup and store what they get: every
    // store callout below is a write. The first writes wait on the paused Redis; the others
    // queue behind them.
    let before = store_callouts(&s);
    let fetched =
        all_at_once_while_paused_with(&s, &paths, 400, &[("cache-control", "no-cache"), accept]);
    wait_published(&s, paths.len() as u64);
    let writes = store_callouts(&s) - before;
    assert!(
        writes < paths.len() as u64 / 2,
        "{writes} write callouts for {} entries",
        paths.len()
    );
    assert_eq!(s.stat(0, "fleet_cache_publish_failures").unwrap_or(0), 0);
    // Each entry landed whole, under its own key; variants under the variant's.
    for (path, fetched) in paths.iter().zip(&fetched) {
        assert_eq!(fetched.status, 200);
        let hit = s.get(path, &[accept]);
        assert!(is_hit(&hit), "{path}: {:?}", hit.headers);
        assert_eq!(hit.body, fetched.body, "{path}");
    }
    // The tag sets list every tagged entry of the batches.
    let purge = s.request(
        "PURGE",
        "/",
        &[("x-purge-token", TOKEN), ("x-purge-tags", "batched")],
        b"",
    );
    assert_eq!(purge.status, 200, "{purge:?}");
    assert_eq!(purge.body, b"{\"purged\":8}\n");
}

/// Under a steady stream of misses, a finished response's entry waits for the next lookup
/// batch and rides with it (one callout for both); what it carries is written whole, and
/// the lookups in the same callout are answered as usual.
#[test]
fn entries_ride_with_lookups_under_load() {
    let stack = Stack::start(redis_only());
    let s = &stack;
    let mut stored: Vec<(String, Resp)> = Vec::new();
    // Like a load generator: clients that each send their next request as soon as the last
    // is answered, so lookups keep arriving while others are out.
    for round in 0..2 {
        let done: Vec<Vec<(String, Resp)>> = thread::scope(|scope| {
            let handles: Vec<_> = (0..12)
                .map(|client| {
                    scope.spawn(move || {
                        (0..10)
                            .map(|i| {
                                let path = format!(
                                    "/ride{round}-{client}-{i}?size={}&cc=max-age%3D60",
                                    300 + 100 * client + i
                                );
                                let miss = s.get(&path, &[]);
                                (path, miss)
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        stored.extend(done.into_iter().flatten());
    }
    wait_published(s, stored.len() as u64);
    // The filter counts the writes that rode, and says so in its debug log.
    let ridden = s.stat(0, "fleet_cache_published_with_lookups").unwrap_or(0);
    assert!(
        ridden > 0,
        "no entry rode with a lookup in {} misses",
        stored.len()
    );
    assert!(ridden <= s.stat(0, "fleet_cache_published").unwrap_or(0));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !s.envoy_log(0).contains("writes rode with a lookup: landed") {
        assert!(Instant::now() < deadline, "{ridden} rode, none logged");
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(s.stat(0, "fleet_cache_publish_failures").unwrap_or(0), 0);
    assert_eq!(s.stat(0, "fleet_cache_store_errors").unwrap_or(0), 0);
    for (path, miss) in &stored {
        assert_eq!(miss.status, 200, "{path}");
        assert!(
            miss.header("cache-status")
                .is_some_and(|c| c.contains("fwd=uri-miss")),
            "{path}: every lookup answered (a miss), none failed open: {:?}",
            miss.headers
        );
        let hit = s.get(path, &[]);
        assert!(is_hit(&hit), "{path}: {:?}", hit.headers);
        assert_eq!(hit.body, miss.body, "{path}: its own entry, byte for byte");
    }
}

/// A store that refuses writes (Redis out of memory, no eviction) still answers the lookups
/// those writes ride with: hits stay hits, and the refused writes are counted as failures.
#[test]
fn refused_riders_do_not_fail_the_lookups_they_ride_with() {
    let stack = Stack::start(redis_only());
    let s = &stack;
    let stored: Vec<String> = (0..12)
        .map(|i| format!("/kept{i}?size={}&cc=max-age%3D600", 700 + i))
        .collect();
    for p in &stored {
        s.get(p, &[]);
    }
    wait_published(s, stored.len() as u64);
    let ridden_before = s.stat(0, "fleet_cache_published_with_lookups").unwrap_or(0);
    for (name, value) in [("maxmemory-policy", "noeviction"), ("maxmemory", "1")] {
        assert_eq!(s.redis_cli(&["CONFIG", "SET", name, value]), "OK");
    }
    // Each client alternates a miss (its write will be refused) and a hit (a lookup a
    // refused write may ride with).
    let hits: Vec<Resp> = thread::scope(|scope| {
        let stored = &stored;
        let handles: Vec<_> = (0..12)
            .map(|client| {
                scope.spawn(move || {
                    let mut hits = Vec::new();
                    for i in 0..16 {
                        s.get(
                            &format!("/refused{client}-{i}?size=900&cc=max-age%3D60"),
                            &[],
                        );
                        hits.push(s.get(&stored[(client + i) % stored.len()], &[]));
                    }
                    hits
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while !s
        .envoy_log(0)
        .contains("writes rode with a lookup: store-refused")
    {
        assert!(
            Instant::now() < deadline,
            "no refused write rode with a lookup"
        );
        thread::sleep(Duration::from_millis(200));
    }
    for hit in &hits {
        assert!(is_hit(hit), "{:?}", hit.headers);
    }
    assert_eq!(s.stat(0, "fleet_cache_store_errors").unwrap_or(0), 0);
    wait_stat(s, "fleet_cache_publish_failures", 1);
    assert_eq!(
        s.stat(0, "fleet_cache_published_with_lookups").unwrap_or(0),
        ridden_before,
        "a refused write counted as ridden"
    );
}

/// Where shared queues are a restricted capability (Envoy's `capability_restriction_config`),
/// streams can't wake the root through one: the root's tick does it, and lookups and writes
/// still go out.
#[test]
fn without_shared_queues_the_tick_wakes_the_root() {
    // Everything the module imports or exports, except the shared queue calls.
    const ALLOWED: &[&str] = &[
        "proxy_abi_version_0_2_1",
        "proxy_add_header_map_value",
        "proxy_call_foreign_function",
        "proxy_close_stream",
        "proxy_continue_stream",
        "proxy_define_metric",
        "proxy_done",
        "proxy_get_buffer_bytes",
        "proxy_get_current_time_nanoseconds",
        "proxy_get_header_map_pairs",
        "proxy_get_header_map_value",
        "proxy_get_log_level",
        "proxy_get_property",
        "proxy_get_shared_data",
        "proxy_get_status",
        "proxy_http_call",
        "proxy_increment_metric",
        "proxy_log",
        "proxy_on_configure",
        "proxy_on_context_create",
        "proxy_on_delete",
        "proxy_on_done",
        "proxy_on_http_call_response",
        "proxy_on_log",
        "proxy_on_memory_allocate",
        "proxy_on_request_body",
        "proxy_on_request_headers",
        "proxy_on_request_trailers",
        "proxy_on_response_body",
        "proxy_on_response_headers",
        "proxy_on_response_trailers",
        "proxy_on_tick",
        "proxy_on_vm_start",
        "proxy_remove_header_map_value",
        "proxy_replace_header_map_value",
        "proxy_send_local_response",
        "proxy_set_buffer_bytes",
        "proxy_set_effective_context",
        "proxy_set_header_map_pairs",
        "proxy_set_property",
        "proxy_set_shared_data",
        "proxy_set_tick_period_milliseconds",
        "fd_write",
        "environ_get",
        "environ_sizes_get",
        "random_get",
        "clock_time_get",
        "proc_exit",
        "args_get",
        "args_sizes_get",
    ];
    let mut allowed = String::from(
        "\n                capability_restriction_config:\n                  allowed_capabilities:",
    );
    for name in ALLOWED {
        allowed.push_str(&format!("\n                    {name}: {{}}"));
    }
    let template =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/envoy/envoy.yaml"))
            .unwrap()
            .replacen(
                "root_id: fleet_cache",
                &format!("root_id: fleet_cache{allowed}"),
                1,
            );
    let mut opts = redis_only();
    opts.envoy_template = Some(template);
    let s = Stack::start(opts);
    assert!(
        s.wait_envoy_log(0, "no shared queue"),
        "the restriction did not apply: {}",
        s.envoy_log(0)
    );

    let path = "/restricted?size=2000&cc=max-age%3D60";
    let miss = s.get(path, &[]);
    assert_eq!(miss.status, 200);
    wait_published(&s, 1);
    let hit = s.get(path, &[]);
    assert!(is_hit(&hit), "{:?}", hit.headers);
    assert_eq!(hit.body, miss.body);
}
