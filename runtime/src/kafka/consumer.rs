//! The task consumer (read_committed, positions set from the checkpoint,
//! the partitions' high watermarks from its statistics) and the offsets
//! client (log start and high watermark, independent of transactions).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::error::Result;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::kerr;
use super::settings::KafkaSettings;

/// Context of the task consumer: each assigned partition's high watermark
/// as librdkafka's statistics (served by the consumer's poll) last reported
/// it.
#[derive(Default)]
pub struct HighWatermarks {
    high: Mutex<BTreeMap<(String, i32), i64>>,
}

impl HighWatermarks {
    pub fn high(&self, topic: &str, partition: i32) -> Option<i64> {
        let high = self.high.lock().unwrap_or_else(|e| e.into_inner());
        high.get(&(topic.to_owned(), partition)).copied()
    }
}

impl rdkafka::ClientContext for HighWatermarks {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut high = self.high.lock().unwrap_or_else(|e| e.into_inner());
        for (topic, t) in statistics.topics {
            // Partition -1 is librdkafka's internal "unassigned" queue; -1
            // offsets are "not known yet".
            for p in t
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && p.hi_offset >= 0)
            {
                high.insert((topic.clone(), p.partition), p.hi_offset);
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for HighWatermarks {}

/// The task consumer.
pub type TaskConsumer = BaseConsumer<HighWatermarks>;

/// A consumer of the job's group that reads only committed records, never
/// resets a position on its own (`auto.offset.reset=error`: the runtime
/// decides, [`crate::pipeline::offsets`]) and reports high watermarks every
/// `statistics`.
pub fn task_consumer(
    kafka: &KafkaSettings,
    group: &str,
    client_id: &str,
    statistics: Duration,
) -> Result<TaskConsumer> {
    kafka
        .client()
        .set("statistics.interval.ms", statistics.as_millis().to_string())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "error")
        .set("client.id", client_id)
        .create_with_context(HighWatermarks::default())
        .map_err(kerr("creating the consumer"))
}

/// Reads partitions' offsets with read_uncommitted: high watermarks, not
/// last stable offsets.
pub struct OffsetsClient {
    client: BaseConsumer,
    timeout: Duration,
}

impl OffsetsClient {
    pub fn new(kafka: &KafkaSettings, client_id: &str, timeout: Duration) -> Result<Self> {
        let client = kafka
            .client()
            .set("isolation.level", "read_uncommitted")
            .set("client.id", client_id)
            .create()
            .map_err(kerr("creating the offsets client"))?;
        Ok(OffsetsClient { client, timeout })
    }

    /// (log start, high watermark) of a partition.
    pub fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64)> {
        self.client
            .fetch_watermarks(topic, partition, self.timeout)
            .map_err(kerr(format!("reading offsets of {topic}-{partition}")))
    }
}
