//! The crate's single error type, and [`Context`] to say what was being done
//! when something failed.

use std::fmt::Display;
use std::path::PathBuf;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Every failure the runtime can report. Variant names double as metric
/// labels and log reasons, so they name the failing concern, not the code.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The job spec cannot be turned into a plan; `field` is the spec path
    /// (e.g. `spec.pipeline.filter`) the problem comes from.
    #[error("{field}: {message}")]
    Compile { field: String, message: String },

    /// The job file cannot be run (names, task layout, restore settings).
    #[error("job file: {0}")]
    Job(String),

    /// The state backend failed.
    #[error("state backend: {0}")]
    State(String),

    /// A snapshot directory could not be read or written.
    #[error("snapshot {path}: {message}")]
    Snapshot { path: PathBuf, message: String },

    /// Stored state could not be decoded (corrupt or from another version).
    #[error("corrupt state: {0}")]
    CorruptState(String),

    /// Checkpoint storage (the object store) failed or holds something the
    /// runtime cannot use.
    #[error("checkpoint storage: {0}")]
    Storage(String),

    /// The checkpoint protocol refuses to go on (no state to restore where
    /// the spec requires one, a control partition it cannot read to its end,
    /// a marker that is not this task's).
    #[error("{0}")]
    Protocol(String),

    /// A command line argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A Kafka client call failed: librdkafka's error, whose code decides
    /// the termination reason ([`crate::pipeline::failure`]).
    #[error("{what}: {source}")]
    KafkaClient { what: String, source: KafkaError },

    /// A Kafka failure known by its code only: a flush that ran out of time,
    /// a failed delivery report, a read position outside its partition.
    #[error("{what}")]
    KafkaCode { code: RDKafkaErrorCode, what: String },

    /// The broker answered something the runtime cannot use.
    #[error("kafka: {0}")]
    Kafka(String),

    /// A task of the dataflow, or the in-memory harness driving tasks,
    /// failed (the message carries the context).
    #[error("dataflow: {0}")]
    Dataflow(String),

    /// The metrics registry refused a metric.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),

    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),

    #[error("json: {0}")]
    Json(#[from] serde_json::Error),

    /// What was being done when `source` failed.
    #[error("{context}: {source}")]
    Context {
        context: String,
        source: Box<RuntimeError>,
    },
}

impl RuntimeError {
    pub(crate) fn compile(field: impl Into<String>, message: impl Display) -> Self {
        RuntimeError::Compile {
            field: field.into(),
            message: message.to_string(),
        }
    }

    /// A Kafka failure by its code.
    pub fn kafka_code(code: RDKafkaErrorCode, what: impl Into<String>) -> Self {
        RuntimeError::KafkaCode {
            code,
            what: what.into(),
        }
    }

    /// The first Kafka error code in the error's chain, if any.
    pub fn kafka_error_code(&self) -> Option<RDKafkaErrorCode> {
        match self {
            RuntimeError::KafkaClient { source, .. } => source.rdkafka_error_code(),
            RuntimeError::KafkaCode { code, .. } => Some(*code),
            RuntimeError::Context { source, .. } => source.kafka_error_code(),
            _ => None,
        }
    }

    /// The innermost error, under every [`RuntimeError::Context`].
    pub fn root(&self) -> &RuntimeError {
        match self {
            RuntimeError::Context { source, .. } => source.root(),
            e => e,
        }
    }
}

impl From<KafkaError> for RuntimeError {
    fn from(source: KafkaError) -> Self {
        RuntimeError::KafkaClient {
            what: "kafka".into(),
            source,
        }
    }
}

impl From<std::num::ParseIntError> for RuntimeError {
    fn from(e: std::num::ParseIntError) -> Self {
        RuntimeError::InvalidArgument(e.to_string())
    }
}

impl From<object_store::Error> for RuntimeError {
    fn from(e: object_store::Error) -> Self {
        RuntimeError::Storage(e.to_string())
    }
}

impl From<object_store::path::Error> for RuntimeError {
    fn from(e: object_store::path::Error) -> Self {
        RuntimeError::Storage(e.to_string())
    }
}

/// Context for a Kafka error that keeps its code (see
/// [`RuntimeError::kafka_error_code`]).
pub fn kafka(what: impl Display) -> impl FnOnce(KafkaError) -> RuntimeError {
    move |source| RuntimeError::KafkaClient {
        what: what.to_string(),
        source,
    }
}

/// What was being done when an error happened: `result.context("reading
/// x")?` wraps the error in [`RuntimeError::Context`].
pub trait Context<T> {
    fn context<C: Display>(self, context: C) -> Result<T>;
    fn with_context<C: Display, F: FnOnce() -> C>(self, f: F) -> Result<T>;
}

impl<T, E: Into<RuntimeError>> Context<T> for std::result::Result<T, E> {
    fn context<C: Display>(self, context: C) -> Result<T> {
        self.map_err(|e| RuntimeError::Context {
            context: context.to_string(),
            source: Box::new(e.into()),
        })
    }

    fn with_context<C: Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| RuntimeError::Context {
            context: f().to_string(),
            source: Box::new(e.into()),
        })
    }
}

/// `fail!(Variant, "format", args...)`: returns `Err(RuntimeError::Variant(..))`.
#[macro_export]
macro_rules! fail {
    ($variant:ident, $($arg:tt)+) => {
        return Err($crate::error::RuntimeError::$variant(format!($($arg)+)))
    };
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_reads_outside_in_and_keeps_the_kafka_code() {
        let r: Result<()> = Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
            .map_err(kafka("flushing"))
            .context("committing checkpoint 7")
            .context("task 3");
        let e = r.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "task 3: committing checkpoint 7: flushing: {}",
                KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)
            )
        );
        assert_eq!(e.kafka_error_code(), Some(RDKafkaErrorCode::OperationTimedOut));
        assert!(matches!(e.root(), RuntimeError::KafkaClient { .. }));
        let plain: Result<()> = Err(std::io::Error::other("disk full")).context("writing x");
        assert_eq!(plain.unwrap_err().kafka_error_code(), None);
    }
}
