//! RocksDB state backend: one database per runtime process, one key prefix
//! (the big-endian partition id) per namespace.
//!
//! Writes skip the WAL: durability comes from snapshots (RocksDB checkpoints,
//! taken after an explicit memtable flush), exactly as the checkpoint protocol
//! needs; state written after the last snapshot is rebuilt by replaying input.

use std::path::{Path, PathBuf};

use rocksdb::{BlockBasedOptions, Cache, DB, Options, WriteBatch, WriteOptions, checkpoint::Checkpoint};

use super::{StateBackend, StateBatch, Visit};
use crate::PartitionId;
use crate::error::{Result, RuntimeError};

/// Tuning of the RocksDB instance.
#[derive(Debug, Clone)]
pub struct RocksOptions {
    /// LRU block cache size; the benchmark keeps it far below the state size.
    pub block_cache_bytes: usize,
    pub write_buffer_bytes: usize,
}

impl Default for RocksOptions {
    fn default() -> Self {
        RocksOptions {
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 32 << 20,
        }
    }
}

pub struct RocksBackend {
    db: DB,
    path: PathBuf,
    write_opts: WriteOptions,
}

fn state_err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::State(e.to_string())
}

fn prefixed(ns: PartitionId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&ns.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// Exclusive end of namespace `ns`.
fn namespace_end(ns: PartitionId) -> Vec<u8> {
    match ns.checked_add(1) {
        Some(n) => n.to_be_bytes().to_vec(),
        None => vec![0xff; 5],
    }
}

impl RocksBackend {
    /// Opens (creating if needed) a database at `path`.
    pub fn open(path: &Path, tuning: &RocksOptions) -> Result<Self> {
        Self::open_with(path, tuning, true)
    }

    /// Makes the snapshot at `snapshot` (as [`StateBackend::snapshot`]
    /// wrote it, e.g. downloaded from a checkpoint) the database at `path`
    /// by moving it there (same filesystem) and opening it: no key is
    /// rewritten, and the database keeps the snapshot's SST files under
    /// their names, so the next checkpoint can reference the stored copies
    /// instead of uploading them again.
    pub fn open_snapshot(snapshot: &Path, path: &Path, tuning: &RocksOptions) -> Result<Self> {
        if path.exists() {
            std::fs::remove_dir_all(path).map_err(|e| RuntimeError::Snapshot {
                path: path.to_path_buf(),
                message: format!("removing the previous database: {e}"),
            })?;
        }
        std::fs::rename(snapshot, path).map_err(|e| RuntimeError::Snapshot {
            path: snapshot.to_path_buf(),
            message: format!("moving it to {}: {e}", path.display()),
        })?;
        Self::open_with(path, tuning, false)
    }

    fn open_with(path: &Path, tuning: &RocksOptions, create: bool) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(create);
        opts.set_write_buffer_size(tuning.write_buffer_bytes);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let mut table = BlockBasedOptions::default();
        let cache = Cache::new_lru_cache(tuning.block_cache_bytes);
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        let db = DB::open(&opts, path).map_err(state_err)?;
        let mut write_opts = WriteOptions::default();
        write_opts.disable_wal(true);
        Ok(RocksBackend {
            db,
            path: path.to_path_buf(),
            write_opts,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn scan(db: &DB, ns: PartitionId, from: &[u8], to: Option<&[u8]>, visit: Visit<'_>) -> Result<()> {
        let start = prefixed(ns, from);
        let end = match to {
            Some(to) => prefixed(ns, to),
            None => namespace_end(ns),
        };
        let mut it = db.raw_iterator();
        it.seek(&start);
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if k >= end.as_slice() {
                break;
            }
            visit(&k[4..], v)?;
            it.next();
        }
        it.status().map_err(state_err)
    }
}

impl StateBackend for RocksBackend {
    fn get(&self, ns: PartitionId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(prefixed(ns, key)).map_err(state_err)
    }

    fn write(&mut self, ns: PartitionId, batch: StateBatch) -> Result<()> {
        let mut wb = WriteBatch::default();
        for (from, to) in &batch.range_deletes {
            wb.delete_range(prefixed(ns, from), prefixed(ns, to));
        }
        let mut key = Vec::new();
        for (k, v) in &batch.writes {
            key.clear();
            key.extend_from_slice(&ns.to_be_bytes());
            key.extend_from_slice(k);
            match v {
                Some(v) => wb.put(&key, v),
                None => wb.delete(&key),
            }
        }
        self.db.write_opt(wb, &self.write_opts).map_err(state_err)
    }

    fn range(&self, ns: PartitionId, from: &[u8], to: Option<&[u8]>, visit: Visit<'_>) -> Result<()> {
        Self::scan(&self.db, ns, from, to, visit)
    }

    fn snapshot(&mut self, dir: &Path) -> Result<()> {
        self.db.flush().map_err(state_err)?;
        let cp = Checkpoint::new(&self.db).map_err(state_err)?;
        cp.create_checkpoint(dir).map_err(|e| RuntimeError::Snapshot {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })
    }

    fn restore(&mut self, dir: &Path, partitions: &[PartitionId]) -> Result<()> {
        let snap =
            DB::open_for_read_only(&Options::default(), dir, false).map_err(|e| RuntimeError::Snapshot {
                path: dir.to_path_buf(),
                message: e.to_string(),
            })?;
        for &ns in partitions {
            let mut wb = WriteBatch::default();
            wb.delete_range(ns.to_be_bytes().to_vec(), namespace_end(ns));
            self.db.write_opt(wb, &self.write_opts).map_err(state_err)?;
            let mut batch = WriteBatch::default();
            Self::scan(&snap, ns, &[], None, &mut |k, v| {
                batch.put(prefixed(ns, k), v);
                Ok(())
            })?;
            self.db.write_opt(batch, &self.write_opts).map_err(state_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_opened_in_place_keeps_its_keys_and_sst_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = RocksBackend::open(&dir.path().join("db"), &RocksOptions::default()).unwrap();
        let mut batch = StateBatch::default();
        for i in 0..1_000u32 {
            batch.writes.push((i.to_be_bytes().to_vec(), Some(vec![7; 100])));
        }
        b.write(3, batch).unwrap();
        b.snapshot(&dir.path().join("snap")).unwrap();
        let ssts = |p: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(p)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".sst"))
                .collect();
            v.sort();
            v
        };
        let before = ssts(&dir.path().join("snap"));
        assert!(!before.is_empty());
        let mut r = RocksBackend::open_snapshot(
            &dir.path().join("snap"),
            &dir.path().join("db2"),
            &RocksOptions::default(),
        )
        .unwrap();
        assert_eq!(r.key_count(3).unwrap(), 1_000);
        assert_eq!(r.get(3, &5u32.to_be_bytes()).unwrap(), Some(vec![7; 100]));
        // New writes land in new files; the restored ones stay as they were.
        let mut more = StateBatch::default();
        more.writes.push((b"new".to_vec(), Some(b"v".to_vec())));
        r.write(3, more).unwrap();
        r.snapshot(&dir.path().join("snap2")).unwrap();
        let after = ssts(&dir.path().join("snap2"));
        assert!(
            before.iter().all(|f| after.contains(f)),
            "{before:?} vs {after:?}"
        );
        assert!(after.len() > before.len());
        assert!(!dir.path().join("snap").exists(), "moved, not copied");
    }

    #[test]
    fn rocks_backend_contract() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = RocksBackend::open(&dir.path().join("db"), &RocksOptions::default()).unwrap();
        super::super::tests::backend_contract(&mut b, dir.path());
    }
}
