//! A scriptable HTTP/1.1 origin for the integration tests and the `make run` demo.
//!
//! `Origin::start()` serves on an ephemeral 127.0.0.1 port, one thread per connection, with
//! keep-alive (Envoy pools upstream connections), until it is dropped. What a response looks
//! like is chosen per request by query parameters, so one origin serves every test:
//!
//! | parameter | effect |
//! |---|---|
//! | `status=N` | status code (default 200) |
//! | `cc=V` | `Cache-Control: V` (replaces a fixed route's own) |
//! | `expires=V`, `vary=V` | `Expires: V`, `Vary: V` |
//! | `header=NAME:VALUE` | adds a header (repeatable) |
//! | `setcookie=1` | `Set-Cookie: a=b` |
//! | `etag=V` | `ETag: V`; a request whose `If-None-Match` lists V (or `*`) gets a 304; `etag=auto` is `"v<per-path count>"`: a new ETag every time, so revalidation gets a 200 |
//! | `last_modified=V` | `Last-Modified: V`; an `If-Modified-Since` equal to V gets a 304 |
//! | `ctype=V` | `Content-Type: V` |
//! | `size=N` | body = [`binary_body`]`(path, N)`: N deterministic bytes, NULs and all byte values |
//! | `echo=NAME` | body = the request's value of header NAME (empty if absent) |
//! | `unique=1` | appends the per-path request counter, repeated counter times (distinct content and length) |
//! | `chunks=K` | `Transfer-Encoding: chunked`, the body split into K chunks, each flushed at once |
//! | `pause_ms=M` | sleep M ms between chunks |
//! | `reset_after=K` | chunked; send K chunks then reset the connection (RST, no 0-chunk) |
//! | `reset_first=K` | as `reset_after`, for the first request of the path only (later ones complete) |
//! | `delay_ms=M` | sleep M ms before sending the headers |
//!
//! Values are percent-decoded (`%20`); a `+` stays a `+`. Without `size`/`echo` the body is a
//! short text naming the request target. Every response carries `Date`, `Server`,
//! `X-Origin-Count` (the per-path counter of this request) and `X-Origin-Seq` (global counter).
//!
//! Fixed routes (query parameters still apply on top): `/hello` (a JSON body,
//! `Cache-Control: public, max-age=60`) and `/stream` (`text/event-stream`, five
//! `data: token N\n\n` chunks 200 ms apart, `Cache-Control: max-age=60`).
//!
//! This file is also compiled on its own by `examples/demo_origin.rs` (`#[path]`): it must only
//! use std and libc.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The body of `/hello`.
pub const HELLO_BODY: &str = "{\"message\":\"hello from the fleet-cache demo origin\"}\n";
/// The chunks of `/stream`, in order.
pub const STREAM_TOKENS: usize = 5;
pub const STREAM_PAUSE_MS: u64 = 200;

/// One request as the origin saw it.
#[derive(Clone, Debug)]
pub struct Request {
    /// 1-based, over all paths.
    pub seq: usize,
    /// 1-based, per path (the value `X-Origin-Count` carries).
    pub count: usize,
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The raw query (without `?`), empty if none.
    pub query: String,
    /// Header names lowercased, in arrival order, repeated names kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the request head was fully read.
    pub at: Instant,
    /// Which connection it came on (0-based, in accept order): equal ids = a reused connection.
    pub conn: u64,
}

impl Request {
    /// First value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// First value of a query parameter, percent-decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        parse_query(&self.query)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// The test origin. Stops (and closes every open connection) on drop.
pub struct Origin {
    port: u16,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

struct State {
    stop: AtomicBool,
    verbose: AtomicBool,
    next_conn: AtomicU64,
    /// Clones of the open connections, to shut them down on drop.
    conns: Mutex<HashMap<u64, TcpStream>>,
    log: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    total: usize,
    counts: HashMap<String, usize>,
    requests: Vec<Request>,
    /// Per request seq: the Instant just before each body chunk was written.
    chunk_times: HashMap<usize, Vec<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking connection thread must not make every later assertion panic too.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Origin {
    /// Starts on an ephemeral 127.0.0.1 port. Panics if it cannot bind.
    pub fn start() -> Origin {
        Origin::start_on(0).expect("test origin: bind 127.0.0.1:0")
    }

    /// Starts on a given 127.0.0.1 port (0 = ephemeral).
    pub fn start_on(port: u16) -> io::Result<Origin> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State {
            stop: AtomicBool::new(false),
            verbose: AtomicBool::new(false),
            next_conn: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            log: Mutex::new(Log::default()),
        });
        let st = state.clone();
        let acceptor = thread::Builder::new()
            .name(format!("origin-{port}-accept"))
            .spawn(move || accept_loop(listener, st))?;
        Ok(Origin {
            port,
            state,
            acceptor: Some(acceptor),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Print one line per request on stderr (for the demo).
    pub fn set_verbose(&self, on: bool) {
        self.state.verbose.store(on, Ordering::Relaxed);
    }

    /// Requests seen for a path (without query; `count("/a")` counts `/a?x=1` too).
    pub fn count(&self, path: &str) -> usize {
        let path = path.split('?').next().unwrap_or(path);
        lock(&self.state.log).counts.get(path).copied().unwrap_or(0)
    }

    /// Requests seen in all.
    pub fn total(&self) -> usize {
        lock(&self.state.log).total
    }

    /// Every request seen for a path (without query), oldest first.
    pub fn requests(&self, path: &str) -> Vec<Request> {
        let path = path.split('?').next().unwrap_or(path);
        lock(&self.state.log)
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Every request seen, oldest first.
    pub fn all_requests(&self) -> Vec<Request> {
        lock(&self.state.log).requests.clone()
    }

    /// The latest request for a path (without query).
    pub fn last_request(&self, path: &str) -> Option<Request> {
        let path = path.split('?').next().unwrap_or(path);
        lock(&self.state.log)
            .requests
            .iter()
            .rev()
            .find(|r| r.path == path)
            .cloned()
    }

    /// For the latest request of a path that had a chunked body: the Instant just before each
    /// chunk was written to the socket (so a client can never receive chunk i before
    /// `chunk_times[i]`). Grows while the response is still streaming.
    pub fn chunk_times(&self, path: &str) -> Vec<Instant> {
        let path = path.split('?').next().unwrap_or(path);
        let log = lock(&self.state.log);
        log.requests
            .iter()
            .rev()
            .find(|r| r.path == path)
            .and_then(|r| log.chunk_times.get(&r.seq).cloned())
            .unwrap_or_default()
    }

    /// Waits until `count(path) >= n` or the timeout passes; returns the final count.
    pub fn wait_count(&self, path: &str, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.count(path);
            if c >= n || Instant::now() >= deadline {
                return c;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept().
        let _ = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(500),
        );
        for (_, c) in lock(&self.state.conns).drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: TcpListener, state: Arc<State>) {
    for stream in listener.incoming() {
        if state.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let id = state.next_conn.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            lock(&state.conns).insert(id, clone);
        }
        let st = state.clone();
        let spawned = thread::Builder::new()
            .name(format!("origin-conn-{id}"))
            .spawn(move || {
                let _ = serve_connection(stream, id, &st);
                lock(&st.conns).remove(&id);
            });
        if spawned.is_err() {
            lock(&state.conns).remove(&id);
        }
    }
}

/// What the connection should do after a response.
enum After {
    KeepAlive,
    Close,
}

fn serve_connection(stream: TcpStream, id: u64, state: &State) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some((method, target, headers)) = read_head(&mut reader)? else {
            return Ok(());
        };
        let body = read_request_body(&mut reader, &headers)?;
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (target.clone(), String::new()),
        };
        let req = {
            let mut log = lock(&state.log);
            log.total += 1;
            let c = log.counts.entry(path.clone()).or_insert(0);
            *c += 1;
            let count = *c;
            let req = Request {
                seq: log.total,
                count,
                method,
                path,
                query,
                headers,
                body,
                at: Instant::now(),
                conn: id,
            };
            log.requests.push(req.clone());
            req
        };
        if state.verbose.load(Ordering::Relaxed) {
            eprintln!(
                "origin: {} {} (#{} for this path)",
                req.method, target, req.count
            );
        }
        match respond(reader.get_mut(), &req, state, id)? {
            After::KeepAlive => {}
            After::Close => return Ok(()),
        }
    }
}

type Head = (String, String, Vec<(String, String)>);

/// Reads a request line and headers. `None` on a clean EOF between requests.
fn read_head(r: &mut BufReader<TcpStream>) -> io::Result<Option<Head>> {
    let mut line = String::new();
    // Tolerate stray CRLFs between requests.
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad request line",
        ));
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok(Some((method, target, headers)))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A chunked body (RFC 9112 §7.1), trailers skipped; also the fake store's reader.
pub fn read_chunked(r: &mut BufReader<TcpStream>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        line.clear();
        r.read_line(&mut line)?;
    }
}

fn read_request_body(
    r: &mut BufReader<TcpStream>,
    headers: &[(String, String)],
) -> io::Result<Vec<u8>> {
    if header(headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        return read_chunked(r);
    }
    let len = header(headers, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// Splits a raw query into percent-decoded (name, value) pairs.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(kv), String::new()),
        })
        .collect()
}

/// Percent-decodes (`%XX`); `+` is left alone. Invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes every byte outside `[A-Za-z0-9_.~-]` (for building query values).
pub fn percent_encode(s: &[u8]) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for &c in s {
        if c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'~') {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// FNV-1a, to derive deterministic bodies from a path.
fn fnv1a(s: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &c in s {
        h ^= c as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `n` bytes of JSON-like text, as an API returns (records with ids, names, prices: it
/// compresses about as well as real JSON), different per path.
pub fn json_body(path: &str, n: usize) -> Vec<u8> {
    let seed = fnv1a(path.as_bytes());
    let mut out = String::with_capacity(n + 128);
    out.push('[');
    let mut i = 0u64;
    while out.len() < n {
        let x = seed.wrapping_add(i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        out.push_str(&format!(
            "{{\"id\":{},\"sku\":\"SKU-{:05}\",\"name\":\"item {}\",\"price\":{}.{:02},\"stock\":{}}},",
            i,
            x % 100_000,
            (x >> 20) % 997,
            (x >> 30) % 500,
            (x >> 40) % 100,
            (x >> 50) % 40
        ));
        i += 1;
    }
    out.truncate(n);
    out.into_bytes()
}

/// `n` bytes that do not compress (xorshift), different per path.
pub fn noise_body(path: &str, n: usize) -> Vec<u8> {
    let mut x = fnv1a(path.as_bytes()) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The body `size=N` produces for `path` (without query): deterministic, different per path,
/// each aligned block of 256 bytes holds every byte value once (so any body of 256 bytes or
/// more contains all values), and there is a NUL within the first `min(N, 256)` bytes.
pub fn binary_body(path: &str, n: usize) -> Vec<u8> {
    let seed = fnv1a(path.as_bytes());
    let mul = ((seed >> 8) as u8) | 1; // odd: x -> x*mul is a bijection mod 256
    let step = ((seed >> 16) as u8) | 1;
    let nul_at = (seed >> 24) as usize % n.clamp(1, 256);
    // offset such that i = nul_at maps to 0 in block 0
    let offset = 0u8.wrapping_sub((nul_at as u8).wrapping_mul(mul));
    (0..n)
        .map(|i| {
            let block = (i / 256) as u8;
            ((i % 256) as u8)
                .wrapping_mul(mul)
                .wrapping_add(offset)
                .wrapping_add(block.wrapping_mul(step))
        })
        .collect()
}

/// The default text body for a request target.
pub fn text_body(target: &str) -> String {
    format!("origin response for {target}\n")
}

/// What `unique=1` appends for per-path counter `n`.
pub fn unique_suffix(n: usize) -> String {
    let mut s = String::from("unique:");
    for _ in 0..n {
        s.push_str(&format!(" {n}"));
    }
    s.push('\n');
    s
}

/// Splits `body` into `k` nearly equal non-empty parts (fewer if the body is shorter than k).
pub fn split_body(body: &[u8], k: usize) -> Vec<Vec<u8>> {
    let k = k.max(1);
    if body.is_empty() {
        return Vec::new();
    }
    let size = body.len().div_ceil(k);
    body.chunks(size).map(|c| c.to_vec()).collect()
}

/// An RFC 9110 IMF-fixdate.
pub fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, rem / 60 % 60, rem % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if mo <= 2 { 1 } else { 0 };
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MO: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WD[days.rem_euclid(7) as usize],
        d,
        MO[(mo - 1) as usize],
        y,
        h,
        m,
        s
    )
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// The response a request asks for.
struct Plan {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send chunked, in these parts.
    parts: Option<Vec<Vec<u8>>>,
    pause: Duration,
    /// Send this many parts, then reset.
    reset_after: Option<usize>,
    delay: Duration,
}

fn plan(req: &Request) -> Plan {
    let target = if req.query.is_empty() {
        req.path.clone()
    } else {
        format!("{}?{}", req.path, req.query)
    };
    let mut p = Plan {
        status: 200,
        headers: Vec::new(),
        body: text_body(&target).into_bytes(),
        parts: None,
        pause: Duration::ZERO,
        reset_after: None,
        delay: Duration::ZERO,
    };
    let mut ctype = "text/plain; charset=utf-8".to_string();
    let mut cc: Option<String> = None;
    // Fixed routes first; query parameters apply on top.
    match req.path.as_str() {
        "/hello" => {
            ctype = "application/json".into();
            cc = Some("public, max-age=60".into());
            p.body = HELLO_BODY.as_bytes().to_vec();
        }
        "/stream" => {
            ctype = "text/event-stream".into();
            cc = Some("max-age=60".into());
            let parts: Vec<Vec<u8>> = (1..=STREAM_TOKENS)
                .map(|i| format!("data: token {i}\n\n").into_bytes())
                .collect();
            p.body = parts.concat();
            p.parts = Some(parts);
            p.pause = Duration::from_millis(STREAM_PAUSE_MS);
        }
        _ => {}
    }
    let params = parse_query(&req.query);
    let num = |v: &str| v.trim().parse::<u64>().unwrap_or(0);
    let mut chunks: Option<usize> = None;
    let mut unique = false;
    let mut extra = Vec::new();
    for (k, v) in &params {
        match k.as_str() {
            "status" => p.status = num(v).clamp(100, 999) as u16,
            "cc" => cc = Some(v.clone()),
            "expires" => extra.push(("Expires".to_string(), v.clone())),
            "vary" => extra.push(("Vary".to_string(), v.clone())),
            "header" => {
                if let Some((n, val)) = v.split_once(':') {
                    extra.push((n.trim().to_string(), val.trim().to_string()));
                }
            }
            "setcookie" if v == "1" => extra.push(("Set-Cookie".into(), "a=b".into())),
            "etag" if v == "auto" => extra.push(("ETag".into(), format!("\"v{}\"", req.count))),
            "etag" => extra.push(("ETag".into(), v.clone())),
            "last_modified" => extra.push(("Last-Modified".into(), v.clone())),
            "ctype" => ctype = v.clone(),
            "size" => {
                p.body = binary_body(&req.path, num(v) as usize);
                ctype = "application/octet-stream".into();
            }
            "noise" => {
                p.body = noise_body(&req.path, num(v) as usize);
                ctype = "application/octet-stream".into();
            }
            "json" => {
                p.body = json_body(&req.path, num(v) as usize);
                ctype = "application/json".into();
            }
            "echo" => p.body = req.header(v).unwrap_or("").as_bytes().to_vec(),
            "unique" if v == "1" => unique = true,
            "chunks" => chunks = Some(num(v).max(1) as usize),
            "pause_ms" => p.pause = Duration::from_millis(num(v)),
            "reset_after" => p.reset_after = Some(num(v) as usize),
            "reset_first" if req.count == 1 => p.reset_after = Some(num(v) as usize),
            "delay_ms" => p.delay = Duration::from_millis(num(v)),
            _ => {}
        }
    }
    if unique {
        p.body
            .extend_from_slice(unique_suffix(req.count).as_bytes());
        if p.parts.is_some() && chunks.is_none() {
            chunks = Some(p.parts.as_ref().map_or(1, |v| v.len()));
        }
    }
    if let Some(k) = chunks {
        p.parts = Some(split_body(&p.body, k));
    }
    if let Some(k) = p.reset_after {
        let have = p.parts.as_ref().map_or(0, |v| v.len());
        if have <= k {
            p.parts = Some(split_body(&p.body, k + 1));
        }
    }
    // Conditional requests.
    let auto_etag = format!("\"v{}\"", req.count);
    let etag = params.iter().find(|(k, _)| k == "etag").map(|(_, v)| {
        if v == "auto" {
            auto_etag.as_str()
        } else {
            v.as_str()
        }
    });
    let lm = params
        .iter()
        .find(|(k, _)| k == "last_modified")
        .map(|(_, v)| v.as_str());
    let inm_hit = match (etag, req.header("if-none-match")) {
        (Some(e), Some(inm)) => inm.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t == e || t.trim_start_matches("W/") == e.trim_start_matches("W/")
        }),
        _ => false,
    };
    let ims_hit = req.header("if-none-match").is_none()
        && matches!((lm, req.header("if-modified-since")), (Some(l), Some(ims)) if l == ims);
    if p.status == 200 && (inm_hit || ims_hit) {
        p.status = 304;
    }

    p.headers
        .push(("Date".into(), http_date(SystemTime::now())));
    p.headers
        .push(("Server".into(), "fleet-cache-test-origin".into()));
    p.headers.push(("Content-Type".into(), ctype));
    if let Some(cc) = cc {
        p.headers.push(("Cache-Control".into(), cc));
    }
    p.headers.extend(extra);
    p.headers
        .push(("X-Origin-Count".into(), req.count.to_string()));
    p.headers.push(("X-Origin-Seq".into(), req.seq.to_string()));
    p
}

fn respond(s: &mut TcpStream, req: &Request, state: &State, id: u64) -> io::Result<After> {
    let p = plan(req);
    if !p.delay.is_zero() {
        thread::sleep(p.delay);
    }
    let client_close = req
        .header("connection")
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
    let no_body = req.method.eq_ignore_ascii_case("HEAD")
        || p.status == 204
        || p.status == 304
        || (100..200).contains(&p.status);
    let mut head = format!("HTTP/1.1 {} {}\r\n", p.status, reason(p.status));
    for (n, v) in &p.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if client_close {
        head.push_str("Connection: close\r\n");
    }
    let after = if client_close {
        After::Close
    } else {
        After::KeepAlive
    };

    let chunked = p.parts.is_some() && !no_body;
    if !chunked {
        if p.status != 204 && p.status != 304 && !(100..200).contains(&p.status) {
            head.push_str(&format!("Content-Length: {}\r\n", p.body.len()));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if !no_body {
            out.extend_from_slice(&p.body);
        }
        s.write_all(&out)?;
        s.flush()?;
        return Ok(after);
    }

    head.push_str("Transfer-Encoding: chunked\r\n\r\n");
    s.write_all(head.as_bytes())?;
    s.flush()?;
    let parts = p.parts.unwrap_or_default();
    lock(&state.log).chunk_times.insert(req.seq, Vec::new());
    for (i, part) in parts.iter().enumerate() {
        if p.reset_after == Some(i) {
            reset(s, state, id);
            return Ok(After::Close);
        }
        if i > 0 && !p.pause.is_zero() {
            thread::sleep(p.pause);
        }
        let mut frame = format!("{:x}\r\n", part.len()).into_bytes();
        frame.extend_from_slice(part);
        frame.extend_from_slice(b"\r\n");
        if let Some(v) = lock(&state.log).chunk_times.get_mut(&req.seq) {
            v.push(Instant::now());
        }
        s.write_all(&frame)?;
        s.flush()?;
    }
    if p.reset_after.is_some() {
        reset(s, state, id);
        return Ok(After::Close);
    }
    s.write_all(b"0\r\n\r\n")?;
    s.flush()?;
    Ok(after)
}

/// Aborts the connection: SO_LINGER 0 makes the close send a RST; the clone kept for Drop is
/// released first so this close is the last one.
fn reset(s: &TcpStream, state: &State, id: u64) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid fd and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    lock(&state.conns).remove(&id);
    // The caller returns After::Close and the stream is dropped (closed) right after.
}
