//! Stored bytes are input, not trusted: a well-formed, correctly checksummed entry that someone
//! with access to the store planted at a URL's key, holding what the cache never stores (a
//! header value with CR LF, status 0, an empty header name, a NUL in a value, a hop-by-hop
//! header), is refused through real Envoy, Webdis and Redis. The request goes to the origin
//! (`detail=invalid-entry`), the entry is counted as corrupt, nothing of it reaches the client,
//! and the origin's answer overwrites it. Run with `cargo test --test stored_bytes`.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_cache::entry::{self, Decoded, EntryError, EntryWriter, ResponseMeta};
use fleet_cache::key::CacheKey;
use serde_json::json;
use support::origin::{text_body, unique_suffix};
use support::{Resp, Stack, StackOptions, poll};

// ---------------------------------------------------------------------------------------------
// Helpers

/// These tests write the shared store directly: the in-proxy tier, which could answer from a
/// copy for up to its max age, is off, so every lookup reads what Redis holds.
fn store_only() -> StackOptions {
    StackOptions::with_config(json!({"memory": {"max_bytes": 0}}))
}

fn cache_status(r: &Resp) -> String {
    r.header("cache-status").unwrap_or_default().to_string()
}

const CRAFTED_BODY: &[u8] = b"planted body\n";

/// A fresh, well-formed, correctly checksummed response entry for `key`, as anyone with store
/// access can write one: 200, `content-type`, `x-note`, `CRAFTED_BODY`; `tamper` changes it.
fn crafted(key: &CacheKey, tamper: impl FnOnce(&mut ResponseMeta)) -> Vec<u8> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut meta = ResponseMeta {
        status: 200,
        headers: vec![
            ("content-type".into(), "text/plain".into()),
            ("x-note".into(), "planted".into()),
        ],
        chunks: vec![],
        stored_at_ms: now_ms,
        freshness: fleet_cache::policy::Freshness {
            lifetime_s: 300,
            initial_age_s: 0,
            ..Default::default()
        },
        key_digest: key.digest,
        body_len: 0,
        body_hash: 0,
        packed: false,
    };
    tamper(&mut meta);
    let mut w = EntryWriter::new();
    w.push_chunk(CRAFTED_BODY);
    w.finish_response(meta)
}

/// Nothing a planted header carried reached the client: no `x-injected` header, no trace of
/// one in any header name or value.
fn assert_nothing_injected(r: &Resp, what: &str) {
    for (name, values) in &r.headers {
        assert!(!name.contains("injected"), "{what}: {r:?}");
        for v in values {
            assert!(!v.contains("injected"), "{what}: {r:?}");
        }
    }
}

/// The whole story for one kind of planted entry:
/// 1. the untampered planted entry is a hit with the planted body (the key and the entry are
///    right, so what follows is the tampering's doing, not a wrong key or a bad checksum);
/// 2. the tampered one (`tamper`) is refused: the GET goes to the origin (`fwd=uri-miss;
///    detail=invalid-entry`), gets the origin's body, `fleet_cache_corrupt_entries` goes up,
///    nothing planted reaches the client;
/// 3. the origin's answer overwrites it in Redis, and the next GET is a hit with that answer.
fn planted_entry_is_refused_and_overwritten(tamper: impl FnOnce(&mut ResponseMeta)) {
    let st = Stack::start(store_only());
    // unique=1: the origin's body names its fetch, so a hit shows which fetch wrote the entry.
    let target = "/planted?unique=1&cc=max-age%3D60";
    let key = st.primary_key(target);

    // 1. Untampered: served as planted.
    st.redis_set(&key.redis_key, &crafted(&key, |_| {}));
    let planted = st.get(target, &[]);
    assert_eq!(planted.status, 200, "{planted:?}\n{}", st.diag());
    assert!(
        cache_status(&planted).contains("; hit"),
        "the untampered planted entry is not a hit (wrong key?): {planted:?}\n{}",
        st.diag()
    );
    assert_eq!(planted.body, CRAFTED_BODY);
    assert_eq!(planted.header("x-note"), Some("planted"));
    assert_eq!(st.origin().count("/planted"), 0);
    let corrupt_before = st.counter("fleet_cache_corrupt_entries");

    // 2. Tampered: refused as unsafe (the checksums are right).
    let bad = crafted(&key, tamper);
    assert_eq!(entry::decode(&bad), Err(EntryError::Unsafe));
    st.redis_set(&key.redis_key, &bad);
    assert_eq!(st.redis_get(&key.redis_key), bad);

    let refetch = st.get(target, &[]);
    assert_nothing_injected(&refetch, "refetch");
    assert_eq!(refetch.status, 200, "{refetch:?}\n{}", st.diag());
    assert!(refetch.complete);
    let cs = cache_status(&refetch);
    assert!(
        cs.contains("fwd=uri-miss") && cs.contains("detail=invalid-entry"),
        "{cs}\n{}",
        st.diag()
    );
    assert_eq!(
        st.origin().count("/planted"),
        1,
        "not fetched from the origin"
    );
    let mut expect = text_body(target);
    expect.push_str(&unique_suffix(1));
    assert_eq!(refetch.text(), expect);
    assert_eq!(refetch.header("x-note"), None, "{refetch:?}");
    let counted = poll(Duration::from_secs(5), || {
        st.counter("fleet_cache_corrupt_entries") > corrupt_before
    });
    assert!(
        counted,
        "fleet_cache_corrupt_entries stayed at {corrupt_before}\n{}",
        st.diag()
    );

    // 3. Overwritten by the origin's answer, then a plain hit.
    let repaired = poll(Duration::from_secs(5), || {
        matches!(
            entry::decode(&st.redis_get(&key.redis_key)),
            Ok(Decoded::Response { body, .. }) if body == refetch.body
        )
    });
    assert!(
        repaired,
        "the planted entry was not overwritten\n{}",
        st.diag()
    );
    assert_eq!(st.keys(), vec![key.redis_key.clone()]);
    let hit = st.get(target, &[]);
    assert_nothing_injected(&hit, "hit after repair");
    assert_eq!(hit.status, 200, "{hit:?}");
    assert!(
        cache_status(&hit).contains("; hit"),
        "{hit:?}\n{}",
        st.diag()
    );
    assert_eq!(hit.body, refetch.body);
    assert_eq!(
        st.origin().count("/planted"),
        1,
        "the hit after the repair reached the origin"
    );
}

fn add_header(meta: &mut ResponseMeta, name: &str, value: &str) {
    meta.headers.push((name.into(), value.into()));
}

// ---------------------------------------------------------------------------------------------
// Planted entries

/// (a) Response splitting: a value that would end the header line and start another.
#[test]
fn header_value_with_crlf_is_refused() {
    planted_entry_is_refused_and_overwritten(|m| add_header(m, "x-a", "1\r\nx-injected: 1"));
}

/// (b) `HTTP/1.1 0 Unknown`.
#[test]
fn status_zero_is_refused() {
    planted_entry_is_refused_and_overwritten(|m| m.status = 0);
}

/// (c) A header line with no name.
#[test]
fn empty_header_name_is_refused() {
    planted_entry_is_refused_and_overwritten(|m| add_header(m, "", "x-injected"));
}

/// (d) A NUL inside a value.
#[test]
fn nul_in_header_value_is_refused() {
    planted_entry_is_refused_and_overwritten(|m| add_header(m, "x-a", "1\0x-injected: 1"));
}

/// (e) A hop-by-hop header the cache never stores: a replayed `transfer-encoding: chunked`
/// would contradict the local reply's framing.
#[test]
fn transfer_encoding_header_is_refused() {
    planted_entry_is_refused_and_overwritten(|m| add_header(m, "transfer-encoding", "chunked"));
}
