//! Integration-test support: a scriptable origin ([`origin`]), a small HTTP client
//! ([`client`]), the per-test process stack ([`stack`]: Redis, Webdis, Envoys), a scriptable
//! fake store between Envoy and Webdis ([`fake_store`]) and the filter's OCI image ([`oci`]:
//! built by scripts/oci.py, read as Istio's fetcher reads it).
//!
//! Every file in tests/ that declares `mod support;` compiles this separately and uses only part
//! of it, hence the allows.
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod cluster;
pub mod fake_store;
pub mod oci;
pub mod origin;
pub mod redis_script;
pub mod secured;
pub mod stack;

pub use client::{Resp, StreamResp};
pub use origin::{Origin, Request, binary_body};
pub use stack::{Stack, StackOptions, poll};
