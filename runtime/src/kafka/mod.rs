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

use std::fmt;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// A Kafka failure seen as a code rather than a [`KafkaError`] (a flush that
/// ran out of time, a failed delivery report, a position out of range):
/// [`crate::pipeline::failure::reason`] reads the code from the error chain.
#[derive(Debug)]
pub struct KafkaCondition {
    pub code: RDKafkaErrorCode,
    pub what: String,
}

impl KafkaCondition {
    pub fn new(code: RDKafkaErrorCode, what: impl Into<String>) -> Self {
        Self {
            code,
            what: what.into(),
        }
    }
}

impl fmt::Display for KafkaCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for KafkaCondition {}

/// Context for a Kafka error that keeps it as the source, so that
/// [`crate::pipeline::failure::reason`] can read its code.
pub fn kerr(what: impl fmt::Display + Send + Sync + 'static) -> impl FnOnce(KafkaError) -> anyhow::Error {
    move |e| anyhow::Error::new(e).context(what)
}
