//! The store as a real Redis Cluster: six nodes (three masters with a replica each), Envoy's
//! `redis_proxy` in front (envoy/redis-proxy-cluster.yaml), Webdis with credentials, and two
//! Envoys with the filter (`store.redis_cluster`). Entries land on several masters; every
//! command the filter sends stays within one slot, so none is refused.

mod support;

use serde_json::json;
use std::time::Duration;
use support::secured::{credentials, options};
use support::{Resp, Stack, StackOptions, poll};

const PURGE_TOKEN: &str = "purge-token-0123456789";

fn cluster_stack() -> Stack {
    let base = options(
        json!({"credentials": credentials(), "redis_cluster": true}),
        "envoy/redis-proxy-cluster.yaml",
        // What the proxy's topology discovery needs on top of the scripts' commands.
        "+cluster|slots +cluster|info +readonly",
    );
    let mut plugin = base.plugin_config.clone();
    support::stack::merge_patch(
        &mut plugin,
        &json!({
            // Every request asks the store: the in-proxy tier would hide it.
            "memory": {"max_bytes": 0},
            "purge": {"token": PURGE_TOKEN}
        }),
    );
    Stack::start(StackOptions {
        envoys: 2,
        plugin_config: plugin,
        redis_cluster: true,
        ..base
    })
}

/// No store command failed, on either proxy: none crossed slots, none was refused.
fn assert_no_store_errors(st: &Stack) {
    for i in 0..2 {
        assert_eq!(
            st.stat(i, "fleet_cache_store_errors").unwrap_or(0),
            0,
            "envoy {i}"
        );
        assert_eq!(
            st.stat(i, "fleet_cache_publish_failures").unwrap_or(0),
            0,
            "envoy {i}"
        );
    }
}

fn cache_status(r: &Resp) -> String {
    r.header("cache-status").unwrap_or_default().to_string()
}

fn is_hit(r: &Resp) -> bool {
    cache_status(r).starts_with("fleet-cache; hit")
}

/// Waits until a GET of `path` through envoy `i` is a hit; returns it.
fn hit_via(st: &Stack, i: usize, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut last = None;
    let ok = poll(Duration::from_secs(5), || {
        let r = st.get_via(i, path, headers);
        let hit = is_hit(&r);
        last = Some(r);
        hit
    });
    let r = last.expect("one request");
    assert!(
        ok,
        "{path} never a hit through envoy {i}: {}",
        cache_status(&r)
    );
    r
}

#[test]
fn entries_spread_over_the_masters_and_hit_through_the_other_proxy() {
    let st = cluster_stack();
    let paths: Vec<String> = (0..24)
        .map(|i| format!("/c/{i}?size={}&cc=max-age%3D60", 500 + i))
        .collect();
    let mut bodies = Vec::new();
    for p in &paths {
        let miss = st.get_via(0, p, &[]);
        assert_eq!(miss.status, 200);
        assert!(!is_hit(&miss), "{p}: {}", cache_status(&miss));
        bodies.push(miss.body);
    }
    for (p, body) in paths.iter().zip(&bodies) {
        let hit = hit_via(&st, 1, p, &[]);
        assert_eq!(&hit.body, body, "{p}: its own entry, byte for byte");
    }
    // The entries live on more than one master: the Cluster shares the working set.
    let masters_with_keys = st
        .cluster()
        .master_ports()
        .into_iter()
        .filter(|&port| {
            let n: u64 = support::cluster::node_cli(port, &["DBSIZE"])
                .parse()
                .unwrap_or(0);
            n > 0
        })
        .count();
    assert!(
        masters_with_keys >= 2,
        "{masters_with_keys} master(s) hold entries"
    );
    // An entry over the lookup's inline bound is read by a plain GETRANGE, which the proxy
    // routes to the key's slot as it does the scripts.
    let big = "/c/big?noise=300000&cc=max-age%3D60";
    let miss = st.get_via(0, big, &[]);
    assert_eq!(miss.body.len(), 300_000);
    let hit = hit_via(&st, 1, big, &[]);
    assert_eq!(hit.body, miss.body, "the large entry, byte for byte");
    assert!(st.stat(1, "fleet_cache_large_entry_reads").unwrap_or(0) >= 1);
    assert_no_store_errors(&st);
}

#[test]
fn variants_live_in_their_resources_slot_and_hit_across_proxies() {
    let st = cluster_stack();
    let path = "/v?cc=max-age%3D60&vary=Accept&echo=accept";
    for accept in ["text/html", "application/json"] {
        let miss = st.get_via(0, path, &[("accept", accept)]);
        assert_eq!(miss.body, accept.as_bytes());
    }
    for accept in ["text/html", "application/json"] {
        let hit = hit_via(&st, 1, path, &[("accept", accept)]);
        assert_eq!(hit.body, accept.as_bytes(), "the variant of {accept}");
    }
    assert_eq!(st.stat(0, "fleet_cache_store_errors").unwrap_or(0), 0);
}

#[test]
fn invalidation_reaches_resources_in_other_slots() {
    let st = cluster_stack();
    let doc = "/doc?cc=max-age%3D60";
    let item = "/items/7?cc=max-age%3D60";
    for p in [doc, item] {
        st.get_via(0, p, &[]);
        hit_via(&st, 1, p, &[]);
    }
    // A POST to the document: gone before its response arrives.
    let r = st.request("POST", doc, &[], b"change");
    assert_eq!(r.status, 200);
    let doc_after = st.get_via(1, doc, &[]);
    assert!(
        !is_hit(&doc_after),
        "the target: {}",
        cache_status(&doc_after)
    );
    // A POST whose answer's Location names the item, another slot than the POST's own target:
    // the item goes right after the response.
    let created = st.request(
        "POST",
        "/items?status=201&header=location:/items/7%3Fcc%3Dmax-age%253D60",
        &[],
        b"new",
    );
    assert_eq!(created.status, 201);
    assert!(
        poll(Duration::from_secs(3), || !is_hit(&st.get_via(
            1,
            item,
            &[]
        ))),
        "the Location target was invalidated too"
    );
    assert_eq!(st.stat(0, "fleet_cache_store_errors").unwrap_or(0), 0);
}

#[test]
fn a_stale_entry_is_revalidated_and_refreshed_on_the_cluster() {
    let st = cluster_stack();
    let path = "/reval?size=2000&cc=max-age%3D1&etag=%22v1%22";
    let first = st.get_via(0, path, &[]);
    hit_via(&st, 1, path, &[]);
    std::thread::sleep(Duration::from_millis(2100));
    let second = st.get_via(1, path, &[]);
    assert_eq!(
        cache_status(&second),
        "fleet-cache; fwd=stale; fwd-status=304; stored",
        "revalidated with a 304, its metadata refreshed in the store"
    );
    assert_eq!(second.body, first.body);
    let third = hit_via(&st, 0, path, &[]);
    assert_eq!(third.body, first.body);
}

/// Under concurrent load a worker's lookups and writes pile up: on a Cluster they still go one
/// slot per callout. Without `store.redis_cluster` they would be batched across slots and the
/// Cluster would refuse them (CROSSSLOT: store errors, nothing stored).
#[test]
fn concurrent_misses_and_hits_never_cross_slots() {
    let st = cluster_stack();
    let st = &st;
    let run = |round: usize| {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..16)
                .map(|client| {
                    scope.spawn(move || {
                        (0..6)
                            .map(|i| {
                                let p =
                                    format!("/load/{client}-{i}?size={}&cc=max-age%3D60", 300 + i);
                                let r = st.get_via(client % 2, &p, &[]);
                                assert_eq!(r.status, 200, "{p}");
                                (p, r, round)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        })
    };
    let first = run(0);
    let second = run(1);
    let hits = second.iter().filter(|(_, r, _)| is_hit(r)).count();
    for ((p, a, _), (_, b, _)) in first.iter().zip(&second) {
        assert_eq!(a.body, b.body, "{p}");
    }
    assert_no_store_errors(st);
    assert!(
        hits >= second.len() * 9 / 10,
        "{hits} of {} hits",
        second.len()
    );
}

/// A master killed under load: requests keep being answered (the store fails open), no body
/// is ever wrong, mixed or cut, and once its replica is promoted (nothing restarted by hand)
/// the keys of its slots are stored and hit again. The load is bounded and stops itself.
#[test]
fn a_master_killed_under_load_costs_no_wrong_answer_and_caching_resumes() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Instant;
    let st = cluster_stack();
    let keys: Vec<(String, usize)> = (0..40)
        .map(|i| (format!("/fo/{i}"), 200 + 37 * i))
        .collect();
    let path = |(p, n): &(String, usize)| format!("{p}?size={n}&cc=max-age%3D60");
    for k in &keys {
        st.get_via(0, &path(k), &[]);
    }
    for k in &keys {
        hit_via(&st, 1, &path(k), &[]);
    }
    let stop = AtomicBool::new(false);
    let (ok, wrong, failed, hits, failed_open) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let victim = st.cluster().master_ports()[0];
    let started = Instant::now();
    let mut killed_at = None;
    std::thread::scope(|scope| {
        for client in 0..8 {
            let (st, keys, stop) = (&st, &keys, &stop);
            let (ok, wrong, failed, hits, failed_open) =
                (&ok, &wrong, &failed, &hits, &failed_open);
            scope.spawn(move || {
                let mut i = client;
                // Bounded: stops when told, or after 30 s whatever happens.
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
                    let k = &keys[i % keys.len()];
                    i += 7;
                    let r = st.get_via(client % 2, &path(k), &[]);
                    if r.status != 200 {
                        failed.fetch_add(1, Ordering::Relaxed);
                    } else if r.body != support::binary_body(&k.0, k.1) {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    } else {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if is_hit(&r) {
                            hits.fetch_add(1, Ordering::Relaxed);
                        } else if cache_status(&r).contains("detail=store-") {
                            failed_open.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(1000));
        st.cluster().kill(victim);
        killed_at = Some(Instant::now());
        // The replica takes over (cluster-node-timeout 1 s): the Cluster is whole again.
        assert!(
            st.cluster().wait_healthy(Duration::from_secs(20)),
            "no replica was promoted"
        );
        eprintln!(
            "failover: the cluster whole again (replica promoted) {:?} after the kill",
            killed_at.unwrap().elapsed()
        );
        std::thread::sleep(Duration::from_millis(3000));
        stop.store(true, Ordering::Relaxed);
    });
    let (ok, wrong, failed) = (ok.into_inner(), wrong.into_inner(), failed.into_inner());
    eprintln!(
        "failover: {ok} answered right ({} hits, {} from the origin because the store failed), \
         {wrong} wrong, {failed} failed",
        hits.into_inner(),
        failed_open.into_inner()
    );
    assert_eq!(wrong, 0, "a wrong, mixed or cut body");
    assert_eq!(failed, 0, "a request failed: the cache must fail open");
    assert!(ok > 100, "the load ran ({ok} requests)");
    // Caching resumes on every slot: each key is a hit again (stored anew where it was lost).
    for k in &keys {
        let p = path(k);
        let mut last = String::new();
        let again = poll(Duration::from_secs(10), || {
            let r = st.get_via(0, &p, &[]);
            assert_eq!(r.body, support::binary_body(&k.0, k.1), "{p}");
            last = cache_status(&r);
            is_hit(&r)
        });
        assert!(
            again,
            "{p} never a hit again after the failover: {last}; nodes:\n{}",
            st.cluster().cli(&["CLUSTER", "NODES"])
        );
    }
}

#[test]
fn purges_by_url_and_by_tag_reach_every_slot() {
    let st = cluster_stack();
    let tagged: Vec<String> = (0..8)
        .map(|i| {
            let tags = if i % 2 == 0 { "blue%20all" } else { "all" };
            format!("/t/{i}?cc=max-age%3D60&header=surrogate-key:{tags}")
        })
        .collect();
    for p in &tagged {
        st.get_via(0, p, &[]);
        hit_via(&st, 1, p, &[]);
    }
    // The eight resources live in several slots, as do the tag sets.
    let mut slots: Vec<u16> = tagged
        .iter()
        .map(|p| fleet_cache::store::layout::slot(&st.primary_key(p).redis_key))
        .collect();
    slots.sort();
    slots.dedup();
    assert!(slots.len() > 4, "{slots:?}");
    let purge = |target: &str, tags: Option<&str>| {
        let mut h = vec![("x-purge-token", PURGE_TOKEN)];
        if let Some(t) = tags {
            h.push(("x-purge-tags", t));
        }
        st.request_via(1, "PURGE", target, &h, b"")
    };
    let r = purge("/", Some("blue"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b"{\"purged\":4}\n");
    for (i, p) in tagged.iter().enumerate() {
        assert_eq!(
            is_hit(&st.get_via(0, p, &[])),
            i % 2 == 1,
            "{p}: blue ones gone, others kept"
        );
    }
    // By URL: one resource, wherever its slot.
    let r = purge(&tagged[1], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b"{\"purged\":1}\n");
    assert!(!is_hit(&st.get_via(0, &tagged[1], &[])));
    assert_eq!(st.stat(1, "fleet_cache_store_errors").unwrap_or(0), 0);
}
