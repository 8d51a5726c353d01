//! The crate's single error type.

use std::path::PathBuf;

/// Every failure the runtime can report. Variant names double as metric
/// labels and log reasons, so they name the failing concern, not the code.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The job spec cannot be turned into a plan; `field` is the spec path
    /// (e.g. `spec.pipeline.filter`) the problem comes from.
    #[error("{field}: {message}")]
    Compile { field: String, message: String },

    /// The state backend failed.
    #[error("state backend: {0}")]
    State(String),

    /// A snapshot directory could not be read or written.
    #[error("snapshot {path}: {message}")]
    Snapshot { path: PathBuf, message: String },

    /// Stored state could not be decoded (corrupt or from another version).
    #[error("corrupt state: {0}")]
    CorruptState(String),

    /// A command line argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The Kafka broker could not be reached or answered with an error.
    #[error("kafka: {0}")]
    Kafka(String),

    /// A task of the dataflow, or the in-memory harness driving tasks,
    /// failed (the message carries the context).
    #[error("dataflow: {0}")]
    Dataflow(String),

    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl RuntimeError {
    pub(crate) fn compile(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        RuntimeError::Compile {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
