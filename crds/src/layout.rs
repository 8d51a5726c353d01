//! Which task reads which source partition, for the life of a job.
//!
//! A job has P tasks, P being the partition count of its source topics
//! summed. Task `t` reads one source partition (its *stage 1*) and owns
//! keyed partition `t` of the repartition topic (its *keyed stage*). Both
//! halves keep state under the task index: the source offset and the
//! partition's largest event time, and the keyed windows.
//!
//! A new job lays its sources out by position: the partitions of the
//! topics in spec order, concatenated. When the source list changes
//! afterwards (topics reordered, one topic replaced by another), laying
//! them out by position again would hand task `t`'s stored source offset
//! to a different partition. So the layout is kept instead ([`assign`]):
//!
//! - a source partition that was read before keeps its task;
//! - a partition read for the first time takes a free task index (the
//!   lowest first), and starts at `source.startFrom`;
//! - the tasks of partitions no longer read hand their stage-1 state on to
//!   nobody (their keyed state stays: it belongs to the keyed partition).
//!
//! The operator keeps the layout in the job's status and passes it to the
//! runtime; the runtime checks every restored task against it. A layout
//! equal to the positional one is not written into the runtime's job file,
//! so jobs whose sources never changed keep their pod revision.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::runtime_api::SourceTopic;

/// Partitions `partition..partition+count` of `topic` are read by tasks
/// `task..task+count`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskRange {
    pub topic: String,
    pub partition: i32,
    pub count: i32,
    pub task: i32,
}

/// One source partition.
pub type SourcePartition = (String, i32);

/// The partitions of `sources` in spec order (the positional layout).
fn partitions(sources: &[SourceTopic]) -> Vec<SourcePartition> {
    sources
        .iter()
        .flat_map(|s| (0..s.partitions.max(0)).map(move |p| (s.topic.clone(), p)))
        .collect()
}

/// Source partition -> task, from ranges. Ranges that overlap or reuse a
/// task are a corrupt layout: later entries are ignored.
fn expand(layout: &[TaskRange]) -> BTreeMap<SourcePartition, i32> {
    let mut by_source = BTreeMap::new();
    let mut used = BTreeSet::new();
    for r in layout {
        for i in 0..r.count.max(0) {
            let (source, task) = ((r.topic.clone(), r.partition + i), r.task + i);
            if task >= 0 && !by_source.contains_key(&source) && used.insert(task) {
                by_source.insert(source, task);
            }
        }
    }
    by_source
}

/// Ranges from task order: consecutive tasks reading consecutive
/// partitions of one topic share a range.
fn compress(by_task: &[SourcePartition]) -> Vec<TaskRange> {
    let mut out: Vec<TaskRange> = Vec::new();
    for (t, (topic, partition)) in by_task.iter().enumerate() {
        let t = t as i32;
        if let Some(last) = out.last_mut()
            && last.topic == *topic
            && last.partition + last.count == *partition
            && last.task + last.count == t
        {
            last.count += 1;
            continue;
        }
        out.push(TaskRange {
            topic: topic.clone(),
            partition: *partition,
            count: 1,
            task: t,
        });
    }
    out
}

/// The layout for `sources`, keeping every task of `previous` whose
/// partition is still read (see the module documentation). `previous`
/// empty: the positional layout. Always covers tasks `0..P` exactly once.
pub fn assign(previous: &[TaskRange], sources: &[SourceTopic]) -> Vec<TaskRange> {
    let wanted = partitions(sources);
    let p = wanted.len();
    let old = expand(previous);
    let mut by_task: Vec<Option<SourcePartition>> = vec![None; p];
    let mut fresh = Vec::new();
    for source in wanted {
        match old.get(&source) {
            Some(&t) if (t as usize) < p && by_task[t as usize].is_none() => {
                by_task[t as usize] = Some(source)
            }
            _ => fresh.push(source),
        }
    }
    let mut fresh = fresh.into_iter();
    let by_task: Vec<SourcePartition> = by_task
        .into_iter()
        .map(|slot| slot.or_else(|| fresh.next()).unwrap_or_default())
        .collect();
    compress(&by_task)
}

/// Task index -> source partition for `layout` over `sources`; the
/// positional layout when `layout` is empty. `None` when the layout does
/// not cover exactly the partitions of `sources` (a corrupt job file).
pub fn tasks(layout: &[TaskRange], sources: &[SourceTopic]) -> Option<Vec<SourcePartition>> {
    let wanted = partitions(sources);
    if layout.is_empty() {
        return Some(wanted);
    }
    let by_source = expand(layout);
    if by_source.len() != wanted.len() {
        return None;
    }
    let mut by_task: Vec<Option<SourcePartition>> = vec![None; wanted.len()];
    for source in wanted {
        let t = *by_source.get(&source)? as usize;
        *by_task.get_mut(t)? = Some(source);
    }
    by_task.into_iter().collect()
}

/// `layout` as the runtime's job file carries it: empty when positional.
pub fn for_job_file(layout: &[TaskRange], sources: &[SourceTopic]) -> Vec<TaskRange> {
    if tasks(layout, sources) == Some(partitions(sources)) {
        Vec::new()
    } else {
        layout.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn src(list: &[(&str, i32)]) -> Vec<SourceTopic> {
        list.iter()
            .map(|(t, p)| SourceTopic {
                topic: (*t).to_owned(),
                partitions: *p,
            })
            .collect()
    }

    fn by_task(layout: &[TaskRange], sources: &[SourceTopic]) -> Vec<String> {
        tasks(layout, sources)
            .expect("a layout covering the sources")
            .into_iter()
            .map(|(t, p)| format!("{t}-{p}"))
            .collect()
    }

    #[test]
    fn a_new_job_is_positional_and_needs_no_layout_in_its_job_file() {
        let s = src(&[("a", 2), ("b", 3)]);
        let l = assign(&[], &s);
        assert_eq!(by_task(&l, &s), ["a-0", "a-1", "b-0", "b-1", "b-2"]);
        assert_eq!(l.len(), 2, "one range per topic: {l:?}");
        assert!(for_job_file(&l, &s).is_empty());
        assert_eq!(by_task(&[], &s), by_task(&l, &s));
    }

    #[test]
    fn reordered_topics_keep_their_tasks() {
        let before = src(&[("a", 2), ("b", 2)]);
        let l = assign(&[], &before);
        let after = src(&[("b", 2), ("a", 2)]);
        let l2 = assign(&l, &after);
        assert_eq!(by_task(&l2, &after), ["a-0", "a-1", "b-0", "b-1"]);
        assert_eq!(for_job_file(&l2, &after), l2, "not positional for the new order");
        // The positional reading of the new order would differ.
        assert_eq!(by_task(&[], &after), ["b-0", "b-1", "a-0", "a-1"]);
    }

    #[test]
    fn a_replaced_topic_takes_the_freed_tasks_and_the_others_stay() {
        let l = assign(&[], &src(&[("a", 2), ("b", 2), ("c", 2)]));
        let after = src(&[("c", 2), ("d", 2), ("a", 2)]);
        let l2 = assign(&l, &after);
        assert_eq!(by_task(&l2, &after), ["a-0", "a-1", "d-0", "d-1", "c-0", "c-1"]);
    }

    #[test]
    fn growth_appends_and_a_corrupt_layout_is_refused() {
        let l = assign(&[], &src(&[("a", 2), ("b", 2)]));
        let grown = src(&[("a", 3), ("b", 2)]);
        let l2 = assign(&l, &grown);
        assert_eq!(by_task(&l2, &grown), ["a-0", "a-1", "b-0", "b-1", "a-2"]);
        // A layout that does not cover the sources is no layout.
        assert_eq!(tasks(&l, &grown), None);
        let overlapping = vec![
            TaskRange {
                topic: "a".into(),
                partition: 0,
                count: 2,
                task: 0,
            },
            TaskRange {
                topic: "b".into(),
                partition: 0,
                count: 2,
                task: 1,
            },
        ];
        assert_eq!(tasks(&overlapping, &src(&[("a", 2), ("b", 2)])), None);
    }

    fn arb_sources() -> impl Strategy<Value = Vec<SourceTopic>> {
        // Topic names from a small alphabet so that consecutive source lists
        // share topics; distinct names within a list.
        prop::collection::btree_map(0u8..6, 1i32..5, 1..4).prop_flat_map(|m| {
            let list: Vec<SourceTopic> = m
                .into_iter()
                .map(|(t, p)| SourceTopic {
                    topic: format!("t{t}"),
                    partitions: p,
                })
                .collect();
            Just(list).prop_shuffle()
        })
    }

    proptest! {
        /// Against a plain model: every task index 0..P is used exactly
        /// once, every partition still read keeps its task if that task
        /// still exists, and new partitions fill the free tasks in order.
        #[test]
        fn layouts_stay_stable_over_any_sequence_of_source_lists(
            steps in prop::collection::vec(arb_sources(), 1..6)
        ) {
            let mut layout: Vec<TaskRange> = Vec::new();
            let mut model: BTreeMap<SourcePartition, usize> = BTreeMap::new();
            for sources in steps {
                let next = assign(&layout, &sources);
                let got = tasks(&next, &sources).expect("assign covers its sources");
                let wanted = partitions(&sources);
                prop_assert_eq!(got.len(), wanted.len());
                let got_set: BTreeSet<_> = got.iter().cloned().collect();
                prop_assert_eq!(got_set, wanted.iter().cloned().collect::<BTreeSet<_>>());
                // Model: keep what can be kept, fill the rest in order.
                let p = wanted.len();
                let mut slots: Vec<Option<SourcePartition>> = vec![None; p];
                let mut rest = Vec::new();
                for s in &wanted {
                    match model.get(s) {
                        Some(&t) if t < p && slots[t].is_none() => slots[t] = Some(s.clone()),
                        _ => rest.push(s.clone()),
                    }
                }
                let mut rest = rest.into_iter();
                let expected: Vec<SourcePartition> =
                    slots.into_iter().map(|s| s.or_else(|| rest.next()).unwrap()).collect();
                prop_assert_eq!(&got, &expected);
                model = got.iter().cloned().enumerate().map(|(t, s)| (s, t)).collect();
                layout = next;
            }
        }
    }
}
