//! Watermarks: per source partition with bounded out-of-orderness
//! ([`crate::dataflow::task::Task::source_watermark`]), combined by each keyed
//! partition as the minimum over the source partitions the job reads.
//!
//! Convention (equivalent to Flink's): a partition's watermark is
//! `max event time seen - outOfOrderness`. A watermark `W` asserts that no
//! more events with `t < W` are expected; a window `[start, end)` is
//! therefore complete, and fires, once `W >= end` (Flink writes the same
//! condition as `W' >= end - 1` with `W' = max - outOfOrderness - 1`).

use super::EventTime;

/// The watermark before any event: no window can fire.
pub const NO_WATERMARK: EventTime = EventTime::MIN;
