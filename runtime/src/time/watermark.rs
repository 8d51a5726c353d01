//! Watermarks: per input partition with bounded out-of-orderness, combined
//! into the job's watermark as the minimum over partitions.
//!
//! Convention (equivalent to Flink's): a partition's watermark is
//! `max event time seen - outOfOrderness`. A watermark `W` asserts that no
//! more events with `t < W` are expected; a window `[start, end)` is
//! therefore complete, and fires, once `W >= end` (Flink writes the same
//! condition as `W' >= end - 1` with `W' = max - outOfOrderness - 1`).

use std::collections::BTreeMap;

use super::EventTime;
use crate::PartitionId;

/// The watermark before any event: no window can fire.
pub const NO_WATERMARK: EventTime = EventTime::MIN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PartitionClock {
    /// Largest event time seen on the partition, if any.
    max_event_time: Option<EventTime>,
    /// Processing time (wall clock, ms) of the last record; drives idleness.
    last_active_ms: i64,
}

/// Watermarks of a set of input partitions and the job watermark derived from
/// them.
///
/// Invariants: every partition's watermark is monotonic; the combined
/// watermark returned by [`WatermarkTracker::current`] never decreases, even
/// when an idle partition wakes up with older data (those records may then be
/// late, which is the documented price of idle-partition handling).
#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    out_of_orderness_ms: i64,
    /// `None`: idle handling off, a silent partition stalls the watermark.
    idle_timeout_ms: Option<i64>,
    partitions: BTreeMap<PartitionId, PartitionClock>,
    combined: EventTime,
}

/// The persisted part of a [`WatermarkTracker`]: each partition's largest
/// event time. Kept in snapshots so restored jobs neither re-fire nor stall.
pub type PartitionWatermarks = BTreeMap<PartitionId, Option<EventTime>>;

impl WatermarkTracker {
    /// A tracker over `partitions`, all silent so far; `now_ms` starts their
    /// idle timers.
    pub fn new(
        partitions: impl IntoIterator<Item = PartitionId>,
        out_of_orderness_ms: i64,
        idle_timeout_ms: Option<i64>,
        now_ms: i64,
    ) -> Self {
        let partitions = partitions
            .into_iter()
            .map(|p| {
                (
                    p,
                    PartitionClock {
                        max_event_time: None,
                        last_active_ms: now_ms,
                    },
                )
            })
            .collect();
        WatermarkTracker {
            out_of_orderness_ms,
            idle_timeout_ms,
            partitions,
            combined: NO_WATERMARK,
        }
    }

    /// Records an event of `partition` (added if unknown) at processing time `now_ms`.
    pub fn observe(&mut self, partition: PartitionId, event_time: EventTime, now_ms: i64) {
        let clock = self.partitions.entry(partition).or_insert(PartitionClock {
            max_event_time: None,
            last_active_ms: now_ms,
        });
        clock.max_event_time = Some(clock.max_event_time.map_or(event_time, |m| m.max(event_time)));
        clock.last_active_ms = now_ms;
    }

    /// The watermark of one partition (`NO_WATERMARK` before its first event).
    pub fn partition_watermark(&self, partition: PartitionId) -> EventTime {
        self.partitions
            .get(&partition)
            .and_then(|c| c.max_event_time)
            .map_or(NO_WATERMARK, |m| m.saturating_sub(self.out_of_orderness_ms))
    }

    /// Recomputes and returns the job watermark at processing time `now_ms`:
    /// the minimum over partitions that are not idle. A partition is idle when
    /// idle handling is on and it has had no record for `idleTimeout`. When
    /// every partition is idle the watermark holds its last value.
    pub fn current(&mut self, now_ms: i64) -> EventTime {
        let mut min: Option<EventTime> = None;
        for (p, clock) in &self.partitions {
            let idle = self
                .idle_timeout_ms
                .is_some_and(|timeout| now_ms.saturating_sub(clock.last_active_ms) >= timeout);
            if idle {
                continue;
            }
            let wm = self.partition_watermark(*p);
            min = Some(min.map_or(wm, |m| m.min(wm)));
        }
        if let Some(m) = min {
            self.combined = self.combined.max(m);
        }
        self.combined
    }

    /// The persisted form (see [`PartitionWatermarks`]).
    pub fn snapshot(&self) -> PartitionWatermarks {
        self.partitions
            .iter()
            .map(|(p, c)| (*p, c.max_event_time))
            .collect()
    }

    /// Restores partitions' largest event times; partitions in `saved` that
    /// this tracker does not own are ignored. Idle timers restart at `now_ms`.
    pub fn restore(&mut self, saved: &PartitionWatermarks, now_ms: i64) {
        for (p, clock) in &mut self.partitions {
            if let Some(max) = saved.get(p) {
                clock.max_event_time = *max;
            }
            clock.last_active_ms = now_ms;
        }
        self.combined = NO_WATERMARK;
        let partitions: Vec<_> = self.partitions.keys().copied().collect();
        let min = partitions.iter().map(|p| self.partition_watermark(*p)).min();
        if let Some(m) = min {
            self.combined = m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_partition_stalls_when_handling_is_off() {
        let mut t = WatermarkTracker::new([0, 1], 5, None, 0);
        t.observe(0, 100, 0);
        assert_eq!(t.current(1_000_000), NO_WATERMARK);
        t.observe(1, 50, 1_000_000);
        assert_eq!(t.current(1_000_000), 45);
    }

    #[test]
    fn idle_partition_is_skipped_after_timeout_when_handling_is_on() {
        let mut t = WatermarkTracker::new([0, 1], 5, Some(1_000), 0);
        t.observe(0, 100, 10);
        // Partition 1 silent for 999 ms: still stalls.
        assert_eq!(t.current(999), NO_WATERMARK);
        // Silent for 1000 ms: idle, partition 0 alone drives the watermark.
        assert_eq!(t.current(1_000), 95);
        t.observe(0, 200, 1_005);
        assert_eq!(t.current(1_005), 195);
        // Partition 1 wakes up with old data: the watermark does not go back.
        t.observe(1, 10, 1_006);
        assert_eq!(t.current(1_006), 195);
    }

    #[test]
    fn snapshot_roundtrip() {
        let mut t = WatermarkTracker::new([0, 1], 0, None, 0);
        t.observe(0, 7, 0);
        t.observe(1, 9, 0);
        let mut r = WatermarkTracker::new([0, 1], 0, None, 0);
        r.restore(&t.snapshot(), 0);
        assert_eq!(r.current(0), t.current(0));
    }
}
