//! The root context: parses the plugin config, creates a stream per request, and runs the
//! root's turns (`serve::root_turn`): store answers, the timer, and wake-ups from streams.

use super::stream::CacheStream;
use super::{METRICS_FLUSH_MS, Shared, abi, peers, serve};
use crate::config::Config;
use log::{error, info};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use std::rc::Rc;

pub struct CacheRoot {
    id: u32,
    shared: Option<Rc<Shared>>,
}

impl CacheRoot {
    pub fn new(id: u32) -> CacheRoot {
        CacheRoot { id, shared: None }
    }
}

impl Context for CacheRoot {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body_size: usize, _: usize) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let now = abi::now_ms();
        if super::background::answered(&shared, token, headers, body_size, now) {
            serve::root_turn(&shared, now);
            return;
        }
        // A failed read (the answer broke after it started arriving) is `None`: a store
        // error (`Broken`) for what the callout carried, never a trap.
        let status = abi::header(abi::Map::CallResponse, ":status")
            .ok()
            .flatten()
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok());
        // No headers at all: Envoy reports a callout that failed (reset, cut mid-way, over its
        // buffer limit) this way, with nothing to read.
        let body = match abi::buffer(abi::Buffer::CallResponseBody, 0, body_size) {
            Ok(b) if headers > 0 => Some(b.unwrap_or_default()),
            _ => None,
        };
        if let Ok(mut outbox) = shared.outbox.try_borrow_mut() {
            outbox.answered(now, token, status, body);
        }
        serve::root_turn(&shared, now);
    }
}

impl RootContext for CacheRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        // Follow the host's log level so debug lines are not even formatted when unused.
        if let Some(level) = abi::log_level() {
            proxy_wasm::set_log_level(match level {
                0 => LogLevel::Trace,
                1 => LogLevel::Debug,
                2 => LogLevel::Info,
                3 => LogLevel::Warn,
                4 => LogLevel::Error,
                _ => LogLevel::Critical,
            });
        }
        let raw = abi::buffer(abi::Buffer::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = match Config::parse(&raw) {
            Ok(c) => c,
            Err(e) => {
                error!("fleet-cache: invalid plugin configuration: {e}");
                return false;
            }
        };
        info!(
            "fleet-cache: configured (namespace {}, store cluster {}, timeout {} ms)",
            config.namespace, config.store.cluster, config.store.timeout_ms
        );
        let seed = abi::random_u64() ^ u64::from(self.id);
        let shared = Rc::new(Shared::new(config, self.id, seed));
        // The first tick, a millisecond from now, registers this VM with its siblings (before
        // traffic reaches it). Not here: Envoy also configures VMs it discards at once (config
        // validation), which would stay registered without ever answering a sibling.
        let now = abi::now_ms();
        shared.arm_timer(now, Some(now + 1));
        self.shared = Some(shared);
        true
    }

    fn on_tick(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let now = abi::now_ms();
        if now >= shared.flushed_at.get() + METRICS_FLUSH_MS {
            shared.metrics.flush();
            shared.flushed_at.set(now);
        }
        if let Ok(mut outbox) = shared.outbox.try_borrow_mut() {
            outbox.handle_timeout(now);
        }
        if let Ok(mut acks) = shared.peers.acks.try_borrow_mut() {
            acks.handle_timeout(now);
        }
        shared.peers.beat(now);
        // The timer fired: whatever comes next re-arms it.
        shared.timer_at.set(u64::MAX);
        peers::on_messages(&shared, shared.wake.woken(), now);
        serve::root_turn(&shared, now);
    }

    fn on_queue_ready(&mut self, _queue_id: u32) {
        if let Some(shared) = self.shared.clone() {
            let now = abi::now_ms();
            peers::on_messages(&shared, shared.wake.woken(), now);
            serve::root_turn(&shared, now);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(CacheStream::new(context_id, shared)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
