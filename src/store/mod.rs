//! The store: what the cache asks of it (transport-neutral [`Command`]s, each tied to its answer
//! by a nonce) and what comes back (typed [`Answer`]s, or a [`StoreError`]).
//!
//! `layout` is the Redis key layout; `webdis` gives commands their HTTP form for Webdis in
//! front of Redis and reads its answers. A second transport (Higress' native Redis calls, say)
//! is a sibling of `webdis.rs` selected in [`encode`] and [`decode`], plus a [`Request`] variant
//! the adapter knows how to send; nothing else names a transport.

pub mod layout;
pub mod webdis;

use std::borrow::Cow;
use std::ops::Range;

/// Why the store did not answer a command usefully. Every one of these is a fail-open: the
/// request goes on to the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The callout could not be dispatched (unknown cluster, host refused).
    Dispatch,
    /// No answer within the deadline.
    Timeout,
    /// Store or Redis down (503 from Envoy or Webdis).
    Unavailable,
    /// The store refused the command (Webdis' 403): credentials missing or wrong
    /// (`store.credentials`), or a command its ACL does not enable.
    Forbidden,
    /// Some other HTTP status.
    Status(u16),
    /// An answer that isn't the protocol.
    Garbage,
    /// Redis refused the writes (a script error: out of memory, a read-only replica).
    Refused,
    /// The answer failed after it started arriving (stalled, cut, over Envoy's buffer limit):
    /// the host could not hand it over.
    Broken,
    /// A well-formed answer to another command (its nonce is not this command's).
    Mismatch,
    /// Not asked: the circuit breaker is open after consecutive failures.
    BreakerOpen,
    /// Not read: the worker is already reading as many large values as its memory bound allows.
    Busy,
    /// A large value was replaced while it was read in pieces: a newer entry landed, so it is
    /// neither served half-old nor fetched and written again. Not a store failure.
    Changed,
}

impl StoreError {
    /// Whether a write is worth trying after a lookup failed this way: a slow store may take
    /// it; one that is down, refusing, skipped or answering nonsense will not.
    pub fn may_accept_writes(self) -> bool {
        matches!(self, StoreError::Timeout)
    }

    /// The `detail` of `Cache-Status` and the reason in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreError::Dispatch => "store-dispatch-failed",
            StoreError::Timeout => "store-timeout",
            StoreError::Unavailable => "store-unavailable",
            StoreError::Forbidden => "store-forbidden",
            StoreError::Status(_) => "store-error",
            StoreError::Garbage => "store-garbage",
            StoreError::Refused => "store-refused",
            StoreError::Broken => "store-broken-answer",
            StoreError::Mismatch => "store-mismatch",
            StoreError::BreakerOpen => "store-breaker-open",
            StoreError::Busy => "store-busy",
            StoreError::Changed => "store-value-changed",
        }
    }
}

/// A finished recording on its way to the store: one atomic write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The resource's primary key: the entry's key, or for a varying response the key of its
    /// variants record.
    pub key: String,
    pub variant: Option<VariantWrite>,
    /// Time to live in the store, ms.
    pub ttl_ms: u64,
    /// The encoded entry (`entry.rs`), or with `refresh`, only its new metadata tail.
    pub entry: Vec<u8>,
    /// Set when revalidation (a 304) refreshed the metadata of a stored entry: the store keeps
    /// the entry's header and body, which never cross the network again, and swaps the tail.
    pub refresh: Option<Refresh>,
    /// Keys of the tag sets (purge by tag) that list this resource.
    pub tags: Vec<String>,
}

/// Something the root context writes to the store after a response, off the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreWrite {
    /// An entry (or a refresh of one).
    Entry(Write),
    /// Resources to remove (their keys): a non-error answer to an unsafe method changed them
    /// (RFC 9111 §4.4).
    Invalidate(Vec<String>),
    /// The lock of a missing entry whose fetch ended without one (collapsed misses).
    Unlock {
        key: String,
        owner: u64,
        unlock: Unlock,
    },
    /// A resource joins a tag set (purge by tag) on its own: on a Redis Cluster the set lives
    /// in another slot than the entry, so it can't be written by the entry's script.
    Tag {
        set: String,
        member: String,
        ttl_ms: u64,
    },
}

impl StoreWrite {
    /// Bytes held while queued.
    pub fn size(&self) -> usize {
        match self {
            StoreWrite::Entry(w) => w.entry.len(),
            StoreWrite::Invalidate(keys) => keys.iter().map(String::len).sum(),
            StoreWrite::Unlock { key, .. } => key.len(),
            StoreWrite::Tag { set, member, .. } => set.len() + member.len(),
        }
    }
}

/// Which stored value a metadata refresh applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refresh {
    /// Bytes of the stored value kept as they are (format header and body).
    pub keep: u64,
    /// The stored value's whole length when it was read: if it changed since (a newer entry
    /// was written), the refresh is dropped rather than grafted onto another body.
    pub expected_len: u64,
}

/// For a response that varies: the variant's own key, and the variants record for the
/// primary key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantWrite {
    pub key: String,
    pub record: Vec<u8>,
}

/// A purge to run in the store on behalf of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum PurgeCommand {
    /// Remove these resources (their keys) with all their variants.
    Resources(Vec<String>),
    /// Remove every resource listed in these tag sets (their keys).
    Tags(Vec<String>),
}

/// What a lookup may do at a missing key (collapsed misses): take its lock for a stream that
/// would fetch it, for `ttl_ms` at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locking<'a> {
    /// Per key of the lookup: whether to try its lock.
    pub keys: &'a [bool],
    pub ttl_ms: u64,
}

/// What an entry's lock becomes when its fetch ends without an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlock {
    /// Freed (if still held by this owner): the next lookup's stream fetches.
    Release,
    /// The response was not storable: for this long, lookups say not to wait (hit-for-miss).
    Uncacheable { ttl_ms: u64 },
    /// Its content type is exempt from collapsing: for this long, lookups say not to wait.
    Exempt { ttl_ms: u64 },
}

/// How many bytes of a large value's end a lookup brings with its length ([`Slot::Large`]).
pub const TAIL_LEN: usize = 8;

/// A command for the store, borrowing what it sends.
#[derive(Debug)]
pub enum Command<'a> {
    /// Read these keys. Values up to `inline_bytes` in all (and each at most the store's own
    /// inline bound) come back in the answer; larger ones come back as their length and tail
    /// ([`Slot::Large`]), to be read in [`Command::Piece`]s.
    Lookup {
        keys: Vec<&'a str>,
        inline_bytes: usize,
        locking: Option<Locking<'a>>,
    },
    /// Write these entries atomically, in order; then, if `then_lookup` is not empty, read
    /// those keys as [`Command::Lookup`] does (writes riding with a lookup: one callout).
    Write {
        entries: Vec<&'a Write>,
        then_lookup: Vec<&'a str>,
        inline_bytes: usize,
        locking: Option<Locking<'a>>,
    },
    /// Takes the lock of the entry at `key` if it is free, owned by this command's nonce, for
    /// `ttl_ms` (a background revalidation: one per key across the fleet).
    Lock { key: &'a str, ttl_ms: u64 },
    /// The lock of the entry at `key`, taken by the lookup whose nonce is `owner`, as
    /// `unlock` says.
    Unlock {
        key: &'a str,
        owner: u64,
        unlock: Unlock,
    },
    /// A metadata refresh (`write.refresh` is set).
    Refresh(&'a Write),
    /// Adds `member` to the tag set `set`, which then lives at least `ttl_ms`.
    TagAdd {
        set: &'a str,
        member: &'a str,
        ttl_ms: u64,
    },
    /// Remove these resources with their variants.
    Invalidate(&'a [String]),
    /// Read the members of the tag set at `key` and remove it (a purge by tag: its resources
    /// are removed apart, in their own slots on a Cluster).
    TakeTagSet { key: &'a str },
    /// Bytes `start..end` of the value at `key`: a plain read, without the nonce (no script
    /// copies the bytes). Whatever it brings is checked against the lookup's [`Slot::Large`]
    /// once the value is whole: its length and tail, then the entry's own checksums.
    Piece { key: &'a str, start: u64, end: u64 },
}

impl Command<'_> {
    /// What kind of answer to expect, and how many values.
    pub fn expects(&self) -> Expect {
        match self {
            Command::Lookup { keys, .. } => Expect::Values(keys.len()),
            Command::Write { then_lookup, .. } if !then_lookup.is_empty() => {
                Expect::ValuesAndWrites(then_lookup.len())
            }
            Command::Write { .. }
            | Command::Refresh(_)
            | Command::Unlock { .. }
            | Command::TagAdd { .. } => Expect::Done,
            Command::Invalidate(_) | Command::Lock { .. } => Expect::Count,
            Command::Piece { .. } => Expect::Piece,
            Command::TakeTagSet { .. } => Expect::Members,
        }
    }
}

/// The shape of the answer a command gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Values(usize),
    ValuesAndWrites(usize),
    Done,
    Count,
    Piece,
    Members,
}

/// A request to send, in the transport's terms.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// An HTTP callout to the store cluster.
    Http {
        method: &'static str,
        path: String,
        body: Option<Cow<'a, [u8]>>,
    },
}

/// What the store holds at one key, as a lookup saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Nothing (or an empty string: no stored value is empty).
    Missing,
    /// Nothing, and this lookup took the key's lock: its nonce owns the fetch.
    Locked,
    /// Nothing, and another lookup's stream is fetching it (holds the lock).
    Fetching,
    /// Nothing, and a marker says not to wait for a fetch.
    NoWait(Marker),
    /// A value of another Redis type (a hash, a set): not ours, overwritten by the next write.
    Foreign,
    /// A string too large for the answer: its length, and its last [`TAIL_LEN`] bytes (an
    /// entry's trailer: its metadata's length and checksum, so another version of the entry
    /// has another tail).
    Large { len: u64, tail: [u8; TAIL_LEN] },
    /// The value: where it lies in the answer's body.
    Value(Range<usize>),
}

/// Why a lookup should not wait for another's fetch of a missing entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// The resource's last response was not storable (hit-for-miss).
    Uncacheable,
    /// Its content type is exempt from collapsing.
    Exempt,
}

/// What a stream's lookup found, with the collapsing of misses: `V` is the value's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Looked<V> {
    /// The stored value.
    Value(V),
    /// Nothing stored.
    Missing,
    /// Nothing stored, and this stream fetches it: it holds the lock, owned by this nonce.
    Lead(u64),
    /// Nothing stored, and no fetch to wait for: the stream goes to the origin itself.
    NoWait(Marker),
    /// The stream waited behind another's fetch as long as it may; it goes to the origin.
    WaitOver,
}

impl<V> Looked<V> {
    pub fn map<W>(self, f: impl FnOnce(V) -> W) -> Looked<W> {
        match self {
            Looked::Value(v) => Looked::Value(f(v)),
            Looked::Missing => Looked::Missing,
            Looked::Lead(o) => Looked::Lead(o),
            Looked::NoWait(m) => Looked::NoWait(m),
            Looked::WaitOver => Looked::WaitOver,
        }
    }
}

/// A store answer, checked against its command (nonce, shape). Values are ranges into the
/// answer's body, so the body can be shared without copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Values(Vec<Slot>),
    /// Values, and whether the writes that rode along landed (`Err(Refused)` if not).
    ValuesAndWrites(Vec<Slot>, Result<(), StoreError>),
    Done,
    Count(u64),
    /// The piece's bytes (none if the value is gone or shorter).
    Piece(Range<usize>),
    /// A set's members (keys, so text).
    Members(Vec<String>),
}

/// The request that carries `command`, tied to it by `nonce`.
pub fn encode<'a>(nonce: u64, command: &Command<'a>) -> Request<'a> {
    webdis::encode(nonce, command)
}

/// The answer to the command sent with `nonce`, from what the transport received.
pub fn decode(
    nonce: u64,
    expect: Expect,
    status: Option<u16>,
    body: &[u8],
) -> Result<Answer, StoreError> {
    webdis::decode(nonce, expect, status, body)
}
