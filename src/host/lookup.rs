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
use crate::store::{StoreError, webdis};
use log::debug;
use proxy_wasm::hostcalls;

/// Sends what the in-flight bound allows, from the root. Batches the host refuses are
/// answered with the failure (the streams go on to the origin).
pub fn send(shared: &Shared) {
    send_as(shared, None);
}

/// Sends stream `id`'s own lookup (the only one pending) from the stream's context.
pub fn send_from_stream(shared: &Shared, id: u32) {
    send_as(shared, Some(id));
}

/// Sends from the root (`sender` None) or from stream `sender`, whose context is current.
fn send_as(shared: &Shared, sender: Option<u32>) {
    let cfg = &shared.config;
    let mut refused = Vec::new();
    loop {
        let Some(batch) = shared.lookups.borrow_mut().next_batch() else {
            break;
        };
        let callout = webdis::lookup(batch.iter().map(|w| w.key.as_str()));
        match dispatch_store(cfg, &callout, None, cfg.store.timeout_ms) {
            Ok(token) => shared.lookups.borrow_mut().sent(token, batch, sender),
            Err(e) => {
                debug!("fleet-cache: lookup not dispatched ({e:?})");
                refused.extend(batch);
            }
        }
        if sender.is_some() {
            break;
        }
    }
    for waiting in &refused {
        serve(shared, waiting, Err(StoreError::Dispatch));
    }
    if !refused.is_empty() {
        restore(shared, sender);
    }
}

/// Handles a callout answer if it is a lookup batch's; false if it is not (a write's). `at`
/// is the stream whose callback this is, or None in the root's.
pub fn answered(
    shared: &Shared,
    token: u32,
    status: Option<u16>,
    body: &[u8],
    at: Option<u32>,
) -> bool {
    let Some(batch) = shared.lookups.borrow_mut().answered(token) else {
        return false;
    };
    if at.is_none() {
        // The next batch leaves before these streams are served (see the module doc).
        send(shared);
    } else if shared.lookups.borrow().can_send() {
        // A stream about to be served must not send for others: the root does.
        shared.wake();
    }
    match webdis::parse_lookup(status, body, batch.len()) {
        Ok(values) => {
            for (waiting, value) in batch.iter().zip(values) {
                serve(shared, waiting, Ok(value));
            }
        }
        Err(e) => {
            debug!("fleet-cache: lookup failed: {e:?} (status {status:?})");
            for waiting in &batch {
                serve(shared, waiting, Err(e));
            }
        }
    }
    restore(shared, at);
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
