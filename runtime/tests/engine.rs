//! Dataflow tests through the public API, on the tasks the pods run
//! connected by the in-memory harness (`dataflow::harness`): lateness
//! boundaries, session merges, idle partitions, restore, purge, numeric edge
//! cases, dead letters, the window cache.

use std::sync::Arc;

use std::sync::Mutex;

use serde_json::{Value, json};
use streamops_crds::job::ProcessingGuarantee;
use streamops_runtime::aggregate::AggregateFunction;
use streamops_runtime::dataflow::Firing;
use streamops_runtime::dataflow::harness::{
    Backends, Emitted, Harness, HarnessConfig, MemoryBackends, RocksBackends, Stage,
};
use streamops_runtime::dataflow::task::{Out, StateOptions};
use streamops_runtime::dataflow::window_operator::EmitMode;
use streamops_runtime::plan::{AggregationDef, JobDefinition, Plan};
use streamops_runtime::state::{MemoryBackend, RocksOptions, StateBackend};
use streamops_runtime::time::TimeFormat;
use streamops_runtime::window::WindowAssigner;

fn def(window: WindowAssigner, lateness: i64, ooo: i64) -> JobDefinition {
    JobDefinition {
        filter: None,
        steps: Vec::new(),
        result_steps: Vec::new(),
        event_time_field: "record.ts".into(),
        time_format: TimeFormat::EpochMillis,
        out_of_orderness_ms: ooo,
        idle_timeout_ms: None,
        max_future_skew_ms: i64::MAX,
        key_by: vec!["record.user".into()],
        window: Some(window),
        allowed_lateness_ms: lateness,
        aggregations: vec![
            AggregationDef {
                name: "n".into(),
                function: AggregateFunction::Count,
                field: None,
            },
            AggregationDef {
                name: "total".into(),
                function: AggregateFunction::Sum,
                field: Some("record.amount".into()),
            },
        ],
        emit: EmitMode::OnWindowClose,
        sink_key: None,
    }
}

/// The dataflow's tasks (`tasks` of them, one per source partition) in
/// the in-memory harness, exactly once, in-memory state.
struct Job {
    h: Harness,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Job {
    type Target = Harness;
    fn deref(&self) -> &Harness {
        &self.h
    }
}

impl std::ops::DerefMut for Job {
    fn deref_mut(&mut self) -> &mut Harness {
        &mut self.h
    }
}

fn job_with(d: &JobDefinition, tasks: u32, state: StateOptions, backends: Box<dyn Backends>) -> Job {
    let dir = tempfile::tempdir().unwrap();
    let config = HarnessConfig {
        tasks,
        guarantee: ProcessingGuarantee::ExactlyOnce,
        state,
        dir: dir.path().to_path_buf(),
        key_groups: None,
    };
    let h = Harness::new(Arc::new(Plan::build(d).unwrap()), config, backends, 0).unwrap();
    Job { h, _dir: dir }
}

fn engine(d: &JobDefinition, tasks: u32) -> Job {
    job_with(d, tasks, StateOptions::default(), Box::new(MemoryBackends))
}

fn poll_keyed(h: &mut Harness) {
    for t in 0..h.task_count() {
        h.poll_keyed(t, usize::MAX).unwrap();
    }
}

/// Processing time `now_ms` passes: every task checkpoints (its watermark
/// goes to every keyed partition), the keyed partitions are read, and a
/// second checkpoint commits what they produced; returns the committed
/// outputs.
fn tick(h: &mut Harness, now_ms: i64) -> Vec<Emitted> {
    h.checkpoint_all(now_ms, false).unwrap();
    poll_keyed(h);
    h.checkpoint_all(now_ms, false).unwrap();
    h.take_committed()
}

/// One record into source partition `partition` at processing time
/// `now_ms`, through both stages (a checkpoint right after it, so its
/// watermark is the one of every record so far); the committed outputs.
fn send_raw(h: &mut Harness, partition: u32, key: Option<&[u8]>, value: &[u8], now_ms: i64) -> Vec<Emitted> {
    h.append(partition, key, value).unwrap();
    assert_eq!(h.poll_source(partition, 1, now_ms).unwrap(), 1);
    tick(h, now_ms)
}

fn send_at(h: &mut Harness, partition: u32, value: Value, now_ms: i64) -> Vec<Out> {
    let bytes = serde_json::to_vec(&value).unwrap();
    send_raw(h, partition, None, &bytes, now_ms)
        .into_iter()
        .map(|e| e.out)
        .collect()
}

fn send(h: &mut Harness, partition: u32, value: Value) -> Vec<Out> {
    send_at(h, partition, value, 0)
}

fn firing(v: &Value) -> Firing {
    match v["firing"].as_str() {
        Some("early") => Firing::Early,
        Some("onTime") => Firing::OnTime,
        Some("late") => Firing::Late,
        other => panic!("firing {other:?} in {v}"),
    }
}

/// Results as (firing, windowStart, windowEnd, n, total).
fn results(out: &[Out]) -> Vec<(Firing, i64, i64, Value, Value)> {
    out.iter()
        .filter_map(|o| match o {
            Out::Result { value, is_final, .. } => {
                let v: Value = serde_json::from_slice(value).unwrap();
                assert_eq!(firing(&v).is_final(), *is_final, "{v}");
                assert_eq!(v["final"], json!(is_final));
                Some((
                    firing(&v),
                    v["windowStart"].as_i64().unwrap(),
                    v["windowEnd"].as_i64().unwrap(),
                    v["n"].clone(),
                    v["total"].clone(),
                ))
            }
            _ => None,
        })
        .collect()
}

fn ev(t: i64) -> Value {
    json!({"user": "a", "ts": t, "amount": 1})
}

#[test]
fn lateness_boundaries() {
    let d = def(WindowAssigner::tumbling(10).unwrap(), 5, 0);
    let mut e = engine(&d, 1);
    assert!(results(&send(&mut e, 0, ev(0))).is_empty());
    // W = 9 = end - 1: not fired yet.
    assert!(results(&send(&mut e, 0, ev(9))).is_empty());
    // W = 10 = end: fires.
    assert_eq!(
        results(&send(&mut e, 0, ev(10))),
        vec![(Firing::OnTime, 0, 10, json!(2), json!(2))]
    );
    // W = 10: a record for [0,10) is late but within lateness (end + 5 > 10).
    assert_eq!(
        results(&send(&mut e, 0, ev(5))),
        vec![(Firing::Late, 0, 10, json!(3), json!(3))]
    );
    // W = 14 = end + lateness - 1: still accepted.
    assert!(results(&send(&mut e, 0, ev(14))).is_empty());
    assert_eq!(
        results(&send(&mut e, 0, ev(0))),
        vec![(Firing::Late, 0, 10, json!(4), json!(4))]
    );
    // W = 15 = end + lateness: purged, the record goes to the late output.
    assert!(results(&send(&mut e, 0, ev(15))).is_empty());
    let out = send(&mut e, 0, ev(9));
    assert!(matches!(out.as_slice(), [Out::Late { .. }]), "{out:?}");
    assert_eq!(e.operator_stats().late_records, 1);
    assert_eq!(e.task(0).unwrap().counters.late, 1);
}

#[test]
fn lateness_zero_drops_at_end() {
    let d = def(WindowAssigner::tumbling(10).unwrap(), 0, 0);
    let mut e = engine(&d, 1);
    send(&mut e, 0, ev(3));
    assert_eq!(
        results(&send(&mut e, 0, ev(10))),
        vec![(Firing::OnTime, 0, 10, json!(1), json!(1))]
    );
    assert!(matches!(send(&mut e, 0, ev(9)).as_slice(), [Out::Late { .. }]));
}

#[test]
fn session_bridging_record_merges_states() {
    let d = def(WindowAssigner::session(10).unwrap(), 0, 100);
    let mut e = engine(&d, 1);
    send(&mut e, 0, ev(0));
    send(&mut e, 0, ev(18));
    assert_eq!(e.open_entries(), 2);
    // [9, 19) touches [0, 10) and [18, 28): one session [0, 28).
    send(&mut e, 0, ev(9));
    assert_eq!(e.open_entries(), 1);
    let out = send(&mut e, 0, json!({"user": "a", "ts": 200, "amount": 5}));
    assert_eq!(results(&out), vec![(Firing::OnTime, 0, 28, json!(3), json!(3))]);
}

#[test]
fn session_touching_at_gap_merges() {
    let d = def(WindowAssigner::session(10).unwrap(), 0, 100);
    let mut e = engine(&d, 1);
    send(&mut e, 0, ev(0));
    send(&mut e, 0, ev(10));
    send(&mut e, 0, ev(21));
    let out = send(&mut e, 0, ev(300));
    assert_eq!(
        results(&out),
        vec![
            (Firing::OnTime, 0, 20, json!(2), json!(2)),
            (Firing::OnTime, 21, 31, json!(1), json!(1))
        ]
    );
}

#[test]
fn idle_partition_stalls_without_idle_handling() {
    let d = def(WindowAssigner::tumbling(10).unwrap(), 0, 0);
    let mut e = engine(&d, 2);
    send(&mut e, 0, ev(1));
    assert!(results(&send(&mut e, 0, ev(100))).is_empty());
    assert!(tick(&mut e, 1_000_000).is_empty());
    assert_eq!(e.task(0).unwrap().watermark(), i64::MIN);
    // Partition 1's first record: the watermark is the minimum of both.
    let out = send_at(&mut e, 1, ev(50), 1_000_000);
    assert_eq!(results(&out), vec![(Firing::OnTime, 0, 10, json!(1), json!(1))]);
    assert_eq!(e.task(0).unwrap().watermark(), 50);
}

#[test]
fn idle_partition_is_skipped_with_idle_handling() {
    let mut d = def(WindowAssigner::tumbling(10).unwrap(), 0, 0);
    d.idle_timeout_ms = Some(1_000);
    let mut e = engine(&d, 2);
    send(&mut e, 0, ev(1));
    // Partition 0 is active at processing time 900; partition 1 never was.
    assert!(send_at(&mut e, 0, ev(100), 900).is_empty());
    assert!(tick(&mut e, 999).is_empty());
    let out: Vec<Out> = tick(&mut e, 1_000).into_iter().map(|e| e.out).collect();
    assert_eq!(results(&out), vec![(Firing::OnTime, 0, 10, json!(1), json!(1))]);
    assert_eq!(e.task(1).unwrap().watermark(), 100);
    // Partition 0 goes on alone.
    let out = send_at(&mut e, 0, ev(200), 1_005);
    assert_eq!(
        results(&out),
        vec![(Firing::OnTime, 100, 110, json!(1), json!(1))]
    );
    // Partition 1 wakes up with old data: the watermark does not go back,
    // and the record is late.
    let out = send_at(&mut e, 1, ev(10), 1_006);
    assert!(matches!(out.as_slice(), [Out::Late { .. }]), "{out:?}");
    for t in 0..2 {
        assert_eq!(e.task(t).unwrap().watermark(), 200);
    }
}

/// A restored task keeps its keyed partition's watermark and what it knows
/// of every upstream: nothing fires again, nothing stalls.
#[test]
fn watermarks_survive_a_restart() {
    let d = def(WindowAssigner::tumbling(10).unwrap(), 0, 0);
    let mut e = engine(&d, 2);
    send(&mut e, 0, ev(7));
    send(&mut e, 1, ev(9));
    e.checkpoint_all(0, true).unwrap();
    e.restart_all(0).unwrap();
    for t in 0..2 {
        assert_eq!(e.task(t).unwrap().watermark(), 7);
    }
    // Partition 1 alone moves the watermark to 12 (partition 0's is 7):
    // nothing fires; partition 0 to 15: [0, 10) fires once.
    assert!(results(&send(&mut e, 1, ev(12))).is_empty());
    let out = send(&mut e, 0, ev(15));
    assert_eq!(results(&out), vec![(Firing::OnTime, 0, 10, json!(2), json!(2))]);
}

#[test]
fn numeric_edge_cases() {
    let d = def(WindowAssigner::tumbling(10).unwrap(), 0, 0);
    let mut e = engine(&d, 1);
    send(&mut e, 0, json!({"user": "a", "ts": 1, "amount": i64::MAX}));
    send(&mut e, 0, json!({"user": "a", "ts": 2, "amount": 1}));
    // Missing and null amounts are skipped by sum but counted by count.
    send(&mut e, 0, json!({"user": "a", "ts": 3}));
    send(&mut e, 0, json!({"user": "a", "ts": 4, "amount": null}));
    let out = send(&mut e, 0, json!({"user": "b", "ts": 10, "amount": 0.5}));
    assert_eq!(
        results(&out),
        vec![(Firing::OnTime, 0, 10, json!(4), json!(i64::MAX as f64 + 1.0))]
    );
    // Non-numeric amount: dead letter, not silently skipped.
    let out = send(&mut e, 0, json!({"user": "b", "ts": 11, "amount": "12"}));
    assert!(
        matches!(
            &out[..],
            [Out::DeadLetter {
                kind: "invalid_aggregate_input",
                ..
            }]
        ),
        "{out:?}"
    );
}

#[test]
fn dead_letter_reasons() {
    let mut d = def(WindowAssigner::tumbling(10).unwrap(), 0, 0);
    d.filter = Some("record.amount / record.divisor >= record.divisor".into());
    let mut e = engine(&d, 1);
    let mut kinds = Vec::new();
    for (offset, raw) in [
        &b"{not json"[..],
        br#"{"user":"a","amount":5,"divisor":1}"#,
        br#"{"user":"a","ts":"yesterday","amount":5,"divisor":1}"#,
        br#"{"user":"a","ts":1,"amount":1,"divisor":0}"#,
        br#"{"ts":1,"amount":5,"divisor":1}"#,
        br#"{"user":{"x":1},"ts":1,"amount":5,"divisor":1}"#,
        br#"{"user":"a","ts":1,"amount":1,"divisor":2}"#,
        br#"{"user":"a","ts":1,"amount":5,"divisor":1}"#,
    ]
    .into_iter()
    .enumerate()
    {
        for o in send_raw(&mut e, 0, Some(&b"k"[..]), raw, 0) {
            if let Out::DeadLetter {
                kind,
                reason,
                key,
                value,
                ..
            } = o.out
            {
                // Traced to the source record: the runner's headers.
                assert_eq!((o.task, o.stage, o.offset), (0, Stage::Source, offset as i64));
                assert_eq!((key.as_deref(), value.as_slice()), (Some(&b"k"[..]), raw));
                kinds.push((kind, reason));
            }
        }
    }
    let names: Vec<_> = kinds.iter().map(|k| k.0).collect();
    assert_eq!(
        names,
        vec![
            "invalid_record",
            "missing_event_time",
            "invalid_event_time",
            "expression_error",
            "missing_key",
            "expression_error"
        ]
    );
    assert!(kinds[3].1.starts_with("spec.pipeline.filter: "), "{}", kinds[3].1);
    let c = &e.task(0).unwrap().counters;
    assert_eq!(c.source_records, 8);
    assert_eq!(c.filtered, 1);
    assert_eq!(c.dead_lettered, 6);
    assert_eq!(c.keyed_records, 1);
    assert_eq!(e.operator_stats().accepted, 1);
}

#[test]
fn cel_key_and_rfc3339_time() {
    let mut d = def(WindowAssigner::tumbling(1_000).unwrap(), 0, 0);
    d.key_by = vec![
        "record.user + '/' + string(record.region.id)".into(),
        "record.user".into(),
    ];
    d.event_time_field = "record.at".into();
    d.time_format = TimeFormat::Rfc3339;
    let mut e = engine(&d, 1);
    send(
        &mut e,
        0,
        json!({"user": "a", "region": {"id": 7}, "at": "1970-01-01T00:00:00.500Z", "amount": 2}),
    );
    let out = send(
        &mut e,
        0,
        json!({"user": "a", "region": {"id": 7}, "at": "1970-01-01T01:00:01+01:00", "amount": 2}),
    );
    let Out::Result { key, .. } = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(
        serde_json::from_slice::<Value>(key.as_deref().unwrap()).unwrap(),
        json!({"key": ["a/7", "a"], "windowStart": 0})
    );
}

fn random_events(n: usize, seed: u64) -> Vec<(u32, Value)> {
    let mut s = seed;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    (0..n)
        .map(|i| {
            let r = next();
            let t = (i as i64) * 3 - (r % 40) as i64;
            (
                (r >> 8) as u32 % 3,
                json!({"user": format!("u{}", (r >> 16) % 20), "ts": t, "amount": (r >> 24) % 100}),
            )
        })
        .collect()
}

/// Each output with the task that committed it.
fn outputs(emitted: &[Emitted]) -> Vec<(u32, &Out)> {
    emitted.iter().map(|e| (e.task, &e.out)).collect()
}

/// Feeds `events` (appended first) through `h` from event `from` on, a
/// checkpoint of every task after each (with the state after event
/// `crash`, where every task then crashes: the work after the checkpoint
/// is lost, the tasks restored from it read on); then the closing
/// checkpoints. The committed outputs.
fn feed(h: &mut Harness, events: &[(u32, Value)], crash: Option<usize>) -> Vec<Emitted> {
    for (p, v) in events {
        h.append(*p, None, &serde_json::to_vec(v).unwrap()).unwrap();
    }
    for (i, (p, _)) in events.iter().enumerate() {
        assert_eq!(h.poll_source(*p, 1, 0).unwrap(), 1);
        h.checkpoint_all(0, crash == Some(i)).unwrap();
        if crash == Some(i) {
            // The keyed records just committed change the state after the
            // snapshot; stage 1 reads on; all of it lost.
            poll_keyed(h);
            for t in 0..h.task_count() {
                h.poll_source(t, usize::MAX, 0).unwrap();
            }
            poll_keyed(h);
            h.restart_all(0).unwrap();
        }
        poll_keyed(h);
    }
    tick(h, 0)
}

/// Snapshot/restore equals an uninterrupted run, which equals an unbounded
/// in-memory run (so a bounded cache spilling to the backend changes nothing).
fn restore_equals_uninterrupted(cache: Option<usize>, mut make: impl FnMut(&str) -> Box<dyn Backends>) {
    for window in [
        WindowAssigner::tumbling(50).unwrap(),
        WindowAssigner::sliding(60, 20).unwrap(),
        WindowAssigner::session(15).unwrap(),
    ] {
        let d = def(window, 30, 20);
        let events = random_events(600, 0x5eed);
        let state = StateOptions {
            cache_capacity: cache,
            flush_on_fire: true,
        };
        let reference = feed(&mut engine(&d, 3), &events, None);
        let mut e = job_with(&d, 3, state, make("a"));
        let whole = feed(&mut e, &events, None);
        assert!(whole.len() > 50);
        assert_eq!(whole, reference, "{window:?}");
        if cache.is_some() {
            assert!(
                e.cached_entries() < e.open_entries(),
                "{window:?}: nothing spilled"
            );
        }
        let split = feed(&mut job_with(&d, 3, state, make("b")), &events, Some(317));
        // Offsets in the keyed partitions differ: a restored task sends its
        // watermark again.
        assert_eq!(outputs(&split), outputs(&whole), "{window:?}");
    }
}

#[test]
fn restore_equals_uninterrupted_memory() {
    restore_equals_uninterrupted(None, |_| Box::new(MemoryBackends));
    restore_equals_uninterrupted(Some(7), |_| Box::new(MemoryBackends));
}

#[test]
fn restore_equals_uninterrupted_rocksdb() {
    for cache in [None, Some(7)] {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_path_buf();
        restore_equals_uninterrupted(cache, move |name| {
            let path = base.join(format!(
                "{name}-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            Box::new(RocksBackends::new(&path, RocksOptions::default()))
        });
    }
}

fn purge_returns_state_to_zero(backends: Box<dyn Backends>, cache: Option<usize>) {
    let d = def(WindowAssigner::sliding(40, 10).unwrap(), 25, 5);
    let state = StateOptions {
        cache_capacity: cache,
        flush_on_fire: true,
    };
    let mut e = job_with(&d, 3, state, backends);
    feed(&mut e, &random_events(500, 99), None);
    assert!(e.open_entries() > 0);
    // Far-future events on every partition close and purge everything.
    let far: Vec<(u32, Value)> = (0..3)
        .map(|p| (p, json!({"user": "x", "ts": 1_000_000_000, "amount": 0})))
        .collect();
    feed(&mut e, &far, None);
    // Only the far-future window(s) of key "x" remain.
    assert_eq!(e.open_entries(), 4);
    e.checkpoint_all(0, true).unwrap();
    let mut window_keys = 0;
    for t in e.tasks() {
        t.backend()
            .range(t.id(), b"w", Some(&b"x"[..]), &mut |_, _| {
                window_keys += 1;
                Ok(())
            })
            .unwrap();
    }
    assert_eq!(window_keys, 4);
}

#[test]
fn state_purge_memory() {
    purge_returns_state_to_zero(Box::new(MemoryBackends), None);
    purge_returns_state_to_zero(Box::new(MemoryBackends), Some(3));
}

#[test]
fn state_purge_rocksdb() {
    for (i, cache) in [None, Some(3)].into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let backends = RocksBackends::new(&dir.path().join(format!("db{i}")), RocksOptions::default());
        purge_returns_state_to_zero(Box::new(backends), cache);
    }
}

#[test]
fn top_k_ranks_values_per_window() {
    let mut d = def(WindowAssigner::tumbling(10).unwrap(), 0, 0);
    d.aggregations = vec![AggregationDef {
        name: "pages".into(),
        function: AggregateFunction::TopK { k: 2 },
        field: Some("record.page".into()),
    }];
    let mut e = engine(&d, 1);
    let mut out = Vec::new();
    for page in ["/b", "/a", "/c", "/b", "/a", "/d"] {
        out.extend(send(&mut e, 0, json!({"user": "u", "ts": 1, "page": page})));
    }
    out.extend(send(
        &mut e,
        0,
        json!({"user": "u", "ts": 2, "page": {"nested": 1}}),
    ));
    out.extend(send(&mut e, 0, json!({"user": "u", "ts": 25})));
    let values: Vec<Value> = out
        .iter()
        .filter_map(|o| match o {
            Out::Result { value, .. } => Some(serde_json::from_slice(value).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(values.len(), 1);
    assert_eq!(
        values[0]["pages"],
        json!([{"value": "/a", "count": 2}, {"value": "/b", "count": 2}])
    );
    let dead: Vec<&str> = out
        .iter()
        .filter_map(|o| match o {
            Out::DeadLetter { kind, .. } => Some(*kind),
            _ => None,
        })
        .collect();
    assert_eq!(dead, ["invalid_aggregate_input"]);
}

#[test]
fn compile_errors_name_spec_fields() {
    let mut d = def(WindowAssigner::tumbling(10).unwrap(), 0, 0);
    d.key_by = vec!["record.user".into(), "record.a +".into()];
    let err = Plan::build(&d).err().unwrap().to_string();
    assert!(err.starts_with("spec.pipeline.keyBy[1]: "), "{err}");
    let mut d = def(WindowAssigner::tumbling(10).unwrap(), 0, 0);
    d.aggregations[1].field = None;
    let err = Plan::build(&d).err().unwrap().to_string();
    assert!(err.starts_with("spec.pipeline.aggregations[1].field: "), "{err}");
    d.aggregations[1].name = "final".into();
    let err = Plan::build(&d).err().unwrap().to_string();
    assert!(err.starts_with("spec.pipeline.aggregations[1].name: "), "{err}");
}

/// A backend that records which group keys were read back with `get`.
struct CountingBackend {
    inner: MemoryBackend,
    gets: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl StateBackend for CountingBackend {
    fn get(&self, ns: u32, key: &[u8]) -> streamops_runtime::error::Result<Option<Vec<u8>>> {
        if let Some((_, group_key)) = streamops_runtime::state::parse_window_key(key) {
            self.gets.lock().unwrap().push(group_key.to_vec());
        }
        self.inner.get(ns, key)
    }

    fn write(
        &mut self,
        ns: u32,
        batch: streamops_runtime::state::StateBatch,
    ) -> streamops_runtime::error::Result<()> {
        self.inner.write(ns, batch)
    }

    fn range(
        &self,
        ns: u32,
        from: &[u8],
        to: Option<&[u8]>,
        visit: streamops_runtime::state::Visit<'_>,
    ) -> streamops_runtime::error::Result<()> {
        self.inner.range(ns, from, to, visit)
    }

    fn snapshot(&mut self, dir: &std::path::Path) -> streamops_runtime::error::Result<()> {
        self.inner.snapshot(dir)
    }

    fn restore(&mut self, dir: &std::path::Path, partitions: &[u32]) -> streamops_runtime::error::Result<()> {
        self.inner.restore(dir, partitions)
    }
}

fn run_with_cache(
    d: &JobDefinition,
    events: &[(u32, Value)],
    cache: Option<usize>,
    backends: Box<dyn Backends>,
) -> (Vec<Emitted>, usize) {
    let state = StateOptions {
        cache_capacity: cache,
        flush_on_fire: true,
    };
    let mut e = job_with(d, 3, state, backends);
    for (p, v) in events {
        e.append(*p, None, &serde_json::to_vec(v).unwrap()).unwrap();
    }
    for (p, _) in events {
        e.poll_source(*p, 1, 0).unwrap();
        e.checkpoint_all(0, false).unwrap();
        poll_keyed(&mut e);
        if let Some(cap) = cache {
            // The bound is per task (three keyed partitions).
            assert!(e.cached_entries() <= 3 * cap);
        }
    }
    let out = tick(&mut e, 0);
    (out, e.open_entries())
}

/// Every window kind gives the unbounded run's output with a cache of one
/// entry (every record evicts), on both backends.
#[test]
fn cache_capacity_one_equals_unbounded() {
    for window in [
        WindowAssigner::tumbling(50).unwrap(),
        WindowAssigner::sliding(60, 20).unwrap(),
        WindowAssigner::sliding(50, 15).unwrap(),
        WindowAssigner::session(15).unwrap(),
    ] {
        for lateness in [0, 30] {
            let d = def(window, lateness, 20);
            let events = random_events(400, 0xcafe);
            let reference = run_with_cache(&d, &events, None, Box::new(MemoryBackends));
            assert!(reference.0.len() > 50);
            for cache in [1, 2, 5] {
                let bounded = run_with_cache(&d, &events, Some(cache), Box::new(MemoryBackends));
                assert_eq!(bounded, reference, "{window:?} lateness {lateness} cache {cache}");
            }
            let dir = tempfile::tempdir().unwrap();
            let rocks = RocksBackends::new(&dir.path().join("db"), RocksOptions::default());
            let rocks = run_with_cache(&d, &events, Some(1), Box::new(rocks));
            assert_eq!(rocks, reference, "{window:?} lateness {lateness} (rocksdb)");
        }
    }
}

/// Eviction drops the least recently updated keys: a key updated by every
/// other record is never read back from the backend, while the cold keys
/// around it are evicted.
#[test]
fn eviction_keeps_recently_updated_keys() {
    for window in [
        WindowAssigner::tumbling(1_000).unwrap(),
        WindowAssigner::sliding(1_000, 200).unwrap(),
        WindowAssigner::session(1_000).unwrap(),
    ] {
        let d = def(window, 0, 0);
        let gets: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let shared = gets.clone();
        let backends = move |_task: u32| -> streamops_runtime::Result<Box<dyn StateBackend + Send>> {
            Ok(Box::new(CountingBackend {
                inner: MemoryBackend::new(),
                gets: shared.clone(),
            }))
        };
        let state = StateOptions {
            cache_capacity: Some(20),
            flush_on_fire: false,
        };
        let mut e = job_with(&d, 1, state, Box::new(backends));
        for i in 0..400i64 {
            let user = if i % 2 == 0 {
                "hot".to_string()
            } else {
                format!("cold{}", i % 97)
            };
            send(&mut e, 0, json!({"user": user, "ts": 100 + i / 10, "amount": 1}));
        }
        assert!(e.cached_entries() <= 20);
        assert!(
            e.open_entries() > e.cached_entries(),
            "{window:?}: nothing evicted"
        );
        {
            let gets = gets.lock().unwrap();
            assert!(
                gets.iter().any(|k| k.starts_with(b"[\"cold")),
                "{window:?}: cold keys not read back"
            );
            assert!(
                !gets.iter().any(|k| k.as_slice() == b"[\"hot\"]"),
                "{window:?}: the hot key was evicted"
            );
        }
        // The hot key's totals are complete.
        let out = send(&mut e, 0, json!({"user": "x", "ts": 100_000, "amount": 0}));
        let hot: i64 = out
            .iter()
            .filter_map(|o| match o {
                Out::Result { value, .. } => {
                    let v: Value = serde_json::from_slice(value).unwrap();
                    (v["key"] == json!(["hot"]) && v["windowStart"].as_i64() <= Some(100))
                        .then(|| v["n"].as_i64().unwrap())
                }
                _ => None,
            })
            .sum();
        assert!(hot > 0, "{window:?}");
    }
}
