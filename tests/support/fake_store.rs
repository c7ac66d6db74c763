//! A scriptable fake store for the fault tests (tests/store_faults.rs): an HTTP/1.1 server on
//! 127.0.0.1 that sits between Envoy's store cluster and the real Webdis. In [`Mode::Proxy`] it
//! relays each request to Webdis and Webdis' answer back; the other modes answer with a fault
//! instead: a body that stalls, drips, never ends, is huge, is cut off, an error status,
//! garbage, or an answer meant for another request. The mode can be switched at any time and
//! applies to every request read after the switch, or only to those of one method (the
//! filter's lookups are GETs, its writes PUTs), the others being relayed.
//!
//! std only: one thread per connection, with keep-alive (Envoy pools its callout connections
//! and sends many requests on each). Any I/O error (the peer closed or reset, a broken pipe)
//! ends that connection's thread; nothing here panics on one. Drop closes the listener and
//! every socket, and joins every thread.
//!
//! Start it before the stack (the stack needs its port), then give it Webdis' port:
//! `let fake = FakeStore::start(); ...Stack::start(opts with store_port: Some(fake.port()));
//! fake.set_upstream(st.webdis_port());`. A request relayed before that waits for it (5 s).

use super::origin::read_chunked;
use std::collections::{HashMap, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How each request read from now on is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Relay to Webdis and back (the default).
    Proxy,
    /// No answer at all, until the peer closes (a store that times out before answering: the
    /// control case, which the filter has always survived).
    Silent,
    /// `200` with `Content-Length: DRIP_LENGTH`, then one byte every 50 ms until the peer
    /// closes: the answer has started and never finishes.
    DripAfterHeaders,
    /// `200` with a `Content-Length`, then nothing until the peer closes.
    StallAfterHeaders,
    /// A well-framed `200` whose body is `len` bytes, written as fast as the peer reads. With
    /// `resp` the body is one valid RESP bulk string (`$<n>\r\n` + n bytes + `\r\n`) of that
    /// total size, so only its size is wrong.
    Oversized { len: usize, resp: bool },
    /// `Transfer-Encoding: chunked`, 64 KiB chunks, forever (until the peer closes).
    EndlessChunks,
    /// `Content-Length: 1000`, 10 bytes of body, then the socket is closed.
    CloseMidBody,
    /// This status with a short text body (keep-alive).
    Status(u16),
    /// `200` with a body Webdis would never send, cycling through random bytes, plain text and
    /// truncated RESP (keep-alive).
    Garbage,
    /// Relay to Webdis, but answer each request with Webdis' answer to the request relayed
    /// before it (over all connections): answers arrive for the wrong command. Set with
    /// `set_mode_for(method, Swap)`, the answer is that of the previous request of the method
    /// (e.g. lookups get other lookups' answers, which are other keys' entries).
    Swap,
}

/// The `Content-Length` the drip and stall answers announce (never reached).
pub const DRIP_LENGTH: usize = 10 * 1024 * 1024;
const DRIP_EVERY: Duration = Duration::from_millis(50);
const CHUNK: usize = 64 * 1024;
/// How often blocked loops look at the stop flag.
const POLL: Duration = Duration::from_millis(50);
const UPSTREAM_WAIT: Duration = Duration::from_secs(5);
const UPSTREAM_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How many request lines `recent()` keeps.
const RECENT: usize = 32;

pub struct FakeStore {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    mode: Mutex<Mode>,
    /// Apply `mode` only to requests with this method; relay the others.
    only_method: Mutex<Option<String>>,
    upstream: Mutex<Option<u16>>,
    stop: AtomicBool,
    requests: AtomicUsize,
    faulted: AtomicUsize,
    upstream_errors: AtomicUsize,
    /// Fault answers still being written or held open (drip, stall, endless, oversized).
    open_faults: AtomicUsize,
    /// Swap mode: Webdis' latest answer, under "" and under its request's method (kept in
    /// Proxy mode too, so the first swapped request already gets another request's answer).
    last_answers: Mutex<HashMap<String, Vec<u8>>>,
    /// Swap answers that differ from what Webdis answered to the request itself.
    swapped_other: AtomicUsize,
    recent: Mutex<VecDeque<String>>,
    /// Clones of every open socket (client and upstream), shut down on drop to unblock reads.
    sockets: Mutex<HashMap<u64, TcpStream>>,
    next_id: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A connection thread that panicked anyway must not poison every later call.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeStore {
    /// Listens on a free 127.0.0.1 port, in `Mode::Proxy`, with no upstream yet.
    pub fn start() -> FakeStore {
        let listener = TcpListener::bind("127.0.0.1:0").expect("fake store: bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        // Non-blocking accept polled against the stop flag: Drop never depends on waking it.
        listener.set_nonblocking(true).expect("set_nonblocking");
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Proxy),
            only_method: Mutex::new(None),
            upstream: Mutex::new(None),
            stop: AtomicBool::new(false),
            requests: AtomicUsize::new(0),
            faulted: AtomicUsize::new(0),
            upstream_errors: AtomicUsize::new(0),
            open_faults: AtomicUsize::new(0),
            last_answers: Mutex::new(HashMap::new()),
            swapped_other: AtomicUsize::new(0),
            recent: Mutex::new(VecDeque::new()),
            sockets: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let acceptor = thread::Builder::new()
            .name(format!("fake-store-{port}"))
            .spawn(move || accept_loop(listener, sh))
            .expect("spawn fake store acceptor");
        FakeStore {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where `Proxy` and `Swap` relay to: Webdis' port.
    pub fn set_upstream(&self, webdis_port: u16) {
        *lock(&self.shared.upstream) = Some(webdis_port);
    }

    /// `mode` for every request from now on.
    pub fn set_mode(&self, mode: Mode) {
        self.set(mode, None);
    }

    /// `mode` for the requests with this method (`"GET"`: the filter's lookups, `"PUT"`: its
    /// writes) from now on; the others are relayed.
    pub fn set_mode_for(&self, method: &str, mode: Mode) {
        self.set(mode, Some(method.to_string()));
    }

    fn set(&self, mode: Mode, method: Option<String>) {
        // Both under the mode's lock: a request never sees one without the other.
        let mut m = lock(&self.shared.mode);
        *lock(&self.shared.only_method) = method;
        *m = mode;
    }

    pub fn mode(&self) -> Mode {
        lock(&self.shared.mode).clone()
    }

    /// Requests read so far, all modes.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests answered with a fault (any mode but `Proxy`; `Swap` counts too).
    pub fn faulted(&self) -> usize {
        self.shared.faulted.load(Ordering::SeqCst)
    }

    /// Swap answers that were not Webdis' answer to the request itself.
    pub fn swapped_other(&self) -> usize {
        self.shared.swapped_other.load(Ordering::SeqCst)
    }

    /// Relays that failed on the Webdis side (answered 502 by the fake store itself).
    pub fn upstream_errors(&self) -> usize {
        self.shared.upstream_errors.load(Ordering::SeqCst)
    }

    /// Fault answers still in progress: a drip, stall or endless answer lasts until Envoy
    /// closes the connection, i.e. until it has given up on that callout.
    pub fn open_faults(&self) -> usize {
        self.shared.open_faults.load(Ordering::SeqCst)
    }

    /// Waits until no fault answer is in progress (Envoy has resolved every faulted callout);
    /// returns whether that happened within `timeout`.
    pub fn wait_faults_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.open_faults() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// The latest request lines with the mode that answered them, oldest first (diagnostics).
    pub fn recent(&self) -> Vec<String> {
        lock(&self.shared.recent).iter().cloned().collect()
    }

    /// A one-paragraph summary for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "fake store: mode {:?} for {:?}, {} requests, {} faulted ({} open, {} swapped for \
             another answer), {} upstream errors; recent:\n  {}",
            self.mode(),
            lock(&self.shared.only_method)
                .as_deref()
                .unwrap_or("all methods"),
            self.requests(),
            self.faulted(),
            self.open_faults(),
            self.swapped_other(),
            self.upstream_errors(),
            self.recent().join("\n  ")
        )
    }
}

impl Drop for FakeStore {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        for (_, s) in lock(&self.shared.sockets).drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let threads: Vec<_> = lock(&self.shared.threads).drain(..).collect();
        for h in threads {
            let _ = h.join();
        }
    }
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Remembers a clone of `s` for Drop; returns its id for `forget`.
    fn track(&self, s: &TcpStream) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(c) = s.try_clone() {
            lock(&self.sockets).insert(id, c);
        }
        // A socket opened after Drop drained the registry would never be shut down.
        if self.stopping() {
            let _ = s.shutdown(Shutdown::Both);
        }
        id
    }

    fn forget(&self, id: u64) {
        lock(&self.sockets).remove(&id);
    }
}

fn accept_loop(listener: TcpListener, sh: Arc<Shared>) {
    while !sh.stopping() {
        match listener.accept() {
            Ok((stream, _)) => {
                let sh2 = sh.clone();
                let conn = move || {
                    let id = sh2.track(&stream);
                    // An error only ends this connection: the peer is gone or broke framing.
                    let _ = serve(stream, &sh2);
                    sh2.forget(id);
                };
                let spawned = thread::Builder::new()
                    .name("fake-store-conn".into())
                    .spawn(conn);
                if let Ok(h) = spawned {
                    let mut threads = lock(&sh.threads);
                    threads.retain(|t| !t.is_finished());
                    threads.push(h);
                }
            }
            // WouldBlock: nothing to accept yet; anything else: try again all the same.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 framing (both sides)

struct Message {
    /// The request line or status line.
    first: String,
    /// Names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn wants_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    /// The message re-framed with `Content-Length` (hop-by-hop headers dropped).
    fn to_bytes(&self, with_length: bool) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.first);
        for (n, v) in &self.headers {
            if !matches!(
                n.as_str(),
                "content-length" | "transfer-encoding" | "connection" | "keep-alive"
            ) {
                out.push_str(&format!("{n}: {v}\r\n"));
            }
        }
        if with_length {
            out.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        out.push_str("\r\n");
        let mut b = out.into_bytes();
        b.extend_from_slice(&self.body);
        b
    }
}

/// Reads one message: `Ok(None)` on a clean EOF before its first byte. `response` selects the
/// body rule for a message with neither length nor chunking (a request has none; a response
/// runs to EOF).
fn read_message(r: &mut BufReader<TcpStream>, response: bool) -> io::Result<Option<Message>> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let first = line.trim_end().to_string();
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
    let mut m = Message {
        first,
        headers,
        body: Vec::new(),
    };
    if m.header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        m.body = read_chunked(r)?;
    } else if let Some(len) = m.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
        m.body = vec![0; len];
        r.read_exact(&mut m.body)?;
    } else if response {
        r.read_to_end(&mut m.body)?;
    }
    Ok(Some(m))
}

// ---------------------------------------------------------------------------------------------
// Serving

/// Serves one client connection until it closes, an I/O error, a fault that ends it, or stop.
fn serve(client: TcpStream, sh: &Shared) -> io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_nodelay(true)?;
    let mut upstream = Upstream::default();
    let result = serve_requests(BufReader::new(client), &mut upstream, sh);
    // Also after an error: the Webdis connection must not outlive its client connection.
    upstream.close(sh);
    result
}

fn serve_requests(
    mut r: BufReader<TcpStream>,
    upstream: &mut Upstream,
    sh: &Shared,
) -> io::Result<()> {
    while !sh.stopping() {
        let Some(req) = read_message(&mut r, false)? else {
            break;
        };
        let n = sh.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let method = req.first.split(' ').next().unwrap_or("").to_string();
        // The mode for this request, and the key of the answer Swap mode hands it.
        let (mode, swap_key) = {
            let m = lock(&sh.mode);
            match lock(&sh.only_method).clone() {
                Some(only) if only != method => (Mode::Proxy, String::new()),
                only => (m.clone(), only.unwrap_or_default()),
            }
        };
        {
            let mut recent = lock(&sh.recent);
            if recent.len() == RECENT {
                recent.pop_front();
            }
            // Request lines carry whole Lua scripts: their start says enough.
            let line: String = req.first.chars().take(100).collect();
            recent.push_back(format!("#{n} {line} -> {mode:?}"));
        }
        if mode != Mode::Proxy {
            sh.faulted.fetch_add(1, Ordering::SeqCst);
        }
        let keep = match mode {
            Mode::Proxy => {
                let answer = upstream.relay(&req, sh);
                let mut last = lock(&sh.last_answers);
                last.insert(String::new(), answer.clone());
                last.insert(method, answer.clone());
                drop(last);
                r.get_mut().write_all(&answer)?;
                true
            }
            Mode::Swap => {
                let answer = upstream.relay(&req, sh);
                let prev = {
                    let mut last = lock(&sh.last_answers);
                    let prev = last.get(&swap_key).cloned();
                    last.insert(String::new(), answer.clone());
                    last.insert(method, answer.clone());
                    prev
                };
                let sent = prev.unwrap_or(answer.clone());
                if sent != answer {
                    sh.swapped_other.fetch_add(1, Ordering::SeqCst);
                }
                r.get_mut().write_all(&sent)?;
                true
            }
            fault => {
                sh.open_faults.fetch_add(1, Ordering::SeqCst);
                let kept = answer_fault(&mut r, &fault, n, sh);
                sh.open_faults.fetch_sub(1, Ordering::SeqCst);
                kept?
            }
        };
        if !keep || req.wants_close() {
            break;
        }
    }
    Ok(())
}

/// The per-client-connection connection to Webdis (opened on first use, reopened if stale).
#[derive(Default)]
struct Upstream {
    conn: Option<(u64, BufReader<TcpStream>)>,
}

impl Upstream {
    /// Webdis' answer to `req`, re-framed with `Content-Length`; a 502 if Webdis can't be had.
    fn relay(&mut self, req: &Message, sh: &Shared) -> Vec<u8> {
        // A pooled connection Webdis has closed fails at once: one retry on a fresh one.
        for _ in 0..2 {
            match self.try_relay(req, sh) {
                Ok(Some(m)) => {
                    if m.wants_close() {
                        self.close(sh);
                    }
                    return m.to_bytes(true);
                }
                Ok(None) | Err(_) => self.close(sh),
            }
        }
        sh.upstream_errors.fetch_add(1, Ordering::SeqCst);
        eprintln!("fake store: relaying {:?} to Webdis failed", req.first);
        let body = b"fake store: Webdis unreachable\n";
        let mut out = format!(
            "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    }

    fn try_relay(&mut self, req: &Message, sh: &Shared) -> io::Result<Option<Message>> {
        if self.conn.is_none() {
            let port = wait_upstream(sh)?;
            let s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(UPSTREAM_READ_TIMEOUT))?;
            let id = sh.track(&s);
            self.conn = Some((id, BufReader::new(s)));
        }
        let (_, r) = self.conn.as_mut().expect("just opened");
        let with_length = !req.body.is_empty() || req.first.starts_with("PUT ");
        r.get_mut().write_all(&req.to_bytes(with_length))?;
        read_message(r, true)
    }

    fn close(&mut self, sh: &Shared) {
        if let Some((id, r)) = self.conn.take() {
            let _ = r.get_ref().shutdown(Shutdown::Both);
            sh.forget(id);
        }
    }
}

fn wait_upstream(sh: &Shared) -> io::Result<u16> {
    let deadline = Instant::now() + UPSTREAM_WAIT;
    loop {
        if let Some(p) = *lock(&sh.upstream) {
            return Ok(p);
        }
        if Instant::now() >= deadline || sh.stopping() {
            return Err(io::Error::other(
                "no upstream port set (FakeStore::set_upstream)",
            ));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Answers with a fault; returns whether the connection can carry another request.
fn answer_fault(
    r: &mut BufReader<TcpStream>,
    mode: &Mode,
    n: usize,
    sh: &Shared,
) -> io::Result<bool> {
    let head = |extra: &str| format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n{extra}\r\n");
    match mode {
        Mode::DripAfterHeaders => {
            let s = r.get_mut();
            s.write_all(head(&format!("content-length: {DRIP_LENGTH}\r\n")).as_bytes())?;
            for _ in 0..DRIP_LENGTH {
                if sh.stopping() {
                    break;
                }
                thread::sleep(DRIP_EVERY);
                // Fails once the peer has closed (the write after the one that drew an RST).
                s.write_all(b"x")?;
            }
            Ok(false)
        }
        Mode::Silent => {
            wait_for_close(r, sh);
            Ok(false)
        }
        Mode::StallAfterHeaders => {
            let head = head(&format!("content-length: {DRIP_LENGTH}\r\n"));
            r.get_mut().write_all(head.as_bytes())?;
            wait_for_close(r, sh);
            Ok(false)
        }
        Mode::Oversized { len, resp } => {
            let s = r.get_mut();
            s.write_all(head(&format!("content-length: {len}\r\n")).as_bytes())?;
            let mut left = *len;
            if *resp {
                // `$<n>\r\n` + n bytes + `\r\n` = len bytes in all.
                let mut digits = 1;
                let n_payload = loop {
                    let n = len.saturating_sub(digits + 5);
                    if n.to_string().len() == digits {
                        break n;
                    }
                    digits += 1;
                };
                let prefix = format!("${n_payload}\r\n");
                s.write_all(prefix.as_bytes())?;
                left -= prefix.len();
            }
            let tail: &[u8] = if *resp { b"\r\n" } else { b"" };
            let filler = [b'x'; CHUNK];
            while left > tail.len() && !sh.stopping() {
                let k = (left - tail.len()).min(CHUNK);
                s.write_all(&filler[..k])?;
                left -= k;
            }
            s.write_all(&tail[..left.min(tail.len())])?;
            Ok(true)
        }
        Mode::EndlessChunks => {
            let s = r.get_mut();
            s.write_all(head("transfer-encoding: chunked\r\n").as_bytes())?;
            let mut chunk = format!("{CHUNK:x}\r\n").into_bytes();
            chunk.extend_from_slice(&[b'x'; CHUNK]);
            chunk.extend_from_slice(b"\r\n");
            while !sh.stopping() {
                s.write_all(&chunk)?;
            }
            Ok(false)
        }
        Mode::CloseMidBody => {
            let s = r.get_mut();
            s.write_all(head("content-length: 1000\r\n").as_bytes())?;
            s.write_all(b"xxxxxxxxxx")?;
            let _ = s.shutdown(Shutdown::Both);
            Ok(false)
        }
        Mode::Status(code) => {
            let body = format!("fake store: injected {code}\n");
            let out = format!(
                "HTTP/1.1 {code} Injected\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            r.get_mut().write_all(out.as_bytes())?;
            Ok(true)
        }
        Mode::Garbage => {
            let body = garbage(n);
            let mut out = head(&format!("content-length: {}\r\n", body.len())).into_bytes();
            out.extend_from_slice(&body);
            r.get_mut().write_all(&out)?;
            Ok(true)
        }
        Mode::Proxy | Mode::Swap => unreachable!("relayed, not a fault"),
    }
}

/// Reads (and drops) whatever the peer sends until it closes, an error, or stop.
fn wait_for_close(r: &mut BufReader<TcpStream>, sh: &Shared) {
    if r.get_ref().set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while !sh.stopping() {
        match r.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// Request n's garbage: random bytes, plain text or truncated RESP, in turn.
fn garbage(n: usize) -> Vec<u8> {
    match n % 3 {
        0 => {
            // xorshift64, seeded from the clock: no dependency for a few random bytes.
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            let mut x = nanos | 1;
            (0..256)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        }
        1 => b"fake store: this is not RESP at all\n".to_vec(),
        _ => b"*2\r\n$100\r\nonly a few bytes of the promised hundred".to_vec(),
    }
}
