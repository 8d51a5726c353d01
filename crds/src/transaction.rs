//! How long an exactly-once job keeps a Kafka transaction open, and whether
//! that fits under the broker's `transaction.max.timeout.ms`.
//!
//! One rule for both sides: the operator refuses a job that cannot fit
//! before it creates anything (`Stalled`, naming the field), and the runtime
//! picks its producers' `transaction.timeout.ms` with it (and refuses to start
//! if a broker changed since).
//!
//! A task holds its outputs between checkpoints and opens its transaction
//! only once the checkpoint's state is durable: the transaction holds the
//! outputs, the marker and the commit, and nothing else (not the interval,
//! not the state's upload, not a savepoint's). Its length depends on how much
//! output a task may hold (the runtime's `--output-buffer-bytes`, reached
//! sooner starts an early checkpoint), never on the state's size, the
//! checkpoint interval or `spec.upgrade.savepointTimeout`. A transaction that
//! outlives its timeout is aborted by the broker and the task restarts from
//! its last checkpoint.

use crate::{StreamJobSpec, job::ProcessingGuarantee, validate::FieldError};

/// Kafka's default `transaction.max.timeout.ms` (15 minutes), assumed when
/// the broker's value cannot be read.
pub const KAFKA_DEFAULT_MAX_TIMEOUT_MS: u64 = 900_000;
/// The transaction timeout the task producers ask for: time to write what
/// a task holds, the marker, and commit, on a slow broker.
pub const WANTED_TIMEOUT_MS: u64 = 60_000;
/// The least timeout exactly once runs with: below it, a commit of a full
/// output buffer on a busy broker could be aborted, and the task would
/// restart again and again.
pub const MIN_TIMEOUT_MS: u64 = 15_000;

/// The `transaction.timeout.ms` to use under a broker whose maximum is
/// `broker_max_ms`, or why exactly once cannot run there.
pub fn fit(broker_max_ms: u64) -> Result<u64, FieldError> {
    if broker_max_ms < MIN_TIMEOUT_MS {
        return Err(FieldError::new(
            "spec.checkpoint.guarantee",
            format!(
                "exactly once needs transactions of up to {} s, and the broker's transaction.max.timeout.ms is \
                 {broker_max_ms} ms: raise the broker's limit, or use atLeastOnce",
                MIN_TIMEOUT_MS / 1000
            ),
        ));
    }
    Ok(WANTED_TIMEOUT_MS.min(broker_max_ms))
}

/// Whether the job writes through Kafka transactions (exactly once, the
/// default): only then does the broker's maximum matter.
pub fn applies(spec: &StreamJobSpec) -> bool {
    spec.checkpoint
        .as_ref()
        .and_then(|c| c.guarantee)
        .unwrap_or_default()
        == ProcessingGuarantee::ExactlyOnce
}

/// [`fit`] for a spec. At least once writes no transaction, so it always
/// fits (with `None`).
pub fn fit_spec(spec: &StreamJobSpec, broker_max_ms: u64) -> Result<Option<u64>, FieldError> {
    if !applies(spec) {
        return Ok(None);
    }
    fit(broker_max_ms).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    /// The crate's example job with `checkpoint` and a 1 h savepoint timeout.
    fn spec(checkpoint: serde_json::Value) -> StreamJobSpec {
        let mut spec = serde_json::to_value(crate::job::tests::example()).unwrap();
        spec["checkpoint"] = checkpoint;
        spec["upgrade"] = serde_json::json!({"savepointTimeout": "1h"});
        serde_json::from_value(spec).unwrap()
    }

    /// The interval and the savepoint timeout no longer count: a 20 min
    /// interval and a 1 h savepoint timeout fit a broker whose maximum is a
    /// minute (they were refused when the transaction stayed open for both).
    #[test]
    fn the_timeout_depends_on_neither_the_interval_nor_the_savepoint_timeout() {
        let long = spec(serde_json::json!({"interval": "20m"}));
        assert_eq!(fit_spec(&long, 60 * S), Ok(Some(60 * S)));
        assert_eq!(
            fit_spec(&long, KAFKA_DEFAULT_MAX_TIMEOUT_MS),
            Ok(Some(WANTED_TIMEOUT_MS))
        );
        let short = spec(serde_json::json!({"interval": "1s"}));
        assert_eq!(fit_spec(&short, 60 * S), fit_spec(&long, 60 * S));
    }

    #[test]
    fn the_timeout_is_capped_by_the_broker_and_refused_below_the_minimum() {
        for max in [1, S, 10 * S, MIN_TIMEOUT_MS - 1] {
            let e = fit(max).unwrap_err();
            assert_eq!(e.field, "spec.checkpoint.guarantee");
            assert!(
                e.message
                    .contains(&format!("transaction.max.timeout.ms is {max} ms")),
                "{}",
                e.message
            );
        }
        for max in [MIN_TIMEOUT_MS, 30 * S, WANTED_TIMEOUT_MS, 600 * S, u64::MAX] {
            let t = fit(max).unwrap();
            assert!(
                t <= max && (MIN_TIMEOUT_MS..=WANTED_TIMEOUT_MS).contains(&t),
                "{max}: {t}"
            );
        }
    }

    #[test]
    fn at_least_once_has_no_transaction_to_fit() {
        let mut s = spec(serde_json::json!({"interval": "20m", "guarantee": "atLeastOnce"}));
        assert_eq!(fit_spec(&s, S), Ok(None));
        s.checkpoint.as_mut().unwrap().guarantee = None;
        assert_eq!(fit_spec(&s, S).unwrap_err().field, "spec.checkpoint.guarantee");
    }
}
