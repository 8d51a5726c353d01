//! Reading a task's last committed checkpoint marker from the job's control
//! topic (partition = task).

use crate::error::RuntimeError;
use crate::error::{Context, Result};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::consumer::OffsetsClient;
use super::kerr;
use super::settings::KafkaSettings;
use crate::checkpoint::marker::Marker;

/// Key prefix of the fence records in the control topic (not markers).
pub const FENCE_KEY_PREFIX: &str = "fence-";

/// Client context of the marker reader: reaching the end of a partition is
/// how it knows it has read every marker, not an error worth logging.
struct QuietEof;

impl rdkafka::ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            warn!(error = %error, reason, "marker reader");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietEof {}

/// The last committed marker of task `t` of job `job_uid`: read_committed
/// from the start of control partition `t` until the read position reaches
/// the partition's high watermark, i.e. until every transaction in it is
/// resolved. (End-of-partition alone is not enough: under read_committed it
/// is reported at the last stable offset, which an unresolved transaction
/// holds back; stopping there could miss the newest marker and restore an
/// older checkpoint.) Markers of another job with the same topics (a
/// deleted job of the same name) are not ours: a later one hides earlier
/// ones of ours.
pub fn last_committed(
    kafka: &KafkaSettings,
    offsets: &OffsetsClient,
    topic: &str,
    t: u32,
    group: &str,
    job_uid: &str,
    timeout: Duration,
) -> Result<Option<Marker>> {
    let (low, high) = offsets.watermarks(topic, t as i32)?;
    if high <= 0 && low <= 0 {
        // Nothing was ever written: a fresh job (or fresh internal topics).
        return Ok(None);
    }
    let c: BaseConsumer<QuietEof> = kafka
        .client()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create_with_context(QuietEof)
        .map_err(kerr("creating the marker reader"))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, t as i32, Offset::Beginning)
        .map_err(kerr("assigning the control partition"))?;
    c.assign(&tpl).map_err(kerr("assigning the control partition"))?;
    let deadline = Instant::now() + timeout * 2;
    let mut last: Option<Marker> = None;
    let mut count = 0usize;
    let mut foreign = 0usize;
    loop {
        if Instant::now() > deadline {
            return Err(RuntimeError::Protocol(format!(
                "task {t}: could not read {topic}-{t} to its end (offset {high}) within {:?}: a transaction in it \
                 stays unresolved; refusing to guess which checkpoint is the last committed one",
                timeout * 2
            )));
        }
        match c.poll(Duration::from_millis(100)) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => {
                let position = c.position().ok().and_then(|p| {
                    p.find_partition(topic, t as i32).and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    })
                });
                if position.is_some_and(|p| p >= high) {
                    break;
                }
            }
            Some(Err(e)) => return Err(kerr(format!("reading {topic}-{t}"))(e)),
            Some(Ok(m)) => {
                let done = m.offset() + 1 >= high;
                let fence = m
                    .key()
                    .is_some_and(|k| k.starts_with(FENCE_KEY_PREFIX.as_bytes()));
                let Some(payload) = m.payload().filter(|_| !fence) else {
                    if done {
                        break;
                    }
                    continue;
                };
                let marker: Marker = serde_json::from_slice(payload)
                    .with_context(|| format!("{topic}-{t} offset {}: not a checkpoint marker", m.offset()))?;
                if marker.task != t {
                    return Err(RuntimeError::Protocol(format!(
                        "{topic}-{t} offset {} holds a marker of task {}",
                        m.offset(),
                        marker.task
                    )));
                }
                if marker.job_uid == job_uid {
                    count += 1;
                    last = Some(marker);
                } else {
                    foreign += 1;
                    last = None;
                }
                if done {
                    break;
                }
            }
        }
    }
    if foreign > 0 {
        warn!(
            task = t,
            foreign, "ignored checkpoint markers of another job with the same topics"
        );
    }
    info!(task = t, high, markers = count, last = ?last.as_ref().map(Marker::header_value), "read checkpoint markers");
    Ok(last)
}
