//! Streams waiting behind another's fetch of a missing entry (collapsed misses), per key.
//!
//! A lookup that finds an entry missing takes the key's lock in the same script, or learns
//! that someone holds it (`store/webdis.rs`). The streams that did not get the lock wait here,
//! until the entry lands or their wait (`collapse.max_wait_ms` from arrival) ends. The
//! followers of one key share one poll lookup per interval, however many they are: a herd
//! costs the store one small read per worker per `collapse.poll_ms`, not one per request. The
//! first polls come sooner (10 ms, then doubling up to `poll_ms`): a fast fetch is seen
//! within a few ms of landing, a slow one costs no more reads than the interval allows.

use super::StreamId;

#[derive(Debug)]
struct Follow {
    key: String,
    /// The streams waiting, and when each stops waiting (unix ms).
    streams: Vec<(StreamId, u64)>,
    /// When to look the key up again; `u64::MAX` while a lookup of it is out.
    next_poll_ms: u64,
    /// Polls answered so far: the interval grows with them.
    polls: u32,
}

/// The first poll's interval; each next one doubles, up to `poll_ms`.
const FIRST_POLL_MS: u64 = 10;

#[derive(Debug)]
pub struct Followers {
    poll_ms: u64,
    /// A handful of keys at once (one per herd): a list, searched.
    list: Vec<Follow>,
}

impl Followers {
    pub fn new(poll_ms: u64) -> Followers {
        Followers {
            poll_ms: poll_ms.max(1),
            list: Vec::new(),
        }
    }

    /// `stream` waits for `key` until `until_ms`. A key followed already keeps its poll time.
    pub fn add(&mut self, key: &str, stream: StreamId, until_ms: u64, now_ms: u64) {
        match self.list.iter_mut().find(|f| f.key == key) {
            Some(f) => f.streams.push((stream, until_ms)),
            None => self.list.push(Follow {
                key: key.to_string(),
                streams: vec![(stream, until_ms)],
                next_poll_ms: now_ms + FIRST_POLL_MS.min(self.poll_ms),
                polls: 0,
            }),
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.list.iter().any(|f| f.key == key)
    }

    /// Every stream following `key`, no longer following.
    pub fn take(&mut self, key: &str) -> Vec<(StreamId, u64)> {
        match self.list.iter().position(|f| f.key == key) {
            Some(i) => self.list.swap_remove(i).streams,
            None => Vec::new(),
        }
    }

    /// One stream following `key`, no longer following (it fetches the entry instead).
    pub fn take_first(&mut self, key: &str) -> Option<StreamId> {
        let i = self.list.iter().position(|f| f.key == key)?;
        let (s, _) = self.list[i].streams.remove(0);
        if self.list[i].streams.is_empty() {
            self.list.swap_remove(i);
        }
        Some(s)
    }

    /// The keys whose poll is due; each counts as polling until [`Followers::rearm`].
    pub fn due(&mut self, now_ms: u64) -> Vec<String> {
        self.list
            .iter_mut()
            .filter(|f| f.next_poll_ms <= now_ms)
            .map(|f| {
                f.next_poll_ms = u64::MAX;
                f.key.clone()
            })
            .collect()
    }

    /// A lookup of `key` answered that it is still being fetched (or failed): poll again in
    /// one interval.
    pub fn rearm(&mut self, key: &str, now_ms: u64) {
        let poll_ms = self.poll_ms;
        if let Some(f) = self.list.iter_mut().find(|f| f.key == key) {
            f.polls = f.polls.saturating_add(1);
            let interval = FIRST_POLL_MS
                .saturating_mul(1 << f.polls.min(16))
                .min(poll_ms);
            f.next_poll_ms = now_ms + interval;
        }
    }

    /// Poll `key` at once (its fetch ended without an entry: one of its followers may take
    /// the lock).
    pub fn poll_now(&mut self, key: &str, now_ms: u64) {
        if let Some(f) = self.list.iter_mut().find(|f| f.key == key) {
            f.next_poll_ms = f.next_poll_ms.min(now_ms);
        }
    }

    /// The streams whose wait ended, no longer following.
    pub fn expired(&mut self, now_ms: u64) -> Vec<StreamId> {
        let mut out = Vec::new();
        for f in &mut self.list {
            f.streams.retain(|&(s, until)| {
                let over = until <= now_ms;
                if over {
                    out.push(s);
                }
                !over
            });
        }
        self.list.retain(|f| !f.streams.is_empty());
        out
    }

    /// `stream` stops following (it ended).
    pub fn remove(&mut self, stream: StreamId) {
        for f in &mut self.list {
            f.streams.retain(|&(s, _)| s != stream);
        }
        self.list.retain(|f| !f.streams.is_empty());
    }

    /// Every stream following, no longer following.
    pub fn take_all(&mut self) -> Vec<StreamId> {
        self.list
            .drain(..)
            .flat_map(|f| f.streams.into_iter().map(|(s, _)| s))
            .collect()
    }

    /// The next poll or end of a wait (unix ms).
    pub fn next_timeout(&self) -> Option<u64> {
        self.list
            .iter()
            .flat_map(|f| {
                let ends = f.streams.iter().map(|&(_, until)| until);
                std::iter::once(f.next_poll_ms).chain(ends)
            })
            .min()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_of_a_key_share_one_poll_per_interval() {
        let mut f = Followers::new(50);
        f.add("k", 1, 10_000, 0);
        f.add("k", 2, 10_000, 5);
        f.add("j", 3, 10_000, 20);
        assert_eq!(f.next_timeout(), Some(10), "the first poll comes soon");
        assert!(f.due(9).is_empty());
        assert_eq!(f.due(10), vec!["k".to_string()]);
        assert!(f.due(20).is_empty(), "k's poll is out");
        assert_eq!(f.due(30), vec!["j".to_string()]);
        // Then 20, 40, and 50 (the interval) from there on.
        f.rearm("k", 40);
        assert_eq!(f.next_timeout(), Some(60));
        assert_eq!(f.due(60), vec!["k".to_string()]);
        f.rearm("k", 60);
        f.due(100);
        f.rearm("k", 100);
        f.due(150);
        f.rearm("k", 150);
        f.due(200);
        f.rearm("k", 200);
        assert!(f.due(249).is_empty());
        assert_eq!(f.due(250), vec!["k".to_string()]);
        f.poll_now("k", 260);
        assert_eq!(f.due(260), vec!["k".to_string()]);
        assert_eq!(f.take("k"), vec![(1, 10_000), (2, 10_000)]);
        assert!(!f.has("k"));
        assert!(f.has("j"));
    }

    #[test]
    fn waits_end_on_their_own_deadline_and_gone_streams_leave() {
        let mut f = Followers::new(1_000);
        f.add("k", 1, 100, 0);
        f.add("k", 2, 200, 0);
        f.add("k", 3, 300, 0);
        assert_eq!(f.next_timeout(), Some(10), "its first poll");
        assert_eq!(f.expired(150), vec![1]);
        f.remove(2);
        assert_eq!(f.expired(300), vec![3]);
        assert!(f.is_empty());
        assert_eq!(f.next_timeout(), None);
    }
}
