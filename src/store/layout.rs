//! The Redis key layout, in one place: every key the filter reads or writes is built here, and
//! the scripts that derive keys from others (purge by tag finds a resource's variants set) use
//! [`VARIANTS_SUFFIX`] from here too.
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

#[cfg(test)]
mod tests {
    use super::*;

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
