//! The in-proxy tier: a small LRU of validated store values in the worker VM's memory, in front
//! of Redis.
//!
//! A hit here costs no store round trip and no re-validation (values are kept decoded). Each
//! value is kept at most `max_age_ms` after it was read from the store, so a purge or a newer
//! entry elsewhere in the fleet is seen within that bound, and never past its own freshness.
//! Bounded by bytes; least recently used values go first.
//!
//! While the store fails (its circuit breaker is open), a value is served past `max_age_ms`,
//! as long as the response itself allows (grace): within its freshness, or its stale windows
//! for a stale one. A purge elsewhere is not seen then anyway: the store is unreachable.
//!
//! A removed key (an invalidation, a purge) is remembered for a while as a tombstone: a lookup
//! sent before the store dropped the entry may still answer with the old value, and that
//! answer must not come back into the tier.

use crate::entry::{ResponseMeta, VariantsMeta};
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use xxhash_rust::xxh64::Xxh64Builder;

/// A value as the store had it, validated and decoded.
#[derive(Debug, Clone)]
pub enum Remembered {
    /// A response: its metadata, and the whole stored value (the body lies where the entry
    /// format puts it).
    Response {
        /// Shared with the flows that serve it: a hit clones only the headers it replies with.
        meta: Rc<ResponseMeta>,
        value: Rc<[u8]>,
        /// The length of the value as stored (packed, it is shorter than `value`): what a
        /// metadata refresh must find in the store.
        stored_len: u64,
    },
    Variants(VariantsMeta),
}

#[derive(Debug)]
struct Slot {
    item: Remembered,
    expires_at_ms: u64,
    /// Past `expires_at_ms`, still served while the store fails, until this.
    usable_until_ms: u64,
    bytes: usize,
    /// The tick of its current place in `recency`, shared with its places there (`GONE` once
    /// the slot is removed): a place is live while its tick is this one.
    tick: Rc<Cell<u64>>,
    /// The slot's own key, shared with `slots` and `recency`.
    key: Rc<str>,
}

/// A slot's place in the recency order.
#[derive(Debug)]
struct Place {
    tick: u64,
    current: Rc<Cell<u64>>,
    key: Rc<str>,
}

impl Place {
    fn live(&self) -> bool {
        self.current.get() == self.tick
    }
}

/// The tick of a removed slot: none of its places is live.
const GONE: u64 = u64::MAX;

#[derive(Debug)]
pub struct MemoryTier {
    /// Keys are shared with `recency`: a hit moves a key in the recency order without
    /// copying it.
    slots: HashMap<Rc<str>, Slot, Xxh64Builder>,
    /// Places, oldest first. A use appends a place with a new tick and leaves the old one
    /// behind, stale: skipped on eviction and dropped when stale places outnumber live ones.
    /// O(1) per hit with no hashing, where a tree ordered by tick paid a removal and an
    /// insertion (and ~5 KB of .wasm).
    recency: VecDeque<Place>,
    next_tick: u64,
    bytes: usize,
    max_bytes: usize,
    max_age_ms: u64,
    /// Keys removed, and until when a value read for them is not kept (unix ms).
    tombstones: Vec<(String, u64)>,
    /// Nothing is kept before this (after `forget_all`).
    closed_until_ms: u64,
    /// How long a tombstone lasts: longer than any lookup in flight waits for its answer.
    tombstone_ms: u64,
}

/// Tombstones kept at most; past it, the tier forgets everything instead (never less safe).
const MAX_TOMBSTONES: usize = 1024;

/// What one slot costs besides its value: key, metadata, bookkeeping. An estimate that keeps
/// many tiny entries from escaping the budget.
const SLOT_OVERHEAD: usize = 256;

impl MemoryTier {
    pub fn new(max_bytes: usize, max_age_ms: u64) -> MemoryTier {
        MemoryTier {
            slots: HashMap::with_hasher(Xxh64Builder::new(0)),
            recency: VecDeque::new(),
            next_tick: 0,
            bytes: 0,
            max_bytes,
            max_age_ms,
            tombstones: Vec::new(),
            closed_until_ms: 0,
            tombstone_ms: 0,
        }
    }

    /// Seeds the hash of the slots' keys (a random seed per VM: keys a client can steer must
    /// not be made to collide). XXH64, already in the .wasm for checksums, not std's SipHash.
    pub fn with_seed(mut self, seed: u64) -> MemoryTier {
        self.slots = HashMap::with_hasher(Xxh64Builder::new(seed));
        self
    }

    /// Sets how long a removed key refuses values read from the store: longer than any lookup
    /// in flight can still be answered (`store.timeout_ms` plus the large-entry allowance).
    pub fn with_tombstones(mut self, ms: u64) -> MemoryTier {
        self.tombstone_ms = ms;
        self
    }

    pub fn enabled(&self) -> bool {
        self.max_bytes > 0 && self.max_age_ms > 0
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The value under `key` if it is still within its time here.
    pub fn get(&mut self, key: &str, now_ms: u64) -> Option<Remembered> {
        self.lookup(key, now_ms, false)
    }

    /// The value under `key` while the store fails: past `max_age_ms`, until the response's
    /// own freshness and stale windows end.
    pub fn get_in_grace(&mut self, key: &str, now_ms: u64) -> Option<Remembered> {
        self.lookup(key, now_ms, true)
    }

    fn lookup(&mut self, key: &str, now_ms: u64, grace: bool) -> Option<Remembered> {
        let slot = self.slots.get_mut(key)?;
        if now_ms >= slot.usable_until_ms {
            self.remove(key);
            return None;
        }
        if now_ms >= slot.expires_at_ms && !grace {
            // Kept, for grace, while the response allows it.
            return None;
        }
        let tick = self.next_tick;
        self.next_tick += 1;
        slot.tick.set(tick);
        let item = slot.item.clone();
        self.recency.push_back(Place {
            tick,
            current: slot.tick.clone(),
            key: slot.key.clone(),
        });
        self.compact();
        Some(item)
    }

    /// Keeps a value read from the store at `now_ms`, until `max_age_ms` from now or
    /// `fresh_until_ms`, whichever is first.
    pub fn insert(&mut self, key: &str, item: Remembered, now_ms: u64, fresh_until_ms: u64) {
        self.insert_with_grace(key, item, now_ms, fresh_until_ms, fresh_until_ms);
    }

    /// [`MemoryTier::insert`], and served in grace (the store failing) until `usable_until_ms`.
    pub fn insert_with_grace(
        &mut self,
        key: &str,
        item: Remembered,
        now_ms: u64,
        fresh_until_ms: u64,
        usable_until_ms: u64,
    ) {
        if !self.enabled() || now_ms < self.closed_until_ms || self.buried(key, now_ms) {
            return;
        }
        let bytes = SLOT_OVERHEAD
            + key.len()
            + match &item {
                Remembered::Response { value, meta, .. } => {
                    value.len()
                        + meta
                            .headers
                            .iter()
                            .map(|(n, v)| n.len() + v.len())
                            .sum::<usize>()
                }
                Remembered::Variants(v) => v.headers.iter().map(String::len).sum(),
            };
        if bytes > self.max_bytes / 4 {
            // One value may not push out most of the tier.
            return;
        }
        self.remove(key);
        while self.bytes + bytes > self.max_bytes {
            let Some(oldest) = self.recency.pop_front() else {
                break;
            };
            if oldest.live() {
                self.remove(&oldest.key);
            }
        }
        let tick = self.next_tick;
        self.next_tick += 1;
        let key: Rc<str> = Rc::from(key);
        let current = Rc::new(Cell::new(tick));
        self.recency.push_back(Place {
            tick,
            current: current.clone(),
            key: key.clone(),
        });
        self.bytes += bytes;
        self.slots.insert(
            key.clone(),
            Slot {
                item,
                expires_at_ms: now_ms.saturating_add(self.max_age_ms).min(fresh_until_ms),
                usable_until_ms: usable_until_ms.max(fresh_until_ms),
                bytes,
                tick: current,
                key,
            },
        );
        self.compact();
    }

    /// Drops the stale places of `recency` once they outnumber the live ones: linear, but at
    /// most once per as many uses as there are slots, so O(1) per use.
    fn compact(&mut self) {
        if self.recency.len() <= 2 * self.slots.len() + 64 {
            return;
        }
        self.recency.retain(Place::live);
    }

    /// Drops `key` (invalidated or purged): neither it nor a value read for it before now is
    /// served from here.
    pub fn forget(&mut self, key: &str, now_ms: u64) {
        self.remove(key);
        if !self.enabled() {
            return;
        }
        self.tombstones
            .retain(|(k, until)| *until > now_ms && k != key);
        if self.tombstones.len() >= MAX_TOMBSTONES {
            self.forget_all(now_ms);
            return;
        }
        self.tombstones
            .push((key.to_string(), now_ms.saturating_add(self.tombstone_ms)));
    }

    /// Drops everything (a purge by tag: which keys it reached only the store knows), and
    /// keeps nothing read before now.
    pub fn forget_all(&mut self, now_ms: u64) {
        self.slots.clear();
        self.recency.clear();
        self.bytes = 0;
        self.tombstones.clear();
        self.closed_until_ms = now_ms.saturating_add(self.tombstone_ms);
    }

    fn buried(&self, key: &str, now_ms: u64) -> bool {
        self.tombstones
            .iter()
            .any(|(k, until)| *until > now_ms && k == key)
    }

    pub fn remove(&mut self, key: &str) {
        // Its place in `recency` goes stale (no slot, or a newer tick once reinserted).
        if let Some(s) = self.slots.remove(key) {
            s.tick.set(GONE);
            self.bytes -= s.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variants(n: usize) -> Remembered {
        // `n` bytes of header names: the size the tier counts.
        Remembered::Variants(VariantsMeta {
            headers: vec!["a".repeat(n)],
            key_digest: [0; 32],
        })
    }

    #[test]
    fn values_expire_after_max_age_or_freshness() {
        let mut m = MemoryTier::new(1 << 20, 1000);
        m.insert("a", variants(1), 0, u64::MAX);
        m.insert("b", variants(1), 0, 500);
        assert!(m.get("a", 999).is_some());
        assert!(m.get("a", 1000).is_none(), "max age");
        assert!(m.get("b", 499).is_some());
        assert!(m.get("b", 500).is_none(), "freshness");
        assert_eq!(
            m.len(),
            1,
            "b is gone; a is kept for grace (no freshness of its own)"
        );
        m.remove("a");
        assert_eq!(m.bytes(), 0);
    }

    #[test]
    fn in_grace_values_last_as_long_as_the_response_allows() {
        let mut m = MemoryTier::new(1 << 20, 1000);
        // Fresh until 5 s, usable (a stale window) until 8 s.
        m.insert_with_grace("a", variants(1), 0, 5_000, 8_000);
        assert!(m.get("a", 999).is_some());
        assert!(m.get("a", 1_000).is_none(), "max age");
        assert!(m.get_in_grace("a", 1_000).is_some(), "kept for grace");
        assert!(m.get_in_grace("a", 7_999).is_some());
        assert!(m.get("a", 7_999).is_none(), "never outside grace");
        assert!(m.get_in_grace("a", 8_000).is_none());
        assert!(m.is_empty(), "gone once unusable");
        // Without a stale window, grace ends with freshness.
        m.insert("b", variants(1), 0, 5_000);
        assert!(m.get_in_grace("b", 4_999).is_some());
        assert!(m.get_in_grace("b", 5_000).is_none());
        // A purge ends it too.
        m.insert_with_grace("c", variants(1), 0, 5_000, 8_000);
        m.forget("c", 2_000);
        assert!(m.get_in_grace("c", 2_000).is_none());
    }

    #[test]
    fn least_recently_used_goes_first_within_the_byte_budget() {
        let mut m = MemoryTier::new(4 * (SLOT_OVERHEAD + 101), 10_000);
        for k in ["a", "b", "c", "d"] {
            m.insert(k, variants(100), 0, u64::MAX);
        }
        assert_eq!(m.len(), 4);
        assert!(m.get("a", 1).is_some()); // a is now the most recent
        m.insert("e", variants(100), 1, u64::MAX);
        assert!(m.get("b", 2).is_none(), "b was the least recently used");
        for k in ["a", "c", "d", "e"] {
            assert!(m.get(k, 2).is_some(), "{k}");
        }
        assert!(m.bytes() <= 4 * (SLOT_OVERHEAD + 101));
    }

    #[test]
    fn recency_stays_bounded_and_ordered_through_many_uses_and_replacements() {
        let mut m = MemoryTier::new(4 * (SLOT_OVERHEAD + 101), 1_000_000);
        for k in ["a", "b", "c", "d"] {
            m.insert(k, variants(100), 0, u64::MAX);
        }
        // Thousands of uses and replacements leave stale places behind; they are dropped.
        for i in 0..5_000u64 {
            assert!(m.get(["a", "b", "c"][(i % 3) as usize], 1).is_some());
            if i % 7 == 0 {
                m.insert("d", variants(100), 1, u64::MAX);
            }
            assert!(m.recency.len() <= 2 * m.slots.len() + 64 + 1, "{i}");
        }
        m.remove("d");
        // Last uses: c (i = 4997), a (4998), b (4999): c is the least recent of the three.
        m.insert("x", variants(100), 2, u64::MAX);
        m.insert("y", variants(100), 2, u64::MAX);
        assert!(m.get("c", 3).is_none(), "c was the least recently used");
        for k in ["a", "b", "x", "y"] {
            assert!(m.get(k, 3).is_some(), "{k}");
        }
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn oversized_values_and_a_disabled_tier_keep_nothing() {
        let mut m = MemoryTier::new(4096, 1000);
        m.insert("big", variants(2000), 0, u64::MAX);
        assert!(m.is_empty());
        let mut off = MemoryTier::new(0, 1000);
        off.insert("a", variants(1), 0, u64::MAX);
        assert!(off.is_empty());
    }

    #[test]
    fn a_forgotten_key_refuses_values_read_before_it_was_forgotten() {
        let mut m = MemoryTier::new(1 << 20, 1000).with_tombstones(300);
        m.insert("a", variants(1), 0, u64::MAX);
        m.forget("a", 10);
        assert!(m.get("a", 10).is_none());
        // A lookup sent before the invalidation landed answers with the old value.
        m.insert("a", variants(1), 200, u64::MAX);
        assert!(m.get("a", 200).is_none(), "not kept");
        m.insert("b", variants(1), 200, u64::MAX);
        assert!(m.get("b", 200).is_some(), "other keys are");
        m.insert("a", variants(1), 310, u64::MAX);
        assert!(m.get("a", 310).is_some(), "after the tombstone");
        m.forget_all(400);
        assert!(m.is_empty());
        m.insert("b", variants(1), 699, u64::MAX);
        assert!(m.is_empty(), "nothing kept while closed");
        m.insert("b", variants(1), 700, u64::MAX);
        assert!(!m.is_empty());
    }

    #[test]
    fn too_many_tombstones_close_the_tier_for_a_while_instead() {
        let mut m = MemoryTier::new(1 << 20, 1000).with_tombstones(300);
        for i in 0..=MAX_TOMBSTONES {
            m.forget(&i.to_string(), 0);
        }
        m.insert("x", variants(1), 1, u64::MAX);
        assert!(
            m.is_empty(),
            "the tier refuses everything rather than lose a tombstone"
        );
        assert!(m.tombstones.len() <= MAX_TOMBSTONES);
    }

    #[test]
    fn replacing_and_removing_keep_the_byte_count() {
        let mut m = MemoryTier::new(1 << 20, 1000);
        m.insert("a", variants(10), 0, u64::MAX);
        let one = m.bytes();
        m.insert("a", variants(10), 0, u64::MAX);
        assert_eq!(m.bytes(), one);
        m.remove("a");
        assert_eq!(m.bytes(), 0);
        m.remove("a");
    }
}
