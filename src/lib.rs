//! fleet-cache: a shared HTTP cache for Envoy and Istio, as a proxy-wasm filter.
//!
//! The cache's decisions live in a pure, natively testable core (`config`, `key`, `policy`,
//! `entry`, `flow`, `store`); `host` is the thin proxy-wasm adapter that feeds it host events
//! and carries out what it returns. See README.md, "How it works".

pub mod budget;
pub mod cache_status;
pub mod conditional;
pub mod config;
pub mod entry;
pub mod flow;
pub mod header_map;
pub mod http;
pub mod key;
pub mod marks;
pub mod memory;
pub mod metrics;
pub mod outbox;
pub mod packing;
pub mod policy;
pub mod purge;
pub mod range;
pub mod reply;
pub mod revalidate;
pub mod siblings;
pub mod store;

// The adapter imports host functions that only exist inside a proxy-wasm host.
#[cfg(target_arch = "wasm32")]
mod host;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(host::root::CacheRoot::new(id))
    });
}}
