//! How a Kafka admin call failed: every librdkafka error code classified
//! as transient (retry), missing capability, existence or refusal, so the
//! controllers decide on the kind and never on a code.

use rdkafka::{error::KafkaError, types::RDKafkaErrorCode};

use crate::error::Error;

/// What kind of failure a Kafka call ended in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Broker down, timeouts, leader moves: retry with backoff.
    Unavailable,
    /// The broker does not implement the request.
    Unsupported,
    /// The topic already exists (CreateTopics).
    AlreadyExists,
    /// The topic does not exist.
    UnknownTopic,
    /// The broker refused the request (invalid config, replication factor, ...).
    Rejected,
}

/// A failed admin call: its kind, the error code and the broker's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminFailure {
    pub kind: FailureKind,
    pub code: Option<RDKafkaErrorCode>,
    pub message: String,
}

impl AdminFailure {
    pub fn from_code(code: RDKafkaErrorCode, message: String) -> Self {
        use RDKafkaErrorCode as C;
        let kind = match code {
            C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::OperationTimedOut
            | C::MessageTimedOut
            | C::TimedOutQueue
            | C::RequestTimedOut
            | C::BrokerNotAvailable
            | C::LeaderNotAvailable
            | C::ReplicaNotAvailable
            | C::NotController
            | C::NetworkException
            | C::Resolve
            | C::CoordinatorNotAvailable
            | C::BrokerDestroy
            | C::DestroyBroker => FailureKind::Unavailable,
            C::UnsupportedFeature | C::UnsupportedVersion => FailureKind::Unsupported,
            C::TopicAlreadyExists => FailureKind::AlreadyExists,
            C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownTopicId => FailureKind::UnknownTopic,
            _ => FailureKind::Rejected,
        };
        let message = if message.is_empty() {
            code.to_string()
        } else {
            message
        };
        Self {
            kind,
            code: Some(code),
            message,
        }
    }

    pub fn rejected(code: Option<RDKafkaErrorCode>, message: String) -> Self {
        Self {
            kind: FailureKind::Rejected,
            code,
            message,
        }
    }

    pub(super) fn from_kafka(op: &str, e: &KafkaError) -> Self {
        let code = match e {
            KafkaError::AdminOp(code) | KafkaError::MetadataFetch(code) => Some(*code),
            other => other.rdkafka_error_code(),
        };
        match code {
            Some(code) => Self::from_code(code, format!("{op}: {e}")),
            None => Self {
                kind: FailureKind::Unavailable,
                code: None,
                message: format!("{op}: {e}"),
            },
        }
    }
}

impl From<AdminFailure> for Error {
    /// The default reading of a failure; a caller that knows what the call
    /// was for (a partition growth, a config change) names it better.
    fn from(failure: AdminFailure) -> Self {
        match failure.kind {
            FailureKind::Unavailable => Self::KafkaUnavailable(failure.message),
            FailureKind::Unsupported
            | FailureKind::AlreadyExists
            | FailureKind::UnknownTopic
            | FailureKind::Rejected => Self::KafkaRejected(failure.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified() {
        let kind = |e: KafkaError| AdminFailure::from_kafka("op", &e).kind;
        // What librdkafka answers when the broker lacks CreatePartitions.
        assert_eq!(
            kind(KafkaError::AdminOp(RDKafkaErrorCode::UnsupportedFeature)),
            FailureKind::Unsupported
        );
        assert_eq!(
            kind(KafkaError::MetadataFetch(RDKafkaErrorCode::AllBrokersDown)),
            FailureKind::Unavailable
        );
        assert_eq!(
            kind(KafkaError::AdminOp(RDKafkaErrorCode::OperationTimedOut)),
            FailureKind::Unavailable
        );
        let f = AdminFailure::from_code(RDKafkaErrorCode::InvalidReplicationFactor, String::new());
        assert_eq!(f.kind, FailureKind::Rejected);
        assert!(!f.message.is_empty());
        assert_eq!(
            AdminFailure::from_code(RDKafkaErrorCode::TopicAlreadyExists, "x".into()).kind,
            FailureKind::AlreadyExists
        );
    }

    #[test]
    fn admin_failures_keep_their_reasons() {
        let failure = |kind| AdminFailure {
            kind,
            code: None,
            message: "m".into(),
        };
        assert_eq!(
            Error::from(failure(FailureKind::Unavailable)).reason(),
            "KafkaUnavailable"
        );
        assert!(Error::from(failure(FailureKind::Unavailable)).is_transient());
        for kind in [
            FailureKind::Unsupported,
            FailureKind::AlreadyExists,
            FailureKind::UnknownTopic,
            FailureKind::Rejected,
        ] {
            assert_eq!(Error::from(failure(kind)).reason(), "KafkaRejected");
        }
    }
}
