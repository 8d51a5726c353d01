//! In-memory state backend (tests, small jobs, benchmarks for comparison).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use super::{StateBackend, StateBatch, Visit};
use crate::PartitionId;
use crate::error::{Result, RuntimeError};

/// Namespaces as ordered maps. Snapshots are one file per namespace,
/// `partition-<n>.state`, holding length-prefixed key/value pairs.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    namespaces: HashMap<PartitionId, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }
}

fn snapshot_err(dir: &Path, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Snapshot {
        path: dir.to_path_buf(),
        message: e.to_string(),
    }
}

impl StateBackend for MemoryBackend {
    fn get(&self, ns: PartitionId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.namespaces.get(&ns).and_then(|m| m.get(key)).cloned())
    }

    fn write(&mut self, ns: PartitionId, batch: StateBatch) -> Result<()> {
        let m = self.namespaces.entry(ns).or_default();
        for (from, to) in batch.range_deletes.iter().filter(|(f, t)| f < t) {
            let doomed: Vec<Vec<u8>> = m
                .range::<[u8], _>((
                    std::ops::Bound::Included(from.as_slice()),
                    std::ops::Bound::Excluded(to.as_slice()),
                ))
                .map(|(k, _)| k.clone())
                .collect();
            for k in doomed {
                m.remove(&k);
            }
        }
        for (k, v) in batch.writes {
            match v {
                Some(v) => {
                    m.insert(k, v);
                }
                None => {
                    m.remove(&k);
                }
            }
        }
        Ok(())
    }

    fn range(&self, ns: PartitionId, from: &[u8], to: Option<&[u8]>, visit: Visit<'_>) -> Result<()> {
        let Some(m) = self.namespaces.get(&ns) else {
            return Ok(());
        };
        for (k, v) in m.range::<[u8], _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded)) {
            if to.is_some_and(|to| k.as_slice() >= to) {
                break;
            }
            visit(k, v)?;
        }
        Ok(())
    }

    fn snapshot(&mut self, dir: &Path) -> Result<()> {
        fs::create_dir(dir).map_err(|e| snapshot_err(dir, e))?;
        for (ns, m) in &self.namespaces {
            let path = dir.join(format!("partition-{ns}.state"));
            let file = fs::File::create(&path).map_err(|e| snapshot_err(&path, e))?;
            let mut w = BufWriter::new(file);
            for (k, v) in m {
                for part in [k, v] {
                    w.write_all(&(part.len() as u32).to_le_bytes())
                        .and_then(|_| w.write_all(part))
                        .map_err(|e| snapshot_err(&path, e))?;
                }
            }
            let file = w.into_inner().map_err(|e| snapshot_err(&path, e))?;
            file.sync_all().map_err(|e| snapshot_err(&path, e))?;
        }
        Ok(())
    }

    fn restore(&mut self, dir: &Path, partitions: &[PartitionId]) -> Result<()> {
        for ns in partitions {
            let path = dir.join(format!("partition-{ns}.state"));
            let mut m = BTreeMap::new();
            if path.exists() {
                let mut bytes = Vec::new();
                BufReader::new(fs::File::open(&path).map_err(|e| snapshot_err(&path, e))?)
                    .read_to_end(&mut bytes)
                    .map_err(|e| snapshot_err(&path, e))?;
                let mut rest = bytes.as_slice();
                let next = |rest: &mut &[u8]| -> Result<Vec<u8>> {
                    let (len, tail) = rest
                        .split_first_chunk::<4>()
                        .ok_or_else(|| snapshot_err(&path, "truncated entry"))?;
                    let len = u32::from_le_bytes(*len) as usize;
                    let part = tail
                        .get(..len)
                        .ok_or_else(|| snapshot_err(&path, "truncated entry"))?;
                    *rest = &tail[len..];
                    Ok(part.to_vec())
                };
                while !rest.is_empty() {
                    let k = next(&mut rest)?;
                    let v = next(&mut rest)?;
                    m.insert(k, v);
                }
            }
            self.namespaces.insert(*ns, m);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_backend_contract() {
        let dir = tempfile::tempdir().unwrap();
        super::super::tests::backend_contract(&mut MemoryBackend::new(), dir.path());
    }
}
