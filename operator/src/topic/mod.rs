//! The StreamTopic controller: `plan` decides, `controller` observes and acts,
//! `conflict` settles two resources naming one topic.

pub mod conflict;
pub mod controller;
pub mod plan;

use kube::ResourceExt;
use streamops_crds::{KafkaClusterSpec, StreamTopic};

/// Whether annotation `key` is set to `value` (case-insensitive).
pub fn annotation_is(topic: &StreamTopic, key: &str, value: &str) -> bool {
    topic
        .annotations()
        .get(key)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
}

/// Identity of a Kafka cluster for conflict detection: the sorted, lower-cased
/// bootstrap list; empty for the operator's default cluster.
pub fn cluster_key(cluster: Option<&KafkaClusterSpec>) -> String {
    let Some(cluster) = cluster else {
        return String::new();
    };
    let mut servers: Vec<String> = cluster
        .bootstrap_servers
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    servers.sort();
    servers.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_key_ignores_order_and_spacing() {
        let spec = |b: &str| KafkaClusterSpec {
            bootstrap_servers: b.into(),
            tls: None,
            sasl: None,
        };
        assert_eq!(
            cluster_key(Some(&spec("B:1, a:2"))),
            cluster_key(Some(&spec("a:2,b:1")))
        );
        assert_eq!(cluster_key(None), "");
    }
}
