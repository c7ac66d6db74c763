//! The publish queue: finished recordings waiting to be written to the store, owned by the
//! root context so a write outlives its stream and its answer is seen (retry once, count).
//!
//! Entries waiting together leave together: a store callout costs Envoy far more CPU than a
//! write costs Redis, so while [`MAX_IN_FLIGHT`] callouts are out, entries queue and the next
//! callout carries up to [`MAX_BATCH_ENTRIES`] of them (one atomic script, in queue order).
//! Refreshes and invalidations go alone (other scripts).
//!
//! Pure bookkeeping; the root context sends what [`PublishQueue::next_batch`] gives and
//! reports each answer to [`PublishQueue::answered`].

use crate::store::StoreWrite;
use std::collections::{HashMap, VecDeque};

/// Write callouts per VM in flight at once: enough to keep the store busy while one carries a
/// large entry, few enough that writes arriving meanwhile queue and share the next callout.
pub const MAX_IN_FLIGHT: usize = 4;

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
}

#[derive(Debug)]
pub struct PublishQueue {
    pending: VecDeque<Job>,
    in_flight: HashMap<u32, Vec<Job>>,
    /// Bytes held by pending and in-flight jobs.
    held_bytes: usize,
    /// Bound on `held_bytes`: a store slower than the miss rate must not grow the VM without
    /// limit; past it new recordings are dropped (and counted).
    max_bytes: usize,
}

impl PublishQueue {
    pub fn new(max_bytes: usize) -> PublishQueue {
        PublishQueue {
            pending: VecDeque::new(),
            in_flight: HashMap::new(),
            held_bytes: 0,
            max_bytes,
        }
    }

    /// Queues a write; false (and the write dropped) when the queue is full.
    pub fn push(&mut self, write: StoreWrite) -> bool {
        let size = write.size();
        if self.held_bytes + size > self.max_bytes {
            return false;
        }
        self.held_bytes += size;
        self.pending.push_back(Job { write, attempt: 0 });
        true
    }

    /// The next jobs to send in one callout, if the in-flight limit allows: one refresh or
    /// invalidation, or entries (oldest first, within the batch bounds).
    pub fn next_batch(&mut self) -> Option<Vec<Job>> {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return None;
        }
        let first = self.pending.pop_front()?;
        let mut bytes = first.write.size();
        let mut batch = vec![first];
        if !batch[0].is_plain_entry() {
            return Some(batch);
        }
        while let Some(next) = self.pending.front() {
            let size = next.write.size();
            if !next.is_plain_entry()
                || batch.len() >= MAX_BATCH_ENTRIES
                || bytes + size > MAX_BATCH_BYTES
            {
                break;
            }
            bytes += size;
            batch.extend(self.pending.pop_front());
        }
        Some(batch)
    }

    /// A batch was sent; its answer will come with `token`.
    pub fn sent(&mut self, token: u32, batch: Vec<Job>) {
        self.in_flight.insert(token, batch);
    }

    /// A batch could not even be sent (dispatch refused): same as a failed answer.
    pub fn not_sent(&mut self, batch: Vec<Job>) -> Vec<Outcome> {
        self.settle(batch, false)
    }

    /// What the answer to `token` means for each job it carried (none for an unknown token).
    pub fn answered(&mut self, token: u32, ok: bool) -> Vec<Outcome> {
        match self.in_flight.remove(&token) {
            Some(batch) => self.settle(batch, ok),
            None => Vec::new(),
        }
    }

    fn settle(&mut self, batch: Vec<Job>, ok: bool) -> Vec<Outcome> {
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

    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.in_flight.is_empty()
    }

    /// True when a tick could send something: writes wait and the in-flight limit allows
    /// more. (At the limit, each answer frees a place and sends the next itself.)
    pub fn wants_tick(&self) -> bool {
        !self.pending.is_empty() && self.in_flight.len() < MAX_IN_FLIGHT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Write;

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
        }
    }

    fn one(q: &mut PublishQueue) -> Job {
        let mut batch = q.next_batch().unwrap();
        assert_eq!(batch.len(), 1);
        batch.pop().unwrap()
    }

    fn keys(batch: &[Job]) -> Vec<&str> {
        batch.iter().map(key_of).collect()
    }

    #[test]
    fn publishes_then_idles() {
        let mut q = PublishQueue::new(100);
        assert!(q.push(write("a", 10)));
        let batch = q.next_batch().unwrap();
        q.sent(7, batch);
        assert!(!q.is_idle());
        assert_eq!(q.answered(7, true), [Outcome::Published(10)]);
        assert!(q.is_idle());
    }

    #[test]
    fn retries_once_first_in_line_then_gives_up() {
        let mut q = PublishQueue::new(100);
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
        let mut q = PublishQueue::new(100);
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
        let mut q = PublishQueue::new(25);
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
    fn in_flight_is_limited_and_what_waits_goes_together() {
        let mut q = PublishQueue::new(usize::MAX);
        for t in 0..MAX_IN_FLIGHT {
            assert!(q.push(write(&t.to_string(), 1)));
            let j = q.next_batch().unwrap();
            q.sent(t as u32, j);
        }
        for k in ["x", "y", "z"] {
            q.push(write(k, 1));
        }
        assert!(q.next_batch().is_none());
        assert!(!q.wants_tick(), "answers drive the queue at the limit");
        q.answered(0, true);
        assert!(q.wants_tick());
        assert_eq!(keys(&q.next_batch().unwrap()), ["x", "y", "z"]);
    }

    #[test]
    fn batches_are_bounded_by_count_and_bytes() {
        let mut q = PublishQueue::new(usize::MAX);
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
    fn refreshes_and_invalidations_go_alone() {
        let mut q = PublishQueue::new(usize::MAX);
        let refresh = StoreWrite::Entry(Write {
            refresh: Some(crate::store::Refresh {
                keep: 1,
                expected_len: 2,
            }),
            ..match write("r", 1) {
                StoreWrite::Entry(w) => w,
                StoreWrite::Invalidate(_) => unreachable!(),
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
        let mut q = PublishQueue::new(100);
        assert!(q.push(StoreWrite::Invalidate(vec!["ns:a".into()])));
        let job = one(&mut q);
        assert_eq!(key_of(&job), "ns:a");
        q.sent(1, vec![job]);
        assert_eq!(q.answered(1, true), [Outcome::Published(4)]);
    }

    #[test]
    fn unknown_token_settles_nothing() {
        let mut q = PublishQueue::new(10);
        assert!(q.answered(99, true).is_empty());
    }
}
