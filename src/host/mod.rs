//! The proxy-wasm adapter: translates host callbacks into core events and core decisions into
//! host calls. No cache logic lives here.

pub mod root;
pub mod stream;

use crate::config::Config;
use crate::flow::Worker;
use crate::metrics::Counter;
use crate::publish::PublishQueue;
use crate::store::webdis::Callout;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::Context;
use proxy_wasm::types::{MetricType, Status};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
}

impl Shared {
    /// Arms the root's publish tick unless it already is. Callable from any context of the
    /// VM: the host applies it to the root context.
    pub fn wake_publisher(&self) {
        if !self.ticking.replace(true) {
            let _ = hostcalls::set_tick_period(PUBLISH_TICK);
        }
    }

    /// Back to the slow tick that flushes counters (nothing to publish).
    pub fn idle_publisher(&self) {
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

/// Sends a store command to the store cluster from `ctx` (its answer comes back to `ctx`).
pub fn dispatch_store(
    ctx: &dyn Context,
    cfg: &Config,
    callout: &Callout,
    body: Option<&[u8]>,
    timeout_ms: u64,
) -> Result<u32, Status> {
    ctx.dispatch_http_call(
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

/// Ticks drive the publish queue while it has work; idle VMs don't tick.
pub const PUBLISH_TICK: Duration = Duration::from_millis(1);

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
