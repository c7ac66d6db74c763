//! Store commands as Webdis HTTP requests, and Webdis answers as store answers.
//!
//! Facts this relies on (PLATFORM.md): arguments are `/`-separated and percent-decoded, so
//! every key byte outside `[A-Za-z0-9_-]` is percent-encoded; values are written with PUT (the
//! body becomes the last argument, binary-safe) and read with the `.raw` extension (RESP
//! framing); `SET .. PX` can't follow a PUT value, so writes are one `EVAL`, which also makes a
//! variant and its index one atomic write. Webdis' `.raw` drops nil elements from arrays and
//! turns integers inside arrays into bulk strings, so scripts answer arrays of strings only:
//! a lookup says what each slot holds in a string of one letter per key.
//!
//! Every command but one is a script whose first argument is the command's nonce, and every
//! answer starts with it: an answer is used only for the command it answers (Webdis has been
//! seen delivering an abandoned request's answer on a later callout). The exception is a
//! piece of a large value: a plain `GETRANGE` (through a script, Redis copies the bytes three
//! more times), answered by a bare string, which is trusted only once the value is whole and
//! ends as the nonce-checked lookup saw it ([`super::Slot::Large`]).

use super::layout::LOCK_SUFFIX;
use super::{
    Answer, Command, Expect, Locking, Marker, Request, Slot, StoreError, TAIL_LEN, Unlock, Write,
};
use crate::key::push_hex;
use std::borrow::Cow;
use std::ops::Range;
use std::sync::OnceLock;

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

/// Defines `LS`, the lock key suffix ([`LOCK_SUFFIX`]), for the scripts that follow it.
const LOCK_PRELUDE: [&str; 3] = ["local LS='", LOCK_SUFFIX, "' "];

/// Reads `KEYS[f..]` into `o`, at most `b` bytes of values in all, and what each slot holds
/// into `t`, one letter per key: `v` its value; `m` missing (or empty: no stored value is
/// empty); `f` another Redis type (not ours: the next write's `SET` replaces it); `l` a value
/// that does not fit, or is over `iv` bytes, whose slot is its length, `:` and its last 8
/// bytes (read in pieces by plain `GETRANGE`s). `STRLEN` first, so a large value is never copied
/// into the script or the answer: a value through Lua costs Redis about 1.7 µs per KiB more
/// than a plain read (three more copies), ~2 ms per MiB against 0.25 ms; from 128 KiB on,
/// that is more than a second callout costs. At a missing key whose flag in `L` is
/// `1` (collapsed misses), its lock (`SET NX PX lm`, the nonce as owner): `L` taken by this
/// lookup, `w` held by another's fetch, `h`/`x` a marker saying not to wait, `m` a lock key
/// of another type (not ours: no waiting on it) or a `SET` Redis refused (out of memory: the
/// lookup must still answer, and the request fetches without a lock). The letters end up in
/// `o[2]`.
const LOOKUP_LOOP: &str = "local iv=131072 for i=f,#KEYS do local k=KEYS[i] local n=redis.pcall('STRLEN',k) \
if type(n)~='number' then t[#t+1]='f' o[#o+1]='' \
elseif n==0 then local c='m' \
if string.sub(L,i-f+1,i-f+1)=='1' then local lk=k..LS \
local got=redis.pcall('SET',lk,ARGV[1],'NX','PX',lm) \
if type(got)=='table' and got['ok'] then c='L' elseif got==false then \
local h=redis.pcall('GET',lk) \
if h=='h' or h=='x' then c=h elseif type(h)=='string' then c='w' end end end \
t[#t+1]=c o[#o+1]='' \
elseif n>b or n>iv then t[#t+1]='l' o[#o+1]=n..':'..redis.call('GETRANGE',k,-8,-1) \
else b=b-n t[#t+1]='v' o[#o+1]=redis.call('GET',k) end end o[2]=table.concat(t) ";

/// A lookup: ARGV nonce, inline bytes, lock flags (one `0`/`1` per key, or `-`), lock ms;
/// answers `[nonce, letters, slot...]`.
const LOOKUP: [&str; 6] = [
    LOCK_PRELUDE[0],
    LOCK_PRELUDE[1],
    LOCK_PRELUDE[2],
    "local o={ARGV[1],''} local t={} local b=tonumber(ARGV[2]) local L=ARGV[3] \
local lm=tonumber(ARGV[4]) local f=1 ",
    LOOKUP_LOOP,
    "return o",
];

/// The writes of one callout, from ARGV index `s` on: five ARGV per entry (its number of
/// KEYS, ttl ms, "1" for a variant else "0", the variants record in hex or "-", its byte
/// length in the body), the body (the entries back to back) last. Per entry, KEYS: the
/// resource's key, then for a variant its own key and the resource's variants set, then the
/// tag sets. The variants record and set live at least as long as the longest variant written
/// through them, so no variant is orphaned early. A set key holding another type is replaced
/// (a foreign value must not block writes forever); `SET` replaces any type by itself. The
/// entry's lock (and a variant's, and its record's) goes: whoever waits for it finds the entry.
const SET_ENTRIES_LOOP: &str = "local function S(k) local t=redis.call('TYPE',k)['ok'] \
if t~='set' and t~='none' then redis.call('DEL',k) end end \
local body=ARGV[#ARGV] local k=1 local a=s local off=1 local one=(#ARGV==s+5) \
while a<#ARGV do \
local nk=tonumber(ARGV[a]) local t=tonumber(ARGV[a+1]) local len=tonumber(ARGV[a+4]) \
local v=body if not one then v=string.sub(body,off,off+len-1) end off=off+len \
local n=1 \
if ARGV[a+2]=='1' then \
local rt=t local p=redis.call('PTTL',KEYS[k]) if p>rt then rt=p end \
local r=string.gsub(ARGV[a+3],'..',function(h) return string.char(tonumber(h,16)) end) \
redis.call('SET',KEYS[k],r,'PX',rt) \
redis.call('SET',KEYS[k+1],v,'PX',t) redis.call('DEL',KEYS[k+1]..LS) \
S(KEYS[k+2]) redis.call('SADD',KEYS[k+2],KEYS[k+1]) \
if redis.call('PTTL',KEYS[k+2])<rt then redis.call('PEXPIRE',KEYS[k+2],rt) end \
n=3 \
else redis.call('SET',KEYS[k],v,'PX',t) end redis.call('DEL',KEYS[k]..LS) \
for i=k+n,k+nk-1 do S(KEYS[i]) redis.call('SADD',KEYS[i],KEYS[k]) \
if redis.call('PTTL',KEYS[i])<t then redis.call('PEXPIRE',KEYS[i],t) end end \
k=k+nk a=a+5 end ";

/// Entries, each atomically with everything that must find it later, in one script (the
/// batch is atomic as a whole, in queue order): ARGV nonce, then the entries; answers the
/// nonce.
const SET_ENTRIES: [&str; 6] = [
    LOCK_PRELUDE[0],
    LOCK_PRELUDE[1],
    LOCK_PRELUDE[2],
    "local s=2 ",
    SET_ENTRIES_LOOP,
    "return ARGV[1]",
];

/// [`SET_ENTRIES`], then a lookup of the KEYS after the entries' (writes riding with a lookup
/// batch: one callout's Envoy CPU instead of two; a key written and read in one batch reads
/// its new value): ARGV nonce, inline bytes, lock flags, lock ms, then the entries. The writes
/// run under `pcall`: a store that refuses them (out of memory, a read-only replica) still
/// answers the lookup. Answers `[nonce, letters, slot..., "1" if the writes landed else "0"]`.
const SET_ENTRIES_THEN_LOOKUP: [&str; 8] = [
    LOCK_PRELUDE[0],
    LOCK_PRELUDE[1],
    LOCK_PRELUDE[2],
    "local s=5 local ok=pcall(function() ",
    SET_ENTRIES_LOOP,
    "end) local wk=0 for a=5,#ARGV-1,5 do wk=wk+tonumber(ARGV[a]) end \
local o={ARGV[1],''} local t={} local b=tonumber(ARGV[2]) local L=ARGV[3] \
local lm=tonumber(ARGV[4]) local f=wk+1 ",
    LOOKUP_LOOP,
    "o[#o+1]=ok and '1' or '0' return o",
];

/// A metadata refresh: keeps the first ARGV[3] bytes (format header and body) of the entry at
/// the last key and appends the new tail (ARGV[5], the PUT body), if the value still has the
/// length it had when read (ARGV[4]); a variant's record (first key, when two) lives at least
/// as long (ARGV[2] ms). Answers the nonce.
const REFRESH: [&str; 1] = ["local k=KEYS[#KEYS] \
if redis.pcall('STRLEN',k)~=tonumber(ARGV[4]) then return ARGV[1] end \
local v=redis.call('GETRANGE',k,0,tonumber(ARGV[3])-1) \
redis.call('SET',k,v..ARGV[5],'PX',ARGV[2]) \
if #KEYS==2 then local p=redis.call('PTTL',KEYS[1]) \
if p>=0 and p<tonumber(ARGV[2]) then redis.call('PEXPIRE',KEYS[1],ARGV[2]) end end \
return ARGV[1]"];

/// Removes resources, each given as its key and its variants set: every variant in the set,
/// the set, the key (an entry or a variants record), and its lock (a fetch of the old
/// resource, whose write may be dropped, must not keep misses waiting). Answers `[nonce, how
/// many resource keys existed]`.
const INVALIDATE: [&str; 4] = [
    LOCK_PRELUDE[0],
    LOCK_PRELUDE[1],
    LOCK_PRELUDE[2],
    "local n=0 \
for i=1,#KEYS,2 do \
local m=redis.pcall('SMEMBERS',KEYS[i+1]) \
if m['err']==nil then for _,k in ipairs(m) do redis.call('DEL',k) end end \
n=n+redis.call('DEL',KEYS[i]) redis.call('DEL',KEYS[i+1]) redis.call('DEL',KEYS[i]..LS) end \
return {ARGV[1],n}",
];

/// The lock at KEYS[1]: ARGV nonce, owner, `r` (free it if this owner still holds it) or a
/// marker (`h`, `x`) to set for ARGV[4] ms whoever holds it (a lock key of another type is
/// left alone). Answers the nonce.
const UNLOCK: [&str; 1] = ["local v=redis.pcall('GET',KEYS[1]) \
if type(v)~='table' then \
if ARGV[3]=='r' then if v==ARGV[2] then redis.call('DEL',KEYS[1]) end \
else redis.call('SET',KEYS[1],ARGV[3],'PX',ARGV[4]) end end \
return ARGV[1]"];

/// Adds ARGV[3] to the tag set at KEYS[1] (a key of another type is replaced), which then
/// lives at least ARGV[2] ms. Answers the nonce. (A Cluster's tag sets, written apart from
/// their entries: another slot.)
const TAG_ADD: [&str; 1] = ["local k=KEYS[1] local t=redis.call('TYPE',k)['ok'] \
if t~='set' and t~='none' then redis.call('DEL',k) end redis.call('SADD',k,ARGV[3]) \
if redis.call('PTTL',k)<tonumber(ARGV[2]) then redis.call('PEXPIRE',k,ARGV[2]) end \
return ARGV[1]"];

/// The members of the tag set at KEYS[1] (none if it is missing or another type), and the set
/// removed. Answers `[nonce, member...]`.
const TAKE_TAG_SET: [&str; 1] = ["local m=redis.pcall('SMEMBERS',KEYS[1]) \
if m['err'] then m={} end redis.call('DEL',KEYS[1]) local o={ARGV[1]} \
for _,k in ipairs(m) do o[#o+1]=k end return o"];

/// Takes the lock at KEYS[1] if it is free, for ARGV[2] ms, the nonce as owner. Answers
/// `[nonce, 1]` if taken, `[nonce, 0]` if not (held, a marker, another type, or Redis out of
/// memory refused the SET).
const LOCK: [&str; 1] = [
    "local got=redis.pcall('SET',KEYS[1],ARGV[1],'NX','PX',ARGV[2]) \
if type(got)=='table' and got['ok'] then return {ARGV[1],1} end return {ARGV[1],0}",
];

/// A script as a Webdis argument, encoded once per VM.
fn script_arg(cell: &'static OnceLock<String>, parts: &[&str]) -> &'static str {
    cell.get_or_init(|| {
        let mut s = String::new();
        encode_arg(&mut s, parts.concat().as_bytes());
        s
    })
}

macro_rules! script {
    ($parts:expr) => {{
        static CELL: OnceLock<String> = OnceLock::new();
        script_arg(&CELL, &$parts)
    }};
}

/// Appends `/<n>`.
fn push_num(path: &mut String, n: u64) {
    path.push('/');
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    digits[i..].iter().for_each(|&d| path.push(d as char));
}

/// `/EVAL/<script>/<numkeys>/<keys...>/<nonce>`; the caller appends its other ARGV and `.raw`.
fn eval_path(script: &str, keys: &[&str], nonce: u64, extra: usize) -> String {
    let keys_len: usize = keys.iter().map(|k| k.len() + 8).sum();
    let mut path = String::with_capacity(script.len() + keys_len + extra + 48);
    path.push_str("/EVAL/");
    path.push_str(script);
    push_num(&mut path, keys.len() as u64);
    for key in keys {
        path.push('/');
        encode_arg(&mut path, key.as_bytes());
    }
    path.push('/');
    push_hex(&mut path, &nonce.to_be_bytes());
    path
}

fn get(mut path: String) -> Request<'static> {
    path.push_str(".raw");
    Request::Http {
        method: "GET",
        path,
        body: None,
    }
}

fn put<'a>(mut path: String, body: Cow<'a, [u8]>) -> Request<'a> {
    path.push_str(".raw");
    Request::Http {
        method: "PUT",
        path,
        body: Some(body),
    }
}

/// The request for `command`, carrying `nonce`.
pub fn encode<'a>(nonce: u64, command: &Command<'a>) -> Request<'a> {
    match command {
        Command::Lookup {
            keys,
            inline_bytes,
            locking,
        } => {
            let mut path = eval_path(script!(LOOKUP), keys, nonce, 32 + keys.len());
            push_num(&mut path, *inline_bytes as u64);
            push_locking(&mut path, locking);
            get(path)
        }
        Command::Write {
            entries,
            then_lookup,
            inline_bytes,
            locking,
        } => {
            let sets: Vec<String> = entries
                .iter()
                .filter(|w| w.variant.is_some())
                .map(|w| super::layout::variants_set_key(&w.key))
                .collect();
            let mut sets = sets.iter();
            let mut keys: Vec<&str> = Vec::with_capacity(4 * entries.len() + then_lookup.len());
            for w in entries {
                keys.push(&w.key);
                if let Some(v) = &w.variant {
                    keys.push(&v.key);
                    keys.push(sets.next().map_or("", String::as_str));
                }
                keys.extend(w.tags.iter().map(String::as_str));
            }
            keys.extend_from_slice(then_lookup);
            let script = if then_lookup.is_empty() {
                script!(SET_ENTRIES)
            } else {
                script!(SET_ENTRIES_THEN_LOOKUP)
            };
            let mut path = eval_path(script, &keys, nonce, 64 * entries.len());
            if !then_lookup.is_empty() {
                push_num(&mut path, *inline_bytes as u64);
                push_locking(&mut path, locking);
            }
            for w in entries {
                push_num(&mut path, entry_key_count(w) as u64);
                push_num(&mut path, w.ttl_ms);
                match &w.variant {
                    None => path.push_str("/0/-"),
                    Some(v) => {
                        path.push_str("/1/");
                        push_hex(&mut path, &v.record);
                    }
                }
                push_num(&mut path, w.entry.len() as u64);
            }
            put(path, entries_body(entries))
        }
        Command::Refresh(w) => {
            let r = w.refresh.unwrap_or(super::Refresh {
                keep: 0,
                expected_len: u64::MAX,
            });
            let mut path = match &w.variant {
                Some(v) => eval_path(script!(REFRESH), &[&w.key, &v.key], nonce, 48),
                None => eval_path(script!(REFRESH), &[&w.key], nonce, 48),
            };
            for n in [w.ttl_ms, r.keep, r.expected_len] {
                push_num(&mut path, n);
            }
            put(path, Cow::Borrowed(&w.entry))
        }
        Command::Invalidate(resource_keys) => {
            let sets: Vec<String> = resource_keys
                .iter()
                .map(|k| super::layout::variants_set_key(k))
                .collect();
            let keys: Vec<&str> = resource_keys
                .iter()
                .zip(&sets)
                .flat_map(|(k, s)| [k.as_str(), s.as_str()])
                .collect();
            get(eval_path(script!(INVALIDATE), &keys, nonce, 0))
        }
        Command::TagAdd {
            set,
            member,
            ttl_ms,
        } => {
            let mut path = eval_path(script!(TAG_ADD), &[set], nonce, 24 + 3 * member.len());
            push_num(&mut path, (*ttl_ms).max(1));
            path.push('/');
            encode_arg(&mut path, member.as_bytes());
            get(path)
        }
        Command::TakeTagSet { key } => get(eval_path(script!(TAKE_TAG_SET), &[key], nonce, 0)),
        Command::Lock { key, ttl_ms } => {
            let lock = super::layout::lock_key(key);
            let mut path = eval_path(script!(LOCK), &[&lock], nonce, 24);
            push_num(&mut path, (*ttl_ms).max(1));
            get(path)
        }
        Command::Unlock { key, owner, unlock } => {
            let lock = super::layout::lock_key(key);
            let mut path = eval_path(script!(UNLOCK), &[&lock], nonce, 48);
            path.push('/');
            push_hex(&mut path, &owner.to_be_bytes());
            let (mode, ttl_ms) = match unlock {
                Unlock::Release => ("/r", 0),
                Unlock::Uncacheable { ttl_ms } => ("/h", *ttl_ms),
                Unlock::Exempt { ttl_ms } => ("/x", *ttl_ms),
            };
            path.push_str(mode);
            push_num(&mut path, ttl_ms.max(1));
            get(path)
        }
        Command::Piece { key, start, end } => {
            let mut path = String::with_capacity(key.len() * 3 + 64);
            path.push_str("/GETRANGE/");
            encode_arg(&mut path, key.as_bytes());
            // GETRANGE's end is inclusive.
            for n in [*start, end.saturating_sub(1)] {
                push_num(&mut path, n);
            }
            get(path)
        }
    }
}

/// `/<flags>/<ms>`: which keys of a lookup may take their lock, and for how long (`/-/0`:
/// none).
fn push_locking(path: &mut String, locking: &Option<Locking<'_>>) {
    match locking {
        Some(l) if l.keys.contains(&true) => {
            path.push('/');
            path.extend(l.keys.iter().map(|&k| if k { '1' } else { '0' }));
            push_num(path, l.ttl_ms.max(1));
        }
        _ => path.push_str("/-/0"),
    }
}

/// The KEYS one entry takes in [`SET_ENTRIES_LOOP`].
fn entry_key_count(w: &Write) -> usize {
    let fixed = if w.variant.is_some() { 3 } else { 1 };
    fixed + w.tags.len()
}

/// The PUT body of entries: a lone entry as it is, several copied back to back.
fn entries_body<'w>(writes: &[&'w Write]) -> Cow<'w, [u8]> {
    match writes {
        [w] => Cow::Borrowed(&w.entry),
        _ => Cow::Owned(
            writes
                .iter()
                .flat_map(|w| w.entry.iter().copied())
                .collect(),
        ),
    }
}

/// Classifies the HTTP status of a store answer. Envoy itself answers 503 for a dead store,
/// 504 for a callout past its deadline; Webdis answers 503 when Redis is down, 403 for a
/// command its ACL refuses, which is also its answer to missing or wrong credentials.
fn check_status(status: Option<u16>) -> Result<(), StoreError> {
    match status {
        Some(200) => Ok(()),
        Some(504) => Err(StoreError::Timeout),
        Some(502) | Some(503) => Err(StoreError::Unavailable),
        Some(401) | Some(403) => Err(StoreError::Forbidden),
        Some(s) => Err(StoreError::Status(s)),
        None => Err(StoreError::Garbage),
    }
}

/// The answer to the command sent with `nonce`: the nonce first (another command's answer is a
/// [`StoreError::Mismatch`]), then the shape `expect` says. Anything else is garbage as a
/// whole: a misframed answer can't say which value is whose.
pub fn decode(
    nonce: u64,
    expect: Expect,
    status: Option<u16>,
    body: &[u8],
) -> Result<Answer, StoreError> {
    check_status(status)?;
    if body.first() == Some(&b'-') {
        // A Redis error: a script refused (out of memory, read-only replica, no permission).
        return Err(StoreError::Refused);
    }
    let mut r = Resp { buf: body, at: 0 };
    if expect == Expect::Piece {
        // A plain read's answer carries no nonce: a bare string, or another command's array.
        if body.first() != Some(&b'$') {
            return Err(StoreError::Mismatch);
        }
        let range = r.bulk_range()?.ok_or(StoreError::Garbage)?;
        if r.at != body.len() {
            return Err(StoreError::Garbage);
        }
        return Ok(Answer::Piece(range));
    }
    let elements = match body.first() {
        Some(b'*') => Some(r.header(b'*')?.ok_or(StoreError::Garbage)?),
        _ => None,
    };
    let echoed = r.bulk()?.ok_or(StoreError::Garbage)?;
    if echoed != nonce_text(nonce).as_bytes() {
        return Err(StoreError::Mismatch);
    }
    let answer = match (expect, elements) {
        (Expect::Done, None) => Answer::Done,
        (Expect::Values(n), Some(len)) if len == n + 2 => Answer::Values(r.slots(n)?),
        (Expect::ValuesAndWrites(n), Some(len)) if len == n + 3 => {
            let slots = r.slots(n)?;
            let written = match r.number()? {
                1 => Ok(()),
                0 => Err(StoreError::Refused),
                _ => return Err(StoreError::Garbage),
            };
            Answer::ValuesAndWrites(slots, written)
        }
        (Expect::Count, Some(2)) => Answer::Count(r.number()?),
        (Expect::Members, Some(n)) if n >= 1 => {
            let mut members = Vec::new();
            for _ in 1..n {
                let m = r.bulk()?.ok_or(StoreError::Garbage)?;
                members.push(String::from_utf8(m.to_vec()).map_err(|_| StoreError::Garbage)?);
            }
            Answer::Members(members)
        }
        _ => return Err(StoreError::Garbage),
    };
    if r.at != body.len() {
        return Err(StoreError::Garbage);
    }
    Ok(answer)
}

fn nonce_text(nonce: u64) -> String {
    let mut s = String::with_capacity(16);
    push_hex(&mut s, &nonce.to_be_bytes());
    s
}

/// A RESP reader over an answer: every length checked, nothing trusted.
struct Resp<'b> {
    buf: &'b [u8],
    at: usize,
}

impl<'b> Resp<'b> {
    /// `<kind><digits or -1>\r\n`: the number (`None` for -1).
    fn header(&mut self, kind: u8) -> Result<Option<usize>, StoreError> {
        match self.signed(kind)? {
            -1 => Ok(None),
            n => usize::try_from(n)
                .map(Some)
                .map_err(|_| StoreError::Garbage),
        }
    }

    fn signed(&mut self, kind: u8) -> Result<i64, StoreError> {
        let rest = self.buf.get(self.at..).ok_or(StoreError::Garbage)?;
        let rest = rest.strip_prefix(&[kind]).ok_or(StoreError::Garbage)?;
        let nl = rest
            .iter()
            .take(24)
            .position(|&b| b == b'\r')
            .ok_or(StoreError::Garbage)?;
        if rest.get(nl + 1) != Some(&b'\n') {
            return Err(StoreError::Garbage);
        }
        let digits = &rest[..nl];
        let (neg, abs) = match digits.strip_prefix(b"-") {
            Some(d) => (true, d),
            None => (false, digits),
        };
        if abs.is_empty() || !abs.iter().all(u8::is_ascii_digit) {
            return Err(StoreError::Garbage);
        }
        let v: i64 = std::str::from_utf8(abs)
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or(StoreError::Garbage)?;
        self.at += 1 + nl + 2;
        Ok(if neg { -v } else { v })
    }

    /// A bulk string's bytes (`None` for a nil).
    fn bulk(&mut self) -> Result<Option<&'b [u8]>, StoreError> {
        Ok(self.bulk_range()?.map(|r| &self.buf[r]))
    }

    fn bulk_range(&mut self) -> Result<Option<Range<usize>>, StoreError> {
        let Some(len) = self.header(b'$')? else {
            return Ok(None);
        };
        let start = self.at;
        // Checked: a hostile length must not wrap around into a valid-looking slice.
        let end = start.checked_add(len).ok_or(StoreError::Garbage)?;
        let after = end.checked_add(2).ok_or(StoreError::Garbage)?;
        if self.buf.get(end..after) != Some(b"\r\n") {
            return Err(StoreError::Garbage);
        }
        self.at = after;
        Ok(Some(start..end))
    }

    /// A number: an integer, or (inside an array, where Webdis turns integers into bulk
    /// strings) a bulk string of digits.
    fn number(&mut self) -> Result<u64, StoreError> {
        if self.buf.get(self.at) == Some(&b':') {
            return u64::try_from(self.signed(b':')?).map_err(|_| StoreError::Garbage);
        }
        let digits = self.bulk()?.ok_or(StoreError::Garbage)?;
        parse_digits(digits)
    }

    /// A lookup's slots: the letters saying what each holds, then one bulk string per key.
    fn slots(&mut self, n: usize) -> Result<Vec<Slot>, StoreError> {
        let letters = self.bulk()?.ok_or(StoreError::Garbage)?;
        if letters.len() != n {
            return Err(StoreError::Garbage);
        }
        let mut slots = Vec::with_capacity(n);
        for &letter in letters {
            let range = self.bulk_range()?.ok_or(StoreError::Garbage)?;
            let slot = match letter {
                b'v' if range.is_empty() => Slot::Missing,
                b'v' => Slot::Value(range),
                b'm' if range.is_empty() => Slot::Missing,
                b'L' if range.is_empty() => Slot::Locked,
                b'w' if range.is_empty() => Slot::Fetching,
                b'h' if range.is_empty() => Slot::NoWait(Marker::Uncacheable),
                b'x' if range.is_empty() => Slot::NoWait(Marker::Exempt),
                b'f' if range.is_empty() => Slot::Foreign,
                b'l' => {
                    let slot = &self.buf[range];
                    let colon = slot.iter().position(|&b| b == b':');
                    let (digits, tail) = slot.split_at(colon.ok_or(StoreError::Garbage)?);
                    match (
                        parse_digits(digits)?,
                        <[u8; TAIL_LEN]>::try_from(&tail[1..]),
                    ) {
                        (0, _) => return Err(StoreError::Garbage),
                        (len, Ok(tail)) => Slot::Large { len, tail },
                        // Shorter than any entry's trailer: a string that is not ours.
                        (_, Err(_)) => Slot::Foreign,
                    }
                }
                _ => return Err(StoreError::Garbage),
            };
            slots.push(slot);
        }
        Ok(slots)
    }
}

/// A non-negative decimal number, strictly digits.
fn parse_digits(digits: &[u8]) -> Result<u64, StoreError> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(StoreError::Garbage);
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or(StoreError::Garbage)
}

#[cfg(test)]
#[path = "webdis_tests.rs"]
mod tests;
