//! The proxy-wasm adapter: translates host callbacks into core events and core decisions into
//! host calls. No cache logic lives here, and no transport: store commands come out of the
//! [`Outbox`] as [`Request`]s, sent as they say.
//!
//! Every host call goes through `abi` (which returns the host's status instead of panicking),
//! and no `RefCell` borrow is held across a host call that can call back into the VM.

pub mod abi;
pub mod background;
pub mod peers;
pub mod root;
pub mod serve;
pub mod stream;
pub mod wake;

use crate::config::Config;
use crate::flow::{Flow, Worker};
use crate::metrics::{BREAKER_OPEN_GAUGE, Counter};
use crate::outbox::stream_map::StreamMap;
use crate::outbox::{self, Outbox};
use crate::store::Request;
use peers::Peers;
use proxy_wasm::hostcalls;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;
use wake::Wake;

/// A stream waiting for the store: its flow, and when its request arrived (its deadline runs
/// from there).
pub struct Waiter {
    pub flow: Rc<RefCell<Flow>>,
    pub arrived_ms: u64,
}

/// What a VM's root context shares with its streams.
pub struct Shared {
    pub config: Rc<Config>,
    pub metrics: Metrics,
    /// What goes to the store when, and what comes back.
    pub outbox: RefCell<Outbox>,
    /// The recording budget and the in-proxy tier, shared by the worker's flows.
    pub worker: Rc<Worker>,
    /// The streams waiting for the store, by context id: the root hands them their reply. A
    /// stream that ends removes itself.
    pub waiting: RefCell<StreamMap<Waiter>>,
    /// Background revalidations (stale-while-revalidate) under way.
    pub jobs: background::Jobs,
    /// Wakes the root to send now; siblings' messages arrive on it too.
    pub wake: Wake,
    /// The other worker VMs, and the responses held until they dropped invalidated keys.
    pub peers: Peers,
    /// Streams whose response is held (for the store or the siblings): every response
    /// callback of theirs pauses until the root resumes them.
    held: RefCell<Vec<u32>>,
    /// The root context's id: host calls made on a stream's behalf must be switched back.
    pub root_id: u32,
    /// When the root's timer fires next (unix ms; `u64::MAX`: not armed).
    pub timer_at: Cell<u64>,
    /// When counters were last handed to the host.
    pub flushed_at: Cell<u64>,
}

/// How often counters reach Envoy's stats at most late.
pub const METRICS_FLUSH_MS: u64 = 100;

impl Shared {
    pub fn new(config: Config, root_id: u32, seed: u64) -> Shared {
        // The queue may hold a few full recordings beyond what is in flight.
        let max_queue_bytes = (4 * config.max_body_bytes).max(64 << 20);
        let s = &config.store;
        let settings = outbox::Settings {
            lookup_timeout_ms: s.timeout_ms,
            write_timeout_ms: s.publish_timeout_ms,
            large_ms_per_mib: s.large_entry_ms_per_mib,
            // An entry is its body plus metadata: headers, chunk lengths, key material.
            max_value_bytes: config.max_body_bytes as u64 + (1 << 20),
            max_queue_bytes,
            breaker: outbox::breaker::BreakerSettings {
                failures: s.breaker_failures as u32,
                backoff_ms: s.breaker_backoff_ms,
                max_backoff_ms: s.breaker_max_backoff_ms,
            },
            lock_ms: config.collapse.max_wait_ms,
            poll_ms: config.collapse.poll_ms,
            one_slot: s.redis_cluster,
        };
        let wake = Wake::register();
        Shared {
            metrics: Metrics::define(),
            outbox: RefCell::new(Outbox::new(settings, seed)),
            worker: Worker::new(&config, seed, Rc::new(abi::HostZlib)),
            waiting: RefCell::default(),
            jobs: background::Jobs::default(),
            peers: Peers::new(&wake),
            held: RefCell::default(),
            wake,
            root_id,
            timer_at: Cell::new(u64::MAX),
            flushed_at: Cell::new(0),
            config: Rc::new(config),
        }
    }

    pub fn hold(&self, stream: u32) {
        self.held.borrow_mut().push(stream);
    }

    /// Ends a hold; false if `stream` was not held (ended, or already resumed).
    pub fn release(&self, stream: u32) -> bool {
        let mut held = self.held.borrow_mut();
        let before = held.len();
        held.retain(|s| *s != stream);
        held.len() < before
    }

    pub fn is_held(&self, stream: u32) -> bool {
        self.held.borrow().contains(&stream)
    }

    /// Has the root send what waits as soon as this callback returns (or on the next tick,
    /// where the host has no shared queues).
    pub fn wake(&self, now_ms: u64) {
        if !self.wake.wake() {
            self.arm_timer(now_ms, Some(now_ms + 1));
        }
    }

    /// Arms the root's timer for the earliest of: what the outbox waits for, the next counter
    /// flush, and `also`. Only ever brings the timer forward (re-arming resets the host's
    /// timer: a stream of arrivals must not keep pushing a deadline back), except from the
    /// tick itself, which re-arms whatever comes next.
    pub fn arm_timer(&self, now_ms: u64, also: Option<u64>) {
        let outbox = self.outbox.try_borrow().ok().and_then(|o| o.poll_timeout());
        let siblings = self
            .peers
            .acks
            .try_borrow()
            .ok()
            .and_then(|a| a.poll_timeout());
        let next = [outbox, siblings].into_iter().flatten().min();
        let flush = self.flushed_at.get() + METRICS_FLUSH_MS;
        let at = [next, also, Some(flush)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(flush)
            .max(now_ms + 1);
        if at < self.timer_at.get() {
            let period = u32::try_from(at - now_ms).unwrap_or(u32::MAX);
            if abi::set_tick_period(period).is_ok() {
                self.timer_at.set(at);
            }
        }
    }
}

/// Host metric ids, indexed by [`Counter::index`], and the counts not yet handed to the host.
///
/// A host call per counter per request cost in-proxy hits ~15% of their throughput (measured:
/// bench A/B), so counts accumulate in the VM and the root flushes them every
/// [`METRICS_FLUSH_MS`]: Envoy's stats lag by at most that.
pub struct Metrics {
    ids: Vec<Option<u32>>,
    pending: Vec<Cell<u64>>,
    breaker_gauge: Option<u32>,
}

impl Metrics {
    pub fn define() -> Metrics {
        Metrics {
            ids: Counter::ALL
                .iter()
                .map(|c| abi::define_metric(c.name(), false))
                .collect(),
            pending: Counter::ALL.iter().map(|_| Cell::new(0)).collect(),
            breaker_gauge: abi::define_metric(BREAKER_OPEN_GAUGE, true),
        }
    }

    pub fn add(&self, counter: Counter, n: u64) {
        if let Some(c) = self.pending.get(counter.index()) {
            c.set(c.get() + n);
        }
    }

    /// This worker's breaker opened (+1) or closed (-1).
    pub fn breaker(&self, delta: i64) {
        if let Some(id) = self.breaker_gauge {
            abi::increment_metric(id, delta);
        }
    }

    /// Hands the accumulated counts to the host.
    pub fn flush(&self) {
        for (id, pending) in self.ids.iter().zip(&self.pending) {
            let n = pending.replace(0);
            if let (Some(id), true) = (id, n > 0) {
                abi::increment_metric(*id, n as i64);
            }
        }
    }
}

/// Sends a store request from the context being called (its answer comes back to that
/// context); the host's token, or `None` if it refused.
pub fn dispatch(cfg: &Config, request: &Request<'_>, timeout_ms: u64) -> Option<u32> {
    let Request::Http { method, path, body } = request;
    let mut headers = vec![
        (":method", *method),
        (":path", path.as_str()),
        (":authority", cfg.store.authority.as_str()),
    ];
    if let Some(a) = &cfg.store.authorization {
        headers.push(("authorization", a.header_value()));
    }
    hostcalls::dispatch_http_call(
        &cfg.store.cluster,
        headers,
        body.as_deref(),
        vec![],
        Duration::from_millis(timeout_ms),
    )
    .ok()
}

/// Host header pairs with byte values -> strings; `None` if any value is not UTF-8 (the host
/// API replays only strings, so such a message is passed through but never stored).
pub fn utf8_pairs(pairs: Vec<(String, Vec<u8>)>) -> (Vec<(String, String)>, bool) {
    let mut all_utf8 = true;
    let out = pairs
        .into_iter()
        .map(|(n, v)| {
            let v = String::from_utf8(v).unwrap_or_else(|e| {
                all_utf8 = false;
                String::from_utf8_lossy(e.as_bytes()).into_owned()
            });
            (n, v)
        })
        .collect();
    (out, all_utf8)
}
