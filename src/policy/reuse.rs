//! May a stored response be used for this request without asking the origin (RFC 9111 §4)?

use super::CacheControl;

/// What the cache knows of a stored response's freshness at the time of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredFreshness {
    pub lifetime_s: u64,
    /// Current age (§4.2.3).
    pub age_s: u64,
    /// Stored with `no-cache`: never used without validation.
    pub no_cache: bool,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage`: never used stale.
    pub must_revalidate: bool,
}

impl StoredFreshness {
    /// Remaining freshness in seconds (negative once stale), as `Cache-Status` `ttl` says it.
    pub fn ttl_s(&self) -> i64 {
        self.lifetime_s as i64 - self.age_s as i64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Fresh, and acceptable to the client's directives.
    Fresh,
    /// Stale, but the client accepts this much staleness (`max-stale`) and the response does
    /// not forbid it.
    StaleAccepted,
    /// Must be validated with (or refetched from) the origin first.
    Validate,
}

pub fn reuse(stored: StoredFreshness, req: &CacheControl) -> Reuse {
    if stored.no_cache {
        return Reuse::Validate;
    }
    // The client's limits on age and remaining freshness (§5.2.1.1, §5.2.1.3).
    if req.max_age.is_some_and(|m| stored.age_s > m) {
        return Reuse::Validate;
    }
    let ttl = stored.ttl_s();
    if req.min_fresh.is_some_and(|m| ttl < m as i64) {
        return Reuse::Validate;
    }
    if ttl > 0 {
        return Reuse::Fresh;
    }
    // Stale: only if the client accepts it and the response allows it (§4.2.4, §5.2.1.2).
    let staleness = (-ttl) as u64;
    match req.max_stale {
        Some(limit) if !stored.must_revalidate && limit.is_none_or(|l| staleness <= l) => {
            Reuse::StaleAccepted
        }
        _ => Reuse::Validate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(lifetime_s: u64, age_s: u64) -> StoredFreshness {
        StoredFreshness {
            lifetime_s,
            age_s,
            no_cache: false,
            must_revalidate: false,
        }
    }

    fn req(cc: &str) -> CacheControl {
        CacheControl::parse([cc].into_iter())
    }

    #[test]
    fn rfc9111_4_2_fresh_until_age_reaches_lifetime() {
        assert_eq!(reuse(stored(60, 59), &req("")), Reuse::Fresh);
        assert_eq!(reuse(stored(60, 60), &req("")), Reuse::Validate);
        assert_eq!(reuse(stored(0, 0), &req("")), Reuse::Validate);
    }

    #[test]
    fn rfc9111_5_2_1_1_request_max_age() {
        assert_eq!(reuse(stored(60, 10), &req("max-age=20")), Reuse::Fresh);
        assert_eq!(reuse(stored(60, 10), &req("max-age=5")), Reuse::Validate);
        assert_eq!(reuse(stored(60, 0), &req("max-age=0")), Reuse::Fresh);
        assert_eq!(reuse(stored(60, 1), &req("max-age=0")), Reuse::Validate);
    }

    #[test]
    fn rfc9111_5_2_1_3_request_min_fresh() {
        assert_eq!(reuse(stored(60, 10), &req("min-fresh=50")), Reuse::Fresh);
        assert_eq!(reuse(stored(60, 10), &req("min-fresh=51")), Reuse::Validate);
    }

    #[test]
    fn rfc9111_5_2_1_2_request_max_stale() {
        assert_eq!(
            reuse(stored(60, 70), &req("max-stale")),
            Reuse::StaleAccepted
        );
        assert_eq!(
            reuse(stored(60, 70), &req("max-stale=10")),
            Reuse::StaleAccepted
        );
        assert_eq!(reuse(stored(60, 71), &req("max-stale=10")), Reuse::Validate);
        assert_eq!(reuse(stored(60, 70), &req("")), Reuse::Validate);
        assert_eq!(reuse(stored(60, 30), &req("max-stale=10")), Reuse::Fresh);
    }

    #[test]
    fn rfc9111_5_2_2_2_must_revalidate_forbids_stale() {
        let s = StoredFreshness {
            must_revalidate: true,
            ..stored(60, 70)
        };
        assert_eq!(reuse(s, &req("max-stale")), Reuse::Validate);
    }

    #[test]
    fn rfc9111_5_2_2_4_no_cache_always_validates() {
        let s = StoredFreshness {
            no_cache: true,
            ..stored(60, 0)
        };
        assert_eq!(reuse(s, &req("")), Reuse::Validate);
        assert_eq!(reuse(s, &req("max-stale")), Reuse::Validate);
    }

    #[test]
    fn ttl_goes_negative_once_stale() {
        assert_eq!(stored(60, 70).ttl_s(), -10);
    }
}
