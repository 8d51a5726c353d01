//! Session windows: a key's open sessions, merged as records bridge them.

use super::*;

impl WindowOperator {
    pub(super) fn process_session(
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
        let found = self.index.find(&self.keys, key);
        if let Some(Some(ks)) = found.and_then(|id| self.keys.get(id as usize)) {
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
        let id = match found {
            Some(id) => id,
            None => self.new_key(key),
        };
        self.tick += 1;
        let result = self.add_session(id, key, merged, &merge_idx, rec, backend, out);
        self.merge_idx = merge_idx;
        result.map(|()| Disposition::Accepted)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_session(
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
                // One lookup of the old window: counts updated, and the
                // window dropped below once nothing is left in it.
                let mut info = match self.windows.entry(old.window) {
                    std::collections::btree_map::Entry::Occupied(e) => Some(e),
                    std::collections::btree_map::Entry::Vacant(_) => None,
                };
                let prev = if old.cached {
                    if let Some(info) = &mut info {
                        info.get_mut().cached -= 1;
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
                    if let Some(info) = &mut info {
                        let info = info.get_mut();
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
                if let Some(info) = info
                    && info.get().cached == 0
                    && info.get().spilled == 0
                {
                    info.remove();
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
}
