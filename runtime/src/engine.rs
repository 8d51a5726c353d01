//! The in-process driver: source records in, results / late records /
//! dead letters out, in a deterministic order.
//!
//! Per record: stage 1 keys it; the keyed record goes to the window operator
//! owning its group key ([`partition_for`]); then the source partition's
//! watermark is updated, and if the job watermark (min over source
//! partitions) advanced, every operator advances in partition order. The
//! Kafka layer runs the same stages with a repartition topic in between and
//! forwards watermarks to stage 2.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use crate::PartitionId;
use crate::codec::output::encode_result;
use crate::error::{Result, RuntimeError};
use crate::operator::keying::{KeyOutcome, KeyingStage};
use crate::operator::partitioner::partition_for;
use crate::operator::window_operator::{OperatorStats, WindowOperator};
use crate::operator::{Disposition, Firing, KeyedRecord, WindowResult};
use crate::plan::Plan;
use crate::state::StateBackend;
use crate::time::{PartitionWatermarks, WatermarkTracker};

/// A record as read from a source partition.
#[derive(Debug, Clone, Copy)]
pub struct SourceRecord<'a> {
    pub partition: PartitionId,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
}

/// Something the engine emits.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// An aggregation result for the sink topic.
    Result {
        /// The keyed-stream partition (state namespace) that produced it.
        partition: PartitionId,
        firing: Firing,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// A record past allowed lateness, unchanged, for the late-events topic.
    Late {
        partition: PartitionId,
        offset: i64,
        key: Option<Vec<u8>>,
        value: Vec<u8>,
    },
    /// A record that could not be processed, with the reason.
    DeadLetter {
        partition: PartitionId,
        offset: i64,
        key: Option<Vec<u8>>,
        value: Vec<u8>,
        kind: &'static str,
        reason: String,
    },
}

/// Counters of the stage-1 paths; with [`Engine::operator_stats`] every
/// input record is accounted for:
/// `records_in = filtered + dead_lettered + accepted + late + unassigned`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineCounters {
    pub records_in: u64,
    pub filtered: u64,
    pub dead_lettered: BTreeMap<&'static str, u64>,
}

/// File in a snapshot directory holding the source partitions' watermarks.
const WATERMARKS_FILE: &str = "source-watermarks.json";
/// Subdirectory of a snapshot holding the state backend's snapshot.
const STATE_DIR: &str = "state";

/// Drives a [`Plan`] over a set of source partitions and keyed partitions.
pub struct Engine<B: StateBackend> {
    plan: Arc<Plan>,
    keying: KeyingStage,
    tracker: WatermarkTracker,
    operators: Vec<WindowOperator>,
    backend: B,
    counters: EngineCounters,
    keyed: KeyedRecord,
    results: Vec<WindowResult>,
    cache_capacity: Option<usize>,
}

impl<B: StateBackend> Engine<B> {
    /// A fresh engine. `keyed_partitions` is the partition count of the keyed
    /// stream (the repartition topic); this engine owns all of them.
    pub fn new(
        plan: Arc<Plan>,
        source_partitions: &[PartitionId],
        keyed_partitions: u32,
        backend: B,
        now_ms: i64,
    ) -> Self {
        let tracker = WatermarkTracker::new(
            source_partitions.iter().copied(),
            plan.out_of_orderness_ms,
            plan.idle_timeout_ms,
            now_ms,
        );
        let operators = (0..keyed_partitions.max(1))
            .map(|p| WindowOperator::new(p, plan.window.clone()))
            .collect();
        Engine {
            keying: KeyingStage::new(plan.keying.clone()),
            plan,
            tracker,
            operators,
            backend,
            counters: EngineCounters::default(),
            keyed: KeyedRecord::default(),
            results: Vec::new(),
            cache_capacity: None,
        }
    }

    /// Bounds each window operator's in-memory cache to `entries` (window,
    /// key) entries; the rest lives only in the backend (see
    /// [`WindowOperator::with_cache_capacity`]). `None`: unbounded.
    pub fn with_cache_capacity(mut self, entries: Option<usize>) -> Self {
        self.cache_capacity = entries;
        self.operators = self
            .operators
            .into_iter()
            .map(|o| o.with_cache_capacity(entries))
            .collect();
        self
    }

    /// Bounds each window operator's in-memory cache to about `bytes` (see
    /// [`WindowOperator::entries_for_bytes`]); the rest lives only in the
    /// backend.
    pub fn with_cache_bytes(self, bytes: usize) -> Self {
        let entries = WindowOperator::entries_for_bytes(&self.plan.window, bytes);
        self.with_cache_capacity(Some(entries))
    }

    /// Write state to the backend whenever windows fire (see
    /// [`WindowOperator::with_flush_on_fire`]).
    pub fn with_flush_on_fire(mut self, on: bool) -> Self {
        self.operators = self
            .operators
            .into_iter()
            .map(|o| o.with_flush_on_fire(on))
            .collect();
        self
    }

    pub fn counters(&self) -> &EngineCounters {
        &self.counters
    }

    /// Stats summed over all window operators.
    pub fn operator_stats(&self) -> OperatorStats {
        let mut s = OperatorStats::default();
        for o in &self.operators {
            let t = o.stats();
            s.accepted += t.accepted;
            s.late_records += t.late_records;
            s.late_window_skips += t.late_window_skips;
            s.unassigned += t.unassigned;
            s.results_early += t.results_early;
            s.results_on_time += t.results_on_time;
            s.results_late += t.results_late;
            s.windows_purged += t.windows_purged;
        }
        s
    }

    /// Live (window, key) entries over all operators, in memory or spilled.
    pub fn open_entries(&self) -> usize {
        self.operators.iter().map(WindowOperator::open_entries).sum()
    }

    /// (window, key) entries held in memory over all operators.
    pub fn cached_entries(&self) -> usize {
        self.operators.iter().map(WindowOperator::cached_entries).sum()
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The job watermark.
    pub fn watermark(&mut self, now_ms: i64) -> i64 {
        self.tracker.current(now_ms)
    }

    /// Processes one source record at processing time `now_ms`.
    pub fn process(&mut self, rec: SourceRecord<'_>, now_ms: i64, out: &mut Vec<Output>) -> Result<()> {
        self.counters.records_in += 1;
        match self.keying.key(rec.value, &mut self.keyed) {
            Ok(KeyOutcome::Filtered) => {
                self.counters.filtered += 1;
                return Ok(());
            }
            Ok(KeyOutcome::Keyed) => {}
            Err(reason) => {
                *self.counters.dead_lettered.entry(reason.kind()).or_default() += 1;
                out.push(Output::DeadLetter {
                    partition: rec.partition,
                    offset: rec.offset,
                    key: rec.key.map(<[u8]>::to_vec),
                    value: rec.value.to_vec(),
                    kind: reason.kind(),
                    reason: reason.to_string(),
                });
                return Ok(());
            }
        }
        let target = partition_for(&self.keyed.group_key, self.operators.len() as u32) as usize;
        let op = &mut self.operators[target];
        self.results.clear();
        if op.process(&self.keyed, &mut self.backend, &mut self.results)? == Disposition::Late {
            out.push(Output::Late {
                partition: rec.partition,
                offset: rec.offset,
                key: rec.key.map(<[u8]>::to_vec),
                value: rec.value.to_vec(),
            });
        }
        Self::emit(&self.plan, op.partition(), &mut self.results, out);
        self.tracker.observe(rec.partition, self.keyed.event_time, now_ms);
        self.advance(now_ms, out)
    }

    /// Re-evaluates the watermark without a record (idle-partition handling
    /// is driven by processing time passing).
    pub fn on_processing_time(&mut self, now_ms: i64, out: &mut Vec<Output>) -> Result<()> {
        self.advance(now_ms, out)
    }

    fn advance(&mut self, now_ms: i64, out: &mut Vec<Output>) -> Result<()> {
        let wm = self.tracker.current(now_ms);
        for op in &mut self.operators {
            if wm <= op.watermark() {
                continue;
            }
            self.results.clear();
            op.advance_watermark(wm, &mut self.backend, &mut self.results)?;
            Self::emit(&self.plan, op.partition(), &mut self.results, out);
            if op.needs_flush() {
                op.flush(&mut self.backend)?;
            }
        }
        Ok(())
    }

    fn emit(plan: &Plan, partition: PartitionId, results: &mut Vec<WindowResult>, out: &mut Vec<Output>) {
        for r in results.drain(..) {
            let (mut key, mut value) = (Vec::new(), Vec::new());
            // `encode_result` reserves what it needs in one step.
            encode_result(&r, &plan.names, &mut key, &mut value);
            out.push(Output::Result {
                partition,
                firing: r.firing,
                key,
                value,
            });
        }
    }

    /// Flushes all operators and writes a self-contained snapshot to `dir`
    /// (which must not exist): the backend snapshot plus source watermarks.
    pub fn snapshot(&mut self, dir: &Path) -> Result<()> {
        for op in &mut self.operators {
            op.flush(&mut self.backend)?;
        }
        fs::create_dir_all(dir)?;
        self.backend.snapshot(&dir.join(STATE_DIR))?;
        let marks: BTreeMap<String, Option<i64>> = self
            .tracker
            .snapshot()
            .into_iter()
            .map(|(p, t)| (p.to_string(), t))
            .collect();
        let json = serde_json::to_vec(&marks).map_err(|e| RuntimeError::Snapshot {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        fs::write(dir.join(WATERMARKS_FILE), json)?;
        Ok(())
    }

    /// Restores an engine owning `source_partitions` and all keyed partitions
    /// from the snapshot at `dir` into `backend`.
    pub fn restore(
        plan: Arc<Plan>,
        dir: &Path,
        source_partitions: &[PartitionId],
        keyed_partitions: u32,
        backend: B,
        now_ms: i64,
    ) -> Result<Self> {
        Self::restore_with_cache(
            plan,
            dir,
            source_partitions,
            keyed_partitions,
            None,
            backend,
            now_ms,
        )
    }

    /// Like [`Engine::restore`], with the cache bound of
    /// [`Engine::with_cache_capacity`] applied while loading state.
    pub fn restore_with_cache(
        plan: Arc<Plan>,
        dir: &Path,
        source_partitions: &[PartitionId],
        keyed_partitions: u32,
        cache_capacity: Option<usize>,
        mut backend: B,
        now_ms: i64,
    ) -> Result<Self> {
        let keyed: Vec<PartitionId> = (0..keyed_partitions.max(1)).collect();
        backend.restore(&dir.join(STATE_DIR), &keyed)?;
        let bytes = fs::read(dir.join(WATERMARKS_FILE))?;
        let marks: BTreeMap<String, Option<i64>> =
            serde_json::from_slice(&bytes).map_err(|e| RuntimeError::Snapshot {
                path: dir.to_path_buf(),
                message: e.to_string(),
            })?;
        let mut saved = PartitionWatermarks::new();
        for (p, t) in marks {
            let p: PartitionId = p.parse().map_err(|_| RuntimeError::Snapshot {
                path: dir.to_path_buf(),
                message: format!("bad partition {p:?}"),
            })?;
            saved.insert(p, t);
        }
        let mut engine = Engine::new(plan.clone(), source_partitions, keyed_partitions, backend, now_ms);
        engine.cache_capacity = cache_capacity;
        engine.tracker.restore(&saved, now_ms);
        engine.operators = keyed
            .iter()
            .map(|p| WindowOperator::restore(*p, plan.window.clone(), cache_capacity, &engine.backend))
            .collect::<Result<_>>()?;
        Ok(engine)
    }
}
