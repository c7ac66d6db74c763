//! Read your own writes through real Envoy, Webdis and Redis: a response the proxy finished
//! recording is a hit for the next request, whichever worker or proxy it reaches.

mod support;

use support::{Resp, Stack, StackOptions};

fn cache_status(r: &Resp) -> &str {
    r.header("cache-status").unwrap_or("")
}

/// A stored miss, then at once the same request: always a hit. `via` picks the proxy of the
/// second request.
fn rounds(s: &Stack, n: usize, via: usize) {
    for round in 0..n {
        let path = format!("/ryw{round}?cc=max-age%3D60&size=3000");
        let miss = s.get(&path, &[]);
        assert!(
            cache_status(&miss).contains("stored"),
            "round {round}: {miss:?}"
        );
        let next = s.get_via(via, &path, &[]);
        assert!(
            cache_status(&next).contains("hit"),
            "round {round}: a miss right after the response was stored: {next:?}\n{}",
            s.diag()
        );
        assert_eq!(next.body, miss.body);
    }
}

#[test]
fn a_request_right_after_a_stored_miss_is_a_hit_on_any_worker() {
    let s = Stack::start(StackOptions {
        concurrency: 2,
        ..StackOptions::default()
    });
    rounds(&s, 200, 0);
    assert_eq!(s.counter("fleet_cache_writes_unconfirmed"), 0);
}

#[test]
fn a_request_right_after_a_stored_miss_is_a_hit_through_another_proxy() {
    let s = Stack::start(StackOptions {
        envoys: 2,
        ..StackOptions::default()
    });
    rounds(&s, 100, 1);
}
