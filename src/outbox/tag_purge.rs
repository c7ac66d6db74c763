//! Purges by tag on a Redis Cluster, where a tag set and the resources it lists live in
//! different slots, so no one script can do it: each tag set is read and removed in its own
//! slot ([`Part::Set`]), then the resources it listed are removed, one slot per callout
//! ([`Part::Resources`]). The purge is answered once every part is settled: the number of
//! resources removed, or the first failure.
//!
//! At most [`MAX_IN_FLIGHT`] parts are out at once, over all purges (a tag may list thousands
//! of resources). On one Redis, resources go [`RESOURCES_PER_PART`] at a time; on a Cluster,
//! a slot's at a time. A part whose removal fails is handed back to be retried as a write:
//! the tag set is gone already, and its resources must not stay.
//!
//! Pure bookkeeping for the outbox: it asks for the next part to send, and reports answers.

use super::writes::by_slot;
use super::{MAX_IN_FLIGHT, StreamId};
use crate::store::StoreError;

/// What one callout of a purge does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Read the members of this tag set and remove it.
    Set(String),
    /// Remove these resources (one slot's), with their variants.
    Resources(Vec<String>),
}

#[derive(Debug)]
struct TagPurge {
    id: u64,
    stream: StreamId,
    /// Parts not sent yet: the tag sets, then the resources they listed.
    parts: Vec<Part>,
    /// Parts sent and not settled.
    out: usize,
    removed: u64,
    error: Option<StoreError>,
}

/// Resources one part removes on one Redis (a Cluster's part is one slot's).
pub const RESOURCES_PER_PART: usize = 64;

#[derive(Debug, Default)]
pub struct TagPurges {
    purges: Vec<TagPurge>,
    next_id: u64,
    /// A Redis Cluster: a part's resources share a slot.
    one_slot: bool,
}

impl TagPurges {
    pub fn new(one_slot: bool) -> TagPurges {
        TagPurges {
            one_slot,
            ..TagPurges::default()
        }
    }

    /// Starts a purge of the resources listed in these tag sets for `stream`.
    pub fn start(&mut self, stream: StreamId, sets: Vec<String>) {
        self.next_id += 1;
        self.purges.push(TagPurge {
            id: self.next_id,
            stream,
            parts: sets.into_iter().map(Part::Set).collect(),
            out: 0,
            removed: 0,
            error: None,
        });
    }

    /// The next part to send, of any purge (counted as out until settled).
    pub fn next_part(&mut self) -> Option<(u64, Part)> {
        if self.purges.iter().map(|p| p.out).sum::<usize>() >= MAX_IN_FLIGHT {
            return None;
        }
        self.purges.iter_mut().find_map(|p| {
            let part = p.parts.pop()?;
            p.out += 1;
            Some((p.id, part))
        })
    }

    /// A tag set's members arrived (and the set is gone). Only keys of the set's own
    /// namespace's resources are removed: garbage in a set must not reach other keys.
    pub fn set_read(&mut self, id: u64, set: &str, members: Vec<String>) {
        let Some(p) = self.purges.iter_mut().find(|p| p.id == id) else {
            return;
        };
        p.out -= 1;
        // `<namespace>:tag:<hex>`; a namespace has no colon (config), a resource key is
        // `<namespace>:{<hex>}`.
        let ns = set.split(':').next().unwrap_or_default();
        let ours: Vec<String> = members
            .into_iter()
            .filter(|m| {
                m.strip_prefix(ns)
                    .is_some_and(|rest| rest.starts_with(":{"))
            })
            .collect();
        let groups = if self.one_slot {
            by_slot(ours)
        } else {
            ours.chunks(RESOURCES_PER_PART)
                .map(<[String]>::to_vec)
                .collect()
        };
        p.parts.extend(groups.into_iter().map(Part::Resources));
    }

    /// Resources were removed: `n` of them existed.
    pub fn removed(&mut self, id: u64, n: u64) {
        if let Some(p) = self.purges.iter_mut().find(|p| p.id == id) {
            p.out -= 1;
            p.removed += n;
        }
    }

    /// A part failed: the purge fails (once the rest is settled).
    pub fn failed(&mut self, id: u64, e: StoreError) {
        if let Some(p) = self.purges.iter_mut().find(|p| p.id == id) {
            p.out -= 1;
            p.error.get_or_insert(e);
        }
    }

    /// The store is being skipped: every part not sent yet fails with `e`. Returns the
    /// resources they would have removed (to be removed by writes once the store is back).
    pub fn fail_queued(&mut self, e: StoreError) -> Vec<Vec<String>> {
        let mut resources = Vec::new();
        for p in &mut self.purges {
            if p.parts.is_empty() {
                continue;
            }
            p.error.get_or_insert(e);
            resources.extend(p.parts.drain(..).filter_map(|part| match part {
                Part::Resources(keys) => Some(keys),
                Part::Set(_) => None,
            }));
        }
        resources
    }

    /// A purge whose parts are all settled: its stream and answer.
    pub fn finished(&mut self) -> Option<(StreamId, Result<u64, StoreError>)> {
        let i = self
            .purges
            .iter()
            .position(|p| p.parts.is_empty() && p.out == 0)?;
        let p = self.purges.swap_remove(i);
        Some((p.stream, p.error.map_or(Ok(p.removed), Err)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::layout::{resource_key, slot};

    #[test]
    fn sets_first_then_their_resources_a_slot_at_a_time_then_the_count() {
        let mut t = TagPurges::new(true);
        t.start(7, vec!["n:tag:aa".into(), "n:tag:bb".into()]);
        let (id, a) = t.next_part().unwrap();
        let (_, b) = t.next_part().unwrap();
        assert!(matches!((&a, &b), (Part::Set(_), Part::Set(_))));
        assert_eq!(t.next_part(), None, "nothing else before the sets answer");
        let r: Vec<String> = (0..4u8).map(|i| resource_key("n", &[i; 4])).collect();
        t.set_read(
            id,
            "n:tag:aa",
            vec![r[0].clone(), r[1].clone(), "other:{x}".into()],
        );
        t.set_read(
            id,
            "n:tag:bb",
            vec![r[2].clone(), r[3].clone(), "n:tag:cc".into()],
        );
        assert_eq!(t.finished(), None);
        let mut parts = Vec::new();
        while let Some((_, Part::Resources(keys))) = t.next_part() {
            let s = slot(&keys[0]);
            assert!(keys.iter().all(|k| slot(k) == s), "one slot per callout");
            parts.push(keys);
        }
        let mut all: Vec<String> = parts.iter().flatten().cloned().collect();
        all.sort();
        assert_eq!(all, r, "only the namespace's resources, each once");
        for _ in &parts {
            t.removed(id, 1);
        }
        assert_eq!(t.finished(), Some((7, Ok(4))));
        assert_eq!(t.finished(), None);
    }

    #[test]
    fn a_failed_part_fails_the_purge_once_the_rest_is_settled() {
        let mut t = TagPurges::new(true);
        t.start(1, vec!["n:tag:aa".into(), "n:tag:bb".into()]);
        let (id, _) = t.next_part().unwrap();
        t.next_part().unwrap();
        t.failed(id, StoreError::Timeout);
        assert_eq!(t.finished(), None, "the other set is still out");
        t.set_read(id, "n:tag:bb", vec![]);
        assert_eq!(t.finished(), Some((1, Err(StoreError::Timeout))));
    }

    #[test]
    fn on_one_redis_resources_go_a_chunk_at_a_time_and_parts_out_are_bounded() {
        let mut t = TagPurges::new(false);
        let sets: Vec<String> = (0..10).map(|i| format!("n:tag:{i}")).collect();
        t.start(3, sets);
        let out: Vec<(u64, Part)> = std::iter::from_fn(|| t.next_part()).collect();
        assert_eq!(out.len(), MAX_IN_FLIGHT, "parts out at once are bounded");
        let id = out[0].0;
        let members: Vec<String> = (0..100u8).map(|i| resource_key("n", &[i; 4])).collect();
        t.set_read(id, "n:tag:x", members);
        // One part may go in the freed place: the resources come in parts of at most 64.
        let (_, p) = t.next_part().expect("a place freed");
        assert!(t.next_part().is_none(), "bounded again");
        let Part::Resources(first) = p else {
            panic!("the resources go before the remaining sets")
        };
        // The store is skipped: what is queued fails; its resources come back for writes.
        let left = t.fail_queued(StoreError::BreakerOpen);
        let mut sizes: Vec<usize> = left.iter().map(Vec::len).chain([first.len()]).collect();
        sizes.sort();
        assert_eq!(sizes, [36, 64]);
        assert!(t.next_part().is_none());
        for _ in 0..MAX_IN_FLIGHT - 1 {
            t.set_read(id, "n:tag:y", vec![]);
        }
        t.removed(id, first.len() as u64);
        assert_eq!(t.finished(), Some((3, Err(StoreError::BreakerOpen))));
    }
}
