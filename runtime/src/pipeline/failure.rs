//! Why the runtime stopped, for its termination log
//! ([`streamops_crds::runtime_api::termination`]): the operator shows it as
//! the job's `Ready=False` reason while the pods crash-loop.
//!
//! The reason comes from the first Kafka error code in the error's chain
//! ([`RuntimeError::kafka_error_code`]): librdkafka's error of a client
//! call (`kerr`) or a code the runtime found without one (a flush that ran
//! out of time, a failed delivery report, a position out of range).

use std::path::Path;

use rdkafka::error::RDKafkaErrorCode;
use streamops_crds::runtime_api::termination;

use crate::error::RuntimeError;

/// The termination reason of an error: the first Kafka code in its chain
/// decides; an error with none is [`termination::FAILED`].
pub fn reason(error: &RuntimeError) -> &'static str {
    error
        .kafka_error_code()
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

/// Writes the termination message of `error` (its reason, then the whole
/// chain, outermost context first) to `path`; a failure to write is only
/// logged (the process is exiting anyway).
pub fn write_termination_log(path: &Path, error: &RuntimeError) {
    let text = termination::message(reason(error), &error.to_string());
    if let Err(e) = std::fs::write(path, text) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the termination log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Context, Result, kafka};
    use rdkafka::error::KafkaError;

    #[test]
    fn the_kafka_error_in_the_chain_decides_the_reason() {
        let timed_out: Result<()> = Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
            .map_err(kafka("flushing"))
            .context("committing checkpoint 7")
            .context("task 3");
        assert_eq!(reason(&timed_out.unwrap_err()), termination::KAFKA_UNAVAILABLE);

        let fenced: Result<()> =
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced)).context("producing");
        assert_eq!(reason(&fenced.unwrap_err()), termination::FENCED);

        let gone: Result<()> = Err(RuntimeError::kafka_code(
            RDKafkaErrorCode::OffsetOutOfRange,
            "task 0: source partition in-0: 200 records were deleted",
        ))
        .context("starting task 0");
        let gone = gone.unwrap_err();
        assert_eq!(reason(&gone), termination::OFFSET_OUT_OF_RANGE);
        let text = termination::message(reason(&gone), &gone.to_string());
        assert_eq!(
            termination::parse(&text),
            Some((
                termination::OFFSET_OUT_OF_RANGE,
                "starting task 0: task 0: source partition in-0: 200 records were deleted"
            ))
        );

        let flush = RuntimeError::kafka_code(
            RDKafkaErrorCode::MessageTimedOut,
            "3 records not delivered within 30s",
        );
        assert_eq!(reason(&flush), termination::KAFKA_UNAVAILABLE);
        assert_eq!(flush.to_string(), "3 records not delivered within 30s");

        let bad: Result<()> = Err(RuntimeError::Job("not JSON".into())).context("loading");
        assert_eq!(reason(&bad.unwrap_err()), termination::FAILED);
        let unknown_topic = RuntimeError::from(KafkaError::MetadataFetch(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
        assert_eq!(reason(&unknown_topic), termination::FAILED);
    }

    #[test]
    fn the_termination_log_holds_reason_and_detail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        let e: Result<()> =
            Err(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut)).context("committing checkpoint 2");
        write_termination_log(&path, &e.unwrap_err());
        let text = std::fs::read_to_string(&path).unwrap();
        let (r, detail) = termination::parse(&text).unwrap();
        assert_eq!(r, termination::KAFKA_UNAVAILABLE);
        assert!(detail.starts_with("committing checkpoint 2: "), "{detail}");
    }
}
