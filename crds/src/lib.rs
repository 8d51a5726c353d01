//! The `streamops.io/v1alpha1` API: `StreamTopic` and `StreamJob`, their
//! validation beyond the CRD schema, and their defaults.
//!
//! Shared by the operator (which reconciles them) and the runtime (which
//! executes a job's compiled spec), so neither keeps a copy.

pub mod change;
pub mod common;
pub mod duration;
pub mod expr;
pub mod job;
pub mod layout;
pub mod pod_template;
pub mod reference;
pub mod rules;
pub mod runtime_api;
pub mod schema;
pub mod tenancy;
pub mod topic;
pub mod transaction;
pub mod validate;

pub use common::{Health, KafkaClusterSpec};
pub use duration::DurationSpec;
pub use job::{StreamJob, StreamJobSpec, StreamJobStatus};
pub use topic::{StreamTopic, StreamTopicSpec, StreamTopicStatus};
pub use validate::{FieldError, Validation};

/// API group of every streamops resource.
pub const GROUP: &str = "streamops.io";
