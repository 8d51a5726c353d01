//! A source position that is no longer in its partition
//! (`spec.source.onOffsetOutOfRange`).
//!
//! The consumer runs with `auto.offset.reset=error`: a position outside the
//! partition is never moved silently by librdkafka (which would lose or
//! re-read records without a word). The runner checks every source position
//! against the partition's log start and end when a task starts and
//! whenever the consumer reports an out-of-range position, and applies
//! [`decide`].

use streamops_crds::job::OffsetOutOfRange;

/// What to do with one source position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `log_start <= position <= log_end`: read on.
    InRange,
    /// Go on from `to` (the policy said so).
    Reset { to: i64 },
    /// Stop the job (`fail`), with why.
    Fail(String),
}

/// Pure: the decision for `position` in a partition holding offsets
/// `log_start..log_end`.
pub fn decide(position: i64, log_start: i64, log_end: i64, policy: OffsetOutOfRange) -> Decision {
    if (log_start..=log_end).contains(&position) {
        return Decision::InRange;
    }
    let what = if position < log_start {
        format!(
            "{} records from offset {position} were deleted before the job read them (the partition starts at \
             {log_start})",
            log_start - position
        )
    } else {
        format!(
            "offset {position} is past the partition's end ({log_end}): was the topic deleted and recreated?"
        )
    };
    match policy {
        OffsetOutOfRange::Fail => Decision::Fail(format!(
            "{what}; spec.source.onOffsetOutOfRange is fail: set it to earliest or latest to go on (records are \
             lost or read again)"
        )),
        OffsetOutOfRange::Earliest => Decision::Reset { to: log_start },
        OffsetOutOfRange::Latest => Decision::Reset { to: log_end },
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use OffsetOutOfRange::*;

    #[test]
    fn positions_inside_read_on_and_outside_follow_the_policy() {
        for policy in [Fail, Earliest, Latest] {
            assert_eq!(decide(10, 10, 20, policy), Decision::InRange);
            assert_eq!(
                decide(20, 10, 20, policy),
                Decision::InRange,
                "the end: wait for records"
            );
        }
        assert_eq!(decide(3, 10, 20, Earliest), Decision::Reset { to: 10 });
        assert_eq!(decide(3, 10, 20, Latest), Decision::Reset { to: 20 });
        assert_eq!(decide(25, 0, 20, Earliest), Decision::Reset { to: 0 });
        let Decision::Fail(why) = decide(3, 10, 20, Fail) else {
            panic!("fail refuses");
        };
        assert!(
            why.contains("7 records") && why.contains("onOffsetOutOfRange"),
            "{why}"
        );
        let Decision::Fail(why) = decide(25, 0, 20, Fail) else {
            panic!("fail refuses");
        };
        assert!(why.contains("recreated"), "{why}");
    }

    proptest! {
        /// Every decision lands inside the partition, and only a position
        /// outside it is ever moved.
        #[test]
        fn resets_land_inside_and_only_outside_positions_move(
            position in -5i64..60, start in 0i64..30, len in 0i64..30, p in 0usize..3,
        ) {
            let end = start + len;
            let policy = [Fail, Earliest, Latest][p];
            let inside = position >= start && position <= end;
            match decide(position, start, end, policy) {
                Decision::InRange => prop_assert!(inside),
                Decision::Reset { to } => {
                    prop_assert!(!inside && policy != Fail);
                    prop_assert!(to >= start && to <= end);
                }
                Decision::Fail(_) => prop_assert!(!inside && policy == Fail),
            }
        }
    }
}
