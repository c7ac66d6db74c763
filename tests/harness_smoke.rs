//! Self-test of the integration-test harness (tests/support), without the cache filter: Envoy
//! proxies straight to the test origin, and Webdis is checked to allow what the filter needs.
//! Run with `cargo test --test harness_smoke`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::origin::{HELLO_BODY, percent_encode, unique_suffix};
use support::{Origin, Stack, StackOptions, binary_body};

fn bare_stack() -> Stack {
    Stack::start(StackOptions {
        without_filter: true,
        ..Default::default()
    })
}

/// The origin on its own: parameters, counters, request records, keep-alive.
#[test]
fn origin_behaviour() {
    let o = Origin::start();
    let get = |target: &str, headers: &[(&str, &str)]| {
        support::client::request(o.port(), "GET", target, headers, &[]).unwrap()
    };

    let r = get(
        "/a?cc=public,%20max-age=60&expires=0&vary=Accept&header=X-One:1&header=X-Two:%202&setcookie=1",
        &[("X-Req", "yes")],
    );
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(r.header("cache-control"), Some("public, max-age=60"));
    assert_eq!(r.header("expires"), Some("0"));
    assert_eq!(r.header("vary"), Some("Accept"));
    assert_eq!(r.header("x-one"), Some("1"));
    assert_eq!(r.header("x-two"), Some("2"));
    assert_eq!(r.header("set-cookie"), Some("a=b"));
    assert_eq!(r.header("x-origin-count"), Some("1"));
    assert!(r.header("date").is_some_and(|d| d.ends_with(" GMT")));
    assert!(r.text().contains("/a?"), "{}", r.text());
    let req = o.last_request("/a").unwrap();
    assert_eq!(req.header("x-req"), Some("yes"));
    assert_eq!(req.param("cc").as_deref(), Some("public, max-age=60"));

    assert_eq!(get("/s?status=404", &[]).status, 404);
    assert_eq!(
        get("/e?echo=accept-language", &[("Accept-Language", "fr")]).body,
        b"fr"
    );

    // unique=1: distinct content and length per request.
    let u1 = get("/u?unique=1", &[]);
    let u2 = get("/u?unique=1", &[]);
    assert!(u1.text().ends_with(&unique_suffix(1)));
    assert!(u2.text().ends_with(&unique_suffix(2)));
    assert!(u2.body.len() > u1.body.len());

    // Conditional requests and HEAD.
    let c = get("/c?etag=%22v1%22", &[("If-None-Match", "\"v1\"")]);
    assert_eq!((c.status, c.body.len()), (304, 0));
    assert_eq!(c.header("etag"), Some("\"v1\""));
    assert_eq!(
        get("/c?etag=%22v1%22", &[("If-None-Match", "\"v0\"")]).status,
        200
    );
    let lm = "Tue, 01 Jan 2030 00:00:00 GMT";
    let target = format!("/c?last_modified={}", percent_encode(lm.as_bytes()));
    assert_eq!(get(&target, &[("If-Modified-Since", lm)]).status, 304);
    let h = support::client::request(o.port(), "HEAD", "/h?size=100", &[], &[]).unwrap();
    assert_eq!(
        (h.status, h.body.len(), h.header("content-length")),
        (200, 0, Some("100"))
    );
    assert_eq!(o.last_request("/h").unwrap().method, "HEAD");

    // delay_ms.
    let t = Instant::now();
    get("/d?delay_ms=200", &[]);
    assert!(t.elapsed() >= Duration::from_millis(200));

    // Keep-alive: two requests on one connection, then a POST body is recorded.
    let mut s = TcpStream::connect(("127.0.0.1", o.port())).unwrap();
    s.write_all(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\nPOST /k HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
        .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 2, "{all}");
    let ks = o.requests("/k");
    assert_eq!(ks.len(), 2);
    assert_eq!(ks[0].conn, ks[1].conn);
    assert_eq!(ks[1].body, b"abc");

    assert_eq!(o.count("/u"), 2);
    assert_eq!(o.count("/c?whatever"), 3);
    assert_eq!(o.total(), 12);

    // Fixed routes.
    let hello = get("/hello", &[]);
    assert_eq!(hello.text(), HELLO_BODY);
    assert_eq!(hello.header("cache-control"), Some("public, max-age=60"));
    assert_eq!(hello.header("content-type"), Some("application/json"));
}

#[test]
fn binary_body_is_deterministic_and_complete() {
    let a = binary_body("/bin", 1000);
    assert_eq!(a, binary_body("/bin", 1000));
    assert_ne!(a, binary_body("/bin2", 1000));
    let mut seen = [false; 256];
    a[..256].iter().for_each(|&b| seen[b as usize] = true);
    assert!(seen.iter().all(|&s| s));
    for n in [1, 2, 10, 255] {
        assert!(binary_body("/x", n).contains(&0), "no NUL in {n} bytes");
    }
}

/// Envoy without the filter: plain proxying, binary bodies, HEAD and request headers reach the
/// origin, Envoy pools upstream connections.
#[test]
fn proxies_through_envoy() {
    let st = bare_stack();
    let r = st.get("/plain?cc=max-age%3D60", &[("X-Test", "1")]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("cache-control"), Some("max-age=60"));
    assert_eq!(r.text(), "origin response for /plain?cc=max-age%3D60\n");
    assert_eq!(
        st.origin().last_request("/plain").unwrap().header("x-test"),
        Some("1")
    );

    let bin = st.get("/bin?size=300000", &[]);
    assert!(bin.complete);
    assert_eq!(bin.body, binary_body("/bin", 300_000));
    assert!(bin.body.contains(&0));

    let head = st.request("HEAD", "/bin?size=300000", &[], &[]);
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(st.origin().last_request("/bin").unwrap().method, "HEAD");
    assert_eq!(st.origin().count("/bin"), 2);

    // Upstream keep-alive: later requests reuse a pooled connection. Envoy runs two workers,
    // each with its own pool, and each new downstream connection may land on either; so
    // consecutive requests need not share a connection, but among five requests at least
    // three reach one worker, and that worker's pool must have reused its connection.
    for _ in 0..5 {
        st.get("/pool", &[]);
    }
    let reqs = st.origin().requests("/pool");
    let conns: std::collections::HashSet<_> = reqs.iter().map(|r| r.conn).collect();
    assert!(
        conns.len() < reqs.len(),
        "no upstream connection reuse: {} requests on {} connections",
        reqs.len(),
        conns.len()
    );

    assert_eq!(
        st.origin().last_request("/plain").unwrap().header("host"),
        Some("localhost")
    );
    let _ = st.stats(0); // answers (empty without the filter)
}

/// Streaming: the client gets chunk 1 before the origin writes chunk 2.
#[test]
fn streams_chunks_as_they_come() {
    let st = bare_stack();
    let r = st.get_streaming("/s?chunks=3&pause_ms=300", &[]);
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(
        r.body(),
        "origin response for /s?chunks=3&pause_ms=300\n".as_bytes()
    );
    let sent = st.origin().chunk_times("/s");
    assert_eq!(sent.len(), 3);
    assert!(r.chunks.len() >= 3, "{:?}", r.chunks);
    assert!(
        r.chunks[0].0 < sent[1],
        "chunk 1 arrived after the origin wrote chunk 2"
    );
    assert!(r.chunks[0].0 >= sent[0]);
    // The last piece cannot come before the origin wrote the last chunk.
    assert!(r.chunks.last().unwrap().0 >= sent[2]);

    // The demo's SSE route.
    let sse = st.get_streaming("/stream", &[]);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.header("cache-control"), Some("max-age=60"));
    let body = String::from_utf8(sse.body()).unwrap();
    assert_eq!(
        body,
        (1..=5)
            .map(|i| format!("data: token {i}\n\n"))
            .collect::<String>()
    );
    let first_at = sse.chunks[0].0;
    assert!(st.origin().chunk_times("/stream")[4] > first_at + Duration::from_millis(700));
}

/// An origin reset mid-body reaches the client as a truncated response.
#[test]
fn upstream_reset_truncates() {
    let st = bare_stack();
    let r = st.get_streaming("/r?size=4000&chunks=4&reset_after=2&pause_ms=50", &[]);
    assert_eq!(r.status, 200);
    assert!(!r.complete, "a reset response must not look complete");
    let full = binary_body("/r", 4000);
    let got = r.body();
    assert_eq!(got, full[..got.len()]);
    assert!(got.len() <= 2000);
    assert_eq!(st.origin().chunk_times("/r").len(), 2);
}

/// Webdis allows exactly what the filter needs; binary values round-trip through EVAL + .raw.
#[test]
fn webdis_acl_and_binary_values() {
    let st = bare_stack();
    let key = format!("{}:k1", st.namespace());
    // The PUT body becomes the last ARGV, so the TTL comes first.
    let lua = "redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1]) return 1";
    let value: Vec<u8> = b"a\0b\r\n$-1\0".iter().copied().chain(0u8..=255).collect();
    let path = format!(
        "/EVAL/{}/1/{}/60000.raw",
        percent_encode(lua.as_bytes()),
        percent_encode(key.as_bytes())
    );
    let put = st.webdis_request("PUT", &path, &value);
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.body, b":1\r\n");

    let got = st.webdis_request(
        "GET",
        &format!("/GET/{}.raw", percent_encode(key.as_bytes())),
        &[],
    );
    assert_eq!(got.status, 200);
    let mut expect = format!("${}\r\n", value.len()).into_bytes();
    expect.extend_from_slice(&value);
    expect.extend_from_slice(b"\r\n");
    assert_eq!(got.body, expect);
    assert_eq!(st.redis_cli_bytes(&["GET", &key]), value);
    let ttl: i64 = st.redis_cli(&["PTTL", &key]).parse().unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "{ttl}");
    assert_eq!(st.keys(), vec![key.clone()]);

    assert_eq!(st.webdis_request("GET", "/PING", &[]).status, 200);
    // The ACL allows only what the filter sends (GET, GETRANGE, EVAL) and PING.
    let piece = st.webdis_request(
        "GET",
        &format!("/GETRANGE/{}/1/4.raw", percent_encode(key.as_bytes())),
        &[],
    );
    assert_eq!(piece.body, b"$4\r\n\0b\r\n\r\n");
    for refused in [
        "/MGET/x.raw",
        "/DEL/x",
        "/FLUSHALL",
        "/CONFIG/GET/maxmemory",
        "/SET/x/y",
        "/KEYS/*",
        "/flushall",
        "/MULTI",
    ] {
        assert_eq!(
            st.webdis_request("GET", refused, &[]).status,
            403,
            "{refused}"
        );
    }

    // EVAL is allowed, but Redis' ACL (envoy/redis.conf) keeps scripts to what the filter
    // needs: a script can't flush or enumerate the store.
    st.redis_cli(&["SET", "canary", "1"]);
    for script in [
        "return%20redis.call('FLUSHALL')",
        "return%20redis.call('KEYS','*')",
    ] {
        let r = st.webdis_request("GET", &format!("/EVAL/{script}/0.raw"), &[]);
        assert!(
            String::from_utf8_lossy(&r.body).contains("ERR"),
            "{script}: {:?}",
            r.text()
        );
    }
    assert_eq!(st.redis_cli(&["GET", "canary"]), "1");

    // Redis stop/start behind Webdis, and CLIENT PAUSE.
    st.stop_redis();
    assert_eq!(st.webdis_request("GET", "/PING.raw", &[]).status, 503);
    st.start_redis();
    let deadline = Instant::now() + Duration::from_secs(5);
    while st.webdis_request("GET", "/PING.raw", &[]).status != 200 {
        assert!(
            Instant::now() < deadline,
            "webdis did not reconnect to redis"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    st.pause_redis(300);
    let t = Instant::now();
    assert_eq!(st.webdis_request("GET", "/PING.raw", &[]).status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
}

/// Several Envoys on one Redis; concurrent requests; unique bodies.
#[test]
fn two_envoys_concurrent_requests() {
    let st = Stack::start(StackOptions {
        envoys: 2,
        without_filter: true,
        ..Default::default()
    });
    let bodies: Vec<Vec<u8>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let st = &st;
                s.spawn(move || {
                    let r = st.get_via(i % 2, "/u?unique=1&delay_ms=100", &[]);
                    assert_eq!(r.status, 200);
                    r.body
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut lens: Vec<usize> = bodies.iter().map(Vec::len).collect();
    lens.sort();
    lens.dedup();
    assert_eq!(lens.len(), 8, "bodies must differ in length");
    assert_eq!(st.origin().count("/u"), 8);
    assert_ne!(st.envoy_port(0), st.envoy_port(1));
    st.restart_envoy(1);
    assert_eq!(st.get_via(1, "/after-restart", &[]).status, 200);
}
