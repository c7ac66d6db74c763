//! Collapsed misses in the outbox: the lock taken by a lookup, one leader per key, followers
//! sharing polls, the leader's write answering this worker's followers at once, and every way
//! a wait ends (entry, release, marker, deadline, stream gone, breaker). Two workers are two
//! outboxes on one simulated Redis.

use super::*;

const LOCK_MS: u64 = 5_000;
const POLL_MS: u64 = 50;
const WAIT_MS: u64 = 3_000;

fn collapsing() -> Sim {
    let mut s = second_worker();
    // Another seed than a second worker's: nonces (lock owners) are per VM.
    s.outbox = Outbox::new(s.outbox.settings, 0xbeef_0000);
    s
}

/// Another worker with the same settings (the default seed).
fn second_worker() -> Sim {
    Sim::with(Settings {
        lock_ms: LOCK_MS,
        poll_ms: POLL_MS,
        ..settings()
    })
}

impl Sim {
    /// `stream` looks `key` up and would fetch it if missing, waiting at most `WAIT_MS`.
    fn want_collapsing(&mut self, stream: StreamId, key: &str) {
        let until = self.now + WAIT_MS;
        if let Some(r) = self
            .outbox
            .want(self.now, stream, key.into(), self.now, Some(until))
        {
            self.replies.insert(stream, (self.now, r));
        }
        self.pump();
    }

    fn looked(&self, s: StreamId) -> Option<Looked<Vec<u8>>> {
        match &self.replies.get(&s)?.1 {
            Reply::Lookup(Ok(l)) => Some(l.clone().map(|b| b.to_vec())),
            Reply::Following => None,
            other => panic!("stream {s}: {other:?}"),
        }
    }

    fn following(&self, s: StreamId) -> bool {
        matches!(self.replies.get(&s), Some((_, Reply::Following)))
    }

    /// Clears a stream's `Following` so its final reply can be recorded.
    fn clear_following(&mut self) {
        self.replies
            .retain(|_, (_, r)| !matches!(r, Reply::Following));
    }

    /// Answers every callout out against `redis` (another worker's view of the same store).
    fn answer_all_on(&mut self, redis: &mut Redis) {
        std::mem::swap(&mut self.redis, redis);
        self.redis.now = self.now;
        self.answer_all();
        std::mem::swap(&mut self.redis, redis);
    }
}

fn lead_owner(l: Option<Looked<Vec<u8>>>) -> u64 {
    match l {
        Some(Looked::Lead(owner)) => owner,
        other => panic!("not a leader: {other:?}"),
    }
}

#[test]
fn one_stream_leads_and_the_others_of_the_worker_follow() {
    let mut s = collapsing();
    s.want_collapsing(1, "k");
    s.want_collapsing(2, "k");
    s.want_collapsing(3, "k");
    // A stream that would not fetch (a HEAD) just finds it missing.
    s.want(4, "k");
    assert_eq!(s.out.len(), 1, "one lookup for the herd");
    s.answer_all();
    let owner = lead_owner(s.looked(1));
    assert!(s.following(2) && s.following(3));
    assert_eq!(s.value(4), Some(b"<missing>".to_vec()));
    assert!(s.redis.locks.contains_key("k:lock"));
    assert_eq!(
        s.redis.locks["k:lock"].0,
        format!("{owner:016x}").into_bytes()
    );

    // The leader's entry lands: its followers get it from the write itself, no lookup.
    s.clear_following();
    s.advance(10);
    assert!(s.outbox.write(entry_write("k", b"the entry")));
    s.pump();
    assert_eq!(s.out.len(), 1, "only the write goes out");
    s.answer_all();
    assert_eq!(s.value(2), Some(b"the entry".to_vec()));
    assert_eq!(s.value(3), Some(b"the entry".to_vec()));
    assert!(
        !s.redis.locks.contains_key("k:lock"),
        "the write freed the lock"
    );
    assert!(s.outbox.is_idle());
}

#[test]
fn followers_of_another_worker_share_one_poll_and_get_the_entry_when_it_lands() {
    let mut a = collapsing();
    let mut b = second_worker();
    a.want_collapsing(1, "k");
    a.answer_all();
    lead_owner(a.looked(1));
    for stream in 10..15 {
        b.want_collapsing(stream, "k");
    }
    b.answer_all_on(&mut a.redis);
    assert!((10..15).all(|st| b.following(st)));
    b.clear_following();
    // Polls: one lookup per interval for the five of them.
    let mut polls = 0;
    for _ in 0..4 {
        b.advance(POLL_MS);
        polls += b.out.len();
        b.answer_all_on(&mut a.redis);
    }
    assert_eq!(polls, 4);
    assert!((10..15).all(|st| b.looked(st).is_none()), "still waiting");
    // The entry lands through worker a; b's next poll finds it.
    a.outbox.write(entry_write("k", b"v"));
    a.pump();
    a.answer_all();
    b.advance(POLL_MS);
    b.answer_all_on(&mut a.redis);
    for st in 10..15 {
        assert_eq!(b.looked(st), Some(Looked::Value(b"v".to_vec())), "{st}");
    }
    assert!(b.outbox.is_idle());
}

#[test]
fn a_released_lock_goes_to_one_follower_at_once() {
    let mut s = collapsing();
    s.want_collapsing(1, "k");
    s.want_collapsing(2, "k");
    s.want_collapsing(3, "k");
    s.answer_all();
    let owner = lead_owner(s.looked(1));
    s.clear_following();
    // The leader's response was an error: the lock is freed, and the followers look again
    // as soon as that landed, without waiting for their interval.
    s.outbox.unlock("k".into(), owner, Unlock::Release);
    s.pump();
    assert_eq!(s.out.len(), 1, "the release");
    s.answer();
    assert_eq!(s.out.len(), 1, "their poll, at once");
    assert_eq!(s.now, T0);
    s.answer_all();
    let leaders: Vec<StreamId> = [2, 3]
        .into_iter()
        .filter(|st| matches!(s.looked(*st), Some(Looked::Lead(_))))
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one new leader");
    assert!(s.redis.locks.contains_key("k:lock"));
}

#[test]
fn a_release_by_someone_who_lost_the_lock_frees_nothing() {
    let mut s = collapsing();
    s.want_collapsing(1, "k");
    s.answer_all();
    let owner = lead_owner(s.looked(1));
    s.redis
        .locks
        .insert("k:lock".into(), (b"someone else".to_vec(), T0 + LOCK_MS));
    s.outbox.unlock("k".into(), owner, Unlock::Release);
    s.pump();
    s.answer_all();
    assert_eq!(s.redis.locks["k:lock"].0, b"someone else");
}

#[test]
fn an_uncacheable_response_sends_every_follower_to_the_origin() {
    let mut a = collapsing();
    let mut b = second_worker();
    a.want_collapsing(1, "k");
    a.want_collapsing(2, "k");
    a.answer_all();
    let owner = lead_owner(a.looked(1));
    b.want_collapsing(10, "k");
    b.answer_all_on(&mut a.redis);
    assert!(b.following(10));
    b.clear_following();
    a.clear_following();
    a.outbox
        .unlock("k".into(), owner, Unlock::Uncacheable { ttl_ms: 60_000 });
    a.pump();
    // This worker's follower goes at once, before the marker even reaches the store.
    assert_eq!(
        a.looked(2),
        Some(Looked::NoWait(store::Marker::Uncacheable))
    );
    a.answer_all();
    // The other worker's at its next poll.
    b.advance(POLL_MS);
    b.answer_all_on(&mut a.redis);
    assert_eq!(
        b.looked(10),
        Some(Looked::NoWait(store::Marker::Uncacheable))
    );
    // And a newcomer does not wait at all (hit-for-miss), until the marker expires.
    b.want_collapsing(11, "k");
    b.answer_all_on(&mut a.redis);
    assert_eq!(
        b.looked(11),
        Some(Looked::NoWait(store::Marker::Uncacheable))
    );
    b.advance(60_000);
    b.want_collapsing(12, "k");
    b.answer_all_on(&mut a.redis);
    lead_owner(b.looked(12));
}

#[test]
fn a_wait_ends_at_the_streams_own_deadline() {
    let mut s = collapsing();
    s.want_collapsing(1, "k");
    s.answer_all();
    lead_owner(s.looked(1));
    s.advance(1_000);
    s.want_collapsing(2, "k");
    s.answer_all();
    assert!(s.following(2));
    s.clear_following();
    for _ in 0..(WAIT_MS / POLL_MS) {
        s.advance(POLL_MS);
        s.answer_all();
    }
    assert_eq!(s.looked(2), Some(Looked::WaitOver));
    assert_eq!(s.replies[&2].0, T0 + 1_000 + WAIT_MS, "on time");
    assert!(s.outbox.is_idle());
}

#[test]
fn a_dead_leaders_lock_expires_and_a_follower_takes_over() {
    let mut s = collapsing();
    s.want_collapsing(1, "k");
    s.answer_all();
    lead_owner(s.looked(1));
    // The leader's stream goes away without a word (its proxy died).
    s.outbox.stream_gone(1);
    let mut b = second_worker();
    b.now = s.now + 2_500;
    b.want_collapsing(10, "k");
    b.answer_all_on(&mut s.redis);
    assert!(b.following(10));
    b.clear_following();
    while b.looked(10).is_none() {
        b.advance(POLL_MS);
        b.answer_all_on(&mut s.redis);
    }
    lead_owner(b.looked(10));
    assert!(
        b.now >= T0 + LOCK_MS && b.now <= T0 + LOCK_MS + POLL_MS,
        "the lock's lifetime bounds it: {}",
        b.now - T0
    );
}

#[test]
fn followers_that_leave_are_not_answered_and_a_lock_taken_for_no_one_is_freed() {
    let mut s = collapsing();
    s.want_collapsing(1, "k");
    s.answer_all();
    let owner = lead_owner(s.looked(1));
    s.want_collapsing(2, "k");
    s.answer_all();
    assert!(s.following(2));
    s.clear_following();
    s.outbox.stream_gone(2);
    s.outbox.unlock("k".into(), owner, Unlock::Release);
    s.pump();
    s.answer_all();
    assert!(s.replies.is_empty() || s.looked(2).is_none());
    assert!(!s.redis.locks.contains_key("k:lock"));
    assert!(s.outbox.is_idle());
    // A poll that takes the lock after its followers left frees it again.
    let mut s = collapsing();
    s.want_collapsing(1, "k");
    s.answer_all();
    let owner = lead_owner(s.looked(1));
    s.want_collapsing(2, "k");
    s.answer_all();
    s.clear_following();
    s.outbox.unlock("k".into(), owner, Unlock::Release);
    s.pump();
    s.outbox.stream_gone(2);
    s.answer_all();
    s.pump();
    s.answer_all();
    assert!(!s.redis.locks.contains_key("k:lock"));
}

#[test]
fn the_breaker_opening_sends_followers_to_the_origin() {
    let mut s = collapsing();
    s.want_collapsing(1, "k");
    s.answer_all();
    lead_owner(s.looked(1));
    s.want_collapsing(2, "k");
    s.answer_all();
    s.clear_following();
    // The store starts failing: the polls fail until the breaker opens.
    for _ in 0..10 {
        s.advance(POLL_MS);
        while !s.out.is_empty() {
            s.answer_with(Some(503), Some(Vec::new()));
        }
        if s.error(2).is_some() {
            break;
        }
    }
    assert_eq!(s.error(2), Some(StoreError::BreakerOpen));
}

#[test]
fn a_follower_gets_a_large_entry_read_in_pieces() {
    let mut s = collapsing();
    s.want_collapsing(1, "k");
    s.answer_all();
    lead_owner(s.looked(1));
    s.want_collapsing(2, "k");
    s.answer_all();
    s.clear_following();
    let big = vec![7u8; ANSWER_BYTES + 10];
    s.redis.strings.insert("k".into(), big.clone());
    s.advance(POLL_MS);
    while !s.out.is_empty() {
        s.answer_all();
    }
    assert_eq!(s.looked(2), Some(Looked::Value(big)));
}

#[test]
fn without_collapsing_a_missing_key_takes_no_lock() {
    let mut s = Sim::new();
    s.want_arrived(1, "k", s.now);
    let until = s.now + WAIT_MS;
    assert!(
        s.outbox
            .want(s.now, 2, "k".into(), s.now, Some(until))
            .is_none()
    );
    s.pump();
    s.answer_all();
    assert_eq!(s.value(1), Some(b"<missing>".to_vec()));
    assert_eq!(s.value(2), Some(b"<missing>".to_vec()));
    assert!(s.redis.locks.is_empty());
}

#[test]
fn a_lock_taken_by_a_lookup_whose_answer_is_lost_is_freed() {
    let mut s = collapsing();
    s.want_collapsing(1, "k");
    // Redis ran the lookup (the lock is taken), but its answer never made it back whole.
    let call = s.out.remove(0);
    let _ = s.redis.run(&call.request);
    assert!(s.redis.locks.contains_key("k:lock"));
    s.outbox
        .answered(s.now, call.token, Some(200), Some(b"garbage".to_vec()));
    s.pump();
    assert_eq!(s.error(1), Some(StoreError::Garbage));
    s.answer_all();
    assert!(
        !s.redis.locks.contains_key("k:lock"),
        "freed: no one fetches for it"
    );
    // The next miss takes it and fetches.
    s.want_collapsing(2, "k");
    s.answer_all();
    lead_owner(s.looked(2));
}

#[test]
fn the_lock_of_a_fetch_whose_entry_fails_to_land_is_freed() {
    let mut s = collapsing();
    s.want_collapsing(1, "k");
    s.answer_all();
    let owner = lead_owner(s.looked(1));
    assert!(
        s.outbox
            .write_held(s.now, 9, entry_write("k", b"v"), Some(("k".into(), owner)))
            .is_none()
    );
    s.pump();
    // The write fails, and its retry too.
    while !s.out.is_empty() && s.redis.locks.contains_key("k:lock") {
        let call = s.out.remove(0);
        let Request::Http { method, .. } = &call.request;
        if *method == "PUT" {
            s.outbox
                .answered(s.now, call.token, Some(500), Some(Vec::new()));
        } else {
            let body = s.redis.run(&call.request);
            s.outbox.answered(s.now, call.token, Some(200), Some(body));
        }
        s.advance(20);
    }
    assert!(
        !s.redis.locks.contains_key("k:lock"),
        "freed after the write failed"
    );
}

#[test]
fn failing_to_free_locks_never_opens_the_breaker() {
    let mut s = collapsing();
    for i in 0..20 {
        s.outbox.unlock(format!("k{i}"), 7, Unlock::Release);
        s.pump();
        while !s.out.is_empty() {
            s.answer_with(Some(503), Some(Vec::new()));
        }
    }
    assert!(!s.outbox.breaker_open());
    assert!(!s.notes.iter().any(|n| matches!(n, Note::BreakerOpened(_))));
}

#[test]
fn a_background_job_takes_a_free_lock_once_and_a_held_one_never() {
    let mut a = collapsing();
    let mut b = second_worker();
    const JOB: StreamId = 0x8000_0001;
    assert!(a.outbox.lock(JOB, "k".into(), 30_000).is_none());
    a.pump();
    a.answer_all();
    let owner = match &a.replies[&JOB].1 {
        Reply::Locked(Some(owner)) => *owner,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        a.redis.locks["k:lock"].0,
        format!("{owner:016x}").into_bytes()
    );
    assert_eq!(a.redis.locks["k:lock"].1, T0 + 30_000);
    // Another worker's job for the same key does not get it.
    b.outbox.lock(JOB, "k".into(), 30_000);
    b.pump();
    b.answer_all_on(&mut a.redis);
    assert!(matches!(b.replies[&JOB].1, Reply::Locked(None)));
    // A store that fails: no lock (the job is dropped, the stale entry stays served).
    let mut c = collapsing();
    c.outbox.lock(JOB, "k".into(), 30_000);
    c.pump();
    c.answer_with(Some(503), Some(Vec::new()));
    assert!(matches!(c.replies[&JOB].1, Reply::Locked(None)));
    assert!(c.outbox.is_idle());
}
