//! The StreamJob state machine: one pure function, [`decide`], from what the
//! controller observed (spec, status, pods, the runtime's admin answers, the
//! clock) to the next [`Step`]: what must exist first ([`Prerequisites`]:
//! the internal topics, the Service, the admin Secret), the status to
//! persist *before* acting, the kstatus health, the object graph to apply
//! and at most one admin call.
//!
//! Status is the write-ahead log. An operation in flight is an
//! [`UpgradeIntent`] in `status.upgrade` plus `status.phase`:
//!
//! | phase | intent | meaning | next |
//! |---|---|---|---|
//! | `Savepointing` | savepoint id | stop-with-savepoint (or a plain savepoint) asked of every pod | all Completed: record it; any Failed / timeout: resume pods, `Stalled` |
//! | `Suspended` | present | savepoint recorded, pods being removed | no pods left: intent cleared |
//! | `Deploying` / `Upgrading` / `RollingBack` | `rolloutStarted` absent | old pods being removed (StatefulSet scaled to 0) | no pods left: `rolloutStarted` = now, scale to M |
//! | same | `rolloutStarted` set | new pods starting | all Ready and stable: `lastStableSpec` = intent spec; health timeout: roll back / `Stalled` |
//! | `Failed` | present | the rolled-out version is unhealthy and nothing safe is left to do | waits for it to recover or for a new generation |
//!
//! Savepoints pruned from `status.savepointHistory` (by
//! `savepointsToKeep` / `savepointMaxAge`) are queued in
//! `status.savepointsToDelete` in the same status write, and deleted from
//! storage by the runtime pods only in the steady `Running` state, healthy,
//! when no other call is due ([`AdminCall::DeleteSavepoints`]); the
//! controller takes each one off the list once every pod confirmed it
//! ([`forget_deleted`]). One that a restore or rollback may need stays
//! listed and is not asked for ([`savepoint_deletions`]).
//!
//! Every step is idempotent: running [`decide`] again on the persisted
//! status, with whatever the pods now say, continues where the last run
//! stopped (the tests below do exactly that from every persisted status).

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use streamops_crds::{
    Health, StreamJobSpec, StreamJobStatus, Validation,
    change::{self, ChangeKind, Compatibility},
    job::{
        AutoscalerMode, AutoscalerStatus, IntentKind, JobPhase, JobState, PlannedChange, RestoreMode,
        SavepointRecord, UpgradeIntent, UpgradeMode,
    },
    layout,
    runtime_api::{
        self, JobTopics, OffsetReset, RestoreConfig, RuntimeState, RuntimeStatus, SavepointState,
        SavepointStatus, termination,
    },
};

use super::autoscaler;

/// A new version counts as stable once every pod has been Ready this long
/// without a restart (and its pods were requested at least this long ago);
/// at most a quarter of the health timeout.
pub const STABLE_AFTER: Duration = Duration::from_secs(5);
/// How often the autoscaler is evaluated while it is on (the pods refresh
/// their figures every 5 s; nothing wakes the operator when they change).
pub const AUTOSCALER_EVERY: Duration = Duration::from_secs(10);
/// How soon to look again while only the runtime's admin API can tell what
/// changed (`Savepointing`): nothing watches it.
pub const POLL: Duration = Duration::from_secs(1);
/// The longest wait while an operation waits on pods or topics. What those
/// waits end on is watched: the StatefulSet's status (a pod created, Ready,
/// not Ready or gone changes `replicas` / `readyReplicas`), the StreamTopics
/// and the job itself wake the controller at once, and what only the clock
/// decides (the stability window, the health timeout) is a deadline
/// ([`rollout_deadline`]). This is the safety net for a missed event.
pub const WAIT_MAX: Duration = Duration::from_secs(10);
/// Added to a deadline so the next look falls just after it, not a
/// millisecond before (which would cost one more round).
const DEADLINE_SLACK: Duration = Duration::from_millis(100);
/// How soon to look again in a steady state (health, stopped pods, lag).
pub const RESYNC: Duration = Duration::from_secs(30);

/// A runtime pod of the job's StatefulSet, as the controller saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    /// The pod template revision it was created from ([`revision`]).
    pub revision: Option<String>,
    /// The Ready condition (the runtime's `/readyz`).
    pub ready: bool,
    /// When the Ready condition last changed (`lastTransitionTime`), if known.
    pub ready_since: Option<Timestamp>,
    /// Container restarts since the pod was created.
    pub restarts: i32,
    /// Has a deletion timestamp.
    pub terminating: bool,
    /// The runtime's termination message of its last exit, if it failed
    /// ([`termination`]: `<Reason>: <detail>`).
    pub last_failure: Option<String>,
}

/// An admin API answer, or why there is none (unreachable, HTTP error).
pub type Answer<T> = Result<T, String>;

/// Everything [`decide`] looks at.
#[derive(Clone, Debug)]
pub struct Observed {
    pub generation: i64,
    pub spec: StreamJobSpec,
    pub status: StreamJobStatus,
    /// Annotation `streamops.io/suspend: "true"`.
    pub suspend_annotation: bool,
    /// Annotation `streamops.io/savepoint-request`.
    pub savepoint_annotation: Option<String>,
    /// The resolved topics, or why they are not usable yet.
    pub topics: Result<JobTopics, String>,
    /// The topics of `status.lastStableSpec` when they are not `spec`'s
    /// (`None`: the same references).
    pub stable_topics: Option<Result<JobTopics, String>>,
    /// Why the operator's settings refuse the spec's checkpoint storage or
    /// savepoint ([`super::resources::storage_refusal`]); `None`: allowed.
    pub storage_refusal: Option<String>,
    pub pods: Vec<PodView>,
    /// `GET /v1/status` per pod name (pods with no address are absent).
    pub runtime: BTreeMap<String, Answer<RuntimeStatus>>,
    /// `GET /v1/savepoints/{intent's id}` per pod name; `Ok(None)` is a 404.
    pub savepoints: BTreeMap<String, Answer<Option<SavepointStatus>>>,
    /// The checkpoint storage the running version's pods use (their
    /// job.json's `spec.checkpoint.storage`): only savepoints under it are
    /// deleted.
    pub storage: String,
    /// The Kafka id prefixes this job may get ([`Step::status`]'s
    /// `kafkaIdPrefix` once recorded).
    pub ids: KafkaIds,
    /// The `<job>-admin` Secret exists.
    pub admin_secret: bool,
    /// The operator puts a NetworkPolicy in front of the runtime pods.
    pub network_policy: bool,
    /// What the namespace's ResourceQuotas have left ([`super::quota`];
    /// empty: none, or not readable).
    pub quota: Vec<super::quota::Room>,
    pub now: Timestamp,
}

/// The two schemes of Kafka transactional and group ids
/// ([`streamops_crds::runtime_api::kafka_id_prefix`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaIds {
    /// `streamops.<namespace>.<job>.<uid>`: per-namespace ACLs can grant it.
    pub current: String,
    /// `streamops-<uid>`: what jobs deployed by older operators run with.
    pub legacy: String,
}

impl KafkaIds {
    pub fn of(namespace: &str, job: &str, uid: &str) -> Self {
        Self {
            current: runtime_api::kafka_id_prefix(namespace, job, uid),
            legacy: runtime_api::legacy_kafka_id_prefix(uid),
        }
    }
}

/// Whether nothing was ever started for the job (no intent, no stable
/// version, no layout): what is fixed at the first deployment is fixed now.
fn is_new(o: &Observed) -> bool {
    let s = &o.status;
    s.upgrade.is_none() && s.last_stable_spec.is_none() && s.source_layout.is_empty()
}

/// The prefix the job's ids have: the recorded one; else, for a job that
/// never started anything, the current scheme; else (a job an older operator
/// deployed, or began to: an intent or a stable spec without a recorded
/// prefix) the legacy one, because a producer with another transactional id
/// would not fence its predecessors.
fn id_prefix(o: &Observed) -> String {
    let s = &o.status;
    match &s.kafka_id_prefix {
        Some(p) => p.clone(),
        None if is_new(o) => o.ids.current.clone(),
        None => o.ids.legacy.clone(),
    }
}

/// A Kafka topic the job itself owns (no StreamTopic names it): it must
/// exist with at least `partitions` partitions and `config` at creation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternalTopic {
    pub name: String,
    pub partitions: i32,
    pub config: BTreeMap<String, String>,
}

/// What must exist before anything of the step is recorded or deployed: the
/// job's internal topics with P partitions, its Service (and NetworkPolicy)
/// and its admin Secret. Each is idempotent and needs no record (its name
/// is fixed by the job's), and a failure leaves the status as it was, so a
/// Kafka outage does not start an intent whose pods could not run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prerequisites {
    /// Created when missing, grown when P grew (never shrunk).
    pub internal_topics: Vec<InternalTopic>,
    /// Apply the headless Service the pods' names resolve through.
    pub service: bool,
    /// Apply the NetworkPolicy in front of the pods.
    pub network_policy: bool,
    /// Create the `<job>-admin` Secret with a new token (it does not exist).
    pub admin_secret: bool,
}

/// What the StatefulSet and ConfigMap should say now.
#[derive(Clone, Debug, PartialEq)]
pub struct Deployment {
    /// Defaulted.
    pub spec: StreamJobSpec,
    pub generation: i64,
    /// M, the pods the job runs with (what `job.json` says).
    pub parallelism: i32,
    /// StatefulSet replicas: M, or 0 while old pods are removed / suspended.
    pub replicas: i32,
    pub topics: JobTopics,
    pub restore: RestoreConfig,
    /// Pod template annotation; see [`revision`].
    pub revision: String,
    /// Of the job's Kafka ids ([`decide`] sets it).
    pub kafka_id_prefix: String,
    /// The job's key groups (`status.keyGroups`; `None`: one per task, jobs
    /// first deployed before key groups). Filled in by [`decide`].
    pub key_groups: Option<u32>,
}

/// The one admin call a step makes (on the pods named).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminCall {
    None,
    Savepoint {
        id: String,
        stop: bool,
        /// Drained: the intent changes the source partition count.
        drain: bool,
        pods: Vec<String>,
    },
    Resume {
        pods: Vec<String>,
    },
    /// `DELETE /v1/savepoints/{id}` of each savepoint on every pod named
    /// (each deletes what its storage holds; idempotent).
    DeleteSavepoints {
        savepoints: Vec<SavepointToDelete>,
        pods: Vec<String>,
    },
}

/// A savepoint to delete from storage: its id (what the admin API takes)
/// and its location (as `status.savepointsToDelete` lists it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavepointToDelete {
    pub id: String,
    pub location: String,
}

/// The most savepoints one step asks the pods to delete (each a call per
/// pod); the rest follow on the next reconcile, which the status write of
/// the confirmed ones triggers.
pub const DELETIONS_PER_STEP: usize = 8;

/// A Kubernetes Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What the metrics count.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    SavepointCompleted { seconds: f64 },
    SavepointFailed,
    UpgradeSucceeded { seconds: f64 },
    UpgradeFailed,
    RolledBack,
    RollbackFailed,
}

/// The decision: ensure `prerequisites`, persist `status` (with `health`),
/// then apply `deployment`, then make `call`; look again after `requeue`.
#[derive(Clone, Debug)]
pub struct Step {
    pub prerequisites: Prerequisites,
    pub status: StreamJobStatus,
    pub health: Health,
    pub deployment: Option<Deployment>,
    pub call: AdminCall,
    pub events: Vec<Transition>,
    pub outcomes: Vec<Outcome>,
    pub requeue: Duration,
    /// Source StreamTopics whose `spec.partitions` the autoscaler raises
    /// (`growSourcePartitions`), name -> count; after the status write,
    /// and only ever upward.
    pub grow_topics: BTreeMap<String, i32>,
}

impl Step {
    fn new(status: StreamJobStatus, health: Health) -> Self {
        Self {
            prerequisites: Prerequisites::default(),
            status,
            health,
            deployment: None,
            call: AdminCall::None,
            events: Vec::new(),
            outcomes: Vec::new(),
            requeue: RESYNC,
            grow_topics: BTreeMap::new(),
        }
    }
    /// What the StatefulSet and ConfigMap should say; records the source
    /// layout it runs with, which later layouts keep.
    fn deploy(mut self, d: Option<Deployment>) -> Self {
        if let Some(d) = &d {
            self.status.source_layout = layout::assign(&self.status.source_layout, &d.topics.source);
        }
        self.deployment = d;
        self
    }
    fn call(mut self, call: AdminCall) -> Self {
        self.call = call;
        self
    }
    fn event(mut self, warning: bool, reason: &'static str, message: impl Into<String>) -> Self {
        self.events.push(Transition {
            warning,
            reason,
            message: message.into(),
        });
        self
    }
    fn outcome(mut self, o: Outcome) -> Self {
        self.outcomes.push(o);
        self
    }
    fn poll(mut self) -> Self {
        self.requeue = POLL;
        self
    }
    /// Waits for a watch event, or until `deadline` (then just after it),
    /// at most [`WAIT_MAX`].
    fn wait(mut self, deadline: Option<Duration>) -> Self {
        self.requeue = wait_for(deadline);
        self
    }
}

/// The requeue of a step that waits for a watch event or `deadline`.
pub fn wait_for(deadline: Option<Duration>) -> Duration {
    deadline.map_or(WAIT_MAX, |d| d.saturating_add(DEADLINE_SLACK).min(WAIT_MAX))
}

/// How long until the clock alone can change a rollout's decision, or `None`
/// when only a change of the pods can (which the StatefulSet watch reports).
///
/// - Success: once `want` of the Ready `new_pods` have been Ready for
///   `stable_after` (a pod without a known transition time counts as Ready
///   long enough) and the pods were requested at least `stable_after` ago;
///   never after a restart (a restarted rollout can only time out).
/// - `health_timeout` (pass `None` once it no longer matters): the decision
///   changes when `since` exceeds it.
pub fn rollout_deadline(
    new_pods: &[&PodView],
    want: usize,
    since: Duration,
    stable_after: Duration,
    health_timeout: Option<Duration>,
    now: Timestamp,
) -> Option<Duration> {
    let restarted = new_pods.iter().any(|p| p.restarts > 0);
    let stable = if restarted || want == 0 {
        None
    } else {
        let mut due: Vec<Duration> = new_pods
            .iter()
            .filter(|p| p.ready)
            .map(|p| match p.ready_since {
                None => Duration::ZERO,
                Some(t) => stable_after.saturating_sub(Duration::from_millis(
                    u64::try_from(millis_between(t, now)).unwrap_or(0),
                )),
            })
            .collect();
        due.sort_unstable();
        due.get(want - 1)
            .map(|d| (*d).max(stable_after.saturating_sub(since)))
    };
    let timeout = health_timeout.and_then(|h| h.checked_sub(since));
    match (stable, timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Pods the job runs: the source partition count P, capped by
/// `spec.parallelism`; at least 1, never above P.
pub fn target_parallelism(spec: &StreamJobSpec, partitions: i32) -> i32 {
    let p = partitions.max(1);
    spec.parallelism.map_or(p, |cap| cap.clamp(1, p))
}

/// The autoscaler's recommendation when it is to be acted on
/// (`spec.autoscaler.mode: apply`), within `[1, P]`.
fn applied_recommendation(o: &Observed, partitions: i32) -> Option<i32> {
    let spec = o.spec.autoscaler.as_ref()?;
    let recommended = o.status.autoscaler.as_ref()?.recommended_parallelism?;
    (spec.mode == AutoscalerMode::Apply).then(|| recommended.clamp(1, partitions.max(1)))
}

/// Pods the running spec asks for: [`target_parallelism`], or in the
/// autoscaler's `apply` mode its recommendation (`spec.parallelism` is then
/// only the count before the first recommendation).
pub fn desired_parallelism(o: &Observed, partitions: i32) -> i32 {
    applied_recommendation(o, partitions).unwrap_or_else(|| target_parallelism(&o.spec, partitions))
}

/// What one evaluation of the autoscaler decided.
#[derive(Default)]
struct Autoscaled {
    /// The next `status.autoscaler`.
    status: Option<AutoscalerStatus>,
    /// Source StreamTopics to grow: name -> `spec.partitions`.
    grow: BTreeMap<String, i32>,
    /// A growth it gave up on (why).
    gave_up: Option<String>,
}

/// `status.autoscaler` after this evaluation of the steady state: absent
/// with no autoscaler or `mode: off`; unchanged unless every one of the
/// `running` pods is ready (no evidence then, and a restart is not judged).
/// A growth of the sources in flight holds every decision until the
/// topics have grown (asked again at each evaluation) or it times out.
fn autoscale(o: &Observed, running: i32, topics: &JobTopics, healthy: bool) -> Autoscaled {
    let Some(spec) = o
        .spec
        .autoscaler
        .as_ref()
        .filter(|a| a.mode != AutoscalerMode::Off)
    else {
        return Autoscaled::default();
    };
    if !healthy {
        return Autoscaled {
            status: o.status.autoscaler.clone(),
            ..Autoscaled::default()
        };
    }
    // Each source StreamTopic with its partitions (resolved in this order).
    let sources: Vec<(String, i32)> = o
        .spec
        .source
        .topics
        .iter()
        .cloned()
        .zip(topics.source.iter().map(|t| t.partitions))
        .collect();
    let mut previous = o.status.autoscaler.clone();
    if let Some(prev) = &previous {
        match autoscaler::growth_progress(prev, &sources, o.now) {
            autoscaler::Growth::None => {}
            autoscaler::Growth::Done => {
                previous = Some(AutoscalerStatus {
                    partition_growth: None,
                    ..prev.clone()
                });
            }
            autoscaler::Growth::Waiting(grow) => {
                return Autoscaled {
                    status: previous,
                    grow,
                    gave_up: None,
                };
            }
            autoscaler::Growth::TimedOut(status) => {
                let why = status.message.clone();
                return Autoscaled {
                    status: Some(status),
                    grow: BTreeMap::new(),
                    gave_up: why,
                };
            }
        }
    }
    let answers = live_pods(o).into_iter().map(|p| match o.runtime.get(&p.name) {
        Some(Ok(s)) => Some(s),
        _ => None,
    });
    let sample = autoscaler::sample_of(running, topics.total_partitions(), answers);
    let decided = autoscaler::decide(spec, previous.as_ref(), &sample, o.now);
    match autoscaler::grow(spec, &decided, &sources, o.status.key_groups, o.now) {
        Some(grown) if let Some(why) = growth_refusal(o, running, &grown) => Autoscaled {
            status: Some(AutoscalerStatus {
                reason: autoscaler::reason::GROWTH_REFUSED.to_owned(),
                message: Some(autoscaler::capped(format!(
                    "{}; not growing the source topics: {why}",
                    decided.message.as_deref().unwrap_or_default()
                ))),
                ..decided
            }),
            ..Autoscaled::default()
        },
        Some(grown) => Autoscaled {
            grow: grown
                .partition_growth
                .as_ref()
                .map(|g| g.topics.clone())
                .unwrap_or_default(),
            status: Some(grown),
            gave_up: None,
        },
        None => Autoscaled {
            status: Some(decided),
            ..Autoscaled::default()
        },
    }
}

/// Why a growth of the sources to `grown`'s count must not start: what the
/// restart it leads to would be refused for (the namespace's quota, a
/// savepoint predicted to outlast its timeout, an upgrade mode that cannot
/// re-shard), checked before the topics are touched, since partitions
/// cannot be removed again.
fn growth_refusal(o: &Observed, running: i32, grown: &AutoscalerStatus) -> Option<String> {
    if upgrade_mode(&o.spec) != UpgradeMode::Savepoint {
        return Some(format!(
            "re-sharding onto new partitions needs spec.upgradeMode savepoint, not {}",
            mode_name(upgrade_mode(&o.spec))
        ));
    }
    let to = grown.recommended_parallelism.unwrap_or(running);
    let demand = super::quota::pod_demand(&o.spec);
    if let Some(why) = super::quota::refusal(&o.quota, (running, &demand), (to, &demand)) {
        return Some(format!("{to} pods would not fit the namespace's quota: {why}"));
    }
    savepoint_refusal(o)
}

/// A stable hash of what the pods execute: the runtime view of the spec, M
/// and the topics. Ignored spec changes (timeouts, retention, nonce) and the
/// restore hint do not change it, so they never make running pods outdated.
pub fn revision(spec: &StreamJobSpec, parallelism: i32, topics: &JobTopics) -> String {
    let view = change::runtime_view(&spec.defaulted());
    let text = serde_json::to_string(&(view, parallelism, topics)).unwrap_or_default();
    // FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The savepoint-request key: changes whenever `spec.savepointNonce` or the
/// `savepoint-request` annotation gets a new value.
pub fn savepoint_request_key(spec: &StreamJobSpec, annotation: Option<&str>) -> Option<String> {
    match (spec.savepoint_nonce.as_deref(), annotation) {
        (None, None) => None,
        (n, a) => Some(format!(
            "nonce={};annotation={}",
            n.unwrap_or(""),
            a.unwrap_or("")
        )),
    }
}

/// Savepoint history, newest first: at most `keep`, none older than
/// `max_age`, but the newest is never removed.
pub fn retain_savepoints(
    history: Vec<SavepointRecord>,
    keep: usize,
    max_age: Option<Duration>,
    now: Timestamp,
) -> Vec<SavepointRecord> {
    history
        .into_iter()
        .enumerate()
        .filter(|(i, sp)| {
            *i == 0
                || (*i < keep.max(1)
                    && max_age.is_none_or(|age| millis_between(sp.time.0, now) <= age.as_millis() as i64))
        })
        .map(|(_, sp)| sp)
        .collect()
}

/// The id of the savepoint at `location` if it lies in `storage` (where
/// the runtime writes it), else `None`: a savepoint elsewhere (restored
/// from another job's storage, or written before `spec.checkpoint.storage`
/// changed) is not the pods' to delete.
pub fn own_savepoint_id<'a>(location: &'a str, storage: &str) -> Option<&'a str> {
    runtime_api::savepoint_id_in(storage, location)
}

/// Sets `status.savepointHistory` to `history` pruned by the spec's
/// `savepointsToKeep` and `savepointMaxAge`, and queues in
/// `status.savepointsToDelete` what it pruned that lies in the job's
/// storage (what lies elsewhere is only pruned).
fn prune_history(o: &Observed, status: &mut StreamJobStatus, history: Vec<SavepointRecord>) {
    let spec = o.spec.defaulted();
    let cp = spec.checkpoint.as_ref();
    let keep = cp
        .and_then(|c| c.savepoints_to_keep)
        .unwrap_or(streamops_crds::job::defaults::SAVEPOINTS_TO_KEEP);
    let max_age = cp
        .and_then(|c| c.savepoint_max_age.as_ref())
        .map(|d| d.as_duration());
    let kept = retain_savepoints(
        history.clone(),
        usize::try_from(keep).unwrap_or(5),
        max_age,
        o.now,
    );
    // Oldest first: the order they are deleted in.
    for pruned in history
        .iter()
        .rev()
        .filter(|h| !kept.iter().any(|k| k.id == h.id))
    {
        if own_savepoint_id(&pruned.location, &o.storage).is_some()
            && !status.savepoints_to_delete.contains(&pruned.location)
        {
            status.savepoints_to_delete.push(pruned.location.clone());
        }
    }
    status.savepoint_history = kept;
}

/// What to do with `status.savepointsToDelete` now: the list to keep (the
/// pending ones, minus those outside the job's storage, which are only
/// dropped) and the deletions to ask for: every pending one but those a
/// restore or rollback may still need (the savepoint an in-flight intent
/// restores from, `status.lastSavepoint`, and the one `spec.restore.fromSavepoint`
/// names, in the spec or the last stable spec), at most
/// [`DELETIONS_PER_STEP`], oldest first.
pub fn savepoint_deletions(o: &Observed) -> (Vec<String>, Vec<SavepointToDelete>) {
    let status = &o.status;
    let from_spec = |s: &StreamJobSpec| s.restore.as_ref().and_then(|r| r.from_savepoint.clone());
    let needed: Vec<String> = [
        status.upgrade.as_ref().and_then(|i| i.restore_from.clone()),
        status.last_savepoint.as_ref().map(|s| s.location.clone()),
        from_spec(&o.spec),
        status.last_stable_spec.as_ref().and_then(from_spec),
    ]
    .into_iter()
    .flatten()
    .collect();
    let needed_ids: Vec<&str> = needed
        .iter()
        .filter_map(|l| own_savepoint_id(l, &o.storage))
        .chain(status.last_savepoint.as_ref().map(|s| s.id.as_str()))
        .chain(status.upgrade.as_ref().map(|i| i.savepoint_id.as_str()))
        .collect();
    let mut keep = Vec::new();
    let mut delete = Vec::new();
    for location in &status.savepoints_to_delete {
        let Some(id) = own_savepoint_id(location, &o.storage) else {
            continue;
        };
        if !keep.contains(location) {
            keep.push(location.clone());
        }
        if !needed_ids.contains(&id)
            && delete.len() < DELETIONS_PER_STEP
            && !delete.iter().any(|d: &SavepointToDelete| d.id == id)
        {
            delete.push(SavepointToDelete {
                id: id.to_owned(),
                location: location.clone(),
            });
        }
    }
    (keep, delete)
}

/// `status` without the savepoints every pod confirmed deleted (locations
/// as [`AdminCall::DeleteSavepoints`] named them).
pub fn forget_deleted(status: &mut StreamJobStatus, deleted: &[String]) {
    status.savepoints_to_delete.retain(|l| !deleted.contains(l));
}

fn millis_between(earlier: Timestamp, later: Timestamp) -> i64 {
    later.as_millisecond() - earlier.as_millisecond()
}

fn elapsed(since: &Time, now: Timestamp) -> Duration {
    Duration::from_millis(u64::try_from(millis_between(since.0, now)).unwrap_or(0))
}

fn secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

struct Timeouts {
    savepoint: Duration,
    health: Duration,
    rollback: bool,
}

fn timeouts(spec: &StreamJobSpec) -> Timeouts {
    let d = spec.defaulted();
    let up = d.upgrade.unwrap_or(streamops_crds::job::UpgradeSpec {
        savepoint_timeout: None,
        health_timeout: None,
        rollback: None,
    });
    Timeouts {
        savepoint: up
            .savepoint_timeout
            .map_or(Duration::from_secs(60), |t| t.as_duration()),
        health: up
            .health_timeout
            .map_or(Duration::from_secs(120), |t| t.as_duration()),
        rollback: up.rollback.unwrap_or(true),
    }
}

fn upgrade_mode(spec: &StreamJobSpec) -> UpgradeMode {
    spec.upgrade_mode.unwrap_or_default()
}

fn desired_suspended(o: &Observed) -> bool {
    o.suspend_annotation || o.spec.state == Some(JobState::Suspended)
}

/// Live (not terminating) pods, in name order.
fn live_pods(o: &Observed) -> Vec<&PodView> {
    let mut pods: Vec<&PodView> = o.pods.iter().filter(|p| !p.terminating).collect();
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    pods
}

/// Pods whose runtime says it is Stopped (an abandoned stop-with-savepoint).
fn stopped_pods(o: &Observed) -> Vec<String> {
    o.runtime
        .iter()
        .filter(|(_, a)| matches!(a, Ok(s) if s.state == RuntimeState::Stopped))
        .map(|(name, _)| name.clone())
        .collect()
}

fn ready_count(o: &Observed, revision: &str) -> usize {
    live_pods(o)
        .iter()
        .filter(|p| p.ready && p.revision.as_deref() == Some(revision))
        .count()
}

/// The intent's defaulted view: kind and options with their defaults.
fn kind_of(intent: &UpgradeIntent) -> IntentKind {
    intent.kind.unwrap_or(IntentKind::Upgrade)
}

/// What the pods of `intent` run.
fn intent_deployment(o: &Observed, intent: &UpgradeIntent, replicas: i32) -> Option<Deployment> {
    let mut topics = laid_out(o, &intent.spec).ok()?;
    if intent.source_partitions.is_some() && intent.source_partitions == o.status.source_partitions {
        // An intent at the running count (a resume, or a change that is
        // not the rescale): a topic that grew since waits for that rescale.
        pin_running_counts(o, &mut topics);
    }
    let parallelism = intent
        .parallelism
        .unwrap_or_else(|| target_parallelism(&intent.spec, topics.total_partitions()));
    let mode = intent.restore_mode.unwrap_or(if intent.restore_from.is_some() {
        RestoreMode::Savepoint
    } else {
        RestoreMode::LastState
    });
    Some(Deployment {
        spec: intent.spec.defaulted(),
        generation: intent.target_generation,
        parallelism,
        replicas,
        revision: revision(&intent.spec, parallelism, &topics),
        restore: RestoreConfig {
            savepoint: intent
                .restore_from
                .clone()
                .filter(|_| mode == RestoreMode::Savepoint),
            allow_empty_state: mode == RestoreMode::Empty || intent.spec.allows_empty_state(),
            mode: Some(mode),
        },
        topics,
        kafka_id_prefix: String::new(),
        key_groups: None,
    })
}

/// Sets each source topic's partition count to the one the job runs with
/// (`status.sourceLayout`), with the layout for those counts.
fn pin_running_counts(o: &Observed, topics: &mut JobTopics) {
    let running = running_counts(o);
    let mut pinned = false;
    for t in &mut topics.source {
        if let Some(&n) = running.get(&t.topic)
            && n != t.partitions
        {
            t.partitions = n;
            pinned = true;
        }
    }
    if pinned {
        let full = layout::assign(&o.status.source_layout, &topics.source);
        topics.layout = layout::for_job_file(&full, &topics.source);
    }
}

/// The StreamTopics a spec references: what decides which resolved topics
/// it runs with.
pub fn topic_refs(spec: &StreamJobSpec) -> (Vec<String>, String, Option<String>, Option<String>) {
    (
        spec.source.topics.clone(),
        spec.sink.topic.clone(),
        spec.late_events.as_ref().map(|s| s.topic.clone()),
        spec.dead_letter.as_ref().map(|s| s.topic.clone()),
    )
}

/// The resolved topics of `spec` (the job's spec, or the last stable one a
/// rollback or the steady state runs) with the source layout that keeps
/// every partition on the task that read it before ([`layout`]).
fn laid_out(o: &Observed, spec: &StreamJobSpec) -> Result<JobTopics, String> {
    let refs = topic_refs(spec);
    let resolved = if refs == topic_refs(&o.spec) {
        o.topics.clone()
    } else {
        match (&o.stable_topics, &o.status.last_stable_spec) {
            (Some(t), Some(stable)) if refs == topic_refs(stable) => t.clone(),
            _ => Err("the topics of the running spec are not resolved yet".to_owned()),
        }
    };
    let mut topics = resolved?;
    let full = layout::assign(&o.status.source_layout, &topics.source);
    topics.layout = layout::for_job_file(&full, &topics.source);
    Ok(topics)
}

/// What runs in a steady state: the last stable spec, restoring (on a pod
/// restart) from the last committed checkpoint, on the source partitions it
/// runs with (`status.sourceLayout`): only an intent changes the partition
/// count, so a topic that grew (or shrank) since is not handed to the pods
/// here, where their restore would be refused.
fn steady_deployment(o: &Observed, replicas: Option<i32>) -> Option<Deployment> {
    let spec = o.status.last_stable_spec.as_ref()?;
    let mut topics = laid_out(o, spec).ok()?;
    pin_running_counts(o, &mut topics);
    let parallelism = o
        .status
        .parallelism
        .filter(|m| *m > 0)
        .unwrap_or_else(|| target_parallelism(spec, topics.total_partitions()));
    Some(Deployment {
        spec: spec.defaulted(),
        generation: o.status.last_stable_generation.unwrap_or(o.generation),
        parallelism,
        replicas: replicas.unwrap_or(parallelism),
        revision: revision(spec, parallelism, &topics),
        restore: RestoreConfig {
            savepoint: None,
            allow_empty_state: spec.allows_empty_state(),
            mode: Some(RestoreMode::LastState),
        },
        topics,
        kafka_id_prefix: String::new(),
        key_groups: None,
    })
}

/// A spec no version may start from: invalid in itself (`InvalidSpec`), or
/// with checkpoint storage the operator's settings refuse
/// (`StorageNotAllowed`). Either is `Stalled`, and what runs keeps running.
fn refused_spec(o: &Observed) -> Option<Health> {
    if let Some(message) = o.spec.validation_message() {
        return Some(Health::stalled("InvalidSpec", message));
    }
    o.storage_refusal
        .as_ref()
        .map(|message| Health::stalled("StorageNotAllowed", message.clone()))
}

/// The next step. See the module documentation for the states.
pub fn decide(o: &Observed) -> Step {
    let mut step = match o.status.upgrade.clone() {
        Some(intent) => continue_intent(o, intent),
        None => steady(o),
    };
    // Fixed by the first step that starts anything, before any pod exists
    // (the status is written before the deployment is applied).
    let prefix = id_prefix(o);
    if step.status.kafka_id_prefix.is_none() && (step.status.upgrade.is_some() || step.deployment.is_some()) {
        step.status.kafka_id_prefix = Some(prefix.clone());
    }
    // Key groups likewise, for jobs that start now: a job an older operator
    // deployed keeps one group per task (its snapshots are laid out so).
    if step.status.key_groups.is_none()
        && is_new(o)
        && (step.status.upgrade.is_some() || step.deployment.is_some())
        && let Ok(topics) = &o.topics
    {
        let tasks = u32::try_from(topics.total_partitions()).unwrap_or(0).max(1);
        step.status.key_groups = i32::try_from(runtime_api::default_key_groups(tasks)).ok();
    }
    if let Some(d) = &mut step.deployment {
        d.kafka_id_prefix = step.status.kafka_id_prefix.clone().unwrap_or(prefix);
        d.key_groups = step.status.key_groups.and_then(|g| u32::try_from(g).ok());
    }
    step.status.planned_change = planned_change(o, &step.status);
    step.prerequisites = prerequisites(o);
    step
}

/// `status.plannedChange` after this step: the verdict on the change from
/// what runs (`lastStableSpec`) to the current spec, as long as the current
/// generation does not run; `None` once it does (or before the first
/// deployment, which changes nothing that runs).
fn planned_change(o: &Observed, after: &StreamJobStatus) -> Option<PlannedChange> {
    if after.last_stable_generation == Some(o.generation) {
        return None;
    }
    let running = after.last_stable_spec.as_ref()?;
    let verdict = change::classify(running, &o.spec);
    let kind = match verdict.kind {
        ChangeKind::Upgrade => "Upgrade",
        ChangeKind::Rescale => "Rescale",
        ChangeKind::Suspend => "Suspend",
        ChangeKind::Resume => "Resume",
        ChangeKind::Ignore => return None,
    };
    let mut reasons = match &verdict.compatibility {
        Compatibility::Compatible => Vec::new(),
        Compatibility::Incompatible(why) => why.clone(),
    };
    reasons.extend(change::step_changes(&running.defaulted(), &o.spec.defaulted()));
    let savepoint = upgrade_mode(&o.spec) == UpgradeMode::Savepoint
        && matches!(
            verdict.kind,
            ChangeKind::Upgrade | ChangeKind::Rescale | ChangeKind::Suspend
        );
    Some(PlannedChange {
        generation: o.generation,
        kind: kind.to_owned(),
        state_compatible: verdict.compatibility.is_compatible(),
        savepoint,
        reasons,
    })
}

/// What a job whose spec may start needs, whatever its state: the
/// repartition topic and the (compacted) control topic with P partitions
/// for the spec's topics, the Service, the NetworkPolicy when the operator
/// puts one, and the admin Secret when it does not exist yet. A refused
/// spec or unresolved topics need nothing new: what runs keeps what it has.
pub fn prerequisites(o: &Observed) -> Prerequisites {
    let Ok(topics) = &o.topics else {
        return Prerequisites::default();
    };
    if refused_spec(o).is_some() {
        return Prerequisites::default();
    }
    let partitions = topics.total_partitions();
    let compact: BTreeMap<String, String> = [("cleanup.policy".to_owned(), "compact".to_owned())].into();
    Prerequisites {
        internal_topics: vec![
            InternalTopic {
                name: topics.repartition.clone(),
                partitions,
                config: BTreeMap::new(),
            },
            InternalTopic {
                name: topics.control.clone(),
                partitions,
                config: compact,
            },
        ],
        service: true,
        network_policy: o.network_policy,
        admin_secret: !o.admin_secret,
    }
}

/// The internal topics deleting the job deletes (its objects in the cluster
/// go by owner reference), unless it is annotated to leave Kafka alone. A
/// job being deleted is never given to [`decide`]: nothing is created for it.
pub fn cleanup(repartition: String, control: String, skip_kafka_deletion: bool) -> Vec<String> {
    if skip_kafka_deletion {
        return Vec::new();
    }
    vec![repartition, control]
}

fn steady(o: &Observed) -> Step {
    let status = o.status.clone();
    let deployed = status.last_stable_spec.is_some();
    if let Some(health) = refused_spec(o) {
        return Step::new(status, health).deploy(steady_deployment(o, None));
    }
    let topics = match &o.topics {
        Ok(t) => t.clone(),
        Err(why) => {
            let health = Health::reconciling("TopicNotReady", why.clone());
            let mut step = Step::new(status, health);
            step.requeue = Duration::from_secs(5);
            return step;
        }
    };
    let p = topics.total_partitions();
    let m = desired_parallelism(o, p);

    if !deployed {
        if desired_suspended(o) {
            let mut status = status;
            status.phase = Some(JobPhase::Suspended);
            status.parallelism = Some(0);
            status.source_partitions = Some(p);
            return Step::new(
                status,
                Health::ready("Suspended", "suspended before its first deployment; nothing runs"),
            );
        }
        let (mode, from) = match o.spec.restore.as_ref().and_then(|r| r.from_savepoint.clone()) {
            Some(location) => (RestoreMode::Savepoint, Some(location)),
            // A new job: its control topic was just created, there is no
            // state to lose, so it starts empty at `source.startFrom`.
            None => (RestoreMode::Empty, None),
        };
        let intent = new_intent(o, IntentKind::Deploy, o.spec.clone(), false, m, p, mode, from);
        let message = format!(
            "deploying generation {} with {m} pods for {p} partitions",
            o.generation
        );
        return begin(
            o,
            intent,
            JobPhase::Deploying,
            Health::reconciling("Deploying", message.clone()),
        )
        .event(false, "Deploying", message);
    }

    let last_stable = status.last_stable_spec.clone().unwrap_or_else(|| o.spec.clone());
    let mode = upgrade_mode(&o.spec);

    if status.phase == Some(JobPhase::Suspended) {
        if desired_suspended(o) {
            return Step::new(status, Health::ready("Suspended", suspended_message(o)))
                .deploy(steady_deployment(o, Some(0)));
        }
        let compat = change::classify(&last_stable, &o.spec).compatibility;
        let Some(restore) = restore_for(o, &compat, mode, true) else {
            return incompatible(o, &compat);
        };
        let (restore_mode, from) = match at_partition_count(o, &topics, mode, restore) {
            Ok(restore) => restore,
            Err(refused) => return *refused,
        };
        // Sources that grew while suspended: the job resumes on the
        // partitions it had (its savepoint was not drained), and the running
        // version then moves to the new count with a drained savepoint.
        let (m, p) = match status.source_partitions {
            Some(was) if was != p && restore_mode != RestoreMode::Empty => {
                (target_parallelism(&o.spec, was), was)
            }
            _ => (m, p),
        };
        if let Some(mut refused) = over_quota(o, &last_stable, 0, m) {
            refused.deployment = steady_deployment(o, Some(0));
            return refused;
        }
        let intent = new_intent(
            o,
            IntentKind::Resume,
            o.spec.clone(),
            false,
            m,
            p,
            restore_mode,
            from,
        );
        let message = format!("resuming generation {} with {m} pods", o.generation);
        return begin(
            o,
            intent,
            JobPhase::Upgrading,
            Health::reconciling("Resuming", message.clone()),
        )
        .event(false, "Resuming", message);
    }

    let refused = o.status.failed_generation == Some(o.generation);
    if desired_suspended(o) && !refused {
        let with_savepoint = mode == UpgradeMode::Savepoint;
        let running_m = status.parallelism.unwrap_or(m);
        let mut spec = last_stable.clone();
        spec.state = Some(JobState::Suspended);
        let intent = new_intent(
            o,
            IntentKind::Suspend,
            spec,
            with_savepoint,
            running_m,
            status.source_partitions.unwrap_or(p),
            RestoreMode::LastState,
            None,
        );
        let phase = if with_savepoint {
            JobPhase::Savepointing
        } else {
            JobPhase::Suspended
        };
        let message = if with_savepoint {
            format!("suspending: stop-with-savepoint {}", intent.savepoint_id)
        } else {
            "suspending: removing the pods (the last committed checkpoint is kept)".to_owned()
        };
        return begin(
            o,
            intent,
            phase,
            Health::reconciling("Suspending", message.clone()),
        )
        .event(false, "Suspending", message);
    }

    if refused {
        let health = previous_stall(o).unwrap_or_else(|| {
            Health::stalled(
                "UpgradeFailed",
                format!(
                    "generation {} failed and is not retried; generation {} keeps running. Change the spec to try again",
                    o.generation,
                    status.last_stable_generation.unwrap_or_default()
                ),
            )
        });
        return resume_stopped(o, Step::new(status, health).deploy(steady_deployment(o, None)));
    }

    let change = change::classify(&last_stable, &o.spec);
    let running_m = status.parallelism.unwrap_or(m);
    let running_p = status.source_partitions.unwrap_or(p);
    // In `apply` mode the recommendation, not `spec.parallelism`, sets the
    // pod count: a changed `spec.parallelism` alone restarts nothing.
    let rescale = change.kind == ChangeKind::Rescale && applied_recommendation(o, p).is_none();
    let needs_restart = change.kind == ChangeKind::Upgrade || rescale || running_m != m || running_p != p;
    if needs_restart {
        let Some((restore_mode, _)) = restore_for(o, &change.compatibility, mode, false) else {
            return resume_stopped(o, incompatible(o, &change.compatibility));
        };
        let restore_mode = match at_partition_count(o, &topics, mode, (restore_mode, None)) {
            Ok((restore_mode, _)) => restore_mode,
            Err(refused) => return resume_stopped(o, *refused),
        };
        let kind = if change.kind == ChangeKind::Upgrade {
            IntentKind::Upgrade
        } else {
            IntentKind::Rescale
        };
        if let Some(refused) = over_quota(o, &last_stable, running_m, m) {
            return resume_stopped(o, refused);
        }
        let with_savepoint = mode == UpgradeMode::Savepoint;
        if with_savepoint && let Some(refused) = savepoint_too_slow(o) {
            return resume_stopped(o, refused);
        }
        let intent = new_intent(o, kind, o.spec.clone(), with_savepoint, m, p, restore_mode, None);
        let what = match kind {
            IntentKind::Rescale => {
                let by = match applied_recommendation(o, p) {
                    Some(r) if r == m && running_p == p => o
                        .status
                        .autoscaler
                        .as_ref()
                        .map(|a| format!(", autoscaler: {}", a.reason))
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                format!("rescaling {running_m} -> {m} pods ({running_p} -> {p} partitions{by})")
            }
            _ => format!(
                "upgrading generation {} -> {}",
                status.last_stable_generation.unwrap_or_default(),
                o.generation
            ),
        };
        let (phase, message) = if with_savepoint {
            (
                JobPhase::Savepointing,
                format!("{what}: stop-with-savepoint {}", intent.savepoint_id),
            )
        } else {
            (JobPhase::Upgrading, format!("{what} ({} mode)", mode_name(mode)))
        };
        let reason = if kind == IntentKind::Rescale {
            "Rescaling"
        } else {
            "Upgrading"
        };
        return begin(o, intent, phase, Health::reconciling(reason, message.clone()))
            .event(false, reason, message);
    }

    // Nothing the pods run changed: record the spec as the running one.
    let mut status = status;
    status.last_stable_spec = Some(o.spec.clone());
    status.last_stable_generation = Some(o.generation);
    status.source_partitions = Some(p);
    status.parallelism = Some(running_m);
    let o2 = Observed {
        status: status.clone(),
        ..o.clone()
    };
    let deployment = steady_deployment(&o2, None);
    let key = savepoint_request_key(&o.spec, o.savepoint_annotation.as_deref());
    if key.is_some() && key != status.handled_savepoint_request {
        let intent = new_intent(
            &o2,
            IntentKind::Savepoint,
            o.spec.clone(),
            true,
            running_m,
            p,
            RestoreMode::LastState,
            None,
        );
        let message = format!("savepoint {} requested", intent.savepoint_id);
        return begin(
            &o2,
            intent,
            JobPhase::Savepointing,
            Health::reconciling("Savepointing", message.clone()),
        )
        .event(false, "SavepointRequested", message);
    }
    status.phase = Some(JobPhase::Running);
    status.lag = lag(o);
    let before = o
        .status
        .autoscaler
        .as_ref()
        .and_then(|a| a.recommended_parallelism);
    // A lowered savepointsToKeep, or savepoints aging past savepointMaxAge.
    let history = std::mem::take(&mut status.savepoint_history);
    prune_history(o, &mut status, history);
    let revision = deployment
        .as_ref()
        .map(|d| d.revision.clone())
        .unwrap_or_default();
    let ready = ready_count(o, &revision);
    let want = usize::try_from(running_m).unwrap_or(0);
    let autoscaled = autoscale(o, running_m, &topics, ready >= want);
    status.autoscaler = autoscaled.status;
    let recommended = status
        .autoscaler
        .as_ref()
        .and_then(|a| a.recommended_parallelism.map(|r| (r, a)));
    let recommendation = match recommended {
        Some((r, a)) if before.is_some_and(|b| b != r) => Some(format!(
            "{} -> {r} pods ({}): {}",
            before.unwrap_or_default(),
            a.reason,
            a.message.as_deref().unwrap_or_default()
        )),
        _ => None,
    };
    let health = if ready >= want {
        Health::ready(
            "Running",
            format!(
                "generation {} running on {running_m} pods for {p} partitions",
                o.generation
            ),
        )
    } else {
        not_ready(o, &revision, ready, want)
    };
    let resets = new_offset_resets(o);
    if let Some(newest) = resets.last() {
        status.last_offset_reset = Some(newest.clone());
    }
    let acts = o
        .spec
        .autoscaler
        .as_ref()
        .is_some_and(|a| a.mode == AutoscalerMode::Apply);
    let evaluates = status.autoscaler.is_some();
    let mut step = resume_stopped(o, Step::new(status, health).deploy(deployment));
    if evaluates {
        // The pods' figures change every few seconds without any event.
        step.requeue = step.requeue.min(AUTOSCALER_EVERY);
    }
    let growing = !autoscaled.grow.is_empty()
        && o.status
            .autoscaler
            .as_ref()
            .is_none_or(|a| a.partition_growth.is_none());
    if growing && let Some(a) = &step.status.autoscaler {
        let message = a.message.clone().unwrap_or_default();
        step = step.event(false, "GrowingSourcePartitions", message);
    } else if let Some(message) = recommendation {
        step = step.event(false, "AutoscalerRecommendation", message);
        if acts {
            // The rescale starts at the next evaluation, from this status.
            step.requeue = Duration::from_secs(1);
        }
    }
    if let Some(why) = autoscaled.gave_up {
        step = step.event(true, "PartitionGrowthTimedOut", why);
    }
    step.grow_topics = autoscaled.grow;
    for r in resets {
        step = step.event(
            true,
            "SourceOffsetReset",
            format!(
                "{}-{}: position {} was no longer in the partition (offsets {}..{}); went on from {} \
                 (spec.source.onOffsetOutOfRange)",
                r.topic, r.partition, r.from, r.log_start, r.log_end, r.to
            ),
        );
    }
    if ready < want {
        step.requeue = Duration::from_secs(5);
    } else if step.call == AdminCall::None {
        step = delete_savepoints(o, step, &revision);
    }
    step
}

/// In the steady, healthy state with no other call due: asks every live pod
/// of `revision` to delete the savepoints [`savepoint_deletions`] allows,
/// and drops from the list what is not the pods' to delete.
fn delete_savepoints(o: &Observed, mut step: Step, revision: &str) -> Step {
    let o2 = Observed {
        status: step.status.clone(),
        ..o.clone()
    };
    let (keep, savepoints) = savepoint_deletions(&o2);
    step.status.savepoints_to_delete = keep;
    let pods: Vec<String> = live_pods(o)
        .iter()
        .filter(|p| p.ready && p.revision.as_deref() == Some(revision))
        .map(|p| p.name.clone())
        .collect();
    if savepoints.is_empty() || pods.is_empty() {
        return step;
    }
    step.call(AdminCall::DeleteSavepoints { savepoints, pods })
}

/// Offset resets the pods report that are newer than the last one in
/// status, oldest first.
fn new_offset_resets(o: &Observed) -> Vec<OffsetReset> {
    let seen = o
        .status
        .last_offset_reset
        .as_ref()
        .map_or(i64::MIN, |r| r.time_ms);
    let mut resets: Vec<OffsetReset> = o
        .runtime
        .values()
        .filter_map(|a| a.as_ref().ok())
        .flat_map(|s| s.offset_resets.iter())
        .filter(|r| r.time_ms > seen)
        .cloned()
        .collect();
    resets.sort_by_key(|r| (r.time_ms, r.topic.clone(), r.partition));
    resets
}

/// `Ready=False` while fewer than `want` pods of `revision` are ready: with
/// the reason a not-ready pod's runtime gave for its last exit
/// (`KafkaUnavailable` while the brokers cannot take its transactions), else
/// `PodsNotReady`.
fn not_ready(o: &Observed, revision: &str, ready: usize, want: usize) -> Health {
    let counted = format!("{ready}/{want} runtime pods ready");
    let failure = live_pods(o)
        .into_iter()
        .filter(|p| !p.ready && p.revision.as_deref() == Some(revision))
        .find_map(|p| {
            let (reason, detail) = termination::parse(p.last_failure.as_deref()?)?;
            Some((p.name.as_str(), reason, detail))
        });
    match failure {
        Some((pod, reason, detail)) => {
            Health::reconciling(reason, format!("{counted}; {pod} last exited: {detail}"))
        }
        None => Health::reconciling("PodsNotReady", counted),
    }
}

/// The pods' lag summed, when every live pod reported one.
fn lag(o: &Observed) -> Option<i64> {
    let pods = live_pods(o);
    if pods.is_empty() {
        return None;
    }
    pods.iter()
        .map(|p| match o.runtime.get(&p.name) {
            Some(Ok(s)) => s.lag,
            _ => None,
        })
        .sum()
}

fn mode_name(mode: UpgradeMode) -> &'static str {
    match mode {
        UpgradeMode::Savepoint => "savepoint",
        UpgradeMode::LastState => "last-state",
        UpgradeMode::Stateless => "stateless",
    }
}

fn suspended_message(o: &Observed) -> String {
    match &o.status.last_savepoint {
        Some(sp) => format!("suspended; resumes from savepoint {} ({})", sp.id, sp.location),
        None => "suspended; resumes from the last committed checkpoint".to_owned(),
    }
}

/// The stalled health recorded last, kept while the same generation is refused.
fn previous_stall(o: &Observed) -> Option<Health> {
    let ready = o.status.conditions.iter().find(|c| c.type_ == "Ready")?;
    let stalled = o
        .status
        .conditions
        .iter()
        .any(|c| c.type_ == "Stalled" && c.status == "True");
    stalled.then(|| Health::stalled(ready.reason.clone(), ready.message.clone()))
}

/// How the new version gets its state, or `None` when the change is
/// state-incompatible and the spec does not allow starting empty.
fn restore_for(
    o: &Observed,
    compat: &Compatibility,
    mode: UpgradeMode,
    resume: bool,
) -> Option<(RestoreMode, Option<String>)> {
    if mode == UpgradeMode::Stateless {
        return Some((RestoreMode::Empty, None));
    }
    if !compat.is_compatible() {
        return o.spec.allows_empty_state().then_some((RestoreMode::Empty, None));
    }
    match (mode, resume, &o.status.last_savepoint) {
        // Resuming in savepoint mode: the suspend savepoint.
        (UpgradeMode::Savepoint, true, Some(sp)) => Some((RestoreMode::Savepoint, Some(sp.location.clone()))),
        // Upgrading in savepoint mode: the location is filled in once taken.
        (UpgradeMode::Savepoint, false, _) => Some((RestoreMode::Savepoint, None)),
        _ => Some((RestoreMode::LastState, None)),
    }
}

/// How the source partition count changed since the running version was
/// deployed (`status.sourcePartitions`), per topic, when it did: e.g.
/// `4 -> 6 (clicks: 4 -> 6)`. Keyed state lives in one keyed partition per
/// source partition (`murmur2(key) % P`), and the runtime cannot move it to
/// another P yet, so such a change is never rolled out with state
/// ([`partitions_refused`]).
fn partitions_changed(o: &Observed, topics: &JobTopics) -> Option<String> {
    let running = o.status.source_partitions?;
    let now = topics.total_partitions();
    if running == now {
        return None;
    }
    let before = running_counts(o);
    let mut topics_changed: Vec<String> = topics
        .source
        .iter()
        .filter_map(|t| {
            let was = before.get(&t.topic).copied().unwrap_or(0);
            (was != t.partitions).then(|| format!("{}: {was} -> {}", t.topic, t.partitions))
        })
        .collect();
    topics_changed.extend(
        before
            .iter()
            .filter(|(name, _)| !topics.source.iter().any(|t| &t.topic == *name))
            .map(|(name, was)| format!("{name}: {was} -> not read")),
    );
    Some(format!("{running} -> {now} ({})", topics_changed.join(", ")))
}

/// Source topic -> partitions the running version reads: the first
/// `status.sourcePartitions` tasks of `status.sourceLayout` (a rollout to a
/// grown count records the grown layout before it is the running one).
fn running_counts(o: &Observed) -> BTreeMap<String, i32> {
    let Some(running) = o.status.source_partitions else {
        return layout_counts(&o.status.source_layout);
    };
    let clipped: Vec<layout::TaskRange> = o
        .status
        .source_layout
        .iter()
        .filter(|r| r.task < running)
        .map(|r| layout::TaskRange {
            count: r.count.min(running - r.task),
            ..r.clone()
        })
        .collect();
    layout_counts(&clipped)
}

/// Source topic -> partitions read, from a layout.
fn layout_counts(layout: &[layout::TaskRange]) -> BTreeMap<String, i32> {
    let mut counts = BTreeMap::new();
    for r in layout {
        let n = counts.entry(r.topic.clone()).or_insert(0);
        *n = (*n).max(r.partition + r.count);
    }
    counts
}

/// Where a restart on `topics` starts from: `restore` while the source
/// partition count is the running one, or when the sources only grew and
/// the version stops with a savepoint (taken drained: the new version
/// re-shards its keyed state, [`drains`]); at another count, empty state
/// when the user allows it (`spec.restore.allowEmptyState`) or has no state
/// to keep (`stateless` upgrades), else the refusal ([`partitions_refused`];
/// boxed: a step is large, and this is the rare path).
fn at_partition_count(
    o: &Observed,
    topics: &JobTopics,
    mode: UpgradeMode,
    restore: (RestoreMode, Option<String>),
) -> Result<(RestoreMode, Option<String>), Box<Step>> {
    let Some(what) = partitions_changed(o, topics) else {
        return Ok(restore);
    };
    if mode == UpgradeMode::Savepoint && sources_grew(o, topics) {
        return Ok(restore);
    }
    if mode == UpgradeMode::Stateless || o.spec.allows_empty_state() {
        Ok((RestoreMode::Empty, None))
    } else {
        Err(Box::new(partitions_refused(o, topics, &what)))
    }
}

/// Every source topic the job runs with is still read, none with fewer
/// partitions, and the total grew: keyed state can follow (re-sharded from
/// a drained savepoint).
fn sources_grew(o: &Observed, topics: &JobTopics) -> bool {
    let before = running_counts(o);
    o.status
        .source_partitions
        .is_some_and(|r| topics.total_partitions() > r)
        && before.iter().all(|(name, &was)| {
            topics
                .source
                .iter()
                .any(|t| &t.topic == name && t.partitions >= was)
        })
}

/// Whether the savepoint of `intent` must be taken drained: it moves the
/// job to another source partition count, where the new version re-shards
/// the keyed state of the savepoint.
fn drains(o: &Observed, intent: &UpgradeIntent) -> bool {
    intent.source_partitions.is_some()
        && o.status.source_partitions.is_some()
        && intent.source_partitions != o.status.source_partitions
}

/// A source partition count the running state cannot follow: `Stalled`
/// before anything is stopped, and the running version keeps running on
/// the partitions it had (its job file is pinned to the running counts, so
/// no pod restarts into a restore the runtime would refuse). A decrease is
/// refused for good (a topic recreated with fewer partitions: its keyed
/// state has nowhere to go); a growth is refused when the version does not
/// stop with a savepoint (`upgradeMode: last-state`): only a drained
/// savepoint lets keyed state move.
fn partitions_refused(o: &Observed, topics: &JobTopics, what: &str) -> Step {
    let grew = sources_grew(o, topics);
    let why = if grew {
        "moving keyed state to more partitions needs a drained savepoint, and spec.upgradeMode is not savepoint, \
         so the new partitions are not read"
    } else {
        "a source topic lost partitions (deleted and recreated?), and the state of the partitions it lost has \
         nowhere to go"
    };
    let fix = if grew {
        "set spec.upgradeMode: savepoint to move the state, or spec.restore.allowEmptyState: true to restart at the \
         new count with empty state (source offsets from source.startFrom)"
    } else {
        "set spec.restore.allowEmptyState: true to restart at the new count with empty state (source offsets from \
         source.startFrom), or restore the topic"
    };
    let message = format!(
        "the source partitions changed {what}: {why}. Generation {} keeps running on the partitions it had; {fix}",
        o.status.last_stable_generation.unwrap_or_default()
    );
    let health = Health::stalled("SourcePartitionsChanged", message);
    let replicas = (o.status.phase == Some(JobPhase::Suspended)).then_some(0);
    Step::new(o.status.clone(), health).deploy(steady_deployment(o, replicas))
}

/// A restart whose new pods (`m` of `o.spec`, replacing `running_m` of the
/// running spec) the namespace's ResourceQuotas cannot admit: `Stalled`
/// (`QuotaExceeded`) before anything stops, the running version keeps
/// running ([`super::quota`]).
fn over_quota(o: &Observed, running: &StreamJobSpec, running_m: i32, m: i32) -> Option<Step> {
    let old = super::quota::pod_demand(running);
    let new = super::quota::pod_demand(&o.spec);
    let why = super::quota::refusal(&o.quota, (running_m, &old), (m, &new))?;
    let message = format!(
        "{m} pods of generation {} (replacing {running_m}) do not fit the namespace's quota: {why}. Generation {} \
         keeps running; raise the quota, or lower spec.parallelism, spec.resources or what spec.podTemplate asks for",
        o.generation,
        o.status.last_stable_generation.unwrap_or_default()
    );
    let health = Health::stalled("QuotaExceeded", message);
    Some(Step::new(o.status.clone(), health).deploy(steady_deployment(o, None)))
}

/// The savepoint a restart would take, predicted from the newest recorded
/// one: its duration, scaled up by how much the state has grown since (the
/// pods' `checkpointBytes` now against its `stateBytes`; never scaled
/// down, a savepoint has fixed costs). `None`: nothing recorded to go by.
pub fn predicted_savepoint_ms(
    history: &[SavepointRecord],
    state_bytes_now: Option<i64>,
) -> Option<(i64, &SavepointRecord)> {
    let last = history
        .iter()
        .filter(|s| s.duration_ms.is_some())
        .max_by_key(|s| s.time.0)?;
    let took = last.duration_ms?.max(0);
    let grown = match (state_bytes_now, last.state_bytes) {
        (Some(now), Some(then)) if then > 0 && now > then => now as f64 / then as f64,
        _ => 1.0,
    };
    Some(((took as f64 * grown).ceil() as i64, last))
}

/// `bytes` for people: `512 B`, `12.5 KiB`, `3.0 MiB`, `1.2 GiB`.
fn human_bytes(bytes: i64) -> String {
    let b = bytes as f64;
    if bytes < 1 << 10 {
        format!("{bytes} B")
    } else if bytes < 1 << 20 {
        format!("{:.1} KiB", b / 1024.0)
    } else if bytes < 1 << 30 {
        format!("{:.1} MiB", b / 1_048_576.0)
    } else {
        format!("{:.1} GiB", b / 1_073_741_824.0)
    }
}

/// A restart with a savepoint refused before anything stops
/// (`SavepointTooSlow`) when the savepoint is predicted
/// ([`predicted_savepoint_ms`]) to outlast `spec.upgrade.savepointTimeout`:
/// otherwise the pods would stop, the savepoint time out and the running
/// version resume, for nothing.
fn savepoint_too_slow(o: &Observed) -> Option<Step> {
    let why = savepoint_refusal(o)?;
    let message = format!(
        "{why}: the pods would stop and then resume for nothing. Generation {} keeps running; raise \
         spec.upgrade.savepointTimeout, or use spec.upgrade.mode last-state",
        o.status.last_stable_generation.unwrap_or_default()
    );
    let health = Health::stalled("SavepointTooSlow", message);
    Some(Step::new(o.status.clone(), health).deploy(steady_deployment(o, None)))
}

/// Why the savepoint a restart needs would outlast `savepointTimeout`
/// ([`predicted_savepoint_ms`]); `None`: it fits, or nothing predicts it.
fn savepoint_refusal(o: &Observed) -> Option<String> {
    let limit = timeouts(&o.spec).savepoint;
    let live = live_pods(o);
    let now_bytes: Option<i64> = if live.is_empty() {
        None
    } else {
        live.iter()
            .map(|p| match o.runtime.get(&p.name) {
                Some(Ok(s)) if !s.checkpoint_bytes.is_empty() => {
                    Some(s.checkpoint_bytes.values().sum::<i64>())
                }
                _ => None,
            })
            .sum()
    };
    let (predicted, last) = predicted_savepoint_ms(&o.status.savepoint_history, now_bytes)?;
    let limit_ms = i64::try_from(limit.as_millis()).unwrap_or(i64::MAX);
    if predicted <= limit_ms {
        return None;
    }
    let growth = match (now_bytes, last.state_bytes) {
        (Some(now), Some(then)) if now > then => format!(
            " for {} of state; the state is {} now, so this one would take about {:.1} s",
            human_bytes(then),
            human_bytes(now),
            predicted as f64 / 1000.0
        ),
        _ => String::new(),
    };
    Some(format!(
        "the last savepoint ({}) took {:.1} s{growth}, over spec.upgrade.savepointTimeout ({})",
        last.id,
        last.duration_ms.unwrap_or_default() as f64 / 1000.0,
        humantime::format_duration(limit),
    ))
}

fn incompatible(o: &Observed, compat: &Compatibility) -> Step {
    let reasons = match compat {
        Compatibility::Incompatible(r) => r.join("; "),
        Compatibility::Compatible => String::new(),
    };
    let message = format!(
        "generation {} is state-incompatible with the running generation {}: {reasons}. Nothing was stopped; set \
         spec.restore.allowEmptyState: true to start the new version with empty state, or revert the change",
        o.generation,
        o.status.last_stable_generation.unwrap_or_default()
    );
    // The Warning event comes with the change of the Ready reason, once.
    let health = Health::stalled("IncompatibleChange", message);
    let replicas = (o.status.phase == Some(JobPhase::Suspended)).then_some(0);
    Step::new(o.status.clone(), health).deploy(steady_deployment(o, replicas))
}

fn resume_stopped(o: &Observed, step: Step) -> Step {
    let stopped = stopped_pods(o);
    if stopped.is_empty() || step.call != AdminCall::None {
        return step;
    }
    let message = format!("resuming stopped pods {}", stopped.join(", "));
    step.call(AdminCall::Resume { pods: stopped })
        .event(false, "ResumingPods", message)
}

#[allow(clippy::too_many_arguments)]
fn new_intent(
    o: &Observed,
    kind: IntentKind,
    spec: StreamJobSpec,
    with_savepoint: bool,
    parallelism: i32,
    partitions: i32,
    restore_mode: RestoreMode,
    restore_from: Option<String>,
) -> UpgradeIntent {
    let target_generation = if matches!(kind, IntentKind::Suspend | IntentKind::Savepoint) {
        o.status.last_stable_generation.unwrap_or(o.generation)
    } else {
        o.generation
    };
    UpgradeIntent {
        savepoint_id: format!("sp-{}-{}", o.generation, o.now.as_millisecond()),
        target_generation,
        spec,
        started: Time(o.now),
        kind: Some(kind),
        with_savepoint: Some(with_savepoint),
        parallelism: Some(parallelism),
        source_partitions: Some(partitions),
        restore_from,
        restore_mode: Some(restore_mode),
        rollout_started: None,
    }
}

/// Records `intent` (the write-ahead entry) and nothing else: the action
/// follows on the next reconcile, from the persisted status.
fn begin(o: &Observed, intent: UpgradeIntent, phase: JobPhase, health: Health) -> Step {
    let mut status = o.status.clone();
    status.upgrade = Some(intent);
    status.phase = Some(phase);
    let mut step = Step::new(status, health).deploy(steady_deployment(o, None));
    step.requeue = Duration::ZERO;
    step
}

fn continue_intent(o: &Observed, intent: UpgradeIntent) -> Step {
    match o.status.phase {
        Some(JobPhase::Savepointing) => savepointing(o, intent),
        Some(JobPhase::Suspended) => draining_for_suspend(o, intent),
        _ => rollout(o, intent),
    }
}

/// One pod's answer about the savepoint in flight.
enum PodSavepoint {
    Completed(SavepointStatus),
    Failed(String),
    Pending(String),
    Unknown,
}

fn savepointing(o: &Observed, intent: UpgradeIntent) -> Step {
    let kind = kind_of(&intent);
    let stop = kind != IntentKind::Savepoint;
    let drain = drains(o, &intent);
    let timeouts = timeouts(&intent.spec);
    let expected = usize::try_from(o.status.parallelism.unwrap_or(0)).unwrap_or(0);
    let pods = live_pods(o);
    let answers: Vec<(String, PodSavepoint)> = pods
        .iter()
        .map(|p| {
            let a = match o.savepoints.get(&p.name) {
                None => PodSavepoint::Pending("no pod address yet".into()),
                Some(Err(e)) => PodSavepoint::Pending(e.clone()),
                Some(Ok(None)) => PodSavepoint::Unknown,
                Some(Ok(Some(s))) => match s.state {
                    SavepointState::Completed => PodSavepoint::Completed(s.clone()),
                    SavepointState::Failed => {
                        PodSavepoint::Failed(s.error.clone().unwrap_or_else(|| "no reason given".into()))
                    }
                    SavepointState::InProgress => PodSavepoint::Pending("in progress".into()),
                },
            };
            (p.name.clone(), a)
        })
        .collect();

    let completed: Vec<&SavepointStatus> = answers
        .iter()
        .filter_map(|(_, a)| match a {
            PodSavepoint::Completed(s) => Some(s),
            _ => None,
        })
        .collect();
    if expected > 0 && completed.len() == answers.len() && answers.len() >= expected {
        return savepoint_completed(o, intent, &completed);
    }
    if let Some((pod, why)) = answers.iter().find_map(|(n, a)| match a {
        PodSavepoint::Failed(why) => Some((n, why)),
        _ => None,
    }) {
        return savepoint_failed(o, intent, format!("pod {pod} failed it: {why}"));
    }
    let took = elapsed(&intent.started, o.now);
    if took > timeouts.savepoint {
        let pending: Vec<String> = answers
            .iter()
            .filter_map(|(n, a)| match a {
                PodSavepoint::Pending(why) => Some(format!("{n} ({why})")),
                PodSavepoint::Unknown => Some(format!("{n} (not started)")),
                _ => None,
            })
            .collect();
        let missing = expected.saturating_sub(answers.len());
        let mut why = format!("not complete after {}", secs(timeouts.savepoint));
        if !pending.is_empty() {
            why.push_str(&format!("; waiting for {}", pending.join(", ")));
        }
        if missing > 0 {
            why.push_str(&format!("; {missing} of {expected} pods are missing"));
        }
        return savepoint_failed(o, intent, why);
    }
    let to_trigger: Vec<String> = answers
        .iter()
        .filter(|(_, a)| matches!(a, PodSavepoint::Unknown))
        .map(|(n, _)| n.clone())
        .collect();
    let health = Health::reconciling(
        "Savepointing",
        format!(
            "savepoint {}: {}/{expected} pods completed",
            intent.savepoint_id,
            completed.len()
        ),
    );
    let call = if to_trigger.is_empty() {
        AdminCall::None
    } else {
        AdminCall::Savepoint {
            id: intent.savepoint_id.clone(),
            stop,
            drain,
            pods: to_trigger,
        }
    };
    Step::new(o.status.clone(), health)
        .deploy(steady_deployment(o, None))
        .call(call)
        .poll()
}

fn savepoint_completed(o: &Observed, mut intent: UpgradeIntent, parts: &[&SavepointStatus]) -> Step {
    let kind = kind_of(&intent);
    if drains(o, &intent) && parts.iter().any(|s| !s.drained) {
        return savepoint_failed(
            o,
            intent,
            "the pods did not take it drained (runtime pods older than the operator?), and the new source partition \
             count needs a drained savepoint"
                .to_owned(),
        );
    }
    let location = parts.iter().find_map(|s| s.location.clone()).unwrap_or_default();
    let mut offsets = BTreeMap::new();
    for part in parts {
        offsets.extend(part.offsets.iter().map(|(k, v)| (k.clone(), *v)));
    }
    let record = SavepointRecord {
        id: intent.savepoint_id.clone(),
        location: location.clone(),
        offsets,
        time: Time(o.now),
        generation: o.status.last_stable_generation,
        checkpoint_id: parts.iter().filter_map(|s| s.checkpoint_id).max(),
        duration_ms: Some(millis_between(intent.started.0, o.now)),
        state_bytes: parts.iter().map(|s| s.bytes).sum(),
    };
    let took = elapsed(&intent.started, o.now);
    let mut status = o.status.clone();
    let mut history = vec![record.clone()];
    history.extend(status.savepoint_history.drain(..).filter(|s| s.id != record.id));
    prune_history(o, &mut status, history);
    status.last_savepoint = Some(record);
    let message = format!(
        "savepoint {} completed in {} at {location}",
        intent.savepoint_id,
        secs(took)
    );
    let base = |status: StreamJobStatus, health: Health| {
        Step::new(status, health)
            .event(false, "SavepointCompleted", message.clone())
            .outcome(Outcome::SavepointCompleted {
                seconds: took.as_secs_f64(),
            })
    };
    match kind {
        IntentKind::Savepoint => {
            status.upgrade = None;
            status.phase = Some(JobPhase::Running);
            status.handled_savepoint_request =
                savepoint_request_key(&o.spec, o.savepoint_annotation.as_deref());
            let o2 = Observed {
                status: status.clone(),
                ..o.clone()
            };
            base(status, Health::ready("SavepointCompleted", message.clone()))
                .deploy(steady_deployment(&o2, None))
        }
        IntentKind::Suspend => {
            intent.restore_from = Some(location);
            intent.restore_mode = Some(RestoreMode::Savepoint);
            status.upgrade = Some(intent);
            status.phase = Some(JobPhase::Suspended);
            let o2 = Observed {
                status: status.clone(),
                ..o.clone()
            };
            let mut step = base(
                status,
                Health::reconciling("Suspending", "removing the stopped pods"),
            )
            .deploy(steady_deployment(&o2, Some(0)));
            step.requeue = Duration::ZERO;
            step
        }
        _ => {
            if intent.restore_mode != Some(RestoreMode::Empty) {
                intent.restore_mode = Some(RestoreMode::Savepoint);
                intent.restore_from = Some(location);
            }
            status.upgrade = Some(intent.clone());
            status.phase = Some(JobPhase::Upgrading);
            let mut step = base(
                status,
                Health::reconciling("Upgrading", "savepoint taken; replacing the pods"),
            )
            .deploy(intent_deployment(o, &intent, 0));
            step.requeue = Duration::ZERO;
            step
        }
    }
}

fn savepoint_failed(o: &Observed, intent: UpgradeIntent, why: String) -> Step {
    let kind = kind_of(&intent);
    let mut status = o.status.clone();
    status.upgrade = None;
    status.phase = Some(JobPhase::Running);
    let pods: Vec<String> = live_pods(o).iter().map(|p| p.name.clone()).collect();
    let message = format!(
        "savepoint {} failed: {why}. The running version (generation {}) keeps running; stopped pods are resumed",
        intent.savepoint_id,
        o.status.last_stable_generation.unwrap_or_default()
    );
    let health = if kind == IntentKind::Savepoint {
        // A requested savepoint that failed is not retried until asked again.
        status.handled_savepoint_request = savepoint_request_key(&o.spec, o.savepoint_annotation.as_deref());
        Health::ready("SavepointFailed", message.clone())
    } else {
        // Not retried in a loop: a new generation (any spec change) retries.
        status.failed_generation = Some(o.generation);
        Health::stalled("SavepointFailed", format!("{message}. Change the spec to retry"))
    };
    let mut step = Step::new(status, health)
        .deploy(steady_deployment(o, None))
        .call(AdminCall::Resume { pods })
        .event(true, "SavepointFailed", message)
        .outcome(Outcome::SavepointFailed);
    if kind != IntentKind::Savepoint {
        step = step.outcome(Outcome::UpgradeFailed);
    }
    step
}

fn draining_for_suspend(o: &Observed, _intent: UpgradeIntent) -> Step {
    if !o.pods.is_empty() {
        return Step::new(
            o.status.clone(),
            Health::reconciling("Suspending", format!("waiting for {} pods to go", o.pods.len())),
        )
        .deploy(steady_deployment(o, Some(0)))
        .wait(None);
    }
    let mut status = o.status.clone();
    status.upgrade = None;
    let message = suspended_message(o);
    Step::new(status, Health::ready("Suspended", message.clone()))
        .deploy(steady_deployment(o, Some(0)))
        .event(false, "Suspended", message)
}

fn rollout(o: &Observed, intent: UpgradeIntent) -> Step {
    let kind = kind_of(&intent);
    // A failed rollout waits for a fix: a new generation redeploys from the
    // last committed state (its pods cannot take a savepoint).
    if o.status.phase == Some(JobPhase::Failed)
        && o.generation != intent.target_generation
        && kind != IntentKind::Rollback
    {
        return redeploy_failed(o, &intent);
    }
    let Some(target) = intent_deployment(o, &intent, intent.parallelism.unwrap_or(1)) else {
        let why = o.topics.clone().err().unwrap_or_default();
        // The StreamTopics are watched.
        return Step::new(o.status.clone(), Health::reconciling("TopicNotReady", why)).wait(None);
    };
    let phase_reason = match kind {
        IntentKind::Deploy => "Deploying",
        IntentKind::Rollback => "RollingBack",
        IntentKind::Resume => "Resuming",
        IntentKind::Rescale => "Rescaling",
        _ => "Upgrading",
    };
    let Some(started) = intent.rollout_started.clone() else {
        if !o.pods.is_empty() {
            // OnDelete + scale to 0: the old pods go first, then the new start.
            let health = Health::reconciling(
                phase_reason,
                format!("waiting for {} old pods to go", o.pods.len()),
            );
            return Step::new(o.status.clone(), health)
                .deploy(Some(Deployment {
                    replicas: 0,
                    ..target
                }))
                .wait(None);
        }
        let mut intent = intent;
        intent.rollout_started = Some(Time(o.now));
        let mut status = o.status.clone();
        status.upgrade = Some(intent.clone());
        let message = format!(
            "starting {} pods of generation {}{}",
            target.parallelism,
            target.generation,
            match &target.restore.savepoint {
                Some(sp) => format!(" from savepoint {sp}"),
                None => String::new(),
            }
        );
        // The status write wakes the controller again at once.
        let timeouts = timeouts(&intent.spec);
        let stable_after = STABLE_AFTER.min(timeouts.health / 4);
        return Step::new(status, Health::reconciling(phase_reason, message.clone()))
            .deploy(Some(target))
            .event(false, "Starting", message)
            .wait(Some(stable_after.min(timeouts.health)));
    };

    let timeouts = timeouts(&intent.spec);
    let since = elapsed(&started, o.now);
    let want = usize::try_from(target.parallelism).unwrap_or(0);
    let pods = live_pods(o);
    let new_pods: Vec<&PodView> = pods
        .iter()
        .copied()
        .filter(|p| p.revision.as_deref() == Some(target.revision.as_str()))
        .collect();
    let ready = new_pods.iter().filter(|p| p.ready).count();
    let restarted = new_pods.iter().any(|p| p.restarts > 0);
    let stable_after = STABLE_AFTER.min(timeouts.health / 4);
    // Ready for the whole window, not just now: a version that crashes a
    // moment after its first commit must be seen restarting, however long
    // its pods took to start.
    let ready_long_enough = new_pods
        .iter()
        .filter(|p| {
            p.ready
                && p.ready_since
                    .is_none_or(|t| millis_between(t, o.now) >= stable_after.as_millis() as i64)
        })
        .count();
    if ready_long_enough >= want && !restarted && since >= stable_after {
        return rollout_succeeded(o, intent, target, since);
    }
    // No running clock in the message: it is written to the status only
    // when it changes, and each write wakes the controller (its own watch)
    // straight away, so a message that changed every second kept every
    // waiting job reconciling in a loop.
    let progress = format!(
        "{ready}/{want} pods of generation {} ready; pods requested at {}{}",
        target.generation,
        Timestamp::from_second(started.0.as_second()).unwrap_or(started.0),
        if restarted { "; a pod restarted" } else { "" }
    );
    let failed = o.status.phase == Some(JobPhase::Failed);
    // After the health timeout (or once Failed) only the pods can change
    // the decision.
    let deadline = rollout_deadline(
        &new_pods,
        want,
        since,
        stable_after,
        (!failed).then_some(timeouts.health),
        o.now,
    );
    if since <= timeouts.health || failed {
        let health = if failed {
            previous_stall(o).unwrap_or_else(|| Health::stalled("Unhealthy", progress.clone()))
        } else if kind == IntentKind::Deploy && since > timeouts.health {
            Health::stalled("Unhealthy", progress.clone())
        } else {
            Health::reconciling(phase_reason, progress.clone())
        };
        return Step::new(o.status.clone(), health)
            .deploy(Some(target))
            .wait(deadline);
    }
    match kind {
        IntentKind::Deploy => {
            // No earlier version to go back to: keep waiting, say so.
            Step::new(
                o.status.clone(),
                Health::stalled(
                    "Unhealthy",
                    format!("{progress}; health timeout {} exceeded", secs(timeouts.health)),
                ),
            )
            .deploy(Some(target))
            .wait(deadline)
        }
        IntentKind::Rollback => {
            let mut status = o.status.clone();
            status.phase = Some(JobPhase::Failed);
            let message = format!(
                "rollback to generation {} is not healthy either: {progress}",
                intent.target_generation
            );
            Step::new(status, Health::stalled("RollbackFailed", message.clone()))
                .deploy(Some(target))
                .event(true, "RollbackFailed", message)
                .outcome(Outcome::RollbackFailed)
                .wait(None)
        }
        _ => rollout_failed(o, intent, target, progress),
    }
}

fn rollout_succeeded(o: &Observed, intent: UpgradeIntent, target: Deployment, took: Duration) -> Step {
    let kind = kind_of(&intent);
    let mut status = o.status.clone();
    status.last_stable_spec = Some(intent.spec.clone());
    status.last_stable_generation = Some(intent.target_generation);
    status.parallelism = Some(target.parallelism);
    status.source_partitions = Some(target.topics.total_partitions());
    status.upgrade = None;
    status.phase = Some(JobPhase::Running);
    if kind == IntentKind::Deploy {
        // A nonce present at creation is not a request.
        status.handled_savepoint_request = savepoint_request_key(&o.spec, o.savepoint_annotation.as_deref());
    }
    let o2 = Observed {
        status: status.clone(),
        ..o.clone()
    };
    let steady = steady_deployment(&o2, None);
    if kind == IntentKind::Rollback {
        let failed = status.failed_generation.unwrap_or_default();
        let message = format!(
            "generation {failed} was not healthy within its health timeout and was rolled back; generation {} runs \
             again. Change the spec to try again",
            intent.target_generation
        );
        return Step::new(status, Health::stalled("RolledBack", message.clone()))
            .deploy(steady)
            .event(true, "RolledBack", message)
            .outcome(Outcome::RolledBack);
    }
    status.failed_generation = None;
    let message = format!(
        "generation {} running on {} pods ({} after the pods were requested)",
        intent.target_generation,
        target.parallelism,
        secs(took)
    );
    let reason = match kind {
        IntentKind::Deploy => "Deployed",
        IntentKind::Resume => "Resumed",
        IntentKind::Rescale => "Rescaled",
        _ => "Upgraded",
    };
    let total = elapsed(&intent.started, o.now);
    let mut step = Step::new(status, Health::ready("Running", message.clone()))
        .deploy(steady)
        .event(false, reason, message);
    if kind != IntentKind::Deploy {
        step = step.outcome(Outcome::UpgradeSucceeded {
            seconds: total.as_secs_f64(),
        });
    }
    step
}

/// Whether the new version committed anything after the savepoint:
/// `Some(false)` only when every new pod answered with a checkpoint id no
/// newer than the savepoint's. A pod without a checkpoint id proves nothing:
/// the runtime reports the id of its own process's last commit, so a pod
/// that restarted (restoring the new version's own newer checkpoint) or is
/// still restoring has none yet, whatever the new version committed before.
fn committed_after(o: &Observed, savepoint: Option<&SavepointRecord>, target: &Deployment) -> Option<bool> {
    let sp_checkpoint = savepoint?.checkpoint_id?;
    let want = usize::try_from(target.parallelism).unwrap_or(0);
    let mut answered = 0;
    for pod in live_pods(o) {
        match o.runtime.get(&pod.name) {
            Some(Ok(s)) if s.generation == target.generation => match s.checkpoint_id {
                Some(c) if c > sp_checkpoint => return Some(true),
                Some(_) => answered += 1,
                None => {}
            },
            _ => {}
        }
    }
    (answered >= want).then_some(false)
}

fn rollout_failed(o: &Observed, intent: UpgradeIntent, target: Deployment, progress: String) -> Step {
    let timeouts = timeouts(&intent.spec);
    let mut status = o.status.clone();
    status.failed_generation = Some(intent.target_generation);
    let prefix = format!(
        "generation {} not healthy within {}: {progress}",
        intent.target_generation,
        secs(timeouts.health)
    );
    let Some(stable) = o.status.last_stable_spec.clone().filter(|_| timeouts.rollback) else {
        status.phase = Some(JobPhase::Failed);
        let message = format!("{prefix}; rollback is disabled (spec.upgrade.rollback: false)");
        return Step::new(status, Health::stalled("Unhealthy", message.clone()))
            .deploy(Some(target))
            .event(true, "UpgradeFailed", message)
            .outcome(Outcome::UpgradeFailed)
            .wait(None);
    };
    let savepoint = o
        .status
        .last_savepoint
        .as_ref()
        .filter(|sp| sp.id == intent.savepoint_id && intent.with_savepoint != Some(false));
    // A rescale to another source partition count goes back to the count the
    // stable version ran with, from the savepoint it stopped with: state the
    // new count committed cannot move back (it was not drained).
    let moved = drains(o, &intent);
    let restore = match committed_after(o, savepoint, &target) {
        // Nothing newer committed: the savepoint is exactly where the old
        // version stopped.
        Some(false) => savepoint.map(|sp| (RestoreMode::Savepoint, Some(sp.location.clone()))),
        _ if moved => None,
        // Newer commits (or unknown): the last committed checkpoint is exact
        // for the outputs, but only if the old pipeline can read its state.
        _ if change::state_compatibility(&intent.spec.defaulted(), &stable.defaulted()).is_compatible()
            && intent.restore_mode != Some(RestoreMode::Empty) =>
        {
            Some((RestoreMode::LastState, None))
        }
        _ => None,
    };
    let Some((restore_mode, restore_from)) = restore else {
        status.phase = Some(JobPhase::Failed);
        let message = format!(
            "{prefix}; cannot roll back: the new version may have committed output after savepoint {} and its state \
             cannot be read by generation {}. The new version stays deployed; fix the spec",
            intent.savepoint_id,
            o.status.last_stable_generation.unwrap_or_default()
        );
        return Step::new(status, Health::stalled("RollbackUnsafe", message.clone()))
            .deploy(Some(target))
            .event(true, "RollbackUnsafe", message)
            .outcome(Outcome::UpgradeFailed)
            .wait(None);
    };
    let partitions = if moved {
        o.status
            .source_partitions
            .unwrap_or(target.topics.total_partitions())
    } else {
        target.topics.total_partitions()
    };
    let m = target_parallelism(&stable, partitions);
    let old_m = o.status.parallelism.map_or(m, |p| p.min(partitions).max(1));
    let rollback = UpgradeIntent {
        savepoint_id: intent.savepoint_id.clone(),
        target_generation: o.status.last_stable_generation.unwrap_or_default(),
        spec: stable,
        started: Time(o.now),
        kind: Some(IntentKind::Rollback),
        with_savepoint: Some(false),
        parallelism: Some(old_m),
        source_partitions: Some(partitions),
        restore_from,
        restore_mode: Some(restore_mode),
        rollout_started: None,
    };
    status.upgrade = Some(rollback);
    status.phase = Some(JobPhase::RollingBack);
    let message = format!(
        "{prefix}; rolling back to generation {} from {}",
        o.status.last_stable_generation.unwrap_or_default(),
        match restore_mode {
            RestoreMode::Savepoint => format!("savepoint {}", intent.savepoint_id),
            _ => "the last committed checkpoint".to_owned(),
        }
    );
    let mut step = Step::new(status, Health::reconciling("RollingBack", message.clone()))
        .deploy(Some(Deployment {
            replicas: 0,
            ..target
        }))
        .event(true, "RollingBack", message)
        .outcome(Outcome::UpgradeFailed);
    step.requeue = Duration::ZERO;
    step
}

fn redeploy_failed(o: &Observed, failed: &UpgradeIntent) -> Step {
    if let Some(health) = refused_spec(o) {
        return Step::new(o.status.clone(), health);
    }
    let Ok(topics) = &o.topics else {
        let why = o.topics.clone().err().unwrap_or_default();
        return Step::new(o.status.clone(), Health::reconciling("TopicNotReady", why)).wait(None);
    };
    let p = topics.total_partitions();
    let m = desired_parallelism(o, p);
    let compat = change::classify(&failed.spec, &o.spec).compatibility;
    let mode = upgrade_mode(&o.spec);
    let restore = if mode == UpgradeMode::Stateless {
        Some(RestoreMode::Empty)
    } else if compat.is_compatible() {
        Some(RestoreMode::LastState)
    } else {
        o.spec.allows_empty_state().then_some(RestoreMode::Empty)
    };
    let Some(restore_mode) = restore else {
        let o2 = Observed {
            status: StreamJobStatus {
                last_stable_generation: Some(failed.target_generation),
                ..o.status.clone()
            },
            ..o.clone()
        };
        return incompatible(&o2, &compat).deploy(intent_deployment(
            o,
            failed,
            failed.parallelism.unwrap_or(1),
        ));
    };
    let intent = new_intent(
        o,
        IntentKind::Upgrade,
        o.spec.clone(),
        false,
        m,
        p,
        restore_mode,
        None,
    );
    let message = format!(
        "generation {} replaces the failed generation {} from its last committed state (its pods cannot take a \
         savepoint)",
        o.generation, failed.target_generation
    );
    let mut status = o.status.clone();
    status.upgrade = Some(intent);
    status.phase = Some(JobPhase::Upgrading);
    let mut step = Step::new(status, Health::reconciling("Upgrading", message.clone()))
        .deploy(intent_deployment(o, failed, failed.parallelism.unwrap_or(1)))
        .event(false, "Upgrading", message);
    step.requeue = Duration::ZERO;
    step
}

#[cfg(test)]
mod tests;
