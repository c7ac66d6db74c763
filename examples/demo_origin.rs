//! The demo origin for `make run`: the test origin (tests/support/origin.rs) serving forever on
//! 127.0.0.1:<PORT>, with its fixed routes `/hello` (JSON, `Cache-Control: public, max-age=60`)
//! and `/stream` (`text/event-stream`, five tokens 200 ms apart, `Cache-Control: max-age=60`),
//! plus every query parameter the tests use (`?cc=...&size=...&chunks=...`, see origin.rs).
//!
//! Usage: `cargo run --example demo_origin -- <PORT>`

#[path = "../tests/support/origin.rs"]
mod origin;

fn main() {
    let port = match std::env::args().nth(1).map(|p| p.parse::<u16>()) {
        Some(Ok(p)) => p,
        _ => {
            eprintln!("usage: demo_origin <PORT>");
            std::process::exit(2);
        }
    };
    let origin = match origin::Origin::start_on(port) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("demo_origin: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    origin.set_verbose(true);
    eprintln!(
        "demo_origin: listening on 127.0.0.1:{} (/hello, /stream)",
        origin.port()
    );
    loop {
        std::thread::park();
    }
}
