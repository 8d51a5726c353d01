//! streamops runtime engine: keyed, windowed aggregation over event time.
//!
//! Pure core, thin shell: [`window`], [`time`], [`aggregate`], [`expr`] and
//! [`codec`] are small I/O-free pieces; [`operator`] composes them into the
//! two dataflow stages; [`engine`] drives both in process; [`state`] hides
//! storage behind [`state::StateBackend`]. Kafka and checkpoint storage are
//! layered on top by the shell (`main.rs` and later modules).

pub mod aggregate;
pub mod bench;
pub mod codec;
pub mod engine;
pub mod error;
pub mod expr;
pub mod metrics;
pub mod operator;
pub mod pipeline;
pub mod plan;
pub mod state;
pub mod time;
pub mod window;

/// An input partition number (of a source topic or of the keyed stream).
pub type PartitionId = u32;

pub use engine::{Engine, EngineCounters, Output, SourceRecord};
pub use error::{Result, RuntimeError};
pub use plan::{JobDefinition, Plan};
