//! State shared between the pipeline thread and the admin HTTP server, and
//! the test-only crash points.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::checkpoint::store::DeletionOutcome;

pub use streamops_crds::runtime_api::{RuntimeState, RuntimeStatus, SavepointState, SavepointStatus};

/// Offset resets the status keeps (older ones are in the log and the metric).
pub const MAX_OFFSET_RESETS: usize = 16;

/// Work the admin API hands to the processing loop, which owns the
/// storage and the tasks.
#[derive(Debug)]
pub enum Command {
    Savepoint {
        id: String,
        stop: bool,
        /// Drained ([`streamops_crds::runtime_api::SavepointRequest::drain`]).
        drain: bool,
    },
    Resume,
    /// Delete savepoint `id` from storage; the outcome goes to `done`
    /// (nobody may be waiting any more: the admin API answers 202 when the
    /// loop is busy).
    DeleteSavepoint {
        id: String,
        done: tokio::sync::oneshot::Sender<DeletionOutcome>,
    },
}

pub struct Metrics {
    pub registry: Registry,
    pub records_in: IntCounterVec,
    pub records_out: IntCounterVec,
    pub duplicates_dropped: IntCounter,
    /// Keyed data records applied to window state (not replays, not
    /// watermark records).
    pub keyed_records: IntCounter,
    pub checkpoints: IntCounterVec,
    /// Checkpoints a task took before its schedule because a window fired.
    pub early_commits: IntCounter,
    pub buffer_full_commits: IntCounter,
    pub checkpoint_seconds: Histogram,
    pub checkpoint_bytes: IntGauge,
    /// Bytes the last checkpoint actually uploaded (the rest was in storage).
    pub checkpoint_uploaded_bytes: IntGauge,
    pub watermark: IntGaugeVec,
    pub restore_seconds: Histogram,
    pub lag: IntGaugeVec,
    pub offset_resets: IntCounterVec,
    /// Savepoints deleted from storage on the operator's request.
    pub savepoints_deleted: IntCounter,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new_custom(Some("streamops_runtime".into()), None)?;
        let records_in = IntCounterVec::new(
            Opts::new(
                "pipeline_records_in_total",
                "Records read, by stage (source, keyed)",
            ),
            &["stage"],
        )?;
        let records_out = IntCounterVec::new(
            Opts::new(
                "pipeline_records_out_total",
                "Records written, by path (keyed, result, routed, late, dead_letter, late_dropped, dead_letter_dropped)",
            ),
            &["path"],
        )?;
        let duplicates_dropped = IntCounter::new(
            "pipeline_keyed_duplicates_dropped_total",
            "Keyed records already processed from their upstream (replays after a restore)",
        )?;
        let keyed_records = IntCounter::new(
            "pipeline_keyed_records_total",
            "Keyed data records applied to window state (stage 2; replays and watermark records excluded)",
        )?;
        let checkpoints = IntCounterVec::new(
            Opts::new(
                "checkpoints_total",
                "Committed checkpoints, by kind (checkpoint, savepoint)",
            ),
            &["kind"],
        )?;
        let early_commits = IntCounter::new(
            "checkpoints_early_total",
            "Checkpoints taken before their schedule because a window fired (exactly once: results visible sooner)",
        )?;
        let buffer_full_commits = IntCounter::new(
            "checkpoints_buffer_full_total",
            "Checkpoints taken before their schedule because the task's share of --output-buffer-bytes was full \
             (exactly once: outputs wait in memory until their checkpoint's transaction)",
        )?;
        let checkpoint_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "checkpoint_duration_seconds",
                "Snapshot + upload + commit, per task",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        let checkpoint_uploaded_bytes = IntGauge::new(
            "checkpoint_uploaded_bytes",
            "Bytes the last checkpoint uploaded (files already in storage are referenced)",
        )?;
        let checkpoint_bytes = IntGauge::new(
            "checkpoint_size_bytes",
            "Size of the last checkpoint (all files listed)",
        )?;
        let watermark = IntGaugeVec::new(
            Opts::new(
                "watermark_ms",
                "Watermark of each keyed partition (event time, ms)",
            ),
            &["task"],
        )?;
        let restore_seconds = Histogram::with_opts(HistogramOpts::new(
            "restore_duration_seconds",
            "Time to restore a task's state at start",
        ))?;
        let lag = IntGaugeVec::new(
            Opts::new(
                "consumer_lag_records",
                "High watermark minus read position, by stage (source, keyed) and task",
            ),
            &["stage", "task"],
        )?;
        let offset_resets = IntCounterVec::new(
            Opts::new(
                "source_offset_resets_total",
                "Source positions no longer in their partition, reset by spec.source.onOffsetOutOfRange, by topic \
                 and partition",
            ),
            &["topic", "partition"],
        )?;
        let savepoints_deleted = IntCounter::new(
            "savepoints_deleted_total",
            "Savepoints deleted from storage through DELETE /v1/savepoints/{id} (those that still had objects)",
        )?;
        for c in [
            Box::new(offset_resets.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(savepoints_deleted.clone()),
            Box::new(records_in.clone()),
            Box::new(records_out.clone()),
            Box::new(duplicates_dropped.clone()),
            Box::new(keyed_records.clone()),
            Box::new(checkpoints.clone()),
            Box::new(early_commits.clone()),
            Box::new(buffer_full_commits.clone()),
            Box::new(checkpoint_seconds.clone()),
            Box::new(checkpoint_bytes.clone()),
            Box::new(checkpoint_uploaded_bytes.clone()),
            Box::new(watermark.clone()),
            Box::new(restore_seconds.clone()),
            Box::new(lag.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Metrics {
            registry,
            records_in,
            records_out,
            duplicates_dropped,
            keyed_records,
            checkpoints,
            early_commits,
            buffer_full_commits,
            checkpoint_seconds,
            checkpoint_bytes,
            checkpoint_uploaded_bytes,
            watermark,
            restore_seconds,
            lag,
            offset_resets,
            savepoints_deleted,
        })
    }
}

pub struct Shared {
    pub status: Mutex<RuntimeStatus>,
    pub savepoints: Mutex<BTreeMap<String, SavepointStatus>>,
    pub commands: Mutex<VecDeque<Command>>,
    pub shutdown: AtomicBool,
    pub metrics: Metrics,
    pub heartbeat: Heartbeat,
}

/// When the processing loop last turned, for `/healthz`: a loop stuck in a
/// call that never returns (a Kafka client call blocked past its timeout,
/// as librdkafka's transactional calls can be while a coordinator moves)
/// must make the pod unhealthy, so that Kubernetes restarts it and the
/// restart restores the last checkpoint, instead of a Ready pod that
/// processes nothing.
#[derive(Debug)]
pub struct Heartbeat {
    origin: Instant,
    /// Milliseconds since `origin` of the last beat, plus one (0: no beat yet).
    last: AtomicU64,
    /// How long the loop may stay in one turn (ms; 0: not armed yet).
    limit: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            limit: AtomicU64::new(0),
        }
    }
}

impl Heartbeat {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// The loop turned (arms the check with `limit_ms`).
    pub fn beat(&self, limit_ms: u64) {
        self.limit.store(limit_ms, Ordering::Relaxed);
        self.last.store(self.now_ms() + 1, Ordering::Relaxed);
    }

    /// Milliseconds the loop has been stuck beyond its limit, if it is.
    pub fn stalled_for(&self) -> Option<u64> {
        stalled_for(
            self.now_ms(),
            self.last.load(Ordering::Relaxed),
            self.limit.load(Ordering::Relaxed),
        )
    }
}

/// How long a loop whose last beat was at `last_plus_one - 1` has gone
/// without one at `now`, if that exceeds `limit` (0 for either: not armed).
pub fn stalled_for(now_ms: u64, last_plus_one: u64, limit_ms: u64) -> Option<u64> {
    if last_plus_one == 0 || limit_ms == 0 {
        return None;
    }
    let since = now_ms.saturating_sub(last_plus_one - 1);
    (since > limit_ms).then_some(since)
}

impl Shared {
    pub fn new(generation: i64, tasks: Vec<u32>) -> prometheus::Result<Shared> {
        Ok(Shared {
            status: Mutex::new(RuntimeStatus {
                tasks: tasks.into_iter().map(|t| t as i32).collect(),
                ..RuntimeStatus::new(RuntimeState::Starting, generation)
            }),
            savepoints: Mutex::new(BTreeMap::new()),
            commands: Mutex::new(VecDeque::new()),
            shutdown: AtomicBool::new(false),
            metrics: Metrics::new()?,
            heartbeat: Heartbeat::default(),
        })
    }

    pub fn status(&self) -> RuntimeStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn update_status(&self, f: impl FnOnce(&mut RuntimeStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn push(&self, c: Command) {
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(c);
    }

    pub fn pop(&self) -> Option<Command> {
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    pub fn savepoint(&self, id: &str) -> Option<SavepointStatus> {
        self.savepoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Registers a savepoint request; false if the id is already known.
    pub fn request_savepoint(&self, id: &str, stop: bool, drain: bool) -> bool {
        let mut map = self.savepoints.lock().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(id) {
            return false;
        }
        map.insert(
            id.to_string(),
            SavepointStatus {
                id: id.to_string(),
                state: SavepointState::InProgress,
                stop,
                location: None,
                checkpoint_id: None,
                offsets: BTreeMap::new(),
                error: None,
                drained: false,
                bytes: None,
            },
        );
        drop(map);
        self.push(Command::Savepoint {
            id: id.to_string(),
            stop,
            drain,
        });
        true
    }

    /// Asks the processing loop to delete savepoint `id` from storage; the
    /// receiver gets the outcome once the loop got to it.
    pub fn request_deletion(&self, id: &str) -> tokio::sync::oneshot::Receiver<DeletionOutcome> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.push(Command::DeleteSavepoint {
            id: id.to_string(),
            done,
        });
        outcome
    }

    /// Forgets savepoint `id` (deleted from storage): it is no longer
    /// reported as Completed at a location that is gone.
    pub fn forget_savepoint(&self, id: &str) {
        self.savepoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    pub fn update_savepoint(&self, id: &str, f: impl FnOnce(&mut SavepointStatus)) {
        if let Some(sp) = self
            .savepoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(id)
        {
            f(sp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_is_stalled_only_past_its_limit_once_armed() {
        assert_eq!(stalled_for(10_000, 0, 5_000), None, "no beat yet");
        assert_eq!(stalled_for(10_000, 1, 0), None, "not armed");
        assert_eq!(stalled_for(6_000, 1_001, 5_000), None, "5 s since the beat");
        assert_eq!(stalled_for(6_001, 1_001, 5_000), Some(5_001));
        assert_eq!(stalled_for(500, 1_001, 5_000), None, "clock behind the beat");
    }
}
