//! Prints the Webdis path of the filter's one-key lookup, exactly as the filter builds it
//! (`store::encode` of `Command::Lookup`), for the bench's context row ("Webdis, the filter's
//! lookup of one key, direct"): `cargo run --release --example lookup_path -- <key>`.

use fleet_cache::outbox::ANSWER_BYTES;
use fleet_cache::store::{self, Command, Request};

fn main() {
    let key = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "benchprobe:1k".into());
    let command = Command::Lookup {
        keys: vec![&key],
        inline_bytes: ANSWER_BYTES,
    };
    let Request::Http { path, .. } = store::encode(1, &command);
    println!("{path}");
}
