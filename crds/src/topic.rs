//! `StreamTopic`: a Kafka topic as a Kubernetes object.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    common::KafkaClusterSpec,
    validate::{FieldError, Validation},
};

/// Kafka's own limit on topic names (legal characters, at most 249 of them).
pub const TOPIC_NAME_PATTERN: &str = r"^[a-zA-Z0-9._-]{1,249}$";

/// Annotations users (or Argo CD actions) set on a StreamTopic.
pub mod annotation {
    /// `"true"`: reconciliation is suspended; the topic is left as it is and the
    /// resource reports `Reconciling` with reason `Paused`.
    pub const PAUSED: &str = "streamops.io/paused";
    /// `"false"`: the resource no longer manages the topic at all; deleting the
    /// resource never touches Kafka.
    pub const MANAGED: &str = "streamops.io/managed";
    /// `"true"`: an existing topic of the same name may be adopted. Without it
    /// an existing topic the operator did not create is refused (`Stalled`).
    pub const ADOPT: &str = "streamops.io/adopt";
    /// `"true"`: on deletion, drop the finalizer without touching Kafka. The
    /// escape hatch for a resource whose Kafka cluster is gone for good.
    pub const SKIP_KAFKA_DELETION: &str = "streamops.io/skip-kafka-deletion";
    /// Set by the operator, not users: the StreamJob whose autoscaler last
    /// raised `spec.partitions` (`spec.autoscaler.growSourcePartitions`).
    pub const PARTITIONS_GROWN_BY: &str = "streamops.io/partitions-grown-by";
}

/// A Kafka topic the operator creates, grows and keeps configured.
///
/// One-way: the resource wins. Out-of-band changes to the topic's managed
/// configs are reverted on the next resync; changes Kafka cannot do (fewer
/// partitions, a new name) are refused with `Stalled=True` and the topic is
/// left untouched.
// `printcolumn(...)` repeats keys such as `type_` by design; clippy reads them
// as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "streamops.io",
    version = "v1alpha1",
    kind = "StreamTopic",
    namespaced,
    status = "StreamTopicStatus",
    shortname = "stopic",
    shortname = "stt",
    category = "streamops",
    printcolumn(name = "Topic", type_ = "string", json_path = ".status.topicName"),
    printcolumn(name = "Partitions", type_ = "integer", json_path = ".status.partitions"),
    printcolumn(name = "RF", type_ = "integer", json_path = ".status.replicationFactor"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct StreamTopicSpec {
    /// Kafka topic name. Absent: `metadata.name`. Immutable once the topic
    /// exists (Kafka cannot rename topics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = TOPIC_NAME_PATTERN), length(max = 249))]
    pub topic_name: Option<String>,
    /// Number of partitions; can only grow.
    #[schemars(range(min = 1, max = 100000))]
    pub partitions: i32,
    /// Copies of each partition. Absent: the broker's `default.replication.factor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32767))]
    pub replication_factor: Option<i32>,
    /// Kafka topic configs (`retention.ms`, `cleanup.policy`, ...). Values are
    /// strings, as Kafka's admin API takes them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// Kafka cluster. Absent: the operator's default cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<KafkaClusterSpec>,
    /// What deleting this resource does to the topic. Absent: `Retain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the Kafka topic (the default: deleting data needs an explicit opt-in).
    #[default]
    Retain,
    /// Delete the Kafka topic, but only if the operator created it or it was
    /// explicitly adopted.
    Delete,
}

/// How the operator came to manage a topic; decides what it may delete and
/// which config keys it may remove.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TopicOwnership {
    /// The operator created the topic.
    Created,
    /// The topic existed and was adopted (annotation `streamops.io/adopt`).
    Adopted,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamTopicStatus {
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus conditions: `Ready`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The Kafka topic this resource manages (pinned once created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 249))]
    pub topic_name: Option<String>,
    /// Kafka's topic id, when the broker reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_id: Option<String>,
    /// Partitions the topic has in Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// Replication factor the topic has in Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i32>,
    /// Configs as last applied to Kafka by the operator.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// Config keys the operator itself set: only these are removed from the
    /// topic when they leave the spec (an adopted topic keeps its own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_config_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ownership: Option<TopicOwnership>,
}

impl StreamTopic {
    /// The Kafka topic name this resource asks for.
    pub fn kafka_topic_name(&self) -> String {
        self.spec
            .topic_name
            .clone()
            .or_else(|| self.metadata.name.clone())
            .unwrap_or_default()
    }

    /// The field [`Self::kafka_topic_name`] comes from, for messages:
    /// `spec.topicName`, or `metadata.name` when that is unset.
    pub fn topic_name_field(&self) -> &'static str {
        if self.spec.topic_name.is_some() {
            "spec.topicName"
        } else {
            "metadata.name"
        }
    }
}

impl StreamTopicSpec {
    pub fn deletion_policy(&self) -> DeletionPolicy {
        self.deletion_policy.unwrap_or_default()
    }
}

impl Validation for StreamTopicSpec {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Some(name) = &self.topic_name
            && (name == "." || name == "..")
        {
            errors.push(FieldError::new(
                "spec.topicName",
                "\".\" and \"..\" are not legal Kafka topic names",
            ));
        }
        for (key, value) in &self.config {
            let field = format!("spec.config[{key}]");
            if key.trim().is_empty() || key.chars().any(|c| c.is_whitespace()) {
                errors.push(FieldError::new(
                    field,
                    "config keys must be non-empty and contain no spaces",
                ));
            } else if value.is_empty() {
                errors.push(FieldError::new(
                    field,
                    "empty value: remove the key to fall back to the broker default",
                ));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(partitions: i32) -> StreamTopicSpec {
        StreamTopicSpec {
            topic_name: None,
            partitions,
            replication_factor: None,
            config: BTreeMap::new(),
            cluster: None,
            deletion_policy: None,
        }
    }

    #[test]
    fn topic_name_defaults_to_metadata_name() {
        let t = StreamTopic::new("orders", spec(3));
        assert_eq!(t.kafka_topic_name(), "orders");
        let mut named = StreamTopic::new("orders", spec(3));
        named.spec.topic_name = Some("shop.orders.v1".into());
        assert_eq!(named.kafka_topic_name(), "shop.orders.v1");
    }

    #[test]
    fn deletion_policy_defaults_to_retain() {
        assert_eq!(spec(1).deletion_policy(), DeletionPolicy::Retain);
    }

    #[test]
    fn empty_config_values_are_refused() {
        let mut s = spec(1);
        s.config.insert("retention.ms".into(), String::new());
        let errs = s.validate();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.config[retention.ms]");
    }
}
