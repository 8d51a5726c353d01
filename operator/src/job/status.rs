//! Writing a StreamJob's status: kstatus conditions with
//! `observedGeneration`, by server-side apply (field manager
//! `streamops-operator`). The status is the whole write-ahead log the
//! operator keeps, so a field left out of an apply is removed.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;
use streamops_crds::{Health, StreamJob, StreamJobStatus, common::condition};

use crate::error::Result;

pub const FIELD_MANAGER: &str = "streamops-operator";

/// `status` with conditions for `health` as of the job's generation.
pub fn with_health(job: &StreamJob, mut status: StreamJobStatus, health: &Health) -> StreamJobStatus {
    let previous = job
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = job.metadata.generation;
    status.observed_generation = generation;
    status.conditions = health.conditions(generation, previous, Time(Timestamp::now()));
    status
}

/// The reason of the current `Ready` condition, to emit events only on change.
pub fn previous_reason(job: &StreamJob) -> Option<&str> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY)
        .map(|c| c.reason.as_str())
}

pub async fn apply(api: &Api<StreamJob>, job: &StreamJob, status: &StreamJobStatus) -> Result<()> {
    let patch = json!({
        "apiVersion": "streamops.io/v1alpha1",
        "kind": "StreamJob",
        "status": status,
    });
    api.patch_status(
        &job.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}
