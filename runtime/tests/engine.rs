//! Engine unit tests through the public API: lateness boundaries, session
//! merges, idle partitions, restore, purge, numeric edge cases, dead letters.

use std::sync::Arc;

use serde_json::{Value, json};
use streamops_runtime::aggregate::AggregateFunction;
use streamops_runtime::operator::Firing;
use streamops_runtime::operator::window_operator::EmitMode;
use streamops_runtime::plan::{AggregationDef, JobDefinition, Plan};
use streamops_runtime::state::{MemoryBackend, RocksBackend, RocksOptions, StateBackend};
use streamops_runtime::time::TimeFormat;
use streamops_runtime::window::WindowAssigner;
use streamops_runtime::{Engine, Output, SourceRecord};

fn def(window: WindowAssigner, lateness: i64, ooo: i64) -> JobDefinition {
    JobDefinition {
        filter: None,
        event_time_field: "record.ts".into(),
        time_format: TimeFormat::EpochMillis,
        out_of_orderness_ms: ooo,
        idle_timeout_ms: None,
        max_future_skew_ms: i64::MAX,
        key_by: vec!["record.user".into()],
        window,
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
    }
}

fn engine(d: &JobDefinition, sources: &[u32]) -> Engine<MemoryBackend> {
    Engine::new(
        Arc::new(Plan::build(d).unwrap()),
        sources,
        1,
        MemoryBackend::new(),
        0,
    )
}

fn send<B: StateBackend>(e: &mut Engine<B>, partition: u32, value: Value) -> Vec<Output> {
    let mut out = Vec::new();
    let bytes = serde_json::to_vec(&value).unwrap();
    e.process(
        SourceRecord {
            partition,
            offset: 0,
            key: None,
            value: &bytes,
        },
        0,
        &mut out,
    )
    .unwrap();
    out
}

/// Results as (firing, windowStart, windowEnd, n, total).
fn results(out: &[Output]) -> Vec<(Firing, i64, i64, Value, Value)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Result { firing, value, .. } => {
                let v: Value = serde_json::from_slice(value).unwrap();
                Some((
                    *firing,
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
    let mut e = engine(&d, &[0]);
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
    assert!(matches!(out.as_slice(), [Output::Late { .. }]), "{out:?}");
    assert_eq!(e.operator_stats().late_records, 1);
}

#[test]
fn lateness_zero_drops_at_end() {
    let d = def(WindowAssigner::tumbling(10).unwrap(), 0, 0);
    let mut e = engine(&d, &[0]);
    send(&mut e, 0, ev(3));
    assert_eq!(
        results(&send(&mut e, 0, ev(10))),
        vec![(Firing::OnTime, 0, 10, json!(1), json!(1))]
    );
    assert!(matches!(send(&mut e, 0, ev(9)).as_slice(), [Output::Late { .. }]));
}

#[test]
fn session_bridging_record_merges_states() {
    let d = def(WindowAssigner::session(10).unwrap(), 0, 100);
    let mut e = engine(&d, &[0]);
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
    let mut e = engine(&d, &[0]);
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
    let mut e = engine(&d, &[0, 1]);
    send(&mut e, 0, ev(1));
    assert!(results(&send(&mut e, 0, ev(100))).is_empty());
    let mut out = Vec::new();
    e.on_processing_time(1_000_000, &mut out).unwrap();
    assert!(out.is_empty());
}

#[test]
fn idle_partition_is_skipped_with_idle_handling() {
    let mut d = def(WindowAssigner::tumbling(10).unwrap(), 0, 0);
    d.idle_timeout_ms = Some(1_000);
    let mut e = engine(&d, &[0, 1]);
    send(&mut e, 0, ev(1));
    let mut out = Vec::new();
    let bytes = serde_json::to_vec(&ev(100)).unwrap();
    // Partition 0 is active at processing time 900; partition 1 never was.
    e.process(
        SourceRecord {
            partition: 0,
            offset: 1,
            key: None,
            value: &bytes,
        },
        900,
        &mut out,
    )
    .unwrap();
    assert!(out.is_empty());
    e.on_processing_time(999, &mut out).unwrap();
    assert!(out.is_empty());
    e.on_processing_time(1_000, &mut out).unwrap();
    assert_eq!(results(&out), vec![(Firing::OnTime, 0, 10, json!(1), json!(1))]);
}

#[test]
fn numeric_edge_cases() {
    let d = def(WindowAssigner::tumbling(10).unwrap(), 0, 0);
    let mut e = engine(&d, &[0]);
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
            [Output::DeadLetter {
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
    let mut e = engine(&d, &[0]);
    let mut kinds = Vec::new();
    for raw in [
        &b"{not json"[..],
        br#"{"user":"a","amount":5,"divisor":1}"#,
        br#"{"user":"a","ts":"yesterday","amount":5,"divisor":1}"#,
        br#"{"user":"a","ts":1,"amount":1,"divisor":0}"#,
        br#"{"ts":1,"amount":5,"divisor":1}"#,
        br#"{"user":{"x":1},"ts":1,"amount":5,"divisor":1}"#,
        br#"{"user":"a","ts":1,"amount":1,"divisor":2}"#,
        br#"{"user":"a","ts":1,"amount":5,"divisor":1}"#,
    ] {
        let mut out = Vec::new();
        e.process(
            SourceRecord {
                partition: 0,
                offset: 7,
                key: Some(&b"k"[..]),
                value: raw,
            },
            0,
            &mut out,
        )
        .unwrap();
        for o in out {
            if let Output::DeadLetter {
                kind,
                reason,
                offset,
                key,
                value,
                ..
            } = o
            {
                assert_eq!(
                    (offset, key.as_deref(), value.as_slice()),
                    (7, Some(&b"k"[..]), raw)
                );
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
    let c = e.counters();
    assert_eq!(c.records_in, 8);
    assert_eq!(c.filtered, 1);
    assert_eq!(c.dead_lettered.values().sum::<u64>(), 6);
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
    let mut e = engine(&d, &[0]);
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
    let Output::Result { key, .. } = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(
        serde_json::from_slice::<Value>(key).unwrap(),
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

/// Snapshot/restore equals an uninterrupted run, which equals an unbounded
/// in-memory run (so a bounded cache spilling to the backend changes nothing).
fn restore_equals_uninterrupted<B: StateBackend>(cache: Option<usize>, mut make: impl FnMut(&str) -> B) {
    for window in [
        WindowAssigner::tumbling(50).unwrap(),
        WindowAssigner::sliding(60, 20).unwrap(),
        WindowAssigner::session(15).unwrap(),
    ] {
        let d = def(window, 30, 20);
        let plan = Arc::new(Plan::build(&d).unwrap());
        let events = random_events(600, 0x5eed);
        let run = |e: &mut Engine<B>, evs: &[(u32, Value)], out: &mut Vec<Output>| {
            for (p, v) in evs {
                let bytes = serde_json::to_vec(v).unwrap();
                e.process(
                    SourceRecord {
                        partition: *p,
                        offset: 0,
                        key: None,
                        value: &bytes,
                    },
                    0,
                    out,
                )
                .unwrap();
            }
        };
        let mut reference = Vec::new();
        let mut e = Engine::new(plan.clone(), &[0, 1, 2], 3, MemoryBackend::new(), 0);
        for (p, v) in &events {
            let bytes = serde_json::to_vec(v).unwrap();
            let rec = SourceRecord {
                partition: *p,
                offset: 0,
                key: None,
                value: &bytes,
            };
            e.process(rec, 0, &mut reference).unwrap();
        }
        let mut whole = Vec::new();
        let mut e = Engine::new(plan.clone(), &[0, 1, 2], 3, make("a"), 0)
            .with_flush_on_fire(true)
            .with_cache_capacity(cache);
        run(&mut e, &events, &mut whole);
        assert!(whole.len() > 50);
        assert_eq!(whole, reference, "{window:?}");
        if cache.is_some() {
            assert!(
                e.cached_entries() < e.open_entries(),
                "{window:?}: nothing spilled"
            );
        }

        let dir = tempfile::tempdir().unwrap();
        let mut split = Vec::new();
        let mut e = Engine::new(plan.clone(), &[0, 1, 2], 3, make("b"), 0)
            .with_flush_on_fire(true)
            .with_cache_capacity(cache);
        run(&mut e, &events[..317], &mut split);
        e.snapshot(&dir.path().join("cp")).unwrap();
        run(&mut e, &events[317..], &mut Vec::new());
        drop(e);
        let cp = dir.path().join("cp");
        let mut r = Engine::restore_with_cache(plan, &cp, &[0, 1, 2], 3, cache, make("c"), 0)
            .unwrap()
            .with_flush_on_fire(true);
        run(&mut r, &events[317..], &mut split);
        assert_eq!(split, whole, "{window:?}");
    }
}

#[test]
fn restore_equals_uninterrupted_memory() {
    restore_equals_uninterrupted(None, |_| MemoryBackend::new());
    restore_equals_uninterrupted(Some(7), |_| MemoryBackend::new());
}

#[test]
fn restore_equals_uninterrupted_rocksdb() {
    for cache in [None, Some(7)] {
        rocksdb_restore_equals_uninterrupted(cache);
    }
}

fn rocksdb_restore_equals_uninterrupted(cache: Option<usize>) {
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
        RocksBackend::open(&path, &RocksOptions::default()).unwrap()
    });
}

fn purge_returns_state_to_zero<B: StateBackend>(backend: B, cache: Option<usize>) {
    let d = def(WindowAssigner::sliding(40, 10).unwrap(), 25, 5);
    let mut e = Engine::new(Arc::new(Plan::build(&d).unwrap()), &[0, 1, 2], 2, backend, 0)
        .with_flush_on_fire(true)
        .with_cache_capacity(cache);
    let mut out = Vec::new();
    for (p, v) in random_events(500, 99) {
        let bytes = serde_json::to_vec(&v).unwrap();
        e.process(
            SourceRecord {
                partition: p,
                offset: 0,
                key: None,
                value: &bytes,
            },
            0,
            &mut out,
        )
        .unwrap();
    }
    assert!(e.open_entries() > 0);
    // Far-future events on every partition close and purge everything.
    for p in 0..3 {
        let bytes = serde_json::to_vec(&json!({"user": "x", "ts": 1_000_000_000, "amount": 0})).unwrap();
        e.process(
            SourceRecord {
                partition: p,
                offset: 0,
                key: None,
                value: &bytes,
            },
            0,
            &mut out,
        )
        .unwrap();
    }
    // Only the far-future window(s) of key "x" remain.
    assert_eq!(e.open_entries(), 4);
    let dir = tempfile::tempdir().unwrap();
    e.snapshot(&dir.path().join("cp")).unwrap();
    let mut window_keys = 0;
    for ns in 0..2 {
        e.backend()
            .range(ns, b"w", Some(&b"x"[..]), &mut |_, _| {
                window_keys += 1;
                Ok(())
            })
            .unwrap();
    }
    assert_eq!(window_keys, 4);
}

#[test]
fn state_purge_memory() {
    purge_returns_state_to_zero(MemoryBackend::new(), None);
    purge_returns_state_to_zero(MemoryBackend::new(), Some(3));
}

#[test]
fn state_purge_rocksdb() {
    for (i, cache) in [None, Some(3)].into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let db = RocksBackend::open(&dir.path().join(format!("db{i}")), &RocksOptions::default());
        purge_returns_state_to_zero(db.unwrap(), cache);
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
    let mut e = engine(&d, &[0]);
    for page in ["/b", "/a", "/c", "/b", "/a", "/d"] {
        send(&mut e, 0, json!({"user": "u", "ts": 1, "page": page}));
    }
    send(&mut e, 0, json!({"user": "u", "ts": 2, "page": {"nested": 1}}));
    let out = send(&mut e, 0, json!({"user": "u", "ts": 25}));
    let values: Vec<Value> = out
        .iter()
        .filter_map(|o| match o {
            Output::Result { value, .. } => Some(serde_json::from_slice(value).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(values.len(), 1);
    assert_eq!(
        values[0]["pages"],
        json!([{"value": "/a", "count": 2}, {"value": "/b", "count": 2}])
    );
    let dead = e.counters().dead_lettered.get("invalid_aggregate_input");
    assert_eq!(dead, Some(&1));
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
    gets: std::cell::RefCell<Vec<Vec<u8>>>,
}

impl StateBackend for CountingBackend {
    fn get(&self, ns: u32, key: &[u8]) -> streamops_runtime::error::Result<Option<Vec<u8>>> {
        if let Some((_, group_key)) = streamops_runtime::state::parse_window_key(key) {
            self.gets.borrow_mut().push(group_key.to_vec());
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

fn run_with_cache<B: StateBackend>(
    plan: &Arc<Plan>,
    events: &[(u32, Value)],
    cache: Option<usize>,
    backend: B,
) -> (Vec<Output>, usize) {
    let mut e = Engine::new(plan.clone(), &[0, 1, 2], 2, backend, 0)
        .with_flush_on_fire(true)
        .with_cache_capacity(cache);
    let mut out = Vec::new();
    for (p, v) in events {
        let bytes = serde_json::to_vec(v).unwrap();
        let rec = SourceRecord {
            partition: *p,
            offset: 0,
            key: None,
            value: &bytes,
        };
        e.process(rec, 0, &mut out).unwrap();
        if let Some(cap) = cache {
            // The bound is per window operator (two keyed partitions).
            assert!(e.cached_entries() <= 2 * cap);
        }
    }
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
            let plan = Arc::new(Plan::build(&d).unwrap());
            let events = random_events(400, 0xcafe);
            let reference = run_with_cache(&plan, &events, None, MemoryBackend::new());
            assert!(reference.0.len() > 50);
            for cache in [1, 2, 5] {
                let bounded = run_with_cache(&plan, &events, Some(cache), MemoryBackend::new());
                assert_eq!(bounded, reference, "{window:?} lateness {lateness} cache {cache}");
            }
            let dir = tempfile::tempdir().unwrap();
            let db = RocksBackend::open(&dir.path().join("db"), &RocksOptions::default()).unwrap();
            let rocks = run_with_cache(&plan, &events, Some(1), db);
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
        let backend = CountingBackend {
            inner: MemoryBackend::new(),
            gets: Default::default(),
        };
        let mut e = Engine::new(Arc::new(Plan::build(&d).unwrap()), &[0], 1, backend, 0)
            .with_cache_capacity(Some(20));
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
        let gets = e.backend().gets.borrow();
        assert!(
            gets.iter().any(|k| k.starts_with(b"[\"cold")),
            "{window:?}: cold keys not read back"
        );
        assert!(
            !gets.iter().any(|k| k.as_slice() == b"[\"hot\"]"),
            "{window:?}: the hot key was evicted"
        );
        drop(gets);
        // The hot key's totals are complete.
        let out = send(&mut e, 0, json!({"user": "x", "ts": 100_000, "amount": 0}));
        let hot: i64 = out
            .iter()
            .filter_map(|o| match o {
                Output::Result { value, .. } => {
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
