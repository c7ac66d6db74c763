//! The outbox: which store commands leave when, and what their answers mean for the requests
//! and writes waiting on them. Pure: fed arrivals ([`Outbox::want`], [`Outbox::write`],
//! [`Outbox::purge`]), answers ([`Outbox::answered`]) and the clock ([`Outbox::handle_timeout`])
//! with `now`, and drained of callouts to send ([`Outbox::poll_send`]), replies for streams
//! ([`Outbox::poll_reply`]) and notes for metrics ([`Outbox::poll_note`]). The proxy-wasm
//! adapter only carries these out (quinn-proto's shape, DESIGN.md).
//!
//! The rules it holds, each defined here once:
//! - **Batching**: a store callout costs Envoy far more CPU (~160 µs) than the lookup costs
//!   Webdis and Redis, so lookups share callouts: while a batch is out, new keys wait and go
//!   together in the next (up to [`MAX_KEYS`]); a key already pending or out is joined, not
//!   asked again; a full batch leaves at once, up to [`MAX_IN_FLIGHT`] out. Writes follow the
//!   same rule (`writes.rs`), and small first-try entries ride with a lookup batch (one
//!   callout for both) while one is out.
//! - **Deadlines**: a request waits for the store at most `store.timeout_ms` after its own
//!   arrival, whatever else is in flight: at its deadline it is answered with a timeout, and
//!   the callout it waited for may still serve the others. A value too large for one answer
//!   extends the deadline of those waiting for it by its transfer allowance.
//! - **Bounded answers**: a lookup answer carries at most [`ANSWER_BYTES`] of values; larger
//!   values come back as their length and are read in pieces of at most that size, so no
//!   answer approaches Envoy's async-client buffer limit.
//! - **Answers proven**: every command carries a fresh nonce its answer must echo; another
//!   command's answer is a store error, for writes and purges too. An answer whose callout was
//!   given up on is ignored.
//! - **Breaker**: consecutive failed callouts open it (`breaker.rs`); while open, lookups and
//!   purges are answered at once with [`StoreError::BreakerOpen`] and writes wait or are
//!   refused.
//! - **Held invalidations**: the response to an unsafe request waits until the store confirmed
//!   the invalidation it causes (RFC 9111 §4.4), at most `store.timeout_ms` from the response:
//!   a GET sent after it must not find the old entry. It leaves before lookups and writes; if
//!   it fails it is retried as a write, and the response goes on anyway (counted).
//! - **Held writes** (read your writes): the end of a recorded response waits until its entry
//!   landed, at most `store.timeout_ms` plus the entry's transfer allowance: a request sent
//!   after the response completed finds the entry, through any proxy.
//! - **Collapsed misses**: a stream that may fetch a missing entry asks its lookup to take the
//!   key's lock. The lookup's answer says whether it took it (the stream leads: one of the
//!   streams asking gets it), or another fetch holds it: those streams then follow
//!   (`collapse.rs`), share one poll per key per interval, and are answered from the entry the
//!   moment it lands: at once from the leader's write when it is this worker's, else by the
//!   next poll. A fetch that ends without an entry frees the lock (a follower leads next) or
//!   marks it (followers go to the origin); a wait ends at the stream's own deadline.

pub mod breaker;
pub mod collapse;
pub mod stream_map;
pub mod tag_purge;
pub mod writes;

use crate::entry::SharedDecoding;
use crate::store::layout::slot;
use crate::store::{
    self, Answer, Command, Expect, Locking, Looked, PurgeCommand, Request, Slot, StoreError,
    StoreWrite, TAIL_LEN, Unlock,
};
use breaker::{Admit, Breaker, BreakerSettings, Change};
use collapse::Followers;
use std::collections::VecDeque;
use std::ops::{Deref, Range};
use std::rc::Rc;
use stream_map::StreamMap;
use tag_purge::{Part, TagPurges};
use writes::{Job, Outcome, WriteQueue};

/// A stream (request) of the worker, by the host's context id.
pub type StreamId = u32;

/// Callouts of one kind (lookups, writes) out at once, when full batches wait (otherwise one).
pub const MAX_IN_FLIGHT: usize = 4;

/// Keys per lookup batch.
pub const MAX_KEYS: usize = 16;

/// Most bytes of values one answer carries, and the size of a piece of a larger value. Well
/// below Envoy's async-client buffer limit (answers of 24 MiB were seen served, 32 MiB failed),
/// and small enough that a piece's transfer fits a short deadline.
pub const ANSWER_BYTES: usize = 4 << 20;

/// Writes riding with a lookup travel under the lookup's deadline and delay its answer by
/// their transfer: only a few small ones ride.
pub const MAX_RIDER_BYTES: usize = 64 << 10;

/// Bytes of pieces out at once, for all the large values a worker reads (four full pieces; more
/// smaller ones: a 1 MiB value is one piece). Values are read one after the other (oldest
/// first), not all at once: N values read together would all finish at about N times one
/// transfer, and all miss a deadline that one of them alone would meet. Also what bounds the
/// memory of single-piece reads (served from their answer: no buffer while queued).
const PIECE_BYTES_OUT: u64 = 4 * ANSWER_BYTES as u64;

/// A write the host refused to dispatch waits this long before it is tried again.
const RETRY_DELAY_MS: u64 = 10;

/// A callout not answered this long after its own timeout is given up on (the host always
/// answers at the timeout; this only guards against an answer that never comes).
const GIVE_UP_GRACE_MS: u64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// `store.timeout_ms`: the most a request waits for a lookup, from its arrival.
    pub lookup_timeout_ms: u64,
    /// `store.publish_timeout_ms`: the deadline of writes and purges.
    pub write_timeout_ms: u64,
    /// `store.large_entry_ms_per_mib`: extra wait per MiB for a value read in pieces.
    pub large_ms_per_mib: u64,
    /// The largest value worth reading (what the filter could have written); a larger one is
    /// not ours.
    pub max_value_bytes: u64,
    /// Bound on the bytes queued writes hold; also bounds the values being read in pieces.
    pub max_queue_bytes: usize,
    pub breaker: BreakerSettings,
    /// `collapse.max_wait_ms`: how long a lock on a missing entry lives (0: misses are not
    /// collapsed).
    pub lock_ms: u64,
    /// `collapse.poll_ms`: how often the followers of a key look it up again.
    pub poll_ms: u64,
    /// `store.redis_cluster`: every callout touches keys of one Redis Cluster slot.
    pub one_slot: bool,
}

/// Bytes of a store answer, shared (never copied) by the replies that use them.
#[derive(Debug, Clone)]
pub struct Bytes {
    buf: Rc<Vec<u8>>,
    range: Range<usize>,
    /// What the first reply to decode these bytes learned of them, for the others sharing
    /// them (the body's checksum, a packed body unpacked).
    decoding: Rc<SharedDecoding>,
}

impl Bytes {
    fn new(buf: Rc<Vec<u8>>, range: Range<usize>) -> Bytes {
        Bytes {
            buf,
            range,
            decoding: Rc::default(),
        }
    }

    /// A value of another Redis type: no bytes, which the entry decoder refuses as a foreign
    /// value (counted, a miss, overwritten by the next write).
    fn foreign() -> Bytes {
        Bytes::new(Rc::default(), 0..0)
    }

    /// What the replies sharing these bytes learn of them once.
    pub fn decoding(&self) -> &SharedDecoding {
        &self.decoding
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buf.get(self.range.clone()).unwrap_or_default()
    }
}

/// What a stream's wait ended with.
#[derive(Debug)]
pub enum Reply {
    /// What the key it wanted holds, or why it is not known.
    Lookup(Result<Looked<Bytes>, StoreError>),
    /// Not an end: the key is missing and another stream fetches it; this one waits for that
    /// fetch (its [`Reply::Lookup`] comes later).
    Following,
    /// How many resources its purge removed.
    Purge(Result<u64, StoreError>),
    /// Whether the store confirmed the invalidation of these keys in time.
    Invalidated(Result<(), StoreError>, Vec<String>),
    /// Whether the store confirmed the stream's entry in time.
    Written(Result<(), StoreError>),
    /// For a background job: the lock it asked for, owned by this nonce, or `None` (held by
    /// someone else, or the store failed).
    Locked(Option<u64>),
}

/// What a held response waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    Invalidation,
    Write,
}

/// Something to count or log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// A write landed (`rode`: in a lookup batch's callout).
    Published {
        bytes: usize,
        rode: bool,
    },
    WriteRetrying(StoreError),
    WriteFailed(StoreError),
    /// An answer that echoed another command's nonce.
    Mismatch,
    /// The breaker opened; the failure that opened it.
    BreakerOpened(StoreError),
    BreakerClosed,
    /// A value too large for one answer was read in pieces.
    LargeRead,
    /// A value larger than any the filter writes: treated as foreign.
    TooLarge,
    /// Writes that rode with a lookup were settled: whether they landed.
    RidersSettled(Result<(), StoreError>),
}

/// A callout to send.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// Report the host's token (or its refusal) with [`Outbox::dispatched`].
    pub nonce: u64,
    pub request: Request<'a>,
    pub timeout_ms: u64,
}

/// A key and the streams waiting for its value.
#[derive(Debug)]
struct Want {
    key: String,
    streams: Vec<StreamId>,
    /// Of `streams`, those that would fetch a missing entry (and may wait for another's fetch
    /// until the time given).
    collapse: Vec<(StreamId, u64)>,
    /// A poll for the key's followers (it may have no stream of its own).
    poll: bool,
}

impl Want {
    fn new(key: String) -> Want {
        Want {
            key,
            streams: Vec::new(),
            collapse: Vec::new(),
            poll: false,
        }
    }
}

/// What a callout carries, and so what its answer settles.
#[derive(Debug)]
enum Carries {
    /// A lookup batch, with writes riding along (possibly none). `probe`: the half-open
    /// breaker's probe.
    Lookup {
        wants: Vec<Want>,
        riders: Vec<Job>,
        probe: bool,
        /// Per want: whether the lookup takes the key's lock if the entry is missing.
        locks: Vec<bool>,
        lock_ms: u64,
    },
    /// A write batch (entries, or one refresh or invalidation).
    Writes(Vec<Job>),
    /// A purge by URL: these resources.
    Purge { stream: StreamId, keys: Vec<String> },
    /// An invalidation a stream's response is held for: the first `sent` of `keys` go to the
    /// store in this callout (on a Cluster the others, in other slots, go as writes).
    Invalidation {
        stream: StreamId,
        keys: Vec<String>,
        sent: usize,
    },
    /// A lock a background job asked for.
    Lock {
        job: StreamId,
        key: String,
        ttl_ms: u64,
    },
    /// A part of a purge by tag on a Cluster (`tag_purge.rs`).
    TagPurge { id: u64, part: Part },
    /// Bytes `start..end` of a large value being assembled (by assembly `id`: a piece of a
    /// read that was abandoned is no one's, even if the key is read again).
    Piece {
        id: u64,
        key: String,
        start: u64,
        end: u64,
    },
}

impl Carries {
    fn command(&self) -> Command<'_> {
        fn keys(wants: &[Want]) -> Vec<&str> {
            wants.iter().map(|w| w.key.as_str()).collect()
        }
        match self {
            Carries::Lookup {
                wants,
                riders,
                locks,
                lock_ms,
                ..
            } => {
                let locking = Some(Locking {
                    keys: locks,
                    ttl_ms: *lock_ms,
                });
                if riders.is_empty() {
                    Command::Lookup {
                        keys: keys(wants),
                        inline_bytes: ANSWER_BYTES,
                        locking,
                    }
                } else {
                    Command::Write {
                        entries: writes::entries(riders),
                        then_lookup: keys(wants),
                        inline_bytes: ANSWER_BYTES,
                        locking,
                    }
                }
            }
            Carries::Writes(jobs) => match jobs.first().map(|j| &j.write) {
                Some(StoreWrite::Entry(w)) if w.refresh.is_some() => Command::Refresh(w),
                Some(StoreWrite::Invalidate(keys)) => Command::Invalidate(keys),
                Some(StoreWrite::Unlock { key, owner, unlock }) => Command::Unlock {
                    key,
                    owner: *owner,
                    unlock: *unlock,
                },
                Some(StoreWrite::Tag {
                    set,
                    member,
                    ttl_ms,
                }) => Command::TagAdd {
                    set,
                    member,
                    ttl_ms: *ttl_ms,
                },
                _ => Command::Write {
                    entries: writes::entries(jobs),
                    then_lookup: Vec::new(),
                    inline_bytes: 0,
                    locking: None,
                },
            },
            Carries::Purge { keys, .. } => Command::Invalidate(keys),
            Carries::Invalidation { keys, sent, .. } => Command::Invalidate(&keys[..*sent]),
            Carries::TagPurge {
                part: Part::Set(key),
                ..
            } => Command::TakeTagSet { key },
            Carries::TagPurge {
                part: Part::Resources(keys),
                ..
            } => Command::Invalidate(keys),
            Carries::Lock { key, ttl_ms, .. } => Command::Lock {
                key,
                ttl_ms: *ttl_ms,
            },
            Carries::Piece {
                key, start, end, ..
            } => Command::Piece {
                key,
                start: *start,
                end: *end,
            },
        }
    }

    fn is_lookup(&self) -> bool {
        matches!(self, Carries::Lookup { .. })
    }
}

#[derive(Debug)]
struct Flight {
    carries: Carries,
    expect: Expect,
    /// The host's token, once dispatched.
    token: Option<u32>,
    /// When to stop waiting for an answer that never came.
    give_up_ms: u64,
}

/// The callouts out, by nonce: a handful (a few batches of each kind), so a list is searched
/// rather than a map kept (each map type instantiated costs the .wasm kilobytes).
#[derive(Debug, Default)]
struct Flights(Vec<(u64, Flight)>);

impl Flights {
    fn insert(&mut self, nonce: u64, flight: Flight) -> &mut Flight {
        self.0.push((nonce, flight));
        let last = self.0.len() - 1;
        &mut self.0[last].1
    }

    fn get_mut(&mut self, nonce: u64) -> Option<&mut Flight> {
        self.0.iter_mut().find(|(n, _)| *n == nonce).map(|(_, f)| f)
    }

    fn remove(&mut self, nonce: u64) -> Option<Flight> {
        let i = self.0.iter().position(|(n, _)| *n == nonce)?;
        Some(self.0.swap_remove(i).1)
    }

    /// The flight the host's `token` answers, taken out.
    fn take_answered(&mut self, token: u32) -> Option<(u64, Flight)> {
        let i = self.0.iter().position(|(_, f)| f.token == Some(token))?;
        Some(self.0.swap_remove(i))
    }

    fn iter(&self) -> impl Iterator<Item = (&u64, &Flight)> {
        self.0.iter().map(|(n, f)| (n, f))
    }

    fn values(&self) -> impl Iterator<Item = &Flight> {
        self.0.iter().map(|(_, f)| f)
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Flight> {
        self.0.iter_mut().map(|(_, f)| f)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A large value being read in pieces.
#[derive(Debug)]
struct Assembly {
    id: u64,
    key: String,
    total: u64,
    /// The value's last bytes as the lookup found them: a value read whole with another tail
    /// is another version (pieces carry no nonce; see [`Command::Piece`]).
    tail: [u8; TAIL_LEN],
    /// The pieces so far; empty until a piece arrives that is not the whole value (a value
    /// read in one piece is served from that piece's answer, never copied).
    buf: Vec<u8>,
    /// Where the next piece to request starts.
    next: u64,
    /// Bytes received so far.
    received: u64,
    streams: Vec<StreamId>,
}

#[derive(Debug)]
pub struct Outbox {
    settings: Settings,
    /// Keys not sent yet, oldest first.
    pending: Vec<Want>,
    /// Every stream waiting for a lookup, and its deadline. A stream is answered exactly once:
    /// whoever removes it from here replies.
    deadlines: StreamMap<u64>,
    writes: WriteQueue,
    /// No write is sent before this (after the host refused one).
    write_retry_at_ms: u64,
    /// Purges by URL: the resources' keys.
    purges: VecDeque<(StreamId, Vec<String>)>,
    /// Purges by tag on a Cluster, part by part.
    tag_purges: TagPurges,
    /// Locks background jobs asked for: job, key, lifetime.
    locks: VecDeque<(StreamId, String, u64)>,
    /// Invalidations to send, each for a held response.
    invalidations: VecDeque<(StreamId, Vec<String>)>,
    /// Held responses, what for, and when they go on whatever the store says (unix ms).
    /// Whoever removes a stream from here replies to it.
    holds: Vec<(StreamId, u64, Hold)>,
    flights: Flights,
    /// Large values being read, oldest first.
    assemblies: Vec<Assembly>,
    next_assembly: u64,
    replies: VecDeque<(StreamId, Reply)>,
    notes: VecDeque<Note>,
    breaker: Breaker,
    /// Streams waiting behind another's fetch of a missing entry.
    followers: Followers,
    nonce_base: u64,
    sent: u64,
}

impl Outbox {
    /// `seed` makes the nonces of this VM its own and jitters the breaker.
    pub fn new(settings: Settings, seed: u64) -> Outbox {
        Outbox {
            settings,
            pending: Vec::new(),
            deadlines: StreamMap::new(),
            writes: WriteQueue::new(settings.max_queue_bytes, settings.one_slot),
            write_retry_at_ms: 0,
            purges: VecDeque::new(),
            tag_purges: TagPurges::new(settings.one_slot),
            locks: VecDeque::new(),
            invalidations: VecDeque::new(),
            holds: Vec::new(),
            flights: Flights::default(),
            assemblies: Vec::new(),
            next_assembly: 0,
            replies: VecDeque::new(),
            notes: VecDeque::new(),
            breaker: Breaker::new(settings.breaker, seed.rotate_left(17)),
            followers: Followers::new(settings.poll_ms),
            nonce_base: seed,
            sent: 0,
        }
    }

    // ---- inputs ----------------------------------------------------------------------------

    /// Stream `stream`, which arrived at `arrived_ms`, waits for the value of `key`. With
    /// `wait_until`, it would fetch a missing entry, and may wait for another's fetch until
    /// then. Returns the reply at once when there is nothing to wait for (breaker open,
    /// deadline passed); otherwise it comes from [`Outbox::poll_reply`].
    pub fn want(
        &mut self,
        now_ms: u64,
        stream: StreamId,
        key: String,
        arrived_ms: u64,
        wait_until: Option<u64>,
    ) -> Option<Reply> {
        let collapse = wait_until.filter(|_| self.settings.lock_ms > 0);
        let deadline = arrived_ms.saturating_add(self.settings.lookup_timeout_ms);
        if deadline <= now_ms {
            return Some(Reply::Lookup(Err(StoreError::Timeout)));
        }
        // While the breaker is open nothing waits on the store, except on the probe.
        let open = self.breaker.is_open();
        // A value already on its way serves this stream too: it left at most one round trip
        // ago, as fresh as any lookup this one would send.
        if let Some(a) = self.assemblies.iter_mut().find(|a| a.key == key && !open) {
            a.streams.push(stream);
            let allowance = transfer_allowance(&self.settings, a.total);
            self.deadlines
                .insert(stream, deadline.saturating_add(allowance));
            return None;
        }
        let out = self
            .flights
            .values_mut()
            .filter_map(|f| match &mut f.carries {
                Carries::Lookup { wants, probe, .. } if *probe || !open => Some(wants.iter_mut()),
                _ => None,
            });
        if let Some(w) = out
            .flatten()
            .chain(self.pending.iter_mut())
            .find(|w| w.key == key)
        {
            w.streams.push(stream);
            w.collapse.extend(collapse.map(|until| (stream, until)));
            self.deadlines.insert(stream, deadline);
            return None;
        }
        if self.breaker.admit_lookup(now_ms) == Admit::No {
            return Some(Reply::Lookup(Err(StoreError::BreakerOpen)));
        }
        let mut want = Want::new(key);
        want.streams.push(stream);
        want.collapse.extend(collapse.map(|until| (stream, until)));
        self.pending.push(want);
        self.deadlines.insert(stream, deadline);
        None
    }

    /// The fetch of the missing entry at `key`, led by a stream whose lookup (nonce `owner`)
    /// took its lock, ended without an entry: the lock becomes what `unlock` says. This
    /// worker's followers of the key go to the origin at once for a marker; for a release
    /// they look again as soon as it landed (one of them may lead).
    pub fn unlock(&mut self, key: String, owner: u64, unlock: Unlock) {
        match unlock {
            // Its followers look again once the release landed (`settle_writes`).
            Unlock::Release => {}
            Unlock::Uncacheable { .. } | Unlock::Exempt { .. } => {
                let marker = match unlock {
                    Unlock::Exempt { .. } => store::Marker::Exempt,
                    _ => store::Marker::Uncacheable,
                };
                for (s, _) in self.followers.take(&key) {
                    self.replies
                        .push_back((s, Reply::Lookup(Ok(Looked::NoWait(marker)))));
                }
            }
        }
        self.writes.push(StoreWrite::Unlock { key, owner, unlock });
    }

    /// Queues a write; false when it is dropped (the queue is full, or the breaker is open:
    /// an entry is not worth holding for a store that is down; invalidations are kept).
    pub fn write(&mut self, write: StoreWrite) -> bool {
        let entry = matches!(write, StoreWrite::Entry(_));
        if entry && self.breaker.is_open() {
            return false;
        }
        self.writes.push(write)
    }

    /// Background job `job` takes the lock of the entry at `key` for `ttl_ms`, if it is free
    /// (one revalidation per key across the fleet); its [`Reply::Locked`] comes with the job's
    /// id (never a stream's). At once, `None`, when the store is being skipped.
    pub fn lock(&mut self, job: StreamId, key: String, ttl_ms: u64) -> Option<Reply> {
        if !self.breaker.admits_writes() {
            return Some(Reply::Locked(None));
        }
        self.locks.push_back((job, key, ttl_ms));
        None
    }

    /// Stream `stream` waits for a purge. Returns the reply at once if the breaker is open.
    pub fn purge(&mut self, stream: StreamId, purge: PurgeCommand) -> Option<Reply> {
        if !self.breaker.admits_writes() {
            return Some(Reply::Purge(Err(StoreError::BreakerOpen)));
        }
        match purge {
            // A tag set and its resources may be in other slots (a Cluster): part by part.
            PurgeCommand::Tags(sets) => self.tag_purges.start(stream, sets),
            PurgeCommand::Resources(keys) => self.purges.push_back((stream, keys)),
        }
        None
    }

    /// Stream `stream`'s response waits until the store removed `keys` (RFC 9111 §4.4), at
    /// most `store.timeout_ms` from now. Returns the reply at once when the breaker holds
    /// writes back (the invalidation then waits in the write queue, as every one is kept).
    pub fn invalidate(
        &mut self,
        now_ms: u64,
        stream: StreamId,
        keys: Vec<String>,
    ) -> Option<Reply> {
        if !self.breaker.admits_writes() {
            self.push_invalidation(keys.clone());
            return Some(Reply::Invalidated(Err(StoreError::BreakerOpen), keys));
        }
        let deadline = now_ms.saturating_add(self.settings.lookup_timeout_ms);
        self.holds.push((stream, deadline, Hold::Invalidation));
        self.invalidations.push_back((stream, keys));
        None
    }

    /// Queues the entry of stream `stream`'s recording; the end of its response waits until it
    /// landed, at most `store.timeout_ms` plus its transfer allowance from now. Returns the
    /// reply at once when the write is not queued (the breaker is open, the queue is full).
    /// `lock`: the entry's fetch lock when others wait for it (freed if the write fails; the
    /// write itself removes it).
    pub fn write_held(
        &mut self,
        now_ms: u64,
        stream: StreamId,
        write: StoreWrite,
        lock: Option<(String, u64)>,
    ) -> Option<Reply> {
        let size = write.size() as u64;
        if self.breaker.is_open() {
            return Some(Reply::Written(Err(StoreError::BreakerOpen)));
        }
        if !self.writes.push_job(write, Some(stream), lock) {
            return Some(Reply::Written(Err(StoreError::Busy)));
        }
        // Whole MiB only: a small entry waits no longer than a lookup does.
        let wait = self.settings.lookup_timeout_ms + (size >> 20) * self.settings.large_ms_per_mib;
        self.holds
            .push((stream, now_ms.saturating_add(wait), Hold::Write));
        None
    }

    /// The stream ended: nothing is answered to it any more.
    pub fn stream_gone(&mut self, stream: StreamId) {
        // Its invalidation or write still runs: only the wait for it ends.
        self.holds.retain(|(s, _, _)| *s != stream);
        self.followers.remove(stream);
        if self.deadlines.remove(&stream).is_some() {
            self.forget_stream(stream);
        }
        self.purges.retain(|(s, _)| *s != stream);
    }

    /// The answer to a callout: its status and body, or `None` when the host could not hand
    /// the body over (the answer failed after it started arriving).
    pub fn answered(
        &mut self,
        now_ms: u64,
        token: u32,
        status: Option<u16>,
        body: Option<Vec<u8>>,
    ) {
        // Unknown: a callout given up on, whose answer is no one's any more.
        let Some((nonce, flight)) = self.flights.take_answered(token) else {
            return;
        };
        let answer = match body {
            None => Err(StoreError::Broken),
            Some(body) => store::decode(nonce, flight.expect, status, &body).map(|a| (a, body)),
        };
        match answer {
            Ok((answer, body)) => self.settle(now_ms, nonce, flight, answer, body),
            Err(e) => self.fail(now_ms, nonce, flight, e),
        }
    }

    /// Deadlines that passed: streams answered with a timeout, callouts given up on.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let mut i = 0;
        while i < self.holds.len() {
            if self.holds[i].1 <= now_ms {
                let (stream, _, hold) = self.holds.swap_remove(i);
                let reply = match hold {
                    Hold::Invalidation => {
                        Reply::Invalidated(Err(StoreError::Timeout), self.held_keys(stream))
                    }
                    Hold::Write => Reply::Written(Err(StoreError::Timeout)),
                };
                self.replies.push_back((stream, reply));
            } else {
                i += 1;
            }
        }
        let expired: Vec<StreamId> = self
            .deadlines
            .iter()
            .filter(|(_, d)| **d <= now_ms)
            .map(|(s, _)| *s)
            .collect();
        for stream in expired {
            self.deadlines.remove(&stream);
            self.forget_stream(stream);
            self.replies
                .push_back((stream, Reply::Lookup(Err(StoreError::Timeout))));
        }
        for stream in self.followers.expired(now_ms) {
            self.replies
                .push_back((stream, Reply::Lookup(Ok(Looked::WaitOver))));
        }
        let lost: Vec<u64> = self
            .flights
            .iter()
            .filter(|(_, f)| f.give_up_ms <= now_ms)
            .map(|(n, _)| *n)
            .collect();
        for nonce in lost {
            if let Some(flight) = self.flights.remove(nonce) {
                self.fail(now_ms, nonce, flight, StoreError::Timeout);
            }
        }
    }

    // ---- outputs ---------------------------------------------------------------------------

    /// The next callout to send now, if any. Send it, then report the host's token (or its
    /// refusal) with [`Outbox::dispatched`] before asking for the next.
    pub fn poll_send(&mut self, now_ms: u64) -> Option<Outgoing<'_>> {
        self.handle_timeout(now_ms);
        let (carries, timeout_ms) = self.next_carries(now_ms)?;
        let expect = carries.command().expects();
        let nonce = self.nonce_base.wrapping_add(self.sent);
        self.sent += 1;
        let give_up_ms = now_ms
            .saturating_add(timeout_ms)
            .saturating_add(GIVE_UP_GRACE_MS);
        let flight = self.flights.insert(
            nonce,
            Flight {
                carries,
                expect,
                token: None,
                give_up_ms,
            },
        );
        Some(Outgoing {
            nonce,
            request: store::encode(nonce, &flight.carries.command()),
            timeout_ms,
        })
    }

    /// The host dispatched the callout of `nonce` (its token), or refused to.
    pub fn dispatched(&mut self, now_ms: u64, nonce: u64, token: Option<u32>) {
        match token {
            Some(t) => {
                if let Some(f) = self.flights.get_mut(nonce) {
                    f.token = Some(t);
                }
            }
            None => {
                if let Some(flight) = self.flights.remove(nonce) {
                    if matches!(flight.carries, Carries::Writes(_)) {
                        // Retry later rather than spin on a host that refuses now.
                        self.write_retry_at_ms = now_ms + RETRY_DELAY_MS;
                    }
                    self.fail(now_ms, nonce, flight, StoreError::Dispatch);
                }
            }
        }
    }

    /// A reply for a waiting stream.
    pub fn poll_reply(&mut self) -> Option<(StreamId, Reply)> {
        self.replies.pop_front()
    }

    pub fn poll_note(&mut self) -> Option<Note> {
        self.notes.pop_front()
    }

    /// When [`Outbox::handle_timeout`] has something to do next (unix ms).
    pub fn poll_timeout(&self) -> Option<u64> {
        let deadlines = self.deadlines.values().copied();
        let holds = self.holds.iter().map(|(_, d, _)| *d);
        let flights = self.flights.values().map(|f| f.give_up_ms);
        // A write waiting out its retry delay; not while the breaker holds writes back.
        let retry =
            (self.write_retry_at_ms > 0 && self.writes.can_send() && self.breaker.admits_writes())
                .then_some(self.write_retry_at_ms);
        let followers = self.followers.next_timeout();
        deadlines
            .chain(holds)
            .chain(flights)
            .chain(retry)
            .chain(followers)
            .min()
    }

    /// Whether the breaker is open (or probing): the store is being skipped.
    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Nothing waits, nothing is out.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
            && self.flights.is_empty()
            && self.writes.is_idle()
            && self.purges.is_empty()
            && self.locks.is_empty()
            && self.invalidations.is_empty()
            && self.holds.is_empty()
            && self.followers.is_empty()
    }

    // ---- what leaves -----------------------------------------------------------------------

    /// What the next callout carries, and its timeout; `None` when nothing may go now.
    fn next_carries(&mut self, now_ms: u64) -> Option<(Carries, u64)> {
        if let Some(piece) = self.next_piece(now_ms) {
            return Some(piece);
        }
        if now_ms >= self.write_retry_at_ms {
            self.write_retry_at_ms = 0;
        }
        if !self.breaker.admits_writes() {
            // Resources a purge would have removed are removed later, by writes.
            for keys in self.tag_purges.fail_queued(StoreError::BreakerOpen) {
                self.writes.push(StoreWrite::Invalidate(keys));
            }
            self.tag_purge_finished();
        } else if let Some((id, part)) = self.tag_purges.next_part() {
            return Some((
                Carries::TagPurge { id, part },
                self.settings.write_timeout_ms,
            ));
        }
        while let Some((stream, keys)) = self.purges.pop_front() {
            if self.breaker.admits_writes() {
                return Some((
                    Carries::Purge { stream, keys },
                    self.settings.write_timeout_ms,
                ));
            }
            self.replies
                .push_back((stream, Reply::Purge(Err(StoreError::BreakerOpen))));
        }
        while let Some((job, key, ttl_ms)) = self.locks.pop_front() {
            if self.breaker.admits_writes() {
                return Some((
                    Carries::Lock { job, key, ttl_ms },
                    self.settings.write_timeout_ms,
                ));
            }
            self.replies.push_back((job, Reply::Locked(None)));
        }
        // An invalidation leaves ahead of queued writes (their entries of its resources are
        // dropped), but after the writes out that carry one: two callouts out at once reach
        // Redis in either order.
        let ready = self.invalidations.iter().position(|(_, keys)| {
            !self.flights.values().any(|f| match &f.carries {
                Carries::Writes(jobs) | Carries::Lookup { riders: jobs, .. } => {
                    writes::writes_any_of(jobs, keys)
                }
                _ => false,
            })
        });
        if let Some((stream, mut keys)) = ready.and_then(|i| self.invalidations.remove(i)) {
            if self.breaker.admits_writes() {
                // Queued writes of these resources (a retry too) would bring the entry back.
                // Whoever waited for one has nothing left to wait for.
                for waiter in self.writes.drop_entries_of(&keys) {
                    self.release(waiter, Ok(()), Vec::new());
                }
                let mut sent = keys.len();
                if self.settings.one_slot && !keys.is_empty() {
                    // The response waits for its own resource's slot (RFC 9111 §4.4's MUST);
                    // `Location` and `Content-Location` targets follow as writes. The reply
                    // still names them all (sibling workers forget them too).
                    let mut groups = writes::by_slot(keys);
                    keys = groups.remove(0);
                    sent = keys.len();
                    for group in groups {
                        keys.extend(group.iter().cloned());
                        self.writes.push(StoreWrite::Invalidate(group));
                    }
                }
                return Some((
                    Carries::Invalidation { stream, keys, sent },
                    self.settings.write_timeout_ms,
                ));
            }
            self.invalidation_failed(stream, keys, StoreError::BreakerOpen);
        }
        self.add_polls(now_ms);
        let lookups_out = self
            .flights
            .values()
            .filter(|f| f.carries.is_lookup())
            .count();
        // On a Cluster batches hold one slot's keys and rarely fill: each may go while fewer
        // than the bound are out.
        let may_look = !self.pending.is_empty()
            && (lookups_out == 0
                || ((self.settings.one_slot || self.pending.len() >= MAX_KEYS)
                    && lookups_out < MAX_IN_FLIGHT));
        if may_look {
            let wants: Vec<Want> = if self.settings.one_slot {
                self.take_one_slot()
            } else {
                let n = self.pending.len().min(MAX_KEYS);
                self.pending.drain(..n).collect()
            };
            // A poll waits as long as any lookup may.
            let poll = wants
                .iter()
                .any(|w| w.poll)
                .then_some(now_ms + self.settings.lookup_timeout_ms);
            let last = wants
                .iter()
                .flat_map(|w| &w.streams)
                .filter_map(|s| self.deadlines.get(s))
                .copied()
                .chain(poll)
                .max()
                .unwrap_or(now_ms + 1);
            let lock_ms = self.settings.lock_ms;
            let locks = wants
                .iter()
                .map(|w| {
                    lock_ms > 0 && (!w.collapse.is_empty() || w.poll || self.followers.has(&w.key))
                })
                .collect();
            let probe = self.breaker.is_open();
            let riders = if probe || now_ms < self.write_retry_at_ms || !self.writes.can_send() {
                None
            } else {
                self.writes.next_riders(MAX_RIDER_BYTES)
            };
            if riders.is_some() {
                self.writes.sent();
            }
            let carries = Carries::Lookup {
                wants,
                riders: riders.unwrap_or_default(),
                probe,
                locks,
                lock_ms,
            };
            return Some((carries, last.saturating_sub(now_ms).max(1)));
        }
        if !self.breaker.admits_writes() || now_ms < self.write_retry_at_ms {
            return None;
        }
        // Small entries wait for the lookup batch out: its answer sends the next batch, which
        // they ride with (one callout instead of two).
        if lookups_out > 0 && self.writes.holds_for_ride(MAX_RIDER_BYTES) {
            return None;
        }
        let batch = self.writes.next_batch()?;
        self.writes.sent();
        Some((Carries::Writes(batch), self.settings.write_timeout_ms))
    }

    /// The oldest pending key, and the others of its slot behind it (up to a batch).
    fn take_one_slot(&mut self) -> Vec<Want> {
        let first = slot(&self.pending[0].key);
        let mut wants = Vec::new();
        let mut i = 0;
        while i < self.pending.len() && wants.len() < MAX_KEYS {
            if slot(&self.pending[i].key) == first {
                wants.push(self.pending.remove(i));
            } else {
                i += 1;
            }
        }
        wants
    }

    /// A poll for each followed key whose interval passed, unless a lookup of it is already
    /// waiting to go or out (its answer serves the followers too).
    fn add_polls(&mut self, now_ms: u64) {
        if self.followers.is_empty() || self.breaker.is_open() {
            return;
        }
        for key in self.followers.due(now_ms) {
            let out = self.flights.values().any(|f| match &f.carries {
                Carries::Lookup { wants, .. } => wants.iter().any(|w| w.key == key),
                _ => false,
            });
            if let Some(w) = self.pending.iter_mut().find(|w| w.key == key) {
                w.poll = true;
            } else if !out {
                let mut want = Want::new(key);
                want.poll = true;
                self.pending.push(want);
            }
        }
    }

    /// The next piece of a large value, if one may go: the oldest value's first.
    fn next_piece(&mut self, now_ms: u64) -> Option<(Carries, u64)> {
        // Pieces of abandoned reads still out count too: their answers still come into the VM.
        let out: u64 = self
            .flights
            .values()
            .map(|f| match f.carries {
                Carries::Piece { start, end, .. } => end - start,
                _ => 0,
            })
            .sum();
        let a = self.assemblies.iter_mut().find(|a| a.next < a.total)?;
        let start = a.next;
        let end = (start + ANSWER_BYTES as u64).min(a.total);
        if out > 0 && out + (end - start) > PIECE_BYTES_OUT {
            return None;
        }
        a.next = end;
        let last = a
            .streams
            .iter()
            .filter_map(|s| self.deadlines.get(s))
            .max()
            .copied()
            .unwrap_or(now_ms + 1);
        let carries = Carries::Piece {
            id: a.id,
            key: a.key.clone(),
            start,
            end,
        };
        Some((carries, last.saturating_sub(now_ms).max(1)))
    }

    // ---- what answers mean -----------------------------------------------------------------

    fn settle(&mut self, now_ms: u64, nonce: u64, flight: Flight, answer: Answer, body: Vec<u8>) {
        if self.breaker.success() == Some(Change::Closed) {
            self.notes.push_back(Note::BreakerClosed);
        }
        let body = Rc::new(body);
        match (flight.carries, answer) {
            (Carries::Lookup { wants, riders, .. }, Answer::Values(slots)) => {
                self.settle_writes(now_ms, riders, Ok(()), true);
                self.deliver(now_ms, nonce, wants, slots, &body);
            }
            (Carries::Lookup { wants, riders, .. }, Answer::ValuesAndWrites(slots, written)) => {
                self.settle_writes(now_ms, riders, written, true);
                self.deliver(now_ms, nonce, wants, slots, &body);
            }
            (Carries::Writes(jobs), Answer::Done | Answer::Count(_)) => {
                self.settle_writes(now_ms, jobs, Ok(()), false);
            }
            (Carries::Purge { stream, .. }, Answer::Count(n)) => {
                self.replies.push_back((stream, Reply::Purge(Ok(n))));
            }
            (Carries::Invalidation { stream, keys, .. }, Answer::Count(_)) => {
                self.release(stream, Ok(()), keys);
            }
            (
                Carries::TagPurge {
                    id,
                    part: Part::Set(set),
                },
                Answer::Members(members),
            ) => {
                self.tag_purges.set_read(id, &set, members);
                self.tag_purge_finished();
            }
            (
                Carries::TagPurge {
                    id,
                    part: Part::Resources(_),
                },
                Answer::Count(n),
            ) => {
                self.tag_purges.removed(id, n);
                self.tag_purge_finished();
            }
            (Carries::Lock { job, .. }, Answer::Count(n)) => {
                self.replies
                    .push_back((job, Reply::Locked((n == 1).then_some(nonce))));
            }
            (Carries::Piece { id, start, end, .. }, Answer::Piece(range)) => {
                self.piece_arrived(id, start..end, &body, range)
            }
            // `decode` checked the shape against `expect`, computed from these very carries.
            (carries, _) => {
                let flight = Flight {
                    carries,
                    expect: flight.expect,
                    token: None,
                    give_up_ms: 0,
                };
                self.fail(now_ms, nonce, flight, StoreError::Garbage);
            }
        }
    }

    /// A callout failed: everything it carried fails with `e`. Locks its lookup may have
    /// taken (its answer lost) are freed: no one fetches for them.
    fn fail(&mut self, now_ms: u64, nonce: u64, flight: Flight, e: StoreError) {
        if e == StoreError::Mismatch {
            self.notes.push_back(Note::Mismatch);
        }
        let probe = matches!(flight.carries, Carries::Lookup { probe: true, .. });
        // A piece's deadline is its readers' transfer allowance, not the store's health: a
        // large read that runs late says nothing that should skip the store for small ones.
        // Nor is a Webdis that refuses the plain read (its ACL not yet updated for GETRANGE:
        // values over 128 KiB go to the origin, every smaller one is still served).
        let piece_aside = matches!(flight.carries, Carries::Piece { .. })
            && matches!(e, StoreError::Timeout | StoreError::Forbidden);
        // Freeing a lock is bookkeeping a failing store makes moot (the lock expires): it must
        // not add to the failures that open the breaker, on top of the lookup that failed.
        let unlock = matches!(&flight.carries, Carries::Writes(jobs)
            if jobs.iter().all(|j| matches!(j.write, StoreWrite::Unlock { .. })));
        if piece_aside || unlock {
            // Neither a failure nor a success of the store.
        } else if e == StoreError::Refused {
            // Redis answered: it is up, it just refused (out of memory, read-only).
            if self.breaker.success() == Some(Change::Closed) {
                self.notes.push_back(Note::BreakerClosed);
            }
        } else if self.breaker.failure(now_ms, probe) == Some(Change::Opened) {
            self.notes.push_back(Note::BreakerOpened(e));
            // No added wait while open: what has not been read yet goes to the origin now.
            for want in std::mem::take(&mut self.pending) {
                self.reply_all(&want.streams, Err(StoreError::BreakerOpen));
            }
            for a in std::mem::take(&mut self.assemblies) {
                self.reply_all(&a.streams, Err(StoreError::BreakerOpen));
            }
            for s in self.followers.take_all() {
                self.replies
                    .push_back((s, Reply::Lookup(Err(StoreError::BreakerOpen))));
            }
        }
        match flight.carries {
            Carries::Lookup {
                wants,
                riders,
                locks,
                ..
            } => {
                self.settle_writes(now_ms, riders, Err(e), true);
                for (w, _) in wants.iter().zip(locks).filter(|(_, locked)| *locked) {
                    self.writes.push(StoreWrite::Unlock {
                        key: w.key.clone(),
                        owner: nonce,
                        unlock: Unlock::Release,
                    });
                }
                for w in wants {
                    self.reply_all(&w.streams, Err(e));
                    // Followers keep waiting: the next poll may do better.
                    self.followers.rearm(&w.key, now_ms);
                }
            }
            Carries::Writes(jobs) => self.settle_writes(now_ms, jobs, Err(e), false),
            Carries::Purge { stream, .. } => {
                self.replies.push_back((stream, Reply::Purge(Err(e))));
            }
            Carries::Invalidation { stream, keys, sent } => {
                // Only what this callout carried is retried: the rest is queued already.
                self.writes
                    .push(StoreWrite::Invalidate(keys[..sent].to_vec()));
                self.release(stream, Err(e), keys);
            }
            Carries::Lock { job, .. } => self.replies.push_back((job, Reply::Locked(None))),
            Carries::TagPurge { id, part } => {
                if let Part::Resources(keys) = part {
                    // The tag set is gone: its resources are removed by a write instead.
                    self.writes.push(StoreWrite::Invalidate(keys));
                }
                self.tag_purges.failed(id, e);
                self.tag_purge_finished();
            }
            Carries::Piece { id, .. } => {
                if let Some(i) = self.assemblies.iter().position(|a| a.id == id) {
                    let a = self.assemblies.remove(i);
                    self.reply_all(&a.streams, Err(e));
                }
            }
        }
    }

    /// Queues the removal of these resources as writes: on a Cluster, a write per slot.
    fn push_invalidation(&mut self, keys: Vec<String>) {
        let groups = if self.settings.one_slot {
            writes::by_slot(keys)
        } else {
            vec![keys]
        };
        for group in groups {
            self.writes.push(StoreWrite::Invalidate(group));
        }
    }

    /// Answers the purges by tag whose parts are all settled.
    fn tag_purge_finished(&mut self) {
        while let Some((stream, result)) = self.tag_purges.finished() {
            self.replies.push_back((stream, Reply::Purge(result)));
        }
    }

    /// A held invalidation failed: it is retried as a write (the entry must go), and the
    /// response goes on.
    fn invalidation_failed(&mut self, stream: StreamId, keys: Vec<String>, e: StoreError) {
        self.push_invalidation(keys.clone());
        self.release(stream, Err(e), keys);
    }

    /// Ends `stream`'s hold with `result`, unless it already ended (deadline, stream gone).
    fn release(&mut self, stream: StreamId, result: Result<(), StoreError>, keys: Vec<String>) {
        if let Some(i) = self.holds.iter().position(|(s, _, _)| *s == stream) {
            let (_, _, hold) = self.holds.swap_remove(i);
            let reply = match hold {
                Hold::Invalidation => Reply::Invalidated(result, keys),
                Hold::Write => Reply::Written(result),
            };
            self.replies.push_back((stream, reply));
        }
    }

    /// The keys of `stream`'s invalidation, wherever it is (queued or out).
    fn held_keys(&self, stream: StreamId) -> Vec<String> {
        let queued = self.invalidations.iter().find(|(s, _)| *s == stream);
        let out = self.flights.values().find_map(|f| match &f.carries {
            Carries::Invalidation {
                stream: s, keys, ..
            } if *s == stream => Some(keys),
            _ => None,
        });
        queued.map(|(_, k)| k).or(out).cloned().unwrap_or_default()
    }

    fn settle_writes(
        &mut self,
        now_ms: u64,
        jobs: Vec<Job>,
        result: Result<(), StoreError>,
        rode: bool,
    ) {
        if jobs.is_empty() {
            return;
        }
        if rode {
            self.notes.push_back(Note::RidersSettled(result));
        }
        let waiters: Vec<Option<StreamId>> = jobs.iter().map(|j| j.waiter).collect();
        let handoffs: Vec<Vec<(String, Bytes)>> =
            jobs.iter().map(|j| self.handoffs(&j.write)).collect();
        let locks: Vec<Option<(String, u64)>> = jobs.iter().map(|j| j.lock.clone()).collect();
        let unlocks: Vec<Option<&str>> = jobs
            .iter()
            .map(|j| match &j.write {
                StoreWrite::Unlock {
                    key,
                    unlock: Unlock::Release,
                    ..
                } => Some(key.as_str()),
                StoreWrite::Unlock { .. } => Some(""),
                _ => None,
            })
            .collect();
        // A freed lock: its followers look again now (one of them takes it). Not before the
        // release landed, or their poll would find it still held.
        let released: Vec<String> = unlocks
            .iter()
            .flatten()
            .filter(|k| !k.is_empty())
            .map(|k| k.to_string())
            .collect();
        let unlocks: Vec<bool> = unlocks.iter().map(Option::is_some).collect();
        // A tag set's write (on a Cluster) is part of its entry's: counted only if it fails.
        let tags: Vec<bool> = jobs
            .iter()
            .map(|j| matches!(j.write, StoreWrite::Tag { .. }))
            .collect();
        let outcomes = self.writes.settle(jobs, result.is_ok());
        for (handoff, outcome) in handoffs.into_iter().zip(&outcomes) {
            for (key, bytes) in handoff {
                let reply = match outcome {
                    Outcome::Published(_) => Ok(Looked::Value(bytes.clone())),
                    // The lock stays until it expires: no use waiting for it.
                    Outcome::Failed => Ok(Looked::WaitOver),
                    Outcome::Retrying => continue,
                };
                for (s, _) in self.followers.take(&key) {
                    self.replies.push_back((s, Reply::Lookup(reply.clone())));
                }
            }
        }
        for (waiter, outcome) in waiters.iter().zip(&outcomes) {
            let e = result.err().unwrap_or(StoreError::Garbage);
            match (waiter, outcome) {
                (Some(s), Outcome::Published(_)) => self.release(*s, Ok(()), Vec::new()),
                (Some(s), Outcome::Failed) => self.release(*s, Err(e), Vec::new()),
                _ => {}
            }
        }
        for key in released {
            self.followers.poll_now(&key, now_ms);
        }
        // An entry that will not land: its fetch's lock goes, or every miss of it waits for
        // the lock's lifetime.
        for (lock, outcome) in locks.into_iter().zip(&outcomes) {
            if let (Some((key, owner)), Outcome::Failed) = (lock, outcome) {
                self.writes.push(StoreWrite::Unlock {
                    key,
                    owner,
                    unlock: Unlock::Release,
                });
            }
        }
        for ((outcome, unlock), tag) in outcomes.into_iter().zip(unlocks).zip(tags) {
            if unlock || (tag && matches!(outcome, Outcome::Published(_))) {
                // Bookkeeping of the collapse, not a write anyone waits for or counts.
                continue;
            }
            let e = result.err().unwrap_or(StoreError::Garbage);
            self.notes.push_back(match outcome {
                Outcome::Published(bytes) => Note::Published { bytes, rode },
                Outcome::Retrying => Note::WriteRetrying(e),
                Outcome::Failed => Note::WriteFailed(e),
            });
        }
    }

    /// What this worker's followers get when `write` lands: the bytes each followed key
    /// now holds (a varying resource's key holds its variants record). Copied only when
    /// someone follows.
    fn handoffs(&self, write: &StoreWrite) -> Vec<(String, Bytes)> {
        let StoreWrite::Entry(w) = write else {
            return Vec::new();
        };
        if w.refresh.is_some() || self.followers.is_empty() {
            return Vec::new();
        }
        let shared = |bytes: &[u8]| Bytes::new(Rc::new(bytes.to_vec()), 0..bytes.len());
        let mut out = Vec::new();
        match &w.variant {
            None if self.followers.has(&w.key) => out.push((w.key.clone(), shared(&w.entry))),
            Some(v) => {
                if self.followers.has(&w.key) {
                    out.push((w.key.clone(), shared(&v.record)));
                }
                if self.followers.has(&v.key) {
                    out.push((v.key.clone(), shared(&w.entry)));
                }
            }
            None => {}
        }
        out
    }

    /// A lookup's values to the streams still waiting for them, and to the key's followers.
    fn deliver(
        &mut self,
        now_ms: u64,
        nonce: u64,
        wants: Vec<Want>,
        slots: Vec<Slot>,
        body: &Rc<Vec<u8>>,
    ) {
        for (mut want, slot) in wants.into_iter().zip(slots) {
            match slot {
                Slot::Missing => {
                    // No lock was asked for this key: its followers look again later.
                    self.followers.rearm(&want.key, now_ms);
                    self.reply_all(&want.streams, Ok(Looked::Missing));
                }
                Slot::Fetching => {
                    self.follow(now_ms, &want, None);
                    self.followers.rearm(&want.key, now_ms);
                }
                Slot::Locked => {
                    let leader = want
                        .collapse
                        .iter()
                        .map(|(s, _)| *s)
                        .find(|s| self.deadlines.contains_key(s));
                    match leader {
                        Some(leader) => {
                            self.deadlines.remove(&leader);
                            self.replies
                                .push_back((leader, Reply::Lookup(Ok(Looked::Lead(nonce)))));
                            self.follow(now_ms, &want, Some(leader));
                        }
                        None => match self.followers.take_first(&want.key) {
                            Some(leader) => self
                                .replies
                                .push_back((leader, Reply::Lookup(Ok(Looked::Lead(nonce))))),
                            // Everyone it was taken for is gone: free it for the next.
                            None => {
                                self.writes.push(StoreWrite::Unlock {
                                    key: want.key.clone(),
                                    owner: nonce,
                                    unlock: Unlock::Release,
                                });
                            }
                        },
                    }
                    self.reply_all(&want.streams, Ok(Looked::Missing));
                    self.followers.rearm(&want.key, now_ms);
                }
                Slot::NoWait(marker) => {
                    for (s, _) in self.followers.take(&want.key) {
                        self.replies
                            .push_back((s, Reply::Lookup(Ok(Looked::NoWait(marker)))));
                    }
                    self.reply_all(&want.streams, Ok(Looked::NoWait(marker)));
                }
                Slot::Foreign | Slot::Value(_) | Slot::Large { .. } => {
                    // The followers' wait is over: they read what the others read.
                    let read_by = now_ms.saturating_add(self.settings.lookup_timeout_ms);
                    for (s, _) in self.followers.take(&want.key) {
                        self.deadlines.insert(s, read_by);
                        want.streams.push(s);
                    }
                    match slot {
                        Slot::Value(range) => {
                            let bytes = Bytes::new(body.clone(), range);
                            self.reply_all(&want.streams, Ok(Looked::Value(bytes)))
                        }
                        Slot::Large { len, tail } => self.assemble(want, len, tail),
                        _ => self.reply_all(&want.streams, Ok(Looked::Value(Bytes::foreign()))),
                    }
                }
            }
        }
    }

    /// The entry at `want.key` is being fetched by someone else (or by `leader`): the streams
    /// that would fetch it follow that fetch (or, past their wait, go ahead); the others find
    /// it missing.
    fn follow(&mut self, now_ms: u64, want: &Want, leader: Option<StreamId>) {
        for &(s, until) in &want.collapse {
            if Some(s) == leader || self.deadlines.remove(&s).is_none() {
                continue;
            }
            if until <= now_ms {
                self.replies
                    .push_back((s, Reply::Lookup(Ok(Looked::WaitOver))));
            } else {
                self.followers.add(&want.key, s, until, now_ms);
                self.replies.push_back((s, Reply::Following));
            }
        }
        if leader.is_none() {
            self.reply_all(&want.streams, Ok(Looked::Missing));
        }
    }

    /// A value too large for the answer: read it in pieces for the streams still waiting.
    fn assemble(&mut self, want: Want, total: u64, tail: [u8; TAIL_LEN]) {
        let streams: Vec<StreamId> = want
            .streams
            .into_iter()
            .filter(|s| self.deadlines.contains_key(s))
            .collect();
        if streams.is_empty() {
            return;
        }
        if total > self.settings.max_value_bytes {
            self.notes.push_back(Note::TooLarge);
            self.reply_all(&streams, Ok(Looked::Value(Bytes::foreign())));
            return;
        }
        let allowance = transfer_allowance(&self.settings, total);
        for s in &streams {
            if let Some(d) = self.deadlines.get_mut(s) {
                *d = d.saturating_add(allowance);
            }
        }
        if let Some(a) = self.assemblies.iter_mut().find(|a| a.key == want.key) {
            a.streams.extend(streams);
            return;
        }
        // Values of several pieces are assembled in a buffer of their size; one piece is served
        // from its answer (bounded by PIECE_BYTES_OUT instead).
        let buffered = |total: u64| {
            if total > ANSWER_BYTES as u64 {
                total
            } else {
                0
            }
        };
        let assembling: u64 = self.assemblies.iter().map(|a| buffered(a.total)).sum();
        if assembling + buffered(total) > self.settings.max_queue_bytes as u64 {
            // Memory is bounded: this worker is reading enough large values already.
            self.reply_all(&streams, Err(StoreError::Busy));
            return;
        }
        self.next_assembly += 1;
        self.assemblies.push(Assembly {
            id: self.next_assembly,
            key: want.key,
            total,
            tail,
            buf: Vec::new(),
            next: 0,
            received: 0,
            streams,
        });
    }

    /// A piece of assembly `id` arrived: bytes `range` of `body` should be the value's bytes
    /// `want`. Shorter means the value changed (or went away) since the lookup; whole, the value
    /// must end with the tail the lookup saw (then the entry's checksums still decide).
    fn piece_arrived(
        &mut self,
        id: u64,
        want: Range<u64>,
        body: &Rc<Vec<u8>>,
        range: Range<usize>,
    ) {
        let Some(i) = self.assemblies.iter().position(|a| a.id == id) else {
            return;
        };
        let a = &mut self.assemblies[i];
        if range.len() as u64 != want.end - want.start {
            let a = self.assemblies.remove(i);
            return self.reply_all(&a.streams, Err(StoreError::Changed));
        }
        let value = if want.start == 0 && want.end == a.total {
            Bytes::new(body.clone(), range)
        } else {
            if a.buf.is_empty() {
                a.buf = vec![0; a.total as usize];
            }
            a.buf[want.start as usize..want.end as usize].copy_from_slice(&body[range]);
            a.received += want.end - want.start;
            if a.received < a.total {
                return;
            }
            let buf = std::mem::take(&mut a.buf);
            Bytes::new(Rc::new(buf), 0..a.total as usize)
        };
        let a = self.assemblies.remove(i);
        if !value.ends_with(&a.tail) {
            return self.reply_all(&a.streams, Err(StoreError::Changed));
        }
        self.notes.push_back(Note::LargeRead);
        self.reply_all(&a.streams, Ok(Looked::Value(value)));
    }

    /// Replies to each of `streams` still waiting (each exactly once).
    fn reply_all(&mut self, streams: &[StreamId], reply: Result<Looked<Bytes>, StoreError>) {
        for s in streams {
            if self.deadlines.remove(s).is_some() {
                self.replies.push_back((*s, Reply::Lookup(reply.clone())));
            }
        }
    }

    /// Removes a stream that is no longer waiting from every wait list; a probe that no one
    /// waits for any more is abandoned.
    fn forget_stream(&mut self, stream: StreamId) {
        let mut emptied_pending = false;
        for w in &mut self.pending {
            w.streams.retain(|s| *s != stream);
            w.collapse.retain(|(s, _)| *s != stream);
            emptied_pending |= w.streams.is_empty() && !w.poll;
        }
        if emptied_pending {
            self.pending.retain(|w| !w.streams.is_empty() || w.poll);
        }
        for f in self.flights.values_mut() {
            if let Carries::Lookup { wants, .. } = &mut f.carries {
                for w in wants {
                    w.streams.retain(|s| *s != stream);
                }
            }
        }
        self.assemblies.retain_mut(|a| {
            a.streams.retain(|s| *s != stream);
            !a.streams.is_empty()
        });
        if self.breaker.is_open() && self.pending.is_empty() && !self.probe_out() {
            // Let the next request probe, after the same backoff.
            self.breaker.probe_abandoned_if_probing();
        }
    }

    fn probe_out(&self) -> bool {
        self.flights
            .values()
            .any(|f| matches!(f.carries, Carries::Lookup { probe: true, .. }))
    }

    /// Streams waiting: what the tests check is left behind.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.deadlines.len()
    }
}

/// What a stream waiting for a value of `total` bytes read in pieces may wait beyond its
/// lookup deadline: `store.large_entry_ms_per_mib` per MiB.
fn transfer_allowance(s: &Settings, total: u64) -> u64 {
    total.div_ceil(1 << 20).saturating_mul(s.large_ms_per_mib)
}

#[cfg(test)]
mod tests;
