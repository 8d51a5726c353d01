//! The StreamJob controller: observe (the job's latest status, its
//! StreamTopics, its admin Secret, its pods and what their admin API says),
//! ask [`plan::decide`], then do what the step says: its prerequisites
//! (internal topics, Service, NetworkPolicy, admin Secret: idempotent, and
//! a failure leaves the status untouched, as before the plan decided them),
//! then in write-ahead order the status, the object graph and the one admin
//! call (and, for savepoint deletions, a second status write of those the
//! pods confirmed). The finalizer, metrics, backoff and status writing are
//! the shell's ([`crate::reconcile`]).

use std::{
    collections::BTreeMap,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, Pod, Secret, Service},
        networking::v1::NetworkPolicy,
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::{
        Controller,
        controller::{self, Action},
        events::EventType,
        reflector::ObjectRef,
        watcher,
    },
};
use streamops_crds::{
    Health, StreamJob, StreamJobStatus, StreamTopic, Validation,
    common::is_ready,
    job::{JobPhase, annotation},
    runtime_api::{JobTopics, SavepointRequest, SourceTopic, env},
    topic::annotation as topic_annotation,
    transaction,
};
use tracing::{debug, info, warn};

use super::{
    JOB_LABEL, JobNames, REVISION_ANNOTATION,
    admin::{AdminError, HttpAdmin, PodEndpoint, RuntimeAdmin},
    annotation_is,
    plan::{self, AdminCall, Deployment, InternalTopic, Observed, Outcome, PodView, Prerequisites, Step},
    resources::{self, AdminAccess, KafkaAccess, PodInputs},
};
use crate::{
    config::OperatorConfig,
    error::{Error, Result},
    kafka::{FailureKind, KafkaAdmin},
    metrics::Metrics,
    reconcile::{
        self, Reconciler,
        context::Shared,
        status::{self, FIELD_MANAGER, report},
    },
};

/// Name of the controller in metrics and logs.
pub const CONTROLLER: &str = "streamjob";
/// Held while the job's internal Kafka topics may still have to be deleted.
pub const FINALIZER: &str = "streamops.io/job";

/// What every StreamJob reconcile shares.
pub struct JobContext {
    pub shared: Shared,
    pub admin: Arc<dyn RuntimeAdmin>,
}

impl JobContext {
    pub fn new(
        client: Client,
        config: OperatorConfig,
        metrics: Metrics,
        admin: Arc<dyn RuntimeAdmin>,
    ) -> Arc<Self> {
        Arc::new(Self {
            shared: Shared::new(client, config, metrics),
            admin,
        })
    }

    async fn event(&self, job: &StreamJob, warning: bool, reason: &str, note: String) {
        let type_ = if warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        self.shared.event(job, type_, reason, "Reconcile", note).await;
    }
}

impl Reconciler for JobContext {
    type Object = StreamJob;
    const CONTROLLER: &'static str = CONTROLLER;
    const FINALIZER: &'static str = FINALIZER;

    fn shared(&self) -> &Shared {
        &self.shared
    }

    async fn apply(&self, job: &StreamJob, api: &Api<StreamJob>) -> Result<Action> {
        apply(job, api, self).await
    }

    async fn cleanup(&self, job: &StreamJob, _api: &Api<StreamJob>) -> Result<Action> {
        cleanup(job, self).await
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (jobs, topics, sets): (Api<StreamJob>, Api<StreamTopic>, Api<StatefulSet>) =
        match &config.watch_namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };
    let controller = Controller::new(jobs, watcher::Config::default().any_semantic())
        .with_config(controller::Config::default().concurrency(config.reconcile_concurrency));
    let store = controller.store();
    let admin = Arc::new(HttpAdmin::new(config.runtime_admin_timeout));
    let ctx = JobContext::new(client, config, metrics, admin);
    let controller = controller
        .owns(sets, watcher::Config::default().labels(JOB_LABEL))
        // A StreamTopic becoming Ready (or changing partitions) wakes the
        // jobs that reference it: one GitOps sync of topics and job converges.
        .watches(topics, watcher::Config::default(), move |topic: StreamTopic| {
            let ns = topic.namespace().unwrap_or_default();
            let name = topic.name_any();
            store
                .state()
                .into_iter()
                .filter(|j| j.namespace().as_deref() == Some(ns.as_str()) && references(j, &name))
                .map(|j| ObjectRef::from_obj(&*j))
                .collect::<Vec<_>>()
        });
    reconcile::run(controller, ctx, shutdown).await;
}

/// Whether the job names StreamTopic `topic` anywhere.
fn references(job: &StreamJob, topic: &str) -> bool {
    let s = &job.spec;
    s.source.topics.iter().any(|t| t == topic)
        || s.sink.topic == topic
        || s.late_events.as_ref().is_some_and(|t| t.topic == topic)
        || s.dead_letter.as_ref().is_some_and(|t| t.topic == topic)
        || s.route_topics().contains(&topic)
}

/// What the pods need from outside the spec: image, Kafka access, storage.
struct Setup {
    image: String,
    kafka: KafkaAccess,
    storage: String,
}

fn setup(job: &StreamJob, config: &OperatorConfig) -> std::result::Result<Setup, Health> {
    let image = job
        .spec
        .image
        .clone()
        .or_else(|| config.runtime_image.clone())
        .filter(|i| !i.trim().is_empty())
        .ok_or_else(|| {
            Health::stalled(
                "NoRuntimeImage",
                "no spec.image and the operator has no default runtime image (STREAMOPS_RUNTIME_IMAGE)",
            )
        })?;
    let kafka = match &job.spec.cluster {
        Some(cluster) => KafkaAccess::from_spec(cluster),
        None => {
            let bootstrap = config
                .kafka_bootstrap
                .clone()
                .filter(|b| !b.trim().is_empty())
                .ok_or_else(|| {
                    Health::stalled(Error::NoKafkaCluster.reason(), Error::NoKafkaCluster.to_string())
                })?;
            let has_credentials = [
                &config.kafka_sasl_username_file,
                &config.kafka_sasl_password_file,
                &config.kafka_tls_ca_file,
                &config.kafka_tls_cert_file,
                &config.kafka_tls_key_file,
            ]
            .iter()
            .any(|f| f.is_some());
            if has_credentials {
                // The operator's own credentials never leave its namespace.
                return Err(Health::stalled(
                    "ClusterCredentialsRequired",
                    "the operator's default Kafka cluster needs credentials, which are never copied into job \
                     namespaces; set spec.cluster with Secret refs in this namespace",
                ));
            }
            KafkaAccess {
                bootstrap,
                security_protocol: config.kafka_security_protocol.clone(),
                sasl_mechanism: None,
                files: Vec::new(),
            }
        }
    };
    // The job's own storage (the default one gets `/<namespace>/<job>`), as
    // job.json names it: the pods mount their checkpoint volume exactly
    // there, so for `file://` the path in the container is the path on the
    // node.
    let storage = resources::job_storage(&job.spec, &config.checkpoint_storage, &JobNames::of(job));
    Ok(Setup {
        image,
        kafka,
        storage,
    })
}

/// The Kafka names of the topics `spec` references, or why not yet.
async fn resolve_topics(
    spec: &streamops_crds::StreamJobSpec,
    names: &JobNames,
    client: &Client,
) -> Result<std::result::Result<JobTopics, String>> {
    let api: Api<StreamTopic> = Api::namespaced(client.clone(), &names.namespace);
    let mut problems = Vec::new();
    let mut resolve = async |name: &str| -> Result<Option<(String, i32)>> {
        let Some(topic) = api.get_opt(name).await? else {
            problems.push(format!("StreamTopic {name:?} not found"));
            return Ok(None);
        };
        let st = topic.status.clone().unwrap_or_default();
        if !is_ready(&st.conditions, st.observed_generation, topic.metadata.generation) {
            let why = st
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_else(|| "no status yet".into());
            problems.push(format!("StreamTopic {name:?} is not Ready ({why})"));
            return Ok(None);
        }
        let kafka_name = st.topic_name.clone().unwrap_or_else(|| topic.kafka_topic_name());
        Ok(Some((kafka_name, st.partitions.unwrap_or(topic.spec.partitions))))
    };
    let mut source = Vec::new();
    for name in &spec.source.topics {
        if let Some((topic, partitions)) = resolve(name).await? {
            source.push(SourceTopic { topic, partitions });
        }
    }
    let sink = resolve(&spec.sink.topic).await?;
    let late = match &spec.late_events {
        Some(s) => Some(resolve(&s.topic).await?),
        None => None,
    };
    let dead = match &spec.dead_letter {
        Some(s) => Some(resolve(&s.topic).await?),
        None => None,
    };
    let mut routes = BTreeMap::new();
    for to in spec.route_topics() {
        if let Some((topic, _)) = resolve(to).await? {
            routes.insert(to.to_owned(), topic);
        }
    }
    if !problems.is_empty() {
        return Ok(Err(problems.join("; ")));
    }
    let name = |r: Option<(String, i32)>| r.map(|(n, _)| n).unwrap_or_default();
    Ok(Ok(JobTopics {
        source,
        // The plan lays the sources out (it knows the running layout).
        layout: Vec::new(),
        sink: name(sink),
        late_events: late.map(name),
        dead_letter: dead.map(name),
        routes,
        repartition: names.repartition_topic(),
        control: names.control_topic(),
    }))
}

async fn kafka_admin(job: &StreamJob, ctx: &JobContext) -> Result<KafkaAdmin> {
    let ns = job.namespace().unwrap_or_default();
    ctx.shared.kafka_admin(&ns, job.spec.cluster.as_ref()).await
}

/// `Stalled` when the broker's `transaction.max.timeout.ms` is below what an
/// exactly-once job's commits need (the runtime would only find out when the
/// broker refuses its producers or aborts a transaction).
async fn transaction_limit(job: &StreamJob, ctx: &JobContext) -> Result<Option<Health>> {
    if !transaction::applies(&job.spec) {
        return Ok(None);
    }
    let admin = kafka_admin(job, ctx).await?;
    let max = admin.max_transaction_timeout_ms().await.map_err(Error::from)?;
    Ok(transaction::fit_spec(&job.spec, max)
        .err()
        .map(|e| Health::stalled("TransactionLimitTooLow", format!("{}: {}", e.field, e.message))))
}

/// Creates each internal topic the plan asks for when it is missing, and
/// grows it when it has fewer partitions than asked (P grew).
async fn ensure_internal_topics(job: &StreamJob, ctx: &JobContext, topics: &[InternalTopic]) -> Result<()> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin = kafka_admin(job, ctx).await?;
    for InternalTopic {
        name,
        partitions,
        config,
    } in topics
    {
        let partitions = *partitions;
        match admin.describe(name).await.map_err(Error::from)? {
            None => {
                match admin.create(name, partitions, None, config).await {
                    Ok(()) => {}
                    Err(f) if f.kind == FailureKind::AlreadyExists => {}
                    Err(f) => return Err(Error::from(f)),
                }
                info!(topic = %name, partitions, "created internal topic");
                ctx.event(
                    job,
                    false,
                    "InternalTopicCreated",
                    format!("created Kafka topic {name:?} with {partitions} partitions"),
                )
                .await;
            }
            Some(observed) if observed.partitions < partitions => {
                admin
                    .grow_partitions(name, partitions)
                    .await
                    .map_err(|f| match f.kind {
                        FailureKind::Unsupported => Error::BrokerLacksCreatePartitions(format!(
                            "internal topic {name:?} needs {partitions} partitions (has {}): the broker does not \
                             support CreatePartitions",
                            observed.partitions
                        )),
                        _ => Error::from(f),
                    })?;
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Applies the Service and the NetworkPolicy when the plan asks for them.
async fn serve(job: &StreamJob, names: &JobNames, wanted: &Prerequisites, ctx: &JobContext) -> Result<()> {
    let config = &ctx.shared.config;
    if wanted.service {
        let services: Api<Service> = Api::namespaced(ctx.shared.client.clone(), &names.namespace);
        server_side_apply(&services, &names.service(), &resources::service(job, names)?).await?;
    }
    if wanted.network_policy {
        let policies: Api<NetworkPolicy> = Api::namespaced(ctx.shared.client.clone(), &names.namespace);
        let access = AdminAccess {
            operator_namespace: &config.lease_namespace,
            operator_pods: &config.operator_pod_labels.0,
            metrics_namespaces: &config.runtime_metrics_namespaces.0,
        };
        let policy = resources::network_policy(job, names, &access)?;
        server_side_apply(&policies, &names.network_policy(), &policy).await?;
    }
    Ok(())
}

async fn random_token() -> Result<String> {
    let bytes = tokio::task::spawn_blocking(|| {
        use std::io::Read;
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map(|()| bytes)
    })
    .await
    .map_err(|e| Error::AdminToken(format!("admin token task failed: {e}")))?
    .map_err(|e| Error::AdminToken(format!("cannot read /dev/urandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The `<job>-admin` Secret's token: `None` when there is no Secret,
/// `Some(None)` when it holds no readable token. Never logged.
async fn admin_token(names: &JobNames, ctx: &JobContext) -> Result<Option<Option<String>>> {
    let secrets: Api<Secret> = Api::namespaced(ctx.shared.client.clone(), &names.namespace);
    let secret = secrets.get_opt(&names.admin_secret()).await?;
    Ok(secret.map(|s| {
        s.data
            .as_ref()
            .and_then(|d| d.get(env::ADMIN_TOKEN_KEY))
            .and_then(|ByteString(b)| String::from_utf8(b.clone()).ok())
    }))
}

/// Creates `<job>-admin` with a new token (never updated: one created
/// meanwhile wins).
async fn create_admin_secret(job: &StreamJob, names: &JobNames, ctx: &JobContext) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(ctx.shared.client.clone(), &names.namespace);
    let secret = resources::admin_secret(job, names, &random_token().await?)?;
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn server_side_apply<K>(api: &Api<K>, name: &str, object: &K) -> Result<()>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await?;
    Ok(())
}

struct ObservedPods {
    views: Vec<PodView>,
    endpoints: Vec<PodEndpoint>,
}

/// What the namespace's ResourceQuotas have left. Unreadable quotas (an
/// apiserver error) count as none: the check is an early refusal, the
/// quota admission itself still applies.
async fn quota_room(names: &JobNames, ctx: &JobContext) -> Vec<super::quota::Room> {
    let api: Api<k8s_openapi::api::core::v1::ResourceQuota> =
        Api::namespaced(ctx.shared.client.clone(), &names.namespace);
    match api.list(&ListParams::default()).await {
        Ok(list) => list
            .items
            .iter()
            .flat_map(super::quota::Room::from_quota)
            .collect(),
        Err(e) => {
            warn!(error = %e, "reading the namespace's ResourceQuotas");
            Vec::new()
        }
    }
}

async fn observe_pods(names: &JobNames, ctx: &JobContext, token: Option<&str>) -> Result<ObservedPods> {
    let pods: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &names.namespace);
    let list = pods
        .list(&ListParams::default().labels(&format!("{JOB_LABEL}={}", names.job)))
        .await?;
    let mut views = Vec::new();
    let mut endpoints = Vec::new();
    for pod in list.items {
        let name = pod.name_any();
        let status = pod.status.clone().unwrap_or_default();
        let ready_condition = status.conditions.iter().flatten().find(|c| c.type_ == "Ready");
        let ready = ready_condition.is_some_and(|c| c.status == "True");
        let ready_since = ready_condition
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0);
        let restarts = status
            .container_statuses
            .iter()
            .flatten()
            .map(|c| c.restart_count)
            .sum();
        let terminating = pod.metadata.deletion_timestamp.is_some();
        // The runtime container's termination message: of its current state
        // if it is down now, else of its last exit.
        let last_failure = status
            .container_statuses
            .iter()
            .flatten()
            .filter(|c| c.name == resources::CONTAINER)
            .flat_map(|c| {
                let now = c.state.as_ref().and_then(|s| s.terminated.as_ref());
                let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
                now.into_iter().chain(last)
            })
            .find(|t| t.exit_code != 0)
            .and_then(|t| t.message.clone());
        if let (Some(ip), Some(token)) = (status.pod_ip.as_deref(), token)
            && let Ok(ip) = ip.parse::<IpAddr>()
            && !terminating
        {
            endpoints.push(PodEndpoint {
                pod: name.clone(),
                addr: SocketAddr::new(ip, env::ADMIN_PORT),
                token: token.to_owned(),
            });
        }
        views.push(PodView {
            revision: pod.annotations().get(REVISION_ANNOTATION).cloned(),
            name,
            ready,
            ready_since,
            restarts,
            terminating,
            last_failure,
        });
    }
    Ok(ObservedPods { views, endpoints })
}

/// Records what stopped a reconcile before its step was recorded, as the
/// health over the `current` status: `Reconciling` and retried with backoff
/// when waiting can fix it, else `Stalled` until the next resync.
async fn failed(
    job: &StreamJob,
    api: &Api<StreamJob>,
    ctx: &JobContext,
    current: StreamJobStatus,
    e: Error,
) -> Result<Action> {
    report(job, api, &ctx.shared, current, &e.health()).await?;
    if e.is_transient() {
        Err(e)
    } else {
        Ok(Action::requeue(ctx.shared.config.resync_interval))
    }
}

async fn apply(job: &StreamJob, api: &Api<StreamJob>, ctx: &JobContext) -> Result<Action> {
    // The write-ahead log is read from the apiserver, never from a cache
    // that may lag behind the last write.
    let Some(job) = api.get_opt(&job.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let job = &job;
    let names = JobNames::of(job);
    let current = job.status.clone().unwrap_or_default();
    if annotation_is(job, annotation::PAUSED, "true") {
        let health = Health::reconciling(
            "Paused",
            "annotation streamops.io/paused=\"true\": nothing is created, changed or stopped; remove it to resume",
        );
        report(job, api, &ctx.shared, current, &health).await?;
        return Ok(Action::await_change());
    }
    let setup = match setup(job, &ctx.shared.config) {
        Ok(s) => s,
        Err(health) => {
            report(job, api, &ctx.shared, current, &health).await?;
            return Ok(Action::requeue(ctx.shared.config.resync_interval));
        }
    };
    let topics = resolve_topics(&job.spec, &names, &ctx.shared.client).await?;
    // A rollback (or the steady state while a change is refused) runs the
    // last stable spec: it needs that spec's topics when they differ.
    let stable_topics = match current.last_stable_spec.as_ref() {
        Some(stable) if plan::topic_refs(stable) != plan::topic_refs(&job.spec) => {
            Some(resolve_topics(stable, &names, &ctx.shared.client).await?)
        }
        _ => None,
    };
    let storage_refusal = resources::storage_refusal(
        &job.spec,
        &ctx.shared.config.checkpoint_storage,
        ctx.shared.config.allow_custom_checkpoint_storage,
        &names,
    );
    let valid = job.spec.validation_message().is_none() && storage_refusal.is_none();
    if valid && topics.is_ok() {
        match transaction_limit(job, ctx).await {
            Ok(None) => {}
            Ok(Some(refused)) => {
                // Nothing is created or changed: a running version keeps running.
                report(job, api, &ctx.shared, current, &refused).await?;
                return Ok(Action::requeue(ctx.shared.config.resync_interval));
            }
            Err(e) => return failed(job, api, ctx, current, e).await,
        }
    }
    // Where the running version's pods keep their checkpoints and savepoints.
    let running_spec = current.last_stable_spec.as_ref().unwrap_or(&job.spec);
    let storage = resources::job_storage(running_spec, &ctx.shared.config.checkpoint_storage, &names);
    let token = admin_token(&names, ctx).await?;
    let pods = observe_pods(&names, ctx, token.as_ref().and_then(Option::as_deref)).await?;

    let intent = current.upgrade.clone();
    let savepointing = current.phase == Some(JobPhase::Savepointing);
    let admin = ctx.admin.clone();
    let answers = futures::future::join_all(pods.endpoints.iter().map(|ep| {
        let admin = admin.clone();
        let sp_id = intent
            .as_ref()
            .filter(|_| savepointing)
            .map(|i| i.savepoint_id.clone());
        async move {
            let status = admin.status(ep).await.map_err(|e| e.to_string());
            let savepoint = match &sp_id {
                Some(id) => Some(admin.savepoint(ep, id).await.map_err(|e| e.to_string())),
                None => None,
            };
            (ep.pod.clone(), status, savepoint)
        }
    }))
    .await;
    let mut runtime = BTreeMap::new();
    let mut savepoints = BTreeMap::new();
    for (pod, status, savepoint) in answers {
        runtime.insert(pod.clone(), status);
        if let Some(sp) = savepoint {
            savepoints.insert(pod, sp);
        }
    }
    let observed = Observed {
        generation: job.metadata.generation.unwrap_or_default(),
        spec: job.spec.clone(),
        status: current,
        suspend_annotation: annotation_is(job, annotation::SUSPEND, "true"),
        savepoint_annotation: job.annotations().get(annotation::SAVEPOINT_REQUEST).cloned(),
        topics,
        stable_topics,
        storage_refusal,
        pods: pods.views,
        runtime,
        savepoints,
        storage,
        ids: plan::KafkaIds::of(
            &names.namespace,
            &names.job,
            job.uid().as_deref().unwrap_or_default(),
        ),
        admin_secret: token.is_some(),
        network_policy: ctx.shared.config.network_policy,
        quota: quota_room(&names, ctx).await,
        now: Timestamp::now(),
    };
    let step = plan::decide(&observed);
    info!(phase = ?step.status.phase, reason = step.health.reason(), call = ?step.call, "decided");

    // 0. What the step needs to exist; a failure leaves the log as it was
    // (nothing was started that could not run).
    let wanted = &step.prerequisites;
    if let Err(e) = ensure_internal_topics(job, ctx, &wanted.internal_topics).await {
        return failed(job, api, ctx, observed.status, e).await;
    }
    serve(job, &names, wanted, ctx).await?;
    if wanted.admin_secret {
        create_admin_secret(job, &names, ctx).await?;
    }
    // 1. The write-ahead log.
    let recorded = report(job, api, &ctx.shared, step.status.clone(), &step.health).await?;
    // 2. The object graph.
    if let Some(d) = &step.deployment {
        deploy(job, &names, &setup, d, ctx).await?;
    }
    // The autoscaler's growth of the source topics, recorded in the status
    // written above (so it is never an edit without its record).
    grow_topics(&names, &step.grow_topics, ctx).await?;
    // 3. The admin call, and what it completed.
    let deleted = call(&step, &pods.endpoints, ctx).await;
    if !deleted.is_empty() {
        let mut done = recorded;
        plan::forget_deleted(&mut done, &deleted);
        status::apply(api, job, &done).await?;
    }
    // `report` already published an event for a new Ready reason.
    let reason_changed = status::previous_reason(job) != Some(step.health.reason());
    for t in &step.events {
        if reason_changed && t.reason == step.health.reason() {
            continue;
        }
        ctx.event(job, t.warning, t.reason, t.message.clone()).await;
    }
    count(&step, &ctx.shared.metrics);
    Ok(Action::requeue(step.requeue.max(Duration::from_millis(200))))
}

/// Raises `spec.partitions` of each source StreamTopic in `grow` that has
/// fewer (never lowers it: a count already raised, by anyone, stays), marks
/// the topic with [`topic_annotation::PARTITIONS_GROWN_BY`] and tells its
/// watchers with an Event on the topic: the one write the operator makes to
/// a spec, and only for `spec.autoscaler.growSourcePartitions`.
async fn grow_topics(names: &JobNames, grow: &BTreeMap<String, i32>, ctx: &JobContext) -> Result<()> {
    let api: Api<StreamTopic> = Api::namespaced(ctx.shared.client.clone(), &names.namespace);
    for (name, &partitions) in grow {
        let Some(topic) = api.get_opt(name).await? else {
            continue;
        };
        let was = topic.spec.partitions;
        if was >= partitions {
            continue;
        }
        let by = format!("StreamJob {}", names.job);
        let patch = serde_json::json!({
            "metadata": {"annotations": {topic_annotation::PARTITIONS_GROWN_BY: by}},
            "spec": {"partitions": partitions},
        });
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        info!(topic = %name, from = was, to = partitions, "grew a source StreamTopic (growSourcePartitions)");
        ctx.shared
            .event(
                &topic,
                EventType::Normal,
                "PartitionsGrownByAutoscaler",
                "Reconcile",
                format!(
                    "spec.partitions {was} -> {partitions}, set by the autoscaler of StreamJob {} \
                     (spec.autoscaler.growSourcePartitions): commit the new count where this object is kept (Git), \
                     or a sync will try to set it back, which is refused",
                    names.job
                ),
            )
            .await;
    }
    Ok(())
}

async fn deploy(
    job: &StreamJob,
    names: &JobNames,
    current: &Setup,
    d: &Deployment,
    ctx: &JobContext,
) -> Result<()> {
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.shared.client.clone(), &names.namespace);
    let sets: Api<StatefulSet> = Api::namespaced(ctx.shared.client.clone(), &names.namespace);
    let storage = resources::job_storage(&d.spec, &ctx.shared.config.checkpoint_storage, names);
    let cm = resources::config_map(job, names, d, &storage)?;
    server_side_apply(&config_maps, &names.config_map(), &cm).await?;
    // The pods run the deployment's spec (the last stable one, the one being
    // rolled out, or the one rolled back to), not necessarily the job's
    // current spec: image, resources, podTemplate, cluster and storage come
    // from it too, as job.json does.
    let mut deployed = job.clone();
    deployed.spec = d.spec.clone();
    let own = setup(&deployed, &ctx.shared.config).ok();
    let setup = own.as_ref().unwrap_or(current);
    let inputs = PodInputs {
        names,
        image: &setup.image,
        kafka: &setup.kafka,
        storage: &setup.storage,
    };
    let sts = resources::statefulset(&deployed, &inputs, d)?;
    server_side_apply(&sets, &names.statefulset(), &sts).await
}

/// Makes the step's admin call; returns the locations of the savepoints
/// every pod named confirmed deleted (the only call whose completion is
/// recorded: the others' effects show in what the pods report next).
async fn call(step: &Step, endpoints: &[PodEndpoint], ctx: &JobContext) -> Vec<String> {
    let on = |pods: &Vec<String>| -> Vec<&PodEndpoint> {
        endpoints.iter().filter(|e| pods.contains(&e.pod)).collect()
    };
    match &step.call {
        AdminCall::None => {}
        AdminCall::DeleteSavepoints { savepoints, pods } => {
            return delete_savepoints(savepoints, &on(pods), pods.len(), ctx).await;
        }
        AdminCall::Savepoint {
            id,
            stop,
            drain,
            pods,
        } => {
            let request = SavepointRequest {
                id: id.clone(),
                stop: *stop,
                drain: *drain,
            };
            for ep in on(pods) {
                // Idempotent per id: a lost answer is retried next reconcile.
                if let Err(e) = ctx.admin.trigger_savepoint(ep, &request).await {
                    warn!(pod = %ep.pod, error = %e, "savepoint trigger failed");
                }
            }
        }
        AdminCall::Resume { pods } => {
            for ep in on(pods) {
                if let Err(e) = ctx.admin.resume(ep).await {
                    warn!(pod = %ep.pod, error = %e, "resume failed");
                }
            }
        }
    }
    Vec::new()
}

/// Asks each of `endpoints` (of the `named` pods; a pod without an address
/// confirms nothing) to delete the savepoints, the pods at once and on each
/// pod one savepoint after the other, stopping at the first answer that is
/// neither done nor refused (a busy loop or an unreachable pod would only
/// make the rest wait as long). A savepoint counts as deleted once all the
/// pods answered that it is gone; the rest stays listed and is asked again
/// next reconcile.
async fn delete_savepoints(
    savepoints: &[plan::SavepointToDelete],
    endpoints: &[&PodEndpoint],
    named: usize,
    ctx: &JobContext,
) -> Vec<String> {
    let per_pod = futures::future::join_all(endpoints.iter().map(|ep| async move {
        let mut gone = Vec::new();
        for sp in savepoints {
            match ctx.admin.delete_savepoint(ep, &sp.id).await {
                Ok(Some(objects)) => {
                    debug!(pod = %ep.pod, savepoint = %sp.id, objects, "savepoint deleted");
                    gone.push(sp.location.as_str());
                }
                Ok(None) => {
                    debug!(pod = %ep.pod, savepoint = %sp.id, "savepoint deletion queued by a busy pod; asked again later");
                    break;
                }
                Err(AdminError::Http { status: 409, body, .. }) => info!(
                    pod = %ep.pod, savepoint = %sp.id, %body,
                    "savepoint kept: the pod was started from it; asked again later"
                ),
                Err(e) => {
                    warn!(pod = %ep.pod, savepoint = %sp.id, error = %e, "savepoint deletion failed; retried");
                    ctx.shared.metrics.job_operation("savepoint_delete", "failed");
                    break;
                }
            }
        }
        gone
    }))
    .await;
    let mut deleted = Vec::new();
    for sp in savepoints {
        let confirmed = per_pod
            .iter()
            .filter(|gone| gone.contains(&sp.location.as_str()))
            .count();
        if named > 0 && confirmed == named {
            info!(savepoint = %sp.id, location = %sp.location, "deleted savepoint from storage");
            ctx.shared.metrics.job_operation("savepoint_delete", "succeeded");
            deleted.push(sp.location.clone());
        }
    }
    deleted
}

fn count(step: &Step, metrics: &Metrics) {
    for outcome in &step.outcomes {
        match outcome {
            Outcome::SavepointCompleted { seconds } => {
                metrics.savepoint_took(*seconds);
                metrics.job_operation("savepoint", "succeeded");
            }
            Outcome::SavepointFailed => metrics.job_operation("savepoint", "failed"),
            Outcome::UpgradeSucceeded { .. } => metrics.job_operation("upgrade", "succeeded"),
            Outcome::UpgradeFailed => metrics.job_operation("upgrade", "failed"),
            Outcome::RolledBack => metrics.job_operation("rollback", "succeeded"),
            Outcome::RollbackFailed => metrics.job_operation("rollback", "failed"),
        }
    }
}

/// Deletes the internal topics [`plan::cleanup`] names (the pods,
/// ConfigMap, Service, NetworkPolicy and Secret go by owner reference).
async fn cleanup(job: &StreamJob, ctx: &JobContext) -> Result<Action> {
    let names = JobNames::of(job);
    let doomed = plan::cleanup(
        names.repartition_topic(),
        names.control_topic(),
        annotation_is(job, topic_annotation::SKIP_KAFKA_DELETION, "true"),
    );
    if doomed.is_empty() {
        return Ok(Action::await_change());
    }
    let admin = match kafka_admin(job, ctx).await {
        Ok(a) => a,
        // No cluster configured: nothing was ever created.
        Err(Error::NoKafkaCluster) => return Ok(Action::await_change()),
        Err(e) => return Err(e),
    };
    for topic in doomed {
        admin.delete(&topic).await.map_err(Error::from)?;
        info!(%topic, "deleted internal topic");
    }
    Ok(Action::await_change())
}
