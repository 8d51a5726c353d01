//! What travels through the job's control topic (partition = task): one
//! JSON [`Marker`] per committed checkpoint, written in the same transaction
//! as the outputs it covers; and the header every output carries. The
//! repartition topic's records are [`crate::dataflow::repartition`]'s.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Header on every record the runtime writes: `<task>:<checkpoint>:<instance>`.
/// A record is committed output exactly when a marker with the same triple
/// is committed (the verifier of the fault tests relies on it).
pub const CHECKPOINT_HEADER: &str = "streamops-checkpoint";

/// Whether a checkpoint was periodic or a requested savepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MarkerKind {
    Checkpoint,
    Savepoint,
}

impl MarkerKind {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            MarkerKind::Checkpoint => "checkpoint",
            MarkerKind::Savepoint => "savepoint",
        }
    }
}

/// The record that makes a checkpoint the one to restore: committed in the
/// same transaction as the outputs and input offsets it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    /// Uid of the StreamJob that wrote it: a job re-created under the same
    /// name (same internal topic names) must not resume from its
    /// predecessor's markers.
    #[serde(default)]
    pub job_uid: String,
    pub task: u32,
    pub checkpoint_id: u64,
    /// Random per process start: tells apart two attempts at the same
    /// checkpoint id (one of them never committed).
    pub instance: String,
    pub kind: MarkerKind,
    #[serde(default)]
    pub savepoint_id: Option<String>,
    /// Generation of the StreamJob that wrote it.
    pub generation: i64,
    /// Object path of the manifest, relative to the storage root.
    pub manifest: String,
    /// The task's source partition when the marker was written (absent in
    /// markers of older runtimes: the positional one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::dataflow::sources::SourceRef>,
    /// Next offset to read from the task's source partition.
    pub source_offset: i64,
    /// Next offset to read from the task's keyed partition.
    pub keyed_offset: i64,
    pub time_ms: i64,
    /// Records of this transaction (before the marker) the brokers
    /// acknowledged, per topic and partition: an audit trail. A committed
    /// transaction's partition holding fewer records with this marker's
    /// header than counted here lost acknowledged writes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub delivered: BTreeMap<String, BTreeMap<i32, u64>>,
}

impl Marker {
    pub fn header_value(&self) -> String {
        header_value(self.task, self.checkpoint_id, &self.instance)
    }
}

pub fn header_value(task: u32, checkpoint_id: u64, instance: &str) -> String {
    format!("{task}:{checkpoint_id}:{instance}")
}
