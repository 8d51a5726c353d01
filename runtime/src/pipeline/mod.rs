//! The Kafka layer: a job as tasks (one per source partition) that read
//! Kafka and write Kafka exactly once.
//!
//! - [`job`]: the job file the operator writes and the task assignment;
//! - [`sources`]: which task reads which source partition;
//! - [`offsets`]: source positions no longer in their partition;
//! - [`wire`]: records of the internal control topic (the tasks and the
//!   repartition topic's records are [`crate::dataflow`]'s);
//! - [`store`]: checkpoints and savepoints in durable storage (`object_store`);
//! - [`retention`]: which checkpoint objects a task may delete;
//! - [`runner`]: the loop and the checkpoint protocol;
//! - [`admin`]: the HTTP admin API; [`shared`]: what the two share;
//! - [`failure`]: why the runtime stopped, for its termination log.

pub mod admin;
pub mod cli;
pub mod failure;
pub mod job;
pub mod kafka;
pub mod offsets;
pub mod retention;
pub mod runner;
pub mod shared;
pub mod sources;
pub mod store;
pub mod wire;
