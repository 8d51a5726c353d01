//! The write-back cache over the state backend: pending writes and deletes
//! flushed in one batch, eviction of the least recently updated keys, spilled
//! entries read back, and the operator rebuilt from the backend.

use super::*;

impl WindowOperator {
    /// A batch with the pending deletes (deletes first: a later put of the
    /// same key in the batch wins).
    pub(super) fn take_pending(&mut self) -> StateBatch {
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
    pub(super) fn evict(&mut self, backend: &mut dyn StateBackend) -> Result<()> {
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
    pub(super) fn evict_key(&mut self, id: KeyId, session: bool, batch: &mut StateBatch) -> Result<usize> {
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

/// Adds the dirty cached slots of `ks` to `batch` and marks them clean.
pub(super) fn write_dirty(ks: &mut KeyState, batch: &mut StateBatch) {
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
pub(super) fn read_back(
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
pub(super) fn key_prefix(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(b)
}
