//! What Kafka says about one topic and the config operations it takes:
//! the vocabulary of the admin calls, shared by the topic plan (which
//! decides on it) and the calls (which speak it). Plain data, no I/O.

use std::collections::BTreeMap;

/// The topic as Kafka describes it. `config` holds what DescribeConfigs
/// returned: every key on a full Kafka broker, only the explicitly set ones
/// on brokers that omit defaults. The plan never relies on a key's absence
/// meaning "default" nor on its presence meaning "set by someone".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedTopic {
    pub partitions: i32,
    pub replication_factor: i32,
    pub config: BTreeMap<String, String>,
}

/// One incremental config operation (IncrementalAlterConfigs SET / DELETE).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConfigChange {
    Set { key: String, value: String },
    Delete { key: String },
}
