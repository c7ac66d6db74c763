//! Collapsed misses and hit-for-miss in the flow: what a leader, a follower and a request for
//! a resource known not to be storable do, and what each ending of a fetch others wait for
//! does to its lock. (The lock itself, polls and handoffs are the outbox's: outbox tests.)

use super::tests::{T0, worker};
use super::*;

fn flow_with(cfg: Config) -> Flow {
    Flow::new(Rc::new(cfg), worker(usize::MAX, 0))
}

fn get(path: &str) -> RequestHead {
    RequestHead::for_test("GET", path, &[])
}

fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHead {
    ResponseHead::for_test(status, headers)
}

/// A flow that looked `path` up and was told to fetch it (lock owner 7).
fn leader(path: &str) -> Flow {
    let mut f = flow_with(Config::default());
    let RequestStep::Lookup(_) = f.handle_request_headers(T0, get(path)) else {
        panic!("no lookup")
    };
    assert_eq!(
        f.handle_store_reply(T0, Ok(Looked::Lead(7))),
        LookupStep::Continue
    );
    f
}

fn key_of(path: &str) -> String {
    CacheKey::primary(&Config::default(), &get(path)).redis_key
}

#[test]
fn a_get_may_wait_for_another_fetch_a_head_or_only_if_cached_may_not() {
    let mut f = flow_with(Config::default());
    f.handle_request_headers(T0, get("/a"));
    assert_eq!(f.wait_until(), Some(T0 + 10_000));
    let mut f = flow_with(Config::default());
    f.handle_request_headers(T0, RequestHead::for_test("HEAD", "/a", &[]));
    assert_eq!(f.wait_until(), None);
    let mut f = flow_with(Config::default());
    f.handle_request_headers(
        T0,
        RequestHead::for_test("GET", "/a", &[("cache-control", "only-if-cached")]),
    );
    assert_eq!(f.wait_until(), None);
    let mut cfg = Config::default();
    cfg.collapse.max_wait_ms = 0;
    let mut f = flow_with(cfg);
    f.handle_request_headers(T0, get("/a"));
    assert_eq!(f.wait_until(), None, "collapsing off");
}

#[test]
fn a_leaders_stored_response_leaves_the_lock_to_its_write() {
    let mut f = leader("/a");
    let s = f.handle_response_headers(
        T0,
        &resp(200, &[("cache-control", "max-age=60")]),
        false,
        Source::Origin,
    );
    assert!(s.cache_status.unwrap().contains("stored"));
    assert!(f.handle_response_body(b"x", true).is_some());
    f.handle_stream_end();
    assert_eq!(f.take_unlock(), None);
}

#[test]
fn a_leaders_failed_fetch_frees_the_lock() {
    // The origin's error (not stored, may be next time).
    let mut f = leader("/a");
    f.handle_response_headers(T0, &resp(503, &[]), false, Source::Origin);
    assert_eq!(f.take_unlock(), Some((key_of("/a"), 7, Unlock::Release)));
    // Envoy's own answer (the origin unreachable).
    let mut f = leader("/a");
    f.handle_response_headers(T0, &resp(503, &[]), false, Source::Envoy);
    assert_eq!(f.take_unlock(), Some((key_of("/a"), 7, Unlock::Release)));
    // Reset mid-body.
    let mut f = leader("/a");
    f.handle_response_headers(
        T0,
        &resp(200, &[("cache-control", "max-age=60")]),
        false,
        Source::Origin,
    );
    f.handle_response_body(b"part", false);
    assert_eq!(f.take_unlock(), None);
    f.handle_stream_end();
    assert_eq!(f.take_unlock(), Some((key_of("/a"), 7, Unlock::Release)));
    // Gone before any response.
    let mut f = leader("/a");
    f.handle_stream_end();
    assert_eq!(f.take_unlock(), Some((key_of("/a"), 7, Unlock::Release)));
    // Shorter than its Content-Length.
    let mut f = leader("/a");
    let h = [("cache-control", "max-age=60"), ("content-length", "10")];
    f.handle_response_headers(T0, &resp(200, &h), false, Source::Origin);
    assert!(f.handle_response_body(b"short", true).is_none());
    assert_eq!(f.take_unlock(), Some((key_of("/a"), 7, Unlock::Release)));
}

#[test]
fn a_leaders_response_that_is_never_storable_marks_the_resource() {
    for headers in [
        vec![("cache-control", "private")],
        vec![("cache-control", "no-store")],
        vec![("cache-control", "max-age=60"), ("set-cookie", "a=b")],
        vec![("cache-control", "max-age=60"), ("vary", "*")],
    ] {
        let mut f = leader("/a");
        f.handle_response_headers(T0, &resp(200, &headers), false, Source::Origin);
        assert_eq!(
            f.take_unlock(),
            Some((key_of("/a"), 7, Unlock::Uncacheable { ttl_ms: 60_000 })),
            "{headers:?}"
        );
    }
    // Too large, found out while recording.
    let mut f = flow_with(Config {
        max_body_bytes: 4,
        ..Config::default()
    });
    f.handle_request_headers(T0, get("/big"));
    f.handle_store_reply(T0, Ok(Looked::Lead(9)));
    f.handle_response_headers(
        T0,
        &resp(200, &[("cache-control", "max-age=60")]),
        false,
        Source::Origin,
    );
    f.handle_response_body(b"12345", false);
    assert_eq!(
        f.take_unlock(),
        Some((key_of("/big"), 9, Unlock::Uncacheable { ttl_ms: 60_000 }))
    );
}

#[test]
fn hit_for_miss_skips_the_lookup_until_a_response_is_stored_again() {
    let w = worker(usize::MAX, 0);
    let cfg = Rc::new(Config::default());
    let mut f = Flow::new(cfg.clone(), w.clone());
    f.handle_request_headers(T0, get("/u"));
    f.handle_store_reply(T0, Ok(Looked::Missing));
    f.handle_response_headers(
        T0,
        &resp(200, &[("cache-control", "private")]),
        true,
        Source::Origin,
    );
    // Not a leader: it tells the fleet, with no owner.
    assert_eq!(
        f.take_unlock(),
        Some((key_of("/u"), 0, Unlock::Uncacheable { ttl_ms: 60_000 }))
    );
    // The next request on this worker skips the lookup, and does not tell the fleet again.
    let mut f = Flow::new(cfg.clone(), w.clone());
    assert_eq!(
        f.handle_request_headers(T0 + 1_000, get("/u")),
        RequestStep::Continue
    );
    assert!(f.take_events().contains(&Event::HitForMiss));
    let s = f.handle_response_headers(
        T0 + 1_000,
        &resp(200, &[("cache-control", "private")]),
        true,
        Source::Origin,
    );
    assert!(s.cache_status.unwrap().contains("detail=hit-for-miss"));
    assert_eq!(f.take_unlock(), None);
    // A storable answer is recorded anyway, and ends the skipping.
    let mut f = Flow::new(cfg.clone(), w.clone());
    assert_eq!(
        f.handle_request_headers(T0 + 2_000, get("/u")),
        RequestStep::Continue
    );
    let s = f.handle_response_headers(
        T0 + 2_000,
        &resp(200, &[("cache-control", "max-age=60")]),
        true,
        Source::Origin,
    );
    assert!(s.publish.is_some());
    let mut f = Flow::new(cfg.clone(), w.clone());
    assert!(matches!(
        f.handle_request_headers(T0 + 3_000, get("/u")),
        RequestStep::Lookup(_)
    ));
    // Marks expire.
    w.uncacheable
        .borrow_mut()
        .insert(&key_of("/v"), T0 + 60_000);
    let mut f = Flow::new(cfg.clone(), w.clone());
    assert_eq!(
        f.handle_request_headers(T0 + 59_999, get("/v")),
        RequestStep::Continue
    );
    let mut f = Flow::new(cfg, w);
    assert!(matches!(
        f.handle_request_headers(T0 + 60_000, get("/v")),
        RequestStep::Lookup(_)
    ));
}

#[test]
fn the_fleets_hit_for_miss_mark_is_learned_from_the_store() {
    let w = worker(usize::MAX, 0);
    let cfg = Rc::new(Config::default());
    let mut f = Flow::new(cfg.clone(), w.clone());
    f.handle_request_headers(T0, get("/u"));
    assert_eq!(
        f.handle_store_reply(T0, Ok(Looked::NoWait(Marker::Uncacheable))),
        LookupStep::Continue
    );
    let s = f.handle_response_headers(
        T0,
        &resp(200, &[("cache-control", "no-store")]),
        true,
        Source::Origin,
    );
    assert!(s.cache_status.unwrap().contains("detail=hit-for-miss"));
    assert_eq!(f.take_unlock(), None, "the fleet knows");
    let mut f = Flow::new(cfg, w);
    assert_eq!(
        f.handle_request_headers(T0 + 10, get("/u")),
        RequestStep::Continue
    );
}

#[test]
fn hit_for_miss_off_marks_nothing() {
    let w = worker(usize::MAX, 0);
    let cfg = Rc::new(Config {
        hit_for_miss_s: 0,
        ..Config::default()
    });
    let mut f = Flow::new(cfg.clone(), w.clone());
    f.handle_request_headers(T0, get("/u"));
    f.handle_store_reply(T0, Ok(Looked::Lead(3)));
    f.handle_response_headers(
        T0,
        &resp(200, &[("cache-control", "private")]),
        true,
        Source::Origin,
    );
    assert_eq!(f.take_unlock(), Some((key_of("/u"), 3, Unlock::Release)));
    let mut f = Flow::new(cfg, w);
    assert!(matches!(
        f.handle_request_headers(T0, get("/u")),
        RequestStep::Lookup(_)
    ));
}

#[test]
fn an_exempt_content_type_lets_followers_go_at_once_and_is_still_recorded() {
    let mut cfg = Config::default();
    cfg.collapse.exempt_content_types = vec!["text/event-stream".into()];
    let mut f = flow_with(cfg);
    f.handle_request_headers(T0, get("/sse"));
    f.handle_store_reply(T0, Ok(Looked::Lead(5)));
    let h = [
        ("cache-control", "max-age=60"),
        ("content-type", "text/event-stream"),
    ];
    let s = f.handle_response_headers(T0, &resp(200, &h), false, Source::Origin);
    assert!(s.cache_status.unwrap().contains("stored"));
    assert_eq!(
        f.take_unlock(),
        Some((key_of("/sse"), 5, Unlock::Exempt { ttl_ms: 10_000 }))
    );
    assert!(f.handle_response_body(b"data: x\n\n", true).is_some());
    f.handle_stream_end();
    assert_eq!(f.take_unlock(), None);
}

#[test]
fn a_follower_is_answered_from_the_entry_and_says_it_collapsed() {
    let mut h = super::tests::Harness::new(Config::default());
    h.run(
        get("/a"),
        &super::tests::ok(super::tests::CACHEABLE, &[b"v"]),
    );
    let value = h.store.get(&key_of("/a"), T0).unwrap().to_vec();
    let mut f = flow_with(Config::default());
    f.handle_request_headers(T0, get("/a"));
    f.following(T0 + 5);
    f.following(T0 + 6);
    let LookupStep::Respond(reply) = f.handle_store_reply(T0 + 250, Ok(Looked::Value(&value)))
    else {
        panic!("not served")
    };
    let cs = reply
        .headers
        .iter()
        .find(|(n, _)| *n == "cache-status")
        .unwrap()
        .1
        .to_string();
    assert_eq!(cs, "fleet-cache; hit; ttl=60; collapsed");
    let events = f.take_events();
    assert_eq!(
        events.iter().filter(|e| **e == Event::CollapseWait).count(),
        1
    );
    assert!(events.contains(&Event::Collapsed));
    assert!(events.contains(&Event::CollapseWaitMs(245)));
}

#[test]
fn a_follower_whose_wait_ends_goes_to_the_origin_and_may_store() {
    let mut f = flow_with(Config::default());
    f.handle_request_headers(T0, get("/a"));
    f.following(T0);
    assert_eq!(
        f.handle_store_reply(T0 + 10_000, Ok(Looked::WaitOver)),
        LookupStep::Continue
    );
    let events = f.take_events();
    assert!(events.contains(&Event::CollapseTimeout));
    assert!(events.contains(&Event::CollapseWaitMs(10_000)));
    let s = f.handle_response_headers(
        T0 + 10_000,
        &resp(200, &[("cache-control", "max-age=60")]),
        true,
        Source::Origin,
    );
    let cs = s.cache_status.unwrap();
    assert!(
        cs.contains("stored") && cs.contains("detail=collapse-timeout"),
        "{cs}"
    );
    assert!(s.publish.is_some());
    assert_eq!(f.take_unlock(), None, "not a leader");
}

#[test]
fn a_lock_taken_for_an_only_if_cached_request_is_freed() {
    // Not asked for such requests, but a batch may hand one out: it is given back.
    let mut f = flow_with(Config::default());
    f.handle_request_headers(
        T0,
        RequestHead::for_test("GET", "/a", &[("cache-control", "only-if-cached")]),
    );
    let LookupStep::Respond(r) = f.handle_store_reply(T0, Ok(Looked::Lead(4))) else {
        panic!()
    };
    assert_eq!(r.status, 504);
    assert_eq!(f.take_unlock(), Some((key_of("/a"), 4, Unlock::Release)));
}

#[test]
fn while_the_store_fails_the_in_proxy_tier_serves_past_its_max_age_within_the_response() {
    let w = worker(usize::MAX, 1 << 20);
    let cfg = Rc::new(Config::default());
    let run = |now: u64, failing: bool| {
        w.store_failing.set(failing);
        let mut f = Flow::new(cfg.clone(), w.clone());
        match f.handle_request_headers(now, get("/g")) {
            RequestStep::Decided(LookupStep::Respond(r)) => {
                let cs = r.headers.iter().find(|(n, _)| *n == "cache-status");
                Some(cs.unwrap().1.to_string())
            }
            RequestStep::Decided(LookupStep::Revalidate(_) | LookupStep::Continue) => {
                Some("forwarded".into())
            }
            _ => None,
        }
    };
    // Stored fresh for 60 s, stale-if-error for 60 s more; read from the store at T0.
    let mut h = super::tests::Harness::new(Config::default());
    let sie = [("cache-control", "max-age=60, stale-if-error=60")];
    h.run(get("/g"), &super::tests::ok(&sie, &[b"v"]));
    let value = h.store.get(&key_of("/g"), T0).unwrap().to_vec();
    let mut f = Flow::new(cfg.clone(), w.clone());
    f.handle_request_headers(T0, get("/g"));
    assert!(matches!(
        f.handle_store_reply(T0, Ok(Looked::Value(&value))),
        LookupStep::Respond(_)
    ));
    assert_eq!(
        run(T0 + 500, false).as_deref(),
        Some("fleet-cache; hit; ttl=60; detail=memory")
    );
    assert_eq!(
        run(T0 + 2_000, false),
        None,
        "past the tier's max age: the store is asked"
    );
    assert_eq!(
        run(T0 + 30_000, true).as_deref(),
        Some("fleet-cache; hit; ttl=30; detail=memory-grace")
    );
    // Stale: a stale entry goes to the origin as always (and its stale-if-error copy with it).
    assert_eq!(run(T0 + 90_000, true).as_deref(), Some("forwarded"));
    // Past every window: gone.
    assert_eq!(run(T0 + 121_000, true), None);
}

#[test]
fn only_a_miss_marks_a_resource_and_never_for_a_304_or_a_206() {
    let w = worker(usize::MAX, 0);
    let cfg = Rc::new(Config::default());
    let looks_up = |now: u64| {
        let mut f = Flow::new(cfg.clone(), w.clone());
        matches!(
            f.handle_request_headers(now, get("/m")),
            RequestStep::Lookup(_)
        )
    };
    // A client's refresh (no-cache) answered no-store: something may well be stored, which a
    // mark would hide.
    let mut f = Flow::new(cfg.clone(), w.clone());
    let refresh = RequestHead::for_test("GET", "/m", &[("cache-control", "no-cache")]);
    assert_eq!(f.handle_request_headers(T0, refresh), RequestStep::Continue);
    f.handle_response_headers(
        T0,
        &resp(200, &[("cache-control", "no-store")]),
        true,
        Source::Origin,
    );
    assert_eq!(f.take_unlock(), None);
    assert!(looks_up(T0 + 1));
    // The client's own conditional request answered 304, or its range 206.
    for (status, header) in [
        (304, ("if-none-match", "\"x\"")),
        (206, ("range", "bytes=0-1")),
    ] {
        let mut f = Flow::new(cfg.clone(), w.clone());
        f.handle_request_headers(T0, RequestHead::for_test("GET", "/m", &[header]));
        f.handle_store_reply(T0, Ok(Looked::Missing));
        f.handle_response_headers(T0, &resp(status, &[]), true, Source::Origin);
        assert_eq!(f.take_unlock(), None, "{status}");
        assert!(looks_up(T0 + 1), "{status}");
    }
    // A store error: whether something is stored is unknown.
    let mut f = Flow::new(cfg.clone(), w.clone());
    f.handle_request_headers(T0, get("/m"));
    f.handle_store_reply(T0, Err(StoreError::Timeout));
    f.handle_response_headers(
        T0,
        &resp(200, &[("cache-control", "private")]),
        true,
        Source::Origin,
    );
    assert_eq!(f.take_unlock(), None);
    assert!(looks_up(T0 + 1));
}

/// A stored entry of `/s`: fresh for 10 s, then 60 s of stale-while-revalidate, with an ETag.
fn swr_entry() -> Vec<u8> {
    let mut h = super::tests::Harness::new(Config::default());
    let cc = [
        ("cache-control", "max-age=10, stale-while-revalidate=60"),
        ("etag", "\"v1\""),
    ];
    h.run(get("/s"), &super::tests::ok(&cc, &[b"old"]));
    h.store.get(&key_of("/s"), T0).unwrap().to_vec()
}

#[test]
fn rfc5861_3_a_stale_entry_in_its_window_is_served_at_once_and_revalidated_in_the_background() {
    let value = swr_entry();
    let w = worker(usize::MAX, 0);
    let cfg = Rc::new(Config::default());
    let stale_hit = |now: u64| {
        let mut f = Flow::new(cfg.clone(), w.clone());
        f.handle_request_headers(now, get("/s"));
        let LookupStep::Respond(r) = f.handle_store_reply(now, Ok(Looked::Value(&value))) else {
            panic!("not served")
        };
        let cs = r
            .headers
            .iter()
            .find(|(n, _)| *n == "cache-status")
            .unwrap()
            .1
            .to_string();
        assert_eq!(r.body.bytes(), b"old");
        (cs, f.take_background(), f.take_events())
    };
    let (cs, bg, events) = stale_hit(T0 + 20_000);
    assert_eq!(
        cs,
        "fleet-cache; hit; ttl=-10; detail=stale-while-revalidate"
    );
    assert!(events.contains(&Event::StaleWhileRevalidate) && events.contains(&Event::Hit));
    let bg = bg.expect("a background revalidation");
    assert_eq!(bg.key, key_of("/s"));
    let h = |n: &str| {
        bg.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(h(":method"), Some("GET"));
    assert_eq!(h(":path"), Some("/s"));
    assert_eq!(h("if-none-match"), Some("\"v1\""));
    // The worker revalidates it already: the next stale hit starts nothing.
    let (_, again, _) = stale_hit(T0 + 21_000);
    assert!(again.is_none());
    // Its 304 refreshes the entry's metadata (the body stays in the store).
    let mut flow = bg.flow;
    let s = flow.handle_response_headers(
        T0 + 22_000,
        &resp(304, &[("etag", "\"v1\""), ("cache-control", "max-age=30")]),
        true,
        Source::Origin,
    );
    let w304 = s.publish.expect("a refresh");
    assert!(w304.refresh.is_some());
    assert!(flow.take_events().contains(&Event::Revalidated));
    flow.revalidation_over(&key_of("/s"));
    // Past the window, a stale entry is revalidated while the client waits, as without it.
    let mut f = Flow::new(cfg.clone(), w.clone());
    f.handle_request_headers(T0 + 71_000, get("/s"));
    assert!(matches!(
        f.handle_store_reply(T0 + 71_000, Ok(Looked::Value(&value))),
        LookupStep::Revalidate(_)
    ));
}

#[test]
fn a_background_revalidations_new_response_replaces_the_entry_and_an_error_keeps_it() {
    let value = swr_entry();
    let w = worker(usize::MAX, 0);
    let cfg = Rc::new(Config::default());
    let background = || {
        let mut f = Flow::new(cfg.clone(), w.clone());
        f.handle_request_headers(T0 + 20_000, get("/s"));
        f.handle_store_reply(T0 + 20_000, Ok(Looked::Value(&value)));
        let bg = f.take_background().expect("background");
        bg.flow.revalidation_over(&bg.key);
        bg.flow
    };
    let mut flow = background();
    let h = [("etag", "\"v2\""), ("cache-control", "max-age=60")];
    flow.handle_response_headers(T0 + 21_000, &resp(200, &h), false, Source::Origin);
    let write = flow
        .handle_response_body(b"new", true)
        .expect("the new entry");
    assert!(write.refresh.is_none());
    let mut flow = background();
    let s = flow.handle_response_headers(T0 + 21_000, &resp(503, &[]), false, Source::Origin);
    assert!(s.publish.is_none());
    assert!(flow.handle_response_body(b"down", true).is_none());
    flow.handle_stream_end();
    assert_eq!(flow.take_unlock(), None, "an error marks nothing");
}
