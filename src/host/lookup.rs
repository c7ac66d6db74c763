//! Sending the lookup batches [`crate::lookups`] forms and handing each answer to the streams
//! that wait for it.
//!
//! The root sends batches; a stream sends its own lookup when nothing else is pending or out
//! (no hop through the root at idle). Whoever receives an answer serves every stream waiting
//! on it: the host applies calls to the context made effective with `set_effective_context`,
//! so the receiver answers, resumes or re-asks on each stream's behalf, then switches back to
//! itself. A stream that ended meanwhile removed itself from [`Shared::waiting`] and is
//! skipped.
//!
//! The root only sends before it serves any stream in the same callback: serving can call
//! back into the VM, after which the SDK would credit a new callout to that stream.

use super::{Shared, dispatch_store, now_ms, stream};
use crate::lookups::Waiting;
use crate::publish::{self, Job};
use crate::store::{StoreError, webdis};
use log::debug;
use proxy_wasm::hostcalls;

/// Writes riding with a lookup travel under the lookup's deadline and delay its answer by
/// their transfer: only a few small ones ride (a 1 KiB entry adds nothing measurable).
pub const MAX_RIDER_BYTES: usize = 64 * 1024;

/// What a send from the root left to the root.
#[derive(Default)]
pub struct RootSend {
    /// Batches the host refused: to fail with [`fail`] once nothing more is sent in this
    /// callback.
    pub refused: Vec<Waiting>,
    /// The riders, if their callout could not be dispatched (a failed write).
    pub riders_back: Option<Vec<Job>>,
}

/// Sends what the in-flight rule allows, from the root; the first batch carries `riders`
/// (writes waiting in the publish queue, see `PublishQueue::next_riders`) in the same
/// callout.
pub fn send(shared: &Shared, riders: Option<Vec<Job>>) -> RootSend {
    send_as(shared, None, riders)
}

/// Sends stream `id`'s own lookup (the only one pending) from the stream's context.
pub fn send_from_stream(shared: &Shared, id: u32) {
    let sent = send_as(shared, Some(id), None);
    fail(shared, &sent.refused, Some(id));
}

/// Sends from the root (`sender` None) or from stream `sender`, whose context is current.
fn send_as(shared: &Shared, sender: Option<u32>, mut riders: Option<Vec<Job>>) -> RootSend {
    let cfg = &shared.config;
    let mut out = RootSend::default();
    loop {
        let Some(batch) = shared.lookups.borrow_mut().next_batch() else {
            break;
        };
        let keys = batch.iter().map(|w| w.key.as_str());
        let sent = match riders.as_deref() {
            Some(jobs) => {
                let writes = publish::entries(jobs);
                let keys: Vec<&str> = keys.collect();
                let callout = webdis::put_entries_then_lookup(&writes, &keys);
                let body = webdis::entries_body(&writes);
                dispatch_store(cfg, &callout, Some(&body), cfg.store.timeout_ms)
            }
            None => dispatch_store(cfg, &webdis::lookup(keys), None, cfg.store.timeout_ms),
        };
        let jobs = riders.take();
        match sent {
            Ok(token) => {
                shared.lookups.borrow_mut().sent(token, batch, sender);
                if let Some(jobs) = jobs {
                    shared.queue.borrow_mut().sent(token, jobs);
                }
            }
            Err(e) => {
                debug!("fleet-cache: lookup not dispatched ({e:?})");
                out.refused.extend(batch);
                if jobs.is_some() {
                    // Only the first batch carries riders: a later refusal must not drop them.
                    out.riders_back = jobs;
                }
            }
        }
        if sender.is_some() {
            break;
        }
    }
    if let Some(jobs) = riders {
        // No batch to ride with after all: back in line, untouched.
        shared.queue.borrow_mut().put_back(jobs);
    }
    out
}

/// Fails the streams of batches that could not be sent (they go on to the origin), then
/// makes the context `at` current again.
pub fn fail(shared: &Shared, refused: &[Waiting], at: Option<u32>) {
    for waiting in refused {
        serve(shared, waiting, Err(StoreError::Dispatch));
    }
    if !refused.is_empty() {
        restore(shared, at);
    }
}

/// The lookup batch a callout answered, if it was one (else a write's answer).
pub fn take(shared: &Shared, token: u32) -> Option<Vec<Waiting>> {
    shared.lookups.borrow_mut().answered(token)
}

/// Serves every stream of an answered batch, then makes the context `at` (whose callback
/// this is, a stream's or the root's) current again.
pub fn serve_answer(
    shared: &Shared,
    batch: &[Waiting],
    answer: &Result<webdis::Values<'_>, StoreError>,
    at: Option<u32>,
) {
    match answer {
        Ok(values) => {
            for (waiting, value) in batch.iter().zip(values) {
                serve(shared, waiting, Ok(*value));
            }
        }
        Err(e) => {
            debug!("fleet-cache: lookup failed: {e:?}");
            for waiting in batch {
                serve(shared, waiting, Err(*e));
            }
        }
    }
    restore(shared, at);
}

/// Handles the answer to a lookup stream `id` sent itself; false if `token` is not a lookup.
/// A stream's own lookup never carries writes: only the root sends riders, and the host
/// hands a callout's answer to the context that sent it.
pub fn answered_at_stream(
    shared: &Shared,
    token: u32,
    status: Option<u16>,
    body: &[u8],
    id: u32,
) -> bool {
    let Some(batch) = take(shared, token) else {
        return false;
    };
    if shared.lookups.borrow().can_send() {
        // A stream about to be served must not send for others: the root does.
        shared.wake();
    }
    let answer = webdis::parse_lookup(status, body, batch.len());
    serve_answer(shared, &batch, &answer, Some(id));
    true
}

/// Carries each waiting stream's flow on with the store's reply.
fn serve(shared: &Shared, waiting: &Waiting, reply: Result<Option<&[u8]>, StoreError>) {
    for &id in &waiting.streams {
        let Some(flow) = shared.waiting.borrow_mut().remove(&id) else {
            continue;
        };
        if hostcalls::set_effective_context(id).is_err() {
            continue;
        }
        let step = flow.borrow_mut().handle_store_reply(now_ms(), reply);
        stream::carry_on(shared, id, &flow, step);
        // Serving may have left the effective context anywhere; each stream sets its own.
    }
}

/// Makes the context whose callback this is (a stream's, or the root's) the one host calls
/// apply to again.
fn restore(shared: &Shared, at: Option<u32>) {
    let _ = hostcalls::set_effective_context(at.unwrap_or(shared.root_id));
}
