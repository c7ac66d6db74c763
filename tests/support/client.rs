//! A small blocking HTTP/1.1 client over `TcpStream`, enough for the tests: one request per
//! connection, `Content-Length`, chunked and close-delimited bodies, the arrival time of every
//! piece of the body, and truncated responses reported as such instead of as errors.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long any single read may block before the request fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A complete (or truncated: see `complete`) response.
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    /// Lowercased names; every value of a repeated header, in order.
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: Vec<u8>,
    /// False if the connection ended (EOF or reset) before the message did.
    pub complete: bool,
}

impl Resp {
    /// First value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .and_then(|v| v.first())
            .map(|s| s.as_str())
    }

    /// Every value of a header.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(|v| v.iter().map(|s| s.as_str()).collect())
            .unwrap_or_default()
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.headers.contains_key(&name.to_ascii_lowercase())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A response read piece by piece: each body piece with the Instant the read that completed it
/// returned (one piece per HTTP chunk for chunked bodies, per socket read otherwise).
#[derive(Clone, Debug)]
pub struct StreamResp {
    pub status: u16,
    pub headers: BTreeMap<String, Vec<String>>,
    pub chunks: Vec<(Instant, Vec<u8>)>,
    pub complete: bool,
    /// When the request was written.
    pub sent_at: Instant,
    /// When the response head was complete.
    pub headers_at: Instant,
}

impl StreamResp {
    pub fn body(&self) -> Vec<u8> {
        self.chunks
            .iter()
            .flat_map(|(_, c)| c.iter().copied())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .and_then(|v| v.first())
            .map(|s| s.as_str())
    }

    pub fn into_resp(self) -> Resp {
        let body = self.body();
        Resp {
            status: self.status,
            headers: self.headers,
            body,
            complete: self.complete,
        }
    }
}

/// Sends one request to 127.0.0.1:`port` and reads the whole response. `Host: localhost` and
/// `Connection: close` are added unless given; `Content-Length` is added when there is a body
/// or the method is PUT/POST/PATCH. Fails only if no response head arrives.
pub fn request(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Resp> {
    request_streaming(port, method, target, headers, body).map(StreamResp::into_resp)
}

/// Like [`request`], keeping the arrival time of every body piece.
pub fn request_streaming(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<StreamResp> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    let has = |n: &str| headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(n));
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    if !has("host") {
        head.push_str("Host: localhost\r\n");
    }
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !has("content-length")
        && !has("transfer-encoding")
        && (!body.is_empty() || matches!(method, "PUT" | "POST" | "PATCH"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if !has("connection") {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    s.write_all(&out)?;
    let sent_at = Instant::now();
    read_response(s, method.eq_ignore_ascii_case("HEAD"), sent_at)
}

struct Reader {
    s: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    /// The connection failed (e.g. reset) rather than ending cleanly.
    failed: bool,
    last: Instant,
}

impl Reader {
    /// Reads more bytes; false at EOF or on a connection error (reset).
    fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut tmp = [0u8; 65536];
        match self.s.read(&mut tmp) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            Err(_) => {
                self.eof = true;
                self.failed = true;
                false
            }
            Ok(n) => {
                self.last = Instant::now();
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// A CRLF-terminated line (without the CRLF), or None at EOF.
    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.avail().windows(2).position(|w| w == b"\r\n") {
                let l = String::from_utf8_lossy(&self.avail()[..i]).into_owned();
                self.pos += i + 2;
                return Some(l);
            }
            if !self.fill() {
                return None;
            }
        }
    }
}

fn read_response(s: TcpStream, head_request: bool, sent_at: Instant) -> io::Result<StreamResp> {
    let mut r = Reader {
        s,
        buf: Vec::new(),
        pos: 0,
        eof: false,
        failed: false,
        last: Instant::now(),
    };
    let (status, headers) = loop {
        let status_line = r.line().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            )
        })?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, status_line.clone()))?;
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        loop {
            let l = r.line().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside headers",
                )
            })?;
            if l.is_empty() {
                break;
            }
            if let Some((n, v)) = l.split_once(':') {
                headers
                    .entry(n.trim().to_ascii_lowercase())
                    .or_default()
                    .push(v.trim().to_string());
            }
        }
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        break (status, headers);
    };
    let headers_at = r.last;
    let mut out = StreamResp {
        status,
        headers,
        chunks: Vec::new(),
        complete: false,
        sent_at,
        headers_at,
    };
    let first =
        |h: &BTreeMap<String, Vec<String>>, n: &str| h.get(n).and_then(|v| v.first()).cloned();
    if head_request || status == 204 || status == 304 {
        out.complete = true;
        return Ok(out);
    }
    let chunked = first(&out.headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let Some(size_line) = r.line() else {
                return Ok(out);
            };
            let Ok(size) =
                usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            else {
                return Ok(out);
            };
            if size == 0 {
                // Trailers until the empty line.
                loop {
                    match r.line() {
                        Some(l) if l.is_empty() => break,
                        Some(_) => continue,
                        None => return Ok(out),
                    }
                }
                out.complete = true;
                return Ok(out);
            }
            while r.avail().len() < size + 2 {
                if !r.fill() {
                    // Truncated inside a chunk: keep what arrived.
                    let part = r.avail()[..r.avail().len().min(size)].to_vec();
                    if !part.is_empty() {
                        out.chunks.push((r.last, part));
                    }
                    return Ok(out);
                }
            }
            let data = r.avail()[..size].to_vec();
            r.pos += size + 2;
            out.chunks.push((r.last, data));
        }
    }
    if let Some(len) = first(&out.headers, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        let mut got = 0;
        loop {
            let take = r.avail().len().min(len - got);
            if take > 0 {
                let data = r.avail()[..take].to_vec();
                r.pos += take;
                got += take;
                out.chunks.push((r.last, data));
            }
            if got == len {
                out.complete = true;
                return Ok(out);
            }
            if !r.fill() {
                return Ok(out);
            }
        }
    }
    // Close-delimited.
    loop {
        if !r.avail().is_empty() {
            let data = r.avail().to_vec();
            r.pos = r.buf.len();
            out.chunks.push((r.last, data));
        }
        if !r.fill() {
            out.complete = !r.failed;
            return Ok(out);
        }
    }
}
