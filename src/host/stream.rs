//! One request's context: feeds the flow and carries out its steps. The lookup callout is
//! dispatched from here (its answer must come back to this request); writes go to the root's
//! queue.

use super::{Shared, dispatch_store, unix_ms, utf8_pairs};
use crate::flow::{Flow, LookupStep, OwnedReply, PurgeCommand, RequestStep, Source};
use crate::http::{RequestHead, ResponseHead};
use crate::metrics::{self, Counter};
use crate::store::{StoreError, StoreWrite, webdis};
use log::debug;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;

pub struct CacheStream {
    shared: Rc<Shared>,
    flow: Flow,
    /// False when the request was passed through without the flow (a header the host
    /// can't hand back as text): every later callback is then a no-op.
    active: bool,
}

impl CacheStream {
    pub fn new(shared: Rc<Shared>) -> CacheStream {
        let flow = Flow::new(shared.config.clone(), shared.worker.clone());
        CacheStream {
            shared,
            flow,
            active: false,
        }
    }

    fn now_ms(&self) -> u64 {
        unix_ms(self.get_current_time())
    }

    fn count_events(&mut self) {
        for event in self.flow.take_events() {
            for c in metrics::counters_for(event) {
                self.shared.metrics.add(*c, 1);
            }
        }
    }

    /// Sends a lookup; returns false when it could not even be dispatched.
    fn dispatch_lookup(&self, key: &str) -> bool {
        let cfg = &self.shared.config;
        dispatch_store(self, cfg, &webdis::get(key), None, cfg.store.timeout_ms).is_ok()
    }

    /// Sends a purge; returns false when it could not even be dispatched. The client waits
    /// for it, but it is a write: it gets the write deadline.
    fn dispatch_purge(&self, purge: &PurgeCommand) -> bool {
        let cfg = &self.shared.config;
        let callout = match purge {
            PurgeCommand::Resources(keys) => webdis::invalidate(keys),
            PurgeCommand::Tags(keys) => webdis::purge_tags(keys),
        };
        dispatch_store(self, cfg, &callout, None, cfg.store.publish_timeout_ms).is_ok()
    }

    fn send_owned(&self, reply: &OwnedReply) {
        self.send_reply(reply.status, &reply.headers, &reply.body);
    }

    /// A local reply: Envoy adds content-length (and, for HEAD, omits the body).
    fn send_reply(&self, status: u16, headers: &[(String, String)], body: &[u8]) {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        self.send_http_response(status as u32, headers, Some(body));
    }

    /// Carries out a lookup step. Returns true when the request stays paused.
    fn proceed(&mut self, step: LookupStep<'_>) -> bool {
        match step {
            LookupStep::Lookup(key) => {
                if self.dispatch_lookup(&key) {
                    return true;
                }
                let now = self.now_ms();
                let next = self.flow.handle_store_reply(now, Err(StoreError::Dispatch));
                self.proceed(next)
            }
            LookupStep::Respond(reply) => {
                self.send_reply(reply.status, &reply.headers, reply.body.bytes());
                true
            }
            LookupStep::Revalidate(conditions) => {
                // The request is still held: its headers can change before it goes on.
                for (name, value) in &conditions {
                    self.set_http_request_header(name, Some(value));
                }
                false
            }
            LookupStep::Continue => false,
        }
    }

    fn publish(&self, write: StoreWrite) {
        let pushed = self.shared.queue.borrow_mut().push(write);
        if pushed {
            // Wake the root: it sends the write from its own context on the next tick.
            self.shared.wake_publisher();
        } else {
            self.shared.metrics.add(Counter::PublishDropped, 1);
        }
    }
}

impl Context for CacheStream {
    fn on_http_call_response(&mut self, _token: u32, _: usize, body_size: usize, _: usize) {
        let status = self
            .get_http_call_response_header_bytes(":status")
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok());
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        if self.flow.is_awaiting_purge() {
            let reply = self
                .flow
                .handle_purge_reply(webdis::parse_count(status, &body));
            self.send_owned(&reply);
            self.count_events();
            return;
        }
        let reply = webdis::parse_get(status, &body);
        if let Err(e) = reply {
            debug!("fleet-cache: lookup failed: {e:?} (status {status:?})");
        }
        let now = self.now_ms();
        let step = self.flow.handle_store_reply(now, reply);
        let paused = self.proceed(step);
        self.count_events();
        if !paused {
            self.resume_http_request();
        }
    }
}

impl HttpContext for CacheStream {
    fn on_http_request_headers(&mut self, _: usize, _end_of_stream: bool) -> Action {
        let (pairs, all_utf8) = utf8_pairs(self.get_http_request_headers_bytes());
        if !all_utf8 {
            return Action::Continue;
        }
        self.active = true;
        let now = self.now_ms();
        let step = self
            .flow
            .handle_request_headers(now, RequestHead::from_pairs(pairs));
        let action = match step {
            RequestStep::Lookup(key) => {
                if self.dispatch_lookup(&key) {
                    Action::Pause
                } else {
                    let next = self.flow.handle_store_reply(now, Err(StoreError::Dispatch));
                    if self.proceed(next) {
                        Action::Pause
                    } else {
                        Action::Continue
                    }
                }
            }
            RequestStep::Continue => Action::Continue,
            RequestStep::Reply(reply) => {
                self.send_owned(&reply);
                Action::Pause
            }
            RequestStep::Decided(step) => {
                if self.proceed(step) {
                    Action::Pause
                } else {
                    Action::Continue
                }
            }
            RequestStep::Purge(purge) => {
                if !self.dispatch_purge(&purge) {
                    let reply = self.flow.handle_purge_reply(Err(StoreError::Dispatch));
                    self.send_owned(&reply);
                }
                Action::Pause
            }
        };
        self.count_events();
        action
    }

    fn on_http_response_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        if !self.active || self.flow.is_serving_hit() {
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
        let now = self.now_ms();
        let step = self
            .flow
            .handle_response_headers(now, &resp, end_of_stream, source);
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
            self.send_owned(&reply);
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.active || !self.flow.wants_body() {
            return Action::Continue;
        }
        // Continue (never Pause): the chunk goes on to the client at once and the buffer holds
        // only the new bytes (PLATFORM.md).
        let chunk = if body_size > 0 {
            match self.get_http_response_body(0, body_size) {
                Some(c) => c,
                None => {
                    // A hole in the recording would be a wrong body on every hit.
                    self.flow.abort_recording();
                    self.count_events();
                    return Action::Continue;
                }
            }
        } else {
            Vec::new()
        };
        if let Some(write) = self.flow.handle_response_body(&chunk, end_of_stream) {
            self.publish(StoreWrite::Entry(write));
        }
        self.count_events();
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _: usize) -> Action {
        if self.active {
            self.flow.handle_response_trailers();
            self.count_events();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.active {
            self.flow.handle_stream_end();
            self.count_events();
        }
    }
}
