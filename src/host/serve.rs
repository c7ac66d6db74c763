//! Carrying the outbox's work out: sending its callouts, handing each reply to its stream,
//! turning its notes into counters and log lines.
//!
//! Callouts are sent by the root context only (a callout's answer goes to the context that
//! sent it, and a stream's context is gone once the stream ends), and only before the root
//! serves any stream in the same callback: serving can call back into the VM, after which the
//! SDK would credit a new callout to that stream. Replies are served on each stream's behalf
//! (`set_effective_context`); a stream that ended meanwhile is skipped.

use super::{Shared, Waiter, abi, background, dispatch, peers, stream};
use crate::entry::SharedDecoding;
use crate::flow::LookupStep;
use crate::metrics::Counter;
use crate::outbox::{Bytes, Note, Reply};
use crate::store::{Looked, StoreError};
use log::{debug, info, warn};
use std::cell::Cell;

thread_local! {
    /// Whether writes were failing at the last outcome: warnings are logged when writes start
    /// and stop failing, not once per write (metrics count each one).
    static WRITES_FAILING: Cell<bool> = const { Cell::new(false) };
}

/// One turn of the root: send what may go, serve the replies, count, re-arm the timer.
pub fn root_turn(shared: &Shared, now_ms: u64) {
    background::send_ready(shared);
    send_all(shared, now_ms);
    serve_replies(shared, now_ms);
    peers::resume_done(shared);
    count_notes(shared);
    // What serving asked for (a variant's lookup) woke the root for the next turn.
    let _ = abi::set_effective_context(shared.root_id);
    shared.arm_timer(now_ms, None);
}

/// Sends every callout the outbox lets go now.
fn send_all(shared: &Shared, now_ms: u64) {
    let Ok(mut outbox) = shared.outbox.try_borrow_mut() else {
        return;
    };
    while let Some(out) = outbox.poll_send(now_ms) {
        let nonce = out.nonce;
        let token = dispatch(&shared.config, &out.request, out.timeout_ms);
        if token.is_none() {
            debug!("fleet-cache: store callout not dispatched");
        }
        outbox.dispatched(now_ms, nonce, token);
    }
}

/// Hands every reply to its stream.
fn serve_replies(shared: &Shared, now_ms: u64) {
    loop {
        let next = shared
            .outbox
            .try_borrow_mut()
            .ok()
            .and_then(|mut o| o.poll_reply());
        let Some((id, reply)) = next else {
            break;
        };
        if let Reply::Locked(owner) = reply {
            // A background job's, not a stream's.
            background::locked(shared, id, owner, now_ms);
            continue;
        }
        let Some(waiter) = shared.waiting.borrow_mut().remove(&id) else {
            continue;
        };
        if abi::set_effective_context(id).is_err() {
            continue;
        }
        serve(shared, id, &waiter, reply, now_ms);
    }
}

/// Carries a stream's flow on with its reply, on its behalf.
fn serve(shared: &Shared, id: u32, waiter: &Waiter, reply: Reply, now_ms: u64) {
    match reply {
        Reply::Lookup(value) => {
            let unshared = SharedDecoding::default();
            let decoding = match &value {
                Ok(Looked::Value(bytes)) => bytes.decoding(),
                _ => &unshared,
            };
            let value = match &value {
                Ok(looked) => Ok(borrowed(looked)),
                Err(e) => Err(*e),
            };
            let step = waiter
                .flow
                .borrow_mut()
                .handle_store_answer(now_ms, value, decoding);
            let paused = pursue(shared, id, waiter, step, now_ms);
            stream::count_events(shared, &waiter.flow);
            if !paused {
                let _ = abi::resume_request();
            }
        }
        Reply::Following => {
            // Still waiting (for another request's fetch): its final reply comes later.
            waiter.flow.borrow_mut().following(now_ms);
            stream::count_events(shared, &waiter.flow);
            shared.waiting.borrow_mut().insert(
                id,
                Waiter {
                    flow: waiter.flow.clone(),
                    arrived_ms: waiter.arrived_ms,
                },
            );
        }
        Reply::Locked(_) => {}
        Reply::Purge(result) => {
            let reply = waiter.flow.borrow_mut().handle_purge_reply(result);
            stream::send_owned(&reply);
            stream::count_events(shared, &waiter.flow);
        }
        Reply::Invalidated(result, keys) => hold_for_siblings(shared, id, result, keys, now_ms),
        Reply::Written(result) => {
            if result.is_err() {
                shared.metrics.add(Counter::WritesUnconfirmed, 1);
            }
            if shared.release(id) {
                let _ = abi::resume_response();
            }
        }
    }
}

/// A lookup's answer with its value borrowed from the store's answer.
fn borrowed(looked: &Looked<Bytes>) -> Looked<&[u8]> {
    match looked {
        Looked::Value(bytes) => Looked::Value(&bytes[..]),
        Looked::Missing => Looked::Missing,
        Looked::Lead(owner) => Looked::Lead(*owner),
        Looked::NoWait(m) => Looked::NoWait(*m),
        Looked::WaitOver => Looked::WaitOver,
    }
}

/// The store answered (or not in time) for a held response's invalidation: this worker's tier
/// buries the keys (a lookup sent before the store dropped them may still bring the old
/// value), and the response waits for the siblings to do the same, at most
/// `store.timeout_ms` more. `peers::resume_done` lets it go on.
pub fn hold_for_siblings(
    shared: &Shared,
    id: u32,
    result: Result<(), StoreError>,
    keys: Vec<String>,
    now_ms: u64,
) {
    if let Ok(mut memory) = shared.worker.memory.try_borrow_mut() {
        for k in &keys {
            memory.forget(k, now_ms);
        }
    }
    let deadline = now_ms + shared.config.store.timeout_ms;
    shared
        .peers
        .hold(&shared.wake, id, keys, deadline, now_ms, result.is_ok());
}

/// Carries out a lookup step for stream `id` (the effective context): another lookup, a
/// reply, or the request released. Returns true while the request stays paused.
pub fn pursue(
    shared: &Shared,
    id: u32,
    waiter: &Waiter,
    step: LookupStep<'_>,
    now_ms: u64,
) -> bool {
    match step {
        LookupStep::Lookup(key) => {
            let wait_until = waiter.flow.borrow().wait_until();
            let immediate = match shared.outbox.try_borrow_mut() {
                Ok(mut o) => o.want(now_ms, id, key, waiter.arrived_ms, wait_until),
                Err(_) => Some(Reply::Lookup(Err(StoreError::Busy))),
            };
            match immediate {
                // Nothing to wait for (breaker open, deadline passed): decide now. Such a
                // reply never carries bytes, so the next step borrows nothing.
                Some(Reply::Lookup(Err(e))) => {
                    let next = waiter.flow.borrow_mut().handle_store_reply(now_ms, Err(e));
                    pursue(shared, id, waiter, next, now_ms)
                }
                Some(_) => {
                    let next = waiter
                        .flow
                        .borrow_mut()
                        .handle_store_reply(now_ms, Err(StoreError::Garbage));
                    pursue(shared, id, waiter, next, now_ms)
                }
                None => {
                    shared.waiting.borrow_mut().insert(
                        id,
                        Waiter {
                            flow: waiter.flow.clone(),
                            arrived_ms: waiter.arrived_ms,
                        },
                    );
                    shared.wake(now_ms);
                    true
                }
            }
        }
        LookupStep::Respond(reply) => {
            let headers: Vec<(&str, &str)> = reply.headers.iter().collect();
            let _ = abi::send_reply(reply.status, &headers, reply.body.bytes());
            // A stale entry served under stale-while-revalidate: its revalidation starts.
            background::start(shared, &waiter.flow, now_ms);
            true
        }
        LookupStep::Revalidate(conditions) => {
            // The request is still held: its headers can change before it goes on.
            for (name, value) in &conditions {
                let _ = abi::set_header(abi::Map::Request, name, Some(value));
            }
            false
        }
        LookupStep::Continue => false,
    }
}

/// The outbox's notes as counters and log lines.
pub fn count_notes(shared: &Shared) {
    let m = &shared.metrics;
    while let Some(note) = shared
        .outbox
        .try_borrow_mut()
        .ok()
        .and_then(|mut o| o.poll_note())
    {
        match note {
            Note::Published { bytes, rode } => {
                if rode {
                    m.add(Counter::PublishedWithLookups, 1);
                }
                m.add(Counter::Published, 1);
                m.add(Counter::BytesStored, bytes as u64);
                if WRITES_FAILING.replace(false) {
                    info!("fleet-cache: writes to the store succeed again");
                }
            }
            Note::WriteRetrying(e) => {
                m.add(Counter::PublishRetries, 1);
                debug!("fleet-cache: write failed ({}), retrying once", e.as_str());
            }
            Note::WriteFailed(e) => {
                m.add(Counter::PublishFailures, 1);
                if !WRITES_FAILING.replace(true) {
                    warn!(
                        "fleet-cache: writes to the store fail ({}); counting them in \
                         fleet_cache_publish_failures until one succeeds",
                        e.as_str()
                    );
                }
            }
            Note::Mismatch => m.add(Counter::StoreMismatches, 1),
            Note::BreakerOpened(e) => {
                // The in-proxy tier serves in grace while the store is skipped.
                shared.worker.store_failing.set(true);
                m.add(Counter::BreakerOpenings, 1);
                m.breaker(1);
                let hint = if e == StoreError::Forbidden {
                    " (refused: check store.credentials against Webdis' ACL)"
                } else {
                    ""
                };
                warn!(
                    "fleet-cache: store failing ({}{hint}); skipping it (requests go to the \
                     origin) until a probe succeeds",
                    e.as_str()
                );
            }
            Note::BreakerClosed => {
                shared.worker.store_failing.set(false);
                m.breaker(-1);
                info!("fleet-cache: store answers again; using it");
            }
            Note::LargeRead => m.add(Counter::LargeEntryReads, 1),
            Note::TooLarge => debug!("fleet-cache: a stored value larger than any entry"),
            Note::RidersSettled(result) => debug!(
                "fleet-cache: writes rode with a lookup: {}",
                result.map_or_else(|e| e.as_str(), |()| "landed")
            ),
        }
    }
}
