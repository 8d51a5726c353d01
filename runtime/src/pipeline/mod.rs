//! The process: a job as tasks (one per source partition) that read Kafka
//! and write Kafka exactly once, driven by one loop.
//!
//! - [`job`]: the job file the operator writes and the task assignment;
//! - [`offsets`]: source positions no longer in their partition;
//! - [`load`]: the event-time lag and record rates the autoscaler reads;
//! - [`runner`]: the loop: records in, tasks, checkpoints on schedule
//!   ([`crate::checkpoint::protocol`]), commands from the admin API;
//! - [`admin`]: the HTTP admin API; [`shared`]: what the two share;
//! - [`failure`]: why the runtime stopped, for its termination log.

pub mod admin;
pub mod cli;
pub mod crash;
pub mod failure;
pub mod job;
pub mod load;
pub mod offsets;
pub mod runner;
pub mod shared;
