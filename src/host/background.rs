//! Background revalidations (stale-while-revalidate, RFC 5861 §3): a stale entry was served
//! at once; its revalidation runs here, off the request. The job takes the entry's lock in
//! the store (one revalidation per key across the fleet), then the root sends the request to
//! the origin (the request's own upstream cluster, its headers, the entry's validators), and
//! the answer goes through the flow the request would have used (`flow::Background`): a 304
//! refreshes the entry's metadata, a storable response replaces it, anything else leaves the
//! stale entry as it is. The lock goes at the end either way.
//!
//! Ids of jobs are above every stream's context id, so the outbox's replies to them are told
//! apart from streams'.

use super::{Shared, abi, stream, utf8_pairs};
use crate::flow::{BACKGROUND_TIMEOUT_MS, Background, Flow, Source};
use crate::http::ResponseHead;
use crate::metrics::Counter;
use crate::outbox::Reply;
use crate::store::{StoreWrite, Unlock};
use log::debug;
use proxy_wasm::hostcalls;
use std::cell::{Cell, RefCell};
use std::time::Duration;

/// Job ids start here (Envoy's context ids count up from 1).
const FIRST_JOB: u32 = 0x8000_0000;
/// Jobs at once per worker: more stale hits than this wait for the next.
const MAX_JOBS: usize = 64;

struct Job {
    id: u32,
    key: String,
    cluster: String,
    headers: Vec<(String, String)>,
    flow: RefCell<Flow>,
    /// The lock, once taken: its owner.
    owner: Option<u64>,
    /// The callout, once sent.
    token: Option<u32>,
}

#[derive(Default)]
pub struct Jobs {
    list: RefCell<Vec<Job>>,
    next: Cell<u32>,
}

/// After a stream's step: a revalidation its flow asks for starts (on the stream's context:
/// its upstream cluster is read there).
pub fn start(shared: &Shared, flow: &RefCell<Flow>, now_ms: u64) {
    let Some(bg) = flow.borrow_mut().take_background() else {
        return;
    };
    let Background { key, headers, flow } = *bg;
    // The route's cluster, before the router picked a host too.
    let cluster = abi::property(&["cluster_name"])
        .or_else(|| abi::property(&["xds", "cluster_name"]))
        .and_then(|c| String::from_utf8(c).ok())
        .filter(|c| !c.is_empty());
    let jobs = &shared.jobs;
    let (Some(cluster), true) = (cluster, jobs.list.borrow().len() < MAX_JOBS) else {
        debug!("fleet-cache: no background revalidation (no upstream cluster, or too many)");
        flow.revalidation_over(&key);
        return;
    };
    let id = FIRST_JOB + jobs.next.get() % FIRST_JOB;
    jobs.next.set(jobs.next.get().wrapping_add(1));
    let immediate = match shared.outbox.try_borrow_mut() {
        Ok(mut o) => o.lock(id, key.clone(), BACKGROUND_TIMEOUT_MS),
        Err(_) => Some(Reply::Locked(None)),
    };
    if immediate.is_some() {
        flow.revalidation_over(&key);
        return;
    }
    jobs.list.borrow_mut().push(Job {
        id,
        key,
        cluster,
        headers,
        flow: RefCell::new(flow),
        owner: None,
        token: None,
    });
    shared.wake(now_ms);
}

/// The lock a job asked for: taken (its callout goes in the root's next turn) or not (the job
/// ends: someone else revalidates).
pub fn locked(shared: &Shared, id: u32, owner: Option<u64>, now_ms: u64) {
    let mut list = shared.jobs.list.borrow_mut();
    let Some(i) = list.iter().position(|j| j.id == id) else {
        return;
    };
    match owner {
        Some(owner) => {
            list[i].owner = Some(owner);
            drop(list);
            shared.wake(now_ms);
        }
        None => {
            let job = list.swap_remove(i);
            job.flow.borrow().revalidation_over(&job.key);
        }
    }
}

/// Sends the callouts of jobs holding their lock. The root's, before it serves any stream in
/// this callback (a callout is credited to the context the SDK thinks is running).
pub fn send_ready(shared: &Shared) {
    let mut list = shared.jobs.list.borrow_mut();
    let mut failed = Vec::new();
    for job in list
        .iter_mut()
        .filter(|j| j.owner.is_some() && j.token.is_none())
    {
        let headers: Vec<(&str, &str)> = job
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let timeout = Duration::from_millis(BACKGROUND_TIMEOUT_MS);
        match hostcalls::dispatch_http_call(&job.cluster, headers, None, vec![], timeout) {
            Ok(token) => {
                job.token = Some(token);
                shared.metrics.add(Counter::BackgroundRevalidations, 1);
            }
            Err(_) => failed.push(job.id),
        }
    }
    for id in failed {
        if let Some(i) = list.iter().position(|j| j.id == id) {
            let job = list.swap_remove(i);
            end(shared, job);
        }
    }
}

/// A callout's answer, if it is a job's: the origin's response goes through the job's flow,
/// and what it writes goes to the store. False when the token is not a job's.
pub fn answered(
    shared: &Shared,
    token: u32,
    headers: usize,
    body_size: usize,
    now_ms: u64,
) -> bool {
    let job = {
        let mut list = shared.jobs.list.borrow_mut();
        let Some(i) = list.iter().position(|j| j.token == Some(token)) else {
            return false;
        };
        list.swap_remove(i)
    };
    // No headers: the callout failed (reset, timeout past its buffer); the stale entry stays.
    let pairs = if headers > 0 {
        abi::headers(abi::Map::CallResponse).ok()
    } else {
        None
    };
    let body = abi::buffer(abi::Buffer::CallResponseBody, 0, body_size)
        .ok()
        .flatten()
        .unwrap_or_default();
    if let Some(pairs) = pairs {
        let (pairs, all_utf8) = utf8_pairs(pairs);
        let resp = ResponseHead::from_pairs(pairs);
        let source = if all_utf8 {
            Source::Origin
        } else {
            Source::Unreplayable
        };
        let mut flow = job.flow.borrow_mut();
        let step = flow.handle_response_headers(now_ms, &resp, body.is_empty(), source);
        let mut writes: Vec<_> = step.publish.into_iter().collect();
        if flow.wants_body() {
            writes.extend(flow.handle_response_body(&body, true));
        }
        flow.handle_stream_end();
        drop(flow);
        if let Ok(mut outbox) = shared.outbox.try_borrow_mut() {
            for w in writes {
                if !outbox.write(StoreWrite::Entry(w)) {
                    shared.metrics.add(Counter::PublishDropped, 1);
                }
            }
        }
    }
    end(shared, job);
    true
}

/// A job is over: its counts, its lock freed (a no-op when the entry's write removed it).
fn end(shared: &Shared, job: Job) {
    stream::count_events(shared, &job.flow);
    job.flow.borrow().revalidation_over(&job.key);
    if let (Some(owner), Ok(mut outbox)) = (job.owner, shared.outbox.try_borrow_mut()) {
        outbox.unlock(job.key, owner, Unlock::Release);
    }
}
