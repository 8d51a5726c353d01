//! What a StreamJob spec change means for a running job: a pure function of
//! the old and new spec, compared after defaulting (so writing out a default
//! is never a change).
//!
//! The operator uses it to decide what to do before touching anything; the
//! runtime uses [`state_compatibility`] to refuse restoring a savepoint into a
//! pipeline that would misread it.
//!
//! # State-compatibility matrix
//!
//! State is keyed by (input partition, group key, window) and holds one
//! accumulator per aggregation name. A change is compatible when every piece
//! of restored state still means what the new pipeline thinks it means:
//!
//! | Change | Verdict | Why |
//! |---|---|---|
//! | a stateless pipeline (no `keyBy`, `window`, `aggregations`) gains a window, or a windowed one loses it | incompatible | the windows' state would be missing or dropped |
//! | anything in a stateless pipeline (steps, `sink.key`) | compatible | its only state is the source offsets |
//! | `pipeline.keyBy` | incompatible | state is keyed by the old key |
//! | `pipeline.window` (type, size, slide, gap) | incompatible | open windows have the old bounds |
//! | aggregation added | compatible | open windows start it empty |
//! | aggregation removed | compatible | its accumulators are dropped |
//! | aggregation's `function`, `field` or `k` changed | incompatible | the accumulator holds something else |
//! | `pipeline.filter`, `allowedLateness`, `emit` | compatible | they act on records not yet seen |
//! | `pipeline.steps`: a step added, removed, changed, reordered or renamed | compatible | steps hold no state; they act on records not yet seen |
//! | `pipeline.resultSteps` (the same) | compatible | they act on results not yet emitted |
//! | `source.eventTime`, `source.watermark` | compatible | watermarks are kept per partition; new records use the new rule |
//! | `source.topics` reordered, or one replaced by another with the same partition total | compatible | every partition keeps its task and offsets ([`crate::layout`]); a new topic starts at `startFrom`, a removed one stops being read |
//! | `source.topics` changing the partition total | refused at restore | keyed state is sharded by the total (re-sharding is not built) |
//! | sink, late-events, dead-letter topics, formats | compatible | outputs only |
//! | `parallelism` | compatible | state is per input partition and moves with it |
//! | image, resources, pod template, cluster, checkpoint settings | compatible | not part of state |
//! | `autoscaler` | ignored | read by the operator only; never restarts pods |
//!
//! An incompatible change is refused (`Stalled`, before any savepoint) unless
//! `spec.restore.allowEmptyState` is true, in which case the new version
//! starts with empty state from the committed input offsets.

use std::collections::BTreeMap;

use crate::job::{AggregationSpec, JobState, StreamJobSpec};

/// What the operator must do to go from the running spec to the new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Nothing that running pods see changed (timeouts, retention, restore
    /// hints, the upgrade mode itself): update status only.
    Ignore,
    /// Only `parallelism` changed: savepoint, restart with new partition
    /// owners, restore.
    Rescale,
    /// Anything the pods run changed: savepoint (per `upgradeMode`), roll out
    /// the new spec, restore.
    Upgrade,
    /// `state` went to `suspended`: stop with a savepoint, run nothing.
    Suspend,
    /// `state` went back to `running`: start from the suspend savepoint (and
    /// apply whatever else changed meanwhile).
    Resume,
}

/// Whether state written by the old pipeline can be restored into the new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compatibility {
    Compatible,
    /// Each entry names a field and why its state cannot carry over.
    Incompatible(Vec<String>),
}

impl Compatibility {
    pub fn is_compatible(&self) -> bool {
        matches!(self, Self::Compatible)
    }
}

/// The verdict on one spec change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecChange {
    pub kind: ChangeKind,
    pub compatibility: Compatibility,
    /// The new spec asked for a savepoint (a new `savepointNonce`).
    pub savepoint_requested: bool,
}

/// Classifies the change from `old` (what runs) to `new` (what the spec says).
pub fn classify(old: &StreamJobSpec, new: &StreamJobSpec) -> SpecChange {
    let (old, new) = (old.defaulted(), new.defaulted());
    let savepoint_requested = new.savepoint_nonce.is_some() && new.savepoint_nonce != old.savepoint_nonce;
    let compatibility = state_compatibility(&old, &new);
    let kind = match (old.state, new.state) {
        (Some(JobState::Running), Some(JobState::Suspended)) => ChangeKind::Suspend,
        (Some(JobState::Suspended), Some(JobState::Running)) => ChangeKind::Resume,
        _ if runtime_view(&old) != runtime_view(&new) => ChangeKind::Upgrade,
        _ if old.parallelism != new.parallelism => ChangeKind::Rescale,
        _ => ChangeKind::Ignore,
    };
    SpecChange {
        kind,
        compatibility,
        savepoint_requested,
    }
}

/// What changed in the named steps of `old` -> `new`, one line each, in
/// the order of the new spec (then the removed ones): every step holds no
/// state, so each line says it is compatible.
pub fn step_changes(old: &StreamJobSpec, new: &StreamJobSpec) -> Vec<String> {
    let mut lines = Vec::new();
    for (list, before, after) in [
        ("spec.pipeline.steps", &old.pipeline.steps, &new.pipeline.steps),
        (
            "spec.pipeline.resultSteps",
            &old.pipeline.result_steps,
            &new.pipeline.result_steps,
        ),
    ] {
        let old_names: Vec<&str> = before.iter().map(|s| s.name.as_str()).collect();
        for step in after {
            match before.iter().find(|s| s.name == step.name) {
                None => lines.push(format!(
                    "{list}: step {:?} added (stateless: compatible)",
                    step.name
                )),
                Some(was) if was != step => lines.push(format!(
                    "{list}: step {:?} changed (stateless: compatible)",
                    step.name
                )),
                Some(_) => {}
            }
        }
        for name in &old_names {
            if !after.iter().any(|s| s.name == *name) {
                lines.push(format!("{list}: step {name:?} removed (stateless: compatible)"));
            }
        }
        let kept_old: Vec<&str> = old_names
            .iter()
            .copied()
            .filter(|n| after.iter().any(|s| s.name == *n))
            .collect();
        let kept_new: Vec<&str> = after
            .iter()
            .map(|s| s.name.as_str())
            .filter(|n| old_names.contains(n))
            .collect();
        if kept_old != kept_new {
            lines.push(format!(
                "{list}: steps reordered, now {kept_new:?} (stateless: compatible)"
            ));
        }
    }
    lines
}

/// The part of a (defaulted) spec that running pods execute: everything but
/// parallelism, lifecycle requests and operator-side settings. The operator
/// derives a pod template's revision from it, so an ignored change never
/// makes running pods look outdated.
pub fn runtime_view(spec: &StreamJobSpec) -> StreamJobSpec {
    let mut view = spec.clone();
    view.parallelism = None;
    view.state = None;
    view.savepoint_nonce = None;
    view.restore = None;
    view.upgrade_mode = None;
    view.upgrade = None;
    // Operator-side: read by the operator's autoscaler, never by the pods.
    view.autoscaler = None;
    if let Some(cp) = view.checkpoint.as_mut() {
        cp.savepoints_to_keep = None;
        cp.savepoint_max_age = None;
    }
    view
}

/// Applies the matrix in the module documentation.
pub fn state_compatibility(old: &StreamJobSpec, new: &StreamJobSpec) -> Compatibility {
    let mut reasons = Vec::new();
    match (old.is_stateless(), new.is_stateless()) {
        (true, true) => return Compatibility::Compatible,
        (false, true) => {
            return Compatibility::Incompatible(vec![
                "the pipeline loses its window (keyBy, window and aggregations removed): the open windows' state \
                 would be dropped and never emitted"
                    .to_owned(),
            ]);
        }
        (true, false) => {
            return Compatibility::Incompatible(vec![
                "the pipeline gains a window (keyBy, window and aggregations added): a stateless job's savepoint \
                 holds no windows, so the first ones would miss the records read before"
                    .to_owned(),
            ]);
        }
        (false, false) => {}
    }
    if old.pipeline.key_by != new.pipeline.key_by {
        reasons.push(format!(
            "spec.pipeline.keyBy changed ({:?} -> {:?}): state is keyed by the old key",
            old.pipeline.key_by, new.pipeline.key_by
        ));
    }
    if old.pipeline.window != new.pipeline.window {
        reasons.push("spec.pipeline.window changed: open windows have the old bounds".to_owned());
    }
    let by_name = |aggs: &[AggregationSpec]| -> BTreeMap<String, AggregationSpec> {
        aggs.iter().map(|a| (a.name.clone(), a.clone())).collect()
    };
    let (old_aggs, new_aggs) = (
        by_name(&old.pipeline.aggregations),
        by_name(&new.pipeline.aggregations),
    );
    for (name, new_agg) in &new_aggs {
        if let Some(old_agg) = old_aggs.get(name)
            && old_agg != new_agg
        {
            reasons.push(format!(
                "aggregation {name:?} changed its function, field or k: its state holds something else \
                 (give the new aggregation a new name to start it empty)"
            ));
        }
    }
    if reasons.is_empty() {
        Compatibility::Compatible
    } else {
        Compatibility::Incompatible(reasons)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{AggregateFunction, WindowKind};

    fn base() -> StreamJobSpec {
        serde_json::from_value(serde_json::json!({
            "source": {"topics": ["clicks"], "eventTime": {"field": "record.ts"}},
            "pipeline": {
                "keyBy": ["record.user_id"],
                "window": {"type": "tumbling", "size": "10s"},
                "aggregations": [{"name": "clicks", "function": "count"}]
            },
            "sink": {"topic": "out"}
        }))
        .unwrap()
    }

    fn change(edit: impl FnOnce(&mut StreamJobSpec)) -> SpecChange {
        let old = base();
        let mut new = base();
        edit(&mut new);
        classify(&old, &new)
    }

    fn stateless() -> StreamJobSpec {
        serde_json::from_value(serde_json::json!({
            "source": {"topics": ["clicks"]},
            "pipeline": {"steps": [{"name": "valid", "filter": "record.amount > 0"}]},
            "sink": {"topic": "out"}
        }))
        .unwrap()
    }

    #[test]
    fn a_pipeline_gaining_or_losing_its_window_is_incompatible_and_stateless_changes_are_not() {
        let (etl, windowed) = (stateless(), base());
        for (old, new, lost) in [(&etl, &windowed, "gains"), (&windowed, &etl, "loses")] {
            let c = classify(old, new);
            assert_eq!(c.kind, ChangeKind::Upgrade);
            match c.compatibility {
                Compatibility::Incompatible(r) => {
                    assert_eq!(r.len(), 1, "{r:?}");
                    assert!(r[0].starts_with(&format!("the pipeline {lost} ")), "{r:?}");
                }
                other => panic!("{other:?}"),
            }
        }
        let mut new = stateless();
        new.pipeline.steps[0].filter = Some("record.amount >= 0".into());
        new.sink.key = Some("record.user_id".into());
        let c = classify(&etl, &new);
        assert_eq!(
            (c.kind, c.compatibility),
            (ChangeKind::Upgrade, Compatibility::Compatible)
        );
    }

    #[test]
    fn writing_out_a_default_is_not_a_change() {
        let c = change(|s| s.upgrade_mode = Some(crate::job::UpgradeMode::Savepoint));
        assert_eq!(c.kind, ChangeKind::Ignore);
        let c = change(|s| *s = s.defaulted());
        assert_eq!(c.kind, ChangeKind::Ignore);
        assert!(c.compatibility.is_compatible());
    }

    #[test]
    fn operator_side_settings_are_ignored() {
        for edit in [
            (|s: &mut StreamJobSpec| s.upgrade_mode = Some(crate::job::UpgradeMode::Stateless)) as fn(&mut _),
            |s| {
                s.restore = Some(crate::job::RestoreSpec {
                    from_savepoint: None,
                    allow_empty_state: Some(true),
                })
            },
            |s| {
                s.checkpoint = Some(crate::job::CheckpointSpec {
                    interval: None,
                    guarantee: None,
                    storage: None,
                    savepoints_to_keep: Some(9),
                    savepoint_max_age: None,
                })
            },
            |s| {
                s.autoscaler = Some(
                    serde_json::from_value(serde_json::json!({"mode": "apply", "targetLag": "30s"})).unwrap(),
                )
            },
        ] {
            assert_eq!(change(edit).kind, ChangeKind::Ignore);
        }
    }

    #[test]
    fn steps_hold_no_state_so_any_change_to_them_is_a_compatible_upgrade() {
        let steps =
            |json: serde_json::Value| -> Vec<crate::job::StepSpec> { serde_json::from_value(json).unwrap() };
        let one = steps(serde_json::json!([{"name": "paid", "filter": "record.amount > 0"}]));
        let two = steps(serde_json::json!([
            {"name": "shape", "map": {"user_id": "record.user_id", "ts": "record.ts"}},
            {"name": "paid-again", "filter": "record.amount > 1"},
        ]));
        for (from, to) in [(vec![], one.clone()), (one.clone(), two.clone()), (two, vec![])] {
            let mut old = base();
            old.pipeline.steps = from;
            let mut new = base();
            new.pipeline.steps = to;
            let c = classify(&old, &new);
            assert_eq!(c.kind, ChangeKind::Upgrade);
            assert!(c.compatibility.is_compatible(), "{c:?}");
        }
    }

    #[test]
    fn step_changes_are_listed_one_by_one() {
        let mut old = base();
        old.pipeline.steps = serde_json::from_value(serde_json::json!([
            {"name": "a", "filter": "record.x > 0"},
            {"name": "b", "map": {"x": "record.x"}},
            {"name": "c", "filter": "true"},
        ]))
        .unwrap();
        let mut new = base();
        new.pipeline.steps = serde_json::from_value(serde_json::json!([
            {"name": "c", "filter": "true"},
            {"name": "a", "filter": "record.x > 1"},
            {"name": "d", "map": {"y": "record.x"}},
        ]))
        .unwrap();
        new.pipeline.result_steps =
            serde_json::from_value(serde_json::json!([{"name": "alert", "filter": "record.clicks > 5"}]))
                .unwrap();
        assert_eq!(
            step_changes(&old, &new),
            vec![
                "spec.pipeline.steps: step \"a\" changed (stateless: compatible)",
                "spec.pipeline.steps: step \"d\" added (stateless: compatible)",
                "spec.pipeline.steps: step \"b\" removed (stateless: compatible)",
                "spec.pipeline.steps: steps reordered, now [\"c\", \"a\"] (stateless: compatible)",
                "spec.pipeline.resultSteps: step \"alert\" added (stateless: compatible)",
            ]
        );
        assert!(step_changes(&old, &old).is_empty());
    }

    #[test]
    fn parallelism_alone_is_a_rescale() {
        let c = change(|s| s.parallelism = Some(2));
        assert_eq!(c.kind, ChangeKind::Rescale);
        assert!(c.compatibility.is_compatible());
    }

    #[test]
    fn an_upgrade_wins_over_a_rescale() {
        let c = change(|s| {
            s.parallelism = Some(2);
            s.image = Some("runtime:v2".into());
        });
        assert_eq!(c.kind, ChangeKind::Upgrade);
    }

    #[test]
    fn adding_an_aggregation_is_a_compatible_upgrade() {
        let c = change(|s| {
            s.pipeline.aggregations.push(AggregationSpec {
                name: "spent".into(),
                function: AggregateFunction::Sum,
                field: Some("record.amount".into()),
                k: None,
            })
        });
        assert_eq!(c.kind, ChangeKind::Upgrade);
        assert_eq!(c.compatibility, Compatibility::Compatible);
    }

    #[test]
    fn changing_key_window_or_an_aggregation_is_incompatible() {
        let key = change(|s| s.pipeline.key_by = vec!["record.page".into()]);
        let window = change(|s| s.pipeline.window.as_mut().unwrap().kind = WindowKind::Session);
        let agg = change(|s| s.pipeline.aggregations[0].function = AggregateFunction::Max);
        for c in [&key, &window, &agg] {
            assert_eq!(c.kind, ChangeKind::Upgrade);
            assert!(!c.compatibility.is_compatible(), "{c:?}");
        }
        let Compatibility::Incompatible(reasons) = key.compatibility else {
            unreachable!()
        };
        assert!(reasons[0].starts_with("spec.pipeline.keyBy"), "{reasons:?}");
    }

    #[test]
    fn suspend_and_resume_are_lifecycle_changes() {
        assert_eq!(
            change(|s| s.state = Some(JobState::Suspended)).kind,
            ChangeKind::Suspend
        );
        let mut suspended = base();
        suspended.state = Some(JobState::Suspended);
        let mut resumed = base();
        resumed.image = Some("runtime:v2".into());
        assert_eq!(classify(&suspended, &resumed).kind, ChangeKind::Resume);
    }

    #[test]
    fn a_new_nonce_requests_a_savepoint_without_restarting() {
        let c = change(|s| s.savepoint_nonce = Some("2026-11-22T15:00:00Z".into()));
        assert_eq!(c.kind, ChangeKind::Ignore);
        assert!(c.savepoint_requested);
        let mut old = base();
        old.savepoint_nonce = Some("a".into());
        assert!(!classify(&old, &old.clone()).savepoint_requested);
    }
}
