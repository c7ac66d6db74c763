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
