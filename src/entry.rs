//! The stored value's binary format: encode, decode, validate.
//!
//! ```text
//! magic "FLCE" | format version u16 LE | body bytes | postcard(Meta) | meta len u32 LE | meta crc32 u32 LE
//! ```
//! The body sits before the metadata so a recording appends chunks straight into the buffer
//! that is finally sent to the store (no copy at publish time), and a hit hands the body to the
//! host as a slice of the store's answer (no copy at read time). Everything is validated on
//! read: magic, version, lengths, both checksums; anything that fails is a miss.

use serde::{Deserialize, Serialize};

pub const MAGIC: [u8; 4] = *b"FLCE";
/// 2: `no_cache` and `must_revalidate` in the metadata.
pub const FORMAT_VERSION: u16 = 2;
const HEADER_LEN: usize = 6;
/// Where the body starts in a stored value.
pub const BODY_START: usize = HEADER_LEN;
const TRAILER_LEN: usize = 8;

/// What a stored value holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Meta {
    /// A whole response; the body precedes the metadata.
    Response(ResponseMeta),
    /// Stored under a resource's primary key when its response varies: the request headers
    /// that select a variant (lower-cased, sorted). Each variant is an entry of its own.
    Variants(VariantsMeta),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseMeta {
    pub status: u16,
    /// Headers to replay, already stripped of hop-by-hop and per-fetch ones.
    pub headers: Vec<(String, String)>,
    /// Lengths of the chunks as the origin delivered them (one per host read).
    pub chunks: Vec<u32>,
    /// When the response was received (unix ms).
    pub stored_at_ms: u64,
    /// Freshness lifetime (RFC 9111 §4.2.1), seconds.
    pub lifetime_s: u64,
    /// Corrected initial age (RFC 9111 §4.2.3), seconds.
    pub initial_age_s: u64,
    /// Stored with `no-cache`: validated before every use.
    pub no_cache: bool,
    /// `must-revalidate`/`proxy-revalidate`/`s-maxage`: never served stale.
    pub must_revalidate: bool,
    /// The key material the entry was stored under: a value found under a key must carry the
    /// material the reader computed, or it is a collision or a foreign value.
    pub key_material: Vec<u8>,
    pub body_len: u64,
    pub body_crc32: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantsMeta {
    pub headers: Vec<String>,
    pub key_material: Vec<u8>,
}

/// Why a stored value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryError {
    /// Not one of ours (or garbage).
    BadMagic,
    /// Written by another format version.
    OtherVersion(u16),
    /// Shorter than its own lengths say.
    Truncated,
    /// Metadata does not match its checksum or does not decode.
    BadMeta,
    /// The body does not match its length or checksum.
    BadBody,
}

impl EntryError {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryError::BadMagic => "foreign-value",
            EntryError::OtherVersion(_) => "other-version",
            EntryError::Truncated => "truncated",
            EntryError::BadMeta => "bad-metadata",
            EntryError::BadBody => "bad-body",
        }
    }
}

/// A decoded value; the body borrows from the bytes read.
#[derive(Debug, PartialEq)]
pub enum Decoded<'a> {
    Response { meta: ResponseMeta, body: &'a [u8] },
    Variants(VariantsMeta),
}

/// A value being built: the header is written at once, body chunks are appended as they
/// arrive, the metadata last.
#[derive(Debug)]
pub struct EntryWriter {
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
    chunks: Vec<u32>,
}

impl Default for EntryWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl EntryWriter {
    pub fn new() -> EntryWriter {
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        EntryWriter {
            buf,
            crc: crc32fast::Hasher::new(),
            chunks: Vec::new(),
        }
    }

    pub fn push_chunk(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        self.buf.extend_from_slice(chunk);
        self.crc.update(chunk);
        self.chunks.push(chunk.len() as u32);
    }

    pub fn body_len(&self) -> usize {
        self.buf.len() - HEADER_LEN
    }

    /// Finishes a response entry; `meta`'s chunk list, body length and checksum are filled in
    /// from what was recorded.
    pub fn finish_response(mut self, mut meta: ResponseMeta) -> Vec<u8> {
        meta.body_len = self.body_len() as u64;
        meta.body_crc32 = self.crc.clone().finalize();
        meta.chunks = std::mem::take(&mut self.chunks);
        self.finish(&Meta::Response(meta))
    }

    fn finish(mut self, meta: &Meta) -> Vec<u8> {
        self.buf.extend_from_slice(&encode_tail(meta));
        self.buf
    }
}

/// The part of a value after the body: postcard metadata, its length and checksum. A 304
/// replaces only this, behind the stored header and body.
pub fn encode_tail(meta: &Meta) -> Vec<u8> {
    // Serializing into a Vec cannot fail for these types (no maps with non-string keys, no
    // unsupported types); an empty meta would only make the entry fail validation.
    let mut tail = postcard::to_allocvec(meta).unwrap_or_default();
    let len = tail.len() as u32;
    let crc = crc32fast::hash(&tail);
    tail.extend_from_slice(&len.to_le_bytes());
    tail.extend_from_slice(&crc.to_le_bytes());
    tail
}

/// Bytes before the metadata of a value whose body has `body_len` bytes.
pub fn prefix_len(body_len: usize) -> usize {
    HEADER_LEN + body_len
}

/// Encodes a variants record (no body).
pub fn encode_variants(meta: VariantsMeta) -> Vec<u8> {
    EntryWriter::new().finish(&Meta::Variants(meta))
}

/// Decodes and validates a stored value.
pub fn decode(bytes: &[u8]) -> Result<Decoded<'_>, EntryError> {
    if bytes.len() < 4 || bytes[..4] != MAGIC {
        return Err(EntryError::BadMagic);
    }
    if bytes.len() < HEADER_LEN {
        return Err(EntryError::Truncated);
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != FORMAT_VERSION {
        return Err(EntryError::OtherVersion(version));
    }
    if bytes.len() < HEADER_LEN + TRAILER_LEN {
        return Err(EntryError::Truncated);
    }
    let t = bytes.len() - TRAILER_LEN;
    let meta_len = u32::from_le_bytes(bytes[t..t + 4].try_into().unwrap_or_default()) as usize;
    let meta_crc = u32::from_le_bytes(bytes[t + 4..].try_into().unwrap_or_default());
    if meta_len > t - HEADER_LEN {
        return Err(EntryError::Truncated);
    }
    let meta_start = t - meta_len;
    let meta_bytes = &bytes[meta_start..t];
    if crc32fast::hash(meta_bytes) != meta_crc {
        // A truncated value ends in body bytes where the trailer should be: usually caught
        // here or by the length check above.
        return Err(EntryError::BadMeta);
    }
    let meta: Meta = postcard::from_bytes(meta_bytes).map_err(|_| EntryError::BadMeta)?;
    let body = &bytes[HEADER_LEN..meta_start];
    match meta {
        Meta::Response(meta) => {
            if meta.body_len != body.len() as u64
                || meta.chunks.iter().map(|c| *c as u64).sum::<u64>() != meta.body_len
                || crc32fast::hash(body) != meta.body_crc32
            {
                return Err(EntryError::BadBody);
            }
            Ok(Decoded::Response { meta, body })
        }
        Meta::Variants(v) => {
            if !body.is_empty() {
                return Err(EntryError::BadBody);
            }
            Ok(Decoded::Variants(v))
        }
    }
}

/// Response headers that are never stored or replayed: hop-by-hop ones (RFC 9110 §7.6.1) and
/// those that describe one fetch rather than the resource. See [`never_replayed`].
const NOT_REPLAYED: [&str; 14] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authentication-info",
    // Envoy computes content-length for the local reply from the body.
    "content-length",
    // The hit gets a fresh Date and a computed Age instead.
    "date",
    "age",
    // Envoy sets its own on the way out.
    "server",
    "x-envoy-upstream-service-time",
];

/// Whether a response header (lower-cased name) is never stored: the [`NOT_REPLAYED`] names,
/// pseudo-headers and Envoy's own `x-envoy-*` headers. (`policy::stored_headers` drops these
/// when storing; this is the one list.)
pub(crate) fn never_replayed(name: &str) -> bool {
    NOT_REPLAYED.contains(&name) || name.starts_with(':') || name.starts_with("x-envoy-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ResponseMeta {
        ResponseMeta {
            status: 200,
            headers: vec![("content-type".into(), "application/octet-stream".into())],
            chunks: vec![],
            stored_at_ms: 1_700_000_000_000,
            lifetime_s: 60,
            initial_age_s: 2,
            no_cache: false,
            must_revalidate: false,
            key_material: b"key".to_vec(),
            body_len: 0,
            body_crc32: 0,
        }
    }

    fn entry(chunks: &[&[u8]]) -> Vec<u8> {
        let mut w = EntryWriter::new();
        for c in chunks {
            w.push_chunk(c);
        }
        w.finish_response(meta())
    }

    #[test]
    fn round_trip_keeps_body_chunks_and_meta() {
        let bytes = entry(&[b"ab\0c", b"", b"\0\xffd"]);
        let Decoded::Response { meta: m, body } = decode(&bytes).unwrap() else {
            panic!("not a response")
        };
        assert_eq!(body, b"ab\0c\0\xffd");
        assert_eq!(m.chunks, vec![4, 3]);
        assert_eq!(m.body_len, 7);
        assert_eq!(m.status, 200);
        assert_eq!(m.key_material, b"key");
    }

    #[test]
    fn empty_body_round_trips() {
        let bytes = entry(&[]);
        assert!(matches!(
            decode(&bytes),
            Ok(Decoded::Response { body: b"", .. })
        ));
    }

    #[test]
    fn variants_round_trip() {
        let v = VariantsMeta {
            headers: vec!["accept".into()],
            key_material: b"k".to_vec(),
        };
        assert_eq!(
            decode(&encode_variants(v.clone())),
            Ok(Decoded::Variants(v))
        );
    }

    #[test]
    fn a_new_tail_behind_the_old_prefix_is_a_valid_entry() {
        let bytes = entry(&[b"body"]);
        let Decoded::Response { mut meta, .. } = decode(&bytes).unwrap() else {
            panic!()
        };
        meta.lifetime_s = 999;
        meta.headers.push(("etag".into(), "\"v2\"".into()));
        let mut refreshed = bytes[..prefix_len(4)].to_vec();
        refreshed.extend_from_slice(&encode_tail(&Meta::Response(meta.clone())));
        assert_eq!(
            decode(&refreshed),
            Ok(Decoded::Response {
                meta,
                body: &b"body"[..]
            })
        );
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = entry(&[b"hello world", b"second chunk"]);
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "truncated to {len} accepted"
            );
        }
    }

    #[test]
    fn every_single_byte_flip_is_refused() {
        let bytes = entry(&[b"hello world", b"second chunk"]);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x5a;
            assert!(decode(&b).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn foreign_and_other_version_values_are_named() {
        assert_eq!(decode(b"hello"), Err(EntryError::BadMagic));
        assert_eq!(decode(b""), Err(EntryError::BadMagic));
        let mut b = entry(&[b"x"]);
        b[4] = 9;
        assert_eq!(decode(&b), Err(EntryError::OtherVersion(9)));
    }
}
