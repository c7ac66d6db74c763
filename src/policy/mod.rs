//! HTTP caching policy (RFC 9111), pure: may this request use the cache, may this response be
//! stored, for how long, how old is it.
//!
//! This first version covers what a shared cache must never get wrong: `no-store`, `private`,
//! `Set-Cookie`, `Authorization`, `Vary: *`, uncacheable statuses, and freshness from
//! `s-maxage`, `max-age`, `Expires`. Revalidation and the request directives beyond
//! `no-store`/`no-cache` come with the full RFC 9111 work; the types are shaped for it.

mod cache_control;
mod dates;
mod headers;
mod request;
mod reuse;
mod storage;

pub use cache_control::CacheControl;
pub use dates::{current_age_s, format_http_date, http_date_s};
pub use headers::stored_headers;
pub use request::{BypassReason, RequestPolicy, request_policy};
pub use reuse::{Reuse, StoredFreshness, reuse};
pub use storage::{
    Exchange, NotStored, Storable, response_directives, storability, targeted_field,
};
