//! streamops runtime engine: keyed, windowed aggregation over event time.
//!
//! Pure core, thin shell: [`window`], [`time`], [`aggregate`], [`expr`] and
//! [`codec`] are small I/O-free pieces; [`dataflow`] composes them into the
//! two dataflow stages and the task that drives both (through Kafka in
//! [`pipeline`], through in-memory logs in [`dataflow::harness`]); [`state`]
//! hides storage behind [`state::StateBackend`]. At the edges, [`checkpoint`]
//! is the exactly-once protocol and its storage and [`kafka`] the broker
//! clients; [`pipeline`] is the process: the loop, the admin API, the CLI.

pub mod aggregate;
pub mod bench;
pub mod checkpoint;
pub mod codec;
pub mod dataflow;
pub mod error;
pub mod expr;
pub mod kafka;
pub mod local;
pub mod pipeline;

pub mod state;
pub mod time;
pub mod window;

/// An input partition number (of a source topic or of the keyed stream).
pub type PartitionId = u32;

/// The compiled job ([`dataflow::plan`]), at the crate root where callers look for it.
pub use dataflow::plan;
pub use dataflow::plan::{JobDefinition, Plan};
pub use error::{Result, RuntimeError};
