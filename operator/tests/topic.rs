//! StreamTopic controller against the real apiserver and broker. Needs
//! STREAMOPS_KUBECONFIG and STREAMOPS_BOOTSTRAP (see operator/README.md);
//! without them each test skips, saying so, unless STREAMOPS_REQUIRE_CLUSTER
//! is set (`make test`), when it fails.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::*;
use kube::ResourceExt;
use serde_json::json;
use streamops_crds::{KafkaClusterSpec, topic::TopicOwnership};
use streamops_operator::{config::TopicNamePolicy, kafka::ConfigChange};

/// Kafka's default `retention.ms` (7 days), which DescribeConfigs reports
/// for a topic that does not set it.
const KAFKA_DEFAULT_RETENTION_MS: &str = "604800000";

fn cfg(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_reverts_drift_removes_keys_and_deletes() {
    if !cluster_test(CLUSTER) {
        return;
    }
    let h = Harness::start().await;
    let topic = unique("orders");
    // retention.bytes differs from Kafka's default (-1); message.timestamp.type
    // is set to its default value (CreateTime), which DescribeConfigs reports
    // for every topic anyway: in sync from the start, and its drift reverted.
    let mut s = spec(
        &topic,
        2,
        &[
            ("retention.ms", "60000"),
            ("retention.bytes", "1048576"),
            ("message.timestamp.type", "CreateTime"),
        ],
    );
    s.deletion_policy = Some(streamops_crds::topic::DeletionPolicy::Delete);
    h.create("orders", s, &[]).await;

    let t = h.wait("orders", "Ready", is_ready).await;
    let status = t.status.clone().unwrap();
    assert_eq!(status.ownership, Some(TopicOwnership::Created));
    assert_eq!(status.topic_name.as_deref(), Some(topic.as_str()));
    assert_eq!(status.partitions, Some(2));
    assert_eq!(
        status.managed_config_keys,
        vec![
            "message.timestamp.type".to_string(),
            "retention.bytes".to_string(),
            "retention.ms".to_string()
        ]
    );
    assert!(t.finalizers().iter().any(|f| f == "streamops.io/topic"));
    let observed = h.kafka(&topic).await.expect("topic created");
    assert_eq!(observed.partitions, 2);
    assert_eq!(
        observed.config.get("retention.ms").map(String::as_str),
        Some("60000")
    );
    // Kafka reports defaults too: a key nobody set is there with its default.
    assert_eq!(
        observed.config.get("cleanup.policy").map(String::as_str),
        Some("delete")
    );
    h.wait_event("orders", "Created").await;

    // Out-of-band drift: one key changed, one removed (back to Kafka's
    // default), one default-valued key changed. The resync reverts all three.
    h.admin
        .alter_config(
            &topic,
            vec![
                ConfigChange::Set {
                    key: "retention.ms".into(),
                    value: "1".into(),
                },
                ConfigChange::Delete {
                    key: "retention.bytes".into(),
                },
                ConfigChange::Set {
                    key: "message.timestamp.type".into(),
                    value: "LogAppendTime".into(),
                },
            ],
        )
        .await
        .unwrap();
    h.wait_kafka(&topic, "drift reverted", |o| {
        o.is_some_and(|o| {
            o.config.get("retention.ms").map(String::as_str) == Some("60000")
                && o.config.get("retention.bytes").map(String::as_str) == Some("1048576")
                && o.config.get("message.timestamp.type").map(String::as_str) == Some("CreateTime")
        })
    })
    .await;

    // A key leaving the spec is removed (the operator set it): Kafka's
    // default is back. A new one is set.
    h.patch(
        "orders",
        json!({"spec": {"config": {"retention.bytes": null, "segment.ms": "3600000"}}}),
    )
    .await;
    h.wait_kafka(
        &topic,
        "retention.bytes back to its default, segment.ms set",
        |o| {
            o.is_some_and(|o| {
                o.config.get("retention.bytes").map(String::as_str) == Some("-1")
                    && o.config.get("segment.ms").map(String::as_str) == Some("3600000")
            })
        },
    )
    .await;
    let t = h.wait("orders", "Ready for generation 2", is_ready).await;
    assert_eq!(
        t.status.unwrap().managed_config_keys,
        vec![
            "message.timestamp.type".to_string(),
            "retention.ms".to_string(),
            "segment.ms".to_string()
        ]
    );

    // Metrics are served.
    let body = http_get(h.http_port, "/metrics").await;
    assert!(
        body.contains("streamops_reconciles_total{controller=\"streamtopic\",result=\"ok\"}"),
        "{body}"
    );
    assert!(
        body.contains("streamops_topics_managed{ownership=\"Created\"}"),
        "{body}"
    );
    assert!(
        body.contains("streamops_reconcile_duration_seconds_bucket"),
        "{body}"
    );
    assert!(http_get(h.http_port, "/healthz").await.contains("ok"));

    // deletionPolicy: Delete removes the topic it created.
    h.api.delete("orders", &Default::default()).await.unwrap();
    h.wait_gone("orders").await;
    h.wait_kafka(&topic, "topic deleted", |o| o.is_none()).await;
    h.finish(&[&topic]).await;
}

async fn http_get(port: u16, path: &str) -> String {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics server");
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_what_kafka_cannot_do() {
    if !cluster_test(CLUSTER) {
        return;
    }
    let h = Harness::start().await;
    let topic = unique("refuse");
    h.create("t", spec(&topic, 3, &[("retention.ms", "1000")]), &[])
        .await;
    // Ready, and the replication factor Kafka reports is in status (the
    // reconcile after the creation writes it): the admission rules read it.
    h.wait("t", "Ready with the topic's replication factor", |t| {
        is_ready(t) && t.status.as_ref().and_then(|s| s.replication_factor).is_some()
    })
    .await;

    // What Kafka cannot do is refused at admission now that the topic exists
    // (CEL rules reading the status the operator wrote), and Kafka is left
    // as it is.
    let refused = h.patch_refused("t", json!({"spec": {"partitions": 1}})).await;
    assert!(
        refused.contains("spec.partitions: Forbidden: cannot go below the topic's partition count"),
        "{refused}"
    );
    let refused = h
        .patch_refused("t", json!({"spec": {"partitions": 3, "replicationFactor": 2}}))
        .await;
    assert!(
        refused.contains("spec.replicationFactor: Forbidden: differs from the topic's replication factor"),
        "{refused}"
    );
    let refused = h
        .patch_refused("t", json!({"spec": {"topicName": format!("{topic}-renamed")}}))
        .await;
    assert!(
        refused.contains(&format!(
            "spec.topicName: Forbidden: the Kafka topic {topic} cannot be renamed"
        )),
        "{refused}"
    );
    assert!(h.kafka(&format!("{topic}-renamed")).await.is_none());
    assert_eq!(h.kafka(&topic).await.unwrap().partitions, 3);

    // The operator's own check, the second line, on what the apiserver lets
    // through: a topic adopted with more partitions than the spec asks.
    let adopted = unique("refuse-adopted");
    h.admin.create(&adopted, 4, None, &cfg(&[])).await.unwrap();
    h.create("a", spec(&adopted, 2, &[]), &[("streamops.io/adopt", "true")])
        .await;
    h.wait("a", "Stalled PartitionDecrease", |t| {
        is_stalled(t, "PartitionDecreaseUnsupported")
    })
    .await;
    h.wait_event("a", "PartitionDecreaseUnsupported").await;
    assert_eq!(h.kafka(&adopted).await.unwrap().partitions, 4);

    // Partition increase: CreatePartitions.
    h.patch("t", json!({"spec": {"topicName": topic, "partitions": 5}}))
        .await;
    let t = h
        .wait("t", "Ready with 5 partitions", |t| {
            is_ready(t) && t.status.as_ref().and_then(|s| s.partitions) == Some(5)
        })
        .await;
    assert_eq!(h.kafka(&topic).await.unwrap().partitions, 5);
    assert_eq!(t.status.unwrap().observed_generation, t.metadata.generation);

    // A config value the broker's own validation refuses: Stalled with the
    // broker's reason, nothing applied.
    h.patch(
        "t",
        json!({"spec": {"config": {"retention.ms": "1000", "cleanup.policy": "shred"}}}),
    )
    .await;
    let t = h
        .wait("t", "Stalled KafkaRejected (invalid config)", |t| {
            is_stalled(t, "KafkaRejected")
        })
        .await;
    let message = &condition(&t, "Stalled").unwrap().message;
    assert!(message.contains("shred"), "the broker's reason: {message}");
    assert_ne!(
        h.kafka(&topic)
            .await
            .unwrap()
            .config
            .get("cleanup.policy")
            .map(String::as_str),
        Some("shred")
    );
    h.patch("t", json!({"spec": {"config": {"cleanup.policy": null}}}))
        .await;
    h.wait("t", "Ready again", is_ready).await;

    // The broker's own refusal (replication factor above its maximum) keeps its message.
    let bad = unique("badrf");
    let mut s = spec(&bad, 1, &[]);
    s.replication_factor = Some(100);
    h.create("bad", s, &[]).await;
    let t = h
        .wait("bad", "Stalled KafkaRejected", |t| is_stalled(t, "KafkaRejected"))
        .await;
    let message = &condition(&t, "Stalled").unwrap().message;
    assert!(message.to_lowercase().contains("replication"), "{message}");
    assert_eq!(
        t.status.unwrap().ownership,
        None,
        "a topic that was not created is not owned"
    );
    assert!(h.kafka(&bad).await.is_none());
    h.finish(&[&topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopts_only_on_opt_in_and_keeps_foreign_settings() {
    if !cluster_test(CLUSTER) {
        return;
    }
    let h = Harness::start().await;
    let topic = unique("legacy");
    h.admin
        .create(
            &topic,
            2,
            None,
            &cfg(&[("retention.ms", "5000"), ("segment.ms", "777000")]),
        )
        .await
        .unwrap();
    let mut s = spec(
        &topic,
        2,
        &[("retention.ms", "5000"), ("cleanup.policy", "compact")],
    );
    s.deletion_policy = Some(streamops_crds::topic::DeletionPolicy::Retain);
    h.create("legacy", s, &[]).await;
    h.wait("legacy", "Stalled TopicExists", |t| {
        is_stalled(t, "TopicExistsNotAdopted")
    })
    .await;
    assert_eq!(
        h.kafka(&topic)
            .await
            .unwrap()
            .config
            .get("cleanup.policy")
            .map(String::as_str),
        Some("delete"),
        "refused topic was touched (Kafka's default is delete)"
    );

    h.annotate("legacy", "streamops.io/adopt", Some("true")).await;
    let t = h
        .wait("legacy", "Ready adopted", |t| {
            is_ready(t) && t.status.as_ref().unwrap().ownership == Some(TopicOwnership::Adopted)
        })
        .await;
    assert_eq!(
        t.status.unwrap().managed_config_keys,
        vec!["cleanup.policy".to_string()]
    );
    h.wait_event("legacy", "Adopted").await;

    // Both keys leave the spec: only the operator's own goes.
    h.patch("legacy", json!({"spec": {"config": null}})).await;
    h.wait_kafka(&topic, "cleanup.policy removed, own settings kept", |o| {
        o.is_some_and(|o| {
            o.config.get("cleanup.policy").map(String::as_str) == Some("delete")
                && o.config.get("retention.ms").map(String::as_str) == Some("5000")
                && o.config.get("segment.ms").map(String::as_str) == Some("777000")
        })
    })
    .await;

    // Retain: deleting the resource keeps the topic.
    h.api.delete("legacy", &Default::default()).await.unwrap();
    h.wait_gone("legacy").await;
    assert!(h.kafka(&topic).await.is_some());
    h.finish(&[&topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_unmanaged_and_conflicting_resources() {
    if !cluster_test(CLUSTER) {
        return;
    }
    let h = Harness::start().await;
    let paused = unique("paused");
    h.create(
        "paused",
        spec(&paused, 1, &[]),
        &[("streamops.io/paused", "true")],
    )
    .await;
    h.wait("paused", "Reconciling Paused", |t| is_reconciling(t, "Paused"))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        h.kafka(&paused).await.is_none(),
        "paused resource created its topic"
    );
    h.annotate("paused", "streamops.io/paused", None).await;
    h.wait("paused", "Ready after unpause", is_ready).await;
    assert!(h.kafka(&paused).await.is_some());

    // Unmanaged: config changes are not applied.
    h.annotate("paused", "streamops.io/managed", Some("false")).await;
    h.wait("paused", "Unmanaged", |t| {
        condition(t, "Ready").is_some_and(|c| c.reason == "Unmanaged")
    })
    .await;
    h.patch("paused", json!({"spec": {"config": {"retention.ms": "4242"}}}))
        .await;
    h.wait("paused", "Unmanaged for new generation", |t| {
        condition(t, "Ready")
            .is_some_and(|c| c.reason == "Unmanaged" && c.observed_generation == t.metadata.generation)
    })
    .await;
    assert_eq!(
        h.kafka(&paused)
            .await
            .unwrap()
            .config
            .get("retention.ms")
            .map(String::as_str),
        Some(KAFKA_DEFAULT_RETENTION_MS),
        "an unmanaged resource's config was applied"
    );

    // Two resources, one topic: the older wins.
    let shared = unique("shared");
    h.create("first", spec(&shared, 1, &[]), &[]).await;
    h.wait("first", "Ready", is_ready).await;
    h.create("second", spec(&shared, 1, &[("retention.ms", "1")]), &[])
        .await;
    let t = h
        .wait("second", "Stalled Conflict", |t| is_stalled(t, "Conflict"))
        .await;
    let message = &condition(&t, "Stalled").unwrap().message;
    assert!(message.contains(&format!("{}/first", h.ns)), "{message}");
    assert_eq!(
        h.kafka(&shared)
            .await
            .unwrap()
            .config
            .get("retention.ms")
            .map(String::as_str),
        Some(KAFKA_DEFAULT_RETENTION_MS),
        "the losing resource's config was applied"
    );
    h.finish(&[&paused, &shared]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_kafka_is_reconciling_and_unowned_topic_deletes_freely() {
    if !cluster_test(CLUSTER) {
        return;
    }
    let h = Harness::start().await;
    let topic = unique("nowhere");
    let mut s = spec(&topic, 1, &[]);
    s.deletion_policy = Some(streamops_crds::topic::DeletionPolicy::Delete);
    s.cluster = Some(KafkaClusterSpec {
        bootstrap_servers: format!("127.0.0.1:{}", free_port()),
        tls: None,
        sasl: None,
    });
    h.create("t", s, &[]).await;
    let t = h
        .wait("t", "Reconciling KafkaUnavailable", |t| {
            is_reconciling(t, "KafkaUnavailable")
        })
        .await;
    assert_eq!(t.status.unwrap().ownership, None);
    // Nothing was ever created, so there is nothing to delete in Kafka.
    h.api.delete("t", &Default::default()).await.unwrap();
    h.wait_gone("t").await;
    h.finish(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_is_reconciling_and_recovers() {
    if !cluster_test(CLUSTER) {
        return;
    }
    let h = Harness::start().await;
    let port = free_port();
    let mut broker = OwnBroker::start(port, "").await;
    let topic = unique("outage");
    let mut s = spec(&topic, 1, &[("retention.ms", "12345")]);
    s.cluster = Some(KafkaClusterSpec {
        bootstrap_servers: format!("127.0.0.1:{port}"),
        tls: None,
        sasl: None,
    });
    h.create("t", s, &[]).await;
    h.wait("t", "Ready", is_ready).await;

    broker.stop().await;
    h.wait("t", "Reconciling KafkaUnavailable", |t| {
        is_reconciling(t, "KafkaUnavailable")
    })
    .await;

    // Back: Ready and in sync again.
    broker.resume().await;
    h.wait("t", "Ready after recovery", |t| {
        is_ready(t) && condition(t, "Ready").is_some_and(|c| c.reason == "Synced")
    })
    .await;
    let own = admin(&format!("127.0.0.1:{port}"));
    let observed = own.describe(&topic).await.unwrap().expect("topic still there");
    assert_eq!(
        observed.config.get("retention.ms").map(String::as_str),
        Some("12345")
    );

    // Deleting (policy Delete) while the broker is down: the finalizer stays,
    // the resource says why and names the escape hatch; no silent give-up.
    h.patch("t", json!({"spec": {"deletionPolicy": "Delete"}})).await;
    h.wait("t", "Ready with Delete policy", is_ready).await;
    broker.stop().await;
    h.api.delete("t", &Default::default()).await.unwrap();
    let t = h
        .wait("t", "DeletionBlocked", |t| {
            condition(t, "Ready").is_some_and(|c| c.reason == "DeletionBlocked")
        })
        .await;
    assert!(
        condition(&t, "Ready")
            .unwrap()
            .message
            .contains("streamops.io/skip-kafka-deletion")
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        h.api.get_opt("t").await.unwrap().is_some(),
        "finalizer dropped silently"
    );
    h.wait_event("t", "DeletionBlocked").await;
    h.annotate("t", "streamops.io/skip-kafka-deletion", Some("true"))
        .await;
    h.wait_gone("t").await;
    h.finish(&[]).await;
}

/// Under `namespacePrefix`, a StreamTopic naming a topic outside
/// `<namespace>.` is refused before anything reaches Kafka, naming the field
/// and the rule; the namespace's own names still work, and deleting the
/// refused resource touches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_prefix_policy_refuses_other_names_and_creates_nothing() {
    if !cluster_test(CLUSTER) {
        return;
    }
    let h = Harness::start_with(|c| c.topic_name_policy = TopicNamePolicy::NamespacePrefix).await;
    let foreign = unique("other-team.orders");
    let mut s = spec(&foreign, 1, &[]);
    s.deletion_policy = Some(streamops_crds::topic::DeletionPolicy::Delete);
    h.create("foreign", s, &[]).await;
    let t = h
        .wait("foreign", "Stalled TopicNotAllowed", |t| {
            is_stalled(t, "TopicNotAllowed")
        })
        .await;
    let message = &condition(&t, "Stalled").unwrap().message;
    assert!(
        message.starts_with(&format!("spec.topicName {foreign:?}")),
        "{message}"
    );
    assert!(message.contains(&format!("namespace {:?}", h.ns)), "{message}");
    assert!(
        message.contains(&format!("\"{}.\"", h.ns)),
        "names the allowed prefix: {message}"
    );
    assert_eq!(t.status.unwrap().ownership, None);
    h.wait_event("foreign", "TopicNotAllowed").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        h.kafka(&foreign).await.is_none(),
        "a refused resource created its topic"
    );

    // Without spec.topicName the Kafka name is metadata.name, and the
    // message says so.
    let bare = unique("orders");
    let mut s = spec(&bare, 1, &[]);
    s.topic_name = None;
    h.create(&bare, s, &[]).await;
    let t = h
        .wait(&bare, "Stalled TopicNotAllowed", |t| {
            is_stalled(t, "TopicNotAllowed")
        })
        .await;
    let message = &condition(&t, "Stalled").unwrap().message;
    assert!(
        message.starts_with(&format!("metadata.name {bare:?}")),
        "{message}"
    );
    assert!(h.kafka(&bare).await.is_none());

    // The namespace's own names are managed as usual.
    let own = format!("{}.{}", h.ns, unique("orders"));
    h.create("own", spec(&own, 1, &[]), &[]).await;
    h.wait("own", "Ready", is_ready).await;
    assert!(h.kafka(&own).await.is_some());

    // Deleting the refused resource (deletionPolicy: Delete) drops its
    // finalizer without a Kafka call.
    h.api.delete("foreign", &Default::default()).await.unwrap();
    h.wait_gone("foreign").await;
    assert!(h.kafka(&foreign).await.is_none());
    h.finish(&[&own]).await;
}

/// A StreamJob's internal topic (another namespace's job, here) cannot be
/// adopted, changed or deleted through a StreamTopic, even under the default
/// policy `any` and with `streamops.io/adopt: "true"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_topic_cannot_be_adopted_changed_or_deleted() {
    if !cluster_test(CLUSTER) {
        return;
    }
    let h = Harness::start().await;
    let internal = streamops_crds::runtime_api::control_topic("other-team", &unique("job"));
    h.admin
        .create(&internal, 2, None, &cfg(&[("cleanup.policy", "compact")]))
        .await
        .unwrap();
    let mut s = spec(
        &internal,
        3,
        &[("cleanup.policy", "delete"), ("retention.ms", "1000")],
    );
    s.deletion_policy = Some(streamops_crds::topic::DeletionPolicy::Delete);
    h.create("grab", s, &[("streamops.io/adopt", "true")]).await;
    let t = h
        .wait("grab", "Stalled TopicNotAllowed", |t| {
            is_stalled(t, "TopicNotAllowed")
        })
        .await;
    let message = &condition(&t, "Stalled").unwrap().message;
    assert!(message.contains("internal topic space"), "{message}");
    assert!(
        message.starts_with(&format!("spec.topicName {internal:?}")),
        "{message}"
    );
    assert_eq!(t.status.unwrap().ownership, None, "not adopted");
    h.wait_event("grab", "TopicNotAllowed").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let untouched = |o: &streamops_operator::kafka::ObservedTopic| {
        o.partitions == 2
            && o.config.get("cleanup.policy").map(String::as_str) == Some("compact")
            && o.config.get("retention.ms").map(String::as_str) == Some(KAFKA_DEFAULT_RETENTION_MS)
    };
    let observed = h.kafka(&internal).await.expect("the internal topic");
    assert!(
        untouched(&observed),
        "the internal topic was changed: {observed:?}"
    );

    // Deleting the resource leaves the topic.
    h.api.delete("grab", &Default::default()).await.unwrap();
    h.wait_gone("grab").await;
    let observed = h.kafka(&internal).await.expect("the internal topic was deleted");
    assert!(untouched(&observed), "{observed:?}");
    h.finish(&[&internal]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_replica_leads() {
    if !cluster_test(CLUSTER) {
        return;
    }
    use streamops_operator::leader::LeaderElector;
    let client = client().await;
    let lease = unique("lease");
    let ns = "default";
    let d = Duration::from_secs(4);
    let r = Duration::from_millis(500);
    let mut a = LeaderElector::new(client.clone(), ns, &lease, "replica-a", d, r);
    let mut b = LeaderElector::new(client.clone(), ns, &lease, "replica-b", d, r);
    tokio::time::timeout(Duration::from_secs(5), a.acquire())
        .await
        .expect("a leads");
    // While a renews, b cannot acquire.
    let holding = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(6), a.hold())
            .await
            .expect_err("a keeps the lease");
        a
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(6), b.acquire())
            .await
            .is_err(),
        "b led while a held the lease"
    );
    let mut a = holding.await.unwrap();
    // a releases: b takes over promptly.
    a.release().await;
    tokio::time::timeout(Duration::from_secs(5), b.acquire())
        .await
        .expect("b leads after release");
    // a, now without the lease, sees it lost.
    tokio::time::timeout(Duration::from_secs(5), a.hold())
        .await
        .expect("a notices it lost the lease");
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> = kube::Api::namespaced(client, ns);
    let _ = leases.delete(&lease, &Default::default()).await;
}
