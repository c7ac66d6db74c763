//! Waking the root context from a stream, now rather than on a timer.
//!
//! Lookups and writes are sent by the root (their answers must outlive the stream, and
//! lookups are batched), but a stream can't call into the root. Envoy runs a shared queue's
//! `on_queue_ready` on the registering VM's thread through its event loop (a post, not a
//! timer): enqueueing one item is a wake-up after the current callback, at no added latency.
//! The queue name is random per VM: every worker VM registers its own, and a name registered
//! twice would deliver to the last registrant only.
//!
//! Where the host refuses shared queues (a restricted capability set), the root's tick is the
//! wake-up instead: one tick period later.

use super::PUBLISH_TICK;
use log::warn;
use proxy_wasm::hostcalls;
use std::cell::Cell;
use std::hash::{BuildHasher, RandomState};

pub struct Wake {
    /// The VM's own queue, or `None` to wake by tick.
    queue: Option<u32>,
    /// Whether a wake-up is on its way: one per batch of work, not one per stream.
    armed: Cell<bool>,
}

impl Wake {
    /// Registers this VM's wake-up queue. Call from the root context (the queue's callbacks
    /// go to the context that registered it).
    pub fn register() -> Wake {
        let name = format!("fleet_cache.wake.{:016x}", RandomState::new().hash_one(0u8));
        let queue = match hostcalls::register_shared_queue(&name) {
            Ok(q) => Some(q),
            Err(e) => {
                warn!(
                    "fleet-cache: no shared queue ({e:?}); lookups and writes wait for the \
                     root's {PUBLISH_TICK:?} tick instead"
                );
                None
            }
        };
        Wake {
            queue,
            armed: Cell::new(false),
        }
    }

    /// Asks for the root's `on_queue_ready` soon, unless already asked. False when there is
    /// no queue: the caller must arm the tick.
    pub fn wake(&self) -> bool {
        if self.armed.replace(true) {
            return true;
        }
        self.queue
            .is_some_and(|q| hostcalls::enqueue_shared_queue(q, None).is_ok())
    }

    /// The root is awake: empties the queue and lets the next work wake it again.
    pub fn woken(&self) {
        self.armed.set(false);
        if let Some(q) = self.queue {
            while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(q) {}
        }
    }
}
