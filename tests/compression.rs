//! Compressed entries through real Envoy (its zlib foreign functions), Webdis and Redis: a
//! JSON body is stored packed, several times smaller, and served whole from the store by
//! another proxy; what would not gain (random bytes, an encoded response, a short body, the
//! feature off) is stored as it is; a damaged or forged packed entry is a miss, never a wrong
//! body or a crash. Run with `cargo test --test compression`.

mod support;

use fleet_cache::entry::{self, Decoded};
use serde_json::{Value, json};
use std::time::Duration;
use support::{Resp, Stack, StackOptions, poll};

/// Two proxies, no in-proxy tier: the second reads what the first stored.
fn stack(extra: Value) -> Stack {
    let mut config = json!({"memory": {"max_bytes": 0}});
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    Stack::start(StackOptions {
        envoys: 2,
        ..StackOptions::with_config(config)
    })
}

fn cache_status(r: &Resp) -> String {
    r.header("cache-status").unwrap_or_default().to_string()
}

/// Stores `path` through proxy 0; returns the response and the stored value.
fn store(s: &Stack, path: &str) -> (Resp, Vec<u8>) {
    let miss = s.get(path, &[]);
    assert_eq!(miss.status, 200);
    assert!(
        cache_status(&miss).contains("stored"),
        "{}",
        cache_status(&miss)
    );
    assert!(
        poll(Duration::from_secs(10), || s.keys().len() == 1),
        "nothing stored"
    );
    let value = s.redis_get(&s.keys()[0]);
    (miss, value)
}

fn decoded_meta(value: &[u8]) -> entry::ResponseMeta {
    match entry::decode(value) {
        Ok(Decoded::Response { meta, .. }) => meta,
        other => panic!("not a response entry: {other:?}"),
    }
}

fn hit_on_other_proxy(s: &Stack, path: &str, miss: &Resp) {
    let origin_path = path.split('?').next().unwrap();
    let hit = s.get_via(1, path, &[]);
    assert_eq!(hit.status, 200);
    assert!(
        cache_status(&hit).starts_with("fleet-cache; hit"),
        "{}",
        cache_status(&hit)
    );
    assert_eq!(hit.body, miss.body, "the body served is the body stored");
    assert_eq!(hit.header("content-type"), miss.header("content-type"));
    assert_eq!(s.origin().count(origin_path), 1);
}

#[test]
fn json_is_stored_compressed_and_served_whole_by_another_proxy() {
    for size in [64 * 1024, 1024 * 1024 + 3] {
        let s = stack(json!({}));
        let path = format!("/c/json?json={size}&cc=max-age%3D60");
        let (miss, value) = store(&s, &path);
        assert_eq!(miss.body.len(), size);
        let meta = decoded_meta(&value);
        assert!(meta.packed, "{size}: stored as it is");
        assert!(
            value.len() * 10 < size * 3,
            "{size}-byte JSON stored in {} bytes (over 0.3x)",
            value.len()
        );
        hit_on_other_proxy(&s, &path, &miss);
        assert_eq!(s.stat(1, "fleet_cache_corrupt_entries").unwrap_or(0), 0);
    }
}

#[test]
fn what_would_not_gain_is_stored_as_it_is() {
    let cases = [
        // Bytes that do not compress (the trial on the first block says so).
        ("/c/random?noise=200000&cc=max-age%3D60", json!({})),
        // Encoded already.
        (
            "/c/gz?json=100000&header=Content-Encoding%3Agzip&cc=max-age%3D60",
            json!({}),
        ),
        // A compressed format by its type.
        (
            "/c/png?json=100000&ctype=image%2Fpng&cc=max-age%3D60",
            json!({}),
        ),
        // Shorter than compression.min_bytes.
        ("/c/short?json=900&cc=max-age%3D60", json!({})),
        // Compression off.
        (
            "/c/off?json=100000&cc=max-age%3D60",
            json!({"compression": {"enabled": false}}),
        ),
    ];
    for (path, config) in cases {
        let s = stack(config);
        let (miss, value) = store(&s, path);
        assert!(!decoded_meta(&value).packed, "{path}: packed");
        assert!(value.len() > miss.body.len(), "{path}");
        hit_on_other_proxy(&s, path, &miss);
    }
}

fn zlib(data: &[u8]) -> Vec<u8> {
    miniz_oxide::deflate::compress_to_vec_zlib(data, 6)
}

/// The stored entry of `s` replaced by one with the same metadata and a packed body whose
/// (only) block is `block`, well framed: what someone with store access could write.
fn plant(s: &Stack, block: &[u8]) {
    let mut region = (block.len() as u32).to_le_bytes().to_vec();
    region.extend_from_slice(block);
    plant_region(s, &region, |_| {});
}

/// As [`plant`], with the metadata changed by `tamper` and `region` as the packed body.
fn plant_region(s: &Stack, region: &[u8], tamper: impl FnOnce(&mut entry::ResponseMeta)) {
    let key = s.keys()[0].clone();
    let mut meta = decoded_meta(&s.redis_get(&key));
    assert!(meta.packed);
    tamper(&mut meta);
    let mut value = entry::MAGIC.to_vec();
    value.extend_from_slice(&entry::FORMAT_VERSION.to_le_bytes());
    value.extend_from_slice(region);
    value.extend_from_slice(&entry::encode_tail(&entry::Meta::Response(meta)));
    assert!(
        decoded_meta(&value).packed,
        "well-formed as far as decode sees"
    );
    s.redis_set(&key, &value);
}

fn served_by_origin_after_refusing(s: &Stack, path: &str, miss: &Resp) {
    let r = s.get_via(1, path, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, miss.body, "the origin's body, not the planted one");
    assert!(
        cache_status(&r).contains("detail=invalid-entry"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(s.stat(1, "fleet_cache_corrupt_entries"), Some(1));
    // The proxy is fine: the origin's answer was stored again and hits.
    assert!(poll(Duration::from_secs(10), || {
        cache_status(&s.get_via(1, path, &[])).starts_with("fleet-cache; hit")
    }));
}

#[test]
fn a_damaged_packed_entry_is_a_miss() {
    let s = stack(json!({}));
    let path = "/c/damaged?json=100000&cc=max-age%3D60";
    let (miss, value) = store(&s, path);
    assert!(decoded_meta(&value).packed);
    // A byte flipped inside the first block: the framing and the metadata still hold.
    let mut bad = value.clone();
    bad[entry::BODY_START + 100] ^= 0x5a;
    s.redis_set(&s.keys()[0], &bad);
    served_by_origin_after_refusing(&s, path, &miss);
}

#[test]
fn a_forged_block_that_inflates_past_its_size_is_refused() {
    let s = stack(json!({}));
    // One block's worth of body (32 KiB), stored; then a block that inflates to 32 MiB of
    // zeros planted in its place (a "zip bomb" within the block bound).
    let path = "/c/bomb?json=32768&cc=max-age%3D60";
    let (miss, _) = store(&s, path);
    let bomb = zlib(&vec![0u8; 32 * 1024 * 1024]);
    assert!(bomb.len() <= fleet_cache::packing::MAX_PACKED_BLOCK);
    plant(&s, &bomb);
    served_by_origin_after_refusing(&s, path, &miss);
    // And a block of other JSON that inflates to the right size: the checksum refuses it.
    let s = stack(json!({}));
    let (miss, _) = store(&s, path);
    let mut other = miss.body.clone();
    other[10] ^= 1;
    plant(&s, &zlib(&other));
    served_by_origin_after_refusing(&s, path, &miss);
}

#[test]
fn a_forged_claim_of_a_huge_body_is_refused_before_anything_is_allocated() {
    let s = stack(json!({}));
    let path = "/c/claim?json=100000&cc=max-age%3D60";
    let (miss, _) = store(&s, path);
    // Almost 4 GiB claimed, framed as the 131,072 blocks (of one byte each) such a body would
    // have: well-formed as far as decode sees. The claim is refused (over max_body_bytes)
    // before it sizes anything: a copy sized from it would wrap the VM's 32-bit lengths.
    let claim: u64 = (1 << 32) - 3;
    let blocks = claim.div_ceil(fleet_cache::packing::BLOCK as u64);
    let mut region = Vec::new();
    for _ in 0..blocks {
        region.extend_from_slice(&1u32.to_le_bytes());
        region.push(0x78);
    }
    plant_region(&s, &region, |m| {
        m.body_len = claim;
        m.chunks = vec![claim as u32];
    });
    assert!(decoded_meta(&s.redis_get(&s.keys()[0])).packed);
    served_by_origin_after_refusing(&s, path, &miss);
}
