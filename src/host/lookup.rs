//! Lookups on the root's side: sending the batches [`crate::lookups`] forms and handing each
//! answer to the streams that wait for it.
//!
//! A stream's flow is carried on by the root: the host applies calls to the context made
//! effective with `set_effective_context`, so the root answers, resumes or re-asks on the
//! stream's behalf, then switches back to itself. A stream that ended meanwhile removed
//! itself from [`Shared::waiting`] and is skipped.
//!
//! Sending only ever happens before any stream is served in the same callback: serving can
//! call back into the VM, after which the SDK would credit a new callout to that stream.

use super::{Shared, dispatch_store, now_ms, stream};
use crate::lookups::Waiting;
use crate::store::{StoreError, webdis};
use log::debug;
use proxy_wasm::hostcalls;

/// Sends what the in-flight bound allows. Batches the host refuses are answered with the
/// failure (the streams go on to the origin).
pub fn send(shared: &Shared) {
    let cfg = &shared.config;
    let mut refused = Vec::new();
    loop {
        let Some(batch) = shared.lookups.borrow_mut().next_batch() else {
            break;
        };
        let callout = webdis::lookup(batch.iter().map(|w| w.key.as_str()));
        match dispatch_store(cfg, &callout, None, cfg.store.timeout_ms) {
            Ok(token) => shared.lookups.borrow_mut().sent(token, batch),
            Err(e) => {
                debug!("fleet-cache: lookup not dispatched ({e:?})");
                refused.extend(batch);
            }
        }
    }
    for waiting in &refused {
        serve(shared, waiting, Err(StoreError::Dispatch));
    }
    if !refused.is_empty() {
        restore(shared);
    }
}

/// Handles a callout answer if it is a lookup batch's; false if it is not (a write's).
pub fn answered(shared: &Shared, token: u32, status: Option<u16>, body: &[u8]) -> bool {
    let Some(batch) = shared.lookups.borrow_mut().answered(token) else {
        return false;
    };
    // The next batch leaves before these streams are served (see the module doc).
    send(shared);
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
    restore(shared);
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
    }
}

/// Makes the root the context host calls apply to again.
fn restore(shared: &Shared) {
    let _ = hostcalls::set_effective_context(shared.root_id);
}
