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
    /// Stage 1's keyed record for keyed partition `partition`: its key is
    /// `start..key_end` of the outbox's keyed bytes, its value `key_end..end`.
    Keyed {
        partition: i32,
        start: usize,
        key_end: usize,
        end: usize,
    },
    /// A stateless job's record for the sink, laid out as [`Held::Keyed`]
    /// (`keyless`: written without a key).
    Result {
        start: usize,
        key_end: usize,
        end: usize,
        keyless: bool,
    },
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
                    Out::Keyed { key, value, .. } => key.len() + value.len(),
                    Out::Late { key, value }
                    | Out::Result { key, value, .. }
                    | Out::Routed { key, value, .. } => key.as_ref().map_or(0, Vec::len) + value.len(),
                    Out::DeadLetter {
                        key, value, reason, ..
                    } => key.as_ref().map_or(0, Vec::len) + value.len() + reason.len(),
                    Out::Watermark { value } => value.len(),
                },
                Held::Keyed { start, end, .. } | Held::Result { start, end, .. } => end - start,
                Held::Watermark { value } => value.len(),
            }
    }
}

/// The outputs of a task's open checkpoint, in order, and what they cost.
#[derive(Default)]
pub struct Outbox {
    held: Vec<Held>,
    /// Key and value bytes of the held [`Held::Keyed`] records, back to back.
    keyed: Vec<u8>,
    bytes: usize,
}

impl Outbox {
    pub fn hold(&mut self, h: Held) {
        self.bytes += h.bytes();
        self.held.push(h);
    }

    /// Holds stage 1's keyed record (copied into the outbox's buffer: no
    /// allocation of its own).
    pub fn hold_keyed(&mut self, partition: i32, key: &[u8], value: &[u8]) {
        let start = self.keyed.len();
        self.keyed.extend_from_slice(key);
        let key_end = self.keyed.len();
        self.keyed.extend_from_slice(value);
        self.hold(Held::Keyed {
            partition,
            start,
            key_end,
            end: self.keyed.len(),
        });
    }

    /// Holds a stateless job's record for the sink (copied as
    /// [`Outbox::hold_keyed`] copies).
    pub fn hold_result(&mut self, key: Option<&[u8]>, value: &[u8]) {
        let start = self.keyed.len();
        self.keyed.extend_from_slice(key.unwrap_or_default());
        let key_end = self.keyed.len();
        self.keyed.extend_from_slice(value);
        self.hold(Held::Result {
            start,
            key_end,
            end: self.keyed.len(),
            keyless: key.is_none(),
        });
    }

    /// Roughly what the held outputs cost in memory.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Everything held, in order, and the keyed records' bytes
    /// ([`Held::Keyed`]); the outbox is empty afterwards.
    pub fn take(&mut self) -> (Vec<Held>, Vec<u8>) {
        self.bytes = 0;
        (std::mem::take(&mut self.held), std::mem::take(&mut self.keyed))
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
        } => write_keyed(log, to, header, partition, &key, &value),
        Out::Watermark { .. } => Ok(()),
        Out::Result { key, value, .. } => write_result(log, to, header, key.as_deref(), &value),
        Out::Routed {
            to: target,
            key,
            value,
        } => {
            let topic = to.topics.routes.get(&target).ok_or_else(|| {
                crate::error::RuntimeError::Dataflow(format!(
                    "a route step writes to StreamTopic {target:?}, which the job file gives no Kafka topic for"
                ))
            })?;
            m.with_label_values(&["routed"]).inc();
            log.send(&Record {
                topic,
                partition: None,
                key: key.as_deref(),
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
            step,
        } => match &to.topics.dead_letter {
            Some(topic) => {
                m.with_label_values(&["dead_letter"]).inc();
                let (src_topic, src_partition, src_offset) = origin;
                let partition = src_partition.to_string();
                let offset = src_offset.to_string();
                let mut headers = vec![
                    (CHECKPOINT_HEADER, header.as_bytes()),
                    ("streamops-error-kind", kind.as_bytes()),
                    ("streamops-error", reason.as_bytes()),
                    ("streamops-source-topic", src_topic.as_bytes()),
                    ("streamops-source-partition", partition.as_bytes()),
                    ("streamops-source-offset", offset.as_bytes()),
                ];
                // A step that failed: its name and expression on their own.
                if let Some((name, expression)) = &step {
                    headers.push(("streamops-step", name.as_bytes()));
                    headers.push(("streamops-expression", expression.as_bytes()));
                }
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

/// Writes stage 1's keyed record for keyed partition `partition` to `log`
/// with `header`.
pub fn write_keyed<L: TaskLog + ?Sized>(
    log: &mut L,
    to: &Destinations<'_>,
    header: &str,
    partition: i32,
    key: &[u8],
    value: &[u8],
) -> crate::error::Result<()> {
    to.records_out.with_label_values(&["keyed"]).inc();
    log.send(&Record {
        topic: &to.topics.repartition,
        partition: Some(partition),
        key: Some(key),
        value,
        headers: &[(CHECKPOINT_HEADER, header.as_bytes())],
    })
}

/// A record for the sink (a window result, or a stateless job's record)
/// with `header`.
pub fn write_result<L: TaskLog + ?Sized>(
    log: &mut L,
    to: &Destinations<'_>,
    header: &str,
    key: Option<&[u8]>,
    value: &[u8],
) -> crate::error::Result<()> {
    to.records_out.with_label_values(&["result"]).inc();
    log.send(&Record {
        topic: &to.topics.sink,
        partition: None,
        key,
        value,
        headers: &[(CHECKPOINT_HEADER, header.as_bytes())],
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::fake_log::{Broker, FakeLog};
    use prometheus::Opts;

    #[test]
    fn a_step_that_failed_has_its_name_and_expression_in_headers_of_their_own() {
        let topics = crate::checkpoint::protocol::tests::topics();
        let records_out = IntCounterVec::new(Opts::new("records_out", "test"), &["kind"]).unwrap();
        let to = Destinations {
            topics: &topics,
            keyed_partitions: 1,
            records_out: &records_out,
        };
        let broker = Broker::with_topics(&[("dlq", 1), ("control", 1)]);
        let mut log = FakeLog::new(&broker, "t0", false, "control", 0);
        let letter = |step: Option<(String, String)>| Out::DeadLetter {
            key: None,
            value: b"{\"a\":1}".to_vec(),
            kind: "expression_error",
            reason:
                "spec.pipeline.steps[0] (ratio).map.r: expression `record.a / record.b` failed: no such key"
                    .into(),
            step,
        };
        write(
            &mut log,
            &to,
            "cp",
            letter(Some(("ratio".into(), "record.a / record.b".into()))),
            ("in", 0, 7),
        )
        .unwrap();
        write(&mut log, &to, "cp", letter(None), ("in", 0, 8)).unwrap();
        let written = broker.borrow().read_committed("dlq", 0, 0);
        let header = |i: usize, name: &str| {
            written[i]
                .1
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(written.len(), 2);
        assert_eq!(header(0, "streamops-step").as_deref(), Some("ratio"));
        assert_eq!(
            header(0, "streamops-expression").as_deref(),
            Some("record.a / record.b")
        );
        assert_eq!(
            header(0, "streamops-error-kind").as_deref(),
            Some("expression_error")
        );
        assert_eq!(header(0, "streamops-source-offset").as_deref(), Some("7"));
        assert_eq!(
            header(1, "streamops-step"),
            None,
            "only a step's dead letter names one"
        );
    }
}
