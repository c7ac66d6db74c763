//! Waking the root context from a stream, now rather than on a timer.
//!
//! Lookups and writes are sent by the root (their answers must outlive the stream, and
//! lookups are batched), but a stream can't call into the root. Envoy runs a shared queue's
//! `on_queue_ready` on the registering VM's thread through its event loop (a post, not a
//! timer): enqueueing one item is a wake-up after the current callback, at no added latency.
//! The queue name is random per VM: every worker VM registers its own, and a name registered
//! twice would deliver to the last registrant only.
//!
//! The same queue carries the sibling protocol (`siblings.rs`): other worker VMs put their
//! messages on it; an empty item is a plain wake-up.
//!
//! Where the host refuses shared queues (a restricted capability set), the root's tick is the
//! wake-up instead: one millisecond later. The SDK's shared-queue calls panic (trapping the
//! VM) on the status a restricted call returns, so the three calls are made here directly.

use log::warn;
use std::cell::Cell;
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

/// The host's status for an enqueue: 0 is OK, 1 (NotFound) a queue that is gone.
fn enqueue(id: u32, value: &[u8]) -> u32 {
    // SAFETY: the host reads `value` within its length.
    unsafe { proxy_enqueue_shared_queue(id, value.as_ptr(), value.len()) }
}

const NOT_FOUND: u32 = 1;

/// Takes one item off the queue; `None` when there was none (or the host refused).
fn dequeue(id: u32) -> Option<Vec<u8>> {
    let mut data: *mut u8 = null_mut();
    let mut size = 0usize;
    // SAFETY: the host writes a pointer and a length; a non-null pointer is a buffer it
    // allocated through the module's allocator (`proxy_on_memory_allocate`, the SDK's, which
    // allocates a Vec<u8> of exactly `size` bytes), so it is owned as that Vec.
    unsafe {
        let status = proxy_dequeue_shared_queue(id, &mut data, &mut size);
        let item = if !data.is_null() && size > 0 {
            Vec::from_raw_parts(data, size, size)
        } else {
            Vec::new()
        };
        (status == 0).then_some(item)
    }
}

/// What became of a message to a sibling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Queued,
    /// Its queue is gone (the VM was replaced): it has nothing to be told.
    Gone,
    Refused,
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
        let name = format!("fleet_cache.wake.{:016x}", super::abi::random_u64());
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
        self.queue.is_some_and(|q| enqueue(q, &[]) == 0)
    }

    /// This VM's queue, as siblings reach it.
    pub fn id(&self) -> Option<u32> {
        self.queue
    }

    /// Puts a message on a sibling's queue.
    pub fn send(&self, to: u32, message: &[u8]) -> Sent {
        match enqueue(to, message) {
            0 => Sent::Queued,
            NOT_FOUND => Sent::Gone,
            _ => Sent::Refused,
        }
    }

    /// The root is awake: empties the queue, lets the next work wake it again, and returns
    /// the siblings' messages that were on it.
    pub fn woken(&self) -> Vec<Vec<u8>> {
        self.armed.set(false);
        let mut messages = Vec::new();
        if let Some(q) = self.queue {
            while let Some(item) = dequeue(q) {
                if !item.is_empty() {
                    messages.push(item);
                }
            }
        }
        messages
    }
}
