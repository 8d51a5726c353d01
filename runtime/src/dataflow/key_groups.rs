//! Key groups: the unit in which keyed state lives and moves.
//!
//! A job has `G` key groups, fixed for its whole life (chosen at its first
//! deployment and recorded in every task snapshot). A group key belongs to
//! group `murmur2(key) mod G` (Kafka's positive murmur2, as
//! [`super::partitioner::partition_for`]); the `K` keyed partitions (one per
//! task) own the groups in contiguous ranges, partition `k` owning
//! `[ceil(k*G/K), ceil((k+1)*G/K))` (Flink's assignment of key groups to
//! operator indexes). State is namespaced by group, so a task restored at
//! another `K` takes whole groups from the snapshots of the tasks that held
//! them, and none of a key's state is ever split.
//!
//! With `G = K` the assignment is the identity (group `g` is keyed
//! partition `g`), which is exactly the layout of jobs deployed before key
//! groups existed: their snapshots are read as `G = K` and nothing changes
//! for them, except that they cannot grow beyond `G` keyed partitions that
//! own state (a task beyond `G` owns no group).

use std::ops::Range;

use super::partitioner::partition_for;

pub use streamops_crds::runtime_api::{MAX_KEY_GROUPS, default_key_groups};

/// The group of `group_key` among `groups` (which must be > 0): Kafka's
/// default partitioner over the groups.
pub fn group_of(group_key: &[u8], groups: u32) -> u32 {
    partition_for(group_key, groups)
}

/// The keyed partition (of `partitions`) that owns `group` (of `groups`).
pub fn owner(group: u32, groups: u32, partitions: u32) -> u32 {
    let groups = u64::from(groups.max(1));
    ((u64::from(group) * u64::from(partitions.max(1))) / groups) as u32
}

/// The groups keyed partition `partition` (of `partitions`) owns; empty
/// when there are more partitions than groups and this one gets none.
pub fn range(partition: u32, groups: u32, partitions: u32) -> Range<u32> {
    let (g, k) = (u64::from(groups.max(1)), u64::from(partitions.max(1)));
    let start = (u64::from(partition) * g).div_ceil(k).min(g);
    let end = ((u64::from(partition) + 1) * g).div_ceil(k).min(g);
    start as u32..end as u32
}

/// The keyed partition of `group_key`.
pub fn partition_of(group_key: &[u8], groups: u32, partitions: u32) -> u32 {
    owner(group_of(group_key, groups), groups, partitions)
}

/// The partitions (of `partitions`) whose groups overlap `wanted`, in
/// order: the snapshots a task owning `wanted` restores from.
pub fn holders(wanted: &Range<u32>, groups: u32, partitions: u32) -> Vec<u32> {
    if wanted.is_empty() {
        return Vec::new();
    }
    (owner(wanted.start, groups, partitions)..owner(wanted.end - 1, groups, partitions) + 1)
        .filter(|&h| !range(h, groups, partitions).is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn defaults_are_powers_of_two_with_room_to_grow() {
        assert_eq!(default_key_groups(1), 128);
        assert_eq!(default_key_groups(85), 128);
        assert_eq!(default_key_groups(86), 256);
        assert_eq!(default_key_groups(1_000), 2_048);
        assert_eq!(default_key_groups(u32::MAX), MAX_KEY_GROUPS);
    }

    #[test]
    fn ranges_of_an_uneven_split() {
        // 128 groups over 6 partitions: 22 or 21 each, in order.
        let ranges: Vec<_> = (0..6).map(|k| range(k, 128, 6)).collect();
        assert_eq!(ranges[0], 0..22);
        assert_eq!(ranges[1], 22..43);
        assert_eq!(ranges[5], 107..128);
        // 4 -> 6: partition 1 of 6 (22..43) was held by partitions 0 and 1 of 4.
        assert_eq!(holders(&ranges[1], 128, 4), [0, 1]);
        assert!(holders(&(0..0), 128, 4).is_empty());
        // More partitions than groups: partitions owning nothing hold nothing.
        assert_eq!(
            holders(&(0..12), 12, 23),
            (0..12).map(|g| owner(g, 12, 23)).collect::<Vec<_>>()
        );
    }

    proptest! {
        /// Every group has exactly one owner, and it is the partition whose
        /// range holds it; ranges are contiguous, in order, and cover all.
        #[test]
        fn ranges_partition_the_groups(groups in 1u32..5_000, partitions in 1u32..300) {
            let mut next = 0;
            for k in 0..partitions {
                let r = range(k, groups, partitions);
                prop_assert_eq!(r.start, next);
                for g in r.clone() {
                    prop_assert_eq!(owner(g, groups, partitions), k);
                }
                next = r.end;
            }
            prop_assert_eq!(next, groups);
        }

        /// A task's groups come from exactly the old partitions `holders`
        /// names, whatever the old and new counts.
        #[test]
        fn holders_are_the_old_owners(groups in 1u32..2_000, old in 1u32..64, new in 1u32..64, k in 0u32..64) {
            let k = k % new;
            let wanted = range(k, groups, new);
            let expected: std::collections::BTreeSet<u32> =
                wanted.clone().map(|g| owner(g, groups, old)).collect();
            let got: std::collections::BTreeSet<u32> = holders(&wanted, groups, old).into_iter().collect();
            prop_assert_eq!(got, expected);
        }

        /// With as many groups as partitions, a key goes where it went
        /// before key groups existed: older jobs keep their layout.
        #[test]
        fn one_group_per_partition_is_the_old_routing(key in proptest::collection::vec(any::<u8>(), 0..40), k in 1u32..500) {
            prop_assert_eq!(partition_of(&key, k, k), partition_for(&key, k));
        }
    }
}
