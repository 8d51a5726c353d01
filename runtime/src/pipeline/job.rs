//! The job file (`job.json`, written by the operator into the job's
//! ConfigMap; its types are shared with the operator in
//! [`streamops_crds::runtime_api`]) and the runtime's share of the work.

use crate::error::RuntimeError;
use crate::error::{Context, Result};
use std::path::Path;

use crate::dataflow::sources::Sources;
pub use streamops_crds::job::RestoreMode;
pub use streamops_crds::runtime_api::{
    JobConfig as JobFile, JobTopics, RestoreConfig as RestoreFrom, SourceTopic,
};

/// What the runtime derives from a job file.
pub trait JobExt {
    fn load(path: &Path) -> Result<JobFile>;
    /// Refuses files the runtime cannot run, with the reason.
    fn check(&self) -> Result<()>;
    /// Number of tasks = total source partitions. Task `t` owns one source
    /// partition (see [`JobExt::sources`]), keyed partition `t`
    /// (repartition topic) and control partition `t`.
    fn task_count(&self) -> u32;
    fn parallelism_u32(&self) -> u32;
    /// Which task reads which source partition.
    fn sources(&self) -> Result<Sources>;
    /// Transactional id of task `t`: stable per input partition across
    /// versions and parallelism, so a new owner fences every predecessor.
    fn transactional_id(&self, task: u32) -> String;
    fn group_id(&self) -> String;
    /// How state is restored (the file's explicit mode, else implied).
    fn restore_mode(&self) -> RestoreMode;
}

impl JobExt for JobFile {
    fn load(path: &Path) -> Result<JobFile> {
        let bytes = std::fs::read(path).with_context(|| format!("reading job file {}", path.display()))?;
        let job: JobFile =
            serde_json::from_slice(&bytes).with_context(|| format!("parsing job file {}", path.display()))?;
        job.check()?;
        Ok(job)
    }

    fn check(&self) -> Result<()> {
        if self.topics.source.is_empty() {
            return Err(RuntimeError::Job("topics.source is empty".into()));
        }
        if let Some(s) = self.topics.source.iter().find(|s| s.partitions <= 0) {
            return Err(RuntimeError::Job(format!(
                "source topic {} has {} partitions",
                s.topic, s.partitions
            )));
        }
        if self.parallelism <= 0 || self.parallelism as u32 > self.task_count() {
            return Err(RuntimeError::Job(format!(
                "parallelism {} must be between 1 and the source partition count {}",
                self.parallelism,
                self.task_count()
            )));
        }
        if let Some(g) = self
            .key_groups
            .filter(|g| !(1..=streamops_crds::runtime_api::MAX_KEY_GROUPS).contains(g))
        {
            return Err(RuntimeError::Job(format!(
                "keyGroups {g} must be between 1 and {}",
                streamops_crds::runtime_api::MAX_KEY_GROUPS
            )));
        }
        self.sources()?;
        if self.restore_mode() == RestoreMode::Savepoint && self.restore.savepoint.is_none() {
            return Err(RuntimeError::Job(
                "restore mode savepoint without restore.savepoint".into(),
            ));
        }
        Ok(())
    }

    fn task_count(&self) -> u32 {
        self.topics
            .source
            .iter()
            .map(|s| s.partitions.max(0) as u32)
            .sum()
    }

    fn parallelism_u32(&self) -> u32 {
        self.parallelism.max(0) as u32
    }

    fn sources(&self) -> Result<Sources> {
        Sources::new(&self.topics).map(|s| s.with_key_groups(self.key_groups))
    }

    fn transactional_id(&self, task: u32) -> String {
        format!("{}-{task}", self.id_prefix())
    }

    fn group_id(&self) -> String {
        self.id_prefix()
    }

    fn restore_mode(&self) -> RestoreMode {
        match (self.restore.mode, &self.restore.savepoint) {
            (Some(m), _) => m,
            (None, Some(_)) => RestoreMode::Savepoint,
            (None, None) => RestoreMode::LastState,
        }
    }
}

/// Tasks owned by pod `ordinal` of `parallelism`: `{t : t % parallelism == ordinal}`.
pub fn assigned_tasks(task_count: u32, parallelism: u32, ordinal: u32) -> Vec<u32> {
    (0..task_count)
        .filter(|t| parallelism > 0 && t % parallelism == ordinal)
        .collect()
}

/// The ordinal of a StatefulSet pod from its name (`<name>-<ordinal>`).
pub fn ordinal_from_pod_name(name: &str) -> Option<u32> {
    name.rsplit_once('-').and_then(|(_, n)| n.parse().ok())
}

/// Parses `--tasks` text: `0,2,5-7`.
pub fn parse_tasks(text: &str) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (
                    a.parse().with_context(|| format!("bad task range {part:?}"))?,
                    b.parse().with_context(|| format!("bad task range {part:?}"))?,
                );
                if a > b {
                    return Err(RuntimeError::Job(format!("bad task range {part:?}")));
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().with_context(|| format!("bad task {part:?}"))?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_covers_every_task_once() {
        for p in 1..=9 {
            for m in 1..=p {
                let mut all: Vec<u32> = (0..m).flat_map(|i| assigned_tasks(p, m, i)).collect();
                all.sort_unstable();
                assert_eq!(all, (0..p).collect::<Vec<_>>(), "p={p} m={m}");
            }
        }
        assert_eq!(assigned_tasks(8, 3, 1), vec![1, 4, 7]);
    }

    #[test]
    fn ordinals_and_task_lists_parse() {
        assert_eq!(ordinal_from_pod_name("clicks-per-user-12"), Some(12));
        assert_eq!(ordinal_from_pod_name("nodash"), None);
        assert_eq!(parse_tasks("0, 2,5-7,2").unwrap(), vec![0, 2, 5, 6, 7]);
        assert!(parse_tasks("3-1").is_err());
        assert!(parse_tasks("x").is_err());
    }

    /// A job file of job `j` (uid `u`) reading topics `a` (2 partitions) and `b` (3).
    fn two_topic_job() -> JobFile {
        serde_json::from_value(serde_json::json!({
            "name": "j", "namespace": "n", "uid": "u", "generation": 1, "parallelism": 2,
            "spec": serde_json::from_str::<serde_json::Value>(include_str!("../../tests/data/min-spec.json")).unwrap(),
            "topics": {"source": [{"topic": "a", "partitions": 2}, {"topic": "b", "partitions": 3}],
                       "sink": "out", "lateEvents": null, "deadLetter": null,
                       "repartition": "r", "control": "c"},
            "restore": {"savepoint": null, "allowEmptyState": true}
        }))
        .unwrap()
    }

    #[test]
    fn tasks_map_to_source_partitions_in_spec_order() {
        let job = two_topic_job();
        job.check().unwrap();
        assert_eq!(job.task_count(), 5);
        let sources = job.sources().unwrap();
        assert_eq!(sources.task_of("b", 2), Some(4));
        assert_eq!(sources.source_of(2).map(|s| s.partition), Some(0));
        assert_eq!(job.restore_mode(), RestoreMode::LastState);
        assert_eq!(job.transactional_id(3), "streamops-u-3");
    }

    /// Files of older operators carry no prefix: their jobs keep the ids
    /// they ran with (so a new producer fences the old ones); the prefix
    /// the operator writes puts the namespace first, as prefixed ACLs need.
    #[test]
    fn kafka_ids_follow_the_files_prefix_else_the_legacy_one() {
        let mut job = two_topic_job();
        assert_eq!(job.kafka_id_prefix, None);
        assert_eq!(
            (job.transactional_id(0), job.group_id()),
            ("streamops-u-0".to_owned(), "streamops-u".to_owned())
        );
        job.kafka_id_prefix = Some(streamops_crds::runtime_api::kafka_id_prefix(
            "team-a", "clicks", "u",
        ));
        assert_eq!(job.transactional_id(7), "streamops.team-a.clicks.u-7");
        assert_eq!(job.group_id(), "streamops.team-a.clicks.u");
        let text = serde_json::to_string(&job).unwrap();
        assert!(
            text.contains(r#""kafkaIdPrefix":"streamops.team-a.clicks.u""#),
            "{text}"
        );
    }
}
