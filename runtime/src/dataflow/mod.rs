//! The dataflow: two stages on either side of a repartition topic, driven
//! by one [`task::Task`] per source partition. The runner
//! ([`crate::pipeline::runner`]) connects tasks through Kafka; the
//! [`harness`] connects the same tasks through in-memory logs (tests, the
//! benchmark).
//!
//! 1. [`keying::KeyingStage`]: decode, filter, event time, group key and
//!    aggregation inputs of each source record -> [`KeyedRecord`], written
//!    to the keyed partition owning the group key's [`key_groups`] group as
//!    a [`repartition`] record.
//! 2. [`window_operator::WindowOperator`]: one per key group, windowing and
//!    aggregation with the group's own state namespace; a keyed partition
//!    drives the operators of its groups with one watermark (the minimum
//!    over the upstream source partitions' watermark records).

pub mod groups;
pub mod harness;
pub mod key_groups;
pub mod keying;
pub mod native;
pub mod partitioner;
pub mod plan;
pub mod repartition;
pub mod sources;
pub mod steps;
pub mod task;
pub mod window_operator;

use crate::aggregate::AggInput;
use crate::time::EventTime;
/// A window's results are the window's ([`crate::window`]); re-exported
/// here, where stage 2 makes them.
pub use crate::window::{Firing, WindowResult};

/// A record after stage 1: everything stage 2 needs, nothing more.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyedRecord {
    /// Canonical JSON text of the group key array, e.g. `["u1",3]`; equal
    /// keys have equal bytes.
    pub group_key: Vec<u8>,
    pub event_time: EventTime,
    /// One input per aggregation, in plan order.
    pub inputs: Vec<AggInput>,
    /// Canonical JSON text of `topK` inputs ([`AggInput::Text`] ranges).
    pub values: Vec<u8>,
}

/// What stage 2 did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Added to at least one window.
    Accepted,
    /// Every window of the record had passed `end + allowedLateness`: the
    /// record goes to the late-events output.
    Late,
    /// A sliding window with `slide > size` has no window at this time.
    Unassigned,
}
