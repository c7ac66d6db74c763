//! The outbox on a Redis Cluster (`store.redis_cluster`): every callout touches keys of one
//! slot. The simulated Redis refuses a script whose keys cross slots (`CROSSSLOT`), as a
//! Cluster node does, and counts it.

use super::*;

fn cluster() -> Sim {
    let mut s = Sim::with(Settings {
        one_slot: true,
        ..settings()
    });
    s.redis.cluster = true;
    s
}

/// A resource's key, hash tag and all, as `store::layout` builds them.
fn res(n: usize) -> String {
    crate::store::layout::resource_key("n", &[n as u8; 4])
}

fn tagged_entry(key: &str, bytes: &[u8], tags: &[&str]) -> StoreWrite {
    StoreWrite::Entry(Write {
        key: key.into(),
        variant: None,
        ttl_ms: 60_000,
        entry: bytes.to_vec(),
        refresh: None,
        tags: tags.iter().map(|t| t.to_string()).collect(),
    })
}

#[test]
fn the_simulated_cluster_refuses_a_batch_across_slots() {
    // Without the setting, batches mix slots: the Cluster refuses them.
    let mut s = Sim::new();
    s.redis.cluster = true;
    s.want(1, &res(1));
    s.want(2, &res(2));
    s.want(3, &res(3));
    s.answer_all();
    assert!(s.redis.crossslot > 0);
    assert!(s.error(2).is_some() || s.error(3).is_some());
}

#[test]
fn lookups_group_by_slot_and_go_at_once() {
    let mut s = cluster();
    let variant = crate::store::layout::variant_key(&res(0), &[9; 4]);
    for (k, v) in [(res(0), "r0"), (res(2), "r2"), (variant.clone(), "v")] {
        s.redis.strings.insert(k, v.as_bytes().to_vec());
    }
    // Each key leaves at once, without waiting for the others' answers, up to the bound.
    for i in 0..MAX_IN_FLIGHT {
        s.want(10 + i as u32, &res(10 + i));
    }
    assert_eq!(s.out.len(), MAX_IN_FLIGHT);
    // These wait; when a callout is answered, r0 leaves with its variant (one slot), not r2.
    s.want(1, &res(0));
    s.want(2, &res(2));
    s.want(3, &variant);
    s.answer();
    let newest = s.out.len() - 1;
    assert_eq!(
        s.keys_out(newest),
        2,
        "the resource and its variant share a callout"
    );
    s.answer_all();
    for (stream, v) in [(1, "r0"), (2, "r2"), (3, "v")] {
        assert_eq!(s.value(stream).unwrap(), v.as_bytes());
    }
    assert_eq!(s.redis.crossslot, 0);
}

#[test]
fn lookups_out_at_once_are_bounded() {
    let mut s = cluster();
    for i in 0..10 {
        s.want(i, &res(i as usize));
    }
    assert_eq!(s.out.len(), MAX_IN_FLIGHT);
    s.answer_all();
    for i in 0..10 {
        assert_eq!(s.value(i).unwrap(), b"<missing>");
    }
    assert_eq!(s.redis.crossslot, 0);
}

#[test]
fn an_entrys_tag_sets_are_written_apart_and_entries_go_alone() {
    let mut s = cluster();
    s.outbox
        .write(tagged_entry(&res(0), b"e0", &["n:tag:aa", "n:tag:bb"]));
    s.outbox.write(tagged_entry(&res(1), b"e1", &[]));
    s.outbox.write(tagged_entry(&res(2), b"e2", &["n:tag:aa"]));
    s.pump();
    s.answer_all();
    assert_eq!(s.redis.crossslot, 0, "no callout crossed slots");
    for (k, v) in [(res(0), "e0"), (res(1), "e1"), (res(2), "e2")] {
        assert_eq!(s.redis.strings.get(&k).unwrap(), v.as_bytes());
    }
    let aa = &s.redis.sets["n:tag:aa"];
    assert!(aa.contains(&res(0)) && aa.contains(&res(2)));
    assert!(s.redis.sets["n:tag:bb"].contains(&res(0)));
    assert!(s.outbox.is_idle());
    // Three entries published, the tag sets' writes not counted as entries.
    let published = s
        .notes
        .iter()
        .filter(|n| matches!(n, Note::Published { .. }))
        .count();
    assert_eq!(published, 3);
}

#[test]
fn entries_do_not_ride_with_a_lookup_of_another_slot() {
    let mut s = cluster();
    s.want(1, &res(1));
    s.outbox.write(tagged_entry(&res(2), b"e2", &[]));
    s.pump();
    assert_eq!(
        s.out.len(),
        2,
        "the write went on its own, not held for a ride"
    );
    s.answer_all();
    assert_eq!(s.redis.crossslot, 0);
    assert_eq!(s.redis.strings.get(&res(2)).unwrap(), b"e2");
}

#[test]
fn a_held_invalidation_waits_for_its_own_slot_and_the_others_follow() {
    let mut s = cluster();
    for i in 0..3 {
        s.redis.strings.insert(res(i), b"old".to_vec());
    }
    let r = s.outbox.invalidate(s.now, 7, vec![res(0), res(1), res(2)]);
    assert!(r.is_none());
    s.pump();
    // The held one carries the request's own resource (and its variants set) only.
    assert_eq!(s.keys_out(0), 2);
    s.answer();
    assert_eq!(s.invalidated(7).map(|(_, r)| r), Some(Ok(())));
    // The reply names all three: sibling workers forget each of them.
    match &s.replies[&7].1 {
        Reply::Invalidated(_, keys) => assert_eq!(keys.len(), 3, "{keys:?}"),
        other => panic!("{other:?}"),
    }
    s.answer_all();
    assert!(s.redis.strings.is_empty(), "all three removed");
    assert_eq!(s.redis.crossslot, 0);
}

#[test]
fn a_purge_by_tag_reads_each_set_then_removes_its_resources_slot_by_slot() {
    let mut s = cluster();
    for i in 0..6 {
        let tags: &[&str] = if i % 2 == 0 {
            &["n:tag:even", "n:tag:all"]
        } else {
            &["n:tag:all"]
        };
        s.outbox.write(tagged_entry(&res(i), b"e", tags));
    }
    s.pump();
    s.answer_all();
    assert_eq!(s.redis.strings.len(), 6);
    assert!(
        s.outbox
            .purge(9, PurgeCommand::Tags(vec!["n:tag:even".into()]))
            .is_none()
    );
    s.pump();
    s.answer_all();
    assert!(
        matches!(s.replies.get(&9), Some((_, Reply::Purge(Ok(3))))),
        "{:?}",
        s.replies.get(&9)
    );
    for i in 0..6 {
        assert_eq!(s.redis.strings.contains_key(&res(i)), i % 2 == 1, "{i}");
    }
    assert!(!s.redis.sets.contains_key("n:tag:even"), "the set is gone");
    assert_eq!(s.redis.crossslot, 0, "no callout crossed slots");
}

#[test]
fn writes_of_one_slot_never_overtake_each_other() {
    let mut s = cluster();
    s.outbox.write(tagged_entry(&res(0), b"v1", &[]));
    s.outbox.write(tagged_entry(&res(0), b"v2", &[]));
    s.outbox.write(tagged_entry(&res(1), b"other", &[]));
    s.pump();
    // In queue order, one job per slot out: v2 waits for v1 (and the other entry behind it).
    assert_eq!(s.out.len(), 1);
    s.answer();
    assert_eq!(s.out.len(), 2, "now v2 goes, and the other entry behind it");
    assert_eq!(s.redis.strings.get(&res(0)).unwrap(), b"v1");
    s.answer_all();
    assert_eq!(
        s.redis.strings.get(&res(0)).unwrap(),
        b"v2",
        "the newer write landed last"
    );
    assert_eq!(s.redis.strings.get(&res(1)).unwrap(), b"other");
    assert!(s.outbox.is_idle());
}

#[test]
fn an_entry_whose_tag_writes_do_not_fit_is_not_queued() {
    let mut s = Sim::with(Settings {
        one_slot: true,
        max_queue_bytes: 1_000,
        ..settings()
    });
    s.redis.cluster = true;
    let tags: Vec<String> = (0..10).map(|i| format!("n:tag:{i:040}")).collect();
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    // The entry alone fits; with its ten tag writes it does not: nothing is queued.
    assert!(!s.outbox.write(tagged_entry(&res(0), &[7; 600], &tags)));
    assert!(s.outbox.write(tagged_entry(&res(1), &[7; 600], &tags[..1])));
    s.pump();
    s.answer_all();
    assert!(!s.redis.strings.contains_key(&res(0)));
    assert!(s.redis.sets[tags[0]].contains(&res(1)));
}
