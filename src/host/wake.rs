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
//! wake-up instead: one millisecond later. The SDK's shared-queue calls panic (trapping the
//! VM) on the status a restricted call returns, so the three calls are made here directly.

use log::warn;
use std::cell::Cell;
use std::hash::{BuildHasher, RandomState};
use std::ptr::null_mut;

// The proxy-wasm ABI's shared-queue calls (the same imports the SDK declares), returning the
// raw status: 0 is OK, anything else (not found, empty, a restricted capability) is a no.
#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_register_shared_queue(name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_enqueue_shared_queue(id: u32, value: *const u8, value_size: usize) -> u32;
    fn proxy_dequeue_shared_queue(id: u32, value: *mut *mut u8, value_size: *mut usize) -> u32;
}

fn register(name: &str) -> Option<u32> {
    let mut id = 0;
    // SAFETY: the host reads `name` within its length and writes one u32 to `id`.
    let status = unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) };
    (status == 0).then_some(id)
}

fn enqueue_empty(id: u32) -> bool {
    // SAFETY: an empty value: the host reads nothing.
    unsafe { proxy_enqueue_shared_queue(id, [].as_ptr(), 0) == 0 }
}

/// Takes one item off the queue; false when there was none (or the host refused).
fn dequeue(id: u32) -> bool {
    let mut data: *mut u8 = null_mut();
    let mut size = 0usize;
    // SAFETY: the host writes a pointer and a length; a non-null pointer is a buffer it
    // allocated through the module's allocator (`proxy_on_memory_allocate`, the SDK's, which
    // allocates a Vec<u8> of exactly `size` bytes), so it is freed as that Vec.
    unsafe {
        let status = proxy_dequeue_shared_queue(id, &mut data, &mut size);
        if !data.is_null() && size > 0 {
            drop(Vec::from_raw_parts(data, size, size));
        }
        status == 0
    }
}

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
        let queue = register(&name);
        if queue.is_none() {
            warn!(
                "fleet-cache: no shared queue (a restricted capability?); lookups and writes \
                 wait for the root's next tick (1 ms) instead"
            );
        }
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
        self.queue.is_some_and(enqueue_empty)
    }

    /// The root is awake: empties the queue and lets the next work wake it again.
    pub fn woken(&self) {
        self.armed.set(false);
        if let Some(q) = self.queue {
            while dequeue(q) {}
        }
    }
}
