//! The store: what the cache asks of it and what can go wrong, independent of transport.
//! `webdis` gives these commands their HTTP form for Webdis in front of Redis.

pub mod webdis;

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
    /// Some other HTTP status.
    Status(u16),
    /// An answer that isn't the protocol.
    Garbage,
    /// Redis refused the writes (a script error: out of memory, a read-only replica).
    Refused,
}

impl StoreError {
    /// Whether a write is worth trying after a lookup failed this way: a slow store may take
    /// it; one that is down, refusing or answering nonsense will not.
    pub fn may_accept_writes(self) -> bool {
        matches!(self, StoreError::Timeout)
    }

    /// The `detail` of `Cache-Status` and the reason in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreError::Dispatch => "store-dispatch-failed",
            StoreError::Timeout => "store-timeout",
            StoreError::Unavailable => "store-unavailable",
            StoreError::Status(_) => "store-error",
            StoreError::Garbage => "store-garbage",
            StoreError::Refused => "store-refused",
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
}

impl StoreWrite {
    /// The first key it writes (for logs).
    pub fn first_key(&self) -> &str {
        match self {
            StoreWrite::Entry(w) => &w.key,
            StoreWrite::Invalidate(keys) => keys.first().map_or("", String::as_str),
        }
    }

    /// Bytes held while queued.
    pub fn size(&self) -> usize {
        match self {
            StoreWrite::Entry(w) => w.entry.len(),
            StoreWrite::Invalidate(keys) => keys.iter().map(String::len).sum(),
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
