//! Store commands as Webdis HTTP requests, and Webdis answers as store replies.
//!
//! Facts this relies on (PLATFORM.md): arguments are `/`-separated and percent-decoded, so
//! every key byte outside `[A-Za-z0-9_-]` is percent-encoded; values are written with PUT (the
//! body becomes the last argument, binary-safe) and read with the `.raw` extension (RESP
//! framing, `$-1` for a missing key); `SET .. PX` can't follow a PUT value, so writes are one
//! `EVAL`, which also makes a variant and its index one atomic write.

#[cfg(test)]
use super::Refresh;
use super::{StoreError, Write};

/// An HTTP request to send to the store cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    pub method: &'static str,
    pub path: String,
}

/// Percent-encodes every byte outside `[A-Za-z0-9_-]`: Webdis splits on `/`, turns `+` into a
/// space and strips a trailing `.ext`, so nothing else is safe in an argument.
pub fn encode_arg(out: &mut String, arg: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in arg {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
}

/// `GET key`, answered in RESP framing.
pub fn get(key: &str) -> Callout {
    let mut path = String::with_capacity(10 + key.len() * 2);
    path.push_str("/GET/");
    encode_arg(&mut path, key.as_bytes());
    path.push_str(".raw");
    Callout {
        method: "GET",
        path,
    }
}

/// One entry with its TTL. ARGV[2] (the entry) is the PUT body.
const SET_ONE: &str = "redis.call('SET',KEYS[1],ARGV[2],'PX',ARGV[1]) return 1";

/// A variant and the variants record of its resource, in one atomic step. The record lives at
/// least as long as the longest variant written through it, so no variant is orphaned early.
/// ARGV: ttl ms, the record (hex: it travels in the URL), the entry (the PUT body).
const SET_VARIANT: &str = "local t=tonumber(ARGV[1]) \
local p=redis.call('PTTL',KEYS[1]) \
if p>t then t=p end \
local r=string.gsub(ARGV[2],'..',function(h) return string.char(tonumber(h,16)) end) \
redis.call('SET',KEYS[1],r,'PX',t) \
redis.call('SET',KEYS[2],ARGV[3],'PX',ARGV[1]) \
return 1";

/// A metadata refresh: keeps the first ARGV[2] bytes (format header and body) of the entry
/// at the last key and appends the new tail (the PUT body), if the value still has the length
/// it had when read (ARGV[3]); a variant's record (first key, when two) lives at least as long.
const REFRESH: &str = "local k=KEYS[#KEYS] \
if redis.call('STRLEN',k)~=tonumber(ARGV[3]) then return 1 end \
local v=redis.call('GETRANGE',k,0,tonumber(ARGV[2])-1) \
redis.call('SET',k,v..ARGV[4],'PX',ARGV[1]) \
if #KEYS==2 then local p=redis.call('PTTL',KEYS[1]) \
if p>=0 and p<tonumber(ARGV[1]) then redis.call('PEXPIRE',KEYS[1],ARGV[1]) end end \
return 1";

/// The PUT request of a write; its body is `write.entry`.
pub fn put(write: &Write) -> Callout {
    let mut path = String::with_capacity(512);
    path.push_str("/EVAL/");
    if let Some(r) = write.refresh {
        encode_arg(&mut path, REFRESH.as_bytes());
        if write.variant.is_some() {
            path.push_str("/2/");
            encode_arg(&mut path, write.key.as_bytes());
            path.push('/');
        } else {
            path.push_str("/1/");
        }
        let entry_key = write.variant.as_ref().map_or(&write.key, |v| &v.key);
        encode_arg(&mut path, entry_key.as_bytes());
        path.push_str(&format!(
            "/{}/{}/{}.raw",
            write.ttl_ms, r.keep, r.expected_len
        ));
        return Callout {
            method: "PUT",
            path,
        };
    }
    match &write.variant {
        None => {
            encode_arg(&mut path, SET_ONE.as_bytes());
            path.push_str("/1/");
            encode_arg(&mut path, write.key.as_bytes());
            path.push('/');
            path.push_str(&write.ttl_ms.to_string());
        }
        Some(v) => {
            encode_arg(&mut path, SET_VARIANT.as_bytes());
            path.push_str("/2/");
            encode_arg(&mut path, write.key.as_bytes());
            path.push('/');
            encode_arg(&mut path, v.key.as_bytes());
            path.push('/');
            path.push_str(&write.ttl_ms.to_string());
            path.push('/');
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for b in &v.record {
                path.push(HEX[(b >> 4) as usize] as char);
                path.push(HEX[(b & 15) as usize] as char);
            }
        }
    }
    path.push_str(".raw");
    Callout {
        method: "PUT",
        path,
    }
}

/// Classifies the HTTP status of a store answer. Envoy itself answers 503 for a dead store,
/// 504 for a callout past its deadline; Webdis answers 503 when Redis is down, 403 for a
/// command its ACL refuses.
fn check_status(status: Option<u16>) -> Result<(), StoreError> {
    match status {
        Some(200) => Ok(()),
        Some(504) => Err(StoreError::Timeout),
        Some(502) | Some(503) => Err(StoreError::Unavailable),
        Some(s) => Err(StoreError::Status(s)),
        None => Err(StoreError::Garbage),
    }
}

/// Parses the answer to [`get`]: `Ok(None)` for a missing key, `Ok(Some(value))` borrowing
/// from `body`.
pub fn parse_get(status: Option<u16>, body: &[u8]) -> Result<Option<&[u8]>, StoreError> {
    check_status(status)?;
    let Some(rest) = body.strip_prefix(b"$") else {
        return Err(StoreError::Garbage);
    };
    let Some(nl) = rest.iter().position(|&b| b == b'\r') else {
        return Err(StoreError::Garbage);
    };
    let len = std::str::from_utf8(&rest[..nl]).map_err(|_| StoreError::Garbage)?;
    if len == "-1" {
        return if rest.len() == nl + 2 && rest[nl + 1] == b'\n' {
            Ok(None)
        } else {
            Err(StoreError::Garbage)
        };
    }
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StoreError::Garbage);
    }
    let len: usize = len.parse().map_err(|_| StoreError::Garbage)?;
    let start = nl + 2;
    // Checked: a hostile length must not wrap around into a valid-looking slice.
    let end = start.checked_add(len).ok_or(StoreError::Garbage)?;
    if rest.get(nl + 1) != Some(&b'\n') || end.checked_add(2) != Some(rest.len()) {
        return Err(StoreError::Garbage);
    }
    match (rest.get(start..end), rest.get(end..)) {
        (Some(value), Some(b"\r\n")) => Ok(Some(value)),
        _ => Err(StoreError::Garbage),
    }
}

/// Parses the answer to [`put`]: the scripts return the integer 1.
pub fn parse_put(status: Option<u16>, body: &[u8]) -> Result<(), StoreError> {
    check_status(status)?;
    if body == b":1\r\n" {
        Ok(())
    } else {
        Err(StoreError::Garbage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::VariantWrite;

    #[test]
    fn keys_are_percent_encoded_with_explicit_extension() {
        let c = get("ns:ab12");
        assert_eq!(c.method, "GET");
        assert_eq!(c.path, "/GET/ns%3Aab12.raw");
        let mut s = String::new();
        encode_arg(&mut s, b"a/b+c.json \0");
        assert_eq!(s, "a%2Fb%2Bc%2Ejson%20%00");
    }

    #[test]
    fn put_paths() {
        let w = Write {
            key: "ns:k".into(),
            variant: None,
            ttl_ms: 5000,
            entry: vec![1, 2],
            refresh: None,
        };
        let c = put(&w);
        assert_eq!(c.method, "PUT");
        assert!(c.path.starts_with("/EVAL/redis%2Ecall"));
        assert!(c.path.ends_with("/1/ns%3Ak/5000.raw"), "{}", c.path);
        let w = Write {
            variant: Some(VariantWrite {
                key: "ns:v".into(),
                record: vec![0, 0xab],
            }),
            ..w
        };
        assert!(put(&w).path.ends_with("/2/ns%3Ak/ns%3Av/5000/00ab.raw"));
        let refresh = Some(Refresh {
            keep: 106,
            expected_len: 150,
        });
        let p = put(&Write {
            refresh,
            ..w.clone()
        })
        .path;
        assert!(p.ends_with("/2/ns%3Ak/ns%3Av/5000/106/150.raw"), "{p}");
        let p = put(&Write {
            refresh,
            variant: None,
            ..w
        })
        .path;
        assert!(p.ends_with("/1/ns%3Ak/5000/106/150.raw"), "{p}");
    }

    #[test]
    fn get_answers() {
        assert_eq!(parse_get(Some(200), b"$-1\r\n"), Ok(None));
        assert_eq!(
            parse_get(Some(200), b"$3\r\na\0b\r\n"),
            Ok(Some(&b"a\0b"[..]))
        );
        assert_eq!(parse_get(Some(200), b"$0\r\n\r\n"), Ok(Some(&b""[..])));
        assert_eq!(parse_get(Some(503), b""), Err(StoreError::Unavailable));
        assert_eq!(parse_get(Some(504), b""), Err(StoreError::Timeout));
        assert_eq!(parse_get(Some(403), b""), Err(StoreError::Status(403)));
        assert_eq!(parse_get(None, b""), Err(StoreError::Garbage));
        for garbage in [
            &b""[..],
            b"-ERR wrong type\r\n",
            b"$5\r\nabc\r\n",
            b"$3\r\nabcdef\r\n",
            b"$x\r\n",
            b"$-1\r\nextra",
            b"{\"GET\":\"x\"}",
            b"$3\r\nabc",
            b"$18446744073709551614\r\n",
            b"$4294967294\r\n",
            b"$99999999999999999999999\r\n",
        ] {
            assert_eq!(
                parse_get(Some(200), garbage),
                Err(StoreError::Garbage),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn put_answers() {
        assert_eq!(parse_put(Some(200), b":1\r\n"), Ok(()));
        assert_eq!(
            parse_put(Some(200), b"-ERR x\r\n"),
            Err(StoreError::Garbage)
        );
        assert_eq!(parse_put(Some(503), b""), Err(StoreError::Unavailable));
    }
}
