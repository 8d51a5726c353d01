//! StreamJob controller against the real apiserver and broker (control plane
//! only: no pod ever runs here, so these tests prove the object graph, the
//! decisions before pods exist and status; the upgrade state machine is
//! proven by the unit tests of `job::plan`, and with real pods by the e2e
//! tests). Needs STREAMOPS_KUBECONFIG and STREAMOPS_BOOTSTRAP (see
//! operator/README.md); without them each test skips, saying so, unless
//! STREAMOPS_REQUIRE_CLUSTER is set (`make test`), when it fails.

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{ConfigMap, Secret, Service},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use streamops_crds::{
    KafkaClusterSpec, StreamJob, StreamJobSpec,
    job::{IntentKind, JobPhase},
};

const IMAGE: &str = "streamops-runtime:test";

fn job_spec(source: &str, sink: &str, parallelism: Option<i32>) -> StreamJobSpec {
    let mut spec: StreamJobSpec = serde_json::from_value(json!({
        "source": {"topics": [source], "eventTime": {"field": "record.ts"}},
        "pipeline": {
            "keyBy": ["record.user_id"],
            "window": {"type": "tumbling", "size": "10s"},
            "aggregations": [{"name": "clicks", "function": "count"}]
        },
        "sink": {"topic": sink},
        "resources": {"requests": {"cpu": "100m"}},
        "podTemplate": {"metadata": {"labels": {"team": "ads"}}}
    }))
    .expect("spec");
    spec.parallelism = parallelism;
    spec
}

async fn start() -> Harness {
    Harness::start_with(|c| c.runtime_image = Some(IMAGE.into())).await
}

fn jobs(h: &Harness) -> Api<StreamJob> {
    Api::namespaced(h.client.clone(), &h.ns)
}

/// A merge patch of a StreamJob, as `kubectl patch --type=merge` would send.
async fn patch_job(h: &Harness, name: &str, patch: serde_json::Value) {
    jobs(h)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch StreamJob");
}

async fn create_job(h: &Harness, name: &str, spec: StreamJobSpec) -> StreamJob {
    jobs(h)
        .create(&PostParams::default(), &StreamJob::new(name, spec))
        .await
        .expect("create StreamJob")
}

async fn wait_job(h: &Harness, name: &str, what: &str, pred: impl Fn(&StreamJob) -> bool) -> StreamJob {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let current = jobs(h).get_opt(name).await.expect("get StreamJob");
        if let Some(j) = &current
            && pred(j)
        {
            return j.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} on {}/{name}; last status: {:#?}",
            h.ns,
            current.map(|j| j.status)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn wait_some<K>(api: &Api<K>, name: &str) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(o) = api.get_opt(name).await.expect("get") {
            return o;
        }
        assert!(Instant::now() < deadline, "{name} never appeared");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn job_condition(j: &StreamJob, type_: &str) -> Option<(String, String)> {
    j.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True" && c.observed_generation == j.metadata.generation)
        .map(|c| (c.reason.clone(), c.message.clone()))
}

fn not_ready(j: &StreamJob) -> bool {
    j.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "False")
    })
}

/// Two Ready StreamTopics: `clicks` (source) and `out` (sink).
async fn topics(h: &Harness, source_partitions: i32) -> (String, String) {
    let (source, sink) = (unique("clicks"), unique("out"));
    h.create("clicks", spec(&source, source_partitions, &[]), &[])
        .await;
    h.create("out", spec(&sink, 1, &[]), &[]).await;
    h.wait("clicks", "Ready", is_ready).await;
    h.wait("out", "Ready", is_ready).await;
    (source, sink)
}

fn owned_by(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, job: &StreamJob) -> bool {
    meta.owner_references.iter().flatten().any(|o| {
        o.kind == "StreamJob" && Some(&o.uid) == job.metadata.uid.as_ref() && o.controller == Some(true)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_graph_owner_refs_parallelism_cap_and_status() {
    if !cluster_test(CLUSTER) {
        return;
    }
    let h = start().await;
    let (source, sink) = topics(&h, 8).await;
    let job = create_job(&h, "cpu", job_spec("clicks", "out", Some(4))).await;

    // The StatefulSet: Parallel, OnDelete, M = min(8, 4), hardened, owned.
    let sets: Api<StatefulSet> = Api::namespaced(h.client.clone(), &h.ns);
    let sts = wait_some(&sets, "cpu").await;
    let v = serde_json::to_value(&sts).unwrap();
    assert!(owned_by(&sts.metadata, &job));
    assert_eq!(v["spec"]["replicas"], 4);
    assert_eq!(v["spec"]["podManagementPolicy"], "Parallel");
    assert_eq!(v["spec"]["updateStrategy"]["type"], "OnDelete");
    assert_eq!(v["spec"]["serviceName"], "cpu");
    let pod = &v["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["team"], "ads", "podTemplate merged");
    assert_eq!(pod["metadata"]["labels"]["streamops.io/job"], "cpu");
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["image"], IMAGE);
    assert_eq!(c["args"], json!(["run"]));
    assert_eq!(c["resources"]["requests"]["cpu"], "100m");
    assert_eq!(c["securityContext"]["runAsUser"], 65532);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    let env: Vec<&Value> = c["env"].as_array().unwrap().iter().collect();
    assert!(
        env.iter()
            .any(|e| e["name"] == "STREAMOPS_KAFKA_BOOTSTRAP" && e["value"] == h.bootstrap.as_str())
    );

    // job.json names the Kafka topics resolved from the StreamTopics.
    let cms: Api<ConfigMap> = Api::namespaced(h.client.clone(), &h.ns);
    let cm = wait_some(&cms, "cpu-config").await;
    assert!(owned_by(&cm.metadata, &job));
    let config: Value = serde_json::from_str(&cm.data.unwrap()["job.json"]).unwrap();
    assert_eq!(config["parallelism"], 4);
    assert_eq!(config["uid"], job.metadata.uid.clone().unwrap().as_str());
    assert_eq!(config["generation"], 1);
    assert_eq!(
        config["topics"]["source"],
        json!([{"topic": source, "partitions": 8}])
    );
    assert_eq!(config["topics"]["sink"], sink.as_str());
    let control = format!("streamops.{}.cpu.checkpoints", h.ns);
    let repartition = format!("streamops.{}.cpu.repartition", h.ns);
    assert_eq!(config["topics"]["control"], control.as_str());
    assert_eq!(config["restore"]["savepoint"], Value::Null);
    assert_eq!(config["spec"]["upgradeMode"], "savepoint", "defaulted spec");

    // Headless Service and the admin token Secret.
    let services: Api<Service> = Api::namespaced(h.client.clone(), &h.ns);
    let svc = wait_some(&services, "cpu").await;
    assert!(owned_by(&svc.metadata, &job));
    assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
    let secret = wait_some(&secrets, "cpu-admin").await;
    assert!(owned_by(&secret.metadata, &job));
    let token = secret.data.unwrap()["token"].0.clone();
    assert_eq!(token.len(), 64);

    // The NetworkPolicy: the job's pods, ingress only, the admin port from
    // the operator's pods (the harness's defaults) and namespace.
    let policies: Api<NetworkPolicy> = Api::namespaced(h.client.clone(), &h.ns);
    let policy = wait_some(&policies, "cpu").await;
    assert!(owned_by(&policy.metadata, &job));
    let p = serde_json::to_value(&policy).unwrap();
    assert_eq!(
        p["spec"]["podSelector"]["matchLabels"],
        json!({"streamops.io/job": "cpu"})
    );
    assert_eq!(p["spec"]["policyTypes"], json!(["Ingress"]));
    let ingress = p["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 2);
    assert_eq!(
        ingress[0]["from"][0]["podSelector"]["matchLabels"],
        json!({"app.kubernetes.io/name": "streamops-operator"})
    );
    assert!(
        ingress
            .iter()
            .all(|r| r["ports"] == json!([{"port": 8080, "protocol": "TCP"}]))
    );

    // Internal topics: P partitions each, the control topic compacted.
    h.wait_kafka(&control, "control topic", |o| {
        o.is_some_and(|o| o.partitions == 8)
    })
    .await;
    h.wait_kafka(&repartition, "repartition topic", |o| {
        o.is_some_and(|o| o.partitions == 8)
    })
    .await;
    let observed = h.kafka(&control).await.unwrap();
    assert_eq!(
        observed.config.get("cleanup.policy").map(String::as_str),
        Some("compact")
    );

    // Status: the write-ahead intent of the first deployment; no pods run on
    // a control-plane-only cluster, so it stays Deploying (Reconciling).
    // (The step that requests the pods says "starting 4 pods"; the next one
    // reports progress.)
    let j = wait_job(&h, "cpu", "Deploying with pods requested", |j| {
        j.status.as_ref().is_some_and(|s| {
            s.phase == Some(JobPhase::Deploying)
                && s.upgrade.as_ref().is_some_and(|i| i.rollout_started.is_some())
        }) && job_condition(j, "Reconciling").is_some_and(|(_, m)| m.contains("0/4"))
    })
    .await;
    let status = j.status.clone().unwrap();
    assert_eq!(status.observed_generation, Some(1));
    let intent = status.upgrade.unwrap();
    assert_eq!(intent.kind, Some(IntentKind::Deploy));
    assert_eq!(intent.parallelism, Some(4));
    assert_eq!(intent.source_partitions, Some(8));
    let (reason, message) = job_condition(&j, "Reconciling").expect("Reconciling");
    assert_eq!(reason, "Deploying");
    assert!(message.contains("0/4"), "{message}");
    assert!(j.finalizers().iter().any(|f| f == "streamops.io/job"));
    h.wait_event("cpu", "Deploying").await;

    // A token is created once: the next reconciles keep it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = secrets.get("cpu-admin").await.unwrap();
    assert_eq!(again.data.unwrap()["token"].0, token);

    // Deleting the job deletes its internal topics (finalizer).
    jobs(&h).delete("cpu", &Default::default()).await.unwrap();
    wait_job_gone(&h, "cpu").await;
    h.wait_kafka(&control, "control topic deleted", |o| o.is_none())
        .await;
    h.wait_kafka(&repartition, "repartition topic deleted", |o| o.is_none())
        .await;
    h.finish(&[&source, &sink]).await;
}

/// Kafka refuses a producer whose `transaction.timeout.ms` exceeds the
/// broker's `transaction.max.timeout.ms`. A task's transaction now holds
/// only its held outputs, the marker and the commit, so the interval and the
/// savepoint timeout no longer count (a 45 s interval and a 60 s savepoint
/// timeout were refused under a 60 s maximum); only a broker whose maximum
/// is below what a commit may need refuses exactly once, before anything
/// exists, and at least once runs there. Against a real broker whose
/// maximum is lowered to 60 s, then to 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_transactions_cannot_fit_the_broker_is_stalled_before_it_starts() {
    if !cluster_test(CLUSTER) {
        return;
    }
    let h = start().await;
    let sets: Api<StatefulSet> = Api::namespaced(h.client.clone(), &h.ns);
    let cms: Api<ConfigMap> = Api::namespaced(h.client.clone(), &h.ns);
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
    let mut brokers = Vec::new();
    for (max, job, fits) in [(60_000, "fits", true), (10_000, "slow", false)] {
        let broker = OwnBroker::start(free_port(), &format!("transaction.max.timeout.ms={max}")).await;
        let cluster = KafkaClusterSpec {
            bootstrap_servers: broker.bootstrap(),
            tls: None,
            sasl: None,
        };
        let (source, sink) = (format!("clicks-{job}"), format!("out-{job}"));
        for (name, partitions) in [(&source, 2), (&sink, 1)] {
            let mut s = spec(&unique(name), partitions, &[]);
            s.cluster = Some(cluster.clone());
            h.create(name, s, &[]).await;
            h.wait(name, "Ready", is_ready).await;
        }
        let mut s = job_spec(&source, &sink, None);
        s.cluster = Some(cluster.clone());
        s.checkpoint = Some(serde_json::from_value(json!({"interval": "45s"})).unwrap());
        s.upgrade = Some(serde_json::from_value(json!({"savepointTimeout": "60s"})).unwrap());
        create_job(&h, job, s).await;
        let deploying =
            |j: &StreamJob| job_condition(j, "Reconciling").is_some_and(|(r, _)| r == "Deploying");
        if fits {
            wait_some(&sets, job).await;
            wait_job(&h, job, "Deploying under a 60 s maximum", deploying).await;
        } else {
            let j = wait_job(&h, job, "Stalled on the broker's maximum", |j: &StreamJob| {
                job_condition(j, "Stalled").is_some_and(|(r, m)| {
                    r == "TransactionLimitTooLow" && m.starts_with("spec.checkpoint.guarantee")
                })
            })
            .await;
            let (_, message) = job_condition(&j, "Stalled").unwrap();
            assert!(
                message.contains("transaction.max.timeout.ms is 10000 ms"),
                "{message}"
            );
            h.wait_event(job, "TransactionLimitTooLow").await;
            assert!(sets.get_opt("slow").await.unwrap().is_none());
            assert!(cms.get_opt("slow-config").await.unwrap().is_none());
            assert!(secrets.get_opt("slow-admin").await.unwrap().is_none());
            let own = admin(&broker.bootstrap());
            for topic in [
                streamops_crds::runtime_api::repartition_topic(&h.ns, "slow"),
                streamops_crds::runtime_api::control_topic(&h.ns, "slow"),
            ] {
                assert!(
                    own.describe(&topic).await.unwrap().is_none(),
                    "{topic} was created"
                );
            }
            // At least once writes no transaction: it runs there.
            patch_job(
                &h,
                job,
                json!({"spec": {"checkpoint": {"guarantee": "atLeastOnce"}}}),
            )
            .await;
            wait_some(&sets, job).await;
            wait_job(&h, job, "Deploying at least once", deploying).await;
        }
        jobs(&h).delete(job, &Default::default()).await.unwrap();
        wait_job_gone(&h, job).await;
        brokers.push(broker);
    }
    h.finish(&[]).await;
    drop(brokers);
}

async fn wait_job_gone(h: &Harness, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while jobs(h).get_opt(name).await.expect("get").is_some() {
        assert!(Instant::now() < deadline, "{name} still exists");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_topics_then_converges_and_never_exceeds_partitions() {
    if !cluster_test(CLUSTER) {
        return;
    }
    let h = start().await;
    // Job first, as a GitOps sync may apply it: no topics yet.
    create_job(&h, "early", job_spec("clicks", "out", Some(20))).await;
    let j = wait_job(&h, "early", "TopicNotReady", |j| {
        job_condition(j, "Reconciling").is_some_and(|(r, _)| r == "TopicNotReady")
    })
    .await;
    let (_, message) = job_condition(&j, "Reconciling").unwrap();
    assert!(message.contains("\"clicks\" not found"), "{message}");
    let sets: Api<StatefulSet> = Api::namespaced(h.client.clone(), &h.ns);
    assert!(
        sets.get_opt("early").await.unwrap().is_none(),
        "nothing runs before its topics"
    );

    // The topics arrive (3 partitions): the job converges without a touch,
    // with 3 pods although it allows 20.
    let (source, sink) = topics(&h, 3).await;
    let sts = wait_some(&sets, "early").await;
    assert_eq!(sts.spec.unwrap().replicas, Some(3));
    let j = wait_job(&h, "early", "Deploying", |j| {
        job_condition(j, "Reconciling").is_some_and(|(r, _)| r == "Deploying")
    })
    .await;
    assert_eq!(j.status.unwrap().upgrade.unwrap().parallelism, Some(3));
    jobs(&h).delete("early", &Default::default()).await.unwrap();
    wait_job_gone(&h, "early").await;
    h.finish(&[&source, &sink]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_that_does_not_compile_is_stalled_and_creates_nothing() {
    if !cluster_test(CLUSTER) {
        return;
    }
    let h = start().await;
    let (source, sink) = topics(&h, 2).await;
    // Sink == source: refused by the apiserver (a CEL rule of the CRD).
    match jobs(&h)
        .create(
            &PostParams::default(),
            &StreamJob::new("loop", job_spec("clicks", "clicks", None)),
        )
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            assert!(
                s.message
                    .contains("spec.sink.topic: Invalid value: the sink is also a source topic"),
                "{}",
                s.message
            );
        }
        other => panic!("a job whose sink is its source was not refused: {other:?}"),
    }
    // What CEL cannot say is the operator's to refuse (validate()): a pod
    // template outside the allow-list is Stalled and creates nothing.
    // (job specs name StreamTopic resources: "clicks" and "out", as topics() made them)
    let mut widened = job_spec("clicks", "out", None);
    widened.pod_template = Some(json!({"spec": {"hostNetwork": true}}));
    create_job(&h, "loop", widened).await;
    let j = wait_job(&h, "loop", "Stalled", |j| job_condition(j, "Stalled").is_some()).await;
    let (reason, message) = job_condition(&j, "Stalled").unwrap();
    assert_eq!(reason, "InvalidSpec");
    assert!(message.contains("spec.podTemplate.spec.hostNetwork"), "{message}");
    assert!(not_ready(&j), "{:?}", j.status);
    h.wait_event("loop", "InvalidSpec").await;
    let sets: Api<StatefulSet> = Api::namespaced(h.client.clone(), &h.ns);
    let cms: Api<ConfigMap> = Api::namespaced(h.client.clone(), &h.ns);
    assert!(sets.get_opt("loop").await.unwrap().is_none());
    assert!(cms.get_opt("loop-config").await.unwrap().is_none());
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
    assert!(secrets.get_opt("loop-admin").await.unwrap().is_none());

    // Fixing the spec converges.
    patch_job(&h, "loop", json!({"spec": {"podTemplate": null}})).await;
    wait_some(&sets, "loop").await;
    let j = wait_job(&h, "loop", "Deploying gen 2", |j| {
        job_condition(j, "Reconciling").is_some_and(|(r, _)| r == "Deploying")
    })
    .await;
    assert_eq!(j.status.unwrap().observed_generation, Some(2));
    jobs(&h).delete("loop", &Default::default()).await.unwrap();
    wait_job_gone(&h, "loop").await;

    // A pod template that would widen the pod (host network, a hostPath
    // volume, a privileged container) is refused, naming each field, and no
    // object of the job reaches the cluster.
    let mut hostile = job_spec(&source, &sink, None);
    hostile.pod_template = Some(json!({"spec": {
        "hostNetwork": true,
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        "containers": [{"name": "runtime", "securityContext": {"privileged": true}}],
    }}));
    create_job(&h, "hostile", hostile).await;
    let j = wait_job(&h, "hostile", "Stalled", |j| {
        job_condition(j, "Stalled").is_some()
    })
    .await;
    let (reason, message) = job_condition(&j, "Stalled").unwrap();
    assert_eq!(reason, "InvalidSpec");
    for field in [
        "spec.podTemplate.spec.hostNetwork",
        "spec.podTemplate.spec.volumes[0].hostPath",
        "spec.podTemplate.spec.containers[0].securityContext",
    ] {
        assert!(message.contains(field), "{field} not named: {message}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(sets.get_opt("hostile").await.unwrap().is_none());
    assert!(cms.get_opt("hostile-config").await.unwrap().is_none());
    assert!(secrets.get_opt("hostile-admin").await.unwrap().is_none());
    jobs(&h).delete("hostile", &Default::default()).await.unwrap();
    wait_job_gone(&h, "hostile").await;
    h.finish(&[&source, &sink]).await;
}

/// A job whose checkpoint storage or savepoint lies outside its own
/// `<default>/<namespace>/<job>` (here: another job's) is refused, naming the
/// field, and nothing of it reaches the cluster or Kafka; a location below
/// its own root starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_pointing_at_another_jobs_storage_is_stalled_and_creates_nothing() {
    if !cluster_test(CLUSTER) {
        return;
    }
    let h = start().await;
    let (source, sink) = topics(&h, 2).await;
    let root = streamops_operator::OperatorConfig::default().checkpoint_storage;
    let other = format!("{root}/{}/other-job", h.ns);
    let mut s = job_spec("clicks", "out", None);
    s.checkpoint = Some(serde_json::from_value(json!({"storage": other})).unwrap());
    create_job(&h, "thief", s).await;
    let stalled_on = |field: &'static str| {
        move |j: &StreamJob| {
            job_condition(j, "Stalled").is_some_and(|(r, m)| r == "StorageNotAllowed" && m.starts_with(field))
        }
    };
    let j = wait_job(
        &h,
        "thief",
        "Stalled on the storage",
        stalled_on("spec.checkpoint.storage"),
    )
    .await;
    let (_, message) = job_condition(&j, "Stalled").unwrap();
    assert!(
        message.contains(&format!("{root}/{}/thief", h.ns)),
        "names the job's own root: {message}"
    );
    assert!(not_ready(&j), "{:?}", j.status);
    h.wait_event("thief", "StorageNotAllowed").await;
    let sets: Api<StatefulSet> = Api::namespaced(h.client.clone(), &h.ns);
    let cms: Api<ConfigMap> = Api::namespaced(h.client.clone(), &h.ns);
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
    let nothing_created = || async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(sets.get_opt("thief").await.unwrap().is_none());
        assert!(cms.get_opt("thief-config").await.unwrap().is_none());
        assert!(secrets.get_opt("thief-admin").await.unwrap().is_none());
        for topic in [
            streamops_crds::runtime_api::repartition_topic(&h.ns, "thief"),
            streamops_crds::runtime_api::control_topic(&h.ns, "thief"),
        ] {
            assert!(h.kafka(&topic).await.is_none(), "{topic} was created");
        }
    };
    nothing_created().await;

    // Restoring the other job's savepoint: refused the same way.
    patch_job(
        &h,
        "thief",
        json!({"spec": {
            "checkpoint": {"storage": null},
            "restore": {"fromSavepoint": format!("{other}/savepoints/sp-1")}
        }}),
    )
    .await;
    wait_job(
        &h,
        "thief",
        "Stalled on the savepoint",
        stalled_on("spec.restore.fromSavepoint"),
    )
    .await;
    nothing_created().await;

    // Below its own root: the job starts.
    patch_job(
        &h,
        "thief",
        json!({"spec": {
            "restore": null,
            "checkpoint": {"storage": format!("{root}/{}/thief/v2", h.ns)}
        }}),
    )
    .await;
    wait_some(&sets, "thief").await;
    wait_job(&h, "thief", "Deploying", |j| {
        job_condition(j, "Reconciling").is_some_and(|(r, _)| r == "Deploying")
    })
    .await;
    jobs(&h).delete("thief", &Default::default()).await.unwrap();
    wait_job_gone(&h, "thief").await;
    h.finish(&[&source, &sink]).await;
}

/// A stand-in for the parts of a cluster the control plane lacks here: a
/// StatefulSet controller (creates and deletes Pod objects, writes their
/// status) and the runtime's admin API on loopback addresses (one per pod
/// ordinal, port 8080), with behaviour written in this file.
mod fake {
    use std::{
        collections::BTreeMap,
        io::{Read, Write},
        net::TcpListener,
        sync::{
            Arc, Mutex,
            atomic::{AtomicBool, Ordering},
        },
        time::Duration,
    };

    use k8s_openapi::api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, Pod, Secret, ServiceAccount},
    };
    use kube::{
        Api, Client, ResourceExt,
        api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    };
    use serde_json::{Value, json};

    #[derive(Clone, Debug)]
    pub struct RuntimePod {
        pub name: String,
        pub generation: i64,
        pub restore: Option<String>,
        pub stopped: bool,
        /// A stop-with-savepoint takes effect when its savepoint completes.
        pub stop_requested: bool,
        pub checkpoint: i64,
        pub savepoints: BTreeMap<String, i64>,
    }

    #[derive(Default)]
    pub struct World {
        /// By loopback address.
        pub pods: BTreeMap<String, RuntimePod>,
        pub token: Option<String>,
        /// Every savepoint id a pod was asked for.
        pub triggered: Vec<String>,
        /// Savepoints stay InProgress while set.
        pub hold_savepoints: bool,
        /// The StatefulSet controller does nothing while set.
        pub sts_paused: bool,
        /// Pods of this generation never become Ready (a broken version).
        pub unready_generation: Option<i64>,
        /// Generations seen running side by side, per observation.
        pub max_generations_together: usize,
        pub created: Vec<(String, i64)>,
        /// The newest checkpoint id of a removed pod: checkpoint ids are
        /// per job, so a new pod's commits continue above it (whether or
        /// not the operator asks in between).
        pub checkpoint_high: i64,
    }

    pub type Shared = Arc<Mutex<World>>;

    fn ip(base: u8, ordinal: usize) -> String {
        format!("127.0.0.{}", usize::from(base) + ordinal)
    }

    /// Serves the admin API of ordinals `0..n` on `127.0.0.<base+i>:8080`.
    pub fn serve(world: Shared, base: u8, n: usize, stop: Arc<AtomicBool>) {
        for i in 0..n {
            let addr = ip(base, i);
            let listener = TcpListener::bind((addr.as_str(), 8080)).expect("bind fake runtime");
            listener.set_nonblocking(true).expect("nonblocking");
            let world = world.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut socket, _)) => {
                            let _ = socket.set_nonblocking(false);
                            handle(&world, &addr, &mut socket);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            });
        }
    }

    fn handle(world: &Shared, addr: &str, socket: &mut std::net::TcpStream) {
        let _ = socket.set_read_timeout(Some(Duration::from_secs(2)));
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        let (head, body) = loop {
            let Ok(n) = socket.read(&mut buf) else { return };
            if n == 0 {
                return;
            }
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_owned)
                    })
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if request.len() >= end + 4 + length {
                    break (text[..end].to_owned(), text[end + 4..].to_owned());
                }
            }
        };
        let (status, answer) = route(world, addr, &head, &body);
        let answer = answer.to_string();
        let _ = socket.write_all(
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            )
            .as_bytes(),
        );
    }

    fn route(world: &Shared, addr: &str, head: &str, body: &str) -> (&'static str, Value) {
        let mut w = world.lock().unwrap();
        let authorized = w.token.as_ref().is_some_and(|t| {
            head.lines()
                .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {t}")))
        });
        if !authorized {
            return ("401 Unauthorized", json!({"error": "token"}));
        }
        let hold = w.hold_savepoints;
        let line = head.lines().next().unwrap_or_default().to_owned();
        let mut triggered = None;
        let Some(pod) = w.pods.get_mut(addr) else {
            return ("503 Service Unavailable", json!({"error": "no pod"}));
        };
        let out = match line.split(' ').take(2).collect::<Vec<_>>()[..] {
            ["GET", "/v1/status"] => {
                if !pod.stopped {
                    pod.checkpoint += 1;
                }
                let state = if pod.stopped { "Stopped" } else { "Running" };
                (
                    "200 OK",
                    json!({"state": state, "generation": pod.generation, "tasks": [], "checkpointId": pod.checkpoint}),
                )
            }
            ["POST", "/v1/savepoints"] => {
                let req: Value = serde_json::from_str(body).unwrap_or_default();
                let id = req["id"].as_str().unwrap_or_default().to_owned();
                if !pod.savepoints.contains_key(&id) {
                    pod.checkpoint += 1;
                    pod.savepoints.insert(id.clone(), pod.checkpoint);
                    triggered = Some(id.clone());
                }
                if req["stop"] == true {
                    pod.stop_requested = true;
                    pod.stopped = !hold;
                }
                ("202 Accepted", json!({"id": id}))
            }
            ["GET", path] if path.starts_with("/v1/savepoints/") => {
                let id = path.trim_start_matches("/v1/savepoints/");
                match pod.savepoints.get(id) {
                    None => ("404 Not Found", json!({"error": "unknown savepoint"})),
                    Some(cp) => {
                        let state = if hold { "InProgress" } else { "Completed" };
                        if !hold && pod.stop_requested {
                            pod.stopped = true;
                        }
                        (
                            "200 OK",
                            json!({"id": id, "state": state, "location": format!("file:///cp/savepoints/{id}"),
                                   "checkpointId": cp, "offsets": {format!("clicks-{}", pod.name): 7}, "error": null}),
                        )
                    }
                }
            }
            ["POST", "/v1/resume"] => {
                pod.stopped = false;
                pod.stop_requested = false;
                ("200 OK", json!({}))
            }
            _ => ("404 Not Found", json!({"error": "no route"})),
        };
        if let Some(id) = triggered {
            w.triggered.push(id);
        }
        out
    }

    /// Plays StatefulSet controller and kubelet for StatefulSet `name`.
    pub async fn statefulset_controller(
        client: Client,
        ns: String,
        name: String,
        world: Shared,
        base: u8,
        stop: Arc<AtomicBool>,
    ) {
        let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        let _ = sa
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap(),
            )
            .await;
        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if world.lock().unwrap().sts_paused {
                continue;
            }
            let Ok(Some(sts)) = sets.get_opt(&name).await else {
                continue;
            };
            if world.lock().unwrap().token.is_none()
                && let Ok(Some(secret)) = secrets.get_opt(&format!("{name}-admin")).await
            {
                let token = String::from_utf8(secret.data.unwrap()["token"].0.clone()).unwrap();
                world.lock().unwrap().token = Some(token);
            }
            let spec = sts.spec.clone().unwrap();
            let replicas = usize::try_from(spec.replicas.unwrap_or(1)).unwrap();
            let Ok(list) = pods
                .list(&ListParams::default().labels(&format!("streamops.io/job={name}")))
                .await
            else {
                continue;
            };
            for pod in &list.items {
                let ordinal: usize = pod.name_any().rsplit('-').next().unwrap().parse().unwrap();
                if ordinal >= replicas {
                    let _ = pods
                        .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
                        .await;
                    let mut w = world.lock().unwrap();
                    if let Some(gone) = w.pods.remove(&ip(base, ordinal)) {
                        w.checkpoint_high = w.checkpoint_high.max(gone.checkpoint);
                    }
                }
            }
            let existing: Vec<String> = list.items.iter().map(|p| p.name_any()).collect();
            for i in 0..replicas {
                let pod_name = format!("{name}-{i}");
                if existing.contains(&pod_name) {
                    continue;
                }
                let job_json: Value = match cms.get_opt(&format!("{name}-config")).await {
                    Ok(Some(cm)) => serde_json::from_str(&cm.data.unwrap()["job.json"]).unwrap(),
                    _ => continue,
                };
                let template = serde_json::to_value(&spec.template).unwrap();
                let mut pod =
                    json!({"metadata": template["metadata"].clone(), "spec": template["spec"].clone()});
                pod["metadata"]["name"] = json!(pod_name);
                let pod: Pod = serde_json::from_value(pod).unwrap();
                if pods.create(&PostParams::default(), &pod).await.is_err() {
                    continue;
                }
                let generation = job_json["generation"].as_i64().unwrap();
                let mut w = world.lock().unwrap();
                let checkpoint = w.checkpoint_high.max(100);
                w.created.push((pod_name.clone(), generation));
                w.pods.insert(
                    ip(base, i),
                    RuntimePod {
                        name: pod_name,
                        generation,
                        restore: job_json["restore"]["savepoint"].as_str().map(str::to_owned),
                        stopped: false,
                        stop_requested: false,
                        checkpoint,
                        savepoints: BTreeMap::new(),
                    },
                );
            }
            // Kubelet: pod IP and readiness (= the runtime is not stopped).
            let snapshot: Vec<(String, String, bool)> = {
                let mut w = world.lock().unwrap();
                let gens: std::collections::BTreeSet<i64> = w.pods.values().map(|p| p.generation).collect();
                w.max_generations_together = w.max_generations_together.max(gens.len());
                w.pods
                    .iter()
                    .map(|(ip, p)| {
                        let ready = !p.stopped && w.unready_generation != Some(p.generation);
                        (p.name.clone(), ip.clone(), ready)
                    })
                    .collect()
            };
            let readiness: Vec<bool> = snapshot.iter().map(|(_, _, r)| *r).collect();
            for (pod_name, ip, ready) in snapshot {
                let status = json!({"status": {
                    "phase": "Running",
                    "podIP": ip,
                    "podIPs": [{"ip": ip}],
                    "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                    "containerStatuses": [{"name": "runtime", "ready": ready, "restartCount": 0, "image": "x", "imageID": "",
                                           "started": true, "state": {"running": {}}}],
                }});
                let _ = pods
                    .patch_status(&pod_name, &PatchParams::default(), &Patch::Merge(&status))
                    .await;
            }
            // StatefulSet status, as the real controller writes it (Pods that
            // exist, terminating or not, and the Ready ones): what wakes the
            // operator's StatefulSet watch.
            let ready_count = readiness.iter().filter(|r| **r).count();
            let sts_status = json!({"status": {
                "observedGeneration": sts.metadata.generation,
                "replicas": readiness.len(),
                "readyReplicas": ready_count,
            }});
            let _ = sets
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&sts_status))
                .await;
        }
    }
}

/// An operator of our own for `ns` (the harness's one watches nothing), so
/// the test can kill it and start a new one at any step.
struct Operator {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Operator {
    fn start(h: &Harness) -> Self {
        let config = streamops_operator::OperatorConfig {
            kafka_bootstrap: Some(h.bootstrap.clone()),
            kafka_timeout: Duration::from_secs(5),
            resync_interval: Duration::from_secs(3),
            retry_base: Duration::from_millis(300),
            retry_max: Duration::from_secs(2),
            watch_namespace: Some(h.ns.clone()),
            http_addr: ([127, 0, 0, 1], free_port()).into(),
            leader_election: false,
            runtime_image: Some(IMAGE.into()),
            ..streamops_operator::OperatorConfig::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(streamops_operator::run_controllers(
            h.client.clone(),
            config,
            async {
                let _ = stopped.await;
            },
        ));
        Self { stop, task }
    }

    /// Kills it (no graceful hand-over of anything in flight).
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
        drop(self.stop);
    }
}

fn phase(j: &StreamJob) -> Option<JobPhase> {
    j.status.as_ref().and_then(|s| s.phase)
}

fn running(j: &StreamJob, generation: i64) -> bool {
    j.status.as_ref().is_some_and(|s| {
        s.phase == Some(JobPhase::Running)
            && s.upgrade.is_none()
            && s.last_stable_generation == Some(generation)
    }) && job_condition(j, "Ready").is_some_and(|(r, _)| r == "Running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn savepoint_upgrade_survives_operator_kills_with_fake_pods() {
    if !cluster_test(CLUSTER) {
        return;
    }
    use std::sync::{Arc, Mutex, atomic::AtomicBool};
    let h = Harness::start_with(|c| c.watch_namespace = Some("streamops-nothing".into())).await;
    let base = 100 + u8::try_from(std::process::id() % 50).unwrap_or(0);
    let world: fake::Shared = Arc::new(Mutex::new(fake::World::default()));
    let stop = Arc::new(AtomicBool::new(false));
    fake::serve(world.clone(), base, 2, stop.clone());
    let sts_task = tokio::spawn(fake::statefulset_controller(
        h.client.clone(),
        h.ns.clone(),
        "fk".into(),
        world.clone(),
        base,
        stop.clone(),
    ));
    let mut operator = Operator::start(&h);
    let (source, sink) = topics(&h, 4).await;
    create_job(&h, "fk", job_spec("clicks", "out", Some(2))).await;
    wait_job(&h, "fk", "Running gen 1", |j| running(j, 1)).await;
    assert_eq!(world.lock().unwrap().pods.len(), 2);

    // Upgrade; savepoints are held so the operator can be killed mid-way.
    world.lock().unwrap().hold_savepoints = true;
    patch_job(&h, "fk", json!({"spec": {"image": "streamops-runtime:v2"}})).await;
    let j = wait_job(&h, "fk", "Savepointing", |j| {
        phase(j) == Some(JobPhase::Savepointing)
    })
    .await;
    let id = j.status.unwrap().upgrade.unwrap().savepoint_id;
    let deadline = Instant::now() + Duration::from_secs(30);
    while world.lock().unwrap().triggered.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "savepoint never triggered on both pods"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    operator.kill().await;

    // Killed while Savepointing: a new operator finishes the same savepoint.
    world.lock().unwrap().hold_savepoints = false;
    world.lock().unwrap().sts_paused = true;
    operator = Operator::start(&h);
    let j = wait_job(&h, "fk", "Upgrading", |j| phase(j) == Some(JobPhase::Upgrading)).await;
    let status = j.status.unwrap();
    assert_eq!(status.last_savepoint.as_ref().unwrap().id, id);
    assert_eq!(
        status.upgrade.as_ref().unwrap().restore_from.as_deref(),
        Some(format!("file:///cp/savepoints/{id}").as_str())
    );
    // Killed while the old pods are being removed (the fake StatefulSet
    // controller is paused, so they stay).
    tokio::time::sleep(Duration::from_secs(1)).await;
    operator.kill().await;
    world.lock().unwrap().sts_paused = false;
    operator = Operator::start(&h);
    let j = wait_job(&h, "fk", "Running gen 2", |j| running(j, 2)).await;
    operator.kill().await;

    let status = j.status.unwrap();
    assert_eq!(
        status.last_stable_spec.unwrap().image.as_deref(),
        Some("streamops-runtime:v2")
    );
    assert_eq!(status.savepoint_history.len(), 1);
    {
        let w = world.lock().unwrap();
        assert_eq!(
            w.triggered,
            vec![id.clone(), id.clone()],
            "one savepoint id, once per pod"
        );
        assert_eq!(
            w.max_generations_together, 1,
            "new pods only after the old are gone"
        );
        let new: Vec<&fake::RuntimePod> = w.pods.values().collect();
        assert_eq!(new.len(), 2);
        for p in new {
            assert_eq!(p.generation, 2);
            assert_eq!(
                p.restore.as_deref(),
                Some(format!("file:///cp/savepoints/{id}").as_str())
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sts_task.await;
    let finisher = Operator::start(&h);
    jobs(&h).delete("fk", &Default::default()).await.unwrap();
    wait_job_gone(&h, "fk").await;
    h.finish(&[&source, &sink]).await;
    finisher.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unhealthy_upgrade_rolls_back_with_fake_pods() {
    if !cluster_test(CLUSTER) {
        return;
    }
    use std::sync::{Arc, Mutex, atomic::AtomicBool};
    let h = Harness::start_with(|c| c.watch_namespace = Some("streamops-nothing".into())).await;
    let base = 160 + u8::try_from(std::process::id() % 50).unwrap_or(0);
    let world: fake::Shared = Arc::new(Mutex::new(fake::World::default()));
    let stop = Arc::new(AtomicBool::new(false));
    fake::serve(world.clone(), base, 2, stop.clone());
    let sts_task = tokio::spawn(fake::statefulset_controller(
        h.client.clone(),
        h.ns.clone(),
        "rb".into(),
        world.clone(),
        base,
        stop.clone(),
    ));
    let operator = Operator::start(&h);
    let (source, sink) = topics(&h, 2).await;
    let mut spec = job_spec("clicks", "out", None);
    spec.upgrade = Some(streamops_crds::job::UpgradeSpec {
        savepoint_timeout: None,
        health_timeout: Some("6s".parse().unwrap()),
        rollback: None,
    });
    create_job(&h, "rb", spec).await;
    wait_job(&h, "rb", "Running gen 1", |j| running(j, 1)).await;

    // Generation 2 never becomes Ready (but commits: its checkpoint ids grow).
    world.lock().unwrap().unready_generation = Some(2);
    patch_job(&h, "rb", json!({"spec": {"image": "streamops-runtime:bad"}})).await;
    let j = wait_job(&h, "rb", "rolled back", |j| {
        job_condition(j, "Stalled").is_some_and(|(r, _)| r == "RolledBack")
            && j.status.as_ref().is_some_and(|s| s.upgrade.is_none())
    })
    .await;
    let status = j.status.clone().unwrap();
    assert_eq!(status.failed_generation, Some(2));
    assert_eq!(status.last_stable_generation, Some(1));
    assert_eq!(status.last_stable_spec.as_ref().unwrap().image, None);
    let (_, message) = job_condition(&j, "Stalled").unwrap();
    assert!(message.contains("generation 2"), "{message}");
    h.wait_event("rb", "RollingBack").await;
    {
        let w = world.lock().unwrap();
        assert!(w.pods.values().all(|p| p.generation == 1), "{:?}", w.pods);
        // Generation 2 committed after the savepoint: the old version resumes
        // from the last committed checkpoint, not from the older savepoint.
        assert!(w.pods.values().all(|p| p.restore.is_none()), "{:?}", w.pods);
        assert_eq!(w.max_generations_together, 1);
        assert_eq!(w.triggered.len(), 2, "one savepoint, on both pods");
    }
    let cms: Api<ConfigMap> = Api::namespaced(h.client.clone(), &h.ns);
    let cm = cms.get("rb-config").await.unwrap();
    let config: Value = serde_json::from_str(&cm.data.unwrap()["job.json"]).unwrap();
    assert_eq!(config["generation"], 1);
    // The pods run the rolled-back spec's image, not the failed one's.
    let sets: Api<StatefulSet> = Api::namespaced(h.client.clone(), &h.ns);
    let sts = sets.get("rb").await.unwrap();
    let image = sts.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default();
    assert_ne!(image, "streamops-runtime:bad", "rolled back to the failed image");

    // Not retried in a loop.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(world.lock().unwrap().triggered.len(), 2);
    let j = jobs(&h).get("rb").await.unwrap();
    assert!(job_condition(&j, "Stalled").is_some_and(|(r, _)| r == "RolledBack"));

    // A fixed spec upgrades again.
    world.lock().unwrap().unready_generation = None;
    patch_job(&h, "rb", json!({"spec": {"image": "streamops-runtime:v3"}})).await;
    wait_job(&h, "rb", "Running gen 3", |j| running(j, 3)).await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sts_task.await;
    jobs(&h).delete("rb", &Default::default()).await.unwrap();
    wait_job_gone(&h, "rb").await;
    h.finish(&[&source, &sink]).await;
    operator.kill().await;
}

// End to end with real runtime pods (deploy -> output, savepoint upgrade with
// exact output, rollback, rescale 2 -> 4, operator killed mid-upgrade):
// e2e/tests/jobs.rs, the `jobs` stage of e2e/test.sh.
