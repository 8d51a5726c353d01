//! One task = one source partition (stage 1) and the keyed partition with the
//! same number (stage 2), with their state. Pure with respect to Kafka: the
//! runner feeds records in and writes what comes out.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::wire::{self, DataRecord, WatermarkRecord, Wire};
use crate::codec::output::encode_result;
use crate::operator::keying::{KeyOutcome, KeyingStage};
use crate::operator::partitioner::partition_for;
use crate::operator::window_operator::WindowOperator;
use crate::operator::{Disposition, KeyedRecord, WindowResult};
use crate::plan::Plan;
use crate::state::StateBackend;
use crate::time::watermark::NO_WATERMARK;

/// A record for one of the task's output topics.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// Stage-1 output for keyed partition `partition`.
    Keyed {
        partition: i32,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Broadcast to every keyed partition.
    Watermark {
        value: Vec<u8>,
    },
    Result {
        key: Vec<u8>,
        value: Vec<u8>,
        is_final: bool,
    },
    Late {
        key: Option<Vec<u8>>,
        value: Vec<u8>,
    },
    DeadLetter {
        key: Option<Vec<u8>>,
        value: Vec<u8>,
        kind: &'static str,
        reason: String,
    },
}

/// Counters a task keeps for metrics and the fault tests' accounting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskCounters {
    pub source_records: u64,
    pub filtered: u64,
    pub dead_lettered: u64,
    pub keyed_records: u64,
    pub late: u64,
    pub results: u64,
    /// Keyed records already seen from their upstream (replays).
    pub duplicates_dropped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Upstream {
    pub watermark: i64,
    pub idle: bool,
    /// Largest source offset of this upstream processed here (-1: none).
    pub seen: i64,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            watermark: NO_WATERMARK,
            idle: false,
            seen: -1,
        }
    }
}

/// The task's state besides the window operator's (`task.json` in a snapshot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskMeta {
    pub task: u32,
    pub task_count: u32,
    pub checkpoint_id: u64,
    /// Next offset to read from the source partition (`None`: the job's `startFrom`).
    pub source_offset: Option<i64>,
    /// Next offset to read from the keyed partition (`None`: its beginning).
    pub keyed_offset: Option<i64>,
    /// Largest event time seen on the source partition.
    pub source_max_event_time: Option<i64>,
    pub upstream: Vec<Upstream>,
}

const META_FILE: &str = "task.json";
/// Dead-letter kind of a record whose event time is too far in the future.
pub const FUTURE_EVENT_TIME: &str = "future_event_time";
const STATE_DIR: &str = "state";

pub struct Task {
    pub meta: TaskMeta,
    plan: Arc<Plan>,
    keying: KeyingStage,
    keyed: KeyedRecord,
    op: WindowOperator,
    backend: Box<dyn StateBackend + Send>,
    results: Vec<WindowResult>,
    last_active_ms: i64,
    sent: Option<(i64, bool)>,
    buf: Vec<u8>,
    pub counters: TaskCounters,
}

impl Task {
    /// A task with empty state.
    pub fn new(
        task: u32,
        task_count: u32,
        plan: Arc<Plan>,
        backend: Box<dyn StateBackend + Send>,
        now_ms: i64,
    ) -> Task {
        let meta = TaskMeta {
            task,
            task_count,
            checkpoint_id: 0,
            source_offset: None,
            keyed_offset: None,
            source_max_event_time: None,
            upstream: vec![Upstream::default(); task_count as usize],
        };
        Task {
            keying: KeyingStage::new(plan.keying.clone()),
            op: WindowOperator::new(task, plan.window.clone()),
            plan,
            meta,
            keyed: KeyedRecord::default(),
            backend,
            results: Vec::new(),
            last_active_ms: now_ms,
            sent: None,
            buf: Vec::new(),
            counters: TaskCounters::default(),
        }
    }

    /// A task restored from the snapshot directory `dir` (as written by
    /// [`Task::snapshot`]) into `backend`.
    pub fn restore(
        dir: &Path,
        task_count: u32,
        plan: Arc<Plan>,
        mut backend: Box<dyn StateBackend + Send>,
        now_ms: i64,
    ) -> Result<Task> {
        let path = dir.join(META_FILE);
        let meta: TaskMeta = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?;
        if meta.task_count != task_count {
            bail!(
                "the snapshot of task {} was taken with {} source partitions, the job now has {}: moving keyed \
                 state between a different number of partitions is not supported; restore with the same partition \
                 count or start from empty state (spec.restore.allowEmptyState)",
                meta.task,
                meta.task_count,
                task_count
            );
        }
        backend
            .restore(&dir.join(STATE_DIR), &[meta.task])
            .with_context(|| format!("restoring the state of task {}", meta.task))?;
        let op = WindowOperator::restore(meta.task, plan.window.clone(), None, &*backend)
            .with_context(|| format!("restoring the window operator of task {}", meta.task))?;
        let mut t = Task::new(meta.task, task_count, plan, backend, now_ms);
        t.op = op;
        t.sent = None;
        t.meta = meta;
        Ok(t)
    }

    pub fn id(&self) -> u32 {
        self.meta.task
    }

    /// Live (window, key) entries of the task's window state.
    pub fn open_entries(&self) -> usize {
        self.op.open_entries()
    }

    /// The keyed partition's watermark.
    pub fn watermark(&self) -> i64 {
        self.op.watermark()
    }

    /// The source partition's own watermark (`max event time - outOfOrderness`).
    pub fn source_watermark(&self) -> i64 {
        self.meta
            .source_max_event_time
            .map_or(NO_WATERMARK, |m| m.saturating_sub(self.plan.out_of_orderness_ms))
    }

    /// Stage 1: one record of the source partition, at wall-clock time
    /// `now_ms` (idleness, and the bound on event times in the future).
    pub fn on_source(
        &mut self,
        offset: i64,
        key: Option<&[u8]>,
        value: &[u8],
        now_ms: i64,
        out: &mut Vec<Out>,
    ) {
        self.meta.source_offset = Some(offset + 1);
        self.counters.source_records += 1;
        self.last_active_ms = now_ms;
        match self.keying.key(value, &mut self.keyed) {
            Ok(KeyOutcome::Filtered) => self.counters.filtered += 1,
            Err(reason) => {
                self.counters.dead_lettered += 1;
                out.push(Out::DeadLetter {
                    key: key.map(<[u8]>::to_vec),
                    value: value.to_vec(),
                    kind: reason.kind(),
                    reason: reason.to_string(),
                });
            }
            Ok(KeyOutcome::Keyed)
                if self.keyed.event_time > now_ms.saturating_add(self.plan.max_future_skew_ms) =>
            {
                // Never moves the watermark: one wrong clock would make every
                // correct record after it late.
                self.counters.dead_lettered += 1;
                out.push(Out::DeadLetter {
                    key: key.map(<[u8]>::to_vec),
                    value: value.to_vec(),
                    kind: FUTURE_EVENT_TIME,
                    reason: format!(
                        "event time {} is {} ms ahead of the wall clock, beyond \
                         spec.source.eventTime.maxFutureSkew ({} ms)",
                        self.keyed.event_time,
                        self.keyed.event_time.saturating_sub(now_ms),
                        self.plan.max_future_skew_ms
                    ),
                });
            }
            Ok(KeyOutcome::Keyed) => {
                let t = self.keyed.event_time;
                self.meta.source_max_event_time =
                    Some(self.meta.source_max_event_time.map_or(t, |m| m.max(t)));
                let partition = partition_for(&self.keyed.group_key, self.meta.task_count) as i32;
                let rec = DataRecord {
                    upstream: self.meta.task,
                    source_offset: offset,
                    keyed: std::mem::take(&mut self.keyed),
                    source_key: key.map(<[u8]>::to_vec),
                    source_value: value.to_vec(),
                };
                wire::encode_data(&rec, &mut self.buf);
                out.push(Out::Keyed {
                    partition,
                    key: rec.keyed.group_key.clone(),
                    value: self.buf.clone(),
                });
                self.keyed = rec.keyed;
            }
        }
    }

    /// Stage 1: the watermark record to broadcast, if it changed since the
    /// last one (called once per checkpoint, before the marker).
    pub fn watermark_update(&mut self, now_ms: i64) -> Option<Out> {
        let idle = self
            .plan
            .idle_timeout_ms
            .is_some_and(|t| now_ms.saturating_sub(self.last_active_ms) >= t);
        let wm = self.source_watermark();
        if self.sent == Some((wm, idle)) || (wm == NO_WATERMARK && !idle) {
            return None;
        }
        self.sent = Some((wm, idle));
        Some(Out::Watermark {
            value: wire::encode_watermark(&WatermarkRecord {
                upstream: self.meta.task,
                watermark: wm,
                idle,
            }),
        })
    }

    /// Stage 2: one record of the keyed partition.
    pub fn on_keyed(&mut self, offset: i64, value: &[u8], out: &mut Vec<Out>) -> Result<()> {
        self.meta.keyed_offset = Some(offset + 1);
        let wire =
            wire::decode(value).with_context(|| format!("keyed partition {} offset {offset}", self.id()))?;
        let n = self.meta.upstream.len();
        match wire {
            Wire::Watermark(w) => {
                let Some(u) = self.meta.upstream.get_mut(w.upstream as usize) else {
                    bail!("watermark from task {} but the job has {n} tasks", w.upstream);
                };
                u.watermark = u.watermark.max(w.watermark);
                u.idle = w.idle;
                self.advance(out)
            }
            Wire::Data(d) => {
                let Some(u) = self.meta.upstream.get_mut(d.upstream as usize) else {
                    bail!("record from task {} but the job has {n} tasks", d.upstream);
                };
                if d.source_offset <= u.seen {
                    self.counters.duplicates_dropped += 1;
                    return Ok(());
                }
                u.seen = d.source_offset;
                u.idle = false;
                self.counters.keyed_records += 1;
                self.results.clear();
                let disposition = self.op.process(&d.keyed, &mut *self.backend, &mut self.results)?;
                if disposition == Disposition::Late {
                    self.counters.late += 1;
                    out.push(Out::Late {
                        key: d.source_key,
                        value: d.source_value,
                    });
                }
                self.emit(out);
                Ok(())
            }
        }
    }

    fn advance(&mut self, out: &mut Vec<Out>) -> Result<()> {
        let active = self
            .meta
            .upstream
            .iter()
            .filter(|u| !u.idle)
            .map(|u| u.watermark)
            .min();
        let Some(wm) = active else {
            return Ok(()); // every upstream idle: hold
        };
        if wm <= self.op.watermark() {
            return Ok(());
        }
        self.results.clear();
        self.op
            .advance_watermark(wm, &mut *self.backend, &mut self.results)?;
        self.emit(out);
        if self.op.needs_flush() {
            self.op.flush(&mut *self.backend)?;
        }
        Ok(())
    }

    fn emit(&mut self, out: &mut Vec<Out>) {
        for r in self.results.drain(..) {
            let (mut key, mut value) = (Vec::new(), Vec::new());
            encode_result(&r, &self.plan.names, &mut key, &mut value);
            self.counters.results += 1;
            out.push(Out::Result {
                key,
                value,
                is_final: r.firing.is_final(),
            });
        }
    }

    /// Writes the task's complete state to `dir` (created; must not exist).
    pub fn snapshot(&mut self, dir: &Path) -> Result<()> {
        self.op.flush(&mut *self.backend)?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        self.backend
            .snapshot(&dir.join(STATE_DIR))
            .with_context(|| format!("snapshotting the state of task {}", self.id()))?;
        std::fs::write(dir.join(META_FILE), serde_json::to_vec_pretty(&self.meta)?)
            .with_context(|| format!("writing {}", dir.join(META_FILE).display()))?;
        Ok(())
    }
}
