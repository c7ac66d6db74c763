//! The proxy-wasm adapter: translates host callbacks into core events and core decisions into
//! host calls. No cache logic lives here.

pub mod lookup;
pub mod root;
pub mod stream;
pub mod wake;

use crate::config::Config;
use crate::flow::{Flow, Worker};
use crate::lookups::Lookups;
use crate::metrics::Counter;
use crate::publish::PublishQueue;
use crate::store::webdis::Callout;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MetricType, Status};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wake::Wake;

/// What a VM's root context shares with its streams.
pub struct Shared {
    pub config: Rc<Config>,
    pub metrics: Metrics,
    pub queue: RefCell<PublishQueue>,
    /// The recording budget and the in-proxy tier, shared by the worker's flows.
    pub worker: Rc<Worker>,
    /// Whether the root's tick is armed. Re-arming resets Envoy's timer, so a stream of
    /// publishes less than a tick apart must not keep pushing the tick back.
    pub ticking: Cell<bool>,
    /// Lookups waiting to be sent or answered, batched by the root.
    pub lookups: RefCell<Lookups>,
    /// The flows of the streams waiting for a lookup, by context id: the root hands them
    /// the answer. A stream that ends removes itself.
    pub waiting: RefCell<HashMap<u32, Rc<RefCell<Flow>>>>,
    /// Wakes the root to send lookups and writes now.
    pub wake: Wake,
    /// The root context's id: host calls made on a stream's behalf must be switched back.
    pub root_id: u32,
}

impl Shared {
    /// Whether the next write waits to ride with the next lookup batch: it is small and a
    /// batch the root sent is out, whose answer sends the next one.
    pub fn write_waits_for_ride(&self) -> bool {
        self.lookups.borrow().root_in_flight()
            && self.queue.borrow().holds_for_ride(lookup::MAX_RIDER_BYTES)
    }

    /// Has the root send pending lookups and writes as soon as this callback returns.
    pub fn wake(&self) {
        if !self.wake.wake() {
            self.tick_publisher();
        }
    }

    /// Arms the root's tick unless it already is (writes to retry). Callable from any context
    /// of the VM: the host applies it to the root context.
    pub fn tick_publisher(&self) {
        if !self.ticking.replace(true) {
            let _ = hostcalls::set_tick_period(PUBLISH_TICK);
        }
    }

    /// Back to the slow tick that flushes counters (nothing to publish), unless a stream's
    /// wake-up is still owed by the fast tick (no shared queue).
    pub fn idle_publisher(&self) {
        if self.wake.owed_by_tick() {
            return;
        }
        if self.ticking.replace(false) {
            let _ = hostcalls::set_tick_period(METRICS_FLUSH);
        }
    }
}

/// Host metric ids, indexed by [`Counter::index`], and the counts not yet handed to the host.
///
/// A host call per counter per request cost in-proxy hits ~15% of their throughput (measured:
/// bench A/B), so counts accumulate in the VM and the root flushes them every
/// [`METRICS_FLUSH`]: Envoy's stats lag by at most that.
pub struct Metrics {
    ids: Vec<Option<u32>>,
    pending: Vec<Cell<u64>>,
}

impl Metrics {
    pub fn define() -> Metrics {
        let ids = Counter::ALL
            .iter()
            .map(|c| hostcalls::define_metric(MetricType::Counter, c.name()).ok())
            .collect();
        Metrics {
            ids,
            pending: Counter::ALL.iter().map(|_| Cell::new(0)).collect(),
        }
    }

    pub fn add(&self, counter: Counter, n: u64) {
        if let Some(c) = self.pending.get(counter.index()) {
            c.set(c.get() + n);
        }
    }

    /// Hands the accumulated counts to the host.
    pub fn flush(&self) {
        for (id, pending) in self.ids.iter().zip(&self.pending) {
            let n = pending.replace(0);
            if let (Some(id), true) = (id, n > 0) {
                let _ = hostcalls::increment_metric(*id, n as i64);
            }
        }
    }
}

/// How often counters reach Envoy's stats (and the idle period of the root's tick).
pub const METRICS_FLUSH: Duration = Duration::from_millis(100);

/// Sends a store command to the store cluster from the context being called (its answer
/// comes back to that context).
pub fn dispatch_store(
    cfg: &Config,
    callout: &Callout,
    body: Option<&[u8]>,
    timeout_ms: u64,
) -> Result<u32, Status> {
    hostcalls::dispatch_http_call(
        &cfg.store.cluster,
        vec![
            (":method", callout.method),
            (":path", &callout.path),
            (":authority", &cfg.store.authority),
        ],
        body,
        vec![],
        Duration::from_millis(timeout_ms),
    )
}

/// Ticks retry writes the host refused to dispatch; idle VMs don't tick.
pub const PUBLISH_TICK: Duration = Duration::from_millis(1);

/// The host's clock in Unix milliseconds (0 if the host can't tell).
pub fn now_ms() -> u64 {
    hostcalls::get_current_time().map(unix_ms).unwrap_or(0)
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
