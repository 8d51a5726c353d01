//! Stage 2: windowing and aggregation of one partition of the keyed stream.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;
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

#[derive(Debug, Clone)]
struct Entry {
    accs: Vec<Accumulator>,
    /// Changed since last written to the backend.
    dirty: bool,
    /// Present in the backend (so purging must delete it there).
    persisted: bool,
}

type GroupKey = Box<[u8]>;

/// The entries of one window.
#[derive(Debug, Default)]
struct WindowSlot {
    /// Entries held in memory (the cache); authoritative over the backend.
    keys: HashMap<GroupKey, Entry>,
    /// Entries of this window that live only in the backend (evicted). Zero
    /// means the backend has nothing this window needs, so a key missing from
    /// `keys` is new without asking the backend.
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
/// State is cached in memory (write-back); the backend holds a copy brought
/// up to date by [`WindowOperator::flush`] in one batch (on every firing when
/// `flush_on_fire`, before a snapshot, and before evicting). With a cache
/// capacity (entries), going over it flushes and then evicts clean entries,
/// windows that fire last first, down to 90% of the capacity; evicted entries
/// are read back on their next record, and read from the backend when their
/// window fires. Without a capacity everything stays in memory. The session
/// index (each key's open session bounds) always stays in memory.
pub struct WindowOperator {
    partition: PartitionId,
    spec: Arc<WindowSpec>,
    watermark: EventTime,
    windows: BTreeMap<Window, WindowSlot>,
    /// Session windows of each key (session assigner only).
    sessions: HashMap<GroupKey, Vec<Window>>,
    pending_deletes: Vec<Vec<u8>>,
    pending_range_deletes: Vec<(Vec<u8>, Vec<u8>)>,
    flush_on_fire: bool,
    needs_flush: bool,
    /// Entries in memory (sum of `keys.len()`).
    cached: usize,
    /// Entries only in the backend (sum of `spilled`).
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
            spec,
            watermark: NO_WATERMARK,
            windows: BTreeMap::new(),
            sessions: HashMap::default(),
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

    fn process_fixed(
        &mut self,
        rec: &KeyedRecord,
        backend: &dyn StateBackend,
        out: &mut Vec<WindowResult>,
    ) -> Result<Disposition> {
        let mut windows = std::mem::take(&mut self.scratch);
        windows.clear();
        self.spec.assigner.assign(rec.event_time, &mut windows);
        let mut disposition = if windows.is_empty() {
            Disposition::Unassigned
        } else {
            Disposition::Late
        };
        let key = rec.group_key.as_slice();
        for w in &windows {
            if self.is_droppable(w) {
                self.stats.late_window_skips += 1;
                continue;
            }
            disposition = Disposition::Accepted;
            let spec = &self.spec;
            let slot = self.windows.entry(*w).or_default();
            if !slot.keys.contains_key(key) {
                let e = match load(backend, self.partition, &spec.functions, slot, w, key)? {
                    Some(e) => {
                        self.spilled -= 1;
                        e
                    }
                    None => new_entry(&spec.functions),
                };
                self.cached += 1;
                slot.keys.insert(key.into(), e);
            }
            let Some(entry) = slot.keys.get_mut(key) else {
                continue;
            };
            for (acc, input) in entry.accs.iter_mut().zip(&rec.inputs) {
                acc.add(*input, &rec.values);
            }
            entry.dirty = true;
            let firing = if w.end <= self.watermark {
                Some(Firing::Late)
            } else if spec.emit == EmitMode::OnUpdate {
                Some(Firing::Early)
            } else {
                None
            };
            if let Some(firing) = firing {
                let aggregates = entry.accs.iter().map(Accumulator::result).collect();
                self.count_result(firing);
                out.push(WindowResult {
                    group_key: rec.group_key.clone(),
                    window: *w,
                    firing,
                    aggregates,
                });
            }
        }
        if disposition == Disposition::Late {
            // The skips were all of the record's windows: not partial skips.
            self.stats.late_window_skips -= windows.len() as u64;
        }
        self.scratch = windows;
        Ok(disposition)
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
        let existing: &[Window] = self.sessions.get(key).map_or(&[], Vec::as_slice);
        let merged = session::merge_target(existing, proto_window, &mut self.merge_idx);
        if self.is_droppable(&merged) {
            return Ok(Disposition::Late);
        }
        let mut entry: Option<Entry> = None;
        // Taken out and put back: no key allocation for a known key.
        let mut key_sessions = match self.sessions.get_mut(key) {
            Some(list) => std::mem::take(list),
            None => Vec::new(),
        };
        // Remove merged sessions (highest index first keeps indices valid).
        for &i in self.merge_idx.iter().rev() {
            let old = key_sessions.swap_remove(i);
            let Some(slot) = self.windows.get_mut(&old) else {
                continue;
            };
            let prev = match slot.keys.remove(key) {
                Some(prev) => {
                    self.cached -= 1;
                    Some(prev)
                }
                None => {
                    let loaded = load(backend, self.partition, &self.spec.functions, slot, &old, key)?;
                    if loaded.is_some() {
                        self.spilled -= 1;
                    }
                    loaded
                }
            };
            if let Some(mut prev) = prev {
                if prev.persisted {
                    self.pending_deletes.push(state::window_key(&old, key));
                }
                match &mut entry {
                    Some(e) => {
                        for (acc, p) in e.accs.iter_mut().zip(&prev.accs) {
                            acc.merge(p);
                        }
                    }
                    // The first merged session's state is reused in place.
                    None => {
                        prev.persisted = false;
                        entry = Some(prev);
                    }
                }
            }
            if slot.keys.is_empty() && slot.spilled == 0 {
                self.windows.remove(&old);
            }
        }
        let mut entry = entry.unwrap_or_else(|| new_entry(&self.spec.functions));
        for (acc, input) in entry.accs.iter_mut().zip(&rec.inputs) {
            acc.add(*input, &rec.values);
        }
        entry.dirty = true;
        let firing = if merged.end <= self.watermark {
            Some(Firing::Late)
        } else if self.spec.emit == EmitMode::OnUpdate {
            Some(Firing::Early)
        } else {
            None
        };
        if let Some(firing) = firing {
            let aggregates = entry.accs.iter().map(Accumulator::result).collect();
            self.count_result(firing);
            out.push(WindowResult {
                group_key: rec.group_key.clone(),
                window: merged,
                firing,
                aggregates,
            });
        }
        if self
            .windows
            .entry(merged)
            .or_default()
            .keys
            .insert(key.into(), entry)
            .is_none()
        {
            self.cached += 1;
        }
        key_sessions.push(merged);
        match self.sessions.get_mut(key) {
            Some(list) => *list = key_sessions,
            None => {
                self.sessions.insert(key.into(), key_sessions);
            }
        }
        Ok(Disposition::Accepted)
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
        // before its entries of a firing window are read. Purging reads the
        // backend only to clean the session index, where stale keys are
        // harmless.
        if self.windows.range(lo..=hi).any(|(_, s)| s.spilled > 0) {
            self.flush(backend)?;
        }
        self.watermark = new;
        let mut fired = false;
        let functions = &self.spec.functions;
        let partition = self.partition;
        for (w, slot) in self.windows.range(lo..=hi) {
            fired = true;
            // Byte order of keys; the first 8 bytes as an integer settle most
            // comparisons without a memcmp call.
            let mut cached: Vec<(u64, &[u8], &Entry)> =
                slot.keys.iter().map(|(k, e)| (key_prefix(k), &**k, e)).collect();
            cached.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
            if slot.spilled == 0 {
                self.stats.results_on_time += cached.len() as u64;
                out.extend(cached.into_iter().map(|(_, k, e)| WindowResult {
                    group_key: k.to_vec(),
                    window: *w,
                    firing: Firing::OnTime,
                    aggregates: e.accs.iter().map(Accumulator::result).collect(),
                }));
                continue;
            }
            let mut sorted: Vec<(Vec<u8>, Vec<serde_json::Value>)> = cached
                .into_iter()
                .map(|(_, k, e)| (k.to_vec(), e.accs.iter().map(Accumulator::result).collect()))
                .collect();
            let (from, to) = state::window_range(w);
            backend.range(partition, &from, Some(&to), &mut |k, v| {
                let Some((_, group_key)) = state::parse_window_key(k) else {
                    return Err(corrupt(partition, "bad key"));
                };
                if !slot.keys.contains_key(group_key) {
                    let accs = decode_accs(functions, v, partition)?;
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
        while let Some(entry) = self.windows.first_entry() {
            if entry.key().end.saturating_add(self.spec.allowed_lateness_ms) > self.watermark {
                break;
            }
            let (w, slot) = entry.remove_entry();
            self.stats.windows_purged += (slot.keys.len() + slot.spilled) as u64;
            self.cached -= slot.keys.len();
            self.spilled -= slot.spilled;
            if slot.spilled > 0 {
                let (from, to) = state::window_range(&w);
                if self.spec.assigner.is_session() {
                    let sessions = &mut self.sessions;
                    backend.range(partition, &from, Some(&to), &mut |k, _| {
                        if let Some((_, group_key)) = state::parse_window_key(k) {
                            remove_session(sessions, group_key, &w);
                        }
                        Ok(())
                    })?;
                }
                self.pending_range_deletes.push((from, to));
            }
            for (k, e) in slot.keys {
                if e.persisted && slot.spilled == 0 {
                    self.pending_deletes.push(state::window_key(&w, &k));
                }
                remove_session(&mut self.sessions, &k, &w);
            }
        }
        if fired && self.flush_on_fire {
            self.needs_flush = true;
        }
        Ok(())
    }

    /// Brings the backend up to date with memory in one atomic batch
    /// (deletes first, then changed entries, then the watermark).
    pub fn flush(&mut self, backend: &mut dyn StateBackend) -> Result<()> {
        let mut batch = StateBatch {
            range_deletes: std::mem::take(&mut self.pending_range_deletes),
            writes: Vec::new(),
        };
        for k in self.pending_deletes.drain(..) {
            batch.delete(k);
        }
        // A scan of the cache instead of a dirty list: no allocation per
        // changed entry, and flushes are rare (firings, evictions, snapshots).
        for (w, slot) in &mut self.windows {
            for (k, e) in slot.keys.iter_mut().filter(|(_, e)| e.dirty) {
                let mut value = Vec::with_capacity(16 * e.accs.len());
                for acc in &e.accs {
                    acc.encode(&mut value);
                }
                batch.put(state::window_key(w, k), value);
                e.dirty = false;
                e.persisted = true;
            }
        }
        batch.put(
            state::meta_key(WATERMARK_META),
            self.watermark.to_le_bytes().to_vec(),
        );
        self.needs_flush = false;
        backend.write(self.partition, batch)
    }

    /// Flushes, then drops clean entries from memory down to 90% of the
    /// capacity, starting with the windows that fire last (furthest from
    /// being read again in full).
    fn evict(&mut self, backend: &mut dyn StateBackend) -> Result<()> {
        let Some(cap) = self.cache_capacity else {
            return Ok(());
        };
        self.flush(backend)?;
        let target = cap - cap / 10;
        let mut excess = self.cached.saturating_sub(target);
        for slot in self.windows.values_mut().rev() {
            if excess == 0 {
                break;
            }
            let before = slot.keys.len();
            slot.keys.retain(|_, _| {
                if excess > 0 {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
            let evicted = before - slot.keys.len();
            slot.spilled += evicted;
            self.spilled += evicted;
            self.cached -= evicted;
        }
        Ok(())
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
        let functions = op.spec.functions.clone();
        let session = op.spec.assigner.is_session();
        let cap = op.cache_capacity.unwrap_or(usize::MAX);
        let (windows, sessions) = (&mut op.windows, &mut op.sessions);
        let (cached, spilled) = (&mut op.cached, &mut op.spilled);
        backend.range(
            partition,
            &state::window_range_start(),
            Some(&[b'w' + 1][..]),
            &mut |k, v| {
                let (w, group_key) =
                    state::parse_window_key(k).ok_or_else(|| corrupt(partition, "bad key"))?;
                let slot = windows.entry(w).or_default();
                if *cached < cap {
                    let entry = Entry {
                        accs: decode_accs(&functions, v, partition)?,
                        dirty: false,
                        persisted: true,
                    };
                    slot.keys.insert(group_key.into(), entry);
                    *cached += 1;
                } else {
                    slot.spilled += 1;
                    *spilled += 1;
                }
                if session {
                    sessions.entry(group_key.into()).or_default().push(w);
                }
                Ok(())
            },
        )?;
        Ok(op)
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

fn remove_session(sessions: &mut HashMap<GroupKey, Vec<Window>>, key: &[u8], w: &Window) {
    if let Some(list) = sessions.get_mut(key) {
        list.retain(|s| s != w);
        if list.is_empty() {
            sessions.remove(key);
        }
    }
}

/// Reads an evicted entry back (only asks the backend when the window has
/// spilled entries); decrements `slot.spilled` when found. The caller owns
/// the operator-wide count.
fn load(
    backend: &dyn StateBackend,
    partition: PartitionId,
    functions: &[AggregateFunction],
    slot: &mut WindowSlot,
    w: &Window,
    key: &[u8],
) -> Result<Option<Entry>> {
    if slot.spilled == 0 {
        return Ok(None);
    }
    let Some(v) = backend.get(partition, &state::window_key(w, key))? else {
        return Ok(None);
    };
    slot.spilled -= 1;
    Ok(Some(Entry {
        accs: decode_accs(functions, &v, partition)?,
        dirty: false,
        persisted: true,
    }))
}

/// Decodes the accumulators of one entry. An aggregation added since the
/// state was written starts empty.
fn decode_accs(
    functions: &[AggregateFunction],
    mut rest: &[u8],
    partition: PartitionId,
) -> Result<Vec<Accumulator>> {
    let mut accs = Vec::with_capacity(functions.len());
    for f in functions {
        if rest.is_empty() {
            accs.push(Accumulator::new(*f));
            continue;
        }
        accs.push(Accumulator::decode(&mut rest).ok_or_else(|| corrupt(partition, "bad value"))?);
    }
    Ok(accs)
}

fn new_entry(functions: &[AggregateFunction]) -> Entry {
    Entry {
        accs: functions.iter().map(|f| Accumulator::new(*f)).collect(),
        dirty: false,
        persisted: false,
    }
}
