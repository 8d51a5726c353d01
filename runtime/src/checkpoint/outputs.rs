//! What a task's outputs become in the log: one [`Record`] per output, with
//! the checkpoint header every record carries, and (exactly once) the
//! outputs held until their checkpoint's transaction ([`Outbox`]).

use prometheus::IntCounterVec;
use streamops_crds::runtime_api::JobTopics;

use super::marker::CHECKPOINT_HEADER;
use super::protocol::{Record, TaskLog};
use crate::dataflow::task::Out;

/// Key of stage 1's watermark records in the repartition topic.
pub const WATERMARK_KEY: &[u8] = b"watermark";

/// Where a job's outputs go.
#[derive(Clone, Copy)]
pub struct Destinations<'a> {
    pub topics: &'a JobTopics,
    /// Partitions of the repartition topic (the task count): a watermark
    /// goes to each.
    pub keyed_partitions: u32,
    /// Counts records by kind (`keyed`, `result`, `late`, `dead_letter`,
    /// `late_dropped`, `dead_letter_dropped`).
    pub records_out: &'a IntCounterVec,
}

/// Where an output's input came from: (topic, partition, offset), named in
/// a dead letter's headers.
pub type Origin<'a> = (&'a str, i32, i64);

/// An output held until its checkpoint's transaction (exactly once).
pub enum Held {
    /// What the task emitted for the record at `offset`, of the keyed stage
    /// (the repartition topic) or the source stage.
    Out { out: Out, keyed: bool, offset: i64 },
    /// Stage 1's watermark, for every keyed partition.
    Watermark { value: Vec<u8> },
}

impl Held {
    /// What it costs in memory, roughly.
    fn bytes(&self) -> usize {
        const OVERHEAD: usize = 64;
        OVERHEAD
            + match self {
                Held::Out { out, .. } => match out {
                    Out::Keyed { key, value, .. } | Out::Result { key, value, .. } => key.len() + value.len(),
                    Out::Late { key, value } => key.as_ref().map_or(0, Vec::len) + value.len(),
                    Out::DeadLetter {
                        key, value, reason, ..
                    } => key.as_ref().map_or(0, Vec::len) + value.len() + reason.len(),
                    Out::Watermark { value } => value.len(),
                },
                Held::Watermark { value } => value.len(),
            }
    }
}

/// The outputs of a task's open checkpoint, in order, and what they cost.
#[derive(Default)]
pub struct Outbox {
    held: Vec<Held>,
    bytes: usize,
}

impl Outbox {
    pub fn hold(&mut self, h: Held) {
        self.bytes += h.bytes();
        self.held.push(h);
    }

    /// Roughly what the held outputs cost in memory.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Everything held, in order; the outbox is empty afterwards.
    pub fn take(&mut self) -> Vec<Held> {
        self.bytes = 0;
        std::mem::take(&mut self.held)
    }
}

/// Writes one output of task `task` to `log` with `header` (the open
/// checkpoint's [`super::marker::header_value`]); `origin` is the input
/// record it came from.
pub fn write<L: TaskLog + ?Sized>(
    log: &mut L,
    to: &Destinations<'_>,
    header: &str,
    out: Out,
    origin: Origin<'_>,
) -> crate::error::Result<()> {
    let m = to.records_out;
    let checkpoint = [(CHECKPOINT_HEADER, header.as_bytes())];
    match out {
        Out::Keyed {
            partition,
            key,
            value,
        } => {
            m.with_label_values(&["keyed"]).inc();
            log.send(&Record {
                topic: &to.topics.repartition,
                partition: Some(partition),
                key: Some(&key),
                value: &value,
                headers: &checkpoint,
            })
        }
        Out::Watermark { .. } => Ok(()),
        Out::Result { key, value, .. } => {
            m.with_label_values(&["result"]).inc();
            log.send(&Record {
                topic: &to.topics.sink,
                partition: None,
                key: Some(&key),
                value: &value,
                headers: &checkpoint,
            })
        }
        Out::Late { key, value } => match &to.topics.late_events {
            Some(topic) => {
                m.with_label_values(&["late"]).inc();
                log.send(&Record {
                    topic,
                    partition: None,
                    key: key.as_deref(),
                    value: &value,
                    headers: &checkpoint,
                })
            }
            None => {
                m.with_label_values(&["late_dropped"]).inc();
                Ok(())
            }
        },
        Out::DeadLetter {
            key,
            value,
            kind,
            reason,
        } => match &to.topics.dead_letter {
            Some(topic) => {
                m.with_label_values(&["dead_letter"]).inc();
                let (src_topic, src_partition, src_offset) = origin;
                let partition = src_partition.to_string();
                let offset = src_offset.to_string();
                let headers = [
                    (CHECKPOINT_HEADER, header.as_bytes()),
                    ("streamops-error-kind", kind.as_bytes()),
                    ("streamops-error", reason.as_bytes()),
                    ("streamops-source-topic", src_topic.as_bytes()),
                    ("streamops-source-partition", partition.as_bytes()),
                    ("streamops-source-offset", offset.as_bytes()),
                ];
                log.send(&Record {
                    topic,
                    partition: None,
                    key: key.as_deref(),
                    value: &value,
                    headers: &headers,
                })
            }
            None => {
                m.with_label_values(&["dead_letter_dropped"]).inc();
                Ok(())
            }
        },
    }
}

/// Stage 1's watermark to every keyed partition.
pub fn broadcast_watermark<L: TaskLog + ?Sized>(
    log: &mut L,
    to: &Destinations<'_>,
    value: &[u8],
    header: &str,
) -> crate::error::Result<()> {
    let checkpoint = [(CHECKPOINT_HEADER, header.as_bytes())];
    for q in 0..to.keyed_partitions as i32 {
        log.send(&Record {
            topic: &to.topics.repartition,
            partition: Some(q),
            key: Some(WATERMARK_KEY),
            value,
            headers: &checkpoint,
        })?;
    }
    Ok(())
}
