//! The checkpoint protocol of one task (DESIGN.md), written once against
//! two interfaces: a [`TaskLog`] (the task's transactional view of Kafka,
//! [`crate::kafka::producer::KafkaTaskLog`] in the pods, an in-memory
//! transaction log in the tests below) and a [`CheckpointStore`].
//!
//! A checkpoint of task `t` with id `id`:
//!
//! 1. stage 1's watermark joins the outputs (held, or written at once at
//!    least once);
//! 2. the task's state is snapshotted and uploaded with its manifest: the
//!    checkpoint's state is durable before anything of it is visible, and no
//!    transaction is open meanwhile;
//! 3. exactly once: a transaction begins and the outputs held since the last
//!    checkpoint are written into it;
//! 4. every output is acknowledged (at least once: written as they came;
//!    their acknowledgement is what lets the marker cover them);
//! 5. the marker naming the manifest and the input offsets is written;
//! 6. commit (at least once: the marker's acknowledgement is the commit).
//!
//! A restore of task `t`: fence every predecessor (aborting its open
//! transaction), read the last committed marker, decide where the state
//! comes from ([`restore_source`]: never silently empty), download it and
//! open the task at the marker's offsets. A savepoint taken at another task
//! count (a grown source topic) is re-sharded: the task downloads the
//! snapshots of the old tasks that held its key groups and the task
//! metadata of every old task ([`Opening::Resharded`]).
//!
//! A crash between any two steps leaves either the previous checkpoint's
//! marker as the last committed one (and none of this checkpoint's outputs
//! visible) or this one's with all of them: the tests below crash at every
//! [`Step`] and compare with a run that never crashed.

use crate::error::RuntimeError;
use crate::error::{Context as _, Result};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use streamops_crds::job::RestoreMode;
use tracing::info;

use super::marker::{self, CHECKPOINT_HEADER, Marker};
use super::outputs::{self, Destinations, Held, Outbox};
use super::store::{CheckpointStore, Manifest, Target};
use crate::dataflow::key_groups;
use crate::dataflow::sources::SourceRef;
use crate::dataflow::task::{self as dataflow_task, Out, Outputs, Task};

/// One record for a [`TaskLog`].
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub topic: &'a str,
    /// `None`: the log partitions by key.
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// Records the log acknowledged, per topic and partition.
pub type Delivered = BTreeMap<String, BTreeMap<i32, u64>>;

/// What the protocol needs of the log one task writes to.
pub trait TaskLog {
    /// Fences every earlier writer of this task (any version, any
    /// parallelism) and resolves what it left open: its open transaction is
    /// aborted, so the task's control partition can be read to its end.
    fn fence(&mut self) -> Result<()>;
    /// The task's last committed marker of job `job_uid` (read_committed;
    /// markers of another job with the same topics do not count).
    fn last_marker(&mut self, job_uid: &str) -> Result<Option<Marker>>;
    /// Begins a transaction (exactly once only).
    fn begin(&mut self) -> Result<()>;
    /// Writes one record (in the open transaction, if one is open).
    fn send(&mut self, record: &Record<'_>) -> Result<()>;
    /// Waits until everything sent is acknowledged; an error if anything
    /// failed. Returns what was acknowledged since the last call.
    fn flush(&mut self) -> Result<Delivered>;
    /// Commits the open transaction.
    fn commit(&mut self) -> Result<()>;
}

/// The points between the protocol's steps, where the tests (and the
/// runtime's crash points) may stop it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Before the state is uploaded.
    Upload,
    /// The state and manifest are durable; nothing is in a transaction.
    Uploaded,
    /// The held outputs are in the open transaction.
    InTransaction,
    /// The marker is written; the transaction is not committed.
    BeforeCommit,
    /// Committing.
    Commit,
    /// Committed.
    Committed,
    /// The state is downloaded; the task is not open yet.
    Restoring,
}

impl Step {
    /// The steps of a checkpoint, in order.
    pub const CHECKPOINT: [Step; 6] = [
        Step::Upload,
        Step::Uploaded,
        Step::InTransaction,
        Step::BeforeCommit,
        Step::Commit,
        Step::Committed,
    ];
}

/// Called at every [`Step`]: an error stops the protocol there, as a crash
/// would (what was written stays written, nothing else happens).
pub trait Steps {
    fn at(&mut self, step: Step) -> Result<()>;
}

/// What every checkpoint of a process shares.
pub struct Context<'a> {
    pub job_uid: &'a str,
    pub generation: i64,
    /// Random per process start (in every record's header and manifest).
    pub instance: &'a str,
    pub to: Destinations<'a>,
    /// Outputs go into one transaction per checkpoint (exactly once); else
    /// they are written as they come (at least once).
    pub transactional: bool,
}

/// One checkpoint (or savepoint) of one task.
pub struct Request<'a> {
    pub id: u64,
    pub savepoint: Option<&'a str>,
    pub now_ms: i64,
    /// A scratch directory for the snapshot (removed afterwards).
    pub scratch: &'a Path,
    /// Instance id of the task's state backend (names its SSTs in storage).
    pub db: &'a str,
    /// The task's source partition (origin of stage 1's dead letters).
    pub source: (&'a str, i32),
}

/// A committed checkpoint.
#[derive(Debug)]
pub struct Committed {
    pub manifest_path: String,
    pub manifest: Manifest,
    pub marker: Marker,
}

/// The log, the store and the step hook of one task's protocol run.
pub struct Io<'a, L: ?Sized> {
    pub log: &'a mut L,
    pub store: &'a mut CheckpointStore,
    pub steps: &'a mut dyn Steps,
}

/// Where an output goes: held for the checkpoint's transaction (exactly
/// once) or written at once under the open checkpoint's header.
pub fn output<L: TaskLog + ?Sized>(
    cx: &Context<'_>,
    log: &mut L,
    outbox: &mut Outbox,
    header: &str,
    out: Out,
    keyed: bool,
    origin: outputs::Origin<'_>,
) -> Result<()> {
    if cx.transactional {
        outbox.hold(Held::Out {
            out,
            keyed,
            offset: origin.2,
        });
        Ok(())
    } else {
        outputs::write(log, &cx.to, header, out, origin)
    }
}

/// Stage 1's outputs of one source record ([`Task::on_source`]): a keyed
/// record goes where [`output`] sends it, borrowed (copied into the
/// outbox's buffer exactly once, written under `header` at once otherwise);
/// the other outputs are collected in `rest`, for [`output`].
pub struct Stage1Outputs<'a, 'c, L: ?Sized> {
    pub cx: &'a Context<'c>,
    pub log: &'a mut L,
    pub outbox: &'a mut Outbox,
    pub header: &'a str,
    pub rest: &'a mut Vec<Out>,
    /// The first keyed record the log refused.
    pub error: Option<RuntimeError>,
}

impl<L: TaskLog + ?Sized> Outputs for Stage1Outputs<'_, '_, L> {
    fn keyed(&mut self, partition: i32, key: &[u8], value: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if self.cx.transactional {
            self.outbox.hold_keyed(partition, key, value);
        } else {
            self.error =
                outputs::write_keyed(self.log, &self.cx.to, self.header, partition, key, value).err();
        }
    }

    fn result(&mut self, key: Option<&[u8]>, value: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if self.cx.transactional {
            self.outbox.hold_result(key, value);
        } else {
            self.error = outputs::write_result(self.log, &self.cx.to, self.header, key, value).err();
        }
    }

    fn push(&mut self, out: Out) {
        self.rest.push(out);
    }
}

/// Runs the protocol's checkpoint of `task` (module docs, steps 1-6).
pub fn checkpoint<L: TaskLog + ?Sized>(
    cx: &Context<'_>,
    task: &mut Task,
    outbox: &mut Outbox,
    io: Io<'_, L>,
    req: &Request<'_>,
) -> Result<Committed> {
    let t = task.id();
    let id = req.id;
    let header = marker::header_value(t, id, cx.instance);
    // (1) Stage 1's progress goes to every keyed partition with the outputs.
    if let Some(Out::Watermark { value }) = task.watermark_update(req.now_ms) {
        if cx.transactional {
            outbox.hold(Held::Watermark { value });
        } else {
            outputs::broadcast_watermark(io.log, &cx.to, &value, &header)?;
        }
    }
    // (2) State and manifest durable; no transaction is open.
    task.meta.checkpoint_id = id;
    let _ = std::fs::remove_dir_all(req.scratch);
    task.snapshot(req.scratch)?;
    let target = match req.savepoint {
        Some(sp) => Target::Savepoint {
            id: sp,
            checkpoint_id: id,
            instance: cx.instance,
        },
        None => Target::Checkpoint {
            id,
            instance: cx.instance,
            db: req.db,
        },
    };
    io.steps.at(Step::Upload)?;
    let written = io.store.write(t, req.scratch, target, req.now_ms);
    let _ = std::fs::remove_dir_all(req.scratch);
    let (manifest_path, manifest) = written?;
    io.steps.at(Step::Uploaded)?;
    // (3) The transaction and the held outputs, in their order.
    if cx.transactional {
        io.log.begin()?;
        let (held, keyed) = outbox.take();
        for h in held {
            match h {
                Held::Out { out, keyed, offset } => {
                    let origin = if keyed {
                        (cx.to.topics.repartition.as_str(), t as i32, offset)
                    } else {
                        (req.source.0, req.source.1, offset)
                    };
                    outputs::write(io.log, &cx.to, &header, out, origin)?;
                }
                Held::Keyed {
                    partition,
                    start,
                    key_end,
                    end,
                } => outputs::write_keyed(
                    io.log,
                    &cx.to,
                    &header,
                    partition,
                    &keyed[start..key_end],
                    &keyed[key_end..end],
                )?,
                Held::Result {
                    start,
                    key_end,
                    end,
                    keyless,
                } => outputs::write_result(
                    io.log,
                    &cx.to,
                    &header,
                    (!keyless).then(|| &keyed[start..key_end]),
                    &keyed[key_end..end],
                )?,
                Held::Watermark { value } => outputs::broadcast_watermark(io.log, &cx.to, &value, &header)?,
            }
        }
        io.steps.at(Step::InTransaction)?;
    }
    // (4) Every output acknowledged: the marker carries what the log
    // acknowledged of them (its audit trail).
    let delivered = io
        .log
        .flush()
        .with_context(|| format!("task {t}: outputs of checkpoint {id}; not committing it"))?;
    // (5) The marker: the manifest and the offsets to read on from.
    let marker = Marker {
        job_uid: cx.job_uid.to_string(),
        task: t,
        checkpoint_id: id,
        instance: cx.instance.to_string(),
        kind: manifest.kind,
        savepoint_id: req.savepoint.map(str::to_string),
        generation: cx.generation,
        manifest: manifest_path.clone(),
        source: task.meta.source.clone(),
        source_offset: task.meta.source_offset.unwrap_or(0),
        keyed_offset: task.meta.keyed_offset.unwrap_or(0),
        time_ms: req.now_ms,
        delivered,
    };
    let key = format!("task-{t}");
    io.log.send(&Record {
        topic: &cx.to.topics.control,
        partition: Some(t as i32),
        key: Some(key.as_bytes()),
        value: &serde_json::to_vec(&marker)?,
        headers: &[(CHECKPOINT_HEADER, header.as_bytes())],
    })?;
    io.steps.at(Step::BeforeCommit)?;
    // (6) Commit (at least once: the marker acknowledged is the commit).
    io.steps.at(Step::Commit)?;
    io.log
        .flush()
        .with_context(|| format!("task {t}: the marker of checkpoint {id}; not committing it"))?;
    if cx.transactional {
        io.log
            .commit()
            .with_context(|| format!("committing checkpoint {id}"))?;
    }
    io.steps.at(Step::Committed)?;
    Ok(Committed {
        manifest_path,
        manifest,
        marker,
    })
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
        // The last commit is the very savepoint this version is to restore
        // (a rescale within one generation, e.g. a grown source topic): the
        // savepoint it is, so a restore at another task count re-shards it.
        if savepoint_manifest.as_deref() == Some(m.manifest.as_str()) {
            return Ok(RestoreSource::Savepoint(m.manifest.clone()));
        }
        return Ok(RestoreSource::Checkpoint(m.manifest.clone()));
    }
    match mode {
        RestoreMode::Savepoint => savepoint_manifest.map(RestoreSource::Savepoint).ok_or_else(|| {
            RuntimeError::Protocol(format!(
                "task {task}: restore mode savepoint, but no savepoint is named"
            ))
        }),
        RestoreMode::LastState => match marker {
            Some(m) => Ok(RestoreSource::Checkpoint(m.manifest.clone())),
            None if allow_empty => Ok(RestoreSource::Empty { offsets: None }),
            None => Err(RuntimeError::Protocol(format!(
                "task {task}: no committed checkpoint and no savepoint to restore; refusing to start from empty \
                 state (set spec.restore.allowEmptyState: true to start empty)"
            ))),
        },
        RestoreMode::Empty => Ok(RestoreSource::Empty {
            offsets: marker.map(|m| {
                let ours = m.source.as_ref().is_none_or(|s| s == source);
                (ours.then_some(m.source_offset), m.keyed_offset)
            }),
        }),
    }
}

/// How a task is to be restored.
pub struct RestoreRequest<'a> {
    pub mode: RestoreMode,
    /// Location of the savepoint the job file names, if any.
    pub savepoint: Option<&'a str>,
    pub allow_empty: bool,
    /// The task's source partition now.
    pub source: &'a SourceRef,
    /// A scratch directory for the download (removed afterwards).
    pub scratch: &'a Path,
    /// The job's task count now, its key groups and the task's own: a
    /// savepoint taken at another task count is re-sharded.
    pub shape: Shape,
}

/// The job's task count and key groups, and the key groups of the task
/// being restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub tasks: u32,
    pub key_groups: u32,
    pub groups: Range<u32>,
}

/// A restored task, positioned where its state left off (offsets absent
/// when it starts empty at the job's start position).
pub struct Restored {
    pub task: Task,
    pub from: RestoreSource,
    pub manifest: Option<Manifest>,
    /// Restored from the last committed checkpoint of this very generation
    /// (a restart of the same version), not from another version's.
    pub same_generation: bool,
    /// Re-sharded from a savepoint taken at this many tasks.
    pub resharded_from: Option<u32>,
}

/// What a task is opened from.
pub enum Opening<'a> {
    /// Empty state.
    Empty,
    /// The snapshot downloaded to this directory.
    Snapshot(&'a Path),
    /// The snapshots of a drained savepoint taken at another task count,
    /// per old task: complete for the old tasks holding this task's key
    /// groups, only their task metadata for the others
    /// ([`Task::restore_resharded`]).
    Resharded(&'a BTreeMap<u32, PathBuf>),
}

/// Opens a task.
pub type Open<'a> = dyn FnMut(Opening<'_>) -> Result<Task> + 'a;

/// Runs the protocol's restore of task `t` (module docs).
pub fn restore<L: TaskLog + ?Sized>(
    cx: &Context<'_>,
    t: u32,
    io: Io<'_, L>,
    req: &RestoreRequest<'_>,
    open: &mut Open<'_>,
) -> Result<Restored> {
    io.log.fence()?;
    let last = io.log.last_marker(cx.job_uid)?;
    let savepoint = match req.savepoint {
        Some(location) => Some(io.store.savepoint_manifest(location, t)?),
        None => None,
    };
    let same_generation = last.as_ref().is_some_and(|m| m.generation == cx.generation);
    let from = restore_source(
        last.as_ref(),
        cx.generation,
        req.mode,
        savepoint,
        req.allow_empty,
        t,
        req.source,
    )?;
    let resharded = match (&from, req.savepoint) {
        (RestoreSource::Savepoint(_), Some(location)) => {
            savepoint_tasks(io.store, location, req)?.map(|old| (location, old))
        }
        _ => None,
    };
    if let Some((location, old)) = resharded {
        let task = restore_resharded(t, io, req, location, old, open)?;
        return Ok(Restored {
            task,
            from,
            manifest: None,
            same_generation: false,
            resharded_from: Some(old),
        });
    }
    match &from {
        RestoreSource::Empty { offsets } => {
            info!(
                task = t,
                ?offsets,
                "starting with empty state (the spec allows it)"
            );
            let mut task = open(Opening::Empty)?;
            if let Some((source, keyed)) = offsets {
                task.meta.source_offset = *source;
                task.meta.keyed_offset = Some(*keyed);
            }
            Ok(Restored {
                task,
                from,
                manifest: None,
                same_generation: false,
                resharded_from: None,
            })
        }
        RestoreSource::Checkpoint(m) | RestoreSource::Savepoint(m) => {
            let manifest = io.store.read_manifest(m).with_context(|| {
                format!("task {t}: the state named by {from:?} cannot be read; refusing to start without it")
            })?;
            let _ = std::fs::remove_dir_all(req.scratch);
            io.store.download(&manifest, req.scratch)?;
            io.steps.at(Step::Restoring)?;
            let task = open(Opening::Snapshot(req.scratch));
            let _ = std::fs::remove_dir_all(req.scratch);
            let task = task?;
            if let RestoreSource::Checkpoint(_) = &from {
                // Its files stay in storage while a kept manifest names
                // them; a savepoint's may be deleted, so they are not
                // referenced.
                io.store.adopt(t, &manifest);
            }
            info!(
                task = t,
                from = ?from,
                checkpoint = manifest.checkpoint_id,
                entries = task.open_entries(),
                watermark = task.watermark(),
                keyed_offset = ?task.meta.keyed_offset,
                "restored"
            );
            Ok(Restored {
                task,
                same_generation: same_generation && matches!(from, RestoreSource::Checkpoint(_)),
                from,
                manifest: Some(manifest),
                resharded_from: None,
            })
        }
    }
}

/// The task count the savepoint at `location` was taken at, if it is not
/// the job's now (read from its task 0's metadata).
fn savepoint_tasks(store: &CheckpointStore, location: &str, req: &RestoreRequest<'_>) -> Result<Option<u32>> {
    let manifest = store
        .read_manifest(&store.savepoint_manifest(location, 0)?)
        .with_context(|| format!("reading savepoint {location}"))?;
    let dir = req.scratch.join("meta-0");
    let _ = std::fs::remove_dir_all(&dir);
    store.download_only(&manifest, &dir, |path| path == dataflow_task::META_FILE)?;
    let meta = dataflow_task::read_meta(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let old = meta?.task_count;
    Ok((old != req.shape.tasks).then_some(old))
}

/// Task `t` re-sharded from the savepoint at `location`, taken at `old`
/// tasks: the old tasks holding its key groups are downloaded whole, the
/// others' metadata only.
fn restore_resharded<L: TaskLog + ?Sized>(
    t: u32,
    io: Io<'_, L>,
    req: &RestoreRequest<'_>,
    location: &str,
    old: u32,
    open: &mut Open<'_>,
) -> Result<Task> {
    let shape = &req.shape;
    let holders = key_groups::holders(&shape.groups, shape.key_groups, old);
    let _ = std::fs::remove_dir_all(req.scratch);
    let mut dirs = BTreeMap::new();
    let mut bytes = 0;
    for h in 0..old {
        let manifest = io
            .store
            .read_manifest(&io.store.savepoint_manifest(location, h)?)
            .with_context(|| {
                format!("task {t}: re-sharding from savepoint {location} (taken at {old} tasks) needs old task {h}")
            })?;
        let dir = req.scratch.join(format!("task-{h}"));
        if holders.contains(&h) {
            bytes += manifest.total_bytes();
            io.store.download(&manifest, &dir)?;
        } else {
            io.store
                .download_only(&manifest, &dir, |path| path == dataflow_task::META_FILE)?;
        }
        dirs.insert(h, dir);
    }
    io.steps.at(Step::Restoring)?;
    let task = open(Opening::Resharded(&dirs));
    let _ = std::fs::remove_dir_all(req.scratch);
    let task = task?;
    info!(
        task = t,
        savepoint = location,
        from_tasks = old,
        to_tasks = shape.tasks,
        key_groups = ?shape.groups,
        ?holders,
        bytes,
        entries = task.open_entries(),
        keyed_offset = ?task.meta.keyed_offset,
        "re-sharded"
    );
    Ok(task)
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
pub(crate) mod tests;
