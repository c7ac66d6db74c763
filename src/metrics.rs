//! Counters, defined once by name. Envoy shows them as `fleet_cache_<name>` at `/stats` and
//! `/stats/prometheus`.

use crate::flow::Event;
use crate::store::StoreError;

/// Every counter the filter keeps. The order is the order of [`Counter::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Lookups,
    Hits,
    MemoryHits,
    Misses,
    Bypasses,
    StoreErrors,
    StoreTimeouts,
    CorruptEntries,
    NotStored,
    RecordingsTooLarge,
    RecordingsAborted,
    RecordingsOverBudget,
    Revalidations,
    Purges,
    Invalidations,
    // Before Published: counts are handed to the host in this order, so whoever sees a write
    // in `published` also sees it in `published_with_lookups` (tests wait on the former).
    PublishedWithLookups,
    Published,
    PublishFailures,
    PublishRetries,
    PublishDropped,
    BytesStored,
    StoreSkipped,
    StoreMismatches,
    BreakerOpenings,
    LargeEntryReads,
    TagsDropped,
    /// A response to an unsafe request went on before the store (store.timeout_ms) or a
    /// sibling worker confirmed its invalidation.
    InvalidationsUnconfirmed,
    /// A recorded response's end went on before the store confirmed its entry.
    WritesUnconfirmed,
    /// A stale entry answered for a failed or unreachable origin (RFC 5861 stale-if-error).
    StaleIfError,
    /// Requests that waited for another's fetch of the same missing entry.
    CollapseWaits,
    /// Of those, answered from the entry that fetch stored (an origin fetch saved).
    Collapsed,
    /// Of those, sent to the origin after waiting `collapse.max_wait_ms`.
    CollapseTimeouts,
    /// Milliseconds the waiting requests waited, summed.
    CollapseWaitMs,
    /// Requests that skipped the store lookup: their resource's last response was not
    /// storable (hit-for-miss).
    HitForMiss,
    /// Stale entries answered at once under `stale-while-revalidate`.
    StaleWhileRevalidate,
    /// Revalidations sent to the origin in the background (one per key across the fleet).
    BackgroundRevalidations,
}

impl Counter {
    pub const ALL: [Counter; 36] = [
        Counter::Lookups,
        Counter::Hits,
        Counter::MemoryHits,
        Counter::Misses,
        Counter::Bypasses,
        Counter::StoreErrors,
        Counter::StoreTimeouts,
        Counter::CorruptEntries,
        Counter::NotStored,
        Counter::RecordingsTooLarge,
        Counter::RecordingsAborted,
        Counter::RecordingsOverBudget,
        Counter::Revalidations,
        Counter::Purges,
        Counter::Invalidations,
        Counter::PublishedWithLookups,
        Counter::Published,
        Counter::PublishFailures,
        Counter::PublishRetries,
        Counter::PublishDropped,
        Counter::BytesStored,
        Counter::StoreSkipped,
        Counter::StoreMismatches,
        Counter::BreakerOpenings,
        Counter::LargeEntryReads,
        Counter::TagsDropped,
        Counter::InvalidationsUnconfirmed,
        Counter::WritesUnconfirmed,
        Counter::StaleIfError,
        Counter::CollapseWaits,
        Counter::Collapsed,
        Counter::CollapseTimeouts,
        Counter::CollapseWaitMs,
        Counter::HitForMiss,
        Counter::StaleWhileRevalidate,
        Counter::BackgroundRevalidations,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::Lookups => "fleet_cache_lookups",
            Counter::Hits => "fleet_cache_hits",
            Counter::MemoryHits => "fleet_cache_memory_hits",
            Counter::Misses => "fleet_cache_misses",
            Counter::Bypasses => "fleet_cache_bypasses",
            Counter::StoreErrors => "fleet_cache_store_errors",
            Counter::StoreTimeouts => "fleet_cache_store_timeouts",
            Counter::CorruptEntries => "fleet_cache_corrupt_entries",
            Counter::NotStored => "fleet_cache_not_stored",
            Counter::RecordingsTooLarge => "fleet_cache_recordings_too_large",
            Counter::RecordingsAborted => "fleet_cache_recordings_aborted",
            Counter::RecordingsOverBudget => "fleet_cache_recordings_over_budget",
            Counter::Revalidations => "fleet_cache_revalidations",
            Counter::Purges => "fleet_cache_purges",
            Counter::Invalidations => "fleet_cache_invalidations",
            Counter::InvalidationsUnconfirmed => "fleet_cache_invalidations_unconfirmed",
            Counter::WritesUnconfirmed => "fleet_cache_writes_unconfirmed",
            Counter::Published => "fleet_cache_published",
            Counter::PublishedWithLookups => "fleet_cache_published_with_lookups",
            Counter::PublishFailures => "fleet_cache_publish_failures",
            Counter::PublishRetries => "fleet_cache_publish_retries",
            Counter::PublishDropped => "fleet_cache_publish_dropped",
            Counter::BytesStored => "fleet_cache_bytes_stored",
            Counter::StoreSkipped => "fleet_cache_store_skipped",
            Counter::StoreMismatches => "fleet_cache_store_mismatches",
            Counter::BreakerOpenings => "fleet_cache_store_breaker_openings",
            Counter::LargeEntryReads => "fleet_cache_large_entry_reads",
            Counter::TagsDropped => "fleet_cache_tags_dropped",
            Counter::StaleIfError => "fleet_cache_stale_if_error",
            Counter::CollapseWaits => "fleet_cache_collapse_waits",
            Counter::Collapsed => "fleet_cache_collapsed",
            Counter::CollapseTimeouts => "fleet_cache_collapse_timeouts",
            Counter::CollapseWaitMs => "fleet_cache_collapse_wait_ms",
            Counter::HitForMiss => "fleet_cache_hit_for_miss",
            Counter::StaleWhileRevalidate => "fleet_cache_stale_while_revalidate",
            Counter::BackgroundRevalidations => "fleet_cache_background_revalidations",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Worker VMs whose store circuit breaker is open (each adds 1 while open): a gauge.
pub const BREAKER_OPEN_GAUGE: &str = "fleet_cache_store_breaker_open";

/// The counters a flow event moves (a store timeout is also a store error).
pub fn counters_for(event: Event) -> &'static [Counter] {
    match event {
        Event::Lookup => &[Counter::Lookups],
        Event::Hit => &[Counter::Hits],
        Event::Miss => &[Counter::Misses],
        Event::Bypass => &[Counter::Bypasses],
        Event::StoreError(StoreError::Timeout) => &[Counter::StoreErrors, Counter::StoreTimeouts],
        // Not an error of this request's lookup: the store was not asked.
        Event::StoreError(StoreError::BreakerOpen) => &[Counter::StoreSkipped],
        // Not an error: a newer entry landed while this one was read.
        Event::StoreError(StoreError::Changed) => &[],
        Event::StoreError(_) => &[Counter::StoreErrors],
        Event::CorruptEntry(_) | Event::KeyMismatch => &[Counter::CorruptEntries],
        Event::NotStored(_) => &[Counter::NotStored],
        Event::RecordingTooLarge => &[Counter::RecordingsTooLarge],
        Event::RecordingAborted => &[Counter::RecordingsAborted],
        Event::RecordingOverBudget => &[Counter::RecordingsOverBudget],
        Event::Revalidated => &[Counter::Revalidations],
        Event::MemoryHit => &[Counter::MemoryHits],
        Event::Purged => &[Counter::Purges],
        Event::TagsDropped => &[Counter::TagsDropped],
        Event::Invalidated => &[Counter::Invalidations],
        Event::StaleIfError => &[Counter::StaleIfError],
        Event::CollapseWait => &[Counter::CollapseWaits],
        Event::Collapsed => &[Counter::Collapsed],
        Event::CollapseTimeout => &[Counter::CollapseTimeouts],
        Event::CollapseWaitMs(_) => &[Counter::CollapseWaitMs],
        Event::HitForMiss => &[Counter::HitForMiss],
        Event::StaleWhileRevalidate => &[Counter::StaleWhileRevalidate],
    }
}

/// How much an event adds to its counters: 1, or the amount it carries.
pub fn amount(event: Event) -> u64 {
    match event {
        Event::CollapseWaitMs(ms) => ms,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_names_are_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len());
    }
}
