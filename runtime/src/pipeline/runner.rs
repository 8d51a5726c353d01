//! The pipeline loop: Kafka in, tasks, Kafka out, one transaction per task
//! per checkpoint (exactly once), or outputs written as they come and
//! acknowledged before each checkpoint (at least once).
//!
//! Per checkpoint and task (the protocol of DESIGN.md): (1) snapshot the
//! task's state and write it and its manifest to durable storage; (2) begin
//! the task's transaction and write into it every output held since the
//! last checkpoint, then the marker naming that manifest and the input
//! offsets; (3) commit. Outputs wait in memory until (2) (at most
//! `--output-buffer-bytes` per process; a task whose share is full
//! checkpoints early), so a transaction lasts only (2) and (3): its timeout
//! depends neither on the state's size nor on the interval. Any failure in
//! between ends the process: on restart `init_transactions` fences and
//! aborts what was open, the last committed marker names the state to
//! restore, and the input is re-read from its offsets. There is no other
//! recovery path to get wrong.
//!
//! At least once (`spec.checkpoint.guarantee: atLeastOnce`) runs the same
//! checkpoint without the transaction: the outputs, already written, are
//! waited for before the marker is, so a marker never names input whose
//! output could be missing; restoring it re-reads (and may write again)
//! what came after.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tracing::{debug, info, warn};

use super::job::{JobExt, JobFile, RestoreMode};
use super::kafka::KafkaSettings;
use super::offsets::{self, Decision};
use super::shared::{CrashPoints, MAX_OFFSET_RESETS, RunState, SavepointState, Shared};
use super::sources::{SourceRef, Sources};
use super::store::{CheckpointStore, Manifest, Target};
use super::wire::{self, CHECKPOINT_HEADER, Marker};
use crate::dataflow::task::{Out, STATE_DIR, Task};
use crate::plan::Plan;
use crate::state::StateBackend;
use crate::state::memory::MemoryBackend;
use crate::state::rocks::{RocksBackend, RocksOptions};
use streamops_crds::job::{OffsetOutOfRange, ProcessingGuarantee};
use streamops_crds::runtime_api::OffsetReset;
use streamops_crds::{StreamJobSpec, transaction};

use super::failure::KafkaCondition;

/// Storage used when the spec names none: a volume the operator mounts.
pub const DEFAULT_STORAGE: &str = "file:///var/lib/streamops/checkpoints";
/// The least time the processing loop may spend in one turn before
/// `/healthz` calls it stuck (see [`super::shared::Heartbeat`]).
const STALL_LIMIT_MIN_MS: u64 = 60_000;
/// How often consumer lag is refreshed.
const LAG_INTERVAL: Duration = Duration::from_secs(5);
/// Key prefix of the fence records in the control topic (not markers).
pub const FENCE_KEY_PREFIX: &str = "fence-";
/// `transaction.timeout.ms` of the fencing transaction an at-least-once
/// task commits at start (Kafka's default is 60 s too).
const FENCE_TRANSACTION_TIMEOUT_MS: u64 = 60_000;
/// How long a task that fired a window gathers further firings before it
/// commits early (see [`Runner::commit_fired`]).
const FIRE_COMMIT_DELAY: Duration = Duration::from_millis(50);
/// Default bound on each Kafka request the runner waits for.
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
    /// Bound on each Kafka request waited for (init, commit, metadata).
    pub kafka_timeout: Duration,
    /// Exactly once: bytes of output the process holds between checkpoints,
    /// shared equally by its tasks; a task whose share is full checkpoints.
    pub output_buffer_bytes: usize,
}

/// Default of [`RunConfig::output_buffer_bytes`].
pub const DEFAULT_OUTPUT_BUFFER_BYTES: usize = 64 << 20;

/// An output held until its checkpoint's transaction (exactly once).
enum Held {
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

/// The delivery reports of a task's transactional producer: records the
/// brokers acknowledged, per (topic, partition), and failures, since the
/// last [`DeliveryLedger::take`]. Every record of a transaction is flushed
/// before its commit, so at commit time the ledger holds exactly that
/// transaction's records. A failed delivery fails the checkpoint (librdkafka
/// also makes such a transaction abortable; the runtime does not rely on it).
#[derive(Default)]
pub struct DeliveryLedger {
    inner: Mutex<Deliveries>,
}

#[derive(Debug, Default, Clone)]
pub struct Deliveries {
    /// Topic -> partition -> records acknowledged (a marker's `delivered`).
    pub acked: BTreeMap<String, BTreeMap<i32, u64>>,
    pub failed: u64,
    /// The first failure's code and `topic-partition: error`.
    pub first_failure: Option<(RDKafkaErrorCode, String)>,
}

impl DeliveryLedger {
    /// What was delivered (or failed) since the last call.
    pub fn take(&self) -> Deliveries {
        std::mem::take(&mut *self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl ClientContext for DeliveryLedger {}

impl ProducerContext for DeliveryLedger {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut d = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(m) => {
                // Called for every record: no allocation once the topic is known.
                let partitions = match d.acked.get_mut(m.topic()) {
                    Some(p) => p,
                    None => d.acked.entry(m.topic().to_string()).or_default(),
                };
                *partitions.entry(m.partition()).or_default() += 1;
            }
            Err((e, m)) => {
                d.failed += 1;
                if d.first_failure.is_none() {
                    let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
                    d.first_failure = Some((code, format!("{}-{}: {e}", m.topic(), m.partition())));
                }
            }
        }
    }
}

/// A task's producer: transactional (exactly once) or idempotent only.
type TxProducer = BaseProducer<DeliveryLedger>;

/// Fails checkpoint `id` of task `t` if any of its records failed delivery.
fn check_delivered(t: u32, id: u64, d: &Deliveries) -> Result<()> {
    if d.failed > 0 {
        let (code, first) = d
            .first_failure
            .clone()
            .unwrap_or((RDKafkaErrorCode::Fail, String::new()));
        return Err(KafkaCondition::new(
            code,
            format!(
                "task {t}: {} records of checkpoint {id} failed delivery (first: {first}); not committing it",
                d.failed
            ),
        )
        .into());
    }
    Ok(())
}

struct Slot {
    task: Task,
    producer: TxProducer,
    source_topic: String,
    source_partition: i32,
    /// Manifests of the last committed checkpoints (newest last).
    committed: Vec<String>,
    /// Instance id of the state backend (names its SSTs in storage).
    db: String,
    /// Id of the checkpoint the open transaction will commit (in every
    /// output's header).
    open_id: u64,
    /// Outputs go into one transaction per checkpoint (exactly once).
    transactional: bool,
    /// When the open checkpoint first got a final window result (exactly
    /// once only: see [`Runner::commit_fired`]).
    fired_at: Option<Instant>,
    /// The task already committed early since the last scheduled checkpoint.
    committed_early: bool,
    /// Exactly once: the open checkpoint's outputs, in order, written in its
    /// transaction once its state is durable ([`Runner::checkpoint`]).
    held: Vec<Held>,
    held_bytes: usize,
}

impl Slot {
    /// Opens the next checkpoint: its id, which every output carries. Ids
    /// rise with wall time (and always by at least one), so ids of different
    /// tasks and pods compare: the operator tells whether a new version
    /// committed anything after a savepoint by comparing them. The Kafka
    /// transaction begins only when the checkpoint commits.
    fn begin(&mut self) {
        self.open_id = (self.task.meta.checkpoint_id + 1).max(now_ms().max(0) as u64);
    }

    fn hold(&mut self, h: Held) {
        self.held_bytes += h.bytes();
        self.held.push(h);
    }
}

pub struct Runner {
    job: JobFile,
    sources: Arc<Sources>,
    plan: Arc<Plan>,
    kafka: KafkaSettings,
    consumer: TaskConsumer,
    /// read_uncommitted client for offsets (high watermarks, not LSOs).
    meta: BaseConsumer,
    slots: BTreeMap<u32, Slot>,
    store: CheckpointStore,
    shared: Arc<Shared>,
    state_dir: PathBuf,
    backend: BackendKind,
    crash: CrashPoints,
    instance: String,
    interval: Duration,
    guarantee: ProcessingGuarantee,
    txn_timeout_ms: u64,
    timeout: Duration,
    stopped: bool,
    out: Vec<Out>,
    output_buffer_bytes: usize,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Context for a Kafka error that keeps it as the source, so that
/// [`super::failure::reason`] can read its code.
fn kerr(what: impl std::fmt::Display + Send + Sync + 'static) -> impl FnOnce(KafkaError) -> anyhow::Error {
    move |e| anyhow::Error::new(e).context(what)
}

/// Where a task's state comes from (DESIGN.md: never silently empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreSource {
    /// A committed checkpoint's manifest.
    Checkpoint(String),
    /// A savepoint's manifest for this task.
    Savepoint(String),
    /// Empty state; `offsets` (source, keyed) to read on from, if any were
    /// committed (stateless upgrade), else the job's start position. The
    /// source offset is absent when the marker's was another partition's
    /// (a replaced source topic).
    Empty { offsets: Option<(Option<i64>, i64)> },
}

/// Decides a task's [`RestoreSource`]. A marker of the running generation
/// always wins: the version already committed on its own, and restoring
/// anything older would duplicate its output.
pub fn restore_source(
    marker: Option<&Marker>,
    generation: i64,
    mode: RestoreMode,
    savepoint_manifest: Option<String>,
    allow_empty: bool,
    task: u32,
    source: &SourceRef,
) -> Result<RestoreSource> {
    if let Some(m) = marker.filter(|m| m.generation == generation) {
        return Ok(RestoreSource::Checkpoint(m.manifest.clone()));
    }
    match mode {
        RestoreMode::Savepoint => savepoint_manifest
            .map(RestoreSource::Savepoint)
            .ok_or_else(|| anyhow!("task {task}: restore mode savepoint, but no savepoint is named")),
        RestoreMode::LastState => match marker {
            Some(m) => Ok(RestoreSource::Checkpoint(m.manifest.clone())),
            None if allow_empty => Ok(RestoreSource::Empty { offsets: None }),
            None => bail!(
                "task {task}: no committed checkpoint and no savepoint to restore; refusing to start from empty \
                 state (set spec.restore.allowEmptyState: true to start empty)"
            ),
        },
        RestoreMode::Empty => Ok(RestoreSource::Empty {
            offsets: marker.map(|m| {
                let ours = m.source.as_ref().is_none_or(|s| s == source);
                (ours.then_some(m.source_offset), m.keyed_offset)
            }),
        }),
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
            ProcessingGuarantee::ExactlyOnce => transaction_timeout(&kafka, &spec, &rt, kafka_timeout)?,
            ProcessingGuarantee::AtLeastOnce => FENCE_TRANSACTION_TIMEOUT_MS,
        };
        let consumer: TaskConsumer = kafka
            .client()
            .set("statistics.interval.ms", LAG_INTERVAL.as_millis().to_string())
            .set("group.id", job.group_id())
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "error")
            .set("client.id", format!("streamops-runtime-{instance}"))
            .create_with_context(HighWatermarks::default())
            .map_err(kerr("creating the consumer"))?;
        let meta: BaseConsumer = kafka
            .client()
            .set("isolation.level", "read_uncommitted")
            .set("client.id", format!("streamops-runtime-{instance}-offsets"))
            .create()
            .map_err(kerr("creating the offsets client"))?;
        info!(job = %job.name, generation = job.generation, ?tasks, instance, ?guarantee, txn_timeout_ms, "starting");
        let sources = Arc::new(job.sources()?);
        let mut runner = Runner {
            sources,
            plan,
            kafka,
            consumer,
            meta,
            slots: BTreeMap::new(),
            store,
            shared,
            state_dir,
            backend,
            crash,
            instance,
            interval,
            guarantee,
            txn_timeout_ms,
            timeout: kafka_timeout,
            stopped: false,
            out: Vec::new(),
            output_buffer_bytes,
            job,
        };
        runner.shared.update_status(|s| s.state = RunState::Restoring);
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
        runner.shared.update_status(|s| s.state = RunState::Running);
        Ok(runner)
    }

    fn new_backend(&self, task: u32) -> Result<(Box<dyn StateBackend + Send>, String)> {
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

    /// A task restored from the snapshot downloaded to `dir`. RocksDB opens
    /// the snapshot in place (its SST files keep their names, so the next
    /// checkpoint references what is already stored); the memory backend
    /// loads it.
    fn restore_task(&self, t: u32, dir: &Path, backend: Box<dyn StateBackend + Send>) -> Result<Task> {
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

    fn open_task(&mut self, t: u32) -> Result<Slot> {
        let task_count = self.sources.len();
        let own =
            self.sources.source_of(t).cloned().ok_or_else(|| {
                anyhow!("task {t} does not exist: the job has {task_count} source partitions")
            })?;
        let (topic, partition) = (own.topic.clone(), own.partition);
        let transactional = self.guarantee == ProcessingGuarantee::ExactlyOnce;
        let fencing: TxProducer = self
            .producer_config(t)
            .set("transactional.id", self.job.transactional_id(t))
            .set("transaction.timeout.ms", self.txn_timeout_ms.to_string())
            .create_with_context(DeliveryLedger::default())
            .map_err(kerr("creating a transactional producer"))?;
        // Fences every transactional predecessor holding this task (any
        // version, any parallelism), whichever the guarantee: a previous
        // exactly-once version's open transaction would otherwise hide the
        // control partition's end from the marker read below.
        fencing
            .init_transactions(self.timeout)
            .map_err(kerr(format!("init_transactions for task {t}")))?;
        self.resolve_predecessor(&fencing, t)?;
        let producer = if transactional {
            fencing
        } else {
            drop(fencing);
            self.producer_config(t)
                .create_with_context(DeliveryLedger::default())
                .map_err(kerr("creating a producer"))?
        };
        let marker = self.read_marker(t)?;
        let savepoint = match &self.job.restore.savepoint {
            Some(loc) => Some(self.store.savepoint_manifest(loc, t)?),
            None => None,
        };
        let source = restore_source(
            marker.as_ref(),
            self.job.generation,
            self.job.restore_mode(),
            savepoint,
            self.job.restore.allow_empty_state,
            t,
            &own,
        )?;
        let (backend, db) = self.new_backend(t)?;
        let started = Instant::now();
        let mut task = match &source {
            RestoreSource::Empty { offsets } => {
                info!(
                    task = t,
                    ?offsets,
                    "starting with empty state (the spec allows it)"
                );
                let mut task = Task::new(t, self.sources.clone(), self.plan.clone(), backend, now_ms());
                if let Some((source, keyed)) = offsets {
                    task.meta.source_offset = *source;
                    task.meta.keyed_offset = Some(*keyed);
                }
                task
            }
            RestoreSource::Checkpoint(m) | RestoreSource::Savepoint(m) => {
                let manifest = self.store.read_manifest(m).with_context(|| {
                    format!(
                        "task {t}: the state named by {source:?} cannot be read; refusing to start without it"
                    )
                })?;
                let dir = self.state_dir.join(format!("restore-{t}-{}", self.instance));
                let _ = std::fs::remove_dir_all(&dir);
                self.store.download(&manifest, &dir)?;
                self.crash.hit("during-restore");
                let task = self.restore_task(t, &dir, backend)?;
                let _ = std::fs::remove_dir_all(&dir);
                if let RestoreSource::Checkpoint(_) = &source {
                    // Its files stay in storage while a kept manifest names
                    // them; a savepoint's may be deleted, so they are not
                    // referenced.
                    self.store.adopt(t, &manifest);
                }
                info!(
                    task = t,
                    from = ?source,
                    checkpoint = manifest.checkpoint_id,
                    entries = task.open_entries(),
                    watermark = task.watermark(),
                    keyed_offset = ?task.meta.keyed_offset,
                    "restored"
                );
                task
            }
        };
        self.shared
            .metrics
            .restore_seconds
            .observe(started.elapsed().as_secs_f64());
        // Offsets never stay symbolic: resolve them now, so a checkpoint
        // always names exact positions.
        if task.meta.source_offset.is_none() {
            let (low, high) = self.watermarks(&topic, partition)?;
            let latest = matches!(
                self.job.spec.source.start_from,
                Some(streamops_crds::job::StartPosition::Latest)
            );
            task.meta.source_offset = Some(if latest { high } else { low });
        }
        if task.meta.keyed_offset.is_none() {
            let (low, _) = self.watermarks(&self.job.topics.repartition, t as i32)?;
            task.meta.keyed_offset = Some(low);
        }
        let committed = match &source {
            RestoreSource::Checkpoint(m) => vec![m.clone()],
            _ => Vec::new(),
        };
        self.shared.update_status(|s| {
            s.checkpoints.insert(t, task.meta.checkpoint_id);
        });
        // The fence transaction's record is not the first checkpoint's.
        producer.context().take();
        Ok(Slot {
            task,
            producer,
            source_topic: topic,
            source_partition: partition,
            committed,
            db,
            open_id: 0,
            transactional,
            fired_at: None,
            committed_early: false,
            held: Vec::new(),
            held_bytes: 0,
        })
    }

    /// Settings every task producer shares: idempotent (no duplicates or
    /// reordering from the producer's own retries), murmur2 like Kafka's
    /// Java clients.
    fn producer_config(&self, t: u32) -> rdkafka::ClientConfig {
        let mut c = self.kafka.client();
        c.set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("partitioner", "murmur2_random")
            .set("client.id", format!("streamops-runtime-{}-{t}", self.instance));
        c
    }

    /// Makes sure no transaction of a predecessor is left unresolved in
    /// control partition `t` before its markers are read: commits one
    /// transaction holding a fence record. On Kafka, `init_transactions`
    /// already aborted the predecessor's open transaction and this is a
    /// no-op record; a broker that left a fenced transaction open until the
    /// new epoch commits would resolve it here, so the read below can always
    /// reach the end of the partition.
    fn resolve_predecessor(&self, producer: &TxProducer, t: u32) -> Result<()> {
        producer
            .begin_transaction()
            .map_err(kerr("beginning the fence transaction"))?;
        let value = serde_json::to_vec(&serde_json::json!({ "fence": self.instance, "task": t }))?;
        send(
            producer,
            &self.job.topics.control,
            Some(t as i32),
            Some(format!("{FENCE_KEY_PREFIX}{t}").as_bytes()),
            &value,
            OwnedHeaders::new(),
        )?;
        flush(producer, self.timeout)?;
        producer
            .commit_transaction(self.timeout)
            .map_err(kerr(format!("committing the fence transaction of task {t}")))
    }

    /// The last committed marker of task `t`: read_committed from the start
    /// of control partition `t` until the read position reaches the
    /// partition's high watermark, i.e. until every transaction in it is
    /// resolved. (End-of-partition alone is not enough: under read_committed
    /// it is reported at the last stable offset, which an unresolved
    /// transaction holds back; stopping there could miss the newest marker
    /// and restore an older checkpoint.)
    fn read_marker(&self, t: u32) -> Result<Option<Marker>> {
        let topic = &self.job.topics.control;
        let (low, high) = self.watermarks(topic, t as i32)?;
        if high <= 0 && low <= 0 {
            // Nothing was ever written: a fresh job (or fresh internal topics).
            return Ok(None);
        }
        let c: BaseConsumer<QuietEof> = self
            .kafka
            .client()
            .set("group.id", format!("{}-markers", self.job.group_id()))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .create_with_context(QuietEof)
            .map_err(kerr("creating the marker reader"))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, t as i32, Offset::Beginning)
            .map_err(kerr("assigning the control partition"))?;
        c.assign(&tpl).map_err(kerr("assigning the control partition"))?;
        let deadline = Instant::now() + self.timeout * 2;
        let mut last: Option<Marker> = None;
        let mut count = 0usize;
        let mut foreign = 0usize;
        loop {
            if Instant::now() > deadline {
                bail!(
                    "task {t}: could not read {topic}-{t} to its end (offset {high}) within {:?}: a transaction in it \
                     stays unresolved; refusing to guess which checkpoint is the last committed one",
                    self.timeout * 2
                );
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
                Some(Err(e)) => return Err(anyhow!("reading {topic}-{t}: {e}")),
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
                    let marker: Marker = serde_json::from_slice(payload).with_context(|| {
                        format!("{topic}-{t} offset {}: not a checkpoint marker", m.offset())
                    })?;
                    if marker.task != t {
                        bail!(
                            "{topic}-{t} offset {} holds a marker of task {}",
                            m.offset(),
                            marker.task
                        );
                    }
                    if marker.job_uid == self.job.uid {
                        count += 1;
                        last = Some(marker);
                    } else {
                        // A deleted job of the same name: its state and
                        // offsets are not ours.
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

    /// (log start, high watermark) of a partition, independent of
    /// transactions (read_uncommitted).
    fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64)> {
        self.meta
            .fetch_watermarks(topic, partition, self.timeout)
            .map_err(kerr(format!("reading offsets of {topic}-{partition}")))
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
                let (low, high) = self.watermarks(&self.job.topics.repartition, t as i32)?;
                if let Decision::Fail(why) = offsets::decide(k, low, high, OffsetOutOfRange::Fail) {
                    return Err(KafkaCondition::new(
                        RDKafkaErrorCode::OffsetOutOfRange,
                        format!(
                            "task {t}: the job's repartition partition {}-{t}: {why}",
                            self.job.topics.repartition
                        ),
                    )
                    .into());
                }
            }
            let Some(position) = position else { continue };
            let (low, high) = self.watermarks(&topic, partition)?;
            match offsets::decide(position, low, high, policy) {
                Decision::InRange => {}
                Decision::Fail(why) => {
                    return Err(KafkaCondition::new(
                        RDKafkaErrorCode::OffsetOutOfRange,
                        format!("task {t}: source partition {topic}-{partition}: {why}"),
                    )
                    .into());
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
            tpl.add_partition_offset(&s.source_topic, s.source_partition, Offset::Offset(so))
                .map_err(kerr("building the assignment"))?;
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
                        &self.job,
                        &self.sources,
                        &self.shared,
                        &mut self.slots,
                        &mut self.out,
                        &self.instance,
                        (m.topic(), m.partition(), m.offset()),
                        m.key(),
                        m.payload().unwrap_or(&[]),
                    )?,
                }
            }
            for s in self.slots.values() {
                s.producer.poll(Duration::ZERO);
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
            super::shared::Command::Savepoint { id, stop } => {
                if self.stopped {
                    self.shared.update_savepoint(&id, |sp| {
                        sp.state = SavepointState::Failed;
                        sp.error = Some("the runtime is stopped (an earlier stop-with-savepoint)".into());
                    });
                    return Ok(());
                }
                if let Err(e) = self.checkpoint_all(Some(&id), stop) {
                    self.shared.update_savepoint(&id, |sp| {
                        sp.state = SavepointState::Failed;
                        sp.error = Some(format!("{e:#}"));
                    });
                    return Err(e);
                }
                let location = self.store.savepoint_location(&id);
                let offsets = self.offsets();
                let checkpoint = self.slots.values().map(|s| s.task.meta.checkpoint_id).max();
                self.shared.update_savepoint(&id, |sp| {
                    sp.state = SavepointState::Completed;
                    sp.location = Some(location);
                    sp.offsets = offsets;
                    sp.checkpoint_id = checkpoint;
                });
                if stop {
                    self.stopped = true;
                    self.shared.update_status(|s| s.state = RunState::Stopped);
                    info!(savepoint = %id, "stopped with savepoint; nothing uncommitted remains");
                }
                Ok(())
            }
            super::shared::Command::Resume => {
                if self.stopped {
                    for s in self.slots.values_mut() {
                        s.begin();
                    }
                    self.stopped = false;
                    self.shared.update_status(|s| s.state = RunState::Running);
                    info!("resumed after a stop");
                }
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

    /// Deletes savepoint `id` from storage unless this process was started
    /// from it; a failure is the caller's answer, never the loop's end.
    fn delete_savepoint(&self, id: &str) -> super::store::DeletionOutcome {
        use super::store::DeletionOutcome;
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
    /// high watermarks in the consumer's last statistics (never a request).
    fn update_lag(&self) {
        let mut total = Some(0i64);
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
                match self.consumer.context().high(topic, partition) {
                    Some(high) => {
                        let lag = (high - position.unwrap_or(0)).max(0);
                        self.shared
                            .metrics
                            .lag
                            .with_label_values(&[stage, &task])
                            .set(lag);
                        if stage == "source" {
                            total = total.map(|v| v + lag);
                        }
                    }
                    None => {
                        debug!(
                            topic,
                            partition, "lag unknown: no statistics for the partition yet"
                        );
                        if stage == "source" {
                            total = None;
                        }
                    }
                }
            }
        }
        self.shared.update_status(|st| st.lag = total);
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
            .filter(|(_, s)| s.held_bytes > share)
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
            s.checkpoint_id = max;
            s.last_commit_ms = Some(now);
        });
    }

    fn checkpoint(&mut self, t: u32, savepoint: Option<&str>, stop: bool) -> Result<()> {
        let started = Instant::now();
        let now = now_ms();
        let slot = self.slots.get_mut(&t).ok_or_else(|| anyhow!("no task {t}"))?;
        let id = slot.open_id;
        let header = wire::header_value(t, id, &self.instance);
        // Stage 1's progress goes to every keyed partition with the outputs.
        if let Some(Out::Watermark { value }) = slot.task.watermark_update(now) {
            if slot.transactional {
                slot.hold(Held::Watermark { value });
            } else {
                broadcast_watermark(&self.job, &slot.producer, &value, &header)?;
            }
        }
        // (1) state and manifest durable; no transaction is open.
        slot.task.meta.checkpoint_id = id;
        let snap = self
            .state_dir
            .join(format!("snapshot-{t}-{id}-{}", self.instance));
        let _ = std::fs::remove_dir_all(&snap);
        slot.task.snapshot(&snap)?;
        if savepoint.is_some() {
            info!(
                task = t,
                checkpoint = id,
                entries = slot.task.open_entries(),
                watermark = slot.task.watermark(),
                source_offset = ?slot.task.meta.source_offset,
                keyed_offset = ?slot.task.meta.keyed_offset,
                counters = ?slot.task.counters,
                "savepoint snapshot"
            );
        }
        let target = match savepoint {
            Some(sp) => Target::Savepoint {
                id: sp,
                checkpoint_id: id,
                instance: &self.instance,
            },
            None => Target::Checkpoint {
                id,
                instance: &self.instance,
                db: &slot.db,
            },
        };
        self.crash.slow_upload();
        let (manifest_path, manifest): (String, Manifest) = self.store.write(t, &snap, target, now)?;
        let _ = std::fs::remove_dir_all(&snap);
        self.crash.hit("after-upload");
        // (2) the transaction: the held outputs, then marker + offsets. The
        // outputs are delivered first, so the marker can carry what the
        // brokers acknowledged of them (its audit trail).
        if slot.transactional {
            slot.producer
                .begin_transaction()
                .map_err(kerr("beginning a transaction"))?;
            let held = std::mem::take(&mut slot.held);
            slot.held_bytes = 0;
            for h in held {
                match h {
                    Held::Out { out, keyed, offset } => {
                        let source = if keyed {
                            (self.job.topics.repartition.as_str(), t as i32, offset)
                        } else {
                            (slot.source_topic.as_str(), slot.source_partition, offset)
                        };
                        emit(&self.job, &self.shared, &slot.producer, &header, out, source)?;
                    }
                    Held::Watermark { value } => {
                        broadcast_watermark(&self.job, &slot.producer, &value, &header)?
                    }
                }
            }
            self.crash.hit("in-transaction");
        }
        flush(&slot.producer, self.timeout)?;
        let outputs = slot.producer.context().take();
        check_delivered(t, id, &outputs)?;
        let marker = Marker {
            job_uid: self.job.uid.clone(),
            task: t,
            checkpoint_id: id,
            instance: self.instance.clone(),
            kind: manifest.kind,
            savepoint_id: savepoint.map(str::to_string),
            generation: self.job.generation,
            manifest: manifest_path.clone(),
            source: slot.task.meta.source.clone(),
            source_offset: slot.task.meta.source_offset.unwrap_or(0),
            keyed_offset: slot.task.meta.keyed_offset.unwrap_or(0),
            time_ms: now,
            delivered: outputs.acked,
        };
        let key = format!("task-{t}");
        send(
            &slot.producer,
            &self.job.topics.control,
            Some(t as i32),
            Some(key.as_bytes()),
            &serde_json::to_vec(&marker)?,
            headers(&header),
        )?;
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
        self.crash.hit("before-commit");
        // (3) commit (at least once: the marker acknowledged is the commit).
        self.crash.arm("in-commit");
        flush(&slot.producer, self.timeout)?;
        check_delivered(t, id, &slot.producer.context().take())?;
        if slot.transactional {
            slot.producer
                .commit_transaction(self.timeout)
                .map_err(kerr(format!("committing checkpoint {id}")))?;
        }
        // The group's offsets only inform lag tools; the marker is what a
        // restart reads. So they are committed after the checkpoint, not in
        // its transaction: `send_offsets_to_transaction` needs the group
        // coordinator, and librdkafka (2.12) can block in it forever,
        // ignoring its timeout, while that coordinator moves between
        // brokers (seen in the broker-fault test: a rolling restart of
        // Apache Kafka left the loop stuck there).
        if let Err(e) = self.consumer.commit(&offsets, CommitMode::Async) {
            debug!(task = t, error = %e, "committing the group's offsets");
        }
        self.crash.hit("after-commit");
        slot.fired_at = None;
        let kind = marker.kind.as_str();
        self.shared.metrics.checkpoints.with_label_values(&[kind]).inc();
        self.shared
            .metrics
            .checkpoint_seconds
            .observe(started.elapsed().as_secs_f64());
        self.shared
            .metrics
            .checkpoint_bytes
            .set(manifest.total_bytes() as i64);
        self.shared
            .metrics
            .checkpoint_uploaded_bytes
            .set(self.store.last_uploaded_bytes as i64);
        debug!(
            task = t,
            checkpoint = id,
            kind,
            bytes = manifest.total_bytes(),
            "committed"
        );
        self.shared.update_status(|s| {
            s.checkpoints.insert(t, id);
        });
        if !stop {
            slot.begin();
        }
        // Retention: the checkpoint the marker names and its predecessor stay.
        if savepoint.is_none() {
            slot.committed.push(manifest_path);
            if slot.committed.len() > 2 {
                slot.committed.remove(0);
            }
            let keep = slot.committed.clone();
            if let Err(e) = self.store.retain(t, &keep, &self.instance) {
                warn!(task = t, error = %format!("{e:#}"), "checkpoint retention failed; will retry");
            }
        }
        Ok(())
    }
}

/// Routes one consumed record to its task and writes what comes out.
#[allow(clippy::too_many_arguments)]
fn on_message(
    job: &JobFile,
    sources: &Sources,
    shared: &Shared,
    slots: &mut BTreeMap<u32, Slot>,
    out: &mut Vec<Out>,
    instance: &str,
    (topic, partition, offset): (&str, i32, i64),
    key: Option<&[u8]>,
    value: &[u8],
) -> Result<()> {
    let now = now_ms();
    let (task, stage) = if topic == job.topics.repartition {
        (partition as u32, "keyed")
    } else {
        let t = sources
            .task_of(topic, partition)
            .ok_or_else(|| anyhow!("record from unassigned partition {topic}-{partition}"))?;
        (t, "source")
    };
    let Some(slot) = slots.get_mut(&task) else {
        bail!("record for task {task}, which this process does not own");
    };
    shared.metrics.records_in.with_label_values(&[stage]).inc();
    out.clear();
    if stage == "keyed" {
        let (dups, keyed) = (
            slot.task.counters.duplicates_dropped,
            slot.task.counters.keyed_records,
        );
        slot.task.on_keyed(offset, value, out)?;
        if slot.task.counters.duplicates_dropped > dups {
            shared.metrics.duplicates_dropped.inc();
        }
        if slot.task.counters.keyed_records > keyed {
            shared.metrics.keyed_records.inc();
        }
        shared
            .metrics
            .watermark
            .with_label_values(&[&task.to_string()])
            .set(slot.task.watermark());
    } else {
        slot.task.on_source(offset, key, value, now, out);
    }
    if slot.transactional {
        if slot.fired_at.is_none()
            && out
                .iter()
                .any(|o| matches!(o, Out::Result { is_final: true, .. }))
        {
            slot.fired_at = Some(Instant::now());
        }
        for o in out.drain(..) {
            slot.hold(Held::Out {
                out: o,
                keyed: stage == "keyed",
                offset,
            });
        }
        return Ok(());
    }
    let header = wire::header_value(task, slot.open_id, instance);
    for o in out.drain(..) {
        emit(
            job,
            shared,
            &slot.producer,
            &header,
            o,
            (topic, partition, offset),
        )?;
    }
    Ok(())
}

/// The task consumer, with the partitions' high watermarks from its
/// statistics.
type TaskConsumer = BaseConsumer<HighWatermarks>;

/// Context of the task consumer: each assigned partition's high watermark
/// as librdkafka's statistics (every [`LAG_INTERVAL`], served by the
/// consumer's poll) last reported it.
#[derive(Default)]
pub struct HighWatermarks {
    high: Mutex<BTreeMap<(String, i32), i64>>,
}

impl HighWatermarks {
    fn high(&self, topic: &str, partition: i32) -> Option<i64> {
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

fn headers(checkpoint: &str) -> OwnedHeaders {
    OwnedHeaders::new().insert(Header {
        key: CHECKPOINT_HEADER,
        value: Some(checkpoint.as_bytes()),
    })
}

/// Waits until every record of `producer` is delivered (or failed), serving
/// its delivery reports. `commit_transaction` flushes too, but rdkafka's
/// `BaseProducer` flush polls in steps that each last a full 100 ms, so a
/// commit with anything in flight took at least 100 ms; this loop returns
/// within a millisecond of the last delivery.
fn flush(producer: &TxProducer, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while producer.in_flight_count() > 0 {
        if Instant::now() > deadline {
            return Err(KafkaCondition::new(
                RDKafkaErrorCode::MessageTimedOut,
                format!(
                    "{} records not delivered within {timeout:?}",
                    producer.in_flight_count()
                ),
            )
            .into());
        }
        producer.poll(Duration::from_millis(1));
    }
    Ok(())
}

/// Produces one record, waiting while the producer's queue is full
/// (backpressure: the consumer is not polled meanwhile).
fn send(
    producer: &TxProducer,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    value: &[u8],
    headers: OwnedHeaders,
) -> Result<()> {
    let mut rec = BaseRecord::to(topic).payload(value).headers(headers);
    if let Some(p) = partition {
        rec = rec.partition(p);
    }
    if let Some(k) = key {
        rec = rec.key(k);
    }
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(anyhow!("producing to {topic}: {e}")),
        }
    }
}

/// Stage 1's watermark to every keyed partition.
fn broadcast_watermark(job: &JobFile, producer: &TxProducer, value: &[u8], header: &str) -> Result<()> {
    for q in 0..job.task_count() as i32 {
        send(
            producer,
            &job.topics.repartition,
            Some(q),
            Some(b"watermark"),
            value,
            headers(header),
        )?;
    }
    Ok(())
}

fn emit(
    job: &JobFile,
    shared: &Shared,
    producer: &TxProducer,
    header: &str,
    out: Out,
    (src_topic, src_partition, src_offset): (&str, i32, i64),
) -> Result<()> {
    let m = &shared.metrics.records_out;
    match out {
        Out::Keyed {
            partition,
            key,
            value,
        } => {
            m.with_label_values(&["keyed"]).inc();
            send(
                producer,
                &job.topics.repartition,
                Some(partition),
                Some(&key),
                &value,
                headers(header),
            )
        }
        Out::Watermark { .. } => Ok(()),
        Out::Result { key, value, .. } => {
            m.with_label_values(&["result"]).inc();
            send(
                producer,
                &job.topics.sink,
                None,
                Some(&key),
                &value,
                headers(header),
            )
        }
        Out::Late { key, value } => match &job.topics.late_events {
            Some(topic) => {
                m.with_label_values(&["late"]).inc();
                send(producer, topic, None, key.as_deref(), &value, headers(header))
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
        } => match &job.topics.dead_letter {
            Some(topic) => {
                m.with_label_values(&["dead_letter"]).inc();
                let partition = src_partition.to_string();
                let offset = src_offset.to_string();
                let h = headers(header)
                    .insert(Header {
                        key: "streamops-error-kind",
                        value: Some(kind),
                    })
                    .insert(Header {
                        key: "streamops-error",
                        value: Some(&reason),
                    })
                    .insert(Header {
                        key: "streamops-source-topic",
                        value: Some(src_topic),
                    })
                    .insert(Header {
                        key: "streamops-source-partition",
                        value: Some(&partition),
                    })
                    .insert(Header {
                        key: "streamops-source-offset",
                        value: Some(&offset),
                    });
                send(producer, topic, None, key.as_deref(), &value, h)
            }
            None => {
                m.with_label_values(&["dead_letter_dropped"]).inc();
                Ok(())
            }
        },
    }
}

/// `transaction.timeout.ms` for the task producers, by the rule the
/// operator checked before starting the job ([`transaction::fit_spec`]),
/// against the broker's maximum as it is now.
fn transaction_timeout(
    kafka: &KafkaSettings,
    spec: &StreamJobSpec,
    rt: &Handle,
    timeout: Duration,
) -> Result<u64> {
    let max = broker_max_transaction_timeout(kafka, rt, timeout).unwrap_or_else(|e| {
        warn!(error = %format!("{e:#}"), "cannot read the broker's transaction.max.timeout.ms; assuming Kafka's default");
        transaction::KAFKA_DEFAULT_MAX_TIMEOUT_MS
    });
    match transaction::fit_spec(spec, max) {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Ok(FENCE_TRANSACTION_TIMEOUT_MS),
        Err(e) => bail!("{}: {}", e.field, e.message),
    }
}

fn broker_max_transaction_timeout(kafka: &KafkaSettings, rt: &Handle, timeout: Duration) -> Result<u64> {
    let admin: AdminClient<DefaultClientContext> = kafka
        .client()
        .create()
        .map_err(kerr("creating an admin client"))?;
    let meta = admin
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(kerr("fetching metadata"))?;
    let broker = meta
        .brokers()
        .first()
        .ok_or_else(|| anyhow!("no brokers in metadata"))?
        .id();
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let res = rt
        .block_on(admin.describe_configs([&ResourceSpecifier::Broker(broker)], &opts))
        .map_err(kerr("describing the broker config"))?;
    for r in res {
        let r = r.map_err(|e| anyhow!("describing the broker config: {e:?}"))?;
        if let Some(v) = r.get("transaction.max.timeout.ms").and_then(|e| e.value.clone()) {
            return v
                .parse()
                .with_context(|| format!("broker transaction.max.timeout.ms {v:?}"));
        }
    }
    bail!("the broker does not report transaction.max.timeout.ms")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::wire::MarkerKind;

    fn marker(generation: i64) -> Marker {
        Marker {
            job_uid: "u".into(),
            task: 0,
            checkpoint_id: 3,
            instance: "i".into(),
            kind: MarkerKind::Checkpoint,
            savepoint_id: None,
            generation,
            manifest: "checkpoints/task-0/3-i/manifest.json".into(),
            source: None,
            source_offset: 10,
            keyed_offset: 4,
            time_ms: 0,
            delivered: BTreeMap::new(),
        }
    }

    #[test]
    fn restore_never_silently_starts_empty() {
        use RestoreMode::*;
        let a0 = SourceRef {
            topic: "a".into(),
            partition: 0,
        };
        let sp = Some("savepoints/sp/task-0/manifest.json".to_string());
        let own = RestoreSource::Checkpoint("checkpoints/task-0/3-i/manifest.json".into());
        // Same generation restarted: its own last checkpoint, whatever the mode.
        for mode in [Savepoint, LastState, Empty] {
            assert_eq!(
                restore_source(Some(&marker(2)), 2, mode, sp.clone(), false, 0, &a0).unwrap(),
                own
            );
        }
        // New generation with a savepoint: the savepoint.
        assert_eq!(
            restore_source(Some(&marker(1)), 2, Savepoint, sp.clone(), false, 0, &a0).unwrap(),
            RestoreSource::Savepoint(sp.clone().unwrap())
        );
        assert!(restore_source(Some(&marker(1)), 2, Savepoint, None, true, 0, &a0).is_err());
        // New generation, last-state: the last checkpoint of the old one.
        assert_eq!(
            restore_source(Some(&marker(1)), 2, LastState, None, false, 0, &a0).unwrap(),
            own
        );
        // Stateless: empty state, reading on from the committed offsets.
        assert_eq!(
            restore_source(Some(&marker(1)), 2, Empty, None, false, 0, &a0).unwrap(),
            RestoreSource::Empty {
                offsets: Some((Some(10), 4))
            }
        );
        // ... but not another partition's offset (a replaced source topic).
        let mut theirs = marker(1);
        theirs.source = Some(SourceRef {
            topic: "b".into(),
            partition: 0,
        });
        assert_eq!(
            restore_source(Some(&theirs), 2, Empty, None, false, 0, &a0).unwrap(),
            RestoreSource::Empty {
                offsets: Some((None, 4))
            }
        );
        theirs.source = Some(a0.clone());
        assert_eq!(
            restore_source(Some(&theirs), 2, Empty, None, false, 0, &a0).unwrap(),
            RestoreSource::Empty {
                offsets: Some((Some(10), 4))
            }
        );
        // Nothing at all: refused unless the spec allows empty state.
        let err = restore_source(None, 1, LastState, None, false, 7, &a0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("task 7") && err.contains("allowEmptyState"), "{err}");
        assert_eq!(
            restore_source(None, 1, LastState, None, true, 0, &a0).unwrap(),
            RestoreSource::Empty { offsets: None }
        );
    }
}
