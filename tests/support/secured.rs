//! The store with credentials end to end, as README's "Store access with credentials" deploys
//! it: Webdis' ACL wants the filter's Basic credentials (envoy/webdis-auth.json), Webdis logs
//! in to an Envoy redis_proxy with a password, and the proxy logs in to Redis as its own ACL
//! user; Redis' default user is off. The tests' secrets, never anyone's.

use super::stack::StackOptions;
use serde_json::{Value, json};
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// What the filter presents to Webdis.
pub const WEBDIS_USER: &str = "fleet-cache";
pub const WEBDIS_PASSWORD: &str = "webdis-pw-5d1e0c";
/// What Webdis presents to the redis_proxy.
pub const PROXY_PASSWORD: &str = "proxy-pw-91c0aa";
/// The Redis ACL user the redis_proxy logs in as.
pub const REDIS_USER: &str = "fleet-cache-webdis";
pub const REDIS_PASSWORD: &str = "redis-pw-77ab3f";

pub fn repo_file(name: &str) -> String {
    fs::read_to_string(format!("{REPO}/{name}")).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

/// The `authorization` header value for `user` and `password` (HTTP Basic).
pub fn basic(user: &str, password: &str) -> String {
    // The test's own encoder: the filter's is what is under test.
    let plain = format!("{user}:{password}");
    let b = plain.as_bytes();
    let abc = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::from("Basic ");
    for c in b.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &x)| n | (u32::from(x) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= c.len() {
                abc[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// Redis' answer to an unauthenticated `PING`.
pub fn unauthenticated_ping(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).trim().to_string()
}

/// `user:password` as the plugin config takes it.
pub fn credentials() -> String {
    format!("{WEBDIS_USER}:{WEBDIS_PASSWORD}")
}

/// envoy/redis.conf with the default user off and its rights given to the proxy's user, plus
/// `extra_rights` (a Cluster's discovery commands).
pub fn redis_conf(extra_rights: &str) -> String {
    let conf = repo_file("envoy/redis.conf");
    let line = conf
        .lines()
        .find(|l| l.starts_with("user default on nopass "))
        .expect("envoy/redis.conf limits the default user");
    let rights = line.trim_start_matches("user default on nopass ");
    conf.replace(
        line,
        &format!(
            "user default off\nuser {REDIS_USER} on >{REDIS_PASSWORD} {rights} {extra_rights}"
        ),
    )
}

/// Stack options for the secured chain: `store` is merged into the plugin's store section,
/// `proxy` names the redis_proxy config (envoy/redis-proxy.yaml, or the Cluster's).
pub fn options(store: Value, proxy: &str, extra_rights: &str) -> StackOptions {
    let webdis = repo_file("envoy/webdis-auth.json")
        .replace("{{WEBDIS_CREDENTIALS}}", &credentials())
        .replace("{{PROXY_PASSWORD}}", PROXY_PASSWORD);
    StackOptions {
        plugin_config: json!({ "store": store }),
        webdis_template: Some(webdis),
        redis_conf: Some(redis_conf(extra_rights)),
        redis_proxy: Some(repo_file(proxy)),
        redis_proxy_env: vec![
            ("FLEET_CACHE_PROXY_PASSWORD".into(), PROXY_PASSWORD.into()),
            ("FLEET_CACHE_REDIS_USER".into(), REDIS_USER.into()),
            ("FLEET_CACHE_REDIS_PASSWORD".into(), REDIS_PASSWORD.into()),
        ],
        ..StackOptions::default()
    }
}
