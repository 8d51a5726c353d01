//! Which checkpoint objects a task may delete: only what it can prove is
//! its own or its predecessors', never a successor's or another job's.
//!
//! Objects of task `t` (see [`super::store`]):
//! `checkpoints/task-<t>/<id>-<instance>/...` (a checkpoint directory,
//! complete once its `manifest.json` exists) and
//! `checkpoints/task-<t>/shared/<instance>-<t>/<n>.sst` (a RocksDB instance's
//! immutable files, shared by that instance's incremental checkpoints).
//!
//! After each commit a task keeps the checkpoint its marker names and the
//! one before ([`plan`]'s `kept`), and deletes:
//!
//! - its own instance's other directories and shared files not referenced
//!   by a kept manifest;
//! - everything of a *predecessor*: another instance of the same job (its
//!   manifests carry this job's uid) whose newest checkpoint id is older
//!   than the oldest kept one.
//!
//! Checkpoint ids rise with wall time and a restored task continues above
//! the id it restored, so a successor's ids exceed everything its
//! predecessor committed: the id is the fencing epoch of storage. A zombie
//! (a process fenced in Kafka that has not noticed yet) keeps ids older than
//! its successor's, so it never counts the successor as its predecessor and
//! never deletes its objects; a job sharing the storage prefix by mistake
//! writes manifests with another uid and is never touched. Objects whose
//! owner cannot be proven (a directory without a manifest of an instance
//! with no manifest at all) are left alone.
//!
//! One exception, so that storage does not grow for ever: shared files of
//! an instance that has no checkpoint directory left (a predecessor whose
//! directories are gone while later checkpoints still referenced some of
//! its SSTs) go once no manifest in the task's prefix (of any instance or
//! job) references them and they are older than every kept checkpoint by
//! [`ORPHAN_MARGIN_MS`] (a successor's first uploads, made before its first
//! manifest, are newer than what a zombie keeps).

use std::collections::{BTreeMap, BTreeSet};

use super::store::Manifest;

/// How much older than the oldest kept checkpoint an unreferenced shared
/// file of an instance without directories must be to go (clock skew
/// between writers and the store).
pub const ORPHAN_MARGIN_MS: i64 = 10 * 60 * 1000;

/// The process running the retention.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub job_uid: &'a str,
    pub instance: &'a str,
}

/// What an object path of task `task` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// `checkpoints/task-<t>/<id>-<instance>/<file>`; `dir` without the slash.
    Dir { dir: String, id: u64, instance: String },
    /// `checkpoints/task-<t>/shared/<instance>-<t>/<file>`.
    Shared { instance: String },
    /// Anything else: never deleted.
    Other,
}

pub fn classify(task: u32, path: &str) -> Object {
    let prefix = format!("checkpoints/task-{task}/");
    let Some(rest) = path.strip_prefix(&prefix) else {
        return Object::Other;
    };
    let Some((first, tail)) = rest.split_once('/') else {
        return Object::Other;
    };
    if first == "shared" {
        let suffix = format!("-{task}");
        return match tail.split_once('/') {
            Some((db, file)) if !file.is_empty() => match db.strip_suffix(&suffix) {
                Some(instance) if !instance.is_empty() => Object::Shared {
                    instance: instance.to_owned(),
                },
                _ => Object::Other,
            },
            _ => Object::Other,
        };
    }
    match first.split_once('-') {
        Some((id, instance)) if !instance.is_empty() && !tail.is_empty() => match id.parse() {
            Ok(id) => Object::Dir {
                dir: format!("{prefix}{first}"),
                id,
                instance: instance.to_owned(),
            },
            Err(_) => Object::Other,
        },
        _ => Object::Other,
    }
}

/// The objects of `listing` to delete. `kept`: (manifest path, manifest)
/// of the checkpoints to keep; `manifests`: the manifest of each checkpoint
/// directory of another instance found in `listing`, by directory (`None`:
/// none, or unreadable); `modified`: objects' last-modified times (ms).
pub fn plan(
    task: u32,
    owner: Owner<'_>,
    kept: &[(String, Manifest)],
    listing: &[String],
    manifests: &BTreeMap<String, Option<Manifest>>,
    modified: &BTreeMap<String, i64>,
) -> Vec<String> {
    let Some(oldest_kept) = kept.iter().map(|(_, m)| m.checkpoint_id).min() else {
        return Vec::new(); // nothing committed: nothing to measure against
    };
    let kept_dirs: BTreeSet<&str> = kept
        .iter()
        .filter_map(|(p, _)| p.strip_suffix("/manifest.json"))
        .collect();
    let referenced: BTreeSet<&str> = kept
        .iter()
        .flat_map(|(_, m)| m.files.iter().map(|f| f.object.as_str()))
        .collect();
    // Per other instance: newest directory id, whether a manifest proves it
    // is this job's, whether one says it is another job's.
    #[derive(Default)]
    struct Seen {
        newest: u64,
        ours: bool,
        foreign: bool,
    }
    let mut instances: BTreeMap<String, Seen> = BTreeMap::new();
    for path in listing {
        if let Object::Dir { dir, id, instance } = classify(task, path)
            && instance != owner.instance
        {
            let seen = instances.entry(instance).or_default();
            seen.newest = seen.newest.max(id);
            if let Some(Some(m)) = manifests.get(&dir) {
                match m.job_uid.as_deref() {
                    // Written before manifests named their job: this job's
                    // (storage is per job unless an administrator allows
                    // otherwise).
                    None => seen.ours = true,
                    Some(uid) if uid == owner.job_uid => seen.ours = true,
                    Some(_) => seen.foreign = true,
                }
            }
        }
    }
    let predecessor = |instance: &str| {
        instances
            .get(instance)
            .is_some_and(|s| s.ours && !s.foreign && s.newest < oldest_kept)
    };
    let referenced_anywhere: BTreeSet<&str> = manifests
        .values()
        .flatten()
        .flat_map(|m| m.files.iter().map(|f| f.object.as_str()))
        .collect();
    let kept_since = kept.iter().map(|(_, m)| m.created_ms).min().unwrap_or(i64::MIN);
    let orphan = |instance: &str, path: &str| {
        !instances.contains_key(instance)
            && !referenced_anywhere.contains(path)
            && modified
                .get(path)
                .is_some_and(|t| *t < kept_since.saturating_sub(ORPHAN_MARGIN_MS))
    };
    listing
        .iter()
        .filter(|path| match classify(task, path) {
            Object::Dir { dir, instance, .. } => {
                !kept_dirs.contains(dir.as_str()) && (instance == owner.instance || predecessor(&instance))
            }
            Object::Shared { instance } => {
                !referenced.contains(path.as_str())
                    && (instance == owner.instance || predecessor(&instance) || orphan(&instance, path))
            }
            Object::Other => false,
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::marker::MarkerKind;
    use crate::checkpoint::store::FileEntry;

    const ME: Owner<'static> = Owner {
        job_uid: "job-a",
        instance: "bbb",
    };

    fn manifest(id: u64, instance: &str, uid: Option<&str>, shared: &[&str]) -> (String, Manifest) {
        let dir = format!("checkpoints/task-0/{id}-{instance}");
        let mut files = vec![FileEntry {
            path: "task.json".into(),
            object: format!("{dir}/task.json"),
            size: 2,
        }];
        files.extend(shared.iter().map(|s| FileEntry {
            path: format!("state/{s}"),
            object: format!("checkpoints/task-0/shared/{instance}-0/{s}"),
            size: 1,
        }));
        let m = Manifest {
            task: 0,
            checkpoint_id: id,
            instance: instance.into(),
            kind: MarkerKind::Checkpoint,
            savepoint_id: None,
            files,
            created_ms: 0,
            job_uid: uid.map(str::to_owned),
        };
        (format!("{dir}/manifest.json"), m)
    }

    /// Every object of the manifests (directory files, manifest, shared).
    fn objects(ms: &[&(String, Manifest)]) -> Vec<String> {
        let mut out: BTreeSet<String> = BTreeSet::new();
        for (path, m) in ms {
            out.insert(path.clone());
            out.extend(m.files.iter().map(|f| f.object.clone()));
        }
        out.into_iter().collect()
    }

    fn by_dir(ms: &[&(String, Manifest)]) -> BTreeMap<String, Option<Manifest>> {
        ms.iter()
            .map(|(p, m)| (p.trim_end_matches("/manifest.json").to_owned(), Some(m.clone())))
            .collect()
    }

    #[test]
    fn paths_are_classified_by_owner() {
        assert_eq!(
            classify(0, "checkpoints/task-0/17-abc/task.json"),
            Object::Dir {
                dir: "checkpoints/task-0/17-abc".into(),
                id: 17,
                instance: "abc".into()
            }
        );
        assert_eq!(
            classify(0, "checkpoints/task-0/shared/abc-0/000001.sst"),
            Object::Shared {
                instance: "abc".into()
            }
        );
        for other in [
            "checkpoints/task-1/17-abc/task.json",
            "checkpoints/task-0/x-abc/task.json",
            "checkpoints/task-0/shared/abc-1/000001.sst",
            "checkpoints/task-0/17-abc",
            "savepoints/sp/task-0/manifest.json",
        ] {
            assert_eq!(classify(0, other), Object::Other, "{other}");
        }
    }

    #[test]
    fn own_and_predecessor_objects_go_what_is_kept_stays() {
        let old = manifest(100, "aaa", Some("job-a"), &["1.sst"]);
        let legacy = manifest(90, "zzz", None, &["9.sst"]);
        let mine_old = manifest(200, "bbb", Some("job-a"), &["2.sst", "3.sst"]);
        let mine_kept = manifest(300, "bbb", Some("job-a"), &["3.sst", "4.sst"]);
        let all = [&old, &legacy, &mine_old, &mine_kept];
        let deleted = plan(
            0,
            ME,
            std::slice::from_ref(&mine_kept),
            &objects(&all),
            &by_dir(&all),
            &BTreeMap::new(),
        );
        let expect: BTreeSet<String> = objects(&[&old, &legacy, &mine_old])
            .into_iter()
            .filter(|o| !o.ends_with("3.sst"))
            .collect();
        assert_eq!(deleted.into_iter().collect::<BTreeSet<_>>(), expect);
    }

    #[test]
    fn a_zombie_never_deletes_its_successors_objects_nor_another_jobs() {
        // The zombie "aaa" committed 100 and 110; its successor "bbb"
        // restored 110 and wrote 120 (and an upload without manifest yet).
        let z1 = manifest(100, "aaa", Some("job-a"), &["1.sst"]);
        let z2 = manifest(110, "aaa", Some("job-a"), &["1.sst", "2.sst"]);
        let s1 = manifest(120, "bbb", Some("job-a"), &["5.sst"]);
        let other_job = manifest(50, "ccc", Some("job-b"), &["7.sst"]);
        let mut listing = objects(&[&z1, &z2, &s1, &other_job]);
        listing.push("checkpoints/task-0/130-bbb/task.json".into());
        listing.push("checkpoints/task-0/shared/bbb-0/6.sst".into());
        let mut manifests = by_dir(&[&z1, &z2, &s1, &other_job]);
        manifests.insert("checkpoints/task-0/130-bbb".into(), None);
        let zombie = Owner {
            job_uid: "job-a",
            instance: "aaa",
        };
        let deleted = plan(
            0,
            zombie,
            &[z1.clone(), z2.clone()],
            &listing,
            &manifests,
            &BTreeMap::new(),
        );
        assert!(
            deleted.is_empty(),
            "the zombie keeps both its checkpoints and touches nothing else: {deleted:?}"
        );
        let deleted = plan(
            0,
            zombie,
            std::slice::from_ref(&z2),
            &listing,
            &manifests,
            &BTreeMap::new(),
        );
        assert!(
            deleted.iter().all(|o| o.contains("/100-aaa/")),
            "only its own older directory: {deleted:?}"
        );
        // The successor deletes the zombie's objects, never job-b's.
        let deleted = plan(
            0,
            ME,
            std::slice::from_ref(&s1),
            &listing,
            &manifests,
            &BTreeMap::new(),
        );
        assert!(deleted.iter().any(|o| o.ends_with("aaa-0/2.sst")), "{deleted:?}");
        assert!(!deleted.iter().any(|o| o.contains("ccc")), "{deleted:?}");
        assert!(!deleted.iter().any(|o| o.contains("5.sst")), "{deleted:?}");
    }

    /// "ppp" restored nothing left: its directories are gone, one of its
    /// SSTs is still referenced by the kept checkpoint, one by another
    /// job's manifest, one by nobody.
    #[test]
    fn unreferenced_old_files_of_an_instance_without_directories_go() {
        let mut kept = manifest(500, "bbb", Some("job-a"), &["5.sst"]);
        kept.1.created_ms = 100 * 60 * 1000;
        kept.1.files.push(FileEntry {
            path: "state/1.sst".into(),
            object: "checkpoints/task-0/shared/ppp-0/1.sst".into(),
            size: 1,
        });
        let mut other_job = manifest(40, "ccc", Some("job-b"), &[]);
        other_job.1.files.push(FileEntry {
            path: "state/2.sst".into(),
            object: "checkpoints/task-0/shared/ppp-0/2.sst".into(),
            size: 1,
        });
        let ppp = |n: u32| format!("checkpoints/task-0/shared/ppp-0/{n}.sst");
        let mut listing = objects(&[&kept, &other_job]);
        listing.extend([ppp(3), ppp(4)]);
        listing.push("checkpoints/task-0/shared/ppp-0/2.sst".into());
        let manifests = by_dir(&[&other_job]);
        let old = kept.1.created_ms - ORPHAN_MARGIN_MS - 1;
        let mut modified: BTreeMap<String, i64> = listing.iter().map(|o| (o.clone(), old)).collect();
        modified.insert(ppp(4), kept.1.created_ms - 1); // recent: maybe a successor's upload
        let deleted = plan(
            0,
            ME,
            std::slice::from_ref(&kept),
            &listing,
            &manifests,
            &modified,
        );
        assert_eq!(deleted, vec![ppp(3)], "only the old file nothing references");
    }

    #[test]
    fn an_instance_newer_than_what_is_kept_or_without_any_manifest_is_left_alone() {
        let mine = manifest(100, "bbb", Some("job-a"), &["1.sst"]);
        // "ddd" is newer than everything kept (a successor); "eee" never
        // finished a manifest.
        let newer = manifest(150, "ddd", Some("job-a"), &["2.sst"]);
        let mut listing = objects(&[&mine, &newer]);
        listing.push("checkpoints/task-0/40-eee/task.json".into());
        listing.push("checkpoints/task-0/shared/eee-0/3.sst".into());
        let mut manifests = by_dir(&[&mine, &newer]);
        manifests.insert("checkpoints/task-0/40-eee".into(), None);
        assert!(
            plan(
                0,
                ME,
                std::slice::from_ref(&mine),
                &listing,
                &manifests,
                &BTreeMap::new()
            )
            .is_empty()
        );
        assert!(
            plan(0, ME, &[], &listing, &manifests, &BTreeMap::new()).is_empty(),
            "nothing kept: nothing deleted"
        );
    }
}
