//! Stage 2 of one keyed partition: a [`WindowOperator`] per key group the
//! partition owns ([`super::key_groups`]), each with the group's state
//! namespace, all driven by the partition's one watermark.
//!
//! Groups are what moves when a job restores at another partition count,
//! so nothing of a group's state may live outside its namespace: its
//! windows, its entries and its watermark are its operator's.

use std::ops::Range;
use std::sync::Arc;

use super::key_groups::group_of;
use super::window_operator::{OperatorStats, WindowOperator, WindowSpec};
use super::{Disposition, KeyedRecord, WindowResult};
use crate::error::{Context, Result, RuntimeError};
use crate::state::StateBackend;
use crate::time::EventTime;
use crate::time::watermark::NO_WATERMARK;

/// The operators of groups `groups` (of `key_groups`), in group order.
pub struct GroupOperators {
    groups: Range<u32>,
    key_groups: u32,
    ops: Vec<WindowOperator>,
    watermark: EventTime,
}

/// Each operator's share of a cache capacity of `capacity` entries.
fn share(capacity: Option<usize>, operators: usize) -> Option<usize> {
    capacity.map(|c| (c / operators.max(1)).max(1))
}

impl GroupOperators {
    /// Empty state for `groups`.
    pub fn new(groups: Range<u32>, key_groups: u32, spec: Arc<WindowSpec>) -> GroupOperators {
        let ops = groups
            .clone()
            .map(|g| WindowOperator::new(g, spec.clone()))
            .collect();
        GroupOperators {
            groups,
            key_groups,
            ops,
            watermark: NO_WATERMARK,
        }
    }

    /// The state of `groups` as `backend` holds it. The partition's
    /// watermark is the lowest of its groups' (they are equal unless a
    /// group was restored from a snapshot taken at another watermark, which
    /// only delays that group's firings to the common one).
    pub fn restore(
        groups: Range<u32>,
        key_groups: u32,
        spec: Arc<WindowSpec>,
        cache_capacity: Option<usize>,
        backend: &dyn StateBackend,
    ) -> Result<GroupOperators> {
        let capacity = share(cache_capacity, groups.len());
        let ops = groups
            .clone()
            .map(|g| {
                WindowOperator::restore(g, spec.clone(), capacity, backend)
                    .with_context(|| format!("restoring key group {g}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let watermark = ops
            .iter()
            .map(WindowOperator::watermark)
            .min()
            .unwrap_or(NO_WATERMARK);
        Ok(GroupOperators {
            groups,
            key_groups,
            ops,
            watermark,
        })
    }

    /// Bounds the cache of all groups together to about `capacity` entries.
    pub fn with_cache_capacity(mut self, capacity: Option<usize>) -> GroupOperators {
        let each = share(capacity, self.ops.len());
        self.ops = self
            .ops
            .into_iter()
            .map(|op| op.with_cache_capacity(each))
            .collect();
        self
    }

    pub fn with_flush_on_fire(mut self, on: bool) -> GroupOperators {
        self.ops = self.ops.into_iter().map(|op| op.with_flush_on_fire(on)).collect();
        self
    }

    /// The groups held.
    pub fn groups(&self) -> Range<u32> {
        self.groups.clone()
    }

    /// Adds one record to its group's operator. A record of a group this
    /// partition does not own was routed with another layout: an error,
    /// never state in the wrong place.
    pub fn process(
        &mut self,
        rec: &KeyedRecord,
        backend: &mut dyn StateBackend,
        out: &mut Vec<WindowResult>,
    ) -> Result<Disposition> {
        let g = group_of(&rec.group_key, self.key_groups);
        let op = g
            .checked_sub(self.groups.start)
            .and_then(|i| self.ops.get_mut(i as usize))
            .ok_or_else(|| {
                RuntimeError::Dataflow(format!(
                    "a keyed record of key group {g} (of {}) reached the partition owning groups {}..{}: it was \
                     routed with another layout",
                    self.key_groups, self.groups.start, self.groups.end
                ))
            })?;
        op.process(rec, backend, out)
    }

    /// Advances every group to `watermark` (no-op unless it is higher);
    /// results in group order, each group's in its firing order.
    pub fn advance_watermark(
        &mut self,
        watermark: EventTime,
        backend: &mut dyn StateBackend,
        out: &mut Vec<WindowResult>,
    ) -> Result<()> {
        if watermark <= self.watermark {
            return Ok(());
        }
        for op in &mut self.ops {
            op.advance_watermark(watermark, backend, out)?;
        }
        self.watermark = watermark;
        Ok(())
    }

    pub fn needs_flush(&self) -> bool {
        self.ops.iter().any(WindowOperator::needs_flush)
    }

    /// Writes every group's cached changes to the backend.
    pub fn flush(&mut self, backend: &mut dyn StateBackend) -> Result<()> {
        for op in &mut self.ops {
            op.flush(backend)?;
        }
        Ok(())
    }

    pub fn watermark(&self) -> EventTime {
        self.watermark
    }

    pub fn stats(&self) -> OperatorStats {
        self.ops.iter().fold(OperatorStats::default(), |mut sum, op| {
            sum += op.stats();
            sum
        })
    }

    pub fn open_entries(&self) -> usize {
        self.ops.iter().map(WindowOperator::open_entries).sum()
    }

    pub fn cached_entries(&self) -> usize {
        self.ops.iter().map(WindowOperator::cached_entries).sum()
    }
}
