//! Harness for the integration tests: the real apiserver and broker from
//! `e2e/cluster/cluster.sh`, the controller in-process, one namespace per test.

#![allow(dead_code)]

pub mod bench;

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::PathBuf,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Config, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use rdkafka::ClientConfig;
use serde_json::json;
use streamops_crds::{StreamTopic, StreamTopicSpec};
use streamops_operator::{
    OperatorConfig,
    kafka::{KafkaAdmin, ObservedTopic},
};
use tokio::{sync::oneshot, task::JoinHandle};

#[allow(unused_imports)] // not every test binary including this module skips
pub use streamops_e2e::cluster_test;

/// What the tests here need: a real apiserver (CRDs installed) and a broker.
pub const CLUSTER: &[&str] = &["STREAMOPS_KUBECONFIG", "STREAMOPS_BOOTSTRAP"];

const HOWTO: &str = "start the harness first:\n  e2e/cluster/cluster.sh up --control-plane && e2e/cluster/cluster.sh broker up\n  kubectl --kubeconfig /tmp/streamops-cluster/kubeconfig apply -f crds/\n  export STREAMOPS_KUBECONFIG=/tmp/streamops-cluster/kubeconfig STREAMOPS_BOOTSTRAP=$(cat /tmp/streamops-cluster/bootstrap)";

pub fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("{name} is not set: these integration tests need a real apiserver and broker; {HOWTO}"),
    }
}

pub async fn client() -> Client {
    let path = env("STREAMOPS_KUBECONFIG");
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| panic!("reading {path}: {e}; {HOWTO}"));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {path}: {e}"));
    Client::try_from(config).expect("kube client")
}

pub fn admin(bootstrap: &str) -> KafkaAdmin {
    let client = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "3")
        .create()
        .expect("admin client");
    KafkaAdmin::new(client, Duration::from_secs(10))
}

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{:x}", nanos % 0xffff_ffff_ffff)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One test's world: a fresh namespace and a controller watching only it.
pub struct Harness {
    pub client: Client,
    pub ns: String,
    pub bootstrap: String,
    pub api: Api<StreamTopic>,
    pub admin: KafkaAdmin,
    pub http_port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut OperatorConfig)) -> Self {
        let bootstrap = env("STREAMOPS_BOOTSTRAP");
        let client = client().await;
        install_crds(&client).await;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = namespaces
            .create(
                &PostParams::default(),
                &Namespace {
                    metadata: ObjectMeta {
                        generate_name: Some("streamops-op-test-".into()),
                        ..ObjectMeta::default()
                    },
                    ..Namespace::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("creating a namespace failed ({e}); is the apiserver up? {HOWTO}"))
            .name_any();
        let http_port = free_port();
        let mut config = OperatorConfig {
            kafka_bootstrap: Some(bootstrap.clone()),
            kafka_timeout: Duration::from_secs(5),
            resync_interval: Duration::from_secs(3),
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(4),
            watch_namespace: Some(ns.clone()),
            http_addr: ([127, 0, 0, 1], http_port).into(),
            leader_election: false,
            ..OperatorConfig::default()
        };
        tweak(&mut config);
        streamops_operator::telemetry::init(streamops_operator::config::LogFormat::Text);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(streamops_operator::run_controllers(
            client.clone(),
            config,
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            api: Api::namespaced(client.clone(), &ns),
            admin: admin(&bootstrap),
            client,
            ns,
            bootstrap,
            http_port,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn create(
        &self,
        name: &str,
        spec: StreamTopicSpec,
        annotations: &[(&str, &str)],
    ) -> StreamTopic {
        let mut topic = StreamTopic::new(name, spec);
        topic.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        self.api
            .create(&PostParams::default(), &topic)
            .await
            .expect("create StreamTopic")
    }

    pub async fn patch(&self, name: &str, patch: serde_json::Value) {
        self.api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch StreamTopic");
    }

    /// A merge patch the apiserver must refuse (a CEL rule of the CRD):
    /// returns its message.
    pub async fn patch_refused(&self, name: &str, patch: serde_json::Value) -> String {
        match self
            .api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(s)) if s.code == 422 => s.message,
            other => panic!("the apiserver did not refuse {patch}: {other:?}"),
        }
    }

    pub async fn annotate(&self, name: &str, key: &str, value: Option<&str>) {
        self.patch(name, json!({"metadata": {"annotations": {key: value}}}))
            .await;
    }

    /// Polls until `pred` holds for the resource; panics with its last state.
    pub async fn wait(&self, name: &str, what: &str, pred: impl Fn(&StreamTopic) -> bool) -> StreamTopic {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let current = self.api.get_opt(name).await.expect("get StreamTopic");
            if let Some(t) = &current
                && pred(t)
            {
                return t.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what} on {}/{name}; last: {:#?}",
                    self.ns,
                    current.map(|t| t.status)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn wait_gone(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.api.get_opt(name).await.expect("get").is_some() {
            assert!(Instant::now() < deadline, "{}/{name} still exists", self.ns);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn kafka(&self, topic: &str) -> Option<ObservedTopic> {
        self.admin.describe(topic).await.expect("describe topic")
    }

    pub async fn wait_kafka(&self, topic: &str, what: &str, pred: impl Fn(Option<&ObservedTopic>) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let observed = self.kafka(topic).await;
            if pred(observed.as_ref()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} on Kafka topic {topic}; last: {observed:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Event reasons recorded for resource `name`.
    pub async fn event_reasons(&self, name: &str) -> Vec<String> {
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(self.client.clone(), &self.ns);
        events
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter_map(|e| e.reason)
            .collect()
    }

    pub async fn wait_event(&self, name: &str, reason: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reasons = self.event_reasons(name).await;
            if reasons.iter().any(|r| r == reason) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no event {reason} for {name}; got {reasons:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Deletes every StreamTopic (the controller still runs, so finalizers
    /// complete; annotated to skip Kafka so leftovers never block), deletes
    /// `kafka_topics` from the broker, stops the controller and deletes the
    /// namespace.
    pub async fn finish(mut self, kafka_topics: &[&str]) {
        let list = self.api.list(&ListParams::default()).await.expect("list");
        for t in list.items {
            let name = t.name_any();
            self.annotate(&name, "streamops.io/skip-kafka-deletion", Some("true"))
                .await;
            let _ = self.api.delete(&name, &DeleteParams::default()).await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .api
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        for topic in kafka_topics {
            let _ = self.admin.delete(topic).await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces.delete(&self.ns, &DeleteParams::default()).await;
    }
}

/// Server-side applies the CRDs (idempotent) and waits until established.
pub async fn install_crds(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in streamops_crds::schema::crds() {
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply("streamops-operator-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let established = crds
                .get(&name)
                .await
                .ok()
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
            if established {
                break;
            }
            assert!(Instant::now() < deadline, "CRD {name} not established");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

pub fn spec(topic_name: &str, partitions: i32, config: &[(&str, &str)]) -> StreamTopicSpec {
    StreamTopicSpec {
        topic_name: Some(topic_name.into()),
        partitions,
        replication_factor: None,
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        cluster: None,
        deletion_policy: None,
    }
}

pub fn condition<'a>(
    t: &'a StreamTopic,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    t.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

/// `Ready` holds for the current generation.
pub fn is_ready(t: &StreamTopic) -> bool {
    let status = t.status.as_ref();
    status.and_then(|s| s.observed_generation) == t.metadata.generation
        && condition(t, "Ready")
            .is_some_and(|c| c.status == "True" && c.observed_generation == t.metadata.generation)
}

/// `Stalled=True` (and `Ready=False`) with `reason` for the current generation.
pub fn is_stalled(t: &StreamTopic, reason: &str) -> bool {
    condition(t, "Stalled").is_some_and(|c| {
        c.status == "True" && c.reason == reason && c.observed_generation == t.metadata.generation
    }) && condition(t, "Ready").is_some_and(|c| c.status == "False")
}

pub fn is_reconciling(t: &StreamTopic, reason: &str) -> bool {
    condition(t, "Reconciling").is_some_and(|c| c.status == "True" && c.reason == reason)
        && condition(t, "Ready").is_some_and(|c| c.status == "False")
}

/// Apache Kafka's jars as `e2e/cluster/install.sh --only kafka` caches them:
/// `STREAMOPS_KAFKA_LIBS`, else `$STREAMOPS_CACHE/kafka-<version>/libs`
/// (`STREAMOPS_KAFKA_VERSION`, default 4.4.0; the cache defaults to
/// `~/.cache/streamops`, as in e2e/cluster/lib.sh).
pub fn kafka_libs() -> PathBuf {
    if let Some(libs) = std::env::var_os("STREAMOPS_KAFKA_LIBS") {
        return PathBuf::from(libs);
    }
    let cache = std::env::var_os("STREAMOPS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/streamops")
        });
    let version = std::env::var("STREAMOPS_KAFKA_VERSION").unwrap_or_else(|_| "4.4.0".into());
    cache.join(format!("kafka-{version}/libs"))
}

/// An Apache Kafka broker of this test's own (so stopping it disturbs no
/// one): a single KRaft node on 127.0.0.1 with its storage in a directory
/// that outlives a stop, so a restart brings back the same cluster.
pub struct OwnBroker {
    pub port: u16,
    dir: PathBuf,
    child: Option<tokio::process::Child>,
}

impl OwnBroker {
    /// The bootstrap address.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Formats fresh storage on `port` (its controller on another free port)
    /// and starts the broker; `extra` is appended to its server.properties.
    pub async fn start(port: u16, extra: &str) -> Self {
        let libs = kafka_libs();
        assert!(
            libs.is_dir(),
            "Apache Kafka jars {} missing (set STREAMOPS_KAFKA_LIBS or run e2e/cluster/install.sh --only kafka)",
            libs.display()
        );
        let dir = std::env::temp_dir().join(format!("streamops-own-broker-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let controller = free_port();
        std::fs::write(
            dir.join("server.properties"),
            format!(
                "process.roles=broker,controller\nnode.id=1\n\
                 controller.quorum.voters=1@127.0.0.1:{controller}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
                 controller.listener.names=CONTROLLER\n\
                 listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
                 log.dirs={}\noffsets.topic.replication.factor=1\n\
                 transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n{extra}\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let status = std::process::Command::new("java")
            .arg("-cp")
            .arg(libs.join("*"))
            .args([
                "kafka.tools.StorageTool",
                "format",
                "-t",
                "c3RyZWFtb3BzLW93bnRzdA",
                "-c",
            ])
            .arg(dir.join("server.properties"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run Kafka's StorageTool");
        assert!(status.success(), "formatting the own broker's storage failed");
        let mut broker = Self {
            port,
            dir,
            child: None,
        };
        broker.resume().await;
        broker
    }

    /// Starts the broker on its existing storage and waits until it listens.
    pub async fn resume(&mut self) {
        let log = std::fs::File::create(self.dir.join("broker.log")).unwrap();
        let child = tokio::process::Command::new("java")
            .args(["-Xmx512m", "-cp"])
            .arg(kafka_libs().join("*"))
            .arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start Apache Kafka");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "Kafka did not listen on {} (log {})",
                self.port,
                self.dir.join("broker.log").display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.child = Some(child);
    }

    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
