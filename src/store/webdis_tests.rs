use super::*;
use crate::store::{Refresh, VariantWrite};

const N: u64 = 0x1234;
const NONCE: &str = "0000000000001234";

fn path(r: Request<'_>) -> (String, Option<Vec<u8>>) {
    let Request::Http { path, body, .. } = r;
    (path, body.map(|b| b.into_owned()))
}

fn plain_write() -> Write {
    Write {
        key: "ns:k".into(),
        variant: None,
        ttl_ms: 5000,
        entry: vec![1, 2],
        refresh: None,
        tags: vec![],
    }
}

#[test]
fn args_are_percent_encoded() {
    let mut s = String::new();
    encode_arg(&mut s, b"a/b+c.json \0");
    assert_eq!(s, "a%2Fb%2Bc%2Ejson%20%00");
}

#[test]
fn lookup_path_carries_keys_nonce_and_budget() {
    let cmd = Command::Lookup {
        keys: vec!["ns:a", "ns:b.c"],
        inline_bytes: 4096,
        locking: None,
    };
    let (p, body) = path(encode(N, &cmd));
    assert!(p.starts_with("/EVAL/local%20LS%3D"), "{p}");
    assert!(
        p.ends_with(&format!("/2/ns%3Aa/ns%3Ab%2Ec/{NONCE}/4096/-/0.raw")),
        "{p}"
    );
    assert_eq!(body, None);
    // Collapsed misses: the keys whose lock may be taken, and for how long.
    let cmd = Command::Lookup {
        keys: vec!["ns:a", "ns:b.c"],
        inline_bytes: 4096,
        locking: Some(Locking {
            keys: &[false, true],
            ttl_ms: 10_000,
        }),
    };
    let (p, _) = path(encode(N, &cmd));
    assert!(
        p.ends_with(&format!("/2/ns%3Aa/ns%3Ab%2Ec/{NONCE}/4096/01/10000.raw")),
        "{p}"
    );
}

#[test]
fn write_paths() {
    let w = plain_write();
    let tagged = Write {
        tags: vec!["ns:tag:1".into()],
        ..w.clone()
    };
    let variant = Write {
        variant: Some(VariantWrite {
            key: "ns:v".into(),
            record: vec![0, 0xab],
        }),
        entry: vec![3, 4, 5],
        ..w.clone()
    };
    let cmd = Command::Write {
        entries: vec![&w, &tagged, &variant],
        then_lookup: vec![],
        inline_bytes: 0,
        locking: None,
    };
    let (p, body) = path(encode(N, &cmd));
    assert!(
        p.ends_with(&format!(
            "/6/ns%3Ak/ns%3Ak/ns%3Atag%3A1/ns%3Ak/ns%3Av/ns%3Ak%3Av/{NONCE}\
             /1/5000/0/-/2/2/5000/0/-/2/3/5000/1/00ab/3.raw"
        )),
        "{p}"
    );
    assert_eq!(body.unwrap(), [1, 2, 1, 2, 3, 4, 5]);
    // Riding with a lookup: the entries' KEYS, the keys to read, nonce, budget, entries.
    let cmd = Command::Write {
        entries: vec![&tagged],
        then_lookup: vec!["ns:a"],
        inline_bytes: 99,
        locking: Some(Locking {
            keys: &[true],
            ttl_ms: 500,
        }),
    };
    let (p, body) = path(encode(N, &cmd));
    assert!(
        p.ends_with(&format!(
            "/3/ns%3Ak/ns%3Atag%3A1/ns%3Aa/{NONCE}/99/1/500/2/5000/0/-/2.raw"
        )),
        "{p}"
    );
    assert_eq!(body.unwrap(), [1, 2], "a lone entry is sent as it is");
}

#[test]
fn refresh_invalidate_purge_piece_paths() {
    let variant = Write {
        variant: Some(VariantWrite {
            key: "ns:v".into(),
            record: vec![],
        }),
        refresh: Some(Refresh {
            keep: 106,
            expected_len: 150,
        }),
        ..plain_write()
    };
    let (p, body) = path(encode(N, &Command::Refresh(&variant)));
    assert!(
        p.ends_with(&format!("/2/ns%3Ak/ns%3Av/{NONCE}/5000/106/150.raw")),
        "{p}"
    );
    assert_eq!(body.unwrap(), [1, 2]);
    let keys = vec!["ns:a".to_string(), "ns:b".to_string()];
    let (p, _) = path(encode(N, &Command::Invalidate(&keys)));
    assert!(
        p.ends_with(&format!(
            "/4/ns%3Aa/ns%3Aa%3Av/ns%3Ab/ns%3Ab%3Av/{NONCE}.raw"
        )),
        "{p}"
    );
    let unlock = |unlock| Command::Unlock {
        key: "ns:k",
        owner: 0xabc,
        unlock,
    };
    let (p, _) = path(encode(N, &unlock(Unlock::Release)));
    assert!(
        p.ends_with(&format!(
            "/1/ns%3Ak%3Alock/{NONCE}/0000000000000abc/r/1.raw"
        )),
        "{p}"
    );
    let (p, _) = path(encode(N, &unlock(Unlock::Uncacheable { ttl_ms: 60_000 })));
    assert!(p.ends_with("/0000000000000abc/h/60000.raw"), "{p}");
    let (p, _) = path(encode(N, &unlock(Unlock::Exempt { ttl_ms: 5_000 })));
    assert!(p.ends_with("/0000000000000abc/x/5000.raw"), "{p}");
    let (p, _) = path(encode(
        N,
        &Command::Lock {
            key: "ns:k",
            ttl_ms: 30_000,
        },
    ));
    assert!(
        p.ends_with(&format!("/1/ns%3Ak%3Alock/{NONCE}/30000.raw")),
        "{p}"
    );
    let (p, _) = path(encode(N, &Command::TakeTagSet { key: "ns:tag:x" }));
    assert!(p.ends_with(&format!("/1/ns%3Atag%3Ax/{NONCE}.raw")), "{p}");
    // A piece is a plain read (no script copies a large value): no nonce.
    let piece = Command::Piece {
        key: "ns:{a}",
        start: 50,
        end: 100,
    };
    let (p, _) = path(encode(N, &piece));
    assert_eq!(p, "/GETRANGE/ns%3A%7Ba%7D/50/99.raw");
}

fn ok(expect: Expect, body: &[u8]) -> Result<Answer, StoreError> {
    decode(N, expect, Some(200), body)
}

fn frame(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len() + 1).into_bytes();
    out.extend_from_slice(format!("$16\r\n{NONCE}\r\n").as_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

#[test]
fn lookup_answers() {
    // As Webdis frames them: every element a bulk string.
    // A large value's slot: its length, ':', its last 8 bytes (any bytes, ':' among them).
    let body = frame(&[
        b"$7\r\nvmflmll\r\n",
        b"$3\r\na\0b\r\n",
        b"$0\r\n\r\n",
        b"$0\r\n\r\n",
        b"$16\r\n5000000:\x01:\r\n\0\0:9\r\n",
        b"$0\r\n\r\n",
        b"$16\r\n2000000:\x01:\r\n\0\0:9\r\n",
        // Over the bound but shorter than any entry's trailer: not ours.
        b"$4\r\n3:ab\r\n",
    ]);
    let Ok(Answer::Values(slots)) = ok(Expect::Values(7), &body) else {
        panic!("{:?}", ok(Expect::Values(7), &body))
    };
    let tail = *b"\x01:\r\n\0\0:9";
    assert_eq!(
        slots,
        [
            Slot::Value(44..47),
            Slot::Missing,
            Slot::Foreign,
            Slot::Large {
                len: 5_000_000,
                tail
            },
            Slot::Missing,
            Slot::Large {
                len: 2_000_000,
                tail
            },
            Slot::Foreign,
        ]
    );
    // A large slot without its length or its separator is garbage.
    for bad in [&b"$9\r\n:12345678\r\n"[..], b"$8\r\n12345678\r\n"] {
        let body = frame(&[b"$1\r\nl\r\n", bad]);
        assert_eq!(ok(Expect::Values(1), &body), Err(StoreError::Garbage));
    }
    assert_eq!(&body[44..47], b"a\0b");
    // Collapsed misses: what a missing key's lock said.
    let body = frame(&[
        b"$4\r\nLwhx\r\n",
        b"$0\r\n\r\n",
        b"$0\r\n\r\n",
        b"$0\r\n\r\n",
        b"$0\r\n\r\n",
    ]);
    assert_eq!(
        ok(Expect::Values(4), &body),
        Ok(Answer::Values(vec![
            Slot::Locked,
            Slot::Fetching,
            Slot::NoWait(Marker::Uncacheable),
            Slot::NoWait(Marker::Exempt),
        ]))
    );
    // A lock letter never comes with bytes.
    let body = frame(&[b"$1\r\nL\r\n", b"$1\r\nx\r\n"]);
    assert_eq!(ok(Expect::Values(1), &body), Err(StoreError::Garbage));
    // A value may hold CRLF: only the length frames it.
    let body = frame(&[b"$1\r\nv\r\n", b"$2\r\n\r\n\r\n"]);
    assert!(matches!(
        ok(Expect::Values(1), &body),
        Ok(Answer::Values(_))
    ));
    // Integers (another Webdis framing) are read too where a number is expected.
    assert_eq!(
        ok(Expect::Count, &frame(&[b":7\r\n"])),
        Ok(Answer::Count(7))
    );
}

#[test]
fn riders_answers() {
    let body = frame(&[b"$1\r\nv\r\n", b"$2\r\nhi\r\n", b"$1\r\n1\r\n"]);
    assert!(matches!(
        ok(Expect::ValuesAndWrites(1), &body),
        Ok(Answer::ValuesAndWrites(_, Ok(())))
    ));
    let body = frame(&[b"$1\r\nm\r\n", b"$0\r\n\r\n", b"$1\r\n0\r\n"]);
    assert_eq!(
        ok(Expect::ValuesAndWrites(1), &body),
        Ok(Answer::ValuesAndWrites(
            vec![Slot::Missing],
            Err(StoreError::Refused)
        ))
    );
}

#[test]
fn done_count_and_piece_answers() {
    let done = format!("$16\r\n{NONCE}\r\n");
    assert_eq!(ok(Expect::Done, done.as_bytes()), Ok(Answer::Done));
    assert_eq!(
        ok(Expect::Count, &frame(&[b"$2\r\n12\r\n"])),
        Ok(Answer::Count(12))
    );
    // A piece is a bare string (a plain GETRANGE); empty when the value is gone.
    assert_eq!(ok(Expect::Piece, b"$3\r\nxyz\r\n"), Ok(Answer::Piece(4..7)));
    assert_eq!(ok(Expect::Piece, b"$0\r\n\r\n"), Ok(Answer::Piece(4..4)));
    // A script's answer delivered to a piece's callout is another command's.
    let piece_as_script = frame(&[b"$3\r\nxyz\r\n"]);
    assert_eq!(
        ok(Expect::Piece, &piece_as_script),
        Err(StoreError::Mismatch)
    );
    for bad in [&b"$3\r\nxy"[..], b"$3\r\nxyz\r\nmore", b"+OK\r\n", b""] {
        assert!(ok(Expect::Piece, bad).is_err(), "{bad:?}");
    }
}

#[test]
fn another_commands_answer_is_a_mismatch() {
    let other = "$16\r\n0000000000009999\r\n";
    assert_eq!(
        ok(Expect::Done, other.as_bytes()),
        Err(StoreError::Mismatch)
    );
    let other_lookup = b"*3\r\n$16\r\n0000000000009999\r\n$1\r\nm\r\n$0\r\n\r\n";
    assert_eq!(
        ok(Expect::Values(1), other_lookup),
        Err(StoreError::Mismatch)
    );
    // Our nonce, but a lookup's shape where a write's answer was expected.
    assert_eq!(
        ok(Expect::Done, &frame(&[b"$1\r\nm\r\n"])),
        Err(StoreError::Garbage)
    );
    // A plain GET's answer (the old protocol) is not this command's.
    assert_eq!(
        ok(Expect::Values(1), b"$3\r\nabc\r\n"),
        Err(StoreError::Mismatch)
    );
}

#[test]
fn statuses_and_errors() {
    assert_eq!(
        decode(N, Expect::Done, Some(503), b""),
        Err(StoreError::Unavailable)
    );
    assert_eq!(
        decode(N, Expect::Done, Some(504), b""),
        Err(StoreError::Timeout)
    );
    for status in [401, 403] {
        assert_eq!(
            decode(N, Expect::Done, Some(status), b""),
            Err(StoreError::Forbidden)
        );
    }
    assert_eq!(
        decode(N, Expect::Done, Some(418), b""),
        Err(StoreError::Status(418))
    );
    assert_eq!(decode(N, Expect::Done, None, b""), Err(StoreError::Garbage));
    assert_eq!(
        ok(Expect::Done, b"-OOM command not allowed\r\n"),
        Err(StoreError::Refused)
    );
}

#[test]
fn garbage_is_garbage() {
    let n = "$16\r\n0000000000001234\r\n";
    let cases: Vec<Vec<u8>> = [
        "",
        "*",
        "*1\r\n",
        "*x\r\n",
        "$16\r\n0000000000001234",
        "*3\r\n{n}",
        "*3\r\n{n}$1\r\nv\r\n",
        "*3\r\n{n}$1\r\nv\r\n$5\r\nabc\r\n",
        "*3\r\n{n}$1\r\nv\r\n$3\r\nabcdef\r\n",
        "*3\r\n{n}$1\r\nq\r\n$0\r\n\r\n",
        "*3\r\n{n}$2\r\nvv\r\n$0\r\n\r\n",
        "*3\r\n{n}$1\r\nm\r\n$1\r\nz\r\n",
        "*3\r\n{n}$1\r\nl\r\n$2\r\n-1\r\n",
        "*3\r\n{n}$1\r\nl\r\n$1\r\n0\r\n",
        "*3\r\n{n}$1\r\nl\r\n$21\r\n999999999999999999999\r\n",
        "*3\r\n{n}$1\r\nv\r\n$18446744073709551615\r\n",
        "*3\r\n{n}$1\r\nv\r\n$99999999999999999999999\r\n",
        "*3\r\n{n}$1\r\nm\r\n$0\r\n\r\nextra",
        "*4\r\n{n}$1\r\nm\r\n$0\r\n\r\n",
        "*99999999999999999999999\r\n",
        "{\"GET\":\"x\"}",
    ]
    .iter()
    .map(|c| c.replace("{n}", n).into_bytes())
    .collect();
    for body in cases {
        let r = ok(Expect::Values(1), &body);
        assert!(
            matches!(r, Err(StoreError::Garbage)),
            "{:?}: {r:?}",
            String::from_utf8_lossy(&body)
        );
    }
}

#[test]
fn members_answers() {
    assert_eq!(
        ok(
            Expect::Members,
            &frame(&[b"$3\r\nn:a\r\n", b"$3\r\nn:b\r\n"])
        ),
        Ok(Answer::Members(vec!["n:a".into(), "n:b".into()]))
    );
    assert_eq!(
        ok(Expect::Members, &frame(&[])),
        Ok(Answer::Members(vec![]))
    );
    // Not text, not a string, or cut short: garbage.
    assert_eq!(
        ok(Expect::Members, &frame(&[b"$2\r\n\xff\xfe\r\n"])),
        Err(StoreError::Garbage)
    );
    assert_eq!(
        ok(Expect::Members, &frame(&[b":1\r\n"])),
        Err(StoreError::Garbage)
    );
}
