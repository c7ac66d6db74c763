//! The `stale` section: how long a stale entry may be served when the response did not say
//! (RFC 5861's `stale-while-revalidate` and `stale-if-error`, as defaults).

use super::{ConfigError, err};

/// Defaults for responses without RFC 5861 directives; a response's own directive (in its
/// targeted field or `Cache-Control`) always wins. 0 (the default) serves nothing stale that
/// the response did not allow: RFC 9111 §4.2.4 forbids it otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StaleConfig {
    /// Seconds past freshness a stale entry is served at once while one request, fleet-wide,
    /// revalidates it in the background.
    pub while_revalidate_s: u64,
    /// Seconds past freshness a stale entry answers in place of an origin error (500, 502, 503,
    /// 504) or an unreachable origin (Envoy's own 502/503/504).
    pub if_error_s: u64,
}

/// A week: longer windows keep a dead origin's answers alive for longer than anyone notices.
const MAX_WINDOW_S: u64 = 7 * 24 * 3600;

impl StaleConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            ("stale.while_revalidate_s", self.while_revalidate_s),
            ("stale.if_error_s", self.if_error_s),
        ] {
            if v > MAX_WINDOW_S {
                return Err(err(name, "must be at most 604800 (a week)"));
            }
        }
        Ok(())
    }
}
