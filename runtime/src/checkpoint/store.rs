//! Durable checkpoint and savepoint storage through `object_store`.
//!
//! Layout under the storage root (`spec.checkpoint.storage`):
//!
//! ```text
//! checkpoints/task-<t>/<id>-<instance>/manifest.json   one per checkpoint
//! checkpoints/task-<t>/<id>-<instance>/<file>          small files (task.json, RocksDB MANIFEST, ...)
//! checkpoints/task-<t>/shared/<db>/<NNNNNN>.sst        immutable SSTs, uploaded once (incremental)
//! savepoints/<id>/task-<t>/manifest.json               self-contained copies
//! savepoints/<id>/task-<t>/<file>
//! ```
//!
//! A checkpoint or savepoint exists once its manifest exists: the manifest
//! is written last, after every file it lists, and deleted first.
//!
//! Checkpoints are deleted by retention ([`CheckpointStore::retain`]);
//! savepoints only when the operator asks (`DELETE /v1/savepoints/{id}`,
//! [`CheckpointStore::delete_savepoint_unless_restored`]).

use crate::error::RuntimeError;
use crate::error::{Context, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use super::marker::MarkerKind;
use super::retention;
use streamops_crds::runtime_api::valid_savepoint_id;

/// One file of a snapshot directory and where it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path inside the snapshot directory (`/`-separated).
    pub path: String,
    /// Object path relative to the storage root.
    pub object: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub task: u32,
    pub checkpoint_id: u64,
    pub instance: String,
    pub kind: MarkerKind,
    #[serde(default)]
    pub savepoint_id: Option<String>,
    pub files: Vec<FileEntry>,
    pub created_ms: i64,
    /// Uid of the StreamJob that wrote it (absent in older manifests):
    /// retention never deletes another job's objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_uid: Option<String>,
}

impl Manifest {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// What became of a request to delete a savepoint from storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeletionOutcome {
    /// Every object of it is gone; how many this call deleted (0: it was
    /// already absent).
    Deleted(usize),
    /// Not deleted: this process may still need it (why).
    Refused(String),
    /// Storage failed part-way (what); asking again goes on.
    Failed(String),
}

/// What to write: a periodic checkpoint (incremental) or a savepoint (full copy).
#[derive(Debug, Clone)]
pub enum Target<'a> {
    Checkpoint {
        id: u64,
        instance: &'a str,
        db: &'a str,
    },
    Savepoint {
        id: &'a str,
        checkpoint_id: u64,
        instance: &'a str,
    },
}

pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    url: String,
    rt: Handle,
    /// Shared objects known to exist (uploaded by this process).
    uploaded: HashSet<String>,
    /// The job whose objects this process writes (in every manifest).
    job_uid: Option<String>,
    /// SST files of restored checkpoints, by (task, file name): (object,
    /// size). A restored RocksDB keeps them under their names, so a
    /// checkpoint references the stored object instead of uploading it.
    restored: HashMap<(u32, String), (String, u64)>,
    /// Bytes the last [`CheckpointStore::write`] uploaded.
    pub last_uploaded_bytes: u64,
    /// Called after every object [`CheckpointStore::write`] uploads.
    progress: Option<Box<dyn Fn() + Send>>,
}

fn object(path: &str) -> Result<ObjectPath> {
    ObjectPath::parse(path).with_context(|| format!("invalid object path {path:?}"))
}

impl CheckpointStore {
    /// Opens the storage at `url` (`file:///dir`; `s3://bucket/prefix` with
    /// the `s3` feature, credentials from the standard AWS environment).
    pub fn open(url: &str, rt: Handle) -> Result<Self> {
        let url = url.trim_end_matches('/').to_string();
        let store: Arc<dyn ObjectStore> = if let Some(dir) = url.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(RuntimeError::Storage(format!(
                    "{url:?}: file:// needs an absolute path (file:///dir)"
                )));
            }
            std::fs::create_dir_all(dir).with_context(|| format!("creating checkpoint directory {dir}"))?;
            Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .with_context(|| format!("opening checkpoint directory {dir}"))?,
            )
        } else {
            open_remote(&url)?
        };
        Ok(Self::over(store, &url, rt))
    }

    /// A store over `store`, reported as `url` (tests: an in-memory
    /// `object_store` shared by the processes of one test).
    pub fn over(store: Arc<dyn ObjectStore>, url: &str, rt: Handle) -> Self {
        CheckpointStore {
            store,
            url: url.trim_end_matches('/').to_string(),
            rt,
            uploaded: HashSet::new(),
            job_uid: None,
            restored: HashMap::new(),
            last_uploaded_bytes: 0,
            progress: None,
        }
    }

    /// Remembers the SST files of `manifest` (a checkpoint task `task` was
    /// restored from, with its state opened in place): checkpoints of the
    /// task reference them rather than upload them again.
    pub fn adopt(&mut self, task: u32, manifest: &Manifest) {
        self.restored.retain(|(t, _), _| *t != task);
        for f in &manifest.files {
            let name = f.path.rsplit('/').next().unwrap_or(&f.path);
            if name.ends_with(".sst") && f.object.starts_with("checkpoints/") {
                self.restored
                    .insert((task, name.to_owned()), (f.object.clone(), f.size));
            }
        }
    }

    /// Names `job_uid` as the writer in every manifest (retention's
    /// ownership check).
    pub fn owned_by(mut self, job_uid: &str) -> Self {
        self.job_uid = Some(job_uid.to_owned());
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The location users and the operator see for savepoint `id`.
    pub fn savepoint_location(&self, id: &str) -> String {
        format!("{}/savepoints/{id}", self.url)
    }

    /// The id of the savepoint at `location` if it is one of this storage's
    /// (`<storage>/savepoints/<id>`), else `None`.
    pub fn savepoint_id_at<'a>(&self, location: &'a str) -> Option<&'a str> {
        streamops_crds::runtime_api::savepoint_id_in(&self.url, location)
    }

    /// Manifest path of `task` in the savepoint at `location`, which must
    /// lie under this storage.
    pub fn savepoint_manifest(&self, location: &str, task: u32) -> Result<String> {
        let rel = location
            .trim_end_matches('/')
            .strip_prefix(&self.url)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| {
                RuntimeError::Storage(format!(
                    "savepoint {location:?} is not under this job's checkpoint storage {:?}",
                    self.url
                ))
            })?;
        Ok(format!("{rel}/task-{task}/manifest.json"))
    }

    fn put(&self, path: &str, bytes: Vec<u8>) -> Result<()> {
        let p = object(path)?;
        self.rt
            .block_on(self.store.put(&p, PutPayload::from(bytes)))
            .with_context(|| format!("writing {}/{path}", self.url))?;
        Ok(())
    }

    fn get(&self, path: &str) -> Result<bytes::Bytes> {
        let p = object(path)?;
        self.rt
            .block_on(async { self.store.get(&p).await?.bytes().await })
            .with_context(|| format!("reading {}/{path}", self.url))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self.list_modified(prefix)?.into_iter().map(|(o, _)| o).collect())
    }

    /// Objects under `prefix` with their last-modified times (ms).
    fn list_modified(&self, prefix: &str) -> Result<Vec<(String, i64)>> {
        let p = object(prefix)?;
        let metas: Vec<_> = self
            .rt
            .block_on(self.store.list(Some(&p)).try_collect())
            .with_context(|| format!("listing {}/{prefix}", self.url))?;
        Ok(metas
            .into_iter()
            .map(|m| (m.location.to_string(), m.last_modified.timestamp_millis()))
            .collect())
    }

    /// Calls `f` after every object a checkpoint or savepoint uploads (the
    /// runner's heartbeat: a long upload is progress, not a stuck loop).
    pub fn on_progress(&mut self, f: Box<dyn Fn() + Send>) {
        self.progress = Some(f);
    }

    /// Uploads the snapshot directory `dir` and then its manifest; returns
    /// the manifest's object path.
    pub fn write(
        &mut self,
        task: u32,
        dir: &Path,
        target: Target<'_>,
        now_ms: i64,
    ) -> Result<(String, Manifest)> {
        let (base, shared) = match &target {
            Target::Checkpoint { id, instance, db } => (
                format!("checkpoints/task-{task}/{id}-{instance}"),
                Some(format!("checkpoints/task-{task}/shared/{db}")),
            ),
            Target::Savepoint { id, .. } => (format!("savepoints/{id}/task-{task}"), None),
        };
        let mut files = Vec::new();
        self.last_uploaded_bytes = 0;
        for (rel, abs) in walk(dir)? {
            let size = std::fs::metadata(&abs)
                .with_context(|| format!("reading {}", abs.display()))?
                .len();
            let name = rel.rsplit('/').next().unwrap_or(&rel);
            let reused = match &shared {
                Some(_) if name.ends_with(".sst") => self
                    .restored
                    .get(&(task, name.to_owned()))
                    .filter(|(_, s)| *s == size)
                    .map(|(o, _)| o.clone()),
                _ => None,
            };
            if let Some(object) = reused {
                files.push(FileEntry {
                    path: rel,
                    object,
                    size,
                });
                continue;
            }
            let object = match &shared {
                Some(shared) if name.ends_with(".sst") => format!("{shared}/{name}"),
                _ => format!("{base}/{rel}"),
            };
            if !self.uploaded.contains(&object) {
                let bytes = std::fs::read(&abs).with_context(|| format!("reading {}", abs.display()))?;
                self.last_uploaded_bytes += bytes.len() as u64;
                self.put(&object, bytes)?;
                if let Some(progress) = &self.progress {
                    progress();
                }
                if shared.as_ref().is_some_and(|s| object.starts_with(s.as_str())) {
                    self.uploaded.insert(object.clone());
                }
            }
            files.push(FileEntry {
                path: rel,
                object,
                size,
            });
        }
        let (checkpoint_id, instance, kind, savepoint_id) = match target {
            Target::Checkpoint { id, instance, .. } => {
                (id, instance.to_string(), MarkerKind::Checkpoint, None)
            }
            Target::Savepoint {
                id,
                checkpoint_id,
                instance,
            } => (
                checkpoint_id,
                instance.to_string(),
                MarkerKind::Savepoint,
                Some(id.to_string()),
            ),
        };
        let manifest = Manifest {
            task,
            checkpoint_id,
            instance,
            kind,
            savepoint_id,
            files,
            created_ms: now_ms,
            job_uid: self.job_uid.clone(),
        };
        let path = format!("{base}/manifest.json");
        self.put(&path, serde_json::to_vec_pretty(&manifest)?)?;
        Ok((path, manifest))
    }

    pub fn read_manifest(&self, path: &str) -> Result<Manifest> {
        let bytes = self.get(path)?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing manifest {}/{path}", self.url))
    }

    /// Downloads every file of `manifest` into `dir` (created).
    pub fn download(&self, manifest: &Manifest, dir: &Path) -> Result<()> {
        self.download_only(manifest, dir, |_| true)
    }

    /// Downloads the files of `manifest` whose path `wanted` accepts into
    /// `dir` (created).
    pub fn download_only(
        &self,
        manifest: &Manifest,
        dir: &Path,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for f in manifest.files.iter().filter(|f| wanted(&f.path)) {
            if f.path.split('/').any(|c| c == ".." || c.is_empty()) {
                return Err(RuntimeError::Storage(format!(
                    "manifest lists an unsafe path {:?}",
                    f.path
                )));
            }
            let dest = dir.join(&f.path);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            let bytes = self.get(&f.object)?;
            if bytes.len() as u64 != f.size {
                return Err(RuntimeError::Storage(format!(
                    "{}/{}: size {} differs from the manifest's {}",
                    self.url,
                    f.object,
                    bytes.len(),
                    f.size
                )));
            }
            std::fs::write(&dest, &bytes).with_context(|| format!("writing {}", dest.display()))?;
        }
        Ok(())
    }

    /// Deletes what [`retention::plan`] allows: the task's checkpoints
    /// other than `keep` (manifest paths) and shared files no kept manifest
    /// references, of `instance` itself and of predecessors proven to be
    /// this job's. Savepoints are never touched here.
    pub fn retain(&mut self, task: u32, keep: &[String], instance: &str) -> Result<usize> {
        let prefix = format!("checkpoints/task-{task}");
        let mut kept = Vec::with_capacity(keep.len());
        for m in keep {
            kept.push((m.clone(), self.read_manifest(m)?));
        }
        let (listing, modified): (Vec<String>, BTreeMap<String, i64>) = {
            let all = self.list_modified(&prefix)?;
            (
                all.iter().map(|(o, _)| o.clone()).collect(),
                all.into_iter().collect(),
            )
        };
        let mut manifests = BTreeMap::new();
        for obj in &listing {
            if let retention::Object::Dir { dir, instance: i, .. } = retention::classify(task, obj)
                && i != instance
                && !manifests.contains_key(&dir)
            {
                let manifest = self.read_manifest(&format!("{dir}/manifest.json")).ok();
                manifests.insert(dir, manifest);
            }
        }
        let owner = retention::Owner {
            job_uid: self.job_uid.as_deref().unwrap_or_default(),
            instance,
        };
        let mut deleted = 0;
        for obj in retention::plan(task, owner, &kept, &listing, &manifests, &modified) {
            let p = object(&obj)?;
            self.rt
                .block_on(self.store.delete(&p))
                .with_context(|| format!("deleting {}/{obj}", self.url))?;
            self.uploaded.remove(&obj);
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Deletes every object of savepoint `id` (`savepoints/<id>/`), its
    /// manifests first so that a savepoint deleted part-way no longer counts
    /// as existing; returns how many objects it deleted. Idempotent: an
    /// absent savepoint (or objects another pod of the job deleted
    /// meanwhile) is success. With `file://` the emptied directories go too.
    pub fn delete_savepoint(&self, id: &str) -> Result<usize> {
        if !valid_savepoint_id(id) {
            return Err(RuntimeError::Storage(format!(
                "savepoint id {id:?} is not a safe path segment"
            )));
        }
        let prefix = format!("savepoints/{id}");
        let inside = format!("{prefix}/");
        let mut objects: Vec<String> = self
            .list(&prefix)?
            .into_iter()
            .filter(|o| o.starts_with(&inside))
            .collect();
        objects.sort_by_key(|o| !o.ends_with("/manifest.json"));
        let mut deleted = 0;
        for obj in objects {
            let p = object(&obj)?;
            match self.rt.block_on(self.store.delete(&p)) {
                Ok(()) => deleted += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e).with_context(|| format!("deleting {}/{obj}", self.url)),
            }
        }
        if let Some(root) = self.url.strip_prefix("file://") {
            remove_empty_dirs(&Path::new(root).join(&prefix));
        }
        Ok(deleted)
    }

    /// [`CheckpointStore::delete_savepoint`], refused for the savepoint at
    /// `restored_from` (the one the job file says this process starts from:
    /// a task that restarts before its first commit restores it again).
    pub fn delete_savepoint_unless_restored(&self, id: &str, restored_from: Option<&str>) -> DeletionOutcome {
        if restored_from.and_then(|l| self.savepoint_id_at(l)) == Some(id) {
            return DeletionOutcome::Refused(format!(
                "savepoint {id} is the one this job's pods were started from (job file restore.savepoint); it \
                 can be deleted once they run from a newer one"
            ));
        }
        match self.delete_savepoint(id) {
            Ok(n) => DeletionOutcome::Deleted(n),
            Err(e) => DeletionOutcome::Failed(e.to_string()),
        }
    }
}

/// Removes `dir` and the directories under it that are (then) empty; a
/// directory that still holds a file stays. Best effort: nothing it leaves
/// behind is read again.
fn remove_empty_dirs(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(feature = "s3")]
fn open_remote(url: &str) -> Result<Arc<dyn ObjectStore>> {
    if url.starts_with("s3://") {
        let s3 = object_store::aws::AmazonS3Builder::from_env()
            .with_url(url)
            .build()
            .with_context(|| format!("opening checkpoint storage {url}"))?;
        // The prefix after the bucket is part of the URL: keep it by wrapping.
        let prefix = url
            .strip_prefix("s3://")
            .and_then(|rest| rest.split_once('/'))
            .map(|(_, p)| p.to_string())
            .unwrap_or_default();
        return Ok(Arc::new(object_store::prefix::PrefixStore::new(s3, prefix)));
    }
    return Err(RuntimeError::Storage(format!(
        "{url:?}: supported schemes are file:// and s3://"
    )));
}

#[cfg(not(feature = "s3"))]
fn open_remote(url: &str) -> Result<Arc<dyn ObjectStore>> {
    Err(RuntimeError::Storage(format!(
        "{url:?}: this build supports file:// only (build streamops-runtime with \
         --features s3 for s3://)"
    )))
}

/// Files under `dir`, recursively, as (relative `/` path, absolute path), sorted.
fn walk(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .map_err(|_| {
                        RuntimeError::Storage(format!("{} escapes {}", path.display(), dir.display()))
                    })?
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((rel, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(root: &Path) -> (tokio::runtime::Runtime, CheckpointStore) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let s = CheckpointStore::open(&format!("file://{}", root.display()), rt.handle().clone()).unwrap();
        (rt, s)
    }

    #[test]
    fn checkpoints_are_incremental_and_retention_keeps_what_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let (_rt, mut s) = store(&tmp.path().join("store"));
        let snap = tmp.path().join("snap");
        std::fs::create_dir_all(snap.join("state")).unwrap();
        std::fs::write(snap.join("state/000001.sst"), b"aaaa").unwrap();
        std::fs::write(snap.join("state/MANIFEST"), b"m1").unwrap();
        std::fs::write(snap.join("task.json"), b"{}").unwrap();
        let t1 = Target::Checkpoint {
            id: 1,
            instance: "i",
            db: "i-0",
        };
        let (m1, man1) = s.write(0, &snap, t1, 10).unwrap();
        assert_eq!(man1.files.len(), 3);
        assert!(
            man1.files
                .iter()
                .any(|f| f.object == "checkpoints/task-0/shared/i-0/000001.sst")
        );
        // Second checkpoint: one more SST; the first is referenced, not re-uploaded.
        std::fs::write(snap.join("state/000002.sst"), b"bb").unwrap();
        std::fs::remove_file(tmp.path().join("store/checkpoints/task-0/shared/i-0/000001.sst")).unwrap();
        let t2 = Target::Checkpoint {
            id: 2,
            instance: "i",
            db: "i-0",
        };
        let (m2, _) = s.write(0, &snap, t2, 20).unwrap();
        assert!(
            !tmp.path()
                .join("store/checkpoints/task-0/shared/i-0/000001.sst")
                .exists(),
            "an SST already uploaded must not be uploaded again"
        );
        std::fs::write(
            tmp.path().join("store/checkpoints/task-0/shared/i-0/000001.sst"),
            b"aaaa",
        )
        .unwrap();
        assert_eq!(s.read_manifest(&m2).unwrap().files.len(), 4);
        // Retain only checkpoint 2: checkpoint 1's own files go, shared SSTs stay.
        std::fs::remove_file(snap.join("state/000001.sst")).unwrap();
        let deleted = s.retain(0, std::slice::from_ref(&m2), "i").unwrap();
        assert_eq!(deleted, 3, "checkpoint 1's manifest, MANIFEST and task.json");
        assert!(s.read_manifest(&m1).is_err());
        let man2 = s.read_manifest(&m2).unwrap();
        let out = tmp.path().join("restored");
        s.download(&man2, &out).unwrap();
        assert_eq!(std::fs::read(out.join("state/000002.sst")).unwrap(), b"bb");
        assert_eq!(std::fs::read(out.join("state/000001.sst")).unwrap(), b"aaaa");
    }

    #[test]
    fn savepoints_are_self_contained_and_located_under_the_storage() {
        let tmp = tempfile::tempdir().unwrap();
        let (rt, mut s) = store(&tmp.path().join("store"));
        let snap = tmp.path().join("snap");
        std::fs::create_dir_all(snap.join("state")).unwrap();
        std::fs::write(snap.join("state/000009.sst"), b"x").unwrap();
        let (path, _) = s
            .write(
                3,
                &snap,
                Target::Savepoint {
                    id: "sp-1",
                    checkpoint_id: 4,
                    instance: "i",
                },
                0,
            )
            .unwrap();
        assert_eq!(path, "savepoints/sp-1/task-3/manifest.json");
        let loc = s.savepoint_location("sp-1");
        assert_eq!(s.savepoint_manifest(&loc, 3).unwrap(), path);
        assert!(
            s.read_manifest(&path).unwrap().files[0]
                .object
                .starts_with("savepoints/sp-1/")
        );
        let err = s
            .savepoint_manifest("file:///elsewhere/savepoints/sp-1", 3)
            .unwrap_err();
        assert!(err.to_string().contains("not under"), "{err}");
        assert!(CheckpointStore::open("file://relative", rt.handle().clone()).is_err());
    }

    /// After a restart, the restored RocksDB is opened in place and the
    /// first checkpoint references the stored SST files: it uploads what
    /// changed, not the whole state again.
    #[test]
    fn the_first_checkpoint_after_a_restore_uploads_only_what_changed() {
        use crate::state::StateBackend;
        use crate::state::rocks::{RocksBackend, RocksOptions};
        let tmp = tempfile::tempdir().unwrap();
        let (_rt, s) = store(&tmp.path().join("store"));
        let mut s = s.owned_by("job");
        let mut db = RocksBackend::open(&tmp.path().join("db-a"), &RocksOptions::default()).unwrap();
        let mut batch = crate::state::StateBatch::default();
        for i in 0..50_000u32 {
            batch.put(
                i.to_be_bytes().to_vec(),
                format!("value-{i}-{}", "x".repeat(40)).into_bytes(),
            );
        }
        db.write(0, batch).unwrap();
        let snap = tmp.path().join("snap-a");
        std::fs::create_dir_all(&snap).unwrap();
        db.snapshot(&snap.join("state")).unwrap();
        let target = |id, instance| Target::Checkpoint {
            id,
            instance,
            db: if instance == "a" { "a-0" } else { "b-0" },
        };
        let (m1, man1) = s.write(0, &snap, target(1, "a"), 0).unwrap();
        let full = s.last_uploaded_bytes;
        assert!(full > 500_000, "the first checkpoint uploads the state: {full}");
        drop(db);

        // "Restart": a new instance downloads checkpoint 1, opens it in place.
        let (_rt2, s2) = store(&tmp.path().join("store"));
        let mut s2 = s2.owned_by("job");
        let restored = tmp.path().join("restore");
        s2.download(&s2.read_manifest(&m1).unwrap(), &restored).unwrap();
        let mut db = RocksBackend::open_snapshot(
            &restored.join("state"),
            &tmp.path().join("db-b"),
            &RocksOptions::default(),
        )
        .unwrap();
        s2.adopt(0, &man1);
        let mut batch = crate::state::StateBatch::default();
        batch.put(b"new".to_vec(), b"v".to_vec());
        db.write(0, batch).unwrap();
        let snap2 = tmp.path().join("snap-b");
        std::fs::create_dir_all(&snap2).unwrap();
        db.snapshot(&snap2.join("state")).unwrap();
        let (m2, man2) = s2.write(0, &snap2, target(2, "b"), 0).unwrap();
        let incremental = s2.last_uploaded_bytes;
        assert!(
            incremental * 10 < full,
            "after a restore only the change is uploaded: {incremental} of {full} bytes"
        );
        assert!(
            man2.files
                .iter()
                .any(|f| f.object.starts_with("checkpoints/task-0/shared/a-0/"))
        );
        // Retention of the new instance keeps what its manifest references.
        s2.retain(0, std::slice::from_ref(&m2), "b").unwrap();
        let out = tmp.path().join("again");
        s2.download(&s2.read_manifest(&m2).unwrap(), &out).unwrap();
        let db = RocksBackend::open_snapshot(
            &out.join("state"),
            &tmp.path().join("db-c"),
            &RocksOptions::default(),
        )
        .unwrap();
        assert_eq!(db.key_count(0).unwrap(), 50_001);
    }

    /// Files under `dir`, relative, sorted (an independent look at the disk).
    fn files(dir: &Path) -> Vec<String> {
        walk(dir).unwrap().into_iter().map(|(rel, _)| rel).collect()
    }

    #[test]
    fn deleting_a_savepoint_removes_its_objects_only_and_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("store");
        let (_rt, mut s) = store(&root);
        let snap = tmp.path().join("snap");
        std::fs::create_dir_all(snap.join("state")).unwrap();
        std::fs::write(snap.join("state/000001.sst"), b"x").unwrap();
        std::fs::write(snap.join("task.json"), b"{}").unwrap();
        for (id, task) in [("sp-1", 0), ("sp-1", 1), ("sp-10", 0)] {
            let target = Target::Savepoint {
                id,
                checkpoint_id: 1,
                instance: "i",
            };
            s.write(task, &snap, target, 0).unwrap();
        }
        let checkpoint = Target::Checkpoint {
            id: 2,
            instance: "i",
            db: "db",
        };
        s.write(0, &snap, checkpoint, 0).unwrap();
        let before = files(&root);

        // Two tasks of three objects each (two files and the manifest).
        assert_eq!(s.delete_savepoint("sp-1").unwrap(), 6);
        let after = files(&root);
        let gone: Vec<&String> = before.iter().filter(|f| !after.contains(f)).collect();
        assert_eq!(gone.len(), 6, "{gone:?}");
        assert!(gone.iter().all(|f| f.starts_with("savepoints/sp-1/")), "{gone:?}");
        assert!(
            !root.join("savepoints/sp-1").exists(),
            "its emptied directories go too"
        );
        assert!(after.iter().any(|f| f.starts_with("savepoints/sp-10/")));
        assert!(after.iter().any(|f| f.starts_with("checkpoints/")));
        assert!(s.read_manifest("savepoints/sp-10/task-0/manifest.json").is_ok());

        // Again, and a savepoint that never existed: nothing to do, no error.
        assert_eq!(s.delete_savepoint("sp-1").unwrap(), 0);
        assert_eq!(s.delete_savepoint("sp-never").unwrap(), 0);
        // Ids that are not one path segment never reach the storage.
        for bad in ["", "..", "../checkpoints", "a/b", ".hidden"] {
            assert!(s.delete_savepoint(bad).is_err(), "{bad:?}");
        }
        assert_eq!(files(&root), after);
    }

    #[test]
    fn the_savepoint_the_process_restored_from_is_never_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("store");
        let (_rt, mut s) = store(&root);
        let snap = tmp.path().join("snap");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("task.json"), b"{}").unwrap();
        for id in ["sp-1", "sp-2"] {
            let target = Target::Savepoint {
                id,
                checkpoint_id: 1,
                instance: "i",
            };
            s.write(0, &snap, target, 0).unwrap();
        }
        let url = s.url().to_string();
        assert_eq!(s.savepoint_id_at(&format!("{url}/savepoints/sp-1")), Some("sp-1"));
        assert_eq!(
            s.savepoint_id_at(&format!("{url}/savepoints/sp-1/")),
            Some("sp-1")
        );
        assert_eq!(s.savepoint_id_at(&format!("{url}/savepoints/sp-1/task-0")), None);
        assert_eq!(s.savepoint_id_at("file:///elsewhere/savepoints/sp-1"), None);

        let restored = format!("{url}/savepoints/sp-1/");
        let refused = s.delete_savepoint_unless_restored("sp-1", Some(&restored));
        assert!(matches!(refused, DeletionOutcome::Refused(_)), "{refused:?}");
        assert!(s.read_manifest("savepoints/sp-1/task-0/manifest.json").is_ok());
        assert_eq!(
            s.delete_savepoint_unless_restored("sp-2", Some(&restored)),
            DeletionOutcome::Deleted(2)
        );
        // A savepoint of the same id in another storage is not this one.
        assert_eq!(
            s.delete_savepoint_unless_restored("sp-1", Some("file:///elsewhere/savepoints/sp-1")),
            DeletionOutcome::Deleted(2)
        );
        assert_eq!(
            s.delete_savepoint_unless_restored("sp-1", None),
            DeletionOutcome::Deleted(0)
        );
        assert!(matches!(
            s.delete_savepoint_unless_restored("../x", None),
            DeletionOutcome::Failed(_)
        ));
    }
}
