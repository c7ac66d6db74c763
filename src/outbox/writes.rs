//! The write queue: finished recordings (and refreshes, invalidations) waiting to be written
//! to the store. Part of the [`super::Outbox`], owned by the root context, so a write outlives
//! its stream and its answer is seen (retry once, count).
//!
//! Entries waiting together leave together: a store callout costs Envoy far more CPU than a
//! write costs Redis, so while a write callout is out, entries queue and the next callout
//! carries up to [`MAX_BATCH_ENTRIES`] of them (one atomic script, in queue order). A full
//! batch leaves at once, up to [`MAX_IN_FLIGHT`] out, so a slow store or a large entry in
//! flight does not hold the queue to one batch per round trip (the rule lookups follow too).
//! Refreshes and invalidations go alone (other scripts).
//!
//! On a Redis Cluster (`one_slot`), a callout may only touch keys of one slot: each job goes
//! alone (a resource's entry, variant, variants set and lock share a slot), an entry's tag sets
//! are written by jobs of their own right after it, and an invalidation of resources in
//! several slots is one job per slot. Several may be out at once, up to [`MAX_IN_FLIGHT`].
//!
//! Pure bookkeeping: the outbox takes batches with [`WriteQueue::next_batch`] (or riders with
//! [`WriteQueue::next_riders`]), holds them while they are out, and settles each with
//! [`WriteQueue::settle`].

use super::MAX_IN_FLIGHT;
use crate::store::layout::slot;
use crate::store::{StoreWrite, Write};
use std::collections::VecDeque;

/// Entries per write callout.
pub const MAX_BATCH_ENTRIES: usize = 16;

/// Bytes per write callout: entries join a batch while it stays under this (a larger entry
/// goes alone), so one callout never carries several large bodies into Envoy and Redis.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

#[derive(Debug)]
pub struct Job {
    pub write: StoreWrite,
    /// 0 for the first try, 1 for the retry.
    pub attempt: u8,
    /// The stream whose response's end waits for this write to land (read your writes).
    pub waiter: Option<u32>,
    /// The lock of the fetch this entry is from, when others wait for it (collapsed misses):
    /// the entry's write removes it; if the write fails, it must be freed (`key`, owner).
    pub lock: Option<(String, u64)>,
}

/// What an answer means for its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored: this many bytes.
    Published(usize),
    /// Failed once; queued again.
    Retrying,
    /// Failed twice: given up.
    Failed,
}

impl Job {
    /// An entry write that can share a callout with others (not a refresh, which is another
    /// script).
    fn is_plain_entry(&self) -> bool {
        matches!(&self.write, StoreWrite::Entry(w) if w.refresh.is_none())
    }

    /// May ride with a lookup (under its short deadline): a plain entry's first try. A retry
    /// goes alone, under the write deadline.
    fn may_ride(&self) -> bool {
        self.is_plain_entry() && self.attempt == 0
    }
}

/// The entry writes of a batch of jobs (a batch of plain entries, or riders), as the store's
/// entries script takes them.
pub fn entries(jobs: &[Job]) -> Vec<&Write> {
    jobs.iter()
        .filter_map(|j| match &j.write {
            StoreWrite::Entry(w) => Some(w),
            StoreWrite::Invalidate(_) | StoreWrite::Unlock { .. } | StoreWrite::Tag { .. } => None,
        })
        .collect()
}

#[derive(Debug)]
pub struct WriteQueue {
    pending: VecDeque<Job>,
    /// Batches taken and not settled yet.
    in_flight: usize,
    /// Bytes held by pending and in-flight jobs.
    held_bytes: usize,
    /// Bytes held by pending jobs: a batch's worth may leave while another is out.
    pending_bytes: usize,
    /// Bound on `held_bytes`: a store slower than the miss rate must not grow the VM without
    /// limit; past it new recordings are dropped (and counted).
    max_bytes: usize,
    /// The store is a Redis Cluster: every job touches one slot and goes alone.
    one_slot: bool,
    /// With `one_slot`, the slots of the jobs out: one job per slot at a time, so a newer
    /// write (or an invalidation) of a key never lands before an older one still out.
    out_slots: Vec<u16>,
}

impl WriteQueue {
    pub fn new(max_bytes: usize, one_slot: bool) -> WriteQueue {
        WriteQueue {
            pending: VecDeque::new(),
            in_flight: 0,
            held_bytes: 0,
            pending_bytes: 0,
            max_bytes,
            one_slot,
            out_slots: Vec::new(),
        }
    }

    /// Queues a write; false (and the write dropped) when the queue is full.
    pub fn push(&mut self, write: StoreWrite) -> bool {
        self.push_for(write, None)
    }

    /// Queues a write that `waiter` waits for.
    pub fn push_for(&mut self, write: StoreWrite, waiter: Option<u32>) -> bool {
        self.push_job(write, waiter, None)
    }

    /// Queues a write that `waiter` waits for, the entry of the fetch holding `lock`.
    pub fn push_job(
        &mut self,
        write: StoreWrite,
        waiter: Option<u32>,
        lock: Option<(String, u64)>,
    ) -> bool {
        if !self.one_slot {
            return self.push_one(write, waiter, lock);
        }
        match write {
            StoreWrite::Entry(mut w) if !w.tags.is_empty() => {
                // The entry first: a purge by tag that runs between the two finds the entry
                // missing from the set and leaves it (until its TTL); the README says so.
                let tags = std::mem::take(&mut w.tags);
                let (member, ttl_ms) = (w.key.clone(), w.ttl_ms);
                // All or nothing: an entry whose tag set writes did not fit would escape
                // purges by those tags.
                let tag_bytes: usize = tags.iter().map(|t| t.len() + member.len()).sum();
                if self.held_bytes + w.entry.len() + tag_bytes > self.max_bytes {
                    return false;
                }
                if !self.push_one(StoreWrite::Entry(w), waiter, lock) {
                    return false;
                }
                for set in tags {
                    let member = member.clone();
                    self.push_one(
                        StoreWrite::Tag {
                            set,
                            member,
                            ttl_ms,
                        },
                        None,
                        None,
                    );
                }
                true
            }
            write => self.push_one(write, waiter, lock),
        }
    }

    fn push_one(
        &mut self,
        write: StoreWrite,
        waiter: Option<u32>,
        lock: Option<(String, u64)>,
    ) -> bool {
        let size = write.size();
        if self.held_bytes + size > self.max_bytes {
            return false;
        }
        self.held_bytes += size;
        self.pending_bytes += size;
        self.pending.push_back(Job {
            write,
            attempt: 0,
            waiter,
            lock,
        });
        true
    }

    /// Whether a batch may leave now: none is out, or a full one waits and the bound allows.
    pub fn can_send(&self) -> bool {
        if self.one_slot {
            // Jobs go alone, so none waits for a batch to fill.
            return !self.pending.is_empty() && self.in_flight < MAX_IN_FLIGHT;
        }
        let full = self.pending.len() >= MAX_BATCH_ENTRIES || self.pending_bytes >= MAX_BATCH_BYTES;
        !self.pending.is_empty()
            && (self.in_flight == 0 || (full && self.in_flight < MAX_IN_FLIGHT))
    }

    /// The next jobs to send in one callout, if [`WriteQueue::can_send`]: one refresh or
    /// invalidation, or entries (oldest first, within the batch bounds).
    pub fn next_batch(&mut self) -> Option<Vec<Job>> {
        if !self.can_send() {
            return None;
        }
        if self.one_slot {
            // In queue order; the next waits while a job of its slot is out.
            let s = job_slot(self.pending.front()?);
            if self.out_slots.contains(&s) {
                return None;
            }
            self.out_slots.push(s);
            return self.take(1, usize::MAX);
        }
        let first = self.pending.front()?;
        if !first.is_plain_entry() {
            return self.take(1, usize::MAX);
        }
        // A larger entry goes alone.
        self.take(MAX_BATCH_ENTRIES, MAX_BATCH_BYTES.max(first.write.size()))
    }

    /// Entries to send with a lookup batch, in the same callout (under the lookup's
    /// deadline): first tries of plain entries, oldest first, at most `max_bytes` in all;
    /// None when the next job is not one of those or does not fit.
    pub fn next_riders(&mut self, max_bytes: usize) -> Option<Vec<Job>> {
        // On a Cluster a rider would share a callout with keys of other slots.
        if self.one_slot || !self.can_send() || !self.pending.front().is_some_and(Job::may_ride) {
            return None;
        }
        let n = self.pending.iter().take_while(|j| j.may_ride()).count();
        self.take(n.min(MAX_BATCH_ENTRIES), max_bytes)
    }

    /// Whether the next write should wait for a lookup batch to ride with (one is out):
    /// it may ride, and what waits is less than a batch of riders (`max_bytes`), which
    /// would go on its own.
    pub fn holds_for_ride(&self, max_bytes: usize) -> bool {
        !self.one_slot
            && self.pending.front().is_some_and(Job::may_ride)
            && self.pending.len() < MAX_BATCH_ENTRIES
            && self.pending_bytes < max_bytes
    }

    /// Up to `max_jobs` jobs from the front while their sizes add up to at most `max_bytes`;
    /// None if the first does not fit.
    fn take(&mut self, max_jobs: usize, max_bytes: usize) -> Option<Vec<Job>> {
        let mut bytes = 0;
        let mut n = 0;
        for job in self.pending.iter().take(max_jobs) {
            let size = job.write.size();
            if bytes + size > max_bytes || (n > 0 && !job.is_plain_entry()) {
                break;
            }
            bytes += size;
            n += 1;
        }
        if n == 0 {
            return None;
        }
        self.pending_bytes -= bytes;
        Some(self.pending.drain(..n).collect())
    }

    /// Jobs taken but not sent after all, back at the front in their order, as if never
    /// taken.
    pub fn put_back(&mut self, jobs: Vec<Job>) {
        self.release_slots(&jobs);
        for job in jobs.into_iter().rev() {
            self.pending_bytes += job.write.size();
            self.pending.push_front(job);
        }
    }

    /// A batch taken with [`WriteQueue::next_batch`] or [`WriteQueue::next_riders`] left (or is
    /// about to): it counts as out until settled.
    pub fn sent(&mut self) {
        self.in_flight += 1;
    }

    /// What the answer (`ok`, or a failure: an error answer, a refusal to dispatch) means for
    /// each job of a batch that was [`WriteQueue::sent`]. Failed first tries go back to the
    /// front of the queue.
    pub fn settle(&mut self, batch: Vec<Job>, ok: bool) -> Vec<Outcome> {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.release_slots(&batch);
        self.settle_jobs(batch, ok)
    }

    fn settle_jobs(&mut self, batch: Vec<Job>, ok: bool) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(batch.len());
        // Retries go first, in their order: they are the oldest writes, and a newer write of
        // the same key queued behind them must still land last.
        for mut job in batch.into_iter().rev() {
            let size = job.write.size();
            let outcome = if ok {
                self.held_bytes -= size;
                Outcome::Published(size)
            } else if job.attempt == 0 {
                job.attempt = 1;
                self.pending_bytes += size;
                self.pending.push_front(job);
                Outcome::Retrying
            } else {
                self.held_bytes -= size;
                Outcome::Failed
            };
            outcomes.push(outcome);
        }
        outcomes.reverse();
        outcomes
    }

    /// The slots of jobs no longer out.
    fn release_slots(&mut self, jobs: &[Job]) {
        if self.one_slot {
            for j in jobs {
                let s = job_slot(j);
                if let Some(i) = self.out_slots.iter().position(|o| *o == s) {
                    self.out_slots.swap_remove(i);
                }
            }
        }
    }

    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.in_flight == 0
    }

    /// Drops the queued entry writes of these resources: they were invalidated, and an older
    /// response written after the invalidation would bring the removed entry back. Returns
    /// the streams that waited for them.
    #[inline(never)]
    pub fn drop_entries_of(&mut self, keys: &[String]) -> Vec<u32> {
        let (mut held, mut pending) = (self.held_bytes, self.pending_bytes);
        let mut waiters = Vec::new();
        self.pending.retain(|job| {
            let obsolete = matches!(&job.write, StoreWrite::Entry(w) if keys.contains(&w.key));
            if obsolete {
                held -= job.write.size();
                pending -= job.write.size();
                waiters.extend(job.waiter);
            }
            !obsolete
        });
        (self.held_bytes, self.pending_bytes) = (held, pending);
        waiters
    }
}

/// The Cluster slot a job's keys are in (one, with `one_slot`).
fn job_slot(job: &Job) -> u16 {
    slot(match &job.write {
        StoreWrite::Entry(w) => &w.key,
        StoreWrite::Invalidate(keys) => keys.first().map_or("", String::as_str),
        StoreWrite::Unlock { key, .. } => key,
        StoreWrite::Tag { set, .. } => set,
    })
}

/// `keys` grouped by their Redis Cluster slot, each group in the order of its first key.
pub fn by_slot(keys: Vec<String>) -> Vec<Vec<String>> {
    let mut groups: Vec<Vec<String>> = Vec::new();
    for k in keys {
        let s = slot(&k);
        match groups.iter_mut().find(|g| slot(&g[0]) == s) {
            Some(g) => g.push(k),
            None => groups.push(vec![k]),
        }
    }
    groups
}

/// Whether these jobs write an entry of one of `keys`.
#[inline(never)]
pub fn writes_any_of(jobs: &[Job], keys: &[String]) -> bool {
    jobs.iter()
        .any(|j| matches!(&j.write, StoreWrite::Entry(w) if keys.contains(&w.key)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Write;
    use std::collections::HashMap;

    /// The queue with the batches out held by token, as the outbox holds them.
    struct Q {
        q: WriteQueue,
        out: HashMap<u32, Vec<Job>>,
    }

    impl std::ops::Deref for Q {
        type Target = WriteQueue;
        fn deref(&self) -> &WriteQueue {
            &self.q
        }
    }

    impl std::ops::DerefMut for Q {
        fn deref_mut(&mut self) -> &mut WriteQueue {
            &mut self.q
        }
    }

    impl Q {
        fn new(max_bytes: usize) -> Q {
            Q {
                q: WriteQueue::new(max_bytes, false),
                out: HashMap::new(),
            }
        }

        fn sent(&mut self, token: u32, batch: Vec<Job>) {
            self.q.sent();
            self.out.insert(token, batch);
        }

        fn answered(&mut self, token: u32, ok: bool) -> Vec<Outcome> {
            match self.out.remove(&token) {
                Some(batch) => self.q.settle(batch, ok),
                None => Vec::new(),
            }
        }

        fn not_sent(&mut self, batch: Vec<Job>) -> Vec<Outcome> {
            self.q.sent();
            self.q.settle(batch, false)
        }

        fn carries(&self, token: u32) -> bool {
            self.out.contains_key(&token)
        }
    }

    fn write(key: &str, size: usize) -> StoreWrite {
        StoreWrite::Entry(Write {
            key: key.into(),
            variant: None,
            ttl_ms: 1000,
            entry: vec![0; size],
            refresh: None,
            tags: vec![],
        })
    }

    fn key_of(job: &Job) -> &str {
        match &job.write {
            StoreWrite::Entry(w) => &w.key,
            StoreWrite::Invalidate(keys) => &keys[0],
            StoreWrite::Unlock { key, .. } => key,
            StoreWrite::Tag { set, .. } => set,
        }
    }

    fn one(q: &mut Q) -> Job {
        let mut batch = q.next_batch().unwrap();
        assert_eq!(batch.len(), 1);
        batch.pop().unwrap()
    }

    fn keys(batch: &[Job]) -> Vec<&str> {
        batch.iter().map(key_of).collect()
    }

    #[test]
    fn publishes_then_idles() {
        let mut q = Q::new(100);
        assert!(q.push(write("a", 10)));
        let batch = q.next_batch().unwrap();
        q.sent(7, batch);
        assert!(!q.is_idle());
        assert_eq!(q.answered(7, true), [Outcome::Published(10)]);
        assert!(q.is_idle());
    }

    #[test]
    fn retries_once_first_in_line_then_gives_up() {
        let mut q = Q::new(100);
        assert!(q.push(write("a", 10)));
        let a = q.next_batch().unwrap();
        q.sent(1, a);
        assert!(q.push(write("b", 10)));
        assert_eq!(q.answered(1, false), [Outcome::Retrying]);
        let again = q.next_batch().unwrap();
        assert_eq!(
            keys(&again),
            ["a", "b"],
            "the retry first, then the newer write"
        );
        assert_eq!(again[0].attempt, 1);
        assert_eq!(q.not_sent(again), [Outcome::Failed, Outcome::Retrying]);
        let b = q.next_batch().unwrap();
        assert_eq!(keys(&b), ["b"]);
        assert_eq!(b[0].attempt, 1);
    }

    #[test]
    fn a_failed_batch_is_retried_in_its_order() {
        let mut q = Q::new(100);
        for k in ["a", "b", "c"] {
            q.push(write(k, 1));
        }
        let batch = q.next_batch().unwrap();
        q.sent(1, batch);
        q.push(write("d", 1));
        assert_eq!(q.answered(1, false), [Outcome::Retrying; 3]);
        assert_eq!(keys(&q.next_batch().unwrap()), ["a", "b", "c", "d"]);
    }

    #[test]
    fn bounded_by_bytes() {
        let mut q = Q::new(25);
        assert!(q.push(write("a", 10)));
        assert!(q.push(write("b", 10)));
        assert!(!q.push(write("c", 10)));
        let batch = q.next_batch().unwrap();
        q.sent(1, batch);
        assert_eq!(
            q.answered(1, true),
            [Outcome::Published(10), Outcome::Published(10)]
        );
        assert!(q.push(write("c", 10)));
    }

    #[test]
    fn what_waits_for_the_batch_out_goes_together() {
        let mut q = Q::new(usize::MAX);
        assert!(q.push(write("a", 1)));
        let a = q.next_batch().unwrap();
        q.sent(0, a);
        for k in ["x", "y", "z"] {
            q.push(write(k, 1));
        }
        assert!(q.next_batch().is_none());
        assert!(!q.can_send(), "the answer drives the queue");
        q.answered(0, true);
        assert!(q.can_send());
        assert_eq!(keys(&q.next_batch().unwrap()), ["x", "y", "z"]);
        assert!(!q.can_send());
    }

    #[test]
    fn full_batches_leave_at_once_up_to_the_bound() {
        let mut q = Q::new(usize::MAX);
        q.push(write("first", 1));
        let b = q.next_batch().unwrap();
        q.sent(0, b);
        // Full by count.
        for i in 0..MAX_BATCH_ENTRIES {
            q.push(write(&format!("n{i}"), 1));
        }
        assert!(q.can_send());
        let b = q.next_batch().unwrap();
        assert_eq!(b.len(), MAX_BATCH_ENTRIES);
        q.sent(1, b);
        // Full by bytes: one large entry.
        q.push(write("big", MAX_BATCH_BYTES));
        let b = q.next_batch().unwrap();
        assert_eq!(keys(&b), ["big"]);
        q.sent(2, b);
        for t in 3..MAX_IN_FLIGHT as u32 {
            q.push(write(&t.to_string(), MAX_BATCH_BYTES));
            let b = q.next_batch().unwrap();
            q.sent(t, b);
        }
        q.push(write("over", MAX_BATCH_BYTES));
        assert!(q.next_batch().is_none(), "the bound is reached");
        q.answered(1, true);
        assert_eq!(keys(&q.next_batch().unwrap()), ["over"]);
    }

    #[test]
    fn a_retry_counts_again_towards_a_full_batch() {
        let mut q = Q::new(usize::MAX);
        q.push(write("a", MAX_BATCH_BYTES));
        let b = q.next_batch().unwrap();
        q.sent(0, b);
        q.push(write("b", MAX_BATCH_BYTES));
        let b = q.next_batch().unwrap();
        q.sent(1, b);
        assert_eq!(q.answered(0, false), [Outcome::Retrying]);
        assert!(q.can_send(), "a full batch again while b is out");
        assert_eq!(keys(&q.next_batch().unwrap()), ["a"]);
        q.push(write("small", 1));
        assert!(!q.can_send(), "the sent bytes no longer count");
    }

    #[test]
    fn batches_are_bounded_by_count_and_bytes() {
        let mut q = Q::new(usize::MAX);
        for i in 0..MAX_BATCH_ENTRIES + 2 {
            q.push(write(&i.to_string(), 10));
        }
        assert_eq!(q.next_batch().unwrap().len(), MAX_BATCH_ENTRIES);
        assert_eq!(q.next_batch().unwrap().len(), 2);

        q.push(write("small", 10));
        q.push(write("big", MAX_BATCH_BYTES));
        q.push(write("after", 10));
        assert_eq!(keys(&q.next_batch().unwrap()), ["small"]);
        assert_eq!(
            keys(&q.next_batch().unwrap()),
            ["big"],
            "a large entry goes alone"
        );
        assert_eq!(keys(&q.next_batch().unwrap()), ["after"]);
    }

    #[test]
    fn small_first_tries_ride_with_lookups() {
        let mut q = Q::new(usize::MAX);
        q.push(write("a", 10));
        q.push(write("b", 10));
        q.push(write("c", 10));
        q.push(StoreWrite::Invalidate(vec!["i".into()]));
        assert_eq!(
            keys(&q.next_riders(25).unwrap()),
            ["a", "b"],
            "within the bytes"
        );
        assert_eq!(
            keys(&q.next_riders(25).unwrap()),
            ["c"],
            "not past an invalidation"
        );
        assert!(q.next_riders(25).is_none(), "an invalidation goes alone");
        assert_eq!(keys(&q.next_batch().unwrap()), ["i"]);

        q.push(write("big", MAX_BATCH_BYTES));
        assert!(q.next_riders(25).is_none(), "too big to ride: goes alone");
        let big = q.next_batch().unwrap();
        q.sent(1, big);
        q.push(write("d", 1));
        assert!(
            q.next_riders(25).is_none(),
            "waits for the batch out, like any write"
        );
        assert_eq!(q.answered(1, false), [Outcome::Retrying]);
        q.push(write("e", 1));
        let retry = q.next_batch().unwrap();
        assert_eq!(keys(&retry), ["big"]);
        q.sent(2, retry);
        q.answered(2, true);
        let riders = q.next_riders(25).unwrap();
        assert_eq!(keys(&riders), ["d", "e"]);
        q.sent(3, riders);
        assert_eq!(q.answered(3, false), [Outcome::Retrying; 2]);
        assert!(
            q.next_riders(25).is_none(),
            "a retry goes alone, under the write deadline"
        );
        assert_eq!(keys(&q.next_batch().unwrap()), ["d", "e"]);
    }

    #[test]
    fn small_entries_wait_for_a_ride_until_a_batch_of_riders_waits() {
        let mut q = Q::new(usize::MAX);
        assert!(!q.holds_for_ride(100), "nothing waits");
        q.push(write("a", 10));
        assert!(q.holds_for_ride(100));
        q.push(write("b", 95));
        assert!(
            !q.holds_for_ride(100),
            "a batch of riders' worth goes on its own"
        );
        let mut q = Q::new(usize::MAX);
        q.push(StoreWrite::Invalidate(vec!["i".into()]));
        q.push(write("a", 10));
        assert!(!q.holds_for_ride(100), "an invalidation never waits");
        let mut q = Q::new(usize::MAX);
        for i in 0..MAX_BATCH_ENTRIES {
            q.push(write(&i.to_string(), 1));
        }
        assert!(!q.holds_for_ride(100), "a full batch goes");
    }

    #[test]
    fn riders_put_back_are_as_if_never_taken() {
        let mut q = Q::new(usize::MAX);
        q.push(write("a", 10));
        q.push(write("b", 10));
        let riders = q.next_riders(100).unwrap();
        assert!(!q.carries(1));
        q.put_back(riders);
        let batch = q.next_batch().unwrap();
        assert_eq!(keys(&batch), ["a", "b"]);
        q.sent(1, batch);
        assert!(q.carries(1));
        assert_eq!(q.answered(1, true), [Outcome::Published(10); 2]);
        assert!(q.is_idle());
        assert!(!q.can_send());
    }

    #[test]
    fn refreshes_and_invalidations_go_alone() {
        let mut q = Q::new(usize::MAX);
        let refresh = StoreWrite::Entry(Write {
            refresh: Some(crate::store::Refresh {
                keep: 1,
                expected_len: 2,
            }),
            ..match write("r", 1) {
                StoreWrite::Entry(w) => w,
                _ => unreachable!(),
            }
        });
        q.push(write("a", 1));
        q.push(refresh);
        q.push(StoreWrite::Invalidate(vec!["i".into()]));
        q.push(write("b", 1));
        q.push(write("c", 1));
        assert_eq!(keys(&q.next_batch().unwrap()), ["a"]);
        assert_eq!(keys(&q.next_batch().unwrap()), ["r"]);
        assert_eq!(keys(&q.next_batch().unwrap()), ["i"]);
        assert_eq!(keys(&q.next_batch().unwrap()), ["b", "c"]);
    }

    #[test]
    fn invalidations_are_queued_like_entries() {
        let mut q = Q::new(100);
        assert!(q.push(StoreWrite::Invalidate(vec!["ns:a".into()])));
        let job = one(&mut q);
        assert_eq!(key_of(&job), "ns:a");
        q.sent(1, vec![job]);
        assert_eq!(q.answered(1, true), [Outcome::Published(4)]);
    }

    #[test]
    fn unknown_token_settles_nothing() {
        let mut q = Q::new(10);
        assert!(q.answered(99, true).is_empty());
    }
}
