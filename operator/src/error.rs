//! The operator's one error type. Each variant names what failed (the
//! Kubernetes API, the Kafka client, a Kafka admin call, the job's pod
//! template, ...); its [`Error::reason`] is the `reason` label of
//! `streamops_reconcile_errors_total` and the condition reason in status.
//!
//! This module imports nothing from the crate: the modules that fail
//! convert into it (a Kafka admin failure in `kafka::failure`).

use streamops_crds::Health;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// No `spec.cluster` and no operator default (`STREAMOPS_KAFKA_BOOTSTRAP`).
    #[error(
        "no Kafka cluster: set spec.cluster.bootstrapServers or start the operator with STREAMOPS_KAFKA_BOOTSTRAP"
    )]
    NoKafkaCluster,
    /// A Kafka credential Secret (or file) is missing or malformed. Never
    /// holds a value.
    #[error("Kafka credentials: {0}")]
    Credentials(String),
    /// librdkafka refused the client settings.
    #[error("{0}")]
    KafkaClientConfig(String),
    /// A Kafka admin call failed transiently: the broker cannot be reached
    /// or timed out.
    #[error("Kafka unavailable: {0}")]
    KafkaUnavailable(String),
    /// The broker does not implement CreatePartitions (some Kafka-API brokers).
    #[error("{0}")]
    BrokerLacksCreatePartitions(String),
    /// The broker does not implement IncrementalAlterConfigs (Kafka < 2.3).
    #[error("{0}")]
    BrokerLacksIncrementalAlterConfigs(String),
    /// The broker refused an admin request; its message is kept.
    #[error("Kafka rejected the request: {0}")]
    KafkaRejected(String),
    /// `spec.podTemplate` (or `spec.resources`) merged into the runtime's
    /// pod template does not make a valid pod template.
    #[error("{0}")]
    InvalidPodTemplate(String),
    /// An object the operator builds (job.json, a ConfigMap, Service,
    /// NetworkPolicy or Secret) cannot be serialized: a bug, not a user's.
    #[error("cannot build {0}")]
    Serialization(String),
    /// No random admin token for the job's runtime pods.
    #[error("admin token: {0}")]
    AdminToken(String),
}

impl Error {
    /// Metric label and condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kube(_) => "KubeError",
            Self::Finalizer(_) => "FinalizerError",
            Self::NoKafkaCluster => "NoKafkaCluster",
            Self::Credentials(_) => "CredentialsUnavailable",
            Self::KafkaClientConfig(_) => "KafkaClientConfigInvalid",
            Self::KafkaUnavailable(_) => "KafkaUnavailable",
            Self::BrokerLacksCreatePartitions(_) => "BrokerLacksCreatePartitions",
            Self::BrokerLacksIncrementalAlterConfigs(_) => "BrokerLacksIncrementalAlterConfigs",
            Self::KafkaRejected(_) => "KafkaRejected",
            Self::InvalidPodTemplate(_) => "InvalidPodTemplate",
            Self::Serialization(_) => "SerializationFailed",
            Self::AdminToken(_) => "AdminTokenUnavailable",
        }
    }

    /// Whether waiting (with backoff) can fix it, so the resource is
    /// `Reconciling`; otherwise a user must act and it is `Stalled`.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Kube(_) | Self::Finalizer(_) | Self::KafkaUnavailable(_)
        )
    }

    /// The health of a resource this error stopped: `Reconciling` when
    /// transient, else `Stalled`; the reason is [`Error::reason`].
    pub fn health(&self) -> Health {
        if self.is_transient() {
            Health::reconciling(self.reason(), self.to_string())
        } else {
            Health::stalled(self.reason(), self.to_string())
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_pod_template_is_not_a_kafka_error() {
        let e = Error::InvalidPodTemplate("spec.podTemplate must be an object".into());
        assert_eq!(e.reason(), "InvalidPodTemplate");
        assert!(!e.is_transient());
        assert_eq!(e.to_string(), "spec.podTemplate must be an object");
    }
}
