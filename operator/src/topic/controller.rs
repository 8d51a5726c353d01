//! The StreamTopic controller shell: observe Kafka, ask [`plan`] what to do,
//! act, and record the outcome in status (the write-ahead log: ownership is
//! written before a topic is created, so a restart at any moment resumes).

use std::{future::Future, sync::Arc};

use kube::{
    Api, ResourceExt,
    runtime::{
        Controller,
        controller::{self, Action},
        events::EventType,
        reflector::Store,
        watcher,
    },
};
use streamops_crds::{
    Health, StreamTopic, StreamTopicStatus, Validation,
    tenancy::TopicPolicy,
    topic::{TopicOwnership, annotation},
};
use tracing::info;

use super::{
    annotation_is,
    conflict::{Claim, winner_over},
    plan::{self, CleanupInput, CleanupPlan, DesiredTopic, RecordedTopic, TopicPlan, TopicUpdate},
};
use crate::{
    config::OperatorConfig,
    error::{Error, Result},
    kafka::{ConfigChange, FailureKind, KafkaAdmin, ObservedTopic},
    metrics::Metrics,
    reconcile::{
        self, Reconciler,
        context::Shared,
        status::{self, report},
    },
};

/// Name of the controller in metrics and logs.
pub const CONTROLLER: &str = "streamtopic";
/// Held while the operator may still have to delete the Kafka topic.
pub const FINALIZER: &str = "streamops.io/topic";

/// What every StreamTopic reconcile shares.
pub struct Context {
    pub shared: Shared,
    /// Every StreamTopic the controller watches (conflict detection).
    pub topics: Store<StreamTopic>,
    /// Which Kafka topics each namespace may manage (`config.topic_policy()`).
    pub topic_policy: TopicPolicy,
}

impl Context {
    pub fn new(
        client: kube::Client,
        config: OperatorConfig,
        metrics: Metrics,
        topics: Store<StreamTopic>,
    ) -> Arc<Self> {
        Arc::new(Self {
            topic_policy: config.topic_policy(),
            shared: Shared::new(client, config, metrics),
            topics,
        })
    }
}

impl Reconciler for Context {
    type Object = StreamTopic;
    const CONTROLLER: &'static str = CONTROLLER;
    const FINALIZER: &'static str = FINALIZER;

    fn shared(&self) -> &Shared {
        &self.shared
    }

    async fn apply(&self, topic: &StreamTopic, api: &Api<StreamTopic>) -> Result<Action> {
        apply(topic, api, self).await
    }

    async fn cleanup(&self, topic: &StreamTopic, api: &Api<StreamTopic>) -> Result<Action> {
        cleanup(topic, api, self).await
    }

    fn reconciled(&self) {
        update_managed_gauge(self);
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: kube::Client,
    config: OperatorConfig,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<StreamTopic> = match &config.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let controller = Controller::new(api, watcher::Config::default().any_semantic())
        .with_config(controller::Config::default().concurrency(config.reconcile_concurrency));
    let ctx = Context::new(client, config, metrics, controller.store());
    reconcile::run(controller, ctx, shutdown).await;
}

fn update_managed_gauge(ctx: &Context) {
    let (mut created, mut adopted) = (0, 0);
    for t in ctx.topics.state() {
        if annotation_is(&t, annotation::MANAGED, "false") {
            continue;
        }
        match t.status.as_ref().and_then(|s| s.ownership) {
            Some(TopicOwnership::Created) => created += 1,
            Some(TopicOwnership::Adopted) => adopted += 1,
            None => {}
        }
    }
    ctx.shared.metrics.set_topics_managed(created, adopted);
}

fn recorded(topic: &StreamTopic) -> RecordedTopic {
    let status = topic.status.clone().unwrap_or_default();
    RecordedTopic {
        name: status.topic_name,
        ownership: status.ownership,
        managed_config_keys: status.managed_config_keys.into_iter().collect(),
    }
}

fn desired(topic: &StreamTopic) -> DesiredTopic {
    DesiredTopic {
        name: topic.kafka_topic_name(),
        name_field: topic.topic_name_field(),
        partitions: topic.spec.partitions,
        replication_factor: topic.spec.replication_factor,
        config: topic.spec.config.clone(),
        adopt: annotation_is(topic, annotation::ADOPT, "true"),
    }
}

fn base_status(topic: &StreamTopic) -> StreamTopicStatus {
    topic.status.clone().unwrap_or_default()
}

async fn apply(topic: &StreamTopic, api: &Api<StreamTopic>, ctx: &Context) -> Result<Action> {
    let resync = Action::requeue(ctx.shared.config.resync_interval);
    // First of all: a topic this namespace may not manage is not touched,
    // not even described, and the resource is not Ready, so no StreamJob
    // reads or writes it through this resource (also when unmanaged).
    let ns = topic.namespace().unwrap_or_default();
    if let Some(refusal) = plan::admit(&ctx.topic_policy, &ns, &desired(topic)) {
        info!(topic = %topic.kafka_topic_name(), reason = refusal.reason(), "refused by the topic-name policy");
        report(
            topic,
            api,
            &ctx.shared,
            base_status(topic),
            &Health::stalled(refusal.reason(), refusal.message()),
        )
        .await?;
        return Ok(Action::await_change());
    }
    if annotation_is(topic, annotation::MANAGED, "false") {
        let health = Health::ready(
            "Unmanaged",
            "annotation streamops.io/managed=\"false\": the operator does not touch this topic",
        );
        report(topic, api, &ctx.shared, base_status(topic), &health).await?;
        return Ok(Action::await_change());
    }
    if annotation_is(topic, annotation::PAUSED, "true") {
        let health = Health::reconciling(
            "Paused",
            "annotation streamops.io/paused=\"true\": reconciliation is suspended; remove it to resume",
        );
        report(topic, api, &ctx.shared, base_status(topic), &health).await?;
        return Ok(Action::await_change());
    }
    if let Some(message) = topic.spec.validation_message() {
        report(
            topic,
            api,
            &ctx.shared,
            base_status(topic),
            &Health::stalled("InvalidSpec", message),
        )
        .await?;
        return Ok(Action::await_change());
    }
    if let Some(me) = Claim::of(topic, &ctx.topic_policy) {
        let claims: Vec<Claim> = ctx
            .topics
            .state()
            .iter()
            .filter_map(|t| Claim::of(t, &ctx.topic_policy))
            .collect();
        if let Some(winner) = winner_over(&me, &claims) {
            let message = format!(
                "Kafka topic {:?} is already managed by StreamTopic {}/{} (older); delete one of the two resources or \
                 change spec.topicName",
                me.topic, winner.namespace, winner.name
            );
            report(
                topic,
                api,
                &ctx.shared,
                base_status(topic),
                &Health::stalled("Conflict", message),
            )
            .await?;
            return Ok(resync);
        }
    }

    // Ownership and the operator's config keys live in the status this
    // controller writes, and the watch cache may not have its last write yet
    // (a reconcile queued behind our own status patch runs on the cached
    // object): on a stale status, keys the operator just set on an adopted
    // topic look like the topic's own settings and stop being managed. So the
    // Kafka decision reads the latest object from the apiserver.
    let current = api.get_status(&topic.name_any()).await?;
    let error = match sync_kafka(&current, api, ctx).await {
        Ok(action) => return Ok(action),
        Err(e) => e,
    };
    // The failed step may have recorded an intent (ownership before
    // CreateTopics): build on the latest status, never on the stale one.
    let latest = api.get_status(&topic.name_any()).await?;
    report(&latest, api, &ctx.shared, base_status(&latest), &error.health()).await?;
    if error.is_transient() {
        Err(error)
    } else {
        ctx.shared.metrics.error(CONTROLLER, error.reason());
        Ok(resync)
    }
}

async fn admin_for(topic: &StreamTopic, ctx: &Context) -> Result<KafkaAdmin> {
    let ns = topic.namespace().unwrap_or_default();
    ctx.shared.kafka_admin(&ns, topic.spec.cluster.as_ref()).await
}

/// Observe -> plan -> act. Errors that a user must fix come back as `Err`
/// with a non-transient [`Error`]; the caller turns them into `Stalled`.
async fn sync_kafka(topic: &StreamTopic, api: &Api<StreamTopic>, ctx: &Context) -> Result<Action> {
    let admin = admin_for(topic, ctx).await?;
    let desired = desired(topic);
    let recorded = recorded(topic);
    let observed = admin.describe(&desired.name).await.map_err(Error::from)?;
    let plan = plan::plan(&desired, &recorded, observed.as_ref());
    info!(topic = %desired.name, ?plan, "planned");
    match plan {
        TopicPlan::Refuse(refusal) => {
            let mut status = base_status(topic);
            if let Some(o) = &observed
                && recorded.ownership.is_some()
            {
                status.partitions = Some(o.partitions);
                status.replication_factor = Some(o.replication_factor);
            }
            report(
                topic,
                api,
                &ctx.shared,
                status,
                &Health::stalled(refusal.reason(), refusal.message()),
            )
            .await?;
            Ok(Action::requeue(ctx.shared.config.resync_interval))
        }
        TopicPlan::Create {
            partitions,
            replication_factor,
            config,
        } => {
            create(
                topic,
                api,
                ctx,
                &admin,
                &desired,
                partitions,
                replication_factor,
                &config,
            )
            .await
        }
        TopicPlan::Update(update) => {
            let Some(observed) = observed else {
                return Err(Error::KafkaUnavailable("topic vanished while planning".into()));
            };
            apply_update(topic, api, ctx, &admin, &desired, &recorded, observed, update).await
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn create(
    topic: &StreamTopic,
    api: &Api<StreamTopic>,
    ctx: &Context,
    admin: &KafkaAdmin,
    desired: &DesiredTopic,
    partitions: i32,
    replication_factor: Option<i32>,
    config: &std::collections::BTreeMap<String, String>,
) -> Result<Action> {
    let created_before = plan::already_exists_is_ours(&recorded(topic), &desired.name);
    // Intent first: a restart after CreateTopics succeeded still knows the
    // topic is ours.
    let mut status = base_status(topic);
    status.topic_name = Some(desired.name.clone());
    status.ownership = Some(TopicOwnership::Created);
    status.managed_config_keys = config.keys().cloned().collect();
    let creating = Health::reconciling("Creating", format!("creating Kafka topic {:?}", desired.name));
    let intent = status::with_health(topic, status.clone(), &creating);
    status::apply(api, topic, &intent).await?;

    if let Err(failure) = admin
        .create(&desired.name, partitions, replication_factor, config)
        .await
    {
        if failure.kind == FailureKind::Unavailable {
            // Outcome unknown; the intent stays and the next attempt looks again.
            return Err(Error::from(failure));
        }
        if failure.kind == FailureKind::AlreadyExists && created_before {
            // Our own earlier create, not yet visible to the describe: the
            // intent stays; look again shortly.
            info!(topic = %desired.name, "created earlier by this resource, not yet in the metadata; looking again");
            return Ok(Action::requeue(std::time::Duration::from_secs(1)));
        }
        // Not created: forget the intent so nothing is deleted or adopted by mistake.
        let mut cleared = base_status(topic);
        cleared.ownership = None;
        cleared.topic_name = None;
        cleared.managed_config_keys.clear();
        let (reason, message) = if failure.kind == FailureKind::AlreadyExists {
            (
                "TopicExistsNotAdopted",
                format!(
                    "topic {:?} was created by someone else meanwhile: {}",
                    desired.name, failure.message
                ),
            )
        } else {
            (
                "KafkaRejected",
                format!(
                    "Kafka refused to create topic {:?}: {}",
                    desired.name, failure.message
                ),
            )
        };
        let refreshed = StreamTopic {
            status: Some(intent),
            ..topic.clone()
        };
        report(
            &refreshed,
            api,
            &ctx.shared,
            cleared,
            &Health::stalled(reason, message),
        )
        .await?;
        return Ok(Action::requeue(ctx.shared.config.resync_interval));
    }
    info!(topic = %desired.name, partitions, "created Kafka topic");
    let refreshed = StreamTopic {
        status: Some(intent),
        ..topic.clone()
    };
    ctx.shared
        .event(
            topic,
            EventType::Normal,
            "Created",
            "CreateTopic",
            format!(
                "created Kafka topic {:?} with {partitions} partitions",
                desired.name
            ),
        )
        .await;
    status.partitions = Some(partitions);
    status.replication_factor = replication_factor;
    status.config = config.clone();
    match admin.describe(&desired.name).await.map_err(Error::from)? {
        Some(observed) => {
            status.partitions = Some(observed.partitions);
            status.replication_factor = Some(observed.replication_factor);
            report(&refreshed, api, &ctx.shared, status, &ready(desired, &observed)).await?;
            Ok(Action::requeue(ctx.shared.config.resync_interval))
        }
        None => {
            // Metadata not propagated yet: look again shortly.
            report(&refreshed, api, &ctx.shared, status, &creating).await?;
            Ok(Action::requeue(std::time::Duration::from_secs(1)))
        }
    }
}

fn ready(desired: &DesiredTopic, observed: &ObservedTopic) -> Health {
    Health::ready(
        "Synced",
        format!(
            "Kafka topic {:?}: {} partitions, replication factor {}, {} managed config keys",
            desired.name,
            observed.partitions,
            observed.replication_factor,
            desired.config.len()
        ),
    )
}

#[allow(clippy::too_many_arguments)]
async fn apply_update(
    topic: &StreamTopic,
    api: &Api<StreamTopic>,
    ctx: &Context,
    admin: &KafkaAdmin,
    desired: &DesiredTopic,
    recorded: &RecordedTopic,
    mut observed: ObservedTopic,
    update: TopicUpdate,
) -> Result<Action> {
    let mut status = base_status(topic);
    status.topic_name = Some(desired.name.clone());
    status.ownership = Some(update.ownership);
    status.partitions = Some(observed.partitions);
    status.replication_factor = Some(observed.replication_factor);
    if recorded.ownership.is_none() {
        // Adoption: recorded before anything is changed.
        status.managed_config_keys = recorded.managed_config_keys.iter().cloned().collect();
        let adopting = Health::reconciling(
            "Adopting",
            format!("adopting existing Kafka topic {:?}", desired.name),
        );
        let intent = status::with_health(topic, status.clone(), &adopting);
        status::apply(api, topic, &intent).await?;
        ctx.shared
            .event(
                topic,
                EventType::Normal,
                "Adopted",
                "AdoptTopic",
                format!("adopted existing Kafka topic {:?}", desired.name),
            )
            .await;
    }

    if !update.config_changes.is_empty() {
        let summary = update
            .config_changes
            .iter()
            .map(|c| match c {
                ConfigChange::Set { key, value } => format!("{key}={value}"),
                ConfigChange::Delete { key } => format!("-{key}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        if let Err(failure) = admin
            .alter_config(&desired.name, update.config_changes.clone())
            .await
        {
            return Err(match failure.kind {
                FailureKind::Unavailable => Error::KafkaUnavailable(failure.message),
                FailureKind::Unsupported => Error::BrokerLacksIncrementalAlterConfigs(format!(
                    "the broker does not support IncrementalAlterConfigs (Kafka >= 2.3 needed): {}",
                    failure.message
                )),
                _ => Error::KafkaRejected(format!("config change [{summary}] refused: {}", failure.message)),
            });
        }
        info!(topic = %desired.name, changes = %summary, "updated topic config");
        ctx.shared
            .event(
                topic,
                EventType::Normal,
                "ConfigUpdated",
                "AlterConfigs",
                format!("Kafka topic {:?}: {summary}", desired.name),
            )
            .await;
    }
    status.config = desired.config.clone();
    status.managed_config_keys = update.managed_config_keys.clone();

    if let Some(total) = update.grow_partitions_to {
        match admin.grow_partitions(&desired.name, total).await {
            Ok(()) => {
                ctx.shared
                    .event(
                        topic,
                        EventType::Normal,
                        "PartitionsIncreased",
                        "CreatePartitions",
                        format!(
                            "Kafka topic {:?}: {} -> {total} partitions",
                            desired.name, observed.partitions
                        ),
                    )
                    .await;
                observed.partitions = total;
                status.partitions = Some(total);
            }
            Err(failure) => {
                let error = match failure.kind {
                    FailureKind::Unavailable => return Err(Error::KafkaUnavailable(failure.message)),
                    FailureKind::Unsupported => Error::BrokerLacksCreatePartitions(format!(
                        "spec.partitions {total} > {current}: the broker does not support CreatePartitions, so the \
                         topic keeps {current} partitions ({msg})",
                        current = observed.partitions,
                        msg = failure.message
                    )),
                    _ => Error::KafkaRejected(format!(
                        "growing to {total} partitions refused: {}",
                        failure.message
                    )),
                };
                ctx.shared.metrics.error(CONTROLLER, error.reason());
                report(
                    topic,
                    api,
                    &ctx.shared,
                    status,
                    &Health::stalled(error.reason(), error.to_string()),
                )
                .await?;
                return Ok(Action::requeue(ctx.shared.config.resync_interval));
            }
        }
    }
    report(topic, api, &ctx.shared, status, &ready(desired, &observed)).await?;
    Ok(Action::requeue(ctx.shared.config.resync_interval))
}

async fn cleanup(topic: &StreamTopic, api: &Api<StreamTopic>, ctx: &Context) -> Result<Action> {
    let input = CleanupInput {
        policy: topic.spec.deletion_policy(),
        recorded: recorded(topic),
        unmanaged: annotation_is(topic, annotation::MANAGED, "false"),
        skip_kafka: annotation_is(topic, annotation::SKIP_KAFKA_DELETION, "true"),
        paused: annotation_is(topic, annotation::PAUSED, "true"),
        namespace: topic.namespace().unwrap_or_default(),
        topic_policy: ctx.topic_policy.clone(),
    };
    match plan::cleanup(&input) {
        CleanupPlan::Keep { reason } => {
            let name = input.recorded.name.unwrap_or_else(|| topic.kafka_topic_name());
            ctx.shared
                .event(
                    topic,
                    EventType::Normal,
                    "TopicKept",
                    "DeleteResource",
                    format!("resource deleted; Kafka topic {name:?} left in place ({reason})"),
                )
                .await;
            Ok(Action::await_change())
        }
        CleanupPlan::DeleteTopic { name } => {
            let result = match admin_for(topic, ctx).await {
                Ok(admin) => admin.delete(&name).await.map_err(Error::from),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    info!(topic = %name, "deleted Kafka topic");
                    ctx.shared
                        .event(
                            topic,
                            EventType::Normal,
                            "Deleted",
                            "DeleteTopic",
                            format!("deleted Kafka topic {name:?} (deletionPolicy: Delete)"),
                        )
                        .await;
                    Ok(Action::await_change())
                }
                Err(e) => {
                    // No silent escape after N retries: the finalizer stays
                    // until Kafka answers or a user opts out explicitly.
                    let message = format!(
                        "cannot delete Kafka topic {name:?}: {e}. Retrying with backoff; if the Kafka cluster is gone \
                         for good, annotate the resource with {}=\"true\" to remove it without touching Kafka",
                        annotation::SKIP_KAFKA_DELETION
                    );
                    let health = if e.is_transient() {
                        Health::reconciling("DeletionBlocked", message)
                    } else {
                        Health::stalled("DeletionBlocked", message)
                    };
                    report(topic, api, &ctx.shared, base_status(topic), &health).await?;
                    Err(e)
                }
            }
        }
    }
}
