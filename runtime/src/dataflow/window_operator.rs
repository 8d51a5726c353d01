//! Stage 2: windowing and aggregation of one partition of the keyed stream.

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

/// Index of a key's state in [`WindowOperator::keys`].
type KeyId = u32;

type GroupKey = Box<[u8]>;

/// Bytes of a group key kept inline in its [`KeyState`].
const INLINE_KEY: usize = 22;

/// A group key's bytes: inline when short (read with the key state, no
/// pointer to follow), else boxed.
#[derive(Debug)]
enum KeyBytes {
    Inline(u8, [u8; INLINE_KEY]),
    Heap(GroupKey),
}

impl From<&[u8]> for KeyBytes {
    fn from(key: &[u8]) -> Self {
        if key.len() <= INLINE_KEY {
            let mut b = [0u8; INLINE_KEY];
            b[..key.len()].copy_from_slice(key);
            KeyBytes::Inline(key.len() as u8, b)
        } else {
            KeyBytes::Heap(key.into())
        }
    }
}

impl std::ops::Deref for KeyBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            KeyBytes::Inline(n, b) => &b[..*n as usize],
            KeyBytes::Heap(k) => k,
        }
    }
}

/// Group key -> id, keyed by a 64-bit hash of the key so the bytes live once
/// (in the key state) and a lookup reads the bucket and the key state only.
/// A key whose hash is taken by another key goes to `collisions`.
#[derive(Debug, Default)]
struct KeyIndex {
    by_hash: HashMap<u64, KeyId>,
    collisions: HashMap<GroupKey, KeyId>,
}

impl KeyIndex {
    fn hash(key: &[u8]) -> u64 {
        use std::hash::Hasher;
        let mut h = rustc_hash::FxHasher::default();
        h.write(key);
        h.write_usize(key.len());
        h.finish()
    }

    fn find(&self, keys: &[Option<KeyState>], key: &[u8]) -> Option<KeyId> {
        if let Some(&id) = self.by_hash.get(&Self::hash(key))
            && keys
                .get(id as usize)
                .and_then(Option::as_ref)
                .is_some_and(|ks| *ks.key == *key)
        {
            return Some(id);
        }
        if self.collisions.is_empty() {
            return None;
        }
        self.collisions.get(key).copied()
    }

    fn insert(&mut self, key: &[u8], id: KeyId) {
        match self.by_hash.entry(Self::hash(key)) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(id);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collisions.insert(key.into(), id);
            }
        }
    }

    fn remove(&mut self, key: &[u8], id: KeyId) {
        let h = Self::hash(key);
        if self.by_hash.get(&h) == Some(&id) {
            self.by_hash.remove(&h);
        } else {
            self.collisions.remove(key);
        }
    }
}

/// Accumulators held inline in a slot (jobs with more use a vector).
const INLINE_ACCS: usize = 2;

/// The accumulators of one entry: inline up to [`INLINE_ACCS`] (no
/// allocation, and in the same cache lines as the slot), else a vector.
#[derive(Debug, Clone)]
enum AccSet {
    Inline(u8, [Accumulator; INLINE_ACCS]),
    Heap(Vec<Accumulator>),
}

impl Default for AccSet {
    fn default() -> Self {
        AccSet::Inline(0, [Accumulator::Count(0), Accumulator::Count(0)])
    }
}

impl AccSet {
    fn push(&mut self, acc: Accumulator) {
        match self {
            AccSet::Inline(n, items) if (*n as usize) < INLINE_ACCS => {
                items[*n as usize] = acc;
                *n += 1;
            }
            AccSet::Inline(_, items) => {
                let mut v: Vec<Accumulator> = Vec::with_capacity(INLINE_ACCS * 2);
                v.extend(
                    items
                        .iter_mut()
                        .map(|a| std::mem::replace(a, Accumulator::Count(0))),
                );
                v.push(acc);
                *self = AccSet::Heap(v);
            }
            AccSet::Heap(v) => v.push(acc),
        }
    }

    fn extend(&mut self, accs: impl Iterator<Item = Accumulator>) {
        for a in accs {
            self.push(a);
        }
    }

    fn clear(&mut self) {
        *self = AccSet::default();
    }
}

impl std::ops::Deref for AccSet {
    type Target = [Accumulator];
    fn deref(&self) -> &[Accumulator] {
        match self {
            AccSet::Inline(n, items) => &items[..*n as usize],
            AccSet::Heap(v) => v,
        }
    }
}

impl std::ops::DerefMut for AccSet {
    fn deref_mut(&mut self) -> &mut [Accumulator] {
        match self {
            AccSet::Inline(n, items) => &mut items[..*n as usize],
            AccSet::Heap(v) => v,
        }
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
    /// readers check the key's slots and drop duplicates.
    members: Vec<KeyId>,
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
        if let Some(id) = self.index.find(&self.keys, key) {
            return id;
        }
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

    fn process_session(
        &mut self,
        rec: &KeyedRecord,
        backend: &dyn StateBackend,
        out: &mut Vec<WindowResult>,
    ) -> Result<Disposition> {
        let mut proto = std::mem::take(&mut self.scratch);
        proto.clear();
        self.spec.assigner.assign(rec.event_time, &mut proto);
        let Some(&proto_window) = proto.first() else {
            self.scratch = proto;
            return Ok(Disposition::Unassigned);
        };
        self.scratch = proto;
        let key = rec.group_key.as_slice();
        // The sessions the record bridges (indices into the key's slots).
        let mut merge_idx = std::mem::take(&mut self.merge_idx);
        merge_idx.clear();
        let mut merged = proto_window;
        if let Some(Some(ks)) = self
            .index
            .find(&self.keys, key)
            .and_then(|id| self.keys.get(id as usize))
        {
            for (i, s) in ks.slots.iter().enumerate() {
                if session::touches(&s.window, &proto_window) {
                    merge_idx.push(i);
                    merged.start = merged.start.min(s.window.start);
                    merged.end = merged.end.max(s.window.end);
                }
            }
        }
        if self.is_droppable(&merged) {
            self.merge_idx = merge_idx;
            return Ok(Disposition::Late);
        }
        let id = self.key_id(key);
        self.tick += 1;
        let result = self.add_session(id, key, merged, &merge_idx, rec, backend, out);
        self.merge_idx = merge_idx;
        result.map(|()| Disposition::Accepted)
    }

    #[allow(clippy::too_many_arguments)]
    fn add_session(
        &mut self,
        id: KeyId,
        key: &[u8],
        merged: Window,
        merge_idx: &[usize],
        rec: &KeyedRecord,
        backend: &dyn StateBackend,
        out: &mut Vec<WindowResult>,
    ) -> Result<()> {
        let partition = self.partition;
        let tick = self.tick;
        let Some(Some(ks)) = self.keys.get_mut(id as usize) else {
            return Err(corrupt(partition, "key index out of step"));
        };
        ks.last_used = tick;
        Self::queue_dirty(&mut self.dirty_keys, ks, id);
        // The record falls inside one existing session: update it in place
        // (moved to the end of the key's list, as a merge would).
        if let [i] = *merge_idx
            && ks.slots.get(i).is_some_and(|s| s.window == merged)
        {
            let mut slot = ks.slots.swap_remove(i);
            if !slot.cached {
                let info = self.windows.entry(merged).or_default();
                slot.accs = AccSet::default();
                read_back(
                    backend,
                    partition,
                    &self.spec.functions,
                    &merged,
                    key,
                    &mut slot.accs,
                )?;
                info.spilled = info.spilled.saturating_sub(1);
                info.cached += 1;
                self.spilled = self.spilled.saturating_sub(1);
                self.cached += 1;
                slot.cached = true;
            }
            for (acc, input) in slot.accs.iter_mut().zip(&rec.inputs) {
                acc.add(*input, &rec.values);
            }
            slot.dirty = true;
            ks.slots.push(slot);
        } else {
            let mut accs: Option<AccSet> = None;
            // Remove merged sessions (highest index first keeps indices valid).
            for &i in merge_idx.iter().rev() {
                let old = ks.slots.swap_remove(i);
                let info = self.windows.get_mut(&old.window);
                let prev = if old.cached {
                    if let Some(info) = info {
                        info.cached -= 1;
                    }
                    self.cached -= 1;
                    old.accs
                } else {
                    let mut loaded = AccSet::default();
                    read_back(
                        backend,
                        partition,
                        &self.spec.functions,
                        &old.window,
                        key,
                        &mut loaded,
                    )?;
                    if let Some(info) = info {
                        info.spilled = info.spilled.saturating_sub(1);
                    }
                    self.spilled = self.spilled.saturating_sub(1);
                    loaded
                };
                if old.persisted {
                    self.pending_deletes.push(state::window_key(&old.window, key));
                }
                match &mut accs {
                    Some(e) => {
                        for (acc, p) in e.iter_mut().zip(prev.iter()) {
                            acc.merge(p);
                        }
                    }
                    // The first merged session's state is reused in place.
                    None => accs = Some(prev),
                }
                if self
                    .windows
                    .get(&old.window)
                    .is_some_and(|info| info.cached == 0 && info.spilled == 0)
                {
                    self.windows.remove(&old.window);
                }
            }
            let mut accs = match accs {
                Some(accs) => accs,
                None => {
                    let mut accs = AccSet::default();
                    accs.extend(self.spec.functions.iter().map(|f| Accumulator::new(*f)));
                    accs
                }
            };
            for (acc, input) in accs.iter_mut().zip(&rec.inputs) {
                acc.add(*input, &rec.values);
            }
            let info = self.windows.entry(merged).or_default();
            info.cached += 1;
            info.members.push(id);
            self.cached += 1;
            ks.slots.push(Slot {
                window: merged,
                accs,
                cached: true,
                dirty: true,
                persisted: false,
            });
        }
        if merged.end <= self.watermark || self.spec.emit == EmitMode::OnUpdate {
            let Some(Some(ks)) = self.keys.get(id as usize) else {
                return Ok(());
            };
            if let Some(slot) = ks.slot(&merged) {
                let accs = slot.accs.clone();
                self.fire_on_record(merged, &accs, &rec.group_key, out);
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

    /// A batch with the pending deletes (deletes first: a later put of the
    /// same key in the batch wins).
    fn take_pending(&mut self) -> StateBatch {
        let mut batch = StateBatch {
            range_deletes: std::mem::take(&mut self.pending_range_deletes),
            writes: Vec::new(),
        };
        for k in self.pending_deletes.drain(..) {
            batch.delete(k);
        }
        batch
    }

    /// Brings the backend up to date with memory in one atomic batch
    /// (deletes first, then changed entries, then the watermark).
    pub fn flush(&mut self, backend: &mut dyn StateBackend) -> Result<()> {
        let mut batch = self.take_pending();
        for id in self.dirty_keys.drain(..) {
            let Some(Some(ks)) = self.keys.get_mut(id as usize) else {
                continue;
            };
            if ks.queued {
                ks.queued = false;
                write_dirty(ks, &mut batch);
            }
        }
        batch.put(
            state::meta_key(WATERMARK_META),
            self.watermark.to_le_bytes().to_vec(),
        );
        self.needs_flush = false;
        backend.write(self.partition, batch)
    }

    /// Drops the least recently updated keys from memory (writing their
    /// changed entries, with the pending deletes, in one batch) until at
    /// most 90% of the capacity is cached. Fixed-window keys are forgotten
    /// entirely; session keys keep their session bounds (the index).
    fn evict(&mut self, backend: &mut dyn StateBackend) -> Result<()> {
        let Some(cap) = self.cache_capacity else {
            return Ok(());
        };
        let target = cap - cap / 10;
        let mut excess = self.cached.saturating_sub(target);
        if excess == 0 {
            return Ok(());
        }
        let mut candidates: Vec<(u64, KeyId)> = self
            .keys
            .iter()
            .enumerate()
            .filter_map(|(id, ks)| {
                let ks = ks.as_ref()?;
                ks.slots
                    .iter()
                    .any(|s| s.cached)
                    .then_some((ks.last_used, id as KeyId))
            })
            .collect();
        let session = self.spec.assigner.is_session();
        let mut batch = self.take_pending();
        let mut rest = candidates.as_mut_slice();
        while excess > 0 && !rest.is_empty() {
            // Estimate how many of the coldest keys cover the excess.
            let per_key = (self.cached / rest.len()).max(1);
            let n = excess.div_ceil(per_key).clamp(1, rest.len());
            rest.select_nth_unstable_by_key(n - 1, |c| c.0);
            let (coldest, others) = rest.split_at_mut(n);
            for &(_, id) in coldest.iter() {
                let evicted = self.evict_key(id, session, &mut batch)?;
                excess = excess.saturating_sub(evicted);
            }
            rest = others;
        }
        backend.write(self.partition, batch)
    }

    /// Evicts the cached slots of one key; returns how many.
    fn evict_key(&mut self, id: KeyId, session: bool, batch: &mut StateBatch) -> Result<usize> {
        let ks = self.state_mut(id)?;
        write_dirty(ks, batch);
        ks.queued = false;
        let mut moved: Vec<(Window, bool)> = Vec::with_capacity(ks.slots.len());
        for s in ks.slots.iter_mut().filter(|s| s.cached) {
            // A slot never written has nothing in the backend to come back to.
            moved.push((s.window, s.persisted));
            s.cached = false;
        }
        if session {
            let ks = self.state_mut(id)?;
            ks.slots.retain_mut(|s| {
                if !s.cached {
                    s.accs.clear();
                }
                s.cached || s.persisted
            });
        } else {
            self.free_key(id);
        }
        for &(w, persisted) in &moved {
            let Some(info) = self.windows.get_mut(&w) else {
                continue;
            };
            info.cached -= 1;
            self.cached -= 1;
            if persisted {
                info.spilled += 1;
                self.spilled += 1;
            }
        }
        Ok(moved.len())
    }

    /// Rebuilds the operator of `partition` from the backend (after
    /// [`StateBackend::restore`]), loading at most `cache_capacity` entries
    /// into memory; the rest stay spilled.
    pub fn restore(
        partition: PartitionId,
        spec: Arc<WindowSpec>,
        cache_capacity: Option<usize>,
        backend: &dyn StateBackend,
    ) -> Result<Self> {
        let mut op = WindowOperator::new(partition, spec).with_cache_capacity(cache_capacity);
        if let Some(w) = backend.get(partition, &state::meta_key(WATERMARK_META))? {
            let bytes: [u8; 8] = w
                .as_slice()
                .try_into()
                .map_err(|_| corrupt(partition, "bad watermark"))?;
            op.watermark = EventTime::from_le_bytes(bytes);
        }
        let spec = op.spec.clone();
        let session = spec.assigner.is_session();
        let cap = op.cache_capacity.unwrap_or(usize::MAX);
        let mut entries: Vec<(Window, Vec<u8>, Option<AccSet>)> = Vec::new();
        let mut cached = 0usize;
        backend.range(
            partition,
            &state::window_range_start(),
            Some(&[b'w' + 1][..]),
            &mut |k, v| {
                let (w, group_key) =
                    state::parse_window_key(k).ok_or_else(|| corrupt(partition, "bad key"))?;
                let accs = if cached < cap {
                    cached += 1;
                    let mut accs = AccSet::default();
                    decode_accs(&spec.functions, v, partition, &mut accs)?;
                    Some(accs)
                } else {
                    None
                };
                entries.push((w, group_key.to_vec(), accs));
                Ok(())
            },
        )?;
        for (w, group_key, accs) in entries {
            let cached = accs.is_some();
            if !cached && !session {
                op.windows.entry(w).or_default().spilled += 1;
                op.spilled += 1;
                continue;
            }
            let id = op.key_id(&group_key);
            let info = op.windows.entry(w).or_default();
            info.members.push(id);
            if cached {
                info.cached += 1;
                op.cached += 1;
            } else {
                info.spilled += 1;
                op.spilled += 1;
            }
            op.state_mut(id)?.slots.push(Slot {
                window: w,
                accs: accs.unwrap_or_default(),
                cached,
                dirty: false,
                persisted: true,
            });
        }
        Ok(op)
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

/// Adds the dirty cached slots of `ks` to `batch` and marks them clean.
fn write_dirty(ks: &mut KeyState, batch: &mut StateBatch) {
    for s in ks.slots.iter_mut().filter(|s| s.cached && s.dirty) {
        let mut value = Vec::with_capacity(16 * s.accs.len());
        for acc in s.accs.iter() {
            acc.encode(&mut value);
        }
        batch.put(state::window_key(&s.window, &ks.key), value);
        s.dirty = false;
        s.persisted = true;
    }
}

/// Reads a spilled entry back into `accs` (left empty-initialised if the
/// backend has nothing, which a consistent state never shows).
fn read_back(
    backend: &dyn StateBackend,
    partition: PartitionId,
    functions: &[AggregateFunction],
    w: &Window,
    key: &[u8],
    accs: &mut AccSet,
) -> Result<()> {
    match backend.get(partition, &state::window_key(w, key))? {
        Some(v) => decode_accs(functions, &v, partition, accs),
        None => {
            accs.extend(functions.iter().map(|f| Accumulator::new(*f)));
            Ok(())
        }
    }
}

/// The first 8 bytes of `key`, big-endian, zero-padded: orders like the key
/// up to ties.
fn key_prefix(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(b)
}

fn corrupt(partition: PartitionId, what: &str) -> RuntimeError {
    RuntimeError::CorruptState(format!("partition {partition}: {what}"))
}

/// Decodes the accumulators of one entry into `accs` (appended). An
/// aggregation added since the state was written starts empty.
fn decode_accs(
    functions: &[AggregateFunction],
    mut rest: &[u8],
    partition: PartitionId,
    accs: &mut AccSet,
) -> Result<()> {
    for f in functions {
        if rest.is_empty() {
            accs.push(Accumulator::new(*f));
            continue;
        }
        accs.push(Accumulator::decode(&mut rest).ok_or_else(|| corrupt(partition, "bad value"))?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(key: &[u8]) -> Option<KeyState> {
        Some(KeyState {
            key: key.into(),
            slots: SmallVec::new(),
            last_used: 0,
            queued: false,
        })
    }

    #[test]
    fn key_index_handles_hash_collisions() {
        let keys = vec![state(b"a"), state(b"b"), state(&[7u8; 40])];
        let mut idx = KeyIndex::default();
        idx.insert(b"a", 0);
        // Pretend "b" collides with "a": its hash slot is taken.
        idx.by_hash.insert(KeyIndex::hash(b"b"), 0);
        idx.insert(b"b", 1);
        idx.insert(&[7u8; 40], 2);
        assert_eq!(idx.find(&keys, b"a"), Some(0));
        assert_eq!(idx.find(&keys, b"b"), Some(1));
        assert_eq!(idx.find(&keys, &[7u8; 40]), Some(2));
        assert_eq!(idx.find(&keys, b"c"), None);
        idx.remove(b"b", 1);
        assert_eq!(idx.find(&keys, b"b"), None);
        assert_eq!(idx.find(&keys, b"a"), Some(0));
        assert_eq!(&*keys[2].as_ref().unwrap().key, &[7u8; 40][..]);
    }

    #[test]
    fn acc_set_spills_to_a_vector_past_the_inline_ones() {
        let mut a = AccSet::default();
        for n in 0..5 {
            a.push(Accumulator::Count(n));
        }
        assert_eq!(&a[..], &(0..5).map(Accumulator::Count).collect::<Vec<_>>()[..]);
        a.clear();
        assert!(a.is_empty());
    }
}
