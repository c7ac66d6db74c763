//! Store answers that fail after they started arriving, through real Envoy: a fake store
//! (tests/support/fake_store.rs) stands between Envoy's store cluster and the real Webdis and,
//! on cue, answers with headers and then a drip, a stall, an oversized body, endless chunks, a
//! connection closed mid-body, an error status, garbage, or answers meant for other requests.
//!
//! What must hold for every fault: the client still gets the origin's response, in about the
//! store timeout (the filter fails open); once the store behaves again, the same Envoy (one
//! worker, so one wasm VM) serves and caches as before; and the VM never crashed (no panic or
//! wasm trap in Envoy's log), since a crashed VM answers 503 on that worker from then on.
//! Run with `cargo test --test store_faults -- --test-threads 2`.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use support::client;
use support::fake_store::{FakeStore, Mode};
use support::origin::text_body;
use support::{Resp, Stack, StackOptions};

/// `store.timeout_ms` (the default, set explicitly because the limits below depend on it).
const STORE_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a request may take while the store misbehaves: the timeout plus generous slack.
const SLACK: Duration = Duration::from_secs(2);
/// What a crashed wasm VM leaves in Envoy's log (the SDK's panic, then V8's trap).
const CRASH_SIGNS: &[&str] = &[
    "panicked",
    "unexpected status",
    "RuntimeError",
    "unreachable",
    "Wasm VM failed",
];
/// 40 MiB: far above any buffer limit of Envoy's async HTTP client.
const HUGE: usize = 40 * 1024 * 1024;

/// A stack whose store cluster goes through a fake store, and what went wrong so far. Fields
/// drop in order: Envoy stops before the fake store closes its sockets.
struct Rig {
    st: Stack,
    fake: FakeStore,
    /// Failed expectations, in order. A test goes on after one (each step is bounded in time)
    /// and fails at the end with all of them: a fault's whole effect in one run (the faulted
    /// request, the ones after it, the crash in the log).
    failures: Mutex<Vec<String>>,
}

fn start() -> Rig {
    start_with_breaker(5)
}

/// `breaker_failures` consecutive failed callouts open the breaker (0: never).
fn start_with_breaker(breaker_failures: u64) -> Rig {
    let fake = FakeStore::start();
    let st = Stack::start(StackOptions {
        store_port: Some(fake.port()),
        // One worker: every request runs in the same wasm VM, the one a fault could kill.
        concurrency: 1,
        plugin_config: json!({
            "store": {
                "timeout_ms": STORE_TIMEOUT.as_millis() as u64,
                // Writes that meet a fault give up within 1 s (default 5 s): the tests wait for
                // every faulted callout to end before checking recovery.
                "publish_timeout_ms": 1000,
                "breaker_failures": breaker_failures
            },
            // Every lookup goes to the store: the in-proxy tier would hide it.
            "memory": {"max_bytes": 0}
        }),
        ..StackOptions::default()
    });
    fake.set_upstream(st.webdis_port());
    Rig {
        st,
        fake,
        failures: Mutex::new(Vec::new()),
    }
}

impl Rig {
    fn note(&self, failure: String) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(failure);
    }

    /// Ends the test: Envoy's log must show no crashed VM, and nothing may have failed.
    fn finish(self) {
        // Envoy writes its log file every 100 ms.
        thread::sleep(Duration::from_millis(300));
        let crash = self.crash_lines();
        if !crash.is_empty() {
            self.note(format!(
                "the wasm VM crashed; Envoy's log:\n{}",
                crash[..crash.len().min(20)].join("\n")
            ));
        }
        let failures =
            std::mem::take(&mut *self.failures.lock().unwrap_or_else(|e| e.into_inner()));
        if failures.is_empty() {
            return;
        }
        let log = self.st.envoy_log(0);
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
        panic!(
            "{} failure(s):\n- {}\n{}\nenvoy log tail:\n{tail}",
            failures.len(),
            failures.join("\n- "),
            self.fake.describe(),
        );
    }

    /// The lines of Envoy's log that show a crashed VM.
    fn crash_lines(&self) -> Vec<String> {
        self.st
            .envoy_log(0)
            .lines()
            .filter(|l| CRASH_SIGNS.iter().any(|s| l.contains(s)))
            .map(str::to_string)
            .collect()
    }
}

/// A cacheable target of the test origin (its body is `text_body(target)`).
fn cacheable(path: &str) -> String {
    format!("{path}?cc=max-age%3D60")
}

fn cache_status(r: &Resp) -> String {
    r.header("cache-status").unwrap_or_default().to_string()
}

fn is_hit(r: &Resp) -> bool {
    cache_status(r).split([';', ',']).any(|p| p.trim() == "hit")
}

/// GET through envoy 0 on a helper thread, so a hung Envoy fails the step after `limit`
/// instead of after the client's 30 s read timeout. Err says what went wrong.
fn get_within(rig: &Rig, target: &str, limit: Duration) -> Result<(Resp, Duration), String> {
    let (port, t) = (rig.st.envoy_port(0), target.to_string());
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    thread::spawn(move || {
        let _ = tx.send(client::request(port, "GET", &t, &[], &[]));
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(r)) => Ok((r, start.elapsed())),
        Ok(Err(e)) => Err(format!("GET {target}: {e}")),
        Err(_) => Err(format!("GET {target}: no response within {limit:?}")),
    }
}

/// Why `r` is not the origin's response for `target`, whole, with the filter's
/// `cache-status`, within the limit; None if it is.
fn wrong(target: &str, got: &Result<(Resp, Duration), String>) -> Option<String> {
    let (r, took) = match got {
        Ok(ok) => ok,
        Err(e) => return Some(e.clone()),
    };
    let why = if r.status != 200 {
        "status is not 200"
    } else if r.body != text_body(target).as_bytes() {
        "not the origin's body for this target"
    } else if !r.complete {
        "truncated"
    } else if !r.has_header("cache-status") {
        "no cache-status: the filter did not run"
    } else if *took > STORE_TIMEOUT + SLACK {
        "too slow"
    } else {
        return None;
    };
    Some(format!(
        "GET {target}: {why}: {} after {took:?}, cache-status {:?}, body {:?}",
        r.status,
        r.header("cache-status"),
        String::from_utf8_lossy(&r.body[..r.body.len().min(120)])
    ))
}

/// GETs `target`; notes a failure (and returns None) unless it is the origin's response.
fn get_ok(rig: &Rig, target: &str) -> Option<Resp> {
    let got = get_within(rig, target, STORE_TIMEOUT + SLACK);
    match wrong(target, &got) {
        None => got.ok().map(|(r, _)| r),
        Some(why) => {
            rig.note(why);
            None
        }
    }
}

/// Requests `target` until it is a hit (a store write is async): 3 s at most. Stops at the
/// first wrong response (noted).
fn wait_hit(rig: &Rig, target: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let Some(r) = get_ok(rig, target) else {
            return;
        };
        if is_hit(&r) {
            return;
        }
        if Instant::now() >= deadline {
            rig.note(format!(
                "{target} never became a hit; last cache-status {:?}",
                cache_status(&r)
            ));
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// One fault at a time

/// Stores a URL; then lets `fault` answer cacheable misses' lookups, and another miss's
/// write; then checks that the same Envoy serves and caches as before, with no VM crash.
fn fault_then_recovery(fault: Mode) {
    let rig = start();
    let stored = cacheable("/stored");
    // Before the fault: the path works, and `stored` is in the store.
    wait_hit(&rig, &stored);

    // Lookups meet the fault (a failed lookup writes nothing). Three, one after the other:
    // `Garbage` cycles through three kinds. The first wrong response is enough.
    rig.fake.set_mode(fault.clone());
    let lookup_faulted: Vec<String> = (0..3)
        .map(|i| cacheable(&format!("/lookup-faulted-{i}")))
        .collect();
    let mut took = Vec::new();
    for t in &lookup_faulted {
        let got = get_within(&rig, t, STORE_TIMEOUT + SLACK);
        if let Ok((r, d)) = &got {
            took.push(format!("{d:.0?} ({})", cache_status(r)));
        }
        if let Some(why) = wrong(t, &got) {
            rig.note(why);
            break;
        }
    }
    eprintln!("{fault:?}: faulted lookups answered in {took:?}");
    if rig.fake.faulted() == 0 {
        rig.note("no lookup met the fault: the test tested nothing".into());
    }
    settle(&rig);
    // The faulted lookups, and the writes of their misses, may have opened the breaker: the
    // next request would then skip the store, and its write with it. A hit means it closed.
    wait_hit(&rig, &stored);

    // A write meets the fault: the lookup is relayed (a miss), the write that follows the
    // response is not.
    let before = rig.fake.faulted();
    rig.fake.set_mode_for("PUT", fault.clone());
    let write_faulted = cacheable("/write-faulted");
    if get_ok(&rig, &write_faulted).is_some() {
        let until = Instant::now() + Duration::from_secs(2);
        while rig.fake.faulted() == before && Instant::now() < until {
            thread::sleep(Duration::from_millis(10));
        }
        if rig.fake.faulted() == before {
            rig.note("the write never met the fault: the test tested less than it says".into());
        }
    }
    settle(&rig);
    eprintln!("{fault:?}: {}", rig.fake.describe());

    // The same worker: stored entries are hits, new ones get stored, the faulted ones too.
    wait_hit(&rig, &stored);
    for path in ["/after-a", "/after-b"] {
        wait_hit(&rig, &cacheable(path));
    }
    for t in lookup_faulted.iter().chain([&write_faulted]) {
        wait_hit(&rig, t);
    }
    rig.finish();
}

/// Back to relaying, once every faulted callout is over (Envoy closed its connection): a
/// crash when one ends must be seen by the requests that follow.
fn settle(rig: &Rig) {
    rig.fake.set_mode(Mode::Proxy);
    if !rig.fake.wait_faults_closed(Duration::from_secs(5)) {
        rig.note("Envoy kept faulted store connections open for 5 s".into());
    }
}

/// The control case: no answer at all is a plain timeout, which the filter has always
/// survived. It shows the steps above pass when the VM survives the fault.
#[test]
fn silent_store() {
    fault_then_recovery(Mode::Silent);
}

#[test]
fn drip_after_headers() {
    fault_then_recovery(Mode::DripAfterHeaders);
}

#[test]
fn stall_after_headers() {
    fault_then_recovery(Mode::StallAfterHeaders);
}

#[test]
fn oversized_answer() {
    fault_then_recovery(Mode::Oversized {
        len: HUGE,
        resp: false,
    });
}

#[test]
fn oversized_resp_bulk_answer() {
    fault_then_recovery(Mode::Oversized {
        len: HUGE,
        resp: true,
    });
}

#[test]
fn endless_chunks() {
    fault_then_recovery(Mode::EndlessChunks);
}

#[test]
fn close_mid_body() {
    fault_then_recovery(Mode::CloseMidBody);
}

#[test]
fn status_500() {
    fault_then_recovery(Mode::Status(500));
}

#[test]
fn garbage_answers() {
    fault_then_recovery(Mode::Garbage);
}

// ---------------------------------------------------------------------------------------------
// Answers for the wrong command

/// Every answer arrives for the command sent before it: lookups get other keys' entries or
/// write replies, writes get lookup answers. No response may carry another URL's body, none
/// may fail, and the store holds no wrong entry afterwards.
#[test]
fn swapped_answers_never_serve_another_url() {
    // Swapped answers are store errors, which would open the breaker and stop the swapping
    // this test is about: it stays closed here.
    let rig = start_with_breaker(0);
    let urls: Vec<String> = (0..10).map(|i| cacheable(&format!("/swap-{i}"))).collect();
    // Half of them stored: their lookups return entries, which then land on other requests.
    for u in &urls[..5] {
        wait_hit(&rig, u);
    }

    // Every answer shifted by one, whatever its command.
    rig.fake.set_mode(Mode::Swap);
    swapped_requests(&rig, &urls, "all answers swapped");

    // Every URL stored, then only lookups swapped (writes relayed): each lookup gets the
    // previous lookup's answer, mostly another URL's entry, which must never be served.
    rig.fake.set_mode(Mode::Proxy);
    for u in &urls {
        wait_hit(&rig, u);
    }
    let before = rig.fake.swapped_other();
    rig.fake.set_mode_for("GET", Mode::Swap);
    swapped_requests(&rig, &urls, "lookup answers swapped");
    if rig.fake.swapped_other() < before + 25 {
        rig.note("few lookups got another's answer: the test tested less than it says".into());
    }

    // Back to normal: every URL gets its own body (the store holds no other URL's) as a hit.
    rig.fake.set_mode(Mode::Proxy);
    for u in &urls {
        wait_hit(&rig, u);
    }
    rig.finish();
}

/// Two clients, 25 requests each, cycling through `urls` at different strides so that
/// lookups of different keys and writes interleave; notes every wrong response.
fn swapped_requests(rig: &Rig, urls: &[String], what: &str) {
    let results: Vec<(Option<String>, bool)> = thread::scope(|s| {
        let handles: Vec<_> = [1usize, 3]
            .into_iter()
            .map(|stride| {
                s.spawn(move || {
                    (0..25)
                        .map(|k| {
                            let u = &urls[(k * stride + stride) % urls.len()];
                            let got = get_within(rig, u, STORE_TIMEOUT + SLACK);
                            let hit = got.as_ref().is_ok_and(|(r, _)| is_hit(r));
                            (wrong(u, &got), hit)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client thread"))
            .collect()
    });
    let wrongs: Vec<&String> = results.iter().filter_map(|(w, _)| w.as_ref()).collect();
    let hits = results.iter().filter(|(_, hit)| *hit).count();
    eprintln!(
        "{what}: {} responses, {hits} hits, {} wrong; {}",
        results.len(),
        wrongs.len(),
        rig.fake.describe()
    );
    note_some(rig, what, &wrongs);
    // Concurrent lookups of one key share a callout, so some requests ride on another's
    // (swapped) answer; most must have met a swap of their own for the test to mean much.
    if rig.fake.faulted() < results.len() * 3 / 4 {
        rig.note(format!("{what}: few swapped answers for the requests"));
    }
}

/// Notes how many of `what` failed, with the first few.
fn note_some(rig: &Rig, what: &str, failures: &[&String]) {
    if !failures.is_empty() {
        let some: Vec<&str> = failures.iter().take(8).map(|f| f.as_str()).collect();
        rig.note(format!(
            "{what}: {} wrong response(s), e.g.\n    {}",
            failures.len(),
            some.join("\n    ")
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Many requests meeting the fault at once

/// 16 clients send misses for 2 s while every store answer drips: each gets its response in
/// time; afterwards the worker serves and caches normally, with no VM crash.
#[test]
fn burst_during_drip() {
    const CLIENTS: usize = 16;
    const FOR: Duration = Duration::from_secs(2);
    let rig = start();
    wait_hit(&rig, &cacheable("/before-burst"));

    rig.fake.set_mode(Mode::DripAfterHeaders);
    let started = Instant::now();
    let (failures, sent): (Vec<String>, usize) = thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let rig = &rig;
                s.spawn(move || {
                    let (mut failures, mut sent) = (Vec::new(), 0);
                    // Bounded in time and in count.
                    for k in 0..200 {
                        if started.elapsed() >= FOR {
                            break;
                        }
                        let u = cacheable(&format!("/burst-{c}-{k}"));
                        let got = get_within(rig, &u, STORE_TIMEOUT + SLACK);
                        sent += 1;
                        failures.extend(wrong(&u, &got));
                    }
                    (failures, sent)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .fold((Vec::new(), 0), |(mut f, n), (f1, n1)| {
                f.extend(f1);
                (f, n + n1)
            })
    });
    eprintln!(
        "burst during drip: {sent} requests, {} wrong; {}",
        failures.len(),
        rig.fake.describe()
    );
    note_some(&rig, "burst", &failures.iter().collect::<Vec<_>>());
    settle(&rig);
    wait_hit(&rig, &cacheable("/before-burst"));
    wait_hit(&rig, &cacheable("/after-burst"));
    rig.finish();
}

// ---------------------------------------------------------------------------------------------
// The fake store itself

/// One request on a kept-alive connection; the answer's status and its `Content-Length` body
/// (as much of it as arrives before EOF).
fn exchange(c: &mut BufReader<TcpStream>, request: &str) -> (u16, Vec<u8>) {
    c.get_mut().write_all(request.as_bytes()).expect("write");
    let (mut line, mut status, mut len) = (String::new(), 0, 0);
    loop {
        line.clear();
        c.read_line(&mut line).expect("read head");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some(code) = l.strip_prefix("HTTP/1.1 ") {
            status = code[..3].parse().expect("status");
        } else if let Some((n, v)) = l.split_once(':')
            && n.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().expect("content-length");
        }
    }
    let mut body = Vec::new();
    let _ = c.by_ref().take(len).read_to_end(&mut body);
    (status, body)
}

/// The harness under the tests: relaying with keep-alive, framing of the faults, and a Drop
/// that ends even a held-open fault promptly.
#[test]
fn fake_store_self_test() {
    let rig = start();
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", rig.fake.port())).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        BufReader::new(s)
    };
    let ping = "GET /PING.raw HTTP/1.1\r\nHost: webdis\r\n\r\n";
    let mut c = connect();
    for _ in 0..3 {
        assert_eq!(exchange(&mut c, ping), (200, b"+PONG\r\n".to_vec()));
    }
    // A PUT body reaches Webdis, as the last argument of the command (here EVAL's ARGV[1];
    // Webdis allows only GET, EVAL and PING).
    let put = "PUT /EVAL/return%20ARGV%5B1%5D/0.raw HTTP/1.1\r\nHost: webdis\r\n\
               Content-Length: 5\r\n\r\nhello";
    assert_eq!(exchange(&mut c, put), (200, b"$5\r\nhello\r\n".to_vec()));

    rig.fake.set_mode(Mode::Status(503));
    assert_eq!(exchange(&mut c, ping).0, 503);
    rig.fake.set_mode(Mode::Oversized {
        len: 100,
        resp: true,
    });
    let (status, body) = exchange(&mut c, ping);
    assert_eq!((status, body.len()), (200, 100));
    assert!(body.starts_with(b"$93\r\nxxx") && body.ends_with(b"x\r\n"));
    // Only GETs: a PUT is still relayed.
    rig.fake.set_mode_for("GET", Mode::Status(500));
    assert_eq!(exchange(&mut c, put).0, 200);
    assert_eq!(exchange(&mut c, ping).0, 500);
    rig.fake.set_mode(Mode::CloseMidBody);
    assert_eq!(exchange(&mut c, ping), (200, b"xxxxxxxxxx".to_vec()));

    // A stalled answer held open, and an idle connection: Drop ends both.
    rig.fake.set_mode(Mode::StallAfterHeaders);
    let mut held = connect();
    held.get_mut().write_all(ping.as_bytes()).unwrap();
    let mut head = String::new();
    held.read_line(&mut head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let _idle = connect();
    assert_eq!(rig.fake.open_faults(), 1);
    let Rig { st, fake, .. } = rig;
    drop(st);
    let t = Instant::now();
    drop(fake);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "Drop took {:?}",
        t.elapsed()
    );
}
