//! One request's context: feeds the flow and carries out its steps. Store work goes to the
//! worker's outbox (sent by the root); the root hands this stream its reply.

use super::serve::pursue;
use super::{Shared, Waiter, abi, utf8_pairs};
use crate::flow::{Flow, OwnedReply, RequestStep, Source};
use crate::http::{RequestHead, ResponseHead};
use crate::metrics::{self, Counter};
use crate::outbox::Reply;
use crate::store::{StoreError, StoreWrite};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::rc::Rc;

/// The largest last chunk held back while its entry is written (read your writes).
const MAX_HELD_CHUNK: usize = 256 << 10;

pub struct CacheStream {
    /// This stream's context id: how the root finds it to hand over a reply.
    id: u32,
    shared: Rc<Shared>,
    /// Shared with the root while the stream waits for the store.
    flow: Rc<RefCell<Flow>>,
    /// False when the request was passed through without the flow (a header the host
    /// can't hand back as text): every later callback is then a no-op.
    active: bool,
}

impl CacheStream {
    pub fn new(id: u32, shared: Rc<Shared>) -> CacheStream {
        let flow = Flow::new(shared.config.clone(), shared.worker.clone());
        CacheStream {
            id,
            shared,
            flow: Rc::new(RefCell::new(flow)),
            active: false,
        }
    }

    fn count_events(&self) {
        count_events(&self.shared, &self.flow);
    }

    fn publish(&self, write: StoreWrite, now_ms: u64) {
        let queued = self
            .shared
            .outbox
            .try_borrow_mut()
            .is_ok_and(|mut o| o.write(write));
        if queued {
            self.shared.wake(now_ms);
        } else {
            self.shared.metrics.add(Counter::PublishDropped, 1);
        }
    }

    /// The response pauses until the root resumes it: every later response callback pauses
    /// too (`Shared::is_held`), and the root finds the stream among the waiting.
    fn start_hold(&self, now: u64) {
        self.shared.waiting.borrow_mut().insert(
            self.id,
            Waiter {
                flow: self.flow.clone(),
                arrived_ms: now,
            },
        );
        self.shared.hold(self.id);
    }

    /// RFC 9111 §4.4: the response to an unsafe request goes on only once the store and the
    /// sibling workers dropped what it invalidates (each bounded by `store.timeout_ms`), so a
    /// GET sent after it never gets the old entry from this proxy. True while held.
    fn hold_for_invalidation(&self, keys: Vec<String>, now: u64) -> bool {
        let shared = &self.shared;
        let immediate = match shared.outbox.try_borrow_mut() {
            Ok(mut o) => o.invalidate(now, self.id, keys),
            Err(_) => Some(Reply::Invalidated(Err(StoreError::Busy), keys)),
        };
        self.start_hold(now);
        let Some(Reply::Invalidated(result, keys)) = immediate else {
            shared.wake(now);
            return true;
        };
        // The store is being skipped: the siblings are still told, and waited for.
        super::serve::hold_for_siblings(shared, self.id, result, keys, now);
        let done = shared.peers.acks.borrow_mut().take_done(self.id);
        match done {
            Some(confirmed) => {
                shared.waiting.borrow_mut().remove(&self.id);
                shared.release(self.id);
                if !confirmed {
                    shared.metrics.add(Counter::InvalidationsUnconfirmed, 1);
                }
                false
            }
            None => {
                shared.arm_timer(now, None);
                true
            }
        }
    }

    /// Read your writes: the end of a response just recorded waits until the store has its
    /// entry (at most `store.timeout_ms`, plus a large entry's transfer allowance), so a
    /// request sent after the response completed is a hit, through any proxy. Only the end
    /// waits: every byte before it has gone to the client already. True while held.
    fn hold_for_write(&self, write: crate::store::Write, now: u64) -> bool {
        let shared = &self.shared;
        let lock = self.flow.borrow_mut().take_write_lock();
        let immediate = match shared.outbox.try_borrow_mut() {
            Ok(mut o) => {
                let r = o.write_held(now, self.id, StoreWrite::Entry(write), lock.clone());
                if let (Some(_), Some((key, owner))) = (&r, lock) {
                    // Not queued: the fetch's lock must not outlive it.
                    o.unlock(key, owner, crate::store::Unlock::Release);
                }
                r
            }
            Err(_) => Some(Reply::Written(Err(StoreError::Busy))),
        };
        if immediate.is_some() {
            // Not queued (the store is being skipped, or the queue is full): nothing to wait for.
            shared.metrics.add(Counter::PublishDropped, 1);
            return false;
        }
        self.start_hold(now);
        shared.wake(now);
        true
    }

    /// The stream is over (answered or reset): nothing is answered to it any more.
    fn leave(&self) {
        self.shared.waiting.borrow_mut().remove(&self.id);
        self.shared.release(self.id);
        if let Ok(mut acks) = self.shared.peers.acks.try_borrow_mut() {
            acks.stream_gone(self.id);
        }
        if let Ok(mut o) = self.shared.outbox.try_borrow_mut() {
            o.stream_gone(self.id);
        }
    }
}

/// Counts the flow's events, and hands the store a lock its fetch ended without an entry.
pub fn count_events(shared: &Shared, flow: &RefCell<Flow>) {
    for event in flow.borrow_mut().take_events() {
        for c in metrics::counters_for(event) {
            shared.metrics.add(*c, metrics::amount(event));
        }
    }
    let unlock = flow.borrow_mut().take_unlock();
    if let Some((key, owner, unlock)) = unlock
        && let Ok(mut outbox) = shared.outbox.try_borrow_mut()
    {
        outbox.unlock(key, owner, unlock);
        drop(outbox);
        shared.wake(abi::now_ms());
    }
}

/// A local reply on the effective context.
pub fn send_owned(reply: &OwnedReply) {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let _ = abi::send_reply(reply.status, &headers, &reply.body);
}

impl Drop for CacheStream {
    fn drop(&mut self) {
        self.leave();
    }
}

impl Context for CacheStream {
    // Every callout is the root's: nothing comes back to a stream.
}

impl HttpContext for CacheStream {
    fn on_http_request_headers(&mut self, _: usize, _end_of_stream: bool) -> Action {
        let Ok(pairs) = abi::headers(abi::Map::Request) else {
            return Action::Continue;
        };
        let (pairs, all_utf8) = utf8_pairs(pairs);
        if !all_utf8 {
            return Action::Continue;
        }
        self.active = true;
        let now = abi::now_ms();
        let step = self
            .flow
            .borrow_mut()
            .handle_request_headers(now, RequestHead::from_pairs(pairs));
        let shared = &self.shared;
        let waiter = Waiter {
            flow: self.flow.clone(),
            arrived_ms: now,
        };
        let paused = match step {
            RequestStep::Lookup(key) => pursue(
                shared,
                self.id,
                &waiter,
                crate::flow::LookupStep::Lookup(key),
                now,
            ),
            RequestStep::Decided(step) => pursue(shared, self.id, &waiter, step, now),
            RequestStep::Continue => false,
            RequestStep::Reply(reply) => {
                send_owned(&reply);
                true
            }
            RequestStep::Purge(purge) => {
                let immediate = match shared.outbox.try_borrow_mut() {
                    Ok(mut o) => o.purge(self.id, purge),
                    Err(_) => Some(Reply::Purge(Err(StoreError::Busy))),
                };
                match immediate {
                    Some(reply) => {
                        let result = match reply {
                            Reply::Purge(result) => result,
                            _ => Err(StoreError::Garbage),
                        };
                        let reply = self.flow.borrow_mut().handle_purge_reply(result);
                        send_owned(&reply);
                    }
                    None => {
                        shared.waiting.borrow_mut().insert(self.id, waiter);
                        shared.wake(now);
                    }
                }
                true
            }
        };
        self.count_events();
        if paused {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_response_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        if !self.active || self.flow.borrow().is_serving_hit() {
            return Action::Continue;
        }
        let Ok(pairs) = abi::headers(abi::Map::Response) else {
            self.flow.borrow_mut().abort_recording();
            return Action::Continue;
        };
        let (pairs, all_utf8) = utf8_pairs(pairs);
        let resp = ResponseHead::from_pairs(pairs);
        let via_upstream =
            abi::property(&["response", "code_details"]).is_some_and(|d| d == b"via_upstream");
        let source = match (via_upstream, all_utf8) {
            (false, _) => Source::Envoy,
            (true, false) => Source::Unreplayable,
            (true, true) => Source::Origin,
        };
        let now = abi::now_ms();
        let step =
            self.flow
                .borrow_mut()
                .handle_response_headers(now, &resp, end_of_stream, source);
        if let Some(cs) = step.cache_status {
            let _ = abi::set_header(abi::Map::Response, "cache-status", Some(&cs));
        }
        if let Some(name) = step.remove_header {
            let _ = abi::set_header(abi::Map::Response, &name, None);
        }
        let mut held = false;
        if let Some(write) = step.publish {
            // A whole recording (no body) is held until stored; a refresh is not: its answer
            // is our own local reply.
            if step.respond.is_none() && write.refresh.is_none() {
                held = self.hold_for_write(write, now);
            } else {
                self.publish(StoreWrite::Entry(write), now);
            }
        }
        if !step.invalidate.is_empty() {
            held |= self.hold_for_invalidation(step.invalidate, now);
        }
        self.count_events();
        if let Some(reply) = step.respond {
            // The origin's 304 is replaced by the stored response: Envoy sends this local reply
            // straight to the client (the response has not started downstream yet).
            send_owned(&reply);
            return Action::Pause;
        }
        if held {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.shared.is_held(self.id) {
            // Held (for the store or the siblings): Envoy buffers what comes meanwhile; going
            // on here would let the response out before the root resumes it.
            return Action::Pause;
        }
        if !self.active || !self.flow.borrow().wants_body() {
            return Action::Continue;
        }
        // Continue: the chunk goes on to the client at once and the buffer holds only the new
        // bytes (PLATFORM.md). The one exception is the chunk that completes a recording,
        // held until the store has the entry (`hold_for_write`).
        let chunk = if body_size > 0 {
            match abi::buffer(abi::Buffer::ResponseBody, 0, body_size) {
                Ok(Some(c)) => c,
                _ => {
                    // A hole in the recording would be a wrong body on every hit.
                    self.flow.borrow_mut().abort_recording();
                    self.count_events();
                    return Action::Continue;
                }
            }
        } else {
            Vec::new()
        };
        let write = self
            .flow
            .borrow_mut()
            .handle_response_body(&chunk, end_of_stream);
        let held = match write {
            // Holding this chunk buffers it in Envoy, whose limit (1 MiB by default) resets
            // the stream: a large last read goes on, unconfirmed.
            Some(w) if chunk.len() > MAX_HELD_CHUNK => {
                self.publish(StoreWrite::Entry(w), abi::now_ms());
                self.shared.metrics.add(Counter::WritesUnconfirmed, 1);
                false
            }
            Some(w) => self.hold_for_write(w, abi::now_ms()),
            None => false,
        };
        self.count_events();
        if held {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_response_trailers(&mut self, _: usize) -> Action {
        if self.shared.is_held(self.id) {
            return Action::Pause;
        }
        if self.active {
            self.flow.borrow_mut().handle_response_trailers();
            self.count_events();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.leave();
        if self.active {
            self.flow.borrow_mut().handle_stream_end();
            self.count_events();
        }
    }
}
