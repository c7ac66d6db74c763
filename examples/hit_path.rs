//! The pure core's side of an in-proxy hit, natively: time and heap allocations per hit.
//!
//! `cargo run --release --example hit_path` — what the flow costs between the request headers
//! and the reply handed to the host (the headers as the host takes them), with the bench's
//! request and nginx's response headers. Envoy and the Wasm VM are not in it: `make bench`
//! case 5 against 3c measures the whole; this shows where the flow's own part goes.

use fleet_cache::config::Config;
use fleet_cache::flow::{Flow, LookupStep, RequestStep, Source, Worker};
use fleet_cache::http::{RequestHead, ResponseHead};
use fleet_cache::store::Looked;
use std::alloc::{GlobalAlloc, Layout, System};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counts heap allocations (and reallocations): on wasm each one is dlmalloc's work.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const T0: u64 = 1_780_000_000_000;

/// What wrk sends, as Envoy hands it to the filter.
fn request() -> Vec<(String, String)> {
    [
        (":authority", "127.0.0.1:23150"),
        (":path", "/f/1k"),
        (":method", "GET"),
        (":scheme", "http"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "5f0c1a2e-9d5b-4a7e-8f0e-3b1f2c4d5e6f"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect()
}

/// nginx's answer for a static file, as the filter sees it.
fn response() -> ResponseHead {
    ResponseHead {
        status: 200,
        headers: [
            ("server", "envoy"),
            ("date", "Wed, 25 Nov 2026 06:00:00 GMT"),
            ("content-type", "application/octet-stream"),
            ("content-length", "1024"),
            ("last-modified", "Wed, 25 Nov 2026 02:00:00 GMT"),
            ("etag", "\"6924fd60-400\""),
            ("cache-control", "public, max-age=3600"),
            ("accept-ranges", "bytes"),
            ("x-envoy-upstream-service-time", "0"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect(),
    }
}

/// One request through the flow as the adapter drives it; returns the bytes the reply
/// carried (so nothing is optimized away) and whether the in-proxy tier answered.
fn one(cfg: &Rc<Config>, worker: &Rc<Worker>, now: u64, stored: &mut Option<Vec<u8>>) -> usize {
    let mut flow = Flow::new(cfg.clone(), worker.clone());
    let step = match flow.handle_request_headers(now, RequestHead::from_pairs(request())) {
        RequestStep::Decided(step) => step,
        RequestStep::Lookup(_) => {
            let answer = match stored.as_deref() {
                Some(v) => Looked::Value(v),
                None => Looked::Missing,
            };
            match flow.handle_store_reply(now, Ok(answer)) {
                LookupStep::Respond(r) => {
                    // Borrowed from `stored`: detach it the way the host would (it copies).
                    let n = r.body.len() + r.headers.iter().count();
                    flow.take_events();
                    return n;
                }
                LookupStep::Continue => {
                    let step =
                        flow.handle_response_headers(now, &response(), false, Source::Origin);
                    assert!(step.publish.is_none());
                    let write = flow
                        .handle_response_body(&[b'x'; 1024], true)
                        .expect("the response is stored");
                    *stored = Some(write.entry);
                    flow.take_events();
                    return 0;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        other => panic!("unexpected {other:?}"),
    };
    let LookupStep::Respond(reply) = step else {
        panic!("not a hit: {step:?}");
    };
    // What the adapter hands to send_http_response.
    let headers: Vec<(&str, &str)> = reply.headers.iter().collect();
    let n = std::hint::black_box(&headers).len() + reply.body.len();
    flow.take_events();
    flow.handle_stream_end();
    n
}

fn main() {
    let cfg = Rc::new(
        Config::parse(
            br#"{"store":{"cluster":"fleet_cache_store","authority":"webdis"},
                 "namespace":"bench","max_ttl_s":3600,
                 "memory":{"max_bytes":67108864,"max_age_ms":60000}}"#,
        )
        .expect("bench config"),
    );
    let worker = Worker::new(
        &cfg,
        0x5eed,
        std::rc::Rc::new(fleet_cache::packing::NoCodec),
    );
    let mut stored = None;
    // A miss records it, a store hit fills the tier: from then on every hit is in memory.
    one(&cfg, &worker, T0, &mut stored);
    assert!(stored.is_some(), "the miss stored the response");
    one(&cfg, &worker, T0, &mut stored);

    let n = 200_000u64;
    let mut sink = 0usize;
    let allocs_before = ALLOCS.load(Ordering::Relaxed);
    let start = Instant::now();
    for i in 0..n {
        // A new second every 10,000 hits (within the tier's max age): the Date is re-formatted.
        sink += one(&cfg, &worker, T0 + i / 10, &mut stored);
    }
    let elapsed = start.elapsed();
    let allocs = ALLOCS.load(Ordering::Relaxed) - allocs_before;
    println!(
        "in-proxy hit, flow only: {:.0} ns per hit, {:.1} allocations per hit ({} bytes served per hit)",
        elapsed.as_nanos() as f64 / n as f64,
        allocs as f64 / n as f64,
        sink as u64 / n
    );
}
