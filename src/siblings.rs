//! Telling the other worker VMs of this Envoy that entries are gone, and waiting until they
//! confirmed it.
//!
//! Each worker has its own in-proxy tier (`memory.rs`). When an unsafe request invalidated an
//! entry (RFC 9111 §4.4), every sibling must drop its copy before the response goes on, or a
//! GET right after it, landing on another worker, is served the old entry. Workers reach each
//! other through shared queues (one per VM, `host/`); this is the protocol over them, pure:
//! the messages, and which held responses still wait for which siblings' acknowledgements,
//! with a deadline so a sibling that never answers (a VM being replaced) holds nobody long.

/// A sibling VM, by the host's token of its queue.
pub type Peer = u32;

/// What travels on a sibling's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Drop these keys from your tier, then acknowledge `seq` to `reply_to`.
    Forget {
        seq: u64,
        reply_to: Peer,
        keys: Vec<String>,
    },
    /// Sibling `from` dropped the keys of `seq`.
    Ack { seq: u64, from: Peer },
}

const FORGET: u8 = b'F';
const ACK: u8 = b'A';

impl Message {
    /// The bytes on the queue: a tag, then fixed-width numbers, then length-prefixed keys.
    /// An empty item is a plain wake-up (`host/wake.rs`), so every message has bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Message::Forget {
                seq,
                reply_to,
                keys,
            } => {
                out.push(FORGET);
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&reply_to.to_le_bytes());
                out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
                for k in keys {
                    out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                    out.extend_from_slice(k.as_bytes());
                }
            }
            Message::Ack { seq, from } => {
                out.push(ACK);
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&from.to_le_bytes());
            }
        }
        out
    }

    /// `None` for anything that is not a whole message (a wake-up, or bytes from elsewhere).
    pub fn decode(bytes: &[u8]) -> Option<Message> {
        let (&tag, rest) = bytes.split_first()?;
        let seq = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        let rest = &rest[8..];
        match tag {
            ACK if rest.len() == 4 => Some(Message::Ack {
                seq,
                from: u32::from_le_bytes(rest.try_into().ok()?),
            }),
            FORGET => {
                let reply_to = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
                let count = u32::from_le_bytes(rest.get(4..8)?.try_into().ok()?);
                let mut rest = &rest[8..];
                let mut keys = Vec::new();
                for _ in 0..count {
                    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                    let key = rest.get(4..4usize.checked_add(len)?)?;
                    keys.push(String::from_utf8(key.to_vec()).ok()?);
                    rest = &rest[4 + len..];
                }
                if !rest.is_empty() {
                    return None;
                }
                Some(Message::Forget {
                    seq,
                    reply_to,
                    keys,
                })
            }
            _ => None,
        }
    }
}

/// A held response waiting for its siblings.
#[derive(Debug)]
struct Wait {
    seq: u64,
    stream: u32,
    pending: Vec<Peer>,
    deadline_ms: u64,
    /// The store confirmed the invalidation.
    stored: bool,
}

/// The held responses of this VM and the acknowledgements they wait for.
#[derive(Debug, Default)]
pub struct Acks {
    waits: Vec<Wait>,
    next_seq: u64,
    /// Streams that may go on: (stream, whether the store and every sibling confirmed).
    done: Vec<(u32, bool)>,
}

impl Acks {
    /// `stream` waits for `peers` (but `me`) to drop what it invalidated, at most until
    /// `deadline_ms`; `stored`: the store confirmed it. Returns the `seq` of the
    /// [`Message::Forget`] to send them, and to whom (no siblings: `None`, and the stream may
    /// go on at once).
    pub fn start(
        &mut self,
        stream: u32,
        me: Peer,
        peers: &[Peer],
        deadline_ms: u64,
        stored: bool,
    ) -> Option<(u64, Vec<Peer>)> {
        let pending: Vec<Peer> = peers.iter().copied().filter(|p| *p != me).collect();
        if pending.is_empty() {
            self.done.push((stream, stored));
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let out = Some((seq, pending.clone()));
        self.waits.push(Wait {
            seq,
            stream,
            pending,
            deadline_ms,
            stored,
        });
        out
    }

    /// `peer` acknowledged `seq` (or can't: its queue is gone, so it has no tier to clean).
    pub fn acked(&mut self, seq: u64, peer: Peer) {
        if let Some(i) = self.waits.iter().position(|w| w.seq == seq) {
            let w = &mut self.waits[i];
            w.pending.retain(|p| *p != peer);
            if w.pending.is_empty() {
                let w = self.waits.swap_remove(i);
                self.done.push((w.stream, w.stored));
            }
        }
    }

    /// Waits past their deadline end unconfirmed.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let mut i = 0;
        while i < self.waits.len() {
            if self.waits[i].deadline_ms <= now_ms {
                let w = self.waits.swap_remove(i);
                self.done.push((w.stream, false));
            } else {
                i += 1;
            }
        }
    }

    /// The stream ended: nothing to resume.
    pub fn stream_gone(&mut self, stream: u32) {
        self.waits.retain(|w| w.stream != stream);
        self.done.retain(|(s, _)| *s != stream);
    }

    /// A stream that may go on, and whether the store and every sibling confirmed.
    pub fn poll_done(&mut self) -> Option<(u32, bool)> {
        self.done.pop()
    }

    /// Whether `stream` may go on already (and if so, whether all confirmed), taken out.
    pub fn take_done(&mut self, stream: u32) -> Option<bool> {
        let i = self.done.iter().position(|(s, _)| *s == stream)?;
        Some(self.done.swap_remove(i).1)
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.waits.iter().map(|w| w.deadline_ms).min()
    }

    pub fn is_waiting(&self, stream: u32) -> bool {
        self.waits.iter().any(|w| w.stream == stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_no_message() {
        let forget = Message::Forget {
            seq: 7,
            reply_to: 42,
            keys: vec!["ns:a".into(), String::new(), "ns:é".into()],
        };
        assert_eq!(Message::decode(&forget.encode()), Some(forget.clone()));
        let ack = Message::Ack {
            seq: u64::MAX,
            from: 3,
        };
        assert_eq!(Message::decode(&ack.encode()), Some(ack));
        let bytes = forget.encode();
        for cut in 0..bytes.len() {
            let m = Message::decode(&bytes[..cut]);
            assert_eq!(m, None, "cut at {cut}");
        }
        assert_eq!(Message::decode(b""), None, "a wake-up");
        assert_eq!(Message::decode(b"X12345678"), None);
        let mut long = Message::Ack { seq: 1, from: 2 }.encode();
        long.push(0);
        assert_eq!(Message::decode(&long), None);
        let mut huge = vec![FORGET];
        huge.extend_from_slice(&[0; 12]);
        huge.extend_from_slice(&1u32.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Message::decode(&huge), None, "a length past the end");
    }

    #[test]
    fn a_stream_goes_on_once_every_sibling_acknowledged() {
        let mut a = Acks::default();
        let (seq, to) = a.start(5, 1, &[1, 2, 3], 100, true).unwrap();
        assert_eq!(to, [2, 3]);
        assert!(a.is_waiting(5));
        a.acked(seq, 2);
        a.acked(seq, 2);
        assert_eq!(
            a.poll_done(),
            None,
            "one sibling acknowledging twice is one"
        );
        a.acked(seq + 1, 3);
        assert_eq!(a.poll_done(), None);
        a.acked(seq, 3);
        assert_eq!(a.poll_done(), Some((5, true)));
        assert!(!a.is_waiting(5));
        a.acked(seq, 3);
        assert_eq!(a.poll_done(), None, "a late ack is no one's");
    }

    #[test]
    fn without_siblings_a_stream_goes_on_at_once() {
        let mut a = Acks::default();
        assert!(a.start(5, 1, &[1], 100, true).is_none());
        assert_eq!(a.poll_done(), Some((5, true)));
        a.start(6, 1, &[], 100, false);
        assert_eq!(a.take_done(6), Some(false), "the store did not confirm");
        assert_eq!(a.take_done(6), None);
    }

    #[test]
    fn an_unconfirmed_store_stays_unconfirmed_after_the_siblings_acknowledge() {
        let mut a = Acks::default();
        let (seq, _) = a.start(5, 1, &[2], 100, false).unwrap();
        a.acked(seq, 2);
        assert_eq!(a.poll_done(), Some((5, false)));
    }

    #[test]
    fn a_sibling_that_never_answers_holds_the_stream_until_the_deadline() {
        let mut a = Acks::default();
        a.start(5, 1, &[2], 100, true);
        a.start(6, 1, &[2], 150, true);
        assert_eq!(a.poll_timeout(), Some(100));
        a.handle_timeout(99);
        assert_eq!(a.poll_done(), None);
        a.handle_timeout(100);
        assert_eq!(a.poll_done(), Some((5, false)));
        assert_eq!(a.poll_timeout(), Some(150));
        a.stream_gone(6);
        a.handle_timeout(200);
        assert_eq!(a.poll_done(), None, "a stream that ended is not resumed");
    }

    #[test]
    fn a_sibling_whose_queue_is_gone_counts_as_done() {
        let mut a = Acks::default();
        let (seq, _) = a.start(5, 1, &[2, 3], 100, true).unwrap();
        a.acked(seq, 3);
        a.acked(seq, 2);
        assert_eq!(a.poll_done(), Some((5, true)));
    }
}
