//! How long a stored response may be used, and how: fixed when the response is received
//! (RFC 9111 §4.2, RFC 5861's stale windows), kept in the entry's metadata, and read by every
//! reuse decision. Defined once here: the store decision, the entry and reuse share it.

use super::current_age_s;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freshness {
    /// Freshness lifetime (§4.2.1), seconds, capped by `max_ttl_s`.
    pub lifetime_s: u64,
    /// Corrected initial age (§4.2.3), seconds.
    pub initial_age_s: u64,
    /// Stored with `no-cache`: validated before every use.
    pub no_cache: bool,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage` (which implies proxy-revalidate for
    /// a shared cache, §5.2.2.10): never used stale, whatever the client or a stale window
    /// allows.
    pub must_revalidate: bool,
    /// RFC 5861 §3: once stale, it may be served for this long while it is revalidated in the
    /// background.
    pub stale_while_revalidate_s: u64,
    /// RFC 5861 §4: once stale, it may be served for this long when the origin fails.
    pub stale_if_error_s: u64,
}

impl Freshness {
    /// Current age (§4.2.3) of a response stored at `stored_at_ms`.
    pub fn age_s(&self, stored_at_ms: u64, now_ms: u64) -> u64 {
        current_age_s(stored_at_ms, self.initial_age_s, now_ms)
    }

    /// Remaining freshness at `age_s` (negative once stale), as `Cache-Status` `ttl` says it.
    pub fn ttl_s(&self, age_s: u64) -> i64 {
        self.lifetime_s as i64 - age_s as i64
    }

    /// When a response stored at `stored_at_ms` stops being fresh (unix ms).
    pub fn fresh_until_ms(&self, stored_at_ms: u64) -> u64 {
        let fresh_s = self.lifetime_s.saturating_sub(self.initial_age_s);
        stored_at_ms.saturating_add(fresh_s.saturating_mul(1000))
    }

    /// When a response stored at `stored_at_ms` stops being usable at all without the origin's
    /// word: the end of the longer stale window (unix ms). Never past freshness for an entry
    /// that must not be served stale. Counted from when it stopped being fresh, which for a
    /// response that arrived stale is before it was stored.
    pub fn usable_until_ms(&self, stored_at_ms: u64) -> u64 {
        let stale_s = if self.must_revalidate || self.no_cache {
            0
        } else {
            self.stale_while_revalidate_s.max(self.stale_if_error_s)
        };
        let left_s = self.lifetime_s as i128 - self.initial_age_s as i128 + stale_s as i128;
        (stored_at_ms as i128 + left_s * 1000).clamp(0, u64::MAX as i128) as u64
    }

    /// How long the entry stays in the store: the rest of its freshness, plus the longer of
    /// `keep_stale_s` (so a stale copy can still be revalidated, or served to a client that
    /// accepts staleness) and its stale windows.
    pub fn store_ttl_ms(&self, keep_stale_s: u64) -> u64 {
        let fresh = self.lifetime_s.saturating_sub(self.initial_age_s);
        let stale = keep_stale_s
            .max(self.stale_while_revalidate_s)
            .max(self.stale_if_error_s);
        fresh.saturating_add(stale).saturating_mul(1000)
    }

    /// Stale at `age_s` by no more than `window_s` (0: no window), and allowed to be served
    /// stale at all.
    pub fn within_stale_window(&self, age_s: u64, window_s: u64) -> bool {
        let ttl = self.ttl_s(age_s);
        window_s > 0
            && !self.must_revalidate
            && !self.no_cache
            && ttl <= 0
            && (-ttl) as u64 <= window_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(lifetime_s: u64, initial_age_s: u64) -> Freshness {
        Freshness {
            lifetime_s,
            initial_age_s,
            ..Freshness::default()
        }
    }

    #[test]
    fn fresh_until_counts_the_age_it_arrived_with() {
        assert_eq!(f(60, 10).fresh_until_ms(1_000), 51_000);
        assert_eq!(f(10, 60).fresh_until_ms(1_000), 1_000);
    }

    #[test]
    fn the_store_keeps_an_entry_for_its_longest_stale_window() {
        let base = f(60, 0);
        assert_eq!(base.store_ttl_ms(30), 90_000);
        let swr = Freshness {
            stale_while_revalidate_s: 100,
            ..base
        };
        assert_eq!(swr.store_ttl_ms(30), 160_000);
        let sie = Freshness {
            stale_if_error_s: 200,
            ..swr
        };
        assert_eq!(sie.store_ttl_ms(30), 260_000);
        assert_eq!(sie.usable_until_ms(0), 260_000);
        // Arrived 100 s old: stale by 40 s already, usable 160 s more.
        let late = Freshness {
            initial_age_s: 100,
            ..sie
        };
        assert_eq!(late.usable_until_ms(1_000_000), 1_160_000);
    }

    #[test]
    fn rfc5861_stale_windows_start_when_freshness_ends_and_never_override_must_revalidate() {
        let s = f(60, 0);
        assert!(!s.within_stale_window(59, 10), "still fresh");
        assert!(s.within_stale_window(60, 10));
        assert!(s.within_stale_window(70, 10));
        assert!(!s.within_stale_window(71, 10));
        assert!(!s.within_stale_window(60, 0), "no window at all");
        let strict = Freshness {
            must_revalidate: true,
            stale_if_error_s: 10,
            ..s
        };
        assert!(!strict.within_stale_window(65, 10));
        assert_eq!(strict.usable_until_ms(0), 60_000);
        let no_cache = Freshness {
            no_cache: true,
            ..s
        };
        assert!(!no_cache.within_stale_window(65, 10));
    }
}
