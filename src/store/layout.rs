//! The Redis key layout, in one place: every key the filter reads or writes is built here, and
//! the scripts that derive keys from others (an entry's lock) use [`LOCK_SUFFIX`] from here
//! too.
//!
//! ```text
//! <namespace>:{<sha256 hex>}      a resource: its entry, or for a varying response its
//!                                 variants record
//! <resource key>:<sha256 hex>     one variant's entry
//! <resource key>:v                the set of a resource's variant keys (invalidation)
//! <entry key>:lock                while the entry is missing: who fetches it (a lookup's
//!                                 nonce), or a marker that says not to wait for a fetch
//!                                 (`h` the resource's last response was not storable, `x`
//!                                 its content type is exempt from collapsing)
//! <namespace>:tag:<sha256 hex>    the set of resource keys whose response carried a tag
//! ```
//! Keys hold only a namespace and digests: no request byte reaches a key (or a command).
//!
//! Every key of one resource (entry, variants, set, locks) starts with the resource's key, whose
//! digest is in braces: a Redis Cluster hashes only what is inside the first `{...}` (the hash
//! tag), so they all live in one slot and one script may touch them all. A tag set is a slot of
//! its own. The namespace can't hold a brace (config), so the first `{` is always the digest's.

use crate::key::push_hex;

/// What follows a resource's key in the key of its variants set.
pub const VARIANTS_SUFFIX: &str = ":v";

/// What follows an entry's key in the key of its lock (collapsed misses).
pub const LOCK_SUFFIX: &str = ":lock";

/// The key of the lock of the entry at `entry_key`.
pub fn lock_key(entry_key: &str) -> String {
    let mut key = String::with_capacity(entry_key.len() + LOCK_SUFFIX.len());
    key.push_str(entry_key);
    key.push_str(LOCK_SUFFIX);
    key
}

/// The key of a resource (its entry, or its variants record) whose key material hashes to
/// `digest`.
pub fn resource_key(namespace: &str, digest: &[u8]) -> String {
    let mut key = String::with_capacity(namespace.len() + 3 + 2 * digest.len());
    key.push_str(namespace);
    key.push_str(":{");
    push_hex(&mut key, digest);
    key.push('}');
    key
}

/// The key of a variant of the resource at `resource_key`, whose key material hashes to
/// `digest`: in the resource's slot.
pub fn variant_key(resource_key: &str, digest: &[u8]) -> String {
    let mut key = String::with_capacity(resource_key.len() + 1 + 2 * digest.len());
    key.push_str(resource_key);
    key.push(':');
    push_hex(&mut key, digest);
    key
}

/// The key of the set listing a resource's variant keys.
pub fn variants_set_key(resource_key: &str) -> String {
    let mut key = String::with_capacity(resource_key.len() + VARIANTS_SUFFIX.len());
    key.push_str(resource_key);
    key.push_str(VARIANTS_SUFFIX);
    key
}

/// The key of the set listing the resources that carry the tag hashing to `digest`.
pub fn tag_set_key(namespace: &str, digest: &[u8]) -> String {
    let mut key = String::with_capacity(namespace.len() + 5 + 2 * digest.len());
    key.push_str(namespace);
    key.push_str(":tag:");
    push_hex(&mut key, digest);
    key
}

/// The Redis Cluster slot of `key` (0..16384): CRC16-XMODEM of its hash tag (what is inside
/// the first `{...}`, if not empty) or else of the whole key, as the Cluster specification
/// defines it. Commands whose keys share a slot can go together on a Cluster.
pub fn slot(key: &str) -> u16 {
    let k = key.as_bytes();
    let tagged = k.iter().position(|&b| b == b'{').and_then(|open| {
        let close = k[open + 1..].iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &k[open + 1..open + 1 + close])
    });
    crc16(tagged.unwrap_or(k)) % 16_384
}

/// CRC16-XMODEM (polynomial 0x1021, initial 0), bit by bit: keys are short, and a table would
/// cost 512 bytes of .wasm.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_slots_as_the_specification_computes_them() {
        // The specification's CRC16 check value, and its hash tag rules.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(
            slot("foo{}{bar}"),
            slot("foo{}{bar}"),
            "an empty tag: the whole key"
        );
        assert_ne!(slot("foo{}{bar}"), slot("bar"));
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
        assert_eq!(slot("foo{bar}{zap}"), slot("bar"));
        assert_eq!(
            slot("foo{bar"),
            crc16(b"foo{bar") % 16_384,
            "no closing brace"
        );
        // A resource's keys all share its slot; a tag set has its own.
        let r = resource_key("ns", &[0xab; 32]);
        let v = variant_key(&r, &[0xcd; 32]);
        for k in [&v, &variants_set_key(&r), &lock_key(&r), &lock_key(&v)] {
            assert_eq!(slot(k), slot(&r), "{k}");
        }
        assert!(slot(&r) < 16_384);
        // What a real Redis 7 in cluster mode answered to CLUSTER KEYSLOT.
        for (key, want) in [
            ("foo", 12182),
            ("bar", 5061),
            ("hello", 866),
            ("somekey", 11058),
            ("x:tag:ff00", 789),
            ("{user1000}.following", 3443),
        ] {
            assert_eq!(slot(key), want, "{key}");
        }
        assert_eq!(slot(&resource_key("ns", &[0xab; 32])), 2328);
    }

    #[test]
    fn layout() {
        assert_eq!(resource_key("ns", &[0xab, 0x01]), "ns:{ab01}");
        assert_eq!(variant_key("ns:{ab01}", &[0xcd]), "ns:{ab01}:cd");
        assert_eq!(variants_set_key("ns:{ab01}"), "ns:{ab01}:v");
        assert_eq!(tag_set_key("ns", &[0xff]), "ns:tag:ff");
        assert_eq!(lock_key("ns:{ab01}"), "ns:{ab01}:lock");
        assert_eq!(lock_key("ns:{ab01}:cd"), "ns:{ab01}:cd:lock");
    }
}
