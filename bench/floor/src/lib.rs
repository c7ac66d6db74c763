//! The proxy-wasm floor (`make bench`, case 3w): an HTTP filter that answers every request
//! itself with `send_http_response`, a body the size the path names (`/f/1k` → 1024 bytes,
//! `/f/64k` → 65536, `/f/1m` → 1048576), and nothing else. No configuration, no callouts, no
//! cache: what any proxy-wasm filter pays to answer a request locally in Envoy.
//!
//! With the plugin configuration `cache-hit` (case 3c) it makes the host calls any cache hit makes and nothing more: all
//! request headers read (a cache key and the request's directives need them), the clock read
//! (freshness), and a reply with the headers a replayed response carries (those of the
//! bench's nginx origin, plus `age`, `date` and `cache-status`). The difference between this
//! and fleet-cache's in-proxy hit is the cache's own work in the VM.
//!
//! With `shared-data-hit` (case 3s) it makes exactly case 3c's host calls plus, before replying,
//! one read of Envoy's shared data (`proxy_get_shared_data`, key `floor:<path>`): the host
//! copies the value into the VM, and the reply's body is the bytes that call returned, not the
//! preallocated buffer. Every VM stores the three bench bodies (`/f/1k`, `/f/64k`, `/f/1m`) in
//! `on_configure`, so every request is a shared-data hit; a missing value answers 500. Nothing
//! is decoded: this is the floor of a shared-data tier (the host call and the copy only), to
//! which a real one adds decoding and validating its entry on every hit (3s/3c is what the
//! read costs a hit; fleet-cache's per-worker tier, case 5, holds decoded values and copies
//! nothing).
//!
//! With `cache-miss` (case 3m) it lets every request through to the origin and makes, naively,
//! the host calls any shared-store cache miss makes: all request headers read, the clock read,
//! one lookup callout to Webdis (`GET /GET/<key>.raw`, the request paused until it answers,
//! whatever it answers), all response headers read, every body chunk copied into the VM as it
//! streams through, and at the end one write callout (`PUT /SET/<key>.raw`, the body as the
//! value), not waited for. No batching, no sharing, no cache logic: two store callouts per
//! request, what fleet-cache's miss (case 6) is measured against.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::*;
use proxy_wasm::types::*;

/// The largest body served; the bench's largest file.
const MAX_BODY: usize = 1 << 20;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        // Filled once per VM: a request only borrows a prefix of it.
        Box::new(Root { body: vec![b'x'; MAX_BODY].into(), mode: Mode::Floor })
    });
}}

/// What the filter does, from its plugin configuration.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No configuration: case 3w, a local reply.
    Floor,
    /// `cache-hit`: case 3c's host calls.
    CacheHit,
    /// `shared-data-hit`: case 3c's host calls plus one shared-data read (case 3s).
    SharedDataHit,
    /// `cache-miss`: case 3m's host calls.
    CacheMiss,
}

/// Case 3s: the shared-data key of a request is this prefix and its `:path`.
const SHARED_KEY_PREFIX: &str = "floor:";
/// Case 3s: the paths whose bodies every VM stores in shared data (the bench's three files).
const SHARED_PATHS: [&str; 3] = ["/f/1k", "/f/64k", "/f/1m"];

/// Case 3m's store: the Envoy cluster of Webdis (named as fleet-cache's, so the bench counts
/// its callouts the same way) and the authority its callouts carry.
const STORE_CLUSTER: &str = "fleet_cache_store";
const STORE_AUTHORITY: &str = "webdis";
const STORE_TIMEOUT: Duration = Duration::from_millis(1000);

struct Root {
    body: Rc<[u8]>,
    mode: Mode,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        self.mode = match self.get_plugin_configuration().as_deref() {
            None | Some(b"") => Mode::Floor,
            Some(b"cache-hit") => Mode::CacheHit,
            Some(b"shared-data-hit") => Mode::SharedDataHit,
            Some(b"cache-miss") => Mode::CacheMiss,
            // A typo in the bench must not measure the wrong thing: Envoy refuses the config.
            Some(_) => return false,
        };
        if self.mode == Mode::SharedDataHit {
            // Every VM (main thread and workers) stores the same bytes: whichever comes first,
            // the value is there before a request arrives. A failure makes Envoy refuse the
            // configuration.
            for path in SHARED_PATHS {
                let Some(n) = size_of_path(path) else {
                    return false;
                };
                let key = format!("{SHARED_KEY_PREFIX}{path}");
                if self
                    .set_shared_data(&key, Some(&self.body[..n]), None)
                    .is_err()
                {
                    return false;
                }
            }
        }
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor {
            body: self.body.clone(),
            mode: self.mode,
            key: None,
            lookup: None,
            recorded: Vec::new(),
        }))
    }
}

struct Floor {
    body: Rc<[u8]>,
    mode: Mode,
    /// Case 3m: the request's store key, Webdis-encoded; set once the lookup is dispatched
    /// (only then is the response recorded and written).
    key: Option<String>,
    /// Case 3m: the lookup callout the request waits for.
    lookup: Option<u32>,
    /// Case 3m: the response body, copied chunk by chunk as it streams through.
    recorded: Vec<u8>,
}

impl Context for Floor {
    fn on_http_call_response(&mut self, token: u32, _: usize, _: usize, _: usize) {
        // A miss is expected (`$-1`); whatever Webdis answered, the request goes on. The write's
        // answer, if it comes while the stream lives, is ignored.
        if self.lookup == Some(token) {
            self.lookup = None;
            self.resume_http_request();
        }
    }
}

/// A replayed response's headers: nginx's for a static file (minus per-fetch ones), then what
/// a cache adds.
const CACHE_HIT_HEADERS: &[(&str, &str)] = &[
    ("content-type", "application/octet-stream"),
    ("last-modified", "Wed, 25 Nov 2026 02:00:00 GMT"),
    ("etag", "\"6924fd60-400\""),
    ("cache-control", "public, max-age=3600"),
    ("accept-ranges", "bytes"),
    ("cache-status", "floor; hit; ttl=3599; detail=memory"),
    ("age", "1"),
];

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if self.mode == Mode::CacheMiss {
            return self.miss_lookup();
        }
        if self.mode == Mode::SharedDataHit {
            return self.shared_data_hit();
        }
        if self.mode == Mode::CacheHit {
            let headers = self.get_http_request_headers();
            let path = headers.iter().find(|(n, _)| n == ":path");
            let Some(n) = path.and_then(|(_, p)| size_of_path(p)) else {
                self.send_http_response(404, vec![], None);
                return Action::Pause;
            };
            let now = self.get_current_time();
            let secs = now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let date = format!("{secs}");
            let mut reply = CACHE_HIT_HEADERS.to_vec();
            reply.push(("date", &date));
            self.send_http_response(200, reply, Some(&self.body[..n]));
            return Action::Pause;
        }
        match self
            .get_http_request_header(":path")
            .and_then(|p| size_of_path(&p))
        {
            Some(n) => self.send_http_response(
                200,
                vec![("content-type", "application/octet-stream")],
                Some(&self.body[..n]),
            ),
            None => self.send_http_response(404, vec![], None),
        }
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if self.key.is_some() {
            // A recording cache reads them all (storability, what to store).
            let headers = self.get_http_response_headers();
            std::hint::black_box(headers);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.key.is_none() {
            return Action::Continue;
        }
        // Copied into the VM and let through at once: Envoy buffers nothing.
        if body_size > 0
            && let Some(chunk) = self.get_http_response_body(0, body_size)
        {
            self.recorded.extend_from_slice(&chunk);
        }
        if end_of_stream && let Some(key) = self.key.take() {
            let path = format!("/SET/{key}.raw");
            // Fire and forget: the stream does not wait for the write.
            let _ = self.dispatch_http_call(
                STORE_CLUSTER,
                vec![
                    (":method", "PUT"),
                    (":path", &path),
                    (":authority", STORE_AUTHORITY),
                ],
                Some(&self.recorded),
                vec![],
                STORE_TIMEOUT,
            );
        }
        Action::Continue
    }
}

impl Floor {
    /// Case 3s: case 3c's host calls plus one shared-data read, whose bytes are the body.
    fn shared_data_hit(&mut self) -> Action {
        let headers = self.get_http_request_headers();
        let path = headers
            .iter()
            .find(|(n, _)| n == ":path")
            .map_or("", |(_, p)| p.as_str());
        let key = format!("{SHARED_KEY_PREFIX}{path}");
        let now = self.get_current_time();
        let secs = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let date = format!("{secs}");
        // The host copies the value into a VM allocation; nothing decodes it.
        let Some(value) = self.get_shared_data(&key).0 else {
            let why = format!("no shared data under {key}");
            self.send_http_response(500, vec![("floor-error", &why)], None);
            return Action::Pause;
        };
        let mut reply = CACHE_HIT_HEADERS.to_vec();
        reply.push(("date", &date));
        self.send_http_response(200, reply, Some(&value));
        Action::Pause
    }

    /// Case 3m, request side: headers and clock read, one lookup callout, the request paused
    /// until it answers.
    fn miss_lookup(&mut self) -> Action {
        let headers = self.get_http_request_headers();
        let now = self.get_current_time();
        std::hint::black_box(now);
        let mut key = String::new();
        let target = headers
            .iter()
            .find(|(n, _)| n == ":path")
            .map_or("", |(_, p)| p.as_str());
        encode_arg(&mut key, format!("floor:{target}").as_bytes());
        let path = format!("/GET/{key}.raw");
        match self.dispatch_http_call(
            STORE_CLUSTER,
            vec![
                (":method", "GET"),
                (":path", &path),
                (":authority", STORE_AUTHORITY),
            ],
            None,
            vec![],
            STORE_TIMEOUT,
        ) {
            Ok(token) => {
                self.lookup = Some(token);
                self.key = Some(key);
                Action::Pause
            }
            Err(e) => {
                // The bench's warm-up check sees this and says why.
                let why = format!("lookup dispatch to {STORE_CLUSTER} failed: {e:?}");
                self.send_http_response(503, vec![("floor-error", &why)], None);
                Action::Pause
            }
        }
    }
}

/// A Webdis argument: every byte outside `[A-Za-z0-9_-]` percent-encoded (Webdis splits on
/// `/`, decodes `+` as a space and strips a known extension), as fleet-cache's
/// `src/store/webdis.rs` `encode_arg` does.
fn encode_arg(out: &mut String, arg: &[u8]) {
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

/// The body size the path's last segment names: `1k`, `64k`, `1m`, or a number of bytes.
fn size_of_path(path: &str) -> Option<usize> {
    let path = path.split(['?', '#']).next()?;
    let last = path.rsplit('/').next()?;
    let (digits, unit) = match last.as_bytes().last()? {
        b'k' | b'K' => (&last[..last.len() - 1], 1 << 10),
        b'm' | b'M' => (&last[..last.len() - 1], 1 << 20),
        _ => (last, 1),
    };
    let n = digits.parse::<usize>().ok()?.checked_mul(unit)?;
    (n <= MAX_BODY).then_some(n)
}
