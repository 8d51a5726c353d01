//! How long an exactly-once job keeps a Kafka transaction open, and whether
//! that fits under the broker's `transaction.max.timeout.ms`.
//!
//! One rule for both sides: the operator refuses a job that cannot fit
//! before it creates anything (`Stalled`, naming the field), and the runtime
//! picks its producers' `transaction.timeout.ms` with it (and refuses to start
//! if a broker changed since).
//!
//! A task's transaction opens after a commit and stays open for a checkpoint
//! interval; a savepoint is written inside the transaction that is open when
//! it is requested, so that transaction may last an interval plus the
//! savepoint's upload, which the operator waits for at most
//! `spec.upgrade.savepointTimeout`. A transaction that outlives its timeout is
//! aborted by the broker and the task has to restart from its last
//! checkpoint, so the timeout must cover both.

use std::time::Duration;

use crate::{
    DurationSpec, StreamJobSpec,
    job::{ProcessingGuarantee, defaults},
    validate::FieldError,
};

/// Kafka's default `transaction.max.timeout.ms` (15 minutes), assumed when
/// the broker's value cannot be read.
pub const KAFKA_DEFAULT_MAX_TIMEOUT_MS: u64 = 900_000;
/// Time a commit may take after the interval ends.
pub const COMMIT_MARGIN_MS: u64 = 30_000;
/// What the timeout adds to two intervals for a slow commit or restart.
pub const SLOW_TURN_MS: u64 = 60_000;

/// The transaction timeout a job with this checkpoint interval and savepoint
/// timeout asks for: two intervals plus a minute, or an interval plus a
/// whole savepoint plus the commit margin, whichever is longer.
pub fn wanted_timeout_ms(interval: Duration, savepoint_timeout: Duration) -> u64 {
    let interval = millis(interval);
    let turns = interval.saturating_mul(2).saturating_add(SLOW_TURN_MS);
    let savepoint = interval
        .saturating_add(millis(savepoint_timeout))
        .saturating_add(COMMIT_MARGIN_MS);
    turns.max(savepoint)
}

/// The `transaction.timeout.ms` to use under a broker whose maximum is
/// `broker_max_ms`, or the field that cannot fit and why.
pub fn fit(interval: Duration, savepoint_timeout: Duration, broker_max_ms: u64) -> Result<u64, FieldError> {
    let interval_ms = millis(interval);
    let savepoint_ms = millis(savepoint_timeout);
    if interval_ms.saturating_add(COMMIT_MARGIN_MS) > broker_max_ms {
        return Err(FieldError::new(
            "spec.checkpoint.interval",
            format!(
                "{} does not fit the broker's transaction.max.timeout.ms ({broker_max_ms} ms): a transaction stays \
                 open for a whole interval plus up to {} s to commit; shorten the interval or raise the broker's limit",
                human(interval_ms),
                COMMIT_MARGIN_MS / 1000
            ),
        ));
    }
    if interval_ms
        .saturating_add(savepoint_ms)
        .saturating_add(COMMIT_MARGIN_MS)
        > broker_max_ms
    {
        return Err(FieldError::new(
            "spec.upgrade.savepointTimeout",
            format!(
                "{} plus the checkpoint interval {} does not fit the broker's transaction.max.timeout.ms \
                 ({broker_max_ms} ms): a savepoint is written inside the transaction open when it is requested; \
                 shorten the savepoint timeout or the interval, or raise the broker's limit",
                human(savepoint_ms),
                human(interval_ms)
            ),
        ));
    }
    Ok(wanted_timeout_ms(interval, savepoint_timeout).min(broker_max_ms))
}

/// Whether the job keeps Kafka transactions open for an interval (exactly
/// once, the default): only then does the broker's maximum matter.
pub fn applies(spec: &StreamJobSpec) -> bool {
    spec.checkpoint
        .as_ref()
        .and_then(|c| c.guarantee)
        .unwrap_or_default()
        == ProcessingGuarantee::ExactlyOnce
}

/// [`fit`] for a spec (defaults filled in). At least once never keeps a
/// transaction open, so it always fits (with `None`).
pub fn fit_spec(spec: &StreamJobSpec, broker_max_ms: u64) -> Result<Option<u64>, FieldError> {
    if !applies(spec) {
        return Ok(None);
    }
    let d = spec.defaulted();
    let cp = d.checkpoint.as_ref();
    let interval = cp
        .and_then(|c| c.interval.as_ref())
        .map_or(defaults::CHECKPOINT_INTERVAL_MS, DurationSpec::as_millis);
    let savepoint = d
        .upgrade
        .as_ref()
        .and_then(|u| u.savepoint_timeout.as_ref())
        .map_or(defaults::SAVEPOINT_TIMEOUT_MS, DurationSpec::as_millis);
    fit(
        Duration::from_millis(interval),
        Duration::from_millis(savepoint),
        broker_max_ms,
    )
    .map(Some)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn human(ms: u64) -> String {
    DurationSpec::from_millis(ms).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn defaults_fit_under_kafkas_default_maximum() {
        // 10 s interval, 60 s savepoint timeout: max(80 s, 100 s).
        assert_eq!(
            fit(d(10 * S), d(60 * S), KAFKA_DEFAULT_MAX_TIMEOUT_MS),
            Ok(100 * S)
        );
        // A long interval: two intervals plus a minute.
        assert_eq!(fit(d(100 * S), d(60 * S), 900 * S), Ok(260 * S));
    }

    #[test]
    fn the_timeout_is_capped_by_the_broker() {
        assert_eq!(fit(d(100 * S), d(60 * S), 200 * S), Ok(200 * S));
    }

    #[test]
    fn an_interval_that_cannot_fit_names_the_interval() {
        let e = fit(d(600 * S), d(60 * S), 300 * S).unwrap_err();
        assert_eq!(e.field, "spec.checkpoint.interval");
        assert!(
            e.message.contains("transaction.max.timeout.ms (300000 ms)"),
            "{}",
            e.message
        );
        assert!(e.message.contains("600s"), "{}", e.message);
        // Exactly at the limit fits.
        assert!(fit(d(270 * S), d(0), 300 * S).is_ok());
        assert!(fit(d(270 * S + 1), d(0), 300 * S).is_err());
    }

    #[test]
    fn a_savepoint_timeout_that_cannot_fit_names_the_savepoint_timeout() {
        let e = fit(d(10 * S), d(600 * S), 300 * S).unwrap_err();
        assert_eq!(e.field, "spec.upgrade.savepointTimeout");
        assert!(
            e.message.contains("600s plus the checkpoint interval 10s"),
            "{}",
            e.message
        );
    }

    #[test]
    fn the_timeout_covers_every_transaction_the_check_lets_through() {
        // Property over a grid: whenever the check passes, the timeout
        // covers an interval plus the commit margin and an interval plus a
        // savepoint, and never exceeds the broker's maximum.
        for interval in [0, 1, 500, 10 * S, 59 * S, 120 * S, 600 * S, 3_600 * S] {
            for savepoint in [0, S, 60 * S, 600 * S] {
                for max in [S, 60 * S, 100 * S, 300 * S, 900 * S, 3_600 * S] {
                    match fit(d(interval), d(savepoint), max) {
                        Ok(t) => {
                            assert!(t <= max);
                            assert!(t >= interval + COMMIT_MARGIN_MS);
                            assert!(t >= interval + savepoint + COMMIT_MARGIN_MS);
                        }
                        Err(e) => assert!(
                            interval + COMMIT_MARGIN_MS > max
                                || interval + savepoint + COMMIT_MARGIN_MS > max,
                            "refused {interval}/{savepoint}/{max}: {}",
                            e.message
                        ),
                    }
                }
            }
        }
    }

    #[test]
    fn at_least_once_has_no_open_transaction_to_fit() {
        let mut spec: StreamJobSpec = serde_json::from_value(serde_json::json!({
            "source": {"topics": ["clicks"], "eventTime": {"field": "record.ts"}},
            "pipeline": {
                "keyBy": ["record.user_id"],
                "window": {"type": "tumbling", "size": "10s"},
                "aggregations": [{"name": "clicks", "function": "count"}]
            },
            "sink": {"topic": "clicks-per-user"},
            "checkpoint": {"interval": "20m", "guarantee": "atLeastOnce"}
        }))
        .unwrap();
        assert_eq!(fit_spec(&spec, 900 * S), Ok(None));
        spec.checkpoint.as_mut().unwrap().guarantee = None;
        assert_eq!(
            fit_spec(&spec, 900 * S).unwrap_err().field,
            "spec.checkpoint.interval"
        );
    }
}
