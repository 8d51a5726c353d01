//! Every transition of the state machine, driven through a simulated world
//! (a StatefulSet that creates and removes pods, runtime pods that answer
//! the admin API) whose behaviour is written here, independently of `plan`.

use super::*;
use serde_json::json;
use streamops_crds::runtime_api::SourceTopic;

fn spec() -> StreamJobSpec {
    serde_json::from_value(json!({
        "source": {"topics": ["clicks"], "eventTime": {"field": "record.ts"}},
        "pipeline": {
            "keyBy": ["record.user_id"],
            "window": {"type": "tumbling", "size": "10s"},
            "aggregations": [{"name": "clicks", "function": "count"}]
        },
        "sink": {"topic": "out"},
        "checkpoint": {"storage": "file:///var/lib/streamops/checkpoints"}
    }))
    .unwrap()
}

fn topics(partitions: i32) -> JobTopics {
    JobTopics {
        source: vec![SourceTopic {
            topic: "clicks".into(),
            partitions,
        }],
        layout: Vec::new(),
        sink: "out".into(),
        late_events: None,
        dead_letter: None,
        routes: Default::default(),
        repartition: "streamops.ns.job.repartition".into(),
        control: "streamops.ns.job.checkpoints".into(),
    }
}

#[derive(Clone, Debug)]
struct SimPod {
    name: String,
    revision: String,
    generation: i64,
    image: Option<String>,
    state: RuntimeState,
    checkpoint: i64,
    restarts: i32,
    /// The savepoint its job file named at start (the runtime refuses to
    /// delete it).
    restored_from: Option<String>,
}

const STORAGE: &str = "file:///var/lib/streamops/checkpoints";

fn location(id: &str) -> String {
    format!("{STORAGE}/savepoints/{id}")
}

/// How the simulated runtime behaves.
#[derive(Clone, Debug, Default)]
struct Behaviour {
    /// Savepoints on this pod fail.
    savepoint_fails_on: Option<String>,
    /// Savepoints stay InProgress forever.
    savepoint_hangs: bool,
    /// Pods running this image never become Ready.
    broken_image: Option<String>,
    /// Broken pods still commit checkpoints before failing readiness.
    broken_commits: bool,
    /// This many savepoint deletions (one pod, one savepoint each) fail
    /// before they work again.
    deletion_failures: usize,
    /// The pods ignore a drain request (a runtime older than the operator).
    cannot_drain: bool,
    /// Pods of a deployment reading this many source partitions run
    /// `broken_image` (the new count's version is unhealthy).
    broken_at_partitions: Option<i32>,
    /// Bytes of state each pod's checkpoints (and savepoints) hold.
    state_bytes: Option<i64>,
}

#[derive(Clone, Debug)]
struct World {
    now: Timestamp,
    generation: i64,
    spec: StreamJobSpec,
    suspend_annotation: bool,
    savepoint_annotation: Option<String>,
    topics: Result<JobTopics, String>,
    /// The topics of the last stable spec when its references differ.
    stable_topics: Option<Result<JobTopics, String>>,
    storage_refusal: Option<String>,
    status: StreamJobStatus,
    deployment: Option<Deployment>,
    pods: Vec<SimPod>,
    savepoints: BTreeMap<(String, String), SavepointStatus>,
    behaviour: Behaviour,
    /// Every status persisted, in order.
    log: Vec<StreamJobStatus>,
    /// Every admin call made.
    calls: Vec<AdminCall>,
    events: Vec<&'static str>,
    outcomes: Vec<Outcome>,
    checkpoint_counter: i64,
    /// Savepoint ids in the job's storage.
    stored: std::collections::BTreeSet<String>,
    /// Savepoint ids deleted from storage, in order (once each: a second
    /// delete of the same id finds nothing).
    deleted: Vec<String>,
    /// The internal topics in Kafka: name -> (partitions, config at creation).
    internal_topics: BTreeMap<String, (i32, BTreeMap<String, String>)>,
    /// The Service, the NetworkPolicy and the admin Secret exist.
    service: bool,
    network_policy: bool,
    admin_secret: bool,
    /// The operator is set to put a NetworkPolicy in front of the pods.
    network_policy_enabled: bool,
    /// What the namespace's ResourceQuotas have left.
    quota: Vec<super::super::quota::Room>,
    /// What every pod reports of its load: event-time lag (ms), input and
    /// processing rates (records/s).
    pod_load: Option<(i64, i64, i64)>,
}

impl World {
    fn new(partitions: i32) -> Self {
        Self {
            now: Timestamp::from_second(1_800_000_000).unwrap(),
            generation: 1,
            spec: spec(),
            suspend_annotation: false,
            savepoint_annotation: None,
            topics: Ok(topics(partitions)),
            stable_topics: None,
            storage_refusal: None,
            status: StreamJobStatus::default(),
            deployment: None,
            pods: Vec::new(),
            savepoints: BTreeMap::new(),
            behaviour: Behaviour::default(),
            log: Vec::new(),
            calls: Vec::new(),
            events: Vec::new(),
            outcomes: Vec::new(),
            checkpoint_counter: 10,
            stored: std::collections::BTreeSet::new(),
            deleted: Vec::new(),
            internal_topics: BTreeMap::new(),
            service: false,
            network_policy: false,
            admin_secret: false,
            network_policy_enabled: false,
            quota: Vec::new(),
            pod_load: None,
        }
    }

    fn observe(&self) -> Observed {
        let broken =
            |p: &SimPod| self.behaviour.broken_image.is_some() && p.image == self.behaviour.broken_image;
        Observed {
            generation: self.generation,
            spec: self.spec.clone(),
            status: self.status.clone(),
            suspend_annotation: self.suspend_annotation,
            savepoint_annotation: self.savepoint_annotation.clone(),
            topics: self.topics.clone(),
            stable_topics: self
                .status
                .last_stable_spec
                .as_ref()
                .filter(|s| topic_refs(s) != topic_refs(&self.spec))
                .and(self.stable_topics.clone()),
            storage_refusal: self.storage_refusal.clone(),
            pods: self
                .pods
                .iter()
                .map(|p| PodView {
                    name: p.name.clone(),
                    revision: Some(p.revision.clone()),
                    ready: p.state == RuntimeState::Running && !broken(p),
                    ready_since: None,
                    restarts: p.restarts,
                    terminating: false,
                    last_failure: None,
                })
                .collect(),
            runtime: self
                .pods
                .iter()
                .map(|p| {
                    let answer = if broken(p) && !self.behaviour.broken_commits {
                        Err("connection refused".to_owned())
                    } else {
                        Ok(RuntimeStatus {
                            checkpoint_id: Some(p.checkpoint),
                            lag: Some(p.checkpoint % 7),
                            event_time_lag_ms: self.pod_load.map(|l| l.0),
                            input_rate: self.pod_load.map(|l| l.1),
                            processing_rate: self.pod_load.map(|l| l.2),
                            checkpoint_bytes: self
                                .behaviour
                                .state_bytes
                                .map(|b| [(0, b / 2), (1, b - b / 2)].into())
                                .unwrap_or_default(),
                            ..RuntimeStatus::new(p.state, p.generation)
                        })
                    };
                    (p.name.clone(), answer)
                })
                .collect(),
            savepoints: match &self.status.upgrade {
                Some(intent) => self
                    .pods
                    .iter()
                    .map(|p| {
                        let s = self
                            .savepoints
                            .get(&(p.name.clone(), intent.savepoint_id.clone()))
                            .cloned();
                        (p.name.clone(), Ok(s))
                    })
                    .collect(),
                None => BTreeMap::new(),
            },
            storage: STORAGE.into(),
            ids: KafkaIds::of("ns", "clicks", "uid-1"),
            admin_secret: self.admin_secret,
            network_policy: self.network_policy_enabled,
            quota: self.quota.clone(),
            now: self.now,
        }
    }

    /// One reconcile; `crash` drops everything after the status write.
    fn tick_with(&mut self, crash: bool) -> Step {
        let step = decide(&self.observe());
        let mut status = step.status.clone();
        status.observed_generation = Some(self.generation);
        status.conditions =
            step.health
                .conditions(Some(self.generation), &self.status.conditions, Time(self.now));
        self.status = status.clone();
        self.log.push(status);
        if !crash {
            self.act(&step);
        }
        self.now = Timestamp::from_millisecond(self.now.as_millisecond() + 1000).unwrap();
        step
    }

    fn tick(&mut self) -> Step {
        self.tick_with(false)
    }

    fn act(&mut self, step: &Step) {
        // What a Kafka cluster and an apiserver do with the prerequisites.
        let wanted = &step.prerequisites;
        for t in &wanted.internal_topics {
            let existing = self
                .internal_topics
                .entry(t.name.clone())
                .or_insert((t.partitions, t.config.clone()));
            existing.0 = existing.0.max(t.partitions);
        }
        self.service |= wanted.service;
        self.network_policy |= wanted.network_policy;
        self.admin_secret |= wanted.admin_secret;
        if let Some(d) = &step.deployment {
            // Pods only ever start with everything they need in place.
            if d.replicas > 0 {
                let need = d.topics.total_partitions();
                for name in [&d.topics.repartition, &d.topics.control] {
                    let has = self.internal_topics.get(name).map(|(p, _)| *p);
                    assert!(
                        has >= Some(need),
                        "{name} has {has:?} partitions, the pods need {need}"
                    );
                }
                assert!(
                    self.service && self.admin_secret,
                    "pods without their Service or Secret"
                );
                assert_eq!(self.network_policy, self.network_policy_enabled);
            }
            self.deployment = Some(d.clone());
            let replicas = usize::try_from(d.replicas).unwrap();
            self.pods.truncate(replicas);
            for i in self.pods.len()..replicas {
                self.checkpoint_counter += 1;
                // A restored pod continues from the checkpoint it restores.
                let restored = self
                    .status
                    .last_savepoint
                    .as_ref()
                    .and_then(|s| s.checkpoint_id)
                    .unwrap_or(0);
                self.pods.push(SimPod {
                    name: format!("job-{i}"),
                    revision: d.revision.clone(),
                    generation: d.generation,
                    image: if self.behaviour.broken_at_partitions == Some(d.topics.total_partitions()) {
                        self.behaviour.broken_image.clone()
                    } else {
                        d.spec.image.clone()
                    },
                    state: RuntimeState::Running,
                    checkpoint: restored.max(self.checkpoint_counter),
                    restarts: 0,
                    restored_from: d.restore.savepoint.clone(),
                });
            }
        }
        match &step.call {
            AdminCall::None => {}
            AdminCall::Savepoint {
                id,
                stop,
                drain,
                pods,
            } => {
                for name in pods {
                    let Some(pod) = self.pods.iter_mut().find(|p| &p.name == name) else {
                        continue;
                    };
                    let failed = self.behaviour.savepoint_fails_on.as_deref() == Some(name);
                    let state = if failed {
                        SavepointState::Failed
                    } else if self.behaviour.savepoint_hangs {
                        SavepointState::InProgress
                    } else {
                        if *stop {
                            pod.state = RuntimeState::Stopped;
                        }
                        SavepointState::Completed
                    };
                    pod.checkpoint += 1;
                    if state == SavepointState::Completed {
                        self.stored.insert(id.clone());
                    }
                    self.savepoints.insert(
                        (name.clone(), id.clone()),
                        SavepointStatus {
                            id: id.clone(),
                            state,
                            stop: false,
                            location: Some(location(id)),
                            checkpoint_id: Some(pod.checkpoint),
                            offsets: [(format!("clicks-{}", &name[4..]), 100)].into(),
                            error: failed.then(|| "disk full".to_owned()),
                            drained: *drain && !self.behaviour.cannot_drain,
                            bytes: self.behaviour.state_bytes,
                        },
                    );
                }
            }
            AdminCall::Resume { pods } => {
                for p in self.pods.iter_mut().filter(|p| pods.contains(&p.name)) {
                    if p.state == RuntimeState::Stopped {
                        p.state = RuntimeState::Running;
                    }
                }
            }
            AdminCall::DeleteSavepoints { savepoints, pods } => {
                // What the controller does: each pod deletes, and what every
                // pod confirmed leaves the list in a second status write.
                let mut confirmed = Vec::new();
                for sp in savepoints {
                    let mut done = 0;
                    for name in pods {
                        let Some(pod) = self.pods.iter().find(|p| &p.name == name) else {
                            continue;
                        };
                        if self.behaviour.deletion_failures > 0 {
                            self.behaviour.deletion_failures -= 1;
                            continue;
                        }
                        if pod.restored_from.as_deref() == Some(sp.location.as_str()) {
                            continue; // 409: started from it
                        }
                        if self.stored.remove(&sp.id) {
                            self.deleted.push(sp.id.clone());
                        }
                        done += 1;
                    }
                    if done == pods.len() {
                        confirmed.push(sp.location.clone());
                    }
                }
                if !confirmed.is_empty() {
                    forget_deleted(&mut self.status, &confirmed);
                    self.log.push(self.status.clone());
                }
            }
        }
        for e in &step.events {
            self.events.push(e.reason);
        }
        self.outcomes.extend(step.outcomes.iter().cloned());
        // Broken pods that commit advance their checkpoint every tick.
        if self.behaviour.broken_commits {
            for p in &mut self.pods {
                if p.image == self.behaviour.broken_image {
                    p.checkpoint += 1;
                }
            }
        }
    }

    fn change_spec(&mut self, edit: impl FnOnce(&mut StreamJobSpec)) {
        edit(&mut self.spec);
        self.generation += 1;
    }

    fn phase(&self) -> Option<JobPhase> {
        self.status.phase
    }

    fn ready_reason(&self) -> (String, String) {
        let c = self
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        (c.status.clone(), c.reason.clone())
    }

    fn stalled(&self) -> Option<String> {
        self.status
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled" && c.status == "True")
            .map(|c| c.reason.clone())
    }

    fn stalled_message(&self) -> String {
        self.status
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled" && c.status == "True")
            .map(|c| c.message.clone())
            .unwrap_or_default()
    }

    fn running(&self, generation: i64) -> bool {
        self.phase() == Some(JobPhase::Running)
            && self.status.upgrade.is_none()
            && self.status.last_stable_generation == Some(generation)
            && self.ready_reason() == ("True".into(), "Running".into())
    }

    fn deployed_image(&self) -> Option<String> {
        self.deployment.as_ref().and_then(|d| d.spec.image.clone())
    }

    fn savepoint_calls(&self) -> usize {
        self.calls_of(|c| matches!(c, AdminCall::Savepoint { .. }))
    }

    fn calls_of(&self, f: impl Fn(&AdminCall) -> bool) -> usize {
        self.calls.iter().filter(|c| f(c)).count()
    }

    /// How often each savepoint id was asked to be deleted, and of which pods.
    fn deletions_asked(&self) -> BTreeMap<String, Vec<Vec<String>>> {
        let mut asked: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
        for c in &self.calls {
            if let AdminCall::DeleteSavepoints { savepoints, pods } = c {
                for sp in savepoints {
                    asked.entry(sp.id.clone()).or_default().push(pods.clone());
                }
            }
        }
        asked
    }

    fn history_ids(&self) -> Vec<String> {
        self.status
            .savepoint_history
            .iter()
            .map(|s| s.id.clone())
            .collect()
    }

    /// A requested savepoint (annotation), until it is recorded and the job
    /// runs `generation` again; returns its id.
    fn take_savepoint(&mut self, generation: i64) -> String {
        let before = self.status.last_savepoint.as_ref().map(|s| s.id.clone());
        self.savepoint_annotation = Some(format!("request-{}", self.now.as_millisecond()));
        until(self, "savepoint", |w| {
            w.status.last_savepoint.as_ref().map(|s| s.id.clone()) != before && w.running(generation)
        });
        self.status.last_savepoint.as_ref().unwrap().id.clone()
    }
}

/// Records admin calls too (kept out of `act` so a crash drops them).
fn tick(w: &mut World) -> Step {
    let step = w.tick();
    w.calls.push(step.call.clone());
    step
}

/// Every pod of `w` answers `/v1/status` for generation 2 in `state`, its
/// last commit `checkpoint_id`.
fn answer_all(o: &mut Observed, w: &World, state: RuntimeState, checkpoint_id: Option<i64>) {
    for p in &w.pods {
        o.runtime.insert(
            p.name.clone(),
            Ok(RuntimeStatus {
                checkpoint_id,
                ..RuntimeStatus::new(state, 2)
            }),
        );
    }
}

fn running_world(partitions: i32) -> World {
    let mut w = World::new(partitions);
    for _ in 0..20 {
        if w.running(1) {
            return w;
        }
        tick(&mut w);
    }
    panic!("initial deployment did not converge: {:#?}", w.status);
}

fn until(w: &mut World, what: &str, pred: impl Fn(&World) -> bool) {
    for _ in 0..200 {
        if pred(w) {
            return;
        }
        tick(w);
    }
    panic!("never reached {what}; status: {:#?}", w.status);
}

#[test]
fn parallelism_is_partitions_capped_by_spec() {
    let mut s = spec();
    assert_eq!(target_parallelism(&s, 8), 8);
    s.parallelism = Some(2);
    assert_eq!(target_parallelism(&s, 8), 2);
    s.parallelism = Some(20);
    assert_eq!(target_parallelism(&s, 8), 8, "never above the partition count");
    assert_eq!(target_parallelism(&s, 0), 1);
}

#[test]
fn revision_ignores_operator_side_changes() {
    let t = topics(4);
    let base = revision(&spec(), 4, &t);
    let mut s = spec();
    s.savepoint_nonce = Some("x".into());
    s.upgrade = Some(streamops_crds::job::UpgradeSpec {
        savepoint_timeout: Some("5s".parse().unwrap()),
        health_timeout: None,
        rollback: None,
    });
    assert_eq!(revision(&s, 4, &t), base);
    assert_eq!(revision(&spec().defaulted(), 4, &t), base);
    s.image = Some("runtime:v2".into());
    assert_ne!(revision(&s, 4, &t), base);
    assert_ne!(revision(&spec(), 2, &t), base);
    assert_ne!(revision(&spec(), 4, &topics(8)), base);
}

#[test]
fn first_deployment_starts_empty_and_becomes_running() {
    let mut w = World::new(4);
    let first = tick(&mut w);
    // The intent is written before anything is created.
    assert_eq!(w.phase(), Some(JobPhase::Deploying));
    assert_eq!(w.status.upgrade.as_ref().unwrap().kind, Some(IntentKind::Deploy));
    assert!(first.deployment.is_none());
    let start = tick(&mut w);
    let d = start.deployment.unwrap();
    assert_eq!((d.replicas, d.parallelism), (4, 4));
    assert_eq!(d.restore.mode, Some(RestoreMode::Empty));
    assert!(d.restore.allow_empty_state && d.restore.savepoint.is_none());
    until(&mut w, "Running", |w| w.running(1));
    assert_eq!(w.status.parallelism, Some(4));
    assert_eq!(w.status.source_partitions, Some(4));
    assert_eq!(w.status.last_stable_spec.as_ref(), Some(&spec()));
    assert!(w.events.contains(&"Deployed"));
    // Steady state: pods restarting later restore the last committed checkpoint.
    let steady = tick(&mut w).deployment.unwrap();
    assert_eq!(steady.restore.mode, Some(RestoreMode::LastState));
    assert!(!steady.restore.allow_empty_state);
    assert_eq!(steady.revision, d.revision);
}

/// A job that never started anything gets ids per-namespace ACLs can
/// grant, fixed with its first intent (before any pod exists) and kept; a
/// job an older operator deployed keeps the ids it runs with (a producer
/// with another transactional id fences nothing), also across upgrades.
#[test]
fn kafka_ids_are_fixed_at_the_first_intent_and_older_jobs_keep_theirs() {
    let current = "streamops.ns.clicks.uid-1";
    let mut w = World::new(2);
    w.topics = Err("StreamTopic clicks is not Ready".into());
    tick(&mut w);
    assert_eq!(w.status.kafka_id_prefix, None, "nothing started, nothing fixed");
    w.topics = Ok(topics(2));
    let first = tick(&mut w);
    assert!(first.deployment.is_none() && w.status.upgrade.is_some());
    assert_eq!(w.status.kafka_id_prefix.as_deref(), Some(current));
    let d = tick(&mut w).deployment.unwrap();
    assert_eq!(d.kafka_id_prefix, current);
    until(&mut w, "Running", |w| w.running(1));
    assert_eq!(tick(&mut w).deployment.unwrap().kafka_id_prefix, current);

    // The status of an older operator: running, no prefix recorded.
    let mut old = running_world(2);
    old.status.kafka_id_prefix = None;
    let steady = tick(&mut old).deployment.unwrap();
    assert_eq!(steady.kafka_id_prefix, "streamops-uid-1");
    assert_eq!(old.status.kafka_id_prefix.as_deref(), Some("streamops-uid-1"));
    old.spec.parallelism = Some(1);
    old.generation += 1;
    until(&mut old, "the change rolled out", |w| w.running(2));
    assert_eq!(
        old.deployment.as_ref().unwrap().kafka_id_prefix,
        "streamops-uid-1"
    );
    assert_eq!(old.status.kafka_id_prefix.as_deref(), Some("streamops-uid-1"));
}

/// A job that starts now gets key groups (the runtime's default for its
/// partition count), fixed with the first intent and passed to every job
/// file after; a job an older operator deployed keeps one group per task
/// (none recorded), because its snapshots are laid out that way.
#[test]
fn key_groups_are_fixed_at_the_first_intent_and_older_jobs_keep_one_per_task() {
    let mut w = World::new(6);
    w.topics = Err("StreamTopic clicks is not Ready".into());
    tick(&mut w);
    assert_eq!(w.status.key_groups, None, "nothing started, nothing fixed");
    w.topics = Ok(topics(6));
    tick(&mut w);
    assert_eq!(w.status.key_groups, Some(128));
    until(&mut w, "Running", |w| w.running(1));
    assert_eq!(w.deployment.as_ref().unwrap().key_groups, Some(128));
    // Another spec version, same groups.
    w.change_spec(|s| s.parallelism = Some(2));
    until(&mut w, "Running gen 2", |w| w.running(2));
    assert_eq!(w.deployment.as_ref().unwrap().key_groups, Some(128));
    assert_eq!(w.status.key_groups, Some(128));

    let mut old = running_world(2);
    old.status.key_groups = None;
    assert_eq!(tick(&mut old).deployment.unwrap().key_groups, None);
    old.change_spec(|s| s.parallelism = Some(1));
    until(&mut old, "the change rolled out", |w| w.running(2));
    assert_eq!(old.deployment.as_ref().unwrap().key_groups, None);
    assert_eq!(old.status.key_groups, None);
}

#[test]
fn first_deployment_restores_spec_savepoint() {
    let mut w = World::new(2);
    w.spec.restore = Some(streamops_crds::job::RestoreSpec {
        from_savepoint: Some("file:///old/savepoints/sp-9".into()),
        allow_empty_state: None,
    });
    tick(&mut w);
    let d = tick(&mut w).deployment.unwrap();
    assert_eq!(
        d.restore.savepoint.as_deref(),
        Some("file:///old/savepoints/sp-9")
    );
    assert_eq!(d.restore.mode, Some(RestoreMode::Savepoint));
}

#[test]
fn missing_topics_keep_the_job_reconciling_then_converge() {
    let mut w = World::new(4);
    w.topics = Err("StreamTopic \"clicks\" not found".into());
    for _ in 0..3 {
        let step = tick(&mut w);
        assert!(step.deployment.is_none());
    }
    assert_eq!(w.ready_reason(), ("False".into(), "TopicNotReady".into()));
    assert!(
        w.status
            .conditions
            .iter()
            .any(|c| c.type_ == "Reconciling" && c.status == "True")
    );
    w.topics = Ok(topics(4));
    until(&mut w, "Running", |w| w.running(1));
}

#[test]
fn invalid_spec_is_stalled_before_anything_is_created() {
    let mut w = World::new(4);
    w.spec.sink.topic = "clicks".into();
    let step = tick(&mut w);
    assert!(step.deployment.is_none());
    assert_eq!(w.stalled().as_deref(), Some("InvalidSpec"));
    assert!(w.status.upgrade.is_none());
}

#[test]
fn refused_storage_is_stalled_before_anything_is_created() {
    let mut w = World::new(4);
    w.storage_refusal =
        Some("spec.checkpoint.storage: \"s3://b/ns/other\" is outside this job's own storage".into());
    for _ in 0..3 {
        let step = tick(&mut w);
        assert!(step.deployment.is_none());
        assert_eq!(step.call, AdminCall::None);
    }
    assert_eq!(w.stalled().as_deref(), Some("StorageNotAllowed"));
    assert_eq!(w.ready_reason(), ("False".into(), "StorageNotAllowed".into()));
    let stalled = w.status.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
    assert!(
        stalled.message.contains("spec.checkpoint.storage"),
        "{}",
        stalled.message
    );
    assert!(w.status.upgrade.is_none() && w.pods.is_empty());
    // Allowed again (spec fixed, or the administrator allows custom storage).
    w.storage_refusal = None;
    until(&mut w, "Running", |w| w.running(1));
}

#[test]
fn refused_storage_on_a_running_job_keeps_the_running_version() {
    let mut w = running_world(2);
    let before = w.deployment.clone().unwrap();
    w.change_spec(|s| s.image = Some("runtime:v2".into()));
    w.storage_refusal = Some("spec.checkpoint.storage: outside".into());
    let step = tick(&mut w);
    assert_eq!(w.stalled().as_deref(), Some("StorageNotAllowed"));
    assert_eq!(
        step.deployment.as_ref(),
        Some(&before),
        "the last stable version stays deployed"
    );
    assert_eq!(step.call, AdminCall::None, "no savepoint, no stop");
    assert!(w.status.upgrade.is_none());
    assert!(w.pods.iter().all(|p| p.generation == 1));
}

#[test]
fn savepoint_upgrade_writes_intent_first_then_savepoints_then_rolls_out() {
    let mut w = running_world(4);
    let old_revision = w.deployment.as_ref().unwrap().revision.clone();
    w.change_spec(|s| s.image = Some("runtime:v2".into()));

    // 1. Intent only: no call, deployment unchanged.
    let s1 = tick(&mut w);
    assert_eq!(w.phase(), Some(JobPhase::Savepointing));
    let intent = w.status.upgrade.clone().unwrap();
    assert_eq!(intent.target_generation, 2);
    assert_eq!(intent.kind, Some(IntentKind::Upgrade));
    assert_eq!(s1.call, AdminCall::None);
    assert_eq!(s1.deployment.unwrap().revision, old_revision);

    // 2. Stop-with-savepoint on every pod.
    let s2 = tick(&mut w);
    assert_eq!(
        s2.call,
        AdminCall::Savepoint {
            id: intent.savepoint_id.clone(),
            stop: true,
            drain: false,
            pods: vec!["job-0".into(), "job-1".into(), "job-2".into(), "job-3".into()],
        }
    );

    // 3. Recorded in status before the rollout: old pods scaled away first.
    let s3 = tick(&mut w);
    let sp = w.status.last_savepoint.clone().unwrap();
    assert_eq!(sp.id, intent.savepoint_id);
    assert_eq!(sp.offsets.len(), 4, "offsets of every pod");
    assert_eq!(w.phase(), Some(JobPhase::Upgrading));
    assert_eq!(w.status.savepoint_history[0].id, sp.id);
    let drain = s3.deployment.unwrap();
    assert_eq!(drain.replicas, 0);
    assert_eq!(drain.restore.savepoint.as_deref(), Some(sp.location.as_str()));
    assert!(w.pods.is_empty());

    // 4. New pods only once the old are gone, restoring the savepoint.
    let s4 = tick(&mut w);
    let d = s4.deployment.unwrap();
    assert_eq!(d.replicas, 4);
    assert_eq!(d.generation, 2);
    assert_eq!(d.spec.image.as_deref(), Some("runtime:v2"));
    assert!(w.status.upgrade.as_ref().unwrap().rollout_started.is_some());

    until(&mut w, "Running gen 2", |w| w.running(2));
    assert_eq!(
        w.status.last_stable_spec.as_ref().unwrap().image.as_deref(),
        Some("runtime:v2")
    );
    assert!(
        w.outcomes
            .iter()
            .any(|o| matches!(o, Outcome::UpgradeSucceeded { .. }))
    );
    assert!(
        w.outcomes
            .iter()
            .any(|o| matches!(o, Outcome::SavepointCompleted { .. }))
    );
    assert_eq!(w.savepoint_calls(), 1);
    // After success the ConfigMap no longer points at the savepoint.
    let steady = tick(&mut w).deployment.unwrap();
    assert_eq!(steady.restore.savepoint, None);
    assert_eq!(steady.revision, d.revision);
}

#[test]
fn an_ignored_change_restarts_nothing() {
    let mut w = running_world(2);
    let before = w.deployment.clone().unwrap().revision;
    w.change_spec(|s| {
        s.upgrade = Some(streamops_crds::job::UpgradeSpec {
            savepoint_timeout: Some("90s".parse().unwrap()),
            health_timeout: None,
            rollback: None,
        })
    });
    let step = tick(&mut w);
    assert_eq!(step.call, AdminCall::None);
    assert!(w.running(2));
    assert_eq!(step.deployment.unwrap().revision, before);
}

#[test]
fn incompatible_change_is_stalled_before_any_savepoint() {
    let mut w = running_world(2);
    w.change_spec(|s| s.pipeline.key_by = vec!["record.page".into()]);
    for _ in 0..3 {
        tick(&mut w);
    }
    assert_eq!(w.stalled().as_deref(), Some("IncompatibleChange"));
    assert_eq!(w.savepoint_calls(), 0);
    assert!(w.status.upgrade.is_none());
    assert_eq!(w.pods.len(), 2, "old version untouched");
    assert!(
        w.pods
            .iter()
            .all(|p| p.generation == 1 && p.state == RuntimeState::Running)
    );
    // The verdict is in status while the change waits.
    let planned = w.status.planned_change.clone().unwrap();
    assert_eq!(
        (
            planned.generation,
            planned.kind.as_str(),
            planned.state_compatible,
            planned.savepoint
        ),
        (2, "Upgrade", false, true)
    );
    assert!(
        planned.reasons[0].starts_with("spec.pipeline.keyBy changed"),
        "{planned:?}"
    );
    // Reverting the change makes the job Ready again without a restart.
    w.change_spec(|s| s.pipeline.key_by = vec!["record.user_id".into()]);
    tick(&mut w);
    assert!(w.running(3));
    assert_eq!(w.status.planned_change, None);
}

#[test]
fn a_step_change_is_published_as_a_compatible_upgrade_until_it_runs() {
    let mut w = running_world(2);
    w.change_spec(|s| {
        s.pipeline.steps =
            serde_json::from_value(json!([{"name": "paid", "filter": "record.amount > 0"}])).unwrap();
    });
    tick(&mut w);
    assert_eq!(w.status.phase, Some(JobPhase::Savepointing));
    let planned = w.status.planned_change.clone().unwrap();
    assert_eq!(
        planned,
        PlannedChange {
            generation: 2,
            kind: "Upgrade".into(),
            state_compatible: true,
            savepoint: true,
            reasons: vec!["spec.pipeline.steps: step \"paid\" added (stateless: compatible)".into()],
        }
    );
    until(&mut w, "running gen 2", |w| w.running(2));
    assert_eq!(w.status.planned_change, None);
    assert_eq!(w.savepoint_calls(), 1);
}

#[test]
fn incompatible_change_with_allow_empty_state_starts_empty_after_a_savepoint() {
    let mut w = running_world(2);
    w.change_spec(|s| {
        s.pipeline.key_by = vec!["record.page".into()];
        s.restore = Some(streamops_crds::job::RestoreSpec {
            from_savepoint: None,
            allow_empty_state: Some(true),
        });
    });
    let mut restores = Vec::new();
    for _ in 0..30 {
        if let Some(d) = tick(&mut w).deployment
            && d.generation == 2
        {
            restores.push(d.restore.clone());
        }
        if w.running(2) {
            break;
        }
    }
    assert!(w.running(2));
    assert_eq!(w.savepoint_calls(), 1, "the old version still stops cleanly");
    assert_eq!(restores[0].mode, Some(RestoreMode::Empty));
    assert!(restores[0].allow_empty_state && restores[0].savepoint.is_none());
}

#[test]
fn savepoint_failure_resumes_stopped_pods_and_is_not_retried() {
    let mut w = running_world(3);
    w.behaviour.savepoint_fails_on = Some("job-1".into());
    w.change_spec(|s| s.image = Some("runtime:v2".into()));
    until(&mut w, "stalled", |w| w.stalled().is_some());
    assert_eq!(w.stalled().as_deref(), Some("SavepointFailed"));
    let msg = &w.status.conditions[0].message;
    assert!(msg.contains("job-1") && msg.contains("disk full"), "{msg}");
    // The resume call reached every pod: the stopped ones run again.
    tick(&mut w);
    assert!(
        w.pods
            .iter()
            .all(|p| p.state == RuntimeState::Running && p.generation == 1)
    );
    assert_eq!(w.status.failed_generation, Some(2));
    assert_eq!(w.phase(), Some(JobPhase::Running));
    assert!(w.outcomes.contains(&Outcome::SavepointFailed));
    // No loop: nothing is retried for the same generation.
    for _ in 0..10 {
        tick(&mut w);
    }
    assert_eq!(w.savepoint_calls(), 1);
    assert_eq!(w.stalled().as_deref(), Some("SavepointFailed"));
    // A new generation retries (and succeeds once the disk is fine).
    w.behaviour.savepoint_fails_on = None;
    w.change_spec(|s| s.image = Some("runtime:v3".into()));
    until(&mut w, "Running gen 3", |w| w.running(3));
    assert_eq!(w.status.failed_generation, None);
}

#[test]
fn savepoint_timeout_abandons_and_resumes() {
    let mut w = running_world(2);
    w.behaviour.savepoint_hangs = true;
    w.change_spec(|s| {
        s.image = Some("runtime:v2".into());
        s.upgrade = Some(streamops_crds::job::UpgradeSpec {
            savepoint_timeout: Some("10s".parse().unwrap()),
            health_timeout: None,
            rollback: None,
        });
    });
    let started = w.now;
    until(&mut w, "stalled", |w| w.stalled().is_some());
    assert!(w.now.as_millisecond() - started.as_millisecond() >= 10_000);
    let msg = &w.status.conditions[0].message;
    assert!(msg.contains("not complete after 10s"), "{msg}");
    assert!(w.status.upgrade.is_none());
    assert_eq!(w.deployment.as_ref().unwrap().generation, 1);
}

#[test]
fn partial_stop_resumes_the_stopped_pods() {
    // Pod 0 stopped with its savepoint, pod 1 failed: pod 0 is resumed.
    let mut w = running_world(2);
    w.behaviour.savepoint_fails_on = Some("job-1".into());
    w.change_spec(|s| s.image = Some("runtime:v2".into()));
    until(&mut w, "a stopped pod", |w| {
        w.pods.iter().any(|p| p.state == RuntimeState::Stopped)
    });
    until(&mut w, "resumed", |w| {
        w.stalled().is_some() && w.pods.iter().all(|p| p.state == RuntimeState::Running)
    });
    let resumes: Vec<&AdminCall> = w
        .calls
        .iter()
        .filter(|c| matches!(c, AdminCall::Resume { .. }))
        .collect();
    assert_eq!(
        resumes[0],
        &AdminCall::Resume {
            pods: vec!["job-0".into(), "job-1".into()]
        }
    );
}

#[test]
fn stopped_pods_without_an_intent_are_resumed() {
    // An operator that crashed after abandoning (status written) but before
    // the resume call: the steady state resumes what is stopped.
    let mut w = running_world(2);
    w.pods[1].state = RuntimeState::Stopped;
    let step = tick(&mut w);
    assert_eq!(
        step.call,
        AdminCall::Resume {
            pods: vec!["job-1".into()]
        }
    );
}

fn health(timeout: &str) -> Option<streamops_crds::job::UpgradeSpec> {
    Some(streamops_crds::job::UpgradeSpec {
        savepoint_timeout: None,
        health_timeout: Some(timeout.parse().unwrap()),
        rollback: None,
    })
}

#[test]
fn unhealthy_upgrade_rolls_back_to_the_savepoint_and_is_not_retried() {
    let mut w = running_world(2);
    w.behaviour.broken_image = Some("runtime:bad".into());
    w.change_spec(|s| {
        s.image = Some("runtime:bad".into());
        s.upgrade = health("20s");
    });
    until(&mut w, "RollingBack", |w| {
        w.phase() == Some(JobPhase::RollingBack)
    });
    let sp = w.status.last_savepoint.clone().unwrap();
    assert_eq!(w.status.failed_generation, Some(2));
    let intent = w.status.upgrade.clone().unwrap();
    assert_eq!(intent.kind, Some(IntentKind::Rollback));
    assert_eq!(intent.target_generation, 1);
    // Unreachable broken pods: nothing proves they did not commit, and the
    // change is state-compatible, so the last committed checkpoint is used.
    assert_eq!(intent.restore_mode, Some(RestoreMode::LastState));
    assert!(sp.checkpoint_id.is_some());
    until(&mut w, "rolled back", |w| {
        w.status.upgrade.is_none() && w.phase() == Some(JobPhase::Running)
    });
    assert_eq!(w.stalled().as_deref(), Some("RolledBack"));
    assert_eq!(w.deployed_image(), None, "the old spec runs again");
    assert!(w.pods.iter().all(|p| p.generation == 1));
    assert!(w.outcomes.contains(&Outcome::RolledBack));
    // Not retried in a loop.
    for _ in 0..10 {
        tick(&mut w);
    }
    assert_eq!(w.savepoint_calls(), 1);
    assert_eq!(w.stalled().as_deref(), Some("RolledBack"));
    assert_eq!(w.status.failed_generation, Some(2));
    // A fixed spec upgrades again.
    w.change_spec(|s| s.image = Some("runtime:v3".into()));
    until(&mut w, "Running gen 3", |w| w.running(3));
}

#[test]
fn a_new_version_is_stable_only_after_being_ready_for_the_whole_window() {
    // Pods that took long to start and turned Ready a moment ago are not yet
    // stable, however long ago they were requested: a version that crashes
    // just after its first commit would otherwise count as healthy.
    let mut w = running_world(2);
    w.change_spec(|s| s.image = Some("runtime:v2".into()));
    until(&mut w, "Upgrading started", |w| {
        w.status
            .upgrade
            .as_ref()
            .is_some_and(|i| i.rollout_started.is_some())
    });
    let mut o = w.observe();
    o.now = Timestamp::from_millisecond(o.now.as_millisecond() + 30_000).unwrap();
    let just_now = Timestamp::from_millisecond(o.now.as_millisecond() - 1_000).unwrap();
    for p in &mut o.pods {
        p.ready_since = Some(just_now);
    }
    let step = decide(&o);
    assert!(step.status.upgrade.is_some(), "not stable after 1s of Ready");
    assert_eq!(step.status.phase, Some(JobPhase::Upgrading));
    let a_while_ago = Timestamp::from_millisecond(o.now.as_millisecond() - 6_000).unwrap();
    for p in &mut o.pods {
        p.ready_since = Some(a_while_ago);
    }
    let step = decide(&o);
    assert!(step.status.upgrade.is_none(), "stable after 6s of Ready");
    assert_eq!(step.status.phase, Some(JobPhase::Running));
}

#[test]
fn rollback_uses_the_savepoint_when_nothing_newer_was_committed() {
    let mut w = running_world(2);
    w.behaviour.broken_image = Some("runtime:bad".into());
    // Broken pods answer the admin API (they are just not Ready) and report
    // no checkpoint newer than the savepoint.
    w.behaviour.broken_commits = false;
    w.change_spec(|s| {
        s.image = Some("runtime:bad".into());
        s.upgrade = health("20s");
    });
    until(&mut w, "Upgrading started", |w| {
        w.status
            .upgrade
            .as_ref()
            .is_some_and(|i| i.rollout_started.is_some())
    });
    // Make the broken pods answer with the savepoint's checkpoint id.
    let sp_checkpoint = w.status.last_savepoint.as_ref().unwrap().checkpoint_id.unwrap();
    w.behaviour.broken_commits = true;
    for p in &mut w.pods {
        p.checkpoint = sp_checkpoint - 1;
    }
    w.behaviour.broken_commits = false;
    let mut o = w.observe();
    answer_all(&mut o, &w, RuntimeState::Restoring, Some(sp_checkpoint));
    o.now = Timestamp::from_millisecond(o.now.as_millisecond() + 30_000).unwrap();
    let step = decide(&o);
    let intent = step.status.upgrade.unwrap();
    assert_eq!(intent.kind, Some(IntentKind::Rollback));
    assert_eq!(intent.restore_mode, Some(RestoreMode::Savepoint));
    assert_eq!(
        intent.restore_from.as_deref(),
        Some(w.status.last_savepoint.as_ref().unwrap().location.as_str())
    );
}

#[test]
fn a_pod_without_a_checkpoint_id_does_not_prove_that_nothing_was_committed() {
    // The new version committed, crashed and restarted: its pods answer for
    // the new generation but, restarted (restoring, or restored from their own
    // newer checkpoint), report no commit of their own yet. Restoring the
    // savepoint would repeat what the new version committed since.
    let mut w = running_world(2);
    w.behaviour.broken_image = Some("runtime:bad".into());
    w.behaviour.broken_commits = false;
    w.change_spec(|s| {
        s.image = Some("runtime:bad".into());
        s.upgrade = health("20s");
    });
    until(&mut w, "Upgrading started", |w| {
        w.status
            .upgrade
            .as_ref()
            .is_some_and(|i| i.rollout_started.is_some())
    });
    let mut o = w.observe();
    answer_all(&mut o, &w, RuntimeState::Running, None);
    o.now = Timestamp::from_millisecond(o.now.as_millisecond() + 30_000).unwrap();
    let step = decide(&o);
    let intent = step.status.upgrade.unwrap();
    assert_eq!(intent.kind, Some(IntentKind::Rollback));
    assert_eq!(intent.restore_mode, Some(RestoreMode::LastState));
    assert_eq!(intent.restore_from, None);
}

#[test]
fn rollback_after_newer_commits_of_an_incompatible_version_is_refused() {
    let mut w = running_world(2);
    w.behaviour.broken_image = Some("runtime:bad".into());
    w.behaviour.broken_commits = true;
    w.change_spec(|s| {
        s.image = Some("runtime:bad".into());
        s.pipeline.key_by = vec!["record.page".into()];
        s.restore = Some(streamops_crds::job::RestoreSpec {
            from_savepoint: None,
            allow_empty_state: Some(true),
        });
        s.upgrade = health("20s");
    });
    until(&mut w, "stalled", |w| w.stalled().is_some());
    assert_eq!(w.stalled().as_deref(), Some("RollbackUnsafe"));
    assert_eq!(w.phase(), Some(JobPhase::Failed));
    assert_eq!(
        w.deployed_image().as_deref(),
        Some("runtime:bad"),
        "left in place"
    );
    for _ in 0..5 {
        tick(&mut w);
    }
    assert_eq!(w.stalled().as_deref(), Some("RollbackUnsafe"));
    // A new generation replaces the failed one from its last committed state.
    w.change_spec(|s| s.image = Some("runtime:v3".into()));
    until(&mut w, "Running gen 3", |w| w.running(3));
    assert_eq!(
        w.savepoint_calls(),
        1,
        "the failed pods are not asked for a savepoint"
    );
}

#[test]
fn rollback_disabled_leaves_the_new_version_and_says_so() {
    let mut w = running_world(1);
    w.behaviour.broken_image = Some("runtime:bad".into());
    w.change_spec(|s| {
        s.image = Some("runtime:bad".into());
        s.upgrade = Some(streamops_crds::job::UpgradeSpec {
            savepoint_timeout: None,
            health_timeout: Some("10s".parse().unwrap()),
            rollback: Some(false),
        });
    });
    until(&mut w, "stalled", |w| w.stalled().is_some());
    assert_eq!(w.stalled().as_deref(), Some("Unhealthy"));
    assert_eq!(w.phase(), Some(JobPhase::Failed));
    // It recovers by itself if the pods become healthy.
    w.behaviour.broken_image = None;
    until(&mut w, "Running gen 2", |w| w.running(2));
}

#[test]
fn rescale_on_spec_parallelism_and_on_partition_growth() {
    let mut w = running_world(8);
    assert_eq!(w.pods.len(), 8);
    w.change_spec(|s| s.parallelism = Some(2));
    until(&mut w, "Running gen 2", |w| w.running(2));
    assert_eq!(w.pods.len(), 2);
    assert_eq!(w.status.parallelism, Some(2));
    assert!(w.events.contains(&"Rescaled"));
    assert_eq!(w.savepoint_calls(), 1);
    w.change_spec(|s| s.parallelism = Some(4));
    until(&mut w, "Running gen 3", |w| w.running(3));
    assert_eq!(w.pods.len(), 4);
    assert_eq!(w.deployment.as_ref().unwrap().parallelism, 4);
}

/// A job on 8 partitions starting on 2 pods, its autoscaler in `mode`
/// (target lag 10 s, window 20 s), running.
fn autoscaled_world(mode: &str) -> World {
    let mut w = World::new(8);
    w.spec.parallelism = Some(2);
    w.spec.autoscaler = Some(
        serde_json::from_value(serde_json::json!({
            "mode": mode, "targetLag": "10s", "stabilizationWindow": "20s", "scaleDownDelay": "60s"
        }))
        .unwrap(),
    );
    until(&mut w, "running", |w| w.running(1));
    assert_eq!(w.pods.len(), 2);
    w
}

#[test]
fn the_autoscaler_in_apply_mode_rescales_to_its_recommendation_with_a_savepoint() {
    let mut w = autoscaled_world("apply");
    // Within target: a recommendation of what runs, nothing restarts.
    w.pod_load = Some((1_000, 500, 500));
    for _ in 0..5 {
        tick(&mut w);
    }
    let a = w.status.autoscaler.clone().unwrap();
    assert_eq!(
        (a.recommended_parallelism, a.reason.as_str()),
        (Some(2), "WithinTarget")
    );
    assert_eq!(w.savepoint_calls(), 0);
    // Each pod gets 3,000/s and does 1,000/s: 30 s behind, for the window.
    w.pod_load = Some((30_000, 3_000, 1_000));
    until(&mut w, "a scale-up", |w| {
        w.status
            .autoscaler
            .as_ref()
            .is_some_and(|a| a.reason == "ScaleUp")
    });
    let a = w.status.autoscaler.clone().unwrap();
    // 6,000/s in, 4.2x that with the backlog to drain, at 1,000/s per pod:
    // more than the partitions allow.
    assert_eq!(a.recommended_parallelism, Some(8), "{a:?}");
    assert!(w.events.contains(&"AutoscalerRecommendation"), "{:?}", w.events);
    w.pod_load = None;
    until(&mut w, "8 pods", |w| w.pods.len() == 8 && w.running(1));
    assert_eq!(w.status.parallelism, Some(8));
    assert_eq!(w.savepoint_calls(), 1, "a stop-with-savepoint, as any rescale");
    assert_eq!(w.generation, 1, "the spec is not edited");
    // Metrics gone with the old pods: the recommendation stands.
    tick(&mut w);
    let a = w.status.autoscaler.clone().unwrap();
    assert_eq!(
        (a.recommended_parallelism, a.reason.as_str()),
        (Some(8), "MetricsUnavailable")
    );
    assert_eq!(w.pods.len(), 8);
    // spec.parallelism is only the count before the first recommendation:
    // changing it now restarts nothing.
    w.change_spec(|s| s.parallelism = Some(3));
    until(&mut w, "running gen 2", |w| w.running(2));
    assert_eq!(w.status.parallelism, Some(8));
    assert_eq!(w.savepoint_calls(), 1, "no second savepoint");
    assert_eq!(w.pods.len(), 8);
}

#[test]
fn grow_source_partitions_grows_the_topic_then_moves_the_pods_once() {
    let mut w = World::new(2);
    w.spec.autoscaler = Some(
        serde_json::from_value(serde_json::json!({
            "mode": "apply", "targetLag": "10s", "stabilizationWindow": "20s",
            "maxParallelism": 8, "growSourcePartitions": true
        }))
        .unwrap(),
    );
    until(&mut w, "running", |w| w.running(1));
    assert_eq!(w.pods.len(), 2);
    // 2 pods on 2 partitions, each 30 s behind at 3,000/s in, 1,000/s done.
    w.pod_load = Some((30_000, 3_000, 1_000));
    let mut asked = BTreeMap::new();
    for _ in 0..60 {
        let step = tick(&mut w);
        if !step.grow_topics.is_empty() {
            asked = step.grow_topics.clone();
            break;
        }
    }
    assert_eq!(
        asked,
        BTreeMap::from([("clicks".to_owned(), 4)]),
        "doubled at most"
    );
    let a = w.status.autoscaler.clone().unwrap();
    assert_eq!(
        (a.recommended_parallelism, a.reason.as_str()),
        (Some(4), "GrowingPartitions")
    );
    assert_eq!(a.partition_growth.as_ref().map(|g| (g.from, g.to)), Some((2, 4)));
    assert!(w.events.contains(&"GrowingSourcePartitions"), "{:?}", w.events);
    // Until the topic has grown: asked again, nothing restarts.
    for _ in 0..5 {
        let step = tick(&mut w);
        assert_eq!(step.grow_topics, asked);
    }
    assert_eq!((w.pods.len(), w.savepoint_calls()), (2, 0));
    // The topic grows: one drained savepoint, 4 pods on 4 partitions.
    w.topics = Ok(topics(4));
    w.pod_load = None;
    until(&mut w, "4 pods", |w| {
        w.pods.len() == 4
            && w.status.source_partitions == Some(4)
            && w.status.phase == Some(JobPhase::Running)
    });
    assert_eq!(w.savepoint_calls(), 1);
    assert_eq!(w.generation, 1, "the job's spec is not edited");
    tick(&mut w);
    let a = w.status.autoscaler.clone().unwrap();
    assert_eq!(a.partition_growth, None, "done once the topic has grown");
    assert_eq!(a.recommended_parallelism, Some(4));
    // Still behind at 4: the next growth, to maxParallelism, never comes;
    // after five minutes it is given up and decided afresh, on 4 pods.
    w.pod_load = Some((30_000, 3_000, 1_000));
    let mut second = BTreeMap::new();
    for _ in 0..60 {
        let step = tick(&mut w);
        if !step.grow_topics.is_empty() {
            second = step.grow_topics.clone();
            break;
        }
    }
    assert_eq!(second, BTreeMap::from([("clicks".to_owned(), 8)]));
    for _ in 0..320 {
        tick(&mut w);
        if w.status
            .autoscaler
            .as_ref()
            .is_some_and(|a| a.reason == "GrowthTimedOut")
        {
            break;
        }
    }
    assert!(w.events.contains(&"PartitionGrowthTimedOut"), "{:?}", w.events);
    let a = w.status.autoscaler.clone().unwrap();
    assert_eq!((a.recommended_parallelism, a.partition_growth), (Some(4), None));
    assert_eq!((w.pods.len(), w.savepoint_calls()), (4, 1));
}

/// A growth whose restart would be refused is not started: the topics are
/// not touched (partitions cannot be removed again).
#[test]
fn a_growth_the_restart_could_not_follow_leaves_the_topics_alone() {
    use super::super::quota::Room;
    let mut w = World::new(2);
    w.spec.autoscaler = Some(
        serde_json::from_value(serde_json::json!({
            "mode": "apply", "targetLag": "10s", "stabilizationWindow": "20s",
            "maxParallelism": 8, "growSourcePartitions": true
        }))
        .unwrap(),
    );
    until(&mut w, "running", |w| w.running(1));
    // Room for one more pod; the growth would need two.
    w.quota = vec![Room {
        quota: "team".into(),
        resource: "pods".into(),
        left: 1_000,
    }];
    w.pod_load = Some((30_000, 3_000, 1_000));
    until(&mut w, "a refused growth", |w| {
        w.status
            .autoscaler
            .as_ref()
            .is_some_and(|a| a.reason == "GrowthRefused")
    });
    let a = w.status.autoscaler.clone().unwrap();
    assert!(
        a.message
            .as_deref()
            .unwrap()
            .contains("4 pods would not fit the namespace's quota"),
        "{a:?}"
    );
    assert_eq!((a.partition_growth, a.recommended_parallelism), (None, Some(2)));
    for _ in 0..30 {
        assert!(tick(&mut w).grow_topics.is_empty());
    }
    // With room, it grows.
    w.quota[0].left = 10_000;
    let mut asked = BTreeMap::new();
    for _ in 0..60 {
        asked = tick(&mut w).grow_topics;
        if !asked.is_empty() {
            break;
        }
    }
    assert_eq!(asked, BTreeMap::from([("clicks".to_owned(), 4)]));
    // A job that cannot re-shard (last-state) never grows its topics.
    let mut w = World::new(2);
    w.spec.upgrade_mode = Some(UpgradeMode::LastState);
    w.spec.autoscaler = Some(
        serde_json::from_value(serde_json::json!({
            "mode": "apply", "targetLag": "10s", "stabilizationWindow": "20s",
            "maxParallelism": 8, "growSourcePartitions": true
        }))
        .unwrap(),
    );
    until(&mut w, "running", |w| w.running(1));
    w.pod_load = Some((30_000, 3_000, 1_000));
    until(&mut w, "a refused growth", |w| {
        w.status
            .autoscaler
            .as_ref()
            .is_some_and(|a| a.reason == "GrowthRefused")
    });
    let message = w.status.autoscaler.clone().unwrap().message.unwrap();
    assert!(
        message.contains("needs spec.upgradeMode savepoint, not last-state"),
        "{message}"
    );
}

#[test]
fn the_autoscaler_in_recommend_mode_only_writes_its_status_and_off_writes_nothing() {
    let mut w = autoscaled_world("recommend");
    w.pod_load = Some((30_000, 3_000, 1_000));
    until(&mut w, "a recommendation", |w| {
        w.status
            .autoscaler
            .as_ref()
            .and_then(|a| a.recommended_parallelism)
            == Some(8)
    });
    for _ in 0..10 {
        tick(&mut w);
    }
    assert_eq!(w.pods.len(), 2);
    assert_eq!(w.status.parallelism, Some(2));
    assert_eq!(w.savepoint_calls(), 0);
    w.change_spec(|s| s.autoscaler.as_mut().unwrap().mode = AutoscalerMode::Off);
    until(&mut w, "running gen 2", |w| w.running(2));
    assert_eq!(w.status.autoscaler, None);
    assert_eq!(w.savepoint_calls(), 0, "the autoscaler block restarts nothing");
}

/// Ticks until `done` (at most 30 times), collecting the restore settings of
/// every deployment at `partitions` source partitions.
fn restores_at(w: &mut World, partitions: i32, done: impl Fn(&World) -> bool) -> Vec<RestoreConfig> {
    let mut restores = Vec::new();
    for _ in 0..30 {
        if let Some(d) = tick(w).deployment
            && d.topics.total_partitions() == partitions
        {
            restores.push(d.restore.clone());
        }
        if done(w) {
            break;
        }
    }
    restores
}

fn allow_empty_state(s: &mut StreamJobSpec) {
    s.restore = Some(streamops_crds::job::RestoreSpec {
        from_savepoint: None,
        allow_empty_state: Some(true),
    });
}

/// A source topic grows 8 -> 12 partitions under a running job (no spec
/// change): the running version stops with a drained savepoint (taken at
/// 8, pods pinned to 8 until then), and the new count restores it,
/// re-sharding the keyed state; the pods follow the new count.
#[test]
fn partition_growth_rescales_with_a_drained_savepoint() {
    let mut w = running_world(8);
    let before = w.deployment.clone().unwrap();
    w.topics = Ok(topics(12));
    let s1 = tick(&mut w);
    assert_eq!(w.phase(), Some(JobPhase::Savepointing));
    let intent = w.status.upgrade.clone().expect("a rescale intent");
    assert_eq!(intent.kind, Some(IntentKind::Rescale));
    assert_eq!(intent.source_partitions, Some(12));
    let d = s1.deployment.unwrap();
    assert_eq!(d.topics.total_partitions(), 8, "pinned until the savepoint");
    assert_eq!(d.revision, before.revision);
    let s2 = tick(&mut w);
    assert!(
        matches!(&s2.call, AdminCall::Savepoint { stop: true, drain: true, pods, .. } if pods.len() == 8),
        "{:?}",
        s2.call
    );
    let restores = restores_at(&mut w, 12, |w| {
        w.running(1) && w.status.source_partitions == Some(12)
    });
    assert!(w.running(1) && w.pods.len() == 12, "{:#?}", w.status);
    assert_eq!(w.status.parallelism, Some(12));
    assert_eq!(restores[0].mode, Some(RestoreMode::Savepoint));
    assert_eq!(
        restores[0].savepoint.as_deref(),
        Some(w.status.last_savepoint.as_ref().unwrap().location.as_str())
    );
    assert!(w.events.contains(&"Rescaling") && w.events.contains(&"Rescaled"));
    assert_eq!(w.savepoint_calls(), 1);
}

/// The new partition count's version is unhealthy. If nothing newer than
/// the drained savepoint was committed, the job rolls back to the count it
/// ran with, from that savepoint, pinned to the old partitions; if the new
/// count may have committed, its state cannot move back (it was not
/// drained): the rollback is refused as unsafe and says so.
#[test]
fn a_growth_whose_new_count_is_unhealthy_rolls_back_only_from_its_savepoint() {
    let grown = |commits_after: bool| {
        let mut w = running_world(4);
        w.change_spec(|s| s.upgrade = health("20s"));
        until(&mut w, "Running gen 2", |w| w.running(2));
        w.behaviour.broken_image = Some("runtime:at-6".into());
        w.behaviour.broken_at_partitions = Some(6);
        w.topics = Ok(topics(6));
        until(&mut w, "rollout started", |w| {
            w.status
                .upgrade
                .as_ref()
                .is_some_and(|i| i.rollout_started.is_some())
        });
        let sp = w.status.last_savepoint.as_ref().unwrap().checkpoint_id.unwrap();
        let mut o = w.observe();
        answer_all(
            &mut o,
            &w,
            RuntimeState::Restoring,
            Some(if commits_after { sp + 1 } else { sp }),
        );
        o.now = Timestamp::from_millisecond(o.now.as_millisecond() + 30_000).unwrap();
        (w, decide(&o))
    };
    let (w, step) = grown(false);
    let intent = step.status.upgrade.clone().expect("a rollback");
    assert_eq!(intent.kind, Some(IntentKind::Rollback));
    assert_eq!(intent.source_partitions, Some(4));
    assert_eq!(intent.parallelism, Some(4));
    assert_eq!(intent.restore_mode, Some(RestoreMode::Savepoint));
    assert_eq!(
        intent.restore_from.as_deref(),
        Some(w.status.last_savepoint.as_ref().unwrap().location.as_str())
    );
    let mut o = w.observe();
    o.status = step.status.clone();
    let d = intent_deployment(&o, &intent, 4).unwrap();
    assert_eq!(
        d.topics.total_partitions(),
        4,
        "the rollback runs at the old count"
    );
    let (_, step) = grown(true);
    assert_eq!(step.status.phase, Some(JobPhase::Failed));
    assert!(
        step.events.iter().any(|e| e.reason == "RollbackUnsafe"),
        "{:?}",
        step.events
    );
}

/// A rescale the namespace's ResourceQuota cannot admit is refused before
/// anything stops (the old pods would go, the new ones never come); once the
/// quota has room, the growth goes ahead.
#[test]
fn a_rescale_over_the_namespace_quota_is_refused_before_anything_stops() {
    use super::super::quota::Room;
    let mut w = running_world(4);
    let revision = w.deployment.as_ref().unwrap().revision.clone();
    w.quota = vec![Room {
        quota: "team".into(),
        resource: "pods".into(),
        left: 1_000,
    }];
    w.topics = Ok(topics(6));
    for _ in 0..3 {
        tick(&mut w);
    }
    assert_eq!(w.stalled().as_deref(), Some("QuotaExceeded"));
    let message = w.stalled_message();
    assert!(
        message.contains("6 pods") && message.contains("ResourceQuota team has 1 pods left, 2 more needed"),
        "{message}"
    );
    assert_eq!(w.savepoint_calls(), 0);
    assert_eq!(
        w.deployment.as_ref().unwrap().revision,
        revision,
        "nothing restarted"
    );
    w.quota[0].left = 2_000;
    until(&mut w, "rescaled to 6", |w| w.pods.len() == 6 && w.running(1));
}

/// A restart whose savepoint would outlast `savepointTimeout`, predicted
/// from the last savepoint's duration and how much the state grew since, is
/// refused before anything stops; a longer timeout lets it go ahead.
#[test]
fn a_restart_whose_savepoint_would_time_out_is_refused_before_anything_stops() {
    let mut w = running_world(4);
    let mib = 1 << 20;
    w.behaviour.state_bytes = Some(10 * mib);
    w.spec.upgrade = Some(streamops_crds::job::UpgradeSpec {
        savepoint_timeout: Some("30s".parse().unwrap()),
        health_timeout: None,
        rollback: None,
    });
    // No savepoint recorded yet: nothing to predict from, it goes ahead.
    w.change_spec(|s| s.parallelism = Some(2));
    until(&mut w, "2 pods", |w| w.pods.len() == 2 && w.running(2));
    let first = w.status.savepoint_history[0].clone();
    let took = first.duration_ms.unwrap();
    assert!((1_000..=5_000).contains(&took), "{first:?}");
    assert_eq!(first.state_bytes, Some(4 * 10 * mib), "the 4 old pods' bytes");
    assert_eq!(w.savepoint_calls(), 1);
    // The state grew 50x (2 pods of 1,000 MiB): 50x the duration, over 30 s.
    w.behaviour.state_bytes = Some(1000 * mib);
    let revision = w.deployment.as_ref().unwrap().revision.clone();
    w.change_spec(|s| s.parallelism = Some(4));
    for _ in 0..3 {
        tick(&mut w);
    }
    assert_eq!(w.stalled().as_deref(), Some("SavepointTooSlow"));
    let message = w.stalled_message();
    assert!(
        message.contains(&format!(
            "took {:.1} s for 40.0 MiB of state; the state is 2.0 GiB now",
            took as f64 / 1000.0
        )) && message.contains("savepointTimeout (30s)"),
        "{message}"
    );
    assert_eq!(w.savepoint_calls(), 1, "nothing stopped");
    assert_eq!(w.deployment.as_ref().unwrap().revision, revision);
    assert!(w.pods.iter().all(|p| p.state == RuntimeState::Running));
    // The state alone does not decide: grown 4x, it fits again...
    let predicted = |w: &World, per_pod: i64| {
        predicted_savepoint_ms(&w.status.savepoint_history, Some(2 * per_pod)).map(|(ms, _)| ms)
    };
    assert_eq!(predicted(&w, 80 * mib), Some(took * 4));
    assert_eq!(predicted(&w, mib), Some(took), "never scaled down");
    // ...and a longer timeout lets the rescale go ahead.
    w.change_spec(|s| {
        s.upgrade.as_mut().unwrap().savepoint_timeout = Some("1h".parse().unwrap());
    });
    until(&mut w, "4 pods", |w| w.pods.len() == 4 && w.running(4));
    assert_eq!(w.savepoint_calls(), 2);
}

/// Pods that cannot drain (a runtime older than the operator answers a
/// plain savepoint): the savepoint fails, the running version resumes on
/// its partitions, and the reason says why.
#[test]
fn partition_growth_with_pods_that_cannot_drain_fails_before_the_rollout() {
    let mut w = running_world(4);
    w.behaviour.cannot_drain = true;
    let revision = w.deployment.as_ref().unwrap().revision.clone();
    w.topics = Ok(topics(6));
    until(&mut w, "the savepoint failed", |w| {
        w.stalled().as_deref() == Some("SavepointFailed")
    });
    assert!(
        w.stalled_message().contains("did not take it drained"),
        "{}",
        w.stalled_message()
    );
    assert_eq!(w.deployment.as_ref().unwrap().revision, revision);
    assert!(w.pods.iter().all(|p| p.state == RuntimeState::Running));
    assert_eq!(w.status.source_partitions, Some(4));
}

/// Without a savepoint (`upgradeMode: last-state`) keyed state cannot
/// move: growth is refused before anything stops, the running version
/// keeps its pods and its job file (pinned to the running count), and the
/// status says why and what to do.
#[test]
fn partition_growth_without_savepoints_is_refused_and_the_job_keeps_running() {
    let mut w = running_world(8);
    w.change_spec(|s| s.upgrade_mode = Some(UpgradeMode::LastState));
    until(&mut w, "Running gen 2", |w| w.running(2));
    let before = w.deployment.clone().unwrap();
    let pods: Vec<String> = w.pods.iter().map(|p| p.name.clone()).collect();
    let calls = w.savepoint_calls();
    w.topics = Ok(topics(12));
    for _ in 0..5 {
        let step = tick(&mut w);
        let d = step.deployment.expect("the running version stays deployed");
        assert_eq!(d.topics.total_partitions(), 8, "pinned to the running count");
        assert_eq!(d.revision, before.revision, "no pod restarts");
    }
    assert_eq!(w.stalled().as_deref(), Some("SourcePartitionsChanged"));
    let message = w.stalled_message();
    assert!(
        message.contains("8 -> 12 (clicks: 8 -> 12)") && message.contains("upgradeMode: savepoint"),
        "{message}"
    );
    assert_eq!(w.savepoint_calls(), calls);
    assert!(w.status.upgrade.is_none());
    assert_eq!(w.status.source_partitions, Some(8));
    assert_eq!(w.pods.iter().map(|p| p.name.clone()).collect::<Vec<_>>(), pods);
    // A spec change meanwhile is refused the same way (it would restart).
    w.change_spec(|s| s.parallelism = Some(2));
    tick(&mut w);
    assert_eq!(w.stalled().as_deref(), Some("SourcePartitionsChanged"));
    assert_eq!(w.savepoint_calls(), calls);
}

/// Sources that grew while the job was suspended: it resumes on the
/// partitions it had (its suspend savepoint was not drained), then moves to
/// the new count with a drained savepoint.
#[test]
fn growth_while_suspended_resumes_at_the_old_count_then_rescales() {
    let mut w = running_world(4);
    w.change_spec(|s| s.state = Some(JobState::Suspended));
    until(&mut w, "suspended", |w| {
        w.phase() == Some(JobPhase::Suspended) && w.pods.is_empty() && w.status.upgrade.is_none()
    });
    w.topics = Ok(topics(6));
    w.change_spec(|s| s.state = None);
    let mut counts = Vec::new();
    for _ in 0..60 {
        if let Some(d) = tick(&mut w).deployment
            && d.replicas > 0
        {
            counts.push(d.topics.total_partitions());
        }
        if w.running(3) && w.status.source_partitions == Some(6) && w.pods.len() == 6 {
            break;
        }
    }
    assert_eq!(w.status.source_partitions, Some(6), "{:#?}", w.status);
    assert_eq!(counts.first(), Some(&4), "resumed at the old count first");
    assert!(
        w.calls
            .iter()
            .any(|c| matches!(c, AdminCall::Savepoint { drain: true, .. }))
    );
}

/// A topic recreated with fewer partitions: refused, never restarted from
/// empty state unless the user allows it.
#[test]
fn a_source_that_lost_partitions_is_refused() {
    let mut w = running_world(4);
    w.topics = Ok(topics(2));
    tick(&mut w);
    assert_eq!(w.stalled().as_deref(), Some("SourcePartitionsChanged"));
    let message = w.stalled_message();
    assert!(
        message.contains("4 -> 2") && message.contains("lost partitions"),
        "{message}"
    );
    assert_eq!(w.savepoint_calls(), 0);
    assert_eq!(w.deployment.as_ref().unwrap().topics.total_partitions(), 4);
    // Suspended and resumed: still refused on resume.
    w.spec.state = Some(JobState::Suspended);
    w.generation += 1;
    w.topics = Ok(topics(4));
    until(&mut w, "suspended", |w| {
        w.phase() == Some(JobPhase::Suspended) && w.pods.is_empty() && w.status.upgrade.is_none()
    });
    w.topics = Ok(topics(2));
    w.change_spec(|s| s.state = None);
    tick(&mut w);
    assert_eq!(
        w.stalled().as_deref(),
        Some("SourcePartitionsChanged"),
        "{:#?}",
        w.status
    );
    assert_eq!(w.phase(), Some(JobPhase::Suspended));
}

/// Without savepoints but with `allowEmptyState` the user chose empty
/// state over a refusal: the new count starts empty.
#[test]
fn partition_growth_with_allow_empty_state_restarts_empty_at_the_new_count() {
    let mut w = running_world(2);
    w.change_spec(|s| {
        allow_empty_state(s);
        s.upgrade_mode = Some(UpgradeMode::LastState);
    });
    until(&mut w, "Running gen 2", |w| w.running(2));
    w.topics = Ok(topics(3));
    let restores = restores_at(&mut w, 3, |w| w.running(2) && w.status.parallelism == Some(3));
    assert!(w.running(2) && w.pods.len() == 3, "{:#?}", w.status);
    assert_eq!(w.status.source_partitions, Some(3));
    assert_eq!(restores[0].mode, Some(RestoreMode::Empty));
}

#[test]
fn reordered_and_replaced_sources_keep_every_partition_on_its_task() {
    let two = |a: &str, b: &str| {
        let mut t = topics(2);
        t.source = vec![
            SourceTopic {
                topic: a.into(),
                partitions: 2,
            },
            SourceTopic {
                topic: b.into(),
                partitions: 2,
            },
        ];
        t
    };
    let mut w = World::new(4);
    w.topics = Ok(two("a", "b"));
    until(&mut w, "running", |w| w.running(1));
    let deployed = |w: &World| {
        let t = &w.deployment.as_ref().unwrap().topics;
        t.tasks()
            .unwrap()
            .into_iter()
            .map(|(t, p)| format!("{t}-{p}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(deployed(&w), ["a-0", "a-1", "b-0", "b-1"]);
    assert!(
        w.deployment.as_ref().unwrap().topics.layout.is_empty(),
        "positional: the job file needs no layout"
    );
    // The spec lists the topics the other way round: same tasks.
    w.change_spec(|s| s.source.topics = vec!["b".into(), "a".into()]);
    w.topics = Ok(two("b", "a"));
    until(&mut w, "Running gen 2", |w| w.running(2));
    assert_eq!(deployed(&w), ["a-0", "a-1", "b-0", "b-1"]);
    assert_eq!(w.status.source_layout.len(), 2);
    // `a` is replaced by `c`: `b` stays, `c` takes `a`'s tasks.
    w.change_spec(|s| s.source.topics = vec!["b".into(), "c".into()]);
    w.topics = Ok(two("b", "c"));
    until(&mut w, "Running gen 3", |w| w.running(3));
    assert_eq!(deployed(&w), ["c-0", "c-1", "b-0", "b-1"]);
}

#[test]
fn source_offset_resets_become_one_warning_event_each_and_the_newest_is_in_status() {
    let w = running_world(2);
    let reset = |partition, time_ms| OffsetReset {
        topic: "clicks".into(),
        partition,
        from: 3,
        to: 10,
        log_start: 10,
        log_end: 20,
        time_ms,
    };
    let mut o = w.observe();
    let pods: Vec<String> = o.runtime.keys().cloned().collect();
    for (i, pod) in pods.iter().enumerate() {
        if let Some(Ok(s)) = o.runtime.get_mut(pod) {
            s.offset_resets = vec![reset(i as i32, 1_000 + i as i64)];
        }
    }
    let step = decide(&o);
    let warnings: Vec<&Transition> = step
        .events
        .iter()
        .filter(|e| e.reason == "SourceOffsetReset")
        .collect();
    assert_eq!(warnings.len(), 2, "{:?}", step.events);
    assert!(
        warnings
            .iter()
            .all(|e| e.warning && e.message.contains("went on from 10"))
    );
    assert_eq!(step.status.last_offset_reset, Some(reset(1, 1_001)));
    // Reported again by the pods: no new event.
    o.status = step.status.clone();
    let again = decide(&o);
    assert!(!again.events.iter().any(|e| e.reason == "SourceOffsetReset"));
}

/// A change of source topics whose new version never gets healthy: the
/// rollback runs the last stable spec on its own topics, not the new ones.
#[test]
fn a_rollback_after_a_source_change_reads_the_old_topics() {
    let two = |a: &str, b: &str| {
        let mut t = topics(2);
        t.source = [a, b]
            .iter()
            .map(|n| SourceTopic {
                topic: (*n).into(),
                partitions: 2,
            })
            .collect();
        t
    };
    let mut w = World::new(4);
    w.spec.source.topics = vec!["a".into(), "b".into()];
    w.topics = Ok(two("a", "b"));
    until(&mut w, "running", |w| w.running(1));
    w.behaviour.broken_image = Some("runtime:bad".into());
    w.change_spec(|s| {
        s.source.topics = vec!["a".into(), "c".into()];
        s.image = Some("runtime:bad".into());
        s.upgrade = health("20s");
    });
    w.topics = Ok(two("a", "c"));
    w.stable_topics = Some(Ok(two("a", "b")));
    until(&mut w, "upgrading to a,c", |w| {
        w.deployment
            .as_ref()
            .is_some_and(|d| d.topics.source.iter().any(|s| s.topic == "c"))
    });
    until(&mut w, "rolled back", |w| {
        w.status.upgrade.is_none()
            && w.phase() == Some(JobPhase::Running)
            && w.status.failed_generation == Some(2)
    });
    let d = w.deployment.as_ref().unwrap();
    let read: Vec<String> = d
        .topics
        .tasks()
        .unwrap()
        .into_iter()
        .map(|(t, p)| format!("{t}-{p}"))
        .collect();
    assert_eq!(
        read,
        ["a-0", "a-1", "b-0", "b-1"],
        "the old topics, on their old tasks"
    );
    // Without the old topics resolved, nothing is deployed with the new ones.
    w.stable_topics = Some(Err("StreamTopic \"b\" not found".into()));
    let step = w.tick();
    assert!(
        step.deployment
            .is_none_or(|d| d.topics.source.iter().all(|s| s.topic != "c")),
        "a stable spec never runs on another spec's topics"
    );
}

#[test]
fn suspend_and_resume_by_spec_and_annotation() {
    let mut w = running_world(2);
    w.change_spec(|s| s.state = Some(JobState::Suspended));
    until(&mut w, "Suspended", |w| {
        w.phase() == Some(JobPhase::Suspended) && w.status.upgrade.is_none()
    });
    assert!(w.pods.is_empty());
    assert_eq!(w.ready_reason(), ("True".into(), "Suspended".into()));
    let sp = w.status.last_savepoint.clone().unwrap();
    assert_eq!(w.savepoint_calls(), 1);
    w.change_spec(|s| s.state = Some(JobState::Running));
    tick(&mut w);
    assert_eq!(
        w.status.upgrade.as_ref().unwrap().restore_from.as_deref(),
        Some(sp.location.as_str())
    );
    until(&mut w, "Running", |w| w.running(3));
    assert_eq!(w.pods.len(), 2);
    assert!(w.events.contains(&"Resumed"));

    // The Argo CD action's annotation suspends whatever the spec says.
    w.suspend_annotation = true;
    until(&mut w, "Suspended", |w| {
        w.phase() == Some(JobPhase::Suspended) && w.status.upgrade.is_none()
    });
    assert_eq!(w.savepoint_calls(), 2);
    w.suspend_annotation = false;
    until(&mut w, "Running", |w| w.running(3));
}

#[test]
fn changes_made_while_suspended_apply_on_resume() {
    let mut w = running_world(2);
    w.change_spec(|s| s.state = Some(JobState::Suspended));
    until(&mut w, "Suspended", |w| {
        w.phase() == Some(JobPhase::Suspended) && w.status.upgrade.is_none()
    });
    w.change_spec(|s| s.image = Some("runtime:v2".into()));
    tick(&mut w);
    assert!(w.pods.is_empty(), "still suspended");
    w.change_spec(|s| s.state = None);
    until(&mut w, "Running", |w| w.running(4));
    assert_eq!(w.deployed_image().as_deref(), Some("runtime:v2"));
    assert_eq!(w.savepoint_calls(), 1);
}

#[test]
fn manual_savepoint_by_nonce_and_annotation() {
    let mut w = World::new(2);
    w.spec.savepoint_nonce = Some("at-creation".into());
    until(&mut w, "Running", |w| w.running(1));
    for _ in 0..3 {
        tick(&mut w);
    }
    assert_eq!(
        w.savepoint_calls(),
        0,
        "a nonce present at creation is not a request"
    );

    w.change_spec(|s| s.savepoint_nonce = Some("n1".into()));
    until(&mut w, "savepoint", |w| {
        w.status.last_savepoint.is_some() && w.running(2)
    });
    assert_eq!(w.savepoint_calls(), 1);
    let stops: Vec<&AdminCall> = w
        .calls
        .iter()
        .filter(|c| matches!(c, AdminCall::Savepoint { stop: false, .. }))
        .collect();
    assert_eq!(stops.len(), 1, "a requested savepoint does not stop the pods");
    assert!(
        w.pods
            .iter()
            .all(|p| p.state == RuntimeState::Running && p.generation == 1)
    );
    for _ in 0..3 {
        tick(&mut w);
    }
    assert_eq!(w.savepoint_calls(), 1, "handled once");

    w.savepoint_annotation = Some("2026-01-01T00:00:00Z".into());
    until(&mut w, "second savepoint", |w| {
        w.status.savepoint_history.len() == 2 && w.running(2)
    });
    for _ in 0..3 {
        tick(&mut w);
    }
    assert_eq!(w.savepoint_calls(), 2);
}

#[test]
fn failed_manual_savepoint_is_reported_once() {
    let mut w = running_world(2);
    w.behaviour.savepoint_fails_on = Some("job-0".into());
    w.savepoint_annotation = Some("now".into());
    until(&mut w, "failed", |w| w.events.contains(&"SavepointFailed"));
    for _ in 0..5 {
        tick(&mut w);
    }
    assert_eq!(w.savepoint_calls(), 1);
    assert!(w.running(1), "the job keeps running and stays Ready");
}

#[test]
fn savepoint_history_retention_by_count_and_age() {
    let t = |s: i64| SavepointRecord {
        id: format!("sp-{s}"),
        location: String::new(),
        offsets: BTreeMap::new(),
        time: Time(Timestamp::from_second(s).unwrap()),
        generation: None,
        checkpoint_id: None,
        duration_ms: None,
        state_bytes: None,
    };
    let now = Timestamp::from_second(1000).unwrap();
    let history = vec![t(990), t(900), t(800), t(100)];
    let ids = |h: Vec<SavepointRecord>| h.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(
        ids(retain_savepoints(history.clone(), 2, None, now)),
        ["sp-990", "sp-900"]
    );
    assert_eq!(
        ids(retain_savepoints(
            history.clone(),
            5,
            Some(Duration::from_secs(150)),
            now
        )),
        ["sp-990", "sp-900"]
    );
    // The newest is kept however old.
    assert_eq!(
        ids(retain_savepoints(
            vec![t(1)],
            5,
            Some(Duration::from_secs(1)),
            now
        )),
        ["sp-1"]
    );

    let mut w = running_world(1);
    w.spec.checkpoint.as_mut().unwrap().savepoints_to_keep = Some(2);
    for i in 0..4 {
        w.savepoint_annotation = Some(format!("r{i}"));
        until(&mut w, "savepoint", |w| {
            w.events.iter().filter(|e| **e == "SavepointCompleted").count() == i + 1 && w.running(1)
        });
    }
    assert_eq!(w.status.savepoint_history.len(), 2);
    assert_eq!(
        w.status.savepoint_history[0].id,
        w.status.last_savepoint.as_ref().unwrap().id
    );
}

fn keep_savepoints(w: &mut World, keep: i32) {
    w.spec.checkpoint.as_mut().unwrap().savepoints_to_keep = Some(keep);
}

fn settle(w: &mut World) {
    for _ in 0..5 {
        tick(w);
    }
}

#[test]
fn seven_savepoints_with_three_kept_delete_the_four_oldest_from_storage() {
    let mut w = running_world(2);
    keep_savepoints(&mut w, 3);
    let taken: Vec<String> = (0..7).map(|_| w.take_savepoint(1)).collect();
    settle(&mut w);

    let newest_first: Vec<String> = taken.iter().rev().take(3).cloned().collect();
    assert_eq!(w.history_ids(), newest_first);
    assert_eq!(
        w.stored,
        taken[4..].iter().cloned().collect(),
        "storage holds what the history lists"
    );
    let mut deleted = w.deleted.clone();
    deleted.sort();
    assert_eq!(deleted, taken[..4], "the four oldest, each once");
    // Through admin calls: each asked once, of every pod.
    let asked = w.deletions_asked();
    assert_eq!(asked.keys().cloned().collect::<Vec<_>>(), taken[..4]);
    for (id, calls) in &asked {
        assert_eq!(calls, &[vec!["job-0".to_owned(), "job-1".to_owned()]], "{id}");
    }
    assert!(w.status.savepoints_to_delete.is_empty());
    assert!(w.running(1));
}

#[test]
fn the_savepoints_restores_start_from_are_deleted_only_once_nothing_needs_them() {
    let mut w = running_world(2);
    keep_savepoints(&mut w, 1);
    let a = w.take_savepoint(1);

    // An upgrade's savepoint B pushes A out; nothing is deleted while the
    // intent (restoring from B) is in flight.
    w.change_spec(|s| s.image = Some("runtime:v2".into()));
    let calls_before = w.calls.len();
    until(&mut w, "Running gen 2", |w| w.running(2));
    let b = w.status.last_savepoint.as_ref().unwrap().id.clone();
    assert_ne!(a, b);
    assert!(
        w.calls[calls_before..]
            .iter()
            .all(|c| !matches!(c, AdminCall::DeleteSavepoints { .. })),
        "no deletion during the upgrade: {:?}",
        &w.calls[calls_before..]
    );
    assert_eq!(
        w.status.savepoints_to_delete,
        [location(&a)],
        "A queued with the pruning"
    );
    settle(&mut w);
    assert_eq!(w.deleted, std::slice::from_ref(&a));
    assert!(w.stored.contains(&b), "the savepoint the upgrade restored from");

    // C pushes B out, but the running pods were started from B: they refuse,
    // so B stays listed (and stored) and is asked again.
    let c = w.take_savepoint(2);
    settle(&mut w);
    assert_eq!(w.history_ids(), std::slice::from_ref(&c));
    assert_eq!(w.status.savepoints_to_delete, [location(&b)]);
    assert!(w.stored.contains(&b));
    assert!(w.deletions_asked()[&b].len() > 1, "retried");

    // The next upgrade starts its pods from D: B and C go.
    w.change_spec(|s| s.image = Some("runtime:v3".into()));
    until(&mut w, "Running gen 3", |w| w.running(3));
    settle(&mut w);
    let d = w.status.last_savepoint.as_ref().unwrap().id.clone();
    assert_eq!(w.deleted, [a, b, c]);
    assert_eq!(w.stored, [d].into());
    assert!(w.status.savepoints_to_delete.is_empty());
}

#[test]
fn deletions_spare_what_a_restore_may_need_and_drop_what_is_not_the_jobs() {
    let w = running_world(1);
    let mut o = w.observe();
    let record = |id: &str| SavepointRecord {
        id: id.into(),
        location: location(id),
        offsets: BTreeMap::new(),
        time: Time(w.now),
        generation: Some(1),
        checkpoint_id: Some(1),
        duration_ms: None,
        state_bytes: None,
    };
    o.status.savepoints_to_delete = vec![
        location("a"),
        location("last"),
        location("intent"),
        location("spec"),
        location("stable"),
        "file:///elsewhere/savepoints/foreign".into(),
        format!("{}/", location("a")),
        location("b"),
    ];
    o.status.last_savepoint = Some(record("last"));
    o.status.upgrade = Some(new_intent(
        &o,
        IntentKind::Resume,
        spec(),
        false,
        1,
        1,
        RestoreMode::Savepoint,
        Some(location("intent")),
    ));
    o.spec.restore = Some(streamops_crds::job::RestoreSpec {
        from_savepoint: Some(format!("{}/", location("spec"))),
        allow_empty_state: None,
    });
    let mut stable = spec();
    stable.restore = Some(streamops_crds::job::RestoreSpec {
        from_savepoint: Some(location("stable")),
        allow_empty_state: None,
    });
    o.status.last_stable_spec = Some(stable);

    let (keep, delete) = savepoint_deletions(&o);
    let mut expected_keep = o.status.savepoints_to_delete.clone();
    expected_keep.retain(|l| !l.contains("foreign"));
    assert_eq!(keep, expected_keep, "only the foreign one is dropped");
    assert_eq!(
        delete,
        [
            SavepointToDelete {
                id: "a".into(),
                location: location("a"),
            },
            SavepointToDelete {
                id: "b".into(),
                location: location("b"),
            },
        ]
    );
    // A location in another storage is never the job's.
    assert_eq!(own_savepoint_id(&location("a"), STORAGE), Some("a"));
    assert_eq!(own_savepoint_id(&location("a"), "file:///other"), None);

    // At most DELETIONS_PER_STEP at a time, oldest first.
    o.status.savepoints_to_delete = (0..20).map(|i| location(&format!("s{i:02}"))).collect();
    let (keep, delete) = savepoint_deletions(&o);
    assert_eq!(keep.len(), 20);
    let ids: Vec<String> = delete.into_iter().map(|d| d.id).collect();
    let first: Vec<String> = (0..DELETIONS_PER_STEP).map(|i| format!("s{i:02}")).collect();
    assert_eq!(ids, first);
}

#[test]
fn savepoints_pruned_from_elsewhere_are_forgotten_not_deleted() {
    let mut w = running_world(1);
    keep_savepoints(&mut w, 1);
    w.take_savepoint(1);
    // A history written when the job kept its savepoints in other storage.
    let mut foreign = w.status.savepoint_history[0].clone();
    foreign.id = "sp-old".into();
    foreign.location = "file:///old-storage/savepoints/sp-old".into();
    foreign.time = Time(Timestamp::from_second(1_700_000_000).unwrap());
    w.status.savepoint_history.push(foreign);
    w.stored.insert("sp-old".into());
    settle(&mut w);
    assert_eq!(w.status.savepoint_history.len(), 1);
    assert!(w.status.savepoints_to_delete.is_empty());
    assert!(w.stored.contains("sp-old"), "not this storage's: never deleted");
    assert!(!w.deletions_asked().contains_key("sp-old"));
}

#[test]
fn a_failed_savepoint_deletion_stays_listed_and_is_retried() {
    let mut w = running_world(2);
    keep_savepoints(&mut w, 1);
    let a = w.take_savepoint(1);
    // Both pods fail once, then one pod once more: three calls in all.
    w.behaviour.deletion_failures = 3;
    let b = w.take_savepoint(1);
    // The first try (both pods failed) came with the first steady step.
    assert_eq!(w.deletions_asked()[&a].len(), 1);
    assert_eq!(
        w.status.savepoints_to_delete,
        [location(&a)],
        "kept after a failure"
    );
    assert!(w.stored.contains(&a));
    // The second: one pod deleted it, the other failed; still listed.
    tick(&mut w);
    assert_eq!(w.status.savepoints_to_delete, [location(&a)]);
    settle(&mut w);
    assert_eq!(w.deletions_asked()[&a].len(), 3);
    assert_eq!(w.deleted, [a]);
    assert_eq!(w.stored, [b].into());
    assert!(w.status.savepoints_to_delete.is_empty());
    assert!(w.running(1), "a failed deletion does not disturb the job");
}

#[test]
fn lowering_savepoints_to_keep_or_aging_past_the_max_age_deletes_them() {
    let mut w = running_world(1);
    let taken: Vec<String> = (0..4).map(|_| w.take_savepoint(1)).collect();
    settle(&mut w);
    assert!(w.deleted.is_empty(), "five are kept by default");

    // An ignored change: nothing restarts, the history shrinks at once.
    w.change_spec(|s| s.checkpoint.as_mut().unwrap().savepoints_to_keep = Some(2));
    settle(&mut w);
    assert_eq!(w.history_ids(), [taken[3].clone(), taken[2].clone()]);
    assert_eq!(w.deleted, taken[..2]);

    w.change_spec(|s| s.checkpoint.as_mut().unwrap().savepoint_max_age = Some("1m".parse().unwrap()));
    settle(&mut w);
    assert_eq!(w.history_ids().len(), 2, "both younger than a minute");
    w.now = Timestamp::from_second(w.now.as_second() + 120).unwrap();
    settle(&mut w);
    assert_eq!(
        w.history_ids(),
        [taken[3].clone()],
        "the newest stays however old"
    );
    assert_eq!(w.deleted, taken[..3]);
    assert_eq!(w.stored, [taken[3].clone()].into());
    assert_eq!(w.generation, 3);
    assert!(w.running(3));
}

#[test]
fn savepoint_deletion_converges_after_a_crash_at_every_step() {
    let scenario = |w: &mut World| {
        keep_savepoints(w, 1);
        w.take_savepoint(1);
        w.savepoint_annotation = Some("again".into());
    };
    let done = |w: &World| {
        let handled = w
            .status
            .handled_savepoint_request
            .as_deref()
            .is_some_and(|k| k.ends_with("annotation=again"));
        handled && w.running(1) && w.status.savepoints_to_delete.is_empty()
    };
    let mut clean = running_world(2);
    scenario(&mut clean);
    let mut steps = 0;
    while !done(&clean) {
        tick(&mut clean);
        steps += 1;
        assert!(steps < 50, "clean run never finished: {:#?}", clean.status);
    }
    assert_eq!(clean.deleted.len(), 1);
    for crash_at in 0..=steps {
        let mut w = running_world(2);
        scenario(&mut w);
        for _ in 0..crash_at {
            tick(&mut w);
        }
        w.tick_with(true);
        until(&mut w, "converged", done);
        let newest = w.status.last_savepoint.as_ref().unwrap().id.clone();
        assert_eq!(w.stored, [newest].into(), "crash at {crash_at}");
        assert_eq!(w.deleted.len(), 1, "crash at {crash_at}");
    }
}

#[test]
fn last_state_and_stateless_upgrades_take_no_savepoint() {
    for (mode, restore) in [
        (UpgradeMode::LastState, RestoreMode::LastState),
        (UpgradeMode::Stateless, RestoreMode::Empty),
    ] {
        let mut w = World::new(2);
        w.spec.upgrade_mode = Some(mode);
        until(&mut w, "Running", |w| w.running(1));
        w.change_spec(|s| s.image = Some("runtime:v2".into()));
        tick(&mut w);
        assert_eq!(w.phase(), Some(JobPhase::Upgrading));
        let mut first_restore = None;
        until(&mut w, "Running gen 2", |w| w.running(2));
        for s in &w.log {
            if let Some(i) = &s.upgrade
                && i.target_generation == 2
            {
                first_restore.get_or_insert(i.restore_mode);
            }
        }
        assert_eq!(first_restore, Some(Some(restore)), "{mode:?}");
        assert_eq!(w.savepoint_calls(), 0, "{mode:?}");
    }
    // Stateless may even change the key: the state is dropped anyway.
    let mut w = World::new(2);
    w.spec.upgrade_mode = Some(UpgradeMode::Stateless);
    until(&mut w, "Running", |w| w.running(1));
    w.change_spec(|s| s.pipeline.key_by = vec!["record.page".into()]);
    until(&mut w, "Running gen 2", |w| w.running(2));
    // last-state refuses an incompatible change like savepoint mode.
    let mut w = World::new(2);
    w.spec.upgrade_mode = Some(UpgradeMode::LastState);
    until(&mut w, "Running", |w| w.running(1));
    w.change_spec(|s| s.pipeline.key_by = vec!["record.page".into()]);
    tick(&mut w);
    assert_eq!(w.stalled().as_deref(), Some("IncompatibleChange"));
}

/// The operator is killed right after persisting status at step `crash_at`
/// (its action is lost); a fresh run from the persisted status must reach
/// the same end state, with exactly one savepoint id used and no pod of the
/// new version ever running next to an old one.
fn converges_after_crash_at_every_step(
    scenario: impl Fn(&mut World),
    done: impl Fn(&World) -> bool,
    expect_image: Option<&str>,
) {
    // Count the steps of an uninterrupted run.
    let mut clean = running_world(3);
    scenario(&mut clean);
    let mut steps = 0;
    while !done(&clean) {
        tick(&mut clean);
        steps += 1;
        assert!(steps < 200, "clean run never finished: {:#?}", clean.status);
    }
    for crash_at in 0..steps {
        let mut w = running_world(3);
        scenario(&mut w);
        for _ in 0..crash_at {
            tick(&mut w);
        }
        let persisted = w.tick_with(true);
        let _ = persisted;
        let mut guard = 0;
        while !done(&w) {
            tick(&mut w);
            let generations: std::collections::BTreeSet<i64> = w.pods.iter().map(|p| p.generation).collect();
            assert!(
                generations.len() <= 1,
                "old and new pods together after crash at {crash_at}: {:?}",
                w.pods
            );
            guard += 1;
            assert!(
                guard < 200,
                "no convergence after crash at step {crash_at}: {:#?}",
                w.status
            );
        }
        assert_eq!(w.deployed_image().as_deref(), expect_image, "crash at {crash_at}");
        let ids: std::collections::BTreeSet<String> = w
            .calls
            .iter()
            .filter_map(|c| match c {
                AdminCall::Savepoint { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect();
        assert!(
            ids.len() <= 1,
            "one savepoint per operation, got {ids:?} after crash at {crash_at}"
        );
    }
}

#[test]
fn restart_at_every_step_of_an_upgrade_resumes() {
    converges_after_crash_at_every_step(
        |w| w.change_spec(|s| s.image = Some("runtime:v2".into())),
        |w| w.running(2),
        Some("runtime:v2"),
    );
}

#[test]
fn restart_at_every_step_of_a_rollback_resumes() {
    converges_after_crash_at_every_step(
        |w| {
            w.behaviour.broken_image = Some("runtime:bad".into());
            w.change_spec(|s| {
                s.image = Some("runtime:bad".into());
                s.upgrade = health("10s");
            });
        },
        |w| w.stalled().as_deref() == Some("RolledBack") && w.status.upgrade.is_none(),
        None,
    );
}

#[test]
fn restart_at_every_step_of_suspend_and_savepoint_failure_resumes() {
    converges_after_crash_at_every_step(
        |w| w.change_spec(|s| s.state = Some(JobState::Suspended)),
        |w| w.phase() == Some(JobPhase::Suspended) && w.status.upgrade.is_none() && w.pods.is_empty(),
        None,
    );
    converges_after_crash_at_every_step(
        |w| {
            w.behaviour.savepoint_fails_on = Some("job-2".into());
            w.change_spec(|s| s.image = Some("runtime:v2".into()));
        },
        |w| {
            w.stalled().as_deref() == Some("SavepointFailed")
                && w.pods.iter().all(|p| p.state == RuntimeState::Running)
        },
        None,
    );
}

#[test]
fn a_failed_suspend_savepoint_is_not_retried_in_a_loop() {
    let mut w = running_world(2);
    w.behaviour.savepoint_fails_on = Some("job-0".into());
    w.suspend_annotation = true;
    until(&mut w, "stalled", |w| w.stalled().is_some());
    assert_eq!(w.stalled().as_deref(), Some("SavepointFailed"));
    for _ in 0..10 {
        tick(&mut w);
    }
    assert_eq!(w.savepoint_calls(), 1);
    assert!(
        w.pods.iter().all(|p| p.state == RuntimeState::Running),
        "still running, resumed"
    );
    // A spec change (e.g. suspending through the spec) tries again.
    w.behaviour.savepoint_fails_on = None;
    w.change_spec(|s| s.state = Some(JobState::Suspended));
    until(&mut w, "Suspended", |w| {
        w.phase() == Some(JobPhase::Suspended) && w.status.upgrade.is_none()
    });
}

#[test]
fn lag_is_the_sum_over_pods_when_all_report_it() {
    let mut w = running_world(3);
    tick(&mut w);
    let o = w.observe();
    let expected: i64 = o.runtime.values().map(|a| a.as_ref().unwrap().lag.unwrap()).sum();
    let step = decide(&o);
    assert_eq!(step.status.lag, Some(expected));
    let mut o = w.observe();
    o.runtime.insert("job-1".into(), Err("unreachable".into()));
    assert_eq!(decide(&o).status.lag, None, "unknown, not a partial sum");
}

fn pod(name: &str, ready: bool, ready_ago_ms: Option<i64>, restarts: i32, now: Timestamp) -> PodView {
    PodView {
        name: name.into(),
        revision: Some("r".into()),
        ready,
        ready_since: ready_ago_ms.map(|ms| Timestamp::from_millisecond(now.as_millisecond() - ms).unwrap()),
        restarts,
        terminating: false,
        last_failure: None,
    }
}

#[test]
fn rollout_deadline_is_the_next_moment_the_clock_alone_decides() {
    let now = Timestamp::from_second(1_800_000_000).unwrap();
    let s = Duration::from_secs;
    let stable = s(5);
    let health = Some(s(120));
    // No pod Ready: only the health timeout lies ahead.
    let (a, b) = (pod("a", false, None, 0, now), pod("b", false, None, 0, now));
    assert_eq!(
        rollout_deadline(&[&a, &b], 2, s(2), stable, health, now),
        Some(s(118))
    );
    // Both Ready, 2 s and 4 s ago: stable when the later one has 5 s.
    let (a, b) = (
        pod("a", true, Some(2_000), 0, now),
        pod("b", true, Some(4_000), 0, now),
    );
    assert_eq!(
        rollout_deadline(&[&a, &b], 2, s(10), stable, health, now),
        Some(s(3))
    );
    // ... but never before the pods were requested 5 s ago.
    assert_eq!(
        rollout_deadline(&[&a, &b], 2, s(1), stable, health, now),
        Some(s(4))
    );
    // One of two Ready: the other turning Ready is a watch event, not a deadline.
    let c = pod("c", false, None, 0, now);
    assert_eq!(
        rollout_deadline(&[&a, &c], 2, s(10), stable, health, now),
        Some(s(110))
    );
    // A restart (a crash-looping pod) is never stable: the health timeout decides.
    let crashed = pod("c", true, Some(1_000), 1, now);
    assert_eq!(
        rollout_deadline(&[&a, &crashed], 2, s(100), stable, health, now),
        Some(s(20))
    );
    // No transition time known: counts as Ready long enough.
    let (a, b) = (pod("a", true, None, 0, now), pod("b", true, None, 0, now));
    assert_eq!(
        rollout_deadline(&[&a, &b], 2, s(2), stable, health, now),
        Some(s(3))
    );
    // A transition time ahead of our clock (skew): the whole window.
    let ahead = pod("a", true, Some(-3_000), 0, now);
    assert_eq!(
        rollout_deadline(&[&ahead], 1, s(60), stable, health, now),
        Some(s(5))
    );
    // The health timeout passed (or no longer matters) and nothing is Ready: no deadline.
    assert_eq!(rollout_deadline(&[&c], 1, s(130), stable, health, now), None);
    assert_eq!(rollout_deadline(&[&c], 1, s(10), stable, None, now), None);
    // The nearer of the two.
    let a = pod("a", true, Some(1_000), 0, now);
    assert_eq!(
        rollout_deadline(&[&a], 1, s(118), stable, health, now),
        Some(s(2))
    );
}

#[test]
fn waits_are_capped_and_land_just_after_the_deadline() {
    assert_eq!(wait_for(None), WAIT_MAX);
    assert_eq!(
        wait_for(Some(Duration::from_secs(3))),
        Duration::from_millis(3_100)
    );
    assert_eq!(wait_for(Some(Duration::ZERO)), Duration::from_millis(100));
    assert_eq!(wait_for(Some(Duration::from_secs(60))), WAIT_MAX);
    assert!(WAIT_MAX >= Duration::from_secs(10) && WAIT_MAX <= Duration::from_secs(30));
}

/// A world upgrading to `runtime:v2` (health timeout `health`), right after
/// its new pods were requested; returns it and when they were.
fn rollout_started(health_timeout: &str) -> (World, Timestamp) {
    let mut w = running_world(2);
    w.change_spec(|s| {
        s.image = Some("runtime:v2".into());
        s.upgrade = health(health_timeout);
    });
    until(&mut w, "Upgrading started", |w| {
        w.status
            .upgrade
            .as_ref()
            .is_some_and(|i| i.rollout_started.is_some())
    });
    let started = w
        .status
        .upgrade
        .as_ref()
        .unwrap()
        .rollout_started
        .clone()
        .unwrap()
        .0;
    (w, started)
}

fn at(t: Timestamp, ms: i64) -> Timestamp {
    Timestamp::from_millisecond(t.as_millisecond() + ms).unwrap()
}

#[test]
fn a_rollout_waiting_for_pods_requeues_at_its_deadline_not_every_second() {
    let (w, started) = rollout_started("120s");
    let mut o = w.observe();
    // Requested 8 s ago, no pod Ready yet: a watch event or the safety resync.
    o.now = at(started, 8_000);
    for p in &mut o.pods {
        p.ready = false;
    }
    let step = decide(&o);
    assert_eq!(step.status.phase, Some(JobPhase::Upgrading));
    assert_eq!(step.requeue, WAIT_MAX);
    // Both Ready, one since 2 s: look again when it has been for 5 s.
    for (i, p) in o.pods.iter_mut().enumerate() {
        p.ready = true;
        p.ready_since = Some(at(o.now, if i == 0 { -2_000 } else { -4_000 }));
    }
    let step = decide(&o);
    assert!(step.status.upgrade.is_some());
    assert_eq!(step.requeue, Duration::from_millis(3_100));
    // At that moment it is stable.
    o.now = at(o.now, 3_100);
    let step = decide(&o);
    assert!(step.status.upgrade.is_none(), "stable once the deadline passed");
    assert_eq!(step.status.phase, Some(JobPhase::Running));
}

#[test]
fn a_crash_looping_new_pod_is_rolled_back_at_the_health_timeout() {
    let (w, started) = rollout_started("20s");
    let mut o = w.observe();
    o.now = at(started, 15_000);
    // Ready for long enough, but one pod restarted: never stable; the next
    // deadline is the health timeout, 5 s ahead.
    for p in &mut o.pods {
        p.ready = true;
        p.ready_since = Some(at(o.now, -6_000));
    }
    o.pods[1].restarts = 3;
    let step = decide(&o);
    assert!(step.status.upgrade.is_some());
    assert!(
        step.health.message().contains("a pod restarted"),
        "{}",
        step.health.message()
    );
    assert_eq!(step.requeue, Duration::from_millis(5_100));
    o.now = at(started, 20_100);
    let step = decide(&o);
    assert_eq!(step.status.phase, Some(JobPhase::RollingBack));
}

#[test]
fn only_savepointing_polls_every_second() {
    // Savepointing: the admin API is not watched.
    let mut w = running_world(2);
    w.behaviour.savepoint_hangs = true;
    w.change_spec(|s| s.image = Some("runtime:v2".into()));
    until(&mut w, "Savepointing", |w| {
        w.phase() == Some(JobPhase::Savepointing)
    });
    assert_eq!(tick(&mut w).requeue, POLL);
    // Old pods still there after the savepoint: the StatefulSet's status
    // tells when they are gone.
    let (w, _) = rollout_started("120s");
    let mut o = w.observe();
    let mut intent = o.status.upgrade.clone().unwrap();
    intent.rollout_started = None;
    o.status.upgrade = Some(intent);
    let step = decide(&o);
    assert!(
        step.health.message().contains("old pods to go"),
        "{}",
        step.health.message()
    );
    assert_eq!(step.requeue, WAIT_MAX);
    // Topics not Ready mid-rollout: the StreamTopics are watched.
    o.topics = Err("StreamTopic \"clicks\" is not Ready".into());
    assert_eq!(decide(&o).requeue, WAIT_MAX);
    // Stalled after the health timeout of a first deployment: waits for the pods.
    let mut w = World::new(2);
    w.spec.upgrade = health("20s");
    w.behaviour.broken_image = Some("runtime:bad".into());
    w.spec.image = Some("runtime:bad".into());
    until(&mut w, "Stalled", |w| w.stalled().as_deref() == Some("Unhealthy"));
    assert_eq!(tick(&mut w).requeue, WAIT_MAX);
}

#[test]
fn a_waiting_rollout_reports_the_same_status_as_time_passes() {
    // Every status write wakes the controller through its own watch: a
    // message with a running clock would keep a waiting job reconciling.
    let (w, started) = rollout_started("120s");
    let mut o = w.observe();
    for p in &mut o.pods {
        p.ready = false;
    }
    o.now = at(started, 8_000);
    let a = decide(&o);
    o.now = at(started, 19_000);
    let b = decide(&o);
    assert_eq!(a.status, b.status);
    assert_eq!(a.health, b.health);
    // Past the health timeout of a first deployment: Stalled, then also stable.
    let mut w = World::new(2);
    w.spec.upgrade = health("20s");
    w.behaviour.broken_image = Some("runtime:bad".into());
    w.spec.image = Some("runtime:bad".into());
    until(&mut w, "Stalled", |w| w.stalled().as_deref() == Some("Unhealthy"));
    let mut o = w.observe();
    let a = decide(&o);
    o.now = at(o.now, 30_000);
    let b = decide(&o);
    assert_eq!(a.status, b.status);
    assert_eq!(a.health, b.health);
}

#[test]
fn a_pod_that_exited_for_want_of_kafka_makes_the_job_not_ready_with_that_reason() {
    let mut w = running_world(2);
    tick(&mut w);
    let o = w.observe();
    assert_eq!(decide(&o).health.reason(), "Running");
    let down = |o: &mut Observed, message: &str| {
        let p = o.pods.iter_mut().find(|p| p.name == "job-1").unwrap();
        p.ready = false;
        p.last_failure = Some(message.into());
    };

    let mut o = w.observe();
    down(
        &mut o,
        "KafkaUnavailable: committing checkpoint 9: 12 records not delivered within 30s",
    );
    let step = decide(&o);
    assert!(
        matches!(step.health, Health::Reconciling { .. }),
        "{:?}",
        step.health
    );
    assert_eq!(step.health.reason(), termination::KAFKA_UNAVAILABLE);
    assert_eq!(
        step.health.message(),
        "1/2 runtime pods ready; job-1 last exited: committing checkpoint 9: 12 records not delivered within 30s"
    );

    // A message that is not the runtime's (or none) says only how many are ready.
    let mut o = w.observe();
    down(&mut o, "OOMKilled");
    assert_eq!(decide(&o).health.reason(), "PodsNotReady");

    // A pod that failed once and is Ready again does not hold the job back.
    let mut o = w.observe();
    for p in &mut o.pods {
        p.last_failure = Some("KafkaUnavailable: init_transactions for task 0: timed out".into());
    }
    assert_eq!(decide(&o).health.reason(), "Running");
}

#[test]
fn internal_topics_service_and_secret_are_requested_before_any_pod_exists() {
    let mut w = World::new(4);
    let first = tick(&mut w);
    assert!(first.deployment.is_none() && w.pods.is_empty());
    let wanted = &first.prerequisites;
    let compact: BTreeMap<String, String> = [("cleanup.policy".to_owned(), "compact".to_owned())].into();
    assert_eq!(
        wanted.internal_topics,
        vec![
            InternalTopic {
                name: "streamops.ns.job.repartition".into(),
                partitions: 4,
                config: BTreeMap::new(),
            },
            InternalTopic {
                name: "streamops.ns.job.checkpoints".into(),
                partitions: 4,
                config: compact,
            },
        ]
    );
    assert!(wanted.service && wanted.admin_secret && !wanted.network_policy);
    // The Secret is created once; the rest is asked for on every step
    // (idempotent), also once the job runs.
    let second = tick(&mut w);
    assert!(!second.prerequisites.admin_secret);
    until(&mut w, "Running", |w| w.running(1));
    let steady = tick(&mut w).prerequisites;
    assert_eq!(steady.internal_topics.len(), 2);
    assert!(steady.service && !steady.admin_secret);
}

#[test]
fn partition_growth_grows_the_internal_topics_before_the_rescale() {
    let mut w = running_world(4);
    w.change_spec(allow_empty_state);
    until(&mut w, "Running gen 2", |w| w.running(2));
    w.topics = Ok(topics(6));
    let step = tick(&mut w);
    assert!(
        step.prerequisites
            .internal_topics
            .iter()
            .all(|t| t.partitions == 6)
    );
    until(&mut w, "rescaled to 6", |w| w.pods.len() == 6 && w.running(2));
    assert!(w.internal_topics.values().all(|(p, _)| *p == 6));
}

#[test]
fn a_spec_that_may_not_start_requests_nothing_new() {
    let nothing = Prerequisites::default();
    let mut w = World::new(4);
    w.topics = Err("StreamTopic \"clicks\" not found".into());
    assert_eq!(tick(&mut w).prerequisites, nothing);
    let mut w = World::new(4);
    w.spec.sink.topic = "clicks".into();
    assert_eq!(tick(&mut w).prerequisites, nothing);
    let mut w = World::new(4);
    w.storage_refusal = Some("spec.checkpoint.storage: outside this job's own storage".into());
    assert_eq!(tick(&mut w).prerequisites, nothing);
    assert!(w.internal_topics.is_empty() && !w.service && !w.admin_secret);
    // A running job whose new spec is refused keeps what it has.
    let mut w = running_world(4);
    w.storage_refusal = Some("spec.checkpoint.storage: outside this job's own storage".into());
    let step = tick(&mut w);
    assert_eq!(step.prerequisites, nothing);
    assert!(step.deployment.is_some_and(|d| d.replicas == 4));
}

#[test]
fn the_network_policy_is_requested_only_when_the_operator_puts_one() {
    let mut w = World::new(2);
    w.network_policy_enabled = true;
    assert!(tick(&mut w).prerequisites.network_policy);
    until(&mut w, "Running", |w| w.running(1));
    assert!(w.network_policy);
}

#[test]
fn deleting_a_job_deletes_its_internal_topics_unless_told_not_to() {
    let (repartition, control) = ("r".to_owned(), "c".to_owned());
    assert_eq!(
        cleanup(repartition.clone(), control.clone(), false),
        vec![repartition.clone(), control.clone()]
    );
    assert!(cleanup(repartition, control, true).is_empty());
}
