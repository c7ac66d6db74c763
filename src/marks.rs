//! Keys marked for a while, per worker: a small bounded list, scanned.
//!
//! - Hit-for-miss: resources whose last response was not storable, remembered for
//!   `hit_for_miss_s`, so their requests skip the store lookup (and the wait for another's
//!   fetch) as Varnish's hit-for-miss objects do. Their responses are still recorded when
//!   storable; the first one that is stored clears the mark. The fleet learns it through the
//!   entry's lock key (`store::Unlock::Uncacheable`); this is the worker's own copy.
//! - Revalidating: entries this worker revalidates in the background (stale-while-revalidate),
//!   so a burst of stale hits starts one revalidation, not one per hit.

/// Marks kept per worker at most: the oldest goes first. A few hundred resources cover the
/// uncacheable endpoints of an app; a scan of them costs less than one store round trip.
const MAX_MARKS: usize = 512;

#[derive(Debug, Default)]
pub struct Marks {
    /// Resource key, and until when (unix ms); oldest first.
    marks: Vec<(String, u64)>,
}

impl Marks {
    /// Whether `key` is marked at `now_ms` (an expired mark goes).
    pub fn contains(&mut self, key: &str, now_ms: u64) -> bool {
        match self.marks.iter().position(|(k, _)| k == key) {
            Some(i) if self.marks[i].1 > now_ms => true,
            Some(i) => {
                self.marks.remove(i);
                false
            }
            None => false,
        }
    }

    /// Marks `key` until `until_ms`.
    pub fn insert(&mut self, key: &str, until_ms: u64) {
        self.remove(key);
        if self.marks.len() >= MAX_MARKS {
            self.marks.remove(0);
        }
        self.marks.push((key.to_string(), until_ms));
    }

    /// Marks `key` until `until_ms` unless it is marked already: whether it was not.
    pub fn claim(&mut self, key: &str, now_ms: u64, until_ms: u64) -> bool {
        if self.contains(key, now_ms) {
            return false;
        }
        self.insert(key, until_ms);
        true
    }

    pub fn remove(&mut self, key: &str) {
        self.marks.retain(|(k, _)| k != key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_expire_are_bounded_and_can_be_cleared() {
        let mut u = Marks::default();
        u.insert("a", 100);
        assert!(u.contains("a", 99));
        assert!(!u.contains("a", 100));
        assert!(!u.contains("a", 0), "an expired mark went");
        for i in 0..=MAX_MARKS {
            u.insert(&format!("k{i}"), 1_000);
        }
        assert!(!u.contains("k0", 0), "the oldest made room");
        assert!(u.contains(&format!("k{MAX_MARKS}"), 0));
        u.remove("k5");
        assert!(!u.contains("k5", 0));
        assert!(u.claim("c", 0, 10));
        assert!(!u.claim("c", 5, 10), "claimed already");
        assert!(u.claim("c", 10, 20), "the claim ran out");
    }
}
