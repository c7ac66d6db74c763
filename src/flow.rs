//! The per-request state machine: lookup -> hit | miss (record, publish) | bypass.
//!
//! Pure: it never calls the host. The adapter (`host/stream.rs`) feeds it host events with the
//! time (`now_ms`, unix ms) and carries out what each `handle_*` returns. Counters come out as
//! [`Event`]s drained with [`Flow::take_events`].

use crate::budget::{MemoryBudget, Reservation};
use crate::cache_status::{self, Fwd};
use crate::conditional::{self, Precondition};
use crate::config::{Config, Method};
use crate::entry::{self, Decoded, EntryError, EntryWriter, ResponseMeta, VariantsMeta};
use crate::http::{self, RequestHead, ResponseHead};
use crate::key::{CacheKey, Vary};
use crate::memory::{MemoryTier, Remembered};
use crate::policy::{
    self, BypassReason, CacheControl, Exchange, NotStored, RequestPolicy, Reuse, Storable,
    StoredFreshness,
};
use crate::purge::{self, PurgeRequest};
use crate::range::{self, RangeAnswer};
pub use crate::reply::{Body, Reply, ReplyHeaders};
use crate::revalidate;
pub use crate::store::PurgeCommand;
use crate::store::{Refresh, StoreError, VariantWrite, Write};
use std::cell::RefCell;
use std::rc::Rc;

/// Something worth counting happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A store lookup was sent (one per round trip).
    Lookup,
    Hit,
    Miss,
    /// The request was not the cache's business (method, upgrade, `no-store`, `no-cache`).
    Bypass,
    StoreError(StoreError),
    /// A stored value failed validation (and will be overwritten by the next fetch).
    CorruptEntry(EntryError),
    /// A stored value carried another key's digest: a foreign write, or a value under the wrong key.
    KeyMismatch,
    /// A response was seen and not stored, and why.
    NotStored(NotStored),
    /// The body outgrew `max_body_bytes`: the recording was dropped, the response streamed on.
    RecordingTooLarge,
    /// The worker's recordings together reached `max_recording_bytes`: this one was dropped.
    RecordingOverBudget,
    /// The response ended without completing (reset, trailers, client gone): nothing published.
    RecordingAborted,
    /// A stale entry was confirmed by the origin (304) and served.
    Revalidated,
    /// A hit served from the in-proxy tier (also counted as a hit).
    MemoryHit,
    /// An operator's purge ran in the store.
    Purged,
    /// A stored response named more tags than are recorded (or tags too long): those were
    /// left out, and a purge by them will not find it.
    TagsDropped,
    /// A successful unsafe request invalidated stored resources.
    Invalidated,
}

/// What to do after the request headers.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestStep {
    /// Read this key from the store and hold the request until the answer.
    Lookup(String),
    /// Let the request go on (no lookup).
    Continue,
    /// Answer at once (a refused purge).
    Reply(OwnedReply),
    /// Run this purge in the store, hold the request, then answer with
    /// [`Flow::handle_purge_reply`].
    Purge(PurgeCommand),
    /// The in-proxy tier had the answer (or part of it): carry this step out as if the store
    /// had answered.
    Decided(LookupStep<'static>),
}

/// What to do after a store answer.
#[derive(Debug, PartialEq, Eq)]
pub enum LookupStep<'b> {
    /// Read this key too (the variant selected by Vary) and keep holding the request.
    Lookup(String),
    /// Answer from the cache.
    Respond(Reply<'b>),
    /// Release the request to the origin with these headers added: the stored entry's
    /// validators, so the origin can answer 304.
    Revalidate(Vec<(String, String)>),
    /// Release the request to the origin.
    Continue,
}

/// What to do after the response headers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResponseStep {
    /// The `Cache-Status` value to set on the response.
    pub cache_status: Option<String>,
    /// A header to remove before the response goes on (the targeted cache-control field,
    /// meant for this cache only).
    pub remove_header: Option<String>,
    /// A write to publish: a complete recording (a response with no body), or the refreshed
    /// metadata of a revalidated entry.
    pub publish: Option<Write>,
    /// Resources (their keys) to remove: this was a successful unsafe request (RFC 9111 §4.4).
    pub invalidate: Vec<String>,
    /// Replace the origin's answer (a 304 to our revalidation) with this local reply.
    pub respond: Option<OwnedReply>,
}

/// A local reply that owns its body (the stored copy kept across a revalidation).
#[derive(Debug, PartialEq, Eq)]
pub struct OwnedReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Where a response comes from, as far as storing it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The origin answered.
    Origin,
    /// Envoy answered itself (no route, upstream connect failure, timeout): never stored.
    Envoy,
    /// The origin answered with a header the host can't hand back verbatim (not UTF-8).
    Unreplayable,
}

enum State {
    /// Before the request headers.
    Start,
    /// Waiting for the store's answer for the primary key; the request is held.
    AwaitPrimary(Lookup),
    /// The primary key held a variants record; waiting for the variant's entry.
    AwaitVariant(Lookup, CacheKey),
    /// Answered from the cache; our local reply passes back through the response callbacks
    /// and must be left alone.
    ServingHit,
    /// A purge is running in the store; the request waits for its answer.
    AwaitPurge,
    /// Sent to the origin; whether to record is decided on the response headers.
    Forwarded(Forward),
    /// Copying the response as it streams past.
    Recording(Box<Recording>),
    /// Nothing more to do for this stream.
    Done,
}

struct Lookup {
    req: RequestHead,
    /// The request's Cache-Control: its limits on age and staleness, `only-if-cached`.
    req_cc: CacheControl,
    method: Method,
    primary: CacheKey,
}

struct Forward {
    req: RequestHead,
    /// `None` when the response must not be recorded (bypass, HEAD).
    primary: Option<CacheKey>,
    fwd: Fwd,
    detail: Option<&'static str>,
    request_ms: u64,
    /// Set when the request went out with the stored entry's validators.
    revalidation: Option<Box<Revalidation>>,
}

/// Where a stored entry was read from.
struct StoredAt {
    /// The entry's own key (the variant's for a varying resource).
    entry_key: String,
    /// The variants record's key, for a variant.
    record_key: Option<String>,
    /// The whole stored value's length: a refresh applies only to that same value.
    value_len: u64,
}

/// How an entry about to be served was found (the keys are only copied if it must be
/// revalidated).
struct FoundAt {
    /// The variant's key, for a varying resource.
    variant: Option<CacheKey>,
    /// The whole stored value's length.
    value_len: u64,
    /// Found in the in-proxy tier.
    from_memory: bool,
}

/// A stale entry being revalidated: what a 304 is answered from.
struct Revalidation {
    stored_at: StoredAt,
    meta: ResponseMeta,
    body: Vec<u8>,
    /// The copy of the body counts against the worker's recording budget.
    _reservation: Reservation,
}

/// A value found for a key, decoded.
enum Found<'b> {
    Response {
        meta: Rc<ResponseMeta>,
        value: Value<'b>,
    },
    Variants(VariantsMeta),
}

/// A whole stored value (already validated): borrowed from the store's answer, or shared with
/// the in-proxy tier.
enum Value<'b> {
    Borrowed(&'b [u8]),
    Shared(Rc<[u8]>),
}

impl<'b> Value<'b> {
    fn len(&self) -> usize {
        match self {
            Value::Borrowed(v) => v.len(),
            Value::Shared(v) => v.len(),
        }
    }

    fn is_in_memory(&self) -> bool {
        matches!(self, Value::Shared(_))
    }

    /// The body: `body_len` bytes where the entry format puts it.
    fn body(&self, body_len: usize) -> Body<'b> {
        let (start, end) = (entry::BODY_START, entry::BODY_START + body_len);
        match self {
            Value::Borrowed(v) => Body::Borrowed(&v[start..end]),
            Value::Shared(v) => Body::Shared(v.clone(), start, end),
        }
    }
}

struct Recording {
    primary: CacheKey,
    variant: Option<(CacheKey, Vec<String>)>,
    writer: EntryWriter,
    meta: ResponseMeta,
    ttl_ms: u64,
    /// Content-Length, if the origin sent one: a body of another length is not published.
    expected_len: Option<u64>,
    /// The body bytes held, counted against the worker's budget until the recording ends.
    reservation: Reservation,
    /// Tag sets (their keys) that will list this resource.
    tags: Vec<String>,
}

pub struct Flow {
    cfg: Rc<Config>,
    worker: Rc<Worker>,
    state: State,
    events: Vec<Event>,
}

/// What the flows of one worker VM share: the recording budget and the in-proxy tier.
#[derive(Debug)]
pub struct Worker {
    pub budget: Rc<MemoryBudget>,
    pub memory: RefCell<MemoryTier>,
}

impl Worker {
    pub fn new(cfg: &Config) -> Rc<Worker> {
        Rc::new(Worker {
            budget: MemoryBudget::new(cfg.max_recording_bytes),
            memory: RefCell::new(
                MemoryTier::new(cfg.memory.max_bytes, cfg.memory.max_age_ms)
                    .with_tombstones(longest_lookup_ms(cfg)),
            ),
        })
    }
}

/// The longest a lookup can wait for its answer (`store.timeout_ms` plus the transfer
/// allowance of the largest entry), plus a margin: how long a removed key stays buried.
fn longest_lookup_ms(cfg: &Config) -> u64 {
    let max_mib = (cfg.max_body_bytes as u64 >> 20) + 2;
    cfg.store.timeout_ms + cfg.store.large_entry_ms_per_mib * max_mib + 100
}

impl Flow {
    /// A flow for one request; `worker` is shared by every flow of the worker VM.
    pub fn new(cfg: Rc<Config>, worker: Rc<Worker>) -> Flow {
        Flow {
            cfg,
            worker,
            state: State::Start,
            events: Vec::new(),
        }
    }

    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// True while response body chunks are wanted (the adapter skips copying them otherwise).
    pub fn wants_body(&self) -> bool {
        matches!(self.state, State::Recording(_))
    }

    /// The store's answer to a purge: how many resources were removed, or why not.
    pub fn handle_purge_reply(&mut self, result: Result<u64, StoreError>) -> OwnedReply {
        if let Err(e) = result {
            self.events.push(Event::StoreError(e));
        } else {
            self.events.push(Event::Purged);
        }
        self.state = State::ServingHit;
        purge::purge_reply(result)
    }

    /// True when the response being sent is our own local reply.
    pub fn is_serving_hit(&self) -> bool {
        matches!(self.state, State::ServingHit)
    }

    pub fn handle_request_headers(&mut self, now_ms: u64, req: RequestHead) -> RequestStep {
        if req.method == purge::PURGE_METHOD {
            self.events.push(Event::Bypass);
            return match purge::purge_request(&self.cfg, &req) {
                PurgeRequest::Refused(reply) => {
                    self.state = State::ServingHit;
                    RequestStep::Reply(reply)
                }
                PurgeRequest::Resources(keys) => {
                    self.bury(&keys, now_ms);
                    self.state = State::AwaitPurge;
                    RequestStep::Purge(PurgeCommand::Resources(keys))
                }
                PurgeRequest::Tags(keys) => {
                    // Which keys carry the tags only the store knows: this worker's tier
                    // forgets everything (the others within its max age).
                    self.worker.memory.borrow_mut().forget_all(now_ms);
                    self.state = State::AwaitPurge;
                    RequestStep::Purge(PurgeCommand::Tags(keys))
                }
            };
        }
        match policy::request_policy(&self.cfg, &req) {
            RequestPolicy::Lookup(method) => {
                let primary = CacheKey::primary(&self.cfg, &req);
                let recalled = self.recall(&primary.redis_key, now_ms);
                let lookup = Lookup {
                    req_cc: CacheControl::parse(req.values("cache-control")),
                    req,
                    method,
                    primary,
                };
                if let Some(found) = recalled {
                    return RequestStep::Decided(self.handle_found(now_ms, lookup, None, found));
                }
                let key = lookup.primary.redis_key.clone();
                self.events.push(Event::Lookup);
                self.state = State::AwaitPrimary(lookup);
                RequestStep::Lookup(key)
            }
            RequestPolicy::Refresh(method) => {
                self.events.push(Event::Bypass);
                // Only a GET response is a whole entry; a HEAD answer has no body to store.
                let primary = (method == Method::Get).then(|| CacheKey::primary(&self.cfg, &req));
                self.state = State::Forwarded(Forward {
                    req,
                    primary,
                    fwd: Fwd::Request,
                    detail: None,
                    request_ms: now_ms,
                    revalidation: None,
                });
                RequestStep::Continue
            }
            RequestPolicy::Bypass(reason) => {
                self.events.push(Event::Bypass);
                let fwd = match reason {
                    BypassReason::Method => Fwd::Method,
                    BypassReason::NoStore | BypassReason::Upgrade => Fwd::Bypass,
                };
                self.state = State::Forwarded(Forward {
                    req,
                    primary: None,
                    fwd,
                    detail: None,
                    request_ms: now_ms,
                    revalidation: None,
                });
                RequestStep::Continue
            }
        }
    }

    /// The store's answer to the last `Lookup`: a value, `None` for a missing key, or an error.
    pub fn handle_store_reply<'b>(
        &mut self,
        now_ms: u64,
        reply: Result<Option<&'b [u8]>, StoreError>,
    ) -> LookupStep<'b> {
        let (lookup, variant) = match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitPrimary(l) => (l, None),
            State::AwaitVariant(l, v) => (l, Some(v)),
            other => {
                // A late or unexpected answer: nothing waits for it.
                self.state = other;
                return LookupStep::Continue;
            }
        };
        let value = match reply {
            Ok(v) => v,
            Err(e) => {
                self.events.push(Event::StoreError(e));
                let mut step = self.forward(now_ms, lookup, Fwd::Miss, Some(e.as_str()));
                if !e.may_accept_writes() {
                    // Recording for a store that just refused a read only adds two failing
                    // writes (and their retries) per miss during an outage.
                    if let State::Forwarded(f) = &mut self.state {
                        f.primary = None;
                    }
                    step = LookupStep::Continue;
                }
                return step;
            }
        };
        let miss = if variant.is_some() {
            Fwd::VaryMiss
        } else {
            Fwd::UriMiss
        };
        let Some(value) = value else {
            self.events.push(Event::Miss);
            return self.forward(now_ms, lookup, miss, None);
        };
        let found = match entry::decode(value) {
            // The body is found again from the metadata: decode checked where it lies.
            Ok(Decoded::Response { meta, body: _ }) => Found::Response {
                meta: Rc::new(meta),
                value: Value::Borrowed(value),
            },
            Ok(Decoded::Variants(v)) => Found::Variants(v),
            Err(e) => {
                self.events.push(Event::CorruptEntry(e));
                self.events.push(Event::Miss);
                return self.forward(now_ms, lookup, miss, Some("invalid-entry"));
            }
        };
        self.handle_found(now_ms, lookup, variant, found)
    }

    /// A value for the current key, from the store or the in-proxy tier: check that it belongs
    /// to this request's key, then follow a variants record or serve the response.
    fn handle_found<'b>(
        &mut self,
        now_ms: u64,
        lookup: Lookup,
        variant: Option<CacheKey>,
        found: Found<'b>,
    ) -> LookupStep<'b> {
        let miss = if variant.is_some() {
            Fwd::VaryMiss
        } else {
            Fwd::UriMiss
        };
        let expected = variant.as_ref().unwrap_or(&lookup.primary);
        match found {
            Found::Variants(v) if variant.is_none() => {
                if v.key_digest != lookup.primary.digest || v.headers.is_empty() {
                    self.events.push(Event::KeyMismatch);
                    self.events.push(Event::Miss);
                    return self.forward(now_ms, lookup, miss, Some("invalid-entry"));
                }
                let vkey = lookup
                    .primary
                    .variant(&self.cfg.namespace, &v.headers, &lookup.req);
                self.remember(
                    &lookup.primary.redis_key,
                    Remembered::Variants(v),
                    now_ms,
                    u64::MAX,
                );
                let key = vkey.redis_key.clone();
                if let Some(found) = self.recall(&key, now_ms) {
                    return self.handle_found(now_ms, lookup, Some(vkey), found);
                }
                self.events.push(Event::Lookup);
                self.state = State::AwaitVariant(lookup, vkey);
                LookupStep::Lookup(key)
            }
            Found::Response { meta, value } if meta.key_digest == expected.digest => {
                let from_memory = value.is_in_memory();
                if !from_memory {
                    self.remember_response(&expected.redis_key, &meta, &value, now_ms);
                }
                let value_len = value.len() as u64;
                let body = value.body(meta.body_len as usize);
                let found = FoundAt {
                    variant,
                    value_len,
                    from_memory,
                };
                self.serve(now_ms, lookup, found, meta, body)
            }
            _ => {
                self.events.push(Event::KeyMismatch);
                self.events.push(Event::Miss);
                self.forward(now_ms, lookup, miss, Some("invalid-entry"))
            }
        }
    }

    /// The in-proxy tier's value for `key`, if it has one.
    fn recall(&mut self, key: &str, now_ms: u64) -> Option<Found<'static>> {
        let item = self.worker.memory.borrow_mut().get(key, now_ms)?;
        Some(match item {
            Remembered::Variants(v) => Found::Variants(v),
            Remembered::Response { meta, value } => Found::Response {
                meta,
                value: Value::Shared(value),
            },
        })
    }

    fn remember(&self, key: &str, item: Remembered, now_ms: u64, fresh_until_ms: u64) {
        let mut memory = self.worker.memory.borrow_mut();
        if memory.enabled() {
            memory.insert(key, item, now_ms, fresh_until_ms);
        }
    }

    /// Keeps a response read from the store in the in-proxy tier while it is fresh and usable
    /// without validation (a copy of the value: only when the tier is on).
    fn remember_response(
        &self,
        key: &str,
        meta: &Rc<ResponseMeta>,
        value: &Value<'_>,
        now_ms: u64,
    ) {
        if !self.worker.memory.borrow().enabled() || meta.no_cache {
            return;
        }
        // Fresh until (to the millisecond): stored at + the lifetime left when it was stored.
        let fresh_until_ms = meta.stored_at_ms.saturating_add(
            meta.lifetime_s
                .saturating_sub(meta.initial_age_s)
                .saturating_mul(1000),
        );
        if fresh_until_ms <= now_ms {
            return;
        }
        let item = Remembered::Response {
            meta: Rc::clone(meta),
            value: match value {
                Value::Borrowed(v) => Rc::from(*v),
                Value::Shared(v) => v.clone(),
            },
        };
        self.remember(key, item, now_ms, fresh_until_ms);
    }

    /// Forgets keys this worker removed from the store (other workers see it within the
    /// tier's max age).
    /// Drops invalidated or purged keys from this worker's tier, and keeps it from taking
    /// back a value read before now (see `MemoryTier::forget`).
    fn bury(&self, keys: &[String], now_ms: u64) {
        let mut memory = self.worker.memory.borrow_mut();
        for k in keys {
            memory.forget(k, now_ms);
        }
    }

    fn forget(&self, keys: &[String]) {
        let mut memory = self.worker.memory.borrow_mut();
        for k in keys {
            memory.remove(k);
        }
    }

    fn serve<'b>(
        &mut self,
        now_ms: u64,
        lookup: Lookup,
        found: FoundAt,
        meta: Rc<ResponseMeta>,
        body: Body<'b>,
    ) -> LookupStep<'b> {
        let from_memory = found.from_memory;
        let freshness = StoredFreshness {
            lifetime_s: meta.lifetime_s,
            age_s: policy::current_age_s(meta.stored_at_ms, meta.initial_age_s, now_ms),
            no_cache: meta.no_cache,
            must_revalidate: meta.must_revalidate,
        };
        if policy::reuse(freshness, &lookup.req_cc) == Reuse::Validate {
            self.events.push(Event::Miss);
            let meta = Rc::unwrap_or_clone(meta);
            let stored_at = StoredAt {
                entry_key: found
                    .variant
                    .as_ref()
                    .unwrap_or(&lookup.primary)
                    .redis_key
                    .clone(),
                record_key: found
                    .variant
                    .is_some()
                    .then(|| lookup.primary.redis_key.clone()),
                value_len: found.value_len,
            };
            return self.revalidate_or_forward(now_ms, lookup, stored_at, meta, body.bytes());
        }
        // Several ranges make a multipart answer: the origin's to build.
        let ranged = lookup.method == Method::Get && meta.status == 200;
        let range = if ranged {
            range::answer(lookup.req.header("range"), body.len() as u64)
        } else {
            RangeAnswer::Full
        };
        if range == RangeAnswer::Multiple {
            self.events.push(Event::Bypass);
            return self.forward(now_ms, lookup, Fwd::Bypass, Some("multiple-ranges"));
        }
        self.events.push(Event::Hit);
        if from_memory {
            self.events.push(Event::MemoryHit);
        }
        let stored = &meta.headers;
        let detail = from_memory.then_some("memory");
        let ours = cache_status::append(
            http::header_values(stored, "cache-status"),
            cache_status::hit(&self.cfg.cache_name, freshness.ttl_s(), detail),
        );
        let not_ours = |n: &str| n != "cache-status";
        // The lines added below: cache-status, age, date, and maybe content-range.
        const ADDED: usize = 4;
        // RFC 9110 §13.2.1: preconditions apply only to a 2xx answer.
        let (status, mut headers, body) = if (200..300).contains(&meta.status)
            && conditional::evaluate(&lookup.req, stored) == Precondition::NotModified
        {
            let has_etag = stored.iter().any(|(n, _)| n == "etag");
            let kept = |n: &str| conditional::kept_in_not_modified(n, has_etag);
            (
                304,
                ReplyHeaders::stored(&meta, ADDED, kept),
                body.nothing(),
            )
        } else {
            match range {
                RangeAnswer::Partial { first, last } => {
                    let len = body.len();
                    let mut h = ReplyHeaders::stored(&meta, ADDED, not_ours);
                    h.push("content-range", format!("bytes {first}-{last}/{len}"));
                    (206, h, body.range(first as usize, last as usize))
                }
                RangeAnswer::Unsatisfiable => {
                    let len = body.len();
                    let mut h = ReplyHeaders::stored(&meta, ADDED, |n| {
                        not_ours(n) && !matches!(n, "content-type" | "content-encoding")
                    });
                    h.push("content-range", format!("bytes */{len}"));
                    (416, h, body.nothing())
                }
                RangeAnswer::Full | RangeAnswer::Multiple => (
                    meta.status,
                    ReplyHeaders::stored(&meta, ADDED, not_ours),
                    body,
                ),
            }
        };
        headers.push("cache-status", ours);
        headers.push("age", freshness.age_s.to_string());
        // The stored Date is replayed with the rest (recording adds one when the origin sent
        // none); an entry without one gets its receive time.
        if !stored.iter().any(|(n, _)| n == "date") {
            headers.push("date", policy::format_http_date(meta.stored_at_ms));
        }
        self.state = State::ServingHit;
        // For HEAD, Envoy's local reply sends the headers with the body's content-length and
        // no body, which is exactly a HEAD answer: the same reply serves both methods.
        LookupStep::Respond(Reply {
            status,
            headers,
            body,
        })
    }

    /// A stale (or `no-cache`) entry: ask the origin with its validators whether it is still
    /// current, keeping a copy to answer from on a 304. Without validators, or when the
    /// client sent preconditions or a Range of its own (the origin's answer is then for the
    /// client, not for us), or without room in the recording budget: a plain forward.
    fn revalidate_or_forward<'b>(
        &mut self,
        now_ms: u64,
        lookup: Lookup,
        stored_at: StoredAt,
        meta: ResponseMeta,
        body: &[u8],
    ) -> LookupStep<'b> {
        let conditions = revalidate::conditional_headers(&meta.headers);
        let client_owns_conditions = ["if-none-match", "if-modified-since", "range"]
            .iter()
            .any(|h| lookup.req.has(h));
        let mut reservation = Reservation::new(self.worker.budget.clone());
        if conditions.is_empty()
            || client_owns_conditions
            || lookup.req_cc.only_if_cached
            || !reservation.grow(body.len())
        {
            return self.forward(now_ms, lookup, Fwd::Stale, None);
        }
        let step = self.forward(now_ms, lookup, Fwd::Stale, None);
        if let State::Forwarded(f) = &mut self.state {
            f.revalidation = Some(Box::new(Revalidation {
                stored_at,
                meta,
                body: body.to_vec(),
                _reservation: reservation,
            }));
            return LookupStep::Revalidate(conditions);
        }
        step
    }

    fn forward<'b>(
        &mut self,
        now_ms: u64,
        lookup: Lookup,
        fwd: Fwd,
        detail: Option<&'static str>,
    ) -> LookupStep<'b> {
        // RFC 9111 §5.2.1.7: nothing usable stored and the client won't wait for the origin.
        if lookup.req_cc.only_if_cached {
            self.state = State::ServingHit;
            let mut headers = ReplyHeaders::added();
            headers.push(
                "cache-status",
                cache_status::detail_only(&self.cfg.cache_name, "only-if-cached"),
            );
            return LookupStep::Respond(Reply {
                status: 504,
                headers,
                body: Body::Borrowed(b""),
            });
        }
        // A HEAD response has no body to record; only GETs fill the cache.
        let primary = (lookup.method == Method::Get).then_some(lookup.primary);
        self.state = State::Forwarded(Forward {
            req: lookup.req,
            primary,
            fwd,
            detail,
            request_ms: now_ms,
            revalidation: None,
        });
        LookupStep::Continue
    }

    /// The response's headers, and where they come from.
    pub fn handle_response_headers(
        &mut self,
        now_ms: u64,
        resp: &ResponseHead,
        end_of_stream: bool,
        source: Source,
    ) -> ResponseStep {
        let mut fwd = match std::mem::replace(&mut self.state, State::Done) {
            State::Forwarded(f) => f,
            State::ServingHit => {
                self.state = State::ServingHit;
                return ResponseStep::default();
            }
            // The request never reached a lookup decision (an Envoy local reply before the
            // request headers were complete, or one sent while a lookup was pending).
            _ => return ResponseStep::default(),
        };
        // Anything but a 304 replaces the stored entry (or is passed on): the copy goes.
        if let Some(reval) = fwd.revalidation.take()
            && source == Source::Origin
            && resp.status == 304
        {
            return self.answer_revalidated(now_ms, fwd, *reval, resp);
        }
        let invalidate = if source == Source::Envoy {
            Vec::new()
        } else {
            purge::invalidation_targets(&self.cfg, &fwd.req, resp)
        };
        if !invalidate.is_empty() {
            self.events.push(Event::Invalidated);
            self.bury(&invalidate, now_ms);
        }
        let mut recording = None;
        if let Some(primary) = fwd.primary {
            let decision = match source {
                Source::Origin => self.storability(&fwd.req, resp, fwd.request_ms, now_ms),
                Source::Envoy => Err(NotStored::NotFromOrigin),
                Source::Unreplayable => Err(NotStored::BadHeader),
            };
            match decision {
                Ok(s) => recording = Some(self.start_recording(now_ms, primary, &fwd.req, resp, s)),
                Err(why) => self.events.push(Event::NotStored(why)),
            }
        }
        let status = cache_status::forwarded(
            &self.cfg.cache_name,
            fwd.fwd,
            Some(resp.status),
            recording.is_some(),
            fwd.detail,
        );
        let cache_status = Some(cache_status::append(resp.values("cache-status"), status));
        let mut step = ResponseStep {
            cache_status,
            remove_header: policy::targeted_field(&self.cfg, resp).map(str::to_string),
            publish: None,
            invalidate,
            respond: None,
        };
        if let Some(rec) = recording {
            self.state = State::Recording(Box::new(rec));
            if end_of_stream {
                step.publish = self.complete();
            }
        }
        step
    }

    /// The origin confirmed the stored entry (304): answer from it with its headers updated,
    /// and write only the new metadata to the store (§4.3.4).
    fn answer_revalidated(
        &mut self,
        now_ms: u64,
        fwd: Forward,
        reval: Revalidation,
        not_modified: &ResponseHead,
    ) -> ResponseStep {
        self.events.push(Event::Revalidated);
        let targeted = policy::targeted_field(&self.cfg, not_modified);
        let mut merged =
            revalidate::merge_not_modified(&reval.meta.headers, not_modified, targeted);
        if not_modified.header("date").is_none() {
            // A 304 without Date is dated when received (RFC 9110 §6.6.1): the refreshed
            // response's age counts from now, not from the first response's Date.
            merged.retain(|(n, _)| n != "date");
            merged = stored_with_date(merged, now_ms);
        }
        // Freshness and age come from the updated headers plus the 304's own Date and Age.
        let mut head = ResponseHead {
            status: reval.meta.status,
            headers: merged.clone(),
        };
        // The merged headers carry the 304's Date (or the stored one); its Age counts too.
        if let Some(v) = not_modified.header("age") {
            head.headers.push(("age".to_string(), v.to_string()));
        }
        let mut meta = reval.meta;
        meta.headers = merged;
        let mut publish = None;
        match self.storability(&fwd.req, &head, fwd.request_ms, now_ms) {
            Ok(s) => {
                meta.stored_at_ms = now_ms;
                meta.lifetime_s = s.lifetime_s;
                meta.initial_age_s = s.initial_age_s;
                meta.no_cache = s.no_cache;
                meta.must_revalidate = s.must_revalidate;
                let at = &reval.stored_at;
                let (key, variant) = match &at.record_key {
                    Some(record) => (
                        record.clone(),
                        Some(VariantWrite {
                            key: at.entry_key.clone(),
                            record: Vec::new(),
                        }),
                    ),
                    None => (at.entry_key.clone(), None),
                };
                publish = Some(Write {
                    key,
                    variant,
                    ttl_ms: s.store_ttl_ms(self.cfg.keep_stale_s),
                    entry: entry::encode_tail(&entry::Meta::Response(meta.clone())),
                    refresh: Some(Refresh {
                        keep: entry::prefix_len(reval.body.len()) as u64,
                        expected_len: at.value_len,
                    }),
                    tags: Vec::new(),
                });
            }
            Err(why) => self.events.push(Event::NotStored(why)),
        }
        let ours = cache_status::forwarded(
            &self.cfg.cache_name,
            Fwd::Stale,
            Some(304),
            publish.is_some(),
            None,
        );
        let ours = cache_status::append(http::header_values(&meta.headers, "cache-status"), ours);
        let mut headers = meta.headers;
        headers.retain(|(n, _)| n != "cache-status");
        headers.push(("cache-status".into(), ours));
        headers.push(("age".into(), meta.initial_age_s.to_string()));
        // Our local reply comes back through the response callbacks: leave it alone.
        self.state = State::ServingHit;
        ResponseStep {
            cache_status: None,
            remove_header: None,
            publish,
            invalidate: Vec::new(),
            respond: Some(OwnedReply {
                status: meta.status,
                headers,
                body: reval.body,
            }),
        }
    }

    fn storability(
        &self,
        req: &RequestHead,
        resp: &ResponseHead,
        request_ms: u64,
        now_ms: u64,
    ) -> Result<Storable, NotStored> {
        let s = policy::storability(
            &self.cfg,
            req,
            resp,
            Exchange {
                request_ms,
                response_ms: now_ms,
            },
        )?;
        let too_long = resp
            .header("content-length")
            .and_then(|l| l.trim().parse::<u64>().ok())
            .is_some_and(|l| l > self.cfg.max_body_bytes as u64);
        if too_long {
            // Known too big before the first byte: don't even start.
            return Err(NotStored::TooLarge);
        }
        Ok(s)
    }

    fn start_recording(
        &mut self,
        now_ms: u64,
        primary: CacheKey,
        req: &RequestHead,
        resp: &ResponseHead,
        s: Storable,
    ) -> Recording {
        let variant = match &s.vary {
            Vary::Headers(names) => Some((
                primary.variant(&self.cfg.namespace, names, req),
                names.clone(),
            )),
            Vary::None | Vary::Any => None,
        };
        let key_digest = match &variant {
            Some((v, _)) => v.digest,
            None => primary.digest,
        };
        let (tags, tags_over) = purge::response_tags(&self.cfg, resp);
        if tags_over > 0 {
            self.events.push(Event::TagsDropped);
        }
        Recording {
            expected_len: resp
                .header("content-length")
                .and_then(|l| l.trim().parse().ok()),
            ttl_ms: s.store_ttl_ms(self.cfg.keep_stale_s),
            meta: ResponseMeta {
                status: resp.status,
                headers: stored_with_date(
                    policy::stored_headers(
                        resp,
                        s.strip_set_cookie,
                        policy::targeted_field(&self.cfg, resp),
                    ),
                    now_ms,
                ),
                chunks: Vec::new(),
                stored_at_ms: now_ms,
                lifetime_s: s.lifetime_s,
                initial_age_s: s.initial_age_s,
                no_cache: s.no_cache,
                must_revalidate: s.must_revalidate,
                key_digest,
                body_len: 0,
                body_hash: 0,
            },
            primary,
            variant,
            writer: EntryWriter::new(),
            reservation: Reservation::new(self.worker.budget.clone()),
            tags,
        }
    }

    /// A chunk of the response body, as the host delivered it. Returns the write to publish
    /// once the response completed whole.
    pub fn handle_response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Option<Write> {
        let State::Recording(rec) = &mut self.state else {
            return None;
        };
        if rec.writer.body_len() + chunk.len() > self.cfg.max_body_bytes {
            self.events.push(Event::RecordingTooLarge);
            self.state = State::Done;
            return None;
        }
        if !rec.reservation.grow(chunk.len()) {
            self.events.push(Event::RecordingOverBudget);
            self.state = State::Done;
            return None;
        }
        rec.writer.push_chunk(chunk);
        // With Content-Length, the client has the whole response with its last byte, before
        // the end of the stream: the recording is complete there, so that its end can wait for
        // the store (read your writes) while the last bytes do.
        let whole = rec.expected_len == Some(rec.writer.body_len() as u64);
        if end_of_stream || whole {
            self.complete()
        } else {
            None
        }
    }

    /// Response trailers: we don't store them, so a response that has them can't be replayed
    /// whole and is not published.
    pub fn handle_response_trailers(&mut self) {
        self.abort_recording();
    }

    /// The recording can't be completed whole (trailers, a body chunk the host could not
    /// give): drop it; the response itself goes on.
    pub fn abort_recording(&mut self) {
        if let State::Recording(_) = self.state {
            self.events.push(Event::RecordingAborted);
            self.state = State::Done;
        }
    }

    /// The stream is over (Envoy's `on_log`). A recording still open here never completed: the
    /// origin reset, or the client went away. Nothing is published.
    pub fn handle_stream_end(&mut self) {
        if let State::Recording(_) = self.state {
            self.events.push(Event::RecordingAborted);
        }
        self.state = State::Done;
    }

    fn complete(&mut self) -> Option<Write> {
        let State::Recording(rec) = std::mem::replace(&mut self.state, State::Done) else {
            return None;
        };
        let rec = *rec;
        if rec
            .expected_len
            .is_some_and(|l| l != rec.writer.body_len() as u64)
        {
            self.events.push(Event::RecordingAborted);
            return None;
        }
        let entry = rec.writer.finish_response(rec.meta);
        // This worker won't serve an older copy from memory once the new one is written.
        self.forget(std::slice::from_ref(&rec.primary.redis_key));
        if let Some((v, _)) = &rec.variant {
            self.forget(std::slice::from_ref(&v.redis_key));
        }
        let (key, variant) = match rec.variant {
            None => (rec.primary.redis_key, None),
            Some((vkey, headers)) => {
                let record = entry::encode_variants(VariantsMeta {
                    headers,
                    key_digest: rec.primary.digest,
                });
                (
                    rec.primary.redis_key,
                    Some(VariantWrite {
                        key: vkey.redis_key,
                        record,
                    }),
                )
            }
        };
        Some(Write {
            key,
            variant,
            ttl_ms: rec.ttl_ms,
            entry,
            refresh: None,
            tags: rec.tags,
        })
    }
}

/// The headers to store, with a `Date` of the receive time when the origin sent none (RFC 9110
/// §6.6.1: a recipient with a clock adds one to a response it caches): every hit then replays
/// one Date, and `Age` says how old the response is.
fn stored_with_date(mut headers: Vec<(String, String)>, received_ms: u64) -> Vec<(String, String)> {
    if !headers.iter().any(|(n, _)| n == "date") {
        headers.push(("date".into(), policy::format_http_date(received_ms)));
    }
    headers
}

#[cfg(test)]
#[path = "flow_tests.rs"]
mod tests;
