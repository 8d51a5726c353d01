//! Which task reads which source partition, and the stable identity of a
//! source partition across versions of a job.
//!
//! Tasks keep their source partition when the operator changes the source
//! list ([`streamops_crds::layout`]), but a task index can pass to a new
//! partition when a topic is replaced. So what a keyed partition remembers
//! per upstream (the offsets it has seen, the watermark) is keyed by the
//! upstream partition's [`source_id`], not by the index of the task that
//! read it: records a replaced partition left in the repartition topic are
//! never mistaken for the new partition's.

use crate::error::Result;
use crate::error::RuntimeError;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use streamops_crds::runtime_api::{JobTopics, SourceTopic};

/// A source partition by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceRef {
    pub topic: String,
    pub partition: i32,
}

impl std::fmt::Display for SourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// Stable 64-bit identity of a source partition (FNV-1a over the topic
/// name, a separator no topic name contains, and the partition).
pub fn source_id(topic: &str, partition: i32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in topic.bytes().chain([0xff]).chain(partition.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The job's tasks and their source partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    by_task: Vec<SourceRef>,
    ids: Vec<u64>,
    /// topic -> partition -> task.
    by_topic: HashMap<String, Vec<u32>>,
    /// The job's key groups ([`super::key_groups`]); 0: one per task, the
    /// layout of jobs deployed before key groups.
    key_groups: u32,
}

impl Sources {
    /// From the job file: its layout, or the partitions in spec order.
    pub fn new(topics: &JobTopics) -> Result<Sources> {
        let tasks = topics.tasks().ok_or_else(|| {
            RuntimeError::Job(
                "topics.layout does not assign every partition of topics.source to exactly one task"
                    .to_string(),
            )
        })?;
        Self::from_tasks(
            tasks
                .into_iter()
                .map(|(topic, partition)| SourceRef { topic, partition })
                .collect(),
        )
    }

    /// One topic's partitions in order (tests and benchmarks).
    pub fn positional(topic: &str, partitions: i32) -> Sources {
        let topics = [SourceTopic {
            topic: topic.to_owned(),
            partitions,
        }];
        Self::from_tasks(
            streamops_crds::layout::tasks(&[], &topics)
                .unwrap_or_default()
                .into_iter()
                .map(|(topic, partition)| SourceRef { topic, partition })
                .collect(),
        )
        .unwrap_or_else(|_| Sources {
            by_task: Vec::new(),
            ids: Vec::new(),
            by_topic: HashMap::new(),
            key_groups: 0,
        })
    }

    fn from_tasks(by_task: Vec<SourceRef>) -> Result<Sources> {
        let ids: Vec<u64> = by_task.iter().map(|s| source_id(&s.topic, s.partition)).collect();
        let mut seen = HashMap::new();
        for (s, id) in by_task.iter().zip(&ids) {
            if let Some(other) = seen.insert(*id, s) {
                return Err(RuntimeError::Job(format!(
                    "source partitions {other} and {s} have the same id; rename one of the topics"
                )));
            }
        }
        let mut by_topic: HashMap<String, Vec<u32>> = HashMap::new();
        for (t, s) in by_task.iter().enumerate() {
            let tasks = by_topic.entry(s.topic.clone()).or_default();
            let p = s.partition.max(0) as usize;
            if tasks.len() <= p {
                tasks.resize(p + 1, u32::MAX);
            }
            tasks[p] = t as u32;
        }
        Ok(Sources {
            by_task,
            ids,
            by_topic,
            key_groups: 0,
        })
    }

    /// The job has `groups` key groups (the job file's `keyGroups`; `None`:
    /// one per task, as jobs deployed before key groups).
    pub fn with_key_groups(mut self, groups: Option<u32>) -> Sources {
        self.key_groups = groups.unwrap_or(0);
        self
    }

    /// G, the job's number of key groups (at least one).
    pub fn key_groups(&self) -> u32 {
        match self.key_groups {
            0 => self.len().max(1),
            g => g,
        }
    }

    /// The key groups task `t`'s keyed partition owns.
    pub fn groups_of(&self, t: u32) -> std::ops::Range<u32> {
        super::key_groups::range(t, self.key_groups(), self.len())
    }

    /// P, the number of tasks.
    pub fn len(&self) -> u32 {
        self.by_task.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.by_task.is_empty()
    }

    /// The source partition of task `t`.
    pub fn source_of(&self, t: u32) -> Option<&SourceRef> {
        self.by_task.get(t as usize)
    }

    /// The task reading `topic`-`partition`, if the job reads it.
    pub fn task_of(&self, topic: &str, partition: i32) -> Option<u32> {
        let tasks = self.by_topic.get(topic)?;
        let t = *tasks.get(usize::try_from(partition).ok()?)?;
        (t != u32::MAX).then_some(t)
    }

    /// [`source_id`] of task `t`'s partition.
    pub fn id_of(&self, t: u32) -> Option<u64> {
        self.ids.get(t as usize).copied()
    }

    /// Ids of every partition the job reads now, in task order.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }
}

#[cfg(test)]
mod tests {
    use streamops_crds::layout::TaskRange;

    use super::*;

    fn topics(layout: Vec<TaskRange>) -> JobTopics {
        JobTopics {
            source: vec![
                SourceTopic {
                    topic: "a".into(),
                    partitions: 2,
                },
                SourceTopic {
                    topic: "b".into(),
                    partitions: 3,
                },
            ],
            layout,
            sink: "out".into(),
            late_events: None,
            dead_letter: None,
            routes: Default::default(),
            repartition: "r".into(),
            control: "c".into(),
        }
    }

    #[test]
    fn positional_without_a_layout_and_as_laid_out_with_one() {
        let s = Sources::new(&topics(Vec::new())).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(s.source_of(1).map(ToString::to_string).as_deref(), Some("a-1"));
        assert_eq!(s.source_of(2).map(ToString::to_string).as_deref(), Some("b-0"));
        assert_eq!(s.source_of(5), None);
        assert_eq!(s.task_of("b", 2), Some(4));
        assert_eq!(s.task_of("b", 3), None);
        assert_eq!(s.task_of("c", 0), None);
        assert_eq!(s.task_of("a", -1), None);
        assert_eq!(s.id_of(4), Some(source_id("b", 2)));

        let range = |topic: &str, partition, count, task| TaskRange {
            topic: topic.into(),
            partition,
            count,
            task,
        };
        let s = Sources::new(&topics(vec![range("b", 0, 3, 0), range("a", 0, 2, 3)])).unwrap();
        assert_eq!(s.task_of("a", 0), Some(3));
        assert_eq!(s.source_of(0).map(ToString::to_string).as_deref(), Some("b-0"));
        assert!(
            Sources::new(&topics(vec![range("b", 0, 3, 0)])).is_err(),
            "a layout missing partitions is refused"
        );
    }

    #[test]
    fn ids_tell_topics_and_partitions_apart() {
        assert_ne!(source_id("a", 1), source_id("a", 2));
        assert_ne!(source_id("a1", 0), source_id("a", 10));
        assert_eq!(source_id("clicks", 3), source_id("clicks", 3));
    }
}
