//! One task = one source partition (stage 1) and the keyed partition with the
//! same number (stage 2), with their state: the runtime's only driver of the
//! dataflow. Pure with respect to Kafka: the runner
//! ([`crate::pipeline::runner`]) feeds records in and writes what comes out,
//! and so does the in-memory [`super::harness`].

use crate::error::RuntimeError;
use crate::error::{Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::info;

use super::groups::GroupOperators;
use super::key_groups;
use super::keying::{KeyOutcome, KeyingStage, SinkKey};
use super::repartition::{self, UpstreamRef, WatermarkRecord, WireRef};
use super::steps::StepOutcome;
use super::window_operator::OperatorStats;
use super::{Disposition, KeyedRecord, WindowResult};
use crate::codec::output::encode_result;
use crate::dataflow::sources::{SourceRef, Sources};
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
    /// For the sink: a window result (keyed by its group key), or a record
    /// of a stateless job (its key by `spec.sink.key` or the source's).
    Result {
        key: Option<Vec<u8>>,
        value: Vec<u8>,
        is_final: bool,
    },
    Late {
        key: Option<Vec<u8>>,
        value: Vec<u8>,
    },
    /// A record a `route` step sent to StreamTopic `to`.
    Routed {
        to: String,
        key: Option<Vec<u8>>,
        value: Vec<u8>,
    },
    DeadLetter {
        key: Option<Vec<u8>>,
        value: Vec<u8>,
        kind: &'static str,
        reason: String,
        /// A step that failed on it: (step name, expression), written as
        /// headers of their own (`streamops-step`, `streamops-expression`).
        step: Option<(String, String)>,
    },
}

/// Where stage 1 puts its outputs. A keyed record is handed over borrowed
/// (the task reuses its buffers), so a caller that writes it on at once or
/// copies it into a buffer of its own allocates nothing per record; a
/// `Vec<Out>` takes it as an owned [`Out::Keyed`].
pub trait Outputs {
    /// A keyed record for keyed partition `partition` (its Kafka key and value).
    fn keyed(&mut self, partition: i32, key: &[u8], value: &[u8]);
    /// A stateless job's record for the sink.
    fn result(&mut self, key: Option<&[u8]>, value: &[u8]) {
        self.push(Out::Result {
            key: key.map(<[u8]>::to_vec),
            value: value.to_vec(),
            is_final: true,
        });
    }
    /// Any other output.
    fn push(&mut self, out: Out);
}

impl Outputs for Vec<Out> {
    fn keyed(&mut self, partition: i32, key: &[u8], value: &[u8]) {
        Vec::push(
            self,
            Out::Keyed {
                partition,
                key: key.to_vec(),
                value: value.to_vec(),
            },
        );
    }

    fn push(&mut self, out: Out) {
        Vec::push(self, out);
    }
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
    /// Results a `resultSteps` filter dropped.
    pub results_filtered: u64,
    /// Records a `route` step sent to its topic.
    pub routed: u64,
    /// Keyed records already seen from their upstream (replays).
    pub duplicates_dropped: u64,
}

/// How a task keeps its window state in memory. The default is what the
/// runner runs: an unbounded write-back cache, written to the backend at
/// checkpoints (and when the operator asks, [`WindowOperator::needs_flush`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateOptions {
    /// At most this many (window, key) entries in memory, the rest only in
    /// the backend ([`WindowOperator::with_cache_capacity`]); `None`:
    /// unbounded.
    pub cache_capacity: Option<usize>,
    /// Write the cache to the backend whenever windows fire
    /// ([`WindowOperator::with_flush_on_fire`]).
    pub flush_on_fire: bool,
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
    /// The source partition `source_offset` and `source_max_event_time`
    /// belong to (absent in snapshots of older runtimes: the task's
    /// partition in the positional layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceRef>,
    /// What the keyed partition knows of each upstream source partition, by
    /// [`crate::dataflow::sources::source_id`] (JSON object keys are decimal strings).
    #[serde(default)]
    pub upstreams: BTreeMap<u64, Upstream>,
    /// Older runtimes' `upstreams`, by task index in the positional layout;
    /// converted on restore.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstream: Vec<Upstream>,
    /// The job's key groups ([`key_groups`]); absent in snapshots of jobs
    /// deployed before key groups, which have one per task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_groups: Option<u32>,
    /// Taken drained: every keyed record the job's stage 1 wrote before its
    /// own snapshot of this savepoint had been applied here, so no keyed
    /// partition has records left for the groups it owned. Only such
    /// snapshots restore at another partition count.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
    /// Stage 1 stopped for the drain (a drained savepoint) with this id: the
    /// task reads no more of its source partition until the drain ends, and
    /// once this is committed its barrier goes to every keyed partition
    /// ([`Task::begin_drain`]). A task restored with it stays stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<String>,
    /// The drain barriers the keyed partition has applied, per drain id
    /// (the newest few drains).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub barriers: Vec<Barriers>,
}

/// The upstreams whose barrier of drain `id` a keyed partition applied:
/// everything they wrote before their stage 1 stopped is applied here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Barriers {
    pub id: String,
    pub from: std::collections::BTreeSet<u64>,
}

/// How many drains' barriers a task remembers (an aborted drain's barriers
/// may still arrive after a newer drain's).
const BARRIER_DRAINS: usize = 4;

impl TaskMeta {
    /// A task that has read nothing, of the job reading `sources`.
    fn fresh(task: u32, sources: &Sources) -> TaskMeta {
        TaskMeta {
            task,
            task_count: sources.len(),
            checkpoint_id: 0,
            source_offset: None,
            keyed_offset: None,
            source_max_event_time: None,
            source: sources.source_of(task).cloned(),
            upstreams: BTreeMap::new(),
            upstream: Vec::new(),
            key_groups: Some(sources.key_groups()),
            drained: false,
            drain: None,
            barriers: Vec::new(),
        }
    }

    /// The job's key groups as this snapshot records them.
    pub fn groups(&self) -> u32 {
        self.key_groups.unwrap_or(self.task_count).max(1)
    }
}

/// The task's own state in a snapshot directory.
pub const META_FILE: &str = "task.json";
/// Dead-letter kind of a record whose event time is too far in the future.
pub const FUTURE_EVENT_TIME: &str = "future_event_time";
/// Dead-letter kind of a record too large to pass through the repartition
/// topic.
pub const RECORD_TOO_LARGE: &str = "record_too_large";
/// The largest record the task's producers send: librdkafka's default
/// `message.max.bytes` (brokers accept 1 MiB + 12 bytes by default).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000;
/// Room left for a record's headers and framing.
const RECORD_OVERHEAD: usize = 1_024;
/// The backend's snapshot inside a task snapshot directory.
pub const STATE_DIR: &str = "state";

/// A restored task's meta in terms of the job's current `sources`:
/// upstreams of older snapshots keyed by source id, and the stage-1
/// position dropped when the task's partition was replaced by another
/// (the new partition starts at `source.startFrom`). A position of a
/// partition the job still reads at another task is refused: handing it
/// over would read one partition from another's offset.
pub fn relabel(mut meta: TaskMeta, sources: &Sources) -> Result<TaskMeta> {
    for (t, u) in std::mem::take(&mut meta.upstream).into_iter().enumerate() {
        let id = sources.id_of(t as u32).ok_or_else(|| {
            RuntimeError::Dataflow(format!(
                "the snapshot of task {} knows {} upstream tasks, the job has {}",
                meta.task,
                t + 1,
                sources.len()
            ))
        })?;
        meta.upstreams.insert(id, u);
    }
    let Some(now) = sources.source_of(meta.task).cloned() else {
        return Ok(meta); // the task-count check reports it
    };
    match meta.source.take() {
        None => {}
        Some(was) if was == now => {}
        Some(was) => {
            if let Some(other) = sources.task_of(&was.topic, was.partition) {
                return Err(RuntimeError::Dataflow(format!(
                    "the snapshot of task {} holds the position of {was}, which the job now reads at task {other}: \
                     the source layout of the job file is not the one the snapshot was taken with (was \
                     status.sourceLayout of the StreamJob lost?); refusing to read {now} from {was}'s offset",
                    meta.task
                )));
            }
            info!(
                task = meta.task,
                %was,
                %now,
                "the task's source partition was replaced: it starts at source.startFrom"
            );
            meta.source_offset = None;
            meta.source_max_event_time = None;
        }
    }
    meta.source = Some(now);
    Ok(meta)
}

/// The task's own state (`task.json`) of the snapshot at `dir`.
pub fn read_meta(dir: &Path) -> Result<TaskMeta> {
    let path = dir.join(META_FILE);
    serde_json::from_slice(&std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?)
        .with_context(|| format!("parsing {}", path.display()))
}

/// A snapshot restores only into a job with its number of key groups:
/// they decide where every key's state is.
fn same_key_groups(meta: &TaskMeta, sources: &Sources) -> Result<()> {
    if meta.groups() != sources.key_groups() {
        return Err(RuntimeError::Dataflow(format!(
            "the snapshot of task {} was taken with {} key groups, the job file says {}: the number of key groups \
             is fixed for the life of a job (status.keyGroups of the StreamJob)",
            meta.task,
            meta.groups(),
            sources.key_groups()
        )));
    }
    Ok(())
}

pub struct Task {
    pub meta: TaskMeta,
    sources: Arc<Sources>,
    /// [`crate::dataflow::sources::source_id`] of the task's source partition.
    own_id: u64,
    plan: Arc<Plan>,
    keying: KeyingStage,
    /// Stage 1's output record (its buffers reused).
    keyed: KeyedRecord,
    /// Stage 2's input record (its buffers reused).
    keyed_in: KeyedRecord,
    /// Stage 2: the window operators of the keyed partition's key groups
    /// (`None`: a stateless job, which has no stage 2).
    op: Option<GroupOperators>,
    backend: Box<dyn StateBackend + Send>,
    results: Vec<WindowResult>,
    last_active_ms: i64,
    sent: Option<(i64, bool)>,
    /// The drain recorded in `meta.drain` is committed: the next watermark
    /// update is the task's barrier ([`Task::drain_committed`]).
    barrier_due: bool,
    /// While this task drains: an upstream wrote data after its barrier
    /// (it resumed; the drain cannot complete).
    drain_broken: Option<u64>,
    buf: Vec<u8>,
    max_record_bytes: usize,
    /// The source has no more records ([`Task::end_input`]).
    ended: bool,
    pub counters: TaskCounters,
}

/// The watermark of a source that has ended: beyond every window, so each
/// fires, as Flink's final watermark at the end of a bounded input; far
/// enough below `i64::MAX` for window and lateness arithmetic.
pub const END_OF_INPUT: i64 = i64::MAX / 4;

impl Task {
    /// A task with empty state (`task` must be one of `sources`' tasks).
    pub fn new(
        task: u32,
        sources: Arc<Sources>,
        plan: Arc<Plan>,
        backend: Box<dyn StateBackend + Send>,
        now_ms: i64,
    ) -> Task {
        let meta = TaskMeta::fresh(task, &sources);
        let op = plan
            .window
            .clone()
            .map(|w| GroupOperators::new(sources.groups_of(task), sources.key_groups(), w));
        Task {
            own_id: sources.id_of(task).unwrap_or_default(),
            sources,
            keying: KeyingStage::new(plan.keying.clone()),
            op,
            plan,
            meta,
            keyed: KeyedRecord::default(),
            keyed_in: KeyedRecord::default(),
            backend,
            results: Vec::new(),
            last_active_ms: now_ms,
            ended: false,
            sent: None,
            barrier_due: false,
            drain_broken: None,
            buf: Vec::new(),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            counters: TaskCounters::default(),
        }
    }

    /// A task restored from the snapshot directory `dir` (as written by
    /// [`Task::snapshot`]) into `backend`, for the job reading `sources`.
    pub fn restore(
        dir: &Path,
        sources: Arc<Sources>,
        plan: Arc<Plan>,
        backend: Box<dyn StateBackend + Send>,
        now_ms: i64,
    ) -> Result<Task> {
        Self::restore_with(dir, sources, plan, backend, now_ms, true, StateOptions::default())
    }

    /// As [`Task::restore`], for a `backend` that already holds the
    /// snapshot's state (a RocksDB opened on it in place): only the task's
    /// own state (`task.json`) is read from `dir`.
    pub fn restore_opened(
        dir: &Path,
        sources: Arc<Sources>,
        plan: Arc<Plan>,
        backend: Box<dyn StateBackend + Send>,
        now_ms: i64,
    ) -> Result<Task> {
        Self::restore_with(
            dir,
            sources,
            plan,
            backend,
            now_ms,
            false,
            StateOptions::default(),
        )
    }

    /// [`Task::restore`] (`load_state`) or [`Task::restore_opened`]
    /// (`!load_state`) with `options` applied while the window state loads.
    pub fn restore_with(
        dir: &Path,
        sources: Arc<Sources>,
        plan: Arc<Plan>,
        mut backend: Box<dyn StateBackend + Send>,
        now_ms: i64,
        load_state: bool,
        options: StateOptions,
    ) -> Result<Task> {
        let meta = read_meta(dir)?;
        let task_count = sources.len();
        if meta.task_count != task_count {
            return Err(RuntimeError::Dataflow(format!(
                "the snapshot of task {} was taken with {} source partitions, the job now has {}: keyed state moves \
                 to another partition count only by a re-sharding restore from a drained savepoint of every task \
                 (Task::restore_resharded); restore with the same partition count or start from empty state \
                 (spec.restore.allowEmptyState)",
                meta.task, meta.task_count, task_count
            )));
        }
        same_key_groups(&meta, &sources)?;
        let mut meta = relabel(meta, &sources)?;
        meta.key_groups = Some(sources.key_groups());
        meta.drained = false;
        if load_state {
            let groups: Vec<u32> = sources.groups_of(meta.task).collect();
            backend
                .restore(&dir.join(STATE_DIR), &groups)
                .with_context(|| format!("restoring the state of task {}", meta.task))?;
        }
        Self::with_restored(meta, sources, plan, backend, now_ms, options)
    }

    /// The task `meta` describes, its window state read from `backend`
    /// (which holds its key groups).
    fn with_restored(
        meta: TaskMeta,
        sources: Arc<Sources>,
        plan: Arc<Plan>,
        backend: Box<dyn StateBackend + Send>,
        now_ms: i64,
        options: StateOptions,
    ) -> Result<Task> {
        let op = match plan.window.clone() {
            Some(window) => Some(
                GroupOperators::restore(
                    sources.groups_of(meta.task),
                    sources.key_groups(),
                    window,
                    options.cache_capacity,
                    &*backend,
                )
                .with_context(|| format!("restoring the window operators of task {}", meta.task))?
                .with_flush_on_fire(options.flush_on_fire),
            ),
            None => None,
        };
        let mut t = Task::new(meta.task, sources, plan, backend, now_ms);
        t.op = op;
        t.sent = None;
        // A drain recorded in a committed snapshot: its barrier may not have
        // been written (or committed) yet; sending it again is harmless.
        t.barrier_due = meta.drain.is_some();
        t.meta = meta;
        Ok(t)
    }

    /// Task `task` of a job whose partition count changed, restored from a
    /// drained savepoint taken at the old count: `old` holds the snapshot
    /// directory of every old task. The task takes its key groups from the
    /// old tasks that held them (whole groups, each group's windows and
    /// watermark with it), its stage-1 position from the old task that read
    /// its source partition (none for a partition new to the job), and the
    /// keyed partition's knowledge of each upstream merged over all old
    /// tasks: the largest source offset applied anywhere (the savepoint was
    /// drained, so nothing at or below it comes again) and the lowest
    /// watermark (firing late is safe, early is not).
    pub fn restore_resharded(
        task: u32,
        old: &BTreeMap<u32, std::path::PathBuf>,
        sources: Arc<Sources>,
        plan: Arc<Plan>,
        mut backend: Box<dyn StateBackend + Send>,
        now_ms: i64,
        options: StateOptions,
    ) -> Result<Task> {
        let mut metas = BTreeMap::new();
        for (&t, dir) in old {
            let meta = read_meta(dir)?;
            if meta.task != t {
                return Err(RuntimeError::Dataflow(format!(
                    "{} is the snapshot of task {}, not of task {t}",
                    dir.display(),
                    meta.task
                )));
            }
            same_key_groups(&meta, &sources)?;
            if !meta.drained {
                return Err(RuntimeError::Dataflow(format!(
                    "the snapshot of task {t} was not taken drained: keyed records may be left in its keyed \
                     partition for key groups that now belong to other tasks, so the job cannot restore from it at \
                     another partition count; take a savepoint for the rescale (the operator drains it)"
                )));
            }
            metas.insert(t, meta);
        }
        let old_count = old.len() as u32;
        if let Some(m) = metas.values().find(|m| m.task_count != old_count) {
            return Err(RuntimeError::Dataflow(format!(
                "the snapshot of task {} was taken with {} tasks, but {old_count} snapshots were given",
                m.task, m.task_count
            )));
        }
        let groups = sources.key_groups();
        let wanted = sources.groups_of(task);
        for h in key_groups::holders(&wanted, groups, old_count) {
            let held = key_groups::range(h, groups, old_count);
            let take: Vec<u32> = (wanted.start.max(held.start)..wanted.end.min(held.end)).collect();
            let dir = old.get(&h).ok_or_else(|| {
                RuntimeError::Dataflow(format!("no snapshot of task {h}, which held key groups {held:?}"))
            })?;
            backend.restore(&dir.join(STATE_DIR), &take).with_context(|| {
                format!("restoring key groups {take:?} of task {task} from task {h}'s snapshot")
            })?;
        }
        // Stage 1 and the keyed partition's position: the old task with the
        // same index (the source layout keeps each partition's task).
        let mut meta = match metas.get(&task) {
            Some(m) => relabel(m.clone(), &sources)?,
            None => TaskMeta::fresh(task, &sources),
        };
        let mut upstreams: BTreeMap<u64, Upstream> = BTreeMap::new();
        for m in metas.values() {
            let m = relabel(m.clone(), &sources)?;
            for (id, u) in m.upstreams {
                upstreams
                    .entry(id)
                    .and_modify(|merged| {
                        merged.seen = merged.seen.max(u.seen);
                        merged.watermark = merged.watermark.min(u.watermark);
                        merged.idle &= u.idle;
                    })
                    .or_insert(u);
            }
        }
        meta.upstreams = upstreams;
        meta.checkpoint_id = metas.values().map(|m| m.checkpoint_id).max().unwrap_or_default();
        meta.task_count = sources.len();
        meta.key_groups = Some(groups);
        meta.drained = false;
        meta.drain = None;
        meta.barriers.clear();
        Self::with_restored(meta, sources, plan, backend, now_ms, options)
    }

    /// Applies `options` to the window state (of a task with empty state; a
    /// restored task takes them in [`Task::restore_with`]).
    pub fn with_state_options(mut self, options: StateOptions) -> Self {
        self.op = self.op.map(|op| {
            op.with_cache_capacity(options.cache_capacity)
                .with_flush_on_fire(options.flush_on_fire)
        });
        self
    }

    /// The largest record the task may send (key, value and headers); a
    /// larger keyed record goes to the dead-letter topic instead.
    pub fn with_max_record_bytes(mut self, bytes: usize) -> Self {
        self.max_record_bytes = bytes;
        self
    }

    pub fn id(&self) -> u32 {
        self.meta.task
    }

    /// Live (window, key) entries of the task's window state.
    pub fn open_entries(&self) -> usize {
        self.op.as_ref().map_or(0, GroupOperators::open_entries)
    }

    /// (window, key) entries of the task's window state held in memory.
    pub fn cached_entries(&self) -> usize {
        self.op.as_ref().map_or(0, GroupOperators::cached_entries)
    }

    /// What the window operator did with the keyed records so far:
    /// `accepted + late_records + unassigned` is every keyed record applied.
    pub fn operator_stats(&self) -> OperatorStats {
        self.op.as_ref().map(GroupOperators::stats).unwrap_or_default()
    }

    /// The task's state backend.
    pub fn backend(&self) -> &dyn StateBackend {
        &*self.backend
    }

    /// The keyed partition's watermark (a stateless job has none).
    pub fn watermark(&self) -> i64 {
        self.op.as_ref().map_or(NO_WATERMARK, GroupOperators::watermark)
    }

    /// The source partition's own watermark (`max event time - outOfOrderness`).
    pub fn source_watermark(&self) -> i64 {
        if self.ended {
            return END_OF_INPUT;
        }
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
        out: &mut (impl Outputs + ?Sized),
    ) {
        if self.meta.drain.is_some() {
            // Stopped for a drain: not consumed (read again once it ends).
            return;
        }
        self.meta.source_offset = Some(offset + 1);
        self.counters.source_records += 1;
        self.last_active_ms = now_ms;
        match self.keying.key(value, &mut self.keyed) {
            Ok(KeyOutcome::Filtered) => self.counters.filtered += 1,
            Ok(KeyOutcome::Routed(target)) => {
                let to = self.plan.keying.steps.target(target);
                let written = self.keying.mapped().unwrap_or(value);
                let size = key.map_or(0, <[u8]>::len) + written.len();
                if let Some(letter) = too_large(self.max_record_bytes, key, value, size, to) {
                    self.counters.dead_lettered += 1;
                    out.push(letter);
                    return;
                }
                self.counters.routed += 1;
                out.push(Out::Routed {
                    to: to.to_owned(),
                    key: key.map(<[u8]>::to_vec),
                    value: written.to_vec(),
                });
            }
            Ok(KeyOutcome::Passed(sink_key)) => {
                let out_key = match sink_key {
                    SinkKey::Input => key,
                    SinkKey::Absent => None,
                    SinkKey::Computed => Some(self.keyed.group_key.as_slice()),
                };
                let written = self.keying.mapped().unwrap_or(value);
                let size = out_key.map_or(0, <[u8]>::len) + written.len();
                if let Some(letter) = too_large(self.max_record_bytes, key, value, size, "the sink") {
                    self.counters.dead_lettered += 1;
                    out.push(letter);
                    return;
                }
                self.counters.results += 1;
                out.result(out_key, written);
            }
            Err(reason) => {
                self.counters.dead_lettered += 1;
                out.push(Out::DeadLetter {
                    key: key.map(<[u8]>::to_vec),
                    value: value.to_vec(),
                    kind: reason.kind(),
                    reason: reason.to_string(),
                    step: reason.step(),
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
                    step: None,
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
                let partition = key_groups::partition_of(
                    &self.keyed.group_key,
                    self.sources.key_groups(),
                    self.meta.task_count,
                ) as i32;
                // What a `map` step made of the record goes on, if one did.
                repartition::encode_data_parts(
                    UpstreamRef::Source(self.own_id),
                    offset,
                    &self.keyed,
                    key,
                    self.keying.mapped().unwrap_or(value),
                    &mut self.buf,
                );
                // Never moves the watermark: it is not processed.
                let size = self.keyed.group_key.len() + self.buf.len();
                if let Some(letter) = too_large(self.max_record_bytes, key, value, size, "the keyed stage") {
                    self.counters.dead_lettered += 1;
                    out.push(letter);
                    return;
                }
                let t = self.keyed.event_time;
                self.meta.source_max_event_time =
                    Some(self.meta.source_max_event_time.map_or(t, |m| m.max(t)));
                out.keyed(partition, &self.keyed.group_key, &self.buf);
            }
        }
    }

    /// The source has ended (a bounded input: `streamops-runtime test`):
    /// from the next watermark update on, stage 1 announces
    /// [`END_OF_INPUT`], which closes every window downstream. Never used
    /// on Kafka, whose partitions do not end.
    pub fn end_input(&mut self) {
        self.ended = true;
    }

    /// Stops stage 1 for the drain `id` (a drained savepoint): the caller
    /// stops reading the source partition and checkpoints, which records
    /// the drain with everything stage 1 wrote; after that commit
    /// ([`Task::drain_committed`]) the next checkpoint sends the task's
    /// barrier to every keyed partition. Stage 1 stays stopped until
    /// [`Task::end_drain`], across restarts too: an upstream that wrote
    /// after its barrier would leave keyed records behind a drained
    /// keyed partition.
    pub fn begin_drain(&mut self, id: &str) {
        if self.meta.drain.as_deref() != Some(id) {
            self.meta.drain = Some(id.to_owned());
            self.barrier_due = false;
            self.drain_broken = None;
        }
    }

    /// The checkpoint recording the drain committed: the barrier is due.
    pub fn drain_committed(&mut self) {
        self.barrier_due = self.meta.drain.is_some();
    }

    /// Ends the drain (aborted, or the job resumes): stage 1 reads again.
    pub fn end_drain(&mut self) {
        self.meta.drain = None;
        self.barrier_due = false;
        self.drain_broken = None;
    }

    /// The drain stage 1 is stopped for.
    pub fn draining(&self) -> Option<&str> {
        self.meta.drain.as_deref()
    }

    /// The keyed partition applied the barrier of drain `id` from every
    /// source partition of the job: no upstream has anything left for it.
    pub fn drained_for(&self, id: &str) -> bool {
        self.meta
            .barriers
            .iter()
            .find(|b| b.id == id)
            .is_some_and(|b| self.sources.ids().iter().all(|u| b.from.contains(u)))
    }

    /// While draining: the upstream (source id) that wrote data after its
    /// barrier, if one did.
    pub fn drain_broken(&self) -> Option<u64> {
        self.drain_broken
    }

    /// Stage 1: the watermark record to broadcast, if it changed since the
    /// last one, or the drain barrier once due (called once per
    /// checkpoint, before the marker).
    pub fn watermark_update(&mut self, now_ms: i64) -> Option<Out> {
        let idle = self
            .plan
            .idle_timeout_ms
            .is_some_and(|t| now_ms.saturating_sub(self.last_active_ms) >= t);
        let wm = self.source_watermark();
        if self.barrier_due
            && let Some(id) = &self.meta.drain
        {
            self.barrier_due = false;
            self.sent = Some((wm, idle));
            return Some(Out::Watermark {
                value: repartition::encode_barrier(self.own_id, wm, idle, id),
            });
        }
        if self.sent == Some((wm, idle)) || (wm == NO_WATERMARK && !idle) {
            return None;
        }
        self.sent = Some((wm, idle));
        Some(Out::Watermark {
            value: repartition::encode_watermark(&WatermarkRecord {
                upstream: UpstreamRef::Source(self.own_id),
                watermark: wm,
                idle,
            }),
        })
    }

    /// Stage 2: one record of the keyed partition.
    pub fn on_keyed(&mut self, offset: i64, value: &[u8], out: &mut Vec<Out>) -> Result<()> {
        self.meta.keyed_offset = Some(offset + 1);
        let wire = repartition::decode_into(value, &mut self.keyed_in)
            .with_context(|| format!("keyed partition {} offset {offset}", self.meta.task))?;
        match wire {
            WireRef::Watermark(w) => {
                let u = self.upstream(w.upstream)?;
                u.watermark = u.watermark.max(w.watermark);
                u.idle = w.idle;
                self.advance(out)
            }
            WireRef::Barrier(w, id) => {
                let from = self.upstream_id(w.upstream)?;
                let u = self.meta.upstreams.entry(from).or_default();
                u.watermark = u.watermark.max(w.watermark);
                u.idle = w.idle;
                let barriers = &mut self.meta.barriers;
                match barriers.iter_mut().find(|b| b.id == id) {
                    Some(b) => {
                        b.from.insert(from);
                    }
                    None => {
                        barriers.push(Barriers {
                            id: id.to_owned(),
                            from: [from].into(),
                        });
                        let n = barriers.len();
                        barriers.drain(..n.saturating_sub(BARRIER_DRAINS));
                    }
                }
                self.advance(out)
            }
            WireRef::Data(d) => {
                if !self.meta.barriers.is_empty() {
                    self.check_after_barrier(d.upstream)?;
                }
                let u = self.upstream(d.upstream)?;
                if d.source_offset <= u.seen {
                    self.counters.duplicates_dropped += 1;
                    return Ok(());
                }
                u.seen = d.source_offset;
                u.idle = false;
                self.counters.keyed_records += 1;
                self.results.clear();
                let Some(op) = self.op.as_mut() else {
                    return Err(RuntimeError::Dataflow(format!(
                        "keyed partition {} offset {offset}: a data record, but the job is stateless (it writes \
                         none); the repartition topic holds records of an older version",
                        self.meta.task
                    )));
                };
                let disposition = op.process(&self.keyed_in, &mut *self.backend, &mut self.results)?;
                if disposition == Disposition::Late {
                    self.counters.late += 1;
                    out.push(Out::Late {
                        key: d.source_key.map(<[u8]>::to_vec),
                        value: d.source_value.to_vec(),
                    });
                }
                self.emit(out);
                Ok(())
            }
        }
    }

    /// What the keyed partition knows of `from` (created empty on its
    /// first record). Records of a partition the job no longer reads (left
    /// in the repartition topic by the version before) are kept apart from
    /// whichever partition took over its task.
    fn upstream(&mut self, from: UpstreamRef) -> Result<&mut Upstream> {
        let id = self.upstream_id(from)?;
        Ok(self.meta.upstreams.entry(id).or_default())
    }

    fn upstream_id(&self, from: UpstreamRef) -> Result<u64> {
        match from {
            UpstreamRef::Source(id) => Ok(id),
            UpstreamRef::Task(t) => self.sources.id_of(t).ok_or_else(|| {
                RuntimeError::Dataflow(format!(
                    "record from task {t} (written by an older runtime) but the job has {} tasks",
                    self.sources.len()
                ))
            }),
        }
    }

    /// While this task drains: data from an upstream after its barrier of
    /// the same drain means that upstream resumed, so the drain is broken.
    fn check_after_barrier(&mut self, from: UpstreamRef) -> Result<()> {
        let Some(id) = self.meta.drain.as_deref() else {
            return Ok(());
        };
        let from = self.upstream_id(from)?;
        if self
            .meta
            .barriers
            .iter()
            .any(|b| b.id == id && b.from.contains(&from))
        {
            self.drain_broken = Some(from);
        }
        Ok(())
    }

    /// The keyed partition's watermark follows the slowest source partition
    /// the job reads now (one never heard from holds it back).
    fn advance(&mut self, out: &mut Vec<Out>) -> Result<()> {
        let upstreams = &self.meta.upstreams;
        let active = self
            .sources
            .ids()
            .iter()
            .map(|id| upstreams.get(id).copied().unwrap_or_default())
            .filter(|u| !u.idle)
            .map(|u| u.watermark)
            .min();
        let Some(wm) = active else {
            return Ok(()); // every upstream idle: hold
        };
        let Some(op) = self.op.as_mut() else {
            return Ok(());
        };
        if wm <= op.watermark() {
            return Ok(());
        }
        self.results.clear();
        op.advance_watermark(wm, &mut *self.backend, &mut self.results)?;
        if op.needs_flush() {
            op.flush(&mut *self.backend)?;
        }
        self.emit(out);
        Ok(())
    }

    fn emit(&mut self, out: &mut Vec<Out>) {
        for r in self.results.drain(..) {
            let (mut key, mut value) = (Vec::new(), Vec::new());
            encode_result(&r, &self.plan.names, &mut key, &mut value);
            if !self.plan.result_steps.is_empty() {
                let mut mapped = Vec::new();
                match self.plan.result_steps.run_json(&value, &mut mapped) {
                    Ok(StepOutcome::Filtered) => {
                        self.counters.results_filtered += 1;
                        continue;
                    }
                    Ok(StepOutcome::Unchanged) => {}
                    Ok(StepOutcome::Mapped) => value = mapped,
                    // Refused when the plan is built (a result cannot route).
                    Ok(StepOutcome::Routed { .. }) => {
                        self.counters.dead_lettered += 1;
                        out.push(Out::DeadLetter {
                            key: Some(key),
                            value,
                            kind: "expression_error",
                            reason: "spec.pipeline.resultSteps: a result step cannot route".into(),
                            step: None,
                        });
                        continue;
                    }
                    Err(reason) => {
                        self.counters.dead_lettered += 1;
                        out.push(Out::DeadLetter {
                            key: Some(key),
                            value,
                            kind: reason.kind(),
                            reason: reason.to_string(),
                            step: reason.step(),
                        });
                        continue;
                    }
                }
            }
            self.counters.results += 1;
            out.push(Out::Result {
                key: Some(key),
                value,
                is_final: r.firing.is_final(),
            });
        }
    }

    /// Writes the task's complete state to `dir` (created; must not exist).
    pub fn snapshot(&mut self, dir: &Path) -> Result<()> {
        if let Some(op) = self.op.as_mut() {
            op.flush(&mut *self.backend)?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        self.backend
            .snapshot(&dir.join(STATE_DIR))
            .with_context(|| format!("snapshotting the state of task {}", self.id()))?;
        std::fs::write(dir.join(META_FILE), serde_json::to_vec_pretty(&self.meta)?)
            .with_context(|| format!("writing {}", dir.join(META_FILE).display()))?;
        Ok(())
    }
}

/// A dead letter when a record of `size` bytes on its way to `to` is
/// larger than a record may be (it would fail the transaction and
/// every retry of it); the source record (`key`, `value`) is copied
/// into it when it fits, and otherwise left to the source coordinates
/// of the dead letter's headers.
fn too_large(
    max_record_bytes: usize,
    key: Option<&[u8]>,
    value: &[u8],
    size: usize,
    to: &str,
) -> Option<Out> {
    let limit = max_record_bytes.saturating_sub(RECORD_OVERHEAD);
    if size <= limit {
        return None;
    }
    let source = key.map_or(0, <[u8]>::len) + value.len();
    let (copy, how) = if source <= limit {
        (true, "copied here")
    } else {
        (
            false,
            "not copied (too large for this topic too): read it at the source coordinates in the headers",
        )
    };
    Some(Out::DeadLetter {
        key: key.filter(|_| copy).map(<[u8]>::to_vec),
        value: if copy { value.to_vec() } else { Vec::new() },
        kind: RECORD_TOO_LARGE,
        step: None,
        reason: format!(
            "the record ({source} bytes, {size} bytes on its way to {to}) exceeds the {} bytes a record may have; \
             {how}",
            max_record_bytes
        ),
    })
}

#[cfg(test)]
mod tests {
    use streamops_crds::runtime_api::{JobTopics, SourceTopic};

    use super::*;
    use crate::dataflow::repartition::{DataRecord, Wire};
    use crate::dataflow::sources::source_id;
    use crate::state::memory::MemoryBackend;

    fn sources(list: &[(&str, i32)]) -> Arc<Sources> {
        let topics = JobTopics {
            source: list
                .iter()
                .map(|(t, p)| SourceTopic {
                    topic: (*t).into(),
                    partitions: *p,
                })
                .collect(),
            layout: Vec::new(),
            sink: "out".into(),
            late_events: None,
            dead_letter: None,
            routes: Default::default(),
            repartition: "r".into(),
            control: "c".into(),
        };
        Arc::new(Sources::new(&topics).unwrap())
    }

    fn plan() -> Arc<Plan> {
        let spec = serde_json::from_str(include_str!("../../tests/data/min-spec.json")).unwrap();
        Arc::new(crate::plan::compile(&spec).unwrap())
    }

    fn sref(topic: &str, partition: i32) -> SourceRef {
        SourceRef {
            topic: topic.into(),
            partition,
        }
    }

    fn meta(task: u32, source: Option<SourceRef>) -> TaskMeta {
        TaskMeta {
            task,
            task_count: 4,
            checkpoint_id: 9,
            source_offset: Some(500),
            keyed_offset: Some(70),
            source_max_event_time: Some(1_000),
            source,
            upstreams: BTreeMap::new(),
            upstream: Vec::new(),
            key_groups: None,
            drained: false,
            drain: None,
            barriers: Vec::new(),
        }
    }

    #[test]
    fn older_snapshots_are_read_by_position() {
        let s = sources(&[("a", 2), ("b", 2)]);
        let mut old = meta(1, None);
        old.upstream = (0..4)
            .map(|i| Upstream {
                seen: i * 10,
                ..Upstream::default()
            })
            .collect();
        let m = relabel(old, &s).unwrap();
        assert!(m.upstream.is_empty());
        assert_eq!(m.upstreams[&source_id("b", 0)].seen, 20);
        assert_eq!(m.upstreams[&source_id("a", 1)].seen, 10);
        assert_eq!(m.source, Some(sref("a", 1)));
        assert_eq!(m.source_offset, Some(500));
        // The snapshot's JSON keeps the upstreams by id.
        let json = serde_json::to_string(&m).unwrap();
        let back: TaskMeta = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn a_replaced_partition_starts_afresh_and_a_moved_one_is_refused() {
        // Tasks: 0 = a-0, 1 = b-0, 2 = b-1, 3 = d-0.
        let s = sources(&[("a", 1), ("b", 2), ("d", 1)]);
        let same = relabel(meta(1, Some(sref("b", 0))), &s).unwrap();
        assert_eq!(same.source_offset, Some(500));
        assert_eq!(same.source_max_event_time, Some(1_000));
        // Task 1 read c-0, a topic the job no longer reads: b-0 took its
        // task and starts at source.startFrom; the keyed half stays.
        let replaced = relabel(meta(1, Some(sref("c", 0))), &s).unwrap();
        assert_eq!(replaced.source_offset, None);
        assert_eq!(replaced.source_max_event_time, None);
        assert_eq!(replaced.source, Some(sref("b", 0)));
        assert_eq!(replaced.keyed_offset, Some(70));
        // Task 1 read d-0, which the job reads at task 3 now: the layout
        // is not the snapshot's, and guessing would mix up offsets.
        let err = relabel(meta(1, Some(sref("d", 0))), &s).unwrap_err().to_string();
        assert!(
            err.contains("d-0") && err.contains("task 3") && err.contains("sourceLayout"),
            "{err}"
        );
    }

    /// The keyed stage of task 0, whose partition a-0 replaced c-0: records
    /// c-0 left in the repartition topic and a-0's own are told apart.
    #[test]
    fn upstreams_are_told_apart_by_partition_not_by_task() {
        let s = sources(&[("a", 1), ("b", 1)]);
        let mut keyed = Task::new(0, s.clone(), plan(), Box::new(MemoryBackend::new()), 0);
        let mut stage1 = Task::new(0, s, plan(), Box::new(MemoryBackend::new()), 0);
        // A key of keyed partition 0 (the keyed stage refuses others).
        let mut out = Vec::new();
        for user in ["u", "v", "w", "x", "y", "z"] {
            out.clear();
            let record = format!(r#"{{"k": "{user}", "ts": 1500}}"#);
            stage1.on_source(0, None, record.as_bytes(), 10_000, &mut out);
            if matches!(out[..], [Out::Keyed { partition: 0, .. }]) {
                break;
            }
        }
        let [
            Out::Keyed {
                value, partition: 0, ..
            },
        ] = &out[..]
        else {
            panic!("one keyed record for partition 0: {out:?}");
        };
        let Ok(Wire::Data(mut rec)) = repartition::decode(value) else {
            panic!("a data record");
        };
        assert_eq!(rec.upstream, UpstreamRef::Source(source_id("a", 0)));
        let mut feed = |rec: &DataRecord, offset: i64| {
            let mut buf = Vec::new();
            repartition::encode_data(rec, &mut buf);
            keyed.on_keyed(offset, &buf, &mut Vec::new()).unwrap();
        };
        // c-0 at source offset 100, then a-0 at offset 0 (a new partition):
        // both count; replaying a-0's offset 0 is a duplicate.
        let from_c = DataRecord {
            upstream: UpstreamRef::Source(source_id("c", 0)),
            source_offset: 100,
            ..rec.clone()
        };
        feed(&from_c, 0);
        feed(&rec, 1);
        feed(&rec, 2);
        rec.upstream = UpstreamRef::Task(1); // an older runtime's b-0
        feed(&rec, 3);
        assert_eq!(keyed.counters.keyed_records, 3);
        assert_eq!(keyed.counters.duplicates_dropped, 1);
        // The watermark follows the partitions read now; c-0's is ignored.
        let mut wm = |upstream, watermark, offset| {
            let w = repartition::encode_watermark(&WatermarkRecord {
                upstream,
                watermark,
                idle: false,
            });
            keyed.on_keyed(offset, &w, &mut Vec::new()).unwrap();
            keyed.watermark()
        };
        assert_eq!(wm(UpstreamRef::Source(source_id("c", 0)), 9_000, 4), NO_WATERMARK);
        assert_eq!(wm(UpstreamRef::Source(source_id("a", 0)), 5_000, 5), NO_WATERMARK);
        assert_eq!(wm(UpstreamRef::Source(source_id("b", 0)), 3_000, 6), 3_000);
    }

    #[test]
    fn a_drain_stops_stage_1_and_its_barrier_follows_the_commit() {
        let s = sources(&[("a", 2)]);
        let mut up = [
            Task::new(0, s.clone(), plan(), Box::new(MemoryBackend::new()), 0),
            Task::new(1, s.clone(), plan(), Box::new(MemoryBackend::new()), 0),
        ];
        let mut keyed = Task::new(0, s.clone(), plan(), Box::new(MemoryBackend::new()), 0);
        let mut out = Vec::new();
        up[0].on_source(0, None, br#"{"k": "u", "ts": 1500}"#, 10_000, &mut out);
        assert_eq!(up[0].meta.source_offset, Some(1));
        up[0].begin_drain("sp-1");
        // Stopped: a source record is not consumed (read again later).
        out.clear();
        up[0].on_source(1, None, br#"{"k": "v", "ts": 1600}"#, 10_000, &mut out);
        assert!(out.is_empty());
        assert_eq!(up[0].meta.source_offset, Some(1));
        // The checkpoint that records the drain carries no barrier: only
        // once that is committed may the barrier go out.
        let barrier = |t: &mut Task| match t.watermark_update(10_000) {
            Some(Out::Watermark { value }) => match repartition::decode(&value).unwrap() {
                Wire::Barrier(_, id) => Some((id, value)),
                _ => None,
            },
            _ => None,
        };
        assert_eq!(barrier(&mut up[0]), None);
        up[0].drain_committed();
        let (id, b0) = barrier(&mut up[0]).expect("the barrier after the commit");
        assert_eq!(id, "sp-1");
        assert_eq!(barrier(&mut up[0]), None, "once");
        // A restored task that was draining sends its barrier again.
        let dir = tempfile::tempdir().unwrap();
        up[0].snapshot(&dir.path().join("snap")).unwrap();
        let mut again = Task::restore(
            &dir.path().join("snap"),
            s.clone(),
            plan(),
            Box::new(MemoryBackend::new()),
            0,
        )
        .unwrap();
        assert_eq!(again.draining(), Some("sp-1"));
        assert_eq!(barrier(&mut again).map(|(id, _)| id), Some("sp-1".to_string()));
        // The keyed partition is drained once every upstream's barrier of
        // that drain arrived; another drain's barrier does not count.
        keyed.begin_drain("sp-1");
        keyed.on_keyed(0, &b0, &mut Vec::new()).unwrap();
        assert!(!keyed.drained_for("sp-1"));
        let other = repartition::encode_barrier(source_id("a", 1), 0, false, "sp-0");
        keyed.on_keyed(1, &other, &mut Vec::new()).unwrap();
        assert!(!keyed.drained_for("sp-1"));
        up[1].begin_drain("sp-1");
        up[1].drain_committed();
        let (_, b1) = barrier(&mut up[1]).unwrap();
        keyed.on_keyed(2, &b1, &mut Vec::new()).unwrap();
        assert!(keyed.drained_for("sp-1"));
        assert_eq!(keyed.drain_broken(), None);
        // Data from an upstream after its barrier: it resumed, the drain
        // is broken.
        let data = DataRecord {
            upstream: UpstreamRef::Source(source_id("a", 1)),
            source_offset: 7,
            keyed: KeyedRecord {
                group_key: br#"["u"]"#.to_vec(),
                event_time: 1_000,
                inputs: Vec::new(),
                values: Vec::new(),
            },
            source_key: None,
            source_value: b"{}".to_vec(),
        };
        let mut buf = Vec::new();
        repartition::encode_data(&data, &mut buf);
        let _ = keyed.on_keyed(3, &buf, &mut Vec::new());
        assert_eq!(keyed.drain_broken(), Some(source_id("a", 1)));
        keyed.end_drain();
        assert_eq!(keyed.drain_broken(), None);
        assert_eq!(keyed.draining(), None);
    }

    #[test]
    fn a_record_too_large_for_the_repartition_topic_is_a_dead_letter_copied_or_by_reference() {
        let s = sources(&[("a", 1)]);
        let mut task =
            Task::new(0, s, plan(), Box::new(MemoryBackend::new()), 0).with_max_record_bytes(4_096);
        let record =
            |pad: usize, ts: i64| format!(r#"{{"k": "u", "ts": {ts}, "pad": "{}"}}"#, "x".repeat(pad));
        let mut out = Vec::new();
        // Fits on its own but not with the keyed stage's envelope: a copy.
        let near = record(3_020, 9_000);
        task.on_source(0, Some(b"key"), near.as_bytes(), 10_000, &mut out);
        // Larger than any record may be: by reference.
        let huge = record(5_000, 9_000);
        task.on_source(1, Some(b"key"), huge.as_bytes(), 10_000, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        for (o, copied) in out.iter().zip([true, false]) {
            let Out::DeadLetter {
                key,
                value,
                kind,
                reason,
                ..
            } = o
            else {
                panic!("a dead letter: {o:?}");
            };
            assert_eq!(*kind, RECORD_TOO_LARGE);
            assert!(reason.contains("4096"), "{reason}");
            if copied {
                assert_eq!(
                    (key.as_deref(), value.as_slice()),
                    (Some(&b"key"[..]), near.as_bytes())
                );
            } else {
                assert!(key.is_none() && value.is_empty(), "by reference: {o:?}");
                assert!(reason.contains("source coordinates"), "{reason}");
            }
        }
        // Neither moved the watermark; the stream goes on.
        assert_eq!(task.source_watermark(), NO_WATERMARK);
        out.clear();
        task.on_source(2, None, record(10, 5_000).as_bytes(), 10_000, &mut out);
        assert!(matches!(out[..], [Out::Keyed { .. }]), "{out:?}");
        assert_eq!(task.meta.source_offset, Some(3));
        assert_eq!(task.counters.dead_lettered, 2);
    }

    #[test]
    fn a_stateless_record_grown_too_large_by_its_map_is_a_dead_letter_and_the_stream_goes_on() {
        let spec: streamops_crds::StreamJobSpec = serde_json::from_value(serde_json::json!({
            "source": {"topics": ["a"]},
            "pipeline": {"steps": [
                {"name": "grow", "map": {"p": "record.p + record.p + record.p"}},
                {"name": "aside", "route": [{"when": "size(record.p) > 6000", "to": "big"}]}
            ]},
            "sink": {"topic": "out"}
        }))
        .unwrap();
        let plan = Arc::new(crate::plan::compile(&spec).unwrap());
        let mut task = Task::new(0, sources(&[("a", 1)]), plan, Box::new(MemoryBackend::new()), 0)
            .with_max_record_bytes(4_096);
        let record = |pad: usize| format!(r#"{{"p": "{}"}}"#, "x".repeat(pad));
        let mut out = Vec::new();
        // 1,000 bytes in, 3,000 out: fits.
        task.on_source(0, None, record(1_000).as_bytes(), 0, &mut out);
        // 1,500 in, 4,500 to the sink: too large, the source record copied.
        task.on_source(1, Some(b"k"), record(1_500).as_bytes(), 0, &mut out);
        // 2,500 in, 7,500 routed: too large for the route too.
        task.on_source(2, None, record(2_500).as_bytes(), 0, &mut out);
        assert!(
            matches!(&out[0], Out::Result { value, .. } if value.len() > 3_000),
            "{:?}",
            out[0]
        );
        let Out::DeadLetter {
            key,
            value,
            kind,
            reason,
            ..
        } = &out[1]
        else {
            panic!("{:?}", out[1]);
        };
        assert_eq!(
            (key.as_deref(), value.as_slice(), *kind),
            (Some(&b"k"[..]), record(1_500).as_bytes(), RECORD_TOO_LARGE)
        );
        assert!(reason.contains("on its way to the sink"), "{reason}");
        let Out::DeadLetter { reason, .. } = &out[2] else {
            panic!("{:?}", out[2]);
        };
        assert!(reason.contains("on its way to big"), "{reason}");
        assert_eq!(
            (
                task.counters.results,
                task.counters.routed,
                task.counters.dead_lettered
            ),
            (1, 0, 2)
        );
        assert_eq!(task.meta.source_offset, Some(3));
    }
}
