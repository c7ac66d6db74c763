//! A stream that lasts longer than a minute (an LLM completion, an SSE feed) through the
//! shipped envoy/envoy.yaml: it is not cut by a total route timeout, arrives whole with its
//! final chunk, is stored, and is replayed whole.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::{Stack, StackOptions};

#[test]
fn a_70_second_stream_is_delivered_whole_and_stored() {
    let st = Stack::start(StackOptions::with_config(json!({})));
    let path = "/sse?size=7000&chunks=70&pause_ms=1000&ctype=text/event-stream&cc=max-age%3D600";
    let t = Instant::now();
    let miss = st.get_streaming(path, &[]);
    let took = t.elapsed();
    assert!(took >= Duration::from_secs(65), "took {took:?}");
    assert_eq!(miss.status, 200);
    assert!(
        miss.complete,
        "cut after {took:?} and {} pieces",
        miss.chunks.len()
    );
    let cs = miss.header("cache-status").unwrap_or_default().to_string();
    assert!(cs.contains("stored"), "{cs}");
    let body: Vec<u8> = miss.chunks.iter().flat_map(|(_, c)| c.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hit = st.get(path, &[]);
        if hit
            .header("cache-status")
            .is_some_and(|c| c.contains("hit"))
        {
            assert_eq!(hit.body, body, "the whole stream replayed");
            break;
        }
        assert!(Instant::now() < deadline, "never stored: {:?}", hit.headers);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a browser's `EventSource` sends: it always asks `no-cache`.
const EVENT_SOURCE: [(&str, &str); 3] = [
    ("accept", "text/event-stream"),
    ("cache-control", "no-cache"),
    ("pragma", "no-cache"),
];

/// Stores `/stream` (the origin's SSE route) and returns what a browser then gets, and how
/// many times the origin was asked for the browser's request (0 or 1: the polling until the
/// stream is stored may ask it more, and is not counted).
fn event_source_after_a_stored_stream(config: serde_json::Value) -> (String, usize) {
    let st = Stack::start(StackOptions::with_config(config));
    let path = "/stream?cc=max-age%3D600";
    let first = st.get(path, &[]);
    assert_eq!(first.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !st
        .get(path, &[])
        .header("cache-status")
        .is_some_and(|c| c.contains("hit"))
    {
        assert!(Instant::now() < deadline, "the stream was never stored");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = st.origin().count("/stream");
    let browser = st.get(path, &EVENT_SOURCE);
    assert_eq!(browser.status, 200);
    assert_eq!(browser.body, first.body);
    let cs = browser
        .header("cache-status")
        .unwrap_or_default()
        .to_string();
    (cs, st.origin().count("/stream") - before)
}

#[test]
fn an_event_source_request_is_served_a_stored_stream_with_the_setting() {
    let (cs, origin_calls) =
        event_source_after_a_stored_stream(json!({"event_stream_ignores_no_cache": true}));
    assert!(cs.contains("hit"), "{cs}");
    assert_eq!(origin_calls, 0, "no new generation at the origin");
}

#[test]
fn an_event_source_request_goes_to_the_origin_without_the_setting() {
    let (cs, origin_calls) = event_source_after_a_stored_stream(json!({}));
    assert!(cs.contains("fwd=request"), "{cs}");
    assert_eq!(origin_calls, 1, "a new generation for the browser");
}
