//! Compressed bodies: which responses are worth compressing, and the framing of a compressed
//! body in a stored value.
//!
//! A body is compressed in blocks of [`BLOCK`] bytes (the last one shorter), each a zlib
//! stream (RFC 1950) of its own, framed as `compressed length u32 LE | zlib bytes`. Blocks, not
//! one stream, for two reasons:
//! - a recording compresses each block as it fills, while the response streams past, so the
//!   end of a long response is not held up compressing all of it at once;
//! - the host's `uncompress` has no output bound (Envoy's grows its buffer until the stream
//!   ends): one block in is at most [`MAX_PACKED_BLOCK`] bytes, so even a forged value
//!   ("garbage in Redis") inflates to at most ~1032 times that (deflate's limit, ~33 MB, in
//!   Envoy and then in the VM) before the length check throws it away, instead of exhausting
//!   the proxy's memory.
//!
//! The codec itself is the host's ([`Codec`]): Envoy registers zlib `compress`/`uncompress` as
//! Wasm foreign functions, native code that adds nothing to the .wasm.

/// Decoded bytes per block: deflate's window, so blocks lose little to their restarts.
pub const BLOCK: usize = 32 * 1024;
/// The largest compressed block accepted: zlib's `compressBound(BLOCK)` (what a stored block
/// can take when it does not compress at all).
pub const MAX_PACKED_BLOCK: usize = BLOCK + (BLOCK >> 12) + (BLOCK >> 14) + (BLOCK >> 25) + 13;
/// The first block must shrink to this share (in 1/100) of its size, or the body is stored as
/// it is: the trial, on bytes a recording compresses anyway.
pub const WORTH_PERCENT: usize = 90;

/// zlib one-shot compression (RFC 1950): the host's, or, natively, a stand-in.
pub trait Codec: std::fmt::Debug {
    /// `data` compressed; `None` if the host could not.
    fn compress(&self, data: &[u8]) -> Option<Vec<u8>>;
    /// `data` inflated, which should make `expected` bytes; `None` for a broken stream. The
    /// length is the caller's to check.
    fn uncompress(&self, data: &[u8], expected: usize) -> Option<Vec<u8>>;
}

/// A codec that never compresses and reads no compressed body: native builds without a host
/// (examples, benches), where such a value is a miss.
#[derive(Debug)]
pub struct NoCodec;

impl Codec for NoCodec {
    fn compress(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn uncompress(&self, _: &[u8], _: usize) -> Option<Vec<u8>> {
        None
    }
}

/// Whether a response is worth trying to compress, from its headers: not when it is encoded
/// already (`Content-Encoding` other than identity: gzip, br, zstd...), nor when its media
/// type is a compressed format (images but SVG, audio, video, zip, gzip, zstd, PDF, WOFF2).
/// Everything else goes to the trial (the first block).
pub fn worth_trying(content_type: Option<&str>, content_encoding: Option<&str>) -> bool {
    if content_encoding.is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity")) {
        return false;
    }
    let media = content_type
        .and_then(|ct| ct.split(';').next())
        .unwrap_or("")
        .trim()
        .as_bytes();
    // The compressed formats; anything else goes to the trial, which catches what this misses
    // (other archives, encrypted bytes) after one block.
    media.eq_ignore_ascii_case(b"image/svg+xml") || !COMPRESSED.iter().any(|t| is_media(media, t))
}

/// Media types of compressed formats: a type ending in `/` names its whole family.
const COMPRESSED: [&str; 9] = [
    "image/",
    "audio/",
    "video/",
    "application/zip",
    "application/gzip",
    "application/x-gzip",
    "application/zstd",
    "application/pdf",
    "font/woff2",
];

/// `media` is `t` (or of the family `t` names), in any case. Not inlined: the search over
/// [`COMPRESSED`] is unrolled, and a comparison inlined in each step cost 1.5 KB of .wasm.
#[inline(never)]
fn is_media(m: &[u8], t: &str) -> bool {
    let t = t.as_bytes();
    if t.ends_with(b"/") {
        m.get(..t.len()).is_some_and(|h| h.eq_ignore_ascii_case(t))
    } else {
        m.eq_ignore_ascii_case(t)
    }
}

/// Appends the body blocks of `raw` that are complete (and, with `last`, the rest) to `out`,
/// compressed; returns how many bytes of `raw` it consumed, or `None` if the codec failed or
/// (with `trial`, for the first block) the block did not shrink enough to be worth it.
pub fn pack_blocks(
    codec: &dyn Codec,
    raw: &[u8],
    last: bool,
    trial: bool,
    out: &mut Vec<u8>,
) -> Option<usize> {
    let mut used = 0;
    while raw.len() - used >= BLOCK || (last && used < raw.len()) {
        let block = &raw[used..(used + BLOCK).min(raw.len())];
        let z = codec.compress(block)?;
        if z.len() > MAX_PACKED_BLOCK
            || (trial && used == 0 && z.len() * 100 > block.len() * WORTH_PERCENT)
        {
            return None;
        }
        out.extend_from_slice(&(z.len() as u32).to_le_bytes());
        out.extend_from_slice(&z);
        used += block.len();
    }
    Some(used)
}

/// Checks a packed region's framing against the body length it must decode to, without
/// decoding: as many blocks as `body_len` needs, each within bounds, and nothing after them.
pub fn framing_ok(region: &[u8], body_len: u64) -> bool {
    let blocks = body_len.div_ceil(BLOCK as u64);
    let mut at = 0usize;
    for _ in 0..blocks {
        let Some(len) = region.get(at..at + 4) else {
            return false;
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len == 0 || len > MAX_PACKED_BLOCK || region.len() - (at + 4) < len {
            return false;
        }
        at += 4 + len;
    }
    at == region.len() && (body_len > 0 || region.is_empty())
}

/// Inflates a packed region (whose framing [`framing_ok`] checked) into `out`, which is as
/// long as the body; `None` if a block is broken or does not decode to its size.
pub fn unpack(codec: &dyn Codec, region: &[u8], out: &mut [u8]) -> Option<()> {
    let mut at = 0usize;
    for dest in out.chunks_mut(BLOCK) {
        let len = u32::from_le_bytes(region.get(at..at + 4)?.try_into().ok()?) as usize;
        let block = codec.uncompress(region.get(at + 4..at + 4 + len)?, dest.len())?;
        if block.len() != dest.len() {
            return None;
        }
        dest.copy_from_slice(&block);
        at += 4 + len;
    }
    (at == region.len()).then_some(())
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// zlib in pure Rust, as the host's stand-in in native tests.
    #[derive(Debug)]
    pub struct TestZlib;

    impl Codec for TestZlib {
        fn compress(&self, data: &[u8]) -> Option<Vec<u8>> {
            Some(miniz_oxide::deflate::compress_to_vec_zlib(data, 6))
        }
        fn uncompress(&self, data: &[u8], _: usize) -> Option<Vec<u8>> {
            miniz_oxide::inflate::decompress_to_vec_zlib(data).ok()
        }
    }

    fn json(n: usize) -> Vec<u8> {
        let mut s = String::from("[");
        let mut i = 0u64;
        while s.len() < n {
            s.push_str(&format!(
                "{{\"id\":{i},\"name\":\"item-{}\",\"price\":{}.{:02},\"tags\":[\"a\",\"b{}\"]}},",
                i * 7919 % 1000,
                i % 97,
                i % 100,
                i % 13
            ));
            i += 1;
        }
        s.truncate(n);
        s.into_bytes()
    }

    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn round_trip(body: &[u8]) -> Option<Vec<u8>> {
        let mut packed = Vec::new();
        let used = pack_blocks(&TestZlib, body, true, true, &mut packed)?;
        assert_eq!(used, body.len());
        assert!(framing_ok(&packed, body.len() as u64));
        let mut out = vec![0; body.len()];
        unpack(&TestZlib, &packed, &mut out).expect("unpacks");
        assert_eq!(out, body);
        Some(packed)
    }

    #[test]
    fn json_packs_small_and_round_trips_at_every_block_boundary() {
        for n in [
            2048,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            3 * BLOCK,
            1024 * 1024 + 7,
        ] {
            let body = json(n);
            let packed = round_trip(&body).expect("JSON is worth it");
            if n >= 4096 {
                assert!(
                    packed.len() * 100 < body.len() * 30,
                    "{n}: {}",
                    packed.len()
                );
            }
        }
        // Tiny bodies grow (zlib's own framing): the trial refuses them.
        assert!(round_trip(b"{}").is_none());
    }

    #[test]
    fn incompressible_bytes_fail_the_trial() {
        assert!(round_trip(&noise(3 * BLOCK)).is_none());
        // Without the trial (a later block), it packs anyway, within the bound.
        let mut out = Vec::new();
        let body = noise(BLOCK);
        assert_eq!(
            pack_blocks(&TestZlib, &body, true, false, &mut out),
            Some(BLOCK)
        );
        assert!(out.len() - 4 <= MAX_PACKED_BLOCK);
    }

    #[test]
    fn incremental_packing_equals_packing_at_once() {
        let body = json(5 * BLOCK + 123);
        let mut at_once = Vec::new();
        pack_blocks(&TestZlib, &body, true, true, &mut at_once).unwrap();
        let mut step = Vec::new();
        let mut used = 0;
        for end in (0..body.len()).step_by(7_000).chain([body.len()]) {
            let last = end == body.len();
            used += pack_blocks(&TestZlib, &body[used..end], last, used == 0, &mut step).unwrap();
        }
        assert_eq!(used, body.len());
        assert_eq!(step, at_once);
    }

    #[test]
    fn framing_refuses_what_does_not_add_up() {
        let body = json(2 * BLOCK + 10);
        let mut packed = Vec::new();
        pack_blocks(&TestZlib, &body, true, true, &mut packed).unwrap();
        let n = body.len() as u64;
        assert!(framing_ok(&packed, n));
        assert!(!framing_ok(&packed, n + BLOCK as u64), "a block short");
        assert!(!framing_ok(&packed, n - 11), "a block too many");
        assert!(!framing_ok(&packed[..packed.len() - 1], n), "truncated");
        let mut longer = packed.clone();
        longer.push(0);
        assert!(!framing_ok(&longer, n), "trailing bytes");
        let mut zero = packed.clone();
        zero[..4].copy_from_slice(&0u32.to_le_bytes());
        assert!(!framing_ok(&zero, n));
        let mut huge = packed.clone();
        huge[..4].copy_from_slice(&((MAX_PACKED_BLOCK + 1) as u32).to_le_bytes());
        assert!(!framing_ok(&huge, n));
        assert!(framing_ok(&[], 0));
        assert!(!framing_ok(&[1, 0, 0, 0, 0], 0));
    }

    #[test]
    fn a_block_that_inflates_to_another_size_is_refused() {
        // A well-framed block holding 1 MiB of zeros where 32 KiB belong (a forged value).
        let bomb = TestZlib.compress(&vec![0u8; 1024 * 1024]).unwrap();
        assert!(bomb.len() <= MAX_PACKED_BLOCK);
        let mut region = (bomb.len() as u32).to_le_bytes().to_vec();
        region.extend_from_slice(&bomb);
        assert!(framing_ok(&region, BLOCK as u64));
        assert_eq!(unpack(&TestZlib, &region, &mut [0; BLOCK]), None);
        // A broken stream.
        let mut packed = Vec::new();
        pack_blocks(&TestZlib, &json(BLOCK), true, true, &mut packed).unwrap();
        let mid = packed.len() / 2;
        packed[mid] ^= 0xff;
        assert_eq!(unpack(&TestZlib, &packed, &mut [0; BLOCK]), None);
    }

    #[test]
    fn what_is_worth_trying() {
        for (ct, ce) in [
            (Some("application/json"), None),
            (Some("text/event-stream; charset=utf-8"), None),
            (Some("text/html"), Some("identity")),
            (Some("image/svg+xml"), None),
            (Some("application/octet-stream"), None),
            (None, None),
        ] {
            assert!(worth_trying(ct, ce), "{ct:?} {ce:?}");
        }
        for (ct, ce) in [
            (Some("application/json"), Some("gzip")),
            (Some("text/html"), Some("br")),
            (Some("image/png"), None),
            (Some("IMAGE/JPEG"), None),
            (Some("video/mp4"), None),
            (Some("application/zip"), None),
            (Some("font/woff2"), None),
        ] {
            assert!(!worth_trying(ct, ce), "{ct:?} {ce:?}");
        }
    }
}
