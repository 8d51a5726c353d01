//! What a pod tells the autoscaler about its load (`/v1/status`'s
//! `eventTimeLagMs`, `inputRate`, `processingRate`): a pure tracker fed, at
//! every lag update, with each source partition's end, read position and
//! newest event time read.
//!
//! - **Event-time lag** of a partition with records not read yet: the wall
//!   clock minus the newest event time read from it (when producers stamp
//!   records as they send them, the age of the oldest unread record). A
//!   partition read to its end is not behind, however old its last record
//!   (an idle partition is not a backlog). The pod's lag is its slowest
//!   partition's. Unknown while a behind partition has had no record read.
//! - **Rates** (records/s): how fast the partitions' ends grew (input) and
//!   how fast the pod's read positions moved (processing), over the samples
//!   of the last [`RATE_SPAN_MS`] (at least [`MIN_RATE_SPAN_MS`] of them, so
//!   one statistics update does not make a rate). Offsets count Kafka's
//!   transaction markers too: about one per producer transaction.
//!
//! Only the source partitions count: both stages run in one loop, so a slow
//! keyed stage slows the source reads as well, and the keyed partitions'
//! records only become readable at each commit (a lag of up to one
//! checkpoint interval that more pods would not remove).

use std::collections::VecDeque;

/// Rates are averaged over this much of the recent past.
pub const RATE_SPAN_MS: i64 = 30_000;
/// No rate from samples closer than this.
pub const MIN_RATE_SPAN_MS: i64 = 9_000;

/// One source partition at one sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionLoad {
    /// The partition's end (high watermark); `None`: not known yet.
    pub end: Option<i64>,
    /// The next offset the pod reads.
    pub position: i64,
    /// The newest event time read from it (ms).
    pub newest_event_ms: Option<i64>,
}

/// What the pod reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Records not read yet, summed over the partitions; `None` while an
    /// end is unknown.
    pub records_behind: Option<i64>,
    pub event_time_lag_ms: Option<i64>,
    pub input_rate: Option<i64>,
    pub processing_rate: Option<i64>,
}

#[derive(Clone, Copy, Debug)]
struct Totals {
    at_ms: i64,
    ends: i64,
    positions: i64,
}

/// The recent samples of one process (its partitions never change).
#[derive(Debug, Default)]
pub struct LoadTracker {
    samples: VecDeque<Totals>,
}

impl LoadTracker {
    /// Records a sample taken at `now_ms` and reports.
    pub fn observe(&mut self, now_ms: i64, parts: &[PartitionLoad]) -> LoadReport {
        let event_time_lag_ms = event_time_lag(now_ms, parts);
        let records_behind = parts
            .iter()
            .map(|p| p.end.map(|end| (end - p.position).max(0)))
            .sum();
        let ends: Option<i64> = parts.iter().map(|p| p.end).sum();
        let Some(ends) = ends else {
            // Evidence must be continuous: an unknown end breaks the span.
            self.samples.clear();
            return LoadReport {
                records_behind,
                event_time_lag_ms,
                ..LoadReport::default()
            };
        };
        let positions = parts.iter().map(|p| p.position).sum();
        if self.samples.back().is_some_and(|last| now_ms <= last.at_ms) {
            // A clock that went back: start over.
            self.samples.clear();
        }
        self.samples.push_back(Totals {
            at_ms: now_ms,
            ends,
            positions,
        });
        while self
            .samples
            .get(1)
            .is_some_and(|second| now_ms - second.at_ms >= RATE_SPAN_MS)
        {
            self.samples.pop_front();
        }
        let (first, last) = match (self.samples.front(), self.samples.back()) {
            (Some(f), Some(l)) if l.at_ms - f.at_ms >= MIN_RATE_SPAN_MS => (*f, *l),
            _ => {
                return LoadReport {
                    records_behind,
                    event_time_lag_ms,
                    ..LoadReport::default()
                };
            }
        };
        let span_ms = last.at_ms - first.at_ms;
        let rate = |from: i64, to: i64| Some((to - from).max(0).saturating_mul(1000) / span_ms);
        LoadReport {
            records_behind,
            event_time_lag_ms,
            input_rate: rate(first.ends, last.ends),
            processing_rate: rate(first.positions, last.positions),
        }
    }
}

fn event_time_lag(now_ms: i64, parts: &[PartitionLoad]) -> Option<i64> {
    let mut lag = 0i64;
    for p in parts {
        let end = p.end?;
        if p.position >= end {
            continue;
        }
        let newest = p.newest_event_ms?;
        lag = lag.max(now_ms.saturating_sub(newest).max(0));
    }
    Some(lag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(end: i64, position: i64, newest: Option<i64>) -> PartitionLoad {
        PartitionLoad {
            end: Some(end),
            position,
            newest_event_ms: newest,
        }
    }

    #[test]
    fn lag_counts_only_partitions_with_unread_records() {
        let now = 100_000;
        // Idle for 90 s but read to its end: not behind.
        let idle = part(10, 10, Some(10_000));
        let behind = part(50, 20, Some(93_000));
        let more_behind = part(50, 40, Some(80_000));
        assert_eq!(event_time_lag(now, &[idle]), Some(0));
        assert_eq!(event_time_lag(now, &[idle, behind]), Some(7_000));
        assert_eq!(event_time_lag(now, &[idle, behind, more_behind]), Some(20_000));
        // Behind with nothing read yet, or an unknown end: unknown.
        assert_eq!(event_time_lag(now, &[part(5, 0, None)]), None);
        let unknown = PartitionLoad {
            end: None,
            position: 0,
            newest_event_ms: Some(1),
        };
        assert_eq!(event_time_lag(now, &[behind, unknown]), None);
        // Event times from the future are no negative lag.
        assert_eq!(event_time_lag(now, &[part(9, 1, Some(200_000))]), Some(0));
        // The records behind, for `lag`: summed, unknown with any end unknown.
        let mut t = LoadTracker::default();
        assert_eq!(
            t.observe(now, &[idle, behind, more_behind]).records_behind,
            Some(40)
        );
        assert_eq!(t.observe(now, &[behind, unknown]).records_behind, None);
    }

    #[test]
    fn rates_need_a_span_and_follow_the_last_thirty_seconds() {
        let mut t = LoadTracker::default();
        let at = |t: &mut LoadTracker, s: i64, end: i64, pos: i64| {
            t.observe(
                s * 1000,
                &[part(end, pos, Some(s * 1000)), part(end, pos, Some(s * 1000))],
            )
        };
        // One sample, then 5 s: no rate yet.
        assert_eq!(at(&mut t, 0, 0, 0).input_rate, None);
        assert_eq!(at(&mut t, 5, 500, 250).input_rate, None);
        // 10 s: two partitions each +1000 ends, +500 read.
        let r = at(&mut t, 10, 1000, 500);
        assert_eq!((r.input_rate, r.processing_rate), (Some(200), Some(100)));
        // Input stops; after 30 s more the old samples are gone.
        for s in [15, 20, 25, 30, 35, 40] {
            at(&mut t, s, 1000, 500 + (s - 10) * 10);
        }
        let r = at(&mut t, 45, 1000, 850);
        assert_eq!(r.input_rate, Some(0));
        // 15 s .. 45 s: positions 550 -> 850 on each of two partitions.
        assert_eq!(r.processing_rate, Some(20));
    }

    #[test]
    fn an_unknown_end_or_a_clock_going_back_starts_the_span_again() {
        let mut t = LoadTracker::default();
        t.observe(0, &[part(0, 0, None)]);
        t.observe(10_000, &[part(100, 0, None)]);
        let gap = PartitionLoad {
            end: None,
            position: 0,
            newest_event_ms: None,
        };
        assert_eq!(t.observe(15_000, &[gap]), LoadReport::default());
        assert_eq!(t.observe(20_000, &[part(200, 0, None)]).input_rate, None);
        assert_eq!(t.observe(30_000, &[part(300, 0, None)]).input_rate, Some(10));
        assert_eq!(t.observe(29_000, &[part(300, 0, None)]).input_rate, None);
    }
}
