//! The outbox against a simulated Webdis + Redis (it executes the requests the outbox sends,
//! the way the scripts in `store/webdis.rs` do) and a simulated Envoy (callout tokens, a 504
//! at a callout's timeout), with a clock that jumps. Faults are injected by choosing what to
//! do with each callout out: answer, delay, drop, truncate, break, swap, duplicate.

use super::*;
use crate::store::{Refresh, Write};
use std::collections::{HashMap, HashSet};

const T0: u64 = 1_700_000_000_000;
const TIMEOUT: u64 = 100;

fn settings() -> Settings {
    Settings {
        lookup_timeout_ms: TIMEOUT,
        write_timeout_ms: 5_000,
        large_ms_per_mib: 10,
        max_value_bytes: 32 << 20,
        max_queue_bytes: 64 << 20,
        breaker: BreakerSettings {
            failures: 5,
            backoff_ms: 1_000,
            max_backoff_ms: 8_000,
        },
        lock_ms: 0,
        poll_ms: 50,
        one_slot: false,
    }
}

/// Redis as the scripts see it.
#[derive(Default)]
struct Redis {
    strings: HashMap<String, Vec<u8>>,
    sets: HashMap<String, HashSet<String>>,
    /// Keys holding a hash (another type).
    hashes: HashSet<String>,
    /// Lock keys: value and expiry (unix ms).
    locks: HashMap<String, (Vec<u8>, u64)>,
    /// The clock, for the locks' expiry.
    now: u64,
    /// A Redis Cluster: a script whose keys are in several slots is refused, as Redis does.
    cluster: bool,
    /// Scripts run, and of them the ones refused for crossing slots.
    scripts: usize,
    crossslot: usize,
}

/// The lookup script's own bound on a value it copies (`local iv=`).
fn inline_bound(script: &str) -> i64 {
    let p = script
        .split("local iv=")
        .nth(1)
        .expect("the lookup script bounds inline values");
    p[..p.find(' ').unwrap()].parse().unwrap()
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn bulk(out: &mut Vec<u8>, v: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", v.len()).as_bytes());
    out.extend_from_slice(v);
    out.extend_from_slice(b"\r\n");
}

impl Redis {
    /// Runs a Webdis request; returns its `.raw` answer.
    fn run(&mut self, req: &Request<'_>) -> Vec<u8> {
        let Request::Http { path, body, .. } = req;
        let path = path.strip_suffix(".raw").unwrap();
        if let Some(args) = path.strip_prefix("/GETRANGE/") {
            return self.getrange(args);
        }
        let args: Vec<Vec<u8>> = path.split('/').skip(2).map(percent_decode).collect();
        let mut args = args.into_iter();
        let script = String::from_utf8(args.next().unwrap()).unwrap();
        let nkeys: usize = String::from_utf8(args.next().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        let keys: Vec<String> = (0..nkeys)
            .map(|_| String::from_utf8(args.next().unwrap()).unwrap())
            .collect();
        let mut argv: Vec<Vec<u8>> = args.collect();
        if let Some(b) = body {
            argv.push(b.to_vec());
        }
        self.scripts += 1;
        if self.cluster
            && keys
                .iter()
                .any(|k| crate::store::layout::slot(k) != crate::store::layout::slot(&keys[0]))
        {
            self.crossslot += 1;
            return b"-CROSSSLOT Keys in request don't hash to the same slot\r\n".to_vec();
        }
        let nonce = argv[0].clone();
        let num = |a: &Vec<u8>| -> i64 { std::str::from_utf8(a).unwrap().parse().unwrap() };
        let mut out = Vec::new();
        let script = script.strip_prefix("local LS=':lock' ").unwrap_or(&script);
        self.locks.retain(|_, (_, exp)| *exp > self.now);
        if script.starts_with("local o={ARGV[1],''}") {
            let budget = num(&argv[1]);
            out.extend_from_slice(format!("*{}\r\n", keys.len() + 2).as_bytes());
            bulk(&mut out, &nonce);
            let locking = (&argv[2], num(&argv[3]) as u64);
            self.lookup(
                &mut out,
                &keys,
                budget,
                &nonce,
                locking,
                inline_bound(script),
            );
        } else if script.starts_with("local s=2") {
            self.set_entries(&keys, &argv[1..]);
            bulk(&mut out, &nonce);
        } else if script.starts_with("local s=5") {
            let used = self.set_entries(&keys, &argv[4..]);
            out.extend_from_slice(format!("*{}\r\n", keys.len() - used + 3).as_bytes());
            bulk(&mut out, &nonce);
            let locking = (&argv[2], num(&argv[3]) as u64);
            let bound = inline_bound(script);
            self.lookup(
                &mut out,
                &keys[used..],
                num(&argv[1]),
                &nonce,
                locking,
                bound,
            );
            bulk(&mut out, b"1");
        } else if script.starts_with("local got=redis.pcall('SET',KEYS[1]") {
            let taken = !self.locks.contains_key(&keys[0]);
            if taken {
                let exp = self.now + num(&argv[1]) as u64;
                self.locks.insert(keys[0].clone(), (nonce.clone(), exp));
            }
            out.extend_from_slice(b"*2\r\n");
            bulk(&mut out, &nonce);
            bulk(&mut out, if taken { b"1" } else { b"0" });
        } else if script.starts_with("local v=redis.pcall('GET',KEYS[1])") {
            let held = self.locks.get(&keys[0]).map(|(v, _)| v.clone());
            if argv[2] == b"r" {
                if held.as_ref() == Some(&argv[1]) {
                    self.locks.remove(&keys[0]);
                }
            } else {
                let exp = self.now + num(&argv[3]) as u64;
                self.locks.insert(keys[0].clone(), (argv[2].clone(), exp));
            }
            bulk(&mut out, &nonce);
        } else if script.starts_with("local n=0 for i=1") {
            let mut n = 0;
            for pair in keys.chunks(2) {
                for k in self.sets.remove(&pair[1]).unwrap_or_default() {
                    self.strings.remove(&k);
                }
                n += self.strings.remove(&pair[0]).is_some() as i64;
            }
            out.extend_from_slice(b"*2\r\n");
            bulk(&mut out, &nonce);
            bulk(&mut out, n.to_string().as_bytes());
        } else if script.starts_with("local m=redis.pcall('SMEMBERS',KEYS[1])") {
            let members = self.sets.remove(&keys[0]).unwrap_or_default();
            out.extend_from_slice(format!("*{}\r\n", members.len() + 1).as_bytes());
            bulk(&mut out, &nonce);
            for m in members {
                bulk(&mut out, m.as_bytes());
            }
        } else if script.starts_with("local k=KEYS[1] local t=redis.call('TYPE'") {
            self.sets
                .entry(keys[0].clone())
                .or_default()
                .insert(String::from_utf8(argv[2].clone()).unwrap());
            bulk(&mut out, &nonce);
        } else if script.starts_with("local k=KEYS[#KEYS]") {
            let k = keys.last().unwrap();
            let (keep, expected) = (num(&argv[2]) as usize, num(&argv[3]) as usize);
            if let Some(v) = self.strings.get_mut(k)
                && v.len() == expected
            {
                v.truncate(keep);
                v.extend_from_slice(&argv[4]);
            }
            bulk(&mut out, &nonce);
        } else {
            panic!("unknown script {script}");
        }
        out
    }

    /// A plain `GETRANGE key start last` (inclusive, clipped to the value as Redis does),
    /// answered as a bare string.
    fn getrange(&mut self, args: &str) -> Vec<u8> {
        let args: Vec<Vec<u8>> = args.split('/').map(percent_decode).collect();
        let key = String::from_utf8(args[0].clone()).unwrap();
        let num = |a: &Vec<u8>| -> usize { std::str::from_utf8(a).unwrap().parse().unwrap() };
        let v = self.strings.get(&key).cloned().unwrap_or_default();
        let (start, end) = (num(&args[1]).min(v.len()), (num(&args[2]) + 1).min(v.len()));
        let mut out = Vec::new();
        bulk(&mut out, v.get(start..end).unwrap_or_default());
        out
    }

    /// As Webdis frames the script's answer: every element a bulk string. `locking`: the
    /// lock flags (one per key, or `-`) and the lock's lifetime; `bound`: the most bytes a
    /// value may have to come inline.
    fn lookup(
        &mut self,
        out: &mut Vec<u8>,
        keys: &[String],
        mut budget: i64,
        nonce: &[u8],
        (flags, lock_ms): (&Vec<u8>, u64),
        bound: i64,
    ) {
        let mut letters = Vec::new();
        let mut slots = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let missing = match flags.get(i) {
                Some(b'1') => {
                    let lk = format!("{k}:lock");
                    match self.locks.get(&lk) {
                        None => {
                            self.locks.insert(lk, (nonce.to_vec(), self.now + lock_ms));
                            b'L'
                        }
                        Some((v, _)) if v == b"h" || v == b"x" => v[0],
                        Some(_) => b'w',
                    }
                }
                _ => b'm',
            };
            let (letter, slot) = if self.hashes.contains(k) {
                (b'f', Vec::new())
            } else {
                match self.strings.get(k) {
                    None => (missing, Vec::new()),
                    Some(v) if v.is_empty() => (missing, Vec::new()),
                    Some(v) if v.len() as i64 > budget || v.len() as i64 > bound => {
                        let mut slot = format!("{}:", v.len()).into_bytes();
                        slot.extend_from_slice(&v[v.len().saturating_sub(8)..]);
                        (b'l', slot)
                    }
                    Some(v) => {
                        budget -= v.len() as i64;
                        (b'v', v.clone())
                    }
                }
            };
            letters.push(letter);
            slots.push(slot);
        }
        bulk(out, &letters);
        for s in slots {
            bulk(out, &s);
        }
    }

    /// Applies the entries; returns how many KEYS they used.
    fn set_entries(&mut self, keys: &[String], argv: &[Vec<u8>]) -> usize {
        let body = argv.last().unwrap();
        let mut k = 0;
        let mut off = 0;
        for e in argv[..argv.len() - 1].chunks(5) {
            let n: usize = std::str::from_utf8(&e[0]).unwrap().parse().unwrap();
            let len: usize = std::str::from_utf8(&e[4]).unwrap().parse().unwrap();
            let v = body[off..off + len].to_vec();
            off += len;
            self.hashes.remove(&keys[k]);
            self.strings.insert(keys[k].clone(), v);
            self.locks.remove(&format!("{}:lock", keys[k]));
            for tag in &keys[k + 1..k + n] {
                self.sets
                    .entry(tag.clone())
                    .or_default()
                    .insert(keys[k].clone());
            }
            k += n;
        }
        k
    }
}

/// Whether a callout reads a piece of a large value (a plain `GETRANGE`).
fn is_piece(c: &Call) -> bool {
    let Request::Http { path, .. } = &c.request;
    path.starts_with("/GETRANGE/")
}

/// A callout out, as the simulated Envoy holds it.
struct Call {
    token: u32,
    request: Request<'static>,
    deadline: u64,
}

fn owned(r: Request<'_>) -> Request<'static> {
    let Request::Http { method, path, body } = r;
    Request::Http {
        method,
        path,
        body: body.map(|b| std::borrow::Cow::Owned(b.into_owned())),
    }
}

struct Sim {
    outbox: Outbox,
    redis: Redis,
    now: u64,
    next_token: u32,
    out: Vec<Call>,
    /// Replies by stream, with the time they came.
    replies: HashMap<StreamId, (u64, Reply)>,
    notes: Vec<Note>,
    /// Refuse to dispatch (the host's BadArgument).
    refuse: bool,
}

impl Sim {
    fn new() -> Sim {
        Sim::with(settings())
    }

    fn with(s: Settings) -> Sim {
        Sim {
            outbox: Outbox::new(s, 0xfeed),
            redis: Redis {
                now: T0,
                ..Redis::default()
            },
            now: T0,
            next_token: 1,
            out: Vec::new(),
            replies: HashMap::new(),
            notes: Vec::new(),
            refuse: false,
        }
    }

    fn want(&mut self, stream: StreamId, key: &str) {
        self.want_arrived(stream, key, self.now);
    }

    fn want_arrived(&mut self, stream: StreamId, key: &str, arrived: u64) {
        if let Some(r) = self
            .outbox
            .want(self.now, stream, key.into(), arrived, None)
        {
            self.replies.insert(stream, (self.now, r));
        }
        self.pump();
    }

    /// Sends everything the outbox lets go, and collects replies and notes.
    fn pump(&mut self) {
        while let Some(o) = self.outbox.poll_send(self.now) {
            let nonce = o.nonce;
            let token = (!self.refuse).then(|| {
                let t = self.next_token;
                self.next_token += 1;
                self.out.push(Call {
                    token: t,
                    request: owned(o.request),
                    deadline: self.now + o.timeout_ms,
                });
                t
            });
            self.outbox.dispatched(self.now, nonce, token);
        }
        while let Some((s, r)) = self.outbox.poll_reply() {
            assert!(
                self.replies.insert(s, (self.now, r)).is_none(),
                "stream {s} answered twice"
            );
        }
        while let Some(n) = self.outbox.poll_note() {
            self.notes.push(n);
        }
    }

    /// The store answers the oldest callout out.
    fn answer(&mut self) {
        let call = self.out.remove(0);
        let body = self.redis.run(&call.request);
        self.outbox
            .answered(self.now, call.token, Some(200), Some(body));
        self.pump();
    }

    /// The store answers the newest callout out.
    fn answer_with_last(&mut self) {
        let call = self.out.pop().unwrap();
        let body = self.redis.run(&call.request);
        self.outbox
            .answered(self.now, call.token, Some(200), Some(body));
        self.pump();
    }

    fn answer_all(&mut self) {
        while !self.out.is_empty() {
            self.answer();
        }
    }

    /// Every callout out but the pieces of large values gets its answer (pieces stay out).
    fn answer_lookups(&mut self) {
        while let Some(i) = self.out.iter().position(|c| !is_piece(c)) {
            let call = self.out.remove(i);
            let body = self.redis.run(&call.request);
            self.outbox
                .answered(self.now, call.token, Some(200), Some(body));
            self.pump();
        }
    }

    /// The oldest callout gets this answer instead.
    fn answer_with(&mut self, status: Option<u16>, body: Option<Vec<u8>>) {
        let call = self.out.remove(0);
        self.outbox.answered(self.now, call.token, status, body);
        self.pump();
    }

    /// Time passes; Envoy answers 504 to callouts past their timeout.
    fn advance(&mut self, ms: u64) {
        self.now += ms;
        self.redis.now = self.now;
        let (late, kept): (Vec<Call>, Vec<Call>) =
            self.out.drain(..).partition(|c| c.deadline <= self.now);
        self.out = kept;
        for c in late {
            self.outbox
                .answered(self.now, c.token, Some(504), Some(Vec::new()));
        }
        self.outbox.handle_timeout(self.now);
        self.pump();
    }

    fn value(&self, s: StreamId) -> Option<Vec<u8>> {
        match &self.replies.get(&s)?.1 {
            Reply::Lookup(Ok(Looked::Value(v))) => Some(v.to_vec()),
            Reply::Lookup(Ok(Looked::Missing)) => Some(b"<missing>".to_vec()),
            other => panic!("stream {s}: {other:?}"),
        }
    }

    fn error(&self, s: StreamId) -> Option<StoreError> {
        match &self.replies.get(&s)?.1 {
            Reply::Lookup(Err(e)) | Reply::Purge(Err(e)) => Some(*e),
            _ => None,
        }
    }

    fn keys_out(&self, i: usize) -> usize {
        let Request::Http { path, .. } = &self.out[i].request;
        let after = path.strip_prefix("/EVAL/").unwrap();
        let n = after.split('/').nth(1).unwrap();
        n.parse().unwrap()
    }
}

fn entry_write(key: &str, bytes: &[u8]) -> StoreWrite {
    StoreWrite::Entry(Write {
        key: key.into(),
        variant: None,
        ttl_ms: 60_000,
        entry: bytes.to_vec(),
        refresh: None,
        tags: vec![],
    })
}

#[test]
fn a_lone_lookup_leaves_at_once_and_is_answered() {
    let mut s = Sim::new();
    s.redis.strings.insert("k".into(), b"value".to_vec());
    s.want(1, "k");
    s.want(2, "missing");
    assert_eq!(s.out.len(), 1, "the second waits for the batch out");
    s.answer();
    assert_eq!(s.value(1).unwrap(), b"value");
    assert_eq!(s.out.len(), 1, "the answer sends what waited");
    s.answer();
    assert_eq!(s.value(2).unwrap(), b"<missing>");
    assert_eq!(s.outbox.waiting(), 0);
    assert!(s.outbox.is_idle());
}

#[test]
fn keys_that_wait_go_together_and_a_key_is_asked_once() {
    let mut s = Sim::new();
    s.want(1, "a");
    for (i, k) in ["x", "y", "x", "z"].iter().enumerate() {
        s.want(10 + i as u32, k);
    }
    assert_eq!(s.out.len(), 1);
    s.answer();
    assert_eq!(s.out.len(), 1);
    assert_eq!(s.keys_out(0), 3, "x, y, z: x once");
    s.answer();
    for st in [10, 11, 12, 13] {
        assert_eq!(s.value(st).unwrap(), b"<missing>");
    }
}

#[test]
fn a_joiner_of_a_lookup_out_gets_its_answer() {
    let mut s = Sim::new();
    s.redis.strings.insert("a".into(), b"A".to_vec());
    s.want(1, "a");
    s.advance(30);
    s.want(2, "a");
    assert_eq!(s.out.len(), 1, "joined, not asked again");
    s.answer();
    assert_eq!(s.value(1).unwrap(), b"A");
    assert_eq!(s.value(2).unwrap(), b"A");
}

#[test]
fn full_batches_leave_at_once_up_to_the_bound() {
    let mut s = Sim::new();
    s.want(0, "first");
    let mut stream = 1;
    for _ in 0..MAX_IN_FLIGHT {
        for _ in 0..MAX_KEYS {
            s.want(stream, &format!("k{stream}"));
            stream += 1;
        }
    }
    assert_eq!(s.out.len(), MAX_IN_FLIGHT, "the bound holds");
    s.answer_all();
    assert_eq!(s.replies.len(), 1 + MAX_IN_FLIGHT * MAX_KEYS);
}

#[test]
fn each_request_waits_at_most_its_own_timeout_whatever_is_out() {
    // A stalled store: nothing is ever answered; requests keep arriving.
    let mut s = Sim::new();
    let mut arrived = HashMap::new();
    for i in 0..40u32 {
        s.want(i, &format!("k{}", i % 7));
        arrived.insert(i, s.now);
        s.advance(7);
    }
    for _ in 0..20 {
        s.advance(7);
    }
    for i in 0..40u32 {
        let (at, reply) = &s.replies[&i];
        assert!(
            matches!(reply, Reply::Lookup(Err(StoreError::Timeout))),
            "{i}: {reply:?}"
        );
        let waited = at - arrived[&i];
        // The clock moves in 7 ms steps here: a deadline is seen at the next step.
        assert!(waited <= TIMEOUT + 7, "stream {i} waited {waited} ms");
    }
}

#[test]
fn a_batch_answer_after_some_waiters_timed_out_serves_the_others() {
    let mut s = Sim::new();
    s.redis.strings.insert("a".into(), b"A".to_vec());
    s.want(1, "x");
    s.advance(60);
    s.want(2, "a");
    s.advance(45);
    assert_eq!(s.error(1), Some(StoreError::Timeout), "at its own deadline");
    assert!(!s.replies.contains_key(&2));
    // The first callout's timeout answer sends the second batch: it still has time.
    assert_eq!(s.out.len(), 1);
    s.answer();
    assert_eq!(s.value(2).unwrap(), b"A");
}

#[test]
fn swapped_answers_are_store_errors_never_values() {
    let mut s = Sim::new();
    s.redis.strings.insert("a".into(), b"A".to_vec());
    s.redis.strings.insert("b".into(), b"B".to_vec());
    // Two full batches out at once, so two callouts with different nonces.
    s.want(0, "first");
    for i in 0..(2 * MAX_KEYS as u32) {
        let key = if i == 0 {
            "a".to_string()
        } else if i == MAX_KEYS as u32 {
            "b".to_string()
        } else {
            format!("k{i}")
        };
        s.want(100 + i, &key);
    }
    assert_eq!(s.out.len(), 3);
    let answers: Vec<Vec<u8>> = s.out.iter().map(|c| s.redis.run(&c.request)).collect();
    let tokens: Vec<u32> = s.out.iter().map(|c| c.token).collect();
    s.out.clear();
    // Batch 2 gets batch 3's answer and vice versa; batch 1 its own.
    s.outbox
        .answered(s.now, tokens[0], Some(200), Some(answers[0].clone()));
    s.outbox
        .answered(s.now, tokens[1], Some(200), Some(answers[2].clone()));
    s.outbox
        .answered(s.now, tokens[2], Some(200), Some(answers[1].clone()));
    s.pump();
    assert_eq!(s.error(100), Some(StoreError::Mismatch));
    assert_eq!(s.error(100 + MAX_KEYS as u32), Some(StoreError::Mismatch));
    assert_eq!(s.notes.iter().filter(|n| **n == Note::Mismatch).count(), 2);
    // A duplicate of an answer already used is no one's.
    s.outbox
        .answered(s.now, tokens[0], Some(200), Some(answers[0].clone()));
    s.pump();
    assert_eq!(s.outbox.waiting(), 0);
}

#[test]
fn a_write_answered_with_another_commands_answer_is_not_counted_done() {
    let mut s = Sim::new();
    assert!(s.outbox.write(entry_write("w", b"entry")));
    s.pump();
    s.want(1, "k");
    assert_eq!(s.out.len(), 2);
    let lookup_answer = s.redis.run(&s.out[1].request);
    // The write's callout receives the lookup's answer.
    s.answer_with(Some(200), Some(lookup_answer));
    assert!(
        s.notes.contains(&Note::WriteRetrying(StoreError::Mismatch)),
        "{:?}",
        s.notes
    );
    assert!(!s.notes.iter().any(|n| matches!(n, Note::Published { .. })));
}

#[test]
fn truncated_broken_and_garbage_answers_fail_the_batch_and_the_worker_goes_on() {
    for (status, body, error) in [
        (
            Some(200),
            Some(b"*2\r\n$16\r\n".to_vec()),
            StoreError::Garbage,
        ),
        (Some(200), None, StoreError::Broken),
        (Some(200), Some(b"<html>".to_vec()), StoreError::Garbage),
        (Some(500), Some(b"oops".to_vec()), StoreError::Status(500)),
        (Some(503), Some(Vec::new()), StoreError::Unavailable),
    ] {
        let mut s = Sim::new();
        s.redis.strings.insert("a".into(), b"A".to_vec());
        s.want(1, "a");
        s.want(2, "a");
        s.answer_with(status, body);
        assert_eq!(s.error(1), Some(error));
        assert_eq!(s.error(2), Some(error));
        s.want(3, "a");
        s.answer();
        assert_eq!(s.value(3).unwrap(), b"A");
    }
}

#[test]
fn a_callout_never_answered_is_given_up_on() {
    let mut s = Sim::new();
    s.want(1, "a");
    // The host loses it: no 504 ever comes.
    s.out.clear();
    s.advance(TIMEOUT);
    assert_eq!(s.error(1), Some(StoreError::Timeout));
    assert!(!s.outbox.is_idle(), "the callout is still counted out");
    s.advance(GIVE_UP_GRACE_MS);
    assert!(s.outbox.is_idle());
    s.want(2, "a");
    assert_eq!(s.out.len(), 1, "lookups go again");
}

#[test]
fn the_breaker_opens_skips_probes_and_closes() {
    let mut s = Sim::new();
    // Five failing callouts in a row.
    for stream in 0..5 {
        s.want(stream, "a");
        s.answer_with(Some(503), Some(Vec::new()));
    }
    // It says why: what the operator reads in the log.
    assert!(
        s.notes
            .contains(&Note::BreakerOpened(StoreError::Unavailable))
    );
    assert!(s.outbox.breaker_open());
    // Skipped at once, no callout.
    s.want(100, "a");
    assert_eq!(s.error(100), Some(StoreError::BreakerOpen));
    assert!(s.out.is_empty());
    assert!(
        !s.outbox.write(entry_write("w", b"x")),
        "entries are not held"
    );
    assert!(
        s.outbox.write(StoreWrite::Invalidate(vec!["i".into()])),
        "invalidations are"
    );
    s.pump();
    assert!(s.out.is_empty(), "no write while open");
    // After the backoff: one probe, alone.
    s.advance(1_000);
    s.want(101, "a");
    s.want(102, "b");
    assert_eq!(s.error(102), Some(StoreError::BreakerOpen));
    assert_eq!(s.out.len(), 1);
    s.want(103, "a");
    assert!(!s.replies.contains_key(&103), "joins the probe");
    s.answer();
    assert!(s.notes.contains(&Note::BreakerClosed));
    assert_eq!(s.value(101).unwrap(), b"<missing>");
    assert_eq!(s.value(103).unwrap(), b"<missing>");
    // Closed: the invalidation goes, lookups go.
    assert_eq!(s.out.len(), 1);
    s.answer();
    assert!(s.notes.iter().any(|n| matches!(n, Note::Published { .. })));
}

#[test]
fn a_failed_probe_keeps_the_breaker_open_longer() {
    let mut s = Sim::new();
    for i in 0..5 {
        s.want(i, "a");
        s.advance(TIMEOUT);
    }
    assert!(s.outbox.breaker_open());
    s.advance(1_000);
    s.want(10, "a");
    assert_eq!(s.out.len(), 1, "the probe");
    s.advance(TIMEOUT);
    assert_eq!(s.error(10), Some(StoreError::Timeout));
    s.advance(1_000);
    s.want(11, "a");
    assert_eq!(
        s.error(11),
        Some(StoreError::BreakerOpen),
        "the backoff doubled"
    );
    s.advance(1_000);
    s.want(12, "a");
    assert!(!s.replies.contains_key(&12), "probing again");
}

#[test]
fn pending_lookups_go_to_the_origin_when_the_breaker_opens() {
    let mut s = Sim::new();
    for i in 0..4 {
        s.want(i, "a");
        s.answer_with(Some(503), Some(Vec::new()));
    }
    s.want(10, "x");
    s.want(11, "y");
    assert_eq!(s.out.len(), 1);
    s.answer_with(Some(503), Some(Vec::new()));
    assert_eq!(
        s.error(11),
        Some(StoreError::BreakerOpen),
        "not held for the probe"
    );
}

#[test]
fn large_values_are_read_in_bounded_pieces() {
    let mut s = Sim::new();
    let big: Vec<u8> = (0..(10 << 20)).map(|i| (i % 251) as u8).collect();
    s.redis.strings.insert("big".into(), big.clone());
    s.redis.strings.insert("small".into(), b"s".to_vec());
    s.want(1, "big");
    s.want(2, "small");
    s.answer();
    // 10 MiB: three pieces out at once, and the lookup of "small" that waited.
    assert_eq!(s.out.len(), 4);
    s.answer_all();
    assert_eq!(s.value(1).unwrap(), big);
    assert_eq!(s.value(2).unwrap(), b"s");
    assert!(s.notes.contains(&Note::LargeRead));
}

#[test]
fn no_answer_carries_more_than_the_bound() {
    let mut s = Sim::new();
    for k in 0..8 {
        s.redis
            .strings
            .insert(format!("k{k}"), vec![k as u8; 3 << 20]);
    }
    s.want(0, "first");
    for k in 0..8u32 {
        s.want(k + 1, &format!("k{k}"));
    }
    let mut biggest = 0;
    while !s.out.is_empty() {
        let body = s.redis.run(&s.out[0].request);
        biggest = biggest.max(body.len());
        let token = s.out.remove(0).token;
        s.outbox.answered(s.now, token, Some(200), Some(body));
        s.pump();
    }
    assert!(
        biggest <= ANSWER_BYTES + 4096,
        "an answer of {biggest} bytes"
    );
    for k in 0..8u32 {
        assert_eq!(s.value(k + 1).unwrap(), vec![k as u8; 3 << 20]);
    }
}

#[test]
fn a_large_value_extends_its_waiters_deadline_by_its_size() {
    let mut s = Sim::new();
    s.redis.strings.insert("big".into(), vec![7; 16 << 20]);
    s.want(1, "big");
    s.advance(90);
    s.answer();
    // Pieces out; the original deadline (100 ms) passes, the allowance (16 MiB x 10 ms) holds.
    s.advance(50);
    assert!(!s.replies.contains_key(&1));
    s.answer_all();
    assert_eq!(s.value(1).unwrap().len(), 16 << 20);
}

#[test]
fn a_large_value_that_changes_while_read_says_so() {
    let mut s = Sim::new();
    s.redis.strings.insert("big".into(), vec![1; 9 << 20]);
    s.want(1, "big");
    s.answer();
    s.answer();
    s.redis.strings.insert("big".into(), vec![2; 8 << 20]);
    s.answer_all();
    // Neither half-old bytes nor a miss (which would fetch and write it again).
    assert_eq!(s.error(1), Some(StoreError::Changed));
}

#[test]
fn a_value_over_the_inline_bound_is_read_by_one_plain_read() {
    let mut s = Sim::new();
    let big: Vec<u8> = (0..200_000).map(|i| (i % 253) as u8).collect();
    s.redis.strings.insert("big".into(), big.clone());
    s.want(1, "big");
    s.answer();
    // Not through the lookup script (which would copy it three more times in Redis): one
    // GETRANGE for the whole value.
    assert_eq!(s.out.len(), 1);
    let Request::Http { path, .. } = &s.out[0].request;
    assert_eq!(path.as_str(), "/GETRANGE/big/0/199999.raw");
    s.answer();
    assert_eq!(s.value(1).unwrap(), big);
    assert!(s.notes.contains(&Note::LargeRead));
}

#[test]
fn a_large_value_replaced_by_one_of_its_length_says_so() {
    // In one piece and in several: the lookup saw the value's tail; bytes of another version
    // end otherwise (a replaced value here; a late answer to an abandoned read of an older
    // version would bring such bytes too).
    for len in [200_000, 9 << 20] {
        let mut s = Sim::new();
        let mut old = vec![1; len];
        old[len - 1] = 9;
        s.redis.strings.insert("big".into(), old);
        s.want(1, "big");
        s.answer();
        s.redis.strings.insert("big".into(), vec![2; len]);
        s.answer_all();
        assert_eq!(s.error(1), Some(StoreError::Changed), "{len}");
        assert!(!s.notes.contains(&Note::LargeRead));
    }
}

#[test]
fn a_large_value_gone_while_read_says_so() {
    let mut s = Sim::new();
    s.redis.strings.insert("big".into(), vec![1; 200_000]);
    s.want(1, "big");
    s.answer();
    s.redis.strings.remove("big");
    s.answer_all();
    assert_eq!(s.error(1), Some(StoreError::Changed));
}

#[test]
fn a_webdis_refusing_plain_reads_costs_large_hits_only() {
    // Webdis' ACL not yet updated for GETRANGE (403): the large values go to the origin, the
    // breaker stays closed, and every other value is still read.
    // Many refused in a row, as under load: lookups batched, then one piece each.
    let mut s = Sim::new();
    for i in 0..16u32 {
        let key = format!("big{i}");
        s.redis.strings.insert(key.clone(), vec![1; 200_000]);
        s.want(i, &key);
    }
    s.answer_lookups();
    while !s.out.is_empty() {
        s.answer_with(Some(403), Some(Vec::new()));
    }
    for i in 0..16u32 {
        assert_eq!(s.error(i), Some(StoreError::Forbidden), "{i}");
    }
    assert!(!s.outbox.breaker_open());
    s.redis.strings.insert("small".into(), b"s".to_vec());
    s.want(100, "small");
    s.answer();
    assert_eq!(s.value(100).unwrap(), b"s");
}

#[test]
fn many_values_of_one_piece_are_read_together() {
    // Bytes out bound the reads, not a count: sixteen 1 MiB values at once (four 4 MiB pieces
    // would be the same bytes), and none is refused for memory (none needs a buffer).
    let mut s = Sim::with(Settings {
        max_queue_bytes: 8 << 20,
        ..settings()
    });
    for i in 0..20u32 {
        s.redis
            .strings
            .insert(format!("m{i}"), vec![i as u8; 1 << 20]);
    }
    for i in 0..16u32 {
        s.want(i, &format!("m{i}"));
    }
    // The lookups answered, the pieces left unanswered.
    s.answer_lookups();
    assert_eq!(s.out.len(), 16, "all sixteen read at once");
    assert!(s.out.iter().all(is_piece));
    for i in 16..20u32 {
        s.want(i, &format!("m{i}"));
    }
    s.answer_all();
    for i in 0..20u32 {
        assert_eq!(s.value(i).unwrap(), vec![i as u8; 1 << 20], "{i}");
    }
}

#[test]
fn a_value_larger_than_any_we_write_is_foreign() {
    let mut s = Sim::with(Settings {
        max_value_bytes: 5 << 20,
        ..settings()
    });
    s.redis.strings.insert("big".into(), vec![1; 6 << 20]);
    s.want(1, "big");
    s.answer();
    assert!(s.out.is_empty(), "not read");
    assert_eq!(s.value(1).unwrap(), b"", "foreign: no bytes");
    assert!(s.notes.contains(&Note::TooLarge));
}

#[test]
fn large_reads_are_bounded_in_memory() {
    let mut s = Sim::with(Settings {
        max_queue_bytes: 20 << 20,
        ..settings()
    });
    s.redis.strings.insert("a".into(), vec![1; 12 << 20]);
    s.redis.strings.insert("b".into(), vec![2; 12 << 20]);
    s.want(0, "x");
    s.want(1, "a");
    s.want(2, "b");
    s.answer();
    s.answer();
    assert_eq!(s.error(2), Some(StoreError::Busy));
    s.answer_all();
    assert_eq!(s.value(1).unwrap().len(), 12 << 20);
}

#[test]
fn a_piece_that_fails_fails_the_value() {
    let mut s = Sim::new();
    s.redis.strings.insert("big".into(), vec![1; 9 << 20]);
    s.want(1, "big");
    s.answer();
    s.answer_with(Some(200), None);
    assert_eq!(s.error(1), Some(StoreError::Broken));
    s.answer_all();
    assert_eq!(s.outbox.waiting(), 0);
}

#[test]
fn foreign_types_are_foreign_values() {
    let mut s = Sim::new();
    s.redis.hashes.insert("h".into());
    s.want(1, "h");
    s.answer();
    assert_eq!(s.value(1).unwrap(), b"");
    // The next write replaces it.
    s.outbox.write(entry_write("h", b"fresh"));
    s.pump();
    s.answer();
    s.want(2, "h");
    s.answer();
    assert_eq!(s.value(2).unwrap(), b"fresh");
}

#[test]
fn small_writes_ride_with_the_next_lookup_batch() {
    let mut s = Sim::new();
    s.want(1, "a");
    assert!(s.outbox.write(entry_write("w", b"entry")));
    s.pump();
    assert_eq!(s.out.len(), 1, "the write waits to ride");
    s.want(2, "b");
    s.answer();
    assert_eq!(s.out.len(), 1, "lookup b with the write");
    s.answer();
    assert!(s.notes.contains(&Note::Published {
        bytes: 5,
        rode: true
    }));
    assert!(s.notes.contains(&Note::RidersSettled(Ok(()))));
    assert_eq!(s.redis.strings["w"], b"entry");
}

#[test]
fn writes_retry_once_and_a_refused_dispatch_waits() {
    let mut s = Sim::new();
    s.outbox.write(entry_write("w", b"x"));
    s.pump();
    s.answer_with(Some(503), Some(Vec::new()));
    assert!(
        s.notes
            .contains(&Note::WriteRetrying(StoreError::Unavailable))
    );
    assert_eq!(s.out.len(), 1, "retried at once");
    s.answer_with(Some(503), Some(Vec::new()));
    assert!(
        s.notes
            .contains(&Note::WriteFailed(StoreError::Unavailable))
    );
    assert!(s.outbox.is_idle());

    let mut s = Sim::new();
    s.refuse = true;
    s.outbox.write(entry_write("w", b"x"));
    s.pump();
    assert!(s.notes.contains(&Note::WriteRetrying(StoreError::Dispatch)));
    s.refuse = false;
    s.pump();
    assert!(s.out.is_empty(), "not before the retry delay");
    assert!(s.outbox.poll_timeout().is_some());
    s.advance(RETRY_DELAY_MS);
    assert_eq!(s.out.len(), 1);
    s.answer();
    assert_eq!(s.redis.strings["w"], b"x");
}

#[test]
fn a_refused_lookup_dispatch_fails_its_streams_at_once() {
    let mut s = Sim::new();
    s.refuse = true;
    s.want(1, "a");
    assert_eq!(s.error(1), Some(StoreError::Dispatch));
    assert_eq!(s.outbox.waiting(), 0);
}

#[test]
fn a_stream_that_leaves_is_never_answered() {
    let mut s = Sim::new();
    s.want(1, "a");
    s.want(2, "b");
    s.outbox.stream_gone(2);
    s.outbox.stream_gone(1);
    s.answer_all();
    assert!(s.replies.is_empty());
    assert!(s.outbox.is_idle());
}

#[test]
fn purges_get_their_count_and_a_swapped_one_is_an_error() {
    let mut s = Sim::new();
    s.redis.strings.insert("r".into(), b"x".to_vec());
    assert!(
        s.outbox
            .purge(1, PurgeCommand::Resources(vec!["r".into()]))
            .is_none()
    );
    s.pump();
    s.answer();
    assert!(matches!(s.replies[&1].1, Reply::Purge(Ok(1))));
    s.outbox.purge(2, PurgeCommand::Tags(vec!["t".into()]));
    s.pump();
    s.answer_with(
        Some(200),
        Some(b"*2\r\n$16\r\n0000000000000000\r\n$1\r\n5\r\n".to_vec()),
    );
    assert_eq!(s.error(2), Some(StoreError::Mismatch));
}

#[test]
fn a_refresh_goes_alone_and_is_settled() {
    let mut s = Sim::new();
    s.redis
        .strings
        .insert("e".into(), b"headbody-oldtail".to_vec());
    let refresh = StoreWrite::Entry(Write {
        key: "e".into(),
        variant: None,
        ttl_ms: 1_000,
        entry: b"newtail".to_vec(),
        refresh: Some(Refresh {
            keep: 8,
            expected_len: 16,
        }),
        tags: vec![],
    });
    s.outbox.write(refresh);
    s.pump();
    s.answer();
    assert_eq!(s.redis.strings["e"], b"headbodynewtail");
    assert!(
        s.notes
            .iter()
            .any(|n| matches!(n, Note::Published { rode: false, .. }))
    );
}

#[test]
fn a_wait_past_the_deadline_before_asking_is_a_timeout_at_once() {
    let mut s = Sim::new();
    let arrived = s.now;
    s.now += TIMEOUT;
    s.want_arrived(1, "v", arrived);
    assert_eq!(s.error(1), Some(StoreError::Timeout));
    assert!(s.out.is_empty());
}

#[test]
fn answers_out_of_order_each_serve_their_own_streams() {
    let mut s = Sim::new();
    s.want(0, "first");
    for i in 0..(2 * MAX_KEYS as u32) {
        s.redis
            .strings
            .insert(format!("k{i}"), format!("v{i}").into_bytes());
        s.want(100 + i, &format!("k{i}"));
    }
    assert_eq!(s.out.len(), 3);
    // The last callout answers first, then the first, then the middle one.
    let last = s.out.pop().unwrap();
    let body = s.redis.run(&last.request);
    s.outbox.answered(s.now, last.token, Some(200), Some(body));
    s.pump();
    s.answer_all();
    for i in 0..(2 * MAX_KEYS as u32) {
        assert_eq!(s.value(100 + i).unwrap(), format!("v{i}").into_bytes());
    }
}

#[test]
fn large_values_are_read_one_after_the_other() {
    let mut s = Sim::new();
    for k in ["a", "b", "c"] {
        s.redis
            .strings
            .insert(k.into(), vec![k.as_bytes()[0]; 8 << 20]);
    }
    s.want(0, "x");
    for (i, k) in ["a", "b", "c"].iter().enumerate() {
        s.want(1 + i as u32, k);
    }
    s.answer();
    s.answer();
    // Three values of two pieces each: four pieces out in all, the oldest value's first.
    assert_eq!(s.out.len(), 4);
    s.answer();
    s.answer();
    assert_eq!(s.value(1).unwrap().len(), 8 << 20, "a is done first");
    assert!(!s.replies.contains_key(&2) || !s.replies.contains_key(&3));
    s.answer_all();
    assert_eq!(s.value(2).unwrap(), vec![b'b'; 8 << 20]);
    assert_eq!(s.value(3).unwrap(), vec![b'c'; 8 << 20]);
}

#[test]
fn a_large_read_past_its_allowance_does_not_open_the_breaker() {
    let mut s = Sim::new();
    s.want(100, "first");
    for i in 0..6u32 {
        let k = format!("big{i}");
        s.redis.strings.insert(k.clone(), vec![1; 5 << 20]);
        s.want(i, &k);
    }
    s.answer();
    s.answer();
    // Four pieces out; none comes back in time, and the next ones neither.
    for _ in 0..4 {
        s.advance(500);
    }
    for i in 0..6u32 {
        assert_eq!(s.error(i), Some(StoreError::Timeout), "{i}");
    }
    assert!(!s.outbox.breaker_open(), "{:?}", s.notes);
    s.want(200, "small");
    assert_eq!(s.out.len(), 1, "lookups still go to the store");
}

#[test]
fn a_piece_of_an_abandoned_read_is_no_one_elses() {
    let mut s = Sim::new();
    let value: Vec<u8> = (0..(9 << 20)).map(|i| (i % 251) as u8).collect();
    s.redis.strings.insert("big".into(), value.clone());
    s.want(1, "big");
    s.answer();
    let old: Vec<Call> = s.out.drain(..).collect();
    s.outbox.stream_gone(1);
    s.want(2, "big");
    s.answer();
    // The abandoned read's pieces answer first; the new read must not count them.
    for c in old {
        let body = s.redis.run(&c.request);
        s.outbox.answered(s.now, c.token, Some(200), Some(body));
    }
    s.pump();
    assert!(
        !s.replies.contains_key(&2),
        "answered from another read's pieces"
    );
    s.answer_all();
    assert_eq!(s.value(2).unwrap(), value);
}

#[test]
fn a_late_piece_neither_closes_an_open_breaker_nor_resets_its_count() {
    let mut s = Sim::new();
    s.redis.strings.insert("big".into(), vec![7; 9 << 20]);
    s.want(1, "big");
    s.answer();
    let pieces: Vec<Call> = s.out.drain(..).collect();
    for i in 0..4 {
        s.want(10 + i, &format!("k{i}"));
        s.answer_with(Some(503), Some(Vec::new()));
    }
    // A piece times out in the middle of the failures: it is not a success.
    s.outbox
        .answered(s.now, pieces[0].token, Some(504), Some(Vec::new()));
    s.pump();
    s.want(20, "k");
    s.answer_with(Some(503), Some(Vec::new()));
    assert!(
        s.outbox.breaker_open(),
        "five failures in a row: {:?}",
        s.notes
    );
    s.outbox
        .answered(s.now, pieces[1].token, Some(504), Some(Vec::new()));
    s.pump();
    assert!(
        s.outbox.breaker_open(),
        "a late piece closed it: {:?}",
        s.notes
    );
}

#[test]
fn a_write_held_back_by_the_breaker_does_not_keep_the_timer_in_the_past() {
    let mut s = Sim::new();
    s.refuse = true;
    s.outbox.write(entry_write("w", b"x"));
    s.pump();
    for i in 0..4 {
        s.want(i, &format!("k{i}"));
    }
    assert!(s.outbox.breaker_open());
    s.refuse = false;
    s.advance(20);
    s.advance(20);
    let t = s.outbox.poll_timeout();
    assert!(
        t.is_none_or(|t| t > s.now),
        "{t:?} <= {}: the root would tick every millisecond",
        s.now
    );
}

#[test]
fn pieces_of_an_abandoned_read_count_against_the_cap() {
    let mut s = Sim::new();
    s.redis.strings.insert("big".into(), vec![7; 30 << 20]);
    s.redis.strings.insert("big2".into(), vec![8; 30 << 20]);
    s.want(1, "big");
    s.answer();
    assert_eq!(s.out.len(), 4, "four full pieces");
    s.outbox.stream_gone(1);
    s.want(2, "big2");
    s.answer_with_last();
    assert!(s.out.len() <= 4, "pieces out: {}", s.out.len());
}

#[test]
fn nothing_waits_on_a_failing_store_once_the_breaker_opened() {
    let mut s = Sim::new();
    for i in 0..4 {
        s.want(i, &format!("f{i}"));
        s.answer_with(Some(503), Some(Vec::new()));
    }
    s.want(10, "hot");
    for i in 0..MAX_KEYS as u32 {
        s.want(20 + i, &format!("k{i}"));
    }
    assert_eq!(s.out.len(), 2);
    // The full batch fails: the breaker opens while "hot" is still out.
    let c = s.out.pop().unwrap();
    s.outbox
        .answered(s.now, c.token, Some(503), Some(Vec::new()));
    s.pump();
    assert!(s.outbox.breaker_open());
    s.want(99, "hot");
    assert_eq!(
        s.error(99),
        Some(StoreError::BreakerOpen),
        "answered at once"
    );
}

impl Sim {
    fn invalidate(&mut self, stream: StreamId, key: &str) {
        if let Some(r) = self.outbox.invalidate(self.now, stream, vec![key.into()]) {
            self.replies.insert(stream, (self.now, r));
        }
        self.pump();
    }

    fn invalidated(&self, s: StreamId) -> Option<(u64, Result<(), StoreError>)> {
        match self.replies.get(&s)? {
            (at, Reply::Invalidated(result, keys)) => {
                assert!(!keys.is_empty(), "the reply names its keys");
                Some((*at, *result))
            }
            other => panic!("stream {s}: {other:?}"),
        }
    }
}

#[test]
fn rfc9111_4_4_a_held_response_goes_on_once_the_store_removed_the_entry() {
    let mut s = Sim::new();
    s.redis.strings.insert("r".into(), b"old".to_vec());
    s.invalidate(1, "r");
    assert_eq!(s.out.len(), 1, "sent at once");
    assert_eq!(s.invalidated(1), None, "held until the store answers");
    s.advance(3);
    s.answer();
    assert_eq!(s.invalidated(1), Some((T0 + 3, Ok(()))));
    assert!(!s.redis.strings.contains_key("r"));
    assert!(s.outbox.is_idle());
}

#[test]
fn a_held_invalidation_leaves_before_queued_lookups_and_writes() {
    let mut s = Sim::new();
    s.want(1, "a");
    s.outbox.write(entry_write("w", b"x"));
    s.want(2, "b");
    s.invalidate(3, "r");
    // The lookup batch of "a" went first; "b" and the write wait for it, the invalidation
    // does not.
    assert_eq!(s.out.len(), 2);
    let Request::Http { path, .. } = &s.out[1].request;
    assert!(path.contains("local%20n%3D0%20for%20i%3D1"), "{path}");
}

#[test]
fn a_held_response_goes_on_at_the_store_timeout_and_the_invalidation_still_lands() {
    let mut s = Sim::new();
    s.redis.strings.insert("r".into(), b"old".to_vec());
    s.invalidate(1, "r");
    s.advance(TIMEOUT - 1);
    assert_eq!(s.invalidated(1), None);
    s.advance(1);
    assert_eq!(
        s.invalidated(1),
        Some((T0 + TIMEOUT, Err(StoreError::Timeout)))
    );
    assert_eq!(s.outbox.poll_timeout().map(|t| t > s.now), Some(true));
    // The slow store answers later: the entry is gone, and nobody is answered twice.
    s.answer();
    assert!(!s.redis.strings.contains_key("r"));
    assert!(s.outbox.is_idle());
}

#[test]
fn a_failed_held_invalidation_lets_the_response_go_and_is_retried_as_a_write() {
    let mut s = Sim::new();
    s.redis.strings.insert("r".into(), b"old".to_vec());
    s.invalidate(1, "r");
    s.answer_with(Some(503), Some(b"down".to_vec()));
    assert!(matches!(s.invalidated(1), Some((_, Err(_)))));
    assert_eq!(s.out.len(), 1, "retried at once as a write");
    s.answer();
    assert!(!s.redis.strings.contains_key("r"));
    assert!(s.outbox.is_idle());
}

#[test]
fn with_the_breaker_open_a_response_is_not_held_and_the_invalidation_waits() {
    let mut s = Sim::new();
    for i in 0..5 {
        s.want(10 + i, &format!("k{i}"));
        s.answer_with(Some(503), Some(Vec::new()));
    }
    assert!(s.outbox.breaker_open());
    s.redis.strings.insert("r".into(), b"old".to_vec());
    s.invalidate(1, "r");
    assert_eq!(
        s.invalidated(1),
        Some((s.now, Err(StoreError::BreakerOpen)))
    );
    assert!(s.out.is_empty());
    // Once a probe succeeds, the kept invalidation is written.
    s.advance(10_000);
    s.want(2, "probe");
    s.answer();
    s.pump();
    s.answer_all();
    assert!(!s.redis.strings.contains_key("r"));
}

#[test]
fn a_held_stream_that_leaves_is_not_answered_but_its_invalidation_runs() {
    let mut s = Sim::new();
    s.redis.strings.insert("r".into(), b"old".to_vec());
    s.invalidate(1, "r");
    s.outbox.stream_gone(1);
    s.answer();
    assert!(s.replies.is_empty());
    assert!(!s.redis.strings.contains_key("r"));
    assert!(s.outbox.is_idle());
}

#[test]
fn an_invalidation_drops_queued_writes_of_its_resource() {
    let mut s = Sim::new();
    s.outbox.write(entry_write("x", b"other"));
    s.pump();
    // Queued behind the batch out: the older response of the invalidated resource.
    s.outbox.write(entry_write("r", b"old"));
    s.invalidate(1, "r");
    assert_eq!(
        s.out.len(),
        2,
        "the invalidation did not wait for the write of another key"
    );
    s.answer_all();
    s.pump();
    s.answer_all();
    assert_eq!(s.invalidated(1).map(|(_, r)| r), Some(Ok(())));
    assert!(
        !s.redis.strings.contains_key("r"),
        "never written after its invalidation"
    );
    assert!(s.redis.strings.contains_key("x"));
    assert!(s.outbox.is_idle());
}

#[test]
fn an_invalidation_waits_for_a_write_of_its_resource_that_is_out() {
    let mut s = Sim::new();
    s.outbox.write(entry_write("r", b"old"));
    s.pump();
    s.invalidate(1, "r");
    assert_eq!(
        s.out.len(),
        1,
        "both out at once could reach Redis in either order"
    );
    s.answer();
    assert_eq!(
        s.out.len(),
        1,
        "the invalidation left once the write settled"
    );
    s.answer();
    assert_eq!(s.invalidated(1).map(|(_, r)| r), Some(Ok(())));
    assert!(!s.redis.strings.contains_key("r"));
}

#[test]
fn a_failed_write_of_an_invalidated_resource_is_not_retried_after_it() {
    let mut s = Sim::new();
    s.outbox.write(entry_write("r", b"old"));
    s.pump();
    s.invalidate(1, "r");
    // The write fails: its retry would land after the invalidation.
    s.answer_with(Some(503), Some(Vec::new()));
    s.answer_all();
    s.pump();
    s.answer_all();
    assert_eq!(s.invalidated(1).map(|(_, r)| r), Some(Ok(())));
    assert!(!s.redis.strings.contains_key("r"));
    assert!(s.outbox.is_idle());
}

impl Sim {
    fn write_held(&mut self, stream: StreamId, key: &str, bytes: &[u8]) {
        if let Some(r) = self
            .outbox
            .write_held(self.now, stream, entry_write(key, bytes), None)
        {
            self.replies.insert(stream, (self.now, r));
        }
        self.pump();
    }

    fn written(&self, s: StreamId) -> Option<(u64, Result<(), StoreError>)> {
        match self.replies.get(&s)? {
            (at, Reply::Written(result)) => Some((*at, *result)),
            other => panic!("stream {s}: {other:?}"),
        }
    }
}

#[test]
fn read_your_writes_a_held_end_goes_on_once_the_entry_landed() {
    let mut s = Sim::new();
    s.write_held(1, "e", b"entry");
    assert_eq!(s.out.len(), 1);
    assert_eq!(s.written(1), None, "held until the store answers");
    s.advance(2);
    s.answer();
    assert_eq!(s.written(1), Some((T0 + 2, Ok(()))));
    assert_eq!(s.redis.strings["e"], b"entry");
    assert!(s.outbox.is_idle());
}

#[test]
fn read_your_writes_a_held_write_that_rides_with_a_lookup_is_released_by_its_answer() {
    let mut s = Sim::new();
    s.want(1, "a");
    s.write_held(2, "e", b"entry");
    s.want(3, "b");
    assert_eq!(
        s.out.len(),
        1,
        "waits for the lookup out, to ride with the next batch"
    );
    s.answer();
    assert_eq!(s.out.len(), 1);
    s.answer();
    assert_eq!(s.written(2).map(|(_, r)| r), Some(Ok(())));
    assert_eq!(s.redis.strings["e"], b"entry");
    assert!(
        s.notes
            .iter()
            .any(|n| matches!(n, Note::Published { rode: true, .. })),
        "{:?}",
        s.notes
    );
}

#[test]
fn read_your_writes_the_end_goes_on_at_the_deadline_and_the_write_still_lands() {
    let mut s = Sim::new();
    s.write_held(1, "e", b"entry");
    s.advance(TIMEOUT + 1);
    assert_eq!(s.written(1).map(|(_, r)| r), Some(Err(StoreError::Timeout)));
    s.answer();
    assert_eq!(s.redis.strings["e"], b"entry");
    assert!(s.outbox.is_idle());
}

#[test]
fn read_your_writes_a_failing_store_releases_after_the_retry_fails() {
    let mut s = Sim::new();
    s.write_held(1, "e", b"entry");
    s.answer_with(Some(503), Some(Vec::new()));
    assert_eq!(s.written(1), None, "the retry may still land in time");
    s.answer_with(Some(503), Some(Vec::new()));
    assert!(matches!(s.written(1), Some((_, Err(_)))));
}

#[test]
fn read_your_writes_is_not_waited_for_while_the_breaker_is_open() {
    let mut s = Sim::new();
    for i in 0..5 {
        s.want(10 + i, &format!("k{i}"));
        s.answer_with(Some(503), Some(Vec::new()));
    }
    s.write_held(1, "e", b"entry");
    assert_eq!(s.written(1), Some((s.now, Err(StoreError::BreakerOpen))));
}

#[test]
fn read_your_writes_a_write_dropped_by_an_invalidation_releases_its_waiter() {
    let mut s = Sim::new();
    s.outbox.write(entry_write("x", b"other"));
    s.pump();
    s.write_held(1, "r", b"old");
    s.invalidate(2, "r");
    assert_eq!(s.written(1).map(|(_, r)| r), Some(Ok(())));
    s.answer_all();
    assert!(!s.redis.strings.contains_key("r"));
}

#[path = "collapse_tests.rs"]
mod collapse_tests;

#[path = "cluster_tests.rs"]
mod cluster_tests;
