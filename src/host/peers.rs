//! The sibling worker VMs of this Envoy: who they are (a registry in shared data, each VM's
//! queue token with a heartbeat) and carrying out the sibling protocol (`siblings.rs`) over
//! their queues (`wake.rs`).
//!
//! A VM that goes away (a worker restarted, a configuration replaced) stops beating and drops
//! out of the registry after [`STALE_MS`]; until then a message to it finds its queue gone
//! (counted as done) or goes unanswered until the hold's deadline.

use super::wake::{Sent, Wake};
use super::{Shared, abi};
use crate::metrics::Counter;
use crate::siblings::{Acks, Message};
use std::cell::{Cell, RefCell};
use std::ptr::null_mut;

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
}

/// The shared-data key of the registry: (queue token u32 LE, last beat u64 LE) per VM.
const REGISTRY: &str = "fleet_cache.siblings";
const HEARTBEAT_MS: u64 = 1_000;
/// A VM that has not beaten for this long is gone.
const STALE_MS: u64 = 5_000;
const ENTRY: usize = 12;

/// The registry's value and its CAS, or `None` when the host refuses shared data.
fn read_registry() -> Option<(Vec<u8>, u32)> {
    let mut data: *mut u8 = null_mut();
    let mut size = 0usize;
    let mut cas = 0u32;
    // SAFETY: the host reads the key within its length and writes a pointer, a length and a
    // CAS; a non-null pointer is a buffer allocated through the module's allocator for
    // exactly `size` bytes (as in `wake.rs`), owned as that Vec.
    let status = unsafe {
        proxy_get_shared_data(
            REGISTRY.as_ptr(),
            REGISTRY.len(),
            &mut data,
            &mut size,
            &mut cas,
        )
    };
    let value = if !data.is_null() && size > 0 {
        // SAFETY: see above.
        unsafe { Vec::from_raw_parts(data, size, size) }
    } else {
        Vec::new()
    };
    match status {
        0 => Some((value, cas)),
        // NotFound: nobody registered yet.
        1 => Some((Vec::new(), 0)),
        _ => None,
    }
}

fn write_registry(value: &[u8], cas: u32) -> bool {
    // SAFETY: the host reads the key and the value within their lengths.
    unsafe {
        proxy_set_shared_data(
            REGISTRY.as_ptr(),
            REGISTRY.len(),
            value.as_ptr(),
            value.len(),
            cas,
        ) == 0
    }
}

fn entries(value: &[u8]) -> impl Iterator<Item = (u32, u64)> + '_ {
    value.chunks_exact(ENTRY).map(|e| {
        let (token, beat) = e.split_at(4);
        (
            u32::from_le_bytes(token.try_into().unwrap_or_default()),
            u64::from_le_bytes(beat.try_into().unwrap_or_default()),
        )
    })
}

pub struct Peers {
    /// This VM's queue token, or `None` without shared queues (no sibling protocol then:
    /// siblings see an invalidation within `memory.max_age_ms`).
    me: Option<u32>,
    beat_at: Cell<u64>,
    pub acks: RefCell<Acks>,
}

impl Peers {
    pub fn new(wake: &Wake) -> Peers {
        Peers {
            me: wake.id(),
            beat_at: Cell::new(0),
            acks: RefCell::default(),
        }
    }

    /// Beats (registering on the first call) at most every [`HEARTBEAT_MS`].
    pub fn beat(&self, now_ms: u64) {
        let Some(me) = self.me else {
            return;
        };
        if now_ms < self.beat_at.get() + HEARTBEAT_MS {
            return;
        }
        self.beat_at.set(now_ms);
        // Compare-and-swap: other VMs beat concurrently on their own threads.
        for _ in 0..8 {
            let Some((value, cas)) = read_registry() else {
                return;
            };
            let mut next: Vec<u8> = Vec::with_capacity(value.len() + ENTRY);
            for (token, beat) in entries(&value) {
                if token != me && beat + STALE_MS > now_ms {
                    next.extend_from_slice(&token.to_le_bytes());
                    next.extend_from_slice(&beat.to_le_bytes());
                }
            }
            next.extend_from_slice(&me.to_le_bytes());
            next.extend_from_slice(&now_ms.to_le_bytes());
            if write_registry(&next, cas) {
                return;
            }
        }
    }

    /// The live VMs' queues, this one's included.
    fn live(&self, now_ms: u64) -> Vec<u32> {
        read_registry()
            .map(|(value, _)| {
                entries(&value)
                    .filter(|(_, beat)| beat + STALE_MS > now_ms)
                    .map(|(token, _)| token)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Holds `stream`'s response until every sibling dropped `keys` from its tier (or the
    /// deadline). `stored`: the store confirmed the invalidation.
    pub fn hold(
        &self,
        wake: &Wake,
        stream: u32,
        keys: Vec<String>,
        deadline_ms: u64,
        now_ms: u64,
        stored: bool,
    ) {
        let me = self.me.unwrap_or(0);
        let siblings = if self.me.is_some() {
            self.live(now_ms)
        } else {
            Vec::new()
        };
        let started = self
            .acks
            .borrow_mut()
            .start(stream, me, &siblings, deadline_ms, stored);
        let Some((seq, to)) = started else {
            return;
        };
        let message = Message::Forget {
            seq,
            reply_to: me,
            keys,
        }
        .encode();
        for peer in to {
            if wake.send(peer, &message) != Sent::Queued {
                // Its queue is gone or refused: nothing will answer.
                self.acks.borrow_mut().acked(seq, peer);
            }
        }
    }
}

/// Acts on the messages siblings put on this VM's queue.
pub fn on_messages(shared: &Shared, messages: Vec<Vec<u8>>, now_ms: u64) {
    for bytes in messages {
        match Message::decode(&bytes) {
            Some(Message::Forget {
                seq,
                reply_to,
                keys,
            }) => {
                if let Ok(mut memory) = shared.worker.memory.try_borrow_mut() {
                    for k in &keys {
                        memory.forget(k, now_ms);
                    }
                }
                if let Some(me) = shared.peers.me {
                    shared
                        .wake
                        .send(reply_to, &Message::Ack { seq, from: me }.encode());
                }
            }
            Some(Message::Ack { seq, from }) => {
                shared.peers.acks.borrow_mut().acked(seq, from);
            }
            None => {}
        }
    }
}

/// Lets the held responses whose siblings answered (or whose deadline passed) go on. Call
/// after the root's callouts are sent: resuming a stream runs its callbacks.
pub fn resume_done(shared: &Shared) {
    loop {
        let next = shared
            .peers
            .acks
            .try_borrow_mut()
            .ok()
            .and_then(|mut a| a.poll_done());
        let Some((stream, confirmed)) = next else {
            break;
        };
        if !confirmed {
            shared.metrics.add(Counter::InvalidationsUnconfirmed, 1);
        }
        shared.waiting.borrow_mut().remove(&stream);
        if shared.release(stream) && abi::set_effective_context(stream).is_ok() {
            let _ = abi::resume_response();
        }
    }
}
