//! The runtime's Kafka edge: everything that talks to a broker.
//!
//! - [`settings`]: bootstrap servers and credentials (files from Secrets);
//! - [`producer`]: a task's producer with its delivery ledger, as the
//!   [`crate::checkpoint::protocol::TaskLog`] the checkpoint protocol writes
//!   through (fencing, transactions, the last committed marker);
//! - [`consumer`]: the task consumer (read_committed, positions from the
//!   checkpoint, high watermarks from its statistics) and the offsets client;
//! - [`markers`]: reading a task's last committed checkpoint marker;
//! - [`transaction`]: `transaction.timeout.ms` against the broker's maximum.
//!
//! Dependencies point one way: `pipeline` (the loop) uses `kafka` and
//! `checkpoint`; `kafka` implements what `checkpoint` asks of a log;
//! `checkpoint` knows nothing of rdkafka.

pub mod consumer;
pub mod markers;
pub mod producer;
pub mod settings;
pub mod transaction;

pub use crate::error::kafka as kerr;
