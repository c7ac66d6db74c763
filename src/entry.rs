//! The stored value's binary format: encode, decode, validate.
//!
//! ```text
//! magic "FLCE" | format version u16 LE | body bytes | postcard(Meta) | meta len u32 LE | meta check u32 LE
//! ```
//! The body sits before the metadata so a recording appends chunks straight into the buffer
//! that is finally sent to the store (no copy at publish time), and a hit hands the body to the
//! host as a slice of the store's answer (no copy at read time). Everything is validated on
//! read: magic, version, lengths, both checksums, and what a response would replay (status,
//! header names and values); anything that fails is a miss.
//!
//! A body that compresses well is stored packed (`ResponseMeta::packed`: zlib blocks,
//! `packing.rs`) in the body's place; the metadata describes the body as served (its length,
//! chunks, checksum), checked once it is unpacked ([`unpack_value`]). A hit on a packed entry
//! serves an unpacked copy, which the in-proxy tier keeps.
//!
//! A checksum only shows that a value is whole, not who wrote it: anyone with access to the
//! store can write a well-formed entry. So a stored value is input like any other, and an entry
//! is refused unless replaying it is safe: a status of 200-599, header names that are
//! lower-case tokens and never one the cache drops when storing, header values without CR, LF,
//! NUL or other control characters (no response splitting, no header smuggling).

use crate::packing::{self, Codec};
use crate::policy::Freshness;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, OnceCell};
use std::rc::Rc;
use xxhash_rust::xxh64::{Xxh64, xxh64};

pub const MAGIC: [u8; 4] = *b"FLCE";
/// 2: `no_cache` and `must_revalidate` in the metadata. 3: the key's SHA-256 digest instead of
/// its material (which held the request values `Vary` names: cookies, tokens). 4: XXH64
/// checksums instead of crc32 (5x faster under V8, and 16 KB less .wasm), and the stale
/// windows (RFC 5861) in the freshness. 5: packed (compressed) bodies.
pub const FORMAT_VERSION: u16 = 5;
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
    /// How long it may be used, and how (RFC 9111 §4.2, RFC 5861).
    pub freshness: Freshness,
    /// SHA-256 of the key material the entry was stored under: a value found under a key must
    /// carry the digest the reader computed, or it is a foreign value (or was moved). A digest,
    /// not the material: nothing request-derived is stored in the clear.
    pub key_digest: [u8; 32],
    pub body_len: u64,
    /// XXH64 of the body.
    pub body_hash: u64,
    /// The body is stored packed (zlib blocks, `packing.rs`): `body_len`, `chunks` and
    /// `body_hash` describe it unpacked.
    pub packed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantsMeta {
    pub headers: Vec<String>,
    /// As [`ResponseMeta::key_digest`], of the resource's primary key.
    pub key_digest: [u8; 32],
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
    /// Well-formed, but it holds what the cache never stores and must never replay: a status
    /// outside 200-599, a header name that is not a lower-case token or is one that is never
    /// replayed, a header value with control characters.
    Unsafe,
}

impl EntryError {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryError::BadMagic => "foreign-value",
            EntryError::OtherVersion(_) => "other-version",
            EntryError::Truncated => "truncated",
            EntryError::BadMeta => "bad-metadata",
            EntryError::BadBody => "bad-body",
            EntryError::Unsafe => "unsafe-entry",
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
pub struct EntryWriter {
    buf: Vec<u8>,
    hash: Xxh64,
    chunks: Vec<u32>,
    /// Packing the body as it comes, while it is worth it.
    pack: Option<Packing>,
}

/// A body being packed block by block beside the raw one (which a stale copy or a failed
/// trial still needs).
struct Packing {
    codec: Rc<dyn Codec>,
    /// The packed blocks so far.
    out: Vec<u8>,
    /// Raw body bytes packed so far.
    used: usize,
    /// Bodies shorter than this are stored as they are.
    min_bytes: usize,
}

impl Packing {
    /// Packs what is complete of the raw body (everything, with `last`); gives up (`false`)
    /// when the codec fails or the first block is not worth it.
    fn advance(&mut self, body: &[u8], last: bool) -> bool {
        let trial = self.used == 0;
        match packing::pack_blocks(&*self.codec, &body[self.used..], last, trial, &mut self.out) {
            Some(n) => {
                self.used += n;
                true
            }
            None => false,
        }
    }
}

impl std::fmt::Debug for EntryWriter {
    // The hasher has no Debug; its state says nothing useful anyway.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryWriter")
            .field("body_len", &self.body_len())
            .field("chunks", &self.chunks.len())
            .finish()
    }
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
            hash: Xxh64::new(0),
            chunks: Vec::new(),
            pack: None,
        }
    }

    /// Packs the body with `codec` if it is at least `min_bytes` long and its first block
    /// compresses well enough (`packing::WORTH_PERCENT`).
    pub fn packing(mut self, codec: Rc<dyn Codec>, min_bytes: usize) -> EntryWriter {
        self.pack = Some(Packing {
            codec,
            out: Vec::new(),
            used: 0,
            min_bytes,
        });
        self
    }

    pub fn push_chunk(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        self.buf.extend_from_slice(chunk);
        self.hash.update(chunk);
        self.chunks.push(chunk.len() as u32);
        if let Some(p) = &mut self.pack
            && self.buf.len() - HEADER_LEN - p.used >= packing::BLOCK
            && !p.advance(&self.buf[HEADER_LEN..], false)
        {
            self.pack = None;
        }
    }

    pub fn body_len(&self) -> usize {
        self.buf.len() - HEADER_LEN
    }

    /// Finishes a response entry; `meta`'s chunk list, body length and checksum are filled in
    /// from what was recorded.
    pub fn finish_response(mut self, mut meta: ResponseMeta) -> Vec<u8> {
        let body_len = self.body_len();
        meta.body_len = body_len as u64;
        meta.body_hash = self.hash.digest();
        meta.chunks = std::mem::take(&mut self.chunks);
        meta.packed = false;
        if let Some(mut p) = self.pack.take()
            && body_len >= p.min_bytes
            && p.advance(&self.buf[HEADER_LEN..], true)
            && p.out.len() < body_len
        {
            meta.packed = true;
            // A new buffer of the packed size (and room for the metadata): the raw one's
            // capacity would stay with the write, whose queue bounds bytes by length.
            let mut value = Vec::with_capacity(HEADER_LEN + p.out.len() + 256);
            value.extend_from_slice(&self.buf[..HEADER_LEN]);
            value.extend_from_slice(&p.out);
            self.buf = value;
        }
        self.finish(&Meta::Response(meta))
    }

    /// Bytes of the body packed so far (held beside the raw body: a recording's budget
    /// counts them too).
    pub fn packed_len(&self) -> usize {
        self.pack.as_ref().map_or(0, |p| p.out.len())
    }

    /// Stops packing (the recording's budget has no room for the packed copy): the body is
    /// stored as it is.
    pub fn stop_packing(&mut self) {
        self.pack = None;
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
    let check = meta_check(&tail);
    tail.extend_from_slice(&len.to_le_bytes());
    tail.extend_from_slice(&check.to_le_bytes());
    tail
}

/// The trailer's check of the metadata bytes: XXH64's low 32 bits (the metadata is small; 32
/// bits keep the trailer as it was).
fn meta_check(meta: &[u8]) -> u32 {
    xxh64(meta, 0) as u32
}

/// Encodes a variants record (no body).
pub fn encode_variants(meta: VariantsMeta) -> Vec<u8> {
    EntryWriter::new().finish(&Meta::Variants(meta))
}

/// Decodes and validates a stored value.
pub fn decode(bytes: &[u8]) -> Result<Decoded<'_>, EntryError> {
    decode_shared(bytes, &SharedDecoding::default())
}

/// What the requests sharing one stored value (the same bytes of one store answer) learn of
/// it once, not once each: a herd of hits on one large entry would otherwise hash its body,
/// or inflate a packed one, once per request.
#[derive(Debug, Default)]
pub struct SharedDecoding {
    /// The body's checksum matched.
    body_whole: Cell<bool>,
    /// A packed value, unpacked ([`unpack_value`]).
    unpacked: OnceCell<Rc<[u8]>>,
}

/// [`decode`] for bytes several requests share: the body's checksum is computed by the first
/// (everything else is still checked by each).
pub fn decode_shared<'b>(
    bytes: &'b [u8],
    shared: &SharedDecoding,
) -> Result<Decoded<'b>, EntryError> {
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
    let check = u32::from_le_bytes(bytes[t + 4..].try_into().unwrap_or_default());
    if meta_len > t - HEADER_LEN {
        return Err(EntryError::Truncated);
    }
    let meta_start = t - meta_len;
    let meta_bytes = &bytes[meta_start..t];
    if meta_check(meta_bytes) != check {
        // A truncated value ends in body bytes where the trailer should be: usually caught
        // here or by the length check above.
        return Err(EntryError::BadMeta);
    }
    let meta: Meta = postcard::from_bytes(meta_bytes).map_err(|_| EntryError::BadMeta)?;
    let body = &bytes[HEADER_LEN..meta_start];
    match meta {
        Meta::Response(meta) => {
            let whole = if meta.packed {
                // Checked whole once unpacked (`unpack_value`); the framing now.
                packing::framing_ok(body, meta.body_len)
            } else {
                let whole = meta.body_len == body.len() as u64
                    && (shared.body_whole.get() || xxh64(body, 0) == meta.body_hash);
                shared.body_whole.set(whole);
                whole
            };
            if !whole || meta.chunks.iter().map(|c| *c as u64).sum::<u64>() != meta.body_len {
                return Err(EntryError::BadBody);
            }
            if !safe_to_replay(&meta) {
                return Err(EntryError::Unsafe);
            }
            Ok(Decoded::Response { meta, body })
        }
        Meta::Variants(v) => {
            if !body.is_empty() {
                return Err(EntryError::BadBody);
            }
            if !v.headers.iter().all(|n| valid_name(n)) {
                return Err(EntryError::Unsafe);
            }
            Ok(Decoded::Variants(v))
        }
    }
}

/// [`unpack_value`] for bytes several requests share: unpacked by the first, shared after.
pub fn unpack_shared(
    bytes: &[u8],
    meta: &ResponseMeta,
    codec: &dyn Codec,
    max_body: usize,
    shared: &SharedDecoding,
) -> Result<Rc<[u8]>, EntryError> {
    if let Some(plain) = shared.unpacked.get() {
        return Ok(plain.clone());
    }
    let plain = unpack_value(bytes, meta, codec, max_body)?;
    Ok(shared.unpacked.get_or_init(|| plain).clone())
}

/// A packed entry (`bytes`, which [`decode`] accepted with `meta`) as an unpacked one: the
/// header, the body inflated and checked against the metadata, the same metadata tail (so the
/// metadata still says `packed`: whoever holds the copy has `meta` already).
///
/// `max_body`: the largest body this cache records. A packed entry says how long its body
/// is before anything is inflated, and the copy is allocated from that: a longer claim is
/// refused first (a forged one could ask for gigabytes).
pub fn unpack_value(
    bytes: &[u8],
    meta: &ResponseMeta,
    codec: &dyn Codec,
    max_body: usize,
) -> Result<Rc<[u8]>, EntryError> {
    let body_len = usize::try_from(meta.body_len)
        .ok()
        .filter(|n| *n <= max_body)
        .ok_or(EntryError::BadBody)?;
    let tail = tail_len(bytes).ok_or(EntryError::Truncated)?;
    let region = &bytes[HEADER_LEN..bytes.len() - tail];
    let body_end = HEADER_LEN + body_len;
    // Filled in place: the blocks land where the copy's body is, no second copy of it.
    let mut out: Rc<[u8]> = std::iter::repeat_n(0, body_end + tail).collect();
    let buf = Rc::get_mut(&mut out).ok_or(EntryError::BadBody)?;
    buf[..HEADER_LEN].copy_from_slice(&bytes[..HEADER_LEN]);
    packing::unpack(codec, region, &mut buf[HEADER_LEN..body_end]).ok_or(EntryError::BadBody)?;
    if xxh64(&buf[HEADER_LEN..body_end], 0) != meta.body_hash {
        return Err(EntryError::BadBody);
    }
    buf[body_end..].copy_from_slice(&bytes[bytes.len() - tail..]);
    Ok(out)
}

/// The length of a value's metadata tail (metadata, its length and check), read from its
/// trailer; `None` if the value is shorter than that.
pub fn tail_len(bytes: &[u8]) -> Option<usize> {
    let t = bytes.len().checked_sub(TRAILER_LEN)?;
    let meta_len = u32::from_le_bytes(bytes[t..t + 4].try_into().ok()?) as usize;
    (meta_len <= t.checked_sub(HEADER_LEN)?).then_some(meta_len + TRAILER_LEN)
}

/// Response headers that are never stored or replayed: hop-by-hop ones (RFC 9110 §7.6.1) and
/// those that describe one fetch rather than the resource. See [`never_replayed`].
const NOT_REPLAYED: [&str; 13] = [
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
    // A hit gets a computed Age (the stored Date is replayed: RFC 9111 §4, a cache sends the
    // response's own Date, with Age saying how old it is).
    "age",
    // Envoy sets its own on the way out.
    "server",
    "x-envoy-upstream-service-time",
];

/// Whether a response header (lower-cased name) is never stored, so an entry that holds it is
/// refused: the [`NOT_REPLAYED`] names, pseudo-headers and Envoy's own `x-envoy-*` headers.
/// (`policy::stored_headers` drops these when storing; this is the one list.)
pub(crate) fn never_replayed(name: &str) -> bool {
    NOT_REPLAYED.iter().any(|n| same(n, name))
        || name.starts_with(':')
        || name.starts_with("x-envoy-")
}

/// String equality, not inlined: searches of short constant lists (such as
/// [`NOT_REPLAYED`]) are unrolled, and a comparison inlined in each step costs most of a KB of
/// .wasm per list.
#[inline(never)]
pub(crate) fn same(a: &str, b: &str) -> bool {
    a == b
}

/// `NAME_BYTE[b]`: `b` may appear in a stored header name: an RFC 9110 §5.6.2 `tchar`, letters
/// lower-case only (names are stored lower-cased). `:` is not a `tchar`, so no pseudo-header
/// passes either.
const NAME_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    t
};

/// A non-empty lower-case token (RFC 9110 §5.1, §5.6.2).
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| NAME_BYTE[b as usize])
}

/// Every byte is a field-vchar (VCHAR or obs-text), SP or HTAB (RFC 9110 §5.5): no CR, LF, NUL,
/// DEL or other control character.
fn valid_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// What a hit replays is what an origin could have sent through Envoy and the cache would have
/// stored: one pass over each name and value, no allocation.
fn safe_to_replay(meta: &ResponseMeta) -> bool {
    (200..=599).contains(&meta.status)
        && meta
            .headers
            .iter()
            .all(|(n, v)| valid_name(n) && !never_replayed(n) && valid_value(v))
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
            freshness: crate::policy::Freshness {
                lifetime_s: 60,
                initial_age_s: 2,
                ..Default::default()
            },
            key_digest: [7; 32],
            body_len: 0,
            body_hash: 0,
            packed: false,
        }
    }

    fn json_body(n: usize) -> Vec<u8> {
        (0..)
            .flat_map(|i: u32| format!("{{\"id\":{i},\"v\":\"x{}\"}},", i % 17).into_bytes())
            .take(n)
            .collect()
    }

    fn packed_entry(body: &[u8], chunk: usize) -> Vec<u8> {
        let mut w = EntryWriter::new().packing(Rc::new(packing::tests::TestZlib), 1024);
        for c in body.chunks(chunk) {
            w.push_chunk(c);
        }
        w.finish_response(meta())
    }

    #[test]
    fn requests_sharing_a_value_hash_its_body_once() {
        let mut w = EntryWriter::new();
        w.push_chunk(b"hello");
        let good = w.finish_response(meta());
        let shared = SharedDecoding::default();
        assert!(decode_shared(&good, &shared).is_ok());
        assert!(
            shared.body_whole.get(),
            "the first to decode it marks the body whole"
        );
        // The mark is trusted for these bytes (whoever shares them): not hashed again.
        let mut same_len = good.clone();
        same_len[BODY_START] = b'j';
        assert!(decode_shared(&same_len, &shared).is_ok());
        // A body that does not match is never marked: each request finds it broken.
        let fresh = SharedDecoding::default();
        assert_eq!(
            decode_shared(&same_len, &fresh).err(),
            Some(EntryError::BadBody)
        );
        assert!(!fresh.body_whole.get());
    }

    #[test]
    fn requests_sharing_a_packed_value_unpack_it_once() {
        #[derive(Debug, Default)]
        struct Counting(Cell<usize>);
        impl Codec for Counting {
            fn compress(&self, data: &[u8]) -> Option<Vec<u8>> {
                packing::tests::TestZlib.compress(data)
            }
            fn uncompress(&self, data: &[u8], expected: usize) -> Option<Vec<u8>> {
                self.0.set(self.0.get() + 1);
                packing::tests::TestZlib.uncompress(data, expected)
            }
        }
        let body = json_body(100_000);
        let bytes = packed_entry(&body, 7_000);
        let Ok(Decoded::Response { meta: m, .. }) = decode(&bytes) else {
            panic!()
        };
        let (codec, shared) = (Counting::default(), SharedDecoding::default());
        let first = unpack_shared(&bytes, &m, &codec, usize::MAX, &shared).unwrap();
        let inflated = codec.0.get();
        assert!(inflated >= 1);
        let second = unpack_shared(&bytes, &m, &codec, usize::MAX, &shared).unwrap();
        assert!(Rc::ptr_eq(&first, &second), "one unpacked copy, shared");
        assert_eq!(codec.0.get(), inflated, "inflated once");
        assert_eq!(&second[BODY_START..BODY_START + body.len()], &body[..]);
        // A value that fails to unpack leaves nothing to share: the next one tries again.
        let shared = SharedDecoding::default();
        assert!(unpack_shared(&bytes, &m, &packing::NoCodec, usize::MAX, &shared).is_err());
        assert!(unpack_shared(&bytes, &m, &codec, usize::MAX, &shared).is_ok());
    }

    #[test]
    fn a_body_that_compresses_is_stored_packed_and_unpacks_to_itself() {
        let body = json_body(200_000);
        let bytes = packed_entry(&body, 7_000);
        assert!(bytes.len() < body.len() / 4, "{} bytes", bytes.len());
        let Ok(Decoded::Response { meta: m, .. }) = decode(&bytes) else {
            panic!("{:?}", decode(&bytes))
        };
        assert!(m.packed);
        assert_eq!(m.body_len, body.len() as u64);
        assert_eq!(
            m.chunks.iter().map(|c| *c as usize).sum::<usize>(),
            body.len()
        );
        let plain = unpack_value(&bytes, &m, &packing::tests::TestZlib, usize::MAX).unwrap();
        assert_eq!(&plain[BODY_START..BODY_START + body.len()], &body[..]);
        // The same tail: a refresh keeps what precedes it in the stored value.
        let tail = tail_len(&bytes).unwrap();
        assert_eq!(tail, tail_len(&plain).unwrap());
        assert_eq!(&plain[plain.len() - tail..], &bytes[bytes.len() - tail..]);
        let mut refreshed = bytes[..bytes.len() - tail].to_vec();
        refreshed.extend_from_slice(&encode_tail(&Meta::Response(ResponseMeta {
            status: 203,
            ..m.clone()
        })));
        let Ok(Decoded::Response { meta: r, .. }) = decode(&refreshed) else {
            panic!("the refreshed packed entry no longer decodes")
        };
        assert_eq!(r.status, 203);
        assert!(unpack_value(&refreshed, &r, &packing::tests::TestZlib, usize::MAX).is_ok());
        // Without a codec (a native build), it is refused, never served raw.
        assert_eq!(
            unpack_value(&bytes, &m, &packing::NoCodec, usize::MAX),
            Err(EntryError::BadBody)
        );
    }

    #[test]
    fn a_packed_entry_claiming_more_than_the_cache_records_is_refused_before_any_allocation() {
        let body = json_body(100_000);
        let bytes = packed_entry(&body, 10_000);
        let Ok(Decoded::Response { meta: m, .. }) = decode(&bytes) else {
            panic!()
        };
        assert_eq!(
            unpack_value(&bytes, &m, &packing::tests::TestZlib, body.len() - 1),
            Err(EntryError::BadBody)
        );
        // A forged claim of 2^40 bytes over a region of as many 5-byte "blocks" as framing
        // wants would allocate a terabyte; it is refused by the claim alone.
        let huge = ResponseMeta {
            body_len: 1 << 40,
            ..m
        };
        assert_eq!(
            unpack_value(&bytes, &huge, &packing::tests::TestZlib, 16 << 20),
            Err(EntryError::BadBody)
        );
    }

    #[test]
    fn short_or_incompressible_bodies_are_stored_as_they_are() {
        let mut x = 1u32;
        let noise: Vec<u8> = (0..100_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (x >> 16) as u8
            })
            .collect();
        for body in [json_body(1000), noise] {
            let bytes = packed_entry(&body, 4096);
            let Ok(Decoded::Response { meta: m, body: b }) = decode(&bytes) else {
                panic!()
            };
            assert!(!m.packed);
            assert_eq!(b, &body[..]);
        }
    }

    #[test]
    fn a_damaged_packed_body_is_refused() {
        let body = json_body(100_000);
        let bytes = packed_entry(&body, 10_000);
        let Ok(Decoded::Response { meta: m, .. }) = decode(&bytes) else {
            panic!()
        };
        // A flipped byte inside a block: the framing holds, the block does not.
        let mut bad = bytes.clone();
        bad[BODY_START + 40] ^= 0x55;
        assert!(matches!(decode(&bad), Ok(Decoded::Response { .. })));
        assert_eq!(
            unpack_value(&bad, &m, &packing::tests::TestZlib, usize::MAX),
            Err(EntryError::BadBody)
        );
        // A body of other bytes that inflate fine: the checksum catches it.
        let other = packed_entry(&json_body(100_001)[1..], 10_000);
        let Ok(Decoded::Response { meta: o, .. }) = decode(&other) else {
            panic!()
        };
        let mut swapped = other[..other.len() - tail_len(&other).unwrap()].to_vec();
        swapped.extend_from_slice(&encode_tail(&Meta::Response(ResponseMeta {
            body_hash: m.body_hash,
            ..o
        })));
        let Ok(Decoded::Response { meta: s, .. }) = decode(&swapped) else {
            panic!()
        };
        assert_eq!(
            unpack_value(&swapped, &s, &packing::tests::TestZlib, usize::MAX),
            Err(EntryError::BadBody)
        );
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
        assert_eq!(m.key_digest, [7; 32]);
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
            key_digest: [1; 32],
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
        meta.freshness.lifetime_s = 999;
        meta.headers.push(("etag".into(), "\"v2\"".into()));
        let mut refreshed = bytes[..bytes.len() - tail_len(&bytes).unwrap()].to_vec();
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

    /// A response entry with this status and these headers (and a small body), as a writer
    /// with store access could craft it: well-formed, checksums right.
    fn crafted(status: u16, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut w = EntryWriter::new();
        w.push_chunk(b"body");
        w.finish_response(ResponseMeta {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            ..meta()
        })
    }

    fn refused(status: u16, headers: &[(&str, &str)]) -> bool {
        decode(&crafted(status, headers)) == Err(EntryError::Unsafe)
    }

    /// Headers a typical origin response leaves after `stored_headers`.
    const TYPICAL: [(&str, &str); 10] = [
        ("content-type", "text/html; charset=utf-8"),
        (
            "cache-control",
            "public, max-age=60, stale-while-revalidate=30",
        ),
        ("etag", "W/\"5e1-abc\""),
        ("last-modified", "Tue, 14 Nov 2023 22:13:20 GMT"),
        ("vary", "Accept-Encoding"),
        ("content-encoding", "gzip"),
        ("link", "</style.css>; rel=preload; as=style"),
        ("x-request-id", "a1b2\tc3"),
        (
            "content-disposition",
            "attachment; filename=\"na\u{ef}ve.txt\"",
        ),
        ("x-empty", ""),
    ];

    #[test]
    fn a_typical_response_entry_decodes() {
        let bytes = crafted(200, &TYPICAL);
        let Ok(Decoded::Response { meta, body }) = decode(&bytes) else {
            panic!("{:?}", decode(&bytes))
        };
        assert_eq!(body, b"body");
        assert_eq!(meta.headers.len(), TYPICAL.len());
        // Names made only of the token's punctuation, and every status from 200 to 599.
        assert!(!refused(200, &[("!#$%&'*+-.^_`|~09az", "v")]));
        for status in 200..=599 {
            assert!(!refused(status, &TYPICAL), "{status}");
        }
    }

    #[test]
    fn a_status_outside_200_to_599_is_refused() {
        for status in [0, 1, 99, 100, 101, 199, 600, 999, 1000, u16::MAX] {
            assert!(refused(status, &TYPICAL), "{status} accepted");
        }
    }

    #[test]
    fn an_empty_header_name_is_refused() {
        assert!(refused(200, &[("", "x")]));
        assert!(refused(200, &[("content-type", "text/plain"), ("", "")]));
    }

    #[test]
    fn a_header_name_that_is_not_a_token_is_refused() {
        for name in [
            "x y",
            "x\r\nx-injected: 1\r\nx-a",
            "x-a:",
            "x\0",
            "x\t",
            "\"x\"",
            "x(y)",
            "x/y",
            "x@y",
            "x,y",
            "x;y",
            "x=y",
            "x{y}",
            "x[y]",
            "x?",
            "x\\y",
            "x<y>",
            "na\u{ef}ve",
            "x\u{7f}",
        ] {
            assert!(refused(200, &[(name, "v")]), "{name:?} accepted");
        }
        // Every byte outside a lower-case token, alone in a name.
        for b in 0u8..=0x7f {
            let name = format!("x{}", b as char);
            let token =
                b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(refused(200, &[(name.as_str(), "v")]), !token, "{name:?}");
        }
    }

    #[test]
    fn an_upper_case_header_name_is_refused() {
        // The cache stores names lower-cased (`policy::stored_headers`).
        for name in ["Content-Type", "X-Custom", "ETAG"] {
            assert!(refused(200, &[(name, "v")]), "{name:?} accepted");
        }
    }

    #[test]
    fn a_pseudo_header_is_refused() {
        // Refused twice over: `:` is not a token character, and pseudo-headers are never
        // stored (`never_replayed`).
        for name in [":status", ":authority", ":"] {
            assert!(refused(200, &[(name, "200")]), "{name:?} accepted");
        }
    }

    #[test]
    fn a_header_value_with_cr_lf_or_nul_is_refused() {
        for value in [
            "a\r\nx-injected: 1",
            "a\nx-injected: 1",
            "a\rb",
            "\r\n",
            "a\0b",
            "\0",
        ] {
            assert!(refused(200, &[("x-a", value)]), "{value:?} accepted");
        }
    }

    #[test]
    fn a_header_value_with_other_control_characters_is_refused() {
        // RFC 9110 §5.5: field-vchar (VCHAR, obs-text), SP and HTAB only.
        for b in (0u8..0x20).chain([0x7f]) {
            let value = format!("a{}b", b as char);
            assert_eq!(
                refused(200, &[("x-a", value.as_str())]),
                b != b'\t',
                "byte {b:#04x}"
            );
        }
        let printable: String = (0x20u8..0x7f).map(char::from).collect();
        assert!(!refused(200, &[("x-a", &printable)]));
        assert!(!refused(
            200,
            &[("x-a", "\u{e9}\u{20ac}\u{1f600} obs-text")]
        ));
    }

    #[test]
    fn a_header_that_is_never_replayed_is_refused() {
        for name in NOT_REPLAYED.iter().copied().chain([
            "x-envoy-upstream-service-time",
            "x-envoy-decorator-operation",
            "x-envoy-",
        ]) {
            let mut headers = TYPICAL.to_vec();
            headers.push((name, "1"));
            assert!(refused(200, &headers), "{name:?} accepted");
        }
        // Only the exact names and the prefix.
        assert!(!refused(
            200,
            &[("x-envoy", "1"), ("dates", "1"), ("x-server", "1")]
        ));
    }

    #[test]
    fn a_variants_record_needs_lower_case_token_names() {
        let record = |names: &[&str]| {
            let v = VariantsMeta {
                headers: names.iter().map(|n| n.to_string()).collect(),
                key_digest: [1; 32],
            };
            decode(&encode_variants(v.clone())).map(|d| d == Decoded::Variants(v))
        };
        assert_eq!(record(&["accept", "accept-encoding", "x-tenant"]), Ok(true));
        assert_eq!(record(&["!#$%&'*+-.^_`|~09az"]), Ok(true));
        for names in [
            &[""][..],
            &["accept", ""],
            &["accept encoding"],
            &["x\r\nx-injected"],
            &[":authority"],
            &["Accept"],
        ] {
            assert_eq!(record(names), Err(EntryError::Unsafe), "{names:?}");
        }
    }

    /// Whatever the cache itself writes passes the read-side checks: headers as
    /// `stored_headers` keeps them (mixed-case names, hop-by-hop and per-fetch headers,
    /// `Connection`-listed names, the targeted field), a 304's merge, a Vary record.
    #[test]
    fn what_the_cache_stores_is_never_refused() {
        use crate::http::ResponseHead;
        use crate::key::Vary;
        use crate::policy::stored_headers;
        use crate::revalidate::merge_not_modified;

        let origin = ResponseHead::for_test(
            200,
            &[
                ("Content-Type", "text/html; charset=utf-8"),
                ("Cache-Control", "max-age=60"),
                ("ETag", "\"v1\""),
                ("Vary", "Accept-Encoding, X-Tenant"),
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Transfer-Encoding", "chunked"),
                ("TE", "trailers"),
                ("Trailer", "x-checksum"),
                ("Upgrade", "h2c"),
                ("Proxy-Connection", "close"),
                ("Proxy-Authenticate", "Basic"),
                ("Proxy-Authentication-Info", "x"),
                ("Content-Length", "4"),
                ("Date", "Tue, 14 Nov 2023 22:13:20 GMT"),
                ("Age", "3"),
                ("Server", "origin"),
                ("X-Envoy-Upstream-Service-Time", "3"),
                ("x-envoy-decorator-operation", "op"),
                (":status", "200"),
                ("Set-Cookie", "a=b"),
                ("CDN-Cache-Control", "max-age=5"),
                ("X-Custom-Thing", "\u{e9}t\u{e9}\twith tab"),
            ],
        );
        for strip in [false, true] {
            for targeted in [None, Some("cdn-cache-control")] {
                let headers = stored_headers(&origin, strip, targeted);
                let mut w = EntryWriter::new();
                w.push_chunk(b"body");
                let bytes = w.finish_response(ResponseMeta {
                    headers: headers.clone(),
                    ..meta()
                });
                let Ok(Decoded::Response { meta: m, .. }) = decode(&bytes) else {
                    panic!("{headers:?}: {:?}", decode(&bytes))
                };
                assert_eq!(m.headers, headers);

                // A 304 that updates them: only the tail is rewritten.
                let nm = ResponseHead::for_test(
                    304,
                    &[
                        ("Cache-Control", "max-age=99"),
                        ("Date", "Tue, 14 Nov 2023 22:13:20 GMT"),
                        ("Connection", "close"),
                        ("X-Envoy-Upstream-Service-Time", "1"),
                        ("X-New", "n"),
                    ],
                );
                let merged = merge_not_modified(&headers, &nm, targeted);
                let mut refreshed = bytes[..bytes.len() - tail_len(&bytes).unwrap()].to_vec();
                refreshed.extend_from_slice(&encode_tail(&Meta::Response(ResponseMeta {
                    headers: merged,
                    ..m
                })));
                assert!(
                    matches!(decode(&refreshed), Ok(Decoded::Response { .. })),
                    "{:?}",
                    decode(&refreshed)
                );
            }
        }
        let Vary::Headers(names) = Vary::parse(origin.values("vary")) else {
            panic!("no vary")
        };
        assert!(matches!(
            decode(&encode_variants(VariantsMeta {
                headers: names,
                key_digest: [1; 32],
            })),
            Ok(Decoded::Variants(_))
        ));
    }

    #[test]
    fn foreign_and_other_version_values_are_named() {
        assert_eq!(decode(b"hello"), Err(EntryError::BadMagic));
        assert_eq!(EntryError::Unsafe.as_str(), "unsafe-entry");
        assert_eq!(decode(b""), Err(EntryError::BadMagic));
        let mut b = entry(&[b"x"]);
        b[4] = 9;
        assert_eq!(decode(&b), Err(EntryError::OtherVersion(9)));
    }
}
