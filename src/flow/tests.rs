//! The flow driven through whole exchanges against a simulated store (a map that applies
//! writes the way the Webdis scripts do) and a clock that jumps.

use super::*;
use crate::config::SetCookiePolicy;
use crate::store::layout;
use std::collections::HashMap;

pub(super) const T0: u64 = 1_700_000_000_000;

/// The store as the flow sees it: keys -> (value, expiry ms).
#[derive(Default)]
pub(super) struct SimStore {
    values: HashMap<String, (Vec<u8>, u64)>,
    /// Variants sets and tag sets.
    sets: HashMap<String, Vec<String>>,
}

impl SimStore {
    pub(super) fn get(&self, key: &str, now: u64) -> Option<&[u8]> {
        self.values
            .get(key)
            .filter(|(_, exp)| *exp > now)
            .map(|(v, _)| v.as_slice())
    }

    /// Same effect as `SET_ONE` / `SET_VARIANT` / `REFRESH` in store/webdis.rs.
    fn apply(&mut self, w: Write, now: u64) {
        if let Some(r) = w.refresh {
            let key = w.variant.map_or(w.key, |v| v.key);
            if let Some((value, exp)) = self.values.get_mut(&key)
                && value.len() as u64 == r.expected_len
            {
                value.truncate(r.keep as usize);
                value.extend_from_slice(&w.entry);
                *exp = now + w.ttl_ms;
            }
            return;
        }
        for tag in &w.tags {
            self.sadd(tag, &w.key);
        }
        match w.variant {
            None => {
                self.values.insert(w.key, (w.entry, now + w.ttl_ms));
            }
            Some(v) => {
                let old = self.values.get(&w.key).map_or(0, |(_, e)| *e);
                let exp = (now + w.ttl_ms).max(old);
                self.sadd(&layout::variants_set_key(&w.key), &v.key);
                self.values.insert(w.key, (v.record, exp));
                self.values.insert(v.key, (w.entry, now + w.ttl_ms));
            }
        }
    }

    fn sadd(&mut self, set: &str, member: &str) {
        let s = self.sets.entry(set.to_string()).or_default();
        if !s.iter().any(|m| m == member) {
            s.push(member.to_string());
        }
    }

    /// Same effect as `INVALIDATE`: returns how many resource keys existed.
    fn invalidate(&mut self, keys: &[String]) -> u64 {
        let mut n = 0;
        for k in keys {
            for v in self
                .sets
                .remove(&layout::variants_set_key(k))
                .unwrap_or_default()
            {
                self.values.remove(&v);
            }
            n += self.values.remove(k).is_some() as u64;
        }
        n
    }

    /// Same effect as `PURGE_TAGS`.
    fn purge_tags(&mut self, tag_sets: &[String]) -> u64 {
        let mut n = 0;
        for t in tag_sets {
            let members = self.sets.remove(t).unwrap_or_default();
            n += self.invalidate(&members);
        }
        n
    }
}

/// A worker with this recording budget and an in-proxy tier of this many bytes (0: off).
pub(super) fn worker(budget: usize, memory_bytes: usize) -> Rc<Worker> {
    Rc::new(Worker {
        budget: MemoryBudget::new(budget),
        memory: RefCell::new(MemoryTier::new(memory_bytes, 1_000)),
        uncacheable: RefCell::default(),
        revalidating: RefCell::default(),
        store_failing: Default::default(),
        codec: Rc::new(crate::packing::tests::TestZlib),
    })
}

pub(super) struct Harness {
    cfg: Rc<Config>,
    worker: Rc<Worker>,
    pub(super) store: SimStore,
    now: u64,
}

/// A reply served from the cache: status, headers, body.
type Served = (u16, Vec<(String, String)>, Vec<u8>);

/// What a client saw for one request.
#[derive(Debug)]
pub(super) struct Seen {
    /// Store round trips the request waited for.
    lookups: usize,
    /// Served from the cache: the reply.
    hit: Option<Served>,
    /// Forwarded: the Cache-Status set on the origin's response.
    cache_status: Option<String>,
    events: Vec<Event>,
    published: bool,
    /// Validators the flow added to the forwarded request.
    conditions: Vec<(String, String)>,
    /// How many resources the response invalidated.
    invalidated: usize,
    /// The in-proxy tier decided the first step (no store read for the primary key).
    memory_answered: bool,
}

impl Seen {
    /// Carries out one lookup step the way the adapter would; returns the next key to read.
    fn take_step(
        &mut self,
        flow: &mut Flow,
        step: LookupStep<'_>,
        now: u64,
        forwarded: &mut bool,
    ) -> Option<String> {
        match step {
            LookupStep::Lookup(k) => {
                self.lookups += 1;
                return Some(k);
            }
            LookupStep::Respond(reply) => {
                self.hit = Some((
                    reply.status,
                    reply.headers.to_vec(),
                    reply.body.bytes().to_vec(),
                ));
                assert!(flow.is_serving_hit());
                // Our own local reply comes back through the response callbacks.
                let s = flow.handle_response_headers(
                    now,
                    &ResponseHead::default(),
                    false,
                    Source::Envoy,
                );
                assert_eq!(s, ResponseStep::default(), "local reply left alone");
                assert!(!flow.wants_body());
                assert_eq!(flow.handle_response_body(b"x", true), None);
            }
            LookupStep::Continue => *forwarded = true,
            LookupStep::Revalidate(conditions) => {
                self.conditions = conditions;
                *forwarded = true;
            }
        }
        None
    }

    fn hit_header(&self, name: &str) -> Option<&str> {
        self.hit
            .as_ref()?
            .1
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn body(&self) -> &[u8] {
        &self.hit.as_ref().expect("a hit").2
    }
}

/// The origin's answer in a test: status, headers, body chunks, and how it ends.
pub(super) struct Origin<'a> {
    status: u16,
    headers: &'a [(&'a str, &'a str)],
    chunks: &'a [&'a [u8]],
    end: End,
}

#[derive(Clone, Copy, PartialEq)]
enum End {
    Complete,
    Reset,
    Trailers,
}

pub(super) fn ok<'a>(headers: &'a [(&'a str, &'a str)], chunks: &'a [&'a [u8]]) -> Origin<'a> {
    Origin {
        status: 200,
        headers,
        chunks,
        end: End::Complete,
    }
}

/// A 304 with these headers (a revalidation's answer).
fn not_modified<'a>(headers: &'a [(&'a str, &'a str)]) -> Origin<'a> {
    Origin {
        status: 304,
        headers,
        chunks: &[],
        end: End::Complete,
    }
}

fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHead {
    RequestHead::for_test(method, path, headers)
}

impl Harness {
    pub(super) fn new(cfg: Config) -> Harness {
        // The in-proxy tier is off unless a test turns it on: most tests poke the store.
        Harness {
            worker: worker(usize::MAX, 0),
            cfg: Rc::new(cfg),
            store: SimStore::default(),
            now: T0,
        }
    }

    /// One request through the flow; `origin` answers if it is forwarded.
    pub(super) fn run(&mut self, r: RequestHead, origin: &Origin) -> Seen {
        self.run_with(r, origin, Source::Origin, |s, k, now| {
            Ok(s.get(k, now).map(<[u8]>::to_vec))
        })
    }

    fn run_with(
        &mut self,
        r: RequestHead,
        origin: &Origin,
        source: Source,
        store: impl Fn(&SimStore, &str, u64) -> Result<Option<Vec<u8>>, StoreError>,
    ) -> Seen {
        let mut flow = Flow::new(self.cfg.clone(), self.worker.clone());
        let mut seen = Seen {
            lookups: 0,
            hit: None,
            cache_status: None,
            events: vec![],
            published: false,
            conditions: vec![],
            invalidated: 0,
            memory_answered: false,
        };
        let now = self.now;
        let mut write = None;
        let mut answered = false;
        let mut decided = None;
        let mut step = match flow.handle_request_headers(now, r) {
            RequestStep::Decided(d) => {
                seen.memory_answered = true;
                decided = Some(d);
                None
            }
            RequestStep::Lookup(k) => {
                seen.lookups += 1;
                Some(k)
            }
            RequestStep::Continue => None,
            RequestStep::Reply(reply) => {
                answered = true;
                seen.hit = Some((reply.status, reply.headers, reply.body));
                None
            }
            RequestStep::Purge(p) => {
                answered = true;
                let n = match p {
                    PurgeCommand::Resources(keys) => self.store.invalidate(&keys),
                    PurgeCommand::Tags(keys) => self.store.purge_tags(&keys),
                };
                let reply = flow.handle_purge_reply(Ok(n));
                seen.hit = Some((reply.status, reply.headers, reply.body));
                None
            }
        };
        let mut forwarded = step.is_none() && !answered && decided.is_none();
        if let Some(d) = decided {
            step = seen.take_step(&mut flow, d, now, &mut forwarded);
        }
        while let Some(key) = step.take() {
            let answer = store(&self.store, &key, now);
            let reply = match &answer {
                Ok(Some(v)) => Ok(Looked::Value(v.as_slice())),
                Ok(None) => Ok(Looked::Missing),
                Err(e) => Err(*e),
            };
            let next = flow.handle_store_reply(now, reply);
            step = seen.take_step(&mut flow, next, now, &mut forwarded);
        }
        if forwarded {
            let resp = ResponseHead {
                status: origin.status,
                headers: origin
                    .headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
            };
            let no_body = origin.chunks.is_empty() && origin.end == End::Complete;
            let s = flow.handle_response_headers(now, &resp, no_body, source);
            seen.cache_status = s.cache_status;
            write = s.publish;
            seen.invalidated = s.invalidate.len();
            self.store.invalidate(&s.invalidate);
            if let Some(reply) = s.respond {
                seen.hit = Some((reply.status, reply.headers, reply.body));
                assert!(flow.is_serving_hit());
            }
            for (i, c) in origin.chunks.iter().enumerate() {
                let last = i + 1 == origin.chunks.len() && origin.end == End::Complete;
                if let Some(w) = flow.handle_response_body(c, last) {
                    write = Some(w);
                }
            }
            if origin.end == End::Trailers {
                flow.handle_response_trailers();
            }
        }
        flow.handle_stream_end();
        seen.events = flow.take_events();
        if let Some(w) = write {
            seen.published = true;
            self.store.apply(w, now);
        }
        seen
    }
}

pub(super) const CACHEABLE: &[(&str, &str)] = &[
    ("cache-control", "max-age=60"),
    ("content-type", "application/octet-stream"),
];

#[test]
fn miss_records_and_the_next_request_is_a_byte_identical_hit() {
    let mut h = Harness::new(Config::default());
    let body: Vec<u8> = (0..=255u8).chain([0, 0, 0]).collect();
    let chunks = [&body[..100], &body[100..]];
    let o = ok(CACHEABLE, &chunks);
    let miss = h.run(req("GET", "/a", &[]), &o);
    assert!(miss.hit.is_none());
    assert_eq!(miss.lookups, 1);
    assert_eq!(
        miss.cache_status.as_deref(),
        Some("fleet-cache; fwd=uri-miss; fwd-status=200; stored")
    );
    assert!(miss.published);
    assert!(miss.events.contains(&Event::Miss));

    let received = h.now;
    h.now += 5_000;
    let hit = h.run(req("GET", "/a", &[]), &o);
    assert_eq!(hit.lookups, 1, "one round trip for a non-varied resource");
    assert_eq!(hit.body(), &body[..]);
    assert_eq!(hit.hit.as_ref().unwrap().0, 200);
    assert_eq!(hit.hit_header("age"), Some("5"));
    assert_eq!(
        hit.hit_header("cache-status"),
        Some("fleet-cache; hit; ttl=55")
    );
    // The response's own Date (RFC 9111 §4: sent as stored), with Age saying how old it is.
    assert_eq!(
        hit.hit_header("date"),
        Some(policy::format_http_date(received).as_str())
    );
    assert_eq!(
        hit.hit_header("content-type"),
        Some("application/octet-stream")
    );
    assert!(hit.events.contains(&Event::Hit));
}

#[test]
fn hit_drops_per_fetch_and_hop_by_hop_headers() {
    let mut h = Harness::new(Config::default());
    let headers = [
        ("cache-control", "max-age=60"),
        ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
        ("x-envoy-upstream-service-time", "4"),
        ("connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("content-length", "2"),
        ("x-app", "kept"),
    ];
    h.run(req("GET", "/a", &[]), &ok(&headers, &[b"hi"]));
    let hit = h.run(req("GET", "/a", &[]), &ok(&headers, &[b"hi"]));
    let names: Vec<&str> = hit
        .hit
        .as_ref()
        .unwrap()
        .1
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(
        names,
        ["cache-control", "date", "x-app", "cache-status", "age"]
    );
}

#[test]
fn upstream_cache_status_is_kept_and_ours_appended() {
    let mut h = Harness::new(Config::default());
    let headers = [
        ("cache-control", "max-age=60"),
        ("cache-status", "origin-cache; hit"),
    ];
    let miss = h.run(req("GET", "/a", &[]), &ok(&headers, &[b"x"]));
    assert_eq!(
        miss.cache_status.as_deref(),
        Some("origin-cache; hit, fleet-cache; fwd=uri-miss; fwd-status=200; stored")
    );
    let hit = h.run(req("GET", "/a", &[]), &ok(&headers, &[b"x"]));
    assert_eq!(
        hit.hit_header("cache-status"),
        Some("origin-cache; hit, fleet-cache; hit; ttl=60")
    );
}

#[test]
fn head_is_served_from_the_get_entry_and_never_creates_one() {
    let mut h = Harness::new(Config::default());
    let o = ok(CACHEABLE, &[]);
    let head_miss = h.run(req("HEAD", "/a", &[]), &o);
    assert!(!head_miss.published, "a HEAD response is not a GET entry");
    assert_eq!(
        head_miss.cache_status.as_deref(),
        Some("fleet-cache; fwd=uri-miss; fwd-status=200")
    );
    h.run(req("GET", "/a", &[]), &ok(CACHEABLE, &[b"body"]));
    let head_hit = h.run(req("HEAD", "/a", &[]), &o);
    // The adapter hands the body to Envoy, whose local reply omits it for HEAD but keeps its
    // length in content-length.
    assert_eq!(head_hit.body(), b"body");
}

#[test]
fn vary_variants_are_cached_apart_and_never_cross_served() {
    let mut h = Harness::new(Config::default());
    let headers = [("cache-control", "max-age=60"), ("vary", "Accept")];
    let a = req("GET", "/v", &[("accept", "a")]);
    let b = req("GET", "/v", &[("accept", "b")]);
    assert!(h.run(a.clone(), &ok(&headers, &[b"for a"])).published);
    let miss_b = h.run(b.clone(), &ok(&headers, &[b"for b"]));
    assert_eq!(miss_b.lookups, 2, "variants record, then the variant");
    assert!(miss_b.hit.is_none());
    assert!(
        miss_b
            .cache_status
            .as_deref()
            .unwrap()
            .contains("fwd=vary-miss")
    );
    let hit_a = h.run(a, &ok(&headers, &[b"wrong"]));
    assert_eq!(hit_a.lookups, 2, "at most two round trips when varied");
    assert_eq!(hit_a.body(), b"for a");
    let hit_b = h.run(b, &ok(&headers, &[b"wrong"]));
    assert_eq!(hit_b.body(), b"for b");
    // Normalised: same list, other order and case.
    let hit_a2 = h.run(
        req("GET", "/v", &[("accept", " A ")]),
        &ok(&headers, &[b"x"]),
    );
    assert_eq!(hit_a2.body(), b"for a");
    // Absent header is its own variant.
    let none = h.run(req("GET", "/v", &[]), &ok(&headers, &[b"none"]));
    assert!(none.hit.is_none());
}

/// Invariant 10: request values that select a variant (cookies, tokens, keyed headers) never
/// reach a stored byte; the stored value proves its key with the key's digest, and a variant of
/// another user is still never served.
#[test]
fn no_request_value_is_stored_in_the_clear() {
    let cfg = Config {
        key: crate::config::KeyConfig {
            headers: vec!["x-tenant".into()],
            ..Default::default()
        },
        ..Config::default()
    };
    let mut h = Harness::new(cfg);
    let headers = [
        ("cache-control", "public, max-age=60"),
        ("vary", "Cookie, Authorization"),
    ];
    let secret_req = |user: &str| {
        req(
            "GET",
            "/me",
            &[
                ("cookie", &format!("session=SECRET-COOKIE-{user}")),
                ("authorization", &format!("Bearer SECRET-TOKEN-{user}")),
                ("x-tenant", "SECRET-TENANT"),
            ],
        )
    };
    assert!(
        h.run(secret_req("alice"), &ok(&headers, &[b"alice's page"]))
            .published
    );
    for (value, _) in h.store.values.values() {
        for secret in ["SECRET-COOKIE", "SECRET-TOKEN", "SECRET-TENANT"] {
            assert!(
                !value.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} stored"
            );
        }
    }
    let again = h.run(secret_req("alice"), &ok(&headers, &[b"unused"]));
    assert_eq!(again.hit.expect("alice's own variant").2, b"alice's page");
    let bob = h.run(secret_req("bob"), &ok(&headers, &[b"bob's page"]));
    assert!(bob.hit.is_none(), "another user's variant is never served");
}

#[test]
fn vary_star_is_not_stored() {
    let mut h = Harness::new(Config::default());
    let headers = [("cache-control", "max-age=60"), ("vary", "*")];
    let s = h.run(req("GET", "/a", &[]), &ok(&headers, &[b"x"]));
    assert!(!s.published);
    assert!(s.events.contains(&Event::NotStored(NotStored::VaryAny)));
    assert!(h.store.values.is_empty());
}

#[test]
fn uncacheable_responses_are_not_stored() {
    let cases: [(u16, &[(&str, &str)]); 5] = [
        (200, &[("cache-control", "no-store, max-age=60")]),
        (200, &[("cache-control", "private, max-age=60")]),
        (
            200,
            &[("cache-control", "max-age=60"), ("set-cookie", "s=1")],
        ),
        (500, &[]),
        (200, &[]),
    ];
    for (status, headers) in cases {
        let mut h = Harness::new(Config::default());
        let o = Origin {
            status,
            headers,
            chunks: &[b"x"],
            end: End::Complete,
        };
        let s = h.run(req("GET", "/a", &[]), &o);
        assert!(!s.published, "{status} {headers:?}");
        assert!(
            !s.cache_status.as_deref().unwrap().contains("stored"),
            "{headers:?}"
        );
        assert!(h.run(req("GET", "/a", &[]), &o).hit.is_none());
    }
}

#[test]
fn set_cookie_is_stripped_when_configured() {
    let mut h = Harness::new(Config {
        set_cookie: SetCookiePolicy::Strip,
        ..Config::default()
    });
    let headers = [("cache-control", "max-age=60"), ("set-cookie", "s=1")];
    assert!(
        h.run(req("GET", "/a", &[]), &ok(&headers, &[b"x"]))
            .published
    );
    let hit = h.run(req("GET", "/a", &[]), &ok(&headers, &[b"x"]));
    assert_eq!(hit.hit_header("set-cookie"), None);
}

#[test]
fn an_expired_entry_is_refetched() {
    let mut h = Harness::new(Config::default());
    let headers = [("cache-control", "max-age=2")];
    h.run(req("GET", "/a", &[]), &ok(&headers, &[b"v1"]));
    h.now += 1_000;
    assert!(
        h.run(req("GET", "/a", &[]), &ok(&headers, &[b"v2"]))
            .hit
            .is_some()
    );
    // Redis expires the key; the flow also checks freshness itself (the store's clock and
    // ours may differ), so the stale entry is not served even if still present.
    h.now += 1_500;
    let s = h.run_with(
        req("GET", "/a", &[]),
        &ok(&headers, &[b"v2"]),
        Source::Origin,
        |s, k, _| Ok(s.values.get(k).map(|(v, _)| v.clone())),
    );
    assert!(s.hit.is_none());
    assert!(s.cache_status.as_deref().unwrap().contains("fwd=stale"));
    assert!(s.published);
}

#[test]
fn store_errors_fail_open_and_record_only_for_a_slow_store() {
    for e in [
        StoreError::Timeout,
        StoreError::Unavailable,
        StoreError::Garbage,
        StoreError::Dispatch,
        StoreError::Status(403),
    ] {
        let mut h = Harness::new(Config::default());
        let s = h.run_with(
            req("GET", "/a", &[]),
            &ok(CACHEABLE, &[b"x"]),
            Source::Origin,
            |_, _, _| Err(e),
        );
        assert!(s.hit.is_none());
        assert!(s.events.contains(&Event::StoreError(e)));
        let cs = s.cache_status.unwrap();
        assert!(cs.contains("fwd=miss") && cs.contains(e.as_str()), "{cs}");
        // A slow store may take the write; one that is down or refusing is not written to.
        let recorded = e == StoreError::Timeout;
        assert_eq!(s.published, recorded, "{e:?}");
        assert_eq!(cs.contains("stored"), recorded, "{cs}");
    }
}

#[test]
fn a_corrupt_or_foreign_entry_is_a_miss_and_gets_overwritten() {
    let mut h = Harness::new(Config::default());
    let key = CacheKey::primary(&h.cfg, &req("GET", "/a", &[])).redis_key;
    h.store
        .values
        .insert(key.clone(), (b"garbage\0\xff".to_vec(), u64::MAX));
    let s = h.run(req("GET", "/a", &[]), &ok(CACHEABLE, &[b"good"]));
    assert!(s.hit.is_none());
    assert!(
        s.events
            .contains(&Event::CorruptEntry(EntryError::BadMagic))
    );
    assert!(s.cache_status.unwrap().contains("detail=invalid-entry"));
    assert!(s.published);
    let good = h.run(req("GET", "/a", &[]), &ok(CACHEABLE, &[b"x"]));
    assert_eq!(good.body(), b"good");

    // Truncated.
    let v = h.store.values.get_mut(&key).unwrap();
    v.0.truncate(v.0.len() - 3);
    let s = h.run(req("GET", "/a", &[]), &ok(CACHEABLE, &[b"good"]));
    assert!(s.hit.is_none());

    // A valid entry of another key planted here.
    h.run(req("GET", "/b", &[]), &ok(CACHEABLE, &[b"other"]));
    let other_key = CacheKey::primary(&h.cfg, &req("GET", "/b", &[])).redis_key;
    let other = h.store.values[&other_key].clone();
    h.store.values.insert(key, other);
    let s = h.run(req("GET", "/a", &[]), &ok(CACHEABLE, &[b"good"]));
    assert!(s.hit.is_none(), "never serve another key's response");
    assert!(s.events.contains(&Event::KeyMismatch));
}

#[test]
fn oversized_bodies_stream_but_are_not_stored() {
    let mut h = Harness::new(Config {
        max_body_bytes: 10,
        ..Config::default()
    });
    let s = h.run(
        req("GET", "/a", &[]),
        &ok(CACHEABLE, &[b"123456", b"789012"]),
    );
    assert!(!s.published);
    assert!(s.events.contains(&Event::RecordingTooLarge));
    // Known from Content-Length: not even started.
    let headers = [("cache-control", "max-age=60"), ("content-length", "12")];
    let s = h.run(
        req("GET", "/b", &[]),
        &ok(&headers, &[b"123456", b"789012"]),
    );
    assert!(!s.published);
    assert!(!s.cache_status.unwrap().contains("stored"));
    // Exactly at the limit is fine.
    let s = h.run(req("GET", "/c", &[]), &ok(CACHEABLE, &[b"12345", b"67890"]));
    assert!(s.published);
}

#[test]
fn incomplete_responses_publish_nothing() {
    for end in [End::Reset, End::Trailers] {
        let mut h = Harness::new(Config::default());
        let o = Origin {
            status: 200,
            headers: CACHEABLE,
            chunks: &[b"part"],
            end,
        };
        let s = h.run(req("GET", "/a", &[]), &o);
        assert!(!s.published);
        assert!(s.events.contains(&Event::RecordingAborted));
        assert!(h.store.values.is_empty());
    }
    // Shorter than its Content-Length.
    let mut h = Harness::new(Config::default());
    let headers = [("cache-control", "max-age=60"), ("content-length", "10")];
    assert!(
        !h.run(req("GET", "/a", &[]), &ok(&headers, &[b"short"]))
            .published
    );
}

#[test]
fn responses_made_by_envoy_are_not_stored() {
    let mut h = Harness::new(Config {
        default_ttl_s: 60,
        ..Config::default()
    });
    let o = Origin {
        status: 404,
        headers: &[],
        chunks: &[b"no route"],
        end: End::Complete,
    };
    let s = h.run_with(req("GET", "/a", &[]), &o, Source::Envoy, |s, k, n| {
        Ok(s.get(k, n).map(<[u8]>::to_vec))
    });
    assert!(!s.published);
    assert!(
        s.events
            .contains(&Event::NotStored(NotStored::NotFromOrigin))
    );
}

#[test]
fn bodiless_response_completes_on_headers() {
    let mut h = Harness::new(Config::default());
    let o = Origin {
        status: 204,
        headers: &[("cache-control", "max-age=60")],
        chunks: &[],
        end: End::Complete,
    };
    assert!(h.run(req("GET", "/a", &[]), &o).published);
    let hit = h.run(req("GET", "/a", &[]), &o);
    assert_eq!(hit.hit.unwrap().0, 204);
}

#[test]
fn bypasses_and_refreshes() {
    let mut h = Harness::new(Config::default());
    let post = h.run(req("POST", "/a", &[]), &ok(CACHEABLE, &[b"x"]));
    assert_eq!(post.lookups, 0);
    assert!(!post.published);
    assert_eq!(
        post.cache_status.as_deref(),
        Some("fleet-cache; fwd=method; fwd-status=200")
    );
    let no_store = h.run(
        req("GET", "/a", &[("cache-control", "no-store")]),
        &ok(CACHEABLE, &[b"x"]),
    );
    assert!(!no_store.published);
    assert!(no_store.cache_status.unwrap().contains("fwd=bypass"));

    h.run(req("GET", "/a", &[]), &ok(CACHEABLE, &[b"v1"]));
    let refresh = h.run(
        req("GET", "/a", &[("cache-control", "no-cache")]),
        &ok(CACHEABLE, &[b"v2"]),
    );
    assert_eq!(refresh.lookups, 0, "no-cache goes to the origin");
    assert!(refresh.cache_status.unwrap().contains("fwd=request"));
    assert!(refresh.published, "and refreshes the entry");
    assert_eq!(
        h.run(req("GET", "/a", &[]), &ok(CACHEABLE, &[])).body(),
        b"v2"
    );
}

#[test]
fn chunk_boundaries_are_recorded() {
    let mut h = Harness::new(Config::default());
    let mut flow = Flow::new(h.cfg.clone(), worker(usize::MAX, 0));
    let RequestStep::Lookup(_) = flow.handle_request_headers(T0, req("GET", "/a", &[])) else {
        panic!()
    };
    assert_eq!(
        flow.handle_store_reply(T0, Ok(Looked::Missing)),
        LookupStep::Continue
    );
    let resp = ResponseHead {
        status: 200,
        headers: vec![("cache-control".into(), "max-age=60".into())],
    };
    flow.handle_response_headers(T0, &resp, false, Source::Origin);
    assert!(flow.wants_body());
    assert!(flow.handle_response_body(b"data: 1\n\n", false).is_none());
    assert!(flow.handle_response_body(b"data: 2\n\n", false).is_none());
    let w = flow.handle_response_body(b"", true).unwrap();
    let entry::Decoded::Response { meta, body } = entry::decode(&w.entry).unwrap() else {
        panic!()
    };
    assert_eq!(meta.chunks, vec![9, 9]);
    assert_eq!(body, b"data: 1\n\ndata: 2\n\n");
    h.store.apply(w, T0);
}

#[test]
fn with_content_length_a_recording_completes_at_its_last_byte() {
    // The client has the whole response with its last byte, before the end of the stream:
    // that is where the entry must be written (and the end held for it).
    let h = Harness::new(Config::default());
    let mut flow = Flow::new(h.cfg.clone(), worker(usize::MAX, 0));
    flow.handle_request_headers(T0, req("GET", "/a", &[]));
    flow.handle_store_reply(T0, Ok(Looked::Missing));
    let resp = ResponseHead {
        status: 200,
        headers: vec![
            ("cache-control".into(), "max-age=60".into()),
            ("content-length".into(), "6".into()),
        ],
    };
    flow.handle_response_headers(T0, &resp, false, Source::Origin);
    assert!(flow.handle_response_body(b"abc", false).is_none());
    let w = flow
        .handle_response_body(b"def", false)
        .expect("complete at byte 6");
    let entry::Decoded::Response { body, .. } = entry::decode(&w.entry).unwrap() else {
        panic!()
    };
    assert_eq!(body, b"abcdef");
    assert!(!flow.wants_body());
    assert_eq!(flow.handle_response_body(b"", true), None, "written once");
}

#[test]
fn late_store_answers_are_ignored() {
    let cfg = Rc::new(Config::default());
    let mut flow = Flow::new(cfg, worker(usize::MAX, 0));
    assert_eq!(
        flow.handle_store_reply(T0, Ok(Looked::Value(b"x"))),
        LookupStep::Continue
    );
    assert!(flow.take_events().is_empty());
}

#[test]
fn head_with_no_cache_never_creates_a_get_entry() {
    let mut h = Harness::new(Config::default());
    for header in [("cache-control", "no-cache"), ("pragma", "no-cache")] {
        let s = h.run(req("HEAD", "/a", &[header]), &ok(CACHEABLE, &[]));
        assert!(!s.published, "{header:?}");
        assert!(!s.cache_status.unwrap().contains("stored"));
    }
    assert!(h.store.values.is_empty());
}

#[test]
fn recordings_share_a_worker_budget() {
    let mut h = Harness::new(Config::default());
    h.worker = worker(8, 0);
    let mut first = Flow::new(h.cfg.clone(), h.worker.clone());
    let mut second = Flow::new(h.cfg.clone(), h.worker.clone());
    let resp = ResponseHead {
        status: 200,
        headers: vec![("cache-control".into(), "max-age=60".into())],
    };
    for f in [&mut first, &mut second] {
        f.handle_request_headers(T0, req("GET", "/a", &[]));
        f.handle_store_reply(T0, Ok(Looked::Missing));
        f.handle_response_headers(T0, &resp, false, Source::Origin);
    }
    assert!(first.handle_response_body(b"12345", false).is_none());
    assert_eq!(h.worker.budget.used(), 5);
    assert!(second.handle_response_body(b"12345", true).is_none());
    assert!(second.take_events().contains(&Event::RecordingOverBudget));
    assert!(first.handle_response_body(b"", true).is_some());
    assert_eq!(
        h.worker.budget.used(),
        0,
        "given back when the recording ends"
    );
    first.handle_stream_end();
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

const VALIDATED: &[(&str, &str)] = &[
    ("cache-control", "max-age=60"),
    ("etag", "\"v1\""),
    ("last-modified", "Tue, 14 Nov 2023 22:13:20 GMT"),
    ("content-type", "text/plain"),
];

#[test]
fn rfc9110_13_client_conditionals_get_304_from_a_fresh_entry() {
    let mut h = Harness::new(Config::default());
    h.run(req("GET", "/a", &[]), &ok(VALIDATED, &[b"0123456789"]));
    for cond in [
        ("if-none-match", "W/\"v1\""),
        ("if-modified-since", "Tue, 14 Nov 2023 22:13:20 GMT"),
    ] {
        let s = h.run(req("GET", "/a", &[cond]), &ok(VALIDATED, &[]));
        let (status, headers, body) = s.hit.expect("answered by the cache");
        assert_eq!(status, 304, "{cond:?}");
        assert!(body.is_empty());
        assert_eq!(header(&headers, "etag"), Some("\"v1\""));
        assert_eq!(header(&headers, "cache-control"), Some("max-age=60"));
        assert_eq!(header(&headers, "content-type"), None);
        assert!(header(&headers, "cache-status").unwrap().contains("hit"));
        assert!(header(&headers, "date").is_some());
    }
    let s = h.run(
        req("GET", "/a", &[("if-none-match", "\"v2\"")]),
        &ok(VALIDATED, &[]),
    );
    assert_eq!(
        s.body(),
        b"0123456789",
        "a changed validator gets the full response"
    );
    // If-Match and If-Unmodified-Since go to the origin.
    let s = h.run(
        req("GET", "/a", &[("if-match", "\"v1\"")]),
        &ok(VALIDATED, &[b"x"]),
    );
    assert_eq!(s.lookups, 0);
    assert!(s.cache_status.unwrap().contains("fwd=request"));
}

#[test]
fn rfc9110_14_single_ranges_are_answered_from_the_stored_body() {
    let mut h = Harness::new(Config::default());
    h.run(req("GET", "/a", &[]), &ok(VALIDATED, &[b"01234", b"56789"]));
    let s = h.run(
        req("GET", "/a", &[("range", "bytes=3-6")]),
        &ok(VALIDATED, &[]),
    );
    let (status, headers, body) = s.hit.unwrap();
    assert_eq!(status, 206);
    assert_eq!(body, b"3456");
    assert_eq!(header(&headers, "content-range"), Some("bytes 3-6/10"));
    let s = h.run(
        req("GET", "/a", &[("range", "bytes=-2")]),
        &ok(VALIDATED, &[]),
    );
    assert_eq!(s.body(), b"89");
    let s = h.run(
        req("GET", "/a", &[("range", "bytes=10-")]),
        &ok(VALIDATED, &[]),
    );
    let (status, headers, body) = s.hit.unwrap();
    assert_eq!(status, 416);
    assert!(body.is_empty());
    assert_eq!(header(&headers, "content-range"), Some("bytes */10"));
    // Several ranges: the origin builds the multipart answer; nothing recorded from a 206.
    let s = h.run(
        req("GET", "/a", &[("range", "bytes=0-1,4-5")]),
        &Origin {
            status: 206,
            headers: VALIDATED,
            chunks: &[b"multipart"],
            end: End::Complete,
        },
    );
    assert!(s.hit.is_none());
    assert!(!s.published);
    assert!(s.cache_status.unwrap().contains("detail=multiple-ranges"));
    // HEAD ignores Range.
    let s = h.run(
        req("HEAD", "/a", &[("range", "bytes=0-1")]),
        &ok(VALIDATED, &[]),
    );
    assert_eq!(s.hit.unwrap().0, 200);
}

#[test]
fn rfc9111_5_2_1_7_only_if_cached() {
    let mut h = Harness::new(Config::default());
    let oic = [("cache-control", "only-if-cached")];
    let s = h.run(req("GET", "/a", &oic), &ok(VALIDATED, &[b"never"]));
    let (status, headers, _) = s.hit.expect("answered without the origin");
    assert_eq!(status, 504);
    assert!(
        header(&headers, "cache-status")
            .unwrap()
            .contains("only-if-cached")
    );
    h.run(req("GET", "/a", &[]), &ok(VALIDATED, &[b"body"]));
    assert_eq!(
        h.run(req("GET", "/a", &oic), &ok(VALIDATED, &[])).body(),
        b"body"
    );
}

#[test]
fn rfc9111_5_2_1_request_age_limits_and_staleness() {
    let mut h = Harness::new(Config::default());
    h.run(req("GET", "/a", &[]), &ok(VALIDATED, &[b"v1"]));
    h.now += 30_000;
    let limit = [("cache-control", "max-age=10")];
    let s = h.run(req("GET", "/a", &limit), &ok(VALIDATED, &[b"v2"]));
    assert!(s.hit.is_none(), "older than the client's max-age");
    assert!(s.cache_status.unwrap().contains("fwd=stale"));
    h.now += 50_000; // v2 is now 50 s old: 10 s of freshness left
    let s = h.run(
        req("GET", "/a", &[("cache-control", "min-fresh=20")]),
        &ok(VALIDATED, &[b"v3"]),
    );
    assert!(s.hit.is_none(), "less fresh than min-fresh");
    h.now += 70_000; // v3 is stale by 10 s (kept for revalidation)
    let s = h.run(
        req("GET", "/a", &[("cache-control", "max-stale=15")]),
        &ok(VALIDATED, &[b"v4"]),
    );
    let (_, headers, body) = s.hit.expect("stale but accepted");
    assert_eq!(body, b"v3");
    assert_eq!(
        header(&headers, "cache-status"),
        Some("fleet-cache; hit; ttl=-10")
    );
    let s = h.run(req("GET", "/a", &[]), &ok(VALIDATED, &[b"v4"]));
    assert!(s.hit.is_none(), "without max-stale, stale is not served");
}

#[test]
fn rfc9111_no_cache_and_must_revalidate_entries() {
    let mut h = Harness::new(Config::default());
    let no_cache = [
        ("cache-control", "no-cache, max-age=60"),
        ("etag", "\"v1\""),
    ];
    assert!(
        h.run(req("GET", "/a", &[]), &ok(&no_cache, &[b"v1"]))
            .published
    );
    let s = h.run(req("GET", "/a", &[]), &ok(&no_cache, &[b"v2"]));
    assert!(
        s.hit.is_none(),
        "no-cache is never served without validation"
    );
    let must = [
        ("cache-control", "max-age=1, must-revalidate"),
        ("etag", "\"v1\""),
    ];
    h.run(req("GET", "/b", &[]), &ok(&must, &[b"v1"]));
    h.now += 5_000;
    let s = h.run(
        req("GET", "/b", &[("cache-control", "max-stale")]),
        &ok(&must, &[b"v2"]),
    );
    assert!(s.hit.is_none(), "must-revalidate forbids serving stale");
}

#[test]
fn rfc9213_targeted_field_is_obeyed_and_not_passed_on() {
    let mut h = Harness::new(Config::default());
    let headers = [
        ("cache-control", "no-store"),
        ("cdn-cache-control", "max-age=60"),
    ];
    let s = h.run(req("GET", "/a", &[]), &ok(&headers, &[b"x"]));
    assert!(s.published);
    let hit = h.run(req("GET", "/a", &[]), &ok(&headers, &[]));
    assert_eq!(hit.hit_header("cdn-cache-control"), None);
    assert_eq!(hit.hit_header("cache-control"), Some("no-store"));
    let mut flow = Flow::new(h.cfg.clone(), worker(usize::MAX, 0));
    flow.handle_request_headers(T0, req("GET", "/b", &[]));
    flow.handle_store_reply(T0, Ok(Looked::Missing));
    let step = flow.handle_response_headers(
        T0,
        &ResponseHead::for_test(200, &headers),
        false,
        Source::Origin,
    );
    assert_eq!(step.remove_header.as_deref(), Some("cdn-cache-control"));
}

#[test]
fn rfc9111_4_3_stale_entries_are_revalidated_and_304s_refresh_them() {
    let mut h = Harness::new(Config::default());
    let v1 = [
        ("cache-control", "max-age=10"),
        ("etag", "\"v1\""),
        ("x-version", "1"),
    ];
    h.run(req("GET", "/a", &[]), &ok(&v1, &[b"stored ", b"body"]));
    h.now += 20_000;
    let s = h.run(
        req("GET", "/a", &[]),
        &not_modified(&[("cache-control", "max-age=100"), ("x-version", "2")]),
    );
    assert_eq!(
        s.conditions,
        vec![("if-none-match".to_string(), "\"v1\"".to_string())]
    );
    let (status, headers, body) = s.hit.clone().expect("answered from the stored body");
    assert_eq!(status, 200);
    assert_eq!(body, b"stored body");
    assert_eq!(
        header(&headers, "x-version"),
        Some("2"),
        "headers updated by the 304"
    );
    assert_eq!(header(&headers, "etag"), Some("\"v1\""));
    assert_eq!(
        header(&headers, "cache-status"),
        Some("fleet-cache; fwd=stale; fwd-status=304; stored")
    );
    assert!(s.events.contains(&Event::Revalidated));
    assert!(s.published, "the refreshed metadata is written");
    // Fresh again for 100 s, with the new headers and the old body.
    h.now += 50_000;
    let hit = h.run(req("GET", "/a", &[]), &ok(&v1, &[b"unused"]));
    assert_eq!(hit.body(), b"stored body");
    assert_eq!(hit.hit_header("x-version"), Some("2"));
    assert_eq!(
        hit.hit_header("cache-status"),
        Some("fleet-cache; hit; ttl=50")
    );
}

#[test]
fn a_compressed_entry_is_served_whole_and_a_304_refreshes_it_in_place() {
    let mut h = Harness::new(Config::default());
    let json: Vec<u8> = (0..3000)
        .flat_map(|i| format!("{{\"id\":{i},\"name\":\"item {}\"}},", i % 37).into_bytes())
        .collect();
    let chunks: Vec<&[u8]> = json.chunks(10_000).collect();
    let v1 = [
        ("cache-control", "max-age=10"),
        ("etag", "\"v1\""),
        ("content-type", "application/json"),
    ];
    h.run(req("GET", "/j", &[]), &ok(&v1, &chunks));
    let (key, (stored, _)) = h.store.values.iter().next().expect("stored");
    let key = key.clone();
    let stored_len = stored.len();
    let Ok(Decoded::Response { meta, .. }) = entry::decode(stored) else {
        panic!("a response entry")
    };
    assert!(meta.packed, "JSON is stored compressed");
    assert!(
        stored_len * 4 < json.len(),
        "{stored_len} bytes for {}",
        json.len()
    );
    assert_eq!(
        h.run(req("GET", "/j", &[]), &ok(&v1, &[])).body(),
        &json[..]
    );
    // A range of the unpacked body, and HEAD (no body, the body's length).
    let ranged = h.run(
        req("GET", "/j", &[("range", "bytes=100-199")]),
        &ok(&v1, &[]),
    );
    let (status, _, part) = ranged.hit.expect("a range from the stored body");
    assert_eq!((status, &part[..]), (206, &json[100..200]));
    let head = h.run(req("HEAD", "/j", &[]), &ok(&v1, &[]));
    let (status, headers, _) = head.hit.expect("HEAD from the stored body");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    // Stale: a 304 rewrites only the metadata tail behind the compressed body.
    h.now += 20_000;
    let s = h.run(
        req("GET", "/j", &[]),
        &not_modified(&[("cache-control", "max-age=100"), ("x-version", "2")]),
    );
    assert_eq!(
        s.hit.clone().expect("answered from the stored body").2,
        json
    );
    let (refreshed, _) = &h.store.values[&key];
    assert_ne!(refreshed.len(), stored_len, "the tail was rewritten");
    let Ok(Decoded::Response { meta, .. }) = entry::decode(refreshed) else {
        panic!("the refreshed entry no longer decodes")
    };
    assert!(meta.packed);
    h.now += 50_000;
    let hit = h.run(req("GET", "/j", &[]), &ok(&v1, &[b"unused"]));
    assert_eq!(hit.body(), &json[..]);
    assert_eq!(hit.hit_header("x-version"), Some("2"));
}

#[test]
fn a_packed_copy_without_room_in_the_recording_budget_is_given_up_not_the_recording() {
    let json: Vec<u8> = (0..6000)
        .flat_map(|i| format!("{{\"id\":{i},\"name\":\"item {}\"}},", i % 37).into_bytes())
        .collect();
    let chunks: Vec<&[u8]> = json.chunks(40_000).collect();
    let headers = [
        ("cache-control", "max-age=60"),
        ("content-type", "application/json"),
    ];
    let packed = |budget: usize| {
        let mut h = Harness::new(Config::default());
        h.worker = worker(budget, 0);
        let s = h.run(req("GET", "/j", &[]), &ok(&headers, &chunks));
        assert!(s.published, "stored either way ({budget}): {:?}", s.events);
        let (_, (stored, _)) = h.store.values.iter().next().expect("stored");
        let Ok(Decoded::Response { meta, .. }) = entry::decode(stored) else {
            panic!("a response entry")
        };
        assert_eq!(meta.body_len as usize, json.len());
        meta.packed
    };
    // Room for the raw body and its packed copy: packed.
    assert!(packed(2 * json.len()));
    // Room for the raw body only: stored as it is, within the budget.
    assert!(!packed(json.len() + 1_000));
}

#[test]
fn rfc9111_4_3_3_a_full_response_to_revalidation_replaces_the_entry() {
    let mut h = Harness::new(Config::default());
    let v = |etag: &'static str| [("cache-control", "max-age=10"), ("etag", etag)];
    h.run(req("GET", "/a", &[]), &ok(&v("\"v1\""), &[b"old"]));
    h.now += 20_000;
    let s = h.run(req("GET", "/a", &[]), &ok(&v("\"v2\""), &[b"new"]));
    assert!(!s.conditions.is_empty());
    assert!(s.hit.is_none());
    assert!(s.published);
    assert_eq!(
        h.run(req("GET", "/a", &[]), &ok(&v("x"), &[])).body(),
        b"new"
    );
    // A 5xx is passed on; the stale entry stays (stale serving is not done here).
    h.now += 20_000;
    let err = Origin {
        status: 503,
        headers: &[],
        chunks: &[b"down"],
        end: End::Complete,
    };
    let s = h.run(req("GET", "/a", &[]), &err);
    assert!(s.hit.is_none());
    assert!(!s.published);
}

#[test]
fn revalidation_is_left_to_the_client_when_it_has_its_own_conditions() {
    let mut h = Harness::new(Config::default());
    let v1 = [("cache-control", "max-age=10"), ("etag", "\"v1\"")];
    h.run(req("GET", "/a", &[]), &ok(&v1, &[b"x"]));
    h.now += 20_000;
    let s = h.run(
        req("GET", "/a", &[("if-none-match", "\"v0\"")]),
        &ok(&v1, &[b"y"]),
    );
    assert!(s.conditions.is_empty());
    // No validators at all: a plain refetch.
    let mut h = Harness::new(Config::default());
    h.run(
        req("GET", "/b", &[]),
        &ok(&[("cache-control", "max-age=10")], &[b"x"]),
    );
    h.now += 20_000;
    let s = h.run(
        req("GET", "/b", &[]),
        &ok(&[("cache-control", "max-age=10")], &[b"y"]),
    );
    assert!(s.conditions.is_empty());
}

#[test]
fn a_refresh_is_dropped_when_the_entry_changed_meanwhile() {
    let mut h = Harness::new(Config::default());
    let v1 = [("cache-control", "max-age=10"), ("etag", "\"v1\"")];
    h.run(req("GET", "/a", &[]), &ok(&v1, &[b"old"]));
    h.now += 20_000;
    let key = CacheKey::primary(&h.cfg, &req("GET", "/a", &[])).redis_key;
    let mut flow = Flow::new(h.cfg.clone(), h.worker.clone());
    let RequestStep::Lookup(k) = flow.handle_request_headers(h.now, req("GET", "/a", &[])) else {
        panic!()
    };
    let value = h.store.values[&k].0.clone();
    assert!(matches!(
        flow.handle_store_reply(h.now, Ok(Looked::Value(&value))),
        LookupStep::Revalidate(_)
    ));
    // Meanwhile another proxy stored a new, longer body.
    h.run(
        req("GET", "/a", &[("cache-control", "no-cache")]),
        &ok(&v1, &[b"newer body"]),
    );
    let step = flow.handle_response_headers(
        h.now,
        &ResponseHead::for_test(304, &[("cache-control", "max-age=100")]),
        true,
        Source::Origin,
    );
    h.store.apply(step.publish.unwrap(), h.now);
    let Decoded::Response { body, .. } = entry::decode(&h.store.values[&key].0).unwrap() else {
        panic!()
    };
    assert_eq!(
        body, b"newer body",
        "the refresh did not graft onto the new entry"
    );
}

fn purging_config() -> Config {
    Config {
        purge: crate::config::PurgeConfig {
            token: Some("a-long-enough-purge-token".into()),
            header: "x-purge-token".into(),
        },
        ..Config::default()
    }
}

const TOKEN: (&str, &str) = ("x-purge-token", "a-long-enough-purge-token");

#[test]
fn rfc9111_4_4_unsafe_requests_invalidate_every_variant() {
    let mut h = Harness::new(Config::default());
    let varied = [("cache-control", "max-age=60"), ("vary", "accept")];
    for accept in ["a", "b"] {
        let r = req("GET", "/doc", &[("accept", accept)]);
        assert!(h.run(r, &ok(&varied, &[accept.as_bytes()])).published);
    }
    let put = h.run(req("PUT", "/doc", &[]), &ok(&[], &[b"saved"]));
    assert_eq!(put.invalidated, 1);
    assert!(put.events.contains(&Event::Invalidated));
    // A new variant written after the invalidation must not resurrect the old ones.
    let a = h.run(
        req("GET", "/doc", &[("accept", "a")]),
        &ok(&varied, &[b"a2"]),
    );
    assert!(a.hit.is_none());
    let b = h.run(
        req("GET", "/doc", &[("accept", "b")]),
        &ok(&varied, &[b"b2"]),
    );
    assert!(b.hit.is_none(), "the pre-PUT variant b is gone");
    assert_eq!(
        h.run(req("GET", "/doc", &[("accept", "b")]), &ok(&varied, &[]))
            .body(),
        b"b2"
    );
    // Errors invalidate nothing.
    let failed = h.run(
        req("DELETE", "/doc", &[]),
        &Origin {
            status: 500,
            headers: &[],
            chunks: &[],
            end: End::Complete,
        },
    );
    assert_eq!(failed.invalidated, 0);
    assert!(
        h.run(req("GET", "/doc", &[("accept", "b")]), &ok(&varied, &[]))
            .hit
            .is_some()
    );
}

#[test]
fn rfc9111_4_4_location_of_the_same_origin_is_invalidated() {
    let mut h = Harness::new(Config::default());
    h.run(req("GET", "/items/7", &[]), &ok(CACHEABLE, &[b"old"]));
    let post = h.run(
        req("POST", "/items", &[]),
        &Origin {
            status: 201,
            headers: &[("location", "/items/7")],
            chunks: &[],
            end: End::Complete,
        },
    );
    assert_eq!(post.invalidated, 2);
    assert!(
        h.run(req("GET", "/items/7", &[]), &ok(CACHEABLE, &[b"new"]))
            .hit
            .is_none()
    );
}

#[test]
fn purge_by_url_and_by_tag() {
    let mut h = Harness::new(purging_config());
    let tagged = |tags: &'static str| [("cache-control", "max-age=60"), ("surrogate-key", tags)];
    h.run(req("GET", "/a", &[]), &ok(&tagged("red blue"), &[b"a"]));
    h.run(req("GET", "/b", &[]), &ok(&tagged("blue"), &[b"b"]));
    h.run(req("GET", "/c", &[]), &ok(&tagged("green"), &[b"c"]));
    // By URL.
    let s = h.run(req("PURGE", "/c", &[TOKEN]), &ok(&[], &[]));
    let (status, _, body) = s.hit.unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"{\"purged\":1}\n"[..]));
    assert!(
        h.run(req("GET", "/c", &[]), &ok(CACHEABLE, &[b"c2"]))
            .hit
            .is_none()
    );
    // By tag: every resource carrying it.
    let s = h.run(
        req("PURGE", "/", &[TOKEN, ("x-purge-tags", "blue")]),
        &ok(&[], &[]),
    );
    assert_eq!(s.hit.unwrap().2, b"{\"purged\":2}\n");
    assert!(
        h.run(req("GET", "/a", &[]), &ok(CACHEABLE, &[b"a2"]))
            .hit
            .is_none()
    );
    assert!(
        h.run(req("GET", "/b", &[]), &ok(CACHEABLE, &[b"b2"]))
            .hit
            .is_none()
    );
    assert_eq!(
        h.run(req("GET", "/c", &[]), &ok(CACHEABLE, &[])).body(),
        b"c2"
    );
}

#[test]
fn purges_without_the_token_are_refused_and_change_nothing() {
    let mut h = Harness::new(purging_config());
    h.run(req("GET", "/a", &[]), &ok(CACHEABLE, &[b"a"]));
    for headers in [
        &[][..],
        &[("x-purge-token", "a-long-enough-purge-tokeX")][..],
    ] {
        let s = h.run(req("PURGE", "/a", headers), &ok(&[], &[]));
        assert_eq!(s.hit.unwrap().0, 403);
    }
    assert!(
        h.run(req("GET", "/a", &[]), &ok(CACHEABLE, &[]))
            .hit
            .is_some()
    );
    let mut off = Harness::new(Config::default());
    let s = off.run(req("PURGE", "/a", &[TOKEN]), &ok(&[], &[]));
    assert_eq!(s.hit.unwrap().0, 405, "purging disabled without a token");
}

fn with_memory(cfg: Config) -> Harness {
    let mut h = Harness::new(cfg);
    h.worker = worker(usize::MAX, 1 << 20);
    h
}

#[test]
fn the_in_proxy_tier_answers_repeated_hits_without_the_store() {
    let mut h = with_memory(Config::default());
    h.run(req("GET", "/a", &[]), &ok(CACHEABLE, &[b"body"]));
    let from_store = h.run(req("GET", "/a", &[]), &ok(CACHEABLE, &[]));
    assert_eq!(from_store.lookups, 1);
    assert_eq!(from_store.body(), b"body");
    let from_memory = h.run(req("GET", "/a", &[]), &ok(CACHEABLE, &[]));
    assert_eq!(from_memory.lookups, 0, "no store round trip");
    assert!(from_memory.memory_answered);
    assert_eq!(from_memory.body(), b"body");
    assert!(from_memory.events.contains(&Event::MemoryHit));
    assert!(from_memory.events.contains(&Event::Hit));
    assert_eq!(
        from_memory.hit_header("cache-status"),
        Some("fleet-cache; hit; ttl=60; detail=memory")
    );
    // Ranges and conditionals work the same from memory.
    let ranged = h.run(
        req("GET", "/a", &[("range", "bytes=1-2")]),
        &ok(CACHEABLE, &[]),
    );
    assert_eq!(ranged.body(), b"od");
    assert_eq!(ranged.lookups, 0);
}

#[test]
fn the_in_proxy_tier_is_bounded_in_time_by_its_max_age_and_by_freshness() {
    let mut h = with_memory(Config::default());
    h.run(req("GET", "/a", &[]), &ok(CACHEABLE, &[b"v1"]));
    h.run(req("GET", "/a", &[]), &ok(CACHEABLE, &[]));
    h.now += 999;
    assert_eq!(h.run(req("GET", "/a", &[]), &ok(CACHEABLE, &[])).lookups, 0);
    h.now += 1;
    assert_eq!(
        h.run(req("GET", "/a", &[]), &ok(CACHEABLE, &[])).lookups,
        1,
        "past max_age_ms the store is asked again (purges elsewhere become visible)"
    );
    let short = [("cache-control", "max-age=1"), ("etag", "\"e\"")];
    h.run(req("GET", "/b", &[]), &ok(&short, &[b"v1"]));
    h.now += 500;
    h.run(req("GET", "/b", &[]), &ok(&short, &[])); // remembered for 500 ms only
    h.now += 600;
    let s = h.run(req("GET", "/b", &[]), &ok(&short, &[b"v2"]));
    assert!(
        !s.memory_answered,
        "never served from memory past its freshness"
    );
}

#[test]
fn the_in_proxy_tier_keeps_variants_and_never_no_cache_entries() {
    let mut h = with_memory(Config::default());
    let varied = [("cache-control", "max-age=60"), ("vary", "accept")];
    for accept in ["a", "b"] {
        let r = req("GET", "/v", &[("accept", accept)]);
        h.run(r.clone(), &ok(&varied, &[accept.as_bytes()]));
        h.run(r, &ok(&varied, &[]));
    }
    for accept in ["a", "b"] {
        let s = h.run(req("GET", "/v", &[("accept", accept)]), &ok(&varied, &[]));
        assert_eq!(s.lookups, 0, "record and variant both from memory");
        assert_eq!(s.body(), accept.as_bytes());
    }
    let no_cache = [("cache-control", "no-cache, max-age=60"), ("etag", "\"e\"")];
    h.run(req("GET", "/n", &[]), &ok(&no_cache, &[b"x"]));
    h.run(req("GET", "/n", &[]), &ok(&no_cache, &[b"x"]));
    let s = h.run(req("GET", "/n", &[]), &ok(&no_cache, &[b"x"]));
    assert!(!s.memory_answered);
}

#[test]
fn this_worker_forgets_what_it_purges_invalidates_or_replaces() {
    let mut h = with_memory(purging_config());
    let warm = |h: &mut Harness, path: &str, body: &'static [u8]| {
        h.run(req("GET", path, &[]), &ok(CACHEABLE, &[body]));
        h.run(req("GET", path, &[]), &ok(CACHEABLE, &[]));
    };
    warm(&mut h, "/a", b"a1");
    h.run(req("PURGE", "/a", &[TOKEN]), &ok(&[], &[]));
    assert!(
        h.run(req("GET", "/a", &[]), &ok(CACHEABLE, &[b"a2"]))
            .hit
            .is_none()
    );
    warm(&mut h, "/b", b"b1");
    h.run(req("POST", "/b", &[]), &ok(&[], &[b"ok"]));
    assert!(
        h.run(req("GET", "/b", &[]), &ok(CACHEABLE, &[b"b2"]))
            .hit
            .is_none()
    );
    warm(&mut h, "/c", b"c1");
    h.run(
        req("GET", "/c", &[("cache-control", "no-cache")]),
        &ok(CACHEABLE, &[b"c2"]),
    );
    assert_eq!(
        h.run(req("GET", "/c", &[]), &ok(CACHEABLE, &[])).body(),
        b"c2"
    );
    warm(&mut h, "/d", b"d1");
    h.run(
        req("PURGE", "/", &[TOKEN, ("x-purge-tags", "t")]),
        &ok(&[], &[]),
    );
    assert!(
        !h.run(req("GET", "/d", &[]), &ok(CACHEABLE, &[]))
            .memory_answered
    );
}

fn failing(status: u16) -> Origin<'static> {
    Origin {
        status,
        headers: &[],
        chunks: &[b"origin says no"],
        end: End::Complete,
    }
}

#[test]
fn rfc5861_4_stale_if_error_answers_an_origin_error_inside_its_window() {
    let mut h = Harness::new(Config::default());
    let sie = [("cache-control", "max-age=10, stale-if-error=60")];
    h.run(req("GET", "/a", &[]), &ok(&sie, &[b"old ", b"body"]));
    h.now += 20_000;
    for status in [500, 502, 503, 504] {
        let s = h.run(req("GET", "/a", &[]), &failing(status));
        assert_eq!(s.body(), b"old body", "{status}");
        assert_eq!(s.hit.as_ref().unwrap().0, 200);
        assert_eq!(
            s.hit_header("cache-status"),
            Some(
                format!(
                    "fleet-cache; fwd=stale; fwd-status={status}; ttl=-10; detail=stale-if-error"
                )
                .as_str()
            )
        );
        assert_eq!(s.hit_header("age"), Some("20"));
        assert!(s.events.contains(&Event::StaleIfError));
        assert!(!s.published);
    }
    // Envoy's own answer when the origin cannot be reached counts as an error too.
    let s = h.run_with(
        req("GET", "/a", &[]),
        &failing(503),
        Source::Envoy,
        |s, k, now| Ok(s.get(k, now).map(<[u8]>::to_vec)),
    );
    assert_eq!(s.body(), b"old body");
    // Not an error: passed on, and a storable answer replaces the entry.
    let s = h.run(req("GET", "/a", &[]), &failing(404));
    assert!(s.hit.is_none());
    assert!(s.cache_status.unwrap().contains("fwd-status=404"));
    let s = h.run(req("GET", "/a", &[]), &failing(501));
    assert!(s.hit.is_none(), "501 is not one of RFC 5861's errors");
}

#[test]
fn rfc5861_4_stale_if_error_ends_with_its_window_and_never_overrides_must_revalidate() {
    let mut h = Harness::new(Config::default());
    let sie = [("cache-control", "max-age=10, stale-if-error=60")];
    h.run(req("GET", "/a", &[]), &ok(&sie, &[b"old"]));
    h.now += 71_000;
    let s = h.run(req("GET", "/a", &[]), &failing(503));
    assert!(s.hit.is_none(), "stale by 61 s, the window is 60");
    assert!(!s.events.contains(&Event::StaleIfError));

    let strict = [(
        "cache-control",
        "max-age=10, stale-if-error=60, must-revalidate",
    )];
    h.run(req("GET", "/b", &[]), &ok(&strict, &[b"old"]));
    h.now += 20_000;
    let s = h.run(req("GET", "/b", &[]), &failing(503));
    assert!(s.hit.is_none(), "must-revalidate forbids serving it stale");

    // No directive and no configured default: the error goes through.
    h.run(req("GET", "/c", &[]), &ok(CACHEABLE, &[b"old"]));
    h.now += 70_000;
    let s = h.run(req("GET", "/c", &[]), &failing(503));
    assert!(s.hit.is_none());
}

#[test]
fn stale_if_error_default_applies_to_responses_without_the_directive() {
    let cfg = Config {
        stale: crate::config::StaleConfig {
            while_revalidate_s: 0,
            if_error_s: 300,
        },
        ..Config::default()
    };
    let mut h = Harness::new(cfg);
    h.run(req("GET", "/a", &[]), &ok(CACHEABLE, &[b"old"]));
    h.now += 200_000;
    let s = h.run(req("GET", "/a", &[]), &failing(502));
    assert_eq!(s.body(), b"old");
    // The response's own directive wins over the default, even when smaller.
    let own = [("cache-control", "max-age=10, stale-if-error=5")];
    h.run(req("GET", "/b", &[]), &ok(&own, &[b"old"]));
    h.now += 20_000;
    assert!(h.run(req("GET", "/b", &[]), &failing(502)).hit.is_none());
}

#[test]
fn a_revalidation_that_meets_an_origin_error_answers_from_the_stale_copy() {
    let mut h = Harness::new(Config::default());
    let v = [
        ("cache-control", "max-age=10, stale-if-error=60"),
        ("etag", "\"v1\""),
    ];
    h.run(req("GET", "/a", &[]), &ok(&v, &[b"v1"]));
    h.now += 20_000;
    let s = h.run(req("GET", "/a", &[]), &failing(500));
    assert!(!s.conditions.is_empty(), "revalidated with the ETag");
    assert_eq!(s.body(), b"v1");
    let s = h.run(req("GET", "/a", &[]), &not_modified(&[("etag", "\"v1\"")]));
    assert_eq!(s.body(), b"v1");
    assert!(s.events.contains(&Event::Revalidated));
    assert!(!s.events.contains(&Event::StaleIfError));
}

#[test]
fn a_stale_copy_for_errors_needs_room_in_the_recording_budget() {
    let mut h = Harness::new(Config::default());
    h.worker = worker(4, 0);
    let sie = [("cache-control", "max-age=10, stale-if-error=60")];
    h.run(req("GET", "/a", &[]), &ok(&sie, &[b"abc"]));
    h.now += 20_000;
    let _held = {
        let mut r = Reservation::new(h.worker.budget.clone());
        assert!(r.grow(2));
        r
    };
    let s = h.run(req("GET", "/a", &[]), &failing(503));
    assert!(s.hit.is_none(), "3 bytes do not fit beside the 2 held");
}
