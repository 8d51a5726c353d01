//! Stage 2: windowing and aggregation of one partition of the keyed stream.
//!
//! By concern: this file holds the operator (its state layout, fixed
//! windows, the watermark, firing and purging); [`key_index`] maps group keys
//! to their state; [`accumulators`] holds an entry's aggregates;
//! [`sessions`] assigns and merges session windows; [`cache`] is the
//! write-back cache over the state backend (flush, eviction, read-back,
//! restore).

use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;
use smallvec::SmallVec;
use std::sync::Arc;

use super::{Disposition, Firing, KeyedRecord, WindowResult};
use crate::PartitionId;
use crate::aggregate::{Accumulator, AggregateFunction};
use crate::error::{Result, RuntimeError};
use crate::state::{self, StateBackend, StateBatch};
use crate::time::EventTime;
use crate::time::watermark::NO_WATERMARK;
use crate::window::{Window, WindowAssigner, session};

mod accumulators;
mod cache;
mod key_index;
mod sessions;

use accumulators::{AccSet, INLINE_ACCS, decode_accs};
use cache::{key_prefix, read_back};
use key_index::{KeyBytes, KeyId, KeyIndex};

/// When results are emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmitMode {
    /// One final result per (key, window) when the watermark passes its end,
    /// plus a late firing for every record accepted within allowed lateness.
    #[default]
    OnWindowClose,
    /// Additionally an early (non-final) result after every record added to
    /// a window that has not fired yet.
    OnUpdate,
}

/// The windowing part of a plan; independent of the CRD types.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSpec {
    pub assigner: WindowAssigner,
    /// `allowedLateness` in ms (>= 0).
    pub allowed_lateness_ms: i64,
    pub emit: EmitMode,
    pub functions: Vec<AggregateFunction>,
}

/// Counters of one operator; every record and window ends up in one of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OperatorStats {
    pub accepted: u64,
    pub late_records: u64,
    /// Record/window pairs skipped because that window (but not all of the
    /// record's windows) was past allowed lateness (sliding windows only).
    pub late_window_skips: u64,
    pub unassigned: u64,
    pub results_early: u64,
    pub results_on_time: u64,
    pub results_late: u64,
    pub windows_purged: u64,
}

impl std::ops::AddAssign for OperatorStats {
    fn add_assign(&mut self, o: OperatorStats) {
        self.accepted += o.accepted;
        self.late_records += o.late_records;
        self.late_window_skips += o.late_window_skips;
        self.unassigned += o.unassigned;
        self.results_early += o.results_early;
        self.results_on_time += o.results_on_time;
        self.results_late += o.results_late;
        self.windows_purged += o.windows_purged;
    }
}

/// One (window, key) entry, held by its key.
#[derive(Debug)]
struct Slot {
    window: Window,
    /// The aggregates; empty while not `cached`.
    accs: AccSet,
    /// In memory (authoritative over the backend). A session slot that is not
    /// cached lives only in the backend: it stays here as the session index.
    cached: bool,
    /// Changed since last written to the backend.
    dirty: bool,
    /// Present in the backend (so purging must delete it there).
    persisted: bool,
}

/// Everything the operator holds in memory for one group key: one slot per
/// open window of the key (at most `ceil(size/slide)` for sliding windows),
/// so a record costs one hash lookup whatever its number of windows. The
/// first slot is inline: tumbling keys (one window at a time) never touch a
/// second allocation.
#[derive(Debug)]
struct KeyState {
    key: KeyBytes,
    slots: SmallVec<[Slot; 1]>,
    /// Value of [`WindowOperator::tick`] at the key's last record (eviction
    /// order: least recently updated keys go first).
    last_used: u64,
    /// In [`WindowOperator::dirty_keys`].
    queued: bool,
}

impl KeyState {
    fn slot(&self, w: &Window) -> Option<&Slot> {
        self.slots.iter().find(|s| s.window == *w)
    }
}

/// What the operator knows about one window.
#[derive(Debug, Default)]
struct WindowInfo {
    /// Keys that created a slot for this window, in creation order. May hold
    /// stale ids (evicted or merged-away keys, ids reused by another key):
    /// readers check the key's slots and drop duplicates. Inline for the
    /// few keys of a session window: no allocation per session.
    members: SmallVec<[KeyId; 4]>,
    /// Cached slots of this window.
    cached: usize,
    /// Entries of this window that live only in the backend. Zero means the
    /// backend has nothing this window needs, so a key without a slot is new
    /// without asking the backend.
    spilled: usize,
}

/// Windows and aggregates of one partition.
///
/// Semantics (the contract the brute-force model in the tests re-derives):
/// records are judged against the watermark *before* they advance it. A
/// window `w` accepts a record while `w.end + allowedLateness > W`; a record
/// accepted by a window with `w.end <= W` causes an immediate late firing. On
/// advancing from `W0` to `W1` every window with `W0 < end <= W1` fires (keys
/// in byte order, windows in (end, start) order), then every window with
/// `end + allowedLateness <= W1` is purged from memory and the backend.
///
/// Layout: state is held per group key (one hash lookup per record, one slot
/// per open window of the key); each window lists the keys holding one of its
/// slots, for firing and purging.
///
/// State is cached in memory (write-back); the backend holds a copy brought
/// up to date by [`WindowOperator::flush`] in one batch (on every firing when
/// `flush_on_fire`, before a snapshot, and before firing a window with
/// spilled entries). With a cache capacity (entries), going over it evicts
/// the least recently updated keys (all their entries, written to the
/// backend in one batch if changed) down to 90% of the capacity; evicted
/// entries are read back on their key's next record, and read from the
/// backend when their window fires. Without a capacity everything stays in
/// memory. The session index (each key's open session bounds) always stays
/// in memory.
pub struct WindowOperator {
    partition: PartitionId,
    spec: Arc<WindowSpec>,
    watermark: EventTime,
    /// Group key -> slot in `keys`.
    index: KeyIndex,
    keys: Vec<Option<KeyState>>,
    free_ids: Vec<KeyId>,
    windows: BTreeMap<Window, WindowInfo>,
    /// Keys with dirty slots (may hold stale or repeated ids; see `queued`).
    dirty_keys: Vec<KeyId>,
    /// Counts records; the recency clock of eviction.
    tick: u64,
    /// Initial capacity of a key's slot vector.
    slots_per_key: usize,
    pending_deletes: Vec<Vec<u8>>,
    pending_range_deletes: Vec<(Vec<u8>, Vec<u8>)>,
    flush_on_fire: bool,
    needs_flush: bool,
    /// Cached slots (sum of `WindowInfo::cached`).
    cached: usize,
    /// Entries only in the backend (sum of `WindowInfo::spilled`).
    spilled: usize,
    cache_capacity: Option<usize>,
    stats: OperatorStats,
    scratch: Vec<Window>,
    merge_idx: Vec<usize>,
}

const WATERMARK_META: &str = "watermark";

impl WindowOperator {
    pub fn new(partition: PartitionId, spec: Arc<WindowSpec>) -> Self {
        WindowOperator {
            partition,
            watermark: NO_WATERMARK,
            index: KeyIndex::default(),
            keys: Vec::new(),
            free_ids: Vec::new(),
            windows: BTreeMap::new(),
            dirty_keys: Vec::new(),
            tick: 0,
            slots_per_key: slots_per_key(&spec.assigner),
            spec,
            pending_deletes: Vec::new(),
            pending_range_deletes: Vec::new(),
            flush_on_fire: false,
            needs_flush: false,
            cached: 0,
            spilled: 0,
            cache_capacity: None,
            stats: OperatorStats::default(),
            scratch: Vec::new(),
            merge_idx: Vec::new(),
        }
    }

    /// Write dirty state to the backend whenever windows fire (needed for a
    /// disk backend to hold the state; pointless for the memory backend).
    pub fn with_flush_on_fire(mut self, on: bool) -> Self {
        self.flush_on_fire = on;
        self
    }

    /// Bounds the in-memory cache to `capacity` (window, key) entries
    /// (`None`: unbounded). A capacity of zero is treated as one.
    pub fn with_cache_capacity(mut self, capacity: Option<usize>) -> Self {
        self.cache_capacity = capacity.map(|c| c.max(1));
        self
    }

    /// The cache capacity in (window, key) entries that fits in about
    /// `bytes` of memory for `spec`: an estimate from the in-memory layout
    /// (slot, accumulators, the key's share of its state and index entry,
    /// assuming keys of up to 22 bytes and no heap inside `distinctCount` or
    /// `topK` accumulators, which grow with their values). At least one.
    pub fn entries_for_bytes(spec: &WindowSpec, bytes: usize) -> usize {
        use std::mem::size_of;
        let windows_per_key = slots_per_key(&spec.assigner);
        // The key state (key bytes inline up to 22 bytes), an index bucket,
        // the slot vector's allocation header: spread over the key's slots.
        let per_key = size_of::<Option<KeyState>>() + 16 + 16;
        // Accumulators beyond the inline ones live in a vector of their own.
        let heap_accs = if spec.functions.len() > INLINE_ACCS {
            spec.functions.len() * size_of::<Accumulator>() + 16
        } else {
            0
        };
        let per_entry = size_of::<Slot>() + heap_accs + per_key.div_ceil(windows_per_key);
        (bytes / per_entry).max(1)
    }

    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    pub fn watermark(&self) -> EventTime {
        self.watermark
    }

    pub fn stats(&self) -> OperatorStats {
        self.stats
    }

    /// Number of live (window, key) entries, in memory or spilled; zero once
    /// every window is purged.
    pub fn open_entries(&self) -> usize {
        self.cached + self.spilled
    }

    /// Number of (window, key) entries held in memory.
    pub fn cached_entries(&self) -> usize {
        self.cached
    }

    /// Whether [`WindowOperator::advance_watermark`] asked for a flush.
    pub fn needs_flush(&self) -> bool {
        self.needs_flush
    }

    /// Adds one record; results it causes (early or late firings) are appended
    /// to `out`. The backend is read for evicted entries and written when the
    /// cache overflows.
    pub fn process(
        &mut self,
        rec: &KeyedRecord,
        backend: &mut dyn StateBackend,
        out: &mut Vec<WindowResult>,
    ) -> Result<Disposition> {
        let d = if self.spec.assigner.is_session() {
            self.process_session(rec, &*backend, out)?
        } else {
            self.process_fixed(rec, &*backend, out)?
        };
        match d {
            Disposition::Accepted => self.stats.accepted += 1,
            Disposition::Late => self.stats.late_records += 1,
            Disposition::Unassigned => self.stats.unassigned += 1,
        }
        if self.cache_capacity.is_some_and(|cap| self.cached > cap) {
            self.evict(backend)?;
        }
        Ok(d)
    }

    fn is_droppable(&self, w: &Window) -> bool {
        w.end.saturating_add(self.spec.allowed_lateness_ms) <= self.watermark
    }

    /// The id of `key`'s state, created (empty) if the key has none.
    fn key_id(&mut self, key: &[u8]) -> KeyId {
        match self.index.find(&self.keys, key) {
            Some(id) => id,
            None => self.new_key(key),
        }
    }

    /// The id of new, empty state for `key` (which has none).
    fn new_key(&mut self, key: &[u8]) -> KeyId {
        let state = KeyState {
            key: key.into(),
            slots: SmallVec::with_capacity(self.slots_per_key),
            last_used: 0,
            queued: false,
        };
        let id = match self.free_ids.pop() {
            Some(id) => {
                self.keys[id as usize] = Some(state);
                id
            }
            None => {
                self.keys.push(Some(state));
                (self.keys.len() - 1) as KeyId
            }
        };
        self.index.insert(key, id);
        id
    }

    fn state_mut(&mut self, id: KeyId) -> Result<&mut KeyState> {
        match self.keys.get_mut(id as usize) {
            Some(Some(ks)) => Ok(ks),
            _ => Err(corrupt(self.partition, "key index out of step")),
        }
    }

    /// Forgets a key whose slots are all gone (or evicted).
    fn free_key(&mut self, id: KeyId) {
        let Some(ks) = self.keys.get_mut(id as usize).and_then(Option::take) else {
            return;
        };
        self.index.remove(&ks.key, id);
        self.free_ids.push(id);
    }

    /// Marks `id` as having dirty slots.
    fn queue_dirty(dirty_keys: &mut Vec<KeyId>, ks: &mut KeyState, id: KeyId) {
        if !ks.queued {
            ks.queued = true;
            dirty_keys.push(id);
        }
    }

    /// Emits an early or late result for a slot just updated, if due.
    fn fire_on_record(
        &mut self,
        window: Window,
        accs: &[Accumulator],
        group_key: &[u8],
        out: &mut Vec<WindowResult>,
    ) {
        let firing = if window.end <= self.watermark {
            Firing::Late
        } else if self.spec.emit == EmitMode::OnUpdate {
            Firing::Early
        } else {
            return;
        };
        self.count_result(firing);
        out.push(WindowResult {
            group_key: group_key.to_vec(),
            window,
            firing,
            aggregates: accs.iter().map(Accumulator::result).collect(),
        });
    }

    fn process_fixed(
        &mut self,
        rec: &KeyedRecord,
        backend: &dyn StateBackend,
        out: &mut Vec<WindowResult>,
    ) -> Result<Disposition> {
        let mut windows = std::mem::take(&mut self.scratch);
        windows.clear();
        self.spec.assigner.assign(rec.event_time, &mut windows);
        if windows.is_empty() {
            self.scratch = windows;
            return Ok(Disposition::Unassigned);
        }
        let assigned = windows.len();
        windows.retain(|w| !self.is_droppable(w));
        if windows.is_empty() {
            // Every window of the record is past lateness: a late record,
            // not partial skips.
            self.scratch = windows;
            return Ok(Disposition::Late);
        }
        self.stats.late_window_skips += (assigned - windows.len()) as u64;
        let key = rec.group_key.as_slice();
        let id = self.key_id(key);
        self.tick += 1;
        let tick = self.tick;
        let result = self.add_fixed(id, key, &windows, rec, backend, tick, out);
        self.scratch = windows;
        result.map(|()| Disposition::Accepted)
    }

    #[allow(clippy::too_many_arguments)]
    fn add_fixed(
        &mut self,
        id: KeyId,
        key: &[u8],
        windows: &[Window],
        rec: &KeyedRecord,
        backend: &dyn StateBackend,
        tick: u64,
        out: &mut Vec<WindowResult>,
    ) -> Result<()> {
        let partition = self.partition;
        let late_or_early =
            self.spec.emit == EmitMode::OnUpdate || windows.first().is_some_and(|w| w.end <= self.watermark);
        let Some(Some(ks)) = self.keys.get_mut(id as usize) else {
            return Err(corrupt(partition, "key index out of step"));
        };
        ks.last_used = tick;
        Self::queue_dirty(&mut self.dirty_keys, ks, id);
        for w in windows {
            let pos = match ks.slots.iter().position(|s| s.window == *w) {
                Some(pos) => pos,
                None => {
                    let info = self.windows.entry(*w).or_default();
                    let mut accs = AccSet::default();
                    let mut persisted = false;
                    if info.spilled > 0
                        && let Some(v) = backend.get(partition, &state::window_key(w, key))?
                    {
                        decode_accs(&self.spec.functions, &v, partition, &mut accs)?;
                        info.spilled -= 1;
                        self.spilled -= 1;
                        persisted = true;
                    } else {
                        accs.extend(self.spec.functions.iter().map(|f| Accumulator::new(*f)));
                    }
                    info.cached += 1;
                    info.members.push(id);
                    self.cached += 1;
                    ks.slots.push(Slot {
                        window: *w,
                        accs,
                        cached: true,
                        dirty: false,
                        persisted,
                    });
                    ks.slots.len() - 1
                }
            };
            let slot = &mut ks.slots[pos];
            for (acc, input) in slot.accs.iter_mut().zip(&rec.inputs) {
                acc.add(*input, &rec.values);
            }
            slot.dirty = true;
        }
        if late_or_early {
            // Rare path (late records, onUpdate): look the slots up again.
            for w in windows {
                let Some(Some(ks)) = self.keys.get(id as usize) else {
                    continue;
                };
                let Some(slot) = ks.slot(w) else { continue };
                let accs = slot.accs.clone();
                self.fire_on_record(*w, &accs, &rec.group_key, out);
            }
        }
        Ok(())
    }

    fn count_result(&mut self, firing: Firing) {
        match firing {
            Firing::Early => self.stats.results_early += 1,
            Firing::OnTime => self.stats.results_on_time += 1,
            Firing::Late => self.stats.results_late += 1,
        }
    }

    /// Advances the watermark (ignored unless it increases): fires windows
    /// with `old < end <= new`, then purges windows with
    /// `end + allowedLateness <= new`. The backend is read for spilled
    /// entries (after writing pending changes, so it holds no stale entry).
    pub fn advance_watermark(
        &mut self,
        new: EventTime,
        backend: &mut dyn StateBackend,
        out: &mut Vec<WindowResult>,
    ) -> Result<()> {
        if new <= self.watermark {
            return Ok(());
        }
        let old = self.watermark;
        let lo = Window::new(EventTime::MIN, old.saturating_add(1));
        let hi = Window::new(EventTime::MAX, new);
        // Pending deletes (merged-away sessions) must reach the backend
        // before its entries of a firing window are read.
        if self.windows.range(lo..=hi).any(|(_, s)| s.spilled > 0) {
            self.flush(backend)?;
        }
        self.watermark = new;
        let mut fired = false;
        let functions = &self.spec.functions;
        let partition = self.partition;
        let (keys, index) = (&self.keys, &self.index);
        let cached_slot = |group_key: &[u8], w: &Window| -> bool {
            index
                .find(keys, group_key)
                .and_then(|id| keys.get(id as usize))
                .and_then(Option::as_ref)
                .and_then(|ks| ks.slot(w))
                .is_some_and(|s| s.cached)
        };
        for (w, info) in self.windows.range(lo..=hi) {
            fired = true;
            // Byte order of keys; the first 8 bytes as an integer settle most
            // comparisons without a memcmp call.
            let mut cached: Vec<(u64, &[u8], &[Accumulator])> = info
                .members
                .iter()
                .filter_map(|&id| {
                    let ks = keys.get(id as usize)?.as_ref()?;
                    let slot = ks.slot(w).filter(|s| s.cached)?;
                    Some((key_prefix(&ks.key), &*ks.key, &slot.accs[..]))
                })
                .collect();
            cached.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
            // A key listed twice (id reused after eviction) has one slot.
            cached.dedup_by(|a, b| a.1 == b.1);
            if info.spilled == 0 {
                self.stats.results_on_time += cached.len() as u64;
                out.extend(cached.into_iter().map(|(_, k, accs)| WindowResult {
                    group_key: k.to_vec(),
                    window: *w,
                    firing: Firing::OnTime,
                    aggregates: accs.iter().map(Accumulator::result).collect(),
                }));
                continue;
            }
            let mut sorted: Vec<(Vec<u8>, Vec<serde_json::Value>)> = cached
                .into_iter()
                .map(|(_, k, accs)| (k.to_vec(), accs.iter().map(Accumulator::result).collect()))
                .collect();
            let (from, to) = state::window_range(w);
            let mut accs = AccSet::default();
            backend.range(partition, &from, Some(&to), &mut |k, v| {
                let Some((_, group_key)) = state::parse_window_key(k) else {
                    return Err(corrupt(partition, "bad key"));
                };
                if !cached_slot(group_key, w) {
                    accs.clear();
                    decode_accs(functions, v, partition, &mut accs)?;
                    sorted.push((group_key.to_vec(), accs.iter().map(Accumulator::result).collect()));
                }
                Ok(())
            })?;
            sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            self.stats.results_on_time += sorted.len() as u64;
            for (k, aggregates) in sorted.drain(..) {
                out.push(WindowResult {
                    group_key: k,
                    window: *w,
                    firing: Firing::OnTime,
                    aggregates,
                });
            }
        }
        self.purge();
        if fired && self.flush_on_fire {
            self.needs_flush = true;
        }
        Ok(())
    }

    /// Drops every window with `end + allowedLateness <= watermark` from
    /// memory, and queues its deletion from the backend.
    fn purge(&mut self) {
        while let Some(entry) = self.windows.first_entry() {
            if entry.key().end.saturating_add(self.spec.allowed_lateness_ms) > self.watermark {
                break;
            }
            let (w, info) = entry.remove_entry();
            let mut purged = info.spilled;
            self.spilled -= info.spilled;
            if info.spilled > 0 {
                self.pending_range_deletes.push(state::window_range(&w));
            }
            for id in info.members {
                let Some(Some(ks)) = self.keys.get_mut(id as usize) else {
                    continue;
                };
                // Removing the slot on first sight makes repeated ids harmless.
                let Some(pos) = ks.slots.iter().position(|s| s.window == w) else {
                    continue;
                };
                let slot = ks.slots.remove(pos);
                if slot.cached {
                    purged += 1;
                    self.cached -= 1;
                    if slot.persisted && info.spilled == 0 {
                        self.pending_deletes.push(state::window_key(&w, &ks.key));
                    }
                }
                let empty = ks.slots.is_empty();
                if empty {
                    self.free_key(id);
                }
            }
            self.stats.windows_purged += purged as u64;
        }
    }
}

/// Slots a key usually holds at once: its windows, plus one for windows
/// that ended but are not purged yet (out-of-order records).
fn slots_per_key(assigner: &WindowAssigner) -> usize {
    match *assigner {
        WindowAssigner::Sliding { size, slide } => {
            (size as u64).div_ceil(slide as u64).clamp(1, 15) as usize + 1
        }
        WindowAssigner::Tumbling { .. } | WindowAssigner::Session { .. } => 1,
    }
}

fn corrupt(partition: PartitionId, what: &str) -> RuntimeError {
    RuntimeError::CorruptState(format!("partition {partition}: {what}"))
}
