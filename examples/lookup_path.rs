//! Prints the Webdis path of the filter's one-key lookup, exactly as the filter builds it
//! (`store::encode` of `Command::Lookup`), for the bench's context row ("Webdis, the filter's
//! lookup of one key, direct"): `cargo run --release --example lookup_path -- <key>`.

use fleet_cache::config::Config;
use fleet_cache::outbox::ANSWER_BYTES;
use fleet_cache::store::{self, Command, Locking, Request};

fn main() {
    let key = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "benchprobe:1k".into());
    // A GET's lookup asks for the key's lock (collapsed misses), as with the default config.
    let command = Command::Lookup {
        keys: vec![&key],
        inline_bytes: ANSWER_BYTES,
        locking: Some(Locking {
            keys: &[true],
            ttl_ms: Config::default().collapse.max_wait_ms,
        }),
    };
    let Request::Http { path, .. } = store::encode(1, &command);
    println!("{path}");
}
