//! Store commands as Webdis HTTP requests, and Webdis answers as store replies.
//!
//! Facts this relies on (PLATFORM.md): arguments are `/`-separated and percent-decoded, so
//! every key byte outside `[A-Za-z0-9_-]` is percent-encoded; values are written with PUT (the
//! body becomes the last argument, binary-safe) and read with the `.raw` extension (RESP
//! framing, `$-1` for a missing key); `SET .. PX` can't follow a PUT value, so writes are one
//! `EVAL`, which also makes a variant and its index one atomic write.

use super::Refresh;
use super::{StoreError, Write};
use crate::key::push_hex;

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

/// Reads a batch of keys: `MGET`, with a missing key's nil turned into an empty string.
/// Webdis' `.raw` output drops nil elements from arrays (`*2` then one value for a hit and a
/// miss), so nils can't cross it; no stored value is empty (entries start with their magic,
/// variant records are never empty), so empty means missing. Sent as [`LOOKUP_ARG`].
#[cfg(test)]
const LOOKUP: &str = "local v=redis.call('MGET',unpack(KEYS)) for i=1,#v do if not v[i] then v[i]='' end end return v";

/// [`LOOKUP`] as a Webdis argument, encoded once (a test checks it matches).
const LOOKUP_ARG: &str = "local%20v%3Dredis%2Ecall%28%27MGET%27%2Cunpack%28KEYS%29%29%20for%20i%3D1%2C%23v%20do%20if%20not%20v%5Bi%5D%20then%20v%5Bi%5D%3D%27%27%20end%20end%20return%20v";

/// One lookup callout for a batch of keys, answered in RESP framing ([`parse_lookup`]). A
/// lone key is a plain `GET` (a `$-1` nil is unambiguous there, and Webdis and Redis serve
/// it with less work than a script: the common case at light load).
pub fn lookup<'k>(keys: impl ExactSizeIterator<Item = &'k str>) -> Callout {
    let n = keys.len();
    let mut path = String::with_capacity(LOOKUP_ARG.len() + 16 + 96 * n);
    if n == 1 {
        path.push_str("/GET");
    } else {
        path.push_str("/EVAL/");
        path.push_str(LOOKUP_ARG);
        path.push_str(&format!("/{n}"));
    }
    for key in keys {
        path.push('/');
        encode_arg(&mut path, key.as_bytes());
    }
    path.push_str(".raw");
    Callout {
        method: "GET",
        path,
    }
}

/// The loop of [`SET_ENTRIES`], shared with [`SET_ENTRIES_THEN_LOOKUP`]. A script is its
/// parts encoded one after the other into the URL (the .wasm keeps one copy of the loop).
const SET_ENTRIES_LOOP: &str = "local body=ARGV[#ARGV] local k=1 local a=1 local off=1 \
while a<#ARGV do \
local nk=tonumber(ARGV[a]) local t=tonumber(ARGV[a+1]) local len=tonumber(ARGV[a+4]) \
local v=body if #ARGV>6 then v=string.sub(body,off,off+len-1) end off=off+len \
local n=1 \
if ARGV[a+2]=='1' then \
local rt=t local p=redis.call('PTTL',KEYS[k]) if p>rt then rt=p end \
local r=string.gsub(ARGV[a+3],'..',function(h) return string.char(tonumber(h,16)) end) \
redis.call('SET',KEYS[k],r,'PX',rt) \
redis.call('SET',KEYS[k+1],v,'PX',t) \
redis.call('SADD',KEYS[k+2],KEYS[k+1]) \
if redis.call('PTTL',KEYS[k+2])<rt then redis.call('PEXPIRE',KEYS[k+2],rt) end \
n=3 \
else redis.call('SET',KEYS[k],v,'PX',t) end \
for i=k+n,k+nk-1 do redis.call('SADD',KEYS[i],KEYS[k]) \
if redis.call('PTTL',KEYS[i])<t then redis.call('PEXPIRE',KEYS[i],t) end end \
k=k+nk a=a+5 end ";

/// Entries, each atomically with everything that must find it later, in one script (one
/// callout for a batch of writes; the batch is atomic as a whole, in queue order).
///
/// The PUT body (the last ARGV) is the entries' bytes back to back. Per entry, five ARGV:
/// its number of KEYS, ttl ms, "1" for a variant else "0", the variants record in hex (it
/// travels in the URL; "-" without variant), its byte length in the body. Its KEYS: the
/// resource's key, then for a variant its own key and the resource's variants set, then the
/// tag sets. A lone entry is the body itself (no copy in Lua).
///
/// The variants record and set live at least as long as the longest variant written through
/// them, so no variant is orphaned early; a tag set lists the resource keys carrying the tag.
const SET_ENTRIES: [&str; 2] = [SET_ENTRIES_LOOP, "return 1"];

/// [`SET_ENTRIES`], then the lookup of the remaining KEYS as [`LOOKUP`] does it: writes ride
/// with a lookup batch in one callout (one callout's Envoy CPU instead of two; the entries
/// land before the keys are read, so a key written and read in one batch reads its new
/// value). The writes run under `pcall`: a store that refuses them (out of memory, a
/// read-only replica) still answers the lookup, and the answer's last element says whether
/// the writes landed ("1") or not ("0"; some may have, each whole).
const SET_ENTRIES_THEN_LOOKUP: [&str; 3] = [
    "local ok=pcall(function() ",
    SET_ENTRIES_LOOP,
    "end) local wk=0 for a=1,#ARGV-1,5 do wk=wk+tonumber(ARGV[a]) end \
local v=redis.call('MGET',unpack(KEYS,wk+1)) for i=1,#v do if not v[i] then v[i]='' end end \
v[#v+1]=ok and '1' or '0' return v",
];

/// Removes resources, each given as its key and its variants set: every variant in the set,
/// the set, and the key (an entry or a variants record). Returns how many resource keys
/// existed.
const INVALIDATE: &str = "local n=0 \
for i=1,#KEYS,2 do \
for _,k in ipairs(redis.call('SMEMBERS',KEYS[i+1])) do redis.call('DEL',k) end \
n=n+redis.call('DEL',KEYS[i]) redis.call('DEL',KEYS[i+1]) end \
return n";

/// Removes every resource listed in the tag sets (KEYS), with their variants (the set at
/// `<resource key>:v`), and the tag sets. Returns how many resource keys existed.
const PURGE_TAGS: &str = "local n=0 \
for _,t in ipairs(KEYS) do \
for _,p in ipairs(redis.call('SMEMBERS',t)) do \
for _,k in ipairs(redis.call('SMEMBERS',p..':v')) do redis.call('DEL',k) end \
n=n+redis.call('DEL',p) redis.call('DEL',p..':v') end \
redis.call('DEL',t) end \
return n";

/// The key of a resource's variants set.
pub fn variants_set_key(resource_key: &str) -> String {
    format!("{resource_key}:v")
}

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

/// The PUT request of a metadata refresh; its body is `write.entry` (the new tail).
pub fn put_refresh(write: &Write, r: Refresh) -> Callout {
    let mut path = String::with_capacity(512);
    path.push_str("/EVAL/");
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
    Callout {
        method: "PUT",
        path,
    }
}

/// The PUT request of one or more entries (none a refresh); its body is their bytes back to
/// back, in this order ([`entries_body`]).
pub fn put_entries(writes: &[&Write]) -> Callout {
    entries_script(&SET_ENTRIES, writes, &[])
}

/// Entries (as [`put_entries`], same body) and then a lookup of `keys`, in one callout,
/// answered as [`parse_entries_then_lookup`] reads it.
pub fn put_entries_then_lookup(writes: &[&Write], keys: &[&str]) -> Callout {
    entries_script(&SET_ENTRIES_THEN_LOOKUP, writes, keys)
}

fn entries_script(script: &[&str], writes: &[&Write], lookup_keys: &[&str]) -> Callout {
    let mut path = String::with_capacity(768 + 256 * writes.len() + 96 * lookup_keys.len());
    path.push_str("/EVAL/");
    for part in script {
        encode_arg(&mut path, part.as_bytes());
    }
    let key_count: usize =
        writes.iter().map(|w| entry_key_count(w)).sum::<usize>() + lookup_keys.len();
    path.push_str(&format!("/{key_count}"));
    for w in writes {
        path.push('/');
        encode_arg(&mut path, w.key.as_bytes());
        if let Some(v) = &w.variant {
            path.push('/');
            encode_arg(&mut path, v.key.as_bytes());
            path.push('/');
            encode_arg(&mut path, variants_set_key(&w.key).as_bytes());
        }
        for tag in &w.tags {
            path.push('/');
            encode_arg(&mut path, tag.as_bytes());
        }
    }
    for key in lookup_keys {
        path.push('/');
        encode_arg(&mut path, key.as_bytes());
    }
    for w in writes {
        path.push_str(&format!("/{}/{}/", entry_key_count(w), w.ttl_ms));
        match &w.variant {
            None => path.push_str("0/-"),
            Some(v) => {
                path.push_str("1/");
                push_hex(&mut path, &v.record);
            }
        }
        path.push_str(&format!("/{}", w.entry.len()));
    }
    path.push_str(".raw");
    Callout {
        method: "PUT",
        path,
    }
}

/// The body of [`put_entries`]: a lone entry as it is, several copied back to back.
pub fn entries_body<'w>(writes: &[&'w Write]) -> std::borrow::Cow<'w, [u8]> {
    match writes {
        [w] => std::borrow::Cow::Borrowed(&w.entry),
        _ => std::borrow::Cow::Owned(
            writes
                .iter()
                .flat_map(|w| w.entry.iter().copied())
                .collect(),
        ),
    }
}

/// KEYS one entry takes in [`SET_ENTRIES`].
fn entry_key_count(w: &Write) -> usize {
    let fixed = if w.variant.is_some() { 3 } else { 1 };
    fixed + w.tags.len()
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

/// Parses the answer to [`lookup`] of `n` keys: one value per key in key order, `None` for a
/// missing key, each borrowing from `body`. Anything but exactly `n` well-framed values is
/// garbage for the whole batch: a misframed answer can't say which value is whose.
pub fn parse_lookup(status: Option<u16>, body: &[u8], n: usize) -> Result<Values<'_>, StoreError> {
    // One key: the GET's bare bulk string; several: the script's array.
    parse_values(status, body, n, n != 1)
}

/// Parses the answer to [`put_entries_then_lookup`] of `n` keys: the lookup's values as
/// [`parse_lookup`] gives them, and whether the entries landed (`Err(Refused)` when Redis
/// refused them). A failed callout fails both.
pub fn parse_entries_then_lookup(
    status: Option<u16>,
    body: &[u8],
    n: usize,
) -> Result<(Values<'_>, Result<(), StoreError>), StoreError> {
    let mut values = parse_values(status, body, n + 1, true)?;
    let written = match values.pop() {
        Some(Some(b"1")) => Ok(()),
        Some(Some(b"0")) => Err(StoreError::Refused),
        _ => return Err(StoreError::Garbage),
    };
    Ok((values, written))
}

/// A lookup's values, one per key in key order, `None` for a missing key.
pub type Values<'a> = Vec<Option<&'a [u8]>>;

fn parse_values(
    status: Option<u16>,
    body: &[u8],
    n: usize,
    array: bool,
) -> Result<Values<'_>, StoreError> {
    check_status(status)?;
    let mut rest = body;
    if array {
        let (count, after) = resp_line(body, b'*')?;
        if count != Some(n) {
            return Err(StoreError::Garbage);
        }
        rest = after;
    }
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        let (len, after) = resp_line(rest, b'$')?;
        let Some(len) = len else {
            // A missing key's GET (the script turns nils into empty strings).
            values.push(None);
            rest = after;
            continue;
        };
        // Checked: a hostile length must not wrap around into a valid-looking slice.
        let end = len.checked_add(2).ok_or(StoreError::Garbage)?;
        let value = match (after.get(..len), after.get(len..end)) {
            (Some(value), Some(b"\r\n")) => value,
            _ => return Err(StoreError::Garbage),
        };
        values.push(Some(value).filter(|v| !v.is_empty()));
        rest = &after[end..];
    }
    if !rest.is_empty() {
        return Err(StoreError::Garbage);
    }
    Ok(values)
}

/// One RESP header line `<kind><len>\r\n`: the length (`None` for `-1`, a nil) and what
/// follows the line.
fn resp_line(buf: &[u8], kind: u8) -> Result<(Option<usize>, &[u8]), StoreError> {
    let rest = buf.strip_prefix(&[kind]).ok_or(StoreError::Garbage)?;
    let nl = rest
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or(StoreError::Garbage)?;
    let after = &rest[nl + 2..];
    match &rest[..nl] {
        b"-1" => Ok((None, after)),
        digits if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {
            let len = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse().ok())
                .ok_or(StoreError::Garbage)?;
            Ok((Some(len), after))
        }
        _ => Err(StoreError::Garbage),
    }
}

/// `INVALIDATE` for resources (their keys); the answer is a count ([`parse_count`]).
pub fn invalidate(resource_keys: &[String]) -> Callout {
    let mut path = String::with_capacity(256);
    path.push_str("/EVAL/");
    encode_arg(&mut path, INVALIDATE.as_bytes());
    path.push_str(&format!("/{}", 2 * resource_keys.len()));
    for k in resource_keys {
        path.push('/');
        encode_arg(&mut path, k.as_bytes());
        path.push('/');
        encode_arg(&mut path, variants_set_key(k).as_bytes());
    }
    path.push_str(".raw");
    Callout {
        method: "GET",
        path,
    }
}

/// `PURGE_TAGS` for tag sets (their keys); the answer is a count ([`parse_count`]).
pub fn purge_tags(tag_set_keys: &[String]) -> Callout {
    let mut path = String::with_capacity(256);
    path.push_str("/EVAL/");
    encode_arg(&mut path, PURGE_TAGS.as_bytes());
    path.push_str(&format!("/{}", tag_set_keys.len()));
    for k in tag_set_keys {
        path.push('/');
        encode_arg(&mut path, k.as_bytes());
    }
    path.push_str(".raw");
    Callout {
        method: "GET",
        path,
    }
}

/// Parses an integer answer (`:<n>`): the scripts' answer to writes (1), invalidations and
/// purges (how many resources existed).
pub fn parse_count(status: Option<u16>, body: &[u8]) -> Result<u64, StoreError> {
    check_status(status)?;
    let digits = body
        .strip_prefix(b":")
        .and_then(|b| b.strip_suffix(b"\r\n"))
        .ok_or(StoreError::Garbage)?;
    std::str::from_utf8(digits)
        .ok()
        .filter(|d| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()))
        .and_then(|d| d.parse().ok())
        .ok_or(StoreError::Garbage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::VariantWrite;

    #[test]
    fn keys_are_percent_encoded_with_explicit_extension() {
        let c = lookup(["ns:ab12"].into_iter());
        assert_eq!(c.method, "GET");
        assert_eq!(c.path, "/GET/ns%3Aab12.raw");
        let two = lookup(["a", "b.c"].into_iter());
        assert_eq!(two.path, format!("/EVAL/{LOOKUP_ARG}/2/a/b%2Ec.raw"));
        let mut s = String::new();
        encode_arg(&mut s, b"a/b+c.json \0");
        assert_eq!(s, "a%2Fb%2Bc%2Ejson%20%00");
    }

    /// A plain entry `[1, 2]` under `ns:k`, 5 s.
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
    fn put_paths() {
        let w = plain_write();
        let c = put_entries(&[&w]);
        assert_eq!(c.method, "PUT");
        assert!(c.path.starts_with("/EVAL/local%20body"));
        assert!(c.path.ends_with("/1/ns%3Ak/1/5000/0/-/2.raw"), "{}", c.path);
        assert_eq!(entries_body(&[&w]).as_ref(), &[1, 2]);
        let tagged = Write {
            tags: vec!["ns:tag:1".into()],
            ..w.clone()
        };
        let p = put_entries(&[&tagged]).path;
        assert!(
            p.ends_with("/2/ns%3Ak/ns%3Atag%3A1/2/5000/0/-/2.raw"),
            "{p}"
        );
        let variant = Write {
            variant: Some(VariantWrite {
                key: "ns:v".into(),
                record: vec![0, 0xab],
            }),
            entry: vec![3, 4, 5],
            ..w.clone()
        };
        let p = put_entries(&[&variant]).path;
        assert!(
            p.ends_with("/3/ns%3Ak/ns%3Av/ns%3Ak%3Av/3/5000/1/00ab/3.raw"),
            "{p}"
        );
        // A batch: all KEYS first, then five ARGV per entry, in order; bodies back to back.
        let batch = [&w, &tagged, &variant];
        let p = put_entries(&batch).path;
        assert!(
            p.ends_with(
                "/6/ns%3Ak/ns%3Ak/ns%3Atag%3A1/ns%3Ak/ns%3Av/ns%3Ak%3Av\
                 /1/5000/0/-/2/2/5000/0/-/2/3/5000/1/00ab/3.raw"
            ),
            "{p}"
        );
        assert_eq!(entries_body(&batch).as_ref(), &[1, 2, 1, 2, 3, 4, 5]);

        let r = Refresh {
            keep: 106,
            expected_len: 150,
        };
        let p = put_refresh(&variant, r).path;
        assert!(p.ends_with("/2/ns%3Ak/ns%3Av/5000/106/150.raw"), "{p}");
        let p = put_refresh(&w, r).path;
        assert!(p.ends_with("/1/ns%3Ak/5000/106/150.raw"), "{p}");
    }

    #[test]
    fn entries_then_lookup_path_and_answer() {
        let w = Write {
            tags: vec!["ns:tag:1".into()],
            ..plain_write()
        };
        let c = put_entries_then_lookup(&[&w], &["ns:a", "ns:b.c"]);
        assert_eq!(c.method, "PUT");
        let mut script = String::new();
        encode_arg(&mut script, SET_ENTRIES_THEN_LOOKUP.concat().as_bytes());
        assert!(
            SET_ENTRIES_THEN_LOOKUP
                .concat()
                .contains(&format!("pcall(function() {SET_ENTRIES_LOOP}end)"))
        );
        assert!(c.path.starts_with(&format!("/EVAL/{script}/4/")));
        // The entry's KEYS, then the keys to read, then the entry's ARGV.
        assert!(
            c.path
                .ends_with("/4/ns%3Ak/ns%3Atag%3A1/ns%3Aa/ns%3Ab%2Ec/2/5000/0/-/2.raw"),
            "{}",
            c.path
        );
        assert!(SET_ENTRIES_THEN_LOOKUP[2].contains("unpack(KEYS,wk+1)"));
        // One key read is still the script's array, with the writes' outcome last.
        assert_eq!(
            parse_entries_then_lookup(Some(200), b"*2\r\n$2\r\nhi\r\n$1\r\n1\r\n", 1),
            Ok((vec![Some(&b"hi"[..])], Ok(())))
        );
        assert_eq!(
            parse_entries_then_lookup(Some(200), b"*3\r\n$0\r\n\r\n$2\r\nhi\r\n$1\r\n0\r\n", 2),
            Ok((vec![None, Some(&b"hi"[..])], Err(StoreError::Refused))),
            "refused writes, answered lookups"
        );
        for garbage in [
            &b"$2\r\nhi\r\n"[..],
            b"*1\r\n$2\r\nhi\r\n",
            b"*2\r\n$2\r\nhi\r\n$1\r\n7\r\n",
            b"-ERR script failed\r\n",
        ] {
            assert_eq!(
                parse_entries_then_lookup(Some(200), garbage, 1),
                Err(StoreError::Garbage)
            );
        }
    }

    #[test]
    fn invalidation_and_purge_paths() {
        let c = invalidate(&["ns:a".into(), "ns:b".into()]);
        assert_eq!(c.method, "GET");
        assert!(
            c.path
                .ends_with("/4/ns%3Aa/ns%3Aa%3Av/ns%3Ab/ns%3Ab%3Av.raw"),
            "{}",
            c.path
        );
        let c = purge_tags(&["ns:tag:x".into()]);
        assert!(c.path.ends_with("/1/ns%3Atag%3Ax.raw"), "{}", c.path);
        assert_eq!(parse_count(Some(200), b":12\r\n"), Ok(12));
        for bad in [&b":\r\n"[..], b":-1\r\n", b"12", b"$1\r\n1\r\n"] {
            assert_eq!(parse_count(Some(200), bad), Err(StoreError::Garbage));
        }
        assert_eq!(parse_count(Some(503), b""), Err(StoreError::Unavailable));
    }

    #[test]
    fn the_lookup_script_is_encoded_once_and_right() {
        let mut encoded = String::new();
        encode_arg(&mut encoded, LOOKUP.as_bytes());
        assert_eq!(encoded, LOOKUP_ARG);
    }

    #[test]
    fn lookup_answers() {
        // One key: GET's bulk string.
        let one = |body: &'static [u8]| parse_lookup(Some(200), body, 1);
        assert_eq!(one(b"$-1\r\n"), Ok(vec![None]));
        assert_eq!(one(b"$3\r\na\0b\r\n"), Ok(vec![Some(&b"a\0b"[..])]));
        // A value may hold CRLF: only the length frames it.
        assert_eq!(one(b"$2\r\n\r\n\r\n"), Ok(vec![Some(&b"\r\n"[..])]));
        // Empty is missing (no stored value is empty).
        assert_eq!(one(b"$0\r\n\r\n"), Ok(vec![None]));
        // Several: the script's array, empty strings for missing keys.
        assert_eq!(
            parse_lookup(Some(200), b"*3\r\n$1\r\nx\r\n$0\r\n\r\n$2\r\nyz\r\n", 3),
            Ok(vec![Some(&b"x"[..]), None, Some(&b"yz"[..])])
        );
        assert_eq!(
            parse_lookup(Some(200), b"*2\r\n$-1\r\n$1\r\nq\r\n", 2),
            Ok(vec![None, Some(&b"q"[..])])
        );
        assert_eq!(
            parse_lookup(Some(503), b"", 1),
            Err(StoreError::Unavailable)
        );
        assert_eq!(parse_lookup(Some(504), b"", 2), Err(StoreError::Timeout));
        assert_eq!(
            parse_lookup(Some(403), b"", 1),
            Err(StoreError::Status(403))
        );
        assert_eq!(parse_lookup(None, b"", 1), Err(StoreError::Garbage));
        for garbage in [
            &b""[..],
            b"-ERR wrong type\r\n",
            b"-NOPERM this user has no permissions\r\n",
            b"*1\r\n$1\r\nx\r\n",
            b"$5\r\nabc\r\n",
            b"$3\r\nabcdef\r\n",
            b"$x\r\n",
            b"$\r\n",
            b"$+3\r\nabc\r\n",
            b"$-1\r\nextra",
            b"$-2\r\n",
            b"{\"GET\":\"x\"}",
            b"$3\r\nabc",
            b"$0\r\n",
            b"$18446744073709551614\r\n",
            b"$18446744073709551615\r\n",
            b"$4294967294\r\n",
            b"$99999999999999999999999\r\n",
        ] {
            assert_eq!(one(garbage), Err(StoreError::Garbage), "{garbage:?}");
        }
        let two = |body: &'static [u8]| parse_lookup(Some(200), body, 2);
        for garbage in [
            &b"$1\r\nx\r\n"[..],
            b"*1\r\n$1\r\nx\r\n",
            b"*3\r\n$-1\r\n$-1\r\n$-1\r\n",
            b"*2\r\n$-1\r\n",
            b"*2\r\n$1\r\nx\r\n$1\r\ny\r\nextra",
            b"*99999999999999999999999\r\n",
            b"*2\r\n$3\r\nabcdef\r\n$0\r\n\r\n",
        ] {
            assert_eq!(two(garbage), Err(StoreError::Garbage), "{garbage:?}");
        }
    }

    #[test]
    fn put_answers() {
        // Writes answer an integer too (the scripts return 1): parsed by parse_count.
        assert_eq!(parse_count(Some(200), b":1\r\n"), Ok(1));
        assert_eq!(
            parse_count(Some(200), b"-ERR x\r\n"),
            Err(StoreError::Garbage)
        );
        assert_eq!(parse_count(Some(503), b""), Err(StoreError::Unavailable));
    }
}
