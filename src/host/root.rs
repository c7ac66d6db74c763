//! The root context: parses the plugin config, defines metrics, creates a stream per request,
//! and owns the publish queue (writes must outlive their streams so their answers are seen).

use super::stream::CacheStream;
use super::wake::Wake;
use super::{METRICS_FLUSH, Metrics, Shared, dispatch_store, lookup};
use crate::config::Config;
use crate::flow::Worker;
use crate::lookups::Waiting;
use crate::metrics::Counter;
use crate::publish::{self, Outcome, PublishQueue};
use crate::store::{StoreError, StoreWrite, webdis};
use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

pub struct CacheRoot {
    id: u32,
    shared: Option<Rc<Shared>>,
    /// Whether the last write failed: warnings are logged when writes start and stop
    /// failing, not once per write (an outage would flood the log; metrics count each one).
    publish_failing: bool,
}

impl Context for CacheRoot {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let status = self
            .get_http_call_response_header_bytes(":status")
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok());
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        if let Some(batch) = lookup::take(&shared, token) {
            self.lookup_answered(&shared, token, &batch, status, &body);
            return;
        }
        // Entries answer 1, invalidations a count: either way an integer.
        let result = webdis::parse_count(status, &body);
        debug!("fleet-cache: publish answer {status:?}: {result:?}");
        let outcomes = shared.queue.borrow_mut().answered(token, result.is_ok());
        for outcome in outcomes {
            self.count(&shared, outcome, &result);
        }
        self.drain(&shared);
    }
}

impl RootContext for CacheRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        // Follow the host's log level so debug lines are not even formatted when unused.
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::parse(&raw) {
            Ok(c) => c,
            Err(e) => {
                error!("fleet-cache: invalid plugin configuration: {e}");
                return false;
            }
        };
        // The queue may hold a few full recordings beyond what is in flight.
        let max_queue = (4 * config.max_body_bytes).max(64 * 1024 * 1024);
        info!(
            "fleet-cache: configured (namespace {}, store cluster {}, timeout {} ms)",
            config.namespace, config.store.cluster, config.store.timeout_ms
        );
        self.shared = Some(Rc::new(Shared {
            metrics: Metrics::define(),
            queue: RefCell::new(PublishQueue::new(max_queue)),
            worker: Worker::new(&config),
            ticking: Cell::new(false),
            lookups: RefCell::default(),
            waiting: RefCell::default(),
            wake: Wake::register(),
            root_id: self.id,
            config: Rc::new(config),
        }));
        // The slow tick flushes counters; publishing speeds it up while writes are pending.
        self.set_tick_period(METRICS_FLUSH);
        true
    }

    fn on_tick(&mut self) {
        if let Some(shared) = self.shared.clone() {
            shared.metrics.flush();
            self.send_all(&shared);
        }
    }

    fn on_queue_ready(&mut self, _queue_id: u32) {
        if let Some(shared) = self.shared.clone() {
            self.send_all(&shared);
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

impl CacheRoot {
    /// Counts one job's outcome; logs when writes start and stop failing.
    fn count<E: std::fmt::Debug>(
        &mut self,
        shared: &Shared,
        outcome: Outcome,
        result: &Result<u64, E>,
    ) {
        match outcome {
            Outcome::Published(bytes) => {
                shared.metrics.add(Counter::Published, 1);
                shared.metrics.add(Counter::BytesStored, bytes as u64);
                if std::mem::take(&mut self.publish_failing) {
                    info!("fleet-cache: writes to the store succeed again");
                }
            }
            Outcome::Retrying => {
                shared.metrics.add(Counter::PublishRetries, 1);
                debug!("fleet-cache: publish failed ({result:?}), retrying once");
            }
            Outcome::Failed => {
                shared.metrics.add(Counter::PublishFailures, 1);
                debug!("fleet-cache: publish failed ({result:?}), dropped");
                if !std::mem::replace(&mut self.publish_failing, true) {
                    warn!(
                        "fleet-cache: writes to the store fail ({result:?}); counting them in \
                         fleet_cache_publish_failures until one succeeds"
                    );
                }
            }
        }
    }

    pub fn new(id: u32) -> CacheRoot {
        CacheRoot {
            id,
            shared: None,
            publish_failing: false,
        }
    }

    /// Sends the lookups and writes the streams woke the root for.
    fn send_all(&mut self, shared: &Shared) {
        shared.wake.woken();
        let refused = self.send(shared);
        lookup::fail(shared, &refused, None);
    }

    /// Sends what may go: lookups, small waiting writes riding with the first batch (one
    /// callout's Envoy CPU for both: a miss's write rides with later requests' lookups), then
    /// the other writes. Returns the lookups the host refused: the caller fails them once it
    /// sends nothing more (serving streams may call back into the VM, after which the SDK
    /// would credit a new callout to a stream; see `lookup`).
    fn send(&mut self, shared: &Shared) -> Vec<Waiting> {
        let riders = if shared.lookups.borrow().can_send() {
            shared
                .queue
                .borrow_mut()
                .next_riders(lookup::MAX_RIDER_BYTES)
        } else {
            None
        };
        let sent = lookup::send(shared, riders);
        if let Some(jobs) = sent.riders_back {
            let outcomes = shared.queue.borrow_mut().not_sent(jobs);
            let failed: Result<u64, StoreError> = Err(StoreError::Dispatch);
            for outcome in outcomes {
                self.count(shared, outcome, &failed);
            }
        }
        self.drain(shared);
        sent.refused
    }

    /// A lookup batch's answer (with the writes that rode along, if any): the writes are
    /// settled and everything waiting is sent before the batch's streams are served.
    fn lookup_answered(
        &mut self,
        shared: &Shared,
        token: u32,
        batch: &[Waiting],
        status: Option<u16>,
        body: &[u8],
    ) {
        let answer = if shared.queue.borrow().carries(token) {
            let (answer, written) =
                match webdis::parse_entries_then_lookup(status, body, batch.len()) {
                    Ok((values, written)) => (Ok(values), written),
                    Err(e) => (Err(e), Err(e)),
                };
            let result = written.map(|()| 1);
            debug!("fleet-cache: writes rode with a lookup: {result:?}");
            let outcomes = shared.queue.borrow_mut().answered(token, result.is_ok());
            for outcome in outcomes {
                if let Outcome::Published(_) = outcome {
                    shared.metrics.add(Counter::PublishedWithLookups, 1);
                }
                self.count(shared, outcome, &result);
            }
            answer
        } else {
            webdis::parse_lookup(status, body, batch.len())
        };
        let refused = self.send(shared);
        lookup::serve_answer(shared, batch, &answer, None);
        lookup::fail(shared, &refused, None);
    }

    /// Sends what the queue allows; stops ticking when nothing is left to send. Small entries
    /// wait while a lookup batch the root sent is out: its answer sends the next batch,
    /// which they ride with (one callout instead of two).
    fn drain(&mut self, shared: &Shared) {
        let cfg = &shared.config;
        let mut held = false;
        loop {
            if shared.write_waits_for_ride() {
                held = true;
                break;
            }
            let Some(batch) = shared.queue.borrow_mut().next_batch() else {
                break;
            };
            let first = &batch[0];
            debug!(
                "fleet-cache: writing {} job(s), first {} (attempt {})",
                batch.len(),
                first.write.first_key(),
                first.attempt
            );
            let sent = match &first.write {
                StoreWrite::Entry(w) => match w.refresh {
                    Some(r) => dispatch_store(
                        cfg,
                        &webdis::put_refresh(w, r),
                        Some(&w.entry),
                        cfg.store.publish_timeout_ms,
                    ),
                    None => {
                        let writes = publish::entries(&batch);
                        dispatch_store(
                            cfg,
                            &webdis::put_entries(&writes),
                            Some(&webdis::entries_body(&writes)),
                            cfg.store.publish_timeout_ms,
                        )
                    }
                },
                StoreWrite::Invalidate(keys) => dispatch_store(
                    cfg,
                    &webdis::invalidate(keys),
                    None,
                    cfg.store.publish_timeout_ms,
                ),
            };
            match sent {
                Ok(token) => shared.queue.borrow_mut().sent(token, batch),
                Err(e) => {
                    let outcomes = shared.queue.borrow_mut().not_sent(batch);
                    let retrying = outcomes.contains(&Outcome::Retrying);
                    for outcome in outcomes {
                        self.count(shared, outcome, &Err(e));
                    }
                    if retrying {
                        // Retry on the next tick rather than spin now.
                        break;
                    }
                }
            }
        }
        if !held && shared.queue.borrow().can_send() {
            shared.tick_publisher();
        } else {
            shared.idle_publisher();
        }
    }
}
