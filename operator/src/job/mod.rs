//! The StreamJob controller: `plan` decides (a pure state machine over spec,
//! status and what the pods say), `resources` builds the object graph,
//! `admin` talks to the runtime pods, `controller` observes and acts (its
//! status goes through `crate::reconcile::status`). Status is the
//! write-ahead log: every step is
//! recorded before it is acted on, so a restart at any moment resumes.

pub mod admin;
pub mod autoscaler;
pub mod controller;
pub mod plan;
pub mod quota;
pub mod resources;

use kube::ResourceExt;
use streamops_crds::StreamJob;

/// Label on every object the controller creates for a job (and on its pods).
pub const JOB_LABEL: &str = "streamops.io/job";
/// Pod-template annotation naming what the pods run; see [`plan::revision`].
pub const REVISION_ANNOTATION: &str = "streamops.io/revision";

/// Names of the objects a job owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobNames {
    pub job: String,
    pub namespace: String,
}

impl JobNames {
    pub fn of(job: &StreamJob) -> Self {
        Self {
            job: job.name_any(),
            namespace: job.namespace().unwrap_or_default(),
        }
    }
    /// StatefulSet and headless Service (pods are `<job>-<ordinal>`).
    pub fn statefulset(&self) -> String {
        self.job.clone()
    }
    pub fn service(&self) -> String {
        self.job.clone()
    }
    /// The NetworkPolicy in front of the job's runtime pods.
    pub fn network_policy(&self) -> String {
        self.job.clone()
    }
    pub fn config_map(&self) -> String {
        format!("{}-config", self.job)
    }
    pub fn admin_secret(&self) -> String {
        format!("{}-admin", self.job)
    }
    pub fn repartition_topic(&self) -> String {
        streamops_crds::runtime_api::repartition_topic(&self.namespace, &self.job)
    }
    pub fn control_topic(&self) -> String {
        streamops_crds::runtime_api::control_topic(&self.namespace, &self.job)
    }
}

/// Whether annotation `key` is set to `value` (case-insensitive).
pub fn annotation_is(job: &StreamJob, key: &str, value: &str) -> bool {
    job.annotations()
        .get(key)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
}
