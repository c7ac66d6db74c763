//! May a stored response be used for this request without asking the origin (RFC 9111 §4)?

use super::{CacheControl, Freshness};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Fresh, and acceptable to the client's directives.
    Fresh,
    /// Stale, but the client accepts this much staleness (`max-stale`) and the response does
    /// not forbid it.
    StaleAccepted,
    /// Stale, but inside its `stale-while-revalidate` window (RFC 5861 §3): served at once
    /// while the origin is asked in the background.
    StaleWhileRevalidate,
    /// Must be validated with (or refetched from) the origin first.
    Validate,
}

/// May a response stored with `stored` freshness, now `age_s` old, answer a request with the
/// directives `req`?
pub fn reuse(stored: &Freshness, age_s: u64, req: &CacheControl) -> Reuse {
    if stored.no_cache {
        return Reuse::Validate;
    }
    // The client's limits on age and remaining freshness (§5.2.1.1, §5.2.1.3).
    if req.max_age.is_some_and(|m| age_s > m) {
        return Reuse::Validate;
    }
    let ttl = stored.ttl_s(age_s);
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
        _ if stored.within_stale_window(age_s, stored.stale_while_revalidate_s) => {
            Reuse::StaleWhileRevalidate
        }
        _ => Reuse::Validate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored response's freshness and its current age.
    fn stored(lifetime_s: u64, age_s: u64) -> (Freshness, u64) {
        let f = Freshness {
            lifetime_s,
            ..Freshness::default()
        };
        (f, age_s)
    }

    fn reuse((f, age_s): (Freshness, u64), req: &CacheControl) -> Reuse {
        super::reuse(&f, age_s, req)
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
        let (f, age) = stored(60, 70);
        let s = (
            Freshness {
                must_revalidate: true,
                stale_while_revalidate_s: 100,
                ..f
            },
            age,
        );
        assert_eq!(reuse(s, &req("max-stale")), Reuse::Validate);
    }

    #[test]
    fn rfc9111_5_2_2_4_no_cache_always_validates() {
        let (f, age) = stored(60, 0);
        let s = (
            Freshness {
                no_cache: true,
                ..f
            },
            age,
        );
        assert_eq!(reuse(s, &req("")), Reuse::Validate);
        assert_eq!(reuse(s, &req("max-stale")), Reuse::Validate);
    }

    #[test]
    fn ttl_goes_negative_once_stale() {
        let (f, age) = stored(60, 70);
        assert_eq!(f.ttl_s(age), -10);
    }

    #[test]
    fn rfc5861_3_stale_while_revalidate_inside_its_window_only() {
        let (f, _) = stored(60, 0);
        let swr = Freshness {
            stale_while_revalidate_s: 30,
            ..f
        };
        assert_eq!(reuse((swr, 59), &req("")), Reuse::Fresh);
        assert_eq!(reuse((swr, 60), &req("")), Reuse::StaleWhileRevalidate);
        assert_eq!(reuse((swr, 90), &req("")), Reuse::StaleWhileRevalidate);
        assert_eq!(reuse((swr, 91), &req("")), Reuse::Validate);
        // The client's own limits still hold: it asked for something fresher.
        assert_eq!(reuse((swr, 70), &req("max-age=65")), Reuse::Validate);
        assert_eq!(reuse((swr, 70), &req("min-fresh=1")), Reuse::Validate);
        // A client that accepts the staleness gets it without a revalidation.
        assert_eq!(reuse((swr, 70), &req("max-stale")), Reuse::StaleAccepted);
    }
}
