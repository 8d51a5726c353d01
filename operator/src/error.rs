//! The operator's one error type. Variant names are the `reason` label of
//! `streamops_reconcile_errors_total` and the condition reason in status.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// No `spec.cluster` and no operator default (`STREAMOPS_KAFKA_BOOTSTRAP`).
    #[error(
        "no Kafka cluster: set spec.cluster.bootstrapServers or start the operator with STREAMOPS_KAFKA_BOOTSTRAP"
    )]
    NoKafkaCluster,
    /// A Secret (or credential file) is missing or malformed. Never holds a value.
    #[error("Kafka credentials: {0}")]
    Credentials(String),
    #[error("{0}")]
    KafkaClientConfig(String),
    /// Transient: the broker cannot be reached or timed out.
    #[error("Kafka unavailable: {0}")]
    KafkaUnavailable(String),
    /// The broker does not implement CreatePartitions (some Kafka-API brokers).
    #[error("{0}")]
    BrokerLacksCreatePartitions(String),
    /// The broker does not implement IncrementalAlterConfigs (Kafka < 2.3).
    #[error("{0}")]
    BrokerLacksIncrementalAlterConfigs(String),
    /// The broker refused the request; its message is kept.
    #[error("Kafka rejected the request: {0}")]
    KafkaRejected(String),
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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
