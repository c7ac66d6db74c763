//! Every store command, as the filter encodes it, run by real Webdis and Redis, and its answer
//! read back by the filter's own decoder: the scripts, the nonce echo, Webdis' `.raw` framing
//! of nested integers and bulk strings, foreign Redis types, large values and pieces.

mod support;

use fleet_cache::store::{
    self, Answer, Command, Locking, Marker, Refresh, Request, Slot, StoreError, Unlock, Write,
};
use serde_json::json;
use support::{Stack, StackOptions};

fn run(st: &Stack, nonce: u64, cmd: &Command<'_>) -> (Result<Answer, StoreError>, Vec<u8>) {
    let Request::Http { method, path, body } = store::encode(nonce, cmd);
    // Keep-alive, as Envoy's callouts: Webdis 0.1.9 never answers a large PUT sent with
    // `Connection: close` (seen with curl too).
    let r = support::client::request(
        st.webdis_port(),
        method,
        &path,
        &[("connection", "keep-alive")],
        body.as_deref().unwrap_or_default(),
    )
    .expect("webdis");
    (
        store::decode(nonce, cmd.expects(), Some(r.status), &r.body),
        r.body,
    )
}

fn entry(key: &str, bytes: &[u8], tags: &[&str]) -> Write {
    Write {
        key: key.into(),
        variant: None,
        ttl_ms: 60_000,
        entry: bytes.to_vec(),
        refresh: None,
        tags: tags.iter().map(|t| t.to_string()).collect(),
    }
}

fn values(answer: Answer, body: &[u8]) -> Vec<Option<Vec<u8>>> {
    let slots = match answer {
        Answer::Values(s) | Answer::ValuesAndWrites(s, _) => s,
        other => panic!("{other:?}"),
    };
    slots
        .into_iter()
        .map(|s| match s {
            Slot::Value(r) => Some(body[r].to_vec()),
            Slot::Missing => None,
            Slot::Foreign => Some(b"<foreign>".to_vec()),
            Slot::Large { len, tail } => {
                let mut v = format!("<large {len}>").into_bytes();
                v.extend_from_slice(&tail);
                Some(v)
            }
            other => Some(format!("{other:?}").into_bytes()),
        })
        .collect()
}

#[test]
fn every_command_round_trips_through_webdis_and_redis() {
    let st = Stack::start(StackOptions::with_config(json!({})));
    let ns = st.namespace().to_string();
    let k = |s: &str| format!("{ns}:{s}");
    let (a, b, tag) = (k("a"), k("b"), k("tag:t"));

    // Writes: a batch of two, one tagged; the answer is the nonce.
    let wa = entry(&a, b"value\0a\r\n", &[&tag]);
    let wb = entry(&b, b"B", &[]);
    let (ans, body) = run(
        &st,
        1,
        &Command::Write {
            entries: vec![&wa, &wb],
            then_lookup: vec![],
            inline_bytes: 0,
            locking: None,
        },
    );
    assert_eq!(ans, Ok(Answer::Done), "{}", String::from_utf8_lossy(&body));

    // A lookup: values, missing, and a hash at a key (foreign).
    st.redis_cli(&["HSET", &k("h"), "f", "v"]);
    let keys = [a.as_str(), k("missing").leak(), k("h").leak(), b.as_str()];
    let cmd = Command::Lookup {
        keys: keys.to_vec(),
        inline_bytes: 1 << 20,
        locking: None,
    };
    let (ans, body) = run(&st, 2, &cmd);
    assert_eq!(
        values(ans.unwrap(), &body),
        [
            Some(b"value\0a\r\n".to_vec()),
            None,
            Some(b"<foreign>".to_vec()),
            Some(b"B".to_vec())
        ]
    );
    // Another nonce's answer is refused.
    let (_, answer_to_2) = run(&st, 2, &cmd);
    assert_eq!(
        store::decode(3, cmd.expects(), Some(200), &answer_to_2),
        Err(StoreError::Mismatch)
    );

    // Writes riding with a lookup; the written key reads its new value; a foreign value at a
    // tag set's key is replaced rather than failing the write.
    st.redis_cli(&["SET", &k("tag:u"), "not a set"]);
    let wh = entry(&k("h"), b"now a string", &[&k("tag:u")]);
    let (ans, body) = run(
        &st,
        4,
        &Command::Write {
            entries: vec![&wh],
            then_lookup: vec![k("h").leak(), a.as_str()],
            inline_bytes: 1 << 20,
            locking: None,
        },
    );
    let ans = ans.unwrap();
    assert!(matches!(ans, Answer::ValuesAndWrites(_, Ok(()))), "{ans:?}");
    assert_eq!(
        values(ans, &body),
        [
            Some(b"now a string".to_vec()),
            Some(b"value\0a\r\n".to_vec())
        ]
    );
    assert_eq!(st.redis_cli(&["TYPE", &k("tag:u")]), "set");

    // A large value comes back as its length and last 8 bytes, then in pieces (plain reads):
    // over the answer's budget, or over the script's own bound (128 KiB) whatever the budget.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let wbig = entry(&k("big"), &big, &[]);
    let write = Command::Write {
        entries: vec![&wbig],
        then_lookup: vec![],
        inline_bytes: 0,
        locking: None,
    };
    assert_eq!(run(&st, 5, &write).0, Ok(Answer::Done));
    let (ans, body) = run(
        &st,
        6,
        &Command::Lookup {
            keys: vec![k("big").leak(), b.as_str()],
            inline_bytes: 100_000,
            locking: None,
        },
    );
    let mut large = b"<large 300000>".to_vec();
    large.extend_from_slice(&big[300_000 - 8..]);
    assert_eq!(
        values(ans.unwrap(), &body),
        [Some(large.clone()), Some(b"B".to_vec())]
    );
    let (ans, body) = run(
        &st,
        6,
        &Command::Lookup {
            keys: vec![k("big").leak()],
            inline_bytes: 4 << 20,
            locking: None,
        },
    );
    assert_eq!(values(ans.unwrap(), &body), [Some(large)]);
    let mut assembled = Vec::new();
    for start in (0..300_000u64).step_by(128 * 1024) {
        let end = (start + 128 * 1024).min(300_000);
        let (ans, body) = run(
            &st,
            7 + start,
            &Command::Piece {
                key: k("big").leak(),
                start,
                end,
            },
        );
        let Ok(Answer::Piece(r)) = ans else {
            panic!("{ans:?}")
        };
        assembled.extend_from_slice(&body[r]);
    }
    assert_eq!(assembled, big);
    // Past the end of a value (it got shorter) or of a key that is gone: short or empty.
    let piece = |key: &str, start, end| Command::Piece {
        key: k(key).leak(),
        start,
        end,
    };
    let (ans, _) = run(&st, 100, &piece("big", 299_990, 300_010));
    assert!(
        matches!(&ans, Ok(Answer::Piece(r)) if r.len() == 10),
        "{ans:?}"
    );
    let (ans, _) = run(&st, 100, &piece("nothing", 0, 10));
    assert!(
        matches!(&ans, Ok(Answer::Piece(r)) if r.is_empty()),
        "{ans:?}"
    );

    // A refresh keeps the prefix and swaps the tail, only at the expected length.
    let refresh = |expected_len| Write {
        entry: b"TAIL".to_vec(),
        refresh: Some(Refresh {
            keep: 1,
            expected_len,
        }),
        ..entry(&b, b"", &[])
    };
    let (ans, _) = run(&st, 101, &Command::Refresh(&refresh(5)));
    assert_eq!(ans, Ok(Answer::Done));
    assert_eq!(st.redis_cli(&["GET", &b]), "B", "length differs: unchanged");
    let (ans, _) = run(&st, 105, &Command::Refresh(&refresh(1)));
    assert_eq!(ans, Ok(Answer::Done));
    assert_eq!(st.redis_cli(&["GET", &b]), "BTAIL");

    // A Cluster's tag write, apart from its entry: joins the set, lives at least its TTL, and
    // replaces a key of another type.
    let tag2 = k("tag:two");
    st.redis_cli(&["SET", &tag2, "junk"]);
    let add = |member: &str, ttl_ms| Command::TagAdd {
        set: tag2.as_str().to_string().leak(),
        member: member.to_string().leak(),
        ttl_ms,
    };
    assert_eq!(run(&st, 110, &add(&a, 50_000)).0, Ok(Answer::Done));
    assert_eq!(run(&st, 111, &add(&b, 90_000)).0, Ok(Answer::Done));
    assert_eq!(run(&st, 112, &add(&b, 1_000)).0, Ok(Answer::Done));
    let mut members: Vec<String> = st
        .redis_cli(&["SMEMBERS", &tag2])
        .lines()
        .map(str::to_string)
        .collect();
    members.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(members, want);
    let pttl: u64 = st.redis_cli(&["PTTL", &tag2]).parse().unwrap();
    assert!(
        (80_000..=90_000).contains(&pttl),
        "{pttl}: the longest TTL stays"
    );

    // Purge by tag, in parts: the tag set's members (and the set gone), then its resources.
    let (ans, _) = run(&st, 102, &Command::TakeTagSet { key: &tag });
    assert_eq!(ans, Ok(Answer::Members(vec![a.clone()])));
    assert_eq!(st.redis_cli(&["EXISTS", &tag]), "0");
    let (ans, _) = run(&st, 106, &Command::TakeTagSet { key: &tag });
    assert_eq!(
        ans,
        Ok(Answer::Members(vec![])),
        "a missing set has no members"
    );
    st.redis_cli(&["SET", &tag, "junk"]);
    let (ans, _) = run(&st, 107, &Command::TakeTagSet { key: &tag });
    assert_eq!(
        ans,
        Ok(Answer::Members(vec![])),
        "nor a key of another type"
    );
    let (ans, _) = run(&st, 108, &Command::Invalidate(std::slice::from_ref(&a)));
    assert_eq!(ans, Ok(Answer::Count(1)));
    assert_eq!(st.redis_cli(&["EXISTS", &a]), "0");
    let (ans, _) = run(&st, 103, &Command::Invalidate(&[b.clone(), k("nothing")]));
    assert_eq!(ans, Ok(Answer::Count(1)));
    assert_eq!(st.redis_cli(&["EXISTS", &b]), "0");
    // A set key of another type is no obstacle to invalidation.
    st.redis_cli(&["SET", &format!("{}:v", k("big")), "junk"]);
    let (ans, _) = run(&st, 104, &Command::Invalidate(&[k("big")]));
    assert_eq!(ans, Ok(Answer::Count(1)));
}

/// The lock of collapsed misses, in the real scripts: taken by a lookup that asks for it at a
/// missing key (its nonce the owner, with the lifetime asked), reported to the others, freed
/// only by its owner, replaced by a marker, and removed by the entry's write.
#[test]
fn the_lock_of_a_missing_entry_round_trips_through_webdis_and_redis() {
    let st = Stack::start(StackOptions::with_config(json!({})));
    let ns = st.namespace().to_string();
    let k = |s: &str| format!("{ns}:{s}");
    let (a, b) = (k("a"), k("b"));
    let lookup = |nonce: u64, flags: &[bool]| {
        let cmd = Command::Lookup {
            keys: vec![a.as_str(), b.as_str()],
            inline_bytes: 1 << 20,
            locking: Some(Locking {
                keys: flags,
                ttl_ms: 5_000,
            }),
        };
        let (ans, _) = run(&st, nonce, &cmd);
        match ans.unwrap() {
            Answer::Values(slots) => slots,
            other => panic!("{other:?}"),
        }
    };
    // Only the flagged key's lock is taken.
    assert_eq!(lookup(0x11, &[true, false]), [Slot::Locked, Slot::Missing]);
    assert_eq!(
        st.redis_cli(&["GET", &format!("{a}:lock")]),
        "0000000000000011"
    );
    let pttl: u64 = st
        .redis_cli(&["PTTL", &format!("{a}:lock")])
        .parse()
        .unwrap();
    assert!((4_000..=5_000).contains(&pttl), "{pttl}");
    // Another lookup learns someone fetches it.
    assert_eq!(lookup(0x22, &[true, true]), [Slot::Fetching, Slot::Locked]);
    // A release by another owner frees nothing; by the owner, it does.
    let unlock = |nonce: u64, key: &str, owner: u64, unlock: Unlock| {
        let cmd = Command::Unlock { key, owner, unlock };
        assert_eq!(run(&st, nonce, &cmd).0, Ok(Answer::Done));
    };
    unlock(0x31, &a, 0x99, Unlock::Release);
    assert_eq!(lookup(0x32, &[true, false])[0], Slot::Fetching);
    unlock(0x33, &a, 0x11, Unlock::Release);
    assert_eq!(st.redis_cli(&["EXISTS", &format!("{a}:lock")]), "0");
    // Markers: whoever holds the lock, lookups are told not to wait, for the marker's time.
    unlock(0x34, &b, 0x99, Unlock::Uncacheable { ttl_ms: 60_000 });
    unlock(0x35, &a, 0x99, Unlock::Exempt { ttl_ms: 60_000 });
    assert_eq!(
        lookup(0x36, &[true, true]),
        [
            Slot::NoWait(Marker::Exempt),
            Slot::NoWait(Marker::Uncacheable)
        ]
    );
    // The entry's write removes the lock (or marker): a later miss fetches again.
    let wb = entry(&b, b"B", &[]);
    let write = Command::Write {
        entries: vec![&wb],
        then_lookup: vec![],
        inline_bytes: 0,
        locking: None,
    };
    assert_eq!(run(&st, 0x37, &write).0, Ok(Answer::Done));
    assert_eq!(st.redis_cli(&["EXISTS", &format!("{b}:lock")]), "0");
    // Riding writes with a locking lookup: the lookup part takes locks as a lookup does.
    let wa = entry(&k("c"), b"C", &[]);
    let cmd = Command::Write {
        entries: vec![&wa],
        then_lookup: vec![k("d").leak(), k("c").leak()],
        inline_bytes: 1 << 20,
        locking: Some(Locking {
            keys: &[true, true],
            ttl_ms: 5_000,
        }),
    };
    let (ans, body) = run(&st, 0x38, &cmd);
    let ans = ans.unwrap();
    assert_eq!(
        values(ans, &body),
        [Some(b"Locked".to_vec()), Some(b"C".to_vec())]
    );
    // A lock key of another type is not ours: no waiting on it.
    st.redis_cli(&["DEL", &format!("{a}:lock")]);
    st.redis_cli(&["HSET", &format!("{a}:lock"), "f", "v"]);
    assert_eq!(lookup(0x39, &[true, false])[0], Slot::Missing);
    unlock(0x3a, &a, 0x39, Unlock::Uncacheable { ttl_ms: 1_000 });
    assert_eq!(st.redis_cli(&["TYPE", &format!("{a}:lock")]), "hash");
    // Redis out of memory refuses the lock's SET: the lookup still answers (no lock, no wait).
    for (name, value) in [("maxmemory-policy", "noeviction"), ("maxmemory", "1")] {
        assert_eq!(st.redis_cli(&["CONFIG", "SET", name, value]), "OK");
    }
    let oom = k("oom");
    let cmd = |nonce| {
        let cmd = Command::Lookup {
            keys: vec![oom.as_str()],
            inline_bytes: 1 << 20,
            locking: Some(Locking {
                keys: &[true],
                ttl_ms: 5_000,
            }),
        };
        run(&st, nonce, &cmd).0
    };
    assert_eq!(cmd(0x3b), Ok(Answer::Values(vec![Slot::Missing])));
    assert_eq!(st.redis_cli(&["CONFIG", "SET", "maxmemory", "0"]), "OK");
    assert_eq!(cmd(0x3c), Ok(Answer::Values(vec![Slot::Locked])));
}
