//! The publish queue: finished recordings waiting to be written to the store, owned by the
//! root context so a write outlives its stream and its answer is seen (retry once, count).
//!
//! Pure bookkeeping; the root context sends what [`PublishQueue::next_to_send`] gives and reports each
//! answer to [`PublishQueue::answered`].

use crate::store::StoreWrite;
use std::collections::{HashMap, VecDeque};

/// Writes per VM in flight at once: enough to keep the store busy, few enough that a burst of
/// misses does not open a connection storm.
pub const MAX_IN_FLIGHT: usize = 16;

#[derive(Debug)]
pub struct Job {
    pub write: StoreWrite,
    /// 0 for the first try, 1 for the retry.
    pub attempt: u8,
}

/// What an answer means for its job.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stored: this many bytes.
    Published(usize),
    /// Failed once; queued again.
    Retrying,
    /// Failed twice (or unknown token): given up.
    Failed,
}

#[derive(Debug)]
pub struct PublishQueue {
    pending: VecDeque<Job>,
    in_flight: HashMap<u32, Job>,
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

    /// The next job to send, if the in-flight limit allows.
    pub fn next_to_send(&mut self) -> Option<Job> {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return None;
        }
        self.pending.pop_front()
    }

    /// A job was sent; its answer will come with `token`.
    pub fn sent(&mut self, token: u32, job: Job) {
        self.in_flight.insert(token, job);
    }

    /// A job could not even be sent (dispatch refused): same as a failed answer.
    pub fn not_sent(&mut self, job: Job) -> Outcome {
        self.settle(job, false)
    }

    pub fn answered(&mut self, token: u32, ok: bool) -> Outcome {
        match self.in_flight.remove(&token) {
            Some(job) => self.settle(job, ok),
            None => Outcome::Failed,
        }
    }

    fn settle(&mut self, mut job: Job, ok: bool) -> Outcome {
        let size = job.write.size();
        if ok {
            self.held_bytes -= size;
            Outcome::Published(size)
        } else if job.attempt == 0 {
            job.attempt = 1;
            // The retry goes first: it is the oldest write, and a newer write of the same key
            // queued behind it must still land last.
            self.pending.push_front(job);
            Outcome::Retrying
        } else {
            self.held_bytes -= size;
            Outcome::Failed
        }
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

    #[test]
    fn publishes_then_idles() {
        let mut q = PublishQueue::new(100);
        assert!(q.push(write("a", 10)));
        let job = q.next_to_send().unwrap();
        q.sent(7, job);
        assert!(!q.is_idle());
        assert_eq!(q.answered(7, true), Outcome::Published(10));
        assert!(q.is_idle());
    }

    #[test]
    fn retries_once_first_in_line_then_gives_up() {
        let mut q = PublishQueue::new(100);
        assert!(q.push(write("a", 10)));
        assert!(q.push(write("b", 10)));
        let a = q.next_to_send().unwrap();
        q.sent(1, a);
        assert_eq!(q.answered(1, false), Outcome::Retrying);
        let again = q.next_to_send().unwrap();
        assert_eq!(key_of(&again), "a");
        assert_eq!(again.attempt, 1);
        assert_eq!(q.not_sent(again), Outcome::Failed);
        assert_eq!(key_of(&q.next_to_send().unwrap()), "b");
    }

    #[test]
    fn bounded_by_bytes() {
        let mut q = PublishQueue::new(25);
        assert!(q.push(write("a", 10)));
        assert!(q.push(write("b", 10)));
        assert!(!q.push(write("c", 10)));
        let a = q.next_to_send().unwrap();
        q.sent(1, a);
        assert_eq!(q.answered(1, true), Outcome::Published(10));
        assert!(q.push(write("c", 10)));
    }

    #[test]
    fn in_flight_is_limited() {
        let mut q = PublishQueue::new(usize::MAX);
        for i in 0..MAX_IN_FLIGHT + 1 {
            assert!(q.push(write(&i.to_string(), 1)));
        }
        for t in 0..MAX_IN_FLIGHT {
            let j = q.next_to_send().unwrap();
            q.sent(t as u32, j);
        }
        assert!(q.next_to_send().is_none());
        assert!(!q.wants_tick(), "answers drive the queue at the limit");
        q.answered(0, true);
        assert!(q.wants_tick());
        assert!(q.next_to_send().is_some());
    }

    #[test]
    fn invalidations_are_queued_like_entries() {
        let mut q = PublishQueue::new(100);
        assert!(q.push(StoreWrite::Invalidate(vec!["ns:a".into()])));
        let job = q.next_to_send().unwrap();
        assert_eq!(key_of(&job), "ns:a");
        q.sent(1, job);
        assert_eq!(q.answered(1, true), Outcome::Published(4));
    }

    #[test]
    fn unknown_token_is_a_failure() {
        let mut q = PublishQueue::new(10);
        assert_eq!(q.answered(99, true), Outcome::Failed);
    }
}
