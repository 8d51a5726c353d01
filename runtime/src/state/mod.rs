//! Keyed window state behind a narrow trait.
//!
//! Every input partition is its own namespace, so a snapshot taken by one
//! owner can be restored partition by partition by any other owner (any
//! parallelism). Inside a namespace, keys are laid out window-major:
//! `b'w' | end | start | group key` (big-endian, sign bit flipped, so byte
//! order equals window firing order), which makes "every window with
//! `end <= W`" a single range. Operator metadata lives under `b'm' | name`.

pub mod memory;
pub mod rocks;

use std::path::Path;

use crate::PartitionId;
use crate::error::Result;
use crate::window::Window;

pub use memory::MemoryBackend;
pub use rocks::{RocksBackend, RocksOptions};

/// Callback of [`StateBackend::range`]: called with each key and value.
pub type Visit<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<()>;

/// One write in a [`StateBatch`]: `None` deletes.
pub type StateWrite = (Vec<u8>, Option<Vec<u8>>);

/// Writes applied atomically to one namespace: first every range delete,
/// then `writes` in order.
#[derive(Debug, Default, Clone)]
pub struct StateBatch {
    /// `from <= key < to` ranges to delete.
    pub range_deletes: Vec<(Vec<u8>, Vec<u8>)>,
    pub writes: Vec<StateWrite>,
}

impl StateBatch {
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.push((key, Some(value)));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.push((key, None));
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.range_deletes.is_empty()
    }
}

/// Storage of operator state, namespaced by input partition.
///
/// Invariants every implementation keeps: `range` visits keys in ascending
/// byte order; a `snapshot` reflects every `write` that returned before it;
/// `restore` replaces the named namespaces wholesale (namespaces not named
/// are untouched), so restoring at a different parallelism is restoring a
/// different subset of partitions.
pub trait StateBackend {
    fn get(&self, ns: PartitionId, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Applies puts and deletes atomically.
    fn write(&mut self, ns: PartitionId, batch: StateBatch) -> Result<()>;

    /// Visits `from <= key < to` (`to = None`: to the end of the namespace)
    /// in ascending order.
    fn range(&self, ns: PartitionId, from: &[u8], to: Option<&[u8]>, visit: Visit<'_>) -> Result<()>;

    /// Writes a self-contained copy of every namespace to `dir` (created; must
    /// not exist yet).
    fn snapshot(&mut self, dir: &Path) -> Result<()>;

    /// Replaces namespaces `partitions` with their content in the snapshot at `dir`.
    fn restore(&mut self, dir: &Path, partitions: &[PartitionId]) -> Result<()>;

    /// Number of keys in a namespace (exact; used by tests and metrics).
    fn key_count(&self, ns: PartitionId) -> Result<usize> {
        let mut n = 0;
        self.range(ns, &[], None, &mut |_, _| {
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }
}

const WINDOW_TAG: u8 = b'w';
const META_TAG: u8 = b'm';

fn ordered(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn unordered(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// The state key of (window, group key).
pub fn window_key(window: &Window, group_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(17 + group_key.len());
    k.push(WINDOW_TAG);
    k.extend_from_slice(&ordered(window.end));
    k.extend_from_slice(&ordered(window.start));
    k.extend_from_slice(group_key);
    k
}

/// `(from, to)` bounds of every key of `window` (any group key).
pub fn window_range(window: &Window) -> (Vec<u8>, Vec<u8>) {
    let from = window_key(window, b"");
    // `start < end`, so `start + 1` cannot overflow; it is the next prefix.
    let to = window_key(&Window::new(window.start + 1, window.end), b"");
    (from, to)
}

/// Inverse of [`window_key`].
pub fn parse_window_key(key: &[u8]) -> Option<(Window, &[u8])> {
    let (&tag, rest) = key.split_first()?;
    if tag != WINDOW_TAG {
        return None;
    }
    let (end, rest) = rest.split_first_chunk::<8>()?;
    let (start, group_key) = rest.split_first_chunk::<8>()?;
    Some((Window::new(unordered(*start), unordered(*end)), group_key))
}

/// First key of the window state (for [`StateBackend::range`]).
pub fn window_range_start() -> Vec<u8> {
    vec![WINDOW_TAG]
}

/// Exclusive upper bound of all window keys with `end <= bound`.
pub fn window_range_end_inclusive(bound: i64) -> Vec<u8> {
    let mut k = vec![WINDOW_TAG];
    match bound.checked_add(1) {
        Some(b) => k.extend_from_slice(&ordered(b)),
        None => k = vec![WINDOW_TAG + 1],
    }
    k
}

/// The key of operator metadata `name`.
pub fn meta_key(name: &str) -> Vec<u8> {
    let mut k = vec![META_TAG];
    k.extend_from_slice(name.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_keys_sort_in_firing_order() {
        let a = window_key(&Window::new(-20, -10), b"z");
        let b = window_key(&Window::new(-5, 5), b"a");
        let c = window_key(&Window::new(0, 5), b"a");
        let d = window_key(&Window::new(0, 10), b"");
        assert!(a < b && b < c && c < d);
        assert_eq!(parse_window_key(&c), Some((Window::new(0, 5), &b"a"[..])));
        assert!(window_key(&Window::new(0, 5), b"zz") < window_range_end_inclusive(5));
        assert!(d >= window_range_end_inclusive(5));
    }

    /// Behaviour every backend must share.
    pub(crate) fn backend_contract(b: &mut dyn StateBackend, dir: &Path) {
        let mut batch = StateBatch::default();
        batch.put(b"k1".to_vec(), b"v1".to_vec());
        batch.put(b"k2".to_vec(), b"v2".to_vec());
        batch.put(b"k3".to_vec(), b"v3".to_vec());
        b.write(0, batch).unwrap();
        let mut other = StateBatch::default();
        other.put(b"k1".to_vec(), b"other".to_vec());
        b.write(1, other).unwrap();
        let mut del = StateBatch::default();
        del.delete(b"k2".to_vec());
        b.write(0, del).unwrap();
        let mut ranged = StateBatch::default();
        ranged.put(b"r1".to_vec(), b"x".to_vec());
        ranged.put(b"r2".to_vec(), b"x".to_vec());
        b.write(0, ranged).unwrap();
        let mut ranged = StateBatch::default();
        ranged.range_deletes.push((b"r".to_vec(), b"s".to_vec()));
        ranged.put(b"r3".to_vec(), b"kept".to_vec());
        b.write(0, ranged).unwrap();
        assert_eq!(b.get(0, b"r1").unwrap(), None);
        assert_eq!(b.get(0, b"r3").unwrap(), Some(b"kept".to_vec()));
        let mut del = StateBatch::default();
        del.delete(b"r3".to_vec());
        b.write(0, del).unwrap();
        assert_eq!(b.get(0, b"k1").unwrap(), Some(b"v1".to_vec()));
        assert_eq!(b.get(0, b"k2").unwrap(), None);
        assert_eq!(b.get(1, b"k1").unwrap(), Some(b"other".to_vec()));
        let mut seen = Vec::new();
        b.range(0, b"k", Some(&b"k9"[..]), &mut |k, _| {
            seen.push(k.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![b"k1".to_vec(), b"k3".to_vec()]);
        assert_eq!(b.key_count(0).unwrap(), 2);
        let snap = dir.join("snap");
        b.snapshot(&snap).unwrap();
        let mut after = StateBatch::default();
        after.put(b"k9".to_vec(), b"later".to_vec());
        b.write(0, after).unwrap();
        b.restore(&snap, &[0]).unwrap();
        assert_eq!(b.get(0, b"k9").unwrap(), None);
        assert_eq!(b.key_count(0).unwrap(), 2);
        assert_eq!(b.get(1, b"k1").unwrap(), Some(b"other".to_vec()));
    }
}
