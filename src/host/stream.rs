//! One request's context: feeds the flow and carries out its steps. The lookup callout is
//! dispatched from here (its answer must come back to this request); writes go to the root's
//! queue.

use super::{Shared, dispatch_store, lookup, now_ms, utf8_pairs};
use crate::flow::{Flow, LookupStep, OwnedReply, PurgeCommand, RequestStep, Source};
use crate::http::{RequestHead, ResponseHead};
use crate::metrics::{self, Counter};
use crate::store::{StoreError, StoreWrite, webdis};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use std::cell::RefCell;
use std::rc::Rc;

pub struct CacheStream {
    /// This stream's context id: how the root finds it to hand over a lookup's answer.
    id: u32,
    shared: Rc<Shared>,
    /// Shared with the root while a lookup is out (see [`Shared::waiting`]).
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

    /// Sends a purge; returns false when it could not even be dispatched. The client waits
    /// for it, but it is a write: it gets the write deadline.
    fn dispatch_purge(&self, purge: &PurgeCommand) -> bool {
        let cfg = &self.shared.config;
        let callout = match purge {
            PurgeCommand::Resources(keys) => webdis::invalidate(keys),
            PurgeCommand::Tags(keys) => webdis::purge_tags(keys),
        };
        dispatch_store(cfg, &callout, None, cfg.store.publish_timeout_ms).is_ok()
    }

    fn publish(&self, write: StoreWrite) {
        let pushed = self.shared.queue.borrow_mut().push(write);
        if pushed {
            // The root sends the write from its own context, right after this callback; a
            // write that waits for the batch out, or to ride with the next lookups, is sent
            // by that batch's answer.
            let ready = self.shared.queue.borrow().can_send();
            if ready && !self.shared.write_waits_for_ride() {
                self.shared.wake();
            }
        } else {
            self.shared.metrics.add(Counter::PublishDropped, 1);
        }
    }
}

fn count_events(shared: &Shared, flow: &RefCell<Flow>) {
    for event in flow.borrow_mut().take_events() {
        for c in metrics::counters_for(event) {
            shared.metrics.add(*c, 1);
        }
    }
}

fn send_owned(reply: &OwnedReply) {
    let headers = reply
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    send_reply(reply.status, headers, &reply.body);
}

/// A local reply on the effective context: Envoy adds content-length (and, for HEAD, omits
/// the body).
fn send_reply(status: u16, headers: Vec<(&str, &str)>, body: &[u8]) {
    let _ = hostcalls::send_http_response(status as u32, headers, Some(body));
}

/// Where a step is carried out from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum From {
    /// The stream's own callback.
    Stream,
    /// Another context's callback (the receiver of a lookup answer), on the stream's behalf.
    Other,
}

/// Carries out a lookup step for stream `id` (the effective context). Returns true when the
/// request stays paused.
fn proceed(
    shared: &Shared,
    id: u32,
    flow: &Rc<RefCell<Flow>>,
    step: LookupStep<'_>,
    from: From,
) -> bool {
    match step {
        LookupStep::Lookup(key) => {
            shared.waiting.borrow_mut().insert(id, flow.clone());
            let idle = shared.lookups.borrow().is_idle();
            if shared.lookups.borrow_mut().request(id, key) {
                if idle && from == From::Stream {
                    // Nothing to batch with: sent now, from here, without a hop.
                    lookup::send_from_stream(shared, id);
                } else {
                    // The root sends it, batched with whatever else waits.
                    shared.wake();
                }
            }
            true
        }
        LookupStep::Respond(reply) => {
            send_reply(
                reply.status,
                reply.headers.iter().collect(),
                reply.body.bytes(),
            );
            true
        }
        LookupStep::Revalidate(conditions) => {
            // The request is still held: its headers can change before it goes on.
            for (name, value) in &conditions {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
            }
            false
        }
        LookupStep::Continue => false,
    }
}

/// Carries out a step that arrived while the request was paused (the store's answer), and
/// releases the request unless the step keeps it.
pub fn carry_on(shared: &Shared, id: u32, flow: &Rc<RefCell<Flow>>, step: LookupStep<'_>) {
    let paused = proceed(shared, id, flow, step, From::Other);
    count_events(shared, flow);
    if !paused {
        let _ = hostcalls::resume_http_request();
    }
}

impl CacheStream {
    /// The stream is over (answered or reset): nothing may be sent on its behalf any more,
    /// and the lookups it sent itself will never be answered to it, so the streams that
    /// joined them are handed to the root.
    fn leave(&self) {
        self.shared.waiting.borrow_mut().remove(&self.id);
        if self.shared.lookups.borrow_mut().orphaned(self.id) {
            self.shared.wake();
        }
    }
}

impl Drop for CacheStream {
    fn drop(&mut self) {
        self.leave();
    }
}

impl Context for CacheStream {
    /// A lookup this stream sent itself, or a purge.
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        let status = self
            .get_http_call_response_header_bytes(":status")
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok());
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        if lookup::answered_at_stream(&self.shared, token, status, &body, self.id) {
            return;
        }
        if !self.flow.borrow().is_awaiting_purge() {
            return;
        }
        let result = webdis::parse_count(status, &body);
        let reply = self.flow.borrow_mut().handle_purge_reply(result);
        send_owned(&reply);
        self.count_events();
    }
}

impl HttpContext for CacheStream {
    fn on_http_request_headers(&mut self, _: usize, _end_of_stream: bool) -> Action {
        let (pairs, all_utf8) = utf8_pairs(self.get_http_request_headers_bytes());
        if !all_utf8 {
            return Action::Continue;
        }
        self.active = true;
        let step = self
            .flow
            .borrow_mut()
            .handle_request_headers(now_ms(), RequestHead::from_pairs(pairs));
        let shared = &self.shared;
        let paused = match step {
            RequestStep::Lookup(key) => proceed(
                shared,
                self.id,
                &self.flow,
                LookupStep::Lookup(key),
                From::Stream,
            ),
            RequestStep::Continue => false,
            RequestStep::Reply(reply) => {
                send_owned(&reply);
                true
            }
            RequestStep::Decided(step) => proceed(shared, self.id, &self.flow, step, From::Stream),
            RequestStep::Purge(purge) => {
                if !self.dispatch_purge(&purge) {
                    let reply = self
                        .flow
                        .borrow_mut()
                        .handle_purge_reply(Err(StoreError::Dispatch));
                    send_owned(&reply);
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
        let (pairs, all_utf8) = utf8_pairs(self.get_http_response_headers_bytes());
        let mut resp = ResponseHead::default();
        for (name, value) in pairs {
            if name == ":status" {
                resp.status = value.parse().unwrap_or(0);
            } else if !name.starts_with(':') {
                resp.headers.push((name, value));
            }
        }
        let via_upstream = self
            .get_property(vec!["response", "code_details"])
            .is_some_and(|d| d == b"via_upstream");
        let source = match (via_upstream, all_utf8) {
            (false, _) => Source::Envoy,
            (true, false) => Source::Unreplayable,
            (true, true) => Source::Origin,
        };
        let step =
            self.flow
                .borrow_mut()
                .handle_response_headers(now_ms(), &resp, end_of_stream, source);
        if let Some(cs) = step.cache_status {
            self.set_http_response_header("cache-status", Some(&cs));
        }
        if let Some(name) = step.remove_header {
            self.set_http_response_header(&name, None);
        }
        if let Some(write) = step.publish {
            self.publish(StoreWrite::Entry(write));
        }
        if !step.invalidate.is_empty() {
            self.publish(StoreWrite::Invalidate(step.invalidate));
        }
        self.count_events();
        if let Some(reply) = step.respond {
            // The origin's 304 is replaced by the stored response: Envoy sends this local reply
            // straight to the client (the response has not started downstream yet).
            send_owned(&reply);
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.active || !self.flow.borrow().wants_body() {
            return Action::Continue;
        }
        // Continue (never Pause): the chunk goes on to the client at once and the buffer holds
        // only the new bytes (PLATFORM.md).
        let chunk = if body_size > 0 {
            match self.get_http_response_body(0, body_size) {
                Some(c) => c,
                None => {
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
        if let Some(write) = write {
            self.publish(StoreWrite::Entry(write));
        }
        self.count_events();
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _: usize) -> Action {
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
