//! The pipeline loop: Kafka in, tasks, Kafka out, one checkpoint per task
//! per interval through [`crate::checkpoint::protocol`] (exactly once: one
//! transaction per task per checkpoint; at least once: outputs written as
//! they come and acknowledged before each checkpoint's marker).
//!
//! The loop, per turn: serve the admin API's commands (savepoint, stop,
//! resume, delete a savepoint); poll records for up to 100 ms and hand each
//! to its task, whose outputs are held for the checkpoint's transaction
//! (exactly once) or written at once (at least once); then checkpoint every
//! task when the interval is up, or only the tasks whose window fired
//! ([`Runner::commit_fired`]) or whose held outputs fill their share of
//! `--output-buffer-bytes` ([`Runner::commit_full`]). At start, every task
//! is restored by the protocol (fence, last committed marker, state) and
//! its read positions are checked against its partitions. Any failure
//! ends the process: on restart the protocol's restore is the only
//! recovery path.

use crate::error::RuntimeError;
use crate::error::{Context as _, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tracing::{debug, info, warn};

use super::crash::CrashPoints;
use super::job::{JobExt, JobFile};
use super::load::{LoadTracker, PartitionLoad};
use super::offsets::{self, Decision};
use super::shared::{MAX_OFFSET_RESETS, RuntimeState, SavepointState, Shared};
use crate::checkpoint::marker;
use crate::checkpoint::outputs::{Destinations, Outbox};
use crate::checkpoint::protocol::{
    self, Context, Io, Opening, Request, RestoreRequest, RestoreSource, Shape,
};
use crate::checkpoint::store::CheckpointStore;
use crate::dataflow::sources::Sources;
use crate::dataflow::task::{Out, STATE_DIR, Task};
use crate::kafka::consumer::{OffsetsClient, TaskConsumer, task_consumer};
use crate::kafka::producer::{KafkaTaskLog, LogConfig};
use crate::kafka::settings::KafkaSettings;
use crate::kafka::{kerr, transaction};
use crate::plan::Plan;
use crate::state::StateBackend;
use crate::state::memory::MemoryBackend;
use crate::state::rocks::{RocksBackend, RocksOptions};
use streamops_crds::job::{OffsetOutOfRange, ProcessingGuarantee};
use streamops_crds::runtime_api::OffsetReset;

pub use crate::checkpoint::protocol::restore_source;

pub const DEFAULT_STORAGE: &str = "file:///var/lib/streamops/checkpoints";
/// The heartbeat's limit is at least this (liveness: a stuck loop restarts).
const STALL_LIMIT_MIN_MS: u64 = 60_000;
/// How often lag is computed (and the consumer's statistics arrive).
const LAG_INTERVAL: Duration = Duration::from_secs(5);
/// How long after a window fired its task commits (see
/// [`Runner::commit_fired`]).
const FIRE_COMMIT_DELAY: Duration = Duration::from_millis(50);
/// Default timeout of one Kafka request.
pub const DEFAULT_KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    Rocksdb,
    Memory,
}

pub struct RunConfig {
    pub job: JobFile,
    pub tasks: Vec<u32>,
    pub kafka: KafkaSettings,
    pub state_dir: PathBuf,
    pub backend: BackendKind,
    pub crash: CrashPoints,
    /// Timeout of Kafka requests (flush, commit, metadata).
    pub kafka_timeout: Duration,
    /// Exactly once: bytes of outputs held in memory until their
    /// checkpoint's transaction, all tasks together; a task whose share is
    /// full checkpoints early.
    pub output_buffer_bytes: usize,
}

/// Default of `--output-buffer-bytes`.
pub const DEFAULT_OUTPUT_BUFFER_BYTES: usize = 64 << 20;

/// One task of this process: the dataflow task, its log and its open
/// checkpoint.
struct Slot {
    task: Task,
    log: KafkaTaskLog,
    /// Exactly once: the open checkpoint's outputs, in order.
    outbox: Outbox,
    source_topic: String,
    source_partition: i32,
    /// Manifests of the last committed checkpoints (newest last).
    committed: Vec<String>,
    /// Instance id of the state backend (names its SSTs in storage).
    db: String,
    /// Id of the checkpoint the next commit will be (in every output's
    /// header).
    open_id: u64,
    /// When the open checkpoint first got a final window result (exactly
    /// once only: see [`Runner::commit_fired`]).
    fired_at: Option<Instant>,
    /// The task already committed early since the last scheduled checkpoint.
    committed_early: bool,
    /// Newest Kafka timestamp of a source record read here: the lag signal
    /// of a job that reads no event time (a stateless job).
    newest_record_ms: Option<i64>,
}

impl Slot {
    /// Opens the next checkpoint: its id, which every output carries. Ids
    /// rise with wall time (and always by at least one), so ids of different
    /// tasks and pods compare: the operator tells whether a new version
    /// committed anything after a savepoint by comparing them. Ids also act
    /// as the storage's fencing epoch ([`crate::checkpoint::retention`]).
    fn begin(&mut self) {
        self.open_id = (self.task.meta.checkpoint_id + 1).max(now_ms().max(0) as u64);
    }

    fn header(&self, instance: &str) -> String {
        marker::header_value(self.task.id(), self.open_id, instance)
    }
}

/// Makes the tasks of this process: state backends in `state_dir`, named
/// by the process instance.
struct Tasks {
    backend: BackendKind,
    state_dir: PathBuf,
    instance: String,
    sources: Arc<Sources>,
    plan: Arc<Plan>,
}

impl Tasks {
    /// A fresh state backend for task `task` and its instance id.
    fn backend(&self, task: u32) -> Result<(Box<dyn StateBackend + Send>, String)> {
        let db = format!("{}-{task}", self.instance);
        match self.backend {
            BackendKind::Memory => Ok((Box::new(MemoryBackend::new()), db)),
            BackendKind::Rocksdb => {
                // Stale databases of earlier processes in this pod are useless:
                // state always comes from the checkpoint.
                let prefix = format!("task-{task}-");
                if let Ok(entries) = std::fs::read_dir(&self.state_dir) {
                    for e in entries.flatten() {
                        if e.file_name().to_string_lossy().starts_with(&prefix) {
                            let _ = std::fs::remove_dir_all(e.path());
                        }
                    }
                }
                let path = self.db_path(task);
                let b = RocksBackend::open(&path, &RocksOptions::default())
                    .with_context(|| format!("opening RocksDB at {}", path.display()))?;
                Ok((Box::new(b), db))
            }
        }
    }

    fn db_path(&self, task: u32) -> PathBuf {
        self.state_dir.join(format!("task-{task}-{}", self.instance))
    }

    /// Task `t` with empty state, restored from the snapshot downloaded to
    /// a directory, or re-sharded from the snapshots of a savepoint taken at
    /// another task count. RocksDB opens a snapshot in place (its SST files
    /// keep their names, so the next checkpoint references what is already
    /// stored); the memory backend loads it; re-sharding copies the task's
    /// key groups into the fresh backend.
    fn open(&self, t: u32, opening: Opening<'_>, backend: Box<dyn StateBackend + Send>) -> Result<Task> {
        let dir = match opening {
            Opening::Empty => {
                return Ok(Task::new(
                    t,
                    self.sources.clone(),
                    self.plan.clone(),
                    backend,
                    now_ms(),
                ));
            }
            Opening::Resharded(old) => {
                return Task::restore_resharded(
                    t,
                    old,
                    self.sources.clone(),
                    self.plan.clone(),
                    backend,
                    now_ms(),
                    Default::default(),
                );
            }
            Opening::Snapshot(dir) => dir,
        };
        match self.backend {
            BackendKind::Memory => {
                Task::restore(dir, self.sources.clone(), self.plan.clone(), backend, now_ms())
            }
            BackendKind::Rocksdb => {
                drop(backend);
                let path = self.db_path(t);
                let db = RocksBackend::open_snapshot(&dir.join(STATE_DIR), &path, &RocksOptions::default())
                    .with_context(|| {
                    format!("opening the restored state of task {t} at {}", path.display())
                })?;
                Task::restore_opened(
                    dir,
                    self.sources.clone(),
                    self.plan.clone(),
                    Box::new(db),
                    now_ms(),
                )
            }
        }
    }
}

pub struct Runner {
    job: JobFile,
    sources: Arc<Sources>,
    tasks: Tasks,
    kafka: KafkaSettings,
    consumer: TaskConsumer,
    offsets: Arc<OffsetsClient>,
    slots: BTreeMap<u32, Slot>,
    store: CheckpointStore,
    shared: Arc<Shared>,
    crash: CrashPoints,
    instance: String,
    interval: Duration,
    guarantee: ProcessingGuarantee,
    txn_timeout_ms: u64,
    timeout: Duration,
    stopped: bool,
    /// The drained savepoint in progress ([`Runner::begin_drain`]).
    drain: Option<Drain>,
    out: Vec<Out>,
    output_buffer_bytes: usize,
    /// The event-time lag and rates `/v1/status` reports.
    load: LoadTracker,
}

/// A drained savepoint in progress: stage 1 of every task stopped and its
/// barrier sent; the savepoint is taken once every task's keyed partition
/// applied the barrier of every source partition of the job.
struct Drain {
    id: String,
    stop: bool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What every checkpoint of this process shares (borrowed piecewise, so the
/// slots and the store stay free to borrow mutably).
fn context<'a>(
    job: &'a JobFile,
    instance: &'a str,
    shared: &'a Shared,
    guarantee: ProcessingGuarantee,
) -> Context<'a> {
    Context {
        job_uid: &job.uid,
        generation: job.generation,
        instance,
        to: Destinations {
            topics: &job.topics,
            keyed_partitions: job.task_count(),
            records_out: &shared.metrics.records_out,
        },
        transactional: guarantee == ProcessingGuarantee::ExactlyOnce,
    }
}

impl Runner {
    pub fn start(cfg: RunConfig, shared: Arc<Shared>, rt: Handle) -> Result<Runner> {
        let RunConfig {
            job,
            tasks,
            kafka,
            state_dir,
            backend,
            crash,
            kafka_timeout,
            output_buffer_bytes,
        } = cfg;
        let spec = job.spec.clone().defaulted();
        let plan = Arc::new(crate::plan::compile(&spec).context("compiling the job")?);
        let interval = Duration::from_millis(
            spec.checkpoint
                .as_ref()
                .and_then(|c| c.interval.as_ref())
                .map_or(10_000, |d| d.as_millis()),
        );
        let storage = spec
            .checkpoint
            .as_ref()
            .and_then(|c| c.storage.clone())
            .unwrap_or_else(|| DEFAULT_STORAGE.to_string());
        let guarantee = spec
            .checkpoint
            .as_ref()
            .and_then(|c| c.guarantee)
            .unwrap_or_default();
        let store = CheckpointStore::open(&storage, rt.clone())?.owned_by(&job.uid);
        let instance = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        std::fs::create_dir_all(&state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
        // At least once, transactions only fence predecessors at start: they
        // never stay open for an interval.
        let txn_timeout_ms = match guarantee {
            ProcessingGuarantee::ExactlyOnce => transaction::timeout_for(&kafka, &spec, &rt, kafka_timeout)?,
            ProcessingGuarantee::AtLeastOnce => transaction::FENCE_TRANSACTION_TIMEOUT_MS,
        };
        let consumer = task_consumer(
            &kafka,
            &job.group_id(),
            &format!("streamops-runtime-{instance}"),
            LAG_INTERVAL,
        )?;
        let offsets = Arc::new(OffsetsClient::new(
            &kafka,
            &format!("streamops-runtime-{instance}-offsets"),
            kafka_timeout,
        )?);
        info!(job = %job.name, generation = job.generation, ?tasks, instance, ?guarantee, txn_timeout_ms, "starting");
        let sources = Arc::new(job.sources()?);
        let mut runner = Runner {
            tasks: Tasks {
                backend,
                state_dir,
                instance: instance.clone(),
                sources: sources.clone(),
                plan,
            },
            sources,
            kafka,
            consumer,
            offsets,
            slots: BTreeMap::new(),
            store,
            shared,
            crash,
            instance,
            interval,
            guarantee,
            txn_timeout_ms,
            timeout: kafka_timeout,
            stopped: false,
            drain: None,
            out: Vec::new(),
            output_buffer_bytes,
            load: LoadTracker::default(),
            job,
        };
        runner.shared.update_status(|s| s.state = RuntimeState::Restoring);
        for t in tasks {
            let slot = runner
                .open_task(t)
                .with_context(|| format!("starting task {t}"))?;
            runner.slots.insert(t, slot);
        }
        runner.check_positions()?;
        runner.assign()?;
        for slot in runner.slots.values_mut() {
            slot.begin();
        }
        // Restarted in the middle of a drain: stage 1 stays stopped (its
        // barrier is out) until the operator asks for that savepoint again
        // or calls it off (resume).
        let held = runner
            .slots
            .values()
            .find_map(|s| s.task.draining())
            .map(str::to_owned);
        if let Some(id) = &held {
            info!(drain = %id, "restored in the middle of a drain: stage 1 stays stopped until the savepoint is asked again or the job resumes");
        }
        let state = if held.is_some() {
            RuntimeState::Stopped
        } else {
            RuntimeState::Running
        };
        runner.shared.update_status(|s| s.state = state);
        Ok(runner)
    }

    /// Restores task `t` by the protocol and resolves its read positions.
    fn open_task(&mut self, t: u32) -> Result<Slot> {
        let task_count = self.sources.len();
        let own = self.sources.source_of(t).cloned().ok_or_else(|| {
            RuntimeError::Dataflow(format!(
                "task {t} does not exist: the job has {task_count} source partitions"
            ))
        })?;
        let mut log = KafkaTaskLog::new(LogConfig {
            kafka: self.kafka.clone(),
            task: t,
            transactional: self.guarantee == ProcessingGuarantee::ExactlyOnce,
            transactional_id: self.job.transactional_id(t),
            transaction_timeout_ms: self.txn_timeout_ms,
            client_id: format!("streamops-runtime-{}-{t}", self.instance),
            control_topic: self.job.topics.control.clone(),
            marker_group: format!("{}-markers", self.job.group_id()),
            offsets: self.offsets.clone(),
            instance: self.instance.clone(),
            timeout: self.timeout,
        })?;
        let (backend, db) = self.tasks.backend(t)?;
        let mut backend = Some(backend);
        let scratch = self
            .tasks
            .state_dir
            .join(format!("restore-{t}-{}", self.instance));
        let started = Instant::now();
        let tasks = &self.tasks;
        let restored = protocol::restore(
            &context(&self.job, &self.instance, &self.shared, self.guarantee),
            t,
            Io {
                log: &mut log,
                store: &mut self.store,
                steps: &mut self.crash,
            },
            &RestoreRequest {
                mode: self.job.restore_mode(),
                savepoint: self.job.restore.savepoint.as_deref(),
                allow_empty: self.job.restore.allow_empty_state,
                source: &own,
                scratch: &scratch,
                shape: Shape {
                    tasks: task_count,
                    key_groups: self.sources.key_groups(),
                    groups: self.sources.groups_of(t),
                },
            },
            &mut |opening| {
                let backend = backend
                    .take()
                    .ok_or_else(|| RuntimeError::Dataflow(format!("task {t} opened twice")))?;
                tasks.open(t, opening, backend)
            },
        )?;
        self.shared
            .metrics
            .restore_seconds
            .observe(started.elapsed().as_secs_f64());
        let mut task = restored.task;
        // A drain survives only a restart of the same version (stage 1 stays
        // stopped until the drain completes or is called off); a version
        // restored from a savepoint or another version's checkpoint reads.
        if !restored.same_generation {
            task.end_drain();
        }
        // Offsets never stay symbolic: resolve them now, so a checkpoint
        // always names exact positions. A partition new to a re-sharded job
        // is read from its beginning whatever `startFrom` says: what was
        // written to it since the topic grew belongs to the job.
        if task.meta.source_offset.is_none() {
            let (low, high) = self.offsets.watermarks(&own.topic, own.partition)?;
            let latest = matches!(
                self.job.spec.source.start_from,
                Some(streamops_crds::job::StartPosition::Latest)
            );
            let from_end = latest && restored.resharded_from.is_none();
            task.meta.source_offset = Some(if from_end { high } else { low });
        }
        if task.meta.keyed_offset.is_none() {
            let (low, _) = self.offsets.watermarks(&self.job.topics.repartition, t as i32)?;
            task.meta.keyed_offset = Some(low);
        }
        let committed = match restored.from {
            RestoreSource::Checkpoint(m) => vec![m],
            _ => Vec::new(),
        };
        self.shared.update_status(|s| {
            s.checkpoints.insert(t as i32, task.meta.checkpoint_id as i64);
        });
        Ok(Slot {
            task,
            log,
            outbox: Outbox::default(),
            source_topic: own.topic,
            source_partition: own.partition,
            committed,
            db,
            open_id: 0,
            fired_at: None,
            committed_early: false,
            newest_record_ms: None,
        })
    }

    /// Checks every read position against its partition
    /// ([`super::offsets`]): a source position outside it follows
    /// `spec.source.onOffsetOutOfRange` (an error for `fail`); a keyed one
    /// is always an error (the job's own repartition records are gone).
    /// Returns whether a position was reset (the caller reassigns).
    fn check_positions(&mut self) -> Result<bool> {
        let policy = self.job.spec.source.on_offset_out_of_range.unwrap_or_default();
        let mut reset = false;
        let tasks: Vec<u32> = self.slots.keys().copied().collect();
        for t in tasks {
            let (topic, partition, position, keyed) = {
                let s = &self.slots[&t];
                let m = &s.task.meta;
                (
                    s.source_topic.clone(),
                    s.source_partition,
                    m.source_offset,
                    m.keyed_offset,
                )
            };
            if let Some(k) = keyed {
                let (low, high) = self.offsets.watermarks(&self.job.topics.repartition, t as i32)?;
                if let Decision::Fail(why) = offsets::decide(k, low, high, OffsetOutOfRange::Fail) {
                    return Err(RuntimeError::kafka_code(
                        RDKafkaErrorCode::OffsetOutOfRange,
                        format!(
                            "task {t}: the job's repartition partition {}-{t}: {why}",
                            self.job.topics.repartition
                        ),
                    ));
                }
            }
            let Some(position) = position else { continue };
            let (low, high) = self.offsets.watermarks(&topic, partition)?;
            match offsets::decide(position, low, high, policy) {
                Decision::InRange => {}
                Decision::Fail(why) => {
                    return Err(RuntimeError::kafka_code(
                        RDKafkaErrorCode::OffsetOutOfRange,
                        format!("task {t}: source partition {topic}-{partition}: {why}"),
                    ));
                }
                Decision::Reset { to } => {
                    warn!(
                        task = t,
                        topic = %topic,
                        partition,
                        from = position,
                        to,
                        log_start = low,
                        log_end = high,
                        ?policy,
                        "source position no longer in its partition: reset by spec.source.onOffsetOutOfRange"
                    );
                    self.shared
                        .metrics
                        .offset_resets
                        .with_label_values(&[topic.as_str(), partition.to_string().as_str()])
                        .inc();
                    let record = OffsetReset {
                        topic: topic.clone(),
                        partition,
                        from: position,
                        to,
                        log_start: low,
                        log_end: high,
                        time_ms: now_ms(),
                    };
                    self.shared.update_status(|s| {
                        s.offset_resets.push(record);
                        let n = s.offset_resets.len();
                        s.offset_resets.drain(..n.saturating_sub(MAX_OFFSET_RESETS));
                    });
                    if let Some(s) = self.slots.get_mut(&t) {
                        s.task.meta.source_offset = Some(to);
                    }
                    reset = true;
                }
            }
        }
        Ok(reset)
    }

    fn assign(&mut self) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (t, s) in &self.slots {
            let so = s.task.meta.source_offset.unwrap_or(0);
            let ko = s.task.meta.keyed_offset.unwrap_or(0);
            // Stage 1 of a draining task reads nothing.
            if s.task.draining().is_none() {
                tpl.add_partition_offset(&s.source_topic, s.source_partition, Offset::Offset(so))
                    .map_err(kerr("building the assignment"))?;
            }
            tpl.add_partition_offset(&self.job.topics.repartition, *t as i32, Offset::Offset(ko))
                .map_err(kerr("building the assignment"))?;
        }
        self.consumer.assign(&tpl).map_err(kerr("assigning partitions"))
    }

    /// Runs until shutdown (a final checkpoint first) or an error.
    pub fn run(mut self) -> Result<()> {
        let mut next_checkpoint = Instant::now() + self.interval;
        let mut next_lag = Instant::now();
        // One turn may take a checkpoint of every task; past the transaction
        // timeout its transaction is lost anyway. Uploads beat per file:
        // however large the state, a moving upload is not a stuck loop.
        let stall_limit_ms = self.txn_timeout_ms.max(STALL_LIMIT_MIN_MS);
        let shared = self.shared.clone();
        self.store
            .on_progress(Box::new(move || shared.heartbeat.beat(stall_limit_ms)));
        loop {
            self.shared.heartbeat.beat(stall_limit_ms);
            if self.shared.shutdown.load(Ordering::Relaxed) {
                if !self.stopped {
                    self.checkpoint_all(None, false)?;
                }
                info!("shut down after committing everything processed");
                return Ok(());
            }
            while let Some(cmd) = self.shared.pop() {
                self.command(cmd)?;
            }
            if self.stopped {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let deadline = Instant::now() + Duration::from_millis(100);
            while Instant::now() < deadline {
                match self.consumer.poll(Duration::from_millis(20)) {
                    None => break,
                    Some(Err(e))
                        if matches!(
                            e.rdkafka_error_code(),
                            Some(RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange)
                        ) =>
                    {
                        warn!(error = %e, "a read position is out of range");
                        if self.check_positions()? {
                            self.assign()?;
                        }
                    }
                    Some(Err(e)) => warn!(error = %e, "consumer error"),
                    Some(Ok(m)) => on_message(
                        &context(&self.job, &self.instance, &self.shared, self.guarantee),
                        &self.job,
                        &self.sources,
                        &self.shared,
                        &mut self.slots,
                        &mut self.out,
                        &self.instance,
                        (m.topic(), m.partition(), m.offset()),
                        m.timestamp().to_millis(),
                        m.key(),
                        m.payload().unwrap_or(&[]),
                    )?,
                }
            }
            for s in self.slots.values() {
                s.log.poll();
            }
            if self.drain.is_some() {
                self.drain_progress()?;
                if self.stopped {
                    // Stopped with the drained savepoint: it is the last
                    // commit (a checkpoint after it would be what a restore
                    // at the new count reads instead).
                    continue;
                }
            }
            if Instant::now() >= next_checkpoint {
                self.checkpoint_all(None, false)?;
                next_checkpoint = Instant::now() + self.interval;
            } else {
                self.commit_fired(next_checkpoint)?;
                self.commit_full()?;
            }
            if Instant::now() >= next_lag {
                self.update_lag();
                next_lag = Instant::now() + LAG_INTERVAL;
            }
        }
    }

    fn command(&mut self, cmd: super::shared::Command) -> Result<()> {
        match cmd {
            super::shared::Command::Savepoint { id, stop, drain } => {
                if self.stopped {
                    self.savepoint_failed(
                        &id,
                        "the runtime is stopped (an earlier stop-with-savepoint)".into(),
                    );
                    return Ok(());
                }
                if drain {
                    return self.begin_drain(id, stop);
                }
                let taken = self.checkpoint_all(Some(&id), stop);
                self.savepoint_taken(&id, stop, false, taken)
            }
            super::shared::Command::Resume => {
                let draining = self.slots.values().any(|s| s.task.draining().is_some());
                if let Some(d) = self.drain.take() {
                    self.savepoint_failed(&d.id, "called off by a resume before the drain completed".into());
                }
                if draining {
                    for s in self.slots.values_mut() {
                        s.task.end_drain();
                    }
                    self.assign()?;
                    info!("drain called off: stage 1 reads again");
                }
                if self.stopped {
                    for s in self.slots.values_mut() {
                        s.begin();
                    }
                    self.stopped = false;
                    info!("resumed after a stop");
                }
                self.shared.update_status(|s| s.state = RuntimeState::Running);
                Ok(())
            }
            super::shared::Command::DeleteSavepoint { id, done } => {
                let outcome = self.delete_savepoint(&id);
                // The admin API may have answered 202 and stopped waiting.
                let _ = done.send(outcome);
                Ok(())
            }
        }
    }

    fn savepoint_failed(&self, id: &str, why: String) {
        warn!(savepoint = %id, %why, "savepoint failed");
        self.shared.update_savepoint(id, |sp| {
            sp.state = SavepointState::Failed;
            sp.error = Some(why);
        });
    }

    /// Records savepoint `id` as `taken` (the checkpoint of every task, or
    /// its error, which also ends the process), and stops after it if asked.
    fn savepoint_taken(&mut self, id: &str, stop: bool, drained: bool, taken: Result<()>) -> Result<()> {
        if let Err(e) = taken {
            self.savepoint_failed(id, e.to_string());
            return Err(e);
        }
        let location = self.store.savepoint_location(id);
        let offsets = self.offsets();
        let checkpoint = self.slots.values().map(|s| s.task.meta.checkpoint_id).max();
        // Each task's last commit is this savepoint's.
        let status = self.shared.status();
        let bytes = self
            .slots
            .keys()
            .filter_map(|t| status.checkpoint_bytes.get(&(*t as i32)))
            .sum::<i64>();
        self.shared.update_savepoint(id, |sp| {
            sp.state = SavepointState::Completed;
            sp.bytes = Some(bytes);
            sp.location = Some(location);
            sp.offsets = offsets;
            sp.checkpoint_id = checkpoint.map(|c| c as i64);
            sp.drained = drained;
        });
        if stop {
            self.stopped = true;
            self.shared.update_status(|s| s.state = RuntimeState::Stopped);
            info!(savepoint = %id, drained, "stopped with savepoint; nothing uncommitted remains");
        }
        Ok(())
    }

    /// Starts the drained savepoint `id`: stage 1 of every task stops
    /// reading, a checkpoint records that with everything stage 1 wrote,
    /// and once that is committed the next checkpoint sends each task's
    /// barrier to every keyed partition. [`Runner::drain_progress`] takes
    /// the savepoint when every keyed partition here has every barrier.
    /// (The barrier follows the commit so that no restart can make a
    /// source partition write after its barrier: a task restored from the
    /// committed drain keeps stage 1 stopped.)
    fn begin_drain(&mut self, id: String, stop: bool) -> Result<()> {
        if let Some(d) = &self.drain {
            if d.id != id {
                self.savepoint_failed(&id, format!("drain {} is in progress", d.id));
            }
            return Ok(());
        }
        let recorded = self
            .slots
            .values()
            .all(|s| s.task.draining() == Some(id.as_str()));
        for s in self.slots.values_mut() {
            s.task.begin_drain(&id);
        }
        self.assign()?;
        info!(savepoint = %id, stop, "draining: stage 1 stopped");
        if !recorded && let Err(e) = self.checkpoint_all(None, false) {
            self.savepoint_failed(&id, e.to_string());
            return Err(e);
        }
        for s in self.slots.values_mut() {
            s.task.drain_committed();
        }
        if let Err(e) = self.checkpoint_all(None, false) {
            self.savepoint_failed(&id, e.to_string());
            return Err(e);
        }
        self.drain = Some(Drain { id, stop });
        self.shared.update_status(|s| s.state = RuntimeState::Running);
        Ok(())
    }

    /// The drain in progress: called off if an upstream wrote after its
    /// barrier (it resumed); the savepoint, marked drained, once every
    /// task's keyed partition applied every upstream's barrier.
    fn drain_progress(&mut self) -> Result<()> {
        let Some(d) = self.drain.take() else {
            return Ok(());
        };
        if let Some((t, u)) = self
            .slots
            .iter()
            .find_map(|(t, s)| s.task.drain_broken().map(|u| (*t, u)))
        {
            let from = (0..self.sources.len())
                .find(|&t| self.sources.id_of(t) == Some(u))
                .and_then(|t| self.sources.source_of(t))
                .map_or_else(|| format!("source id {u}"), ToString::to_string);
            for s in self.slots.values_mut() {
                s.task.end_drain();
            }
            self.assign()?;
            self.savepoint_failed(
                &d.id,
                format!("task {t}: {from} wrote after its drain barrier (its pod resumed), so the drain cannot complete"),
            );
            return Ok(());
        }
        if !self.slots.values().all(|s| s.task.drained_for(&d.id)) {
            self.drain = Some(d);
            return Ok(());
        }
        for s in self.slots.values_mut() {
            s.task.meta.drained = true;
        }
        let taken = self.checkpoint_all(Some(&d.id), d.stop);
        for s in self.slots.values_mut() {
            s.task.meta.drained = false;
        }
        if !d.stop && taken.is_ok() {
            for s in self.slots.values_mut() {
                s.task.end_drain();
            }
            self.assign()?;
        }
        info!(savepoint = %d.id, "drained: every keyed partition applied every upstream's barrier");
        self.savepoint_taken(&d.id, d.stop, true, taken)
    }

    /// Deletes savepoint `id` from storage unless this process was started
    /// from it; a failure is the caller's answer, never the loop's end.
    fn delete_savepoint(&self, id: &str) -> crate::checkpoint::store::DeletionOutcome {
        use crate::checkpoint::store::DeletionOutcome;
        let outcome = self
            .store
            .delete_savepoint_unless_restored(id, self.job.restore.savepoint.as_deref());
        match &outcome {
            DeletionOutcome::Deleted(objects) => {
                if *objects > 0 {
                    self.shared.metrics.savepoints_deleted.inc();
                }
                self.shared.forget_savepoint(id);
                info!(savepoint = %id, objects, "deleted savepoint from storage");
            }
            DeletionOutcome::Refused(why) => warn!(savepoint = %id, %why, "savepoint not deleted"),
            DeletionOutcome::Failed(e) => warn!(savepoint = %id, error = %e, "deleting savepoint failed"),
        }
        outcome
    }

    /// Consumer lag per task and stage (metrics, `/v1/status`), from the
    /// high watermarks in the consumer's last statistics (never a request),
    /// and the load the autoscaler reads ([`LoadTracker`]).
    fn update_lag(&mut self) {
        let mut load = Vec::with_capacity(self.slots.len());
        for (t, s) in &self.slots {
            let task = t.to_string();
            let parts = [
                (
                    "source",
                    s.source_topic.as_str(),
                    s.source_partition,
                    s.task.meta.source_offset,
                ),
                (
                    "keyed",
                    self.job.topics.repartition.as_str(),
                    *t as i32,
                    s.task.meta.keyed_offset,
                ),
            ];
            for (stage, topic, partition, position) in parts {
                // From the consumer's statistics, not a request: with a
                // partition's leader unreachable, a ListOffsets per partition
                // (each waiting up to the Kafka timeout) blocked the
                // processing loop for minutes and failed its liveness probe
                // before the commit could report the outage.
                let high = self.consumer.context().high(topic, partition);
                let position = position.unwrap_or(0);
                match high {
                    Some(high) => self
                        .shared
                        .metrics
                        .lag
                        .with_label_values(&[stage, &task])
                        .set((high - position).max(0)),
                    None => debug!(
                        topic,
                        partition, "lag unknown: no statistics for the partition yet"
                    ),
                }
                if stage == "source" {
                    load.push(PartitionLoad {
                        end: high,
                        position,
                        // A stateless job reads no event time: the records'
                        // Kafka timestamps say how far behind it is.
                        newest_event_ms: s.task.meta.source_max_event_time.or(s.newest_record_ms),
                    });
                }
            }
        }
        let report = self.load.observe(now_ms(), &load);
        self.shared.update_status(|st| {
            st.lag = report.records_behind;
            st.event_time_lag_ms = report.event_time_lag_ms;
            st.input_rate = report.input_rate;
            st.processing_rate = report.processing_rate;
        });
    }

    fn offsets(&self) -> BTreeMap<String, i64> {
        self.slots
            .values()
            .map(|s| {
                (
                    format!("{}-{}", s.source_topic, s.source_partition),
                    s.task.meta.source_offset.unwrap_or(0),
                )
            })
            .collect()
    }

    /// One checkpoint (or savepoint `savepoint`) of every task, each in its
    /// own transaction. With `stop`, no new transaction is begun.
    fn checkpoint_all(&mut self, savepoint: Option<&str>, stop: bool) -> Result<()> {
        let ids: Vec<u32> = self.slots.keys().copied().collect();
        for t in ids {
            self.checkpoint(t, savepoint, stop)
                .with_context(|| format!("checkpoint of task {t}"))?;
        }
        for s in self.slots.values_mut() {
            s.committed_early = false;
        }
        self.publish_commit();
        Ok(())
    }

    /// Exactly once, a window result is visible after two commits: the
    /// upstream task's (which carries the watermark that fires the window)
    /// and then its own. Waiting for the next scheduled checkpoint for the
    /// second would put up to two intervals between the record that closes
    /// a window and its result; so a task whose window fired commits once
    /// [`FIRE_COMMIT_DELAY`] later (gathering the rest of that watermark's
    /// firings), at most once between two scheduled checkpoints, so a task
    /// commits at most twice per interval.
    fn commit_fired(&mut self, next_checkpoint: Instant) -> Result<()> {
        let now = Instant::now();
        let due: Vec<u32> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                !s.committed_early
                    && s.fired_at.is_some_and(|f| {
                        now >= f + FIRE_COMMIT_DELAY && next_checkpoint > now + FIRE_COMMIT_DELAY
                    })
            })
            .map(|(t, _)| *t)
            .collect();
        self.checkpoint_now(&due, "after a window fired")?;
        for t in due {
            if let Some(s) = self.slots.get_mut(&t) {
                s.committed_early = true;
            }
            self.shared.metrics.early_commits.inc();
        }
        Ok(())
    }

    /// Exactly once, a task whose held outputs fill its share of
    /// `--output-buffer-bytes` checkpoints now, so memory stays bounded
    /// whatever the interval and the input rate.
    fn commit_full(&mut self) -> Result<()> {
        let share = self.output_buffer_bytes / self.slots.len().max(1);
        let full: Vec<u32> = self
            .slots
            .iter()
            .filter(|(_, s)| s.outbox.bytes() > share)
            .map(|(t, _)| *t)
            .collect();
        self.checkpoint_now(&full, "with its output buffer full")?;
        self.shared.metrics.buffer_full_commits.inc_by(full.len() as u64);
        Ok(())
    }

    /// Checkpoints `tasks` before their schedule (`why`, for errors).
    fn checkpoint_now(&mut self, tasks: &[u32], why: &str) -> Result<()> {
        if tasks.is_empty() {
            return Ok(());
        }
        for &t in tasks {
            self.checkpoint(t, None, false)
                .with_context(|| format!("checkpoint of task {t} {why}"))?;
        }
        self.publish_commit();
        Ok(())
    }

    fn publish_commit(&self) {
        let max = self.slots.values().map(|s| s.task.meta.checkpoint_id).max();
        let now = now_ms();
        self.shared.update_status(|s| {
            s.checkpoint_id = max.map(|c| c as i64);
            s.last_commit_ms = Some(now);
        });
    }

    /// One checkpoint of task `t` by the protocol, then what follows a
    /// commit: the group's offsets, metrics, status, the next checkpoint's
    /// id (unless `stop`) and retention.
    fn checkpoint(&mut self, t: u32, savepoint: Option<&str>, stop: bool) -> Result<()> {
        let started = Instant::now();
        let cx = context(&self.job, &self.instance, &self.shared, self.guarantee);
        let slot = self
            .slots
            .get_mut(&t)
            .ok_or_else(|| RuntimeError::Dataflow(format!("no task {t}")))?;
        let scratch = self
            .tasks
            .state_dir
            .join(format!("snapshot-{t}-{}-{}", slot.open_id, self.instance));
        let done = protocol::checkpoint(
            &cx,
            &mut slot.task,
            &mut slot.outbox,
            Io {
                log: &mut slot.log,
                store: &mut self.store,
                steps: &mut self.crash,
            },
            &Request {
                id: slot.open_id,
                savepoint,
                now_ms: now_ms(),
                scratch: &scratch,
                db: &slot.db,
                source: (&slot.source_topic, slot.source_partition),
            },
        )?;
        let marker = &done.marker;
        // The group's offsets only inform lag tools; the marker is what a
        // restart reads. So they are committed after the checkpoint, not in
        // its transaction: `send_offsets_to_transaction` needs the group
        // coordinator, and librdkafka (2.12) can block in it forever,
        // ignoring its timeout, while that coordinator moves between
        // brokers (seen in the broker-fault test: a rolling restart of
        // Apache Kafka left the loop stuck there).
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(
                &slot.source_topic,
                slot.source_partition,
                Offset::Offset(marker.source_offset),
            )
            .map_err(kerr("building offsets"))?;
        offsets
            .add_partition_offset(
                &self.job.topics.repartition,
                t as i32,
                Offset::Offset(marker.keyed_offset),
            )
            .map_err(kerr("building offsets"))?;
        if let Err(e) = self.consumer.commit(&offsets, CommitMode::Async) {
            debug!(task = t, error = %e, "committing the group's offsets");
        }
        slot.fired_at = None;
        let kind = marker.kind.as_str();
        let id = marker.checkpoint_id;
        if savepoint.is_some() {
            info!(
                task = t,
                checkpoint = id,
                entries = slot.task.open_entries(),
                watermark = slot.task.watermark(),
                source_offset = marker.source_offset,
                keyed_offset = marker.keyed_offset,
                counters = ?slot.task.counters,
                "savepoint committed"
            );
        }
        let metrics = &self.shared.metrics;
        metrics.checkpoints.with_label_values(&[kind]).inc();
        metrics
            .checkpoint_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.checkpoint_bytes.set(done.manifest.total_bytes() as i64);
        metrics
            .checkpoint_uploaded_bytes
            .set(self.store.last_uploaded_bytes as i64);
        debug!(
            task = t,
            checkpoint = id,
            kind,
            bytes = done.manifest.total_bytes(),
            "committed"
        );
        let bytes = i64::try_from(done.manifest.total_bytes()).unwrap_or(i64::MAX);
        self.shared.update_status(|s| {
            s.checkpoints.insert(t as i32, id as i64);
            s.checkpoint_bytes.insert(t as i32, bytes);
        });
        if !stop {
            slot.begin();
        }
        // Retention: the checkpoint the marker names and its predecessor stay.
        if savepoint.is_none() {
            slot.committed.push(done.manifest_path);
            if slot.committed.len() > 2 {
                slot.committed.remove(0);
            }
            let keep = slot.committed.clone();
            if let Err(e) = self.store.retain(t, &keep, &self.instance) {
                warn!(task = t, error = %e.to_string(), "checkpoint retention failed; will retry");
            }
        }
        Ok(())
    }
}

/// Routes one consumed record to its task and writes or holds what comes
/// out.
#[allow(clippy::too_many_arguments)]
fn on_message(
    cx: &Context<'_>,
    job: &JobFile,
    sources: &Sources,
    shared: &Shared,
    slots: &mut BTreeMap<u32, Slot>,
    out: &mut Vec<Out>,
    instance: &str,
    (topic, partition, offset): (&str, i32, i64),
    timestamp_ms: Option<i64>,
    key: Option<&[u8]>,
    value: &[u8],
) -> Result<()> {
    let now = now_ms();
    let keyed = topic == job.topics.repartition;
    let task = if keyed {
        partition as u32
    } else {
        sources.task_of(topic, partition).ok_or_else(|| {
            RuntimeError::Dataflow(format!("record from unassigned partition {topic}-{partition}"))
        })?
    };
    let Some(slot) = slots.get_mut(&task) else {
        return Err(RuntimeError::Dataflow(format!(
            "record for task {task}, which this process does not own"
        )));
    };
    let stage = if keyed { "keyed" } else { "source" };
    shared.metrics.records_in.with_label_values(&[stage]).inc();
    out.clear();
    let header = if cx.transactional {
        String::new()
    } else {
        slot.header(instance)
    };
    if keyed {
        let (dups, keyed_records) = (
            slot.task.counters.duplicates_dropped,
            slot.task.counters.keyed_records,
        );
        slot.task.on_keyed(offset, value, out)?;
        if slot.task.counters.duplicates_dropped > dups {
            shared.metrics.duplicates_dropped.inc();
        }
        if slot.task.counters.keyed_records > keyed_records {
            shared.metrics.keyed_records.inc();
        }
        shared
            .metrics
            .watermark
            .with_label_values(&[&task.to_string()])
            .set(slot.task.watermark());
    } else {
        // Keyed records go out (or into the outbox) borrowed, the rest
        // through `out`.
        let mut to = protocol::Stage1Outputs {
            cx,
            log: &mut slot.log,
            outbox: &mut slot.outbox,
            header: &header,
            rest: out,
            error: None,
        };
        if let Some(ts) = timestamp_ms {
            slot.newest_record_ms = Some(slot.newest_record_ms.map_or(ts, |n| n.max(ts)));
        }
        slot.task.on_source(offset, key, value, now, &mut to);
        if let Some(e) = to.error {
            return Err(e);
        }
    }
    if cx.transactional
        && slot.fired_at.is_none()
        && out
            .iter()
            .any(|o| matches!(o, Out::Result { is_final: true, .. }))
    {
        slot.fired_at = Some(Instant::now());
    }
    for o in out.drain(..) {
        protocol::output(
            cx,
            &mut slot.log,
            &mut slot.outbox,
            &header,
            o,
            keyed,
            (topic, partition, offset),
        )?;
    }
    Ok(())
}
