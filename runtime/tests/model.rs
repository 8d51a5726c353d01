//! Property tests: the engine against an independent brute-force model.
//!
//! The model shares no code with the engine. It keeps the full list of
//! accepted events and the watermark history, and recomputes every window's
//! membership and aggregates from scratch at every step:
//! - watermark = min over source partitions of (max event time - outOfOrderness),
//!   no watermark until every partition has data; records are judged against
//!   the watermark before they advance it;
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
use streamops_runtime::aggregate::AggregateFunction;
use streamops_runtime::operator::window_operator::EmitMode;
use streamops_runtime::plan::{AggregationDef, JobDefinition, Plan};
use streamops_runtime::state::MemoryBackend;
use streamops_runtime::time::TimeFormat;
use streamops_runtime::window::WindowAssigner;
use streamops_runtime::{Engine, Output, SourceRecord};

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
    source_partitions: u32,
    keyed_partitions: u32,
    /// Bound of the engine's in-memory cache (`None`: unbounded); small
    /// bounds force entries through the backend.
    cache: Option<usize>,
    events: Vec<Event>,
}

fn definition(c: &Case) -> JobDefinition {
    let agg = |name: &str, function, field: Option<&str>| AggregationDef {
        name: name.into(),
        function,
        field: field.map(Into::into),
    };
    JobDefinition {
        filter: None,
        event_time_field: "record.ts".into(),
        time_format: TimeFormat::EpochMillis,
        out_of_orderness_ms: c.ooo,
        idle_timeout_ms: None,
        max_future_skew_ms: i64::MAX,
        key_by: vec!["record.user".into()],
        window: match c.kind {
            Kind::Fixed { size, slide } if size == slide => WindowAssigner::tumbling(size).unwrap(),
            Kind::Fixed { size, slide } => WindowAssigner::sliding(size, slide).unwrap(),
            Kind::Session { gap } => WindowAssigner::session(gap).unwrap(),
        },
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

fn run_model(c: &Case) -> Model {
    let mut max_t: BTreeMap<u32, i64> = BTreeMap::new();
    let watermark = |max_t: &BTreeMap<u32, i64>| -> i64 {
        if (0..c.source_partitions).all(|p| max_t.contains_key(&p)) {
            max_t.values().map(|m| m - c.ooo).min().unwrap_or(i64::MIN)
        } else {
            i64::MIN
        }
    };
    let mut emissions = Emissions::new();
    let mut late = 0;
    let mut emit = |key: u8, s: i64, e: i64, firing: &str, evs: &[&Event]| {
        emissions
            .entry((format!("k{key}"), s, e))
            .or_default()
            .push((firing.to_string(), model_aggregates(evs)));
    };
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

    for ev in &c.events {
        let w0 = watermark(&max_t);
        match c.kind {
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
                        emit(ev.key, *s, *e, "late", &refs);
                    } else if c.emit == EmitMode::OnUpdate {
                        emit(ev.key, *s, *e, "early", &refs);
                    }
                }
                if !accepted && !windows.is_empty() {
                    late += 1;
                }
            }
            Kind::Session { gap } => {
                let mut candidate = active.get(&ev.key).cloned().unwrap_or_default();
                candidate.push(ev.clone());
                let new_index = candidate.len() - 1;
                let groups = sessions(&candidate, gap);
                let (s, e, members) = groups.into_iter().find(|g| g.2.contains(&new_index)).unwrap();
                if e + c.lateness <= w0 {
                    late += 1;
                } else {
                    let refs: Vec<&Event> = members.iter().map(|i| &candidate[*i]).collect();
                    if e <= w0 {
                        emit(ev.key, s, e, "late", &refs);
                    } else if c.emit == EmitMode::OnUpdate {
                        emit(ev.key, s, e, "early", &refs);
                    }
                    active.insert(ev.key, candidate);
                }
            }
        }
        let m = max_t.entry(ev.partition).or_insert(ev.t);
        *m = (*m).max(ev.t);
        let w1 = watermark(&max_t);
        if w1 > w0 {
            match c.kind {
                Kind::Fixed { .. } => {
                    for ((k, s, e), list) in &contents {
                        if w0 < *e && *e <= w1 {
                            let refs: Vec<&Event> = list.iter().collect();
                            emit(*k, *s, *e, "onTime", &refs);
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
                                emit(*k, *s, *e, "onTime", &refs);
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
            }
        }
    }
    Model { emissions, late }
}

struct EngineRun {
    emissions: Emissions,
    late: usize,
    outputs: Vec<Output>,
}

fn collect(outputs: &[Output]) -> (Emissions, usize) {
    let mut emissions = Emissions::new();
    let mut late = 0;
    for o in outputs {
        match o {
            Output::Result {
                key, value, firing, ..
            } => {
                let v: Value = serde_json::from_slice(value).unwrap();
                let k: Value = serde_json::from_slice(key).unwrap();
                assert_eq!(k["key"], v["key"]);
                assert_eq!(k["windowStart"], v["windowStart"]);
                assert_eq!(v["final"], json!(firing.is_final()));
                let mut aggs = v.as_object().unwrap().clone();
                let firing = aggs.remove("firing").unwrap();
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
            Output::Late { .. } => late += 1,
            Output::DeadLetter { reason, .. } => panic!("unexpected dead letter: {reason}"),
        }
    }
    (emissions, late)
}

fn run_engine(c: &Case) -> EngineRun {
    let plan = Arc::new(Plan::build(&definition(c)).unwrap());
    let partitions: Vec<u32> = (0..c.source_partitions).collect();
    let mut engine = Engine::new(plan, &partitions, c.keyed_partitions, MemoryBackend::new(), 0)
        .with_cache_capacity(c.cache);
    let mut outputs = Vec::new();
    for (i, ev) in c.events.iter().enumerate() {
        let value = ev.json();
        let rec = SourceRecord {
            partition: ev.partition,
            offset: i as i64,
            key: None,
            value: &value,
        };
        engine.process(rec, 0, &mut outputs).unwrap();
    }
    let (emissions, late) = collect(&outputs);
    let stats = engine.operator_stats();
    assert_eq!(
        stats.accepted + stats.late_records + stats.unassigned,
        c.events.len() as u64
    );
    EngineRun {
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
        1u32..4,
        1u32..4,
        prop::option::of(1usize..6),
        prop::collection::vec(
            (0u32..4, 0u8..4, -20i64..40, prop::option::of(-50i64..50), 0u8..5),
            0..120,
        ),
    )
        .prop_map(|(kind, lateness, ooo, emit, sp, kp, cache, raw)| {
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
                        partition: p % sp,
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
                source_partitions: sp,
                keyed_partitions: kp,
                cache,
                events,
            }
        })
}

proptest! {
    #[test]
    fn engine_matches_brute_force_model(c in case_strategy()) {
        let model = run_model(&c);
        let engine = run_engine(&c);
        prop_assert_eq!(&engine.emissions, &model.emissions);
        prop_assert_eq!(engine.late, model.late);
        // At most one on-time final per (key, window).
        for seq in engine.emissions.values() {
            prop_assert!(seq.iter().filter(|(f, _)| f == "onTime").count() <= 1);
        }
    }

    #[test]
    fn snapshot_restore_equals_uninterrupted_run(c in case_strategy(), cut in 0usize..120) {
        let whole = run_engine(&c).outputs;
        let cut = cut.min(c.events.len());
        let plan = Arc::new(Plan::build(&definition(&c)).unwrap());
        let partitions: Vec<u32> = (0..c.source_partitions).collect();
        let mut engine = Engine::new(plan.clone(), &partitions, c.keyed_partitions, MemoryBackend::new(), 0)
            .with_cache_capacity(c.cache);
        let mut outputs = Vec::new();
        let feed = |engine: &mut Engine<MemoryBackend>, range: std::ops::Range<usize>, outputs: &mut Vec<Output>| {
            for i in range {
                let value = c.events[i].json();
                engine.process(SourceRecord { partition: c.events[i].partition, offset: i as i64, key: None, value: &value }, 0, outputs).unwrap();
            }
        };
        feed(&mut engine, 0..cut, &mut outputs);
        let dir = tempfile::tempdir().unwrap();
        engine.snapshot(&dir.path().join("cp")).unwrap();
        // Keep going on the old engine: must not affect the snapshot.
        feed(&mut engine, cut..c.events.len(), &mut Vec::new());
        drop(engine);
        let mut restored = Engine::restore_with_cache(plan, &dir.path().join("cp"), &partitions, c.keyed_partitions, c.cache, MemoryBackend::new(), 0).unwrap();
        feed(&mut restored, cut..c.events.len(), &mut outputs);
        prop_assert_eq!(outputs, whole);
    }

    /// A chain of crashes, as the pipeline lives it: each engine is restored
    /// from the previous one's snapshot, runs on (its output after the
    /// snapshot is lost in the crash), snapshots again, crashes again.
    #[test]
    fn repeated_crash_and_restore_equals_uninterrupted_run(
        c in case_strategy(),
        mut cuts in prop::collection::vec((0usize..120, 0usize..40), 1..5),
    ) {
        let whole = run_engine(&c).outputs;
        let n = c.events.len();
        cuts.sort_unstable();
        let plan = Arc::new(Plan::build(&definition(&c)).unwrap());
        let partitions: Vec<u32> = (0..c.source_partitions).collect();
        let feed = |engine: &mut Engine<MemoryBackend>, range: std::ops::Range<usize>, outputs: &mut Vec<Output>| {
            for i in range {
                let value = c.events[i].json();
                engine.process(SourceRecord { partition: c.events[i].partition, offset: i as i64, key: None, value: &value }, 0, outputs).unwrap();
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let mut engine = Engine::new(plan.clone(), &partitions, c.keyed_partitions, MemoryBackend::new(), 0)
            .with_cache_capacity(c.cache);
        let mut outputs = Vec::new();
        let mut at = 0;
        for (round, &(cut, lost)) in cuts.iter().enumerate() {
            let cut = cut.clamp(at, n);
            feed(&mut engine, at..cut, &mut outputs);
            let cp = dir.path().join(format!("cp-{round}"));
            engine.snapshot(&cp).unwrap();
            // Work done after the snapshot and lost in the crash.
            feed(&mut engine, cut..(cut + lost).min(n), &mut Vec::new());
            drop(engine);
            engine = Engine::restore_with_cache(plan.clone(), &cp, &partitions, c.keyed_partitions, c.cache, MemoryBackend::new(), 0).unwrap();
            at = cut;
        }
        feed(&mut engine, at..n, &mut outputs);
        prop_assert_eq!(outputs, whole);
    }
}
