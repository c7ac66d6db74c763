//! The proxy-wasm ABI's serialized header map (what `proxy_get_header_map_pairs` returns and
//! `proxy_send_local_response` takes): a count, the (name size, value size) pairs, then each
//! name and value followed by a NUL. Pure, so the reader of host bytes is tested natively: a
//! map that doesn't add up is refused, never indexed out of bounds.

/// Reads the ABI's serialized header map: a count, the (name size, value size) pairs, then
/// each name and value followed by a NUL. `None` if the bytes don't add up.
pub fn decode(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = u32_at(0)?;
    let mut sizes = 4usize;
    let mut data = 4usize.checked_add(n.checked_mul(8)?)?;
    let mut out = Vec::with_capacity(n.min(256));
    for _ in 0..n {
        let (name_len, value_len) = (u32_at(sizes)?, u32_at(sizes + 4)?);
        sizes += 8;
        let name = nul_terminated(bytes, data, name_len)?;
        data += name_len + 1;
        let value = nul_terminated(bytes, data, value_len)?;
        data += value_len + 1;
        out.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    (data == bytes.len()).then_some(out)
}

/// `len` bytes at `at`, followed by a NUL.
fn nul_terminated(bytes: &[u8], at: usize, len: usize) -> Option<&[u8]> {
    let end = at.checked_add(len)?;
    (bytes.get(end) == Some(&0)).then_some(())?;
    bytes.get(at..end)
}

/// The ABI's serialized header map of `pairs`.
pub fn encode(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size: usize = 4 + pairs
        .iter()
        .map(|(n, v)| 10 + n.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (n, v) in pairs {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in pairs {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let pairs = [(":status", "200"), ("a", ""), ("x-y", "v\u{0}w")];
        let decoded = decode(&encode(&pairs)).unwrap();
        let want: Vec<(String, Vec<u8>)> = pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(decoded, want);
        assert_eq!(decode(&[]), Some(vec![]));
    }

    #[test]
    fn every_truncation_and_lying_size_is_refused() {
        let bytes = encode(&[("name", "value"), ("n2", "v2")]);
        for len in 1..bytes.len() {
            assert_eq!(decode(&bytes[..len]), None, "truncated to {len}");
        }
        let mut huge = bytes.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge), None);
        let mut long_name = bytes.clone();
        long_name[4..8].copy_from_slice(&(u32::MAX - 1).to_le_bytes());
        assert_eq!(decode(&long_name), None);
    }
}
