//! The Kafka admin calls the topic controller makes, with every failure
//! classified as transient (retry), missing capability or refusal.
//!
//! Calls used: Metadata (all topics, so no request can auto-create one),
//! DescribeConfigs, CreateTopics, CreatePartitions, IncrementalAlterConfigs
//! (through [`super::incremental`]) and DeleteTopics.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication},
    client::DefaultClientContext,
    error::KafkaError,
    types::RDKafkaErrorCode,
};

use crate::topic::plan::{ConfigChange, ObservedTopic};

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

    fn from_kafka(op: &str, e: &KafkaError) -> Self {
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

/// An admin client for one cluster configuration; cheap to clone.
#[derive(Clone)]
pub struct KafkaAdmin {
    client: Arc<AdminClient<DefaultClientContext>>,
    timeout: Duration,
}

impl KafkaAdmin {
    pub fn new(client: AdminClient<DefaultClientContext>, timeout: Duration) -> Self {
        Self {
            client: Arc::new(client),
            timeout,
        }
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout))
    }

    /// The topic as Kafka reports it, or `None` if it does not exist.
    pub async fn describe(&self, topic: &str) -> Result<Option<ObservedTopic>, AdminFailure> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let name = topic.to_owned();
        // Metadata for all topics: asking for one named topic could make a
        // broker with auto-creation enabled create it.
        let found = tokio::task::spawn_blocking(move || {
            let metadata = client
                .inner()
                .fetch_metadata(None, timeout)
                .map_err(|e| AdminFailure::from_kafka("Metadata", &e))?;
            Ok::<_, AdminFailure>(metadata.topics().iter().find(|t| t.name() == name).and_then(|t| {
                if t.error().is_some() {
                    return None;
                }
                let partitions = i32::try_from(t.partitions().len()).unwrap_or(i32::MAX);
                let replication_factor = t
                    .partitions()
                    .iter()
                    .map(|p| i32::try_from(p.replicas().len()).unwrap_or(i32::MAX))
                    .max()
                    .unwrap_or(0);
                Some((partitions, replication_factor))
            }))
        })
        .await
        .map_err(|e| AdminFailure::rejected(None, format!("metadata task failed: {e}")))??;
        let Some((partitions, replication_factor)) = found else {
            return Ok(None);
        };
        let config = self.describe_config(topic).await?;
        Ok(Some(ObservedTopic {
            partitions,
            replication_factor,
            config,
        }))
    }

    async fn describe_config(&self, topic: &str) -> Result<BTreeMap<String, String>, AdminFailure> {
        let results = self
            .client
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &self.options())
            .await
            .map_err(|e| AdminFailure::from_kafka("DescribeConfigs", &e))?;
        let mut config = BTreeMap::new();
        for result in results {
            let resource =
                result.map_err(|code| AdminFailure::from_code(code, format!("DescribeConfigs: {code}")))?;
            for entry in resource.entries {
                if let Some(value) = entry.value
                    && !entry.is_sensitive
                {
                    config.insert(entry.name, value);
                }
            }
        }
        Ok(config)
    }

    pub async fn create(
        &self,
        topic: &str,
        partitions: i32,
        replication_factor: Option<i32>,
        config: &BTreeMap<String, String>,
    ) -> Result<(), AdminFailure> {
        let mut new_topic = NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(replication_factor.unwrap_or(-1)),
        );
        for (key, value) in config {
            new_topic = new_topic.set(key, value);
        }
        let results = self
            .client
            .create_topics([&new_topic], &self.options())
            .await
            .map_err(|e| AdminFailure::from_kafka("CreateTopics", &e))?;
        for result in results {
            result.map_err(|(_, code)| AdminFailure::from_code(code, format!("CreateTopics: {code}")))?;
        }
        Ok(())
    }

    pub async fn grow_partitions(&self, topic: &str, total: i32) -> Result<(), AdminFailure> {
        let count = usize::try_from(total).unwrap_or_default();
        let results = self
            .client
            .create_partitions([&NewPartitions::new(topic, count)], &self.options())
            .await
            .map_err(|e| AdminFailure::from_kafka("CreatePartitions", &e))?;
        for result in results {
            result.map_err(|(_, code)| AdminFailure::from_code(code, format!("CreatePartitions: {code}")))?;
        }
        Ok(())
    }

    pub async fn alter_config(&self, topic: &str, changes: Vec<ConfigChange>) -> Result<(), AdminFailure> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            // SAFETY: `client` owns the handle and lives until the call returns.
            unsafe { super::incremental::alter_topic(client.inner().native_ptr(), &topic, &changes, timeout) }
        })
        .await
        .map_err(|e| AdminFailure::rejected(None, format!("IncrementalAlterConfigs task failed: {e}")))?
    }

    /// Deletes the topic; a topic that is already gone counts as deleted.
    pub async fn delete(&self, topic: &str) -> Result<(), AdminFailure> {
        let results = self
            .client
            .delete_topics(&[topic], &self.options())
            .await
            .map_err(|e| AdminFailure::from_kafka("DeleteTopics", &e))?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, code)) => {
                    let failure = AdminFailure::from_code(code, format!("DeleteTopics: {code}"));
                    if failure.kind != FailureKind::UnknownTopic {
                        return Err(failure);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified() {
        let kind = |e: KafkaError| AdminFailure::from_kafka("op", &e).kind;
        // What librdkafka answers when the broker lacks CreatePartitions (nisshi).
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
}
