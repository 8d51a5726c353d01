//! The StreamTopic controller against Apache Kafka's three-broker cluster
//! (`e2e/cluster/cluster.sh broker up --brokers 3`). Ignored unless asked
//! for: `e2e/test.sh` runs it with `--ignored`, `STREAMOPS_BROKERS=3` and
//! the apiserver of the api stage (STREAMOPS_KUBECONFIG).

mod common;

use std::{path::PathBuf, process::Command};

use common::*;

fn broker(action: &str, which: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../e2e/cluster/cluster.sh");
    let out = Command::new(script)
        .args(["broker", action, which])
        .output()
        .expect("running e2e/cluster/cluster.sh");
    assert!(
        out.status.success(),
        "cluster.sh broker {action} {which}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A topic with replication factor 3 is created as asked; with every broker
/// down the resource says `Ready=False` (Reconciling, KafkaUnavailable), and
/// once the brokers are back it is Ready and in sync again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Apache Kafka's three-broker cluster: STREAMOPS_BROKERS=3 (run by e2e/test.sh)"]
async fn replicated_topic_through_a_full_outage() {
    assert_eq!(
        std::env::var("STREAMOPS_BROKERS").as_deref(),
        Ok("3"),
        "start the three-broker cluster (e2e/cluster/cluster.sh broker up --brokers 3) and set STREAMOPS_BROKERS=3"
    );
    let h = Harness::start().await;
    let topic = unique("replicated");
    let mut s = spec(&topic, 3, &[("min.insync.replicas", "2")]);
    s.replication_factor = Some(3);
    h.create("t", s, &[]).await;
    let t = h.wait("t", "Ready", is_ready).await;
    assert_eq!(t.status.unwrap().replication_factor, Some(3));
    // Ready means the operator's own client saw the topic; with three brokers
    // the one this test's client asks may learn of it a moment later (KRaft
    // metadata reaches each broker on its own), hence a wait, not a read.
    h.wait_kafka(&topic, "3 partitions with replication factor 3", |o| {
        o.is_some_and(|o| (o.partitions, o.replication_factor) == (3, 3))
    })
    .await;

    broker("stop", "all");
    let t = h
        .wait("t", "Reconciling KafkaUnavailable", |t| {
            is_reconciling(t, "KafkaUnavailable")
        })
        .await;
    assert_eq!(condition(&t, "Ready").map(|c| c.status.as_str()), Some("False"));
    broker("start", "all");
    h.wait("t", "Ready after the outage", |t| {
        is_ready(t) && condition(t, "Ready").is_some_and(|c| c.reason == "Synced")
    })
    .await;
    h.wait_kafka(
        &topic,
        "the topic with min.insync.replicas=2 after the outage",
        |o| o.is_some_and(|o| o.config.get("min.insync.replicas").map(String::as_str) == Some("2")),
    )
    .await;
    h.finish(&[&topic]).await;
}
