//! HTTP caching policy (RFC 9111, RFC 9213), pure: may this request use the cache, may this
//! response be stored, for how long, how old is it, may a stored one be reused.

mod cache_control;
mod dates;
mod freshness;
mod headers;
mod request;
mod reuse;
#[cfg(test)]
mod sf_vectors;
mod storage;
mod structured;
mod targeted;

pub use cache_control::CacheControl;
pub use dates::{current_age_s, format_http_date, http_date_s};
pub use freshness::Freshness;
pub use headers::stored_headers;
pub use request::{BypassReason, RequestPolicy, request_policy};
pub use reuse::{Reuse, reuse};
pub use storage::{Exchange, NotStored, Storable, storability, targeted_field};
