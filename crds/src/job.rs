//! `StreamJob`: a keyed, windowed aggregation from Kafka to Kafka.
//!
//! Every optional field has its default applied in code ([`StreamJobSpec::defaulted`]),
//! never in the CRD schema, so GitOps diffs only ever show what a user wrote.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::core::v1::ResourceRequirements,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::{
    common::KafkaClusterSpec,
    duration::DurationSpec,
    validate::{FieldError, Validation},
};

/// Aggregation names become JSON field names in the output record.
pub const AGGREGATION_NAME_PATTERN: &str = r"^[a-zA-Z_][a-zA-Z0-9_]{0,62}$";
/// Output record fields the runtime writes itself; aggregations may not shadow them.
pub const RESERVED_OUTPUT_FIELDS: [&str; 5] = ["key", "windowStart", "windowEnd", "final", "firing"];
/// Checkpoint/savepoint storage URL schemes the runtime can write to.
pub const STORAGE_SCHEMES: [&str; 4] = ["file", "s3", "gs", "az"];
/// The most sliding windows one record may belong to (`size / slide`,
/// rounded up): every record updates that many windows' state, so a spec
/// like a day-long window sliding by a second (86,400 windows per record)
/// would stall a job on its first records.
pub const MAX_WINDOWS_PER_RECORD: u64 = 100;

/// Annotations users (or Argo CD actions) set on a StreamJob. Actions set
/// annotations, never spec fields, so Argo CD self-heal does not revert them.
pub mod annotation {
    /// Any new value requests a savepoint now (the "savepoint now" action
    /// writes a timestamp). Same effect as changing `spec.savepointNonce`.
    pub const SAVEPOINT_REQUEST: &str = "streamops.io/savepoint-request";
    /// `"true"`: suspend the job (stop with a savepoint) whatever `spec.state`
    /// says. Removing it resumes.
    pub const SUSPEND: &str = "streamops.io/suspend";
    /// `"true"`: reconciliation is paused; nothing is created, changed or stopped.
    pub const PAUSED: &str = "streamops.io/paused";
}

/// A keyed, windowed aggregation over event time, run as one runtime pod per
/// group of source partitions, writing its results exactly once.
// `printcolumn(...)` repeats keys such as `type_` by design; clippy reads them
// as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "streamops.io",
    version = "v1alpha1",
    kind = "StreamJob",
    namespaced,
    status = "StreamJobStatus",
    shortname = "sjob",
    shortname = "sj",
    category = "streamops",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Parallelism", type_ = "integer", json_path = ".status.parallelism"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Savepoint",
        type_ = "string",
        json_path = ".status.lastSavepoint.id",
        priority = 1
    ),
    printcolumn(name = "Lag", type_ = "integer", json_path = ".status.lag", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct StreamJobSpec {
    /// Runtime image. Absent: the operator's configured runtime image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// What to read: StreamTopics, their record format and event time.
    pub source: SourceSpec,
    /// The keyed, windowed aggregation: filter, key, window, aggregations, emit mode.
    pub pipeline: PipelineSpec,
    /// Where results go: one record per (key, window), keyed by the grouping key.
    pub sink: SinkSpec,
    /// Where records later than `pipeline.allowedLateness` go. Absent: they are
    /// counted (`streamops_records_late_total`) and not written anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_events: Option<TopicOutputSpec>,
    /// Where records that cannot be decoded or evaluated go, with the reason in
    /// a header. Absent: they are counted and not written anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<TopicOutputSpec>,
    /// Most runtime pods to run. Absent: one per source partition. Never more
    /// than the source partition count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub parallelism: Option<i32>,
    /// Lag-driven parallelism: bounds, the event-time lag to keep, and how
    /// patient to be before scaling. Absent: off. In `apply` mode its
    /// recommendation replaces `parallelism` (which is then only the count
    /// before the first recommendation); see the README.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerSpec>,
    /// Checkpoint interval, state storage and savepoint retention. Absent: every field's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointSpec>,
    /// How a spec change reaches running pods. Absent: `savepoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_mode: Option<UpgradeMode>,
    /// Timeouts and rollback of savepoint-then-upgrade. Absent: every field's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeSpec>,
    /// Absent: `running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    /// Change to any new value to take a savepoint now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_nonce: Option<String>,
    /// Where the first deployment's state comes from. Absent: empty state on first deployment only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreSpec>,
    /// Kafka cluster. Absent: the operator's default cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<KafkaClusterSpec>,
    /// Resources of each runtime container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Overrides merged into the runtime pod template, from an allow-list of
    /// fields that cannot widen the pod: metadata.labels/annotations;
    /// spec.affinity, tolerations, nodeSelector, topologySpreadConstraints,
    /// priorityClassName, imagePullSecrets, terminationGracePeriodSeconds;
    /// configMap, secret and persistentVolumeClaim volumes; and, for the
    /// container named "runtime", env, resources and volumeMounts of those
    /// volumes (configMap and secret read-only). Any other field is refused
    /// (Stalled, InvalidSpec, naming it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub pod_template: Option<serde_json::Value>,
}

fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// Names of StreamTopic resources in this namespace to read.
    #[schemars(length(min = 1, max = 16), inner(length(max = 253)))]
    pub topics: Vec<String>,
    /// Absent: `json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<RecordFormat>,
    /// Where each record's event time comes from. Required by a pipeline
    /// with a window; a stateless pipeline (no `window`) reads no event time
    /// and refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<EventTimeSpec>,
    /// How event time progresses per partition (windowed pipelines only).
    /// Absent: no out-of-orderness, no idle timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<WatermarkSpec>,
    /// Where to start when there is no checkpoint or savepoint. Absent: `earliest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_from: Option<StartPosition>,
    /// What to do when a partition's position is no longer in the topic
    /// (the records were deleted by retention before the job read them, or
    /// the topic was recreated): `fail` stops the job with
    /// `Ready=False`/`OffsetOutOfRange` until someone decides; `earliest`
    /// goes on from the oldest record still there (the deleted ones are
    /// lost), `latest` from the end. Every reset is logged, counted
    /// (`streamops_source_offset_resets_total`) and reported as a Warning
    /// Event. Absent: `fail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_offset_out_of_range: Option<OffsetOutOfRange>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OffsetOutOfRange {
    #[default]
    Fail,
    Earliest,
    Latest,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RecordFormat {
    /// One JSON object per record value.
    #[default]
    Json,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventTimeSpec {
    /// CEL expression over `record` giving the event time, e.g. `record.ts`.
    #[schemars(length(min = 1))]
    pub field: String,
    /// Absent: `epochMillis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<TimeFormat>,
    /// A record whose event time is more than this ahead of the wall clock
    /// goes to the dead-letter topic (kind `future_event_time`) and never
    /// moves the watermark: one bad timestamp would otherwise make every
    /// correct record after it late. Measured against the wall clock, not the
    /// watermark, so a partition that legitimately jumps ahead after a quiet
    /// spell is not trapped. Absent: `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_future_skew: Option<DurationSpec>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TimeFormat {
    #[default]
    EpochMillis,
    EpochSeconds,
    /// RFC 3339 string, e.g. `2026-11-22T14:00:00.250Z`.
    Rfc3339,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WatermarkSpec {
    /// Bounded out-of-orderness: the watermark trails the highest event time
    /// seen on a partition by this much. Absent: `0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_orderness: Option<DurationSpec>,
    /// A partition with no records for this long (wall time) stops holding the
    /// watermark back. Absent: never (exact, wall-clock-independent output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<DurationSpec>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StartPosition {
    #[default]
    Earliest,
    Latest,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineSpec {
    /// CEL expression over `record`; records for which it is false are skipped
    /// (and counted). Absent: keep every record. The short form of a first
    /// `filter` step: it runs before `steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub filter: Option<String>,
    /// Named stateless steps run on every record, in order, before `keyBy`:
    /// `filter` (keep the record when a CEL predicate over `record` is
    /// true) or `map` (replace the record by an object of output field ->
    /// CEL expression over `record`). `keyBy`, the event time and the
    /// aggregations read the record the last step produced. A step that
    /// fails on a record (a missing field, a wrong type, a division by zero)
    /// sends that record to the dead-letter topic naming the step, and
    /// processing goes on. Adding, removing or changing steps keeps the
    /// job's state (they hold none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub steps: Vec<StepSpec>,
    /// Named steps run on each window result before it goes to the sink,
    /// in order; `record` is the result (`key`, `windowStart`, `windowEnd`,
    /// `final`, `firing` and one field per aggregation). A `filter` here is
    /// SQL's HAVING (`record.failures >= 5`: alert only past a threshold);
    /// a `map` reshapes the result (its `key` stays the record's Kafka key).
    /// A result a step fails on goes to the dead-letter topic. Compatible
    /// with any state: they run on results not yet emitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub result_steps: Vec<StepSpec>,
    /// CEL expressions over `record` whose values form the grouping key.
    /// `keyBy`, `window` and `aggregations` come together or not at all:
    /// without them the job is stateless (ETL): every record the steps keep
    /// goes to the sink as it is (or as the last `map` made it), with no
    /// keyed state and no repartitioning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 8), inner(length(max = 1024)))]
    pub key_by: Vec<String>,
    /// The event-time window each record is assigned to. Absent: a
    /// stateless job (see `keyBy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,
    /// How long after a window closes late records still update it (and
    /// re-emit it). Later records go to `lateEvents`. Absent: `0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_lateness: Option<DurationSpec>,
    /// Aggregates computed per (key, window), each written under its `name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 32))]
    pub aggregations: Vec<AggregationSpec>,
    /// Absent: `onWindowClose`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emit: Option<EmitMode>,
}

/// One named step of `spec.pipeline.steps`: exactly one of `filter` and
/// `map`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepSpec {
    /// Unique in the pipeline, a DNS label (`clean-up`): what dead letters
    /// and change verdicts call the step, as Flink's operator uid.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// CEL predicate over `record`: the record goes on when it is true; false
    /// or null drops it (counted as filtered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub filter: Option<String>,
    /// The record becomes an object with these fields, each the value of a
    /// CEL expression over `record` (any CEL value: numbers, strings, lists,
    /// maps, null; timestamps are written as RFC 3339 strings, durations
    /// as seconds, `"1.5s"`). Fields not listed are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 4096)))]
    pub map: Option<BTreeMap<String, String>>,
    /// `spec.pipeline.steps` only: the first rule whose `when` is true
    /// sends the record, as it is at this step, to the StreamTopic `to`,
    /// and it leaves the pipeline; a record no rule matches goes on.
    /// Routed records are written in the job's transactions, exactly once
    /// like the sink, keyed by the source record's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub route: Option<Vec<RouteSpec>>,
}

/// One rule of a `route` step.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// CEL predicate over `record`.
    #[schemars(length(min = 1, max = 4096))]
    pub when: String,
    /// Name of a StreamTopic in this namespace (not a source topic).
    #[schemars(length(min = 1, max = 253))]
    pub to: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowSpec {
    /// `tumbling` (needs `size`), `sliding` (`size`, `slide`) or `session` (`gap`).
    #[serde(rename = "type")]
    pub kind: WindowKind,
    /// Window length (tumbling, sliding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<DurationSpec>,
    /// Distance between window starts (sliding only); at most `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slide: Option<DurationSpec>,
    /// Inactivity that closes a session (session only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<DurationSpec>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum WindowKind {
    Tumbling,
    Sliding,
    Session,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AggregationSpec {
    /// Output field name.
    #[schemars(regex(pattern = AGGREGATION_NAME_PATTERN), length(max = 63))]
    pub name: String,
    /// `count`, `sum`, `min`, `max`, `avg`, `distinctCount` or `topK` (needs `k`).
    pub function: AggregateFunction,
    /// CEL expression over `record` for the aggregated value; required for
    /// every function but `count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub field: Option<String>,
    /// How many entries `topK` keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub k: Option<i32>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AggregateFunction {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    DistinctCount,
    TopK,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum EmitMode {
    /// One final result per key and window when the watermark passes its end
    /// (plus updates for allowed-late records).
    #[default]
    OnWindowClose,
    /// A result after every record that changes a window, then a final one.
    OnUpdate,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SinkSpec {
    /// Name of a StreamTopic resource in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub topic: String,
    /// Absent: `json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<RecordFormat>,
    /// `spec.sink` of a stateless job only: CEL expression over the record
    /// written (after the steps) giving its Kafka key, which picks its
    /// partition (Kafka's default partitioner). A string is written as its
    /// bytes, `null` as no key, anything else as canonical JSON. A record
    /// it fails on is a dead letter. Absent: the source record's key. A
    /// window result's key is always its `keyBy` key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub key: Option<String>,
}

/// A side output (late events, dead letters): a StreamTopic and a format.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicOutputSpec {
    /// Name of a StreamTopic resource in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub topic: String,
    /// Absent: `json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<RecordFormat>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSpec {
    /// Absent: `10s`. Results become visible once per interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<DurationSpec>,
    /// What a crash may do to the output. Absent: `exactlyOnce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guarantee: Option<ProcessingGuarantee>,
    /// `file:///path`, `s3://bucket/prefix`, `gs://...`, `az://...`. Absent:
    /// the operator's configured default storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub storage: Option<String>,
    /// Savepoints kept in history (the newest is never removed); older ones
    /// are deleted from storage. Absent: 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub savepoints_to_keep: Option<i32>,
    /// Savepoints older than this are removed from history and deleted from
    /// storage (the newest is never removed). Absent: kept until
    /// `savepointsToKeep` pushes them out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_max_age: Option<DurationSpec>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ProcessingGuarantee {
    /// Every output of a checkpoint interval is written in one Kafka
    /// transaction with the input offsets and the state it came from: after a
    /// crash, read_committed consumers see each result once. Results become
    /// visible when the interval's transaction commits.
    #[default]
    ExactlyOnce,
    /// Outputs are written as they are produced (idempotent producer, no
    /// transactions) and visible at once to every consumer; a checkpoint waits
    /// for them to be acknowledged before it records offsets and state. After
    /// a crash the input since the last checkpoint is processed again, so its
    /// results may appear twice (with the same values); nothing is lost.
    AtLeastOnce,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeMode {
    /// Stop with a savepoint, start the new version from it (default).
    #[default]
    Savepoint,
    /// Stop, start the new version from the last committed checkpoint.
    LastState,
    /// Stop, start the new version with empty state from the committed offsets.
    Stateless,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeSpec {
    /// How long every pod has to finish stop-with-savepoint. Absent: `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_timeout: Option<DurationSpec>,
    /// How long a new version has to become healthy before it is rolled back.
    /// Absent: `120s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout: Option<DurationSpec>,
    /// Roll back to the last stable spec when the new version is not healthy
    /// in time. Absent: `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<bool>,
}

/// What the autoscaler may do with the parallelism it works out.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AutoscalerMode {
    /// Nothing is evaluated and `status.autoscaler` is not written.
    #[default]
    Off,
    /// Decisions are written to `status.autoscaler` and never acted on:
    /// see what it would do before letting it.
    Recommend,
    /// The recommendation becomes the job's pod count: a rescale with a
    /// savepoint, as for a changed `parallelism` (the spec is not edited).
    Apply,
}

/// Bounds and patience of the lag-driven autoscaler. Its decisions are a
/// pure function of the observed event-time lag and record rates (see the
/// operator's `job::autoscaler`); every timer it needs lives in
/// `status.autoscaler`, so an operator restart forgets nothing.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerSpec {
    /// `off`, `recommend` (write `status.autoscaler` only) or `apply`.
    /// Required, so that writing the block never turns scaling on by itself.
    pub mode: AutoscalerMode,
    /// Fewest runtime pods to recommend (clipped to the source partition
    /// count). Absent: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub min_parallelism: Option<i32>,
    /// Most runtime pods to recommend; at least `minParallelism`. Always
    /// clipped to the source partition count (a pod without a partition
    /// has nothing to read). Absent: the source partition count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_parallelism: Option<i32>,
    /// The event-time lag that is acceptable (how far, in event time, the
    /// slowest task may be behind the newest record), at least `1s`.
    /// Required: there is no lag every workload can live with.
    pub target_lag: DurationSpec,
    /// How long the lag must stay above `targetLag`, at every evaluation,
    /// before scaling up; after any change it is counted afresh (the
    /// rescale itself makes the lag jump). Absent: `2m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stabilization_window: Option<DurationSpec>,
    /// How long the lag must stay comfortably within `targetLag` (at most
    /// half of it, at every evaluation) before scaling down, and only when
    /// fewer pods would still cover the highest input rate seen meanwhile
    /// with headroom; never shorter than `stabilizationWindow`. Absent: `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay: Option<DurationSpec>,
    /// In `apply` mode, let the operator grow the job's source StreamTopics
    /// when the job runs on every partition and is still behind
    /// (`status.autoscaler.reason: AtPartitionLimit`): it sets their
    /// `spec.partitions` (at most doubling them at a time, never above
    /// `maxParallelism` nor the job's key groups, so set `maxParallelism`
    /// above the partition count to allow it), records the edit in
    /// `status.autoscaler.partitionGrowth`, an annotation on the topic and
    /// Events, and the job re-shards onto the new count with its state.
    /// Under Argo CD self-heal, ignore `/spec/partitions` of those topics
    /// (or commit the new count), or the sync reverts it and the revert is
    /// refused. Absent: `false` (partitions cannot be removed again, and
    /// growing them moves keys between partitions for every producer and
    /// consumer of the topic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grow_source_partitions: Option<bool>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum JobState {
    #[default]
    Running,
    /// Stopped with a savepoint; resumes from it when set back to `running`.
    Suspended,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    /// Savepoint location to start from (first deployment only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub from_savepoint: Option<String>,
    /// Allow starting with empty state when there is nothing to restore or the
    /// change is state-incompatible. Absent: `false` (refuse, never silently
    /// start from nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_empty_state: Option<bool>,
}

/// Where a job is in its life; `status.phase`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum JobPhase {
    Deploying,
    Running,
    Savepointing,
    Upgrading,
    Suspended,
    RollingBack,
    Failed,
}

/// A savepoint (or the checkpoint a rollout restored from).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavepointRecord {
    /// Savepoint id, unique per job.
    pub id: String,
    /// Storage URL of its manifest.
    pub location: String,
    /// Input offsets it resumes from, as `topic/partition` -> next offset.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub offsets: BTreeMap<String, i64>,
    pub time: Time,
    /// The job generation that wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The checkpoint id its transaction committed (highest over the pods);
    /// what a rollback compares the new version's commits against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_id: Option<i64>,
    /// How long it took, from the request to every pod's completion (ms):
    /// with `stateBytes`, what the next savepoint is predicted from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub duration_ms: Option<i64>,
    /// Bytes of state it copied, all pods summed (absent when a pod did
    /// not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub state_bytes: Option<i64>,
}

/// The operator's write-ahead record of an upgrade in flight: written before
/// any pod is stopped, so an operator restart resumes (or unwinds) it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeIntent {
    /// Id of the savepoint this intent takes (or took); also names the
    /// intent when it takes none (`withSavepoint: false`).
    pub savepoint_id: String,
    /// The `metadata.generation` being rolled out.
    pub target_generation: i64,
    /// The spec being rolled out (schemaless, like `lastStableSpec`).
    #[schemars(schema_with = "preserve_unknown_object")]
    pub spec: StreamJobSpec,
    pub started: Time,
    /// What the intent does. Absent: `Upgrade`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<IntentKind>,
    /// Whether the running pods are stopped with a savepoint first
    /// (`upgradeMode: savepoint`). Absent: `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with_savepoint: Option<bool>,
    /// Runtime pods the rollout starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,
    /// Source partitions the rollout was planned for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_partitions: Option<i32>,
    /// Savepoint location the new pods restore; absent: the last committed
    /// checkpoint (or empty state, per `restoreMode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<String>,
    /// How the new pods get their state. Absent: from `restoreFrom` when set,
    /// else the last committed checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_mode: Option<RestoreMode>,
    /// Set when the old pods are gone and the new ones were requested; the
    /// health timeout counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_started: Option<Time>,
}

/// What an [`UpgradeIntent`] is for.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum IntentKind {
    /// First deployment of the job.
    Deploy,
    /// A spec change the pods run.
    Upgrade,
    /// New parallelism or source partition count.
    Rescale,
    /// Stop (with a savepoint in `savepoint` mode) and run nothing.
    Suspend,
    /// Start again after a suspend.
    Resume,
    /// A savepoint on request; the pods keep running.
    Savepoint,
    /// Back to `lastStableSpec` after a failed upgrade.
    Rollback,
}

/// Where restored pods take their state from.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreMode {
    /// The savepoint at `restoreFrom`.
    Savepoint,
    /// The checkpoint the last committed marker names.
    LastState,
    /// Empty state, reading on from the committed input offsets.
    Empty,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamJobStatus {
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus conditions: `Ready`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Where the job is in its lifecycle: `Deploying`, `Running`, `Savepointing`,
    /// `Upgrading`, `Suspended`, `RollingBack` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,
    /// Runtime pods running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,
    /// Partitions of the source topics, summed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_partitions: Option<i32>,
    /// Which task reads which source partition, kept across source changes
    /// so that every partition keeps its offsets and state (absent: by
    /// position, in spec order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_layout: Vec<crate::layout::TaskRange>,
    /// Prefix of the job's Kafka transactional ids and consumer group,
    /// fixed at the first deployment: `streamops.<namespace>.<job>.<uid>`
    /// (what per-namespace prefixed ACLs grant), or `streamops-<uid>` for a
    /// job first deployed by an operator older than that scheme, which
    /// keeps its ids so that its producers keep fencing their predecessors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_id_prefix: Option<String>,
    /// The job's number of key groups (keyed state lives in groups, which
    /// move whole when the source partition count changes), fixed at the
    /// first deployment. Absent for jobs first deployed by an operator older
    /// than key groups: they keep one group per source partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_groups: Option<i32>,
    /// The newest savepoint taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_savepoint: Option<SavepointRecord>,
    /// Savepoints kept, newest first, pruned by `checkpoint.savepointsToKeep` and `savepointMaxAge`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub savepoint_history: Vec<SavepointRecord>,
    /// Locations of savepoints pruned from `savepointHistory` that a runtime
    /// pod is to delete from the job's checkpoint storage; each stays listed
    /// until the pods confirm it gone (retried every reconcile) and while a
    /// restore or rollback may still need it. Savepoints outside the job's
    /// storage are only pruned, never deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub savepoints_to_delete: Vec<String>,
    /// The last spec that ran healthy; rollback target. Stored schemaless so
    /// that a status written under an older CRD stays readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub last_stable_spec: Option<StreamJobSpec>,
    /// The generation of `lastStableSpec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stable_generation: Option<i64>,
    /// A generation that failed to become healthy and was rolled back; not
    /// retried until the spec changes again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeIntent>,
    /// The savepoint nonce (spec field or annotation) last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_savepoint_request: Option<String>,
    /// Records behind the source's end, summed over partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// The newest source position found no longer in its partition and
    /// reset by `spec.source.onOffsetOutOfRange` (each one is also a Warning
    /// Event `SourceOffsetReset`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_offset_reset: Option<crate::runtime_api::OffsetReset>,
    /// The autoscaler's last decision and the timers it keeps between
    /// evaluations (`spec.autoscaler` in `recommend` or `apply` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerStatus>,
    /// The verdict on the spec change that does not run yet (in flight,
    /// refused, or waiting): what kind of change, whether the state carries
    /// over, whether a savepoint is taken, and why, step by step. Absent
    /// once the job runs its current generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_change: Option<PlannedChange>,
}

/// What the autoscaler recommends and why, plus its memory: it reads
/// nothing else from one evaluation to the next, so an operator restart
/// resumes every timer where it was. Written only when something in it
/// changes (no per-evaluation timestamp), so a steady job causes no status
/// writes.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerStatus {
    /// The parallelism the autoscaler wants, within `minParallelism` and
    /// `maxParallelism` clipped to the source partition count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended_parallelism: Option<i32>,
    /// Why, in one word: e.g. `ScaleUp`, `ScaleDown`, `LagAboveTarget`,
    /// `WithinTarget`, `AtPartitionLimit`, `MetricsUnavailable`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 64))]
    pub reason: String,
    /// The numbers behind the reason, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
    /// When `recommendedParallelism` last changed; the cool-down counts
    /// from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision_time: Option<Time>,
    /// Since when every evaluation saw the lag above `targetLag` (absent:
    /// the last one did not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behind_since: Option<Time>,
    /// Since when every evaluation saw the lag at most half of `targetLag`
    /// (absent: the last one did not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within_since: Option<Time>,
    /// The highest input rate (records/s, rounded up) seen since
    /// `withinSince`: what a scale-down must still cover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub peak_input_rate: Option<i64>,
    /// Records/s one pod processed (rounded down) the last time the job was
    /// behind, when it processes as fast as it can; raised whenever the pods
    /// are seen doing more. What scale-downs are sized with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub pod_capacity: Option<i64>,
    /// At `AtPartitionLimit`: the pods that would cover the input and drain
    /// the backlog, more than the source partitions allow. What
    /// `growSourcePartitions` grows the sources toward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub needed_parallelism: Option<i32>,
    /// The growth of the source StreamTopics the autoscaler asked for
    /// (`growSourcePartitions`), kept until the topics have grown (or it
    /// gives up after a while): the record of an edit the operator made to
    /// another object's spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_growth: Option<PartitionGrowth>,
}

/// `status.plannedChange`: the operator's verdict on a spec change, written
/// before anything stops.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedChange {
    /// The `metadata.generation` it is about.
    pub generation: i64,
    /// `Upgrade`, `Rescale`, `Suspend` or `Resume`.
    pub kind: String,
    /// The running state carries over (false: the change is refused unless
    /// `spec.restore.allowEmptyState`).
    pub state_compatible: bool,
    /// The pods stop with a savepoint first (`upgradeMode: savepoint`).
    pub savepoint: bool,
    /// What changed and what it means for the state, one line each
    /// (incompatibilities first, then each step added, removed or changed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// The autoscaler's growth of a job's source StreamTopics.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionGrowth {
    /// StreamTopic name -> the `spec.partitions` asked for.
    pub topics: BTreeMap<String, i32>,
    /// Source partitions (all topics) before and after.
    pub from: i32,
    pub to: i32,
    /// When it was asked for.
    pub time: Time,
}

/// Defaults, applied in code and documented here and in the README.
pub mod defaults {
    pub const CHECKPOINT_INTERVAL_MS: u64 = 10_000;
    pub const SAVEPOINTS_TO_KEEP: i32 = 5;
    pub const SAVEPOINT_TIMEOUT_MS: u64 = 60_000;
    pub const HEALTH_TIMEOUT_MS: u64 = 120_000;
    pub const MAX_FUTURE_SKEW_MS: u64 = 3_600_000;
    pub const AUTOSCALER_MIN_PARALLELISM: i32 = 1;
    pub const AUTOSCALER_STABILIZATION_WINDOW_MS: u64 = 120_000;
    pub const AUTOSCALER_SCALE_DOWN_DELAY_MS: u64 = 600_000;
    /// The smallest `targetLag`: lag is observed in whole seconds.
    pub const AUTOSCALER_MIN_TARGET_LAG_MS: u64 = 1_000;
}

impl StreamJobSpec {
    /// The spec with every default filled in: what the operator compares to
    /// classify a change, and what the runtime executes.
    pub fn defaulted(&self) -> StreamJobSpec {
        let mut s = self.clone();
        s.source.format.get_or_insert_default();
        s.source.start_from.get_or_insert_default();
        s.source.on_offset_out_of_range.get_or_insert_default();
        // What only windows read is defaulted only for a windowed pipeline
        // (a stateless job refuses it).
        if s.pipeline.window.is_some() {
            if let Some(et) = s.source.event_time.as_mut() {
                et.format.get_or_insert_default();
                et.max_future_skew
                    .get_or_insert_with(|| DurationSpec::from_millis(defaults::MAX_FUTURE_SKEW_MS));
            }
            let wm = s.source.watermark.get_or_insert(WatermarkSpec {
                out_of_orderness: None,
                idle_timeout: None,
            });
            wm.out_of_orderness
                .get_or_insert_with(|| DurationSpec::from_millis(0));
            s.pipeline
                .allowed_lateness
                .get_or_insert_with(|| DurationSpec::from_millis(0));
            s.pipeline.emit.get_or_insert_default();
        }
        s.sink.format.get_or_insert_default();
        for out in [s.late_events.as_mut(), s.dead_letter.as_mut()]
            .into_iter()
            .flatten()
        {
            out.format.get_or_insert_default();
        }
        let cp = s.checkpoint.get_or_insert(CheckpointSpec {
            interval: None,
            guarantee: None,
            storage: None,
            savepoints_to_keep: None,
            savepoint_max_age: None,
        });
        cp.interval
            .get_or_insert_with(|| DurationSpec::from_millis(defaults::CHECKPOINT_INTERVAL_MS));
        cp.guarantee.get_or_insert_default();
        cp.savepoints_to_keep.get_or_insert(defaults::SAVEPOINTS_TO_KEEP);
        s.upgrade_mode.get_or_insert_default();
        let up = s.upgrade.get_or_insert(UpgradeSpec {
            savepoint_timeout: None,
            health_timeout: None,
            rollback: None,
        });
        up.savepoint_timeout
            .get_or_insert_with(|| DurationSpec::from_millis(defaults::SAVEPOINT_TIMEOUT_MS));
        up.health_timeout
            .get_or_insert_with(|| DurationSpec::from_millis(defaults::HEALTH_TIMEOUT_MS));
        up.rollback.get_or_insert(true);
        s.state.get_or_insert_default();
        let restore = s.restore.get_or_insert(RestoreSpec {
            from_savepoint: None,
            allow_empty_state: None,
        });
        restore.allow_empty_state.get_or_insert(false);
        // Absent stays absent (off): filling in a block here would change
        // every existing job's defaulted spec.
        if let Some(a) = s.autoscaler.as_mut() {
            a.min_parallelism
                .get_or_insert(defaults::AUTOSCALER_MIN_PARALLELISM);
            a.stabilization_window.get_or_insert_with(|| {
                DurationSpec::from_millis(defaults::AUTOSCALER_STABILIZATION_WINDOW_MS)
            });
            a.scale_down_delay
                .get_or_insert_with(|| DurationSpec::from_millis(defaults::AUTOSCALER_SCALE_DOWN_DELAY_MS));
            a.grow_source_partitions.get_or_insert(false);
        }
        s
    }

    pub fn allows_empty_state(&self) -> bool {
        self.restore
            .as_ref()
            .and_then(|r| r.allow_empty_state)
            .unwrap_or(false)
    }

    /// StreamTopics the job's `route` steps write to, each once, in spec
    /// order.
    pub fn route_topics(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for rule in self.pipeline.steps.iter().flat_map(|s| s.route.iter().flatten()) {
            if !out.contains(&rule.to.as_str()) {
                out.push(&rule.to);
            }
        }
        out
    }

    /// StreamTopic names this job writes to, with the spec field naming each.
    fn output_topics(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            Some(("spec.sink.topic", self.sink.topic.as_str())),
            self.late_events
                .as_ref()
                .map(|s| ("spec.lateEvents.topic", s.topic.as_str())),
            self.dead_letter
                .as_ref()
                .map(|s| ("spec.deadLetter.topic", s.topic.as_str())),
        ]
        .into_iter()
        .flatten()
    }
}

impl StreamJobSpec {
    /// Whether the pipeline is stateless: no `keyBy`, `window` or
    /// `aggregations` (an ETL job).
    pub fn is_stateless(&self) -> bool {
        self.pipeline.window.is_none()
    }

    /// `keyBy`, `window` and `aggregations` all or none; what only a
    /// windowed pipeline reads is refused by a stateless one, and the other
    /// way round.
    fn validate_shape(&self, errors: &mut Vec<FieldError>) {
        let p = &self.pipeline;
        let windowed = p.window.is_some();
        for (field, present) in [
            ("spec.pipeline.keyBy", !p.key_by.is_empty()),
            ("spec.pipeline.aggregations", !p.aggregations.is_empty()),
        ] {
            if present != windowed {
                errors.push(FieldError::new(
                    field,
                    if windowed {
                        "required with a window: keyBy, window and aggregations come together"
                    } else {
                        "keyBy, window and aggregations come together; add a window, or remove this for a \
                         stateless job"
                    },
                ));
            }
        }
        if windowed {
            if self.source.event_time.is_none() {
                errors.push(FieldError::new(
                    "spec.source.eventTime",
                    "required with a window: where each record's event time comes from",
                ));
            }
            if self.sink.key.is_some() {
                errors.push(FieldError::new(
                    "spec.sink.key",
                    "a window result's Kafka key is its keyBy key; remove sink.key (it is for stateless jobs)",
                ));
            }
            return;
        }
        for (field, present) in [
            ("spec.source.eventTime", self.source.event_time.is_some()),
            ("spec.source.watermark", self.source.watermark.is_some()),
            ("spec.pipeline.resultSteps", !p.result_steps.is_empty()),
            ("spec.pipeline.allowedLateness", p.allowed_lateness.is_some()),
            ("spec.pipeline.emit", p.emit.is_some()),
            ("spec.lateEvents", self.late_events.is_some()),
        ] {
            if present {
                errors.push(FieldError::new(
                    field,
                    "only used by a pipeline with a window; a stateless job (no keyBy, window or aggregations) \
                     has none: remove it",
                ));
            }
        }
    }
}

impl WindowSpec {
    fn validate_into(&self, errors: &mut Vec<FieldError>) {
        const F: &str = "spec.pipeline.window";
        let positive = |errors: &mut Vec<FieldError>, name: &str, d: &Option<DurationSpec>| match d {
            None => errors.push(FieldError::new(
                format!("{F}.{name}"),
                format!("required for a {} window", self.kind.as_str()),
            )),
            Some(d) if d.as_millis() == 0 => {
                errors.push(FieldError::new(format!("{F}.{name}"), "must be at least 1ms"))
            }
            Some(_) => {}
        };
        let forbid = |errors: &mut Vec<FieldError>, name: &str, present: bool| {
            if present {
                errors.push(FieldError::new(
                    format!("{F}.{name}"),
                    format!("not used by a {} window; remove it", self.kind.as_str()),
                ));
            }
        };
        match self.kind {
            WindowKind::Tumbling => {
                positive(errors, "size", &self.size);
                forbid(errors, "slide", self.slide.is_some());
                forbid(errors, "gap", self.gap.is_some());
            }
            WindowKind::Sliding => {
                positive(errors, "size", &self.size);
                positive(errors, "slide", &self.slide);
                forbid(errors, "gap", self.gap.is_some());
                if let (Some(size), Some(slide)) = (&self.size, &self.slide)
                    && slide.as_millis() > 0
                {
                    let (size_ms, slide_ms) = (size.as_millis(), slide.as_millis());
                    if slide_ms > size_ms {
                        errors.push(FieldError::new(
                            format!("{F}.slide"),
                            format!(
                                "slide {slide} is longer than size {size}; records would fall between windows"
                            ),
                        ));
                    } else if size_ms.div_ceil(slide_ms) > MAX_WINDOWS_PER_RECORD {
                        errors.push(FieldError::new(
                            format!("{F}.slide"),
                            format!(
                                "size {size} / slide {slide} puts every record in {} windows (at most \
                                 {MAX_WINDOWS_PER_RECORD}); use a longer slide",
                                size_ms.div_ceil(slide_ms)
                            ),
                        ));
                    }
                }
            }
            WindowKind::Session => {
                positive(errors, "gap", &self.gap);
                forbid(errors, "size", self.size.is_some());
                forbid(errors, "slide", self.slide.is_some());
            }
        }
    }
}

impl AutoscalerSpec {
    /// `minParallelism`, defaulted.
    pub fn min_parallelism(&self) -> i32 {
        self.min_parallelism
            .unwrap_or(defaults::AUTOSCALER_MIN_PARALLELISM)
    }

    /// `stabilizationWindow` in milliseconds, defaulted.
    pub fn stabilization_window_ms(&self) -> u64 {
        self.stabilization_window.as_ref().map_or(
            defaults::AUTOSCALER_STABILIZATION_WINDOW_MS,
            DurationSpec::as_millis,
        )
    }

    /// `scaleDownDelay` in milliseconds, defaulted.
    pub fn scale_down_delay_ms(&self) -> u64 {
        self.scale_down_delay
            .as_ref()
            .map_or(defaults::AUTOSCALER_SCALE_DOWN_DELAY_MS, DurationSpec::as_millis)
    }

    /// The same checks as the CEL rules on `spec.autoscaler`.
    fn validate_into(&self, errors: &mut Vec<FieldError>) {
        const F: &str = "spec.autoscaler";
        if let Some(max) = self.max_parallelism
            && self.min_parallelism() > max
        {
            errors.push(FieldError::new(
                format!("{F}.minParallelism"),
                format!(
                    "{} is above maxParallelism {max}; make minParallelism at most maxParallelism",
                    self.min_parallelism()
                ),
            ));
        }
        if self.target_lag.as_millis() < defaults::AUTOSCALER_MIN_TARGET_LAG_MS {
            errors.push(FieldError::new(
                format!("{F}.targetLag"),
                "must be at least 1s (lag is observed in whole seconds)",
            ));
        }
    }
}

impl WindowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tumbling => "tumbling",
            Self::Sliding => "sliding",
            Self::Session => "session",
        }
    }
}

/// The checks of a list of steps at `list` (`spec.pipeline.steps`,
/// `spec.pipeline.resultSteps`): unique names, a filter or a map, CEL that
/// compiles and reads only `record`.
fn validate_steps(list: &str, steps: &[StepSpec], errors: &mut Vec<FieldError>) {
    let mut names = BTreeSet::new();
    for (i, step) in steps.iter().enumerate() {
        let f = format!("{list}[{i}]");
        if !names.insert(step.name.as_str()) {
            errors.push(FieldError::new(
                format!("{f}.name"),
                format!("duplicate step name {:?}", step.name),
            ));
        }
        let kinds = [step.filter.is_some(), step.map.is_some(), step.route.is_some()];
        match kinds.iter().filter(|k| **k).count() {
            0 => errors.push(FieldError::new(
                f.clone(),
                format!("step {:?} needs a filter, a map or a route", step.name),
            )),
            1 => {}
            _ => errors.push(FieldError::new(
                format!("{f}.{}", if step.route.is_some() { "route" } else { "map" }),
                format!(
                    "step {:?} is one of filter, map and route, not several; make it several steps",
                    step.name
                ),
            )),
        }
        if let Some(filter) = &step.filter {
            crate::expr::check_cel(&format!("{f}.filter"), filter, errors);
        }
        if let Some(map) = &step.map {
            if map.is_empty() {
                errors.push(FieldError::new(
                    format!("{f}.map"),
                    "a map step needs at least one field",
                ));
            }
            for (field, expr) in map {
                if field.is_empty() {
                    errors.push(FieldError::new(format!("{f}.map"), "an output field has no name"));
                }
                crate::expr::check_cel(&format!("{f}.map.{field}"), expr, errors);
            }
        }
        if let Some(route) = &step.route {
            if list != "spec.pipeline.steps" {
                errors.push(FieldError::new(
                    format!("{f}.route"),
                    "a result step cannot route; route records in spec.pipeline.steps",
                ));
            }
            if route.is_empty() {
                errors.push(FieldError::new(
                    format!("{f}.route"),
                    "a route step needs at least one rule",
                ));
            }
            for (j, rule) in route.iter().enumerate() {
                crate::expr::check_cel(&format!("{f}.route[{j}].when"), &rule.when, errors);
            }
        }
    }
}

impl Validation for StreamJobSpec {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        self.validate_shape(&mut errors);
        if let Some(window) = &self.pipeline.window {
            window.validate_into(&mut errors);
        }
        if let Some(key) = &self.sink.key {
            crate::expr::check_cel("spec.sink.key", key, &mut errors);
        }

        let mut names = BTreeSet::new();
        for (i, agg) in self.pipeline.aggregations.iter().enumerate() {
            let f = format!("spec.pipeline.aggregations[{i}]");
            if !names.insert(agg.name.as_str()) {
                errors.push(FieldError::new(
                    format!("{f}.name"),
                    format!("duplicate aggregation name {:?}", agg.name),
                ));
            }
            if RESERVED_OUTPUT_FIELDS.contains(&agg.name.as_str()) {
                errors.push(FieldError::new(
                    format!("{f}.name"),
                    format!(
                        "{:?} is a field the runtime writes itself; pick another name",
                        agg.name
                    ),
                ));
            }
            match (agg.function, &agg.field) {
                (AggregateFunction::Count, _) => {}
                (func, None) => errors.push(FieldError::new(
                    format!("{f}.field"),
                    format!("required for {func:?}: the expression whose values are aggregated"),
                )),
                _ => {}
            }
            match (agg.function, agg.k) {
                (AggregateFunction::TopK, None) => {
                    errors.push(FieldError::new(format!("{f}.k"), "required for topK"))
                }
                (AggregateFunction::TopK, Some(_)) | (_, None) => {}
                (func, Some(_)) => errors.push(FieldError::new(
                    format!("{f}.k"),
                    format!("only used by topK, not {func:?}; remove it"),
                )),
            }
        }

        for (i, key) in self.pipeline.key_by.iter().enumerate() {
            if key.trim().is_empty() {
                errors.push(FieldError::new(
                    format!("spec.pipeline.keyBy[{i}]"),
                    "empty expression",
                ));
            }
        }
        if let Some(filter) = &self.pipeline.filter {
            crate::expr::check("spec.pipeline.filter", filter, &mut errors);
        }
        validate_steps("spec.pipeline.steps", &self.pipeline.steps, &mut errors);
        validate_steps(
            "spec.pipeline.resultSteps",
            &self.pipeline.result_steps,
            &mut errors,
        );

        let sources: BTreeSet<&str> = self.source.topics.iter().map(String::as_str).collect();
        if sources.len() != self.source.topics.len() {
            errors.push(FieldError::new("spec.source.topics", "a topic is listed twice"));
        }
        for (i, step) in self.pipeline.steps.iter().enumerate() {
            for (j, rule) in step.route.iter().flatten().enumerate() {
                if sources.contains(rule.to.as_str()) {
                    errors.push(FieldError::new(
                        format!("spec.pipeline.steps[{i}].route[{j}].to"),
                        format!(
                            "{:?} is also a source topic; the job would read its own output",
                            rule.to
                        ),
                    ));
                }
            }
        }
        let mut outputs = BTreeMap::new();
        for (field, topic) in self.output_topics() {
            if sources.contains(topic) {
                errors.push(FieldError::new(
                    field,
                    format!("{topic:?} is also a source topic; the job would read its own output"),
                ));
            }
            if let Some(other) = outputs.insert(topic, field) {
                errors.push(FieldError::new(
                    field,
                    format!("{topic:?} is already used by {other}; give each output its own topic"),
                ));
            }
        }

        if let Some(template) = &self.pod_template {
            crate::pod_template::validate(template, &mut errors);
        }

        if let Some(a) = &self.autoscaler {
            a.validate_into(&mut errors);
        }

        if let Some(cp) = &self.checkpoint {
            if let Some(interval) = &cp.interval
                && interval.as_millis() < 100
            {
                errors.push(FieldError::new(
                    "spec.checkpoint.interval",
                    "must be at least 100ms (each checkpoint is a Kafka transaction)",
                ));
            }
            if let Some(url) = &cp.storage {
                let scheme = url.split_once("://").map(|(s, _)| s);
                if !scheme.is_some_and(|s| STORAGE_SCHEMES.contains(&s)) {
                    errors.push(FieldError::new(
                        "spec.checkpoint.storage",
                        format!(
                            "{url:?} is not a storage URL; use one of {}",
                            STORAGE_SCHEMES.map(|s| format!("{s}://")).join(", ")
                        ),
                    ));
                }
            }
        }
        errors
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid spec for the tests of this crate.
    pub(crate) fn example() -> StreamJobSpec {
        serde_json::from_value(serde_json::json!({
            "source": {"topics": ["clicks"], "eventTime": {"field": "record.ts"}},
            "pipeline": {
                "keyBy": ["record.user_id"],
                "window": {"type": "tumbling", "size": "10s"},
                "aggregations": [
                    {"name": "clicks", "function": "count"},
                    {"name": "spent", "function": "sum", "field": "record.amount"}
                ]
            },
            "sink": {"topic": "clicks-per-user"}
        }))
        .unwrap()
    }

    fn fields(spec: &StreamJobSpec) -> Vec<String> {
        spec.validate().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_plain_job_is_valid() {
        assert_eq!(example().validate(), vec![]);
    }

    #[test]
    fn defaulting_is_idempotent_and_fills_every_option() {
        let d = example().defaulted();
        assert_eq!(d.defaulted(), d);
        assert_eq!(d.upgrade_mode, Some(UpgradeMode::Savepoint));
        assert_eq!(d.pipeline.emit, Some(EmitMode::OnWindowClose));
        let cp = d.checkpoint.as_ref().unwrap();
        assert_eq!(cp.interval.as_ref().unwrap().as_millis(), 10_000);
        assert!(!d.allows_empty_state());
        // Defaulting never changes the validity of a spec.
        assert_eq!(d.validate(), vec![]);
    }

    #[test]
    fn sliding_slide_longer_than_size_is_refused() {
        let mut s = example();
        s.pipeline.window = Some(WindowSpec {
            kind: WindowKind::Sliding,
            size: Some("10s".parse().unwrap()),
            slide: Some("20s".parse().unwrap()),
            gap: None,
        });
        assert_eq!(fields(&s), vec!["spec.pipeline.window.slide"]);
    }

    #[test]
    fn sliding_windows_per_record_are_bounded() {
        let sliding = |size: &str, slide: &str| {
            let mut s = example();
            s.pipeline.window = Some(WindowSpec {
                kind: WindowKind::Sliding,
                size: Some(size.parse().unwrap()),
                slide: Some(slide.parse().unwrap()),
                gap: None,
            });
            fields(&s)
        };
        assert_eq!(
            sliding("100s", "1s"),
            Vec::<String>::new(),
            "100 windows per record"
        );
        assert_eq!(sliding("1h", "1m"), Vec::<String>::new(), "60");
        assert_eq!(sliding("101s", "1s"), vec!["spec.pipeline.window.slide"], "101");
        assert_eq!(sliding("24h", "1s"), vec!["spec.pipeline.window.slide"], "86,400");
    }

    #[test]
    fn window_fields_must_match_the_window_type() {
        let mut s = example();
        s.pipeline.window = Some(WindowSpec {
            kind: WindowKind::Session,
            size: Some("10s".parse().unwrap()),
            slide: None,
            gap: Some("0s".parse().unwrap()),
        });
        assert_eq!(
            fields(&s),
            vec!["spec.pipeline.window.gap", "spec.pipeline.window.size"]
        );
    }

    #[test]
    fn aggregation_mistakes_name_their_field() {
        let mut s = example();
        s.pipeline.aggregations.push(AggregationSpec {
            name: "clicks".into(),
            function: AggregateFunction::TopK,
            field: None,
            k: None,
        });
        s.pipeline.aggregations.push(AggregationSpec {
            name: "final".into(),
            function: AggregateFunction::Max,
            field: Some("record.amount".into()),
            k: Some(3),
        });
        assert_eq!(
            fields(&s),
            vec![
                "spec.pipeline.aggregations[2].name",
                "spec.pipeline.aggregations[2].field",
                "spec.pipeline.aggregations[2].k",
                "spec.pipeline.aggregations[3].name",
                "spec.pipeline.aggregations[3].k",
            ]
        );
    }

    #[test]
    fn step_mistakes_name_the_step_field() {
        let mut s = example();
        s.pipeline.filter = Some("record.amount >".into());
        s.pipeline.steps = serde_json::from_value(serde_json::json!([
            {"name": "ok", "filter": "record.amount > 0"},
            {"name": "ok", "map": {"a": "record.a", "b": "user_id"}},
            {"name": "both", "filter": "true", "map": {"a": "1"}},
            {"name": "neither"},
            {"name": "broken", "map": {"x": "record.a +"}},
        ]))
        .unwrap();
        assert_eq!(
            fields(&s),
            vec![
                "spec.pipeline.filter",
                "spec.pipeline.steps[1].name",
                "spec.pipeline.steps[1].map.b",
                "spec.pipeline.steps[2].map",
                "spec.pipeline.steps[3]",
                "spec.pipeline.steps[4].map.x",
            ]
        );
        let messages = s.validation_message().unwrap();
        assert!(
            messages.contains("spec.pipeline.steps[1].map.b: unknown variable `user_id`"),
            "{messages}"
        );
        assert!(
            messages.contains("spec.pipeline.steps[4].map.x: does not compile as CEL"),
            "{messages}"
        );
    }

    #[test]
    fn sink_must_differ_from_source_and_other_outputs() {
        let mut s = example();
        s.sink.topic = "clicks".into();
        s.dead_letter = Some(TopicOutputSpec {
            topic: "clicks".into(),
            format: None,
        });
        assert_eq!(
            fields(&s),
            vec![
                "spec.sink.topic",
                "spec.deadLetter.topic",
                "spec.deadLetter.topic"
            ]
        );
    }

    #[test]
    fn autoscaler_absent_stays_absent_and_present_is_defaulted() {
        assert_eq!(example().defaulted().autoscaler, None);
        let mut s = example();
        s.autoscaler = Some(
            serde_json::from_value(serde_json::json!({"mode": "recommend", "targetLag": "30s"})).unwrap(),
        );
        let a = s.defaulted().autoscaler.unwrap();
        assert_eq!(a.min_parallelism, Some(1));
        assert_eq!(a.stabilization_window.as_ref().unwrap().as_millis(), 120_000);
        assert_eq!(a.scale_down_delay.as_ref().unwrap().as_millis(), 600_000);
        assert_eq!(a.grow_source_partitions, Some(false));
        // The accessors give the same defaults on the raw spec.
        let raw = s.autoscaler.as_ref().unwrap();
        assert_eq!(
            (
                raw.min_parallelism(),
                raw.stabilization_window_ms(),
                raw.scale_down_delay_ms()
            ),
            (1, 120_000, 600_000)
        );
        assert_eq!(s.validate(), vec![]);
    }

    #[test]
    fn autoscaler_bounds_and_target_are_checked() {
        let mut s = example();
        s.autoscaler = Some(
            serde_json::from_value(serde_json::json!({
                "mode": "apply", "minParallelism": 4, "maxParallelism": 2, "targetLag": "999ms"
            }))
            .unwrap(),
        );
        assert_eq!(
            fields(&s),
            vec!["spec.autoscaler.minParallelism", "spec.autoscaler.targetLag"]
        );
        let a = s.autoscaler.as_mut().unwrap();
        a.max_parallelism = Some(4);
        a.target_lag = "1s".parse().unwrap();
        assert_eq!(fields(&s), Vec::<String>::new(), "the boundaries are accepted");
    }

    #[test]
    fn storage_url_scheme_is_checked() {
        let mut s = example();
        s.checkpoint = Some(CheckpointSpec {
            interval: Some("50ms".parse().unwrap()),
            guarantee: None,
            storage: Some("/var/lib/checkpoints".into()),
            savepoints_to_keep: None,
            savepoint_max_age: None,
        });
        assert_eq!(
            fields(&s),
            vec!["spec.checkpoint.interval", "spec.checkpoint.storage"]
        );
    }
}
