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
use crate::packing::Codec;
use crate::policy::{
    self, BypassReason, CacheControl, Exchange, NotStored, RequestPolicy, Reuse, Storable,
};
use crate::purge::{self, PurgeRequest};
use crate::range::{self, RangeAnswer};
pub use crate::reply::{Body, Reply, ReplyHeaders};
use crate::revalidate;
pub use crate::store::PurgeCommand;

mod lookup;
mod record;
mod serve;

use crate::marks::Marks;
use crate::store::{Looked, Marker, Refresh, StoreError, Unlock, VariantWrite, Write};
use record::Recording;
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
    /// The origin failed (or could not be reached) and a stale entry answered instead
    /// (RFC 5861 §4).
    StaleIfError,
    /// A stale entry answered at once under `stale-while-revalidate` (RFC 5861 §3).
    StaleWhileRevalidate,
    /// A request waited for another's fetch of the same missing entry (collapsed misses).
    CollapseWait,
    /// ... and was answered from the entry that fetch stored.
    Collapsed,
    /// ... and went to the origin after waiting as long as it may.
    CollapseTimeout,
    /// How long, in ms, a request that waited for another's fetch waited.
    CollapseWaitMs(u64),
    /// A request skipped the store lookup: its resource's last response was not storable.
    HitForMiss,
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
    /// Replace the origin's answer (a 304 to our revalidation, or an error the stale entry
    /// answers instead) with this local reply.
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
    /// Set when this request would fetch a missing entry: until when it may wait for
    /// another's fetch of it instead (collapsed misses).
    wait_until: Option<u64>,
    /// When it started waiting for another's fetch, while it waits.
    waited_since: Option<u64>,
    /// It waited for another's fetch, and that wait is over.
    collapsed: bool,
}

/// The fetch of a missing entry this request leads: the lock's key and owner.
struct Lead {
    key: String,
    owner: u64,
}

struct Forward {
    req: RequestHead,
    /// `None` when the response must not be recorded (bypass, HEAD).
    primary: Option<CacheKey>,
    fwd: Fwd,
    detail: Option<&'static str>,
    request_ms: u64,
    /// The stored entry this request went forward for, kept to answer from: set when the
    /// request went out with its validators, or when it may answer an origin error.
    stale: Option<Box<StaleCopy>>,
    /// Set when this request fetches a missing entry others wait for.
    lead: Option<Lead>,
    /// A response that can never be stored marks the resource (hit-for-miss): only after a
    /// miss (nothing stored that the mark would hide), and not when it is marked already.
    marks_uncacheable: bool,
}

/// Where a stored entry was read from.
struct StoredAt {
    /// The entry's own key (the variant's for a varying resource).
    entry_key: String,
    /// The variants record's key, for a variant.
    record_key: Option<String>,
    /// The whole stored value's length: a refresh applies only to that same value.
    value_len: u64,
    /// Its bytes before the metadata tail: what a refresh keeps.
    keep: u64,
}

/// How an entry about to be served was found (the keys are only copied if it must be
/// revalidated).
struct FoundAt {
    /// The variant's key, for a varying resource.
    variant: Option<CacheKey>,
    /// The whole stored value's length.
    value_len: u64,
    /// Its bytes before the metadata tail.
    keep: u64,
    /// Found in the in-proxy tier.
    from_memory: bool,
}

/// A stale entry kept across a forward: what a 304 to our revalidation, or an origin error
/// inside the entry's `stale-if-error` window, is answered from.
struct StaleCopy {
    stored_at: StoredAt,
    meta: ResponseMeta,
    /// The stored body (empty for a background revalidation, which answers no one).
    body: Vec<u8>,
    /// The request went out with the entry's validators: a 304 confirms this copy.
    revalidating: bool,
    /// Inside its `stale-if-error` window (RFC 5861 §4): an error answers with this copy.
    if_error: bool,
    /// The copy of the body counts against the worker's recording budget.
    _reservation: Reservation,
}

pub struct Flow {
    cfg: Rc<Config>,
    worker: Rc<Worker>,
    state: State,
    events: Vec<Event>,
    /// A lock to free or mark (a fetch others waited for ended without an entry, or a
    /// resource turned out not storable), for the adapter to hand to the store.
    unlock: Option<(String, u64, Unlock)>,
    /// The in-proxy tier answered past its max age, the store failing (grace).
    in_grace: bool,
    /// See [`Flow::take_write_lock`].
    write_lock: Option<(String, u64)>,
    /// A revalidation to run in the background (a stale entry was served under
    /// `stale-while-revalidate`).
    background: Option<Box<Background>>,
}

/// How long a background revalidation may take, its callout and its lock: a slow origin is
/// the reason it runs in the background.
pub const BACKGROUND_TIMEOUT_MS: u64 = 30_000;

/// A stale entry served under `stale-while-revalidate` (RFC 5861 §3): its revalidation, for
/// the adapter to run in the background (a callout from the root to the request's upstream),
/// once per key across the fleet (the entry's lock).
pub struct Background {
    /// The entry's key: its lock.
    pub key: String,
    /// The callout's headers: the request's own (pseudo-headers first), with the entry's
    /// validators.
    pub headers: Vec<(String, String)>,
    /// Takes the origin's answer as a forwarded request's: a 304 refreshes the entry, a
    /// storable response replaces it, anything else leaves it as it is.
    pub flow: Flow,
}

/// What the flows of one worker VM share: the recording budget and the in-proxy tier.
#[derive(Debug)]
pub struct Worker {
    pub budget: Rc<MemoryBudget>,
    pub memory: RefCell<MemoryTier>,
    /// Resources whose last response was not storable (hit-for-miss).
    pub uncacheable: RefCell<Marks>,
    /// Entries this worker revalidates in the background (stale-while-revalidate).
    pub revalidating: RefCell<Marks>,
    /// The store is failing (its circuit breaker is open): the in-proxy tier serves in grace.
    pub store_failing: std::cell::Cell<bool>,
    /// zlib, for packed bodies: the host's.
    pub codec: Rc<dyn Codec>,
}

impl Worker {
    /// `seed`: random, per VM (the in-proxy tier's hash). `codec`: the host's zlib.
    pub fn new(cfg: &Config, seed: u64, codec: Rc<dyn Codec>) -> Rc<Worker> {
        Rc::new(Worker {
            codec,
            budget: MemoryBudget::new(cfg.max_recording_bytes),
            memory: RefCell::new(
                MemoryTier::new(cfg.memory.max_bytes, cfg.memory.max_age_ms)
                    .with_tombstones(longest_lookup_ms(cfg))
                    .with_seed(seed),
            ),
            uncacheable: RefCell::default(),
            revalidating: RefCell::default(),
            store_failing: Default::default(),
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
            unlock: None,
            in_grace: false,
            write_lock: None,
            background: None,
        }
    }

    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// The lock of the fetch whose entry the last step's write is, when others wait for it:
    /// the write removes it, and whoever sends the write frees it if the write fails.
    pub fn take_write_lock(&mut self) -> Option<(String, u64)> {
        self.write_lock.take()
    }

    /// A revalidation to run in the background, if the last step served a stale entry under
    /// `stale-while-revalidate`.
    pub fn take_background(&mut self) -> Option<Box<Background>> {
        self.background.take()
    }

    /// The background revalidation's answer did not come (no callout, no lock, a failed
    /// callout): the entry is no longer being revalidated by this worker.
    pub fn revalidation_over(&self, key: &str) {
        self.worker.revalidating.borrow_mut().remove(key);
    }

    /// A lock to free or mark in the store: `(entry key, owner, what it becomes)`.
    pub fn take_unlock(&mut self) -> Option<(String, u64, Unlock)> {
        self.unlock.take()
    }

    /// For the lookup the flow is waiting for: until when the request may wait for another's
    /// fetch if the entry is missing (`None`: it would not fetch it, or collapsing is off).
    pub fn wait_until(&self) -> Option<u64> {
        match &self.state {
            State::AwaitPrimary(l) | State::AwaitVariant(l, _) => l.wait_until,
            _ => None,
        }
    }

    /// The entry is missing and another request fetches it: this one waits for that fetch
    /// (the store's answer comes later, as for any lookup).
    pub fn following(&mut self, now_ms: u64) {
        if let State::AwaitPrimary(l) | State::AwaitVariant(l, _) = &mut self.state
            && l.waited_since.is_none()
        {
            l.waited_since = Some(now_ms);
            self.events.push(Event::CollapseWait);
        }
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
                let req_cc = CacheControl::parse(req.values("cache-control"));
                // Only a GET fills the cache, so only a GET fetches for others; a client that
                // won't wait for the origin won't wait for a fetch either.
                let collapses = self.cfg.collapse.max_wait_ms > 0
                    && method == Method::Get
                    && !req_cc.only_if_cached;
                let lookup = Lookup {
                    req_cc,
                    req,
                    method,
                    primary,
                    wait_until: collapses.then(|| now_ms + self.cfg.collapse.max_wait_ms),
                    waited_since: None,
                    collapsed: false,
                };
                if let Some(found) = recalled {
                    return RequestStep::Decided(self.handle_found(now_ms, lookup, None, found));
                }
                let skip = lookup.method == Method::Get
                    && !lookup.req_cc.only_if_cached
                    && self
                        .worker
                        .uncacheable
                        .borrow_mut()
                        .contains(&lookup.primary.redis_key, now_ms);
                if skip {
                    // Hit-for-miss: its last response was not storable. Still recorded if
                    // this one is.
                    self.events.push(Event::HitForMiss);
                    self.forward(now_ms, lookup, Fwd::UriMiss, Some("hit-for-miss"));
                    if let State::Forwarded(f) = &mut self.state {
                        f.marks_uncacheable = false;
                    }
                    return RequestStep::Continue;
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
                    stale: None,
                    lead: None,
                    marks_uncacheable: false,
                });
                RequestStep::Continue
            }
            RequestPolicy::Bypass(reason) => {
                self.events.push(Event::Bypass);
                let fwd = match reason {
                    BypassReason::Method => Fwd::Method,
                    BypassReason::NoStore | BypassReason::Upgrade | BypassReason::Excluded => {
                        Fwd::Bypass
                    }
                };
                let detail = (reason == BypassReason::Excluded).then_some("excluded");
                self.state = State::Forwarded(Forward {
                    req,
                    primary: None,
                    fwd,
                    detail,
                    request_ms: now_ms,
                    stale: None,
                    lead: None,
                    marks_uncacheable: false,
                });
                RequestStep::Continue
            }
        }
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
            stale: None,
            lead: None,
            marks_uncacheable: matches!(fwd, Fwd::UriMiss | Fwd::VaryMiss),
        });
        LookupStep::Continue
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
mod tests;

#[cfg(test)]
mod collapse_tests;
