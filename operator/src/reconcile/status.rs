//! Writing a resource's status: kstatus conditions with
//! `observedGeneration`, by server-side apply with field manager
//! [`FIELD_MANAGER`]. The status is the whole truth (for a StreamJob the
//! whole write-ahead log) the operator owns, so a field left out of an
//! apply is removed.

use std::fmt::Debug;

use k8s_openapi::{
    NamespaceResourceScope,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::EventType,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use streamops_crds::{Health, StreamJob, StreamJobStatus, StreamTopic, StreamTopicStatus, common::condition};

use super::context::Shared;
use crate::error::Result;

/// The field manager of every object and status the operator writes.
pub const FIELD_MANAGER: &str = "streamops-operator";

/// A status with kstatus conditions as of an observed generation.
pub trait Conditions {
    fn conditions(&self) -> &[Condition];
    /// Sets `observedGeneration` and the conditions together: conditions
    /// always speak of the generation recorded next to them.
    fn set_conditions(&mut self, generation: Option<i64>, conditions: Vec<Condition>);
}

impl Conditions for StreamTopicStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn set_conditions(&mut self, generation: Option<i64>, conditions: Vec<Condition>) {
        self.observed_generation = generation;
        self.conditions = conditions;
    }
}

impl Conditions for StreamJobStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn set_conditions(&mut self, generation: Option<i64>, conditions: Vec<Condition>) {
        self.observed_generation = generation;
        self.conditions = conditions;
    }
}

/// A namespaced resource whose status the operator writes.
pub trait Reported:
    Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Debug + Serialize + DeserializeOwned
{
    type Status: Conditions + Clone + PartialEq + Serialize + Send + Sync;
    /// The Event action that goes with a `Stalled` report.
    const STALLED_ACTION: &'static str;
    /// Whether reconciles see this kind through the watch cache, which may
    /// lag behind the operator's last status write: then a status equal to
    /// the cached one is written anyway. (A StreamJob is read from the
    /// apiserver before each decision, so an equal status is skipped.)
    const FROM_CACHE: bool;
    fn status(&self) -> Option<&Self::Status>;
}

impl Reported for StreamTopic {
    type Status = StreamTopicStatus;
    const STALLED_ACTION: &'static str = "Refuse";
    const FROM_CACHE: bool = true;
    fn status(&self) -> Option<&StreamTopicStatus> {
        self.status.as_ref()
    }
}

impl Reported for StreamJob {
    type Status = StreamJobStatus;
    const STALLED_ACTION: &'static str = "Reconcile";
    const FROM_CACHE: bool = false;
    fn status(&self) -> Option<&StreamJobStatus> {
        self.status.as_ref()
    }
}

/// `status` with conditions for `health` as of the object's generation
/// (a condition that keeps its state keeps its transition time).
pub fn with_health<K: Reported>(object: &K, mut status: K::Status, health: &Health) -> K::Status {
    let previous = object.status().map(Conditions::conditions).unwrap_or_default();
    let generation = object.meta().generation;
    let conditions = health.conditions(generation, previous, Time(Timestamp::now()));
    status.set_conditions(generation, conditions);
    status
}

/// The reason of the current `Ready` condition, to emit events only on change.
pub fn previous_reason<K: Reported>(object: &K) -> Option<&str> {
    object
        .status()?
        .conditions()
        .iter()
        .find(|c| c.type_ == condition::READY)
        .map(|c| c.reason.as_str())
}

/// Writes `status` as the object's whole status.
pub async fn apply<K: Reported>(api: &Api<K>, object: &K, status: &K::Status) -> Result<()> {
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Records `health` with `status` (unless the object, read fresh, holds
/// exactly that already; see [`Reported::FROM_CACHE`]), and publishes an event when the Ready reason changed (so a resync that
/// finds the same refusal does not repeat it: a Warning for `Stalled`).
/// Returns the status as recorded.
pub async fn report<K: Reported>(
    object: &K,
    api: &Api<K>,
    shared: &Shared,
    status: K::Status,
    health: &Health,
) -> Result<K::Status> {
    let reason_changed = previous_reason(object) != Some(health.reason());
    let status = with_health(object, status, health);
    if K::FROM_CACHE || object.status() != Some(&status) {
        apply(api, object, &status).await?;
    }
    if reason_changed {
        let (type_, action) = match health {
            Health::Stalled { .. } => (EventType::Warning, K::STALLED_ACTION),
            Health::Reconciling { .. } | Health::Ready { .. } => (EventType::Normal, "Reconcile"),
        };
        shared
            .event(
                object,
                type_,
                health.reason(),
                action,
                health.message().to_owned(),
            )
            .await;
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_speak_of_the_generation_beside_them() {
        let spec = serde_json::from_value(json!({"partitions": 1})).expect("a valid spec");
        let mut topic = StreamTopic::new("t", spec);
        topic.metadata.generation = Some(3);
        let stalled = with_health(
            &topic,
            StreamTopicStatus::default(),
            &Health::stalled("Conflict", "m"),
        );
        assert_eq!(stalled.observed_generation, Some(3));
        assert_eq!(Conditions::conditions(&stalled)[0].reason, "Conflict");
        topic.status = Some(stalled.clone());
        assert_eq!(previous_reason(&topic), Some("Conflict"));

        // The job's status holds them the same way.
        let mut job = StreamJobStatus::default();
        job.set_conditions(Some(7), stalled.conditions);
        assert_eq!(job.observed_generation, Some(7));
        assert_eq!(Conditions::conditions(&job)[0].reason, "Conflict");
    }
}
