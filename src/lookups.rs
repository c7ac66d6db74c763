//! Lookup batching: the streams of one VM that wait for the store share callouts.
//!
//! A store callout costs Envoy far more CPU than the lookup itself costs Webdis and Redis
//! (bench: ~160 µs of Envoy CPU per callout; Webdis answers an 8-key `MGET` at 5× the keys per
//! second of single `GET`s). So the root context sends lookups, not each stream: while a batch
//! is out, new keys wait and go together in the next one, and a key already pending or in
//! flight is not asked twice (its waiters join). Under light load every lookup leaves at once
//! on its own; batches form only while one is out.
//!
//! One batch out at a time makes the biggest batches, and on busy cores that wins: the bench
//! measured 0.70× -> 0.81-0.91× plain proxying for hits over 1,000 keys, with a lower p50
//! (`bench/results/20261125-0646-ab-lookups-in-flight-1-vs-2.md`). But alone it would cap a
//! worker at [`MAX_KEYS`] lookups per store round trip (3,200/s at 5 ms), so a full batch
//! leaves at once, up to [`MAX_IN_FLIGHT`] out.
//!
//! When nothing is pending or in flight, the stream sends its own lookup at once (no hop
//! through the root). Others may join it; if that stream ends before the answer (its
//! callout's answer is then never delivered), [`Lookups::orphaned`] puts the keys its joiners
//! wait for back in line for the root.
//!
//! Pure bookkeeping by stream id and key; the root sends what [`Lookups::next_batch`] gives and
//! hands each answer to [`Lookups::answered`]; a batch the host refuses to send is simply
//! not reported back (its waiters are failed by the caller, nothing is kept).

use std::collections::HashMap;

/// Batches per VM in flight at once, when full batches wait (otherwise one).
pub const MAX_IN_FLIGHT: usize = 4;

/// Keys per batch: bounds the URL and the answer a single callout carries into the VM (each
/// value is at most `max_body_bytes` plus metadata).
pub const MAX_KEYS: usize = 16;

/// One key and the streams waiting for its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub key: String,
    pub streams: Vec<u32>,
}

#[derive(Debug, Default)]
pub struct Lookups {
    /// Keys not sent yet, oldest first.
    pending: Vec<Waiting>,
    /// Sent batches by callout token.
    in_flight: HashMap<u32, Flight>,
}

/// A sent batch.
#[derive(Debug)]
struct Flight {
    /// The stream that sent it from its own context, if not the root: the answer goes to
    /// that stream, and is lost if it ends first.
    sender: Option<u32>,
    batch: Vec<Waiting>,
}

impl Lookups {
    /// Stream `stream` waits for `key`. Returns true when this made a batch ready to send (the
    /// root must be woken to call [`Lookups::next_batch`]); a key that only waits for the
    /// batch out to come back wakes nobody.
    pub fn request(&mut self, stream: u32, key: String) -> bool {
        // An answer already on its way serves this stream too: it left after this stream's
        // request arrived at most one round trip ago, as fresh as any lookup it would send.
        let sent = self.in_flight.values_mut().flat_map(|f| f.batch.iter_mut());
        if let Some(w) = sent.chain(self.pending.iter_mut()).find(|w| w.key == key) {
            w.streams.push(stream);
            return false;
        }
        self.pending.push(Waiting {
            key,
            streams: vec![stream],
        });
        self.can_send()
    }

    /// Whether a batch may leave now: none is out, or a full one waits and the bound allows.
    pub fn can_send(&self) -> bool {
        !self.pending.is_empty()
            && (self.in_flight.is_empty()
                || (self.pending.len() >= MAX_KEYS && self.in_flight.len() < MAX_IN_FLIGHT))
    }

    /// The next batch to send, if [`Lookups::can_send`]. The caller reports it with
    /// [`Lookups::sent`] once dispatched.
    pub fn next_batch(&mut self) -> Option<Vec<Waiting>> {
        if !self.can_send() {
            return None;
        }
        let n = self.pending.len().min(MAX_KEYS);
        Some(self.pending.drain(..n).collect())
    }

    /// Whether nothing waits and nothing is out: a new lookup may leave at once from its
    /// own stream.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.in_flight.is_empty()
    }

    /// Whether a batch the root sent is out: its answer (or its deadline) is sure to reach
    /// the root, so writes may wait for it to ride with the next batch.
    pub fn root_in_flight(&self) -> bool {
        self.in_flight.values().any(|f| f.sender.is_none())
    }

    /// A batch was dispatched, by the root (`sender` None) or by a stream from its own
    /// context.
    pub fn sent(&mut self, token: u32, batch: Vec<Waiting>, sender: Option<u32>) {
        self.in_flight.insert(token, Flight { sender, batch });
    }

    /// The batch a callout answered, in the order of its keys; `None` for a token that is not
    /// a lookup (a write's answer).
    pub fn answered(&mut self, token: u32) -> Option<Vec<Waiting>> {
        self.in_flight.remove(&token).map(|f| f.batch)
    }

    /// Stream `stream` ended: the batches it sent will never be answered. Their keys go back
    /// to the front of the line for the other streams waiting on them. Returns true when that
    /// made work for the root.
    pub fn orphaned(&mut self, stream: u32) -> bool {
        let tokens: Vec<u32> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.sender == Some(stream))
            .map(|(t, _)| *t)
            .collect();
        let mut requeued = Vec::new();
        let removed_any = !tokens.is_empty();
        for token in tokens {
            let Some(flight) = self.in_flight.remove(&token) else {
                continue;
            };
            for mut w in flight.batch {
                w.streams.retain(|&s| s != stream);
                if !w.streams.is_empty() {
                    requeued.push(w);
                }
            }
        }
        requeued.append(&mut self.pending);
        self.pending = requeued;
        // Keys that waited for the orphaned batch to come back may go now, joiners or not.
        removed_any && self.can_send()
    }

    /// Streams waiting, pending or in flight: what the tests check is left behind.
    #[cfg(test)]
    pub fn waiting_streams(&self) -> usize {
        self.pending
            .iter()
            .chain(self.in_flight.values().flat_map(|f| f.batch.iter()))
            .map(|w| w.streams.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(batch: &[Waiting]) -> Vec<&str> {
        batch.iter().map(|w| w.key.as_str()).collect()
    }

    #[test]
    fn a_lone_lookup_leaves_at_once_on_its_own() {
        let mut l = Lookups::default();
        assert!(l.request(1, "a".into()));
        let batch = l.next_batch().unwrap();
        assert_eq!(
            batch,
            vec![Waiting {
                key: "a".into(),
                streams: vec![1]
            }]
        );
        l.sent(7, batch, None);
        assert_eq!(l.next_batch(), None);
        assert_eq!(keys(&l.answered(7).unwrap()), ["a"]);
        assert_eq!(l.waiting_streams(), 0);
    }

    #[test]
    fn keys_wait_while_a_batch_is_out_then_go_together() {
        let mut l = Lookups::default();
        assert!(l.request(1, "a".into()));
        let b = l.next_batch().unwrap();
        l.sent(1, b, None);
        assert!(!l.request(10, "x".into()), "waits: nobody to wake");
        assert!(!l.request(11, "y".into()));
        assert_eq!(l.next_batch(), None, "a batch is out: x and y wait");
        l.answered(1).unwrap();
        assert!(l.can_send());
        let batch = l.next_batch().unwrap();
        assert_eq!(keys(&batch), ["x", "y"]);
        assert!(!l.can_send());
    }

    #[test]
    fn full_batches_leave_at_once_up_to_the_bound() {
        let mut l = Lookups::default();
        l.request(0, "first".into());
        let b = l.next_batch().unwrap();
        l.sent(0, b, None);
        let mut token = 1;
        let mut key = 0;
        let mut fill = |l: &mut Lookups| {
            let mut woke = false;
            for _ in 0..MAX_KEYS {
                woke = l.request(1000 + key, format!("k{key}"));
                key += 1;
            }
            woke
        };
        for _ in 1..MAX_IN_FLIGHT {
            assert!(fill(&mut l), "the key that fills a batch wakes the sender");
            let b = l.next_batch().unwrap();
            assert_eq!(b.len(), MAX_KEYS);
            l.sent(token, b, None);
            token += 1;
        }
        assert!(!fill(&mut l), "the bound is reached");
        assert_eq!(l.next_batch(), None);
        l.answered(1).unwrap();
        assert_eq!(l.next_batch().unwrap().len(), MAX_KEYS);
    }

    #[test]
    fn a_key_already_asked_is_not_asked_twice() {
        let mut l = Lookups::default();
        l.request(1, "a".into());
        let b = l.next_batch().unwrap();
        l.sent(5, b, None);
        // In flight: joins without making work.
        assert!(!l.request(2, "a".into()));
        // Pending: joins the pending key.
        l.sent(6, vec![], None);
        assert!(!l.request(3, "b".into()), "waits for the batches out");
        assert!(!l.request(4, "b".into()));
        assert_eq!(l.waiting_streams(), 4);
        assert_eq!(l.answered(5).unwrap()[0].streams, [1, 2]);
        l.answered(6);
        let b = l.next_batch().unwrap();
        assert_eq!(
            b,
            vec![Waiting {
                key: "b".into(),
                streams: vec![3, 4]
            }]
        );
    }

    #[test]
    fn a_batch_holds_at_most_max_keys_oldest_first() {
        let mut l = Lookups::default();
        for i in 0..(MAX_KEYS + 3) {
            l.request(i as u32, format!("k{i}"));
        }
        let first = l.next_batch().unwrap();
        assert_eq!(first.len(), MAX_KEYS);
        assert_eq!(first[0].key, "k0");
        l.sent(1, first, None);
        assert_eq!(l.next_batch(), None, "not full: waits for the batch out");
        l.answered(1);
        let rest = l.next_batch().unwrap();
        assert_eq!(
            keys(&rest),
            [
                format!("k{MAX_KEYS}"),
                format!("k{}", MAX_KEYS + 1),
                format!("k{}", MAX_KEYS + 2)
            ]
        );
    }

    #[test]
    fn an_unknown_token_is_not_a_lookup() {
        let mut l = Lookups::default();
        assert_eq!(l.answered(42), None);
    }

    #[test]
    fn a_stream_sends_its_own_lookup_only_when_all_is_idle() {
        let mut l = Lookups::default();
        assert!(l.is_idle());
        l.request(1, "a".into());
        assert!(!l.is_idle(), "pending");
        let b = l.next_batch().unwrap();
        l.sent(9, b, Some(1));
        assert!(!l.is_idle(), "in flight");
        assert!(!l.root_in_flight(), "a stream's");
        l.answered(9);
        assert!(l.is_idle());
        l.request(2, "b".into());
        let b = l.next_batch().unwrap();
        l.sent(10, b, None);
        assert!(l.root_in_flight());
    }

    #[test]
    fn the_joiners_of_an_orphaned_lookup_go_back_first_in_line() {
        let mut l = Lookups::default();
        l.request(1, "a".into());
        let b = l.next_batch().unwrap();
        l.sent(9, b, Some(1));
        assert!(!l.request(2, "a".into()), "joins stream 1's lookup");
        assert!(!l.request(3, "b".into()), "waits for stream 1's lookup");
        assert!(!l.orphaned(7), "not a sender");
        assert!(l.orphaned(1));
        assert_eq!(l.answered(9), None, "its answer will never come");
        let b = l.next_batch().unwrap();
        assert_eq!(
            b,
            vec![
                Waiting {
                    key: "a".into(),
                    streams: vec![2]
                },
                Waiting {
                    key: "b".into(),
                    streams: vec![3]
                }
            ]
        );
        // A sender nobody joined leaves nothing behind.
        l.request(4, "c".into());
        let b = l.next_batch().unwrap();
        l.sent(10, b, Some(4));
        assert!(!l.orphaned(4));
        assert_eq!(l.waiting_streams(), 0);
    }

    #[test]
    fn keys_that_waited_for_an_orphaned_lookup_go_without_it() {
        let mut l = Lookups::default();
        l.request(1, "a".into());
        let b = l.next_batch().unwrap();
        l.sent(9, b, Some(1));
        assert!(!l.request(2, "b".into()), "waits for stream 1's lookup");
        assert!(l.orphaned(1), "nobody joined, but b waited for it");
        assert_eq!(keys(&l.next_batch().unwrap()), ["b"]);
    }

    #[test]
    fn a_batch_not_sent_frees_its_waiters() {
        let mut l = Lookups::default();
        l.request(1, "a".into());
        let failed = l.next_batch().unwrap();
        assert_eq!(failed[0].streams, [1]);
        assert_eq!(l.waiting_streams(), 0);
        // A later request for the key is a new lookup.
        assert!(l.request(2, "a".into()));
    }
}
