//! The dataflow without Kafka: N [`Task`]s connected through in-memory logs
//! the way the runner ([`crate::pipeline::runner`]) connects them through
//! Kafka. The model and property tests and the benchmark run the pods' code
//! path through it.
//!
//! What it keeps of the runner:
//!
//! - Task `t` reads source partition `t` (a [`Log`] the caller fills) with
//!   stage 1 and keyed partition `t` of the repartition log with stage 2;
//!   stage 1 of every task writes keyed records to the keyed partition of
//!   their group key.
//! - A checkpoint of a task (the runner's, in its order): stage 1's
//!   watermark record to every keyed partition (only when it changed, as
//!   [`Task::watermark_update`] decides), the task's snapshot, then the
//!   commit.
//! - Exactly once: everything a task writes (keyed records, watermark
//!   records, results, late records, dead letters) is in its open
//!   transaction and becomes visible at its checkpoint's commit, appended in
//!   commit order; stage 2 reads only what is committed (read_committed).
//!   At least once: everything is visible as soon as it is written.
//! - A restart of a task aborts its open transaction and restores it from
//!   its last checkpoint through the runner's restore code
//!   ([`Task::restore_with`], RocksDB opened in place on a copy of the
//!   snapshot as the runner opens the downloaded one); it then reads its
//!   source and keyed partitions on from the snapshot's offsets. A task with
//!   no checkpoint starts with empty state from the beginning of both.
//!
//! What it leaves out: checkpoint storage (`checkpoint::store`: the snapshot
//! stays in a local directory), markers in a control topic (the harness
//! keeps each task's last checkpoint itself), Kafka's offsets of aborted
//! records (aborted records never reach a log here, so offsets count
//! committed records only) and the runner's scheduling (when to poll which
//! partition and when to checkpoint is the caller's choice).
//!
//! A checkpoint may skip the state snapshot ([`Harness::checkpoint`] with
//! `state = false`), which the runner never does: the dataflow's outputs
//! are the same, but such a checkpoint cannot be restored, and restarting a
//! task whose last checkpoint skipped it is refused.

use crate::error::RuntimeError;
use crate::error::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use streamops_crds::job::ProcessingGuarantee;

use super::task::{Out, Outputs, STATE_DIR, StateOptions, Task};
use super::window_operator::OperatorStats;
use crate::dataflow::sources::Sources;
use crate::plan::Plan;
use crate::state::StateBackend;
use crate::state::memory::MemoryBackend;
use crate::state::rocks::{RocksBackend, RocksOptions};

/// Key of watermark records in the repartition log (the runner's).
const WATERMARK_KEY: &[u8] = b"watermark";

/// An append-only log of records (optional key, value): a source partition
/// or a keyed partition. Records before the last restorable position of a
/// keyed partition are dropped ([`Log::truncate_before`]); offsets stay.
#[derive(Debug, Clone, Default)]
pub struct Log {
    /// Offset of the first record held.
    base: u64,
    /// Key and value bytes of the records held, back to back.
    bytes: Vec<u8>,
    /// End of each record in `bytes`.
    ends: Vec<usize>,
    /// Length of each record's key (`u32::MAX`: no key).
    key_lens: Vec<u32>,
}

const NO_KEY: u32 = u32::MAX;

impl Log {
    pub fn new() -> Log {
        Log::default()
    }

    /// A log of key-less records whose values lie back to back in `bytes`,
    /// record `i` ending at `ends[i]` (the benchmark's input, not copied).
    pub fn from_values(bytes: Vec<u8>, ends: Vec<usize>) -> Result<Log> {
        let mut start = 0;
        for (i, &end) in ends.iter().enumerate() {
            if end < start || end > bytes.len() {
                return Err(RuntimeError::Dataflow(format!(
                    "record {i} ends at {end}, outside {start}..={}",
                    bytes.len()
                )));
            }
            start = end;
        }
        let key_lens = vec![NO_KEY; ends.len()];
        Ok(Log {
            base: 0,
            bytes,
            ends,
            key_lens,
        })
    }

    /// Appends a record; keys of `u32::MAX` bytes or more are refused.
    pub fn push(&mut self, key: Option<&[u8]>, value: &[u8]) -> Result<()> {
        let key_len = match key {
            Some(k) => u32::try_from(k.len())
                .ok()
                .filter(|&n| n != NO_KEY)
                .ok_or_else(|| {
                    RuntimeError::Dataflow(format!("a key of {} bytes is too large for the log", k.len()))
                })?,
            None => NO_KEY,
        };
        if let Some(k) = key {
            self.bytes.extend_from_slice(k);
        }
        self.bytes.extend_from_slice(value);
        self.ends.push(self.bytes.len());
        self.key_lens.push(key_len);
        Ok(())
    }

    /// The offset the next record gets.
    pub fn end_offset(&self) -> u64 {
        self.base + self.ends.len() as u64
    }

    /// The record at `offset` (`None`: past the end or dropped).
    pub fn get(&self, offset: u64) -> Option<(Option<&[u8]>, &[u8])> {
        let i = usize::try_from(offset.checked_sub(self.base)?).ok()?;
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        let record = &self.bytes[start..end];
        Some(match self.key_lens[i] {
            NO_KEY => (None, record),
            n => {
                let (key, value) = record.split_at(n as usize);
                (Some(key), value)
            }
        })
    }

    /// Drops the records before `offset` (no longer readable).
    pub fn truncate_before(&mut self, offset: u64) {
        let n = (offset.saturating_sub(self.base) as usize).min(self.ends.len());
        if n == 0 {
            return;
        }
        let cut = self.ends[n - 1];
        self.bytes.drain(..cut);
        self.ends.drain(..n);
        for end in &mut self.ends {
            *end -= cut;
        }
        self.key_lens.drain(..n);
        self.base += n as u64;
    }

    /// Appends every record of `other` (whose offsets are ignored), leaving
    /// it empty with its buffers kept. Into a log holding no record the
    /// buffers are swapped: nothing is copied.
    pub fn append_from(&mut self, other: &mut Log) {
        if self.ends.is_empty() {
            std::mem::swap(&mut self.bytes, &mut other.bytes);
            std::mem::swap(&mut self.ends, &mut other.ends);
            std::mem::swap(&mut self.key_lens, &mut other.key_lens);
        } else {
            let shift = self.bytes.len();
            self.bytes.extend_from_slice(&other.bytes);
            self.ends.extend(other.ends.iter().map(|end| end + shift));
            self.key_lens.extend_from_slice(&other.key_lens);
        }
        other.clear();
    }

    /// Drops every record held (offsets go on from the end).
    fn clear(&mut self) {
        self.base += self.ends.len() as u64;
        self.bytes.clear();
        self.ends.clear();
        self.key_lens.clear();
    }
}

/// Which stage of a task read the record that produced an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Stage 1, from the task's source partition.
    Source,
    /// Stage 2, from the task's keyed partition.
    Keyed,
}

/// A result, late record or dead letter, with the task and the input
/// record (stage and offset) it came from: the runner's dead letters carry
/// the source coordinates in their headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Emitted {
    pub task: u32,
    pub stage: Stage,
    pub offset: i64,
    pub out: Out,
}

/// Where the tasks' state lives.
pub trait Backends {
    /// A fresh, empty backend for task `task`.
    fn open(&mut self, task: u32) -> Result<Box<dyn StateBackend + Send>>;

    /// Task `task` restored from the snapshot directory `snapshot` (written
    /// by [`Task::snapshot`]; not changed): by default loaded into a fresh
    /// backend, as the runner restores the memory backend.
    fn restore(
        &mut self,
        task: u32,
        snapshot: &Path,
        sources: Arc<Sources>,
        plan: Arc<Plan>,
        options: StateOptions,
        now_ms: i64,
    ) -> Result<Task> {
        let backend = self.open(task)?;
        Task::restore_with(snapshot, sources, plan, backend, now_ms, true, options)
    }
}

/// Any `FnMut(task) -> backend` provides fresh backends; restores load the
/// snapshot into a fresh one.
impl<F> Backends for F
where
    F: FnMut(u32) -> Result<Box<dyn StateBackend + Send>>,
{
    fn open(&mut self, task: u32) -> Result<Box<dyn StateBackend + Send>> {
        self(task)
    }
}

/// In-memory state for every task.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryBackends;

impl Backends for MemoryBackends {
    fn open(&mut self, _task: u32) -> Result<Box<dyn StateBackend + Send>> {
        Ok(Box::new(MemoryBackend::new()))
    }
}

/// A RocksDB per task under `dir`, each open of a task in a directory of
/// its own. A restore opens a copy of the snapshot in place, as the runner
/// opens the snapshot it downloaded.
#[derive(Debug, Clone)]
pub struct RocksBackends {
    dir: PathBuf,
    options: RocksOptions,
    opened: u64,
}

impl RocksBackends {
    pub fn new(dir: &Path, options: RocksOptions) -> RocksBackends {
        RocksBackends {
            dir: dir.to_path_buf(),
            options,
            opened: 0,
        }
    }

    fn next_path(&mut self, task: u32) -> PathBuf {
        self.opened += 1;
        self.dir.join(format!("task-{task}-{}", self.opened))
    }
}

impl Backends for RocksBackends {
    fn open(&mut self, task: u32) -> Result<Box<dyn StateBackend + Send>> {
        let path = self.next_path(task);
        let db = RocksBackend::open(&path, &self.options)
            .with_context(|| format!("opening RocksDB for task {task} at {}", path.display()))?;
        Ok(Box::new(db))
    }

    fn restore(
        &mut self,
        task: u32,
        snapshot: &Path,
        sources: Arc<Sources>,
        plan: Arc<Plan>,
        options: StateOptions,
        now_ms: i64,
    ) -> Result<Task> {
        let path = self.next_path(task);
        let download = path.with_extension("download");
        copy_dir(snapshot, &download)?;
        let db = RocksBackend::open_snapshot(&download.join(STATE_DIR), &path, &self.options)
            .with_context(|| format!("opening the restored state of task {task} at {}", path.display()))?;
        let restored = Task::restore_with(&download, sources, plan, Box::new(db), now_ms, false, options);
        std::fs::remove_dir_all(&download).with_context(|| format!("removing {}", download.display()))?;
        restored
    }
}

/// Copies directory `from` to `to` (which must not exist), recursively.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry.with_context(|| format!("reading {}", from.display()))?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {} to {}", entry.path().display(), target.display()))?;
        }
    }
    Ok(())
}

/// How the harness runs its tasks.
#[derive(Debug, Clone)]
pub struct HarnessConfig {
    /// Tasks = source partitions = keyed partitions.
    pub tasks: u32,
    pub guarantee: ProcessingGuarantee,
    pub state: StateOptions,
    /// Where checkpoints keep their snapshots (`task-<t>/checkpoint-<id>`).
    pub dir: PathBuf,
    /// The job's key groups (`None`: one per task, as jobs deployed before
    /// key groups).
    pub key_groups: Option<u32>,
}

/// A task's last checkpoint: what a restart restores.
#[derive(Debug, Clone)]
struct Checkpointed {
    id: u64,
    /// The snapshot directory (`None`: the checkpoint skipped the state).
    snapshot: Option<PathBuf>,
}

struct Slot {
    task: Task,
    /// Keyed and watermark records of the open transaction (exactly once),
    /// by keyed partition (as long as the harness has partitions, once the
    /// task wrote).
    open_keyed: Vec<Log>,
    /// Outputs of the open transaction (exactly once).
    open_out: Vec<Emitted>,
    last: Option<Checkpointed>,
}

/// Stage 1's outputs of one source record: keyed records straight into
/// `logs` (the keyed partitions, or the open transaction's), the others to
/// `other`.
struct Stage1<'a> {
    task: u32,
    logs: &'a mut [Log],
    other: &'a mut Vec<Out>,
    /// The first keyed record that could not be written.
    error: Option<RuntimeError>,
}

impl Outputs for Stage1<'_> {
    fn keyed(&mut self, partition: i32, key: &[u8], value: &[u8]) {
        if self.error.is_none() {
            self.error = write_keyed(self.logs, self.task, partition, key, value).err();
        }
    }

    fn push(&mut self, out: Out) {
        self.other.push(out);
    }
}

/// Appends task `task`'s keyed record to keyed partition `partition` of `logs`.
fn write_keyed(logs: &mut [Log], task: u32, partition: i32, key: &[u8], value: &[u8]) -> Result<()> {
    match usize::try_from(partition).ok().and_then(|q| logs.get_mut(q)) {
        Some(log) => log.push(Some(key), value),
        None => Err(RuntimeError::Dataflow(format!(
            "task {task} wrote to keyed partition {partition}"
        ))),
    }
}

impl Slot {
    /// `task` with nothing open and no checkpoint yet.
    fn new(task: Task) -> Slot {
        Slot {
            task,
            open_keyed: Vec::new(),
            open_out: Vec::new(),
            last: None,
        }
    }
}

/// N tasks and their logs; see the module documentation.
pub struct Harness {
    plan: Arc<Plan>,
    sources: Arc<Sources>,
    config: HarnessConfig,
    backends: Box<dyn Backends>,
    slots: Vec<Slot>,
    source: Vec<Log>,
    keyed: Vec<Log>,
    committed: Vec<Emitted>,
    scratch: Vec<Out>,
    /// Drained savepoints taken so far.
    savepoints: u32,
}

impl Harness {
    /// `config.tasks` tasks with empty state reading one source topic's
    /// partitions (`source`, positional layout), at wall-clock time `now_ms`.
    pub fn new(
        plan: Arc<Plan>,
        config: HarnessConfig,
        mut backends: Box<dyn Backends>,
        now_ms: i64,
    ) -> Result<Harness> {
        let n = config.tasks;
        if n == 0 || n > i32::MAX as u32 {
            return Err(RuntimeError::Dataflow(format!(
                "a job has 1..={} tasks, not {n}",
                i32::MAX
            )));
        }
        let sources = Arc::new(Sources::positional("source", n as i32).with_key_groups(config.key_groups));
        let slots = (0..n)
            .map(|t| {
                let backend = backends.open(t)?;
                Ok(Slot::new(
                    Task::new(t, sources.clone(), plan.clone(), backend, now_ms)
                        .with_state_options(config.state),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Harness {
            plan,
            sources,
            backends,
            slots,
            source: vec![Log::new(); n as usize],
            keyed: vec![Log::new(); n as usize],
            committed: Vec::new(),
            scratch: Vec::new(),
            savepoints: 0,
            config,
        })
    }

    pub fn task_count(&self) -> u32 {
        self.config.tasks
    }

    /// Task `t`'s source partition has ended ([`Task::end_input`]).
    pub fn end_input(&mut self, t: u32) -> Result<()> {
        self.slot_mut(t)?.task.end_input();
        Ok(())
    }

    /// Task `t`.
    pub fn task(&self, t: u32) -> Result<&Task> {
        Ok(&self.slot(t)?.task)
    }

    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.slots.iter().map(|s| &s.task)
    }

    fn slot(&self, t: u32) -> Result<&Slot> {
        self.slots.get(t as usize).ok_or_else(|| {
            RuntimeError::Dataflow(format!("no task {t}: the harness has {}", self.slots.len()))
        })
    }

    fn slot_mut(&mut self, t: u32) -> Result<&mut Slot> {
        let n = self.slots.len();
        self.slots
            .get_mut(t as usize)
            .ok_or_else(|| RuntimeError::Dataflow(format!("no task {t}: the harness has {n}")))
    }

    /// Source partition `t`, to append input to.
    pub fn source_mut(&mut self, t: u32) -> Result<&mut Log> {
        let n = self.source.len();
        self.source
            .get_mut(t as usize)
            .ok_or_else(|| RuntimeError::Dataflow(format!("no source partition {t}: the harness has {n}")))
    }

    /// Appends a record to source partition `t`.
    pub fn append(&mut self, t: u32, key: Option<&[u8]>, value: &[u8]) -> Result<()> {
        self.source_mut(t)?.push(key, value)
    }

    /// Stage 1 of task `t`: reads up to `max` records of its source
    /// partition from its position on, at wall-clock time `now_ms`; returns
    /// how many it read.
    pub fn poll_source(&mut self, t: u32, max: usize, now_ms: i64) -> Result<usize> {
        let exactly_once = self.exactly_once();
        let slot = self
            .slots
            .get_mut(t as usize)
            .ok_or_else(|| RuntimeError::Dataflow(format!("no task {t}")))?;
        let log = &self.source[t as usize];
        let from = position(slot.task.meta.source_offset, "source", t)?;
        if slot.open_keyed.len() < self.keyed.len() {
            slot.open_keyed.resize(self.keyed.len(), Log::new());
        }
        let mut read = 0;
        while read < max {
            let offset = from + read as u64;
            let Some((key, value)) = log.get(offset) else {
                break;
            };
            let offset = offset as i64;
            let mut out = Stage1 {
                task: t,
                logs: if exactly_once {
                    &mut slot.open_keyed[..]
                } else {
                    &mut self.keyed[..]
                },
                other: &mut self.scratch,
                error: None,
            };
            slot.task.on_source(offset, key, value, now_ms, &mut out);
            if let Some(e) = out.error {
                return Err(e);
            }
            read += 1;
            for out in self.scratch.drain(..) {
                match out {
                    Out::Keyed {
                        partition,
                        key,
                        value,
                    } => {
                        let logs = if exactly_once {
                            &mut slot.open_keyed[..]
                        } else {
                            &mut self.keyed[..]
                        };
                        write_keyed(logs, t, partition, &key, &value)?;
                    }
                    Out::Watermark { .. } => {
                        return Err(RuntimeError::Dataflow(format!(
                            "stage 1 of task {t} sent a watermark outside a checkpoint"
                        )));
                    }
                    out => {
                        let e = Emitted {
                            task: t,
                            stage: Stage::Source,
                            offset,
                            out,
                        };
                        if exactly_once {
                            slot.open_out.push(e);
                        } else {
                            self.committed.push(e);
                        }
                    }
                }
            }
        }
        Ok(read)
    }

    /// Stage 2 of task `t`: reads up to `max` visible records of its keyed
    /// partition from its position on; returns how many it read.
    pub fn poll_keyed(&mut self, t: u32, max: usize) -> Result<usize> {
        let exactly_once = self.exactly_once();
        let slot = self
            .slots
            .get_mut(t as usize)
            .ok_or_else(|| RuntimeError::Dataflow(format!("no task {t}")))?;
        let log = &self.keyed[t as usize];
        let from = position(slot.task.meta.keyed_offset, "keyed", t)?;
        let mut read = 0;
        while read < max {
            let offset = from + read as u64;
            let Some((_, value)) = log.get(offset) else {
                if offset < log.base {
                    return Err(RuntimeError::Dataflow(format!(
                        "task {t} reads keyed offset {offset}, dropped (the log starts at {})",
                        log.base
                    )));
                }
                break;
            };
            let offset = offset as i64;
            slot.task.on_keyed(offset, value, &mut self.scratch)?;
            read += 1;
            for out in self.scratch.drain(..) {
                if matches!(out, Out::Keyed { .. } | Out::Watermark { .. }) {
                    return Err(RuntimeError::Dataflow(format!(
                        "stage 2 of task {t} wrote to the repartition log: {out:?}"
                    )));
                }
                let e = Emitted {
                    task: t,
                    stage: Stage::Keyed,
                    offset,
                    out,
                };
                if exactly_once {
                    slot.open_out.push(e);
                } else {
                    self.committed.push(e);
                }
            }
        }
        Ok(read)
    }

    /// Every task reads everything it can, stage 1 then stage 2, without a
    /// checkpoint (exactly once, stage 2 sees only committed records).
    pub fn poll_all(&mut self, now_ms: i64) -> Result<()> {
        for t in 0..self.config.tasks {
            self.poll_source(t, usize::MAX, now_ms)?;
        }
        for t in 0..self.config.tasks {
            self.poll_keyed(t, usize::MAX)?;
        }
        Ok(())
    }

    /// A checkpoint of task `t` at wall-clock time `now_ms`, as the runner
    /// takes it: stage 1's watermark to every keyed partition, the snapshot
    /// (skipped with `!state`: see the module documentation), the commit.
    pub fn checkpoint(&mut self, t: u32, now_ms: i64, state: bool) -> Result<()> {
        let exactly_once = self.exactly_once();
        let n = self.config.tasks;
        let dir = self.config.dir.join(format!("task-{t}"));
        let slot = self
            .slots
            .get_mut(t as usize)
            .ok_or_else(|| RuntimeError::Dataflow(format!("no task {t}")))?;
        if let Some(w) = slot.task.watermark_update(now_ms) {
            let Out::Watermark { value } = w else {
                return Err(RuntimeError::Dataflow(format!(
                    "task {t}: a watermark update that is no watermark: {w:?}"
                )));
            };
            for q in 0..n {
                if exactly_once {
                    if slot.open_keyed.len() < n as usize {
                        slot.open_keyed.resize(n as usize, Log::new());
                    }
                    slot.open_keyed[q as usize].push(Some(WATERMARK_KEY), &value)?;
                } else {
                    self.keyed[q as usize].push(Some(WATERMARK_KEY), &value)?;
                }
            }
        }
        let id = slot.task.meta.checkpoint_id + 1;
        slot.task.meta.checkpoint_id = id;
        let snapshot = if state {
            let path = dir.join(format!("checkpoint-{id}"));
            if path.exists() {
                std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
            }
            slot.task
                .snapshot(&path)
                .with_context(|| format!("checkpoint {id} of task {t}"))?;
            Some(path)
        } else {
            None
        };
        // Keyed records before the checkpoint's position are never read
        // again (dropped before the commit appends, so nothing is moved).
        let keyed = slot.task.meta.keyed_offset.unwrap_or(0).max(0) as u64;
        self.keyed[t as usize].truncate_before(keyed);
        // The commit: the open transaction becomes visible.
        for (log, open) in self.keyed.iter_mut().zip(&mut slot.open_keyed) {
            log.append_from(open);
        }
        self.committed.append(&mut slot.open_out);
        // Retention: only the last checkpoint is restored.
        let previous = slot.last.replace(Checkpointed { id, snapshot });
        if let Some(old) = previous.and_then(|c| c.snapshot) {
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        Ok(())
    }

    /// A checkpoint of every task, in task order (the runner's scheduled
    /// checkpoint of a process owning all tasks).
    pub fn checkpoint_all(&mut self, now_ms: i64, state: bool) -> Result<()> {
        for t in 0..self.config.tasks {
            self.checkpoint(t, now_ms, state)?;
        }
        Ok(())
    }

    /// Task `t` crashes and restarts at wall-clock time `now_ms`: its open
    /// transaction is aborted and it is restored from its last checkpoint
    /// (empty from the beginning without one).
    pub fn restart(&mut self, t: u32, now_ms: i64) -> Result<()> {
        let (sources, plan, options) = (self.sources.clone(), self.plan.clone(), self.config.state);
        let last = self.slot(t)?.last.clone();
        let task = match &last {
            None => Task::new(t, sources, plan, self.backends.open(t)?, now_ms).with_state_options(options),
            Some(Checkpointed { id, snapshot: None }) => {
                return Err(RuntimeError::Dataflow(format!(
                    "task {t} cannot restart: its last checkpoint ({id}) skipped the state, and restoring an older one \
                 would repeat committed output"
                )));
            }
            Some(Checkpointed {
                id,
                snapshot: Some(dir),
            }) => self
                .backends
                .restore(t, dir, sources, plan, options, now_ms)
                .with_context(|| format!("restoring task {t} from checkpoint {id}"))?,
        };
        let slot = self.slot_mut(t)?;
        slot.task = task;
        slot.open_keyed.iter_mut().for_each(Log::clear);
        slot.open_out.clear();
        Ok(())
    }

    /// Every task restarts (the process owning them all crashed).
    pub fn restart_all(&mut self, now_ms: i64) -> Result<()> {
        for t in 0..self.config.tasks {
            self.restart(t, now_ms)?;
        }
        Ok(())
    }

    /// A drained savepoint of every task (exactly once), as a rescale takes
    /// it: every task stops stage 1 and commits what it wrote, then sends
    /// its barrier to every keyed partition; every keyed partition is read
    /// until it applied every upstream's barrier, then every task takes its
    /// snapshot, marked drained, and commits. Returns each task's snapshot, copied under
    /// `savepoint-<n>/task-<t>` (checkpoint retention does not touch it).
    pub fn savepoint_drained(&mut self, now_ms: i64) -> Result<std::collections::BTreeMap<u32, PathBuf>> {
        if !self.exactly_once() {
            return Err(RuntimeError::Dataflow(
                "a drained savepoint is taken exactly once".to_string(),
            ));
        }
        // As the pods drain: stage 1 stops and commits, then its barrier
        // goes to every keyed partition, and each keyed partition is read
        // until it applied every upstream's barrier.
        let id = format!("drain-{}", self.savepoints);
        for slot in &mut self.slots {
            slot.task.begin_drain(&id);
        }
        self.checkpoint_all(now_ms, true)?;
        for slot in &mut self.slots {
            slot.task.drain_committed();
        }
        self.checkpoint_all(now_ms, true)?;
        for t in 0..self.config.tasks {
            self.poll_keyed(t, usize::MAX)?;
            let task = &self.slots[t as usize].task;
            if !task.drained_for(&id) {
                return Err(RuntimeError::Dataflow(format!(
                    "task {t}: keyed partition read to its end without every upstream's barrier of {id}"
                )));
            }
        }
        for slot in &mut self.slots {
            slot.task.meta.drained = true;
        }
        let taken = self.checkpoint_all(now_ms, true);
        for slot in &mut self.slots {
            slot.task.meta.drained = false;
            slot.task.end_drain();
        }
        taken?;
        let dir = self.config.dir.join(format!("savepoint-{}", self.savepoints));
        self.savepoints += 1;
        let mut out = std::collections::BTreeMap::new();
        for (t, slot) in self.slots.iter().enumerate() {
            let t = t as u32;
            let end = self.keyed[t as usize].end_offset();
            if slot.task.meta.keyed_offset.unwrap_or(0).max(0) as u64 != end {
                return Err(RuntimeError::Dataflow(format!(
                    "task {t}: keyed partition not drained (position {:?}, end {end})",
                    slot.task.meta.keyed_offset
                )));
            }
            let Some(Checkpointed {
                snapshot: Some(snapshot),
                ..
            }) = &slot.last
            else {
                return Err(RuntimeError::Dataflow(format!(
                    "task {t}: no snapshot in the savepoint"
                )));
            };
            let to = dir.join(format!("task-{t}"));
            copy_dir(snapshot, &to)?;
            out.insert(t, to);
        }
        Ok(out)
    }

    /// The job restarts at `tasks` tasks (source partitions; more than
    /// before: a grown topic) from the drained savepoint `savepoint`, each
    /// task taking its key groups from the old tasks that held them
    /// ([`Task::restore_resharded`]). New source and keyed partitions start
    /// empty; every task then checkpoints, so a restart restores the new
    /// layout.
    pub fn reshard(
        &mut self,
        tasks: u32,
        savepoint: &std::collections::BTreeMap<u32, PathBuf>,
        now_ms: i64,
    ) -> Result<()> {
        if tasks < self.config.tasks || tasks > i32::MAX as u32 {
            return Err(RuntimeError::Dataflow(format!(
                "source partitions only grow: {} -> {tasks}",
                self.config.tasks
            )));
        }
        let sources = Arc::new(
            Sources::positional("source", tasks as i32).with_key_groups(Some(self.sources.key_groups())),
        );
        let mut slots = Vec::with_capacity(tasks as usize);
        for t in 0..tasks {
            let backend = self.backends.open(t)?;
            let task = Task::restore_resharded(
                t,
                savepoint,
                sources.clone(),
                self.plan.clone(),
                backend,
                now_ms,
                self.config.state,
            )
            .with_context(|| format!("re-sharding task {t}"))?;
            slots.push(Slot::new(task));
        }
        self.slots = slots;
        self.sources = sources;
        self.config.tasks = tasks;
        self.source.resize(tasks as usize, Log::new());
        self.keyed.resize(tasks as usize, Log::new());
        self.checkpoint_all(now_ms, true)
    }

    /// Committed outputs so far, in commit order (exactly once) or as
    /// written (at least once).
    pub fn committed(&self) -> &[Emitted] {
        &self.committed
    }

    /// Takes the committed outputs so far.
    pub fn take_committed(&mut self) -> Vec<Emitted> {
        std::mem::take(&mut self.committed)
    }

    /// Stats summed over every task's window operator.
    pub fn operator_stats(&self) -> OperatorStats {
        let mut s = OperatorStats::default();
        for t in self.tasks() {
            s += t.operator_stats();
        }
        s
    }

    /// Live (window, key) entries over all tasks, in memory or spilled.
    pub fn open_entries(&self) -> usize {
        self.tasks().map(Task::open_entries).sum()
    }

    /// (window, key) entries held in memory over all tasks.
    pub fn cached_entries(&self) -> usize {
        self.tasks().map(Task::cached_entries).sum()
    }

    fn exactly_once(&self) -> bool {
        self.config.guarantee == ProcessingGuarantee::ExactlyOnce
    }
}

/// A task's next offset to read (`None`: the partition's beginning).
fn position(offset: Option<i64>, what: &str, t: u32) -> Result<u64> {
    u64::try_from(offset.unwrap_or(0))
        .map_err(|_| RuntimeError::Dataflow(format!("task {t}: negative {what} offset {offset:?}")))
}
