//! Checkpoints and savepoints: the protocol that makes outputs exactly once,
//! and where state is kept.
//!
//! - [`protocol`]: one task's checkpoint and restore, step by step, against
//!   a [`protocol::TaskLog`] and a [`store::CheckpointStore`] (unit-tested
//!   with an in-memory log and store, crashing between every two steps);
//! - [`outputs`]: what a task's outputs become in the log, and the outputs
//!   held until their checkpoint's transaction;
//! - [`marker`]: the control topic's records (one per committed checkpoint)
//!   and the header every output carries;
//! - [`store`]: manifests, snapshots and savepoints in durable storage
//!   (`object_store`);
//! - [`retention`]: which checkpoint objects a task may delete.

pub mod marker;
pub mod outputs;
pub mod protocol;
pub mod retention;
pub mod store;

#[cfg(test)]
mod fake_log;
