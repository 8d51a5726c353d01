//! Why the runtime stopped, for its termination log
//! ([`streamops_crds::runtime_api::termination`]): the operator shows it as
//! the job's `Ready=False` reason while the pods crash-loop.
//!
//! The reason comes from the Kafka error in the error's chain: the runtime
//! keeps librdkafka's error as the source of every Kafka failure (`kerr`)
//! and marks what it finds without one (a flush that ran out of time, a
//! failed delivery report) with [`KafkaCondition`].

use std::path::Path;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use streamops_crds::runtime_api::termination;

pub use crate::kafka::KafkaCondition;

/// The termination reason of an error: the first Kafka code in its chain
/// decides; an error with none is [`termination::FAILED`].
pub fn reason(error: &anyhow::Error) -> &'static str {
    error
        .chain()
        .find_map(|e| {
            if let Some(k) = e.downcast_ref::<KafkaError>() {
                return Some(k.rdkafka_error_code());
            }
            e.downcast_ref::<KafkaCondition>().map(|c| Some(c.code))
        })
        .flatten()
        .map_or(termination::FAILED, reason_of_code)
}

/// Pure: the termination reason of one librdkafka error code.
pub fn reason_of_code(code: RDKafkaErrorCode) -> &'static str {
    use RDKafkaErrorCode as C;
    match code {
        C::ProducerFenced | C::Fenced | C::InvalidProducerEpoch => termination::FENCED,
        C::OffsetOutOfRange | C::AutoOffsetReset => termination::OFFSET_OUT_OF_RANGE,
        C::AllBrokersDown
        | C::BrokerTransportFailure
        | C::Resolve
        | C::MessageTimedOut
        | C::OperationTimedOut
        | C::RequestTimedOut
        | C::NetworkException
        | C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::CoordinatorNotAvailable
        | C::NotCoordinator
        | C::WaitingForCoordinator
        | C::TransactionCoordinatorFenced
        | C::CoordinatorLoadInProgress
        | C::BrokerNotAvailable
        | C::ReplicaNotAvailable
        | C::UnknownLeaderEpoch
        | C::FencedLeaderEpoch
        | C::KafkaStorageError
        | C::ConcurrentTransactions => termination::KAFKA_UNAVAILABLE,
        _ => termination::FAILED,
    }
}

/// The error's chain as `context: cause: ...`, leaving out a cause whose text
/// ends the previous one's (librdkafka's transaction errors print their
/// source inside their own message, which would repeat it).
pub fn detail(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for e in error.chain() {
        let text = e.to_string();
        if parts.last().is_some_and(|prev| prev.ends_with(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// Writes the termination message of `error` to `path`; a failure to write
/// is only logged (the process is exiting anyway).
pub fn write_termination_log(path: &Path, error: &anyhow::Error) {
    let text = termination::message(reason(error), &detail(error));
    if let Err(e) = std::fs::write(path, text) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the termination log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;
    use std::fmt;

    #[test]
    fn the_kafka_error_in_the_chain_decides_the_reason() {
        let timed_out = anyhow::Error::new(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        // Context added on top keeps the source.
        let e = timed_out.context("committing checkpoint 7").context("task 3");
        assert_eq!(reason(&e), termination::KAFKA_UNAVAILABLE);

        let fenced: anyhow::Result<()> =
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced).into());
        let fenced = fenced.context("producing").unwrap_err();
        assert_eq!(reason(&fenced), termination::FENCED);

        let gone = anyhow::Error::new(KafkaCondition::new(
            RDKafkaErrorCode::OffsetOutOfRange,
            "task 0: source partition in-0: 200 records were deleted",
        ))
        .context("starting task 0");
        assert_eq!(reason(&gone), termination::OFFSET_OUT_OF_RANGE);
        let text = termination::message(reason(&gone), &detail(&gone));
        assert_eq!(
            termination::parse(&text).map(|(r, _)| r),
            Some(termination::OFFSET_OUT_OF_RANGE)
        );

        let flush = anyhow::Error::new(KafkaCondition::new(
            RDKafkaErrorCode::MessageTimedOut,
            "3 records not delivered within 30s",
        ));
        assert_eq!(reason(&flush), termination::KAFKA_UNAVAILABLE);
        assert_eq!(format!("{flush:#}"), "3 records not delivered within 30s");

        let bad = anyhow::anyhow!("the job file is not JSON").context("loading");
        assert_eq!(reason(&bad), termination::FAILED);
        let unknown_topic = anyhow::Error::new(KafkaError::MetadataFetch(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
        assert_eq!(reason(&unknown_topic), termination::FAILED);
    }

    #[derive(Debug)]
    struct Wrapping(std::io::Error);

    impl fmt::Display for Wrapping {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "Transaction error: {}", self.0)
        }
    }

    impl std::error::Error for Wrapping {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_repeated_inside_its_wrapper_is_not_repeated_in_the_detail() {
        let e = anyhow::Error::new(Wrapping(std::io::Error::other("Timed out")))
            .context("committing checkpoint 7");
        assert_eq!(
            detail(&e),
            "committing checkpoint 7: Transaction error: Timed out"
        );
        let plain = anyhow::anyhow!("no marker").context("restoring task 2");
        assert_eq!(detail(&plain), format!("{plain:#}"));
    }

    #[test]
    fn the_termination_log_holds_reason_and_detail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        let e = anyhow::Error::new(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut))
            .context("committing checkpoint 2");
        write_termination_log(&path, &e);
        let text = std::fs::read_to_string(&path).unwrap();
        let (r, detail) = termination::parse(&text).unwrap();
        assert_eq!(r, termination::KAFKA_UNAVAILABLE);
        assert!(detail.starts_with("committing checkpoint 2: "), "{detail}");
    }
}
