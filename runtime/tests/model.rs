//! Property tests: the dataflow as the pods run it (tasks connected through
//! the in-memory repartition log of `dataflow::harness`, exactly as the
//! runner connects them through Kafka) against an independent brute-force
//! model.
//!
//! The model shares no code with the runtime. It keeps the full list of
//! accepted events and the watermark history, and recomputes every window's
//! membership and aggregates from scratch at every step:
//! - a source partition's watermark is (max event time - outOfOrderness) of
//!   its records so far, sent at each checkpoint of its task (if it has
//!   data); the watermark is the min over every partition's last sent one,
//!   none until every partition sent one;
//! - exactly once, a task's records reach the windows when its checkpoint
//!   commits them, in order, before its watermark; at least once, as soon
//!   as stage 1 wrote them. Records are judged against the watermark before
//!   they advance it (with a checkpoint after every record: the watermark
//!   of all records so far);
//! - fixed windows: a record joins every window `[s, s+size)` (s a multiple of
//!   slide) containing it whose `end + lateness > W`; none -> late;
//! - sessions: the active (not purged) events of a key, sorted, split where
//!   the next event is more than `gap` after the previous; a new event whose
//!   session would end at `end` with `end + lateness <= W` is late;
//! - a record landing in a window with `end <= W` causes a late firing; in
//!   onUpdate mode a record landing in an open window causes an early result;
//!   when W advances from W0 to W1, windows with `W0 < end <= W1` fire.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Value, json};
use streamops_crds::job::ProcessingGuarantee;
use streamops_runtime::aggregate::AggregateFunction;
use streamops_runtime::dataflow::harness::{Emitted, Harness, HarnessConfig, MemoryBackends};
use streamops_runtime::dataflow::task::{Out, StateOptions};
use streamops_runtime::dataflow::window_operator::EmitMode;
use streamops_runtime::plan::{AggregationDef, JobDefinition, Plan};
use streamops_runtime::time::TimeFormat;
use streamops_runtime::window::WindowAssigner;

#[derive(Debug, Clone)]
struct Event {
    partition: u32,
    key: u8,
    t: i64,
    amount: Option<i64>,
    page: u8,
}

impl Event {
    fn json(&self) -> Vec<u8> {
        let mut v =
            json!({"user": format!("k{}", self.key), "ts": self.t, "page": format!("p{}", self.page)});
        if let Some(a) = self.amount {
            v["amount"] = json!(a);
        } else if self.page.is_multiple_of(2) {
            v["amount"] = Value::Null;
        }
        serde_json::to_vec(&v).unwrap()
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Fixed { size: i64, slide: i64 },
    Session { gap: i64 },
}

#[derive(Debug, Clone)]
struct Case {
    kind: Kind,
    lateness: i64,
    ooo: i64,
    emit: EmitMode,
    /// Tasks = source partitions = keyed partitions.
    tasks: u32,
    guarantee: ProcessingGuarantee,
    /// Every task checkpoints after every `every`-th record (1: after each).
    every: usize,
    /// Bound of each task's in-memory window cache (`None`: unbounded);
    /// small bounds force entries through the backend.
    cache: Option<usize>,
    /// The job's key groups (`None`: one per task); fewer or more than the
    /// tasks, so partitions own zero, one or several groups.
    key_groups: Option<u32>,
    events: Vec<Event>,
}

impl Case {
    /// Whether every task checkpoints after the first `k` records (`cuts`:
    /// further checkpoints, where the crash tests crash).
    fn checkpoint_after(&self, k: usize, cuts: &BTreeSet<usize>) -> bool {
        (k > 0 && k.is_multiple_of(self.every)) || cuts.contains(&k)
    }
}

fn definition(c: &Case) -> JobDefinition {
    let agg = |name: &str, function, field: Option<&str>| AggregationDef {
        name: name.into(),
        function,
        field: field.map(Into::into),
    };
    JobDefinition {
        filter: None,
        steps: Vec::new(),
        result_steps: Vec::new(),
        event_time_field: "record.ts".into(),
        time_format: TimeFormat::EpochMillis,
        out_of_orderness_ms: c.ooo,
        idle_timeout_ms: None,
        max_future_skew_ms: i64::MAX,
        key_by: vec!["record.user".into()],
        window: Some(match c.kind {
            Kind::Fixed { size, slide } if size == slide => WindowAssigner::tumbling(size).unwrap(),
            Kind::Fixed { size, slide } => WindowAssigner::sliding(size, slide).unwrap(),
            Kind::Session { gap } => WindowAssigner::session(gap).unwrap(),
        }),
        allowed_lateness_ms: c.lateness,
        aggregations: vec![
            agg("n", AggregateFunction::Count, None),
            agg("total", AggregateFunction::Sum, Some("record.amount")),
            agg("lo", AggregateFunction::Min, Some("amount")),
            agg("hi", AggregateFunction::Max, Some("record.amount")),
            agg("mean", AggregateFunction::Avg, Some("record.amount")),
            agg("pages", AggregateFunction::DistinctCount, Some("record.page")),
            agg("withAmount", AggregateFunction::Count, Some("record.amount")),
            agg("topPages", AggregateFunction::TopK { k: 2 }, Some("record.page")),
        ],
        emit: c.emit,
        sink_key: None,
    }
}

/// (key, start, end) -> emitted (firing, aggregates) in order.
type Emissions = BTreeMap<(String, i64, i64), Vec<(String, Value)>>;

fn model_aggregates(events: &[&Event]) -> Value {
    let amounts: Vec<i64> = events.iter().filter_map(|e| e.amount).collect();
    let pages: BTreeSet<u8> = events.iter().map(|e| e.page).collect();
    let sum: i64 = amounts.iter().sum();
    // topK: highest count first, ties by the value's JSON text ("p0" < "p1").
    let mut counts: BTreeMap<u8, usize> = BTreeMap::new();
    for e in events {
        *counts.entry(e.page).or_default() += 1;
    }
    let mut ranked: Vec<(u8, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let top: Vec<Value> = ranked
        .iter()
        .take(2)
        .map(|(p, n)| json!({"value": format!("p{p}"), "count": n}))
        .collect();
    let v = json!({
        "n": events.len(),
        "total": sum,
        "lo": amounts.iter().min(),
        "hi": amounts.iter().max(),
        "mean": if amounts.is_empty() { Value::Null } else { json!(sum as f64 / amounts.len() as f64) },
        "pages": pages.len(),
        "withAmount": amounts.len(),
        "topPages": top,
    });
    // Same text round trip as the engine's output (serde_json's default
    // float parser may differ from the exact value by one ulp).
    serde_json::from_str(&v.to_string()).unwrap()
}

struct Model {
    emissions: Emissions,
    late: usize,
}

fn run_model(c: &Case, cuts: &BTreeSet<usize>) -> Model {
    let exactly_once = c.guarantee == ProcessingGuarantee::ExactlyOnce;
    // Largest event time per partition, and the watermark each last sent.
    let mut max_t: BTreeMap<u32, i64> = BTreeMap::new();
    let mut sent: BTreeMap<u32, i64> = BTreeMap::new();
    let mut w = i64::MIN;
    // Exactly once: each task's records not yet committed.
    let mut pending: BTreeMap<u32, Vec<Event>> = BTreeMap::new();
    let mut emissions = Emissions::new();
    let mut late = 0;
    // Fixed windows: contents per (key, start, end).
    let mut contents: BTreeMap<(u8, i64, i64), Vec<Event>> = BTreeMap::new();
    // Sessions: active events per key.
    let mut active: BTreeMap<u8, Vec<Event>> = BTreeMap::new();

    fn sessions(events: &[Event], gap: i64) -> Vec<(i64, i64, Vec<usize>)> {
        let mut idx: Vec<usize> = (0..events.len()).collect();
        idx.sort_by_key(|i| events[*i].t);
        let mut out: Vec<(i64, i64, Vec<usize>)> = Vec::new();
        for i in idx {
            let t = events[i].t;
            match out.last_mut() {
                Some(last) if t <= last.1 => {
                    last.1 = last.1.max(t + gap);
                    last.2.push(i);
                }
                _ => out.push((t, t + gap, vec![i])),
            }
        }
        out
    }

    fn emit(emissions: &mut Emissions, key: u8, s: i64, e: i64, firing: &str, evs: &[&Event]) {
        emissions
            .entry((format!("k{key}"), s, e))
            .or_default()
            .push((firing.to_string(), model_aggregates(evs)));
    }

    // A record reaches the windows, judged against the watermark `w0`.
    let deliver = |ev: &Event,
                   w0: i64,
                   emissions: &mut Emissions,
                   late: &mut usize,
                   contents: &mut BTreeMap<(u8, i64, i64), Vec<Event>>,
                   active: &mut BTreeMap<u8, Vec<Event>>| match c.kind {
        Kind::Fixed { size, slide } => {
            let mut windows = Vec::new();
            let lo = (ev.t - size).div_euclid(slide) - 1;
            let hi = ev.t.div_euclid(slide) + 1;
            for m in lo..=hi {
                let s = m * slide;
                if s <= ev.t && ev.t < s + size {
                    windows.push((s, s + size));
                }
            }
            let mut accepted = false;
            for (s, e) in &windows {
                if e + c.lateness <= w0 {
                    continue;
                }
                accepted = true;
                let list = contents.entry((ev.key, *s, *e)).or_default();
                list.push(ev.clone());
                let refs: Vec<&Event> = list.iter().collect();
                if *e <= w0 {
                    emit(emissions, ev.key, *s, *e, "late", &refs);
                } else if c.emit == EmitMode::OnUpdate {
                    emit(emissions, ev.key, *s, *e, "early", &refs);
                }
            }
            if !accepted && !windows.is_empty() {
                *late += 1;
            }
        }
        Kind::Session { gap } => {
            let mut candidate = active.get(&ev.key).cloned().unwrap_or_default();
            candidate.push(ev.clone());
            let new_index = candidate.len() - 1;
            let groups = sessions(&candidate, gap);
            let (s, e, members) = groups.into_iter().find(|g| g.2.contains(&new_index)).unwrap();
            if e + c.lateness <= w0 {
                *late += 1;
            } else {
                let refs: Vec<&Event> = members.iter().map(|i| &candidate[*i]).collect();
                if e <= w0 {
                    emit(emissions, ev.key, s, e, "late", &refs);
                } else if c.emit == EmitMode::OnUpdate {
                    emit(emissions, ev.key, s, e, "early", &refs);
                }
                active.insert(ev.key, candidate);
            }
        }
    };

    // The watermark advances from `w0` to `w1`: windows with `w0 < end <= w1` fire.
    let advance = |w0: i64,
                   w1: i64,
                   emissions: &mut Emissions,
                   contents: &BTreeMap<(u8, i64, i64), Vec<Event>>,
                   active: &mut BTreeMap<u8, Vec<Event>>| match c.kind {
        Kind::Fixed { .. } => {
            for ((k, s, e), list) in contents {
                if w0 < *e && *e <= w1 {
                    let refs: Vec<&Event> = list.iter().collect();
                    emit(emissions, *k, *s, *e, "onTime", &refs);
                }
            }
        }
        Kind::Session { gap } => {
            for (k, evs) in active.iter_mut() {
                let groups = sessions(evs, gap);
                let mut retired = BTreeSet::new();
                for (s, e, members) in &groups {
                    if w0 < *e && *e <= w1 {
                        let refs: Vec<&Event> = members.iter().map(|i| &evs[*i]).collect();
                        emit(emissions, *k, *s, *e, "onTime", &refs);
                    }
                    if e + c.lateness <= w1 {
                        retired.extend(members.iter().copied());
                    }
                }
                let kept: Vec<Event> = evs
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !retired.contains(i))
                    .map(|(_, e)| e.clone())
                    .collect();
                *evs = kept;
            }
        }
    };

    let n = c.events.len();
    // After the first k records; k = n + 1 is the closing checkpoint.
    for k in 0..=n + 1 {
        if (1..=n).contains(&k) {
            let ev = &c.events[k - 1];
            let m = max_t.entry(ev.partition).or_insert(ev.t);
            *m = (*m).max(ev.t);
            if exactly_once {
                pending.entry(ev.partition).or_default().push(ev.clone());
            } else {
                deliver(ev, w, &mut emissions, &mut late, &mut contents, &mut active);
            }
        }
        if k == n + 1 || c.checkpoint_after(k, cuts) {
            for t in 0..c.tasks {
                for ev in pending.remove(&t).unwrap_or_default() {
                    deliver(&ev, w, &mut emissions, &mut late, &mut contents, &mut active);
                }
                if let Some(m) = max_t.get(&t) {
                    sent.insert(t, m - c.ooo);
                }
                if sent.len() == c.tasks as usize {
                    let w1 = sent.values().copied().min().unwrap_or(i64::MIN);
                    if w1 > w {
                        advance(w, w1, &mut emissions, &contents, &mut active);
                        w = w1;
                    }
                }
            }
        }
    }
    Model { emissions, late }
}

fn collect(outputs: &[Emitted]) -> (Emissions, usize) {
    let mut emissions = Emissions::new();
    let mut late = 0;
    for o in outputs {
        match &o.out {
            Out::Result { key, value, is_final } => {
                let v: Value = serde_json::from_slice(value).unwrap();
                let k: Value = serde_json::from_slice(key.as_deref().unwrap()).unwrap();
                assert_eq!(k["key"], v["key"]);
                assert_eq!(k["windowStart"], v["windowStart"]);
                assert_eq!(v["final"], json!(is_final));
                let mut aggs = v.as_object().unwrap().clone();
                let firing = aggs.remove("firing").unwrap();
                assert_eq!(*is_final, firing != "early", "{v}");
                for f in ["key", "windowStart", "windowEnd", "final"] {
                    aggs.remove(f);
                }
                emissions
                    .entry((
                        v["key"][0].as_str().unwrap().to_string(),
                        v["windowStart"].as_i64().unwrap(),
                        v["windowEnd"].as_i64().unwrap(),
                    ))
                    .or_default()
                    .push((firing.as_str().unwrap().to_string(), Value::Object(aggs)));
            }
            Out::Late { .. } => late += 1,
            Out::DeadLetter { reason, .. } => panic!("unexpected dead letter: {reason}"),
            o @ (Out::Keyed { .. } | Out::Watermark { .. } | Out::Routed { .. }) => {
                panic!("internal or routed record in the output: {o:?}")
            }
        }
    }
    (emissions, late)
}

fn harness(c: &Case, dir: &std::path::Path) -> Harness {
    let plan = Arc::new(Plan::build(&definition(c)).unwrap());
    let config = HarnessConfig {
        tasks: c.tasks,
        guarantee: c.guarantee,
        state: StateOptions {
            cache_capacity: c.cache,
            flush_on_fire: false,
        },
        dir: dir.to_path_buf(),
        key_groups: c.key_groups,
    };
    let mut h = Harness::new(plan, config, Box::new(MemoryBackends), 0).unwrap();
    for ev in &c.events {
        h.append(ev.partition, None, &ev.json()).unwrap();
    }
    h
}

/// Each committed output with its task, in commit order (offsets in the
/// keyed partitions differ after a restart: a restored task sends its
/// watermark again).
fn outputs(emitted: &[Emitted]) -> Vec<(u32, &Out)> {
    emitted.iter().map(|e| (e.task, &e.out)).collect()
}

struct Run {
    emissions: Emissions,
    late: usize,
    /// Committed outputs, in commit order.
    outputs: Vec<Emitted>,
}

/// Runs the case's records through the harness: after the first `k`
/// records, every task checkpoints when [`Case::checkpoint_after`] says so
/// (with the state at `cuts`), then every keyed partition is read. At each
/// `(k, lost)` of `crashes` (in order; `k` in `cuts`), every task then goes
/// on with the next `lost` records and whatever its keyed partition shows,
/// and crashes: restored from the checkpoint after record `k`, it reads on
/// from there (its keyed partition first). A closing checkpoint commits everything.
fn run_harness(c: &Case, cuts: &BTreeSet<usize>, crashes: &[(usize, usize)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(c, dir.path());
    let n = c.events.len();
    let poll_keyed = |h: &mut Harness| {
        for t in 0..c.tasks {
            h.poll_keyed(t, usize::MAX).unwrap();
        }
    };
    for k in 0..=n {
        if k > 0 {
            assert_eq!(h.poll_source(c.events[k - 1].partition, 1, 0).unwrap(), 1);
        }
        if c.checkpoint_after(k, cuts) {
            h.checkpoint_all(0, cuts.contains(&k)).unwrap();
        }
        poll_keyed(&mut h);
        for &(_, lost) in crashes.iter().filter(|(at, _)| *at == k) {
            // Work after the checkpoint, lost in the crash.
            for ev in &c.events[k..(k + lost).min(n)] {
                h.poll_source(ev.partition, 1, 0).unwrap();
            }
            poll_keyed(&mut h);
            h.restart_all(0).unwrap();
            // The restored tasks read their keyed partitions again from the
            // checkpoint on, before the next checkpoint as before the crash.
            poll_keyed(&mut h);
        }
    }
    h.checkpoint_all(0, false).unwrap();
    poll_keyed(&mut h);
    h.checkpoint_all(0, false).unwrap();
    // Every record went through both stages once (a restored task counts
    // from its restore on).
    if crashes.is_empty() {
        let stats = h.operator_stats();
        assert_eq!(stats.accepted + stats.late_records + stats.unassigned, n as u64);
        let keyed: u64 = h.tasks().map(|t| t.counters.keyed_records).sum();
        let source: u64 = h.tasks().map(|t| t.counters.source_records).sum();
        let dups: u64 = h.tasks().map(|t| t.counters.duplicates_dropped).sum();
        assert_eq!((keyed, source, dups), (n as u64, n as u64, 0));
    }
    let outputs = h.take_committed();
    let (emissions, late) = collect(&outputs);
    Run {
        emissions,
        late,
        outputs,
    }
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let kind = prop_oneof![
        (1i64..40).prop_map(|size| Kind::Fixed { size, slide: size }),
        (1i64..40, 1i64..50).prop_map(|(size, slide)| Kind::Fixed { size, slide }),
        (1i64..30).prop_map(|gap| Kind::Session { gap }),
    ];
    (
        kind,
        0i64..30,
        0i64..25,
        prop_oneof![Just(EmitMode::OnWindowClose), Just(EmitMode::OnUpdate)],
        1u32..5,
        prop_oneof![
            3 => Just(ProcessingGuarantee::ExactlyOnce),
            1 => Just(ProcessingGuarantee::AtLeastOnce)
        ],
        prop_oneof![2 => Just(1usize), 1 => 2usize..12],
        prop::option::of(1usize..6),
        prop::option::of(1u32..9),
        prop::collection::vec(
            (0u32..4, 0u8..4, -20i64..40, prop::option::of(-50i64..50), 0u8..5),
            0..120,
        ),
    )
        .prop_map(
            |(kind, lateness, ooo, emit, tasks, guarantee, every, cache, key_groups, raw)| {
                // A drifting clock with jitter: out of order, sometimes beyond ooo.
                let mut clock = 0i64;
                let events = raw
                    .into_iter()
                    .enumerate()
                    .map(|(i, (p, key, jitter, amount, page))| {
                        if i.is_multiple_of(3) {
                            clock += 7;
                        }
                        Event {
                            partition: p % tasks,
                            key,
                            t: clock + jitter - 10,
                            amount,
                            page,
                        }
                    })
                    .collect();
                Case {
                    kind,
                    lateness,
                    ooo,
                    emit,
                    tasks,
                    guarantee,
                    every,
                    cache,
                    key_groups,
                    events,
                }
            },
        )
}

/// The case exactly once (crashes lose what was not committed; at least
/// once they would repeat outputs).
fn exactly_once(mut c: Case) -> Case {
    c.guarantee = ProcessingGuarantee::ExactlyOnce;
    c
}

proptest! {
    #[test]
    fn dataflow_matches_brute_force_model(c in case_strategy()) {
        let none = BTreeSet::new();
        let model = run_model(&c, &none);
        let run = run_harness(&c, &none, &[]);
        prop_assert_eq!(&run.emissions, &model.emissions);
        prop_assert_eq!(run.late, model.late);
        // At most one on-time final per (key, window).
        for seq in run.emissions.values() {
            prop_assert!(seq.iter().filter(|(f, _)| f == "onTime").count() <= 1);
        }
    }

    /// A crash after a checkpoint (with work done after it, lost) and the
    /// restore change nothing: the committed outputs are the uninterrupted
    /// run's, which match the model.
    #[test]
    fn snapshot_restore_equals_uninterrupted_run(c in case_strategy().prop_map(exactly_once), cut in 0usize..120, lost in 0usize..120) {
        let cut = cut.min(c.events.len());
        let cuts = BTreeSet::from([cut]);
        let whole = run_harness(&c, &cuts, &[]);
        let model = run_model(&c, &cuts);
        prop_assert_eq!(&whole.emissions, &model.emissions);
        prop_assert_eq!(whole.late, model.late);
        let crashed = run_harness(&c, &cuts, &[(cut, lost)]);
        prop_assert_eq!(outputs(&crashed.outputs), outputs(&whole.outputs));
    }

    /// A chain of crashes, as the pipeline lives it: each time every task
    /// is restored from its last checkpoint, runs on (its work after the
    /// checkpoint is lost in the crash), checkpoints again, crashes again.
    #[test]
    fn repeated_crash_and_restore_equals_uninterrupted_run(
        c in case_strategy().prop_map(exactly_once),
        mut crashes in prop::collection::vec((0usize..120, 0usize..40), 1..5),
    ) {
        let n = c.events.len();
        for (cut, _) in &mut crashes {
            *cut = (*cut).min(n);
        }
        crashes.sort_unstable();
        let cuts: BTreeSet<usize> = crashes.iter().map(|(k, _)| *k).collect();
        let whole = run_harness(&c, &cuts, &[]);
        let model = run_model(&c, &cuts);
        prop_assert_eq!(&whole.emissions, &model.emissions);
        let crashed = run_harness(&c, &cuts, &crashes);
        prop_assert_eq!(outputs(&crashed.outputs), outputs(&whole.outputs));
    }
}
