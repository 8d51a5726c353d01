//! The contract between the operator and a runtime pod: the compiled job file
//! (`job.json`, from the `<job>-config` ConfigMap), the environment, and the
//! admin API's JSON bodies. Both sides use these types, so neither keeps a copy.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::job::{RestoreMode, StreamJobSpec};

/// Paths and variables of the runtime container.
pub mod env {
    /// Where the compiled job is mounted (ConfigMap `<job>-config`, key `job.json`).
    pub const JOB_FILE: &str = "STREAMOPS_JOB_FILE";
    pub const JOB_DIR: &str = "/etc/streamops/job";
    pub const JOB_FILE_KEY: &str = "job.json";
    /// The pod's name; the runtime takes its ordinal from the trailing `-N`.
    pub const POD_NAME: &str = "POD_NAME";
    /// Same names as the operator's own Kafka settings.
    pub const KAFKA_BOOTSTRAP: &str = "STREAMOPS_KAFKA_BOOTSTRAP";
    pub const SECURITY_PROTOCOL: &str = "STREAMOPS_KAFKA_SECURITY_PROTOCOL";
    pub const SASL_MECHANISM: &str = "STREAMOPS_KAFKA_SASL_MECHANISM";
    pub const SASL_USERNAME_FILE: &str = "STREAMOPS_KAFKA_SASL_USERNAME_FILE";
    pub const SASL_PASSWORD_FILE: &str = "STREAMOPS_KAFKA_SASL_PASSWORD_FILE";
    pub const TLS_CA_FILE: &str = "STREAMOPS_KAFKA_TLS_CA_FILE";
    pub const TLS_CERT_FILE: &str = "STREAMOPS_KAFKA_TLS_CERT_FILE";
    pub const TLS_KEY_FILE: &str = "STREAMOPS_KAFKA_TLS_KEY_FILE";
    /// Kafka credentials are files under this directory, never values in env.
    pub const KAFKA_CREDENTIALS_DIR: &str = "/etc/streamops/kafka";
    pub const ADMIN_TOKEN_FILE: &str = "STREAMOPS_ADMIN_TOKEN_FILE";
    pub const ADMIN_DIR: &str = "/etc/streamops/admin";
    /// Key of the admin token in Secret `<job>-admin`.
    pub const ADMIN_TOKEN_KEY: &str = "token";
    pub const ADMIN_ADDR: &str = "STREAMOPS_ADMIN_ADDR";
    pub const ADMIN_PORT: u16 = 8080;
    pub const STATE_DIR: &str = "STREAMOPS_STATE_DIR";
    pub const STATE_PATH: &str = "/var/lib/streamops/state";
    /// Where a failed runtime writes why it stopped ([`super::termination`]);
    /// the operator points it at the container's `terminationMessagePath`.
    pub const TERMINATION_LOG: &str = "STREAMOPS_TERMINATION_LOG";
    pub const TERMINATION_LOG_PATH: &str = "/dev/termination-log";
}

/// Why a runtime process stopped with an error, as `<Reason>: <detail>` in its
/// termination log. The kubelet keeps it in the container's last state, so
/// the operator can report a crash-looping job with the runtime's own reason
/// (`Ready=False`, reason `KafkaUnavailable` while no broker quorum answers).
pub mod termination {
    /// The brokers did not answer, or could not accept writes (no leader,
    /// too few in-sync replicas, timeouts): the job resumes when they do.
    pub const KAFKA_UNAVAILABLE: &str = "KafkaUnavailable";
    /// A newer instance of a task took over its transactional id.
    pub const FENCED: &str = "ProducerFenced";
    /// A source partition's position is no longer in the topic and
    /// `spec.source.onOffsetOutOfRange` is `fail`.
    pub const OFFSET_OUT_OF_RANGE: &str = "OffsetOutOfRange";
    /// Anything else (the detail says what).
    pub const FAILED: &str = "RuntimeFailed";
    /// The kubelet keeps at most 4096 bytes of a termination message.
    pub const MAX_BYTES: usize = 4096;

    const REASONS: [&str; 4] = [KAFKA_UNAVAILABLE, FENCED, OFFSET_OUT_OF_RANGE, FAILED];

    /// The message to write: `<reason>: <detail>`, cut at a character
    /// boundary to fit [`MAX_BYTES`].
    pub fn message(reason: &str, detail: &str) -> String {
        let mut text = format!("{reason}: {detail}");
        if text.len() > MAX_BYTES {
            let mut end = MAX_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        text
    }

    /// The reason and detail of a message [`message`] wrote, or `None` for
    /// anything else (another container's text, an empty file).
    pub fn parse(text: &str) -> Option<(&'static str, &str)> {
        let (reason, detail) = text.split_once(": ")?;
        let reason = REASONS.into_iter().find(|r| *r == reason)?;
        Some((reason, detail.trim_end()))
    }
}

/// `job.json`: what one runtime pod executes.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobConfig {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The StreamJob generation this configuration was compiled from.
    pub generation: i64,
    /// The spec after [`StreamJobSpec::defaulted`].
    pub spec: StreamJobSpec,
    /// Runtime pods (M). Pod ordinal `i` owns tasks `{t : t % M == i}`.
    pub parallelism: i32,
    pub topics: JobTopics,
    pub restore: RestoreConfig,
    /// Prefix of the job's Kafka transactional ids (`<prefix>-<task>`) and
    /// consumer group id (`<prefix>`): [`kafka_id_prefix`] for jobs first
    /// deployed since it exists; absent: [`legacy_kafka_id_prefix`] (files
    /// of older operators, and jobs deployed by them, which must keep their
    /// ids so that a new producer fences the old ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_id_prefix: Option<String>,
    /// The job's number of key groups, fixed for its life (keyed state lives
    /// in groups, which move whole between keyed partitions); absent: one
    /// per task, the layout of jobs deployed before key groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_groups: Option<u32>,
}

/// The largest number of key groups a job may have.
pub const MAX_KEY_GROUPS: u32 = 32_768;

/// The key groups of a new job with `tasks` tasks (source partitions): at
/// least 128, and room to grow to 1.5 times its size before groups get
/// coarse; a power of two (as Flink's default maximum parallelism).
pub fn default_key_groups(tasks: u32) -> u32 {
    let wanted = tasks.saturating_add(tasks / 2).max(128);
    wanted
        .checked_next_power_of_two()
        .unwrap_or(MAX_KEY_GROUPS)
        .min(MAX_KEY_GROUPS)
}

impl JobConfig {
    /// The prefix the runtime uses: the file's, else the legacy one.
    pub fn id_prefix(&self) -> String {
        self.kafka_id_prefix
            .clone()
            .unwrap_or_else(|| legacy_kafka_id_prefix(&self.uid))
    }
}

/// Kafka ids of a job (transactional ids, consumer group) start with
/// `streamops.<namespace>.`, like its internal topics, so a per-namespace
/// Kafka user can be granted exactly its own with prefixed ACLs; namespaces
/// hold no `.`, so no namespace's prefix starts with another's. The uid
/// keeps a deleted and recreated job from fencing, or being fenced by, the
/// zombies of its namesake.
pub fn kafka_id_prefix(namespace: &str, job: &str, uid: &str) -> String {
    format!("{}{namespace}.{job}.{uid}", crate::tenancy::INTERNAL_TOPIC_PREFIX)
}

/// The ids of jobs deployed before [`kafka_id_prefix`]: no namespace in
/// them, so no prefixed ACL can separate tenants.
pub fn legacy_kafka_id_prefix(uid: &str) -> String {
    format!("streamops-{uid}")
}

/// Kafka topic names, resolved from the StreamTopic references of the spec.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JobTopics {
    /// In spec order.
    pub source: Vec<SourceTopic>,
    /// Which task reads which source partition ([`crate::layout`]); empty:
    /// the partitions of `source` concatenated in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layout: Vec<crate::layout::TaskRange>,
    pub sink: String,
    pub late_events: Option<String>,
    pub dead_letter: Option<String>,
    /// The Kafka topic of each StreamTopic a `route` step writes to, by
    /// StreamTopic name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<String, String>,
    /// Internal, P partitions, owned by the job.
    pub repartition: String,
    /// Internal, P partitions, `cleanup.policy=compact`, owned by the job.
    pub control: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SourceTopic {
    pub topic: String,
    pub partitions: i32,
}

impl JobTopics {
    /// P: the task count.
    pub fn total_partitions(&self) -> i32 {
        self.source.iter().map(|s| s.partitions).sum()
    }

    /// Task index -> (topic, partition); `None` when `layout` does not
    /// cover the partitions of `source` exactly.
    pub fn tasks(&self) -> Option<Vec<crate::layout::SourcePartition>> {
        crate::layout::tasks(&self.layout, &self.source)
    }
}

/// Where a starting pod takes its state from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreConfig {
    /// Savepoint to restore (`<storage>/savepoints/<id>`), for the first start
    /// of this generation. A pod of the same generation that restarts after
    /// committing newer checkpoints must prefer its newer committed marker.
    pub savepoint: Option<String>,
    /// Start empty when there is nothing to restore.
    pub allow_empty_state: bool,
    /// `savepoint` (restore `savepoint`), `last-state` (the checkpoint the last
    /// committed marker names) or `empty` (empty state, committed offsets).
    /// Absent in older files: `savepoint` when `savepoint` is set, else
    /// `last-state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<RestoreMode>,
}

/// The names of a job's internal topics, all in the internal topic space
/// ([`crate::tenancy::INTERNAL_TOPIC_PREFIX`]) that no StreamTopic may manage.
pub fn repartition_topic(namespace: &str, job: &str) -> String {
    format!(
        "{}{namespace}.{job}.repartition",
        crate::tenancy::INTERNAL_TOPIC_PREFIX
    )
}

pub fn control_topic(namespace: &str, job: &str) -> String {
    format!(
        "{}{namespace}.{job}.checkpoints",
        crate::tenancy::INTERNAL_TOPIC_PREFIX
    )
}

/// `GET /v1/status`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStatus {
    pub state: RuntimeState,
    pub generation: i64,
    #[serde(default)]
    pub tasks: Vec<i32>,
    /// Last committed checkpoint id per task (JSON keys: task numbers).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checkpoints: BTreeMap<i32, i64>,
    /// The newest of `checkpoints`; absent before the first commit.
    #[serde(default)]
    pub checkpoint_id: Option<i64>,
    /// Bytes of state each task's last committed checkpoint (or savepoint)
    /// references, shared files included: what a savepoint of the task
    /// copies (JSON keys: task numbers). How the operator predicts the next
    /// savepoint's duration.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checkpoint_bytes: BTreeMap<i32, i64>,
    #[serde(default)]
    pub last_commit_ms: Option<i64>,
    /// Records behind the end of this pod's source partitions, summed; the
    /// operator adds the pods' values up into `status.lag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Event time (ms) the slowest of this pod's source partitions is
    /// behind: for a partition with records not read yet, the wall clock
    /// minus the newest event time read from it; 0 when every partition is
    /// read to its end. What the autoscaler compares to `targetLag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time_lag_ms: Option<i64>,
    /// Records/s arriving on this pod's source partitions (the growth of
    /// their ends over the last ~30 s); absent until measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_rate: Option<i64>,
    /// Records/s this pod read from its source partitions over the same span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_rate: Option<i64>,
    /// Source positions reset by `spec.source.onOffsetOutOfRange` since the
    /// process started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offset_resets: Vec<OffsetReset>,
    /// Why the runtime stopped, while `state` is `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RuntimeStatus {
    /// A pod in `state` that has measured and committed nothing yet.
    pub fn new(state: RuntimeState, generation: i64) -> Self {
        Self {
            state,
            generation,
            tasks: Vec::new(),
            checkpoints: BTreeMap::new(),
            checkpoint_id: None,
            checkpoint_bytes: BTreeMap::new(),
            last_commit_ms: None,
            lag: None,
            event_time_lag_ms: None,
            input_rate: None,
            processing_rate: None,
            offset_resets: Vec::new(),
            error: None,
        }
    }
}

/// One source position that was no longer in its topic, and where the
/// runtime went on from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OffsetReset {
    pub topic: String,
    pub partition: i32,
    /// The position the job had.
    pub from: i64,
    /// Where it went on.
    pub to: i64,
    /// The partition's first and next offsets when it was found out.
    pub log_start: i64,
    pub log_end: i64,
    pub time_ms: i64,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeState {
    Starting,
    Restoring,
    Running,
    Stopped,
    Failed,
}

/// A valid savepoint id: what the operator generates, safe as one path
/// segment of the storage (`savepoints/<id>/`).
pub fn valid_savepoint_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !id.starts_with('.')
}

/// The id of the savepoint at `location` if it is one of `storage`'s
/// (`<storage>/savepoints/<id>`, where the runtime writes savepoint `id`; a
/// trailing `/` allowed), else `None`.
pub fn savepoint_id_in<'a>(storage: &str, location: &'a str) -> Option<&'a str> {
    let storage = storage.trim_end_matches('/');
    if storage.is_empty() {
        return None;
    }
    let id = location
        .trim_end_matches('/')
        .strip_prefix(storage)?
        .strip_prefix("/savepoints/")?;
    valid_savepoint_id(id).then_some(id)
}

/// `POST /v1/savepoints` body.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SavepointRequest {
    pub id: String,
    /// Stop processing once the savepoint's transaction committed.
    #[serde(default)]
    pub stop: bool,
    /// Take it drained (for a restore at another source partition count):
    /// stage 1 of every task of every pod stops and sends a barrier to every
    /// keyed partition, and each task's snapshot waits until its keyed
    /// partition applied every upstream's barrier. Every pod of the job
    /// must be asked; none completes before all of them stopped stage 1.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drain: bool,
}

/// `GET /v1/savepoints/{id}`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SavepointStatus {
    pub id: String,
    pub state: SavepointState,
    /// The request stops processing once the savepoint committed.
    #[serde(default)]
    pub stop: bool,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub checkpoint_id: Option<i64>,
    /// `topic-partition` -> next offset, for this pod's tasks.
    #[serde(default)]
    pub offsets: BTreeMap<String, i64>,
    #[serde(default)]
    pub error: Option<String>,
    /// Taken drained, as asked (runtimes that cannot drain never say so).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
    /// Bytes of state it copied, this pod's tasks summed (absent from
    /// runtimes that do not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<i64>,
}

/// `DELETE /v1/savepoints/{id}`: every object under `<storage>/savepoints/<id>/`
/// is deleted by the pod's processing loop. 200: done (`deletedObjects` is
/// how many this call deleted, 0 when it was already gone); 202: queued
/// behind a busy loop, not done yet (`deletedObjects` absent; ask again,
/// deleting is idempotent); 409: refused, the pod was started from this
/// savepoint (its job file's `restore.savepoint`); 400: not a valid id;
/// 500: storage failed part-way.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SavepointDeletion {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_objects: Option<u64>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SavepointState {
    InProgress,
    Completed,
    Failed,
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_termination_message_round_trips_and_fits_the_kubelets_limit() {
        use super::termination::*;
        let m = message(KAFKA_UNAVAILABLE, "committing checkpoint 7: Operation timed out");
        assert_eq!(
            parse(&m),
            Some((KAFKA_UNAVAILABLE, "committing checkpoint 7: Operation timed out"))
        );
        // Multi-byte characters across the limit: cut at a boundary.
        let long = message(FAILED, &"é".repeat(MAX_BYTES));
        assert!(long.len() <= MAX_BYTES && long.len() > MAX_BYTES - 2);
        assert_eq!(parse(&long).map(|(r, _)| r), Some(FAILED));
        // Only the runtime's own reasons are taken.
        assert_eq!(parse("panic: something"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("KafkaUnavailable"), None);
    }

    use super::*;

    #[test]
    fn savepoint_ids_name_one_directory_of_their_storage() {
        assert!(valid_savepoint_id("sp-3-abc_1.2"));
        for bad in ["", "..", "../x", "a/b", ".hidden", "a b", &"x".repeat(129)] {
            assert!(!valid_savepoint_id(bad), "{bad:?}");
        }
        let storage = "file:///c/ns/job";
        assert_eq!(
            savepoint_id_in(storage, "file:///c/ns/job/savepoints/sp-1"),
            Some("sp-1")
        );
        assert_eq!(
            savepoint_id_in("file:///c/ns/job/", "file:///c/ns/job/savepoints/sp-1/"),
            Some("sp-1")
        );
        for elsewhere in [
            "file:///c/ns/job2/savepoints/sp-1",
            "file:///c/ns/job/savepoints/sp-1/task-0",
            "file:///c/ns/job/savepoints/",
            "file:///c/ns/job/savepoints/..",
            "file:///c/ns/job/checkpoints/sp-1",
            "s3://b/ns/job/savepoints/sp-1",
            "",
        ] {
            assert_eq!(savepoint_id_in(storage, elsewhere), None, "{elsewhere:?}");
        }
        assert_eq!(
            savepoint_id_in("", "/savepoints/sp-1"),
            None,
            "no storage, nothing is in it"
        );
    }

    #[test]
    fn admin_bodies_match_the_documented_json() {
        let s: RuntimeStatus = serde_json::from_value(serde_json::json!({
            "state": "Running", "generation": 3, "tasks": [0, 4], "checkpointId": 17, "lastCommitMs": 5
        }))
        .unwrap();
        assert_eq!(s.checkpoint_id, Some(17));
        let sp: SavepointStatus = serde_json::from_value(serde_json::json!({
            "id": "sp-1", "state": "Completed", "location": "file:///c/savepoints/sp-1",
            "checkpointId": 17, "offsets": {"clicks-0": 123}, "error": null
        }))
        .unwrap();
        assert_eq!(sp.state, SavepointState::Completed);
        assert_eq!(sp.offsets["clicks-0"], 123);
        let restore = serde_json::to_value(RestoreConfig {
            savepoint: None,
            allow_empty_state: false,
            mode: None,
        })
        .unwrap();
        assert_eq!(
            restore,
            serde_json::json!({"savepoint": null, "allowEmptyState": false})
        );
        let done = SavepointDeletion {
            id: "sp-1".into(),
            deleted_objects: Some(6),
        };
        assert_eq!(
            serde_json::to_value(&done).unwrap(),
            serde_json::json!({"id": "sp-1", "deletedObjects": 6})
        );
        let queued: SavepointDeletion = serde_json::from_value(serde_json::json!({"id": "sp-1"})).unwrap();
        assert_eq!(queued.deleted_objects, None);
    }
}
