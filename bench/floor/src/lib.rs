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

use std::rc::Rc;

use proxy_wasm::traits::*;
use proxy_wasm::types::*;

/// The largest body served; the bench's largest file.
const MAX_BODY: usize = 1 << 20;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        // Filled once per VM: a request only borrows a prefix of it.
        Box::new(Root { body: vec![b'x'; MAX_BODY].into(), cache_hit: false })
    });
}}

struct Root {
    body: Rc<[u8]>,
    /// Configuration `cache-hit`: case 3c's host calls.
    cache_hit: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        self.cache_hit = self.get_plugin_configuration().as_deref() == Some(b"cache-hit");
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor {
            body: self.body.clone(),
            cache_hit: self.cache_hit,
        }))
    }
}

struct Floor {
    body: Rc<[u8]>,
    cache_hit: bool,
}

impl Context for Floor {}

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
        if self.cache_hit {
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
